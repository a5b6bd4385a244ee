// Embedding and EmbeddingBag: gradients, touched rows, hashing, bad input.
#include "support/gradcheck.hpp"
#include "ops/layer_case.hpp"

using namespace mtrec;

TEST_CASE("gradient: Embedding (repeated IDs accumulate)", "[gradient][embedding]") {
  ParameterStore<double> store;
  Embedding<double> emb(store, "items", 6, 3);
  store.allocate();
  testing::randomise_parameters(store, 1);
  Tensor<index_t> ids({2, 3});
  const index_t v[] = {4, 1, 4, 0, 5, 4};
  std::copy(v, v + 6, ids.data());
  Embedding<double>::Context ctx;
  auto fwd = [&](Tensor<double>& out) {
    out.resize({6, 3});
    emb.forward(ctx, ids.view(), out.view());
  };
  auto bwd = [&](const Tensor<double>& R) {
    Tensor<double> y;
    fwd(y);
    emb.backward(ctx, R.view());
  };
  CHECK(testing::run_gradcheck(store, fwd, bwd, {}) == 18);
}

TEST_CASE("Embedding backward touches only the rows used", "[embedding]") {
  ParameterStore<float> store;
  Embedding<float> emb(store, "items", 1000, 4);
  store.allocate();
  Tensor<index_t> ids({3});
  ids[0] = 7;
  ids[1] = 999;
  ids[2] = 7;
  Tensor<float> y({3, 4}), dy({3, 4}, 1.0f);
  Embedding<float>::Context ctx;
  emb.forward(ctx, ids.view(), y.view());
  emb.backward(ctx, dy.view());
  const auto& t = store.touched(emb.table());
  REQUIRE(t.rows.size() == 2);
  CHECK(t.rows[0] == 7);
  CHECK(t.rows[1] == 999);
  const float* g = store.grad(emb.table());
  index_t nonzero_rows = 0;
  for (index_t r = 0; r < 1000; ++r) nonzero_rows += g[r * 4] != 0.0f;
  CHECK(nonzero_rows == 2);
  CHECK(g[7 * 4] == 2.0f);
  store.zero_grad();
  CHECK(store.touched(emb.table()).rows.empty());
  CHECK(g[7 * 4] == 0.0f);
  CHECK(g[999 * 4 + 3] == 0.0f);
}

TEST_CASE("Embedding hashing maps raw 64-bit IDs into the buckets", "[embedding]") {
  ParameterStore<float> store;
  Embedding<float> emb(store, "users", 97, 2);
  store.allocate();
  Tensor<std::uint64_t> raw({4});
  raw[0] = 0;
  raw[1] = 123456789012345ull;
  raw[2] = ~0ull;
  raw[3] = 123456789012345ull;
  Tensor<float> y({4, 2});
  Embedding<float>::Context ctx;
  emb.forward_hashed(ctx, raw.view(), y.view());
  for (index_t i = 0; i < 4; ++i) {
    CHECK(ctx.ids[i] >= 0);
    CHECK(ctx.ids[i] < 97);
    CHECK(ctx.ids[i] == hash_bucket(raw[i], 97));
    CHECK(y[i * 2] == store.value(emb.table())[ctx.ids[i] * 2]);
  }
  CHECK(ctx.ids[1] == ctx.ids[3]);
  // Spread: 10k distinct IDs fill every one of 97 buckets.
  std::vector<int> hits(97, 0);
  for (std::uint64_t i = 0; i < 10000; ++i) ++hits[static_cast<std::size_t>(hash_bucket(i, 97))];
  for (int h : hits) CHECK(h > 50);
}

TEST_CASE("bad input: Embedding ID out of range names the ID, the row count and the table", "[bad-input][embedding]") {
  ParameterStore<float> store;
  Embedding<float> emb(store, "movies", 10, 2);
  store.allocate();
  Tensor<index_t> ids({2});
  ids[0] = 3;
  ids[1] = 10;
  Tensor<float> y({2, 2});
  Embedding<float>::Context ctx;
  testing::require_error([&] { emb.forward(ctx, ids.view(), y.view()); },
                         {"Embedding::forward", "ID 10", "10 rows", "'movies'"});
  ids[1] = -1;
  testing::require_error([&] { emb.forward(ctx, ids.view(), y.view()); }, {"ID -1", "'movies'"});
}

namespace {
// Bags: [0, 3), [3, 3) empty, [3, 4) single, [4, 7)
struct Bags {
  Tensor<index_t> ids{Shape{7}}, offsets{Shape{5}};
  Tensor<double> weights{Shape{7}}, dweights{Shape{7}};
  Bags() {
    const index_t v[] = {2, 0, 2, 4, 1, 3, 1}, o[] = {0, 3, 3, 4, 7};
    std::copy(v, v + 7, ids.data());
    std::copy(o, o + 5, offsets.data());
    testing::fill_uniform(weights, 21, 0.2, 2.0);
  }
};
}  // namespace

