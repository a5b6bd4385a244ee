// mtrec whole-model benchmarks on the workloads of bench/workloads.hpp:
//
//   BM_model_train/<workload>/omp:<threads>   one Trainer::train_step at the
//       workload's batch: forward, losses (BCE + MSE), backward, Adam (lr 1e-3,
//       lazy row-wise for tables) and zero_grad.
//   BM_model_train_fused/<workload>/omp:<threads>   the same step with
//       OptimizerConfig::fused_tables: each table's backward fused with its
//       row-wise Adam update (the table gradient never written).
//   BM_model_predict/<workload>/batch:<B>/omp:<threads>   MultiTaskModel::predict
//       (forward in eval mode + sigmoid) at batch 1, 16, 256.
//   BM_rank_batched, BM_rank_user_once/<workload>/candidates:200/omp:<threads>
//       one user against 200 candidates: the merged rows' predict, and
//       predict_ranking with the user side once.
//
// Models, trainers, workspaces and batches are built once per process (the
// large model has ~60M parameters) and warmed up before timing, so the timed
// loop is the steady state (no allocation). Real time throughout.
//
//   OMP_WAIT_POLICY=passive mtrec_bench --benchmark_filter=BM_model --benchmark_min_time=0.3
#include <benchmark/benchmark.h>

#include <mtrec/mtrec.hpp>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "workloads.hpp"

namespace {

using mtrec::index_t;
using mtrec_bench::Workload;

struct ModelSetup {
  const Workload* w;
  mtrec::ModelConfig config;
  std::unique_ptr<mtrec::MultiTaskModel<float>> model;
  std::unique_ptr<mtrec::Trainer<float>> trainer;
  std::map<index_t, mtrec::Batch<float>> batches;  // by size
  std::map<index_t, std::unique_ptr<mtrec::MultiTaskModel<float>::Workspace>> ws;
  mtrec::Tensor<float> out;

