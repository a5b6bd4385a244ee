// mtrec: training a multi-task model — epochs, loss weighting, early stopping.
//
// One step: forward (training mode) -> per-task losses L_k -> combine
// (fixed lambda, uncertainty, GradNorm or PCGrad) -> backward -> every
// `accumulation` micro-batches: clip, optimizer step at the scheduled lr,
// zero_grad. Shuffling, dropout and PCGrad's task order are functions of
// (seed, epoch, step), so a run is reproducible and resumable bit for bit.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "mtrec/core/rng.hpp"
#include "mtrec/io/atomic_file.hpp"
#include "mtrec/model/multitask.hpp"
#include "mtrec/train/evaluate.hpp"
#include "mtrec/train/optimizer.hpp"

namespace mtrec {

enum class Weighting {
  Fixed,        // L = sum_k lambda_k L_k
  Uncertainty,  // L = sum_k 0.5 exp(-s_k) lambda_k L_k + 0.5 s_k, s_k learned (Kendall et al., 2018)
  GradNorm,     // learned w_k balance gradient norms on the last shared layer (Chen et al., 2018)
  PCGrad,       // conflicting task gradients on shared parameters are projected (Yu et al., 2020)
};

inline const char* weighting_name(Weighting w) {
  switch (w) {
    case Weighting::Fixed: return "fixed";
    case Weighting::Uncertainty: return "uncertainty";
    case Weighting::GradNorm: return "gradnorm";
    case Weighting::PCGrad: return "pcgrad";
  }
  return "?";
}

enum class ScheduleKind { Constant, WarmupLinear, WarmupCosine };

// What the trainer does with a step whose loss or gradients are not finite
// (NaN or +-Inf). Either way the update is never applied: the parameters and
// the optimizer state stay at the last good step.
enum class OnNonFinite {
  Stop,  // throw an mtrec::Error naming the epoch, step and value (fit first restores the best epoch's weights)
  Skip,  // drop the step's gradients and go on (History::skipped_steps counts them); an epoch of only
         // skipped steps stops as Stop does
};

struct TrainConfig {
  int epochs = 10;
  index_t batch_size = 256;
  OptimizerConfig optimizer = OptimizerConfig::adam(1e-3);
  ScheduleKind schedule = ScheduleKind::Constant;
  double warmup_fraction = 0.0;  // of all steps
  double min_lr = 0.0;
  double clip_norm = 0.0;        // 0 = no clipping
  int accumulation = 1;          // micro-batches per optimizer step
  Weighting weighting = Weighting::Fixed;
  double gradnorm_alpha = 1.5;
  double gradnorm_lr = 0.025;
  int patience = 0;              // epochs without improvement before stopping; 0 = never stop early
  std::string monitor = "loss";  // "loss" or "<metric>:<task>", e.g. "auc:ctr"
  bool restore_best = true;      // with patience > 0: reload the best epoch's weights at the end
  std::uint64_t seed = 0;
  bool progress = true;          // a progress bar on a terminal, else one line per epoch
  std::ostream* log = &std::cerr;
  std::string csv_log;           // path of a per-epoch CSV, rewritten atomically each epoch
  OnNonFinite on_nonfinite = OnNonFinite::Stop;
  // Optimizer steps of one run of the schedule. 0: fit() derives it from its
  // data (epochs x steps per epoch / accumulation). train_step() used without
  // fit() needs it for a decaying schedule (a constant one needs nothing).
  index_t total_updates = 0;
  double threshold = 0.5;        // decision threshold of the binary accuracy/precision/recall/f1 metrics
};

struct EpochRecord {
  int epoch = 0;
  double train_loss = 0;                 // mean combined loss over the epoch's steps
  std::vector<double> train_task_loss;   // mean per-task loss
  Evaluation valid;                      // empty when there is no validation set
  double monitored = 0;                  // the monitored value (validation, or train loss)
  double lr = 0;
  double seconds = 0;
  std::vector<double> task_weights;      // the weights in force at the end of the epoch
};

struct History {
  std::vector<EpochRecord> epochs;
  int best_epoch = -1;
  double best_value = 0;
  bool stopped_early = false;
  double train_seconds = 0;
  index_t skipped_steps = 0;  // optimizer steps dropped for non-finite loss or gradients (OnNonFinite::Skip)
};

// Training state beyond the parameters and optimizer: what a checkpoint
// needs to resume bit for bit.
struct TrainerState {
  int epoch = 0;           // epochs completed
  index_t step = 0;        // micro-batches seen
  index_t updates = 0;     // optimizer steps taken, skipped ones included
  // The current run of fit(): cfg.epochs epochs from run_start_epoch, its
  // schedule counted from run_start_update. A run whose epochs are all done,
  // or that stopped early (run_finished), makes the next fit() start a new
  // run; otherwise fit() finishes it (resuming from a checkpoint).
  int run_start_epoch = 0;
  index_t run_start_update = 0;
  bool run_finished = false;
  std::vector<double> log_var;        // uncertainty weighting s_k
  std::vector<double> log_var_m, log_var_v;  // their Adam moments
  std::vector<double> gradnorm_w;     // GradNorm weights
  std::vector<double> initial_loss;   // GradNorm L_k(0)
};

template <class T, class Device = Cpu>
class Trainer {
 public:
  Trainer(MultiTaskModel<T, Device>& model, TrainConfig config)
      : model_(&model), cfg_(std::move(config)), opt_(model.parameters(), cfg_.optimizer) {
    const char* op = "Trainer";
    check(cfg_.epochs >= 1, op, "expected epochs >= 1 but got ", cfg_.epochs);
    check(cfg_.batch_size >= 1, op, "expected batch_size >= 1 but got ", cfg_.batch_size);
    check(cfg_.accumulation >= 1, op, "expected accumulation >= 1 but got ", cfg_.accumulation);
    check(cfg_.clip_norm >= 0, op, "expected clip_norm >= 0 but got ", cfg_.clip_norm);
    check(cfg_.patience >= 0, op, "expected patience >= 0 but got ", cfg_.patience);
    check(cfg_.warmup_fraction >= 0 && cfg_.warmup_fraction <= 1, op, "expected warmup_fraction in [0, 1] but got ",
          cfg_.warmup_fraction);
    const std::size_t K = model.num_tasks();
    if (cfg_.weighting == Weighting::GradNorm)
      check(!model.last_shared_layer().empty() && K >= 2, op,
            "GradNorm needs a shared layer and at least 2 tasks; architecture '",
            architecture_name(model.config().architecture), "' with ", K, " task(s) has none");
    if (cfg_.weighting == Weighting::PCGrad) check(K >= 2, op, "PCGrad needs at least 2 tasks but got ", K);
    check(cfg_.on_nonfinite == OnNonFinite::Stop || cfg_.on_nonfinite == OnNonFinite::Skip, op,
          "expected on_nonfinite Stop or Skip but got ", int(cfg_.on_nonfinite));
    check(cfg_.total_updates >= 0, op, "expected total_updates >= 0 but got ", cfg_.total_updates);
    check(std::isfinite(cfg_.threshold) && cfg_.threshold > 0 && cfg_.threshold < 1, op,
          "expected threshold in (0, 1) but got ", cfg_.threshold);
    check(std::isfinite(cfg_.min_lr) && cfg_.min_lr >= 0, op, "expected min_lr >= 0 (finite) but got ", cfg_.min_lr);
    if (cfg_.optimizer.fused_tables) {
      // The table gradients never exist: nothing may need to read them.
      std::string why = cfg_.clip_norm > 0 ? "clip_norm " + std::to_string(cfg_.clip_norm) + " > 0 (the global norm needs them)"
                        : cfg_.accumulation > 1 ? "accumulation " + std::to_string(cfg_.accumulation) + " > 1"
                        : cfg_.weighting == Weighting::GradNorm || cfg_.weighting == Weighting::PCGrad
                            ? std::string(weighting_name(cfg_.weighting)) + " weighting (it reads per-task gradients)"
                            : std::string();
      if (!why.empty()) {
        model.parameters().set_fused_tables(false);
        fail(op, "optimizer.fused_tables needs the table gradients to be used by the update only, but the config has ",
             why);
      }
    }
    check_monitor(model.config(), cfg_.monitor);
    make_schedule(std::max<index_t>(cfg_.total_updates, 1000)).validate();  // a bad lr fails here, not at a step
    state_.log_var.assign(K, 0.0);
    state_.log_var_m.assign(K, 0.0);
    state_.log_var_v.assign(K, 0.0);
    state_.gradnorm_w.assign(K, 1.0);
    coeff_.assign(K, 0.0);
  }

