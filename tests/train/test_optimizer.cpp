// Optimizers, learning-rate schedules and gradient clipping.
//
// References are independent of the code under test: a scalar double
// implementation of PyTorch's SGD / Adam / AdamW formulas written below, the
// brute-force norm, hand-computed schedule values, and a few numbers printed
// by PyTorch itself (tools/make_optimizer_fixtures.py, pasted as constants so
// that CI needs no torch). The new kernels (sgd_update, sum_squares, scale)
// are checked cpu vs reference and bitwise across 1 and 2 threads.
#include "support/gradcheck.hpp"

#include <mtrec/train/optimizer.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace mtrec;
using Kind = OptimizerConfig::Kind;

namespace {

// ---- fixtures ------------------------------------------------------------------

// Two dense parameters (sizes not multiples of any vector width, so the
// padding of the flat block is exercised) and one embedding table.
template <class T>
struct Model {
  ParameterStore<T> store;
  ParamId w, b, emb;
  Model(index_t rows = 11, index_t dim = 7, std::uint64_t seed = 3) : store(seed) {
    w = store.add("w", {5, 7}, Init::uniform(-1, 1));
    b = store.add("b", {3}, Init::uniform(-1, 1));
    emb = store.add("emb", {rows, dim}, Init::uniform(-1, 1), ParamKind::Table);
    store.allocate();
  }
};

// Writes the gradients of step `s`: every dense element, and the given rows
// of every table (marked touched; rows beyond a table's size are skipped for
// it). Values depend on (s, param, row) only.
template <class T>
void set_grads(ParameterStore<T>& store, int s, const std::vector<index_t>& rows, double scale = 1.0) {
  store.zero_grad();
  for (int id = 0; id < store.count(); ++id) {
    const ParamInfo& p = store.info(id);
    if (p.kind == ParamKind::Dense) {
      testing::fill_uniform(store.grad(id), p.size, 1000 + 17 * std::uint64_t(s) + std::uint64_t(id), -scale, scale);
      continue;
    }
    const index_t dim = p.shape[1];
    for (index_t r : rows) {
      if (r >= p.shape[0]) continue;
      testing::fill_uniform(store.grad(id) + r * dim, dim, 5000 + 131 * std::uint64_t(s) + 7 * std::uint64_t(r) + id,
                            -scale, scale);
      store.touched(id).mark(r);
    }
  }
}

// Which flat indices a step updates: all dense elements, and the touched rows
// of each table (lazy) or all its rows (dense semantics).
template <class T>
std::vector<index_t> updated_indices(const ParameterStore<T>& store, bool lazy) {
  std::vector<index_t> out;
  for (int id = 0; id < store.count(); ++id) {
    const ParamInfo& p = store.info(id);
    if (p.kind == ParamKind::Dense || !lazy) {
      for (index_t i = 0; i < p.size; ++i) out.push_back(p.offset + i);
      continue;
    }
    const index_t dim = p.shape[1];
    for (index_t r : store.touched(id).rows)
      for (index_t j = 0; j < dim; ++j) out.push_back(p.offset + r * dim + j);
  }
  return out;
}

// ---- the scalar double reference: PyTorch's formulas, one element at a time ----

struct RefOptimizer {
  OptimizerConfig c;  // only read as a bag of numbers
  std::vector<double> w, m, v, buf;
  std::vector<char> has_buf;
  long t = 0;

  template <class T>
  RefOptimizer(const ParameterStore<T>& store, const OptimizerConfig& cfg) : c(cfg) {
    const index_t n = store.size();
    w.assign(store.values(), store.values() + n);
    m.assign(std::size_t(n), 0.0);
    v.assign(std::size_t(n), 0.0);
    buf.assign(std::size_t(n), 0.0);
    has_buf.assign(std::size_t(n), 0);
  }

