// mtrec: bf16 GEMM on the CPU's matrix units, chosen at run time.
//
//   C (M,N) = alpha * bf16(op(A)) (M,K) * Bp (K,N) + beta * C      fp32 accumulation
//
// Bp is op(B) converted to bf16 (round to nearest even) and packed once
// (Bf16PackedB: weights are packed once per optimizer step, not per
// product); A is converted on the fly while it is packed. Four paths:
//
//   amx          Intel AMX: 16x16 fp32 tiles, TDPBF16PS on 16x32 bf16 tiles
//                of A and 16 K-pairs x 16 columns of B, a 2x2 tile block
//                (32 rows x 32 columns) per step. Needs the AMX-TILE and
//                AMX-BF16 CPUID bits, the tile state enabled in XCR0, and the
//                kernel's permission (arch_prctl ARCH_REQ_XCOMP_PERM), asked
//                once per process; Bf16Support::amx_note says why it is off.
//   avx512_bf16  VDPBF16PS (Zen 4/5, Cooper Lake, Sapphire Rapids): a 12 row x
//                32 column register tile, one broadcast K-pair of A per row.
//   emulated     the same arithmetic in scalar C++, anywhere: each pair of
//                bf16 products added to the fp32 accumulator as VDPBF16PS
//                does (odd element first). Tests run it on every machine;
//                it is slow and no model selects it.
//   fp32         no bf16 unit: callers run the fp32 GEMM instead
//                (bf16_default_path() returns it; bf16_gemm* refuse it).
//
// Dispatch: CPUID and XCR0 are read once (bf16_support()); the hardware
// kernels are compiled with __attribute__((target(...))), so one binary built
// for a portable baseline (x86-64-v3, say) uses AMX where it is present, and
// -march=native builds are unchanged. MTREC_BF16_PATH=fp32|emulated|
// avx512_bf16|amx in the environment overrides the default (a path the
// machine lacks is refused). Under nvcc, and off x86-64 GCC/Clang, only the
// emulated path is compiled.
//
// The packed B layout is the same for every path: panels of 16 columns (an
// even number of panels, the last ones zero), each Kp/2 rows of 16 K-pairs,
// Kp = K rounded up to 32 (zeros):  element (k, j) at
//   (j / 16) * Kp * 16 + (k / 2) * 32 + (j % 16) * 2 + (k % 2)
// which is also the VNNI layout of an AMX B tile (16 rows of 64 bytes).
//
// Determinism: every C element is one fp32 chain over k in increasing pairs
// (AMX: in increasing 32-element blocks, each reduced the same way), and the
// split across threads is over rows or column panels only, so results do
// not depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/device.hpp"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(MTREC_NO_BF16_KERNELS)
#define MTREC_BF16_X86 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define MTREC_BF16_X86 0
#endif

namespace mtrec {
namespace kernels {

// ---- bf16 numbers ---------------------------------------------------------------

// float -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t to_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}
inline float from_bf16(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline float round_bf16(float x) { return from_bf16(to_bf16(x)); }

// ---- what the machine has -----------------------------------------------------------

enum class Bf16Path { fp32, emulated, avx512_bf16, amx };

inline const char* bf16_path_name(Bf16Path p) {
  switch (p) {
    case Bf16Path::fp32: return "fp32";
    case Bf16Path::emulated: return "emulated";
    case Bf16Path::avx512_bf16: return "avx512_bf16";
    case Bf16Path::amx: return "amx";
  }
  return "?";
}

struct Bf16Support {
  bool avx512_bf16 = false;  // CPUID AVX512F + AVX512_BF16, ZMM state enabled by the OS
  bool amx = false;          // CPUID AMX-TILE + AMX-BF16, tile state in XCR0, permission granted
  std::string amx_note;      // why amx is false ("" when true)
  Bf16Path best = Bf16Path::fp32;
};

namespace bf16_detail {

#if MTREC_BF16_X86
inline std::uint64_t xcr0() {
  std::uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t(hi) << 32) | lo;
}
#endif

inline Bf16Support detect() {
  Bf16Support s;
#if MTREC_BF16_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) {
    s.amx_note = "no OSXSAVE";
    return s;
  }
  const std::uint64_t x = xcr0();
  const bool zmm_os = (x & 0xe6u) == 0xe6u;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
  unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0, a71 = 0, b71 = 0, c71 = 0, d71 = 0;
  __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7);
  if (a7 >= 1) __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
  const bool avx512f = (b7 >> 16) & 1u;
  s.avx512_bf16 = zmm_os && avx512f && ((a71 >> 5) & 1u);
  const bool amx_bf16 = (d7 >> 22) & 1u, amx_tile = (d7 >> 24) & 1u;
  if (!amx_tile || !amx_bf16) {
    s.amx_note = "the CPU has no AMX-BF16 (CPUID leaf 7)";
  } else if ((x & 0x60000u) != 0x60000u) {
    s.amx_note = "the OS has not enabled the AMX tile state (XCR0 bits 17-18)";
  } else if (!zmm_os || !avx512f) {
    s.amx_note = "AMX present but AVX-512 state is not enabled";
  } else {
#if defined(__linux__)
    // ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 (Linux >= 5.16)
    if (syscall(SYS_arch_prctl, 0x1023, 18) == 0) {
      s.amx = true;
    } else {
      s.amx_note = "the kernel refused the AMX tile permission (arch_prctl ARCH_REQ_XCOMP_PERM; Linux >= 5.16 needed)";
    }
#else
    s.amx_note = "AMX tile permission is only requested on Linux";
#endif
  }
#else
  s.amx_note = "not an x86-64 GCC/Clang host build";
#endif
  s.best = s.amx ? Bf16Path::amx : s.avx512_bf16 ? Bf16Path::avx512_bf16 : Bf16Path::fp32;
  return s;
}

}  // namespace bf16_detail

