// mtrec: the multi-task model — features -> trunk -> one tower per task.
//
//   X (B,F) = [ID embeddings | pooled bags | encoded+pooled sequences | dense]
//   trunk:  SingleTask/SharedBottom  H = MLP_bottom(X), every tower reads H
//           MMoE                     one CGC level with E shared experts, K gates
//           PLE                      L CGC levels: per-task and shared experts,
//                                    task gates, and a shared gate between levels
//           ESMM                     both towers read X
//   towers: MLP_k -> raw output (a logit, a value, or C logits)
//
// MMoE is exactly a one-level CGC whose experts are all shared, so both use
// the same mixture code. Shared experts receive gradients from every task.
//
// Thread safety: forward/predict are const and keep all state in the caller's
// Workspace, so one model serves many threads, one Workspace each.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "mtrec/kernels/embedding.hpp"
#include "mtrec/kernels/loss.hpp"
#include "mtrec/kernels/mixture.hpp"
#include "mtrec/kernels/sequence.hpp"
#include "mtrec/layers/attention.hpp"
#include "mtrec/layers/embedding.hpp"
#include "mtrec/layers/gate.hpp"
#include "mtrec/layers/linear.hpp"
#include "mtrec/layers/mlp.hpp"
#include "mtrec/layers/pooling.hpp"
#include "mtrec/layers/positional.hpp"
#include "mtrec/layers/transformer.hpp"
#include "mtrec/model/config.hpp"
#include "mtrec/layers/losses.hpp"

namespace mtrec {

// Per-task loss values of one batch (unweighted, each a weighted mean over
// its labelled rows; 0 for a task with no labelled row).
struct TaskLosses {
  std::vector<double> value;
  std::vector<index_t> count;  // labelled rows per task
};

template <class T, class Device = Cpu>
class MultiTaskModel {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;  // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;

 private:
  // A softmax gate mixing M expert outputs: out (B,De) = sum_m p_m * E_m.
  struct Gate {
    MixtureGate<T, Device> mix;  // in -> M logits, softmax, mix (layers/gate.hpp)
    std::vector<int> experts;    // indices into the level's expert list
  };
  // One CGC level (Tang et al., 2020). Experts 0..K*Et-1 are task experts
  // (task k owns k*Et .. k*Et+Et-1), then Es shared experts.
  struct Level {
    index_t in_dim = 0;
    std::vector<MLP<T, Device>> experts;
    std::vector<Gate> task_gates;  // [k]
    bool has_shared_gate = false;
    Gate shared_gate;
    std::vector<int> expert_input;  // per expert: task k reads its task input, -1 reads the shared input
  };
  struct SequenceEncoder {
    Embedding<T, Device> items;
    PositionalEmbedding<T, Device> position;
    TransformerEncoder<T, Device> encoder;
    SequencePooling<T, Device> pool;
  };

 public:
  struct Workspace {
    struct GateWs {
      typename MixtureGate<T, Device>::Context ctx;
      Tensor<T, Device> out, d_out;  // (B,De)
      std::vector<CPtr> experts;  // (M) the mixed experts' outputs
      std::vector<Ptr> d_experts;  // (M) their gradients
    };
    struct LevelWs {
      std::vector<typename MLP<T, Device>::Context> expert;
      std::vector<Tensor<T, Device>> expert_out, d_expert_out;  // (B,De)
      std::vector<GateWs> task_gate;
      GateWs shared_gate;
      std::vector<Tensor<T, Device>> d_task_in;  // (B,in) per task
      Tensor<T, Device> d_shared_in;
    };
    struct SequenceWs {
      Tensor<index_t> lengths;    // (B) a copy of the batch's lengths: forward and backward agree on it
      Tensor<index_t> valid_ids;  // (n_valid) IDs of the valid positions, in (b,t) order
      Tensor<index_t, Device> lengths_buf;  // the lengths on a device without host access
      IdView lengths_d;                     // the lengths where kernels read them
      Tensor<index_t, Device> starts;       // (B) first row of each sequence in compact
      Tensor<T, Device> compact, d_compact;  // (n_valid, D)
      Tensor<T, Device> emb, hidden, d_emb, d_hidden;  // (B,L,D)
      Tensor<T, Device> pooled, d_pooled;  // (B,D)
      typename Embedding<T, Device>::Context items;
      typename PositionalEmbedding<T, Device>::Context position;
      typename TransformerEncoder<T, Device>::Context encoder;
      typename SequencePooling<T, Device>::Context pool;
    };
    index_t B = 0;
    Tensor<T, Device> X, dX;  // (B,F)
    std::vector<Tensor<index_t>> id_rows;   // hashed rows per ID field (B)
    std::vector<Tensor<index_t>> bag_rows;  // hashed rows per bag field (n)
    std::vector<ConstView<index_t>> id_view, bag_view;  // the rows each field looks up (prepare_batch)
    // Host arrays of the batch that kernels read, uploaded on a device
    // without host access (device_input in layers/common.hpp).
    std::vector<Tensor<T, Device>> bag_weights, dense;
    std::vector<Tensor<T, Device>> id_emb, bag_emb, d_field;  // (B,dim)
    std::vector<typename Embedding<T, Device>::Context> id_ctx;
    std::vector<typename EmbeddingBag<T, Device>::Context> bag_ctx;
    std::vector<SequenceWs> seq;
    typename MLP<T, Device>::Context bottom;
    Tensor<T, Device> H, dH;  // bottom output (B,Db)
    std::vector<LevelWs> levels;
    std::vector<typename MLP<T, Device>::Context> tower;
    std::vector<Tensor<T, Device>> out, d_out, d_scaled, d_tower_in;  // per task
    std::vector<Tensor<index_t>> class_ids;  // multi-class labels as ids
    // BPR tasks: the batch's (positive, negative) row pairs and their scores.
    struct PairWs {
      Tensor<index_t> order, pos, neg;  // order (B): labelled rows sorted by (group, label)
      Tensor<index_t, Device> pos_buf, neg_buf;  // pos, neg on a device without host access
      Tensor<T, Device> s_pos, s_neg, d_pos, d_neg;  // (P)
      Tensor<T> weight;  // (P) host: the pair weights, from the batch weights
    };
    // Retrieval tasks: the target rows' embeddings are the keys.
    struct RetrievalWs {
      Tensor<index_t> rows;    // (B) target row per batch row (0 where unlabelled)
      Tensor<index_t> positions, targets;  // (n) the labelled batch rows and their target rows
      Tensor<index_t, Device> rows_buf, positions_buf, targets_buf;  // on a device without host access
      Tensor<T, Device> keys, d_keys;  // (B,D)
      Tensor<T, Device> d_targets;     // (n,D) the labelled rows' key gradients, scaled
      InBatchSoftmaxWorkspace<T, Device> softmax;
    };
    std::vector<PairWs> pairs;
    std::vector<RetrievalWs> retrieval;
    Tensor<T, Device> pred;  // predict's outputs on the device (unused when the host reads device memory)
    Tensor<T, Device> esmm_d_ctr;                     // (B) ESMM: dL_ctcvr / d CTR logit
    LossInputs<T, Device> loss_inputs;  // the labels, masks and weights where the loss kernels read them
    TaskLosses losses;                        // the last compute_losses() result
    Mode mode;
    // What this workspace holds, so that compute_losses and backward refuse a
    // workspace of another model, or one without a (complete) forward.
    std::uint64_t owner = 0;                  // the instance id of the model whose forward completed; 0 = none
    const void* batch = nullptr;              // the batch that forward read (backward must get the same one)
    bool has_losses = false;                  // compute_losses ran after that forward
  };

  explicit MultiTaskModel(const ModelConfig& config)
      : config_(config), store_(std::make_unique<ParameterStore<T, Device>>(config.seed)), id_(next_instance_id()) {
    tables_ = validate_config(config_);
    build();
    store_->allocate();
  }

