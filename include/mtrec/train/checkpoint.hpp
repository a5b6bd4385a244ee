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

#include <cmath>
#include <cstdint>
#include <limits>
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
MTREC_ENUM_NAMES(Precision, {Precision::FP32, "fp32"}, {Precision::BF16, "bf16"})
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
  fail("config_from_json", "key '", what, "' expected one of {", known, "} but got '",
       s.size() > 40 ? s.substr(0, 37) + "..." : s, "'");
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
    o.set("item_side", x.item_side);
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
    o.set("item_side", x.item_side);
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
    o.set("item_side", x.item_side);
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
    o.set("item_side", x.item_side);
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
  j.set("precision", enum_name(c.precision));
  j.set("seed", std::to_string(c.seed));  // a string: 64-bit seeds do not fit JSON numbers
  return j;
}

namespace detail {

// Typed, range-checked access to the config JSON. Every error names the key
// by its path (features.sequences[0].layers), the expected range and the
// value found, so a damaged or hostile checkpoint says what is wrong.
struct ConfigReader {
  static constexpr const char* op = "config_from_json";
  static std::string shown(const json::Value& v) {
    std::string d = v.dump();
    if (d.size() > 64) d = d.substr(0, 61) + "...";
    return d;
  }
  static const json::Value& at(const json::Value& o, const char* key, const std::string& where) {
    check(o.is_object(), op, where.empty() ? std::string("the config") : "'" + where + "'",
          " expected an object but got ", shown(o));
    const json::Value* v = o.find(key);
    check(v != nullptr, op, "missing key '", where.empty() ? std::string(key) : where + "." + key, "'");
    return *v;
  }
  static std::string key(const std::string& where, const char* k) { return where.empty() ? std::string(k) : where + "." + k; }
  static std::string str(const json::Value& o, const char* k, const std::string& where) {
    const json::Value& v = at(o, k, where);
    check(v.is_string(), op, "key '", key(where, k), "' expected a string but got ", shown(v));
    return v.as_string();
  }
  static bool boolean(const json::Value& o, const char* k, const std::string& where) {
    const json::Value& v = at(o, k, where);
    check(v.is_bool(), op, "key '", key(where, k), "' expected true or false but got ", shown(v));
    return v.as_bool();
  }
  static std::int64_t integer(const json::Value& o, const char* k, const std::string& where, std::int64_t lo,
                              std::int64_t hi) {
    const json::Value& v = at(o, k, where);
    check(v.is_int() && v.as_int() >= lo && v.as_int() <= hi, op, "key '", key(where, k), "' expected an integer in [",
          lo, ", ", hi, "] but got ", shown(v));
    return v.as_int();
  }
  static double number(const json::Value& o, const char* k, const std::string& where) {
    const json::Value& v = at(o, k, where);
    check(v.is_number() && std::isfinite(v.as_double()), op, "key '", key(where, k), "' expected a finite number but got ",
          shown(v));
    return v.as_double();
  }
  static const json::Array& array(const json::Value& o, const char* k, const std::string& where, std::size_t max) {
    const json::Value& v = at(o, k, where);
    check(v.is_array() && v.size() <= max, op, "key '", key(where, k), "' expected an array of at most ", max,
          " elements but got ", v.is_array() ? std::to_string(v.size()) + " elements" : shown(v));
    return v.as_array();
  }
  static std::vector<index_t> widths(const json::Value& o, const char* k, const std::string& where) {
    std::vector<index_t> out;
    const auto& a = array(o, k, where, std::size_t(ConfigLimits::max_depth));
    for (std::size_t i = 0; i < a.size(); ++i) {
      const json::Value& x = a[i];
      check(x.is_int() && x.as_int() >= 1 && x.as_int() <= ConfigLimits::max_width, op, "key '", key(where, k), "[", i,
            "]' expected an integer in [1, ", ConfigLimits::max_width, "] but got ", shown(x));
      out.push_back(index_t(x.as_int()));
    }
    return out;
  }
  template <class E>
  static E enumeration(const json::Value& o, const char* k, const std::string& where) {
    const json::Value& v = at(o, k, where);
    check(v.is_string(), op, "key '", key(where, k), "' expected a string but got ", shown(v));
    return enum_from<E>(v, key(where, k).c_str());
  }
  static std::string item(const char* list, std::size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }
};

// A decimal string holding a 64-bit unsigned integer, overflow-checked.
inline std::uint64_t parse_u64(const std::string& s, const char* op, const std::string& what) {
  check(!s.empty() && s.size() <= 20 && s.find_first_not_of("0123456789") == std::string::npos, op, what,
        " expected a decimal string of at most 20 digits but got '", s.size() > 40 ? s.substr(0, 37) + "..." : s, "'");
  std::uint64_t v = 0;
  for (char c : s)
    check(!__builtin_mul_overflow(v, std::uint64_t(10), &v) && !__builtin_add_overflow(v, std::uint64_t(c - '0'), &v),
          op, what, " expected a value of at most 18446744073709551615 but got '", s, "'");
  return v;
}

}  // namespace detail

