// mtrec: scoring one user against N candidate items and keeping the top K.
//
// The caller fills a candidate batch whose item-side features vary per row;
// the scorer copies the user's features (every field not listed as an item
// field) from a one-row user batch into all N rows, runs predict, and
// returns the K best rows by a task's score. All buffers live in the scorer,
// so one scorer per thread serves requests without allocating once warm.
#pragma once

#include <algorithm>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "mtrec/model/multitask.hpp"

namespace mtrec {

struct ScoredItem {
  index_t row;    // the candidate's row in the candidate batch
  double score;   // the chosen output column (a probability for binary tasks)
};

template <class T, class Device = Cpu>
class TopKScorer {
 public:
  // item_fields: names of the features that describe the candidate item.
  TopKScorer(const MultiTaskModel<T, Device>& model, std::vector<std::string> item_fields, const std::string& score_column)
      : model_(&model) {
    const FeatureSpec& f = model.config().features;
    const std::unordered_set<std::string> items(item_fields.begin(), item_fields.end());
    std::unordered_set<std::string> seen;
    auto mark = [&](const std::string& n, std::vector<bool>& user) { user.push_back(!items.count(n)); if (items.count(n)) seen.insert(n); };
    for (const auto& x : f.ids) mark(x.name, user_ids_);
    for (const auto& x : f.bags) mark(x.name, user_bags_);
    for (const auto& x : f.sequences) mark(x.name, user_seqs_);
    for (const auto& x : f.dense) mark(x.name, user_dense_);
    for (const auto& n : item_fields)
      check(seen.count(n) != 0, "TopKScorer", "item field '", n, "' is not a feature of the model");
    const auto cols = model.output_columns();
    column_ = -1;
    for (std::size_t i = 0; i < cols.size(); ++i)
      if (cols[i] == score_column) column_ = index_t(i);
    check(column_ >= 0, "TopKScorer", "no output column named '", score_column, "'");
  }

  // The top k candidates, best first (ties: lower row first).
  const std::vector<ScoredItem>& score(const Batch<T>& user, const Batch<T>& candidates, index_t k) {
    const char* op = "TopKScorer::score";
    check(user.size == 1, op, "expected a one-row user batch but got ", user.size, " rows");
    check(candidates.size > 0, op, "expected at least one candidate");
    check(k > 0, op, "expected k > 0 but got ", k);
    check_user(op, user, candidates);
    batch_ = candidates;  // reuses capacity after the first request
    const index_t N = candidates.size;
    for (std::size_t f = 0; f < user_ids_.size(); ++f)
      if (user_ids_[f]) std::fill(batch_.ids[f].begin(), batch_.ids[f].end(), user.ids[f].at(0));
    for (std::size_t f = 0; f < user_dense_.size(); ++f)
      if (user_dense_[f]) {
        const auto& u = user.dense[f];
        batch_.dense[f].resize(u.size() * std::size_t(N));
        for (index_t i = 0; i < N; ++i) std::copy(u.begin(), u.end(), batch_.dense[f].begin() + i * index_t(u.size()));
      }
    for (std::size_t f = 0; f < user_seqs_.size(); ++f)
      if (user_seqs_[f]) {
        const auto& u = user.sequences[f];
        auto& d = batch_.sequences[f];
        d.ids.resize(u.ids.size() * std::size_t(N));
        d.lengths.assign(std::size_t(N), u.lengths.at(0));
        for (index_t i = 0; i < N; ++i) std::copy(u.ids.begin(), u.ids.end(), d.ids.begin() + i * index_t(u.ids.size()));
      }
    for (std::size_t f = 0; f < user_bags_.size(); ++f)
      if (user_bags_[f]) {
        const auto& u = user.bags[f];
        auto& d = batch_.bags[f];
        const index_t len = u.offsets.at(1);
        d.offsets.resize(std::size_t(N + 1));
        d.ids.resize(std::size_t(N * len));
        d.weights.resize(u.weights.empty() ? 0 : std::size_t(N * len));
        for (index_t i = 0; i < N; ++i) {
          d.offsets[i] = i * len;
          std::copy(u.ids.begin(), u.ids.begin() + len, d.ids.begin() + i * len);
          if (!u.weights.empty()) std::copy(u.weights.begin(), u.weights.begin() + len, d.weights.begin() + i * len);
        }
        d.offsets[N] = N * len;
      }
    model_->predict(ws_, batch_, out_);
    const index_t C = out_.dim(1);
    results_.resize(std::size_t(N));
    for (index_t i = 0; i < N; ++i) results_[i] = {i, double(out_[i * C + column_])};
    const index_t kk = std::min(k, N);
    std::partial_sort(results_.begin(), results_.begin() + kk, results_.end(), [](const ScoredItem& a, const ScoredItem& b) {
      return a.score > b.score || (a.score == b.score && a.row < b.row);
    });
    results_.resize(std::size_t(kk));
    return results_;
  }

