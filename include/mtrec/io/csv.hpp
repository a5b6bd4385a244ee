// mtrec: reading CSV files and the small pieces of preprocessing that turn
// their cells into model inputs — numbers, word tokens, item lists,
// vocabularies with an out-of-vocabulary row, standardisation, seeded splits.
//
//   data::CsvTable t = data::CsvTable::read_file("train.csv");
//   const std::size_t age = t.require_column("age", "--dense age");
//   double x;
//   if (!data::parse_number(t.cell(r, age), x)) t.fail_cell("my_op", r, age, "expected a number");
//
// The reader follows RFC 4180: a header row, fields separated by commas,
// fields in double quotes may contain commas, line breaks and doubled quotes
// (""), and lines may end in CRLF. It is lenient where the RFC is silent and
// real files differ: a UTF-8 byte-order mark is skipped, empty lines are
// skipped (as pandas does; a one-column file writes an empty value as ""),
// a quote inside an unquoted field is an ordinary character, and the last
// line need not end in a line break. Anything else malformed — a row with
// more or fewer fields than the header, text after a closing quote, a quote
// that never closes — is an error naming the file, the line and the column.
//
// The whole file is read into one buffer and cells are (offset, length)
// pairs into it: a quoted field is unescaped in place (the unescaped text is
// never longer), so reading allocates the buffer and two index vectors. The
// vectors grow with the records actually read: what is reserved up front is
// bounded by the bytes left after the header (a record of C fields takes at
// least C - 1 delimiters and a line break), never by columns x line breaks,
// which a wide header followed by many blank lines makes huge. No regex, no
// per-cell strings.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/io/atomic_file.hpp"

namespace mtrec {
namespace data {

// ---- numbers -----------------------------------------------------------------

namespace detail {
inline bool is_blank(char c) { return c == ' ' || c == '\t'; }
inline std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}
// A cell quoted for a message: at most 40 characters, so that a runaway
// quoted field does not flood the terminal.
inline std::string shown(std::string_view s) {
  if (s.size() <= 40) return "'" + std::string(s) + "'";
  return "'" + std::string(s.substr(0, 37)) + "...' (" + std::to_string(s.size()) + " characters)";
}
}  // namespace detail

// A finite decimal number, surrounding blanks allowed ("3", " -2.5e3 ",
// "+1"). Rejects empty text, trailing characters, nan and inf: a non-finite
// feature or label would only surface later as a NaN loss.
inline bool parse_number(std::string_view s, double& out) {
  s = detail::trim(s);
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
    if (s.empty() || s.front() == '-' || s.front() == '+') return false;
  }
  if (s.empty()) return false;
  double v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v, std::chars_format::general);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || !std::isfinite(v)) return false;
  out = v;
  return true;
}

// A decimal integer that fits in 64 bits, surrounding blanks allowed.
inline bool parse_integer(std::string_view s, long long& out) {
  s = detail::trim(s);
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
    if (s.empty() || s.front() == '-' || s.front() == '+') return false;
  }
  if (s.empty()) return false;
  long long v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v, 10);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return false;
  out = v;
  return true;
}

// ---- the CSV table -------------------------------------------------------------

class CsvTable {
 public:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

  // Reads and parses a file; `source` in messages is the path.
  static CsvTable read_file(const std::string& path, char delimiter = ',') {
    const std::vector<std::uint8_t> bytes = io::read_file_bytes(path, "read_csv");
    return parse(std::string(bytes.begin(), bytes.end()), path, delimiter);
  }

  // Parses text already in memory; `source` names it in messages.
  static CsvTable parse(std::string text, std::string source = "<memory>", char delimiter = ',') {
    check(delimiter != '"' && delimiter != '\n' && delimiter != '\r', "read_csv",
          "expected a delimiter other than a quote or a line break but got ", int(delimiter));
    CsvTable t;
    t.source_ = std::move(source);
    t.buf_ = std::move(text);
    t.delim_ = delimiter;
    t.parse_all();
    return t;
  }

