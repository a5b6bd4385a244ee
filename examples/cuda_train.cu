// mtrec on the GPU: the MMoE paper's synthetic two-task study trained with
// MultiTaskModel<float, Cuda> and, side by side, the same model and seed on
// the CPU. Prints both runs' per-epoch losses and the test MSE per task, then
// saves the GPU model and reloads it on the CPU to show that checkpoints are
// the same files on both devices.
//
//   cmake -DMTREC_WITH_CUDA=ON ... && ./build/examples/cuda_train [--fast] [--save CKPT]
//
// Built only when MTREC_WITH_CUDA=ON (examples/CMakeLists.txt). Without a GPU
// it says so and exits 0.
#include <mtrec/mtrec.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

using namespace mtrec;

namespace {
ModelConfig study_model() {
  ModelConfig c;
  c.features = mmoe_synthetic_features(100);
  c.architecture = Architecture::MMoE;
  c.seed = 1;
  c.tasks = {{"y1", TaskType::Regression, 0, {8}}, {"y2", TaskType::Regression, 0, {8}}};
  c.experts = 8;
  c.expert = {16};
  return c;
}
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

int main(int argc, char** argv) {
  index_t rows = 20000;
  int epochs = 5;
  std::string save;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--fast") {
      rows = 4000;
      epochs = 2;
    } else if (a == "--save" && i + 1 < argc) {
      save = argv[++i];
    } else {
      std::printf("usage: cuda_train [--fast] [--save CHECKPOINT]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (!mtrec::cuda::available()) {
    std::printf("cuda_train: no CUDA device (%s); nothing to do\n", mtrec::cuda::unavailable_reason().c_str());
    return 0;
  }
  SyntheticSpec spec;
  spec.rows = rows;
  spec.correlation = 0.9;
  spec.seed = 7;
  spec.sample_seed = 1;
  const Batch<float> train = make_mmoe_synthetic<float>(spec);
  spec.rows = rows / 4;
  spec.sample_seed = 2;
  const Batch<float> test = make_mmoe_synthetic<float>(spec);

  TrainConfig tc;
  tc.epochs = epochs;
  tc.batch_size = 256;
  tc.optimizer = OptimizerConfig::adam(1e-3);
  tc.progress = false;

  MultiTaskModel<float, Cuda> gpu(study_model());
  MultiTaskModel<float, Cpu> cpu(study_model());
  auto t0 = std::chrono::steady_clock::now();
  const History hg = Trainer<float, Cuda>(gpu, tc).fit(train);
  const double sg = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  const History hc = Trainer<float, Cpu>(cpu, tc).fit(train);
  const double sc = seconds_since(t0);
  std::printf("epoch  train loss (cuda)  train loss (cpu)\n");
  for (std::size_t e = 0; e < hg.epochs.size(); ++e)
    std::printf("%5zu  %17.6f  %16.6f\n", e + 1, hg.epochs[e].train_loss, hc.epochs[e].train_loss);
  const Evaluation eg = evaluate(gpu, test), ec = evaluate(cpu, test);
  for (std::size_t k = 0; k < eg.tasks.size(); ++k)
    std::printf("test %s: rmse %.6f (cuda) %.6f (cpu)\n", eg.tasks[k].task.c_str(), eg.tasks[k]["rmse"],
                ec.tasks[k]["rmse"]);
  std::printf("training time: %.2f s (cuda), %.2f s (cpu)\n", sg, sc);

  const std::string path =
      save.empty() ? (std::filesystem::temp_directory_path() / "mtrec_cuda_train.safetensors").string() : save;
  save_checkpoint(path, gpu);
  auto back = load_checkpoint<float, Cpu>(path);
  const Evaluation eb = evaluate(*back, test);
  std::printf("the GPU checkpoint on the CPU: test loss %.6f (on the GPU: %.6f)\n", eb.loss, eg.loss);
  if (save.empty()) std::filesystem::remove(path);
  return 0;
}
