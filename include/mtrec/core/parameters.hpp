// mtrec: one flat block for every parameter, its gradient and its touched rows.
//
// Layers register their parameters with add() while they are constructed;
// allocate() then lays them out in one contiguous buffer, dense parameters
// first and embedding tables after them, and initialises them from the seed.
// An optimizer updates all dense parameters with one loop over
// [0, dense_size()), and each embedding table only on the rows that the
// backward passes marked as touched since the last zero_grad().
//
// Gradient convention: backward passes ADD into grad() (+=); zero_grad()
// clears them (dense block at once, tables row by row).
//
// The block lives on the store's device D: allocate() draws the initial
// values on the host and uploads them in one copy; value()/grad() are device
// pointers, read on the host only through read_values()/write_values()
// (or to_host on a view). The touched-row lists stay on the host.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"

namespace mtrec {

using ParamId = int;

// How a parameter is initialised.
struct Init {
  enum class Kind { Zeros, Ones, Constant, Uniform, Normal };
  Kind kind = Kind::Zeros;
  double a = 0, b = 0;  // Constant: a; Uniform: [a, b); Normal: mean a, std b

  static Init zeros() { return {Kind::Zeros, 0, 0}; }
  static Init ones() { return {Kind::Ones, 1, 0}; }
  static Init constant(double v) { return {Kind::Constant, v, 0}; }
  static Init uniform(double lo, double hi) { return {Kind::Uniform, lo, hi}; }
  static Init normal(double mean, double std) { return {Kind::Normal, mean, std}; }
};

enum class ParamKind {
  Dense,  // updated in full every step
  Table,  // embedding table (rows, dim): updated only on touched rows
};

struct ParamInfo {
  std::string name;
  Shape shape;
  ParamKind kind = ParamKind::Dense;
  Init init;
  index_t offset = 0;  // into values()/grads(), set by allocate()
  index_t size = 0;
};

// The rows of one table touched since the last zero_grad(), in first-touch order.
struct TouchedRows {
  std::vector<std::uint8_t> flag;  // (rows)
  std::vector<index_t> rows;
  std::uint64_t clears = 0;  // clear() calls so far: a device mirror of `rows` restarts after one

  void mark(index_t r) {
    if (!flag[static_cast<std::size_t>(r)]) {
      flag[static_cast<std::size_t>(r)] = 1;
      rows.push_back(r);
    }
  }
  // mark() for ids[0 .. n), in order: appends the rows not yet flagged in
  // first-touch order and flags them.
  void mark_all(const index_t* ids, index_t n) {
    for (index_t i = 0; i < n; ++i) mark(ids[i]);
  }
  void clear() {
    for (index_t r : rows) flag[static_cast<std::size_t>(r)] = 0;
    rows.clear();
    ++clears;
  }
};

inline std::uint64_t hash_name(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a, then mixed
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return mix64(h);
}

// The operands of the layers' matrix products (Linear): fp32, or bf16 with
// fp32 accumulation (torch.autocast's bf16 on the CPU). Master weights,
// gradients and optimizer state stay in T either way.
enum class Precision { FP32, BF16 };

inline const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

template <class T, class D = Cpu>
class ParameterStore {
 public:
  using device_type = D;
  using View = DeviceView<T, D>;
  using CView = DeviceView<const T, D>;

  explicit ParameterStore(std::uint64_t seed = 0, const D& dev = D{})
      : seed_(seed), device_(dev), values_(dev), grads_(dev) {}
  ParameterStore(const ParameterStore&) = delete;  // layers hold a pointer to their store
  ParameterStore& operator=(const ParameterStore&) = delete;

  // Bounds what add() accepts: at most `max_count` parameters holding at most
  // `max_elements` elements in total; `source` says where the bounds come from
  // (load_checkpoint: the file). A configuration that asks for more fails at
  // the add() that crosses a bound, before anything is allocated.
  void set_limits(index_t max_count, index_t max_elements, std::string source) {
    max_count_ = max_count;
    max_elements_ = max_elements;
    limit_source_ = std::move(source);
  }

