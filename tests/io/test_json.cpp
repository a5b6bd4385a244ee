// io/json: the strict JSON value type used for configs and checkpoint headers.
#include "support/gradcheck.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include <mtrec/io/json.hpp>

using mtrec::json::Value;
using mtrec::json::parse;

namespace {

// parse(text) must throw an Error naming `offset` and every fragment.
void require_parse_error(const std::string& text, std::size_t offset, std::initializer_list<const char*> fragments) {
  INFO("input: " << text);
  const std::string at = "at byte offset " + std::to_string(offset) + ":";
  try {
    (void)parse(text);
  } catch (const mtrec::Error& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(e.op() == "json::parse");
    CHECK(msg.find(at) != std::string::npos);
    for (const char* f : fragments) CHECK(msg.find(f) != std::string::npos);
    return;
  }
  FAIL("expected json::parse to throw for: " << text);
}

std::uint64_t bits(double d) {
  std::uint64_t b;
  std::memcpy(&b, &d, 8);
  return b;
}

}  // namespace

TEST_CASE("json: every kind of value parses and dumps back to the same text", "[io][json]") {
  const char* texts[] = {
      "null", "true", "false", "0", "-1", "42", "9223372036854775807", "-9223372036854775808", "0.5", "-2.5",
      "1e+300", "5e-324", "\"\"", "\"abc\"", "[]", "{}", "[1,[2,[3,[]]],{}]",
      R"({"b":1,"a":[true,false,null],"c":{"d":"e"}})",
  };
  for (const char* t : texts) {
    INFO(t);
    const Value v = parse(t);
    CHECK(v.dump() == t);
    CHECK(parse(v.dump()) == v);
  }
  const Value v = parse(R"({"b":1,"a":[true,false,null],"c":{"d":"e"}})");
  CHECK(v.is_object());
  CHECK(v.size() == 3);
  // Insertion order is kept: "b" stays first.
  CHECK(v.as_object()[0].first == "b");
  CHECK(v.at("a").at(0).as_bool());
  CHECK(v.at("a").at(2).is_null());
  CHECK(v.at("c").at("d").as_string() == "e");
}

TEST_CASE("json: whitespace is allowed around tokens and pretty printing reparses", "[io][json]") {
  const Value v = parse(" \t\r\n{ \"a\" : [ 1 , 2 ] ,\n\"b\" : { } } \n");
  CHECK(v.dump() == R"({"a":[1,2],"b":{}})");
  const std::string pretty = v.dump(2);
  CHECK(pretty == "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}");
  CHECK(parse(pretty) == v);
}

TEST_CASE("json: numbers keep their kind, doubles round-trip bit for bit", "[io][json]") {
  CHECK(parse("7").is_int());
  CHECK(parse("7").as_int() == 7);
  CHECK(parse("-0").is_int());
  CHECK(parse("7.0").is_double());
  CHECK(parse("7e0").is_double());
  CHECK(parse("7E+2").as_double() == 700.0);
  CHECK(parse("-1.5e-3").as_double() == -0.0015);
  CHECK(parse("7").as_double() == 7.0);  // integers convert to double on request
  // Integers beyond 2^53 stay exact.
  CHECK(parse("9007199254740993").as_int() == 9007199254740993LL);
  CHECK(Value(std::int64_t(9007199254740993LL)).dump() == "9007199254740993");
  CHECK(parse("-9223372036854775808").as_int() == std::numeric_limits<std::int64_t>::min());
  // Beyond int64: a double.
  CHECK(parse("9223372036854775808").is_double());
  CHECK(parse("9223372036854775808").as_double() == 9223372036854775808.0);

  // Doubles dump in the shortest form that reads back to the same bits.
  CHECK(Value(0.1).dump() == "0.1");
  CHECK(Value(1.0 / 3.0).dump() == "0.3333333333333333");
  CHECK(Value(2.0).dump() == "2.0");  // not "2": that would read back as an integer
  CHECK(Value(-0.0).dump() == "-0.0");
  CHECK(Value(1e21).dump() == "1e+21");
  CHECK(Value(1e-7).dump() == "1e-07");
  const double samples[] = {0.1,   0.2,     1.0 / 3.0, 2.0 / 3.0, 1e-300, 1e300, 5e-324, 2.2250738585072014e-308,
                            M_PI,  -M_E,    123456.789, 1e16 + 2, -0.0,   std::numeric_limits<double>::max(),
                            0.3,   1e23};
  for (double d : samples) {
    INFO(d);
    const Value back = parse(Value(d).dump());
    REQUIRE(back.is_double());
    CHECK(bits(back.as_double()) == bits(d));
  }
  // Underflow becomes zero (as in every mainstream parser); overflow is an error.
  CHECK(parse("1e-400").as_double() == 0.0);
  CHECK(std::signbit(parse("-1e-400").as_double()));
  CHECK(parse("0e99999999999").as_double() == 0.0);
  require_parse_error("[1e400]", 1, {"out of the range of a double"});
  require_parse_error("-123.4e99999", 0, {"out of the range"});
  // NaN and infinity have no JSON spelling.
  testing::require_error([] { (void)Value(std::nan("")).dump(); }, {"json::Value::dump", "NaN or infinity"});
  testing::require_error([] { (void)Value(HUGE_VAL).dump(); }, {"json::Value::dump", "inf"});
}

