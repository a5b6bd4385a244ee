// mtrec: embedding kernels — row gathers, scatter-adds and pooled bags.
//
// Each op has a `reference` overload (plain scalar loops, the ground truth)
// and a `cpu` overload (xsimd + OpenMP), with the same name and arguments:
// outputs first, then inputs, then sizes and options. Tables are row-major
// (rows, dim); IDs are trusted to lie in [0, rows) (layers check them).
//
// Results are deterministic: every element of a gradient receives its
// additions in ID order, whatever the thread count. The CPU kernels split
// scatter-adds across threads by columns, never by IDs, and split only work
// that is independent per bag or per ID (pooling, dweights) by bags.
//
// `touched` (nullable, one byte per table row): the scatter kernels set
// touched[id] = 1 for every ID they add into; they never clear a flag.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/rows.hpp"

namespace mtrec {
namespace kernels {

// ---- reference -----------------------------------------------------------------

// y (n,dim) = table[ids] (n)
template <class T>
inline void gather_rows(reference_t, T* y, const T* table, const index_t* ids, index_t n, index_t dim) {
  for (index_t i = 0; i < n; ++i)
    for (index_t c = 0; c < dim; ++c) y[i * dim + c] = table[ids[i] * dim + c];
}

// grad (rows,dim): grad[ids[i]] += dy[i] (n,dim) for i in order;
// touched[ids[i]] = 1 if touched is given
template <class T>
inline void scatter_add_rows(reference_t, T* grad, std::uint8_t* touched, const T* dy, const index_t* ids, index_t n,
                             index_t dim) {
  for (index_t i = 0; i < n; ++i) {
    const index_t r = ids[i];
    if (touched) touched[r] = 1;
    for (index_t c = 0; c < dim; ++c) grad[r * dim + c] += dy[i * dim + c];
  }
}

// y (B,dim): bag b pools table[ids[i]] for i in [offsets[b], offsets[b+1]),
// each times weights[i] if weights is given (nullable); mean divides by the
// bag length. An empty bag gives a zero row. offsets has B+1 entries.
template <class T>
inline void embedding_bag_forward(reference_t, T* y, const T* table, const index_t* ids, const index_t* offsets,
                                  const T* weights, index_t B, index_t dim, bool mean) {
  for (index_t b = 0; b < B; ++b) {
    T* yb = y + b * dim;
    for (index_t c = 0; c < dim; ++c) yb[c] = T(0);
    const index_t s = offsets[b], e = offsets[b + 1];
    for (index_t i = s; i < e; ++i) {
      const T a = weights ? weights[i] : T(1);
      for (index_t c = 0; c < dim; ++c) yb[c] += a * table[ids[i] * dim + c];
    }
    if (mean && e > s) {
      const T inv = T(1) / T(e - s);
      for (index_t c = 0; c < dim; ++c) yb[c] *= inv;
    }
  }
}

// The backward of embedding_bag_forward, for dy (B,dim); n = offsets[B] -
// offsets[0], the number of IDs the bags hold (passed so that a device
// backend need not read offsets back to size its work):
//   grad_table[ids[i]] += weights[i] / len * dy[bag(i)]   (in ID order; / len for mean only)
//   dweights[i] = <dy[bag(i)], table[ids[i]]> / len      (n; written if dweights is given)
//   touched[ids[i]] = 1                                  (if touched is given)
template <class T>
inline void embedding_bag_backward(reference_t, T* grad_table, std::uint8_t* touched, T* dweights, const T* dy,
                                   const T* table, const index_t* ids, const index_t* offsets, const T* weights,
                                   index_t B, index_t n, index_t dim, bool mean) {
  if (B > 0)
    check(offsets[B] - offsets[0] == n, "embedding_bag_backward", "expected n = offsets[B] - offsets[0] = ",
          offsets[B] - offsets[0], " but got ", n);
  for (index_t b = 0; b < B; ++b) {
    const index_t s = offsets[b], e = offsets[b + 1];
    const T inv = (mean && e > s) ? T(1) / T(e - s) : T(1);
    const T* d = dy + b * dim;
    for (index_t i = s; i < e; ++i) {
      const index_t r = ids[i];
      if (touched) touched[r] = 1;
      const T a = (weights ? weights[i] : T(1)) * inv;
      T* gr = grad_table + r * dim;
      for (index_t c = 0; c < dim; ++c) gr[c] += a * d[c];
      if (dweights) {
        const T* row = table + r * dim;
        T dot = 0;
        for (index_t c = 0; c < dim; ++c) dot += d[c] * row[c];
        dweights[i] = dot * inv;
      }
    }
  }
}

// The fused embedding-bag backward + lazy (row-wise) Adam, as FBGEMM's
// table-batched embedding with a fused optimizer: w, m, v (rows,dim) are the
// table and its Adam moments, the other arguments those of
// embedding_bag_backward. Exactly the composition
//   g = 0 (rows,dim); embedding_bag_backward(g, touched, nullptr, dy, w, ...);
//   adam_update_rows(w, m, v, g, {the distinct rows touched}, st)
// so a row no ID of the batch names keeps its w, m and v (lazy Adam), and a
// row named only with weight 0 still takes a step with g = 0. Returns true
// when every updated weight is finite. This reference version builds the
// composition literally (a host gradient of max(ID) + 1 rows); the device
// versions never materialise the table's gradient.
template <class T>
inline bool embedding_bag_backward_adam(reference_t, T* w, T* m, T* v, const T* dy, const index_t* ids,
                                        const index_t* offsets, const T* weights, index_t B, index_t n, index_t dim,
                                        bool mean, const AdamStep<T>& st) {
  index_t rows = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t i = offsets[b]; i < offsets[b + 1]; ++i) rows = ids[i] + 1 > rows ? ids[i] + 1 : rows;
  std::vector<T> g(static_cast<std::size_t>(rows * dim), T(0));
  std::vector<std::uint8_t> touched(static_cast<std::size_t>(rows), 0);
  embedding_bag_backward(reference, g.data(), touched.data(), static_cast<T*>(nullptr), dy, w, ids, offsets, weights,
                         B, n, dim, mean);
  std::vector<index_t> list;
  for (index_t r = 0; r < rows; ++r)
    if (touched[static_cast<std::size_t>(r)]) list.push_back(r);
  RowSet set;
  set.offset = 0;
  set.rows = list.data();
  set.n = index_t(list.size());
  set.dim = dim;
  return adam_update_rows(reference, w, m, v, g.data(), &set, 1, st);
}

// ---- cpu -------------------------------------------------------------------------

namespace embedding_detail {

// Bags per parallel chunk (a fixed count: bags are independent, so the
// split never changes a result) and how many IDs ahead rows are prefetched.
constexpr index_t kBagsPerChunk = 64;
constexpr index_t kPrefetchAhead = 16;
// IDs per parallel chunk of a row gather.
constexpr index_t kRowsPerChunk = 256;

// A scatter-add is bound by random row accesses: measured on 2 vCPUs, a
// second thread saved 0-20% of a 2.6M-element backward (B=2048 bags of ~20
// IDs, dim 64, ~0.5 ms) while a fork into a busy machine cost milliseconds.
// So the scatter kernels fork only for kScatterForkFactor times the
// streaming kernels' threshold (~8M elements, several ms of work).
constexpr index_t kScatterForkFactor = 32;
inline bool scatter_worth_forking(index_t elems) {
  return double(elems) >= double(kScatterForkFactor) * double(simd::kForkElems) * mtrec::detail::fork_scale();
}

// A hint to fetch the cache line at p, for reading or for writing (no-op
// where unsupported).
inline void prefetch_read(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}
inline void prefetch_write(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 1, 3);
#else
  (void)p;
#endif
}

// Column blocks of a scatter-add: at most `parts` of them (one per thread),
// each a whole number of cache lines and of vectors, so that a column goes
// through vector or scalar code depending on dim only (results never depend
// on the split) and no two threads write the same cache line of a
// line-aligned row.
template <class T>
inline index_t scatter_col_block(index_t dim, index_t parts) {
  constexpr index_t W = xsimd::batch<T>::size;
  constexpr index_t line = index_t(64 / sizeof(T)) > W ? index_t(64 / sizeof(T)) : W;
  const index_t threads = std::max<index_t>(1, parts);
  const index_t per = (dim + threads - 1) / threads;
  return std::max(line, (per + line - 1) / line * line);
}

// gr[c0, c1) += a * d[c0, c1) (Scaled) or += d[c0, c1); c1 - c0 vectors
// first, then the scalar tail.
template <bool Scaled, class T>
inline void add_row_span(T* gr, const T* d, T a, index_t c0, index_t c1) {
  using V = xsimd::batch<T>;
  constexpr index_t W = V::size;
  index_t c = c0;
  if (Scaled) {
    const V va(a);
    for (; c + W <= c1; c += W) (V::load_unaligned(gr + c) + va * V::load_unaligned(d + c)).store_unaligned(gr + c);
    for (; c < c1; ++c) gr[c] += a * d[c];
  } else {
    for (; c + W <= c1; c += W) (V::load_unaligned(gr + c) + V::load_unaligned(d + c)).store_unaligned(gr + c);
    for (; c < c1; ++c) gr[c] += d[c];
  }
}

// Prefetches the columns [c0, c1) of row r of a (rows,dim) array for writing.
template <class T>
inline void prefetch_row_span(const T* base, index_t r, index_t dim, index_t c0, index_t c1) {
  const char* p = reinterpret_cast<const char*>(base + r * dim + c0);
  const index_t bytes = (c1 - c0) * index_t(sizeof(T));
  for (index_t off = 0; off < bytes; off += 64) prefetch_write(p + off);
}

// <a, b> over dim values: four vector accumulators over blocks of 4
// vectors, then single vectors, combined in a fixed order, then the scalar
// tail. The order depends on dim only.
template <class T>
inline T dot(const T* a, const T* b, index_t dim) {
  using V = xsimd::batch<T>;
  constexpr index_t W = V::size;
  V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
  index_t c = 0;
  for (; c + 4 * W <= dim; c += 4 * W) {
    a0 = a0 + V::load_unaligned(a + c) * V::load_unaligned(b + c);
    a1 = a1 + V::load_unaligned(a + c + W) * V::load_unaligned(b + c + W);
    a2 = a2 + V::load_unaligned(a + c + 2 * W) * V::load_unaligned(b + c + 2 * W);
    a3 = a3 + V::load_unaligned(a + c + 3 * W) * V::load_unaligned(b + c + 3 * W);
  }
  for (; c + W <= dim; c += W) a0 = a0 + V::load_unaligned(a + c) * V::load_unaligned(b + c);
  T s = xsimd::hadd((a0 + a1) + (a2 + a3));
  for (; c < dim; ++c) s += a[c] * b[c];
  return s;
}

// y (B,dim): bag b = sum over its IDs, in order, of (weight *) row, then
// times 1/length for the mean: per column the same additions, in the same
// order, as the scalar loop `y[c] = 0; y[c] += a * row[c]`, so a bag's
// result never depends on which thread runs it. Columns go in register
// blocks of up to 4 vectors; the rows kPrefetchAhead IDs ahead (across
// bags) are prefetched while the current bag is summed.
template <bool Weighted, class T>
inline void pool_bags(T* y, const T* w, const index_t* ids, const index_t* offsets, const T* weights, index_t B,
                      index_t dim, bool mean) {
  using V = xsimd::batch<T>;
  constexpr index_t W = V::size;
  const index_t row_bytes = dim * index_t(sizeof(T));
  const bool fork = simd::worth_forking(offsets[B] * dim);  // rows gathered x dim
  parallel_chunks(B, kBagsPerChunk, [&](index_t b0, index_t b1) {
    const index_t i_end = offsets[b1];
    auto prefetch_row = [&](index_t i) {
      if (i >= i_end) return;
      const char* row = reinterpret_cast<const char*>(w + ids[i] * dim);
      for (index_t off = 0; off < row_bytes; off += 64) prefetch_read(row + off);
    };
    for (index_t i = offsets[b0]; i < offsets[b0] + kPrefetchAhead; ++i) prefetch_row(i);
    for (index_t b = b0; b < b1; ++b) {
      T* yb = y + b * dim;
      const index_t s = offsets[b], e = offsets[b + 1];
      const bool scale = mean && e > s;
      const T inv = scale ? T(1) / T(e - s) : T(1);
      index_t c = 0;
      bool first = true;  // the first column block issues the prefetches
      for (; c + 4 * W <= dim; c += 4 * W) {
        V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
        for (index_t i = s; i < e; ++i) {
          if (first) prefetch_row(i + kPrefetchAhead);
          const T* row = w + ids[i] * dim + c;
          if (Weighted) {
            const V a(weights[i]);
            a0 = a0 + a * V::load_unaligned(row);
            a1 = a1 + a * V::load_unaligned(row + W);
            a2 = a2 + a * V::load_unaligned(row + 2 * W);
            a3 = a3 + a * V::load_unaligned(row + 3 * W);
          } else {
            a0 = a0 + V::load_unaligned(row);
            a1 = a1 + V::load_unaligned(row + W);
            a2 = a2 + V::load_unaligned(row + 2 * W);
            a3 = a3 + V::load_unaligned(row + 3 * W);
          }
        }
        if (scale) {
          const V vinv(inv);
          a0 = a0 * vinv;
          a1 = a1 * vinv;
          a2 = a2 * vinv;
          a3 = a3 * vinv;
        }
        a0.store_unaligned(yb + c);
        a1.store_unaligned(yb + c + W);
        a2.store_unaligned(yb + c + 2 * W);
        a3.store_unaligned(yb + c + 3 * W);
        first = false;
      }
      for (; c + W <= dim; c += W) {
        V acc(T(0));
        for (index_t i = s; i < e; ++i) {
          if (first) prefetch_row(i + kPrefetchAhead);
          const V row = V::load_unaligned(w + ids[i] * dim + c);
          acc = Weighted ? acc + V(weights[i]) * row : acc + row;
        }
        if (scale) acc = acc * V(inv);
        acc.store_unaligned(yb + c);
        first = false;
      }
      for (; c < dim; ++c) {
        T acc = T(0);
        for (index_t i = s; i < e; ++i) {
          if (first) prefetch_row(i + kPrefetchAhead);
          const T v = w[ids[i] * dim + c];
          acc = Weighted ? acc + weights[i] * v : acc + v;
        }
        if (scale) acc *= inv;
        yb[c] = acc;
        first = false;
      }
    }
  }, fork);
}

}  // namespace embedding_detail

