// API misuse that used to reach the heap: each is an mtrec::Error naming the operation.
#include "models/model_fixtures.hpp"

#include <mtrec/serve/topk.hpp>

using namespace mtrec;

namespace {
// One user (row 0 of a tiny batch) for the TopKScorer.
Batch<float> one_user(const ModelConfig& c) {
  Batch<float> all = testing::tiny_batch<float>(c, 4, 31);
  const index_t row = 3;  // a non-empty weighted 'genres' bag (3 IDs)
  Batch<float> u;
  u.gather(all, &row, 1);
  return u;
}
}  // namespace

TEST_CASE("misuse: TopKScorer checks the user's bag offsets and weights", "[serving][bad-input]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  TopKScorer<float> scorer(model, {"movie", "city"}, "ctr");
  const Batch<float> candidates = testing::tiny_batch<float>(c, 10, 32);
  Batch<float> user = one_user(c);
  REQUIRE(user.bags[0].ids.size() == 3);
  CHECK(scorer.score(user, candidates, 3).size() == 3);  // the well-formed request works
  Batch<float> bad = user;
  bad.bags[0].offsets = {0, 5};  // 5 IDs claimed, 3 present
  testing::require_error([&] { scorer.score(bad, candidates, 3); },
                         {"TopKScorer::score", "user bag field 'genres'", "offsets {0, 3}", "{0, 5}"});
  bad = user;
  bad.bags[0].weights.resize(1);  // weights shorter than the bag
  testing::require_error([&] { scorer.score(bad, candidates, 3); },
                         {"TopKScorer::score", "weighted user bag field 'genres'", "3 weights", "got 1"});
  bad = user;
  bad.sequences[0].ids.resize(2);
  testing::require_error([&] { scorer.score(bad, candidates, 3); }, {"TopKScorer::score", "user sequence field 'history'"});
  bad = user;
  bad.dense[1].resize(1);
  testing::require_error([&] { scorer.score(bad, candidates, 3); }, {"TopKScorer::score", "user dense field 'stats'"});
  bad = user;
  bad.ids[0].clear();
  testing::require_error([&] { scorer.score(bad, candidates, 3); }, {"TopKScorer::score", "user ID field 'user'"});
}

TEST_CASE("misuse: Batch::gather checks the row indices and the source", "[features][bad-input]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  const Batch<float> src = testing::tiny_batch<float>(c, 6, 33);
  Batch<float> dst;
  const index_t rows[3] = {0, 6, 2};
  testing::require_error([&] { dst.gather(src, rows, 3); }, {"Batch::gather", "row index 6 at position 1", "[0, 6)"});
  const index_t neg[1] = {-1};
  testing::require_error([&] { dst.gather(src, neg, 1); }, {"Batch::gather", "row index -1"});
  Batch<float> broken = src;
  broken.bags[0].offsets[3] = 100;
  const index_t r2[1] = {2};
  testing::require_error([&] { dst.gather(broken, r2, 1); }, {"Batch::gather", "source bag field 0"});
  broken = src;
  broken.labels[1].pop_back();
  testing::require_error([&] { dst.gather(broken, r2, 1); }, {"Batch::gather", "labels of task 1"});
  const index_t ok[2] = {5, 0};
  dst.gather(src, ok, 2);
  CHECK(dst.size == 2);
  CHECK(dst.ids[0][0] == src.ids[0][5]);
}

TEST_CASE("misuse: a workspace knows its model and its forward", "[model][bad-input]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  MultiTaskModel<float> a(c), b(c);
  const Batch<float> batch = testing::tiny_batch<float>(c, 8, 34);
  std::vector<double> coeff(c.tasks.size(), 1.0);
  MultiTaskModel<float>::Workspace ws;
  testing::require_error([&] { a.backward(ws, batch, coeff.data()); },
                         {"MultiTaskModel::backward", "no completed forward()"});
  testing::require_error([&] { a.compute_losses(ws, batch); }, {"MultiTaskModel::compute_losses", "no completed forward()"});
  a.forward(ws, batch, Mode::train(0, 1));
  testing::require_error([&] { a.backward(ws, batch, coeff.data()); },
                         {"MultiTaskModel::backward", "compute_losses() after forward()"});
  a.compute_losses(ws, batch);
  // Another model's backward on this workspace (it used to overflow in pack_sequences).
  testing::require_error([&] { b.backward(ws, batch, coeff.data()); }, {"MultiTaskModel::backward", "another model"});
  testing::require_error([&] { b.compute_losses(ws, batch); }, {"MultiTaskModel::compute_losses", "another model"});
  // A different batch than the one forward read.
  const Batch<float> other = testing::tiny_batch<float>(c, 8, 35);
  testing::require_error([&] { a.backward(ws, other, coeff.data()); }, {"MultiTaskModel::backward", "the batch that forward()"});
  coeff[1] = std::nan("");
  testing::require_error([&] { a.backward(ws, batch, coeff.data()); }, {"MultiTaskModel::backward", "coeff[1]"});
  coeff[1] = 1.0;
  a.backward(ws, batch, coeff.data());  // the right use still works, repeatedly (GradNorm/PCGrad do this)
  a.backward(ws, batch, coeff.data());
  // A forward that fails leaves a workspace that backward refuses.
  Batch<float> bad = batch;
  bad.ids[0][3] = 100;
  CHECK_THROWS_AS(a.forward(ws, bad, Mode::train(1, 1)), Error);
  testing::require_error([&] { a.backward(ws, bad, coeff.data()); }, {"MultiTaskModel::backward", "no completed forward()"});
}
