// mtrec: a small, strict JSON value type (RFC 8259) for configs and
// checkpoint headers.
//
//   json::Value v = json::parse(R"({"lr": 0.001, "layers": [64, 32]})");
//   double lr = v.at("lr").as_double();
//   v.set("name", "mmoe");
//   std::string text = v.dump();          // compact, deterministic
//
// Decisions:
//   * Numbers keep their kind. A literal without '.', 'e' or 'E' that fits in
//     int64 is an integer (exact over the whole int64 range, not only up to
//     2^53); everything else is a double. dump() writes integers without a
//     decimal point and doubles in the shortest form that reads back to the
//     same bits (std::to_chars), with ".0" added when that form would look
//     like an integer, so parse(dump(v)) == v including the kind.
//   * Objects keep their members in insertion order (a vector of pairs), so a
//     dump is deterministic and a writer controls the layout (the safetensors
//     header puts "__metadata__" first and tensors in data order). Lookup is a
//     linear scan: objects here are configs and headers, read once.
//   * parse() is strict: no comments, no trailing commas, no NaN/Infinity, no
//     leading zeros, no raw control characters in strings, strings must be
//     valid UTF-8, \uXXXX escapes (surrogate pairs included) become UTF-8,
//     lone surrogates are rejected, duplicate keys are rejected (RFC 8259
//     leaves them undefined; for a checkpoint header a silent "last one wins"
//     would hide corruption), nesting deeper than max_depth is rejected, and
//     nothing but whitespace may follow the value. Every error names the byte
//     offset and what was expected. Limiting the input size is the caller's
//     job (the safetensors reader caps its header at 100 MB).
//   * Numbers that overflow a double (1e400) are rejected; ones that
//     underflow (1e-400) become +-0, as in every mainstream parser.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "mtrec/core/error.hpp"

