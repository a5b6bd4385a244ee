// mtrec: sequence kernels — masked pooling, packing, positional add, masked
// rows, strided batched GEMM and variable-length multi-head attention.
//
// Both backends live here: `reference_t` (plain loops, the ground truth) and
// `cpu_t` (xsimd + OpenMP), with the same names and arguments: outputs
// first, then inputs, then sizes and options.
//
// A batch holds B sequences; sequence b has lengths[b] valid positions at its
// front. Two layouts of rows of width D:
//   padded  (B,T,D): sequence b owns rows [b*T, (b+1)*T); rows t >= lengths[b]
//           are padding;
//   packed  (n,D), n = sum(lengths): only the valid rows, sequence b at rows
//           [starts[b], starts[b] + lengths[b]).
// Kernels that take `starts` work on either (padded: starts[b] = b*T, see
// padded_starts). Work is split over sequences (or sequence x head); every
// output element is computed by one thread in a fixed order, so results do
// not depend on the thread count. Nothing here allocates.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/reference.hpp"

namespace mtrec {
namespace kernels {

namespace detail {
template <class T>
inline void seq_zero(T* p, index_t n) {
  if (n > 0) std::memset(static_cast<void*>(p), 0, sizeof(T) * static_cast<std::size_t>(n));
}
template <class T>
inline void seq_copy(T* dst, const T* src, index_t n) {
  if (n > 0 && dst != src) std::memcpy(static_cast<void*>(dst), src, sizeof(T) * static_cast<std::size_t>(n));
}
// Rough cost, in flops, of copying one element: parallel_for forks a copy
// loop only above kForkFlops / 8 elements (~2.5M).
constexpr double kSeqCopyCost = 8.0;
}  // namespace detail

// ---- sequence offsets --------------------------------------------------------

// starts (B) = exclusive prefix sum of lengths (B): the packed layout.
// Returns n = sum(lengths), the packed row count.
inline index_t packed_starts(reference_t, index_t* starts, const index_t* lengths, index_t B) {
  index_t n = 0;
  for (index_t b = 0; b < B; ++b) {
    starts[b] = n;
    n += lengths[b];
  }
  return n;
}
inline index_t packed_starts(cpu_t, index_t* starts, const index_t* lengths, index_t B) {
  return packed_starts(reference, starts, lengths, B);  // a scan over B integers
}

// starts (B) = b * T_len: the padded layout.
inline void padded_starts(reference_t, index_t* starts, index_t B, index_t T_len) {
  for (index_t b = 0; b < B; ++b) starts[b] = b * T_len;
}
inline void padded_starts(cpu_t, index_t* starts, index_t B, index_t T_len) { padded_starts(reference, starts, B, T_len); }

// ---- masked pooling ----------------------------------------------------------

// y (B,D) = mean of x (B,T,D) over t < lengths[b], or x[b,0] when `first`;
// y[b] = 0 when lengths[b] == 0. Sums in double.
template <class T>
inline void sequence_pool_forward(reference_t, T* y, const T* x, const index_t* lengths, index_t B, index_t T_len,
                                  index_t D, bool first) {
  for (index_t b = 0; b < B; ++b) {
    const index_t len = lengths[b];
    const index_t valid = len == 0 ? 0 : first ? 1 : len;
    for (index_t c = 0; c < D; ++c) {
      double acc = 0;
      for (index_t t = 0; t < valid; ++t) acc += double(x[(b * T_len + t) * D + c]);
      y[b * D + c] = valid == 0 ? T(0) : T(acc / double(valid));
    }
  }
}
// dx (B,T,D) = dy (B,D) / lengths[b] at t < lengths[b] (first: dy at t = 0),
// 0 elsewhere; every element of dx is written.
template <class T>
inline void sequence_pool_backward(reference_t, T* dx, const T* dy, const index_t* lengths, index_t B, index_t T_len,
                                   index_t D, bool first) {
  for (index_t b = 0; b < B; ++b) {
    const index_t len = lengths[b];
    const index_t valid = len == 0 ? 0 : first ? 1 : len;
    for (index_t t = 0; t < T_len; ++t)
      for (index_t c = 0; c < D; ++c)
        dx[(b * T_len + t) * D + c] = t < valid ? T(double(dy[b * D + c]) / double(valid)) : T(0);
  }
}

// Sums over t in order, in vector lanes (4 vectors of columns per pass over
// the rows), then one multiply by 1/len.
template <class T>
inline void sequence_pool_forward(cpu_t, T* y, const T* x, const index_t* lengths, index_t B, index_t T_len, index_t D,
                                  bool first) {
  using V = simd::batch<T>;
  constexpr index_t W = V::size;
  constexpr index_t kTile = 4 * W;
  parallel_for(B, double(T_len) * double(D), [&](index_t b) {
    T* yb = y + b * D;
    const T* xb = x + b * T_len * D;
    const index_t len = lengths[b];
    if (len == 0) return detail::seq_zero(yb, D);
    if (first) return detail::seq_copy(yb, xb, D);
    const V inv(T(1) / T(len));
    for (index_t c0 = 0; c0 < D; c0 += kTile) {
      const index_t tw = std::min(kTile, D - c0);
      if (tw == kTile) {
        V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
        for (index_t t = 0; t < len; ++t) {
          const T* r = xb + t * D + c0;
          a0 += V::load_unaligned(r);
          a1 += V::load_unaligned(r + W);
          a2 += V::load_unaligned(r + 2 * W);
          a3 += V::load_unaligned(r + 3 * W);
        }
        (a0 * inv).store_unaligned(yb + c0);
        (a1 * inv).store_unaligned(yb + c0 + W);
        (a2 * inv).store_unaligned(yb + c0 + 2 * W);
        (a3 * inv).store_unaligned(yb + c0 + 3 * W);
        continue;
      }
      for (index_t c = c0; c < c0 + tw; c += W) {
        const index_t r = std::min(W, c0 + tw - c);
        V acc(T(0));
        for (index_t t = 0; t < len; ++t)
          acc += r == W ? V::load_unaligned(xb + t * D + c) : simd::load_partial(xb + t * D + c, r);
        if (r == W)
          (acc * inv).store_unaligned(yb + c);
        else
          simd::store_partial(yb + c, acc * inv, r);
      }
    }
  });
}

template <class T>
inline void sequence_pool_backward(cpu_t, T* dx, const T* dy, const index_t* lengths, index_t B, index_t T_len,
                                   index_t D, bool first) {
  using V = simd::batch<T>;
  constexpr index_t W = V::size;
  parallel_for(B, double(T_len) * double(D), [&](index_t b) {
    T* xb = dx + b * T_len * D;
    const T* g = dy + b * D;
    const index_t len = lengths[b];
    const index_t valid = len == 0 ? 0 : first ? 1 : len;
    if (valid > 0) {
      const V s(first ? T(1) : T(1) / T(len));
      for (index_t t = 0; t < valid; ++t) {
        T* row = xb + t * D;
        index_t c = 0;
        for (; c + W <= D; c += W) (V::load_unaligned(g + c) * s).store_unaligned(row + c);
        if (c < D) simd::store_partial(row + c, simd::load_partial(g + c, D - c) * s, D - c);
      }
    }
    detail::seq_zero(xb + valid * D, (T_len - valid) * D);
  });
}

// ---- packing -----------------------------------------------------------------

// packed (n,D) <- rows t < lengths[b] of padded (B,T,D), sequence b to row starts[b]
template <class T>
inline void pack_sequences(reference_t, T* packed, const T* padded, const index_t* lengths, const index_t* starts,
                           index_t B, index_t T_len, index_t D) {
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < lengths[b] * D; ++i) packed[starts[b] * D + i] = padded[b * T_len * D + i];
}
// padded (B,T,D) <- packed (n,D); rows t >= lengths[b] are written as 0
template <class T>
inline void unpack_sequences(reference_t, T* padded, const T* packed, const index_t* lengths, const index_t* starts,
                             index_t B, index_t T_len, index_t D) {
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < T_len * D; ++i)
      padded[b * T_len * D + i] = i < lengths[b] * D ? packed[starts[b] * D + i] : T(0);
}

