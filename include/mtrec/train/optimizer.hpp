// mtrec: optimizers (SGD, Adam, AdamW), learning-rate schedules, gradient clipping.
//
// An Optimizer owns its state (Adam's m and v, SGD's momentum buffer) as flat
// buffers laid out exactly like the ParameterStore's block, so parameter i of
// the store and state element i share an offset. One step() is
//
//   - one kernel call over the dense block [0, dense_size()), and
//   - for every embedding table, either its touched rows only (lazy_tables,
//     the default) or the whole table (dense semantics).
//
// The update formulas are PyTorch's (torch.optim.SGD / Adam / AdamW); the
// kernels are kernels::sgd_update and kernels::adam_update.
//
// The optimizer never clears gradients: the trainer calls store.zero_grad()
// after step() (or after k accumulated backward passes, then step()).
// step() allocates nothing: the state is allocated once, in the constructor.
//
// ---- lazy table updates vs dense Adam -------------------------------------
//
// With lazy_tables, a table row is updated only in the steps whose backward
// marked it touched (store.touched(id).rows). This is what TF's LazyAdam and
// torch.optim.SparseAdam do, and it differs from dense Adam:
//
//   - An untouched row keeps its m and v unchanged (stale) and its weights do
//     not move. Under dense Adam the same row has g = 0, but m and v still
//     decay (m *= beta1, v *= beta2) and the weights keep moving by
//     lr * m_hat / (sqrt(v_hat) + eps) for as long as m is non-zero, i.e. a
//     row touched once drifts for many steps afterwards.
//   - When a row is touched again after a gap, lazy Adam continues from its
//     stale m, v; the step counter t (bias correction) is global, counting
//     every step() call, not per-row touches (as LazyAdam and SparseAdam).
//   - Weight decay (Adam's L2 term, AdamW's decoupled w *= 1 - lr * wd, SGD's
//     L2 term) is applied to touched rows only: an embedding row of a rarely
//     seen id is decayed only in the steps that use it. Dense semantics decay
//     every row every step.
//   - Cost: a lazy step is O(dense_size + touched rows * dim), independent of
//     the table size; a dense step visits every row of every table.
//   - When every row of a table is touched in every step, lazy and dense
//     updates are identical (bit for bit: the same kernel math per element).
//
// Plain SGD (momentum 0, weight decay 0) gives the same result either way:
// untouched rows have zero gradients.
//
// ---- fused table updates (fused_tables) -------------------------------------
//
// FBGEMM's table-batched embedding applies the optimizer inside the
// embedding backward; fused_tables does the same. The lookup layers hand
// their backward to the store (ParameterStore::defer_lookup) instead of
// writing the table gradient, and step() runs, per table, one
// kernels::embedding_bag_backward_adam: the batch's IDs are sorted, each
// row's gradient is summed once, kept in registers, and Adam (or AdamW)
// updates w, m and v in place. The full table gradient is never written.
//
//   - The update is the lazy one above, on the same rows, with the same
//     formulas: fused and unfused steps agree to rounding (the op table
//     checks the kernel; tests/test_trainer.cpp checks whole training runs).
//   - A table looked up twice in one step (shared by two features) or also
//     written directly (a retrieval task's targets) falls back to the
//     unfused path for that step, with the same result.
//   - Table gradients do not exist, so nothing can read them: the trainer
//     refuses fused_tables with clip_norm > 0 (a global norm would need
//     them), accumulation > 1, and GradNorm or PCGrad weighting.
//   - Turning it on sets the store's mode (ParameterStore::set_fused_tables).
//
// ---- checkpoints -----------------------------------------------------------
//
// state() names the buffers ("optimizer.m", "optimizer.v" for Adam/AdamW,
// "optimizer.momentum" for SGD with momentum, nothing for plain SGD); each
// is a flat view of store.size() elements in the store's layout.
// load_state(step_count, buffers) restores them and the step counter, so a
// run restored from (parameters, optimizer state, step count) continues bit
// for bit. The hyper-parameters are not state: build the Optimizer with the
// same config.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/parameters.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/embedding.hpp"
#include "mtrec/kernels/rows.hpp"

