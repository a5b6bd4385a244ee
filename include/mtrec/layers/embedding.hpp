// mtrec: Embedding (ID lookup, optional hashing) and EmbeddingBag (pooled
// variable-length bags, as torch.nn.EmbeddingBag with include_last_offset).
//
// Tables are ParamKind::Table parameters: backward adds into the rows it
// used and marks them in the store, so a lazy optimizer and zero_grad() cost
// O(rows touched), not O(table). Several layers may share one table.
#pragma once

#include <cstring>
#include <string>

#include "mtrec/layers/common.hpp"

namespace mtrec {

// Maps a raw 64-bit ID (a user id, a hashed string) to a row in [0, buckets).
inline index_t hash_bucket(std::uint64_t raw, index_t buckets, std::uint64_t salt = 0) {
  return static_cast<index_t>(mix64(raw ^ salt) % static_cast<std::uint64_t>(buckets));
}

// Registers an embedding table (rows, dim) in `store`.
template <class T>
inline ParamId make_embedding_table(ParameterStore<T>& store, const std::string& name, index_t rows, index_t dim,
                                    Init init = Init::normal(0.0, 0.01)) {
  check(rows > 0 && dim > 0, "make_embedding_table", "'", name, "' expected positive rows and dim but got rows=", rows,
        " dim=", dim);
  return store.add(name, {rows, dim}, init, ParamKind::Table);
}

namespace detail {
// A hint to fetch the cache line at p for reading (no-op where unsupported).
inline void prefetch_read(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}

template <class T>
inline void check_ids(const char* op, const ParameterStore<T>& store, ParamId table, const index_t* ids, index_t n) {
  const index_t rows = store.info(table).shape[0];
  for (index_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= rows)
      fail(op, "ID ", ids[i], " at position ", i, " is out of range for table '", store.info(table).name, "' with ",
           rows, " rows");
}
}  // namespace detail

template <class T>
class Embedding {
 public:
  struct Context {
    ConstView<index_t> ids;  // rows looked up (after hashing, if any)
    Tensor<index_t> hashed;  // owns the rows when forward_hashed was used
  };

  Embedding() = default;
  // A new table (rows, dim).
  Embedding(ParameterStore<T>& store, const std::string& name, index_t rows, index_t dim,
            Init init = Init::normal(0.0, 0.01))
      : Embedding(store, make_embedding_table(store, name, rows, dim, init)) {}
  // A view onto an existing table, shared with other layers.
  Embedding(ParameterStore<T>& store, ParamId table) : store_(&store), table_(table) {
    check(store.info(table).kind == ParamKind::Table, "Embedding", "parameter '", store.info(table).name,
          "' is not an embedding table");
    rows_ = store.info(table).shape[0];
    dim_ = store.info(table).shape[1];
  }

  // y (n,dim) = table[ids] for ids of any shape with n elements
  void forward(Context& ctx, ConstView<index_t> ids, TensorView<T> y) const {
    check_matrix("Embedding::forward", "y", y, ids.numel(), dim_);
    detail::check_ids("Embedding::forward", *store_, table_, ids.data, ids.numel());
    ctx.ids = ids;
    gather(ids.data, y.data, ids.numel());
  }
  // Raw 64-bit IDs hashed into the table's rows (for IDs unseen in training).
  void forward_hashed(Context& ctx, ConstView<std::uint64_t> raw, TensorView<T> y, std::uint64_t salt = 0) const {
    check_matrix("Embedding::forward_hashed", "y", y, raw.numel(), dim_);
    ctx.hashed.resize({raw.numel()});
    for (index_t i = 0; i < raw.numel(); ++i) ctx.hashed[i] = hash_bucket(raw[i], rows_, salt);
    ctx.ids = ctx.hashed.view();
    gather(ctx.ids.data, y.data, raw.numel());
  }
  // table.grad[ids[i]] += dy[i]; marks the rows touched
  void backward(const Context& ctx, ConstView<T> dy) const {
    check_matrix("Embedding::backward", "dy", dy, ctx.ids.numel(), dim_);
    T* g = store_->grad(table_);
    TouchedRows& touched = store_->touched(table_);
    for (index_t i = 0; i < ctx.ids.numel(); ++i) {
      const index_t r = ctx.ids[i];
      touched.mark(r);
      T* gr = g + r * dim_;
      const T* d = dy.data + i * dim_;
      for (index_t c = 0; c < dim_; ++c) gr[c] += d[c];
    }
  }

