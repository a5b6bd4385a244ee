// mtrec: the dense CUDA kernels — GEMM (cuBLAS), bias, activations, softmax,
// layernorm, dropout, the optimizers and the reductions.
//
// Each function mirrors its reference_t overload in kernels/reference.hpp:
// the same parameters, defaults, overwrite/accumulate semantics and return
// values. Reductions run in a fixed order (no float atomics), so a result is
// the same bits run to run:
//   - row-wise ops (softmax, layernorm): a warp per row (cols <= 1024) or a
//     block of 256 per row, butterfly shuffles then a fixed pass over the
//     block's warps;
//   - column sums (bias and layernorm gradients): tiles of 32 columns, each
//     over a fixed chunk of rows (8 threads per column, then a fixed sum over
//     them), then the chunks summed in order; the chunking depends on the
//     shape only;
//   - scalar results (sum_squares, the finite flags): a block partial per
//     block of a shape-determined grid, summed in order by one block, and one
//     small copy to pinned host scratch.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "mtrec/core/rng.hpp"
#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/reference.hpp"

namespace mtrec {
namespace kernels {
namespace cuda_dense_impl {

constexpr int kThreads = 256;
// Row-wise ops: rows up to this many columns get a warp each, wider rows a block each.
constexpr index_t kWarpRowCols = 1024;

__device__ __forceinline__ index_t grid_start() { return blockIdx.x * index_t(blockDim.x) + threadIdx.x; }
__device__ __forceinline__ index_t grid_stride() { return index_t(gridDim.x) * blockDim.x; }

template <class T>
__device__ __forceinline__ bool finite_value(T x) {
  return isfinite(x);
}

// ---- reductions ------------------------------------------------------------------------

struct SumOp {
  template <class V>
  __device__ __forceinline__ V operator()(V a, V b) const {
    return a + b;
  }
};
// The reference's max: `b > a ? b : a` (keeps the first of equal values).
struct MaxOp {
  template <class V>
  __device__ __forceinline__ V operator()(V a, V b) const {
    return b > a ? b : a;
  }
};

// Butterfly over the 32 lanes: every lane ends with the same bits.
template <class V, class Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduction over a group of G threads (G = 32: a warp; G = kThreads: the
// whole block, which must all call it). `sh` holds kThreads / 32 values.
// Every thread of the group returns the same value.
template <int G, class V, class Op>
__device__ __forceinline__ V group_reduce(V v, V* sh, Op op) {
  v = warp_reduce(v, op);
  if (G == 32) return v;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  V r = sh[0];
#pragma unroll
  for (int w = 1; w < G / 32; ++w) r = op(r, sh[w]);
  __syncthreads();  // sh may be written again by the next call
  return r;
}

// ---- GEMM helper -------------------------------------------------------------------------

// K == 0: C = beta * C (C = 0 when beta == 0), as the reference.
template <class T>
__global__ void gemm_k0_kernel(T* C, index_t M, index_t N, index_t ldc, T beta) {
  const index_t total = M * N;
  for (index_t i = grid_start(); i < total; i += grid_stride()) {
    const index_t r = i / N, c = i - r * N;
    T* p = C + r * ldc + c;
    *p = beta == T(0) ? T(0) : T(double(beta) * double(*p));
  }
}

// ---- elementwise -----------------------------------------------------------------------------

template <class T>
__global__ void bias_add_kernel(T* y, const T* b, index_t rows, index_t cols) {
  const index_t total = rows * cols;
  for (index_t i = grid_start(); i < total; i += grid_stride()) {
    const index_t r = i / cols, c = i - r * cols;
    y[i] += b[c];
  }
}

template <class T>
__global__ void relu_forward_kernel(T* y, const T* x, index_t n) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] = x[i] > T(0) ? x[i] : T(0);
}
template <class T>
__global__ void relu_backward_kernel(T* dx, const T* dy, const T* x, index_t n) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) dx[i] = x[i] > T(0) ? dy[i] : T(0);
}

template <class T>
__global__ void gelu_forward_kernel(T* y, const T* x, index_t n, GeluMode mode) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] = detail::gelu_value(x[i], mode);
}
template <class T>
__global__ void gelu_backward_kernel(T* dx, const T* dy, const T* x, index_t n, GeluMode mode) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) dx[i] = dy[i] * detail::gelu_derivative(x[i], mode);
}

