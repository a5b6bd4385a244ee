// mtrec: Eigen interop — row-major maps over tensor views, never copies.
//
// Eigen is used by the CPU kernels only; core/ does not depend on it.
#pragma once

// Eigen must never start its own threads: its GEMM blocking depends on the
// thread count, which would break bitwise determinism. mtrec parallelises
// GEMM itself over fixed row blocks (kernels/cpu.hpp).
#ifndef EIGEN_DONT_PARALLELIZE
#define EIGEN_DONT_PARALLELIZE
#endif

#include <Eigen/Core>

#include "mtrec/core/tensor.hpp"

namespace mtrec {

// ---- Eigen interop: row-major maps over our buffers, never copies ----------

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>>;

// (rows, cols) = (product of leading dims, last dim).
template <class T>
inline MatrixMap<T> as_matrix(TensorView<T> v) {
  return MatrixMap<T>(v.data, v.rows(), v.cols());
}
template <class T>
inline ConstMatrixMap<T> as_matrix(TensorView<const T> v) {
  return ConstMatrixMap<T>(v.data, v.rows(), v.cols());
}
template <class T>
inline MatrixMap<T> as_matrix(Tensor<T>& t) {
  return as_matrix(t.view());
}
template <class T>
inline ConstMatrixMap<T> as_matrix(const Tensor<T>& t) {
  return as_matrix(t.view());
}

}  // namespace mtrec
