// CSV reading and tabular preprocessing: the reader (RFC 4180 quoting, CRLF,
// empty cells, errors with line numbers), numbers, vocabularies with the OOV
// row, tokenizer and item lists, standardisation, seeded splits, the flag
// syntax of mtrec-train and the TabularEncoder. Expected values are written
// out by hand from the inputs, not computed with the code under test.
#include "support/gradcheck.hpp"

// From include/; a build against single_include/ has them only if the
// umbrella header includes them.
#if __has_include(<mtrec/model/tabular.hpp>)
#include <mtrec/io/csv.hpp>
#include <mtrec/model/tabular.hpp>
#endif

#include <chrono>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <vector>

using namespace mtrec;
using data::CsvTable;

namespace {
std::vector<std::string> row_of(const CsvTable& t, std::size_t r) {
  std::vector<std::string> out;
  for (std::size_t c = 0; c < t.cols(); ++c) out.emplace_back(t.cell(r, c));
  return out;
}
using Strings = std::vector<std::string>;
}  // namespace

// ---- the reader ---------------------------------------------------------------------------

TEST_CASE("csv: plain rows, header and cell access", "[csv]") {
  const CsvTable t = CsvTable::parse("a,b,c\n1,2,3\nx,y,z\n", "t.csv");
  CHECK(t.header() == Strings{"a", "b", "c"});
  REQUIRE(t.rows() == 2);
  CHECK(t.cols() == 3);
  CHECK(row_of(t, 0) == Strings{"1", "2", "3"});
  CHECK(row_of(t, 1) == Strings{"x", "y", "z"});
  CHECK(t.line(0) == 2);
  CHECK(t.line(1) == 3);
  CHECK(t.find_column("b") == 1);
  CHECK(t.find_column("nope") == CsvTable::npos);
}

TEST_CASE("csv: quoted fields hold commas, doubled quotes and line breaks", "[csv]") {
  const CsvTable t = CsvTable::parse(
      "id,title,n\n"
      "1,\"Hello, world\",5\n"
      "2,\"She said \"\"hi\"\"\",6\n"
      "3,\"two\nlines\",7\n"
      "4,\"\",8\n"
      "5,ab\"c,9\n",
      "q.csv");
  REQUIRE(t.rows() == 5);
  CHECK(t.cell(0, 1) == "Hello, world");
  CHECK(t.cell(1, 1) == "She said \"hi\"");
  CHECK(t.cell(2, 1) == "two\nlines");
  CHECK(t.cell(3, 1) == "");
  CHECK(t.cell(4, 1) == "ab\"c");  // a quote inside an unquoted field is a character
  // The record with the embedded line break starts on line 4 and takes two
  // lines, so the next record is on line 6.
  CHECK(t.line(2) == 4);
  CHECK(t.line(3) == 6);
  CHECK(t.line(4) == 7);
  CHECK(t.cell(4, 2) == "9");
}

TEST_CASE("csv: CRLF line ends, empty cells, a missing final newline, BOM and blank lines", "[csv]") {
  const CsvTable t = CsvTable::parse("\xEF\xBB\xBFu,v,w\r\n1,,3\r\n\r\n,,\r\n,x,\"y\"", "crlf.csv");
  CHECK(t.header() == Strings{"u", "v", "w"});  // no BOM in the first name
  REQUIRE(t.rows() == 3);
  CHECK(row_of(t, 0) == Strings{"1", "", "3"});
  CHECK(row_of(t, 1) == Strings{"", "", ""});
  CHECK(t.line(1) == 4);  // line 3 was blank
  CHECK(row_of(t, 2) == Strings{"", "x", "y"});
  CHECK(t.line(2) == 5);
}

TEST_CASE("csv: a quoted field keeps CRLF inside it, and CR before LF is not part of a cell", "[csv]") {
  const CsvTable t = CsvTable::parse("a,b\r\n\"x\r\ny\",z\r\nlast,cell\r", "c.csv");
  REQUIRE(t.rows() == 2);
  CHECK(t.cell(0, 0) == "x\r\ny");
  CHECK(t.cell(0, 1) == "z");
  CHECK(t.cell(1, 1) == "cell");
  CHECK(t.line(1) == 4);
}

TEST_CASE("csv: a header-only file has no rows, an empty file is an error", "[csv]") {
  CHECK(CsvTable::parse("a,b\n", "h.csv").rows() == 0);
  testing::require_error([] { CsvTable::parse("", "empty.csv"); }, {"read_csv", "'empty.csv'", "line 1", "column 1", "empty"});
  testing::require_error([] { CsvTable::parse("\n\r\n", "blank.csv"); }, {"'blank.csv'", "empty"});
}

TEST_CASE("csv: ragged rows are errors naming the line and the column", "[csv]") {
  testing::require_error([] { CsvTable::parse("a,b,c\n1,2,3\n4,5\n", "r.csv"); },
                         {"'r.csv'", "line 3", "expected 3 fields", "got 2", "column #3 'c'"});
  testing::require_error([] { CsvTable::parse("a,b\n1,2\n\n3,4,5\n", "r.csv"); },
                         {"'r.csv'", "line 4", "expected 2 fields", "got 3", "column #3"});
  // A multi-line quoted field does not shift the reported line.
  testing::require_error([] { CsvTable::parse("a,b\n\"x\ny\",2\n1\n", "r.csv"); }, {"line 4", "got 1"});
}

TEST_CASE("csv: broken quoting is an error naming the line and the column", "[csv]") {
  testing::require_error([] { CsvTable::parse("a,b\n1,\"open\n2,3\n", "u.csv"); },
                         {"'u.csv'", "line 2", "column #2 'b'", "never closed"});
  testing::require_error([] { CsvTable::parse("a,b\n\"x\"y,2\n", "u.csv"); },
                         {"'u.csv'", "line 2", "column #1 'a'", "'y,2'", "closing quote"});
}

