// The CUDA device (ctest label cuda), compiled by nvcc with MTREC_WITH_CUDA=1.
//
// Every case first looks for a GPU; without one (CI) it prints
//   mtrec-cuda: skipped: <why>
// and returns, and ctest reports the test as skipped (SKIP_REGULAR_EXPRESSION
// in tests/CMakeLists.txt). With a GPU each result is checked against an
// independent reference: the same model on the Cpu device (other kernels,
// the same math), the CPU's error messages, and the serial results.
#include "models/model_fixtures.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include <unistd.h>

using namespace mtrec;

namespace {

bool gpu_or_skip() {
  if (mtrec::cuda::available()) return true;
  std::printf("mtrec-cuda: skipped: no CUDA device (%s)\n", mtrec::cuda::unavailable_reason().c_str());
  std::fflush(stdout);
  return false;
}

double total_loss(const TaskLosses& l, const ModelConfig& c) {
  double s = 0;
  for (std::size_t k = 0; k < l.value.size(); ++k) s += c.tasks[k].weight * l.value[k];
  return s;
}

TrainConfig steps_config(bool clip) {
  TrainConfig t;
  t.batch_size = 8;
  t.optimizer = OptimizerConfig::adam(3e-3);
  t.progress = false;
  if (clip) t.clip_norm = 1.0;
  return t;
}

// Runs `steps` training steps of `arch` on device D over fixed tiny batches;
// returns the total loss of every step.
template <class D>
std::vector<double> train_losses(Architecture arch, int steps, const TrainConfig& tc,
                                 MultiTaskModel<float, D>* keep = nullptr) {
  std::unique_ptr<MultiTaskModel<float, D>> own;
  MultiTaskModel<float, D>* m = keep;
  if (!m) {
    own = std::make_unique<MultiTaskModel<float, D>>(testing::tiny_config(arch));
    m = own.get();
  }
  Trainer<float, D> trainer(*m, tc);
  std::vector<double> out;
  for (int s = 0; s < steps; ++s) {
    const Batch<float> b = testing::tiny_batch<float>(m->config(), 8, 100 + std::uint64_t(s % 5));
    out.push_back(total_loss(trainer.train_step(b), m->config()));
  }
  return out;
}

std::string temp_path(const char* tag) {
  return (std::filesystem::temp_directory_path() /
          (std::string("mtrec_cuda_") + tag + "_" + std::to_string(::getpid()) + ".safetensors"))
      .string();
}

}  // namespace

TEST_CASE("cuda: device, arena and copies", "[cuda]") {
  if (!gpu_or_skip()) return;
  cudaDeviceProp p{};
  mtrec::cuda::check(cudaGetDeviceProperties(&p, 0), "test");
  std::printf("mtrec-cuda: device 0: %s, sm_%d%d, %.1f GiB\n", p.name, p.major, p.minor,
              double(p.totalGlobalMem) / double(1 << 30));
  std::vector<float> v(1000);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f;
  Tensor<float, Cuda> a(Shape{1000});
  to_device(a.device(), a.view(), v.data());
  Tensor<float, Cuda> b = a;  // device -> device
  std::vector<float> back(1000, -1.0f);
  to_host(b.device(), back.data(), b.cview());
  CHECK(back == v);
  // Released blocks are reused: a second tensor of the same size adds no cudaMalloc.
  const std::size_t in_use = mtrec::cuda::CudaArena::instance().bytes_in_use();
  { Tensor<float, Cuda> t(Shape{4096}); }
  const std::uint64_t m0 = mtrec::cuda::CudaArena::instance().mallocs();
  { Tensor<float, Cuda> t(Shape{4096}); }
  CHECK(mtrec::cuda::CudaArena::instance().mallocs() == m0);
  CHECK(mtrec::cuda::CudaArena::instance().bytes_in_use() == in_use);
}

TEST_CASE("cuda: an allocation beyond the GPU's memory is a clear error", "[cuda]") {
  if (!gpu_or_skip()) return;
  CHECK_THROWS_WITH((Tensor<float, Cuda>(Shape{index_t(1) << 40})),
                    Catch::Contains("Cuda::allocate") && Catch::Contains("out of GPU memory"));
  // and the device still works afterwards
  Tensor<float, Cuda> t(Shape{16});
  t.zero();
  std::vector<float> h(16, 1.0f);
  to_host(t.device(), h.data(), t.cview());
  CHECK(h == std::vector<float>(16, 0.0f));
}