  Optimizer<T, Device>& optimizer() { return opt_; }
  std::size_t num_tasks() const { return model_->num_tasks(); }
  TrainerState& state() { return state_; }
  const TrainConfig& config() const { return cfg_; }

  // The weights applied to each task's loss at this point of training.
  const std::vector<double>& task_weights() const {
    std::vector<double>& w = weights_;
    w.resize(model_->num_tasks());
    for (std::size_t k = 0; k < w.size(); ++k) {
      const double lambda = model_->config().tasks[k].weight;
      switch (cfg_.weighting) {
        case Weighting::Uncertainty: w[k] = 0.5 * std::exp(-state_.log_var[k]) * lambda; break;
        case Weighting::GradNorm: w[k] = state_.gradnorm_w[k] * lambda; break;
        default: w[k] = lambda;
      }
    }
    return w;
  }

  // Trains one run of cfg.epochs epochs, validating on `valid` after each
  // epoch when it is non-empty. Both data sets are validated in full first
  // (MultiTaskModel::validate), so a bad value is reported by its row.
  //  - The first fit() starts a run; a trainer restored with
  //    load_training_state() in the middle of a run finishes that run.
  //  - A fit() after a finished run (its epochs all done, or stopped early)
  //    starts a new one: cfg.epochs more epochs, with the learning-rate
  //    schedule started again from its beginning. Optimizer moments and
  //    loss-weighting state carry over, as in a Keras `fit` called twice.
  History fit(const Batch<T>& train, const Batch<T>* valid = nullptr) {
    const char* op = "Trainer::fit";
    check(train.size > 0, op, "expected a non-empty training set");
    model_->validate(train, "training data");
    const bool has_valid = valid && valid->size > 0;
    if (has_valid) model_->validate(*valid, "validation data");
    const index_t N = train.size, B = std::min(cfg_.batch_size, N);
    const index_t steps_per_epoch = (N + B - 1) / B;
    if (state_.run_finished || state_.epoch >= state_.run_start_epoch + cfg_.epochs) {
      state_.run_start_epoch = state_.epoch;
      state_.run_start_update = state_.updates;
      state_.run_finished = false;
    }
    const index_t derived =
        std::max<index_t>(1, (index_t(cfg_.epochs) * steps_per_epoch + cfg_.accumulation - 1) / cfg_.accumulation);
    schedule_ = make_schedule(cfg_.total_updates > 0 ? cfg_.total_updates : derived);
    schedule_ready_ = true;
    History h;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<index_t> order(static_cast<std::size_t>(N));
    std::vector<T> best_values;
    int since_best = 0;
    const bool tty = cfg_.progress && is_terminal();
    const int end_epoch = state_.run_start_epoch + cfg_.epochs;
    const index_t skipped_before = skipped_;
    try {
      for (int epoch = state_.epoch; epoch < end_epoch; ++epoch) {
        const auto e0 = std::chrono::steady_clock::now();
        for (index_t i = 0; i < N; ++i) order[i] = i;
        shuffle_indices(order.data(), std::uint64_t(N), cfg_.seed, 0xE0C0 + std::uint64_t(epoch));
        EpochRecord rec;
        rec.epoch = epoch + 1;
        rec.train_task_loss.assign(model_->num_tasks(), 0.0);
        double loss_sum = 0;
        index_t seen = 0, good = 0;
        const index_t skipped_at_start = skipped_;
        for (index_t s = 0; s < steps_per_epoch; ++s) {
          const index_t start = s * B, n = std::min(B, N - start);
          batch_.gather(train, order.data() + start, n);
          where_epoch_ = epoch + 1;
          where_step_ = s + 1;
          const TaskLosses& l = train_step(batch_);
          seen += n;
          if (!last_step_finite_) continue;  // skipped: not part of the epoch's mean loss
          double combined = 0;
          const auto& w = task_weights();
          for (std::size_t k = 0; k < l.value.size(); ++k) {
            combined += w[k] * l.value[k];
            rec.train_task_loss[k] += l.value[k] * double(n);
          }
          loss_sum += combined * double(n);
          good += n;
          if (tty) progress_bar(epoch, seen, N, loss_sum / double(good), e0);
        }
        flush_partial_accumulation();
        if (good == 0)
          fail(op, "every step of epoch ", epoch + 1, " had a non-finite loss or gradient (", skipped_ - skipped_at_start,
               " skipped); stopping (try a lower learning rate or clip_norm)");
        rec.train_loss = loss_sum / double(good);
        for (double& v : rec.train_task_loss) v /= double(good);
        rec.lr = lr_at(std::max<index_t>(0, state_.updates - 1));
        rec.task_weights = task_weights();
        if (has_valid) {
          rec.valid = evaluate(*model_, *valid, std::max<index_t>(B, 256), cfg_.threshold);
          rec.monitored = rec.valid.metric(cfg_.monitor);
        } else {
          rec.monitored = rec.train_loss;
        }
        rec.seconds = seconds_since(e0);
        state_.epoch = epoch + 1;
        const bool higher = has_valid && metric_higher_is_better(cfg_.monitor);
        const bool improved =
            h.best_epoch < 0 || (higher ? rec.monitored > h.best_value : rec.monitored < h.best_value);
        if (improved) {
          h.best_epoch = rec.epoch;
          h.best_value = rec.monitored;
          since_best = 0;
          if (cfg_.patience > 0 && cfg_.restore_best) {
            const auto& st = model_->parameters();
            best_values.resize(std::size_t(st.size()));
            st.read_values(best_values.data(), 0, st.size());
          }
        } else {
          ++since_best;
        }
        h.epochs.push_back(rec);
        report_epoch(rec, tty);
        write_csv(h);
        if (cfg_.patience > 0 && since_best >= cfg_.patience) {
          h.stopped_early = true;
          break;
        }
      }
    } catch (const Error& e) {
      where_epoch_ = 0;
      // Training stopped (a non-finite step, or a bad value): the in-memory
      // model is at its last good update; with early stopping, go back to the
      // best epoch's weights as a finished run would. A later fit() goes on
      // with this run.
      if (!best_values.empty()) {
        model_->parameters().write_values(0, best_values.data(), index_t(best_values.size()));
        fail(op, e.what(), " [the weights of the best epoch ", h.best_epoch, " were restored]");
      }
      throw;
    }
    state_.run_finished = h.stopped_early;  // a run that ran all its epochs is finished by its epoch count
    where_epoch_ = 0;
    if (cfg_.patience > 0 && cfg_.restore_best && !best_values.empty()) {
      auto& st = model_->parameters();
      st.write_values(0, best_values.data(), index_t(best_values.size()));
    }
    h.skipped_steps = skipped_ - skipped_before;
    h.train_seconds = seconds_since(t0);
    return h;
  }

