// mtrec: evaluation metrics: AUC, gAUC, log loss, accuracy, P/R/F1,
// RMSE/MAE, NDCG@K and hit rate@K.
//
// Conventions shared by every metric here:
//  * Results are double; inputs are any arithmetic type (float scores with
//    float, double or integer labels all work). Sums are taken in double.
//  * mask (n) is optional: nullptr = every row counts; mask[i] == 0 = row i
//    is left out, and its values are never read (a missing label may hold
//    any placeholder).
//  * Binary labels must lie in [0, 1]; a label >= 0.5 is positive. Values
//    outside [0, 1] are rejected rather than thresholded because they are
//    almost always a bug (logits passed as labels, -1 used for "missing"
//    without a mask).
//  * NaN anywhere in a counted row is rejected with an mtrec::Error naming
//    the metric, the row and the value. Sorting with a NaN key is undefined
//    behaviour, and a NaN averaged into a metric would only hide the cause.
//  * A metric with nothing to average (n = 0, everything masked, no usable
//    group or list) throws instead of returning an arbitrary number.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <utility>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/core/tensor.hpp"

namespace mtrec {

namespace detail {

inline bool metric_row_on(const std::uint8_t* mask, index_t i) { return mask == nullptr || mask[i] != 0; }

template <class P>
inline void metric_check_input(const char* op, const char* name, const P* p, index_t n) {
  check(p != nullptr || n == 0, op, name, " is null but n = ", n);
}

inline void metric_check_rows(const char* op, index_t n) { check(n >= 0, op, "expected n >= 0 but got ", n); }

// Value of v[i] as double; throws when it is NaN.
template <class V>
inline double metric_value(const char* op, const char* name, const V* v, index_t i) {
  const double x = double(v[i]);
  if (std::isnan(x)) fail(op, name, "[", i, "] expected a number but got ", x);
  return x;
}

// A binary label in [0, 1]; true when positive (>= 0.5).
template <class L>
inline bool metric_binary_label(const char* op, const L* labels, index_t i) {
  const double y = double(labels[i]);
  if (!(y >= 0.0 && y <= 1.0)) fail(op, "labels[", i, "] expected a value in [0, 1] but got ", y);
  return y >= 0.5;
}

inline void metric_require_rows(const char* op, index_t counted, index_t n) {
  check(counted > 0, op, "expected at least one row to evaluate but got none (n = ", n,
        n > 0 ? ", every row masked)" : ")");
}

// One row of a ranking: its score and whether it is positive.
struct MetricScored {
  double score;
  bool positive;
};

// Mann-Whitney over rows sorted by score ascending:
// returns 2 * #{(pos, neg) : s_pos > s_neg} + #{(pos, neg) : s_pos == s_neg},
// that is twice the tie-aware pair count, exactly (in integers).
// Sets positives / negatives to the class counts.
inline std::uint64_t metric_twice_pair_count(const MetricScored* rows, index_t count, std::uint64_t& positives,
                                             std::uint64_t& negatives) {
  std::uint64_t twice = 0, neg_below = 0, pos_total = 0;
  for (index_t b = 0; b < count;) {
    index_t e = b;
    std::uint64_t pos = 0, neg = 0;
    while (e < count && rows[e].score == rows[b].score) {
      rows[e].positive ? ++pos : ++neg;
      ++e;
    }
    // each positive of this tie group beats every negative below it and ties
    // with the negatives of its own group (counted 1/2, so 1 in `twice`)
    twice += 2 * pos * neg_below + pos * neg;
    neg_below += neg;
    pos_total += pos;
    b = e;
  }
  positives = pos_total;
  negatives = neg_below;
  return twice;
}

}  // namespace detail

// ---- AUC --------------------------------------------------------------------

// ROC AUC = P(score of a random positive > score of a random negative), ties
// counted 1/2 (the Mann-Whitney U statistic with average ranks; equals
// sklearn.metrics.roc_auc_score). O(n log n): one sort, then tie groups.
// AUC is undefined with a single class; like sklearn this throws.
template <class S, class L>
inline double auc(const S* scores, const L* labels, index_t n, const std::uint8_t* mask = nullptr) {
  const char* op = "auc";
  detail::metric_check_rows(op, n);
  detail::metric_check_input(op, "scores", scores, n);
  detail::metric_check_input(op, "labels", labels, n);
  std::vector<detail::MetricScored> rows;
  rows.reserve(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    if (!detail::metric_row_on(mask, i)) continue;
    const bool pos = detail::metric_binary_label(op, labels, i);
    rows.push_back({detail::metric_value(op, "scores", scores, i), pos});
  }
  detail::metric_require_rows(op, index_t(rows.size()), n);
  std::sort(rows.begin(), rows.end(),
            [](const detail::MetricScored& a, const detail::MetricScored& b) { return a.score < b.score; });
  std::uint64_t P = 0, N = 0;
  const std::uint64_t twice = detail::metric_twice_pair_count(rows.data(), index_t(rows.size()), P, N);
  check(P > 0 && N > 0, op, "needs both positive and negative labels but got ", P, " positive and ", N,
        " negative rows (AUC is undefined with a single class)");
  return double(twice) / (2.0 * double(P) * double(N));
}

// Group AUC (e.g. per user): the AUC of each group's labelled rows, averaged
// with weights = the group's number of labelled rows (impressions). Groups
// with a single class have no AUC and are skipped, as is standard for gAUC;
// throws only when no group has both classes. Group ids are arbitrary
// int64 values and rows of one group need not be contiguous.
template <class S, class L>
inline double gauc(const S* scores, const L* labels, const index_t* groups, index_t n,
                   const std::uint8_t* mask = nullptr) {
  const char* op = "gauc";
  detail::metric_check_rows(op, n);
  detail::metric_check_input(op, "scores", scores, n);
  detail::metric_check_input(op, "labels", labels, n);
  detail::metric_check_input(op, "groups", groups, n);
  struct Row {
    index_t group;
    detail::MetricScored s;
  };
  std::vector<Row> rows;
  rows.reserve(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    if (!detail::metric_row_on(mask, i)) continue;
    const bool pos = detail::metric_binary_label(op, labels, i);
    rows.push_back({groups[i], {detail::metric_value(op, "scores", scores, i), pos}});
  }
  detail::metric_require_rows(op, index_t(rows.size()), n);
  // one sort by (group, score) puts every group in one run, sorted by score
  std::sort(rows.begin(), rows.end(),
            [](const Row& a, const Row& b) { return a.group != b.group ? a.group < b.group : a.s.score < b.s.score; });
  std::vector<detail::MetricScored> run;
  double weighted = 0, impressions = 0;
  index_t usable = 0, total_groups = 0;
  for (std::size_t b = 0; b < rows.size();) {
    std::size_t e = b;
    run.clear();
    while (e < rows.size() && rows[e].group == rows[b].group) run.push_back(rows[e++].s);
    ++total_groups;
    std::uint64_t P = 0, N = 0;
    const std::uint64_t twice = detail::metric_twice_pair_count(run.data(), index_t(run.size()), P, N);
    if (P > 0 && N > 0) {
      const double group_auc = double(twice) / (2.0 * double(P) * double(N));
      weighted += double(run.size()) * group_auc;
      impressions += double(run.size());
      ++usable;
    }
    b = e;
  }
  check(usable > 0, op, "needs at least one group with both positive and negative labels but none of the ",
        total_groups, " groups has both");
  return weighted / impressions;
}

// ---- log loss ---------------------------------------------------------------

// Mean of -(y log p + (1 - y) log(1 - p)) over the counted rows; labels may
// be soft, in [0, 1]. p is clamped to [eps, 1 - eps] (as sklearn's log_loss
// did with eps=1e-15; 1e-7 suits float predictions, where 1 - 1e-15 rounds
// to 1), so one confident mistake costs at most -log(eps) ~ 16.1 instead of
// inf. Probabilities outside [0, 1] are rejected: they are usually logits,
// for which logloss_from_logits exists.
template <class P, class L>
inline double logloss(const P* probabilities, const L* labels, index_t n, const std::uint8_t* mask = nullptr,
                      double eps = 1e-7) {
  const char* op = "logloss";
  detail::metric_check_rows(op, n);
  check(eps > 0 && eps < 0.5, op, "expected eps in (0, 0.5) but got ", eps);
  detail::metric_check_input(op, "probabilities", probabilities, n);
  detail::metric_check_input(op, "labels", labels, n);
  double sum = 0;
  index_t counted = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!detail::metric_row_on(mask, i)) continue;
    detail::metric_binary_label(op, labels, i);
    const double y = double(labels[i]);
    double p = detail::metric_value(op, "probabilities", probabilities, i);
    if (p < 0 || p > 1) fail(op, "probabilities[", i, "] expected a value in [0, 1] but got ", p);
    p = std::min(std::max(p, eps), 1.0 - eps);
    sum -= y * std::log(p) + (1 - y) * std::log1p(-p);
    ++counted;
  }
  detail::metric_require_rows(op, counted, n);
  return sum / double(counted);
}

