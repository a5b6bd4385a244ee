// Parity with PyTorch: mtrec layers against float64 reference values that
// tools/make_torch_fixtures.py computed with torch and stored in
// tests/fixtures/ (CI never needs torch).
//
// Every fixture holds inputs, parameters (under mtrec's names), the output, a
// random cotangent R and the gradients of sum(out * R) with respect to every
// input and parameter. Each layer runs in double and in float: forward,
// compare the output, backward with dOut = R, compare every input and every
// parameter gradient. Relative error of a tensor:
//   max |mine - ref| / max(max |ref|, 1e-12)
// which must stay <= 1e-5 (forward) and <= 1e-4 (gradients) in float, and
// <= 1e-10 in double. Set MTREC_PARITY_REPORT=1 to print every measured error.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <mtrec/mtrec.hpp>

#include "parity/fixture.hpp"

using mtrec::index_t;

namespace {

template <class T>
struct Tolerance;
template <>
struct Tolerance<float> {
  static constexpr double forward = 1e-5;
  static constexpr double gradient = 1e-4;
  static const char* name() { return "float"; }
};
template <>
struct Tolerance<double> {
  static constexpr double forward = 1e-10;
  static constexpr double gradient = 1e-10;
  static const char* name() { return "double"; }
};

bool report_enabled() {
  const char* v = std::getenv("MTREC_PARITY_REPORT");
  return v && *v && std::string(v) != "0";
}

// Compares `mine` with the fixture tensor `ref` where keep(i) holds.
template <class T, class Keep>
void check_close(const parity::Fixture& fx, const std::string& what, mtrec::ConstView<T> mine_view,
                 const std::string& ref_name, double tol, Keep keep) {
  const parity::FixtureTensor& ref = fx.tensor(ref_name);
  {
    INFO("fixture " << fx.path() << ": " << what << " has shape " << mine_view.shape << " but '" << ref_name
                    << "' has shape " << parity::to_shape(ref.shape));
    REQUIRE(mine_view.shape == parity::to_shape(ref.shape));
  }
  const T* mine = mine_view.data;
  const parity::RelError e = parity::rel_error(mine, ref, keep);
  const double rel = e.rel();
  if (report_enabled())
    std::printf("  %-32s %-6s %-34s rel %.3e  (max|diff| %.3e, max|ref| %.3e, tol %.0e)\n",
                fx.path().substr(fx.path().find_last_of('/') + 1).c_str(), Tolerance<T>::name(), what.c_str(), rel,
                e.max_abs_diff, e.max_abs_ref, tol);
  INFO("fixture " << fx.path() << ", " << Tolerance<T>::name() << ": " << what << " vs '" << ref_name << "'");
  INFO("relative error " << rel << " (max |mine - ref| = " << e.max_abs_diff << ", max |ref| = " << e.max_abs_ref
                         << "), tolerance " << tol);
  std::ostringstream worst;
  if (e.worst >= 0)
    worst << "at flat index " << e.worst << ": mine = " << double(mine[e.worst])
          << ", ref = " << ref.values[static_cast<std::size_t>(e.worst)];
  INFO(worst.str());
  CHECK(rel <= tol);
}
template <class T>
void check_close(const parity::Fixture& fx, const std::string& what, mtrec::ConstView<T> mine,
                 const std::string& ref_name, double tol) {
  check_close(fx, what, mine, ref_name, tol, [](index_t) { return true; });
}

// Copies every "param/<name>" of the fixture into the store. The fixture's
// parameter set must equal the store's, shapes included, so a renamed or
// missing parameter fails here rather than silently keeping its init.
template <class T>
void load_parameters(const parity::Fixture& fx, mtrec::ParameterStore<T>& store) {
  std::set<std::string> in_fixture;
  for (const auto& kv : fx.tensors())
    if (kv.first.rfind("param/", 0) == 0) in_fixture.insert(kv.first.substr(6));
  std::set<std::string> in_store;
  for (const auto& p : store.infos()) in_store.insert(p.name);
  CAPTURE(fx.path());
  for (const auto& n : in_store) {
    INFO("mtrec parameter '" << n << "' has no 'param/" << n << "' in the fixture");
    CHECK(in_fixture.count(n) == 1);
  }
  for (const auto& n : in_fixture) {
    INFO("fixture parameter 'param/" << n << "' is not a parameter of the mtrec layer");
    CHECK(in_store.count(n) == 1);
  }
  REQUIRE(in_store == in_fixture);
  for (const auto& n : in_store) {
    const mtrec::ParamId id = store.find(n);
    const mtrec::ParamInfo& info = store.info(id);
    const parity::FixtureTensor& t = fx.tensor("param/" + n);
    INFO("parameter '" << n << "': store shape " << info.shape << " vs fixture shape " << parity::to_shape(t.shape));
    REQUIRE(parity::to_shape(t.shape) == info.shape);
    T* w = store.value(id);
    for (index_t i = 0; i < t.numel(); ++i) w[i] = static_cast<T>(t.values[static_cast<std::size_t>(i)]);
  }
}

// Compares every parameter gradient in the store with "grad/<name>".
template <class T>
void check_parameter_gradients(const parity::Fixture& fx, const mtrec::ParameterStore<T>& store) {
  for (const auto& p : store.infos()) {
    check_close(fx, "d " + p.name, store.grad_view(store.find(p.name)), "grad/" + p.name, Tolerance<T>::gradient);
  }
}

// Row (b, t) of a (B, T, D) tensor is valid iff t < lengths[b].
struct ValidRows {
  const mtrec::Tensor<index_t>* lengths;
  index_t T_len, D;
  bool operator()(index_t i) const { return (i / D) % T_len < (*lengths)[i / (D * T_len)]; }
};

template <class T>
index_t count_nonzero_padded(const mtrec::Tensor<T>& y, const ValidRows& valid) {
  index_t bad = 0;
  for (index_t i = 0; i < y.numel(); ++i)
    if (!valid(i) && y[i] != T(0)) ++bad;
  return bad;
}

}  // namespace

