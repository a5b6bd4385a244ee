// mtrec: the CPU GEMM — packed panels and an xsimd register-tile kernel.
//
// C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C, all row-major.
//
// Why our own: recommender products are short and wide (25..2048 rows, 64..512
// columns, K of 64..352), where Eigen's general product spends much of its
// time packing and zeroing, and its register tile reaches ~60% of the FMA
// peak on large squares. This is the usual three-level scheme:
//
//   for each K block of kKc
//     pack op(B) in column panels of NR = 2 vectors, k-major: bp[k*NR + j]
//     (the last panel zero-padded)
//     for each row block of kMc rows
//       pack op(A) in row panels of MR, k-major: ap[k*MR + r]   (L2;
//       op(A) = A^T is that layout already and is read in place)
//       for each column panel (L1), for each row panel:
//         an MR x NR tile of accumulators in registers,
//         one broadcast of A and NR/W loads of B per k, then the epilogue
//         C = alpha*acc + beta*C (beta only on the first K block, then +=).
//
// Determinism: every C element is the sum over k in increasing order, split
// at K-block bounds that depend on K only, with the same vector lane math
// wherever the element sits in a tile. So the row/column split across
// threads may depend on the thread count and results stay bitwise equal.
#pragma once

#include <algorithm>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <xsimd/xsimd.hpp>

#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/device.hpp"

namespace mtrec {
namespace kernels {
namespace gemm_detail {

template <class T>
using vec = xsimd::batch<T>;

// Rows of the register tile: 12 x 2 vectors = 24 accumulators with 32 vector
// registers (AVX-512); 6 x 2 = 12 with 16 (AVX2 and narrower).
constexpr index_t kMr = sizeof(vec<float>) >= 64 ? 12 : 6;
constexpr index_t kKc = 256;       // K block: a packed B panel (kKc x 2 vectors) is 32 KB, in L1
constexpr index_t kMc = 16 * kMr;  // row block: its packed A (kMc x kKc) is <= 192 KB, in L2

template <class T>
struct Workspace {
  Tensor<T> a;  // packed op(A) block: kMc x kKc
  Tensor<T> b;  // packed op(B) K block: kKc x N rounded up to NR
};

// One per thread; grows to the largest block seen, then never allocates again.
template <class T>
inline Workspace<T>& workspace() {
  thread_local Workspace<T> ws;
  return ws;
}

// dst[k * ldd + r] = src[r * lds + k] for r < rows, k < cols: the transposing
// copy both packs need when K runs along the stored rows.
template <class T>
inline void transpose_copy(T* dst, index_t ldd, const T* src, index_t lds, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t k = 0; k < cols; ++k) dst[k * ldd + r] = src[r * lds + k];
}

#if defined(__AVX512F__)
// Same for float with AVX-512: 16 x 16 blocks transposed in registers (four
// rounds of shuffles), ~10x faster than the scalar loop; edges go scalar.
inline void transpose_16x16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  // u[4q + c] holds, in 128-bit lane L, element c of rows 4q..4q+3 for columns 4L..4L+3
  for (int h = 0; h < 2; ++h)
    for (int c = 0; c < 4; ++c) {
      t[8 * h + c] = _mm512_shuffle_f32x4(u[8 * h + c], u[8 * h + 4 + c], 0x88);
      t[8 * h + 4 + c] = _mm512_shuffle_f32x4(u[8 * h + c], u[8 * h + 4 + c], 0xDD);
    }
  for (int c = 0; c < 8; ++c) {
    r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xDD);
  }
}

inline void transpose_copy(float* dst, index_t ldd, const float* src, index_t lds, index_t rows, index_t cols) {
  for (index_t r0 = 0; r0 < rows; r0 += 16) {
    const index_t nr = std::min<index_t>(16, rows - r0);
    const __mmask16 lanes = static_cast<__mmask16>((1u << nr) - 1u);
    index_t k0 = 0;
    for (; k0 + 16 <= cols; k0 += 16) {
      __m512 v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = i < nr ? _mm512_loadu_ps(src + (r0 + i) * lds + k0) : _mm512_setzero_ps();
      transpose_16x16(v);
      for (int k = 0; k < 16; ++k) _mm512_mask_storeu_ps(dst + (k0 + k) * ldd + r0, lanes, v[k]);
    }
    if (k0 < cols) transpose_copy<float>(dst + k0 * ldd + r0, ldd, src + r0 * lds + k0, lds, nr, cols - k0);
  }
}
#endif

// ap (kc, mr) k-major  <-  A rows [i0, i0+mr), columns [k0, k0+kc) (op(A) = A;
// for op(A) = A^T the stored rows are the panel already and are read in place)
template <class T>
inline void pack_a(T* ap, const T* A, index_t lda, index_t i0, index_t mr, index_t k0, index_t kc) {
  transpose_copy(ap, mr, A + i0 * lda + k0, lda, mr, kc);
}