TEST_CASE("csv: missing columns and cell errors name the file, line and column", "[csv]") {
  const CsvTable t = CsvTable::parse("user,age\nu1,abc\n", "d.csv");
  testing::require_error([&] { t.require_column("rating", "--task rating:regression"); },
                         {"'d.csv'", "line 1", "no column 'rating'", "--task rating:regression", "'user', 'age'"});
  testing::require_error([&] { t.fail_cell("op", 0, 1, "bad"); }, {"op: 'd.csv' line 2, column 'age' (#2): bad"});
  testing::require_error([] { CsvTable::parse("a,a\n1,2\n", "dup.csv").find_column("a"); }, {"appears twice"});
}

TEST_CASE("csv: append_csv_field quotes what needs quoting and reads back", "[csv]") {
  std::string line;
  const Strings fields = {"plain", "a,b", "say \"x\"", "two\nlines", " padded", ""};
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) line += ',';
    data::append_csv_field(line, fields[i]);
  }
  CHECK(line == "plain,\"a,b\",\"say \"\"x\"\"\",\"two\nlines\",\" padded\",");
  const CsvTable t = CsvTable::parse("h1,h2,h3,h4,h5,h6\n" + line + "\n");
  REQUIRE(t.rows() == 1);
  CHECK(row_of(t, 0) == fields);
}

TEST_CASE("csv: numbers", "[csv]") {
  double x = 0;
  CHECK((data::parse_number("3", x) && x == 3));
  CHECK((data::parse_number(" -2.5e3 ", x) && x == -2500));
  CHECK((data::parse_number("+0.25", x) && x == 0.25));
  for (const char* bad : {"", " ", "abc", "1,5", "1.2.3", "nan", "inf", "-inf", "1e999", "+-1", "0x10", "3 4"})
    CHECK_FALSE(data::parse_number(bad, x));
  long long n = 0;
  CHECK((data::parse_integer("42", n) && n == 42));
  CHECK((data::parse_integer(" -7", n) && n == -7));
  CHECK_FALSE(data::parse_integer("4.5", n));
  CHECK_FALSE(data::parse_integer("99999999999999999999", n));
}

TEST_CASE("csv: 100k rows load quickly", "[csv][perf]") {
  std::string text = "user,item,genres,rating,ts\n";
  text.reserve(100000 * 40);
  for (int i = 0; i < 100000; ++i)
    text += std::to_string(i % 671) + "," + std::to_string(i % 9066) + ",Action|Comedy,3.5," +
            std::to_string(1260759144 + i) + "\n";
  const auto t0 = std::chrono::steady_clock::now();
  const CsvTable t = CsvTable::parse(std::move(text), "big.csv");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("parsed 100000 rows in " << s << " s");
  CHECK(t.rows() == 100000);
  CHECK(t.cell(99999, 1) == std::to_string(99999 % 9066));
  CHECK(s < 5.0);  // generous: catches a quadratic slip, not a slow machine
}

// ---- vocabularies, tokens, lists -------------------------------------------------------------

TEST_CASE("vocabulary: rows from 1 in first-seen order, OOV row 0", "[csv][vocab]") {
  data::Vocabulary v;
  CHECK(v.rows() == 1);
  CHECK(v.find("a") == 0);
  CHECK(v.add("b") == 1);
  CHECK(v.add("a") == 2);
  CHECK(v.add("b") == 1);
  CHECK(v.add("") == 3);
  CHECK(v.size() == 3);
  CHECK(v.rows() == 4);
  CHECK(v.find("a") == 2);
  CHECK(v.find("zzz") == data::Vocabulary::kOov);
  CHECK(v.token(2) == "a");
  CHECK(v.tokens() == Strings{"b", "a", ""});
  testing::require_error([&] { v.token(0); }, {"Vocabulary::token", "[1, 4)"});
  const data::Vocabulary w = data::Vocabulary::from_tokens({"x", "y"});
  CHECK(w.find("y") == 2);
  testing::require_error([] { data::Vocabulary::from_tokens({"x", "y", "x"}); }, {"'x' appears twice"});
}

TEST_CASE("vocabulary: many tokens survive the table growing", "[csv][vocab]") {
  data::Vocabulary v;
  for (int i = 0; i < 20000; ++i) REQUIRE(v.add("tok" + std::to_string(i)) == i + 1);
  for (int i = 0; i < 20000; i += 7) CHECK(v.find("tok" + std::to_string(i)) == i + 1);
  CHECK(v.find("tok20000") == 0);
}

TEST_CASE("tokenizer: lower-cased words split on ASCII non-alphanumerics, first max kept", "[csv][text]") {
  CHECK(data::tokenize_words("Hello, World! It's 2024...") == Strings{"hello", "world", "it", "s", "2024"});
  CHECK(data::tokenize_words("Toy Story (1995)", 2) == Strings{"toy", "story"});
  CHECK(data::tokenize_words("  --  ").empty());
  // Non-ASCII bytes belong to words (UTF-8 stays whole); only ASCII is lower-cased.
  CHECK(data::tokenize_words("Caf\xC3\xA9 AU-lait") == Strings{"caf\xC3\xA9", "au", "lait"});
}

TEST_CASE("item lists: trimmed, empty items skipped, an empty cell is empty", "[csv][text]") {
  CHECK(data::split_items("Action|Comedy", '|') == Strings{"Action", "Comedy"});
  CHECK(data::split_items(" a || b |", '|') == Strings{"a", "b"});
  CHECK(data::split_items("", '|').empty());
  CHECK(data::split_items("solo", ',') == Strings{"solo"});
}