  // One micro-batch: forward, losses, combined backward; steps the optimizer
  // every `accumulation` micro-batches at the schedule's learning rate (from
  // the first call: without fit(), the schedule spans cfg.total_updates
  // steps). Returns the per-task losses. A non-finite loss or gradient is
  // handled by cfg.on_nonfinite before any update is applied.
  const TaskLosses& train_step(const Batch<T>& batch) {
    const char* op = "Trainer::train_step";
    if (!schedule_ready_) {
      const bool decays = cfg_.schedule != ScheduleKind::Constant;
      check(!decays || cfg_.total_updates > 0, op, "a decaying learning-rate schedule needs its length: set "
            "TrainConfig::total_updates, or train with fit()");
      schedule_ = make_schedule(cfg_.total_updates > 0 ? cfg_.total_updates : 1);
      schedule_ready_ = true;
    }
    MultiTaskModel<T, Device>& m = *model_;
    if (pending_ == 0) {  // a new accumulation group: what a skipped group must give back
      saved_.log_var = state_.log_var;
      saved_.log_var_m = state_.log_var_m;
      saved_.log_var_v = state_.log_var_v;
      saved_.gradnorm_w = state_.gradnorm_w;
      saved_.initial_loss = state_.initial_loss;
    }
    const Mode mode = Mode::train(std::uint64_t(state_.step), cfg_.seed);
    m.forward(ws_, batch, mode);
    const TaskLosses& l = m.compute_losses(ws_, batch);
    const std::size_t K = m.num_tasks();
    const double acc = 1.0 / double(cfg_.accumulation);
    last_step_finite_ = true;
    for (std::size_t k = 0; k < K; ++k)
      if (!std::isfinite(l.value[k])) {
        last_step_finite_ = false;
        nonfinite_what_ = "task '" + m.config().tasks[k].name + "' loss is " + std::to_string(l.value[k]);
      }
    if (last_step_finite_) {
      switch (cfg_.weighting) {
        case Weighting::Fixed:
        case Weighting::Uncertainty: {
          const auto& w = task_weights();
          for (std::size_t k = 0; k < K; ++k) coeff_[k] = w[k] * acc;
          m.backward(ws_, batch, coeff_.data());
          if (cfg_.weighting == Weighting::Uncertainty) uncertainty_update(l);
          break;
        }
        case Weighting::GradNorm: gradnorm_backward(batch, l, acc); break;
        case Weighting::PCGrad: pcgrad_backward(batch, l, acc); break;
      }
    } else {
      group_bad_ = true;  // the backward is not run: its gradients would be NaN too
      group_what_ = nonfinite_what_;
    }
    ++state_.step;
    if (++pending_ == cfg_.accumulation) apply_update();
    if (group_bad_) last_step_finite_ = false;
    return l;
  }

