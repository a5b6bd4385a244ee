// PositionalEmbedding and SequencePooling: gradients, masking, bad input.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;

TEST_CASE("gradient: PositionalEmbedding", "[gradient][positional]") {
  ParameterStore<double> store;
  PositionalEmbedding<double> pos(store, "pos", 6, 3);
  store.allocate();
  testing::randomise_parameters(store, 5);
  Tensor<double> x({2, 4, 3}), dx({2, 4, 3});
  testing::fill_uniform(x, 6);
  PositionalEmbedding<double>::Context ctx;
  auto fwd = [&](Tensor<double>& out) {
    out.resize(x.shape());
    pos.forward(ctx, x.view(), out.view());
  };
  auto bwd = [&](const Tensor<double>& R) {
    Tensor<double> y;
    fwd(y);
    pos.backward(ctx, R.view(), dx.view());
  };
  // Rows 4 and 5 of the table are unused by a length-4 input: gradient 0, checked too.
  CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) == 24 + 18);
}

TEST_CASE("bad input: PositionalEmbedding sequence longer than max_len", "[bad-input][positional]") {
  ParameterStore<float> store;
  PositionalEmbedding<float> pos(store, "pos", 4, 2);
  store.allocate();
  Tensor<float> x({1, 5, 2}), y({1, 5, 2});
  PositionalEmbedding<float>::Context ctx;
  testing::require_error([&] { pos.forward(ctx, x.view(), y.view()); },
                         {"PositionalEmbedding::forward", "length 5", "max_len 4"});
}

TEST_CASE("gradient: SequencePooling mean and first token, with fully padded rows", "[gradient][pooling]") {
  for (SequencePoolMode mode : {SequencePoolMode::Mean, SequencePoolMode::First}) {
    ParameterStore<double> store;
    store.allocate();
    SequencePooling<double> pool(mode);
    Tensor<double> x({4, 5, 3}), dx({4, 5, 3});
    testing::fill_uniform(x, 9);
    Tensor<index_t> len({4});
    len[0] = 5;
    len[1] = 2;
    len[2] = 0;
    len[3] = 1;
    SequencePooling<double>::Context ctx;
    auto fwd = [&](Tensor<double>& out) {
      out.resize({4, 3});
      pool.forward(ctx, x.view(), len.view(), out.view());
    };
    auto bwd = [&](const Tensor<double>& R) {
      Tensor<double> y;
      fwd(y);
      pool.backward(ctx, R.view(), dx.view());
    };
    CAPTURE(mode == SequencePoolMode::Mean ? "mean" : "first");
    CHECK(testing::run_gradcheck(store, fwd, bwd, {{"x", &x, &dx}}) == x.numel());
    Tensor<double> y;
    fwd(y);
    for (int c = 0; c < 3; ++c) CHECK(y[2 * 3 + c] == 0.0);  // fully padded: zeros
    if (mode == SequencePoolMode::Mean)
      CHECK(y[1 * 3 + 0] == Approx((x[1 * 15 + 0] + x[1 * 15 + 3]) / 2).epsilon(1e-12));
  }
}

TEST_CASE("bad input: sequence lengths out of range", "[bad-input][pooling]") {
  SequencePooling<float> pool;
  Tensor<float> x({2, 3, 4}), y({2, 4});
  Tensor<index_t> len({2});
  len[0] = 3;
  len[1] = 4;
  SequencePooling<float>::Context ctx;
  testing::require_error([&] { pool.forward(ctx, x.view(), len.view(), y.view()); },
                         {"SequencePooling::forward", "lengths[1]", "[0, 3]", "4"});
  len[1] = -1;
  testing::require_error([&] { pool.forward(ctx, x.view(), len.view(), y.view()); }, {"lengths[1]", "-1"});
}

// ---- op-table rows: PositionalEmbedding and SequencePooling ---------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> sequence_layer_cases() {
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- PositionalEmbedding ---------------------------------------------------------
  {
    const index_t B = 2, Tl = 5, Dm = 4;
    OpCase c;
    c.op = "layer:PositionalEmbedding";
    c.shape = "B=2 T=5 D=4 max_len=6";
    c.out = {B * Tl * Dm};
    add(
        c, {{B * Tl * Dm}}, OPT_LAYER(mtrec::PositionalEmbedding<T, D>(st, "pos", 6, Dm)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {B, Tl, Dm}), V(b.out[0].data(), {B, Tl, Dm}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(B * Tl * Dm));
          L.forward(ctx, CV(b.in[0].data(), {B, Tl, Dm}), V(y.data(), {B, Tl, Dm}));
          L.backward(ctx, CV(b.dout[0].data(), {B, Tl, Dm}), V(b.din[0].data(), {B, Tl, Dm}));
        });
  }

  // ---- sequence layers with a key-padding mask (one empty, one full sequence) ---------
  const std::vector<index_t> lengths = {3, 0, 5};
  const index_t SB = 3, ST = 5;
  for (auto mode : {mtrec::SequencePoolMode::Mean, mtrec::SequencePoolMode::First}) {
    const index_t Dm = 4;
    const bool first = mode == mtrec::SequencePoolMode::First;
    OpCase c;
    c.op = "layer:SequencePooling";
    c.shape = std::string("B=3 T=5 D=4 lengths=3,0,5 ") + (first ? "first" : "mean");
    c.out = {SB * Dm};
    add(
        c, {{SB * ST * Dm}}, OPT_LAYER(mtrec::SequencePooling<T, D>(mode)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(b.out[0].data(), {SB, Dm}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(SB * Dm));
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(y.data(), {SB, Dm}));
          L.backward(ctx, CV(b.dout[0].data(), {SB, Dm}), V(b.din[0].data(), {SB, ST, Dm}));
        });
  }
  return v;
}
OPTABLE_REGISTER(sequence_layer_cases);

}  // namespace
}  // namespace optable
