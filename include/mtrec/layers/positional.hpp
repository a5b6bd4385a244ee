// mtrec: learned positional embedding, y[b,t] = x[b,t] + P[t].
#pragma once

#include <string>

#include "mtrec/kernels/sequence.hpp"
#include "mtrec/layers/common.hpp"

namespace mtrec {

template <class T, class Device = Cpu>
class PositionalEmbedding {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    index_t B = 0, T_len = 0;
  };

  PositionalEmbedding() = default;
  PositionalEmbedding(ParameterStore<T, Device>& store, const std::string& name, index_t max_len, index_t dim,
                      Init init = Init::normal(0.0, 0.02))
      : store_(&store), max_len_(max_len), dim_(dim) {
    check(max_len > 0 && dim > 0, "PositionalEmbedding", "'", name, "' expected positive max_len and dim but got ",
          max_len, " and ", dim);
    table_ = store.add(name + ".weight", {max_len, dim}, init);
  }

  // y (B,T,D) = x (B,T,D) + P[:T]; y may alias x
  void forward(Context& ctx, CView x, View y) const {
    const char* op = "PositionalEmbedding::forward";
    check_shape(op, "x", x, {-1, -1, dim_});
    check(x.dim(1) <= max_len_, op, "sequence length ", x.dim(1), " exceeds max_len ", max_len_);
    check_shape(op, "y", y, {x.dim(0), x.dim(1), dim_});
    ctx.B = x.dim(0);
    ctx.T_len = x.dim(1);
    kernels::positional_add(dev(), y.data, x.data, store_->value(table_), ctx.B, ctx.T_len, dim_);
  }
  // dx = dy (skipped if dx is empty or aliases dy); dP[t] += sum_b dy[b,t]
  void backward(const Context& ctx, CView dy, View dx) const {
    const char* op = "PositionalEmbedding::backward";
    check_shape(op, "dy", dy, {ctx.B, ctx.T_len, dim_});
    if (!dx.empty()) check_shape(op, "dx", dx, {ctx.B, ctx.T_len, dim_});
    // dP: (T*D) columns summed over B rows, in order.
    kernels::positional_add_backward(dev(), dx.empty() ? nullptr : dx.data, store_->grad(table_), dy.data,
                                     ctx.B, ctx.T_len, dim_);
  }

  index_t max_len() const { return max_len_; }
  index_t dim() const { return dim_; }
  ParamId weight() const { return table_; }

  const Device& dev() const { return store_->device(); }

 private:
  ParameterStore<T, Device>* store_ = nullptr;
  index_t max_len_ = 0, dim_ = 0;
  ParamId table_ = -1;
};

}  // namespace mtrec
