// One table of op cases, as ggml's test-backend-ops: every kernel of the
// library is a row here, with its shapes (odd sizes around the vector widths,
// empty inputs, fully padded rows). From the same rows:
//   tests/ops/test_ops.cpp  checks every backend against a double-precision
//                           run of `reference` (NMSE per op), and every op
//                           with a backward against central finite
//                           differences in double;
//   bench/bench_ops.cpp     times the rows marked `bench` on every backend.
//
// A row is made by make_case() from two generic lambdas, instantiated for
// every backend and for double:
//   fwd(dev, b)  reads b.in, writes b.out     (b.out starts as the case's
//                                              out_init: zeros, or random for
//                                              ops that accumulate into it)
//   bwd(dev, b)  reads b.in, b.out, b.dout, writes or adds into b.din
//                (b.din starts at zero)
// where b is a Bufs<T>. The gradient checked is that of
// L = sum_j <out_j, dout_j> with respect to every input marked `diff`.
// Integer inputs (IDs, offsets, lengths) are captured by the lambdas. In a
// lambda, `using T = typename std::decay_t<decltype(b)>::value_type;`.
//
// A new op is one kernel per backend plus one row in a cases_*.hpp file.
// A layer's (or a public loss's) rows live in its own test file
// (tests/layers/test_<layer>.cpp; tests/ops/layer_case.hpp has the harness),
// registered with OPTABLE_REGISTER below: a new layer adds no line to tests/ops/.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <mtrec/mtrec.hpp>

// In a case lambda taking `auto& b`: T, the precision of the run.
#define OPT_T using T = typename std::decay_t<decltype(b)>::value_type

namespace optable {

using mtrec::index_t;

// The buffers of one run in precision T; each is a list of flat arrays.
template <class T>
struct Bufs {
  using value_type = T;
  std::vector<std::vector<T>> in, out, dout, din;
};

// The backends a case runs on (the double run is always `reference`).
// Fake runs the reference code inside the arena guard (kernels/fake.hpp). The
// buffers here are host memory, which Fake's typed kernels refuse at compile
// time, so these rows call them through kernels::FakeDispatch, the same
// forwarding without the pointer typing: they check the Fake kernel table
// (every kernel reachable, same results as reference). The poison and the
// pointer checks are tested by tests/device/.
// In a translation unit that nvcc compiles with MTREC_WITH_CUDA=1 (tests/cuda/,
// bench/ on a CUDA build) the table has a Cuda column too: the CUDA kernels
// through kernels::CudaDispatch on the same host buffers, which the GPU reads
// through the driver's pageable-memory access (tests/cuda/test_cuda_ops.cu).
enum class Dev { Reference, Cpu, Fake, Cuda };
inline const char* dev_name(Dev d) {
  return d == Dev::Reference ? "reference" : d == Dev::Cpu ? "cpu" : d == Dev::Fake ? "fake" : "cuda";
}
inline std::vector<Dev> all_devices() { return {Dev::Reference, Dev::Cpu, Dev::Fake}; }
inline std::vector<Dev> bench_devices() { return {Dev::Reference, Dev::Cpu}; }

template <class F, class B>
inline void on_device(Dev d, F& f, B& b) {
  if (d == Dev::Reference) f(mtrec::kernels::reference, b);
  else if (d == Dev::Cpu) f(mtrec::kernels::cpu, b);
  else if (d == Dev::Fake) f(mtrec::kernels::FakeDispatch{}, b);
  else {
#if MTREC_HAS_CUDA
    f(mtrec::kernels::CudaDispatch{}, b);
#else
    throw std::logic_error("op table: the Cuda column needs a translation unit compiled by nvcc with MTREC_WITH_CUDA=1");
#endif
  }
}

struct Input {
  index_t size = 0;
  bool diff = true;      // finite-difference checked
  double lo = -1, hi = 1;  // uniform range of its random values
};

struct OpCase {
  std::string op;     // kernel name, e.g. "embedding_bag_forward"
  std::string shape;  // e.g. "B=5 dim=17 mean"
  std::vector<Input> in;
  std::vector<index_t> out;  // output sizes
  std::vector<int> saved;        // outputs kept for the backward only (their dout is 0)
  bool random_out_init = false;  // the op accumulates into out (+=)
  double nmse_tol = 1e-7;        // forward and backward, against double
  double fd_rtol = 1e-5, fd_atol = 1e-6;  // |analytic - numeric| <= atol + rtol |numeric|
  bool bench = false;            // timed by bench/bench_ops.cpp
  std::uint64_t seed = 1;

