// Metrics: hand-computed examples, brute-force references (pairwise AUC,
// rank-counting NDCG), masks, float inputs, bad input.
#include <limits>
#include <mtrec/train/metrics.hpp>
#include <vector>

#include "support/gradcheck.hpp"

using namespace mtrec;

namespace {

const double kMetricNaN = std::numeric_limits<double>::quiet_NaN();

// n scores on a grid of `levels` values (so many ties) and 0/1 labels with
// P(positive) = p_pos.
void tied_data(index_t n, std::uint64_t seed, int levels, double p_pos, std::vector<double>& scores,
               std::vector<double>& labels) {
  scores.resize(n);
  labels.resize(n);
  testing::fill_uniform(scores.data(), n, seed, 0, 1);
  testing::fill_uniform(labels.data(), n, seed + 1, 0, 1);
  for (index_t i = 0; i < n; ++i) {
    scores[i] = std::floor(scores[i] * levels) / levels;
    labels[i] = labels[i] < p_pos ? 1.0 : 0.0;
  }
}

// The definition: over all (positive, negative) pairs, 1 if the positive
// scores higher, 1/2 on a tie, 0 otherwise; O(n^2).
double pairwise_auc(const std::vector<double>& s, const std::vector<double>& y, const std::uint8_t* mask,
                    const index_t* groups = nullptr, index_t group = 0) {
  double wins = 0, pairs = 0;
  const index_t n = index_t(s.size());
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) {
      if ((mask && (!mask[i] || !mask[j])) || (groups && (groups[i] != group || groups[j] != group))) continue;
      if (y[i] == 1 && y[j] == 0) {
        pairs += 1;
        wins += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
      }
    }
  return pairs > 0 ? wins / pairs : kMetricNaN;
}

}  // namespace

// ---- AUC ----------------------------------------------------------------------------

TEST_CASE("auc: hand examples", "[metric][auc]") {
  // sklearn.metrics.roc_auc_score documentation example: 0.75
  // (pairs: 0.35 > 0.1 yes, 0.35 > 0.4 no, 0.8 > 0.1 yes, 0.8 > 0.4 yes: 3/4)
  const double s[] = {0.1, 0.4, 0.35, 0.8}, y[] = {0, 0, 1, 1};
  CHECK(auc(s, y, 4) == 0.75);
  const float sf[] = {0.1f, 0.4f, 0.35f, 0.8f};
  const int yi[] = {0, 0, 1, 1};
  CHECK(auc(sf, yi, 4) == 0.75);
  // all tied: every pair counts 1/2
  const double tied[] = {0.3, 0.3, 0.3, 0.3};
  CHECK(auc(tied, y, 4) == 0.5);
  // perfect and reversed
  const double up[] = {1, 2, 3, 4};
  CHECK(auc(up, y, 4) == 1.0);
  const double down[] = {4, 3, 2, 1};
  CHECK(auc(down, y, 4) == 0.0);
  // one tie among 4 pairs: scores (0.2, 0.5 | 0.5, 0.9): 0.5 vs 0.2 win, 0.5 vs 0.5 half, 0.9 wins both: 3.5 / 4
  const double half[] = {0.2, 0.5, 0.5, 0.9};
  CHECK(auc(half, y, 4) == 0.875);
  // the mask drops row 1 (0.4, negative): positives 0.35, 0.8 both beat 0.1: 1.0
  const std::uint8_t m[] = {1, 0, 1, 1};
  CHECK(auc(s, y, 4, m) == 1.0);
}