  ModelSetup(const Workload& wl, bool fused, bool bf16 = false) : w(&wl), config(mtrec_bench::make_config(wl)) {
    if (bf16) config.precision = mtrec::Precision::BF16;
    model = std::make_unique<mtrec::MultiTaskModel<float>>(config);
    mtrec::TrainConfig t;
    t.progress = false;
    t.batch_size = wl.batch;
    t.optimizer = mtrec::OptimizerConfig::adam(1e-3);
    t.optimizer.fused_tables = fused;
    trainer = std::make_unique<mtrec::Trainer<float>>(*model, t);
  }
  const mtrec::Batch<float>& batch(index_t B) {
    auto it = batches.find(B);
    if (it == batches.end()) it = batches.emplace(B, mtrec_bench::make_batch(*w, config, B, 7 + std::uint64_t(B))).first;
    return it->second;
  }
  mtrec::MultiTaskModel<float>::Workspace& workspace(index_t B) {
    auto& p = ws[B];
    if (!p) p = std::make_unique<mtrec::MultiTaskModel<float>::Workspace>();
    return *p;
  }
};

ModelSetup& setup(const Workload& w, bool fused = false, bool bf16 = false) {
  static std::map<std::string, std::unique_ptr<ModelSetup>> cache;
  auto& p = cache[std::string(w.name) + (fused ? "/fused" : "") + (bf16 ? "/bf16" : "")];
  if (!p) p = std::make_unique<ModelSetup>(w, fused, bf16);
  return *p;
}

// Sets the OpenMP thread count for one benchmark, restores it after.
struct ThreadScope {
  int saved;
  explicit ThreadScope(int n) : saved(mtrec::num_threads()) { mtrec::set_num_threads(n); }
  ~ThreadScope() { mtrec::set_num_threads(saved); }
};

void train_steps(benchmark::State& state, const Workload* w, bool fused, bool bf16 = false) {
  ThreadScope threads(int(state.range(0)));
  ModelSetup& s = setup(*w, fused, bf16);
  if (bf16) state.SetLabel(mtrec::kernels::bf16_path_name(s.model->matmul_path()));
  const mtrec::Batch<float>& batch = s.batch(w->batch);
  for (int i = 0; i < 3; ++i) s.trainer->train_step(batch);  // sizes every buffer, touches the Adam state
  double loss = 0;
  for (auto _ : state) {
    // (Not DoNotOptimize(loss): with GCC, google/benchmark 1.7's DoNotOptimize
    // on a double lvalue can corrupt it, google/benchmark#903.)
    const mtrec::TaskLosses& l = s.trainer->train_step(batch);
    benchmark::DoNotOptimize(l.value.data());
    loss = l.value[0];
  }
  state.SetItemsProcessed(state.iterations() * w->batch);  // samples/s
  state.counters["loss0"] = loss;
}
void BM_model_train(benchmark::State& state, const Workload* w) { train_steps(state, w, false); }
void BM_model_train_fused(benchmark::State& state, const Workload* w) { train_steps(state, w, true); }
// ModelConfig::precision = BF16: the Linear products on the machine's bf16
// unit (the label names it; "fp32" where there is none).
void BM_model_train_bf16(benchmark::State& state, const Workload* w) { train_steps(state, w, false, true); }

void predict_steps(benchmark::State& state, const Workload* w, bool bf16) {
  const index_t B = state.range(0);
  ThreadScope threads(int(state.range(1)));
  ModelSetup& s = setup(*w, false, bf16);
  if (bf16) state.SetLabel(mtrec::kernels::bf16_path_name(s.model->matmul_path()));
  const mtrec::Batch<float>& batch = s.batch(B);
  auto& ws = s.workspace(B);
  for (int i = 0; i < 3; ++i) s.model->predict(ws, batch, s.out);
  for (auto _ : state) {
    s.model->predict(ws, batch, s.out);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * B);
}
void BM_model_predict(benchmark::State& state, const Workload* w) { predict_steps(state, w, false); }
void BM_model_predict_bf16(benchmark::State& state, const Workload* w) { predict_steps(state, w, true); }

// Ranking N candidates for one user (serving's second stage). The
// workload's config with ID fields 4.. and the bag item-side, ID fields 0..3
// and the behaviour sequence user-side:
//   BM_rank_batched/<workload>/candidates:N    predict() over the N merged rows
//   BM_rank_user_once/<workload>/candidates:N  predict_ranking(): the user's
//       fields and their share of every first layer once (the same numbers
//       within 1e-5: tests/models/test_ranking_user_once.cpp)
struct RankSetup {
  mtrec::ModelConfig config;
  std::unique_ptr<mtrec::MultiTaskModel<float>> model;
  mtrec::Batch<float> user, candidates, merged;
  mtrec::MultiTaskModel<float>::Workspace ws;
  mtrec::MultiTaskModel<float>::RankingWorkspace rw;
  mtrec::Tensor<float> out;