// The inverse of config_to_json; every field is required, and every number is
// range-checked before it is narrowed (see ConfigLimits).
inline ModelConfig config_from_json(const json::Value& j) {
  using R = detail::ConfigReader;
  // item_side: absent in checkpoints written before it existed (user side).
  auto item_side = [](const json::Value& o, const std::string& w) {
    return o.is_object() && o.contains("item_side") ? R::boolean(o, "item_side", w) : false;
  };
  using L = ConfigLimits;
  const std::int64_t rows = L::max_rows, dims = L::max_dim;
  ModelConfig c;
  c.architecture = R::enumeration<Architecture>(j, "architecture", "");
  const json::Value& f = R::at(j, "features", "");
  const std::size_t max_fields = std::size_t(L::max_features);
  const auto& ids = R::array(f, "ids", "features", max_fields);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::string w = R::item("features.ids", i);
    const json::Value& o = ids[i];
    c.features.ids.push_back({R::str(o, "name", w), R::integer(o, "vocab", w, 0, rows),
                              R::integer(o, "hash_buckets", w, 0, rows), R::integer(o, "dim", w, 1, dims),
                              R::str(o, "table", w), item_side(o, w)});
  }
  const auto& bags = R::array(f, "bags", "features", max_fields);
  for (std::size_t i = 0; i < bags.size(); ++i) {
    const std::string w = R::item("features.bags", i);
    const json::Value& o = bags[i];
    c.features.bags.push_back({R::str(o, "name", w), R::integer(o, "vocab", w, 0, rows),
                               R::integer(o, "hash_buckets", w, 0, rows), R::integer(o, "dim", w, 1, dims),
                               R::str(o, "table", w), R::enumeration<BagPooling>(o, "pooling", w),
                               R::boolean(o, "weighted", w), item_side(o, w)});
  }
  const auto& seqs = R::array(f, "sequences", "features", max_fields);
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const std::string w = R::item("features.sequences", i);
    const json::Value& o = seqs[i];
    SequenceFeature s;
    s.name = R::str(o, "name", w);
    s.vocab = R::integer(o, "vocab", w, 0, rows);
    s.hash_buckets = R::integer(o, "hash_buckets", w, 0, rows);
    s.table = R::str(o, "table", w);
    s.max_len = R::integer(o, "max_len", w, 1, L::max_len);
    s.layers = int(R::integer(o, "layers", w, 1, L::max_depth));
    s.pooling = R::enumeration<SequencePoolMode>(o, "pooling", w);
    s.item_side = item_side(o, w);
    const std::string we = w + ".encoder";
    const json::Value& e = R::at(o, "encoder", w);
    s.encoder.d_model = R::integer(e, "d_model", we, 1, dims);
    s.encoder.heads = R::integer(e, "heads", we, 1, L::max_heads);
    s.encoder.ffn = R::integer(e, "ffn", we, 1, L::max_width);
    s.encoder.dropout = R::number(e, "dropout", we);
    s.encoder.activation = R::enumeration<Activation>(e, "activation", we);
    s.encoder.layer_norm_eps = R::number(e, "layer_norm_eps", we);
    c.features.sequences.push_back(s);
  }
  const auto& dense = R::array(f, "dense", "features", max_fields);
  for (std::size_t i = 0; i < dense.size(); ++i) {
    const std::string w = R::item("features.dense", i);
    c.features.dense.push_back(
        {R::str(dense[i], "name", w), R::integer(dense[i], "dim", w, 1, dims), item_side(dense[i], w)});
  }
  const auto& tasks = R::array(j, "tasks", "", std::size_t(L::max_tasks));
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const std::string w = R::item("tasks", i);
    const json::Value& o = tasks[i];
    TaskSpec t;
    t.name = R::str(o, "name", w);
    t.type = R::enumeration<TaskType>(o, "type", w);
    t.num_classes = R::integer(o, "num_classes", w, 0, L::max_classes);
    t.tower = R::widths(o, "tower", w);
    t.weight = R::number(o, "weight", w);
    t.loss = R::enumeration<TaskLoss>(o, "loss", w);
    t.huber_delta = R::number(o, "huber_delta", w);
    if (t.type == TaskType::Retrieval) {
      t.target_table = R::str(o, "target_table", w);
      t.target_vocab = R::integer(o, "target_vocab", w, 0, rows);
      t.target_dim = R::integer(o, "target_dim", w, 0, dims);
      t.temperature = R::number(o, "temperature", w);
    }
    c.tasks.push_back(t);
  }
  c.bottom = R::widths(j, "bottom", "");
  c.experts = R::integer(j, "experts", "", 0, L::max_experts);
  c.expert = R::widths(j, "expert", "");
  c.ple_levels = int(R::integer(j, "ple_levels", "", 0, L::max_levels));
  c.ple_shared_experts = R::integer(j, "ple_shared_experts", "", 0, L::max_experts);
  c.ple_task_experts = R::integer(j, "ple_task_experts", "", 0, L::max_experts);
  c.activation = R::enumeration<Activation>(j, "activation", "");
  c.dropout = R::number(j, "dropout", "");
  c.embedding_init_std = R::number(j, "embedding_init_std", "");
  // precision: absent in checkpoints written before it existed (fp32).
  if (j.is_object() && j.contains("precision")) c.precision = R::enumeration<Precision>(j, "precision", "");
  c.seed = detail::parse_u64(R::str(j, "seed", ""), "config_from_json", "key 'seed'");
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

