// mtrec: CUDA kernels over lists of table rows (kernels/rows.hpp) — the lazy
// (row-wise) Adam/SGD updates, and the norms, checks and scalings of the
// touched rows — plus the helpers the embedding kernels share with them
// (kernels/cuda/embedding.cuh).
//
// `sets` is a HOST array of RowSet whose `rows` point to device memory (an
// index array of the device, like every array a kernel reads): the sets are
// walked on the host, one launch per non-empty set, all on the calling
// thread's stream. Layout of every launch: a group of G lanes (G a power of
// two <= 32, the smallest covering the row's vectors) per listed row, rows in
// a grid-stride loop; each lane moves W consecutive elements at a time (W =
// 4 floats / 2 doubles when dim and the base address allow, else 1).
//
// Results returned to the host: a bool is a device int flag (set by any
// thread that sees a non-finite weight; an integer write of one value, no
// race on floats), a double is a fixed-shape two-stage reduction (per-block
// partials, then one block adds them in block order) whose shape depends on
// the set's row count and dim only; the per-set sums are chained on the
// stream in set order. One copy to pinned host scratch and one synchronise
// per call.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/device.hpp"

namespace mtrec {
namespace kernels {
namespace cuda_rows {

constexpr int kThreads = 256;      // threads per block of every kernel here
constexpr int kMaxPartials = 1024;  // blocks of the first stage of a sum

// ---- shared helpers (also used by kernels/cuda/embedding.cuh) ----------------------

// W consecutive T, loaded and stored as one access.
template <class T, int W>
struct alignas(sizeof(T) * W) Vec {
  T v[W];
};
template <class T, int W>
__device__ __forceinline__ Vec<T, W> vload(const T* p) {
  return *reinterpret_cast<const Vec<T, W>*>(p);
}
template <class T, int W>
__device__ __forceinline__ void vstore(T* p, const Vec<T, W>& x) {
  *reinterpret_cast<Vec<T, W>*>(p) = x;
}

__device__ __forceinline__ bool is_finite(float x) { return fabsf(x) <= FLT_MAX; }
__device__ __forceinline__ bool is_finite(double x) { return fabs(x) <= DBL_MAX; }

// The widest W (elements per access) for which dim is a multiple of W and
// every pointer is aligned to W elements (null pointers count as aligned).
template <class T>
inline int vec_width(index_t dim, std::initializer_list<const void*> ptrs) {
  for (int w = int(16 / sizeof(T)); w > 1; w /= 2) {
    bool ok = dim % w == 0;
    for (const void* p : ptrs) ok = ok && reinterpret_cast<std::uintptr_t>(p) % (sizeof(T) * std::size_t(w)) == 0;
    if (ok) return w;
  }
  return 1;
}
// f(std::integral_constant<int, W>) for W = the runtime width (4 for float only).
template <class T, class F>
inline void with_width(int w, F&& f) {
  if constexpr (sizeof(T) == 4) {
    if (w == 4) {
      f(std::integral_constant<int, 4>{});
      return;
    }
  }
  if (w >= 2) {
    f(std::integral_constant<int, 2>{});
    return;
  }
  f(std::integral_constant<int, 1>{});
}
// Lanes per row: the smallest power of two >= the row's vectors, at most 32.
inline int group_size(index_t vectors) {
  int g = 1;
  while (g < 32 && index_t(g) < vectors) g <<= 1;
  return g;
}

// A group of G lanes (inside one warp) working on one item at a time.
struct Group {
  int lane;        // in [0, G)
  unsigned mask;   // the group's lanes within the warp
  index_t first;   // the group's first item
  index_t stride;  // groups in the grid
};
__device__ __forceinline__ Group make_group(int G) {
  Group g;
  const index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  g.lane = int(threadIdx.x) & (G - 1);
  const int warp_lane = int(threadIdx.x) & 31;
  g.mask = (G == 32 ? 0xffffffffu : ((1u << G) - 1u)) << (warp_lane & ~(G - 1));
  g.first = t / G;
  g.stride = index_t(gridDim.x) * blockDim.x / G;
  return g;
}

// adam_update's hyper-parameters with its two per-call constants, computed
// on the host as the reference computes them.
template <class T>
struct AdamArgs {
  T lr, beta1, beta2, eps, weight_decay, step, inv_sqrt_bc2;
  bool decoupled;
};
template <class T>
inline AdamArgs<T> adam_args(const AdamStep<T>& s) {
  AdamArgs<T> a;
  a.lr = s.lr;
  a.beta1 = s.beta1;
  a.beta2 = s.beta2;
  a.eps = s.eps;
  a.weight_decay = s.weight_decay;
  a.step = s.lr / s.bias_correction1;
  a.inv_sqrt_bc2 = T(1) / std::sqrt(s.bias_correction2);
  a.decoupled = s.decoupled;
  return a;
}
// One element of kernels/reference.hpp's adam_update; true when w is finite.
template <class T>
__device__ __forceinline__ bool adam_element(T& w, T& m, T& v, T g, const AdamArgs<T>& a) {
  T grad = g;
  if (a.decoupled)
    w *= T(1) - a.lr * a.weight_decay;
  else
    grad += a.weight_decay * w;
  m = a.beta1 * m + (T(1) - a.beta1) * grad;
  v = a.beta2 * v + (T(1) - a.beta2) * grad * grad;
  w -= a.step * m / (sqrt(v) * a.inv_sqrt_bc2 + a.eps);
  return is_finite(w);
}

// Device scratch: a small result slot for the call (a flag, a sum).
inline int* flag_scratch(cudaStream_t stream, const char* op) {
  int* f = static_cast<int*>(cuda::CudaThread::current().device_scratch(256));
  cuda::check(cudaMemsetAsync(f, 0, sizeof(int), stream), op, "clearing the result flag");
  return f;
}
// Copies a small device result into pinned host scratch and waits for it.
template <class R>
inline R read_result(cudaStream_t stream, const R* d, const char* op) {
  static_assert(sizeof(R) <= 256, "host scratch holds 256 bytes");
  R* h = static_cast<R*>(cuda::CudaThread::current().host_scratch());
  cuda::check(cudaMemcpyAsync(h, d, sizeof(R), cudaMemcpyDeviceToHost, stream), op, "copying the result to the host");
  cuda::check(cudaStreamSynchronize(stream), op, "waiting for the result");
  return *h;
}

// ---- kernels -----------------------------------------------------------------------

// w, m, v, g point at the set's table (offset applied); o = rows[i] * dim.
template <class T, int W>
__global__ void adam_rows_kernel(T* __restrict__ w, T* __restrict__ m, T* __restrict__ v, const T* __restrict__ g,
                                 const index_t* __restrict__ rows, index_t n, index_t dim, int G, AdamArgs<T> a,
                                 int* bad) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  bool ok = true;
  for (index_t i = gr.first; i < n; i += gr.stride) {
    const index_t o = rows[i] * dim;
    for (index_t c = gr.lane; c < dimv; c += G) {
      const index_t e = o + c * W;
      Vec<T, W> wv = vload<T, W>(w + e), mv = vload<T, W>(m + e), vv = vload<T, W>(v + e);
      const Vec<T, W> gv = vload<T, W>(g + e);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const bool f = adam_element(wv.v[k], mv.v[k], vv.v[k], gv.v[k], a);
        ok = ok && f;
      }
      vstore<T, W>(w + e, wv);
      vstore<T, W>(m + e, mv);
      vstore<T, W>(v + e, vv);
    }
  }
  if (!ok) *bad = 1;
}

// One element of reference.hpp's sgd_update (buf read only when momentum != 0).
template <class T, int W>
__global__ void sgd_rows_kernel(T* __restrict__ w, T* __restrict__ buf, const T* __restrict__ g,
                                const index_t* __restrict__ rows, index_t n, index_t dim, int G, T lr, T momentum,
                                T weight_decay, bool nesterov, int* bad) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  const bool mom = momentum != T(0);
  bool ok = true;
  for (index_t i = gr.first; i < n; i += gr.stride) {
    const index_t o = rows[i] * dim;
    for (index_t c = gr.lane; c < dimv; c += G) {
      const index_t e = o + c * W;
      Vec<T, W> wv = vload<T, W>(w + e);
      const Vec<T, W> gv = vload<T, W>(g + e);
      Vec<T, W> bv;
      if (mom) bv = vload<T, W>(buf + e);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        T grad = gv.v[k] + weight_decay * wv.v[k];
        if (mom) {
          bv.v[k] = momentum * bv.v[k] + grad;
          grad = nesterov ? grad + momentum * bv.v[k] : bv.v[k];
        }
        wv.v[k] -= lr * grad;
        ok = ok && is_finite(wv.v[k]);
      }
      vstore<T, W>(w + e, wv);
      if (mom) vstore<T, W>(buf + e, bv);
    }
  }
  if (!ok) *bad = 1;
}

