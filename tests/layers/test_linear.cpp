// Linear: finite-difference gradients, shapes, bad input.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;
using testing::InputGrad;

TEST_CASE("gradient: Linear", "[gradient][linear]") {
  for (bool bias : {true, false}) {
    for (auto shape : {Shape{5, 3}, Shape{2, 3, 3}, Shape{1, 3}}) {
      ParameterStore<double> store(3);
      Linear<double> fc(store, "fc", 3, 4, bias);
      store.allocate();
      testing::randomise_parameters(store, 11);
      Tensor<double> x(shape), dx(shape);
      testing::fill_uniform(x, 5);
      Shape yshape = shape;
      yshape.dims[yshape.rank - 1] = 4;
      Linear<double>::Context ctx;
      auto fwd = [&](Tensor<double>& y) {
        y.resize(yshape);
        fc.forward(ctx, x.view(), y.view());
      };
      auto bwd = [&](const Tensor<double>& R) {
        Tensor<double> y;
        fwd(y);
        fc.backward(ctx, R.view(), dx.view());
      };
      CAPTURE(bias, shape.str());
      CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) == x.numel() + 12 + (bias ? 4 : 0));
    }
  }
}

TEST_CASE("Linear matches y = x W^T + b computed by hand", "[linear]") {
  ParameterStore<float> store;
  Linear<float> fc(store, "fc", 2, 2);
  store.allocate();
  const float w[] = {1, 2, 3, 4}, b[] = {0.5f, -1};
  std::copy(w, w + 4, store.value(fc.weight()));
  std::copy(b, b + 2, store.value(fc.bias()));
  Tensor<float> x({1, 2}), y({1, 2});
  x[0] = 1;
  x[1] = -2;
  Linear<float>::Context ctx;
  fc.forward(ctx, x.view(), y.view());
  CHECK(y[0] == Approx(1 * 1 + 2 * -2 + 0.5));
  CHECK(y[1] == Approx(3 * 1 + 4 * -2 - 1));
}

TEST_CASE("Linear parameter gradients accumulate", "[linear]") {
  ParameterStore<double> store;
  Linear<double> fc(store, "fc", 3, 2);
  store.allocate();
  Tensor<double> x({4, 3}), y({4, 2}), dy({4, 2}), dx({4, 3});
  testing::fill_uniform(x, 1);
  testing::fill_uniform(dy, 2);
  Linear<double>::Context ctx;
  fc.forward(ctx, x.view(), y.view());
  fc.backward(ctx, dy.view(), dx.view());
  std::vector<double> once(store.grad(fc.weight()), store.grad(fc.weight()) + 6);
  fc.backward(ctx, dy.view(), dx.view());
  for (int i = 0; i < 6; ++i) CHECK(store.grad(fc.weight())[i] == Approx(2 * once[i]));
}

TEST_CASE("bad input: Linear shape mismatch names the operation and both shapes", "[bad-input][linear]") {
  ParameterStore<float> store;
  Linear<float> fc(store, "fc", 3, 2);
  store.allocate();
  Tensor<float> x({4, 5}), y({4, 2}), y_bad({3, 2});
  Linear<float>::Context ctx;
  testing::require_error([&] { fc.forward(ctx, x.view(), y.view()); }, {"Linear::forward", "x", "3", "(4, 5)"});
  Tensor<float> x_ok({4, 3});
  testing::require_error([&] { fc.forward(ctx, x_ok.view(), y_bad.view()); }, {"Linear::forward", "y", "(3, 2)"});
  testing::require_error([&] { Linear<float>(store, "late", 2, 2); }, {"ParameterStore::add", "after allocate"});
  ParameterStore<float> s2;
  testing::require_error([&] { Linear<float>(s2, "zero", 0, 2); }, {"Linear", "in=0"});
}

// ---- op-table rows: Linear ------------------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> linear_layer_cases() {
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- Linear ---------------------------------------------------------------------
  for (index_t N : {1, 3}) {
    const index_t in = 5, out = 7;
    OpCase c;
    c.op = "layer:Linear";
    c.shape = "N=" + std::to_string(N) + " in=5 out=7";
    c.out = {N * out};
    add(
        c, {{N * in}}, OPT_LAYER(mtrec::Linear<T, D>(st, "lin", in, out)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(b.out[0].data(), {N, out}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(N * out));
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(y.data(), {N, out}));
          L.backward(ctx, CV(b.dout[0].data(), {N, out}), V(b.din[0].data(), {N, in}));
        });
  }
  return v;
}
OPTABLE_REGISTER(linear_layer_cases);

}  // namespace
}  // namespace optable