  // The learning rate the next optimizer step will use.
  double current_lr() const {
    if (schedule_ready_) return lr_at(state_.updates);
    return make_schedule(std::max<index_t>(cfg_.total_updates, 1)).at(std::max<index_t>(0, state_.updates - state_.run_start_update));
  }

  // Steps skipped for non-finite values so far (OnNonFinite::Skip).
  index_t skipped_steps() const { return skipped_; }

 private:
  static bool is_terminal() {
#if defined(__unix__) || defined(__APPLE__)
    return ::isatty(2) == 1;
#else
    return false;
#endif
  }
  static double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }

  LRSchedule make_schedule(index_t total) const {
    const double lr = cfg_.optimizer.lr;
    const index_t warm = index_t(std::llround(cfg_.warmup_fraction * double(total)));
    switch (cfg_.schedule) {
      case ScheduleKind::WarmupLinear: return LRSchedule::warmup_linear(lr, warm, total, cfg_.min_lr);
      case ScheduleKind::WarmupCosine: return LRSchedule::warmup_cosine(lr, warm, total, cfg_.min_lr);
      default: return LRSchedule::constant(lr, warm);
    }
  }

  // The learning rate of optimizer step `update` (counted over the whole
  // trainer's life): the schedule restarts with each run of fit().
  double lr_at(index_t update) const { return schedule_.at(std::max<index_t>(0, update - state_.run_start_update)); }

  // Where the current step is, for error messages.
  std::string step_where() const {
    std::ostringstream os;
    if (where_epoch_ > 0) os << "epoch " << where_epoch_ << " step " << where_step_ << ", ";
    os << "optimizer step " << state_.updates + 1;
    return os.str();
  }