// ---- standardisation and splits ------------------------------------------------------------------

TEST_CASE("standardizer: training mean and population std, std 0 becomes 1", "[csv][dense]") {
  const auto s = data::Standardizer::fit({1, 2, 3, 4});
  CHECK(s.mean == Approx(2.5));
  CHECK(s.sd == Approx(1.118033988749895));  // sqrt(((1.5^2 + 0.5^2) * 2) / 4)
  CHECK(s.apply(4) == Approx(1.3416407864998738));
  CHECK(s.invert(s.apply(7.25)) == Approx(7.25));
  const auto c = data::Standardizer::fit({5, 5, 5});
  CHECK(c.mean == 5);
  CHECK(c.sd == 1);
  CHECK(c.apply(5) == 0);
  CHECK(c.apply(6) == 1);
}

TEST_CASE("split: fractions are parsed and checked", "[csv][split]") {
  const auto f = data::parse_split("0.8,0.1,0.1");
  CHECK(f.train == 0.8);
  CHECK(f.valid == 0.1);
  CHECK(f.test == 0.1);
  CHECK(data::parse_split("1,0,0").train == 1);
  CHECK(data::parse_split("0.3333333,0.3333333,0.3333334").test == Approx(0.3333334));
  testing::require_error([] { data::parse_split("0.8,0.1"); }, {"expected 3", "got 2"});
  testing::require_error([] { data::parse_split("0.8,0.1,0.2"); }, {"summing to 1", "1.1"});
  testing::require_error([] { data::parse_split("0.8,x,0.2"); }, {"fraction #2"});
  testing::require_error([] { data::parse_split("1.2,-0.1,-0.1"); }, {"fraction #1", "[0, 1]"});
  testing::require_error([] { data::parse_split("0,0.5,0.5"); }, {"training fraction > 0"});
  testing::require_error([] { data::parse_split("0.5,0.25,0.25,0"); }, {"more"});
}

TEST_CASE("split: seeded, disjoint, complete, sized by the fractions", "[csv][split]") {
  const auto check_split = [](std::size_t n, data::SplitFractions f, std::size_t tr, std::size_t va, std::size_t te) {
    const auto s = data::split_rows(n, f, 7);
    CHECK(s.train.size() == tr);
    CHECK(s.valid.size() == va);
    CHECK(s.test.size() == te);
    std::set<std::size_t> all;
    for (const auto* part : {&s.train, &s.valid, &s.test}) {
      CHECK(std::is_sorted(part->begin(), part->end()));
      all.insert(part->begin(), part->end());
    }
    CHECK(all.size() == n);  // disjoint and complete
    if (n) CHECK(*all.rbegin() == n - 1);
  };
  check_split(10, {0.8, 0.1, 0.1}, 8, 1, 1);
  check_split(1000, {0.7, 0.2, 0.1}, 700, 200, 100);
  check_split(300, {0.8, 0.1, 0.1}, 240, 30, 30);
  check_split(5, {0.5, 0.5, 0.0}, 3, 2, 0);  // round(2.5) = 3; test stays empty
  check_split(7, {1.0, 0.0, 0.0}, 7, 0, 0);
  check_split(9, {0.6, 0.0, 0.4}, 5, 0, 4);  // round(5.4) = 5
  check_split(0, {0.8, 0.1, 0.1}, 0, 0, 0);
  // The same seed gives the same split; another seed another one.
  const auto a = data::split_rows(1000, {0.8, 0.1, 0.1}, 1), b = data::split_rows(1000, {0.8, 0.1, 0.1}, 1),
             c = data::split_rows(1000, {0.8, 0.1, 0.1}, 2);
  CHECK(a.train == b.train);
  CHECK(a.valid == b.valid);
  CHECK(a.test == b.test);
  CHECK(a.valid != c.valid);
  // Not simply the first rows.
  CHECK(a.train.back() > 800);
}

// ---- flag syntax --------------------------------------------------------------------------------

TEST_CASE("flags: feature and task declarations", "[csv][flags]") {
  using data::ColumnKind;
  auto f = data::parse_feature_flag(ColumnKind::Id, "user", "--id");
  CHECK((f.column == "user" && f.buckets == 0));
  f = data::parse_feature_flag(ColumnKind::Id, "item:1000", "--id");
  CHECK((f.column == "item" && f.buckets == 1000));
  f = data::parse_feature_flag(ColumnKind::Bag, "genres:|", "--bag");
  CHECK((f.column == "genres" && f.sep == '|'));
  f = data::parse_feature_flag(ColumnKind::Bag, "tags:tab", "--bag");
  CHECK(f.sep == '\t');
  f = data::parse_feature_flag(ColumnKind::Sequence, "hist:|", "--seq");
  CHECK((f.sep == '|' && f.max_len == 50));
  f = data::parse_feature_flag(ColumnKind::Sequence, "hist:;:7", "--seq");
  CHECK((f.sep == ';' && f.max_len == 7));
  f = data::parse_feature_flag(ColumnKind::Sequence, "hist:::9", "--seq");  // ':' as the separator
  CHECK((f.sep == ':' && f.max_len == 9));
  f = data::parse_feature_flag(ColumnKind::Text, "title", "--text");
  CHECK(f.max_len == 20);
  f = data::parse_feature_flag(ColumnKind::Text, "title:5", "--text");
  CHECK(f.max_len == 5);
  CHECK(data::parse_feature_flag(ColumnKind::Dense, "age", "--dense").column == "age");
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Id, "item:0", "--id"); }, {"--id 'item:0'", ">= 1"});
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Id, "item:", "--id"); }, {"--id"});
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Bag, "genres", "--bag"); }, {"--bag 'genres'", "COL:SEP"});
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Bag, "genres:ab", "--bag"); }, {"one separator"});
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Sequence, "h:|:x", "--seq"); }, {"maxlen"});
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Text, ":5", "--text"); }, {"column name"});
  auto t = data::parse_task_flag("click:binary", "--task");
  CHECK((t.column == "click" && t.type == TaskType::Binary && t.weight == 1.0));
  t = data::parse_task_flag("rating:regression:0.5", "--task");
  CHECK((t.type == TaskType::Regression && t.weight == 0.5));
  CHECK(data::parse_task_flag("genre:multiclass", "--task").type == TaskType::MultiClass);
  testing::require_error([] { data::parse_task_flag("click", "--task"); }, {"--task 'click'"});
  testing::require_error([] { data::parse_task_flag("click:bin", "--task"); }, {"binary, regression, multiclass, bpr or retrieval"});
  testing::require_error([] { data::parse_task_flag("click:binary:-1", "--task"); }, {"weight >= 0"});
}

