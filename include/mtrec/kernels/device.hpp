// mtrec: device tags — the one seam between layers and kernels.
//
// Every kernel is a free function whose first argument is a device tag:
//
//   kernels::gelu_forward(kernels::cpu, y, x, n);        // xsimd + OpenMP
//   kernels::gelu_forward(kernels::reference, y, x, n);  // plain scalar loops
//
// Overload resolution picks the implementation at compile time; there is no
// runtime if-ladder. Layers call kernels with `backend{}`, the device chosen
// when the program is compiled. A CUDA backend adds `cuda_t` overloads in
// kernels/cuda.hpp and flips `backend` when MTREC_WITH_CUDA is 1; nothing
// else in the library changes.
#pragma once

#include "mtrec/core/config.hpp"

namespace mtrec {
namespace kernels {

struct reference_t {};  // scalar loops, the ground truth for tests
struct cpu_t {};        // xsimd vectors + OpenMP over rows
struct cuda_t {};       // reserved: MTREC_WITH_CUDA (not implemented yet)

constexpr reference_t reference{};
constexpr cpu_t cpu{};

#if MTREC_WITH_CUDA
#error "MTREC_WITH_CUDA is reserved: the CUDA backend is not implemented yet. Configure with -DMTREC_WITH_CUDA=OFF."
#else
using backend = cpu_t;
#endif

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
