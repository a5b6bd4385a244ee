// mtrec: the CUDA sequence kernels — offsets, masked pooling, packing, padded
// rows, positional add, strided batched GEMM and variable-length attention.
//
// Each kernel mirrors its `reference_t` overload in kernels/sequence.hpp.
// `lengths` and `starts` are device memory (the layers pass them so), so
// every per-sequence size is read on the device:
//   packed_starts      one block scans the lengths (tiles of 1024, a carry
//                      between tiles: any B) and the total comes back to the
//                      host through the thread's scratch (one stream sync);
//   attention_*        padded layout: cuBLAS strided-batched GEMMs per head
//                      on full (T,T) blocks, masked (see below); packed
//                      layout: the per-(sequence, head) GEMMs are a tiled kernel of
//                      our own (grid: B*H problems x 32x32 output tiles, the
//                      problem's sizes read from lengths[b]; tiles past L
//                      exit), with a warp per softmax row; every output
//                      element is summed by one thread in a fixed order, so
//                      results are deterministic and no float atomics are used;
//   gemm_strided_batched  cuBLAS (S/D StridedBatched_64), row-major through
//                      the column-major identity.
// Reductions that the reference sums in double (pooling, positional dpos,
// softmax sums) sum in double here too.
#pragma once

#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/device.hpp"