// ---- the encoder -----------------------------------------------------------------------------------

namespace {
data::TabularSchema full_schema(index_t min_count = 1) {
  using data::ColumnKind;
  data::TabularSchema s;
  s.features = {data::parse_feature_flag(ColumnKind::Id, "user", "--id"),
                data::parse_feature_flag(ColumnKind::Id, "item:50", "--id"),
                data::parse_feature_flag(ColumnKind::Bag, "genres:|", "--bag"),
                data::parse_feature_flag(ColumnKind::Sequence, "hist:|:2", "--seq"),
                data::parse_feature_flag(ColumnKind::Text, "title:3", "--text"),
                data::parse_feature_flag(ColumnKind::Dense, "age", "--dense")};
  s.tasks = {data::parse_task_flag("click:binary", "--task"), data::parse_task_flag("rating:regression:0.5", "--task"),
             data::parse_task_flag("cls:multiclass", "--task")};
  s.min_count = min_count;
  return s;
}
const char* kTrain =
    "user,item,genres,hist,title,age,click,rating,cls\n"
    "u1,i1,Action|Comedy,a|b|c,\"Toy Story, the Movie\",20,1,4,10\n"
    "u2,i2,,b,Heat,30,0,,2\n"
    "u1,i3,Comedy,,heat wave,40,true,2,10\n"
    "u3,i1,Drama|Action,c|a,\"\",50,FALSE,3,\n";
// Rows with values never seen in training.
const char* kValid =
    "user,item,genres,hist,title,age,click,rating,cls\n"
    "u9,i1,Horror|Comedy,z|a,Alien Heat,35,0,5,2\n"
    ",i7,,,,20,,,\n";
}  // namespace

TEST_CASE("encoder: vocabularies, hashing, lists, text, dense and labels from the training rows", "[csv][encoder]") {
  const CsvTable train = CsvTable::parse(kTrain, "train.csv"), valid = CsvTable::parse(kValid, "valid.csv");
  data::TabularEncoder enc(full_schema());
  enc.fit(train);
  CHECK(enc.vocabulary(0).tokens() == Strings{"u1", "u2", "u3"});
  CHECK(enc.vocabulary(2).tokens() == Strings{"Action", "Comedy", "Drama"});
  // Sequences count only the last 2 items of each row: "a|b|c" gives b, c.
  CHECK(enc.vocabulary(3).tokens() == Strings{"b", "c", "a"});
  CHECK(enc.vocabulary(4).tokens() == Strings{"toy", "story", "the", "heat", "wave"});
  CHECK(enc.dense_stats(5).mean == 35);
  CHECK(enc.dense_stats(5).sd == Approx(11.180339887498949));  // population std of 20, 30, 40, 50
  CHECK(enc.target(1).mean == 3);                               // ratings 4, 2, 3 (row 2 unlabelled)
  CHECK(enc.target(1).sd == Approx(0.816496580927726));
  CHECK(enc.classes(2) == Strings{"2", "10"});  // numeric order, not "10" < "2"

  const Batch<float> b = enc.transform<float>(train, nullptr, true);
  REQUIRE(b.size == 4);
  CHECK(b.ids[0] == std::vector<index_t>{1, 2, 1, 3});
  CHECK(b.ids[1][0] == index_t(data::hash_string("i1")));
  CHECK(b.ids[1][3] == b.ids[1][0]);
  CHECK(b.bags[0].offsets == std::vector<index_t>{0, 2, 2, 3, 5});
  CHECK(b.bags[0].ids == std::vector<index_t>{1, 2, 2, 3, 1});
  // hist (max_len 2, the last items): b|c, b, (empty), c|a
  CHECK(b.sequences[0].lengths == std::vector<index_t>{2, 1, 0, 2});
  CHECK(b.sequences[0].ids == std::vector<index_t>{1, 2, 1, 0, 0, 0, 2, 3});
  // title (max_len 3, the first words)
  CHECK(b.sequences[1].lengths == std::vector<index_t>{3, 1, 2, 0});
  CHECK(b.sequences[1].ids == std::vector<index_t>{1, 2, 3, 4, 0, 0, 4, 5, 0, 0, 0, 0});
  const float z = float(1 / 11.180339887498949);
  CHECK(b.dense[0][0] == Approx(-15 * z));
  CHECK(b.dense[0][3] == Approx(15 * z));
  CHECK(b.labels[0] == std::vector<float>{1, 0, 1, 0});
  CHECK(b.label_mask[0] == std::vector<std::uint8_t>{1, 1, 1, 1});
  CHECK(b.label_mask[1] == std::vector<std::uint8_t>{1, 0, 1, 1});
  CHECK(b.labels[1][0] == Approx(1 / 0.816496580927726));
  CHECK(b.labels[1][1] == 0);  // masked, not a label
  CHECK(b.label_mask[2] == std::vector<std::uint8_t>{1, 1, 1, 0});
  CHECK(b.labels[2][0] == 1);  // "10" is class 1
  CHECK(b.labels[2][1] == 0);  // "2" is class 0

  // Unseen values go to row 0; an empty id cell too.
  const Batch<float> v = enc.transform<float>(valid, nullptr, true);
  CHECK(v.ids[0] == std::vector<index_t>{0, 0});
  CHECK(v.ids[1][1] == index_t(data::hash_string("i7")));
  CHECK(v.bags[0].ids == std::vector<index_t>{0, 2});
  CHECK(v.bags[0].offsets == std::vector<index_t>{0, 2, 2});
  CHECK(v.sequences[0].ids == std::vector<index_t>{0, 3, 0, 0});  // z unseen, a; then an empty row
  CHECK(v.sequences[1].ids == std::vector<index_t>{0, 4, 0, 0, 0, 0});  // alien unseen, heat
  CHECK(v.label_mask[0] == std::vector<std::uint8_t>{1, 0});

  // Selected rows, in the order given.
  const std::vector<std::size_t> rows = {3, 0};
  const Batch<float> sel = enc.transform<float>(train, &rows, true);
  CHECK(sel.ids[0] == std::vector<index_t>{3, 1});

  // The model configuration follows the encoder.
  TransformerConfig tf;
  tf.d_model = 8;
  tf.heads = 2;
  const FeatureSpec fs = enc.feature_spec(8, tf);
  REQUIRE(fs.ids.size() == 2);
  CHECK(fs.ids[0].vocab == 4);
  CHECK(fs.ids[1].hash_buckets == 50);
  CHECK(fs.bags[0].vocab == 4);
  CHECK(fs.sequences[0].max_len == 2);
  CHECK(fs.sequences[1].vocab == 6);
  const auto tasks = enc.task_specs({4});
  CHECK(tasks[2].num_classes == 2);
  CHECK(tasks[1].weight == 0.5);
}

