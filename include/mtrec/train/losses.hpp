// mtrec: training losses: value and gradient in one call, with label masks
// and sample weights.
//
// Every loss here has the same contract:
//  * n rows. mask (n) is optional: nullptr = every row is labelled;
//    mask[i] == 0 = row i has no label for this task. Such a row is left out
//    of the loss and gets a zero gradient. Its label is never read, so a
//    missing label may hold any placeholder (NaN, -1, -100).
//  * weights (n) is optional: nullptr = 1. Weights must be finite and >= 0.
//  * value = sum_i m_i w_i l_i / sum_i m_i w_i, the weighted MEAN over the
//    labelled rows (PyTorch's reduction='mean' with per-sample weights
//    normalised by their sum). The gradients are those of this value.
//  * If no row is labelled, or the labelled rows weigh 0 in total, the value
//    is 0 and every gradient is 0. In a multi-task batch a task can have no
//    labels at all; it must then add nothing, and never NaN, to the shared
//    layers.
//  * Gradients are WRITTEN (not accumulated) into every element of a
//    non-null output, masked rows included; nullptr skips that output.
//    Outputs must not overlap the inputs.
//  * Labels, weights and options are checked before anything is written: a
//    bad one throws mtrec::Error naming the loss, the row and the value.
//    Predictions are not checked: a NaN or infinite prediction gives a NaN
//    loss, which is how a diverging model should show up.
//  * Row losses are computed and summed in double whatever T. Rows are cut
//    into at most 64 chunks whose bounds depend on n only and the chunk sums
//    are added in chunk order, so the results are bitwise identical for any
//    thread count.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "mtrec/core/error.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"

namespace mtrec {

// What every loss returns.
struct LossResult {
  double value = 0;       // the weighted mean (0 when weight_sum == 0)
  double weight_sum = 0;  // sum of the weights of the labelled rows: the denominator
  index_t count = 0;      // labelled rows (mask != 0), whatever their weight
};

namespace detail {

// T in a parameter that must not take part in template argument deduction:
// gradient outputs and optional inputs are often passed as a bare nullptr,
// which cannot deduce T; T comes from the required inputs instead.
template <class T>
struct loss_nondeduced {
  using type = T;
};
template <class T>
using loss_nd = typename loss_nondeduced<T>::type;

// log(1 + exp(z)) without overflow: exp is only taken of a non-positive number.
inline double loss_softplus(double z) { return std::max(z, 0.0) + std::log1p(std::exp(-std::fabs(z))); }

// 1 / (1 + exp(-z)) without overflow for either sign.
inline double loss_sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

inline bool loss_row_on(const std::uint8_t* mask, index_t i) { return mask == nullptr || mask[i] != 0; }

inline void loss_check_rows(const char* op, index_t n) { check(n >= 0, op, "expected n >= 0 but got ", n); }

// A pointer may be null only when there is nothing to read behind it.
template <class P>
inline void loss_check_input(const char* op, const char* name, const P* p, index_t n) {
  check(p != nullptr || n == 0, op, name, " is null but n = ", n);
}

// Pass 1 of every loss, before any output is written: checks the weights of
// the labelled rows and calls check_label(i) on each of them; returns the
// denominator and the labelled-row count (value is left 0).
template <class T, class LabelCheck>
inline LossResult loss_denominator(const char* op, const std::uint8_t* mask, const T* weights, index_t n,
                                   LabelCheck&& check_label) {
  LossResult r;
  for (index_t i = 0; i < n; ++i) {
    if (!loss_row_on(mask, i)) continue;
    check_label(i);
    double w = 1.0;
    if (weights != nullptr) {
      w = double(weights[i]);
      if (!std::isfinite(w)) fail(op, "weights[", i, "] expected a finite value but got ", weights[i]);
      if (w < 0) fail(op, "weights[", i, "] expected a non-negative value but got ", weights[i]);
    }
    r.weight_sum += w;
    ++r.count;
  }
  return r;
}

template <class T>
inline void loss_check_finite_label(const char* op, const char* name, const T* labels, index_t i) {
  if (!std::isfinite(double(labels[i]))) fail(op, name, "[", i, "] expected a finite value but got ", labels[i]);
}

// sum over i in [0, n) of row(i), in double. [0, n) is cut into at most
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

template <class T>
inline void loss_zero(T* p, index_t count) {
  if (p != nullptr) std::fill(p, p + count, T(0));
}

// Scale of row i's gradient: d value / d l_i = m_i w_i / W.
template <class T>
inline double loss_row_scale(const T* weights, index_t i, double inv_weight_sum) {
  return (weights ? double(weights[i]) : 1.0) * inv_weight_sum;
}

}  // namespace detail

// sum_i m_i w_i, the denominator of every loss here, with the same checks on
// the weights (finite, >= 0). Useful to combine the losses of several batches
// or tasks into one weighted mean.
template <class T>
inline double weighted_mean_denominator(const std::uint8_t* mask, const T* weights, index_t n) {
  const char* op = "weighted_mean_denominator";
  detail::loss_check_rows(op, n);
  return detail::loss_denominator(op, mask, weights, n, [](index_t) {}).weight_sum;
}

// ---- binary cross-entropy on logits --------------------------------------

// l_i = -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), written as
// max(x, 0) - x y + log1p(exp(-|x|)) so that exp never overflows: finite for
// any finite logit (|x| = 1e4 gives l = |x| for a wrong label, not inf).
// Labels may be soft, in [0, 1]. dl/dx = sigmoid(x) - y.
// dlogits (n) written, or nullptr
template <class T>
inline LossResult bce_with_logits(detail::loss_nd<T>* dlogits, const T* logits, const T* labels,
                                  const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n) {
  const char* op = "bce_with_logits";
  detail::loss_check_rows(op, n);
  detail::loss_check_input(op, "logits", logits, n);
  detail::loss_check_input(op, "labels", labels, n);
  LossResult r = detail::loss_denominator(op, mask, weights, n, [&](index_t i) {
    detail::loss_check_finite_label(op, "labels", labels, i);
    if (labels[i] < T(0) || labels[i] > T(1))
      fail(op, "labels[", i, "] expected a value in [0, 1] but got ", labels[i]);
  });
  if (!(r.weight_sum > 0)) {
    detail::loss_zero(dlogits, n);
    return r;
  }
  const double inv_w = 1.0 / r.weight_sum;
  const double total = detail::loss_row_sum(n, 40.0, [&](index_t i) -> double {
    if (!detail::loss_row_on(mask, i)) {
      if (dlogits) dlogits[i] = T(0);
      return 0.0;
    }
    const double x = double(logits[i]), y = double(labels[i]);
    const double s = detail::loss_row_scale(weights, i, inv_w);
    if (dlogits) dlogits[i] = T(s * (detail::loss_sigmoid(x) - y));
    return s * (std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::fabs(x))));
  });
  r.value = total;
  return r;
}

