// Every CPU kernel against its scalar reference, in one table of op cases
// (the ggml test-backend-ops idea): each case is instantiated for both the
// `reference` and the `cpu` device tag, run on sizes that are not multiples
// of the SIMD width, and for float and double. The cpu result must also be
// bitwise identical with 1 and 2 threads.
#include "support/gradcheck.hpp"

#include <vector>

using namespace mtrec;
using kernels::GeluMode;
using kernels::Trans;

namespace {

// Inputs a..e and in/out buffers o1..o3 shared by every case.
template <class T>
struct Buffers {
  index_t rows = 0, cols = 0, n = 0;
  std::vector<T> a, b, c, d, e;  // inputs
  std::vector<T> o1, o2, o3;     // outputs (some kernels accumulate: pre-filled)
};

template <class T>
Buffers<T> make_buffers(index_t rows, index_t cols, std::uint64_t seed) {
  Buffers<T> s;
  s.rows = rows;
  s.cols = cols;
  s.n = rows * cols;
  auto fill = [&](std::vector<T>& v, index_t n, std::uint64_t k, double lo, double hi) {
    v.resize(static_cast<std::size_t>(n));
    testing::fill_uniform(v.data(), n, seed * 31 + k, lo, hi);
  };
  // Large enough for every case, GEMM operands with K <= 19 included.
  const index_t big = std::max({s.n, s.cols, 19 * (rows + cols)});
  fill(s.a, big, 1, -4, 4);
  fill(s.b, big, 2, -2, 2);
  fill(s.c, big, 3, 0.05, 0.95);  // probabilities / positive values
  fill(s.d, big, 4, 0.2, 3);      // positive (rstd, second moments)
  fill(s.e, big, 5, -1, 1);
  fill(s.o1, big, 6, -1, 1);
  fill(s.o2, big, 7, 0, 1);
  fill(s.o3, big, 8, 0, 1);
  return s;
}

template <class T>
using CaseFn = void (*)(Buffers<T>&);

template <class T>
struct OpCase {
  const char* name;
  CaseFn<T> reference;
  CaseFn<T> cpu;
  double tol_float;  // max |cpu - ref| / (1 + |ref|)
};

// Defines one op case for both device tags from a single body using `dev`.
#define OP_CASE(NAME, TOL, BODY)                                                    \
  OpCase<T> {                                                                       \
    NAME, [](Buffers<T>& s) { const auto dev = kernels::reference; (void)dev; BODY; }, \
        [](Buffers<T>& s) { const auto dev = kernels::cpu; (void)dev; BODY; }, TOL  \
  }

template <class T>
std::vector<OpCase<T>> op_cases() {
  return {
      OP_CASE("bias_add", 1e-6, kernels::bias_add(dev, s.o1.data(), s.b.data(), s.rows, s.cols)),
      OP_CASE("column_sum_add", 1e-5, kernels::column_sum_add(dev, s.o1.data(), s.a.data(), s.rows, s.cols)),
      OP_CASE("relu_forward", 0, kernels::relu_forward(dev, s.o1.data(), s.a.data(), s.n)),
      OP_CASE("relu_backward", 0, kernels::relu_backward(dev, s.o1.data(), s.b.data(), s.a.data(), s.n)),
      OP_CASE("gelu_forward", 1e-6, kernels::gelu_forward(dev, s.o1.data(), s.a.data(), s.n)),
      OP_CASE("gelu_backward", 1e-6, kernels::gelu_backward(dev, s.o1.data(), s.b.data(), s.a.data(), s.n)),
      OP_CASE("gelu_tanh_forward", 1e-6, kernels::gelu_forward(dev, s.o1.data(), s.a.data(), s.n, GeluMode::Tanh)),
      OP_CASE("gelu_tanh_backward", 1e-6,
              kernels::gelu_backward(dev, s.o1.data(), s.b.data(), s.a.data(), s.n, GeluMode::Tanh)),
      OP_CASE("sigmoid_forward", 1e-6, kernels::sigmoid_forward(dev, s.o1.data(), s.a.data(), s.n)),
      OP_CASE("sigmoid_backward", 1e-6, kernels::sigmoid_backward(dev, s.o1.data(), s.b.data(), s.c.data(), s.n)),
      OP_CASE("softmax_forward", 1e-6, kernels::softmax_forward(dev, s.o1.data(), s.a.data(), s.rows, s.cols)),
      OP_CASE("softmax_backward", 1e-5,
              kernels::softmax_backward(dev, s.o1.data(), s.b.data(), s.c.data(), s.rows, s.cols)),
      OP_CASE("layernorm_forward", 1e-5,
              kernels::layernorm_forward(dev, s.o1.data(), s.o2.data(), s.o3.data(), s.a.data(), s.b.data(),
                                         s.e.data(), s.rows, s.cols, T(1e-5))),
      OP_CASE("layernorm_backward", 1e-5,
              kernels::layernorm_backward(dev, s.o1.data(), s.o2.data(), s.o3.data(), s.b.data(), s.a.data(),
                                          s.e.data(), s.d.data(), s.c.data(), s.rows, s.cols)),
      OP_CASE("dropout_forward", 0, kernels::dropout_forward(dev, s.o1.data(), s.a.data(), s.n, 0.3, 0xABCDEF12345ull, 17)),
      OP_CASE("dropout_backward", 0, kernels::dropout_backward(dev, s.o1.data(), s.b.data(), s.n, 0.6, 99, 0)),
      OP_CASE("residual_add", 0, kernels::residual_add(dev, s.o1.data(), s.a.data(), s.b.data(), s.n)),
      OP_CASE("adam_update", 1e-6, {
        kernels::AdamStep<T> st;
        st.lr = T(0.01);
        st.weight_decay = T(0.1);
        st.bias_correction1 = T(1 - 0.9 * 0.9 * 0.9);
        st.bias_correction2 = T(1 - 0.999 * 0.999 * 0.999);
        kernels::adam_update(dev, s.o1.data(), s.o2.data(), s.o3.data(), s.b.data(), s.n, st);
      }),
      OP_CASE("adamw_update", 1e-6, {
        kernels::AdamStep<T> st;
        st.lr = T(0.01);
        st.weight_decay = T(0.05);
        st.decoupled = true;
        st.bias_correction1 = T(0.1);
        st.bias_correction2 = T(0.001);
        kernels::adam_update(dev, s.o1.data(), s.o2.data(), s.o3.data(), s.b.data(), s.n, st);
      }),
      OP_CASE("gemm_NN", 1e-5,
              kernels::gemm(dev, Trans::N, Trans::N, s.rows, s.cols, index_t(19), T(1), s.a.data(), index_t(19),
                            s.b.data(), s.cols, T(0), s.o1.data(), s.cols)),
      OP_CASE("gemm_NT_beta1", 1e-5,
              kernels::gemm(dev, Trans::N, Trans::T, s.rows, s.cols, index_t(7), T(0.5), s.a.data(), index_t(7),
                            s.b.data(), index_t(7), T(1), s.o1.data(), s.cols)),
      OP_CASE("gemm_TN", 1e-5,
              kernels::gemm(dev, Trans::T, Trans::N, s.rows, s.cols, index_t(5), T(1), s.a.data(), s.rows,
                            s.b.data(), s.cols, T(0), s.o1.data(), s.cols)),
      OP_CASE("gemm_TT_beta2", 1e-5,
              kernels::gemm(dev, Trans::T, Trans::T, s.rows, s.cols, index_t(3), T(-1), s.a.data(), s.rows,
                            s.b.data(), index_t(3), T(2), s.o1.data(), s.cols)),
  };
}

// (rows, cols): odd widths around the 4/8/16-lane vector sizes, one size
// that spans several parallel chunks, and one wide enough for parallel GEMM.
const std::pair<index_t, index_t> kSizes[] = {{1, 1}, {3, 7}, {2, 17}, {5, 33}, {7, 100}, {33, 129}, {3, 40001}};

template <class T>
double max_rel_diff(const std::vector<T>& x, const std::vector<T>& y) {
  double m = 0;
  for (std::size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(double(x[i]) - double(y[i])) / (1.0 + std::fabs(double(y[i]))));
  return m;
}

template <class T>
void run_table() {
  for (const auto& op : op_cases<T>()) {
    for (const auto& sz : kSizes) {
      // GEMM inputs are read up to max(M,N)*K elements; keep the sizes in bounds.
      if (std::string(op.name).rfind("gemm", 0) == 0 && sz.first * sz.second > 5000) continue;
      Buffers<T> ref = make_buffers<T>(sz.first, sz.second, 1);
      op.reference(ref);
      Buffers<T> one = make_buffers<T>(sz.first, sz.second, 1);
      Buffers<T> two = make_buffers<T>(sz.first, sz.second, 1);
      testing::with_threads(1, [&] { op.cpu(one); });
      testing::with_threads(2, [&] { op.cpu(two); });
      const double tol = std::is_same<T, float>::value ? op.tol_float : 1e-11;
      CAPTURE(op.name, sz.first, sz.second, sizeof(T));
      CHECK(max_rel_diff(one.o1, ref.o1) <= tol);
      CHECK(max_rel_diff(one.o2, ref.o2) <= tol);
      CHECK(max_rel_diff(one.o3, ref.o3) <= tol);
      CHECK(testing::bitwise_equal(one.o1.data(), two.o1.data(), index_t(one.o1.size())));
      CHECK(testing::bitwise_equal(one.o2.data(), two.o2.data(), index_t(one.o2.size())));
      CHECK(testing::bitwise_equal(one.o3.data(), two.o3.data(), index_t(one.o3.size())));
    }
  }
}

}  // namespace