namespace mtrec {
namespace kernels {
namespace cuda_impl {
namespace seq {

constexpr unsigned kThreads = 256;

#define MTREC_SEQ_GRID_STRIDE(i, n)                                                       \
  for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < (n); \
       i += index_t(gridDim.x) * index_t(blockDim.x))

// ---- offsets -------------------------------------------------------------------------

// One block of exactly 1024 threads: tiles of 1024 lengths, each scanned with
// warp shuffles, a running carry between tiles. *total = sum(lengths).
template <class I>
__global__ void __launch_bounds__(1024) packed_starts_kernel(I* starts, const I* lengths, I B, I* total) {
  __shared__ long long warp_sums[32];
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  long long carry = 0;
  for (I base = 0; base < B; base += 1024) {
    const I i = base + tid;
    const long long v = i < B ? static_cast<long long>(lengths[i]) : 0LL;
    long long x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const long long y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
      long long w = warp_sums[lane];
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const long long y = __shfl_up_sync(0xffffffffu, w, o);
        if (lane >= o) w += y;
      }
      warp_sums[lane] = w;
    }
    __syncthreads();
    const long long prefix = warp > 0 ? warp_sums[warp - 1] : 0LL;
    if (i < B) starts[i] = I(carry + prefix + x - v);
    carry += warp_sums[31];
    __syncthreads();  // warp_sums is rewritten by the next tile
  }
  if (tid == 0) *total = I(carry);
}

template <class I>
__global__ void padded_starts_kernel(I* starts, I B, I T_len) {
  MTREC_SEQ_GRID_STRIDE(b, B) starts[b] = b * T_len;
}

// ---- masked pooling --------------------------------------------------------------------

template <class T>
__global__ void sequence_pool_forward_kernel(T* y, const T* x, const index_t* lengths, index_t B, index_t T_len,
                                             index_t D, bool first) {
  MTREC_SEQ_GRID_STRIDE(i, B * D) {
    const index_t b = i / D, c = i - b * D;
    const index_t len = lengths[b];
    const index_t valid = len == 0 ? 0 : first ? 1 : len;
    double acc = 0;
    for (index_t t = 0; t < valid; ++t) acc += double(x[(b * T_len + t) * D + c]);
    y[i] = valid == 0 ? T(0) : T(acc / double(valid));
  }
}

template <class T>
__global__ void sequence_pool_backward_kernel(T* dx, const T* dy, const index_t* lengths, index_t B, index_t T_len,
                                              index_t D, bool first) {
  const index_t row = T_len * D;
  MTREC_SEQ_GRID_STRIDE(i, B * row) {
    const index_t b = i / row, r = i - b * row, t = r / D, c = r - t * D;
    const index_t len = lengths[b];
    const index_t valid = len == 0 ? 0 : first ? 1 : len;
    dx[i] = t < valid ? T(double(dy[b * D + c]) / double(valid)) : T(0);
  }
}

// ---- packing and padded rows -------------------------------------------------------------

template <class T>
__global__ void pack_sequences_kernel(T* packed, const T* padded, const index_t* lengths, const index_t* starts,
                                      index_t B, index_t T_len, index_t D) {
  const index_t row = T_len * D;
  MTREC_SEQ_GRID_STRIDE(i, B * row) {
    const index_t b = i / row, r = i - b * row;
    if (r < lengths[b] * D) packed[starts[b] * D + r] = padded[i];
  }
}

template <class T>
__global__ void unpack_sequences_kernel(T* padded, const T* packed, const index_t* lengths, const index_t* starts,
                                        index_t B, index_t T_len, index_t D) {
  const index_t row = T_len * D;
  MTREC_SEQ_GRID_STRIDE(i, B * row) {
    const index_t b = i / row, r = i - b * row;
    padded[i] = r < lengths[b] * D ? packed[starts[b] * D + r] : T(0);
  }
}

template <class T>
__global__ void mask_padded_rows_kernel(T* y, const T* x, const index_t* lengths, index_t B, index_t T_len,
                                        index_t C) {
  const index_t row = T_len * C;
  MTREC_SEQ_GRID_STRIDE(i, B * row) {
    const index_t b = i / row, r = i - b * row;
    y[i] = r < lengths[b] * C ? x[i] : T(0);
  }
}

// *flag = 1 when a padded value is not == 0 (NaN included); every writer
// writes the same value.
template <class T>
__global__ void padded_nonzero_kernel(int* flag, const T* x, const index_t* lengths, index_t B, index_t T_len,
                                      index_t C) {
  const index_t row = T_len * C;
  MTREC_SEQ_GRID_STRIDE(i, B * row) {
    const index_t b = i / row, r = i - b * row;
    if (r >= lengths[b] * C && !(x[i] == T(0))) *flag = 1;
  }
}

// ---- positional add ----------------------------------------------------------------------

template <class T>
__global__ void positional_add_kernel(T* y, const T* x, const T* pos, index_t n, index_t row) {
  MTREC_SEQ_GRID_STRIDE(i, n) y[i] = x[i] + pos[i % row];
}

template <class T>
__global__ void seq_copy_kernel(T* dst, const T* src, index_t n) {
  MTREC_SEQ_GRID_STRIDE(i, n) dst[i] = src[i];
}

// dpos[c] += sum over b of dy[b*row + c], in order of b, in double.
template <class T>
__global__ void positional_dpos_kernel(T* dpos, const T* dy, index_t B, index_t row) {
  MTREC_SEQ_GRID_STRIDE(c, row) {
    double acc = 0;
    for (index_t b = 0; b < B; ++b) acc += dy[b * row + c];
    dpos[c] += T(acc);
  }
}

// ---- strided batched GEMM ------------------------------------------------------------------

// K == 0: C_i = alpha * 0 + beta * C_i, as the reference writes it (C not read when beta == 0).
template <class T>
__global__ void gemm_k0_kernel(T* C, index_t M, index_t N, index_t ldc, index_t strideC, index_t batch, T alpha,
                               T beta) {
  const index_t mn = M * N;
  MTREC_SEQ_GRID_STRIDE(i, batch * mn) {
    const index_t bi = i / mn, e = i - bi * mn, r = e / N, c = e - r * N;
    T* p = C + bi * strideC + r * ldc + c;
    const double prev = beta == T(0) ? 0.0 : double(beta) * double(*p);
    *p = T(double(alpha) * 0.0 + prev);
  }
}

inline cublasOperation_t blas_op(Trans t) { return t == Trans::N ? CUBLAS_OP_N : CUBLAS_OP_T; }

inline cublasStatus_t gemm_strided_batched_blas(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                                index_t m, index_t n, index_t k, const float* alpha, const float* A,
                                                index_t lda, index_t sa, const float* B, index_t ldb, index_t sb,
                                                const float* beta, float* C, index_t ldc, index_t sc, index_t batch) {
  return cublasSgemmStridedBatched_64(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}
inline cublasStatus_t gemm_strided_batched_blas(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                                index_t m, index_t n, index_t k, const double* alpha, const double* A,
                                                index_t lda, index_t sa, const double* B, index_t ldb, index_t sb,
                                                const double* beta, double* C, index_t ldc, index_t sc, index_t batch) {
  return cublasDgemmStridedBatched_64(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

// ---- attention --------------------------------------------------------------------------------

// An operand of one (sequence b, head h) product, located on the device:
//   scores: base + (b*H + h)*T*T, leading dimension L (the compact (L,L) block);
//   rows:   base + starts[b]*ld + col + h*dh, leading dimension ld.
template <class T>
struct AttnOperand {
  T* base;
  index_t ld;
  index_t col;
  bool scores;
};

// C (M,N) = alpha * op(A) (M,K) op(B) (K,N) for every (b,h) with L = lengths[b] > 0;
// each of M, N, K is L (the flag set) or dh.
template <class T>
struct AttnGemm {
  const index_t* lengths;
  const index_t* starts;
  index_t H, dh, TT;
  bool m_is_L, n_is_L, k_is_L;
  T alpha;
  AttnOperand<const T> a, b;
  AttnOperand<T> c;
};

template <class U>
__device__ inline U* attn_locate(const AttnOperand<U>& o, index_t z, index_t s0, index_t h, index_t dh, index_t TT,
                                 index_t L, index_t& ld) {
  if (o.scores) {
    ld = L;
    return o.base + z * TT;
  }
  ld = o.ld;
  return o.base + s0 * o.ld + o.col + h * dh;
}

constexpr int kAttnTile = 32;  // 32x32 output tile, k-steps of 32; 16x16 threads of 2x2 outputs

// grid: x = B*H problems, y = row tiles, z = column tiles; 256 threads.
template <class T, bool TA, bool TB>
__global__ void __launch_bounds__(256) attn_gemm_kernel(AttnGemm<T> g) {
  constexpr int BT = kAttnTile;
  __shared__ T As[BT][BT + 1];  // As[k][i] = op(A)(row0 + i, k0 + k)
  __shared__ T Bs[BT][BT + 1];  // Bs[k][j] = op(B)(k0 + k, col0 + j)
  const index_t z = blockIdx.x;
  const index_t bi = z / g.H, h = z - bi * g.H;
  const index_t L = g.lengths[bi];
  if (L <= 0) return;
  const index_t M = g.m_is_L ? L : g.dh, N = g.n_is_L ? L : g.dh, K = g.k_is_L ? L : g.dh;
  const index_t row0 = index_t(blockIdx.y) * BT, col0 = index_t(blockIdx.z) * BT;
  if (row0 >= M || col0 >= N) return;  // the whole block leaves together
  const index_t s0 = g.starts[bi];
  index_t lda = 0, ldb = 0, ldc = 0;
  const T* A = attn_locate(g.a, z, s0, h, g.dh, g.TT, L, lda);
  const T* Bm = attn_locate(g.b, z, s0, h, g.dh, g.TT, L, ldb);
  T* C = attn_locate(g.c, z, s0, h, g.dh, g.TT, L, ldc);

  const int tid = int(threadIdx.x), tx = tid & 15, ty = tid >> 4;
  T acc00 = T(0), acc01 = T(0), acc10 = T(0), acc11 = T(0);
  for (index_t k0 = 0; k0 < K; k0 += BT) {
    for (int e = tid; e < BT * BT; e += 256) {
      // consecutive threads read consecutive addresses of the stored matrix
      const int ii = TA ? e % BT : e / BT, kk = TA ? e / BT : e % BT;
      const index_t gi = row0 + ii, gk = k0 + kk;
      As[kk][ii] = (gi < M && gk < K) ? (TA ? A[gk * lda + gi] : A[gi * lda + gk]) : T(0);
    }
    for (int e = tid; e < BT * BT; e += 256) {
      const int jj = TB ? e / BT : e % BT, kk = TB ? e % BT : e / BT;
      const index_t gj = col0 + jj, gk = k0 + kk;
      Bs[kk][jj] = (gj < N && gk < K) ? (TB ? Bm[gj * ldb + gk] : Bm[gk * ldb + gj]) : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BT; ++kk) {
      const T a0 = As[kk][ty], a1 = As[kk][ty + 16], b0 = Bs[kk][tx], b1 = Bs[kk][tx + 16];
      acc00 += a0 * b0;
      acc01 += a0 * b1;
      acc10 += a1 * b0;
      acc11 += a1 * b1;
    }
    __syncthreads();
  }
  const index_t r0 = row0 + ty, r1 = r0 + 16, c0 = col0 + tx, c1 = c0 + 16;
  if (r0 < M && c0 < N) C[r0 * ldc + c0] = g.alpha * acc00;
  if (r0 < M && c1 < N) C[r0 * ldc + c1] = g.alpha * acc01;
  if (r1 < M && c0 < N) C[r1 * ldc + c0] = g.alpha * acc10;
  if (r1 < M && c1 < N) C[r1 * ldc + c1] = g.alpha * acc11;
}

template <class T>
__device__ inline T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}
__device__ inline double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // the same fixed tree on every lane: every lane holds the same bits
}

// One warp, one score row p[0, L): p[c] = exp(p[c] - max), summed in double
// (the same fixed tree on every lane); returns T(1 / sum). As the reference's
// softmax_forward, before its final scaling.
template <class T>
__device__ inline T warp_softmax_exp(T* p, index_t L, int lane) {
  T mx = p[0];
  for (index_t c = lane; c < L; c += 32) mx = p[c] > mx ? p[c] : mx;
  mx = warp_max(mx);
  double sum = 0;
  for (index_t c = lane; c < L; c += 32) {
    const T e = std::exp(p[c] - mx);
    p[c] = e;
    sum += double(e);
  }
  return T(1.0 / warp_sum(sum));
}
// One warp: sum(d[c] * y[c]) over [0, L) in double, as T.
template <class T>
__device__ inline T warp_row_dot(const T* d, const T* y, index_t L, int lane) {
  double dot = 0;
  for (index_t c = lane; c < L; c += 32) dot += double(d[c]) * double(y[c]);
  return T(warp_sum(dot));
}

// A warp per score row (b, h, r), r < lengths[b]: the row of the compact
// (L,L) block at (b*H + h)*TT + r*L, softmax in place as softmax_forward
// (reference): max-subtracted exp in T, summed in double, times T(1/sum).
template <class T>
__global__ void attn_softmax_forward_kernel(T* P, const index_t* lengths, index_t B, index_t H, index_t T_len,
                                            index_t TT) {
  const int lane = int(threadIdx.x) & 31;
  const index_t rows = B * H * T_len;
  const index_t warps = (index_t(gridDim.x) * blockDim.x) >> 5;
  for (index_t w = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < rows; w += warps) {
    const index_t z = w / T_len, r = w - z * T_len;
    const index_t L = lengths[z / H];
    if (r >= L) continue;  // the whole warp skips together
    T* p = P + z * TT + r * L;
    const T inv = warp_softmax_exp(p, L, lane);
    for (index_t c = lane; c < L; c += 32) p[c] *= inv;
  }
}

// A warp per row: dS = P * (dS - sum(dS * P)) in place, as softmax_backward (reference).
template <class T>
__global__ void attn_softmax_backward_kernel(T* dS, const T* P, const index_t* lengths, index_t B, index_t H,
                                             index_t T_len, index_t TT) {
  const int lane = int(threadIdx.x) & 31;
  const index_t rows = B * H * T_len;
  const index_t warps = (index_t(gridDim.x) * blockDim.x) >> 5;
  for (index_t w = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < rows; w += warps) {
    const index_t z = w / T_len, r = w - z * T_len;
    const index_t L = lengths[z / H];
    if (r >= L) continue;
    T* d = dS + z * TT + r * L;
    const T* y = P + z * TT + r * L;
    const T td = warp_row_dot(d, y, L, lane);
    for (index_t c = lane; c < L; c += 32) d[c] = y[c] * (d[c] - td);
  }
}

// ---- the padded layout on cuBLAS: full (T,T) score blocks -------------------------
// In the padded layout every (b, h) product has the shape of the longest
// sequence, so cuBLAS strided-batched GEMMs compute them over full (T,T)
// blocks (ld T, block (b*H + h)*T*T) and these kernels mask what lies
// beyond L = lengths[b]: a masked entry is exactly 0, so it adds nothing to
// any product, and the padded rows of every output come out 0.

// A warp per full row (b, h, r): r < L: softmax over the L valid keys as
// attn_softmax_forward_kernel, keys [L, T) set to 0, and the row also copied
// to the compact (L,L) block of `probs`; r >= L: the whole row set to 0.
template <class T>
__global__ void attn_softmax_full_kernel(T* S, T* probs, const index_t* lengths, index_t B, index_t H, index_t T_len,
                                         index_t TT) {
  const int lane = int(threadIdx.x) & 31;
  const index_t rows = B * H * T_len;
  const index_t warps = (index_t(gridDim.x) * blockDim.x) >> 5;
  for (index_t w = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < rows; w += warps) {
    const index_t z = w / T_len, r = w - z * T_len;
    const index_t L = lengths[z / H];
    T* p = S + z * TT + r * T_len;
    if (r >= L) {
      for (index_t c = lane; c < T_len; c += 32) p[c] = T(0);
      continue;
    }
    const T inv = warp_softmax_exp(p, L, lane);
    T* q = probs + z * TT + r * L;
    for (index_t c = lane; c < T_len; c += 32) {
      const T y = c < L ? p[c] * inv : T(0);
      p[c] = y;
      if (c < L) q[c] = y;
    }
  }
}

// Pf (full blocks) = the compact (L,L) blocks of probs, 0 beyond L.
template <class T>
__global__ void attn_expand_probs_kernel(T* Pf, const T* probs, const index_t* lengths, index_t B, index_t H,
                                         index_t T_len, index_t TT) {
  MTREC_SEQ_GRID_STRIDE(i, B * H * TT) {
    const index_t z = i / TT, e = i - z * TT, r = e / T_len, c = e - r * T_len;
    const index_t L = lengths[z / H];
    Pf[i] = r < L && c < L ? probs[z * TT + r * L + c] : T(0);
  }
}

// A warp per full row: dS = P * (dP - sum(dP * P)) for r < L (keys beyond L
// have P = 0, so they come out 0); rows r >= L set to 0.
template <class T>
__global__ void attn_softmax_backward_full_kernel(T* dS, const T* Pf, const index_t* lengths, index_t B, index_t H,
                                                  index_t T_len, index_t TT) {
  const int lane = int(threadIdx.x) & 31;
  const index_t rows = B * H * T_len;
  const index_t warps = (index_t(gridDim.x) * blockDim.x) >> 5;
  for (index_t w = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < rows; w += warps) {
    const index_t z = w / T_len, r = w - z * T_len;
    const index_t L = lengths[z / H];
    T* d = dS + z * TT + r * T_len;
    const T* y = Pf + z * TT + r * T_len;
    if (r >= L) {
      for (index_t c = lane; c < T_len; c += 32) d[c] = T(0);
      continue;
    }
    const T td = warp_row_dot(d, y, L, lane);
    for (index_t c = lane; c < T_len; c += 32) d[c] = c < L ? y[c] * (d[c] - td) : T(0);
  }
}

// The rows t in [lengths[b], T_len) of sequence b (from starts[b]), `width` wide, set to 0.
template <class T>
__global__ void attn_zero_padded_kernel(T* base, const index_t* lengths, const index_t* starts, index_t B,
                                        index_t T_len, index_t width) {
  const index_t row = T_len * width;
  MTREC_SEQ_GRID_STRIDE(i, B * row) {
    const index_t b = i / row, r = i - b * row;
    if (r >= lengths[b] * width) base[starts[b] * width + r] = T(0);
  }
}

template <class T>
inline void attn_zero_padded(cuda_raw_t dev, T* base, const index_t* lengths, const index_t* starts, index_t B,
                             index_t T_len, index_t width, const char* op) {
  const index_t n = B * T_len * width;
  if (n <= 0) return;
  attn_zero_padded_kernel<T><<<cuda::grid_for(n), kThreads, 0, dev.stream>>>(base, lengths, starts, B, T_len, width);
  cuda::check_launch(op, "zeroing the padded rows: B=", B, " T=", T_len, " width=", width);
}

template <class T, bool TA, bool TB>
inline void attn_gemm(cuda_raw_t dev, const AttnGemm<T>& g, index_t B, index_t T_len, const char* op,
                      const char* what) {
  const index_t Mmax = g.m_is_L ? T_len : g.dh, Nmax = g.n_is_L ? T_len : g.dh;
  const index_t tm = (Mmax + kAttnTile - 1) / kAttnTile, tn = (Nmax + kAttnTile - 1) / kAttnTile;
  const index_t problems = B * g.H;
  if (problems <= 0 || tm <= 0 || tn <= 0) return;
  if (problems > index_t(2147483647) || tm > 65535 || tn > 65535)
    fail(op, "too large for the attention GEMM grid: B*H=", problems, " (at most 2^31-1), ", what, " tiles ", tm, "x",
         tn, " (at most 65535 each; T=", T_len, " dh=", g.dh, ")");
  const dim3 grid{unsigned(problems), unsigned(tm), unsigned(tn)};
  attn_gemm_kernel<T, TA, TB><<<grid, 256, 0, dev.stream>>>(g);
  cuda::check_launch(op, what, ": B=", B, " H=", g.H, " T=", T_len, " dh=", g.dh);
}

inline unsigned attn_row_grid(index_t rows) {
  return cuda::grid_for(rows * 32, kThreads);  // a warp per row, warp-stride beyond the cap
}

}  // namespace seq
}  // namespace cuda_impl

