// mtrec: CPU kernels — xsimd vectors, OpenMP over fixed chunks, packed GEMM.
//
// Same names and arguments as kernels/reference.hpp, with the `cpu` tag.
// Tails shorter than a vector are padded into a full vector, so every element
// goes through the same vector math whatever the chunking: results do not
// depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "mtrec/core/parallel.hpp"
#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu_gemm.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/eigen.hpp"
#include "mtrec/kernels/reference.hpp"

namespace mtrec {
namespace kernels {

namespace simd {

template <class T>
using batch = xsimd::batch<T>;

// Elements per chunk of an elementwise kernel, a multiple of every vector
// width. Chunk bounds depend on n only (reductions sum per-chunk partials).
constexpr index_t kChunk = 16384;

// Streaming kernels fork only above kForkElems elements (1 MB of floats,
// tens of microseconds of work): the fork itself costs 5-90 us (see
// kForkFlops in core/parallel.hpp).
constexpr index_t kForkElems = index_t(1) << 18;
inline bool worth_forking(index_t elems) { return double(elems) >= double(kForkElems) * mtrec::detail::fork_scale(); }

// parallel_chunks, forking only when `work` elements are worth it.
template <class Fn>
inline void chunks(index_t work, index_t n, index_t chunk, Fn&& fn) {
  parallel_chunks(n, chunk, std::forward<Fn>(fn), worth_forking(work));
}

// "Every value was finite", cleared by any chunk (on any thread) that saw one
// that was not: an atomic, written only on that rare path.
class FiniteFlag {
 public:
  void clear() { ok_.store(false, std::memory_order_relaxed); }
  bool get() const { return ok_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> ok_{true};
};

template <class T>
inline batch<T> load_partial(const T* p, index_t r) {
  alignas(64) T buf[batch<T>::size] = {};
  for (index_t j = 0; j < r; ++j) buf[j] = p[j];
  return batch<T>::load_aligned(buf);
}
template <class T>
inline void store_partial(T* p, const batch<T>& v, index_t r) {
  alignas(64) T buf[batch<T>::size];
  v.store_aligned(buf);
  for (index_t j = 0; j < r; ++j) p[j] = buf[j];
}

// y[i] = f(in0[i], in1[i], ...) over [0, n), vectorised, parallel over chunks.
template <class T, class F, class... In>
inline void map(T* y, index_t n, F f, const In*... in) {
  constexpr index_t W = batch<T>::size;
  chunks(n, n, kChunk, [&](index_t b, index_t e) {
    index_t i = b;
    for (; i + W <= e; i += W) f(batch<T>::load_unaligned(in + i)...).store_unaligned(y + i);
    if (i < e) store_partial(y + i, f(load_partial(in + i, e - i)...), e - i);
  });
}

template <class T>
inline T hsum(const batch<T>& v) {
  return xsimd::hadd(v);
}
template <class T>
inline T hmax(const batch<T>& v) {
  alignas(64) T buf[batch<T>::size];
  v.store_aligned(buf);
  T m = buf[0];
  for (std::size_t j = 1; j < batch<T>::size; ++j) m = buf[j] > m ? buf[j] : m;
  return m;
}

// Sum of a row, in vector lanes then across lanes (a fixed order).
template <class T>
inline T row_sum(const T* x, index_t n) {
  constexpr index_t W = batch<T>::size;
  batch<T> acc(T(0));
  index_t i = 0;
  for (; i + W <= n; i += W) acc += batch<T>::load_unaligned(x + i);
  if (i < n) acc += load_partial(x + i, n - i);
  return hsum(acc);
}

template <class T>
inline batch<T> gelu_value(const batch<T>& x, GeluMode mode) {
  if (mode == GeluMode::Erf) return T(0.5) * x * (T(1) + xsimd::erf(x * T(0.70710678118654752440)));
  const batch<T> u = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
  return T(0.5) * x * (T(1) + xsimd::tanh(u));
}
template <class T>
inline batch<T> gelu_derivative(const batch<T>& x, GeluMode mode) {
  if (mode == GeluMode::Erf) {
    const batch<T> cdf = T(0.5) * (T(1) + xsimd::erf(x * T(0.70710678118654752440)));
    const batch<T> pdf = T(0.39894228040143267794) * xsimd::exp(T(-0.5) * x * x);
    return cdf + x * pdf;
  }
  const batch<T> u = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
  const batch<T> t = xsimd::tanh(u);
  const batch<T> du = T(0.79788456080286535588) * (T(1) + T(3 * 0.044715) * x * x);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
}

}  // namespace simd

// ---- GEMM ------------------------------------------------------------------

namespace detail {
template <class T>
using StridedMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using StridedMutMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T, class LhsExpr, class RhsExpr>
inline void gemm_assign(StridedMutMap<T> c, const LhsExpr& a, const RhsExpr& b, T alpha, T beta) {
  if (beta == T(0)) {
    if (alpha == T(1))
      c.noalias() = a * b;
    else
      c.noalias() = alpha * (a * b);
  } else {
    if (beta != T(1)) c *= beta;
    if (alpha == T(1))
      c.noalias() += a * b;
    else
      c.noalias() += alpha * (a * b);
  }
}

// One block of C, computed by Eigen single-threaded.
template <class T>
inline void gemm_block(Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A, index_t lda,
                       const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  StridedMutMap<T> c(C, M, N, Eigen::OuterStride<>(ldc));
  if (K == 0) {
    if (beta == T(0))
      c.setZero();
    else
      c *= beta;
    return;
  }
  // op(A) is (M,K): stored (M,K) when N, (K,M) when T.
  const StridedMap<T> a(A, ta == Trans::N ? M : K, ta == Trans::N ? K : M, Eigen::OuterStride<>(lda));
  const StridedMap<T> b(B, tb == Trans::N ? K : N, tb == Trans::N ? N : K, Eigen::OuterStride<>(ldb));
  if (ta == Trans::N && tb == Trans::N) gemm_assign<T>(c, a, b, alpha, beta);
  if (ta == Trans::N && tb == Trans::T) gemm_assign<T>(c, a, b.transpose(), alpha, beta);
  if (ta == Trans::T && tb == Trans::N) gemm_assign<T>(c, a.transpose(), b, alpha, beta);
  if (ta == Trans::T && tb == Trans::T) gemm_assign<T>(c, a.transpose(), b.transpose(), alpha, beta);
}
}  // namespace detail

// C (M,N) = alpha * op(A) * op(B) + beta * C.
//
// Matrix-matrix shapes run our packed register-tile GEMM (kernels/cpu_gemm.hpp);
// its results do not depend on how C is split, so large products are simply
// cut into one block of rows (or columns) per thread. Products under
// kForkFlops (core/parallel.hpp) run on the calling thread.
//
// Matrix-vector shapes (one row, or fewer columns than half a vector) go to
// Eigen, whose GEMV streams A without packing. Eigen's blocking depends on the
// block size, so there the blocks are fixed by the shape: about
// kGemmBlockRows rows each (2 to 16 blocks, multiples of 16).
namespace detail {
constexpr index_t kGemmBlockRows = 256;
inline index_t gemm_block_extent(index_t extent, double flops) {
  if (!worth_forking_flops(flops)) return extent;
  const index_t blocks = std::min<index_t>(16, std::max<index_t>(2, extent / kGemmBlockRows));
  return std::max<index_t>(16, ((extent + blocks - 1) / blocks + 15) / 16 * 16);
}
}  // namespace detail

template <class T>
inline void gemm(cpu_t, Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A, index_t lda,
                 const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  if (M <= 0 || N <= 0) return;
  constexpr index_t W = simd::batch<T>::size;
  const double flops = 2.0 * double(M) * double(N) * double(K);
  const bool split_rows = M >= N;
  const index_t extent = split_rows ? M : N;
  const bool packed = M > 1 && 2 * N >= W;
  index_t block = extent;
  if (!packed) {
    block = detail::gemm_block_extent(extent, flops);
  } else if (worth_forking_flops(flops) && num_threads() > 1) {
    const index_t unit = split_rows ? gemm_detail::kMr : 2 * W;
    const index_t per_thread = (extent + num_threads() - 1) / num_threads();
    block = std::max(unit, (per_thread + unit - 1) / unit * unit);
  }
  parallel_chunks(extent, block, [&](index_t b, index_t e) {
    const index_t m = split_rows ? e - b : M, n = split_rows ? N : e - b;
    const T* a = !split_rows ? A : ta == Trans::N ? A + b * lda : A + b;
    const T* bb = split_rows ? B : tb == Trans::N ? B + b : B + b * ldb;
    T* c = split_rows ? C + b * ldc : C + b;
    if (packed)
      gemm_detail::gemm_block<T>(ta, tb, m, n, K, alpha, a, lda, bb, ldb, beta, c, ldc);
    else
      detail::gemm_block<T>(ta, tb, m, n, K, alpha, a, lda, bb, ldb, beta, c, ldc);
  });
}

// ---- bias and column sums --------------------------------------------------

// y (rows,cols) += b (cols)
template <class T>
inline void bias_add(cpu_t, T* y, const T* b, index_t rows, index_t cols) {
  constexpr index_t W = simd::batch<T>::size;
  simd::chunks(rows * cols, rows, std::max<index_t>(1, simd::kChunk / std::max<index_t>(cols, 1)), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      T* yr = y + r * cols;
      index_t c = 0;
      for (; c + W <= cols; c += W)
        (simd::batch<T>::load_unaligned(yr + c) + simd::batch<T>::load_unaligned(b + c)).store_unaligned(yr + c);
      for (; c < cols; ++c) yr[c] += b[c];
    }
  });
}

// db (cols) += sum over rows of dy (rows,cols); rows are summed in order, so
// columns are split across threads, never rows.
template <class T>
inline void column_sum_add(cpu_t, T* db, const T* dy, index_t rows, index_t cols) {
  constexpr index_t W = simd::batch<T>::size;
  const index_t col_block = std::max<index_t>(W * 4, (simd::kChunk / std::max<index_t>(rows, 1)) / W * W);
  simd::chunks(rows * cols, cols, col_block, [&](index_t c0, index_t c1) {
    index_t c = c0;
    for (; c + W <= c1; c += W) {
      simd::batch<T> acc(T(0));
      for (index_t r = 0; r < rows; ++r) acc += simd::batch<T>::load_unaligned(dy + r * cols + c);
      (acc + simd::batch<T>::load_unaligned(db + c)).store_unaligned(db + c);
    }
    for (; c < c1; ++c) {
      T acc = 0;
      for (index_t r = 0; r < rows; ++r) acc += dy[r * cols + c];
      db[c] += acc;
    }
  });
}

// ---- activations -------------------------------------------------------------

template <class T>
inline void relu_forward(cpu_t, T* y, const T* x, index_t n) {
  simd::map(y, n, [](const simd::batch<T>& v) { return xsimd::max(v, simd::batch<T>(T(0))); }, x);
}
template <class T>
inline void relu_backward(cpu_t, T* dx, const T* dy, const T* x, index_t n) {
  simd::map(
      dx, n,
      [](const simd::batch<T>& g, const simd::batch<T>& v) {
        return xsimd::select(v > simd::batch<T>(T(0)), g, simd::batch<T>(T(0)));
      },
      dy, x);
}

template <class T>
inline void gelu_forward(cpu_t, T* y, const T* x, index_t n, GeluMode mode = GeluMode::Erf) {
  simd::map(y, n, [mode](const simd::batch<T>& v) { return simd::gelu_value(v, mode); }, x);
}
template <class T>
inline void gelu_backward(cpu_t, T* dx, const T* dy, const T* x, index_t n, GeluMode mode = GeluMode::Erf) {
  simd::map(
      dx, n, [mode](const simd::batch<T>& g, const simd::batch<T>& v) { return g * simd::gelu_derivative(v, mode); },
      dy, x);
}

template <class T>
inline void sigmoid_forward(cpu_t, T* y, const T* x, index_t n) {
  simd::map(y, n, [](const simd::batch<T>& v) { return T(1) / (T(1) + xsimd::exp(-v)); }, x);
}
template <class T>
inline void sigmoid_backward(cpu_t, T* dx, const T* dy, const T* y, index_t n) {
  simd::map(
      dx, n, [](const simd::batch<T>& g, const simd::batch<T>& s) { return g * s * (T(1) - s); }, dy, y);
}

// ---- row kernels -------------------------------------------------------------

namespace detail {
inline index_t rows_per_chunk(index_t cols) { return std::max<index_t>(1, simd::kChunk / std::max<index_t>(cols, 1) / 4); }
}  // namespace detail

// One row of softmax; also used by the fused attention kernel.
template <class T>
inline void softmax_row(T* yr, const T* xr, index_t cols) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  B vmax(-std::numeric_limits<T>::infinity());
  index_t c = 0;
  for (; c + W <= cols; c += W) vmax = xsimd::max(vmax, B::load_unaligned(xr + c));
  T mx = simd::hmax(vmax);
  for (; c < cols; ++c) mx = xr[c] > mx ? xr[c] : mx;
  const B bmx(mx);
  B acc(T(0));
  c = 0;
  for (; c + W <= cols; c += W) {
    const B e = xsimd::exp(B::load_unaligned(xr + c) - bmx);
    e.store_unaligned(yr + c);
    acc += e;
  }
  if (c < cols) {
    // Padded lanes get exp(-inf) = 0 so they add nothing to the sum.
    alignas(64) T buf[W];
    for (index_t j = 0; j < W; ++j) buf[j] = c + j < cols ? xr[c + j] : -std::numeric_limits<T>::infinity();
    const B e = xsimd::exp(B::load_aligned(buf) - bmx);
    acc += e;
    simd::store_partial(yr + c, e, cols - c);
  }
  const B inv(T(1) / simd::hsum(acc));
  c = 0;
  for (; c + W <= cols; c += W) (B::load_unaligned(yr + c) * inv).store_unaligned(yr + c);
  for (; c < cols; ++c) yr[c] *= inv.get(0);
}