TEST_CASE("kernels: cpu agrees with the scalar reference (float), bitwise across threads", "[kernels]") {
  run_table<float>();
}

TEST_CASE("kernels: cpu agrees with the scalar reference (double), bitwise across threads", "[kernels]") {
  run_table<double>();
}

TEST_CASE("kernels: large GEMM in every transposition, parallel blocks, 1 vs 2 threads", "[kernels][gemm]") {
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T}) {
      const index_t M = 300, N = 129, K = 67;
      std::vector<float> A(M * K), B(K * N), ref(M * N), one(M * N), two(M * N);
      testing::fill_uniform(A.data(), M * K, 1);
      testing::fill_uniform(B.data(), K * N, 2);
      const index_t lda = ta == Trans::N ? K : M, ldb = tb == Trans::N ? N : K;
      kernels::gemm(kernels::reference, ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, ref.data(), N);
      testing::with_threads(1, [&] {
        kernels::gemm(kernels::cpu, ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, one.data(), N);
      });
      testing::with_threads(2, [&] {
        kernels::gemm(kernels::cpu, ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, two.data(), N);
      });
      CAPTURE(int(ta), int(tb));
      CHECK(max_rel_diff(one, ref) < 1e-5);
      CHECK(testing::bitwise_equal(one.data(), two.data(), M * N));
    }
}

