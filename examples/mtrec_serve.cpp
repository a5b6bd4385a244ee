// mtrec-serve: an HTTP/JSON model server over a checkpoint written by
// mtrec-train --save (or any checkpoint with a feature spec).
//
//   mtrec-serve --load CKPT [--port 8080] [--host 127.0.0.1] [--threads N]
//               [--index INDEX] [--max-body BYTES] [--max-candidates N] [--port-file FILE]
//
//   GET  /healthz      -> {"status":"ok","model":"<path>","version":N}
//   GET  /metrics      -> Prometheus text: requests and errors by endpoint,
//                         a latency histogram, the model version, reloads
//   POST /v1/rank      {"user":{COL:VALUE,...},"candidates":[{COL:VALUE,...},...],"k":K}
//                      -> {"items":[{"index":I,"scores":{"<task>":S,...}},...]}
//   POST /v1/retrieve  {"user":{...},"task":"<retrieval task>","k":K,"exclude":[VALUE,...]}
//                      -> {"items":[{"id":"<raw item id>","score":S},...]}
//   POST /v1/reload    {"path":"<checkpoint>"} (optional; default the live path)
//                      also on SIGHUP (the live path)
//
// The library does the work (include/mtrec/serve/serving.hpp: ModelHandle,
// Ranker, Retriever); this file is HTTP (cpp-httplib) and JSON (nlohmann-json),
// neither of which the header-only library depends on. A client mistake is a
// 400 with {"error": "..."} naming the field; the live model is never
// touched by a failed reload. SIGTERM or SIGINT drain the requests in flight
// and exit 0.
// mtrec (Eigen) first: httplib.h pulls in <resolv.h>, whose `_res` macro
// would rewrite a parameter name inside Eigen's headers.
#include <mtrec/mtrec.hpp>

#ifdef MTREC_WITH_HNSWLIB
#include <mtrec/serve/hnsw.hpp>  // one translation unit only (hnswlib's headers)
#endif

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <pthread.h>
#include <signal.h>

#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace mtrec;
using nlohmann::json;

const char* kHelp = R"(mtrec-serve: serve a checkpoint of mtrec-train over HTTP/JSON

  mtrec-serve --load CKPT [--port 8080] [--host 127.0.0.1] [--threads N]

  --load CKPT          checkpoint with a feature spec (mtrec-train --save)
  --port P             TCP port (default 8080; 0 = any free port)
  --host H             address to listen on (default 127.0.0.1)
  --threads N          request threads (default: the machine's cores)
  --max-body BYTES     largest request body (default 1048576); larger: 413
  --max-candidates N   most candidates in one /v1/rank request (default 1000)
  --max-k N            largest k (default 1000)
  --port-file FILE     write the port listened on to FILE once listening
  --index INDEX        an HNSW index (mtrec-train --save CKPT --hnsw writes
                       CKPT.TASK.hnsw) for the first retrieval task; a
                       reloaded checkpoint uses NEWCKPT.TASK.hnsw when it
                       exists, else the exact search. "exact" = never.

Endpoints: GET /healthz, GET /metrics, POST /v1/rank, POST /v1/retrieve,
POST /v1/reload (and SIGHUP). SIGTERM drains requests in flight and exits 0.
)";

[[noreturn]] void usage_fail(const std::string& msg) {
  std::cerr << "mtrec-serve: " << msg << " (run mtrec-serve --help)\n";
  std::exit(2);
}

struct Options {
  std::string load, host = "127.0.0.1", port_file, index;
  int port = 8080, threads = 0;
  std::size_t max_body = 1 << 20;
  long long max_candidates = 1000, max_k = 1000;
};