namespace mtrec {
namespace json {

// Declared before the Array/Object aliases: GCC -Wshadow would otherwise
// flag the enumerators.
enum class Type { Null, Bool, Int, Double, String, Array, Object };

class Value;
using Array = std::vector<Value>;
// Members in insertion order. Keys are unique: set() replaces, parse()
// rejects duplicates; code that appends through as_object() directly must
// keep them unique itself (dump() does not check).
using Object = std::vector<std::pair<std::string, Value>>;

inline const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "bool";
    case Type::Int: return "integer";
    case Type::Double: return "double";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

// Default nesting limit of parse(): deep enough for any config, shallow
// enough that the recursive parser cannot exhaust the stack.
constexpr int kDefaultMaxDepth = 64;

class Value {
 public:
  Value() = default;  // null
  Value(std::nullptr_t) {}
  Value(bool b) : v_(b) {}
  // Any integer type except bool. Unsigned values above INT64_MAX do not fit.
  template <class I, std::enable_if_t<std::is_integral<I>::value && !std::is_same<I, bool>::value, int> = 0>
  Value(I i) : v_(to_int64(i)) {}
  Value(double d) : v_(d) {}
  Value(float f) : v_(double(f)) {}
  Value(const char* s) : v_(std::string(s)) {}
  // Other pointers would silently become a bool.
  template <class P, std::enable_if_t<!std::is_same<std::remove_cv_t<P>, char>::value, int> = 0>
  Value(P*) = delete;
  Value(std::string s) : v_(std::move(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  Value(Array a) : v_(std::move(a)) {}
  Value(Object o) : v_(std::move(o)) {}

  static Value array() { return Value(Array{}); }
  static Value object() { return Value(Object{}); }

  Type type() const { return static_cast<Type>(v_.index()); }
  bool is_null() const { return type() == Type::Null; }
  bool is_bool() const { return type() == Type::Bool; }
  bool is_int() const { return type() == Type::Int; }
  bool is_double() const { return type() == Type::Double; }
  bool is_number() const { return is_int() || is_double(); }
  bool is_string() const { return type() == Type::String; }
  bool is_array() const { return type() == Type::Array; }
  bool is_object() const { return type() == Type::Object; }

  // Typed access; a mismatch throws naming the expected and the actual type.
  bool as_bool() const { return get<bool>("json::Value::as_bool", Type::Bool); }
  // Only integers: 2.0 is a double, and a config that says 2.0 where an
  // integer belongs is more likely a mistake than an intent.
  std::int64_t as_int() const { return get<std::int64_t>("json::Value::as_int", Type::Int); }
  // Integers convert (exactly up to 2^53).
  double as_double() const {
    if (is_int()) return double(std::get<std::int64_t>(v_));
    return get<double>("json::Value::as_double", Type::Double);
  }
  const std::string& as_string() const { return get<std::string>("json::Value::as_string", Type::String); }
  const Array& as_array() const { return get<Array>("json::Value::as_array", Type::Array); }
  Array& as_array() { return get<Array>("json::Value::as_array", Type::Array); }
  const Object& as_object() const { return get<Object>("json::Value::as_object", Type::Object); }
  Object& as_object() { return get<Object>("json::Value::as_object", Type::Object); }

  // Number of elements (array) or members (object).
  std::size_t size() const {
    if (is_array()) return std::get<Array>(v_).size();
    if (is_object()) return std::get<Object>(v_).size();
    fail("json::Value::size", "expected an array or an object, got ", type_name(type()));
  }

  // Object member by key: nullptr when absent (find) or an error naming the
  // key and the keys present (at).
  const Value* find(std::string_view key) const {
    for (const auto& m : get<Object>("json::Value::find", Type::Object))
      if (m.first == key) return &m.second;
    return nullptr;
  }
  Value* find(std::string_view key) { return const_cast<Value*>(static_cast<const Value&>(*this).find(key)); }
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  const Value& at(std::string_view key) const {
    const Value* v = find(key);
    if (!v) missing_key(key);
    return *v;
  }
  Value& at(std::string_view key) { return const_cast<Value&>(static_cast<const Value&>(*this).at(key)); }

  // Array element by index.
  const Value& at(std::size_t i) const {
    const Array& a = get<Array>("json::Value::at", Type::Array);
    check(i < a.size(), "json::Value::at", "index ", i, " out of range for an array of ", a.size(), " elements");
    return a[i];
  }
  Value& at(std::size_t i) { return const_cast<Value&>(static_cast<const Value&>(*this).at(i)); }
  // Any integer type; without this, at(0) would be ambiguous between
  // size_t and string_view (0 is a null pointer constant).
  template <class I, std::enable_if_t<std::is_integral<I>::value && !std::is_same<I, bool>::value &&
                                          !std::is_same<I, std::size_t>::value, int> = 0>
  const Value& at(I i) const {
    if constexpr (std::is_signed<I>::value) check(i >= 0, "json::Value::at", "negative index ", i);
    return at(static_cast<std::size_t>(i));
  }
  template <class I, std::enable_if_t<std::is_integral<I>::value && !std::is_same<I, bool>::value &&
                                          !std::is_same<I, std::size_t>::value, int> = 0>
  Value& at(I i) {
    return const_cast<Value&>(static_cast<const Value&>(*this).at(i));
  }

  // Sets a member: replaces the value of an existing key in place (keeping
  // its position), appends a new key at the end. A null value becomes an
  // empty object first, so `Value v; v.set("a", 1);` works.
  Value& set(std::string key, Value value) {
    if (is_null()) v_ = Object{};
    Object& o = get<Object>("json::Value::set", Type::Object);
    for (auto& m : o)
      if (m.first == key) {
        m.second = std::move(value);
        return m.second;
      }
    o.emplace_back(std::move(key), std::move(value));
    return o.back().second;
  }
  // Appends to an array (a null value becomes an empty array first).
  Value& push_back(Value value) {
    if (is_null()) v_ = Array{};
    Array& a = get<Array>("json::Value::push_back", Type::Array);
    a.push_back(std::move(value));
    return a.back();
  }

  // Structural equality. Kinds must match (1 != 1.0). Objects compare as
  // maps: member order does not matter. Doubles compare with ==, so NaN != NaN.
  friend bool operator==(const Value& a, const Value& b) {
    if (a.type() != b.type()) return false;
    if (!a.is_object()) return a.v_ == b.v_;
    const Object& x = std::get<Object>(a.v_);
    const Object& y = std::get<Object>(b.v_);
    if (x.size() != y.size()) return false;
    for (const auto& m : x) {
      const Value* other = b.find(m.first);
      if (!other || !(m.second == *other)) return false;
    }
    return true;
  }
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

  // Compact JSON (indent < 0), or pretty-printed with `indent` spaces per
  // level. Throws for NaN/Inf (JSON has no spelling for them) and for strings
  // that are not valid UTF-8 (the output would not be JSON).
  std::string dump(int indent = -1) const {
    std::string out;
    dump_to(out, indent, 0);
    return out;
  }

 private:
  template <class I>
  static std::int64_t to_int64(I i) {
    if constexpr (std::is_unsigned<I>::value) {
      check(static_cast<std::uint64_t>(i) <= std::uint64_t(std::numeric_limits<std::int64_t>::max()), "json::Value",
            "unsigned integer ", i, " exceeds the int64 range of JSON integers (max ",
            std::numeric_limits<std::int64_t>::max(), ")");
    }
    return static_cast<std::int64_t>(i);
  }

  template <class T>
  const T& get(const char* op, Type want) const {
    const T* p = std::get_if<T>(&v_);
    if (!p) fail(op, "expected ", want == Type::Double ? "a number" : article(want), " but the value is ", article(type()));
    return *p;
  }
  template <class T>
  T& get(const char* op, Type want) {
    return const_cast<T&>(static_cast<const Value&>(*this).get<T>(op, want));
  }
  static std::string article(Type t) {
    switch (t) {
      case Type::Null: return "null";
      case Type::Int: return "an integer";
      case Type::Double: return "a floating-point number";
      case Type::Array: return "an array";
      case Type::Object: return "an object";
      default: return std::string("a ") + type_name(t);
    }
  }

  [[noreturn]] void missing_key(std::string_view key) const {
    std::string keys;
    const Object& o = std::get<Object>(v_);
    const std::size_t shown = std::min<std::size_t>(o.size(), 20);
    for (std::size_t i = 0; i < shown; ++i) keys += (i ? ", \"" : "\"") + o[i].first + "\"";
    if (o.size() > shown) keys += ", ... (" + std::to_string(o.size()) + " keys)";
    fail("json::Value::at", "no key \"", key, "\" in the object; it has ", o.empty() ? std::string("no keys") : keys);
  }

  static void newline(std::string& out, int indent, int level) {
    if (indent < 0) return;
    out += '\n';
    out.append(std::size_t(indent) * std::size_t(level), ' ');
  }

  void dump_to(std::string& out, int indent, int level) const;

  std::variant<std::nullptr_t, bool, std::int64_t, double, std::string, Array, Object> v_;
};

namespace detail {

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 when the
// bytes there are not valid UTF-8 (overlong forms, UTF-16 surrogates and
// code points above U+10FFFF are invalid, per RFC 3629).
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) -> unsigned { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0x100u; };
  const unsigned c = b(0);
  const auto cont = [&](std::size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return b(k) >= lo && b(k) <= hi; };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c == 0xE0) return cont(1, 0xA0, 0xBF) && cont(2) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;  // excludes U+D800..U+DFFF
  if (c == 0xF0) return cont(1, 0x90, 0xBF) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;  // up to U+10FFFF
  return 0;
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

inline void dump_string(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const std::size_t n = utf8_sequence_length(s, i);
      if (n == 0)
        fail("json::Value::dump", "string is not valid UTF-8 at byte ", i, " (byte 0x", hex[c >> 4], hex[c & 15],
             "); JSON text must be UTF-8");
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += char(c);
        }
    }
    ++i;
  }
  out += '"';
}

