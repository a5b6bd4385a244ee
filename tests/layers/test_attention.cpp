// MultiHeadAttention: gradients with padding masks and fully padded rows.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;

namespace {
Tensor<index_t> lengths_of(std::initializer_list<index_t> v) {
  Tensor<index_t> t({static_cast<index_t>(v.size())});
  index_t i = 0;
  for (index_t x : v) t[i++] = x;
  return t;
}
}  // namespace

TEST_CASE("gradient: MultiHeadAttention with padding masks and a fully padded row", "[gradient][attention]") {
  for (index_t heads : {1, 2, 3}) {
    ParameterStore<double> store;
    MultiHeadAttention<double> mha(store, "mha", 6, heads);
    store.allocate();
    testing::randomise_parameters(store, 31);
    Tensor<double> x({4, 5, 6}), dx({4, 5, 6});
    testing::fill_uniform(x, 32);
    Tensor<index_t> len = lengths_of({5, 3, 0, 1});
    MultiHeadAttention<double>::Context ctx;
    auto fwd = [&](Tensor<double>& out) {
      out.resize(x.shape());
      mha.forward(ctx, x.view(), len.view(), out.view());
    };
    auto bwd = [&](const Tensor<double>& R) {
      Tensor<double> y;
      fwd(y);
      mha.backward(ctx, R.view(), dx.view());
    };
    CAPTURE(heads);
    CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) == x.numel() + 4 * 6 * 6 + 4 * 6);
  }
}

TEST_CASE("MultiHeadAttention: padded positions output zeros, never NaN, and are ignored as keys",
          "[attention]") {
  ParameterStore<double> store;
  MultiHeadAttention<double> mha(store, "mha", 4, 2);
  store.allocate();
  testing::randomise_parameters(store, 1);
  Tensor<double> x({2, 4, 4}), y({2, 4, 4}), y2({2, 4, 4});
  testing::fill_uniform(x, 2);
  Tensor<index_t> len = lengths_of({2, 0});
  MultiHeadAttention<double>::Context ctx;
  mha.forward(ctx, x.view(), len.view(), y.view());
  for (index_t i = 0; i < y.numel(); ++i) REQUIRE(std::isfinite(y[i]));
  for (index_t t = 2; t < 4; ++t)
    for (index_t c = 0; c < 4; ++c) CHECK(y[t * 4 + c] == 0.0);
  for (index_t i = 16; i < 32; ++i) CHECK(y[i] == 0.0);  // all padding -> zeros
  // Changing padded inputs must not change valid outputs.
  for (index_t i = 8; i < 16; ++i) x[i] += 100.0;
  mha.forward(ctx, x.view(), len.view(), y2.view());
  for (index_t i = 0; i < 8; ++i) CHECK(y2[i] == y[i]);
}

TEST_CASE("MultiHeadAttention with one valid key returns its value projection", "[attention]") {
  // softmax over a single key is 1, so y = W_o (W_v x_0 + b_v) + b_o: an
  // independent closed form computed here with plain loops.
  ParameterStore<double> store;
  MultiHeadAttention<double> mha(store, "mha", 4, 2);
  store.allocate();
  testing::randomise_parameters(store, 3);
  Tensor<double> x({1, 3, 4}), y({1, 3, 4});
  testing::fill_uniform(x, 4);
  Tensor<index_t> len = lengths_of({1});
  MultiHeadAttention<double>::Context ctx;
  mha.forward(ctx, x.view(), len.view(), y.view());
  const double* w_in = store.value(store.find("mha.in_proj.weight"));
  const double* b_in = store.value(store.find("mha.in_proj.bias"));
  const double* w_o = store.value(store.find("mha.out_proj.weight"));
  const double* b_o = store.value(store.find("mha.out_proj.bias"));
  double v[4];
  for (int j = 0; j < 4; ++j) {
    v[j] = b_in[8 + j];
    for (int k = 0; k < 4; ++k) v[j] += w_in[(8 + j) * 4 + k] * x[k];
  }
  for (int j = 0; j < 4; ++j) {
    double o = b_o[j];
    for (int k = 0; k < 4; ++k) o += w_o[j * 4 + k] * v[k];
    CHECK(y[j] == Approx(o).epsilon(1e-12));
  }
}

