// mtrec: from CSV columns to a model — declared columns, preprocessing
// learned from the training rows, and batches for any file with the same
// columns.
//
//   data::TabularSchema s;
//   s.features = {data::parse_feature_flag(data::ColumnKind::Id, "user", "--id"),
//                 data::parse_feature_flag(data::ColumnKind::Bag, "genres:|", "--bag")};
//   s.tasks = {data::parse_task_flag("click:binary", "--task")};
//   data::TabularEncoder enc(s);
//   enc.fit(train_table);                      // vocabularies, mean/std, classes
//   Batch<float> train = enc.transform<float>(train_table, nullptr, true);
//   ModelConfig c;
//   c.features = enc.feature_spec(16, encoder_config);
//   c.tasks = enc.task_specs({32});
//
// What is learned from the training rows only, so that validation and test
// rows are encoded exactly as unseen data would be at serving time:
//   id (vocabulary), bag, seq, text   token -> row; row 0 is the OOV row for
//                                     tokens never seen (or seen fewer than
//                                     min_count times) in training
//   id with buckets                   nothing: FNV-1a of the text, then the
//                                     model's own salted hash into the buckets
//   dense                             mean and std: x -> (x - mean) / std
//   regression task                   mean and std of the labels: the model
//                                     learns standardised targets (one scale
//                                     for every task and a well-placed output
//                                     bias at initialisation); target(k)
//                                     maps predictions and errors back
//   multiclass task                   the class names, sorted (numerically
//                                     when all are numbers); unknown classes
//                                     outside training are an error
// Missing values: a cell that is empty or, after trimming blanks, equal to
// one of the schema's na_values (by default NA, N/A, NaN, nan, null, NULL,
// as pandas and R write them) is missing:
//   task                              no label: the row is masked for that
//                                     task (not treated as 0)
//   id                                the OOV row 0 (a hashed id hashes ""
//                                     for every missing marker, so "NA" and
//                                     "" are the same missing value)
//   bag, seq, text                    an empty list
//   dense                             an error naming the file, line and
//                                     column, unless the column is declared
//                                     with impute (--dense COL:impute): then
//                                     the training mean (0 once standardised)
//                                     and a second input column is_missing
//                                     (1 for a missing cell, else 0), at
//                                     training and at prediction time alike
// Dense values and regression labels must be finite and within float range
// (|x| <= 3.4e38): the model computes in float.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mtrec/core/parameters.hpp"
#include "mtrec/io/csv.hpp"
#include "mtrec/io/json.hpp"
#include "mtrec/model/config.hpp"

namespace mtrec {
namespace data {

enum class ColumnKind { Id, Bag, Sequence, Text, Dense };

// The flag that declares the kind ("id" for --id).
inline const char* column_kind_name(ColumnKind k) {
  switch (k) {
    case ColumnKind::Id: return "id";
    case ColumnKind::Bag: return "bag";
    case ColumnKind::Sequence: return "seq";
    case ColumnKind::Text: return "text";
    case ColumnKind::Dense: return "dense";
  }
  return "?";
}

struct FeatureColumn {
  ColumnKind kind = ColumnKind::Id;
  std::string column;
  index_t buckets = 0;  // Id: > 0 hashes the values into this many rows; 0 = a vocabulary
  char sep = '|';       // Bag, Sequence: the item separator
  index_t max_len = 0;  // Sequence (keeps the last max_len items), Text (the first max_len words)
  bool impute = false;  // Dense: a missing cell takes the training mean, plus an is_missing input column
  bool item_side = false;  // describes the item (--item-fields), not the user; saved in the checkpoint

  // How it was declared, for messages: "--seq history:|:50".
  std::string flag() const {
    std::string s = std::string("--") + column_kind_name(kind) + " " + column;
    if (kind == ColumnKind::Id && buckets > 0) s += ":" + std::to_string(buckets);
    if (kind == ColumnKind::Bag || kind == ColumnKind::Sequence) s += std::string(":") + sep;
    if (kind == ColumnKind::Sequence || kind == ColumnKind::Text) s += ":" + std::to_string(max_len);
    if (kind == ColumnKind::Dense && impute) s += ":impute";
    return s;
  }
};

struct TaskColumn {
  std::string column;
  TaskType type = TaskType::Binary;
  double weight = 1.0;
  TaskLoss loss = TaskLoss::Default;  // BPR for --task COL:bpr (a binary task)
  // Retrieval: the ID feature whose vocabulary and table the task shares
  // (--task next:retrieval:item); empty = its own vocabulary of COL's values.
  std::string target_feature;
  std::string flag() const {
    std::string s = "--task " + column + ":" + (loss == TaskLoss::BPR ? "bpr" : task_type_name(type));
    if (!target_feature.empty()) s += ":" + target_feature;
    return s;
  }
};

// The cell texts that mean "missing" besides the empty cell (which always
// does): what pandas' read_csv and R's read.csv/write.csv use for NA.
inline std::vector<std::string> default_na_values() { return {"NA", "N/A", "NaN", "nan", "null", "NULL"}; }

struct TabularSchema {
  std::vector<FeatureColumn> features;
  std::vector<TaskColumn> tasks;
  index_t min_count = 1;  // tokens seen fewer times in training go to the OOV row
  // Cells that mean "missing" (compared after trimming blanks, case
  // sensitive); the empty cell is missing whatever this holds.
  std::vector<std::string> na_values = default_na_values();
};

// Parses the argument of --na-values: a comma-separated list that replaces
// the default set ("" = only the empty cell is missing). Items are trimmed of
// blanks; empty items are skipped.
inline std::vector<std::string> parse_na_values(std::string_view text) {
  std::vector<std::string> out;
  for_each_item(text, ',', [&](std::string_view s) {
    if (std::find(out.begin(), out.end(), s) == out.end()) out.emplace_back(s);
  });
  return out;
}

constexpr index_t kDefaultSequenceLength = 50;
constexpr index_t kDefaultTextLength = 20;
// Upper bounds of the counts in flags, checked when the flag is parsed (a
// larger value is an error, never truncated): far beyond what fits a machine.
constexpr index_t kMaxHashBuckets = index_t(1) << 40;
constexpr index_t kMaxLength = index_t(1) << 20;

// ---- flag syntax -----------------------------------------------------------------------
//
// Column names end at the first ':' (so they cannot contain one):
//   --id COL[:buckets]   --bag COL:SEP   --seq COL:SEP[:maxlen]   --text COL[:maxlen]
//   --dense COL          --task COL:binary|regression|multiclass[:weight]
// SEP is one character, or one of the words tab, space, comma, pipe,
// semicolon, colon (for characters a shell makes awkward).

namespace detail {
[[noreturn]] inline void bad_flag(const char* flag, std::string_view text, const std::string& why) {
  fail("parse_flag", flag, " '", text, "': ", why);
}
inline index_t positive_count(const char* flag, std::string_view text, std::string_view v, const char* what,
                              index_t hi) {
  long long x = 0;
  if (!parse_integer(v, x) || x < 1 || x > hi)
    bad_flag(flag, text, std::string("expected ") + what + " to be an integer >= 1 and <= " + std::to_string(hi) +
                             " but got '" + std::string(v) + "'");
  return index_t(x);
}
// A string for a message, with bytes that are not printable ASCII written as
// \xHH (so a message about bad UTF-8 is itself valid text).
inline std::string escaped(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string o;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      o += char(c);
    } else {
      o += "\\x";
      o += hex[c >> 4];
      o += hex[c & 15];
    }
  }
  return o;
}
// The byte offset of the first invalid UTF-8 sequence of s, or npos.
inline std::size_t invalid_utf8_at(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = json::detail::utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}
// Splits "COL:rest" at the first ':'.
inline std::pair<std::string_view, std::string_view> split_column(const char* flag, std::string_view text,
                                                                  bool rest_required) {
  const std::size_t c = text.find(':');
  const std::string_view col = text.substr(0, c);
  if (col.empty()) bad_flag(flag, text, "expected a column name before ':'");
  if (c == std::string_view::npos) {
    if (rest_required) bad_flag(flag, text, "expected COL:SEP (a column name, ':' and a separator)");
    return {col, {}};
  }
  return {col, text.substr(c + 1)};
}
// Reads SEP at the front of `rest` and returns what follows it.
inline std::string_view take_separator(const char* flag, std::string_view text, std::string_view rest, char& sep) {
  static const std::pair<const char*, char> names[] = {{"tab", '\t'},   {"space", ' '},     {"comma", ','},
                                                        {"pipe", '|'},   {"semicolon", ';'}, {"colon", ':'}};
  for (const auto& n : names) {
    const std::string_view w(n.first);
    if (rest.substr(0, w.size()) == w && (rest.size() == w.size() || rest[w.size()] == ':')) {
      sep = n.second;
      return rest.substr(w.size());
    }
  }
  if (rest.empty() || (rest.size() > 1 && rest[1] != ':'))
    bad_flag(flag, text, "expected one separator character (or tab, space, comma, pipe, semicolon, colon) after '" +
                             std::string(text.substr(0, text.size() - rest.size())) + "'");
  if (rest[0] == '"' || rest[0] == '\n' || rest[0] == '\r') bad_flag(flag, text, "a quote or line break cannot separate items");
  sep = rest[0];
  return rest.substr(1);
}
}  // namespace detail

