// Op-table rows for include/mtrec/kernels/mixture.hpp (gate mix, column
// copies) and the plain copy/fill kernels the model orchestration uses.
#pragma once

#include <algorithm>
#include <limits>

#include "ops/op_table.hpp"

namespace optable {

inline std::vector<OpCase> model_cases() {
  namespace k = mtrec::kernels;
  std::vector<OpCase> v;

  // ---- gate mix: out = sum_m P[:, m] E_m ----------------------------------------
  struct GM { index_t B, M, De; bool bench; };
  for (GM g : {GM{0, 3, 8, false}, GM{1, 1, 1, false}, GM{5, 3, 17, false}, GM{9, 4, 16, false},
               GM{7, 6, 33, false}, GM{1024, 4, 64, true}}) {
    const index_t B = g.B, M = g.M, De = g.De;
    OpCase c;
    c.op = "gate_mix";
    c.shape = "B=" + std::to_string(B) + " M=" + std::to_string(M) + " De=" + std::to_string(De);
    // inputs: probs (B,M), then the M experts (B,De)
    c.in.push_back({B * M, true, 0, 1});
    for (index_t m = 0; m < M; ++m) c.in.push_back({B * De});
    c.out = {B * De};
    c.bench = g.bench;
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          std::vector<const T*> e;
          for (index_t m = 0; m < M; ++m) e.push_back(b.in[std::size_t(1 + m)].data());
          k::gate_mix_forward(dev, b.out[0].data(), e.data(), b.in[0].data(), B, M, De);
        },
        [=](auto dev, auto& b) {
          OPT_T;
          std::vector<const T*> e;
          std::vector<T*> de;
          for (index_t m = 0; m < M; ++m) {
            e.push_back(b.in[std::size_t(1 + m)].data());
            de.push_back(b.din[std::size_t(1 + m)].data());
          }
          k::gate_mix_backward(dev, de.data(), b.din[0].data(), b.dout[0].data(), e.data(), b.in[0].data(), B, M, De);
        }));
  }

  // ---- copy_columns: a (rows, width) block between two strided matrices ---------
  struct CC { index_t rows, ld_dst, dst_col, ld_src, src_col, width; bool bench; };
  for (CC g : {CC{0, 8, 2, 4, 0, 4, false}, CC{1, 1, 0, 1, 0, 1, false}, CC{5, 40, 7, 17, 0, 17, false},
               CC{33, 64, 16, 80, 31, 33, false}, CC{4096, 256, 64, 64, 0, 64, true}}) {
    OpCase c;
    c.op = "copy_columns";
    c.shape = "rows=" + std::to_string(g.rows) + " dst=" + std::to_string(g.ld_dst) + "@" + std::to_string(g.dst_col) +
              " src=" + std::to_string(g.ld_src) + "@" + std::to_string(g.src_col) + " width=" + std::to_string(g.width);
    c.in = {{g.rows * g.ld_src}};
    c.out = {g.rows * g.ld_dst};
    c.random_out_init = true;  // columns outside the block stay as they were
    c.bench = g.bench;
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          k::copy_columns(dev, b.out[0].data(), g.ld_dst, g.dst_col, b.in[0].data(), g.ld_src, g.src_col, g.rows,
                          g.width);
        },
        [=](auto dev, auto& b) {
          // d src block = d dst block (the gradient of a copy), taken back out
          k::copy_columns(dev, b.din[0].data(), g.ld_src, g.src_col, b.dout[0].data(), g.ld_dst, g.dst_col, g.rows,
                          g.width);
        }));
  }

  // ---- copy / fill ------------------------------------------------------------------
  for (index_t n : {index_t(0), index_t(1), index_t(17), index_t(4096)}) {
    OpCase c;
    c.op = "copy";
    c.shape = "n=" + std::to_string(n);
    c.in = {{n}};
    c.out = {n};
    c.bench = n == 4096;
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { k::copy(dev, b.out[0].data(), b.in[0].data(), n); },
        [=](auto dev, auto& b) { k::copy(dev, b.din[0].data(), b.dout[0].data(), n); }));
    c.op = "fill";
    c.in = {};
    c.random_out_init = true;
    c.bench = false;
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { OPT_T; k::fill(dev, b.out[0].data(), n, T(-0.25)); }, nullptr));
  }
  // ---- row-list kernels (kernels/rows.hpp): two tables in one block ----------
  struct RS { index_t rows0, dim0, rows1, dim1, n0, n1; bool bench; };
  for (RS g : {RS{4, 3, 5, 17, 0, 0, false}, RS{10, 1, 7, 16, 3, 7, false}, RS{50, 33, 20, 8, 17, 1, false},
               RS{20000, 64, 5000, 32, 4096, 1024, true}}) {
    const index_t off1 = g.rows0 * g.dim0 + 5, size = off1 + g.rows1 * g.dim1;  // 5 elements of gap
    // distinct rows, in a scrambled first-touch order
    auto pick = [](index_t rows, index_t n, std::uint64_t seed) {
      std::vector<index_t> r;
      for (index_t i = 0; i < rows && index_t(r.size()) < n; ++i) r.push_back((i * 7 + index_t(seed)) % rows);
      std::sort(r.begin(), r.end());
      r.erase(std::unique(r.begin(), r.end()), r.end());
      std::reverse(r.begin(), r.end());
      return r;
    };
    const std::vector<index_t> r0 = pick(g.rows0, g.n0, 3), r1 = pick(g.rows1, g.n1, 1);
    const std::vector<mtrec::RowSet> sets = {mtrec::RowSet{0, nullptr, index_t(r0.size()), g.dim0},
                                             mtrec::RowSet{off1, nullptr, index_t(r1.size()), g.dim1}};
    auto with_rows = [r0, r1, sets]() {
      std::vector<mtrec::RowSet> s = sets;
      s[0].rows = r0.data();
      s[1].rows = r1.data();
      return s;
    };
    const std::string sh = "tables " + std::to_string(g.rows0) + "x" + std::to_string(g.dim0) + " (" +
                           std::to_string(r0.size()) + " rows), " + std::to_string(g.rows1) + "x" +
                           std::to_string(g.dim1) + " (" + std::to_string(r1.size()) + " rows)";
    OpCase c;
    c.shape = sh;
    c.bench = g.bench;
    c.op = "adam_update_rows";
    c.in = {{size, false}, {size, false}, {size, false, 0, 1}, {size, false}};  // w, m, v, g
    c.out = {size, size, size};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          for (int j = 0; j < 3; ++j) b.out[j] = b.in[j];
          k::AdamStep<T> st;
          st.lr = T(0.01);
          st.weight_decay = T(0.01);
          st.bias_correction1 = T(1 - std::pow(0.9, 2));
          st.bias_correction2 = T(1 - std::pow(0.999, 2));
          const auto s = with_rows();
          k::adam_update_rows(dev, b.out[0].data(), b.out[1].data(), b.out[2].data(), b.in[3].data(), s.data(),
                              index_t(s.size()), st);
        },
        nullptr));
    c.op = "sgd_update_rows";
    c.in = {{size, false}, {size, false}, {size, false}};
    c.out = {size, size};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          b.out[0] = b.in[0];
          b.out[1] = b.in[1];
          const auto s = with_rows();
          k::sgd_update_rows(dev, b.out[0].data(), b.out[1].data(), b.in[2].data(), s.data(), index_t(s.size()),
                             T(0.1), T(0.9), T(0.001), true);
        },
        nullptr));
    c.op = "sum_squares_rows";
    c.in = {{size}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          const auto s = with_rows();
          b.out[0][0] = T(k::sum_squares_rows(dev, b.in[0].data(), s.data(), index_t(s.size())));
        },
        nullptr));
    c.op = "scale_rows";
    c.out = {size};
    c.bench = false;
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          b.out[0] = b.in[0];
          const auto s = with_rows();
          k::scale_rows(dev, b.out[0].data(), s.data(), index_t(s.size()), T(-1.5));
        },
        nullptr));
    c.op = "fill_rows";
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          b.out[0] = b.in[0];
          const auto s = with_rows();
          k::fill_rows(dev, b.out[0].data(), s.data(), index_t(s.size()), T(0));
        },
        nullptr));
    c.op = "all_finite_rows";
    c.in = {{size, false}};
    for (int where : {-1, 0, 1}) {  // no NaN; a NaN in a listed row of table `where`
      OpCase d = c;
      d.shape = sh + (where < 0 ? " finite" : " nan in table " + std::to_string(where));
      v.push_back(make_case(
          d,
          [=](auto dev, auto& b) {
            OPT_T;
            const auto s = with_rows();
            // a NaN outside every listed row never counts
            b.in[0][std::size_t(g.rows0 * g.dim0 + 2)] = std::numeric_limits<T>::quiet_NaN();
            if (where >= 0 && s[std::size_t(where)].n > 0)
              b.in[0][std::size_t(s[std::size_t(where)].offset + s[std::size_t(where)].rows[0] * s[std::size_t(where)].dim)] =
                  std::numeric_limits<T>::quiet_NaN();
            b.out[0][0] = T(k::all_finite_rows(dev, b.in[0].data(), s.data(), index_t(s.size())) ? 1 : 0);
          },
          nullptr));
    }
  }
  return v;
}

}  // namespace optable