template <class T>
inline void softmax_forward(cpu_t, T* y, const T* x, index_t rows, index_t cols) {
  simd::chunks(rows * cols, rows, detail::rows_per_chunk(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) softmax_row(y + r * cols, x + r * cols, cols);
  });
}

template <class T>
inline void softmax_backward(cpu_t, T* dx, const T* dy, const T* y, index_t rows, index_t cols) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  simd::chunks(rows * cols, rows, detail::rows_per_chunk(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* g = dy + r * cols;
      const T* s = y + r * cols;
      T* d = dx + r * cols;
      B acc(T(0));
      index_t c = 0;
      for (; c + W <= cols; c += W) acc += B::load_unaligned(g + c) * B::load_unaligned(s + c);
      if (c < cols) acc += simd::load_partial(g + c, cols - c) * simd::load_partial(s + c, cols - c);
      const B dot(simd::hsum(acc));
      c = 0;
      for (; c + W <= cols; c += W)
        (B::load_unaligned(s + c) * (B::load_unaligned(g + c) - dot)).store_unaligned(d + c);
      if (c < cols)
        simd::store_partial(d + c, simd::load_partial(s + c, cols - c) * (simd::load_partial(g + c, cols - c) - dot),
                            cols - c);
    }
  });
}

template <class T>
inline void layernorm_forward(cpu_t, T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, index_t rows,
                              index_t cols, T eps) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  simd::chunks(rows * cols, rows, detail::rows_per_chunk(cols), [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      const T m = simd::row_sum(xr, cols) / T(cols);
      const B bm(m);
      B acc(T(0));
      index_t c = 0;
      for (; c + W <= cols; c += W) {
        const B d = B::load_unaligned(xr + c) - bm;
        acc += d * d;
      }
      T var = simd::hsum(acc);
      for (; c < cols; ++c) var += (xr[c] - m) * (xr[c] - m);
      const T rs = T(1) / std::sqrt(var / T(cols) + eps);
      const B brs(rs);
      c = 0;
      for (; c + W <= cols; c += W)
        ((B::load_unaligned(xr + c) - bm) * brs * B::load_unaligned(gamma + c) + B::load_unaligned(beta + c))
            .store_unaligned(yr + c);
      for (; c < cols; ++c) yr[c] = (xr[c] - m) * rs * gamma[c] + beta[c];
      mean[r] = m;
      rstd[r] = rs;
    }
  });
}

