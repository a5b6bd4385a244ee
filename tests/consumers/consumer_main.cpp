// A downstream program: one Linear layer + ReLU whose weights are set by hand,
// checked against values computed on paper. Shared by the find_package,
// add_subdirectory and single-header consumer tests. Exits non-zero on mismatch.
#include <mtrec/mtrec.hpp>

#include <cstdio>

int main() {
  using namespace mtrec;
  ParameterStore<float> store(7);
  Linear<float> lin(store, "fc", /*in=*/3, /*out=*/2);
  ActivationLayer<float> relu(Activation::ReLU);
  store.allocate();

  // W (out=2, in=3) and b (2), stored as in torch.nn.Linear.
  const float w[6] = {1, 2, 3, -1, 0, 1};
  const float b[2] = {0.5f, -2};
  for (int i = 0; i < 6; ++i) store.value(lin.weight())[i] = w[i];
  for (int i = 0; i < 2; ++i) store.value(lin.bias())[i] = b[i];

  Tensor<float> x({2, 3}), z({2, 2}), y({2, 2});
  const float xs[6] = {1, 1, 1, 2, -1, 0};
  for (int i = 0; i < 6; ++i) x[i] = xs[i];

  Linear<float>::Context lc;
  ActivationLayer<float>::Context ac;
  lin.forward(lc, x.view(), z.view());
  relu.forward(ac, z.view(), y.view());

  // z = x W^T + b = [[6.5, -2], [0.5, -4]];  y = relu(z)
  const float want_z[4] = {6.5f, -2, 0.5f, -4};
  const float want_y[4] = {6.5f, 0, 0.5f, 0};
  int bad = 0;
  for (int i = 0; i < 4; ++i) {
    if (z[i] != want_z[i]) { std::printf("z[%d] = %g, expected %g\n", i, double(z[i]), double(want_z[i])); ++bad; }
    if (y[i] != want_y[i]) { std::printf("y[%d] = %g, expected %g\n", i, double(y[i]), double(want_y[i])); ++bad; }
  }

  // Backward with dz = 1: dW = dz^T x = [[3, 0, 1], [3, 0, 1]], db = [2, 2], dx = dz W = [[0, 2, 4], [0, 2, 4]].
  Tensor<float> dz({2, 2}, 1.0f), dx({2, 3});
  lin.backward(lc, dz.view(), dx.view());
  const float want_dw[6] = {3, 0, 1, 3, 0, 1};
  const float want_dx[6] = {0, 2, 4, 0, 2, 4};
  for (int i = 0; i < 6; ++i) {
    if (store.grad(lin.weight())[i] != want_dw[i]) { std::printf("dW[%d] mismatch\n", i); ++bad; }
    if (dx[i] != want_dx[i]) { std::printf("dx[%d] mismatch\n", i); ++bad; }
  }
  for (int i = 0; i < 2; ++i)
    if (store.grad(lin.bias())[i] != 2.0f) { std::printf("db[%d] mismatch\n", i); ++bad; }

  std::printf("mtrec %d.%d.%d consumer: %s (openmp=%d)\n", MTREC_VERSION_MAJOR, MTREC_VERSION_MINOR,
              MTREC_VERSION_PATCH, bad ? "MISMATCH" : "ok", MTREC_HAS_OPENMP);
  return bad ? 1 : 0;
}