// CPUID, XCR0 and the AMX permission, read once per process.
inline const Bf16Support& bf16_support() {
  static const Bf16Support s = bf16_detail::detect();
  return s;
}

inline bool bf16_path_available(Bf16Path p) {
  switch (p) {
    case Bf16Path::fp32:
    case Bf16Path::emulated: return true;
    case Bf16Path::avx512_bf16: return bf16_support().avx512_bf16;
    case Bf16Path::amx: return bf16_support().amx;
  }
  return false;
}

inline Bf16Path parse_bf16_path(const std::string& s) {
  for (Bf16Path p : {Bf16Path::fp32, Bf16Path::emulated, Bf16Path::avx512_bf16, Bf16Path::amx})
    if (s == bf16_path_name(p)) return p;
  fail("parse_bf16_path", "expected fp32, emulated, avx512_bf16 or amx but got '", s, "'");
}

namespace bf16_detail {
inline Bf16Path initial_path() {
  const char* env = std::getenv("MTREC_BF16_PATH");
  if (env == nullptr || *env == '\0') return bf16_support().best;
  const Bf16Path q = parse_bf16_path(env);
  check(bf16_path_available(q), "bf16_default_path", "MTREC_BF16_PATH=", env, " but this machine lacks it (",
        q == Bf16Path::amx ? bf16_support().amx_note : std::string("no AVX512_BF16"), ")");
  return q;
}
inline std::atomic<int>& current_path() {
  static std::atomic<int> p{static_cast<int>(initial_path())};
  return p;
}
}  // namespace bf16_detail

// The path bf16 products take (the layers with Precision::BF16): the best
// unit the machine has (amx, then avx512_bf16), else fp32 (no bf16 unit);
// MTREC_BF16_PATH in the environment, or set_bf16_default_path(), overrides.
inline Bf16Path bf16_default_path() {
  return static_cast<Bf16Path>(bf16_detail::current_path().load(std::memory_order_relaxed));
}
// Process-wide; set it before work starts (tests force `emulated` with it so
// that the bf16 layers run on any machine). A path the machine lacks is refused.
inline void set_bf16_default_path(Bf16Path p) {
  check(bf16_path_available(p), "set_bf16_default_path", "this machine has no ", bf16_path_name(p), " (",
        p == Bf16Path::amx ? bf16_support().amx_note : std::string("no AVX512_BF16"), ")");
  bf16_detail::current_path().store(static_cast<int>(p), std::memory_order_relaxed);
}

// ---- the packed B operand -----------------------------------------------------------------

struct Bf16PackedB {
  index_t K = 0, N = 0;
  index_t Kp = 0;      // K rounded up to 32
  index_t panels = 0;  // 16-column panels, an even number
  std::vector<std::uint16_t> data;
  // (k, j) -> index in data
  index_t at(index_t k, index_t j) const { return (j / 16) * Kp * 16 + (k / 2) * 32 + (j % 16) * 2 + (k % 2); }
};

