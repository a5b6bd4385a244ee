// mtrec: the CUDA gate mix (MMoE/PLE) and column copies (the reference_t
// overloads are in kernels/mixture.hpp).
//
// The M expert pointers come in a HOST array. Up to kInlinePointers of them
// travel by value in the kernel's argument struct (no copy, no sync); more are
// copied into the thread's device scratch first (one small cudaMemcpyAsync
// from pageable memory, staged before it returns, so the caller may reuse its
// array at once).
//   gate_mix_forward   a thread per output element, experts added in order m = 0, 1, ...
//   gate_mix_backward  a warp per (row, expert): d_experts[m] row i += p * d_out row i
//                      (each element by one lane), d_probs = the row dot product in
//                      double (lanes in order, then a fixed butterfly); no atomics
//   copy_columns       a thread per element of the (rows, width) block
#pragma once

#include <cstdint>

#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/mixture.hpp"

namespace mtrec {
namespace kernels {
namespace cuda_mix_impl {

constexpr index_t kInlinePointers = 64;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// M expert pointers: by value (dev == nullptr) or in device memory.
template <class P>
struct PointerList {
  P const* dev;
  P inl[kInlinePointers];
  __device__ __forceinline__ P operator[](index_t m) const { return dev ? dev[m] : inl[m]; }
};

// The list for host[0, M); slot: device memory for M pointers, used when M > kInlinePointers.
template <class P>
inline PointerList<P> pointer_list(cuda_raw_t dev, const char* op, const char* what, P const* host, index_t M,
                                   void* slot) {
  PointerList<P> l;
  l.dev = nullptr;
  for (index_t m = 0; m < kInlinePointers; ++m) l.inl[m] = m < M ? host[m] : nullptr;
  if (M > kInlinePointers) {
    cuda::check(cudaMemcpyAsync(slot, host, sizeof(P) * std::size_t(M), cudaMemcpyHostToDevice, dev.stream), op,
                "copying ", M, " ", what, " pointers to the device");
    l.dev = static_cast<P const*>(slot);
  }
  return l;
}

template <class T>
__global__ void gate_mix_forward_kernel(T* out, PointerList<const T*> experts, const T* probs, index_t B, index_t M,
                                        index_t De) {
  const index_t total = B * De;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += index_t(gridDim.x) * blockDim.x) {
    const index_t i = k / De;
    const T* p = probs + i * M;
    T acc = T(0);
    for (index_t m = 0; m < M; ++m) acc += p[m] * experts[m][k];
    out[k] = acc;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    gate_mix_backward_kernel(PointerList<T*> d_experts, T* d_probs, const T* d_out, PointerList<const T*> experts,
                             const T* probs, index_t B, index_t M, index_t De) {
  const int lane = threadIdx.x & 31;
  const index_t total = B * M, warps = index_t(gridDim.x) * kWarps;
  for (index_t k = index_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); k < total; k += warps) {  // warp-uniform
    const index_t i = k / M, m = k - i * M;
    const T p = probs[k];
    T* de = d_experts[m] + i * De;
    const T* e = experts[m] + i * De;
    const T* d = d_out + i * De;
    double dot = 0;
    for (index_t c = lane; c < De; c += 32) {
      const T dv = d[c];
      de[c] += p * dv;
      dot += double(dv) * double(e[c]);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (lane == 0) d_probs[k] = T(dot);
  }
}

template <class T>
__global__ void copy_columns_kernel(T* dst, index_t ld_dst, index_t dst_col, const T* src, index_t ld_src,
                                    index_t src_col, index_t rows, index_t width) {
  const index_t total = rows * width;
  for (index_t k = index_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += index_t(gridDim.x) * blockDim.x) {
    const index_t r = k / width, c = k - r * width;
    dst[r * ld_dst + dst_col + c] = src[r * ld_src + src_col + c];
  }
}

}  // namespace cuda_mix_impl

// out (B,De) = sum_m probs[:, m] * experts[m], m in order (written)
template <class T>
inline void gate_mix_forward(cuda_raw_t dev, T* out, const T* const* experts, const T* probs, index_t B, index_t M,
                             index_t De) {
  using namespace cuda_mix_impl;
  const char* op = "gate_mix_forward";
  if (B <= 0 || De <= 0) return;
  void* slot = M > kInlinePointers ? cuda::CudaThread::current().device_scratch(sizeof(T*) * std::size_t(M)) : nullptr;
  const PointerList<const T*> ex = pointer_list<const T*>(dev, op, "expert", experts, M, slot);
  gate_mix_forward_kernel<T><<<cuda::grid_for(B * De), 256, 0, dev.stream>>>(out, ex, probs, B, M, De);
  cuda::check_launch(op, "B = ", B, ", M = ", M, ", De = ", De);
}

// d_experts[m] (B,De) += probs[:, m] * d_out;  d_probs (B,M) = <d_out_i, experts[m]_i> (written)
template <class T>
inline void gate_mix_backward(cuda_raw_t dev, T* const* d_experts, T* d_probs, const T* d_out, const T* const* experts,
                              const T* probs, index_t B, index_t M, index_t De) {
  using namespace cuda_mix_impl;
  const char* op = "gate_mix_backward";
  if (B <= 0 || M <= 0) return;  // De == 0 still writes d_probs = 0
  char* slot = M > kInlinePointers ? static_cast<char*>(cuda::CudaThread::current().device_scratch(
                                         2 * sizeof(T*) * std::size_t(M)))
                                   : nullptr;
  const PointerList<T*> dex = pointer_list<T*>(dev, op, "expert gradient", d_experts, M, slot);
  const PointerList<const T*> ex =
      pointer_list<const T*>(dev, op, "expert", experts, M, slot ? slot + sizeof(T*) * std::size_t(M) : nullptr);
  gate_mix_backward_kernel<T><<<cuda::grid_for(B * M, kWarps), kThreads, 0, dev.stream>>>(dex, d_probs, d_out, ex,
                                                                                         probs, B, M, De);
  cuda::check_launch(op, "B = ", B, ", M = ", M, ", De = ", De);
}

// dst[r, dst_col + c] = src[r, src_col + c] for r < rows, c < width
template <class T>
inline void copy_columns(cuda_raw_t dev, T* dst, index_t ld_dst, index_t dst_col, const T* src, index_t ld_src,
                         index_t src_col, index_t rows, index_t width) {
  if (rows <= 0 || width <= 0) return;
  cuda_mix_impl::copy_columns_kernel<T><<<cuda::grid_for(rows * width), 256, 0, dev.stream>>>(
      dst, ld_dst, dst_col, src, ld_src, src_col, rows, width);
  cuda::check_launch("copy_columns", rows, " rows of ", width, " columns: dst ld ", ld_dst, " col ", dst_col,
                     ", src ld ", ld_src, " col ", src_col);
}

}  // namespace kernels

MTREC_CUDA_KERNEL(gate_mix_forward)
MTREC_CUDA_KERNEL(gate_mix_backward)
MTREC_CUDA_KERNEL(copy_columns)

}  // namespace mtrec