namespace detail {
// layernorm_backward works on at most kLnParts chunks of rows (their bounds
// depend on the row and column counts only) and on column tiles of
// ln_tile<T>() values, so each chunk's partial dgamma/dbeta fit in a stack
// array (kLnParts * 2 * 1 KiB = 64 KiB).
constexpr index_t kLnParts = 32;
template <class T>
constexpr index_t ln_tile() {
  return index_t(1024 / sizeof(T));  // 256 floats, 128 doubles: a multiple of every vector width
}

// dx for one row: two passes over the row (sums, then dx). With Acc (the
// fused path: the whole row is one tile) the second pass also adds dy * xhat
// and dy into the chunk's partials pg and pb.
template <bool Acc, class T>
inline void layernorm_backward_row(T* d, const T* xr, const T* g, const T* gamma, T mean, T rstd, index_t cols, T* pg,
                                   T* pb) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  const B bm(mean), brs(rstd);
  B acc_g(T(0)), acc_gx(T(0));
  index_t c = 0;
  for (; c + W <= cols; c += W) {
    const B xhat = (B::load_unaligned(xr + c) - bm) * brs;
    const B gg = B::load_unaligned(g + c) * B::load_unaligned(gamma + c);
    acc_g += gg;
    acc_gx += gg * xhat;
  }
  T sg = simd::hsum(acc_g), sgx = simd::hsum(acc_gx);
  for (index_t cc = c; cc < cols; ++cc) {
    const T xhat = (xr[cc] - mean) * rstd;
    const T gg = g[cc] * gamma[cc];
    sg += gg;
    sgx += gg * xhat;
  }
  const B mg(sg / T(cols)), mgx(sgx / T(cols));
  c = 0;
  for (; c + W <= cols; c += W) {
    const B xhat = (B::load_unaligned(xr + c) - bm) * brs;
    const B gy = B::load_unaligned(g + c);
    (brs * (gy * B::load_unaligned(gamma + c) - mg - xhat * mgx)).store_unaligned(d + c);
    if (Acc) {
      (B::load_aligned(pg + c) + gy * xhat).store_aligned(pg + c);
      (B::load_aligned(pb + c) + gy).store_aligned(pb + c);
    }
  }
  for (; c < cols; ++c) {
    const T xhat = (xr[c] - mean) * rstd;
    d[c] = rstd * (g[c] * gamma[c] - mg.get(0) - xhat * mgx.get(0));
    if (Acc) {
      pg[c] += g[c] * xhat;
      pb[c] += g[c];
    }
  }
}
}  // namespace detail