// Parses the argument of --id, --bag, --seq, --text or --dense; `flag` names
// it in messages.
inline FeatureColumn parse_feature_flag(ColumnKind kind, std::string_view text, const char* flag) {
  FeatureColumn f;
  f.kind = kind;
  const bool needs_sep = kind == ColumnKind::Bag || kind == ColumnKind::Sequence;
  const auto parts = detail::split_column(flag, text, needs_sep);
  f.column = std::string(parts.first);
  std::string_view rest = parts.second;
  switch (kind) {
    case ColumnKind::Id:
      if (!rest.empty() || text.find(':') != std::string_view::npos)
        f.buckets = detail::positive_count(flag, text, rest, "the hash bucket count", kMaxHashBuckets);
      break;
    case ColumnKind::Bag:
      rest = detail::take_separator(flag, text, rest, f.sep);
      if (!rest.empty()) detail::bad_flag(flag, text, "expected COL:SEP with nothing after the separator");
      break;
    case ColumnKind::Sequence:
      rest = detail::take_separator(flag, text, rest, f.sep);
      f.max_len = kDefaultSequenceLength;
      if (!rest.empty()) f.max_len = detail::positive_count(flag, text, rest.substr(1), "maxlen", kMaxLength);
      break;
    case ColumnKind::Text:
      f.max_len = kDefaultTextLength;
      if (text.find(':') != std::string_view::npos)
        f.max_len = detail::positive_count(flag, text, rest, "maxlen", kMaxLength);
      break;
    case ColumnKind::Dense:
      if (text.find(':') != std::string_view::npos) {
        if (rest != "impute")
          detail::bad_flag(flag, text, "expected COL or COL:impute (column names cannot contain ':') but got '" +
                                           std::string(rest) + "' after the column name");
        f.impute = true;
      }
      break;
  }
  return f;
}

// Parses the argument of --task:
//   COL:binary|regression|multiclass|bpr[:weight]
//   COL:retrieval[:FEATURE][:weight]
// bpr is a binary task trained with the pairwise BPR loss. A retrieval
// task's label is a raw item value; with FEATURE (an --id column) it shares
// that feature's vocabulary and embedding table, without it builds its own
// vocabulary from COL.
inline TaskColumn parse_task_flag(std::string_view text, const char* flag) {
  TaskColumn t;
  const auto parts = detail::split_column(flag, text, true);
  t.column = std::string(parts.first);
  std::string_view rest = parts.second;
  std::size_t c = rest.find(':');
  const std::string_view type = rest.substr(0, c);
  if (type == "binary") t.type = TaskType::Binary;
  else if (type == "regression") t.type = TaskType::Regression;
  else if (type == "multiclass") t.type = TaskType::MultiClass;
  else if (type == "bpr") t.type = TaskType::Binary, t.loss = TaskLoss::BPR;
  else if (type == "retrieval") t.type = TaskType::Retrieval;
  else
    detail::bad_flag(flag, text,
                     "expected the type binary, regression, multiclass, bpr or retrieval but got '" + std::string(type) + "'");
  rest = c == std::string_view::npos ? std::string_view() : rest.substr(c + 1);
  if (c != std::string_view::npos && t.type == TaskType::Retrieval) {
    c = rest.find(':');
    const std::string_view first = rest.substr(0, c);
    double w = 0;
    if (c == std::string_view::npos && parse_number(first, w)) {
      // COL:retrieval:WEIGHT
    } else {
      if (first.empty()) detail::bad_flag(flag, text, "expected a feature name after 'retrieval:'");
      t.target_feature = std::string(first);
      rest = c == std::string_view::npos ? std::string_view() : rest.substr(c + 1);
      if (c == std::string_view::npos) return t;
    }
  } else if (c == std::string_view::npos) {
    return t;
  }
  if (!parse_number(rest, t.weight) || t.weight < 0)
    detail::bad_flag(flag, text, "expected a weight >= 0 but got '" + std::string(rest) + "'");
  return t;
}

// ---- raw rows ------------------------------------------------------------------------------