namespace mtrec {

struct OptimizerConfig {
  enum class Kind { SGD, Adam, AdamW };
  Kind kind = Kind::Adam;
  double lr = 1e-3;            // used by step(); step(lr) overrides it (schedules)
  double momentum = 0;         // SGD only, in [0, 1)
  bool nesterov = false;       // SGD only, needs momentum > 0
  double beta1 = 0.9;          // Adam/AdamW
  double beta2 = 0.999;        // Adam/AdamW
  double eps = 1e-8;           // Adam/AdamW, > 0
  double weight_decay = 0;     // SGD/Adam: L2 added to the gradient; AdamW: decoupled
  bool lazy_tables = true;     // update only the touched rows of embedding tables
  // Adam/AdamW with lazy_tables: the embedding lookups' backward is fused
  // with the row-wise update (see "fused table updates" above).
  bool fused_tables = false;

  static OptimizerConfig sgd(double lr, double momentum = 0, double weight_decay = 0, bool nesterov = false) {
    OptimizerConfig c;
    c.kind = Kind::SGD;
    c.lr = lr;
    c.momentum = momentum;
    c.weight_decay = weight_decay;
    c.nesterov = nesterov;
    return c;
  }
  static OptimizerConfig adam(double lr, double weight_decay = 0) {
    OptimizerConfig c;
    c.kind = Kind::Adam;
    c.lr = lr;
    c.weight_decay = weight_decay;
    return c;
  }
  static OptimizerConfig adamw(double lr, double weight_decay) {
    OptimizerConfig c;
    c.kind = Kind::AdamW;
    c.lr = lr;
    c.weight_decay = weight_decay;
    return c;
  }

  static const char* kind_name(Kind k) {
    switch (k) {
      case Kind::SGD: return "SGD";
      case Kind::Adam: return "Adam";
      case Kind::AdamW: return "AdamW";
    }
    return "?";
  }

  // Throws unless the config is usable; the message names the field and its value.
  void validate() const {
    const char* op = "Optimizer";
    check(kind == Kind::SGD || kind == Kind::Adam || kind == Kind::AdamW, op, "unknown optimizer kind ",
          static_cast<int>(kind));
    check(std::isfinite(lr) && lr > 0, op, "expected lr > 0 (finite) but got ", lr);
    check(std::isfinite(weight_decay) && weight_decay >= 0, op, "expected weight_decay >= 0 (finite) but got ",
          weight_decay);
    if (kind == Kind::SGD) {
      check(!fused_tables, op, "fused_tables expected Adam or AdamW (the fused kernel applies Adam) but got SGD");
      check(momentum >= 0 && momentum < 1, op, "SGD expected momentum in [0, 1) but got ", momentum);
      check(!nesterov || momentum > 0, op, "SGD with nesterov expected momentum > 0 but got ", momentum);
      return;
    }
    // A momentum set on Adam is almost certainly a mix-up of configs: say so
    // rather than ignore it.
    check(momentum == 0 && !nesterov, op, kind_name(kind),
          " expected momentum 0 and nesterov false (they are SGD settings) but got momentum ", momentum,
          ", nesterov ", nesterov ? "true" : "false");
    check(beta1 >= 0 && beta1 < 1, op, kind_name(kind), " expected beta1 in [0, 1) but got ", beta1);
    check(beta2 >= 0 && beta2 < 1, op, kind_name(kind), " expected beta2 in [0, 1) but got ", beta2);
    check(!fused_tables || lazy_tables, op, kind_name(kind),
          " with fused_tables expected lazy_tables true (the fused update is the lazy one) but got false");
    // eps = 0 is legal in PyTorch, but here the flat block has elements that
    // never get a gradient (alignment padding, unused parameters): with m = v
    // = 0 they would compute 0 / 0 = NaN.
    check(std::isfinite(eps) && eps > 0, op, kind_name(kind), " expected eps > 0 (finite) but got ", eps);
  }
};

// Holds a pointer to the store: the store must outlive the optimizer.
template <class T, class Device = Cpu>
class Optimizer {
 public:
  Optimizer(ParameterStore<T, Device>& store, const OptimizerConfig& config) : store_(&store), cfg_(config) {
    check(store.allocated(), "Optimizer", "expected an allocated ParameterStore (call allocate() first) but it is not");
    cfg_.validate();
    const Shape flat{store.size()};
    if (cfg_.kind == OptimizerConfig::Kind::SGD) {
      if (cfg_.momentum != 0) zeroed(buf_, flat);
    } else {
      zeroed(m_, flat);
      zeroed(v_, flat);
    }
    store.set_fused_tables(cfg_.fused_tables);
  }
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  const OptimizerConfig& config() const { return cfg_; }
  // Number of step() calls so far (restored by load_state): the t of Adam's
  // bias correction for the last step taken.
  index_t step_count() const { return t_; }

