// Op-table rows for the dense kernels of include/mtrec/kernels/reference.hpp
// and cpu.hpp: GEMM, bias, activations, softmax, layernorm, dropout,
// residual add, scale, axpy, reductions and the dense optimizer updates.
#pragma once

#include <limits>
#include <set>

#include "ops/op_table.hpp"

namespace optable {

inline std::vector<OpCase> dense_cases() {
  namespace k = mtrec::kernels;
  using k::Trans;
  std::vector<OpCase> v;
  const std::vector<index_t> sizes = {0, 1, 15, 16, 17, 33, 1000};

  // ---- gemm: C (M,N) = alpha op(A) op(B) + beta C, every transposition ----
  struct G { index_t M, N, K; bool bench; };
  for (G g : {G{1, 1, 1, false}, G{7, 17, 33, false}, G{64, 65, 63, false}, G{0, 5, 3, false}, G{256, 256, 256, true}})
    for (Trans ta : {Trans::N, Trans::T})
      for (Trans tb : {Trans::N, Trans::T}) {
        const index_t M = g.M, N = g.N, K = g.K;
        const index_t lda = ta == Trans::N ? K : M, ldb = tb == Trans::N ? N : K;
        const double alpha = 0.75, beta = 0.5;
        OpCase c;
        c.op = "gemm";
        c.shape = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " " +
                  (ta == Trans::N ? "N" : "T") + (tb == Trans::N ? "N" : "T") + " beta=0.5";
        c.in = {{M * K}, {K * N}};
        c.out = {M * N};
        c.random_out_init = true;
        c.bench = g.bench && ta == Trans::N;
        v.push_back(make_case(
            c,
            [=](auto dev, auto& b) {
              OPT_T;
              k::gemm(dev, ta, tb, M, N, K, T(alpha), b.in[0].data(), lda, b.in[1].data(), ldb, T(beta),
                      b.out[0].data(), N);
            },
            [=](auto dev, auto& b) {
              OPT_T;
              const T* dC = b.dout[0].data();
              // dA: op(A) = A: alpha dC op(B)^T;  op(A) = A^T: alpha op(B) dC^T
              if (ta == Trans::N)
                k::gemm(dev, Trans::N, tb == Trans::N ? Trans::T : Trans::N, M, K, N, T(alpha), dC, N,
                        b.in[1].data(), ldb, T(1), b.din[0].data(), lda);
              else
                k::gemm(dev, tb, Trans::T, K, M, N, T(alpha), b.in[1].data(), ldb, dC, N, T(1), b.din[0].data(), lda);
              // dB: op(B) = B: alpha op(A)^T dC;  op(B) = B^T: alpha dC^T op(A)
              if (tb == Trans::N)
                k::gemm(dev, ta == Trans::N ? Trans::T : Trans::N, Trans::N, K, N, M, T(alpha), b.in[0].data(), lda,
                        dC, N, T(1), b.din[1].data(), ldb);
              else
                k::gemm(dev, Trans::T, ta, N, K, M, T(alpha), dC, N, b.in[0].data(), lda, T(1), b.din[1].data(), ldb);
            }));
      }

  // ---- bias_add / column_sum_add --------------------------------------------
  for (index_t rows : {index_t(0), index_t(1), index_t(5), index_t(130)})
    for (index_t cols : {index_t(1), index_t(17), index_t(64)}) {
      OpCase c;
      c.op = "bias_add";
      c.shape = "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
      c.in = {{cols}};
      c.out = {rows * cols};
      c.random_out_init = true;
      v.push_back(make_case(
          c, [=](auto dev, auto& b) { k::bias_add(dev, b.out[0].data(), b.in[0].data(), rows, cols); },
          [=](auto dev, auto& b) { k::column_sum_add(dev, b.din[0].data(), b.dout[0].data(), rows, cols); }));
    }

  // ---- elementwise activations -------------------------------------------------
  for (index_t n : sizes) {
    const std::string sh = "n=" + std::to_string(n);
    OpCase c;
    c.shape = sh;
    c.in = {{n}};
    c.out = {n};
    c.bench = n == 1000;
    c.op = "relu";
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { k::relu_forward(dev, b.out[0].data(), b.in[0].data(), n); },
        [=](auto dev, auto& b) { k::relu_backward(dev, b.din[0].data(), b.dout[0].data(), b.in[0].data(), n); }));
    for (auto mode : {k::GeluMode::Erf, k::GeluMode::Tanh}) {
      c.op = mode == k::GeluMode::Erf ? "gelu" : "gelu_tanh";
      c.in = {{n, true, -4, 4}};
      v.push_back(make_case(
          c, [=](auto dev, auto& b) { k::gelu_forward(dev, b.out[0].data(), b.in[0].data(), n, mode); },
          [=](auto dev, auto& b) {
            k::gelu_backward(dev, b.din[0].data(), b.dout[0].data(), b.in[0].data(), n, mode);
          }));
    }
    c.op = "sigmoid";
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { k::sigmoid_forward(dev, b.out[0].data(), b.in[0].data(), n); },
        [=](auto dev, auto& b) { k::sigmoid_backward(dev, b.din[0].data(), b.dout[0].data(), b.out[0].data(), n); }));
    c.in = {{n}, {n}};
    c.op = "residual_add";
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { k::residual_add(dev, b.out[0].data(), b.in[0].data(), b.in[1].data(), n); },
        [=](auto dev, auto& b) {
          k::residual_add(dev, b.din[0].data(), b.din[0].data(), b.dout[0].data(), n);
          k::residual_add(dev, b.din[1].data(), b.din[1].data(), b.dout[0].data(), n);
        }));
    c.in = {{n}};
    c.op = "scale";
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { OPT_T; k::scale(dev, b.out[0].data(), b.in[0].data(), n, T(-0.625)); },
        [=](auto dev, auto& b) { OPT_T; k::scale(dev, b.din[0].data(), b.dout[0].data(), n, T(-0.625)); }));
    c.op = "axpy";
    c.random_out_init = true;
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { OPT_T; k::axpy(dev, b.out[0].data(), b.in[0].data(), n, T(0.375)); },
        [=](auto dev, auto& b) { OPT_T; k::axpy(dev, b.din[0].data(), b.dout[0].data(), n, T(0.375)); }));
    c.random_out_init = false;
    c.op = "dropout";
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { k::dropout_forward(dev, b.out[0].data(), b.in[0].data(), n, 0.3, 0xABCDEFull, 7); },
        [=](auto dev, auto& b) {
          k::dropout_backward(dev, b.din[0].data(), b.dout[0].data(), n, 0.3, 0xABCDEFull, 7);
        }));
    c.op = "sum_squares";
    c.out = {1};
    v.push_back(make_case(
        c, [=](auto dev, auto& b) { OPT_T; b.out[0][0] = T(k::sum_squares(dev, b.in[0].data(), n)); }, nullptr));
    c.op = "all_finite";
    c.in = {{n, false}};
    for (index_t bad : std::set<index_t>{index_t(-1), n / 2, n - 1}) {
      if (bad >= n) continue;
      OpCase d = c;
      d.shape = sh + (bad < 0 ? " finite" : " nan at " + std::to_string(bad));
      v.push_back(make_case(
          d,
          [=](auto dev, auto& b) {
            OPT_T;
            if (bad >= 0) b.in[0][std::size_t(bad)] = std::numeric_limits<T>::quiet_NaN();
            b.out[0][0] = T(k::all_finite(dev, b.in[0].data(), n) ? 1 : 0);
          },
          nullptr));
    }
  }

  // ---- softmax over rows ---------------------------------------------------------
  for (index_t rows : {index_t(1), index_t(3), index_t(40)})
    for (index_t cols : {index_t(1), index_t(7), index_t(16), index_t(33), index_t(200)}) {
      OpCase c;
      c.op = "softmax";
      c.shape = "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
      c.in = {{rows * cols, true, -3, 3}};
      c.out = {rows * cols};
      c.bench = rows == 40 && cols == 200;
      v.push_back(make_case(
          c, [=](auto dev, auto& b) { k::softmax_forward(dev, b.out[0].data(), b.in[0].data(), rows, cols); },
          [=](auto dev, auto& b) {
            k::softmax_backward(dev, b.din[0].data(), b.dout[0].data(), b.out[0].data(), rows, cols);
          }));
    }

  // ---- layernorm ---------------------------------------------------------------
  for (index_t rows : {index_t(1), index_t(5), index_t(300)})
    for (index_t cols : {index_t(3), index_t(17), index_t(64)}) {
      OpCase c;
      c.op = "layernorm";
      c.shape = "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
      c.in = {{rows * cols, true, -2, 2}, {cols, true, 0.5, 1.5}, {cols}};
      c.out = {rows * cols, rows, rows};
      c.saved = {1, 2};
      c.bench = rows == 300 && cols == 64;
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_T;
            k::layernorm_forward(dev, b.out[0].data(), b.out[1].data(), b.out[2].data(), b.in[0].data(),
                                 b.in[1].data(), b.in[2].data(), rows, cols, T(1e-5));
          },
          [=](auto dev, auto& b) {
            k::layernorm_backward(dev, b.din[0].data(), b.din[1].data(), b.din[2].data(), b.dout[0].data(),
                                  b.in[0].data(), b.out[1].data(), b.out[2].data(), b.in[1].data(), rows, cols);
          }));
    }

  // ---- dense optimizer steps (in place: out = updated w, m, v) ----------------
  for (index_t n : sizes) {
    for (bool decoupled : {false, true}) {
      OpCase c;
      c.op = decoupled ? "adamw_update" : "adam_update";
      c.shape = "n=" + std::to_string(n);
      c.in = {{n, false}, {n, false}, {n, false, 0, 1}, {n, false}};  // w, m, v >= 0, g
      c.out = {n, n, n};
      c.bench = n == 1000 && !decoupled;
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_T;
            for (int j = 0; j < 3; ++j) b.out[j] = b.in[j];
            k::AdamStep<T> s;
            s.lr = T(0.01);
            s.weight_decay = T(0.1);
            s.decoupled = decoupled;
            s.bias_correction1 = T(1 - std::pow(0.9, 3));
            s.bias_correction2 = T(1 - std::pow(0.999, 3));
            k::adam_update(dev, b.out[0].data(), b.out[1].data(), b.out[2].data(), b.in[3].data(), n, s);
          },
          nullptr));
    }
    for (int variant = 0; variant < 3; ++variant) {  // plain, momentum, nesterov
      OpCase c;
      c.op = "sgd_update";
      c.shape = "n=" + std::to_string(n) + (variant == 0 ? " plain" : variant == 1 ? " momentum" : " nesterov");
      c.in = {{n, false}, {n, false}, {n, false}};  // w, buf, g
      c.out = {n, n};
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_T;
            b.out[0] = b.in[0];
            b.out[1] = b.in[1];
            k::sgd_update(dev, b.out[0].data(), variant ? b.out[1].data() : nullptr, b.in[2].data(), n, T(0.05),
                          T(variant ? 0.9 : 0.0), T(0.01), variant == 2);
          },
          nullptr));
    }
  }
  return v;
}

}  // namespace optable