TEMPLATE_TEST_CASE("parity: TransformerEncoderLayer vs torch (float64 fixture)", "[parity][transformer]", float,
                   double) {
  using T = TestType;
  const parity::Fixture fx = parity::Fixture::load("transformer_encoder_layer.txt");
  REQUIRE(fx.meta("layer") == "TransformerEncoderLayer");
  REQUIRE(fx.meta("activation") == "gelu");
  mtrec::TransformerConfig c;
  c.d_model = fx.meta_int("d_model");
  c.heads = fx.meta_int("heads");
  c.ffn = fx.meta_int("ffn");
  c.dropout = 0.0;  // as the fixture: dropout=0.0 in train mode
  c.activation = mtrec::Activation::GELU;
  c.layer_norm_eps = fx.meta_double("layer_norm_eps");

  mtrec::ParameterStore<T> store(7);
  mtrec::TransformerEncoderLayer<T> layer(store, fx.meta("name"), c);
  store.allocate();
  load_parameters(fx, store);

  const mtrec::Tensor<index_t> lengths = fx.as_index("lengths");
  const index_t B = lengths.numel();
  const mtrec::Tensor<T> x = fx.as<T>("x");
  REQUIRE(x.shape().rank == 3);
  REQUIRE(x.dim(0) == B);
  REQUIRE(x.dim(2) == c.d_model);
  const index_t Tl = x.dim(1);
  const mtrec::Tensor<T> R = fx.as<T>("R", {B, Tl, c.d_model});
  const ValidRows valid{&lengths, Tl, c.d_model};

  mtrec::Tensor<T> y(x.shape()), dx(x.shape());
  typename mtrec::TransformerEncoderLayer<T>::Context ctx;
  layer.forward(ctx, x.view(), lengths.view(), y.view(), mtrec::Mode::train(1));
  check_close(fx, "y (valid rows)", y.cview(), "y", Tolerance<T>::forward, valid);
  CHECK(count_nonzero_padded(y, valid) == 0);  // mtrec's padded rows are exact zeros

  layer.backward(ctx, R.view(), dx.view());
  check_close(fx, "dx", dx.cview(), "dx", Tolerance<T>::gradient);
  check_parameter_gradients(fx, store);

  // With dropout 0, evaluation mode computes the same output bit for bit.
  mtrec::Tensor<T> y_eval(x.shape());
  typename mtrec::TransformerEncoderLayer<T>::Context ctx_eval;
  layer.forward(ctx_eval, x.view(), lengths.view(), y_eval.view(), mtrec::Mode::eval());
  index_t differ = 0;
  for (index_t i = 0; i < y.numel(); ++i) differ += y[i] != y_eval[i];
  CHECK(differ == 0);
}

