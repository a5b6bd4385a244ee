// Training reliability: non-finite steps never reach the weights, the
// schedule holds from the first train_step, fit() runs twice, every accepted
// monitor is reported, and fit() names bad data by its row.
#include "models/model_fixtures.hpp"

#include <cmath>
#include <cstdio>
#include <unistd.h>

using namespace mtrec;

namespace {

TrainConfig rel_quiet(int epochs, OptimizerConfig opt = OptimizerConfig::adam(1e-2)) {
  TrainConfig t;
  t.epochs = epochs;
  t.batch_size = 16;
  t.optimizer = opt;
  t.progress = false;
  t.log = nullptr;
  t.seed = 5;
  return t;
}

std::vector<float> values_of(const MultiTaskModel<float>& m) {
  const auto& st = m.parameters();
  return std::vector<float>(st.values(), st.values() + st.size());
}

index_t count_nonfinite(const MultiTaskModel<float>& m) {
  const auto& st = m.parameters();
  index_t n = 0;
  for (index_t i = 0; i < st.size(); ++i) n += !std::isfinite(st.values()[i]);
  return n;
}

// A batch whose dense value overflows the first layer to inf, so the loss is
// NaN (the forward computes inf - inf), and one whose regression label makes
// the loss gradient overflow to -inf while the loss itself stays finite in
// double: the two ways a step goes non-finite.
Batch<float> poison_loss(const ModelConfig& c) {
  Batch<float> b = testing::tiny_batch<float>(c, 16, 41);
  for (auto& v : b.dense[0]) v = 3.0e38f;
  for (auto& v : b.dense[1]) v = -3.0e38f;
  return b;
}
Batch<float> poison_gradient(const ModelConfig& c) {
  Batch<float> b = testing::tiny_batch<float>(c, 16, 43);
  // One labelled row of the MSE task 'rating': dL/do = 2 (o - y) = -6e38 overflows float.
  for (auto& m : b.label_mask[1]) m = 0;
  b.label_mask[1][0] = 1;
  b.labels[1][0] = 3.0e38f;
  b.weights[0] = 1.0f;
  return b;
}

std::string rel_temp_path(const std::string& name) { return "/tmp/mtrec_rel_" + std::to_string(::getpid()) + "_" + name; }

}  // namespace

TEST_CASE("non-finite step: Stop throws before the update and leaves the model at its last good step",
          "[training][reliability]") {
  ModelConfig c = testing::tiny_config(Architecture::MMoE, false);
  c.tasks[1].loss = TaskLoss::MSE;
  for (const bool gradient_only : {false, true}) {
    CAPTURE(gradient_only);
    MultiTaskModel<float> model(c);
    Trainer<float> trainer(model, rel_quiet(1));
    const Batch<float> good = testing::tiny_batch<float>(c, 16, 7);
    trainer.train_step(good);
    const std::vector<float> before = values_of(model);
    const index_t steps = trainer.optimizer().step_count();
    const Batch<float> bad = gradient_only ? poison_gradient(c) : poison_loss(c);
    testing::require_error([&] { trainer.train_step(bad); },
                           {"non-finite training step", gradient_only ? "gradient norm" : "", "was not applied"});
    CHECK(testing::bitwise_equal(before.data(), values_of(model).data(), index_t(before.size())));
    CHECK(trainer.optimizer().step_count() == steps);
    // The gradients of the bad step were dropped: the next good step is a clean one.
    trainer.train_step(good);
    CHECK(count_nonfinite(model) == 0);
  }
}

TEST_CASE("non-finite step: Skip drops the step, counts it and goes on", "[training][reliability]") {
  ModelConfig c = testing::tiny_config(Architecture::SharedBottom, false);
  c.tasks[1].loss = TaskLoss::MSE;
  MultiTaskModel<float> model(c);
  TrainConfig tc = rel_quiet(1);
  tc.on_nonfinite = OnNonFinite::Skip;
  tc.weighting = Weighting::Uncertainty;  // its learned log-variances must not see the NaN loss either
  Trainer<float> trainer(model, tc);
  const Batch<float> good = testing::tiny_batch<float>(c, 16, 7);
  trainer.train_step(good);
  const std::vector<float> before = values_of(model);
  const auto log_var = trainer.state().log_var;
  trainer.train_step(poison_loss(c));
  trainer.train_step(poison_gradient(c));
  CHECK(trainer.skipped_steps() == 2);
  CHECK(testing::bitwise_equal(before.data(), values_of(model).data(), index_t(before.size())));
  CHECK(trainer.state().log_var == log_var);
  trainer.train_step(good);
  CHECK(count_nonfinite(model) == 0);
  CHECK_FALSE(testing::bitwise_equal(before.data(), values_of(model).data(), index_t(before.size())));
}

