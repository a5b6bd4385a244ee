// mtrec: Linear — y = x W^T + b, with W stored (out, in) as in PyTorch.
#pragma once

#include <string>

#include "mtrec/layers/common.hpp"

namespace mtrec {

template <class T, class Device = Cpu>
class Linear {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    CView x;  // (N, in): the forward input
  };

  Linear() = default;
  Linear(ParameterStore<T, Device>& store, const std::string& name, index_t in, index_t out, bool bias = true)
      : store_(&store), in_(in), out_(out) {
    check(in > 0 && out > 0, "Linear", "'", name, "' expected positive sizes but got in=", in, " out=", out);
    weight_ = store.add(name + ".weight", {out, in}, linear_init(in));
    if (bias) bias_ = store.add(name + ".bias", {out}, linear_init(in));
  }

  // y (N,out) = x (N,in) W^T + b; x and y may have any leading shape.
  void forward(Context& ctx, CView x, View y) const {
    check_matrix("Linear::forward", "x", x, -1, in_);
    check_matrix("Linear::forward", "y", y, x.rows(), out_);
    ctx.x = x;
    forward_impl(x.data, y.data, x.rows());
  }

  // dx (N,in) = dy W  (skipped if dx is empty);  dW += dy^T x;  db += sum_n dy
  void backward(const Context& ctx, CView dy, View dx) const {
    check_matrix("Linear::backward", "dy", dy, ctx.x.rows(), out_);
    if (!dx.empty()) check_matrix("Linear::backward", "dx", dx, ctx.x.rows(), in_);
    backward_impl(ctx.x.data, dy.data, dx.empty() ? nullptr : dx.data, ctx.x.rows());
  }

  // Unchecked forms for composite layers that already validated shapes.
  void forward_impl(CPtr x, Ptr y, index_t n) const {
    CPtr w = store_->value(weight_);
    kernels::gemm(dev(), kernels::Trans::N, kernels::Trans::T, n, out_, in_, T(1), x, in_, w, in_, T(0),
                  y, out_);
    if (bias_ >= 0) kernels::bias_add(dev(), y, store_->value(bias_), n, out_);
  }
  void backward_impl(CPtr x, CPtr dy, Ptr dx, index_t n) const {
    CPtr w = store_->value(weight_);
    if (dx) kernels::gemm(dev(), kernels::Trans::N, kernels::Trans::N, n, in_, out_, T(1), dy, out_, w, in_, T(0), dx, in_);
    kernels::gemm(dev(), kernels::Trans::T, kernels::Trans::N, out_, in_, n, T(1), dy, out_, x, in_, T(1),
                  store_->grad(weight_), in_);
    if (bias_ >= 0) kernels::column_sum_add(dev(), store_->grad(bias_), dy, n, out_);
  }

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  ParamId weight() const { return weight_; }
  ParamId bias() const { return bias_; }  // -1 without bias

  const Device& dev() const { return store_->device(); }

 private:
  ParameterStore<T, Device>* store_ = nullptr;
  index_t in_ = 0, out_ = 0;
  ParamId weight_ = -1, bias_ = -1;
};

}  // namespace mtrec
