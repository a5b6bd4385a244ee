// Losses: finite-difference gradients, hand-computed values, brute-force
// references, masks / weights / empty batches, extreme logits, bad input.
// First: the op-table rows at the end run the losses on Fake through
// kernels::FakeDispatch (<mtrec/mtrec.hpp>), which must be declared before
// layers/losses.hpp is read.
#include "ops/layer_case.hpp"

#include <limits>
#include <mtrec/layers/losses.hpp>
#include <vector>

#include "support/gradcheck.hpp"

using namespace mtrec;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<double> loss_uniform(index_t n, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::vector<double> v(static_cast<std::size_t>(n));
  testing::fill_uniform(v.data(), n, seed, lo, hi);
  return v;
}

// Rows 1, 4, 7, ... unlabelled.
std::vector<std::uint8_t> every_third_off(index_t n) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(n), 1);
  for (index_t i = 1; i < n; i += 3) m[i] = 0;
  return m;
}

// Checks analytic gradient g of value() w.r.t. x by central differences.
int gradcheck(const char* what, std::vector<double>& x, const std::vector<double>& g,
              const std::function<double()>& value) {
  REQUIRE(x.size() == g.size());
  return testing::check_gradient(what, x.data(), index_t(x.size()), g.data(), value).checked;
}

// Every masked row's gradient is exactly zero (cols elements per row).
void require_zero_rows(const std::vector<double>& g, const std::vector<std::uint8_t>& mask, index_t cols) {
  for (std::size_t i = 0; i < mask.size(); ++i)
    if (!mask[i])
      for (index_t c = 0; c < cols; ++c) {
        INFO("masked row " << i << " col " << c);
        CHECK(g[i * cols + c] == 0.0);
      }
}

bool all_finite(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

}  // namespace

// ---- BCE ----------------------------------------------------------------------

TEST_CASE("bce_with_logits: hand-computed values", "[loss][bce]") {
  // logit 0: sigmoid = 1/2 whatever the label, so l = -(y + 1 - y) log(1/2) = log 2.
  for (double y : {0.0, 1.0, 0.3}) {
    const double x = 0;
    double g = kNaN;
    const LossResult r = bce_with_logits(&g, &x, &y, nullptr, (const double*)nullptr, 1);
    CHECK(r.value == Approx(0.6931471805599453).epsilon(1e-15));
    CHECK(g == Approx(0.5 - y).epsilon(1e-15));  // sigmoid(0) - y
    CHECK(r.count == 1);
    CHECK(r.weight_sum == 1.0);
  }
  // x = 2, y = 1: l = log(1 + e^-2) = log(1.1353352832366127) = 0.12692801104297263
  // x = -3, y = 0.25: l = 0.25 * log(1 + e^3) + 0.75 * log(1 + e^-3)
  //                     = 0.25 * 3.048587351573742 + 0.75 * 0.04858735157374206 = 0.798587351573742
  {
    const double x[] = {2, -3}, y[] = {1, 0.25}, w[] = {1, 3};
    double g[2];
    const LossResult r = bce_with_logits(g, x, y, nullptr, w, 2);
    // weighted mean: (1 * 0.12692801104297263 + 3 * 0.798587351573742) / 4
    //   = (0.12692801104297263 + 2.395762054721226) / 4 = 2.522690065764199 / 4 = 0.6306725164410497
    CHECK(r.value == Approx(0.6306725164410497).epsilon(1e-13));
    CHECK(r.weight_sum == 4.0);
    // gradient: w_i / 4 * (sigmoid(x_i) - y_i); sigmoid(2) = 0.8807970779778823, sigmoid(-3) = 0.04742587317756678
    CHECK(g[0] == Approx(0.25 * (0.8807970779778823 - 1)).epsilon(1e-13));
    CHECK(g[1] == Approx(0.75 * (0.04742587317756678 - 0.25)).epsilon(1e-13));
  }
}

TEST_CASE("bce_with_logits: matches the textbook formula (brute force)", "[loss][bce]") {
  const index_t n = 61;
  auto x = loss_uniform(n, 1, -8, 8), y = loss_uniform(n, 2, 0, 1), w = loss_uniform(n, 3, 0, 2);
  auto mask = every_third_off(n);
  // -(y log p + (1 - y) log(1 - p)) with p = 1 / (1 + e^-x), in long double
  long double num = 0, den = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!mask[i]) continue;
    const long double p = 1.0L / (1.0L + std::exp(-(long double)x[i]));
    num += w[i] * -(y[i] * std::log(p) + (1 - y[i]) * std::log(1 - p));
    den += w[i];
  }
  const LossResult r = bce_with_logits((double*)nullptr, x.data(), y.data(), mask.data(), w.data(), n);
  CHECK(r.value == Approx(double(num / den)).epsilon(1e-12));
  CHECK(r.weight_sum == Approx(double(den)).epsilon(1e-14));
  CHECK(r.count == 41);  // 61 rows, rows 1, 4, ..., 58 (20 of them) masked
}

