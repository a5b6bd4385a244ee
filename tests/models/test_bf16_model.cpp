// Mixed precision (ModelConfig::precision = BF16): the Linear forward and
// input-gradient products as bf16 GEMMs with fp32 accumulation (the weight
// gradient stays fp32). Each case runs on the path this machine
// has and on the emulated path (forced with set_bf16_default_path), so CI on
// a machine without bf16 units still runs the layer code:
//  * Linear forward and backward against double products of the
//    bf16-rounded operands, element by element within the fp32 bound;
//  * a model's bf16 predictions near its fp32 ones (same weights) but not equal;
//  * training in bf16 bit for bit the same at 1 and 2 threads;
//  * the weight packs follow the optimizer: after training, predictions equal
//    those of a model loaded from its checkpoint;
//  * precision travels in the config JSON (absent: fp32).
#include "models/model_fixtures.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>

using namespace mtrec;

namespace {

namespace kb = mtrec::kernels;

std::vector<kb::Bf16Path> bf16_model_paths() {
  std::vector<kb::Bf16Path> v = {kb::Bf16Path::emulated};
  if (kb::bf16_support().best != kb::Bf16Path::fp32) v.push_back(kb::bf16_support().best);
  return v;
}

// Runs fn with the default bf16 path set to p, restoring it afterwards.
template <class Fn>
void with_bf16_path(kb::Bf16Path p, Fn&& fn) {
  const kb::Bf16Path before = kb::bf16_default_path();
  kb::set_bf16_default_path(p);
  fn();
  kb::set_bf16_default_path(before);
}

double bf16d(float x) { return double(kb::round_bf16(x)); }

std::string bf16_temp_path(const std::string& name) {
  return "/tmp/mtrec_test_bf16_" + std::to_string(::getpid()) + "_" + name;
}

}  // namespace

TEST_CASE("bf16 model: Linear forward and backward are exact products of bf16-rounded operands", "[bf16][layers]") {
  const index_t in = 45, out = 23;
  const double u = std::ldexp(1.0, -24);
  // 37 rows: dW's K is one block of kernels::bf16_gemm; 600 rows: two
  for (const index_t N : {index_t(37), index_t(600)})
  for (kb::Bf16Path path : bf16_model_paths()) {
    INFO(kb::bf16_path_name(path) << " N=" << N);
    with_bf16_path(path, [&] {
      ParameterStore<float> store(3);
      Linear<float> lin(store, "l", in, out);
      store.allocate();
      store.set_precision(Precision::BF16);
      REQUIRE(lin.matmul_path() == path);
      REQUIRE(lin.bf16_products());
      testing::randomise_parameters(store, 5, 0.5);
      Tensor<float> x({N, in}), y({N, out}), dy({N, out}), dx({N, in});
      testing::fill_uniform(x, 7);
      testing::fill_uniform(dy, 8);
      Linear<float>::Context ctx;
      lin.forward(ctx, x.view(), y.view());
      store.zero_grad();
      lin.backward(ctx, dy.view(), dx.view());
      const float* w = store.value(lin.weight());
      const float* bias = store.value(lin.bias());
      const float* gw = store.grad(lin.weight());
      index_t bad = 0;
      for (index_t n = 0; n < N; ++n)
        for (index_t o = 0; o < out; ++o) {  // y = x W^T + b
          double s = 0, mag = 0;
          for (index_t i = 0; i < in; ++i) {
            const double p = bf16d(x.data()[n * in + i]) * bf16d(w[o * in + i]);
            s += p;
            mag += std::fabs(p);
          }
          const double ref = s + double(bias[o]);
          if (!(std::fabs(double(y.data()[n * out + o]) - ref) <= (in + 3) * u * (mag + std::fabs(bias[o])))) ++bad;
        }
      for (index_t n = 0; n < N; ++n)
        for (index_t i = 0; i < in; ++i) {  // dx = dy W
          double s = 0, mag = 0;
          for (index_t o = 0; o < out; ++o) {
            const double p = bf16d(dy.data()[n * out + o]) * bf16d(w[o * in + i]);
            s += p;
            mag += std::fabs(p);
          }
          if (!(std::fabs(double(dx.data()[n * in + i]) - s) <= (out + 3) * u * mag)) ++bad;
        }
      for (index_t o = 0; o < out; ++o)
        for (index_t i = 0; i < in; ++i) {  // dW = dy^T x (the gradient started at zero)
          double s = 0, mag = 0;
          for (index_t n = 0; n < N; ++n) {
            const double p = bf16d(dy.data()[n * out + o]) * bf16d(x.data()[n * in + i]);
            s += p;
            mag += std::fabs(p);
          }
          // N additions, the accumulation into the gradient, two per further K block
          const double blocks = double((N + 511) / 512);
          if (!(std::fabs(double(gw[o * in + i]) - s) <= (double(N) + 3 + 2 * blocks) * u * mag)) ++bad;
        }
      CHECK(bad == 0);
      // A write through value(id) followed by mark_values_changed() is seen.
      store.value(lin.weight())[0] += 1.0f;
      store.mark_values_changed();
      Tensor<float> y2({N, out});
      lin.forward(ctx, x.view(), y2.view());
      double s = double(bias[0]);
      for (index_t i = 0; i < in; ++i) s += bf16d(x.data()[i]) * bf16d(w[i]);
      CHECK(std::fabs(double(y2.data()[0]) - s) <= 1e-4);
      CHECK(y2.data()[0] != y.data()[0]);
    });
  }
}

