// mtrec: the feature encoder — a batch's ID, bag, sequence and dense fields
// to one feature matrix, and its gradient back into the tables and encoders.
//
//   X (B,F) = [ID embeddings | pooled bags | encoded+pooled sequences | dense]
//
// in the order the fields are declared. Three steps per batch:
//   prepare   host, once per batch: checks the fields, hashes raw IDs into
//             rows, lists the valid positions of each sequence, then uploads
//             every array the kernels read (rows, offsets, weights, lengths,
//             dense values) to the device in ONE copy (StagedInputs).
//   forward   device: embedding lookups, bag pooling, sequence encoders,
//             column copies into X. Reads only the workspace.
//   backward  device: dX into the tables' rows (marked touched) and the
//             encoders' parameters. Reads only the workspace.
// The batch must stay unchanged from prepare to the last backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "mtrec/kernels/embedding.hpp"
#include "mtrec/kernels/sequence.hpp"
#include "mtrec/layers/embedding.hpp"
#include "mtrec/layers/pooling.hpp"
#include "mtrec/layers/positional.hpp"
#include "mtrec/layers/transformer.hpp"
#include "mtrec/model/config.hpp"
#include "mtrec/model/features.hpp"

namespace mtrec {

// The table a field reads ("emb.<table or field>"): found in the store, or
// registered there from the configuration's table list.
template <class T, class Device>
inline ParamId embedding_table_for(ParameterStore<T, Device>& s, const std::vector<TableSpec>& tables,
                                   const std::string& field, const std::string& table, const Init& init) {
  const std::string name = "emb." + (table.empty() ? field : table);
  if (s.contains(name)) return s.find(name);
  for (const auto& t : tables)
    if ("emb." + t.name == name) return make_embedding_table(s, name, t.rows, t.dim, init);
  fail("FeatureEncoder", "no table for field '", field, "'");
}

template <class T, class Device = Cpu>
class FeatureEncoder {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;  // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;

  // items -> + position -> transformer stack -> pooled (B,D)
  struct SequenceEncoder {
    Embedding<T, Device> items;
    PositionalEmbedding<T, Device> position;
    TransformerEncoder<T, Device> encoder;
    SequencePooling<T, Device> pool;
  };

  struct Workspace {
    struct SequenceWs {
      Tensor<index_t> lengths;    // (B) a copy of the batch's lengths: forward and backward agree on it
      Tensor<index_t> valid_ids;  // (n_valid) rows of the valid positions, in (b,t) order
      IdView lengths_d;           // the lengths where kernels read them
      Tensor<index_t> starts;     // (B) first row of each sequence in compact (a scan on the host)
      IdView starts_d;            // where kernels read them (staged with the batch)
      Tensor<T, Device> compact, d_compact;  // (n_valid, D)
      Tensor<T, Device> emb, hidden, d_emb, d_hidden;  // (B,L,D)
      Tensor<T, Device> pooled, d_pooled;              // (B,D)
      typename Embedding<T, Device>::Context items;
      typename PositionalEmbedding<T, Device>::Context position;
      typename TransformerEncoder<T, Device>::Context encoder;
      typename SequencePooling<T, Device>::Context pool;
    };
    index_t B = 0;
    const Batch<T>* batch = nullptr;         // the batch prepare() read
    std::vector<Tensor<index_t>> id_rows;    // hashed rows per ID field (B)
    std::vector<Tensor<index_t>> bag_rows;   // hashed rows per bag field (n)
    std::vector<ConstView<index_t>> id_view, bag_view;  // the rows each field looks up
    StagedInputs<Device> staged;  // every host array the kernels read, on the device in one copy
    std::vector<Tensor<T, Device>> id_emb, bag_emb, d_field;  // (B,dim)
    std::vector<typename Embedding<T, Device>::Context> id_ctx;
    std::vector<typename EmbeddingBag<T, Device>::Context> bag_ctx;
    std::vector<SequenceWs> seq;
  };

