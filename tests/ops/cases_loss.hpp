// Op-table rows for the kernels in include/mtrec/kernels/loss.hpp: every loss
// kernel, the ESMM CTCVR loss, and predict's output transforms.
//
// A loss row has one output, the loss value (size 1). Its backward calls the
// same kernel with the gradient pointer(s) and scales by the upstream
// gradient, din = dout[0][0] * dvalue/dinput, so the finite-difference check
// verifies that the gradient written is the derivative of the value
// returned. Labels, masks and weights are captured by the lambdas; the host
// part (1 / sum_i m_i w_i, 0 when no labelled weight) is computed in the row
// as layers/losses.hpp does. Masked rows hold labels and weights the kernels
// must never read (NaN, -100).
#pragma once

#include <limits>
#include <string>
#include <vector>

#include "ops/op_table.hpp"

namespace optable {

#define OPT_LOSS_T using T = typename std::decay_t<decltype(b)>::value_type

namespace loss_rows {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One (n, mask, weights) combination. mask: 0 = none (nullptr), 1 = every
// third row off (rows 1, 4, 7, ...), 2 = every row off.
struct Variant {
  index_t n = 0;
  int mask = 0;
  bool weighted = false;
  bool bench = false;
};

// n = 0 once, then every mask x weights combination for each n; the
// unmasked unweighted row of the largest n is the benchmark row.
inline std::vector<Variant> variants(const std::vector<index_t>& ns) {
  std::vector<Variant> v{{0, 0, false, false}};
  for (index_t n : ns)
    for (int m = 0; m < 3; ++m)
      for (bool w : {false, true}) v.push_back({n, m, w, n == ns.back() && m == 0 && !w});
  return v;
}

inline std::string tag(const Variant& v) {
  static const char* masks[] = {"no mask", "mask 1/3 off", "all masked"};
  return "n=" + std::to_string(v.n) + " " + masks[v.mask] + (v.weighted ? " weighted" : " unweighted");
}

inline std::vector<std::uint8_t> mask_of(const Variant& v) {
  if (v.mask == 0) return {};
  std::vector<std::uint8_t> m(std::size_t(v.n), v.mask == 1 ? 1 : 0);
  if (v.mask == 1)
    for (index_t i = 1; i < v.n; i += 3) m[std::size_t(i)] = 0;
  return m;
}

inline bool on(const std::vector<std::uint8_t>& mask, index_t i) { return mask.empty() || mask[std::size_t(i)] != 0; }

// Weights in [0, 2) with one exact 0 (row 2); NaN on masked rows (never read).
inline std::vector<double> weights_of(const Variant& v, const std::vector<std::uint8_t>& mask, std::uint64_t seed) {
  if (!v.weighted) return {};
  std::vector<double> w = random_values(v.n, seed, 0x3E1, 0, 2);
  if (v.n > 2) w[2] = 0;
  for (index_t i = 0; i < v.n; ++i)
    if (!on(mask, i)) w[std::size_t(i)] = kNaN;
  return w;
}

// Replaces the labels of masked rows by `missing`.
template <class L>
inline std::vector<L> hide(std::vector<L> labels, const std::vector<std::uint8_t>& mask, L missing) {
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (!on(mask, index_t(i))) labels[i] = missing;
  return labels;
}

// The host side of a loss call in precision T: weights rounded to T, the
// mask pointer, and inv_weight_sum = 1 / sum_i m_i w_i (0 when that is 0).
template <class T>
struct Host {
  std::vector<T> w;
  const std::vector<std::uint8_t>* mask = nullptr;
  double inv = 0;
  const T* wp() const { return w.empty() ? nullptr : w.data(); }
  const std::uint8_t* mp() const { return mask->empty() ? nullptr : mask->data(); }
};
template <class T>
inline Host<T> host(const std::vector<std::uint8_t>& mask, const std::vector<double>& weights, index_t n) {
  Host<T> h;
  h.w.assign(weights.begin(), weights.end());
  h.mask = &mask;
  double sum = 0;
  for (index_t i = 0; i < n; ++i)
    if (on(mask, i)) sum += h.w.empty() ? 1.0 : double(h.w[std::size_t(i)]);
  h.inv = sum > 0 ? 1.0 / sum : 0.0;
  return h;
}

template <class T>
inline std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// din[j] *= dout[0][0]: the gradient of L = value * dout.
template <class B>
inline void scale_din(B& b, std::size_t j) {
  const auto g = b.dout[0][0];
  for (auto& x : b.din[j]) x *= g;
}

}  // namespace loss_rows

inline std::vector<OpCase> loss_cases() {
  namespace k = mtrec::kernels;
  namespace lr = loss_rows;
  std::vector<OpCase> v;
  std::uint64_t seed = 7000;

  // ---- bce_with_logits: soft labels in [0, 1] (hard on even rows) ----------
  for (const lr::Variant& s : lr::variants({1, 17, 1000})) {
    for (bool hard : {false, true}) {
      if (hard && (s.n != 17 || s.mask != 1 || !s.weighted)) continue;  // one all-hard row
      OpCase c;
      c.op = "bce_with_logits_loss";
      c.shape = lr::tag(s) + (hard ? " hard labels" : " soft labels");
      c.seed = ++seed;
      c.in = {{s.n, true, -4, 4}};
      c.out = {1};
      c.bench = s.bench;
      const index_t n = s.n;
      const auto mask = lr::mask_of(s);
      const auto wts = lr::weights_of(s, mask, c.seed);
      std::vector<double> y = random_values(n, c.seed, 0xB1, 0, 1);
      for (index_t i = 0; i < n; ++i)
        if (hard || i % 2 == 0) y[std::size_t(i)] = y[std::size_t(i)] < 0.5 ? 0.0 : 1.0;
      y = lr::hide(y, mask, lr::kNaN);
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            const auto yt = lr::as<T>(y);
            b.out[0][0] = T(k::bce_with_logits_loss(dev, nullptr, b.in[0].data(), yt.data(), h.mp(), h.wp(), n, h.inv));
          },
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            const auto yt = lr::as<T>(y);
            k::bce_with_logits_loss(dev, b.din[0].data(), b.in[0].data(), yt.data(), h.mp(), h.wp(), n, h.inv);
            lr::scale_din(b, 0);
          }));
    }
  }

  // ---- mse and huber: predictions in [-3, 3], targets in [-1, 1] ------------
  // (huber's residuals fall on both sides of every delta below)
  for (const lr::Variant& s : lr::variants({1, 17, 1000})) {
    for (double delta : {0.0, 1.0, 0.3, 2.5}) {  // 0.0: mse
      if ((delta == 0.3 || delta == 2.5) && (s.n != 17 || s.mask != 1 || !s.weighted)) continue;
      OpCase c;
      c.op = delta == 0.0 ? "mse_loss" : "huber_loss";
      c.shape = lr::tag(s) + (delta == 0.0 ? "" : " delta=" + std::to_string(delta).substr(0, 3));
      c.seed = ++seed;
      c.in = {{s.n, true, -3, 3}};
      c.out = {1};
      c.bench = s.bench && delta <= 1.0;
      const index_t n = s.n;
      const auto mask = lr::mask_of(s);
      const auto wts = lr::weights_of(s, mask, c.seed);
      const auto y = lr::hide(random_values(n, c.seed, 0xB2, -1, 1), mask, lr::kNaN);
      auto run = [=](auto dev, auto* grad, auto& b, const auto& h, const auto& yt) {
        return delta == 0.0
                   ? k::mse_loss(dev, grad, b.in[0].data(), yt.data(), h.mp(), h.wp(), n, h.inv)
                   : k::huber_loss(dev, grad, b.in[0].data(), yt.data(), h.mp(), h.wp(), n, h.inv, delta);
      };
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            b.out[0][0] = T(run(dev, static_cast<T*>(nullptr), b, h, lr::as<T>(y)));
          },
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            run(dev, b.din[0].data(), b, h, lr::as<T>(y));
            lr::scale_din(b, 0);
          }));
    }
  }

  // ---- softmax_cross_entropy: C = 1, 3, 33 -----------------------------------
  for (index_t C : {index_t(1), index_t(3), index_t(33)})
    for (const lr::Variant& s : lr::variants({1, 17, 1000})) {
      OpCase c;
      c.op = "softmax_cross_entropy_loss";
      c.shape = lr::tag(s) + " C=" + std::to_string(C);
      c.seed = ++seed;
      c.in = {{s.n * C, true, -3, 3}};
      c.out = {1};
      c.bench = s.bench && C == 33;
      const index_t n = s.n;
      const auto mask = lr::mask_of(s);
      const auto wts = lr::weights_of(s, mask, c.seed);
      const auto y = lr::hide(random_ids(n, C, c.seed), mask, index_t(-100));
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            b.out[0][0] =
                T(k::softmax_cross_entropy_loss(dev, nullptr, b.in[0].data(), y.data(), h.mp(), h.wp(), n, C, h.inv));
          },
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            k::softmax_cross_entropy_loss(dev, b.din[0].data(), b.in[0].data(), y.data(), h.mp(), h.wp(), n, C, h.inv);
            lr::scale_din(b, 0);
          }));
    }

  // ---- bpr: (pos, neg) scores ------------------------------------------------
  for (const lr::Variant& s : lr::variants({1, 17, 1000})) {
    OpCase c;
    c.op = "bpr_loss";
    c.shape = lr::tag(s);
    c.seed = ++seed;
    c.in = {{s.n, true, -4, 4}, {s.n, true, -4, 4}};
    c.out = {1};
    c.bench = s.bench;
    const index_t n = s.n;
    const auto mask = lr::mask_of(s);
    const auto wts = lr::weights_of(s, mask, c.seed);
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_LOSS_T;
          const auto h = lr::host<T>(mask, wts, n);
          b.out[0][0] = T(k::bpr_loss(dev, nullptr, nullptr, b.in[0].data(), b.in[1].data(), h.mp(), h.wp(), n, h.inv));
        },
        [=](auto dev, auto& b) {
          OPT_LOSS_T;
          const auto h = lr::host<T>(mask, wts, n);
          k::bpr_loss(dev, b.din[0].data(), b.din[1].data(), b.in[0].data(), b.in[1].data(), h.mp(), h.wp(), n, h.inv);
          lr::scale_din(b, 0);
          lr::scale_din(b, 1);
        }));
  }

  // ---- in_batch_softmax_rows: S (n,n) scores, optional logQ correction -------
  for (const lr::Variant& s : lr::variants({1, 17, 100}))
    for (bool logq : {true, false}) {
      if (!logq && s.n != 17 && s.n != 0) continue;
      OpCase c;
      c.op = "in_batch_softmax_rows";
      c.shape = lr::tag(s) + (logq ? " logQ" : " no logQ");
      c.seed = ++seed;
      c.in = {{s.n * s.n, true, -3, 3}};
      c.out = {1};
      c.bench = s.bench && logq;
      const index_t n = s.n;
      const auto mask = lr::mask_of(s);
      const auto wts = lr::weights_of(s, mask, c.seed);
      const auto lq = logq ? random_values(n, c.seed, 0xB3, -4, 0) : std::vector<double>();
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            const auto lqt = lr::as<T>(lq);
            // without the gradient S is only read
            b.out[0][0] = T(k::in_batch_softmax_rows(dev, b.in[0].data(), logq ? lqt.data() : nullptr, h.mp(), h.wp(),
                                                     n, h.inv, false));
          },
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            const auto lqt = lr::as<T>(lq);
            b.din[0] = b.in[0];  // scores in, dS out
            k::in_batch_softmax_rows(dev, b.din[0].data(), logq ? lqt.data() : nullptr, h.mp(), h.wp(), n, h.inv,
                                     true);
            lr::scale_din(b, 0);
          }));
    }

  // ---- esmm_loss: CTCVR BCE on sigmoid(ctr) sigmoid(cvr) -----------------------
  for (const lr::Variant& s : lr::variants({1, 17, 1000}))
    for (bool soft : {false, true}) {
      if (soft && (s.n == 0 || s.mask != 1 || !s.weighted)) continue;
      OpCase c;
      c.op = "esmm_loss";
      c.shape = lr::tag(s) + (soft ? " soft labels" : " click*conversion");
      c.seed = ++seed;
      c.in = {{s.n, true, -4, 4}, {s.n, true, -4, 4}};  // ctr logits, cvr logits
      c.out = {1};
      c.bench = s.bench;
      const index_t n = s.n;
      const auto mask = lr::mask_of(s);
      const auto wts = lr::weights_of(s, mask, c.seed);
      std::vector<double> y = random_values(n, c.seed, 0xB4, 0, 1);
      if (!soft) {
        const auto click = random_values(n, c.seed, 0xB5, 0, 1);
        for (index_t i = 0; i < n; ++i)
          y[std::size_t(i)] = (click[std::size_t(i)] < 0.5 ? 1.0 : 0.0) * (y[std::size_t(i)] < 0.5 ? 1.0 : 0.0);
      }
      y = lr::hide(y, mask, lr::kNaN);
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            const auto yt = lr::as<T>(y);
            b.out[0][0] = T(k::esmm_loss(dev, nullptr, nullptr, b.in[0].data(), b.in[1].data(), yt.data(), h.mp(),
                                         h.wp(), n, h.inv));
          },
          [=](auto dev, auto& b) {
            OPT_LOSS_T;
            const auto h = lr::host<T>(mask, wts, n);
            const auto yt = lr::as<T>(y);
            k::esmm_loss(dev, b.din[0].data(), b.din[1].data(), b.in[0].data(), b.in[1].data(), yt.data(), h.mp(),
                         h.wp(), n, h.inv);
            lr::scale_din(b, 0);
            lr::scale_din(b, 1);
          }));
    }

  // ---- output_transform: columns [col, col + w) of a (B, C) output -----------
  // (random initial output: the other columns must be left as they are)
  for (index_t B : {index_t(0), index_t(1), index_t(17), index_t(1000)})
    for (index_t w : {index_t(1), index_t(5), index_t(33)})
      for (k::OutputKind kind : {k::OutputKind::Identity, k::OutputKind::Sigmoid, k::OutputKind::Softmax}) {
        const index_t col = 2, C = col + w + 3;
        static const char* names[] = {"identity", "sigmoid", "softmax"};
        OpCase c;
        c.op = "output_transform";
        c.shape = "B=" + std::to_string(B) + " w=" + std::to_string(w) + " C=" + std::to_string(C) + " " +
                  names[int(kind)];
        c.seed = ++seed;
        c.in = {{B * w, false, kind == k::OutputKind::Softmax ? -3.0 : -10.0, kind == k::OutputKind::Softmax ? 3.0 : 10.0}};
        c.out = {B * C};
        c.random_out_init = true;
        c.bench = B == 1000 && w == 5;
        v.push_back(make_case(
            c, [=](auto dev, auto& b) { k::output_transform(dev, b.out[0].data(), C, col, b.in[0].data(), B, w, kind); },
            nullptr));
      }

  // ---- sigmoid_product: ESMM's pCTCVR column -----------------------------------
  for (index_t B : {index_t(0), index_t(1), index_t(17), index_t(1000)}) {
    const index_t col = 1, C = 4;
    OpCase c;
    c.op = "sigmoid_product";
    c.shape = "B=" + std::to_string(B) + " C=4";
    c.seed = ++seed;
    c.in = {{B, false, -10, 10}, {B, false, -10, 10}};
    c.out = {B * C};
    c.random_out_init = true;
    c.bench = B == 1000;
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { k::sigmoid_product(dev, b.out[0].data(), C, col, b.in[0].data(), b.in[1].data(), B); },
        nullptr));
  }
  return v;
}

#undef OPT_LOSS_T

}  // namespace optable