TEST_CASE("json: string escapes and unicode", "[io][json]") {
  CHECK(parse(R"("a\"b\\c\/d\be\ff\ng\rh\ti")").as_string() == "a\"b\\c/d\be\ff\ng\rh\ti");
  CHECK(parse(R"("\u0041\u00e9\u20AC")").as_string() == "A\xC3\xA9\xE2\x82\xAC");  // A, é, €
  CHECK(parse(R"("\ud83d\ude00")").as_string() == "\xF0\x9F\x98\x80");             // U+1F600 (surrogate pair)
  CHECK(parse(R"("\uDBFF\uDFFF")").as_string() == "\xF4\x8F\xBF\xBF");             // U+10FFFF
  CHECK(parse(R"("\u0000")").as_string() == std::string(1, '\0'));
  // Raw UTF-8 passes through.
  CHECK(parse("\"h\xC3\xA9llo \xF0\x9F\x98\x80\"").as_string() == "h\xC3\xA9llo \xF0\x9F\x98\x80");

  // dump escapes quotes, backslashes and control characters; everything else is raw UTF-8.
  std::string s = "q\"b\\n\n\t";
  s += '\x01';
  s += '\x1f';
  s += "/\x7f\xC3\xA9";
  s += '\0';
  const std::string dumped = Value(s).dump();
  CHECK(dumped == R"("q\"b\\n\n\t\u0001\u001f/)" "\x7f\xC3\xA9" R"(\u0000")");
  CHECK(parse(dumped).as_string() == s);
  // Strings that are not UTF-8 cannot be written as JSON.
  testing::require_error([] { (void)Value(std::string("ab\xFF")).dump(); }, {"json::Value::dump", "UTF-8", "byte 2"});
  testing::require_error([] { (void)Value(std::string("\xC3")).dump(); }, {"UTF-8"});
}

TEST_CASE("json: accessors throw clear errors on a type or key mismatch", "[io][json]") {
  const Value v = parse(R"({"lr":0.01,"layers":[64,32],"name":"mmoe","n":3})");
  CHECK(v.at("n").as_int() == 3);
  CHECK(v.at("lr").as_double() == 0.01);
  CHECK(v.contains("name"));
  CHECK_FALSE(v.contains("nam"));
  CHECK(v.find("missing") == nullptr);
  testing::require_error([&] { (void)v.at("dropout"); }, {"json::Value::at", "\"dropout\"", "\"lr\"", "\"n\""});
  testing::require_error([&] { (void)v.at("lr").as_int(); }, {"as_int", "expected an integer", "floating-point"});
  testing::require_error([&] { (void)v.at("name").as_double(); }, {"as_double", "expected a number", "a string"});
  testing::require_error([&] { (void)v.at("layers").as_string(); }, {"as_string", "an array"});
  testing::require_error([&] { (void)v.at("n").as_bool(); }, {"as_bool", "an integer"});
  testing::require_error([&] { (void)v.at("layers").at(2); }, {"index 2", "2 elements"});
  testing::require_error([&] { (void)v.at("layers").at(-1); }, {"negative index -1"});
  testing::require_error([&] { (void)v.at(0); }, {"json::Value::at", "expected an array", "an object"});
  testing::require_error([&] { (void)v.at("n").at("x"); }, {"json::Value::find", "expected an object"});
  testing::require_error([&] { (void)v.at("n").size(); }, {"json::Value::size", "integer"});
  testing::require_error([] { (void)Value(std::uint64_t(1) << 63); }, {"int64"});
  CHECK(v.at("layers").at(std::size_t(1)).as_int() == 32);
  CHECK(v.at("layers").at(1L).as_int() == 32);
}

