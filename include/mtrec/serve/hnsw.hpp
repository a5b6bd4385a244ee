// mtrec: approximate top-K retrieval through hnswlib (optional).
//
// Not part of <mtrec/mtrec.hpp>: include <mtrec/serve/hnsw.hpp> yourself, in
// ONE translation unit of a program. hnswlib 0.6.2 (Debian 12) defines
// non-inline functions and globals in its headers, so a second translation
// unit including it breaks the link with "multiple definition" errors.
//
// Present when MTREC_WITH_HNSWLIB is set (CMake: -DMTREC_WITH_HNSWLIB=ON) and
// <hnswlib/hnswlib.h> is found (Debian: libhnswlib-dev, header-only). An HNSW
// graph (Malkov & Yashunin) over a table's rows in inner-product space:
//
//   HnswIndex idx(table_view, {/*M*/ 16, /*ef_construction*/ 200});  // (N, dim) host floats
//   idx.save("model.safetensors.hnsw");       // beside the checkpoint; atomic
//   HnswIndex back = HnswIndex::load("model.safetensors.hnsw", N, dim);
//   const auto& top = back.search(q_view, 100, seen, /*ef*/ 256);
//
//   - Maximum inner product becomes nearest neighbour (Bachrach et al. 2014):
//     each row x is stored as [x, sqrt(R^2 - |x|^2)], R the largest row norm,
//     and a query q as [q, 0], so |q' - x'|^2 = |q|^2 + R^2 - 2 <q, x>: the
//     nearest row in L2 is the best by inner product, and hnswlib's graph
//     works in a true metric (its inner-product space is not one, and its
//     recall suffers). Scores are <q, row> recovered from that distance,
//     best first, ties to the lower row, as ExactRetriever.
//   - `exclude` rows are dropped from the k + |exclude| nearest, so a search
//     still returns k rows when the graph finds them.
//   - ef (the search beam) trades recall for time; it must be >= k. The
//     recall at a given ef depends on the data: bench/bench_retrieval.cpp
//     measures it against the exact search.
//   - Building with threads = 1 gives the same graph for the same table and
//     seed; more threads build faster, in an order the scheduler decides, so
//     the graph (not its quality) differs run to run.
//   - save() writes the index and a JSON sidecar (`<path>.json`: rows, dim,
//     M, bytes and an FNV-1a checksum), each atomically. load() checks the
//     sidecar, the size and the checksum before hnswlib reads a byte, so a
//     truncated or altered file is a clear error, not a crash inside hnswlib.
//   - search() is const: threads may search one index concurrently, each
//     with its own result buffer (search_into).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "mtrec/core/error.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/io/atomic_file.hpp"
#include "mtrec/io/json.hpp"
#include "mtrec/kernels/mips.hpp"
#include "mtrec/serve/topk.hpp"

#if defined(MTREC_WITH_HNSWLIB) && MTREC_WITH_HNSWLIB && __has_include(<hnswlib/hnswlib.h>)
#define MTREC_HAS_HNSWLIB 1
#include <hnswlib/hnswlib.h>

namespace mtrec {

struct HnswParams {
  index_t M = 16;                // graph degree (hnswlib's M)
  index_t ef_construction = 200; // build beam
  index_t ef_search = 128;       // default search beam (search(..., ef) overrides)
  std::uint64_t seed = 100;      // hnswlib's level generator
  int threads = 1;               // build threads: 1 = the same graph every time
};

class HnswIndex {
 public:
  // Builds over the rows of table (N, dim), host memory.
  explicit HnswIndex(ConstView<float> table, const HnswParams& p = {}) : params_(p) {
    const char* op = "HnswIndex";
    check(table.shape.rank == 2 && table.shape[0] > 0 && table.shape[1] > 0, op,
          "expected a non-empty table (N, dim) but got ", table.shape);
    check(p.M >= 2 && p.M <= 1024, op, "expected M in [2, 1024] but got ", p.M);
    check(p.ef_construction >= 1 && p.ef_search >= 1, op, "expected ef_construction and ef_search >= 1 but got ",
          p.ef_construction, " and ", p.ef_search);
    check(p.threads >= 1, op, "expected threads >= 1 but got ", p.threads);
    rows_ = table.shape[0];
    dim_ = table.shape[1];
    const index_t bad = kernels::first_nonfinite(Cpu{}, table.data, table.numel());
    if (bad >= 0)
      fail(op, "table row ", bad / dim_, " column ", bad % dim_, " is ", table.data[bad], " (expected finite values)");
    // Inner product -> L2: [row, sqrt(R^2 - |row|^2)] (kernels/mips.hpp).
    const index_t D = dim_ + 1;
    std::vector<float> aug(std::size_t(rows_ * D));
    radius2_ = kernels::mips_augment(Cpu{}, aug.data(), table.data, rows_, dim_);
    space_ = std::make_unique<hnswlib::L2Space>(std::size_t(D));
    index_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(space_.get(), std::size_t(rows_), std::size_t(p.M),
                                                                std::size_t(p.ef_construction), std::size_t(p.seed));
    const float* base = aug.data();
    if (p.threads == 1) {
      for (index_t r = 0; r < rows_; ++r) index_->addPoint(base + r * D, hnswlib::labeltype(r));
    } else {
      index_->addPoint(base, 0);  // the entry point first
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 256) num_threads(p.threads)
#endif
      for (index_t r = 1; r < rows_; ++r) index_->addPoint(base + r * D, hnswlib::labeltype(r));
    }
    index_->setEf(std::size_t(p.ef_search));
  }

