// mtrec: the CUDA losses and predict's output transforms (the reference_t
// overloads and their contract are in kernels/loss.hpp).
//
// Each loss row is computed in double with the reference's formulas (the
// softplus and log-sum-exp forms, exp only of non-positive numbers), and its
// gradient written as there. The value returned to the host is summed in
// double in a fixed order: every thread (or warp, or block, one row each)
// adds its rows in row order, each block reduces those with a fixed-shape
// tree into one partial, and one block adds the (at most 1024) partials the
// same way; the grid depends on n only, so the bits are the same run to run.
// Then one 8-byte copy to the pinned host scratch and a stream synchronise.
//   bce / mse / huber / bpr / esmm   a thread per row
//   softmax_cross_entropy_loss       a warp per row (lanes over the C classes)
//   in_batch_softmax_rows            a block per row (threads over the n columns)
//   output_transform                 a thread per element; Softmax: a warp per row
//   sigmoid_product                  a thread per row
#pragma once

#include <cmath>
#include <cstdint>

#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/loss.hpp"

namespace mtrec {
namespace kernels {
namespace cuda_loss_impl {

constexpr int kThreads = 256;  // every kernel here is launched with this block
constexpr int kWarps = kThreads / 32;
constexpr unsigned kMaxBlocks = 1024;  // the partials the final sum adds

// std::max / std::min on doubles, the same comparisons (NaN handling included)
__device__ __forceinline__ double dmax(double a, double b) { return (a < b) ? b : a; }
__device__ __forceinline__ double dmin(double a, double b) { return (b < a) ? b : a; }

// detail::loss_softplus: log(1 + exp(z)), exp of a non-positive number only
__device__ __forceinline__ double softplus(double z) { return dmax(z, 0.0) + std::log1p(std::exp(-std::fabs(z))); }

struct SumOp {
  __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ double operator()(double a, double b) const { return dmax(a, b); }
};

// Butterfly over the warp (every lane active). For the sum every lane ends
// with the same bits (each step adds a symmetric pair); for the max callers
// broadcast lane 0's value.
template <class Op>
__device__ __forceinline__ double warp_reduce(double v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The whole block (blockDim.x == kThreads) takes part; every thread gets the
// same value. sh: kWarps + 1 doubles of shared memory.
template <class Op>
__device__ __forceinline__ double block_reduce(double v, double* sh, Op op) {
  v = warp_reduce(v, op);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();  // sh free from an earlier call
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double r = sh[0];
    for (int k = 1; k < kWarps; ++k) r = op(r, sh[k]);
    sh[kWarps] = r;
  }
  __syncthreads();
  return sh[kWarps];
}

// ---- the rows of the element-wise losses (loss.hpp's *_row, on the device) ----

template <class T>
struct BceRow {
  T* dlogits;
  const T* logits;
  const T* labels;
  const std::uint8_t* mask;
  const T* weights;
  double inv_weight_sum;
  __device__ double operator()(index_t i) const {
    if (!detail::loss_row_on(mask, i)) {
      if (dlogits) dlogits[i] = T(0);
      return 0.0;
    }
    const double x = double(logits[i]), y = double(labels[i]);
    const double s = detail::loss_row_scale(weights, i, inv_weight_sum);
    if (dlogits) dlogits[i] = T(s * (detail::loss_sigmoid(x) - y));
    return s * (dmax(x, 0.0) - x * y + std::log1p(std::exp(-std::fabs(x))));
  }
};

// regression_row with mse's (Huber = false) or huber's row_loss / row_grad
template <class T, bool Huber>
struct RegressionRow {
  T* dpred;
  const T* pred;
  const T* target;
  const std::uint8_t* mask;
  const T* weights;
  double inv_weight_sum;
  double delta;  // Huber only
  __device__ double operator()(index_t i) const {
    if (!detail::loss_row_on(mask, i)) {
      if (dpred) dpred[i] = T(0);
      return 0.0;
    }
    const double r = double(pred[i]) - double(target[i]);
    const double s = detail::loss_row_scale(weights, i, inv_weight_sum);
    double loss, grad;
    if constexpr (Huber) {
      loss = std::fabs(r) < delta ? 0.5 * r * r : delta * (std::fabs(r) - 0.5 * delta);
      grad = std::fabs(r) <= delta ? r : (r > 0 ? delta : -delta);
    } else {
      loss = r * r;
      grad = 2.0 * r;
    }
    if (dpred) dpred[i] = T(s * grad);
    return s * loss;
  }
};

template <class T>
struct BprRow {
  T* dpos;
  T* dneg;
  const T* pos;
  const T* neg;
  const std::uint8_t* mask;
  const T* weights;
  double inv_weight_sum;
  __device__ double operator()(index_t i) const {
    if (!detail::loss_row_on(mask, i)) {
      if (dpos) dpos[i] = T(0);
      if (dneg) dneg[i] = T(0);
      return 0.0;
    }
    const double z = double(neg[i]) - double(pos[i]);
    const double s = detail::loss_row_scale(weights, i, inv_weight_sum);
    const double g = s * detail::loss_sigmoid(z);
    if (dpos) dpos[i] = T(-g);
    if (dneg) dneg[i] = T(g);
    return s * softplus(z);
  }
};

template <class T>
struct EsmmRow {
  T* d_ctr;
  T* d_cvr;
  const T* ctr;
  const T* cvr;
  const T* labels;
  const std::uint8_t* mask;
  const T* weights;
  double inv_weight_sum;
  __device__ double operator()(index_t i) const {
    if (!detail::loss_row_on(mask, i)) {
      if (d_ctr) d_ctr[i] = T(0);
      if (d_cvr) d_cvr[i] = T(0);
      return 0.0;
    }
    const double a = double(ctr[i]), b = double(cvr[i]);
    const double wi = detail::loss_row_scale(weights, i, inv_weight_sum);
    const double sa = 1 / (1 + std::exp(-a)), sb = 1 / (1 + std::exp(-b));
    const double log_sa = -std::log1p(std::exp(-std::fabs(a))) - dmax(-a, 0.0);
    const double log_sb = -std::log1p(std::exp(-std::fabs(b))) - dmax(-b, 0.0);
    const double log_p = log_sa + log_sb;
    const double p = std::exp(log_p);
    const double log_1mp = std::log(-std::expm1(dmin(log_p, -1e-300)));
    const double yi = double(labels[i]);
    const double g = -yi + (1 - yi) * p / dmax(1 - p, 1e-300);
    if (d_cvr) d_cvr[i] = T(wi * g * (1 - sb));
    if (d_ctr) d_ctr[i] = T(wi * g * (1 - sa));
    return wi * -(yi * log_p + (1 - yi) * log_1mp);
  }
};

// ---- reduction kernels ----------------------------------------------------------

// partial[block] = sum of row(i) over the block's rows (a thread per row,
// grid-stride), each thread in row order, then the block's tree.
template <class Row>
__global__ void __launch_bounds__(kThreads) row_sum_kernel(Row row, index_t n, double* partial) {
  __shared__ double sh[kWarps + 1];
  double acc = 0;
  for (index_t i = index_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += index_t(gridDim.x) * kThreads)
    acc += row(i);
  acc = block_reduce(acc, sh, SumOp{});
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// *out = sum of partial[0, count), in a fixed order (one block).
template <class D>
__global__ void __launch_bounds__(kThreads) final_sum_kernel(const D* partial, unsigned count, D* out) {
  __shared__ double sh[kWarps + 1];
  double acc = 0;
  for (unsigned k = threadIdx.x; k < count; k += kThreads) acc += partial[k];
  acc = block_reduce(acc, sh, SumOp{});
  if (threadIdx.x == 0) *out = acc;
}

// Rows of softmax cross-entropy, a warp per row; partial[block] as above.
template <class T>
__global__ void __launch_bounds__(kThreads)
    softmax_ce_kernel(T* dlogits, const T* logits, const index_t* labels, const std::uint8_t* mask, const T* weights,
                      index_t n, index_t C, double inv_weight_sum, double* partial) {
  __shared__ double sh[kWarps];
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const index_t warps = index_t(gridDim.x) * kWarps;
  double acc = 0;  // lane 0: the terms of this warp's rows, in row order
  for (index_t i = index_t(blockIdx.x) * kWarps + wib; i < n; i += warps) {  // warp-uniform
    T* g = dlogits ? dlogits + i * C : nullptr;
    if (!detail::loss_row_on(mask, i)) {
      if (g)
        for (index_t c = lane; c < C; c += 32) g[c] = T(0);
      continue;
    }
    const T* x = logits + i * C;
    const index_t y = labels[i];
    double m = double(x[0]);
    for (index_t c = lane; c < C; c += 32) m = dmax(m, double(x[c]));
    m = __shfl_sync(0xffffffffu, warp_reduce(m, MaxOp{}), 0);
    double sum = 0;
    for (index_t c = lane; c < C; c += 32) sum += std::exp(double(x[c]) - m);
    sum = warp_reduce(sum, SumOp{});
    const double s = detail::loss_row_scale(weights, i, inv_weight_sum);
    if (g) {
      const double s_over_sum = s / sum;
      for (index_t c = lane; c < C; c += 32) {
        const double e = s_over_sum * std::exp(double(x[c]) - m);
        g[c] = c == y ? T(e - s) : T(e);
      }
    }
    if (lane == 0) acc += s * (std::log(sum) - (double(x[y]) - m));
  }
  if (lane == 0) sh[wib] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = sh[0];
    for (int k = 1; k < kWarps; ++k) t += sh[k];
    partial[blockIdx.x] = t;
  }
}

// Rows of the in-batch softmax over S (n,n), a block per row (grid-stride);
// row i is read before it is overwritten (the reductions sit in between).
template <class T>
__global__ void __launch_bounds__(kThreads)
    in_batch_softmax_kernel(T* S, const T* log_q_correction, const std::uint8_t* mask, const T* weights, index_t n,
                            double inv_weight_sum, bool want_grad, double* partial) {
  __shared__ double sh[kWarps + 1];
  double acc = 0;  // thread 0: the terms of this block's rows, in row order
  for (index_t i = blockIdx.x; i < n; i += gridDim.x) {  // block-uniform
    T* Si = S + i * n;
    if (!detail::loss_row_on(mask, i)) {
      if (want_grad)
        for (index_t j = threadIdx.x; j < n; j += kThreads) Si[j] = T(0);
      continue;
    }
    auto z = [&](index_t j) { return double(Si[j]) - (log_q_correction ? double(log_q_correction[j]) : 0.0); };
    const double zii = z(i);
    double m = zii;
    for (index_t j = threadIdx.x; j < n; j += kThreads)
      if (detail::loss_row_on(mask, j)) m = dmax(m, z(j));
    m = block_reduce(m, sh, MaxOp{});
    double sum = 0;
    for (index_t j = threadIdx.x; j < n; j += kThreads)
      if (detail::loss_row_on(mask, j)) sum += std::exp(z(j) - m);
    sum = block_reduce(sum, sh, SumOp{});
    const double s = detail::loss_row_scale(weights, i, inv_weight_sum);
    if (want_grad) {
      // dS_ij = s (softmax_ij - [i == j]), 0 in masked columns
      const double s_over_sum = s / sum;
      for (index_t j = threadIdx.x; j < n; j += kThreads) {
        if (j == i)
          Si[j] = T(s_over_sum * std::exp(zii - m) - s);
        else
          Si[j] = detail::loss_row_on(mask, j) ? T(s_over_sum * std::exp(z(j) - m)) : T(0);
      }
    }
    if (threadIdx.x == 0) acc += s * (std::log(sum) - (zii - m));
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// ---- output transforms -------------------------------------------------------------

template <class T>
__global__ void output_elementwise_kernel(T* out, index_t ld_out, index_t col, const T* in, index_t B, index_t w,
                                          bool sigmoid) {
  const index_t total = B * w;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += index_t(gridDim.x) * blockDim.x) {
    const index_t i = k / w, j = k - i * w;
    const T x = in[k];
    out[i * ld_out + col + j] = sigmoid ? detail::output_sigmoid(x) : x;
  }
}

// softmax_forward(reference, p, x, 1, w) of each row, a warp per row: the max
// in T, e = exp(x - max) in T, their sum in double, p = e * T(1 / sum).
template <class T>
__global__ void __launch_bounds__(kThreads)
    output_softmax_kernel(T* out, index_t ld_out, index_t col, const T* in, index_t B, index_t w) {
  const int lane = threadIdx.x & 31;
  const index_t warps = index_t(gridDim.x) * kWarps;
  for (index_t i = index_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); i < B; i += warps) {  // warp-uniform
    T* p = out + i * ld_out + col;
    const T* x = in + i * w;
    T mx = x[0];
    for (index_t j = lane; j < w; j += 32) mx = x[j] > mx ? x[j] : mx;
    for (int o = 16; o > 0; o >>= 1) {
      const T v = __shfl_xor_sync(0xffffffffu, mx, o);
      mx = v > mx ? v : mx;
    }
    mx = __shfl_sync(0xffffffffu, mx, 0);
    double sum = 0;
    for (index_t j = lane; j < w; j += 32) sum += T(std::exp(x[j] - mx));
    sum = warp_reduce(sum, SumOp{});
    const T inv = T(1.0 / sum);
    // x is read again rather than p: in may alias out
    for (index_t j = lane; j < w; j += 32) p[j] = T(std::exp(x[j] - mx)) * inv;
  }
}

template <class T>
__global__ void sigmoid_product_kernel(T* out, index_t ld_out, index_t col, const T* a, const T* b, index_t B) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < B; i += index_t(gridDim.x) * blockDim.x)
    out[i * ld_out + col] = detail::output_sigmoid(a[i]) * detail::output_sigmoid(b[i]);
}

// ---- host side -----------------------------------------------------------------------

// count + 1 doubles of the thread's device scratch: the partials, then the total.
inline double* partials(unsigned count) {
  return static_cast<double*>(cuda::CudaThread::current().device_scratch(sizeof(double) * (std::size_t(count) + 1)));
}

// Adds the count partials (launched after the rows' kernel on the same
// stream), copies the total back and returns it.
inline double finish_sum(cuda_raw_t dev, const char* op, double* partial, unsigned count, index_t n) {
  double* total = partial;
  if (count > 1) {
    total = partial + count;
    final_sum_kernel<double><<<1, kThreads, 0, dev.stream>>>(partial, count, total);
    cuda::check_launch(op, "final sum of ", count, " block partials; n = ", n);
  }
  void* host = cuda::CudaThread::current().host_scratch();
  cuda::check(cudaMemcpyAsync(host, total, sizeof(double), cudaMemcpyDeviceToHost, dev.stream), op,
              "copying the loss value to the host; n = ", n);
  cuda::check(cudaStreamSynchronize(dev.stream), op, "waiting for the loss value; n = ", n);
  return *static_cast<const double*>(host);
}

template <class Row>
inline double elementwise_loss(cuda_raw_t dev, const char* op, const Row& row, index_t n) {
  if (n <= 0) return 0.0;
  const unsigned G = cuda::grid_for(n, kThreads, kMaxBlocks);
  double* partial = partials(G);
  row_sum_kernel<Row><<<G, kThreads, 0, dev.stream>>>(row, n, partial);
  cuda::check_launch(op, "n = ", n);
  return finish_sum(dev, op, partial, G, n);
}

}  // namespace cuda_loss_impl