// bp (kc, nrp) k-major  <-  op(B) rows [k0, k0+kc), columns [j0, j0+nr); columns nr..nrp zero
template <class T>
inline void pack_b(T* bp, index_t nrp, Trans tb, const T* B, index_t ldb, index_t j0, index_t nr, index_t k0,
                   index_t kc) {
  if (tb == Trans::N) {
    constexpr index_t W = vec<T>::size;
    for (index_t k = 0; k < kc; ++k) {
      const T* src = B + (k0 + k) * ldb + j0;
      T* dst = bp + k * nrp;
      if (nr == nrp) {  // whole vectors: bp is aligned, B rows need not be
        for (index_t j = 0; j < nrp; j += W) vec<T>::load_unaligned(src + j).store_aligned(dst + j);
      } else {
        for (index_t j = 0; j < nr; ++j) dst[j] = src[j];
        for (index_t j = nr; j < nrp; ++j) dst[j] = T(0);
      }
    }
  } else {
    if (nr < nrp)
      for (index_t k = 0; k < kc; ++k)
        for (index_t j = nr; j < nrp; ++j) bp[k * nrp + j] = T(0);
    transpose_copy(bp, nrp, B + j0 * ldb + k0, ldb, nr, kc);
  }
}

// c = alpha * acc + beta * c over the first `cols` lanes (beta == 0: c is not read)
template <class T>
inline void store_tile_vec(T* c, const vec<T>& acc, index_t cols, T alpha, T beta) {
  constexpr index_t W = vec<T>::size;
  if (cols >= W) {
    vec<T> out = alpha == T(1) ? acc : acc * vec<T>(alpha);
    if (beta != T(0)) out = xsimd::fma(vec<T>(beta), vec<T>::load_unaligned(c), out);
    out.store_unaligned(c);
    return;
  }
  alignas(64) T buf[W];
  acc.store_aligned(buf);
  for (index_t j = 0; j < cols; ++j) {
    const T v = alpha == T(1) ? buf[j] : alpha * buf[j];
    c[j] = beta != T(0) ? beta * c[j] + v : v;
  }
}

// The register tile: C[MR rows, NV vectors] from an A panel read as
// ap[k * aks + r] (packed: aks = MR; op(A) = A^T read in place: aks = lda)
// and a packed B panel bp (kc, NV*W).
template <class T, int MR, int NV>
inline void micro_kernel(index_t kc, const T* ap, index_t aks, const T* bp, T* c, index_t ldc, index_t cols, T alpha,
                         T beta) {
  constexpr index_t W = vec<T>::size;
  vec<T> acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = vec<T>(T(0));
  for (index_t k = 0; k < kc; ++k) {
    vec<T> b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = vec<T>::load_aligned(bp + (k * NV + v) * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const vec<T> a(ap[k * aks + r]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      if (cols > v * W) store_tile_vec(c + r * ldc + v * W, acc[r][v], cols - v * W, alpha, beta);
}

template <class T, int NV, int... MRs>
inline void micro_dispatch(std::integer_sequence<int, MRs...>, index_t mr, index_t kc, const T* ap, index_t aks,
                           const T* bp, T* c, index_t ldc, index_t cols, T alpha, T beta) {
  using Fn = void (*)(index_t, const T*, index_t, const T*, T*, index_t, index_t, T, T);
  static constexpr Fn table[] = {&micro_kernel<T, MRs + 1, NV>...};
  table[mr - 1](kc, ap, aks, bp, c, ldc, cols, alpha, beta);
}

// One block of C (M rows, N columns), single-threaded.
template <class T>
inline void gemm_block(Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A, index_t lda,
                       const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  constexpr index_t W = vec<T>::size, NR = 2 * W;
  if (K == 0) {
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  Workspace<T>& ws = workspace<T>();
  const index_t kc_max = std::min(K, kKc);
  const index_t mc_max = std::min((M + kMr - 1) / kMr * kMr, kMc);
  const index_t n_pad = (N + NR - 1) / NR * NR;
  if (ws.a.numel() < mc_max * kc_max) ws.a.resize({mc_max * kc_max});
  if (ws.b.numel() < kc_max * n_pad) ws.b.resize({kc_max * n_pad});
  T* ap = ws.a.data();
  T* bp = ws.b.data();
  constexpr auto rows = std::make_integer_sequence<int, int(kMr)>{};
  for (index_t k0 = 0; k0 < K; k0 += kKc) {
    const index_t kc = std::min(kKc, K - k0);
    const T beta_k = k0 == 0 ? beta : T(1);
    for (index_t j0 = 0; j0 < N; j0 += NR) {
      const index_t nr = std::min(NR, N - j0);
      pack_b(bp + j0 * kc, nr > W ? NR : W, tb, B, ldb, j0, nr, k0, kc);
    }
    for (index_t i0 = 0; i0 < M; i0 += kMc) {
      const index_t mc = std::min(kMc, M - i0);
      // op(A) = A^T already has the panel layout (k-major rows): read in place
      if (ta == Trans::N)
        for (index_t ii = 0; ii < mc; ii += kMr) pack_a(ap + ii * kc, A, lda, i0 + ii, std::min(kMr, mc - ii), k0, kc);
      for (index_t j0 = 0; j0 < N; j0 += NR) {
        const index_t nr = std::min(NR, N - j0);
        for (index_t ii = 0; ii < mc; ii += kMr) {
          const index_t mr = std::min(kMr, mc - ii);
          T* c = C + (i0 + ii) * ldc + j0;
          const bool in_place = ta == Trans::T;
          const T* a = in_place ? A + k0 * lda + i0 + ii : ap + ii * kc;
          const index_t aks = in_place ? lda : mr;
          if (nr > W)
            micro_dispatch<T, 2>(rows, mr, kc, a, aks, bp + j0 * kc, c, ldc, nr, alpha, beta_k);
          else
            micro_dispatch<T, 1>(rows, mr, kc, a, aks, bp + j0 * kc, c, ldc, nr, alpha, beta_k);
        }
      }
    }
  }
}

}  // namespace gemm_detail
}  // namespace kernels
}  // namespace mtrec
