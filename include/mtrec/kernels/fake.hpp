// mtrec: kernels on the Fake device (core/device.hpp).
//
// Each kernel on Fake holds the arena guard (the arena is readable only
// while a kernel or copy runs) and runs the reference code. One line per
// kernel name below: a kernel added to the reference backend needs its name
// here too, or calling it on Fake does not compile.
#pragma once

#include <type_traits>
#include <utility>

#include "mtrec/core/device.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/embedding.hpp"
#include "mtrec/kernels/loss.hpp"
#include "mtrec/kernels/mixture.hpp"
#include "mtrec/kernels/reference.hpp"
#include "mtrec/kernels/retrieval.hpp"
#include "mtrec/kernels/rows.hpp"
#include "mtrec/kernels/sequence.hpp"

namespace mtrec {
namespace kernels {

namespace detail {
// One argument of a Fake kernel, as the reference kernel takes it:
// - a DevicePtr of Fake memory is checked to point into the arena, then opened;
// - a plain pointer to numbers does not compile: it is host memory, which a
//   device kernel cannot read (on a GPU it would fault);
// - anything else (sizes, scalars, enums, launch descriptors) passes unchanged.
template <class A>
inline decltype(auto) fake_arg(const char* kernel, A&& a) {
  using U = std::decay_t<A>;
  static_assert(!is_foreign_device_ptr<U, FakeMemory>,
                "a pointer into another device's memory was passed to a Fake-device kernel");
  static_assert(!is_host_number_pointer<U>,
                "a host pointer was passed to a Fake-device kernel: pass device memory (a Tensor or view of "
                "the device; to_device() copies host data there)");
  if constexpr (is_device_ptr<U>::value)
    if (a.get() != nullptr) Fake::in_arena(kernel, "a device pointer argument", a.get());
  return open_device_arg(std::forward<A>(a));
}
}  // namespace detail

// FakeDispatch: the same forwarding on host buffers, without the pointer
// typing. Only the op table uses it (tests/ops), to check that every kernel
// has its Fake line and gives the reference results on the table's host
// buffers; the model and layer suites run on Fake itself.
struct FakeDispatch : mtrec::detail::HostDevice {
  static const char* name() { return "fake"; }
};

#define MTREC_FAKE_KERNEL(name)                                              \
  template <class... A>                                                      \
  inline decltype(auto) name(const Fake&, A&&... a) {                        \
    FakeGuard guard;                                                         \
    return name(reference, detail::fake_arg(#name, std::forward<A>(a))...);  \
  }                                                                          \
  template <class... A>                                                      \
  inline decltype(auto) name(const FakeDispatch&, A&&... a) {                \
    FakeGuard guard;                                                         \
    return name(reference, std::forward<A>(a)...);                           \
  }

// dense (reference.hpp)
MTREC_FAKE_KERNEL(gemm)
MTREC_FAKE_KERNEL(bias_add)
MTREC_FAKE_KERNEL(column_sum_add)
MTREC_FAKE_KERNEL(relu_forward)
MTREC_FAKE_KERNEL(relu_backward)
MTREC_FAKE_KERNEL(gelu_forward)
MTREC_FAKE_KERNEL(gelu_backward)
MTREC_FAKE_KERNEL(sigmoid_forward)
MTREC_FAKE_KERNEL(sigmoid_backward)
MTREC_FAKE_KERNEL(softmax_forward)
MTREC_FAKE_KERNEL(softmax_backward)
MTREC_FAKE_KERNEL(layernorm_forward)
MTREC_FAKE_KERNEL(layernorm_backward)
MTREC_FAKE_KERNEL(dropout_forward)
MTREC_FAKE_KERNEL(dropout_backward)
MTREC_FAKE_KERNEL(residual_add)
MTREC_FAKE_KERNEL(axpy)
MTREC_FAKE_KERNEL(scale)
MTREC_FAKE_KERNEL(copy)
MTREC_FAKE_KERNEL(fill)
MTREC_FAKE_KERNEL(sum_squares)
MTREC_FAKE_KERNEL(all_finite)
MTREC_FAKE_KERNEL(adam_update)
MTREC_FAKE_KERNEL(sgd_update)
// embedding.hpp
MTREC_FAKE_KERNEL(gather_rows)
MTREC_FAKE_KERNEL(scatter_add_rows)
MTREC_FAKE_KERNEL(embedding_bag_forward)
MTREC_FAKE_KERNEL(embedding_bag_backward)
MTREC_FAKE_KERNEL(embedding_bag_backward_adam)
// retrieval (retrieval.hpp)
MTREC_FAKE_KERNEL(topk_inner_product)
// sequence.hpp
MTREC_FAKE_KERNEL(packed_starts)
MTREC_FAKE_KERNEL(padded_starts)
MTREC_FAKE_KERNEL(sequence_pool_forward)
MTREC_FAKE_KERNEL(sequence_pool_backward)
MTREC_FAKE_KERNEL(pack_sequences)
MTREC_FAKE_KERNEL(unpack_sequences)
MTREC_FAKE_KERNEL(mask_padded_rows)
MTREC_FAKE_KERNEL(padded_rows_are_zero)
MTREC_FAKE_KERNEL(positional_add)
MTREC_FAKE_KERNEL(positional_add_backward)
MTREC_FAKE_KERNEL(gemm_strided_batched)
MTREC_FAKE_KERNEL(attention_forward)
MTREC_FAKE_KERNEL(attention_backward)
// loss.hpp
MTREC_FAKE_KERNEL(bce_with_logits_loss)
MTREC_FAKE_KERNEL(mse_loss)
MTREC_FAKE_KERNEL(huber_loss)
MTREC_FAKE_KERNEL(softmax_cross_entropy_loss)
MTREC_FAKE_KERNEL(bpr_loss)
MTREC_FAKE_KERNEL(in_batch_softmax_rows)
MTREC_FAKE_KERNEL(esmm_loss)
MTREC_FAKE_KERNEL(output_transform)
MTREC_FAKE_KERNEL(sigmoid_product)
// mixture.hpp
MTREC_FAKE_KERNEL(gate_mix_forward)
MTREC_FAKE_KERNEL(gate_mix_backward)
MTREC_FAKE_KERNEL(copy_columns)
// rows.hpp
MTREC_FAKE_KERNEL(adam_update_rows)
MTREC_FAKE_KERNEL(sgd_update_rows)
MTREC_FAKE_KERNEL(sum_squares_rows)
MTREC_FAKE_KERNEL(scale_rows)
MTREC_FAKE_KERNEL(fill_rows)
MTREC_FAKE_KERNEL(all_finite_rows)

#undef MTREC_FAKE_KERNEL

}  // namespace kernels
}  // namespace mtrec