TEST_CASE("encoder: min_count sends rare tokens to the OOV row", "[csv][encoder]") {
  data::TabularEncoder enc(full_schema(2));
  enc.fit(CsvTable::parse(kTrain, "train.csv"));
  CHECK(enc.vocabulary(0).tokens() == Strings{"u1"});
  CHECK(enc.vocabulary(2).tokens() == Strings{"Action", "Comedy"});
  CHECK(enc.vocabulary(4).tokens() == Strings{"heat"});
}

TEST_CASE("encoder: training rows only — a split's other rows do not enter the vocabulary", "[csv][encoder]") {
  data::TabularEncoder enc(full_schema());
  const CsvTable t = CsvTable::parse(kTrain, "train.csv");
  const std::vector<std::size_t> rows = {0, 1};
  enc.fit(t, &rows);
  CHECK(enc.vocabulary(0).tokens() == Strings{"u1", "u2"});
  CHECK(enc.dense_stats(5).mean == 25);
  const Batch<float> rest = enc.transform<float>(t, nullptr, true);
  CHECK(rest.ids[0][3] == 0);  // u3 is only in row 3
}

TEST_CASE("encoder: bad cells are errors naming the file, line and column", "[csv][encoder]") {
  const CsvTable train = CsvTable::parse(kTrain, "train.csv");
  data::TabularEncoder enc(full_schema());
  enc.fit(train);
  const std::string header = "user,item,genres,hist,title,age,click,rating,cls\n";
  testing::require_error(
      [&] { enc.transform<float>(CsvTable::parse(header + "u1,i1,,,,20,1,3,2\nu1,i1,,,,20,1,3,7\n", "v.csv"), nullptr, true); },
      {"'v.csv' line 3, column 'cls' (#9)", "class '7'", "not seen in the training data", "'2', '10'"});
  testing::require_error(
      [&] { enc.transform<float>(CsvTable::parse(header + "u1,i1,,,,abc,1,3,2\n", "v.csv"), nullptr, true); },
      {"'v.csv' line 2, column 'age' (#6)", "expected a finite number", "'abc'"});
  testing::require_error(
      [&] { enc.transform<float>(CsvTable::parse(header + "u1,i1,,,,,1,3,2\n", "v.csv"), nullptr, true); },
      {"line 2, column 'age'", "empty cell"});
  testing::require_error(
      [&] { enc.transform<float>(CsvTable::parse(header + "u1,i1,,,,1,yes,3,2\n", "v.csv"), nullptr, true); },
      {"line 2, column 'click' (#7)", "0, 1, true or false", "'yes'"});
  testing::require_error(
      [&] { enc.transform<float>(CsvTable::parse(header + "u1,i1,,,,1,1,4.5x,2\n", "v.csv"), nullptr, true); },
      {"line 2, column 'rating' (#8)", "'4.5x'"});
  testing::require_error(
      [&] { enc.transform<float>(CsvTable::parse("user,item,genres,hist,title,click\nu1,i1,,,,1\n", "v.csv"), nullptr, true); },
      {"'v.csv' line 1", "no column 'age'", "--dense age"});
  // Predicting needs no task columns at all.
  const Batch<float> p =
      enc.transform<float>(CsvTable::parse("user,item,genres,hist,title,age\nu2,i9,Drama,,,30\n", "p.csv"), nullptr, false);
  CHECK(p.size == 1);
  CHECK(p.ids[0][0] == 2);
  // Fitting checks too, before any training.
  testing::require_error([&] { data::TabularEncoder(full_schema()).fit(CsvTable::parse(header, "h.csv")); },
                         {"'h.csv'", "no training rows"});
  testing::require_error(
      [&] {
        data::TabularEncoder(full_schema()).fit(CsvTable::parse(header + "u1,i1,,,,20,1,,a\nu2,i1,,,,20,0,,a\n", "one.csv"));
      },
      {"'one.csv'", "rating", "no label"});
  testing::require_error(
      [&] { data::TabularEncoder(full_schema()).fit(CsvTable::parse(header + "u1,i1,,,,20,1,2,a\n", "one.csv")); },
      {"'one.csv'", "at least 2 classes", "found 1"});
}

