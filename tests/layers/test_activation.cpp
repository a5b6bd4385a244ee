// Activations: finite-difference gradients of each kind.
#include "support/gradcheck.hpp"

using namespace mtrec;

TEST_CASE("gradient: activations (ReLU, GELU, GELU-tanh, sigmoid, identity)", "[gradient][activation]") {
  for (Activation a : {Activation::ReLU, Activation::GELU, Activation::GELUTanh, Activation::Sigmoid,
                       Activation::Identity}) {
    ParameterStore<double> store;
    store.allocate();
    ActivationLayer<double> layer(a);
    Tensor<double> x({3, 37}), dx({3, 37});
    testing::fill_uniform(x, 7, -3, 3);
    ActivationLayer<double>::Context ctx;
    Tensor<double> y;
    auto fwd = [&](Tensor<double>& out) {
      out.resize(x.shape());
      layer.forward(ctx, x.view(), out.view());
    };
    auto bwd = [&](const Tensor<double>& R) {
      fwd(y);
      layer.backward(ctx, R.view(), dx.view());
    };
    CAPTURE(activation_name(a));
    CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) == x.numel());
  }
}

TEST_CASE("GELU uses erf by default, tanh on request", "[activation]") {
  // Independent values: PyTorch's F.gelu(1.0) = 0.8413447460685429,
  // F.gelu(1.0, approximate="tanh") = 0.8411919906082768.
  const double x = 1.0;
  double y = 0;
  kernels::gelu_forward(kernels::cpu, &y, &x, 1);
  CHECK(y == Approx(0.8413447460685429).epsilon(1e-12));
  kernels::gelu_forward(kernels::cpu, &y, &x, 1, kernels::GeluMode::Tanh);
  CHECK(y == Approx(0.8411919906082768).epsilon(1e-12));
}
