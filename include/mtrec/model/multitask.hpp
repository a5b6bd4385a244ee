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
// The model orchestrates components with their own headers and tests:
//   FeatureEncoder (model/feature_encoder.hpp)  the batch's fields -> X, and
//                  the batch preparation (host work, one upload per batch)
//   CgcLevels      (model/cgc.hpp)  the expert levels of MMoE and PLE: MMoE
//                  is exactly a one-level CGC whose experts are all shared
//   MLP, losses    (layers/)        bottom, towers and the task losses
// compute_losses prepares the labels the same way (checks, class ids, BPR
// pairs, retrieval rows on the host, then one upload).
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
#include "mtrec/model/cgc.hpp"
#include "mtrec/model/config.hpp"
#include "mtrec/model/feature_encoder.hpp"
#include "mtrec/model/tabular.hpp"
#include "mtrec/layers/losses.hpp"

namespace mtrec {

// Per-task loss values of one batch (unweighted, each a weighted mean over
// its labelled rows; 0 for a task with no labelled row).
struct TaskLosses {
  std::vector<double> value;
  std::vector<index_t> count;  // labelled rows per task
};

namespace detail {
// A feature spec fits a model when it declares the model's fields, kind by
// kind in the model's order, with the same vocabulary sizes, hashing, dense
// widths and item sides, and the model's tasks in order.
inline void check_preprocessing(const ModelConfig& c, const data::TabularEncoder& enc, const char* op) {
  using data::ColumnKind;
  check(enc.fitted(), op, "the feature spec was not fitted");
  const auto& sf = enc.schema().features;
  std::size_t gi = 0, gb = 0, gs = 0, gd = 0;
  auto mismatch = [&](const std::string& col, const std::string& what) {
    fail(op, "the feature spec's column '", col, "' does not fit the model: ", what);
  };
  for (std::size_t f = 0; f < sf.size(); ++f) {
    const auto& fc = sf[f];
    const index_t rows = fc.kind == ColumnKind::Dense || (fc.kind == ColumnKind::Id && fc.buckets > 0)
                             ? 0
                             : enc.vocabulary(f).rows();
    auto same = [&](const std::string& name, index_t vocab, index_t buckets, bool item_side) {
      if (name != fc.column) mismatch(fc.column, "the model's field in its place is '" + name + "'");
      if (vocab != rows || buckets != fc.buckets)
        mismatch(fc.column, "the model expects vocab " + std::to_string(vocab) + " and hash_buckets " +
                                std::to_string(buckets) + " but the spec has " + std::to_string(rows) + " and " +
                                std::to_string(fc.buckets));
      if (item_side != fc.item_side)
        mismatch(fc.column, std::string("item_side is ") + (item_side ? "true" : "false") + " in the model");
    };
    switch (fc.kind) {
      case ColumnKind::Id:
        if (gi >= c.features.ids.size()) mismatch(fc.column, "the model has no ID field for it");
        same(c.features.ids[gi].name, c.features.ids[gi].vocab, c.features.ids[gi].hash_buckets,
             c.features.ids[gi].item_side);
        ++gi;
        break;
      case ColumnKind::Bag:
        if (gb >= c.features.bags.size()) mismatch(fc.column, "the model has no bag field for it");
        same(c.features.bags[gb].name, c.features.bags[gb].vocab, c.features.bags[gb].hash_buckets,
             c.features.bags[gb].item_side);
        ++gb;
        break;
      case ColumnKind::Sequence:
      case ColumnKind::Text:
        if (gs >= c.features.sequences.size()) mismatch(fc.column, "the model has no sequence field for it");
        same(c.features.sequences[gs].name, c.features.sequences[gs].vocab, c.features.sequences[gs].hash_buckets,
             c.features.sequences[gs].item_side);
        if (c.features.sequences[gs].max_len != fc.max_len)
          mismatch(fc.column, "max_len is " + std::to_string(c.features.sequences[gs].max_len) + " in the model but " +
                                  std::to_string(fc.max_len) + " in the spec");
        ++gs;
        break;
      case ColumnKind::Dense:
        if (gd >= c.features.dense.size()) mismatch(fc.column, "the model has no dense field for it");
        same(c.features.dense[gd].name, 0, 0, c.features.dense[gd].item_side);
        if (c.features.dense[gd].dim != (fc.impute ? 2 : 1))
          mismatch(fc.column, "the model's dense width is " + std::to_string(c.features.dense[gd].dim) +
                                  " but the spec gives " + (fc.impute ? "2 (imputed)" : "1"));
        ++gd;
        break;
    }
  }
  check(gi == c.features.ids.size() && gb == c.features.bags.size() && gs == c.features.sequences.size() &&
            gd == c.features.dense.size(),
        op, "the feature spec declares ", gi, " ID, ", gb, " bag, ", gs, " sequence and ", gd,
        " dense fields but the model has ", c.features.ids.size(), ", ", c.features.bags.size(), ", ",
        c.features.sequences.size(), " and ", c.features.dense.size());
  const auto& st = enc.schema().tasks;
  check(st.size() == c.tasks.size(), op, "the feature spec has ", st.size(), " tasks but the model ", c.tasks.size());
  for (std::size_t k = 0; k < st.size(); ++k) {
    check(st[k].column == c.tasks[k].name && st[k].type == c.tasks[k].type, op, "task ", k + 1, " is '",
          c.tasks[k].name, "' (", task_type_name(c.tasks[k].type), ") in the model but '", st[k].column, "' (",
          task_type_name(st[k].type), ") in the feature spec");
    if (st[k].type == TaskType::MultiClass)
      check(index_t(enc.classes(k).size()) == c.tasks[k].num_classes, op, "task '", st[k].column, "' has ",
            c.tasks[k].num_classes, " classes in the model but ", enc.classes(k).size(), " in the feature spec");
  }
}
}  // namespace detail

template <class T, class Device = Cpu>
class MultiTaskModel {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;  // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;