// Sequences are copied in parallel when the batch is big enough (pure
// copies: no result depends on it).
template <class T>
inline void pack_sequences(cpu_t, T* packed, const T* padded, const index_t* lengths, const index_t* starts, index_t B,
                           index_t T_len, index_t D) {
  parallel_for(B, detail::kSeqCopyCost * double(T_len * D), [&](index_t b) {
    detail::seq_copy(packed + starts[b] * D, padded + b * T_len * D, lengths[b] * D);
  });
}
template <class T>
inline void unpack_sequences(cpu_t, T* padded, const T* packed, const index_t* lengths, const index_t* starts,
                             index_t B, index_t T_len, index_t D) {
  parallel_for(B, detail::kSeqCopyCost * double(T_len * D), [&](index_t b) {
    T* row = padded + b * T_len * D;
    detail::seq_copy(row, packed + starts[b] * D, lengths[b] * D);
    detail::seq_zero(row + lengths[b] * D, (T_len - lengths[b]) * D);
  });
}

// ---- padded rows ---------------------------------------------------------------

// y (B,T,C) = x at rows t < lengths[b], 0 at the padded rows. y may be x: then
// only the padded rows are written.
template <class T>
inline void mask_padded_rows(reference_t, T* y, const T* x, const index_t* lengths, index_t B, index_t T_len,
                             index_t C) {
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < T_len * C; ++i) {
      const index_t k = b * T_len * C + i;
      y[k] = i < lengths[b] * C ? x[k] : T(0);
    }
}
template <class T>
inline void mask_padded_rows(cpu_t, T* y, const T* x, const index_t* lengths, index_t B, index_t T_len, index_t C) {
  parallel_for(B, detail::kSeqCopyCost * double(T_len * C), [&](index_t b) {
    const index_t base = b * T_len * C, len = lengths[b];
    detail::seq_copy(y + base, x + base, len * C);
    detail::seq_zero(y + base + len * C, (T_len - len) * C);
  });
}

