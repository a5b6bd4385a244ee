// Host code that would fault on a GPU must not compile on the Fake device.
// tests/CMakeLists.txt compiles this file once per MTREC_CASE and expects the
// compiler to fail with the message named there.
#include <mtrec/core/tensor.hpp>
#include <mtrec/kernels/fake.hpp>

int main() {
  using namespace mtrec;
  Tensor<float, Fake> x(Shape{4}), y(Shape{4});
  float host[4] = {1, 2, 3, 4};
#if MTREC_CASE == 1
  // a host pointer passed to a device kernel
  kernels::scale(Fake{}, y.data(), host, 4, 2.0f);
#elif MTREC_CASE == 2
  // device memory read with operator[]
  return int(x.view()[0]);
#elif MTREC_CASE == 3
  // a host index array passed to a device kernel
  const index_t ids[2] = {0, 1};
  kernels::gather_rows(Fake{}, y.data(), x.data(), ids, 2, 1);
#else
  // the control: the same calls on device memory compile
  kernels::scale(Fake{}, y.data(), x.data(), 4, 2.0f);
  to_device(x.device(), x.view(), host);
#endif
  return 0;
}
