// Approximate retrieval through hnswlib (serve/hnsw.hpp), against the exact
// search (ExactRetriever). Compiled only when the build has MTREC_WITH_HNSWLIB
// and hnswlib's headers (libhnswlib-dev); tools/test.sh and CI turn it on.
// The only translation unit of the test binaries that includes hnswlib.
#include "models/model_fixtures.hpp"

// Not in the umbrella header (hnswlib's headers may be included by one
// translation unit only); absent from a single-header-only include path.
#if __has_include(<mtrec/serve/hnsw.hpp>)
#include <mtrec/serve/hnsw.hpp>
#endif

#if defined(MTREC_HAS_HNSWLIB) && MTREC_HAS_HNSWLIB

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace mtrec;

namespace {

// N points around 50 random centres in dim dimensions (clustered, as trained
// item embeddings are), plus queries drawn the same way.
std::vector<float> clustered(index_t n, index_t dim, std::uint64_t seed) {
  RandomStream centres(7, 1), rs(seed, 2);
  std::vector<float> v(std::size_t(n * dim));
  for (index_t i = 0; i < n; ++i) {
    const index_t c = index_t(rs.uniform(std::uint64_t(i)) * 50) % 50;
    for (index_t j = 0; j < dim; ++j)
      v[std::size_t(i * dim + j)] = float(centres.normal(std::uint64_t(c * dim + j)) +
                                          0.3 * rs.normal(std::uint64_t(n + i * dim + j)));
  }
  return v;
}

std::string hnsw_temp_path(const char* tag) {
  return (std::filesystem::temp_directory_path() /
          (std::string("mtrec_hnsw_") + tag + "_" + std::to_string(::getpid()) + ".hnsw"))
      .string();
}

}  // namespace

TEST_CASE("hnsw: recall@10 against the exact search, exclusion and ties", "[retrieval][hnsw]") {
  const index_t N = 4000, dim = 16, Q = 50, k = 10;
  const std::vector<float> table = clustered(N, dim, 3), queries = clustered(Q, dim, 4);
  HnswIndex idx(ConstView<float>(table.data(), {N, dim}), {16, 100, 64, 100, 1});
  ExactRetriever<float> exact(Cpu{}, ConstView<float>(table.data(), {N, dim}));
  double hits = 0;
  for (index_t q = 0; q < Q; ++q) {
    const ConstView<float> qv(queries.data() + q * dim, {dim});
    const std::vector<index_t> seen = {q, q + 100};
    const auto truth = exact.search(qv, k, seen);
    const auto& got = idx.search(qv, k, seen, 128);
    REQUIRE(got.size() == std::size_t(k));
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].row != q);
      CHECK(got[i].row != q + 100);
      if (i > 0) CHECK((got[i].score < got[i - 1].score || (got[i].score == got[i - 1].score && got[i].row > got[i - 1].row)));
      for (const auto& t : truth) hits += t.row == got[i].row;
      double dot = 0;  // the score is <q, row>, recovered from the L2 distance
      for (index_t c = 0; c < dim; ++c) dot += double(qv[c]) * double(table[std::size_t(got[i].row * dim + c)]);
      CHECK(got[i].score == Approx(dot).margin(1e-3));
    }
  }
  const double recall = hits / double(Q * k);
  CAPTURE(recall);
  CHECK(recall >= 0.95);
}

TEST_CASE("hnsw: one thread builds the same graph, and save then load gives the same results", "[retrieval][hnsw]") {
  const index_t N = 2000, dim = 8;
  const std::vector<float> table = clustered(N, dim, 5), q = clustered(1, dim, 6);
  const ConstView<float> tv(table.data(), {N, dim}), qv(q.data(), {dim});
  HnswIndex a(tv), b(tv);
  const std::vector<ScoredItem> ra = a.search(qv, 20), rb = b.search(qv, 20);
  REQUIRE(ra.size() == 20u);
  for (std::size_t i = 0; i < ra.size(); ++i) {
    CHECK(ra[i].row == rb[i].row);
    CHECK(ra[i].score == rb[i].score);
  }
  const std::string path = hnsw_temp_path("roundtrip");
  a.save(path);
  HnswIndex c = HnswIndex::load(path, N, dim);
  const std::vector<ScoredItem> rc = c.search(qv, 20);
  for (std::size_t i = 0; i < ra.size(); ++i) CHECK(rc[i].row == ra[i].row);
  // The wrong table, a damaged file and a missing sidecar are clear errors.
  testing::require_error([&] { HnswIndex::load(path, N + 1, dim); }, {"HnswIndex::load", "2000 x 8", "2001 x 8"});
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  testing::require_error([&] { HnswIndex::load(path, N, dim); }, {"HnswIndex::load", "checksum"});
  std::filesystem::resize_file(path, 50);
  testing::require_error([&] { HnswIndex::load(path, N, dim); }, {"HnswIndex::load", "50 bytes", "truncated"});
  std::remove((path + ".json").c_str());
  testing::require_error([&] { HnswIndex::load(path, N, dim); }, {"HnswIndex::load", ".json"});
  std::remove(path.c_str());
}

TEST_CASE("bad input: hnsw names the field and the expected value", "[retrieval][hnsw][bad-input]") {
  const index_t N = 100, dim = 4;
  std::vector<float> table = clustered(N, dim, 8);
  HnswIndex idx(ConstView<float>(table.data(), {N, dim}));
  const std::vector<float> q = {1, 2, 3, 4}, short_q = {1, 2};
  testing::require_error([&] { idx.search(ConstView<float>(short_q.data(), {2}), 3); },
                         {"HnswIndex::search", "query expected 4 values but got 2"});
  testing::require_error([&] { idx.search(ConstView<float>(q.data(), {4}), 3, {100}); },
                         {"HnswIndex::search", "exclude[0] = 100", "100 rows"});
  testing::require_error([&] { idx.search(ConstView<float>(q.data(), {4}), 50, {}, 20); },
                         {"HnswIndex::search", "ef >= k", "50", "20"});
  table[5] = std::nanf("");
  testing::require_error([&] { HnswIndex bad(ConstView<float>(table.data(), {N, dim})); },
                         {"HnswIndex", "row 1 column 1", "finite"});
}

#endif  // MTREC_HAS_HNSWLIB