 private:
 public:
  struct Workspace {
    index_t B = 0;
    typename FeatureEncoder<T, Device>::Workspace features;  // the prepared batch (model/feature_encoder.hpp)
    Tensor<T, Device> X, dX;  // (B,F)
    typename MLP<T, Device>::Context bottom;
    Tensor<T, Device> H, dH;  // bottom output (B,Db)
    typename CgcLevels<T, Device>::Workspace cgc;  // MMoE / PLE (model/cgc.hpp)
    std::vector<CPtr> d_task_out;                  // (K) the towers' input gradients cgc reads; null: none
    std::vector<typename MLP<T, Device>::Context> tower;
    std::vector<Tensor<T, Device>> out, d_out, d_scaled, d_tower_in;  // per task
    std::vector<Tensor<index_t>> class_ids;  // multi-class labels as ids
    // BPR tasks: the batch's (positive, negative) row pairs and their scores.
    struct PairWs {
      Tensor<index_t> order, pos, neg;  // order (B): labelled rows sorted by (group, label)
      Tensor<T, Device> s_pos, s_neg, d_pos, d_neg;  // (P)
      Tensor<T> weight;  // (P) host: the pair weights, from the batch weights
    };
    // Retrieval tasks: the target rows' embeddings are the keys.
    struct RetrievalWs {
      Tensor<index_t> rows;    // (B) target row per batch row (0 where unlabelled)
      Tensor<index_t> positions, targets;  // (n) the labelled batch rows and their target rows
      Tensor<T, Device> keys, d_keys;  // (B,D)
      Tensor<T, Device> d_targets;     // (n,D) the labelled rows' key gradients, scaled
      InBatchSoftmaxWorkspace<T, Device> softmax;
    };
    std::vector<PairWs> pairs;
    std::vector<RetrievalWs> retrieval;
    Tensor<T, Device> pred;  // predict's outputs on the device (unused when the host reads device memory)
    Tensor<T, Device> esmm_d_ctr;                     // (B) ESMM: dL_ctcvr / d CTR logit
    StagedInputs<Device> labels_staged;  // the labels and what is built from them, on the device in one copy
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
    store_->set_precision(config_.precision);
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
  // Where the matrix products run: fp32, or the bf16 unit that
  // ModelConfig::precision = BF16 uses on this machine (amx, avx512_bf16;
  // fp32 where there is none, in double, and on devices other than Cpu).
  kernels::Bf16Path matmul_path() const {
    if constexpr (std::is_same<T, float>::value && std::is_same<Device, Cpu>::value) {
      if (config_.precision == Precision::BF16) return kernels::bf16_default_path();
    }
    return kernels::Bf16Path::fp32;
  }

