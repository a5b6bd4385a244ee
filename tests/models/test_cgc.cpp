// CgcLevels (model/cgc.hpp), the expert trunk of MMoE and PLE, on its own:
// backward against central finite differences in double (parameters and the
// input), a one-level MMoE against the gate formula computed here, and the
// Fake device against Reference.
#include "models/model_fixtures.hpp"

using namespace mtrec;

namespace {

const std::vector<std::string> kTasks = {"a", "b", "c"};

MLPConfig expert_config(double dropout) { return MLPConfig{{5, 4}, Activation::GELU, dropout, true}; }

// L = sum_k <out_k, R_k> over the tasks whose weight is not zero; checks
// every parameter and dx against finite differences.
void check_cgc_gradient(int L, index_t Et, index_t Es, std::vector<bool> active) {
  ParameterStore<double> store(7);
  CgcLevels<double> cgc(store, 6, kTasks, L, Et, Es, expert_config(0.2));
  store.allocate();
  testing::randomise_parameters(store, 31);
  const index_t B = 5, in = 6, De = cgc.out_features(), K = index_t(kTasks.size());
  REQUIRE(De == 4);
  Tensor<double> x({B, in}), dx({B, in});
  testing::fill_uniform(x, 3);
  std::vector<Tensor<double>> R;
  for (index_t k = 0; k < K; ++k) {
    R.emplace_back(Shape{B, De});
    testing::fill_uniform(R.back(), 100 + std::uint64_t(k));
  }
  CgcLevels<double>::Workspace ws;
  const Mode mode = Mode::train(2, 5);  // expert dropout on, fixed masks
  auto loss = [&] {
    cgc.forward(ws, x.cview(), mode);
    double s = 0;
    for (index_t k = 0; k < K; ++k)
      if (active[std::size_t(k)]) s += testing::dot(cgc.output(ws, std::size_t(k)).data, R[std::size_t(k)].data(), B * De);
    return s;
  };
  store.zero_grad();
  loss();
  std::vector<const double*> d_out;
  for (index_t k = 0; k < K; ++k) d_out.push_back(active[std::size_t(k)] ? R[std::size_t(k)].data() : nullptr);
  cgc.backward(ws, d_out.data(), dx.view());
  const double* analytic = store.grads();  // the finite differences below run forward only
  int elements = 0;
  for (ParamId id = 0; id < store.count(); ++id) elements += int(store.info(id).size);
  CHECK(testing::check_parameter_gradients(store, loss, 1e-6, 1e-8) == elements);
  const std::vector<double> dx_analytic(dx.data(), dx.data() + dx.numel());
  CHECK(testing::check_gradient("dx", x.data(), x.numel(), dx_analytic.data(), loss, 1e-6, 1e-6, 1e-8).checked ==
        int(x.numel()));
  // A task left out contributes nothing: its own gate and experts get no gradient.
  for (ParamId id = 0; id < store.count(); ++id) {
    const std::string& n = store.info(id).name;
    double norm = 0;
    for (index_t i = 0; i < store.info(id).size; ++i) norm += std::fabs(analytic[store.info(id).offset + i]);
    bool owned_by_inactive = false;
    for (index_t k = 0; k < K; ++k)
      if (!active[std::size_t(k)] && n.rfind("level" + std::to_string(L - 1) + ".gate." + kTasks[std::size_t(k)] + ".", 0) == 0)
        owned_by_inactive = true;
    INFO(n);
    if (owned_by_inactive)
      CHECK(norm == 0.0);
    else
      CHECK(norm > 0.0);
  }
}

}  // namespace

TEST_CASE("cgc levels: PLE (2 levels, task and shared experts) against finite differences", "[gradient][model]") {
  check_cgc_gradient(2, 1, 2, {true, true, true});
}

TEST_CASE("cgc levels: MMoE (1 level, shared experts) against finite differences, one task inactive", "[gradient][model]") {
  check_cgc_gradient(1, 0, 3, {true, false, true});
}