// ---- sequence offsets -----------------------------------------------------------------------

// starts (B) = exclusive prefix sum of lengths (B), on the device (one block);
// returns n = sum(lengths) (the stream is synchronised to read it).
inline index_t packed_starts(cuda_raw_t dev, index_t* starts, const index_t* lengths, index_t B) {
  if (B <= 0) return 0;
  auto& th = cuda::CudaThread::current();
  index_t* total = static_cast<index_t*>(th.device_scratch(sizeof(index_t)));
  cuda_impl::seq::packed_starts_kernel<index_t><<<1, 1024, 0, dev.stream>>>(starts, lengths, B, total);
  cuda::check_launch("packed_starts", "B=", B);
  index_t* host = static_cast<index_t*>(th.host_scratch());
  cuda::check(cudaMemcpyAsync(host, total, sizeof(index_t), cudaMemcpyDeviceToHost, dev.stream), "packed_starts",
              "copying the total back, B=", B);
  cuda::check(cudaStreamSynchronize(dev.stream), "packed_starts", "waiting for the total, B=", B);
  return *host;
}

inline void padded_starts(cuda_raw_t dev, index_t* starts, index_t B, index_t T_len) {
  if (B <= 0) return;
  cuda_impl::seq::padded_starts_kernel<index_t><<<cuda::grid_for(B), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      starts, B, T_len);
  cuda::check_launch("padded_starts", "B=", B, " T=", T_len);
}

