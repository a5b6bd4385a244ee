// Workspaces: after the first step, forward + backward + zero_grad of a
// whole stack performs no heap allocation. Counted by replacing the global
// operator new for this test binary (counting only inside the measured region).
#include "support/gradcheck.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
void* counted_alloc(std::size_t n, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                              : std::malloc(n);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

// Every replaceable form is defined, so that no allocation escapes the count
// and every block is released by the matching function (sanitizers check that).
void* operator new(std::size_t n) { return counted_alloc(n, alignof(std::max_align_t)); }
void* operator new[](std::size_t n) { return counted_alloc(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n, alignof(std::max_align_t)); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n, alignof(std::max_align_t)); } catch (...) { return nullptr; }
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n, static_cast<std::size_t>(a)); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try { return counted_alloc(n, static_cast<std::size_t>(a)); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

using namespace mtrec;

TEST_CASE("workspaces: a steady-state training step does not allocate", "[allocation]") {
  const index_t B = 32, T = 10, D = 16;
  ParameterStore<float> store(1);
  Embedding<float> items(store, "items", 300, D);
  EmbeddingBag<float> tags(store, "tags", 20, D, BagPooling::Sum);
  PositionalEmbedding<float> pos(store, "pos", T, D);
  TransformerConfig tc;
  tc.d_model = D;
  tc.heads = 2;
  tc.ffn = 32;
  tc.dropout = 0.1;
  TransformerEncoder<float> enc(store, "enc", tc, 2);
  SequencePooling<float> pool;
  MLP<float> mlp(store, "mlp", D, MLPConfig{{64, 32, 2}, Activation::ReLU, 0.1, false});
  store.allocate();

  Tensor<index_t> seq({B, T}), len({B}), tag_ids({B * 2}), offsets({B + 1});
  for (index_t i = 0; i < B * T; ++i) seq[i] = (i * 37) % 300;
  for (index_t b = 0; b < B; ++b) len[b] = b % (T + 1);
  for (index_t i = 0; i < B * 2; ++i) tag_ids[i] = i % 20;
  for (index_t b = 0; b <= B; ++b) offsets[b] = 2 * b;
  Tensor<float> e({B, T, D}), h({B, T, D}), pooled({B, D}), bag({B, D}), y({B, 2});
  Tensor<float> dy({B, 2}, 0.01f), dpooled({B, D}), dh({B, T, D}), de({B, T, D});
  Embedding<float>::Context ec;
  EmbeddingBag<float>::Context bc;
  PositionalEmbedding<float>::Context pc;
  TransformerEncoder<float>::Context tctx;
  SequencePooling<float>::Context sc;
  MLP<float>::Context mc;

  auto step = [&](std::uint64_t s) {
    const Mode mode = Mode::train(s);
    items.forward(ec, seq.view(), e.view().reshaped({B * T, D}));
    pos.forward(pc, e.view(), e.view());
    enc.forward(tctx, e.view(), len.view(), h.view(), mode);
    pool.forward(sc, h.view(), len.view(), pooled.view());
    tags.forward(bc, tag_ids.view(), offsets.view(), {}, bag.view());
    kernels::residual_add(kernels::cpu, pooled.data(), pooled.data(), bag.data(), B * D);
    mlp.forward(mc, pooled.view(), y.view(), mode);
    mlp.backward(mc, dy.view(), dpooled.view());
    tags.backward(bc, dpooled.view());
    pool.backward(sc, dpooled.view(), dh.view());
    enc.backward(tctx, dh.view(), de.view());
    pos.backward(pc, de.view(), de.view());
    items.backward(ec, de.view().reshaped({B * T, D}));
    for (index_t i = 0; i < store.size(); ++i) store.values()[i] -= 0.01f * store.grads()[i];
    store.zero_grad();
  };
  step(0);  // the first step sizes every workspace
  step(1);
  g_allocations = 0;
  g_counting = true;
  step(2);
  step(3);
  g_counting = false;
  CHECK(g_allocations.load() == 0);
  // The counter works: a deliberate allocation is seen.
  g_counting = true;
  { std::vector<int> v(10); (void)v; }
  g_counting = false;
  CHECK(g_allocations.load() == 1);
}

#include "models/model_fixtures.hpp"

TEST_CASE("workspaces: a steady-state Trainer::train_step does not allocate (every architecture)", "[allocation]") {
  for (Architecture arch : {Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE, Architecture::ESMM}) {
    for (Weighting weighting : {Weighting::Fixed, Weighting::Uncertainty, Weighting::GradNorm}) {
      const ModelConfig c = testing::tiny_config(arch);
      MultiTaskModel<float> model(c);
      const Batch<float> batch = testing::tiny_batch<float>(c, 24, 5);
      TrainConfig t;
      t.progress = false;
      t.clip_norm = 1.0;
      t.accumulation = 2;
      t.weighting = weighting;
      t.optimizer = OptimizerConfig::adamw(1e-3, 0.01);
      if (weighting == Weighting::GradNorm && arch == Architecture::ESMM) continue;  // no shared layer
      Trainer<float> trainer(model, t);
      for (int i = 0; i < 4; ++i) trainer.train_step(batch);  // sizes every buffer
      g_allocations = 0;
      g_counting = true;
      for (int i = 0; i < 4; ++i) trainer.train_step(batch);
      g_counting = false;
      CAPTURE(architecture_name(arch), weighting_name(weighting));
      CHECK(g_allocations.load() == 0);
    }
  }
}
