// mtrec: CUDA embedding kernels (kernels/embedding.hpp) — row gathers,
// pooled bags, their deterministic backwards, and the fused embedding-bag
// backward + lazy (row-wise) Adam.
//
// Forward (gather_rows, embedding_bag_forward): a group of G lanes (G a power
// of two <= 32, the smallest covering the row's vectors of W = 4 floats / 2
// doubles when dim and the addresses allow, else W = 1) per output row, rows
// in a grid-stride loop, so a warp holds 32 / G rows in flight. A bag's group
// loads G of its IDs (and weights) at a time, one per lane, and broadcasts
// them with shuffles; each lane sums its columns over the bag in ID order.
//
// Backward (scatter_add_rows, embedding_bag_backward, and the fused op): no
// atomics. The batch's IDs are sorted together with their occurrence index
// (cub::DeviceRadixSort::SortPairs: a stable, deterministic radix sort, so
// the occurrences of one ID stay in batch order); the first position of each
// run of equal IDs starts a group, which walks the run G occurrences at a
// time (occurrence metadata loaded one per lane, broadcast by shuffles),
// sums the occurrences' (scaled) gradient rows in registers in occurrence
// order, and adds the sum to the gradient row once (or, fused, applies Adam
// to the row). The touched flags are set once per distinct ID. dweights is a
// per-occurrence dot product (a group per occurrence, a fixed shuffle tree):
// no reduction across occurrences. The same inputs give the same bits.
//
// Scratch: one device_scratch request per call, carved into 256-byte aligned
// pieces (n = the batch's occurrence count):
//   keys   n x int64  the sorted IDs
//   vin    n x int32  occurrence indices 0..n-1 (the sort's input values)
//   vals   n x int32  the occurrence indices in sorted order
//   bag    n x int32  the bag of each occurrence (bag ops only)
//   flag   256 bytes  the non-finite flag (the fused op only)
//   temp   the radix sort's temporary storage (as CUB reports it for n)
// Limits: n and B at most 2^31 - 1 (int32 occurrence and bag indices).
// The bag ops take n (= offsets[B] - offsets[0]) from the caller, which
// knows it on the host, and read offsets[0] on the device: no copy back,
// no stream synchronise.
//
// The fused op, embedding_bag_backward_adam(dev, w, m, v, dy, ids, offsets,
// weights, B, dim, mean, st), is exactly "g = 0; embedding_bag_backward into
// g; adam_update_rows on the distinct rows the batch touched" (rows no ID
// names keep w, m and v) without the table-sized gradient: per distinct row
// the gradient lives only in registers. It is what FBGEMM's table-batched
// embedding with a fused optimizer does. It is an op beside the unfused
// pair (the op table checks the two agree on every backend); the trainer
// calls it with OptimizerConfig::fused_tables. On CUDA the fused and unfused paths sum
// the same terms in the same order (unfused: g = 0 + sum) and share the Adam
// expression (cuda_rows::adam_element), so they agree to rounding.
#pragma once

#include <cub/cub.cuh>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "mtrec/core/error.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/cuda/rows.cuh"
#include "mtrec/kernels/device.hpp"