  // ---- the feature spec: raw values -> the model's rows ---------------------------------
  // The preprocessing that turns raw values (CSV cells, the fields of a
  // request) into this model's inputs: each vocabulary with its OOV row, the
  // hashing of hashed IDs, the dense standardisation, the text tokenizer,
  // and the classes and item vocabularies of the tasks. save_checkpoint
  // stores it and load_checkpoint restores it, so a loaded model encodes raw
  // values by itself. A model built from a ModelConfig alone has none.
  void set_preprocessing(data::TabularEncoder enc) {
    detail::check_preprocessing(config_, enc, "MultiTaskModel::set_preprocessing");
    preprocessing_ = std::make_shared<const data::TabularEncoder>(std::move(enc));
  }
  // Null when the model has no feature spec.
  const data::TabularEncoder* preprocessing() const { return preprocessing_.get(); }
  // Raw rows -> a batch for predict(): unseen values map to the OOV row, an
  // absent feature takes its missing value; a malformed value, or a field
  // that is not one of the model's features, is an error naming the row and
  // the field.
  Batch<T> encode(const data::RawRows& rows) const {
    check(preprocessing_ != nullptr, "MultiTaskModel::encode",
          "the model has no feature spec: it was built from a ModelConfig, or loaded from a checkpoint saved "
          "from a model without one (save_checkpoint stores it once set_preprocessing has been called); "
          "call set_preprocessing(), or retrain with mtrec-train --save");
    return preprocessing_->encode<T>(rows);
  }

  ParameterStore<T, Device>& parameters() { return *store_; }
  const ParameterStore<T, Device>& parameters() const { return *store_; }
  index_t feature_width() const { return features_.width(); }
  const FeatureEncoder<T, Device>& feature_encoder() const { return features_; }
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
    // host, once per batch: field checks, hashing, sequence positions, and
    // the batch's arrays uploaded in one copy (FeatureEncoder::prepare)
    features_.prepare(ws.features, batch, "MultiTaskModel::forward");
    check_weights(batch);
    const index_t B = batch.size;
    ws.B = B;
    ws.mode = mode;
    prepare(ws, B);
    features_.forward(ws.features, ws.X.view(), mode);
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
    // Label preparation (host, once per batch): every task's labels checked,
    // class ids, BPR pairs and retrieval rows built; then every array the
    // loss kernels read goes to the device in one copy.
    StagedInputs<Device>& st = ws.labels_staged;
    st.clear();
    st.add(w, w ? B : 0);
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
      st.add(y, B);
      st.add(m, m ? B : 0);
      if (config_.architecture == Architecture::ESMM && k == 1) continue;
      if (t.type == TaskType::Binary && t.loss == TaskLoss::BPR) {
        auto& pw = ws.pairs[k];
        prepare_pairs(pw, y, m, w, batch.groups, B, t);
        st.add(pw.pos.cview());
        st.add(pw.neg.cview());
        st.add(pw.weight.cview());
      } else if (t.type == TaskType::Retrieval) {
        auto& rw = ws.retrieval[k];
        prepare_retrieval(rw, y, m, B, k);
        st.add(rw.rows.cview());
        st.add(rw.positions.cview());
        st.add(rw.targets.cview());
      } else if (t.type == TaskType::MultiClass) {
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
        st.add(ids.cview());
      }
    }
    st.upload(dev());
    ws.loss_inputs.staged = &st;
    // The loss kernels, per task.
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      const TaskSpec& t = config_.tasks[k];
      const bool masked = !batch.label_mask.empty() && !batch.label_mask[k].empty();
      const std::uint8_t* m = masked ? batch.label_mask[k].data() : nullptr;
      const T* y = batch.labels[k].data();
      Ptr d = ws.d_out[k].data();
      CPtr o = ws.out[k].data();
      LossResult lr;
      if (config_.architecture == Architecture::ESMM && k == 1) {
        ws.esmm_d_ctr.resize({B});
        lr = esmm_ctcvr_loss(ws.loss_inputs, d, ws.esmm_d_ctr.data(), ws.out[0].data(), o, y, m, w, B);
      } else if (t.type == TaskType::Binary && t.loss == TaskLoss::BPR) {
        lr = bpr_task_loss(ws.pairs[k], ws.loss_inputs, d, o, B);
      } else if (t.type == TaskType::Retrieval) {
        lr = retrieval_task_loss(ws.retrieval[k], st, d, o, m, w, B, k);
      } else if (t.type == TaskType::Binary) {
        lr = bce_with_logits(dev(), d, o, y, m, w, B, &ws.loss_inputs);
      } else if (t.type == TaskType::Regression) {
        lr = t.loss == TaskLoss::Huber ? huber(dev(), d, o, y, m, w, B, T(t.huber_delta), &ws.loss_inputs)
                                       : mse(dev(), d, o, y, m, w, B, &ws.loss_inputs);
      } else {
        lr = softmax_cross_entropy(dev(), d, o, ws.class_ids[k].data(), m, w, B, t.num_classes, &ws.loss_inputs);
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
    features_.backward(ws.features, ws.dX.cview());
  }