TEST_CASE("gradient: bce_with_logits (mask, weights, soft labels)", "[loss][bce][gradient]") {
  const index_t n = 13;
  auto x = loss_uniform(n, 11, -4, 4), y = loss_uniform(n, 12, 0, 1), w = loss_uniform(n, 13, 0.1, 2);
  auto mask = every_third_off(n);
  y[1] = kNaN;  // masked: never read
  for (bool use_mask : {false, true})
    for (bool use_w : {false, true}) {
      if (!use_mask) y[1] = 0.5;
      const std::uint8_t* m = use_mask ? mask.data() : nullptr;
      const double* wp = use_w ? w.data() : nullptr;
      std::vector<double> g(n, kNaN);
      bce_with_logits(g.data(), x.data(), y.data(), m, wp, n);
      CHECK(gradcheck("dlogits", x, g,
                      [&] { return bce_with_logits((double*)nullptr, x.data(), y.data(), m, wp, n).value; }) == n);
      if (use_mask) require_zero_rows(g, mask, 1);
    }
}

TEST_CASE("bce_with_logits: stable at logits of +-1e4", "[loss][bce]") {
  // Right labels cost 0, wrong ones cost |x| = 1e4 (log(1 + e^1e4) = 1e4 + log1p(e^-1e4)).
  const double x[] = {1e4, -1e4, 1e4, -1e4}, y[] = {1, 0, 0, 1};
  std::vector<double> g(4, kNaN);
  const LossResult r = bce_with_logits(g.data(), x, y, nullptr, (const double*)nullptr, 4);
  CHECK(r.value == Approx((0 + 0 + 1e4 + 1e4) / 4).epsilon(1e-15));
  // sigmoid(x) - y, / 4
  CHECK(g[0] == 0.0);
  CHECK(g[1] == 0.0);
  CHECK(g[2] == Approx(0.25).epsilon(1e-15));
  CHECK(g[3] == Approx(-0.25).epsilon(1e-15));
  // a single wrong row: value = |x|
  const LossResult one = bce_with_logits(g.data(), x + 2, y + 2, nullptr, (const double*)nullptr, 1);
  CHECK(one.value == 1e4);
  // float
  const float xf[] = {1e4f, -1e4f}, yf[] = {0.f, 0.f};
  float gf[2] = {0, 0};
  const LossResult rf = bce_with_logits(gf, xf, yf, nullptr, (const float*)nullptr, 2);
  CHECK(std::isfinite(rf.value));
  CHECK(rf.value == Approx(5000.0).epsilon(1e-12));
  CHECK(gf[0] == Approx(0.5f));
  CHECK(gf[1] == 0.0f);
  // finite differences at the extremes (the loss is linear there)
  std::vector<double> xs = {1e4, -1e4, 5e3}, ys = {0, 1, 1}, gs(3);
  bce_with_logits(gs.data(), xs.data(), ys.data(), nullptr, (const double*)nullptr, 3);
  CHECK(all_finite(gs));
  gradcheck("dlogits", xs, gs, [&] {
    return bce_with_logits((double*)nullptr, xs.data(), ys.data(), nullptr, (const double*)nullptr, 3).value;
  });
}

// ---- regression ---------------------------------------------------------------

TEST_CASE("mse and huber: hand-computed values", "[loss][mse][huber]") {
  const double p[] = {1, 2, 3}, t[] = {1, 0, 5}, w[] = {1, 1, 2};
  double g[3];
  // residuals 0, 2, -2: mean of squares (0 + 4 + 4) / 3 = 8/3
  CHECK(mse(g, p, t, nullptr, (const double*)nullptr, 3).value == Approx(8.0 / 3).epsilon(1e-15));
  // gradient 2 r / 3
  CHECK(g[0] == 0.0);
  CHECK(g[1] == Approx(4.0 / 3).epsilon(1e-15));
  CHECK(g[2] == Approx(-4.0 / 3).epsilon(1e-15));
  // weighted: (0 + 4 + 2 * 4) / 4 = 3
  CHECK(mse(g, p, t, nullptr, w, 3).value == Approx(3.0).epsilon(1e-15));
  // torch.nn.HuberLoss(delta=1) on residuals 0.5 and -3: (0.5 * 0.25 + 1 * (3 - 0.5)) / 2 = 1.3125
  const double hp[] = {1.5, -3}, ht[] = {1, 0};
  CHECK(huber(g, hp, ht, nullptr, (const double*)nullptr, 2).value == Approx(1.3125).epsilon(1e-15));
  CHECK(g[0] == Approx(0.25).epsilon(1e-15));  // r / 2
  CHECK(g[1] == Approx(-0.5).epsilon(1e-15));  // -delta / 2
  // delta = 2: (0.125 + 2 * (3 - 1)) / 2 = 2.0625
  CHECK(huber(g, hp, ht, nullptr, (const double*)nullptr, 2, 2.0).value == Approx(2.0625).epsilon(1e-15));
  CHECK(g[1] == Approx(-1.0).epsilon(1e-15));
}

TEST_CASE("gradient: mse and huber (mask, weights)", "[loss][mse][huber][gradient]") {
  const index_t n = 14;
  auto p = loss_uniform(n, 21, -3, 3), t = loss_uniform(n, 22, -3, 3), w = loss_uniform(n, 23, 0.1, 2);
  auto mask = every_third_off(n);
  for (int kind = 0; kind < 3; ++kind)
    for (bool use_mask : {false, true}) {
      const std::uint8_t* m = use_mask ? mask.data() : nullptr;
      auto run = [&](double* g) {
        if (kind == 0) return mse(g, p.data(), t.data(), m, w.data(), n).value;
        if (kind == 1) return huber(g, p.data(), t.data(), m, w.data(), n).value;
        return huber(g, p.data(), t.data(), m, w.data(), n, 0.7).value;
      };
      CAPTURE(kind, use_mask);
      std::vector<double> g(n, kNaN);
      run(g.data());
      CHECK(gradcheck("dpred", p, g, [&] { return run(nullptr); }) == n);
      if (use_mask) require_zero_rows(g, mask, 1);
    }
}

