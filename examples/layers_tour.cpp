// layers_tour: a tour of mtrec's layers on a toy sequence-regression task.
//
// Every item has a hidden value v[item] in [-1, 1]. A training example is a
// variable-length sequence of item IDs; its target is a position-weighted
// mean of the items' values. The model learns the item values (Embedding),
// where they sit (PositionalEmbedding), mixes the sequence (TransformerEncoder,
// padding masked by length), pools it (SequencePooling) and regresses the
// target (MLP). It trains with plain SGD straight on the parameter store's
// flat block and prints the held-out loss as it falls.
//
// Self-contained: the data is generated from a fixed seed; runs in about a second.
#include <mtrec/mtrec.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

using namespace mtrec;

namespace {

constexpr index_t kItems = 64;   // vocabulary size; ID 0 is padding
constexpr index_t kMaxLen = 8;   // sequence length T
constexpr index_t kDim = 16;     // model width D
constexpr index_t kBatch = 32;
constexpr int kSteps = 200;
constexpr float kLearningRate = 0.05f;
constexpr std::uint64_t kSeed = 2024;

struct Dataset {
  std::vector<index_t> ids;      // (N, T), padded with 0
  std::vector<index_t> lengths;  // (N)
  std::vector<float> target;     // (N)
  index_t size() const { return index_t(lengths.size()); }
};

Dataset make_dataset(index_t n, std::uint64_t stream) {
  const RandomStream values(kSeed, 1), rs(kSeed, stream);
  Dataset d;
  d.ids.assign(std::size_t(n * kMaxLen), 0);
  d.lengths.resize(std::size_t(n));
  d.target.resize(std::size_t(n));
  for (index_t s = 0; s < n; ++s) {
    const index_t len = 1 + index_t(rs.below(std::uint64_t(s) * 64, kMaxLen));
    double num = 0, den = 0;
    for (index_t t = 0; t < len; ++t) {
      const index_t item = 1 + index_t(rs.below(std::uint64_t(s) * 64 + 1 + std::uint64_t(t), kItems - 1));
      const double w = 1.0 + 0.5 * double(t % 2);  // odd positions count more
      d.ids[std::size_t(s * kMaxLen + t)] = item;
      num += w * (2.0 * values.uniform(std::uint64_t(item)) - 1.0);
      den += w;
    }
    d.lengths[std::size_t(s)] = len;
    d.target[std::size_t(s)] = float(num / den);
  }
  return d;
}

struct Model {
  ParameterStore<float> store{kSeed};
  Embedding<float> item{store, "item", kItems, kDim, Init::normal(0.0, 0.1)};
  PositionalEmbedding<float> pos{store, "pos", kMaxLen, kDim};
  TransformerEncoder<float> encoder;
  SequencePooling<float> pool{SequencePoolMode::Mean};
  MLP<float> head;

  Model() {
    TransformerConfig c;
    c.d_model = kDim;
    c.heads = 2;
    c.ffn = 32;
    c.dropout = 0.1;
    encoder = TransformerEncoder<float>(store, "encoder", c, /*num_layers=*/2);
    head = MLP<float>(store, "head", kDim, MLPConfig{{32, 1}, Activation::GELU, 0.0, /*activate_output=*/false});
    store.allocate();
  }
};

// Buffers and contexts for one batch; reused every step (no allocation after the first).
struct Step {
  Tensor<index_t> ids, lengths;
  Tensor<float> e, h, p, y, dy, dp, dh, de;
  Embedding<float>::Context ec;
  PositionalEmbedding<float>::Context pc;
  TransformerEncoder<float>::Context tc;
  SequencePooling<float>::Context sc;
  MLP<float>::Context mc;
};

// Forward on rows [first, first + B) of the data set; returns the mean squared error.
float forward(const Model& m, Step& s, const Dataset& d, index_t first, index_t B, const Mode& mode) {
  s.ids.resize({B, kMaxLen});
  s.lengths.resize({B});
  std::copy_n(d.ids.begin() + first * kMaxLen, B * kMaxLen, s.ids.data());
  std::copy_n(d.lengths.begin() + first, B, s.lengths.data());
  s.e.resize({B, kMaxLen, kDim});
  s.h.resize({B, kMaxLen, kDim});
  s.p.resize({B, kDim});
  s.y.resize({B, 1});
  m.item.forward(s.ec, s.ids.view(), s.e.view().reshaped({B * kMaxLen, kDim}));
  m.pos.forward(s.pc, s.e.view(), s.e.view());  // in place
  m.encoder.forward(s.tc, s.e.view(), s.lengths.view(), s.h.view(), mode);
  m.pool.forward(s.sc, s.h.view(), s.lengths.view(), s.p.view());
  m.head.forward(s.mc, s.p.view(), s.y.view(), mode);
  s.dy.resize({B, 1});
  double loss = 0;
  for (index_t b = 0; b < B; ++b) {
    const float err = s.y[b] - d.target[std::size_t(first + b)];
    loss += double(err) * err;
    s.dy[b] = 2.0f * err / float(B);  // d(mean squared error) / dy
  }
  return float(loss / double(B));
}

void backward(const Model& m, Step& s) {
  const index_t B = s.y.dim(0);
  s.dp.resize({B, kDim});
  s.dh.resize({B, kMaxLen, kDim});
  s.de.resize({B, kMaxLen, kDim});
  m.head.backward(s.mc, s.dy.view(), s.dp.view());
  m.pool.backward(s.sc, s.dp.view(), s.dh.view());
  m.encoder.backward(s.tc, s.dh.view(), s.de.view());
  m.pos.backward(s.pc, s.de.view(), s.de.view());
  m.item.backward(s.ec, s.de.view().reshaped({B * kMaxLen, kDim}));
}

float evaluate(const Model& m, Step& s, const Dataset& d) {
  return forward(m, s, d, 0, d.size(), Mode::eval());
}

}  // namespace

int main() {
  const Dataset train = make_dataset(1024, 2), test = make_dataset(256, 3);
  Model model;
  Step step, eval_step;
  std::printf("layers_tour: %d parameters, %d SGD steps of %d sequences (T=%d, D=%d)\n", int(model.store.size()),
              kSteps, int(kBatch), int(kMaxLen), int(kDim));

  const float first_loss = evaluate(model, eval_step, test);
  std::printf("step %4d  held-out mse %.5f\n", 0, first_loss);
  float last_loss = first_loss;
  for (int it = 1; it <= kSteps; ++it) {
    const index_t first = (index_t(it - 1) * kBatch) % train.size();
    forward(model, step, train, first, kBatch, Mode::train(std::uint64_t(it), kSeed));
    backward(model, step);
    // Plain SGD over the whole flat block (dense parameters and tables).
    float* w = model.store.values();
    const float* g = model.store.grads();
    for (index_t i = 0; i < model.store.size(); ++i) w[i] -= kLearningRate * g[i];
    model.store.zero_grad();
    if (it % 25 == 0) {
      last_loss = evaluate(model, eval_step, test);
      std::printf("step %4d  held-out mse %.5f\n", it, last_loss);
    }
  }
  std::printf("{\"example\":\"layers_tour\",\"steps\":%d,\"first_loss\":%.6f,\"last_loss\":%.6f}\n", kSteps,
              first_loss, last_loss);
  return std::isfinite(last_loss) && last_loss < first_loss ? 0 : 1;
}
