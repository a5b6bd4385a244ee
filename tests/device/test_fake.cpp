// The Fake device (ctest label device-fake): memory from an arena that is
// PROT_NONE except while a Fake kernel or copy runs, kernels that run the
// reference code. Host code that reads device memory faults, so every test
// here passing means the layers, the model, the trainer, checkpoints,
// evaluation and predict touch device memory only through kernels and the
// explicit to_host/to_device copies.
//
// Each result is checked against an independent reference: finite
// differences in double (read and perturbed through the explicit copies),
// and the same model on the Reference device (host memory, the same scalar
// kernels: equal up to FMA contraction) or on Cpu.
#include "models/model_fixtures.hpp"

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

#if __has_include(<mtrec/data/movielens.hpp>)
#include <mtrec/data/movielens.hpp>
#define MTREC_TEST_HAS_MOVIELENS 1
#endif

using namespace mtrec;

namespace {

template <class T, class D>
std::vector<T> host(const Tensor<T, D>& t) {
  std::vector<T> v(std::size_t(t.numel()));
  to_host(t.device(), v.data(), t.cview());
  return v;
}
template <class T, class D>
Tensor<T, D> device_copy(const std::vector<T>& v, Shape s) {
  Tensor<T, D> t(s);
  REQUIRE(t.numel() == index_t(v.size()));
  to_device(t.device(), t.view(), v.data());
  return t;
}
std::vector<double> random_vec(index_t n, std::uint64_t seed) {
  std::vector<double> v(static_cast<std::size_t>(n), 0.0);
  testing::fill_uniform(v.data(), n, seed);
  return v;
}
double dotv(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks every parameter gradient of `store` (already in grads) against
// central differences of loss(), perturbing the device values through
// write_values. Returns the number of elements checked.
template <class D>
int check_store_gradient(ParameterStore<double, D>& store, const std::function<double()>& loss, double rtol = 1e-5,
                         double atol = 1e-8) {
  std::vector<double> g(std::size_t(store.size()));
  store.read_grads(g.data(), 0, store.size());
  int checked = 0;
  for (ParamId id = 0; id < store.count(); ++id) {
    const auto& info = store.info(id);
    std::vector<double> w = store.values_host(id);
    for (index_t i = 0; i < info.size; ++i) {
      const double saved = w[std::size_t(i)];
      double v = saved + 1e-6;
      store.write_values(info.offset + i, &v, 1);
      const double lp = loss();
      v = saved - 1e-6;
      store.write_values(info.offset + i, &v, 1);
      const double lm = loss();
      store.write_values(info.offset + i, &saved, 1);
      const double numeric = (lp - lm) / 2e-6, analytic = g[std::size_t(info.offset + i)];
      ++checked;
      if (std::fabs(analytic - numeric) > atol + rtol * std::fabs(numeric)) {
        INFO(info.name << "[" << i << "]: analytic " << analytic << " vs finite difference " << numeric);
        CHECK(std::fabs(analytic - numeric) <= atol + rtol * std::fabs(numeric));
        return checked;
      }
    }
  }
  return checked;
}

}  // namespace

TEST_CASE("fake device: a host read of device memory dies, a read inside the guard does not", "[device-fake]") {
  Tensor<float, Fake> t(Shape{64});
  t.zero();
  auto child = [&](bool guarded) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      struct sigaction sa {};
      sa.sa_handler = [](int) { ::_exit(77); };
      ::sigaction(SIGSEGV, &sa, nullptr);
      ::sigaction(SIGBUS, &sa, nullptr);
      float x;
      if (guarded) {
        FakeGuard g;
        x = *static_cast<volatile float*>(raw(t.data()));
      } else {
        x = *static_cast<volatile float*>(raw(t.data()));  // the deliberate host read
      }
      ::_exit(x == 0.0f ? 0 : 1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
  };
  const int bad = child(false);
  CHECK(((WIFEXITED(bad) && WEXITSTATUS(bad) == 77) || (WIFSIGNALED(bad) && WTERMSIG(bad) == SIGSEGV)));
  const int good = child(true);
  CHECK((WIFEXITED(good) && WEXITSTATUS(good) == 0));
  // The explicit copies work outside any guard.
  std::vector<float> v(64, 2.5f);
  to_device(t.device(), t.view(), v.data());
  CHECK(host(t) == v);
  CHECK(FakeArena::instance().contains(raw(t.data())));
}

TEST_CASE("fake device: memory comes from the arena and is reused", "[device-fake]") {
  const std::size_t before = FakeArena::instance().bytes_in_use();
  {
    Tensor<double, Fake> a(Shape{1000}), b(Shape{3, 7});
    CHECK(FakeArena::instance().contains(raw(a.data())));
    CHECK(FakeArena::instance().contains(raw(b.data())));
    CHECK(FakeArena::instance().bytes_in_use() >= before + 8000);
    Tensor<double, Fake> c = a;  // device -> device copy
    CHECK(c.data() != a.data());
  }
  CHECK(FakeArena::instance().bytes_in_use() == before);
}

TEST_CASE("fake device: kernels and copies check that device pointers point into the arena", "[device-fake]") {
  // At compile time a host pointer is refused (tests/device/fake_must_not_compile.cpp);
  // a DevicePtr forged from a host address is refused when the kernel runs.
  static_assert(!std::is_convertible<float*, DevicePtr<float, FakeMemory>>::value, "no implicit host -> device");
  static_assert(!std::is_convertible<DevicePtr<float, FakeMemory>, float*>::value, "no implicit device -> host");
  static_assert(std::is_same<Tensor<float, Cpu>::pointer, float*>::value, "host tensors keep plain pointers");
  Tensor<float, Fake> y(Shape{4});
  std::vector<float> host_buf(4, 1.0f);
  const DevicePtr<const float, FakeMemory> forged(host_buf.data());
  CHECK_THROWS_WITH(kernels::scale(Fake{}, y.data(), forged, 4, 2.0f),
                    Catch::Contains("scale") && Catch::Contains("expected Fake-device memory"));
  // upload into host memory, download from host memory: refused
  std::vector<float> other(4, 0.0f);
  CHECK_THROWS_WITH(Fake{}.upload(other.data(), host_buf.data(), 16), Catch::Contains("Fake::upload"));
  CHECK_THROWS_WITH(Fake{}.download(other.data(), host_buf.data(), 16), Catch::Contains("Fake::download"));
  CHECK_NOTHROW(Fake{}.download(other.data(), raw(y.data()), 16));  // the control: a real download
  // the touched-row lists that the optimizer and zero_grad read live in the arena too
  ParameterStore<float, Fake> store(1);
  const ParamId t = store.add("t", {10, 3}, Init::zeros(), ParamKind::Table);
  store.allocate();
  store.touched(t).mark_all(std::vector<index_t>{7, 2, 7}.data(), 3);
  const auto& sets = store.touched_row_sets();
  REQUIRE(sets.size() == 1);
  CHECK(sets[0].n == 2);
  CHECK(FakeArena::instance().contains(sets[0].rows));
  std::vector<index_t> rows(2);
  Fake{}.download(rows.data(), sets[0].rows, sizeof(index_t) * 2);
  CHECK(rows == std::vector<index_t>{7, 2});
  // a list cleared by hand (not by zero_grad) and marked again is uploaded anew
  store.touched(t).clear();
  store.touched(t).mark_all(std::vector<index_t>{5}.data(), 1);
  const auto& again = store.touched_row_sets();
  REQUIRE(again[0].n == 1);
  Fake{}.download(rows.data(), again[0].rows, sizeof(index_t));
  CHECK(rows[0] == 5);
  store.zero_grad();
  CHECK(store.touched(t).rows.empty());
}

TEST_CASE("fake device: layer gradients (MLP, EmbeddingBag, TransformerEncoder) by finite differences", "[device-fake]") {
  using D = Fake;
  SECTION("MLP") {
    ParameterStore<double, D> store(3);
    MLP<double, D> mlp(store, "mlp", 5, MLPConfig{{7, 4}, Activation::GELU, 0.0, false});
    store.allocate();
    const index_t N = 3;
    const auto xv = random_vec(N * 5, 1), r = random_vec(N * 4, 2);
    auto x = device_copy<double, D>(xv, {N, 5});
    Tensor<double, D> y(Shape{N, 4}), dx(Shape{N, 5});
    typename MLP<double, D>::Context ctx;
    auto loss = [&] {
      mlp.forward(ctx, x.cview(), y.view(), Mode::eval());
      return dotv(host(y), r);
    };
    store.zero_grad();
    loss();
    auto dy = device_copy<double, D>(r, {N, 4});
    mlp.backward(ctx, dy.cview(), dx.view());
    CHECK(check_store_gradient(store, loss) == int(7 * 5 + 7 + 4 * 7 + 4));
    // input gradient
    const auto dxv = host(dx);
    for (index_t i = 0; i < N * 5; ++i) {
      auto xp = xv, xm = xv;
      xp[std::size_t(i)] += 1e-6;
      xm[std::size_t(i)] -= 1e-6;
      to_device(x.device(), x.view(), xp.data());
      const double lp = loss();
      to_device(x.device(), x.view(), xm.data());
      const double lm = loss();
      CHECK(dxv[std::size_t(i)] == Approx((lp - lm) / 2e-6).epsilon(1e-5).margin(1e-8));
    }
  }
  SECTION("EmbeddingBag (weighted mean)") {
    ParameterStore<double, D> store(4);
    EmbeddingBag<double, D> bag(store, "bag", 9, 3, BagPooling::Mean);
    store.allocate();
    Tensor<index_t> ids(Shape{5}), offsets(Shape{4});
    const index_t idv[] = {1, 4, 4, 8, 0}, offv[] = {0, 2, 2, 5};
    std::copy(idv, idv + 5, ids.data());
    std::copy(offv, offv + 4, offsets.data());
    auto w = device_copy<double, D>({0.5, 1.5, 1.0, 2.0, 0.7}, {5});
    Tensor<double, D> y(Shape{3, 3});
    typename EmbeddingBag<double, D>::Context ctx;
    const auto r = random_vec(9, 5);
    auto loss = [&] {
      bag.forward(ctx, ids.cview(), offsets.cview(), w.cview(), y.view());
      return dotv(host(y), r);
    };
    store.zero_grad();
    loss();
    auto dy = device_copy<double, D>(r, {3, 3});
    bag.backward(ctx, dy.cview());
    CHECK(check_store_gradient(store, loss) == 27);
    CHECK(store.touched(bag.table()).rows.size() == 4);
  }
  SECTION("TransformerEncoder with padding") {
    ParameterStore<double, D> store(6);
    TransformerConfig tc;
    tc.d_model = 8;
    tc.heads = 2;
    tc.ffn = 12;
    tc.dropout = 0.0;
    TransformerEncoder<double, D> enc(store, "enc", tc, 1, true);
    store.allocate();
    const index_t B = 2, Tl = 3;
    Tensor<index_t> len(Shape{B});
    len[0] = 3;
    len[1] = 1;
    auto x = device_copy<double, D>(random_vec(B * Tl * 8, 7), {B, Tl, 8});
    Tensor<double, D> y(Shape{B, Tl, 8}), dx(Shape{B, Tl, 8});
    typename TransformerEncoder<double, D>::Context ctx;
    const auto r = random_vec(B * Tl * 8, 8);
    auto loss = [&] {
      enc.forward(ctx, x.cview(), len.cview(), y.view(), Mode::eval());
      return dotv(host(y), r);
    };
    store.zero_grad();
    loss();
    auto dy = device_copy<double, D>(r, {B, Tl, 8});
    enc.backward(ctx, dy.cview(), dx.view());
    CHECK(check_store_gradient(store, loss, 1e-4, 1e-7) > 500);
  }
}

namespace {

void check_fake_model_gradient(Architecture arch) {
  MultiTaskModel<double, Fake> model(testing::tiny_config(arch));
  const ModelConfig& cfg = model.config();
  Batch<double> batch = testing::tiny_batch<double>(cfg, 6, 11);
  MultiTaskModel<double, Fake>::Workspace ws;
  const Mode mode = Mode::train(5, 2);
  std::vector<double> coeff;
  for (const auto& t : cfg.tasks) coeff.push_back(t.weight);
  auto loss = [&] {
    model.forward(ws, batch, mode);
    const TaskLosses l = model.compute_losses(ws, batch);
    double s = 0;
    for (std::size_t k = 0; k < coeff.size(); ++k) s += coeff[k] * l.value[k];
    return s;
  };
  auto& store = model.parameters();
  store.zero_grad();
  const double l0 = loss();
  model.backward(ws, batch, coeff.data());
  CHECK(check_store_gradient(store, loss) == int([&] {
          index_t n = 0;
          for (ParamId id = 0; id < store.count(); ++id) n += store.info(id).size;
          return n;
        }()));
  // The same model on Reference (host memory, the same scalar kernels): equal
  // up to the compiler's FMA contraction, which may differ per inlining site.
  MultiTaskModel<double, Reference> ref(testing::tiny_config(arch));
  MultiTaskModel<double, Reference>::Workspace rws;
  ref.forward(rws, batch, mode);
  const TaskLosses rl = ref.compute_losses(rws, batch);
  double s = 0;
  for (std::size_t k = 0; k < coeff.size(); ++k) s += coeff[k] * rl.value[k];
  CHECK(s == Approx(l0).epsilon(1e-12));
}

}  // namespace

TEST_CASE("fake device: whole-model gradients by finite differences", "[device-fake]") {
  for (Architecture a : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE, Architecture::ESMM}) {
    CAPTURE(architecture_name(a));
    check_fake_model_gradient(a);
  }
}

