// io/safetensors: checkpoint writer and validating reader, atomic writes.
#include "support/gradcheck.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <csignal>
#include <sys/resource.h>

#include <mtrec/io/safetensors.hpp>

using mtrec::SafetensorsFile;
using mtrec::TensorRecord;
using mtrec::safetensors::Dtype;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<std::uint8_t>;

// A fresh directory under the system temp dir, removed with its contents.
struct SafetensorsTempDir {
  fs::path path;
  SafetensorsTempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mtrec_safetensors_XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~SafetensorsTempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  // Names of the entries in the directory, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

Bytes read_all(const std::string& path) { return mtrec::io::read_file_bytes(path); }

void write_all(const std::string& path, const Bytes& b) {
  FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(std::fwrite(b.data(), 1, b.size(), f) == b.size());
  std::fclose(f);
}

void put_u64(Bytes& b, std::size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + std::size_t(i)] = std::uint8_t(v >> (8 * i));
}

// A file from a hand-written header: length prefix, header (padded with
// spaces to a multiple of 8 when `pad`), then `data`.
Bytes make_file(std::string header, const Bytes& data = {}, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  Bytes b(8);
  put_u64(b, 0, header.size());
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// from_bytes(bytes) must throw an Error naming the problem.
void require_invalid(const Bytes& bytes, std::initializer_list<const char*> fragments) {
  try {
    (void)SafetensorsFile::from_bytes(bytes);
  } catch (const mtrec::Error& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(e.op() == "SafetensorsFile::from_bytes");
    CHECK(msg.find("is not a valid safetensors file") != std::string::npos);
    for (const char* f : fragments) CHECK(msg.find(f) != std::string::npos);
    return;
  }
  FAIL("expected an mtrec::Error containing " << *fragments.begin());
}
void require_invalid_header(const std::string& header, const Bytes& data,
                            std::initializer_list<const char*> fragments) {
  INFO("header: " << header);
  require_invalid(make_file(header, data), fragments);
}

Bytes zeros(std::size_t n) { return Bytes(n, 0); }

// The sample used by the round-trip and corruption tests: every dtype
// family, a 0-d scalar, a zero-size tensor, and special float values.
struct Sample {
  std::vector<float> f32 = {1.5f, -0.0f, std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::denorm_min(), 3.25f, -7.0f};
  std::vector<double> f64_scalar = {-2.718281828459045};
  std::vector<std::int64_t> i64_empty;  // shape [0, 4]
  std::vector<std::int64_t> i64 = {std::numeric_limits<std::int64_t>::min(), -1, 0, (std::int64_t(1) << 53) + 1};
  std::vector<std::int32_t> i32 = {-5, 7, 1 << 30};
  std::vector<std::uint8_t> u8 = {0, 1, 127, 128, 255, 42};
  std::vector<std::int8_t> i8 = {-128, 127};
  std::vector<std::int16_t> i16 = {-32768, 12345};
  std::vector<std::uint16_t> u16 = {65535, 1};
  std::vector<std::uint32_t> u32 = {4294967295u};
  std::vector<std::uint64_t> u64 = {18446744073709551615ull, 3};
  std::vector<std::uint16_t> bf16 = {0x3F80, 0xC000, 0x7FC0, 0x0001};  // 1, -2, NaN, tiny (raw bits)
  std::vector<std::uint16_t> f16 = {0x3C00, 0x7C00, 0x8000};           // 1, inf, -0 (raw bits)
  bool bools[3] = {true, false, true};
  std::vector<float> nan_payload;

  Sample() {
    float q;
    const std::uint32_t bits = 0x7FC01234u;  // a NaN with a payload: must survive bit for bit
    std::memcpy(&q, &bits, 4);
    nan_payload = {q};
  }

  std::vector<TensorRecord> records() const {
    TensorRecord bf{"emb.bf16", Dtype::BF16, {2, 2}, bf16.data(), bf16.size() * 2};
    TensorRecord h{"h.f16", Dtype::F16, {3}, f16.data(), f16.size() * 2};
    return {TensorRecord::of("tower.0.weight", f32.data(), {2, 3}),
            TensorRecord::of("scalar", f64_scalar.data(), {}),
            TensorRecord::of("empty", i64_empty.data(), {0, 4}),
            TensorRecord::of("ids", i64.data(), {4}),
            TensorRecord::of("i32", i32.data(), {3, 1}),
            TensorRecord::of("bytes", u8.data(), {1, 2, 3}),
            TensorRecord::of("i8", i8.data(), {2}),
            TensorRecord::of("i16", i16.data(), {2}),
            TensorRecord::of("u16", u16.data(), {2}),
            TensorRecord::of("u32", u32.data(), {1}),
            TensorRecord::of("u64", u64.data(), {2}),
            bf,
            h,
            TensorRecord::of("mask", bools, {3}),
            TensorRecord::of("nan", nan_payload.data(), {1, 1, 1, 1, 1})};
  }
  std::map<std::string, std::string> metadata() const {
    return {{"format", "pt"}, {"config", R"({"model":"mmoe","experts":4})"}, {"empty", ""},
            {"odd \"key\"\n", "caf\xC3\xA9 \xF0\x9F\x9A\x80 \\ \t"}};
  }
};

template <class T>
void check_tensor(const SafetensorsFile& f, const std::string& name, const std::vector<T>& expected) {
  INFO("tensor " << name);
  std::vector<T> got(expected.size());
  f.read<T>(name, got.data(), got.size());
  CHECK(testing::bitwise_equal(got.data(), expected.data(), mtrec::index_t(expected.size())));
  CHECK(f.read_vector<T>(name).size() == expected.size());
}

}  // namespace

