// mtrec kernel benchmarks: the xsimd/OpenMP `cpu` kernels (and, at a couple
// of small sizes, the scalar `reference` ones), with the machine's measured
// ceilings as yardsticks (bench/peak.hpp):
//   compute-bound (GEMM, attention): GFLOP/s and %peak of the FMA probe
//   memory-bound (embedding bag, layernorm, GELU, softmax, Adam): GB/s and
//   %triad of the triad probe. Bytes are the compulsory traffic: every input
//   read once, every output written once.
// All OpenMP benchmarks use real (wall) time.
//
//   OMP_WAIT_POLICY=passive mtrec_bench --benchmark_filter='gemm|triad|peak' --benchmark_min_time=0.3
#include <benchmark/benchmark.h>

#include <mtrec/mtrec.hpp>

#include <cstdint>
#include <vector>

#include "peak.hpp"

namespace {

using mtrec::index_t;
using mtrec_bench::report_bytes;
using mtrec_bench::report_flops;

std::vector<float> random_input(index_t n, std::uint64_t seed, double scale = 2.0) {
  std::vector<float> x(static_cast<std::size_t>(n));
  const mtrec::RandomStream rs(seed, 1);
  for (index_t i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = float(rs.normal(std::uint64_t(i)) * scale);
  return x;
}

constexpr index_t kM1 = 1000000, kM10 = 10000000;

// ---- the probes themselves ---------------------------------------------------

void BM_peak_fma(benchmark::State& state) {
  const int threads = mtrec_bench::omp_threads();
  const long iters = 1L << 18;
  float sink = 0;
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec_bench::probe::run_fma(iters, threads, &sink);
    benchmark::DoNotOptimize(&sink);
  }
  report_flops(state, mtrec_bench::probe::flops_per_call(iters) * threads, mtrec_bench::since(t0));
  state.SetLabel(mtrec_bench::simd_isa());
}

void BM_triad(benchmark::State& state) {
  const int threads = mtrec_bench::omp_threads();
  mtrec_bench::probe::TriadArrays t(threads);
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec_bench::probe::triad_pass(t, 3.f, threads);
    benchmark::DoNotOptimize(t.a);
    benchmark::ClobberMemory();
  }
  report_bytes(state, mtrec_bench::probe::TriadArrays::bytes_per_pass(), mtrec_bench::since(t0));
}

// ---- GEMM --------------------------------------------------------------------

// bf16 C (n,n) = bf16(A) (n,n) * Bp, B packed once (a weight: packed once per
// optimizer step), A converted while it is packed, on every path the machine
// has; %bf16peak is against the AMX probe where there is AMX, else the
// VDPBF16PS probe.
void BM_gemm_bf16(benchmark::State& state, mtrec::kernels::Bf16Path path, mtrec::kernels::Trans tb) {
  namespace k = mtrec::kernels;
  if (!k::bf16_path_available(path)) {
    state.SkipWithError(("no " + std::string(k::bf16_path_name(path)) + " on this machine").c_str());
    return;
  }
  const index_t n = state.range(0);
  const std::vector<float> a = random_input(n * n, 1), b = random_input(n * n, 2);
  std::vector<float> c(static_cast<std::size_t>(n * n));
  k::Bf16PackedB bp;
  k::bf16_pack_b(bp, tb, n, n, b.data(), n);
  mtrec_bench::peak();
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    k::bf16_gemm_packed(path, k::Trans::N, n, n, n, 1.0f, a.data(), n, bp, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  mtrec_bench::report_bf16_flops(state, 2.0 * double(n) * double(n) * double(n), mtrec_bench::since(t0));
  state.SetLabel(k::bf16_path_name(path));
}

void BM_peak_bf16(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(mtrec_bench::peak().bf16_flops());
  state.counters["vdpbf16ps_GFLOP/s"] = mtrec_bench::peak().bf16_dp_flops * 1e-9;
  state.counters["amx_GFLOP/s"] = mtrec_bench::peak().bf16_amx_flops * 1e-9;
  state.counters["fma_GFLOP/s"] = mtrec_bench::peak().fma_flops * 1e-9;
}

// C (M,N) = op(A) (M,K) * op(B) (K,N). NN: plain products (and the Linear
// backward dX = dY W); NT: the Linear forward Y = X W^T.
template <class Device>
void gemm_bench(benchmark::State& state, Device dev, mtrec::kernels::Trans tb, index_t M, index_t K, index_t N) {
  using mtrec::kernels::Trans;
  const std::vector<float> a = random_input(M * K, 1), b = random_input(K * N, 2);
  std::vector<float> c(static_cast<std::size_t>(M * N));
  const index_t ldb = tb == Trans::N ? N : K;
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::gemm(dev, Trans::N, tb, M, N, K, 1.0f, a.data(), K, b.data(), ldb, 0.0f, c.data(), N);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(M) * double(N) * double(K), mtrec_bench::since(t0));
}