namespace {
ModelConfig small_regression() {
  ModelConfig c;
  c.features = mmoe_synthetic_features(8);
  c.architecture = Architecture::MMoE;
  c.tasks = {{"a", TaskType::Regression, 0, {8}}, {"b", TaskType::Regression, 0, {8}}};
  c.expert = {8};
  c.experts = 2;
  c.seed = 1;
  return c;
}
Batch<float> regression_data(index_t n) {
  SyntheticSpec s;
  s.rows = n;
  s.dim = 8;
  s.correlation = 0.8;
  s.sinusoids = 2;
  s.noise_std = 0.05;
  s.seed = 5;
  s.sample_seed = 3;
  return make_mmoe_synthetic<float>(s);
}
// Two training runs agree: every epoch's loss within 1e-5 relative and every
// parameter within 1e-4 relative (or `margin`).
void expect_same_run(const History& hf, const History& hr, const MultiTaskModel<float, Fake>& fake,
                     const MultiTaskModel<float, Reference>& ref, double margin) {
  REQUIRE(hf.epochs.size() == hr.epochs.size());
  for (std::size_t e = 0; e < hf.epochs.size(); ++e)
    CHECK(hf.epochs[e].train_loss == Approx(hr.epochs[e].train_loss).epsilon(1e-5));
  std::vector<float> a(std::size_t(fake.parameters().size())), b(a.size());
  fake.parameters().read_values(a.data(), 0, index_t(a.size()));
  ref.parameters().read_values(b.data(), 0, index_t(b.size()));
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i] == Approx(b[i]).epsilon(1e-4).margin(margin));
}

