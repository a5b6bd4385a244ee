// movielens: MMoE against single-task baselines on MovieLens (ml-latest-small).
//
//   ./build/examples/movielens --data ../shared/data/movielens --seeds 0,1,2
//
// Reads ratings.csv and movies.csv from --data, splits every user's timeline
// (last 10% test, the 10% before validation, the rest train), and trains, per
// seed, an MMoE model on both tasks and one single-task model per task:
//   rating  regression on the rating (reported: test RMSE)
//   like    rating >= 4, binary (reported: test AUC)
// Features: user, movie, the movie's genres (mean-pooled bag), its title
// words and the user's previous 50 movies (each through a transformer
// encoder; the history shares the movie table). Every model stops early on
// its validation loss and restores its best epoch. The results table and the
// wall time go to stdout, followed by one JSON line with the same numbers;
// training progress goes to stderr (--quiet silences it).
//
// --save CKPT.safetensors writes the seed-0 MMoE model with the feature
// vocabularies and the rating offset in its metadata ("movielens"): see
// mtrec/data/movielens.hpp, load_movielens_features().
//
// The hyper-parameter options exist to reproduce the experiments in
// docs/movielens.md; their defaults are the documented configuration.
#include <mtrec/mtrec.hpp>
#include <mtrec/data/movielens.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

using namespace mtrec;
namespace ml = mtrec::movielens;

namespace {

struct Options {
  std::string data = "../shared/data/movielens";
  std::vector<std::uint64_t> seeds = {0, 1, 2};
  std::string models = "mmoe,single";
  int epochs = 3;
  int patience = 2;
  int threads = 2;
  std::string save;
  bool quiet = false;
  // features
  index_t history_len = 50, title_len = 12;
  index_t user_dim = 32, genre_dim = 8, d_model = 32, heads = 2, ffn = 64;
  int layers = 1;
  double attn_dropout = 0.1;
  // trunk and towers
  index_t experts = 4;
  std::vector<index_t> expert = {128, 64}, bottom = {128, 64}, tower = {32};
  double dropout = 0.2;
  double init_std = 0.01;
  Precision precision = Precision::FP32;
  // training
  index_t batch = 512;
  double lr = 2e-3, weight_decay = 0.01;
  std::string schedule = "cosine";  // constant, cosine or linear (decay over --epochs, after the warmup)
  double warmup = 0.0;                // fraction of all steps
  double clip = 0.0;
  double rating_weight = 1.0, like_weight = 1.0;
  bool center = true;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::cerr << "movielens: " << msg << "\n(run with --help for the options)\n";
  std::exit(2);
}

void print_help() {
  std::cout <<
      "usage: movielens [options]\n"
      "  --data DIR          folder with ratings.csv and movies.csv (default ../shared/data/movielens)\n"
      "  --seeds LIST        comma-separated seeds (default 0,1,2)\n"
      "  --epochs N          maximum epochs per model, also the cosine schedule's length (default 3)\n"
      "  --patience N        epochs without validation improvement before stopping (default 2)\n"
      "  --threads N         threads (default 2)\n"
      "  --models LIST       mmoe and/or single (default mmoe,single)\n"
      "  --save CKPT         save the seed-0 MMoE model (safetensors, with the feature vocabularies)\n"
      "  --quiet             no per-epoch progress on stderr\n"
      "  --precision P       fp32 or bf16: the layers' matrix products in bf16 with fp32 accumulation\n"
      "                      on AMX or AVX512_BF16 (default fp32)\n"
      "experiment knobs (defaults = the documented configuration):\n"
      "  --history-len N --title-len N --user-dim N --genre-dim N --d-model N --heads N --ffn N\n"
      "  --layers N --attn-dropout X --experts N --expert W,W --bottom W,W --tower W,W --dropout X\n"
      "  --init-std X --batch N --lr X --wd X --schedule constant|cosine|linear --warmup X --clip X\n"
      "  --rating-weight X --like-weight X --center 0|1\n";
}

template <class V>
std::vector<V> parse_list(const std::string& s, const std::string& flag) {
  std::vector<V> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0) usage_error(flag + " expected non-negative integers, got '" + s + "'");
    out.push_back(V(v));
  }
  if (out.empty()) usage_error(flag + " expected a non-empty list");
  return out;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_help();
      std::exit(0);
    }
    if (a == "--quiet") {
      o.quiet = true;
      continue;
    }
    if (i + 1 >= argc) usage_error("option " + a + " expected a value");
    const std::string v = argv[++i];
    auto num = [&]() {
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !std::isfinite(x)) usage_error(a + " expected a number, got '" + v + "'");
      return x;
    };
    auto integer = [&]() {
      const double x = num();
      if (x != std::floor(x) || x < 0) usage_error(a + " expected a non-negative integer, got '" + v + "'");
      return index_t(x);
    };
    if (a == "--data") o.data = v;
    else if (a == "--seeds") o.seeds = parse_list<std::uint64_t>(v, a);
    else if (a == "--models") o.models = v;
    else if (a == "--epochs") o.epochs = int(integer());
    else if (a == "--patience") o.patience = int(integer());
    else if (a == "--threads") o.threads = int(integer());
    else if (a == "--save") o.save = v;
    else if (a == "--history-len") o.history_len = integer();
    else if (a == "--title-len") o.title_len = integer();
    else if (a == "--user-dim") o.user_dim = integer();
    else if (a == "--genre-dim") o.genre_dim = integer();
    else if (a == "--d-model") o.d_model = integer();
    else if (a == "--heads") o.heads = integer();
    else if (a == "--ffn") o.ffn = integer();
    else if (a == "--layers") o.layers = int(integer());
    else if (a == "--attn-dropout") o.attn_dropout = num();
    else if (a == "--experts") o.experts = integer();
    else if (a == "--expert") o.expert = parse_list<index_t>(v, a);
    else if (a == "--bottom") o.bottom = parse_list<index_t>(v, a);
    else if (a == "--tower") o.tower = parse_list<index_t>(v, a);
    else if (a == "--dropout") o.dropout = num();
    else if (a == "--init-std") o.init_std = num();
    else if (a == "--precision") {
      if (v == "fp32") o.precision = Precision::FP32;
      else if (v == "bf16") o.precision = Precision::BF16;
      else throw std::invalid_argument("--precision expects fp32 or bf16 but got '" + v + "'");
    }
    else if (a == "--batch") o.batch = integer();
    else if (a == "--lr") o.lr = num();
    else if (a == "--wd") o.weight_decay = num();
    else if (a == "--schedule") o.schedule = v;
    else if (a == "--warmup") o.warmup = num();
    else if (a == "--clip") o.clip = num();
    else if (a == "--rating-weight") o.rating_weight = num();
    else if (a == "--like-weight") o.like_weight = num();
    else if (a == "--center") o.center = integer() != 0;
    else usage_error("unknown option " + a);
  }
  if (o.epochs < 1) usage_error("--epochs expected at least 1");
  if (o.threads < 1) usage_error("--threads expected at least 1");