TEST_CASE("auc: equals the O(n^2) pairwise count on tied random data", "[metric][auc]") {
  for (std::uint64_t seed : {1, 2, 3}) {
    for (int levels : {5, 20, 1000}) {
      std::vector<double> s, y;
      tied_data(500, seed * 10, levels, 0.3, s, y);
      std::vector<std::uint8_t> mask(500);
      for (index_t i = 0; i < 500; ++i) mask[i] = (i * 37 + seed) % 5 != 0;
      CAPTURE(seed, levels);
      CHECK(auc(s.data(), y.data(), 500) == Approx(pairwise_auc(s, y, nullptr)).epsilon(1e-14));
      CHECK(auc(s.data(), y.data(), 500, mask.data()) == Approx(pairwise_auc(s, y, mask.data())).epsilon(1e-14));
      // float scores: the grid values stay ordered and tied the same way
      std::vector<float> sf(s.begin(), s.end());
      CHECK(auc(sf.data(), y.data(), 500) == Approx(pairwise_auc(s, y, nullptr)).epsilon(1e-14));
    }
  }
}

// ---- gAUC ---------------------------------------------------------------------------

TEST_CASE("gauc: hand example", "[metric][gauc]") {
  // group 42: scores (0.9 +, 0.1 -, 0.5 -)        -> AUC 1,     3 impressions
  //           (plus a masked row 0.95 -, which would make it 0.5 with 4)
  // group 7:  scores (0.2 +, 0.8 -)               -> AUC 0,     2 impressions
  // group 1e12: (0.3 +, 0.4 +) one class          -> skipped
  // group -5: (0.5 +, 0.5 -, 0.7 -, 0.1 +): pairs 0.5~0.5 = 1/2, others 0 -> 0.5 / 4 = 0.125, 4 impressions
  // gAUC = (3 * 1 + 2 * 0 + 4 * 0.125) / (3 + 2 + 4) = 3.5 / 9 = 0.3888888888888889
  // rows interleaved on purpose
  const index_t g[] = {42, 7, -5, 1000000000000, 42, -5, 7, 42, -5, 1000000000000, -5, 42};
  const double s[] = {0.9, 0.2, 0.5, 0.3, 0.1, 0.5, 0.8, 0.5, 0.7, 0.4, 0.1, 0.95};
  const double y[] = {1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0};
  const std::uint8_t m[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0};
  CHECK(gauc(s, y, g, 12, m) == Approx(0.3888888888888889).epsilon(1e-15));
  // unmasked, group 42 = (0.9 +; 0.1, 0.5, 0.95 -): 2/3 with 4 impressions:
  // (4 * 2/3 + 0 + 4 * 0.125) / 10 = (8/3 + 0.5) / 10 = 0.31666666666666665
  CHECK(gauc(s, y, g, 12) == Approx(0.31666666666666665).epsilon(1e-15));
}

TEST_CASE("gauc: brute force per group on random data", "[metric][gauc]") {
  const index_t n = 600;
  std::vector<double> s, y;
  tied_data(n, 77, 10, 0.4, s, y);
  std::vector<index_t> g(n);
  for (index_t i = 0; i < n; ++i) g[i] = (i * 7 + i / 13) % 23 - 4;  // 23 groups, some small
  std::vector<std::uint8_t> mask(n);
  for (index_t i = 0; i < n; ++i) mask[i] = i % 4 != 1;
  double num = 0, den = 0;
  for (index_t grp = -4; grp < 19; ++grp) {
    const double a = pairwise_auc(s, y, mask.data(), g.data(), grp);
    if (std::isnan(a)) continue;  // single class: skipped
    index_t size = 0;
    for (index_t i = 0; i < n; ++i) size += g[i] == grp && mask[i];
    num += size * a;
    den += size;
  }
  CHECK(gauc(s.data(), y.data(), g.data(), n, mask.data()) == Approx(num / den).epsilon(1e-13));
}

// ---- log loss ---------------------------------------------------------------------

