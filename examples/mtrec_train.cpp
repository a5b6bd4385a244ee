// mtrec-train: train any of mtrec's multi-task models on CSV files, and
// predict with the result, without writing C++. Run `mtrec-train --help`.
//
// The program is a thin layer over the library: data::CsvTable reads the
// files, data::TabularEncoder learns and applies the preprocessing (from the
// training rows only), MultiTaskModel + Trainer train, evaluate() measures.
// What it adds is the command line, the choice of what to monitor, a
// checkpoint that also carries the preprocessing (so --predict needs nothing
// but the checkpoint), the learning-curve SVG and the prediction CSV.
//
// Failure policy: every input is read, checked and encoded before training
// starts and before any output is written, and every output goes through
// io::AtomicFileWriter, so a failed run leaves no partial file behind.
#include <mtrec/io/csv.hpp>
#ifdef MTREC_WITH_HNSWLIB
#include <mtrec/serve/hnsw.hpp>  // one translation unit only (hnswlib's headers)
#endif
#include <mtrec/model/tabular.hpp>
#include <mtrec/mtrec.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <new>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace mtrec;

namespace {


const char* const kHelp = R"(mtrec-train: train a multi-task recommendation model on CSV files, or
predict with a trained one.

Usage:
  mtrec-train --train FILE [--valid FILE] [--test FILE | --split TR,VA,TE]
              FEATURES... TASKS... [MODEL] [TRAINING]
              [--save CKPT] [--curve SVG] [--predict FILE --out PRED.csv]
  mtrec-train --load CKPT --predict FILE --out PRED.csv [--keep COL]...

Input files are CSV with a header row (RFC 4180: quoted fields may contain
commas, line breaks and doubled quotes ""; CRLF line ends are accepted; empty
lines are skipped; a UTF-8 byte-order mark is skipped). Values may be strings
or integers. Column names must not contain ':' and must be valid UTF-8.

Missing values: an empty cell, or a cell that is (after trimming blanks) one
of NA, N/A, NaN, nan, null, NULL, is missing. In a task column it means no
label; in an --id column the OOV row; in --bag/--seq/--text an empty list; in
a --dense column an error naming the file, line and column, unless the column
is declared COL:impute.
  --na-values LIST         comma-separated markers that replace the default
                           set (the empty cell is always missing), e.g.
                           --na-values 'NA,-999' or --na-values '' (only the
                           empty cell). Saved in the checkpoint and applied
                           when predicting.

Feature columns (at least one; each column once):
  --id COL[:BUCKETS]       categorical ID. With BUCKETS: hashed into that many
                           embedding rows. Without: a vocabulary of the
                           training values; values not in it (new in
                           valid/test/predict files) and empty cells use the
                           reserved OOV row 0.
  --bag COL:SEP            multi-hot list, e.g. 'genres:|' (vocabulary, mean
                           of the item embeddings; empty cell = empty bag)
  --seq COL:SEP[:MAXLEN]   ordered ID sequence, e.g. 'history:|:50'; keeps
                           the LAST MAXLEN items (default 50), encoded by a
                           transformer layer and mean-pooled
  --text COL[:MAXLEN]      text: lower-cased words (split on ASCII characters
                           other than letters and digits), the FIRST MAXLEN
                           (default 20), encoded like --seq
  --dense COL[:impute]     number, standardised with the training mean and
                           std (std 0 -> 1); values must be within float
                           range (|x| <= 3.4e38). Without :impute every row
                           needs a value; with it a missing value takes the
                           training mean and a second input, COL is_missing
                           (1 or 0), tells the model; both are saved with
                           the preprocessing and applied when predicting
  --min-count N            tokens (id/bag/seq/text values) seen fewer than N
                           times in training go to the OOV row (default 1)
  SEP is one character or a name: tab, space, comma, pipe, semicolon, colon
  (quote '|' in a shell, or write genres:pipe). Items are trimmed of blanks;
  empty items are skipped.

Tasks (at least one; the first is the one early stopping watches):
  --task COL:TYPE[:WEIGHT] TYPE is binary (labels 0/1 or true/false),
                           regression (numbers) or multiclass (class names or
                           integers; classes come from the training rows, and
                           a class not seen there is an error in valid/test).
                           WEIGHT scales the task's loss (default 1). An empty
                           cell means "no label": that row is masked for that
                           task, not treated as 0.
  --task COL:bpr[:WEIGHT]  a binary task trained with the pairwise BPR loss
                           (each positive against the batch's negatives)
  --task COL:retrieval[:FEATURE][:WEIGHT]
                           a two-tower retrieval task: the label is a raw item
                           value, the model's output a query vector scored
                           against the item table (in-batch sampled softmax;
                           metrics hit_rate@10, ndcg@10). With FEATURE (an
                           --id column) it shares that feature's vocabulary
                           and embedding table (--task next:retrieval:movie);
                           without, it learns a table of COL's own values.
                           Items not seen in training leave the row unlabelled.
  --item-fields COL[,COL...]
                           the feature columns that describe the candidate
                           item (all others describe the user); saved in the
                           checkpoint, where mtrec-serve ranks with them

Model:
  --model NAME             single | shared_bottom | mmoe | ple | esmm
                           (default: single for one task, else mmoe).
                           single takes exactly one task; esmm takes two
                           binary tasks, CTR then CTCVR.
  --experts N              MMoE experts (default 4)
  --dim D                  embedding width of ids and bags, and d_model of
                           seq/text encoders (default 16)
  --bottom W[,W...]        bottom MLP of single/shared_bottom (default 128,64)
  --expert-layers W[,W...] each expert MLP of mmoe/ple (default 64,32)
  --tower W[,W...]         each task's tower before its output (default 32)
  --dropout P              after every hidden layer (default 0)
  Fixed: PLE has 2 levels of 2 shared + 1 per-task expert; seq/text encoders
  have 1 pre-LN transformer layer, 2 heads (1 when D is odd), feed-forward
  width 4*D, dropout 0.1.

Training:
  --epochs N               default 10
  --batch N                default 256
  --lr X                   default 0.001 (Adam)
  --weight-decay X         > 0 switches to AdamW with this decoupled decay
                           (default 0)
  --fused-tables           fuse each embedding table's backward with its
                           row-wise Adam update, as FBGEMM does: the table
                           gradient is never written (same results to
                           rounding; not with gradnorm or pcgrad)
  --precision P            fp32 | bf16 (default fp32): bf16 runs the layers'
                           matrix products as bf16 GEMMs with fp32
                           accumulation on AMX or AVX512_BF16 (fp32 where the
                           CPU has neither); weights, optimizer state and
                           embeddings stay fp32. Saved in the checkpoint.
  --weighting W            fixed | uncertainty | gradnorm | pcgrad (default
                           fixed; gradnorm and pcgrad need 2+ tasks)
  --patience N             stop after N epochs without improvement on the
                           validation data and restore the best epoch's
                           weights (default 0: run all epochs). Monitored:
                           the first task's AUC (binary; log loss if the
                           validation rows have one class only), RMSE
                           (regression) or accuracy (multiclass).
  --seed N                 initialisation, shuffling, dropout and --split
                           (default 0)
  --threads N              worker threads (default: OpenMP's, that is
                           OMP_NUM_THREADS or every core). Results do not
                           depend on it. On a machine busy with other work,
                           --threads 1 or OMP_WAIT_POLICY=passive can be
                           many times faster (idle OpenMP threads spin).
  --quiet                  no progress output on stderr

Data:
  --train FILE             training rows. Vocabularies, means/stds and
                           classes are learned from these rows only.
  --valid FILE             validation rows: early stopping, learning curve
  --test FILE              test rows: the final metrics
  --split TR,VA,TE         instead of --valid/--test: a seeded random split of
                           --train, e.g. 0.8,0.1,0.1 (sum 1 within 1e-6; a 0
                           leaves that part out)

Output:
  --save CKPT.safetensors  the model with its feature spec (vocabularies and
                           their OOV row, hash salts, dense mean/std, the
                           tokenizer, column declarations, item sides, class
                           names): mtrec::load_checkpoint reads both, and the
                           loaded model encodes raw values (model.encode)
  --hnsw                   with --save: also an HNSW index (hnswlib; M 16,
                           ef_construction 200) of each retrieval task's
                           trained item table, saved beside it as
                           CKPT.TASK.hnsw (+ .json), for mtrec-serve --index
  --curve FILE.svg         learning curve: each task's monitored validation
                           metric per epoch (training loss without validation)
  --predict FILE           rows to predict: with --load, or after training
  --out PRED.csv           predictions, one row per input row in input order:
                           binary -> probability, regression -> value,
                           multiclass -> predicted class name followed by one
                           probability column per class ("TASK:CLASS"); esmm
                           adds "cvr" (pCVR). Task columns of FILE are not
                           read and may be missing.
  --keep COL               copy input column COL into --out, before the
                           predictions (repeatable)
  Regression targets are standardised with the training mean/std while
  training; predictions, the JSON's RMSE and MAE and the curve are in the
  original units (the per-epoch progress lines show the standardised scale).