TEST_CASE("encoder: a column declared twice is rejected", "[csv][encoder]") {
  data::TabularSchema s;
  s.features = {data::parse_feature_flag(data::ColumnKind::Id, "user", "--id"),
                data::parse_feature_flag(data::ColumnKind::Dense, "user", "--dense")};
  s.tasks = {data::parse_task_flag("click:binary", "--task")};
  testing::require_error([&] { data::TabularEncoder e(s); }, {"'user' is declared twice", "--id user", "--dense user"});
}

TEST_CASE("encoder: the JSON form round-trips and encodes identically", "[csv][encoder]") {
  const CsvTable train = CsvTable::parse(kTrain, "train.csv"), valid = CsvTable::parse(kValid, "valid.csv");
  data::TabularEncoder enc(full_schema());
  enc.fit(train);
  const std::string text = enc.to_json().dump();
  const data::TabularEncoder back = data::TabularEncoder::from_json(json::parse(text));
  CHECK(back.to_json().dump() == text);
  const Batch<float> a = enc.transform<float>(valid, nullptr, true), b = back.transform<float>(valid, nullptr, true);
  CHECK(a.ids == b.ids);
  CHECK(a.bags[0].ids == b.bags[0].ids);
  CHECK(a.sequences[1].ids == b.sequences[1].ids);
  CHECK(a.dense == b.dense);
  CHECK(a.labels == b.labels);
  CHECK(a.label_mask == b.label_mask);
  // A token that is not UTF-8 is stored as hex and comes back byte for byte.
  data::TabularSchema s;
  s.features = {data::parse_feature_flag(data::ColumnKind::Id, "u", "--id")};
  s.tasks = {data::parse_task_flag("y:binary", "--task")};
  data::TabularEncoder latin(s);
  latin.fit(CsvTable::parse("u,y\ncaf\xE9,1\nx,0\n", "latin1.csv"));
  const auto j = latin.to_json();
  CHECK(j.dump().find("\"hex\":\"636166e9\"") != std::string::npos);
  CHECK(data::TabularEncoder::from_json(j).vocabulary(0).tokens() == Strings{"caf\xE9", "x"});
}

// ---- hostile and messy inputs --------------------------------------------------------------------

TEST_CASE("csv: a wide header followed by many blank lines reserves for the data, not columns x lines", "[csv]") {
  // 100k columns and 100k blank lines (about 790 KB): reserving columns x
  // line breaks cells asked for about 120 GB and failed with std::bad_alloc.
  std::string text;
  for (int c = 0; c < 100000; ++c) text += (c ? ",c" : "c") + std::to_string(c);
  text += std::string(100000, '\n');
  const CsvTable t = CsvTable::parse(std::move(text), "wide.csv");
  CHECK(t.cols() == 100000);
  CHECK(t.rows() == 0);
  // Rows after many blank lines still land on the right line.
  const CsvTable u = CsvTable::parse("a,b\n" + std::string(50000, '\n') + "1,2\n", "blank.csv");
  REQUIRE(u.rows() == 1);
  CHECK(u.line(0) == 50002);
  CHECK(u.cell(0, 1) == "2");
}

TEST_CASE("standardizer: huge finite values and large offsets (Welford on scaled values)", "[csv][dense]") {
  // Two passes over raw values overflowed the squared deviations to inf, and
  // fit() then silently used std 1.
  const auto h = data::Standardizer::fit({1e200, -1e200});
  CHECK(h.mean == 0);
  CHECK(h.sd == Approx(1e200));
  const auto h2 = data::Standardizer::fit({1e300, 3e300});
  CHECK(h2.mean == Approx(2e300));
  CHECK(h2.sd == Approx(1e300));
  CHECK(std::isfinite(h2.apply(3e300)));
  CHECK(h2.apply(3e300) == Approx(1));
  // A large common offset loses no precision (timestamps, say).
  const auto t = data::Standardizer::fit({1e9 + 1, 1e9 + 2, 1e9 + 3, 1e9 + 4});
  CHECK(t.mean == Approx(1e9 + 2.5));
  CHECK(t.sd == Approx(1.118033988749895).epsilon(1e-6));
  CHECK(data::Standardizer::fit({0, 0}).sd == 1);
  CHECK(data::Standardizer::fit({1e200, 1e200, 1e200}).sd == 1);
  testing::require_error([] { data::Standardizer::fit({1, std::numeric_limits<double>::infinity()}); },
                         {"Standardizer::fit", "finite", "#2"});
}

namespace {
data::TabularSchema small_schema(const char* dense = "age") {
  data::TabularSchema s;
  s.features = {data::parse_feature_flag(data::ColumnKind::Id, "user", "--id"),
                data::parse_feature_flag(data::ColumnKind::Id, "item:8", "--id"),
                data::parse_feature_flag(data::ColumnKind::Bag, "genres:|", "--bag"),
                data::parse_feature_flag(data::ColumnKind::Dense, dense, "--dense")};
  s.tasks = {data::parse_task_flag("click:binary", "--task"), data::parse_task_flag("rating:regression", "--task"),
             data::parse_task_flag("cls:multiclass", "--task")};
  return s;
}
}  // namespace