  template <class T>
  void step(const ParameterStore<T>& store, const std::vector<index_t>& idx, double lr) {
    ++t;
    const double bc1 = 1 - std::pow(c.beta1, double(t)), bc2 = 1 - std::pow(c.beta2, double(t));
    for (index_t i : idx) {
      const std::size_t k = std::size_t(i);
      double g = double(store.grads()[i]);
      if (c.kind == Kind::SGD) {
        // torch.optim.SGD, dampening 0
        g = g + c.weight_decay * w[k];
        if (c.momentum != 0) {
          buf[k] = has_buf[k] ? c.momentum * buf[k] + g : g;  // torch clones g on first use
          has_buf[k] = 1;
          g = c.nesterov ? g + c.momentum * buf[k] : buf[k];
        }
        w[k] = w[k] - lr * g;
        continue;
      }
      // torch.optim.Adam / AdamW (amsgrad off)
      if (c.kind == Kind::AdamW)
        w[k] = w[k] * (1 - lr * c.weight_decay);
      else
        g = g + c.weight_decay * w[k];
      m[k] = c.beta1 * m[k] + (1 - c.beta1) * g;
      v[k] = c.beta2 * v[k] + (1 - c.beta2) * g * g;
      const double step_size = lr / bc1;
      const double denom = std::sqrt(v[k]) / std::sqrt(bc2) + c.eps;
      w[k] = w[k] - step_size * m[k] / denom;
    }
  }
};

template <class T>
double max_rel_err(const T* got, const std::vector<double>& want, index_t n) {
  double e = 0;
  for (index_t i = 0; i < n; ++i)
    e = std::max(e, std::fabs(double(got[i]) - want[std::size_t(i)]) / (1 + std::fabs(want[std::size_t(i)])));
  return e;
}

template <class T>
const T* state_of(const Optimizer<T>& opt, const std::string& name) {
  for (const auto& s : opt.state())
    if (s.first == name) return s.second.data;
  return nullptr;
}

// Rows touched in step s (varying, overlapping, one row never touched).
std::vector<index_t> rows_of_step(int s) {
  switch (s % 4) {
    case 0: return {2, 5, 9};
    case 1: return {5, 0};
    case 2: return {};
    default: return {9, 1, 2, 3, 4, 6, 7, 8, 10};  // everything but 5
  }
}

template <class T>
void check_against_reference(const OptimizerConfig& cfg, double tol) {
  Model<T> model;
  ParameterStore<T>& store = model.store;
  Optimizer<T> opt(store, cfg);
  RefOptimizer ref(store, cfg);
  const double lr_factor[] = {1.0, 2.0, 0.5, 1.5, 0.25, 1.0, 0.75};
  for (int s = 0; s < 7; ++s) {
    set_grads(store, s, rows_of_step(s));
    const double lr = cfg.lr * lr_factor[s];
    ref.step(store, updated_indices(store, cfg.lazy_tables), lr);
    opt.step(lr);
  }
  const index_t n = store.size();
  CAPTURE(OptimizerConfig::kind_name(cfg.kind), cfg.nesterov, cfg.momentum, cfg.lazy_tables, sizeof(T));
  CHECK(opt.step_count() == 7);
  CHECK(max_rel_err(store.values(), ref.w, n) <= tol);
  if (cfg.kind == Kind::SGD) {
    if (cfg.momentum != 0) {
      REQUIRE(state_of(opt, "optimizer.momentum"));
      CHECK(max_rel_err(state_of(opt, "optimizer.momentum"), ref.buf, n) <= tol);
    } else {
      CHECK(opt.state().empty());
    }
  } else {
    REQUIRE(state_of(opt, "optimizer.m"));
    REQUIRE(state_of(opt, "optimizer.v"));
    CHECK(max_rel_err(state_of(opt, "optimizer.m"), ref.m, n) <= tol);
    CHECK(max_rel_err(state_of(opt, "optimizer.v"), ref.v, n) <= tol);
  }
}

std::vector<OptimizerConfig> reference_configs() {
  std::vector<OptimizerConfig> out;
  OptimizerConfig adam = OptimizerConfig::adam(0.01, 0.1);
  adam.beta1 = 0.8;
  adam.beta2 = 0.99;
  adam.eps = 1e-6;
  out.push_back(adam);
  out.push_back(OptimizerConfig::adamw(0.02, 0.05));
  out.push_back(OptimizerConfig::sgd(0.1, 0.9, 0.01));
  out.push_back(OptimizerConfig::sgd(0.1, 0.8, 0.02, /*nesterov=*/true));
  out.push_back(OptimizerConfig::sgd(0.05, 0.0, 0.03));
  return out;
}

}  // namespace

// ---- kernels -------------------------------------------------------------------------

namespace {
const index_t kKernelSizes[] = {1, 3, 7, 17, 33, 100, 40001};

template <class T>
std::vector<T> uniform_vec(index_t n, std::uint64_t seed, double lo = -1, double hi = 1) {
  std::vector<T> v(static_cast<std::size_t>(n));
  testing::fill_uniform(v.data(), n, seed, lo, hi);
  return v;
}

template <class T>
double opt_max_rel_diff(const std::vector<T>& x, const std::vector<T>& y) {
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    m = std::max(m, std::fabs(double(x[i]) - double(y[i])) / (1.0 + std::fabs(double(y[i]))));
  return m;
}

template <class T>
void sgd_kernel_cases() {
  const double tol = std::is_same<T, float>::value ? 1e-6 : 1e-14;
  struct Case {
    double momentum, wd;
    bool nesterov;
  };
  for (const Case c : {Case{0.0, 0.0, false}, Case{0.0, 0.1, false}, Case{0.9, 0.01, false}, Case{0.7, 0.05, true}})
    for (index_t n : kKernelSizes) {
      const std::vector<T> g = uniform_vec<T>(n, 1), w0 = uniform_vec<T>(n, 2), b0 = uniform_vec<T>(n, 3);
      std::vector<T> wr = w0, br = b0, w1 = w0, b1 = b0, w2 = w0, b2 = b0;
      const bool mom = c.momentum != 0;
      auto run = [&](auto dev, std::vector<T>& w, std::vector<T>& b) {
        // With momentum 0 the buffer must not be touched: pass null.
        kernels::sgd_update(dev, w.data(), mom ? b.data() : nullptr, g.data(), n, T(0.05), T(c.momentum), T(c.wd),
                            c.nesterov);
      };
      run(kernels::reference, wr, br);
      testing::with_threads(1, [&] { run(kernels::cpu, w1, b1); });
      testing::with_threads(2, [&] { run(kernels::cpu, w2, b2); });
      CAPTURE(n, c.momentum, c.wd, c.nesterov, sizeof(T));
      CHECK(opt_max_rel_diff(w1, wr) <= tol);
      CHECK(opt_max_rel_diff(b1, br) <= tol);
      CHECK(testing::bitwise_equal(w1.data(), w2.data(), n));
      CHECK(testing::bitwise_equal(b1.data(), b2.data(), n));
      if (!mom) CHECK(testing::bitwise_equal(b1.data(), b0.data(), n));
      // The update moved something (the test can fail).
      CHECK(!testing::bitwise_equal(w1.data(), w0.data(), n));
    }
}

template <class T>
void sum_squares_and_scale_cases() {
  // Sizes spanning one chunk, several, and more than one group of 64 chunks.
  std::vector<index_t> sizes(std::begin(kKernelSizes), std::end(kKernelSizes));
  sizes.push_back(2 * 64 * 16384 + 123);
  for (index_t n : sizes) {
    const std::vector<T> x = uniform_vec<T>(n, 11, -3, 3);
    const double ref = kernels::sum_squares(kernels::reference, x.data(), n);
    double one = 0, two = 0;
    testing::with_threads(1, [&] { one = kernels::sum_squares(kernels::cpu, x.data(), n); });
    testing::with_threads(2, [&] { two = kernels::sum_squares(kernels::cpu, x.data(), n); });
    // Squares of floats are exact in double: only the summation order
    // differs (the reference's one running sum drifts by ~sqrt(n) ulps).
    CAPTURE(n, sizeof(T), ref, one);
    CHECK(std::fabs(one - ref) <= 1e-11 * ref);
    CHECK(std::memcmp(&one, &two, sizeof(double)) == 0);

    std::vector<T> yr(x.size()), y1 = x, y2 = x;
    kernels::scale(kernels::reference, yr.data(), x.data(), n, T(-0.37));
    // In place (y aliases x), as clip_grad_norm uses it.
    testing::with_threads(1, [&] { kernels::scale(kernels::cpu, y1.data(), y1.data(), n, T(-0.37)); });
    testing::with_threads(2, [&] { kernels::scale(kernels::cpu, y2.data(), y2.data(), n, T(-0.37)); });
    CHECK(testing::bitwise_equal(y1.data(), yr.data(), n));  // one multiply: exact
    CHECK(testing::bitwise_equal(y1.data(), y2.data(), n));
  }
  CHECK(kernels::sum_squares(kernels::cpu, static_cast<const T*>(nullptr), 0) == 0.0);
}
}  // namespace

