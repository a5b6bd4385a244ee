// mtrec: MLP — a stack of Linear -> activation -> dropout.
#pragma once

#include <string>
#include <vector>

#include "mtrec/layers/activation.hpp"
#include "mtrec/layers/dropout.hpp"
#include "mtrec/layers/linear.hpp"

namespace mtrec {

struct MLPConfig {
  std::vector<index_t> hidden;            // output width of each Linear
  Activation activation = Activation::ReLU;
  double dropout = 0.0;                   // after each activation
  bool activate_output = true;            // false: the last Linear's output is returned raw (a logit)
};

template <class T, class Device = Cpu>
class MLP {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    CView x;
    View y;
    std::vector<typename Linear<T, Device>::Context> linear;
    std::vector<typename Dropout<T, Device>::Context> dropout;
    std::vector<Tensor<T, Device>> z, a, o;  // per layer: Linear output, activation output, dropout output
    std::vector<Ptr> zp, ap, op;      // where each stage wrote (a buffer above, or y)
    Tensor<T, Device> grad0, grad1;          // backward ping-pong
  };

  MLP() = default;
  MLP(ParameterStore<T, Device>& store, const std::string& name, index_t in, MLPConfig config) : config_(std::move(config)), in_(in) {
    check(!config_.hidden.empty(), "MLP", "'", name, "' expected at least one layer");
    index_t width = in;
    for (std::size_t i = 0; i < config_.hidden.size(); ++i) {
      linear_.emplace_back(store, name + "." + std::to_string(i), width, config_.hidden[i]);
      dropout_.emplace_back(name + ".dropout" + std::to_string(i), has_dropout(i) ? config_.dropout : 0.0);
      width = config_.hidden[i];
    }
  }

  // y (N,out) = MLP(x (N,in))
  void forward(Context& ctx, CView x, View y, const Mode& mode) const {
    check_matrix("MLP::forward", "x", x, -1, in_);
    check_matrix("MLP::forward", "y", y, x.rows(), out_features());
    forward_impl(ctx, x, nullptr, y, mode);
  }
  // y (N,out) = MLP(X) for a split input (one shared row + N row parts):
  // the first layer computes the shared part once (Linear::forward_split).
  // Inference only: there is no backward for it.
  void forward(Context& ctx, const SplitInput<T, Device>& x, View y, const Mode& mode) const {
    check(x.F == in_, "MLP::forward", "expected a split input of ", in_, " columns but got ", x.F);
    check_matrix("MLP::forward", "y", y, x.N, out_features());
    forward_impl(ctx, CView(), &x, y, mode);
  }

 private:
  void forward_impl(Context& ctx, CView x, const SplitInput<T, Device>* split, View y, const Mode& mode) const {
    const index_t n = split ? split->N : x.rows();
    const std::size_t L = linear_.size();
    ctx.x = x;
    ctx.y = y;
    ctx.linear.resize(L);
    ctx.dropout.resize(L);
    ctx.z.resize(L);
    ctx.a.resize(L);
    ctx.o.resize(L);
    ctx.zp.resize(L);
    ctx.ap.resize(L);
    ctx.op.resize(L);
    CPtr in = x.data;
    for (std::size_t i = 0; i < L; ++i) {
      const index_t w = config_.hidden[i];
      const bool last = i + 1 == L;
      const bool act = has_activation(i), drop = has_dropout(i);
      // The last stage present in this layer writes straight into y.
      Ptr zp = (last && !act && !drop) ? y.data : buffer(ctx.z[i], n, w);
      Ptr ap = !act ? zp : (last && !drop) ? y.data : buffer(ctx.a[i], n, w);
      Ptr op = !drop ? ap : last ? y.data : buffer(ctx.o[i], n, w);
      if (i == 0 && split) {
        linear_[i].forward_split(*split, zp);
        ctx.linear[i].x = CView();
      } else {
        linear_[i].forward_impl(in, zp, n);
        ctx.linear[i].x = CView(in, {n, linear_[i].in_features()});
      }
      if (act) activation_forward(this->dev(), config_.activation, ap, zp, n * w);
      if (drop) dropout_[i].forward_impl(ctx.dropout[i], ap, op, n * w, mode);
      ctx.zp[i] = zp;
      ctx.ap[i] = ap;
      ctx.op[i] = op;
      in = op;
    }
  }


 public:
  // dx (N,in) written (skipped if empty); parameter gradients accumulated
  void backward(Context& ctx, CView dy, View dx) const {
    const index_t n = ctx.x.rows();
    check_matrix("MLP::backward", "dy", dy, n, out_features());
    if (!dx.empty()) check_matrix("MLP::backward", "dx", dx, n, in_);
    index_t widest = in_;
    for (index_t h : config_.hidden) widest = std::max(widest, h);
    ctx.grad0.resize({n * widest});
    ctx.grad1.resize({n * widest});
    Ptr bufs[2] = {ctx.grad0.data(), ctx.grad1.data()};
    CPtr g = dy.data;  // never written: the first in-place stage copies out to bufs[0]
    for (std::size_t k = linear_.size(); k-- > 0;) {
      const index_t w = config_.hidden[k];
      if (has_dropout(k)) {
        Ptr out = g == dy.data ? bufs[0] : mutable_ptr(g);
        dropout_[k].backward_impl(ctx.dropout[k], g, out);
        g = out;
      }
      if (has_activation(k)) {
        Ptr out = g == dy.data ? bufs[0] : mutable_ptr(g);
        activation_backward(this->dev(), config_.activation, out, g, ctx.zp[k], ctx.ap[k], n * w);
        g = out;
      }
      Ptr gin = nullptr;
      if (k > 0) {
        gin = g == bufs[0] ? bufs[1] : bufs[0];
      } else if (!dx.empty()) {
        gin = dx.data;
      }
      linear_[k].backward_impl(ctx.linear[k].x.data, g, gin, n);
      g = gin;
    }
  }

  index_t in_features() const { return in_; }
  index_t out_features() const { return config_.hidden.back(); }
  const MLPConfig& config() const { return config_; }
  const std::vector<Linear<T, Device>>& layers() const { return linear_; }

  const Device& dev() const { return dev_; }

 private:
  Device dev_{};
  bool has_activation(std::size_t i) const {
    const bool last = i + 1 == config_.hidden.size();
    return config_.activation != Activation::Identity && (!last || config_.activate_output);
  }
  bool has_dropout(std::size_t i) const {
    const bool last = i + 1 == config_.hidden.size();
    return config_.dropout > 0.0 && (!last || config_.activate_output);
  }
  static Ptr buffer(Tensor<T, Device>& t, index_t n, index_t w) {
    t.resize({n, w});
    return t.data();
  }

  MLPConfig config_;
  index_t in_ = 0;
  std::vector<Linear<T, Device>> linear_;
  std::vector<Dropout<T, Device>> dropout_;
};

}  // namespace mtrec