// True when every value in the padded rows of x (B,T,C) is zero (+0 or -0;
// NaN is not). Reads the padded rows only.
template <class T>
inline bool padded_rows_are_zero(reference_t, const T* x, const index_t* lengths, index_t B, index_t T_len,
                                 index_t C) {
  for (index_t b = 0; b < B; ++b)
    for (index_t i = lengths[b] * C; i < T_len * C; ++i)
      if (!(x[b * T_len * C + i] == T(0))) return false;
  return true;
}
// One sequence at a time, stopping at the first that is not zero (a branch-free
// loop over each sequence's padded block, which the compiler vectorises).
template <class T>
inline bool padded_rows_are_zero(cpu_t, const T* x, const index_t* lengths, index_t B, index_t T_len, index_t C) {
  for (index_t b = 0; b < B; ++b) {
    const T* p = x + (b * T_len + lengths[b]) * C;
    const index_t n = (T_len - lengths[b]) * C;
    bool zero = true;
    for (index_t i = 0; i < n; ++i) zero &= p[i] == T(0);
    if (!zero) return false;
  }
  return true;
}

// ---- positional add ------------------------------------------------------------

// y (B,T,D) = x (B,T,D) + pos (T,D) broadcast over b; y may alias x
template <class T>
inline void positional_add(reference_t, T* y, const T* x, const T* pos, index_t B, index_t T_len, index_t D) {
  const index_t row = T_len * D;
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < row; ++i) y[b * row + i] = x[b * row + i] + pos[i];
}
// dx (B,T,D) = dy (skipped when dx is null or is dy); dpos (T,D) += sum over b of dy
template <class T>
inline void positional_add_backward(reference_t, T* dx, T* dpos, const T* dy, index_t B, index_t T_len, index_t D) {
  if (dx && dx != dy)
    for (index_t i = 0; i < B * T_len * D; ++i) dx[i] = dy[i];
  column_sum_add(reference, dpos, dy, B, T_len * D);
}

