// mtrec: loss kernels — the numeric part of the training losses, and the
// output transforms of MultiTaskModel::predict.
//
// The public, checked losses live in layers/losses.hpp: they validate labels,
// weights and options, compute the denominator W = sum_i m_i w_i on the host,
// and call these kernels for the rest. A kernel checks nothing. Every loss
// kernel has the same contract:
//  * n rows; mask (n) optional (nullptr = every row labelled; mask[i] == 0:
//    row i is left out, its label is never read and its gradient is 0);
//    weights (n) optional (nullptr = 1);
//  * inv_weight_sum = 1 / W, precomputed by the caller. Row i's term and
//    gradient are scaled by s_i = w_i * inv_weight_sum, so the returned value
//    is the weighted mean sum_i m_i w_i l_i / W and the gradients are its
//    derivatives. inv_weight_sum = 0 gives a value of 0 and zero gradients
//    (for finite predictions);
//  * gradients (nullable: nullptr skips them) are WRITTEN into every element,
//    masked rows included; they must not overlap the inputs;
//  * row terms are computed and summed in double whatever T, with the
//    overflow-safe formulas below (exp is only taken of non-positive numbers).
// `reference` sums the rows in order. `cpu` cuts [0, n) into at most 64
// chunks whose bounds depend on n only, sums each chunk in order (chunks in
// parallel when worth it) and adds the chunk sums in chunk order: the result
// is bitwise identical for any thread count. Both compute every row the same
// way, so they agree up to the rounding of the sum (exactly for n <= 64).
// Nothing here allocates.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/reference.hpp"

