// mtrec: safetensors checkpoints (https://github.com/huggingface/safetensors).
//
// The format:
//   bytes [0, 8)        N, the header length, unsigned 64-bit little-endian
//   bytes [8, 8 + N)    the header: a UTF-8 JSON object
//                         { "__metadata__": {"key": "value", ...},          (optional)
//                           "<tensor name>": { "dtype": "F32",
//                                              "shape": [2, 3],
//                                              "data_offsets": [begin, end] }, ... }
//   bytes [8 + N, EOF)  the data buffer; each tensor occupies [begin, end)
//                       of it, little-endian, row-major (C order)
//
//   std::vector<TensorRecord> ts = {TensorRecord::of("w", w.data(), {4, 3})};
//   save_safetensors("model.safetensors", ts, {{"config", cfg.dump()}});
//   auto f = SafetensorsFile::load("model.safetensors");
//   f.read<float>("w", w.data(), 12);
//
// Writer: compact header with "__metadata__" first (omitted when empty, keys
// sorted) and the tensors in the order given, each entry's fields in the
// order dtype, shape, data_offsets, as the official writer does; the header
// is padded with spaces to a multiple of 8 bytes so the data buffer starts
// 8-byte aligned; tensors are packed contiguously in the order given. The
// file is written atomically (io::AtomicFileWriter): the target is either the
// old file or the complete new one.
//
// Reader: loads the whole file into memory and validates it the way the
// official Rust reader does, plus a few stricter rules (marked "stricter"):
//   * at least 8 bytes; N <= 100,000,000 (the official limit); 8 + N <= size;
//   * the header starts with '{' and is strict JSON (json::parse: UTF-8,
//     and, stricter, duplicate keys are rejected: serde keeps the last one);
//   * "__metadata__" is null or an object whose values are all strings;
//   * every other member is an object with exactly the fields dtype (a known
//     name), shape (array of non-negative integers) and data_offsets (two
//     non-negative integers, begin <= end) (stricter: unknown fields are an
//     error, serde ignores them; no official writer produces them);
//   * the element count does not overflow, end - begin == numel * dtype size;
//   * sorted by offset, the tensors tile the data buffer exactly: the first
//     starts at 0, each starts where the previous one ends (no overlap, no
//     hole) and the last ends at the end of the file.
// Every check runs before any tensor byte is touched, so no input makes the
// reader read outside the file; every failure is an mtrec::Error naming the
// file and the problem.
//
// Byte order: tensor bytes are copied as they are, so this assumes a
// little-endian host (x86-64, AArch64 Linux); a big-endian build fails below.
// The length prefix is encoded byte by byte and would not need it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/io/atomic_file.hpp"
#include "mtrec/io/json.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mtrec/io/safetensors.hpp copies tensor bytes as they are and needs a little-endian host"
#endif
#endif