TEST_CASE("json: building values, set replaces in place, equality ignores member order", "[io][json]") {
  Value cfg;  // null becomes an object on the first set
  cfg.set("model", "mmoe");
  cfg.set("experts", 4);
  cfg.set("lr", 1e-3);
  cfg.set("towers", Value::array());
  cfg.at("towers").push_back(Value(mtrec::json::Array{Value(32), Value(16)}));
  cfg.set("flags", Value(mtrec::json::Object{{"a", Value(true)}, {"b", Value()}}));
  cfg.set("experts", 8);  // replaces, keeps the position
  CHECK(cfg.dump() == R"({"model":"mmoe","experts":8,"lr":0.001,"towers":[[32,16]],"flags":{"a":true,"b":null}})");
  CHECK(parse(cfg.dump()) == cfg);
  CHECK(parse(R"({"a":1,"b":[1,{"x":1,"y":2}]})") == parse(R"({"b":[1,{"y":2,"x":1}],"a":1})"));
  CHECK(parse("[1,2]") != parse("[2,1]"));
  CHECK(parse("1") != parse("1.0"));
  CHECK(parse(R"({"a":1})") != parse(R"({"a":1,"b":2})"));
  testing::require_error([&] { cfg.push_back(1); }, {"push_back", "expected an array", "an object"});
}

TEST_CASE("json: malformed input is rejected with the byte offset and what was expected", "[io][json]") {
  // Structure.
  require_parse_error("", 0, {"expected a value", "end of input"});
  require_parse_error("   ", 3, {"expected a value"});
  require_parse_error("[1,2,]", 5, {"trailing commas"});
  require_parse_error(R"({"a":1,})", 7, {"trailing commas"});
  require_parse_error("[1 2]", 3, {"expected ',' or ']'", "'2'"});
  require_parse_error(R"({"a" 1})", 5, {"expected ':'"});
  require_parse_error(R"({"a":1 "b":2})", 7, {"expected ',' or '}'"});
  require_parse_error("{1:2}", 1, {"expected a string key"});
  require_parse_error("{'a':1}", 1, {"expected a string key"});
  require_parse_error("[1,2", 4, {"expected ',' or ']'", "end of input"});
  require_parse_error(R"({"a":)", 5, {"expected a value", "end of input"});
  require_parse_error("[1] x", 4, {"end of input after the value", "'x'"});
  require_parse_error("1 2", 2, {"end of input after the value"});
  require_parse_error("{} {}", 3, {"end of input after the value"});
  require_parse_error(std::string("[1]\0", 4), 3, {"byte 0x00"});
  require_parse_error("// c\n1", 0, {"expected a value"});
  require_parse_error("[1 /* c */]", 3, {"expected ',' or ']'"});
  require_parse_error("\xEF\xBB\xBF{}", 0, {"byte 0xEF"});  // a BOM is not JSON text
  // Literals.
  require_parse_error("tru", 0, {"expected 'true'"});
  require_parse_error("nul", 0, {"expected 'null'"});
  require_parse_error("True", 0, {"expected a value"});
  require_parse_error("NaN", 0, {"expected a value"});
  require_parse_error("[Infinity]", 1, {"expected a value"});
  // Numbers.
  require_parse_error("01", 0, {"leading zeros"});
  require_parse_error("-01", 1, {"leading zeros"});
  require_parse_error("[00]", 1, {"leading zeros"});
  require_parse_error("+1", 0, {"expected a value"});
  require_parse_error("-", 1, {"expected a digit after '-'"});
  require_parse_error("-a", 1, {"expected a digit after '-'"});
  require_parse_error("1.", 2, {"digit after the decimal point"});
  require_parse_error("[1.e5]", 3, {"digit after the decimal point"});
  require_parse_error(".5", 0, {"expected a value"});
  require_parse_error("1e", 2, {"digit in the exponent"});
  require_parse_error("1e+", 3, {"digit in the exponent"});
  require_parse_error("0x10", 1, {"end of input after the value"});
  // Strings.
  require_parse_error("\"abc", 0, {"unterminated string"});
  require_parse_error(R"(["abc)", 1, {"unterminated string"});
  require_parse_error("\"a\\", 2, {"unterminated escape"});
  require_parse_error(R"("a\x")", 2, {"invalid escape", "'x'"});
  require_parse_error(R"("\a")", 1, {"invalid escape"});
  require_parse_error(R"("\u12G4")", 5, {"hex digit"});
  require_parse_error(R"("\u12")", 3, {"hex digit"});
  require_parse_error("\"tab\there\"", 4, {"control character", "byte 0x09"});
  require_parse_error("\"nl\n\"", 3, {"control character"});
  require_parse_error(std::string("\"nul\0\"", 6), 4, {"control character", "0x00"});
  require_parse_error("'single'", 0, {"expected a value"});
  // Surrogates.
  require_parse_error(R"("\ud83d")", 1, {"lone high surrogate"});
  require_parse_error(R"("\ud83dx")", 1, {"lone high surrogate"});
  require_parse_error(R"("\ud83d\u0041")", 1, {"not a low surrogate"});
  require_parse_error(R"("\ude00")", 1, {"lone low surrogate"});
  require_parse_error(R"(["ok","\udfff\ud800"])", 7, {"lone low surrogate"});
  // Invalid UTF-8 inside strings (overlong, surrogate, beyond U+10FFFF, truncated, stray continuation).
  require_parse_error("\"\xC0\x80\"", 1, {"invalid UTF-8"});
  require_parse_error("\"\xE0\x80\x80\"", 1, {"invalid UTF-8"});
  require_parse_error("\"\xED\xA0\x80\"", 1, {"invalid UTF-8"});
  require_parse_error("\"\xF4\x90\x80\x80\"", 1, {"invalid UTF-8"});
  require_parse_error("\"ab\xE2\x82\"", 3, {"invalid UTF-8"});
  require_parse_error("\"\x80\"", 1, {"invalid UTF-8"});
  require_parse_error("\"\xFF\"", 1, {"invalid UTF-8", "0xFF"});
  // Duplicate keys (reported at the second occurrence).
  require_parse_error(R"({"a":1,"b":2,"a":3})", 13, {"duplicate key \"a\""});
  require_parse_error(R"({"x":{"k":1,"k":1}})", 12, {"duplicate key \"k\""});
  CHECK(parse(R"({"a":{"a":1}})").at("a").at("a").as_int() == 1);  // same key at different levels is fine
}