// Sums a thread's double over its block (fixed tree); the result is valid in
// thread 0. Every thread of the block calls it. (A template: its __shared__
// array then has one definition whatever the compilation mode.)
template <int Unused = 0>
__device__ __forceinline__ double block_sum(double acc) {
  __shared__ double warp_sums[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  const int warp = int(threadIdx.x) >> 5;
  if ((threadIdx.x & 31) == 0) warp_sums[warp] = acc;
  __syncthreads();
  double s = 0;
  if (threadIdx.x == 0)
    for (int k = 0; k < kThreads / 32; ++k) s += warp_sums[k];
  return s;
}

// partial[block] = sum of x^2 (in double) over the block's share of the rows.
template <class T, int W>
__global__ void sum_squares_rows_kernel(double* __restrict__ partial, const T* __restrict__ x,
                                        const index_t* __restrict__ rows, index_t n, index_t dim, int G) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  double acc = 0;
  for (index_t i = gr.first; i < n; i += gr.stride) {
    const index_t o = rows[i] * dim;
    for (index_t c = gr.lane; c < dimv; c += G) {
      const Vec<T, W> xv = vload<T, W>(x + o + c * W);
#pragma unroll
      for (int k = 0; k < W; ++k) acc += double(xv.v[k]) * double(xv.v[k]);
    }
  }
  const double s = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One block: *total = (chain ? *total : 0) + sum of partial[0, nb), in a fixed order.
template <int Unused>
__global__ void sum_partials_kernel(double* total, const double* __restrict__ partial, int nb, bool chain) {
  double acc = 0;
  for (int k = int(threadIdx.x); k < nb; k += int(blockDim.x)) acc += partial[k];
  const double s = block_sum(acc);
  if (threadIdx.x == 0) *total = chain ? *total + s : s;
}

template <class T, int W>
__global__ void scale_rows_kernel(T* __restrict__ x, const index_t* __restrict__ rows, index_t n, index_t dim, int G,
                                  T alpha) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  for (index_t i = gr.first; i < n; i += gr.stride) {
    const index_t o = rows[i] * dim;
    for (index_t c = gr.lane; c < dimv; c += G) {
      Vec<T, W> xv = vload<T, W>(x + o + c * W);
#pragma unroll
      for (int k = 0; k < W; ++k) xv.v[k] = alpha * xv.v[k];
      vstore<T, W>(x + o + c * W, xv);
    }
  }
}