  Progress goes to stderr. The last line on stdout is one JSON object:
    {"model":"mmoe","epochs_run":5,"best_epoch":4,"stopped_early":false,
     "train_seconds":1.9,"monitor":"auc:click","rows":{...},"split":"test",
     "test":{"click":{"auc":0.81,"logloss":0.47},
             "rating":{"rmse":0.9,"mae":0.7},
             "genre":{"accuracy":0.6,"logloss":1.1}}}
  "test" holds metrics on --test or the test split; without one, on the
  validation rows, else on the training rows; "split" says which. An
  undefined metric (AUC with one class present) is null. "best_epoch" is the
  epoch with the best monitored value; the model keeps that epoch's weights
  only with --patience (else the last epoch's). --predict alone prints
  {"predicted":ROWS,"out":PATH,...}.

  Exit status: 0 success, 1 bad data or a failure, 2 bad command line. Errors
  name the file, line and column (or the flag). Output files are written
  atomically: a failed run leaves none half-written. Integer flags are range
  checked, never truncated: --epochs, --patience up to 2147483647, --batch up
  to 16777216, --threads up to 1024, --dim up to 65536, --experts up to 1024,
  layer widths up to 1048576. A model whose parameters, gradients and Adam
  state would not fit in this machine's memory is refused before anything is
  allocated, naming the flag and the bytes.

Example:
  mtrec-train --train data.csv --id user --id item:100000 --bag 'genres:|' \
      --text title:12 --dense age \
      --task click:binary --task rating:regression \
      --model mmoe --split 0.8,0.1,0.1 --epochs 10 --patience 2 \
      --save model.safetensors --curve curve.svg
  mtrec-train --load model.safetensors --predict new.csv --out pred.csv \
      --keep user --keep item
)";

// A command-line mistake: exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Parts>
[[noreturn]] void usage_fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw UsageError(os.str());
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// ---- options ---------------------------------------------------------------------------

struct Options {
  data::TabularSchema schema;
  std::string model;  // empty: single for one task, else mmoe
  index_t experts = 4, dim = 16;
  std::vector<index_t> bottom = {128, 64}, expert = {64, 32}, tower = {32};
  double dropout = 0;
  int epochs = 10;
  index_t batch = 256;
  double lr = 1e-3, weight_decay = 0;
  bool fused_tables = false;
  Precision precision = Precision::FP32;
  bool hnsw = false;
  int patience = 0;
  std::uint64_t seed = 0;
  int threads = 0;
  Weighting weighting = Weighting::Fixed;
  bool quiet = false;
  std::string train, valid, test, split, save, load, predict, out, curve;
  std::vector<std::string> keep;
  std::vector<std::string> item_fields;
  std::vector<std::string> training_flags;  // given flags that only make sense when training
};

// An integer flag in [lo, hi]: a value outside is an error, never truncated
// to the type that holds it.
long long int_value(const std::string& flag, const std::string& v, long long lo, long long hi) {
  long long x = 0;
  if (!data::parse_integer(v, x) || x < lo || x > hi)
    usage_fail("flag ", flag, " expects an integer in [", lo, ", ", hi, "] but got '", v, "'");
  return x;
}
constexpr long long kMaxInt = INT_MAX;
constexpr long long kMaxBatch = 1LL << 24;
constexpr long long kMaxThreads = 1024;
constexpr long long kMaxDim = 1LL << 16;
constexpr long long kMaxWidth = 1LL << 20;
constexpr long long kMaxExperts = 1024;
double number_value(const std::string& flag, const std::string& v, double lo, bool strict) {
  double x = 0;
  if (!data::parse_number(v, x) || (strict ? x <= lo : x < lo))
    usage_fail("flag ", flag, " expects a number ", strict ? "> " : ">= ", lo, " but got '", v, "'");
  return x;
}
std::vector<index_t> widths_value(const std::string& flag, const std::string& v) {
  std::vector<index_t> w;
  std::size_t start = 0;
  while (start <= v.size()) {
    std::size_t end = v.find(',', start);
    if (end == std::string::npos) end = v.size();
    w.push_back(index_t(int_value(flag, v.substr(start, end - start), 1, kMaxWidth)));
    start = end + 1;
  }
  return w;
}

Options parse_args(int argc, char** argv, bool& help) {
  Options o;
  help = false;
  std::set<std::string> seen;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help = true;
      return o;
    }
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0)
      usage_fail("unexpected argument '", arg, "' (flags start with --; run mtrec-train --help)");
    std::string value;
    bool has_value = false;
    const std::size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    static const std::set<std::string> flags = {
        "--id", "--bag", "--seq", "--text", "--dense", "--min-count", "--task", "--model", "--experts", "--dim",
        "--bottom", "--expert-layers", "--tower", "--dropout", "--epochs", "--batch", "--lr", "--weight-decay",
        "--weighting", "--patience", "--seed", "--threads", "--quiet", "--train", "--valid", "--test", "--split",
        "--save", "--load", "--predict", "--out", "--curve", "--keep", "--na-values", "--fused-tables",
        "--item-fields", "--hnsw", "--precision"};
    if (!flags.count(arg)) usage_fail("unknown flag '", arg, "' (run mtrec-train --help for the list)");
    const bool repeatable = arg == "--id" || arg == "--bag" || arg == "--seq" || arg == "--text" || arg == "--dense" ||
                            arg == "--task" || arg == "--keep";
    if (!repeatable && !seen.insert(arg).second) usage_fail("flag ", arg, " is given twice");
    if (arg == "--quiet") {
      if (has_value) usage_fail("flag --quiet takes no value");
      o.quiet = true;
      continue;
    }
    if (arg == "--fused-tables") {
      if (has_value) usage_fail("flag --fused-tables takes no value");
      o.fused_tables = true;
      continue;
    }
    if (arg == "--hnsw") {
      if (has_value) usage_fail("flag --hnsw takes no value");
#ifndef MTREC_WITH_HNSWLIB
      usage_fail("flag --hnsw needs mtrec-train built with MTREC_WITH_HNSWLIB=ON (Debian libhnswlib-dev)");
#endif
      o.hnsw = true;
      o.training_flags.push_back(arg);
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) usage_fail("flag ", arg, " expects a value");
      value = argv[++i];
    }
    static const std::set<std::string> data_flags = {"--load", "--predict", "--out", "--keep", "--threads"};
    if (!data_flags.count(arg)) o.training_flags.push_back(arg);
    const char* f = arg.c_str();
    try {
      if (arg == "--id") o.schema.features.push_back(data::parse_feature_flag(data::ColumnKind::Id, value, f));
      else if (arg == "--bag") o.schema.features.push_back(data::parse_feature_flag(data::ColumnKind::Bag, value, f));
      else if (arg == "--seq") o.schema.features.push_back(data::parse_feature_flag(data::ColumnKind::Sequence, value, f));
      else if (arg == "--text") o.schema.features.push_back(data::parse_feature_flag(data::ColumnKind::Text, value, f));
      else if (arg == "--dense") o.schema.features.push_back(data::parse_feature_flag(data::ColumnKind::Dense, value, f));
      else if (arg == "--task") o.schema.tasks.push_back(data::parse_task_flag(value, f));
    } catch (const Error& e) {
      usage_fail(e.what());
    }
    if (arg == "--min-count") o.schema.min_count = index_t(int_value(arg, value, 1, LLONG_MAX));
    else if (arg == "--na-values") {
      o.schema.na_values = data::parse_na_values(value);
    }
    else if (arg == "--model") {
      static const std::set<std::string> models = {"single", "shared_bottom", "mmoe", "ple", "esmm"};
      if (!models.count(value))
        usage_fail("flag --model expects single, shared_bottom, mmoe, ple or esmm but got '", value, "'");
      o.model = value;
    } else if (arg == "--experts") o.experts = index_t(int_value(arg, value, 1, kMaxExperts));
    else if (arg == "--dim") o.dim = index_t(int_value(arg, value, 1, kMaxDim));
    else if (arg == "--bottom") o.bottom = widths_value(arg, value);
    else if (arg == "--expert-layers") o.expert = widths_value(arg, value);
    else if (arg == "--tower") o.tower = widths_value(arg, value);
    else if (arg == "--dropout") {
      o.dropout = number_value(arg, value, 0, false);
      if (o.dropout >= 1) usage_fail("flag --dropout expects a number in [0, 1) but got '", value, "'");
    } else if (arg == "--precision") {
      if (value == "fp32") o.precision = Precision::FP32;
      else if (value == "bf16") o.precision = Precision::BF16;
      else usage_fail("flag --precision expects fp32 or bf16 but got '", value, "'");
    } else if (arg == "--epochs") o.epochs = int(int_value(arg, value, 1, kMaxInt));
    else if (arg == "--batch") o.batch = index_t(int_value(arg, value, 1, kMaxBatch));
    else if (arg == "--lr") o.lr = number_value(arg, value, 0, true);
    else if (arg == "--weight-decay") o.weight_decay = number_value(arg, value, 0, false);
    else if (arg == "--weighting") {
      if (value == "fixed") o.weighting = Weighting::Fixed;
      else if (value == "uncertainty") o.weighting = Weighting::Uncertainty;
      else if (value == "gradnorm") o.weighting = Weighting::GradNorm;
      else if (value == "pcgrad") o.weighting = Weighting::PCGrad;
      else usage_fail("flag --weighting expects fixed, uncertainty, gradnorm or pcgrad but got '", value, "'");
    } else if (arg == "--patience") o.patience = int(int_value(arg, value, 0, kMaxInt));
    else if (arg == "--seed") {
      unsigned long long u = 0;
      const auto r = std::from_chars(value.data(), value.data() + value.size(), u, 10);
      if (r.ec != std::errc() || r.ptr != value.data() + value.size() || value.empty())
        usage_fail("flag --seed expects an integer in [0, 2^64) but got '", value, "'");
      o.seed = u;
    } else if (arg == "--threads") o.threads = int(int_value(arg, value, 1, kMaxThreads));
    else if (arg == "--train") o.train = value;
    else if (arg == "--valid") o.valid = value;
    else if (arg == "--test") o.test = value;
    else if (arg == "--split") o.split = value;
    else if (arg == "--save") o.save = value;
    else if (arg == "--load") o.load = value;
    else if (arg == "--predict") o.predict = value;
    else if (arg == "--out") o.out = value;
    else if (arg == "--curve") o.curve = value;
    else if (arg == "--keep") o.keep.push_back(value);
    else if (arg == "--item-fields") {
      data::for_each_item(value, ',', [&](std::string_view c) { o.item_fields.emplace_back(c); });
      if (o.item_fields.empty()) usage_fail("flag --item-fields expects COL[,COL...] but got '", value, "'");
    }
  }
  return o;
}