TEST_CASE("json: nesting is limited so a depth bomb cannot exhaust the stack", "[io][json]") {
  const auto nested = [](int depth, char open, char close) {
    return std::string(std::size_t(depth), open) + std::string(std::size_t(depth), close);
  };
  CHECK(parse(nested(64, '[', ']')).is_array());  // exactly the default limit
  require_parse_error(nested(65, '[', ']'), 64, {"nesting deeper than the limit of 64"});
  require_parse_error(std::string(100000, '['), 64, {"nesting deeper"});
  std::string objs;
  for (int i = 0; i < 70; ++i) objs += "{\"a\":";
  objs += "1" + std::string(70, '}');
  require_parse_error(objs, 64 * 5, {"nesting deeper"});
  // The limit is a parameter.
  CHECK_NOTHROW(parse("[[[1]]]", 3));
  testing::require_error([] { (void)parse("[[[1]]]", 2); }, {"at byte offset 2", "limit of 2"});
}

TEST_CASE("json: a config survives dump -> parse unchanged", "[io][json]") {
  Value cfg = parse(R"({
    "model": "ple", "tasks": ["ctr", "cvr"], "embedding_dim": 16,
    "mlp": {"hidden": [256, 128], "dropout": 0.1, "activation": "relu"},
    "lr": 3e-4, "weight_decay": 0, "seed": 12345678901234, "note": "caf\u00e9 \ud83d\ude80"
  })");
  const std::string once = cfg.dump();
  const std::string twice = parse(once).dump();
  CHECK(once == twice);  // deterministic
  CHECK(parse(once) == cfg);
  CHECK(cfg.at("mlp").at("dropout").as_double() == 0.1);
  CHECK(cfg.at("seed").as_int() == 12345678901234LL);
  CHECK(cfg.at("weight_decay").is_int());
  CHECK(cfg.at("note").as_string() == "caf\xC3\xA9 \xF0\x9F\x9A\x80");
}