template <class T>
__global__ void sigmoid_forward_kernel(T* y, const T* x, index_t n) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] = T(1) / (T(1) + std::exp(-x[i]));
}
template <class T>
__global__ void sigmoid_backward_kernel(T* dx, const T* dy, const T* y, index_t n) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) dx[i] = dy[i] * y[i] * (T(1) - y[i]);
}

template <class T>
__global__ void dropout_kernel(T* y, const T* x, index_t n, std::uint32_t threshold, T scale, std::uint64_t key,
                               std::uint64_t offset) {
  for (index_t i = grid_start(); i < n; i += grid_stride())
    y[i] = detail::dropout_keep(key, offset + std::uint64_t(i), threshold) ? x[i] * scale : T(0);
}

template <class T>
__global__ void residual_add_kernel(T* y, const T* a, const T* b, index_t n) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] = a[i] + b[i];
}
template <class T>
__global__ void scale_kernel(T* y, const T* x, index_t n, T alpha) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] = alpha * x[i];
}
template <class T>
__global__ void copy_kernel(T* y, const T* x, index_t n) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] = x[i];
}
template <class T>
__global__ void fill_kernel(T* y, index_t n, T value) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] = value;
}
template <class T>
__global__ void axpy_kernel(T* y, const T* x, index_t n, T alpha) {
  for (index_t i = grid_start(); i < n; i += grid_stride()) y[i] += alpha * x[i];
}

// ---- optimizers (a flag set to 1 when an updated weight is not finite) ----------------------