// ---- the kernels (signatures as the reference_t overloads in loss.hpp) ---------------

template <class T>
inline double bce_with_logits_loss(cuda_raw_t dev, detail::loss_nd<T>* dlogits, const T* logits, const T* labels,
                                   const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                   double inv_weight_sum) {
  return cuda_loss_impl::elementwise_loss(
      dev, "bce_with_logits_loss",
      cuda_loss_impl::BceRow<T>{dlogits, logits, labels, mask, weights, inv_weight_sum}, n);
}

template <class T>
inline double mse_loss(cuda_raw_t dev, detail::loss_nd<T>* dpred, const T* pred, const T* target,
                       const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return cuda_loss_impl::elementwise_loss(
      dev, "mse_loss",
      cuda_loss_impl::RegressionRow<T, false>{dpred, pred, target, mask, weights, inv_weight_sum, 0.0}, n);
}

template <class T>
inline double huber_loss(cuda_raw_t dev, detail::loss_nd<T>* dpred, const T* pred, const T* target,
                         const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum,
                         double delta) {
  return cuda_loss_impl::elementwise_loss(
      dev, "huber_loss",
      cuda_loss_impl::RegressionRow<T, true>{dpred, pred, target, mask, weights, inv_weight_sum, delta}, n);
}

template <class T>
inline double softmax_cross_entropy_loss(cuda_raw_t dev, detail::loss_nd<T>* dlogits, const T* logits,
                                         const index_t* labels, const std::uint8_t* mask,
                                         const detail::loss_nd<T>* weights, index_t n, index_t C,
                                         double inv_weight_sum) {
  using namespace cuda_loss_impl;
  const char* op = "softmax_cross_entropy_loss";
  if (n <= 0) return 0.0;
  const unsigned G = cuda::grid_for(n, kWarps, kMaxBlocks);
  double* partial = partials(G);
  softmax_ce_kernel<T><<<G, kThreads, 0, dev.stream>>>(dlogits, logits, labels, mask, weights, n, C, inv_weight_sum,
                                                       partial);
  cuda::check_launch(op, "n = ", n, ", C = ", C);
  return finish_sum(dev, op, partial, G, n);
}