  // out (B, C_total): probabilities for binary tasks, values for regression,
  // class probabilities for multi-class; ESMM adds pCVR as a last column.
  // `out` is host memory: on a device whose memory the host cannot read, the
  // outputs are computed in the workspace and copied back once.
  void predict(Workspace& ws, const Batch<T>& batch, Tensor<T>& host_out) const {
    const index_t C = output_width();
    host_out.resize({batch.size, C});
    Tensor<T, Device>& out = predict_buffer(ws, host_out);
    out.resize({batch.size, C});
    predict_into(ws, batch, out.data());
    if (static_cast<void*>(&out) != static_cast<void*>(&host_out)) to_host(dev(), host_out.data(), out.cview());
  }
  // predict() into device memory: out (B, output_width()) on the model's
  // device, e.g. rows of a larger buffer that evaluate() copies back once.
  void predict_into(Workspace& ws, const Batch<T>& batch, Ptr out) const {
    forward(ws, batch, Mode::eval());
    write_outputs(ws, out);
  }

  // ---- ranking: one user, N candidates, the user side once --------------------------
  struct RankingWorkspace {
    Workspace user, items;         // the user's row; the candidates' rows
    SplitInput<T, Device> split;   // X as the user's part + the candidates' parts
  };
  // out (N, output_width()) host: predict() over the N rows that hold the
  // user's user-side fields and candidate n's item-side fields (the
  // FeatureSpec's item_side flags), computed with the user side once: the
  // user's fields (its sequence encoder included) are encoded for one row,
  // and the first layer of every expert, gate, bottom and (ESMM) tower is
  // split as W [u; i] + b = W_i i + (W_u u + b), the bracket computed once.
  // Only the user-side fields of `user` (1 row) and the item-side fields of
  // `candidates` are read. Equal to the plain predict within float rounding.
  void predict_ranking(RankingWorkspace& rw, const Batch<T>& user, const Batch<T>& candidates,
                       Tensor<T>& host_out) const {
    const char* op = "MultiTaskModel::predict_ranking";
    check(user.size == 1, op, "expected a one-row user batch but got ", user.size, " rows");
    features_.prepare(rw.user.features, user, op);
    features_.prepare(rw.items.features, candidates, op);
    const Mode mode = Mode::eval();
    const index_t N = candidates.size, C = output_width();
    rw.user.B = 1;
    rw.user.mode = mode;
    rw.user.X.resize({1, features_.width()});
    using Side = typename FeatureEncoder<T, Device>::Side;
    features_.forward(rw.user.features, rw.user.X.view(), mode, Side::User);
    Workspace& ws = rw.items;
    ws.owner = 0;  // not a workspace backward may use
    ws.batch = nullptr;
    ws.B = N;
    ws.mode = mode;
    prepare(ws, N);
    features_.forward(ws.features, ws.X.view(), mode, Side::Item);
    rw.split.shared_blocks = features_.column_blocks(false);
    rw.split.row_blocks = features_.column_blocks(true);
    rw.split.F = features_.width();
    rw.split.gather(dev(), rw.user.X.cview(), ws.X.cview());
    if (!bottom_.layers().empty()) bottom_.forward(ws.bottom, rw.split, ws.H.view(), mode);
    if (!cgc_.empty()) cgc_.forward(ws.cgc, rw.split, mode);
    for (std::size_t k = 0; k < towers_.size(); ++k) {
      if (config_.architecture == Architecture::ESMM)
        towers_[k].forward(ws.tower[k], rw.split, ws.out[k].view(), mode);
      else
        towers_[k].forward(ws.tower[k], tower_input(ws, k), ws.out[k].view(), mode);
    }
    host_out.resize({N, C});
    Tensor<T, Device>& out = predict_buffer(ws, host_out);
    out.resize({N, C});
    write_outputs(ws, out.data());
    if (static_cast<void*>(&out) != static_cast<void*>(&host_out)) to_host(dev(), host_out.data(), out.cview());
  }