template <class T>
__global__ void adam_kernel(T* w, T* m, T* v, const T* g, index_t n, AdamStep<T> s, T step, T inv_sqrt_bc2,
                            int* bad_flag) {
  bool bad = false;
  for (index_t i = grid_start(); i < n; i += grid_stride()) {
    T grad = g[i];
    T wi = w[i];
    if (s.decoupled)
      wi *= T(1) - s.lr * s.weight_decay;
    else
      grad += s.weight_decay * wi;
    const T mi = s.beta1 * m[i] + (T(1) - s.beta1) * grad;
    const T vi = s.beta2 * v[i] + (T(1) - s.beta2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    wi -= step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + s.eps);
    w[i] = wi;
    bad = bad || !finite_value(wi);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *bad_flag = 1;
}

template <class T>
__global__ void sgd_kernel(T* w, T* buf, const T* g, index_t n, T lr, T momentum, T weight_decay, bool nesterov,
                           int* bad_flag) {
  bool bad = false;
  for (index_t i = grid_start(); i < n; i += grid_stride()) {
    T wi = w[i];
    T grad = g[i] + weight_decay * wi;
    if (momentum != T(0)) {
      const T b = momentum * buf[i] + grad;
      buf[i] = b;
      grad = nesterov ? grad + momentum * b : b;
    }
    wi -= lr * grad;
    w[i] = wi;
    bad = bad || !finite_value(wi);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *bad_flag = 1;
}

template <class T>
__global__ void all_finite_kernel(const T* x, index_t n, int* bad_flag) {
  bool bad = false;
  for (index_t i = grid_start(); i < n; i += grid_stride()) bad = bad || !finite_value(x[i]);
  if (__syncthreads_or(bad) && threadIdx.x == 0) *bad_flag = 1;
}

// ---- sum of squares: block partials, then one block sums them in order ---------------------

template <class T>
__global__ void sum_squares_partial_kernel(const T* x, index_t n, double* partial) {
  __shared__ double sh[kThreads / 32];
  double acc = 0;
  for (index_t i = grid_start(); i < n; i += grid_stride()) acc += double(x[i]) * double(x[i]);
  acc = group_reduce<kThreads>(acc, sh, SumOp{});
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <class T>
__global__ void sum_partials_kernel(const double* partial, int count, double* out) {
  __shared__ double sh[kThreads / 32];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = group_reduce<kThreads>(acc, sh, SumOp{});
  if (threadIdx.x == 0) *out = acc;
}

// ---- softmax and layernorm: a group of G threads per row ------------------------------------

template <class T, int G>
__global__ void softmax_forward_kernel(T* y, const T* x, index_t rows, index_t cols) {
  __shared__ double sh_d[kThreads / 32];
  __shared__ T sh_t[kThreads / 32];
  constexpr int per_block = kThreads / G;
  const int lane = threadIdx.x % G;
  for (index_t r = blockIdx.x * index_t(per_block) + threadIdx.x / G; r < rows;
       r += index_t(gridDim.x) * per_block) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T mx = xr[0];
    for (index_t c = lane; c < cols; c += G) mx = xr[c] > mx ? xr[c] : mx;
    mx = group_reduce<G>(mx, sh_t, MaxOp{});
    double sum = 0;
    for (index_t c = lane; c < cols; c += G) {
      const T e = std::exp(xr[c] - mx);
      yr[c] = e;
      sum += e;
    }
    sum = group_reduce<G>(sum, sh_d, SumOp{});
    const T inv = T(1.0 / sum);
    for (index_t c = lane; c < cols; c += G) yr[c] *= inv;
  }
}

template <class T, int G>
__global__ void softmax_backward_kernel(T* dx, const T* dy, const T* y, index_t rows, index_t cols) {
  __shared__ double sh_d[kThreads / 32];
  constexpr int per_block = kThreads / G;
  const int lane = threadIdx.x % G;
  for (index_t r = blockIdx.x * index_t(per_block) + threadIdx.x / G; r < rows;
       r += index_t(gridDim.x) * per_block) {
    const T* dyr = dy + r * cols;
    const T* yr = y + r * cols;
    double dot = 0;
    for (index_t c = lane; c < cols; c += G) dot += double(dyr[c]) * yr[c];
    dot = group_reduce<G>(dot, sh_d, SumOp{});
    const T d = T(dot);
    for (index_t c = lane; c < cols; c += G) dx[r * cols + c] = yr[c] * (dyr[c] - d);
  }
}

template <class T, int G>
__global__ void layernorm_forward_kernel(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                                         index_t rows, index_t cols, T eps) {
  __shared__ double sh_d[kThreads / 32];
  constexpr int per_block = kThreads / G;
  const int lane = threadIdx.x % G;
  for (index_t r = blockIdx.x * index_t(per_block) + threadIdx.x / G; r < rows;
       r += index_t(gridDim.x) * per_block) {
    const T* xr = x + r * cols;
    double m = 0;
    for (index_t c = lane; c < cols; c += G) m += xr[c];
    m = group_reduce<G>(m, sh_d, SumOp{});
    m /= double(cols);
    double var = 0;
    for (index_t c = lane; c < cols; c += G) var += (xr[c] - m) * (xr[c] - m);
    var = group_reduce<G>(var, sh_d, SumOp{});
    var /= double(cols);
    const double rs = 1.0 / sqrt(var + double(eps));
    for (index_t c = lane; c < cols; c += G) y[r * cols + c] = T((xr[c] - m) * rs) * gamma[c] + beta[c];
    if (lane == 0) {
      mean[r] = T(m);
      rstd[r] = T(rs);
    }
  }
}

template <class T, int G>
__global__ void layernorm_backward_dx_kernel(T* dx, const T* dy, const T* x, const T* mean, const T* rstd,
                                             const T* gamma, index_t rows, index_t cols) {
  __shared__ double sh_d[kThreads / 32];
  constexpr int per_block = kThreads / G;
  const int lane = threadIdx.x % G;
  for (index_t r = blockIdx.x * index_t(per_block) + threadIdx.x / G; r < rows;
       r += index_t(gridDim.x) * per_block) {
    const T* xr = x + r * cols;
    const T* dyr = dy + r * cols;
    const double mr = mean[r], rr = rstd[r];
    double mean_g = 0, mean_gx = 0;
    for (index_t c = lane; c < cols; c += G) {
      const double xhat = (double(xr[c]) - mr) * rr;
      const double g = double(dyr[c]) * gamma[c];
      mean_g += g;
      mean_gx += g * xhat;
    }
    mean_g = group_reduce<G>(mean_g, sh_d, SumOp{});
    mean_gx = group_reduce<G>(mean_gx, sh_d, SumOp{});
    mean_g /= double(cols);
    mean_gx /= double(cols);
    for (index_t c = lane; c < cols; c += G) {
      const double xhat = (double(xr[c]) - mr) * rr;
      const double g = double(dyr[c]) * gamma[c];
      dx[r * cols + c] = T(rr * (g - mean_g - xhat * mean_gx));
    }
  }
}

// ---- column reductions -----------------------------------------------------------------------

constexpr int kColTile = 32;  // columns per block (threadIdx.x)
constexpr int kColRows = 8;   // threads per column (threadIdx.y)

template <class T>
struct ColumnSumTerm {
  static constexpr int nv = 1;
  const T* dy;
  index_t cols;
  __device__ __forceinline__ void operator()(index_t r, index_t c, double* acc) const {
    acc[0] += double(dy[r * cols + c]);
  }
};

template <class T>
struct LayernormParamTerm {
  static constexpr int nv = 2;
  const T* dy;
  const T* x;
  const T* mean;
  const T* rstd;
  index_t cols;
  __device__ __forceinline__ void operator()(index_t r, index_t c, double* acc) const {
    const double xhat = (double(x[r * cols + c]) - mean[r]) * rstd[r];
    const double d = double(dy[r * cols + c]);
    acc[0] += d * xhat;
    acc[1] += d;
  }
};

// Block (kColTile, kColRows); grid (column tiles, chunks). Chunk k covers rows
// [k * rows_per_chunk, min(rows, (k + 1) * rows_per_chunk)). With one chunk the
// sums go straight into out[v][c] (+=); else into partial[(k * NV + v) * cols + c].
template <class T, class F>
__global__ void column_reduce_kernel(F f, index_t rows, index_t cols, index_t rows_per_chunk, double* partial,
                                     T* out0, T* out1) {
  constexpr int NV = F::nv;
  __shared__ double sh[NV][kColRows][kColTile + 1];
  const index_t c = blockIdx.x * index_t(kColTile) + threadIdx.x;
  const index_t r0 = index_t(blockIdx.y) * rows_per_chunk;
  const index_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  double acc[NV];
#pragma unroll
  for (int v = 0; v < NV; ++v) acc[v] = 0;
  if (c < cols)
    for (index_t r = r0 + threadIdx.y; r < r1; r += kColRows) f(r, c, acc);
#pragma unroll
  for (int v = 0; v < NV; ++v) sh[v][threadIdx.y][threadIdx.x] = acc[v];
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      double s = sh[v][0][threadIdx.x];
      for (int k = 1; k < kColRows; ++k) s += sh[v][k][threadIdx.x];
      if (partial) {
        partial[(index_t(blockIdx.y) * NV + v) * cols + c] = s;
      } else {
        T* out = v == 0 ? out0 : out1;
        out[c] += T(s);
      }
    }
  }
}

