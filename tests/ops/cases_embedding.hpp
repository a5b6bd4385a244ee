// Op-table rows for the kernels in include/mtrec/kernels/embedding.hpp:
// gather_rows / scatter_add_rows (each the other's backward),
// embedding_bag_forward / embedding_bag_backward, and the fused
// embedding_bag_backward_adam. IDs and offsets are
// captured by the lambdas; tables, weights and upstream gradients are the
// rows' float inputs. The touched flags come back as outputs (converted to
// T) on the scatter_add_rows and embedding_bag_backward rows, so backends
// must agree on them too.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "ops/op_table.hpp"

namespace optable {

namespace emb_detail {
// offsets (B+1) of bags with the given lengths.
inline std::vector<index_t> offsets_of(const std::vector<index_t>& lengths) {
  std::vector<index_t> o(1, 0);
  for (index_t l : lengths) o.push_back(o.back() + l);
  return o;
}
// `ids` with some positions overwritten by earlier IDs, so that one batch
// (and one bag) holds repeated IDs whatever the random draw.
inline std::vector<index_t> with_repeats(std::vector<index_t> ids) {
  for (std::size_t i = 2; i < ids.size(); i += 3) ids[i] = ids[i - 2];
  return ids;
}
// Flags (rows) pre-set on the last row: the kernels must leave set flags set.
inline std::vector<std::uint8_t> initial_flags(index_t rows) {
  std::vector<std::uint8_t> f(static_cast<std::size_t>(rows), 0);
  if (rows > 0) f.back() = 1;
  return f;
}
template <class T>
inline void flags_out(std::vector<T>& out, const std::vector<std::uint8_t>& flags) {
  for (std::size_t r = 0; r < flags.size(); ++r) out[r] = T(flags[r]);
}
}  // namespace emb_detail

inline std::vector<OpCase> embedding_cases() {
  namespace k = mtrec::kernels;
  namespace ed = emb_detail;
  std::vector<OpCase> v;
  const std::vector<index_t> dims = {1, 3, 16, 17, 33, 64};

  // ---- gather_rows: y (n,dim) = table[ids]; backward scatter_add_rows ---------
  // ---- scatter_add_rows: grad[ids[i]] += dy[i]; backward gather_rows ----------
  struct R { index_t n, rows, dim; bool bench; };
  std::vector<R> row_shapes = {{0, 6, 17, false}, {1, 6, 3, false}, {2048 * 20, 5000, 64, true}};
  for (index_t dim : dims) row_shapes.push_back({50, 6, dim, false});  // 6 rows: many repeats
  for (R rs : row_shapes) {
    const index_t n = rs.n, rows = rs.rows, dim = rs.dim;
    const std::vector<index_t> ids = ed::with_repeats(random_ids(n, rows, 17 + std::uint64_t(n) * 31 + dim));
    const std::string sh = "n=" + std::to_string(n) + " rows=" + std::to_string(rows) + " dim=" + std::to_string(dim);
    OpCase c;
    c.op = "gather_rows";
    c.shape = sh;
    c.in = {{rows * dim}};
    c.out = {n * dim};
    c.bench = rs.bench;
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { k::gather_rows(dev, b.out[0].data(), b.in[0].data(), ids.data(), n, dim); },
        [=](auto dev, auto& b) {
          std::vector<std::uint8_t> flags(static_cast<std::size_t>(rows), 0);
          k::scatter_add_rows(dev, b.din[0].data(), flags.data(), b.dout[0].data(), ids.data(), n, dim);
        }));