// Options of save_checkpoint and load_checkpoint.
struct CheckpointOptions {
  // Non-finite weights (NaN, +-Inf) mean a diverged run: save_checkpoint
  // refuses to write them and load_checkpoint refuses to return them, naming
  // the tensor, unless this is set (to inspect a diverged model, say).
  bool allow_nonfinite = false;
};

namespace detail {
// The first non-finite element of `n` values, or -1.
template <class T>
inline index_t first_nonfinite(const T* v, index_t n, index_t* count) {
  index_t first = -1, c = 0;
  for (index_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) {
      if (first < 0) first = i;
      ++c;
    }
  *count += c;
  return first;
}
// Throws when any parameter of `st` is non-finite: names the first tensor,
// the element and the count of non-finite weights in the whole model.
// The store's values as host memory: in place when the host can read the
// device's memory, else one copy into `buf`.
template <class T, class Device>
inline const T* host_values(const ParameterStore<T, Device>& st, std::vector<T>& buf) {
  if constexpr (host_readable_v<Device>) {
    (void)buf;
    return st.values();
  } else {
    buf.resize(std::size_t(st.size()));
    st.read_values(buf.data(), 0, st.size());
    return buf.data();
  }
}
template <class T, class Device>
inline void check_finite_parameters(const ParameterStore<T, Device>& st, const char* op, const std::string& where,
                                    const char* hint, const T* values = nullptr) {
  std::vector<T> buf;
  if (!values) values = host_values(st, buf);
  index_t count = 0, first = -1;
  ParamId first_id = -1;
  for (ParamId id = 0; id < st.count(); ++id) {
    const index_t i = first_nonfinite(values + st.info(id).offset, st.info(id).size, &count);
    if (i >= 0 && first_id < 0) {
      first_id = id;
      first = i;
    }
  }
  if (count == 0) return;
  fail(op, where, ": ", count, " of the model's weights are not finite (the first: tensor '", st.info(first_id).name,
       "' element ", first, " = ", values[st.info(first_id).offset + first], "); ", hint);
}
}  // namespace detail

// The metadata entry that holds a model's feature spec (its preprocessing:
// vocabularies, OOV row, hashing, dense standardisation, tokenizer), and the
// key earlier mtrec-train versions used, still read.
constexpr const char* kPreprocessingMetadataKey = "preprocessing";
constexpr const char* kLegacyPreprocessingMetadataKey = "mtrec_train.preprocessing";

