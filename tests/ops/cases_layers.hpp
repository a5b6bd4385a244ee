// Op-table rows for whole layers (include/mtrec/layers/) and the public
// losses (layers/losses.hpp), each instantiated on every device of the table:
// the layer is built on a ParameterStore of that device, its parameters are
// the row's inputs after the layer's own inputs (one per parameter, in the
// store's order), and the backward reads their gradients back as the inputs'
// gradients. So a layer gets the same three checks as a kernel: every device
// in float against reference in double, finite differences in double, and
// bitwise repeatability.
#pragma once

#include <string>
#include <vector>

#include <mtrec/layers/attention.hpp>
#include <mtrec/layers/embedding.hpp>
#include <mtrec/layers/gate.hpp>
#include <mtrec/layers/layernorm.hpp>
#include <mtrec/layers/linear.hpp>
#include <mtrec/layers/losses.hpp>
#include <mtrec/layers/mlp.hpp>
#include <mtrec/layers/pooling.hpp>
#include <mtrec/layers/positional.hpp>
#include <mtrec/layers/transformer.hpp>

#include "ops/op_table.hpp"

namespace optable {

namespace layer_detail {
using mtrec::ParameterStore;

template <class S>
struct store_of;
template <class T, class D>
struct store_of<ParameterStore<T, D>> {
  using value = T;
  using device = D;
};

// Builds the layer with make(store) on device Dev in b's precision, loads its
// parameters from b.in[first ..], runs run(layer), and with `grads` reads the
// parameter gradients into b.din[first ..].
template <class Dev, class B, class Make, class Run>
inline void with_layer(const Dev& dev, B& b, std::size_t first, Make make, Run run, bool grads) {
  using T = typename B::value_type;
  ParameterStore<T, Dev> st(1, dev);
  auto layer = make(st);
  st.allocate();
  const auto& infos = st.infos();
  for (std::size_t i = 0; i < infos.size(); ++i)
    st.write_values(infos[i].offset, b.in[first + i].data(), infos[i].size);
  run(layer);
  if (grads)
    for (std::size_t i = 0; i < infos.size(); ++i)
      st.read_grads(b.din[first + i].data(), infos[i].offset, infos[i].size);
}

// The sizes of the parameters make() registers, in the store's order.
template <class Make>
inline std::vector<index_t> param_sizes(Make make) {
  ParameterStore<double, mtrec::Reference> st(1);
  auto layer = make(st);
  (void)layer;
  std::vector<index_t> s;
  for (const auto& p : st.infos()) s.push_back(p.size);
  return s;
}

// din[j] *= dout[0][0]: a loss's gradient of L = value * dout.
template <class B>
inline void scale_by_dout(B& b, std::size_t j) {
  for (auto& x : b.din[j]) x *= b.dout[0][0];
}
}  // namespace layer_detail

// A make(store) lambda: the expression given builds the layer with T and D of the store.
#define OPT_LAYER(...)                                                           \
  [=](auto& st) {                                                                \
    using St = std::decay_t<decltype(st)>;                                       \
    using T = typename layer_detail::store_of<St>::value;                        \
    using D = typename layer_detail::store_of<St>::device;                       \
    (void)sizeof(T);                                                             \
    (void)sizeof(D);                                                             \
    (void)st;                                                                    \
    return __VA_ARGS__;                                                          \
  }
// Inside a row's lambda: the store's T and D, and the view types on D.
#define OPT_DEV_T                                         \
  using T = typename std::decay_t<decltype(b)>::value_type; \
  using D = std::decay_t<decltype(dev)>;                  \
  using V = mtrec::DeviceView<T, D>;                      \
  using CV = mtrec::DeviceView<const T, D>;               \
  (void)sizeof(V);                                        \
  (void)sizeof(CV)

inline std::vector<OpCase> layer_cases() {
  namespace ld = layer_detail;
  using mtrec::Mode;
  std::vector<OpCase> v;

  // Adds the row of a layer with inputs x_sizes (the layer's own) then its
  // parameters; fwd(dev, b, layer) and bwd(dev, b, layer) run the layer.
  auto add = [&v](OpCase c, std::vector<Input> own, auto make, auto fwd, auto bwd) {
    const std::size_t first = own.size();
    c.in = own;
    for (index_t s : ld::param_sizes(make)) c.in.push_back({s, true, -0.5, 0.5});
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { ld::with_layer(dev, b, first, make, [&](auto& L) { fwd(dev, b, L); }, false); },
        [=](auto dev, auto& b) { ld::with_layer(dev, b, first, make, [&](auto& L) { bwd(dev, b, L); }, true); }));
  };

  // ---- Linear ---------------------------------------------------------------------
  for (index_t N : {1, 3}) {
    const index_t in = 5, out = 7;
    OpCase c;
    c.op = "layer:Linear";
    c.shape = "N=" + std::to_string(N) + " in=5 out=7";
    c.out = {N * out};
    add(
        c, {{N * in}}, OPT_LAYER(mtrec::Linear<T, D>(st, "lin", in, out)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(b.out[0].data(), {N, out}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(N * out));
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(y.data(), {N, out}));
          L.backward(ctx, CV(b.dout[0].data(), {N, out}), V(b.din[0].data(), {N, in}));
        });
  }

  // ---- LayerNorm --------------------------------------------------------------------
  {
    const index_t N = 4, dim = 9;
    OpCase c;
    c.op = "layer:LayerNorm";
    c.shape = "N=4 dim=9";
    c.out = {N * dim};
    c.fd_rtol = 1e-4;
    add(
        c, {{N * dim, true, -2, 2}}, OPT_LAYER(mtrec::LayerNorm<T, D>(st, "ln", dim)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {N, dim}), V(b.out[0].data(), {N, dim}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(N * dim));
          L.forward(ctx, CV(b.in[0].data(), {N, dim}), V(y.data(), {N, dim}));
          L.backward(ctx, CV(b.dout[0].data(), {N, dim}), V(b.din[0].data(), {N, dim}));
        });
  }

  // ---- MLP: two Linear layers, GELU between, raw output -------------------------------
  {
    const index_t N = 5, in = 6;
    mtrec::MLPConfig cfg;
    cfg.hidden = {8, 3};
    cfg.activation = mtrec::Activation::GELU;
    cfg.activate_output = false;
    OpCase c;
    c.op = "layer:MLP";
    c.shape = "N=5 in=6 hidden=8,3 gelu";
    c.out = {N * 3};
    add(
        c, {{N * in}}, OPT_LAYER(mtrec::MLP<T, D>(st, "mlp", in, cfg)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(b.out[0].data(), {N, 3}), Mode::eval());
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(N * 3));
          L.forward(ctx, CV(b.in[0].data(), {N, in}), V(y.data(), {N, 3}), Mode::eval());
          L.backward(ctx, CV(b.dout[0].data(), {N, 3}), V(b.din[0].data(), {N, in}));
        });
  }

  // ---- PositionalEmbedding ---------------------------------------------------------
  {
    const index_t B = 2, Tl = 5, Dm = 4;
    OpCase c;
    c.op = "layer:PositionalEmbedding";
    c.shape = "B=2 T=5 D=4 max_len=6";
    c.out = {B * Tl * Dm};
    add(
        c, {{B * Tl * Dm}}, OPT_LAYER(mtrec::PositionalEmbedding<T, D>(st, "pos", 6, Dm)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {B, Tl, Dm}), V(b.out[0].data(), {B, Tl, Dm}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(B * Tl * Dm));
          L.forward(ctx, CV(b.in[0].data(), {B, Tl, Dm}), V(y.data(), {B, Tl, Dm}));
          L.backward(ctx, CV(b.dout[0].data(), {B, Tl, Dm}), V(b.din[0].data(), {B, Tl, Dm}));
        });
  }

  // ---- sequence layers with a key-padding mask (one empty, one full sequence) ---------
  const std::vector<index_t> lengths = {3, 0, 5};
  const index_t SB = 3, ST = 5;
  for (auto mode : {mtrec::SequencePoolMode::Mean, mtrec::SequencePoolMode::First}) {
    const index_t Dm = 4;
    const bool first = mode == mtrec::SequencePoolMode::First;
    OpCase c;
    c.op = "layer:SequencePooling";
    c.shape = std::string("B=3 T=5 D=4 lengths=3,0,5 ") + (first ? "first" : "mean");
    c.out = {SB * Dm};
    add(
        c, {{SB * ST * Dm}}, OPT_LAYER(mtrec::SequencePooling<T, D>(mode)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(b.out[0].data(), {SB, Dm}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(SB * Dm));
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(y.data(), {SB, Dm}));
          L.backward(ctx, CV(b.dout[0].data(), {SB, Dm}), V(b.din[0].data(), {SB, ST, Dm}));
        });
  }
  {
    const index_t Dm = 8;
    OpCase c;
    c.op = "layer:MultiHeadAttention";
    c.shape = "B=3 T=5 D=8 heads=2 lengths=3,0,5";
    c.out = {SB * ST * Dm};
    c.fd_rtol = 1e-4;
    c.nmse_tol = 1e-6;
    add(
        c, {{SB * ST * Dm}}, OPT_LAYER(mtrec::MultiHeadAttention<T, D>(st, "mha", Dm, 2)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(b.out[0].data(), {SB, ST, Dm}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(SB * ST * Dm));
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(y.data(), {SB, ST, Dm}));
          L.backward(ctx, CV(b.dout[0].data(), {SB, ST, Dm}), V(b.din[0].data(), {SB, ST, Dm}));
        });
  }
  {
    const index_t Dm = 8;
    mtrec::TransformerConfig tc;
    tc.d_model = Dm;
    tc.heads = 2;
    tc.ffn = 12;
    tc.dropout = 0.0;
    OpCase c;
    c.op = "layer:TransformerEncoder";
    c.shape = "B=3 T=5 D=8 heads=2 ffn=12 layers=2 lengths=3,0,5";
    c.out = {SB * ST * Dm};
    c.fd_rtol = 1e-4;
    c.nmse_tol = 1e-6;  // two layers of float rounding, each layer norm dividing by a small deviation
    add(
        c, {{SB * ST * Dm}}, OPT_LAYER(mtrec::TransformerEncoder<T, D>(st, "enc", tc, 2)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(b.out[0].data(), {SB, ST, Dm}), Mode::eval());
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(SB * ST * Dm));
          L.forward(ctx, CV(b.in[0].data(), {SB, ST, Dm}), mtrec::ConstView<index_t>(lengths.data(), {SB}),
                    V(y.data(), {SB, ST, Dm}), Mode::eval());
          L.backward(ctx, CV(b.dout[0].data(), {SB, ST, Dm}), V(b.din[0].data(), {SB, ST, Dm}));
        });
  }

  // ---- EmbeddingBag, weighted mean: the weights are an input, the table a parameter ----
  {
    const index_t rows = 7, dim = 5, B = 3;
    const std::vector<index_t> ids = {1, 6, 1, 0, 3};
    const std::vector<index_t> offsets = {0, 2, 2, 5};
    const index_t n = index_t(ids.size());
    OpCase c;
    c.op = "layer:EmbeddingBag";
    c.shape = "rows=7 dim=5 B=3 n=5 weighted mean, one empty bag, a repeated ID";
    c.out = {B * dim};
    add(
        c, {{n, true, 0.2, 1.5}}, OPT_LAYER(mtrec::EmbeddingBag<T, D>(st, "bag", rows, dim, mtrec::BagPooling::Mean)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          L.forward(ctx, mtrec::ConstView<index_t>(ids.data(), {n}), mtrec::ConstView<index_t>(offsets.data(), {B + 1}),
                    CV(b.in[0].data(), {n}), V(b.out[0].data(), {B, dim}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<T> y(std::size_t(B * dim));
          L.forward(ctx, mtrec::ConstView<index_t>(ids.data(), {n}), mtrec::ConstView<index_t>(offsets.data(), {B + 1}),
                    CV(b.in[0].data(), {n}), V(y.data(), {B, dim}));
          L.backward(ctx, CV(b.dout[0].data(), {B, dim}), V(b.din[0].data(), {n}));
        });
  }

  // ---- MixtureGate: M expert outputs mixed by a softmax gate ----------------------------
  {
    const index_t B = 4, in = 6, M = 3, De = 5;
    OpCase c;
    c.op = "layer:MixtureGate";
    c.shape = "B=4 in=6 M=3 De=5";
    c.out = {B * De};
    std::vector<Input> own = {{B * in}};
    for (index_t m = 0; m < M; ++m) own.push_back({B * De});
    add(
        c, own, OPT_LAYER(mtrec::MixtureGate<T, D>(st, "gate", in, M, De)),
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<const T*> e;
          for (index_t m = 0; m < M; ++m) e.push_back(b.in[std::size_t(1 + m)].data());
          L.forward(ctx, CV(b.in[0].data(), {B, in}), e.data(), V(b.out[0].data(), {B, De}));
        },
        [=](auto dev, auto& b, auto& L) {
          OPT_DEV_T;
          typename std::decay_t<decltype(L)>::Context ctx;
          std::vector<const T*> e;
          std::vector<T*> de;
          for (index_t m = 0; m < M; ++m) {
            e.push_back(b.in[std::size_t(1 + m)].data());
            de.push_back(b.din[std::size_t(1 + m)].data());
          }
          std::vector<T> y(std::size_t(B * De));
          L.forward(ctx, CV(b.in[0].data(), {B, in}), e.data(), V(y.data(), {B, De}));
          L.backward(ctx, CV(b.dout[0].data(), {B, De}), de.data(), V(b.din[0].data(), {B, in}));
        });
  }

  // ---- the public losses (checks, denominator, kernels) on each device ------------------
  // A mask with row 1 unlabelled and weights with one zero: both code paths.
  const index_t n = 6;
  const std::vector<std::uint8_t> mask = {1, 0, 1, 1, 1, 1};
  const std::vector<double> wts = {1.0, 0.5, 0.0, 2.0, 0.7, 1.3};
  auto wt = [wts](auto zero) {
    return std::vector<decltype(zero)>(wts.begin(), wts.end());
  };
  {
    const std::vector<double> y = {1, 0, 0.3, 1, 0, 0.8};
    OpCase c;
    c.op = "loss:bce_with_logits";
    c.shape = "n=6 masked weighted soft labels";
    c.in = {{n, true, -3, 3}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> yt(y.begin(), y.end()), w = wt(T(0));
          b.out[0][0] = T(mtrec::bce_with_logits(dev, nullptr, b.in[0].data(), yt.data(), mask.data(), w.data(), n).value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> yt(y.begin(), y.end()), w = wt(T(0));
          mtrec::bce_with_logits(dev, b.din[0].data(), b.in[0].data(), yt.data(), mask.data(), w.data(), n);
          ld::scale_by_dout(b, 0);
        }));
  }
  for (double delta : {0.0, 0.6}) {
    const std::vector<double> y = {0.5, -1, 0.2, 1.5, -0.3, 0.0};
    OpCase c;
    c.op = delta == 0.0 ? "loss:mse" : "loss:huber";
    c.shape = std::string("n=6 masked weighted") + (delta == 0.0 ? "" : " delta=0.6");
    c.in = {{n, true, -2, 2}};
    c.out = {1};
    auto call = [=](auto dev, auto* d, auto& b) {
      using T = typename std::decay_t<decltype(b)>::value_type;
      const std::vector<T> yt(y.begin(), y.end()), w = wt(T(0));
      return delta == 0.0 ? mtrec::mse(dev, d, b.in[0].data(), yt.data(), mask.data(), w.data(), n)
                          : mtrec::huber(dev, d, b.in[0].data(), yt.data(), mask.data(), w.data(), n, delta);
    };
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          b.out[0][0] = T(call(dev, static_cast<T*>(nullptr), b).value);
        },
        [=](auto dev, auto& b) {
          call(dev, b.din[0].data(), b);
          ld::scale_by_dout(b, 0);
        }));
  }
  {
    const index_t C = 4;
    const std::vector<index_t> cls = {2, -100, 0, 3, 1, 3};  // row 1 masked: an ignore_index placeholder
    OpCase c;
    c.op = "loss:softmax_cross_entropy";
    c.shape = "n=6 C=4 masked weighted";
    c.in = {{n * C, true, -3, 3}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          b.out[0][0] = T(mtrec::softmax_cross_entropy(dev, nullptr, b.in[0].data(), cls.data(), mask.data(), w.data(),
                                                       n, C)
                              .value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          mtrec::softmax_cross_entropy(dev, b.din[0].data(), b.in[0].data(), cls.data(), mask.data(), w.data(), n, C);
          ld::scale_by_dout(b, 0);
        }));
  }
  {
    OpCase c;
    c.op = "loss:bpr";
    c.shape = "n=6 masked weighted";
    c.in = {{n, true, -2, 2}, {n, true, -2, 2}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          b.out[0][0] = T(mtrec::bpr(dev, nullptr, nullptr, b.in[0].data(), b.in[1].data(), mask.data(), w.data(), n).value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0));
          mtrec::bpr(dev, b.din[0].data(), b.din[1].data(), b.in[0].data(), b.in[1].data(), mask.data(), w.data(), n);
          ld::scale_by_dout(b, 0);
          ld::scale_by_dout(b, 1);
        }));
  }
  {
    const index_t d = 3;
    const std::vector<double> logq = {-1.0, -2.0, -0.5, -1.5, -3.0, -0.2};
    OpCase c;
    c.op = "loss:in_batch_softmax";
    c.shape = "n=6 d=3 temperature=0.5 log-q corrected masked weighted";
    c.in = {{n * d, true, -1, 1}, {n * d, true, -1, 1}};
    c.out = {1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0)), lq(logq.begin(), logq.end());
          b.out[0][0] = T(mtrec::in_batch_softmax(dev, nullptr, nullptr, b.in[0].data(), b.in[1].data(), n, d, 0.5,
                                                  lq.data(), mask.data(), w.data())
                              .value);
        },
        [=](auto dev, auto& b) {
          OPT_DEV_T;
          const std::vector<T> w = wt(T(0)), lq(logq.begin(), logq.end());
          mtrec::in_batch_softmax(dev, b.din[0].data(), b.din[1].data(), b.in[0].data(), b.in[1].data(), n, d, 0.5,
                                  lq.data(), mask.data(), w.data());
          ld::scale_by_dout(b, 0);
          ld::scale_by_dout(b, 1);
        }));
  }
  return v;
}

#undef OPT_LAYER
#undef OPT_DEV_T

}  // namespace optable