namespace mtrec {
namespace safetensors {

// The dtypes of whole-byte size from the official list. The sub-byte ones
// (F4, F6_E2M3, F6_E3M2) are recognised and refused with their own message.
enum class Dtype : std::uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

struct DtypeInfo {
  Dtype dtype;
  const char* name;
  std::size_t size;  // bytes per element
};

inline const DtypeInfo* dtype_table(std::size_t& count) {
  static const DtypeInfo table[] = {
      {Dtype::BOOL, "BOOL", 1},       {Dtype::U8, "U8", 1},           {Dtype::I8, "I8", 1},
      {Dtype::F8_E5M2, "F8_E5M2", 1}, {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::F8_E8M0, "F8_E8M0", 1},
      {Dtype::I16, "I16", 2},         {Dtype::U16, "U16", 2},         {Dtype::F16, "F16", 2},
      {Dtype::BF16, "BF16", 2},       {Dtype::I32, "I32", 4},         {Dtype::U32, "U32", 4},
      {Dtype::F32, "F32", 4},         {Dtype::F64, "F64", 8},         {Dtype::I64, "I64", 8},
      {Dtype::U64, "U64", 8}};
  count = sizeof(table) / sizeof(table[0]);
  return table;
}

inline const DtypeInfo& dtype_info(Dtype d) {
  std::size_t n;
  const DtypeInfo* t = dtype_table(n);
  const auto i = static_cast<std::size_t>(d);
  check(i < n, "safetensors::dtype_info", "invalid Dtype value ", i, " (expected 0..", n - 1, ")");
  return t[i];
}
inline const char* dtype_name(Dtype d) { return dtype_info(d).name; }
inline std::size_t dtype_size(Dtype d) { return dtype_info(d).size; }

// The dtype spelled `name` ("F32"), or false.
inline bool dtype_from_name(std::string_view name, Dtype& out) {
  std::size_t n;
  const DtypeInfo* t = dtype_table(n);
  for (std::size_t i = 0; i < n; ++i)
    if (name == t[i].name) {
      out = t[i].dtype;
      return true;
    }
  return false;
}

inline std::string dtype_names() {
  std::size_t n;
  const DtypeInfo* t = dtype_table(n);
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::string(t[i].name);
  return s;
}

// The dtype that stores C++ type T (float -> F32, ...). F16/BF16/F8 have no
// C++ type here: write them from raw bytes (TensorRecord with a Dtype) and
// read them with read_raw().
template <class T>
constexpr Dtype dtype_of() {
  static_assert(std::is_arithmetic<T>::value, "dtype_of<T>: T must be an arithmetic type");
  if constexpr (std::is_same<T, bool>::value) return Dtype::BOOL;
  else if constexpr (std::is_same<T, float>::value) return Dtype::F32;
  else if constexpr (std::is_same<T, double>::value) return Dtype::F64;
  else if constexpr (std::is_integral<T>::value && std::is_signed<T>::value) {
    static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "unsupported integer size");
    return sizeof(T) == 1 ? Dtype::I8 : sizeof(T) == 2 ? Dtype::I16 : sizeof(T) == 4 ? Dtype::I32 : Dtype::I64;
  } else if constexpr (std::is_integral<T>::value) {
    static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "unsupported integer size");
    return sizeof(T) == 1 ? Dtype::U8 : sizeof(T) == 2 ? Dtype::U16 : sizeof(T) == 4 ? Dtype::U32 : Dtype::U64;
  } else {
    static_assert(sizeof(T) == 0, "dtype_of<T>: no safetensors dtype for this type (long double?)");
    return Dtype::U8;
  }
}

// The official reader's limit on N; the writer refuses to exceed it too.
constexpr std::uint64_t kMaxHeaderSize = 100000000;
// The header is padded so the data buffer starts at a multiple of this.
constexpr std::size_t kDataAlignment = 8;

namespace detail {
// numel and numel * elem_size, or false on a negative dimension or overflow.
inline bool shape_bytes(const std::vector<std::int64_t>& shape, std::size_t elem_size, std::uint64_t& numel,
                        std::uint64_t& nbytes) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return false;
  }
  std::uint64_t b;
  if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(elem_size), &b)) return false;
  numel = n;
  nbytes = b;
  return true;
}

inline std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

inline void put_u64_le(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
inline std::uint64_t get_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
}  // namespace detail
}  // namespace safetensors

// One tensor to write. `data` must hold `nbytes` bytes, little-endian,
// row-major; nbytes must equal numel(shape) * dtype_size(dtype). An empty
// shape is a 0-d scalar (one element).
struct TensorRecord {
  std::string name;
  safetensors::Dtype dtype = safetensors::Dtype::F32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  std::size_t nbytes = 0;

  // A record over `data` of C++ type T, with nbytes from the shape.
  template <class T>
  static TensorRecord of(std::string name, const T* data, std::vector<std::int64_t> shape) {
    TensorRecord r;
    r.name = std::move(name);
    r.dtype = safetensors::dtype_of<T>();
    r.shape = std::move(shape);
    r.data = data;
    std::uint64_t numel = 0, nbytes = 0;
    check(safetensors::detail::shape_bytes(r.shape, sizeof(T), numel, nbytes), "TensorRecord::of", "tensor '",
          r.name, "': shape ", safetensors::detail::shape_str(r.shape),
          " has a negative dimension or more bytes than fit in 64 bits");
    r.nbytes = static_cast<std::size_t>(nbytes);
    return r;
  }
};

