// mtrec: the devices as kernels see them.
//
// Every kernel is a free function whose first argument is the device it runs
// on (core/device.hpp):
//
//   kernels::gelu_forward(dev, y, x, n);   // dev: Cpu -> xsimd + OpenMP (cpu.hpp)
//                                          //      Reference -> scalar loops (reference.hpp)
//                                          //      Fake -> reference loops inside the arena guard (fake.hpp)
//
// Overload resolution picks the implementation at compile time; there is no
// runtime if-ladder. Layers and models are templates on the device type and
// pass the device object they were built with; nothing below chooses one.
//                                          //      Cuda -> CUDA kernels and cuBLAS (kernels/cuda/, nvcc only)
#pragma once

#include "mtrec/core/config.hpp"
#include "mtrec/core/device.hpp"

namespace mtrec {
namespace kernels {

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
