// Transformer encoder layer and stack: gradients with masks and dropout.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;

namespace {
TransformerConfig small_config(double dropout, Activation act = Activation::GELU) {
  TransformerConfig c;
  c.d_model = 4;
  c.heads = 2;
  c.ffn = 6;
  c.dropout = dropout;
  c.activation = act;
  return c;
}
}  // namespace

TEST_CASE("gradient: TransformerEncoderLayer (pre-LN, GELU, padding, dropout)", "[gradient][transformer]") {
  for (double dropout : {0.0, 0.25}) {
    ParameterStore<double> store;
    TransformerEncoderLayer<double> layer(store, "enc", small_config(dropout));
    store.allocate();
    testing::randomise_parameters(store, 41);
    Tensor<double> x({3, 4, 4}), dx({3, 4, 4});
    testing::fill_uniform(x, 42);
    Tensor<index_t> len({3});
    len[0] = 4;
    len[1] = 2;
    len[2] = 0;
    TransformerEncoderLayer<double>::Context ctx;
    const Mode mode = Mode::train(7, 3);
    auto fwd = [&](Tensor<double>& out) {
      out.resize(x.shape());
      layer.forward(ctx, x.view(), len.view(), out.view(), mode);
    };
    auto bwd = [&](const Tensor<double>& R) {
      Tensor<double> y;
      fwd(y);
      layer.backward(ctx, R.view(), dx.view());
    };
    CAPTURE(dropout);
    CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) > x.numel());
    Tensor<double> y;
    fwd(y);
    for (index_t i = 2 * 16; i < 3 * 16; ++i) CHECK(y[i] == 0.0);  // fully padded sequence: zeros
  }
}

TEST_CASE("gradient: TransformerEncoder stack of 2 with final LayerNorm, ReLU", "[gradient][transformer]") {
  for (bool final_norm : {true, false}) {
    ParameterStore<double> store;
    TransformerEncoder<double> enc(store, "enc", small_config(0.1, Activation::ReLU), 2, final_norm);
    store.allocate();
    testing::randomise_parameters(store, 51);
    Tensor<double> x({2, 3, 4}), dx({2, 3, 4});
    testing::fill_uniform(x, 52);
    Tensor<index_t> len({2});
    len[0] = 3;
    len[1] = 1;
    TransformerEncoder<double>::Context ctx;
    const Mode mode = Mode::train(1, 9);
    auto fwd = [&](Tensor<double>& out) {
      out.resize(x.shape());
      enc.forward(ctx, x.view(), len.view(), out.view(), mode);
    };
    auto bwd = [&](const Tensor<double>& R) {
      Tensor<double> y;
      fwd(y);
      enc.backward(ctx, R.view(), dx.view());
    };
    CAPTURE(final_norm);
    CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) > x.numel());
  }
}

TEST_CASE("Transformer in eval mode ignores dropout", "[transformer]") {
  ParameterStore<float> store;
  TransformerEncoderLayer<float> layer(store, "enc", small_config(0.5));
  store.allocate();
  Tensor<float> x({2, 3, 4}), a({2, 3, 4}), b({2, 3, 4});
  testing::fill_uniform(x, 1);
  Tensor<index_t> len({2});
  len[0] = 3;
  len[1] = 2;
  TransformerEncoderLayer<float>::Context ctx;
  layer.forward(ctx, x.view(), len.view(), a.view(), Mode::eval());
  layer.forward(ctx, x.view(), len.view(), b.view(), Mode::eval());
  CHECK(testing::bitwise_equal(a.data(), b.data(), a.numel()));
  layer.forward(ctx, x.view(), len.view(), b.view(), Mode::train(1));
  CHECK_FALSE(testing::bitwise_equal(a.data(), b.data(), a.numel()));
}