// Writes the model (and, if given, the trainer's optimizer and state) to
// `path` atomically. Call between steps (gradients are not saved).
// `extra_metadata` adds application entries (e.g. mtrec-train's
// preprocessing); it may not replace the entries above. Refuses a model with
// non-finite weights or optimizer state unless options.allow_nonfinite.
template <class T, class Device>
inline void save_checkpoint(const std::string& path, const MultiTaskModel<T, Device>& model,
                            std::enable_if_t<true, Trainer<T, Device>>* trainer = nullptr,  // not deduced: nullptr works
                            const std::map<std::string, std::string>& extra_metadata = {},
                            const CheckpointOptions& options = {}) {
  const char* op = "save_checkpoint";
  const ParameterStore<T, Device>& st = model.parameters();
  std::vector<T> host_buf;  // host copies of device memory (unused when the host reads it in place)
  const T* values = detail::host_values(st, host_buf);
  if (!options.allow_nonfinite)
    detail::check_finite_parameters(st, op, "'" + path + "'",
                                    "refusing to save a diverged model (set CheckpointOptions::allow_nonfinite to "
                                    "save it anyway)",
                                    values);
  std::vector<TensorRecord> records;
  for (ParamId id = 0; id < st.count(); ++id) {
    const auto& info = st.info(id);
    std::vector<std::int64_t> shape(info.shape.dims.begin(), info.shape.dims.begin() + info.shape.rank);
    records.push_back(TensorRecord::of(info.name, values + info.offset, shape));
  }
  std::map<std::string, std::string> meta;
  meta["format"] = "mtrec.checkpoint";
  meta["version"] = std::to_string(MTREC_VERSION_MAJOR) + "." + std::to_string(MTREC_VERSION_MINOR) + "." +
                    std::to_string(MTREC_VERSION_PATCH);
  meta["dtype"] = sizeof(T) == 4 ? "F32" : "F64";
  meta["config"] = config_to_json(model.config()).dump();
  // The feature spec (raw values -> rows), when the model has one.
  if (model.preprocessing()) meta[kPreprocessingMetadataKey] = model.preprocessing()->to_json().dump();
  std::vector<std::pair<std::string, ConstView<T>>> opt_state;
  std::vector<Tensor<T>> opt_host;  // host copies of the optimizer state on a non-host device
  if (trainer) {
    for (const auto& s : trainer->optimizer().state()) {
      if constexpr (host_readable_v<Device>) {
        opt_state.emplace_back(s.first, ConstView<T>(s.second.data, s.second.shape));
      } else {
        opt_host.emplace_back(s.second.shape);
        to_host(st.device(), opt_host.back().data(), s.second);
        opt_state.emplace_back(s.first, opt_host.back().cview());
      }
    }
    for (const auto& s : opt_state) {
      index_t count = 0;
      const index_t i = detail::first_nonfinite(s.second.data, s.second.numel(), &count);
      check(options.allow_nonfinite || count == 0, op, "'", path, "': ", count, " elements of optimizer state '",
            s.first, "' are not finite (the first: element ", i,
            "); refusing to save it (set CheckpointOptions::allow_nonfinite to save it anyway)");
      records.push_back(TensorRecord::of(s.first, s.second.data, {s.second.numel()}));
    }
    const TrainerState& ts = trainer->state();
    json::Value t = json::Value::object();
    t.set("epoch", ts.epoch);
    t.set("step", ts.step);
    t.set("updates", ts.updates);
    t.set("run_start_epoch", ts.run_start_epoch);
    t.set("run_start_update", ts.run_start_update);
    t.set("run_finished", ts.run_finished);
    t.set("optimizer_step", trainer->optimizer().step_count());
    t.set("log_var", detail::doubles_json(ts.log_var));
    t.set("log_var_m", detail::doubles_json(ts.log_var_m));
    t.set("log_var_v", detail::doubles_json(ts.log_var_v));
    t.set("gradnorm_w", detail::doubles_json(ts.gradnorm_w));
    t.set("initial_loss", detail::doubles_json(ts.initial_loss));
    meta["trainer"] = t.dump();
  }
  for (const auto& kv : extra_metadata)
    check(meta.emplace(kv.first, kv.second).second, op, "extra metadata key '", kv.first,
          "' is reserved by the checkpoint format");
  save_safetensors(path, records, meta);
}