long long int_arg(const std::string& flag, const std::string& v, long long lo, long long hi) {
  long long x = 0;
  if (!data::parse_integer(v, x) || x < lo || x > hi)
    usage_fail("flag " + flag + " expects an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
               "] but got '" + v + "'");
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << kHelp;
      std::exit(0);
    }
    std::string v;
    const auto eq = a.find('=');
    if (eq != std::string::npos) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else {
      if (i + 1 >= argc) usage_fail("flag " + a + " expects a value");
      v = argv[++i];
    }
    if (a == "--load") o.load = v;
    else if (a == "--host") o.host = v;
    else if (a == "--port") o.port = int(int_arg(a, v, 0, 65535));
    else if (a == "--threads") o.threads = int(int_arg(a, v, 1, 1024));
    else if (a == "--max-body") o.max_body = std::size_t(int_arg(a, v, 1, 1LL << 34));
    else if (a == "--max-candidates") o.max_candidates = int_arg(a, v, 1, 1 << 24);
    else if (a == "--max-k") o.max_k = int_arg(a, v, 1, 1 << 24);
    else if (a == "--port-file") o.port_file = v;
    else if (a == "--index") o.index = v;
    else usage_fail("unknown flag '" + a + "'");
  }
  if (o.load.empty()) usage_fail("missing --load CKPT");
#ifndef MTREC_WITH_HNSWLIB
  if (!o.index.empty() && o.index != "exact")
    usage_fail("--index needs mtrec-serve built with MTREC_WITH_HNSWLIB=ON (Debian libhnswlib-dev)");
#endif
  if (o.threads == 0) o.threads = int(std::max(1u, std::thread::hardware_concurrency()));
  return o;
}

// ---- metrics --------------------------------------------------------------------------------

enum Endpoint { kHealth, kMetrics, kRank, kRetrieve, kReload, kOther, kEndpoints };
const char* endpoint_name(int e) {
  static const char* n[] = {"/healthz", "/metrics", "/v1/rank", "/v1/retrieve", "/v1/reload", "other"};
  return n[e];
}
constexpr std::array<double, 12> kBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.5,    2.5};

struct Metrics {
  std::array<std::atomic<std::uint64_t>, kEndpoints> requests{}, errors{};
  std::array<std::array<std::atomic<std::uint64_t>, kBuckets.size() + 1>, kEndpoints> hist{};
  std::array<std::atomic<std::uint64_t>, kEndpoints> micros{};  // latency sum
  std::atomic<std::uint64_t> reloads{0}, reload_failures{0};

  void record(int e, double seconds, bool error) {
    requests[e].fetch_add(1, std::memory_order_relaxed);
    if (error) errors[e].fetch_add(1, std::memory_order_relaxed);
    std::size_t b = 0;
    while (b < kBuckets.size() && seconds > kBuckets[b]) ++b;
    hist[e][b].fetch_add(1, std::memory_order_relaxed);
    micros[e].fetch_add(std::uint64_t(seconds * 1e6), std::memory_order_relaxed);
  }
  std::string text(std::uint64_t version) const {
    std::string s;
    s += "# HELP mtrec_requests_total Requests answered, by endpoint.\n# TYPE mtrec_requests_total counter\n";
    for (int e = 0; e < kEndpoints; ++e)
      s += "mtrec_requests_total{endpoint=\"" + std::string(endpoint_name(e)) + "\"} " +
           std::to_string(requests[e].load()) + "\n";
    s += "# HELP mtrec_errors_total Requests answered with a 4xx or 5xx status, by endpoint.\n"
         "# TYPE mtrec_errors_total counter\n";
    for (int e = 0; e < kEndpoints; ++e)
      s += "mtrec_errors_total{endpoint=\"" + std::string(endpoint_name(e)) + "\"} " +
           std::to_string(errors[e].load()) + "\n";
    s += "# HELP mtrec_request_seconds Time from the request read to the response built.\n"
         "# TYPE mtrec_request_seconds histogram\n";
    for (int e = 0; e < kEndpoints; ++e) {
      const std::string ep = "endpoint=\"" + std::string(endpoint_name(e)) + "\"";
      std::uint64_t cum = 0;
      for (std::size_t b = 0; b <= kBuckets.size(); ++b) {
        cum += hist[e][b].load();
        char le[32];
        if (b < kBuckets.size()) std::snprintf(le, sizeof le, "%g", kBuckets[b]);
        else std::snprintf(le, sizeof le, "+Inf");
        s += "mtrec_request_seconds_bucket{" + ep + ",le=\"" + le + "\"} " + std::to_string(cum) + "\n";
      }
      char sum[64];
      std::snprintf(sum, sizeof sum, "%.6f", double(micros[e].load()) * 1e-6);
      s += "mtrec_request_seconds_sum{" + ep + "} " + sum + "\n";
      s += "mtrec_request_seconds_count{" + ep + "} " + std::to_string(cum) + "\n";
    }
    s += "# HELP mtrec_model_version The live model's version (1 = first load, +1 per reload).\n"
         "# TYPE mtrec_model_version gauge\nmtrec_model_version " + std::to_string(version) + "\n";
    s += "# TYPE mtrec_reloads_total counter\nmtrec_reloads_total " + std::to_string(reloads.load()) + "\n";
    s += "# TYPE mtrec_reload_failures_total counter\nmtrec_reload_failures_total " +
         std::to_string(reload_failures.load()) + "\n";
    return s;
  }
};

