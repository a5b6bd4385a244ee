// Serving: concurrent const predict, and top-K scoring.
#include "models/model_fixtures.hpp"

#include <thread>

using namespace mtrec;

TEST_CASE("concurrency: 8 threads calling predict on one const model give the serial results", "[serving]") {
  const ModelConfig c = testing::tiny_config(Architecture::PLE);
  MultiTaskModel<float> model(c);
  testing::randomise_parameters(model.parameters(), 9, 0.3);
  const MultiTaskModel<float>& frozen = model;
  std::vector<Batch<float>> batches;
  for (int i = 0; i < 8; ++i) batches.push_back(testing::tiny_batch<float>(c, 20 + i, std::uint64_t(100 + i)));
  std::vector<Tensor<float>> serial(8), threaded(8);
  for (int i = 0; i < 8; ++i) {
    MultiTaskModel<float>::Workspace ws;
    frozen.predict(ws, batches[std::size_t(i)], serial[std::size_t(i)]);
  }
  std::vector<std::thread> pool;
  for (int i = 0; i < 8; ++i)
    pool.emplace_back([&, i] {
      MultiTaskModel<float>::Workspace ws;
      for (int rep = 0; rep < 20; ++rep) frozen.predict(ws, batches[std::size_t(i)], threaded[std::size_t(i)]);
    });
  for (auto& t : pool) t.join();
  for (int i = 0; i < 8; ++i) {
    REQUIRE(serial[std::size_t(i)].shape() == threaded[std::size_t(i)].shape());
    CHECK(testing::bitwise_equal(serial[std::size_t(i)].data(), threaded[std::size_t(i)].data(),
                                 serial[std::size_t(i)].numel()));
  }
}

TEST_CASE("top-K: scores one user against candidates and returns the best K", "[serving]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  testing::randomise_parameters(model.parameters(), 2, 0.4);
  const Batch<float> user = testing::tiny_batch<float>(c, 1, 1);
  const Batch<float> items = testing::tiny_batch<float>(c, 30, 2);
  TopKScorer<float> scorer(model, {"movie", "genres", "title"}, "ctr");
  const auto top = scorer.score(user, items, 5);
  REQUIRE(top.size() == 5);
  // Independent check: build the combined rows by hand and predict them one by one.
  std::vector<double> score(30);
  for (index_t i = 0; i < 30; ++i) {
    const index_t row = i;
    Batch<float> one;
    one.gather(items, &row, 1);
    one.ids[0] = user.ids[0];
    one.ids[2] = user.ids[2];
    one.sequences[0] = user.sequences[0];
    one.dense = user.dense;
    MultiTaskModel<float>::Workspace ws;
    Tensor<float> out;
    model.predict(ws, one, out);
    score[std::size_t(i)] = out[0];
  }
  std::vector<index_t> order(30);
  for (index_t i = 0; i < 30; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return score[a] > score[b]; });
  for (int k = 0; k < 5; ++k) {
    CHECK(top[std::size_t(k)].row == order[std::size_t(k)]);
    CHECK(top[std::size_t(k)].score == Approx(score[std::size_t(order[std::size_t(k)])]).epsilon(1e-5));
  }
  testing::require_error([&] { TopKScorer<float>(model, {"nope"}, "ctr"); }, {"item field 'nope'"});
  testing::require_error([&] { TopKScorer<float>(model, {"movie"}, "clicks"); }, {"no output column named 'clicks'"});
}