TEST_CASE("huber: brute force against the piecewise definition", "[loss][huber]") {
  const index_t n = 40;
  auto p = loss_uniform(n, 31, -3, 3), t = loss_uniform(n, 32, -3, 3);
  const double delta = 1.3;
  double sum = 0;
  for (index_t i = 0; i < n; ++i) {
    const double a = std::fabs(p[i] - t[i]);
    sum += a < delta ? 0.5 * a * a : delta * a - 0.5 * delta * delta;
  }
  CHECK(huber((double*)nullptr, p.data(), t.data(), nullptr, (const double*)nullptr, n, delta).value ==
        Approx(sum / n).epsilon(1e-13));
}

// ---- softmax cross-entropy ----------------------------------------------------------

TEST_CASE("softmax_cross_entropy: hand-computed values", "[loss][ce]") {
  // loss_uniform logits over 3 classes: log 3
  const double z[] = {0, 0, 0};
  const index_t y0 = 1;
  double g[3];
  CHECK(softmax_cross_entropy(g, z, &y0, nullptr, (const double*)nullptr, 1, 3).value ==
        Approx(1.0986122886681098).epsilon(1e-15));
  CHECK(g[0] == Approx(1.0 / 3).epsilon(1e-15));
  CHECK(g[1] == Approx(-2.0 / 3).epsilon(1e-15));
  // logits (1, 2, 3), class 2: log(e + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2) = log(1.5032147244080551)
  //   = 0.40760596444438 (torch.nn.functional.cross_entropy gives 0.4076059644443803)
  const double x[] = {1, 2, 3};
  const index_t y = 2;
  CHECK(softmax_cross_entropy(g, x, &y, nullptr, (const double*)nullptr, 1, 3).value ==
        Approx(0.4076059644443803).epsilon(1e-14));
  // shifted by 1e4 the value is the same and nothing overflows (double and float)
  const double xs[] = {1e4 + 1, 1e4 + 2, 1e4 + 3};
  CHECK(softmax_cross_entropy(g, xs, &y, nullptr, (const double*)nullptr, 1, 3).value ==
        Approx(0.4076059644443803).epsilon(1e-14));
  const float xf[] = {10001.f, 10002.f, 10003.f};
  float gf[3];
  CHECK(softmax_cross_entropy(gf, xf, &y, nullptr, (const float*)nullptr, 1, 3).value ==
        Approx(0.4076059644443803).epsilon(1e-7));
  // softmax(1, 2, 3) = (e, e^2, e^3) / (e + e^2 + e^3) = (0.09003057317038046, 0.24472847105479767, 0.6652409557748219)
  CHECK(gf[0] == Approx(0.09003057317038046).epsilon(1e-6));
  CHECK(gf[1] == Approx(0.24472847105479767).epsilon(1e-6));
  CHECK(gf[2] == Approx(0.6652409557748219 - 1).epsilon(1e-6));
}

TEST_CASE("softmax_cross_entropy: brute force and gradient (mask, weights)", "[loss][ce][gradient]") {
  const index_t n = 9, C = 5;
  auto x = loss_uniform(n * C, 41, -3, 3), w = loss_uniform(n, 42, 0.1, 2);
  std::vector<index_t> y = {0, 4, 2, 3, 1, 1, 0, 4, 2};
  auto mask = every_third_off(n);
  y[1] = -100;  // masked row: PyTorch's ignore_index placeholder is accepted
  // brute force: -log(e^{x_y} / sum_c e^{x_c}), weighted mean over labelled rows
  long double num = 0, den = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!mask[i]) continue;
    long double s = 0;
    for (index_t c = 0; c < C; ++c) s += std::exp((long double)x[i * C + c]);
    num += w[i] * -std::log(std::exp((long double)x[i * C + y[i]]) / s);
    den += w[i];
  }
  std::vector<double> g(n * C, kNaN);
  const LossResult r = softmax_cross_entropy(g.data(), x.data(), y.data(), mask.data(), w.data(), n, C);
  CHECK(r.value == Approx(double(num / den)).epsilon(1e-12));
  CHECK(r.count == 6);
  CHECK(gradcheck("dlogits", x, g, [&] {
          return softmax_cross_entropy((double*)nullptr, x.data(), y.data(), mask.data(), w.data(), n, C).value;
        }) == n * C);
  require_zero_rows(g, mask, C);
  // without mask and weights
  y[1] = 3;
  softmax_cross_entropy(g.data(), x.data(), y.data(), nullptr, (const double*)nullptr, n, C);
  CHECK(
      gradcheck("dlogits", x, g, [&] {
        return softmax_cross_entropy((double*)nullptr, x.data(), y.data(), nullptr, (const double*)nullptr, n, C).value;
      }) == n * C);
}

// ---- BPR ------------------------------------------------------------------------------

