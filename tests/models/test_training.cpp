// Training behaviour: loss goes down, loss weighting strategies, ESMM, masks.
#include "models/model_fixtures.hpp"

#include <cstdio>
#include <fstream>

using namespace mtrec;

namespace {

// Two regression tasks over one dense field: y_k = sin(u_k . x) + x_0 + noise_k.
Batch<float> two_task_regression(index_t n, double noise1, double noise2, std::uint64_t seed, double scale2 = 1.0,
                                 double sign2 = 1.0) {
  SyntheticSpec s;
  s.rows = n;
  s.dim = 8;
  s.correlation = 1.0;
  s.sinusoids = 2;
  s.noise_std = 0.0;
  s.seed = 5;
  s.sample_seed = seed;
  Batch<float> b = make_mmoe_synthetic<float>(s);
  RandomStream rs(seed, 77);
  for (index_t i = 0; i < n; ++i) {
    const float clean = b.labels[0][i];
    b.labels[0][i] = clean + float(noise1 * rs.normal(std::uint64_t(2 * i)));
    b.labels[1][i] = float(sign2 * scale2) * clean + float(noise2 * rs.normal(std::uint64_t(2 * i + 1)));
  }
  return b;
}

ModelConfig regression_config(Architecture arch) {
  ModelConfig c;
  c.features = mmoe_synthetic_features(8);
  c.architecture = arch;
  c.tasks = {{"a", TaskType::Regression, 0, {8}}, {"b", TaskType::Regression, 0, {8}}};
  c.bottom = {16};
  c.expert = {8};
  c.experts = 2;
  c.seed = 1;
  return c;
}

TrainConfig quiet(int epochs, double lr = 3e-3) {
  TrainConfig t;
  t.epochs = epochs;
  t.batch_size = 64;
  t.optimizer = OptimizerConfig::adam(lr);
  t.progress = false;
  return t;
}

}  // namespace

TEST_CASE("training: the loss goes down for every architecture", "[training]") {
  for (Architecture a : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE}) {
    ModelConfig c = regression_config(a);
    c.ple_levels = 2;
    c.ple_shared_experts = 1;
    c.ple_task_experts = 1;
    MultiTaskModel<float> model(c);
    const Batch<float> data = two_task_regression(512, 0.05, 0.05, 3);
    const double before = evaluate(model, data).loss;
    Trainer<float> trainer(model, quiet(8));
    const History h = trainer.fit(data);
    const double after = evaluate(model, data).loss;
    CAPTURE(architecture_name(a), before, after);
    CHECK(after < 0.5 * before);
    CHECK(h.epochs.back().train_loss < h.epochs.front().train_loss);
  }
}

TEST_CASE("training: tiny config with every feature kind trains without NaN", "[training]") {
  for (Architecture a : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE, Architecture::ESMM}) {
    const ModelConfig c = testing::tiny_config(a);
    MultiTaskModel<float> model(c);
    const Batch<float> data = testing::tiny_batch<float>(c, 96, 4);
    Trainer<float> trainer(model, quiet(3, 1e-2));
    const History h = trainer.fit(data, &data);
    CAPTURE(architecture_name(a));
    for (const auto& e : h.epochs) CHECK(std::isfinite(e.train_loss));
    CHECK(h.epochs.back().train_loss < h.epochs.front().train_loss);
  }
}

TEST_CASE("uncertainty weighting learns a larger weight for the less noisy task", "[training][weighting]") {
  MultiTaskModel<float> model(regression_config(Architecture::SharedBottom));
  const Batch<float> data = two_task_regression(1024, 0.05, 1.0, 8);
  TrainConfig t = quiet(12, 1e-2);
  t.weighting = Weighting::Uncertainty;
  Trainer<float> trainer(model, t);
  trainer.fit(data);
  const auto w = trainer.task_weights();
  CAPTURE(w[0], w[1]);
  // 0.5 exp(-s_k) tends to 1 / (2 L_k). The noise variances differ 400x, but
  // the quiet task's loss is dominated by the model's own error, so the
  // learned ratio is smaller; it must still clearly favour the quiet task.
  CHECK(w[0] > 2 * w[1]);
}

