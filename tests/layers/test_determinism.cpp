// Determinism: a whole stack (embeddings, bag, transformer, pooling, MLP)
// gives bitwise identical outputs and gradients with 1 and 2 threads. The
// sizes are chosen so that GEMM, attention and the row kernels take their
// parallel paths.
#include "support/gradcheck.hpp"

using namespace mtrec;

namespace {

struct StackResult {
  std::vector<float> out, grads;
};

StackResult run_stack(int threads) {
  StackResult res;
  testing::with_threads(threads, [&] {
    const index_t B = 96, T = 20, D = 32;
    ParameterStore<float> store(17);
    Embedding<float> items(store, "items", 500, D);
    EmbeddingBag<float> genres(store, "genres", 40, D, BagPooling::Mean);
    PositionalEmbedding<float> pos(store, "pos", T, D);
    TransformerConfig tc;
    tc.d_model = D;
    tc.heads = 2;
    tc.ffn = 64;
    tc.dropout = 0.1;
    TransformerEncoder<float> enc(store, "enc", tc, 2);
    SequencePooling<float> pool;
    MLP<float> mlp(store, "mlp", 2 * D, MLPConfig{{256, 128, 3}, Activation::GELU, 0.2, false});
    store.allocate();

    Tensor<index_t> seq({B, T}), len({B}), bag_ids({B * 3}), offsets({B + 1});
    RandomStream rs(3, 4);
    for (index_t i = 0; i < B * T; ++i) seq[i] = index_t(rs.below(std::uint64_t(i), 500));
    for (index_t b = 0; b < B; ++b) len[b] = index_t(rs.below(std::uint64_t(10000 + b), T + 1));
    for (index_t i = 0; i < B * 3; ++i) bag_ids[i] = index_t(rs.below(std::uint64_t(20000 + i), 40));
    for (index_t b = 0; b <= B; ++b) offsets[b] = 3 * b;

    Tensor<float> e({B, T, D}), h({B, T, D}), feat({B, 2 * D}), pooled({B, D}), bag({B, D}), y({B, 3});
    Embedding<float>::Context ec;
    EmbeddingBag<float>::Context bc;
    PositionalEmbedding<float>::Context pc;
    TransformerEncoder<float>::Context tctx;
    SequencePooling<float>::Context sc;
    MLP<float>::Context mc;
    const Mode mode = Mode::train(11, 5);
    items.forward(ec, seq.view(), e.view().reshaped({B * T, D}));
    pos.forward(pc, e.view(), e.view());
    enc.forward(tctx, e.view(), len.view(), h.view(), mode);
    pool.forward(sc, h.view(), len.view(), pooled.view());
    genres.forward(bc, bag_ids.view(), offsets.view(), {}, bag.view());
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < D; ++c) {
        feat[b * 2 * D + c] = pooled[b * D + c];
        feat[b * 2 * D + D + c] = bag[b * D + c];
      }
    mlp.forward(mc, feat.view(), y.view(), mode);

    Tensor<float> dy({B, 3}), dfeat({B, 2 * D}), dpooled({B, D}), dbag({B, D}), dh({B, T, D}), de({B, T, D});
    testing::fill_uniform(dy, 8);
    mlp.backward(mc, dy.view(), dfeat.view());
    for (index_t b = 0; b < B; ++b)
      for (index_t c = 0; c < D; ++c) {
        dpooled[b * D + c] = dfeat[b * 2 * D + c];
        dbag[b * D + c] = dfeat[b * 2 * D + D + c];
      }
    genres.backward(bc, dbag.view());
    pool.backward(sc, dpooled.view(), dh.view());
    enc.backward(tctx, dh.view(), de.view());
    pos.backward(pc, de.view(), de.view());
    items.backward(ec, de.view().reshaped({B * T, D}));
    res.out.assign(y.data(), y.data() + y.numel());
    res.grads.assign(store.grads(), store.grads() + store.size());
  });
  return res;
}

}  // namespace

TEST_CASE("determinism: forward and backward are bitwise identical with 1 and 2 threads", "[determinism]") {
  const StackResult one = run_stack(1);
  const StackResult two = run_stack(2);
  REQUIRE(one.out.size() == two.out.size());
  CHECK(testing::bitwise_equal(one.out.data(), two.out.data(), index_t(one.out.size())));
  REQUIRE(one.grads.size() == two.grads.size());
  CHECK(testing::bitwise_equal(one.grads.data(), two.grads.data(), index_t(one.grads.size())));
  double norm = 0;
  for (float g : one.grads) norm += double(g) * g;
  CHECK(norm > 0);  // the comparison is not between two zero buffers
#if MTREC_HAS_OPENMP
  INFO("OpenMP build: the 2-thread run really used 2 threads");
  testing::with_threads(2, [] { CHECK(num_threads() == 2); });
#endif
}