TEST_CASE("bpr: values, extremes and gradient", "[loss][bpr][gradient]") {
  // equal scores: -log sigmoid(0) = log 2; pos - neg = 2: log(1 + e^-2) = 0.12692801104297263
  const double pos[] = {0.3, 2.5}, neg[] = {0.3, 0.5};
  double dp[2], dn[2];
  CHECK(bpr(dp, dn, pos, neg, nullptr, (const double*)nullptr, 2).value ==
        Approx((0.6931471805599453 + 0.12692801104297263) / 2).epsilon(1e-15));
  // d/dpos = -sigmoid(neg - pos) / 2: -0.25 and -sigmoid(-2) / 2 = -0.11920292202211755 / 2
  CHECK(dp[0] == Approx(-0.25).epsilon(1e-15));
  CHECK(dp[1] == Approx(-0.11920292202211755 / 2).epsilon(1e-14));
  CHECK(dn[1] == Approx(0.11920292202211755 / 2).epsilon(1e-14));
  // a badly wrong pair costs neg - pos, with gradient -1 / +1
  const double bp[] = {-5e3}, bn[] = {5e3};
  const LossResult far = bpr(dp, dn, bp, bn, nullptr, (const double*)nullptr, 1);
  CHECK(far.value == 1e4);
  CHECK(dp[0] == -1.0);
  CHECK(dn[0] == 1.0);

  const index_t n = 12;
  auto ps = loss_uniform(n, 51, -3, 3), ns = loss_uniform(n, 52, -3, 3), w = loss_uniform(n, 53, 0.1, 2);
  auto mask = every_third_off(n);
  std::vector<double> gp(n, kNaN), gn(n, kNaN);
  // brute force: mean of log(1 + exp(neg - pos))
  long double num = 0, den = 0;
  for (index_t i = 0; i < n; ++i)
    if (mask[i]) {
      num += w[i] * std::log(1 + std::exp((long double)ns[i] - ps[i]));
      den += w[i];
    }
  CHECK(bpr(gp.data(), gn.data(), ps.data(), ns.data(), mask.data(), w.data(), n).value ==
        Approx(double(num / den)).epsilon(1e-12));
  auto value = [&] {
    return bpr((double*)nullptr, (double*)nullptr, ps.data(), ns.data(), mask.data(), w.data(), n).value;
  };
  CHECK(gradcheck("dpos", ps, gp, value) == n);
  CHECK(gradcheck("dneg", ns, gn, value) == n);
  require_zero_rows(gp, mask, 1);
  require_zero_rows(gn, mask, 1);
}

// ---- in-batch softmax -------------------------------------------------------------------

namespace {
// Brute force: drop the masked rows, build the full logit matrix naively and
// take -log of each diagonal softmax entry, in long double.
double in_batch_reference(const std::vector<double>& q, const std::vector<double>& k, index_t n, index_t d,
                          double temperature, const double* logq, const std::uint8_t* mask, const double* w) {
  std::vector<index_t> keep;
  for (index_t i = 0; i < n; ++i)
    if (!mask || mask[i]) keep.push_back(i);
  long double num = 0, den = 0;
  for (index_t i : keep) {
    long double denom = 0, pos = 0;
    for (index_t j : keep) {
      long double dot = 0;
      for (index_t c = 0; c < d; ++c) dot += (long double)q[i * d + c] * k[j * d + c];
      const long double e = std::exp(dot / temperature - (logq ? logq[j] : 0.0));
      denom += e;
      if (j == i) pos = e;
    }
    const double wi = w ? w[i] : 1.0;
    num += wi * -std::log(pos / denom);
    den += wi;
  }
  return double(num / den);
}
}  // namespace

TEST_CASE("in_batch_softmax: hand-computed values", "[loss][in_batch]") {
  // n = 2, d = 1, temperature 1: q = (1, 2), k = (1, -1)
  // logits row 0: (1*1, 1*-1) = (1, -1), positive col 0: l0 = log(1 + e^-2) = 0.12692801104297263
  // logits row 1: (2*1, 2*-1) = (2, -2), positive col 1: l1 = log(e^2 + e^-2) + 2 = 4 + log1p(e^-4)
  //   = 4 + 0.01814992791780978 = 4.01814992791781
  // mean = 4.145077938960782 / 2 = 2.072538969480391
  const double q[] = {1, 2}, k[] = {1, -1};
  double dq[2], dk[2];
  const LossResult r =
      in_batch_softmax(dq, dk, q, k, 2, 1, 1.0, (const double*)nullptr, nullptr, (const double*)nullptr);
  CHECK(r.value == Approx(2.072538969480391).epsilon(1e-14));
  // with log Q correction (0.5, -0.5):
  // row 0: (1 - 0.5, -1 + 0.5) = (0.5, -0.5): l0 = log(1 + e^-1) = 0.31326168751822286
  // row 1: (2 - 0.5, -2 + 0.5) = (1.5, -1.5), positive -1.5: l1 = log(1 + e^3) = 3.048587351573742
  // mean = 3.361849039091965 / 2 = 1.6809245195459825
  const double lq[] = {0.5, -0.5};
  CHECK(in_batch_softmax(dq, dk, q, k, 2, 1, 1.0, lq, nullptr, (const double*)nullptr).value ==
        Approx(1.6809245195459825).epsilon(1e-14));
  // temperature 2 halves the logits: row 0 (0.5, -0.5) -> 0.31326168751822286,
  // row 1 (1, -1), positive -1 -> log(1 + e^2) = 2.1269280110429727; mean 1.2200948492805978
  CHECK(in_batch_softmax(dq, dk, q, k, 2, 1, 2.0, (const double*)nullptr, nullptr, (const double*)nullptr).value ==
        Approx(1.2200948492805978).epsilon(1e-14));
}

