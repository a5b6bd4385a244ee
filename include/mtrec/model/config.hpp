// mtrec: what a multi-task model is made of — its features, tasks and
// architecture — as one plain struct, checked when the model is built.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mtrec/model/features.hpp"

namespace mtrec {

enum class Architecture {
  SingleTask,    // bottom MLP + one tower (exactly one task)
  SharedBottom,  // bottom MLP shared by all tasks, one tower per task
  MMoE,          // E shared expert MLPs, one softmax gate per task (Ma et al., KDD 2018)
  PLE,           // stacked CGC levels of task and shared experts (Tang et al., RecSys 2020)
  ESMM,          // pCTCVR = pCTR x pCVR over all impressions (Ma et al., SIGIR 2018)
};

// Retrieval: the label is a target item's row in a table; the tower outputs a
// query vector scored against that table (in-batch sampled softmax).
enum class TaskType { Binary, Regression, MultiClass, Retrieval };

enum class TaskLoss {
  Default,       // BCE for binary, MSE for regression, cross-entropy for multi-class
  BCE,
  MSE,
  Huber,
  CrossEntropy,
  BPR,             // binary: pairwise -log sigmoid(s_pos - s_neg) over the batch's (positive, negative)
                   // pairs, within each group when the batch has groups (e.g. per user)
  SampledSoftmax,  // retrieval (its default): softmax over the batch's targets, the others as negatives
};

struct TaskSpec {
  std::string name;
  TaskType type = TaskType::Binary;
  index_t num_classes = 0;           // multi-class only (>= 2)
  std::vector<index_t> tower = {32};  // hidden widths; the output layer (1 or C) is added
  double weight = 1.0;               // lambda_k in L = sum_k lambda_k L_k
  TaskLoss loss = TaskLoss::Default;
  double huber_delta = 1.0;
  // Retrieval tasks only. target_table names the table the labels index:
  // either one the features already use (item-item p(i|j), sharing the item
  // embeddings), or a new one of target_vocab x target_dim. The model fills
  // in target_vocab/target_dim of a shared table. Scores are <q, e_i> / temperature.
  std::string target_table;
  index_t target_vocab = 0;
  index_t target_dim = 0;
  double temperature = 1.0;
};

struct ModelConfig {
  FeatureSpec features;
  std::vector<TaskSpec> tasks;
  Architecture architecture = Architecture::MMoE;
  std::vector<index_t> bottom = {128, 64};  // SingleTask and SharedBottom
  index_t experts = 4;                       // MMoE
  std::vector<index_t> expert = {64, 32};   // each expert MLP (MMoE, PLE)
  int ple_levels = 2;
  index_t ple_shared_experts = 2;
  index_t ple_task_experts = 1;
  Activation activation = Activation::ReLU;  // bottom, experts and towers
  double dropout = 0.0;                      // after every hidden activation
  double embedding_init_std = 0.01;
  // Operands of the matrix products: fp32, or bf16 with fp32 accumulation on
  // the CPU's bf16 units (kernels/cpu_bf16.hpp); embeddings, master weights,
  // optimizer state, softmax, layernorm and losses stay fp32 either way. On a
  // machine without AMX or AVX512_BF16, and on other devices, the products
  // run in fp32 (MultiTaskModel::matmul_path() says which).
  Precision precision = Precision::FP32;
  std::uint64_t seed = 0;
};

inline const char* architecture_name(Architecture a) {
  switch (a) {
    case Architecture::SingleTask: return "single";
    case Architecture::SharedBottom: return "shared_bottom";
    case Architecture::MMoE: return "mmoe";
    case Architecture::PLE: return "ple";
    case Architecture::ESMM: return "esmm";
  }
  return "?";
}

inline const char* task_type_name(TaskType t) {
  switch (t) {
    case TaskType::Binary: return "binary";
    case TaskType::Regression: return "regression";
    case TaskType::MultiClass: return "multiclass";
    case TaskType::Retrieval: return "retrieval";
  }
  return "?";
}

// Columns of a task's raw output: 1, or C logits for a multi-class task.
// A retrieval task outputs its query vector (target_dim columns).
inline index_t task_output_width(const TaskSpec& t) {
  if (t.type == TaskType::MultiClass) return t.num_classes;
  if (t.type == TaskType::Retrieval) return t.target_dim;
  return 1;
}

// One table's shape, as agreed by every field that uses it.
struct TableSpec {
  std::string name;
  index_t rows = 0, dim = 0;
  bool hashed = false;
};

// Upper bounds of a configuration. They are far beyond any model that fits a
// machine, and low enough that the arithmetic on them cannot overflow and
// that a hostile file (see load_checkpoint) cannot make the model's
// bookkeeping, as opposed to its parameters, large. Each check names its limit.
struct ConfigLimits {
  static constexpr index_t max_rows = index_t(1) << 40;     // vocab, hash_buckets, target_vocab
  static constexpr index_t max_dim = index_t(1) << 16;      // dim, d_model, target_dim
  static constexpr index_t max_width = index_t(1) << 20;    // MLP widths, ffn
  static constexpr index_t max_depth = 64;                  // MLP layers, encoder layers
  static constexpr index_t max_heads = 1024;
  static constexpr index_t max_len = index_t(1) << 20;      // sequence max_len
  static constexpr index_t max_classes = index_t(1) << 24;  // num_classes
  static constexpr index_t max_experts = 1024;              // experts of one MMoE/PLE level, in total
  static constexpr index_t max_levels = 16;                 // ple_levels
  static constexpr index_t max_tasks = 1024;
  static constexpr index_t max_features = 4096;             // fields of each kind
  static constexpr index_t max_parameters = index_t(1) << 42;  // elements of all parameters together
};

// Checks the whole configuration and returns the embedding tables it needs,
// in first-use order. Every problem is reported with the field or task name.
inline std::vector<TableSpec> validate_config(const ModelConfig& c) {
  const char* op = "ModelConfig";
  const FeatureSpec& f = c.features;
  using L = ConfigLimits;
  auto in_range = [&](index_t v, index_t lo, index_t hi, const std::string& where, const char* field) {
    check(v >= lo && v <= hi, op, where, field, " expected in [", lo, ", ", hi, "] but got ", v);
  };
  auto finite_in = [&](double v, double lo, double hi, bool lo_open, const std::string& where, const char* field) {
    const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi;
    check(ok, op, where, field, " expected a finite value in ", lo_open ? "(" : "[", lo, ", ", hi, "] but got ", v);
  };
  auto widths = [&](const std::vector<index_t>& w, const std::string& where, const char* field) {
    check(index_t(w.size()) <= L::max_depth, op, where, field, " expected at most ", L::max_depth,
          " layers but got ", w.size());
    for (index_t x : w) in_range(x, 1, L::max_width, where, field);
  };
  check(!c.tasks.empty(), op, "expected at least one task");
  check(index_t(c.tasks.size()) <= L::max_tasks, op, "expected at most ", L::max_tasks, " tasks but got ",
        c.tasks.size());
  for (std::size_t n : {f.ids.size(), f.bags.size(), f.sequences.size(), f.dense.size()})
    check(index_t(n) <= L::max_features, op, "expected at most ", L::max_features, " fields of each kind but got ", n);
  for (const auto& x : f.ids) {
    const std::string w = "ID field '" + x.name + "' ";
    in_range(x.vocab, 0, L::max_rows, w, "vocab");
    in_range(x.hash_buckets, 0, L::max_rows, w, "hash_buckets");
    in_range(x.dim, 1, L::max_dim, w, "dim");
  }
  for (const auto& x : f.bags) {
    const std::string w = "bag field '" + x.name + "' ";
    in_range(x.vocab, 0, L::max_rows, w, "vocab");
    in_range(x.hash_buckets, 0, L::max_rows, w, "hash_buckets");
    in_range(x.dim, 1, L::max_dim, w, "dim");
  }
  for (const auto& x : f.sequences) {
    const std::string w = "sequence '" + x.name + "' ";
    in_range(x.vocab, 0, L::max_rows, w, "vocab");
    in_range(x.hash_buckets, 0, L::max_rows, w, "hash_buckets");
    in_range(x.max_len, 1, L::max_len, w, "max_len");
    in_range(x.layers, 1, L::max_depth, w, "layers");
    in_range(x.encoder.d_model, 1, L::max_dim, w, "d_model");
    in_range(x.encoder.heads, 1, L::max_heads, w, "heads");
    in_range(x.encoder.ffn, 1, L::max_width, w, "ffn");
    finite_in(x.encoder.dropout, 0, 0.999999, false, w, "encoder dropout");
    finite_in(x.encoder.layer_norm_eps, 0, 1, true, w, "layer_norm_eps");
  }
  for (const auto& x : f.dense) in_range(x.dim, 1, L::max_dim, "dense field '" + x.name + "' ", "dim");
  for (const auto& t : c.tasks) {
    const std::string w = "task '" + t.name + "' ";
    widths(t.tower, w, "tower");
    if (t.type == TaskType::MultiClass) in_range(t.num_classes, 0, L::max_classes, w, "num_classes");  // >= 2: checked below
    if (t.type == TaskType::Retrieval) {
      in_range(t.target_vocab, 0, L::max_rows, w, "target_vocab");
      in_range(t.target_dim, 0, L::max_dim, w, "target_dim");
    }
    finite_in(t.huber_delta, 0, 1e30, true, w, "huber_delta");
  }
  widths(c.bottom, "", "bottom");
  widths(c.expert, "", "expert");
  if (c.architecture == Architecture::MMoE) in_range(c.experts, 1, L::max_experts, "MMoE ", "experts");
  if (c.architecture == Architecture::PLE) {
    in_range(c.ple_levels, 1, L::max_levels, "PLE ", "ple_levels");
    in_range(c.ple_shared_experts, 1, L::max_experts, "PLE ", "ple_shared_experts");
    in_range(c.ple_task_experts, 1, L::max_experts, "PLE ", "ple_task_experts");
    const index_t per_level = c.ple_task_experts * index_t(c.tasks.size()) + c.ple_shared_experts;
    check(per_level <= L::max_experts, op, "PLE expected at most ", L::max_experts,
          " experts per level (ple_task_experts x tasks + ple_shared_experts) but got ", per_level);
  }
  finite_in(c.embedding_init_std, 0, 1e6, false, "", "embedding_init_std");
  check(!f.ids.empty() || !f.bags.empty() || !f.sequences.empty() || !f.dense.empty(), op,
        "expected at least one feature");
  std::vector<TableSpec> tables;
  std::map<std::string, std::string> names;  // every field/task name must be unique
  auto unique_name = [&](const std::string& n, const char* kind) {
    check(!n.empty(), op, "a ", kind, " has an empty name");
    check(names.emplace(n, kind).second, op, "name '", n, "' is used twice");
  };
  auto use_table = [&](const std::string& field, const std::string& table, index_t vocab, index_t buckets,
                       index_t dim) {
    const index_t rows = feature_rows(field, vocab, buckets);
    check(dim > 0, op, "field '", field, "' expected dim > 0 but got ", dim);
    const std::string t = table.empty() ? field : table;
    for (auto& s : tables)
      if (s.name == t) {
        check(s.rows == rows && s.dim == dim && s.hashed == (buckets > 0), op, "field '", field, "' shares table '", t,
              "' expected rows=", s.rows, " dim=", s.dim, (s.hashed ? " (hashed)" : ""), " but declares rows=", rows,
              " dim=", dim, (buckets > 0 ? " (hashed)" : ""));
        return;
      }
    tables.push_back({t, rows, dim, buckets > 0});
  };
  for (const auto& x : f.ids) {
    unique_name(x.name, "ID field");
    use_table(x.name, x.table, x.vocab, x.hash_buckets, x.dim);
  }
  for (const auto& x : f.bags) {
    unique_name(x.name, "bag field");
    use_table(x.name, x.table, x.vocab, x.hash_buckets, x.dim);
  }
  for (const auto& x : f.sequences) {
    unique_name(x.name, "sequence field");
    check(x.max_len > 0, op, "sequence '", x.name, "' expected max_len > 0 but got ", x.max_len);
    check(x.layers >= 1, op, "sequence '", x.name, "' expected at least 1 encoder layer but got ", x.layers);
    check(x.encoder.heads > 0 && x.encoder.d_model % x.encoder.heads == 0, op, "sequence '", x.name,
          "' expected d_model divisible by heads but got d_model=", x.encoder.d_model, " heads=", x.encoder.heads);
    use_table(x.name, x.table, x.vocab, x.hash_buckets, x.encoder.d_model);
  }
  for (const auto& x : f.dense) {
    unique_name(x.name, "dense field");
    check(x.dim > 0, op, "dense field '", x.name, "' expected dim > 0 but got ", x.dim);
  }
  for (const auto& t : c.tasks) {
    unique_name(t.name, "task");
    check(t.type != TaskType::MultiClass || t.num_classes >= 2, op, "multi-class task '", t.name,
          "' expected num_classes >= 2 but got ", t.num_classes);
    for (index_t w : t.tower) check(w > 0, op, "task '", t.name, "' expected positive tower widths but got ", w);
    check(t.weight >= 0 && std::isfinite(t.weight), op, "task '", t.name, "' expected a finite weight >= 0 but got ",
          t.weight);
    const bool ok_loss =
        t.loss == TaskLoss::Default ||
        (t.type == TaskType::Binary && (t.loss == TaskLoss::BCE || t.loss == TaskLoss::BPR)) ||
        (t.type == TaskType::Retrieval && t.loss == TaskLoss::SampledSoftmax) ||
        (t.type == TaskType::Regression && (t.loss == TaskLoss::MSE || t.loss == TaskLoss::Huber)) ||
        (t.type == TaskType::MultiClass && t.loss == TaskLoss::CrossEntropy);
    check(ok_loss, op, "task '", t.name, "' of type ", task_type_name(t.type), " cannot use the requested loss");
    check(t.huber_delta > 0, op, "task '", t.name, "' expected huber_delta > 0 but got ", t.huber_delta);
    if (t.type == TaskType::Retrieval) {
      check(!t.target_table.empty(), op, "retrieval task '", t.name, "' expected a target_table");
      check(std::isfinite(t.temperature) && t.temperature > 0, op, "retrieval task '", t.name,
            "' expected a finite temperature > 0 but got ", t.temperature);
      const TableSpec* shared = nullptr;
      for (const auto& ts : tables)
        if (ts.name == t.target_table) shared = &ts;
      if (shared) {
        check(!shared->hashed, op, "retrieval task '", t.name, "' target table '", t.target_table,
              "' is hashed; labels must index a vocabulary table");
        check(t.target_vocab == 0 || t.target_vocab == shared->rows, op, "retrieval task '", t.name,
              "' target_vocab expected 0 or the table's ", shared->rows, " rows but got ", t.target_vocab);
        check(t.target_dim == 0 || t.target_dim == shared->dim, op, "retrieval task '", t.name,
              "' target_dim expected 0 or the table's dim ", shared->dim, " but got ", t.target_dim);
      } else {
        check(t.target_vocab > 0 && t.target_dim > 0, op, "retrieval task '", t.name, "' has a new target table '",
              t.target_table, "': expected target_vocab > 0 and target_dim > 0 but got ", t.target_vocab, " and ",
              t.target_dim);
        tables.push_back({t.target_table, t.target_vocab, t.target_dim, false});
      }
    }
  }
  const auto K = c.tasks.size();
  switch (c.architecture) {
    case Architecture::SingleTask:
      check(K == 1, op, "architecture 'single' expected exactly 1 task but got ", K);
      [[fallthrough]];
    case Architecture::SharedBottom:
      check(!c.bottom.empty(), op, "architecture '", architecture_name(c.architecture), "' expected a bottom MLP");
      break;
    case Architecture::MMoE:
      check(c.experts >= 1, op, "MMoE expected experts >= 1 but got ", c.experts);
      check(!c.expert.empty(), op, "MMoE expected expert widths");
      break;
    case Architecture::PLE:
      check(c.ple_levels >= 1, op, "PLE expected ple_levels >= 1 but got ", c.ple_levels);
      check(c.ple_shared_experts >= 1 && c.ple_task_experts >= 1, op,
            "PLE expected at least 1 shared and 1 task expert but got ", c.ple_shared_experts, " and ",
            c.ple_task_experts);
      check(!c.expert.empty(), op, "PLE expected expert widths");
      break;
    case Architecture::ESMM:
      check(K == 2 && c.tasks[0].type == TaskType::Binary && c.tasks[1].type == TaskType::Binary, op,
            "ESMM expected exactly 2 binary tasks (CTR, then CTCVR) but got ", K, " tasks");
      for (const auto& t : c.tasks)
        check(t.loss == TaskLoss::Default || t.loss == TaskLoss::BCE, op, "ESMM task '", t.name,
              "' expected the BCE loss");
      break;
  }
  for (index_t w : c.bottom) check(w > 0, op, "bottom widths must be positive but got ", w);
  for (index_t w : c.expert) check(w > 0, op, "expert widths must be positive but got ", w);
  check(c.dropout >= 0 && c.dropout < 1, op, "dropout expected in [0, 1) but got ", c.dropout);
  index_t table_elements = 0;
  for (const auto& t : tables) {
    table_elements += t.rows * t.dim;  // each below 2^56: no overflow for max_features x 4 tables
    check(table_elements <= L::max_parameters, op, "the embedding tables expected at most ", L::max_parameters,
          " elements in total but table '", t.name, "' (", t.rows, " x ", t.dim, ") brings them to ",
          table_elements);
  }
  return tables;
}

}  // namespace mtrec
