// A downstream CUDA program built by nvcc against single_include/mtrec/mtrec.hpp
// alone (tests/CMakeLists.txt, MTREC_WITH_CUDA=ON): one Linear layer on the
// Cuda device with weights set by hand, checked against values computed on
// paper. Without a GPU it prints the skip line ctest looks for and exits 0.
#include <mtrec/mtrec.hpp>

#include <cmath>
#include <cstdio>

#if !MTREC_HAS_CUDA
#error "the single header did not bring the CUDA backend under nvcc with MTREC_WITH_CUDA=1"
#endif

int main() {
  using namespace mtrec;
  if (!mtrec::cuda::available()) {
    std::printf("mtrec-cuda: skipped: no CUDA device (%s)\n", mtrec::cuda::unavailable_reason().c_str());
    return 0;
  }
  ParameterStore<float, Cuda> store(7);
  Linear<float, Cuda> lin(store, "fc", /*in=*/3, /*out=*/2);
  store.allocate();
  const float w[6] = {1, 2, 3, -1, 0, 1};  // W (out=2, in=3), as torch.nn.Linear
  const float b[2] = {0.5f, -2};
  store.write_values(store.info(lin.weight()).offset, w, 6);
  store.write_values(store.info(lin.bias()).offset, b, 2);
  const float xs[6] = {1, 1, 1, 2, -1, 0};
  Tensor<float, Cuda> x(Shape{2, 3}), z(Shape{2, 2});
  to_device(x.device(), x.view(), xs);
  Linear<float, Cuda>::Context lc;
  lin.forward(lc, x.cview(), z.view());
  float zh[4];
  to_host(z.device(), zh, z.cview());
  // z = x W^T + b = [[6.5, -2], [0.5, -4]]
  const float expect[4] = {6.5f, -2.0f, 0.5f, -4.0f};
  for (int i = 0; i < 4; ++i)
    if (std::fabs(zh[i] - expect[i]) > 1e-5f) {
      std::printf("z[%d] = %g, expected %g\n", i, double(zh[i]), double(expect[i]));
      return 1;
    }
  std::printf("cuda single-header consumer: ok\n");
  return 0;
}
