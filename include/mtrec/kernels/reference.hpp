// mtrec: scalar reference kernels.
//
// Plain loops, one element at a time, written for clarity rather than speed.
// They are the ground truth the xsimd/OpenMP kernels in kernels/cpu.hpp are
// tested against, and they share their names and argument order:
// outputs first, then inputs, then sizes and options.
#pragma once

#include <cmath>
#include <cstdint>

#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/device.hpp"

namespace mtrec {
namespace kernels {

namespace detail {
template <class T>
MTREC_HD inline T gelu_value(T x, GeluMode mode) {
  if (mode == GeluMode::Erf) return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
  const T u = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}
template <class T>
MTREC_HD inline T gelu_derivative(T x, GeluMode mode) {
  if (mode == GeluMode::Erf) {
    const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
    const T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
    return cdf + x * pdf;
  }
  const T u = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
  const T t = std::tanh(u);
  const T du = T(0.79788456080286535588) * (T(1) + T(3) * T(0.044715) * x * x);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
}
// Dropout keeps element `counter` of the stream `key` iff this returns true.
// Shared by every backend so that masks agree bit for bit.
MTREC_HD inline bool dropout_keep(std::uint64_t key, std::uint64_t counter, std::uint32_t threshold24) {
  std::uint32_t h = hash32(static_cast<std::uint32_t>(counter) ^ static_cast<std::uint32_t>(key >> 32));
  h = hash32(h ^ static_cast<std::uint32_t>(key));
  return static_cast<std::int32_t>(h >> 8) >= static_cast<std::int32_t>(threshold24);
}
// p in [0, 1) -> a 24-bit threshold: an element is dropped with probability p.
inline std::uint32_t dropout_threshold(double p) { return static_cast<std::uint32_t>(p * 16777216.0); }
}  // namespace detail

// C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C; row-major, leading
// dimensions lda/ldb/ldc. Accumulates in double.
template <class T>
inline void gemm(reference_t, Trans ta, Trans tb, index_t M, index_t N, index_t K, T alpha, const T* A,
                 index_t lda, const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      double acc = 0;
      for (index_t k = 0; k < K; ++k) {
        const T a = ta == Trans::N ? A[i * lda + k] : A[k * lda + i];
        const T b = tb == Trans::N ? B[k * ldb + j] : B[j * ldb + k];
        acc += double(a) * double(b);
      }
      const double prev = beta == T(0) ? 0.0 : double(beta) * double(C[i * ldc + j]);
      C[i * ldc + j] = T(double(alpha) * acc + prev);
    }
}

// y (rows,cols) += b (cols) broadcast over rows
template <class T>
inline void bias_add(reference_t, T* y, const T* b, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) y[r * cols + c] += b[c];
}

// db (cols) += sum over rows of dy (rows,cols)
template <class T>
inline void column_sum_add(reference_t, T* db, const T* dy, index_t rows, index_t cols) {
  for (index_t c = 0; c < cols; ++c) {
    double acc = 0;
    for (index_t r = 0; r < rows; ++r) acc += dy[r * cols + c];
    db[c] += T(acc);
  }
}

// y (n) = max(x, 0)
template <class T>
inline void relu_forward(reference_t, T* y, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}
// dx (n) = dy * [x > 0]
template <class T>
inline void relu_backward(reference_t, T* dx, const T* dy, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
}

// y (n) = gelu(x)
template <class T>
inline void gelu_forward(reference_t, T* y, const T* x, index_t n, GeluMode mode = GeluMode::Erf) {
  for (index_t i = 0; i < n; ++i) y[i] = detail::gelu_value(x[i], mode);
}
// dx (n) = dy * gelu'(x)
template <class T>
inline void gelu_backward(reference_t, T* dx, const T* dy, const T* x, index_t n, GeluMode mode = GeluMode::Erf) {
  for (index_t i = 0; i < n; ++i) dx[i] = dy[i] * detail::gelu_derivative(x[i], mode);
}