template <class T>
inline void positional_add(cpu_t, T* y, const T* x, const T* pos, index_t B, index_t T_len, index_t D) {
  const index_t row = T_len * D;
  parallel_for(B, double(row), [&](index_t b) { residual_add(cpu, y + b * row, x + b * row, pos, row); });
}
// (T*D) columns of dy summed over its B rows, in order (column_sum_add).
template <class T>
inline void positional_add_backward(cpu_t, T* dx, T* dpos, const T* dy, index_t B, index_t T_len, index_t D) {
  const index_t n = B * T_len * D;
  if (dx && dx != dy)
    simd::chunks(n, n, simd::kChunk, [&](index_t b, index_t e) { detail::seq_copy(dx + b, dy + b, e - b); });
  column_sum_add(cpu, dpos, dy, B, T_len * D);
}

// ---- strided batched GEMM ------------------------------------------------------

// For i in [0, batch):
//   C_i (M,N) = alpha * op(A_i) * op(B_i) + beta * C_i,
// with A_i = A + i * strideA (leading dimension lda), likewise B_i and C_i:
// cublasGemmStridedBatched, row-major. The C_i must not overlap.
template <class T>
inline void gemm_strided_batched(reference_t, Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A,
                                 index_t lda, index_t strideA, const T* B, index_t ldb, index_t strideB, T beta, T* C,
                                 index_t ldc, index_t strideC, index_t batch) {
  for (index_t i = 0; i < batch; ++i)
    gemm(reference, ta, tb, M, N, K, alpha, A + i * strideA, lda, B + i * strideB, ldb, beta, C + i * strideC, ldc);
}

namespace detail {
// gemm(cpu, ...) on the calling thread: the same kernels on the same blocks
// (the packed GEMM on the whole product, Eigen on gemm_block_extent blocks),
// so the same bits as gemm(cpu, ...) at any thread count.
template <class T>
inline void gemm_one_thread(Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A, index_t lda,
                            const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  if (M <= 0 || N <= 0) return;
  constexpr index_t W = simd::batch<T>::size;
  if (M > 1 && 2 * N >= W) return gemm_detail::gemm_block<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const bool split_rows = M >= N;
  const index_t extent = split_rows ? M : N;
  const index_t block = gemm_block_extent(extent, 2.0 * double(M) * double(N) * double(K));
  for (index_t b = 0; b < extent; b += block) {
    const index_t e = std::min(extent, b + block);
    const index_t m = split_rows ? e - b : M, n = split_rows ? N : e - b;
    const T* a = !split_rows ? A : ta == Trans::N ? A + b * lda : A + b;
    const T* bb = split_rows ? B : tb == Trans::N ? B + b : B + b * ldb;
    T* c = split_rows ? C + b * ldc : C + b;
    gemm_block<T>(ta, tb, m, n, K, alpha, a, lda, bb, ldb, beta, c, ldc);
  }
}
}  // namespace detail

// The batch items run in parallel (when their total work is worth a fork),
// each on one thread; a single item is one gemm(cpu, ...), split over threads.
// Either way each C element comes from the same kernel: bitwise identical
// results at every thread count.
template <class T>
inline void gemm_strided_batched(cpu_t, Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A,
                                 index_t lda, index_t strideA, const T* B, index_t ldb, index_t strideB, T beta, T* C,
                                 index_t ldc, index_t strideC, index_t batch) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  if (batch == 1) return gemm(cpu, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  parallel_for(batch, 2.0 * double(M) * double(N) * double(K), [&](index_t i) {
    detail::gemm_one_thread(ta, tb, M, N, K, alpha, A + i * strideA, lda, B + i * strideB, ldb, beta, C + i * strideC,
                            ldc);
  });
}

