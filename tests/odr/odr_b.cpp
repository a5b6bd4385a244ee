// ODR test, translation unit B: includes single headers before the umbrella
// (every header must stand alone) and builds the same model as odr_a.cpp with
// its own, separately compiled code.
#include <mtrec/layers/transformer.hpp>
#include <mtrec/kernels/reference.hpp>
#include <mtrec/mtrec.hpp>

#include <cstdint>
#include <vector>

namespace odr {

std::vector<float> forward_b(std::uint64_t seed) {
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
  for (index_t i = 0; i < x.numel(); ++i) x[i] = float(RandomStream(seed, 99).normal(std::uint64_t(i)));
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
  // One kernel called directly through both backends.
  std::vector<float> g(out.size()), r(out.size());
  kernels::gelu_forward(kernels::cpu, g.data(), out.data(), index_t(out.size()));
  kernels::gelu_forward(kernels::reference, r.data(), out.data(), index_t(out.size()));
  out.insert(out.end(), g.begin(), g.end());
  out.insert(out.end(), r.begin(), r.end());
  return out;
}

int openmp_b() { return MTREC_HAS_OPENMP; }

}  // namespace odr
