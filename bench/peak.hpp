// mtrec bench: this machine's ceilings, measured once per process.
//
//  * FMA peak: every thread runs kAcc independent chains of vector FMAs
//    (acc = acc * a + b) on registers only, so the loop is bound by FMA
//    throughput, not latency (kAcc >= FMA latency x FMA pipes). The vector
//    width is xsimd's default batch for the compile flags: AVX-512 (16 floats)
//    with -march=native on an AVX-512 machine, else AVX2 (8 floats).
//  * Triad bandwidth: a[i] = b[i] + s * c[i] over three arrays of 64 MiB
//    (far beyond the last-level cache), STREAM's convention for bytes:
//    3 x 4 bytes per element (the write-allocate read is not counted).
//
// peak() runs both probes at the current OpenMP thread count the first time
// it is called, and caches the result (one entry per thread count).
// Benchmarks report "%peak" = achieved FLOP/s / fma_flops, and "%triad" =
// achieved bytes/s / triad_bytes.
#pragma once

#include <benchmark/benchmark.h>

#include <xsimd/xsimd.hpp>

#include <mtrec/kernels/cpu_bf16.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mtrec_bench {

struct Peak {
  int threads = 1;
  double fma_flops = 0;    // FLOP/s (an FMA is 2 FLOP), all threads together
  double triad_bytes = 0;  // bytes/s, all threads together
  double bf16_dp_flops = 0;   // VDPBF16PS chains (0 without AVX512_BF16): a bf16 pair product-add is 2 FLOP per pair
  double bf16_amx_flops = 0;  // TDPBF16PS on registers-only tiles (0 without AMX)
  // The bf16 ceiling a bf16 GEMM is measured against: AMX's, else VDPBF16PS's.
  double bf16_flops() const { return bf16_amx_flops > 0 ? bf16_amx_flops : bf16_dp_flops; }
  const char* isa = "";
};

inline int omp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline const char* simd_isa() {
#if defined(__AVX512F__)
  return "avx512f";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#else
  return "generic";
#endif
}

namespace probe {

using fbatch = xsimd::batch<float>;
constexpr int kAcc = 12;  // Zen 4/5, Intel: FMA latency 4 x 2 pipes = 8 chains needed; 12 leaves margin

// One thread: `iters` rounds of kAcc independent FMAs. Returns a value that
// depends on every chain so nothing is optimised away.
inline float fma_chains(long iters, float seed) {
  fbatch acc[kAcc];
  for (int j = 0; j < kAcc; ++j) acc[j] = fbatch(seed + 0.001f * float(j));
  const fbatch a(0.999999f), b(1e-7f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kAcc; ++j) acc[j] = xsimd::fma(acc[j], a, b);
  }
  fbatch s = acc[0];
  for (int j = 1; j < kAcc; ++j) s += acc[j];
  return xsimd::hadd(s);
}

inline double flops_per_call(long iters) { return 2.0 * double(kAcc) * double(fbatch::size) * double(iters); }

#if MTREC_BF16_X86
// kAcc independent VDPBF16PS chains: 16 lanes x 2 pairs x 2 FLOP each.
__attribute__((target("avx512f,avx512bf16"))) inline float dp_chains(long iters, float seed) {
  __m512 acc[kAcc];
  for (int j = 0; j < kAcc; ++j) acc[j] = _mm512_set1_ps(seed + 0.001f * float(j));
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x33d633d6);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kAcc; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
  }
  __m512 s = acc[0];
  for (int j = 1; j < kAcc; ++j) s = _mm512_add_ps(s, acc[j]);
  return _mm512_reduce_add_ps(s);
}
inline double dp_flops_per_call(long iters) { return 2.0 * 2.0 * 16.0 * double(kAcc) * double(iters); }