TEST_CASE("bf16 model: a layer narrower than 16 keeps its products in fp32", "[bf16][layers]") {
  // y = x W^T + b of a 45 -> 8 layer: the same bits in a BF16 store as in an
  // FP32 one (and a 45 -> 16 layer does not give them: it is bf16)
  for (kb::Bf16Path path : bf16_model_paths()) {
    INFO(kb::bf16_path_name(path));
    with_bf16_path(path, [&] {
      for (const index_t out : {index_t(8), index_t(16)}) {
        ParameterStore<float> s32(3), s16(3);
        Linear<float> l32(s32, "l", 45, out), l16(s16, "l", 45, out);
        s32.allocate();
        s16.allocate();
        s16.set_precision(Precision::BF16);
        testing::randomise_parameters(s32, 5, 0.5);
        testing::randomise_parameters(s16, 5, 0.5);
        CHECK(l16.bf16_products() == (out >= 16));
        Tensor<float> x({30, 45}), y32({30, out}), y16({30, out});
        testing::fill_uniform(x, 7);
        Linear<float>::Context c32, c16;
        l32.forward(c32, x.view(), y32.view());
        l16.forward(c16, x.view(), y16.view());
        bool same = true;
        for (index_t e = 0; e < y32.numel(); ++e) same = same && y32.data()[e] == y16.data()[e];
        CHECK(same == (out < 16));
      }
    });
  }
}

TEST_CASE("bf16 model: predictions stay near fp32 and training is deterministic across threads", "[bf16][training]") {
  for (kb::Bf16Path path : bf16_model_paths()) {
    INFO(kb::bf16_path_name(path));
    with_bf16_path(path, [&] {
      for (Architecture a : {Architecture::MMoE, Architecture::PLE, Architecture::ESMM}) {
        INFO(architecture_name(a));
        ModelConfig c32 = testing::tiny_config(a);
        // layers of 16 and more (narrower ones stay fp32: bf16_products())
        c32.expert = {24, 16};
        c32.bottom = {24, 16};
        for (TaskSpec& t : c32.tasks) t.tower = {16};
        ModelConfig c16 = c32;
        c16.precision = Precision::BF16;
        MultiTaskModel<float> m32(c32), m16(c16);
        CHECK(m16.matmul_path() == path);
        CHECK(m32.matmul_path() == kb::Bf16Path::fp32);
        const Batch<float> b = testing::tiny_batch<float>(c32, 40, 11);
        MultiTaskModel<float>::Workspace w32, w16;
        Tensor<float> p32, p16;
        m32.predict(w32, b, p32);
        m16.predict(w16, b, p16);
        REQUIRE(p32.shape() == p16.shape());
        double max_diff = 0;
        for (index_t i = 0; i < p32.numel(); ++i)
          max_diff = std::max(max_diff, std::fabs(double(p32.data()[i]) - double(p16.data()[i])));
        INFO("max |bf16 - fp32| over predictions: " << max_diff);
        CHECK(max_diff <= 0.02);
        CHECK(max_diff > 0);  // the bf16 products ran

        // Training: the same bits at 1 and 2 threads.
        std::vector<float> params[2];
        for (int t = 0; t < 2; ++t) {
          testing::with_threads(t + 1, [&] {
            MultiTaskModel<float> m(c16);
            TrainConfig tc;
            tc.epochs = 2;
            tc.batch_size = 16;
            tc.optimizer = OptimizerConfig::adam(1e-2);
            tc.progress = false;
            Trainer<float> tr(m, tc);
            tr.fit(b);
            params[t] = m.parameters().values_host(0);
            for (ParamId id = 1; id < m.parameters().count(); ++id) {
              const auto v = m.parameters().values_host(id);
              params[t].insert(params[t].end(), v.begin(), v.end());
            }
            if (t == 0) {
              // The weight packs followed the optimizer: the trained model
              // predicts as a model rebuilt from its checkpoint does.
              const std::string file = bf16_temp_path(std::string(architecture_name(a)) + ".safetensors");
              save_checkpoint(file, m);
              auto loaded = load_checkpoint<float>(file);
              std::remove(file.c_str());
              CHECK(loaded->config().precision == Precision::BF16);
              MultiTaskModel<float>::Workspace wa, wb;
              Tensor<float> pa, pb;
              m.predict(wa, b, pa);
              loaded->predict(wb, b, pb);
              CHECK(testing::bitwise_equal(pa.data(), pb.data(), pa.numel()));
              m16.predict(w16, b, p32);
              CHECK(!testing::bitwise_equal(pa.data(), p32.data(), pa.numel()));  // training moved it
            }
          });
        }
        CHECK(params[0] == params[1]);
      }
    });
  }
}

TEST_CASE("bf16 model: precision in the config JSON, fp32 when absent", "[bf16][checkpoint]") {
  ModelConfig c = testing::tiny_config(Architecture::MMoE);
  c.precision = Precision::BF16;
  json::Value j = config_to_json(c);
  CHECK(j.dump().find("\"precision\":\"bf16\"") != std::string::npos);
  CHECK(config_from_json(j).precision == Precision::BF16);
  std::string text = j.dump();
  const std::string key = ",\"precision\":\"bf16\"";
  const std::size_t at = text.find(key);
  REQUIRE(at != std::string::npos);
  text.erase(at, key.size());
  CHECK(config_from_json(json::parse(text)).precision == Precision::FP32);
  std::string bad = j.dump();
  bad.replace(bad.find("\"bf16\""), 6, "\"fp8\"");
  testing::require_error([&] { (void)config_from_json(json::parse(bad)); }, {"precision", "fp32", "bf16", "fp8"});
}