namespace mtrec {
namespace kernels {

// What MultiTaskModel::predict writes for one task's output columns.
enum class OutputKind {
  Identity,  // the value itself (regression, the query vector of retrieval)
  Sigmoid,   // 1 / (1 + exp(-x)), in T (binary tasks)
  Softmax,   // softmax over the task's w columns (multi-class)
};

namespace detail {

// T in a parameter that must not take part in template argument deduction:
// gradient outputs and optional inputs are often passed as a bare nullptr.
template <class T>
struct loss_nondeduced {
  using type = T;
};
template <class T>
using loss_nd = typename loss_nondeduced<T>::type;

// log(1 + exp(z)) without overflow: exp is only taken of a non-positive number.
inline double loss_softplus(double z) { return std::max(z, 0.0) + std::log1p(std::exp(-std::fabs(z))); }

// 1 / (1 + exp(-z)) without overflow for either sign.
MTREC_HD inline double loss_sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

MTREC_HD inline bool loss_row_on(const std::uint8_t* mask, index_t i) { return mask == nullptr || mask[i] != 0; }

// Scale of row i's term and gradient: d value / d l_i = w_i / W.
template <class T>
MTREC_HD inline double loss_row_scale(const T* weights, index_t i, double inv_weight_sum) {
  return (weights ? double(weights[i]) : 1.0) * inv_weight_sum;
}

// sum over i in [0, n) of row(i), in double, in row order (reference).
template <class Row>
inline double loss_row_sum_serial(index_t n, Row&& row) {
  double total = 0;
  for (index_t i = 0; i < n; ++i) total += row(i);
  return total;
}

// sum over i in [0, n) of row(i), in double (cpu). [0, n) is cut into at most
// kChunks chunks whose bounds depend on n only; each chunk sums its rows in
// order and the chunk sums are added in chunk order, so the result does not
// depend on which thread ran which chunk. Chunks run in parallel when
// n * cost_per_row (rough flops) is worth a fork. row(i) must not throw.
template <class Row>
inline double loss_row_sum(index_t n, double cost_per_row, Row&& row) {
  constexpr index_t kChunks = 64;
  std::array<double, kChunks> partial{};
  if (n <= 0) return 0.0;
  const index_t chunk = (n + kChunks - 1) / kChunks;
  const bool parallel = double(n) * cost_per_row >= 32768.0;
  parallel_chunks(
      n, chunk,
      [&](index_t b, index_t e) {
        double s = 0;
        for (index_t i = b; i < e; ++i) s += row(i);
        partial[b / chunk] = s;
      },
      parallel);
  double total = 0;
  for (double p : partial) total += p;  // unused chunks hold +0.0: adding it is exact
  return total;
}

// ---- one row of each loss: writes its gradient, returns s_i * l_i ----------

template <class T>
inline double bce_row(T* dlogits, const T* logits, const T* labels, const std::uint8_t* mask, const T* weights,
                      index_t i, double inv_weight_sum) {
  if (!loss_row_on(mask, i)) {
    if (dlogits) dlogits[i] = T(0);
    return 0.0;
  }
  const double x = double(logits[i]), y = double(labels[i]);
  const double s = loss_row_scale(weights, i, inv_weight_sum);
  if (dlogits) dlogits[i] = T(s * (loss_sigmoid(x) - y));
  return s * (std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::fabs(x))));
}

// Regression rows: row_loss(r) and row_grad(r) of the residual r = p - y.
template <class T, class Loss, class Grad>
inline double regression_row(T* dpred, const T* pred, const T* target, const std::uint8_t* mask, const T* weights,
                             index_t i, double inv_weight_sum, Loss&& row_loss, Grad&& row_grad) {
  if (!loss_row_on(mask, i)) {
    if (dpred) dpred[i] = T(0);
    return 0.0;
  }
  const double res = double(pred[i]) - double(target[i]);
  const double s = loss_row_scale(weights, i, inv_weight_sum);
  if (dpred) dpred[i] = T(s * row_grad(res));
  return s * row_loss(res);
}

template <class T>
inline double mse_row(T* dpred, const T* pred, const T* target, const std::uint8_t* mask, const T* weights, index_t i,
                      double inv_weight_sum) {
  return regression_row(
      dpred, pred, target, mask, weights, i, inv_weight_sum, [](double r) { return r * r; },
      [](double r) { return 2.0 * r; });
}

template <class T>
inline double huber_row(T* dpred, const T* pred, const T* target, const std::uint8_t* mask, const T* weights,
                        index_t i, double inv_weight_sum, double delta) {
  return regression_row(
      dpred, pred, target, mask, weights, i, inv_weight_sum,
      [delta](double r) { return std::fabs(r) < delta ? 0.5 * r * r : delta * (std::fabs(r) - 0.5 * delta); },
      [delta](double r) { return std::fabs(r) <= delta ? r : (r > 0 ? delta : -delta); });
}

template <class T>
inline double softmax_cross_entropy_row(T* dlogits, const T* logits, const index_t* labels, const std::uint8_t* mask,
                                        const T* weights, index_t i, index_t C, double inv_weight_sum) {
  T* g = dlogits ? dlogits + i * C : nullptr;
  if (!loss_row_on(mask, i)) {
    if (g) std::fill(g, g + C, T(0));
    return 0.0;
  }
  const T* x = logits + i * C;
  const index_t y = labels[i];
  double m = double(x[0]);
  for (index_t c = 1; c < C; ++c) m = std::max(m, double(x[c]));
  double sum = 0;
  for (index_t c = 0; c < C; ++c) sum += std::exp(double(x[c]) - m);
  const double s = loss_row_scale(weights, i, inv_weight_sum);
  if (g) {
    const double s_over_sum = s / sum;
    for (index_t c = 0; c < C; ++c) g[c] = T(s_over_sum * std::exp(double(x[c]) - m));
    g[y] = T(s_over_sum * std::exp(double(x[y]) - m) - s);
  }
  // log(sum) - (x_y - m), not m + log(sum) - x_y: with logits ~1e4 the
  // latter loses the loss's low digits to cancellation.
  return s * (std::log(sum) - (double(x[y]) - m));
}

template <class T>
inline double bpr_row(T* dpos, T* dneg, const T* pos, const T* neg, const std::uint8_t* mask, const T* weights,
                      index_t i, double inv_weight_sum) {
  if (!loss_row_on(mask, i)) {
    if (dpos) dpos[i] = T(0);
    if (dneg) dneg[i] = T(0);
    return 0.0;
  }
  const double z = double(neg[i]) - double(pos[i]);
  const double s = loss_row_scale(weights, i, inv_weight_sum);
  const double g = s * loss_sigmoid(z);
  if (dpos) dpos[i] = T(-g);
  if (dneg) dneg[i] = T(g);
  return s * loss_softplus(z);
}

// Row i of the in-batch softmax over S (n,n); overwrites row i only (with
// dS_i when want_grad), and reads no other row.
template <class T>
inline double in_batch_softmax_row(T* S, const T* log_q_correction, const std::uint8_t* mask, const T* weights,
                                   index_t i, index_t n, double inv_weight_sum, bool want_grad) {
  T* Si = S + i * n;
  if (!loss_row_on(mask, i)) {
    if (want_grad) std::fill(Si, Si + n, T(0));
    return 0.0;
  }
  auto z = [&](index_t j) { return double(Si[j]) - (log_q_correction ? double(log_q_correction[j]) : 0.0); };
  double m = z(i);
  for (index_t j = 0; j < n; ++j)
    if (loss_row_on(mask, j)) m = std::max(m, z(j));
  double sum = 0;
  for (index_t j = 0; j < n; ++j)
    if (loss_row_on(mask, j)) sum += std::exp(z(j) - m);
  const double zii = z(i);
  const double s = loss_row_scale(weights, i, inv_weight_sum);
  if (want_grad) {
    // dS_ij = s (softmax_ij - [i == j]), 0 in masked columns.
    const double s_over_sum = s / sum;
    for (index_t j = 0; j < n; ++j) Si[j] = loss_row_on(mask, j) ? T(s_over_sum * std::exp(z(j) - m)) : T(0);
    Si[i] = T(s_over_sum * std::exp(zii - m) - s);
  }
  return s * (std::log(sum) - (zii - m));  // no cancellation against m (see softmax_cross_entropy_row)
}

// ESMM's CTCVR row: BCE on p = sigmoid(a) sigmoid(b) in log space, finite
// for large |a|, |b| (the formulas of MultiTaskModel::esmm_ctcvr_loss).
template <class T>
inline double esmm_row(T* d_ctr, T* d_cvr, const T* ctr, const T* cvr, const T* labels, const std::uint8_t* mask,
                       const T* weights, index_t i, double inv_weight_sum) {
  if (!loss_row_on(mask, i)) {
    if (d_ctr) d_ctr[i] = T(0);
    if (d_cvr) d_cvr[i] = T(0);
    return 0.0;
  }
  const double a = double(ctr[i]), b = double(cvr[i]);
  const double wi = loss_row_scale(weights, i, inv_weight_sum);
  const double sa = 1 / (1 + std::exp(-a)), sb = 1 / (1 + std::exp(-b));
  const double log_sa = -std::log1p(std::exp(-std::fabs(a))) - std::max(-a, 0.0);
  const double log_sb = -std::log1p(std::exp(-std::fabs(b))) - std::max(-b, 0.0);
  const double log_p = log_sa + log_sb;
  const double p = std::exp(log_p);
  const double log_1mp = std::log(-std::expm1(std::min(log_p, -1e-300)));
  const double yi = double(labels[i]);
  // dL/dlog_sx = -y + (1-y) p / (1-p);  dlog_sa/da = 1 - sa
  const double g = -yi + (1 - yi) * p / std::max(1 - p, 1e-300);
  if (d_cvr) d_cvr[i] = T(wi * g * (1 - sb));
  if (d_ctr) d_ctr[i] = T(wi * g * (1 - sa));
  return wi * -(yi * log_p + (1 - yi) * log_1mp);
}

// MultiTaskModel::predict's sigmoid, in T.
template <class T>
MTREC_HD inline T output_sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

}  // namespace detail