  // The guarded update: the gradient norm (which clipping needs anyway) must
  // be finite and no micro-batch of the group may have had a non-finite loss,
  // else nothing is applied (cfg.on_nonfinite decides what follows). After
  // the update, the optimizer reports whether every weight it wrote is finite
  // (checked inside its kernels): an update that overflows them (an lr far
  // too high) stops training, whatever on_nonfinite says.
  void apply_update() {
    auto& store = model_->parameters();
    // With clipping, the norm that scales the gradients (grad_norm, whose
    // fixed summation order keeps runs bitwise equal at any thread count)
    // must be finite; without, kernels::all_finite over the same values, one
    // pass at memory speed (measured: docs/reliability.md).
    const bool clip = cfg_.clip_norm > 0;
    const double norm = group_bad_ || !clip ? 0.0 : grad_norm(store);
    const bool finite_grads = !group_bad_ && (clip ? std::isfinite(norm) : touched_finite(store, store.grads()));
    if (!finite_grads) {
      const std::string what = group_bad_ ? group_what_
                               : clip    ? "the gradient norm is " + std::to_string(norm)
                                         : std::string("a gradient is not finite (the gradient norm is nan or inf)");
      store.zero_grad();
      pending_ = 0;
      group_bad_ = false;
      // The loss-weighting state learned from this group is dropped too.
      state_.log_var = saved_.log_var;
      state_.log_var_m = saved_.log_var_m;
      state_.log_var_v = saved_.log_var_v;
      state_.gradnorm_w = saved_.gradnorm_w;
      state_.initial_loss = saved_.initial_loss;
      ++state_.updates;  // the schedule moves on, as for torch's GradScaler-skipped steps
      if (cfg_.on_nonfinite == OnNonFinite::Stop)
        fail("Trainer", "non-finite training step at ", step_where(), ": ", what,
             "; the update was not applied and the model keeps the weights of the last good step (try a lower "
             "learning rate or clip_norm, or on_nonfinite = skip)");
      ++skipped_;
      last_step_finite_ = false;
      if (cfg_.log && cfg_.progress)
        *cfg_.log << "warning: skipped a non-finite training step at " << step_where() << ": " << what << '\n';
      return;
    }
    if (clip && norm > 0) {
      const double coef = cfg_.clip_norm / (norm + 1e-6);
      if (coef < 1.0) scale_grads(store, coef);
    }
    const bool finite = opt_.step(lr_at(state_.updates));
    store.zero_grad();
    ++state_.updates;
    pending_ = 0;
    if (!finite)
      fail("Trainer", "the update at ", step_where(), " made some of the model's weights non-finite: the learning "
           "rate ", lr_at(state_.updates - 1), " is too high for these gradients; the model is not usable, retrain "
           "with a lower learning rate or clip_norm");
  }

  // Every value an update reads in `block` (the store's grads()) is finite:
  // the dense part and the touched rows of every table.
  static bool touched_finite(const ParameterStore<T, Device>& store,
                             typename ParameterStore<T, Device>::const_pointer block) {
    if (!kernels::all_finite(store.device(), block, store.dense_size())) return false;
    const std::vector<RowSet>& sets = store.touched_row_sets();
    if (!kernels::all_finite_rows(store.device(), block, sets.data(), index_t(sets.size()))) return false;
    if (store.fused_tables())  // a deferred lookup's gradient is its dy
      for (ParamId id = 0; id < store.count(); ++id)
        if (store.info(id).kind == ParamKind::Table)
          if (const auto* l = store.deferred(id))
            if (!kernels::all_finite(store.device(), l->dy, l->B * store.info(id).shape[1])) return false;
    return true;
  }

  // "loss", or "<metric>:<task>" with a metric that evaluate() reports for
  // that task's type (checked here, not when the first epoch ends).
  static void check_monitor(const ModelConfig& c, const std::string& spec) {
    const char* op = "Trainer";
    if (spec == "loss") return;
    const auto colon = spec.find(':');
    check(colon != std::string::npos, op, "monitor expected 'loss' or '<metric>:<task>' but got '", spec, "'");
    const std::string metric = spec.substr(0, colon), task = spec.substr(colon + 1);
    const TaskSpec* t = nullptr;
    std::string names;
    for (const auto& x : c.tasks) {
      if (x.name == task) t = &x;
      names += (names.empty() ? "" : ", ") + x.name;
    }
    check(t != nullptr, op, "monitor '", spec, "' names task '", task, "' but the model's tasks are {", names, "}");
    std::vector<std::string> known = {"loss"};
    switch (t->type) {
      case TaskType::Binary:
        known.insert(known.end(), {"auc", "gauc", "logloss", "accuracy", "precision", "recall", "f1"});
        break;
      case TaskType::Regression: known.insert(known.end(), {"rmse", "mae"}); break;
      case TaskType::MultiClass: known.insert(known.end(), {"accuracy", "logloss"}); break;
      case TaskType::Retrieval: known.insert(known.end(), {"hit_rate@10", "ndcg@10"}); break;
    }
    std::string list;
    for (const auto& k : known) {
      if (k == metric) return;
      list += (list.empty() ? "" : ", ") + k;
    }
    fail(op, "monitor '", spec, "': a ", task_type_name(t->type), " task reports {", list, "} but not '", metric, "'");
  }
  // An epoch whose length is not a multiple of `accumulation` still applies
  // its last gradients (scaled for a full group, like PyTorch loops that step
  // at the end of the epoch).
  void flush_partial_accumulation() {
    if (pending_ > 0) apply_update();
  }