TEST_CASE("cuda: 20 training steps of every architecture track the CPU within 1e-4", "[cuda]") {
  if (!gpu_or_skip()) return;
  for (Architecture a : {Architecture::SingleTask, Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE,
                         Architecture::ESMM}) {
    for (bool clip : {false, true}) {
      CAPTURE(architecture_name(a), clip);
      const TrainConfig tc = steps_config(clip);
      const auto gpu = train_losses<Cuda>(a, 20, tc);
      const auto cpu = train_losses<Cpu>(a, 20, tc);
      REQUIRE(gpu.size() == cpu.size());
      for (std::size_t s = 0; s < gpu.size(); ++s) {
        CAPTURE(s, gpu[s], cpu[s]);
        CHECK(std::isfinite(gpu[s]));
        CHECK(std::fabs(gpu[s] - cpu[s]) <= 1e-4 * std::fabs(cpu[s]));
      }
      // the same run again gives the same bits (no float atomics)
      const auto again = train_losses<Cuda>(a, 20, tc);
      CHECK(again == gpu);
    }
  }
}

TEST_CASE("cuda: fused table updates agree with the unfused path, on the GPU and against the CPU", "[cuda]") {
  if (!gpu_or_skip()) return;
  for (Architecture a : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE}) {
    CAPTURE(architecture_name(a));
    TrainConfig tc = steps_config(false);
    const auto unfused = train_losses<Cuda>(a, 20, tc);
    tc.optimizer.fused_tables = true;
    MultiTaskModel<float, Cuda> gpu(testing::tiny_config(a));
    const auto fused = train_losses<Cuda>(a, 20, tc, &gpu);
    MultiTaskModel<float, Cpu> cpu(testing::tiny_config(a));
    const auto fused_cpu = train_losses<Cpu>(a, 20, tc, &cpu);
    for (std::size_t s = 0; s < fused.size(); ++s) {
      CAPTURE(s);
      CHECK(std::fabs(fused[s] - unfused[s]) <= 1e-5 * std::fabs(unfused[s]));
      CHECK(std::fabs(fused[s] - fused_cpu[s]) <= 1e-4 * std::fabs(fused_cpu[s]));
    }
    const auto& sg = gpu.parameters();
    const auto& sc = cpu.parameters();
    for (ParamId id = 0; id < sg.count(); ++id) {
      CAPTURE(sg.info(id).name);
      const std::vector<float> wg = sg.values_host(id), wc = sc.values_host(id);
      double worst = 0;
      for (std::size_t i = 0; i < wg.size(); ++i) worst = std::max(worst, std::fabs(double(wg[i]) - double(wc[i])));
      CHECK(worst < 1e-4);
    }
    // a warm fused step allocates nothing
    Trainer<float, Cuda> trainer(gpu, tc);
    const Batch<float> b = testing::tiny_batch<float>(gpu.config(), 8, 7);
    for (int s = 0; s < 3; ++s) trainer.train_step(b);
    const std::uint64_t m0 = mtrec::cuda::CudaArena::instance().mallocs();
    for (int s = 0; s < 5; ++s) trainer.train_step(b);
    CHECK(mtrec::cuda::CudaArena::instance().mallocs() == m0);
  }
}

TEST_CASE("cuda: a warm training step allocates nothing and uploads the batch once", "[cuda]") {
  if (!gpu_or_skip()) return;
  MultiTaskModel<float, Cuda> model(testing::tiny_config(Architecture::PLE));
  Trainer<float, Cuda> trainer(model, steps_config(true));
  const Batch<float> b = testing::tiny_batch<float>(model.config(), 8, 7);
  for (int s = 0; s < 3; ++s) trainer.train_step(b);
  const std::uint64_t m0 = mtrec::cuda::CudaArena::instance().mallocs();
  for (int s = 0; s < 5; ++s) trainer.train_step(b);
  CHECK(mtrec::cuda::CudaArena::instance().mallocs() == m0);
  // forward: the batch's features in one copy; compute_losses: the labels in one copy
  MultiTaskModel<float, Cuda>::Workspace ws;
  model.forward(ws, b, Mode::eval());
  const std::uint64_t u0 = mtrec::cuda::CudaArena::instance().uploads();
  model.forward(ws, b, Mode::eval());
  CHECK(mtrec::cuda::CudaArena::instance().uploads() - u0 == 1);
  const std::uint64_t u1 = mtrec::cuda::CudaArena::instance().uploads();
  model.compute_losses(ws, b);
  CHECK(mtrec::cuda::CudaArena::instance().uploads() - u1 == 1);
}

