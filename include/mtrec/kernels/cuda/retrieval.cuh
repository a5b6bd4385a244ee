// mtrec: the CUDA exact top-K by inner product (kernels/retrieval.hpp).
//
// A warp per table row computes <q, row> (lanes over the columns, a fixed
// shuffle tree: deterministic) into the thread's device scratch; the N
// scores are then copied to the host, where topk_detail::select_topk picks
// the k best with the library's total order, and the k results are copied
// into rows/scores. The selection on the host is a first version: it moves
// 4 N bytes per query over PCIe and waits for the stream. A device-side
// selection (a per-block heap, as FAISS's block select) is the next step;
// the serving path this library ships runs on the CPU.
#pragma once

#include <vector>

#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/retrieval.hpp"

namespace mtrec {
namespace kernels {
namespace cuda_impl {
namespace topk {

template <class T>
__global__ void row_dots_kernel(T* __restrict__ out, const T* __restrict__ table, const T* __restrict__ q, index_t N,
                                index_t dim) {
  const int lane = int(threadIdx.x) & 31;
  const index_t warps = (index_t(gridDim.x) * blockDim.x) >> 5;
  for (index_t r = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < N; r += warps) {
    const T* row = table + r * dim;
    T s = T(0);
    for (index_t c = lane; c < dim; c += 32) s += q[c] * row[c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[r] = s;
  }
}

}  // namespace topk
}  // namespace cuda_impl

template <class T>
inline void topk_inner_product(cuda_raw_t dev, index_t* rows, T* scores, const T* table, index_t N, index_t dim,
                               const T* q, index_t k, const index_t* exclude, index_t n_exclude) {
  const char* op = "topk_inner_product";
  if (k <= 0) return;
  T* all = static_cast<T*>(cuda::CudaThread::current().device_scratch(sizeof(T) * std::size_t(N > 0 ? N : 1)));
  if (N > 0 && dim >= 0) {
    cuda_impl::topk::row_dots_kernel<T><<<cuda::grid_for(N * 32, 256), 256, 0, dev.stream>>>(all, table, q, N, dim);
    cuda::check_launch(op, "scores of ", N, " rows of dim ", dim);
  }
  std::vector<T> host(static_cast<std::size_t>(N));
  std::vector<index_t> ex(static_cast<std::size_t>(n_exclude)), out_rows(static_cast<std::size_t>(k));
  std::vector<T> out_scores(static_cast<std::size_t>(k));
  if (N > 0)
    cuda::check(cudaMemcpyAsync(host.data(), all, sizeof(T) * host.size(), cudaMemcpyDeviceToHost, dev.stream), op,
                "copying ", N, " scores to the host");
  if (n_exclude > 0)
    cuda::check(cudaMemcpyAsync(ex.data(), exclude, sizeof(index_t) * ex.size(), cudaMemcpyDefault, dev.stream), op,
                "copying ", n_exclude, " excluded rows to the host");
  cuda::check(cudaStreamSynchronize(dev.stream), op, "waiting for the scores");
  topk_detail::select_topk(out_rows.data(), out_scores.data(), host.data(), N, k, ex.data(), n_exclude);
  cuda::check(cudaMemcpyAsync(rows, out_rows.data(), sizeof(index_t) * out_rows.size(), cudaMemcpyDefault, dev.stream),
              op, "copying the ", k, " rows back");
  cuda::check(cudaMemcpyAsync(scores, out_scores.data(), sizeof(T) * out_scores.size(), cudaMemcpyDefault, dev.stream),
              op, "copying the ", k, " scores back");
  cuda::check(cudaStreamSynchronize(dev.stream), op, "waiting for the results");
}

}  // namespace kernels

MTREC_CUDA_KERNEL(topk_inner_product)

}  // namespace mtrec