#if defined(__unix__) || defined(__APPLE__)
  if (!o.save.empty()) {  // fail now, not after minutes of training
    const auto slash = o.save.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : o.save.substr(0, slash);
    if (::access(dir.c_str(), W_OK) != 0) usage_error("--save: cannot write into the folder '" + dir + "'");
  }
#endif
  if (o.schedule != "constant" && o.schedule != "cosine" && o.schedule != "linear")
    usage_error("--schedule expected constant, cosine or linear, got '" + o.schedule + "'");
  if (o.models.find("mmoe") == std::string::npos && o.models.find("single") == std::string::npos)
    usage_error("--models expected mmoe and/or single, got '" + o.models + "'");
  return o;
}

std::string widths(const std::vector<index_t>& v) {
  std::string s;
  for (index_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// One line with every setting that shapes the results.
std::string describe(const Options& o) {
  std::ostringstream os;
  os << "d_model " << o.d_model << " (movie/history/title), heads " << o.heads << ", ffn " << o.ffn << ", layers "
     << o.layers << ", attention dropout " << o.attn_dropout << ", user dim " << o.user_dim << ", genre dim "
     << o.genre_dim << ", history " << o.history_len << ", title " << o.title_len << " words; experts " << o.experts
     << " x [" << widths(o.expert) << "], bottom [" << widths(o.bottom) << "], towers [" << widths(o.tower)
     << "], dropout " << o.dropout << ", embedding init std " << o.init_std << "; AdamW lr " << o.lr
     << " wd " << o.weight_decay << ", " << o.schedule << " schedule, " << precision_name(o.precision)
     << " matrix products";
  if (o.warmup > 0) os << " (warmup " << o.warmup << ")";
  if (o.clip > 0) os << ", clip " << o.clip;
  os << ", batch " << o.batch << ", epochs <= " << o.epochs << ", patience " << o.patience << ", loss weights "
     << o.rating_weight << "/" << o.like_weight << (o.center ? ", centered rating" : ", raw rating");
  return os.str();
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

TaskSpec task(const Options& o, const char* name, TaskType type, double weight, TaskLoss loss) {
  TaskSpec t;
  t.name = name;
  t.type = type;
  t.tower = o.tower;
  t.weight = weight;
  t.loss = loss;
  return t;
}
TaskSpec rating_task(const Options& o) {
  return task(o, "rating", TaskType::Regression, o.rating_weight, TaskLoss::MSE);
}
TaskSpec like_task(const Options& o) { return task(o, "like", TaskType::Binary, o.like_weight, TaskLoss::BCE); }

ModelConfig model_config(const Options& o, const ml::MovieLensFeatures& f, Architecture arch,
                         std::vector<TaskSpec> tasks, std::uint64_t seed) {
  ml::ModelShape shape;
  shape.user_dim = o.user_dim;
  shape.genre_dim = o.genre_dim;
  TransformerConfig enc;
  enc.d_model = o.d_model;
  enc.heads = o.heads;
  enc.ffn = o.ffn;
  enc.dropout = o.attn_dropout;
  shape.title = enc;
  shape.history = enc;
  shape.title_layers = o.layers;
  shape.history_layers = o.layers;
  ModelConfig c;
  c.features = f.spec(shape);
  c.tasks = std::move(tasks);
  c.architecture = arch;
  c.bottom = o.bottom;
  c.experts = o.experts;
  c.expert = o.expert;
  c.dropout = o.dropout;
  c.embedding_init_std = o.init_std;
  c.precision = o.precision;
  c.seed = seed;
  return c;
}

struct RunResult {
  std::string model;  // "mmoe", "single:rating", "single:like"
  std::uint64_t seed = 0;
  double rmse = NAN, auc = NAN;
  int epochs = 0, best_epoch = 0;
  double seconds = 0;
};

RunResult train_and_test(const Options& o, const ml::MovieLensFeatures& f, const ml::Datasets<float>& d,
                         const std::string& name, Architecture arch, const std::vector<std::size_t>& tasks,
                         std::uint64_t seed, double rating_offset) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<TaskSpec> specs;
  for (std::size_t k : tasks) specs.push_back(k == 0 ? rating_task(o) : like_task(o));
  MultiTaskModel<float> model(model_config(o, f, arch, specs, seed));
  const bool all = tasks.size() == 2;
  const Batch<float> train = all ? Batch<float>() : ml::select_tasks(d.train, tasks);
  const Batch<float> valid = all ? Batch<float>() : ml::select_tasks(d.valid, tasks);
  const Batch<float> test = all ? Batch<float>() : ml::select_tasks(d.test, tasks);
  TrainConfig tc;
  tc.epochs = o.epochs;
  tc.batch_size = o.batch;
  tc.optimizer = OptimizerConfig::adamw(o.lr, o.weight_decay);
  tc.schedule = o.schedule == "cosine"   ? ScheduleKind::WarmupCosine
                : o.schedule == "linear" ? ScheduleKind::WarmupLinear
                                         : ScheduleKind::Constant;
  tc.warmup_fraction = o.warmup;
  tc.clip_norm = o.clip;
  tc.patience = o.patience;
  tc.monitor = "loss";
  tc.restore_best = true;
  tc.seed = seed;
  tc.progress = !o.quiet;
  if (!o.quiet) std::cerr << "-- " << name << " seed " << seed << "\n";
  Trainer<float> trainer(model, tc);
  const History h = trainer.fit(all ? d.train : train, all ? &d.valid : &valid);
  const Evaluation ev = evaluate(model, all ? d.test : test, 1024);
  RunResult r;
  r.model = name;
  r.seed = seed;
  for (const auto& t : ev.tasks) {
    if (t.task == "rating") r.rmse = t["rmse"];
    if (t.task == "like") r.auc = t["auc"];
  }
  r.epochs = int(h.epochs.size());
  r.best_epoch = h.best_epoch;
  if (!o.save.empty() && arch == Architecture::MMoE && seed == 0) {
    ml::save_movielens_checkpoint(o.save, model, f, rating_offset);
    if (!o.quiet) std::cerr << "saved " << o.save << "\n";
  }
  r.seconds = seconds_since(t0);
  if (!o.quiet) {
    std::cerr << "   test";
    if (!std::isnan(r.rmse)) std::cerr << "  rmse " << r.rmse;
    if (!std::isnan(r.auc)) std::cerr << "  auc " << r.auc;
    std::cerr << "  (best epoch " << r.best_epoch << " of " << r.epochs << ", " << r.seconds << " s)\n";
  }
  return r;
}

struct Stat {
  double mean = NAN, std = NAN;
  int n = 0;
};
// Mean and sample standard deviation (n - 1) over the seeds.
Stat stat(const std::vector<RunResult>& rs, const std::string& model, double RunResult::*field) {
  std::vector<double> v;
  for (const auto& r : rs)
    if (r.model == model && !std::isnan(r.*field)) v.push_back(r.*field);
  Stat s;
  s.n = int(v.size());
  if (v.empty()) return s;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.std = v.size() > 1 ? std::sqrt(ss / double(v.size() - 1)) : 0.0;
  return s;
}

std::string fmt(const Stat& s) {
  if (s.n == 0) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4f ± %.4f", s.mean, s.std);
  return buf;
}

json::Value stat_json(const Stat& s) {
  json::Value o = json::Value::object();
  o.set("mean", s.n ? json::Value(s.mean) : json::Value());
  o.set("std", s.n ? json::Value(s.std) : json::Value());
  return o;
}

// mtrec forks and joins an OpenMP team for every layer of every step, and
// libgomp's default is to spin-wait between those regions. When other
// processes share the cores (a CI runner, a busy workstation) a spinning
// thread holds a core its partner needs, and one training epoch on 2 threads
// took 7-10x longer than with passive waiting (measured: 108 s vs 11 s per
// epoch on a loaded 2-core machine). libgomp reads OMP_WAIT_POLICY once, when
// it loads, before main: so, unless the user chose a policy, the program
// re-executes itself once with OMP_WAIT_POLICY=passive. If exec fails it
// simply runs on as it is.
void prefer_passive_omp_waiting(char** argv) {
#if MTREC_HAS_OPENMP && defined(__linux__)
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
#else
  (void)argv;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_omp_waiting(argv);
  const Options o = parse_args(argc, argv);
  try {
    const auto t0 = std::chrono::steady_clock::now();
    set_num_threads(o.threads);
    const std::string dir = o.data.empty() || o.data.back() == '/' ? o.data : o.data + "/";
    const auto movies = ml::read_movies(dir + "movies.csv");
    const auto ratings = ml::read_ratings(dir + "ratings.csv");
    ml::FeatureOptions fo;
    fo.history_len = o.history_len;
    fo.title_len = o.title_len;
    const ml::MovieLensFeatures features = ml::MovieLensFeatures::build(movies, ratings, fo);
    const ml::Timeline timeline = ml::split_by_time(ratings);
    ml::Datasets<float> d = ml::make_datasets<float>(features, timeline);
    if (!o.center) {  // train on the raw rating instead of its deviation from the train mean
      for (auto* b : {&d.train, &d.valid, &d.test})
        for (auto& y : b->labels[0]) y += float(d.rating_offset);
      d.rating_offset = 0;
    }
    const double load_seconds = seconds_since(t0);
    if (!o.quiet)
      std::fprintf(stderr,
                 "data: %zu ratings, %lld users, %lld movies, %lld genres, %lld title words; train %lld, valid %lld, "
                 "test %lld rows; train mean rating %.4f (%.1f s)\n",
                 ratings.size(), (long long)features.users().size(), (long long)features.movies().size(),
                 (long long)features.genres().size(), (long long)features.words().size(),
                 (long long)d.train.size, (long long)d.valid.size, (long long)d.test.size, d.rating_offset,
                 load_seconds);

    const bool run_mmoe = o.models.find("mmoe") != std::string::npos;
    const bool run_single = o.models.find("single") != std::string::npos;
    std::vector<RunResult> results;
    for (std::uint64_t seed : o.seeds) {
      if (run_mmoe) results.push_back(train_and_test(o, features, d, "mmoe", Architecture::MMoE, {0, 1}, seed, d.rating_offset));
      if (run_single) {
        results.push_back(
            train_and_test(o, features, d, "single:rating", Architecture::SingleTask, {0}, seed, d.rating_offset));
        results.push_back(
            train_and_test(o, features, d, "single:like", Architecture::SingleTask, {1}, seed, d.rating_offset));
      }
    }
    const double wall = seconds_since(t0);

    // ---- report ----
    std::string seeds;
    for (auto s : o.seeds) seeds += (seeds.empty() ? "" : ",") + std::to_string(s);
    const Stat mmoe_rmse = stat(results, "mmoe", &RunResult::rmse), mmoe_auc = stat(results, "mmoe", &RunResult::auc);
    const Stat st_rmse = stat(results, "single:rating", &RunResult::rmse);
    const Stat st_auc = stat(results, "single:like", &RunResult::auc);
    auto secs = [&](const std::string& m) { return stat(results, m, &RunResult::seconds); };
    auto epochs = [&](const std::string& m) {
      std::string s;
      for (const auto& r : results)
        if (r.model == m) s += (s.empty() ? "" : ",") + std::to_string(r.best_epoch) + "/" + std::to_string(r.epochs);
      return s.empty() ? std::string("-") : s;
    };
    std::printf("MovieLens (%s): per-user temporal split, test metrics, mean ± std over seeds %s\n",
                o.data.c_str(), seeds.c_str());
    std::printf("config: %s\n", describe(o).c_str());
    std::printf("%-22s %-20s %-20s %-14s %s\n", "model", "rating RMSE", "like AUC", "s/run", "best/ran epochs");
    auto row = [&](const char* label, const Stat& r, const Stat& a, const std::string& m) {
      char s[32];
      std::snprintf(s, sizeof s, "%.1f", secs(m).mean);
      std::printf("%-22s %-20s %-20s %-14s %s\n", label, fmt(r).c_str(), fmt(a).c_str(), secs(m).n ? s : "-",
                  epochs(m).c_str());
    };
    if (run_mmoe) row("MMoE (4 experts)", mmoe_rmse, mmoe_auc, "mmoe");
    if (run_single) {
      row("single-task rating", st_rmse, Stat{}, "single:rating");
      row("single-task like", Stat{}, st_auc, "single:like");
    }
    std::printf("wall time: %.1f s (data %.1f s, %zu models, %d threads)\n", wall, load_seconds, results.size(),
                o.threads);
    if (run_mmoe && mmoe_rmse.n > 0) {
      const bool ok = mmoe_auc.mean >= 0.765 && mmoe_rmse.mean <= 0.93;
      std::printf("quality bar (MMoE like-AUC >= 0.765 and RMSE <= 0.93): %s\n", ok ? "met" : "NOT met");
    }

    json::Value j = json::Value::object();
    j.set("benchmark", "movielens");
    json::Value sj = json::Value::array();
    for (auto s : o.seeds) sj.push_back(std::int64_t(s));
    j.set("seeds", sj);
    json::Value m = json::Value::object();
    if (run_mmoe) {
      json::Value x = json::Value::object();
      x.set("rating_rmse", stat_json(mmoe_rmse));
      x.set("like_auc", stat_json(mmoe_auc));
      x.set("seconds_per_run", secs("mmoe").mean);
      m.set("mmoe", x);
    }
    if (run_single) {
      json::Value x = json::Value::object();
      x.set("rating_rmse", stat_json(st_rmse));
      x.set("seconds_per_run", secs("single:rating").mean);
      m.set("single_rating", x);
      json::Value y = json::Value::object();
      y.set("like_auc", stat_json(st_auc));
      y.set("seconds_per_run", secs("single:like").mean);
      m.set("single_like", y);
    }
    j.set("models", m);
    json::Value runs = json::Value::array();
    for (const auto& r : results) {
      json::Value x = json::Value::object();
      x.set("model", r.model);
      x.set("seed", std::int64_t(r.seed));
      if (!std::isnan(r.rmse)) x.set("rating_rmse", r.rmse);
      if (!std::isnan(r.auc)) x.set("like_auc", r.auc);
      x.set("best_epoch", r.best_epoch);
      x.set("epochs", r.epochs);
      x.set("seconds", r.seconds);
      runs.push_back(x);
    }
    j.set("runs", runs);
    j.set("wall_seconds", wall);
    j.set("threads", o.threads);
    j.set("config", describe(o));
    std::printf("%s\n", j.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "movielens: " << e.what() << "\n";
    return 1;
  }
}
