// mtrec: Linear — y = x W^T + b, with W stored (out, in) as in PyTorch.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <type_traits>

#include "mtrec/kernels/cpu_bf16.hpp"
#include "mtrec/kernels/mixture.hpp"
#include "mtrec/layers/common.hpp"

namespace mtrec {

// N rows that share one part: row n of the (virtual) input X (N,F) is the
// shared row's columns in `shared_blocks` and row n of `rows` in
// `row_blocks` (every column is in exactly one block list). Ranking N
// candidates for one user: the user's fields are shared, the items' vary.
// A first layer then computes
//   y (N,H) = X W^T + b = rows_i W_i^T + (shared_u W_u^T + b)
// with the shared product once (Linear::forward_split), never X itself.
// gather() packs the two parts once; every first layer reuses them.
template <class T, class Device = Cpu>
struct SplitInput {
  using CView = DeviceView<const T, Device>;
  struct Block {
    index_t col = 0, width = 0;
  };
  std::vector<Block> shared_blocks, row_blocks;
  index_t F = 0, N = 0, Fs = 0, Fr = 0;
  Tensor<T, Device> shared, rows;  // (1,Fs), (N,Fr): the blocks, packed in order
  // Scratch of forward_split (the gathered weight columns and the shared
  // product); one SplitInput is used by one thread at a time.
  mutable Tensor<T, Device> w_shared, w_rows, y_shared;

  // shared_row (1,F) and all_rows (N,F): only the shared blocks of the first
  // and the row blocks of the second are read.
  void gather(const Device& dev, CView shared_row, CView all_rows) {
    const char* op = "SplitInput::gather";
    check_matrix(op, "shared_row", shared_row, 1, F);
    check_matrix(op, "all_rows", all_rows, -1, F);
    N = all_rows.rows();
    Fs = Fr = 0;
    for (const Block& b : shared_blocks) Fs += b.width;
    for (const Block& b : row_blocks) Fr += b.width;
    check(Fs + Fr == F, op, "the blocks cover ", Fs + Fr, " of the ", F, " columns");
    shared.resize({1, std::max<index_t>(Fs, 1)});
    rows.resize({std::max<index_t>(N, 1), std::max<index_t>(Fr, 1)});
    index_t c = 0;
    for (const Block& b : shared_blocks) {
      kernels::copy_columns(dev, shared.data(), Fs, c, shared_row.data, F, b.col, 1, b.width);
      c += b.width;
    }
    c = 0;
    for (const Block& b : row_blocks) {
      kernels::copy_columns(dev, rows.data(), Fr, c, all_rows.data, F, b.col, N, b.width);
      c += b.width;
    }
  }
};

namespace detail {
// A Linear's weight in bf16, packed for the forward (W^T) and the backward
// (W) products, each rebuilt when the store's generation moves (after an
// optimizer step, a checkpoint load). Shared by the threads that predict
// concurrently: the first to see a new generation packs under the lock.
struct Bf16WeightCache {
  struct Slot {
    kernels::Bf16PackedB packed;
    std::uint64_t generation = ~std::uint64_t(0);
    const void* source = nullptr;
  };
  std::mutex mu;
  Slot slots[2];  // 0: W^T (in,out) for y = x W^T; 1: W (out,in) for dx = dy W

  template <class Pack>
  const kernels::Bf16PackedB& get(int slot, std::uint64_t generation, const void* source, Pack pack) {
    std::lock_guard<std::mutex> lock(mu);
    Slot& s = slots[slot];
    if (s.generation != generation || s.source != source) {
      pack(s.packed);
      s.generation = generation;
      s.source = source;
    }
    return s.packed;
  }
};
}  // namespace detail

// With the store's precision BF16 (ModelConfig::precision), y = x W^T and
// dx = dy W run as bf16 GEMMs with fp32 accumulation (kernels/cpu_bf16.hpp),
// as torch.autocast does on the CPU: the weight is packed to bf16 once per
// store generation (once per optimizer step, in both layouts), and x and dy
// are converted as they are packed; the bias is added in the kernel's store.
// The weight gradient dW += dy^T x is a bf16 product too, both operands
// converted per call, its K (the batch's rows) in blocks. Only on the host
// device in float, only where the CPU has a bf16 unit, and only for layers
// of at least 16 in and out (bf16_products()); otherwise every product
// stays fp32.
template <class T, class Device = Cpu>
class Linear {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  struct Context {
    CView x;  // (N, in): the forward input
  };