// y (n) = 1 / (1 + exp(-x))
template <class T>
inline void sigmoid_forward(reference_t, T* y, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i) y[i] = T(1) / (T(1) + std::exp(-x[i]));
}
// dx (n) = dy * y * (1 - y), from the saved output y
template <class T>
inline void sigmoid_backward(reference_t, T* dx, const T* dy, const T* y, index_t n) {
  for (index_t i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (T(1) - y[i]);
}

// y (rows,cols) = softmax of each row of x, max-subtracted
template <class T>
inline void softmax_forward(reference_t, T* y, const T* x, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T mx = xr[0];
    for (index_t c = 1; c < cols; ++c) mx = xr[c] > mx ? xr[c] : mx;
    double sum = 0;
    for (index_t c = 0; c < cols; ++c) sum += (yr[c] = std::exp(xr[c] - mx));
    const T inv = T(1.0 / sum);
    for (index_t c = 0; c < cols; ++c) yr[c] *= inv;
  }
}
// dx (rows,cols) = y * (dy - sum(dy * y)) per row, from the saved output y
template <class T>
inline void softmax_backward(reference_t, T* dx, const T* dy, const T* y, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (index_t c = 0; c < cols; ++c) dot += double(dy[r * cols + c]) * y[r * cols + c];
    for (index_t c = 0; c < cols; ++c) dx[r * cols + c] = y[r * cols + c] * (dy[r * cols + c] - T(dot));
  }
}

// y (rows,cols) = (x - mean) * rstd * gamma + beta per row; saves mean and
// rstd (rows) for the backward. Biased variance, as PyTorch.
template <class T>
inline void layernorm_forward(reference_t, T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                              index_t rows, index_t cols, T eps) {
  for (index_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    double m = 0;
    for (index_t c = 0; c < cols; ++c) m += xr[c];
    m /= double(cols);
    double var = 0;
    for (index_t c = 0; c < cols; ++c) var += (xr[c] - m) * (xr[c] - m);
    var /= double(cols);
    const double rs = 1.0 / std::sqrt(var + double(eps));
    for (index_t c = 0; c < cols; ++c) y[r * cols + c] = T((xr[c] - m) * rs) * gamma[c] + beta[c];
    mean[r] = T(m);
    rstd[r] = T(rs);
  }
}
// dx (rows,cols) written; dgamma, dbeta (cols) accumulated.
template <class T>
inline void layernorm_backward(reference_t, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                               const T* rstd, const T* gamma, index_t rows, index_t cols) {
  for (index_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    const T* dyr = dy + r * cols;
    double mean_g = 0, mean_gx = 0;
    for (index_t c = 0; c < cols; ++c) {
      const double xhat = (double(xr[c]) - mean[r]) * rstd[r];
      const double g = double(dyr[c]) * gamma[c];
      mean_g += g;
      mean_gx += g * xhat;
    }
    mean_g /= double(cols);
    mean_gx /= double(cols);
    for (index_t c = 0; c < cols; ++c) {
      const double xhat = (double(xr[c]) - mean[r]) * rstd[r];
      const double g = double(dyr[c]) * gamma[c];
      dx[r * cols + c] = T(double(rstd[r]) * (g - mean_g - xhat * mean_gx));
    }
  }
  for (index_t c = 0; c < cols; ++c) {
    double sg = 0, sb = 0;
    for (index_t r = 0; r < rows; ++r) {
      const double xhat = (double(x[r * cols + c]) - mean[r]) * rstd[r];
      sg += double(dy[r * cols + c]) * xhat;
      sb += dy[r * cols + c];
    }
    dgamma[c] += T(sg);
    dbeta[c] += T(sb);
  }
}