namespace safetensors {
namespace detail {

// Validates the records and returns the padded header.
inline std::string build_header(const std::vector<TensorRecord>& tensors,
                                const std::map<std::string, std::string>& metadata, const char* op,
                                std::uint64_t& data_size) {
  json::Value header = json::Value::object();
  if (!metadata.empty()) {
    json::Value meta = json::Value::object();
    // std::map iterates in key order, and keys are unique: append directly.
    for (const auto& kv : metadata) meta.as_object().emplace_back(kv.first, json::Value(kv.second));
    header.as_object().emplace_back("__metadata__", std::move(meta));
  }
  // Names must be unique: sort pointers and compare neighbours.
  std::vector<const std::string*> names;
  names.reserve(tensors.size());
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorRecord& t = tensors[i];
    check(!t.name.empty(), op, "tensor #", i, " has an empty name");
    check(t.name != "__metadata__", op, "tensor #", i, " is named \"__metadata__\", which the format reserves");
    const std::size_t esize = dtype_size(t.dtype);  // also checks the enum value
    std::uint64_t numel = 0, nbytes = 0;
    check(shape_bytes(t.shape, esize, numel, nbytes), op, "tensor '", t.name, "': shape ", shape_str(t.shape),
          " has a negative dimension or more bytes than fit in 64 bits");
    check(nbytes == t.nbytes, op, "tensor '", t.name, "': shape ", shape_str(t.shape), " of ", dtype_name(t.dtype),
          " needs ", numel, " x ", esize, " = ", nbytes, " bytes, but the record says nbytes = ", t.nbytes);
    check(t.data != nullptr || t.nbytes == 0, op, "tensor '", t.name, "': data is null but nbytes = ", t.nbytes);
    check(!__builtin_add_overflow(offset, nbytes, &offset), op, "total tensor size overflows 64 bits");
    names.push_back(&t.name);

    json::Value shape = json::Value::array();
    for (std::int64_t d : t.shape) shape.push_back(d);
    json::Value entry = json::Value::object();
    entry.as_object().emplace_back("dtype", json::Value(dtype_name(t.dtype)));
    entry.as_object().emplace_back("shape", std::move(shape));
    entry.as_object().emplace_back("data_offsets",
                                   json::Value(json::Array{json::Value(offset - nbytes), json::Value(offset)}));
    header.as_object().emplace_back(t.name, std::move(entry));
  }
  std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
  for (std::size_t i = 1; i < names.size(); ++i)
    check(*names[i] != *names[i - 1], op, "two tensors are named '", *names[i], "'; names must be unique");

  std::string text;
  try {
    text = header.dump();
  } catch (const Error& e) {  // a name or metadata string that is not UTF-8
    fail(op, "cannot encode the header: ", e.what());
  }
  text.append((kDataAlignment - text.size() % kDataAlignment) % kDataAlignment, ' ');
  check(text.size() <= kMaxHeaderSize, op, "the header is ", text.size(), " bytes, over the limit of ",
        kMaxHeaderSize, " bytes that readers accept");
  data_size = offset;
  return text;
}

}  // namespace detail
}  // namespace safetensors

// The complete file as bytes (for tests and in-memory use).
inline std::vector<std::uint8_t> serialize_safetensors(const std::vector<TensorRecord>& tensors,
                                                       const std::map<std::string, std::string>& metadata = {}) {
  std::uint64_t data_size = 0;
  const std::string header =
      safetensors::detail::build_header(tensors, metadata, "serialize_safetensors", data_size);
  std::vector<std::uint8_t> out(8 + header.size() + static_cast<std::size_t>(data_size));
  safetensors::detail::put_u64_le(out.data(), header.size());
  std::memcpy(out.data() + 8, header.data(), header.size());
  std::size_t pos = 8 + header.size();
  for (const TensorRecord& t : tensors) {
    if (t.nbytes) std::memcpy(out.data() + pos, t.data, t.nbytes);
    pos += t.nbytes;
  }
  return out;
}

// Writes the file atomically: a temporary file beside `path`, fsync, rename.
// Records are validated before anything touches the disk; on any failure the
// old file (if any) is left as it was and no temporary file remains.
inline void save_safetensors(const std::string& path, const std::vector<TensorRecord>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  std::uint64_t data_size = 0;
  const std::string header = safetensors::detail::build_header(tensors, metadata, "save_safetensors", data_size);
  try {
    io::AtomicFileWriter w(path);
    std::uint8_t prefix[8];
    safetensors::detail::put_u64_le(prefix, header.size());
    w.write(prefix, 8);
    w.write(header.data(), header.size());
    for (const TensorRecord& t : tensors)
      if (t.nbytes) w.write(t.data, t.nbytes);
    w.commit();
  } catch (const Error& e) {
    // Keep the caller-facing operation name; the message already names the path and errno.
    throw Error("save_safetensors", e.what());
  }
}

