// mtrec: the pieces of a model server, without HTTP or JSON.
//
//   serve::ModelHandle handle;
//   handle.load("model.safetensors");              // version 1
//   auto live = handle.get();                      // a request keeps its model alive
//   serve::Ranker ranker;                          // one per thread
//   auto items = ranker.rank(*live, user, candidates, 10);
//   serve::Retriever retriever;                    // one per thread
//   auto hits = retriever.retrieve(*live, user, "next", 100, {"31", "1029"});
//   handle.load("model-v2.safetensors");           // version 2; requests in
//                                                  // flight finish on version 1
//
// ModelHandle holds the live model (a checkpoint loaded with its feature
// spec) behind a shared pointer. load() reads and validates the new
// checkpoint beside the live one and swaps it in atomically; a checkpoint
// that fails to load throws and leaves the live model serving. A request
// takes get() once and uses that model to the end.
//
// Ranker: one user and N candidates, as raw values (data::RawRows). Each
// candidate row is the user's values with the candidate's on top (a
// candidate's value wins for a field both give), encoded by the model's
// feature spec and scored by MultiTaskModel::predict_ranking: the user-side
// fields (item_side = false) once, their share of every first layer once.
// When a candidate sets a user-side field, one plain batched predict. The scores are the
// numbers mtrec-train --predict writes for the same rows: binary tasks a
// probability, regression tasks the value in the label's units, multi-class
// tasks one probability per class ("task:class"), ESMM also "cvr". Retrieval
// tasks have no per-candidate score here. Candidates are ranked by the first
// score, best first, ties by lower index.
//
// Retriever: the user's query vector for a retrieval task, scored against the
// task's whole target table (ExactRetriever: blocked dot products and a
// bounded heap), the items in `exclude` (raw values; unknown ones ignored)
// and the OOV row never returned. An item is returned as its raw value.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "mtrec/model/multitask.hpp"
#include "mtrec/serve/retrieval.hpp"
#include "mtrec/train/checkpoint.hpp"

namespace mtrec {
namespace serve {

// An index over a retrieval task's target table that answers top-k
// queries, e.g. an HnswIndex (serve/hnsw.hpp; mtrec-serve --index). Scores
// are inner products <q, row>; search is called from many threads at once.
struct ItemIndex {
  virtual ~ItemIndex() = default;
  virtual void search(std::vector<ScoredItem>& out, ConstView<float> q, index_t k,
                      const std::vector<index_t>& exclude) const = 0;
  virtual index_t rows() const = 0;
  virtual index_t dim() const = 0;
};

// A loaded checkpoint and where it came from.
struct ServedModel {
  std::unique_ptr<MultiTaskModel<float>> model;
  std::string path;
  std::uint64_t version = 0;  // 1 for the first load, +1 per successful reload
  // Retrieval tasks answered by an index instead of the exact search.
  std::map<std::string, std::shared_ptr<const ItemIndex>> indexes;

  const data::TabularEncoder& spec() const { return *model->preprocessing(); }
};

class ModelHandle {
 public:
  // Loads `path` (a checkpoint with a feature spec), then swaps it in.
  // Throws, leaving the live model as it was, when the file does not load.
  // Returns the new version. Safe to call while other threads serve.
  // `attach` (optional) completes the new model before it goes live, e.g.
  // loads its retrieval indexes; if it throws, nothing changes either.
  std::uint64_t load(const std::string& path, const std::function<void(ServedModel&)>& attach = {}) {
    auto m = std::make_shared<ServedModel>();
    m->model = load_checkpoint<float>(path);  // validated: config, tensors, finite weights, feature spec
    check(m->model->preprocessing() != nullptr, "ModelHandle::load", "'", path,
          "' has no feature spec (metadata 'preprocessing'): a server needs it to encode raw values; save the model "
          "with mtrec-train --save, or call set_preprocessing before save_checkpoint");
    m->path = path;
    if (attach) attach(*m);
    std::lock_guard<std::mutex> lock(load_mutex_);  // one load swaps at a time, versions in order
    m->version = ++versions_;
    std::shared_ptr<const ServedModel> next = std::move(m);
    std::atomic_store(&live_, next);
    return next->version;
  }
  // The live model (null before the first load).
  std::shared_ptr<const ServedModel> get() const { return std::atomic_load(&live_); }