// dx written; dgamma, dbeta accumulated. Rows are cut into at most
// detail::kLnParts chunks (bounds from rows and cols only). Each chunk sums
// dy * xhat and dy over its rows, row by row, into per-chunk partials
// (contiguous, vectorised over the columns); the partials are then added in
// chunk order, so the result is the same for every thread count. When a row
// fits one column tile the partial sums ride along the dx pass; wider rows
// take one more pass per column tile.
template <class T>
inline void layernorm_backward(cpu_t, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                               const T* rstd, const T* gamma, index_t rows, index_t cols) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  constexpr index_t kTile = detail::ln_tile<T>();
  constexpr index_t kParts = detail::kLnParts;
  static_assert(kTile % W == 0, "the column tile must be a multiple of the vector width");
  if (rows <= 0 || cols <= 0) return;
  const index_t chunk = std::max(detail::rows_per_chunk(cols), (rows + kParts - 1) / kParts);
  const index_t n_chunks = (rows + chunk - 1) / chunk;
  alignas(64) T part[kParts][2][kTile];
  const bool fused = cols <= kTile;
  for (index_t t0 = 0; t0 < cols; t0 += kTile) {
    const index_t tw = std::min(kTile, cols - t0);
    const index_t twv = (tw + W - 1) / W * W;  // partial rows padded to whole vectors
    simd::chunks(rows * cols, rows, chunk, [&](index_t r0, index_t r1) {
      T* pg = part[r0 / chunk][0];
      T* pb = part[r0 / chunk][1];
      std::fill(pg, pg + twv, T(0));
      std::fill(pb, pb + twv, T(0));
      for (index_t r = r0; r < r1; ++r) {
        const T* xr = x + r * cols;
        const T* g = dy + r * cols;
        if (fused) {
          detail::layernorm_backward_row<true>(dx + r * cols, xr, g, gamma, mean[r], rstd[r], cols, pg, pb);
          continue;
        }
        if (t0 == 0)
          detail::layernorm_backward_row<false>(dx + r * cols, xr, g, gamma, mean[r], rstd[r], cols, pg, pb);
        const B bm(mean[r]), brs(rstd[r]);
        for (index_t c = 0; c < twv; c += W) {
          const index_t left = tw - c;
          const B gy = left >= W ? B::load_unaligned(g + t0 + c) : simd::load_partial(g + t0 + c, left);
          const B xv = left >= W ? B::load_unaligned(xr + t0 + c) : simd::load_partial(xr + t0 + c, left);
          (B::load_aligned(pg + c) + gy * ((xv - bm) * brs)).store_aligned(pg + c);
          (B::load_aligned(pb + c) + gy).store_aligned(pb + c);
        }
      }
    });
    // Chunk partials, in chunk order, then into the accumulated gradients.
    for (index_t c = 0; c < twv; c += W) {
      B sg = B::load_aligned(part[0][0] + c), sb = B::load_aligned(part[0][1] + c);
      for (index_t k = 1; k < n_chunks; ++k) {
        sg += B::load_aligned(part[k][0] + c);
        sb += B::load_aligned(part[k][1] + c);
      }
      const index_t left = tw - c;
      if (left >= W) {
        (B::load_unaligned(dgamma + t0 + c) + sg).store_unaligned(dgamma + t0 + c);
        (B::load_unaligned(dbeta + t0 + c) + sb).store_unaligned(dbeta + t0 + c);
      } else {
        simd::store_partial(dgamma + t0 + c, simd::load_partial(dgamma + t0 + c, left) + sg, left);
        simd::store_partial(dbeta + t0 + c, simd::load_partial(dbeta + t0 + c, left) + sb, left);
      }
    }
  }
}

