// Test support: random data and central finite differences in double precision.
//
// A gradient test builds a layer over ParameterStore<double>, defines the
// scalar loss L = sum(out * R) for a fixed random R, runs backward with
// dOut = R to get analytic gradients, then compares every input and
// parameter gradient with (L(w + eps) - L(w - eps)) / (2 eps).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <mtrec/mtrec.hpp>

namespace testing {

using mtrec::index_t;

// Uniform values in [lo, hi) from a seeded counter-based stream.
template <class T>
inline void fill_uniform(T* p, index_t n, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  mtrec::RandomStream rs(seed, 0xF1);
  for (index_t i = 0; i < n; ++i) p[i] = T(lo + (hi - lo) * rs.uniform(std::uint64_t(i)));
}
template <class T>
inline void fill_uniform(mtrec::Tensor<T>& t, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  fill_uniform(t.data(), t.numel(), seed, lo, hi);
}

// Gives every parameter of the store random values (so biases, LayerNorm
// gains etc. are not at their trivial initial values).
template <class T>
inline void randomise_parameters(mtrec::ParameterStore<T>& store, std::uint64_t seed, double scale = 0.5) {
  for (int id = 0; id < store.count(); ++id)
    fill_uniform(store.value(id), store.info(id).size, seed + 977 * std::uint64_t(id), -scale, scale);
}

template <class T>
inline double dot(const T* a, const T* b, index_t n) {
  double s = 0;
  for (index_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

struct GradStats {
  int checked = 0;
  double max_abs_err = 0;
};

// Compares analytic[i] with the central difference of loss() w.r.t. x[i],
// for every i (or every `stride`-th one). Fails the test with the position
// and both values on the first mismatch beyond atol + rtol * |numeric|.
inline GradStats check_gradient(const std::string& what, double* x, index_t n, const double* analytic,
                                const std::function<double()>& loss, double eps = 1e-6, double rtol = 1e-6,
                                double atol = 1e-8, index_t stride = 1) {
  GradStats st;
  for (index_t i = 0; i < n; i += stride) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double lp = loss();
    x[i] = saved - eps;
    const double lm = loss();
    x[i] = saved;
    const double numeric = (lp - lm) / (2 * eps);
    const double err = std::fabs(analytic[i] - numeric);
    st.max_abs_err = std::max(st.max_abs_err, err);
    ++st.checked;
    if (err > atol + rtol * std::fabs(numeric)) {
      INFO(what << "[" << i << "]: analytic " << analytic[i] << " vs finite difference " << numeric << " (error "
                << err << ")");
      CHECK(err <= atol + rtol * std::fabs(numeric));
      return st;
    }
  }
  return st;
}

// Runs check_gradient on every parameter of the store (values vs grads).
inline int check_parameter_gradients(mtrec::ParameterStore<double>& store, const std::function<double()>& loss,
                                     double rtol = 1e-6, double atol = 1e-8) {
  int checked = 0;
  for (int id = 0; id < store.count(); ++id) {
    const auto& info = store.info(id);
    checked += check_gradient("param " + info.name, store.value(id), info.size, store.grad(id), loss, 1e-6, rtol, atol)
                   .checked;
  }
  return checked;
}

// Bitwise equality of two buffers.
template <class T>
inline bool bitwise_equal(const T* a, const T* b, index_t n) {
  return n == 0 || std::memcmp(a, b, sizeof(T) * static_cast<std::size_t>(n)) == 0;
}

// Runs fn with the OpenMP thread count set to n, restoring it afterwards.
template <class Fn>
inline void with_threads(int n, Fn&& fn) {
  const int before = mtrec::num_threads();
  const double scale = mtrec::fork_threshold_scale();
  mtrec::set_num_threads(n);
  mtrec::set_fork_threshold_scale(0);  // test-sized problems fork too
  fn();
  mtrec::set_fork_threshold_scale(scale);
  mtrec::set_num_threads(before);
}

// Requires that calling fn throws mtrec::Error whose message contains every
// fragment.
template <class Fn>
inline void require_error(Fn&& fn, std::initializer_list<const char*> fragments) {
  try {
    fn();
  } catch (const mtrec::Error& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const char* f : fragments) CHECK(msg.find(f) != std::string::npos);
    return;
  }
  FAIL("expected mtrec::Error containing " << *fragments.begin());
}

}  // namespace testing

namespace testing {

// One differentiable input of a layer: its values and where backward puts its gradient.
struct InputGrad {
  std::string name;
  mtrec::Tensor<double>* x;
  mtrec::Tensor<double>* dx;
};

// The whole finite-difference check of one layer configuration:
//   forward(out)  runs the layer on the current inputs/parameters into `out`;
//   backward(R)   runs forward then backward with dOut = R, writing input
//                 gradients into the InputGrad::dx tensors.
// Checks every input element and every parameter element. Returns how many
// partial derivatives were compared (so a test can require > 0).
inline int run_gradcheck(mtrec::ParameterStore<double>& store,
                         const std::function<void(mtrec::Tensor<double>&)>& forward,
                         const std::function<void(const mtrec::Tensor<double>&)>& backward,
                         const std::vector<InputGrad>& inputs, std::uint64_t seed = 99, double rtol = 1e-6,
                         double atol = 1e-8) {
  mtrec::Tensor<double> out;
  forward(out);
  mtrec::Tensor<double> R(out.shape());
  fill_uniform(R, seed);
  store.zero_grad();
  backward(R);
  // Copy analytic results: the loss evaluations below reuse the layer's buffers.
  std::vector<mtrec::Tensor<double>> dx;
  for (const auto& in : inputs) dx.push_back(*in.dx);
  std::vector<double> pgrad(store.grads(), store.grads() + store.size());
  auto loss = [&] {
    forward(out);
    return dot(out.data(), R.data(), out.numel());
  };
  int checked = 0;
  for (std::size_t k = 0; k < inputs.size(); ++k)
    checked += check_gradient("input " + inputs[k].name, inputs[k].x->data(), inputs[k].x->numel(), dx[k].data(),
                              loss, 1e-6, rtol, atol)
                   .checked;
  for (int id = 0; id < store.count(); ++id) {
    const auto& info = store.info(id);
    checked += check_gradient("param " + info.name, store.value(id), info.size, pgrad.data() + info.offset, loss, 1e-6,
                              rtol, atol)
                   .checked;
  }
  return checked;
}

}  // namespace testing
