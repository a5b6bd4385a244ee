// Op-table rows of the bf16 GEMM (kernels/cpu_bf16.hpp): one row per shape
// and per path the machine has (emulated everywhere; avx512_bf16 and amx
// where CPUID says so). The double run multiplies the bf16-rounded operands
// exactly, so a path's error is its fp32 accumulation only: the NMSE bound is
// far below bf16's own rounding (2^-9 relative, NMSE ~1e-6), and a kernel that
// dropped a K-pair or read a wrong panel would be off by far more. Every
// backend column calls the same path (the kernel is host-only).
#pragma once

#include "ops/op_table.hpp"

namespace optable {

inline std::vector<mtrec::kernels::Bf16Path> bf16_paths_here() {
  using mtrec::kernels::Bf16Path;
  std::vector<Bf16Path> v;
  for (Bf16Path p : {Bf16Path::emulated, Bf16Path::avx512_bf16, Bf16Path::amx})
    if (mtrec::kernels::bf16_path_available(p)) v.push_back(p);
  return v;
}

inline std::vector<OpCase> bf16_cases() {
  namespace k = mtrec::kernels;
  using k::Trans;
  std::vector<OpCase> v;
  struct Row {
    index_t M, N, K;
    Trans ta, tb;
    float alpha, beta;
  };
  const Row rows[] = {
      {1, 1, 1, Trans::N, Trans::N, 1.f, 0.f},      {13, 17, 31, Trans::N, Trans::N, 1.f, 0.f},
      {37, 70, 33, Trans::N, Trans::T, 0.5f, 1.f},  {40, 33, 64, Trans::T, Trans::N, 1.f, 0.f},
      {25, 100, 95, Trans::T, Trans::T, 2.f, -0.5f}, {256, 64, 352, Trans::N, Trans::N, 1.f, 0.f},
      {64, 512, 256, Trans::N, Trans::T, 1.f, 1.f},
      // a weight gradient dW += dy^T x: K (the batch rows) in several blocks
      {128, 352, 1500, Trans::T, Trans::N, 1.f, 1.f},
  };
  for (k::Bf16Path path : bf16_paths_here()) {
    for (const Row& r : rows) {
      // The emulated path is scalar: keep its rows small.
      if (path == k::Bf16Path::emulated && r.M * r.N * r.K > 2000000) continue;
      OpCase c;
      c.op = "gemm_bf16";
      c.shape = std::string(k::bf16_path_name(path)) + " M=" + std::to_string(r.M) + " N=" + std::to_string(r.N) +
                " K=" + std::to_string(r.K) + (r.ta == Trans::T ? " At" : "") + (r.tb == Trans::T ? " Bt" : "") +
                (r.beta != 0.f ? " beta" : "");
      c.in = {{r.M * r.K, false}, {r.K * r.N, false}};
      c.out = {r.M * r.N};
      c.random_out_init = r.beta != 0.f;
      c.nmse_tol = 1e-10;
      const Row row = r;
      v.push_back(make_case(
          c,
          [=](auto, auto& b) {
            OPT_T;
            const index_t M = row.M, N = row.N, K = row.K;
            const index_t lda = row.ta == Trans::N ? K : M, ldb = row.tb == Trans::N ? N : K;
            if constexpr (std::is_same<T, double>::value) {
              // exact products of the bf16-rounded operands, summed in double
              for (index_t i = 0; i < M; ++i)
                for (index_t j = 0; j < N; ++j) {
                  double s = 0;
                  for (index_t kk = 0; kk < K; ++kk) {
                    const double a = k::round_bf16(float(row.ta == Trans::N ? b.in[0][std::size_t(i * lda + kk)]
                                                                           : b.in[0][std::size_t(kk * lda + i)]));
                    const double bb = k::round_bf16(float(row.tb == Trans::N ? b.in[1][std::size_t(kk * ldb + j)]
                                                                            : b.in[1][std::size_t(j * ldb + kk)]));
                    s += a * bb;
                  }
                  double& o = b.out[0][std::size_t(i * N + j)];
                  o = double(row.alpha) * s + (row.beta != 0.f ? double(row.beta) * o : 0.0);
                }
            } else {
              k::bf16_gemm(path, row.ta, row.tb, M, N, K, row.alpha, b.in[0].data(), lda, b.in[1].data(), ldb,
                           row.beta, b.out[0].data(), N);
            }
          },
          nullptr));
    }
  }
  return v;
}

}  // namespace optable