TrainConfig quiet_train(int epochs) {
  TrainConfig t;
  t.epochs = epochs;
  t.batch_size = 64;
  t.optimizer = OptimizerConfig::adam(3e-3);
  t.progress = false;
  return t;
}
}  // namespace

TEST_CASE("fake device: training converges and matches the Reference device", "[device-fake]") {
  const Batch<float> data = regression_data(384);
  MultiTaskModel<float, Fake> fake(small_regression());
  MultiTaskModel<float, Reference> ref(small_regression());
  const double before = evaluate(fake, data).loss;
  TrainConfig tc = quiet_train(10);
  tc.clip_norm = 1.0;
  Trainer<float, Fake> tf(fake, tc);
  Trainer<float, Reference> tr(ref, tc);
  const History hf = tf.fit(data), hr = tr.fit(data);
  const double after = evaluate(fake, data).loss;
  CAPTURE(before, after);
  CHECK(after < 0.7 * before);
  expect_same_run(hf, hr, fake, ref, 1e-6);
  // And close to the Cpu device (different kernels, same math).
  MultiTaskModel<float, Cpu> cpu(small_regression());
  Trainer<float, Cpu> tcpu(cpu, tc);
  const History hc = tcpu.fit(data);
  CHECK(hc.epochs.back().train_loss == Approx(hf.epochs.back().train_loss).epsilon(0.02));
}

