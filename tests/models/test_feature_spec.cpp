// The feature spec travels with the model: the raw value -> row mapping
// (vocabularies with the OOV row, hashed IDs, dense standardisation, the
// tokenizer, item sides) is saved by save_checkpoint and restored by
// load_checkpoint, and model.encode(raw rows) gives the batch the CSV path
// gives for the same values. The reference is always the CSV path
// (TabularEncoder::transform over a CsvTable) or values written out by hand.
#include "support/gradcheck.hpp"

#include <mtrec/mtrec.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

using namespace mtrec;

namespace {

std::string spec_temp_path(const std::string& name) {
  return "/tmp/mtrec_test_spec_" + std::to_string(::getpid()) + "_" + name;
}

const char* kCsv =
    "user,item,genres,history,title,age,click,rating\n"
    "u1,i1,a|b,i1|i2,Hello World,30,1,4\n"
    "u2,i2,b,i2,hello there,40,0,3\n"
    "u3,i3,a|c,i3|i1|i2,Brave New,25,1,5\n"
    "u1,i2,c,,World,NA,0,2\n";

data::TabularSchema schema() {
  data::TabularSchema s;
  s.features = {data::parse_feature_flag(data::ColumnKind::Id, "user", "--id"),
                data::parse_feature_flag(data::ColumnKind::Id, "item:64", "--id"),
                data::parse_feature_flag(data::ColumnKind::Bag, "genres:|", "--bag"),
                data::parse_feature_flag(data::ColumnKind::Sequence, "history:|:3", "--seq"),
                data::parse_feature_flag(data::ColumnKind::Text, "title:4", "--text"),
                data::parse_feature_flag(data::ColumnKind::Dense, "age:impute", "--dense")};
  s.features[1].item_side = true;  // item
  s.features[2].item_side = true;  // genres
  s.tasks = {data::parse_task_flag("click:binary", "--task"), data::parse_task_flag("rating:regression", "--task")};
  return s;
}

struct Fitted {
  data::CsvTable table;
  data::TabularEncoder enc;
  ModelConfig cfg;
};

Fitted fitted() {
  Fitted f{data::CsvTable::parse(kCsv, "spec.csv"), data::TabularEncoder(schema()), {}};
  f.enc.fit(f.table);
  TransformerConfig tf;
  tf.d_model = 4;
  tf.heads = 2;
  tf.ffn = 8;
  f.cfg.features = f.enc.feature_spec(4, tf);
  f.cfg.tasks = f.enc.task_specs({4});
  f.cfg.architecture = Architecture::SharedBottom;
  f.cfg.bottom = {8};
  f.cfg.seed = 3;
  return f;
}

// The rows of kCsv as a serving request would send them: lists as arrays
// for row 0, CSV-style joined text for the others.
data::RawRows raw_of_csv() {
  data::RawRows r;
  auto a = r.add_row();
  r.set(a, "user", "u1");
  r.set(a, "item", "i1");
  r.set_list(a, "genres", {"a", "b"});
  r.set_list(a, "history", {"i1", "i2"});
  r.set(a, "title", "Hello World");
  r.set(a, "age", "30");
  a = r.add_row();
  r.set(a, "user", "u2");
  r.set(a, "item", "i2");
  r.set(a, "genres", "b");
  r.set(a, "history", "i2");
  r.set(a, "title", "hello there");
  r.set(a, "age", "40");
  a = r.add_row();
  r.set(a, "user", "u3");
  r.set(a, "item", "i3");
  r.set(a, "genres", "a|c");
  r.set_list(a, "history", {"i3", "i1", "i2"});
  r.set_list(a, "title", {"Brave", "New"});
  r.set(a, "age", "25");
  a = r.add_row();  // history absent = the empty cell; age NA
  r.set(a, "user", "u1");
  r.set(a, "item", "i2");
  r.set(a, "genres", "c");
  r.set(a, "title", "World");
  r.set(a, "age", "NA");
  return r;
}

void require_same_inputs(const Batch<float>& a, const Batch<float>& b) {
  REQUIRE(a.size == b.size);
  REQUIRE(a.ids.size() == b.ids.size());
  for (std::size_t f = 0; f < a.ids.size(); ++f) CHECK(a.ids[f] == b.ids[f]);
  REQUIRE(a.bags.size() == b.bags.size());
  for (std::size_t f = 0; f < a.bags.size(); ++f) {
    CHECK(a.bags[f].ids == b.bags[f].ids);
    CHECK(a.bags[f].offsets == b.bags[f].offsets);
  }
  REQUIRE(a.sequences.size() == b.sequences.size());
  for (std::size_t f = 0; f < a.sequences.size(); ++f) {
    CHECK(a.sequences[f].ids == b.sequences[f].ids);
    CHECK(a.sequences[f].lengths == b.sequences[f].lengths);
  }
  REQUIRE(a.dense.size() == b.dense.size());
  for (std::size_t f = 0; f < a.dense.size(); ++f) CHECK(a.dense[f] == b.dense[f]);
}

}  // namespace