inline void dump_double(std::string& out, double d) {
  check(d == d && d - d == 0, "json::Value::dump", "cannot write ", d, ": JSON has no NaN or infinity");
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), d);  // shortest round-trip form
  std::string_view s(buf, std::size_t(r.ptr - buf));
  out.append(s);
  // "2" would read back as an integer; keep the kind.
  if (s.find_first_of(".e") == std::string_view::npos) out += ".0";
}

}  // namespace detail

inline void Value::dump_to(std::string& out, int indent, int level) const {
  switch (type()) {
    case Type::Null: out += "null"; return;
    case Type::Bool: out += std::get<bool>(v_) ? "true" : "false"; return;
    case Type::Int: {
      char buf[24];
      const auto r = std::to_chars(buf, buf + sizeof(buf), std::get<std::int64_t>(v_));
      out.append(buf, r.ptr);
      return;
    }
    case Type::Double: detail::dump_double(out, std::get<double>(v_)); return;
    case Type::String: detail::dump_string(out, std::get<std::string>(v_)); return;
    case Type::Array: {
      const Array& a = std::get<Array>(v_);
      out += '[';
      for (std::size_t i = 0; i < a.size(); ++i) {
        if (i) out += ',';
        newline(out, indent, level + 1);
        a[i].dump_to(out, indent, level + 1);
      }
      if (!a.empty()) newline(out, indent, level);
      out += ']';
      return;
    }
    case Type::Object: {
      const Object& o = std::get<Object>(v_);
      out += '{';
      for (std::size_t i = 0; i < o.size(); ++i) {
        if (i) out += ',';
        newline(out, indent, level + 1);
        detail::dump_string(out, o[i].first);
        out += indent < 0 ? ":" : ": ";
        o[i].second.dump_to(out, indent, level + 1);
      }
      if (!o.empty()) newline(out, indent, level);
      out += '}';
      return;
    }
  }
}