// Square: n = state.range(0).
template <class Device>
void BM_gemm(benchmark::State& state, Device dev) {
  const index_t n = state.range(0);
  gemm_bench(state, dev, mtrec::kernels::Trans::N, n, n, n);
}
// C (n,n) = A (n,n) B^T: the Linear forward product.
template <class Device>
void BM_gemm_nt(benchmark::State& state, Device dev) {
  const index_t n = state.range(0);
  gemm_bench(state, dev, mtrec::kernels::Trans::T, n, n, n);
}
// The model's shapes: M, K, N = range(0..2).
template <class Device>
void BM_gemm_shape(benchmark::State& state, Device dev, mtrec::kernels::Trans tb) {
  gemm_bench(state, dev, tb, state.range(0), state.range(1), state.range(2));
}

// ---- embedding bag -------------------------------------------------------------

// 1M x 64 table, batch 2048, 20 random IDs per bag, mean pooling.
struct BagSetup {
  static constexpr index_t kRows = 1000000, kDim = 64, kBatch = 2048, kLen = 20;
  mtrec::ParameterStore<float> store{1};
  mtrec::EmbeddingBag<float> bag;
  mtrec::Tensor<index_t> ids{{kBatch * kLen}}, offsets{{kBatch + 1}};
  mtrec::Tensor<float> y{{kBatch, kDim}}, dy{{kBatch, kDim}};
  mtrec::EmbeddingBag<float>::Context ctx;
  BagSetup() : bag(store, "table", kRows, kDim, mtrec::BagPooling::Mean) {
    store.allocate();
    const mtrec::RandomStream rs(42, 3);
    for (index_t i = 0; i < kBatch * kLen; ++i) ids[i] = index_t(rs.below(std::uint64_t(i), kRows));
    for (index_t b = 0; b <= kBatch; ++b) offsets[b] = b * kLen;
    const std::vector<float> g = random_input(kBatch * kDim, 5, 0.1);
    std::copy(g.begin(), g.end(), dy.data());
  }
  // row reads + ids + offsets + output
  static double forward_bytes() {
    return double(kBatch * kLen) * (kDim * 4.0 + 8.0) + double(kBatch + 1) * 8.0 + double(kBatch * kDim) * 4.0;
  }
  // dy read + grad rows read and written + ids
  static double backward_bytes() {
    return double(kBatch * kDim) * 4.0 + double(kBatch * kLen) * (2.0 * kDim * 4.0 + 8.0);
  }
};

BagSetup& bag_setup() {
  static BagSetup s;
  return s;
}

void BM_embedding_bag_forward(benchmark::State& state) {
  BagSetup& s = bag_setup();
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    s.bag.forward(s.ctx, s.ids.view(), s.offsets.view(), {}, s.y.view());
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  report_bytes(state, BagSetup::forward_bytes(), mtrec_bench::since(t0));
  state.SetItemsProcessed(state.iterations() * BagSetup::kBatch * BagSetup::kLen);
}

void BM_embedding_bag_backward(benchmark::State& state) {
  BagSetup& s = bag_setup();
  s.bag.forward(s.ctx, s.ids.view(), s.offsets.view(), {}, s.y.view());
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    s.bag.backward(s.ctx, s.dy.view());
    benchmark::ClobberMemory();
  }
  report_bytes(state, BagSetup::backward_bytes(), mtrec_bench::since(t0));
  state.SetItemsProcessed(state.iterations() * BagSetup::kBatch * BagSetup::kLen);
  s.store.zero_grad();
}

// ---- attention --------------------------------------------------------------------

