// Dropout: gradients with a fixed mask, train/eval, seeding, drop rate.
#include "support/gradcheck.hpp"

using namespace mtrec;

TEST_CASE("gradient: Dropout (training mask)", "[gradient][dropout]") {
  ParameterStore<double> store;
  store.allocate();
  Dropout<double> drop("drop", 0.4);
  Tensor<double> x({4, 19}), dx({4, 19}), y;
  testing::fill_uniform(x, 3);
  Dropout<double>::Context ctx;
  const Mode mode = Mode::train(5, 42);
  auto fwd = [&](Tensor<double>& out) {
    out.resize(x.shape());
    drop.forward(ctx, x.view(), out.view(), mode);
  };
  auto bwd = [&](const Tensor<double>& R) {
    fwd(y);
    drop.backward(ctx, R.view(), dx.view());
  };
  CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) == x.numel());
}

TEST_CASE("Dropout: identity in eval, seeded masks in training", "[dropout]") {
  Dropout<float> drop("drop", 0.25);
  const index_t n = 200003;
  Tensor<float> x({n}, 1.0f), y({n}), y2({n});
  Dropout<float>::Context ctx;
  drop.forward(ctx, x.view(), y.view(), Mode::eval());
  CHECK(testing::bitwise_equal(x.data(), y.data(), n));

  drop.forward(ctx, x.view(), y.view(), Mode::train(1, 7));
  index_t kept = 0;
  for (index_t i = 0; i < n; ++i) {
    REQUIRE((y[i] == 0.0f || y[i] == Approx(1.0f / 0.75f)));
    kept += y[i] != 0.0f;
  }
  // Binomial(n, 0.75): the standard deviation of the kept fraction is ~0.001.
  CHECK(double(kept) / n == Approx(0.75).margin(0.005));

  drop.forward(ctx, x.view(), y2.view(), Mode::train(1, 7));
  CHECK(testing::bitwise_equal(y.data(), y2.data(), n));  // same seed and step: same mask
  drop.forward(ctx, x.view(), y2.view(), Mode::train(2, 7));
  CHECK_FALSE(testing::bitwise_equal(y.data(), y2.data(), n));  // next step: new mask
  Dropout<float> other("other", 0.25);
  other.forward(ctx, x.view(), y2.view(), Mode::train(1, 7));
  CHECK_FALSE(testing::bitwise_equal(y.data(), y2.data(), n));  // other layer: other mask
}

TEST_CASE("bad input: Dropout rate out of range", "[bad-input][dropout]") {
  testing::require_error([] { Dropout<float>("d", 1.0); }, {"Dropout", "[0, 1)", "1"});
  testing::require_error([] { Dropout<float>("d", -0.1); }, {"Dropout", "-0.1"});
}