TEST_CASE("GradNorm lowers the weight of the task with the larger gradients", "[training][weighting]") {
  MultiTaskModel<float> model(regression_config(Architecture::SharedBottom));
  const Batch<float> data = two_task_regression(1024, 0.05, 0.05, 9, 10.0);  // task b's labels are 10x
  TrainConfig t = quiet(4, 3e-3);
  t.weighting = Weighting::GradNorm;
  Trainer<float> trainer(model, t);
  trainer.fit(data);
  const auto& w = trainer.state().gradnorm_w;
  CAPTURE(w[0], w[1]);
  CHECK(w[0] + w[1] == Approx(2.0));
  CHECK(w[1] < w[0]);
}

TEST_CASE("PCGrad: the shared gradient is the sum of the projected task gradients", "[training][weighting]") {
  // Task b's labels are the negation of task a's: their shared gradients conflict.
  // Task b's labels are the negation of task a's; a model seed where their
  // shared gradients really conflict is searched for (deterministically).
  Batch<double> data;
  {
    const Batch<float> f = two_task_regression(64, 0.0, 0.0, 4, 1.0, -1.0);
    data.size = f.size;
    data.dense = {std::vector<double>(f.dense[0].begin(), f.dense[0].end())};
    data.labels = {std::vector<double>(f.labels[0].begin(), f.labels[0].end()),
                   std::vector<double>(f.labels[1].begin(), f.labels[1].end())};
    data.label_mask = {{}, {}};
  }
  for (std::uint64_t seed = 1; seed < 40; ++seed) {
    ModelConfig cfg = regression_config(Architecture::SharedBottom);
    cfg.seed = seed;
    MultiTaskModel<double> model(cfg);
    auto& st = model.parameters();
    MultiTaskModel<double>::Workspace ws;
    model.forward(ws, data, Mode::train(0, 0));
    model.compute_losses(ws, data);
    std::vector<std::vector<double>> g(2);
    for (int k = 0; k < 2; ++k) {
      st.zero_grad();
      const double coeff[2] = {k == 0 ? 0.5 : 0.0, k == 1 ? 0.5 : 0.0};  // lambda = 1, accumulation 2
      model.backward(ws, data, coeff);
      g[k].assign(st.grads(), st.grads() + st.size());
    }
    std::vector<bool> shared(static_cast<std::size_t>(st.size()), false);
    for (ParamId id : model.shared_parameters())
      for (index_t i = 0; i < st.info(id).size; ++i) shared[std::size_t(st.info(id).offset + i)] = true;
    auto dot = [&](const std::vector<double>& a, const std::vector<double>& b) {
      double s = 0;
      for (std::size_t i = 0; i < a.size(); ++i)
        if (shared[i]) s += a[i] * b[i];
      return s;
    };
    const double d = dot(g[0], g[1]);
    if (d >= 0) continue;  // no conflict: PCGrad would change nothing
    std::vector<double> expected(g[0].size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
      if (!shared[i]) {
        expected[i] = g[0][i] + g[1][i];
        continue;
      }
      const double p0 = g[0][i] - d / dot(g[1], g[1]) * g[1][i];
      const double p1 = g[1][i] - d / dot(g[0], g[0]) * g[0][i];
      expected[i] = p0 + p1;
    }
    // The trainer's PCGrad step, before any optimizer update (accumulation 2).
    st.zero_grad();
    TrainConfig t = quiet(1);
    t.weighting = Weighting::PCGrad;
    t.accumulation = 2;
    Trainer<double> trainer(model, t);
    trainer.train_step(data);
    int compared = 0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      CHECK(st.grads()[i] == Approx(expected[i]).margin(1e-12).epsilon(1e-9));
      ++compared;
    }
    CHECK(compared > 100);
    return;
  }
  FAIL("no seed in [1, 40) gave conflicting task gradients");
}