// The packed GEMM's edges: K over several K blocks (beta applied once), row
// and column remainders of every size class, leading dimensions wider than
// the operands (padding must not be read), alpha/beta other than 0/1, and
// shapes on the matrix-vector path (M = 1, N < half a vector).
template <class T>
void check_gemm_edges(double tol) {
  struct Shape { index_t M, N, K; };
  const Shape shapes[] = {{1, 70, 33},   {2, 3, 600},   {13, 17, 257}, {25, 192, 64},
                          {37, 33, 600}, {205, 48, 9},  {12, 64, 512}, {3, 200, 1}};
  for (const Shape& s : shapes)
    for (Trans ta : {Trans::N, Trans::T})
      for (Trans tb : {Trans::N, Trans::T}) {
        const index_t pad = 3;
        const index_t lda = (ta == Trans::N ? s.K : s.M) + pad, ldb = (tb == Trans::N ? s.N : s.K) + pad;
        const index_t ldc = s.N + pad;
        const index_t a_rows = ta == Trans::N ? s.M : s.K, b_rows = tb == Trans::N ? s.K : s.N;
        std::vector<T> A(a_rows * lda), B(b_rows * ldb), C0(s.M * ldc);
        testing::fill_uniform(A.data(), index_t(A.size()), 3);
        testing::fill_uniform(B.data(), index_t(B.size()), 4);
        testing::fill_uniform(C0.data(), index_t(C0.size()), 5);
        for (T beta : {T(0), T(1), T(0.5)}) {
          const T alpha = beta == T(1) ? T(1) : T(-1.5);
          std::vector<T> ref = C0, one = C0, two = C0;
          if (beta == T(0))  // beta = 0 must not read C: poison it
            for (std::vector<T>* c : {&one, &two})
              std::fill(c->begin(), c->end(), std::numeric_limits<T>::quiet_NaN());
          kernels::gemm(kernels::reference, ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta,
                        ref.data(), ldc);
          testing::with_threads(1, [&] {
            kernels::gemm(kernels::cpu, ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta,
                          one.data(), ldc);
          });
          testing::with_threads(2, [&] {
            kernels::gemm(kernels::cpu, ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, B.data(), ldb, beta,
                          two.data(), ldc);
          });
          // the padding columns of C are untouched
          for (index_t i = 0; i < s.M; ++i)
            for (index_t j = s.N; j < ldc; ++j)
              if (beta != T(0)) CHECK(one[i * ldc + j] == C0[i * ldc + j]);
          std::vector<T> ref_v, one_v;
          for (index_t i = 0; i < s.M; ++i)
            for (index_t j = 0; j < s.N; ++j) {
              ref_v.push_back(ref[i * ldc + j]);
              one_v.push_back(one[i * ldc + j]);
            }
          CAPTURE(s.M, s.N, s.K, int(ta), int(tb), double(beta), sizeof(T));
          CHECK(max_rel_diff(one_v, ref_v) < tol);
          CHECK(testing::bitwise_equal(one.data(), two.data(), index_t(one.size())));
        }
      }
}