TEST_CASE("bad input: MultiHeadAttention heads must divide d_model", "[bad-input][attention]") {
  ParameterStore<float> store;
  testing::require_error([&] { MultiHeadAttention<float>(store, "mha", 6, 4); },
                         {"MultiHeadAttention", "d_model=6", "heads=4"});
}

TEST_CASE("MultiHeadAttention backward: the gradient of padded output rows is dropped, copied or not",
          "[attention]") {
  // dy with garbage in the padded rows takes the copying path; the same dy
  // with those rows zero is used in place. Both must give the same dx and
  // parameter gradients, bit for bit.
  ParameterStore<float> store(3);
  MultiHeadAttention<float> mha(store, "mha", 8, 2);
  store.allocate();
  testing::randomise_parameters(store, 4);
  const index_t B = 5, T = 6, D = 8;
  Tensor<float> x({B, T, D}), y({B, T, D}), dy({B, T, D}), dy0({B, T, D}), dx({B, T, D}), dx0({B, T, D});
  testing::fill_uniform(x, 5);
  testing::fill_uniform(dy, 6);
  Tensor<index_t> len = lengths_of({6, 3, 0, 1, 5});
  dy0 = dy;
  for (index_t b = 0; b < B; ++b)
    for (index_t t = len[b]; t < T; ++t)
      for (index_t c = 0; c < D; ++c) {
        dy0[(b * T + t) * D + c] = 0.f;
        dy[(b * T + t) * D + c] = t % 2 ? std::numeric_limits<float>::quiet_NaN() : 3.f;
      }
  MultiHeadAttention<float>::Context ctx;
  mha.forward(ctx, x.view(), len.view(), y.view());
  mha.backward(ctx, dy.view(), dx.view());
  const std::vector<float> g1(store.grads(), store.grads() + store.size());
  store.zero_grad();
  mha.backward(ctx, dy0.view(), dx0.view());
  const std::vector<float> g0(store.grads(), store.grads() + store.size());
  CHECK(testing::bitwise_equal(dx.data(), dx0.data(), dx.numel()));
  CHECK(testing::bitwise_equal(g1.data(), g0.data(), index_t(g1.size())));
  for (index_t b = 0; b < B; ++b)
    for (index_t t = len[b]; t < T; ++t)
      for (index_t c = 0; c < D; ++c) CHECK(dx[(b * T + t) * D + c] == 0.f);
  for (float v : g1) CHECK(std::isfinite(v));
}

// ---- op-table rows: MultiHeadAttention ------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> attention_layer_cases() {
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- MultiHeadAttention with a key-padding mask (one empty, one full sequence) ------
  const std::vector<index_t> lengths = {3, 0, 5};
  const index_t SB = 3, ST = 5;
  {
    const index_t Dm = 8;
    OpCase c;
    c.op = "layer:MultiHeadAttention";
    c.shape = "B=3 T=5 D=8 heads=2 lengths=3,0,5";
    c.out = {SB * ST * Dm};
    c.fd_rtol = 1e-4;
    c.nmse_tol = 1e-6;
    add(
        c, {{SB * ST * Dm}}, OPT_LAYER(mtrec::MultiHeadAttention<T, D>(st, "mha", Dm, 2)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(b.out[0].data(), {SB, ST, Dm}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(SB * ST * Dm));
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(y.data(), {SB, ST, Dm}));
          L.backward(ctx, CV(b.dout[0].data(), {SB, ST, Dm}), V(b.din[0].data(), {SB, ST, Dm}));
        });
  }
  return v;
}
OPTABLE_REGISTER(attention_layer_cases);

}  // namespace
}  // namespace optable