template <class T>
inline double bpr_loss(cuda_raw_t dev, detail::loss_nd<T>* dpos, detail::loss_nd<T>* dneg, const T* pos, const T* neg,
                       const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return cuda_loss_impl::elementwise_loss(
      dev, "bpr_loss", cuda_loss_impl::BprRow<T>{dpos, dneg, pos, neg, mask, weights, inv_weight_sum}, n);
}

template <class T>
inline double in_batch_softmax_rows(cuda_raw_t dev, T* S, const detail::loss_nd<T>* log_q_correction,
                                    const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                    double inv_weight_sum, bool want_grad) {
  using namespace cuda_loss_impl;
  const char* op = "in_batch_softmax_rows";
  if (n <= 0) return 0.0;
  const unsigned G = cuda::grid_for(n, 1, kMaxBlocks);
  double* partial = partials(G);
  in_batch_softmax_kernel<T><<<G, kThreads, 0, dev.stream>>>(S, log_q_correction, mask, weights, n, inv_weight_sum,
                                                             want_grad, partial);
  cuda::check_launch(op, "S (", n, ",", n, "), want_grad = ", want_grad);
  return finish_sum(dev, op, partial, G, n);
}

template <class T>
inline double esmm_loss(cuda_raw_t dev, detail::loss_nd<T>* d_ctr, detail::loss_nd<T>* d_cvr, const T* ctr_logits,
                        const T* cvr_logits, const T* labels, const std::uint8_t* mask,
                        const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return cuda_loss_impl::elementwise_loss(
      dev, "esmm_loss",
      cuda_loss_impl::EsmmRow<T>{d_ctr, d_cvr, ctr_logits, cvr_logits, labels, mask, weights, inv_weight_sum}, n);
}