namespace bf16_detail {
constexpr index_t kMr = 12;   // rows of the AVX-512 register tile
constexpr index_t kNc = 256;  // columns of B per L2 slab (16 panels)
constexpr index_t kMb = 4 * kMr;  // rows of op(A) converted at a time (AVX-512 path; a multiple of 16)
constexpr index_t kMbAmx = 64;    // the same for AMX: two 32-row tile blocks
constexpr index_t kKb = 512;      // K block of bf16_gemm (a multiple of 32)

#if MTREC_BF16_X86
#define MTREC_BF16_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define MTREC_BF16_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

// 16 floats -> 16 bf16 (round to nearest even, NaN kept), as to_bf16.
MTREC_BF16_AVX512 inline __m256i cvt16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i absu = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(absu, _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

// Two rows of 16 floats (k and k+1; either null: zeros) -> 16 K-pairs, the
// VNNI order: out[2c] = bf16(r0[c]), out[2c+1] = bf16(r1[c]).
MTREC_BF16_AVX512 inline __m512i pair16(const float* r0, const float* r1, __mmask16 m) {
  const __m256i lo = r0 != nullptr ? cvt16(_mm512_maskz_loadu_ps(m, r0)) : _mm256_setzero_si256();
  const __m256i hi = r1 != nullptr ? cvt16(_mm512_maskz_loadu_ps(m, r1)) : _mm256_setzero_si256();
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, both);
}

// pack_b_rows for op(B) = B (K,N), whole panels [j0, j1) (multiples of 16):
// each K-pair of rows is read along the rows, 16 columns at a time, and
// written as one 64-byte panel row. Bitwise the same as the scalar loop.
MTREC_BF16_AVX512 inline void pack_b_rows_n_avx512(Bf16PackedB& p, const float* B, index_t ldb, index_t j0,
                                                   index_t j1) {
  const index_t K = p.K, Kp = p.Kp;
  for (index_t kp = 0; kp < Kp / 2; ++kp) {
    const index_t k = 2 * kp;
    const float* r0 = k < K ? B + k * ldb : nullptr;
    const float* r1 = k + 1 < K ? B + (k + 1) * ldb : nullptr;
    for (index_t j = j0; j < j1; j += 16) {
      const index_t cols = std::max<index_t>(0, std::min<index_t>(16, p.N - j));
      std::uint16_t* d = p.data.data() + (j / 16) * Kp * 16 + kp * 32;
      if (cols == 0) {
        _mm512_storeu_si512(d, _mm512_setzero_si512());
        continue;
      }
      const __mmask16 m = cols >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << cols) - 1u);
      _mm512_storeu_si512(d, pair16(r0 != nullptr ? r0 + j : nullptr, r1 != nullptr ? r1 + j : nullptr, m));
    }
  }
}
#endif  // MTREC_BF16_X86

inline void pack_b_rows(Bf16PackedB& p, Trans tb, const float* B, index_t ldb, index_t j0, index_t j1) {
#if MTREC_BF16_X86
  if (tb == Trans::N && bf16_support().avx512_bf16) {
    pack_b_rows_n_avx512(p, B, ldb, j0, j1);
    return;
  }
#endif
  const index_t K = p.K, Kp = p.Kp, jn = std::min(j1, p.N);
  auto slot = [&](index_t k, index_t j) { return p.data.data() + (j / 16) * Kp * 16 + (k / 2) * 32 + (j % 16) * 2 + (k % 2); };
  if (tb == Trans::N) {
    // op(B) = B (K,N): read along the stored rows, write each K-pair's panel rows
    for (index_t k = 0; k < K; ++k) {
      const float* row = B + k * ldb;
      for (index_t j = j0; j < jn; ++j) *slot(k, j) = to_bf16(row[j]);
    }
    for (index_t k = K; k < Kp; ++k)
      for (index_t j = j0; j < jn; ++j) *slot(k, j) = 0;
  } else {
    // op(B) = B^T, B stored (N,K): column j of op(B) is stored row j
    for (index_t j = j0; j < jn; ++j) {
      const float* row = B + j * ldb;
      for (index_t k = 0; k < Kp; ++k) *slot(k, j) = k < K ? to_bf16(row[k]) : std::uint16_t(0);
    }
  }
  for (index_t j = std::max(j0, jn); j < j1; ++j)  // the padding columns
    for (index_t k = 0; k < Kp; ++k) *slot(k, j) = 0;
}
}  // namespace bf16_detail