  // Loads an index saved by save(); `rows` and `dim` are what the caller's
  // table has (a mismatch is an error: the index was built for another table).
  static HnswIndex load(const std::string& path, index_t rows, index_t dim, index_t ef_search = 128) {
    const char* op = "HnswIndex::load";
    const std::vector<std::uint8_t> meta_bytes = io::read_file_bytes(path + ".json", op);
    json::Value meta;
    try {
      meta = json::parse(std::string(meta_bytes.begin(), meta_bytes.end()));
    } catch (const Error& e) {
      fail(op, "'", path, ".json': ", e.what());
    }
    auto num = [&](const char* key) -> std::int64_t {
      const json::Value* v = meta.is_object() ? meta.find(key) : nullptr;
      check(v != nullptr && v->is_int(), op, "'", path, ".json' expected an integer '", key, "'");
      return v->as_int();
    };
    const json::Value* fmt = meta.is_object() ? meta.find("format") : nullptr;
    check(fmt && fmt->is_string() && fmt->as_string() == "mtrec.hnsw", op, "'", path,
          ".json' expected format mtrec.hnsw");
    const index_t r = index_t(num("rows")), d = index_t(num("dim")), M = index_t(num("M"));
    const json::Value* rad = meta.find("radius2");
    check(rad && rad->is_number() && std::isfinite(rad->as_double()) && rad->as_double() >= 0, op, "'", path,
          ".json' expected a number radius2 >= 0");
    check(r == rows && d == dim, op, "'", path, "' indexes a table of ", r, " x ", d, " but the table has ", rows,
          " x ", dim);
    const std::vector<std::uint8_t> bytes = io::read_file_bytes(path, op);
    check(std::int64_t(bytes.size()) == num("bytes"), op, "'", path, "' has ", bytes.size(),
          " bytes but its sidecar says ", num("bytes"), " (truncated or replaced?)");
    const json::Value* sum = meta.find("fnv1a64");
    check(sum && sum->is_string() && sum->as_string() == checksum(bytes), op, "'", path,
          "' does not match the checksum in its sidecar (the file is damaged or was replaced)");
    HnswIndex h;
    h.rows_ = rows;
    h.dim_ = dim;
    h.params_.M = M;
    h.radius2_ = rad->as_double();
    h.params_.ef_search = ef_search;
    h.space_ = std::make_unique<hnswlib::L2Space>(std::size_t(dim + 1));
    try {
      h.index_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(h.space_.get(), path, false, std::size_t(rows));
    } catch (const std::exception& e) {
      fail(op, "'", path, "': hnswlib could not read it: ", e.what());
    }
    check(index_t(h.index_->cur_element_count) == rows, op, "'", path, "' holds ",
          h.index_->cur_element_count, " points but ", rows, " were expected");
    h.index_->setEf(std::size_t(ef_search));
    return h;
  }