// Rows of raw values for TabularEncoder::encode (and MultiTaskModel::encode):
// what a request to a model server holds. A value is the text a CSV cell
// would hold ("12", "3.5", "Action|Comedy"), or a list of items (a bag or a
// sequence as separate values; a text's words), or absent. A feature absent
// from a row takes its missing value (the OOV row, an empty list, or an
// imputed dense value); an empty text or one of the na_values is missing,
// exactly as in a CSV file.
//
//   data::RawRows rows;
//   auto r = rows.add_row();
//   rows.set(r, "user", "12");
//   rows.set_list(r, "history", {"31", "1029"});
//   Batch<float> b = model.encode(rows);
class RawRows {
 public:
  struct Value {
    std::string column;
    std::string text;
    std::vector<std::string> items;
    bool is_list = false;
  };

  std::size_t rows() const { return rows_.size(); }
  bool empty() const { return rows_.empty(); }
  // Appends a row with no values and returns its index.
  std::size_t add_row() {
    rows_.emplace_back();
    return rows_.size() - 1;
  }
  void set(std::size_t row, std::string column, std::string text) {
    Value& v = slot(row, std::move(column));
    v.text = std::move(text);
    v.items.clear();
    v.is_list = false;
  }
  void set_list(std::size_t row, std::string column, std::vector<std::string> items) {
    Value& v = slot(row, std::move(column));
    v.text.clear();
    v.items = std::move(items);
    v.is_list = true;
  }
  // Copies every value of row `src_row` of `src` into row `row` (a user's
  // features into a candidate row, say), replacing values of the same column.
  void set_all(std::size_t row, const RawRows& src, std::size_t src_row) {
    for (const Value& v : src.values(src_row)) {
      Value& d = slot(row, v.column);
      d = v;
    }
  }
  const std::vector<Value>& values(std::size_t row) const {
    check(row < rows_.size(), "RawRows", "row ", row, " expected in [0, ", rows_.size(), ")");
    return rows_[row];
  }
  // The value of `column` in `row`, or null when the row does not set it.
  const Value* find(std::size_t row, std::string_view column) const {
    for (const Value& v : values(row))
      if (v.column == column) return &v;
    return nullptr;
  }

 private:
  Value& slot(std::size_t row, std::string column) {
    check(row < rows_.size(), "RawRows::set", "row ", row, " expected in [0, ", rows_.size(), ")");
    for (Value& v : rows_[row])
      if (v.column == column) return v;
    rows_[row].push_back(Value{std::move(column), {}, {}, false});
    return rows_[row].back();
  }
  std::vector<std::vector<Value>> rows_;
};

namespace detail {
// RawRows seen through the part of CsvTable's interface that
// TabularEncoder::transform reads: one text cell per (row, feature column),
// lists joined with the feature's separator (a space for a text), and errors
// that name the row and the field instead of a file line.
class RawTable {
 public:
  RawTable(const RawRows& raw, const std::vector<FeatureColumn>& features, const char* op) : n_(raw.rows()) {
    cols_.reserve(features.size());
    for (const auto& f : features) cols_.push_back(f.column);
    cells_.assign(n_ * cols_.size(), std::string());
    for (std::size_t r = 0; r < n_; ++r) {
      for (const RawRows::Value& v : raw.values(r)) {
        std::size_t c = 0;
        while (c < cols_.size() && cols_[c] != v.column) ++c;
        if (c == cols_.size())
          fail(op, "row ", r, ": unknown feature '", escaped(v.column), "' (the model's features: ", names(), ")");
        const FeatureColumn& fc = features[c];
        std::string& cell = cells_[r * cols_.size() + c];
        if (!v.is_list) {
          cell = v.text;
          continue;
        }
        const bool list_kind = fc.kind == ColumnKind::Bag || fc.kind == ColumnKind::Sequence || fc.kind == ColumnKind::Text;
        if (!list_kind)
          fail(op, "row ", r, ", field '", escaped(v.column), "': expected one value for ", fc.flag(),
               " but got a list of ", v.items.size());
        const char sep = fc.kind == ColumnKind::Text ? ' ' : fc.sep;
        for (std::size_t i = 0; i < v.items.size(); ++i) {
          const std::string& it = v.items[i];
          if (fc.kind != ColumnKind::Text && it.find(sep) != std::string::npos)
            fail(op, "row ", r, ", field '", escaped(v.column), "': item #", i + 1, " '", escaped(it),
                 "' contains the separator '", std::string(1, sep), "' of ", fc.flag());
          if (i) cell += sep;
          cell += it;
        }
      }
    }
  }
  std::size_t rows() const { return n_; }
  std::string_view cell(std::size_t r, std::size_t c) const { return cells_[r * cols_.size() + c]; }
  std::size_t require_column(std::string_view name, std::string_view /*wanted_by*/ = {}) const {
    for (std::size_t c = 0; c < cols_.size(); ++c)
      if (cols_[c] == name) return c;
    fail("RawTable", "no column '", escaped(name), "'");
  }
  template <class... Parts>
  [[noreturn]] void fail_cell(const char* op, std::size_t row, std::size_t col, const Parts&... parts) const {
    fail(op, "row ", row, ", field '", escaped(cols_[col]), "': ", parts...);
  }

 private:
  std::string names() const {
    std::string s;
    for (std::size_t c = 0; c < cols_.size(); ++c) s += (c ? ", '" : "'") + escaped(cols_[c]) + "'";
    return s;
  }
  std::size_t n_ = 0;
  std::vector<std::string> cols_;
  std::vector<std::string> cells_;
};
}  // namespace detail

// ---- the encoder ---------------------------------------------------------------------------