    OpCase s;
    s.op = "scatter_add_rows";
    s.shape = sh;
    s.in = {{n * dim}};
    s.out = {rows * dim, rows};  // grad (accumulated into), touched flags as T
    s.random_out_init = true;
    s.bench = rs.bench;
    v.push_back(make_case(
        s,
        [=](auto dev, auto& b) {
          std::vector<std::uint8_t> flags = ed::initial_flags(rows);
          k::scatter_add_rows(dev, b.out[0].data(), flags.data(), b.in[0].data(), ids.data(), n, dim);
          ed::flags_out(b.out[1], flags);
        },
        [=](auto dev, auto& b) { k::gather_rows(dev, b.din[0].data(), b.dout[0].data(), ids.data(), n, dim); }));
    if (n == 50 && dim == 17) {  // touched == nullptr is accepted
      s.shape = sh + " no flags";
      s.out = {rows * dim};
      v.push_back(make_case(
          s,
          [=](auto dev, auto& b) {
            k::scatter_add_rows(dev, b.out[0].data(), nullptr, b.in[0].data(), ids.data(), n, dim);
          },
          [=](auto dev, auto& b) { k::gather_rows(dev, b.din[0].data(), b.dout[0].data(), ids.data(), n, dim); }));
    }
  }

  // ---- embedding_bag_forward / embedding_bag_backward ---------------------------
  // Inputs: table (rows*dim) and, when weighted, weights (n). The backward
  // fills din[table] (grad_table) and din[weights] (dweights).
  struct Bags { std::string name; std::vector<index_t> lengths; index_t rows; };
  const Bags mixed{"B=7 lens 3,0,1,5,0,2,4", {3, 0, 1, 5, 0, 2, 4}, 6};  // empty, length 1, repeats
  const Bags none{"B=0", {}, 5};
  const Bags empty{"B=3 all empty", {0, 0, 0}, 5};
  Bags large{"B=2048 ~20 per bag", std::vector<index_t>(2048), 5000};
  {
    const std::vector<index_t> r = random_ids(2048, 21, 99);
    for (std::size_t i = 0; i < large.lengths.size(); ++i) large.lengths[i] = 10 + r[i];  // 10..30
  }
  struct BagRow { const Bags* bags; index_t dim; bool mean, weighted, bench; };
  std::vector<BagRow> bag_rows;
  for (index_t dim : dims)
    for (bool mean : {false, true})
      for (bool weighted : {false, true}) bag_rows.push_back({&mixed, dim, mean, weighted, false});
  for (const Bags* bs : {&none, &empty}) {
    bag_rows.push_back({bs, 17, false, false, false});
    bag_rows.push_back({bs, 17, true, true, false});
  }
  bag_rows.push_back({&large, 64, false, false, true});
  bag_rows.push_back({&large, 64, true, true, true});
  for (const BagRow& br : bag_rows) {
    const index_t dim = br.dim;
    const bool mean = br.mean, weighted = br.weighted;
    const std::vector<index_t> offsets = ed::offsets_of(br.bags->lengths);
    const index_t B = index_t(br.bags->lengths.size()), n = offsets.back(), rows = br.bags->rows;
    const std::vector<index_t> ids = ed::with_repeats(random_ids(n, rows, 5 + std::uint64_t(n) * 7 + dim));
    OpCase c;
    c.op = "embedding_bag_forward";
    c.shape = br.bags->name + " rows=" + std::to_string(rows) + " dim=" + std::to_string(dim) +
              (mean ? " mean" : " sum") + (weighted ? " weighted" : "");
    c.in = {{rows * dim}};
    if (weighted) c.in.push_back({n, true, -1.5, 1.5});
    c.out = {B * dim};
    c.bench = br.bench;
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          k::embedding_bag_forward(dev, b.out[0].data(), b.in[0].data(), ids.data(), offsets.data(),
                                   weighted ? b.in[1].data() : nullptr, B, dim, mean);
        },
        [=](auto dev, auto& b) {
          std::vector<std::uint8_t> flags(static_cast<std::size_t>(rows), 0);
          k::embedding_bag_backward(dev, b.din[0].data(), flags.data(), weighted ? b.din[1].data() : nullptr,
                                    b.dout[0].data(), b.in[0].data(), ids.data(), offsets.data(),
                                    weighted ? b.in[1].data() : nullptr, B, n, dim, mean);
        }));

    // The backward on its own, every output compared across backends:
    // grad_table (accumulated into), dweights (also without weights: the
    // derivative at weights 1) and the touched flags.
    if (br.bench || dim != 17 || (br.bags == &empty)) continue;
    OpCase g;
    g.op = "embedding_bag_backward";
    g.shape = c.shape;
    g.in = {{B * dim, false}, {rows * dim, false}, {n, false, -1.5, 1.5}};  // dy, table, weights
    g.out = {rows * dim, n, rows};
    g.random_out_init = true;
    v.push_back(make_case(
        g,
        [=](auto dev, auto& b) {
          std::vector<std::uint8_t> flags = ed::initial_flags(rows);
          k::embedding_bag_backward(dev, b.out[0].data(), flags.data(), b.out[1].data(), b.in[0].data(),
                                    b.in[1].data(), ids.data(), offsets.data(), weighted ? b.in[2].data() : nullptr,
                                    B, n, dim, mean);
          ed::flags_out(b.out[2], flags);
        },
        nullptr));
  }
  // ---- embedding_bag_backward_adam: the fused backward + lazy Adam ----------------
  // Inputs: w, m, v (rows*dim; v >= 0), dy (B*dim) and, when weighted,
  // weights (n); outputs: w, m, v (copies of the inputs, updated in place)
  // and the returned flag (as T). The double reference is the unfused
  // composition (embedding_bag_backward into a zero gradient, then
  // adam_update_rows on the touched rows), so each backend's row checks
  // fused == unfused. The tables have more rows than the batch names: the
  // untouched rows must come back unchanged (lazy Adam).
  const Bags fused_mixed{"B=7 lens 3,0,1,5,0,2,4", {3, 0, 1, 5, 0, 2, 4}, 16};  // empty bags, repeats in and across bags
  struct FusedRow { const Bags* bags; index_t dim; bool mean, weighted, decoupled, bench; };
  std::vector<FusedRow> fused_rows;
  for (index_t dim : {index_t(1), index_t(17), index_t(64)})
    for (bool mean : {false, true})
      for (bool weighted : {false, true})
        for (bool decoupled : {false, true}) fused_rows.push_back({&fused_mixed, dim, mean, weighted, decoupled, false});
  fused_rows.push_back({&none, 17, true, true, false, false});
  fused_rows.push_back({&empty, 17, false, false, true, false});
  fused_rows.push_back({&large, 64, true, true, false, true});
  for (const FusedRow& fr : fused_rows) {
    const index_t dim = fr.dim;
    const bool mean = fr.mean, weighted = fr.weighted, decoupled = fr.decoupled;
    const std::vector<index_t> offsets = ed::offsets_of(fr.bags->lengths);
    const index_t B = index_t(fr.bags->lengths.size()), n = offsets.back(), rows = fr.bags->rows;
    const std::vector<index_t> ids = ed::with_repeats(random_ids(n, rows, 11 + std::uint64_t(n) * 13 + dim));
    OpCase c;
    c.op = "embedding_bag_backward_adam";
    c.shape = fr.bags->name + " rows=" + std::to_string(rows) + " dim=" + std::to_string(dim) +
              (mean ? " mean" : " sum") + (weighted ? " weighted" : "") + (decoupled ? " adamw" : " adam+l2");
    c.in = {{rows * dim, false}, {rows * dim, false}, {rows * dim, false, 0, 1}, {B * dim, false}};  // w, m, v, dy
    if (weighted) c.in.push_back({n, false, -1.5, 1.5});
    c.out = {rows * dim, rows * dim, rows * dim, 1};
    c.bench = fr.bench;
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          for (int j = 0; j < 3; ++j) b.out[j] = b.in[j];
          k::AdamStep<T> st;
          st.lr = T(0.01);
          st.weight_decay = T(decoupled ? 0.1 : 0.01);
          st.decoupled = decoupled;
          st.bias_correction1 = T(1 - std::pow(0.9, 3));
          st.bias_correction2 = T(1 - std::pow(0.999, 3));
          const bool ok = k::embedding_bag_backward_adam(dev, b.out[0].data(), b.out[1].data(), b.out[2].data(),
                                                         b.in[3].data(), ids.data(), offsets.data(),
                                                         weighted ? b.in[4].data() : nullptr, B, n, dim, mean, st);
          b.out[3][0] = T(ok ? 1 : 0);
        },
        nullptr));
  }
  return v;
}

}  // namespace optable
