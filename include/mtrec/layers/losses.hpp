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
// The checks and the denominator are computed here, on the host; the row
// terms and gradients are the kernels of kernels/loss.hpp, called with dev.
// Predictions and gradients are device memory of dev; labels, masks, weights
// and corrections are host arrays (checked here), uploaded for the kernels
// through LossInputs on a device without host access.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mtrec/core/error.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/loss.hpp"
#include "mtrec/layers/common.hpp"

namespace mtrec {

// What every loss returns.
struct LossResult {
  double value = 0;       // the weighted mean (0 when weight_sum == 0)
  double weight_sum = 0;  // sum of the weights of the labelled rows: the denominator
  index_t count = 0;      // labelled rows (mask != 0), whatever their weight
};

namespace detail {

// T in a parameter that must not take part in template argument deduction
// (kernels/loss.hpp): a bare nullptr cannot deduce T, the required inputs do.
using kernels::detail::loss_nd;
// The device-side arguments of a loss on memory space M: predictions and
// gradients. Labels, masks, weights and corrections are host arrays, checked
// here on the host before any kernel runs.
template <class T, class M>
using dptr = pointer_t<loss_nd<T>, M>;
template <class T, class M>
using dcptr = pointer_t<const loss_nd<T>, M>;
// The element type behind a host or device pointer (it fixes T of a loss).
template <class P>
struct value_of_s {
  using type = std::remove_const_t<std::remove_pointer_t<P>>;
};
template <class U, class M>
struct value_of_s<DevicePtr<U, M>> {
  using type = std::remove_const_t<U>;
};
template <class P>
using value_of = typename value_of_s<P>::type;

using kernels::detail::loss_row_on;

inline void loss_check_rows(const char* op, index_t n) { check(n >= 0, op, "expected n >= 0 but got ", n); }

// A pointer may be null only when there is nothing to read behind it.
template <class P>
inline void loss_check_input(const char* op, const char* name, P p, index_t n) {
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

template <class Device, class P>
inline void loss_zero(const Device& dev, P p, index_t count) {
  if (p != nullptr) kernels::fill(dev, p, count, std::remove_const_t<std::remove_reference_t<decltype(*raw(p))>>(0));
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

// The host arrays a loss reads (labels, mask, weights, corrections), where
// its kernels read them: on a device without host access they are uploaded
// here, once per call, after the host checks. Pass one to a loss to reuse its
// memory across steps; without, the call uses its own. Unused on the host.
template <class T, class Device = Cpu>
struct LossInputs {
  Tensor<T, Device> labels, weights, correction;  // (n)
  Tensor<index_t, Device> class_ids;              // (n) softmax_cross_entropy's labels
  Tensor<std::uint8_t, Device> mask;              // (n)
  // Arrays already on the device (a batch's labels staged in one copy by
  // MultiTaskModel::compute_losses): found there, they are not uploaded again.
  const StagedInputs<Device>* staged = nullptr;
};

namespace detail {
// host[0 .. n) where Device's kernels read it (null stays null).
template <class U, class Device>
inline pointer_t<const U, typename Device::memory> loss_input(Tensor<U, Device>& buf, const U* host, index_t n) {
  if constexpr (host_readable_v<Device>) {
    (void)buf;
    (void)n;
    return host;
  } else {
    if (host == nullptr) return nullptr;
    buf.resize({n});
    if (n > 0) buf.device().upload(raw(buf.data()), host, sizeof(U) * static_cast<std::size_t>(n));
    return buf.cview().data;
  }
}
// loss_input, reading the staged copy when in.staged holds one.
template <class U, class T, class Device>
inline pointer_t<const U, typename Device::memory> loss_input(const LossInputs<T, Device>& in, Tensor<U, Device>& buf,
                                                              const U* host, index_t n) {
  if constexpr (!host_readable_v<Device>) {
    if (in.staged != nullptr)
      if (auto p = in.staged->find(host, n)) return p;
  }
  return loss_input(buf, host, n);
}
}  // namespace detail

// ---- binary cross-entropy on logits --------------------------------------

// l_i = -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), written as
// max(x, 0) - x y + log1p(exp(-|x|)) so that exp never overflows: finite for
// any finite logit (|x| = 1e4 gives l = |x| for a wrong label, not inf).
// Labels may be soft, in [0, 1]. dl/dx = sigmoid(x) - y.
// dlogits (n) written, or nullptr
template <class Device, class CP, class T = detail::value_of<CP>, class M = typename Device::memory>
inline LossResult bce_with_logits(const Device& dev, detail::dptr<T, M> dlogits, CP logits, const detail::loss_nd<T>* labels,
                                  const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                  LossInputs<detail::loss_nd<T>, Device>* inputs = nullptr) {
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
    detail::loss_zero(dev, dlogits, n);
    return r;
  }
  LossInputs<T, Device> local;
  LossInputs<T, Device>& in = inputs ? *inputs : local;
  r.value = kernels::bce_with_logits_loss(dev, dlogits, logits, detail::loss_input(in, in.labels, labels, n),
                                          detail::loss_input(in, in.mask, mask, n),
                                          detail::loss_input(in, in.weights, weights, n), n,
                                          1.0 / r.weight_sum);
  return r;
}

// ---- regression ------------------------------------------------------------

namespace detail {
// Shared by mse and huber: the checks and the denominator (pass 1).
template <class T, class CP>
inline LossResult loss_regression_denominator(const char* op, CP pred, const T* target,
                                              const std::uint8_t* mask, const T* weights, index_t n) {
  loss_check_rows(op, n);
  loss_check_input(op, "pred", pred, n);
  loss_check_input(op, "target", target, n);
  return loss_denominator(op, mask, weights, n, [&](index_t i) { loss_check_finite_label(op, "target", target, i); });
}
}  // namespace detail

// l_i = (p - y)^2, as torch.nn.MSELoss (no 1/2); dl/dp = 2 (p - y).
// dpred (n) written, or nullptr
template <class Device, class CP, class T = detail::value_of<CP>, class M = typename Device::memory>
inline LossResult mse(const Device& dev, detail::dptr<T, M> dpred, CP pred, const detail::loss_nd<T>* target, const std::uint8_t* mask,
                      const detail::loss_nd<T>* weights, index_t n, LossInputs<detail::loss_nd<T>, Device>* inputs = nullptr) {
  LossResult r = detail::loss_regression_denominator("mse", pred, target, mask, weights, n);
  if (!(r.weight_sum > 0)) {
    detail::loss_zero(dev, dpred, n);
    return r;
  }
  LossInputs<T, Device> local;
  LossInputs<T, Device>& in = inputs ? *inputs : local;
  r.value = kernels::mse_loss(dev, dpred, pred, detail::loss_input(in, in.labels, target, n), detail::loss_input(in, in.mask, mask, n),
                              detail::loss_input(in, in.weights, weights, n), n, 1.0 / r.weight_sum);
  return r;
}

// torch.nn.HuberLoss(delta): with r = p - y,
//   l = r^2 / 2                   if |r| < delta
//   l = delta (|r| - delta / 2)   otherwise.
// dl/dp = r inside, delta * sign(r) outside (the two agree at |r| = delta).
// dpred (n) written, or nullptr
template <class Device, class CP, class T = detail::value_of<CP>, class M = typename Device::memory>
inline LossResult huber(const Device& dev, detail::dptr<T, M> dpred, CP pred, const detail::loss_nd<T>* target, const std::uint8_t* mask,
                        const detail::loss_nd<T>* weights, index_t n, double delta = 1.0,
                        LossInputs<detail::loss_nd<T>, Device>* inputs = nullptr) {
  check(std::isfinite(delta) && delta > 0, "huber", "expected a finite delta > 0 but got ", delta);
  LossResult r = detail::loss_regression_denominator("huber", pred, target, mask, weights, n);
  if (!(r.weight_sum > 0)) {
    detail::loss_zero(dev, dpred, n);
    return r;
  }
  LossInputs<T, Device> local;
  LossInputs<T, Device>& in = inputs ? *inputs : local;
  r.value = kernels::huber_loss(dev, dpred, pred, detail::loss_input(in, in.labels, target, n),
                                detail::loss_input(in, in.mask, mask, n), detail::loss_input(in, in.weights, weights, n), n,
                                1.0 / r.weight_sum, delta);
  return r;
}

// ---- softmax cross-entropy ------------------------------------------------

// l_i = logsumexp(x_i) - x_i[y_i], the max subtracted before exp so that no
// logit overflows; dl/dx_ic = softmax(x_i)_c - [c == y_i].
// Labels are class ids in [0, C), checked on labelled rows only (a masked row
// may hold -100 as in PyTorch's ignore_index).
// dlogits (n,C) written, or nullptr
template <class Device, class CP, class T = detail::value_of<CP>, class M = typename Device::memory>
inline LossResult softmax_cross_entropy(const Device& dev, detail::dptr<T, M> dlogits, CP logits, const index_t* labels,
                                        const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                        index_t C, LossInputs<detail::loss_nd<T>, Device>* inputs = nullptr) {
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
    detail::loss_zero(dev, dlogits, n * C);
    return r;
  }
  LossInputs<T, Device> local;
  LossInputs<T, Device>& in = inputs ? *inputs : local;
  r.value = kernels::softmax_cross_entropy_loss(dev, dlogits, logits, detail::loss_input(in, in.class_ids, labels, n),
                                                detail::loss_input(in, in.mask, mask, n),
                                                detail::loss_input(in, in.weights, weights, n), n, C,
                                                1.0 / r.weight_sum);
  return r;
}

// ---- Bayesian personalised ranking -----------------------------------------

// l_i = -log sigmoid(pos_i - neg_i) = softplus(neg_i - pos_i), finite for any
// finite scores. dl/dpos = -sigmoid(neg - pos), dl/dneg = +sigmoid(neg - pos).
// dpos (n), dneg (n) written, or nullptr
template <class Device, class CP, class T = detail::value_of<CP>, class M = typename Device::memory>
inline LossResult bpr(const Device& dev, detail::dptr<T, M> dpos, detail::dptr<T, M> dneg, CP pos_scores, detail::dcptr<T, M> neg_scores,
                      const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                      LossInputs<detail::loss_nd<T>, Device>* inputs = nullptr) {
  const char* op = "bpr";
  detail::loss_check_rows(op, n);
  detail::loss_check_input(op, "pos_scores", pos_scores, n);
  detail::loss_check_input(op, "neg_scores", neg_scores, n);
  LossResult r = detail::loss_denominator(op, mask, weights, n, [](index_t) {});
  if (!(r.weight_sum > 0)) {
    detail::loss_zero(dev, dpos, n);
    detail::loss_zero(dev, dneg, n);
    return r;
  }
  LossInputs<T, Device> local;
  LossInputs<T, Device>& in = inputs ? *inputs : local;
  r.value =
      kernels::bpr_loss(dev, dpos, dneg, pos_scores, neg_scores, detail::loss_input(in, in.mask, mask, n),
                        detail::loss_input(in, in.weights, weights, n), n, 1.0 / r.weight_sum);
  return r;
}

// ---- in-batch sampled softmax ------------------------------------------------

// Reused by in_batch_softmax when passed in: the (n,n) logits, then their
// gradient. It grows on first use and is reused afterwards.
template <class T, class Device = Cpu>
struct InBatchSoftmaxWorkspace {
  Tensor<T, Device> scores;  // (n,n)
  LossInputs<T, Device> inputs;
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
template <class Device, class CP, class T = detail::value_of<CP>, class M = typename Device::memory>
inline LossResult in_batch_softmax(const Device& dev, detail::dptr<T, M> dq, detail::dptr<T, M> dk, CP q, detail::dcptr<T, M> k, index_t n,
                                   index_t d, double temperature, const detail::loss_nd<T>* log_q_correction,
                                   const std::uint8_t* mask, const detail::loss_nd<T>* weights,
                                   InBatchSoftmaxWorkspace<detail::loss_nd<T>, Device>* workspace = nullptr) {
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
    detail::loss_zero(dev, dq, n * d);
    detail::loss_zero(dev, dk, n * d);
    return r;
  }
  InBatchSoftmaxWorkspace<T, Device> local;
  InBatchSoftmaxWorkspace<T, Device>& ws = workspace ? *workspace : local;
  ws.scores.resize({n, n});
  auto S = ws.scores.data();
  const T inv_t = T(1.0 / temperature);
  // S (n,n) = q k^T / temperature
  kernels::gemm(dev, kernels::Trans::N, kernels::Trans::T, n, n, d, inv_t, q, d, k, d, T(0), S, n);