template <class T>
inline void output_transform(cuda_raw_t dev, T* out, index_t ld_out, index_t col, const T* in, index_t B, index_t w,
                             OutputKind kind) {
  using namespace cuda_loss_impl;
  if (B <= 0 || w <= 0) return;
  if (kind == OutputKind::Softmax) {
    output_softmax_kernel<T><<<cuda::grid_for(B, kWarps), kThreads, 0, dev.stream>>>(out, ld_out, col, in, B, w);
    cuda::check_launch("output_transform", "softmax of in (", B, ",", w, ") into out columns [", col, ", ", col + w,
                       ") of ld ", ld_out);
  } else {
    output_elementwise_kernel<T><<<cuda::grid_for(B * w), 256, 0, dev.stream>>>(out, ld_out, col, in, B, w,
                                                                               kind == OutputKind::Sigmoid);
    cuda::check_launch("output_transform", kind == OutputKind::Sigmoid ? "sigmoid" : "identity", " of in (", B, ",",
                       w, ") into out columns [", col, ", ", col + w, ") of ld ", ld_out);
  }
}

template <class T>
inline void sigmoid_product(cuda_raw_t dev, T* out, index_t ld_out, index_t col, const T* a, const T* b, index_t B) {
  if (B <= 0) return;
  cuda_loss_impl::sigmoid_product_kernel<T><<<cuda::grid_for(B), 256, 0, dev.stream>>>(out, ld_out, col, a, b, B);
  cuda::check_launch("sigmoid_product", "B = ", B, ", out column ", col, " of ld ", ld_out);
}

}  // namespace kernels

MTREC_CUDA_KERNEL(bce_with_logits_loss)
MTREC_CUDA_KERNEL(mse_loss)
MTREC_CUDA_KERNEL(huber_loss)
MTREC_CUDA_KERNEL(softmax_cross_entropy_loss)
MTREC_CUDA_KERNEL(bpr_loss)
MTREC_CUDA_KERNEL(in_batch_softmax_rows)
MTREC_CUDA_KERNEL(esmm_loss)
MTREC_CUDA_KERNEL(output_transform)
MTREC_CUDA_KERNEL(sigmoid_product)

}  // namespace mtrec
