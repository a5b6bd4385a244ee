// mtrec: masked sequence pooling — mean over valid positions, or the first token.
#pragma once

#include <cstring>

#include "mtrec/layers/common.hpp"

namespace mtrec {

enum class SequencePoolMode { Mean, First };

template <class T>
class SequencePooling {
 public:
  struct Context {
    ConstView<index_t> lengths;
    index_t B = 0, T_len = 0, D = 0;
  };

  explicit SequencePooling(SequencePoolMode mode = SequencePoolMode::Mean) : mode_(mode) {}

  // y (B,D) = mean of x[b, :lengths[b]] (Mean) or x[b, 0] (First); zeros when lengths[b] == 0
  void forward(Context& ctx, ConstView<T> x, ConstView<index_t> lengths, TensorView<T> y) const {
    const char* op = "SequencePooling::forward";
    check(x.rank() == 3, op, "x expected shape (B, T, D) but got ", x.shape);
    const index_t B = x.dim(0), Tl = x.dim(1), D = x.dim(2);
    check_lengths(op, lengths, B, Tl);
    check_shape(op, "y", y, {B, D});
    ctx = {lengths, B, Tl, D};
    parallel_for(B, double(Tl * D), [&](index_t b) {
      T* yb = y.data + b * D;
      std::memset(yb, 0, sizeof(T) * static_cast<std::size_t>(D));
      const index_t len = lengths[b];
      if (len == 0) return;
      const T* xb = x.data + b * Tl * D;
      if (mode_ == SequencePoolMode::First) {
        std::memcpy(yb, xb, sizeof(T) * static_cast<std::size_t>(D));
        return;
      }
      for (index_t t = 0; t < len; ++t)
        for (index_t c = 0; c < D; ++c) yb[c] += xb[t * D + c];
      const T inv = T(1) / T(len);
      for (index_t c = 0; c < D; ++c) yb[c] *= inv;
    });
  }

  // dx (B,T,D) written: dy / len on valid positions (Mean) or dy at t = 0 (First), zero elsewhere
  void backward(const Context& ctx, ConstView<T> dy, TensorView<T> dx) const {
    const char* op = "SequencePooling::backward";
    check_shape(op, "dy", dy, {ctx.B, ctx.D});
    check_shape(op, "dx", dx, {ctx.B, ctx.T_len, ctx.D});
    const index_t Tl = ctx.T_len, D = ctx.D;
    parallel_for(ctx.B, double(Tl * D), [&](index_t b) {
      T* xb = dx.data + b * Tl * D;
      std::memset(xb, 0, sizeof(T) * static_cast<std::size_t>(Tl * D));
      const index_t len = ctx.lengths[b];
      if (len == 0) return;
      const T* g = dy.data + b * D;
      const index_t valid = mode_ == SequencePoolMode::First ? 1 : len;
      const T scale = mode_ == SequencePoolMode::First ? T(1) : T(1) / T(len);
      for (index_t t = 0; t < valid; ++t)
        for (index_t c = 0; c < D; ++c) xb[t * D + c] = g[c] * scale;
    });
  }

  SequencePoolMode mode() const { return mode_; }

 private:
  SequencePoolMode mode_;
};

}  // namespace mtrec