  const bool want_grad = dq != nullptr || dk != nullptr;
  // Rows of S become dS (S's row i is overwritten by row i's gradient, which
  // no other row reads).
  r.value = kernels::in_batch_softmax_rows(dev, S, detail::loss_input(ws.inputs, ws.inputs.correction, log_q_correction, n),
                                           detail::loss_input(ws.inputs, ws.inputs.mask, mask, n),
                                           detail::loss_input(ws.inputs, ws.inputs.weights, weights, n), n,
                                           1.0 / r.weight_sum, want_grad);
  // dq (n,d) = dS k / temperature;  dk (n,d) = dS^T q / temperature
  if (dq)
    kernels::gemm(dev, kernels::Trans::N, kernels::Trans::N, n, d, n, inv_t, S, n, k, d, T(0), dq, d);
  if (dk)
    kernels::gemm(dev, kernels::Trans::T, kernels::Trans::N, n, d, n, inv_t, S, n, q, d, T(0), dk, d);
  return r;
}

// ---- the same losses on the default device (Cpu) ---------------------------

template <class T>
inline LossResult bce_with_logits(detail::loss_nd<T>* dlogits, const T* logits, const T* labels,
                                  const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n) {
  return bce_with_logits(Cpu{}, dlogits, logits, labels, mask, weights, n);
}

template <class T>
inline LossResult mse(detail::loss_nd<T>* dpred, const T* pred, const T* target, const std::uint8_t* mask,
                      const detail::loss_nd<T>* weights, index_t n) {
  return mse(Cpu{}, dpred, pred, target, mask, weights, n);
}

template <class T>
inline LossResult huber(detail::loss_nd<T>* dpred, const T* pred, const T* target, const std::uint8_t* mask,
                        const detail::loss_nd<T>* weights, index_t n, double delta = 1.0) {
  return huber(Cpu{}, dpred, pred, target, mask, weights, n, delta);
}

template <class T>
inline LossResult softmax_cross_entropy(detail::loss_nd<T>* dlogits, const T* logits, const index_t* labels,
                                        const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n,
                                        index_t C) {
  return softmax_cross_entropy(Cpu{}, dlogits, logits, labels, mask, weights, n, C);
}

template <class T>
inline LossResult bpr(detail::loss_nd<T>* dpos, detail::loss_nd<T>* dneg, const T* pos_scores, const T* neg_scores,
                      const std::uint8_t* mask, const detail::loss_nd<T>* weights, index_t n) {
  return bpr(Cpu{}, dpos, dneg, pos_scores, neg_scores, mask, weights, n);
}

template <class T>
inline LossResult in_batch_softmax(detail::loss_nd<T>* dq, detail::loss_nd<T>* dk, const T* q, const T* k, index_t n,
                                   index_t d, double temperature, const detail::loss_nd<T>* log_q_correction,
                                   const std::uint8_t* mask, const detail::loss_nd<T>* weights,
                                   InBatchSoftmaxWorkspace<detail::loss_nd<T>>* workspace = nullptr) {
  return in_batch_softmax(Cpu{}, dq, dk, q, k, n, d, temperature, log_q_correction, mask, weights, workspace);
}

}  // namespace mtrec
