// mtrec kernels: maximum inner-product search as nearest-neighbour search
// (serve/hnsw.hpp), host memory only.
//
//   first_nonfinite(dev, x, n) -> the index of the first NaN or infinity of
//                                 x (n), or -1
//   mips_augment(dev, aug, table, N, dim) -> R^2
//       aug (N, dim+1) = [row, sqrt(R^2 - |row|^2)] for every row of
//       table (N, dim), R^2 = max |row|^2 (returned): on the augmented rows,
//       the L2 nearest neighbour of [q, 0] is the row with the largest <q, row>
//       (|q - a|^2 = |q|^2 + R^2 - 2 <q, row>).
//
// Squared norms add in double, column by column, on every backend (the cpu
// kernel splits rows between threads, never a row), so R^2 and the last
// column are the same bits on reference and cpu at any thread count.
// Not in the umbrella header: serve/hnsw.hpp includes it; the op table
// checks cpu against reference (tests/ops/cases_retrieval.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "mtrec/kernels/device.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"

namespace mtrec {
namespace kernels {

namespace detail {
template <class T>
inline double row_norm2(const T* x, index_t n) {
  double s = 0;
  for (index_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return s;
}
template <class T>
inline void augment_row(T* a, const T* x, index_t dim, double r2) {
  std::copy(x, x + dim, a);
  a[dim] = T(std::sqrt(std::max(0.0, r2 - row_norm2(x, dim))));
}
}  // namespace detail

// ---- reference ------------------------------------------------------------------------

template <class T>
inline index_t first_nonfinite(reference_t, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

template <class T>
inline double mips_augment(reference_t, T* aug, const T* table, index_t N, index_t dim) {
  double r2 = 0;
  for (index_t r = 0; r < N; ++r) r2 = std::max(r2, detail::row_norm2(table + r * dim, dim));
  for (index_t r = 0; r < N; ++r) detail::augment_row(aug + r * (dim + 1), table + r * dim, dim, r2);
  return r2;
}

// ---- cpu ------------------------------------------------------------------------------

// Fixed chunks in parallel; the lowest chunk with a bad value, then its first.
template <class T>
inline index_t first_nonfinite(cpu_t, const T* x, index_t n) {
  constexpr index_t kChunk = 1 << 14;
  const index_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<index_t> first(std::size_t(std::max<index_t>(chunks, 1)), -1);
  parallel_for(chunks, double(kChunk), [&](index_t c) {
    const index_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
    for (index_t i = lo; i < hi; ++i)
      if (!std::isfinite(x[i])) {
        first[std::size_t(c)] = i;
        return;
      }
  });
  for (index_t c = 0; c < chunks; ++c)
    if (first[std::size_t(c)] >= 0) return first[std::size_t(c)];
  return -1;
}

template <class T>
inline double mips_augment(cpu_t, T* aug, const T* table, index_t N, index_t dim) {
  std::vector<double> norms(std::size_t(std::max<index_t>(N, 1)));
  parallel_for(N, double(dim), [&](index_t r) { norms[std::size_t(r)] = detail::row_norm2(table + r * dim, dim); });
  double r2 = 0;
  for (index_t r = 0; r < N; ++r) r2 = std::max(r2, norms[std::size_t(r)]);  // max: order-free
  parallel_for(N, double(dim), [&](index_t r) {
    T* a = aug + r * (dim + 1);
    std::copy(table + r * dim, table + (r + 1) * dim, a);
    a[dim] = T(std::sqrt(std::max(0.0, r2 - norms[std::size_t(r)])));
  });
  return r2;
}

}  // namespace kernels
}  // namespace mtrec
