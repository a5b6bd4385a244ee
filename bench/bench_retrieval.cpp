// Retrieval benchmark: exact top-K and (with hnswlib) HNSW on one table of
// N items x dim, side by side in one run.
//
//   mtrec_bench_retrieval [--rows 1000000] [--dim 64] [--k 100] [--queries 200]
//                         [--M 16] [--ef-construction 100] [--ef 128,256,512]
//
// Prints, as a markdown table:
//   triad          the triad probe (bench/peak.hpp), best of 10 passes: the
//                  machine's streaming bandwidth at this thread count
//   exact          median latency of ExactRetriever::search (top-k, 20 rows
//                  excluded), and that latency as a % of the time to stream the
//                  table once at the triad bandwidth (issue 12 target: >= 50 %)
//   hnsw ef=E      build time, median latency and recall@k against the exact
//                  results over the same queries (target: recall >= 0.95 at
//                  >= 20x the exact speed)
// The table is clustered like trained item embeddings (points around 1000
// random centres), the queries drawn the same way. Threads: OpenMP's.
#include <mtrec/mtrec.hpp>
#include <mtrec/serve/hnsw.hpp>  // this program's one translation unit that includes hnswlib

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "peak.hpp"

using namespace mtrec;

namespace {

std::vector<float> clustered(index_t n, index_t dim, std::uint64_t seed) {
  RandomStream centres(7, 1), rs(seed, 2);
  std::vector<float> v(std::size_t(n * dim));
#pragma omp parallel for schedule(static)
  for (index_t i = 0; i < n; ++i) {
    const index_t c = index_t(rs.uniform(std::uint64_t(i)) * 1000) % 1000;
    for (index_t j = 0; j < dim; ++j)
      v[std::size_t(i * dim + j)] = float(centres.normal(std::uint64_t(c * dim + j)) +
                                          0.5 * rs.normal(std::uint64_t(n + i * dim + j)));
  }
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  index_t N = 1000000, dim = 64, k = 100, Q = 200, M = 16, efc = 100;
  std::vector<index_t> efs = {128, 256, 512};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const index_t v = std::atol(argv[i + 1]);
    if (a == "--rows") N = v;
    else if (a == "--dim") dim = v;
    else if (a == "--k") k = v;
    else if (a == "--queries") Q = v;
    else if (a == "--M") M = v;
    else if (a == "--ef-construction") efc = v;
    else if (a == "--ef") {
      efs.clear();
      for (const char* p = argv[i + 1]; *p;) {
        efs.push_back(std::atol(p));
        p = std::strchr(p, ',');
        if (!p) break;
        ++p;
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  const int threads = mtrec_bench::omp_threads();
  const mtrec_bench::Peak& pk = mtrec_bench::peak();
  const std::vector<float> table = clustered(N, dim, 3), queries = clustered(Q, dim, 4);
  const ConstView<float> tv(table.data(), {N, dim});
  std::vector<index_t> seen;
  for (index_t i = 0; i < 20; ++i) seen.push_back(i * (N / 20));

  ExactRetriever<float> exact(Cpu{}, tv);
  std::vector<std::vector<index_t>> truth(static_cast<std::size_t>(Q));
  std::vector<double> t_exact;
  (void)exact.search(ConstView<float>(queries.data(), {dim}), k, seen);  // warm
  for (index_t q = 0; q < Q; ++q) {
    const double t0 = now_s();
    const auto& r = exact.search(ConstView<float>(queries.data() + q * dim, {dim}), k, seen);
    t_exact.push_back(now_s() - t0);
    for (const auto& s : r) truth[std::size_t(q)].push_back(s.row);
  }
  const double stream_s = double(N) * double(dim) * 4.0 / pk.triad_bytes;
  const double ex = median(t_exact);
  std::printf("| measure | value |\n|---|---|\n");
  std::printf("| table | %ld x %ld floats (%.0f MB), k = %ld, %ld queries, %d threads |\n", long(N), long(dim),
              double(N) * double(dim) * 4e-6, long(k), long(Q), threads);
  std::printf("| triad bandwidth | %.1f GB/s (one table pass: %.2f ms) |\n", pk.triad_bytes * 1e-9, stream_s * 1e3);
  std::printf("| exact top-%ld, median | %.2f ms = %.0f %% of the streaming time |\n", long(k), ex * 1e3,
              100.0 * stream_s / ex);
#if MTREC_HAS_HNSWLIB
  HnswParams p;
  p.M = M;
  p.ef_construction = efc;
  p.threads = threads;
  const double b0 = now_s();
  HnswIndex idx(tv, p);
  std::printf("| hnsw build (M=%ld, ef_construction=%ld) | %.1f s |\n", long(M), long(efc), now_s() - b0);
  for (index_t ef : efs) {
    if (ef < k + index_t(seen.size())) continue;
    std::vector<double> t;
    double hits = 0;
    std::vector<ScoredItem> out;
    for (index_t q = 0; q < Q; ++q) {
      const double t0 = now_s();
      idx.search_into(out, ConstView<float>(queries.data() + q * dim, {dim}), k, seen, ef);
      t.push_back(now_s() - t0);
      for (const auto& s : out)
        hits += std::find(truth[std::size_t(q)].begin(), truth[std::size_t(q)].end(), s.row) != truth[std::size_t(q)].end();
    }
    const double lat = median(t);
    std::printf("| hnsw ef=%ld, median | %.3f ms, %.0fx the exact speed, recall@%ld %.3f |\n", long(ef), lat * 1e3,
                ex / lat, long(k), hits / double(Q * k));
  }
#else
  std::printf("| hnsw | not built (configure with -DMTREC_WITH_HNSWLIB=ON, needs libhnswlib-dev) |\n");
#endif
  return 0;
}
