// Whole-model backward against central finite differences, for every
// architecture, on a tiny configuration with every feature kind.
#include "models/model_fixtures.hpp"

using namespace mtrec;

namespace {

void check_model_gradient(const ModelConfig& config, index_t B, bool grouped) {
  MultiTaskModel<double> model(config);
  const ModelConfig& cfg = model.config();  // retrieval tasks' target shapes filled in
  Batch<double> batch = testing::tiny_batch<double>(cfg, B, 11);
  if (grouped)
    for (index_t i = 0; i < B; ++i) batch.groups.push_back(i % 3);
  MultiTaskModel<double>::Workspace ws;
  const Mode mode = Mode::train(5, 2);  // dropout on, fixed masks
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
  loss();
  model.backward(ws, batch, coeff.data());
  std::vector<double> analytic(store.grads(), store.grads() + store.size());
  int checked = 0;
  for (ParamId id = 0; id < store.count(); ++id) {
    const auto& info = store.info(id);
    checked += testing::check_gradient(info.name, store.value(id), info.size, analytic.data() + info.offset, loss, 1e-6,
                                       1e-5, 1e-8)
                   .checked;
  }
  CHECK(checked == [&] {
    int n = 0;
    for (ParamId id = 0; id < store.count(); ++id) n += int(store.info(id).size);
    return n;
  }());
  double norm = 0;
  for (double g : analytic) norm += g * g;
  CHECK(norm > 0);
}

void check_model_gradient(Architecture arch) { check_model_gradient(testing::tiny_config(arch), 7, false); }

}  // namespace

TEST_CASE("gradient: whole model, single-task", "[gradient][model]") { check_model_gradient(Architecture::SingleTask); }
TEST_CASE("gradient: whole model, shared-bottom", "[gradient][model]") { check_model_gradient(Architecture::SharedBottom); }
TEST_CASE("gradient: whole model, MMoE", "[gradient][model]") { check_model_gradient(Architecture::MMoE); }
TEST_CASE("gradient: whole model, PLE (2 levels)", "[gradient][model]") { check_model_gradient(Architecture::PLE); }
TEST_CASE("gradient: whole model, ESMM", "[gradient][model]") { check_model_gradient(Architecture::ESMM); }

// BPR over in-group pairs, and two retrieval tasks: one scoring against the
// movie table the features also read (item-item), one against its own table.
TEST_CASE("gradient: whole model, BPR and in-batch sampled-softmax retrieval tasks", "[gradient][model]") {
  const ModelConfig c = testing::tiny_ranking_config(Architecture::MMoE);
  SECTION("pairs within groups") { check_model_gradient(c, 11, true); }
  SECTION("pairs over the whole batch") { check_model_gradient(c, 9, false); }
}
