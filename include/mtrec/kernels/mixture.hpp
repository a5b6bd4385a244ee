// mtrec: kernels of the multi-task trunk — the MMoE/PLE gate mix and the
// column copies that assemble the feature matrix — in both backends.
//
// The gate of task k mixes M expert outputs E_m (B,De) with its softmax
// probabilities P (B,M):  out_i = sum_m P_im E_m,i.  Expert outputs live in
// separate buffers, so the kernels take an array of M pointers (a host array
// of device pointers, as cuBLAS's batched calls do).
#pragma once

#include <cstring>

#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"

namespace mtrec {
namespace kernels {

// ---- reference ----------------------------------------------------------------

// out (B,De) = sum_m probs[:, m] * experts[m] (B,De), m in order
template <class T>
inline void gate_mix_forward(reference_t, T* out, const T* const* experts, const T* probs, index_t B, index_t M,
                             index_t De) {
  for (index_t i = 0; i < B; ++i)
    for (index_t c = 0; c < De; ++c) {
      T acc = T(0);
      for (index_t m = 0; m < M; ++m) acc += probs[i * M + m] * experts[m][i * De + c];
      out[i * De + c] = acc;
    }
}

// d_experts[m] (B,De) += probs[:, m] * d_out;  d_probs (B,M) = <d_out_i, experts[m]_i>  (written)
template <class T>
inline void gate_mix_backward(reference_t, T* const* d_experts, T* d_probs, const T* d_out, const T* const* experts,
                              const T* probs, index_t B, index_t M, index_t De) {
  for (index_t i = 0; i < B; ++i)
    for (index_t m = 0; m < M; ++m) {
      const T p = probs[i * M + m];
      double dot = 0;
      for (index_t c = 0; c < De; ++c) {
        d_experts[m][i * De + c] += p * d_out[i * De + c];
        dot += double(d_out[i * De + c]) * double(experts[m][i * De + c]);
      }
      d_probs[i * M + m] = T(dot);
    }
}

// dst[r, dst_col + c] = src[r, src_col + c] for r < rows, c < width; row
// strides ld_dst and ld_src (in elements). Puts a field's block into the
// feature matrix and takes its gradient back out.
template <class T>
inline void copy_columns(reference_t, T* dst, index_t ld_dst, index_t dst_col, const T* src, index_t ld_src,
                         index_t src_col, index_t rows, index_t width) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < width; ++c) dst[r * ld_dst + dst_col + c] = src[r * ld_src + src_col + c];
}

// ---- cpu ------------------------------------------------------------------------

// Rows in parallel; within a row the same additions in the same order as the
// reference (m = 0, 1, ...), vectorised over the columns.
template <class T>
inline void gate_mix_forward(cpu_t, T* out, const T* const* experts, const T* probs, index_t B, index_t M,
                             index_t De) {
  using V = simd::batch<T>;
  constexpr index_t W = V::size;
  parallel_for(B, double(M * De), [&](index_t i) {
    T* o = out + i * De;
    const T* p = probs + i * M;
    index_t c = 0;
    for (; c + W <= De; c += W) {
      V acc(T(0));
      for (index_t m = 0; m < M; ++m) acc = acc + V(p[m]) * V::load_unaligned(experts[m] + i * De + c);
      acc.store_unaligned(o + c);
    }
    for (; c < De; ++c) {
      T acc = T(0);
      for (index_t m = 0; m < M; ++m) acc += p[m] * experts[m][i * De + c];
      o[c] = acc;
    }
  });
}

template <class T>
inline void gate_mix_backward(cpu_t, T* const* d_experts, T* d_probs, const T* d_out, const T* const* experts,
                              const T* probs, index_t B, index_t M, index_t De) {
  using V = simd::batch<T>;
  constexpr index_t W = V::size;
  parallel_for(B, double(2 * M * De), [&](index_t i) {
    const T* d = d_out + i * De;
    for (index_t m = 0; m < M; ++m) {
      const T p = probs[i * M + m];
      T* de = d_experts[m] + i * De;
      const T* e = experts[m] + i * De;
      const V vp(p);
      V vdot(T(0));
      index_t c = 0;
      for (; c + W <= De; c += W) {
        const V dv = V::load_unaligned(d + c);
        (V::load_unaligned(de + c) + vp * dv).store_unaligned(de + c);
        vdot = vdot + dv * V::load_unaligned(e + c);
      }
      T dot = xsimd::hadd(vdot);
      for (; c < De; ++c) {
        de[c] += p * d[c];
        dot += d[c] * e[c];
      }
      d_probs[i * M + m] = dot;
    }
  });
}

template <class T>
inline void copy_columns(cpu_t, T* dst, index_t ld_dst, index_t dst_col, const T* src, index_t ld_src, index_t src_col,
                         index_t rows, index_t width) {
  if (width <= 0) return;
  parallel_chunks(
      rows, 256,
      [&](index_t b, index_t e) {
        for (index_t r = b; r < e; ++r)
          std::memcpy(dst + r * ld_dst + dst_col, src + r * ld_src + src_col, sizeof(T) * std::size_t(width));
      },
      simd::worth_forking(rows * width));
}

}  // namespace kernels
}  // namespace mtrec
