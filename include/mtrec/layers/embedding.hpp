// mtrec: Embedding (ID lookup, optional hashing) and EmbeddingBag (pooled
// variable-length bags, as torch.nn.EmbeddingBag with include_last_offset).
//
// Tables are ParamKind::Table parameters: backward adds into the rows it
// used and marks them in the store, so a lazy optimizer and zero_grad() cost
// O(rows touched), not O(table). Several layers may share one table.
#pragma once

#include <string>

#include "mtrec/kernels/embedding.hpp"
#include "mtrec/layers/common.hpp"

namespace mtrec {

// Maps a raw 64-bit ID (a user id, a hashed string) to a row in [0, buckets).
inline index_t hash_bucket(std::uint64_t raw, index_t buckets, std::uint64_t salt = 0) {
  return static_cast<index_t>(mix64(raw ^ salt) % static_cast<std::uint64_t>(buckets));
}

// Registers an embedding table (rows, dim) in `store`.
template <class T, class Device>
inline ParamId make_embedding_table(ParameterStore<T, Device>& store, const std::string& name, index_t rows, index_t dim,
                                    Init init = Init::normal(0.0, 0.01)) {
  check(rows > 0 && dim > 0, "make_embedding_table", "'", name, "' expected positive rows and dim but got rows=", rows,
        " dim=", dim);
  return store.add(name, {rows, dim}, init, ParamKind::Table);
}

namespace detail {
template <class T, class Device>
inline void check_ids(const char* op, const ParameterStore<T, Device>& store, ParamId table, const index_t* ids, index_t n) {
  const index_t rows = store.info(table).shape[0];
  for (index_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= rows)
      fail(op, "ID ", ids[i], " at position ", i, " is out of range for table '", store.info(table).name, "' with ",
           rows, " rows");
}

// ---- fused table updates (ParameterStore::defer_lookup) ------------------------

// Writes a withdrawn deferred lookup as an ordinary gradient: table.grad +=
// its bag backward, its rows marked touched.
template <class T, class Device>
inline void write_lookup_grad(ParameterStore<T, Device>& s, ParamId table,
                              const typename ParameterStore<T, Device>::DeferredLookup& l) {
  using P = typename ParameterStore<T, Device>::pointer;
  s.touched(table).mark_all(l.host_ids, l.n_ids);
  kernels::embedding_bag_backward(s.device(), s.grad(table), pointer_t<std::uint8_t, typename Device::memory>(nullptr),
                                  P(nullptr), l.dy, s.value(table), l.ids, l.offsets, l.weights, l.B, l.n_ids,
                                  s.info(table).shape[1], l.mean);
}
// Call before writing a table's gradient directly (fused updates or not).
template <class T, class Device>
inline void unfuse_table(ParameterStore<T, Device>& s, ParamId table) {
  if (const auto* prev = s.withdraw(table)) write_lookup_grad(s, table, *prev);
}
// True when the lookup is deferred to the optimizer; false when the caller
// writes its gradient (any earlier deferred lookup of the table is written).
template <class T, class Device>
inline bool defer_or_unfuse(ParameterStore<T, Device>& s, ParamId table,
                            const typename ParameterStore<T, Device>::DeferredLookup& l) {
  if (!s.fused_tables()) return false;
  if (s.defer_lookup(table, l)) return true;
  unfuse_table(s, table);
  return false;
}
// offsets 0, 1, .., n where the kernels read them: an ID lookup as bags of
// one. The arrays only grow (to twice the need), and the device copy is
// uploaded only when they do: a warm step with a varying n (the valid
// positions of a sequence) adds no copy.
template <class Device>
inline TensorView<const index_t, typename Device::memory> unit_offsets(Tensor<index_t>& host,
                                                                      Tensor<index_t, Device>& buf, index_t n) {
  if (host.numel() < n + 1) {
    host.resize({2 * (n + 1)});
    for (index_t i = 0; i < host.numel(); ++i) host[i] = i;
    if constexpr (!host_readable_v<Device>) {
      buf.resize({host.numel()});
      buf.device().upload(raw(buf.data()), host.data(), buf.bytes());
    }
  }
  if constexpr (host_readable_v<Device>) {
    (void)buf;
    return TensorView<const index_t, typename Device::memory>(host.cview().data, {n + 1});
  } else {
    return TensorView<const index_t, typename Device::memory>(buf.cview().data, {n + 1});
  }
}
}  // namespace detail

template <class T, class Device = Cpu>
class Embedding {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;
  struct Context {
    ConstView<index_t> ids;  // rows looked up (after hashing, if any), host: backward marks them touched
    IdView ids_d;            // the same rows where the kernels read them
    Tensor<index_t> hashed;  // owns the rows when forward_hashed was used
    Tensor<index_t, Device> ids_buf;  // their device copy, on a device without host access
    // With fused table updates: offsets 0..n, the lookup as bags of one.
    Tensor<index_t> unit_offsets;
    Tensor<index_t, Device> unit_offsets_buf;
    IdView unit_offsets_d;
  };