TEST_CASE("in_batch_softmax: brute force and gradients (logQ, mask, weights, temperature)",
          "[loss][in_batch][gradient]") {
  const index_t n = 7, d = 3;
  auto q = loss_uniform(n * d, 61, -1.5, 1.5), k = loss_uniform(n * d, 62, -1.5, 1.5);
  auto lq = loss_uniform(n, 63, -3, 0), w = loss_uniform(n, 64, 0.1, 2);
  auto mask = every_third_off(n);
  for (bool use_lq : {false, true})
    for (bool use_mask : {false, true})
      for (double temperature : {1.0, 0.35}) {
        CAPTURE(use_lq, use_mask, temperature);
        const double* lqp = use_lq ? lq.data() : nullptr;
        const std::uint8_t* m = use_mask ? mask.data() : nullptr;
        const double* wp = use_mask ? w.data() : nullptr;  // weights together with the mask
        std::vector<double> dq(n * d, kNaN), dk(n * d, kNaN);
        const LossResult r = in_batch_softmax(dq.data(), dk.data(), q.data(), k.data(), n, d, temperature, lqp, m, wp);
        CHECK(r.value == Approx(in_batch_reference(q, k, n, d, temperature, lqp, m, wp)).epsilon(1e-12));
        auto value = [&] {
          return in_batch_softmax((double*)nullptr, (double*)nullptr, q.data(), k.data(), n, d, temperature, lqp, m, wp)
              .value;
        };
        CHECK(gradcheck("dq", q, dq, value) == n * d);
        CHECK(gradcheck("dk", k, dk, value) == n * d);
        if (use_mask) {
          // a masked row is out of the batch: no loss term and not a negative
          require_zero_rows(dq, mask, d);
          require_zero_rows(dk, mask, d);
        }
      }
}

TEST_CASE("in_batch_softmax: item-item pairs sharing one embedding buffer", "[loss][in_batch][gradient]") {
  // q and k are the same memory (e.g. both sides of an item-item pair drawn
  // from one table): the gradient of the shared buffer is dq + dk.
  const index_t n = 6, d = 4;
  auto e = loss_uniform(n * d, 71, -1, 1);
  std::vector<double> dq(n * d), dk(n * d), g(n * d);
  in_batch_softmax(dq.data(), dk.data(), e.data(), e.data(), n, d, 0.5, (const double*)nullptr, nullptr,
                   (const double*)nullptr);
  for (index_t i = 0; i < n * d; ++i) g[i] = dq[i] + dk[i];
  CHECK(gradcheck("de", e, g, [&] {
          return in_batch_softmax((double*)nullptr, (double*)nullptr, e.data(), e.data(), n, d, 0.5,
                                  (const double*)nullptr, nullptr, (const double*)nullptr)
              .value;
        }) == n * d);
}

TEST_CASE("in_batch_softmax: float matches double, workspace reuse", "[loss][in_batch]") {
  const index_t n = 40, d = 8;
  auto q = loss_uniform(n * d, 81), k = loss_uniform(n * d, 82), lq = loss_uniform(n, 83, -4, 0);
  std::vector<float> qf(q.begin(), q.end()), kf(k.begin(), k.end()), lqf(lq.begin(), lq.end());
  std::vector<double> dq(n * d), dk(n * d);
  std::vector<float> dqf(n * d), dkf(n * d), dqf2(n * d), dkf2(n * d);
  const double ref =
      in_batch_softmax(dq.data(), dk.data(), q.data(), k.data(), n, d, 0.2, lq.data(), nullptr, (const double*)nullptr)
          .value;
  InBatchSoftmaxWorkspace<float> ws;
  const double v1 = in_batch_softmax(dqf.data(), dkf.data(), qf.data(), kf.data(), n, d, 0.2, lqf.data(), nullptr,
                                     (const float*)nullptr, &ws)
                        .value;
  const double v2 = in_batch_softmax(dqf2.data(), dkf2.data(), qf.data(), kf.data(), n, d, 0.2, lqf.data(), nullptr,
                                     (const float*)nullptr, &ws)
                        .value;
  CHECK(v1 == Approx(ref).epsilon(1e-5));
  CHECK(v1 == v2);
  CHECK(testing::bitwise_equal(dqf.data(), dqf2.data(), n * d));
  for (index_t i = 0; i < n * d; ++i) {
    CHECK(dqf[i] == Approx(dq[i]).margin(1e-5));
    CHECK(dkf[i] == Approx(dk[i]).margin(1e-5));
  }
}

// ---- empty batches ---------------------------------------------------------------