template <class T, int W>
__global__ void fill_rows_kernel(T* __restrict__ x, const index_t* __restrict__ rows, index_t n, index_t dim, int G,
                                 T value) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  Vec<T, W> fv;
#pragma unroll
  for (int k = 0; k < W; ++k) fv.v[k] = value;
  for (index_t i = gr.first; i < n; i += gr.stride) {
    const index_t o = rows[i] * dim;
    for (index_t c = gr.lane; c < dimv; c += G) vstore<T, W>(x + o + c * W, fv);
  }
}

template <class T, int W>
__global__ void all_finite_rows_kernel(int* bad, const T* __restrict__ x, const index_t* __restrict__ rows, index_t n,
                                       index_t dim, int G) {
  const Group gr = make_group(G);
  const index_t dimv = dim / W;
  bool ok = true;
  for (index_t i = gr.first; i < n; i += gr.stride) {
    const index_t o = rows[i] * dim;
    for (index_t c = gr.lane; c < dimv; c += G) {
      const Vec<T, W> xv = vload<T, W>(x + o + c * W);
#pragma unroll
      for (int k = 0; k < W; ++k) ok = ok && is_finite(xv.v[k]);
    }
  }
  if (!ok) *bad = 1;
}

inline bool any_rows(const RowSet* sets, index_t n_sets) {
  for (index_t s = 0; s < n_sets; ++s)
    if (sets[s].n > 0 && sets[s].dim > 0) return true;
  return false;
}

}  // namespace cuda_rows