  const std::string& source() const { return source_; }
  const std::vector<std::string>& header() const { return header_; }
  std::size_t rows() const { return line_.size(); }
  std::size_t cols() const { return cols_; }

  // The unescaped text of a cell (a view into the table's buffer).
  std::string_view cell(std::size_t row, std::size_t col) const {
    const std::size_t i = row * cols_ + col;
    return std::string_view(buf_.data() + begin_[i], size_[i]);
  }
  // The 1-based line of the file on which the row starts (the header is on
  // line 1 unless empty lines precede it).
  std::size_t line(std::size_t row) const { return line_[row]; }
  std::size_t header_line() const { return header_line_; }

  // Index of the column named `name`, or npos.
  std::size_t find_column(std::string_view name) const {
    std::size_t found = npos;
    for (std::size_t c = 0; c < cols_; ++c)
      if (header_[c] == name) {
        check(found == npos, "read_csv", "'", source_, "' line ", header_line_, ": column name '", name,
              "' appears twice in the header (columns #", found + 1, " and #", c + 1, ")");
        found = c;
      }
    return found;
  }
  // Index of the column named `name`; `wanted_by` (a flag, say) explains
  // why it must be there.
  std::size_t require_column(std::string_view name, std::string_view wanted_by = {}) const {
    const std::size_t c = find_column(name);
    if (c != npos) return c;
    std::string have;
    for (const auto& h : header_) have += (have.empty() ? "'" : ", '") + h + "'";
    fail("read_csv", "'", source_, "' line ", header_line_, " (header): no column '", name, "'",
         wanted_by.empty() ? std::string() : " (needed by " + std::string(wanted_by) + ")",
         "; the header has ", cols_, " columns: ", have);
  }

  // Throws Error(op, "'file' line L, column 'name' (#c): " + parts).
  template <class... Parts>
  [[noreturn]] void fail_cell(const char* op, std::size_t row, std::size_t col, const Parts&... parts) const {
    fail(op, "'", source_, "' line ", line_[row], ", column '", header_[col], "' (#", col + 1, "): ", parts...);
  }

 private:
  template <class... Parts>
  [[noreturn]] void fail_line(std::size_t line, const Parts&... parts) const {
    fail("read_csv", "'", source_, "' line ", line, ": ", parts...);
  }

  // "column #3 'click'" once the header is known, else "column #3".
  std::string column_desc(std::size_t field_no) const {
    std::string s = "column #" + std::to_string(field_no);
    if (field_no <= header_.size()) s += " '" + header_[field_no - 1] + "'";
    return s;
  }

  bool line_end_at(std::size_t p) const {
    const std::size_t n = buf_.size();
    return p >= n || buf_[p] == '\n' || (buf_[p] == '\r' && (p + 1 == n || buf_[p + 1] == '\n'));
  }