// p <- op(B) (K,N) in bf16. Reuses p's storage when it is large enough
// (every element of the layout is written, padding included).
namespace bf16_detail {
// p's sizes for op(B) (K,N); its storage grows to fit and is never shrunk.
inline void shape_packed(Bf16PackedB& p, index_t K, index_t N) {
  p.K = K;
  p.N = N;
  p.Kp = (K + 31) / 32 * 32;
  p.panels = ((N + 15) / 16 + 1) / 2 * 2;
  const std::size_t need = static_cast<std::size_t>(p.panels * p.Kp * 16);
  if (p.data.size() < need) p.data.resize(need);
}
}  // namespace bf16_detail

inline void bf16_pack_b(Bf16PackedB& p, Trans tb, index_t K, index_t N, const float* B, index_t ldb) {
  check(K >= 0 && N >= 0, "bf16_pack_b", "expected K, N >= 0 but got K=", K, " N=", N);
  bf16_detail::shape_packed(p, K, N);
  const index_t cols = p.panels * 16;
  parallel_chunks(cols, 64, [&](index_t j0, index_t j1) { bf16_detail::pack_b_rows(p, tb, B, ldb, j0, j1); },
                  worth_forking_flops(double(K) * double(N) * 8));
}

// ---- kernels ------------------------------------------------------------------------------

namespace bf16_detail {

// a = op(A) element (i, k), in bf16, 0 past K
inline std::uint16_t a_at(Trans ta, const float* A, index_t lda, index_t i, index_t k, index_t K) {
  if (k >= K) return 0;
  return to_bf16(ta == Trans::N ? A[i * lda + k] : A[k * lda + i]);
}

// c = alpha * v + beta * c (+ bias)
inline void store_out(float* c, float v, float alpha, float beta, const float* bias) {
  v *= alpha;
  v = beta == 0.f ? v : std::fma(beta, *c, v);  // one rounding, as _mm512_fmadd_ps
  *c = bias != nullptr ? v + *bias : v;
}

// Scalar, any machine. Rows [i0, i1), all columns.
inline void gemm_emulated(Trans ta, index_t i0, index_t i1, index_t j0, index_t j1, index_t K, float alpha,
                          const float* A, index_t lda, const Bf16PackedB& Bp, float beta, float* C, index_t ldc,
                          const float* bias) {
  std::vector<float> arow(static_cast<std::size_t>(Bp.Kp));
  for (index_t i = i0; i < i1; ++i) {
    for (index_t k = 0; k < Bp.Kp; ++k) arow[std::size_t(k)] = from_bf16(a_at(ta, A, lda, i, k, K));
    for (index_t j = j0; j < j1; ++j) {
      float acc = 0.f;
      for (index_t k = 0; k < Bp.Kp; k += 2) {
        acc += arow[std::size_t(k + 1)] * from_bf16(Bp.data[std::size_t(Bp.at(k + 1, j))]);
        acc += arow[std::size_t(k)] * from_bf16(Bp.data[std::size_t(Bp.at(k, j))]);
      }
      store_out(C + i * ldc + j, acc, alpha, beta, bias != nullptr ? bias + j : nullptr);
    }
  }
}

// The thread's packed-A buffer.
inline std::vector<std::uint16_t>& a_workspace() {
  thread_local std::vector<std::uint16_t> ws;
  return ws;
}

#if MTREC_BF16_X86


// Row i of op(A) = A (contiguous) into bf16, k in [0, Kp): dst[k]
MTREC_BF16_AVX512 inline void convert_row(std::uint16_t* dst, const float* src, index_t K, index_t Kp) {
  index_t k = 0;
  for (; k + 16 <= K; k += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), cvt16(_mm512_loadu_ps(src + k)));
  if (k < K) {
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1u);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), cvt16(_mm512_maskz_loadu_ps(m, src + k)));
    k += 16;
  }
  for (; k < Kp; k += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_setzero_si256());
}

