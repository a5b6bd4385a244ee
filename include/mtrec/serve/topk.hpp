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

template <class T>
class TopKScorer {
 public:
  // item_fields: names of the features that describe the candidate item.
  TopKScorer(const MultiTaskModel<T>& model, std::vector<std::string> item_fields, const std::string& score_column)
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
    batch_ = candidates;  // reuses capacity after the first request
    const index_t N = candidates.size;
    check(user.ids.size() == batch_.ids.size() && user.bags.size() == batch_.bags.size() &&
              user.sequences.size() == batch_.sequences.size() && user.dense.size() == batch_.dense.size(),
          op, "user and candidate batches declare different features");
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
  const MultiTaskModel<T>* model_;
  std::vector<bool> user_ids_, user_bags_, user_seqs_, user_dense_;
  index_t column_ = 0;
  Batch<T> batch_;
  typename MultiTaskModel<T>::Workspace ws_;
  Tensor<T> out_;
  std::vector<ScoredItem> results_;
};

}  // namespace mtrec
