// mtrec: deterministic parallel loops.
//
// Work is cut into chunks whose boundaries depend on the problem size only,
// never on the thread count. Each chunk is computed the same way whichever
// thread runs it, and reductions combine per-chunk partials in chunk order,
// so results are bitwise identical for 1, 2 or 64 threads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "mtrec/core/config.hpp"
#include "mtrec/core/tensor.hpp"

namespace mtrec {

// Threads used by mtrec's parallel loops (OpenMP's setting; 1 without OpenMP).
inline int num_threads() {
#if MTREC_HAS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline void set_num_threads(int n) {
  check(n >= 1, "set_num_threads", "expected a thread count >= 1 but got ", n);
#if MTREC_HAS_OPENMP
  omp_set_num_threads(n);
#endif
}

inline bool in_parallel_region() {
#if MTREC_HAS_OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

// Calls fn(begin, end) for consecutive chunks [begin, end) of [0, n) of size
// `chunk` (the last may be shorter). Chunks run in parallel when there are at
// least two of them and `parallel` is true; nested calls run serially.
template <class Fn>
inline void parallel_chunks(index_t n, index_t chunk, Fn&& fn, bool parallel = true) {
  if (n <= 0) return;
  chunk = std::max<index_t>(chunk, 1);
  const index_t n_chunks = (n + chunk - 1) / chunk;
  if (n_chunks == 1 || !parallel || in_parallel_region() || num_threads() == 1) {
    for (index_t c = 0; c < n_chunks; ++c) fn(c * chunk, std::min(n, (c + 1) * chunk));
    return;
  }
  MTREC_OMP(parallel for schedule(static))
  for (index_t c = 0; c < n_chunks; ++c) fn(c * chunk, std::min(n, (c + 1) * chunk));
}

// Work (in rough flops) below which a loop stays on the calling thread.
// Waking the OpenMP team costs ~5 us while its threads spin, but 25-90 us on
// this class of 2-vCPU VM once they sleep (OMP_WAIT_POLICY=passive, or
// between requests in a server): measured, a batch-256 inference of the
// small benchmark workload ran faster on one thread than with 25 forks. At
// ~200 GFLOP/s per core, 20 MFLOP is ~100 us: a fork is then worth it.
constexpr double kForkFlops = 2e7;

namespace detail {
inline double& fork_scale() {
  static double scale = 1.0;
  return scale;
}
}  // namespace detail

// Multiplies every fork threshold (1 by default; set it before work starts,
// not while loops run). 0 forks whenever a loop has two chunks: the tests use
// it so that small problems go through the parallel paths and the 1-vs-2
// thread determinism checks mean something.
inline void set_fork_threshold_scale(double scale) {
  check(scale >= 0, "set_fork_threshold_scale", "expected a scale >= 0 but got ", scale);
  detail::fork_scale() = scale;
}
inline double fork_threshold_scale() { return detail::fork_scale(); }

// Whether `flops` of work is worth waking the OpenMP team.
inline bool worth_forking_flops(double flops) { return flops >= kForkFlops * detail::fork_scale(); }

// Calls fn(i) for each i in [0, n), in parallel when the total work
// (n * cost_per_item, in rough flops) is worth a fork.
template <class Fn>
inline void parallel_for(index_t n, double cost_per_item, Fn&& fn) {
  const bool worth = worth_forking_flops(static_cast<double>(n) * cost_per_item);
  if (n <= 1 || !worth || in_parallel_region() || num_threads() == 1) {
    for (index_t i = 0; i < n; ++i) fn(i);
    return;
  }
  MTREC_OMP(parallel for schedule(static))
  for (index_t i = 0; i < n; ++i) fn(i);
}

}  // namespace mtrec