// B=512, T=50, d=64, 4 heads, lengths uniform in [1, T].
struct AttentionSetup {
  static constexpr index_t kB = 512, kT = 50, kD = 64, kH = 4;
  mtrec::ParameterStore<float> store{2};
  mtrec::MultiHeadAttention<float> mha;
  mtrec::Tensor<float> x{{kB, kT, kD}}, y{{kB, kT, kD}}, dy{{kB, kT, kD}}, dx{{kB, kT, kD}};
  mtrec::Tensor<index_t> lengths{{kB}};
  mtrec::MultiHeadAttention<float>::Context ctx;
  double fwd_flops = 0, bwd_flops = 0;
  AttentionSetup() : mha(store, "mha", kD, kH) {
    store.allocate();
    const std::vector<float> xs = random_input(kB * kT * kD, 11, 1.0), gs = random_input(kB * kT * kD, 12, 0.1);
    std::copy(xs.begin(), xs.end(), x.data());
    std::copy(gs.begin(), gs.end(), dy.data());
    const mtrec::RandomStream rs(43, 4);
    double ll = 0;
    for (index_t b = 0; b < kB; ++b) {
      lengths[b] = 1 + index_t(rs.below(std::uint64_t(b), kT));
      ll += double(lengths[b]) * double(lengths[b]);
    }
    const double n = double(kB * kT), dh = double(kD / kH);
    // projections (the in_proj and out_proj GEMMs over all B*T rows) + per head QK^T and PV over valid rows
    fwd_flops = 2.0 * n * kD * 3 * kD + 2.0 * n * kD * kD + kH * ll * 2.0 * dh * 2.0;
    // backward: twice the projections' GEMMs; per head dP, dQ, dK, dV
    bwd_flops = 2.0 * (2.0 * n * kD * 3 * kD + 2.0 * n * kD * kD) + kH * ll * 2.0 * dh * 4.0;
  }
};

AttentionSetup& attention_setup() {
  static AttentionSetup s;
  return s;
}

void BM_attention_forward(benchmark::State& state) {
  AttentionSetup& s = attention_setup();
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    s.mha.forward(s.ctx, s.x.view(), s.lengths.view(), s.y.view());
    benchmark::DoNotOptimize(s.y.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, s.fwd_flops, mtrec_bench::since(t0));
}

void BM_attention_backward(benchmark::State& state) {
  AttentionSetup& s = attention_setup();
  s.mha.forward(s.ctx, s.x.view(), s.lengths.view(), s.y.view());
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    s.mha.backward(s.ctx, s.dy.view(), s.dx.view());
    benchmark::DoNotOptimize(s.dx.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, s.bwd_flops, mtrec_bench::since(t0));
  s.store.zero_grad();
}

// ---- elementwise and row kernels -------------------------------------------------

// y = gelu(x): reads n floats, writes n floats.
template <class Device>
void BM_gelu_forward(benchmark::State& state, Device dev, mtrec::kernels::GeluMode mode) {
  const index_t n = state.range(0);
  const std::vector<float> x = random_input(n, 7);
  std::vector<float> y(x.size());
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::gelu_forward(dev, y.data(), x.data(), n, mode);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  report_bytes(state, double(n) * 8.0, mtrec_bench::since(t0));
}

// dx = dy * gelu'(x): reads 2n, writes n.
template <class Device>
void BM_gelu_backward(benchmark::State& state, Device dev, mtrec::kernels::GeluMode mode) {
  const index_t n = state.range(0);
  const std::vector<float> x = random_input(n, 7), dy = random_input(n, 8, 0.1);
  std::vector<float> dx(x.size());
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::gelu_backward(dev, dx.data(), dy.data(), x.data(), n, mode);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  report_bytes(state, double(n) * 12.0, mtrec_bench::since(t0));
}

// LayerNorm over rows of 64 (the model's d_model): n = rows * 64 elements.
constexpr index_t kLnCols = 64;

template <class Device>
void BM_layernorm_forward(benchmark::State& state, Device dev) {
  const index_t n = state.range(0), rows = n / kLnCols;
  const std::vector<float> x = random_input(n, 9), gamma = random_input(kLnCols, 10), beta = random_input(kLnCols, 11);
  std::vector<float> y(x.size()), mean(static_cast<std::size_t>(rows)), rstd(mean.size());
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::layernorm_forward(dev, y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(),
                                      rows, kLnCols, 1e-5f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  report_bytes(state, double(n) * 8.0 + double(rows) * 8.0, mtrec_bench::since(t0));
}

template <class Device>
void BM_layernorm_backward(benchmark::State& state, Device dev) {
  const index_t n = state.range(0), rows = n / kLnCols;
  const std::vector<float> x = random_input(n, 9), dy = random_input(n, 12, 0.1), gamma = random_input(kLnCols, 10),
                           beta = random_input(kLnCols, 11);
  std::vector<float> y(x.size()), dx(x.size()), mean(static_cast<std::size_t>(rows)), rstd(mean.size());
  std::vector<float> dgamma(kLnCols), dbeta(kLnCols);
  mtrec::kernels::layernorm_forward(dev, y.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), rows,
                                    kLnCols, 1e-5f);
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::layernorm_backward(dev, dx.data(), dgamma.data(), dbeta.data(), dy.data(), x.data(), mean.data(),
                                       rstd.data(), gamma.data(), rows, kLnCols);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  // x, dy read, dx written (the column-sum pass reads x and dy again: not counted)
  report_bytes(state, double(n) * 12.0 + double(rows) * 8.0, mtrec_bench::since(t0));
}