TEST_CASE("feature spec: encode(raw rows) equals the CSV path for the same values", "[feature-spec]") {
  Fitted f = fitted();
  MultiTaskModel<float> model(f.cfg);
  model.set_preprocessing(f.enc);
  const Batch<float> want = f.enc.transform<float>(f.table, nullptr, false);
  const Batch<float> got = model.encode(raw_of_csv());
  require_same_inputs(got, want);
  // By hand: user vocabulary u1=1 u2=2 u3=3; genres a=1 b=2 c=3; the
  // sequence keeps the last 3 items; age is imputed (0, is_missing 1) in row 3.
  CHECK(got.ids[0] == std::vector<index_t>{1, 2, 3, 1});
  CHECK(got.bags[0].ids == std::vector<index_t>{1, 2, 2, 1, 3, 3});
  CHECK(got.sequences[0].lengths == std::vector<index_t>{2, 1, 3, 0});
  CHECK(got.dense[0][6] == 0.0f);
  CHECK(got.dense[0][7] == 1.0f);
  // The hashed item is FNV-1a of its text (the model salts it into buckets).
  CHECK(got.ids[1][0] == index_t(data::hash_string("i1")));
}

TEST_CASE("feature spec: unseen values map to the OOV row, malformed ones are errors naming the field",
          "[feature-spec]") {
  Fitted f = fitted();
  MultiTaskModel<float> model(f.cfg);
  model.set_preprocessing(f.enc);
  data::RawRows r;
  const auto a = r.add_row();
  r.set(a, "user", "never-seen");
  r.set_list(a, "genres", {"a", "zzz"});
  r.set(a, "title", "unknown words hello");
  r.set(a, "age", "35");
  const Batch<float> b = model.encode(r);
  CHECK(b.ids[0][0] == data::Vocabulary::kOov);
  CHECK(b.ids[0][0] == 0);
  CHECK(b.bags[0].ids == std::vector<index_t>{1, 0});
  CHECK(b.sequences[0].lengths[0] == 0);  // history absent: empty
  CHECK(b.ids[1][0] == index_t(data::hash_string("")));  // item absent: the missing value's hash
  // The text: "unknown" and "words" are OOV, "hello" is row 1 of the title vocabulary (first seen).
  CHECK(b.sequences[1].lengths[0] == 3);
  CHECK(b.sequences[1].ids[0] == 0);
  CHECK(b.sequences[1].ids[2] == f.enc.vocabulary(4).find("hello"));
  CHECK(f.enc.vocabulary(4).find("hello") == 1);

  auto bad = [&](auto setter, std::initializer_list<const char*> want) {
    data::RawRows x;
    x.add_row();
    x.set(0, "user", "u1");
    setter(x);
    testing::require_error([&] { (void)model.encode(x); }, want);
  };
  bad([](data::RawRows& x) { x.set(0, "age", "thirty"); }, {"TabularEncoder::encode", "row 0", "field 'age'", "'thirty'"});
  bad([](data::RawRows& x) { x.set(0, "colour", "red"); }, {"unknown feature 'colour'", "'user'"});
  bad([](data::RawRows& x) { x.set_list(0, "user", {"u1", "u2"}); }, {"field 'user'", "expected one value", "a list of 2"});
  bad([](data::RawRows& x) { x.set_list(0, "genres", {"a|b"}); }, {"field 'genres'", "contains the separator"});
  bad([](data::RawRows& x) { x.set(0, "age", "1e39"); }, {"field 'age'", "float range"});
  testing::require_error([&] { (void)model.encode(data::RawRows()); }, {"at least one row"});

  MultiTaskModel<float> bare(f.cfg);
  data::RawRows one;
  one.add_row();
  testing::require_error([&] { (void)bare.encode(one); }, {"no feature spec", "set_preprocessing"});
}

