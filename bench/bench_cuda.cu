// mtrec CUDA benchmarks: the whole-model workloads of bench/workloads.hpp on
// the Cuda device, and the embedding kernels against the device's copy
// bandwidth. A standalone program (no Google Benchmark), compiled by nvcc:
//
//   mtrec_bench_cuda [--workloads small,ref,large] [--reps N] [--json PATH] [--no-kernels]
//
// Per workload (model, trainer and batches built as bench_model.cpp does:
// make_config, make_batch with seed 7 + B, Adam lr 1e-3, lazy row-wise for
// tables), after a warm-up:
//   train step   Trainer<float, Cuda>::train_step(batch) at the workload's batch
//   infer bB     const MultiTaskModel::predict(ws, batch, out) at B = 256, 16, 1
//                (out is host memory: the time includes the batch's upload and
//                the download of the outputs, as a caller sees it)
// each reported as the median over the reps of the time between two CUDA
// events recorded on the thread's stream (mtrec::Cuda{}.stream()) around the
// call, and the median host wall time of the call up to the end event.
//
// Kernels (`kernels` in the JSON), each repetition preceded by a
// cudaMemsetAsync over 2x the device's L2 (cudaDevAttrL2CacheSize), so every
// repetition starts with a cold L2; timed with events only:
//   copy                     cudaMemcpyAsync of a 1 GiB buffer device to
//                            device; GB/s counts read + write bytes (2 GiB)
//   bag_forward              kernels::embedding_bag_forward, table 1M x 64
//                            floats, 2048 bags x 32 uniform IDs, mean pooling;
//                            bytes = rows read + output written
//   bag_backward_adam_fused  kernels::embedding_bag_backward_adam (the fused
//                            backward + lazy Adam) on the same shapes; bytes =
//                            per distinct touched row w, m, v read and written
//                            (6 x 64 x 4) + dy read
//   bag_backward_adam_unfused the model's unfused path for comparison:
//                            zero_rows of the grad's touched rows +
//                            embedding_bag_backward into the grad +
//                            adam_update_rows over the touched rows (and each
//                            of the three alone: unfused_zero_rows,
//                            unfused_bag_backward, unfused_adam_update_rows);
//                            GB/s over the same bytes as the fused kernel
// GB/s are 1e9 bytes per second; "% copy" = GB/s / the copy's GB/s.
//
// Output: a table on stdout; with --json PATH, every figure as JSON:
//   {"device": {...}, "results": [{"workload", "measure", "ms", "wall_ms",
//    "min_ms", "reps", ["gbs", "pct_copy", "bytes"]} ...], "errors": [...]}
// Without a CUDA device: prints "mtrec_bench_cuda: no CUDA device: <reason>"
// and exits 0 (with --json, the file holds {"no_device": "<reason>"}).
// A measure that throws is reported on stderr and in "errors", the others
// still run, and the exit status is 1.
#include <mtrec/mtrec.hpp>

#include "workloads.hpp"

#if !MTREC_HAS_CUDA
#error "bench_cuda.cu needs nvcc and -DMTREC_WITH_CUDA=1"
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

using mtrec::Cuda;
using mtrec::index_t;
using mtrec::Tensor;
using mtrec_bench::Workload;
using CudaMem = mtrec::CudaMemory;

// ---- options -------------------------------------------------------------------------

struct Options {
  std::vector<std::string> workloads{"small", "ref", "large"};
  int reps = 0;  // 0: per-measure defaults
  std::string json;
  bool kernels = true;
};