template <class T, int NV>
__global__ void column_finish_kernel(const double* partial, index_t chunks, index_t cols, T* out0, T* out1) {
  for (index_t c = grid_start(); c < cols; c += grid_stride()) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      double s = 0;
      for (index_t k = 0; k < chunks; ++k) s += partial[(k * NV + v) * cols + c];
      T* out = v == 0 ? out0 : out1;
      out[c] += T(s);
    }
  }
}

// out0[c] (+ out1[c] when F::nv == 2) += sum over rows of f's terms.
template <class T, class F>
inline void column_reduce(cuda_raw_t dev, const char* op, F f, index_t rows, index_t cols, T* out0, T* out1) {
  constexpr int NV = F::nv;
  const index_t tiles = (cols + kColTile - 1) / kColTile;
  // About 1024 blocks in all, at least 64 rows a chunk; a function of the shape only.
  index_t chunks = (rows + 63) / 64;
  const index_t max_chunks = tiles >= 1024 ? 1 : 1024 / tiles;
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks > 65535) chunks = 65535;
  if (chunks < 1) chunks = 1;
  index_t rows_per_chunk = (rows + chunks - 1) / chunks;
  if (rows_per_chunk < 1) rows_per_chunk = 1;           // rows == 0: one chunk adding zeros
  chunks = rows > 0 ? (rows + rows_per_chunk - 1) / rows_per_chunk : 1;
  if (tiles > 2147483647) fail(op, "too many columns for one launch: ", cols);
  double* partial = nullptr;
  if (chunks > 1)
    partial = static_cast<double*>(
        cuda::CudaThread::current().device_scratch(std::size_t(chunks * NV * cols) * sizeof(double)));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks));
  const dim3 block(kColTile, kColRows);
  column_reduce_kernel<T, F><<<grid, block, 0, dev.stream>>>(f, rows, cols, rows_per_chunk, partial, out0, out1);
  cuda::check_launch(op, "column reduction over rows=", rows, " cols=", cols, " chunks=", chunks);
  if (partial) {
    column_finish_kernel<T, NV><<<cuda::grid_for(cols), kThreads, 0, dev.stream>>>(partial, chunks, cols, out0, out1);
    cuda::check_launch(op, "column reduction finish over cols=", cols, " chunks=", chunks);
  }
}