namespace mtrec {
namespace kernels {
namespace cuda_emb {

using cuda_rows::Group;
using cuda_rows::kThreads;
using cuda_rows::make_group;
using cuda_rows::Vec;
using cuda_rows::vload;
using cuda_rows::vstore;

// ---- forward -------------------------------------------------------------------------

template <class T, int W>
__global__ void gather_kernel(T* __restrict__ y, const T* __restrict__ table, const index_t* __restrict__ ids,
                              index_t n, index_t dim, int G) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  for (index_t i = gr.first; i < n; i += gr.stride) {
    const T* src = table + ids[i] * dim;
    T* dst = y + i * dim;
    for (index_t c = gr.lane; c < dimv; c += G) vstore<T, W>(dst + c * W, vload<T, W>(src + c * W));
  }
}

template <class T, int W>
__global__ void bag_forward_kernel(T* __restrict__ y, const T* __restrict__ table, const index_t* __restrict__ ids,
                                   const index_t* __restrict__ offsets, const T* __restrict__ weights, index_t B,
                                   index_t dim, bool mean, int G) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  for (index_t b = gr.first; b < B; b += gr.stride) {
    const index_t s = offsets[b], e = offsets[b + 1];
    const bool scale = mean && e > s;
    const T inv = scale ? T(1) / T(e - s) : T(1);
    for (index_t c0 = 0; c0 < dimv; c0 += G) {
      const index_t c = c0 + gr.lane;
      const bool col = c < dimv;
      Vec<T, W> acc;
#pragma unroll
      for (int k = 0; k < W; ++k) acc.v[k] = T(0);
      for (index_t base = s; base < e; base += G) {
        const index_t i = base + gr.lane;
        index_t my_id = 0;
        T my_w = T(1);
        if (i < e) {
          my_id = ids[i];
          if (weights) my_w = weights[i];
        }
        const index_t left = e - base;
        const int cnt = left < index_t(G) ? int(left) : G;
#pragma unroll 4
        for (int q = 0; q < cnt; ++q) {
          const index_t r = __shfl_sync(gr.mask, my_id, q, G);
          const T a = __shfl_sync(gr.mask, my_w, q, G);
          if (col) {
            const Vec<T, W> t = vload<T, W>(table + r * dim + c * W);
#pragma unroll
            for (int k = 0; k < W; ++k) acc.v[k] += a * t.v[k];
          }
        }
      }
      if (col) {
        if (scale) {
#pragma unroll
          for (int k = 0; k < W; ++k) acc.v[k] *= inv;
        }
        vstore<T, W>(y + b * dim + c * W, acc);
      }
    }
  }
}

// ---- backward: sort, then one group per distinct ID ----------------------------------

template <int Unused>
__global__ void iota_kernel(int* __restrict__ v, index_t n) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += index_t(gridDim.x) * blockDim.x)
    v[i] = int(i);
}

// For the occurrences [offsets[0], offsets[B]) (k = i - offsets[0], offsets[0]
// read here on the device): vin[k] = k, bag[k] = the bag of i, keys_in[k] = ids[i].
template <int Unused>
__global__ void bag_prep_kernel(int* __restrict__ vin, int* __restrict__ bag, index_t* __restrict__ keys_in,
                                const index_t* __restrict__ ids, const index_t* __restrict__ offsets, index_t B) {
  const Group gr = make_group(32);
  const index_t o0 = offsets[0];
  for (index_t b = gr.first; b < B; b += gr.stride) {
    const index_t s = offsets[b] - o0, e = offsets[b + 1] - o0;
    for (index_t k = s + gr.lane; k < e; k += 32) {
      vin[k] = int(k);
      bag[k] = int(b);
      keys_in[k] = ids[o0 + k];
    }
  }
}

enum SegMode { kScatter = 0, kBag = 1, kBagAdam = 2 };

