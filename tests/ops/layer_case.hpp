// Op-table rows for whole layers (include/mtrec/layers/) and the public
// losses (layers/losses.hpp), each instantiated on every device of the table:
// the layer is built on a ParameterStore of that device, its parameters are
// the row's inputs after the layer's own inputs (one per parameter, in the
// store's order), and the backward reads their gradients back as the inputs'
// gradients. So a layer gets the same three checks as a kernel: every device
// in float against reference in double, finite differences in double, and
// bitwise repeatability.
//
// A layer's rows live in its own test file (tests/layers/test_<layer>.cpp,
// the losses' in tests/train/test_losses.cpp), in namespace optable:
//
//   #include "ops/layer_case.hpp"
//   namespace optable {
//   namespace {
//   std::vector<OpCase> linear_layer_cases() {
//     std::vector<OpCase> v;
//     auto add = layer_detail::layer_adder(v);
//     ...  add(c, own_inputs, OPT_LAYER(mtrec::Linear<T, D>(st, ...)), fwd, bwd);
//     return v;
//   }
//   OPTABLE_REGISTER(linear_layer_cases);
//   }  // namespace
//   }  // namespace optable
//
// and tests/ops/test_ops.cpp checks them with the rest of the table
// (optable::all_cases(), tests/ops/cases.hpp). Include this header before any
// single mtrec/ header: it brings <mtrec/mtrec.hpp>, whose Fake kernels
// (kernels::FakeDispatch) the layer's qualified kernel calls must see.
#pragma once

#include <string>
#include <vector>

#include "ops/op_table.hpp"

namespace optable {

namespace layer_detail {
using mtrec::ParameterStore;

template <class S>
struct store_of;
template <class T, class D>
struct store_of<ParameterStore<T, D>> {
  using value = T;
  using device = D;
};

// Builds the layer with make(store) on device Dev in b's precision, loads its
// parameters from b.in[first ..], runs run(layer), and with `grads` reads the
// parameter gradients into b.din[first ..].
template <class Dev, class B, class Make, class Run>
inline void with_layer(const Dev& dev, B& b, std::size_t first, Make make, Run run, bool grads) {
  using T = typename B::value_type;
  ParameterStore<T, Dev> st(1, dev);
  auto layer = make(st);
  st.allocate();
  const auto& infos = st.infos();
  for (std::size_t i = 0; i < infos.size(); ++i)
    st.write_values(infos[i].offset, b.in[first + i].data(), infos[i].size);
  run(layer);
  if (grads)
    for (std::size_t i = 0; i < infos.size(); ++i)
      st.read_grads(b.din[first + i].data(), infos[i].offset, infos[i].size);
}

// The sizes of the parameters make() registers, in the store's order.
template <class Make>
inline std::vector<index_t> param_sizes(Make make) {
  ParameterStore<double, mtrec::Reference> st(1);
  auto layer = make(st);
  (void)layer;
  std::vector<index_t> s;
  for (const auto& p : st.infos()) s.push_back(p.size);
  return s;
}

// din[j] *= dout[0][0]: a loss's gradient of L = value * dout.
template <class B>
inline void scale_by_dout(B& b, std::size_t j) {
  for (auto& x : b.din[j]) x *= b.dout[0][0];
}

// add(c, own, make, fwd, bwd): appends to v the row of a layer with inputs
// `own` (the layer's own) then its parameters; fwd(dev, b, layer) and
// bwd(dev, b, layer) run the layer.
inline auto layer_adder(std::vector<OpCase>& v) {
  return [&v](OpCase c, std::vector<Input> own, auto make, auto fwd, auto bwd) {
    const std::size_t first = own.size();
    c.in = own;
    for (index_t s : param_sizes(make)) c.in.push_back({s, true, -0.5, 0.5});
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { with_layer(dev, b, first, make, [&](auto& L) { fwd(dev, b, L); }, false); },
        [=](auto dev, auto& b) { with_layer(dev, b, first, make, [&](auto& L) { bwd(dev, b, L); }, true); }));
  };
}
}  // namespace layer_detail

}  // namespace optable

// A make(store) lambda: the expression given builds the layer with T and D of the store.
#define OPT_LAYER(...)                                                           \
  [=](auto& st) {                                                                \
    using St = std::decay_t<decltype(st)>;                                       \
    using T = typename ::optable::layer_detail::store_of<St>::value;             \
    using D = typename ::optable::layer_detail::store_of<St>::device;            \
    (void)sizeof(T);                                                             \
    (void)sizeof(D);                                                             \
    (void)st;                                                                    \
    return __VA_ARGS__;                                                          \
  }
// Inside a row's lambda: the store's T and D, and the view types on D.
#define OPT_DEV_T                                         \
  using T = typename std::decay_t<decltype(b)>::value_type; \
  using D = std::decay_t<decltype(dev)>;                  \
  using V = mtrec::DeviceView<T, D>;                      \
  using CV = mtrec::DeviceView<const T, D>;               \
  (void)sizeof(V);                                        \
  (void)sizeof(CV)