TEST_CASE("fake device: fused table updates match the unfused Reference run", "[device-fake]") {
  const ModelConfig c = testing::tiny_ranking_config(Architecture::PLE);
  const Batch<float> data = testing::tiny_batch<float>(c, 64, 9);
  MultiTaskModel<float, Fake> fake(c);
  MultiTaskModel<float, Reference> ref(c);
  TrainConfig tc = quiet_train(3);
  tc.batch_size = 16;
  Trainer<float, Reference> tr(ref, tc);
  tc.optimizer.fused_tables = true;
  Trainer<float, Fake> tf(fake, tc);
  const History hf = tf.fit(data), hr = tr.fit(data);
  expect_same_run(hf, hr, fake, ref, 2e-6);
}

TEST_CASE("fake device: PCGrad and GradNorm read gradients through explicit copies", "[device-fake]") {
  const Batch<float> data = regression_data(256);
  for (Weighting w : {Weighting::PCGrad, Weighting::GradNorm}) {
    MultiTaskModel<float, Fake> fake(small_regression());
    MultiTaskModel<float, Reference> ref(small_regression());
    TrainConfig tc = quiet_train(2);
    tc.weighting = w;
    Trainer<float, Fake> tf(fake, tc);
    Trainer<float, Reference> tr(ref, tc);
    const History hf = tf.fit(data), hr = tr.fit(data);
    CHECK(hf.epochs.back().train_loss == Approx(hr.epochs.back().train_loss).epsilon(1e-5));
    CHECK(std::isfinite(hf.epochs.back().train_loss));
  }
}