// ---- regression ------------------------------------------------------------

namespace detail {
// Shared by mse and huber: row_loss(r) and row_grad(r) of the residual r = p - y.
template <class T, class Loss, class Grad>
inline LossResult loss_regression(const char* op, T* dpred, const T* pred, const T* target, const std::uint8_t* mask,
                                  const T* weights, index_t n, Loss&& row_loss, Grad&& row_grad) {
  loss_check_rows(op, n);
  loss_check_input(op, "pred", pred, n);
  loss_check_input(op, "target", target, n);
  LossResult r =
      loss_denominator(op, mask, weights, n, [&](index_t i) { loss_check_finite_label(op, "target", target, i); });
  if (!(r.weight_sum > 0)) {
    loss_zero(dpred, n);
    return r;
  }
  const double inv_w = 1.0 / r.weight_sum;
  r.value = loss_row_sum(n, 10.0, [&](index_t i) -> double {
    if (!loss_row_on(mask, i)) {
      if (dpred) dpred[i] = T(0);
      return 0.0;
    }
    const double res = double(pred[i]) - double(target[i]);
    const double s = loss_row_scale(weights, i, inv_w);
    if (dpred) dpred[i] = T(s * row_grad(res));
    return s * row_loss(res);
  });
  return r;
}
}  // namespace detail

// l_i = (p - y)^2, as torch.nn.MSELoss (no 1/2); dl/dp = 2 (p - y).
// dpred (n) written, or nullptr
template <class T>
inline LossResult mse(detail::loss_nd<T>* dpred, const T* pred, const T* target, const std::uint8_t* mask,
                      const detail::loss_nd<T>* weights, index_t n) {
  return detail::loss_regression(
      "mse", dpred, pred, target, mask, weights, n, [](double r) { return r * r; }, [](double r) { return 2.0 * r; });
}

// torch.nn.HuberLoss(delta): with r = p - y,
//   l = r^2 / 2                   if |r| < delta
//   l = delta (|r| - delta / 2)   otherwise.
// dl/dp = r inside, delta * sign(r) outside (the two agree at |r| = delta).
// dpred (n) written, or nullptr
template <class T>
inline LossResult huber(detail::loss_nd<T>* dpred, const T* pred, const T* target, const std::uint8_t* mask,
                        const detail::loss_nd<T>* weights, index_t n, double delta = 1.0) {
  check(std::isfinite(delta) && delta > 0, "huber", "expected a finite delta > 0 but got ", delta);
  return detail::loss_regression(
      "huber", dpred, pred, target, mask, weights, n,
      [delta](double r) { return std::fabs(r) < delta ? 0.5 * r * r : delta * (std::fabs(r) - 0.5 * delta); },
      [delta](double r) { return std::fabs(r) <= delta ? r : (r > 0 ? delta : -delta); });
}