// ---- masked pooling ---------------------------------------------------------------------------

template <class T>
inline void sequence_pool_forward(cuda_raw_t dev, T* y, const T* x, const index_t* lengths, index_t B, index_t T_len,
                                  index_t D, bool first) {
  const index_t n = B * D;
  if (n <= 0) return;
  cuda_impl::seq::sequence_pool_forward_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      y, x, lengths, B, T_len, D, first);
  cuda::check_launch("sequence_pool_forward", "B=", B, " T=", T_len, " D=", D, first ? " first" : " mean");
}

template <class T>
inline void sequence_pool_backward(cuda_raw_t dev, T* dx, const T* dy, const index_t* lengths, index_t B,
                                   index_t T_len, index_t D, bool first) {
  const index_t n = B * T_len * D;
  if (n <= 0) return;
  cuda_impl::seq::sequence_pool_backward_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      dx, dy, lengths, B, T_len, D, first);
  cuda::check_launch("sequence_pool_backward", "B=", B, " T=", T_len, " D=", D, first ? " first" : " mean");
}

// ---- packing ------------------------------------------------------------------------------------

template <class T>
inline void pack_sequences(cuda_raw_t dev, T* packed, const T* padded, const index_t* lengths, const index_t* starts,
                           index_t B, index_t T_len, index_t D) {
  const index_t n = B * T_len * D;
  if (n <= 0) return;
  cuda_impl::seq::pack_sequences_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      packed, padded, lengths, starts, B, T_len, D);
  cuda::check_launch("pack_sequences", "B=", B, " T=", T_len, " D=", D);
}