  index_t rows() const { return rows_; }
  index_t dim() const { return dim_; }
  ParamId table() const { return table_; }

 private:
  void gather(const index_t* ids, T* y, index_t n) const {
    const T* w = store_->value(table_);
    parallel_chunks(
        n, 256,
        [&](index_t b, index_t e) {
          for (index_t i = b; i < e; ++i)
            std::memcpy(y + i * dim_, w + ids[i] * dim_, sizeof(T) * static_cast<std::size_t>(dim_));
        },
        kernels::simd::worth_forking(n * dim_));
  }

  ParameterStore<T>* store_ = nullptr;
  ParamId table_ = -1;
  index_t rows_ = 0, dim_ = 0;
};

enum class BagPooling { Sum, Mean };

template <class T>
class EmbeddingBag {
 public:
  struct Context {
    ConstView<index_t> ids, offsets;
    ConstView<T> weights;  // empty when unweighted
  };

  EmbeddingBag() = default;
  EmbeddingBag(ParameterStore<T>& store, const std::string& name, index_t rows, index_t dim,
               BagPooling pooling = BagPooling::Sum, Init init = Init::normal(0.0, 0.01))
      : EmbeddingBag(store, make_embedding_table(store, name, rows, dim, init), pooling) {}
  EmbeddingBag(ParameterStore<T>& store, ParamId table, BagPooling pooling = BagPooling::Sum)
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
  void forward(Context& ctx, ConstView<index_t> ids, ConstView<index_t> offsets, ConstView<T> weights,
               TensorView<T> y) const {
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
      check_finite(op, "weights", weights);
    }
    detail::check_ids(op, *store_, table_, ids.data, n);
    ctx.ids = ids;
    ctx.offsets = offsets;
    ctx.weights = weights;
    pool_bags(ids.data, offsets.data, weights.empty() ? nullptr : weights.data, y.data, B);
  }

  // table.grad[ids[i]] += scale_i * dy[bag(i)]; dweights (n) written if given
  void backward(const Context& ctx, ConstView<T> dy, TensorView<T> dweights = {}) const {
    const char* op = "EmbeddingBag::backward";
    const index_t B = ctx.offsets.numel() - 1, n = ctx.ids.numel();
    check_matrix(op, "dy", dy, B, dim_);
    if (!dweights.empty()) {
      check(!ctx.weights.empty(), op, "dweights given but forward had no weights");
      check_shape(op, "dweights", dweights, {n});
    }
    T* g = store_->grad(table_);
    const T* w = store_->value(table_);
    TouchedRows& touched = store_->touched(table_);
    for (index_t b = 0; b < B; ++b) {
      const index_t s = ctx.offsets[b], e = ctx.offsets[b + 1];
      const T inv = (pooling_ == BagPooling::Mean && e > s) ? T(1) / T(e - s) : T(1);
      const T* d = dy.data + b * dim_;
      for (index_t i = s; i < e; ++i) {
        const index_t r = ctx.ids[i];
        touched.mark(r);
        const T a = (ctx.weights.empty() ? T(1) : ctx.weights[i]) * inv;
        T* gr = g + r * dim_;
        for (index_t c = 0; c < dim_; ++c) gr[c] += a * d[c];
        if (!dweights.empty()) {
          const T* row = w + r * dim_;
          T dot = 0;
          for (index_t c = 0; c < dim_; ++c) dot += d[c] * row[c];
          dweights[i] = dot * inv;
        }
      }
    }
  }

  index_t rows() const { return rows_; }
  index_t dim() const { return dim_; }
  ParamId table() const { return table_; }
  BagPooling pooling() const { return pooling_; }

 private:
  // Bags per parallel chunk (a fixed count: bags are independent, so the
  // split never changes a result) and how many IDs ahead rows are prefetched.
  static constexpr index_t kBagsPerChunk = 64;
  static constexpr index_t kPrefetchAhead = 16;