  RankSetup(const Workload& w, index_t N) : config(mtrec_bench::make_config(w)) {
    for (std::size_t f = 0; f < config.features.ids.size(); ++f) config.features.ids[f].item_side = f >= 4;
    config.features.bags[0].item_side = true;
    model = std::make_unique<mtrec::MultiTaskModel<float>>(config);
    user = mtrec_bench::make_batch(w, config, 1, 3);
    candidates = mtrec_bench::make_batch(w, config, N, 4);
    merged = candidates;
    for (std::size_t f = 0; f < 4 && f < config.features.ids.size(); ++f)
      merged.ids[f].assign(std::size_t(N), user.ids[f][0]);
    auto& seq = merged.sequences[0];
    seq.lengths.assign(std::size_t(N), user.sequences[0].lengths[0]);
    seq.ids.clear();
    for (index_t i = 0; i < N; ++i)
      seq.ids.insert(seq.ids.end(), user.sequences[0].ids.begin(), user.sequences[0].ids.end());
  }
};

RankSetup& rank_setup(const Workload& w, index_t N) {
  static std::map<std::string, std::unique_ptr<RankSetup>> cache;
  auto& p = cache[std::string(w.name) + "/" + std::to_string(N)];
  if (!p) p = std::make_unique<RankSetup>(w, N);
  return *p;
}

void BM_rank_batched(benchmark::State& state, const Workload* w) {
  ThreadScope threads(int(state.range(1)));
  RankSetup& s = rank_setup(*w, state.range(0));
  for (int i = 0; i < 3; ++i) s.model->predict(s.ws, s.merged, s.out);
  for (auto _ : state) {
    s.model->predict(s.ws, s.merged, s.out);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_rank_user_once(benchmark::State& state, const Workload* w) {
  ThreadScope threads(int(state.range(1)));
  RankSetup& s = rank_setup(*w, state.range(0));
  for (int i = 0; i < 3; ++i) s.model->predict_ranking(s.rw, s.user, s.candidates, s.out);
  for (auto _ : state) {
    s.model->predict_ranking(s.rw, s.user, s.candidates, s.out);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

// Thread counts of the model benchmarks: MTREC_BENCH_THREADS="2" by default
// (a comma list, e.g. "1,2"); the ref workload's training step and batch-256
// inference are also registered at 1 thread for the scaling measurement.
std::vector<int> bench_threads() {
  std::vector<int> out;
  const char* env = std::getenv("MTREC_BENCH_THREADS");
  const std::string s = env && *env ? env : "2";
  std::size_t pos = 0;
  while (pos < s.size()) {
    const std::size_t comma = s.find(',', pos);
    const int n = std::atoi(s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos).c_str());
    if (n >= 1) out.push_back(n);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (out.empty()) out.push_back(2);
  return out;
}

// Registered at static-initialisation time, one entry per workload.
const bool registered = [] {
  const std::vector<int> threads = bench_threads();
  for (const Workload& w : mtrec_bench::workloads()) {
    const bool ref = std::string(w.name) == "ref";
    std::vector<int> train_threads = threads, predict256_threads = threads;
    if (ref && std::find(threads.begin(), threads.end(), 1) == threads.end()) {
      train_threads.push_back(1);
      predict256_threads.push_back(1);
    }
    auto* t = benchmark::RegisterBenchmark((std::string("BM_model_train/") + w.name).c_str(), BM_model_train, &w);
    t->ArgName("omp")->UseRealTime()->Unit(benchmark::kMillisecond);
    for (int n : train_threads) t->Arg(n);
    auto* f = benchmark::RegisterBenchmark((std::string("BM_model_train_fused/") + w.name).c_str(),
                                           BM_model_train_fused, &w);
    f->ArgName("omp")->UseRealTime()->Unit(benchmark::kMillisecond);
    for (int n : threads) f->Arg(n);
    auto* tb = benchmark::RegisterBenchmark((std::string("BM_model_train_bf16/") + w.name).c_str(),
                                            BM_model_train_bf16, &w);
    tb->ArgName("omp")->UseRealTime()->Unit(benchmark::kMillisecond);
    for (int n : threads) tb->Arg(n);
    auto* pb = benchmark::RegisterBenchmark((std::string("BM_model_predict_bf16/") + w.name).c_str(),
                                            BM_model_predict_bf16, &w);
    pb->ArgNames({"batch", "omp"})->UseRealTime()->Unit(benchmark::kMillisecond);
    for (int n : threads)
      for (index_t B : {1, 256}) pb->Args({B, n});
    auto* p = benchmark::RegisterBenchmark((std::string("BM_model_predict/") + w.name).c_str(), BM_model_predict, &w);
    p->ArgNames({"batch", "omp"})->UseRealTime()->Unit(benchmark::kMillisecond);
    for (int n : threads)
      for (index_t B : {1, 16, 256}) p->Args({B, n});
    for (int n : predict256_threads)
      if (std::find(threads.begin(), threads.end(), n) == threads.end()) p->Args({256, n});
    for (auto fn : {std::make_pair("BM_rank_batched/", BM_rank_batched), std::make_pair("BM_rank_user_once/", BM_rank_user_once)}) {
      auto* r = benchmark::RegisterBenchmark((std::string(fn.first) + w.name).c_str(), fn.second, &w);
      r->ArgNames({"candidates", "omp"})->UseRealTime()->Unit(benchmark::kMillisecond);
      for (int n : threads) r->Args({200, n});
    }
  }
  return true;
}();

}  // namespace