void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: mtrec_bench_cuda [--workloads small,ref,large] [--reps N] [--json PATH] [--no-kernels]\n"
               "  --workloads  comma list of small, ref, large (default: all three)\n"
               "  --reps N     timed repetitions of every measure (default: 20 per train step, 50 per\n"
               "               inference, 30 per kernel, 10 per 1 GiB copy)\n"
               "  --json PATH  also write every figure as JSON to PATH\n"
               "  --no-kernels skip the kernel benchmarks (copy bandwidth, embedding bags)\n");
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t c = s.find(',', pos);
    std::string part = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    if (!part.empty()) out.push_back(part);
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return out;
}

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> std::string {
      const std::string pre = std::string(name) + "=";
      if (a.compare(0, pre.size(), pre) == 0) return a.substr(pre.size());
      if (i + 1 >= argc) throw std::invalid_argument(std::string(name) + " needs a value");
      return argv[++i];
    };
    auto is = [&](const char* name) { return a == name || a.compare(0, std::strlen(name) + 1, std::string(name) + "=") == 0; };
    if (a == "-h" || a == "--help") {
      usage(stdout);
      std::exit(0);
    } else if (is("--workloads")) {
      o.workloads = split(value("--workloads"));
      for (const auto& w : o.workloads) (void)mtrec_bench::workload(w);  // throws on an unknown name
    } else if (is("--reps")) {
      const std::string v = value("--reps");
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (!end || *end || n < 1 || n > 100000) throw std::invalid_argument("--reps expects a count >= 1, got '" + v + "'");
      o.reps = int(n);
    } else if (is("--json")) {
      o.json = value("--json");
    } else if (a == "--no-kernels") {
      o.kernels = false;
    } else {
      throw std::invalid_argument("unknown argument '" + a + "'");
    }
  }
  return true;
}

// ---- results -------------------------------------------------------------------------

struct Result {
  std::string workload, measure;
  double ms = 0, wall_ms = -1, min_ms = 0;  // wall_ms < 0: not measured
  int reps = 0;
  double gbs = -1, pct_copy = -1, bytes = -1;  // < 0: not a bandwidth figure
  std::string note;
};

std::vector<Result> g_results;
std::vector<std::string> g_errors;

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          o += buf;
        } else {
          o += c;
        }
    }
  }
  return o;
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// ---- timing --------------------------------------------------------------------------

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

cudaStream_t stream() { return Cuda{}.stream(); }

