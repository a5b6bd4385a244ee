// Ranking and retrieval tasks inside the multi-task model: BPR over in-batch
// (positive, negative) pairs and in-batch sampled-softmax retrieval. The
// losses are checked against brute-force references written here, training
// against quality bars, evaluation against a brute-force ranking.
// (Their whole-model gradients are in test_model_gradients.cpp.)
#include "models/model_fixtures.hpp"

#include <cstdio>
#include <unistd.h>

using namespace mtrec;

namespace {

// The fixture's ranking config without dropout (the losses are compared in eval mode).
ModelConfig ranking_config(Architecture arch = Architecture::MMoE) {
  ModelConfig c = testing::tiny_ranking_config(arch);
  c.dropout = 0;
  c.features.sequences[0].encoder.dropout = 0;
  c.features.sequences[1].encoder.dropout = 0;
  return c;
}

bool on(const Batch<double>& b, std::size_t k, index_t i) {
  return b.label_mask.empty() || b.label_mask[k].empty() || b.label_mask[k][std::size_t(i)];
}
double softplus(double z) { return z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z)); }

}  // namespace

TEST_CASE("BPR task: the loss is the weighted mean of softplus(s_neg - s_pos) over the in-group pairs",
          "[ranking][model]") {
  MultiTaskModel<double> model(ranking_config());
  testing::randomise_parameters(model.parameters(), 5, 0.4);
  Batch<double> b = testing::tiny_batch<double>(model.config(), 23, 4);
  for (index_t i = 0; i < b.size; ++i) b.groups.push_back(i % 4);
  MultiTaskModel<double>::Workspace ws;
  model.forward(ws, b, Mode::eval());
  const TaskLosses& l = model.compute_losses(ws, b);
  // Brute force over every ordered pair of rows.
  const double* s = ws.out[0].data();
  const auto& y = b.labels[0];
  double num = 0, den = 0;
  int pairs = 0;
  for (index_t i = 0; i < b.size; ++i)
    for (index_t j = 0; j < b.size; ++j)
      if (on(b, 0, i) && on(b, 0, j) && y[i] == 1 && y[j] == 0 && b.groups[i] == b.groups[j]) {
        const double w = b.weights[i] * b.weights[j];
        num += w * softplus(s[j] - s[i]);
        den += w;
        ++pairs;
      }
  REQUIRE(pairs > 5);
  CHECK(l.count[0] == pairs);
  CHECK(l.value[0] == Approx(num / den).epsilon(1e-12));

  SECTION("without groups every positive pairs with every negative of the batch") {
    b.groups.clear();
    model.forward(ws, b, Mode::eval());
    const TaskLosses& l2 = model.compute_losses(ws, b);
    num = den = 0;
    pairs = 0;
    for (index_t i = 0; i < b.size; ++i)
      for (index_t j = 0; j < b.size; ++j)
        if (on(b, 0, i) && on(b, 0, j) && y[i] == 1 && y[j] == 0) {
          num += b.weights[i] * b.weights[j] * softplus(s[j] - s[i]);
          den += b.weights[i] * b.weights[j];
          ++pairs;
        }
    CHECK(l2.count[0] == pairs);
    CHECK(l2.value[0] == Approx(num / den).epsilon(1e-12));
  }
  SECTION("a batch with no positive gives loss 0 and no NaN") {
    for (auto& v : b.labels[0]) v = 0;
    model.forward(ws, b, Mode::eval());
    const TaskLosses& l3 = model.compute_losses(ws, b);
    CHECK(l3.value[0] == 0.0);
    CHECK(l3.count[0] == 0);
    for (index_t i = 0; i < b.size; ++i) CHECK(ws.d_out[0].data()[i] == 0.0);
  }
}

TEST_CASE("retrieval task: the loss is in-batch softmax over the target rows' embeddings", "[ranking][model]") {
  MultiTaskModel<double> model(ranking_config());
  const ModelConfig& cfg = model.config();
  REQUIRE(cfg.tasks[2].target_vocab == 9);  // filled in from the shared movie table
  REQUIRE(cfg.tasks[2].target_dim == 4);
  testing::randomise_parameters(model.parameters(), 6, 0.4);
  const Batch<double> b = testing::tiny_batch<double>(cfg, 17, 8);
  MultiTaskModel<double>::Workspace ws;
  model.forward(ws, b, Mode::eval());
  const TaskLosses& l = model.compute_losses(ws, b);
  for (std::size_t k : {std::size_t(2), std::size_t(3)}) {
    const ConstView<double> table = model.target_table(k);
    const index_t D = table.dim(1);
    const double tau = cfg.tasks[k].temperature;
    const double* q = ws.out[k].data();
    double num = 0, den = 0;
    for (index_t i = 0; i < b.size; ++i) {
      if (!on(b, k, i)) continue;
      // z_ij = <q_i, e_{y_j}> / tau over the labelled rows j
      double mx = -1e300, zii = 0;
      std::vector<double> z;
      for (index_t j = 0; j < b.size; ++j) {
        if (!on(b, k, j)) continue;
        const index_t r = index_t(b.labels[k][std::size_t(j)]);
        double dot = 0;
        for (index_t d = 0; d < D; ++d) dot += q[i * D + d] * table.data[r * D + d];
        z.push_back(dot / tau);
        if (j == i) zii = dot / tau;
        mx = std::max(mx, dot / tau);
      }
      double se = 0;
      for (double v : z) se += std::exp(v - mx);
      num += b.weights[i] * (mx + std::log(se) - zii);
      den += b.weights[i];
    }
    INFO("task " << cfg.tasks[k].name);
    CHECK(l.value[k] == Approx(num / den).epsilon(1e-12));
  }
}