template <class T>
inline void unpack_sequences(cuda_raw_t dev, T* padded, const T* packed, const index_t* lengths,
                             const index_t* starts, index_t B, index_t T_len, index_t D) {
  const index_t n = B * T_len * D;
  if (n <= 0) return;
  cuda_impl::seq::unpack_sequences_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      padded, packed, lengths, starts, B, T_len, D);
  cuda::check_launch("unpack_sequences", "B=", B, " T=", T_len, " D=", D);
}

// ---- padded rows ----------------------------------------------------------------------------------

template <class T>
inline void mask_padded_rows(cuda_raw_t dev, T* y, const T* x, const index_t* lengths, index_t B, index_t T_len,
                             index_t C) {
  const index_t n = B * T_len * C;
  if (n <= 0) return;
  cuda_impl::seq::mask_padded_rows_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      y, x, lengths, B, T_len, C);
  cuda::check_launch("mask_padded_rows", "B=", B, " T=", T_len, " C=", C);
}

// A flag in the device scratch, set by any padded value that is not == 0;
// read back through the pinned host scratch (the stream is synchronised).
template <class T>
inline bool padded_rows_are_zero(cuda_raw_t dev, const T* x, const index_t* lengths, index_t B, index_t T_len,
                                 index_t C) {
  const index_t n = B * T_len * C;
  if (n <= 0) return true;
  auto& th = cuda::CudaThread::current();
  int* flag = static_cast<int*>(th.device_scratch(sizeof(int)));
  cuda::check(cudaMemsetAsync(flag, 0, sizeof(int), dev.stream), "padded_rows_are_zero", "clearing the flag");
  cuda_impl::seq::padded_nonzero_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      flag, x, lengths, B, T_len, C);
  cuda::check_launch("padded_rows_are_zero", "B=", B, " T=", T_len, " C=", C);
  int* host = static_cast<int*>(th.host_scratch());
  cuda::check(cudaMemcpyAsync(host, flag, sizeof(int), cudaMemcpyDeviceToHost, dev.stream), "padded_rows_are_zero",
              "copying the flag back, B=", B, " T=", T_len, " C=", C);
  cuda::check(cudaStreamSynchronize(dev.stream), "padded_rows_are_zero", "waiting for the flag, B=", B, " T=", T_len,
              " C=", C);
  return *host == 0;
}

