// mtrec: exact top-K retrieval over an item table.
//
//   ExactRetriever<float> r(model, "next_movie");       // the task's target table
//   const auto& top = r.retrieve(user_batch, 100, seen); // the user's query, then top-K
//   for (const ScoredItem& s : top) ... s.row, s.score   // best first
//
// The table is a retrieval task's target table (shared with the model: it
// follows training) or any (N, dim) table on the model's device, such as
// item-tower embeddings computed ahead. A search streams the table once
// (kernels::topk_inner_product): a vectorised dot per row, a bounded heap
// per fixed chunk of rows, multi-threaded; ties go to the lower row; the
// rows in `exclude` (items the user has seen) are never returned. Scores
// are <q, row> times `scale` (for a task, 1 / its temperature: the model's
// logits). One retriever per thread: it owns its buffers and, warm, does
// not allocate.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "mtrec/kernels/retrieval.hpp"
#include "mtrec/model/multitask.hpp"
#include "mtrec/serve/topk.hpp"

namespace mtrec {

template <class T, class Device = Cpu>
class ExactRetriever {
 public:
  using CView = DeviceView<const T, Device>;

  // Over a retrieval task's target table; retrieve() computes the query.
  ExactRetriever(const MultiTaskModel<T, Device>& model, const std::string& task) : model_(&model) {
    const auto& tasks = model.config().tasks;
    std::size_t k = tasks.size();
    for (std::size_t i = 0; i < tasks.size(); ++i)
      if (tasks[i].name == task) k = i;
    check(k < tasks.size(), "ExactRetriever", "no task named '", task, "'");
    check(tasks[k].type == TaskType::Retrieval, "ExactRetriever", "task '", task, "' is ",
          task_type_name(tasks[k].type), ", not a retrieval task");
    task_ = k;
    for (std::size_t i = 0; i < k; ++i) column_ += task_output_width(tasks[i]);
    table_ = model.target_table(k);
    scale_ = T(1.0 / tasks[k].temperature);
    dev_ = &model.parameters().device();
  }
  // Over any (N, dim) table on `dev`; scores are scale * <q, row>.
  ExactRetriever(const Device& dev, CView table, T scale = T(1)) : table_(table), scale_(scale), dev_(&dev) {
    check(table.shape.rank == 2, "ExactRetriever", "expected a table (N, dim) but got ", table.shape);
  }

  index_t rows() const { return table_.shape[0]; }
  index_t dim() const { return table_.shape[1]; }

  // The k best rows for the query q (dim values, host), best first; fewer
  // when fewer than k rows are left after `exclude` (rows in [0, N), any
  // order, repeats allowed).
  const std::vector<ScoredItem>& search(ConstView<T> q, index_t k, const std::vector<index_t>& exclude = {}) {
    const char* op = "ExactRetriever::search";
    check(q.numel() == dim(), op, "query expected ", dim(), " values but got ", q.numel());
    for (index_t j = 0; j < q.numel(); ++j)
      if (!std::isfinite(double(q[j]))) fail(op, "query[", j, "] is ", q[j], " (expected a finite value)");
    check(k > 0, op, "expected k > 0 but got ", k);
    const index_t N = rows();
    for (std::size_t i = 0; i < exclude.size(); ++i)
      if (exclude[i] < 0 || exclude[i] >= N)
        fail(op, "exclude[", i, "] = ", exclude[i], " is out of range for a table of ", N, " rows");
    ex_.assign(exclude.begin(), exclude.end());
    std::sort(ex_.begin(), ex_.end());
    ex_.erase(std::unique(ex_.begin(), ex_.end()), ex_.end());
    const Device& dev = *dev_;
    rows_d_.resize({k});
    scores_d_.resize({k});
    const auto q_d = device_input(q_buf_, q);
    const auto ex_d = device_input(ex_buf_, ConstView<index_t>(ex_.data(), {index_t(ex_.size())}));
    kernels::topk_inner_product(dev, rows_d_.data(), scores_d_.data(), table_.data, N, dim(), q_d.data, k,
                                ex_.empty() ? decltype(ex_d.data)(nullptr) : ex_d.data, index_t(ex_.size()));
    rows_h_.resize(std::size_t(k));
    scores_h_.resize(std::size_t(k));
    to_host(dev, rows_h_.data(), rows_d_.cview());
    to_host(dev, scores_h_.data(), scores_d_.cview());
    results_.clear();
    for (index_t i = 0; i < k && rows_h_[std::size_t(i)] >= 0; ++i)
      results_.push_back({rows_h_[std::size_t(i)], double(scale_) * double(scores_h_[std::size_t(i)])});
    return results_;
  }

  // The user's query vector (the task's output for a one-row batch), then search().
  const std::vector<ScoredItem>& retrieve(const Batch<T>& user, index_t k, const std::vector<index_t>& exclude = {}) {
    const char* op = "ExactRetriever::retrieve";
    check(model_ != nullptr, op, "this retriever was built over a table, not a model's task: call search()");
    check(user.size == 1, op, "expected a one-row user batch but got ", user.size, " rows");
    model_->predict(ws_, user, out_);
    return search(ConstView<T>(out_.data() + column_, {dim()}), k, exclude);
  }

 private:
  const MultiTaskModel<T, Device>* model_ = nullptr;
  std::size_t task_ = 0;
  index_t column_ = 0;
  CView table_;
  T scale_ = T(1);
  const Device* dev_ = nullptr;
  std::vector<index_t> ex_;
  Tensor<T, Device> q_buf_;
  Tensor<index_t, Device> ex_buf_, rows_d_;
  Tensor<T, Device> scores_d_;
  std::vector<index_t> rows_h_;
  std::vector<T> scores_h_;
  std::vector<ScoredItem> results_;
  typename MultiTaskModel<T, Device>::Workspace ws_;
  Tensor<T> out_;
};

}  // namespace mtrec
