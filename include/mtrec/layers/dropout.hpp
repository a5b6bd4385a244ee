// mtrec: Dropout with counter-based masks.
//
// Element i of a call is kept iff hash(key, i) clears the threshold, where
// key = f(mode.seed, layer name, mode.step). The mask is regenerated in
// backward rather than stored, and is the same for any thread count.
#pragma once

#include <cstring>
#include <string>

#include "mtrec/layers/common.hpp"

namespace mtrec {

template <class T, class Device = Cpu>
class Dropout {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    bool active = false;
    std::uint64_t key = 0;
    index_t n = 0;
  };

  Dropout() = default;
  Dropout(const std::string& name, double p) : p_(p), stream_(hash_name(name)) {
    check(p >= 0.0 && p < 1.0, "Dropout", "'", name, "' expected p in [0, 1) but got ", p);
  }

  // y = x * mask / (1 - p) in training; y = x in evaluation. y may alias x.
  void forward(Context& ctx, CView x, View y, const Mode& mode) const {
    check(x.shape == y.shape, "Dropout::forward", "y expected shape ", x.shape, " but got ", y.shape);
    forward_impl(ctx, x.data, y.data, x.numel(), mode);
  }
  // dx = dy * mask / (1 - p); dx may alias dy.
  void backward(const Context& ctx, CView dy, View dx) const {
    check(dy.numel() == ctx.n && dx.numel() == ctx.n, "Dropout::backward", "expected ", ctx.n,
          " elements in dy and dx but got ", dy.numel(), " and ", dx.numel());
    backward_impl(ctx, dy.data, dx.data);
  }

  void forward_impl(Context& ctx, CPtr x, Ptr y, index_t n, const Mode& mode) const {
    ctx.active = mode.training && p_ > 0.0;
    ctx.n = n;
    ctx.key = mix64(mode.seed ^ mix64(stream_ ^ mix64(mode.step)));
    if (ctx.active)
      kernels::dropout_forward(dev(), y, x, n, p_, ctx.key);
    else if (y != x)
      kernels::copy(dev(), y, x, n);
  }
  void backward_impl(const Context& ctx, CPtr dy, Ptr dx) const {
    if (ctx.active)
      kernels::dropout_backward(dev(), dx, dy, ctx.n, p_, ctx.key);
    else if (dx != dy)
      kernels::copy(dev(), dx, dy, ctx.n);
  }

  double p() const { return p_; }

  const Device& dev() const { return dev_; }

 private:
  Device dev_{};
  double p_ = 0.0;
  std::uint64_t stream_ = 0;
};

}  // namespace mtrec