// Softmax over rows of 50 (an attention row at T = 50).
constexpr index_t kSmCols = 50;

template <class Device>
void BM_softmax_forward(benchmark::State& state, Device dev) {
  const index_t n = state.range(0), rows = n / kSmCols;
  const std::vector<float> x = random_input(n, 13);
  std::vector<float> y(x.size());
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::softmax_forward(dev, y.data(), x.data(), rows, kSmCols);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  report_bytes(state, double(n) * 8.0, mtrec_bench::since(t0));
}

template <class Device>
void BM_softmax_backward(benchmark::State& state, Device dev) {
  const index_t n = state.range(0), rows = n / kSmCols;
  const std::vector<float> x = random_input(n, 13), dy = random_input(n, 14, 0.1);
  std::vector<float> y(x.size()), dx(x.size());
  mtrec::kernels::softmax_forward(dev, y.data(), x.data(), rows, kSmCols);
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::softmax_backward(dev, dx.data(), dy.data(), y.data(), rows, kSmCols);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  report_bytes(state, double(n) * 12.0, mtrec_bench::since(t0));
}

// One dense Adam step: reads w, m, v, g; writes w, m, v (28 bytes/element).
template <class Device>
void BM_adam_update(benchmark::State& state, Device dev) {
  const index_t n = state.range(0);
  std::vector<float> w = random_input(n, 15, 0.1), m(static_cast<std::size_t>(n), 0.f),
                     v(static_cast<std::size_t>(n), 0.f);
  const std::vector<float> g = random_input(n, 16, 0.01);
  mtrec::kernels::AdamStep<float> s;
  s.lr = 1e-3f;
  s.bias_correction1 = 1.f - 0.9f;
  s.bias_correction2 = 1.f - 0.999f;
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::adam_update(dev, w.data(), m.data(), v.data(), g.data(), n, s);
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  report_bytes(state, double(n) * 28.0, mtrec_bench::since(t0));
}

// Exact top-K retrieval: one query against N rows x 64 (1M rows: 256 MB,
// far beyond the caches), k = 100, 20 excluded rows. Bytes: the table read
// once, so %triad is the search's time against streaming the table once at
// the triad bandwidth (issue target: >= 50 %).
void BM_topk_exact(benchmark::State& state) {
  const index_t N = state.range(0), dim = 64, k = 100;
  static std::vector<float> table;
  if (index_t(table.size()) != N * dim) table = random_input(N * dim, 21, 1.0);
  const std::vector<float> q = random_input(dim, 22, 1.0);
  std::vector<index_t> ex;
  for (index_t i = 0; i < 20; ++i) ex.push_back(i * (N / 20));
  std::vector<index_t> rows(static_cast<std::size_t>(k));
  std::vector<float> scores(static_cast<std::size_t>(k));
  const auto t0 = mtrec_bench::now();
  for (auto _ : state) {
    mtrec::kernels::topk_inner_product(mtrec::kernels::cpu, rows.data(), scores.data(), table.data(), N, dim,
                                       q.data(), k, ex.data(), index_t(ex.size()));
    benchmark::DoNotOptimize(rows.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * N);
  report_bytes(state, double(N) * dim * 4.0, mtrec_bench::since(t0));
}

using mtrec::kernels::GeluMode;
using mtrec::kernels::Trans;
constexpr auto kCpu = mtrec::kernels::cpu;
constexpr auto kRef = mtrec::kernels::reference;

}  // namespace

// Probes (their numbers are the denominators of %peak and %triad).
BENCHMARK(BM_peak_fma)->UseRealTime();
BENCHMARK(BM_triad)->UseRealTime();
BENCHMARK(BM_peak_bf16)->Iterations(1);