// The same mean computed from logits without clamping:
// max(x, 0) - x y + log1p(exp(-|x|)), finite for any finite logit.
template <class S, class L>
inline double logloss_from_logits(const S* logits, const L* labels, index_t n, const std::uint8_t* mask = nullptr) {
  const char* op = "logloss_from_logits";
  detail::metric_check_rows(op, n);
  detail::metric_check_input(op, "logits", logits, n);
  detail::metric_check_input(op, "labels", labels, n);
  double sum = 0;
  index_t counted = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!detail::metric_row_on(mask, i)) continue;
    detail::metric_binary_label(op, labels, i);
    const double y = double(labels[i]);
    const double x = detail::metric_value(op, "logits", logits, i);
    sum += std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::fabs(x)));
    ++counted;
  }
  detail::metric_require_rows(op, counted, n);
  return sum / double(counted);
}

// ---- classification ---------------------------------------------------------

namespace detail {
struct MetricConfusion {
  index_t tp = 0, fp = 0, tn = 0, fn = 0;
};

// Predicted positive when p > threshold (strictly, as torchmetrics and Keras
// do); label positive when >= 0.5.
template <class P, class L>
inline MetricConfusion metric_confusion(const char* op, const P* probabilities, const L* labels, index_t n,
                                        double threshold, const std::uint8_t* mask) {
  metric_check_rows(op, n);
  check(!std::isnan(threshold), op, "expected a threshold but got ", threshold);
  metric_check_input(op, "probabilities", probabilities, n);
  metric_check_input(op, "labels", labels, n);
  MetricConfusion c;
  for (index_t i = 0; i < n; ++i) {
    if (!metric_row_on(mask, i)) continue;
    const bool y = metric_binary_label(op, labels, i);
    const bool p = metric_value(op, "probabilities", probabilities, i) > threshold;
    if (p && y) ++c.tp;
    if (p && !y) ++c.fp;
    if (!p && !y) ++c.tn;
    if (!p && y) ++c.fn;
  }
  metric_require_rows(op, c.tp + c.fp + c.tn + c.fn, n);
  return c;
}
}  // namespace detail

