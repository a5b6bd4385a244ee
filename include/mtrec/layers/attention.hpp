// mtrec: multi-head self-attention with a key-padding mask given by lengths.
//
// Sequence b has lengths[b] valid positions at the front; the rest is
// padding. Queries attend only to valid keys. Output rows at padded positions
// are exactly zero, so a sequence that is all padding gives zeros, never NaN.
// Parameters follow torch.nn.MultiheadAttention: in_proj (3D, D) packs
// W_q, W_k, W_v; out_proj (D, D).
//
// Two layouts of the same computation (the *_rows functions):
//   padded  x (B,T,D): sequence b starts at row b*T; its padded rows are
//           carried along (projected, then zeroed) — the public API;
//   packed  x (n,D) with n = sum(lengths): only the valid rows, sequence b
//           starts at row starts[b]. TransformerEncoder uses it so that no
//           projection or FFN work is spent on padding.
#pragma once

#include <cmath>
#include <string>

#include "mtrec/kernels/sequence.hpp"
#include "mtrec/layers/linear.hpp"

namespace mtrec {

namespace detail {
// dy (B,T,C) with its padded rows' gradient dropped: dy itself when those
// rows already hold zeros (a layer below wrote them so), else a copy in `ws`
// with the valid rows copied and the padded rows zeroed. `ws` is sized either
// way, so that which path a step takes never decides whether it allocates.
// On a device the host cannot read, the check would wait for the device to
// answer (a stream synchronise on the GPU); the copy is always made there.
template <class T, class Device, class CPtr = pointer_t<const T, typename Device::memory>>
inline CPtr drop_padded_gradient(const Device& dev, CPtr dy, Tensor<T, Device>& ws,
                                 TensorView<const index_t, typename Device::memory> lengths,
                                 index_t B, index_t Tl, index_t C) {
  ws.resize({B, Tl, C});
  if (host_readable_v<Device> && kernels::padded_rows_are_zero(dev, dy, lengths.data, B, Tl, C)) return dy;
  kernels::mask_padded_rows(dev, ws.data(), dy, lengths.data, B, Tl, C);
  return ws.data();
}
}  // namespace detail

template <class T, class Device = Cpu>
class MultiHeadAttention {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;  // lengths, starts: where kernels read them
  struct Context {
    CView x;
    IdView lengths, starts;  // (B) valid lengths; first row of each sequence
    Tensor<index_t, Device> lengths_buf;  // device copy of forward's lengths, on a device without host access
    index_t B = 0, T_len = 0;             // T_len: the padded length (padded), the longest sequence (packed)
    index_t rows = 0;                     // rows of x: B*T (padded) or sum(lengths) (packed)
    bool padded = true;
    Tensor<index_t, Device> padded_starts;        // b*T, for the padded layout
    Tensor<T, Device> qkv;    // (B,T,3D) projected queries, keys, values
    Tensor<T, Device> probs;  // (B,H,T*T): head (b,h) keeps its (L,L) softmax compactly at the front
    Tensor<T, Device> heads;  // (B,T,D) per-head outputs, concatenated; the out_proj input
    // backward workspaces
    Tensor<T, Device> d_y;  // dy with padded rows zeroed, used only when dy's are not zero already
    Tensor<T, Device> d_heads, d_qkv, d_scores;
  };

  MultiHeadAttention() = default;
  MultiHeadAttention(ParameterStore<T, Device>& store, const std::string& name, index_t d_model, index_t heads)
      : d_(d_model), h_(heads) {
    check(d_model > 0 && heads > 0 && d_model % heads == 0, "MultiHeadAttention", "'", name,
          "' expected d_model divisible by heads but got d_model=", d_model, " heads=", heads);
    dh_ = d_model / heads;
    in_proj_ = Linear<T, Device>(store, name + ".in_proj", d_model, 3 * d_model);
    out_proj_ = Linear<T, Device>(store, name + ".out_proj", d_model, d_model);
  }

  // y (B,T,D) = MHA(x (B,T,D)) with keys masked past lengths (B)
  void forward(Context& ctx, CView x, ConstView<index_t> host_lengths, View y,
               const StagedInputs<Device>* staged = nullptr) const {
    const char* op = "MultiHeadAttention::forward";
    check_shape(op, "x", x, {-1, -1, d_});
    const index_t B = x.dim(0), Tl = x.dim(1);
    check_lengths(op, host_lengths, B, Tl);
    const IdView lengths = device_input(ctx.lengths_buf, host_lengths, staged);
    check_shape(op, "y", y, {B, Tl, d_});
    forward_impl(ctx, x, lengths, y.data);
  }

