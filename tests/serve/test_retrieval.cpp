// Exact top-K retrieval (kernels/retrieval.hpp, serve/retrieval.hpp) against
// a brute-force sort computed here in double.
#include "models/model_fixtures.hpp"

#include <algorithm>
#include <numeric>

using namespace mtrec;

namespace {

struct Ranked {
  double score;
  index_t row;
};

// Every row's <q, row> in double, sorted best first (ties: lower row).
std::vector<Ranked> brute_force(const std::vector<float>& table, const std::vector<float>& q, index_t N,
                                const std::vector<index_t>& exclude = {}) {
  const index_t dim = index_t(q.size());
  std::vector<Ranked> all;
  for (index_t r = 0; r < N; ++r) {
    if (std::find(exclude.begin(), exclude.end(), r) != exclude.end()) continue;
    double s = 0;
    for (index_t c = 0; c < dim; ++c) s += double(q[std::size_t(c)]) * double(table[std::size_t(r * dim + c)]);
    all.push_back({s, r});
  }
  std::sort(all.begin(), all.end(),
            [](const Ranked& a, const Ranked& b) { return a.score > b.score || (a.score == b.score && a.row < b.row); });
  return all;
}

std::vector<float> uniform(index_t n, std::uint64_t seed, bool integers) {
  std::vector<double> d(static_cast<std::size_t>(n));
  testing::fill_uniform(d.data(), n, seed);
  std::vector<float> f(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) f[i] = integers ? float(std::round(d[i] * 3)) : float(d[i]);
  return f;
}

}  // namespace

TEST_CASE("retrieval: exact top-K equals a brute-force sort, ties to the lower row", "[retrieval]") {
  // Integer values: every score is exact, so the rows must match one for one
  // (many equal scores, across the kernel's 16384-row chunks).
  const index_t N = 50000, dim = 16;
  const std::vector<float> table = uniform(N * dim, 3, true), q = uniform(dim, 4, true);
  ExactRetriever<float> r(Cpu{}, ConstView<float>(table.data(), {N, dim}));
  const std::vector<index_t> exclude = {7, 49999, 123, 7, 30000};
  for (index_t k : {index_t(1), index_t(10), index_t(100), index_t(1000)}) {
    const auto truth = brute_force(table, q, N, exclude);
    const auto& got = r.search(ConstView<float>(q.data(), {dim}), k, exclude);
    REQUIRE(index_t(got.size()) == k);
    for (index_t i = 0; i < k; ++i) {
      CAPTURE(k, i);
      CHECK(got[std::size_t(i)].row == truth[std::size_t(i)].row);
      CHECK(got[std::size_t(i)].score == truth[std::size_t(i)].score);
    }
  }
  // The same rows at any thread count.
  const int before = num_threads();
  std::vector<index_t> one, two;
  set_num_threads(1);
  for (const auto& s : r.search(ConstView<float>(q.data(), {dim}), 200)) one.push_back(s.row);
  set_num_threads(2);
  for (const auto& s : r.search(ConstView<float>(q.data(), {dim}), 200)) two.push_back(s.row);
  set_num_threads(before);
  CHECK(one == two);
}

TEST_CASE("retrieval: float scores match the double brute force", "[retrieval]") {
  const index_t N = 20011, dim = 37;
  const std::vector<float> table = uniform(N * dim, 5, false), q = uniform(dim, 6, false);
  ExactRetriever<float> r(Cpu{}, ConstView<float>(table.data(), {N, dim}), 0.5f);
  const auto truth = brute_force(table, q, N);
  const auto& got = r.search(ConstView<float>(q.data(), {dim}), 64);
  REQUIRE(got.size() == 64u);
  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    // the k-th best score, and the returned row's own score, within float rounding
    CHECK(got[i].score == Approx(0.5 * truth[i].score).margin(1e-5));
    const index_t row = got[i].row;
    double own = 0;
    for (index_t c = 0; c < dim; ++c) own += double(q[std::size_t(c)]) * double(table[std::size_t(row * dim + c)]);
    CHECK(got[i].score == Approx(0.5 * own).margin(1e-5));
    if (i > 0) CHECK(got[i].score <= got[i - 1].score);
  }
}

