// Untrusted checkpoints: a damaged or hostile file is an mtrec::Error naming
// the file, the key and the value, and the memory it can make the loader
// allocate is bounded by the tensors it holds.
#include "models/model_fixtures.hpp"

#include <cstdio>
#include <sys/resource.h>
#include <unistd.h>

using namespace mtrec;

namespace {

std::string untrusted_temp_path(const std::string& name) { return "/tmp/mtrec_untrusted_" + std::to_string(::getpid()) + "_" + name; }

// Peak resident memory of this process so far, in MB.
double peak_rss_mb() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}

// Rewrites `src` into `dst` with the metadata entry `key` edited by `edit`
// (the tensors are copied unchanged).
template <class Edit>
void rewrite_metadata(const std::string& src, const std::string& dst, const std::string& key, Edit edit) {
  const SafetensorsFile f = SafetensorsFile::load(src);
  std::vector<std::vector<float>> data;
  std::vector<TensorRecord> records;
  for (const auto& t : f.tensors()) data.push_back(f.read_vector<float>(t.name));
  std::size_t i = 0;
  for (const auto& t : f.tensors()) records.push_back(TensorRecord::of(t.name, data[i++].data(), t.shape));
  std::map<std::string, std::string> meta = f.metadata();
  meta[key] = edit(meta.at(key));
  save_safetensors(dst, records, meta);
}

// The config JSON with `path` (a.b[i].c) set to the raw JSON text `value`.
std::string set_config(const std::string& text, const std::vector<std::string>& path, const std::string& value) {
  json::Value j = json::parse(text);
  json::Value* v = &j;
  for (std::size_t i = 0; i + 1 < path.size(); ++i) {
    const std::string& p = path[i];
    if (!p.empty() && p[0] == '#')
      v = &v->at(std::size_t(std::stoul(p.substr(1))));
    else
      v = &v->at(p);
  }
  v->set(path.back(), json::parse(value));
  return j.dump();
}

}  // namespace

TEST_CASE("untrusted checkpoint: huge sizes in the config fail fast, naming the file and the key, within bounded memory",
          "[checkpoint][bad-input][untrusted]") {
  const ModelConfig c = testing::tiny_config(Architecture::MMoE);
  MultiTaskModel<float> model(c);
  const std::string good = untrusted_temp_path("good.safetensors"), bad = untrusted_temp_path("bad.safetensors");
  save_checkpoint(good, model);
  struct Case {
    std::vector<std::string> path;
    std::string value;
    std::vector<const char*> words;
  };
  const std::vector<Case> cases = {
      // A 12 KB file asking for a 1e9-row table, 1e9 classes, a 1e9-long sequence: each would need GBs.
      {{"features", "ids", "#0", "vocab"}, "1000000000", {"does not match the file's tensors", "emb.user"}},
      {{"tasks", "#2", "num_classes"}, "1000000000", {"tasks[2].num_classes", "1000000000", "[0, 16777216]"}},
      {{"tasks", "#2", "num_classes"}, "16000000", {"does not match the file's tensors", "tower.genre"}},
      {{"features", "sequences", "#0", "max_len"}, "1000000000", {"features.sequences[0].max_len", "[1, 1048576]"}},
      {{"features", "sequences", "#0", "max_len"}, "1000000", {"does not match", "seq.history.position"}},
      {{"experts"}, "2000000", {"key 'experts'", "2000000", "[0, 1024]"}},
      {{"experts"}, "1000", {"does not match the file's tensors", "level0.shared_expert"}},
      // Overflow and truncation.
      {{"features", "ids", "#0", "vocab"}, "4611686018427387905", {"features.ids[0].vocab", "4611686018427387905"}},
      {{"features", "sequences", "#0", "layers"}, "4294967297", {"features.sequences[0].layers", "4294967297", "[1, 64]"}},
      {{"features", "sequences", "#0", "encoder", "layer_norm_eps"}, "-1", {"layer_norm_eps", "-1"}},
      {{"features", "sequences", "#0", "encoder", "heads"}, "3", {"d_model divisible by heads"}},
      {{"seed"}, "\"10000000000000000000000000\"", {"key 'seed'", "10000000000000000000000000"}},
      {{"seed"}, "\"18446744073709551616\"", {"key 'seed'", "at most 18446744073709551615"}},
      {{"seed"}, "12", {"key 'seed'", "expected a string"}},
      {{"dropout"}, "1.5", {"dropout", "1.5"}},
      {{"tasks", "#0", "tower"}, "[0]", {"tasks[0].tower[0]", "[1, 1048576]"}},
      {{"architecture"}, "\"transformer\"", {"key 'architecture'", "transformer"}},
  };
  for (const Case& k : cases) {
    std::string where;
    for (const auto& p : k.path) where += "/" + p;
    CAPTURE(where, k.value);
    rewrite_metadata(good, bad, "config", [&](const std::string& cfg) { return set_config(cfg, k.path, k.value); });
    const double rss0 = peak_rss_mb();
    try {
      load_checkpoint<float>(bad);
      FAIL("expected an error");
    } catch (const Error& e) {
      const std::string msg = e.what();
      INFO("message: " << msg);
      CHECK(msg.find("load_checkpoint") != std::string::npos);
      CHECK(msg.find(bad) != std::string::npos);
      for (const char* w : k.words) CHECK(msg.find(w) != std::string::npos);
    }
    CHECK(peak_rss_mb() - rss0 < 64.0);  // the file is a few KB: the loader may not ask for more
  }
  // Metadata that is not JSON, or not an object, is an error naming the entry.
  rewrite_metadata(good, bad, "config", [](const std::string& s) { return s.substr(0, s.size() / 2); });
  testing::require_error([&] { load_checkpoint<float>(bad); }, {"load_checkpoint", "metadata 'config'"});
  rewrite_metadata(good, bad, "config", [](const std::string&) { return std::string("[1, 2]"); });
  testing::require_error([&] { load_checkpoint<float>(bad); }, {"load_checkpoint", "metadata 'config'", "object"});
  // The file may not hold parameters the config does not create.
  {
    MultiTaskModel<float> other(testing::tiny_config(Architecture::PLE));
    save_checkpoint(bad, other);
    rewrite_metadata(bad, bad, "config", [&](const std::string&) { return config_to_json(c).dump(); });
    testing::require_error([&] { load_checkpoint<float>(bad); }, {"load_checkpoint", bad.c_str()});
  }
  std::remove(good.c_str());
  std::remove(bad.c_str());
}

