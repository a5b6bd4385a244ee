// Op-table rows of the retrieval kernels (kernels/retrieval.hpp):
// topk_inner_product. The table and query values are rounded to integers in
// [-4, 4], so every dot product is exact in float whatever the order of its
// additions: every backend must return the reference's rows exactly, and the
// many equal scores check the tie rule (lower row first), across the cpu
// kernel's chunks of 16384 rows too. Outputs: the rows (as T) and the
// scores; a slot past the candidates (row -1, score -inf) reads back as row
// -1 and score -1e6 so that the comparison stays finite.
#pragma once

#include <limits>
#include <type_traits>

#include <mtrec/kernels/mips.hpp>

#include "ops/op_table.hpp"

namespace optable {

inline std::vector<OpCase> retrieval_cases() {
  namespace k = mtrec::kernels;
  std::vector<OpCase> v;
  struct Row {
    index_t N, dim, k, n_exclude;
    bool bench;
  };
  for (const Row& r : {Row{0, 4, 3, 0, false}, Row{5, 1, 10, 2, false}, Row{37, 17, 5, 0, false},
                       Row{37, 17, 37, 6, false}, Row{40000, 64, 100, 50, false}, Row{1 << 18, 64, 100, 20, true}}) {
    // ascending unique excluded rows
    std::vector<index_t> ex = random_ids(r.n_exclude * 2, std::max<index_t>(r.N, 1), 31 + std::uint64_t(r.N));
    std::sort(ex.begin(), ex.end());
    ex.erase(std::unique(ex.begin(), ex.end()), ex.end());
    if (index_t(ex.size()) > r.n_exclude) ex.resize(std::size_t(r.n_exclude));
    if (r.N == 0) ex.clear();
    OpCase c;
    c.op = "topk_inner_product";
    c.shape = "N=" + std::to_string(r.N) + " dim=" + std::to_string(r.dim) + " k=" + std::to_string(r.k) +
              " exclude=" + std::to_string(ex.size());
    c.in = {{r.N * r.dim, false}, {r.dim, false}};  // table, query
    c.out = {r.k, r.k};                             // rows, scores
    c.bench = r.bench;
    const index_t N = r.N, dim = r.dim, kk = r.k;
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_T;
          std::vector<T> table(b.in[0]), q(b.in[1]);
          for (T& x : table) x = std::round(x * T(4));
          for (T& x : q) x = std::round(x * T(4));
          std::vector<index_t> rows(static_cast<std::size_t>(kk), -7);
          std::vector<T> scores(static_cast<std::size_t>(kk), T(-7));
          k::topk_inner_product(dev, rows.data(), scores.data(), table.data(), N, dim, q.data(), kk, ex.data(),
                                index_t(ex.size()));
          for (index_t i = 0; i < kk; ++i) {
            b.out[0][std::size_t(i)] = T(rows[std::size_t(i)]);
            b.out[1][std::size_t(i)] = rows[std::size_t(i)] < 0 ? T(-1e6) : scores[std::size_t(i)];
          }
        },
        nullptr));
  }
  // mips_augment and first_nonfinite (kernels/mips.hpp): host-only kernels
  // of serve/hnsw.hpp, so the Fake and Cuda columns run the reference code;
  // cpu must match the reference exactly (norms in double, row by row).
  for (const index_t N : {0, 1, 7, 3000})
    for (const index_t dim : {1, 5, 64}) {
      OpCase c;
      c.op = "mips_augment";
      c.shape = "N=" + std::to_string(N) + " dim=" + std::to_string(dim);
      c.in = {{N * dim, false}};
      c.out = {N * (dim + 1), 1};  // augmented rows, R^2
      c.nmse_tol = 1e-12;          // float against the double run: rounding only
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_T;
            using D = std::decay_t<decltype(dev)>;
            const double r2 = std::is_same<D, mtrec::Cpu>::value
                                  ? k::mips_augment(mtrec::kernels::cpu, b.out[0].data(), b.in[0].data(), N, dim)
                                  : k::mips_augment(mtrec::kernels::reference, b.out[0].data(), b.in[0].data(), N, dim);
            b.out[1][0] = T(r2);
          },
          nullptr));
    }
  for (const index_t n : {0, 1, 100, 50000}) {
    std::vector<index_t> bads = {-1};
    for (const index_t b : {index_t(0), n / 2, n - 1, index_t(40000)})
      if (b < n && std::find(bads.begin(), bads.end(), b) == bads.end()) bads.push_back(b);
    for (const index_t bad : bads) {
      OpCase c;
      c.op = "first_nonfinite";
      c.shape = "n=" + std::to_string(n) + " bad=" + std::to_string(bad);
      c.in = {{n, false}};
      c.out = {1};
      c.nmse_tol = 0;
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_T;
            using D = std::decay_t<decltype(dev)>;
            std::vector<T> x(b.in[0]);
            if (bad >= 0) x[std::size_t(bad)] = std::numeric_limits<T>::quiet_NaN();
            if (bad >= 0 && bad + 3 < n) x[std::size_t(bad + 3)] = std::numeric_limits<T>::infinity();  // a later one
            const index_t got = std::is_same<D, mtrec::Cpu>::value
                                    ? k::first_nonfinite(mtrec::kernels::cpu, x.data(), n)
                                    : k::first_nonfinite(mtrec::kernels::reference, x.data(), n);
            b.out[0][0] = T(got);
          },
          nullptr));
    }
  }
  return v;
}

}  // namespace optable