TEST_CASE("kernels: packed GEMM edges (K blocks, remainders, strides, alpha/beta) vs the reference", "[kernels][gemm]") {
  check_gemm_edges<float>(2e-5);
  check_gemm_edges<double>(1e-12);
}

// Products big enough to fork: 1 vs 2 threads split C differently and must agree bit for bit.
TEST_CASE("kernels: forked packed GEMM equals the single-threaded one bit for bit", "[kernels][gemm]") {
  const index_t M = 517, N = 203, K = 300;
  std::vector<float> A(M * K), B(K * N), ref(M * N), one(M * N), two(M * N), wide_one(N * M), wide_two(N * M);
  testing::fill_uniform(A.data(), M * K, 6);
  testing::fill_uniform(B.data(), K * N, 7);
  kernels::gemm(kernels::reference, Trans::N, Trans::N, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, ref.data(), N);
  testing::with_threads(1, [&] {
    kernels::gemm(kernels::cpu, Trans::N, Trans::N, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, one.data(), N);
    // (N,M) = B^T A^T: more columns than rows, so the split is by columns
    kernels::gemm(kernels::cpu, Trans::T, Trans::T, N, M, K, 1.0f, B.data(), N, A.data(), K, 0.0f, wide_one.data(), M);
  });
  testing::with_threads(2, [&] {
    kernels::gemm(kernels::cpu, Trans::N, Trans::N, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, two.data(), N);
    kernels::gemm(kernels::cpu, Trans::T, Trans::T, N, M, K, 1.0f, B.data(), N, A.data(), K, 0.0f, wide_two.data(), M);
  });
  CHECK(max_rel_diff(one, ref) < 2e-5);
  CHECK(testing::bitwise_equal(one.data(), two.data(), M * N));
  CHECK(testing::bitwise_equal(wide_one.data(), wide_two.data(), N * M));
  for (index_t i = 0; i < M; i += 37)
    for (index_t j = 0; j < N; j += 11) CHECK(wide_one[j * M + i] == one[i * N + j]);
}