// ---- positional add ---------------------------------------------------------------------------------

template <class T>
inline void positional_add(cuda_raw_t dev, T* y, const T* x, const T* pos, index_t B, index_t T_len, index_t D) {
  const index_t row = T_len * D, n = B * row;
  if (n <= 0) return;
  cuda_impl::seq::positional_add_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      y, x, pos, n, row);
  cuda::check_launch("positional_add", "B=", B, " T=", T_len, " D=", D);
}

// dx = dy (skipped when dx is null or is dy); dpos (T,D) += sum over b of dy,
// a thread per column summing its B values in order (in double).
template <class T>
inline void positional_add_backward(cuda_raw_t dev, T* dx, T* dpos, const T* dy, index_t B, index_t T_len,
                                    index_t D) {
  const index_t row = T_len * D, n = B * row;
  if (dx && dx != dy && n > 0) {
    cuda_impl::seq::seq_copy_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(dx, dy, n);
    cuda::check_launch("positional_add_backward", "copying dx: B=", B, " T=", T_len, " D=", D);
  }
  if (row <= 0) return;
  cuda_impl::seq::positional_dpos_kernel<T><<<cuda::grid_for(row), cuda_impl::seq::kThreads, 0, dev.stream>>>(
      dpos, dy, B < 0 ? 0 : B, row);
  cuda::check_launch("positional_add_backward", "dpos: B=", B, " T=", T_len, " D=", D);
}

// ---- strided batched GEMM --------------------------------------------------------------------------------

// Row-major C_i = alpha op(A_i) op(B_i) + beta C_i is column-major
// C_i^T = alpha op(B_i)^T op(A_i)^T + beta C_i^T: cuBLAS gets B first, (N, M, K).
// fp32 runs on TF32 tensor cores only when the device asks for it.
template <class T>
inline void gemm_strided_batched(cuda_raw_t dev, Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha,
                                 const T* A, index_t lda, index_t strideA, const T* B, index_t ldb, index_t strideB,
                                 T beta, T* C, index_t ldc, index_t strideC, index_t batch) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  if (K <= 0) {
    const index_t n = batch * M * N;
    cuda_impl::seq::gemm_k0_kernel<T><<<cuda::grid_for(n), cuda_impl::seq::kThreads, 0, dev.stream>>>(
        C, M, N, ldc, strideC, batch, alpha, beta);
    cuda::check_launch("gemm_strided_batched", "K=0: C = beta C; M=", M, " N=", N, " batch=", batch);
    return;
  }
  cublasHandle_t h = dev.blas();
  const cublasMath_t mode =
      std::is_same<T, float>::value && dev.tf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
  cuda::check_blas(cublasSetMathMode(h, mode), "gemm_strided_batched", "cublasSetMathMode");
  cuda::check_blas(cuda_impl::seq::gemm_strided_batched_blas(h, cuda_impl::seq::blas_op(tb), cuda_impl::seq::blas_op(ta),
                                                             N, M, K, &alpha, B, ldb, strideB, A, lda, strideA, &beta, C,
                                                             ldc, strideC, batch),
                   "gemm_strided_batched", sizeof(T) == 4 ? "cublasSgemmStridedBatched" : "cublasDgemmStridedBatched",
                   ": ", ta == Trans::N ? "N" : "T", tb == Trans::N ? "N" : "T", " M=", M, " N=", N, " K=", K,
                   " lda=", lda, " ldb=", ldb, " ldc=", ldc, " strides=", strideA, ",", strideB, ",", strideC,
                   " batch=", batch);
}