// A flag in device scratch, zeroed on the stream.
inline int* zeroed_flag(cuda_raw_t dev, const char* op) {
  int* flag = static_cast<int*>(cuda::CudaThread::current().device_scratch(sizeof(int)));
  cuda::check(cudaMemsetAsync(flag, 0, sizeof(int), dev.stream), op, "clearing the finite flag");
  return flag;
}
// Copies the flag back (synchronising the stream): true when it is still 0.
inline bool flag_clear(cuda_raw_t dev, const char* op, const int* flag) {
  int* host = static_cast<int*>(cuda::CudaThread::current().host_scratch());
  cuda::check(cudaMemcpyAsync(host, flag, sizeof(int), cudaMemcpyDeviceToHost, dev.stream), op,
              "copying the finite flag to the host");
  cuda::check(cudaStreamSynchronize(dev.stream), op, "waiting for the finite flag");
  return *host == 0;
}

template <class T>
inline void check_real() {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the CUDA dense kernels support float and double");
}

}  // namespace cuda_dense_impl

// =============================== the kernels =====================================================

// C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C; row-major, leading
// dimensions lda/ldb/ldc. cuBLAS is column-major: C^T (N,M) = op(B)^T op(A)^T,
// so B goes first with the same transposition flags.
template <class T>
inline void gemm(cuda_raw_t dev, Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A,
                 index_t lda, const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  cuda_dense_impl::check_real<T>();
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    cuda_dense_impl::gemm_k0_kernel<T><<<cuda::grid_for(M * N), cuda_dense_impl::kThreads, 0, dev.stream>>>(C, M, N, ldc, beta);
    cuda::check_launch("gemm", "K == 0 scaling of C, M=", M, " N=", N, " ldc=", ldc);
    return;
  }
  cublasHandle_t h = dev.blas();
  const cublasOperation_t opa = ta == Trans::N ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t opb = tb == Trans::N ? CUBLAS_OP_N : CUBLAS_OP_T;
  const char* tas = ta == Trans::N ? "N" : "T";
  const char* tbs = tb == Trans::N ? "N" : "T";
  if constexpr (std::is_same<T, float>::value) {
    const bool tf32 = dev.tf32();
    cuda::check_blas(cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "gemm",
                     "cublasSetMathMode(", tf32 ? "TF32" : "default", ")");
    cuda::check_blas(cublasSgemm_64(h, opb, opa, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc), "gemm",
                     "cublasSgemm ta=", tas, " tb=", tbs, " M=", M, " N=", N, " K=", K, " lda=", lda, " ldb=", ldb,
                     " ldc=", ldc, tf32 ? " (TF32)" : "");
  } else {
    cuda::check_blas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "gemm", "cublasSetMathMode(default)");
    cuda::check_blas(cublasDgemm_64(h, opb, opa, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc), "gemm",
                     "cublasDgemm ta=", tas, " tb=", tbs, " M=", M, " N=", N, " K=", K, " lda=", lda, " ldb=", ldb,
                     " ldc=", ldc);
  }
}

// y (rows,cols) += b (cols) broadcast over rows
template <class T>
inline void bias_add(cuda_raw_t dev, T* y, const T* b, index_t rows, index_t cols) {
  const index_t n = rows * cols;
  if (rows <= 0 || cols <= 0) return;
  cuda_dense_impl::bias_add_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, b, rows, cols);
  cuda::check_launch("bias_add", "rows=", rows, " cols=", cols);
}

// db (cols) += sum over rows of dy (rows,cols)
template <class T>
inline void column_sum_add(cuda_raw_t dev, T* db, const T* dy, index_t rows, index_t cols) {
  if (cols <= 0) return;
  // rows == 0 adds zeros (db unchanged but for -0 -> +0, as the reference's db[c] += 0).
  cuda_dense_impl::column_reduce<T>(dev, "column_sum_add", cuda_dense_impl::ColumnSumTerm<T>{dy, cols}, rows < 0 ? 0 : rows,
                              cols, db, static_cast<T*>(nullptr));
}

// y (n) = max(x, 0)
template <class T>
inline void relu_forward(cuda_raw_t dev, T* y, const T* x, index_t n) {
  if (n <= 0) return;
  cuda_dense_impl::relu_forward_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, n);
  cuda::check_launch("relu_forward", "n=", n);
}
// dx (n) = dy * [x > 0]
template <class T>
inline void relu_backward(cuda_raw_t dev, T* dx, const T* dy, const T* x, index_t n) {
  if (n <= 0) return;
  cuda_dense_impl::relu_backward_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(dx, dy, x, n);
  cuda::check_launch("relu_backward", "n=", n);
}

