// LayerNorm: finite-difference gradients and normalisation.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;

TEST_CASE("gradient: LayerNorm", "[gradient][layernorm]") {
  for (index_t dim : {1, 5, 19}) {
    ParameterStore<double> store;
    LayerNorm<double> ln(store, "ln", dim);
    store.allocate();
    testing::randomise_parameters(store, 4);
    Tensor<double> x({2, 3, dim}), dx({2, 3, dim}), y;
    testing::fill_uniform(x, 8, -2, 2);
    LayerNorm<double>::Context ctx;
    auto fwd = [&](Tensor<double>& out) {
      out.resize(x.shape());
      ln.forward(ctx, x.view(), out.view());
    };
    auto bwd = [&](const Tensor<double>& R) {
      fwd(y);
      ln.backward(ctx, R.view(), dx.view());
    };
    CAPTURE(dim);
    CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}, 99, 1e-6, 1e-7) == x.numel() + 2 * dim);
  }
}

TEST_CASE("LayerNorm output has zero mean and unit variance per row", "[layernorm]") {
  ParameterStore<float> store;
  LayerNorm<float> ln(store, "ln", 33);
  store.allocate();
  Tensor<float> x({4, 33}), y({4, 33});
  testing::fill_uniform(x, 3, -5, 9);
  LayerNorm<float>::Context ctx;
  ln.forward(ctx, x.view(), y.view());
  for (index_t r = 0; r < 4; ++r) {
    double m = 0, v = 0;
    for (index_t c = 0; c < 33; ++c) m += y[r * 33 + c];
    m /= 33;
    for (index_t c = 0; c < 33; ++c) v += (y[r * 33 + c] - m) * (y[r * 33 + c] - m);
    CHECK(m == Approx(0).margin(1e-6));
    CHECK(v / 33 == Approx(1).epsilon(1e-4));  // eps = 1e-5 shrinks it slightly
  }
}

TEST_CASE("bad input: LayerNorm width mismatch", "[bad-input][layernorm]") {
  ParameterStore<float> store;
  LayerNorm<float> ln(store, "ln", 8);
  store.allocate();
  Tensor<float> x({2, 7}), y({2, 7});
  LayerNorm<float>::Context ctx;
  testing::require_error([&] { ln.forward(ctx, x.view(), y.view()); }, {"LayerNorm::forward", "8", "(2, 7)"});
}

// ---- op-table rows: LayerNorm ---------------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> layernorm_layer_cases() {
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- LayerNorm --------------------------------------------------------------------
  {
    const index_t N = 4, dim = 9;
    OpCase c;
    c.op = "layer:LayerNorm";
    c.shape = "N=4 dim=9";
    c.out = {N * dim};
    c.fd_rtol = 1e-4;
    add(
        c, {{N * dim, true, -2, 2}}, OPT_LAYER(mtrec::LayerNorm<T, D>(st, "ln", dim)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {N, dim}), V(b.out[0].data(), {N, dim}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(N * dim));
          L.forward(ctx, CV(b.in[0].data(), {N, dim}), V(y.data(), {N, dim}));
          L.backward(ctx, CV(b.dout[0].data(), {N, dim}), V(b.din[0].data(), {N, dim}));
        });
  }
  return v;
}
OPTABLE_REGISTER(layernorm_layer_cases);

}  // namespace
}  // namespace optable