  // The parameters (names, shapes, kinds) that `config` creates, without
  // allocating them. At most `max_tensors` parameters of at most
  // `max_elements` elements in total are accepted (`source` names where the
  // bounds come from), so a configuration read from an untrusted file cannot
  // make this, or the model built afterwards, larger than the file backs.
  static std::vector<ParamInfo> parameter_plan(const ModelConfig& config, index_t max_tensors, index_t max_elements,
                                               const std::string& source) {
    return MultiTaskModel(config, max_tensors, max_elements, source).store_->infos();
  }
  MultiTaskModel(const MultiTaskModel&) = delete;  // layers point into the store
  std::uint64_t instance_id() const { return id_; }
  MultiTaskModel& operator=(const MultiTaskModel&) = delete;

  const ModelConfig& config() const { return config_; }
  ParameterStore<T, Device>& parameters() { return *store_; }
  const ParameterStore<T, Device>& parameters() const { return *store_; }
  index_t feature_width() const { return feature_width_; }
  std::size_t num_tasks() const { return config_.tasks.size(); }

  // Parameters updated by every task (embeddings, encoders, bottom, experts)
  // versus those of one task only (its tower and gates). PCGrad projects the
  // shared part; GradNorm measures gradients on the last shared layer.
  const std::vector<ParamId>& shared_parameters() const { return shared_params_; }
  const std::vector<ParamId>& last_shared_layer() const { return last_shared_; }

  // ---- forward -------------------------------------------------------------

  // ws.out[k] (B, out_k) = raw outputs of every task (logits / values).
  // The batch must stay unchanged until the last backward of this forward.
  void forward(Workspace& ws, const Batch<T>& batch, const Mode& mode) const {
    ws.owner = 0;  // a forward that throws leaves a workspace backward refuses
    ws.batch = nullptr;
    ws.has_losses = false;
    check_batch(batch);
    const index_t B = batch.size;
    ws.B = B;
    ws.mode = mode;
    prepare(ws, B);
    prepare_batch(ws, batch);  // host: rows, valid IDs, sequence starts
    features_forward(ws, batch, mode);
    trunk_forward(ws, mode);
    for (std::size_t k = 0; k < towers_.size(); ++k)
      towers_[k].forward(ws.tower[k], tower_input(ws, k), ws.out[k].view(), mode);
    ws.owner = id_;
    ws.batch = &batch;
  }

  // Per-task losses of ws.out against the batch labels. Fills ws.d_out[k] =
  // dL_k / d out_k (unweighted). Labels are checked: NaN is rejected. The
  // result lives in the workspace (no allocation once warm).
  const TaskLosses& compute_losses(Workspace& ws, const Batch<T>& batch) const {
    const char* op = "MultiTaskModel::compute_losses";
    check_workspace(op, ws, batch);
    const index_t B = ws.B;
    ws.has_losses = false;
    check(batch.labels.size() == num_tasks(), op, "expected labels for ", num_tasks(), " tasks but got ",
          batch.labels.size());
    TaskLosses& r = ws.losses;
    r.value.assign(num_tasks(), 0.0);
    r.count.assign(num_tasks(), 0);
    const T* w = batch.weights.empty() ? nullptr : batch.weights.data();
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      const TaskSpec& t = config_.tasks[k];
      check(batch.labels[k].size() == static_cast<std::size_t>(B), op, "task '", t.name, "' expected ", B,
            " labels but got ", batch.labels[k].size());
      const bool masked = !batch.label_mask.empty() && !batch.label_mask[k].empty();
      if (masked)
        check(batch.label_mask[k].size() == static_cast<std::size_t>(B), op, "task '", t.name, "' expected ", B,
              " mask entries but got ", batch.label_mask[k].size());
      const std::uint8_t* m = masked ? batch.label_mask[k].data() : nullptr;
      const T* y = batch.labels[k].data();
      for (index_t i = 0; i < B; ++i)
        if ((!m || m[i]) && !std::isfinite(y[i]))
          fail(op, "task '", t.name, "' label[", i, "] expected a finite value but got ", y[i]);
      Ptr d = ws.d_out[k].data();
      CPtr o = ws.out[k].data();
      LossResult lr;
      if (config_.architecture == Architecture::ESMM && k == 1) {
        ws.esmm_d_ctr.resize({B});
        lr = esmm_ctcvr_loss(ws.loss_inputs, d, ws.esmm_d_ctr.data(), ws.out[0].data(), o, y, m, w, B);
      } else if (t.type == TaskType::Binary && t.loss == TaskLoss::BPR) {
        lr = bpr_task_loss(ws.pairs[k], ws.loss_inputs, d, o, y, m, w, batch.groups, B, t);
      } else if (t.type == TaskType::Retrieval) {
        lr = retrieval_task_loss(ws.retrieval[k], d, o, y, m, w, B, k);
      } else if (t.type == TaskType::Binary) {
        lr = bce_with_logits(dev(), d, o, y, m, w, B, &ws.loss_inputs);
      } else if (t.type == TaskType::Regression) {
        lr = t.loss == TaskLoss::Huber ? huber(dev(), d, o, y, m, w, B, T(t.huber_delta), &ws.loss_inputs)
                                       : mse(dev(), d, o, y, m, w, B, &ws.loss_inputs);
      } else {
        Tensor<index_t>& ids = ws.class_ids[k];
        ids.resize({B});
        for (index_t i = 0; i < B; ++i) {
          if (m && !m[i]) {
            ids[i] = 0;
            continue;
          }
          if (y[i] != std::floor(y[i]) || y[i] < 0 || y[i] >= T(t.num_classes))
            fail(op, "task '", t.name, "' label[", i, "] expected a class id in [0, ", t.num_classes, ") but got ",
                 y[i]);
          ids[i] = static_cast<index_t>(y[i]);
        }
        lr = softmax_cross_entropy(dev(), d, o, ids.data(), m, w, B, t.num_classes, &ws.loss_inputs);
      }
      r.value[k] = lr.value;
      r.count[k] = lr.count;
    }
    ws.has_losses = true;
    return r;
  }

