// mtrec: pre-LN transformer encoder layer and stack.
//
//   r = x + Dropout(MHA(LN1(x)))
//   y = r + Dropout(W2 Dropout(GELU(W1 LN2(r) + b1)) + b2)
//
// as torch.nn.TransformerEncoderLayer(norm_first=True, batch_first=True)
// with a key-padding mask. Rows at padded positions of y are exactly zero.
//
// The layer runs on either layout of attention.hpp: padded (its public API)
// or packed (valid rows only). TransformerEncoder packs the valid rows once,
// runs every layer packed — LayerNorm, projections and FFN then cost
// O(sum(lengths)) instead of O(B*T) — and scatters the result back. Dropout
// masks are indexed by packed position there, so they differ from the
// standalone layer's masks on the same input (both are seeded and fixed).
#pragma once

#include <string>
#include <vector>

#include "mtrec/kernels/sequence.hpp"
#include "mtrec/layers/activation.hpp"
#include "mtrec/layers/attention.hpp"
#include "mtrec/layers/dropout.hpp"
#include "mtrec/layers/layernorm.hpp"
#include "mtrec/layers/linear.hpp"

namespace mtrec {

struct TransformerConfig {
  index_t d_model = 64;
  index_t heads = 4;
  index_t ffn = 256;
  double dropout = 0.1;
  Activation activation = Activation::GELU;  // GELU, GELUTanh or ReLU
  double layer_norm_eps = 1e-5;
};

template <class T, class Device = Cpu>
class TransformerEncoderLayer {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;  // lengths, starts: where kernels read them
  struct Context {
    CView x;
    IdView lengths;
    Tensor<index_t, Device> lengths_buf;  // device copy of forward's lengths, on a device without host access
    index_t B = 0, T_len = 0, rows = 0;
    bool padded = true;
    Tensor<index_t, Device> padded_starts;
    typename LayerNorm<T, Device>::Context ln1, ln2;
    typename MultiHeadAttention<T, Device>::Context mha;
    typename Dropout<T, Device>::Context drop_attn, drop_ffn, drop_out;
    Tensor<T, Device> h1, attn, r1, h2;  // (B,T,D)
    Tensor<T, Device> f1, g;             // (B,T,F): W1 output, activation (then dropout) output
    Tensor<T, Device> f2;                // (B,T,D)
    Tensor<T, Device> dD1, dD2, dD3, dF;  // backward workspaces
  };

  TransformerEncoderLayer() = default;
  TransformerEncoderLayer(ParameterStore<T, Device>& store, const std::string& name, const TransformerConfig& c) : c_(c) {
    check(c.activation == Activation::GELU || c.activation == Activation::GELUTanh ||
              c.activation == Activation::ReLU,
          "TransformerEncoderLayer", "'", name, "' expected a GELU or ReLU activation but got ",
          activation_name(c.activation));
    check(c.ffn > 0, "TransformerEncoderLayer", "'", name, "' expected ffn > 0 but got ", c.ffn);
    ln1_ = LayerNorm<T, Device>(store, name + ".norm1", c.d_model, c.layer_norm_eps);
    attn_ = MultiHeadAttention<T, Device>(store, name + ".self_attn", c.d_model, c.heads);
    ln2_ = LayerNorm<T, Device>(store, name + ".norm2", c.d_model, c.layer_norm_eps);
    lin1_ = Linear<T, Device>(store, name + ".linear1", c.d_model, c.ffn);
    lin2_ = Linear<T, Device>(store, name + ".linear2", c.ffn, c.d_model);
    drop_attn_ = Dropout<T, Device>(name + ".dropout1", c.dropout);
    drop_ffn_ = Dropout<T, Device>(name + ".dropout", c.dropout);
    drop_out_ = Dropout<T, Device>(name + ".dropout2", c.dropout);
  }