 private:
  // The task outputs of the last forward in ws -> out (B, output_width()).
  void write_outputs(Workspace& ws, Ptr out) const {
    const index_t B = ws.B, C = output_width();
    index_t col = 0;
    for (std::size_t k = 0; k < num_tasks(); ++k) {
      const TaskSpec& t = config_.tasks[k];
      const index_t w = task_output_width(t);
      CPtr o = ws.out[k].data();  // (B,w)
      if (t.type == TaskType::Regression || t.type == TaskType::Retrieval)  // values; a retrieval query vector
        kernels::output_transform(dev(), out, C, col, o, B, w, kernels::OutputKind::Identity);
      else if (t.type == TaskType::MultiClass)
        kernels::output_transform(dev(), out, C, col, o, B, w, kernels::OutputKind::Softmax);
      else if (config_.architecture == Architecture::ESMM && k == 1)
        kernels::sigmoid_product(dev(), out, C, col, ws.out[0].data(), o, B);  // pCTCVR = pCTR * pCVR
      else
        kernels::output_transform(dev(), out, C, col, o, B, w, kernels::OutputKind::Sigmoid);
      col += w;
    }
    if (config_.architecture == Architecture::ESMM)  // pCVR
      kernels::output_transform(dev(), out, C, col, ws.out[1].data(), B, 1, kernels::OutputKind::Sigmoid);
  }

 public:

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
    store_->set_precision(config_.precision);
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
  // BPR's pairs (host, label preparation): every (positive, negative) pair of
  // labelled rows in one group (the whole batch when ungrouped), weighted by
  // the product of the rows' sample weights.
  void prepare_pairs(typename Workspace::PairWs& pw, const T* y, const std::uint8_t* m, const T* w,
                     const std::vector<index_t>& groups, index_t B, const TaskSpec& t) const {
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
  }