  // Kendall et al.: d/ds_k [0.5 e^{-s_k} lambda_k L_k + 0.5 s_k], one Adam step
  // (same lr and betas as the model) on tasks labelled in this batch.
  void uncertainty_update(const TaskLosses& l) {
    const double lr = lr_at(state_.updates), b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double t = double(state_.step + 1);
    for (std::size_t k = 0; k < l.value.size(); ++k) {
      if (l.count[k] == 0) continue;
      const double lambda = model_->config().tasks[k].weight;
      const double g = -0.5 * std::exp(-state_.log_var[k]) * lambda * l.value[k] + 0.5;
      double& m = state_.log_var_m[k];
      double& v = state_.log_var_v[k];
      m = b1 * m + (1 - b1) * g;
      v = b2 * v + (1 - b2) * g * g;
      state_.log_var[k] -= lr / (1 - std::pow(b1, t)) * m / (std::sqrt(v / (1 - std::pow(b2, t))) + eps);
    }
  }

  // Norm of the current gradient restricted to the last shared layer.
  double last_shared_grad_norm() const {
    const auto& st = model_->parameters();
    double s = 0;
    for (ParamId id : model_->last_shared_layer()) {
      const T* g = host_grads(st, id, 0, st.info(id).size, host_scratch_);
      for (index_t i = 0; i < st.info(id).size; ++i) s += double(g[i]) * double(g[i]);
    }
    return std::sqrt(s);
  }

  // GradNorm (Chen et al., 2018): G_k = w_k ||grad_W L_k|| on the last shared
  // layer W; targets G_avg * r_k^alpha with r_k the relative inverse training
  // rate; w follows d sum_k |G_k - target_k| / d w_k, then is renormalised to
  // sum to K. The network is updated with the weights before this update.
  // The K per-task backward passes use the training weights, so together they
  // ARE the network gradient; each task's ||grad_W L_k|| is read as the change
  // of W's gradient over its pass (W is small: no full-buffer copies).
  void gradnorm_backward(const Batch<T>& batch, const TaskLosses& l, double acc) {
    MultiTaskModel<T, Device>& m = *model_;
    const std::size_t K = m.num_tasks();
    auto& st = m.parameters();
    if (state_.initial_loss.empty()) state_.initial_loss = l.value;
    gn_weights_ = task_weights();  // a copy: the weights change below (reuses capacity)
    const auto& w = gn_weights_;
    std::vector<double>& norms = scratch_;
    norms.assign(K, 0.0);
    for (std::size_t k = 0; k < K; ++k) {
      if (l.count[k] == 0) continue;
      grad_saved_.clear();
      for (ParamId id : m.last_shared_layer()) {
        const T* g = host_grads(st, id, 0, st.info(id).size, host_scratch_);
        grad_saved_.insert(grad_saved_.end(), g, g + st.info(id).size);
      }
      std::fill(coeff_.begin(), coeff_.end(), 0.0);
      coeff_[k] = w[k] * acc;
      m.backward(ws_, batch, coeff_.data());
      double s = 0;
      std::size_t pos = 0;
      for (ParamId id : m.last_shared_layer()) {
        const T* g = host_grads(st, id, 0, st.info(id).size, host_scratch_);
        for (index_t i = 0; i < st.info(id).size; ++i) {
          const double d = double(g[i]) - double(grad_saved_[pos++]);
          s += d * d;
        }
      }
      norms[k] = std::sqrt(s) / (w[k] * acc);
    }
    // Weight update on the tasks present in this batch.
    double g_mean = 0, r_mean = 0;
    int present = 0;
    for (std::size_t k = 0; k < K; ++k)
      if (l.count[k] > 0 && state_.initial_loss[k] > 0) {
        g_mean += state_.gradnorm_w[k] * norms[k];
        r_mean += l.value[k] / state_.initial_loss[k];
        ++present;
      }
    if (present < 2) return;
    g_mean /= present;
    r_mean /= present;
    for (std::size_t k = 0; k < K; ++k) {
      if (l.count[k] == 0 || state_.initial_loss[k] <= 0) continue;
      const double r = (l.value[k] / state_.initial_loss[k]) / r_mean;
      const double target = g_mean * std::pow(r, cfg_.gradnorm_alpha);
      const double G = state_.gradnorm_w[k] * norms[k];
      const double grad = (G > target ? 1.0 : G < target ? -1.0 : 0.0) * norms[k];
      state_.gradnorm_w[k] = std::max(1e-3, state_.gradnorm_w[k] - cfg_.gradnorm_lr * grad);
    }
    double sum = 0;
    for (double x : state_.gradnorm_w) sum += x;
    for (double& x : state_.gradnorm_w) x *= double(K) / sum;
  }