namespace detail {

class Parser {
 public:
  Parser(std::string_view text, int max_depth) : s_(text), max_depth_(max_depth) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (i_ != s_.size()) error(i_, "expected the end of input after the value, found ", found(i_));
    return v;
  }

 private:
  template <class... P>
  [[noreturn]] void error(std::size_t at, const P&... parts) const {
    fail("json::parse", "at byte offset ", at, ": ", parts...);
  }

  // What is at position i, for "found ..." in messages.
  std::string found(std::size_t i) const {
    if (i >= s_.size()) return "the end of input";
    const unsigned char c = static_cast<unsigned char>(s_[i]);
    if (c >= 0x20 && c < 0x7F) return std::string("'") + char(c) + "'";
    static const char* hex = "0123456789ABCDEF";
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }

  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  Value parse_value(int depth) {
    if (i_ >= s_.size()) error(i_, "expected a value, found the end of input");
    switch (s_[i_]) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return Value(parse_string());
      case 't': return literal("true", Value(true));
      case 'f': return literal("false", Value(false));
      case 'n': return literal("null", Value());
      default:
        if (s_[i_] == '-' || (s_[i_] >= '0' && s_[i_] <= '9')) return parse_number();
        error(i_, "expected a value (object, array, string, number, true, false or null), found ", found(i_));
    }
  }

  Value literal(std::string_view word, Value v) {
    if (s_.substr(i_, word.size()) != word) error(i_, "expected '", word, "', found ", found(i_));
    i_ += word.size();
    return v;
  }

  void enter(int depth) {
    if (depth > max_depth_) error(i_, "nesting deeper than the limit of ", max_depth_, " arrays/objects");
  }

  Value parse_array(int depth) {
    enter(depth);
    ++i_;  // '['
    Array a;
    skip_ws();
    if (i_ < s_.size() && s_[i_] == ']') {
      ++i_;
      return Value(std::move(a));
    }
    for (;;) {
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ']') error(i_, "expected a value after ',' (trailing commas are not allowed)");
      a.push_back(parse_value(depth));
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return Value(std::move(a));
      }
      error(i_, "expected ',' or ']' in an array, found ", found(i_));
    }
  }

  Value parse_object(int depth) {
    enter(depth);
    ++i_;  // '{'
    Object o;
    std::vector<std::size_t> key_offsets;  // for the duplicate-key message
    skip_ws();
    if (i_ < s_.size() && s_[i_] == '}') {
      ++i_;
      return Value(std::move(o));
    }
    for (;;) {
      skip_ws();
      if (i_ >= s_.size() || s_[i_] != '"') {
        if (i_ < s_.size() && s_[i_] == '}' && !o.empty())
          error(i_, "expected a key after ',' (trailing commas are not allowed)");
        error(i_, "expected a string key in an object, found ", found(i_));
      }
      key_offsets.push_back(i_);
      std::string key = parse_string();
      skip_ws();
      if (i_ >= s_.size() || s_[i_] != ':') error(i_, "expected ':' after the key \"", key, "\", found ", found(i_));
      ++i_;
      skip_ws();
      Value v = parse_value(depth);
      o.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ',') {
        ++i_;
        continue;
      }
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        break;
      }
      error(i_, "expected ',' or '}' in an object, found ", found(i_));
    }
    // Duplicate keys: sort member indices by key (O(n log n), no key copies;
    // the vector no longer moves) and compare neighbours. Report the later
    // occurrence of the first duplicated key in text order.
    if (o.size() > 1) {
      std::vector<std::size_t> idx(o.size());
      for (std::size_t k = 0; k < idx.size(); ++k) idx[k] = k;
      std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
        return o[a].first != o[b].first ? o[a].first < o[b].first : a < b;
      });
      std::size_t worst = o.size();
      for (std::size_t k = 1; k < idx.size(); ++k)
        if (o[idx[k]].first == o[idx[k - 1]].first) worst = std::min(worst, idx[k]);
      if (worst < o.size()) error(key_offsets[worst], "duplicate key \"", o[worst].first, "\" in an object");
    }
    return Value(std::move(o));
  }

  unsigned hex4(std::size_t at) {
    if (at + 4 > s_.size()) error(at, "expected 4 hex digits after \\u, found the end of input");
    unsigned v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const char c = s_[at + k];
      unsigned d;
      if (c >= '0' && c <= '9') d = unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') d = unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = unsigned(c - 'A' + 10);
      else error(at + k, "expected a hex digit in a \\u escape, found ", found(at + k));
      v = v * 16 + d;
    }
    return v;
  }

  std::string parse_string() {
    const std::size_t start = i_;
    ++i_;  // opening quote
    std::string out;
    for (;;) {
      // Copy a run of ordinary ASCII bytes in one go.
      std::size_t run = i_;
      while (run < s_.size()) {
        const unsigned char c = static_cast<unsigned char>(s_[run]);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++run;
      }
      out.append(s_.substr(i_, run - i_));
      i_ = run;
      if (i_ >= s_.size()) error(start, "unterminated string (no closing '\"' before the end of input)");
      const unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c < 0x20) error(i_, "raw control character ", found(i_), " in a string (must be escaped)");
      if (c >= 0x80) {
        const std::size_t n = utf8_sequence_length(s_, i_);
        if (n == 0) error(i_, "invalid UTF-8 in a string at ", found(i_));
        out.append(s_.substr(i_, n));
        i_ += n;
        continue;
      }
      // Backslash escape.
      const std::size_t esc = i_;
      if (i_ + 1 >= s_.size()) error(i_, "unterminated escape sequence at the end of input");
      const char e = s_[i_ + 1];
      i_ += 2;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = hex4(i_);
          i_ += 4;
          if (cp >= 0xDC00 && cp <= 0xDFFF)
            error(esc, "lone low surrogate \\u", s_.substr(esc + 2, 4), " (not preceded by a high surrogate)");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!(i_ + 1 < s_.size() && s_[i_] == '\\' && s_[i_ + 1] == 'u'))
              error(esc, "lone high surrogate \\u", s_.substr(esc + 2, 4),
                    " (expected a \\uDC00-\\uDFFF low surrogate to follow)");
            const std::uint32_t lo = hex4(i_ + 2);
            if (lo < 0xDC00 || lo > 0xDFFF)
              error(esc, "high surrogate \\u", s_.substr(esc + 2, 4), " followed by \\u", s_.substr(i_ + 2, 4),
                    ", which is not a low surrogate (\\uDC00-\\uDFFF)");
            i_ += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          error(esc, "invalid escape: backslash followed by ", found(esc + 1),
                " (expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
      }
    }
  }

  Value parse_number() {
    const std::size_t start = i_;
    const auto digit = [&](std::size_t k) { return k < s_.size() && s_[k] >= '0' && s_[k] <= '9'; };
    std::size_t k = i_;
    if (s_[k] == '-') ++k;
    if (!digit(k)) error(k, "expected a digit after '-', found ", found(k));
    const std::size_t int_begin = k;
    if (s_[k] == '0') {
      ++k;
      if (digit(k)) error(int_begin, "leading zeros are not allowed in numbers");
    } else {
      while (digit(k)) ++k;
    }
    const std::size_t int_end = k;
    bool is_integer = true;
    if (k < s_.size() && s_[k] == '.') {
      is_integer = false;
      ++k;
      if (!digit(k)) error(k, "expected a digit after the decimal point, found ", found(k));
      while (digit(k)) ++k;
    }
    std::int64_t exp10 = 0;  // saturated value of the exponent, for the overflow/underflow decision
    if (k < s_.size() && (s_[k] == 'e' || s_[k] == 'E')) {
      is_integer = false;
      ++k;
      bool neg = false;
      if (k < s_.size() && (s_[k] == '+' || s_[k] == '-')) neg = s_[k++] == '-';
      if (!digit(k)) error(k, "expected a digit in the exponent, found ", found(k));
      while (digit(k)) {
        exp10 = std::min<std::int64_t>(exp10 * 10 + (s_[k] - '0'), 1000000);
        ++k;
      }
      if (neg) exp10 = -exp10;
    }
    i_ = k;
    const char* first = s_.data() + start;
    const char* last = s_.data() + k;
    if (is_integer) {
      std::int64_t iv = 0;
      const auto r = std::from_chars(first, last, iv);
      if (r.ec == std::errc() && r.ptr == last) return Value(iv);
      // Beyond int64: fall through to a double, as most parsers do.
    }
    double d = 0;
    const auto r = std::from_chars(first, last, d);
    if (r.ec == std::errc::result_out_of_range) {
      // Decimal magnitude of the number: position of its first significant
      // digit relative to the decimal point, plus the exponent.
      std::int64_t mag = 0;
      bool found_digit = false;
      for (std::size_t p = int_begin; p < k && !found_digit; ++p) {
        if (s_[p] == '.') continue;
        if (s_[p] == 'e' || s_[p] == 'E') break;
        if (s_[p] != '0') {
          found_digit = true;
          mag = p < int_end ? std::int64_t(int_end - p) : -std::int64_t(p - int_end - 1);
        }
      }
      if (found_digit && mag + exp10 > 0)
        error(start, "number ", s_.substr(start, k - start), " is out of the range of a double");
      return Value(s_[start] == '-' ? -0.0 : 0.0);  // underflow
    }
    if (r.ec != std::errc() || r.ptr != last) error(start, "malformed number ", s_.substr(start, k - start));
    return Value(d);
  }

  std::string_view s_;
  std::size_t i_ = 0;
  int max_depth_;
};

}  // namespace detail

// Parses one JSON value (RFC 8259, strict; see the top of this file).
// Throws mtrec::Error("json::parse", "at byte offset N: expected ...").
inline Value parse(std::string_view text, int max_depth = kDefaultMaxDepth) {
  return detail::Parser(text, max_depth).parse_document();
}

}  // namespace json
}  // namespace mtrec