// ---- binary cross-entropy on logits --------------------------------------
// l_i = max(x, 0) - x y + log1p(exp(-|x|)), dl/dx = sigmoid(x) - y; labels
// may be soft (in [0, 1]). dlogits (n) written, or nullptr; returns the value.
template <class T>
inline double bce_with_logits_loss(reference_t, detail::loss_nd<T>* dlogits, const T* logits, const T* labels,
                                   const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                   double inv_weight_sum) {
  return detail::loss_row_sum_serial(
      n, [&](index_t i) { return detail::bce_row(dlogits, logits, labels, mask, weights, i, inv_weight_sum); });
}
template <class T>
inline double bce_with_logits_loss(cpu_t, detail::loss_nd<T>* dlogits, const T* logits, const T* labels,
                                   const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                   double inv_weight_sum) {
  return detail::loss_row_sum(
      n, 40.0, [&](index_t i) { return detail::bce_row(dlogits, logits, labels, mask, weights, i, inv_weight_sum); });
}

// ---- regression ------------------------------------------------------------
// mse: l_i = (p - y)^2, dl/dp = 2 (p - y). dpred (n) written, or nullptr.
template <class T>
inline double mse_loss(reference_t, detail::loss_nd<T>* dpred, const T* pred, const T* target,
                       const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return detail::loss_row_sum_serial(
      n, [&](index_t i) { return detail::mse_row(dpred, pred, target, mask, weights, i, inv_weight_sum); });
}
template <class T>
inline double mse_loss(cpu_t, detail::loss_nd<T>* dpred, const T* pred, const T* target, const std::uint8_t* mask,
                       const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return detail::loss_row_sum(
      n, 10.0, [&](index_t i) { return detail::mse_row(dpred, pred, target, mask, weights, i, inv_weight_sum); });
}