  // Registers a parameter; returns its id. Names must be unique.
  ParamId add(const std::string& name, Shape shape, Init init, ParamKind kind = ParamKind::Dense) {
    check(!allocated_, "ParameterStore::add", "cannot add '", name, "' after allocate()");
    check(shape.numel() > 0, "ParameterStore::add", "parameter '", name, "' expected a non-empty shape but got ",
          shape);
    check(index_t(infos_.size()) < max_count_, "ParameterStore::add", "parameter '", name, "' would be number ",
          infos_.size() + 1, " but ", limit_source_, " holds at most ", max_count_);
    index_t total = 0;
    check(!__builtin_add_overflow(elements_, shape.numel(), &total) && total <= max_elements_, "ParameterStore::add",
          "parameter '", name, "' ", shape, " would bring the parameters to more than the ", max_elements_,
          " elements that ", limit_source_, " holds");
    elements_ = total;
    check(kind != ParamKind::Table || shape.rank == 2, "ParameterStore::add", "table '", name,
          "' expected rank 2 (rows, dim) but got ", shape);
    check(index_.find(name) == index_.end(), "ParameterStore::add", "a parameter named '", name,
          "' already exists");
    ParamInfo p;
    p.name = name;
    p.shape = shape;
    p.kind = kind;
    p.init = init;
    p.size = shape.numel();
    infos_.push_back(p);
    index_[name] = static_cast<ParamId>(infos_.size() - 1);
    return static_cast<ParamId>(infos_.size() - 1);
  }

  // Lays out and initialises every registered parameter; grads start at zero.
  void allocate() {
    check(!allocated_, "ParameterStore::allocate", "already allocated");
    constexpr index_t kAlign = 16;  // 64 bytes of float: every parameter starts on a cache line
    index_t off = 0;
    for (int pass = 0; pass < 2; ++pass) {
      const ParamKind want = pass == 0 ? ParamKind::Dense : ParamKind::Table;
      for (auto& p : infos_) {
        if (p.kind != want) continue;
        p.offset = off;
        off += (p.size + kAlign - 1) / kAlign * kAlign;
      }
      if (pass == 0) dense_size_ = off;
    }
    values_.resize({std::max<index_t>(off, 1)});
    grads_.resize({std::max<index_t>(off, 1)});
    grads_.zero();
    touched_.assign(infos_.size(), TouchedRows{});
    row_sets_.reserve(infos_.size());
    touched_base_.assign(infos_.size(), 0);
    synced_.assign(infos_.size(), 0);
    synced_clears_.assign(infos_.size(), 0);
    index_t table_rows = 0;
    for (std::size_t i = 0; i < infos_.size(); ++i)
      if (infos_[i].kind == ParamKind::Table) {
        touched_base_[i] = table_rows;
        table_rows += infos_[i].shape[0];
      }
    if (!host_readable_v<D>) touched_dev_.resize({std::max<index_t>(table_rows, 1)});
    std::vector<T> host(static_cast<std::size_t>(values_.numel()), T(0));  // drawn here, uploaded once
    for (std::size_t i = 0; i < infos_.size(); ++i) {
      const auto& p = infos_[i];
      if (p.kind == ParamKind::Table) touched_[i].flag.assign(static_cast<std::size_t>(p.shape[0]), 0);
      draw(p, host.data() + p.offset);
    }
    device_.upload(raw(values_.data()), host.data(), values_.bytes());
    allocated_ = true;
    ++generation_;
  }

  // Re-draws one parameter from its Init (e.g. to re-seed a layer).
  void initialise(ParamId id) {
    const ParamInfo& p = checked(id);
    std::vector<T> host(static_cast<std::size_t>(p.size));
    draw(p, host.data());
    device_.upload(raw(values_.data() + p.offset), host.data(), sizeof(T) * host.size());
    ++generation_;
  }