// y (n,dim) = table[ids]: one row copy per ID, in fixed chunks of IDs.
template <class T>
inline void gather_rows(cpu_t, T* y, const T* table, const index_t* ids, index_t n, index_t dim) {
  parallel_chunks(
      n, embedding_detail::kRowsPerChunk,
      [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i)
          std::memcpy(y + i * dim, table + ids[i] * dim, sizeof(T) * static_cast<std::size_t>(dim));
      },
      simd::worth_forking(n * dim));
}

// grad[ids[i]] += dy[i] for i in order; touched[ids[i]] = 1 if given. When
// worth a fork (embedding_detail::scatter_worth_forking) threads take blocks
// of columns (embedding_detail::scatter_col_block), each walking every ID in
// order, so every element gets its additions in ID order; the first block
// sets the flags. Grad rows are prefetched kPrefetchAhead IDs ahead.
template <class T>
inline void scatter_add_rows(cpu_t, T* grad, std::uint8_t* touched, const T* dy, const index_t* ids, index_t n,
                             index_t dim) {
  namespace ed = embedding_detail;
  if (n <= 0 || dim <= 0) return;
  const bool fork = ed::scatter_worth_forking(n * dim) && !in_parallel_region() && num_threads() > 1;
  parallel_chunks(
      dim, fork ? ed::scatter_col_block<T>(dim, num_threads()) : dim,
      [&](index_t c0, index_t c1) {
        const bool flag = touched && c0 == 0;
        for (index_t i = 0; i < std::min(n, ed::kPrefetchAhead); ++i) ed::prefetch_row_span(grad, ids[i], dim, c0, c1);
        for (index_t i = 0; i < n; ++i) {
          const index_t r = ids[i];
          if (flag) touched[r] = 1;
          if (i + ed::kPrefetchAhead < n) ed::prefetch_row_span(grad, ids[i + ed::kPrefetchAhead], dim, c0, c1);
          ed::add_row_span<false>(grad + r * dim, dy + i * dim, T(1), c0, c1);
        }
      },
      fork);
}