TEST_CASE("logloss and logloss_from_logits: hand values and clamping", "[metric][logloss]") {
  // -(log 0.9 + log 0.8) / 2 = (0.10536051565782628 + 0.2231435513142097) / 2 = 0.164252033486018
  const double p[] = {0.9, 0.2}, y[] = {1, 0};
  CHECK(logloss(p, y, 2) == Approx(0.164252033486018).epsilon(1e-14));
  // the same from logits: sigmoid(log 9) = 0.9, sigmoid(log 0.25) = 0.2
  const double x[] = {std::log(9.0), std::log(0.25)};
  CHECK(logloss_from_logits(x, y, 2) == Approx(0.164252033486018).epsilon(1e-14));
  const float pf[] = {0.9f, 0.2f};
  CHECK(logloss(pf, y, 2) == Approx(0.164252033486018).epsilon(1e-7));
  // a certain mistake is clamped: -log(1e-7) = 16.11809565095832; a certain hit: -log(1 - 1e-7) ~ 1e-7
  const double sure[] = {0.0, 1.0}, yy[] = {1, 1};
  CHECK(logloss(sure, yy, 1) == Approx(16.11809565095832).epsilon(1e-14));
  CHECK(logloss(sure + 1, yy, 1) == Approx(1.0000000494736474e-07).epsilon(1e-9));
  CHECK(logloss(sure, yy, 1, nullptr, 1e-15) == Approx(34.538776394910684).epsilon(1e-12));  // -log(1e-15)
  // logits of +-1e4 stay finite: wrong labels cost |x|
  const double big[] = {1e4, -1e4}, wrong[] = {0, 1};
  CHECK(logloss_from_logits(big, wrong, 2) == 1e4);
  // mask
  const std::uint8_t m[] = {0, 1};
  CHECK(logloss(p, y, 2, m) == Approx(0.2231435513142097).epsilon(1e-14));
}

// ---- classification --------------------------------------------------------------

TEST_CASE("accuracy and multiclass_accuracy: hand examples", "[metric][accuracy]") {
  // predicted positive when p > threshold: (1, 0, 0, 1) vs labels (1, 1, 0, 0): 2 of 4
  const double p[] = {0.9, 0.5, 0.2, 0.7}, y[] = {1, 1, 0, 0};
  CHECK(accuracy(p, y, 4) == 0.5);
  // threshold 0.4: (1, 1, 0, 1): 3 of 4
  CHECK(accuracy(p, y, 4, 0.4) == 0.75);
  const std::uint8_t m[] = {1, 1, 1, 0};
  CHECK(accuracy(p, y, 4, 0.5, m) == Approx(2.0 / 3).epsilon(1e-15));

  // row 0: (1, 3, 3) ties -> class 1 (lowest), label 1: right
  // row 1: (2, 2, 0) ties -> class 0, label 1: wrong
  // row 2: (0, 0, 5) -> class 2, label 2: right
  // row 3: masked (label -1 never read)
  const double z[] = {1, 3, 3, 2, 2, 0, 0, 0, 5, 9, 9, 9};
  const index_t c[] = {1, 1, 2, -1};
  const std::uint8_t mm[] = {1, 1, 1, 0};
  CHECK(multiclass_accuracy(z, c, 4, 3, mm) == Approx(2.0 / 3).epsilon(1e-15));
  const float zf[] = {1, 3, 3, 2, 2, 0, 0, 0, 5};
  CHECK(multiclass_accuracy(zf, c, 3, 3) == Approx(2.0 / 3).epsilon(1e-15));
}