// huber (torch.nn.HuberLoss): with r = p - y, l = r^2 / 2 if |r| < delta,
// else delta (|r| - delta / 2); dl/dp = r inside, delta sign(r) outside.
// dpred (n) written, or nullptr. delta > 0 (checked by the caller).
template <class T>
inline double huber_loss(reference_t, detail::loss_nd<T>* dpred, const T* pred, const T* target,
                         const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum,
                         double delta) {
  return detail::loss_row_sum_serial(
      n, [&](index_t i) { return detail::huber_row(dpred, pred, target, mask, weights, i, inv_weight_sum, delta); });
}
template <class T>
inline double huber_loss(cpu_t, detail::loss_nd<T>* dpred, const T* pred, const T* target, const std::uint8_t* mask,
                         const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum, double delta) {
  return detail::loss_row_sum(n, 10.0, [&](index_t i) {
    return detail::huber_row(dpred, pred, target, mask, weights, i, inv_weight_sum, delta);
  });
}

// ---- softmax cross-entropy ------------------------------------------------
// l_i = logsumexp(x_i) - x_i[y_i] (max subtracted), dl/dx_ic = softmax_ic -
// [c == y_i]. labels (n) class ids in [0, C) on labelled rows (not read on
// masked rows). logits (n,C); dlogits (n,C) written, or nullptr.
template <class T>
inline double softmax_cross_entropy_loss(reference_t, detail::loss_nd<T>* dlogits, const T* logits,
                                         const index_t* labels, const std::uint8_t* mask,
                                         const detail::loss_nd<T>* weights, index_t n, index_t C,
                                         double inv_weight_sum) {
  return detail::loss_row_sum_serial(n, [&](index_t i) {
    return detail::softmax_cross_entropy_row(dlogits, logits, labels, mask, weights, i, C, inv_weight_sum);
  });
}
template <class T>
inline double softmax_cross_entropy_loss(cpu_t, detail::loss_nd<T>* dlogits, const T* logits, const index_t* labels,
                                         const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                         index_t C, double inv_weight_sum) {
  return detail::loss_row_sum(n, 20.0 * double(C), [&](index_t i) {
    return detail::softmax_cross_entropy_row(dlogits, logits, labels, mask, weights, i, C, inv_weight_sum);
  });
}

// ---- Bayesian personalised ranking -----------------------------------------
// l_i = softplus(neg_i - pos_i); dl/dpos = -sigmoid(neg - pos) = -dl/dneg.
// dpos (n), dneg (n) written, or nullptr.
template <class T>
inline double bpr_loss(reference_t, detail::loss_nd<T>* dpos, detail::loss_nd<T>* dneg, const T* pos, const T* neg,
                       const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return detail::loss_row_sum_serial(
      n, [&](index_t i) { return detail::bpr_row(dpos, dneg, pos, neg, mask, weights, i, inv_weight_sum); });
}
template <class T>
inline double bpr_loss(cpu_t, detail::loss_nd<T>* dpos, detail::loss_nd<T>* dneg, const T* pos, const T* neg,
                       const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return detail::loss_row_sum(
      n, 40.0, [&](index_t i) { return detail::bpr_row(dpos, dneg, pos, neg, mask, weights, i, inv_weight_sum); });
}

// ---- in-batch sampled softmax: the row part ----------------------------------
// S (n,n) holds the scores <q_i, k_j> / temperature on entry. With
//   z_ij = S_ij - log_q_correction[j]   (log_q_correction (n) or nullptr)
// row i's term is l_i = logsumexp_j z_ij - z_ii over the labelled columns j;
// masked rows have no term and masked columns are no negatives. With
// want_grad, S is overwritten by dvalue/dS (0 in masked rows and columns);
// without, S is left as it was. Returns the value. (The GEMMs around it,
// S = q k^T / t and dq = dS k / t, dk = dS^T q / t, are gemm calls.)
template <class T>
inline double in_batch_softmax_rows(reference_t, T* S, const detail::loss_nd<T>* log_q_correction,
                                    const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                    double inv_weight_sum, bool want_grad) {
  return detail::loss_row_sum_serial(n, [&](index_t i) {
    return detail::in_batch_softmax_row(S, log_q_correction, mask, weights, i, n, inv_weight_sum, want_grad);
  });
}
template <class T>
inline double in_batch_softmax_rows(cpu_t, T* S, const detail::loss_nd<T>* log_q_correction,
                                    const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                    double inv_weight_sum, bool want_grad) {
  return detail::loss_row_sum(n, 30.0 * double(n), [&](index_t i) {
    return detail::in_batch_softmax_row(S, log_q_correction, mask, weights, i, n, inv_weight_sum, want_grad);
  });
}

