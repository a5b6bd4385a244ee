// The bf16 GEMM (kernels/cpu_bf16.hpp) on every path this machine has, beside
// the op-table rows (tests/ops/cases_bf16.hpp): rounding of single values
// against hand-worked bit patterns, every element of C within the fp32
// accumulation bound of an exact product of the bf16-rounded operands, the
// hardware paths bit for bit against the emulated one, 1 against 2 threads,
// and the refusals.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <mtrec/mtrec.hpp>

#include "ops/cases_bf16.hpp"

namespace {

namespace k = mtrec::kernels;
using k::Bf16Path;
using k::Trans;
using mtrec::index_t;

float bf16_bits_to_float(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

std::vector<float> bf16_values(index_t n, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(n));
  mtrec::RandomStream rs(seed, 7);
  for (index_t i = 0; i < n; ++i) v[std::size_t(i)] = float(rs.uniform(std::uint64_t(i)) * 2.0 - 1.0);
  return v;
}

struct Bf16Shape {
  index_t M, N, K;
  Trans ta, tb;
  float alpha, beta;
};

// C from `path`, and the per-element bound of its distance to the exact product
void run_bf16(Bf16Path path, const Bf16Shape& s, std::vector<float>& C, std::vector<double>& exact, std::vector<double>& bound) {
  const index_t lda = s.ta == Trans::N ? s.K : s.M, ldb = s.tb == Trans::N ? s.N : s.K;
  const std::vector<float> A = bf16_values(s.M * s.K, 1 + std::uint64_t(s.M)), B = bf16_values(s.K * s.N, 99);
  const std::vector<float> C0 = bf16_values(s.M * s.N, 5);
  C = C0;
  k::bf16_gemm(path, s.ta, s.tb, s.M, s.N, s.K, s.alpha, A.data(), lda, B.data(), ldb, s.beta, C.data(), s.N);
  exact.assign(C.size(), 0.0);
  bound.assign(C.size(), 0.0);
  const double u = std::ldexp(1.0, -24);
  for (index_t i = 0; i < s.M; ++i)
    for (index_t j = 0; j < s.N; ++j) {
      double sum = 0, mag = 0;
      for (index_t kk = 0; kk < s.K; ++kk) {
        const double a = k::round_bf16(s.ta == Trans::N ? A[std::size_t(i * lda + kk)] : A[std::size_t(kk * lda + i)]);
        const double b = k::round_bf16(s.tb == Trans::N ? B[std::size_t(kk * ldb + j)] : B[std::size_t(j * ldb + kk)]);
        sum += a * b;
        mag += std::fabs(a * b);
      }
      const std::size_t e = std::size_t(i * s.N + j);
      const double c0 = s.beta != 0.f ? double(s.beta) * C0[e] : 0.0;
      exact[e] = double(s.alpha) * sum + c0;
      // K+1 fp32 additions, the alpha scale and the beta fma, plus a scale
      // and an addition per further K block of bf16_gemm (512)
      const double blocks = double((s.K + 511) / 512);
      bound[e] = (double(s.K + 3) + 2 * blocks) * u * (std::fabs(double(s.alpha)) * mag + std::fabs(c0)) + 1e-30;
    }
}

const Bf16Shape kBf16Shapes[] = {
    {1, 1, 1, Trans::N, Trans::N, 1.f, 0.f},        {12, 32, 32, Trans::N, Trans::N, 1.f, 0.f},
    {13, 17, 31, Trans::N, Trans::N, 1.f, 0.f},     {37, 70, 33, Trans::N, Trans::T, 0.5f, 1.f},
    {40, 33, 64, Trans::T, Trans::N, 1.f, 0.f},     {25, 100, 95, Trans::T, Trans::T, 2.f, -0.5f},
    {70, 300, 129, Trans::N, Trans::N, 1.f, 0.25f}, {3, 600, 40, Trans::N, Trans::T, 1.f, 0.f},
    // K past one block of bf16_gemm (512): a weight gradient's shape (dy^T x)
    {70, 45, 1100, Trans::T, Trans::N, 0.5f, 1.f},  {33, 40, 600, Trans::N, Trans::N, 1.f, 0.f},
};

}  // namespace