TEST_CASE("safetensors: host assumptions", "[io][safetensors]") {
  const std::uint32_t one = 1;
  std::uint8_t first;
  std::memcpy(&first, &one, 1);
  CHECK(first == 1);  // little-endian, as the header's #error demands
  CHECK(mtrec::safetensors::dtype_of<float>() == Dtype::F32);
  CHECK(mtrec::safetensors::dtype_of<long long>() == Dtype::I64);
  CHECK(mtrec::safetensors::dtype_of<unsigned char>() == Dtype::U8);
  CHECK(mtrec::safetensors::dtype_of<bool>() == Dtype::BOOL);
  CHECK(mtrec::safetensors::dtype_size(Dtype::BF16) == 2);
  Dtype d;
  CHECK(mtrec::safetensors::dtype_from_name("F8_E4M3", d));
  CHECK(d == Dtype::F8_E4M3);
  CHECK_FALSE(mtrec::safetensors::dtype_from_name("f32", d));
}

TEST_CASE("safetensors: round trip of every dtype, a scalar and a zero-size tensor, bit for bit",
          "[io][safetensors]") {
  SafetensorsTempDir dir;
  const Sample s;
  const auto records = s.records();
  const std::string path = dir.file("model.safetensors");
  mtrec::save_safetensors(path, records, s.metadata());

  // The file on disk is exactly what serialize_safetensors builds.
  const Bytes on_disk = read_all(path);
  CHECK(on_disk == mtrec::serialize_safetensors(records, s.metadata()));

  const SafetensorsFile f = SafetensorsFile::load(path);
  CHECK(f.data_start() % 8 == 0);
  CHECK(f.header_size() + 8 == f.data_start());
  REQUIRE(f.size() == records.size());
  // Data order = the order written.
  std::vector<std::string> expected_names;
  for (const auto& r : records) expected_names.push_back(r.name);
  CHECK(f.names() == expected_names);
  std::uint64_t offset = 0;
  for (const auto& r : records) {
    INFO(r.name);
    REQUIRE(f.has(r.name));
    const auto& info = f.info(r.name);
    CHECK(info.dtype == r.dtype);
    CHECK(info.shape == r.shape);
    CHECK(info.begin == offset);  // contiguous, no padding between tensors
    CHECK(info.nbytes() == r.nbytes);
    offset += r.nbytes;
    Bytes raw(r.nbytes);
    f.read_raw(r.name, raw.data(), raw.size());
    if (r.nbytes == 0) continue;  // memcmp needs non-null pointers
    CHECK(std::memcmp(raw.data(), r.data, r.nbytes) == 0);
    CHECK(std::memcmp(f.raw(r.name), r.data, r.nbytes) == 0);
  }
  CHECK(f.data_start() + offset == on_disk.size());

  check_tensor(f, "tower.0.weight", s.f32);
  check_tensor(f, "scalar", s.f64_scalar);
  check_tensor(f, "ids", s.i64);
  check_tensor(f, "i32", s.i32);
  check_tensor(f, "bytes", s.u8);
  check_tensor(f, "i8", s.i8);
  check_tensor(f, "i16", s.i16);
  check_tensor(f, "u16", s.u16);
  check_tensor(f, "u32", s.u32);
  check_tensor(f, "u64", s.u64);
  check_tensor(f, "nan", s.nan_payload);
  CHECK(f.info("scalar").shape.empty());
  CHECK(f.info("scalar").numel() == 1);
  CHECK(f.info("empty").numel() == 0);
  CHECK(f.info("empty").shape == std::vector<std::int64_t>{0, 4});
  CHECK(f.read_vector<std::int64_t>("empty").empty());
  bool mask[3];
  f.read<bool>("mask", mask, 3);
  CHECK((mask[0] && !mask[1] && mask[2]));
  float w[6];
  f.read_f32("tower.0.weight", w, 6);
  CHECK(w[4] == 3.25f);

  // from_bytes sees the same thing.
  const SafetensorsFile g = SafetensorsFile::from_bytes(on_disk);
  CHECK(g.names() == f.names());
  CHECK(g.metadata() == f.metadata());
}