// ---- ESMM: the CTCVR loss ----------------------------------------------------
// pCTCVR_i = sigmoid(ctr_i) sigmoid(cvr_i), trained with BCE on labels (n)
// (the click * conversion label, in [0, 1]) over the labelled impressions:
//   l_i = -(y log p + (1 - y) log(1 - p)), in log space.
// d_ctr (n) = dvalue/dctr, d_cvr (n) = dvalue/dcvr written, or nullptr.
// Returns the value. (The CTR task's own BCE is bce_with_logits_loss.)
template <class T>
inline double esmm_loss(reference_t, detail::loss_nd<T>* d_ctr, detail::loss_nd<T>* d_cvr, const T* ctr_logits,
                        const T* cvr_logits, const T* labels, const std::uint8_t* mask,
                        const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return detail::loss_row_sum_serial(n, [&](index_t i) {
    return detail::esmm_row(d_ctr, d_cvr, ctr_logits, cvr_logits, labels, mask, weights, i, inv_weight_sum);
  });
}
template <class T>
inline double esmm_loss(cpu_t, detail::loss_nd<T>* d_ctr, detail::loss_nd<T>* d_cvr, const T* ctr_logits,
                        const T* cvr_logits, const T* labels, const std::uint8_t* mask,
                        const detail::loss_nd<T>* weights, index_t n, double inv_weight_sum) {
  return detail::loss_row_sum(n, 80.0, [&](index_t i) {
    return detail::esmm_row(d_ctr, d_cvr, ctr_logits, cvr_logits, labels, mask, weights, i, inv_weight_sum);
  });
}

// ---- predict's output transforms -----------------------------------------------
// out (B, ld_out): columns [col, col + w) of every row are written from
// in (B, w); the other columns are left as they are.
//   Identity: the values;  Sigmoid: 1 / (1 + exp(-x)) of each, in T;
//   Softmax: softmax over the w values of each row.
// The cpu softmax is softmax_row (the same as softmax_forward(cpu, ...)).
template <class T>
inline void output_transform(reference_t, T* out, index_t ld_out, index_t col, const T* in, index_t B, index_t w,
                             OutputKind kind) {
  for (index_t i = 0; i < B; ++i) {
    T* p = out + i * ld_out + col;
    const T* x = in + i * w;
    if (kind == OutputKind::Softmax)
      softmax_forward(reference, p, x, 1, w);
    else
      for (index_t j = 0; j < w; ++j) p[j] = kind == OutputKind::Sigmoid ? detail::output_sigmoid(x[j]) : x[j];
  }
}
template <class T>
inline void output_transform(cpu_t, T* out, index_t ld_out, index_t col, const T* in, index_t B, index_t w,
                             OutputKind kind) {
  simd::chunks(B * w, B, detail::rows_per_chunk(w), [&](index_t r0, index_t r1) {
    for (index_t i = r0; i < r1; ++i) {
      T* p = out + i * ld_out + col;
      const T* x = in + i * w;
      if (kind == OutputKind::Softmax)
        softmax_row(p, x, w);
      else if (kind == OutputKind::Sigmoid)
        for (index_t j = 0; j < w; ++j) p[j] = detail::output_sigmoid(x[j]);
      else
        std::copy(x, x + w, p);
    }
  });
}

// out (B, ld_out): column col of row i = sigmoid(a_i) * sigmoid(b_i), each
// sigmoid in T as in output_transform (ESMM's pCTCVR = pCTR * pCVR).
// a (B), b (B).
template <class T>
inline void sigmoid_product(reference_t, T* out, index_t ld_out, index_t col, const T* a, const T* b, index_t B) {
  for (index_t i = 0; i < B; ++i) out[i * ld_out + col] = detail::output_sigmoid(a[i]) * detail::output_sigmoid(b[i]);
}
template <class T>
inline void sigmoid_product(cpu_t, T* out, index_t ld_out, index_t col, const T* a, const T* b, index_t B) {
  simd::chunks(B, B, simd::kChunk, [&](index_t r0, index_t r1) {
    for (index_t i = r0; i < r1; ++i)
      out[i * ld_out + col] = detail::output_sigmoid(a[i]) * detail::output_sigmoid(b[i]);
  });
}

}  // namespace kernels
}  // namespace mtrec