// ---- softmax cross-entropy ------------------------------------------------

// l_i = logsumexp(x_i) - x_i[y_i], the max subtracted before exp so that no
// logit overflows; dl/dx_ic = softmax(x_i)_c - [c == y_i].
// Labels are class ids in [0, C), checked on labelled rows only (a masked row
// may hold -100 as in PyTorch's ignore_index).
// dlogits (n,C) written, or nullptr
template <class T>
inline LossResult softmax_cross_entropy(detail::loss_nd<T>* dlogits, const T* logits, const index_t* labels,
                                        const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                        index_t C) {
  const char* op = "softmax_cross_entropy";
  detail::loss_check_rows(op, n);
  check(C >= 1, op, "expected C >= 1 classes but got ", C);
  detail::loss_check_input(op, "logits", logits, n);
  detail::loss_check_input(op, "labels", labels, n);
  LossResult r = detail::loss_denominator(op, mask, weights, n, [&](index_t i) {
    if (labels[i] < 0 || labels[i] >= C)
      fail(op, "labels[", i, "] expected a class id in [0, ", C, ") but got ", labels[i], " (C = ", C, ")");
  });
  if (!(r.weight_sum > 0)) {
    detail::loss_zero(dlogits, n * C);
    return r;
  }
  const double inv_w = 1.0 / r.weight_sum;
  r.value = detail::loss_row_sum(n, 20.0 * double(C), [&](index_t i) -> double {
    T* g = dlogits ? dlogits + i * C : nullptr;
    if (!detail::loss_row_on(mask, i)) {
      detail::loss_zero(g, C);
      return 0.0;
    }
    const T* x = logits + i * C;
    double m = double(x[0]);
    for (index_t c = 1; c < C; ++c) m = std::max(m, double(x[c]));
    double sum = 0;
    for (index_t c = 0; c < C; ++c) sum += std::exp(double(x[c]) - m);
    const double s = detail::loss_row_scale(weights, i, inv_w);
    if (g) {
      const double s_over_sum = s / sum;
      for (index_t c = 0; c < C; ++c) g[c] = T(s_over_sum * std::exp(double(x[c]) - m));
      g[labels[i]] = T(s_over_sum * std::exp(double(x[labels[i]]) - m) - s);
    }
    // log(sum) - (x_y - m), not m + log(sum) - x_y: with logits ~1e4 the
    // latter loses the loss's low digits to cancellation.
    return s * (std::log(sum) - (double(x[labels[i]]) - m));
  });
  return r;
}

// ---- Bayesian personalised ranking -----------------------------------------

// l_i = -log sigmoid(pos_i - neg_i) = softplus(neg_i - pos_i), finite for any
// finite scores. dl/dpos = -sigmoid(neg - pos), dl/dneg = +sigmoid(neg - pos).
// dpos (n), dneg (n) written, or nullptr
template <class T>
inline LossResult bpr(detail::loss_nd<T>* dpos, detail::loss_nd<T>* dneg, const T* pos_scores, const T* neg_scores,
                      const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n) {
  const char* op = "bpr";
  detail::loss_check_rows(op, n);
  detail::loss_check_input(op, "pos_scores", pos_scores, n);
  detail::loss_check_input(op, "neg_scores", neg_scores, n);
  LossResult r = detail::loss_denominator(op, mask, weights, n, [](index_t) {});
  if (!(r.weight_sum > 0)) {
    detail::loss_zero(dpos, n);
    detail::loss_zero(dneg, n);
    return r;
  }
  const double inv_w = 1.0 / r.weight_sum;
  r.value = detail::loss_row_sum(n, 40.0, [&](index_t i) -> double {
    if (!detail::loss_row_on(mask, i)) {
      if (dpos) dpos[i] = T(0);
      if (dneg) dneg[i] = T(0);
      return 0.0;
    }
    const double z = double(neg_scores[i]) - double(pos_scores[i]);
    const double s = detail::loss_row_scale(weights, i, inv_w);
    const double g = s * detail::loss_sigmoid(z);
    if (dpos) dpos[i] = T(-g);
    if (dneg) dneg[i] = T(g);
    return s * detail::loss_softplus(z);
  });
  return r;
}

// ---- in-batch sampled softmax ------------------------------------------------

// Reused by in_batch_softmax when passed in: the (n,n) logits, then their
// gradient. It grows on first use and is reused afterwards.
template <class T>
struct InBatchSoftmaxWorkspace {
  Tensor<T> scores;  // (n,n)
};

