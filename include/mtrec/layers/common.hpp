// mtrec: what every layer shares — the run mode and argument checks.
//
// Conventions for every layer in include/mtrec/layers/:
//  * forward(ctx, inputs..., outputs...) checks its arguments, then computes.
//    It is const: layers hold only configuration and parameter ids, so one
//    layer can run forward in many threads, each with its own Context.
//  * The Context keeps what backward needs: views of the forward's inputs and
//    outputs (keep those buffers unchanged until backward) and buffers the
//    layer owns. Buffers grow on first use and are reused afterwards, so a
//    steady-state step does not allocate.
//  * backward(ctx, d_outputs..., d_inputs...) WRITES input gradients (an
//    empty view skips one) and ADDS parameter gradients into the store.
//  * Index inputs (IDs, offsets, lengths) are host views: the layer checks
//    them on the host, then reads their device copy from the optional
//    StagedInputs argument (a batch uploaded in one copy), or uploads them
//    into its Context on a device without host access.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "mtrec/core/error.hpp"
#include "mtrec/core/parameters.hpp"
#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cuda.hpp"
#include "mtrec/kernels/fake.hpp"
#include "mtrec/kernels/device.hpp"

namespace mtrec {

// Training or evaluation, and the counters that make dropout reproducible:
// the mask of a dropout layer is a function of (seed, layer, step) only.
struct Mode {
  bool training = false;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;

  static Mode eval() { return {}; }
  static Mode train(std::uint64_t step, std::uint64_t seed = 0) { return {true, seed, step}; }
};

enum class Activation { Identity, ReLU, GELU, GELUTanh, Sigmoid };

inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::Identity: return "identity";
    case Activation::ReLU: return "relu";
    case Activation::GELU: return "gelu";
    case Activation::GELUTanh: return "gelu_tanh";
    case Activation::Sigmoid: return "sigmoid";
  }
  return "?";
}

// v viewed as a matrix must be (rows, cols); rows < 0 accepts any row count.
template <class T, class M>
inline void check_matrix(const char* op, const char* name, const TensorView<T, M>& v, index_t rows, index_t cols) {
  const bool ok = v.rank() >= 1 && v.cols() == cols && (rows < 0 || v.rows() == rows);
  if (!ok) {
    if (rows < 0)
      fail(op, name, " expected last dimension ", cols, " but got shape ", v.shape);
    else
      fail(op, name, " expected ", rows, " rows of ", cols, " (any leading shape) but got shape ", v.shape);
  }
  if (v.numel() > 0 && v.data == nullptr) fail(op, name, " has shape ", v.shape, " but no data");
}

// A host array that kernels of Device read (IDs, offsets, lengths, weights):
// the array itself on a device that reads host memory, else its copy
// uploaded into `buf` (grows once, then reused: no allocation when warm).
template <class T, class Device>
inline TensorView<const T, typename Device::memory> device_input(Tensor<T, Device>& buf, ConstView<T> host) {
  if constexpr (host_readable_v<Device>) {
    (void)buf;
    return host;
  } else {
    buf.resize(host.shape);
    if (host.numel() > 0) buf.device().upload(raw(buf.data()), host.data, buf.bytes());
    return buf.cview();
  }
}

// The host arrays of one batch (IDs, offsets, lengths, weights, labels) that
// kernels read, copied to the device in ONE upload. On a device that reads
// host memory it copies nothing: find() hands back the host array itself.
//   stage.clear();  stage.add(ids); stage.add(lengths); ...;  stage.upload(dev);
//   layer.forward(ctx, ids, y, &stage);  // device_input finds the staged copy
// The arrays must stay unchanged until the last kernel that reads them. The
// packing buffers grow on first use and are reused: no allocation when warm.
template <class Device>
class StagedInputs {
 public:
  using memory = typename Device::memory;