TEST_CASE("encoder: values beyond float range are errors naming the file, line and column", "[csv][encoder]") {
  const std::string h = "user,item,genres,age,click,rating,cls\n";
  const std::string ok = "u1,i1,A,20,1,3,a\nu2,i2,B,30,0,4,b\n";
  testing::require_error([&] { data::TabularEncoder(small_schema()).fit(CsvTable::parse(h + ok + "u3,i1,A,1e200,1,3,a\n", "big.csv")); },
                         {"'big.csv' line 4, column 'age' (#4)", "float range", "'1e200'"});
  testing::require_error([&] { data::TabularEncoder(small_schema()).fit(CsvTable::parse(h + ok + "u3,i1,A,2,1,-1e39,a\n", "big.csv")); },
                         {"'big.csv' line 4, column 'rating' (#6)", "float range", "'-1e39'"});
  testing::require_error([&] { data::TabularEncoder(small_schema()).fit(CsvTable::parse(h + ok + "u3,i1,A,1e400,1,3,a\n", "big.csv")); },
                         {"'big.csv' line 4, column 'age'", "'1e400'"});
  data::TabularEncoder enc(small_schema());
  enc.fit(CsvTable::parse(h + ok, "t.csv"));
  testing::require_error([&] { enc.transform<float>(CsvTable::parse(h + "u1,i1,A,-4e38,1,3,a\n", "p.csv"), nullptr, false); },
                         {"'p.csv' line 2, column 'age'", "float range", "'-4e38'"});
  // The largest float itself is fine.
  const Batch<float> b = enc.transform<float>(CsvTable::parse(h + "u1,i1,A,3.4e38,1,3,a\n", "p.csv"), nullptr, false);
  CHECK(std::isfinite(b.dense[0][0]));
}

TEST_CASE("encoder: NA, NaN, N/A, null and the empty cell are missing values", "[csv][encoder]") {
  const std::string h = "user,item,genres,age,click,rating,cls\n";
  const CsvTable train = CsvTable::parse(h +
                                             "u1,i1,A|B,20,1,3,a\n"
                                             "NA,NA,NA,30,NA,NaN,N/A\n"
                                             "u2,i2,B,40,null,,null\n"
                                             " N/A ,i1,NaN,50,0, NA ,b\n",
                                         "na.csv");
  data::TabularEncoder enc(small_schema());
  enc.fit(train);
  CHECK(enc.vocabulary(0).tokens() == Strings{"u1", "u2"});  // missing is not a token
  CHECK(enc.vocabulary(2).tokens() == Strings{"A", "B"});
  CHECK(enc.classes(2) == Strings{"a", "b"});
  CHECK(enc.target(1).mean == 3);  // the only label
  const Batch<float> b = enc.transform<float>(train, nullptr, true);
  CHECK(b.ids[0] == std::vector<index_t>{1, 0, 2, 0});  // missing -> the OOV row
  CHECK(b.ids[1][1] == index_t(data::hash_string("")));  // a hashed missing id hashes "" like an empty cell
  CHECK(b.bags[0].offsets == std::vector<index_t>{0, 2, 2, 3, 3});  // missing -> an empty bag
  CHECK(b.label_mask[0] == std::vector<std::uint8_t>{1, 0, 0, 1});
  CHECK(b.label_mask[1] == std::vector<std::uint8_t>{1, 0, 0, 0});
  CHECK(b.label_mask[2] == std::vector<std::uint8_t>{1, 0, 0, 1});
  // In a dense column (without impute) missing is an error naming the row.
  testing::require_error(
      [&] { enc.transform<float>(CsvTable::parse(h + "u1,i1,A,1,1,3,a\nu1,i1,A,NA,1,3,a\n", "gap.csv"), nullptr, true); },
      {"'gap.csv' line 3, column 'age' (#4)", "missing value 'NA'", "--dense age:impute"});
  testing::require_error(
      [&] { data::TabularEncoder(small_schema()).fit(CsvTable::parse(h + "u1,i1,A,null,1,3,a\n", "gap.csv")); },
      {"'gap.csv' line 2, column 'age'", "missing value 'null'"});
}

TEST_CASE("encoder: na_values replace the default set", "[csv][encoder]") {
  CHECK(data::parse_na_values("NA,-999, ?") == Strings{"NA", "-999", "?"});
  CHECK(data::parse_na_values("").empty());
  CHECK(data::default_na_values() == Strings{"NA", "N/A", "NaN", "nan", "null", "NULL"});
  const std::string h = "user,item,genres,age,click,rating,cls\n";
  data::TabularSchema s = small_schema();
  s.na_values = data::parse_na_values("-999");
  data::TabularEncoder enc(s);
  testing::require_error([&] { enc.fit(CsvTable::parse(h + "u1,i1,A,-999,1,3,a\n", "c.csv")); },
                         {"line 2, column 'age'", "missing value '-999'"});
  testing::require_error([&] { enc.fit(CsvTable::parse(h + "u1,i1,A,NA,1,3,a\n", "c.csv")); },
                         {"line 2, column 'age'", "expected a finite number", "'NA'"});  // NA is a value now
  enc.fit(CsvTable::parse(h + "NA,i1,A,1,-999,3,a\nu2,i1,A,2,1,3,b\n", "c.csv"));
  CHECK(enc.vocabulary(0).tokens() == Strings{"NA", "u2"});
  CHECK(enc.transform<float>(CsvTable::parse(h + "u2,i1,A,1,-999,,a\n", "c.csv"), nullptr, true).label_mask[0][0] == 0);
}

