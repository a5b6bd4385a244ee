// mtrec kernel benchmarks: the xsimd/OpenMP `cpu` kernels against the scalar
// `reference` ones. A stub: later work adds GEMM, LayerNorm, attention and
// whole-layer steps.
//
//   mtrec_bench --benchmark_filter=gelu --benchmark_min_time=0.1
#include <benchmark/benchmark.h>

#include <mtrec/mtrec.hpp>

#include <cstdint>
#include <vector>

namespace {

using mtrec::index_t;

std::vector<float> random_input(index_t n, std::uint64_t seed) {
  std::vector<float> x(static_cast<std::size_t>(n));
  const mtrec::RandomStream rs(seed, 1);
  for (index_t i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = float(rs.normal(std::uint64_t(i)) * 2.0);
  return x;
}

// y = gelu(x): reads n floats, writes n floats.
template <class Device>
void BM_gelu_forward(benchmark::State& state, Device dev, mtrec::kernels::GeluMode mode) {
  const index_t n = state.range(0);
  const std::vector<float> x = random_input(n, 7);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    mtrec::kernels::gelu_forward(dev, y.data(), x.data(), n, mode);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * index_t(2 * sizeof(float)));
}

// C (n,n) = A (n,n) B^T: the Linear forward product.
template <class Device>
void BM_gemm_nt(benchmark::State& state, Device dev) {
  const index_t n = state.range(0);
  const std::vector<float> a = random_input(n * n, 1), b = random_input(n * n, 2);
  std::vector<float> c(a.size());
  for (auto _ : state) {
    mtrec::kernels::gemm(dev, mtrec::kernels::Trans::N, mtrec::kernels::Trans::T, n, n, n, 1.0f, a.data(), n,
                         b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(n) * double(n) * double(n) * double(state.iterations()) * 1e-9,
                         benchmark::Counter::kIsRate);
  state.SetBytesProcessed(state.iterations() * 3 * n * n * index_t(sizeof(float)));
}

}  // namespace

BENCHMARK_CAPTURE(BM_gelu_forward, cpu_erf, mtrec::kernels::cpu, mtrec::kernels::GeluMode::Erf)
    ->RangeMultiplier(16)->Range(1 << 10, 1 << 22);
BENCHMARK_CAPTURE(BM_gelu_forward, reference_erf, mtrec::kernels::reference, mtrec::kernels::GeluMode::Erf)
    ->RangeMultiplier(16)->Range(1 << 10, 1 << 22);
BENCHMARK_CAPTURE(BM_gelu_forward, cpu_tanh, mtrec::kernels::cpu, mtrec::kernels::GeluMode::Tanh)
    ->Arg(1 << 18);
BENCHMARK_CAPTURE(BM_gelu_forward, reference_tanh, mtrec::kernels::reference, mtrec::kernels::GeluMode::Tanh)
    ->Arg(1 << 18);
BENCHMARK_CAPTURE(BM_gemm_nt, cpu, mtrec::kernels::cpu)->Arg(64)->Arg(256);
BENCHMARK_CAPTURE(BM_gemm_nt, reference, mtrec::kernels::reference)->Arg(64);

BENCHMARK_MAIN();