  void parse_all() {
    const std::size_t n = buf_.size();
    std::size_t pos = 0, line = 1;
    if (n >= 3 && std::memcmp(buf_.data(), "\xEF\xBB\xBF", 3) == 0) pos = 3;
    std::vector<std::size_t> fb;      // fields of the current record: begin
    std::vector<std::uint32_t> fs;    // and size
    bool have_header = false;
    char* b = &buf_[0];
    while (pos < n) {
      // Empty lines are skipped.
      if (b[pos] == '\n') {
        ++pos;
        ++line;
        continue;
      }
      if (b[pos] == '\r' && pos + 1 < n && b[pos + 1] == '\n') {
        pos += 2;
        ++line;
        continue;
      }
      const std::size_t record_line = line;
      fb.clear();
      fs.clear();
      for (;;) {
        const std::size_t field_no = fb.size() + 1;
        std::size_t start = pos, end = pos;
        if (pos < n && b[pos] == '"') {
          // Quoted: unescape in place; `end` trails `pos` once a "" is seen.
          const std::size_t quote_line = line;
          start = end = ++pos;
          for (;;) {
            if (pos >= n)
              fail_line(quote_line, column_desc(field_no), " opens a quote that is never closed (reached the end of the file)");
            const char c = b[pos];
            if (c == '"') {
              if (pos + 1 < n && b[pos + 1] == '"') {
                b[end++] = '"';
                pos += 2;
                continue;
              }
              ++pos;
              break;
            }
            if (c == '\n') ++line;
            b[end++] = c;
            ++pos;
          }
          if (!(pos >= n || b[pos] == delim_ || line_end_at(pos))) {
            std::size_t e = pos;
            while (e < n && e < pos + 20 && b[e] != '\n' && b[e] != '\r') ++e;
            fail_line(line, column_desc(field_no), " has ", detail::shown(std::string_view(b + pos, e - pos)),
                      " after its closing quote; expected '", delim_, "' or the end of the line");
          }
        } else {
          while (pos < n && b[pos] != delim_ && b[pos] != '\n') ++pos;
          end = pos;
          if (end > start && b[end - 1] == '\r' && (pos >= n || b[pos] == '\n')) --end;  // CRLF
        }
        if (end - start > 0xFFFFFFFFull) fail_line(record_line, column_desc(field_no), " is larger than 4 GiB");
        fb.push_back(start);
        fs.push_back(std::uint32_t(end - start));
        if (pos < n && b[pos] == delim_) {
          ++pos;
          continue;
        }
        // End of the record: skip its line break.
        if (pos < n && b[pos] == '\r') ++pos;
        if (pos < n && b[pos] == '\n') {
          ++pos;
          ++line;
        }
        break;
      }
      if (!have_header) {
        have_header = true;
        header_line_ = record_line;
        cols_ = fb.size();
        header_.reserve(cols_);
        for (std::size_t i = 0; i < cols_; ++i) header_.emplace_back(b + fb[i], fs[i]);
        // A record of cols_ fields takes at least cols_ bytes (cols_ - 1
        // delimiters and a line break, or one character and a line break
        // when cols_ is 1, as blank lines are skipped), so the bytes left
        // bound the records: the reservation is at most about 12 bytes per
        // byte of the file, however many line breaks it has.
        const std::size_t bound = (n - pos) / std::max<std::size_t>(cols_, 2) + 1;
        line_.reserve(bound);
        begin_.reserve(bound * cols_);
        size_.reserve(bound * cols_);
        continue;
      }
      if (fb.size() != cols_) {
        if (fb.size() < cols_)
          fail_line(record_line, "expected ", cols_, " fields as in the header but got ", fb.size(), " (column #",
                    fb.size() + 1, " '", header_[fb.size()], "' is missing)");
        fail_line(record_line, "expected ", cols_, " fields as in the header but got ", fb.size(),
                  " (extra field at column #", cols_ + 1, ")");
      }
      begin_.insert(begin_.end(), fb.begin(), fb.end());
      size_.insert(size_.end(), fs.begin(), fs.end());
      line_.push_back(record_line);
    }
    if (!have_header) fail("read_csv", "'", source_, "' line 1, column 1: the file is empty; expected a header row");
  }

  std::string source_;
  std::string buf_;
  char delim_ = ',';
  std::vector<std::string> header_;
  std::size_t cols_ = 0, header_line_ = 1;
  std::vector<std::size_t> begin_;   // (rows * cols) offsets into buf_
  std::vector<std::uint32_t> size_;  // (rows * cols)
  std::vector<std::size_t> line_;    // (rows)
};

// Appends one field to a CSV line, quoted when it holds a delimiter, a
// quote, a line break or surrounding blanks (which readers would trim).
inline void append_csv_field(std::string& out, std::string_view s, char delimiter = ',') {
  bool quote = !s.empty() && (detail::is_blank(s.front()) || detail::is_blank(s.back()));
  for (char c : s)
    if (c == delimiter || c == '"' || c == '\n' || c == '\r') {
      quote = true;
      break;
    }
  if (!quote) {
    out.append(s.data(), s.size());
    return;
  }
  out += '"';
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
}