  // The BPR loss over the prepared pairs: the scores are gathered, and the
  // pair gradients scattered back, by kernels.
  LossResult bpr_task_loss(typename Workspace::PairWs& pw, LossInputs<T, Device>& inputs, Ptr d, CPtr score,
                           index_t B) const {
    const index_t P = pw.pos.numel();
    kernels::fill(dev(), d, B, T(0));
    if (P == 0) return LossResult{};
    const IdView pos = inputs.staged->view(pw.pos.cview()), neg = inputs.staged->view(pw.neg.cview());
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

  // Retrieval labels (host, label preparation): the target row of every
  // batch row (row 0 as a placeholder where unlabelled), and the labelled
  // rows' positions and targets, which backward scatters into.
  void prepare_retrieval(typename Workspace::RetrievalWs& rw, const T* y, const std::uint8_t* m, index_t B,
                         std::size_t k) const {
    const char* op = "MultiTaskModel::compute_losses";
    const TaskSpec& t = config_.tasks[k];
    const index_t rows = store_->info(target_table_[k]).shape[0];
    rw.rows.resize({B});
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
  }

  // In-batch sampled softmax: row i's query (the tower output) against the
  // target embeddings of every labelled row; its own target is the positive.
  // d (B,D) = dL/dq written; rw.d_keys = dL/d key, scattered in backward.
  LossResult retrieval_task_loss(typename Workspace::RetrievalWs& rw, const StagedInputs<Device>& st, Ptr d, CPtr q,
                                 const std::uint8_t* m, const T* w, index_t B, std::size_t k) const {
    const index_t D = config_.tasks[k].target_dim;
    rw.keys.resize({B, D});
    rw.d_keys.resize({B, D});
    const IdView rows_d = st.view(rw.rows.cview());
    kernels::gather_rows(dev(), rw.keys.data(), store_->value(target_table_[k]), rows_d.data, B, D);  // keys (B,D)
    rw.softmax.inputs.staged = &st;
    return in_batch_softmax(dev(), d, rw.d_keys.data(), q, rw.keys.data(), B, D, config_.tasks[k].temperature,
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
    const IdView positions = ws.labels_staged.view(rw.positions.cview());
    const IdView targets = ws.labels_staged.view(rw.targets.cview());
    kernels::gather_rows(dev(), rw.d_targets.data(), rw.d_keys.data(), positions.data, n, D);
    kernels::scale(dev(), rw.d_targets.data(), rw.d_targets.data(), n * D, c);
    detail::unfuse_table(*store_, table);  // a fused table takes this gradient the unfused way
    store_->touched(table).mark_all(rw.targets.data(), n);  // on the host
    kernels::scatter_add_rows(dev(), store_->grad(table), pointer_t<std::uint8_t, typename Device::memory>(nullptr),
                              rw.d_targets.data(), targets.data, n, D);
  }

  // ---- construction ----------------------------------------------------------

  void build() {
    ParameterStore<T, Device>& s = *store_;
    const FeatureSpec& f = config_.features;
    const Init emb_init = Init::normal(0.0, config_.embedding_init_std);
    features_ = FeatureEncoder<T, Device>(s, f, tables_, emb_init);
    const index_t feature_width_ = features_.width();
    auto table_of = [&](const std::string& field, const std::string& table) {
      return embedding_table_for(s, tables_, field, table, emb_init);
    };

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
      case Architecture::MMoE: build_levels(1, 0, config_.experts); break;  // one level, every expert shared
      case Architecture::PLE: build_levels(config_.ple_levels, config_.ple_task_experts, config_.ple_shared_experts); break;
      case Architecture::ESMM: break;
    }
    if (!cgc_.empty()) trunk_width = cgc_.out_features();
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
    std::vector<std::string> names;
    for (const auto& t : config_.tasks) names.push_back(t.name);
    cgc_ = CgcLevels<T, Device>(*store_, features_.width(), names, L, Et, Es,
                                MLPConfig{config_.expert, config_.activation, config_.dropout, true});
    num_levels_ = L;
  }

  // Task-specific = towers, gates and task experts of the last level (their
  // gradient comes from one task only); everything else is shared.
  void classify_parameters() {
    const ParameterStore<T, Device>& s = *store_;
    const std::string last_level = "level" + std::to_string(num_levels_ - 1) + ".task_expert.";
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
                             (!cgc_.empty() && n.rfind(last_level, 0) == 0) || target_only(id);
      if (!task_only) shared_params_.push_back(id);
    }
    // The last shared layer: bottom's last Linear, or the last Linear of every
    // shared expert of the last level.
    if (!bottom_.layers().empty()) {
      last_shared_.push_back(bottom_.layers().back().weight());
    } else if (!cgc_.empty()) {
      last_shared_ = cgc_.last_shared_weights();
    }
  }