TEST_CASE("precision_recall_f1: hand examples and undefined cases", "[metric][prf1]") {
  // p (0.9, 0.8, 0.3, 0.6, 0.1) vs y (1, 0, 1, 1, 0)
  // threshold 0.5: predicted (1, 1, 0, 1, 0): tp 2 (rows 0, 3), fp 1 (row 1), fn 1 (row 2)
  //   precision 2/3, recall 2/3, F1 2/3
  const double p[] = {0.9, 0.8, 0.3, 0.6, 0.1}, y[] = {1, 0, 1, 1, 0};
  PRF1 r = precision_recall_f1(p, y, 5);
  CHECK(r.precision == Approx(2.0 / 3).epsilon(1e-15));
  CHECK(r.recall == Approx(2.0 / 3).epsilon(1e-15));
  CHECK(r.f1 == Approx(2.0 / 3).epsilon(1e-15));
  // threshold 0.7: predicted (1, 1, 0, 0, 0): tp 1, fp 1, fn 2
  //   precision 1/2, recall 1/3, F1 = 2 * (1/2)(1/3) / (1/2 + 1/3) = (1/3) / (5/6) = 0.4
  r = precision_recall_f1(p, y, 5, 0.7);
  CHECK(r.precision == Approx(0.5).epsilon(1e-15));
  CHECK(r.recall == Approx(1.0 / 3).epsilon(1e-15));
  CHECK(r.f1 == Approx(0.4).epsilon(1e-15));
  // nothing predicted positive and no positive label: every ratio 0/0 -> 0
  const double lo[] = {0.1, 0.2}, neg[] = {0, 0};
  r = precision_recall_f1(lo, neg, 2);
  CHECK(r.precision == 0.0);
  CHECK(r.recall == 0.0);
  CHECK(r.f1 == 0.0);
  // positives exist but none predicted: precision undefined -> 0, recall 0
  const double pos[] = {1, 0};
  r = precision_recall_f1(lo, pos, 2);
  CHECK(r.precision == 0.0);
  CHECK(r.recall == 0.0);
}

// ---- regression -------------------------------------------------------------------

TEST_CASE("rmse and mae: hand examples", "[metric][regression]") {
  // residuals (-1, 0, -2, 4): rmse = sqrt((1 + 0 + 4 + 16) / 4) = sqrt(5.25) = 2.29128784747792, mae = 7/4
  const double p[] = {1, 2, 3, 4}, t[] = {2, 2, 5, 0};
  CHECK(rmse(p, t, 4) == Approx(2.29128784747792).epsilon(1e-15));
  CHECK(mae(p, t, 4) == 1.75);
  // masking the last row: sqrt(5/3) = 1.2909944487358056, mae 3/3 = 1
  const std::uint8_t m[] = {1, 1, 1, 0};
  CHECK(rmse(p, t, 4, m) == Approx(1.2909944487358056).epsilon(1e-15));
  CHECK(mae(p, t, 4, m) == 1.0);
  const float pf[] = {1, 2, 3, 4};
  CHECK(mae(pf, t, 4) == 1.75);
}

// ---- ranking ------------------------------------------------------------------------

TEST_CASE("ndcg_at_k and hit_rate_at_k: hand examples", "[metric][ndcg]") {
  // list 0: scores (0.9, 0.3, 0.5, 0.1), relevance (0, 2, 1, 0), K = 3
  //   ranked by score: item 0 (rel 0), item 2 (rel 1), item 1 (rel 2)
  //   DCG  = (2^0-1)/log2(2) + (2^1-1)/log2(3) + (2^2-1)/log2(4) = 0 + 0.6309297535714574 + 1.5
  //        = 2.1309297535714578
  //   IDCG = relevance (2, 1, 0): 3/1 + 1/log2(3) + 0 = 3.6309297535714578
  //   NDCG = 0.58688267143572
  // list 1: relevance all 0 -> IDCG 0, skipped
  // list 2: scores (0.5, 0.5) tied, relevance (0, 1), K = 3: the tie puts item 0 first:
  //   DCG = 0 + 1/log2(3), IDCG = 1: NDCG = 0.6309297535714574
  // list 3: empty, skipped
  // mean over lists 0 and 2 = (0.58688267143572 + 0.6309297535714574) / 2 = 0.6089062125035887
  const double s[] = {0.9, 0.3, 0.5, 0.1, 0.7, 0.2, 0.5, 0.5};
  const int rel[] = {0, 2, 1, 0, 0, 0, 0, 1};
  const index_t off[] = {0, 4, 6, 8, 8};
  CHECK(ndcg_at_k(s, rel, off, 4, 3) == Approx(0.6089062125035887).epsilon(1e-14));
  // K = 1: list 0's top item has rel 0 -> 0; list 2's top (tie, item 0) rel 0 -> 0
  CHECK(ndcg_at_k(s, rel, off, 4, 1) == 0.0);
  // float scores rank the same way
  const float sf[] = {0.9f, 0.3f, 0.5f, 0.1f, 0.7f, 0.2f, 0.5f, 0.5f};
  CHECK(ndcg_at_k(sf, rel, off, 4, 3) == Approx(0.6089062125035887).epsilon(1e-14));

  // hit rate, lists with a relevant item: 0, 2 and
  // list 4: scores (0.1, 0.9), relevance (0, 1): hit at K = 1
  const double s2[] = {0.9, 0.3, 0.5, 0.1, 0.7, 0.2, 0.5, 0.5, 0.1, 0.9};
  const int rel2[] = {0, 2, 1, 0, 0, 0, 0, 1, 0, 1};
  const index_t off2[] = {0, 4, 6, 8, 8, 10};
  CHECK(hit_rate_at_k(s2, rel2, off2, 5, 1) == Approx(1.0 / 3).epsilon(1e-15));  // only list 4
  CHECK(hit_rate_at_k(s2, rel2, off2, 5, 2) == 1.0);  // list 0 (item 2), list 2 (item 1), list 4
}