// ---- request parsing ------------------------------------------------------------------------

struct BadRequest : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string value_text(const json& v, const std::string& where) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d)) throw BadRequest(where + ": expected a finite number");
    return v.dump();
  }
  throw BadRequest(where + ": expected a string or a number but got " + std::string(v.type_name()));
}

// {COL: VALUE, ...} -> row r of `rows`. null = missing (the feature's missing
// value); an array = a bag, sequence or text given as items.
void read_row(const json& obj, const std::string& where, const data::TabularEncoder& spec, data::RawRows& rows,
              std::size_t r) {
  if (!obj.is_object()) throw BadRequest(where + ": expected an object {\"COLUMN\": VALUE, ...} but got " +
                                         std::string(obj.type_name()));
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& col = it.key();
    const std::string field = where + "." + col;
    if (!spec.has_feature(col)) {
      std::string known;
      for (const auto& f : spec.schema().features) known += (known.empty() ? "" : ", ") + f.column;
      throw BadRequest(field + ": unknown feature '" + col + "' (the model's features: " + known + ")");
    }
    const json& v = it.value();
    if (v.is_null()) continue;
    if (v.is_array()) {
      std::vector<std::string> items;
      items.reserve(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) items.push_back(value_text(v[i], field + "[" + std::to_string(i) + "]"));
      rows.set_list(r, col, std::move(items));
    } else {
      rows.set(r, col, value_text(v, field));
    }
  }
}

json parse_body(const httplib::Request& req, std::initializer_list<const char*> allowed) {
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw BadRequest(std::string("body: not valid JSON (") + e.what() + ")");
  }
  if (!body.is_object()) throw BadRequest("body: expected a JSON object but got " + std::string(body.type_name()));
  for (auto it = body.begin(); it != body.end(); ++it) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || it.key() == a;
    if (!ok) {
      std::string list;
      for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      throw BadRequest(it.key() + ": unknown field (expected " + list + ")");
    }
  }
  return body;
}

long long int_field(const json& body, const char* name, long long dflt, long long lo, long long hi) {
  if (!body.contains(name)) return dflt;
  const json& v = body.at(name);
  if (!v.is_number_integer() && !v.is_number_unsigned())
    throw BadRequest(std::string(name) + ": expected an integer but got " + v.dump());
  const long long x = v.is_number_unsigned() && v.get<unsigned long long>() > (unsigned long long)LLONG_MAX
                          ? LLONG_MAX
                          : v.get<long long>();
  if (x < lo || x > hi)
    throw BadRequest(std::string(name) + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                     "] but got " + std::to_string(x));
  return x;
}

// A library error about a raw value, as the request's field: encode()'s
// "row I, field 'F': ..." becomes "PREFIX[I].F: ..." (or "PREFIX.F" for the
// one user row).
std::string field_error(const std::string& prefix, bool indexed, const Error& e) {
  std::string m = e.what();
  const std::string op = "TabularEncoder::encode: ";
  if (m.rfind(op, 0) == 0) m = m.substr(op.size());
  if (m.rfind("row ", 0) == 0) {
    const auto comma = m.find(", field '");
    const auto end = comma == std::string::npos ? comma : m.find('\'', comma + 9);
    if (end != std::string::npos) {
      const std::string idx = m.substr(4, comma - 4);
      return prefix + (indexed ? "[" + idx + "]" : std::string()) + "." + m.substr(comma + 9, end - comma - 9) +
             m.substr(end + 1);
    }
  }
  return prefix + ": " + m;
}