  void clear() {
    slots_.clear();
    bytes_ = 0;
    uploaded_ = false;
  }
  // Registers n elements at host (an array already registered is kept once).
  template <class U>
  void add(const U* host, index_t n) {
    if (host == nullptr || n <= 0 || host_readable_v<Device> || find_slot(host, sizeof(U) * std::size_t(n))) return;
    check(!uploaded_, "StagedInputs::add", "expected add() before upload(); call clear() for a new batch");
    slots_.push_back({host, bytes_, sizeof(U) * std::size_t(n)});
    bytes_ += (sizeof(U) * std::size_t(n) + detail::kAlignment - 1) / detail::kAlignment * detail::kAlignment;
  }
  template <class U>
  void add(ConstView<U> host) {
    add(host.data, host.numel());
  }
  // Packs every registered array into one host buffer and uploads it in one copy.
  void upload(const Device& dev) {
    uploaded_ = true;
    if (host_readable_v<Device> || bytes_ == 0) return;
    if (host_.size() < bytes_) host_.resize(bytes_);
    for (const Slot& s : slots_) std::memcpy(host_.data() + s.offset, s.host, s.bytes);
    dev_.resize({index_t(bytes_)});
    dev.upload(raw(dev_.data()), host_.data(), bytes_);
    ++uploads_;
  }
  // The device copy of the n elements at host, or null if they were not
  // staged (or not yet uploaded). On a host-readable device: host itself.
  template <class U>
  pointer_t<const U, memory> find(const U* host, index_t n) const {
    if constexpr (host_readable_v<Device>) {
      (void)n;
      return host;
    } else {
      if (!uploaded_ || host == nullptr) return nullptr;
      const Slot* s = find_slot(host, sizeof(U) * std::size_t(std::max<index_t>(n, 0)));
      if (s == nullptr) return nullptr;
      return as_pointer<memory>(reinterpret_cast<const U*>(raw(dev_.data()) + s->offset));
    }
  }
  // find() as a view, for an array that must have been staged: a non-empty
  // one that was not is an error (every array a kernel reads is staged).
  template <class U>
  TensorView<const U, memory> view(ConstView<U> host) const {
    if constexpr (host_readable_v<Device>) {
      return host;
    } else {
      if (host.numel() == 0) return TensorView<const U, memory>(nullptr, host.shape);
      const pointer_t<const U, memory> p = find(host.data, host.numel());
      check(p != nullptr, "StagedInputs::view", "expected an array of ", host.numel(),
            " elements staged before upload() but it was not");
      return TensorView<const U, memory>(p, host.shape);
    }
  }
  std::size_t arrays() const { return slots_.size(); }
  std::size_t bytes() const { return bytes_; }
  std::uint64_t uploads() const { return uploads_; }  // copies made so far (tests count them)

 private:
  struct Slot {
    const void* host;
    std::size_t offset, bytes;
  };
  const Slot* find_slot(const void* host, std::size_t bytes) const {
    for (const Slot& s : slots_)
      if (s.host == host && bytes <= s.bytes) return &s;
    return nullptr;
  }
  std::vector<Slot> slots_;
  std::size_t bytes_ = 0;
  bool uploaded_ = false;
  std::uint64_t uploads_ = 0;
  std::vector<unsigned char> host_;
  Tensor<std::uint8_t, Device> dev_;  // the device copy
};

// device_input, reading the staged copy when `staged` holds one.
template <class T, class Device>
inline TensorView<const T, typename Device::memory> device_input(Tensor<T, Device>& buf, ConstView<T> host,
                                                                 const StagedInputs<Device>* staged) {
  if constexpr (!host_readable_v<Device>) {
    if (staged != nullptr)
      if (auto p = staged->find(host.data, host.numel())) return TensorView<const T, typename Device::memory>(p, host.shape);
  }
  return device_input(buf, host);
}

// Sequence lengths (B) must lie in [0, T].
inline void check_lengths(const char* op, ConstView<index_t> lengths, index_t B, index_t T) {
  check_shape(op, "lengths", lengths, {B});
  for (index_t b = 0; b < B; ++b)
    if (lengths[b] < 0 || lengths[b] > T)
      fail(op, "lengths[", b, "] expected in [0, ", T, "] but got ", lengths[b]);
}

// Throws if any value is NaN or infinite.
template <class T>
inline void check_finite(const char* op, const char* name, ConstView<T> v) {
  for (index_t i = 0; i < v.numel(); ++i)
    if (!std::isfinite(v[i])) fail(op, name, "[", i, "] expected a finite value but got ", v[i]);
}

// check_finite on device memory: one all_finite kernel, and the first bad
// index only when the memory is host-readable.
template <class Device, class T, class M>
inline void check_finite(const Device& dev, const char* op, const char* name, TensorView<const T, M> v) {
  if constexpr (M::host_readable) {
    check_finite(op, name, ConstView<T>(v.data, v.shape));
  } else {
    if (!kernels::all_finite(dev, v.data, v.numel()))
      fail(op, name, " expected finite values but holds a NaN or an infinity");
  }
}

// Kaiming-uniform bound of PyTorch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
inline Init linear_init(index_t fan_in) {
  const double b = 1.0 / std::sqrt(double(std::max<index_t>(fan_in, 1)));
  return Init::uniform(-b, b);
}

}  // namespace mtrec
