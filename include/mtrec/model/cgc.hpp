// mtrec: CgcLevels — the expert trunk of MMoE and PLE (Tang et al., 2020).
//
// L levels of Customized Gate Control. Level l has Et experts per task and
// Es shared experts (MLPs); task k's gate mixes its own experts and the
// shared ones into task k's output; below the last level a shared gate
// mixes all experts into the next level's shared input:
//
//   level 0:  every expert reads x (B,in)
//   level l:  task k's experts read task k's output of level l-1,
//             shared experts read the shared output of level l-1
//   out_k (B,De) = task k's gate output of the last level
//
// MMoE is one level with Et = 0: every expert is shared and each task has a
// gate. The gates are MixtureGate (layers/gate.hpp).
#pragma once

#include <string>
#include <vector>

#include "mtrec/kernels/device.hpp"
#include "mtrec/layers/gate.hpp"
#include "mtrec/layers/mlp.hpp"

namespace mtrec {

template <class T, class Device = Cpu>
class CgcLevels {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;  // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;

  struct Workspace {
    struct GateWs {
      typename MixtureGate<T, Device>::Context ctx;
      Tensor<T, Device> out, d_out;  // (B,De)
      std::vector<CPtr> experts;     // (M) the mixed experts' outputs
      std::vector<Ptr> d_experts;    // (M) their gradients
    };
    struct LevelWs {
      std::vector<typename MLP<T, Device>::Context> expert;
      std::vector<Tensor<T, Device>> expert_out, d_expert_out;  // (B,De)
      std::vector<GateWs> task_gate;
      GateWs shared_gate;
      std::vector<Tensor<T, Device>> d_task_in;  // (B,in) per task
      Tensor<T, Device> d_shared_in;
    };
    std::vector<LevelWs> levels;
    Tensor<T, Device> scratch;  // (B,in) an expert's input gradient, before it is added
    index_t B = 0;
  };

  CgcLevels() = default;
  // Parameters "level<l>.task_expert.<task>.<j>", "level<l>.shared_expert.<j>",
  // "level<l>.gate.<task>" and "level<l>.gate.shared", in that order per level.
  CgcLevels(ParameterStore<T, Device>& s, index_t in, const std::vector<std::string>& tasks, int L, index_t Et,
            index_t Es, const MLPConfig& expert)
      : store_(&s) {
    const char* op = "CgcLevels";
    const index_t K = index_t(tasks.size());
    check(K >= 1 && L >= 1 && Et >= 0 && Es >= 0 && Et + Es >= 1, op,
          "expected at least 1 task, 1 level and 1 expert per gate but got tasks=", K, " levels=", L, " Et=", Et,
          " Es=", Es);
    check(!expert.hidden.empty(), op, "expected expert widths");
    de_ = expert.hidden.back();
    for (int l = 0; l < L; ++l) {
      Level lv;
      lv.in_dim = in;
      const std::string p = "level" + std::to_string(l) + ".";
      for (index_t k = 0; k < K; ++k)
        for (index_t j = 0; j < Et; ++j) {
          lv.experts.emplace_back(s, p + "task_expert." + tasks[std::size_t(k)] + "." + std::to_string(j), in, expert);
          lv.expert_input.push_back(int(k));
        }
      for (index_t j = 0; j < Es; ++j) {
        lv.experts.emplace_back(s, p + "shared_expert." + std::to_string(j), in, expert);
        lv.expert_input.push_back(-1);
      }
      for (index_t k = 0; k < K; ++k) {
        Gate g;
        for (index_t j = 0; j < Et; ++j) g.experts.push_back(int(k * Et + j));
        for (index_t j = 0; j < Es; ++j) g.experts.push_back(int(K * Et + j));
        g.mix = MixtureGate<T, Device>(s, p + "gate." + tasks[std::size_t(k)], in, index_t(g.experts.size()), de_);
        lv.task_gates.push_back(std::move(g));
      }
      lv.has_shared_gate = l + 1 < L;
      if (lv.has_shared_gate) {
        for (index_t j = 0; j < K * Et + Es; ++j) lv.shared_gate.experts.push_back(int(j));
        lv.shared_gate.mix = MixtureGate<T, Device>(s, p + "gate.shared", in, K * Et + Es, de_);
      }
      levels_.push_back(std::move(lv));
      in = de_;
    }
  }

  bool empty() const { return levels_.empty(); }
  std::size_t num_tasks() const { return levels_.empty() ? 0 : levels_.front().task_gates.size(); }
  index_t in_features() const { return levels_.empty() ? 0 : levels_.front().in_dim; }
  index_t out_features() const { return de_; }