// y (n) = gelu(x)
template <class T>
inline void gelu_forward(cuda_raw_t dev, T* y, const T* x, index_t n, GeluMode mode = GeluMode::Erf) {
  if (n <= 0) return;
  cuda_dense_impl::gelu_forward_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, n, mode);
  cuda::check_launch("gelu_forward", "n=", n, mode == GeluMode::Erf ? " (erf)" : " (tanh)");
}
// dx (n) = dy * gelu'(x)
template <class T>
inline void gelu_backward(cuda_raw_t dev, T* dx, const T* dy, const T* x, index_t n, GeluMode mode = GeluMode::Erf) {
  if (n <= 0) return;
  cuda_dense_impl::gelu_backward_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(dx, dy, x, n, mode);
  cuda::check_launch("gelu_backward", "n=", n, mode == GeluMode::Erf ? " (erf)" : " (tanh)");
}

// y (n) = 1 / (1 + exp(-x))
template <class T>
inline void sigmoid_forward(cuda_raw_t dev, T* y, const T* x, index_t n) {
  if (n <= 0) return;
  cuda_dense_impl::sigmoid_forward_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, n);
  cuda::check_launch("sigmoid_forward", "n=", n);
}
// dx (n) = dy * y * (1 - y), from the saved output y
template <class T>
inline void sigmoid_backward(cuda_raw_t dev, T* dx, const T* dy, const T* y, index_t n) {
  if (n <= 0) return;
  cuda_dense_impl::sigmoid_backward_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(dx, dy, y, n);
  cuda::check_launch("sigmoid_backward", "n=", n);
}

// y (rows,cols) = softmax of each row of x, max-subtracted
template <class T>
inline void softmax_forward(cuda_raw_t dev, T* y, const T* x, index_t rows, index_t cols) {
  if (rows <= 0 || cols <= 0) return;
  if (cols <= cuda_dense_impl::kWarpRowCols)
    cuda_dense_impl::softmax_forward_kernel<T, 32>
        <<<cuda::grid_for(rows, cuda_dense_impl::kThreads / 32), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, rows, cols);
  else
    cuda_dense_impl::softmax_forward_kernel<T, cuda_dense_impl::kThreads>
        <<<cuda::grid_for(rows, 1), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, rows, cols);
  cuda::check_launch("softmax_forward", "rows=", rows, " cols=", cols);
}
// dx (rows,cols) = y * (dy - sum(dy * y)) per row, from the saved output y
template <class T>
inline void softmax_backward(cuda_raw_t dev, T* dx, const T* dy, const T* y, index_t rows, index_t cols) {
  if (rows <= 0 || cols <= 0) return;
  if (cols <= cuda_dense_impl::kWarpRowCols)
    cuda_dense_impl::softmax_backward_kernel<T, 32>
        <<<cuda::grid_for(rows, cuda_dense_impl::kThreads / 32), cuda_dense_impl::kThreads, 0, dev.stream>>>(dx, dy, y, rows,
                                                                                                 cols);
  else
    cuda_dense_impl::softmax_backward_kernel<T, cuda_dense_impl::kThreads>
        <<<cuda::grid_for(rows, 1), cuda_dense_impl::kThreads, 0, dev.stream>>>(dx, dy, y, rows, cols);
  cuda::check_launch("softmax_backward", "rows=", rows, " cols=", cols);
}