// Positions [0, n) of the sorted IDs `keys` (occurrence `vals`): the group at
// the first position j0 of a run of ID r sums, per column, in occurrence order,
//   kScatter: dy[k]                       (row k of dy, k the occurrence)
//   kBag*:    a_k * dy[bag[k]], a_k = (weights ? weights[k] : 1) / len for mean
// then kScatter/kBag: dst[r] += sum;  kBagAdam: adam_element on w = dst, m, v
// with g = sum. weights[offsets[0] + k] weighs occurrence k.
template <class T, int W, int Mode>
__global__ void segment_kernel(T* __restrict__ dst, T* __restrict__ m, T* __restrict__ v,
                               std::uint8_t* __restrict__ touched, int* bad, const T* __restrict__ dy,
                               const index_t* __restrict__ keys, const int* __restrict__ vals, index_t n,
                               const int* __restrict__ bag, const index_t* __restrict__ offsets,
                               const T* __restrict__ weights, index_t dim, bool mean, int G,
                               cuda_rows::AdamArgs<T> adam) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  bool ok = true;
  for (index_t j0 = gr.first; j0 < n; j0 += gr.stride) {
    const index_t r = keys[j0];
    if (j0 > 0 && keys[j0 - 1] == r) continue;  // not the first occurrence of r
    if (touched && gr.lane == 0) touched[r] = 1;
    for (index_t c0 = 0; c0 < dimv; c0 += G) {
      const index_t c = c0 + gr.lane;
      const bool col = c < dimv;
      Vec<T, W> acc;
#pragma unroll
      for (int k = 0; k < W; ++k) acc.v[k] = T(0);
      for (index_t base = j0;; base += G) {
        // the run's next G positions, one per lane: a prefix of the lanes holds ID r
        const index_t j = base + gr.lane;
        const bool in = j < n && keys[j] == r;
        const int cnt = __popc(__ballot_sync(gr.mask, in) & gr.mask);
        index_t src = 0;
        T a = T(1);
        if (in) {
          const int k = vals[j];
          if constexpr (Mode == kScatter) {
            src = k;
          } else {
            const int b = bag[k];
            src = b;
            const index_t s = offsets[b], e = offsets[b + 1];
            const T inv = (mean && e > s) ? T(1) / T(e - s) : T(1);
            a = (weights ? weights[offsets[0] + k] : T(1)) * inv;
          }
        }
#pragma unroll 4
        for (int q = 0; q < cnt; ++q) {
          const index_t sq = __shfl_sync(gr.mask, src, q, G);
          if constexpr (Mode == kScatter) {
            if (col) {
              const Vec<T, W> d = vload<T, W>(dy + sq * dim + c * W);
#pragma unroll
              for (int k = 0; k < W; ++k) acc.v[k] += d.v[k];
            }
          } else {
            const T aq = __shfl_sync(gr.mask, a, q, G);
            if (col) {
              const Vec<T, W> d = vload<T, W>(dy + sq * dim + c * W);
#pragma unroll
              for (int k = 0; k < W; ++k) acc.v[k] += aq * d.v[k];
            }
          }
        }
        if (cnt < G) break;
      }
      if (col) {
        const index_t e = r * dim + c * W;
        if constexpr (Mode == kBagAdam) {
          Vec<T, W> wv = vload<T, W>(dst + e), mv = vload<T, W>(m + e), vv = vload<T, W>(v + e);
#pragma unroll
          for (int k = 0; k < W; ++k) {
            const bool f = cuda_rows::adam_element(wv.v[k], mv.v[k], vv.v[k], acc.v[k], adam);
            ok = ok && f;
          }
          vstore<T, W>(dst + e, wv);
          vstore<T, W>(m + e, mv);
          vstore<T, W>(v + e, vv);
        } else {
          Vec<T, W> gv = vload<T, W>(dst + e);
#pragma unroll
          for (int k = 0; k < W; ++k) gv.v[k] += acc.v[k];
          vstore<T, W>(dst + e, gv);
        }
      }
    }
  }
  if constexpr (Mode == kBagAdam) {
    if (!ok) *bad = 1;
  }
}