TEST_CASE("gradient: EmbeddingBag sum and mean, weighted and not, bags of length 0 and 1",
          "[gradient][embedding_bag]") {
  for (BagPooling pooling : {BagPooling::Sum, BagPooling::Mean}) {
    for (bool weighted : {false, true}) {
      ParameterStore<double> store;
      EmbeddingBag<double> bag(store, "genres", 5, 3, pooling);
      store.allocate();
      testing::randomise_parameters(store, 2);
      Bags b;
      EmbeddingBag<double>::Context ctx;
      ConstView<double> w = weighted ? ConstView<double>(b.weights.view()) : ConstView<double>();
      auto fwd = [&](Tensor<double>& out) {
        out.resize({4, 3});
        bag.forward(ctx, b.ids.view(), b.offsets.view(), w, out.view());
      };
      auto bwd = [&](const Tensor<double>& R) {
        Tensor<double> y;
        fwd(y);
        bag.backward(ctx, R.view(), weighted ? b.dweights.view() : TensorView<double>());
      };
      std::vector<testing::InputGrad> inputs;
      if (weighted) inputs.push_back({"weights", &b.weights, &b.dweights});
      CAPTURE(pooling == BagPooling::Sum ? "sum" : "mean", weighted);
      CHECK(testing::run_gradcheck(store, fwd, bwd, inputs) == 15 + (weighted ? 7 : 0));
    }
  }
}

TEST_CASE("EmbeddingBag: an empty bag gives zeros, mean divides by the length", "[embedding_bag]") {
  ParameterStore<double> store;
  EmbeddingBag<double> bag(store, "g", 5, 3, BagPooling::Mean);
  store.allocate();
  Bags b;
  Tensor<double> y({4, 3});
  EmbeddingBag<double>::Context ctx;
  bag.forward(ctx, b.ids.view(), b.offsets.view(), {}, y.view());
  const double* t = store.value(bag.table());
  for (int c = 0; c < 3; ++c) {
    CHECK(y[0 * 3 + c] == Approx((t[2 * 3 + c] + t[0 * 3 + c] + t[2 * 3 + c]) / 3).epsilon(1e-12));
    CHECK(y[1 * 3 + c] == 0.0);
    CHECK(!std::isnan(y[1 * 3 + c]));
    CHECK(y[2 * 3 + c] == t[4 * 3 + c]);
  }
}

TEST_CASE("EmbeddingBag shares a table with Embedding", "[embedding_bag]") {
  ParameterStore<float> store;
  Embedding<float> emb(store, "items", 8, 2);
  EmbeddingBag<float> bag(store, emb.table(), BagPooling::Sum);
  store.allocate();
  CHECK(bag.table() == emb.table());
  CHECK(store.count() == 1);
}

TEST_CASE("bad input: EmbeddingBag offsets, IDs and weights", "[bad-input][embedding_bag]") {
  ParameterStore<float> store;
  EmbeddingBag<float> bag(store, "tags", 5, 2);
  store.allocate();
  Tensor<index_t> ids({3}), offsets({3});
  ids[0] = 1;
  ids[1] = 2;
  ids[2] = 3;
  Tensor<float> y({2, 2}), w({3}, 1.0f);
  EmbeddingBag<float>::Context ctx;
  offsets[0] = 0;
  offsets[1] = 2;
  offsets[2] = 1;  // decreasing
  testing::require_error([&] { bag.forward(ctx, ids.view(), offsets.view(), {}, y.view()); },
                         {"EmbeddingBag::forward", "non-decreasing", "offsets[2] = 1"});
  offsets[2] = 2;  // does not end at the ID count
  testing::require_error([&] { bag.forward(ctx, ids.view(), offsets.view(), {}, y.view()); },
                         {"offsets[2]", "number of IDs 3", "got 2"});
  offsets[0] = 1;
  testing::require_error([&] { bag.forward(ctx, ids.view(), offsets.view(), {}, y.view()); }, {"offsets[0]", "0"});
  offsets[0] = 0;
  offsets[2] = 3;
  ids[2] = 5;
  testing::require_error([&] { bag.forward(ctx, ids.view(), offsets.view(), {}, y.view()); },
                         {"ID 5", "5 rows", "'tags'"});
  ids[2] = 3;
  w[1] = std::numeric_limits<float>::quiet_NaN();
  testing::require_error([&] { bag.forward(ctx, ids.view(), offsets.view(), w.view(), y.view()); },
                         {"weights[1]", "finite", "nan"});
  Tensor<index_t> short_offsets({2});
  testing::require_error([&] { bag.forward(ctx, ids.view(), short_offsets.view(), {}, y.view()); },
                         {"offsets", "(3)", "(2)"});
}