namespace {
// Brute force NDCG@K by counting ranks: item i's rank is the number of items
// ranked before it (higher score, or equal score and lower index); the ideal
// rank is the same count over relevance.
double ndcg_by_rank_counting(const std::vector<double>& s, const std::vector<double>& rel,
                             const std::vector<index_t>& off, index_t K) {
  double sum = 0;
  int used = 0;
  for (std::size_t l = 0; l + 1 < off.size(); ++l) {
    double dcg = 0, idcg = 0;
    for (index_t i = off[l]; i < off[l + 1]; ++i) {
      index_t rank = 0, ideal = 0;
      for (index_t j = off[l]; j < off[l + 1]; ++j) {
        rank += s[j] > s[i] || (s[j] == s[i] && j < i);
        ideal += rel[j] > rel[i] || (rel[j] == rel[i] && j < i);
      }
      const double gain = std::pow(2.0, rel[i]) - 1;
      if (rank < K) dcg += gain / std::log2(rank + 2.0);
      if (ideal < K) idcg += gain / std::log2(ideal + 2.0);
    }
    if (idcg > 0) {
      sum += dcg / idcg;
      ++used;
    }
  }
  return sum / used;
}
}  // namespace

TEST_CASE("ndcg_at_k: brute force by rank counting on tied random lists", "[metric][ndcg]") {
  std::vector<double> s, rel;
  std::vector<index_t> off = {0};
  std::vector<double> u(6000);  // 60 lists of at most 24 items: < 60 * (1 + 3 * 24)
  testing::fill_uniform(u.data(), 6000, 5, 0, 1);
  index_t pos = 0;
  for (int l = 0; l < 60; ++l) {
    const index_t len = index_t(u[pos++] * 25);  // 0 .. 24 items, some lists empty
    for (index_t i = 0; i < len; ++i) {
      s.push_back(std::floor(u[pos] * 6) / 6);                         // heavy ties
      rel.push_back(std::floor(u[pos + 1] * 4) * (u[pos + 2] < 0.5));  // 0..3, about half zeroed
      pos += 3;
    }
    off.push_back(index_t(s.size()));
  }
  for (index_t K : {1, 3, 5, 10, 100}) {
    CAPTURE(K);
    CHECK(ndcg_at_k(s.data(), rel.data(), off.data(), 60, K) ==
          Approx(ndcg_by_rank_counting(s, rel, off, K)).epsilon(1e-13));
  }
}

// ---- bad input -------------------------------------------------------------------------

