// mtrec: MixtureGate — the softmax gate of MMoE and CGC/PLE.
//
//   p   (B,M)  = softmax(x W^T + b)            W (M, in): one logit per expert
//   out (B,De) = sum_m p[:, m] * E_m (B,De)    E_m: the m-th mixed expert's output
//
// The experts are not part of the gate: forward reads their outputs through
// an array of M device pointers, and backward adds the gate's share of
// d out into their gradients, so one expert may feed several gates (the
// shared experts of CGC feed every task's gate).
#pragma once

#include <string>
#include <vector>

#include "mtrec/kernels/mixture.hpp"
#include "mtrec/layers/linear.hpp"

namespace mtrec {

template <class T, class Device = Cpu>
class MixtureGate {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    typename Linear<T, Device>::Context proj;
    Tensor<T, Device> probs;     // (B,M) softmax output
    Tensor<T, Device> d_probs;   // (B,M)
    Tensor<T, Device> dx;        // (B,in) the gate's part of dx, before it is added
    std::vector<CPtr> experts;  // (M) forward's expert outputs (device pointers)
    index_t B = 0;
  };

  MixtureGate() = default;
  MixtureGate(ParameterStore<T, Device>& store, const std::string& name, index_t in, index_t num_experts,
              index_t expert_dim)
      : proj_(store, name, in, num_experts), dev_(store.device()), m_(num_experts), de_(expert_dim) {
    check(expert_dim > 0, "MixtureGate", "'", name, "' expected expert_dim > 0 but got ", expert_dim);
  }

  // out (B,De) = sum_m softmax(x W^T + b)_m * experts[m]; experts: M device
  // pointers to (B,De) outputs, unchanged until backward.
  void forward(Context& ctx, CView x, const CPtr* experts, View out) const {
    const char* op = "MixtureGate::forward";
    check_matrix(op, "x", x, -1, proj_.in_features());
    const index_t B = x.rows();
    check_matrix(op, "out", out, B, de_);
    check(experts != nullptr || m_ == 0, op, "expected ", m_, " expert outputs but got a null array");
    for (index_t m = 0; m < m_; ++m)
      check(experts[m] != nullptr || B == 0, op, "expert output ", m, " is null");
    ctx.B = B;
    ctx.probs.resize({B, m_});
    proj_.forward(ctx.proj, x, ctx.probs.view());
    kernels::softmax_forward(dev_, ctx.probs.data(), ctx.probs.data(), B, m_);
    ctx.experts.assign(experts, experts + m_);
    kernels::gate_mix_forward(dev_, out.data, ctx.experts.data(), ctx.probs.data(), B, m_, de_);
  }

  // The same for a split input (inference only): the gate's projection
  // computes the shared row's part once (Linear::forward_split).
  void forward(Context& ctx, const SplitInput<T, Device>& x, const CPtr* experts, View out) const {
    const char* op = "MixtureGate::forward";
    check(x.F == proj_.in_features(), op, "expected a split input of ", proj_.in_features(), " columns but got ", x.F);
    const index_t B = x.N;
    check_matrix(op, "out", out, B, de_);
    check(experts != nullptr || m_ == 0, op, "expected ", m_, " expert outputs but got a null array");
    ctx.B = B;
    ctx.probs.resize({B, m_});
    proj_.forward_split(x, ctx.probs.data());
    kernels::softmax_forward(dev_, ctx.probs.data(), ctx.probs.data(), B, m_);
    ctx.experts.assign(experts, experts + m_);
    kernels::gate_mix_forward(dev_, out.data, ctx.experts.data(), ctx.probs.data(), B, m_, de_);
  }

  // d_experts[m] (B,De) += p_m * d_out;  dx (B,in) += W^T-path of softmax'(<d_out, E_m>);
  // W, b gradients accumulated. dx may be empty (not needed).
  void backward(Context& ctx, CView d_out, const Ptr* d_experts, View dx) const {
    const char* op = "MixtureGate::backward";
    const index_t B = ctx.B;
    check_matrix(op, "d_out", d_out, B, de_);
    check(d_experts != nullptr || m_ == 0, op, "expected ", m_, " expert gradients but got a null array");
    if (!dx.empty()) check_matrix(op, "dx", dx, B, proj_.in_features());
    ctx.d_probs.resize({B, m_});
    kernels::gate_mix_backward(dev_, d_experts, ctx.d_probs.data(), d_out.data, ctx.experts.data(),
                               ctx.probs.data(), B, m_, de_);
    kernels::softmax_backward(dev_, ctx.d_probs.data(), ctx.d_probs.data(), ctx.probs.data(), B, m_);
    ctx.dx.resize({B, proj_.in_features()});
    proj_.backward(ctx.proj, ctx.d_probs.view(), dx.empty() ? View{} : ctx.dx.view());
    if (!dx.empty()) kernels::residual_add(dev_, dx.data, dx.data, ctx.dx.data(), ctx.dx.numel());
  }

  index_t in_features() const { return proj_.in_features(); }
  index_t num_experts() const { return m_; }
  index_t expert_dim() const { return de_; }
  const Linear<T, Device>& projection() const { return proj_; }
  const Device& dev() const { return dev_; }

 private:
  Linear<T, Device> proj_;
  Device dev_{};
  index_t m_ = 0, de_ = 0;
};

}  // namespace mtrec