TEST_CASE("a diverging fit() stops with an error and no non-finite weight, and the checkpoint refuses NaN",
          "[training][reliability][checkpoint]") {
  // The mtrec-train report: MMoE, ReLU, lr 1e10 exited 0 with most weights NaN.
  ModelConfig c = testing::tiny_config(Architecture::MMoE, false);
  c.dropout = 0;
  const Batch<float> data = testing::tiny_batch<float>(c, 96, 3);
  MultiTaskModel<float> model(c);
  Trainer<float> trainer(model, rel_quiet(5, OptimizerConfig::adam(1e10)));
  bool threw = false;
  try {
    trainer.fit(data);
  } catch (const Error& e) {
    threw = true;
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("non-finite") != std::string::npos);
    CHECK(msg.find("epoch") != std::string::npos);
  }
  CHECK(threw);
  CHECK(count_nonfinite(model) == 0);

  // save_checkpoint refuses a model with non-finite weights, unless allowed;
  // load_checkpoint reports them, unless allowed.
  MultiTaskModel<float> broken(c);
  const ParamId id = broken.parameters().find("tower.ctr.0.weight");
  broken.parameters().value(id)[2] = std::nanf("");
  broken.parameters().value(id)[3] = INFINITY;
  const std::string path = rel_temp_path("nan.safetensors");
  std::remove(path.c_str());
  testing::require_error([&] { save_checkpoint(path, broken); },
                         {"save_checkpoint", "2 of the model's weights are not finite", "tower.ctr.0.weight",
                          "element 2", "allow_nonfinite"});
  CHECK(::access(path.c_str(), F_OK) != 0);  // nothing written
  CheckpointOptions allow;
  allow.allow_nonfinite = true;
  save_checkpoint(path, broken, static_cast<Trainer<float>*>(nullptr), {}, allow);
  testing::require_error([&] { load_checkpoint<float>(path); },
                         {"load_checkpoint", path.c_str(), "2 of the model's weights are not finite",
                          "tower.ctr.0.weight"});
  auto loaded = load_checkpoint<float>(path, allow);
  CHECK(std::isnan(loaded->parameters().value(id)[2]));
  std::remove(path.c_str());
}

TEST_CASE("fit() validates the whole data set first and names the bad row", "[training][reliability][bad-input]") {
  const ModelConfig c = testing::tiny_config(Architecture::SharedBottom, false);
  MultiTaskModel<float> model(c);
  Batch<float> data = testing::tiny_batch<float>(c, 80, 9);
  data.dense[1][2 * 37 + 1] = std::nanf("");  // 'stats' has dim 2: row 37, column 1
  Trainer<float> trainer(model, rel_quiet(1));
  const std::vector<float> before = values_of(model);
  testing::require_error([&] { trainer.fit(data); },
                         {"training data", "dense field 'stats' row 37 column 1", "finite"});
  CHECK(testing::bitwise_equal(before.data(), values_of(model).data(), index_t(before.size())));  // nothing trained
  Batch<float> valid = testing::tiny_batch<float>(c, 20, 10);
  valid.ids[0][13] = 7;  // 'user' has 7 rows
  data = testing::tiny_batch<float>(c, 80, 9);
  testing::require_error([&] { trainer.fit(data, &valid); },
                         {"validation data row 13", "ID field 'user'", "ID 7", "[0, 7)"});
  valid = testing::tiny_batch<float>(c, 20, 10);
  valid.label_mask[0][4] = 1;
  valid.labels[0][4] = 2.0f;  // a BCE label
  testing::require_error([&] { trainer.fit(data, &valid); }, {"validation data row 4", "task 'ctr'", "[0, 1]", "got 2"});
}