// y (B,dim) = the pooled bags, as the reference (bitwise equal to it when
// unweighted: the same additions in the same order).
template <class T>
inline void embedding_bag_forward(cpu_t, T* y, const T* table, const index_t* ids, const index_t* offsets,
                                  const T* weights, index_t B, index_t dim, bool mean) {
  if (B <= 0) return;
  if (weights)
    embedding_detail::pool_bags<true>(y, table, ids, offsets, weights, B, dim, mean);
  else
    embedding_detail::pool_bags<false>(y, table, ids, offsets, weights, B, dim, mean);
}

// The backward of embedding_bag_forward, as K tasks (K = the thread count
// when the work is worth a fork, see embedding_detail::scatter_worth_forking;
// else 1): task k computes
//  * dweights (if given) for the k-th of K equal ranges of bags: one
//    vectorised dot product per ID (its order of additions depends on dim
//    only), table rows prefetched ahead;
//  * grad_table on the k-th block of columns (embedding_detail::
//    scatter_col_block), walking every bag and ID in order, so every
//    element gets its additions in ID order; the first block sets the
//    touched flags.
// How the work is split never changes a result.
template <class T>
inline void embedding_bag_backward(cpu_t, T* grad_table, std::uint8_t* touched, T* dweights, const T* dy,
                                   const T* table, const index_t* ids, const index_t* offsets, const T* weights,
                                   index_t B, index_t n_ids, index_t dim, bool mean) {
  namespace ed = embedding_detail;
  if (B <= 0 || dim <= 0) return;
  check(offsets[B] - offsets[0] == n_ids, "embedding_bag_backward", "expected n = offsets[B] - offsets[0] = ",
        offsets[B] - offsets[0], " but got ", n_ids);
  const index_t n = offsets[B];
  if (n <= 0) return;
  const bool fork = ed::scatter_worth_forking(n * dim) && !in_parallel_region() && num_threads() > 1;
  const index_t tasks = fork ? index_t(num_threads()) : 1;
  const index_t col_block = tasks == 1 ? dim : ed::scatter_col_block<T>(dim, tasks);
  const index_t row_bytes = dim * index_t(sizeof(T));
  parallel_chunks(
      tasks, 1,
      [&](index_t k, index_t) {
        if (dweights) {
          const index_t b0 = B * k / tasks, b1 = B * (k + 1) / tasks;
          const index_t i_end = offsets[b1];
          auto prefetch_row = [&](index_t i) {
            if (i >= i_end) return;
            const char* row = reinterpret_cast<const char*>(table + ids[i] * dim);
            for (index_t off = 0; off < row_bytes; off += 64) ed::prefetch_read(row + off);
          };
          for (index_t i = offsets[b0]; i < offsets[b0] + ed::kPrefetchAhead; ++i) prefetch_row(i);
          for (index_t b = b0; b < b1; ++b) {
            const index_t s = offsets[b], e = offsets[b + 1];
            const T inv = (mean && e > s) ? T(1) / T(e - s) : T(1);
            const T* d = dy + b * dim;
            for (index_t i = s; i < e; ++i) {
              prefetch_row(i + ed::kPrefetchAhead);
              dweights[i] = ed::dot(d, table + ids[i] * dim, dim) * inv;
            }
          }
        }
        const index_t c0 = k * col_block, c1 = std::min(dim, c0 + col_block);
        if (c0 >= dim) return;
        const bool flag = touched && c0 == 0;
        for (index_t i = 0; i < std::min(n, ed::kPrefetchAhead); ++i)
          ed::prefetch_row_span(grad_table, ids[i], dim, c0, c1);
        for (index_t b = 0; b < B; ++b) {
          const index_t s = offsets[b], e = offsets[b + 1];
          const T inv = (mean && e > s) ? T(1) / T(e - s) : T(1);
          const T* d = dy + b * dim;
          for (index_t i = s; i < e; ++i) {
            const index_t r = ids[i];
            if (flag) touched[r] = 1;
            if (i + ed::kPrefetchAhead < n)
              ed::prefetch_row_span(grad_table, ids[i + ed::kPrefetchAhead], dim, c0, c1);
            const T a = (weights ? weights[i] : T(1)) * inv;
            ed::add_row_span<true>(grad_table + r * dim, d, a, c0, c1);
          }
        }
      },
      fork);
}

