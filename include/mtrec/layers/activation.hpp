// mtrec: elementwise activations (ReLU, GELU erf/tanh, sigmoid, identity).
#pragma once

#include <cstring>

#include "mtrec/layers/common.hpp"

namespace mtrec {

// y = act(x); backward needs x (ReLU, GELU) or y (sigmoid). Runs in place
// (y == x) only for Identity and Sigmoid.
template <class Device, class P, class CP>
inline void activation_forward(const Device& dev, Activation act, P y, CP x, index_t n) {
  switch (act) {
    case Activation::Identity:
      if (y != x) kernels::copy(dev, y, x, n);
      break;
    case Activation::ReLU: kernels::relu_forward(dev, y, x, n); break;
    case Activation::GELU: kernels::gelu_forward(dev, y, x, n, kernels::GeluMode::Erf); break;
    case Activation::GELUTanh: kernels::gelu_forward(dev, y, x, n, kernels::GeluMode::Tanh); break;
    case Activation::Sigmoid: kernels::sigmoid_forward(dev, y, x, n); break;
  }
}

// dx = dy * act'(x); dx may alias dy.
template <class Device, class P, class A, class B, class C>
inline void activation_backward(const Device& dev, Activation act, P dx, A dy, B x, C y, index_t n) {
  switch (act) {
    case Activation::Identity:
      if (dx != dy) kernels::copy(dev, dx, dy, n);
      break;
    case Activation::ReLU: kernels::relu_backward(dev, dx, dy, x, n); break;
    case Activation::GELU: kernels::gelu_backward(dev, dx, dy, x, n, kernels::GeluMode::Erf); break;
    case Activation::GELUTanh: kernels::gelu_backward(dev, dx, dy, x, n, kernels::GeluMode::Tanh); break;
    case Activation::Sigmoid: kernels::sigmoid_backward(dev, dx, dy, y, n); break;
  }
}

template <class T, class Device = Cpu>
class ActivationLayer {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    CView x, y;
  };

  explicit ActivationLayer(Activation act = Activation::ReLU) : act_(act) {}

  // y = act(x), same shape
  void forward(Context& ctx, CView x, View y) const {
    check(x.shape == y.shape, "Activation::forward", "y expected shape ", x.shape, " but got ", y.shape);
    ctx.x = x;
    ctx.y = y;
    activation_forward(dev(), act_, y.data, x.data, x.numel());
  }
  // dx = dy * act'(x)
  void backward(const Context& ctx, CView dy, View dx) const {
    check(dy.shape == ctx.x.shape, "Activation::backward", "dy expected shape ", ctx.x.shape, " but got ", dy.shape);
    check(dx.shape == ctx.x.shape, "Activation::backward", "dx expected shape ", ctx.x.shape, " but got ", dx.shape);
    activation_backward(dev(), act_, dx.data, dy.data, ctx.x.data, ctx.y.data, dy.numel());
  }
  Activation kind() const { return act_; }

  const Device& dev() const { return dev_; }

 private:
  Device dev_{};
  Activation act_;
};

}  // namespace mtrec