// An output file's directory must exist and be writable: found now, not
// after an hour of training.
void check_output(const char* flag, const std::string& path) {
  if (path.empty()) return;
  if (path.back() == '/') usage_fail("flag ", flag, " expects a file path but got the directory '", path, "'");
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    usage_fail("flag ", flag, " '", path, "': the directory '", dir, "' does not exist");
  if (::access(dir.c_str(), W_OK) != 0) usage_fail("flag ", flag, " '", path, "': the directory '", dir, "' is not writable");
}

Architecture architecture_of(const Options& o) {
  const std::string m = o.model.empty() ? (o.schema.tasks.size() == 1 ? "single" : "mmoe") : o.model;
  if (m == "single") return Architecture::SingleTask;
  if (m == "shared_bottom") return Architecture::SharedBottom;
  if (m == "mmoe") return Architecture::MMoE;
  if (m == "ple") return Architecture::PLE;
  return Architecture::ESMM;
}

// Combinations that cannot work, reported before any file is read.
void validate_options(const Options& o) {
  if (!o.load.empty()) {
    if (!o.training_flags.empty())
      usage_fail("flag ", o.training_flags.front(),
                 " cannot be used with --load (a loaded checkpoint only predicts: --load CKPT --predict FILE --out PRED.csv)");
    if (o.predict.empty()) usage_fail("flag --load needs --predict FILE and --out PRED.csv");
  } else if (o.train.empty()) {
    usage_fail("missing --train FILE (or --load CKPT to predict; run mtrec-train --help)");
  }
  if (o.predict.empty() != o.out.empty())
    usage_fail(o.predict.empty() ? "flag --out needs --predict FILE" : "flag --predict needs --out PRED.csv");
  if (!o.keep.empty() && o.predict.empty()) usage_fail("flag --keep needs --predict FILE and --out PRED.csv");
  if (o.hnsw && o.save.empty()) usage_fail("flag --hnsw needs --save CKPT (the index is saved beside it)");
  check_output("--save", o.save);
  check_output("--curve", o.curve);
  check_output("--out", o.out);
  if (!o.load.empty()) return;
  if (o.schema.features.empty()) usage_fail("expected at least one feature column (--id, --bag, --seq, --text or --dense)");
  if (o.schema.tasks.empty()) usage_fail("expected at least one task (--task COL:TYPE)");
  if (!o.split.empty() && (!o.valid.empty() || !o.test.empty()))
    usage_fail("flag --split cannot be combined with --valid or --test (it makes them from --train)");
  if (!o.split.empty()) {
    try {
      data::parse_split(o.split);
    } catch (const Error& e) {
      usage_fail("flag --split: ", e.what());
    }
  }
  const std::size_t K = o.schema.tasks.size();
  const Architecture a = architecture_of(o);
  if (a == Architecture::SingleTask && K != 1)
    usage_fail("flag --model single expects exactly 1 --task but got ", K, " (use shared_bottom, mmoe or ple)");
  if (a == Architecture::ESMM &&
      (K != 2 || o.schema.tasks[0].type != TaskType::Binary || o.schema.tasks[1].type != TaskType::Binary))
    usage_fail("flag --model esmm expects exactly 2 binary tasks (CTR, then CTCVR) but got ", K, " task(s)");
  if ((o.weighting == Weighting::GradNorm || o.weighting == Weighting::PCGrad) && K < 2)
    usage_fail("flag --weighting ", weighting_name(o.weighting), " needs at least 2 tasks but got ", K);
  if (o.weighting == Weighting::GradNorm && a == Architecture::ESMM)
    usage_fail("flag --weighting gradnorm needs a shared layer, which --model esmm does not have");
  if (o.patience > 0 && o.valid.empty() && o.split.empty())
    usage_fail("flag --patience needs validation data (--valid FILE, or --split with a validation fraction > 0)");
  if (o.patience > 0 && !o.split.empty() && data::parse_split(o.split).valid == 0)
    usage_fail("flag --patience needs validation data but --split ", o.split, " has a validation fraction of 0");
  // The declarations themselves (a column declared twice, a column name
  // that is not UTF-8, ...), before any file is read.
  try {
    data::TabularEncoder probe(o.schema);
  } catch (const Error& e) {
    usage_fail(e.what());
  }
}