TEST_CASE("safetensors: metadata round trip, including a JSON config", "[io][safetensors]") {
  const Sample s;
  const SafetensorsFile f = SafetensorsFile::from_bytes(mtrec::serialize_safetensors(s.records(), s.metadata()));
  CHECK(f.metadata() == s.metadata());
  const auto cfg = mtrec::json::parse(f.metadata().at("config"));
  CHECK(cfg.at("experts").as_int() == 4);

  // No metadata: no "__metadata__" key at all; no tensors: "{}" padded.
  const Bytes empty = mtrec::serialize_safetensors({}, {});
  CHECK(empty == Bytes({8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '}));
  const SafetensorsFile e = SafetensorsFile::from_bytes(empty);
  CHECK(e.size() == 0);
  CHECK(e.metadata().empty());
  CHECK(e.names().empty());
}

TEST_CASE("safetensors: the header layout matches a file built by hand from the spec", "[io][safetensors]") {
  const float w[2] = {1.0f, -2.0f};
  const std::int64_t b = 7;
  const std::vector<TensorRecord> records = {TensorRecord::of("w", w, {2}), TensorRecord::of("b", &b, {})};

  // Built independently of the writer: the header text by hand (compact JSON,
  // "__metadata__" first, fields in the order dtype, shape, data_offsets),
  // 135 bytes padded with one space to 136 = 0x88 so the data starts at 144.
  const std::string header =
      R"({"__metadata__":{"fmt":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}} )";
  REQUIRE(header.size() == 136);
  Bytes expected = {0x88, 0, 0, 0, 0, 0, 0, 0};
  expected.insert(expected.end(), header.begin(), header.end());
  const Bytes data = {0x00, 0x00, 0x80, 0x3F,                           // 1.0f  = 0x3F800000, little-endian
                      0x00, 0x00, 0x00, 0xC0,                           // -2.0f = 0xC0000000
                      0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};  // int64 7
  expected.insert(expected.end(), data.begin(), data.end());
  REQUIRE(expected.size() == 160);

  const Bytes got = mtrec::serialize_safetensors(records, {{"fmt", "pt"}});
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    INFO("byte " << i);
    CHECK(int(got[i]) == int(expected[i]));
  }
  SafetensorsTempDir dir;
  mtrec::save_safetensors(dir.file("tiny.safetensors"), records, {{"fmt", "pt"}});
  CHECK(read_all(dir.file("tiny.safetensors")) == expected);

  // The data buffer starts 8-byte aligned whatever the name lengths.
  for (int len = 1; len <= 16; ++len) {
    const auto bytes = mtrec::serialize_safetensors({TensorRecord::of(std::string(std::size_t(len), 'n'), w, {2})});
    CHECK((bytes.size() - 8) % 8 == 0);
    CHECK(SafetensorsFile::from_bytes(bytes).data_start() % 8 == 0);
  }
}

TEST_CASE("safetensors: the reader accepts what the format allows", "[io][safetensors]") {
  const Bytes eight = zeros(8);
  // Unpadded header (other writers need not align), whitespace and newlines in the header.
  const auto a = SafetensorsFile::from_bytes(
      make_file(R"({"t":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", {1, 2, 3}, false));
  CHECK(a.read_vector<std::uint8_t>("t") == std::vector<std::uint8_t>({1, 2, 3}));
  CHECK(a.data_start() % 8 != 0);
  CHECK_NOTHROW(SafetensorsFile::from_bytes(
      make_file("{\n  \"t\" : { \"shape\" : [ 2 ] , \"data_offsets\":[0,8], \"dtype\":\"F32\" }\n}\n", eight)));
  // Header order need not be data order; names() follows the data.
  const auto b = SafetensorsFile::from_bytes(make_file(
      R"({"second":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"first":{"dtype":"I32","shape":[],"data_offsets":[0,4]}})",
      eight));
  CHECK(b.names() == std::vector<std::string>({"first", "second"}));
  // Zero-size tensors anywhere, several at one offset; "__metadata__": null is "no metadata".
  const auto c = SafetensorsFile::from_bytes(make_file(
      R"({"__metadata__":null,"z1":{"dtype":"F64","shape":[0],"data_offsets":[0,0]},"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
      R"("z2":{"dtype":"BF16","shape":[5,0,2],"data_offsets":[8,8]},"z3":{"dtype":"BOOL","shape":[0],"data_offsets":[8,8]}})",
      eight));
  CHECK(c.names() == std::vector<std::string>({"z1", "x", "z2", "z3"}));
  CHECK(c.metadata().empty());
  // Unicode tensor names.
  const auto d = SafetensorsFile::from_bytes(
      make_file(R"({"caf\u00e9.w":{"dtype":"I8","shape":[],"data_offsets":[0,1]}})", {0xFF}));
  CHECK(d.has("caf\xC3\xA9.w"));
}

TEST_CASE("safetensors: every truncation of a valid file is rejected cleanly", "[io][safetensors]") {
  const Sample s;
  const Bytes full = mtrec::serialize_safetensors(s.records(), s.metadata());
  REQUIRE_NOTHROW(SafetensorsFile::from_bytes(full));
  int rejected = 0;
  for (std::size_t len = 0; len < full.size(); ++len) {
    INFO("truncated to " << len << " of " << full.size() << " bytes");
    CHECK_THROWS_AS(SafetensorsFile::from_bytes(Bytes(full.begin(), full.begin() + std::ptrdiff_t(len))),
                    mtrec::Error);
    ++rejected;
  }
  CHECK(rejected == int(full.size()));
  require_invalid(Bytes(full.begin(), full.begin() + 5), {"5 bytes long", "shorter than the 8-byte"});
  require_invalid(Bytes(full.begin(), full.begin() + 40), {"exceeds the 32 bytes after the 8-byte length"});
  require_invalid(Bytes(full.begin(), full.end() - 1), {"past the end of the", "offsets out of range"});

  // Through load(), too: the message names the path.
  SafetensorsTempDir dir;
  for (std::size_t len : {std::size_t(0), std::size_t(7), std::size_t(8), std::size_t(100), full.size() - 1}) {
    write_all(dir.file("cut.safetensors"), Bytes(full.begin(), full.begin() + std::ptrdiff_t(len)));
    testing::require_error([&] { (void)SafetensorsFile::load(dir.file("cut.safetensors")); },
                           {"SafetensorsFile::load", "cut.safetensors", "is not a valid safetensors file"});
  }
  testing::require_error([&] { (void)SafetensorsFile::load(dir.file("missing.safetensors")); },
                         {"SafetensorsFile::load", "missing.safetensors", "No such file or directory"});
  testing::require_error([&] { (void)SafetensorsFile::load(dir.path.string()); },
                         {"SafetensorsFile::load", "not a regular file"});
}

TEST_CASE("safetensors: flipped bytes and bad header lengths never crash", "[io][safetensors]") {
  const Sample s;
  const Bytes full = mtrec::serialize_safetensors(s.records(), s.metadata());
  const SafetensorsFile ok = SafetensorsFile::from_bytes(full);
  const std::size_t n = ok.header_size();

  // Header bytes: each flip is either rejected with an Error or still a valid
  // file (a renamed tensor, a changed metadata character), which must then
  // read without trouble.
  int rejected = 0, accepted = 0;
  for (std::size_t i = 8; i < 8 + n; ++i)
    for (std::uint8_t x : {0x01, 0x02, 0x20, 0x40, 0x80, 0xFF}) {
      Bytes b = full;
      b[i] ^= x;
      try {
        const SafetensorsFile f = SafetensorsFile::from_bytes(b);
        for (const auto& t : f.tensors()) {
          Bytes raw(t.nbytes());
          f.read_raw(t.name, raw.data(), raw.size());
        }
        ++accepted;
      } catch (const mtrec::Error&) {
        ++rejected;
      }
    }
  CHECK(rejected > accepted);
  INFO("accepted " << accepted << ", rejected " << rejected);
  CHECK(accepted > 0);

  // Data bytes: the header still describes them; flips only change values.
  for (std::size_t i = 8 + n; i < full.size(); ++i) {
    Bytes b = full;
    b[i] ^= 0xFF;
    CHECK_NOTHROW(SafetensorsFile::from_bytes(b));
  }

  // The length prefix: every byte flipped, and chosen bad values.
  for (std::size_t i = 0; i < 8; ++i) {
    Bytes b = full;
    b[i] ^= 0xFF;
    CHECK_THROWS_AS(SafetensorsFile::from_bytes(b), mtrec::Error);
  }
  const std::uint64_t size = full.size();
  const std::uint64_t bad_lengths[] = {0, 1, 7, n - 1, n + 1, n + 8, size - 8, size - 7, size, 100000000, 100000001,
                                       std::uint64_t(1) << 32, std::uint64_t(1) << 63,
                                       std::numeric_limits<std::uint64_t>::max()};
  for (std::uint64_t len : bad_lengths) {
    INFO("header length " << len);
    Bytes b = full;
    put_u64(b, 0, len);
    CHECK_THROWS_AS(SafetensorsFile::from_bytes(b), mtrec::Error);
  }
  Bytes b = full;
  put_u64(b, 0, std::numeric_limits<std::uint64_t>::max());
  require_invalid(b, {"header length 18446744073709551615 exceeds the limit of 100000000 bytes"});
  put_u64(b, 0, 100000001);
  require_invalid(b, {"exceeds the limit of 100000000"});
  put_u64(b, 0, size - 7);
  const std::string past = "header length " + std::to_string(size - 7) + " exceeds the " + std::to_string(size - 8) +
                           " bytes after the 8-byte length";
  require_invalid(b, {past.c_str()});
  put_u64(b, 0, 0);
  require_invalid(b, {"must be a JSON object starting with '{'", "empty header"});
}

TEST_CASE("safetensors: each validation rule has its own message", "[io][safetensors]") {
  const Bytes eight = zeros(8);
  const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const auto with = [](const std::string& entry) { return "{\"t\":" + entry + "}"; };

  // The header itself.
  require_invalid(Bytes{1, 2, 3}, {"3 bytes long"});
  require_invalid_header("[]", {}, {"starting with '{'", "byte 91"});
  require_invalid_header(" {}", {}, {"starting with '{'", "byte 32"});
  require_invalid_header(R"({"t":)", eight, {"not valid JSON", "json::parse", "at byte offset 8", "expected a value"});
  require_invalid_header(R"({"t":1,})", eight, {"not valid JSON", "trailing commas"});
  require_invalid_header("{}{}", {}, {"not valid JSON", "after the value"});
  require_invalid_header("{\"t\xFF\":1}", eight, {"not valid JSON", "invalid UTF-8"});
  require_invalid_header("{\"t\":" + ok_entry + ",\"t\":" + ok_entry + "}", eight, {"duplicate key \"t\""});
  require_invalid_header(R"({"__metadata__":{"a":"1","a":"2"}})", {}, {"duplicate key \"a\""});
  // Metadata.
  require_invalid_header(R"({"__metadata__":"x"})", {}, {"\"__metadata__\" must be an object of strings", "\"x\""});
  require_invalid_header(R"({"__metadata__":[]})", {}, {"\"__metadata__\" must be an object of strings"});
  require_invalid_header(R"({"__metadata__":{"k":1}})", {}, {"value of key \"k\" must be a string, got 1"});
  require_invalid_header(R"({"__metadata__":{"k":null}})", {}, {"value of key \"k\" must be a string, got null"});
  require_invalid_header(R"({"__metadata__":{"k":{"x":"y"}}})", {}, {"value of key \"k\" must be a string"});
  // Entries and their fields.
  require_invalid_header(with("5"), eight, {"entry of tensor 't' must be an object, got 5"});
  require_invalid_header(with("[]"), eight, {"entry of tensor 't' must be an object"});
  require_invalid_header(with(R"({"shape":[2],"data_offsets":[0,8]})"), eight, {"tensor 't' has no \"dtype\""});
  require_invalid_header(with(R"({"dtype":"F32","data_offsets":[0,8]})"), eight, {"tensor 't' has no \"shape\""});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2]})"), eight, {"tensor 't' has no \"data_offsets\""});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1})"), eight,
                         {"unknown field \"extra\""});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offset":[0,8]})"), eight,
                         {"unknown field \"data_offset\""});
  // dtype.
  require_invalid_header(with(R"({"dtype":5,"shape":[2],"data_offsets":[0,8]})"), eight,
                         {"dtype of tensor 't' must be a string, got 5"});
  require_invalid_header(with(R"({"dtype":"F128","shape":[2],"data_offsets":[0,8]})"), eight,
                         {"unknown dtype \"F128\"", "known: BOOL, U8"});
  require_invalid_header(with(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})"), eight, {"unknown dtype \"f32\""});
  require_invalid_header(with(R"({"dtype":"F4","shape":[16],"data_offsets":[0,8]})"), eight, {"sub-byte dtype F4"});
  // shape.
  require_invalid_header(with(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), eight,
                         {"shape of tensor 't' must be an array of non-negative integers, got 2"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), eight,
                         {"element 0 is -2"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[1,2.0],"data_offsets":[0,8]})"), eight,
                         {"non-negative integers; element 1 is 2.0"});
  require_invalid_header(with(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), eight, {"element 0 is \"2\""});
  require_invalid_header(with(R"({"dtype":"F32","shape":[true],"data_offsets":[0,8]})"), eight, {"element 0 is true"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[null],"data_offsets":[0,8]})"), eight, {"element 0 is null"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[1e1],"data_offsets":[0,8]})"), eight, {"element 0 is 10.0"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]})"), eight,
                         {"element 0 is 18446744073709551616.0"});
  // Shape products that overflow 64 bits.
  require_invalid_header(with(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), eight,
                         {"more bytes than fit in 64 bits"});
  require_invalid_header(with(R"({"dtype":"F64","shape":[9223372036854775807],"data_offsets":[0,8]})"), eight,
                         {"more bytes than fit in 64 bits"});
  require_invalid_header(with(R"({"dtype":"U8","shape":[65536,65536,65536,65536],"data_offsets":[0,8]})"), eight,
                         {"more bytes than fit in 64 bits"});
  // data_offsets.
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":8})"), eight,
                         {"data_offsets of tensor 't' must be [begin, end], got 8"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":[8]})"), eight, {"must be [begin, end]"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})"), eight,
                         {"must be [begin, end], got [0,8,8]"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,-8]})"), eight,
                         {"two non-negative integers"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0.0,8]})"), eight,
                         {"two non-negative integers"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":{"begin":0,"end":8}})"), eight,
                         {"must be [begin, end]"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), eight,
                         {"are [8, 0]: begin is after end"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), zeros(4),
                         {"[0, 8], past the end of the 4-byte data buffer", "offsets out of range"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[0],"data_offsets":[9223372036854775807,9223372036854775807]})"),
                         eight, {"past the end of the 8-byte data buffer"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), eight,
                         {"(8 bytes) but its shape [3] of F32 needs 3 x 4 = 12 bytes"});
  require_invalid_header(with(R"({"dtype":"F64","shape":[],"data_offsets":[0,4]})"), eight,
                         {"needs 1 x 8 = 8 bytes"});
  // Coverage of the data buffer.
  require_invalid_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         zeros(12), {"tensor 'b' starts at byte 4", "tensor 'a' ends at byte 8", "tensors overlap"});
  require_invalid_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                         eight, {"tensors overlap"});
  require_invalid_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                         zeros(12), {"tensor 'b' starts at byte 8", "'a' ends at byte 4", "a hole of 4 bytes"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), eight,
                         {"the buffer starts at byte 0", "a hole of 4 bytes"});
  require_invalid_header(with(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), eight,
                         {"the tensors cover 4 bytes but the data buffer has 8 bytes", "4 trailing bytes"});
  require_invalid_header("{}", eight, {"cover 0 bytes", "8 trailing bytes"});
}