 private:
  // The user-side fields of the one-row user batch: every container the
  // scorer copies from holds exactly one row (bags: offsets {0, n} over n IDs
  // and, when weighted, n weights), so the copies below stay in bounds.
  void check_user(const char* op, const Batch<T>& user, const Batch<T>& candidates) const {
    const FeatureSpec& f = model_->config().features;
    check(user.ids.size() == f.ids.size() && user.bags.size() == f.bags.size() &&
              user.sequences.size() == f.sequences.size() && user.dense.size() == f.dense.size(),
          op, "user batch expected ", f.ids.size(), " ID, ", f.bags.size(), " bag, ", f.sequences.size(),
          " sequence and ", f.dense.size(), " dense fields but got ", user.ids.size(), ", ", user.bags.size(), ", ",
          user.sequences.size(), ", ", user.dense.size());
    check(candidates.ids.size() == f.ids.size() && candidates.bags.size() == f.bags.size() &&
              candidates.sequences.size() == f.sequences.size() && candidates.dense.size() == f.dense.size(),
          op, "candidate batch expected ", f.ids.size(), " ID, ", f.bags.size(), " bag, ", f.sequences.size(),
          " sequence and ", f.dense.size(), " dense fields but got ", candidates.ids.size(), ", ",
          candidates.bags.size(), ", ", candidates.sequences.size(), ", ", candidates.dense.size());
    for (std::size_t i = 0; i < f.ids.size(); ++i)
      if (user_ids_[i])
        check(user.ids[i].size() == 1, op, "user ID field '", f.ids[i].name, "' expected 1 value but got ",
              user.ids[i].size());
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      if (!user_bags_[i]) continue;
      const auto& b = user.bags[i];
      const std::string& name = f.bags[i].name;
      check(b.offsets.size() == 2, op, "user bag field '", name, "' expected 2 offsets but got ", b.offsets.size());
      check(b.offsets[0] == 0 && b.offsets[1] == index_t(b.ids.size()), op, "user bag field '", name,
            "' expected offsets {0, ", b.ids.size(), "} but got {", b.offsets[0], ", ", b.offsets[1], "}");
      if (f.bags[i].weighted)
        check(b.weights.size() == b.ids.size(), op, "weighted user bag field '", name, "' expected ", b.ids.size(),
              " weights but got ", b.weights.size());
      else
        check(b.weights.empty(), op, "unweighted user bag field '", name, "' expected no weights but got ",
              b.weights.size());
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      if (!user_seqs_[i]) continue;
      const auto& q = user.sequences[i];
      const index_t L = f.sequences[i].max_len;
      check(q.lengths.size() == 1 && q.ids.size() == std::size_t(L), op, "user sequence field '",
            f.sequences[i].name, "' expected 1 length and ", L, " IDs but got ", q.lengths.size(), " and ", q.ids.size());
    }
    for (std::size_t i = 0; i < f.dense.size(); ++i)
      if (user_dense_[i])
        check(user.dense[i].size() == std::size_t(f.dense[i].dim), op, "user dense field '", f.dense[i].name,
              "' expected ", f.dense[i].dim, " values but got ", user.dense[i].size());
  }

  const MultiTaskModel<T, Device>* model_;
  std::vector<bool> user_ids_, user_bags_, user_seqs_, user_dense_;
  index_t column_ = 0;
  Batch<T> batch_;
  typename MultiTaskModel<T, Device>::Workspace ws_;
  Tensor<T> out_;
  std::vector<ScoredItem> results_;
};

}  // namespace mtrec