TEST_CASE("metrics reject bad input", "[metric][errors]") {
  const double s[] = {0.1, 0.4, 0.35, 0.8};
  const double one_class[] = {1, 1, 1, 1};
  testing::require_error([&] { auc(s, one_class, 4); },
                         {"auc: needs both positive and negative labels", "4 positive", "0 negative"});
  const double nan_label[] = {0, 1, kMetricNaN, 1};
  testing::require_error([&] { auc(s, nan_label, 4); }, {"auc", "labels[2]", "nan"});
  const double minus_one[] = {0, 1, -1, 1};
  testing::require_error([&] { auc(s, minus_one, 4); }, {"auc", "labels[2]", "[0, 1]", "-1"});
  const double nan_score[] = {0.1, kMetricNaN, 0.3, 0.2};
  const double y[] = {0, 1, 0, 1};
  testing::require_error([&] { auc(nan_score, y, 4); }, {"auc", "scores[1]", "nan"});
  const std::uint8_t none[] = {0, 0, 0, 0};
  testing::require_error([&] { auc(s, y, 4, none); }, {"auc", "every row masked"});
  testing::require_error([&] { auc(s, y, 0); }, {"auc", "none"});
  const index_t g[] = {1, 1, 2, 2};
  const double per_group_one_class[] = {1, 1, 0, 0};
  testing::require_error([&] { gauc(s, per_group_one_class, g, 4); },
                         {"gauc", "both positive and negative", "2 groups"});

  testing::require_error([&] { logloss(s, nan_label, 4); }, {"logloss", "labels[2]"});
  const double logits_not_probs[] = {0.5, 2.0};
  testing::require_error([&] { logloss(logits_not_probs, y, 2); }, {"logloss", "probabilities[1]", "[0, 1]", "2"});
  testing::require_error([&] { rmse(s, nan_score, 4); }, {"rmse", "target[1]", "nan"});
  testing::require_error([&] { mae(s, y, 4, none); }, {"mae", "every row masked"});
  const index_t bad_class[] = {0, 3};
  testing::require_error([&] { multiclass_accuracy(s, bad_class, 2, 2); },
                         {"multiclass_accuracy", "labels[1]", "got 3", "C = 2"});
  testing::require_error([&] { precision_recall_f1(s, minus_one, 4); }, {"precision_recall_f1", "labels[2]"});

  const int rel[] = {1, 0, 1, 0};
  const index_t not_monotonic[] = {0, 3, 2, 4};
  testing::require_error([&] { ndcg_at_k(s, rel, not_monotonic, 3, 2); },
                         {"ndcg_at_k", "non-decreasing", "offsets[2] = 2", "offsets[1] = 3"});
  testing::require_error([&] { hit_rate_at_k(s, rel, not_monotonic, 3, 2); }, {"hit_rate_at_k", "non-decreasing"});
  const index_t off[] = {0, 2, 4};
  testing::require_error([&] { ndcg_at_k(s, rel, off, 2, 0); }, {"ndcg_at_k", "K >= 1", "0"});
  testing::require_error([&] { ndcg_at_k(s, rel, off, 0, 1); }, {"ndcg_at_k", "num_lists >= 1"});
  const int neg_rel[] = {1, 0, -2, 0};
  testing::require_error([&] { ndcg_at_k(s, neg_rel, off, 2, 1); }, {"ndcg_at_k", "relevance[2]", "-2"});
  testing::require_error([&] { ndcg_at_k(nan_score, rel, off, 2, 1); }, {"ndcg_at_k", "scores[1]", "nan"});
  const int no_rel[] = {0, 0, 0, 0};
  testing::require_error([&] { hit_rate_at_k(s, no_rel, off, 2, 1); }, {"hit_rate_at_k", "relevant", "2 lists"});
  testing::require_error([&] { ndcg_at_k(s, no_rel, off, 2, 1); }, {"ndcg_at_k", "relevant"});
}