TEST_CASE("kernels: dropout keeps about 1 - p and matches the reference mask bit for bit", "[kernels][dropout]") {
  const index_t n = 100003;
  std::vector<float> x(n, 1.0f), y(n), r(n);
  kernels::dropout_forward(kernels::cpu, y.data(), x.data(), n, 0.1, 5, 0);
  kernels::dropout_forward(kernels::reference, r.data(), x.data(), n, 0.1, 5, 0);
  CHECK(testing::bitwise_equal(y.data(), r.data(), n));
  index_t kept = 0;
  for (float v : y) kept += v != 0.0f;
  CHECK(double(kept) / n == Approx(0.9).margin(0.005));
}

TEST_CASE("kernels: layernorm_backward over many rows (chunked parameter sums), 1 vs 2 threads", "[kernels][layernorm]") {
  // The op table's sizes fit one row chunk; these span many chunks, the fused
  // path (a row within one column tile) and the tiled path (wider rows).
  const std::pair<index_t, index_t> sizes[] = {{5000, 64}, {2049, 33}, {700, 300}, {97, 1000}};
  for (const auto& sz : sizes) {
    const index_t rows = sz.first, cols = sz.second, n = rows * cols;
    std::vector<float> x(n), dy(n), gamma(cols), mean(rows), rstd(rows);
    testing::fill_uniform(x.data(), n, 1, -3, 3);
    testing::fill_uniform(dy.data(), n, 2, -1, 1);
    testing::fill_uniform(gamma.data(), cols, 3, 0.5, 1.5);
    for (index_t r = 0; r < rows; ++r) {
      double m = 0, v = 0;
      for (index_t c = 0; c < cols; ++c) m += x[r * cols + c];
      m /= double(cols);
      for (index_t c = 0; c < cols; ++c) v += (x[r * cols + c] - m) * (x[r * cols + c] - m);
      mean[r] = float(m);
      rstd[r] = float(1.0 / std::sqrt(v / double(cols) + 1e-5));
    }
    struct Out {
      std::vector<float> dx, dg, db;
    };
    auto run = [&](auto dev) {
      Out o{std::vector<float>(n), std::vector<float>(cols, 0.25f), std::vector<float>(cols, -0.5f)};
      kernels::layernorm_backward(dev, o.dx.data(), o.dg.data(), o.db.data(), dy.data(), x.data(), mean.data(),
                                  rstd.data(), gamma.data(), rows, cols);
      return o;
    };
    const Out ref = run(kernels::reference);
    Out one, two;
    testing::with_threads(1, [&] { one = run(kernels::cpu); });
    testing::with_threads(2, [&] { two = run(kernels::cpu); });
    CAPTURE(rows, cols);
    CHECK(max_rel_diff(one.dx, ref.dx) <= 1e-5);
    // Sums of thousands of float terms: a looser, scale-aware bound.
    double scale = std::sqrt(double(rows));
    double mg = 0, mb = 0;
    for (index_t c = 0; c < cols; ++c) {
      mg = std::max(mg, std::fabs(double(one.dg[c]) - double(ref.dg[c])) / scale);
      mb = std::max(mb, std::fabs(double(one.db[c]) - double(ref.db[c])) / scale);
    }
    CHECK(mg <= 1e-4);
    CHECK(mb <= 1e-4);
    CHECK(testing::bitwise_equal(one.dx.data(), two.dx.data(), n));
    CHECK(testing::bitwise_equal(one.dg.data(), two.dg.data(), cols));
    CHECK(testing::bitwise_equal(one.db.data(), two.db.data(), cols));
  }
}