  // The last Linear of every shared expert of the last level (GradNorm's
  // last shared layer).
  std::vector<ParamId> last_shared_weights() const {
    std::vector<ParamId> w;
    if (levels_.empty()) return w;
    const Level& lv = levels_.back();
    for (std::size_t e = 0; e < lv.experts.size(); ++e)
      if (lv.expert_input[e] < 0) w.push_back(lv.experts[e].layers().back().weight());
    return w;
  }

  // out_k (B,De) for every task k; read them with output(ws, k)
  void forward(Workspace& ws, CView x, const Mode& mode) const {
    const char* op = "CgcLevels::forward";
    check(!levels_.empty(), op, "the trunk has no levels");
    check_matrix(op, "x", x, -1, in_features());
    forward_impl(ws, x, nullptr, x.rows(), mode);
  }
  // The same for a split input (one shared row + N row parts; inference
  // only): the first level's experts and gates compute the shared part once.
  void forward(Workspace& ws, const SplitInput<T, Device>& x, const Mode& mode) const {
    const char* op = "CgcLevels::forward";
    check(!levels_.empty(), op, "the trunk has no levels");
    check(x.F == in_features(), op, "expected a split input of ", in_features(), " columns but got ", x.F);
    forward_impl(ws, CView(), &x, x.N, mode);
  }

 private:
  void forward_impl(Workspace& ws, CView x, const SplitInput<T, Device>* split, index_t B, const Mode& mode) const {
    prepare(ws, B);
    for (std::size_t l = 0; l < levels_.size(); ++l) {
      const Level& lv = levels_[l];
      auto& lw = ws.levels[l];
      const bool first_split = l == 0 && split != nullptr;
      auto task_in = [&](std::size_t k) -> CView { return l == 0 ? x : CView(ws.levels[l - 1].task_gate[k].out.view()); };
      const CView shared_in = l == 0 ? x : CView(ws.levels[l - 1].shared_gate.out.view());
      for (std::size_t e = 0; e < lv.experts.size(); ++e) {
        const int src = lv.expert_input[e];
        if (first_split)
          lv.experts[e].forward(lw.expert[e], *split, lw.expert_out[e].view(), mode);
        else
          lv.experts[e].forward(lw.expert[e], src < 0 ? shared_in : task_in(std::size_t(src)), lw.expert_out[e].view(),
                                mode);
      }
      for (std::size_t k = 0; k < lv.task_gates.size(); ++k)
        gate_forward(lv.task_gates[k], lw.task_gate[k], task_in(k), lw, first_split ? split : nullptr, B);
      if (lv.has_shared_gate) gate_forward(lv.shared_gate, lw.shared_gate, shared_in, lw, first_split ? split : nullptr, B);
    }
  }

 public:
  CView output(const Workspace& ws, std::size_t k) const { return ws.levels.back().task_gate[k].out.view(); }

  // d_out[k] (B,De): the gradient of task k's output, or null for a task
  // that contributes none. dx (B,in) written; parameter gradients accumulated.
  void backward(Workspace& ws, const CPtr* d_out, View dx) const {
    const char* op = "CgcLevels::backward";
    check(!levels_.empty() && !ws.levels.empty(), op, "expected forward() before backward()");
    const index_t B = ws.B, K = index_t(num_tasks());
    check(d_out != nullptr, op, "expected ", K, " output gradients (null entries allowed) but got a null array");
    check_shape(op, "dx", dx, {B, in_features()});
    // Levels last to first. The gradients of a level's gate outputs come from
    // d_out (last level) or from the next level's inputs.
    for (std::size_t l = levels_.size(); l-- > 0;) {
      const Level& lv = levels_[l];
      auto& lw = ws.levels[l];
      const bool last = l + 1 == levels_.size();
      for (index_t k = 0; k < K; ++k) {
        auto& gw = lw.task_gate[std::size_t(k)];
        gw.d_out.resize({B, de_});
        const CPtr src = last ? d_out[k] : CPtr(ws.levels[l + 1].d_task_in[std::size_t(k)].data());
        if (src == nullptr)
          gw.d_out.zero();
        else
          kernels::copy(dev(), gw.d_out.data(), src, gw.d_out.numel());
      }
      if (lv.has_shared_gate) {
        lw.shared_gate.d_out.resize({B, de_});
        kernels::copy(dev(), lw.shared_gate.d_out.data(), ws.levels[l + 1].d_shared_in.data(),
                      lw.shared_gate.d_out.numel());
      }
      for (auto& t : lw.d_expert_out) t.zero();
      for (auto& t : lw.d_task_in) t.zero();
      lw.d_shared_in.zero();
      for (std::size_t k = 0; k < lv.task_gates.size(); ++k)
        gate_backward(lv.task_gates[k], lw.task_gate[k], lw, lw.d_task_in[k].view());
      if (lv.has_shared_gate) gate_backward(lv.shared_gate, lw.shared_gate, lw, lw.d_shared_in.view());
      for (std::size_t e = 0; e < lv.experts.size(); ++e) {
        const int src = lv.expert_input[e];
        Ptr d_in = src < 0 ? lw.d_shared_in.data() : lw.d_task_in[std::size_t(src)].data();
        ws.scratch.resize({B, lv.in_dim});
        lv.experts[e].backward(lw.expert[e], lw.d_expert_out[e].view(), ws.scratch.view());
        kernels::residual_add(dev(), d_in, d_in, ws.scratch.data(), ws.scratch.numel());
      }
    }
    // Level 0 reads x for every input.
    auto& l0 = ws.levels[0];
    kernels::copy(dev(), dx.data, l0.d_shared_in.data(), dx.numel());
    for (index_t k = 0; k < K; ++k)
      kernels::residual_add(dev(), dx.data, dx.data, l0.d_task_in[std::size_t(k)].data(), dx.numel());
  }