// ---- multi-head attention over variable-length sequences ----------------------
//
// qkv (n,3D) holds the projected queries, keys and values of every row
// (columns [0,D), [D,2D), [2D,3D)); head h of each uses columns
// [h*dh, (h+1)*dh), D = H*dh. Sequence b (rows from starts[b], lengths[b] = L
// valid) attends over its own L rows only. probs (B,H,T*T): head (b,h) keeps
// its (L,L) softmax compactly at offset (b*H + h)*T*T. `padded`: sequence b
// owns T rows from starts[b] (the padded layout) and the rows past L of the
// outputs are written as 0; otherwise (packed) it owns its L rows only.

// out (n,D): per head, out = softmax(scale * Q K^T) V; probs saved.
template <class T>
inline void attention_forward(reference_t, T* out, T* probs, const T* qkv, const index_t* lengths,
                              const index_t* starts, index_t B, index_t H, index_t T_len, index_t dh, T scale,
                              bool padded) {
  const index_t D = H * dh, ld = 3 * D, TT = T_len * T_len;
  for (index_t b = 0; b < B; ++b) {
    const index_t L = lengths[b], s0 = starts[b];
    if (padded) detail::seq_zero(out + (s0 + L) * D, (T_len - L) * D);
    if (L == 0) continue;
    const T* Q = qkv + s0 * ld;  // head h: + h*dh; K and V follow at +D, +2D
    T* P = probs + b * H * TT;   // head h: + h*TT
    gemm_strided_batched(reference, Trans::N, Trans::T, L, L, dh, scale, Q, ld, dh, Q + D, ld, dh, T(0), P, L, TT, H);
    for (index_t h = 0; h < H; ++h) softmax_forward(reference, P + h * TT, P + h * TT, L, L);
    gemm_strided_batched(reference, Trans::N, Trans::N, L, dh, L, T(1), P, L, TT, Q + 2 * D, ld, dh, T(0),
                         out + s0 * D, D, dh, H);
  }
}

// d_qkv (n,3D) written from d_out (n,D); d_scores (B,H,T*T) is workspace.
template <class T>
inline void attention_backward(reference_t, T* d_qkv, T* d_scores, const T* d_out, const T* qkv, const T* probs,
                               const index_t* lengths, const index_t* starts, index_t B, index_t H, index_t T_len,
                               index_t dh, T scale, bool padded) {
  const index_t D = H * dh, ld = 3 * D, TT = T_len * T_len;
  for (index_t b = 0; b < B; ++b) {
    const index_t L = lengths[b], s0 = starts[b];
    if (padded) detail::seq_zero(d_qkv + (s0 + L) * ld, (T_len - L) * ld);
    if (L == 0) continue;
    const T* Q = qkv + s0 * ld;
    const T *K = Q + D, *V = Q + 2 * D;
    T* dQ = d_qkv + s0 * ld;
    T *dK = dQ + D, *dV = dQ + 2 * D;
    const T* dO = d_out + s0 * D;
    const T* P = probs + b * H * TT;
    T* dS = d_scores + b * H * TT;
    gemm_strided_batched(reference, Trans::N, Trans::T, L, L, dh, T(1), dO, D, dh, V, ld, dh, T(0), dS, L, TT, H);
    for (index_t h = 0; h < H; ++h) softmax_backward(reference, dS + h * TT, dS + h * TT, P + h * TT, L, L);
    gemm_strided_batched(reference, Trans::N, Trans::N, L, dh, L, scale, dS, L, TT, K, ld, dh, T(0), dQ, ld, dh, H);
    gemm_strided_batched(reference, Trans::T, Trans::N, L, dh, L, scale, dS, L, TT, Q, ld, dh, T(0), dK, ld, dh, H);
    gemm_strided_batched(reference, Trans::T, Trans::N, L, dh, L, T(1), P, L, TT, dO, D, dh, T(0), dV, ld, dh, H);
  }
}