TEST_CASE("evaluate: retrieval hit_rate@10 and ndcg@10 match a brute-force ranking over the whole table",
          "[ranking][metrics]") {
  ModelConfig c = ranking_config();
  c.tasks[3].target_vocab = 40;  // larger than 10, so the cut-off matters
  MultiTaskModel<double> model(c);
  testing::randomise_parameters(model.parameters(), 7, 0.5);
  const Batch<double> data = testing::tiny_batch<double>(model.config(), 300, 9);
  const Evaluation ev = evaluate(model, data, 64);
  MultiTaskModel<double>::Workspace ws;
  Tensor<double> pred;
  model.predict(ws, data, pred);
  const auto cols = model.output_columns();
  for (std::size_t k : {std::size_t(2), std::size_t(3)}) {
    const std::string& name = model.config().tasks[k].name;
    const ConstView<double> table = model.target_table(k);
    const index_t V = table.dim(0), D = table.dim(1);
    const index_t col0 = index_t(std::find(cols.begin(), cols.end(), name + ":q0") - cols.begin());
    REQUIRE(col0 + D <= pred.dim(1));
    double hits = 0, gain = 0, n = 0;
    for (index_t i = 0; i < data.size; ++i) {
      if (!on(data, k, i)) continue;
      const index_t target = index_t(data.labels[k][std::size_t(i)]);
      std::vector<double> score(std::size_t(V), 0.0);
      for (index_t v = 0; v < V; ++v)
        for (index_t d = 0; d < D; ++d) score[v] += pred.data()[i * pred.dim(1) + col0 + d] * table.data[v * D + d];
      index_t rank = 1;
      for (index_t v = 0; v < V; ++v) rank += v != target && score[v] >= score[target];
      n += 1;
      if (rank <= 10) {
        hits += 1;
        gain += 1.0 / std::log2(double(rank) + 1);
      }
    }
    INFO("task " << name);
    CHECK(ev.metric("hit_rate@10:" + name) == Approx(hits / n).epsilon(1e-12));
    CHECK(ev.metric("ndcg@10:" + name) == Approx(gain / n).epsilon(1e-12));
    CHECK(metric_higher_is_better("ndcg@10:" + name));
  }
}

TEST_CASE("retrieval task: in-batch sampled softmax learns an item-item relation p(i|j)", "[ranking][training]") {
  // Input: item j; target: item (7j + 3) mod V, scored against the same item table.
  const index_t V = 40, N = 2400;
  ModelConfig c;
  c.architecture = Architecture::SingleTask;
  c.seed = 1;
  c.features.ids = {{"item", V, 0, 8, ""}};
  c.bottom = {32};
  TaskSpec next = testing::task("next", TaskType::Retrieval, 0, {16}, 1.0, TaskLoss::Default, 1.0);
  next.target_table = "item";
  c.tasks = {next};
  MultiTaskModel<float> model(c);
  Batch<float> data;
  data.size = N;
  data.shape_for(c.features, 1);
  for (index_t i = 0; i < N; ++i) {
    const index_t j = (i * 13) % V;
    data.ids[0].push_back(j);
    data.labels[0].push_back(float((7 * j + 3) % V));
  }
  const double before = evaluate(model, data).metric("hit_rate@10:next");
  TrainConfig t;
  t.epochs = 25;
  t.batch_size = 64;
  t.optimizer = OptimizerConfig::adam(1e-2);
  t.progress = false;
  t.seed = 2;
  Trainer<float> trainer(model, t);
  trainer.fit(data);
  const Evaluation after = evaluate(model, data);
  INFO("hit_rate@10 before " << before << " after " << after.metric("hit_rate@10:next"));
  CHECK(before < 0.5);  // chance is 10/40
  CHECK(after.metric("hit_rate@10:next") > 0.95);
  CHECK(after.metric("ndcg@10:next") > 0.8);
}