TEST_CASE("optimizer kernels: sgd_update cpu vs reference, bitwise across threads", "[optimizer][kernels]") {
  sgd_kernel_cases<float>();
  sgd_kernel_cases<double>();
}

TEST_CASE("optimizer kernels: sum_squares and scale cpu vs reference, bitwise across threads",
          "[optimizer][kernels]") {
  sum_squares_and_scale_cases<float>();
  sum_squares_and_scale_cases<double>();
}

// ---- update rules vs the hand-written reference -----------------------------------

TEST_CASE("optimizer: Adam, AdamW, SGD (momentum, nesterov) match the scalar PyTorch formulas", "[optimizer]") {
  for (OptimizerConfig cfg : reference_configs())
    for (bool lazy : {true, false}) {
      cfg.lazy_tables = lazy;
      check_against_reference<double>(cfg, 1e-13);
      check_against_reference<float>(cfg, 2e-6);
    }
}

TEST_CASE("optimizer: PyTorch's own numbers (tools/make_optimizer_fixtures.py)", "[optimizer][torch]") {
  // Generated once by tools/make_optimizer_fixtures.py with torch 1.13 (float64).
  const double w0[6] = {0.5, -1.25, 2.0, 0.0, -0.75, 1.5};
  const double grads[4][6] = {{0.3, -0.2, 0.1, 0.0, 1.5, -0.05},
                              {-0.4, 0.25, 0.0, 0.2, 1.0, 0.3},
                              {0.1, 0.1, -0.3, -0.2, 0.5, -0.6},
                              {0.0, -0.5, 0.2, 0.7, -0.25, 0.05}};
  const double lr_factor[4] = {1.0, 2.0, 1.5, 0.5};
  const double k_adam[4][6] = {
      {0.4900000002857143, -1.2400000003076923, 1.9900000003333334, 0.0, -0.7599999999298246, 1.4900000009999999},
      {0.49108116063185286, -1.2328879316328523, 1.9706044418631825, -0.014882735419234452, -0.7793424652651375,
       1.4725609459727396},
      {0.4889191846245321, -1.2281345028691473, 1.9624302562145375, -0.014157274780748894, -0.7925376175768363,
       1.4720804510000398},
      {0.4880579301013832, -1.2249651767182996, 1.958785180524729, -0.016774881117425033, -0.7955402963825586,
       1.4711053349929892}};
  const double k_adamw[4][6] = {
      {0.4895000003333333, -1.2387500005, 1.9880000009999999, 0.0, -0.7592499999333333, 1.5084999980000005},
      {0.49239120840593814, -1.239527145588635, 1.970622837810954, -0.014882735419234452, -0.7771385423431367,
       1.493004625254764},
      {0.4919722988334016, -1.2423274897022663, 1.9743036146892137, -0.01418267776094081, -0.789377143786128,
       1.4960433678017009},
      {0.49181359939796293, -1.2400006976703188, 1.9732939328299506, -0.01680061911315311, -0.7922247758069586,
       1.496517073280391}};
  const double k_sgd[4][6] = {
      {0.4695, -1.22875, 1.988, 0.0, -0.89925, 1.5035},
      {0.49366099999999996, -1.2380425, 1.962424, -0.04000000000000001, -1.3661015, 1.446793},
      {0.49422918349999995, -1.25745787375, 1.987216564, -0.03694000000000001, -1.7541771102500001, 1.4963455855},
      {0.49415252395824993, -1.237653756938125, 1.9836607249179998, -0.07100353000000001, -1.857222704769875,
       1.5079631883572502}};
  const double k_nesterov[4][6] = {
      {0.44205, -1.209625, 1.9772, 0.0, -1.033575, 1.50665},
      {0.54296021, -1.265603425, 1.95024664, -0.07600000000000001, -1.651432415, 1.3925947300000001},
      {0.5276239326515001, -1.29616488586375, 2.014664139076, -0.0430834, -2.07267491399225, 1.5251725052695002},
      {0.5272661388054312, -1.2526714890225545, 2.0004530688546778, -0.10870169077, -2.1515717671083823,
       1.5323735915988441}};

  struct Case {
    const char* name;
    OptimizerConfig cfg;
    const double (*want)[6];
  };
  const Case cases[] = {{"adam", OptimizerConfig::adam(0.01, 0.1), k_adam},
                        {"adamw", OptimizerConfig::adamw(0.01, 0.1), k_adamw},
                        {"sgd", OptimizerConfig::sgd(0.1, 0.9, 0.01), k_sgd},
                        {"nesterov", OptimizerConfig::sgd(0.1, 0.9, 0.01, true), k_nesterov}};
  for (const Case& c : cases) {
    ParameterStore<double> sd;
    ParameterStore<float> sf;
    const ParamId id = sd.add("w", {6}, Init::zeros());
    sf.add("w", {6}, Init::zeros());
    sd.allocate();
    sf.allocate();
    for (int i = 0; i < 6; ++i) sd.value(id)[i] = w0[i], sf.value(id)[i] = float(w0[i]);
    Optimizer<double> od(sd, c.cfg);
    Optimizer<float> of(sf, c.cfg);
    for (int s = 0; s < 4; ++s) {
      for (int i = 0; i < 6; ++i) sd.grad(id)[i] = grads[s][i], sf.grad(id)[i] = float(grads[s][i]);
      od.step(c.cfg.lr * lr_factor[s]);
      of.step(c.cfg.lr * lr_factor[s]);
      for (int i = 0; i < 6; ++i) {
        CAPTURE(c.name, s, i);
        CHECK(sd.value(id)[i] == Approx(c.want[s][i]).margin(1e-14).epsilon(1e-13));
        CHECK(sf.value(id)[i] == Approx(c.want[s][i]).margin(1e-6).epsilon(1e-6));
      }
      sd.zero_grad();
      sf.zero_grad();
    }
  }
}