TEST_CASE("train_step follows the configured learning rate and schedule from the first call",
          "[training][reliability][schedule]") {
  ModelConfig c = testing::tiny_config(Architecture::SharedBottom, false);
  c.dropout = 0;
  c.features.sequences[0].encoder.dropout = 0;
  c.features.sequences[1].encoder.dropout = 0;
  const Batch<float> b = testing::tiny_batch<float>(c, 16, 11);
  // Plain SGD at lr 0.1: one step is p - 0.1 g, g from an independent backward.
  MultiTaskModel<float> model(c), ref(c);
  Trainer<float> trainer(model, rel_quiet(1, OptimizerConfig::sgd(0.1)));
  trainer.train_step(b);
  MultiTaskModel<float>::Workspace ws;
  ref.forward(ws, b, Mode::train(0, 5));
  ref.compute_losses(ws, b);
  std::vector<double> coeff;
  for (const auto& t : c.tasks) coeff.push_back(t.weight);
  ref.backward(ws, b, coeff.data());
  const auto& rs = ref.parameters();
  const auto& ms = model.parameters();
  double worst = 0;
  for (index_t i = 0; i < rs.dense_size(); ++i)
    worst = std::max(worst, std::fabs(double(ms.values()[i]) - (double(rs.values()[i]) - 0.1 * double(rs.grads()[i]))));
  CHECK(worst < 1e-6);

  // A decaying schedule needs its length without fit() ...
  TrainConfig tc = rel_quiet(1);
  tc.schedule = ScheduleKind::WarmupLinear;
  tc.warmup_fraction = 0.3;
  MultiTaskModel<float> m2(c);
  Trainer<float> t2(m2, tc);
  testing::require_error([&] { t2.train_step(b); }, {"total_updates"});
  // ... and follows it step by step when given.
  tc.total_updates = 10;
  MultiTaskModel<float> m3(c);
  Trainer<float> t3(m3, tc);
  const LRSchedule want = LRSchedule::warmup_linear(1e-2, 3, 10, 0.0);
  for (index_t s = 0; s < 10; ++s) {
    CHECK(t3.current_lr() == Approx(want.at(s)).epsilon(1e-12));
    t3.train_step(b);
  }
}

TEST_CASE("a second fit() trains again, restarting the schedule", "[training][reliability][schedule]") {
  const ModelConfig c = testing::tiny_config(Architecture::SharedBottom, false);
  const Batch<float> data = testing::tiny_batch<float>(c, 64, 12);
  MultiTaskModel<float> model(c);
  TrainConfig tc = rel_quiet(2);
  tc.schedule = ScheduleKind::WarmupCosine;
  tc.warmup_fraction = 0.25;
  tc.min_lr = 1e-4;
  Trainer<float> trainer(model, tc);
  const History h1 = trainer.fit(data);
  REQUIRE(h1.epochs.size() == 2);
  const std::vector<float> after_first = values_of(model);
  const History h2 = trainer.fit(data);
  REQUIRE(h2.epochs.size() == 2);
  CHECK(trainer.state().epoch == 4);
  CHECK(h2.epochs[0].epoch == 3);
  CHECK(h2.epochs[0].lr == Approx(h1.epochs[0].lr).epsilon(1e-12));  // the schedule started again
  CHECK(h2.epochs[1].lr == Approx(h1.epochs[1].lr).epsilon(1e-12));
  CHECK_FALSE(testing::bitwise_equal(after_first.data(), values_of(model).data(), index_t(after_first.size())));
}

TEST_CASE("monitors: f1, precision and recall are reported, unknown ones are refused up front",
          "[training][reliability][metrics]") {
  const ModelConfig c = testing::tiny_config(Architecture::SharedBottom, false);
  const Batch<float> data = testing::tiny_batch<float>(c, 64, 13);
  const Batch<float> valid = testing::tiny_batch<float>(c, 40, 14);
  for (const char* m : {"f1:ctr", "precision:ctr", "recall:ctr"}) {
    CAPTURE(m);
    MultiTaskModel<float> model(c);
    TrainConfig tc = rel_quiet(3);
    tc.patience = 1;
    tc.monitor = m;
    Trainer<float> trainer(model, tc);
    const History h = trainer.fit(data, &valid);
    REQUIRE_FALSE(h.epochs.empty());
    CHECK(h.epochs[0].monitored == h.epochs[0].valid.metric(m));
  }
  MultiTaskModel<float> model(c);
  TrainConfig tc = rel_quiet(1);
  tc.monitor = "rmse:ctr";
  testing::require_error([&] { Trainer<float>(model, tc); }, {"monitor 'rmse:ctr'", "binary", "f1"});
  tc.monitor = "auc:clicks";
  testing::require_error([&] { Trainer<float>(model, tc); }, {"task 'clicks'", "ctr, rating"});

  // The values against a count over the predictions, at a non-default threshold.
  testing::randomise_parameters(model.parameters(), 6, 0.5);
  const double thr = 0.4;
  const Evaluation ev = evaluate(model, valid, 16, thr);
  MultiTaskModel<float>::Workspace ws;
  Tensor<float> p;
  model.predict(ws, valid, p);
  double tp = 0, fp = 0, fn = 0;
  for (index_t i = 0; i < valid.size; ++i) {
    if (!valid.label_mask[0][std::size_t(i)]) continue;
    const bool pred = p[i * p.dim(1)] > thr, pos = valid.labels[0][std::size_t(i)] >= 0.5f;
    tp += pred && pos;
    fp += pred && !pos;
    fn += !pred && pos;
  }
  const TaskMetrics& t = ev.task("ctr");
  CHECK(t["precision"] == Approx(tp + fp > 0 ? tp / (tp + fp) : 0.0));
  CHECK(t["recall"] == Approx(tp + fn > 0 ? tp / (tp + fn) : 0.0));
  CHECK(t["f1"] == Approx(tp > 0 ? 2 * tp / (2 * tp + fp + fn) : 0.0));
}

