// mtrec bench: the three whole-model workloads (small, ref, large), shared by
// bench_model.cpp and mirrored exactly by bench/compare_pytorch.py.
//
//   Every workload: F ID fields (one table each, rows x dim); one mean-pooled
//   bag over a vocabulary of 32 (dim = the ID dim), 4 IDs per sample; one
//   item sequence of length <= T (own table: rows = one ID field's rows,
//   dim = d_model) + a learned position, encoded by a pre-LN transformer
//   (GELU FFN, no dropout, final LayerNorm) and mean-pooled over the valid
//   positions. X = [field embeddings | bag | pooled sequence]. MMoE: E ReLU
//   expert MLPs, one softmax gate per task; towers: one ReLU hidden layer,
//   then 1 output. Task 0 binary (BCE), the others regression (MSE).
//   Optimizer: Adam lr 1e-3 (mtrec's Adam updates only the touched rows of
//   embedding tables: "lazy" row-wise Adam, lazy_tables = true).
//
// | workload | batch | ID fields x rows x dim | seq T / d_model / heads / FFN / layers | experts x hidden | tower | tasks |
// | small    |    64 |  8 x  10,000 x 16      |  20 / 32 / 2 /  64 / 1                 | 4 x (128, 64)    | 32    | 2     |
// | ref      |   512 |  8 x  50,000 x 32      |  50 / 64 / 4 / 128 / 2                 | 4 x (256, 128)   | 64    | 2     |
// | large    |  2048 | 16 x 100,000 x 32      | 100 / 64 / 4 / 256 / 2                 | 8 x (512, 256)   | 64    | 3     |
#pragma once

#include <mtrec/mtrec.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mtrec_bench {

struct Workload {
  const char* name;
  mtrec::index_t batch;
  int id_fields;
  mtrec::index_t rows, dim;
  mtrec::index_t seq_len, d_model, heads, ffn;
  int layers;
  mtrec::index_t experts;
  std::vector<mtrec::index_t> expert_hidden;
  mtrec::index_t tower;
  int tasks;
  static constexpr mtrec::index_t kBagVocab = 32, kBagLen = 4;
};

inline const std::vector<Workload>& workloads() {
  static const std::vector<Workload> w = {
      {"small", 64, 8, 10000, 16, 20, 32, 2, 64, 1, 4, {128, 64}, 32, 2},
      {"ref", 512, 8, 50000, 32, 50, 64, 4, 128, 2, 4, {256, 128}, 64, 2},
      {"large", 2048, 16, 100000, 32, 100, 64, 4, 256, 2, 8, {512, 256}, 64, 3},
  };
  return w;
}

inline const Workload& workload(const std::string& name) {
  for (const auto& w : workloads())
    if (name == w.name) return w;
  throw std::invalid_argument("unknown workload '" + name + "'");
}

inline mtrec::ModelConfig make_config(const Workload& w, std::uint64_t seed = 1) {
  using namespace mtrec;
  ModelConfig c;
  c.seed = seed;
  c.architecture = Architecture::MMoE;
  c.activation = Activation::ReLU;
  c.dropout = 0.0;
  for (int f = 0; f < w.id_fields; ++f) {
    IdFeature x;
    x.name = "field" + std::to_string(f);
    x.vocab = w.rows;
    x.dim = w.dim;
    c.features.ids.push_back(x);
  }
  BagFeature bag;
  bag.name = "bag";
  bag.vocab = Workload::kBagVocab;
  bag.dim = w.dim;
  bag.pooling = BagPooling::Mean;
  c.features.bags.push_back(bag);
  SequenceFeature seq;
  seq.name = "items";
  seq.vocab = w.rows;
  seq.max_len = w.seq_len;
  seq.encoder.d_model = w.d_model;
  seq.encoder.heads = w.heads;
  seq.encoder.ffn = w.ffn;
  seq.encoder.dropout = 0.0;
  seq.encoder.activation = Activation::GELU;
  seq.layers = w.layers;
  seq.pooling = SequencePoolMode::Mean;
  c.features.sequences.push_back(seq);
  c.experts = w.experts;
  c.expert = w.expert_hidden;
  for (int k = 0; k < w.tasks; ++k) {
    TaskSpec t;
    t.name = "task" + std::to_string(k);
    t.type = k == 0 ? TaskType::Binary : TaskType::Regression;
    t.tower = {w.tower};
    c.tasks.push_back(t);
  }
  return c;
}

// B rows of random data: uniform IDs, bags of 4, sequence lengths uniform in
// [1, T] (padding IDs are 0 and ignored), labels 0/1 for task 0 and N(0,1)
// for the others. Built once, outside any timed loop.
inline mtrec::Batch<float> make_batch(const Workload& w, const mtrec::ModelConfig& c, mtrec::index_t B,
                                      std::uint64_t seed = 7) {
  using namespace mtrec;
  Batch<float> b;
  b.size = B;
  b.shape_for(c.features, c.tasks.size());
  const RandomStream rs(seed, 11);
  std::uint64_t k = 0;
  auto below = [&](index_t n) { return index_t(rs.below(k++, std::uint64_t(n))); };
  for (std::size_t f = 0; f < c.features.ids.size(); ++f)
    for (index_t i = 0; i < B; ++i) b.ids[f].push_back(below(w.rows));
  auto& bag = b.bags[0];
  bag.offsets.push_back(0);
  for (index_t i = 0; i < B; ++i) {
    for (index_t j = 0; j < Workload::kBagLen; ++j) bag.ids.push_back(below(Workload::kBagVocab));
    bag.offsets.push_back(index_t(bag.ids.size()));
  }
  auto& seq = b.sequences[0];
  for (index_t i = 0; i < B; ++i) {
    const index_t len = 1 + below(w.seq_len);
    seq.lengths.push_back(len);
    for (index_t t = 0; t < w.seq_len; ++t) seq.ids.push_back(t < len ? below(w.rows) : 0);
  }
  for (std::size_t t = 0; t < c.tasks.size(); ++t)
    for (index_t i = 0; i < B; ++i)
      b.labels[t].push_back(t == 0 ? float(rs.uniform(k++) < 0.3) : float(rs.normal(k++)));
  return b;
}

}  // namespace mtrec_bench
