// Test support: loads the PyTorch parity fixtures (tests/fixtures/*.txt,
// written by tools/make_torch_fixtures.py) with no dependency beyond the
// standard library.
//
// Format (whitespace separated; a line starting with '#' is a comment):
//
//   mtrec-fixture 1
//   meta <key> <value>
//   tensor <name> <rank> <d0> ... <d_rank-1>    then prod(d) float values
//   itensor <name> <rank> <d0> ...              then prod(d) integers
//   end
//
// Floats are written with up to 17 significant digits and parsed with
// strtod, so the float64 reference values arrive bit-exact. Any missing file,
// unknown keyword, bad number, wrong count or missing "end" throws
// std::runtime_error naming the file and the offending token.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <mtrec/mtrec.hpp>

// Folder holding the fixture files; CMake defines it. The fallback is the
// folder next to this header's parent (tests/fixtures), found through __FILE__.
#ifndef MTREC_FIXTURE_DIR
#define MTREC_FIXTURE_DIR ""
#endif

namespace parity {

inline std::string fixture_dir() {
  const std::string configured = MTREC_FIXTURE_DIR;
  if (!configured.empty()) return configured;
  std::string here = __FILE__;  // .../tests/parity/fixture.hpp
  const auto slash = here.find_last_of("/\\");
  here = slash == std::string::npos ? std::string(".") : here.substr(0, slash);
  return here + "/../fixtures";
}

struct FixtureTensor {
  std::vector<mtrec::index_t> shape;
  std::vector<double> values;
  mtrec::index_t numel() const { return static_cast<mtrec::index_t>(values.size()); }
};

struct FixtureITensor {
  std::vector<mtrec::index_t> shape;
  std::vector<mtrec::index_t> values;
  mtrec::index_t numel() const { return static_cast<mtrec::index_t>(values.size()); }
};

inline mtrec::Shape to_shape(const std::vector<mtrec::index_t>& d) {
  switch (d.size()) {
    case 1: return mtrec::Shape{d[0]};
    case 2: return mtrec::Shape{d[0], d[1]};
    case 3: return mtrec::Shape{d[0], d[1], d[2]};
    case 4: return mtrec::Shape{d[0], d[1], d[2], d[3]};
    default: throw std::runtime_error("fixture: rank " + std::to_string(d.size()) + " is not in [1, 4]");
  }
}

class Fixture {
 public:
  // Reads <fixture_dir()>/<file>.
  static Fixture load(const std::string& file) { return load_path(fixture_dir() + "/" + file); }

  // Reads the fixture at `path`.
  static Fixture load_path(const std::string& path) {
    Fixture f;
    f.path_ = path;
    std::ifstream in(f.path_);
    if (!in)
      throw std::runtime_error("fixture: cannot open '" + f.path_ +
                               "' (regenerate with: python3 tools/make_torch_fixtures.py)");
    std::stringstream text;
    std::string line;
    while (std::getline(in, line))
      if (line.empty() || line[0] != '#') text << line << '\n';
    f.parse(text);
    return f;
  }

  const std::string& path() const { return path_; }

  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const FixtureTensor& tensor(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) fail("has no float tensor '" + name + "'");
    return it->second;
  }
  const FixtureITensor& itensor(const std::string& name) const {
    auto it = itensors_.find(name);
    if (it == itensors_.end()) fail("has no integer tensor '" + name + "'");
    return it->second;
  }
  const std::map<std::string, FixtureTensor>& tensors() const { return tensors_; }

  const std::string& meta(const std::string& key) const {
    auto it = meta_.find(key);
    if (it == meta_.end()) fail("has no meta entry '" + key + "'");
    return it->second;
  }
  mtrec::index_t meta_int(const std::string& key) const {
    return static_cast<mtrec::index_t>(parse_int(meta(key), "meta " + key));
  }
  double meta_double(const std::string& key) const { return parse_double(meta(key), "meta " + key); }

  // A float tensor converted to T, with the stored shape (optionally checked).
  template <class T>
  mtrec::Tensor<T> as(const std::string& name, std::initializer_list<mtrec::index_t> expect = {}) const {
    const FixtureTensor& t = tensor(name);
    check_dims(name, t.shape, expect);
    mtrec::Tensor<T> out(to_shape(t.shape));
    for (mtrec::index_t i = 0; i < t.numel(); ++i) out[i] = static_cast<T>(t.values[static_cast<std::size_t>(i)]);
    return out;
  }
  mtrec::Tensor<mtrec::index_t> as_index(const std::string& name, std::initializer_list<mtrec::index_t> expect = {}) const {
    const FixtureITensor& t = itensor(name);
    check_dims(name, t.shape, expect);
    mtrec::Tensor<mtrec::index_t> out(to_shape(t.shape));
    for (mtrec::index_t i = 0; i < t.numel(); ++i) out[i] = t.values[static_cast<std::size_t>(i)];
    return out;
  }

  [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error("fixture '" + path_ + "' " + what); }