// ---- what to monitor ----------------------------------------------------------------------

// The metric that stands for task k: AUC (binary), RMSE (regression),
// accuracy (multiclass). AUC needs both classes among the labelled rows;
// without them log loss is the next best. Empty when the data has no label
// for the task.
std::string task_metric(const ModelConfig& c, std::size_t k, const Batch<float>& data) {
  const TaskSpec& t = c.tasks[k];
  index_t count = 0, pos = 0;
  for (index_t i = 0; i < data.size; ++i) {
    const bool on = data.label_mask[k].empty() || data.label_mask[k][std::size_t(i)];
    count += on;
    pos += on && data.labels[k][std::size_t(i)] >= 0.5f;
  }
  if (count == 0) return {};
  switch (t.type) {
    case TaskType::Binary: return (pos > 0 && pos < count ? "auc:" : "logloss:") + t.name;
    case TaskType::Regression: return "rmse:" + t.name;
    case TaskType::MultiClass: return "accuracy:" + t.name;
    case TaskType::Retrieval: return "hit_rate@10:" + t.name;
  }
  return {};
}

// A metric of an evaluation in the original units (RMSE and MAE of a
// regression task are scaled back from the standardised targets), or NaN.
double metric_value(const Evaluation& ev, const data::TabularEncoder& enc, std::size_t k, const std::string& name) {
  if (k >= ev.tasks.size()) return std::nan("");
  const auto& vals = ev.tasks[k].values;
  const auto it = vals.find(name);
  if (it == vals.end() || !std::isfinite(it->second)) return std::nan("");
  double v = it->second;
  if (enc.schema().tasks[k].type == TaskType::Regression && (name == "rmse" || name == "mae"))
    v *= enc.target(k).sd;
  return v;
}