// ---- multi-head attention over variable-length sequences --------------------------------------------------
//
// Padded layout (the model's sequence encoders): every per-head product is
// a cuBLAS strided-batched GEMM, one call per head over the B sequences
// (the heads of one sequence are dh columns apart, the sequences T*ld rows
// apart: one stride each), on full (T,T) score blocks in the thread's
// device scratch, masked by the kernels above. Packed layout: the sequences
// start at arbitrary rows, so no stride exists; the tiled kernel
// (attn_gemm) handles each (b, h) at its own length.

namespace cuda_impl {
namespace seq {
// C_h = alpha op(A_h) op(B_h) for h < H: one strided-batched call per head,
// batched over the B sequences. Offsets and strides are in elements; the
// head's own offset is h * (its head stride).
template <class T>
inline void per_head_gemm(cuda_raw_t dev, Trans ta, Trans tb, index_t B, index_t H, index_t M, index_t N, index_t K,
                          T alpha, const T* A, index_t lda, index_t headA, index_t strideA, const T* Bm, index_t ldb,
                          index_t headB, index_t strideB, T* C, index_t ldc, index_t headC, index_t strideC) {
  for (index_t h = 0; h < H; ++h)
    kernels::gemm_strided_batched(dev, ta, tb, M, N, K, alpha, A + h * headA, lda, strideA, Bm + h * headB, ldb, strideB, T(0),
                         C + h * headC, ldc, strideC, B);
}
}  // namespace seq
}  // namespace cuda_impl

// out (n,D): per (b,h), P = softmax(scale Q K^T) into probs (compact (L,L) at
// (b*H+h)*T*T), out = P V; padded: rows [L,T) of each sequence's out are 0.
template <class T>
inline void attention_forward(cuda_raw_t dev, T* out, T* probs, const T* qkv, const index_t* lengths,
                              const index_t* starts, index_t B, index_t H, index_t T_len, index_t dh, T scale,
                              bool padded) {
  using namespace cuda_impl::seq;
  const char* op = "attention_forward";
  if (B <= 0) return;
  const index_t D = H * dh, ld = 3 * D, TT = T_len * T_len;
  if (padded && H > 0 && T_len > 0 && dh > 0) {  // starts[b] = b*T: cuBLAS
    T* S = static_cast<T*>(cuda::CudaThread::current().device_scratch(sizeof(T) * std::size_t(B * H * TT)));
    // S (T,T) per (b,h) = scale Q K^T
    per_head_gemm(dev, Trans::N, Trans::T, B, H, T_len, T_len, dh, scale, qkv, ld, dh, T_len * ld, qkv + D, ld, dh,
                  T_len * ld, S, T_len, TT, H * TT);
    attn_softmax_full_kernel<T><<<attn_row_grid(B * H * T_len), kThreads, 0, dev.stream>>>(S, probs, lengths, B, H,
                                                                                           T_len, TT);
    cuda::check_launch(op, "softmax rows (full blocks): B=", B, " H=", H, " T=", T_len);
    // out (T,dh) = P V: padded rows have P = 0, so they come out 0
    per_head_gemm(dev, Trans::N, Trans::N, B, H, T_len, dh, T_len, T(1), S, T_len, TT, H * TT, qkv + 2 * D, ld, dh,
                  T_len * ld, out, D, dh, T_len * D);
    return;
  }
  if (padded) attn_zero_padded(dev, out, lengths, starts, B, T_len, D, op);
  if (H <= 0 || T_len <= 0) return;
  AttnGemm<T> g{lengths, starts, H, dh, TT, true, true, false, scale, {}, {}, {}};
  // scores (L,L) = scale Q K^T
  g.a = {qkv, ld, 0, false};
  g.b = {qkv, ld, D, false};
  g.c = {probs, 0, 0, true};
  attn_gemm<T, false, true>(dev, g, B, T_len, op, "scores = scale Q K^T");
  const index_t rows = B * H * T_len;
  attn_softmax_forward_kernel<T><<<attn_row_grid(rows), kThreads, 0, dev.stream>>>(probs, lengths, B, H, T_len, TT);
  cuda::check_launch(op, "softmax rows: B=", B, " H=", H, " T=", T_len);
  // out (L,dh) = P V
  g.m_is_L = true;
  g.n_is_L = false;
  g.k_is_L = true;
  g.alpha = T(1);
  g.a = {probs, 0, 0, true};
  g.b = {qkv, ld, 2 * D, false};
  g.c = {out, D, 0, false};
  attn_gemm<T, false, false>(dev, g, B, T_len, op, "out = P V");
}