  // Backward from sum_k coeff[k] * dL_k/d out_k (coeff[k] == 0 skips task k's
  // tower). Parameter gradients accumulate into parameters().grads().
  void backward(Workspace& ws, const Batch<T>& batch, const double* coeff) const {
    const char* op = "MultiTaskModel::backward";
    check_workspace(op, ws, batch);
    check(ws.has_losses, op, "expected compute_losses() after forward() and before backward()");
    check(coeff != nullptr, op, "expected ", num_tasks(), " task coefficients but got a null pointer");
    for (std::size_t k = 0; k < num_tasks(); ++k)
      check(std::isfinite(coeff[k]), op, "coeff[", k, "] (task '", config_.tasks[k].name,
            "') expected a finite value but got ", coeff[k]);
    const index_t B = ws.B;
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      ws.d_tower_in[k].resize({B, towers_[k].in_features()});
      const index_t n = ws.out[k].numel();
      Ptr ds = ws.d_scaled[k].data();
      const T c = T(coeff[k]);
      CPtr d = ws.d_out[k].data();
      kernels::scale(dev(), ds, d, n, c);  // ds (n) = c * d
      bool active = coeff[k] != 0.0;
      if (config_.architecture == Architecture::ESMM && k == 0 && coeff[1] != 0.0) {
        // pCTCVR = pCTR * pCVR: the CTCVR loss also reaches the CTR tower.
        const T c1 = T(coeff[1]);
        kernels::axpy(dev(), ds, ws.esmm_d_ctr.data(), n, c1);  // ds += c1 * dL_ctcvr/d ctr
        active = true;
      }
      if (active) towers_[k].backward(ws.tower[k], ws.d_scaled[k].view(), ws.d_tower_in[k].view());
      if (config_.tasks[k].type == TaskType::Retrieval && coeff[k] != 0.0) retrieval_keys_backward(ws, k, c);
    }
    trunk_backward(ws, coeff);
    features_backward(ws);
  }

  // out (B, C_total): probabilities for binary tasks, values for regression,
  // class probabilities for multi-class; ESMM adds pCVR as a last column.
  // `out` is host memory: on a device whose memory the host cannot read, the
  // outputs are computed in the workspace and copied back once.
  void predict(Workspace& ws, const Batch<T>& batch, Tensor<T>& host_out) const {
    forward(ws, batch, Mode::eval());
    const index_t B = ws.B, C = output_width();
    host_out.resize({B, C});
    Tensor<T, Device>& out = predict_buffer(ws, host_out);
    out.resize({B, C});
    index_t col = 0;
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      const TaskSpec& t = config_.tasks[k];
      const index_t w = task_output_width(t);
      CPtr o = ws.out[k].data();  // (B,w)
      if (t.type == TaskType::Regression || t.type == TaskType::Retrieval)  // values; a retrieval query vector
        kernels::output_transform(dev(), out.data(), C, col, o, B, w, kernels::OutputKind::Identity);
      else if (t.type == TaskType::MultiClass)
        kernels::output_transform(dev(), out.data(), C, col, o, B, w, kernels::OutputKind::Softmax);
      else if (config_.architecture == Architecture::ESMM && k == 1)
        kernels::sigmoid_product(dev(), out.data(), C, col, ws.out[0].data(), o, B);  // pCTCVR = pCTR * pCVR
      else
        kernels::output_transform(dev(), out.data(), C, col, o, B, w, kernels::OutputKind::Sigmoid);
      col += w;
    }
    if (config_.architecture == Architecture::ESMM)  // pCVR
      kernels::output_transform(dev(), out.data(), C, col, ws.out[1].data(), B, 1,
                                kernels::OutputKind::Sigmoid);
    if (static_cast<void*>(&out) != static_cast<void*>(&host_out)) to_host(dev(), host_out.data(), out.cview());
  }

  // Checks a whole data set once, before training or evaluating on it:
  // field shapes, ID ranges of vocabulary tables, sequence lengths, bag
  // offsets, finite dense values and weights, and every labelled row's label
  // (finite; a class id for multi-class; 0/1 for BPR; [0, 1] for BCE; a table
  // row for retrieval). A bad value is reported by its row in `data`
  // (`what` names the data set: "training data", "validation data").
  void validate(const Batch<T>& data, const std::string& what = "data") const {
    const char* op = "MultiTaskModel::validate";
    try {
      check_batch(data);
    } catch (const Error& e) {
      fail(op, what, ": ", e.what());
    }
    const FeatureSpec& f = config_.features;
    const index_t N = data.size;
    auto ids_in_range = [&](const char* kind, const std::string& field, const std::string& table, const index_t* ids,
                            index_t n, auto row_of) {
      const TableSpec& t = table_spec(field, table);
      if (t.hashed) return;  // any ID hashes into the table
      for (index_t j = 0; j < n; ++j)
        if (ids[j] < 0 || ids[j] >= t.rows)
          fail(op, what, " row ", row_of(j), ": ", kind, " '", field, "' ID ", ids[j], " expected in [0, ", t.rows,
               ") (table '", t.name, "')");
    };
    for (std::size_t i = 0; i < f.ids.size(); ++i)
      ids_in_range("ID field", f.ids[i].name, f.ids[i].table, data.ids[i].data(), N, [](index_t j) { return j; });
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      const auto& b = data.bags[i];
      const std::string& name = f.bags[i].name;
      check(b.offsets[0] == 0, op, what, ": bag field '", name, "' offsets[0] expected 0 but got ", b.offsets[0]);
      for (index_t r = 0; r < N; ++r)
        check(b.offsets[r + 1] >= b.offsets[r], op, what, " row ", r, ": bag field '", name,
              "' offsets expected non-decreasing but offsets[", r + 1, "] = ", b.offsets[r + 1], " < offsets[", r,
              "] = ", b.offsets[r]);
      check(b.offsets[N] == index_t(b.ids.size()), op, what, ": bag field '", name, "' offsets[", N,
            "] expected to equal its ", b.ids.size(), " IDs but got ", b.offsets[N]);
      index_t r = 0;
      auto row_of = [&](index_t j) {
        while (r < N && b.offsets[r + 1] <= j) ++r;
        return r;
      };
      ids_in_range("bag field", name, f.bags[i].table, b.ids.data(), index_t(b.ids.size()), row_of);
      r = 0;
      for (std::size_t j = 0; j < b.weights.size(); ++j)
        if (!std::isfinite(b.weights[j]))
          fail(op, what, " row ", row_of(index_t(j)), ": bag field '", name, "' weight expected a finite value but got ",
               b.weights[j]);
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const SequenceFeature& sf = f.sequences[i];
      const TableSpec& t = table_spec(sf.name, sf.table);
      if (t.hashed) continue;
      const auto& sq = data.sequences[i];
      for (index_t r = 0; r < N; ++r)
        for (index_t p = 0; p < sq.lengths[r]; ++p) {
          const index_t id = sq.ids[std::size_t(r * sf.max_len + p)];
          if (id < 0 || id >= t.rows)
            fail(op, what, " row ", r, ": sequence '", sf.name, "' position ", p, " ID ", id, " expected in [0, ",
                 t.rows, ") (table '", t.name, "')");
        }
    }
    check(data.groups.empty() || data.groups.size() == std::size_t(N), op, what, ": expected ", N,
          " group ids but got ", data.groups.size());
    check(data.labels.size() == num_tasks(), op, what, ": expected labels for ", num_tasks(), " tasks but got ",
          data.labels.size());
    check(data.label_mask.empty() || data.label_mask.size() == num_tasks(), op, what, ": expected label masks for ",
          num_tasks(), " tasks (or none) but got ", data.label_mask.size());
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      const TaskSpec& t = config_.tasks[k];
      const auto& y = data.labels[k];
      check(y.size() == std::size_t(N), op, what, ": task '", t.name, "' expected ", N, " labels but got ", y.size());
      const bool masked = !data.label_mask.empty() && !data.label_mask[k].empty();
      check(!masked || data.label_mask[k].size() == std::size_t(N), op, what, ": task '", t.name, "' expected ", N,
            " mask entries but got ", data.label_mask[k].size());
      const index_t target_rows = t.type == TaskType::Retrieval ? store_->info(target_table_[k]).shape[0] : 0;
      const bool esmm = config_.architecture == Architecture::ESMM;
      for (index_t r = 0; r < N; ++r) {
        if (masked && !data.label_mask[k][std::size_t(r)]) continue;
        const T v = y[std::size_t(r)];
        check(std::isfinite(v), op, what, " row ", r, ": task '", t.name, "' label expected a finite value but got ", v);
        const bool integral = v == std::floor(v);
        if (t.type == TaskType::MultiClass)
          check(integral && v >= 0 && v < T(t.num_classes), op, what, " row ", r, ": task '", t.name,
                "' label expected a class id in [0, ", t.num_classes, ") but got ", v);
        else if (t.type == TaskType::Retrieval)
          check(integral && v >= 0 && v < T(target_rows), op, what, " row ", r, ": retrieval task '", t.name,
                "' label expected a row of table '", t.target_table, "' in [0, ", target_rows, ") but got ", v);
        else if (t.type == TaskType::Binary && t.loss == TaskLoss::BPR)
          check(v == T(0) || v == T(1), op, what, " row ", r, ": BPR task '", t.name, "' label expected 0 or 1 but got ",
                v);
        else if (t.type == TaskType::Binary && !esmm)
          check(v >= 0 && v <= 1, op, what, " row ", r, ": binary task '", t.name, "' label expected in [0, 1] but got ",
                v);
      }
    }
  }

  // Names of predict()'s columns: the task name, "task:class" for multi-class,
  // "task:q<j>" for a retrieval task's query vector.
  std::vector<std::string> output_columns() const {
    std::vector<std::string> cols;
    for (const auto& t : config_.tasks) {
      if (t.type == TaskType::MultiClass)
        for (index_t c = 0; c < t.num_classes; ++c) cols.push_back(t.name + ":" + std::to_string(c));
      else if (t.type == TaskType::Retrieval)
        for (index_t j = 0; j < t.target_dim; ++j) cols.push_back(t.name + ":q" + std::to_string(j));
      else
        cols.push_back(t.name);
    }
    if (config_.architecture == Architecture::ESMM) cols.push_back("cvr");
    return cols;
  }
  index_t output_width() const {
    index_t w = 0;
    for (const auto& t : config_.tasks) w += task_output_width(t);
    return w + (config_.architecture == Architecture::ESMM ? 1 : 0);
  }

 // A retrieval task's target table (rows, dim): score a query q against it
  // as <q, row> / temperature. Shares storage with the model.
  CView target_table(std::size_t k) const {
    check(k < num_tasks() && config_.tasks[k].type == TaskType::Retrieval, "MultiTaskModel::target_table",
          "task ", k, " is not a retrieval task");
    const ParamId id = target_table_[k];
    return CView(store_->value(id), store_->info(id).shape);
  }

 private:

  static std::uint64_t next_instance_id() {
    static std::atomic<std::uint64_t> next{1};
    return next++;
  }
  // Planning only: registers the parameters under bounds, allocates nothing.
  MultiTaskModel(const ModelConfig& config, index_t max_tensors, index_t max_elements, const std::string& source)
      : config_(config), store_(std::make_unique<ParameterStore<T, Device>>(config.seed)), id_(0) {
    tables_ = validate_config(config_);
    store_->set_limits(max_tensors, max_elements, source);
    build();
  }

  // The workspace holds a completed forward of this model on `batch`.
  template <class D = Device>
  static Tensor<T, Device>& predict_buffer(Workspace& ws, Tensor<T>& host_out) {
    if constexpr (std::is_same<D, Cpu>::value) return host_out;
    else return ws.pred;
  }
  const Device& dev() const { return store_->device(); }

  void check_workspace(const char* op, const Workspace& ws, const Batch<T>& batch) const {
    check(ws.owner != 0, op, "the workspace holds no completed forward(); call forward() first");
    check(ws.owner == id_, op, "the workspace holds a forward() of another model (instance ", ws.owner,
          ", this is instance ", id_, "); use one workspace per model");
    check(ws.batch == static_cast<const void*>(&batch) && batch.size == ws.B, op,
          "expected the batch that forward() ran on (", ws.B, " rows) but got another batch of ", batch.size, " rows");
  }

  // ---- ranking and retrieval losses -------------------------------------------

  // BPR over every (positive, negative) pair of labelled rows in the batch,
  // within each group when the batch has groups. A pair weighs w_pos * w_neg.
  // d (B) = dL/d score, written. Cost O(pairs): give groups on large batches.
  LossResult bpr_task_loss(typename Workspace::PairWs& pw, LossInputs<T, Device>& inputs, Ptr d, CPtr score, const T* y, const std::uint8_t* m,
                           const T* w, const std::vector<index_t>& groups, index_t B, const TaskSpec& t) const {
    const char* op = "MultiTaskModel::compute_losses";
    const bool grouped = !groups.empty();
    check(!grouped || groups.size() == static_cast<std::size_t>(B), op, "task '", t.name, "' expected ", B,
          " groups but got ", groups.size());
    pw.order.resize({B});
    index_t n = 0;
    for (index_t i = 0; i < B; ++i) {
      if (m && !m[i]) continue;
      if (y[i] != T(0) && y[i] != T(1))
        fail(op, "BPR task '", t.name, "' label[", i, "] expected 0 or 1 but got ", y[i]);
      pw.order[n++] = i;
    }
    // Sort by (group, label, row): std::sort works in place, so no allocation.
    index_t* ord = pw.order.data();
    std::sort(ord, ord + n, [&](index_t a, index_t b) {
      const index_t ga = grouped ? groups[a] : 0, gb = grouped ? groups[b] : 0;
      if (ga != gb) return ga < gb;
      if (y[a] != y[b]) return y[a] > y[b];  // positives first
      return a < b;
    });
    index_t P = 0;
    for (int pass = 0; pass < 2; ++pass) {  // pass 0 counts the pairs, pass 1 fills them
      index_t p = 0;
      for (index_t g0 = 0; g0 < n;) {
        index_t g1 = g0;
        while (g1 < n && (!grouped || groups[ord[g1]] == groups[ord[g0]])) ++g1;
        index_t split = g0;
        while (split < g1 && y[ord[split]] == T(1)) ++split;
        for (index_t a = g0; a < split; ++a)
          for (index_t b = split; b < g1; ++b, ++p) {
            if (pass == 0) continue;
            const index_t i = ord[a], j = ord[b];
            pw.pos[p] = i;
            pw.neg[p] = j;
            pw.weight[p] = w ? w[i] * w[j] : T(1);
          }
        g0 = g1;
      }
      if (pass == 0) {
        P = p;
        for (Tensor<index_t>* x : {&pw.pos, &pw.neg}) x->resize({P});
        for (Tensor<T, Device>* x : {&pw.s_pos, &pw.s_neg, &pw.d_pos, &pw.d_neg}) x->resize({P});
        pw.weight.resize({P});
      }
    }
    // The pairs come from the labels alone (host); the scores are gathered,
    // and the pair gradients scattered back, by kernels.
    kernels::fill(dev(), d, B, T(0));
    if (P == 0) return LossResult{};
    const IdView pos = device_input(pw.pos_buf, pw.pos.cview()), neg = device_input(pw.neg_buf, pw.neg.cview());
    kernels::gather_rows(dev(), pw.s_pos.data(), score, pos.data, P, 1);  // s_pos (P) = score[pos]
    kernels::gather_rows(dev(), pw.s_neg.data(), score, neg.data, P, 1);
    LossResult r = bpr(dev(), pw.d_pos.data(), pw.d_neg.data(), pw.s_pos.data(), pw.s_neg.data(),
                       static_cast<const std::uint8_t*>(nullptr), pw.weight.data(), P, &inputs);
    // d[pos[p]] += d_pos[p], then d[neg[p]] += d_neg[p], pairs in order: deterministic
    const pointer_t<std::uint8_t, typename Device::memory> no_flags = nullptr;
    kernels::scatter_add_rows(dev(), d, no_flags, pw.d_pos.data(), pos.data, P, 1);
    kernels::scatter_add_rows(dev(), d, no_flags, pw.d_neg.data(), neg.data, P, 1);
    return r;
  }

  // In-batch sampled softmax: row i's query (the tower output) against the
  // target embeddings of every labelled row; its own target is the positive.
  // d (B,D) = dL/dq written; rw.d_keys = dL/d key, scattered in backward.
  LossResult retrieval_task_loss(typename Workspace::RetrievalWs& rw, Ptr d, CPtr q, const T* y,
                                 const std::uint8_t* m, const T* w, index_t B, std::size_t k) const {
    const char* op = "MultiTaskModel::compute_losses";
    const TaskSpec& t = config_.tasks[k];
    const ParamId table = target_table_[k];
    const index_t rows = store_->info(table).shape[0], D = t.target_dim;
    rw.rows.resize({B});
    rw.keys.resize({B, D});
    rw.d_keys.resize({B, D});
    // Batch preparation (host): the target row of every batch row (row 0 as
    // a placeholder where unlabelled), and the labelled rows' positions and
    // targets, which backward scatters into.
    rw.positions.resize({B});
    rw.targets.resize({B});
    index_t n_lab = 0;
    for (index_t i = 0; i < B; ++i) {
      index_t r = 0;
      if (!m || m[i]) {
        if (y[i] != std::floor(y[i]) || y[i] < 0 || y[i] >= T(rows))
          fail(op, "retrieval task '", t.name, "' label[", i, "] expected a row of table '", t.target_table,
               "' in [0, ", rows, ") but got ", y[i]);
        r = static_cast<index_t>(y[i]);
        rw.positions[n_lab] = i;
        rw.targets[n_lab++] = r;
      }
      rw.rows[i] = r;
    }
    rw.positions.resize({n_lab});
    rw.targets.resize({n_lab});
    const IdView rows_d = device_input(rw.rows_buf, rw.rows.cview());
    kernels::gather_rows(dev(), rw.keys.data(), store_->value(table), rows_d.data, B, D);  // keys (B,D)
    return in_batch_softmax(dev(), d, rw.d_keys.data(), q, rw.keys.data(), B, D, t.temperature,
                            static_cast<const T*>(nullptr), m, w, &rw.softmax);
  }

  // table.grad[target row of i] += c * dL/d key_i for the labelled rows only:
  // an unlabelled row's placeholder row is neither updated nor marked touched.
  void retrieval_keys_backward(Workspace& ws, std::size_t k, T c) const {
    auto& rw = ws.retrieval[k];
    const ParamId table = target_table_[k];
    const index_t D = config_.tasks[k].target_dim, n = rw.targets.numel();
    rw.d_targets.resize({n, D});
    // d_targets (n,D) = c * d_keys[positions]; table.grad[targets] += d_targets
    const IdView positions = device_input(rw.positions_buf, rw.positions.cview());
    const IdView targets = device_input(rw.targets_buf, rw.targets.cview());
    kernels::gather_rows(dev(), rw.d_targets.data(), rw.d_keys.data(), positions.data, n, D);
    kernels::scale(dev(), rw.d_targets.data(), rw.d_targets.data(), n * D, c);
    store_->touched(table).mark_all(rw.targets.data(), n);  // on the host
    kernels::scatter_add_rows(dev(), store_->grad(table), pointer_t<std::uint8_t, typename Device::memory>(nullptr),
                              rw.d_targets.data(), targets.data, n, D);
  }

  // ---- construction ----------------------------------------------------------

  void build() {
    ParameterStore<T, Device>& s = *store_;
    const FeatureSpec& f = config_.features;
    const Init emb_init = Init::normal(0.0, config_.embedding_init_std);
    auto table_of = [&](const std::string& field, const std::string& table) -> ParamId {
      const std::string name = "emb." + (table.empty() ? field : table);
      if (s.contains(name)) return s.find(name);
      for (const auto& t : tables_)
        if ("emb." + t.name == name) return make_embedding_table(s, name, t.rows, t.dim, emb_init);
      fail("MultiTaskModel", "no table for field '", field, "'");
    };
    feature_width_ = 0;
    for (const auto& x : f.ids) {
      id_layers_.emplace_back(s, table_of(x.name, x.table));
      feature_width_ += x.dim;
    }
    for (const auto& x : f.bags) {
      bag_layers_.emplace_back(s, table_of(x.name, x.table), x.pooling);
      feature_width_ += x.dim;
    }
    for (const auto& x : f.sequences) {
      SequenceEncoder e;
      e.items = Embedding<T, Device>(s, table_of(x.name, x.table));
      e.position = PositionalEmbedding<T, Device>(s, "seq." + x.name + ".position", x.max_len, x.encoder.d_model);
      e.encoder = TransformerEncoder<T, Device>(s, "seq." + x.name + ".encoder", x.encoder, x.layers, true);
      e.pool = SequencePooling<T, Device>(x.pooling);
      seq_layers_.push_back(std::move(e));
      feature_width_ += x.encoder.d_model;
    }
    for (const auto& x : f.dense) feature_width_ += x.dim;

    const MLPConfig hidden{{}, config_.activation, config_.dropout, true};
    index_t trunk_width = feature_width_;
    switch (config_.architecture) {
      case Architecture::SingleTask:
      case Architecture::SharedBottom: {
        MLPConfig c = hidden;
        c.hidden = config_.bottom;
        bottom_ = MLP<T, Device>(s, "bottom", feature_width_, c);
        trunk_width = config_.bottom.back();
        break;
      }
      case Architecture::MMoE: build_levels(1, 0, config_.experts); break;
      case Architecture::PLE: build_levels(config_.ple_levels, config_.ple_task_experts, config_.ple_shared_experts); break;
      case Architecture::ESMM: break;
    }
    if (!levels_.empty()) trunk_width = config_.expert.back();
    target_table_.assign(num_tasks(), ParamId(-1));
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      TaskSpec& t = config_.tasks[k];
      if (t.type != TaskType::Retrieval) continue;
      target_table_[k] = table_of(t.name, t.target_table);
      t.target_vocab = s.info(target_table_[k]).shape[0];  // filled in for a shared table
      t.target_dim = s.info(target_table_[k]).shape[1];
    }
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      const TaskSpec& t = config_.tasks[k];
      MLPConfig c = hidden;
      c.hidden = t.tower;
      c.hidden.push_back(task_output_width(t));
      c.activate_output = false;
      towers_.emplace_back(s, "tower." + t.name, trunk_width, c);
    }
    classify_parameters();
  }

  void build_levels(int L, index_t Et, index_t Es) {
    ParameterStore<T, Device>& s = *store_;
    const index_t K = index_t(num_tasks());
    MLPConfig c{config_.expert, config_.activation, config_.dropout, true};
    index_t in = feature_width_;
    for (int l = 0; l < L; ++l) {
      Level lv;
      lv.in_dim = in;
      const std::string p = "level" + std::to_string(l) + ".";
      for (index_t k = 0; k < K; ++k)
        for (index_t j = 0; j < Et; ++j) {
          lv.experts.emplace_back(s, p + "task_expert." + config_.tasks[k].name + "." + std::to_string(j), in, c);
          lv.expert_input.push_back(int(k));
        }
      for (index_t j = 0; j < Es; ++j) {
        lv.experts.emplace_back(s, p + "shared_expert." + std::to_string(j), in, c);
        lv.expert_input.push_back(-1);
      }
      for (index_t k = 0; k < K; ++k) {
        Gate g;
        for (index_t j = 0; j < Et; ++j) g.experts.push_back(int(k * Et + j));
        for (index_t j = 0; j < Es; ++j) g.experts.push_back(int(K * Et + j));
        g.mix = MixtureGate<T, Device>(s, p + "gate." + config_.tasks[k].name, in, index_t(g.experts.size()),
                                       config_.expert.back());
        lv.task_gates.push_back(std::move(g));
      }
      lv.has_shared_gate = l + 1 < L;
      if (lv.has_shared_gate) {
        for (index_t j = 0; j < K * Et + Es; ++j) lv.shared_gate.experts.push_back(int(j));
        lv.shared_gate.mix = MixtureGate<T, Device>(s, p + "gate.shared", in, K * Et + Es, config_.expert.back());
      }
      levels_.push_back(std::move(lv));
      in = config_.expert.back();
    }
  }

  // Task-specific = towers, gates and task experts of the last level (their
  // gradient comes from one task only); everything else is shared.
  void classify_parameters() {
    const ParameterStore<T, Device>& s = *store_;
    const std::string last_level = "level" + std::to_string(int(levels_.size()) - 1) + ".task_expert.";
    // A target table that no feature reads and only one retrieval task scores
    // against belongs to that task alone.
    auto target_only = [&](ParamId id) {
      int users = 0;
      for (ParamId t : target_table_) users += t == id;
      if (users != 1) return false;
      const FeatureSpec& f = config_.features;
      auto reads = [&](const std::string& field, const std::string& table) {
        return "emb." + (table.empty() ? field : table) == s.info(id).name;
      };
      for (const auto& x : f.ids) if (reads(x.name, x.table)) return false;
      for (const auto& x : f.bags) if (reads(x.name, x.table)) return false;
      for (const auto& x : f.sequences) if (reads(x.name, x.table)) return false;
      return true;
    };
    for (ParamId id = 0; id < s.count(); ++id) {
      const std::string& n = s.info(id).name;
      const bool task_only = n.rfind("tower.", 0) == 0 || n.find(".gate.") != std::string::npos ||
                             (!levels_.empty() && n.rfind(last_level, 0) == 0) || target_only(id);
      if (!task_only) shared_params_.push_back(id);
    }
    // The last shared layer: bottom's last Linear, or the last Linear of every
    // shared expert of the last level.
    if (!bottom_.layers().empty()) {
      last_shared_.push_back(bottom_.layers().back().weight());
    } else if (!levels_.empty()) {
      const Level& lv = levels_.back();
      for (std::size_t e = 0; e < lv.experts.size(); ++e)
        if (lv.expert_input[e] < 0) last_shared_.push_back(lv.experts[e].layers().back().weight());
    }
  }

  // ---- workspace -------------------------------------------------------------

  void prepare(Workspace& ws, index_t B) const {
    const FeatureSpec& f = config_.features;
    ws.X.resize({B, feature_width_});
    ws.dX.resize({B, feature_width_});
    ws.id_rows.resize(f.ids.size());
    ws.bag_rows.resize(f.bags.size());
    ws.id_emb.resize(f.ids.size());
    ws.bag_emb.resize(f.bags.size());
    ws.bag_weights.resize(f.bags.size());
    ws.dense.resize(f.dense.size());
    ws.id_ctx.resize(f.ids.size());
    ws.bag_ctx.resize(f.bags.size());
    ws.d_field.resize(std::max({f.ids.size(), f.bags.size(), std::size_t(1)}));
    ws.seq.resize(f.sequences.size());
    ws.levels.resize(levels_.size());
    for (std::size_t l = 0; l < levels_.size(); ++l) {
      const Level& lv = levels_[l];
      auto& lw = ws.levels[l];
      lw.expert.resize(lv.experts.size());
      lw.expert_out.resize(lv.experts.size());
      lw.d_expert_out.resize(lv.experts.size());
      for (std::size_t e = 0; e < lv.experts.size(); ++e) {
        lw.expert_out[e].resize({B, lv.experts[e].out_features()});
        lw.d_expert_out[e].resize({B, lv.experts[e].out_features()});
      }
      lw.task_gate.resize(lv.task_gates.size());
      lw.d_task_in.resize(num_tasks());
      for (std::size_t k = 0; k < num_tasks(); ++k) lw.d_task_in[k].resize({B, lv.in_dim});
      lw.d_shared_in.resize({B, lv.in_dim});
    }
    ws.H.resize({B, bottom_.layers().empty() ? 1 : bottom_.out_features()});
    ws.dH.resize(ws.H.shape());
    ws.tower.resize(num_tasks());
    ws.out.resize(num_tasks());
    ws.d_out.resize(num_tasks());
    ws.d_scaled.resize(num_tasks());
    ws.d_tower_in.resize(num_tasks());
    ws.class_ids.resize(num_tasks());
    ws.pairs.resize(num_tasks());
    ws.retrieval.resize(num_tasks());
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      const index_t w = task_output_width(config_.tasks[k]);
      ws.out[k].resize({B, w});
      ws.d_out[k].resize({B, w});
      ws.d_scaled[k].resize({B, w});
    }
  }

  void check_batch(const Batch<T>& b) const {
    const char* op = "MultiTaskModel::forward";
    const FeatureSpec& f = config_.features;
    check(b.size > 0, op, "expected a non-empty batch but got size ", b.size);
    const std::size_t B = static_cast<std::size_t>(b.size);
    check(b.ids.size() == f.ids.size() && b.bags.size() == f.bags.size() && b.sequences.size() == f.sequences.size() &&
              b.dense.size() == f.dense.size(),
          op, "batch expected ", f.ids.size(), " ID, ", f.bags.size(), " bag, ", f.sequences.size(), " sequence and ",
          f.dense.size(), " dense fields but got ", b.ids.size(), ", ", b.bags.size(), ", ", b.sequences.size(), ", ",
          b.dense.size());
    for (std::size_t i = 0; i < f.ids.size(); ++i)
      check(b.ids[i].size() == B, op, "ID field '", f.ids[i].name, "' expected ", B, " values but got ",
            b.ids[i].size());
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      check(b.bags[i].offsets.size() == B + 1, op, "bag field '", f.bags[i].name, "' expected ", B + 1,
            " offsets but got ", b.bags[i].offsets.size());
      check(!f.bags[i].weighted || b.bags[i].weights.size() == b.bags[i].ids.size(), op, "weighted bag field '",
            f.bags[i].name, "' expected ", b.bags[i].ids.size(), " weights but got ", b.bags[i].weights.size());
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const auto& s = b.sequences[i];
      const std::size_t L = static_cast<std::size_t>(f.sequences[i].max_len);
      check(s.ids.size() == B * L, op, "sequence field '", f.sequences[i].name, "' expected ", B, " x ", L,
            " = ", B * L, " IDs but got ", s.ids.size());
      check(s.lengths.size() == B, op, "sequence field '", f.sequences[i].name, "' expected ", B, " lengths but got ",
            s.lengths.size());
      for (std::size_t r = 0; r < B; ++r)
        if (s.lengths[r] < 0 || s.lengths[r] > index_t(L))
          fail(op, "sequence field '", f.sequences[i].name, "' length[", r, "] expected in [0, ", L, "] but got ",
               s.lengths[r]);
    }
    for (std::size_t i = 0; i < f.dense.size(); ++i) {
      check(b.dense[i].size() == B * static_cast<std::size_t>(f.dense[i].dim), op, "dense field '", f.dense[i].name,
            "' expected ", B * f.dense[i].dim, " values but got ", b.dense[i].size());
      const std::size_t dim = static_cast<std::size_t>(f.dense[i].dim);
      for (std::size_t j = 0; j < b.dense[i].size(); ++j)
        if (!std::isfinite(b.dense[i][j]))
          fail(op, "dense field '", f.dense[i].name, "' row ", j / dim, " column ", j % dim,
               " expected a finite value but got ", b.dense[i][j]);
    }
    check(b.weights.empty() || b.weights.size() == B, op, "expected ", B, " sample weights but got ", b.weights.size());
    for (std::size_t j = 0; j < b.weights.size(); ++j)
      if (!(b.weights[j] >= 0) || !std::isfinite(b.weights[j]))
        fail(op, "sample weight of row ", j, " expected a finite value >= 0 but got ", b.weights[j]);
  }

  // ---- features ----------------------------------------------------------------

  // Writes a (B, w) block into columns [col, col + w) of X.
  void put_columns(Tensor<T, Device>& X, index_t col, CPtr src, index_t B, index_t w) const {
    kernels::copy_columns(dev(), X.data(), X.dim(1), col, src, w, 0, B, w);
  }
  void take_columns(Ptr dst, const Tensor<T, Device>& X, index_t col, index_t B, index_t w) const {
    kernels::copy_columns(dev(), dst, w, 0, X.data(), X.dim(1), col, B, w);
  }

  const TableSpec& table_spec(const std::string& field, const std::string& table) const {
    const std::string n = table.empty() ? field : table;
    for (const auto& t : tables_)
      if (t.name == n) return t;
    fail("MultiTaskModel", "no table '", n, "'");
  }

  // Rows for IDs of a field: the IDs themselves, or their hash buckets.
  ConstView<index_t> rows_for(const std::vector<index_t>& ids, const TableSpec& t, Tensor<index_t>& buf) const {
    if (!t.hashed) return ConstView<index_t>(ids.data(), {index_t(ids.size())});
    buf.resize({index_t(ids.size())});
    const std::uint64_t salt = hash_name(t.name);
    for (std::size_t i = 0; i < ids.size(); ++i) buf[index_t(i)] = hash_bucket(std::uint64_t(ids[i]), t.rows, salt);
    return buf.view();
  }

  // Batch preparation, on the host, once per batch: everything that needs
  // the raw batch or data-dependent control flow — hashing raw IDs into
  // rows, the valid positions of each sequence and their starts in the
  // packed layout. The numeric forward and backward then read only these
  // workspace buffers and the batch's dense arrays.
  void prepare_batch(Workspace& ws, const Batch<T>& b) const {
    const FeatureSpec& f = config_.features;
    const index_t B = b.size;
    ws.id_view.resize(f.ids.size());
    for (std::size_t i = 0; i < f.ids.size(); ++i)
      ws.id_view[i] = rows_for(b.ids[i], table_spec(f.ids[i].name, f.ids[i].table), ws.id_rows[i]);
    ws.bag_view.resize(f.bags.size());
    for (std::size_t i = 0; i < f.bags.size(); ++i)
      ws.bag_view[i] = rows_for(b.bags[i].ids, table_spec(f.bags[i].name, f.bags[i].table), ws.bag_rows[i]);
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const SequenceFeature& sf = f.sequences[i];
      auto& sw = ws.seq[i];
      const auto& s = b.sequences[i];
      const index_t L = sf.max_len;
      const TableSpec& ts = table_spec(sf.name, sf.table);
      sw.lengths.resize({B});
      std::copy(s.lengths.begin(), s.lengths.end(), sw.lengths.data());
      // Only valid positions are looked up: padding never touches the table.
      index_t n_valid = 0;
      for (index_t r = 0; r < B; ++r) n_valid += s.lengths[r];
      sw.valid_ids.resize({n_valid});
      const std::uint64_t salt = hash_name(ts.name);
      index_t v = 0;
      for (index_t r = 0; r < B; ++r)
        for (index_t t = 0; t < s.lengths[r]; ++t) {
          const index_t id = s.ids[r * L + t];
          sw.valid_ids[v++] = ts.hashed ? hash_bucket(std::uint64_t(id), ts.rows, salt) : id;
        }
      sw.starts.resize({B});
      sw.lengths_d = device_input(sw.lengths_buf, sw.lengths.cview());
      kernels::packed_starts(dev(), sw.starts.data(), sw.lengths_d.data, B);
    }
  }

  void features_forward(Workspace& ws, const Batch<T>& b, const Mode& mode) const {
    const FeatureSpec& f = config_.features;
    const index_t B = b.size;
    index_t col = 0;
    for (std::size_t i = 0; i < f.ids.size(); ++i) {
      const index_t d = f.ids[i].dim;
      ws.id_emb[i].resize({B, d});
      id_layers_[i].forward(ws.id_ctx[i], ws.id_view[i], ws.id_emb[i].view());
      put_columns(ws.X, col, ws.id_emb[i].data(), B, d);
      col += d;
    }
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      const index_t d = f.bags[i].dim;
      const auto& bag = b.bags[i];
      ws.bag_emb[i].resize({B, d});
      CView w = f.bags[i].weighted
                    ? device_input(ws.bag_weights[i], ConstView<T>(bag.weights.data(), {index_t(bag.weights.size())}))
                    : CView();
      bag_layers_[i].forward(ws.bag_ctx[i], ws.bag_view[i], ConstView<index_t>(bag.offsets.data(), {B + 1}), w,
                             ws.bag_emb[i].view());
      put_columns(ws.X, col, ws.bag_emb[i].data(), B, d);
      col += d;
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const SequenceFeature& sf = f.sequences[i];
      const SequenceEncoder& enc = seq_layers_[i];
      auto& sw = ws.seq[i];
      const index_t L = sf.max_len, D = sf.encoder.d_model;
      const index_t n_valid = sw.valid_ids.numel();
      sw.compact.resize({n_valid, D});
      sw.emb.resize({B, L, D});
      sw.hidden.resize({B, L, D});
      sw.pooled.resize({B, D});
      enc.items.forward(sw.items, sw.valid_ids.view(), sw.compact.view());
      // valid positions copied, padded ones zeroed (an empty sequence copies nothing)
      kernels::unpack_sequences(dev(), sw.emb.data(), sw.compact.data(), sw.lengths_d.data, sw.starts.data(), B, L, D);
      ConstView<index_t> lengths(sw.lengths.data(), {B});
      enc.position.forward(sw.position, sw.emb.view(), sw.emb.view());
      enc.encoder.forward(sw.encoder, sw.emb.view(), lengths, sw.hidden.view(), mode);
      enc.pool.forward(sw.pool, sw.hidden.view(), lengths, sw.pooled.view());
      put_columns(ws.X, col, sw.pooled.data(), B, D);
      col += D;
    }
    for (std::size_t i = 0; i < f.dense.size(); ++i) {
      const CView dense = device_input(ws.dense[i], ConstView<T>(b.dense[i].data(), {B * f.dense[i].dim}));
      put_columns(ws.X, col, dense.data, B, f.dense[i].dim);
      col += f.dense[i].dim;
    }
  }

  void features_backward(Workspace& ws) const {
    const FeatureSpec& f = config_.features;
    const index_t B = ws.B;
    index_t col = 0;
    Tensor<T, Device>& d = ws.d_field[0];
    for (std::size_t i = 0; i < f.ids.size(); ++i) {
      const index_t w = f.ids[i].dim;
      d.resize({B, w});
      take_columns(d.data(), ws.dX, col, B, w);
      id_layers_[i].backward(ws.id_ctx[i], d.view());
      col += w;
    }
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      const index_t w = f.bags[i].dim;
      d.resize({B, w});
      take_columns(d.data(), ws.dX, col, B, w);
      bag_layers_[i].backward(ws.bag_ctx[i], d.view());
      col += w;
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const SequenceFeature& sf = f.sequences[i];
      const SequenceEncoder& enc = seq_layers_[i];
      auto& sw = ws.seq[i];
      const index_t L = sf.max_len, D = sf.encoder.d_model;
      sw.d_pooled.resize({B, D});
      sw.d_hidden.resize({B, L, D});
      sw.d_emb.resize({B, L, D});
      take_columns(sw.d_pooled.data(), ws.dX, col, B, D);
      enc.pool.backward(sw.pool, sw.d_pooled.view(), sw.d_hidden.view());
      enc.encoder.backward(sw.encoder, sw.d_hidden.view(), sw.d_emb.view());
      enc.position.backward(sw.position, sw.d_emb.view(), sw.d_emb.view());
      sw.d_compact.resize(sw.compact.shape());
      kernels::pack_sequences(dev(), sw.d_compact.data(), sw.d_emb.data(), sw.lengths_d.data, sw.starts.data(), B, L, D);
      enc.items.backward(sw.items, sw.d_compact.view());
      col += D;
    }
  }

  // ---- trunk ---------------------------------------------------------------------

  CView tower_input(const Workspace& ws, std::size_t k) const {
    switch (config_.architecture) {
      case Architecture::SingleTask:
      case Architecture::SharedBottom: return ws.H.view();
      case Architecture::ESMM: return ws.X.view();
      default: return ws.levels.back().task_gate[k].out.view();
    }
  }

  void trunk_forward(Workspace& ws, const Mode& mode) const {
    if (!bottom_.layers().empty()) bottom_.forward(ws.bottom, ws.X.view(), ws.H.view(), mode);
    for (std::size_t l = 0; l < levels_.size(); ++l) {
      const Level& lv = levels_[l];
      auto& lw = ws.levels[l];
      auto task_in = [&](std::size_t k) -> CView {
        return l == 0 ? ws.X.view() : CView(ws.levels[l - 1].task_gate[k].out.view());
      };
      const CView shared_in = l == 0 ? ws.X.view() : CView(ws.levels[l - 1].shared_gate.out.view());
      for (std::size_t e = 0; e < lv.experts.size(); ++e) {
        const int src = lv.expert_input[e];
        lv.experts[e].forward(lw.expert[e], src < 0 ? shared_in : task_in(std::size_t(src)), lw.expert_out[e].view(),
                              mode);
      }
      for (std::size_t k = 0; k < lv.task_gates.size(); ++k) gate_forward(lv.task_gates[k], lw.task_gate[k], task_in(k), lw);
      if (lv.has_shared_gate) gate_forward(lv.shared_gate, lw.shared_gate, shared_in, lw);
    }
  }

  void gate_forward(const Gate& g, typename Workspace::GateWs& gw, CView x,
                    typename Workspace::LevelWs& lw) const {
    const index_t B = x.rows(), M = index_t(g.experts.size());
    gw.out.resize({B, g.mix.expert_dim()});
    gw.experts.resize(std::size_t(M));
    for (index_t m = 0; m < M; ++m) gw.experts[std::size_t(m)] = lw.expert_out[std::size_t(g.experts[std::size_t(m)])].data();
    g.mix.forward(gw.ctx, x, gw.experts.data(), gw.out.view());
  }

  // d experts += p_m * d_out; d_in += the gate's input gradient
  void gate_backward(const Gate& g, typename Workspace::GateWs& gw, typename Workspace::LevelWs& lw,
                     View d_in) const {
    const index_t M = index_t(g.experts.size());
    gw.d_experts.resize(std::size_t(M));
    for (index_t m = 0; m < M; ++m) gw.d_experts[std::size_t(m)] = lw.d_expert_out[std::size_t(g.experts[std::size_t(m)])].data();
    g.mix.backward(gw.ctx, gw.d_out.cview(), gw.d_experts.data(), d_in);
  }

  void trunk_backward(Workspace& ws, const double* coeff) const {
    const index_t B = ws.B;
    switch (config_.architecture) {
      case Architecture::SingleTask:
      case Architecture::SharedBottom: {
        ws.dH.zero();
        for (std::size_t k = 0; k < num_tasks(); ++k)
          if (coeff[k] != 0.0)
            kernels::residual_add(dev(), ws.dH.data(), ws.dH.data(), ws.d_tower_in[k].data(), ws.dH.numel());
        bottom_.backward(ws.bottom, ws.dH.view(), ws.dX.view());
        return;
      }
      case Architecture::ESMM:
        ws.dX.zero();
        for (std::size_t k = 0; k < num_tasks(); ++k)
          if (coeff[k] != 0.0)
            kernels::residual_add(dev(), ws.dX.data(), ws.dX.data(), ws.d_tower_in[k].data(), ws.dX.numel());
        return;
      default: break;
    }
    // CGC levels, last to first. d of a level's gate outputs come from the
    // towers (last level) or from the next level's inputs.
    for (std::size_t l = levels_.size(); l-- > 0;) {
      const Level& lv = levels_[l];
      auto& lw = ws.levels[l];
      for (std::size_t k = 0; k < num_tasks(); ++k) {
        auto& gw = lw.task_gate[k];
        gw.d_out.resize({B, config_.expert.back()});
        CPtr src = l + 1 == levels_.size() ? ws.d_tower_in[k].data() : ws.levels[l + 1].d_task_in[k].data();
        if (l + 1 == levels_.size() && coeff[k] == 0.0)
          gw.d_out.zero();
        else
          kernels::copy(dev(), gw.d_out.data(), src, gw.d_out.numel());
      }
      if (lv.has_shared_gate) {
        lw.shared_gate.d_out.resize({B, config_.expert.back()});
        kernels::copy(dev(), lw.shared_gate.d_out.data(), ws.levels[l + 1].d_shared_in.data(),
                      lw.shared_gate.d_out.numel());
      }
      for (auto& t : lw.d_expert_out) t.zero();
      for (auto& t : lw.d_task_in) t.zero();
      lw.d_shared_in.zero();
      Tensor<T, Device>& scratch = ws.dH;  // free in MMoE/PLE
      for (std::size_t k = 0; k < num_tasks(); ++k)
        gate_backward(lv.task_gates[k], lw.task_gate[k], lw, lw.d_task_in[k].view());
      if (lv.has_shared_gate) gate_backward(lv.shared_gate, lw.shared_gate, lw, lw.d_shared_in.view());
      for (std::size_t e = 0; e < lv.experts.size(); ++e) {
        const int src = lv.expert_input[e];
        Ptr d_in = src < 0 ? lw.d_shared_in.data() : lw.d_task_in[std::size_t(src)].data();
        scratch.resize({B, lv.in_dim});
        lv.experts[e].backward(lw.expert[e], lw.d_expert_out[e].view(), scratch.view());
        kernels::residual_add(dev(), d_in, d_in, scratch.data(), scratch.numel());
      }
    }
    // Level 0 reads X for every input.
    auto& l0 = ws.levels[0];
    kernels::copy(dev(), ws.dX.data(), l0.d_shared_in.data(), ws.dX.numel());
    for (std::size_t k = 0; k < num_tasks(); ++k)
      kernels::residual_add(dev(), ws.dX.data(), ws.dX.data(), l0.d_task_in[k].data(), ws.dX.numel());
  }

  // ESMM's CTCVR loss: BCE on p = sigmoid(a) sigmoid(b) over all impressions,
  // computed in log space so that it stays finite for large |a|, |b|.
  // Writes dL/db into d_cvr and dL/da into d_ctr (backward adds the latter to
  // the CTR tower's gradient).
  LossResult esmm_ctcvr_loss(LossInputs<T, Device>& in, Ptr d_cvr, Ptr d_ctr, CPtr a, CPtr b, const T* y, const std::uint8_t* m,
                             const T* w, index_t n) const {
    double den = 0;  // host: the denominator, from the batch's mask and weights
    index_t count = 0;
    for (index_t i = 0; i < n; ++i)
      if (!m || m[i]) {
        den += w ? double(w[i]) : 1.0;
        ++count;
      }
    LossResult r{0.0, den, count};
    if (den <= 0) {
      kernels::fill(dev(), d_cvr, n, T(0));
      kernels::fill(dev(), d_ctr, n, T(0));
      return r;
    }
    r.value = kernels::esmm_loss(dev(), d_ctr, d_cvr, a, b, detail::loss_input(in.labels, y, n),
                                 detail::loss_input(in.mask, m, n), detail::loss_input(in.weights, w, n), n, 1.0 / den);
    return r;
  }

  ModelConfig config_;
  std::unique_ptr<ParameterStore<T, Device>> store_;
  std::vector<TableSpec> tables_;
  index_t feature_width_ = 0;
  std::vector<Embedding<T, Device>> id_layers_;
  std::vector<EmbeddingBag<T, Device>> bag_layers_;
  std::vector<SequenceEncoder> seq_layers_;
  MLP<T, Device> bottom_;
  std::vector<Level> levels_;
  std::vector<MLP<T, Device>> towers_;
  std::vector<ParamId> target_table_;  // per task: a retrieval task's target table, else -1
  std::vector<ParamId> shared_params_, last_shared_;
  std::uint64_t id_ = 0;  // unique per model instance in this process (0: planning only)
};

}  // namespace mtrec
