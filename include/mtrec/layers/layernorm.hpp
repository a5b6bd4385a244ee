// mtrec: LayerNorm over the last dimension, as torch.nn.LayerNorm(dim).
#pragma once

#include <string>

#include "mtrec/layers/common.hpp"

namespace mtrec {

template <class T, class Device = Cpu>
class LayerNorm {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    CView x;
    Tensor<T, Device> mean, rstd;  // (N)
  };

  LayerNorm() = default;
  LayerNorm(ParameterStore<T, Device>& store, const std::string& name, index_t dim, double eps = 1e-5)
      : store_(&store), dim_(dim), eps_(eps) {
    check(dim > 0, "LayerNorm", "'", name, "' expected a positive dim but got ", dim);
    gamma_ = store.add(name + ".weight", {dim}, Init::ones());
    beta_ = store.add(name + ".bias", {dim}, Init::zeros());
  }

  // y (N,dim) = (x - mean) / sqrt(var + eps) * gamma + beta, per row
  void forward(Context& ctx, CView x, View y) const {
    check_matrix("LayerNorm::forward", "x", x, -1, dim_);
    check_matrix("LayerNorm::forward", "y", y, x.rows(), dim_);
    forward_impl(ctx, x, y.data);
  }
  // dx (N,dim) written; dgamma, dbeta accumulated
  void backward(const Context& ctx, CView dy, View dx) const {
    check_matrix("LayerNorm::backward", "dy", dy, ctx.x.rows(), dim_);
    check_matrix("LayerNorm::backward", "dx", dx, ctx.x.rows(), dim_);
    backward_impl(ctx, dy.data, dx.data);
  }

  void forward_impl(Context& ctx, CView x, Ptr y) const {
    const index_t n = x.rows();
    ctx.x = x;
    ctx.mean.resize({n});
    ctx.rstd.resize({n});
    kernels::layernorm_forward(dev(), y, ctx.mean.data(), ctx.rstd.data(), x.data, store_->value(gamma_),
                               store_->value(beta_), n, dim_, T(eps_));
  }
  void backward_impl(const Context& ctx, CPtr dy, Ptr dx) const {
    kernels::layernorm_backward(dev(), dx, store_->grad(gamma_), store_->grad(beta_), dy, ctx.x.data,
                                ctx.mean.data(), ctx.rstd.data(), store_->value(gamma_), ctx.x.rows(), dim_);
  }

  index_t dim() const { return dim_; }
  ParamId weight() const { return gamma_; }
  ParamId bias() const { return beta_; }

  const Device& dev() const { return store_->device(); }

 private:
  ParameterStore<T, Device>* store_ = nullptr;
  index_t dim_ = 0;
  double eps_ = 1e-5;
  ParamId gamma_ = -1, beta_ = -1;
};

}  // namespace mtrec