 private:
  std::shared_ptr<const ServedModel> live_;
  std::mutex load_mutex_;
  std::uint64_t versions_ = 0;
};

// The score columns of a model, as Ranker reports them.
inline std::vector<std::string> score_names(const MultiTaskModel<float>& model) {
  const auto& cfg = model.config();
  const data::TabularEncoder* spec = model.preprocessing();
  std::vector<std::string> names;
  for (std::size_t k = 0; k < cfg.tasks.size(); ++k) {
    const TaskSpec& t = cfg.tasks[k];
    if (t.type == TaskType::MultiClass) {
      for (index_t c = 0; c < t.num_classes; ++c)
        names.push_back(t.name + ":" + (spec ? spec->classes(k)[std::size_t(c)] : std::to_string(c)));
    } else if (t.type != TaskType::Retrieval) {
      names.push_back(t.name);
    }
  }
  if (cfg.architecture == Architecture::ESMM) names.push_back("cvr");
  return names;
}

struct RankedItem {
  index_t index = 0;           // the candidate's position in the request
  std::vector<double> scores;  // by score_names()
};

class Ranker {
 public:
  // The best k of the candidates (all when k >= N), best first.
  const std::vector<RankedItem>& rank(const ServedModel& served, const data::RawRows& user,
                                      const data::RawRows& candidates, index_t k) {
    const char* op = "Ranker::rank";
    const MultiTaskModel<float>& model = *served.model;
    check(user.rows() == 1, op, "expected one user row but got ", user.rows());
    check(candidates.rows() > 0, op, "expected at least one candidate but got none");
    check(k > 0, op, "expected k > 0 but got ", k);
    const auto names = score_names(model);
    check(!names.empty(), op, "the model has no task with a per-candidate score (only retrieval tasks)");
    const data::TabularEncoder& spec = served.spec();
    // The user side once (MultiTaskModel::predict_ranking) unless a
    // candidate sets a user-side field: then every row is the user's values
    // with the candidate's on top, predicted as one batch.
    bool candidates_user_side = false;
    for (std::size_t i = 0; i < candidates.rows() && !candidates_user_side; ++i)
      for (const auto& v : candidates.values(i))
        if (spec.has_feature(v.column) && !spec.schema().features[spec.feature_index(v.column)].item_side)
          candidates_user_side = true;
    rows_ = data::RawRows();
    for (std::size_t i = 0; i < candidates.rows(); ++i) {
      const std::size_t r = rows_.add_row();
      rows_.set_all(r, user, 0);  // the user's item-side values too, where the candidate has none
      rows_.set_all(r, candidates, i);
    }
    const Batch<float> batch = model.encode(rows_);
    if (ws_owner_ != model.instance_id()) {
      ws_ = typename MultiTaskModel<float>::Workspace();  // workspaces of the previous model
      rank_ws_ = typename MultiTaskModel<float>::RankingWorkspace();
      ws_owner_ = model.instance_id();
    }
    user_once_ = !candidates_user_side;
    if (user_once_)
      model.predict_ranking(rank_ws_, model.encode(user), batch, pred_);
    else
      model.predict(ws_, batch, pred_);
    const index_t N = batch.size, C = model.output_width();
    const auto& cfg = model.config();
    all_.resize(std::size_t(N));
    for (index_t i = 0; i < N; ++i) {
      RankedItem& it = all_[std::size_t(i)];
      it.index = i;
      it.scores.clear();
      const float* p = pred_.data() + i * C;
      index_t col = 0;
      for (std::size_t t = 0; t < cfg.tasks.size(); ++t) {
        const TaskSpec& ts = cfg.tasks[t];
        const index_t w = task_output_width(ts);
        if (ts.type == TaskType::Binary) it.scores.push_back(double(p[col]));
        else if (ts.type == TaskType::Regression) it.scores.push_back(double(float(spec.target(t).invert(p[col]))));
        else if (ts.type == TaskType::MultiClass)
          for (index_t c = 0; c < w; ++c) it.scores.push_back(double(p[col + c]));
        col += w;
      }
      if (cfg.architecture == Architecture::ESMM) it.scores.push_back(double(p[col]));
    }
    std::stable_sort(all_.begin(), all_.end(), [](const RankedItem& a, const RankedItem& b) {
      return a.scores[0] > b.scores[0] || (a.scores[0] == b.scores[0] && a.index < b.index);
    });
    if (index_t(all_.size()) > k) all_.resize(std::size_t(k));
    return all_;
  }
  // Whether the last rank() computed the user side once.
  bool user_once() const { return user_once_; }