// ---- lazy tables ------------------------------------------------------------------------

namespace {
template <class T>
void lazy_equals_dense_on_touched_rows(const OptimizerConfig& base) {
  // Same store, same gradients; one optimizer lazy, one dense.
  Model<T> lazy_m(9, 13), dense_m(9, 13);
  OptimizerConfig lc = base, dc = base;
  lc.lazy_tables = true;
  dc.lazy_tables = false;
  Optimizer<T> lazy(lazy_m.store, lc), dense(dense_m.store, dc);
  const index_t dim = 13;
  const std::vector<index_t> always = {2, 5, 6};
  const index_t once = 8;  // touched in step 0 only
  const std::vector<index_t> never = {0, 1, 3, 4, 7};
  std::vector<T> row8_after_step0(static_cast<std::size_t>(dim));
  const std::vector<T> init(lazy_m.store.values(), lazy_m.store.values() + lazy_m.store.size());
  for (int s = 0; s < 6; ++s) {
    std::vector<index_t> rows = always;
    if (s == 0) rows.push_back(once);
    set_grads(lazy_m.store, s, rows);
    set_grads(dense_m.store, s, rows);
    lazy.step();
    dense.step();
    if (s == 0) {
      const T* r8 = lazy_m.store.value(lazy_m.emb) + once * dim;
      row8_after_step0.assign(r8, r8 + dim);
    }
  }
  const ParameterStore<T>& ls = lazy_m.store;
  const ParameterStore<T>& ds = dense_m.store;
  CAPTURE(OptimizerConfig::kind_name(base.kind), base.weight_decay, sizeof(T));
  // Dense parameters and the always-touched rows: bit for bit, state included.
  CHECK(testing::bitwise_equal(ls.values(), ds.values(), ls.dense_size()));
  for (index_t r : always) {
    CAPTURE(r);
    CHECK(testing::bitwise_equal(ls.value(lazy_m.emb) + r * dim, ds.value(dense_m.emb) + r * dim, dim));
    for (const char* name : {"optimizer.m", "optimizer.v", "optimizer.momentum"}) {
      const T* a = state_of(lazy, name);
      const T* b = state_of(dense, name);
      if (!a) continue;
      const index_t off = ls.info(lazy_m.emb).offset + r * dim;
      CHECK(testing::bitwise_equal(a + off, b + off, dim));
    }
  }
  // Row 8, touched once: lazy leaves it where step 0 put it; dense keeps
  // moving it with the momentum of that one step.
  const T* l8 = ls.value(lazy_m.emb) + once * dim;
  const T* d8 = ds.value(dense_m.emb) + once * dim;
  CHECK(testing::bitwise_equal(l8, row8_after_step0.data(), dim));
  CHECK(!testing::bitwise_equal(d8, row8_after_step0.data(), dim));
  // Rows never touched: exactly unchanged under lazy. Under dense they move
  // only through weight decay (their m, v and momentum stay 0).
  for (index_t r : never) {
    CAPTURE(r);
    const index_t off = ls.info(lazy_m.emb).offset + r * dim;
    CHECK(testing::bitwise_equal(ls.values() + off, init.data() + off, dim));
    const bool dense_moved = !testing::bitwise_equal(ds.values() + off, init.data() + off, dim);
    CHECK(dense_moved == (base.weight_decay != 0));
  }
}

// Every row touched every step: lazy and dense are the same update.
template <class T>
void lazy_equals_dense_when_all_rows_touched(const OptimizerConfig& base) {
  Model<T> a(9, 13), b(9, 13);
  OptimizerConfig lc = base, dc = base;
  lc.lazy_tables = true;
  dc.lazy_tables = false;
  Optimizer<T> lazy(a.store, lc), dense(b.store, dc);
  for (int s = 0; s < 5; ++s) {
    // A different touch order each step: order must not matter.
    std::vector<index_t> rows;
    for (index_t r = 0; r < 9; ++r) rows.push_back((r * 4 + s) % 9);
    set_grads(a.store, s, rows);
    set_grads(b.store, s, rows);
    lazy.step(0.01 * (s + 1));
    dense.step(0.01 * (s + 1));
  }
  CHECK(testing::bitwise_equal(a.store.values(), b.store.values(), a.store.size()));
  const auto sa = lazy.state(), sb = dense.state();
  REQUIRE(sa.size() == sb.size());
  for (std::size_t i = 0; i < sa.size(); ++i)
    CHECK(testing::bitwise_equal(sa[i].second.data, sb[i].second.data, sa[i].second.numel()));
}
}  // namespace

