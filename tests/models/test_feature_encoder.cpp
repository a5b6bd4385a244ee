// The feature encoder (model/feature_encoder.hpp) on its own: its backward
// against central finite differences in double, its columns against the
// tables read directly, and on the Fake device: the same X and gradients as
// Reference, with the whole batch uploaded in one copy.
#include "models/model_fixtures.hpp"

using namespace mtrec;

namespace {

// The tiny configuration's fields: three ID fields (one hashed), a weighted
// mean bag, two sequences (one sharing the movie table), two dense fields.
struct EncoderSetup {
  ModelConfig cfg = testing::tiny_config(Architecture::SharedBottom);
  std::vector<TableSpec> tables = validate_config(cfg);
  Init init = Init::normal(0.0, 0.3);
};

template <class T, class D>
FeatureEncoder<T, D> make_encoder(ParameterStore<T, D>& store, const EncoderSetup& s) {
  FeatureEncoder<T, D> enc(store, s.cfg.features, s.tables, s.init);
  store.allocate();
  return enc;
}

}  // namespace

TEST_CASE("feature encoder: backward against finite differences (every field kind)", "[gradient][model]") {
  EncoderSetup s;
  ParameterStore<double> store(5);
  FeatureEncoder<double> enc = make_encoder(store, s);
  testing::randomise_parameters(store, 17);
  const index_t B = 6, F = enc.width();
  CHECK(F == 3 + 4 + 2 + 3 + 4 + 4 + 1 + 2);
  Batch<double> batch = testing::tiny_batch<double>(s.cfg, B, 11);
  Tensor<double> X({B, F}), R({B, F});
  testing::fill_uniform(R, 23);
  FeatureEncoder<double>::Workspace ws;
  const Mode mode = Mode::train(3, 9);  // the encoders' dropout on, fixed masks
  enc.prepare(ws, batch);
  auto loss = [&] {
    enc.forward(ws, X.view(), mode);
    return testing::dot(X.data(), R.data(), X.numel());
  };
  store.zero_grad();
  loss();
  enc.backward(ws, R.cview());
  const double* analytic = store.grads();  // the finite differences below run forward only
  int elements = 0;
  for (ParamId id = 0; id < store.count(); ++id) elements += int(store.info(id).size);
  CHECK(testing::check_parameter_gradients(store, loss, 1e-6, 1e-8) == elements);
  // Every table and encoder parameter got a gradient.
  for (ParamId id = 0; id < store.count(); ++id) {
    double norm = 0;
    for (index_t i = 0; i < store.info(id).size; ++i) {
      const double gi = analytic[store.info(id).offset + i];
      norm += gi * gi;
    }
    INFO(store.info(id).name);
    CHECK(norm > 0);
  }
}

TEST_CASE("feature encoder: X holds the fields in declaration order", "[model]") {
  EncoderSetup s;
  ParameterStore<double> store(5);
  FeatureEncoder<double> enc = make_encoder(store, s);
  testing::randomise_parameters(store, 4);
  const index_t B = 5, F = enc.width();
  Batch<double> batch = testing::tiny_batch<double>(s.cfg, B, 2);
  Tensor<double> X({B, F});
  FeatureEncoder<double>::Workspace ws;
  enc.prepare(ws, batch);
  enc.forward(ws, X.view(), Mode::eval());
  // The tables, read directly (the store's names are "emb.<table>").
  auto row = [&](const std::string& table, index_t r, index_t j) {
    const ParamId id = store.find("emb." + table);
    return store.value(id)[r * store.info(id).shape[1] + j];
  };
  const FeatureSpec& f = s.cfg.features;
  for (index_t b = 0; b < B; ++b) {
    index_t col = 0;
    for (std::size_t i = 0; i < f.ids.size(); ++i) {
      const auto& x = f.ids[i];
      const index_t raw = batch.ids[i][std::size_t(b)];
      const index_t r = x.hash_buckets > 0 ? hash_bucket(std::uint64_t(raw), x.hash_buckets, hash_name(x.name)) : raw;
      for (index_t j = 0; j < x.dim; ++j) CHECK(X[b * F + col + j] == row(x.name, r, j));
      col += x.dim;
    }
    {  // genres: weighted mean = sum(w_i * row_i) / bag length (zero when empty)
      const auto& bag = batch.bags[0];
      const index_t lo = bag.offsets[std::size_t(b)], hi = bag.offsets[std::size_t(b) + 1];
      for (index_t j = 0; j < 3; ++j) {
        double sum = 0;
        for (index_t k = lo; k < hi; ++k) sum += bag.weights[std::size_t(k)] * row("genres", bag.ids[std::size_t(k)], j);
        const double want = hi > lo ? sum / double(hi - lo) : 0.0;
        CHECK(X[b * F + col + j] == Approx(want).margin(1e-12));
      }
      col += 3;
    }
    for (std::size_t i = 0; i < f.sequences.size(); ++i) {
      const index_t D = f.sequences[i].encoder.d_model;
      if (batch.sequences[i].lengths[std::size_t(b)] == 0)  // an empty sequence pools to zero
        for (index_t j = 0; j < D; ++j) CHECK(X[b * F + col + j] == 0.0);
      col += D;
    }
    for (std::size_t i = 0; i < f.dense.size(); ++i) {
      for (index_t j = 0; j < f.dense[i].dim; ++j)
        CHECK(X[b * F + col + j] == batch.dense[i][std::size_t(b * f.dense[i].dim + j)]);
      col += f.dense[i].dim;
    }
    CHECK(col == F);
  }
  // forward without prepare, and a malformed batch, are refused by name
  FeatureEncoder<double>::Workspace fresh;
  testing::require_error([&] { enc.forward(fresh, X.view(), Mode::eval()); }, {"FeatureEncoder::forward", "prepare"});
  batch.dense[1].pop_back();
  testing::require_error([&] { enc.prepare(ws, batch); }, {"FeatureEncoder::prepare", "dense field 'stats'", "expected 10"});
}