// ---- dropout, residual, Adam ------------------------------------------------

namespace detail {
// Vector form of reference's dropout_keep for float lanes (int32 hashing).
template <class T>
inline void dropout_apply(T* y, const T* x, index_t n, double p, std::uint64_t key, std::uint64_t offset) {
  const std::uint32_t th = kernels::detail::dropout_threshold(p);
  const T scale = T(1.0 / (1.0 - p));
  if constexpr (std::is_same<T, float>::value) {
    using BU = xsimd::batch<std::uint32_t>;
    using BI = xsimd::batch<std::int32_t>;
    using BF = xsimd::batch<float>;
    constexpr index_t W = BF::size;
    static_assert(BU::size == BF::size, "float and uint32 lanes must match");
    const BU khi(static_cast<std::uint32_t>(key >> 32)), klo(static_cast<std::uint32_t>(key));
    alignas(64) std::uint32_t lane[W];
    for (index_t j = 0; j < W; ++j) lane[j] = static_cast<std::uint32_t>(j);
    const BU lanes = BU::load_aligned(lane);
    auto hash = [](BU h) {
      h ^= h >> 16;
      h *= BU(0x7FEB352Du);
      h ^= h >> 15;
      h *= BU(0x846CA68Bu);
      h ^= h >> 16;
      return h;
    };
    const BF bth(static_cast<float>(th));
    const BF bscale(scale), zero(0.f);
    simd::chunks(n, n, simd::kChunk, [&](index_t b, index_t e) {
      for (index_t i = b; i < e; i += W) {
        const BU ctr = BU(static_cast<std::uint32_t>(offset + std::uint64_t(i))) + lanes;
        const BU h = hash(hash(ctr ^ khi) ^ klo);
        // 24-bit values are exact in float, so the float compare equals the
        // integer compare of the reference.
        const BF h24 = xsimd::to_float(xsimd::bitwise_cast<BI>(h >> 8));
        const auto keep = h24 >= bth;
        const index_t r = std::min<index_t>(W, e - i);
        const BF v = r == W ? BF::load_unaligned(x + i) : simd::load_partial(x + i, r);
        const BF out = xsimd::select(keep, v * bscale, zero);
        if (r == W)
          out.store_unaligned(y + i);
        else
          simd::store_partial(y + i, out, r);
      }
    });
  } else {
    simd::chunks(n, n, simd::kChunk, [&](index_t b, index_t e) {
      for (index_t i = b; i < e; ++i)
        y[i] = kernels::detail::dropout_keep(key, offset + std::uint64_t(i), th) ? x[i] * scale : T(0);
    });
  }
}
}  // namespace detail

