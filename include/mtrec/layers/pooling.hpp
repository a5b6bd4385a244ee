// mtrec: masked sequence pooling — mean over valid positions, or the first token.
#pragma once

#include "mtrec/kernels/sequence.hpp"
#include "mtrec/layers/common.hpp"

namespace mtrec {

enum class SequencePoolMode { Mean, First };

template <class T, class Device = Cpu>
class SequencePooling {
 public:
  using View = DeviceView<T, Device>;
  using CView = DeviceView<const T, Device>;
  using Ptr = typename View::pointer;    // T* on the host, DevicePtr on a device
  using CPtr = typename CView::pointer;
  using IdView = TensorView<const index_t, typename Device::memory>;  // lengths, starts: where kernels read them
  struct Context {
    IdView lengths;
    index_t B = 0, T_len = 0, D = 0;
    Tensor<index_t, Device> lengths_buf;  // device copy of the lengths, on a device without host access
  };

  explicit SequencePooling(SequencePoolMode mode = SequencePoolMode::Mean) : mode_(mode) {}

  // y (B,D) = mean of x[b, :lengths[b]] (Mean) or x[b, 0] (First); zeros when lengths[b] == 0
  void forward(Context& ctx, CView x, ConstView<index_t> host_lengths, View y,
               const StagedInputs<Device>* staged = nullptr) const {
    const char* op = "SequencePooling::forward";
    check(x.rank() == 3, op, "x expected shape (B, T, D) but got ", x.shape);
    const index_t B = x.dim(0), Tl = x.dim(1), D = x.dim(2);
    check_lengths(op, host_lengths, B, Tl);
    const IdView lengths = device_input(ctx.lengths_buf, host_lengths, staged);
    check_shape(op, "y", y, {B, D});
    ctx.lengths = lengths;
    ctx.B = B;
    ctx.T_len = Tl;
    ctx.D = D;
    kernels::sequence_pool_forward(dev(), y.data, x.data, lengths.data, B, Tl, D,
                                   mode_ == SequencePoolMode::First);
  }

  // dx (B,T,D) written: dy / len on valid positions (Mean) or dy at t = 0 (First), zero elsewhere
  void backward(const Context& ctx, CView dy, View dx) const {
    const char* op = "SequencePooling::backward";
    check_shape(op, "dy", dy, {ctx.B, ctx.D});
    check_shape(op, "dx", dx, {ctx.B, ctx.T_len, ctx.D});
    kernels::sequence_pool_backward(dev(), dx.data, dy.data, ctx.lengths.data, ctx.B, ctx.T_len, ctx.D,
                                    mode_ == SequencePoolMode::First);
  }

  SequencePoolMode mode() const { return mode_; }

  const Device& dev() const { return dev_; }

 private:
  Device dev_{};
  SequencePoolMode mode_;
};

}  // namespace mtrec