 private:
  void check_dims(const std::string& name, const std::vector<mtrec::index_t>& got,
                  std::initializer_list<mtrec::index_t> expect) const {
    if (expect.size() == 0) return;
    const std::vector<mtrec::index_t> want(expect);
    if (got != want) {
      std::ostringstream os;
      os << "tensor '" << name << "' expected shape (";
      for (std::size_t i = 0; i < want.size(); ++i) os << (i ? ", " : "") << want[i];
      os << ") but has (";
      for (std::size_t i = 0; i < got.size(); ++i) os << (i ? ", " : "") << got[i];
      os << ")";
      fail(os.str());
    }
  }

  long long parse_int(const std::string& tok, const std::string& where) const {
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(tok.c_str(), &end, 10);
    if (tok.empty() || errno != 0 || *end != '\0') fail("is malformed: expected an integer for " + where + " but got '" + tok + "'");
    return v;
  }
  double parse_double(const std::string& tok, const std::string& where) const {
    errno = 0;
    char* end = nullptr;
    const double v = std::strtod(tok.c_str(), &end);
    if (tok.empty() || errno == ERANGE || *end != '\0')
      fail("is malformed: expected a number for " + where + " but got '" + tok + "'");
    return v;
  }
  std::string next(std::istream& in, const std::string& where) const {
    std::string tok;
    if (!(in >> tok)) fail("is truncated: expected " + where + " (no 'end' line?)");
    return tok;
  }

  void parse(std::istream& in) {
    if (next(in, "the magic 'mtrec-fixture'") != "mtrec-fixture") fail("is not a fixture: missing 'mtrec-fixture' header");
    const std::string version = next(in, "a format version");
    if (version != "1") fail("has format version '" + version + "', this loader reads version 1");
    for (;;) {
      const std::string kw = next(in, "a keyword");
      if (kw == "end") break;
      if (kw == "meta") {
        const std::string key = next(in, "a meta key");
        meta_[key] = next(in, "the value of meta " + key);
        continue;
      }
      if (kw != "tensor" && kw != "itensor") fail("is malformed: unknown keyword '" + kw + "'");
      const std::string name = next(in, "a tensor name");
      if (tensors_.count(name) || itensors_.count(name)) fail("is malformed: tensor '" + name + "' appears twice");
      const long long rank = parse_int(next(in, "the rank of " + name), "the rank of " + name);
      if (rank < 1 || rank > 4) fail("is malformed: tensor '" + name + "' has rank " + std::to_string(rank));
      std::vector<mtrec::index_t> shape;
      long long n = 1;
      for (long long d = 0; d < rank; ++d) {
        const long long v = parse_int(next(in, "a dimension of " + name), "a dimension of " + name);
        if (v < 0 || v > (1 << 20)) fail("is malformed: tensor '" + name + "' has dimension " + std::to_string(v));
        shape.push_back(v);
        n *= v;
      }
      if (n > (1 << 22)) fail("is malformed: tensor '" + name + "' is implausibly large");
      const std::string where = "a value of " + name;
      if (kw == "tensor") {
        FixtureTensor t;
        t.shape = shape;
        t.values.reserve(static_cast<std::size_t>(n));
        for (long long i = 0; i < n; ++i) t.values.push_back(parse_double(next(in, where), where));
        tensors_[name] = std::move(t);
      } else {
        FixtureITensor t;
        t.shape = shape;
        t.values.reserve(static_cast<std::size_t>(n));
        for (long long i = 0; i < n; ++i) t.values.push_back(static_cast<mtrec::index_t>(parse_int(next(in, where), where)));
        itensors_[name] = std::move(t);
      }
    }
    std::string extra;
    if (in >> extra) fail("is malformed: unexpected '" + extra + "' after 'end'");
  }

  std::string path_;
  std::map<std::string, std::string> meta_;
  std::map<std::string, FixtureTensor> tensors_;
  std::map<std::string, FixtureITensor> itensors_;
};

// Relative error of one tensor: max_i |mine_i - ref_i| / max(max_i |ref_i|, 1e-12),
// over the elements where `keep(i)` is true (all by default).
struct RelError {
  double max_abs_diff = 0;  // max |mine - ref|
  double max_abs_ref = 0;   // max |ref|
  mtrec::index_t worst = -1;  // flat index of the largest difference
  double rel() const { return max_abs_diff / std::max(max_abs_ref, 1e-12); }
};

template <class T, class Keep>
inline RelError rel_error(const T* mine, const FixtureTensor& ref, Keep keep) {
  RelError e;
  for (mtrec::index_t i = 0; i < ref.numel(); ++i) {
    if (!keep(i)) continue;
    const double r = ref.values[static_cast<std::size_t>(i)];
    double d = std::fabs(static_cast<double>(mine[i]) - r);
    if (std::isnan(d)) d = std::numeric_limits<double>::infinity();  // a NaN never passes
    if (d > e.max_abs_diff || e.worst < 0) {
      e.max_abs_diff = d;
      e.worst = i;
    }
    e.max_abs_ref = std::max(e.max_abs_ref, std::fabs(r));
  }
  return e;
}
template <class T>
inline RelError rel_error(const T* mine, const FixtureTensor& ref) {
  return rel_error(mine, ref, [](mtrec::index_t) { return true; });
}

}  // namespace parity