// ---- tokens and item lists -------------------------------------------------------

namespace detail {
inline bool is_word_byte(unsigned char c) {
  // ASCII letters and digits, and every non-ASCII byte: only ASCII
  // punctuation and space separate words, so UTF-8 words stay whole.
  return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c >= 0x80;
}
}  // namespace detail

// Calls fn(word) for the lower-cased words of `text` — maximal runs of ASCII
// letters, digits and non-ASCII bytes — up to `max_words` of them (0 = all).
// `scratch` holds the lower-cased word passed to fn. Returns the count.
template <class Fn>
inline std::size_t for_each_word(std::string_view text, std::size_t max_words, std::string& scratch, Fn&& fn) {
  std::size_t count = 0, i = 0;
  const std::size_t n = text.size();
  while (i < n && (max_words == 0 || count < max_words)) {
    while (i < n && !detail::is_word_byte(static_cast<unsigned char>(text[i]))) ++i;
    if (i >= n) break;
    scratch.clear();
    while (i < n && detail::is_word_byte(static_cast<unsigned char>(text[i]))) {
      const char c = text[i++];
      scratch += (c >= 'A' && c <= 'Z') ? char(c + ('a' - 'A')) : c;
    }
    fn(std::string_view(scratch));
    ++count;
  }
  return count;
}

// The lower-cased words of `text`, at most max_words (0 = all).
inline std::vector<std::string> tokenize_words(std::string_view text, std::size_t max_words = 0) {
  std::vector<std::string> out;
  std::string scratch;
  for_each_word(text, max_words, scratch, [&](std::string_view w) { out.emplace_back(w); });
  return out;
}

// Calls fn(item) for each item of a `sep`-separated list ("Action|Comedy"),
// blanks around items trimmed; empty items are skipped, so an empty cell is
// an empty list and "a||b" has two items.
template <class Fn>
inline void for_each_item(std::string_view cell, char sep, Fn&& fn) {
  std::size_t start = 0;
  while (start <= cell.size()) {
    std::size_t end = cell.find(sep, start);
    if (end == std::string_view::npos) end = cell.size();
    const std::string_view item = detail::trim(cell.substr(start, end - start));
    if (!item.empty()) fn(item);
    start = end + 1;
  }
}

inline std::vector<std::string> split_items(std::string_view cell, char sep) {
  std::vector<std::string> out;
  for_each_item(cell, sep, [&](std::string_view s) { out.emplace_back(s); });
  return out;
}

// ---- vocabularies -------------------------------------------------------------------

// 64-bit FNV-1a of the bytes: the raw ID of a string in a hashed field
// (the model then mixes it with the table's salt into a bucket).
inline std::uint64_t hash_string(std::string_view s) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

// Strings to embedding rows. Row 0 is reserved for values not in the
// vocabulary (OOV); the i-th distinct token added gets row i + 1. An
// open-addressing table of token indices: lookups by string_view allocate
// nothing (std::unordered_map<std::string> would need a std::string per
// lookup in C++17).
class Vocabulary {
 public:
  static constexpr index_t kOov = 0;

  // The row of `token`, adding it if new.
  index_t add(std::string_view token) {
    if ((tokens_.size() + 1) * 2 > slots_.size()) grow();
    const std::uint64_t h = hash_string(token);
    std::size_t s = slot_of(token, h);
    if (slots_[s] != 0) return index_t(slots_[s]);
    tokens_.emplace_back(token);
    hashes_.push_back(h);
    slots_[s] = std::uint32_t(tokens_.size());
    return index_t(tokens_.size());
  }
  // The row of `token`, or kOov when it is not in the vocabulary.
  index_t find(std::string_view token) const {
    if (slots_.empty()) return kOov;
    return index_t(slots_[slot_of(token, hash_string(token))]);
  }
  bool contains(std::string_view token) const { return find(token) != kOov; }

