// mtrec: contiguous row-major tensors and non-owning views.
//
// Tensor<T, D> owns a 64-byte aligned buffer on device D (core/device.hpp;
// Cpu by default); resize() reallocates only when the new size exceeds the
// capacity, so a workspace reused across steps stops allocating after the
// first one. Allocation, copies and zeroing go through the device.
//
// TensorView<T, M> / TensorView<const T, M> are (pointer, shape) pairs in
// memory space M that never own memory. Only host views (M = HostMemory, the
// default) can be read with []: reading a Fake-device view does not compile.
// to_host()/to_device() below are the explicit copies between the two.
// Eigen maps over views are in kernels/eigen.hpp: core/ does not depend on Eigen.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <sstream>
#include <string>
#include <type_traits>

#include "mtrec/core/config.hpp"
#include "mtrec/core/device.hpp"
#include "mtrec/core/error.hpp"

namespace mtrec {

using index_t = std::int64_t;

// Up to 4 dimensions; row-major (last dimension contiguous).
struct Shape {
  static constexpr int kMaxRank = 4;
  std::array<index_t, kMaxRank> dims{{0, 0, 0, 0}};
  int rank = 0;

  Shape() = default;
  Shape(std::initializer_list<index_t> d) {
    if (d.size() > static_cast<std::size_t>(kMaxRank))
      fail("Shape", "rank ", d.size(), " exceeds the maximum of ", kMaxRank);
    index_t n = 1;
    for (index_t v : d) {
      if (v < 0) fail("Shape", "negative dimension ", v);
      if (__builtin_mul_overflow(n, v, &n))
        fail("Shape", "the element count of a shape with dimension ", v, " after ", rank,
             " others overflows a 64-bit signed integer");
      dims[rank++] = v;
    }
  }
  index_t operator[](int i) const { return dims[i]; }
  // Overflow-checked: a shape whose element count exceeds INT64_MAX (only
  // possible when `dims` is written directly) throws instead of wrapping.
  index_t numel() const {
    index_t n = 1;
    for (int i = 0; i < rank; ++i)
      if (__builtin_mul_overflow(n, dims[i], &n)) overflow();
    return rank == 0 ? 0 : n;
  }
  // Rows when viewed as a matrix: product of all but the last dimension.
  index_t rows() const { return rank == 0 ? 0 : numel() / std::max<index_t>(dims[rank - 1], 1); }
  index_t cols() const { return rank == 0 ? 0 : dims[rank - 1]; }
  bool operator==(const Shape& o) const {
    if (rank != o.rank) return false;
    for (int i = 0; i < rank; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
  [[noreturn]] void overflow() const {
    std::ostringstream os;
    for (int i = 0; i < rank; ++i) os << (i ? " x " : "") << dims[i];
    fail("Shape::numel", "the element count ", os.str(), " overflows a 64-bit signed integer");
  }
  std::string str() const {
    std::ostringstream os;
    os << '(';
    for (int i = 0; i < rank; ++i) os << (i ? ", " : "") << dims[i];
    os << ')';
    return os.str();
  }
};

inline std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

template <class T, class M = HostMemory>
struct TensorView {
  using memory = M;
  using pointer = pointer_t<T, M>;  // T* on the host, DevicePtr<T, M> on a device
  pointer data = nullptr;
  Shape shape;

  TensorView() = default;
  TensorView(pointer d, Shape s) : data(d), shape(s) {}
  // A mutable view converts to a const view of the same memory space.
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  TensorView(const TensorView<U, M>& o) : data(o.data), shape(o.shape) {}

  bool empty() const { return data == nullptr || shape.numel() == 0; }
  index_t numel() const { return shape.numel(); }
  index_t dim(int i) const { return shape[i]; }
  int rank() const { return shape.rank; }
  index_t rows() const { return shape.rows(); }
  index_t cols() const { return shape.cols(); }
  T& operator[](index_t i) const {
    static_assert(M::host_readable, "device memory cannot be read on the host: copy it with to_host()");
    return data[i];
  }
  pointer row(index_t r) const { return data + r * shape.cols(); }
  // The same memory under another shape with the same element count.
  TensorView reshaped(Shape s) const {
    check(s.numel() == shape.numel(), "TensorView::reshaped", "cannot view ", shape, " (", shape.numel(),
          " elements) as ", s, " (", s.numel(), " elements)");
    return TensorView(data, s);
  }
};

template <class T, class M = HostMemory>
using ConstView = TensorView<const T, M>;
// A view of memory on device D.
template <class T, class D>
using DeviceView = TensorView<T, typename D::memory>;

// Some rows of one table inside a flat parameter block: row i of the set is
// the `dim` elements at offset + rows[i] * dim (kernels/rows.hpp).
struct RowSet {
  index_t offset = 0;             // of the table in the block
  const index_t* rows = nullptr;  // (n) distinct rows
  index_t n = 0;
  index_t dim = 0;
};

template <class T, class D = Cpu>
class Tensor {
  static_assert(std::is_trivially_copyable<T>::value, "Tensor holds trivially copyable scalars");

 public:
  using device_type = D;
  using memory = typename D::memory;
  using View = TensorView<T, memory>;
  using CView = TensorView<const T, memory>;
  using pointer = pointer_t<T, memory>;
  using const_pointer = pointer_t<const T, memory>;

  Tensor() = default;
  explicit Tensor(const D& dev) : device_(dev) {}
  explicit Tensor(Shape s, const D& dev = D{}) : device_(dev) { resize(s); }
  Tensor(Shape s, T fill_value) {
    resize(s);
    fill(fill_value);
  }
  Tensor(const Tensor& o) : device_(o.device_) { *this = o; }
  Tensor(Tensor&& o) noexcept : device_(o.device_) { swap(o); }
  Tensor& operator=(const Tensor& o) {
    if (this != &o) {
      resize(o.shape_);
      device_.copy(data_, o.data_, bytes());
    }
    return *this;
  }
  Tensor& operator=(Tensor&& o) noexcept {
    swap(o);
    return *this;
  }
  ~Tensor() { release(); }

  void swap(Tensor& o) noexcept {
    std::swap(device_, o.device_);
    std::swap(data_, o.data_);
    std::swap(capacity_, o.capacity_);
    std::swap(shape_, o.shape_);
  }

  // Sets the shape; the contents are unspecified afterwards. Allocates only
  // when the element count exceeds the capacity.
  void resize(Shape s) {
    const index_t n = s.numel();
    if (n > capacity_) {
      if (std::size_t(n) > std::size_t(PTRDIFF_MAX) / sizeof(T))
        fail("Tensor::resize", "shape ", s, " needs ", n, " elements of ", sizeof(T),
             " bytes, more than the address space holds");
      release();
      data_ = static_cast<T*>(device_.allocate(sizeof(T) * static_cast<std::size_t>(n)));
      capacity_ = n;
    }
    shape_ = s;
  }
  // Host tensors only: a device tensor is filled by a kernel (kernels::fill).
  void fill(T v) {
    static_assert(memory::host_readable, "Tensor::fill runs on the host: use kernels::fill on a device tensor");
    std::fill(data_, data_ + numel(), v);
  }
  void zero() { device_.zero(data_, bytes()); }

  const D& device() const { return device_; }
  pointer data() { return as_pointer<memory>(data_); }
  const_pointer data() const { return as_pointer<memory>(static_cast<const T*>(data_)); }
  const Shape& shape() const { return shape_; }
  index_t numel() const { return shape_.numel(); }
  index_t dim(int i) const { return shape_[i]; }
  index_t capacity() const { return capacity_; }
  std::size_t bytes() const { return sizeof(T) * static_cast<std::size_t>(numel()); }
  T& operator[](index_t i) {
    static_assert(memory::host_readable, "device memory cannot be read on the host: copy it with to_host()");
    return data_[i];
  }
  const T& operator[](index_t i) const {
    static_assert(memory::host_readable, "device memory cannot be read on the host: copy it with to_host()");
    return data_[i];
  }

  View view() { return {data(), shape_}; }
  CView view() const { return {data(), shape_}; }
  CView cview() const { return {data(), shape_}; }
  operator View() { return view(); }
  operator CView() const { return view(); }

 private:
  void release() {
    device_.deallocate(data_, sizeof(T) * static_cast<std::size_t>(capacity_));
    data_ = nullptr;
    capacity_ = 0;
  }
  D device_{};
  T* data_ = nullptr;
  index_t capacity_ = 0;
  Shape shape_;
};

// ---- explicit copies between host and device -----------------------------------

// host[0 .. numel) = the device view's elements.
template <class D, class T, class M>
inline void to_host(const D& dev, std::remove_const_t<T>* host, TensorView<T, M> src) {
  static_assert(std::is_same<M, typename D::memory>::value, "to_host: the view is not memory of this device");
  dev.download(host, raw(src.data), sizeof(T) * static_cast<std::size_t>(src.numel()));
}
// A host copy of a device tensor (for a host tensor: a plain copy).
template <class T, class D>
inline Tensor<T, Cpu> to_host(const Tensor<T, D>& src) {
  Tensor<T, Cpu> out(src.shape());
  src.device().download(out.data(), raw(src.data()), src.bytes());
  return out;
}
// The device view's elements = host[0 .. numel).
template <class D, class T, class M>
inline void to_device(const D& dev, TensorView<T, M> dst, const T* host) {
  static_assert(std::is_same<M, typename D::memory>::value, "to_device: the view is not memory of this device");
  dev.upload(raw(dst.data), host, sizeof(T) * static_cast<std::size_t>(dst.numel()));
}
// dst takes the host view's shape and contents.
template <class T, class D, class U>
inline void to_device(Tensor<T, D>& dst, TensorView<U, HostMemory> host) {
  static_assert(std::is_same<std::remove_const_t<U>, T>::value, "to_device: element types differ");
  dst.resize(host.shape);
  dst.device().upload(raw(dst.data()), host.data, dst.bytes());
}
template <class T, class D>
inline void to_device(Tensor<T, D>& dst, const Tensor<T, Cpu>& host) {
  to_device(dst, host.view());
}

// ---- shape checks shared by every layer ----------------------------------

// Throws unless `v` has exactly the dimensions `expected`; a -1 entry matches
// any size. The message names the operation, the tensor and both shapes.
template <class T, class M>
inline void check_shape(const char* op, const char* name, const TensorView<T, M>& v,
                        std::initializer_list<index_t> expected) {
  bool ok = v.shape.rank == static_cast<int>(expected.size());
  int i = 0;
  for (index_t e : expected) {
    if (!ok) break;
    ok = e < 0 || e == v.shape.dims[i];
    ++i;
  }
  if (!ok) {
    std::ostringstream want;
    want << '(';
    i = 0;
    for (index_t e : expected) {
      want << (i++ ? ", " : "");
      if (e < 0) want << '*'; else want << e;
    }
    want << ')';
    fail(op, name, " expected shape ", want.str(), " but got ", v.shape);
  }
  if (v.shape.numel() > 0 && v.data == nullptr) fail(op, name, " has shape ", v.shape, " but no data");
}

}  // namespace mtrec