TEST_CASE("optimizer kernels report an update that overflows a weight, cpu as reference", "[optimizer][kernels][reliability]") {
  for (const index_t n : {index_t(1), index_t(7), index_t(16), index_t(33), index_t(1000)}) {
    for (const bool poison : {false, true}) {
      CAPTURE(n, poison);
      const index_t at = n / 2;
      // SGD: w - lr g with lr = 1e38 and g = 1 at one weight of -3e38 -> -inf.
      std::vector<float> w(std::size_t(n), 1.0f), g(std::size_t(n), 1e-30f);
      if (poison) {
        w[std::size_t(at)] = -3e38f;
        g[std::size_t(at)] = 1.0f;
      }
      std::vector<float> w2 = w;
      const bool cpu_ok = kernels::sgd_update(kernels::cpu, w.data(), static_cast<float*>(nullptr), g.data(), n,
                                              1e38f, 0.0f, 0.0f, false);
      const bool ref_ok = kernels::sgd_update(kernels::reference, w2.data(), static_cast<float*>(nullptr), g.data(), n,
                                              1e38f, 0.0f, 0.0f, false);
      CHECK(cpu_ok == !poison);
      CHECK(ref_ok == !poison);
      // Adam: a weight at 3.4e38 pushed up by lr 5e37 (g < 0) -> +inf.
      std::vector<float> aw(std::size_t(n), 0.5f), am(std::size_t(n), 0.0f), av(std::size_t(n), 0.0f),
          ag(std::size_t(n), 0.25f);
      if (poison) {
        aw[std::size_t(at)] = 3.4e38f;
        ag[std::size_t(at)] = -1.0f;
      }
      auto aw2 = aw, am2 = am, av2 = av;
      kernels::AdamStep<float> st;
      st.lr = 5e37f;  // |update| = lr * 3.16 here: finite from 0.5, +inf from 3.4e38
      st.beta1 = 0.9f;
      st.beta2 = 0.999f;
      st.eps = 1e-8f;
      st.bias_correction1 = 1.0f;
      st.bias_correction2 = 1.0f;
      CHECK(kernels::adam_update(kernels::cpu, aw.data(), am.data(), av.data(), ag.data(), n, st) == !poison);
      CHECK(kernels::adam_update(kernels::reference, aw2.data(), am2.data(), av2.data(), ag.data(), n, st) == !poison);
    }
  }
}

TEST_CASE("kernels: all_finite, cpu as reference, on every position and odd sizes", "[kernels][reliability]") {
  for (const index_t n : {index_t(0), index_t(1), index_t(5), index_t(16), index_t(31), index_t(33), index_t(4099),
                          index_t(300001)}) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) x[std::size_t(i)] = float(i % 17) * 1e37f - 8e37f;  // large but finite
    CAPTURE(n);
    CHECK(kernels::all_finite(kernels::cpu, x.data(), n));
    CHECK(kernels::all_finite(kernels::reference, x.data(), n));
    const index_t probes[3] = {0, n / 2, n - 1};
    for (const index_t at : probes) {
      if (n == 0) break;
      for (const float bad : {std::nanf(""), INFINITY, -INFINITY}) {
        CAPTURE(at, bad);
        std::vector<float> y = x;
        y[std::size_t(at)] = bad;
        CHECK_FALSE(kernels::all_finite(kernels::cpu, y.data(), n));
        CHECK_FALSE(kernels::all_finite(kernels::reference, y.data(), n));
      }
    }
  }
}