// GEMM.
BENCHMARK_CAPTURE(BM_gemm, cpu, kCpu)->Arg(256)->Arg(512)->Arg(1024)->Arg(2048)->UseRealTime();
BENCHMARK_CAPTURE(BM_gemm, reference, kRef)->Arg(64)->Arg(128)->UseRealTime();
BENCHMARK_CAPTURE(BM_gemm_bf16, avx512_bf16, mtrec::kernels::Bf16Path::avx512_bf16, Trans::N)
    ->Arg(256)->Arg(512)->Arg(1024)->UseRealTime();
BENCHMARK_CAPTURE(BM_gemm_bf16, amx, mtrec::kernels::Bf16Path::amx, Trans::N)
    ->Arg(256)->Arg(512)->Arg(1024)->UseRealTime();
BENCHMARK_CAPTURE(BM_gemm_nt, cpu, kCpu)->Arg(256)->Arg(512)->UseRealTime();
BENCHMARK_CAPTURE(BM_gemm_shape, cpu_nn, kCpu, Trans::N)
    ->ArgNames({"M", "K", "N"})
    ->Args({512, 352, 256})
    ->Args({512, 256, 128})
    ->Args({25600, 64, 192})
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_gemm_shape, cpu_nt, kCpu, Trans::T)
    ->ArgNames({"M", "K", "N"})
    ->Args({512, 352, 256})
    ->Args({512, 256, 128})
    ->Args({25600, 64, 192})
    ->UseRealTime();

// Layers.
BENCHMARK(BM_embedding_bag_forward)->UseRealTime();
BENCHMARK(BM_embedding_bag_backward)->UseRealTime();
BENCHMARK(BM_attention_forward)->UseRealTime();
BENCHMARK(BM_attention_backward)->UseRealTime();
BENCHMARK(BM_topk_exact)->Arg(1 << 20)->Arg(1000000)->UseRealTime();

// Elementwise / row kernels. CI runs
//   --benchmark_filter='BM_gelu_forward/(cpu|reference)_erf/1024$'
// The n = 1024 entries keep CPU time so that their names carry no
// "/real_time" suffix (CI's filter ends in 1024$); 1024 elements are one
// chunk, so no OpenMP region is opened and CPU time equals wall time.
BENCHMARK_CAPTURE(BM_gelu_forward, cpu_erf, kCpu, GeluMode::Erf)->Arg(1024);
BENCHMARK_CAPTURE(BM_gelu_forward, reference_erf, kRef, GeluMode::Erf)->Arg(1024);
BENCHMARK_CAPTURE(BM_gelu_forward, cpu_erf, kCpu, GeluMode::Erf)->Arg(kM1)->Arg(kM10)->UseRealTime();
BENCHMARK_CAPTURE(BM_gelu_forward, reference_erf, kRef, GeluMode::Erf)->Arg(1 << 16)->UseRealTime();
BENCHMARK_CAPTURE(BM_gelu_forward, cpu_tanh, kCpu, GeluMode::Tanh)->Arg(kM1)->UseRealTime();
BENCHMARK_CAPTURE(BM_gelu_forward, reference_tanh, kRef, GeluMode::Tanh)->Arg(1 << 16)->UseRealTime();
BENCHMARK_CAPTURE(BM_gelu_backward, cpu_erf, kCpu, GeluMode::Erf)->Arg(kM1)->Arg(kM10)->UseRealTime();
BENCHMARK_CAPTURE(BM_layernorm_forward, cpu, kCpu)->Arg(kM1)->Arg(kM10)->UseRealTime();
BENCHMARK_CAPTURE(BM_layernorm_forward, reference, kRef)->Arg(1 << 16)->UseRealTime();
BENCHMARK_CAPTURE(BM_layernorm_backward, cpu, kCpu)->Arg(kM1)->Arg(kM10)->UseRealTime();
BENCHMARK_CAPTURE(BM_softmax_forward, cpu, kCpu)->Arg(kM1)->Arg(kM10)->UseRealTime();
BENCHMARK_CAPTURE(BM_softmax_forward, reference, kRef)->Arg(50 * 1000)->UseRealTime();
BENCHMARK_CAPTURE(BM_softmax_backward, cpu, kCpu)->Arg(kM1)->Arg(kM10)->UseRealTime();
BENCHMARK_CAPTURE(BM_adam_update, cpu, kCpu)->Arg(kM1)->Arg(kM10)->UseRealTime();
BENCHMARK_CAPTURE(BM_adam_update, reference, kRef)->Arg(1 << 16)->UseRealTime();
