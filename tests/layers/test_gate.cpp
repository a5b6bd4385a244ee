// MixtureGate (MMoE / CGC gating): finite-difference gradients through the
// gate input, every expert output and the gate projection; the mix against
// a hand computation; bad input.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;
using testing::InputGrad;

TEST_CASE("gradient: MixtureGate (input, experts, projection)", "[gradient][gate]") {
  for (index_t M : {index_t(1), index_t(3)}) {
    const index_t B = 4, in = 5, De = 3;
    ParameterStore<double> store(7);
    MixtureGate<double> gate(store, "gate", in, M, De);
    store.allocate();
    testing::randomise_parameters(store, 3);
    Tensor<double> x({B, in}), dx({B, in});
    testing::fill_uniform(x, 1);
    std::vector<Tensor<double>> E(static_cast<std::size_t>(M)), dE(static_cast<std::size_t>(M));
    std::vector<const double*> ep;
    std::vector<double*> dep;
    for (index_t m = 0; m < M; ++m) {
      E[std::size_t(m)] = Tensor<double>({B, De});
      dE[std::size_t(m)] = Tensor<double>({B, De});
      testing::fill_uniform(E[std::size_t(m)], 10 + std::uint64_t(m));
      ep.push_back(E[std::size_t(m)].data());
      dep.push_back(dE[std::size_t(m)].data());
    }
    MixtureGate<double>::Context ctx;
    auto fwd = [&](Tensor<double>& y) {
      y.resize({B, De});
      gate.forward(ctx, x.view(), ep.data(), y.view());
    };
    auto bwd = [&](const Tensor<double>& R) {
      Tensor<double> y;
      fwd(y);
      dx.zero();  // the gate ADDS into dx and the expert gradients
      for (auto& t : dE) t.zero();
      gate.backward(ctx, R.view(), dep.data(), dx.view());
    };
    std::vector<InputGrad> inputs{{"x", &x, &dx}};
    for (index_t m = 0; m < M; ++m)
      inputs.push_back({"expert" + std::to_string(m), &E[std::size_t(m)], &dE[std::size_t(m)]});
    CAPTURE(M);
    CHECK(testing::run_gradcheck(store, fwd, bwd, inputs) == B * in + M * B * De + M * in + M);
  }
}

TEST_CASE("MixtureGate mixes the experts with the softmax of the projection", "[gate]") {
  ParameterStore<double> store;
  MixtureGate<double> gate(store, "g", 1, 2, 2);
  store.allocate();
  const double w[] = {1.0, -1.0}, b[] = {0.0, 0.5};
  std::copy(w, w + 2, store.value(gate.projection().weight()));
  std::copy(b, b + 2, store.value(gate.projection().bias()));
  Tensor<double> x({1, 1}), y({1, 2}), e0({1, 2}), e1({1, 2});
  x[0] = 2.0;
  e0[0] = 1;
  e0[1] = 2;
  e1[0] = -3;
  e1[1] = 4;
  const double* ep[] = {e0.data(), e1.data()};
  MixtureGate<double>::Context ctx;
  gate.forward(ctx, x.view(), ep, y.view());
  const double z0 = 2.0, z1 = -2.0 + 0.5, p0 = std::exp(z0) / (std::exp(z0) + std::exp(z1)), p1 = 1 - p0;
  CHECK(y[0] == Approx(p0 * 1 + p1 * -3));
  CHECK(y[1] == Approx(p0 * 2 + p1 * 4));
}

TEST_CASE("bad input: MixtureGate shapes and null experts", "[gate][bad-input]") {
  ParameterStore<float> store;
  MixtureGate<float> gate(store, "g", 3, 2, 4);
  store.allocate();
  Tensor<float> x({2, 3}), y({2, 4}), wrong({2, 5});
  MixtureGate<float>::Context ctx;
  const float* none[] = {nullptr, nullptr};
  testing::require_error([&] { gate.forward(ctx, wrong.view(), none, y.view()); }, {"MixtureGate::forward", "x"});
  testing::require_error([&] { gate.forward(ctx, x.view(), none, y.view()); }, {"MixtureGate::forward", "expert output 0"});
}

// ---- op-table rows: MixtureGate -------------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> gate_layer_cases() {
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- MixtureGate: M expert outputs mixed by a softmax gate ----------------------------
  {
    const index_t B = 4, in = 6, M = 3, De = 5;
    OpCase c;
    c.op = "layer:MixtureGate";
    c.shape = "B=4 in=6 M=3 De=5";
    c.out = {B * De};
    std::vector<Input> own = {{B * in}};
    for (index_t m = 0; m < M; ++m) own.push_back({B * De});
    add(
        c, own, OPT_LAYER(mtrec::MixtureGate<T, D>(st, "gate", in, M, De)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<const T*> e;
          for (index_t m = 0; m < M; ++m) e.push_back(b.in[std::size_t(1 + m)].data());
          L.forward(ctx, CV(b.in[0].data(), {B, in}), e.data(), V(b.out[0].data(), {B, De}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<const T*> e;
          std::vector<T*> de;
          for (index_t m = 0; m < M; ++m) {
            e.push_back(b.in[std::size_t(1 + m)].data());
            de.push_back(b.din[std::size_t(1 + m)].data());
          }
          std::vector<T> y(std::size_t(B * De));
          L.forward(ctx, CV(b.in[0].data(), {B, in}), e.data(), V(y.data(), {B, De}));
          L.backward(ctx, CV(b.dout[0].data(), {B, De}), de.data(), V(b.din[0].data(), {B, in}));
        });
  }
  return v;
}
OPTABLE_REGISTER(gate_layer_cases);

}  // namespace
}  // namespace optable