  Linear() = default;
  Linear(ParameterStore<T, Device>& store, const std::string& name, index_t in, index_t out, bool bias = true)
      : store_(&store), in_(in), out_(out) {
    check(in > 0 && out > 0, "Linear", "'", name, "' expected positive sizes but got in=", in, " out=", out);
    weight_ = store.add(name + ".weight", {out, in}, linear_init(in));
    if (bias) bias_ = store.add(name + ".bias", {out}, linear_init(in));
  }

  // y (N,out) = x (N,in) W^T + b; x and y may have any leading shape.
  void forward(Context& ctx, CView x, View y) const {
    check_matrix("Linear::forward", "x", x, -1, in_);
    check_matrix("Linear::forward", "y", y, x.rows(), out_);
    ctx.x = x;
    forward_impl(x.data, y.data, x.rows());
  }

  // dx (N,in) = dy W  (skipped if dx is empty);  dW += dy^T x;  db += sum_n dy
  void backward(const Context& ctx, CView dy, View dx) const {
    check_matrix("Linear::backward", "dy", dy, ctx.x.rows(), out_);
    if (!dx.empty()) check_matrix("Linear::backward", "dx", dx, ctx.x.rows(), in_);
    backward_impl(ctx.x.data, dy.data, dx.empty() ? nullptr : dx.data, ctx.x.rows());
  }

  // The path this layer's products take now: fp32, or a bf16 unit.
  kernels::Bf16Path matmul_path() const {
    if constexpr (std::is_same<T, float>::value && std::is_same<Device, Cpu>::value) {
      if (store_ != nullptr && store_->precision() == Precision::BF16) return kernels::bf16_default_path();
    }
    return kernels::Bf16Path::fp32;
  }