TEST_CASE("retrieval: fewer rows than k, everything excluded, and the op's padding", "[retrieval]") {
  const index_t N = 4, dim = 2;
  const std::vector<float> table = {1, 0, 0, 1, 1, 1, -1, -1}, q = {1, 2};
  ExactRetriever<float> r(Cpu{}, ConstView<float>(table.data(), {N, dim}));
  const auto& got = r.search(ConstView<float>(q.data(), {dim}), 10, {2});
  REQUIRE(got.size() == 3u);
  CHECK(got[0].row == 1);  // 2
  CHECK(got[1].row == 0);  // 1
  CHECK(got[2].row == 3);  // -3
  CHECK(r.search(ConstView<float>(q.data(), {dim}), 3, {0, 1, 2, 3}).empty());
  // the kernel itself pads with row -1 and -inf
  index_t rows[3];
  float scores[3];
  const index_t ex[1] = {1};
  kernels::topk_inner_product(kernels::cpu, rows, scores, table.data(), index_t(2), dim, q.data(), index_t(3), ex, index_t(1));
  CHECK(rows[0] == 0);
  CHECK(scores[0] == 1.0f);
  CHECK(rows[1] == -1);
  CHECK(rows[2] == -1);
  CHECK(std::isinf(scores[2]));
}

TEST_CASE("retrieval: a model's retrieval task ranks its target table by the user's query", "[retrieval]") {
  const ModelConfig c = testing::tiny_ranking_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  const Batch<float> users = testing::tiny_batch<float>(c, 4, 21);
  ExactRetriever<float> r(model, "next_movie");
  std::size_t task = 0, column = 0;
  for (std::size_t k = 0; k < c.tasks.size(); ++k)
    if (c.tasks[k].name == "next_movie") task = k;
  for (std::size_t k = 0; k < task; ++k) column += std::size_t(task_output_width(model.config().tasks[k]));
  const auto tab = model.target_table(task);
  const index_t N = tab.shape[0], dim = tab.shape[1];
  std::vector<float> table(std::size_t(N * dim));
  to_host(model.parameters().device(), table.data(), tab);
  const double inv_t = 1.0 / model.config().tasks[task].temperature;
  MultiTaskModel<float>::Workspace ws;
  Tensor<float> out;
  for (index_t u = 0; u < users.size; ++u) {
    Batch<float> one;
    const index_t row[1] = {u};
    one.gather(users, row, 1);
    model.predict(ws, one, out);
    const std::vector<float> q(out.data() + column, out.data() + column + dim);
    const auto truth = brute_force(table, q, N, {u % N});
    const auto& got = r.retrieve(one, 3, {u % N});
    REQUIRE(got.size() == 3u);
    for (std::size_t i = 0; i < 3; ++i) {
      CAPTURE(u, i);
      CHECK(got[i].row == truth[i].row);
      CHECK(got[i].score == Approx(inv_t * truth[i].score).margin(1e-5));
    }
  }
}

TEST_CASE("bad input: retrieval names the field and the expected value", "[retrieval][bad-input]") {
  const index_t N = 5, dim = 3;
  const std::vector<float> table(std::size_t(N * dim), 1.0f);
  ExactRetriever<float> r(Cpu{}, ConstView<float>(table.data(), {N, dim}));
  const std::vector<float> q = {1, 2, 3}, short_q = {1, 2};
  std::vector<float> nan_q = q;
  nan_q[1] = std::nanf("");
  testing::require_error([&] { r.search(ConstView<float>(short_q.data(), {2}), 2); },
                         {"ExactRetriever::search", "query expected 3 values but got 2"});
  testing::require_error([&] { r.search(ConstView<float>(nan_q.data(), {3}), 2); },
                         {"ExactRetriever::search", "query[1]", "finite"});
  testing::require_error([&] { r.search(ConstView<float>(q.data(), {3}), 0); },
                         {"ExactRetriever::search", "k > 0"});
  testing::require_error([&] { r.search(ConstView<float>(q.data(), {3}), 2, {1, 5}); },
                         {"ExactRetriever::search", "exclude[1] = 5", "5 rows"});
  const ModelConfig c = testing::tiny_ranking_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  testing::require_error([&] { ExactRetriever<float> x(model, "ctr"); }, {"ExactRetriever", "'ctr'", "not a retrieval task"});
  testing::require_error([&] { ExactRetriever<float> x(model, "nope"); }, {"ExactRetriever", "no task named 'nope'"});
  testing::require_error([&] { r.retrieve(testing::tiny_batch<float>(c, 1, 2), 2); },
                         {"ExactRetriever::retrieve", "built over a table"});
}