template <class T>
inline void dropout_forward(cpu_t, T* y, const T* x, index_t n, double p, std::uint64_t key, std::uint64_t offset = 0) {
  detail::dropout_apply(y, x, n, p, key, offset);
}
template <class T>
inline void dropout_backward(cpu_t, T* dx, const T* dy, index_t n, double p, std::uint64_t key,
                             std::uint64_t offset = 0) {
  detail::dropout_apply(dx, dy, n, p, key, offset);
}

template <class T>
inline void residual_add(cpu_t, T* y, const T* a, const T* b, index_t n) {
  simd::map(y, n, [](const simd::batch<T>& u, const simd::batch<T>& v) { return u + v; }, a, b);
}

template <class T>
inline bool adam_update(cpu_t, T* w, T* m, T* v, const T* g, index_t n, const AdamStep<T>& s) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  const B b1(s.beta1), b2(s.beta2), c1(T(1) - s.beta1), c2(T(1) - s.beta2), eps(s.eps);
  const B step(s.lr / s.bias_correction1), inv_sqrt_bc2(T(1) / std::sqrt(s.bias_correction2));
  const B wd(s.weight_decay), decay(T(1) - s.lr * s.weight_decay);
  auto one = [&](B wv, B mv, B vv, B gv, B& wo, B& mo, B& vo) {
    if (s.decoupled)
      wv = wv * decay;
    else
      gv = gv + wd * wv;
    mo = b1 * mv + c1 * gv;
    vo = b2 * vv + c2 * gv * gv;
    wo = wv - step * mo / (xsimd::sqrt(vo) * inv_sqrt_bc2 + eps);
  };
  simd::FiniteFlag finite;
  simd::chunks(n, n, simd::kChunk, [&](index_t b, index_t e) {
    index_t i = b;
    typename B::batch_bool_type bad(false);
    for (; i + W <= e; i += W) {
      B wo, mo, vo;
      one(B::load_unaligned(w + i), B::load_unaligned(m + i), B::load_unaligned(v + i), B::load_unaligned(g + i), wo,
          mo, vo);
      wo.store_unaligned(w + i);
      mo.store_unaligned(m + i);
      vo.store_unaligned(v + i);
      bad = bad | !xsimd::isfinite(wo);
    }
    if (i < e) {
      const index_t r = e - i;
      B wo, mo, vo;
      one(simd::load_partial(w + i, r), simd::load_partial(m + i, r), simd::load_partial(v + i, r),
          simd::load_partial(g + i, r), wo, mo, vo);  // padded lanes compute 0: finite
      simd::store_partial(w + i, wo, r);
      simd::store_partial(m + i, mo, r);
      simd::store_partial(v + i, vo, r);
      bad = bad | !xsimd::isfinite(wo);
    }
    if (xsimd::any(bad)) finite.clear();
  });
  return finite.get();
}