// Fraction of counted rows where (p > threshold) equals (label >= 0.5).
// Works on scores of any scale with a matching threshold (logits: 0).
template <class P, class L>
inline double accuracy(const P* probabilities, const L* labels, index_t n, double threshold = 0.5,
                       const std::uint8_t* mask = nullptr) {
  const detail::MetricConfusion c = detail::metric_confusion("accuracy", probabilities, labels, n, threshold, mask);
  return double(c.tp + c.tn) / double(c.tp + c.fp + c.tn + c.fn);
}

// Fraction of counted rows whose argmax over the C logits is the label; a
// tie goes to the lowest class index (as torch.argmax / numpy.argmax).
template <class S>
inline double multiclass_accuracy(const S* logits, const index_t* labels, index_t n, index_t C,
                                  const std::uint8_t* mask = nullptr) {
  const char* op = "multiclass_accuracy";
  detail::metric_check_rows(op, n);
  check(C >= 1, op, "expected C >= 1 classes but got ", C);
  detail::metric_check_input(op, "logits", logits, n);
  detail::metric_check_input(op, "labels", labels, n);
  index_t correct = 0, counted = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!detail::metric_row_on(mask, i)) continue;
    if (labels[i] < 0 || labels[i] >= C)
      fail(op, "labels[", i, "] expected a class id in [0, ", C, ") but got ", labels[i], " (C = ", C, ")");
    const S* x = logits + i * C;
    index_t best = 0;
    double best_v = detail::metric_value(op, "logits", x, 0);
    for (index_t c = 1; c < C; ++c) {
      const double v = double(x[c]);
      if (std::isnan(v)) fail(op, "logits[", i * C + c, "] (row ", i, ", class ", c, ") expected a number but got ", v);
      if (v > best_v) {  // strictly greater: the first maximum wins
        best_v = v;
        best = c;
      }
    }
    correct += best == labels[i];
    ++counted;
  }
  detail::metric_require_rows(op, counted, n);
  return double(correct) / double(counted);
}