TEST_CASE("optimizer: lazy tables equal dense updates on the touched rows, untouched rows stay put",
          "[optimizer][lazy]") {
  OptimizerConfig adam = OptimizerConfig::adam(0.05);
  OptimizerConfig adam_l2 = OptimizerConfig::adam(0.05, 0.1);
  OptimizerConfig adamw = OptimizerConfig::adamw(0.05, 0.1);
  OptimizerConfig sgd = OptimizerConfig::sgd(0.1, 0.9);
  OptimizerConfig nesterov = OptimizerConfig::sgd(0.1, 0.9, 0.01, true);
  for (const OptimizerConfig& c : {adam, adam_l2, adamw, sgd, nesterov}) {
    lazy_equals_dense_on_touched_rows<float>(c);
    lazy_equals_dense_on_touched_rows<double>(c);
    lazy_equals_dense_when_all_rows_touched<float>(c);
    lazy_equals_dense_when_all_rows_touched<double>(c);
  }
}

TEST_CASE("optimizer: a lazy step on a 1e6-row table visits only the touched rows", "[optimizer][lazy]") {
  const index_t rows = 1000000, dim = 4;
  auto build = [&](ParameterStore<float>& s) {
    s.add("dense", {37}, Init::uniform(-1, 1));
    s.add("table", {rows, dim}, Init::uniform(-1, 1), ParamKind::Table);
    s.allocate();
  };
  ParameterStore<float> ls(5), ds(5);
  build(ls);
  build(ds);
  const ParamId tl = ls.find("table");
  const index_t n = ls.size();
  // Non-zero m and v everywhere: any visit of a row (even with a zero
  // gradient) would change its m, v and weights, so a visit is detectable.
  const Tensor<float> m0({n}, 0.25f), v0({n}, 1.0f);
  const OptimizerConfig cfg = OptimizerConfig::adamw(0.01, 0.1);
  OptimizerConfig dcfg = cfg;
  dcfg.lazy_tables = false;
  Optimizer<float> lazy(ls, cfg), dense(ds, dcfg);
  lazy.load_state(10, {{"optimizer.m", m0.cview()}, {"optimizer.v", v0.cview()}});
  dense.load_state(10, {{"optimizer.m", m0.cview()}, {"optimizer.v", v0.cview()}});
  const std::vector<float> w0(ls.values(), ls.values() + n);

  const std::vector<index_t> touched = {999999, 12, 500000};
  set_grads(ls, 0, touched);
  set_grads(ds, 0, touched);
  lazy.step();
  dense.step();

  const float* m = state_of(lazy, "optimizer.m");
  const float* v = state_of(lazy, "optimizer.v");
  const index_t toff = ls.info(tl).offset;
  index_t changed_rows = 0, bad_rows = 0;
  for (index_t r = 0; r < rows; ++r) {
    const index_t off = toff + r * dim;
    const bool moved = !testing::bitwise_equal(ls.values() + off, w0.data() + off, dim) ||
                       !testing::bitwise_equal(m + off, m0.data() + off, dim) ||
                       !testing::bitwise_equal(v + off, v0.data() + off, dim);
    const bool is_touched = r == 12 || r == 500000 || r == 999999;
    changed_rows += moved;
    bad_rows += moved != is_touched;
  }
  CHECK(changed_rows == 3);
  CHECK(bad_rows == 0);
  // The dense run on the same state does move an untouched row (so the check
  // above can fail).
  CHECK(!testing::bitwise_equal(ds.values() + toff + 7 * dim, w0.data() + toff + 7 * dim, dim));
  // And the touched rows agree bit for bit between the two.
  for (index_t r : touched)
    CHECK(testing::bitwise_equal(ls.values() + toff + r * dim, ds.values() + toff + r * dim, dim));

  // Cost: the lazy step is far cheaper than the dense one (16 MB per buffer).
  // Loose factor so a busy machine cannot make it flaky.
  auto time_of = [](auto&& fn, int reps) {
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  const double t_lazy = time_of([&] { lazy.step(); }, 5);
  const double t_dense = time_of([&] { dense.step(); }, 2);
  INFO("lazy step " << t_lazy * 1e6 << " us, dense step " << t_dense * 1e6 << " us");
  CHECK(t_lazy * 20 < t_dense);
}

// ---- checkpoints ----------------------------------------------------------------------

TEST_CASE("optimizer: state round-trips through load_state and the run continues bit for bit",
          "[optimizer][checkpoint]") {
  for (const OptimizerConfig& cfg :
       {OptimizerConfig::adam(0.01, 0.01), OptimizerConfig::adamw(0.01, 0.1), OptimizerConfig::sgd(0.1, 0.9, 0.01, true),
        OptimizerConfig::sgd(0.1)}) {
    CAPTURE(OptimizerConfig::kind_name(cfg.kind), cfg.momentum);
    Model<float> a, b;
    Optimizer<float> oa(a.store, cfg);
    for (int s = 0; s < 4; ++s) {
      set_grads(a.store, s, rows_of_step(s));
      oa.step(cfg.lr / (s + 1));
    }
    // The checkpoint: parameter values, optimizer buffers (copied), step count.
    const std::vector<float> values(a.store.values(), a.store.values() + a.store.size());
    std::vector<std::pair<std::string, std::vector<float>>> saved;
    for (const auto& st : oa.state()) saved.emplace_back(st.first, std::vector<float>(st.second.data, st.second.data + st.second.numel()));
    const index_t saved_step = oa.step_count();
    CHECK(saved_step == 4);
    if (cfg.kind == Kind::SGD)
      CHECK(saved.size() == (cfg.momentum != 0 ? 1u : 0u));
    else
      CHECK(saved.size() == 2u);

    for (int s = 4; s < 8; ++s) {
      set_grads(a.store, s, rows_of_step(s));
      oa.step(cfg.lr / (s + 1));
    }

    // Resume in a fresh store + optimizer.
    std::copy(values.begin(), values.end(), b.store.values());
    Optimizer<float> ob(b.store, cfg);
    std::vector<std::pair<std::string, ConstView<float>>> views;
    for (const auto& s : saved) views.emplace_back(s.first, ConstView<float>(s.second.data(), {index_t(s.second.size())}));
    ob.load_state(saved_step, views);
    CHECK(ob.step_count() == 4);
    for (int s = 4; s < 8; ++s) {
      set_grads(b.store, s, rows_of_step(s));
      ob.step(cfg.lr / (s + 1));
    }
    CHECK(testing::bitwise_equal(a.store.values(), b.store.values(), a.store.size()));
    const auto sa = oa.state(), sb = ob.state();
    REQUIRE(sa.size() == sb.size());
    for (std::size_t i = 0; i < sa.size(); ++i) {
      CHECK(sa[i].first == sb[i].first);
      CHECK(testing::bitwise_equal(sa[i].second.data, sb[i].second.data, sa[i].second.numel()));
    }
  }
}

TEST_CASE("optimizer: load_state rejects missing, unknown, duplicate or mis-sized buffers", "[optimizer][errors]") {
  Model<float> model;
  Optimizer<float> opt(model.store, OptimizerConfig::adam(0.01));
  const index_t n = model.store.size();
  const Tensor<float> good({n}, 0.5f), small({n - 1}, 0.5f);
  using V = std::vector<std::pair<std::string, ConstView<float>>>;
  testing::require_error([&] { opt.load_state(3, V{{"optimizer.m", good.cview()}}); },
                         {"Optimizer::load_state", "'optimizer.v'", "exactly once", "found it 0"});
  testing::require_error(
      [&] { opt.load_state(3, V{{"optimizer.m", good.cview()}, {"optimizer.v", good.cview()}, {"optimizer.momentum", good.cview()}}); },
      {"Optimizer::load_state", "unexpected state buffer 'optimizer.momentum'", "Adam"});
  testing::require_error(
      [&] { opt.load_state(3, V{{"optimizer.m", good.cview()}, {"optimizer.v", small.cview()}}); },
      {"Optimizer::load_state", "'optimizer.v'", std::to_string(n).c_str(), std::to_string(n - 1).c_str()});
  testing::require_error(
      [&] { opt.load_state(3, V{{"optimizer.m", good.cview()}, {"optimizer.m", good.cview()}, {"optimizer.v", good.cview()}}); },
      {"Optimizer::load_state", "'optimizer.m'", "found it 2"});
  testing::require_error([&] { opt.load_state(-1, V{{"optimizer.m", good.cview()}, {"optimizer.v", good.cview()}}); },
                         {"Optimizer::load_state", "step count >= 0", "-1"});
  // A failed load changes nothing.
  CHECK(opt.step_count() == 0);
  for (const auto& s : opt.state())
    for (index_t i = 0; i < n; ++i) REQUIRE(s.second.data[i] == 0.0f);
  opt.load_state(3, V{{"optimizer.v", good.cview()}, {"optimizer.m", good.cview()}});
  CHECK(opt.step_count() == 3);
  CHECK(state_of(opt, "optimizer.m")[n - 1] == 0.5f);

  Optimizer<float> plain(model.store, OptimizerConfig::sgd(0.1));
  CHECK(plain.state().empty());
  plain.load_state(7, {});
  CHECK(plain.step_count() == 7);
  testing::require_error([&] { plain.load_state(1, V{{"optimizer.m", good.cview()}}); },
                         {"unexpected state buffer 'optimizer.m'", "SGD", "none"});
}

// ---- learning-rate schedules -----------------------------------------------------------

TEST_CASE("LRSchedule: values at key steps", "[optimizer][schedule]") {
  const LRSchedule c = LRSchedule::constant(0.1);
  CHECK(c.at(0) == 0.1);
  CHECK(c.at(123456789) == 0.1);
  const LRSchedule cw = LRSchedule::constant(0.1, 4);
  CHECK(cw.at(0) == Approx(0.025).epsilon(1e-15));
  CHECK(cw.at(1) == Approx(0.05).epsilon(1e-15));
  CHECK(cw.at(3) == 0.1);
  CHECK(cw.at(4) == 0.1);
  CHECK(cw.at(1000) == 0.1);

  // Warmup 10, decay over steps 10 .. 110.
  const LRSchedule lin = LRSchedule::warmup_linear(1.0, 10, 110);
  CHECK(lin.at(0) == Approx(0.1).epsilon(1e-15));
  CHECK(lin.at(4) == Approx(0.5).epsilon(1e-15));
  CHECK(lin.at(9) == 1.0);
  CHECK(lin.at(10) == 1.0);
  CHECK(lin.at(35) == Approx(0.75).epsilon(1e-15));
  CHECK(lin.at(60) == Approx(0.5).epsilon(1e-15));
  CHECK(lin.at(109) == Approx(0.01).epsilon(1e-13));
  CHECK(lin.at(110) == 0.0);
  CHECK(lin.at(1000000) == 0.0);
  const LRSchedule lin_min = LRSchedule::warmup_linear(1.0, 10, 110, 0.1);
  CHECK(lin_min.at(60) == Approx(0.55).epsilon(1e-15));
  CHECK(lin_min.at(110) == 0.1);
  CHECK(lin_min.at(5000) == 0.1);

  const LRSchedule cosine = LRSchedule::warmup_cosine(2.0, 0, 100, 0.2);
  CHECK(cosine.at(0) == 2.0);
  CHECK(cosine.at(25) == Approx(1.7363961030678928).epsilon(1e-15));  // 0.2 + 0.9 (1 + cos(pi/4))
  CHECK(cosine.at(50) == Approx(1.1).epsilon(1e-15));
  CHECK(cosine.at(75) == Approx(0.4636038969321073).epsilon(1e-14));  // 0.2 + 0.9 (1 - cos(pi/4))
  CHECK(cosine.at(100) == 0.2);
  CHECK(cosine.at(101) == 0.2);
  const LRSchedule cw_cos = LRSchedule::warmup_cosine(1.0, 5, 15);
  CHECK(cw_cos.at(2) == Approx(0.6).epsilon(1e-15));
  CHECK(cw_cos.at(5) == 1.0);
  CHECK(cw_cos.at(10) == Approx(0.5).epsilon(1e-15));
  // Warmup all the way to total_steps: nothing left to decay.
  const LRSchedule all_warm = LRSchedule::warmup_linear(1.0, 4, 4);
  CHECK(all_warm.at(3) == 1.0);
  CHECK(all_warm.at(4) == 0.0);

  // Monotone: non-decreasing in warmup, non-increasing after.
  for (const LRSchedule& s : {lin, lin_min, cosine, cw_cos})
    for (index_t t = 1; t < 200; ++t) {
      if (t < s.warmup_steps)
        CHECK(s.at(t) >= s.at(t - 1));
      else if (t > s.warmup_steps)
        CHECK(s.at(t) <= s.at(t - 1));
    }
}

TEST_CASE("LRSchedule: bad arguments name the field and the value", "[optimizer][schedule][errors]") {
  testing::require_error([] { LRSchedule::warmup_linear(1.0, 20, 10).at(0); },
                         {"LRSchedule", "warmup_steps <= total_steps (10)", "20"});
  testing::require_error([] { LRSchedule::warmup_cosine(0.0, 0, 10).at(0); }, {"LRSchedule", "base_lr > 0", "0"});
  testing::require_error([] { LRSchedule::constant(-1.0).at(0); }, {"LRSchedule", "base_lr > 0", "-1"});
  testing::require_error([] { LRSchedule::constant(std::nan("")).at(0); }, {"LRSchedule", "base_lr > 0", "nan"});
  testing::require_error([] { LRSchedule::constant(1.0, -3).at(0); }, {"LRSchedule", "warmup_steps >= 0", "-3"});
  testing::require_error([] { LRSchedule::warmup_linear(1.0, 0, 0).at(0); }, {"LRSchedule", "total_steps > 0", "0"});
  testing::require_error([] { LRSchedule::warmup_linear(1.0, 0, 10, 2.0).at(0); },
                         {"LRSchedule", "min_lr in [0, base_lr = 1]", "2"});
  testing::require_error([] { LRSchedule::warmup_linear(1.0, 0, 10, -0.1).at(0); }, {"LRSchedule", "min_lr", "-0.1"});
  testing::require_error([] { LRSchedule::constant(1.0).at(-1); }, {"LRSchedule::at", "step >= 0", "-1"});
}

// ---- gradient norm and clipping -----------------------------------------------------------

namespace {
// sqrt of the sum of squares of the whole gradient buffer, untouched rows and
// padding included, in long double.
template <class T>
double brute_force_norm(const ParameterStore<T>& s) {
  long double acc = 0;
  for (index_t i = 0; i < s.size(); ++i) acc += (long double)s.grads()[i] * (long double)s.grads()[i];
  return double(std::sqrt(acc));
}

template <class T>
void clip_cases() {
  Model<T> model(50, 6);
  ParameterStore<T>& s = model.store;
  set_grads(s, 1, {3, 49, 0, 17, 18, 30, 8}, 2.0);
  const std::vector<T> g0(s.grads(), s.grads() + s.size());
  const double want = brute_force_norm(s);
  CAPTURE(sizeof(T), want);
  CHECK(grad_norm(s) == Approx(want).epsilon(1e-13));

  // Above the norm: nothing changes, the norm is returned.
  CHECK(clip_grad_norm(s, want * 2) == Approx(want).epsilon(1e-13));
  CHECK(testing::bitwise_equal(s.grads(), g0.data(), s.size()));

  // Below: every gradient times max_norm / (norm + 1e-6), in T.
  const double max_norm = want / 3;
  const double got = clip_grad_norm(s, max_norm);
  CHECK(got == Approx(want).epsilon(1e-13));
  const T coef = T(max_norm / (got + 1e-6));
  std::vector<T> expect(g0);
  for (T& x : expect) x = coef * x;
  CHECK(testing::bitwise_equal(s.grads(), expect.data(), s.size()));
  // The 1e-6 in the denominator leaves the new norm a hair under max_norm.
  CHECK(grad_norm(s) ==
        Approx(max_norm * want / (want + 1e-6)).epsilon(std::is_same<T, float>::value ? 1e-6 : 1e-12));

  // scale_grads on its own (gradient accumulation: divide by k).
  set_grads(s, 2, {4, 5});
  const std::vector<T> g2(s.grads(), s.grads() + s.size());
  scale_grads(s, 0.25);
  for (index_t i = 0; i < s.size(); ++i) REQUIRE(s.grads()[i] == T(0.25) * g2[std::size_t(i)]);

  // A non-finite gradient: the norm says so and nothing is scaled.
  set_grads(s, 3, {1});
  s.grad(model.w)[3] = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> g3(s.grads(), s.grads() + s.size());
  CHECK(std::isnan(clip_grad_norm(s, 1e-3)));
  CHECK(testing::bitwise_equal(s.grads(), g3.data(), s.size()));
}
}  // namespace

TEST_CASE("clip_grad_norm: norm vs brute force, clipped gradients, non-finite norms", "[optimizer][clip]") {
  clip_cases<float>();
  clip_cases<double>();
}

TEST_CASE("clip_grad_norm: PyTorch's numbers, dense parameter and a table row", "[optimizer][clip][torch]") {
  // torch.nn.utils.clip_grad_norm_([a, b], 1.0) on a.grad = g[:4], b.grad = g[4:]
  // (tools/make_optimizer_fixtures.py); here b is row 1 of a (3, 2) table.
  const double g[6] = {0.3, -0.2, 0.1, 0.0, 1.5, -0.05};
  const double k_clip_norm = 1.5467708298258018;
  const double k_clip_grads[6] = {0.19395232975880233, -0.1293015531725349, 0.06465077658626744, 0.0,
                                  0.9697616487940117,  -0.03232538829313372};
  ParameterStore<double> s;
  const ParamId a = s.add("a", {4}, Init::zeros());
  const ParamId b = s.add("b", {3, 2}, Init::zeros(), ParamKind::Table);
  s.allocate();
  for (int i = 0; i < 4; ++i) s.grad(a)[i] = g[i];
  s.grad(b)[2] = g[4];
  s.grad(b)[3] = g[5];
  s.touched(b).mark(1);
  CHECK(clip_grad_norm(s, 1.0) == Approx(k_clip_norm).epsilon(1e-15));
  for (int i = 0; i < 4; ++i) CHECK(s.grad(a)[i] == Approx(k_clip_grads[i]).epsilon(1e-15).margin(1e-17));
  CHECK(s.grad(b)[2] == Approx(k_clip_grads[4]).epsilon(1e-15));
  CHECK(s.grad(b)[3] == Approx(k_clip_grads[5]).epsilon(1e-15));
}

TEST_CASE("clip_grad_norm: bitwise identical with 1 and 2 threads on a big store", "[optimizer][clip]") {
  // 3M dense elements (~190 chunks: several groups of partials) and a table
  // with 60000 touched rows in scrambled order (several parts of rows).
  auto build = [](ParameterStore<float>& s) {
    s.add("dense", {3000001}, Init::zeros());
    s.add("table", {200000, 16}, Init::zeros(), ParamKind::Table);
    s.add("small_table", {100, 3}, Init::zeros(), ParamKind::Table);
    s.allocate();
  };
  std::vector<index_t> rows;
  for (index_t i = 0; i < 60000; ++i) rows.push_back((i * 7919) % 200000);
  ParameterStore<float> s1, s2;
  build(s1);
  build(s2);
  set_grads(s1, 0, rows, 0.01);
  set_grads(s2, 0, rows, 0.01);
  // One large gradient so the scale factor is far from 1.
  s1.grads()[17] = s2.grads()[17] = 300.0f;
  const double want = brute_force_norm(s1);
  double n1 = 0, n2 = 0;
  testing::with_threads(1, [&] { n1 = clip_grad_norm(s1, 0.5); });
  testing::with_threads(2, [&] { n2 = clip_grad_norm(s2, 0.5); });
  CHECK(n1 == Approx(want).epsilon(1e-12));
  CHECK(std::memcmp(&n1, &n2, sizeof(double)) == 0);
  CHECK(testing::bitwise_equal(s1.grads(), s2.grads(), s1.size()));
  CHECK(grad_norm(s1) == Approx(0.5 * want / (want + 1e-6)).epsilon(1e-6));
}

// ---- bad input ---------------------------------------------------------------------------

TEST_CASE("optimizer: bad configurations and arguments throw with clear messages", "[optimizer][errors]") {
  Model<float> model;
  ParameterStore<float>& s = model.store;
  auto make = [&](OptimizerConfig c) { Optimizer<float> opt(s, c); };
  OptimizerConfig c;

  c = OptimizerConfig::adam(0.0);
  testing::require_error([&] { make(c); }, {"Optimizer", "lr > 0", "got 0"});
  c = OptimizerConfig::sgd(-0.1);
  testing::require_error([&] { make(c); }, {"Optimizer", "lr > 0", "-0.1"});
  c = OptimizerConfig::adamw(std::nan(""), 0.1);
  testing::require_error([&] { make(c); }, {"Optimizer", "lr > 0", "nan"});
  c = OptimizerConfig::adam(0.01);
  c.beta1 = 1.0;
  testing::require_error([&] { make(c); }, {"Optimizer", "Adam", "beta1 in [0, 1)", "got 1"});
  c = OptimizerConfig::adamw(0.01, 0.0);
  c.beta2 = -0.5;
  testing::require_error([&] { make(c); }, {"Optimizer", "AdamW", "beta2 in [0, 1)", "-0.5"});
  c = OptimizerConfig::adam(0.01);
  c.eps = 0;
  testing::require_error([&] { make(c); }, {"Optimizer", "eps > 0", "got 0"});
  c = OptimizerConfig::adamw(0.01, -0.01);
  testing::require_error([&] { make(c); }, {"Optimizer", "weight_decay >= 0", "-0.01"});
  c = OptimizerConfig::sgd(0.1, 1.0);
  testing::require_error([&] { make(c); }, {"Optimizer", "SGD", "momentum in [0, 1)", "got 1"});
  c = OptimizerConfig::sgd(0.1, 0.0, 0.0, true);
  testing::require_error([&] { make(c); }, {"Optimizer", "nesterov", "momentum > 0"});
  c = OptimizerConfig::adam(0.01);
  c.momentum = 0.9;
  testing::require_error([&] { make(c); }, {"Optimizer", "Adam", "momentum 0", "0.9"});

  ParameterStore<float> unallocated;
  unallocated.add("w", {3}, Init::zeros());
  testing::require_error([&] { Optimizer<float> opt(unallocated, OptimizerConfig::adam(0.01)); },
                         {"Optimizer", "allocated ParameterStore"});
  testing::require_error([&] { grad_norm(unallocated); }, {"grad_norm", "allocate()"});
  testing::require_error([&] { clip_grad_norm(unallocated, 1.0); }, {"grad_norm", "allocate()"});

  Optimizer<float> opt(s, OptimizerConfig::adam(0.01));
  testing::require_error([&] { opt.step(-1.0); }, {"Optimizer::step", "lr >= 0", "-1"});
  testing::require_error([&] { opt.step(std::numeric_limits<double>::infinity()); },
                         {"Optimizer::step", "lr >= 0", "inf"});
  CHECK(opt.step_count() == 0);  // a rejected step does not count
  opt.step(0.0);                 // allowed: the end of a schedule decaying to 0
  CHECK(opt.step_count() == 1);

  testing::require_error([&] { clip_grad_norm(s, 0.0); }, {"clip_grad_norm", "max_norm > 0", "got 0"});
  testing::require_error([&] { clip_grad_norm(s, std::nan("")); }, {"clip_grad_norm", "max_norm > 0", "nan"});
  testing::require_error([&] { scale_grads(s, std::nan("")); }, {"scale_grads", "finite", "nan"});
}