 private:
  // A softmax gate mixing M expert outputs: out (B,De) = sum_m p_m * E_m.
  struct Gate {
    MixtureGate<T, Device> mix;  // in -> M logits, softmax, mix (layers/gate.hpp)
    std::vector<int> experts;    // indices into the level's expert list
  };
  // Experts 0..K*Et-1 are task experts (task k owns k*Et .. k*Et+Et-1), then Es shared experts.
  struct Level {
    index_t in_dim = 0;
    std::vector<MLP<T, Device>> experts;
    std::vector<Gate> task_gates;  // [k]
    bool has_shared_gate = false;
    Gate shared_gate;
    std::vector<int> expert_input;  // per expert: task k reads its task input, -1 reads the shared input
  };

  const Device& dev() const { return store_->device(); }

  void prepare(Workspace& ws, index_t B) const {
    ws.B = B;
    ws.levels.resize(levels_.size());
    for (std::size_t l = 0; l < levels_.size(); ++l) {
      const Level& lv = levels_[l];
      auto& lw = ws.levels[l];
      lw.expert.resize(lv.experts.size());
      lw.expert_out.resize(lv.experts.size());
      lw.d_expert_out.resize(lv.experts.size());
      for (std::size_t e = 0; e < lv.experts.size(); ++e) {
        lw.expert_out[e].resize({B, lv.experts[e].out_features()});
        lw.d_expert_out[e].resize({B, lv.experts[e].out_features()});
      }
      lw.task_gate.resize(lv.task_gates.size());
      lw.d_task_in.resize(lv.task_gates.size());
      for (auto& t : lw.d_task_in) t.resize({B, lv.in_dim});
      lw.d_shared_in.resize({B, lv.in_dim});
    }
  }

  void gate_forward(const Gate& g, typename Workspace::GateWs& gw, CView x, typename Workspace::LevelWs& lw,
                    const SplitInput<T, Device>* split, index_t B) const {
    const index_t M = index_t(g.experts.size());
    gw.out.resize({B, de_});
    gw.experts.resize(std::size_t(M));
    for (index_t m = 0; m < M; ++m)
      gw.experts[std::size_t(m)] = lw.expert_out[std::size_t(g.experts[std::size_t(m)])].data();
    if (split)
      g.mix.forward(gw.ctx, *split, gw.experts.data(), gw.out.view());
    else
      g.mix.forward(gw.ctx, x, gw.experts.data(), gw.out.view());
  }

  // d experts += p_m * d_out; d_in = the gate's input gradient
  void gate_backward(const Gate& g, typename Workspace::GateWs& gw, typename Workspace::LevelWs& lw, View d_in) const {
    const index_t M = index_t(g.experts.size());
    gw.d_experts.resize(std::size_t(M));
    for (index_t m = 0; m < M; ++m)
      gw.d_experts[std::size_t(m)] = lw.d_expert_out[std::size_t(g.experts[std::size_t(m)])].data();
    g.mix.backward(gw.ctx, gw.d_out.cview(), gw.d_experts.data(), d_in);
  }

  ParameterStore<T, Device>* store_ = nullptr;
  std::vector<Level> levels_;
  index_t de_ = 0;
};

}  // namespace mtrec