TEST_CASE("losses: no labelled row (or zero total weight) gives 0, not NaN", "[loss][empty]") {
  const index_t n = 5, C = 3, d = 2;
  auto x = loss_uniform(n * C, 91, -2, 2);
  std::vector<double> labels(n, kNaN);  // missing labels may hold anything
  std::vector<index_t> classes(n, -100);
  std::vector<std::uint8_t> none(n, 0);
  std::vector<double> zero_w(n, 0.0), unit(n, 0.5);
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    // 0: every row masked; 1: all labelled, all weights 0; 2: n = 0 with null pointers
    const std::uint8_t* m = variant == 0 ? none.data() : nullptr;
    const double* w = variant == 1 ? zero_w.data() : nullptr;
    const index_t rows = variant == 2 ? 0 : n;
    const double* lab = variant == 1 ? unit.data() : labels.data();
    std::vector<index_t> cls = classes;
    if (variant == 1) std::fill(cls.begin(), cls.end(), 1);
    const double* xp = variant == 2 ? nullptr : x.data();
    const double* lp = variant == 2 ? nullptr : lab;
    const index_t expect_count = variant == 1 ? n : 0;
    std::vector<double> g(n * C, kNaN), g2(n * C, kNaN);
    // Runs one loss (after filling both gradient buffers with NaN), then
    // checks the result and that the first `written` gradient entries are 0.
    auto expect_empty = [&](const char* what, index_t written, const std::function<LossResult()>& loss) {
      INFO(what);
      std::fill(g.begin(), g.end(), kNaN);
      std::fill(g2.begin(), g2.end(), kNaN);
      const LossResult r = loss();
      CHECK(r.value == 0.0);
      CHECK(r.weight_sum == 0.0);
      CHECK(r.count == expect_count);
      for (index_t i = 0; i < written; ++i) CHECK(g[i] == 0.0);
    };
    expect_empty("bce", rows, [&] { return bce_with_logits(g.data(), xp, lp, m, w, rows); });
    expect_empty("mse", rows, [&] { return mse(g.data(), xp, lp, m, w, rows); });
    expect_empty("huber", rows, [&] { return huber(g.data(), xp, lp, m, w, rows); });
    expect_empty("ce", rows * C, [&] {
      return softmax_cross_entropy(g.data(), xp, variant == 2 ? nullptr : cls.data(), m, w, rows, C);
    });
    expect_empty("bpr", rows, [&] { return bpr(g.data(), g2.data(), xp, xp, m, w, rows); });
    for (index_t i = 0; i < rows; ++i) CHECK(g2[i] == 0.0);
    expect_empty("in_batch", rows * d, [&] {
      return in_batch_softmax(g.data(), g2.data(), xp, xp, rows, d, 1.0, (const double*)nullptr, m, w);
    });
    for (index_t i = 0; i < rows * d; ++i) CHECK(g2[i] == 0.0);
  }
  CHECK(weighted_mean_denominator(none.data(), (const double*)nullptr, n) == 0.0);
  CHECK(weighted_mean_denominator((const std::uint8_t*)nullptr, unit.data(), n) == Approx(2.5));
}

// ---- determinism ----------------------------------------------------------------

TEST_CASE("losses are bitwise identical for 1 and 2 threads", "[loss][determinism]") {
  const index_t n = 200003, C = 7, nb = 300, d = 16;
  auto x = loss_uniform(n, 101, -5, 5), y = loss_uniform(n, 102, 0, 1), w = loss_uniform(n, 103, 0, 2);
  auto xc = loss_uniform(n * C, 104, -5, 5);
  std::vector<index_t> cls(n);
  for (index_t i = 0; i < n; ++i) cls[i] = (i * 7919) % C;
  auto q = loss_uniform(nb * d, 105), k = loss_uniform(nb * d, 106);
  auto run = [&](std::vector<double>& g, std::vector<double>& gc, std::vector<double>& gq, std::vector<double>& gk) {
    std::vector<double> v;
    v.push_back(bce_with_logits(g.data(), x.data(), y.data(), nullptr, w.data(), n).value);
    v.push_back(softmax_cross_entropy(gc.data(), xc.data(), cls.data(), nullptr, w.data(), n, C).value);
    v.push_back(in_batch_softmax(gq.data(), gk.data(), q.data(), k.data(), nb, d, 0.1, (const double*)nullptr, nullptr,
                                 (const double*)nullptr)
                    .value);
    return v;
  };
  std::vector<double> g1(n), gc1(n * C), gq1(nb * d), gk1(nb * d), g2(n), gc2(n * C), gq2(nb * d), gk2(nb * d);
  std::vector<double> v1, v2;
  testing::with_threads(1, [&] { v1 = run(g1, gc1, gq1, gk1); });
  testing::with_threads(2, [&] { v2 = run(g2, gc2, gq2, gk2); });
  CHECK(testing::bitwise_equal(v1.data(), v2.data(), 3));
  CHECK(testing::bitwise_equal(g1.data(), g2.data(), n));
  CHECK(testing::bitwise_equal(gc1.data(), gc2.data(), n * C));
  CHECK(testing::bitwise_equal(gq1.data(), gq2.data(), nb * d));
  CHECK(testing::bitwise_equal(gk1.data(), gk2.data(), nb * d));
}

// ---- bad input ---------------------------------------------------------------------