TEST_CASE("cuda: checkpoints move between the GPU and the CPU and predict within 1e-5", "[cuda]") {
  if (!gpu_or_skip()) return;
  for (Architecture a : {Architecture::MMoE, Architecture::PLE, Architecture::ESMM}) {
    CAPTURE(architecture_name(a));
    const ModelConfig cfg = testing::tiny_config(a);
    // trained on the GPU, loaded on the CPU
    MultiTaskModel<float, Cuda> gpu(cfg);
    train_losses<Cuda>(a, 10, steps_config(false), &gpu);
    const std::string p1 = temp_path("g2c");
    save_checkpoint(p1, gpu);
    auto cpu = load_checkpoint<float, Cpu>(p1);
    const Batch<float> batch = testing::tiny_batch<float>(cfg, 12, 9);
    Tensor<float> pg, pc;
    MultiTaskModel<float, Cuda>::Workspace wg;
    MultiTaskModel<float, Cpu>::Workspace wc;
    gpu.predict(wg, batch, pg);
    cpu->predict(wc, batch, pc);
    REQUIRE(pg.numel() == pc.numel());
    for (index_t i = 0; i < pg.numel(); ++i) CHECK(std::fabs(pg[i] - pc[i]) <= 1e-5);
    // trained on the CPU, loaded on the GPU
    MultiTaskModel<float, Cpu> cpu2(cfg);
    train_losses<Cpu>(a, 10, steps_config(false), &cpu2);
    const std::string p2 = temp_path("c2g");
    save_checkpoint(p2, cpu2);
    auto gpu2 = load_checkpoint<float, Cuda>(p2);
    Tensor<float> qc, qg;
    cpu2.predict(wc, batch, qc);
    gpu2->predict(wg, batch, qg);
    REQUIRE(qg.numel() == qc.numel());
    for (index_t i = 0; i < qg.numel(); ++i) CHECK(std::fabs(qg[i] - qc[i]) <= 1e-5);
    std::remove(p1.c_str());
    std::remove(p2.c_str());
  }
}

TEST_CASE("cuda: several host threads predict on one GPU model and get the serial results", "[cuda]") {
  if (!gpu_or_skip()) return;
  const ModelConfig cfg = testing::tiny_config(Architecture::MMoE);
  MultiTaskModel<float, Cuda> model(cfg);
  train_losses<Cuda>(Architecture::MMoE, 5, steps_config(false), &model);
  const MultiTaskModel<float, Cuda>& cm = model;
  const Batch<float> batch = testing::tiny_batch<float>(cfg, 16, 6);
  Tensor<float> expect;
  {
    MultiTaskModel<float, Cuda>::Workspace ws;
    cm.predict(ws, batch, expect);
  }
  const int threads = 4;
  std::vector<int> ok(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      // each thread: its own workspace, and (device.cuh) its own stream and cuBLAS handle
      MultiTaskModel<float, Cuda>::Workspace ws;
      Tensor<float> out;
      bool same = true;
      for (int r = 0; r < 25; ++r) {
        cm.predict(ws, batch, out);
        for (index_t i = 0; i < out.numel(); ++i) same = same && out[i] == expect[i];
      }
      ok[std::size_t(t)] = same;
    });
  for (auto& th : pool) th.join();
  for (int t = 0; t < threads; ++t) CHECK(ok[std::size_t(t)] == 1);
}

TEST_CASE("cuda: bad input is caught on the host with the CPU's messages", "[cuda]") {
  if (!gpu_or_skip()) return;
  const ModelConfig cfg = testing::tiny_config(Architecture::MMoE);
  MultiTaskModel<float, Cuda> gpu(cfg);
  MultiTaskModel<float, Cpu> cpu(cfg);
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  // an out-of-range ID
  Batch<float> bad_id = testing::tiny_batch<float>(cfg, 4, 3);
  bad_id.ids[0][1] = 1000;
  MultiTaskModel<float, Cuda>::Workspace wg;
  MultiTaskModel<float, Cpu>::Workspace wc;
  const std::string eg = message([&] { gpu.forward(wg, bad_id, Mode::eval()); });
  const std::string ec = message([&] { cpu.forward(wc, bad_id, Mode::eval()); });
  CHECK(eg != "(no error)");
  CHECK(eg == ec);
  // a NaN label
  Batch<float> bad_label = testing::tiny_batch<float>(cfg, 4, 3);
  bad_label.labels[0][2] = std::nanf("");
  gpu.forward(wg, bad_label, Mode::eval());
  cpu.forward(wc, bad_label, Mode::eval());
  const std::string lg = message([&] { gpu.compute_losses(wg, bad_label); });
  const std::string lc = message([&] { cpu.compute_losses(wc, bad_label); });
  CHECK(lg != "(no error)");
  CHECK(lg == lc);
  // and the model still trains afterwards
  const Batch<float> good = testing::tiny_batch<float>(cfg, 4, 3);
  Trainer<float, Cuda> t(gpu, steps_config(false));
  CHECK(std::isfinite(total_loss(t.train_step(good), cfg)));
}