  // Writes the index to `path` and its sidecar to `path`.json, each atomically.
  void save(const std::string& path) const {
    const char* op = "HnswIndex::save";
    const std::string tmp = path + ".hnswlib.tmp." + std::to_string(::getpid());
    index_->saveIndex(tmp);
    std::vector<std::uint8_t> bytes;
    try {
      bytes = io::read_file_bytes(tmp, op);
    } catch (...) {
      std::remove(tmp.c_str());
      throw;
    }
    std::remove(tmp.c_str());
    io::AtomicFileWriter w(path);
    w.write(bytes.data(), bytes.size());
    w.commit();
    json::Value meta = json::Value::object();
    meta.set("format", "mtrec.hnsw");
    meta.set("rows", rows_);
    meta.set("dim", dim_);
    meta.set("M", params_.M);
    meta.set("radius2", radius2_);
    meta.set("bytes", std::int64_t(bytes.size()));
    meta.set("fnv1a64", checksum(bytes));
    const std::string text = meta.dump();
    io::AtomicFileWriter m(path + ".json");
    m.write(text.data(), text.size());
    m.commit();
  }

  index_t rows() const { return rows_; }
  index_t dim() const { return dim_; }

  // The k best rows found for q (dim values), best first; ef = 0: the
  // default beam. Writes into `out` (one per thread).
  void search_into(std::vector<ScoredItem>& out, ConstView<float> q, index_t k, const std::vector<index_t>& exclude = {},
                   index_t ef = 0) const {
    const char* op = "HnswIndex::search";
    check(q.numel() == dim_, op, "query expected ", dim_, " values but got ", q.numel());
    const index_t bad = kernels::first_nonfinite(Reference{}, q.data, q.numel());
    if (bad >= 0) fail(op, "query[", bad, "] is ", q[bad], " (expected a finite value)");
    check(k > 0, op, "expected k > 0 but got ", k);
    for (std::size_t i = 0; i < exclude.size(); ++i)
      if (exclude[i] < 0 || exclude[i] >= rows_)
        fail(op, "exclude[", i, "] = ", exclude[i], " is out of range for an index of ", rows_, " rows");
    const index_t want = std::min<index_t>(rows_, k + index_t(exclude.size()));
    const index_t beam = ef > 0 ? ef : params_.ef_search;
    check(beam >= want, op, "expected ef >= k + excluded rows = ", want, " but got ", beam);
    query_.assign(q.data, q.data + dim_);
    query_.push_back(0.0f);
    const double q2 = kernels::detail::row_norm2(q.data, dim_);
    auto found = search_knn(query_.data(), want, beam);
    out.clear();
    while (!found.empty()) {
      const auto top = found.top();
      found.pop();
      const index_t row = index_t(top.second);
      if (std::find(exclude.begin(), exclude.end(), row) == exclude.end())
        out.push_back({row, 0.5 * (q2 + radius2_ - double(top.first))});
    }
    std::sort(out.begin(), out.end(), [](const ScoredItem& a, const ScoredItem& b) {
      return a.score > b.score || (a.score == b.score && a.row < b.row);
    });
    if (index_t(out.size()) > k) out.resize(std::size_t(k));
  }
  const std::vector<ScoredItem>& search(ConstView<float> q, index_t k, const std::vector<index_t>& exclude = {},
                                        index_t ef = 0) {
    search_into(results_, q, k, exclude, ef);
    return results_;
  }

 private:
  HnswIndex() = default;

  // hnswlib's search with a beam of `ef` (its ef_ is one value for the whole
  // index, so the beam is raised through k: searchKnn uses max(ef_, k)).
  std::priority_queue<std::pair<float, hnswlib::labeltype>> search_knn(const float* q, index_t k, index_t ef) const {
    if (ef <= k || ef == params_.ef_search) return index_->searchKnn(q, std::size_t(k));
    auto wide = index_->searchKnn(q, std::size_t(ef));  // the ef best, then keep the k nearest
    while (index_t(wide.size()) > k) wide.pop();
    return wide;
  }

  static std::string checksum(const std::vector<std::uint8_t>& b) {
    std::uint64_t h = 1469598103934665603ull;
    for (std::uint8_t c : b) h = (h ^ c) * 1099511628211ull;
    char s[17];
    std::snprintf(s, sizeof(s), "%016llx", static_cast<unsigned long long>(h));
    return s;
  }

  HnswParams params_;
  index_t rows_ = 0, dim_ = 0;
  double radius2_ = 0;  // R^2: the largest squared row norm
  std::unique_ptr<hnswlib::L2Space> space_;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> index_;
  std::vector<ScoredItem> results_;
  static thread_local std::vector<float> query_;  // [q, 0], per searching thread
};
inline thread_local std::vector<float> HnswIndex::query_;

}  // namespace mtrec

#else
#define MTREC_HAS_HNSWLIB 0
#endif