// ---- the server -------------------------------------------------------------------------------

#ifdef MTREC_WITH_HNSWLIB
// HnswIndex behind the library's ItemIndex interface.
struct HnswItemIndex : serve::ItemIndex {
  HnswIndex index;
  explicit HnswItemIndex(HnswIndex i) : index(std::move(i)) {}
  void search(std::vector<ScoredItem>& out, ConstView<float> q, index_t k,
              const std::vector<index_t>& exclude) const override {
    const index_t beam = std::max<index_t>(256, 2 * (k + index_t(exclude.size())));
    index.search_into(out, q, k, exclude, beam);
  }
  index_t rows() const override { return index.rows(); }
  index_t dim() const override { return index.dim(); }
};
#endif

// The index file of a retrieval task: --index for the first checkpoint,
// CKPT.TASK.hnsw beside a reloaded one.
void attach_indexes(serve::ServedModel& m, const Options& opt, bool first) {
#ifdef MTREC_WITH_HNSWLIB
  if (opt.index.empty() || opt.index == "exact") return;
  const auto& tasks = m.model->config().tasks;
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    if (tasks[k].type != TaskType::Retrieval) continue;
    const std::string path = first ? opt.index : m.path + "." + tasks[k].name + ".hnsw";
    if (!first && !std::ifstream(path).good()) {
      std::cerr << "mtrec-serve: no index '" << path << "': task '" << tasks[k].name << "' uses the exact search"
                << std::endl;
      return;
    }
    const auto table = m.model->target_table(k);
    auto idx = std::make_shared<HnswItemIndex>(HnswIndex::load(path, table.shape[0], table.shape[1]));
    m.indexes[tasks[k].name] = std::move(idx);
    std::cerr << "mtrec-serve: task '" << tasks[k].name << "' uses the HNSW index '" << path << "'" << std::endl;
    return;  // the first retrieval task only
  }
#else
  (void)m;
  (void)opt;
  (void)first;
#endif
}

struct Server {
  Options opt;
  serve::ModelHandle handle;
  Metrics metrics;
  httplib::Server http;