// Sampled-softmax retrieval loss with in-batch negatives (two-tower models;
// also item-item pairs, with q and k both item embeddings). Row i is the
// pair (q_i, k_i); every other labelled row's key is one of its negatives:
//   z_ij = <q_i, k_j> / temperature - log_q_correction[j]
//   l_i  = -log softmax_j(z_i)[i] = logsumexp_j(z_ij) - z_ii
// log_q_correction (n) is the log sampling probability of item j (Yi et al.
// 2019, "sampling-bias-corrected neural modelling"); it corrects the bias
// toward popular items, which appear as negatives more often. nullptr = no
// correction. It is subtracted from every column, the positive included.
//
// A masked row is removed from the batch altogether: it has no loss term and
// its key is not a negative for the other rows, so dq_i = dk_i = 0 (padding
// rows never leak into the loss). A labelled row of weight 0 still serves as
// a negative: the weight scales the row's own term only.
// Duplicate items in one batch (accidental hits) are not masked out.
//
// The (n,n) logit matrix is materialised (n = 16384 in float: 1 GiB); pass a
// workspace to reuse it across steps.
// dq (n,d), dk (n,d) written, or nullptr
template <class T>
inline LossResult in_batch_softmax(detail::loss_nd<T>* dq, detail::loss_nd<T>* dk, const T* q, const T* k, index_t n,
                                   index_t d, double temperature, const detail::loss_nd<T>* log_q_correction,
                                   const std::uint8_t* mask, const detail::loss_nd<T>* weights,
                                   InBatchSoftmaxWorkspace<detail::loss_nd<T>>* workspace = nullptr) {
  const char* op = "in_batch_softmax";
  detail::loss_check_rows(op, n);
  check(d >= 1, op, "expected d >= 1 but got ", d);
  check(std::isfinite(temperature) && temperature > 0, op, "expected a finite temperature > 0 but got ", temperature);
  detail::loss_check_input(op, "q", q, n);
  detail::loss_check_input(op, "k", k, n);
  LossResult r = detail::loss_denominator(op, mask, weights, n, [&](index_t i) {
    if (log_q_correction) detail::loss_check_finite_label(op, "log_q_correction", log_q_correction, i);
  });
  if (!(r.weight_sum > 0)) {
    detail::loss_zero(dq, n * d);
    detail::loss_zero(dk, n * d);
    return r;
  }
  InBatchSoftmaxWorkspace<T> local;
  InBatchSoftmaxWorkspace<T>& ws = workspace ? *workspace : local;
  ws.scores.resize({n, n});
  T* S = ws.scores.data();
  const T inv_t = T(1.0 / temperature);
  // S (n,n) = q k^T / temperature
  kernels::gemm(kernels::backend{}, kernels::Trans::N, kernels::Trans::T, n, n, d, inv_t, q, d, k, d, T(0), S, n);

  const bool want_grad = dq != nullptr || dk != nullptr;
  const double inv_w = 1.0 / r.weight_sum;
  r.value = detail::loss_row_sum(n, 30.0 * double(n), [&](index_t i) -> double {
    T* Si = S + i * n;
    if (!detail::loss_row_on(mask, i)) {
      if (want_grad) std::fill(Si, Si + n, T(0));
      return 0.0;
    }
    auto z = [&](index_t j) { return double(Si[j]) - (log_q_correction ? double(log_q_correction[j]) : 0.0); };
    double m = z(i);
    for (index_t j = 0; j < n; ++j)
      if (detail::loss_row_on(mask, j)) m = std::max(m, z(j));
    double sum = 0;
    for (index_t j = 0; j < n; ++j)
      if (detail::loss_row_on(mask, j)) sum += std::exp(z(j) - m);
    const double zii = z(i);
    const double s = detail::loss_row_scale(weights, i, inv_w);
    if (want_grad) {
      // dS_ij = s (softmax_ij - [i == j]), 0 in masked columns. Overwrites
      // row i of S, which no other row reads.
      const double s_over_sum = s / sum;
      for (index_t j = 0; j < n; ++j) Si[j] = detail::loss_row_on(mask, j) ? T(s_over_sum * std::exp(z(j) - m)) : T(0);
      Si[i] = T(s_over_sum * std::exp(zii - m) - s);
    }
    return s * (std::log(sum) - (zii - m));  // no cancellation against m (see softmax_cross_entropy)
  });
  // dq (n,d) = dS k / temperature;  dk (n,d) = dS^T q / temperature
  if (dq)
    kernels::gemm(kernels::backend{}, kernels::Trans::N, kernels::Trans::N, n, d, n, inv_t, S, n, k, d, T(0), dq, d);
  if (dk)
    kernels::gemm(kernels::backend{}, kernels::Trans::T, kernels::Trans::N, n, d, n, inv_t, S, n, q, d, T(0), dk, d);
  return r;
}

}  // namespace mtrec