  // ---- the values' generation ---------------------------------------------------
  //
  // A count that changes whenever the values may have changed: allocate(),
  // initialise(), every call of the mutable values() (the optimizer's step,
  // checkpoint loading) and mark_values_changed(). Copies derived from the
  // weights (the bf16 weight packs of Linear) are rebuilt when it moves.
  // Code that writes a parameter through value(id) calls
  // mark_values_changed() afterwards.
  std::uint64_t generation() const { return generation_; }
  void mark_values_changed() { ++generation_; }

  // The precision of the layers' matrix products (Precision above); set by
  // the model from ModelConfig::precision.
  void set_precision(Precision p) { precision_ = p; }
  Precision precision() const { return precision_; }

  // Host copies of parameters and gradients: `count` elements from `offset`
  // of the flat block (the explicit copies between host and device memory).
  void read_values(T* host, index_t offset, index_t count) const { download(host, values_, offset, count); }
  void read_grads(T* host, index_t offset, index_t count) const { download(host, grads_, offset, count); }
  void write_values(index_t offset, const T* host, index_t count) {
    upload(values_, offset, host, count);
    ++generation_;
  }
  void write_grads(index_t offset, const T* host, index_t count) { upload(grads_, offset, host, count); }
  std::vector<T> values_host(ParamId id) const {
    const ParamInfo& p = checked(id);
    std::vector<T> out(static_cast<std::size_t>(p.size));
    read_values(out.data(), p.offset, p.size);
    return out;
  }
  std::vector<T> grads_host(ParamId id) const {
    const ParamInfo& p = checked(id);
    std::vector<T> out(static_cast<std::size_t>(p.size));
    read_grads(out.data(), p.offset, p.size);
    return out;
  }
  const D& device() const { return device_; }

 private:
  void download(T* host, const Tensor<T, D>& t, index_t offset, index_t count) const {
    check(offset >= 0 && count >= 0 && offset + count <= size(), "ParameterStore::read", "elements [", offset, ", ",
          offset + count, ") lie outside the block of ", size());
    device_.download(host, raw(t.data() + offset), sizeof(T) * static_cast<std::size_t>(count));
  }
  void upload(Tensor<T, D>& t, index_t offset, const T* host, index_t count) {
    check(offset >= 0 && count >= 0 && offset + count <= size(), "ParameterStore::write", "elements [", offset, ", ",
          offset + count, ") lie outside the block of ", size());
    device_.upload(raw(t.data() + offset), host, sizeof(T) * static_cast<std::size_t>(count));
  }
  void draw(const ParamInfo& p, T* w) const {
    const RandomStream rs(seed_, hash_name(p.name));
    for (index_t i = 0; i < p.size; ++i) {
      switch (p.init.kind) {
        case Init::Kind::Zeros: w[i] = T(0); break;
        case Init::Kind::Ones: w[i] = T(1); break;
        case Init::Kind::Constant: w[i] = T(p.init.a); break;
        case Init::Kind::Uniform: w[i] = T(p.init.a + (p.init.b - p.init.a) * rs.uniform(std::uint64_t(i))); break;
        case Init::Kind::Normal: w[i] = T(p.init.a + p.init.b * rs.normal(std::uint64_t(i))); break;
      }
    }
  }

 public:

  bool allocated() const { return allocated_; }
  std::uint64_t seed() const { return seed_; }
  int count() const { return static_cast<int>(infos_.size()); }
  const ParamInfo& info(ParamId id) const {
    check(id >= 0 && id < count(), "ParameterStore::info", "parameter id ", id, " out of range [0, ", count(), ")");
    return infos_[static_cast<std::size_t>(id)];
  }
  const std::vector<ParamInfo>& infos() const { return infos_; }
  ParamId find(const std::string& name) const {
    auto it = index_.find(name);
    check(it != index_.end(), "ParameterStore::find", "no parameter named '", name, "'");
    return it->second;
  }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  using pointer = pointer_t<T, typename D::memory>;  // T* on the host, DevicePtr on a device
  using const_pointer = pointer_t<const T, typename D::memory>;
  pointer value(ParamId id) { return values_.data() + checked(id).offset; }
  const_pointer value(ParamId id) const { return values_.data() + checked(id).offset; }
  pointer grad(ParamId id) { return grads_.data() + checked(id).offset; }
  const_pointer grad(ParamId id) const { return grads_.data() + checked(id).offset; }
  View value_view(ParamId id) { return {value(id), info(id).shape}; }
  CView value_view(ParamId id) const { return {value(id), info(id).shape}; }
  View grad_view(ParamId id) { return {grad(id), info(id).shape}; }
  CView grad_view(ParamId id) const { return {grad(id), info(id).shape}; }