// A loaded, validated safetensors file held in memory.
class SafetensorsFile {
 public:
  struct TensorInfo {
    std::string name;
    safetensors::Dtype dtype = safetensors::Dtype::F32;
    std::vector<std::int64_t> shape;  // empty: a 0-d scalar
    std::uint64_t begin = 0, end = 0;  // [begin, end) within the data buffer
    std::uint64_t numel() const {
      std::uint64_t n = 1;
      for (std::int64_t d : shape) n *= static_cast<std::uint64_t>(d);  // validated not to overflow
      return n;
    }
    std::uint64_t nbytes() const { return end - begin; }
  };

  // Reads and validates a file. Errors name the path.
  static SafetensorsFile load(const std::string& path) {
    SafetensorsFile f;
    f.source_ = "'" + path + "'";
    f.bytes_ = io::read_file_bytes(path, "SafetensorsFile::load");
    f.parse("SafetensorsFile::load");
    return f;
  }
  // Validates bytes already in memory (what load() does after reading).
  static SafetensorsFile from_bytes(std::vector<std::uint8_t> bytes) {
    SafetensorsFile f;
    f.source_ = "in-memory safetensors";
    f.bytes_ = std::move(bytes);
    f.parse("SafetensorsFile::from_bytes");
    return f;
  }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Tensors in data order (for files from save_safetensors: the order written).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    n.reserve(tensors_.size());
    for (const auto& t : tensors_) n.push_back(t.name);
    return n;
  }
  std::size_t size() const { return tensors_.size(); }
  bool has(const std::string& name) const { return index_.count(name) != 0; }

  const TensorInfo& info(const std::string& name) const { return tensors_[lookup("SafetensorsFile::info", name)]; }

  // N (the header length) and where the data buffer starts in the file.
  std::uint64_t header_size() const { return header_size_; }
  std::uint64_t data_start() const { return 8 + header_size_; }

  // The tensor's bytes inside the loaded file. No alignment guarantee beyond
  // what the writer chose: copy out with read()/read_raw() to use as T.
  const std::uint8_t* raw(const std::string& name) const {
    const TensorInfo& t = tensors_[lookup("SafetensorsFile::raw", name)];
    return bytes_.data() + data_start() + t.begin;
  }

  // Copies the bytes of any dtype; nbytes must match exactly.
  void read_raw(const std::string& name, void* out, std::size_t nbytes) const {
    const TensorInfo& t = tensors_[lookup("SafetensorsFile::read_raw", name)];
    check(nbytes == t.nbytes(), "SafetensorsFile::read_raw", "tensor '", t.name, "' in ", source_, " has ",
          t.nbytes(), " bytes (", safetensors::dtype_name(t.dtype), " ", safetensors::detail::shape_str(t.shape),
          ") but the output holds ", nbytes);
    if (nbytes) std::memcpy(out, bytes_.data() + data_start() + t.begin, nbytes);
  }

  // Copies into out[0, count); the dtype must be dtype_of<T>() and count the
  // element count (no conversions: a silent F64 -> F32 narrowing in a
  // checkpoint load is a bug waiting to happen).
  template <class T>
  void read(const std::string& name, T* out, std::size_t count) const {
    const TensorInfo& t = tensors_[lookup("SafetensorsFile::read", name)];
    constexpr safetensors::Dtype want = safetensors::dtype_of<T>();
    check(t.dtype == want, "SafetensorsFile::read", "tensor '", t.name, "' in ", source_, " has dtype ",
          safetensors::dtype_name(t.dtype), " but was read as ", safetensors::dtype_name(want));
    check(count == t.numel(), "SafetensorsFile::read", "tensor '", t.name, "' in ", source_, " has ", t.numel(),
          " elements (shape ", safetensors::detail::shape_str(t.shape), ") but the output holds ", count);
    const std::uint8_t* src = bytes_.data() + data_start() + t.begin;
    if constexpr (std::is_same<T, bool>::value) {
      // A bool object holding anything but 0 or 1 is undefined behaviour.
      for (std::size_t i = 0; i < count; ++i)
        check(src[i] <= 1, "SafetensorsFile::read", "tensor '", t.name, "' in ", source_, ": BOOL element ", i,
              " is ", unsigned(src[i]), ", not 0 or 1");
    }
    if (count) std::memcpy(out, src, count * sizeof(T));
  }
  void read_f32(const std::string& name, float* out, std::size_t count) const { read<float>(name, out, count); }

  template <class T>
  std::vector<T> read_vector(const std::string& name) const {
    const std::size_t n = static_cast<std::size_t>(info(name).numel());
    if constexpr (std::is_same<T, bool>::value) {
      // std::vector<bool> packs bits and has no data(): read into bools, then copy.
      std::unique_ptr<bool[]> tmp(new bool[n ? n : 1]);
      read<bool>(name, tmp.get(), n);
      return std::vector<bool>(tmp.get(), tmp.get() + n);
    } else {
      std::vector<T> v(n);
      read<T>(name, v.data(), v.size());
      return v;
    }
  }

 private:
  SafetensorsFile() = default;

  std::size_t lookup(const char* op, const std::string& name) const {
    const auto it = index_.find(name);
    if (it != index_.end()) return it->second;
    std::string have;
    const std::size_t shown = std::min<std::size_t>(tensors_.size(), 10);
    for (std::size_t i = 0; i < shown; ++i) have += (i ? ", '" : "'") + tensors_[i].name + "'";
    if (tensors_.size() > shown) have += ", ...";
    fail(op, "no tensor named '", name, "' in ", source_, " (it has ", tensors_.size(), " tensors",
         tensors_.empty() ? "" : ": ", have, ")");
  }

  template <class... P>
  [[noreturn]] void bad(const char* op, const P&... parts) const {
    fail(op, source_, " is not a valid safetensors file: ", parts...);
  }

  void parse(const char* op) {
    using namespace safetensors;
    const std::uint64_t size = bytes_.size();
    if (size < 8)
      bad(op, "it is ", size, " bytes long, shorter than the 8-byte header length that starts the format");
    const std::uint64_t n = safetensors::detail::get_u64_le(bytes_.data());
    if (n > kMaxHeaderSize) bad(op, "header length ", n, " exceeds the limit of ", kMaxHeaderSize, " bytes");
    if (n > size - 8)
      bad(op, "header length ", n, " exceeds the ", size - 8, " bytes after the 8-byte length (truncated file?)");
    header_size_ = n;
    const std::uint64_t buffer_size = size - 8 - n;
    const std::string_view text(reinterpret_cast<const char*>(bytes_.data() + 8), static_cast<std::size_t>(n));
    if (text.empty() || text[0] != '{')
      bad(op, "the header (file offset 8) must be a JSON object starting with '{', found ",
          text.empty() ? std::string("an empty header")
                       : "byte " + std::to_string(static_cast<unsigned>(static_cast<std::uint8_t>(text[0]))));

    json::Value header;
    try {
      header = json::parse(text);
    } catch (const Error& e) {
      bad(op, "the header is not valid JSON (offsets count from the header start, file offset 8): ", e.what());
    }
    if (!header.is_object()) bad(op, "the header must be a JSON object");

    std::vector<std::uint64_t> nbytes_list;
    for (const auto& member : header.as_object()) {
      const std::string& name = member.first;
      const json::Value& v = member.second;
      if (name == "__metadata__") {
        if (v.is_null()) continue;  // serde reads null as "no metadata"
        if (!v.is_object()) bad(op, "\"__metadata__\" must be an object of strings, got ", v.dump());
        for (const auto& kv : v.as_object()) {
          if (!kv.second.is_string())
            bad(op, "\"__metadata__\" value of key \"", kv.first, "\" must be a string, got ", kv.second.dump());
          metadata_.emplace(kv.first, kv.second.as_string());
        }
        continue;
      }
      if (!v.is_object()) bad(op, "entry of tensor '", name, "' must be an object, got ", v.dump());
      for (const auto& field : v.as_object())
        if (field.first != "dtype" && field.first != "shape" && field.first != "data_offsets")
          bad(op, "tensor '", name, "' has an unknown field \"", field.first,
              "\" (expected only dtype, shape, data_offsets)");
      const json::Value* dtype = v.find("dtype");
      const json::Value* shape = v.find("shape");
      const json::Value* offsets = v.find("data_offsets");
      if (!dtype) bad(op, "tensor '", name, "' has no \"dtype\"");
      if (!shape) bad(op, "tensor '", name, "' has no \"shape\"");
      if (!offsets) bad(op, "tensor '", name, "' has no \"data_offsets\"");

      TensorInfo t;
      t.name = name;
      if (!dtype->is_string()) bad(op, "dtype of tensor '", name, "' must be a string, got ", dtype->dump());
      const std::string& dn = dtype->as_string();
      if (dn == "F4" || dn == "F6_E2M3" || dn == "F6_E3M2")
        bad(op, "tensor '", name, "' has the sub-byte dtype ", dn, ", which mtrec does not support");
      if (!dtype_from_name(dn, t.dtype))
        bad(op, "tensor '", name, "' has the unknown dtype \"", dn, "\" (known: ", dtype_names(), ")");

      if (!shape->is_array())
        bad(op, "shape of tensor '", name, "' must be an array of non-negative integers, got ", shape->dump());
      for (std::size_t k = 0; k < shape->size(); ++k) {
        const json::Value& d = shape->at(k);
        if (!d.is_int() || d.as_int() < 0)
          bad(op, "shape of tensor '", name, "' must be an array of non-negative integers; element ", k, " is ",
              d.dump());
        t.shape.push_back(d.as_int());
      }
      std::uint64_t numel = 0, nbytes = 0;
      if (!safetensors::detail::shape_bytes(t.shape, dtype_size(t.dtype), numel, nbytes))
        bad(op, "shape ", safetensors::detail::shape_str(t.shape), " of tensor '", name, "' (", dn,
            ") has more bytes than fit in 64 bits");

      if (!offsets->is_array() || offsets->size() != 2)
        bad(op, "data_offsets of tensor '", name, "' must be [begin, end], got ", offsets->dump());
      for (std::size_t k = 0; k < 2; ++k)
        if (!offsets->at(k).is_int() || offsets->at(k).as_int() < 0)
          bad(op, "data_offsets of tensor '", name, "' must be two non-negative integers, got ", offsets->dump());
      t.begin = static_cast<std::uint64_t>(offsets->at(0).as_int());
      t.end = static_cast<std::uint64_t>(offsets->at(1).as_int());
      if (t.begin > t.end)
        bad(op, "data_offsets of tensor '", name, "' are [", t.begin, ", ", t.end, "]: begin is after end");
      if (t.end > buffer_size)
        bad(op, "data_offsets of tensor '", name, "' are [", t.begin, ", ", t.end, "], past the end of the ",
            buffer_size, "-byte data buffer (offsets out of range; truncated file?)");
      if (t.end - t.begin != nbytes)
        bad(op, "tensor '", name, "' has data_offsets [", t.begin, ", ", t.end, "] (", t.end - t.begin,
            " bytes) but its shape ", safetensors::detail::shape_str(t.shape), " of ", dn, " needs ", numel, " x ",
            dtype_size(t.dtype), " = ", nbytes, " bytes");
      tensors_.push_back(std::move(t));
    }

    // Coverage: sorted by (begin, end), stable so zero-byte tensors at one
    // offset keep the header order, the tensors must tile [0, buffer_size).
    std::stable_sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t covered = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo& t : tensors_) {
      if (t.begin < covered)
        bad(op, "tensor '", t.name, "' starts at byte ", t.begin, " of the data buffer but tensor '", prev->name,
            "' ends at byte ", covered, ": tensors overlap");
      if (t.begin > covered)
        bad(op, "tensor '", t.name, "' starts at byte ", t.begin, " of the data buffer but ",
            prev ? "tensor '" + prev->name + "' ends" : std::string("the buffer starts"), " at byte ", covered,
            ": a hole of ", t.begin - covered, " bytes (tensors must be contiguous)");
      covered = t.end;
      prev = &t;
    }
    if (covered != buffer_size)
      bad(op, "the tensors cover ", covered, " bytes but the data buffer has ", buffer_size, " bytes: ",
          buffer_size - covered, " trailing bytes belong to no tensor");

    for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  std::string source_;
  std::vector<std::uint8_t> bytes_;
  std::uint64_t header_size_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
};

}  // namespace mtrec