TEST_CASE("ESMM: pCTCVR equals pCTR x pCVR and its loss is BCE on the product", "[training][esmm]") {
  const ModelConfig c = testing::tiny_config(Architecture::ESMM);
  MultiTaskModel<double> model(c);
  const Batch<double> b = testing::tiny_batch<double>(c, 9, 2);
  MultiTaskModel<double>::Workspace ws;
  Tensor<double> out;
  model.predict(ws, b, out);
  REQUIRE(model.output_columns() == std::vector<std::string>{"ctr", "ctcvr", "cvr"});
  for (index_t i = 0; i < b.size; ++i) CHECK(out[i * 3 + 1] == Approx(out[i * 3 + 0] * out[i * 3 + 2]).epsilon(1e-14));
  // The CTCVR loss over all labelled impressions, computed here from the probabilities.
  const TaskLosses l = model.compute_losses(ws, b);
  double num = 0, den = 0;
  for (index_t i = 0; i < b.size; ++i) {
    if (!b.label_mask[1][i]) continue;
    const double p = out[i * 3 + 1], y = b.labels[1][i], w = b.weights[i];
    num += -w * (y * std::log(p) + (1 - y) * std::log(1 - p));
    den += w;
  }
  CHECK(l.value[1] == Approx(num / den).epsilon(1e-12));
}

TEST_CASE("bad input: a batch where a task has no label trains without NaN", "[training][bad-input]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  Batch<float> b = testing::tiny_batch<float>(c, 16, 3);
  std::fill(b.label_mask[1].begin(), b.label_mask[1].end(), std::uint8_t(0));
  b.labels[1].assign(b.labels[1].size(), std::numeric_limits<float>::quiet_NaN());  // ignored: masked
  Trainer<float> trainer(model, quiet(2));
  const History h = trainer.fit(b);
  for (const auto& e : h.epochs) {
    CHECK(std::isfinite(e.train_loss));
    CHECK(e.train_task_loss[1] == 0.0);
  }
  const auto& st = model.parameters();
  for (index_t i = 0; i < st.size(); ++i) REQUIRE(std::isfinite(st.values()[i]));
}

TEST_CASE("bad input: NaN labels, wrong field sizes and empty batches are rejected", "[training][bad-input]") {
  const ModelConfig c = testing::tiny_config(Architecture::SharedBottom);
  MultiTaskModel<float> model(c);
  MultiTaskModel<float>::Workspace ws;
  Batch<float> b = testing::tiny_batch<float>(c, 6, 3);
  b.labels[0][2] = std::numeric_limits<float>::quiet_NaN();
  b.label_mask[0][2] = 1;
  model.forward(ws, b, Mode::eval());
  testing::require_error([&] { model.compute_losses(ws, b); }, {"compute_losses", "'ctr'", "label[2]", "nan"});
  Batch<float> short_ids = testing::tiny_batch<float>(c, 6, 3);
  short_ids.ids[1].pop_back();
  testing::require_error([&] { model.forward(ws, short_ids, Mode::eval()); }, {"'movie'", "expected 6", "got 5"});
  Batch<float> bad_id = testing::tiny_batch<float>(c, 6, 3);
  bad_id.ids[0][1] = 7;  // vocab 7
  testing::require_error([&] { model.forward(ws, bad_id, Mode::eval()); }, {"ID 7", "7 rows", "'emb.user'"});
  Batch<float> empty = testing::tiny_batch<float>(c, 6, 3);
  empty.size = 0;
  testing::require_error([&] { model.forward(ws, empty, Mode::eval()); }, {"non-empty batch"});
  Batch<float> nan_dense = testing::tiny_batch<float>(c, 6, 3);
  nan_dense.dense[1][3] = std::numeric_limits<float>::infinity();
  testing::require_error([&] { model.forward(ws, nan_dense, Mode::eval()); }, {"'stats'", "finite"});
  Batch<float> bad_len = testing::tiny_batch<float>(c, 6, 3);
  bad_len.sequences[0].lengths[4] = 9;
  testing::require_error([&] { model.forward(ws, bad_len, Mode::eval()); }, {"'history'", "length[4]", "[0, 4]"});
}

TEST_CASE("bad input: configuration errors name the field or task", "[bad-input][config]") {
  ModelConfig c = testing::tiny_config(Architecture::MMoE);
  c.features.bags[0].table = "movie";  // movie is (9, 4); genres declares (6, 3)
  testing::require_error([&] { MultiTaskModel<float> m(c); }, {"'genres'", "shares table 'movie'", "rows=9"});
  c = testing::tiny_config(Architecture::SingleTask);
  c.tasks.push_back(c.tasks[0]);
  c.tasks[1].name = "other";
  testing::require_error([&] { MultiTaskModel<float> m(c); }, {"'single'", "exactly 1 task", "2"});
  c = testing::tiny_config(Architecture::MMoE);
  c.tasks[2].num_classes = 1;
  testing::require_error([&] { MultiTaskModel<float> m(c); }, {"'genre'", "num_classes >= 2"});
  c = testing::tiny_config(Architecture::MMoE);
  c.features.ids[0].hash_buckets = 5;  // both vocab and buckets
  testing::require_error([&] { MultiTaskModel<float> m(c); }, {"'user'", "exactly one of vocab or hash_buckets"});
  c = testing::tiny_config(Architecture::ESMM);
  c.tasks[1].type = TaskType::Regression;
  testing::require_error([&] { MultiTaskModel<float> m(c); }, {"ESMM", "2 binary tasks"});
}