// ---- SGD, squared norm, scale ----------------------------------------------

template <class T>
inline bool sgd_update(cpu_t, T* w, T* buf, const T* g, index_t n, T lr, T momentum, T weight_decay, bool nesterov) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  const B blr(lr), bmu(momentum), bwd(weight_decay);
  // Decided once, outside the loop: with momentum == 0 `buf` may be null.
  const bool use_buf = momentum != T(0);
  auto one = [&](B wv, B bv, B gv, B& wo, B& bo) {
    gv = gv + bwd * wv;
    if (use_buf) {
      bo = bmu * bv + gv;
      gv = nesterov ? gv + bmu * bo : bo;
    }
    wo = wv - blr * gv;
  };
  simd::FiniteFlag finite;
  simd::chunks(n, n, simd::kChunk, [&](index_t b, index_t e) {
    index_t i = b;
    const B zero(T(0));
    typename B::batch_bool_type bad(false);
    for (; i + W <= e; i += W) {
      B wo, bo = zero;  // bo is only written when use_buf
      one(B::load_unaligned(w + i), use_buf ? B::load_unaligned(buf + i) : zero, B::load_unaligned(g + i), wo, bo);
      wo.store_unaligned(w + i);
      if (use_buf) bo.store_unaligned(buf + i);
      bad = bad | !xsimd::isfinite(wo);
    }
    if (i < e) {
      const index_t r = e - i;
      B wo, bo = zero;  // bo is only written when use_buf
      one(simd::load_partial(w + i, r), use_buf ? simd::load_partial(buf + i, r) : zero, simd::load_partial(g + i, r),
          wo, bo);
      simd::store_partial(w + i, wo, r);
      if (use_buf) simd::store_partial(buf + i, bo, r);
      bad = bad | !xsimd::isfinite(wo);
    }
    if (xsimd::any(bad)) finite.clear();
  });
  return finite.get();
}