// dweights[i] = <dy[bag[k]], table[ids[i]]> / len (mean) for the n
// occurrences i = offsets[0] + k: a group per occurrence.
template <class T, int W>
__global__ void bag_dweights_kernel(T* __restrict__ dweights, const T* __restrict__ dy, const T* __restrict__ table,
                                    const index_t* __restrict__ ids, const int* __restrict__ bag,
                                    const index_t* __restrict__ offsets, index_t n, index_t dim, bool mean, int G) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  const index_t o0 = offsets[0];
  for (index_t k = gr.first; k < n; k += gr.stride) {
    const index_t b = bag[k];
    const index_t s = offsets[b], e = offsets[b + 1];
    const T inv = (mean && e > s) ? T(1) / T(e - s) : T(1);
    const T* d = dy + b * dim;
    const T* row = table + ids[o0 + k] * dim;
    T dot = T(0);
    for (index_t c = gr.lane; c < dimv; c += G) {
      const Vec<T, W> dv = vload<T, W>(d + c * W), tv = vload<T, W>(row + c * W);
#pragma unroll
      for (int q = 0; q < W; ++q) dot += dv.v[q] * tv.v[q];
    }
    for (int off = G / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(gr.mask, dot, off, G);
    if (gr.lane == 0) dweights[o0 + k] = dot * inv;
  }
}

// ---- host side -----------------------------------------------------------------------

inline std::size_t align256(std::size_t b) { return (b + 255) / 256 * 256; }

// The pieces of one backward call's scratch (see the header comment).
struct SortScratch {
  index_t* keys_in = nullptr;  // bag ops: the batch's IDs from offsets[0]
  index_t* keys = nullptr;
  int* vin = nullptr;
  int* vals = nullptr;
  int* bag = nullptr;
  int* flag = nullptr;
  void* temp = nullptr;
  std::size_t temp_bytes = 0;
};

inline SortScratch sort_scratch(const char* op, cudaStream_t stream, index_t n, bool bags, bool flag) {
  check(n <= index_t(INT_MAX), op, "a batch of ", n, " IDs exceeds the CUDA backward's limit of ", INT_MAX);
  SortScratch s;
  cuda::check(cub::DeviceRadixSort::SortPairs(nullptr, s.temp_bytes, static_cast<const index_t*>(nullptr),
                                              static_cast<index_t*>(nullptr), static_cast<const int*>(nullptr),
                                              static_cast<int*>(nullptr), int(n), 0, int(sizeof(index_t) * 8),
                                              stream),
              op, "querying the radix sort's temporary storage for ", n, " IDs");
  const std::size_t kb = align256(sizeof(index_t) * std::size_t(n)), vb = align256(sizeof(int) * std::size_t(n));
  const std::size_t fb = flag ? 256 : 0, bb = bags ? vb : 0;
  const std::size_t kib = bags ? kb : 0;
  const std::size_t total = kib + kb + 2 * vb + bb + fb + align256(s.temp_bytes);
  char* p = static_cast<char*>(cuda::CudaThread::current().device_scratch(total));
  if (bags) s.keys_in = reinterpret_cast<index_t*>(p);
  p += kib;
  s.keys = reinterpret_cast<index_t*>(p);
  p += kb;
  s.vin = reinterpret_cast<int*>(p);
  p += vb;
  s.vals = reinterpret_cast<int*>(p);
  p += vb;
  if (bags) s.bag = reinterpret_cast<int*>(p);
  p += bb;
  if (flag) s.flag = reinterpret_cast<int*>(p);
  p += fb;
  s.temp = p;
  return s;
}

// keys/vals = ids (n) and s.vin sorted by ID, stably.
inline void sort_ids(const char* op, cudaStream_t stream, const index_t* ids, index_t n, SortScratch& s) {
  cuda::check(cub::DeviceRadixSort::SortPairs(s.temp, s.temp_bytes, ids, s.keys, s.vin, s.vals, int(n), 0,
                                              int(sizeof(index_t) * 8), stream),
              op, "sorting ", n, " IDs with their occurrence indices");
}

// The prep kernel + sort of a bag backward over the n occurrences from offsets[0].
inline void sort_bags(const char* op, cudaStream_t stream, const index_t* ids, const index_t* offsets, index_t B,
                      index_t n, SortScratch& s) {
  check(B <= index_t(INT_MAX), op, B, " bags exceed the CUDA backward's limit of ", INT_MAX);
  bag_prep_kernel<0><<<cuda::grid_for(B * 32, kThreads), kThreads, 0, stream>>>(s.vin, s.bag, s.keys_in, ids,
                                                                                offsets, B);
  cuda::check_launch(op, "bag indices of ", n, " IDs in ", B, " bags");
  sort_ids(op, stream, s.keys_in, n, s);
}