// y (rows,cols) = (x - mean) * rstd * gamma + beta per row; saves mean and
// rstd (rows). Biased variance, as PyTorch.
template <class T>
inline void layernorm_forward(cuda_raw_t dev, T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                              index_t rows, index_t cols, T eps) {
  if (rows <= 0) return;
  if (cols <= cuda_dense_impl::kWarpRowCols)
    cuda_dense_impl::layernorm_forward_kernel<T, 32>
        <<<cuda::grid_for(rows, cuda_dense_impl::kThreads / 32), cuda_dense_impl::kThreads, 0, dev.stream>>>(
            y, mean, rstd, x, gamma, beta, rows, cols, eps);
  else
    cuda_dense_impl::layernorm_forward_kernel<T, cuda_dense_impl::kThreads>
        <<<cuda::grid_for(rows, 1), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, mean, rstd, x, gamma, beta, rows,
                                                                          cols, eps);
  cuda::check_launch("layernorm_forward", "rows=", rows, " cols=", cols);
}
// dx (rows,cols) written; dgamma, dbeta (cols) accumulated.
template <class T>
inline void layernorm_backward(cuda_raw_t dev, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                               const T* rstd, const T* gamma, index_t rows, index_t cols) {
  if (cols <= 0) return;
  if (rows > 0) {
    if (cols <= cuda_dense_impl::kWarpRowCols)
      cuda_dense_impl::layernorm_backward_dx_kernel<T, 32>
          <<<cuda::grid_for(rows, cuda_dense_impl::kThreads / 32), cuda_dense_impl::kThreads, 0, dev.stream>>>(
              dx, dy, x, mean, rstd, gamma, rows, cols);
    else
      cuda_dense_impl::layernorm_backward_dx_kernel<T, cuda_dense_impl::kThreads>
          <<<cuda::grid_for(rows, 1), cuda_dense_impl::kThreads, 0, dev.stream>>>(dx, dy, x, mean, rstd, gamma, rows, cols);
    cuda::check_launch("layernorm_backward", "dx, rows=", rows, " cols=", cols);
  }
  cuda_dense_impl::column_reduce<T>(dev, "layernorm_backward", cuda_dense_impl::LayernormParamTerm<T>{dy, x, mean, rstd, cols},
                              rows < 0 ? 0 : rows, cols, dgamma, dbeta);
}

// y (n) = x * keep / (1 - p); element i is kept by detail::dropout_keep(key, offset + i)
template <class T>
inline void dropout_forward(cuda_raw_t dev, T* y, const T* x, index_t n, double p, std::uint64_t key,
                            std::uint64_t offset = 0) {
  if (n <= 0) return;
  const std::uint32_t th = detail::dropout_threshold(p);
  const T scale = T(1.0 / (1.0 - p));
  cuda_dense_impl::dropout_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, n, th, scale, key,
                                                                                         offset);
  cuda::check_launch("dropout_forward", "n=", n, " p=", p);
}
// dx (n) = dy * keep / (1 - p), the same mask regenerated from the counter
template <class T>
inline void dropout_backward(cuda_raw_t dev, T* dx, const T* dy, index_t n, double p, std::uint64_t key,
                             std::uint64_t offset = 0) {
  dropout_forward(dev, dx, dy, n, p, key, offset);
}

// y (n) = a + b (y may alias a or b)
template <class T>
inline void residual_add(cuda_raw_t dev, T* y, const T* a, const T* b, index_t n) {
  if (n <= 0) return;
  cuda_dense_impl::residual_add_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, a, b, n);
  cuda::check_launch("residual_add", "n=", n);
}

// One Adam / AdamW step (reference.hpp); true when every updated weight is finite.
template <class T>
inline bool adam_update(cuda_raw_t dev, T* w, T* m, T* v, const T* g, index_t n, const AdamStep<T>& s) {
  if (n <= 0) return true;
  const T step = s.lr / s.bias_correction1;
  const T inv_sqrt_bc2 = T(1) / std::sqrt(s.bias_correction2);
  int* flag = cuda_dense_impl::zeroed_flag(dev, "adam_update");
  cuda_dense_impl::adam_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(w, m, v, g, n, s, step,
                                                                                      inv_sqrt_bc2, flag);
  cuda::check_launch("adam_update", "n=", n);
  return cuda_dense_impl::flag_clear(dev, "adam_update", flag);
}

// One SGD step (reference.hpp); buf is untouched (may be null) when momentum == 0.
template <class T>
inline bool sgd_update(cuda_raw_t dev, T* w, T* buf, const T* g, index_t n, T lr, T momentum, T weight_decay,
                       bool nesterov) {
  if (n <= 0) return true;
  int* flag = cuda_dense_impl::zeroed_flag(dev, "sgd_update");
  cuda_dense_impl::sgd_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(w, buf, g, n, lr, momentum,
                                                                                     weight_decay, nesterov, flag);
  cuda::check_launch("sgd_update", "n=", n);
  return cuda_dense_impl::flag_clear(dev, "sgd_update", flag);
}