  // ---- workspace -------------------------------------------------------------

  void prepare(Workspace& ws, index_t B) const {
    ws.X.resize({B, features_.width()});
    ws.dX.resize({B, features_.width()});
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

  // The feature encoder's field checks, then the sample weights.
  void check_batch(const Batch<T>& b) const {
    features_.check_batch("MultiTaskModel::forward", b);
    check_weights(b);
  }
  void check_weights(const Batch<T>& b) const {
    const char* op = "MultiTaskModel::forward";
    const std::size_t B = static_cast<std::size_t>(b.size);
    check(b.weights.empty() || b.weights.size() == B, op, "expected ", B, " sample weights but got ", b.weights.size());
    for (std::size_t j = 0; j < b.weights.size(); ++j)
      if (!(b.weights[j] >= 0) || !std::isfinite(b.weights[j]))
        fail(op, "sample weight of row ", j, " expected a finite value >= 0 but got ", b.weights[j]);
  }

  // ---- features ------------------------------------------------------------------

  const TableSpec& table_spec(const std::string& field, const std::string& table) const {
    const std::string n = table.empty() ? field : table;
    for (const auto& t : tables_)
      if (t.name == n) return t;
    fail("MultiTaskModel", "no table '", n, "'");
  }

  // ---- trunk ---------------------------------------------------------------------

  CView tower_input(const Workspace& ws, std::size_t k) const {
    switch (config_.architecture) {
      case Architecture::SingleTask:
      case Architecture::SharedBottom: return ws.H.view();
      case Architecture::ESMM: return ws.X.view();
      default: return cgc_.output(ws.cgc, k);
    }
  }

  void trunk_forward(Workspace& ws, const Mode& mode) const {
    if (!bottom_.layers().empty()) bottom_.forward(ws.bottom, ws.X.view(), ws.H.view(), mode);
    if (!cgc_.empty()) cgc_.forward(ws.cgc, ws.X.cview(), mode);
  }

  void trunk_backward(Workspace& ws, const double* coeff) const {
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
    // MMoE / PLE: a task with coefficient 0 sends no gradient into the levels.
    ws.d_task_out.resize(num_tasks());
    for (std::size_t k = 0; k < num_tasks(); ++k)
      ws.d_task_out[k] = coeff[k] == 0.0 ? CPtr(nullptr) : CPtr(ws.d_tower_in[k].data());
    cgc_.backward(ws.cgc, ws.d_task_out.data(), ws.dX.view());
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
    r.value = kernels::esmm_loss(dev(), d_ctr, d_cvr, a, b, detail::loss_input(in, in.labels, y, n),
                                 detail::loss_input(in, in.mask, m, n), detail::loss_input(in, in.weights, w, n), n, 1.0 / den);
    return r;
  }

  ModelConfig config_;
  std::shared_ptr<const data::TabularEncoder> preprocessing_;  // the feature spec, or null
  std::unique_ptr<ParameterStore<T, Device>> store_;
  std::vector<TableSpec> tables_;
  FeatureEncoder<T, Device> features_;  // X = the encoded fields (model/feature_encoder.hpp)
  MLP<T, Device> bottom_;
  CgcLevels<T, Device> cgc_;  // the expert levels of MMoE and PLE (model/cgc.hpp)
  int num_levels_ = 0;
  std::vector<MLP<T, Device>> towers_;
  std::vector<ParamId> target_table_;  // per task: a retrieval task's target table, else -1
  std::vector<ParamId> shared_params_, last_shared_;
  std::uint64_t id_ = 0;  // unique per model instance in this process (0: planning only)
};

}  // namespace mtrec
