// The op table (tests/ops/) on the Cuda column: every kernel row run by the
// CUDA kernels in float, against `reference` run in double, with the row's
// own NMSE tolerance (1e-7 unless the row states another), and twice in a row
// for the same bits (the CUDA kernels are deterministic: no float atomics).
//
// The rows' buffers are host vectors and their index arrays are captured
// host vectors, so the kernels read host memory: this needs a GPU with
// pageable-memory access (HMM on x86 with the open kernel modules, ATS on
// Grace). Without it the case says so and is skipped; the typed tests in
// test_cuda_model.cu (device memory only) run either way.
#include <catch2/catch.hpp>

#include <cstdio>
#include <map>

#include "ops/cases.hpp"

using namespace optable;

namespace {
bool gpu_or_skip(bool need_pageable) {
  if (!mtrec::cuda::available()) {
    std::printf("mtrec-cuda: skipped: no CUDA device (%s)\n", mtrec::cuda::unavailable_reason().c_str());
    return false;
  }
  if (need_pageable && !mtrec::cuda::pageable_memory_access()) {
    std::printf("mtrec-cuda: skipped: this GPU cannot read pageable host memory (cudaDevAttrPageableMemoryAccess "
                "is 0: no HMM), which the op table's host buffers need\n");
    return false;
  }
  return true;
}
}  // namespace

TEST_CASE("cuda: every op-table row agrees with reference in double", "[cuda][ops]") {
  if (!gpu_or_skip(true)) return;
  std::map<std::string, int> rows_per_op;
  int rows = 0;
  for (const auto& c : all_cases()) {
    const Data d = case_data(c);
    Bufs<double> ref = make_bufs<double>(c, d);
    c.fwd_d(ref);
    if (c.has_backward()) c.bwd_d(ref);
    INFO(c.name() << " on cuda");
    Bufs<float> b = make_bufs<float>(c, d);
    c.fwd_f(Dev::Cuda, b);
    for (std::size_t j = 0; j < b.out.size(); ++j) {
      INFO("output " << j << ": NMSE " << nmse(b.out[j], ref.out[j]) << " (tolerance " << c.nmse_tol << ")");
      CHECK(nmse(b.out[j], ref.out[j]) <= c.nmse_tol);
    }
    if (c.has_backward()) {
      c.bwd_f(Dev::Cuda, b);
      for (std::size_t j = 0; j < b.din.size(); ++j) {
        INFO("gradient of input " << j << ": NMSE " << nmse(b.din[j], ref.din[j]));
        CHECK(nmse(b.din[j], ref.din[j]) <= c.nmse_tol);
      }
    }
    Bufs<float> b2 = make_bufs<float>(c, d);
    c.fwd_f(Dev::Cuda, b2);
    if (c.has_backward()) c.bwd_f(Dev::Cuda, b2);
    CHECK(b2.out == b.out);
    CHECK(b2.din == b.din);
    ++rows_per_op[c.op];
    ++rows;
  }
  std::printf("mtrec-cuda: op table: %d rows over %d ops on cuda\n", rows, int(rows_per_op.size()));
  CHECK(rows > 100);
}

TEST_CASE("cuda: TF32 GEMMs stay within their stated accuracy", "[cuda][ops]") {
  if (!gpu_or_skip(true)) return;
  // C = A B with K = 256 in TF32 (10-bit mantissa operands, fp32 accumulate):
  // relative error of a product about 2^-11 per operand, NMSE about 1e-6.
  const mtrec::index_t M = 64, N = 48, K = 256;
  std::vector<float> A(std::size_t(M * K)), B(std::size_t(K * N)), C(std::size_t(M * N), 0.0f);
  std::vector<double> Ad(A.size()), Bd(B.size()), Cd(C.size(), 0.0);
  auto a = random_values(M * K, 3, 1, -1, 1), bb = random_values(K * N, 3, 2, -1, 1);
  for (std::size_t i = 0; i < A.size(); ++i) A[i] = float(Ad[i] = a[i]);
  for (std::size_t i = 0; i < B.size(); ++i) B[i] = float(Bd[i] = bb[i]);
  namespace k = mtrec::kernels;
  k::CudaDispatch tf32;
  tf32.tf32 = true;
  k::gemm(tf32, k::Trans::N, k::Trans::N, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  k::gemm(k::reference, k::Trans::N, k::Trans::N, M, N, K, 1.0, Ad.data(), K, Bd.data(), N, 0.0, Cd.data(), N);
  std::vector<float> C32(C.size(), 0.0f);
  k::gemm(k::CudaDispatch{}, k::Trans::N, k::Trans::N, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C32.data(), N);
  const double e = nmse(C, Cd), e32 = nmse(C32, Cd);
  std::printf("mtrec-cuda: GEMM 64x48x256 NMSE against double: TF32 %.3g, fp32 %.3g\n", e, e32);
  CHECK(e <= 1e-5);
  CHECK(e32 <= 1e-7);
  CHECK(e > e32);  // TF32 did round the operands: the default stays plain fp32
}