  // One update with the config's learning rate.
  bool step() { return step(cfg_.lr); }

  // One update from the current gradients with learning rate `lr` (e.g. a
  // schedule's value, LRSchedule::at(step_count())). lr = 0 is allowed (the
  // end of a schedule decaying to 0): the state still advances. Returns true
  // when every weight it updated is finite (checked inside the update
  // kernels, so it costs no extra pass over the weights).
  bool step(double lr) {
    check(std::isfinite(lr) && lr >= 0, "Optimizer::step", "expected lr >= 0 (finite) but got ", lr);
    ParameterStore<T, Device>& s = *store_;
    ++t_;
    kernels::simd::FiniteFlag finite;
    if (cfg_.kind == OptimizerConfig::Kind::SGD) {
      const T tlr = T(lr), mu = T(cfg_.momentum), wd = T(cfg_.weight_decay);
      using Ptr = typename ParameterStore<T, Device>::pointer;
      const Ptr buf = buf_.numel() ? buf_.data() : Ptr(nullptr);
      update_block(
          [&](index_t off, index_t n) {
            if (!kernels::sgd_update(s.device(), s.values() + off, buf ? buf + off : Ptr(nullptr), s.grads() + off,
                                     n, tlr, mu, wd, cfg_.nesterov))
              finite.clear();
          },
          [&](const RowSet* sets, index_t n_sets) {
            if (!kernels::sgd_update_rows(s.device(), s.values(), buf, s.grads(), sets, n_sets, tlr, mu, wd,
                                          cfg_.nesterov))
              finite.clear();
          });
    } else {
      // Bias corrections in double, like PyTorch (Python floats), then cast.
      kernels::AdamStep<T> st;
      st.lr = T(lr);
      st.beta1 = T(cfg_.beta1);
      st.beta2 = T(cfg_.beta2);
      st.eps = T(cfg_.eps);
      st.weight_decay = T(cfg_.weight_decay);
      st.decoupled = cfg_.kind == OptimizerConfig::Kind::AdamW;
      st.bias_correction1 = T(1.0 - std::pow(cfg_.beta1, double(t_)));
      st.bias_correction2 = T(1.0 - std::pow(cfg_.beta2, double(t_)));
      update_block(
          [&](index_t off, index_t n) {
            if (!kernels::adam_update(s.device(), s.values() + off, m_.data() + off, v_.data() + off,
                                      s.grads() + off, n, st))
              finite.clear();
          },
          [&](const RowSet* sets, index_t n_sets) {  // lazy: the touched rows of every table
            if (!kernels::adam_update_rows(s.device(), s.values(), m_.data(), v_.data(), s.grads(), sets,
                                           n_sets, st))
              finite.clear();
          });
      if (s.fused_tables())  // the deferred lookups: gradient and update in one kernel per table
        for (ParamId id = 0; id < s.count(); ++id) {
          if (s.info(id).kind != ParamKind::Table) continue;
          const auto* l = s.deferred(id);
          if (l == nullptr) continue;
          const index_t off = s.info(id).offset;
          if (!kernels::embedding_bag_backward_adam(s.device(), s.value(id), m_.data() + off, v_.data() + off, l->dy,
                                                    l->ids, l->offsets, l->weights, l->B, l->n_ids, s.info(id).shape[1],
                                                    l->mean, st))
            finite.clear();
        }
    }
    return finite.get();
  }

  // The state buffers by name, each a flat view of store.size() elements.
  // Views of device memory: copy them with to_host() to read them.
  std::vector<std::pair<std::string, DeviceView<const T, Device>>> state() const {
    std::vector<std::pair<std::string, DeviceView<const T, Device>>> out;
    if (m_.numel()) out.emplace_back("optimizer.m", m_.cview());
    if (v_.numel()) out.emplace_back("optimizer.v", v_.cview());
    if (buf_.numel()) out.emplace_back("optimizer.momentum", buf_.cview());
    return out;
  }