TEMPLATE_TEST_CASE("parity: MultiheadAttention (self-attention) vs torch (float64 fixture)", "[parity][attention]",
                   float, double) {
  using T = TestType;
  const parity::Fixture fx = parity::Fixture::load("multihead_attention.txt");
  REQUIRE(fx.meta("layer") == "MultiHeadAttention");
  const index_t D = fx.meta_int("d_model"), H = fx.meta_int("heads");

  mtrec::ParameterStore<T> store(7);
  mtrec::MultiHeadAttention<T> mha(store, fx.meta("name"), D, H);
  store.allocate();
  load_parameters(fx, store);

  const mtrec::Tensor<index_t> lengths = fx.as_index("lengths");
  const index_t B = lengths.numel();
  const mtrec::Tensor<T> x = fx.as<T>("x");
  REQUIRE(x.shape().rank == 3);
  REQUIRE(x.dim(0) == B);
  REQUIRE(x.dim(2) == D);
  const index_t Tl = x.dim(1);
  const mtrec::Tensor<T> R = fx.as<T>("R", {B, Tl, D});
  const ValidRows valid{&lengths, Tl, D};

  mtrec::Tensor<T> y(x.shape()), dx(x.shape());
  typename mtrec::MultiHeadAttention<T>::Context ctx;
  mha.forward(ctx, x.view(), lengths.view(), y.view());
  check_close(fx, "y (valid rows)", y.cview(), "y", Tolerance<T>::forward, valid);
  CHECK(count_nonzero_padded(y, valid) == 0);

  mha.backward(ctx, R.view(), dx.view());
  check_close(fx, "dx", dx.cview(), "dx", Tolerance<T>::gradient);
  check_parameter_gradients(fx, store);
}

namespace {

template <class T>
void run_embedding_bag(const std::string& file) {
  const parity::Fixture fx = parity::Fixture::load(file);
  REQUIRE(fx.meta("layer") == "EmbeddingBag");
  const std::string mode = fx.meta("mode");
  REQUIRE((mode == "sum" || mode == "mean"));
  const bool weighted = fx.meta_int("weighted") != 0;
  const index_t rows = fx.meta_int("rows"), dim = fx.meta_int("dim");

  mtrec::ParameterStore<T> store(7);
  mtrec::EmbeddingBag<T> bag(store, fx.meta("name"), rows, dim,
                             mode == "sum" ? mtrec::BagPooling::Sum : mtrec::BagPooling::Mean);
  store.allocate();
  load_parameters(fx, store);

  const mtrec::Tensor<index_t> ids = fx.as_index("ids");
  const mtrec::Tensor<index_t> offsets = fx.as_index("offsets");
  const index_t n = ids.numel(), B = offsets.numel() - 1;
  mtrec::Tensor<T> weights;
  if (weighted) weights = fx.as<T>("per_sample_weights", {n});
  const mtrec::Tensor<T> R = fx.as<T>("R", {B, dim});

  mtrec::Tensor<T> y({B, dim});
  typename mtrec::EmbeddingBag<T>::Context ctx;
  bag.forward(ctx, ids.view(), offsets.view(), weighted ? weights.cview() : mtrec::ConstView<T>{}, y.view());
  check_close(fx, "y", y.cview(), "y", Tolerance<T>::forward);

  mtrec::Tensor<T> dweights;
  if (weighted) dweights.resize({n});
  bag.backward(ctx, R.view(), weighted ? dweights.view() : mtrec::TensorView<T>{});
  if (weighted) check_close(fx, "d per_sample_weights", dweights.cview(), "d_per_sample_weights", Tolerance<T>::gradient);
  check_parameter_gradients(fx, store);  // the dense table gradient, unused rows included

  // The touched rows are exactly the IDs used.
  const auto& touched = store.touched(bag.table());
  const std::set<index_t> used(ids.data(), ids.data() + n);
  CHECK(std::set<index_t>(touched.rows.begin(), touched.rows.end()) == used);
  CHECK(touched.rows.size() == used.size());
}

}  // namespace