  // PCGrad (Yu et al., 2020) on the shared parameters: per-task gradients
  // g_k; for each k, in a seeded random order over j != k, if g_k . g_j < 0
  // then g_k -= (g_k . g_j / |g_j|^2) g_j; the shared gradient is sum_k g_k.
  // Task-specific parameters keep their plain gradients.
  void pcgrad_backward(const Batch<T>& batch, const TaskLosses& l, double acc) {
    MultiTaskModel<T, Device>& m = *model_;
    const std::size_t K = m.num_tasks();
    auto& st = m.parameters();
    const auto& w = task_weights();
    // Shared coordinates: the dense shared parameters, then each shared
    // table's touched rows in first-touch order. Saved per task; rows first
    // touched by a later task are zero for earlier ones.
    dense_shared_.clear();
    tables_shared_.clear();
    for (ParamId id : m.shared_parameters())
      (st.info(id).kind == ParamKind::Table ? tables_shared_ : dense_shared_).push_back(id);
    // Gradients from earlier micro-batches of an accumulation group are kept aside.
    saved_shared_ = gather_shared(st, saved_rows_);
    zero_shared(st);
    task_grads_.resize(K);
    task_rows_.resize(K);
    for (std::size_t k = 0; k < K; ++k) {
      std::fill(coeff_.begin(), coeff_.end(), 0.0);
      coeff_[k] = l.count[k] > 0 ? w[k] * acc : 0.0;
      if (coeff_[k] != 0.0) m.backward(ws_, batch, coeff_.data());
      task_grads_[k] = gather_shared(st, task_rows_[k]);
      zero_shared(st);
    }
    // Final layout: dense part, then every table's full touched list.
    std::vector<index_t> full_rows;
    for (ParamId id : tables_shared_) full_rows.push_back(index_t(st.touched(id).rows.size()));
    for (std::size_t k = 0; k < K; ++k) task_grads_[k] = expand(task_grads_[k], task_rows_[k], full_rows, st);
    std::vector<std::vector<double>> projected = task_grads_;
    RandomStream rs(cfg_.seed, 0x9C + std::uint64_t(state_.step));
    std::vector<std::size_t> others;
    for (std::size_t k = 0; k < K; ++k) {
      others.clear();
      for (std::size_t j = 0; j < K; ++j)
        if (j != k) others.push_back(j);
      for (std::size_t i = others.size(); i > 1; --i) std::swap(others[i - 1], others[rs.below(k * 131 + i, i)]);
      for (std::size_t j : others) {
        const auto& gj = task_grads_[j];
        double dot = 0, nn = 0;
        for (std::size_t i = 0; i < gj.size(); ++i) {
          dot += projected[k][i] * gj[i];
          nn += gj[i] * gj[i];
        }
        if (dot < 0 && nn > 0)
          for (std::size_t i = 0; i < gj.size(); ++i) projected[k][i] -= dot / nn * gj[i];
      }
    }
    std::vector<double> sum(projected.empty() ? 0 : projected[0].size(), 0.0);
    for (const auto& p : projected)
      for (std::size_t i = 0; i < p.size(); ++i) sum[i] += p[i];
    // Add back earlier micro-batches (their rows are a prefix of the touched lists).
    const auto saved = expand(saved_shared_, saved_rows_, full_rows, st);
    for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += saved[i];
    scatter_shared(st, sum);
  }