json::Value number_or_null(double v) { return std::isfinite(v) ? json::Value(v) : json::Value(); }

json::Value metrics_json(const Evaluation& ev, const data::TabularEncoder& enc) {
  json::Value out = json::Value::object();
  for (std::size_t k = 0; k < enc.schema().tasks.size(); ++k) {
    const TaskType type = enc.schema().tasks[k].type;
    const char* names[2] = {"auc", "logloss"};
    if (type == TaskType::Regression) names[0] = "rmse", names[1] = "mae";
    if (type == TaskType::MultiClass) names[0] = "accuracy", names[1] = "logloss";
    if (type == TaskType::Retrieval) names[0] = "hit_rate@10", names[1] = "ndcg@10";
    json::Value t = json::Value::object();
    for (const char* n : names) t.set(n, number_or_null(metric_value(ev, enc, k, n)));
    out.set(enc.schema().tasks[k].column, std::move(t));
  }
  return out;
}

// ---- checkpoint with preprocessing -----------------------------------------------------------

// A regular checkpoint: the encoder is the model's feature spec
// (set_preprocessing), which save_checkpoint stores and load_checkpoint
// restores.
void save_model(const std::string& path, const MultiTaskModel<float>& model) {
  save_checkpoint<float>(path, model, nullptr);
}

struct Loaded {
  std::unique_ptr<MultiTaskModel<float>> model;
  const data::TabularEncoder* encoder = nullptr;  // the model's feature spec
};

Loaded load_model(const std::string& path) {
  Loaded l;
  // The library's loader: the config is range-checked and compared with the
  // file's tensors before anything is allocated, non-finite weights are
  // refused, and the feature spec is checked against the model.
  l.model = load_checkpoint<float>(path);
  l.encoder = l.model->preprocessing();
  check(l.encoder != nullptr, "load_checkpoint", "'", path,
        "' has no feature spec (metadata 'preprocessing'): it was not written by mtrec-train --save, so there is "
        "no preprocessing to apply to CSV files");
  return l;
}

// ---- memory ----------------------------------------------------------------------------------

std::string fmt(const char* f, double v);

// Bytes per parameter while training: the float value, its gradient and
// Adam's two moments.
constexpr double kTrainingBytesPerParameter = 4.0 * sizeof(float);

double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? double(pages) * double(page) : 64.0 * (1ull << 30);
}

// The parameters of a model, estimated from its configuration without
// building it (in double: no overflow whatever the flags), by the part of the
// model they belong to and the flag that sizes that part.
struct SizeEstimate {
  double total = 0, largest = 0;
  std::string largest_flag, largest_what;
  void add(double n, const std::string& flag, const std::string& what) {
    total += n;
    if (n > largest) largest = n, largest_flag = flag, largest_what = what;
  }
};

double mlp_parameters(double in, const std::vector<index_t>& widths) {
  double n = 0;
  for (index_t w : widths) n += in * double(w) + double(w), in = double(w);
  return n;
}

SizeEstimate estimate_parameters(const Options& o, const ModelConfig& cfg) {
  SizeEstimate e;
  const FeatureSpec& f = cfg.features;
  const std::string dim = " (with --dim " + std::to_string(o.dim) + ")";
  auto flag_of = [&](const std::string& column) {
    for (const auto& fc : o.schema.features)
      if (fc.column == column) return "flag " + fc.flag() + dim;
    return "flag --dim " + std::to_string(o.dim);
  };
  double F = 0;  // the width of the feature vector
  for (const auto& x : f.ids) {
    e.add(double(x.hash_buckets > 0 ? x.hash_buckets : x.vocab) * double(x.dim), flag_of(x.name), "embedding table '" + x.name + "'");
    F += double(x.dim);
  }
  for (const auto& x : f.bags) {
    e.add(double(x.hash_buckets > 0 ? x.hash_buckets : x.vocab) * double(x.dim), flag_of(x.name), "embedding table '" + x.name + "'");
    F += double(x.dim);
  }
  for (const auto& x : f.sequences) {
    const double d = double(x.encoder.d_model), ffn = double(x.encoder.ffn);
    e.add(double(x.hash_buckets > 0 ? x.hash_buckets : x.vocab) * d, flag_of(x.name), "embedding table '" + x.name + "'");
    e.add(double(x.layers) * (4 * d * d + 2 * d * ffn + 9 * d + ffn), "flag --dim " + std::to_string(o.dim),
          "transformer encoder of '" + x.name + "' (d_model --dim, feed-forward 4 x --dim)");
    F += d;
  }
  for (const auto& x : f.dense) F += double(x.dim);
  const double K = double(cfg.tasks.size());
  double tower_in = F;
  const std::string layers = "flags --bottom / --expert-layers / --experts (with --dim " + std::to_string(o.dim) + ")";
  switch (cfg.architecture) {
    case Architecture::SingleTask:
    case Architecture::SharedBottom:
      e.add(mlp_parameters(F, cfg.bottom), layers, "bottom MLP");
      tower_in = double(cfg.bottom.back());
      break;
    case Architecture::MMoE:
      e.add(double(cfg.experts) * mlp_parameters(F, cfg.expert) + K * (F + 1) * double(cfg.experts), layers,
            "experts and gates");
      tower_in = double(cfg.expert.back());
      break;
    case Architecture::PLE: {
      double in = F, n = 0;
      const double experts = double(cfg.ple_shared_experts) + K * double(cfg.ple_task_experts);
      for (int l = 0; l < cfg.ple_levels; ++l, in = double(cfg.expert.back()))
        n += experts * mlp_parameters(in, cfg.expert) + (K + 1) * (in + 1) * experts;
      e.add(n, layers, "experts and gates");
      tower_in = double(cfg.expert.back());
      break;
    }
    default: break;  // ESMM: the towers read the features directly
  }
  double towers = 0;
  for (const auto& t : cfg.tasks) {
    const double out = t.type == TaskType::MultiClass ? double(t.num_classes) : 1.0;
    towers += mlp_parameters(tower_in, t.tower) + (double(t.tower.empty() ? tower_in : double(t.tower.back())) + 1) * out;
  }
  e.add(towers, "flag --tower", "task towers");
  return e;
}