TEMPLATE_TEST_CASE("parity: EmbeddingBag mode=sum vs torch (float64 fixture)", "[parity][embedding]", float, double) {
  run_embedding_bag<TestType>("embedding_bag_sum.txt");
}

TEMPLATE_TEST_CASE("parity: EmbeddingBag mode=mean vs torch (float64 fixture)", "[parity][embedding]", float,
                   double) {
  run_embedding_bag<TestType>("embedding_bag_mean.txt");
}

TEMPLATE_TEST_CASE("parity: EmbeddingBag mode=sum + per_sample_weights vs torch (float64 fixture)",
                   "[parity][embedding]", float, double) {
  run_embedding_bag<TestType>("embedding_bag_sum_weighted.txt");
}

TEMPLATE_TEST_CASE("parity: LayerNorm vs torch (float64 fixture)", "[parity][layernorm]", float, double) {
  using T = TestType;
  const parity::Fixture fx = parity::Fixture::load("layernorm.txt");
  REQUIRE(fx.meta("layer") == "LayerNorm");
  const index_t dim = fx.meta_int("dim");

  mtrec::ParameterStore<T> store(7);
  mtrec::LayerNorm<T> ln(store, fx.meta("name"), dim, fx.meta_double("eps"));
  store.allocate();
  load_parameters(fx, store);

  const mtrec::Tensor<T> x = fx.as<T>("x");
  REQUIRE(x.shape().cols() == dim);
  const mtrec::Tensor<T> R = fx.as<T>("R");
  REQUIRE(R.shape() == x.shape());

  mtrec::Tensor<T> y(x.shape()), dx(x.shape());
  typename mtrec::LayerNorm<T>::Context ctx;
  ln.forward(ctx, x.view(), y.view());
  check_close(fx, "y", y.cview(), "y", Tolerance<T>::forward);
  ln.backward(ctx, R.view(), dx.view());
  check_close(fx, "dx", dx.cview(), "dx", Tolerance<T>::gradient);
  check_parameter_gradients(fx, store);
}

TEST_CASE("parity: fixture loader rejects missing and malformed files", "[parity][fixture]") {
  CHECK_THROWS_WITH(parity::Fixture::load("no_such_fixture.txt"), Catch::Contains("cannot open"));
  const parity::Fixture fx = parity::Fixture::load("layernorm.txt");
  CHECK_THROWS_WITH(fx.tensor("no_such_tensor"), Catch::Contains("no_such_tensor"));
  CHECK_THROWS_WITH(fx.as<double>("x", {1, 2}), Catch::Contains("expected shape"));

  const std::string path = (std::filesystem::temp_directory_path() / "mtrec_parity_malformed_fixture.txt").string();
  auto load_text = [&](const std::string& text) {
    {
      std::ofstream out(path);
      out << text;
    }
    return parity::Fixture::load_path(path);
  };
  CHECK_NOTHROW(load_text("mtrec-fixture 1\ntensor a 1 2\n0.5 -1e-3\nend\n"));
  CHECK_THROWS_WITH(load_text("not-a-fixture\n"), Catch::Contains("missing 'mtrec-fixture'"));
  CHECK_THROWS_WITH(load_text("mtrec-fixture 1\ntensor a 1 3\n0.5 -1e-3\nend\n"), Catch::Contains("malformed"));
  CHECK_THROWS_WITH(load_text("mtrec-fixture 1\ntensor a 1 2\n0.5 -1e-3\n"), Catch::Contains("truncated"));
  CHECK_THROWS_WITH(load_text("mtrec-fixture 1\ntensor a 1 2\n0.5 x\nend\n"), Catch::Contains("'x'"));
  CHECK_THROWS_WITH(load_text("mtrec-fixture 1\nitensor a 1 1\n1.5\nend\n"), Catch::Contains("integer"));
  CHECK_THROWS_WITH(load_text("mtrec-fixture 1\nbogus a\nend\n"), Catch::Contains("unknown keyword"));
  std::remove(path.c_str());
}