// ---- the kernels' CUDA overloads ------------------------------------------------------

template <class T>
inline bool adam_update_rows(cuda_raw_t dev, T* w, T* m, T* v, const T* g, const RowSet* sets, index_t n_sets,
                             const AdamStep<T>& st) {
  namespace cr = cuda_rows;
  if (!cr::any_rows(sets, n_sets)) return true;
  int* bad = cr::flag_scratch(dev.stream, "adam_update_rows");
  const cr::AdamArgs<T> a = cr::adam_args(st);
  for (index_t s = 0; s < n_sets; ++s) {
    const RowSet& rs = sets[s];
    if (rs.n <= 0 || rs.dim <= 0) continue;
    const index_t o = rs.offset;
    cr::with_width<T>(cr::vec_width<T>(rs.dim, {w + o, m + o, v + o, g + o}), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int G = cr::group_size(rs.dim / W);
      cr::adam_rows_kernel<T, W><<<cuda::grid_for(rs.n * G, cr::kThreads), cr::kThreads, 0, dev.stream>>>(
          w + o, m + o, v + o, g + o, rs.rows, rs.n, rs.dim, G, a, bad);
      cuda::check_launch("adam_update_rows", "set ", s, " of ", n_sets, ": ", rs.n, " rows of dim ", rs.dim,
                         " at offset ", o);
    });
  }
  return cr::read_result(dev.stream, bad, "adam_update_rows") == 0;
}

template <class T>
inline bool sgd_update_rows(cuda_raw_t dev, T* w, T* buf, const T* g, const RowSet* sets, index_t n_sets, T lr,
                            T momentum, T weight_decay, bool nesterov) {
  namespace cr = cuda_rows;
  if (!cr::any_rows(sets, n_sets)) return true;
  int* bad = cr::flag_scratch(dev.stream, "sgd_update_rows");
  const bool mom = momentum != T(0);
  for (index_t s = 0; s < n_sets; ++s) {
    const RowSet& rs = sets[s];
    if (rs.n <= 0 || rs.dim <= 0) continue;
    const index_t o = rs.offset;
    T* bo = mom ? buf + o : nullptr;
    cr::with_width<T>(cr::vec_width<T>(rs.dim, {w + o, bo, g + o}), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int G = cr::group_size(rs.dim / W);
      cr::sgd_rows_kernel<T, W><<<cuda::grid_for(rs.n * G, cr::kThreads), cr::kThreads, 0, dev.stream>>>(
          w + o, bo, g + o, rs.rows, rs.n, rs.dim, G, lr, momentum, weight_decay, nesterov, bad);
      cuda::check_launch("sgd_update_rows", "set ", s, " of ", n_sets, ": ", rs.n, " rows of dim ", rs.dim,
                         " at offset ", o);
    });
  }
  return cr::read_result(dev.stream, bad, "sgd_update_rows") == 0;
}

template <class T>
inline double sum_squares_rows(cuda_raw_t dev, const T* x, const RowSet* sets, index_t n_sets) {
  namespace cr = cuda_rows;
  if (!cr::any_rows(sets, n_sets)) return 0.0;
  // [0, 256): the total; [256, 256 + 8 * kMaxPartials): the first stage's partials
  char* scratch = static_cast<char*>(
      cuda::CudaThread::current().device_scratch(256 + sizeof(double) * std::size_t(cr::kMaxPartials)));
  double* total = reinterpret_cast<double*>(scratch);
  double* partial = reinterpret_cast<double*>(scratch + 256);
  bool chain = false;
  for (index_t s = 0; s < n_sets; ++s) {
    const RowSet& rs = sets[s];
    if (rs.n <= 0 || rs.dim <= 0) continue;
    const index_t o = rs.offset;
    cr::with_width<T>(cr::vec_width<T>(rs.dim, {x + o}), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int G = cr::group_size(rs.dim / W);
      const unsigned blocks = cuda::grid_for(rs.n * G, cr::kThreads, cr::kMaxPartials);
      cr::sum_squares_rows_kernel<T, W><<<blocks, cr::kThreads, 0, dev.stream>>>(partial, x + o, rs.rows, rs.n,
                                                                                 rs.dim, G);
      cuda::check_launch("sum_squares_rows", "set ", s, " of ", n_sets, ": ", rs.n, " rows of dim ", rs.dim,
                         " at offset ", o, ", ", blocks, " partial sums");
      cr::sum_partials_kernel<0><<<1, cr::kThreads, 0, dev.stream>>>(total, partial, int(blocks), chain);
      cuda::check_launch("sum_squares_rows", "adding ", blocks, " partial sums of set ", s);
    });
    chain = true;
  }
  return cr::read_result(dev.stream, total, "sum_squares_rows");
}