class TabularEncoder {
 public:
  TabularEncoder() = default;
  explicit TabularEncoder(TabularSchema schema) : schema_(std::move(schema)) {
    const char* op = "TabularEncoder";
    check(!schema_.features.empty(), op, "expected at least one feature column (--id, --bag, --seq, --text or --dense)");
    check(!schema_.tasks.empty(), op, "expected at least one task column (--task)");
    check(schema_.min_count >= 1, op, "expected min_count >= 1 but got ", schema_.min_count);
    std::vector<std::pair<std::string, std::string>> seen;  // column, flag
    auto claim = [&](const std::string& col, const std::string& flag) {
      for (const auto& s : seen)
        check(s.first != col, op, "column '", col, "' is declared twice (", s.second, " and ", flag,
              "); each column can be one feature or one task");
      seen.emplace_back(col, flag);
    };
    // Column names go into the checkpoint's JSON metadata, which must be
    // UTF-8: a bad name fails here, before any file is read or any training.
    auto utf8 = [&](const std::string& s, const std::string& what) {
      const std::size_t at = detail::invalid_utf8_at(s);
      if (at != std::string_view::npos)
        fail(op, what, " '", detail::escaped(s), "' is not valid UTF-8 (byte #", at + 1, " is 0x",
             detail::escaped(std::string_view(s).substr(at, 1)).substr(2),
             "); names and missing-value markers are stored in the checkpoint's JSON metadata, which must be UTF-8");
    };
    for (const auto& f : schema_.features) {
      check(!f.column.empty(), op, "a feature has an empty column name");
      utf8(f.column, detail::escaped(f.flag()) + ": column name");
      check(!f.impute || f.kind == ColumnKind::Dense, op, f.flag(), ": only --dense columns can be imputed");
      check(f.buckets >= 0, op, f.flag(), ": expected buckets >= 0 but got ", f.buckets);
      if (f.kind == ColumnKind::Sequence || f.kind == ColumnKind::Text)
        check(f.max_len >= 1, op, f.flag(), ": expected maxlen >= 1 but got ", f.max_len);
      check(f.buckets == 0 || f.kind == ColumnKind::Id, op, f.flag(), ": only --id columns can be hashed");
      claim(f.column, f.flag());
    }
    for (const auto& t : schema_.tasks) {
      check(!t.column.empty(), op, "a task has an empty column name");
      utf8(t.column, detail::escaped(t.flag()) + ": column name");
      check(t.weight >= 0 && std::isfinite(t.weight), op, t.flag(), ": expected a finite weight >= 0 but got ",
            t.weight);
      claim(t.column, t.flag());
      check(t.loss == TaskLoss::Default || (t.loss == TaskLoss::BPR && t.type == TaskType::Binary), op, t.flag(),
            ": only a binary task can use the BPR loss");
      check(t.target_feature.empty() || t.type == TaskType::Retrieval, op, t.flag(),
            ": only a retrieval task can name a target feature");
      if (!t.target_feature.empty()) {
        const FeatureColumn* target = nullptr;
        for (const auto& f : schema_.features)
          if (f.column == t.target_feature) target = &f;
        check(target != nullptr, op, t.flag(), ": the target feature '", t.target_feature,
              "' is not a declared feature column (declare it with --id ", t.target_feature, ")");
        check(target->kind == ColumnKind::Id && target->buckets == 0, op, t.flag(), ": the target feature '",
              t.target_feature, "' expected an --id column with a vocabulary (not hashed) but it is ", target->flag());
      }
    }
    for (const auto& v : schema_.na_values) utf8(v, "missing-value marker");
    features_.resize(schema_.features.size());
    tasks_.resize(schema_.tasks.size());
  }

  // Whether a cell means "missing": empty or one of the na_values, after
  // trimming blanks.
  bool is_missing(std::string_view cell) const {
    cell = detail::trim(cell);
    if (cell.empty()) return true;
    for (const auto& v : schema_.na_values)
      if (cell == v) return true;
    return false;
  }

  const TabularSchema& schema() const { return schema_; }
  bool fitted() const { return fitted_; }

