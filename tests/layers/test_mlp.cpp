// MLP: finite-difference gradients through every stage, with and without dropout.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;

TEST_CASE("gradient: MLP", "[gradient][mlp]") {
  struct Case {
    MLPConfig config;
    bool train;
  };
  const Case cases[] = {
      {{{6, 5, 2}, Activation::ReLU, 0.0, false}, false},
      {{{6, 3}, Activation::GELU, 0.3, true}, true},
      {{{4}, Activation::Sigmoid, 0.2, true}, true},
      {{{7, 1}, Activation::GELUTanh, 0.5, false}, true},
  };
  for (const auto& c : cases) {
    ParameterStore<double> store;
    MLP<double> mlp(store, "mlp", 4, c.config);
    store.allocate();
    testing::randomise_parameters(store, 12);
    Tensor<double> x({5, 4}), dx({5, 4}), y;
    testing::fill_uniform(x, 13, -2, 2);
    MLP<double>::Context ctx;
    const Mode mode = c.train ? Mode::train(3, 1) : Mode::eval();
    auto fwd = [&](Tensor<double>& out) {
      out.resize({5, mlp.out_features()});
      mlp.forward(ctx, x.view(), out.view(), mode);
    };
    auto bwd = [&](const Tensor<double>& R) {
      fwd(y);
      mlp.backward(ctx, R.view(), dx.view());
    };
    CAPTURE(c.config.hidden.size(), activation_name(c.config.activation), c.config.dropout, c.train);
    CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) > x.numel());
  }
}

TEST_CASE("MLP eval output is the composition of its Linear layers", "[mlp]") {
  ParameterStore<double> store;
  MLP<double> mlp(store, "mlp", 3, MLPConfig{{4, 2}, Activation::ReLU, 0.5, false});
  store.allocate();
  Tensor<double> x({2, 3}), y({2, 2});
  testing::fill_uniform(x, 1);
  MLP<double>::Context ctx;
  mlp.forward(ctx, x.view(), y.view(), Mode::eval());
  // Independent evaluation with plain loops over the stored weights.
  const double* w0 = store.value(store.find("mlp.0.weight"));
  const double* b0 = store.value(store.find("mlp.0.bias"));
  const double* w1 = store.value(store.find("mlp.1.weight"));
  const double* b1 = store.value(store.find("mlp.1.bias"));
  for (int r = 0; r < 2; ++r) {
    double h[4];
    for (int j = 0; j < 4; ++j) {
      h[j] = b0[j];
      for (int k = 0; k < 3; ++k) h[j] += w0[j * 3 + k] * x[r * 3 + k];
      h[j] = std::max(h[j], 0.0);
    }
    for (int j = 0; j < 2; ++j) {
      double o = b1[j];
      for (int k = 0; k < 4; ++k) o += w1[j * 4 + k] * h[k];
      CHECK(y[r * 2 + j] == Approx(o).epsilon(1e-12));
    }
  }
}

// ---- op-table rows: MLP ---------------------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> mlp_layer_cases() {
  using mtrec::Mode;
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- MLP: two Linear layers, GELU between, raw output -------------------------------
  {
    const index_t N = 5, in = 6;
    mtrec::MLPConfig cfg;
    cfg.hidden = {8, 3};
    cfg.activation = mtrec::Activation::GELU;
    cfg.activate_output = false;
    OpCase c;
    c.op = "layer:MLP";
    c.shape = "N=5 in=6 hidden=8,3 gelu";
    c.out = {N * 3};
    add(
        c, {{N * in}}, OPT_LAYER(mtrec::MLP<T, D>(st, "mlp", in, cfg)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(b.out[0].data(), {N, 3}), Mode::eval());
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(N * 3));
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(y.data(), {N, 3}), Mode::eval());
          L.backward(ctx, CV(b.dout[0].data(), {N, 3}), V(b.din[0].data(), {N, in}));
        });
  }
  return v;
}
OPTABLE_REGISTER(mlp_layer_cases);

}  // namespace
}  // namespace optable