// y (n) = x * keep / (1 - p); element i is kept by detail::dropout_keep(key, offset + i)
template <class T>
inline void dropout_forward(reference_t, T* y, const T* x, index_t n, double p, std::uint64_t key,
                            std::uint64_t offset = 0) {
  const std::uint32_t th = detail::dropout_threshold(p);
  const T scale = T(1.0 / (1.0 - p));
  for (index_t i = 0; i < n; ++i)
    y[i] = detail::dropout_keep(key, offset + std::uint64_t(i), th) ? x[i] * scale : T(0);
}
// dx (n) = dy * keep / (1 - p), the same mask regenerated from the counter
template <class T>
inline void dropout_backward(reference_t, T* dx, const T* dy, index_t n, double p, std::uint64_t key,
                             std::uint64_t offset = 0) {
  dropout_forward(reference, dx, dy, n, p, key, offset);
}

// y (n) = a + b (y may alias a or b)
template <class T>
inline void residual_add(reference_t, T* y, const T* a, const T* b, index_t n) {
  for (index_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

// One Adam / AdamW step on n weights, in PyTorch's formulation:
//   g' = g + wd * w            (Adam with L2)      | w *= 1 - lr * wd   (AdamW)
//   m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
//   w -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
template <class T>
// Returns true when every updated weight is finite (the trainer's check that
// an update did not overflow, at no extra pass over the weights).
inline bool adam_update(reference_t, T* w, T* m, T* v, const T* g, index_t n, const AdamStep<T>& s) {
  const T step = s.lr / s.bias_correction1;
  const T inv_sqrt_bc2 = T(1) / std::sqrt(s.bias_correction2);
  bool finite = true;
  for (index_t i = 0; i < n; ++i) {
    T grad = g[i];
    if (s.decoupled)
      w[i] *= T(1) - s.lr * s.weight_decay;
    else
      grad += s.weight_decay * w[i];
    m[i] = s.beta1 * m[i] + (T(1) - s.beta1) * grad;
    v[i] = s.beta2 * v[i] + (T(1) - s.beta2) * grad * grad;
    w[i] -= step * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + s.eps);
    finite = finite && std::isfinite(w[i]);
  }
  return finite;
}

// One SGD step on n weights, torch.optim.SGD with dampening 0:
//   g' = g + wd * w
//   momentum != 0:  buf = momentum * buf + g';  g' = nesterov ? g' + momentum * buf : buf
//   w -= lr * g'
// With momentum == 0 `buf` is never read or written and may be null.
// (torch starts buf as a copy of the first g'; momentum * 0 + g' is the same.)
// Returns true when every updated weight is finite.
template <class T>
inline bool sgd_update(reference_t, T* w, T* buf, const T* g, index_t n, T lr, T momentum, T weight_decay,
                       bool nesterov) {
  bool finite = true;
  for (index_t i = 0; i < n; ++i) {
    T grad = g[i] + weight_decay * w[i];
    if (momentum != T(0)) {
      buf[i] = momentum * buf[i] + grad;
      grad = nesterov ? grad + momentum * buf[i] : buf[i];
    }
    w[i] -= lr * grad;
    finite = finite && std::isfinite(w[i]);
  }
  return finite;
}

// True when every x[i] over [0, n) is finite (no NaN, no +-Inf).
template <class T>
inline bool all_finite(reference_t, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

// Returns sum of x[i]^2 over [0, n), accumulated in double.
template <class T>
inline double sum_squares(reference_t, const T* x, index_t n) {
  double acc = 0;
  for (index_t i = 0; i < n; ++i) acc += double(x[i]) * double(x[i]);
  return acc;
}

// y (n) = alpha * x (y may alias x)
template <class T>
inline void scale(reference_t, T* y, const T* x, index_t n, T alpha) {
  for (index_t i = 0; i < n; ++i) y[i] = alpha * x[i];
}

// y (n) = x (no overlap)
template <class T>
inline void copy(reference_t, T* y, const T* x, index_t n) {
  for (index_t i = 0; i < n; ++i) y[i] = x[i];
}

// y (n) = value
template <class T>
inline void fill(reference_t, T* y, index_t n, T value) {
  for (index_t i = 0; i < n; ++i) y[i] = value;
}

// y (n) += alpha * x
template <class T>
inline void axpy(reference_t, T* y, const T* x, index_t n, T alpha) {
  for (index_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace kernels
}  // namespace mtrec