  // The flat block. Dense parameters occupy [0, dense_size()).
  pointer values() {
    ++generation_;  // whoever takes the whole block may write it
    return values_.data();
  }
  const_pointer values() const { return values_.data(); }
  pointer grads() { return grads_.data(); }
  const_pointer grads() const { return grads_.data(); }
  index_t size() const { return allocated_ ? values_.numel() : 0; }
  index_t dense_size() const { return dense_size_; }

  TouchedRows& touched(ParamId id) { return touched_[static_cast<std::size_t>(checked_table(id))]; }
  const TouchedRows& touched(ParamId id) const { return touched_[static_cast<std::size_t>(checked_table(id))]; }

  // One RowSet per table over its touched rows, as they are now (rebuilt at
  // each call into a buffer sized at allocate(): no allocation). The sets
  // stay valid until the next call or the next mark/zero_grad.
  const std::vector<RowSet>& touched_row_sets() const {
    row_sets_.clear();
    for (std::size_t i = 0; i < infos_.size(); ++i) {
      const auto& p = infos_[i];
      if (p.kind != ParamKind::Table) continue;
      row_sets_.push_back(RowSet{p.offset, touched_rows(i), index_t(touched_[i].rows.size()), p.shape[1]});
    }
    return row_sets_;
  }

  // ---- fused table updates (OptimizerConfig::fused_tables) -------------------
  //
  // With fused updates on, a table's lookup layer does not write its
  // gradient: its backward hands the lookup (device IDs, bag offsets, the
  // upstream gradient dy) to defer_lookup(), and the optimizer's step() then
  // computes each row's gradient and applies Adam in one kernel
  // (kernels::embedding_bag_backward_adam), as FBGEMM's table-batched
  // embedding does. The full table gradient is never written.
  //
  // One table takes at most one deferred lookup between zero_grad() calls.
  // A second lookup of the same table (a table shared by two features, a
  // second backward pass) or a direct gradient write (a retrieval task's
  // target rows) withdraws the first: its layer's gradient and the new one
  // are written the unfused way, the table takes the ordinary lazy row
  // update, and the result is the same either way.
  struct DeferredLookup {
    pointer_t<const index_t, typename D::memory> ids{}, offsets{};  // offsets (B+1), on the device
    const_pointer weights{};                                         // per ID, or null
    const_pointer dy{};                                              // (B, dim), valid until step()
    const index_t* host_ids = nullptr;                           // the same IDs on the host (touched rows)
    index_t n_ids = 0, B = 0;
    bool mean = false;
  };

  void set_fused_tables(bool on) {
    check(allocated_, "ParameterStore::set_fused_tables", "allocate() has not been called");
    fused_ = on;
    deferred_.assign(infos_.size(), DeferredState{});
  }
  bool fused_tables() const { return fused_; }
  // True when `l` is now the table's deferred lookup (the optimizer applies
  // it); false when fused updates are off or the table already had a lookup
  // or a gradient written since zero_grad(): then call withdraw() and write
  // the gradient the unfused way.
  bool defer_lookup(ParamId table, const DeferredLookup& l) {
    if (!fused_) return false;
    DeferredState& d = deferred_[static_cast<std::size_t>(checked_table(table))];
    if (d.state != DeferredState::None) return false;
    d.state = DeferredState::Pending;
    d.lookup = l;
    return true;
  }
  // Before anything writes a table's gradient directly: from now until
  // zero_grad() the table is updated the unfused way. Returns its deferred
  // lookup, if it had one, which the caller must then write as a gradient.
  const DeferredLookup* withdraw(ParamId table) {
    if (!fused_) return nullptr;
    DeferredState& d = deferred_[static_cast<std::size_t>(checked_table(table))];
    const bool had = d.state == DeferredState::Pending;
    d.state = DeferredState::Shared;
    return had ? &d.lookup : nullptr;
  }
  // The lookup deferred for `table` since the last zero_grad(), or null.
  const DeferredLookup* deferred(ParamId table) const {
    if (!fused_) return nullptr;
    const DeferredState& d = deferred_[static_cast<std::size_t>(checked_table(table))];
    return d.state == DeferredState::Pending ? &d.lookup : nullptr;
  }