  FeatureEncoder() = default;
  // Registers the tables (those not in the store yet) and the sequence
  // encoders' parameters, in field order: IDs, bags, sequences.
  FeatureEncoder(ParameterStore<T, Device>& s, const FeatureSpec& spec, const std::vector<TableSpec>& tables,
                 const Init& emb_init)
      : store_(&s), spec_(spec), tables_(tables) {
    for (const auto& x : spec_.ids) {
      ids_.emplace_back(s, embedding_table_for(s, tables_, x.name, x.table, emb_init));
      width_ += x.dim;
    }
    for (const auto& x : spec_.bags) {
      bags_.emplace_back(s, embedding_table_for(s, tables_, x.name, x.table, emb_init), x.pooling);
      width_ += x.dim;
    }
    for (const auto& x : spec_.sequences) {
      SequenceEncoder e;
      e.items = Embedding<T, Device>(s, embedding_table_for(s, tables_, x.name, x.table, emb_init));
      e.position = PositionalEmbedding<T, Device>(s, "seq." + x.name + ".position", x.max_len, x.encoder.d_model);
      e.encoder = TransformerEncoder<T, Device>(s, "seq." + x.name + ".encoder", x.encoder, x.layers, true);
      e.pool = SequencePooling<T, Device>(x.pooling);
      seqs_.push_back(std::move(e));
      width_ += x.encoder.d_model;
    }
    for (const auto& x : spec_.dense) width_ += x.dim;
  }

  index_t width() const { return width_; }  // F
  const FeatureSpec& spec() const { return spec_; }

  // The field checks of one batch (sizes, lengths, finite dense values); ID
  // ranges are checked by the embedding layers in forward.
  void check_batch(const char* op, const Batch<T>& b) const {
    const FeatureSpec& f = spec_;
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
      check(s.ids.size() == B * L, op, "sequence field '", f.sequences[i].name, "' expected ", B, " x ", L, " = ",
            B * L, " IDs but got ", s.ids.size());
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
  }

  // ---- prepare (host) ----------------------------------------------------------