TEST_CASE("split_dataset: seeded, disjoint, complete, in row order", "[training][data]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  Batch<float> all = testing::tiny_batch<float>(c, 100, 3);
  for (index_t i = 0; i < 100; ++i) all.dense[0][i] = float(i);  // "age" = row number, to trace rows
  const DatasetSplit<float> a = split_dataset(all, 0.8, 0.1, 0.1, 5), b = split_dataset(all, 0.8, 0.1, 0.1, 5);
  CHECK(a.train.size == 80);
  CHECK(a.valid.size == 10);
  CHECK(a.test.size == 10);
  std::vector<int> seen(100, 0);
  for (const Batch<float>* part : {&a.train, &a.valid, &a.test})
    for (index_t i = 0; i < part->size; ++i) {
      ++seen[std::size_t(part->dense[0][i])];
      if (i > 0) CHECK(part->dense[0][i] > part->dense[0][i - 1]);
    }
  for (int s : seen) CHECK(s == 1);
  CHECK(a.test.dense[0] == b.test.dense[0]);
  CHECK(split_dataset(all, 0.8, 0.1, 0.1, 6).test.dense[0] != a.test.dense[0]);
  testing::require_error([&] { split_dataset(all, 0.8, 0.3, 0.1, 1); }, {"split_dataset", "summing to 1"});
}

TEST_CASE("trainer: early stopping restores the best epoch and the CSV log has one row per epoch",
          "[training]") {
  const ModelConfig c = testing::tiny_config(Architecture::SharedBottom);
  MultiTaskModel<float> model(c);
  const Batch<float> train = testing::tiny_batch<float>(c, 64, 1), valid = testing::tiny_batch<float>(c, 32, 2);
  TrainConfig t = quiet(30, 3e-2);  // a high lr on tiny data: validation loss turns up quickly
  t.patience = 2;
  t.monitor = "loss";
  t.csv_log = "/tmp/mtrec_test_log_" + std::to_string(::getpid()) + ".csv";
  Trainer<float> trainer(model, t);
  const History h = trainer.fit(train, &valid);
  REQUIRE(h.stopped_early);
  const int run = int(h.epochs.size());
  CHECK(run == h.best_epoch + t.patience);
  // The restored weights are the best epoch's: evaluating again gives its loss.
  CHECK(evaluate(model, valid).loss == Approx(h.best_value).epsilon(1e-6));
  std::ifstream f(t.csv_log);
  std::string header, line;
  std::getline(f, header);
  CHECK(header.rfind("epoch,train_loss,lr,seconds,train_loss:ctr", 0) == 0);
  CHECK(header.find("valid_auc:ctr") != std::string::npos);
  int rows = 0;
  while (std::getline(f, line)) {
    ++rows;
    CHECK(line.rfind(std::to_string(rows) + ",", 0) == 0);
  }
  CHECK(rows == run);
  std::remove(t.csv_log.c_str());
}