TEST_CASE("EmbeddingBag forward: bitwise equal to the scalar bag loop, 1 and 2 threads, every width",
          "[embedding_bag][determinism]") {
  // Widths around the 4-vector register blocks and the vector tails; many
  // bags so that several parallel chunks run; empty and long bags included.
  for (index_t dim : {1, 3, 16, 17, 64, 70, 100}) {
    for (BagPooling pooling : {BagPooling::Sum, BagPooling::Mean}) {
      for (bool weighted : {false, true}) {
        const index_t rows = 300, B = 203;
        ParameterStore<float> store(5);
        EmbeddingBag<float> bag(store, "t", rows, dim, pooling);
        store.allocate();
        testing::randomise_parameters(store, 7);
        Tensor<index_t> offsets({B + 1});
        offsets[0] = 0;
        for (index_t b = 0; b < B; ++b) offsets[b + 1] = offsets[b] + (b * 7) % 23;  // lengths 0..22
        const index_t n = offsets[B];
        Tensor<index_t> ids({n});
        for (index_t i = 0; i < n; ++i) ids[i] = (i * 131 + 17) % rows;
        Tensor<float> w({n});
        testing::fill_uniform(w, 9, -2, 2);
        ConstView<float> wv = weighted ? ConstView<float>(w.view()) : ConstView<float>();
        // The scalar loop the layer used to run.
        std::vector<float> ref(static_cast<std::size_t>(B * dim));
        const float* t = store.value(bag.table());
        for (index_t b = 0; b < B; ++b) {
          float* yb = ref.data() + b * dim;
          for (index_t c = 0; c < dim; ++c) yb[c] = 0.f;
          const index_t s = offsets[b], e = offsets[b + 1];
          for (index_t i = s; i < e; ++i) {
            const float a = weighted ? w[i] : 1.f;
            for (index_t c = 0; c < dim; ++c) yb[c] += a * t[ids[i] * dim + c];
          }
          if (pooling == BagPooling::Mean && e > s) {
            const float inv = 1.f / float(e - s);
            for (index_t c = 0; c < dim; ++c) yb[c] *= inv;
          }
        }
        Tensor<float> one({B, dim}), two({B, dim});
        EmbeddingBag<float>::Context ctx;
        testing::with_threads(1, [&] { bag.forward(ctx, ids.view(), offsets.view(), wv, one.view()); });
        testing::with_threads(2, [&] { bag.forward(ctx, ids.view(), offsets.view(), wv, two.view()); });
        CAPTURE(dim, pooling == BagPooling::Sum ? "sum" : "mean", weighted);
        CHECK(testing::bitwise_equal(one.data(), two.data(), B * dim));
        if (!weighted) {
          // No products: the sums are exact in any contraction mode.
          CHECK(testing::bitwise_equal(one.data(), ref.data(), B * dim));
        } else {
          double m = 0;
          for (index_t i = 0; i < B * dim; ++i) m = std::max(m, std::fabs(double(one[i]) - double(ref[std::size_t(i)])));
          CHECK(m <= 1e-5);
        }
      }
    }
  }
}

// ---- op-table rows: EmbeddingBag ------------------------------------------------------
// Checked by tests/ops/test_ops.cpp on every device against reference in
// double, by finite differences and for bitwise repeatability (harness:
// tests/ops/layer_case.hpp).
namespace optable {
namespace {

std::vector<OpCase> embedding_layer_cases() {
  std::vector<OpCase> v;
  auto add = layer_detail::layer_adder(v);

  // ---- EmbeddingBag, weighted mean: the weights are an input, the table a parameter ----
  {
    const index_t rows = 7, dim = 5, B = 3;
    const std::vector<index_t> ids = {1, 6, 1, 0, 3};
    const std::vector<index_t> offsets = {0, 2, 2, 5};
    const index_t n = index_t(ids.size());
    OpCase c;
    c.op = "layer:EmbeddingBag";
    c.shape = "rows=7 dim=5 B=3 n=5 weighted mean, one empty bag, a repeated ID";
    c.out = {B * dim};
    add(
        c, {{n, true, 0.2, 1.5}}, OPT_LAYER(mtrec::EmbeddingBag<T, D>(st, "bag", rows, dim, mtrec::BagPooling::Mean)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, mtrec::ConstView<index_t>(ids.data(), {n}), mtrec::ConstView<index_t>(offsets.data(), {B + 1}),
                    CV(b.in[0].data(), {n}), V(b.out[0].data(), {B, dim}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(B * dim));
          L.forward(ctx, mtrec::ConstView<index_t>(ids.data(), {n}), mtrec::ConstView<index_t>(offsets.data(), {B + 1}),
                    CV(b.in[0].data(), {n}), V(y.data(), {B, dim}));
          L.backward(ctx, CV(b.dout[0].data(), {B, dim}), V(b.din[0].data(), {n}));
        });
  }
  return v;
}
OPTABLE_REGISTER(embedding_layer_cases);

}  // namespace
}  // namespace optable
