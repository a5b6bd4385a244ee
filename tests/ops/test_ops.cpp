// The op table (tests/ops/cases.hpp), checked (plain loops with INFO, not
// sections: Catch2 re-runs a test case once per section):
//  * every backend, in float, against `reference` run in double: NMSE of
//    every output (forward) and every input gradient (backward) within the
//    row's nmse_tol;
//  * every op with a backward: the double `reference` gradient of
//    L = sum_j <out_j, dout_j> against central finite differences;
//  * every backend twice in a row gives the same bits (no state leaks).
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <sstream>

#include "ops/cases.hpp"

using namespace optable;

namespace {

template <class T>
std::vector<std::vector<double>> to_double(const std::vector<std::vector<T>>& v) {
  std::vector<std::vector<double>> r;
  for (const auto& x : v) r.emplace_back(x.begin(), x.end());
  return r;
}

// L = sum_j <out_j, dout_j> of a fresh double forward at inputs `in`.
double loss_at(const OpCase& c, const Data& d, const std::vector<std::vector<double>>& in) {
  Bufs<double> b = make_bufs<double>(c, d);
  b.in = in;
  c.fwd_d(b);
  double L = 0;
  for (std::size_t j = 0; j < b.out.size(); ++j)
    for (std::size_t i = 0; i < b.out[j].size(); ++i) L += b.out[j][i] * d.dout[j][i];
  return L;
}

}  // namespace

TEST_CASE("op table: the table is well formed", "[ops]") {
  const auto cases = all_cases();
  std::set<std::string> names, ops;
  for (const auto& c : cases) {
    INFO(c.name());
    CHECK(names.insert(c.name()).second);  // every row is distinct
    ops.insert(c.op);
    CHECK(c.fwd_f);
    CHECK(c.fwd_d);
    CHECK(c.nmse_tol <= 1e-4);
  }
  INFO("ops: " << ops.size() << ", rows: " << cases.size());
  CHECK(cases.size() >= 10);
}

TEST_CASE("op table: every backend agrees with reference in double", "[ops]") {
  for (const auto& c : all_cases()) {
    const Data d = case_data(c);
    Bufs<double> ref = make_bufs<double>(c, d);
    c.fwd_d(ref);
    if (c.has_backward()) c.bwd_d(ref);
    for (Dev dev : all_devices()) {
      INFO(c.name() << " on " << dev_name(dev));
      {
        Bufs<float> b = make_bufs<float>(c, d);
        c.fwd_f(dev, b);
        for (std::size_t j = 0; j < b.out.size(); ++j) {
          INFO("output " << j);
          CHECK(nmse(b.out[j], ref.out[j]) <= c.nmse_tol);
        }
        if (c.has_backward()) {
          c.bwd_f(dev, b);
          for (std::size_t j = 0; j < b.din.size(); ++j) {
            INFO("gradient of input " << j);
            CHECK(nmse(b.din[j], ref.din[j]) <= c.nmse_tol);
          }
        }
        // The same call again gives the same bits.
        Bufs<float> b2 = make_bufs<float>(c, d);
        c.fwd_f(dev, b2);
        if (c.has_backward()) c.bwd_f(dev, b2);
        CHECK(b2.out == b.out);
        CHECK(b2.din == b.din);
      }
    }
  }
}

TEST_CASE("op table: every backward matches finite differences in double", "[ops][gradcheck]") {
  for (const auto& c : all_cases()) {
    if (!c.has_backward()) continue;
    INFO(c.name());
    {
      const Data d = case_data(c);
      Bufs<double> b = make_bufs<double>(c, d);
      c.fwd_d(b);
      c.bwd_d(b);
      int checked = 0;
      for (std::size_t j = 0; j < c.in.size(); ++j) {
        if (!c.in[j].diff) continue;
        const index_t n = c.in[j].size;
        const index_t stride = std::max<index_t>(1, n / (c.bench ? 4 : 48));  // ~48 positions per input, 4 on bench-sized rows
        for (index_t i = 0; i < n; i += stride) {
          auto in = d.in;
          const double h = 1e-6 * std::max(1.0, std::fabs(in[j][std::size_t(i)]));
          in[j][std::size_t(i)] += h;
          const double Lp = loss_at(c, d, in);
          in[j][std::size_t(i)] -= 2 * h;
          const double Lm = loss_at(c, d, in);
          const double num = (Lp - Lm) / (2 * h);
          const double ana = b.din[j][std::size_t(i)];
          INFO("input " << j << " element " << i << ": analytic " << ana << " numeric " << num);
          CHECK(std::fabs(ana - num) <= c.fd_atol + c.fd_rtol * std::fabs(num));
          ++checked;
        }
      }
      (void)checked;
    }
  }
}