TEST_CASE("losses reject bad labels, weights and options", "[loss][errors]") {
  const double x[] = {0.1, 0.2, 0.3, 0.4};
  double y[] = {0, 1, 0, kNaN};
  double g[12];
  const double* nw = nullptr;
  testing::require_error([&] { bce_with_logits(g, x, y, nullptr, nw, 4); },
                         {"bce_with_logits: labels[3] expected a finite value but got nan"});
  // the same NaN in a masked row is fine
  const std::uint8_t m[] = {1, 1, 1, 0};
  CHECK_NOTHROW(bce_with_logits(g, x, y, m, nw, 4));
  y[3] = 1.5;
  testing::require_error([&] { bce_with_logits(g, x, y, nullptr, nw, 4); },
                         {"bce_with_logits", "labels[3]", "[0, 1]", "1.5"});
  y[3] = 1;
  const double neg_w[] = {1, 1, -0.5, 1};
  testing::require_error([&] { bce_with_logits(g, x, y, nullptr, neg_w, 4); },
                         {"bce_with_logits", "weights[2]", "non-negative", "-0.5"});
  const double nan_w[] = {1, kNaN, 1, 1};
  testing::require_error([&] { mse(g, x, y, nullptr, nan_w, 4); }, {"mse", "weights[1]", "finite", "nan"});
  const double nan_t[] = {0, 0, kNaN, 0};
  testing::require_error([&] { mse(g, x, nan_t, nullptr, nw, 4); }, {"mse", "target[2]", "nan"});
  testing::require_error([&] { huber(g, x, y, nullptr, nw, 4, 0.0); }, {"huber", "delta", "0"});
  testing::require_error([&] { bce_with_logits(g, x, y, nullptr, nw, -1); }, {"bce_with_logits", "n >= 0", "-1"});
  testing::require_error([&] { bce_with_logits(g, (const double*)nullptr, y, nullptr, nw, 4); },
                         {"bce_with_logits", "logits is null", "n = 4"});
  // nothing was written before the error: g keeps its sentinel
  g[0] = 42;
  testing::require_error([&] { bce_with_logits(g, x, y, nullptr, neg_w, 4); }, {"weights[2]"});
  CHECK(g[0] == 42);

  const index_t cls[] = {0, 2, 3, 1};
  testing::require_error([&] { softmax_cross_entropy(g, x, cls, nullptr, nw, 2, 2); },
                         {"softmax_cross_entropy", "labels[1]", "[0, 2)", "got 2", "C = 2"});
  testing::require_error([&] { softmax_cross_entropy(g, x, cls + 2, nullptr, nw, 1, 3); },
                         {"softmax_cross_entropy", "labels[0]", "got 3", "C = 3"});
  const index_t neg_cls[] = {-1};
  testing::require_error([&] { softmax_cross_entropy(g, x, neg_cls, nullptr, nw, 1, 3); }, {"labels[0]", "-1"});
  testing::require_error([&] { softmax_cross_entropy(g, x, cls, nullptr, nw, 1, 0); },
                         {"softmax_cross_entropy", "C >= 1"});

  double dq[4], dk[4];
  testing::require_error([&] { in_batch_softmax(dq, dk, x, x, 2, 2, 0.0, nw, nullptr, nw); },
                         {"in_batch_softmax", "temperature", "0"});
  testing::require_error([&] { in_batch_softmax(dq, dk, x, x, 2, 2, kNaN, nw, nullptr, nw); },
                         {"in_batch_softmax", "temperature", "nan"});
  const double bad_lq[] = {0, kNaN};
  testing::require_error([&] { in_batch_softmax(dq, dk, x, x, 2, 2, 1.0, bad_lq, nullptr, nw); },
                         {"in_batch_softmax", "log_q_correction[1]", "nan"});
  testing::require_error([&] { bpr(dq, dk, x, x, nullptr, neg_w, 4); }, {"bpr", "weights[2]"});
}

// ---- float instantiations ---------------------------------------------------------

TEST_CASE("losses: float agrees with double, bare nullptr for optional arguments", "[loss][float]") {
  const index_t n = 24, C = 4, d = 3;
  auto x = loss_uniform(n * C, 111, -3, 3), y = loss_uniform(n, 112, 0, 1), w = loss_uniform(n, 113, 0, 2);
  std::vector<index_t> cls(n);
  for (index_t i = 0; i < n; ++i) cls[i] = i % C;
  auto mask = every_third_off(n);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end()), wf(w.begin(), w.end());
  std::vector<double> gd(n * C);
  std::vector<float> gf(n * C), gf2(n * C);
  auto close = [&](const LossResult& a, const LossResult& b, index_t count) {
    CHECK(a.value == Approx(b.value).epsilon(1e-5));
    CHECK(a.weight_sum == Approx(b.weight_sum).epsilon(1e-6));
    CHECK(a.count == b.count);
    for (index_t i = 0; i < count; ++i) CHECK(gf[i] == Approx(gd[i]).margin(1e-6));
  };
  close(bce_with_logits(gf.data(), xf.data(), yf.data(), mask.data(), wf.data(), n),
        bce_with_logits(gd.data(), x.data(), y.data(), mask.data(), w.data(), n), n);
  close(mse(gf.data(), xf.data(), yf.data(), mask.data(), wf.data(), n),
        mse(gd.data(), x.data(), y.data(), mask.data(), w.data(), n), n);
  close(huber(gf.data(), xf.data(), yf.data(), mask.data(), wf.data(), n, 0.5),
        huber(gd.data(), x.data(), y.data(), mask.data(), w.data(), n, 0.5), n);
  close(softmax_cross_entropy(gf.data(), xf.data(), cls.data(), mask.data(), wf.data(), n, C),
        softmax_cross_entropy(gd.data(), x.data(), cls.data(), mask.data(), w.data(), n, C), n * C);
  close(bpr(gf.data(), gf2.data(), xf.data(), yf.data(), mask.data(), wf.data(), n),
        bpr(gd.data(), (double*)nullptr, x.data(), y.data(), mask.data(), w.data(), n), n);
  // q = x[0, n d), k = x[n, n + n d): inside x since n * C = n + n * d (C = 4, d = 3)
  close(in_batch_softmax(gf.data(), gf2.data(), xf.data(), xf.data() + n, n, d, 0.5, wf.data(), mask.data(), wf.data()),
        in_batch_softmax(gd.data(), nullptr, x.data(), x.data() + n, n, d, 0.5, w.data(), mask.data(), w.data()),
        n * d);
  // every optional argument as a bare nullptr
  CHECK(bce_with_logits(nullptr, xf.data(), yf.data(), nullptr, nullptr, n).count == n);
  CHECK(mse(nullptr, x.data(), y.data(), nullptr, nullptr, n).count == n);
  CHECK(huber(nullptr, x.data(), y.data(), nullptr, nullptr, n).count == n);
  CHECK(softmax_cross_entropy(nullptr, xf.data(), cls.data(), nullptr, nullptr, n, C).count == n);
  CHECK(bpr(nullptr, nullptr, x.data(), y.data(), nullptr, nullptr, n).count == n);
  CHECK(in_batch_softmax(nullptr, nullptr, xf.data(), xf.data(), n, d, 1.0, nullptr, nullptr, nullptr).count == n);
}