  std::function<void(Dev, Bufs<float>&)> fwd_f, bwd_f;
  std::function<void(Bufs<double>&)> fwd_d, bwd_d;
  bool has_backward() const { return static_cast<bool>(bwd_d); }
  std::string name() const { return op + " [" + shape + "]"; }
};

// Deterministic uniform values in [lo, hi): stream `stream` of `seed`.
inline std::vector<double> random_values(index_t n, std::uint64_t seed, std::uint64_t stream, double lo, double hi) {
  std::vector<double> v(static_cast<std::size_t>(n));
  mtrec::RandomStream rs(seed, stream);
  for (index_t i = 0; i < n; ++i) v[std::size_t(i)] = lo + (hi - lo) * rs.uniform(std::uint64_t(i));
  return v;
}

// Random IDs in [0, rows).
inline std::vector<index_t> random_ids(index_t n, index_t rows, std::uint64_t seed) {
  std::vector<index_t> v(static_cast<std::size_t>(n));
  mtrec::RandomStream rs(seed, 0x1D5);
  for (index_t i = 0; i < n; ++i)
    v[std::size_t(i)] = static_cast<index_t>(rs.uniform(std::uint64_t(i)) * double(rows)) % std::max<index_t>(rows, 1);
  return v;
}

// The inputs, upstream gradients and initial outputs of a case, in double;
// every backend gets these values rounded to its T.
struct Data {
  std::vector<std::vector<double>> in, out_init, dout;
};
inline Data case_data(const OpCase& c) {
  Data d;
  for (std::size_t j = 0; j < c.in.size(); ++j)
    d.in.push_back(random_values(c.in[j].size, c.seed, 100 + j, c.in[j].lo, c.in[j].hi));
  for (std::size_t j = 0; j < c.out.size(); ++j) {
    d.out_init.push_back(c.random_out_init ? random_values(c.out[j], c.seed, 200 + j, -1, 1)
                                           : std::vector<double>(std::size_t(c.out[j]), 0.0));
    d.dout.push_back(random_values(c.out[j], c.seed, 300 + j, -1, 1));
    for (int k : c.saved)
      if (k == int(j)) d.dout.back().assign(std::size_t(c.out[j]), 0.0);
  }
  return d;
}

template <class T>
inline std::vector<std::vector<T>> cast(const std::vector<std::vector<double>>& v) {
  std::vector<std::vector<T>> r;
  for (const auto& x : v) r.emplace_back(x.begin(), x.end());
  return r;
}

template <class T>
inline Bufs<T> make_bufs(const OpCase& c, const Data& d) {
  Bufs<T> b;
  b.in = cast<T>(d.in);
  b.out = cast<T>(d.out_init);
  b.dout = cast<T>(d.dout);
  for (const auto& x : c.in) b.din.emplace_back(std::size_t(x.size), T(0));
  return b;
}

// Builds a row from generic lambdas fwd(dev, bufs) and bwd(dev, bufs);
// pass nullptr as bwd for an op without a backward.
template <class F, class B>
inline OpCase make_case(OpCase c, F fwd, B bwd) {
  c.fwd_f = [fwd](Dev d, Bufs<float>& b) { on_device(d, fwd, b); };
  c.fwd_d = [fwd](Bufs<double>& b) { fwd(mtrec::kernels::reference, b); };
  c.bwd_f = [bwd](Dev d, Bufs<float>& b) { on_device(d, bwd, b); };
  c.bwd_d = [bwd](Bufs<double>& b) { bwd(mtrec::kernels::reference, b); };
  return c;
}
template <class F>
inline OpCase make_case(OpCase c, F fwd, std::nullptr_t) {
  c.fwd_f = [fwd](Dev d, Bufs<float>& b) { on_device(d, fwd, b); };
  c.fwd_d = [fwd](Bufs<double>& b) { fwd(mtrec::kernels::reference, b); };
  return c;
}

// sum |a - r|^2 / sum |r|^2 (0 when both are zero; inf if a is not finite).
template <class T>
inline double nmse(const std::vector<T>& a, const std::vector<double>& r) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < r.size(); ++i) {
    const double e = double(a[i]) - r[i];
    if (!std::isfinite(double(a[i]))) return INFINITY;
    num += e * e;
    den += r[i] * r[i];
  }
  if (num == 0) return 0;
  return den == 0 ? INFINITY : num / den;
}

// ---- rows registered from other files ----------------------------------------------
// A test file outside tests/ops (a layer's) adds rows to the table with
// OPTABLE_REGISTER(fn), fn a `std::vector<OpCase> fn()` at namespace scope:
// all_cases() (tests/ops/cases.hpp) appends registered_cases() after the
// cases_*.hpp rows. The order of static initialization across files is
// unspecified, so registered_cases() sorts the rows by name() (unique: see
// "the table is well formed"), whatever the link order. A registration in
// an executable without tests/ops/test_ops.cpp (mtrec_unit_tests_single)
// is never read; bench/bench_ops.cpp links no test file, so a `bench` row
// belongs in a cases_*.hpp file.
using CasesFn = std::vector<OpCase> (*)();
inline std::vector<CasesFn>& registered_parts() {
  static std::vector<CasesFn> parts;  // built on first use: safe during static initialization
  return parts;
}
struct RegisterCases {
  explicit RegisterCases(CasesFn f) { registered_parts().push_back(f); }
};
inline std::vector<OpCase> registered_cases() {
  std::vector<OpCase> all;
  for (CasesFn f : registered_parts()) {
    auto v = f();
    all.insert(all.end(), v.begin(), v.end());
  }
  std::stable_sort(all.begin(), all.end(), [](const OpCase& a, const OpCase& b) { return a.name() < b.name(); });
  return all;
}

}  // namespace optable

#define OPTABLE_CAT_(a, b) a##b
#define OPTABLE_CAT(a, b) OPTABLE_CAT_(a, b)
// At namespace scope: adds the rows of fn() to the op table (see registered_cases()).
#define OPTABLE_REGISTER(fn) \
  static const ::optable::RegisterCases OPTABLE_CAT(optable_registered_, __LINE__)(fn)
