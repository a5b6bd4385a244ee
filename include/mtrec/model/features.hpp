// mtrec: the input features of a model, and the batches that carry them.
//
// A model is described by plain structs: which ID, bag, sequence and dense
// fields it reads, and which tasks it predicts. Batch<T> holds the values of
// those fields for B rows, in the order the features are declared. The same
// struct serves as an in-memory dataset (B = all rows): gather() copies
// selected rows into a reusable batch without reallocating once it is sized.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/layers/common.hpp"
#include "mtrec/layers/embedding.hpp"
#include "mtrec/layers/pooling.hpp"
#include "mtrec/layers/transformer.hpp"

namespace mtrec {

// A categorical field: one ID per row, looked up in an embedding table.
struct IdFeature {
  std::string name;
  index_t vocab = 0;         // IDs in [0, vocab); or
  index_t hash_buckets = 0;  // any 64-bit ID, hashed into this many rows (for unseen IDs)
  index_t dim = 16;
  std::string table;         // table name; empty = the field's own name. Fields naming one table share it.
  bool item_side = false;    // describes the candidate item, not the user (ranking encodes the user side once)
};

// A multi-hot field: a variable-length bag of IDs per row, pooled.
struct BagFeature {
  std::string name;
  index_t vocab = 0;
  index_t hash_buckets = 0;
  index_t dim = 16;
  std::string table;
  BagPooling pooling = BagPooling::Mean;
  bool weighted = false;  // rows carry one weight per ID
  bool item_side = false;    // describes the candidate item, not the user (ranking encodes the user side once)
};

// An ordered ID sequence (a user's recent items) or the tokens of a text
// (an item's title words): embedded (dim = encoder d_model), plus a learned
// position, encoded by a pre-LN transformer stack, then pooled.
struct SequenceFeature {
  std::string name;
  index_t vocab = 0;
  index_t hash_buckets = 0;
  std::string table;  // may share an ID field's table (same rows, dim = d_model)
  index_t max_len = 20;
  TransformerConfig encoder;  // encoder.d_model is the embedding dim
  int layers = 1;
  SequencePoolMode pooling = SequencePoolMode::Mean;
  bool item_side = false;    // describes the candidate item, not the user (ranking encodes the user side once)
};

// Numeric values, `dim` per row, used as given (standardise them upstream).
struct DenseFeature {
  std::string name;
  index_t dim = 1;
  bool item_side = false;    // describes the candidate item, not the user (ranking encodes the user side once)
};

struct FeatureSpec {
  std::vector<IdFeature> ids;
  std::vector<BagFeature> bags;
  std::vector<SequenceFeature> sequences;  // behaviour sequences and token (text) fields
  std::vector<DenseFeature> dense;
};

inline index_t feature_rows(const std::string& name, index_t vocab, index_t buckets) {
  check((vocab > 0) != (buckets > 0), "FeatureSpec", "field '", name,
        "' expected exactly one of vocab or hash_buckets > 0 but got vocab=", vocab, " hash_buckets=", buckets);
  return vocab > 0 ? vocab : buckets;
}

// Values of every declared feature for `size` rows, plus labels.
template <class T>
struct Batch {
  struct Bag {
    std::vector<index_t> ids;      // (n) all bags' IDs, concatenated
    std::vector<index_t> offsets;  // (size + 1) bag r is ids[offsets[r] .. offsets[r+1])
    std::vector<T> weights;        // (n) if the field is weighted, else empty
  };
  struct Sequence {
    std::vector<index_t> ids;      // (size, max_len) padded; entries past the length are ignored
    std::vector<index_t> lengths;  // (size) valid positions, in [0, max_len]
  };

  index_t size = 0;
  std::vector<std::vector<index_t>> ids;  // [id field] (size)
  std::vector<Bag> bags;                  // [bag field]
  std::vector<Sequence> sequences;        // [sequence field]
  std::vector<std::vector<T>> dense;      // [dense field] (size, dim)
  std::vector<std::vector<T>> labels;     // [task] (size); a multi-class label is the class id as a number
  std::vector<std::vector<std::uint8_t>> label_mask;  // [task] (size) 1 = labelled; empty vector = all labelled
  std::vector<T> weights;                 // (size) sample weights, or empty = 1
  std::vector<index_t> groups;            // (size) optional group ids (e.g. user) for gAUC