// rows [i0, i0+rows) of op(A), bf16 row-major with stride Kp (rows >= m zero).
MTREC_BF16_AVX512 inline void pack_a_rows(std::uint16_t* dst, Trans ta, const float* A, index_t lda, index_t i0,
                                          index_t m, index_t rows, index_t K, index_t Kp) {
  for (index_t r = 0; r < rows; ++r) {
    std::uint16_t* d = dst + r * Kp;
    if (r >= m) {
      std::memset(d, 0, std::size_t(Kp) * 2);
    } else if (ta == Trans::N) {
      convert_row(d, A + (i0 + r) * lda, K, Kp);
    }
  }
  if (ta == Trans::T) {
    // op(A) = A^T, A stored (K,M): two stored rows (k, k+1) at a time, 16
    // columns each, become 16 K-pairs scattered to their rows of dst
    const index_t mm = std::min(m, rows);
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i stride = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(Kp / 2)));
    auto* d32 = reinterpret_cast<int*>(dst);
    for (index_t kp = 0; kp < Kp / 2; ++kp) {
      const index_t k = 2 * kp;
      const float* r0 = k < K ? A + k * lda + i0 : nullptr;
      const float* r1 = k + 1 < K ? A + (k + 1) * lda + i0 : nullptr;
      for (index_t r = 0; r < mm; r += 16) {
        const index_t n = std::min<index_t>(16, mm - r);
        const __mmask16 msk = n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
        const __m512i v = pair16(r0 != nullptr ? r0 + r : nullptr, r1 != nullptr ? r1 + r : nullptr, msk);
        const __m512i at = _mm512_add_epi32(stride, _mm512_set1_epi32(static_cast<int>(r * (Kp / 2) + kp)));
        _mm512_mask_i32scatter_epi32(d32, msk, at, v, 4);
      }
    }
  }
}

// op(A) = A^T, A stored (K,M): rows [i0, i0+m) of op(A) as K-pairs in
// k-major order, pair (r, kp) at dst32[kp * rows + r] (rows a multiple of 16,
// those >= m zero). Two stored rows of A (k, k+1), 16 columns at a time, are
// one 64-byte store: no transpose (the AVX-512 tile reads this layout for
// Trans::T, a weight gradient's dy^T).
MTREC_BF16_AVX512 inline void pack_a_kmajor(std::uint32_t* dst32, const float* A, index_t lda, index_t i0, index_t m,
                                            index_t rows, index_t K, index_t Kp) {
  for (index_t kp = 0; kp < Kp / 2; ++kp) {
    const index_t k = 2 * kp;
    const float* r0 = k < K ? A + k * lda + i0 : nullptr;
    const float* r1 = k + 1 < K ? A + (k + 1) * lda + i0 : nullptr;
    std::uint32_t* d = dst32 + kp * rows;
    for (index_t r = 0; r < rows; r += 16) {
      const index_t n = std::max<index_t>(0, std::min<index_t>(16, m - r));
      if (n == 0) {
        _mm512_storeu_si512(d + r, _mm512_setzero_si512());
        continue;
      }
      const __mmask16 msk = n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
      _mm512_storeu_si512(d + r, pair16(r0 != nullptr ? r0 + r : nullptr, r1 != nullptr ? r1 + r : nullptr, msk));
    }
  }
}

// c[0..cols) = alpha * acc + beta * c (+ bias[0..cols)), as store_out
MTREC_BF16_AVX512 inline void store16(float* c, __m512 acc, index_t cols, float alpha, float beta,
                                      const float* bias) {
  if (cols <= 0) return;
  const __mmask16 m = cols >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << cols) - 1u);
  __m512 v = alpha == 1.f ? acc : _mm512_mul_ps(acc, _mm512_set1_ps(alpha));
  if (beta != 0.f) v = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, c), v);
  if (bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias));
  _mm512_mask_storeu_ps(c, m, v);
}

// MR rows x 2 panels (32 columns). ap: MR rows of bf16 K-pairs, row-major
// with stride Kp (KMAJOR false) or k-major with stride aks pairs (KMAJOR
// true, pack_a_kmajor); bp: two consecutive panels; bias: the tile's 32
// columns or null.
template <int MR, bool KMAJOR>
MTREC_BF16_AVX512 inline void tile_avx512(index_t Kp, const std::uint16_t* ap, index_t aks, const std::uint16_t* bp,
                                          float* c, index_t ldc, index_t cols, float alpha, float beta,
                                          const float* bias) {
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) acc0[r] = _mm512_setzero_ps();
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) acc1[r] = _mm512_setzero_ps();
  const std::uint16_t* b1 = bp + Kp * 16;
  for (index_t kp = 0; kp < Kp / 2; ++kp) {
    const __m512bh bv0 = (__m512bh)_mm512_loadu_si512(bp + kp * 32);
    const __m512bh bv1 = (__m512bh)_mm512_loadu_si512(b1 + kp * 32);
    const std::uint16_t* a = KMAJOR ? ap + kp * aks * 2 : ap + 2 * kp;
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      std::uint32_t pair;
      std::memcpy(&pair, a + (KMAJOR ? 2 * r : r * Kp), 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], av, bv0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], av, bv1);
    }
  }
  const float* bias1 = bias != nullptr ? bias + 16 : nullptr;
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    store16(c + r * ldc, acc0[r], cols, alpha, beta, bias);
    store16(c + r * ldc + 16, acc1[r], cols - 16, alpha, beta, bias1);
  }
}

