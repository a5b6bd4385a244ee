// Test support: a tiny configuration with every feature kind, and batches for it.
#pragma once

#include <mtrec/mtrec.hpp>

#include "support/gradcheck.hpp"

namespace testing {

// A TaskSpec from its common fields (the retrieval fields keep their defaults).
inline mtrec::TaskSpec task(std::string name, mtrec::TaskType type, mtrec::index_t num_classes,
                            std::vector<mtrec::index_t> tower, double weight, mtrec::TaskLoss loss, double huber_delta) {
  mtrec::TaskSpec t;
  t.name = std::move(name);
  t.type = type;
  t.num_classes = num_classes;
  t.tower = std::move(tower);
  t.weight = weight;
  t.loss = loss;
  t.huber_delta = huber_delta;
  return t;
}

// user (vocab), item (hashed, shared by the history sequence... no: history
// shares the 'movie' table), genres bag (weighted), history sequence sharing
// the movie table, title tokens, two dense values.
inline mtrec::ModelConfig tiny_config(mtrec::Architecture arch, bool with_multiclass = true) {
  using namespace mtrec;
  ModelConfig c;
  c.architecture = arch;
  c.seed = 3;
  c.embedding_init_std = 0.3;
  TransformerConfig enc;
  enc.d_model = 4;
  enc.heads = 2;
  enc.ffn = 6;
  enc.dropout = 0.1;
  c.features.ids = {{"user", 7, 0, 3, ""}, {"movie", 9, 0, 4, ""}, {"city", 0, 5, 2, ""}};
  c.features.bags = {{"genres", 6, 0, 3, "", BagPooling::Mean, true}};
  SequenceFeature hist;
  hist.name = "history";
  hist.vocab = 9;
  hist.table = "movie";
  hist.max_len = 4;
  hist.encoder = enc;
  hist.layers = 1;
  SequenceFeature title;
  title.name = "title";
  title.vocab = 11;
  title.max_len = 3;
  title.encoder = enc;
  title.pooling = SequencePoolMode::First;
  c.features.sequences = {hist, title};
  c.features.dense = {{"age", 1}, {"stats", 2}};
  c.bottom = {6, 5};
  c.expert = {5, 4};
  c.experts = 3;
  c.ple_levels = 2;
  c.ple_shared_experts = 2;
  c.ple_task_experts = 1;
  c.dropout = 0.2;
  TaskSpec ctr = task("ctr", TaskType::Binary, 0, {3}, 1.0, TaskLoss::Default, 1.0);
  TaskSpec rating = task("rating", TaskType::Regression, 0, {3}, 0.7, TaskLoss::Huber, 0.5);
  TaskSpec genre = task("genre", TaskType::MultiClass, 3, {3}, 0.4, TaskLoss::Default, 1.0);
  if (arch == Architecture::SingleTask) {
    c.tasks = {rating};
  } else if (arch == Architecture::ESMM) {
    TaskSpec ctcvr = task("ctcvr", TaskType::Binary, 0, {3}, 0.8, TaskLoss::Default, 1.0);
    c.tasks = {ctr, ctcvr};
  } else {
    c.tasks = {ctr, rating};
    if (with_multiclass) c.tasks.push_back(genre);
  }
  return c;
}

// The tiny config with ranking and retrieval tasks: ctr (BPR), rating,
// next_movie (retrieval on the movie table the features also read) and tag
// (retrieval on its own 6 x 3 table). Dropout stays as in tiny_config.
inline mtrec::ModelConfig tiny_ranking_config(mtrec::Architecture arch) {
  using namespace mtrec;
  ModelConfig c = tiny_config(arch, false);
  c.tasks[0].loss = TaskLoss::BPR;
  TaskSpec next = task("next_movie", TaskType::Retrieval, 0, {3}, 0.6, TaskLoss::Default, 1.0);
  next.target_table = "movie";
  next.temperature = 0.5;
  TaskSpec tag = task("tag", TaskType::Retrieval, 0, {2}, 0.9, TaskLoss::SampledSoftmax, 1.0);
  tag.target_table = "tag_out";
  tag.target_vocab = 6;
  tag.target_dim = 3;
  c.tasks.push_back(next);
  c.tasks.push_back(tag);
  return c;
}

// B rows of random data for the tiny config; every task has some missing labels.
template <class T>
inline mtrec::Batch<T> tiny_batch(const mtrec::ModelConfig& c, mtrec::index_t B, std::uint64_t seed) {
  using namespace mtrec;
  Batch<T> b;
  b.size = B;
  b.shape_for(c.features, c.tasks.size());
  RandomStream rs(seed, 1);
  std::uint64_t k = 0;
  auto below = [&](index_t n) { return index_t(rs.below(k++, std::uint64_t(n))); };
  auto unif = [&]() { return rs.uniform(k++); };
  for (std::size_t f = 0; f < c.features.ids.size(); ++f) {
    const auto& x = c.features.ids[f];
    for (index_t i = 0; i < B; ++i)
      b.ids[f].push_back(x.vocab > 0 ? below(x.vocab) : index_t(rs.block(k++)[0]) * 7919);  // raw IDs when hashed
  }
  for (std::size_t f = 0; f < c.features.bags.size(); ++f) {
    auto& bag = b.bags[f];
    bag.offsets.push_back(0);
    for (index_t i = 0; i < B; ++i) {
      const index_t len = i % 4;  // lengths 0, 1, 2, 3
      for (index_t j = 0; j < len; ++j) {
        bag.ids.push_back(below(c.features.bags[f].vocab));
        bag.weights.push_back(T(0.5 + unif()));
      }
      bag.offsets.push_back(index_t(bag.ids.size()));
    }
  }
  for (std::size_t f = 0; f < c.features.sequences.size(); ++f) {
    const auto& s = c.features.sequences[f];
    for (index_t i = 0; i < B; ++i) {
      const index_t len = (i + index_t(f)) % (s.max_len + 1);  // includes empty sequences
      b.sequences[f].lengths.push_back(len);
      for (index_t t = 0; t < s.max_len; ++t) b.sequences[f].ids.push_back(t < len ? below(s.vocab) : -1);
    }
  }
  for (std::size_t f = 0; f < c.features.dense.size(); ++f)
    for (index_t i = 0; i < B * c.features.dense[f].dim; ++i) b.dense[f].push_back(T(2 * unif() - 1));
  for (std::size_t t = 0; t < c.tasks.size(); ++t) {
    for (index_t i = 0; i < B; ++i) {
      const auto& task = c.tasks[t];
      // Retrieval labels need the resolved config (model.config()) when the target table is shared.
      T y = task.type == TaskType::Binary       ? T(unif() < 0.4)
            : task.type == TaskType::Regression ? T(4 * unif() - 1)
            : task.type == TaskType::Retrieval  ? T(below(task.target_vocab))
                                                : T(below(task.num_classes));
      b.labels[t].push_back(y);
      b.label_mask[t].push_back(std::uint8_t((i + t) % 5 != 0));  // ~20% missing
    }
  }
  for (index_t i = 0; i < B; ++i) b.weights.push_back(T(0.5 + unif()));
  return b;
}

}  // namespace testing