// True when every x[i] over [0, n) is finite.
template <class T>
inline bool all_finite(cuda_raw_t dev, const T* x, index_t n) {
  if (n <= 0) return true;
  int* flag = cuda_dense_impl::zeroed_flag(dev, "all_finite");
  cuda_dense_impl::all_finite_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(x, n, flag);
  cuda::check_launch("all_finite", "n=", n);
  return cuda_dense_impl::flag_clear(dev, "all_finite", flag);
}

// Sum of x[i]^2 over [0, n), accumulated in double.
template <class T>
inline double sum_squares(cuda_raw_t dev, const T* x, index_t n) {
  if (n <= 0) return 0.0;
  constexpr unsigned kMaxBlocks = 1024;
  const unsigned blocks = cuda::grid_for(n, cuda_dense_impl::kThreads, kMaxBlocks);
  double* partial =
      static_cast<double*>(cuda::CudaThread::current().device_scratch((std::size_t(blocks) + 1) * sizeof(double)));
  cuda_dense_impl::sum_squares_partial_kernel<T><<<blocks, cuda_dense_impl::kThreads, 0, dev.stream>>>(x, n, partial);
  cuda::check_launch("sum_squares", "partials, n=", n, " blocks=", blocks);
  cuda_dense_impl::sum_partials_kernel<T><<<1, cuda_dense_impl::kThreads, 0, dev.stream>>>(partial, int(blocks), partial + blocks);
  cuda::check_launch("sum_squares", "final sum of ", blocks, " partials");
  double* host = static_cast<double*>(cuda::CudaThread::current().host_scratch());
  cuda::check(cudaMemcpyAsync(host, partial + blocks, sizeof(double), cudaMemcpyDeviceToHost, dev.stream),
              "sum_squares", "copying the sum to the host, n=", n);
  cuda::check(cudaStreamSynchronize(dev.stream), "sum_squares", "waiting for the sum, n=", n);
  return *host;
}

// y (n) = alpha * x (y may alias x)
template <class T>
inline void scale(cuda_raw_t dev, T* y, const T* x, index_t n, T alpha) {
  if (n <= 0) return;
  cuda_dense_impl::scale_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, n, alpha);
  cuda::check_launch("scale", "n=", n);
}

// y (n) = x (no overlap)
template <class T>
inline void copy(cuda_raw_t dev, T* y, const T* x, index_t n) {
  if (n <= 0) return;
  cuda_dense_impl::copy_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, n);
  cuda::check_launch("copy", "n=", n);
}

// y (n) = value
template <class T>
inline void fill(cuda_raw_t dev, T* y, index_t n, T value) {
  if (n <= 0) return;
  cuda_dense_impl::fill_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, n, value);
  cuda::check_launch("fill", "n=", n);
}

// y (n) += alpha * x
template <class T>
inline void axpy(cuda_raw_t dev, T* y, const T* x, index_t n, T alpha) {
  if (n <= 0) return;
  cuda_dense_impl::axpy_kernel<T><<<cuda::grid_for(n), cuda_dense_impl::kThreads, 0, dev.stream>>>(y, x, n, alpha);
  cuda::check_launch("axpy", "n=", n);
}

}  // namespace kernels

MTREC_CUDA_KERNEL(gemm)
MTREC_CUDA_KERNEL(bias_add)
MTREC_CUDA_KERNEL(column_sum_add)
MTREC_CUDA_KERNEL(relu_forward)
MTREC_CUDA_KERNEL(relu_backward)
MTREC_CUDA_KERNEL(gelu_forward)
MTREC_CUDA_KERNEL(gelu_backward)
MTREC_CUDA_KERNEL(sigmoid_forward)
MTREC_CUDA_KERNEL(sigmoid_backward)
MTREC_CUDA_KERNEL(softmax_forward)
MTREC_CUDA_KERNEL(softmax_backward)
MTREC_CUDA_KERNEL(layernorm_forward)
MTREC_CUDA_KERNEL(layernorm_backward)
MTREC_CUDA_KERNEL(dropout_forward)
MTREC_CUDA_KERNEL(dropout_backward)
MTREC_CUDA_KERNEL(residual_add)
MTREC_CUDA_KERNEL(axpy)
MTREC_CUDA_KERNEL(scale)
MTREC_CUDA_KERNEL(copy)
MTREC_CUDA_KERNEL(fill)
MTREC_CUDA_KERNEL(sum_squares)
MTREC_CUDA_KERNEL(all_finite)
MTREC_CUDA_KERNEL(adam_update)
MTREC_CUDA_KERNEL(sgd_update)

}  // namespace mtrec