// Copies every parameter of `model` from an open checkpoint; names and
// element counts must match.
template <class T, class Device>
inline void load_parameters(MultiTaskModel<T, Device>& model, const SafetensorsFile& f) {
  ParameterStore<T, Device>& st = model.parameters();
  std::vector<T> host;
  for (ParamId id = 0; id < st.count(); ++id) {
    const auto& info = st.info(id);
    check(f.has(info.name), "load_checkpoint", "the file has no tensor '", info.name, "' that the model needs");
    std::vector<std::int64_t> want(info.shape.dims.begin(), info.shape.dims.begin() + info.shape.rank);
    const auto& have = f.info(info.name).shape;
    check(have == want, "load_checkpoint", "tensor '", info.name, "' expected shape ", info.shape, " but the file has ",
          safetensors::detail::shape_str(have));
    if constexpr (host_readable_v<Device>) {
      detail::read_as(f, info.name, st.value(id), std::size_t(info.size));
    } else {
      host.resize(std::size_t(info.size));
      detail::read_as(f, info.name, host.data(), host.size());
      st.write_values(info.offset, host.data(), info.size);
    }
  }
  st.mark_values_changed();
}

// Rebuilds a model from an open checkpoint (`source` names it in errors).
// Untrusted files are safe to load: the configuration is range-checked
// (ConfigLimits), then the parameters it would create are listed without
// allocating anything and compared with the file's tensor table (names,
// shapes, counts), so the memory a file can make this allocate is bounded
// by the tensors it actually holds. Every failure is an mtrec::Error that
// names the file, the key or tensor, and the value.
template <class T, class Device = Cpu>
inline std::unique_ptr<MultiTaskModel<T, Device>> load_checkpoint(const SafetensorsFile& f, const std::string& source,
                                                          const CheckpointOptions& options = {}) {
  const char* op = "load_checkpoint";
  const std::string where = "'" + source + "'";
  auto it = f.metadata().find("format");
  check(it != f.metadata().end() && it->second == "mtrec.checkpoint", op, where,
        " expected metadata format = mtrec.checkpoint but got ",
        it == f.metadata().end() ? std::string("none") : "'" + it->second.substr(0, 64) + "'");
  auto cfg = f.metadata().find("config");
  check(cfg != f.metadata().end(), op, where, " has no 'config' metadata");
  ModelConfig config;
  try {
    config = config_from_json(json::parse(cfg->second));
    validate_config(config);
  } catch (const Error& e) {
    fail(op, where, ": metadata 'config': ", e.what());
  }
  // The file's parameter tensors (everything but the optimizer state) bound the plan.
  index_t tensors = 0, elements = 0;
  for (const auto& t : f.tensors()) {
    if (t.name.rfind("optimizer.", 0) == 0) continue;
    ++tensors;
    const std::uint64_t n = t.numel();  // <= the file's size: the reader checked the data offsets
    check(n <= std::uint64_t(std::numeric_limits<index_t>::max() - elements), op, where, " holds too many elements");
    elements += index_t(n);
  }
  std::vector<ParamInfo> plan;
  try {
    plan = MultiTaskModel<T, Device>::parameter_plan(config, tensors, elements,
                                             where + " (" + std::to_string(tensors) + " parameter tensors, " +
                                                 std::to_string(elements) + " elements)");
  } catch (const Error& e) {
    fail(op, where, ": metadata 'config' does not match the file's tensors: ", e.what());
  }
  for (const auto& p : plan) {
    check(f.has(p.name), op, where, " has no tensor '", p.name, "' that its config needs");
    std::vector<std::int64_t> want(p.shape.dims.begin(), p.shape.dims.begin() + p.shape.rank);
    const auto& have = f.info(p.name).shape;
    check(have == want, op, where, ": tensor '", p.name, "' expected shape ", p.shape, " (from the config) but the file has ",
          safetensors::detail::shape_str(have));
    const auto dt = f.info(p.name).dtype;
    check(dt == safetensors::Dtype::F32 || dt == safetensors::Dtype::F64, op, where, ": tensor '", p.name,
          "' expected dtype F32 or F64 but has ", safetensors::dtype_name(dt));
  }
  check(index_t(plan.size()) == tensors, op, where, " holds ", tensors, " parameter tensors but its config creates ",
        plan.size());
  auto model = std::make_unique<MultiTaskModel<T, Device>>(config);
  try {
    load_parameters(*model, f);
  } catch (const Error& e) {
    fail(op, where, ": ", e.what());
  }
  if (!options.allow_nonfinite)
    detail::check_finite_parameters(model->parameters(), op, where,
                                    "the checkpoint holds a diverged model (set CheckpointOptions::allow_nonfinite "
                                    "to load it anyway)");
  // The feature spec: "preprocessing", or where earlier mtrec-train versions wrote it.
  // A checkpoint with neither loads without one (encode() then says why).
  for (const char* key : {kPreprocessingMetadataKey, kLegacyPreprocessingMetadataKey}) {
    auto pre = f.metadata().find(key);
    if (pre == f.metadata().end()) continue;
    try {
      model->set_preprocessing(data::TabularEncoder::from_json(json::parse(pre->second)));
    } catch (const Error& e) {
      fail(op, where, ": metadata '", key, "': ", e.what());
    }
    break;
  }
  return model;
}

