// mtrec: the devices as kernels see them.
//
// Every kernel is a free function whose first argument is the device it runs
// on (core/device.hpp):
//
//   kernels::gelu_forward(dev, y, x, n);   // dev: Cpu -> xsimd + OpenMP (cpu.hpp)
//                                          //      Reference -> scalar loops (reference.hpp)
//                                          //      Fake -> reference loops inside the arena guard (fake.hpp)
//                                          //      Cuda -> CUDA kernels and cuBLAS (kernels/cuda/, nvcc only)
//
// Overload resolution picks the implementation at compile time; there is no
// runtime if-ladder. Layers and models are templates on the device type and
// pass the device object they were built with; nothing below chooses one.
#pragma once

#include <type_traits>
#include <utility>

#include "mtrec/core/config.hpp"
#include "mtrec/core/device.hpp"

namespace mtrec {
namespace kernels {

namespace detail {
// One argument of a kernel call on a device with memory of its own (Fake,
// Cuda), as the implementation takes it: a DevicePtr<T, Memory> opened to its
// address, an array of them reinterpreted as an array of addresses, anything
// else unchanged. The wrappers (fake_arg, cuda_arg) refuse at compile time,
// each with its own message, what is_foreign_device_ptr and
// is_host_number_pointer name.
template <class U, class Memory>
constexpr bool is_foreign_device_ptr = [] {
  if constexpr (is_device_ptr<U>::value)
    return !std::is_same<typename U::memory, Memory>::value;
  else
    return false;
}();
template <class U>
constexpr bool is_host_number_pointer =
    std::is_pointer<U>::value && std::is_arithmetic<std::remove_cv_t<std::remove_pointer_t<U>>>::value;

template <class A>
inline decltype(auto) open_device_arg(A&& a) {
  using U = std::decay_t<A>;
  if constexpr (is_device_ptr<U>::value) {
    return a.get();
  } else if constexpr (std::is_pointer<U>::value &&
                       is_device_ptr<std::remove_cv_t<std::remove_pointer_t<U>>>::value) {
    using P = std::remove_cv_t<std::remove_pointer_t<U>>;  // an array of device pointers (a gate's experts)
    using E = typename P::element_type;
    static_assert(sizeof(P) == sizeof(E*) && std::is_standard_layout<P>::value, "DevicePtr is one address");
    return reinterpret_cast<E* const*>(a);
  } else {
    return std::forward<A>(a);
  }
}
}  // namespace detail

using reference_t = Reference;  // scalar loops, the ground truth for tests
using cpu_t = Cpu;              // xsimd vectors + OpenMP over rows

constexpr Reference reference{};
constexpr Cpu cpu{};

enum class Trans { N, T };  // GEMM operand as stored (N) or transposed (T)

enum class GeluMode {
  Erf,   // 0.5 x (1 + erf(x / sqrt 2)): PyTorch's default
  Tanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): approximate="tanh"
};

// Hyper-parameters of one Adam/AdamW step, bias corrections precomputed.
template <class T>
struct AdamStep {
  T lr = T(1e-3);
  T beta1 = T(0.9);
  T beta2 = T(0.999);
  T eps = T(1e-8);
  T weight_decay = T(0);
  bool decoupled = false;  // true: AdamW (w -= lr * wd * w); false: L2 added to the gradient
  T bias_correction1 = T(1);  // 1 - beta1^t
  T bias_correction2 = T(1);  // 1 - beta2^t
};

}  // namespace kernels
}  // namespace mtrec