// Refuses, before anything is allocated, a model whose training state would
// not fit in this machine's memory, naming the flag behind its largest part
// and the bytes asked for. Returns the bytes of the parameters.
double check_model_size(const Options& o, const ModelConfig& cfg) {
  const SizeEstimate e = estimate_parameters(o, cfg);
  const double bytes = e.total * sizeof(float), training = e.total * kTrainingBytesPerParameter;
  const double limit = physical_memory_bytes();
  if (training <= limit) return bytes;
  fail("build_model", e.largest_flag, ": the model needs about ", fmt("%.0f", e.total), " parameters (",
       fmt("%.0f", e.largest), " in its ", e.largest_what, "): ", fmt("%.0f", bytes), " bytes, and ",
       fmt("%.0f", training), " bytes with gradients and Adam state, more than the ", fmt("%.0f", limit),
       " bytes of memory of this machine; use fewer hash buckets, a smaller --dim or narrower layers");
}

// ---- predictions ----------------------------------------------------------------------------

void append_float(std::string& out, double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, float(v));  // shortest text that reads back as the float
  out.append(buf, r.ptr);
}

// A predict file read and encoded up front, written after training.
struct PredictInput {
  data::CsvTable table;
  Batch<float> batch;
  std::vector<std::size_t> keep_cols;
};

PredictInput prepare_predict(const Options& o, const data::TabularEncoder& enc) {
  PredictInput p{data::CsvTable::read_file(o.predict), {}, {}};
  for (const auto& k : o.keep) p.keep_cols.push_back(p.table.require_column(k, "--keep " + k));
  p.batch = enc.transform<float>(p.table, nullptr, false);
  return p;
}

void write_predictions(const std::string& path, const PredictInput& in, const MultiTaskModel<float>& model,
                       const data::TabularEncoder& enc) {
  const ModelConfig& cfg = model.config();
  const std::size_t K = cfg.tasks.size();
  std::string out;
  out.reserve(std::size_t(in.batch.size) * (16 * (K + in.keep_cols.size()) + 8) + 256);
  // Header: kept columns, then per task its value (and class probabilities).
  bool first = true;
  auto field = [&](std::string_view s) {
    if (!first) out += ',';
    first = false;
    data::append_csv_field(out, s);
  };
  for (std::size_t c : in.keep_cols) field(in.table.header()[c]);
  for (std::size_t k = 0; k < K; ++k) {
    field(cfg.tasks[k].name);
    if (cfg.tasks[k].type == TaskType::MultiClass)
      for (const auto& cls : enc.classes(k)) field(cfg.tasks[k].name + ":" + cls);
    if (cfg.tasks[k].type == TaskType::Retrieval) field(cfg.tasks[k].name + ":score");
  }
  if (cfg.architecture == Architecture::ESMM) field("cvr");
  out += '\n';
  // Retrieval tasks: the best item of the whole table (its raw value, and
  // the score dot(query, item) / temperature), never the OOV row.
  std::vector<std::unique_ptr<ExactRetriever<float>>> retrievers(K);
  for (std::size_t k = 0; k < K; ++k)
    if (cfg.tasks[k].type == TaskType::Retrieval) retrievers[k] = std::make_unique<ExactRetriever<float>>(model, cfg.tasks[k].name);
  const std::vector<index_t> oov_row = {data::Vocabulary::kOov};
  typename MultiTaskModel<float>::Workspace ws;
  Batch<float> batch;
  Tensor<float> pred;
  std::vector<index_t> rows;
  const index_t N = in.batch.size, C = model.output_width(), B = 1024;
  for (index_t start = 0; start < N; start += B) {
    const index_t n = std::min(B, N - start);
    rows.resize(std::size_t(n));
    for (index_t i = 0; i < n; ++i) rows[std::size_t(i)] = start + i;
    batch.gather(in.batch, rows.data(), n);
    model.predict(ws, batch, pred);
    for (index_t i = 0; i < n; ++i) {
      first = true;
      for (std::size_t c : in.keep_cols) field(in.table.cell(std::size_t(start + i), c));
      const float* p = pred.data() + i * C;
      index_t col = 0;
      for (std::size_t k = 0; k < K; ++k) {
        const TaskSpec& t = cfg.tasks[k];
        if (!first) out += ',';
        first = false;
        if (t.type == TaskType::Binary) {
          append_float(out, p[col++]);
        } else if (t.type == TaskType::Regression) {
          append_float(out, enc.target(k).invert(p[col++]));
        } else if (t.type == TaskType::Retrieval) {
          const auto& top = retrievers[k]->search(ConstView<float>(p + col, {t.target_dim}), 1, oov_row);
          if (top.empty()) {
            out += ',';
          } else {
            data::append_csv_field(out, enc.item_vocabulary(k).token(top[0].row));
            out += ',';
            append_float(out, top[0].score);
          }
          col += t.target_dim;
        } else {
          index_t best = 0;
          for (index_t c = 1; c < t.num_classes; ++c)
            if (p[col + c] > p[col + best]) best = c;
          data::append_csv_field(out, enc.classes(k)[std::size_t(best)]);
          for (index_t c = 0; c < t.num_classes; ++c) {
            out += ',';
            append_float(out, p[col + c]);
          }
          col += t.num_classes;
        }
      }
      if (cfg.architecture == Architecture::ESMM) {
        out += ',';
        append_float(out, p[col]);
      }
      out += '\n';
    }
  }
  io::AtomicFileWriter w(path);
  w.write(out.data(), out.size());
  w.commit();
}

// ---- learning curve ----------------------------------------------------------------------------

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

struct Series {
  std::string label;
  std::vector<double> values;  // per epoch; NaN = no point
};