  // Restores the step counter and every buffer that state() names. `buffers`
  // must hold each of those names exactly once, with store.size() elements,
  // and nothing else. Everything is checked before anything is copied.
  void load_state(index_t step_count, const std::vector<std::pair<std::string, ConstView<T>>>& buffers) {
    const char* op = "Optimizer::load_state";
    check(step_count >= 0, op, "expected a step count >= 0 but got ", step_count);
    const auto mine = state();
    for (const auto& b : buffers) {
      int known = 0;
      for (const auto& m : mine) known += m.first == b.first;
      check(known == 1, op, "unexpected state buffer '", b.first, "' for ", OptimizerConfig::kind_name(cfg_.kind),
            " (expected ", names(mine), ")");
    }
    for (const auto& m : mine) {
      const ConstView<T>* src = nullptr;
      int found = 0;
      for (const auto& b : buffers)
        if (b.first == m.first) {
          src = &b.second;
          ++found;
        }
      check(found == 1, op, "expected state buffer '", m.first, "' exactly once but found it ", found, " times");
      check(src->numel() == m.second.numel() && (src->data != nullptr || src->numel() == 0), op, "state buffer '",
            m.first, "' expected ", m.second.numel(), " elements but got ", src->numel(),
            src->data ? "" : " (no data)");
    }
    for (const auto& b : buffers) {
      Tensor<T, Device>& dst = b.first == "optimizer.m" ? m_ : b.first == "optimizer.v" ? v_ : buf_;
      to_device(store_->device(), dst.view(), b.second.data);
    }
    t_ = step_count;
  }

 private:
  template <class View>
  static std::string names(const std::vector<std::pair<std::string, View>>& v) {
    if (v.empty()) return "none";
    std::string s;
    for (const auto& p : v) s += (s.empty() ? "'" : ", '") + p.first + "'";
    return s;
  }

  // Calls update(offset, n) on every span of the flat block that this step
  // updates: the dense block in one call, then each table lazily row by row
  // (rows in parallel; each row's kernel call then runs serially) or whole.
  template <class Update, class UpdateRows>
  void update_block(Update&& update, UpdateRows&& update_rows) {
    ParameterStore<T, Device>& s = *store_;
    if (!cfg_.lazy_tables) {
      // Dense semantics: the whole block at once, tables included. Alignment
      // padding has zero values, grads and state, and stays zero.
      update(index_t(0), s.size());
      return;
    }
    update(index_t(0), s.dense_size());
    // Every table's touched rows in one call (one parallel region).
    const std::vector<RowSet>& sets = s.touched_row_sets();
    update_rows(sets.data(), index_t(sets.size()));
  }

  ParameterStore<T, Device>* store_;
  OptimizerConfig cfg_;
  index_t t_ = 0;
  Tensor<T, Device> m_, v_, buf_;

  void zeroed(Tensor<T, Device>& t, Shape s) const {
    t = Tensor<T, Device>(s, store_->device());
    t.zero();
  }
};

// ---- learning-rate schedules -------------------------------------------------

// lr as a function of the 0-based optimizer step: call at(opt.step_count())
// before opt.step(lr).
//
//   warmup  step < warmup_steps:  base_lr * (step + 1) / warmup_steps
//           (the first update already moves, and step warmup_steps - 1 reaches
//           base_lr; HuggingFace's step / warmup spends its first step at 0)
//   decay   warmup_steps <= step < total_steps, p = (step - warmup) / (total - warmup):
//             Constant      base_lr (total_steps is ignored)
//             WarmupLinear  min_lr + (base_lr - min_lr) * (1 - p)
//             WarmupCosine  min_lr + (base_lr - min_lr) * (1 + cos(pi p)) / 2
//   after   step >= total_steps: min_lr (Linear, Cosine)
struct LRSchedule {
  enum class Kind { Constant, WarmupLinear, WarmupCosine };
  Kind kind = Kind::Constant;
  double base_lr = 1e-3;
  index_t warmup_steps = 0;
  index_t total_steps = 0;
  double min_lr = 0;