  void reply(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(), "application/json");
  }

  json rank(const httplib::Request& req) {
    const json body = parse_body(req, {"user", "candidates", "k"});
    const auto live = handle.get();
    const data::TabularEncoder& spec = live->spec();
    data::RawRows user;
    user.add_row();
    if (body.contains("user")) read_row(body.at("user"), "user", spec, user, 0);
    if (!body.contains("candidates")) throw BadRequest("candidates: missing (expected an array of objects)");
    const json& cand = body.at("candidates");
    if (!cand.is_array()) throw BadRequest("candidates: expected an array of objects but got " + std::string(cand.type_name()));
    if (cand.empty()) throw BadRequest("candidates: expected at least one candidate");
    if ((long long)cand.size() > opt.max_candidates)
      throw BadRequest("candidates: " + std::to_string(cand.size()) + " candidates, more than the server's limit of " +
                       std::to_string(opt.max_candidates) + " (--max-candidates)");
    data::RawRows rows;
    for (std::size_t i = 0; i < cand.size(); ++i)
      read_row(cand[i], "candidates[" + std::to_string(i) + "]", spec, rows, rows.add_row());
    const long long k = int_field(body, "k", (long long)cand.size(), 1, opt.max_k);
    try {
      (void)live->model->encode(user);  // the user's values alone: an error names the user's field
    } catch (const Error& e) {
      throw BadRequest(field_error("user", false, e));
    }
    thread_local serve::Ranker ranker;
    const std::vector<serve::RankedItem>* items = nullptr;
    try {
      items = &ranker.rank(*live, user, rows, index_t(k));
    } catch (const Error& e) {
      // Row I of the merged rows is candidate I (the user's values passed above).
      throw BadRequest(field_error("candidates", true, e));
    }
    const auto names = serve::score_names(*live->model);
    json out = json::object();
    json arr = json::array();
    for (const auto& it : *items) {
      json s = json::object();
      for (std::size_t c = 0; c < names.size(); ++c) s[names[c]] = it.scores[c];
      arr.push_back({{"index", it.index}, {"scores", std::move(s)}});
    }
    out["items"] = std::move(arr);
    out["version"] = live->version;
    return out;
  }

  json retrieve(const httplib::Request& req) {
    const json body = parse_body(req, {"user", "task", "k", "exclude"});
    const auto live = handle.get();
    const data::TabularEncoder& spec = live->spec();
    data::RawRows user;
    user.add_row();
    if (body.contains("user")) read_row(body.at("user"), "user", spec, user, 0);
    std::string task;
    if (body.contains("task")) {
      if (!body.at("task").is_string()) throw BadRequest("task: expected a string but got " + body.at("task").dump());
      task = body.at("task").get<std::string>();
    } else {
      for (const auto& t : live->model->config().tasks)
        if (t.type == TaskType::Retrieval && task.empty()) task = t.name;
      if (task.empty()) throw BadRequest("task: the model has no retrieval task");
    }
    bool found = false;
    for (const auto& t : live->model->config().tasks)
      if (t.name == task) {
        found = true;
        if (t.type != TaskType::Retrieval)
          throw BadRequest("task: '" + task + "' is a " + task_type_name(t.type) + " task, not a retrieval task");
      }
    if (!found) throw BadRequest("task: the model has no task named '" + task + "'");
    const long long k = int_field(body, "k", 10, 1, opt.max_k);
    std::vector<std::string> exclude;
    if (body.contains("exclude")) {
      const json& ex = body.at("exclude");
      if (!ex.is_array()) throw BadRequest("exclude: expected an array of item values but got " + std::string(ex.type_name()));
      for (std::size_t i = 0; i < ex.size(); ++i) exclude.push_back(value_text(ex[i], "exclude[" + std::to_string(i) + "]"));
    }
    thread_local serve::Retriever retriever;
    const std::vector<serve::RetrievedItem>* items = nullptr;
    try {
      items = &retriever.retrieve(*live, user, task, index_t(k), exclude);
    } catch (const Error& e) {
      throw BadRequest(field_error("user", false, e));
    }
    json arr = json::array();
    for (const auto& it : *items) arr.push_back({{"id", it.id}, {"score", it.score}});
    return {{"items", std::move(arr)}, {"version", live->version}};
  }

  json reload(const httplib::Request& req) {
    std::string path = handle.get()->path;
    if (!req.body.empty()) {
      const json body = parse_body(req, {"path"});
      if (body.contains("path")) {
        if (!body.at("path").is_string()) throw BadRequest("path: expected a string but got " + body.at("path").dump());
        path = body.at("path").get<std::string>();
      }
    }
    return do_reload(path);
  }

  json do_reload(const std::string& path) {
    try {
      const std::uint64_t v = handle.load(path, [this](serve::ServedModel& m) { attach_indexes(m, opt, false); });
      metrics.reloads.fetch_add(1);
      std::cerr << "mtrec-serve: loaded '" << path << "' as version " << v << std::endl;
      return {{"model", path}, {"version", v}};
    } catch (const std::exception& e) {
      metrics.reload_failures.fetch_add(1);
      std::cerr << "mtrec-serve: reload of '" << path << "' failed, still serving version " << handle.get()->version
                << ": " << e.what() << std::endl;
      throw BadRequest(std::string("path: ") + e.what() + " (the live model, version " +
                       std::to_string(handle.get()->version) + ", keeps serving)");
    }
  }

  template <class Fn>
  void route_post(const char* path, Endpoint ep, Fn fn) {
    http.Post(path, [this, ep, fn](const httplib::Request& req, httplib::Response& res) {
      const auto t0 = std::chrono::steady_clock::now();
      thread_local bool serial = (set_num_threads(1), true);  // one request, one core: the server runs --threads at once
      (void)serial;
      int status = 200;
      try {
        reply(res, 200, (this->*fn)(req));
      } catch (const BadRequest& e) {
        status = 400;
        reply(res, 400, {{"error", e.what()}});
      } catch (const Error& e) {
        status = 400;
        reply(res, 400, {{"error", e.what()}});
      } catch (const std::exception& e) {
        status = 500;
        reply(res, 500, {{"error", std::string("internal error: ") + e.what()}});
      }
      metrics.record(ep, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), status >= 400);
    });
  }

  void setup() {
    http.set_payload_max_length(opt.max_body);
    // Small JSON answers on keep-alive connections: without TCP_NODELAY,
    // Nagle's algorithm and the client's delayed ACK add ~40 ms to each.
    http.set_tcp_nodelay(true);
    http.new_task_queue = [n = opt.threads] { return new httplib::ThreadPool(std::size_t(n)); };
    http.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto live = handle.get();
      reply(res, 200, {{"status", "ok"}, {"model", live->path}, {"version", live->version}});
      metrics.record(kHealth, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), false);
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      metrics.record(kMetrics, 0, false);
      res.set_content(metrics.text(handle.get()->version), "text/plain; version=0.0.4");
    });
    route_post("/v1/rank", kRank, &Server::rank);
    route_post("/v1/retrieve", kRetrieve, &Server::retrieve);
    route_post("/v1/reload", kReload, &Server::reload);
    // Unknown paths, bodies over --max-body (413), wrong methods: a JSON error.
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;  // a handler's own 400 (already counted), not one of httplib's
      int ep = kOther;
      for (int e = 0; e < kOther; ++e)
        if (req.path == endpoint_name(e)) ep = e;
      metrics.record(ep, 0, true);
      std::string msg = "HTTP " + std::to_string(res.status);
      if (res.status == 404) msg = "path: no endpoint " + req.method + " " + req.path;
      if (res.status == 413) msg = "body: larger than the server's limit of " + std::to_string(opt.max_body) + " bytes (--max-body)";
      res.set_content(json{{"error", msg}}.dump(), "application/json");
    });
  }
};

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse_args(argc, argv);
  // SIGTERM, SIGINT and SIGHUP go to one thread (sigwait), not to handlers:
  // every thread created below inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  Server s;
  s.opt = opt;
  try {
    s.handle.load(opt.load, [&](serve::ServedModel& m) { attach_indexes(m, opt, true); });
  } catch (const std::exception& e) {
    std::cerr << "mtrec-serve: " << e.what() << std::endl;
    return 1;
  }
  s.setup();
  int port = opt.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(opt.host);
  } else if (!s.http.bind_to_port(opt.host, port)) {
    port = -1;
  }
  if (port <= 0) {
    std::cerr << "mtrec-serve: cannot listen on " << opt.host << ":" << opt.port << std::endl;
    return 1;
  }
  std::atomic<bool> stopping{false};
  std::thread signals([&] {
    for (;;) {
      int sig = 0;
      if (sigwait(&sigs, &sig) != 0) continue;
      if (sig == SIGHUP) {
        try {
          s.do_reload(s.handle.get()->path);
        } catch (const std::exception&) {
          // logged by do_reload; the live model keeps serving
        }
        continue;
      }
      if (stopping.exchange(true)) return;  // main's own wake-up call below
      std::cerr << "mtrec-serve: signal " << sig << ": draining requests in flight, then exiting" << std::endl;
      s.http.stop();
      return;
    }
  });
  if (!opt.port_file.empty()) {
    const std::string text = std::to_string(port) + "\n";
    io::AtomicFileWriter w(opt.port_file);
    w.write(text.data(), text.size());
    w.commit();
  }
  std::cerr << "mtrec-serve: serving '" << opt.load << "' on http://" << opt.host << ":" << port << " with "
            << opt.threads << " threads" << std::endl;
  s.http.listen_after_bind();
  // listen returned without a signal (a socket error): wake the signal thread.
  if (!stopping.exchange(true)) pthread_kill(signals.native_handle(), SIGTERM);
  signals.join();
  std::cerr << "mtrec-serve: stopped" << std::endl;
  return 0;
}