  // Unchecked forms for composite layers that already validated shapes.
  void forward_impl(CPtr x, Ptr y, index_t n) const {
    CPtr w = store_->value(weight_);
    if constexpr (std::is_same<T, float>::value && std::is_same<Device, Cpu>::value) {
      const kernels::Bf16Path path = matmul_path();
      if (bf16_products() && n > 0) {
        const kernels::Bf16PackedB& wt = cache_->get(0, store_->generation(), w, [&](kernels::Bf16PackedB& p) {
          kernels::bf16_pack_b(p, kernels::Trans::T, in_, out_, w, in_);
        });
        // the bias is added in the kernel's store: no second pass over y
        kernels::bf16_gemm_packed(path, kernels::Trans::N, n, out_, in_, 1.f, x, in_, wt, 0.f, y, out_,
                                  bias_ >= 0 ? store_->value(bias_) : nullptr);
        return;
      }
    }
    kernels::gemm(dev(), kernels::Trans::N, kernels::Trans::T, n, out_, in_, T(1), x, in_, w, in_, T(0),
                  y, out_);
    if (bias_ >= 0) kernels::bias_add(dev(), y, store_->value(bias_), n, out_);
  }
  // y (N,out) = X W^T + b for the split input X (see SplitInput): the
  // weight's columns gathered into the shared and the per-row parts, the
  // shared row's product (plus b) computed once and added to every row.
  void forward_split(const SplitInput<T, Device>& x, Ptr y) const {
    check(x.F == in_, "Linear::forward_split", "expected a split input of ", in_, " columns but got ", x.F);
    const Device& d = dev();
    CPtr w = store_->value(weight_);
    const index_t n = x.N;
    x.y_shared.resize({1, out_});
    if (x.Fs > 0) {
      x.w_shared.resize({out_, x.Fs});
      index_t c = 0;
      for (const auto& b : x.shared_blocks) {
        kernels::copy_columns(d, x.w_shared.data(), x.Fs, c, w, in_, b.col, out_, b.width);
        c += b.width;
      }
      matmul_nt(1, out_, x.Fs, x.shared.data(), x.w_shared.data(), x.y_shared.data());
    } else {
      x.y_shared.zero();
    }
    if (bias_ >= 0) kernels::bias_add(d, x.y_shared.data(), store_->value(bias_), 1, out_);
    if (x.Fr > 0) {
      x.w_rows.resize({out_, x.Fr});
      index_t c = 0;
      for (const auto& b : x.row_blocks) {
        kernels::copy_columns(d, x.w_rows.data(), x.Fr, c, w, in_, b.col, out_, b.width);
        c += b.width;
      }
      matmul_nt(n, out_, x.Fr, x.rows.data(), x.w_rows.data(), y);
    } else {
      kernels::fill(d, y, n * out_, T(0));
    }
    kernels::bias_add(d, y, x.y_shared.data(), n, out_);  // + (shared W_s^T + b), broadcast
  }
  void backward_impl(CPtr x, CPtr dy, Ptr dx, index_t n) const {
    CPtr w = store_->value(weight_);
    if constexpr (std::is_same<T, float>::value && std::is_same<Device, Cpu>::value) {
      const kernels::Bf16Path path = matmul_path();
      if (bf16_products() && n > 0) {
        if (dx) {
          const kernels::Bf16PackedB& wp = cache_->get(1, store_->generation(), w, [&](kernels::Bf16PackedB& p) {
            kernels::bf16_pack_b(p, kernels::Trans::N, out_, in_, w, in_);
          });
          kernels::bf16_gemm_packed(path, kernels::Trans::N, n, in_, out_, 1.f, dy, out_, wp, 0.f, dx, in_);
        }
        // dW += dy^T x: both operands converted per call; over the batch's
        // rows in K blocks (kernels::bf16_gemm)
        kernels::bf16_gemm(path, kernels::Trans::T, kernels::Trans::N, out_, in_, n, 1.f, dy, out_, x, in_, 1.f,
                           store_->grad(weight_), in_);
        if (bias_ >= 0) kernels::column_sum_add(dev(), store_->grad(bias_), dy, n, out_);
        return;
      }
    }
    if (dx) kernels::gemm(dev(), kernels::Trans::N, kernels::Trans::N, n, in_, out_, T(1), dy, out_, w, in_, T(0), dx, in_);
    kernels::gemm(dev(), kernels::Trans::T, kernels::Trans::N, out_, in_, n, T(1), dy, out_, x, in_, T(1),
                  store_->grad(weight_), in_);
    if (bias_ >= 0) kernels::column_sum_add(dev(), store_->grad(bias_), dy, n, out_);
  }

  // Whether this layer's products run in bf16 now: matmul_path() is a bf16
  // unit and both sizes are at least 16. A narrower product fills the
  // kernels' 16-column panels or 32-long K blocks mostly with zeros (AMD EPYC
  // Zen 5, 2 threads: the 64->1 tower output's dW took 7 us in bf16 against
  // 1 us in fp32), so gates and output layers stay fp32.
  bool bf16_products() const {
    return matmul_path() != kernels::Bf16Path::fp32 && in_ >= kBf16MinSize && out_ >= kBf16MinSize;
  }
  static constexpr index_t kBf16MinSize = 16;

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  ParamId weight() const { return weight_; }
  ParamId bias() const { return bias_; }  // -1 without bias

  const Device& dev() const { return store_->device(); }

 private:
  // y (n,out) = a (n,k) b^T, b (out,k): a product of gathered operands, in
  // this layer's precision (packed per call: b changes with every split).
  void matmul_nt(index_t n, index_t out, index_t k, CPtr a, CPtr b, Ptr y) const {
    if constexpr (std::is_same<T, float>::value && std::is_same<Device, Cpu>::value) {
      const kernels::Bf16Path path = matmul_path();
      if (bf16_products()) {
        kernels::bf16_gemm(path, kernels::Trans::N, kernels::Trans::T, n, out, k, 1.f, a, k, b, k, 0.f, y, out);
        return;
      }
    }
    kernels::gemm(dev(), kernels::Trans::N, kernels::Trans::T, n, out, k, T(1), a, k, b, k, T(0), y, out);
  }

  ParameterStore<T, Device>* store_ = nullptr;
  std::shared_ptr<detail::Bf16WeightCache> cache_ = std::make_shared<detail::Bf16WeightCache>();
  index_t in_ = 0, out_ = 0;
  ParamId weight_ = -1, bias_ = -1;
};

}  // namespace mtrec