TEST_CASE("feature spec: save_checkpoint stores it, load_checkpoint restores it, predictions match the CSV path",
          "[feature-spec][checkpoint]") {
  Fitted f = fitted();
  MultiTaskModel<float> model(f.cfg);
  model.set_preprocessing(f.enc);
  const std::string path = spec_temp_path("with_spec.safetensors");
  save_checkpoint<float>(path, model);
  auto loaded = load_checkpoint<float>(path);
  REQUIRE(loaded->preprocessing() != nullptr);
  CHECK(loaded->config().features.ids[1].item_side);
  CHECK(loaded->config().features.bags[0].item_side);
  CHECK_FALSE(loaded->config().features.ids[0].item_side);
  CHECK(loaded->preprocessing()->schema().features[1].item_side);
  // The loaded model encodes by itself; the original predicts the CSV path's batch.
  typename MultiTaskModel<float>::Workspace ws1, ws2;
  Tensor<float> p_ref, p_raw;
  model.predict(ws1, f.enc.transform<float>(f.table, nullptr, false), p_ref);
  loaded->predict(ws2, loaded->encode(raw_of_csv()), p_raw);
  REQUIRE(p_ref.numel() == p_raw.numel());
  for (index_t i = 0; i < p_ref.numel(); ++i) CHECK(p_raw.data()[i] == p_ref.data()[i]);
  // The JSON names the OOV row, the hash salt and the tokenizer.
  const json::Value j = loaded->preprocessing()->to_json();
  CHECK(j.at("version").as_int() == 3);
  CHECK(j.at("oov_row").as_int() == 0);
  CHECK(j.at("features").at(1).at("hash").at("salt").as_string() == std::to_string(hash_name("item")));
  CHECK(j.at("features").at(4).at("tokenizer").at("max_len").as_int() == 4);
  std::remove(path.c_str());
}

TEST_CASE("feature spec: old checkpoints load (the legacy key, or none) and a spec that does not fit is refused",
          "[feature-spec][checkpoint]") {
  Fitted f = fitted();
  MultiTaskModel<float> bare(f.cfg);
  // As mtrec-train wrote it before: the encoder under its own key.
  const std::string legacy = spec_temp_path("legacy.safetensors");
  save_checkpoint<float>(legacy, bare, nullptr, {{"mtrec_train.preprocessing", f.enc.to_json().dump()}});
  auto a = load_checkpoint<float>(legacy);
  REQUIRE(a->preprocessing() != nullptr);
  require_same_inputs(a->encode(raw_of_csv()), f.enc.transform<float>(f.table, nullptr, false));
  // No spec at all: loads, and encode() says why it cannot.
  const std::string none = spec_temp_path("none.safetensors");
  save_checkpoint<float>(none, bare);
  auto b = load_checkpoint<float>(none);
  CHECK(b->preprocessing() == nullptr);
  // A spec fitted on other data (another vocabulary size) does not fit.
  data::TabularEncoder other(schema());
  other.fit(data::CsvTable::parse("user,item,genres,history,title,age,click,rating\nx,i,a,i,t,1,1,1\n", "other.csv"));
  MultiTaskModel<float> m(f.cfg);
  testing::require_error([&] { m.set_preprocessing(other); }, {"set_preprocessing", "'user'", "vocab"});
  // The same model config with another item side is refused too.
  data::TabularSchema s2 = schema();
  s2.features[1].item_side = false;
  data::TabularEncoder e2(s2);
  e2.fit(f.table);
  testing::require_error([&] { m.set_preprocessing(e2); }, {"'item'", "item_side"});
  std::remove(legacy.c_str());
  std::remove(none.c_str());
}

