// mtrec_bench entry point: runs the peak probe (bench/peak.hpp) once before
// any benchmark, records its numbers in the output's context, then runs the
// selected benchmarks.
//
// Run with OMP_WAIT_POLICY=passive on a shared or loaded machine: spinning
// OpenMP workers otherwise steal the cores the other threads need.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "peak.hpp"

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  if (!wait) std::fprintf(stderr, "[mtrec_bench] note: OMP_WAIT_POLICY is unset; use OMP_WAIT_POLICY=passive on a shared machine\n");
  const mtrec_bench::Peak& p = mtrec_bench::peak();
  benchmark::AddCustomContext("mtrec_peak_isa", p.isa);
  benchmark::AddCustomContext("mtrec_peak_threads", std::to_string(p.threads));
  benchmark::AddCustomContext("mtrec_peak_fma_gflops", std::to_string(p.fma_flops * 1e-9));
  benchmark::AddCustomContext("mtrec_peak_triad_gbs", std::to_string(p.triad_bytes * 1e-9));
  benchmark::AddCustomContext("omp_wait_policy", wait ? wait : "(unset)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
