// mtrec: elementwise activations (ReLU, GELU erf/tanh, sigmoid, identity).
#pragma once

#include <cstring>

#include "mtrec/layers/common.hpp"

namespace mtrec {

// y = act(x); backward needs x (ReLU, GELU) or y (sigmoid). Runs in place
// (y == x) only for Identity and Sigmoid.
template <class T>
inline void activation_forward(Activation act, T* y, const T* x, index_t n) {
  switch (act) {
    case Activation::Identity:
      if (y != x) kernels::copy(kernels::backend{}, y, x, n);
      break;
    case Activation::ReLU: kernels::relu_forward(kernels::backend{}, y, x, n); break;
    case Activation::GELU: kernels::gelu_forward(kernels::backend{}, y, x, n, kernels::GeluMode::Erf); break;
    case Activation::GELUTanh: kernels::gelu_forward(kernels::backend{}, y, x, n, kernels::GeluMode::Tanh); break;
    case Activation::Sigmoid: kernels::sigmoid_forward(kernels::backend{}, y, x, n); break;
  }
}

// dx = dy * act'(x); dx may alias dy.
template <class T>
inline void activation_backward(Activation act, T* dx, const T* dy, const T* x, const T* y, index_t n) {
  switch (act) {
    case Activation::Identity:
      if (dx != dy) kernels::copy(kernels::backend{}, dx, dy, n);
      break;
    case Activation::ReLU: kernels::relu_backward(kernels::backend{}, dx, dy, x, n); break;
    case Activation::GELU: kernels::gelu_backward(kernels::backend{}, dx, dy, x, n, kernels::GeluMode::Erf); break;
    case Activation::GELUTanh: kernels::gelu_backward(kernels::backend{}, dx, dy, x, n, kernels::GeluMode::Tanh); break;
    case Activation::Sigmoid: kernels::sigmoid_backward(kernels::backend{}, dx, dy, y, n); break;
  }
}

template <class T>
class ActivationLayer {
 public:
  struct Context {
    ConstView<T> x, y;
  };

  explicit ActivationLayer(Activation act = Activation::ReLU) : act_(act) {}

  // y = act(x), same shape
  void forward(Context& ctx, ConstView<T> x, TensorView<T> y) const {
    check(x.shape == y.shape, "Activation::forward", "y expected shape ", x.shape, " but got ", y.shape);
    ctx.x = x;
    ctx.y = y;
    activation_forward(act_, y.data, x.data, x.numel());
  }
  // dx = dy * act'(x)
  void backward(const Context& ctx, ConstView<T> dy, TensorView<T> dx) const {
    check(dy.shape == ctx.x.shape, "Activation::backward", "dy expected shape ", ctx.x.shape, " but got ", dy.shape);
    check(dx.shape == ctx.x.shape, "Activation::backward", "dx expected shape ", ctx.x.shape, " but got ", dx.shape);
    activation_backward(act_, dx.data, dy.data, ctx.x.data, ctx.y.data, dy.numel());
  }
  Activation kind() const { return act_; }

 private:
  Activation act_;
};

}  // namespace mtrec