TEST_CASE("feature spec: retrieval and BPR tasks from flags", "[feature-spec][flags]") {
  auto t = data::parse_task_flag("next:retrieval:item", "--task");
  CHECK(t.type == TaskType::Retrieval);
  CHECK(t.target_feature == "item");
  CHECK(t.weight == 1.0);
  t = data::parse_task_flag("next:retrieval", "--task");
  CHECK(t.target_feature.empty());
  t = data::parse_task_flag("next:retrieval:0.5", "--task");
  CHECK(t.target_feature.empty());
  CHECK(t.weight == 0.5);
  t = data::parse_task_flag("next:retrieval:item:2", "--task");
  CHECK(t.target_feature == "item");
  CHECK(t.weight == 2.0);
  t = data::parse_task_flag("click:bpr", "--task");
  CHECK(t.type == TaskType::Binary);
  CHECK(t.loss == TaskLoss::BPR);

  // A retrieval task sharing the item vocabulary: labels are its rows;
  // an item never seen in training is unlabelled, not a wrong row.
  data::TabularSchema s;
  s.features = {data::parse_feature_flag(data::ColumnKind::Id, "user", "--id"),
                data::parse_feature_flag(data::ColumnKind::Id, "item", "--id")};
  s.tasks = {data::parse_task_flag("next:retrieval:item", "--task"), data::parse_task_flag("own:retrieval", "--task")};
  data::TabularEncoder enc(s);
  const auto train = data::CsvTable::parse("user,item,next,own\nu1,a,b,x\nu2,b,a,y\nu1,c,a,x\n", "r.csv");
  enc.fit(train);
  const auto test = data::CsvTable::parse("user,item,next,own\nu1,a,c,y\nu2,b,zzz,q\n", "t.csv");
  const Batch<float> b = enc.transform<float>(test, nullptr, true);
  CHECK(b.labels[0] == std::vector<float>{3, 0});  // item vocabulary a=1 b=2 c=3
  CHECK(b.label_mask[0] == std::vector<std::uint8_t>{1, 0});
  CHECK(b.labels[1][0] == 2);                      // own vocabulary x=1 y=2
  CHECK(b.label_mask[1] == std::vector<std::uint8_t>{1, 0});
  const auto tasks = enc.task_specs({4}, 8);
  CHECK(tasks[0].target_table == "item");
  CHECK(tasks[0].target_vocab == 0);
  CHECK(tasks[1].target_table == "own");
  CHECK(tasks[1].target_vocab == 3);
  CHECK(tasks[1].target_dim == 8);
  // The spec round-trips with its item vocabularies.
  const auto back = data::TabularEncoder::from_json(enc.to_json());
  CHECK(back.item_vocabulary(1).find("y") == 2);
  CHECK(back.item_vocabulary(0).find("c") == 3);
  testing::require_error([] {
    data::TabularSchema x;
    x.features = {data::parse_feature_flag(data::ColumnKind::Id, "item:16", "--id")};
    x.tasks = {data::parse_task_flag("next:retrieval:item", "--task")};
    data::TabularEncoder e(x);
  }, {"next:retrieval:item", "not hashed"});
}