TEST_CASE("cgc levels: a one-level MMoE is softmax(x W^T + b) mixing the experts", "[model]") {
  ParameterStore<double> store(7);
  CgcLevels<double> cgc(store, 6, kTasks, 1, 0, 2, expert_config(0.0));
  store.allocate();
  testing::randomise_parameters(store, 9);
  const index_t B = 3, in = 6, De = 4;
  Tensor<double> x({B, in});
  testing::fill_uniform(x, 4);
  CgcLevels<double>::Workspace ws;
  cgc.forward(ws, x.cview(), Mode::eval());
  // The experts, run as the MLPs they are, and each gate computed here.
  std::vector<Tensor<double>> e;
  for (int j = 0; j < 2; ++j) {
    ParameterStore<double> one(1);
    MLP<double> mlp(one, "level0.shared_expert." + std::to_string(j), in, expert_config(0.0));
    one.allocate();
    for (ParamId id = 0; id < one.count(); ++id) {
      const ParamId src = store.find(one.info(id).name);
      std::copy(store.value(src), store.value(src) + one.info(id).size, one.value(id));
    }
    typename MLP<double>::Context ctx;
    e.emplace_back(Shape{B, De});
    mlp.forward(ctx, x.cview(), e.back().view(), Mode::eval());
  }
  for (std::size_t k = 0; k < kTasks.size(); ++k) {
    const double* W = store.value(store.find("level0.gate." + kTasks[k] + ".weight"));  // (2, in)
    const double* b = store.value(store.find("level0.gate." + kTasks[k] + ".bias"));
    const double* out = cgc.output(ws, k).data;
    for (index_t r = 0; r < B; ++r) {
      double z[2];
      for (int m = 0; m < 2; ++m) {
        z[m] = b[m];
        for (index_t i = 0; i < in; ++i) z[m] += W[m * in + i] * x[r * in + i];
      }
      const double mx = std::max(z[0], z[1]), p0 = std::exp(z[0] - mx), p1 = std::exp(z[1] - mx);
      for (index_t j = 0; j < De; ++j) {
        const double want = (p0 * e[0][r * De + j] + p1 * e[1][r * De + j]) / (p0 + p1);
        CHECK(out[r * De + j] == Approx(want).epsilon(1e-12).margin(1e-12));
      }
    }
  }
  testing::require_error([&] { cgc.forward(ws, Tensor<double>({B, in + 1}).cview(), Mode::eval()); },
                         {"CgcLevels::forward", "x"});
}

TEST_CASE("fake device: cgc levels match Reference", "[device-fake]") {
  ParameterStore<float, Reference> rs(7);
  ParameterStore<float, Fake> fs(7);
  CgcLevels<float, Reference> rc(rs, 6, kTasks, 2, 1, 2, expert_config(0.2));
  CgcLevels<float, Fake> fc(fs, 6, kTasks, 2, 1, 2, expert_config(0.2));
  rs.allocate();
  fs.allocate();
  testing::fill_uniform(rs.values(), rs.size(), 12, -0.5, 0.5);
  fs.write_values(0, rs.values(), rs.size());
  const index_t B = 4, in = 6, De = 4;
  Tensor<float, Reference> x({B, in}), dx({B, in}), R({B, De});
  testing::fill_uniform(x.data(), x.numel(), 1);
  testing::fill_uniform(R.data(), R.numel(), 2);
  Tensor<float, Fake> xf({B, in}), dxf({B, in}), Rf({B, De});
  fs.device().upload(raw(xf.data()), x.data(), x.bytes());
  fs.device().upload(raw(Rf.data()), R.data(), R.bytes());
  CgcLevels<float, Reference>::Workspace wr;
  CgcLevels<float, Fake>::Workspace wf;
  const Mode mode = Mode::train(1, 3);
  rs.zero_grad();
  fs.zero_grad();
  rc.forward(wr, x.cview(), mode);
  fc.forward(wf, xf.cview(), mode);
  const float* dr[3] = {R.data(), nullptr, R.data()};
  DevicePtr<const float, FakeMemory> df[3] = {Rf.cview().data, nullptr, Rf.cview().data};
  rc.backward(wr, dr, dx.view());
  fc.backward(wf, df, dxf.view());
  std::vector<float> out(std::size_t(B * De)), d(std::size_t(B * in)), g(std::size_t(fs.size()));
  to_host(fs.device(), out.data(), fc.output(wf, 2));
  for (index_t i = 0; i < B * De; ++i) CHECK(out[std::size_t(i)] == Approx(rc.output(wr, 2).data[i]).margin(1e-6));
  to_host(fs.device(), d.data(), dxf.cview());
  for (index_t i = 0; i < B * in; ++i) CHECK(d[std::size_t(i)] == Approx(dx[i]).margin(1e-6));
  fs.read_grads(g.data(), 0, fs.size());
  double max_err = 0;
  for (index_t i = 0; i < rs.size(); ++i) max_err = std::max(max_err, std::fabs(double(g[std::size_t(i)]) - rs.grads()[i]));
  CHECK(max_err < 1e-5);
}