  // Learns the preprocessing from `rows` of `train` (every row when null):
  // vocabularies, dense mean/std, regression label mean/std, class names.
  // Also checks every value it reads, so a bad cell fails here, before any
  // training, with its file, line and column.
  void fit(const CsvTable& train, const std::vector<std::size_t>* rows = nullptr) {
    const char* op = "TabularEncoder::fit";
    check(!schema_.features.empty(), op, "the encoder has no schema");
    const std::size_t n = rows ? rows->size() : train.rows();
    check(n > 0, op, "'", train.source(), "' has no training rows (only a header?)");
    auto row_at = [&](std::size_t i) { return rows ? (*rows)[i] : i; };
    std::string scratch;
    std::vector<std::string_view> items;
    for (std::size_t f = 0; f < schema_.features.size(); ++f) {
      const FeatureColumn& fc = schema_.features[f];
      FeatureState& st = features_[f];
      const std::size_t col = train.require_column(fc.column, fc.flag());
      st = FeatureState{};
      if (fc.kind == ColumnKind::Dense) {
        std::vector<double> x;
        x.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
          const std::size_t r = row_at(i);
          if (fc.impute && is_missing(train.cell(r, col))) continue;
          x.push_back(dense_value(train, r, col, fc, op));
        }
        check(!x.empty(), op, "'", train.source(), "': dense column '", fc.column, "' (", fc.flag(),
              ") has no value in any of the ", n, " training rows, so there is no mean to impute");
        st.stats = Standardizer::fit(x);
        continue;
      }
      if (fc.kind == ColumnKind::Id && fc.buckets > 0) continue;
      // Count every token, then keep those seen min_count times (in
      // first-seen order, so the result does not depend on hashing).
      Vocabulary all;
      std::vector<std::size_t> counts(1, 0);
      auto count = [&](std::string_view tok) {
        const index_t r = all.add(tok);
        if (std::size_t(r) >= counts.size()) counts.push_back(0);
        ++counts[std::size_t(r)];
      };
      for (std::size_t i = 0; i < n; ++i) {
        const std::string_view cell = train.cell(row_at(i), col);
        if (is_missing(cell)) continue;  // the OOV row, or an empty list
        switch (fc.kind) {
          case ColumnKind::Id: count(cell); break;
          case ColumnKind::Bag: for_each_item(cell, fc.sep, count); break;
          case ColumnKind::Sequence:
            // Only the items the model will see (the last max_len).
            last_items(cell, fc.sep, fc.max_len, items);
            for (const auto& it : items) count(it);
            break;
          case ColumnKind::Text: for_each_word(cell, std::size_t(fc.max_len), scratch, count); break;
          case ColumnKind::Dense: break;
        }
      }
      if (schema_.min_count <= 1) {
        st.vocab = std::move(all);
      } else {
        for (index_t r = 1; r < all.rows(); ++r)
          if (counts[std::size_t(r)] >= std::size_t(schema_.min_count)) st.vocab.add(all.token(r));
      }
    }
    for (std::size_t k = 0; k < schema_.tasks.size(); ++k) {
      const TaskColumn& tc = schema_.tasks[k];
      TaskState& st = tasks_[k];
      st = TaskState{};
      const std::size_t col = train.require_column(tc.column, tc.flag());
      std::vector<double> y;
      Vocabulary classes;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = row_at(i);
        const std::string_view cell = csv_trim(train.cell(r, col));
        if (is_missing(cell)) continue;
        if (tc.type == TaskType::MultiClass || tc.type == TaskType::Retrieval) {
          classes.add(cell);  // retrieval: the item values, in first-seen order
          y.push_back(0);
        } else {
          y.push_back(tc.type == TaskType::Binary ? binary_label(train, r, col, op) : number_label(train, r, col, op));
        }
      }
      check(!y.empty(), op, "'", train.source(), "': task column '", tc.column, "' (", tc.flag(),
            ") has no label in any of the ", n, " training rows");
      if (tc.type == TaskType::Regression) st.target = Standardizer::fit(y);
      if (tc.type == TaskType::Retrieval && tc.target_feature.empty()) st.items = std::move(classes);
      if (tc.type == TaskType::MultiClass) {
        st.classes = sorted_classes(classes.tokens());
        check(st.classes.size() >= 2, op, "'", train.source(), "': multiclass task '", tc.column,
              "' expected at least 2 classes in the training rows but found ", st.classes.size(),
              st.classes.empty() ? std::string() : " ('" + st.classes[0] + "')");
        st.class_index = Vocabulary::from_tokens(st.classes);
      }
    }
    fitted_ = true;
  }

  // Encodes `rows` of `t` (every row when null) in that order. With
  // `labels`, the task columns must exist and their cells are checked; for
  // prediction (labels = false) they are not read and may be absent.
  template <class T, class Table = CsvTable>
  Batch<T> transform(const Table& t, const std::vector<std::size_t>* rows, bool labels,
                     const char* op = "TabularEncoder::transform") const {
    check(fitted_, op, "the encoder was not fitted (call fit() or load it from JSON)");
    const std::size_t n = rows ? rows->size() : t.rows();
    auto row_at = [&](std::size_t i) { return rows ? (*rows)[i] : i; };
    Batch<T> b;
    b.size = index_t(n);
    std::size_t n_ids = 0, n_bags = 0, n_seqs = 0, n_dense = 0;
    for (const auto& f : schema_.features) {
      n_ids += f.kind == ColumnKind::Id;
      n_bags += f.kind == ColumnKind::Bag;
      n_seqs += f.kind == ColumnKind::Sequence || f.kind == ColumnKind::Text;
      n_dense += f.kind == ColumnKind::Dense;
    }
    b.ids.resize(n_ids);
    b.bags.resize(n_bags);
    b.sequences.resize(n_seqs);
    b.dense.resize(n_dense);
    std::size_t gi = 0, gb = 0, gs = 0, gd = 0;
    std::string scratch;
    std::vector<std::string_view> items;
    for (std::size_t f = 0; f < schema_.features.size(); ++f) {
      const FeatureColumn& fc = schema_.features[f];
      const FeatureState& st = features_[f];
      const std::size_t col = t.require_column(fc.column, fc.flag());
      switch (fc.kind) {
        case ColumnKind::Id: {
          auto& out = b.ids[gi++];
          out.resize(n);
          for (std::size_t i = 0; i < n; ++i) {
            const std::string_view cell = t.cell(row_at(i), col);
            const bool missing = is_missing(cell);
            out[i] = fc.buckets > 0 ? index_t(hash_string(missing ? std::string_view() : cell))
                     : missing      ? Vocabulary::kOov
                                    : st.vocab.find(cell);
          }
          break;
        }
        case ColumnKind::Bag: {
          auto& bag = b.bags[gb++];
          bag.offsets.resize(n + 1);
          bag.offsets[0] = 0;
          bag.ids.reserve(n * 2);
          for (std::size_t i = 0; i < n; ++i) {
            const std::string_view cell = t.cell(row_at(i), col);
            if (!is_missing(cell))
              for_each_item(cell, fc.sep, [&](std::string_view s) { bag.ids.push_back(st.vocab.find(s)); });
            bag.offsets[i + 1] = index_t(bag.ids.size());
          }
          break;
        }
        case ColumnKind::Sequence:
        case ColumnKind::Text: {
          auto& seq = b.sequences[gs++];
          const std::size_t L = std::size_t(fc.max_len);
          seq.ids.assign(n * L, 0);
          seq.lengths.resize(n);
          for (std::size_t i = 0; i < n; ++i) {
            index_t* dst = seq.ids.data() + i * L;
            const std::string_view cell = t.cell(row_at(i), col);
            index_t len = 0;
            if (is_missing(cell)) {
              // an empty list
            } else if (fc.kind == ColumnKind::Sequence) {
              last_items(cell, fc.sep, fc.max_len, items);
              for (const auto& it : items) dst[len++] = st.vocab.find(it);
            } else {
              for_each_word(cell, L, scratch, [&](std::string_view w) { dst[len++] = st.vocab.find(w); });
            }
            seq.lengths[i] = len;
          }
          break;
        }
        case ColumnKind::Dense: {
          auto& out = b.dense[gd++];
          if (!fc.impute) {
            out.resize(n);
            for (std::size_t i = 0; i < n; ++i) out[i] = T(st.stats.apply(dense_value(t, row_at(i), col, fc, op)));
            break;
          }
          // Two columns per row: the standardised value (the training mean,
          // 0, when missing) and is_missing.
          out.resize(2 * n);
          for (std::size_t i = 0; i < n; ++i) {
            const std::size_t r = row_at(i);
            const bool missing = is_missing(t.cell(r, col));
            out[2 * i] = missing ? T(0) : T(st.stats.apply(dense_value(t, r, col, fc, op)));
            out[2 * i + 1] = missing ? T(1) : T(0);
          }
          break;
        }
      }
    }
    const std::size_t K = schema_.tasks.size();
    b.labels.resize(K);
    b.label_mask.resize(K);
    if (!labels) {
      // Predictions only: no labels, every row "labelled" with 0 so that a
      // batch built here is still well formed for evaluate()/compute_losses().
      for (std::size_t k = 0; k < K; ++k) b.labels[k].assign(n, T(0));
      return b;
    }
    for (std::size_t k = 0; k < K; ++k) {
      const TaskColumn& tc = schema_.tasks[k];
      const TaskState& st = tasks_[k];
      const std::size_t col = t.require_column(tc.column, tc.flag());
      auto& y = b.labels[k];
      auto& m = b.label_mask[k];
      y.assign(n, T(0));
      m.assign(n, 0);
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = row_at(i);
        const std::string_view cell = csv_trim(t.cell(r, col));
        if (is_missing(cell)) continue;
        m[i] = 1;
        switch (tc.type) {
          case TaskType::Binary: y[i] = T(binary_label(t, r, col, op)); break;
          case TaskType::Regression: y[i] = T(st.target.apply(number_label(t, r, col, op))); break;
          case TaskType::MultiClass: {
            const index_t c = st.class_index.find(cell);
            if (c == Vocabulary::kOov)
              t.fail_cell(op, r, col, "class ", detail::shown(cell), " of task '", tc.column,
                          "' was not seen in the training data (known classes: ", class_list(st.classes), ")");
            y[i] = T(c - 1);
            break;
          }
          case TaskType::Retrieval: {
            // The item's row; an item never seen in training has no row to
            // learn towards, so the row is left unlabelled for this task.
            const index_t row = item_vocabulary(k).find(cell);
            if (row == Vocabulary::kOov) m[i] = 0;
            y[i] = T(row);
            break;
          }
        }
      }
    }
    return b;
  }

  // Encodes raw rows (a serving request) as transform() encodes a CSV file
  // without labels: an unseen value is the OOV row, an absent feature its
  // missing value; a malformed value (a non-numeric dense value, a list for
  // an ID) or a column that is not a feature is an error naming the row and
  // the field.
  template <class T>
  Batch<T> encode(const RawRows& raw) const {
    const char* op = "TabularEncoder::encode";
    check(fitted_, op, "the encoder was not fitted (call fit() or load it from JSON)");
    check(!raw.empty(), op, "expected at least one row but got none");
    const detail::RawTable table(raw, schema_.features, op);
    return transform<T>(table, nullptr, false, op);
  }

  // The model's features: ids and bags embed in `dim` columns, sequences
  // and texts use `encoder` (its d_model is the embedding width).
  FeatureSpec feature_spec(index_t dim, const TransformerConfig& encoder, int encoder_layers = 1) const {
    check(fitted_, "TabularEncoder::feature_spec", "the encoder was not fitted");
    FeatureSpec s;
    for (std::size_t f = 0; f < schema_.features.size(); ++f) {
      const FeatureColumn& fc = schema_.features[f];
      const index_t rows = features_[f].vocab.rows();
      switch (fc.kind) {
        case ColumnKind::Id: {
          IdFeature x{fc.column, fc.buckets > 0 ? 0 : rows, fc.buckets, dim, ""};
          x.item_side = fc.item_side;
          s.ids.push_back(x);
          break;
        }
        case ColumnKind::Bag: {
          BagFeature x{fc.column, rows, 0, dim, "", BagPooling::Mean, false};
          x.item_side = fc.item_side;
          s.bags.push_back(x);
          break;
        }
        case ColumnKind::Sequence:
        case ColumnKind::Text: {
          SequenceFeature q;
          q.name = fc.column;
          q.vocab = rows;
          q.max_len = fc.max_len;
          q.encoder = encoder;
          q.layers = encoder_layers;
          q.pooling = SequencePoolMode::Mean;
          q.item_side = fc.item_side;
          s.sequences.push_back(q);
          break;
        }
        case ColumnKind::Dense: {
          DenseFeature x{fc.column, fc.impute ? 2 : 1};
          x.item_side = fc.item_side;
          s.dense.push_back(x);
          break;
        }
      }
    }
    return s;
  }

  // The model's tasks, named after their columns, each with `tower`. A
  // retrieval task with its own vocabulary gets a target table of `dim`
  // columns; one with a target feature shares that feature's table.
  std::vector<TaskSpec> task_specs(const std::vector<index_t>& tower, index_t dim = 16) const {
    check(fitted_, "TabularEncoder::task_specs", "the encoder was not fitted");
    std::vector<TaskSpec> out;
    for (std::size_t k = 0; k < schema_.tasks.size(); ++k) {
      TaskSpec t;
      t.name = schema_.tasks[k].column;
      t.type = schema_.tasks[k].type;
      t.num_classes = t.type == TaskType::MultiClass ? index_t(tasks_[k].classes.size()) : 0;
      t.tower = tower;
      t.weight = schema_.tasks[k].weight;
      t.loss = schema_.tasks[k].loss;
      if (t.type == TaskType::Retrieval) {
        t.target_table = schema_.tasks[k].target_feature.empty() ? t.name : schema_.tasks[k].target_feature;
        if (schema_.tasks[k].target_feature.empty()) {
          t.target_vocab = tasks_[k].items.rows();
          t.target_dim = dim;
        }
      }
      out.push_back(t);
    }
    return out;
  }

  // Learned state, by the schema's feature / task index.
  const Vocabulary& vocabulary(std::size_t feature) const { return features_.at(feature).vocab; }
  const Standardizer& dense_stats(std::size_t feature) const { return features_.at(feature).stats; }
  // Regression: the label standardisation (invert() maps a prediction back).
  const Standardizer& target(std::size_t task) const { return tasks_.at(task).target; }
  // Multiclass: class names; class id c (the model's output column) is classes[c].
  const std::vector<std::string>& classes(std::size_t task) const { return tasks_.at(task).classes; }
  // Retrieval: item value <-> row of the task's target table (row 0 is the
  // OOV row, never an item): the target feature's vocabulary, or the task's own.
  const Vocabulary& item_vocabulary(std::size_t task) const {
    const TaskColumn& tc = schema_.tasks.at(task);
    check(tc.type == TaskType::Retrieval, "TabularEncoder::item_vocabulary", "task '", tc.column,
          "' is not a retrieval task");
    if (tc.target_feature.empty()) return tasks_[task].items;
    return features_[feature_index(tc.target_feature)].vocab;
  }
  // The schema's index of a feature column, or an error naming it.
  std::size_t feature_index(std::string_view column) const {
    for (std::size_t f = 0; f < schema_.features.size(); ++f)
      if (schema_.features[f].column == column) return f;
    fail("TabularEncoder", "unknown feature '", detail::escaped(column), "'");
  }
  // Whether `column` is a feature column (rows given to encode() may hold only these).
  bool has_feature(std::string_view column) const {
    for (const auto& f : schema_.features)
      if (f.column == column) return true;
    return false;
  }

  // ---- persistence ---------------------------------------------------------------------------

  // Everything needed to encode new files: the schema and the learned state.
  json::Value to_json() const {
    using json::Value;
    check(fitted_, "TabularEncoder::to_json", "the encoder was not fitted");
    Value j = Value::object();
    j.set("format", "mtrec.tabular");
    j.set("version", 3);
    j.set("min_count", schema_.min_count);
    j.set("oov_row", Vocabulary::kOov);  // an unseen or missing token's row in every vocabulary
    j.set("na_values", strings_json(schema_.na_values));
    Value feats = Value::array();
    for (std::size_t f = 0; f < schema_.features.size(); ++f) {
      const FeatureColumn& fc = schema_.features[f];
      Value o = Value::object();
      o.set("kind", column_kind_name(fc.kind));
      o.set("column", fc.column);
      o.set("item_side", fc.item_side);
      if (fc.kind == ColumnKind::Id) o.set("buckets", fc.buckets);
      if (fc.kind == ColumnKind::Id && fc.buckets > 0) {
        // The row of a value: mix64(fnv1a64(text) ^ salt) % buckets, with the
        // table's salt (layers/embedding.hpp hash_bucket); stored as decimal
        // text, as JSON numbers cannot hold every 64-bit value.
        json::Value h = json::Value::object();
        h.set("function", "fnv1a64");
        h.set("salt", std::to_string(hash_name(fc.column)));
        o.set("hash", std::move(h));
      }
      if (fc.kind == ColumnKind::Text) {
        json::Value tk = json::Value::object();
        tk.set("kind", "words");  // runs of ASCII letters, digits and non-ASCII bytes
        tk.set("lowercase", true);
        tk.set("max_len", fc.max_len);
        o.set("tokenizer", std::move(tk));
      }
      if (fc.kind == ColumnKind::Bag || fc.kind == ColumnKind::Sequence) o.set("sep", std::string(1, fc.sep));
      if (fc.kind == ColumnKind::Sequence || fc.kind == ColumnKind::Text) o.set("max_len", fc.max_len);
      if (fc.kind == ColumnKind::Dense) {
        o.set("mean", features_[f].stats.mean);
        o.set("std", features_[f].stats.sd);
        o.set("impute", fc.impute);
      } else if (!(fc.kind == ColumnKind::Id && fc.buckets > 0)) {
        o.set("vocab", strings_json(features_[f].vocab.tokens()));
      }
      feats.push_back(std::move(o));
    }
    j.set("features", std::move(feats));
    Value tasks = Value::array();
    for (std::size_t k = 0; k < schema_.tasks.size(); ++k) {
      const TaskColumn& tc = schema_.tasks[k];
      Value o = Value::object();
      o.set("column", tc.column);
      o.set("type", task_type_name(tc.type));
      o.set("weight", tc.weight);
      if (tc.loss == TaskLoss::BPR) o.set("loss", "bpr");
      if (tc.type == TaskType::Retrieval) {
        o.set("target_feature", tc.target_feature);
        if (tc.target_feature.empty()) o.set("items", strings_json(tasks_[k].items.tokens()));
      }
      if (tc.type == TaskType::Regression) {
        o.set("mean", tasks_[k].target.mean);
        o.set("std", tasks_[k].target.sd);
      }
      if (tc.type == TaskType::MultiClass) o.set("classes", strings_json(tasks_[k].classes));
      tasks.push_back(std::move(o));
    }
    j.set("tasks", std::move(tasks));
    return j;
  }

  static TabularEncoder from_json(const json::Value& j) {
    const char* op = "TabularEncoder::from_json";
    check(j.is_object() && j.contains("format") && j.at("format").is_string() &&
              j.at("format").as_string() == "mtrec.tabular",
          op, "expected an object with format = mtrec.tabular");
    // Version 1 (before missing values): only the empty cell was missing.
    const std::int64_t version = j.at("version").as_int();
    check(version >= 1 && version <= 3, op, "expected version 1, 2 or 3 but got ", version,
          version > 3 ? " (written by a newer mtrec)" : "");
    TabularSchema s;
    s.min_count = index_t(j.at("min_count").as_int());
    s.na_values = version >= 2 ? strings_from(j.at("na_values")) : std::vector<std::string>{};
    for (const auto& o : j.at("features").as_array()) {
      FeatureColumn fc;
      const std::string& kind = o.at("kind").as_string();
      bool known = false;
      for (ColumnKind k : {ColumnKind::Id, ColumnKind::Bag, ColumnKind::Sequence, ColumnKind::Text, ColumnKind::Dense})
        if (kind == column_kind_name(k)) {
          fc.kind = k;
          known = true;
        }
      check(known, op, "unknown feature kind '", kind, "'");
      fc.column = o.at("column").as_string();
      if (fc.kind == ColumnKind::Id) fc.buckets = index_t(o.at("buckets").as_int());
      if (fc.kind == ColumnKind::Bag || fc.kind == ColumnKind::Sequence) {
        const std::string& sep = o.at("sep").as_string();
        check(sep.size() == 1, op, "feature '", fc.column, "' expected a one-character separator but got '", sep, "'");
        fc.sep = sep[0];
      }
      if (fc.kind == ColumnKind::Sequence || fc.kind == ColumnKind::Text) fc.max_len = index_t(o.at("max_len").as_int());
      if (fc.kind == ColumnKind::Dense && version >= 2) fc.impute = o.at("impute").as_bool();
      if (version >= 3) fc.item_side = o.at("item_side").as_bool();
      if (version >= 3 && fc.kind == ColumnKind::Id && fc.buckets > 0) {
        const json::Value& h = o.at("hash");
        check(h.at("function").as_string() == "fnv1a64" && h.at("salt").as_string() == std::to_string(hash_name(fc.column)),
              op, "feature '", fc.column, "' expected hash fnv1a64 with salt ", hash_name(fc.column), " but got ",
              h.at("function").as_string(), " with salt ", h.at("salt").as_string());
      }
      if (version >= 3 && fc.kind == ColumnKind::Text) {
        const json::Value& tk = o.at("tokenizer");
        check(tk.at("kind").as_string() == "words" && tk.at("lowercase").as_bool(), op, "feature '", fc.column,
              "' expected the tokenizer kind = words, lowercase = true (the only one this version has)");
      }
      s.features.push_back(fc);
    }
    for (const auto& o : j.at("tasks").as_array()) {
      TaskColumn tc;
      tc.column = o.at("column").as_string();
      const std::string& type = o.at("type").as_string();
      if (type == "binary") tc.type = TaskType::Binary;
      else if (type == "regression") tc.type = TaskType::Regression;
      else if (type == "multiclass") tc.type = TaskType::MultiClass;
      else if (type == "retrieval" && version >= 3) tc.type = TaskType::Retrieval;
      else fail(op, "task '", tc.column, "' has unknown type '", type, "'");
      tc.weight = o.at("weight").as_double();
      if (o.contains("loss")) {
        check(o.at("loss").as_string() == "bpr", op, "task '", tc.column, "' has unknown loss '", o.at("loss").as_string(), "'");
        tc.loss = TaskLoss::BPR;
      }
      if (tc.type == TaskType::Retrieval) tc.target_feature = o.at("target_feature").as_string();
      s.tasks.push_back(tc);
    }
    TabularEncoder e(s);
    const auto& feats = j.at("features").as_array();
    for (std::size_t f = 0; f < s.features.size(); ++f) {
      const FeatureColumn& fc = s.features[f];
      if (fc.kind == ColumnKind::Dense) {
        e.features_[f].stats.mean = feats[f].at("mean").as_double();
        e.features_[f].stats.sd = feats[f].at("std").as_double();
        check(std::isfinite(e.features_[f].stats.mean) && e.features_[f].stats.sd > 0 &&
                  std::isfinite(e.features_[f].stats.sd),
              op, "feature '", fc.column, "' expected a finite mean and a finite std > 0");
      } else if (!(fc.kind == ColumnKind::Id && fc.buckets > 0)) {
        e.features_[f].vocab = Vocabulary::from_tokens(strings_from(feats[f].at("vocab")));
      }
    }
    const auto& tasks = j.at("tasks").as_array();
    for (std::size_t k = 0; k < s.tasks.size(); ++k) {
      if (s.tasks[k].type == TaskType::Regression) {
        e.tasks_[k].target.mean = tasks[k].at("mean").as_double();
        e.tasks_[k].target.sd = tasks[k].at("std").as_double();
        check(e.tasks_[k].target.sd > 0, op, "task '", s.tasks[k].column, "' expected std > 0");
      }
      if (s.tasks[k].type == TaskType::Retrieval && s.tasks[k].target_feature.empty())
        e.tasks_[k].items = Vocabulary::from_tokens(strings_from(tasks[k].at("items")));
      if (s.tasks[k].type == TaskType::MultiClass) {
        e.tasks_[k].classes = strings_from(tasks[k].at("classes"));
        e.tasks_[k].class_index = Vocabulary::from_tokens(e.tasks_[k].classes);
      }
    }
    e.fitted_ = true;
    return e;
  }

 private:
  struct FeatureState {
    Vocabulary vocab;    // id (unhashed), bag, seq, text
    Standardizer stats;  // dense
  };
  struct TaskState {
    Standardizer target;               // regression
    Vocabulary items;                  // retrieval without a target feature
    std::vector<std::string> classes;  // multiclass, sorted
    Vocabulary class_index;            // class name -> index + 1
  };

  static std::string_view csv_trim(std::string_view s) { return detail::trim(s); }

  // The last `max_len` items of a list, in order (a user's most recent).
  static void last_items(std::string_view cell, char sep, index_t max_len, std::vector<std::string_view>& out) {
    out.clear();
    for_each_item(cell, sep, [&](std::string_view s) { out.push_back(s); });
    if (out.size() > std::size_t(max_len)) out.erase(out.begin(), out.end() - std::ptrdiff_t(max_len));
  }

  // A number the model can take: finite and within float range (the model
  // computes in float; 1e200 would become inf there).
  static bool float_range(double v) { return std::fabs(v) <= double(std::numeric_limits<float>::max()); }

  template <class Table>
  double dense_value(const Table& t, std::size_t r, std::size_t col, const FeatureColumn& fc, const char* op) const {
    const std::string_view cell = t.cell(r, col);
    double v = 0;
    if (is_missing(cell))
      t.fail_cell(op, r, col, "missing value ",
                  detail::trim(cell).empty() ? std::string("(an empty cell)") : detail::shown(detail::trim(cell)),
                  " in dense column; dense columns need a value in every row (declare --dense ", fc.column,
                  ":impute to use the training mean and an is_missing indicator)");
    if (!parse_number(cell, v) || !float_range(v))
      t.fail_cell(op, r, col, "expected a finite number within float range (|x| <= ",
                  std::numeric_limits<float>::max(), ") but got ", detail::shown(detail::trim(cell)));
    return v;
  }
  template <class Table>
  static double number_label(const Table& t, std::size_t r, std::size_t col, const char* op) {
    double v = 0;
    if (!parse_number(t.cell(r, col), v) || !float_range(v))
      t.fail_cell(op, r, col, "expected a finite number within float range (|x| <= ", std::numeric_limits<float>::max(),
                  ") as the regression label but got ", detail::shown(detail::trim(t.cell(r, col))));
    return v;
  }
  // 0/1 (any number equal to 0 or 1, so "1.0" too) or true/false in any case.
  template <class Table>
  static double binary_label(const Table& t, std::size_t r, std::size_t col, const char* op) {
    const std::string_view s = detail::trim(t.cell(r, col));
    double v = -1;
    if (parse_number(s, v) && (v == 0 || v == 1)) return v;
    std::string lower(s);
    for (char& c : lower) c = (c >= 'A' && c <= 'Z') ? char(c + 32) : c;
    if (lower == "true") return 1;
    if (lower == "false") return 0;
    t.fail_cell(op, r, col, "expected a binary label 0, 1, true or false but got ", detail::shown(s));
  }

  // Numeric order when every class is a number ("2" < "10"), else byte order.
  static std::vector<std::string> sorted_classes(std::vector<std::string> c) {
    bool numeric = true;
    std::vector<std::pair<double, std::string>> keyed;
    for (const auto& s : c) {
      double v = 0;
      if (!parse_number(s, v)) {
        numeric = false;
        break;
      }
      keyed.emplace_back(v, s);
    }
    if (numeric) {
      std::stable_sort(keyed.begin(), keyed.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first || (a.first == b.first && a.second < b.second); });
      for (std::size_t i = 0; i < c.size(); ++i) c[i] = keyed[i].second;
    } else {
      std::sort(c.begin(), c.end());
    }
    return c;
  }
  static std::string class_list(const std::vector<std::string>& c) {
    std::string s;
    for (std::size_t i = 0; i < c.size() && i < 10; ++i) s += (i ? ", '" : "'") + c[i] + "'";
    if (c.size() > 10) s += ", ... (" + std::to_string(c.size()) + " in all)";
    return s;
  }

  // JSON strings must be UTF-8; a token that is not (a Latin-1 file, say)
  // is stored as {"hex": "..."} so that any byte string round-trips.
  static bool valid_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
      const std::size_t n = json::detail::utf8_sequence_length(s, i);
      if (n == 0) return false;
      i += n;
    }
    return true;
  }
  static json::Value strings_json(const std::vector<std::string>& v) {
    static const char* hex = "0123456789abcdef";
    json::Value a = json::Value::array();
    for (const auto& s : v) {
      if (valid_utf8(s)) {
        a.push_back(s);
        continue;
      }
      std::string h;
      for (unsigned char c : s) {
        h += hex[c >> 4];
        h += hex[c & 15];
      }
      json::Value o = json::Value::object();
      o.set("hex", h);
      a.push_back(std::move(o));
    }
    return a;
  }
  static std::vector<std::string> strings_from(const json::Value& v) {
    std::vector<std::string> out;
    out.reserve(v.size());
    for (const auto& x : v.as_array()) {
      if (x.is_string()) {
        out.push_back(x.as_string());
        continue;
      }
      const std::string& h = x.at("hex").as_string();
      check(h.size() % 2 == 0, "TabularEncoder::from_json", "expected an even number of hex digits but got '", h, "'");
      std::string s;
      auto nib = [&](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        fail("TabularEncoder::from_json", "expected hex digits but got '", h, "'");
      };
      for (std::size_t i = 0; i < h.size(); i += 2) s += char(nib(h[i]) * 16 + nib(h[i + 1]));
      out.push_back(std::move(s));
    }
    return out;
  }

  TabularSchema schema_;
  std::vector<FeatureState> features_;
  std::vector<TaskState> tasks_;
  bool fitted_ = false;
};

}  // namespace data
}  // namespace mtrec
