// Op-table rows for the kernels in include/mtrec/kernels/sequence.hpp:
// masked pooling, packing, padded-row masks and checks, sequence offsets,
// positional add, strided batched GEMM and variable-length attention.
#pragma once

#include <limits>
#include <string>

#include "ops/op_table.hpp"

namespace optable {

#define OPT_SEQ_T using T = typename std::decay_t<decltype(b)>::value_type

namespace seqcases {

// A batch of sequences: B sequences of padded length T, width D.
struct Seq {
  index_t B, T, D;
  std::vector<index_t> lengths;
  bool bench = false;
  std::vector<index_t> starts() const {
    std::vector<index_t> s(lengths.size());
    mtrec::kernels::packed_starts(mtrec::kernels::reference, s.data(), lengths.data(), B);
    return s;
  }
  index_t rows() const {
    index_t n = 0;
    for (index_t l : lengths) n += l;
    return n;
  }
  std::string shape() const {
    std::string s = "B=" + std::to_string(B) + " T=" + std::to_string(T) + " D=" + std::to_string(D);
    if (bench) return s + " random lengths";
    s += " len={";
    for (std::size_t i = 0; i < lengths.size(); ++i) s += (i ? "," : "") + std::to_string(lengths[i]);
    return s + "}";
  }
};

// Lengths in [0, T], random (a fixed seed).
inline std::vector<index_t> random_lengths(index_t B, index_t T, std::uint64_t seed) {
  return random_ids(B, T + 1, seed);
}

// Odd widths around the vector sizes, empty and fully padded sequences,
// full-length ones, B = 0 and B = 1; the last is the bench-sized row.
inline std::vector<Seq> batches() {
  return {
      {0, 4, 5, {}},
      {1, 5, 1, {5}},
      {1, 3, 3, {0}},
      {2, 4, 16, {4, 0}},
      {4, 5, 17, {5, 2, 0, 1}},
      {3, 6, 33, {0, 6, 3}},
      {256, 32, 64, random_lengths(256, 32, 7), true},
  };
}

}  // namespace seqcases

inline std::vector<OpCase> sequence_cases() {
  namespace k = mtrec::kernels;
  using k::Trans;
  using seqcases::Seq;
  std::vector<OpCase> v;

  // ---- sequence_pool: y (B,D) = masked mean over t, or the first token ------
  for (const Seq& s : seqcases::batches())
    for (bool first : {false, true}) {
      if (first && (s.bench || s.B == 0 || s.D == 3)) continue;
      const index_t B = s.B, Tl = s.T, D = s.D;
      const std::vector<index_t> len = s.lengths;
      OpCase c;
      c.op = "sequence_pool";
      c.shape = s.shape() + (first ? " first" : " mean");
      c.in = {{B * Tl * D}};
      c.out = {B * D};
      c.bench = s.bench && !first;
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            k::sequence_pool_forward(dev, b.out[0].data(), b.in[0].data(), len.data(), B, Tl, D, first);
          },
          [=](auto dev, auto& b) {
            k::sequence_pool_backward(dev, b.din[0].data(), b.dout[0].data(), len.data(), B, Tl, D, first);
          }));
    }

  // ---- pack / unpack between the padded and the packed layout ---------------
  for (const Seq& s : seqcases::batches()) {
    if (s.D == 1) continue;
    const index_t B = s.B, Tl = s.T, D = s.D, n = s.rows();
    const std::vector<index_t> len = s.lengths, st = s.starts();
    OpCase c;
    c.shape = s.shape();
    c.bench = s.bench;
    c.op = "pack_sequences";
    c.in = {{B * Tl * D}};
    c.out = {n * D};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          k::pack_sequences(dev, b.out[0].data(), b.in[0].data(), len.data(), st.data(), B, Tl, D);
        },
        [=](auto dev, auto& b) {
          k::unpack_sequences(dev, b.din[0].data(), b.dout[0].data(), len.data(), st.data(), B, Tl, D);
        }));
    c.op = "unpack_sequences";
    c.in = {{n * D}};
    c.out = {B * Tl * D};
    c.random_out_init = true;  // padding rows must be overwritten with 0
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          k::unpack_sequences(dev, b.out[0].data(), b.in[0].data(), len.data(), st.data(), B, Tl, D);
        },
        [=](auto dev, auto& b) {
          k::pack_sequences(dev, b.din[0].data(), b.dout[0].data(), len.data(), st.data(), B, Tl, D);
        }));
  }

  // ---- mask_padded_rows: y = x at valid rows, 0 at padded rows --------------
  for (const Seq& s : seqcases::batches())
    for (bool in_place : {false, true}) {
      if (in_place && s.D != 17) continue;
      const index_t B = s.B, Tl = s.T, D = s.D;
      const std::vector<index_t> len = s.lengths;
      OpCase c;
      c.op = "mask_padded_rows";
      c.shape = s.shape() + (in_place ? " in place" : "");
      c.in = {{B * Tl * D}};
      c.out = {B * Tl * D};
      c.random_out_init = true;
      c.bench = s.bench;
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            if (in_place) {
              b.out[0] = b.in[0];
              k::mask_padded_rows(dev, b.out[0].data(), b.out[0].data(), len.data(), B, Tl, D);
            } else {
              k::mask_padded_rows(dev, b.out[0].data(), b.in[0].data(), len.data(), B, Tl, D);
            }
          },
          [=](auto dev, auto& b) {
            k::mask_padded_rows(dev, b.din[0].data(), b.dout[0].data(), len.data(), B, Tl, D);
          }));
    }

  // ---- padded_rows_are_zero: out = 1 when every padded value is +-0 ---------
  // Variants: padded rows zeroed (true), -0 (true), untouched random (false
  // unless there is no padding), one padded value set to 3 or NaN (false).
  for (const Seq& s : seqcases::batches()) {
    const index_t B = s.B, Tl = s.T, D = s.D;
    const std::vector<index_t> len = s.lengths;
    index_t last_pad = -1;  // the last padded element, if any
    for (index_t bb = 0; bb < B; ++bb)
      if (len[std::size_t(bb)] < Tl) last_pad = (bb + 1) * Tl * D - 1;
    for (int variant = 0; variant < 5; ++variant) {
      // every variant at D=17; zero and NaN at D=33; one row for the others
      const bool keep = s.D == 17 || (s.D == 33 && (variant == 0 || variant == 4)) ||
                        (s.D != 17 && s.D != 33 && variant == (s.D == 1 ? 2 : 0));
      if (!keep || (variant >= 3 && last_pad < 0)) continue;
      static const char* names[] = {"zero", "minus zero", "random", "one 3", "one NaN"};
      OpCase c;
      c.op = "padded_rows_are_zero";
      c.shape = s.shape() + " " + names[variant];
      c.in = {{B * Tl * D, false}};
      c.out = {1};
      c.bench = s.bench;
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_SEQ_T;
            auto& x = b.in[0];
            if (variant <= 1 || variant >= 3)
              for (index_t bb = 0; bb < B; ++bb)
                for (index_t i = (bb * Tl + len[std::size_t(bb)]) * D; i < (bb + 1) * Tl * D; ++i)
                  x[std::size_t(i)] = variant == 1 ? T(-0.0) : T(0);
            if (variant == 3) x[std::size_t(last_pad)] = T(3);
            if (variant == 4) x[std::size_t(last_pad)] = std::numeric_limits<T>::quiet_NaN();
            b.out[0][0] = T(k::padded_rows_are_zero(dev, x.data(), len.data(), B, Tl, D) ? 1 : 0);
          },
          nullptr));
    }
  }

  // ---- packed_starts / padded_starts: sequence offsets (as values) ----------
  for (const Seq& s : seqcases::batches()) {
    if (s.B != 0 && s.D != 17 && !s.bench) continue;  // B = 0, one batch, the bench row
    const index_t B = s.B, Tl = s.T;
    const std::vector<index_t> len = s.lengths;
    OpCase c;
    c.shape = "B=" + std::to_string(B) + " T=" + std::to_string(Tl) + (s.bench ? " random lengths" : "");
    c.bench = s.bench;
    c.op = "packed_starts";
    c.out = {B, 1};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_SEQ_T;
          std::vector<index_t> st(len.size());
          const index_t n = k::packed_starts(dev, st.data(), len.data(), B);
          for (index_t i = 0; i < B; ++i) b.out[0][std::size_t(i)] = T(st[std::size_t(i)]);
          b.out[1][0] = T(n);
        },
        nullptr));
    c.op = "padded_starts";
    c.out = {B};
    v.push_back(make_case(
        c,
        [=](auto dev, auto& b) {
          OPT_SEQ_T;
          std::vector<index_t> st(len.size());
          k::padded_starts(dev, st.data(), B, Tl);
          for (index_t i = 0; i < B; ++i) b.out[0][std::size_t(i)] = T(st[std::size_t(i)]);
        },
        nullptr));
  }

  // ---- positional_add: y (B,T,D) = x + pos (T,D) ---------------------------
  // Variants: out of place; in place (y = x, and dx = dy in the backward);
  // no dx (the backward only accumulates dpos).
  for (const Seq& s : seqcases::batches())
    for (int variant = 0; variant < 3; ++variant) {
      if (s.D == 3 || (variant == 1 && s.D != 17) || (variant == 2 && s.D != 33)) continue;
      const index_t B = s.B, Tl = s.T, D = s.D;
      OpCase c;
      c.op = "positional_add";
      c.shape = "B=" + std::to_string(B) + " T=" + std::to_string(Tl) + " D=" + std::to_string(D) +
                (variant == 1 ? " in place" : variant == 2 ? " no dx" : "");
      c.in = {{B * Tl * D, variant != 2}, {Tl * D}};
      c.out = {B * Tl * D};
      c.bench = s.bench;
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            if (variant == 1) {
              b.out[0] = b.in[0];
              k::positional_add(dev, b.out[0].data(), b.out[0].data(), b.in[1].data(), B, Tl, D);
            } else {
              k::positional_add(dev, b.out[0].data(), b.in[0].data(), b.in[1].data(), B, Tl, D);
            }
          },
          [=](auto dev, auto& b) {
            if (variant == 1) {
              b.din[0] = b.dout[0];
              k::positional_add_backward(dev, b.din[0].data(), b.din[1].data(), b.din[0].data(), B, Tl, D);
            } else {
              k::positional_add_backward(dev, variant == 2 ? nullptr : b.din[0].data(), b.din[1].data(),
                                         b.dout[0].data(), B, Tl, D);
            }
          }));
    }

  // ---- gemm_strided_batched: C_i = alpha op(A_i) op(B_i) + beta C_i ----------
  struct G {
    index_t M, N, K, batch, pad;  // pad: extra leading-dimension and stride slack
    bool bench;
  };
  // every transposition on two shapes (the packed GEMM path, padded
  // strides); NN and TT on the matrix-vector path; NN on the edge cases.
  for (G g : {G{7, 17, 33, 3, 0, false}, G{16, 16, 5, 2, 3, false}, G{5, 3, 16, 4, 0, false},
              G{1, 1, 1, 1, 0, false}, G{0, 5, 3, 2, 0, false}, G{4, 5, 3, 0, 0, false},
              G{32, 32, 32, 256, 0, true}})
    for (Trans ta : {Trans::N, Trans::T})
      for (Trans tb : {Trans::N, Trans::T}) {
        const bool all = g.N == 17 || g.pad > 0, diag = g.N == 3;
        if (!all && !(diag && ta == tb) && !(ta == Trans::N && tb == (g.bench ? Trans::T : Trans::N))) continue;
        const index_t M = g.M, N = g.N, K = g.K, nb = g.batch, p = g.pad;
        // stored A is (M,K) for N, (K,M) for T; rows of lda elements
        const index_t lda = (ta == Trans::N ? K : M) + p, ldb = (tb == Trans::N ? N : K) + p, ldc = N + p;
        const index_t sa = (ta == Trans::N ? M : K) * lda + 2 * p, sb = (tb == Trans::N ? K : N) * ldb + 2 * p,
                      sc = M * ldc + 2 * p;
        const double alpha = 0.75, beta = 0.5;
        OpCase c;
        c.op = "gemm_strided_batched";
        c.shape = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                  " batch=" + std::to_string(nb) + " " + (ta == Trans::N ? "N" : "T") + (tb == Trans::N ? "N" : "T") +
                  (p ? " padded strides" : "") + " beta=0.5";
        c.in = {{nb * sa}, {nb * sb}};
        c.out = {nb * sc};
        c.random_out_init = true;
        c.bench = g.bench;
        v.push_back(make_case(
            c,
            [=](auto dev, auto& b) {
              OPT_SEQ_T;
              k::gemm_strided_batched(dev, ta, tb, M, N, K, T(alpha), b.in[0].data(), lda, sa, b.in[1].data(), ldb,
                                      sb, T(beta), b.out[0].data(), ldc, sc, nb);
            },
            [=](auto dev, auto& b) {
              OPT_SEQ_T;
              const T* dC = b.dout[0].data();
              const T* A = b.in[0].data();
              const T* Bm = b.in[1].data();
              T* dA = b.din[0].data();
              T* dB = b.din[1].data();
              // dA_i: op(A) = A: alpha dC op(B)^T;  op(A) = A^T: alpha op(B) dC^T
              if (ta == Trans::N)
                k::gemm_strided_batched(dev, Trans::N, tb == Trans::N ? Trans::T : Trans::N, M, K, N, T(alpha), dC,
                                        ldc, sc, Bm, ldb, sb, T(1), dA, lda, sa, nb);
              else
                k::gemm_strided_batched(dev, tb, Trans::T, K, M, N, T(alpha), Bm, ldb, sb, dC, ldc, sc, T(1), dA, lda,
                                        sa, nb);
              // dB_i: op(B) = B: alpha op(A)^T dC;  op(B) = B^T: alpha dC^T op(A)
              if (tb == Trans::N)
                k::gemm_strided_batched(dev, ta == Trans::N ? Trans::T : Trans::N, Trans::N, K, N, M, T(alpha), A, lda,
                                        sa, dC, ldc, sc, T(1), dB, ldb, sb, nb);
              else
                k::gemm_strided_batched(dev, Trans::T, ta, N, K, M, T(alpha), dC, ldc, sc, A, lda, sa, T(1), dB, ldb,
                                        sb, nb);
            }));
      }

  // ---- attention over variable-length sequences (padded and packed) --------
  enum Layouts { kPadded = 1, kPacked = 2, kBoth = 3 };
  struct Att {
    index_t B, T, H, dh;
    std::vector<index_t> lengths;
    int layouts;
    bool bench;
  };
  for (const Att& a : {Att{0, 3, 1, 2, {}, kPacked, false}, Att{1, 1, 1, 1, {1}, kPacked, false},
                       Att{1, 4, 2, 3, {0}, kPadded, false}, Att{4, 5, 2, 8, {5, 2, 0, 1}, kBoth, false},
                       Att{3, 6, 1, 17, {6, 0, 3}, kBoth, false}, Att{2, 7, 3, 11, {7, 4}, kPacked, false},
                       Att{3, 5, 1, 3, {2, 5, 1}, kPadded, false},
                       Att{64, 32, 2, 32, seqcases::random_lengths(64, 32, 11), kPacked, true}})
    for (bool padded : {true, false}) {
      if (!(a.layouts & (padded ? kPadded : kPacked))) continue;
      const index_t B = a.B, Tl = a.T, H = a.H, dh = a.dh, D = H * dh;
      const Seq s{B, Tl, D, a.lengths, a.bench};
      const std::vector<index_t> len = a.lengths;
      std::vector<index_t> st = s.starts();
      if (padded) k::padded_starts(k::reference, st.data(), B, Tl);
      const index_t n = padded ? B * Tl : s.rows();
      OpCase c;
      c.op = "attention";
      c.shape = s.shape() + " H=" + std::to_string(H) + (padded ? " padded" : " packed");
      c.in = {{n * 3 * D}};
      c.out = {n * D, B * H * Tl * Tl};  // out, probs
      c.saved = {1};
      c.bench = a.bench;
      const double scale = 1.0 / std::sqrt(double(dh));
      v.push_back(make_case(
          c,
          [=](auto dev, auto& b) {
            OPT_SEQ_T;
            k::attention_forward(dev, b.out[0].data(), b.out[1].data(), b.in[0].data(), len.data(), st.data(), B, H,
                                 Tl, dh, T(scale), padded);
          },
          [=](auto dev, auto& b) {
            OPT_SEQ_T;
            std::vector<T> d_scores(std::size_t(B * H * Tl * Tl));
            k::attention_backward(dev, b.din[0].data(), d_scores.data(), b.dout[0].data(), b.in[0].data(),
                                  b.out[1].data(), len.data(), st.data(), B, H, Tl, dh, T(scale), padded);
          }));
    }
  return v;
}

#undef OPT_SEQ_T

}  // namespace optable
