// ThreadSanitizer check of concurrent serving: 8 threads call the const
// MultiTaskModel<float>::predict on ONE model at once, each with its own
// Workspace, and must reproduce the serial results bit for bit. Built without
// OpenMP and with -fsanitize=thread (tests/tsan/CMakeLists.txt, run by
// .ci/run); a data race anywhere on the predict path fails it.
#include "models/model_fixtures.hpp"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

using namespace mtrec;

namespace {
int check_architecture(Architecture arch, bool ranking) {
  const ModelConfig c = ranking ? testing::tiny_ranking_config(arch) : testing::tiny_config(arch);
  MultiTaskModel<float> model(c);
  testing::randomise_parameters(model.parameters(), 9, 0.3);
  const MultiTaskModel<float>& frozen = model;
  constexpr int kThreads = 8, kReps = 60;
  std::vector<Batch<float>> batches;
  for (int i = 0; i < kThreads; ++i)
    batches.push_back(testing::tiny_batch<float>(model.config(), 48 + i, std::uint64_t(100 + i)));
  std::vector<Tensor<float>> serial(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    MultiTaskModel<float>::Workspace ws;
    frozen.predict(ws, batches[std::size_t(i)], serial[std::size_t(i)]);
  }
  std::vector<int> mismatches(kThreads, 0);
  std::atomic<int> ready{0};  // start together, so the predicts overlap
  std::vector<std::thread> pool;
  for (int i = 0; i < kThreads; ++i)
    pool.emplace_back([&, i] {
      MultiTaskModel<float>::Workspace ws;
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      for (int rep = 0; rep < kReps; ++rep) {
        // Alternate this thread's batch with a neighbour's so workspaces get resized.
        const int b = rep % 2 == 0 ? i : (i + 1) % kThreads;
        Tensor<float> out;
        frozen.predict(ws, batches[std::size_t(b)], out);
        const Tensor<float>& want = serial[std::size_t(b)];
        if (!(out.shape() == want.shape()) ||
            std::memcmp(out.data(), want.data(), sizeof(float) * std::size_t(want.numel())) != 0)
          ++mismatches[std::size_t(i)];
      }
    });
  for (auto& t : pool) t.join();
  int bad = 0;
  for (int m : mismatches) bad += m;
  std::printf("%-14s%s: %d threads x %d predicts, %d mismatches with the serial results\n",
              architecture_name(arch), ranking ? " (ranking)" : "", kThreads, kReps, bad);
  return bad;
}
}  // namespace

int main() {
  int bad = 0;
  for (Architecture a : {Architecture::SingleTask, Architecture::SharedBottom, Architecture::MMoE, Architecture::PLE,
                         Architecture::ESMM})
    bad += check_architecture(a, false);
  bad += check_architecture(Architecture::MMoE, true);
  std::printf("tsan predict: %s\n", bad == 0 ? "all results equal the serial ones" : "MISMATCHES");
  return bad == 0 ? 0 : 1;
}