TEST_CASE("bad input: Transformer activation and shapes", "[bad-input][transformer]") {
  ParameterStore<float> store;
  testing::require_error([&] { TransformerEncoderLayer<float>(store, "e", small_config(0, Activation::Sigmoid)); },
                         {"TransformerEncoderLayer", "sigmoid"});
  TransformerEncoderLayer<float> layer(store, "ok", small_config(0));
  store.allocate();
  Tensor<float> x({2, 3, 5}), y({2, 3, 5});
  Tensor<index_t> len({2}, 1);
  TransformerEncoderLayer<float>::Context ctx;
  testing::require_error([&] { layer.forward(ctx, x.view(), len.view(), y.view(), Mode::eval()); },
                         {"TransformerEncoderLayer::forward", "(*, *, 4)", "(2, 3, 5)"});
}

TEST_CASE("TransformerEncoder backward: padded rows of dy are dropped, in place or copied, bit for bit",
          "[transformer]") {
  // Inside the stack each layer receives a dy whose padded rows are already
  // zero and uses it in place; a dy with garbage there is copied and zeroed.
  // Both must give the same dx and gradients, and dx is zero at padding.
  for (bool final_norm : {true, false}) {
    ParameterStore<float> store(2);
    TransformerConfig c = small_config(0.2);
    c.d_model = 8;
    c.ffn = 12;
    TransformerEncoder<float> enc(store, "enc", c, 2, final_norm);
    store.allocate();
    testing::randomise_parameters(store, 61);
    const index_t B = 4, T = 5, D = 8;
    Tensor<float> x({B, T, D}), y({B, T, D}), dy({B, T, D}), dy0({B, T, D}), dx({B, T, D}), dx0({B, T, D});
    testing::fill_uniform(x, 62);
    testing::fill_uniform(dy, 63);
    Tensor<index_t> len({B});
    len[0] = 5;
    len[1] = 2;
    len[2] = 0;
    len[3] = 4;
    dy0 = dy;
    for (index_t b = 0; b < B; ++b)
      for (index_t i = (b * T + len[b]) * D; i < (b + 1) * T * D; ++i) {
        dy0[i] = 0.f;
        dy[i] = 5.f;
      }
    TransformerEncoder<float>::Context ctx;
    enc.forward(ctx, x.view(), len.view(), y.view(), Mode::train(3, 4));
    enc.backward(ctx, dy.view(), dx.view());
    const std::vector<float> g1(store.grads(), store.grads() + store.size());
    store.zero_grad();
    enc.backward(ctx, dy0.view(), dx0.view());
    const std::vector<float> g0(store.grads(), store.grads() + store.size());
    CAPTURE(final_norm);
    CHECK(testing::bitwise_equal(dx.data(), dx0.data(), dx.numel()));
    CHECK(testing::bitwise_equal(g1.data(), g0.data(), index_t(g1.size())));
    for (index_t b = 0; b < B; ++b)
      for (index_t i = (b * T + len[b]) * D; i < (b + 1) * T * D; ++i) CHECK(dx[i] == 0.f);
  }
}