struct PRF1 {
  double precision = 0;  // tp / (tp + fp); 0 when nothing is predicted positive
  double recall = 0;     // tp / (tp + fn); 0 when no row is positive
  double f1 = 0;         // 2 tp / (2 tp + fp + fn) = harmonic mean of the two; 0 when both are 0
};

// Binary precision, recall and F1 of (p > threshold) against (label >= 0.5).
// An undefined ratio (0/0) is reported as 0, as sklearn's zero_division=0.
template <class P, class L>
inline PRF1 precision_recall_f1(const P* probabilities, const L* labels, index_t n, double threshold = 0.5,
                                const std::uint8_t* mask = nullptr) {
  const detail::MetricConfusion c =
      detail::metric_confusion("precision_recall_f1", probabilities, labels, n, threshold, mask);
  PRF1 r;
  if (c.tp + c.fp > 0) r.precision = double(c.tp) / double(c.tp + c.fp);
  if (c.tp + c.fn > 0) r.recall = double(c.tp) / double(c.tp + c.fn);
  if (c.tp > 0) r.f1 = 2.0 * double(c.tp) / double(2 * c.tp + c.fp + c.fn);
  return r;
}

// ---- regression ------------------------------------------------------------

namespace detail {
// Mean of f(pred - target) over the counted rows.
template <class P, class Q, class F>
inline double metric_residual_mean(const char* op, const P* pred, const Q* target, index_t n, const std::uint8_t* mask,
                                   F&& f) {
  metric_check_rows(op, n);
  metric_check_input(op, "pred", pred, n);
  metric_check_input(op, "target", target, n);
  double sum = 0;
  index_t counted = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!metric_row_on(mask, i)) continue;
    sum += f(metric_value(op, "pred", pred, i) - metric_value(op, "target", target, i));
    ++counted;
  }
  metric_require_rows(op, counted, n);
  return sum / double(counted);
}
}  // namespace detail

// sqrt(mean((pred - target)^2))
template <class P, class Q>
inline double rmse(const P* pred, const Q* target, index_t n, const std::uint8_t* mask = nullptr) {
  return std::sqrt(detail::metric_residual_mean("rmse", pred, target, n, mask, [](double r) { return r * r; }));
}

// mean(|pred - target|)
template <class P, class Q>
inline double mae(const P* pred, const Q* target, index_t n, const std::uint8_t* mask = nullptr) {
  return detail::metric_residual_mean("mae", pred, target, n, mask, [](double r) { return std::fabs(r); });
}

// ---- ranking over lists -------------------------------------------------------
//
// Lists are given CSR-style: list l holds items offsets[l] .. offsets[l+1]-1
// of scores and relevance; offsets has num_lists + 1 non-decreasing entries,
// offsets[0] >= 0. Items are ranked by score descending; equal scores are
// ranked by item index ascending (the earlier item first), a fixed rule so
// that the metric is reproducible. Relevance must be finite and >= 0; an
// item is relevant when its relevance is > 0.