  // y (B,T,D) = layer(x (B,T,D)), keys masked past lengths (B)
  void forward(Context& ctx, CView x, ConstView<index_t> host_lengths, View y, const Mode& mode,
               const StagedInputs<Device>* staged = nullptr) const {
    const char* op = "TransformerEncoderLayer::forward";
    check_shape(op, "x", x, {-1, -1, c_.d_model});
    const index_t B = x.dim(0), Tl = x.dim(1);
    check_lengths(op, host_lengths, B, Tl);
    const IdView lengths = device_input(ctx.lengths_buf, host_lengths, staged);
    check_shape(op, "y", y, {B, Tl, c_.d_model});
    forward_impl(ctx, x, lengths, y.data, mode);
  }

  // dx (B,T,D) written; all parameter gradients accumulated
  void backward(Context& ctx, CView dy, View dx) const {
    const char* op = "TransformerEncoderLayer::backward";
    check_shape(op, "dy", dy, {ctx.B, ctx.T_len, c_.d_model});
    check_shape(op, "dx", dx, {ctx.B, ctx.T_len, c_.d_model});
    backward_impl(ctx, dy.data, dx.data);
  }

  // Padded layout: x (B,T,D).
  void forward_impl(Context& ctx, CView x, IdView lengths, Ptr y, const Mode& mode) const {
    const index_t B = x.dim(0), Tl = x.dim(1);
    ctx.padded_starts.resize({B});
    kernels::padded_starts(dev(), ctx.padded_starts.data(), B, Tl);
    forward_rows(ctx, CView(x.data, {B * Tl, c_.d_model}), lengths, ctx.padded_starts.view(), Tl, true, y,
                 mode);
  }

  // x (n,D) in either layout; y (n,D) written (padded rows zero when padded).
  void forward_rows(Context& ctx, CView x, IdView lengths, IdView starts,
                    index_t T_max, bool padded, Ptr y, const Mode& mode) const {
    const index_t B = lengths.numel(), Tl = T_max, n = x.rows(), D = c_.d_model, F = c_.ffn;
    ctx.x = x;
    ctx.lengths = lengths;
    ctx.B = B;
    ctx.T_len = Tl;
    ctx.rows = n;
    ctx.padded = padded;
    for (Tensor<T, Device>* t : {&ctx.h1, &ctx.attn, &ctx.r1, &ctx.h2, &ctx.f2}) t->resize({n, D});
    ctx.f1.resize({n, F});
    ctx.g.resize({n, F});
    ln1_.forward_impl(ctx.ln1, x, ctx.h1.data());
    attn_.forward_rows(ctx.mha, ctx.h1.view(), lengths, starts, Tl, padded, ctx.attn.data());
    drop_attn_.forward_impl(ctx.drop_attn, ctx.attn.data(), ctx.attn.data(), n * D, mode);
    kernels::residual_add(dev(), ctx.r1.data(), x.data, ctx.attn.data(), n * D);
    ln2_.forward_impl(ctx.ln2, ctx.r1.view(), ctx.h2.data());
    lin1_.forward_impl(ctx.h2.data(), ctx.f1.data(), n);
    activation_forward(this->dev(), c_.activation, ctx.g.data(), ctx.f1.data(), n * F);
    drop_ffn_.forward_impl(ctx.drop_ffn, ctx.g.data(), ctx.g.data(), n * F, mode);
    lin2_.forward_impl(ctx.g.data(), ctx.f2.data(), n);
    drop_out_.forward_impl(ctx.drop_out, ctx.f2.data(), ctx.f2.data(), n * D, mode);
    kernels::residual_add(dev(), y, ctx.r1.data(), ctx.f2.data(), n * D);
    if (padded) kernels::mask_padded_rows(dev(), y, y, lengths.data, B, Tl, D);
  }