TEST_CASE("fake device: the feature encoder uploads a batch in one copy and matches Reference", "[device-fake]") {
  EncoderSetup s;
  ParameterStore<float, Reference> rs(5);
  ParameterStore<float, Fake> fs(5);
  FeatureEncoder<float, Reference> re = make_encoder(rs, s);
  FeatureEncoder<float, Fake> fe = make_encoder(fs, s);
  testing::fill_uniform(rs.values(), rs.size(), 8, -0.5, 0.5);
  fs.write_values(0, rs.values(), rs.size());
  const index_t B = 7, F = re.width();
  Batch<float> batch = testing::tiny_batch<float>(s.cfg, B, 5);
  Tensor<float, Reference> Xr({B, F}), R({B, F});
  testing::fill_uniform(R.data(), R.numel(), 3);
  Tensor<float, Fake> Xf({B, F}), Rf({B, F});
  fs.device().upload(raw(Rf.data()), R.data(), R.bytes());
  FeatureEncoder<float, Reference>::Workspace wr;
  FeatureEncoder<float, Fake>::Workspace wf;
  const Mode mode = Mode::train(1, 2);
  rs.zero_grad();
  fs.zero_grad();
  for (int step = 0; step < 2; ++step) {  // the second batch reuses the staging buffers
    re.prepare(wr, batch);
    re.forward(wr, Xr.view(), mode);
    re.backward(wr, R.cview());
    const std::uint64_t before = FakeArena::instance().uploads();
    fe.prepare(wf, batch);
    fe.forward(wf, Xf.view(), mode);
    fe.backward(wf, Rf.cview());
    CHECK(FakeArena::instance().uploads() - before == 1);  // prepare's one copy; forward and backward upload nothing
    CHECK(wf.staged.uploads() == std::uint64_t(step + 1));
    CHECK(wf.staged.arrays() == 3 + 3 + 2 * 3 + 2);  // ID rows; bag rows, offsets, weights; lengths, IDs, starts; dense
  }
  CHECK(wr.staged.uploads() == 0);  // a host device copies nothing
  std::vector<float> x(std::size_t(B * F)), g(std::size_t(fs.size()));
  to_host(fs.device(), x.data(), Xf.cview());
  for (index_t i = 0; i < B * F; ++i) CHECK(x[std::size_t(i)] == Approx(Xr[i]).margin(1e-6));
  fs.read_grads(g.data(), 0, fs.size());
  double max_err = 0;
  for (index_t i = 0; i < rs.size(); ++i) max_err = std::max(max_err, std::fabs(double(g[std::size_t(i)]) - rs.grads()[i]));
  CHECK(max_err < 1e-5);
}

TEST_CASE("fake device: a training step uploads the features in one copy and the labels in one copy", "[device-fake]") {
  // forward: the features (prepare); compute_losses: the labels, masks,
  // weights, class ids, BPR pairs and retrieval rows; backward: nothing.
  for (const ModelConfig& cfg : {testing::tiny_config(Architecture::PLE), testing::tiny_config(Architecture::ESMM),
                                 testing::tiny_ranking_config(Architecture::MMoE)}) {
    MultiTaskModel<float, Fake> model(cfg);
    Batch<float> batch = testing::tiny_batch<float>(model.config(), 6, 3);
    for (index_t i = 0; i < batch.size; ++i) batch.groups.push_back(i % 2);
    batch.weights.assign(std::size_t(batch.size), 0.5f);
    MultiTaskModel<float, Fake>::Workspace ws;
    std::vector<double> coeff(model.num_tasks(), 1.0);
    for (int step = 0; step < 2; ++step) {
      std::uint64_t before = FakeArena::instance().uploads();
      model.forward(ws, batch, Mode::train(std::uint64_t(step), 1));
      CHECK(FakeArena::instance().uploads() - before == 1);
      before = FakeArena::instance().uploads();
      model.compute_losses(ws, batch);
      CHECK(FakeArena::instance().uploads() - before == 1);
      before = FakeArena::instance().uploads();
      model.backward(ws, batch, coeff.data());
      CHECK(FakeArena::instance().uploads() - before == 0);
    }
  }
}