template <class T>
inline void launch_segments(const char* op, cudaStream_t stream, int mode, T* dst, T* m, T* v, std::uint8_t* touched,
                            const T* dy, const SortScratch& s, index_t n, const index_t* offsets, const T* weights,
                            index_t dim, bool mean, const cuda_rows::AdamArgs<T>& adam) {
  const int width = mode == kBagAdam ? cuda_rows::vec_width<T>(dim, {dst, m, v, dy})
                                     : cuda_rows::vec_width<T>(dim, {dst, dy});
  cuda_rows::with_width<T>(width, [&](auto wc) {
    constexpr int W = decltype(wc)::value;
    const int G = cuda_rows::group_size(dim / W);
    const unsigned grid = cuda::grid_for(n * G, kThreads);
    if (mode == kScatter)
      segment_kernel<T, W, kScatter><<<grid, kThreads, 0, stream>>>(dst, m, v, touched, s.flag, dy, s.keys, s.vals,
                                                                    n, s.bag, offsets, weights, dim, mean, G, adam);
    else if (mode == kBag)
      segment_kernel<T, W, kBag><<<grid, kThreads, 0, stream>>>(dst, m, v, touched, s.flag, dy, s.keys, s.vals, n,
                                                                s.bag, offsets, weights, dim, mean, G, adam);
    else
      segment_kernel<T, W, kBagAdam><<<grid, kThreads, 0, stream>>>(dst, m, v, touched, s.flag, dy, s.keys, s.vals,
                                                                    n, s.bag, offsets, weights, dim, mean, G, adam);
    cuda::check_launch(op, "sums over ", n, " sorted IDs, dim ", dim, ", ", G, " lanes x ", W, " per row");
  });
}

}  // namespace cuda_emb

// ---- the kernels' CUDA overloads ------------------------------------------------------

template <class T>
inline void gather_rows(cuda_raw_t dev, T* y, const T* table, const index_t* ids, index_t n, index_t dim) {
  namespace ce = cuda_emb;
  if (n <= 0 || dim <= 0) return;
  cuda_rows::with_width<T>(cuda_rows::vec_width<T>(dim, {y, table}), [&](auto wc) {
    constexpr int W = decltype(wc)::value;
    const int G = cuda_rows::group_size(dim / W);
    ce::gather_kernel<T, W><<<cuda::grid_for(n * G, ce::kThreads), ce::kThreads, 0, dev.stream>>>(y, table, ids, n,
                                                                                                  dim, G);
    cuda::check_launch("gather_rows", n, " rows of dim ", dim);
  });
}

template <class T>
inline void scatter_add_rows(cuda_raw_t dev, T* grad, std::uint8_t* touched, const T* dy, const index_t* ids, index_t n,
                             index_t dim) {
  namespace ce = cuda_emb;
  if (n <= 0 || (dim <= 0 && !touched)) return;
  ce::SortScratch s = ce::sort_scratch("scatter_add_rows", dev.stream, n, false, false);
  ce::iota_kernel<0><<<cuda::grid_for(n, ce::kThreads), ce::kThreads, 0, dev.stream>>>(s.vin, n);
  cuda::check_launch("scatter_add_rows", "occurrence indices of ", n, " IDs");
  ce::sort_ids("scatter_add_rows", dev.stream, ids, n, s);
  ce::launch_segments<T>("scatter_add_rows", dev.stream, ce::kScatter, grad, nullptr, nullptr, touched, dy, s, n,
                         nullptr, nullptr, dim, false, cuda_rows::AdamArgs<T>{});
}