TEST_CASE("safetensors: typed reads check the dtype, the count and the name", "[io][safetensors]") {
  const float w[3] = {1, 2, 3};
  const auto f = SafetensorsFile::from_bytes(
      mtrec::serialize_safetensors({TensorRecord::of("w", w, {3}), TensorRecord::of("v", w, {1})}));
  double d[3];
  float out[4];
  testing::require_error([&] { f.read<double>("w", d, 3); },
                         {"SafetensorsFile::read", "'w'", "has dtype F32 but was read as F64"});
  testing::require_error([&] { f.read<float>("w", out, 4); }, {"'w'", "has 3 elements (shape [3])", "holds 4"});
  testing::require_error([&] { f.read_raw("w", out, 8); }, {"read_raw", "has 12 bytes", "holds 8"});
  testing::require_error([&] { (void)f.info("W"); }, {"no tensor named 'W'", "2 tensors: 'w', 'v'"});
  testing::require_error([&] { (void)f.raw("x"); }, {"SafetensorsFile::raw", "no tensor named 'x'"});
  CHECK_FALSE(f.has("W"));

  // A BOOL byte other than 0/1 cannot become a bool.
  const auto b = SafetensorsFile::from_bytes(
      make_file(R"({"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", {1, 2}));
  bool m[2];
  testing::require_error([&] { b.read<bool>("m", m, 2); }, {"BOOL element 1 is 2"});
}

TEST_CASE("safetensors: the writer validates its records before touching the disk", "[io][safetensors]") {
  SafetensorsTempDir dir;
  const std::string path = dir.file("w.safetensors");
  const float x[4] = {1, 2, 3, 4};
  const auto rec = [&](std::string name, std::vector<std::int64_t> shape, std::size_t nbytes, const void* data) {
    return TensorRecord{std::move(name), Dtype::F32, std::move(shape), data, nbytes};
  };
  const auto require_rejected = [&](const std::vector<TensorRecord>& ts, std::initializer_list<const char*> frags,
                                    const std::map<std::string, std::string>& meta = {}) {
    testing::require_error([&] { mtrec::save_safetensors(path, ts, meta); }, frags);
    CHECK(dir.entries().empty());  // nothing created, not even a temporary file
  };
  require_rejected({rec("a", {4}, 16, x), rec("a", {4}, 16, x)}, {"save_safetensors", "two tensors are named 'a'"});
  require_rejected({rec("", {4}, 16, x)}, {"tensor #0 has an empty name"});
  require_rejected({rec("__metadata__", {4}, 16, x)}, {"reserves"});
  require_rejected({rec("a", {4}, 12, x)}, {"tensor 'a'", "needs 4 x 4 = 16 bytes", "nbytes = 12"});
  require_rejected({rec("a", {2, -2}, 16, x)}, {"tensor 'a'", "[2, -2]", "negative dimension"});
  require_rejected({rec("a", {4}, 16, nullptr)}, {"data is null"});
  require_rejected({rec("a", {std::int64_t(1) << 62, 8}, 16, x)}, {"more bytes than fit in 64 bits"});
  require_rejected({rec("bad\xFF", {4}, 16, x)}, {"cannot encode the header", "UTF-8"});
  require_rejected({rec("a", {4}, 16, x)}, {"cannot encode the header", "UTF-8"}, {{"k", "\xC3"}});
  TensorRecord bad_dtype = rec("a", {4}, 16, x);
  bad_dtype.dtype = static_cast<Dtype>(200);
  require_rejected({bad_dtype}, {"invalid Dtype value 200"});
  testing::require_error([&] { (void)TensorRecord::of("a", x, {-1}); }, {"TensorRecord::of", "negative"});
  // Zero-byte tensors may have a null pointer.
  CHECK_NOTHROW(mtrec::save_safetensors(path, {rec("z", {0}, 0, nullptr)}));
}

TEST_CASE("safetensors: writes are atomic", "[io][safetensors]") {
  SafetensorsTempDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  std::vector<float> big(1000), small = {42.0f};
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = float(i);

  SECTION("a missing directory: an error naming the path, nothing created") {
    const std::string missing = dir.file("no/such/dir/ckpt.safetensors");
    testing::require_error([&] { mtrec::save_safetensors(missing, {TensorRecord::of("x", small.data(), {1})}); },
                           {"save_safetensors", "no/such/dir/ckpt.safetensors", "No such file or directory"});
    CHECK(dir.entries().empty());
  }

  SECTION("overwriting replaces the whole file") {
    mtrec::save_safetensors(path, {TensorRecord::of("x", big.data(), {1000})}, {{"v", "1"}});
    const auto first = SafetensorsFile::load(path);
    CHECK(first.info("x").numel() == 1000);
    mtrec::save_safetensors(path, {TensorRecord::of("y", small.data(), {1})}, {{"v", "2"}});
    const Bytes now = read_all(path);
    CHECK(now == mtrec::serialize_safetensors({TensorRecord::of("y", small.data(), {1})}, {{"v", "2"}}));
    const auto second = SafetensorsFile::load(path);
    CHECK(second.names() == std::vector<std::string>{"y"});
    CHECK(second.metadata().at("v") == "2");
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }

  SECTION("a failed write leaves the old file intact and no temporary file behind") {
    mtrec::save_safetensors(path, {TensorRecord::of("x", big.data(), {1000})});
    const Bytes before = read_all(path);
    // Invalid record: rejected before any file is created.
    TensorRecord bad = TensorRecord::of("x", big.data(), {1000});
    bad.nbytes = 5;
    CHECK_THROWS_AS(mtrec::save_safetensors(path, {bad}), mtrec::Error);
    CHECK(read_all(path) == before);
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});

    // A failure in the middle of writing the data: RLIMIT_FSIZE makes write()
    // fail with EFBIG once the temporary file reaches 4 KiB.
    std::vector<float> huge(1 << 16, 1.0f);
    struct rlimit old_limit;
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small_limit = old_limit;
    small_limit.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small_limit) == 0);
    std::string message;
    try {
      mtrec::save_safetensors(path, {TensorRecord::of("huge", huge.data(), {1 << 16})});
    } catch (const mtrec::Error& e) {
      message = e.what();
    }
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    std::signal(SIGXFSZ, old_handler);
    INFO(message);
    CHECK(message.find("save_safetensors") != std::string::npos);
    CHECK(message.find("ckpt.safetensors") != std::string::npos);
    CHECK(message.find("File too large") != std::string::npos);
    CHECK(read_all(path) == before);
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }

  SECTION("a failed rename (the target is a directory) removes the temporary file") {
    fs::create_directory(path);
    testing::require_error([&] { mtrec::save_safetensors(path, {TensorRecord::of("x", small.data(), {1})}); },
                           {"save_safetensors", "ckpt.safetensors", "renaming"});
    CHECK(fs::is_directory(path));
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }

  SECTION("concurrent readers only ever see complete files") {
    std::vector<float> a(4096, 1.0f), b(7, 2.0f);
    mtrec::save_safetensors(path, {TensorRecord::of("a", a.data(), {4096})});
    std::atomic<bool> done{false};
    std::atomic<int> loads{0}, failures{0};
    std::thread reader([&] {
      while (!done) {
        try {
          const auto f = SafetensorsFile::load(path);
          const auto& t = f.tensors().at(0);
          if (!((t.name == "a" && t.numel() == 4096) || (t.name == "b" && t.numel() == 7))) ++failures;
        } catch (const mtrec::Error&) {
          ++failures;
        }
        ++loads;
      }
    });
    for (int i = 0; i < 20; ++i) {
      if (i % 2) mtrec::save_safetensors(path, {TensorRecord::of("a", a.data(), {4096})});
      else mtrec::save_safetensors(path, {TensorRecord::of("b", b.data(), {7})});
    }
    done = true;
    reader.join();
    CHECK(loads > 0);
    CHECK(failures == 0);
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  }
}