TEST_CASE("bf16: rounding to nearest even, by bit pattern", "[kernels][bf16]") {
  CHECK(k::to_bf16(1.0f) == 0x3f80);
  CHECK(k::to_bf16(bf16_bits_to_float(0x3f808000u)) == 0x3f80);  // 1 + 2^-8: halfway, to the even 1.0
  CHECK(k::to_bf16(bf16_bits_to_float(0x3f818000u)) == 0x3f82);  // halfway above an odd mantissa: up
  CHECK(k::to_bf16(bf16_bits_to_float(0x3f808001u)) == 0x3f81);  // just over halfway: up
  CHECK(k::to_bf16(bf16_bits_to_float(0x3f807fffu)) == 0x3f80);  // just under: down
  CHECK(k::to_bf16(-2.5f) == 0xc020);
  CHECK(k::to_bf16(-0.0f) == 0x8000);
  CHECK(k::to_bf16(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(k::to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds past the largest bf16
  CHECK(k::to_bf16(bf16_bits_to_float(0x00018000u)) == 0x0002);          // a subnormal keeps its bits (halfway, to even)
  const std::uint16_t nan = k::to_bf16(std::numeric_limits<float>::quiet_NaN());
  CHECK(std::isnan(k::from_bf16(nan)));
  CHECK(std::isnan(k::from_bf16(k::to_bf16(bf16_bits_to_float(0x7f800001u)))));  // a NaN whose top bits read as inf
  CHECK(k::from_bf16(0x4049) == 3.140625f);
}

TEST_CASE("bf16: every path within the fp32 accumulation bound of the exact product", "[kernels][bf16]") {
  for (Bf16Path path : optable::bf16_paths_here()) {
    for (const Bf16Shape& s : kBf16Shapes) {
      INFO(k::bf16_path_name(path) << " M=" << s.M << " N=" << s.N << " K=" << s.K);
      std::vector<float> C;
      std::vector<double> exact, bound;
      run_bf16(path, s, C, exact, bound);
      index_t bad = 0;
      for (std::size_t e = 0; e < C.size(); ++e)
        if (!(std::fabs(double(C[e]) - exact[e]) <= bound[e])) ++bad;
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("bf16: the hardware paths give the emulated path's bits", "[kernels][bf16]") {
  // VDPBF16PS adds the odd product, then the even one, to the fp32
  // accumulator, which is what the emulated path does; AMX reduces each
  // 32-element block in its own order, so it is held to the bound above only.
  if (!k::bf16_path_available(Bf16Path::avx512_bf16)) {
    WARN("no AVX512_BF16 on this machine: only the emulated path ran");
    return;
  }
  for (const Bf16Shape& s : kBf16Shapes) {
    INFO("M=" << s.M << " N=" << s.N << " K=" << s.K);
    std::vector<float> ce, ch;
    std::vector<double> exact, bound;
    run_bf16(Bf16Path::emulated, s, ce, exact, bound);
    run_bf16(Bf16Path::avx512_bf16, s, ch, exact, bound);
    CHECK(ce == ch);
  }
}

TEST_CASE("bf16: results do not depend on the thread count", "[kernels][bf16]") {
  const double scale = mtrec::fork_threshold_scale();
  mtrec::set_fork_threshold_scale(0);
  for (Bf16Path path : optable::bf16_paths_here()) {
    for (const Bf16Shape& s : {Bf16Shape{200, 64, 96, Trans::N, Trans::N, 1.f, 0.f}, Bf16Shape{8, 700, 64, Trans::N, Trans::T, 1.f, 1.f}}) {
      INFO(k::bf16_path_name(path) << " M=" << s.M << " N=" << s.N);
      std::vector<float> c1, c2;
      std::vector<double> exact, bound;
      mtrec::set_num_threads(1);
      run_bf16(path, s, c1, exact, bound);
      mtrec::set_num_threads(2);
      run_bf16(path, s, c2, exact, bound);
      CHECK(c1 == c2);
    }
  }
  mtrec::set_fork_threshold_scale(scale);
}

TEST_CASE("bf16: packed operands are reused and checked", "[kernels][bf16]") {
  const std::vector<float> A = bf16_values(4 * 8, 3), B = bf16_values(8 * 20, 4);
  k::Bf16PackedB p;
  k::bf16_pack_b(p, Trans::N, 8, 20, B.data(), 20);
  CHECK(p.Kp == 32);
  CHECK(p.panels == 2);
  CHECK(k::from_bf16(p.data[std::size_t(p.at(3, 17))]) == k::round_bf16(B[3 * 20 + 17]));
  CHECK(p.data[std::size_t(p.at(9, 17))] == 0);  // K padding
  CHECK(p.data[std::size_t(p.at(2, 25))] == 0);  // column padding
  std::vector<float> C(4 * 20, 0.f);
  CHECK_THROWS_WITH(k::bf16_gemm_packed(Bf16Path::emulated, Trans::N, 4, 21, 8, 1.f, A.data(), 8, p, 0.f, C.data(), 20),
                    Catch::Contains("bf16_gemm") && Catch::Contains("(K,N)=(8,21)") && Catch::Contains("(8,20)"));
  CHECK_THROWS_WITH(k::bf16_gemm_packed(Bf16Path::fp32, Trans::N, 4, 20, 8, 1.f, A.data(), 8, p, 0.f, C.data(), 20),
                    Catch::Contains("fp32"));
  if (!k::bf16_path_available(Bf16Path::amx)) {
    CHECK_THROWS_WITH(k::bf16_gemm_packed(Bf16Path::amx, Trans::N, 4, 20, 8, 1.f, A.data(), 8, p, 0.f, C.data(), 20),
                      Catch::Contains("not available") && Catch::Contains(k::bf16_support().amx_note));
  }
  CHECK_THROWS_WITH(k::parse_bf16_path("bf17"), Catch::Contains("bf17"));
  CHECK(k::parse_bf16_path("avx512_bf16") == Bf16Path::avx512_bf16);
}

TEST_CASE("bf16: the machine's units are reported", "[kernels][bf16]") {
  const k::Bf16Support& s = k::bf16_support();
  WARN("bf16 paths on this machine: avx512_bf16=" << s.avx512_bf16 << " amx=" << s.amx << " ("
       << (s.amx ? "granted" : s.amx_note) << "), default " << k::bf16_path_name(k::bf16_default_path()));
  CHECK((s.amx || !s.amx_note.empty()));
  CHECK((s.best == Bf16Path::fp32 || k::bf16_path_available(s.best)));
}