  // dx (n,D) written, in the layout forward used.
  void backward_impl(Context& ctx, CPtr dy, Ptr dx) const {
    const index_t B = ctx.B, Tl = ctx.T_len, n = ctx.rows, D = c_.d_model, F = c_.ffn;
    for (Tensor<T, Device>* t : {&ctx.dD1, &ctx.dD2, &ctx.dD3}) t->resize({n, D});
    ctx.dF.resize({n, F});
    Ptr d1 = ctx.dD1.data(), d2 = ctx.dD2.data(), d3 = ctx.dD3.data(), dF = ctx.dF.data();
    // g = dy with padded rows dropped: dy itself when they are zero already
    // (the layer above wrote them so), else a copy in d1. Packed: no padding.
    CPtr g = ctx.padded ? detail::drop_padded_gradient(this->dev(), dy, ctx.dD1, ctx.lengths, B, Tl, D) : dy;
    drop_out_.backward_impl(ctx.drop_out, g, d2);                     // d2 = d f2
    lin2_.backward_impl(ctx.g.data(), d2, dF, n);                      // dF = d g
    drop_ffn_.backward_impl(ctx.drop_ffn, dF, dF);
    activation_backward(this->dev(), c_.activation, dF, dF, ctx.f1.data(), static_cast<CPtr>(nullptr), n * F);  // dF = d f1
    lin1_.backward_impl(ctx.h2.data(), dF, d2, n);                     // d2 = d h2
    ln2_.backward_impl(ctx.ln2, d2, d3);                               // d3 = d r1 (LN2 path)
    kernels::residual_add(dev(), d3, d3, g, n * D);       // d3 = d r1 (both paths)
    drop_attn_.backward_impl(ctx.drop_attn, d3, d2);                   // d2 = d attn
    attn_.backward_impl(ctx.mha, d2, d1);                              // d1 = d h1
    ln1_.backward_impl(ctx.ln1, d1, dx);                               // dx = LN1 path
    kernels::residual_add(dev(), dx, dx, d3, n * D);      // + residual path
  }

  const TransformerConfig& config() const { return c_; }

  const Device& dev() const { return dev_; }

 private:
  Device dev_{};
  TransformerConfig c_;
  LayerNorm<T, Device> ln1_, ln2_;
  MultiHeadAttention<T, Device> attn_;
  Linear<T, Device> lin1_, lin2_;
  Dropout<T, Device> drop_attn_, drop_ffn_, drop_out_;
};

// A stack of pre-LN layers, optionally followed by a final LayerNorm (the
// usual pre-LN arrangement; PyTorch's TransformerEncoder(norm=...)).
template <class T, class Device = Cpu>
class TransformerEncoder {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;  // lengths, starts: where kernels read them
  struct Context {
    std::vector<typename TransformerEncoderLayer<T, Device>::Context> layers;
    Tensor<index_t, Device> lengths_buf;  // device copy of forward's lengths, on a device without host access
    typename LayerNorm<T, Device>::Context final_ln;
    std::vector<Tensor<T, Device>> hidden;  // packed outputs of every layer (n,D)
    IdView lengths;
    CView x;
    Tensor<index_t, Device> starts;         // (B) first packed row of each sequence
    index_t rows = 0;               // n = sum(lengths)
    Tensor<T, Device> packed, normed;       // (n,D) packed input, final-LayerNorm output
    Tensor<T, Device> d_a, d_b;             // (n,D)
  };

  TransformerEncoder() = default;
  TransformerEncoder(ParameterStore<T, Device>& store, const std::string& name, const TransformerConfig& c, int num_layers,
                     bool final_norm = true)
      : c_(c), final_norm_(final_norm) {
    check(num_layers >= 1, "TransformerEncoder", "'", name, "' expected at least one layer but got ", num_layers);
    for (int i = 0; i < num_layers; ++i)
      layers_.emplace_back(store, name + ".layers." + std::to_string(i), c);
    if (final_norm) norm_ = LayerNorm<T, Device>(store, name + ".norm", c.d_model, c.layer_norm_eps);
  }