  // y (B,dim): bag b = sum over its IDs, in order, of (weight *) row, then
  // times 1/length for the mean: per column the same additions, in the same
  // order, as the scalar loop `y[c] = 0; y[c] += a * row[c]`, so a bag's
  // result never depends on which thread runs it. Columns go in register
  // blocks of up to 4 vectors; the rows kPrefetchAhead IDs ahead (across
  // bags) are prefetched while the current bag is summed.
  void pool_bags(const index_t* ids, const index_t* offsets, const T* weights, T* y, index_t B) const {
    if (weights)
      pool_bags_impl<true>(ids, offsets, weights, y, B);
    else
      pool_bags_impl<false>(ids, offsets, weights, y, B);
  }

  template <bool Weighted>
  void pool_bags_impl(const index_t* ids, const index_t* offsets, const T* weights, T* y, index_t B) const {
    using V = xsimd::batch<T>;
    constexpr index_t W = V::size;
    const T* w = store_->value(table_);
    const index_t dim = dim_;
    const index_t row_bytes = dim * index_t(sizeof(T));
    const bool mean = pooling_ == BagPooling::Mean;
    const bool fork = kernels::simd::worth_forking(offsets[B] * dim);  // rows gathered x dim
    parallel_chunks(B, kBagsPerChunk, [&](index_t b0, index_t b1) {
      const index_t i_end = offsets[b1];
      auto prefetch_row = [&](index_t i) {
        if (i >= i_end) return;
        const char* row = reinterpret_cast<const char*>(w + ids[i] * dim);
        for (index_t off = 0; off < row_bytes; off += 64) detail::prefetch_read(row + off);
      };
      for (index_t i = offsets[b0]; i < offsets[b0] + kPrefetchAhead; ++i) prefetch_row(i);
      for (index_t b = b0; b < b1; ++b) {
        T* yb = y + b * dim;
        const index_t s = offsets[b], e = offsets[b + 1];
        const bool scale = mean && e > s;
        const T inv = scale ? T(1) / T(e - s) : T(1);
        index_t c = 0;
        bool first = true;  // the first column block issues the prefetches
        for (; c + 4 * W <= dim; c += 4 * W) {
          V a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
          for (index_t i = s; i < e; ++i) {
            if (first) prefetch_row(i + kPrefetchAhead);
            const T* row = w + ids[i] * dim + c;
            if (Weighted) {
              const V a(weights[i]);
              a0 = a0 + a * V::load_unaligned(row);
              a1 = a1 + a * V::load_unaligned(row + W);
              a2 = a2 + a * V::load_unaligned(row + 2 * W);
              a3 = a3 + a * V::load_unaligned(row + 3 * W);
            } else {
              a0 = a0 + V::load_unaligned(row);
              a1 = a1 + V::load_unaligned(row + W);
              a2 = a2 + V::load_unaligned(row + 2 * W);
              a3 = a3 + V::load_unaligned(row + 3 * W);
            }
          }
          if (scale) {
            const V vinv(inv);
            a0 = a0 * vinv;
            a1 = a1 * vinv;
            a2 = a2 * vinv;
            a3 = a3 * vinv;
          }
          a0.store_unaligned(yb + c);
          a1.store_unaligned(yb + c + W);
          a2.store_unaligned(yb + c + 2 * W);
          a3.store_unaligned(yb + c + 3 * W);
          first = false;
        }
        for (; c + W <= dim; c += W) {
          V acc(T(0));
          for (index_t i = s; i < e; ++i) {
            if (first) prefetch_row(i + kPrefetchAhead);
            const V row = V::load_unaligned(w + ids[i] * dim + c);
            acc = Weighted ? acc + V(weights[i]) * row : acc + row;
          }
          if (scale) acc = acc * V(inv);
          acc.store_unaligned(yb + c);
          first = false;
        }
        for (; c < dim; ++c) {
          T acc = T(0);
          for (index_t i = s; i < e; ++i) {
            if (first) prefetch_row(i + kPrefetchAhead);
            const T v = w[ids[i] * dim + c];
            acc = Weighted ? acc + weights[i] * v : acc + v;
          }
          if (scale) acc *= inv;
          yb[c] = acc;
          first = false;
        }
      }
    }, fork);
  }

  ParameterStore<T>* store_ = nullptr;
  ParamId table_ = -1;
  index_t rows_ = 0, dim_ = 0;
  BagPooling pooling_ = BagPooling::Sum;
};

}  // namespace mtrec