template <class T>
inline void embedding_bag_forward(cuda_raw_t dev, T* y, const T* table, const index_t* ids, const index_t* offsets,
                                  const T* weights, index_t B, index_t dim, bool mean) {
  namespace ce = cuda_emb;
  if (B <= 0 || dim <= 0) return;
  cuda_rows::with_width<T>(cuda_rows::vec_width<T>(dim, {y, table}), [&](auto wc) {
    constexpr int W = decltype(wc)::value;
    const int G = cuda_rows::group_size(dim / W);
    ce::bag_forward_kernel<T, W><<<cuda::grid_for(B * G, ce::kThreads), ce::kThreads, 0, dev.stream>>>(
        y, table, ids, offsets, weights, B, dim, mean, G);
    cuda::check_launch("embedding_bag_forward", B, " bags of dim ", dim, mean ? " (mean)" : " (sum)",
                       weights ? " weighted" : "");
  });
}

template <class T>
inline void embedding_bag_backward(cuda_raw_t dev, T* grad_table, std::uint8_t* touched, T* dweights, const T* dy,
                                   const T* table, const index_t* ids, const index_t* offsets, const T* weights,
                                   index_t B, index_t n, index_t dim, bool mean) {
  namespace ce = cuda_emb;
  const char* op = "embedding_bag_backward";
  if (B <= 0 || n <= 0) return;
  ce::SortScratch s = ce::sort_scratch(op, dev.stream, n, true, false);
  ce::sort_bags(op, dev.stream, ids, offsets, B, n, s);
  if (dim > 0 || touched)
    ce::launch_segments<T>(op, dev.stream, ce::kBag, grad_table, nullptr, nullptr, touched, dy, s, n, offsets,
                           weights, dim, mean, cuda_rows::AdamArgs<T>{});
  if (dweights) {
    cuda_rows::with_width<T>(cuda_rows::vec_width<T>(dim, {dy, table}), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int G = cuda_rows::group_size(dim / W);
      ce::bag_dweights_kernel<T, W><<<cuda::grid_for(n * G, ce::kThreads), ce::kThreads, 0, dev.stream>>>(
          dweights, dy, table, ids, s.bag, offsets, n, dim, mean, G);
      cuda::check_launch(op, "dweights of ", n, " IDs in ", B, " bags, dim ", dim);
    });
  }
}

// The fused embedding-bag backward + lazy Adam (see the header comment):
// returns true when every updated weight is finite.
template <class T>
inline bool embedding_bag_backward_adam(cuda_raw_t dev, T* w, T* m, T* v, const T* dy, const index_t* ids,
                                        const index_t* offsets, const T* weights, index_t B, index_t n, index_t dim,
                                        bool mean, const AdamStep<T>& st) {
  namespace ce = cuda_emb;
  const char* op = "embedding_bag_backward_adam";
  if (B <= 0 || n <= 0 || dim <= 0) return true;
  ce::SortScratch s = ce::sort_scratch(op, dev.stream, n, true, true);
  cuda::check(cudaMemsetAsync(s.flag, 0, sizeof(int), dev.stream), op, "clearing the result flag");
  ce::sort_bags(op, dev.stream, ids, offsets, B, n, s);
  ce::launch_segments<T>(op, dev.stream, ce::kBagAdam, w, m, v, nullptr, dy, s, n, offsets, weights, dim, mean,
                         cuda_rows::adam_args(st));
  return cuda_rows::read_result(dev.stream, s.flag, op) == 0;
}

}  // namespace kernels

MTREC_CUDA_KERNEL(gather_rows)
MTREC_CUDA_KERNEL(scatter_add_rows)
MTREC_CUDA_KERNEL(embedding_bag_forward)
MTREC_CUDA_KERNEL(embedding_bag_backward)
MTREC_CUDA_KERNEL(embedding_bag_backward_adam)

}  // namespace mtrec