template <bool KMAJOR, int... MRs>
MTREC_BF16_AVX512 inline void tile_avx512_dispatch(std::integer_sequence<int, MRs...>, index_t mr, index_t Kp,
                                                   const std::uint16_t* ap, index_t aks, const std::uint16_t* bp,
                                                   float* c, index_t ldc, index_t cols, float alpha, float beta,
                                                   const float* bias) {
  using Fn = void (*)(index_t, const std::uint16_t*, index_t, const std::uint16_t*, float*, index_t, index_t, float,
                      float, const float*);
  static constexpr Fn table[] = {&tile_avx512<MRs + 1, KMAJOR>...};
  table[mr - 1](Kp, ap, aks, bp, c, ldc, cols, alpha, beta, bias);
}

// Rows [i0, i1) x panel pairs [p0, p1) (p even). op(A) is converted kMb rows
// at a time, just before those rows are used, so the packed rows stay in L1/L2
// while they meet every panel of B (packing all the rows first sent them to
// memory and back on the ref workload's 25,600-row products).
MTREC_BF16_AVX512 inline void gemm_avx512(Trans ta, index_t i0, index_t i1, index_t p0, index_t p1, index_t K,
                                          float alpha, const float* A, index_t lda, const Bf16PackedB& Bp,
                                          float beta, float* C, index_t ldc, const float* bias) {
  const index_t Kp = Bp.Kp, M = i1 - i0;
  std::vector<std::uint16_t>& ws = a_workspace();
  if (index_t(ws.size()) < kMb * Kp) ws.resize(std::size_t(kMb * Kp));
  constexpr auto rows = std::make_integer_sequence<int, int(kMr)>{};
  const bool kmajor = ta == Trans::T;
  for (index_t ib = 0; ib < M; ib += kMb) {
    const index_t mb = std::min(kMb, M - ib);
    // k-major: rows rounded to 16 (kMb is a multiple of 16); row-major: to kMr
    const index_t mbp = kmajor ? (mb + 15) / 16 * 16 : (mb + kMr - 1) / kMr * kMr;
    if (kmajor)
      pack_a_kmajor(reinterpret_cast<std::uint32_t*>(ws.data()), A, lda, i0 + ib, mb, mbp, K, Kp);
    else
      pack_a_rows(ws.data(), ta, A, lda, i0 + ib, mb, mbp, K, Kp);
    for (index_t s0 = p0; s0 < p1; s0 += kNc / 16) {
      const index_t s1 = std::min(p1, s0 + kNc / 16);
      for (index_t ii = 0; ii < mb; ii += kMr) {
        const index_t mr = std::min(kMr, mb - ii);
        const std::uint16_t* ap = kmajor ? ws.data() + 2 * ii : ws.data() + ii * Kp;
        for (index_t p = s0; p < s1; p += 2) {
          const index_t cols = std::min<index_t>(32, Bp.N - p * 16);
          float* c = C + (i0 + ib + ii) * ldc + p * 16;
          const std::uint16_t* bp = Bp.data.data() + p * Kp * 16;
          const float* bb = bias != nullptr ? bias + p * 16 : nullptr;
          if (kmajor)
            tile_avx512_dispatch<true>(rows, mr, Kp, ap, mbp, bp, c, ldc, cols, alpha, beta, bb);
          else
            tile_avx512_dispatch<false>(rows, mr, Kp, ap, 0, bp, c, ldc, cols, alpha, beta, bb);
        }
      }
    }
  }
}

struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