  Embedding() = default;
  // A new table (rows, dim).
  Embedding(ParameterStore<T, Device>& store, const std::string& name, index_t rows, index_t dim,
            Init init = Init::normal(0.0, 0.01))
      : Embedding(store, make_embedding_table(store, name, rows, dim, init)) {}
  // A view onto an existing table, shared with other layers.
  Embedding(ParameterStore<T, Device>& store, ParamId table) : store_(&store), table_(table) {
    check(store.info(table).kind == ParamKind::Table, "Embedding", "parameter '", store.info(table).name,
          "' is not an embedding table");
    rows_ = store.info(table).shape[0];
    dim_ = store.info(table).shape[1];
  }

  // y (n,dim) = table[ids] for ids of any shape with n elements
  void forward(Context& ctx, ConstView<index_t> ids, View y, const StagedInputs<Device>* staged = nullptr) const {
    check_matrix("Embedding::forward", "y", y, ids.numel(), dim_);
    detail::check_ids("Embedding::forward", *store_, table_, ids.data, ids.numel());
    ctx.ids = ids;
    ctx.ids_d = device_input(ctx.ids_buf, ids, staged);
    if (store_->fused_tables()) ctx.unit_offsets_d = detail::unit_offsets(ctx.unit_offsets, ctx.unit_offsets_buf, ids.numel());
    kernels::gather_rows(dev(), y.data, store_->value(table_), ctx.ids_d.data, ids.numel(), dim_);
  }
  // Raw 64-bit IDs hashed into the table's rows (for IDs unseen in training).
  void forward_hashed(Context& ctx, ConstView<std::uint64_t> raw, View y, std::uint64_t salt = 0) const {
    check_matrix("Embedding::forward_hashed", "y", y, raw.numel(), dim_);
    ctx.hashed.resize({raw.numel()});
    for (index_t i = 0; i < raw.numel(); ++i) ctx.hashed[i] = hash_bucket(raw[i], rows_, salt);
    ctx.ids = ctx.hashed.view();
    ctx.ids_d = device_input(ctx.ids_buf, ctx.ids);
    if (store_->fused_tables()) ctx.unit_offsets_d = detail::unit_offsets(ctx.unit_offsets, ctx.unit_offsets_buf, raw.numel());
    kernels::gather_rows(dev(), y.data, store_->value(table_), ctx.ids_d.data, raw.numel(), dim_);
  }
  // table.grad[ids[i]] += dy[i]; marks the rows touched
  void backward(const Context& ctx, CView dy) const {
    check_matrix("Embedding::backward", "dy", dy, ctx.ids.numel(), dim_);
    if (store_->fused_tables()) {
      check(ctx.unit_offsets_d.numel() == ctx.ids.numel() + 1, "Embedding::backward",
            "fused table updates were turned on between forward and backward");
      typename ParameterStore<T, Device>::DeferredLookup l;
      l.ids = ctx.ids_d.data;
      l.offsets = ctx.unit_offsets_d.data;
      l.dy = dy.data;
      l.host_ids = ctx.ids.data;
      l.n_ids = l.B = ctx.ids.numel();
      if (detail::defer_or_unfuse(*store_, table_, l)) return;
    }
    TouchedRows& touched = store_->touched(table_);
    touched.mark_all(ctx.ids.data, ctx.ids.numel());  // on the host, first-touch order
    kernels::scatter_add_rows(dev(), store_->grad(table_), pointer_t<std::uint8_t, typename Device::memory>(nullptr),
                              dy.data, ctx.ids_d.data, ctx.ids.numel(), dim_);
  }

  index_t rows() const { return rows_; }
  index_t dim() const { return dim_; }
  ParamId table() const { return table_; }

  const Device& dev() const { return store_->device(); }

 private:
  ParameterStore<T, Device>* store_ = nullptr;
  ParamId table_ = -1;
  index_t rows_ = 0, dim_ = 0;
};

enum class BagPooling { Sum, Mean };

template <class T, class Device = Cpu>
class EmbeddingBag {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;
  struct Context {
    ConstView<index_t> ids, offsets;  // host: backward marks the rows touched
    IdView ids_d, offsets_d;          // where the kernels read them
    CView weights;                    // empty when unweighted
    Tensor<index_t, Device> ids_buf, offsets_buf;  // device copies, on a device without host access
  };