// optimizer.fused_tables: the lookups' backward fused with the row-wise Adam
// update (OptimizerConfig::fused_tables) against the unfused lazy update,
// trained from the same seed on the same batches. Tables read once per step
// take the fused kernel; the shared movie table (the movie field and the
// history sequence) and a retrieval task's target table fall back.
TEST_CASE("training: fused table updates agree with the unfused lazy update", "[training][fused]") {
  for (int ranking = 0; ranking < 2; ++ranking)
    for (Architecture a : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE}) {
      const ModelConfig c = ranking ? testing::tiny_ranking_config(a) : testing::tiny_config(a);
      const Batch<float> data = testing::tiny_batch<float>(c, 96, 4);
      MultiTaskModel<float> plain(c), fused(c);
      TrainConfig tc = quiet(3, 1e-2);
      tc.batch_size = 16;
      tc.optimizer = OptimizerConfig::adamw(1e-2, 0.01);
      Trainer<float> tp(plain, tc);
      tc.optimizer.fused_tables = true;
      Trainer<float> tf(fused, tc);
      CHECK(fused.parameters().fused_tables());
      const History hp = tp.fit(data), hf = tf.fit(data);
      CAPTURE(architecture_name(a), ranking);
      REQUIRE(hp.epochs.size() == hf.epochs.size());
      for (std::size_t e = 0; e < hp.epochs.size(); ++e)
        CHECK(hf.epochs[e].train_loss == Approx(hp.epochs[e].train_loss).epsilon(1e-5));
      const auto& sp = plain.parameters();
      const auto& sf = fused.parameters();
      for (ParamId id = 0; id < sp.count(); ++id) {
        const std::vector<float> wp = sp.values_host(id), wf = sf.values_host(id);
        CAPTURE(sp.info(id).name);
        double worst = 0;
        for (std::size_t i = 0; i < wp.size(); ++i) worst = std::max(worst, std::abs(double(wp[i]) - double(wf[i])));
        CHECK(worst < 2e-5);
      }
    }
}

TEST_CASE("training: fused table updates take the fused path where a table is read once", "[training][fused]") {
  const ModelConfig c = testing::tiny_ranking_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  const Batch<float> batch = testing::tiny_batch<float>(c, 8, 5);
  OptimizerConfig oc = OptimizerConfig::adam(1e-2);
  oc.fused_tables = true;
  Optimizer<float> opt(model.parameters(), oc);
  auto& s = model.parameters();
  std::vector<double> coeff(c.tasks.size(), 1.0);
  MultiTaskModel<float>::Workspace ws;
  model.forward(ws, batch, Mode::train(0, 1));
  model.compute_losses(ws, batch);
  model.backward(ws, batch, coeff.data());
  // Read once: deferred, never written as a gradient, no row marked touched.
  for (const char* t : {"emb.user", "emb.city", "emb.genres", "emb.title"}) {
    CAPTURE(t);
    const ParamId id = s.find(t);
    CHECK(s.deferred(id) != nullptr);
    CHECK(s.touched(id).rows.empty());
    for (float g : s.grads_host(id)) REQUIRE(g == 0.0f);
  }
  // Shared by the movie field, the history sequence and the next_movie
  // retrieval task: written the unfused way; tag_out is a retrieval target.
  for (const char* t : {"emb.movie", "emb.tag_out"}) {
    CAPTURE(t);
    const ParamId id = s.find(t);
    CHECK(s.deferred(id) == nullptr);
    CHECK(!s.touched(id).rows.empty());
  }
  const std::vector<float> before = s.values_host(s.find("emb.user"));
  REQUIRE(opt.step());
  CHECK(before != s.values_host(s.find("emb.user")));
  s.zero_grad();
  CHECK(s.deferred(s.find("emb.user")) == nullptr);
}

TEST_CASE("bad input: fused table updates refuse what needs the table gradients", "[training][fused][bad-input]") {
  const ModelConfig c = regression_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  TrainConfig tc = quiet(1);
  tc.optimizer.fused_tables = true;
  tc.clip_norm = 1.0;
  testing::require_error([&] { Trainer<float> t(model, tc); }, {"Trainer", "fused_tables", "clip_norm"});
  CHECK(!model.parameters().fused_tables());
  tc.clip_norm = 0;
  tc.accumulation = 2;
  testing::require_error([&] { Trainer<float> t(model, tc); }, {"Trainer", "fused_tables", "accumulation 2"});
  tc.accumulation = 1;
  tc.weighting = Weighting::PCGrad;
  testing::require_error([&] { Trainer<float> t(model, tc); }, {"Trainer", "fused_tables", "pcgrad"});
  OptimizerConfig sgd = OptimizerConfig::sgd(0.1);
  sgd.fused_tables = true;
  testing::require_error([&] { Optimizer<float> o(model.parameters(), sgd); }, {"Optimizer", "fused_tables", "SGD"});
  OptimizerConfig dense = OptimizerConfig::adam(0.1);
  dense.fused_tables = true;
  dense.lazy_tables = false;
  testing::require_error([&] { Optimizer<float> o(model.parameters(), dense); }, {"Optimizer", "lazy_tables"});
}
