// Transformer encoder layer and stack: gradients with masks and dropout.
#include "support/gradcheck.hpp"

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