TEST_CASE("fake device: checkpoint round trips between Fake, Reference and Cpu", "[device-fake]") {
  const ModelConfig cfg = testing::tiny_config(Architecture::PLE);
  MultiTaskModel<float, Fake> fake(cfg);
  const Batch<float> batch = testing::tiny_batch<float>(fake.config(), 9, 4);
  TrainConfig tc = quiet_train(1);
  tc.batch_size = 3;
  Trainer<float, Fake> trainer(fake, tc);
  trainer.fit(batch);
  const std::string path =
      (std::filesystem::temp_directory_path() / ("mtrec_fake_" + std::to_string(::getpid()) + ".safetensors")).string();
  save_checkpoint(path, fake, &trainer);
  auto ref = load_checkpoint<float, Reference>(path);
  auto back = load_checkpoint<float, Fake>(path);
  auto cpu = load_checkpoint<float>(path);
  Tensor<float> pf, pr, pb, pc;
  MultiTaskModel<float, Fake>::Workspace wf, wb;
  MultiTaskModel<float, Reference>::Workspace wr;
  MultiTaskModel<float>::Workspace wc;
  fake.predict(wf, batch, pf);
  ref->predict(wr, batch, pr);
  back->predict(wb, batch, pb);
  cpu->predict(wc, batch, pc);
  REQUIRE(pf.numel() == pr.numel());
  for (index_t i = 0; i < pf.numel(); ++i) {
    CHECK(pf[i] == Approx(pr[i]).epsilon(1e-6).margin(1e-7));
    CHECK(pf[i] == pb[i]);  // the same device and kernels on the same weights
    CHECK(pf[i] == Approx(pc[i]).epsilon(1e-4).margin(1e-6));
  }
  // Training state restores on the fake device too.
  Trainer<float, Fake> resumed(*back, tc);
  load_training_state(path, resumed);
  CHECK(resumed.optimizer().step_count() == trainer.optimizer().step_count());
  std::remove(path.c_str());
}