// The stack runs on the packed valid rows; the standalone layers run on the
// padded layout. Composing the standalone layers (and the final LayerNorm)
// with the same parameters is an independent reference for both directions.
TEST_CASE("TransformerEncoder (packed rows) equals its layers composed on the padded layout", "[transformer]") {
  const TransformerConfig c = small_config(0.0);
  const index_t B = 4, Tl = 5, D = c.d_model;
  ParameterStore<double> store, ref_store;
  TransformerEncoder<double> enc(store, "enc", c, 2, true);
  TransformerEncoderLayer<double> l0(ref_store, "enc.layers.0", c), l1(ref_store, "enc.layers.1", c);
  LayerNorm<double> norm(ref_store, "enc.norm", D, c.layer_norm_eps);
  store.allocate();
  ref_store.allocate();
  REQUIRE(store.size() == ref_store.size());
  for (ParamId id = 0; id < store.count(); ++id) REQUIRE(store.info(id).name == ref_store.info(id).name);
  testing::randomise_parameters(store, 61);
  std::copy(store.values(), store.values() + store.size(), ref_store.values());
  Tensor<double> x({B, Tl, D}), dy({B, Tl, D});
  testing::fill_uniform(x, 62);
  testing::fill_uniform(dy, 63);
  Tensor<index_t> len({B});
  len[0] = 5;
  len[1] = 0;
  len[2] = 3;
  len[3] = 1;
  const Mode mode = Mode::eval();
  // encoder
  TransformerEncoder<double>::Context ctx;
  Tensor<double> y({B, Tl, D}), dx({B, Tl, D});
  store.zero_grad();
  enc.forward(ctx, x.view(), len.view(), y.view(), mode);
  enc.backward(ctx, dy.view(), dx.view());
  // reference: padded layers, then LayerNorm, then padded rows zeroed
  TransformerEncoderLayer<double>::Context c0, c1;
  LayerNorm<double>::Context cn;
  Tensor<double> h0({B, Tl, D}), h1({B, Tl, D}), ry({B, Tl, D}), g({B, Tl, D}), g1({B, Tl, D}), g0({B, Tl, D}),
      rdx({B, Tl, D});
  ref_store.zero_grad();
  l0.forward(c0, x.view(), len.view(), h0.view(), mode);
  l1.forward(c1, h0.view(), len.view(), h1.view(), mode);
  norm.forward(cn, ConstView<double>(h1.data(), {B * Tl, D}), TensorView<double>(ry.data(), {B * Tl, D}));
  g = dy;
  for (index_t b = 0; b < B; ++b)
    for (index_t t = len[b]; t < Tl; ++t)
      for (index_t d = 0; d < D; ++d) {
        ry[(b * Tl + t) * D + d] = 0;  // y's padded rows are zero...
        g[(b * Tl + t) * D + d] = 0;   // ...so their gradient is dropped
      }
  norm.backward(cn, ConstView<double>(g.data(), {B * Tl, D}), TensorView<double>(g1.data(), {B * Tl, D}));
  l1.backward(c1, g1.view(), g0.view());
  l0.backward(c0, g0.view(), rdx.view());
  for (index_t i = 0; i < y.numel(); ++i) {
    CHECK(y[i] == Approx(ry[i]).margin(1e-12));
    CHECK(dx[i] == Approx(rdx[i]).margin(1e-12));
  }
  for (std::size_t i = 0; i < store.size(); ++i) CHECK(store.grads()[i] == Approx(ref_store.grads()[i]).margin(1e-12));

  SECTION("a batch whose sequences are all empty gives zeros both ways") {
    for (index_t b = 0; b < B; ++b) len[b] = 0;
    store.zero_grad();
    enc.forward(ctx, x.view(), len.view(), y.view(), mode);
    enc.backward(ctx, dy.view(), dx.view());
    for (index_t i = 0; i < y.numel(); ++i) {
      CHECK(y[i] == 0.0);
      CHECK(dx[i] == 0.0);
    }
    for (std::size_t i = 0; i < store.size(); ++i) CHECK(store.grads()[i] == 0.0);
  }
}

// ---- op-table rows: TransformerEncoder ------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> transformer_layer_cases() {
  using mtrec::Mode;
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- TransformerEncoder with a key-padding mask (one empty, one full sequence) ------
  const std::vector<index_t> lengths = {3, 0, 5};
  const index_t SB = 3, ST = 5;
  {
    const index_t Dm = 8;
    mtrec::TransformerConfig tc;
    tc.d_model = Dm;
    tc.heads = 2;
    tc.ffn = 12;
    tc.dropout = 0.0;
    OpCase c;
    c.op = "layer:TransformerEncoder";
    c.shape = "B=3 T=5 D=8 heads=2 ffn=12 layers=2 lengths=3,0,5";
    c.out = {SB * ST * Dm};
    c.fd_rtol = 1e-4;
    c.nmse_tol = 1e-6;  // two layers of float rounding, each layer norm dividing by a small deviation
    add(
        c, {{SB * ST * Dm}}, OPT_LAYER(mtrec::TransformerEncoder<T, D>(st, "enc", tc, 2)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(b.out[0].data(), {SB, ST, Dm}), Mode::eval());
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(SB * ST * Dm));
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(y.data(), {SB, ST, Dm}), Mode::eval());
          L.backward(ctx, CV(b.dout[0].data(), {SB, ST, Dm}), V(b.din[0].data(), {SB, ST, Dm}));
        });
  }
  return v;
}
OPTABLE_REGISTER(transformer_layer_cases);

}  // namespace
}  // namespace optable