TEST_CASE("BPR task: learns each user's preferred items (gAUC)", "[ranking][training]") {
  // User u likes item i when (u + i) % 3 == 0; pairs are formed per user.
  const index_t U = 24, V = 30;
  ModelConfig c;
  c.architecture = Architecture::SingleTask;
  c.seed = 4;
  c.features.ids = {{"user", U, 0, 8, ""}, {"item", V, 0, 8, ""}};
  c.bottom = {32, 16};
  TaskSpec like = testing::task("like", TaskType::Binary, 0, {8}, 1.0, TaskLoss::BPR, 1.0);
  c.tasks = {like};
  MultiTaskModel<float> model(c);
  Batch<float> data;
  data.size = U * V;
  data.shape_for(c.features, 1);
  for (index_t u = 0; u < U; ++u)
    for (index_t i = 0; i < V; ++i) {
      data.ids[0].push_back(u);
      data.ids[1].push_back(i);
      data.labels[0].push_back(float((u + i) % 3 == 0));
      data.groups.push_back(u);
    }
  TrainConfig t;
  t.epochs = 40;
  t.batch_size = 90;
  t.optimizer = OptimizerConfig::adam(1e-2);
  t.progress = false;
  Trainer<float> trainer(model, t);
  trainer.fit(data);
  const Evaluation ev = evaluate(model, data);
  INFO("gAUC " << ev.metric("gauc:like"));
  CHECK(ev.metric("gauc:like") > 0.95);
}

TEST_CASE("checkpoint: BPR and retrieval tasks round-trip with their target tables", "[ranking][checkpoint]") {
  MultiTaskModel<float> model(ranking_config(Architecture::PLE));
  testing::randomise_parameters(model.parameters(), 8, 0.3);
  const Batch<float> b = testing::tiny_batch<float>(model.config(), 10, 3);
  const std::string path = "/tmp/mtrec_test_" + std::to_string(::getpid()) + "_ranking.safetensors";
  save_checkpoint(path, model);
  auto loaded = load_checkpoint<float>(path);
  std::remove(path.c_str());
  CHECK(config_to_json(loaded->config()) == config_to_json(model.config()));
  MultiTaskModel<float>::Workspace w1, w2;
  Tensor<float> p1, p2;
  model.predict(w1, b, p1);
  loaded->predict(w2, b, p2);
  REQUIRE(p1.shape() == p2.shape());
  CHECK(p1.dim(1) == 1 + 1 + 4 + 3);  // ctr, rating, next_movie's and tag's query vectors
  CHECK(testing::bitwise_equal(p1.data(), p2.data(), p1.numel()));
}

TEST_CASE("bad input: ranking and retrieval labels and configurations", "[ranking][bad-input]") {
  MultiTaskModel<double> model(ranking_config());
  MultiTaskModel<double>::Workspace ws;
  auto losses_error = [&](Batch<double> b) -> std::string {
    try {
      model.forward(ws, b, Mode::eval());
      model.compute_losses(ws, b);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const Batch<double> good = testing::tiny_batch<double>(model.config(), 10, 5);
  CHECK(losses_error(good).empty());
  Batch<double> b = good;
  b.labels[0][1] = 0.5;
  b.label_mask[0][1] = 1;
  CHECK_THAT(losses_error(b), Catch::Contains("BPR task 'ctr' label[1] expected 0 or 1 but got 0.5"));
  b = good;
  b.labels[2][2] = 9;
  b.label_mask[2][2] = 1;
  CHECK_THAT(losses_error(b), Catch::Contains("table 'movie' in [0, 9) but got 9"));
  b = good;
  b.labels[3][3] = 1.5;
  b.label_mask[3][3] = 1;
  CHECK_THAT(losses_error(b), Catch::Contains("retrieval task 'tag' label[3]"));
  b = good;
  b.labels[2][4] = std::nan("");  // masked rows may hold anything; a labelled NaN is rejected
  b.label_mask[2][4] = 1;
  CHECK_THAT(losses_error(b), Catch::Contains("expected a finite value"));

  auto config_error = [](ModelConfig c) -> std::string {
    try {
      validate_config(c);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  ModelConfig c = ranking_config();
  c.tasks[3].target_table.clear();
  CHECK_THAT(config_error(c), Catch::Contains("retrieval task 'tag' expected a target_table"));
  c = ranking_config();
  c.tasks[3].target_vocab = 0;
  CHECK_THAT(config_error(c), Catch::Contains("expected target_vocab > 0 and target_dim > 0"));
  c = ranking_config();
  c.tasks[2].target_dim = 5;
  CHECK_THAT(config_error(c), Catch::Contains("target_dim expected 0 or the table's dim 4 but got 5"));
  c = ranking_config();
  c.tasks[2].target_table = "city";  // hashed
  CHECK_THAT(config_error(c), Catch::Contains("is hashed"));
  c = ranking_config();
  c.tasks[2].temperature = 0;
  CHECK_THAT(config_error(c), Catch::Contains("expected a finite temperature > 0"));
  c = ranking_config();
  c.tasks[1].loss = TaskLoss::BPR;  // rating is a regression
  CHECK_THAT(config_error(c), Catch::Contains("task 'rating' of type regression cannot use the requested loss"));
  c = testing::tiny_config(Architecture::ESMM);
  c.tasks[0].loss = TaskLoss::BPR;
  CHECK_THAT(config_error(c), Catch::Contains("ESMM task 'ctr' expected the BCE loss"));
}
