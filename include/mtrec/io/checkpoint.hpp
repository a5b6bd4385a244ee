// mtrec: checkpoints — a model (and optionally its training state) in one
// safetensors file that rebuilds the model without the original C++ code.
//
// Tensors: every parameter under its store name, e.g.
//   emb.<table>                         (rows, dim)      embedding tables
//   seq.<field>.position.weight         (max_len, d)
//   seq.<field>.encoder.layers.<i>.{norm1,norm2,self_attn.in_proj,self_attn.out_proj,linear1,linear2}.{weight,bias}
//   seq.<field>.encoder.norm.{weight,bias}
//   bottom.<i>.{weight,bias}            shared-bottom / single-task MLP
//   level<l>.{shared_expert.<j>,task_expert.<task>.<j>}.<i>.{weight,bias}, level<l>.gate.<task|shared>.{weight,bias}
//   tower.<task>.<i>.{weight,bias}
// Linear weights are (out, in) as in PyTorch. With training state:
//   optimizer.m, optimizer.v / optimizer.momentum   flat, laid out like the parameter block
// Metadata (all strings): format = "mtrec.checkpoint", version, dtype,
// config (the ModelConfig as JSON), and with training state: trainer (JSON:
// epoch, step, updates, optimizer step, loss-weighting state).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mtrec/io/json.hpp"
#include "mtrec/io/safetensors.hpp"
#include "mtrec/model/multitask.hpp"
#include "mtrec/train/trainer.hpp"