// TDPBF16PS into four accumulator tiles from tiles already loaded: 16 x 16
// outputs x 32 products x 2 FLOP each per instruction.
__attribute__((target("amx-tile,amx-bf16,avx512f"))) inline float amx_chains(long iters) {
  mtrec::kernels::bf16_detail::TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  alignas(64) static thread_local std::uint16_t ones[16 * 32];
  for (auto& x : ones) x = 0x3f80;
  alignas(64) float out[16 * 16];
  _tile_loadconfig(&cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (long i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}
inline double amx_flops_per_call(long iters) { return 4.0 * 16.0 * 16.0 * 32.0 * 2.0 * double(iters); }
#endif

// Runs f(iters) on every thread; returns seconds of wall time.
template <class F>
inline double run_on_threads(F f, long iters, int threads, float* sink) {
  const auto t0 = std::chrono::steady_clock::now();
  float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  { total += f(iters); }
  const auto t1 = std::chrono::steady_clock::now();
  *sink = total;
  return std::chrono::duration<double>(t1 - t0).count();
}

// Best-of-7 seconds of f at an iteration count that takes >= 20 ms.
template <class F>
inline double best_seconds(F f, int threads, long* iters_out) {
  float sink = 0;
  long iters = 1L << 14;
  while (run_on_threads(f, iters, threads, &sink) < 0.02) iters *= 2;
  double best = 1e30;
  for (int r = 0; r < 7; ++r) best = std::min(best, run_on_threads(f, iters, threads, &sink));
  benchmark::DoNotOptimize(&sink);
  *iters_out = iters;
  return best;
}

// Every thread runs fma_chains(iters); returns seconds of wall time.
inline double run_fma(long iters, int threads, float* sink) {
  const auto t0 = std::chrono::steady_clock::now();
  float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  { total += fma_chains(iters, 1.0f); }
  const auto t1 = std::chrono::steady_clock::now();
  *sink = total;
  return std::chrono::duration<double>(t1 - t0).count();
}

// The three triad arrays, first touched by the threads that use them.
struct TriadArrays {
  static constexpr long kN = 16L << 20;  // 16 Mi floats = 64 MiB per array
  float *a = nullptr, *b = nullptr, *c = nullptr;
  explicit TriadArrays(int threads) {
    a = static_cast<float*>(std::aligned_alloc(64, kN * sizeof(float)));
    b = static_cast<float*>(std::aligned_alloc(64, kN * sizeof(float)));
    c = static_cast<float*>(std::aligned_alloc(64, kN * sizeof(float)));
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < kN; ++i) {
      a[i] = 0.f;
      b[i] = 1.f;
      c[i] = 2.f;
    }
  }
  ~TriadArrays() {
    std::free(a);
    std::free(b);
    std::free(c);
  }
  TriadArrays(const TriadArrays&) = delete;
  TriadArrays& operator=(const TriadArrays&) = delete;
  static double bytes_per_pass() { return 3.0 * double(kN) * sizeof(float); }
};

inline void triad_pass(TriadArrays& t, float s, int threads) {
  float* __restrict a = t.a;
  const float* __restrict b = t.b;
  const float* __restrict c = t.c;
#pragma omp parallel for simd schedule(static) num_threads(threads)
  for (long i = 0; i < TriadArrays::kN; ++i) a[i] = b[i] + s * c[i];
}

inline double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline Peak measure(int threads) {
  Peak p;
  p.threads = threads;
  p.isa = simd_isa();
  // FMA: best of 7 runs of ~50 ms each (best-of filters out preemption on a
  // shared machine).
  float sink = 0;
  long iters = 1L << 20;
  while (run_fma(iters, threads, &sink) < 0.02) iters *= 2;
  double best = 1e30;
  for (int r = 0; r < 7; ++r) best = std::min(best, run_fma(iters, threads, &sink));
  benchmark::DoNotOptimize(&sink);
  p.fma_flops = flops_per_call(iters) * threads / best;
  // Triad: best of 10 passes after one warm-up pass.
  TriadArrays t(threads);
  triad_pass(t, 3.f, threads);
  best = 1e30;
  for (int r = 0; r < 10; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    triad_pass(t, 3.f, threads);
    best = std::min(best, seconds(t0));
  }
  benchmark::DoNotOptimize(t.a);
  p.triad_bytes = TriadArrays::bytes_per_pass() / best;
#if MTREC_BF16_X86
  long it = 0;
  if (mtrec::kernels::bf16_path_available(mtrec::kernels::Bf16Path::avx512_bf16)) {
    const double s = best_seconds([](long n) { return dp_chains(n, 1.0f); }, threads, &it);
    p.bf16_dp_flops = dp_flops_per_call(it) * threads / s;
  }
  if (mtrec::kernels::bf16_path_available(mtrec::kernels::Bf16Path::amx)) {
    const double s = best_seconds([](long n) { return amx_chains(n); }, threads, &it);
    p.bf16_amx_flops = amx_flops_per_call(it) * threads / s;
  }
#endif
  return p;
}

}  // namespace probe

// The ceilings at the current OpenMP thread count (measured on first use).
inline const Peak& peak() {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<Peak>> cache;
  const int threads = omp_threads();
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[threads];
  if (!slot) {
    slot = std::make_unique<Peak>(probe::measure(threads));
    std::fprintf(stderr,
                 "[peak probe] threads=%d isa=%s fma=%.1f GFLOP/s triad=%.2f GB/s bf16 vdpbf16ps=%.1f GFLOP/s "
                 "amx=%.1f GFLOP/s%s%s\n",
                 slot->threads, slot->isa, slot->fma_flops * 1e-9, slot->triad_bytes * 1e-9, slot->bf16_dp_flops * 1e-9,
                 slot->bf16_amx_flops * 1e-9, slot->bf16_amx_flops > 0 ? "" : " (amx: ",
                 slot->bf16_amx_flops > 0 ? "" : (mtrec::kernels::bf16_support().amx_note + ")").c_str());
  }
  return *slot;
}

// Wall-clock time around a benchmark's loop (`seconds` below): the counters
// are plain numbers, not Google Benchmark rates (those print with "/s").
inline std::chrono::steady_clock::time_point now() { return std::chrono::steady_clock::now(); }
inline double since(std::chrono::steady_clock::time_point t0) { return probe::seconds(t0); }

// Counters for a benchmark that ran state.iterations() iterations of
// `flops` FLOP and/or `bytes` bytes each in `seconds` of wall time.
inline void report_flops(benchmark::State& state, double flops_per_iter, double seconds) {
  const double rate = flops_per_iter * double(state.iterations()) / seconds;
  state.counters["GFLOP/s"] = rate * 1e-9;
  state.counters["%peak"] = 100.0 * rate / peak().fma_flops;
}
// The same against the bf16 ceiling (AMX where present, else VDPBF16PS).
inline void report_bf16_flops(benchmark::State& state, double flops_per_iter, double seconds) {
  const double rate = flops_per_iter * double(state.iterations()) / seconds;
  state.counters["GFLOP/s"] = rate * 1e-9;
  state.counters["%peak"] = 100.0 * rate / peak().fma_flops;
  if (peak().bf16_flops() > 0) state.counters["%bf16peak"] = 100.0 * rate / peak().bf16_flops();
}
inline void report_bytes(benchmark::State& state, double bytes_per_iter, double seconds) {
  const double rate = bytes_per_iter * double(state.iterations()) / seconds;
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_iter * double(state.iterations())));
  state.counters["GB/s"] = rate * 1e-9;
  state.counters["%triad"] = 100.0 * rate / peak().triad_bytes;
}

}  // namespace mtrec_bench