  // Shapes the containers for `spec`, `tasks` tasks and `n` rows (no values).
  void shape_for(const FeatureSpec& spec, std::size_t tasks) {
    ids.resize(spec.ids.size());
    bags.resize(spec.bags.size());
    sequences.resize(spec.sequences.size());
    dense.resize(spec.dense.size());
    labels.resize(tasks);
    label_mask.resize(tasks);
  }

  // Copies rows src[rows[0..n)] into this batch, reusing capacity. Every row
  // index must be in [0, src.size), and src's containers must hold src.size
  // rows (checked, so that a bad index or a malformed source is an error).
  void gather(const Batch& src, const index_t* rows, index_t n) {
    const char* op = "Batch::gather";
    check(n >= 0, op, "expected n >= 0 rows but got ", n);
    check(n == 0 || rows != nullptr, op, "expected ", n, " row indices but got a null pointer");
    check(&src != this, op, "cannot gather a batch into itself");
    for (index_t i = 0; i < n; ++i)
      if (rows[i] < 0 || rows[i] >= src.size)
        fail(op, "row index ", rows[i], " at position ", i, " expected in [0, ", src.size, ")");
    const std::size_t N = static_cast<std::size_t>(src.size);
    for (std::size_t f = 0; f < src.ids.size(); ++f)
      check(src.ids[f].size() == N, op, "source ID field ", f, " expected ", N, " values but has ", src.ids[f].size());
    for (std::size_t f = 0; f < src.bags.size(); ++f) {
      const Bag& b = src.bags[f];
      check(b.offsets.size() == N + 1, op, "source bag field ", f, " expected ", N + 1, " offsets but has ",
            b.offsets.size());
      check(b.weights.empty() || b.weights.size() == b.ids.size(), op, "source bag field ", f, " expected ",
            b.ids.size(), " weights but has ", b.weights.size());
      for (index_t i = 0; i < n; ++i) {  // only the rows gathered: O(n), not O(src.size), per call
        const std::size_t r = static_cast<std::size_t>(rows[i]);
        check(b.offsets[r] >= 0 && b.offsets[r] <= b.offsets[r + 1] && b.offsets[r + 1] <= index_t(b.ids.size()), op,
              "source bag field ", f, " offsets[", r, "..", r + 1, "] = ", b.offsets[r], "..", b.offsets[r + 1],
              " expected a non-decreasing range within its ", b.ids.size(), " IDs");
      }
    }
    for (std::size_t f = 0; f < src.sequences.size(); ++f) {
      const Sequence& q = src.sequences[f];
      check(q.lengths.size() == N && (N == 0 || q.ids.size() % N == 0), op, "source sequence field ", f,
            " expected ", N, " lengths and a multiple of ", N, " IDs but has ", q.lengths.size(), " and ", q.ids.size());
    }
    for (std::size_t f = 0; f < src.dense.size(); ++f)
      check(N == 0 || src.dense[f].size() % N == 0, op, "source dense field ", f, " expected a multiple of ", N,
            " values but has ", src.dense[f].size());
    auto check_per_row = [&](std::size_t have, const char* what, std::size_t k) {
      check(have == 0 || have == N, op, "source ", what, " ", k, " expected ", N, " entries (or none) but has ", have);
    };
    for (std::size_t k = 0; k < src.labels.size(); ++k) check_per_row(src.labels[k].size(), "labels of task", k);
    for (std::size_t k = 0; k < src.label_mask.size(); ++k) check_per_row(src.label_mask[k].size(), "label mask of task", k);
    check_per_row(src.weights.size(), "sample weights", 0);
    check_per_row(src.groups.size(), "group ids", 0);
    size = n;
    ids.resize(src.ids.size());
    for (std::size_t f = 0; f < src.ids.size(); ++f) {
      ids[f].resize(static_cast<std::size_t>(n));
      for (index_t i = 0; i < n; ++i) ids[f][i] = src.ids[f][static_cast<std::size_t>(rows[i])];
    }
    bags.resize(src.bags.size());
    for (std::size_t f = 0; f < src.bags.size(); ++f) {
      const Bag& s = src.bags[f];
      Bag& d = bags[f];
      d.offsets.resize(static_cast<std::size_t>(n + 1));
      d.offsets[0] = 0;
      for (index_t i = 0; i < n; ++i) {
        const std::size_t r = static_cast<std::size_t>(rows[i]);
        d.offsets[i + 1] = d.offsets[i] + (s.offsets[r + 1] - s.offsets[r]);
      }
      d.ids.resize(static_cast<std::size_t>(d.offsets[n]));
      d.weights.resize(s.weights.empty() ? 0 : d.ids.size());
      for (index_t i = 0; i < n; ++i) {
        const std::size_t r = static_cast<std::size_t>(rows[i]);
        const index_t len = s.offsets[r + 1] - s.offsets[r];
        for (index_t j = 0; j < len; ++j) {
          d.ids[d.offsets[i] + j] = s.ids[s.offsets[r] + j];
          if (!s.weights.empty()) d.weights[d.offsets[i] + j] = s.weights[s.offsets[r] + j];
        }
      }
    }
    sequences.resize(src.sequences.size());
    for (std::size_t f = 0; f < src.sequences.size(); ++f) {
      const Sequence& s = src.sequences[f];
      Sequence& d = sequences[f];
      const index_t L = src.size ? index_t(s.ids.size()) / src.size : 0;
      d.ids.resize(static_cast<std::size_t>(n * L));
      d.lengths.resize(static_cast<std::size_t>(n));
      for (index_t i = 0; i < n; ++i) {
        const index_t r = rows[i];
        std::copy(s.ids.begin() + r * L, s.ids.begin() + (r + 1) * L, d.ids.begin() + i * L);
        d.lengths[i] = s.lengths[r];
      }
    }
    dense.resize(src.dense.size());
    for (std::size_t f = 0; f < src.dense.size(); ++f) {
      const index_t dim = src.size ? index_t(src.dense[f].size()) / src.size : 0;
      dense[f].resize(static_cast<std::size_t>(n * dim));
      for (index_t i = 0; i < n; ++i)
        std::copy(src.dense[f].begin() + rows[i] * dim, src.dense[f].begin() + (rows[i] + 1) * dim,
                  dense[f].begin() + i * dim);
    }
    auto gather_vec = [&](auto& dst, const auto& s) {
      dst.resize(s.empty() ? 0 : static_cast<std::size_t>(n));
      if (!s.empty())
        for (index_t i = 0; i < n; ++i) dst[i] = s[static_cast<std::size_t>(rows[i])];
    };
    labels.resize(src.labels.size());
    label_mask.resize(src.label_mask.size());
    for (std::size_t k = 0; k < src.labels.size(); ++k) gather_vec(labels[k], src.labels[k]);
    for (std::size_t k = 0; k < src.label_mask.size(); ++k) gather_vec(label_mask[k], src.label_mask[k]);
    gather_vec(weights, src.weights);
    gather_vec(groups, src.groups);
  }
};

// A seeded train/validation/test split of an in-memory dataset. Each part
// keeps the rows in their original order; `valid` or `test` may be empty.
template <class T>
struct DatasetSplit {
  Batch<T> train, valid, test;
};

template <class T>
inline DatasetSplit<T> split_dataset(const Batch<T>& all, double train, double valid, double test, std::uint64_t seed) {
  const char* op = "split_dataset";
  check(all.size > 0, op, "expected a non-empty dataset");
  check(train > 0 && valid >= 0 && test >= 0 && std::fabs(train + valid + test - 1.0) <= 1e-6, op,
        "expected fractions >= 0 (train > 0) summing to 1 but got ", train, ",", valid, ",", test);
  const index_t n = all.size;
  std::vector<index_t> perm(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) perm[i] = i;
  shuffle_indices(perm.data(), std::uint64_t(n), seed, 0x5B17);
  const index_t b1 = std::min<index_t>(n, index_t(std::llround(train * double(n))));
  const index_t b2 = test == 0 ? n : std::max<index_t>(b1, std::min<index_t>(n, index_t(std::llround((train + valid) * double(n)))));
  DatasetSplit<T> out;
  auto take = [&](Batch<T>& dst, index_t from, index_t to) {
    std::sort(perm.begin() + from, perm.begin() + to);
    dst.gather(all, perm.data() + from, to - from);
  };
  take(out.train, 0, b1);
  take(out.valid, b1, b2);
  take(out.test, b2, n);
  return out;
}

}  // namespace mtrec
