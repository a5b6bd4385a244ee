// Writes the seed corpora of the fuzz harnesses that need real binary or
// generated inputs (checkpoint, config, safetensors) into OUT_DIR/<harness>/.
// The committed files under tests/fuzz/corpus/ came from this program:
//   build-fuzz/tests/fuzz/mtrec_fuzz_gen_seeds tests/fuzz/corpus
// Every file is kept under 4 KB: tiny models only.
#include <mtrec/train/checkpoint.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

using namespace mtrec;

namespace {
void write_text(const std::string& path, const std::string& s) {
  std::ofstream f(path, std::ios::binary);
  f << s;
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
  std::printf("%6zu  %s\n", s.size(), path.c_str());
}

ModelConfig base(Architecture a) {
  ModelConfig c;
  c.architecture = a;
  c.seed = 7;
  c.bottom = {2};
  c.expert = {2};
  c.experts = 2;
  c.ple_levels = 1;
  c.ple_shared_experts = 1;
  c.ple_task_experts = 1;
  c.features.ids = {{"user", 3, 0, 2, ""}};
  TaskSpec t;
  t.name = "ctr";
  t.tower = {};
  c.tasks = {t};
  if (a == Architecture::ESMM) {
    TaskSpec cv;
    cv.name = "ctcvr";
    cv.tower = {};
    c.tasks.push_back(cv);
  } else if (a != Architecture::SingleTask) {
    TaskSpec r;
    r.name = "rating";
    r.type = TaskType::Regression;
    r.loss = TaskLoss::Huber;
    r.tower = {2};
    c.tasks.push_back(r);
  }
  return c;
}

// Every feature kind and task type, still tiny.
ModelConfig full() {
  ModelConfig c = base(Architecture::PLE);
  c.features.ids.push_back({"item", 0, 5, 2, ""});
  c.features.bags = {{"genres", 4, 0, 2, "", BagPooling::Sum, true}};
  SequenceFeature s;
  s.name = "history";
  s.vocab = 4;
  s.max_len = 3;
  s.encoder.d_model = 2;
  s.encoder.heads = 1;
  s.encoder.ffn = 2;
  s.pooling = SequencePoolMode::First;
  c.features.sequences = {s};
  c.features.dense = {{"age", 1}};
  TaskSpec m;
  m.name = "genre";
  m.type = TaskType::MultiClass;
  m.num_classes = 3;
  m.tower = {};
  TaskSpec r;
  r.name = "next";
  r.type = TaskType::Retrieval;
  r.target_table = "tag";
  r.target_vocab = 3;
  r.target_dim = 2;
  r.tower = {};
  c.tasks.push_back(m);
  c.tasks.push_back(r);
  return c;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (holding checkpoint/, config/, safetensors/)\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  // config: the JSON stored in checkpoint metadata.
  const std::pair<const char*, ModelConfig> configs[] = {{"single", base(Architecture::SingleTask)},
                                                         {"mmoe", base(Architecture::MMoE)},
                                                         {"esmm", base(Architecture::ESMM)},
                                                         {"ple_full", full()}};
  for (const auto& c : configs) {
    validate_config(c.second);
    write_text(out + "/config/" + c.first + ".json", config_to_json(c.second).dump());
  }
  // checkpoint: two real checkpoints.
  for (const auto& c : {configs[0], configs[1]}) {
    MultiTaskModel<float> model(c.second);
    const std::string path = out + "/checkpoint/" + c.first + ".safetensors";
    save_checkpoint(path, model);
    std::printf("%6zu  %s\n", io::read_file_bytes(path).size(), path.c_str());
  }
  // safetensors: a few dtypes and shapes, with and without metadata.
  const float f[6] = {0.f, 1.f, -2.5f, 3.f, 1e-3f, -0.f};
  const double d[2] = {1.0, -1e300};
  const std::int64_t i[3] = {-1, 0, 4294967297LL};
  const std::uint8_t b[2] = {0, 1};
  auto st = [&](const char* name, const std::vector<TensorRecord>& r, const std::map<std::string, std::string>& m) {
    const auto bytes = serialize_safetensors(r, m);
    write_text(out + "/safetensors/" + name + ".safetensors", std::string(bytes.begin(), bytes.end()));
  };
  st("f32_matrix", {TensorRecord::of("w", f, {2, 3})}, {});
  st("mixed", {TensorRecord::of("w", f, {6}), TensorRecord::of("d", d, {2}), TensorRecord::of("i", i, {3, 1}),
               TensorRecord::of("s", f, {})},
     {{"format", "pt"}, {"note", "seed"}});
  TensorRecord flags;
  flags.name = "flags";
  flags.dtype = safetensors::Dtype::BOOL;
  flags.shape = {2};
  flags.data = b;
  flags.nbytes = 2;
  TensorRecord empty;
  empty.name = "empty";
  empty.shape = {0, 4};
  st("bool_and_empty", {flags, empty}, {{"__x", ""}});
  st("no_tensors", {}, {{"k", "v"}});
  return 0;
}