// The fused embedding-bag backward + lazy Adam (the reference's semantics):
// the batch's (ID, occurrence) pairs sorted, then per distinct ID (in
// parallel chunks of IDs, each independent) its gradient row summed into a
// row buffer over its occurrences in ID order (the reference's additions,
// in its order) and adam_update applied to the row. No table-sized gradient.
template <class T>
inline bool embedding_bag_backward_adam(cpu_t, T* w, T* m, T* v, const T* dy, const index_t* ids,
                                        const index_t* offsets, const T* weights, index_t B, index_t n_ids,
                                        index_t dim, bool mean, const AdamStep<T>& st) {
  namespace ed = embedding_detail;
  if (B <= 0 || dim <= 0) return true;
  check(offsets[B] - offsets[0] == n_ids, "embedding_bag_backward_adam", "expected n = offsets[B] - offsets[0] = ",
        offsets[B] - offsets[0], " but got ", n_ids);
  // Scratch kept per thread: a warm training step allocates nothing.
  // (The worker threads below read them through these references: a
  // thread_local named inside the lambda would be the worker's own.)
  thread_local std::vector<std::pair<index_t, index_t>> occ_scratch;
  thread_local std::vector<index_t> bag_scratch, starts_scratch;
  std::vector<std::pair<index_t, index_t>>& occ = occ_scratch;  // (ID, occurrence)
  std::vector<index_t>& bag_of = bag_scratch;                    // by occurrence - offsets[0]
  std::vector<index_t>& starts = starts_scratch;                 // of the runs of equal IDs, then occ.size()
  occ.clear();
  bag_of.clear();
  starts.clear();
  const index_t i0 = offsets[0];
  for (index_t b = 0; b < B; ++b)
    for (index_t i = offsets[b]; i < offsets[b + 1]; ++i) {
      occ.emplace_back(ids[i], i);
      if (index_t(bag_of.size()) <= i - i0) bag_of.resize(static_cast<std::size_t>(i - i0 + 1));
      bag_of[static_cast<std::size_t>(i - i0)] = b;
    }
  if (occ.empty()) return true;
  std::sort(occ.begin(), occ.end());  // pairs are distinct: ID order, then occurrence order
  for (std::size_t j = 0; j < occ.size(); ++j)
    if (j == 0 || occ[j].first != occ[j - 1].first) starts.push_back(index_t(j));
  const index_t n_rows = index_t(starts.size());
  starts.push_back(index_t(occ.size()));
  simd::FiniteFlag finite;
  parallel_chunks(
      n_rows, 64,
      [&](index_t u0, index_t u1) {
        thread_local std::vector<T> g;
        g.resize(static_cast<std::size_t>(dim));
        for (index_t u = u0; u < u1; ++u) {
          std::fill(g.begin(), g.end(), T(0));
          const index_t r = occ[static_cast<std::size_t>(starts[static_cast<std::size_t>(u)])].first;
          for (index_t j = starts[static_cast<std::size_t>(u)]; j < starts[static_cast<std::size_t>(u + 1)]; ++j) {
            const index_t i = occ[static_cast<std::size_t>(j)].second;
            const index_t b = bag_of[static_cast<std::size_t>(i - i0)];
            const index_t s = offsets[b], e = offsets[b + 1];
            const T inv = (mean && e > s) ? T(1) / T(e - s) : T(1);
            const T a = (weights ? weights[i] : T(1)) * inv;
            ed::add_row_span<true>(g.data(), dy + b * dim, a, 0, dim);
          }
          if (!adam_update(cpu, w + r * dim, m + r * dim, v + r * dim, g.data(), dim, st)) finite.clear();
        }
      },
      worth_forking_flops(16.0 * double(occ.size()) * double(dim)));
  return finite.get();
}

}  // namespace kernels
}  // namespace mtrec