  std::size_t size() const { return tokens_.size(); }          // distinct tokens
  index_t rows() const { return index_t(tokens_.size()) + 1; }  // embedding rows, OOV included
  // The token of row r (1 <= r < rows()).
  const std::string& token(index_t r) const {
    check(r >= 1 && r < rows(), "Vocabulary::token", "expected a row in [1, ", rows(), ") but got ", r);
    return tokens_[std::size_t(r - 1)];
  }
  // Tokens of rows 1, 2, ... in order.
  const std::vector<std::string>& tokens() const { return tokens_; }

  // Rebuilds a vocabulary from tokens() (the saved form); tokens must be distinct.
  static Vocabulary from_tokens(const std::vector<std::string>& tokens) {
    Vocabulary v;
    for (const auto& t : tokens) {
      const index_t before = v.rows();
      check(v.add(t) == before, "Vocabulary::from_tokens", "expected distinct tokens but '", t, "' appears twice");
    }
    return v;
  }

 private:
  std::size_t slot_of(std::string_view token, std::uint64_t h) const {
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t s = std::size_t(mix64(h)) & mask;; s = (s + 1) & mask) {
      const std::uint32_t t = slots_[s];
      if (t == 0 || (hashes_[t - 1] == h && tokens_[t - 1] == token)) return s;
    }
  }
  void grow() {
    check(tokens_.size() < 0x7FFFFFFFu, "Vocabulary::add", "more than 2^31 distinct tokens");
    std::vector<std::uint32_t> old;
    old.swap(slots_);
    slots_.assign(std::max<std::size_t>(16, old.size() * 2), 0);
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t t = 0; t < tokens_.size(); ++t) {
      std::size_t s = std::size_t(mix64(hashes_[t])) & mask;
      while (slots_[s] != 0) s = (s + 1) & mask;
      slots_[s] = std::uint32_t(t + 1);
    }
  }

  std::vector<std::string> tokens_;
  std::vector<std::uint64_t> hashes_;
  std::vector<std::uint32_t> slots_;  // 0 = empty, else token index + 1; a power of two, at most half full
};

// ---- standardisation ------------------------------------------------------------------

// x -> (x - mean) / std with the mean and population standard deviation of
// the training values; a constant column (std 0) keeps std 1, so it becomes
// all zeros instead of dividing by zero.
//
// fit() uses Welford's one-pass update on the values divided by a power of
// two at or above their largest magnitude, so neither the sum nor the squared deviations can
// overflow for any finite input (1e200 included) and a large common offset
// (timestamps, say) loses no precision to cancellation. A non-finite input is
// an error, never a silent std of 1.
struct Standardizer {
  double mean = 0.0;
  double sd = 1.0;  // never 0

  static Standardizer fit(const double* x, std::size_t n) {
    Standardizer s;
    if (n == 0) return s;
    double scale = 0;
    for (std::size_t i = 0; i < n; ++i) {
      check(std::isfinite(x[i]), "Standardizer::fit", "expected finite values but value #", i + 1, " is ", x[i]);
      scale = std::max(scale, std::fabs(x[i]));
    }
    if (scale == 0) return Standardizer{0.0, 1.0};
    // A power of two at or above the largest magnitude: dividing by it and
    // multiplying back are exact.
    int e = 0;
    std::frexp(scale, &e);
    scale = std::ldexp(1.0, std::min(e, 1023));  // 2^1023: the scaled values stay within [-2, 2]
    double m = 0, m2 = 0;  // mean and sum of squared deviations of x / scale: |m| <= 2, m2 <= 4n
    for (std::size_t i = 0; i < n; ++i) {
      const double v = x[i] / scale;
      const double d = v - m;
      m += d / double(i + 1);
      m2 += d * (v - m);
    }
    s.mean = m * scale;
    const double sd = std::sqrt(std::max(0.0, m2) / double(n)) * scale;
    s.sd = sd > 0 ? sd : 1.0;
    check(std::isfinite(s.mean) && std::isfinite(s.sd), "Standardizer::fit", "expected a finite mean and std but got ",
          s.mean, " and ", s.sd);
    return s;
  }
  static Standardizer fit(const std::vector<double>& x) { return fit(x.data(), x.size()); }
  double apply(double x) const { return (x - mean) / sd; }
  double invert(double z) const { return z * sd + mean; }
};