namespace mtrec {

namespace detail {

template <class E>
struct EnumNames;
#define MTREC_ENUM_NAMES(E, ...)                                   \
  template <>                                                      \
  struct EnumNames<E> {                                            \
    static const std::vector<std::pair<E, const char*>>& list() {  \
      static const std::vector<std::pair<E, const char*>> l = {__VA_ARGS__}; \
      return l;                                                    \
    }                                                              \
  };
MTREC_ENUM_NAMES(Architecture, {Architecture::SingleTask, "single"}, {Architecture::SharedBottom, "shared_bottom"},
                 {Architecture::MMoE, "mmoe"}, {Architecture::PLE, "ple"}, {Architecture::ESMM, "esmm"})
MTREC_ENUM_NAMES(TaskType, {TaskType::Binary, "binary"}, {TaskType::Regression, "regression"},
                 {TaskType::MultiClass, "multiclass"}, {TaskType::Retrieval, "retrieval"})
MTREC_ENUM_NAMES(TaskLoss, {TaskLoss::Default, "default"}, {TaskLoss::BCE, "bce"}, {TaskLoss::MSE, "mse"},
                 {TaskLoss::Huber, "huber"}, {TaskLoss::CrossEntropy, "cross_entropy"},
                 {TaskLoss::BPR, "bpr"}, {TaskLoss::SampledSoftmax, "sampled_softmax"})
MTREC_ENUM_NAMES(Activation, {Activation::Identity, "identity"}, {Activation::ReLU, "relu"},
                 {Activation::GELU, "gelu"}, {Activation::GELUTanh, "gelu_tanh"}, {Activation::Sigmoid, "sigmoid"})
MTREC_ENUM_NAMES(BagPooling, {BagPooling::Sum, "sum"}, {BagPooling::Mean, "mean"})
MTREC_ENUM_NAMES(SequencePoolMode, {SequencePoolMode::Mean, "mean"}, {SequencePoolMode::First, "first"})
#undef MTREC_ENUM_NAMES

template <class E>
inline const char* enum_name(E e) {
  for (const auto& p : EnumNames<E>::list())
    if (p.first == e) return p.second;
  return "?";
}
template <class E>
inline E enum_from(const json::Value& v, const char* what) {
  const std::string& s = v.as_string();
  std::string known;
  for (const auto& p : EnumNames<E>::list()) {
    if (s == p.second) return p.first;
    known += (known.empty() ? "" : ", ") + std::string(p.second);
  }
  fail("config_from_json", what, " expected one of {", known, "} but got '", s, "'");
}

inline json::Value widths_json(const std::vector<index_t>& v) {
  json::Value a = json::Value::array();
  for (index_t x : v) a.push_back(x);
  return a;
}
inline std::vector<index_t> widths_from(const json::Value& v) {
  std::vector<index_t> out;
  for (const auto& x : v.as_array()) out.push_back(index_t(x.as_int()));
  return out;
}

}  // namespace detail

// The configuration as JSON (stored in checkpoint metadata).
inline json::Value config_to_json(const ModelConfig& c) {
  using json::Value;
  using detail::enum_name;
  Value j = Value::object();
  j.set("architecture", enum_name(c.architecture));
  Value f = Value::object();
  Value ids = Value::array(), bags = Value::array(), seqs = Value::array(), dense = Value::array();
  for (const auto& x : c.features.ids) {
    Value o = Value::object();
    o.set("name", x.name);
    o.set("vocab", x.vocab);
    o.set("hash_buckets", x.hash_buckets);
    o.set("dim", x.dim);
    o.set("table", x.table);
    ids.push_back(o);
  }
  for (const auto& x : c.features.bags) {
    Value o = Value::object();
    o.set("name", x.name);
    o.set("vocab", x.vocab);
    o.set("hash_buckets", x.hash_buckets);
    o.set("dim", x.dim);
    o.set("table", x.table);
    o.set("pooling", enum_name(x.pooling));
    o.set("weighted", x.weighted);
    bags.push_back(o);
  }
  for (const auto& x : c.features.sequences) {
    Value o = Value::object();
    o.set("name", x.name);
    o.set("vocab", x.vocab);
    o.set("hash_buckets", x.hash_buckets);
    o.set("table", x.table);
    o.set("max_len", x.max_len);
    o.set("layers", x.layers);
    o.set("pooling", enum_name(x.pooling));
    Value e = Value::object();
    e.set("d_model", x.encoder.d_model);
    e.set("heads", x.encoder.heads);
    e.set("ffn", x.encoder.ffn);
    e.set("dropout", x.encoder.dropout);
    e.set("activation", enum_name(x.encoder.activation));
    e.set("layer_norm_eps", x.encoder.layer_norm_eps);
    o.set("encoder", e);
    seqs.push_back(o);
  }
  for (const auto& x : c.features.dense) {
    Value o = Value::object();
    o.set("name", x.name);
    o.set("dim", x.dim);
    dense.push_back(o);
  }
  f.set("ids", ids);
  f.set("bags", bags);
  f.set("sequences", seqs);
  f.set("dense", dense);
  j.set("features", f);
  Value tasks = Value::array();
  for (const auto& t : c.tasks) {
    Value o = Value::object();
    o.set("name", t.name);
    o.set("type", enum_name(t.type));
    o.set("num_classes", t.num_classes);
    o.set("tower", detail::widths_json(t.tower));
    o.set("weight", t.weight);
    o.set("loss", enum_name(t.loss));
    o.set("huber_delta", t.huber_delta);
    if (t.type == TaskType::Retrieval) {
      o.set("target_table", t.target_table);
      o.set("target_vocab", t.target_vocab);
      o.set("target_dim", t.target_dim);
      o.set("temperature", t.temperature);
    }
    tasks.push_back(o);
  }
  j.set("tasks", tasks);
  j.set("bottom", detail::widths_json(c.bottom));
  j.set("experts", c.experts);
  j.set("expert", detail::widths_json(c.expert));
  j.set("ple_levels", c.ple_levels);
  j.set("ple_shared_experts", c.ple_shared_experts);
  j.set("ple_task_experts", c.ple_task_experts);
  j.set("activation", enum_name(c.activation));
  j.set("dropout", c.dropout);
  j.set("embedding_init_std", c.embedding_init_std);
  j.set("seed", std::to_string(c.seed));  // a string: 64-bit seeds do not fit JSON numbers
  return j;
}

// The inverse of config_to_json; every field is required.
inline ModelConfig config_from_json(const json::Value& j) {
  using detail::enum_from;
  ModelConfig c;
  c.architecture = enum_from<Architecture>(j.at("architecture"), "architecture");
  const json::Value& f = j.at("features");
  for (const auto& o : f.at("ids").as_array())
    c.features.ids.push_back({o.at("name").as_string(), index_t(o.at("vocab").as_int()),
                              index_t(o.at("hash_buckets").as_int()), index_t(o.at("dim").as_int()),
                              o.at("table").as_string()});
  for (const auto& o : f.at("bags").as_array())
    c.features.bags.push_back({o.at("name").as_string(), index_t(o.at("vocab").as_int()),
                               index_t(o.at("hash_buckets").as_int()), index_t(o.at("dim").as_int()),
                               o.at("table").as_string(), enum_from<BagPooling>(o.at("pooling"), "bag pooling"),
                               o.at("weighted").as_bool()});
  for (const auto& o : f.at("sequences").as_array()) {
    SequenceFeature s;
    s.name = o.at("name").as_string();
    s.vocab = index_t(o.at("vocab").as_int());
    s.hash_buckets = index_t(o.at("hash_buckets").as_int());
    s.table = o.at("table").as_string();
    s.max_len = index_t(o.at("max_len").as_int());
    s.layers = int(o.at("layers").as_int());
    s.pooling = enum_from<SequencePoolMode>(o.at("pooling"), "sequence pooling");
    const json::Value& e = o.at("encoder");
    s.encoder.d_model = index_t(e.at("d_model").as_int());
    s.encoder.heads = index_t(e.at("heads").as_int());
    s.encoder.ffn = index_t(e.at("ffn").as_int());
    s.encoder.dropout = e.at("dropout").as_double();
    s.encoder.activation = enum_from<Activation>(e.at("activation"), "encoder activation");
    s.encoder.layer_norm_eps = e.at("layer_norm_eps").as_double();
    c.features.sequences.push_back(s);
  }
  for (const auto& o : f.at("dense").as_array())
    c.features.dense.push_back({o.at("name").as_string(), index_t(o.at("dim").as_int())});
  for (const auto& o : j.at("tasks").as_array()) {
    TaskSpec t;
    t.name = o.at("name").as_string();
    t.type = enum_from<TaskType>(o.at("type"), "task type");
    t.num_classes = index_t(o.at("num_classes").as_int());
    t.tower = detail::widths_from(o.at("tower"));
    t.weight = o.at("weight").as_double();
    t.loss = enum_from<TaskLoss>(o.at("loss"), "task loss");
    t.huber_delta = o.at("huber_delta").as_double();
    if (t.type == TaskType::Retrieval) {
      t.target_table = o.at("target_table").as_string();
      t.target_vocab = index_t(o.at("target_vocab").as_int());
      t.target_dim = index_t(o.at("target_dim").as_int());
      t.temperature = o.at("temperature").as_double();
    }
    c.tasks.push_back(t);
  }
  c.bottom = detail::widths_from(j.at("bottom"));
  c.experts = index_t(j.at("experts").as_int());
  c.expert = detail::widths_from(j.at("expert"));
  c.ple_levels = int(j.at("ple_levels").as_int());
  c.ple_shared_experts = index_t(j.at("ple_shared_experts").as_int());
  c.ple_task_experts = index_t(j.at("ple_task_experts").as_int());
  c.activation = enum_from<Activation>(j.at("activation"), "activation");
  c.dropout = j.at("dropout").as_double();
  c.embedding_init_std = j.at("embedding_init_std").as_double();
  const std::string& seed = j.at("seed").as_string();
  check(!seed.empty() && seed.find_first_not_of("0123456789") == std::string::npos, "config_from_json",
        "seed expected a decimal string but got '", seed, "'");
  c.seed = std::stoull(seed);
  return c;
}

namespace detail {
template <class T>
inline void read_as(const SafetensorsFile& f, const std::string& name, T* out, std::size_t count) {
  const auto& info = f.info(name);
  check(info.numel() == count, "load_checkpoint", "tensor '", name, "' expected ", count, " elements but has ",
        info.numel());
  if (info.dtype == safetensors::dtype_of<T>()) return f.read<T>(name, out, count);
  if (info.dtype == safetensors::Dtype::F32) {
    const auto v = f.read_vector<float>(name);
    for (std::size_t i = 0; i < count; ++i) out[i] = T(v[i]);
  } else if (info.dtype == safetensors::Dtype::F64) {
    const auto v = f.read_vector<double>(name);
    for (std::size_t i = 0; i < count; ++i) out[i] = T(v[i]);
  } else {
    fail("load_checkpoint", "tensor '", name, "' expected dtype F32 or F64 but has ", safetensors::dtype_name(info.dtype));
  }
}
inline json::Value doubles_json(const std::vector<double>& v) {
  json::Value a = json::Value::array();
  for (double x : v) a.push_back(x);
  return a;
}
inline std::vector<double> doubles_from(const json::Value& v) {
  std::vector<double> out;
  for (const auto& x : v.as_array()) out.push_back(x.as_double());
  return out;
}
}  // namespace detail

// Writes the model (and, if given, the trainer's optimizer and state) to
// `path` atomically. Call between steps (gradients are not saved).
// `extra_metadata` adds application entries (e.g. mtrec-train's
// preprocessing); it may not replace the entries above.
template <class T>
inline void save_checkpoint(const std::string& path, const MultiTaskModel<T>& model, Trainer<T>* trainer = nullptr,
                            const std::map<std::string, std::string>& extra_metadata = {}) {
  const ParameterStore<T>& st = model.parameters();
  std::vector<TensorRecord> records;
  for (ParamId id = 0; id < st.count(); ++id) {
    const auto& info = st.info(id);
    std::vector<std::int64_t> shape(info.shape.dims.begin(), info.shape.dims.begin() + info.shape.rank);
    records.push_back(TensorRecord::of(info.name, st.value(id), shape));
  }
  std::map<std::string, std::string> meta;
  meta["format"] = "mtrec.checkpoint";
  meta["version"] = std::to_string(MTREC_VERSION_MAJOR) + "." + std::to_string(MTREC_VERSION_MINOR) + "." +
                    std::to_string(MTREC_VERSION_PATCH);
  meta["dtype"] = sizeof(T) == 4 ? "F32" : "F64";
  meta["config"] = config_to_json(model.config()).dump();
  std::vector<std::pair<std::string, ConstView<T>>> opt_state;
  if (trainer) {
    opt_state = trainer->optimizer().state();
    for (const auto& s : opt_state) records.push_back(TensorRecord::of(s.first, s.second.data, {s.second.numel()}));
    const TrainerState& ts = trainer->state();
    json::Value t = json::Value::object();
    t.set("epoch", ts.epoch);
    t.set("step", ts.step);
    t.set("updates", ts.updates);
    t.set("optimizer_step", trainer->optimizer().step_count());
    t.set("log_var", detail::doubles_json(ts.log_var));
    t.set("log_var_m", detail::doubles_json(ts.log_var_m));
    t.set("log_var_v", detail::doubles_json(ts.log_var_v));
    t.set("gradnorm_w", detail::doubles_json(ts.gradnorm_w));
    t.set("initial_loss", detail::doubles_json(ts.initial_loss));
    meta["trainer"] = t.dump();
  }
  for (const auto& kv : extra_metadata)
    check(meta.emplace(kv.first, kv.second).second, "save_checkpoint", "extra metadata key '", kv.first,
          "' is reserved by the checkpoint format");
  save_safetensors(path, records, meta);
}

// Copies every parameter of `model` from an open checkpoint; names and
// element counts must match.
template <class T>
inline void load_parameters(MultiTaskModel<T>& model, const SafetensorsFile& f) {
  ParameterStore<T>& st = model.parameters();
  for (ParamId id = 0; id < st.count(); ++id) {
    const auto& info = st.info(id);
    check(f.has(info.name), "load_checkpoint", "the file has no tensor '", info.name, "' that the model needs");
    std::vector<std::int64_t> want(info.shape.dims.begin(), info.shape.dims.begin() + info.shape.rank);
    const auto& have = f.info(info.name).shape;
    check(have == want, "load_checkpoint", "tensor '", info.name, "' expected shape ", info.shape, " but the file has ",
          safetensors::detail::shape_str(have));
    detail::read_as(f, info.name, st.value(id), std::size_t(info.size));
  }
}

// Rebuilds a model from a checkpoint: its configuration from the metadata,
// then its parameters.
template <class T>
inline std::unique_ptr<MultiTaskModel<T>> load_checkpoint(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::load(path);
  auto it = f.metadata().find("format");
  check(it != f.metadata().end() && it->second == "mtrec.checkpoint", "load_checkpoint", "'", path,
        "' expected metadata format = mtrec.checkpoint but got ",
        it == f.metadata().end() ? std::string("none") : "'" + it->second + "'");
  auto cfg = f.metadata().find("config");
  check(cfg != f.metadata().end(), "load_checkpoint", "'", path, "' has no 'config' metadata");
  auto model = std::make_unique<MultiTaskModel<T>>(config_from_json(json::parse(cfg->second)));
  load_parameters(*model, f);
  return model;
}

// Restores the optimizer and trainer state saved with save_checkpoint(...,
// trainer) into a trainer built on a model loaded from the same file.
template <class T>
inline void load_training_state(const std::string& path, Trainer<T>& trainer) {
  const SafetensorsFile f = SafetensorsFile::load(path);
  auto it = f.metadata().find("trainer");
  check(it != f.metadata().end(), "load_training_state", "'", path, "' was saved without training state");
  const json::Value t = json::parse(it->second);
  std::vector<Tensor<T>> buffers;
  std::vector<std::pair<std::string, ConstView<T>>> views;
  for (const auto& s : trainer.optimizer().state()) {
    check(f.has(s.first), "load_training_state", "'", path, "' has no optimizer tensor '", s.first, "'");
    buffers.emplace_back(Shape{s.second.numel()});
    detail::read_as(f, s.first, buffers.back().data(), std::size_t(s.second.numel()));
  }
  std::size_t i = 0;
  for (const auto& s : trainer.optimizer().state()) views.push_back({s.first, buffers[i++].view()});
  trainer.optimizer().load_state(index_t(t.at("optimizer_step").as_int()), views);
  TrainerState& ts = trainer.state();
  ts.epoch = int(t.at("epoch").as_int());
  ts.step = index_t(t.at("step").as_int());
  ts.updates = index_t(t.at("updates").as_int());
  ts.log_var = detail::doubles_from(t.at("log_var"));
  ts.log_var_m = detail::doubles_from(t.at("log_var_m"));
  ts.log_var_v = detail::doubles_from(t.at("log_var_v"));
  ts.gradnorm_w = detail::doubles_from(t.at("gradnorm_w"));
  ts.initial_loss = detail::doubles_from(t.at("initial_loss"));
  const std::size_t K = trainer.state().gradnorm_w.size();
  check(ts.log_var.size() == K || K == 0, "load_training_state", "expected ", K, " task weights but got ",
        ts.log_var.size());
}

}  // namespace mtrec