TEST_CASE("encoder: --dense COL:impute uses the training mean and an is_missing column, at predict time too", "[csv][encoder]") {
  auto f = data::parse_feature_flag(data::ColumnKind::Dense, "age:impute", "--dense");
  CHECK((f.column == "age" && f.impute && f.flag() == "--dense age:impute"));
  testing::require_error([] { data::parse_feature_flag(data::ColumnKind::Dense, "age:mean", "--dense"); },
                         {"--dense 'age:mean'", "COL:impute"});
  const std::string h = "user,item,genres,age,click,rating,cls\n";
  const CsvTable train = CsvTable::parse(h +
                                             "u1,i1,A,20,1,3,a\n"
                                             "u1,i1,A,NA,1,3,a\n"
                                             "u1,i1,A,40,0,3,b\n"
                                             "u1,i1,A,,0,3,b\n",
                                         "imp.csv");
  data::TabularEncoder enc(small_schema("age:impute"));
  enc.fit(train);
  CHECK(enc.dense_stats(3).mean == 30);  // of the values present
  CHECK(enc.dense_stats(3).sd == 10);
  const Batch<float> b = enc.transform<float>(train, nullptr, true);
  // Two columns per row: the standardised value (0 = the mean when missing), is_missing.
  CHECK(b.dense[0] == std::vector<float>{-1, 0, 0, 1, 1, 0, 0, 1});
  TransformerConfig tf;
  tf.d_model = 4;
  CHECK(enc.feature_spec(4, tf).dense[0].dim == 2);
  // Saved with the preprocessing; the loaded encoder imputes the same way.
  const std::string text = enc.to_json().dump();
  CHECK(text.find("\"impute\":true") != std::string::npos);
  CHECK(text.find("\"na_values\":[\"NA\",\"N/A\",\"NaN\",\"nan\",\"null\",\"NULL\"]") != std::string::npos);
  const data::TabularEncoder back = data::TabularEncoder::from_json(json::parse(text));
  CHECK(back.schema().features[3].impute);
  const CsvTable pred = CsvTable::parse("user,item,genres,age\nu1,i1,A,null\nu1,i1,A,50\n", "pred.csv");
  CHECK(back.transform<float>(pred, nullptr, false).dense[0] == std::vector<float>{0, 1, 2, 0});
  // No value at all in training: no mean to impute.
  testing::require_error(
      [&] { data::TabularEncoder(small_schema("age:impute")).fit(CsvTable::parse(h + "u1,i1,A,NA,1,3,a\n", "none.csv")); },
      {"'none.csv'", "dense column 'age'", "no value"});
}

TEST_CASE("encoder: version 1 preprocessing (before missing values) keeps its meaning", "[csv][encoder]") {
  const data::TabularEncoder v1 = data::TabularEncoder::from_json(json::parse(
      R"({"format":"mtrec.tabular","version":1,"min_count":1,)"
      R"("features":[{"kind":"id","column":"u","buckets":0,"vocab":["NA","b"]},{"kind":"dense","column":"x","mean":1.0,"std":2.0}],)"
      R"("tasks":[{"column":"y","type":"binary","weight":1.0}]})"));
  CHECK(v1.schema().na_values.empty());
  const Batch<float> b = v1.transform<float>(CsvTable::parse("u,x,y\nNA,3,\n", "v1.csv"), nullptr, true);
  CHECK(b.ids[0][0] == 1);  // "NA" was a token then
  CHECK(b.label_mask[0][0] == 0);
  testing::require_error([&] { data::TabularEncoder::from_json(json::parse(R"({"format":"mtrec.tabular","version":4})")); },
                         {"version 1, 2 or 3", "got 4", "newer mtrec"});
}

TEST_CASE("encoder: column names and missing-value markers must be valid UTF-8, checked when declared", "[csv][encoder]") {
  data::TabularSchema s;
  s.features = {data::parse_feature_flag(data::ColumnKind::Dense, "caf\xE9", "--dense")};
  s.tasks = {data::parse_task_flag("y:binary", "--task")};
  testing::require_error([&] { data::TabularEncoder e(s); }, {"--dense caf\\xE9", "'caf\\xE9'", "not valid UTF-8", "byte #4"});
  s.features = {data::parse_feature_flag(data::ColumnKind::Dense, "x", "--dense")};
  s.tasks = {data::parse_task_flag("\xC3(:binary", "--task")};
  testing::require_error([&] { data::TabularEncoder e(s); }, {"--task \\xC3(:binary", "not valid UTF-8", "byte #1"});
  s.tasks = {data::parse_task_flag("y:binary", "--task")};
  s.na_values = {"\xFF"};
  testing::require_error([&] { data::TabularEncoder e(s); }, {"missing-value marker", "not valid UTF-8"});
  s.na_values = {"caf\xC3\xA9"};  // UTF-8 "café" is fine
  data::TabularEncoder ok(s);
}

TEST_CASE("flags: counts beyond their limits are errors, not truncated", "[csv][flags]") {
  using data::ColumnKind;
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Id, "item:99999999999999", "--id"); },
                         {"--id 'item:99999999999999'", "<= 1099511627776"});
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Id, "item:99999999999999999999", "--id"); },
                         {"--id 'item:99999999999999999999'", "hash bucket count"});
  testing::require_error([] { data::parse_feature_flag(ColumnKind::Text, "title:4294967297", "--text"); },
                         {"--text 'title:4294967297'", "<= 1048576"});
  CHECK(data::parse_feature_flag(ColumnKind::Id, "item:1099511627776", "--id").buckets == (index_t(1) << 40));
}