template <class T>
inline void scale_rows(cuda_raw_t dev, T* x, const RowSet* sets, index_t n_sets, T alpha) {
  namespace cr = cuda_rows;
  for (index_t s = 0; s < n_sets; ++s) {
    const RowSet& rs = sets[s];
    if (rs.n <= 0 || rs.dim <= 0) continue;
    const index_t o = rs.offset;
    cr::with_width<T>(cr::vec_width<T>(rs.dim, {x + o}), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int G = cr::group_size(rs.dim / W);
      cr::scale_rows_kernel<T, W><<<cuda::grid_for(rs.n * G, cr::kThreads), cr::kThreads, 0, dev.stream>>>(
          x + o, rs.rows, rs.n, rs.dim, G, alpha);
      cuda::check_launch("scale_rows", "set ", s, " of ", n_sets, ": ", rs.n, " rows of dim ", rs.dim, " at offset ",
                         o);
    });
  }
}

template <class T>
inline void fill_rows(cuda_raw_t dev, T* x, const RowSet* sets, index_t n_sets, T value) {
  namespace cr = cuda_rows;
  for (index_t s = 0; s < n_sets; ++s) {
    const RowSet& rs = sets[s];
    if (rs.n <= 0 || rs.dim <= 0) continue;
    const index_t o = rs.offset;
    cr::with_width<T>(cr::vec_width<T>(rs.dim, {x + o}), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int G = cr::group_size(rs.dim / W);
      cr::fill_rows_kernel<T, W><<<cuda::grid_for(rs.n * G, cr::kThreads), cr::kThreads, 0, dev.stream>>>(
          x + o, rs.rows, rs.n, rs.dim, G, value);
      cuda::check_launch("fill_rows", "set ", s, " of ", n_sets, ": ", rs.n, " rows of dim ", rs.dim, " at offset ",
                         o);
    });
  }
}

template <class T>
inline bool all_finite_rows(cuda_raw_t dev, const T* x, const RowSet* sets, index_t n_sets) {
  namespace cr = cuda_rows;
  if (!cr::any_rows(sets, n_sets)) return true;
  int* bad = cr::flag_scratch(dev.stream, "all_finite_rows");
  for (index_t s = 0; s < n_sets; ++s) {
    const RowSet& rs = sets[s];
    if (rs.n <= 0 || rs.dim <= 0) continue;
    const index_t o = rs.offset;
    cr::with_width<T>(cr::vec_width<T>(rs.dim, {x + o}), [&](auto wc) {
      constexpr int W = decltype(wc)::value;
      const int G = cr::group_size(rs.dim / W);
      cr::all_finite_rows_kernel<T, W><<<cuda::grid_for(rs.n * G, cr::kThreads), cr::kThreads, 0, dev.stream>>>(
          bad, x + o, rs.rows, rs.n, rs.dim, G);
      cuda::check_launch("all_finite_rows", "set ", s, " of ", n_sets, ": ", rs.n, " rows of dim ", rs.dim,
                         " at offset ", o);
    });
  }
  return cr::read_result(dev.stream, bad, "all_finite_rows") == 0;
}

}  // namespace kernels

MTREC_CUDA_KERNEL(adam_update_rows)
MTREC_CUDA_KERNEL(sgd_update_rows)
MTREC_CUDA_KERNEL(sum_squares_rows)
MTREC_CUDA_KERNEL(scale_rows)
MTREC_CUDA_KERNEL(fill_rows)
MTREC_CUDA_KERNEL(all_finite_rows)

}  // namespace mtrec
