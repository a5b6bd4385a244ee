// ODR test, translation unit A (has main). Both TUs include all of mtrec and
// instantiate the same templates; they are linked into one program. A
// non-inline definition in a header fails the link; templates or inline
// functions that differ between TUs show up as different numbers. A and B
// build the same model with separately written code and must agree exactly.
#include <mtrec/mtrec.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace odr {

std::vector<float> forward_b(std::uint64_t seed);  // odr_b.cpp
int openmp_b();                                     // odr_b.cpp

std::vector<float> forward_a(std::uint64_t seed) {
  using namespace mtrec;
  ParameterStore<float> store(seed);
  Linear<float> proj(store, "proj", 6, 8);
  TransformerConfig tc;
  tc.d_model = 8;
  tc.heads = 2;
  tc.ffn = 16;
  tc.dropout = 0.0;
  TransformerEncoderLayer<float> enc(store, "enc", tc);
  MLP<float> head(store, "head", 8, MLPConfig{{12, 3}, Activation::GELU, 0.0, false});
  store.allocate();

  const index_t B = 2, T = 4;
  Tensor<float> x({B, T, 6}), p({B, T, 8}), h({B, T, 8}), y({B, T, 3});
  const RandomStream rs(seed, 99);
  for (index_t i = 0; i < x.numel(); ++i) x[i] = float(rs.normal(std::uint64_t(i)));
  Tensor<index_t> len({B});
  len[0] = 4;
  len[1] = 3;

  Linear<float>::Context pc;
  TransformerEncoderLayer<float>::Context ec;
  MLP<float>::Context mc;
  proj.forward(pc, x.view(), p.view());
  enc.forward(ec, p.view(), len.view(), h.view(), Mode::eval());
  head.forward(mc, h.view(), y.view(), Mode::eval());

  std::vector<float> out(y.data(), y.data() + y.numel());
  std::vector<float> g(out.size()), r(out.size());
  kernels::gelu_forward(kernels::cpu, g.data(), out.data(), index_t(out.size()));
  kernels::gelu_forward(kernels::reference, r.data(), out.data(), index_t(out.size()));
  out.insert(out.end(), g.begin(), g.end());
  out.insert(out.end(), r.begin(), r.end());
  return out;
}

}  // namespace odr

int main() {
  int failures = 0;
  for (std::uint64_t seed : {1u, 42u}) {
    const std::vector<float> a = odr::forward_a(seed), b = odr::forward_b(seed);
    if (a.size() != b.size() || a.size() != 3 * 2 * 4 * 3) {
      std::printf("seed %llu: sizes differ: %zu vs %zu\n", (unsigned long long)seed, a.size(), b.size());
      ++failures;
      continue;
    }
    const std::size_t n = a.size() / 3;
    double max_abs = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (!std::isfinite(a[i]) || a[i] != b[i]) {
        std::printf("seed %llu: element %zu differs: %.9g vs %.9g\n", (unsigned long long)seed, i, double(a[i]),
                    double(b[i]));
        ++failures;
      }
      max_abs = std::fmax(max_abs, std::fabs(double(a[i])));
    }
    // Sanity: a real, non-trivial output; the SIMD GELU agrees with the scalar one.
    if (max_abs == 0.0) {
      std::printf("seed %llu: output is all zeros\n", (unsigned long long)seed);
      ++failures;
    }
    for (std::size_t i = 0; i < n; ++i)
      if (std::fabs(a[n + i] - a[2 * n + i]) > 1e-5f * (1.0f + std::fabs(a[2 * n + i]))) {
        std::printf("seed %llu: cpu gelu %g vs reference %g\n", (unsigned long long)seed, double(a[n + i]),
                    double(a[2 * n + i]));
        ++failures;
      }
    std::printf("seed %llu: %zu values agree across TUs, max |y| = %.4f\n", (unsigned long long)seed, a.size(), max_abs);
  }
  if (MTREC_HAS_OPENMP != odr::openmp_b()) {
    std::printf("MTREC_HAS_OPENMP differs between translation units\n");
    ++failures;
  }
  std::printf("%s\n", failures ? "ODR test FAILED" : "ODR test passed");
  return failures ? 1 : 0;
}