// Rebuilds a model from a checkpoint file: its configuration from the
// metadata, then its parameters (see the overload above).
template <class T, class Device = Cpu>
inline std::unique_ptr<MultiTaskModel<T, Device>> load_checkpoint(const std::string& path,
                                                                  const CheckpointOptions& options = {}) {
  const SafetensorsFile f = SafetensorsFile::load(path);
  return load_checkpoint<T, Device>(f, path, options);
}

// Restores the optimizer and trainer state saved with save_checkpoint(...,
// trainer) into a trainer built on a model loaded from the same file. Checks
// everything before changing anything: on an error the trainer is untouched.
template <class T, class Device>
inline void load_training_state(const std::string& path, Trainer<T, Device>& trainer) {
  const char* op = "load_training_state";
  const std::string where = "'" + path + "'";
  const SafetensorsFile f = SafetensorsFile::load(path);
  auto it = f.metadata().find("trainer");
  check(it != f.metadata().end(), op, where, " was saved without training state");
  const std::size_t K = trainer.num_tasks();
  TrainerState ts;
  index_t optimizer_step = 0;
  try {
    using R = detail::ConfigReader;
    const json::Value t = json::parse(it->second);
    const std::int64_t big = std::int64_t(1) << 62;
    ts.epoch = int(R::integer(t, "epoch", "trainer", 0, std::numeric_limits<int>::max()));
    ts.step = R::integer(t, "step", "trainer", 0, big);
    ts.updates = R::integer(t, "updates", "trainer", 0, big);
    // Absent in checkpoints of mtrec <= 0.1.0 (one fit per trainer): the run started at 0.
    if (t.contains("run_start_epoch")) {
      ts.run_start_epoch = int(R::integer(t, "run_start_epoch", "trainer", 0, ts.epoch));
      ts.run_start_update = R::integer(t, "run_start_update", "trainer", 0, ts.updates);
      ts.run_finished = R::boolean(t, "run_finished", "trainer");
    }
    optimizer_step = R::integer(t, "optimizer_step", "trainer", 0, big);
    auto doubles = [&](const char* key, std::vector<double>& out, bool may_be_empty) {
      const auto& a = R::array(t, key, "trainer", K);
      check(a.size() == K || (may_be_empty && a.empty()), op, "key 'trainer.", key, "' expected ", K,
            " values (one per task of this trainer's model) but got ", a.size());
      out.clear();
      for (std::size_t i = 0; i < a.size(); ++i) {
        check(a[i].is_number() && std::isfinite(a[i].as_double()), op, "key 'trainer.", key, "[", i,
              "]' expected a finite number but got ", R::shown(a[i]));
        out.push_back(a[i].as_double());
      }
    };
    doubles("log_var", ts.log_var, false);
    doubles("log_var_m", ts.log_var_m, false);
    doubles("log_var_v", ts.log_var_v, false);
    doubles("gradnorm_w", ts.gradnorm_w, false);
    doubles("initial_loss", ts.initial_loss, true);
  } catch (const Error& e) {
    fail(op, where, ": metadata 'trainer': ", e.what());
  }
  std::vector<Tensor<T>> buffers;
  std::vector<std::pair<std::string, ConstView<T>>> views;
  try {
    for (const auto& s : trainer.optimizer().state()) {
      check(f.has(s.first), op, "no optimizer tensor '", s.first, "'");
      buffers.emplace_back(Shape{s.second.numel()});
      detail::read_as(f, s.first, buffers.back().data(), std::size_t(s.second.numel()));
      index_t bad = 0;
      const index_t i = detail::first_nonfinite(buffers.back().data(), s.second.numel(), &bad);
      check(bad == 0, op, "optimizer tensor '", s.first, "' holds ", bad, " non-finite values (the first at element ", i,
            ")");
    }
  } catch (const Error& e) {
    fail(op, where, ": ", e.what());
  }
  std::size_t i = 0;
  for (const auto& s : trainer.optimizer().state()) views.push_back({s.first, buffers[i++].view()});
  trainer.optimizer().load_state(optimizer_step, views);
  trainer.state() = ts;
}

}  // namespace mtrec
