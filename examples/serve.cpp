// mtrec serving example: load a checkpoint and answer top-K requests from
// several threads at once, reporting latency percentiles and throughput.
//
//   serve --load model.safetensors --item-fields movieId,genres,title
//         [--threads 4] [--requests 2000] [--candidates 200] [--k 10] [--score like]
//
// A request is one user and N candidate items. The model is rebuilt from the
// checkpoint alone (its configuration is in the metadata). Requests are
// synthesised from the configuration: random valid IDs, bags, sequences and
// dense values, generated before timing starts. Each serving thread owns a
// TopKScorer (its own workspace) and runs its requests single-threaded; the
// model itself is shared, const.
#include <mtrec/mtrec.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <typeinfo>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace mtrec;

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "serve: %s\n(try --help)\n", msg.c_str());
  std::exit(2);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

long long parse_int(const std::string& flag, const std::string& v, long long lo) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo) usage_error("flag " + flag + " expected an integer >= " + std::to_string(lo) + " but got '" + v + "'");
  return x;
}

// n rows of random but valid values for every feature of the config.
Batch<float> random_rows(const ModelConfig& c, index_t n, std::uint64_t seed) {
  Batch<float> b;
  b.size = n;
  b.shape_for(c.features, c.tasks.size());
  RandomStream rs(seed, 0x5E7E);
  std::uint64_t k = 0;
  auto below = [&](index_t m) { return index_t(rs.below(k++, std::uint64_t(m))); };
  auto rows_of = [](index_t vocab, index_t buckets) { return vocab > 0 ? vocab : buckets; };
  for (std::size_t f = 0; f < c.features.ids.size(); ++f)
    for (index_t i = 0; i < n; ++i) b.ids[f].push_back(below(rows_of(c.features.ids[f].vocab, c.features.ids[f].hash_buckets)));
  for (std::size_t f = 0; f < c.features.bags.size(); ++f) {
    auto& bag = b.bags[f];
    const auto& spec = c.features.bags[f];
    bag.offsets.push_back(0);
    for (index_t i = 0; i < n; ++i) {
      const index_t len = 1 + below(3);
      for (index_t j = 0; j < len; ++j) {
        bag.ids.push_back(below(rows_of(spec.vocab, spec.hash_buckets)));
        if (spec.weighted) bag.weights.push_back(1.0f);
      }
      bag.offsets.push_back(index_t(bag.ids.size()));
    }
  }
  for (std::size_t f = 0; f < c.features.sequences.size(); ++f) {
    const auto& s = c.features.sequences[f];
    for (index_t i = 0; i < n; ++i) {
      const index_t len = 1 + below(s.max_len);
      b.sequences[f].lengths.push_back(len);
      for (index_t t = 0; t < s.max_len; ++t) b.sequences[f].ids.push_back(t < len ? below(rows_of(s.vocab, s.hash_buckets)) : 0);
    }
  }
  for (std::size_t f = 0; f < c.features.dense.size(); ++f)
    for (index_t i = 0; i < n * c.features.dense[f].dim; ++i) b.dense[f].push_back(float(rs.normal(k++)));
  for (auto& l : b.labels) l.assign(std::size_t(n), 0.0f);
  return b;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const std::size_t i = std::min(v.size() - 1, std::size_t(q * double(v.size() - 1) + 0.5));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  std::string load, score_column, item_fields_arg;
  int threads = int(std::max(2u, std::thread::hardware_concurrency()));
  long long requests = 2000, candidates = 200, k = 10;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error("flag " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: serve --load CKPT.safetensors --item-fields F1,F2,... [options]\n"
          "  Answers top-K requests (one user, N candidates) from several threads and\n"
          "  reports p50/p99 latency and requests per second.\n"
          "  --item-fields LIST  features that describe the candidate item (the rest\n"
          "                      describe the user and are shared by all candidates)\n"
          "  --score COLUMN      output column to rank by (default: the first task)\n"
          "  --threads N         serving threads (default: the number of cores, at least 2)\n"
          "  --requests N        total requests (default 2000)\n"
          "  --candidates N      candidates per request (default 200)\n"
          "  --k K               results per request (default 10)\n");
      return 0;
    } else if (a == "--load") {
      load = value();
    } else if (a == "--item-fields") {
      item_fields_arg = value();
    } else if (a == "--score") {
      score_column = value();
    } else if (a == "--threads") {
      threads = int(parse_int(a, value(), 1));
    } else if (a == "--requests") {
      requests = parse_int(a, value(), 1);
    } else if (a == "--candidates") {
      candidates = parse_int(a, value(), 1);
    } else if (a == "--k") {
      k = parse_int(a, value(), 1);
    } else {
      usage_error("unknown flag '" + a + "'");
    }
  }
  if (load.empty()) usage_error("--load CKPT is required");
  if (item_fields_arg.empty()) usage_error("--item-fields is required");
  try {
    const auto model = mtrec::load_checkpoint<float>(load);
    const mtrec::ModelConfig& cfg = model->config();
    if (score_column.empty()) score_column = model->output_columns().front();
    const auto item_fields = split(item_fields_arg, ',');
    // Checked here, on the main thread, so a bad field is a clean error.
    const mtrec::TopKScorer<float> probe(*model, item_fields, score_column);
    (void)probe;
    // Requests are generated up front so that only scoring is timed.
    const int pool = int(std::min<long long>(requests, 64));
    std::vector<mtrec::Batch<float>> users, items;
    for (int r = 0; r < pool; ++r) {
      users.push_back(random_rows(cfg, 1, 1000 + std::uint64_t(r)));
      items.push_back(random_rows(cfg, candidates, 5000 + std::uint64_t(r)));
    }
    std::vector<std::vector<double>> latency(static_cast<std::size_t>(threads));
    for (auto& l : latency) l.reserve(static_cast<std::size_t>(requests));  // no allocation while timing
    std::atomic<long long> next{0};
    std::atomic<double> checksum{0};
    std::mutex error_mutex;
    std::string worker_error;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
      workers.emplace_back([&, t] {
        try {
          mtrec::set_num_threads(1);  // one core per request; concurrency comes from the serving threads
          mtrec::TopKScorer<float> scorer(*model, item_fields, score_column);
          double local = 0;
          for (long long r = next++; r < requests; r = next++) {
            const auto s0 = std::chrono::steady_clock::now();
            const auto& top = scorer.score(users[std::size_t(r % pool)], items[std::size_t(r % pool)], k);
            const auto s1 = std::chrono::steady_clock::now();
            latency[std::size_t(t)].push_back(std::chrono::duration<double, std::milli>(s1 - s0).count());
            local += top.front().score;
          }
          double cur = checksum.load();
          while (!checksum.compare_exchange_weak(cur, cur + local)) {
          }
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (worker_error.empty()) worker_error = e.what();
          next = requests;  // stop the other threads
        }
      });
    for (auto& w : workers) w.join();
    if (!worker_error.empty()) throw mtrec::Error("serve", worker_error);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<double> all;
    for (const auto& l : latency) all.insert(all.end(), l.begin(), l.end());
    const double p50 = percentile(all, 0.50), p99 = percentile(all, 0.99), rps = double(requests) / wall;
    std::printf("served %lld requests (%lld candidates, top %lld by '%s') on %d threads in %.2f s\n", requests, candidates,
                k, score_column.c_str(), threads, wall);
    std::printf("latency p50 %.3f ms  p99 %.3f ms  throughput %.1f requests/s (%.0f candidates/s)\n", p50, p99, rps,
                rps * double(candidates));
    std::printf("{\"example\":\"serve\",\"threads\":%d,\"requests\":%lld,\"candidates\":%lld,\"k\":%lld,"
                "\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"requests_per_s\":%.2f}\n",
                threads, requests, candidates, k, p50, p99, rps);
  } catch (const mtrec::Error& e) {
    std::fprintf(stderr, "serve: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {  // never abort: a library bug still gets a message and exit 1
    std::fprintf(stderr, "serve: unexpected error (%s): %s\n", typeid(e).name(), e.what());
    return 1;
  }
  return 0;
}