  static LRSchedule constant(double base_lr, index_t warmup_steps = 0) {
    return {Kind::Constant, base_lr, warmup_steps, 0, 0};
  }
  static LRSchedule warmup_linear(double base_lr, index_t warmup_steps, index_t total_steps, double min_lr = 0) {
    return {Kind::WarmupLinear, base_lr, warmup_steps, total_steps, min_lr};
  }
  static LRSchedule warmup_cosine(double base_lr, index_t warmup_steps, index_t total_steps, double min_lr = 0) {
    return {Kind::WarmupCosine, base_lr, warmup_steps, total_steps, min_lr};
  }

  void validate() const {
    const char* op = "LRSchedule";
    check(kind == Kind::Constant || kind == Kind::WarmupLinear || kind == Kind::WarmupCosine, op,
          "unknown schedule kind ", static_cast<int>(kind));
    check(std::isfinite(base_lr) && base_lr > 0, op, "expected base_lr > 0 (finite) but got ", base_lr);
    check(warmup_steps >= 0, op, "expected warmup_steps >= 0 but got ", warmup_steps);
    if (kind == Kind::Constant) return;
    check(total_steps > 0, op, "expected total_steps > 0 but got ", total_steps);
    check(warmup_steps <= total_steps, op, "expected warmup_steps <= total_steps (", total_steps, ") but got ",
          warmup_steps);
    check(std::isfinite(min_lr) && min_lr >= 0 && min_lr <= base_lr, op, "expected min_lr in [0, base_lr = ", base_lr,
          "] but got ", min_lr);
  }

  double at(index_t step) const {
    validate();
    check(step >= 0, "LRSchedule::at", "expected step >= 0 but got ", step);
    if (step < warmup_steps) return base_lr * double(step + 1) / double(warmup_steps);
    if (kind == Kind::Constant) return base_lr;
    if (step >= total_steps) return min_lr;
    const double p = double(step - warmup_steps) / double(total_steps - warmup_steps);
    if (kind == Kind::WarmupLinear) return min_lr + (base_lr - min_lr) * (1.0 - p);
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(3.14159265358979323846 * p));
  }
};

// ---- gradient norm and clipping ----------------------------------------------


// Global L2 norm of the gradients: the dense block and the touched rows of
// every table (untouched rows have zero gradients, so this is the norm of the
// whole gradient). Accumulated in double in a fixed order (dense block by
// fixed chunks, then each table's touched rows in touch order, grouped in
// fixed parts), so it is bitwise the same for every thread count.
template <class T, class Device>
inline double grad_norm(const ParameterStore<T, Device>& store) {
  check(store.allocated(), "grad_norm", "expected an allocated ParameterStore but allocate() has not been called");
  double total = kernels::sum_squares(store.device(), store.grads(), store.dense_size());
  const std::vector<RowSet>& sets = store.touched_row_sets();
  total += kernels::sum_squares_rows(store.device(), store.grads(), sets.data(), index_t(sets.size()));
  return std::sqrt(total);
}

// Multiplies every gradient (dense block and touched table rows) by `factor`,
// e.g. 1/k after accumulating k backward passes.
template <class T, class Device>
inline void scale_grads(ParameterStore<T, Device>& store, double factor) {
  check(store.allocated(), "scale_grads", "expected an allocated ParameterStore but allocate() has not been called");
  check(std::isfinite(factor), "scale_grads", "expected a finite factor but got ", factor);
  const T f = T(factor);
  kernels::scale(store.device(), store.grads(), store.grads(), store.dense_size(), f);
  const std::vector<RowSet>& sets = store.touched_row_sets();
  kernels::scale_rows(store.device(), store.grads(), sets.data(), index_t(sets.size()), f);
}

// torch.nn.utils.clip_grad_norm_: with the global norm above, if
// max_norm / (norm + 1e-6) < 1 every gradient is multiplied by that factor.
// Returns the norm before clipping. A non-finite norm (NaN/inf gradients)
// leaves the gradients untouched and is returned as is, so the trainer can
// check std::isfinite and skip the step (torch would scale by 0 or NaN).
template <class T, class Device>
inline double clip_grad_norm(ParameterStore<T, Device>& store, double max_norm) {
  check(std::isfinite(max_norm) && max_norm > 0, "clip_grad_norm", "expected max_norm > 0 (finite) but got ",
        max_norm);
  const double norm = grad_norm(store);
  if (!std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) scale_grads(store, coef);
  return norm;
}

}  // namespace mtrec
