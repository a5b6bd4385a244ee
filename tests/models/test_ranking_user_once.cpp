// Ranking with the user encoded once (MultiTaskModel::predict_ranking, and
// Linear::forward_split under it) against the plain batched predict over the
// same N rows: each row holds the user's user-side fields and the
// candidate's item-side fields. Every architecture, every feature kind on
// both sides, on the cpu and the scalar reference devices.
#include "models/model_fixtures.hpp"

#include <cmath>
#include <set>
#include <string>

using namespace mtrec;

namespace {

// Which fields describe the item: the movie and its hashed city, the genres
// bag, the title text and one dense value; the user, the history sequence
// and age describe the user.
ModelConfig split_config(Architecture arch) {
  ModelConfig c = testing::tiny_config(arch);
  const std::set<std::string> item = {"movie", "city", "genres", "title", "stats"};
  for (auto& x : c.features.ids) x.item_side = item.count(x.name) > 0;
  for (auto& x : c.features.bags) x.item_side = item.count(x.name) > 0;
  for (auto& x : c.features.sequences) x.item_side = item.count(x.name) > 0;
  for (auto& x : c.features.dense) x.item_side = item.count(x.name) > 0;
  return c;
}

// The candidates with every user-side field replaced by the user's row.
template <class T>
Batch<T> merged(const ModelConfig& c, const Batch<T>& user, const Batch<T>& cand) {
  Batch<T> b = cand;
  const std::size_t N = std::size_t(cand.size);
  for (std::size_t f = 0; f < c.features.ids.size(); ++f)
    if (!c.features.ids[f].item_side) b.ids[f].assign(N, user.ids[f][0]);
  for (std::size_t f = 0; f < c.features.bags.size(); ++f)
    if (!c.features.bags[f].item_side) {
      auto& o = b.bags[f];
      const auto& u = user.bags[f];
      o.ids.clear();
      o.weights.clear();
      o.offsets.assign(1, 0);
      for (std::size_t i = 0; i < N; ++i) {
        o.ids.insert(o.ids.end(), u.ids.begin(), u.ids.end());
        o.weights.insert(o.weights.end(), u.weights.begin(), u.weights.end());
        o.offsets.push_back(index_t(o.ids.size()));
      }
    }
  for (std::size_t f = 0; f < c.features.sequences.size(); ++f)
    if (!c.features.sequences[f].item_side) {
      auto& o = b.sequences[f];
      const auto& u = user.sequences[f];
      o.ids.clear();
      o.lengths.assign(N, u.lengths[0]);
      for (std::size_t i = 0; i < N; ++i) o.ids.insert(o.ids.end(), u.ids.begin(), u.ids.end());
    }
  for (std::size_t f = 0; f < c.features.dense.size(); ++f)
    if (!c.features.dense[f].item_side) {
      auto& o = b.dense[f];
      const std::size_t d = std::size_t(c.features.dense[f].dim);
      o.clear();
      for (std::size_t i = 0; i < N; ++i) o.insert(o.end(), user.dense[f].begin(), user.dense[f].begin() + d);
    }
  return b;
}

template <class T, class Device>
void check_architecture(Architecture arch, double tol) {
  INFO("architecture " << architecture_name(arch));
  const ModelConfig c = split_config(arch);
  MultiTaskModel<T, Device> model(c);
  for (std::uint64_t seed : {5u, 9u}) {
    // A user with a non-empty history (row 3 of tiny_batch has length 3).
    const Batch<T> users = testing::tiny_batch<T>(c, 4, seed);
    const index_t pick = 3;
    Batch<T> user;
    user.gather(users, &pick, 1);
    const Batch<T> cand = testing::tiny_batch<T>(c, 11, seed + 100);
    typename MultiTaskModel<T, Device>::Workspace ws;
    typename MultiTaskModel<T, Device>::RankingWorkspace rw;
    Tensor<T> want, got;
    model.predict(ws, merged(c, user, cand), want);
    model.predict_ranking(rw, user, cand, got);
    REQUIRE(got.numel() == want.numel());
    REQUIRE(got.dim(0) == cand.size);
    double worst = 0;
    for (index_t i = 0; i < want.numel(); ++i) {
      const double a = double(got.data()[i]), b = double(want.data()[i]);
      worst = std::max(worst, std::fabs(a - b) / std::max(1.0, std::fabs(b)));
    }
    CHECK(worst <= tol);
    // The same workspace again (warm), with other candidates.
    const Batch<T> cand2 = testing::tiny_batch<T>(c, 5, seed + 200);
    model.predict(ws, merged(c, user, cand2), want);
    model.predict_ranking(rw, user, cand2, got);
    REQUIRE(got.numel() == want.numel());
    for (index_t i = 0; i < want.numel(); ++i)
      CHECK(std::fabs(double(got.data()[i]) - double(want.data()[i])) <= tol * std::max(1.0, std::fabs(double(want.data()[i]))));
  }
}

}  // namespace

TEST_CASE("ranking with the user once equals the batched predict over the merged rows (cpu, float, 1e-5)",
          "[ranking][serving]") {
  for (Architecture a : {Architecture::SingleTask, Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE,
                         Architecture::ESMM})
    check_architecture<float, Cpu>(a, 1e-5);
}

TEST_CASE("ranking with the user once equals the batched predict (reference device, double, 1e-12)",
          "[ranking][serving]") {
  for (Architecture a : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE, Architecture::ESMM})
    check_architecture<double, Reference>(a, 1e-12);
}

TEST_CASE("ranking with the user once: no item-side field, or only item-side fields", "[ranking][serving]") {
  for (bool all_item : {false, true}) {
    ModelConfig c = testing::tiny_config(Architecture::MMoE);
    for (auto& x : c.features.ids) x.item_side = all_item;
    for (auto& x : c.features.bags) x.item_side = all_item;
    for (auto& x : c.features.sequences) x.item_side = all_item;
    for (auto& x : c.features.dense) x.item_side = all_item;
    MultiTaskModel<float> model(c);
    const Batch<float> users = testing::tiny_batch<float>(c, 4, 1);
    const index_t pick = 2;
    Batch<float> user;
    user.gather(users, &pick, 1);
    const Batch<float> cand = testing::tiny_batch<float>(c, 6, 2);
    MultiTaskModel<float>::Workspace ws;
    MultiTaskModel<float>::RankingWorkspace rw;
    Tensor<float> want, got;
    model.predict(ws, merged(c, user, cand), want);
    model.predict_ranking(rw, user, cand, got);
    REQUIRE(got.numel() == want.numel());
    for (index_t i = 0; i < want.numel(); ++i) CHECK(std::fabs(got.data()[i] - want.data()[i]) <= 1e-5f);
  }
  // A user batch of two rows is refused.
  const ModelConfig c = split_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  MultiTaskModel<float>::RankingWorkspace rw;
  Tensor<float> out;
  testing::require_error(
      [&] { model.predict_ranking(rw, testing::tiny_batch<float>(c, 2, 1), testing::tiny_batch<float>(c, 3, 2), out); },
      {"predict_ranking", "one-row user batch", "2 rows"});
}