// A line chart in plain SVG: epochs on x, one polyline (with point markers,
// so a single epoch still shows) per series, a legend on the right.
std::string curve_svg(const std::string& title, const std::string& ylabel, const std::vector<Series>& series, int epochs) {
  const double W = 760, H = 440, L = 80, R = 210, T = 50, Bm = 60;
  const double pw = W - L - R, ph = H - T - Bm;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& s : series)
    for (double v : s.values)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi - lo < 1e-12) {
    const double d = std::max(std::fabs(lo) * 0.05, 1e-3);
    lo -= d, hi += d;
  }
  const double pad = 0.05 * (hi - lo);
  lo -= pad, hi += pad;
  auto X = [&](double e) { return epochs <= 1 ? L + pw / 2 : L + (e - 1) / double(epochs - 1) * pw; };
  auto Y = [&](double v) { return T + ph * (1 - (v - lo) / (hi - lo)); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << ' ' << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << L + pw / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"15\">" << xml_escape(title)
    << "</text>\n";
  // Grid and y ticks at round values: a step of 1, 2 or 5 times a power of
  // ten giving about five ticks.
  const double raw = (hi - lo) / 5, mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double tick = raw / mag < 1.5 ? mag : raw / mag < 3.5 ? 2 * mag : raw / mag < 7.5 ? 5 * mag : 10 * mag;
  for (double v = std::ceil(lo / tick) * tick; v <= hi + 1e-9 * tick; v += tick) {
    const double y = Y(v);
    s << "<line x1=\"" << L << "\" y1=\"" << y << "\" x2=\"" << L + pw << "\" y2=\"" << y
      << "\" stroke=\"#e5e5e5\"/>\n";
    s << "<text x=\"" << L - 8 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">" << fmt("%.6g", std::fabs(v) < 1e-9 * tick ? 0.0 : v) << "</text>\n";
  }
  // x ticks: every epoch, or about ten of them.
  const int step = std::max(1, (epochs + 9) / 10);
  for (int e = 1; e <= epochs; e += step) {
    const double x = X(e);
    s << "<line x1=\"" << x << "\" y1=\"" << T + ph << "\" x2=\"" << x << "\" y2=\"" << T + ph + 5
      << "\" stroke=\"black\"/>\n";
    s << "<text x=\"" << x << "\" y=\"" << T + ph + 19 << "\" text-anchor=\"middle\">" << e << "</text>\n";
  }
  // Axes and their labels.
  s << "<line x1=\"" << L << "\" y1=\"" << T + ph << "\" x2=\"" << L + pw << "\" y2=\"" << T + ph
    << "\" stroke=\"black\"/>\n";
  s << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << T + ph << "\" stroke=\"black\"/>\n";
  s << "<text x=\"" << L + pw / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">epoch</text>\n";
  s << "<text x=\"18\" y=\"" << T + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 18 " << T + ph / 2
    << ")\">" << xml_escape(ylabel) << "</text>\n";
  for (std::size_t k = 0; k < series.size(); ++k) {
    const char* color = colors[k % 8];
    std::ostringstream pts;
    for (std::size_t e = 0; e < series[k].values.size(); ++e) {
      const double v = series[k].values[e];
      if (!std::isfinite(v)) continue;
      pts << X(double(e + 1)) << ',' << Y(v) << ' ';
      s << "<circle cx=\"" << X(double(e + 1)) << "\" cy=\"" << Y(v) << "\" r=\"3\" fill=\"" << color << "\"/>\n";
    }
    s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\" points=\"" << pts.str() << "\"/>\n";
    const double ly = T + 10 + 20 * double(k);
    s << "<line x1=\"" << L + pw + 16 << "\" y1=\"" << ly << "\" x2=\"" << L + pw + 40 << "\" y2=\"" << ly
      << "\" stroke=\"" << color << "\" stroke-width=\"2\"/>\n";
    s << "<text x=\"" << L + pw + 46 << "\" y=\"" << ly + 4 << "\">" << xml_escape(series[k].label) << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

void write_curve(const std::string& path, const History& h, const ModelConfig& cfg, const data::TabularEncoder& enc,
                 const Batch<float>* valid) {
  std::vector<Series> series;
  const int E = int(h.epochs.size());
  std::string title, ylabel;
  if (valid && valid->size > 0) {
    title = "validation metric per epoch";
    std::vector<std::string> names;  // distinct metric names, for the axis label
    for (std::size_t k = 0; k < cfg.tasks.size(); ++k) {
      const std::string m = task_metric(cfg, k, *valid);
      if (m.empty()) continue;
      const std::string name = m.substr(0, m.find(':'));
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
      Series s{cfg.tasks[k].name + " (" + name + ")", {}};
      for (const auto& r : h.epochs) s.values.push_back(metric_value(r.valid, enc, k, name));
      series.push_back(std::move(s));
    }
    ylabel = "validation";
    for (std::size_t i = 0; i < names.size(); ++i) ylabel += (i ? " / " : " ") + names[i];
  } else {
    title = "training loss per epoch (no validation data)";
    ylabel = "training loss";
    for (std::size_t k = 0; k < cfg.tasks.size(); ++k) {
      Series s{cfg.tasks[k].name + " (train loss)", {}};
      for (const auto& r : h.epochs) s.values.push_back(r.train_task_loss[k]);
      series.push_back(std::move(s));
    }
  }
  const std::string svg = curve_svg(title, ylabel, series, E);
  io::AtomicFileWriter w(path);
  w.write(svg.data(), svg.size());
  w.commit();
}

// ---- the two modes ------------------------------------------------------------------------------

int run_predict_only(const Options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  Loaded l = load_model(o.load);
  const PredictInput in = prepare_predict(o, *l.encoder);
  write_predictions(o.out, in, *l.model, *l.encoder);
  json::Value j = json::Value::object();
  j.set("model", architecture_name(l.model->config().architecture));
  j.set("predicted", in.batch.size);
  // JSON text must be UTF-8; a path need not be.
  j.set("out", data::detail::invalid_utf8_at(o.out) == std::string_view::npos ? o.out : data::detail::escaped(o.out));
  j.set("seconds", seconds_since(t0));
  std::cout << j.dump() << std::endl;
  return 0;
}

int run_train(const Options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto info = [&](const std::string& s) {
    if (!o.quiet) std::cerr << "mtrec-train: " << s << std::endl;
  };
  // Read, check and encode every input first.
  const data::CsvTable train_table = data::CsvTable::read_file(o.train);
  data::RowSplit split;
  const bool use_split = !o.split.empty();
  if (use_split) split = data::split_rows(train_table.rows(), data::parse_split(o.split), o.seed);
  data::TabularSchema schema = o.schema;
  for (const auto& col : o.item_fields) {
    bool found = false;
    for (auto& f : schema.features)
      if (f.column == col) f.item_side = found = true;
    if (!found) usage_fail("flag --item-fields names '", col, "', which is not a feature column (--id, --bag, --seq, --text, --dense)");
  }
  data::TabularEncoder enc(schema);
  enc.fit(train_table, use_split ? &split.train : nullptr);
  const Batch<float> train = enc.transform<float>(train_table, use_split ? &split.train : nullptr, true);
  Batch<float> valid, test;
  if (use_split) {
    if (!split.valid.empty()) valid = enc.transform<float>(train_table, &split.valid, true);
    if (!split.test.empty()) test = enc.transform<float>(train_table, &split.test, true);
  } else {
    if (!o.valid.empty()) valid = enc.transform<float>(data::CsvTable::read_file(o.valid), nullptr, true);
    if (!o.test.empty()) test = enc.transform<float>(data::CsvTable::read_file(o.test), nullptr, true);
  }
  std::unique_ptr<PredictInput> pred_in;
  if (!o.predict.empty()) pred_in = std::make_unique<PredictInput>(prepare_predict(o, enc));
  if (o.patience > 0 && valid.size == 0) fail("mtrec-train", "--patience needs validation rows but the validation data is empty");
  info("read " + std::to_string(train_table.rows()) + " rows of '" + o.train + "' and encoded train " +
       std::to_string(train.size) + " / valid " + std::to_string(valid.size) + " / test " + std::to_string(test.size) +
       " rows in " + fmt("%.3f", seconds_since(t0)) + " s");

  ModelConfig cfg;
  TransformerConfig tf;
  tf.d_model = o.dim;
  tf.heads = o.dim % 2 == 0 ? 2 : 1;
  tf.ffn = 4 * o.dim;
  tf.dropout = 0.1;
  cfg.features = enc.feature_spec(o.dim, tf);
  cfg.tasks = enc.task_specs(o.tower, o.dim);
  cfg.architecture = architecture_of(o);
  cfg.bottom = o.bottom;
  cfg.experts = o.experts;
  cfg.expert = o.expert;
  cfg.dropout = o.dropout;
  cfg.precision = o.precision;
  cfg.seed = o.seed;
  const double param_bytes = check_model_size(o, cfg);
  std::unique_ptr<MultiTaskModel<float>> model_ptr;
  try {
    model_ptr = std::make_unique<MultiTaskModel<float>>(cfg);
  } catch (const std::bad_alloc&) {
    fail("build_model", "could not allocate the model's ", fmt("%.0f", param_bytes),
         " bytes of parameters (flags --dim ", o.dim, ", --id COL:BUCKETS, layer widths)");
  }
  MultiTaskModel<float>& model = *model_ptr;
  model.set_preprocessing(enc);  // saved with the model

  const Batch<float>* valid_ptr = valid.size > 0 ? &valid : nullptr;
  TrainConfig tc;
  tc.epochs = o.epochs;
  tc.batch_size = o.batch;
  tc.optimizer = o.weight_decay > 0 ? OptimizerConfig::adamw(o.lr, o.weight_decay) : OptimizerConfig::adam(o.lr);
  tc.optimizer.fused_tables = o.fused_tables;
  tc.weighting = o.weighting;
  tc.patience = o.patience;
  tc.seed = o.seed;
  tc.progress = !o.quiet;
  tc.log = &std::cerr;
  tc.monitor = "loss";
  if (valid_ptr) {
    const std::string m = task_metric(cfg, 0, valid);
    if (!m.empty()) tc.monitor = m;
  }
  info("training " + std::string(architecture_name(cfg.architecture)) + " (" +
       std::to_string(model.parameters().size()) + " parameters) for up to " + std::to_string(o.epochs) +
       " epochs, monitoring " + (valid_ptr ? "validation " + tc.monitor : std::string("the training loss")) +
       ", matrix products in " + precision_name(cfg.precision) + " (" + kernels::bf16_path_name(model.matmul_path()) +
       (cfg.precision == Precision::BF16 && model.matmul_path() == kernels::Bf16Path::fp32
            ? ": no AMX or AVX512_BF16 on this CPU"
            : "") +
       ")");
  Trainer<float> trainer(model, tc);
  const History h = trainer.fit(train, valid_ptr);

  const Batch<float>* eval = test.size > 0 ? &test : valid_ptr ? valid_ptr : &train;
  const char* eval_name = test.size > 0 ? "test" : valid_ptr ? "valid" : "train";
  const Evaluation ev = evaluate(model, *eval, 1024);

  json::Value j = json::Value::object();
  j.set("model", architecture_name(cfg.architecture));
  j.set("epochs_run", int(h.epochs.size()));
  j.set("best_epoch", h.best_epoch);
  j.set("stopped_early", h.stopped_early);
  j.set("train_seconds", h.train_seconds);
  j.set("monitor", valid_ptr ? tc.monitor : std::string("train_loss"));
  json::Value rows = json::Value::object();
  rows.set("train", train.size);
  rows.set("valid", valid.size);
  rows.set("test", test.size);
  j.set("rows", std::move(rows));
  j.set("split", eval_name);
  j.set("precision", precision_name(cfg.precision));
  j.set("matmul_path", kernels::bf16_path_name(model.matmul_path()));
  j.set("test", metrics_json(ev, enc));

  if (!o.save.empty()) {
    save_model(o.save, model);
    info("saved '" + o.save + "'");
#ifdef MTREC_WITH_HNSWLIB
    if (o.hnsw)
      for (std::size_t k = 0; k < model.config().tasks.size(); ++k) {
        if (model.config().tasks[k].type != TaskType::Retrieval) continue;
        const auto table = model.target_table(k);
        const std::string path = o.save + "." + model.config().tasks[k].name + ".hnsw";
        HnswIndex(ConstView<float>(table.data, table.shape)).save(path);
        info("saved the HNSW index '" + path + "' (" + std::to_string(table.shape[0]) + " rows)");
      }
#endif
  }
  if (!o.curve.empty()) write_curve(o.curve, h, cfg, enc, valid_ptr);
  if (pred_in) {
    write_predictions(o.out, *pred_in, model, enc);
    j.set("predicted", pred_in->batch.size);
  }
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    bool help = false;
    const Options o = parse_args(argc, argv, help);
    if (help) {
      std::cout << kHelp;
      return 0;
    }
    validate_options(o);
    if (o.threads > 0) set_num_threads(o.threads);
    return o.load.empty() ? run_train(o) : run_predict_only(o);
  } catch (const UsageError& e) {
    std::cerr << "mtrec-train: error: " << e.what() << "\n(run mtrec-train --help for usage)" << std::endl;
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "mtrec-train: error: out of memory (std::bad_alloc); try fewer hash buckets, a smaller --dim or "
                 "--batch, or narrower layers"
              << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "mtrec-train: error: " << e.what() << std::endl;
    return 1;
  }
}