 private:
  data::RawRows rows_;
  bool user_once_ = false;
  typename MultiTaskModel<float>::Workspace ws_;
  typename MultiTaskModel<float>::RankingWorkspace rank_ws_;
  std::uint64_t ws_owner_ = 0;
  Tensor<float> pred_;
  std::vector<RankedItem> all_;
};

struct RetrievedItem {
  std::string id;  // the item's raw value
  index_t row = 0;
  double score = 0;
};

class Retriever {
 public:
  const std::vector<RetrievedItem>& retrieve(const ServedModel& served, const data::RawRows& user,
                                             const std::string& task, index_t k,
                                             const std::vector<std::string>& exclude = {}) {
    const char* op = "Retriever::retrieve";
    const MultiTaskModel<float>& model = *served.model;
    check(user.rows() == 1, op, "expected one user row but got ", user.rows());
    check(k > 0, op, "expected k > 0 but got ", k);
    std::size_t t = model.config().tasks.size();
    for (std::size_t i = 0; i < model.config().tasks.size(); ++i)
      if (model.config().tasks[i].name == task) t = i;
    check(t < model.config().tasks.size(), op, "field 'task': no task named '", data::detail::escaped(task), "'");
    check(model.config().tasks[t].type == TaskType::Retrieval, op, "field 'task': task '", task, "' is ",
          task_type_name(model.config().tasks[t].type), ", not a retrieval task");
    if (!retriever_ || owner_ != model.instance_id() || task_ != task) {
      retriever_ = std::make_unique<ExactRetriever<float>>(model, task);
      ws_ = typename MultiTaskModel<float>::Workspace();
      owner_ = model.instance_id();
      task_ = task;
    }
    const data::Vocabulary& items = served.spec().item_vocabulary(t);
    rows_.assign(1, data::Vocabulary::kOov);  // the OOV row is not an item
    for (const auto& v : exclude) {
      const index_t r = items.find(v);
      if (r != data::Vocabulary::kOov) rows_.push_back(r);
    }
    const Batch<float> batch = model.encode(user);
    out_.clear();
    const auto idx = served.indexes.find(task);
    if (idx != served.indexes.end() && !exact_) {
      // The query (the task's output columns), then the index; scores as
      // the exact search gives them: <q, row> / temperature.
      const TaskSpec& ts = model.config().tasks[t];
      index_t col = 0;
      for (std::size_t i = 0; i < t; ++i) col += task_output_width(model.config().tasks[i]);
      model.predict(ws_, batch, pred_);
      idx->second->search(hits_, ConstView<float>(pred_.data() + col, {ts.target_dim}), k, rows_);
      for (const auto& s : hits_) out_.push_back({items.token(s.row), s.row, s.score / ts.temperature});
      return out_;
    }
    const auto& top = retriever_->retrieve(batch, k, rows_);
    for (const auto& s : top) out_.push_back({items.token(s.row), s.row, s.score});
    return out_;
  }
  // Always the exact search, even where the model has an index.
  void set_exact(bool exact) { exact_ = exact; }

 private:
  std::unique_ptr<ExactRetriever<float>> retriever_;
  std::uint64_t owner_ = 0;
  std::string task_;
  std::vector<index_t> rows_;
  std::vector<RetrievedItem> out_;
  std::vector<ScoredItem> hits_;
  typename MultiTaskModel<float>::Workspace ws_;
  Tensor<float> pred_;
  bool exact_ = false;
};

}  // namespace serve
}  // namespace mtrec