  // Clears every gradient: the dense block at once, each table on its touched
  // rows; deferred lookups are dropped.
  void zero_grad() {
    check(allocated_, "ParameterStore::zero_grad", "allocate() has not been called");
    for (auto& d : deferred_) d = DeferredState{};
    device_.zero(raw(grads_.data()), sizeof(T) * static_cast<std::size_t>(dense_size_));
    for (std::size_t i = 0; i < infos_.size(); ++i) {
      const auto& p = infos_[i];
      if (p.kind != ParamKind::Table) continue;
      device_.zero_rows(raw(grads_.data() + p.offset), touched_rows(i), index_t(touched_[i].rows.size()),
                        sizeof(T) * static_cast<std::size_t>(p.shape[1]));
      touched_[i].clear();
      synced_[i] = 0;
    }
  }

 private:
  const ParamInfo& checked(ParamId id) const {
    const ParamInfo& p = info(id);
    check(allocated_, "ParameterStore", "parameter '", p.name, "' used before allocate()");
    return p;
  }
  // Parameter i's touched rows where the device reads them: the host list
  // itself, or on a device without host access its mirror in device memory,
  // brought up to date by uploading the rows marked since the last call (the
  // list only grows until it is cleared; after a clear it is uploaded anew).
  const index_t* touched_rows(std::size_t i) const {
    const std::vector<index_t>& rows = touched_[i].rows;
    if (host_readable_v<D>) return rows.data();
    const index_t base = touched_base_[i];
    if (synced_clears_[i] != touched_[i].clears) {  // cleared since the last upload (not only by zero_grad)
      synced_[i] = 0;
      synced_clears_[i] = touched_[i].clears;
    }
    const std::size_t done = synced_[i];
    if (rows.size() > done)
      device_.upload(raw(touched_dev_.data() + base + index_t(done)), rows.data() + done,
                     sizeof(index_t) * (rows.size() - done));
    synced_[i] = rows.size();
    return raw(touched_dev_.data() + base);
  }
  ParamId checked_table(ParamId id) const {
    check(checked(id).kind == ParamKind::Table, "ParameterStore::touched", "parameter '", info(id).name,
          "' is not an embedding table");
    return id;
  }

  std::uint64_t seed_;
  D device_;
  std::uint64_t generation_ = 0;
  Precision precision_ = Precision::FP32;
  bool allocated_ = false;
  index_t max_count_ = std::numeric_limits<index_t>::max(), max_elements_ = std::numeric_limits<index_t>::max();
  index_t elements_ = 0;
  std::string limit_source_;
  std::vector<ParamInfo> infos_;
  std::unordered_map<std::string, ParamId> index_;
  Tensor<T, D> values_, grads_;
  index_t dense_size_ = 0;
  std::vector<TouchedRows> touched_;
  struct DeferredState {
    enum { None, Pending, Shared } state = None;
    DeferredLookup lookup;
  };
  bool fused_ = false;
  std::vector<DeferredState> deferred_;  // by parameter id, when fused_
  mutable std::vector<RowSet> row_sets_;  // touched_row_sets()
  // Devices without host access: every table's touched rows in device memory,
  // table i at touched_base_[i]; synced_[i] of its rows uploaded so far.
  mutable Tensor<index_t, D> touched_dev_;
  std::vector<index_t> touched_base_;
  mutable std::vector<std::size_t> synced_;
  mutable std::vector<std::uint64_t> synced_clears_;  // touched_[i].clears when synced_[i] was set
};

}  // namespace mtrec
