// Checkpoints: bit-exact round trips, bit-exact resume, corrupt files.
#include "models/model_fixtures.hpp"

#include <cstdio>
#include <fstream>
#include <iterator>

using namespace mtrec;

namespace {
std::string temp_path(const std::string& name) { return "/tmp/mtrec_test_" + std::to_string(::getpid()) + "_" + name; }

std::vector<std::uint8_t> read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const std::string& p, const std::vector<std::uint8_t>& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
}  // namespace

TEST_CASE("checkpoint: a round trip rebuilds the model and reproduces predictions bit for bit", "[checkpoint]") {
  for (Architecture a : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE, Architecture::ESMM}) {
    const ModelConfig c = testing::tiny_config(a);
    MultiTaskModel<float> model(c);
    testing::randomise_parameters(model.parameters(), 4, 0.3);
    const Batch<float> b = testing::tiny_batch<float>(c, 12, 6);
    const std::string path = temp_path(std::string(architecture_name(a)) + ".safetensors");
    save_checkpoint(path, model);
    auto loaded = load_checkpoint<float>(path);
    // The configuration came back from the metadata alone.
    CHECK(config_to_json(loaded->config()) == config_to_json(c));
    MultiTaskModel<float>::Workspace w1, w2;
    Tensor<float> p1, p2;
    model.predict(w1, b, p1);
    loaded->predict(w2, b, p2);
    REQUIRE(p1.shape() == p2.shape());
    CHECK(testing::bitwise_equal(p1.data(), p2.data(), p1.numel()));
    std::remove(path.c_str());
  }
}

TEST_CASE("checkpoint: resumed training matches uninterrupted training bit for bit", "[checkpoint][training]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  const Batch<float> data = testing::tiny_batch<float>(c, 80, 12);
  auto config = [](int epochs) {
    TrainConfig t;
    t.epochs = epochs;
    t.batch_size = 16;
    t.optimizer = OptimizerConfig::adamw(5e-3, 0.01);
    t.weighting = Weighting::Uncertainty;
    t.clip_norm = 1.0;
    t.progress = false;
    t.seed = 21;
    return t;
  };
  MultiTaskModel<float> straight(c);
  Trainer<float> t1(straight, config(3));
  t1.fit(data);

  MultiTaskModel<float> first(c);
  Trainer<float> t2(first, config(1));
  t2.fit(data);
  const std::string path = temp_path("resume.safetensors");
  save_checkpoint(path, first, &t2);
  auto resumed = load_checkpoint<float>(path);
  Trainer<float> t3(*resumed, config(3));
  load_training_state(path, t3);
  CHECK(t3.state().epoch == 1);
  t3.fit(data);
  const auto& a = straight.parameters();
  const auto& b = resumed->parameters();
  REQUIRE(a.size() == b.size());
  CHECK(testing::bitwise_equal(a.values(), b.values(), a.size()));
  CHECK(t1.state().log_var == t3.state().log_var);
  std::remove(path.c_str());
}

TEST_CASE("bad input: truncated and corrupted checkpoints give errors, not crashes", "[checkpoint][bad-input]") {
  const ModelConfig c = testing::tiny_config(Architecture::SharedBottom);
  MultiTaskModel<float> model(c);
  const std::string path = temp_path("corrupt.safetensors");
  save_checkpoint(path, model);
  const auto good = read_bytes(path);
  const std::string bad = temp_path("bad.safetensors");
  for (std::size_t cut : {std::size_t(0), std::size_t(7), std::size_t(12), good.size() / 2, good.size() - 1}) {
    write_bytes(bad, std::vector<std::uint8_t>(good.begin(), good.begin() + std::ptrdiff_t(cut)));
    CAPTURE(cut);
    CHECK_THROWS_AS(load_checkpoint<float>(bad), Error);
  }
  // Garbage inside the JSON header.
  auto flipped = good;
  flipped[20] = '{';
  write_bytes(bad, flipped);
  CHECK_THROWS_AS(load_checkpoint<float>(bad), Error);
  // A config whose tensor shapes no longer match the file.
  {
    ModelConfig other = c;
    other.features.ids[0].dim = 5;
    MultiTaskModel<float> m2(other);
    save_checkpoint(bad, m2);
    const SafetensorsFile f = SafetensorsFile::load(bad);
    testing::require_error([&] { load_parameters(model, f); }, {"load_checkpoint", "'emb.user'", "(7, 3)"});
  }
  // Not an mtrec checkpoint.
  save_safetensors(bad, {}, {{"format", "other"}});
  testing::require_error([&] { load_checkpoint<float>(bad); }, {"format = mtrec.checkpoint", "'other'"});
  testing::require_error([&] { load_checkpoint<float>(temp_path("missing.safetensors")); }, {"missing.safetensors"});
  std::remove(path.c_str());
  std::remove(bad.c_str());
}
