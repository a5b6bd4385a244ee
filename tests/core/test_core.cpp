// Core: tensors and views, Eigen maps, errors, RNG, parameter store.
#include "support/gradcheck.hpp"

#include <set>
#include <thread>

using namespace mtrec;

TEST_CASE("Tensor is 64-byte aligned, row-major, and reuses its buffer", "[core][tensor]") {
  Tensor<float> t({3, 5});
  CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
  CHECK(t.numel() == 15);
  const float* before = t.data();
  t.resize({2, 4});  // smaller: no reallocation
  CHECK(t.data() == before);
  CHECK(t.shape() == Shape{2, 4});
  t.resize({4, 5});  // larger: reallocates
  CHECK(t.capacity() == 20);
  for (index_t i = 0; i < 20; ++i) t[i] = float(i);
  auto m = as_matrix(t);
  CHECK(m.rows() == 4);
  CHECK(m.cols() == 5);
  CHECK(m(2, 3) == 13.0f);             // row-major: row 2, col 3 = 2*5+3
  CHECK(&m(2, 3) == t.data() + 13);    // a map, not a copy
  TensorView<float> v = t.view().reshaped({2, 2, 5});
  CHECK(v.rows() == 4);
  CHECK(v.cols() == 5);
  ConstView<float> cv = v;
  CHECK(cv.data == t.data());
  testing::require_error([&] { (void)t.view().reshaped({3, 3}); }, {"reshaped", "(4, 5)", "(3, 3)"});
}

TEST_CASE("mtrec::Error carries the operation name", "[core][error]") {
  try {
    fail("Op::name", "expected ", 3, " but got ", 4);
  } catch (const Error& e) {
    CHECK(e.op() == "Op::name");
    CHECK(std::string(e.what()) == "Op::name: expected 3 but got 4");
  }
  CHECK_THROWS_AS(check(false, "x", "y"), Error);
  CHECK_THROWS_AS(check(false, "x", "y"), std::runtime_error);
}

TEST_CASE("RandomStream is a pure function of (seed, stream, counter)", "[core][rng]") {
  RandomStream a(1, 2), b(1, 2), c(2, 2), d(1, 3);
  CHECK(a.uniform(10) == b.uniform(10));
  CHECK(a.uniform(10) != c.uniform(10));
  CHECK(a.uniform(10) != d.uniform(10));
  // Independent of evaluation order and thread.
  std::vector<double> serial(1000), threaded(1000);
  for (int i = 0; i < 1000; ++i) serial[i] = a.normal(std::uint64_t(i));
  std::thread t1([&] { for (int i = 0; i < 500; ++i) threaded[i] = a.normal(std::uint64_t(i)); });
  std::thread t2([&] { for (int i = 999; i >= 500; --i) threaded[i] = a.normal(std::uint64_t(i)); });
  t1.join();
  t2.join();
  CHECK(serial == threaded);
  // Moments of 200k draws.
  double su = 0, sn = 0, sn2 = 0;
  const int N = 200000;
  for (int i = 0; i < N; ++i) {
    const double u = a.uniform(std::uint64_t(i));
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    su += u;
    const double z = c.normal(std::uint64_t(i));
    sn += z;
    sn2 += z * z;
  }
  CHECK(su / N == Approx(0.5).margin(0.005));
  CHECK(sn / N == Approx(0.0).margin(0.01));
  CHECK(sn2 / N == Approx(1.0).margin(0.02));
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vector", "[core][rng]") {
  // Random123 kat_vectors: philox4x32 10 rounds, counter = key = 0 ->
  // 6627e8d5 e169c58d bc57ac4c 9b00dbd8.
  const auto r = Philox::generate(0, 0, 0);
  CHECK(r[0] == 0x6627e8d5u);
  CHECK(r[1] == 0xe169c58du);
  CHECK(r[2] == 0xbc57ac4cu);
  CHECK(r[3] == 0x9b00dbd8u);
}

TEST_CASE("shuffle_indices is a seeded permutation", "[core][rng]") {
  std::vector<int> a(100), b(100);
  for (int i = 0; i < 100; ++i) a[i] = b[i] = i;
  shuffle_indices(a.data(), 100, 7);
  shuffle_indices(b.data(), 100, 7);
  CHECK(a == b);
  CHECK(std::set<int>(a.begin(), a.end()).size() == 100);
  std::vector<int> c(100);
  for (int i = 0; i < 100; ++i) c[i] = i;
  shuffle_indices(c.data(), 100, 8);
  CHECK(c != a);
}

TEST_CASE("ParameterStore: one flat block, dense first, seeded init", "[core][parameters]") {
  ParameterStore<float> s(5);
  const ParamId table = s.add("table", {10, 3}, Init::normal(0, 1), ParamKind::Table);
  const ParamId w = s.add("w", {2, 3}, Init::uniform(-1, 1));
  const ParamId b = s.add("b", {3}, Init::constant(0.5));
  s.allocate();
  CHECK(s.info(w).offset == 0);
  CHECK(s.info(b).offset == 16);  // aligned to 16 elements
  CHECK(s.dense_size() == 32);
  CHECK(s.info(table).offset == 32);
  CHECK(s.value(b)[2] == 0.5f);
  for (int i = 0; i < 6; ++i) {
    CHECK(s.value(w)[i] >= -1.0f);
    CHECK(s.value(w)[i] < 1.0f);
  }
  // Same seed, same values, whatever else was registered in between.
  ParameterStore<float> s2(5);
  s2.add("other", {4}, Init::normal(0, 1));
  const ParamId w2 = s2.add("w", {2, 3}, Init::uniform(-1, 1));
  s2.allocate();
  CHECK(testing::bitwise_equal(s.value(w), s2.value(w2), 6));
  testing::require_error([&] { s.add("x", {1}, Init::zeros()); }, {"after allocate"});
  ParameterStore<float> s3;
  s3.add("dup", {1}, Init::zeros());
  testing::require_error([&] { s3.add("dup", {1}, Init::zeros()); }, {"'dup'", "already exists"});
  testing::require_error([&] { (void)s3.value(0); }, {"before allocate"});
  testing::require_error([&] { (void)s.find("nope"); }, {"ParameterStore::find", "'nope'"});
}