// d_qkv (n,3D) written from d_out (n,D); d_scores (B,H,T*T) is workspace
// (its compact (L,L) blocks written); padded: rows [L,T) of d_qkv are 0.
template <class T>
inline void attention_backward(cuda_raw_t dev, T* d_qkv, T* d_scores, const T* d_out, const T* qkv, const T* probs,
                               const index_t* lengths, const index_t* starts, index_t B, index_t H, index_t T_len,
                               index_t dh, T scale, bool padded) {
  using namespace cuda_impl::seq;
  const char* op = "attention_backward";
  if (B <= 0) return;
  const index_t D = H * dh, ld = 3 * D, TT = T_len * T_len;
  if (padded && H > 0 && T_len > 0 && dh > 0) {  // starts[b] = b*T: cuBLAS on full blocks
    T* Pf = static_cast<T*>(cuda::CudaThread::current().device_scratch(sizeof(T) * std::size_t(B * H * TT)));
    attn_expand_probs_kernel<T><<<cuda::grid_for(B * H * TT), kThreads, 0, dev.stream>>>(Pf, probs, lengths, B, H,
                                                                                         T_len, TT);
    cuda::check_launch(op, "expanding the probabilities: B=", B, " H=", H, " T=", T_len);
    // dP (T,T) = dO V^T, in d_scores as full blocks
    per_head_gemm(dev, Trans::N, Trans::T, B, H, T_len, T_len, dh, T(1), d_out, D, dh, T_len * D, qkv + 2 * D, ld,
                  dh, T_len * ld, d_scores, T_len, TT, H * TT);
    attn_softmax_backward_full_kernel<T><<<attn_row_grid(B * H * T_len), kThreads, 0, dev.stream>>>(
        d_scores, Pf, lengths, B, H, T_len, TT);
    cuda::check_launch(op, "softmax backward rows (full blocks): B=", B, " H=", H, " T=", T_len);
    // dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO: every padded row 0
    per_head_gemm(dev, Trans::N, Trans::N, B, H, T_len, dh, T_len, scale, d_scores, T_len, TT, H * TT, qkv + D, ld,
                  dh, T_len * ld, d_qkv, ld, dh, T_len * ld);
    per_head_gemm(dev, Trans::T, Trans::N, B, H, T_len, dh, T_len, scale, d_scores, T_len, TT, H * TT, qkv, ld, dh,
                  T_len * ld, d_qkv + D, ld, dh, T_len * ld);
    per_head_gemm(dev, Trans::T, Trans::N, B, H, T_len, dh, T_len, T(1), Pf, T_len, TT, H * TT, d_out, D, dh,
                  T_len * D, d_qkv + 2 * D, ld, dh, T_len * ld);
    return;
  }
  if (padded) attn_zero_padded(dev, d_qkv, lengths, starts, B, T_len, ld, op);
  if (H <= 0 || T_len <= 0) return;
  AttnGemm<T> g{lengths, starts, H, dh, TT, true, true, false, T(1), {}, {}, {}};
  // dP (L,L) = dO V^T
  g.a = {d_out, D, 0, false};
  g.b = {qkv, ld, 2 * D, false};
  g.c = {d_scores, 0, 0, true};
  attn_gemm<T, false, true>(dev, g, B, T_len, op, "dP = dO V^T");
  // dS = P * (dP - rowsum(dP * P))
  const index_t rows = B * H * T_len;
  attn_softmax_backward_kernel<T><<<attn_row_grid(rows), kThreads, 0, dev.stream>>>(d_scores, probs, lengths, B, H,
                                                                                     T_len, TT);
  cuda::check_launch(op, "softmax backward rows: B=", B, " H=", H, " T=", T_len);
  g.m_is_L = true;
  g.n_is_L = false;
  g.k_is_L = true;
  // dQ (L,dh) = scale dS K
  g.alpha = scale;
  g.a = {d_scores, 0, 0, true};
  g.b = {qkv, ld, D, false};
  g.c = {d_qkv, ld, 0, false};
  attn_gemm<T, false, false>(dev, g, B, T_len, op, "dQ = scale dS K");
  // dK (L,dh) = scale dS^T Q
  g.b = {qkv, ld, 0, false};
  g.c = {d_qkv, ld, D, false};
  attn_gemm<T, true, false>(dev, g, B, T_len, op, "dK = scale dS^T Q");
  // dV (L,dh) = P^T dO
  g.alpha = T(1);
  g.a = {probs, 0, 0, true};
  g.b = {d_out, D, 0, false};
  g.c = {d_qkv, ld, 2 * D, false};
  attn_gemm<T, true, false>(dev, g, B, T_len, op, "dV = P^T dO");
}

}  // namespace kernels

MTREC_CUDA_KERNEL(packed_starts)
MTREC_CUDA_KERNEL(padded_starts)
MTREC_CUDA_KERNEL(sequence_pool_forward)
MTREC_CUDA_KERNEL(sequence_pool_backward)
MTREC_CUDA_KERNEL(pack_sequences)
MTREC_CUDA_KERNEL(unpack_sequences)
MTREC_CUDA_KERNEL(mask_padded_rows)
MTREC_CUDA_KERNEL(padded_rows_are_zero)
MTREC_CUDA_KERNEL(positional_add)
MTREC_CUDA_KERNEL(positional_add_backward)
MTREC_CUDA_KERNEL(gemm_strided_batched)
MTREC_CUDA_KERNEL(attention_forward)
MTREC_CUDA_KERNEL(attention_backward)

}  // namespace mtrec

#undef MTREC_SEQ_GRID_STRIDE
