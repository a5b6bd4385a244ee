// mtrec: evaluating a model on a dataset — per-task metrics in one pass.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mtrec/model/multitask.hpp"
#include "mtrec/train/metrics.hpp"

namespace mtrec {

// Metrics of one task: binary -> auc, gauc (when groups are given), logloss,
// accuracy, precision, recall, f1 (the last four at evaluate()'s threshold); regression -> rmse, mae; multi-class -> accuracy, logloss;
// retrieval -> hit_rate@10, ndcg@10 (the target ranked against every row of
// its table, not only the batch); every task -> loss (the training loss on
// its labelled rows; in-batch losses such as BPR and sampled softmax depend on
// the batch size) and count.
struct TaskMetrics {
  std::string task;
  std::map<std::string, double> values;
  double operator[](const std::string& k) const {
    auto it = values.find(k);
    check(it != values.end(), "TaskMetrics", "task '", task, "' has no metric '", k, "'");
    return it->second;
  }
};

struct Evaluation {
  std::vector<TaskMetrics> tasks;
  double loss = 0;  // sum_k lambda_k loss_k

  const TaskMetrics& task(const std::string& name) const {
    for (const auto& t : tasks)
      if (t.task == name) return t;
    fail("Evaluation::task", "no task named '", name, "'");
  }
  // "loss", or "<metric>:<task>" such as "auc:ctr" or "rmse:rating".
  double metric(const std::string& spec) const {
    if (spec == "loss") return loss;
    const auto colon = spec.find(':');
    check(colon != std::string::npos, "Evaluation::metric", "expected 'loss' or '<metric>:<task>' but got '", spec, "'");
    return task(spec.substr(colon + 1))[spec.substr(0, colon)];
  }
};

// True when a larger value of the metric is better.
inline bool metric_higher_is_better(const std::string& spec) {
  const std::string m = spec.substr(0, spec.find(':'));
  return m == "auc" || m == "gauc" || m == "accuracy" || m == "f1" || m == "precision" || m == "recall" ||
         m.rfind("hit_rate@", 0) == 0 || m.rfind("ndcg@", 0) == 0;
}

// rank (N) = 1-based rank of row i's target y[i] among all `rows` rows of
// `table` (rows,D) scored by <q_i, e_j>; a tie counts against the target, so a
// constant model ranks no better than last. Unlabelled rows get rank 0.
template <class T>
inline void retrieval_ranks(index_t* rank, const T* q, const T* table, index_t rows, index_t D, const T* y,
                            const std::uint8_t* mask, index_t N) {
  // Queries per block: the (block, rows) score buffer stays under ~16 MB.
  const index_t block = std::max<index_t>(1, std::min<index_t>(256, (index_t(1) << 22) / std::max<index_t>(rows, 1)));
  std::vector<T> scores(static_cast<std::size_t>(std::min(block, N) * rows));
  for (index_t start = 0; start < N; start += block) {
    const index_t n = std::min(block, N - start);
    // scores (n, rows) = Q (n,D) E^T
    kernels::gemm(kernels::cpu, kernels::Trans::N, kernels::Trans::T, n, rows, D, T(1), q + start * D, D, table,
                  D, T(0), scores.data(), rows);
    parallel_for(n, double(rows), [&](index_t i) {
      const index_t r = start + i;
      if (mask && !mask[r]) {
        rank[r] = 0;
        return;
      }
      const index_t target = index_t(y[r]);
      const T* s = scores.data() + i * rows;
      index_t above = 0;
      for (index_t j = 0; j < rows; ++j) above += j != target && s[j] >= s[target];
      rank[r] = 1 + above;
    });
  }
}

// Runs the model in eval mode over `data` in batches and computes every
// task's metrics on its labelled rows. A task with no labelled row gets only
// count = 0.
template <class T, class Device>
inline Evaluation evaluate(const MultiTaskModel<T, Device>& model, const Batch<T>& data, index_t batch_size = 1024,
                           double threshold = 0.5) {
  const char* op = "evaluate";
  check(data.size > 0, op, "expected a non-empty dataset");
  check(batch_size > 0, op, "expected batch_size > 0 but got ", batch_size);
  check(std::isfinite(threshold) && threshold > 0 && threshold < 1, op, "expected threshold in (0, 1) but got ",
        threshold);
  const ModelConfig& cfg = model.config();
  const std::size_t K = cfg.tasks.size();
  const index_t N = data.size, C = model.output_width();
  // Predictions and raw outputs for every row, then metrics on the whole set.
  // On a device the host cannot read they gather in device buffers and come
  // back in one copy each at the end (the metrics run on the host).
  std::vector<T> pred(static_cast<std::size_t>(N * C));
  std::vector<std::vector<T>> raw(K);
  for (std::size_t k = 0; k < K; ++k) raw[k].resize(std::size_t(N * task_output_width(cfg.tasks[k])));
  const Device& dev = model.parameters().device();
  Tensor<T, Device> pred_d(dev);
  std::vector<Tensor<T, Device>> raw_d;
  using Ptr = typename Tensor<T, Device>::pointer;
  auto at = [&](std::vector<T>& host, Tensor<T, Device>& d, index_t offset) -> Ptr {
    if constexpr (host_readable_v<Device>) {
      (void)d;
      return host.data() + offset;
    } else {
      (void)host;
      return d.data() + offset;
    }
  };
  if constexpr (!host_readable_v<Device>) {
    pred_d.resize({N, C});
    for (std::size_t k = 0; k < K; ++k) raw_d.emplace_back(Shape{index_t(raw[k].size())}, dev);
  } else {
    raw_d.resize(K, Tensor<T, Device>(dev));
  }
  std::vector<double> loss_sum(K, 0.0), weight_sum(K, 0.0);
  typename MultiTaskModel<T, Device>::Workspace ws;
  Batch<T> batch;
  std::vector<index_t> rows;
  for (index_t start = 0; start < N; start += batch_size) {
    const index_t n = std::min(batch_size, N - start);
    rows.resize(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) rows[i] = start + i;
    batch.gather(data, rows.data(), n);
    model.predict_into(ws, batch, at(pred, pred_d, start * C));
    const TaskLosses& l = model.compute_losses(ws, batch);
    for (std::size_t k = 0; k < K; ++k) {
      const index_t w = ws.out[k].dim(1);
      kernels::copy(dev, at(raw[k], raw_d[k], start * w), ws.out[k].data(), n * w);
      // Batch losses are weighted means: re-weight by the labelled weight.
      double wsum = 0;
      for (index_t i = 0; i < n; ++i) {
        const bool on = batch.label_mask.empty() || batch.label_mask[k].empty() || batch.label_mask[k][i];
        if (on) wsum += batch.weights.empty() ? 1.0 : double(batch.weights[i]);
      }
      loss_sum[k] += l.value[k] * wsum;
      weight_sum[k] += wsum;
    }
  }
  if constexpr (!host_readable_v<Device>) {
    to_host(dev, pred.data(), pred_d.cview());
    for (std::size_t k = 0; k < K; ++k) to_host(dev, raw[k].data(), raw_d[k].cview());
  }
  Evaluation ev;
  index_t col = 0;
  std::vector<T> column(static_cast<std::size_t>(N));
  for (std::size_t k = 0; k < K; ++k) {
    const TaskSpec& t = cfg.tasks[k];
    TaskMetrics tm;
    tm.task = t.name;
    const std::uint8_t* mask = data.label_mask.empty() || data.label_mask[k].empty() ? nullptr : data.label_mask[k].data();
    index_t count = 0;
    for (index_t i = 0; i < N; ++i) count += !mask || mask[i];
    tm.values["count"] = double(count);
    const index_t w = task_output_width(t);
    if (count > 0) {
      tm.values["loss"] = weight_sum[k] > 0 ? loss_sum[k] / weight_sum[k] : 0.0;
      ev.loss += t.weight * tm.values["loss"];
      const T* y = data.labels[k].data();
      if (t.type == TaskType::Retrieval) {
        const auto table = model.target_table(k);
        std::vector<T> host_table(static_cast<std::size_t>(table.numel()));
        to_host(model.parameters().device(), host_table.data(), table);
        std::vector<index_t> rank(static_cast<std::size_t>(N));
        retrieval_ranks(rank.data(), raw[k].data(), host_table.data(), table.dim(0), table.dim(1), y, mask, N);
        double hits = 0, gain = 0;
        for (index_t i = 0; i < N; ++i)
          if ((!mask || mask[i]) && rank[i] <= 10) {
            hits += 1;
            gain += 1.0 / std::log2(double(rank[i]) + 1.0);
          }
        tm.values["hit_rate@10"] = hits / double(count);
        tm.values["ndcg@10"] = gain / double(count);
      } else if (t.type == TaskType::MultiClass) {
        std::vector<index_t> ids(static_cast<std::size_t>(N), 0);
        for (index_t i = 0; i < N; ++i)
          if (!mask || mask[i]) ids[i] = index_t(y[i]);
        tm.values["accuracy"] = multiclass_accuracy(raw[k].data(), ids.data(), N, w, mask);
        tm.values["logloss"] = tm.values["loss"];
      } else {
        for (index_t i = 0; i < N; ++i) column[i] = pred[i * C + col];
        if (t.type == TaskType::Regression) {
          tm.values["rmse"] = rmse(column.data(), y, N, mask);
          tm.values["mae"] = mae(column.data(), y, N, mask);
        } else {
          index_t pos = 0;
          for (index_t i = 0; i < N; ++i) pos += (!mask || mask[i]) && y[i] >= T(0.5);
          if (pos > 0 && pos < count) tm.values["auc"] = auc(column.data(), y, N, mask);
          if (!data.groups.empty()) {
            try {
              tm.values["gauc"] = gauc(column.data(), y, data.groups.data(), N, mask);
            } catch (const Error&) {
              // no group has both classes: gAUC is undefined for this data
            }
          }
          tm.values["logloss"] = logloss(column.data(), y, N, mask);
          tm.values["accuracy"] = accuracy(column.data(), y, N, threshold, mask);
          const PRF1 prf = precision_recall_f1(column.data(), y, N, threshold, mask);
          tm.values["precision"] = prf.precision;
          tm.values["recall"] = prf.recall;
          tm.values["f1"] = prf.f1;
        }
      }
    }
    col += w;
    ev.tasks.push_back(std::move(tm));
  }
  return ev;
}

}  // namespace mtrec
