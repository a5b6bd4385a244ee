// The op table's bench rows (tests/ops/cases.hpp, `bench = true`), timed on
// every backend: the same rows the tests check, so a new op is benchmarked
// by adding its row. Forward and backward are timed separately; inputs are
// prepared once, outside the timed loop.
//
//   OMP_WAIT_POLICY=passive mtrec_bench --benchmark_filter='^op/'
#include <benchmark/benchmark.h>

#include <string>

#include "ops/cases.hpp"

namespace {

using namespace optable;

// Registered at start-up: one benchmark per (row, backend, direction).
const bool registered = [] {
  static const std::vector<OpCase> cases = all_cases();
  for (const OpCase& c : cases) {
    if (!c.bench) continue;
    for (Dev dev : bench_devices()) {
      const std::string base = "op/" + c.op + "/" + dev_name(dev) + "/" + c.shape;
      benchmark::RegisterBenchmark((base + "/forward").c_str(), [&c, dev](benchmark::State& state) {
        const Data d = case_data(c);
        Bufs<float> b = make_bufs<float>(c, d);
        for (auto _ : state) {
          c.fwd_f(dev, b);
          benchmark::ClobberMemory();
        }
      })->UseRealTime();
      if (!c.has_backward()) continue;
      benchmark::RegisterBenchmark((base + "/backward").c_str(), [&c, dev](benchmark::State& state) {
        const Data d = case_data(c);
        Bufs<float> b = make_bufs<float>(c, d);
        c.fwd_f(dev, b);
        for (auto _ : state) {
          c.bwd_f(dev, b);
          benchmark::ClobberMemory();
        }
      })->UseRealTime();
    }
  }
  return true;
}();

}  // namespace