  EmbeddingBag() = default;
  EmbeddingBag(ParameterStore<T, Device>& store, const std::string& name, index_t rows, index_t dim,
               BagPooling pooling = BagPooling::Sum, Init init = Init::normal(0.0, 0.01))
      : EmbeddingBag(store, make_embedding_table(store, name, rows, dim, init), pooling) {}
  EmbeddingBag(ParameterStore<T, Device>& store, ParamId table, BagPooling pooling = BagPooling::Sum)
      : store_(&store), table_(table), pooling_(pooling) {
    check(store.info(table).kind == ParamKind::Table, "EmbeddingBag", "parameter '", store.info(table).name,
          "' is not an embedding table");
    rows_ = store.info(table).shape[0];
    dim_ = store.info(table).shape[1];
  }

  // y (B,dim): bag b pools ids[offsets[b] .. offsets[b+1]), each scaled by
  // weights[i] if given; Mean divides the (weighted) sum by the bag length.
  // offsets has B+1 entries, starts at 0, never decreases and ends at n.
  // An empty bag gives a zero row.
  void forward(Context& ctx, ConstView<index_t> ids, ConstView<index_t> offsets, CView weights, View y,
               const StagedInputs<Device>* staged = nullptr) const {
    const char* op = "EmbeddingBag::forward";
    check_matrix(op, "y", y, -1, dim_);
    const index_t B = y.rows(), n = ids.numel();
    check_shape(op, "offsets", offsets, {B + 1});
    check(offsets[0] == 0, op, "offsets[0] expected 0 but got ", offsets[0]);
    for (index_t b = 0; b < B; ++b)
      if (offsets[b + 1] < offsets[b])
        fail(op, "offsets expected non-decreasing but offsets[", b + 1, "] = ", offsets[b + 1], " < offsets[", b,
             "] = ", offsets[b]);
    check(offsets[B] == n, op, "offsets[", B, "] expected to equal the number of IDs ", n, " but got ", offsets[B]);
    if (!weights.empty()) {
      check_shape(op, "weights", weights, {n});
      check_finite(dev(), op, "weights", weights);
    }
    detail::check_ids(op, *store_, table_, ids.data, n);
    ctx.ids = ids;
    ctx.offsets = offsets;
    ctx.weights = weights;
    ctx.ids_d = device_input(ctx.ids_buf, ids, staged);
    ctx.offsets_d = device_input(ctx.offsets_buf, offsets, staged);
    kernels::embedding_bag_forward(dev(), y.data, store_->value(table_), ctx.ids_d.data, ctx.offsets_d.data,
                                   weights.empty() ? CPtr() : weights.data, B, dim_, pooling_ == BagPooling::Mean);
  }

  // table.grad[ids[i]] += scale_i * dy[bag(i)]; dweights (n) written if given
  void backward(const Context& ctx, CView dy, View dweights = {}) const {
    const char* op = "EmbeddingBag::backward";
    const index_t B = ctx.offsets.numel() - 1, n = ctx.ids.numel();
    check_matrix(op, "dy", dy, B, dim_);
    if (!dweights.empty()) {
      check(!ctx.weights.empty(), op, "dweights given but forward had no weights");
      check_shape(op, "dweights", dweights, {n});
    }
    if (store_->fused_tables() && dweights.empty()) {  // the fused kernel has no weight gradient
      typename ParameterStore<T, Device>::DeferredLookup l;
      l.ids = ctx.ids_d.data;
      l.offsets = ctx.offsets_d.data;
      l.weights = ctx.weights.empty() ? CPtr() : ctx.weights.data;
      l.dy = dy.data;
      l.host_ids = ctx.ids.data;
      l.n_ids = n;
      l.B = B;
      l.mean = pooling_ == BagPooling::Mean;
      if (detail::defer_or_unfuse(*store_, table_, l)) return;
    } else {
      detail::unfuse_table(*store_, table_);
    }
    TouchedRows& touched = store_->touched(table_);
    touched.mark_all(ctx.ids.data, n);  // on the host, first-touch order
    kernels::embedding_bag_backward(dev(), store_->grad(table_), pointer_t<std::uint8_t, typename Device::memory>(nullptr),
                                    dweights.empty() ? nullptr : dweights.data, dy.data, store_->value(table_),
                                    ctx.ids_d.data, ctx.offsets_d.data, ctx.weights.empty() ? CPtr() : ctx.weights.data,
                                    B, n, dim_, pooling_ == BagPooling::Mean);
  }

  index_t rows() const { return rows_; }
  index_t dim() const { return dim_; }
  ParamId table() const { return table_; }
  BagPooling pooling() const { return pooling_; }

  const Device& dev() const { return store_->device(); }

 private:
  ParameterStore<T, Device>* store_ = nullptr;
  ParamId table_ = -1;
  index_t rows_ = 0, dim_ = 0;
  BagPooling pooling_ = BagPooling::Sum;
};

}  // namespace mtrec