struct Events {
  cudaEvent_t start = nullptr, stop = nullptr;
  Events() {
    mtrec::cuda::check(cudaEventCreate(&start), "bench", "cudaEventCreate");
    mtrec::cuda::check(cudaEventCreate(&stop), "bench", "cudaEventCreate");
  }
  ~Events() {
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
};

// 2x the device's L2, overwritten by a memset before each kernel repetition.
struct L2Flush {
  Tensor<std::uint8_t, Cuda> buf;
  std::size_t bytes = 0;
  explicit L2Flush(int l2_bytes) {
    bytes = std::size_t(std::max(l2_bytes, 1 << 20)) * 2;
    buf.resize(mtrec::Shape{index_t(bytes)});
  }
  void operator()() const {
    mtrec::cuda::check(cudaMemsetAsync(const_cast<std::uint8_t*>(mtrec::raw(buf.data())), 0, bytes, stream()),
                       "bench", "L2 flush");
  }
};

struct Timing {
  double ms = 0, wall_ms = 0, min_ms = 0;
  int reps = 0;
};

// warmup calls, then reps timed calls: events on the thread's stream around
// fn, the host clock from before fn to the end event's completion. With
// `flush`, the L2 flush is enqueued before the start event of every
// repetition (not timed: the start event runs after it on the stream).
Timing time_calls(const std::function<void()>& fn, int warmup, int reps, const L2Flush* flush) {
  Events ev;
  const cudaStream_t s = stream();
  for (int i = 0; i < warmup; ++i) {
    if (flush) (*flush)();
    fn();
  }
  mtrec::cuda::check(cudaStreamSynchronize(s), "bench", "warm-up");
  std::vector<double> gpu, wall;
  for (int r = 0; r < reps; ++r) {
    if (flush) (*flush)();
    mtrec::cuda::check(cudaEventRecord(ev.start, s), "bench", "cudaEventRecord");
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    mtrec::cuda::check(cudaEventRecord(ev.stop, s), "bench", "cudaEventRecord");
    mtrec::cuda::check(cudaEventSynchronize(ev.stop), "bench", "cudaEventSynchronize");
    const auto t1 = std::chrono::steady_clock::now();
    float ms = 0;
    mtrec::cuda::check(cudaEventElapsedTime(&ms, ev.start, ev.stop), "bench", "cudaEventElapsedTime");
    gpu.push_back(double(ms));
    wall.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  Timing t;
  t.reps = reps;
  t.ms = median(gpu);
  t.wall_ms = median(wall);
  t.min_ms = gpu.empty() ? 0 : *std::min_element(gpu.begin(), gpu.end());
  return t;
}

// Runs one measure; an exception is reported and recorded, not fatal.
void guarded(const std::string& workload, const std::string& measure, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    const std::string msg = workload + " / " + measure + ": " + e.what();
    std::fprintf(stderr, "mtrec_bench_cuda: error: %s\n", msg.c_str());
    g_errors.push_back(msg);
    (void)cudaGetLastError();
  }
}

// ---- the model workloads -------------------------------------------------------------

void bench_workload(const Workload& w, const Options& o) {
  const mtrec::ModelConfig config = mtrec_bench::make_config(w);
  std::unique_ptr<mtrec::MultiTaskModel<float, Cuda>> model;
  std::unique_ptr<mtrec::Trainer<float, Cuda>> trainer;
  guarded(w.name, "build", [&] {
    model = std::make_unique<mtrec::MultiTaskModel<float, Cuda>>(config);
    mtrec::TrainConfig t;
    t.progress = false;
    t.batch_size = w.batch;
    t.optimizer = mtrec::OptimizerConfig::adam(1e-3);
    trainer = std::make_unique<mtrec::Trainer<float, Cuda>>(*model, t);
  });
  if (!model || !trainer) return;
  std::fprintf(stderr, "# %s: %lld parameters\n", w.name, (long long)model->parameters().size());

  guarded(w.name, "train step", [&] {
    const mtrec::Batch<float> batch = mtrec_bench::make_batch(w, config, w.batch, 7 + std::uint64_t(w.batch));
    double loss = 0;
    const Timing t = time_calls(
        [&] {
          const mtrec::TaskLosses& l = trainer->train_step(batch);
          loss = l.value[0];
        },
        5, o.reps ? o.reps : 20, nullptr);
    Result r;
    r.workload = w.name;
    r.measure = "train step";
    r.ms = t.ms;
    r.wall_ms = t.wall_ms;
    r.min_ms = t.min_ms;
    r.reps = t.reps;
    r.note = "batch " + std::to_string(w.batch) + ", loss0 " + num(loss);
    g_results.push_back(r);
  });

  const mtrec::MultiTaskModel<float, Cuda>& cm = *model;
  for (index_t B : {index_t(256), index_t(16), index_t(1)}) {
    const std::string measure = "infer b" + std::to_string(B);
    guarded(w.name, measure, [&] {
      const mtrec::Batch<float> batch = mtrec_bench::make_batch(w, config, B, 7 + std::uint64_t(B));
      mtrec::MultiTaskModel<float, Cuda>::Workspace ws;
      Tensor<float> out;
      const Timing t = time_calls([&] { cm.predict(ws, batch, out); }, 5, o.reps ? o.reps : 50, nullptr);
      Result r;
      r.workload = w.name;
      r.measure = measure;
      r.ms = t.ms;
      r.wall_ms = t.wall_ms;
      r.min_ms = t.min_ms;
      r.reps = t.reps;
      r.note = "out " + std::to_string(out.dim(0)) + " x " + std::to_string(out.dim(1));
      g_results.push_back(r);
    });
  }
}

// ---- the kernels ---------------------------------------------------------------------

std::uint64_t splitmix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// n uniform floats in [-a, a), on the device.
void fill_uniform(Tensor<float, Cuda>& t, float a, std::uint64_t seed) {
  std::vector<float> h(std::size_t(t.numel()));
  for (auto& x : h) x = a * (float(splitmix(seed) >> 40) * (2.0f / float(1 << 24)) - 1.0f);
  mtrec::to_device(t.device(), t.view(), h.data());
}

template <class T>
Tensor<T, Cuda> device_copy(const std::vector<T>& h) {
  Tensor<T, Cuda> t(mtrec::Shape{index_t(h.size())});
  mtrec::to_device(t.device(), t.view(), h.data());
  return t;
}

Result bandwidth_result(const char* measure, const Timing& t, double bytes, double copy_gbs, const std::string& note) {
  Result r;
  r.workload = "kernels";
  r.measure = measure;
  r.ms = t.ms;
  r.min_ms = t.min_ms;
  r.reps = t.reps;
  r.bytes = bytes;
  r.gbs = t.ms > 0 ? bytes / (t.ms * 1e-3) * 1e-9 : 0;
  r.pct_copy = copy_gbs > 0 ? 100.0 * r.gbs / copy_gbs : -1;
  r.note = note;
  return r;
}

void bench_kernels(const Options& o, int l2_bytes) {
  const Cuda dev;
  std::unique_ptr<L2Flush> flush;
  guarded("kernels", "L2 flush buffer", [&] { flush = std::make_unique<L2Flush>(l2_bytes); });
  if (!flush) return;
  const int reps = o.reps ? o.reps : 30;

  // (a) device-to-device copy of 1 GiB
  double copy_gbs = 0;
  guarded("kernels", "copy", [&] {
    const std::size_t bytes = std::size_t(1) << 30;
    Tensor<std::uint8_t, Cuda> src(mtrec::Shape{index_t(bytes)}), dst(mtrec::Shape{index_t(bytes)});
    src.zero();
    dst.zero();
    const Timing t = time_calls([&] { dev.copy(mtrec::raw(dst.data()), mtrec::raw(src.data()), bytes); }, 2,
                                o.reps ? o.reps : 10, flush.get());
    Result r = bandwidth_result("copy", t, 2.0 * double(bytes), 0, "cudaMemcpyAsync 1 GiB D2D, read + write bytes");
    r.pct_copy = 100.0;
    copy_gbs = r.gbs;
    g_results.push_back(r);
  });

  // The embedding shapes: a table of 1M x 64 floats, 2048 bags of 32 IDs, mean.
  constexpr index_t kRows = 1 << 20, kDim = 64, kBags = 2048, kLen = 32;
  const index_t n = kBags * kLen;
  std::vector<index_t> ids(static_cast<std::size_t>(n)), offsets(static_cast<std::size_t>(kBags + 1));
  std::uint64_t seed = 12345;
  for (auto& id : ids) id = index_t(splitmix(seed) % std::uint64_t(kRows));
  for (index_t b = 0; b <= kBags; ++b) offsets[std::size_t(b)] = b * kLen;
  std::vector<index_t> uniq = ids;
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  const index_t U = index_t(uniq.size());
  const std::string shape = "table 1M x 64 f32, 2048 bags x 32 IDs, mean; " + std::to_string(U) + " distinct rows";

  Tensor<float, Cuda> w, m, v, g, y, dy;
  Tensor<index_t, Cuda> ids_d, offsets_d, uniq_d;
  guarded("kernels", "setup", [&] {
    w.resize(mtrec::Shape{kRows, kDim});
    fill_uniform(w, 0.05f, 1);
    m.resize(mtrec::Shape{kRows, kDim});
    m.zero();
    v.resize(mtrec::Shape{kRows, kDim});
    v.zero();
    g.resize(mtrec::Shape{kRows, kDim});
    g.zero();
    y.resize(mtrec::Shape{kBags, kDim});
    dy.resize(mtrec::Shape{kBags, kDim});
    fill_uniform(dy, 1.0f, 2);
    ids_d = device_copy(ids);
    offsets_d = device_copy(offsets);
    uniq_d = device_copy(uniq);
    dev.synchronize("bench setup");
  });
  if (uniq_d.numel() != U) return;

  const mtrec::DevicePtr<const float, CudaMem> no_weights(nullptr);
  const mtrec::DevicePtr<std::uint8_t, CudaMem> no_touched(nullptr);
  const mtrec::DevicePtr<float, CudaMem> no_dweights(nullptr);
  const bool mean = true;
  // One Adam step's hyper-parameters (t = 1's bias corrections; lr small, so
  // repeated steps keep every weight finite).
  mtrec::kernels::AdamStep<float> st;
  st.lr = 1e-3f;
  st.bias_correction1 = 1.0f - 0.9f;
  st.bias_correction2 = 1.0f - 0.999f;

  // (b) embedding-bag forward: rows read + output written
  guarded("kernels", "bag_forward", [&] {
    const double bytes = double(n) * kDim * 4 + double(kBags) * kDim * 4;
    const Timing t = time_calls(
        [&] {
          mtrec::kernels::embedding_bag_forward(dev, y.data(), w.data(), ids_d.data(), offsets_d.data(), no_weights,
                                                kBags, kDim, mean);
        },
        3, reps, flush.get());
    g_results.push_back(bandwidth_result("bag_forward", t, bytes, copy_gbs, shape + "; bytes = rows read + y written"));
  });

  // (c) the fused backward + lazy Adam: per distinct row w, m, v read and written, + dy read
  const double adam_bytes = double(U) * kDim * 4 * 6 + double(kBags) * kDim * 4;
  guarded("kernels", "bag_backward_adam_fused", [&] {
    const Timing t = time_calls(
        [&] {
          (void)mtrec::kernels::embedding_bag_backward_adam(dev, w.data(), m.data(), v.data(), dy.data(),
                                                            ids_d.data(), offsets_d.data(), no_weights, kBags, n,
                                                            kDim, mean, st);
        },
        3, reps, flush.get());
    g_results.push_back(bandwidth_result("bag_backward_adam_fused", t, adam_bytes, copy_gbs,
                                         shape + "; bytes = distinct rows x (w, m, v) x (read + write) + dy read"));
  });

  // (d) the unfused path: zero the touched grad rows, scatter the bag
  // gradient into them, Adam over the touched rows.
  const mtrec::RowSet set{0, mtrec::raw(uniq_d.data()), U, kDim};
  auto zero_rows = [&] { dev.zero_rows(mtrec::raw(g.data()), mtrec::raw(uniq_d.data()), U, sizeof(float) * kDim); };
  auto backward = [&] {
    mtrec::kernels::embedding_bag_backward(dev, g.data(), no_touched, no_dweights, dy.data(), w.data(), ids_d.data(),
                                           offsets_d.data(), no_weights, kBags, n, kDim, mean);
  };
  auto adam_rows = [&] { (void)mtrec::kernels::adam_update_rows(dev, w.data(), m.data(), v.data(), g.data(), &set, index_t(1), st); };
  guarded("kernels", "bag_backward_adam_unfused", [&] {
    const Timing t = time_calls(
        [&] {
          zero_rows();
          backward();
          adam_rows();
        },
        3, reps, flush.get());
    g_results.push_back(bandwidth_result("bag_backward_adam_unfused", t, adam_bytes, copy_gbs,
                                         "zero_rows + embedding_bag_backward + adam_update_rows; same bytes as fused"));
  });
  guarded("kernels", "unfused_zero_rows", [&] {
    const Timing t = time_calls(zero_rows, 3, reps, flush.get());
    g_results.push_back(bandwidth_result("unfused_zero_rows", t, double(U) * kDim * 4, copy_gbs,
                                         "grad's distinct rows written"));
  });
  guarded("kernels", "unfused_bag_backward", [&] {
    const Timing t = time_calls(backward, 3, reps, flush.get());
    g_results.push_back(bandwidth_result("unfused_bag_backward", t, double(U) * kDim * 4 * 2 + double(kBags) * kDim * 4,
                                         copy_gbs, "grad's distinct rows read + written, dy read"));
  });
  guarded("kernels", "unfused_adam_update_rows", [&] {
    const Timing t = time_calls(adam_rows, 3, reps, flush.get());
    g_results.push_back(bandwidth_result("unfused_adam_update_rows", t, double(U) * kDim * 4 * 7, copy_gbs,
                                         "distinct rows: w, m, v read + written, g read"));
  });
}

// ---- output --------------------------------------------------------------------------

struct DeviceInfo {
  std::string name;
  int sm_major = 0, sm_minor = 0, sms = 0, l2_bytes = 0;
  double mem_bytes = 0;
  int runtime = 0, driver = 0;
};

void print_tables(const DeviceInfo& d) {
  std::printf("\n| workload | measure | gpu ms (median) | wall ms (median) | gpu ms (min) | reps | note |\n");
  std::printf("|---|---|---:|---:|---:|---:|---|\n");
  for (const Result& r : g_results)
    if (r.gbs < 0)
      std::printf("| %s | %s | %.4f | %.4f | %.4f | %d | %s |\n", r.workload.c_str(), r.measure.c_str(), r.ms,
                  r.wall_ms, r.min_ms, r.reps, r.note.c_str());
  bool any = false;
  for (const Result& r : g_results) any |= r.gbs >= 0;
  if (any) {
    std::printf("\nkernels (L2 flushed before every repetition; %s, L2 %d MiB):\n", d.name.c_str(), d.l2_bytes >> 20);
    std::printf("| kernel | ms (median) | ms (min) | GB/s | %% of copy | MB moved | note |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---|\n");
    for (const Result& r : g_results)
      if (r.gbs >= 0)
        std::printf("| %s | %.4f | %.4f | %.1f | %.1f%% | %.2f | %s |\n", r.measure.c_str(), r.ms, r.min_ms, r.gbs,
                    r.pct_copy, r.bytes * 1e-6, r.note.c_str());
  }
  for (const auto& e : g_errors) std::printf("ERROR: %s\n", e.c_str());
}

bool write_json(const std::string& path, const DeviceInfo* d, const std::string& no_device) {
  std::ofstream f(path);
  if (!f) {
    std::fprintf(stderr, "mtrec_bench_cuda: cannot write %s\n", path.c_str());
    return false;
  }
  f << "{\n";
  if (!d) {
    f << " \"no_device\": \"" << json_escape(no_device) << "\"\n}\n";
    return bool(f);
  }
  f << " \"device\": {\"name\": \"" << json_escape(d->name) << "\", \"sm\": \"" << d->sm_major << d->sm_minor
    << "\", \"multiprocessors\": " << d->sms << ", \"l2_bytes\": " << d->l2_bytes << ", \"memory_bytes\": "
    << num(d->mem_bytes) << ", \"runtime_version\": " << d->runtime << ", \"driver_version\": " << d->driver << "},\n";
  f << " \"results\": [";
  for (std::size_t i = 0; i < g_results.size(); ++i) {
    const Result& r = g_results[i];
    f << (i ? ",\n  " : "\n  ") << "{\"workload\": \"" << json_escape(r.workload) << "\", \"measure\": \""
      << json_escape(r.measure) << "\", \"ms\": " << num(r.ms) << ", \"min_ms\": " << num(r.min_ms);
    if (r.wall_ms >= 0) f << ", \"wall_ms\": " << num(r.wall_ms);
    f << ", \"reps\": " << r.reps;
    if (r.gbs >= 0) f << ", \"gbs\": " << num(r.gbs) << ", \"bytes\": " << num(r.bytes);
    if (r.pct_copy >= 0) f << ", \"pct_copy\": " << num(r.pct_copy);
    f << ", \"note\": \"" << json_escape(r.note) << "\"}";
  }
  f << "\n ],\n \"errors\": [";
  for (std::size_t i = 0; i < g_errors.size(); ++i) f << (i ? ", " : "") << "\"" << json_escape(g_errors[i]) << "\"";
  f << "]\n}\n";
  return bool(f);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    parse(argc, argv, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mtrec_bench_cuda: %s\n", e.what());
    usage(stderr);
    return 2;
  }
  if (!mtrec::cuda::available()) {
    const std::string why = mtrec::cuda::unavailable_reason();
    std::printf("mtrec_bench_cuda: no CUDA device: %s\n", why.c_str());
    if (!o.json.empty()) write_json(o.json, nullptr, why);
    return 0;
  }
  DeviceInfo d;
  try {
    int id = 0;
    mtrec::cuda::check(cudaGetDevice(&id), "bench", "cudaGetDevice");
    cudaDeviceProp p{};
    mtrec::cuda::check(cudaGetDeviceProperties(&p, id), "bench", "cudaGetDeviceProperties");
    mtrec::cuda::check(cudaDeviceGetAttribute(&d.l2_bytes, cudaDevAttrL2CacheSize, id), "bench", "L2 size");
    d.name = p.name;
    d.sm_major = p.major;
    d.sm_minor = p.minor;
    d.sms = p.multiProcessorCount;
    d.mem_bytes = double(p.totalGlobalMem);
    (void)cudaRuntimeGetVersion(&d.runtime);
    (void)cudaDriverGetVersion(&d.driver);
  } catch (const std::exception& e) {
    std::printf("mtrec_bench_cuda: no usable CUDA device: %s\n", e.what());
    return 1;
  }
  std::printf("# mtrec_bench_cuda: device %s, sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB, runtime %d, driver %d\n",
              d.name.c_str(), d.sm_major, d.sm_minor, d.sms, d.mem_bytes / double(1 << 30), d.l2_bytes >> 20,
              d.runtime, d.driver);
  std::fflush(stdout);

  for (const std::string& name : o.workloads) {
    std::fprintf(stderr, "# timing %s ...\n", name.c_str());
    bench_workload(mtrec_bench::workload(name), o);
  }
  if (o.kernels) {
    std::fprintf(stderr, "# timing the kernels ...\n");
    bench_kernels(o, d.l2_bytes);
  }
  print_tables(d);
  bool ok = g_errors.empty();
  if (!o.json.empty()) ok = write_json(o.json, &d, "") && ok;
  std::fflush(stdout);
  return ok ? 0 : 1;
}