  // y (B,T,D) = encoder(x (B,T,D)); padded rows of y are zero. The valid
  // rows are packed once, every layer runs on them, the result is scattered back.
  void forward(Context& ctx, CView x, ConstView<index_t> host_lengths, View y, const Mode& mode,
               const StagedInputs<Device>* staged = nullptr) const {
    const char* op = "TransformerEncoder::forward";
    const index_t D = c_.d_model;
    check_shape(op, "x", x, {-1, -1, D});
    const index_t B = x.dim(0), Tl = x.dim(1);
    check_lengths(op, host_lengths, B, Tl);
    const IdView lengths = device_input(ctx.lengths_buf, host_lengths, staged);
    check_shape(op, "y", y, {B, Tl, D});
    const std::size_t L = layers_.size();
    ctx.layers.resize(L);
    ctx.hidden.resize(L);
    ctx.lengths = lengths;
    ctx.x = x;
    ctx.starts.resize({B});
    const Device& dev = this->dev();
    const index_t n = kernels::packed_starts(dev, ctx.starts.data(), lengths.data, B);
    ctx.rows = n;
    ctx.packed.resize({n, D});
    kernels::pack_sequences(dev, ctx.packed.data(), x.data, lengths.data, ctx.starts.data(), B, Tl, D);
    CPtr out = ctx.packed.data();
    if (n > 0) {  // every sequence empty: nothing to encode, y is all zeros
      CView in(ctx.packed.data(), {n, D});
      for (std::size_t i = 0; i < L; ++i) {
        ctx.hidden[i].resize({n, D});
        layers_[i].forward_rows(ctx.layers[i], in, lengths, ctx.starts.view(), Tl, false, ctx.hidden[i].data(), mode);
        in = CView(ctx.hidden[i].data(), {n, D});
      }
      out = in.data;
      if (final_norm_) {
        ctx.normed.resize({n, D});
        norm_.forward_impl(ctx.final_ln, in, ctx.normed.data());
        out = ctx.normed.data();
      }
    }
    kernels::unpack_sequences(dev, y.data, out, lengths.data, ctx.starts.data(), B, Tl, D);  // padded rows zero
  }

  // dx (B,T,D) written (zero at padded positions: y's padded rows are
  // constant, so their gradient is dropped); all parameter gradients accumulated
  void backward(Context& ctx, CView dy, View dx) const {
    const char* op = "TransformerEncoder::backward";
    const index_t B = ctx.x.dim(0), Tl = ctx.x.dim(1), D = c_.d_model, n = ctx.rows;
    check_shape(op, "dy", dy, {B, Tl, D});
    check_shape(op, "dx", dx, {B, Tl, D});
    ctx.d_a.resize({n, D});
    ctx.d_b.resize({n, D});
    const Device& dev = this->dev();
    const IdView lengths = ctx.lengths;
    Ptr g = ctx.d_a.data();  // packed dy
    kernels::pack_sequences(dev, g, dy.data, lengths.data, ctx.starts.data(), B, Tl, D);
    if (n > 0) {
      if (final_norm_) {
        norm_.backward_impl(ctx.final_ln, ctx.d_a.data(), ctx.d_b.data());
        g = ctx.d_b.data();
      }
      for (std::size_t i = layers_.size(); i-- > 0;) {
        Ptr other = g == ctx.d_a.data() ? ctx.d_b.data() : ctx.d_a.data();
        layers_[i].backward_impl(ctx.layers[i], g, other);
        g = other;
      }
    }
    kernels::unpack_sequences(dev, dx.data, g, lengths.data, ctx.starts.data(), B, Tl, D);
  }

  const TransformerConfig& config() const { return c_; }
  std::size_t num_layers() const { return layers_.size(); }

  const Device& dev() const { return dev_; }

 private:
  Device dev_{};
  TransformerConfig c_;
  bool final_norm_ = true;
  std::vector<TransformerEncoderLayer<T, Device>> layers_;
  LayerNorm<T, Device> norm_;
};

}  // namespace mtrec