  // dx (B,T,D) written; in_proj and out_proj gradients accumulated
  void backward(Context& ctx, CView dy, View dx) const {
    const char* op = "MultiHeadAttention::backward";
    check_shape(op, "dy", dy, {ctx.B, ctx.T_len, d_});
    check_shape(op, "dx", dx, {ctx.B, ctx.T_len, d_});
    backward_impl(ctx, dy.data, dx.data);
  }

  // Padded layout: x (B,T,D).
  void forward_impl(Context& ctx, CView x, IdView lengths, Ptr y) const {
    const index_t B = x.dim(0), Tl = x.dim(1);
    ctx.padded_starts.resize({B});
    kernels::padded_starts(dev(), ctx.padded_starts.data(), B, Tl);
    forward_rows(ctx, CView(x.data, {B * Tl, d_}), lengths, ctx.padded_starts.view(), Tl, true, y);
  }

  // x (n,D) in either layout (see the top of the file); y (n,D) written.
  // T_max bounds every length (the padded T in the padded layout).
  void forward_rows(Context& ctx, CView x, IdView lengths, IdView starts, index_t T_max,
                    bool padded, Ptr y) const {
    const index_t B = lengths.numel(), Tl = T_max, n = x.rows(), D = d_;
    ctx.x = x;
    ctx.lengths = lengths;
    ctx.starts = starts;
    ctx.B = B;
    ctx.T_len = Tl;
    ctx.rows = n;
    ctx.padded = padded;
    ctx.qkv.resize({n, 3 * D});
    ctx.probs.resize({B, h_, Tl * Tl});
    ctx.heads.resize({n, D});
    const Device& dev = this->dev();
    in_proj_.forward_impl(x.data, ctx.qkv.data(), n);
    // heads (n,D): per (sequence, head) softmax(Q K^T / sqrt(dh)) V; padded rows zero
    kernels::attention_forward(dev, ctx.heads.data(), ctx.probs.data(), ctx.qkv.data(), lengths.data, starts.data, B,
                               h_, Tl, dh_, T(1) / std::sqrt(T(dh_)), padded);
    out_proj_.forward_impl(ctx.heads.data(), y, n);
    if (padded) kernels::mask_padded_rows(dev, y, y, lengths.data, B, Tl, D);
  }

  // dx (n,D) written, in the layout forward used.
  void backward_impl(Context& ctx, CPtr dy, Ptr dx) const {
    const index_t B = ctx.B, Tl = ctx.T_len, n = ctx.rows, D = d_;
    const bool padded = ctx.padded;
    ctx.d_heads.resize({n, D});
    ctx.d_qkv.resize({n, 3 * D});
    ctx.d_scores.resize({B, h_, Tl * Tl});
    // Padded output rows are constant zero: their incoming gradient is dropped
    // (no copy when it is zero already, as inside a transformer layer).
    CPtr d_y = padded ? detail::drop_padded_gradient(this->dev(), dy, ctx.d_y, ctx.lengths, B, Tl, D) : dy;
    out_proj_.backward_impl(ctx.heads.data(), d_y, ctx.d_heads.data(), n);
    kernels::attention_backward(dev(), ctx.d_qkv.data(), ctx.d_scores.data(), ctx.d_heads.data(),
                                ctx.qkv.data(), ctx.probs.data(), ctx.lengths.data, ctx.starts.data, B, h_, Tl, dh_,
                                T(1) / std::sqrt(T(dh_)), padded);
    in_proj_.backward_impl(ctx.x.data, ctx.d_qkv.data(), dx, n);
  }

  index_t d_model() const { return d_; }
  index_t heads() const { return h_; }
  const Linear<T, Device>& in_proj() const { return in_proj_; }
  const Linear<T, Device>& out_proj() const { return out_proj_; }

  const Device& dev() const { return dev_; }

 private:
  Device dev_{};
  index_t d_ = 0, h_ = 0, dh_ = 0;
  Linear<T, Device> in_proj_, out_proj_;
};

}  // namespace mtrec