namespace detail {
template <class S, class R>
inline void metric_check_lists(const char* op, const S* scores, const R* relevance, const index_t* offsets,
                               index_t num_lists, index_t K) {
  check(num_lists >= 1, op, "expected num_lists >= 1 but got ", num_lists);
  check(K >= 1, op, "expected K >= 1 but got ", K);
  check(offsets != nullptr, op, "offsets is null but num_lists = ", num_lists);
  check(offsets[0] >= 0, op, "offsets[0] expected >= 0 but got ", offsets[0]);
  for (index_t l = 0; l < num_lists; ++l)
    if (offsets[l + 1] < offsets[l])
      fail(op, "offsets must be non-decreasing but offsets[", l + 1, "] = ", offsets[l + 1], " < offsets[", l,
           "] = ", offsets[l]);
  const index_t total = offsets[num_lists];
  metric_check_input(op, "scores", scores, total);
  metric_check_input(op, "relevance", relevance, total);
  for (index_t i = offsets[0]; i < total; ++i) {
    metric_value(op, "scores", scores, i);
    const double r = double(relevance[i]);
    if (!(std::isfinite(r) && r >= 0)) fail(op, "relevance[", i, "] expected a finite value >= 0 but got ", r);
  }
}

// order[0 .. min(K, size)) = the top-ranked item indices of [b, e).
template <class S>
inline void metric_top_k(std::vector<index_t>& order, const S* scores, index_t b, index_t e, index_t K) {
  order.resize(static_cast<std::size_t>(e - b));
  std::iota(order.begin(), order.end(), b);
  const auto top = order.begin() + std::min<index_t>(K, e - b);
  std::partial_sort(order.begin(), top, order.end(), [scores](index_t x, index_t y) {
    const double sx = double(scores[x]), sy = double(scores[y]);
    return sx != sy ? sx > sy : x < y;
  });
}
}  // namespace detail

// Mean NDCG@K over the lists:
//   DCG@K  = sum over ranks r < K of (2^rel - 1) / log2(r + 2)
//   IDCG@K = the same with the items sorted by relevance descending
// Exponential gain (Burges et al.); sklearn's ndcg_score uses linear gain rel,
// the same for binary relevance. Lists with IDCG = 0 (no relevant item, or
// empty) are skipped; throws when every list is skipped.
template <class S, class R>
inline double ndcg_at_k(const S* scores, const R* relevance, const index_t* offsets, index_t num_lists, index_t K) {
  const char* op = "ndcg_at_k";
  detail::metric_check_lists(op, scores, relevance, offsets, num_lists, K);
  std::vector<index_t> order;
  std::vector<double> ideal;
  double sum = 0;
  index_t used = 0;
  for (index_t l = 0; l < num_lists; ++l) {
    const index_t b = offsets[l], e = offsets[l + 1];
    const index_t top = std::min<index_t>(K, e - b);
    ideal.assign(relevance + b, relevance + e);
    std::partial_sort(ideal.begin(), ideal.begin() + top, ideal.end(), std::greater<double>());
    double idcg = 0;
    for (index_t r = 0; r < top; ++r) idcg += std::expm1(ideal[r] * std::log(2.0)) / std::log2(double(r + 2));
    if (!(idcg > 0)) continue;
    detail::metric_top_k(order, scores, b, e, K);
    double dcg = 0;
    for (index_t r = 0; r < top; ++r)
      dcg += std::expm1(double(relevance[order[r]]) * std::log(2.0)) / std::log2(double(r + 2));
    sum += dcg / idcg;
    ++used;
  }
  check(used > 0, op, "needs at least one list with a relevant item (relevance > 0) but none of the ", num_lists,
        " lists has one");
  return sum / double(used);
}

// Fraction of lists, among those with at least one relevant item, that have a
// relevant item among their top K. Throws when no list has a relevant item.
template <class S, class R>
inline double hit_rate_at_k(const S* scores, const R* relevance, const index_t* offsets, index_t num_lists, index_t K) {
  const char* op = "hit_rate_at_k";
  detail::metric_check_lists(op, scores, relevance, offsets, num_lists, K);
  std::vector<index_t> order;
  index_t hits = 0, used = 0;
  for (index_t l = 0; l < num_lists; ++l) {
    const index_t b = offsets[l], e = offsets[l + 1];
    bool any = false;
    for (index_t i = b; i < e; ++i) any = any || double(relevance[i]) > 0;
    if (!any) continue;
    ++used;
    detail::metric_top_k(order, scores, b, e, K);
    const index_t top = std::min<index_t>(K, e - b);
    for (index_t r = 0; r < top; ++r)
      if (double(relevance[order[r]]) > 0) {
        ++hits;
        break;
      }
  }
  check(used > 0, op, "needs at least one list with a relevant item (relevance > 0) but none of the ", num_lists,
        " lists has one");
  return double(hits) / double(used);
}

}  // namespace mtrec