  // Checks the batch (errors name `op`), hashes raw IDs, lists the valid
  // sequence positions, and uploads every array forward and backward read,
  // in one copy.
  void prepare(Workspace& ws, const Batch<T>& b, const char* op = "FeatureEncoder::prepare") const {
    ws.batch = nullptr;
    check_batch(op, b);
    const FeatureSpec& f = spec_;
    const index_t B = b.size;
    ws.B = B;
    ws.id_rows.resize(f.ids.size());
    ws.bag_rows.resize(f.bags.size());
    ws.id_emb.resize(f.ids.size());
    ws.bag_emb.resize(f.bags.size());
    ws.id_ctx.resize(f.ids.size());
    ws.bag_ctx.resize(f.bags.size());
    // One gradient buffer per ID and bag field: with fused table updates the
    // optimizer reads each of them after the whole backward.
    ws.d_field.resize(std::max<std::size_t>(1, f.ids.size() + f.bags.size()));
    ws.seq.resize(f.sequences.size());
    ws.id_view.resize(f.ids.size());
    ws.bag_view.resize(f.bags.size());
    ws.staged.clear();
    for (std::size_t i = 0; i < f.ids.size(); ++i) {
      ws.id_view[i] = rows_for(b.ids[i], table_spec(f.ids[i].name, f.ids[i].table), ws.id_rows[i]);
      ws.staged.add(ws.id_view[i]);
    }
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      const auto& bag = b.bags[i];
      ws.bag_view[i] = rows_for(bag.ids, table_spec(f.bags[i].name, f.bags[i].table), ws.bag_rows[i]);
      ws.staged.add(ws.bag_view[i]);
      ws.staged.add(bag.offsets.data(), index_t(bag.offsets.size()));
      if (f.bags[i].weighted) ws.staged.add(bag.weights.data(), index_t(bag.weights.size()));
    }
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
      for (index_t r = 0, acc = 0; r < B; acc += s.lengths[r], ++r) sw.starts[r] = acc;
      ws.staged.add(sw.lengths.cview());
      ws.staged.add(sw.valid_ids.cview());
      ws.staged.add(sw.starts.cview());
    }
    for (std::size_t i = 0; i < f.dense.size(); ++i) ws.staged.add(b.dense[i].data(), index_t(b.dense[i].size()));
    ws.staged.upload(dev());
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      auto& sw = ws.seq[i];
      sw.lengths_d = ws.staged.view(sw.lengths.cview());
      sw.starts_d = ws.staged.view(sw.starts.cview());
    }
    ws.batch = &b;
  }

  // ---- forward / backward (device) -----------------------------------------------

  // Which fields forward() encodes: all, or only the user-side or only the
  // item-side ones (the FeatureSpec's item_side flags); the columns of the
  // others are left as they are (ranking reads the user's once and the
  // candidates' item columns only).
  enum class Side { All, User, Item };

  // X's column blocks of the user-side (item = false) or item-side fields,
  // in column order.
  std::vector<typename SplitInput<T, Device>::Block> column_blocks(bool item) const {
    std::vector<typename SplitInput<T, Device>::Block> out;
    const FeatureSpec& f = spec_;
    index_t col = 0;
    auto add = [&](bool is_item, index_t w) {
      if (is_item == item) {
        if (!out.empty() && out.back().col + out.back().width == col) out.back().width += w;
        else out.push_back({col, w});
      }
      col += w;
    };
    for (const auto& x : f.ids) add(x.item_side, x.dim);
    for (const auto& x : f.bags) add(x.item_side, x.dim);
    for (const auto& x : f.sequences) add(x.item_side, x.encoder.d_model);
    for (const auto& x : f.dense) add(x.item_side, x.dim);
    return out;
  }

  // X (B,F) = the encoded fields of the prepared batch
  void forward(Workspace& ws, View X, const Mode& mode, Side side = Side::All) const {
    auto skip = [side](bool item_side) {
      return side != Side::All && item_side != (side == Side::Item);
    };
    const char* op = "FeatureEncoder::forward";
    check(ws.batch != nullptr, op, "expected prepare() before forward()");
    const Batch<T>& b = *ws.batch;
    const FeatureSpec& f = spec_;
    const index_t B = ws.B;
    check_shape(op, "X", X, {B, width_});
    const StagedInputs<Device>* st = &ws.staged;
    index_t col = 0;
    for (std::size_t i = 0; i < f.ids.size(); ++i) {
      const index_t d = f.ids[i].dim;
      if (skip(f.ids[i].item_side)) {
        col += d;
        continue;
      }
      ws.id_emb[i].resize({B, d});
      ids_[i].forward(ws.id_ctx[i], ws.id_view[i], ws.id_emb[i].view(), st);
      put_columns(X, col, ws.id_emb[i].data(), B, d);
      col += d;
    }
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      const index_t d = f.bags[i].dim;
      if (skip(f.bags[i].item_side)) {
        col += d;
        continue;
      }
      const auto& bag = b.bags[i];
      ws.bag_emb[i].resize({B, d});
      const index_t nw = index_t(bag.weights.size());
      const CView w = f.bags[i].weighted ? ws.staged.view(ConstView<T>(bag.weights.data(), {nw})) : CView();
      bags_[i].forward(ws.bag_ctx[i], ws.bag_view[i], ConstView<index_t>(bag.offsets.data(), {B + 1}), w,
                       ws.bag_emb[i].view(), st);
      put_columns(X, col, ws.bag_emb[i].data(), B, d);
      col += d;
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const SequenceFeature& sf = f.sequences[i];
      const SequenceEncoder& enc = seqs_[i];
      auto& sw = ws.seq[i];
      const index_t L = sf.max_len, D = sf.encoder.d_model;
      if (skip(sf.item_side)) {
        col += D;
        continue;
      }
      const index_t n_valid = sw.valid_ids.numel();
      sw.compact.resize({n_valid, D});
      sw.emb.resize({B, L, D});
      sw.hidden.resize({B, L, D});
      sw.pooled.resize({B, D});
      enc.items.forward(sw.items, sw.valid_ids.cview(), sw.compact.view(), st);
      // valid positions copied, padded ones zeroed (an empty sequence copies nothing)
      kernels::unpack_sequences(dev(), sw.emb.data(), sw.compact.data(), sw.lengths_d.data, sw.starts_d.data, B, L, D);
      const ConstView<index_t> lengths = sw.lengths.cview();
      enc.position.forward(sw.position, sw.emb.view(), sw.emb.view());
      enc.encoder.forward(sw.encoder, sw.emb.view(), lengths, sw.hidden.view(), mode, st);
      enc.pool.forward(sw.pool, sw.hidden.view(), lengths, sw.pooled.view(), st);
      put_columns(X, col, sw.pooled.data(), B, D);
      col += D;
    }
    for (std::size_t i = 0; i < f.dense.size(); ++i) {
      const index_t d = f.dense[i].dim;
      if (skip(f.dense[i].item_side)) {
        col += d;
        continue;
      }
      put_columns(X, col, ws.staged.view(ConstView<T>(b.dense[i].data(), {B * d})).data, B, d);
      col += d;
    }
  }

  // table rows and encoder parameters += the gradient of dX (B,F)
  void backward(Workspace& ws, CView dX) const {
    const char* op = "FeatureEncoder::backward";
    check(ws.batch != nullptr, op, "expected prepare() and forward() before backward()");
    const FeatureSpec& f = spec_;
    const index_t B = ws.B;
    check_shape(op, "dX", dX, {B, width_});
    index_t col = 0;
    for (std::size_t i = 0; i < f.ids.size(); ++i) {
      Tensor<T, Device>& d = ws.d_field[i];
      const index_t w = f.ids[i].dim;
      d.resize({B, w});
      take_columns(d.data(), dX, col, B, w);
      ids_[i].backward(ws.id_ctx[i], d.view());
      col += w;
    }
    for (std::size_t i = 0; i < f.bags.size(); ++i) {
      Tensor<T, Device>& d = ws.d_field[f.ids.size() + i];
      const index_t w = f.bags[i].dim;
      d.resize({B, w});
      take_columns(d.data(), dX, col, B, w);
      bags_[i].backward(ws.bag_ctx[i], d.view());
      col += w;
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const SequenceFeature& sf = f.sequences[i];
      const SequenceEncoder& enc = seqs_[i];
      auto& sw = ws.seq[i];
      const index_t L = sf.max_len, D = sf.encoder.d_model;
      sw.d_pooled.resize({B, D});
      sw.d_hidden.resize({B, L, D});
      sw.d_emb.resize({B, L, D});
      take_columns(sw.d_pooled.data(), dX, col, B, D);
      enc.pool.backward(sw.pool, sw.d_pooled.view(), sw.d_hidden.view());
      enc.encoder.backward(sw.encoder, sw.d_hidden.view(), sw.d_emb.view());
      enc.position.backward(sw.position, sw.d_emb.view(), sw.d_emb.view());
      sw.d_compact.resize(sw.compact.shape());
      kernels::pack_sequences(dev(), sw.d_compact.data(), sw.d_emb.data(), sw.lengths_d.data, sw.starts_d.data, B, L, D);
      enc.items.backward(sw.items, sw.d_compact.view());
      col += D;
    }
  }

  const std::vector<Embedding<T, Device>>& id_layers() const { return ids_; }
  const std::vector<EmbeddingBag<T, Device>>& bag_layers() const { return bags_; }
  const std::vector<SequenceEncoder>& sequence_encoders() const { return seqs_; }

 private:
  const Device& dev() const { return store_->device(); }

  // columns [col, col + w) of X = src (B,w), and back
  void put_columns(View X, index_t col, CPtr src, index_t B, index_t w) const {
    kernels::copy_columns(dev(), X.data, X.cols(), col, src, w, 0, B, w);
  }
  void take_columns(Ptr dst, CView X, index_t col, index_t B, index_t w) const {
    kernels::copy_columns(dev(), dst, w, 0, X.data, X.cols(), col, B, w);
  }

  const TableSpec& table_spec(const std::string& field, const std::string& table) const {
    const std::string n = table.empty() ? field : table;
    for (const auto& t : tables_)
      if (t.name == n) return t;
    fail("FeatureEncoder", "no table '", n, "'");
  }

  // Rows for IDs of a field: the IDs themselves, or their hash buckets.
  static ConstView<index_t> rows_for(const std::vector<index_t>& ids, const TableSpec& t, Tensor<index_t>& buf) {
    if (!t.hashed) return ConstView<index_t>(ids.data(), {index_t(ids.size())});
    buf.resize({index_t(ids.size())});
    const std::uint64_t salt = hash_name(t.name);
    for (std::size_t i = 0; i < ids.size(); ++i) buf[index_t(i)] = hash_bucket(std::uint64_t(ids[i]), t.rows, salt);
    return buf.cview();
  }

  ParameterStore<T, Device>* store_ = nullptr;
  FeatureSpec spec_;
  std::vector<TableSpec> tables_;
  index_t width_ = 0;
  std::vector<Embedding<T, Device>> ids_;
  std::vector<EmbeddingBag<T, Device>> bags_;
  std::vector<SequenceEncoder> seqs_;
};

}  // namespace mtrec