// One task per (sequence, head), each on one thread: the score GEMM, the
// row softmaxes and the value GEMM of that head.
template <class T>
inline void attention_forward(cpu_t, T* out, T* probs, const T* qkv, const index_t* lengths, const index_t* starts,
                              index_t B, index_t H, index_t T_len, index_t dh, T scale, bool padded) {
  const index_t D = H * dh, ld = 3 * D, TT = T_len * T_len;
  parallel_for(B * H, double(T_len) * double(T_len) * double(dh) * 4.0, [&](index_t bh) {
    const index_t b = bh / H, h = bh % H, L = lengths[b], s0 = starts[b];
    // The padded rows of a sequence: one block, written by its first head.
    if (padded && h == 0) detail::seq_zero(out + (s0 + L) * D, (T_len - L) * D);
    if (L == 0) return;
    const T* Q = qkv + s0 * ld + h * dh;  // (L,dh), row stride 3D
    const T *K = Q + D, *V = Q + 2 * D;
    T* P = probs + bh * TT;  // (L,L)
    detail::gemm_one_thread(Trans::N, Trans::T, L, L, dh, scale, Q, ld, K, ld, T(0), P, L);  // scores
    for (index_t r = 0; r < L; ++r) softmax_row(P + r * L, P + r * L, L);
    detail::gemm_one_thread(Trans::N, Trans::N, L, dh, L, T(1), P, L, V, ld, T(0), out + s0 * D + h * dh, D);
  });
}

template <class T>
inline void attention_backward(cpu_t, T* d_qkv, T* d_scores, const T* d_out, const T* qkv, const T* probs,
                               const index_t* lengths, const index_t* starts, index_t B, index_t H, index_t T_len,
                               index_t dh, T scale, bool padded) {
  const index_t D = H * dh, ld = 3 * D, TT = T_len * T_len;
  parallel_for(B * H, double(T_len) * double(T_len) * double(dh) * 8.0, [&](index_t bh) {
    const index_t b = bh / H, h = bh % H, L = lengths[b], s0 = starts[b];
    if (padded && h == 0) detail::seq_zero(d_qkv + (s0 + L) * ld, (T_len - L) * ld);
    if (L == 0) return;
    T* dQ = d_qkv + s0 * ld + h * dh;
    T *dK = dQ + D, *dV = dQ + 2 * D;
    const T* Q = qkv + s0 * ld + h * dh;
    const T *K = Q + D, *V = Q + 2 * D;
    const T* dO = d_out + s0 * D + h * dh;  // (L,dh), row stride D
    const T* P = probs + bh * TT;
    T* dS = d_scores + bh * TT;
    detail::gemm_one_thread(Trans::N, Trans::T, L, L, dh, T(1), dO, D, V, ld, T(0), dS, L);  // dP = dO V^T
    softmax_backward(cpu, dS, dS, P, L, L);                                                   // dS
    detail::gemm_one_thread(Trans::N, Trans::N, L, dh, L, scale, dS, L, K, ld, T(0), dQ, ld);  // dQ = s dS K
    detail::gemm_one_thread(Trans::T, Trans::N, L, dh, L, scale, dS, L, Q, ld, T(0), dK, ld);  // dK = s dS^T Q
    detail::gemm_one_thread(Trans::T, Trans::N, L, dh, L, T(1), P, L, dO, D, T(0), dV, ld);    // dV = P^T dO
  });
}

}  // namespace kernels
}  // namespace mtrec