TEST_CASE("untrusted checkpoint: the configuration limits and overflow-checked shapes", "[checkpoint][bad-input][untrusted]") {
  // Shape arithmetic never wraps.
  testing::require_error([] { Shape s{index_t(1) << 40, index_t(1) << 40}; (void)s; }, {"Shape", "overflows"});
  Shape direct;
  direct.rank = 2;
  direct.dims = {{index_t(1) << 62, 5, 0, 0}};
  testing::require_error([&] { (void)direct.numel(); }, {"Shape::numel", "overflows"});
  testing::require_error([] { Tensor<double> t(Shape{index_t(1) << 61}); }, {"Tensor::resize", "address space"});
  // validate_config names each limit.
  ModelConfig c = testing::tiny_config(Architecture::MMoE);
  c.experts = 5000;
  testing::require_error([&] { validate_config(c); }, {"MMoE experts", "[1, 1024]", "5000"});
  c = testing::tiny_config(Architecture::PLE);
  c.ple_task_experts = 300;
  c.ple_shared_experts = 200;
  testing::require_error([&] { validate_config(c); }, {"experts per level", "1100"});
  c = testing::tiny_config(Architecture::MMoE);
  c.features.sequences[0].encoder.layer_norm_eps = 0;
  testing::require_error([&] { validate_config(c); }, {"sequence 'history' layer_norm_eps", "(0, 1]"});
  c = testing::tiny_config(Architecture::MMoE);
  c.features.ids[0].vocab = (index_t(1) << 40) + 1;
  testing::require_error([&] { validate_config(c); }, {"ID field 'user' vocab", "1099511627777"});
  // A planned model that would exceed a bound fails at the parameter that crosses it, before allocating.
  c = testing::tiny_config(Architecture::MMoE);
  testing::require_error([&] { MultiTaskModel<float>::parameter_plan(c, 3, 1 << 20, "the test's bound"); },
                         {"ParameterStore::add", "would be number 4", "the test's bound holds at most 3"});
  testing::require_error([&] { MultiTaskModel<float>::parameter_plan(c, 1000, 10, "the test's bound"); },
                         {"ParameterStore::add", "more than the 10 elements"});
  const auto plan = MultiTaskModel<float>::parameter_plan(c, 1000, 1 << 20, "the test's bound");
  MultiTaskModel<float> built(c);
  REQUIRE(int(plan.size()) == built.parameters().count());
  for (std::size_t i = 0; i < plan.size(); ++i) {
    CHECK(plan[i].name == built.parameters().info(ParamId(i)).name);
    CHECK(plan[i].shape == built.parameters().info(ParamId(i)).shape);
  }
}

TEST_CASE("untrusted checkpoint: training state for another task count is refused and changes nothing",
          "[checkpoint][bad-input][untrusted]") {
  const ModelConfig c2 = testing::tiny_config(Architecture::MMoE, false);  // 2 tasks
  const ModelConfig c3 = testing::tiny_config(Architecture::MMoE, true);   // 3 tasks
  const Batch<float> data = testing::tiny_batch<float>(c2, 32, 4);
  TrainConfig tc;
  tc.epochs = 1;
  tc.batch_size = 16;
  tc.progress = false;
  tc.weighting = Weighting::Uncertainty;
  MultiTaskModel<float> m2(c2);
  Trainer<float> t2(m2, tc);
  t2.fit(data);
  const std::string path = untrusted_temp_path("state2.safetensors");
  save_checkpoint(path, m2, &t2);
  MultiTaskModel<float> m3(c3);
  Trainer<float> t3(m3, tc);
  const TrainerState before = t3.state();
  testing::require_error([&] { load_training_state(path, t3); },
                         {"load_training_state", path.c_str(), "trainer.log_var", "3"});
  CHECK(t3.state().log_var == before.log_var);
  CHECK(t3.state().epoch == before.epoch);
  CHECK(t3.task_weights().size() == 3);
  // A state whose numbers are out of range, or NaN, is refused too.
  const std::string bad = untrusted_temp_path("state_bad.safetensors");
  rewrite_metadata(path, bad, "trainer", [](const std::string& s) {
    json::Value j = json::parse(s);
    j.set("epoch", json::Value(std::int64_t(1) << 40));
    return j.dump();
  });
  MultiTaskModel<float> m2b(c2);
  Trainer<float> t2b(m2b, tc);
  testing::require_error([&] { load_training_state(bad, t2b); }, {"trainer.epoch", "1099511627776"});
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST_CASE("safetensors: read_vector<bool> reads BOOL tensors", "[safetensors]") {
  const bool flags[5] = {true, false, false, true, true};
  const std::string path = untrusted_temp_path("bool.safetensors");
  save_safetensors(path, {TensorRecord::of("mask", flags, {5})}, {});
  const SafetensorsFile f = SafetensorsFile::load(path);
  const std::vector<bool> v = f.read_vector<bool>("mask");
  CHECK(v == std::vector<bool>({true, false, false, true, true}));
  std::remove(path.c_str());
}