// ---- splits -----------------------------------------------------------------------------

struct SplitFractions {
  double train = 1.0, valid = 0.0, test = 0.0;
};

// "0.8,0.1,0.1": three fractions in [0, 1], train > 0, summing to 1 within 1e-6.
inline SplitFractions parse_split(std::string_view text) {
  const char* op = "parse_split";
  double v[3];
  std::size_t k = 0, start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string_view::npos) end = text.size();
    check(k < 3, op, "expected 3 comma-separated fractions (train,valid,test) but got more in '", text, "'");
    check(parse_number(text.substr(start, end - start), v[k]), op, "fraction #", k + 1, " of '", text,
          "' expected a number but got '", text.substr(start, end - start), "'");
    check(v[k] >= 0 && v[k] <= 1, op, "fraction #", k + 1, " of '", text, "' expected in [0, 1] but got ", v[k]);
    ++k;
    start = end + 1;
  }
  check(k == 3, op, "expected 3 comma-separated fractions (train,valid,test) but got ", k, " in '", text, "'");
  check(v[0] > 0, op, "expected a training fraction > 0 in '", text, "'");
  const double sum = v[0] + v[1] + v[2];
  check(std::fabs(sum - 1.0) <= 1e-6, op, "expected fractions summing to 1 (within 1e-6) but '", text, "' sums to ",
        sum);
  return {v[0], v[1], v[2]};
}

struct RowSplit {
  std::vector<std::size_t> train, valid, test;  // each ascending (file order)
};

// A seeded random split of rows [0, n): a permutation (shuffle_indices,
// so the same for a seed on every machine and thread count) cut at
// round(train * n) and round((train + valid) * n). Cutting the cumulative
// fractions keeps the three parts disjoint and complete whatever the
// rounding; a fraction of 0 gives an empty part. Each part is then sorted so
// that rows keep their file order.
inline RowSplit split_rows(std::size_t n, const SplitFractions& f, std::uint64_t seed) {
  const char* op = "split_rows";
  check(f.train > 0 && f.valid >= 0 && f.test >= 0 && std::fabs(f.train + f.valid + f.test - 1.0) <= 1e-6, op,
        "expected fractions >= 0 (train > 0) summing to 1 but got ", f.train, ",", f.valid, ",", f.test);
  std::vector<std::size_t> perm(n);
  for (std::size_t i = 0; i < n; ++i) perm[i] = i;
  shuffle_indices(perm.data(), std::uint64_t(n), seed, 0x5B1D);
  const auto cut = [&](double frac) {
    return std::min<std::size_t>(n, std::size_t(std::llround(std::min(frac, 1.0) * double(n))));
  };
  const std::size_t b1 = cut(f.train);
  std::size_t b2 = f.test == 0 ? n : std::max(b1, cut(f.train + f.valid));
  if (f.valid == 0) b2 = b1;
  RowSplit s;
  s.train.assign(perm.begin(), perm.begin() + std::ptrdiff_t(b1));
  s.valid.assign(perm.begin() + std::ptrdiff_t(b1), perm.begin() + std::ptrdiff_t(b2));
  s.test.assign(perm.begin() + std::ptrdiff_t(b2), perm.end());
  std::sort(s.train.begin(), s.train.end());
  std::sort(s.valid.begin(), s.valid.end());
  std::sort(s.test.begin(), s.test.end());
  return s;
}

}  // namespace data
}  // namespace mtrec