  // Shared gradients as a flat vector (dense part, then touched rows of each
  // shared table); `rows` receives the touched-row count per table.
  std::vector<double> gather_shared(const ParameterStore<T, Device>& st, std::vector<index_t>& rows) const {
    std::vector<double> v;
    std::vector<T>& scratch = host_scratch_;
    for (ParamId id : dense_shared_) {
      const T* g = host_grads(st, id, 0, st.info(id).size, scratch);
      v.insert(v.end(), g, g + st.info(id).size);
    }
    rows.clear();
    for (ParamId id : tables_shared_) {
      const index_t dim = st.info(id).shape[1];
      const auto& touched = st.touched(id).rows;
      rows.push_back(index_t(touched.size()));
      for (index_t r : touched) {
        const T* g = host_grads(st, id, r * dim, dim, scratch);
        v.insert(v.end(), g, g + dim);
      }
    }
    return v;
  }
  std::vector<double> expand(const std::vector<double>& v, const std::vector<index_t>& rows,
                             const std::vector<index_t>& full_rows, const ParameterStore<T, Device>& st) const {
    std::vector<double> out;
    std::size_t pos = 0;
    for (ParamId id : dense_shared_) {
      out.insert(out.end(), v.begin() + std::ptrdiff_t(pos), v.begin() + std::ptrdiff_t(pos + std::size_t(st.info(id).size)));
      pos += std::size_t(st.info(id).size);
    }
    for (std::size_t t = 0; t < tables_shared_.size(); ++t) {
      const std::size_t dim = std::size_t(st.info(tables_shared_[t]).shape[1]);
      const std::size_t have = std::size_t(rows[t]) * dim, want = std::size_t(full_rows[t]) * dim;
      out.insert(out.end(), v.begin() + std::ptrdiff_t(pos), v.begin() + std::ptrdiff_t(pos + have));
      out.insert(out.end(), want - have, 0.0);
      pos += have;
    }
    return out;
  }
  void scatter_shared(ParameterStore<T, Device>& st, const std::vector<double>& v) const {
    std::size_t pos = 0;
    std::vector<T> h;
    for (ParamId id : dense_shared_) {
      h.resize(std::size_t(st.info(id).size));
      for (T& x : h) x = T(v[pos++]);
      st.write_grads(st.info(id).offset, h.data(), index_t(h.size()));
    }
    for (ParamId id : tables_shared_) {
      const index_t dim = st.info(id).shape[1];
      h.resize(std::size_t(dim));
      for (index_t r : st.touched(id).rows) {
        for (T& x : h) x = T(v[pos++]);
        st.write_grads(st.info(id).offset + r * dim, h.data(), dim);
      }
    }
  }
  void zero_shared(ParameterStore<T, Device>& st) const {
    for (ParamId id : dense_shared_) kernels::fill(st.device(), st.grad(id), st.info(id).size, T(0));
    for (ParamId id : tables_shared_) {
      const index_t dim = st.info(id).shape[1];
      for (index_t r : st.touched(id).rows) kernels::fill(st.device(), st.grad(id) + r * dim, dim, T(0));
    }
  }
  // PCGrad and GradNorm run on the host: `count` gradients of parameter `id`
  // from element `at`, read in place when the host can read device memory,
  // else copied into `scratch` (one explicit copy).
  static const T* host_grads(const ParameterStore<T, Device>& st, ParamId id, index_t at, index_t count,
                             std::vector<T>& scratch) {
    if constexpr (host_readable_v<Device>) {
      (void)scratch;
      (void)count;
      return st.grad(id) + at;
    } else {
      scratch.resize(std::size_t(count));
      st.read_grads(scratch.data(), st.info(id).offset + at, count);
      return scratch.data();
    }
  }
  void progress_bar(int epoch, index_t seen, index_t total, double loss,
                    std::chrono::steady_clock::time_point start) const {
    const auto now = std::chrono::steady_clock::now();
    if (seen < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double secs = std::max(1e-9, seconds_since(start));
    const double rate = double(seen) / secs, eta = double(total - seen) / std::max(rate, 1e-9);
    const int width = 28, filled = int(double(width) * double(seen) / double(total));
    std::string bar(std::size_t(filled), '=');
    if (filled < width) bar += '>' + std::string(std::size_t(width - filled - 1), ' ');
    char line[256];
    std::snprintf(line, sizeof line, "\repoch %d/%d [%s] %3d%%  %.0f samples/s  loss %.4f  ETA %02d:%02d ", epoch + 1,
                  cfg_.epochs, bar.c_str(), int(100.0 * double(seen) / double(total)), rate, loss, int(eta) / 60,
                  int(eta) % 60);
    if (cfg_.log) *cfg_.log << line << std::flush;
  }

  void report_epoch(const EpochRecord& r, bool tty) const {
    if (!cfg_.log || !cfg_.progress) return;
    std::ostringstream os;
    if (tty) os << '\n';
    os << "epoch " << r.epoch << "/" << cfg_.epochs << "  train loss " << r.train_loss;
    for (const auto& t : r.valid.tasks)
      for (const auto& kv : t.values)
        if (kv.first != "count") os << "  " << kv.first << ":" << t.task << " " << kv.second;
    os << "  (" << r.seconds << " s)\n";
    *cfg_.log << os.str() << std::flush;
  }

  void write_csv(const History& h) const {
    if (cfg_.csv_log.empty()) return;
    std::ostringstream os;
    const auto& first = h.epochs.front();
    os << "epoch,train_loss,lr,seconds";
    for (const auto& t : model_->config().tasks) os << ",train_loss:" << t.name;
    for (const auto& t : first.valid.tasks)
      for (const auto& kv : t.values) os << ",valid_" << kv.first << ":" << t.task;
    os << '\n';
    os.precision(10);
    for (const auto& r : h.epochs) {
      os << r.epoch << ',' << r.train_loss << ',' << r.lr << ',' << r.seconds;
      for (double v : r.train_task_loss) os << ',' << v;
      for (std::size_t k = 0; k < first.valid.tasks.size(); ++k)
        for (const auto& kv : first.valid.tasks[k].values) {
          const auto& vals = r.valid.tasks[k].values;
          auto it = vals.find(kv.first);
          os << ',';
          if (it != vals.end()) os << it->second;
        }
      os << '\n';
    }
    const std::string s = os.str();
    io::AtomicFileWriter w(cfg_.csv_log);
    w.write(s.data(), s.size());
    w.commit();
  }

  MultiTaskModel<T, Device>* model_;
  TrainConfig cfg_;
  Optimizer<T, Device> opt_;
  LRSchedule schedule_;
  TrainerState state_;
  typename MultiTaskModel<T, Device>::Workspace ws_;
  mutable std::vector<T> host_scratch_;  // host copies of gradients (PCGrad, GradNorm) on a non-host device
  Batch<T> batch_;
  std::vector<double> coeff_, scratch_;
  mutable std::vector<double> weights_;
  std::vector<double> gn_weights_;
  std::vector<T> grad_saved_;
  std::vector<ParamId> dense_shared_, tables_shared_;
  std::vector<std::vector<double>> task_grads_;
  std::vector<std::vector<index_t>> task_rows_;
  std::vector<double> saved_shared_;
  std::vector<index_t> saved_rows_;
  int pending_ = 0;
  bool schedule_ready_ = false;   // schedule_ is built from cfg (fit or the first train_step)
  bool group_bad_ = false;        // a micro-batch of the pending accumulation group had a non-finite loss
  bool last_step_finite_ = true;  // the last train_step's loss and update were finite
  std::string group_what_, nonfinite_what_;
  TrainerState saved_;            // loss-weighting state at the start of the pending group
  index_t skipped_ = 0;
  int where_epoch_ = 0;
  index_t where_step_ = 0;
  mutable std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace mtrec