TEST_CASE("fake device: concurrent predict from several threads (counted guard)", "[device-fake]") {
  const ModelConfig cfg = testing::tiny_config(Architecture::MMoE);
  const MultiTaskModel<float, Fake> model(cfg);
  const Batch<float> batch = testing::tiny_batch<float>(model.config(), 8, 6);
  Tensor<float> expect;
  {
    MultiTaskModel<float, Fake>::Workspace ws;
    model.predict(ws, batch, expect);
  }
  const int threads = 4;
  std::vector<int> ok(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      MultiTaskModel<float, Fake>::Workspace ws;
      Tensor<float> out;
      bool same = true;
      for (int r = 0; r < 20; ++r) {
        model.predict(ws, batch, out);
        for (index_t i = 0; i < out.numel(); ++i) same = same && out[i] == expect[i];
      }
      ok[std::size_t(t)] = same;
    });
  for (auto& th : pool) th.join();
  for (int t = 0; t < threads; ++t) CHECK(ok[std::size_t(t)] == 1);
}

#ifdef MTREC_TEST_HAS_MOVIELENS
TEST_CASE("fake device: MovieLens smoke run (a slice of ml-latest-small)", "[device-fake][movielens]") {
  std::string found;
  // ../shared/data/movielens beside the project root (from the root, or through tests/fixtures).
  for (const std::string d : {std::string("../shared/data/movielens"),
                              std::string(MTREC_FIXTURE_DIR) + "/../../../shared/data/movielens"})
    if (std::filesystem::exists(d + "/ratings.csv")) found = d;
  if (found.empty()) {
    WARN("MovieLens data not found; skipped");
    return;
  }
  const std::string dirs = found + "/";
  const auto movies = movielens::read_movies(dirs + "movies.csv");
  auto ratings = movielens::read_ratings(dirs + "ratings.csv");
  ratings.resize(std::min<std::size_t>(ratings.size(), 8000));  // the first users' ratings: a smoke run
  movielens::FeatureOptions fo;
  fo.history_len = 8;
  fo.title_len = 6;
  const auto features = movielens::MovieLensFeatures::build(movies, ratings, fo);
  const auto d = movielens::make_datasets<float>(features, movielens::split_by_time(ratings));
  movielens::ModelShape shape;
  shape.user_dim = 8;
  shape.genre_dim = 4;
  TransformerConfig enc;
  enc.d_model = 8;
  enc.heads = 2;
  enc.ffn = 16;
  shape.title = enc;
  shape.history = enc;
  ModelConfig mc;
  mc.features = features.spec(shape);
  mc.tasks = {{"rating", TaskType::Regression, 0, {16}}, {"like", TaskType::Binary, 0, {16}}};
  mc.architecture = Architecture::MMoE;
  mc.experts = 2;
  mc.expert = {16};
  mc.seed = 1;
  MultiTaskModel<float, Fake> model(mc);
  TrainConfig tc = quiet_train(1);
  tc.batch_size = 256;
  Trainer<float, Fake> trainer(model, tc);
  const double before = evaluate(model, d.valid).loss;
  trainer.fit(d.train);
  const Evaluation ev = evaluate(model, d.valid);
  CAPTURE(before, ev.loss);
  CHECK(std::isfinite(ev.loss));
  CHECK(ev.loss < before);
}
#endif