// True when every x[i] over [0, n) is finite. v - v is 0 for a finite v and
// NaN for NaN or +-Inf, so one subtraction and one add per vector: a pass at
// memory speed. Chunks run in parallel only when n is worth a fork, so a
// call per embedding row costs no thread wake-up.
template <class T>
inline bool all_finite(cpu_t, const T* x, index_t n) {
  using B = simd::batch<T>;
  constexpr index_t W = B::size;
  auto span = [x](index_t b, index_t e) {
    B a0(T(0)), a1(T(0));
    index_t i = b;
    for (; i + 2 * W <= e; i += 2 * W) {
      const B u = B::load_unaligned(x + i), v = B::load_unaligned(x + i + W);
      a0 += u - u;
      a1 += v - v;
    }
    T tail = T(0);
    for (; i < e; ++i) tail += x[i] - x[i];
    const B s = a0 + a1;
    return !xsimd::any(xsimd::isnan(s)) && tail == tail;  // (not s != s: xsimd compares ordered)
  };
  if (n <= simd::kChunk) return span(0, n);
  simd::FiniteFlag finite;
  simd::chunks(n, n, simd::kChunk, [&](index_t b, index_t e) {
    if (!span(b, e)) finite.clear();
  });
  return finite.get();
}

// Returns sum of x[i]^2 over [0, n) in double (floats are widened on load).
// Each chunk of simd::kChunk elements gives one partial, summed in double
// lanes then across lanes; partials are added in chunk order. Chunks go to
// threads in groups of kPartials whose partials live on the stack, so the
// result is the same for every thread count and nothing is allocated.
template <class T>
inline double sum_squares(cpu_t, const T* x, index_t n) {
  using D = simd::batch<double>;
  constexpr index_t W = D::size;
  constexpr index_t kPartials = 64;
  double partial[kPartials];
  double total = 0;
  const index_t n_chunks = (n + simd::kChunk - 1) / simd::kChunk;
  for (index_t c0 = 0; c0 < n_chunks; c0 += kPartials) {
    const index_t nc = std::min(kPartials, n_chunks - c0);
    const T* xs = x + c0 * simd::kChunk;
    const index_t len = std::min(n - c0 * simd::kChunk, nc * simd::kChunk);
    simd::chunks(len, len, simd::kChunk, [&](index_t b, index_t e) {
      D acc(0.0);
      index_t i = b;
      for (; i + W <= e; i += W) {
        const D v = D::load_unaligned(xs + i);
        acc += v * v;
      }
      double s = simd::hsum(acc);
      for (; i < e; ++i) s += double(xs[i]) * double(xs[i]);
      partial[b / simd::kChunk] = s;
    });
    for (index_t c = 0; c < nc; ++c) total += partial[c];
  }
  return total;
}

template <class T>
inline void scale(cpu_t, T* y, const T* x, index_t n, T alpha) {
  const simd::batch<T> a(alpha);
  simd::map(y, n, [a](const simd::batch<T>& v) { return a * v; }, x);
}

template <class T>
inline void copy(cpu_t, T* y, const T* x, index_t n) {
  if (n > 0) std::memcpy(static_cast<void*>(y), static_cast<const void*>(x), sizeof(T) * std::size_t(n));
}

template <class T>
inline void fill(cpu_t, T* y, index_t n, T value) {
  if (n > 0 && value == T(0) && !std::signbit(value))
    std::memset(static_cast<void*>(y), 0, sizeof(T) * std::size_t(n));
  else
    std::fill(y, y + n, value);
}

template <class T>
inline void axpy(cpu_t, T* y, const T* x, index_t n, T alpha) {
  const simd::batch<T> a(alpha);
  simd::map(y, n, [a](const simd::batch<T>& yv, const simd::batch<T>& xv) { return yv + a * xv; }, y, x);
}

}  // namespace kernels
}  // namespace mtrec
