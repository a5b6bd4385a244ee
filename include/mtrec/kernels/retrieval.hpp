// mtrec: exact top-K retrieval by inner product.
//
//   topk_inner_product(dev, rows, scores, table, N, dim, q, k, exclude, n_exclude)
//
// rows (k), scores (k): the k rows r of table (N,dim) with the largest
// <q, table[r]>, best first. Equal scores: the lower row first. The rows
// listed in exclude (n_exclude, ascending, each in [0, N)) are skipped: the
// items a user has already seen. When fewer than k rows remain, the slots
// past them get row -1 and score -inf.
//
// `reference` scores every row (a sequential dot in T) and sorts. `cpu`
// streams the table once: a vectorised dot per row over fixed chunks of
// rows (in parallel), each chunk keeping its own k best in a bounded heap,
// then the chunks' lists merged in chunk order. A row enters a heap only
// when it beats the heap's worst, so the exclusion list is searched only
// then. The chunks are fixed, so the result never depends on the thread
// count, and the order is total (score, then row), so every backend returns
// the same rows for the same scores. The cpu dot adds in a different order
// from the reference's, so scores may differ in the last bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "mtrec/core/parallel.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/embedding.hpp"

namespace mtrec {
namespace kernels {

namespace topk_detail {
// a ranks before b: higher score, then lower row.
template <class T>
inline bool better(T sa, index_t ra, T sb, index_t rb) {
  return sa > sb || (sa == sb && ra < rb);
}
inline bool excluded(const index_t* ex, index_t n, index_t r) {
  return n > 0 && std::binary_search(ex, ex + n, r);
}
// Writes the sorted candidates (best first) into rows/scores, padding to k.
template <class T>
inline void write_out(index_t* rows, T* scores, const std::vector<std::pair<T, index_t>>& best, index_t k) {
  for (index_t i = 0; i < k; ++i) {
    if (i < index_t(best.size())) {
      rows[i] = best[std::size_t(i)].second;
      scores[i] = best[std::size_t(i)].first;
    } else {
      rows[i] = -1;
      scores[i] = -std::numeric_limits<T>::infinity();
    }
  }
}
template <class T>
inline bool rank_less(const std::pair<T, index_t>& a, const std::pair<T, index_t>& b) {
  return better(a.first, a.second, b.first, b.second);
}
// The selection alone, on the host, from every row's score (a device
// backend that scores on the device and selects here).
template <class T>
inline void select_topk(index_t* rows, T* scores, const T* all, index_t N, index_t k, const index_t* exclude,
                        index_t n_exclude) {
  std::vector<std::pair<T, index_t>> best;
  for (index_t r = 0; r < N; ++r)
    if (all[r] == all[r] && !excluded(exclude, n_exclude, r)) best.emplace_back(all[r], r);
  const index_t kk = std::min<index_t>(k, index_t(best.size()));
  std::partial_sort(best.begin(), best.begin() + kk, best.end(), rank_less<T>);
  best.resize(std::size_t(kk));
  write_out(rows, scores, best, k);
}
// out[i] = <q, rows[i]> for 4 consecutive rows (stride dim): the query's
// vectors loaded once for the 4 rows, one accumulator per row.
template <class T>
inline void dots4(T* out, const T* q, const T* rows, index_t dim) {
  using V = xsimd::batch<T>;
  constexpr index_t W = V::size;
  V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
  const T* r0 = rows;
  const T* r1 = rows + dim;
  const T* r2 = rows + 2 * dim;
  const T* r3 = rows + 3 * dim;
  index_t c = 0;
  for (; c + W <= dim; c += W) {
    const V qv = V::load_unaligned(q + c);
    a0 = xsimd::fma(qv, V::load_unaligned(r0 + c), a0);
    a1 = xsimd::fma(qv, V::load_unaligned(r1 + c), a1);
    a2 = xsimd::fma(qv, V::load_unaligned(r2 + c), a2);
    a3 = xsimd::fma(qv, V::load_unaligned(r3 + c), a3);
  }
  T s0 = xsimd::hadd(a0), s1 = xsimd::hadd(a1), s2 = xsimd::hadd(a2), s3 = xsimd::hadd(a3);
  for (; c < dim; ++c) {
    s0 += q[c] * r0[c];
    s1 += q[c] * r1[c];
    s2 += q[c] * r2[c];
    s3 += q[c] * r3[c];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}
constexpr index_t kChunkRows = 16384;  // rows per parallel chunk (fixed: results never depend on threads)
constexpr index_t kBlockRows = 64;     // rows scored before their selection pass
}  // namespace topk_detail

template <class T>
inline void topk_inner_product(reference_t, index_t* rows, T* scores, const T* table, index_t N, index_t dim,
                               const T* q, index_t k, const index_t* exclude, index_t n_exclude) {
  namespace td = topk_detail;
  if (k <= 0) return;
  std::vector<std::pair<T, index_t>> all;
  for (index_t r = 0; r < N; ++r) {
    if (td::excluded(exclude, n_exclude, r)) continue;
    T s = T(0);
    for (index_t c = 0; c < dim; ++c) s += q[c] * table[r * dim + c];
    if (s == s) all.emplace_back(s, r);  // NaN never ranks
  }
  std::sort(all.begin(), all.end(), td::rank_less<T>);
  if (index_t(all.size()) > k) all.resize(std::size_t(k));
  td::write_out(rows, scores, all, k);
}

template <class T>
inline void topk_inner_product(cpu_t, index_t* rows, T* scores, const T* table, index_t N, index_t dim, const T* q,
                               index_t k, const index_t* exclude, index_t n_exclude) {
  namespace td = topk_detail;
  namespace ed = embedding_detail;
  if (k <= 0) return;
  using Item = std::pair<T, index_t>;
  const index_t chunks = (N + td::kChunkRows - 1) / td::kChunkRows;
  const index_t keep = std::min(k, td::kChunkRows);
  // Scratch kept per calling thread (chunk lists and the merge): a warm
  // search allocates nothing. The workers write through these references.
  thread_local std::vector<Item> lists_scratch, merged_scratch;
  thread_local std::vector<index_t> counts_scratch;
  std::vector<Item>& lists = lists_scratch;
  std::vector<Item>& merged = merged_scratch;
  std::vector<index_t>& counts = counts_scratch;
  lists.resize(std::size_t(chunks * keep));
  counts.assign(std::size_t(chunks), 0);
  parallel_chunks(
      chunks, 1,
      [&](index_t c0, index_t c1) {
        T block[td::kBlockRows];
        for (index_t c = c0; c < c1; ++c) {
          Item* heap = lists.data() + c * keep;  // a min-heap of the chunk's best: the worst on top
          index_t size = 0;
          auto worse_on_top = [](const Item& a, const Item& b) { return td::rank_less(a, b); };
          const index_t r_end = std::min(N, (c + 1) * td::kChunkRows);
          for (index_t r0 = c * td::kChunkRows; r0 < r_end; r0 += td::kBlockRows) {
            const index_t nb = std::min(td::kBlockRows, r_end - r0);
            index_t i = 0;
            for (; i + 4 <= nb; i += 4) td::dots4(block + i, q, table + (r0 + i) * dim, dim);
            for (; i < nb; ++i) block[i] = ed::dot(q, table + (r0 + i) * dim, dim);
            for (i = 0; i < nb; ++i) {
              const T s = block[i];
              const index_t r = r0 + i;
              if (size == keep && !td::better(s, r, heap[0].first, heap[0].second)) continue;
              if (!(s == s) || td::excluded(exclude, n_exclude, r)) continue;  // NaN never ranks
              if (size < keep) {
                heap[size++] = Item(s, r);
                std::push_heap(heap, heap + size, worse_on_top);
              } else {
                std::pop_heap(heap, heap + size, worse_on_top);
                heap[size - 1] = Item(s, r);
                std::push_heap(heap, heap + size, worse_on_top);
              }
            }
          }
          counts[std::size_t(c)] = size;
        }
      },
      worth_forking_flops(2.0 * double(N) * double(dim)));
  merged.clear();
  for (index_t c = 0; c < chunks; ++c)
    merged.insert(merged.end(), lists.begin() + c * keep, lists.begin() + c * keep + counts[std::size_t(c)]);
  const index_t kk = std::min<index_t>(k, index_t(merged.size()));
  std::partial_sort(merged.begin(), merged.begin() + kk, merged.end(), td::rank_less<T>);
  merged.resize(std::size_t(kk));
  td::write_out(rows, scores, merged, k);
}

}  // namespace kernels
}  // namespace mtrec