// ---- op-table rows: The public losses -------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> public_loss_cases() {
  namespace ld = layer_detail;
  std::vector<OpCase> v;

  // ---- the public losses (checks, denominator, kernels) on each device ------------------
  // A mask with row 1 unlabelled and weights with one zero: both code paths.
  const index_t n = 6;
  const std::vector<std::uint8_t> mask = {1, 0, 1, 1, 1, 1};
  const std::vector<double> wts = {1.0, 0.5, 0.0, 2.0, 0.7, 1.3};
  auto wt = [wts](auto zero) {
    return std::vector<decltype(zero)>(wts.begin(), wts.end());
  };
  {
    const std::vector<double> y = {1, 0, 0.3, 1, 0, 0.8};
    OpCase c;
    c.op = "loss:bce_with_logits";
    c.shape = "n=6 masked weighted soft labels";
    c.in = {{n, true, -3, 3}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> yt(y.begin(), y.end()), w = wt(T(0));
          b.out[0][0] = T(mtrec::bce_with_logits(dev, nullptr, b.in[0].data(), yt.data(), mask.data(), w.data(), n).value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> yt(y.begin(), y.end()), w = wt(T(0));
          mtrec::bce_with_logits(dev, b.din[0].data(), b.in[0].data(), yt.data(), mask.data(), w.data(), n);
          ld::scale_by_dout(b, 0);
        }));
  }
  for (double delta : {0.0, 0.6}) {
    const std::vector<double> y = {0.5, -1, 0.2, 1.5, -0.3, 0.0};
    OpCase c;
    c.op = delta == 0.0 ? "loss:mse" : "loss:huber";
    c.shape = std::string("n=6 masked weighted") + (delta == 0.0 ? "" : " delta=0.6");
    c.in = {{n, true, -2, 2}};
    c.out = {1};
    auto call = [=](auto dev, auto* d, auto& b) {
      using T = typename std::decay_t<decltype(b)>::value_type;
      const std::vector<T> yt(y.begin(), y.end()), w = wt(T(0));
      return delta == 0.0 ? mtrec::mse(dev, d, b.in[0].data(), yt.data(), mask.data(), w.data(), n)
                          : mtrec::huber(dev, d, b.in[0].data(), yt.data(), mask.data(), w.data(), n, delta);
    };
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          b.out[0][0] = T(call(dev, static_cast<T*>(nullptr), b).value);
        },
        [=](auto dev, auto& b) {
          call(dev, b.din[0].data(), b);
          ld::scale_by_dout(b, 0);
        }));
  }
  {
    const index_t C = 4;
    const std::vector<index_t> cls = {2, -100, 0, 3, 1, 3};  // row 1 masked: an ignore_index placeholder
    OpCase c;
    c.op = "loss:softmax_cross_entropy";
    c.shape = "n=6 C=4 masked weighted";
    c.in = {{n * C, true, -3, 3}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          b.out[0][0] = T(mtrec::softmax_cross_entropy(dev, nullptr, b.in[0].data(), cls.data(), mask.data(), w.data(),
                                                       n, C)
                              .value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          mtrec::softmax_cross_entropy(dev, b.din[0].data(), b.in[0].data(), cls.data(), mask.data(), w.data(), n, C);
          ld::scale_by_dout(b, 0);
        }));
  }
  {
    OpCase c;
    c.op = "loss:bpr";
    c.shape = "n=6 masked weighted";
    c.in = {{n, true, -2, 2}, {n, true, -2, 2}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          b.out[0][0] = T(mtrec::bpr(dev, nullptr, nullptr, b.in[0].data(), b.in[1].data(), mask.data(), w.data(), n).value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          mtrec::bpr(dev, b.din[0].data(), b.din[1].data(), b.in[0].data(), b.in[1].data(), mask.data(), w.data(), n);
          ld::scale_by_dout(b, 0);
          ld::scale_by_dout(b, 1);
        }));
  }
  {
    const index_t d = 3;
    const std::vector<double> logq = {-1.0, -2.0, -0.5, -1.5, -3.0, -0.2};
    OpCase c;
    c.op = "loss:in_batch_softmax";
    c.shape = "n=6 d=3 temperature=0.5 log-q corrected masked weighted";
    c.in = {{n * d, true, -1, 1}, {n * d, true, -1, 1}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0)), lq(logq.begin(), logq.end());
          b.out[0][0] = T(mtrec::in_batch_softmax(dev, nullptr, nullptr, b.in[0].data(), b.in[1].data(), n, d, 0.5,
                                                  lq.data(), mask.data(), w.data())
                              .value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0)), lq(logq.begin(), logq.end());
          mtrec::in_batch_softmax(dev, b.din[0].data(), b.din[1].data(), b.in[0].data(), b.in[1].data(), n, d, 0.5,
                                  lq.data(), mask.data(), w.data());
          ld::scale_by_dout(b, 0);
          ld::scale_by_dout(b, 1);
        }));
  }
  return v;
}
OPTABLE_REGISTER(public_loss_cases);

}  // namespace
}  // namespace optable