// Rows [i0, i1) x panel pairs [p0, p1): 32 x 32 blocks of four 16x16 tiles.
// tmm0..3: C, tmm4..5: A (16 rows x 32 bf16), tmm6..7: B (16 K-pairs x 16 columns).
// op(A) is converted kMbAmx rows at a time, as in gemm_avx512.
MTREC_BF16_AMX inline void gemm_amx(Trans ta, index_t i0, index_t i1, index_t p0, index_t p1, index_t K, float alpha,
                                    const float* A, index_t lda, const Bf16PackedB& Bp, float beta, float* C,
                                    index_t ldc, const float* bias) {
  const index_t Kp = Bp.Kp, M = i1 - i0;
  std::vector<std::uint16_t>& ws = a_workspace();
  if (index_t(ws.size()) < kMbAmx * Kp) ws.resize(std::size_t(kMbAmx * Kp));
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  alignas(64) float out[4][16 * 16];
  const std::size_t a_stride = std::size_t(Kp) * 2;
  for (index_t ib = 0; ib < M; ib += kMbAmx) {
    const index_t mb = std::min(kMbAmx, M - ib);
    pack_a_rows(ws.data(), ta, A, lda, i0 + ib, mb, (mb + 31) / 32 * 32, K, Kp);
    for (index_t s0 = p0; s0 < p1; s0 += kNc / 16) {
      const index_t s1 = std::min(p1, s0 + kNc / 16);
      for (index_t ii = 0; ii < mb; ii += 32) {
        const std::uint16_t* a0 = ws.data() + ii * Kp;
        const std::uint16_t* a1 = a0 + 16 * Kp;
        for (index_t p = s0; p < s1; p += 2) {
          const std::uint16_t* b0 = Bp.data.data() + p * Kp * 16;
          const std::uint16_t* b1 = b0 + Kp * 16;
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (index_t kb = 0; kb < Kp; kb += 32) {
            _tile_loadd(4, a0 + kb, a_stride);
            _tile_loadd(5, a1 + kb, a_stride);
            _tile_loadd(6, b0 + kb * 16, 64);
            _tile_loadd(7, b1 + kb * 16, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          _tile_stored(0, out[0], 64);
          _tile_stored(1, out[1], 64);
          _tile_stored(2, out[2], 64);
          _tile_stored(3, out[3], 64);
          const index_t cols = std::min<index_t>(32, Bp.N - p * 16);
          for (int t = 0; t < 4; ++t) {
            const index_t r0 = ib + ii + (t / 2) * 16, c0 = (t % 2) * 16;
            const float* bt = bias != nullptr ? bias + p * 16 + c0 : nullptr;
            for (index_t r = 0; r < 16 && r0 + r < M; ++r)
              store16(C + (i0 + r0 + r) * ldc + p * 16 + c0, _mm512_load_ps(out[t] + r * 16), cols - c0, alpha, beta,
                      bt);
          }
        }
      }
    }
  }
  _tile_release();
}

#undef MTREC_BF16_AVX512
#undef MTREC_BF16_AMX
#endif  // MTREC_BF16_X86

}  // namespace bf16_detail

namespace bf16_detail {

inline void check_path(Bf16Path path) {
  if (path == Bf16Path::fp32) fail("bf16_gemm", "path fp32 has no bf16 kernel: call the fp32 gemm");
  if (!bf16_path_available(path))
    fail("bf16_gemm", "path ", bf16_path_name(path), " is not available on this machine (",
         path == Bf16Path::amx ? bf16_support().amx_note : std::string("no AVX512_BF16"), ")");
}

// fn(i0, i1, q0, q1) over the threads: rows [i0, i1) x panels [q0, q1) of C.
// Split over rows when there are enough of them, else over panel pairs:
// either way each C element is computed by one thread, in one order.
template <class Fn>
inline void split_product(Bf16Path path, index_t M, index_t panels, double flops, Fn&& fn) {
  const index_t unit = path == Bf16Path::amx ? 32 : kMr;
  const int threads = worth_forking_flops(flops) ? num_threads() : 1;
  const bool split_rows = M >= index_t(threads) * unit || panels < 4;
  const index_t extent = split_rows ? M : panels / 2;
  const index_t step = split_rows ? unit : 1;
  const index_t per = (extent + threads - 1) / threads;
  const index_t chunk = threads > 1 ? std::max(step, (per + step - 1) / step * step) : extent;
  parallel_chunks(extent, chunk, [&](index_t b, index_t e) {
    if (split_rows)
      fn(b, e, index_t(0), panels);
    else
      fn(index_t(0), M, 2 * b, 2 * e);
  });
}

inline void run_kernel(Bf16Path path, Trans ta, index_t i0, index_t i1, index_t q0, index_t q1, index_t K,
                       float alpha, const float* A, index_t lda, const Bf16PackedB& Bp, float beta, float* C,
                       index_t ldc, const float* bias) {
  switch (path) {
#if MTREC_BF16_X86
    case Bf16Path::amx: gemm_amx(ta, i0, i1, q0, q1, K, alpha, A, lda, Bp, beta, C, ldc, bias); return;
    case Bf16Path::avx512_bf16: gemm_avx512(ta, i0, i1, q0, q1, K, alpha, A, lda, Bp, beta, C, ldc, bias); return;
#endif
    default:
      gemm_emulated(ta, i0, i1, q0 * 16, std::min(Bp.N, q1 * 16), K, alpha, A, lda, Bp, beta, C, ldc, bias);
      return;
  }
}

}  // namespace bf16_detail

// C (M,N) = alpha * bf16(op(A)) * Bp + beta * C (+ bias, a row of N added to
// every row of C, when not null) on `path` (not fp32). A is op(A) (M,K) as
// stored: row-major (M,K) for Trans::N, (K,M) for Trans::T.
inline void bf16_gemm_packed(Bf16Path path, Trans ta, index_t M, index_t N, index_t K, float alpha, const float* A,
                             index_t lda, const Bf16PackedB& Bp, float beta, float* C, index_t ldc,
                             const float* bias = nullptr) {
  bf16_detail::check_path(path);
  if (Bp.K != K || Bp.N != N)
    fail("bf16_gemm", "expected packed B of (K,N)=(", K, ",", N, ") but got (", Bp.K, ",", Bp.N, ")");
  if (M <= 0 || N <= 0) return;
  bf16_detail::split_product(path, M, Bp.panels, 2.0 * double(M) * double(N) * double(K),
                             [&](index_t i0, index_t i1, index_t q0, index_t q1) {
                               bf16_detail::run_kernel(path, ta, i0, i1, q0, q1, K, alpha, A, lda, Bp, beta, C, ldc,
                                                       bias);
                             });
}

// The same, packing op(B) first (a product whose B changes every call:
// activations, gradients). A long K (a weight gradient dW += dy^T x sums
// over the batch's rows) runs in blocks of kKb inside one parallel region:
// each thread packs the panels of each K block of op(B) it needs, uses them
// while they are in L2, and accumulates the blocks into its part of C in
// order (beta on the first, then 1). The blocks depend on K only, so results
// stay the same at any thread count and on every path.
inline void bf16_gemm(Bf16Path path, Trans ta, Trans tb, index_t M, index_t N, index_t K, float alpha, const float* A,
                      index_t lda, const float* B, index_t ldb, float beta, float* C, index_t ldc) {
  constexpr index_t kKb = bf16_detail::kKb;
  if (K <= kKb) {
    thread_local Bf16PackedB scratch;
    bf16_pack_b(scratch, tb, K, N, B, ldb);
    bf16_gemm_packed(path, ta, M, N, K, alpha, A, lda, scratch, beta, C, ldc);
    return;
  }
  bf16_detail::check_path(path);
  check(M >= 0 && N >= 0, "bf16_gemm", "expected M, N >= 0 but got M=", M, " N=", N);
  if (M == 0 || N == 0) return;
  const index_t panels = ((N + 15) / 16 + 1) / 2 * 2;
  bf16_detail::split_product(
      path, M, panels, 2.0 * double(M) * double(N) * double(K), [&](index_t i0, index_t i1, index_t q0, index_t q1) {
        thread_local Bf16PackedB block;
        for (index_t k0 = 0; k0 < K; k0 += kKb) {
          const index_t kb = std::min(kKb, K - k0);
          bf16_detail::shape_packed(block, kb, N);
          bf16_detail::pack_b_rows(block, tb, tb == Trans::N ? B + k0 * ldb : B + k0, ldb, q0 * 16, q1 * 16);
          bf16_detail::run_kernel(path, ta, i0, i1, q0, q1, kb, alpha, ta == Trans::N ? A + k0 : A + k0 * lda, lda,
                                  block, k0 == 0 ? beta : 1.f, C, ldc, nullptr);
        }
      });
}

}  // namespace kernels
}  // namespace mtrec
