// mtrec: devices — where tensor memory lives and which kernels run on it.
//
// A device is a small value passed by const reference. It carries the state
// its kernels need (for Cpu and Reference: nothing; for CUDA later: a stream,
// a cuBLAS handle and an arena) and owns the memory of every Tensor built on
// it. Every device offers the same memory operations:
//
//   void* allocate(bytes)            void deallocate(p, bytes)
//   void  copy(dst, src, bytes)      // device -> device
//   void  upload(dst, host, bytes)   // host -> device
//   void  download(host, src, bytes) // device -> host
//   void  zero(p, bytes)
//   void  zero_rows(base, rows, n, row_bytes)  // rows[i]: row indices on the host
//
// and a `memory` type naming its memory space: views of device memory are
// TensorView<T, D::memory>, and only HostMemory views can be read with [].
//
//   Cpu        host memory; xsimd + OpenMP kernels (kernels/cpu.hpp)
//   Reference  host memory; scalar kernels, the ground truth of every test
//   Fake       memory from an arena that is mprotect()ed to PROT_NONE except
//              while one of its kernels or copies runs; kernels run the
//              reference code. Host code that touches device memory faults
//              at once, as it would on a GPU (kernels/fake.hpp).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <type_traits>
#include <vector>

#include "mtrec/core/error.hpp"

namespace mtrec {

struct HostMemory {
  static constexpr bool host_readable = true;
};
struct FakeMemory {
  static constexpr bool host_readable = false;
};

// A pointer into device memory of space M. It has no * or [], so host code
// cannot read through it, and it does not convert from a plain pointer, so a
// host pointer cannot be passed where a kernel of that device expects device
// memory. Host memory uses plain pointers (pointer_t below).
template <class T, class M>
class DevicePtr {
 public:
  using element_type = T;
  using memory = M;
  DevicePtr() = default;
  DevicePtr(std::nullptr_t) {}
  // The device's own code (memory operations, kernels) makes and opens them.
  explicit DevicePtr(T* p) : p_(p) {}
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  DevicePtr(DevicePtr<U, M> o) : p_(o.get()) {}
  T* get() const { return p_; }
  DevicePtr operator+(std::ptrdiff_t n) const { return DevicePtr(p_ + n); }
  DevicePtr operator-(std::ptrdiff_t n) const { return DevicePtr(p_ - n); }
  DevicePtr& operator+=(std::ptrdiff_t n) {
    p_ += n;
    return *this;
  }
  std::ptrdiff_t operator-(DevicePtr o) const { return p_ - o.p_; }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  T* p_ = nullptr;
};
template <class T, class U, class M>
inline bool operator==(DevicePtr<T, M> a, DevicePtr<U, M> b) {
  return static_cast<const void*>(a.get()) == static_cast<const void*>(b.get());
}
template <class T, class U, class M>
inline bool operator!=(DevicePtr<T, M> a, DevicePtr<U, M> b) {
  return !(a == b);
}
template <class T, class M>
inline bool operator==(DevicePtr<T, M> a, std::nullptr_t) {
  return a.get() == nullptr;
}
template <class T, class M>
inline bool operator!=(DevicePtr<T, M> a, std::nullptr_t) {
  return a.get() != nullptr;
}
// const_cast for both kinds of pointer
template <class T>
inline T* mutable_ptr(const T* p) {
  return const_cast<T*>(p);
}
template <class T, class M>
inline DevicePtr<T, M> mutable_ptr(DevicePtr<const T, M> p) {
  return DevicePtr<T, M>(const_cast<T*>(p.get()));
}

// The pointer type of memory space M: T* on the host, DevicePtr otherwise.
template <class T, class M>
using pointer_t = std::conditional_t<M::host_readable, T*, DevicePtr<T, M>>;

template <class T>
struct is_device_ptr : std::false_type {};
template <class T, class M>
struct is_device_ptr<DevicePtr<T, M>> : std::true_type {};

// The address, for memory operations: a plain pointer as it is, a device
// pointer opened.
template <class T>
inline T* raw(T* p) {
  return p;
}
template <class T, class M>
inline T* raw(DevicePtr<T, M> p) {
  return p.get();
}
// A plain address as a pointer of memory space M.
template <class M, class T>
inline pointer_t<T, M> as_pointer(T* p) {
  return pointer_t<T, M>(p);
}

namespace detail {
constexpr std::size_t kAlignment = 64;

// Memory operations on host memory, shared by Cpu and Reference.
struct HostDevice {
  using memory = HostMemory;
  void* allocate(std::size_t bytes) const { return ::operator new[](bytes, std::align_val_t(kAlignment)); }
  void deallocate(void* p, std::size_t) const {
    if (p) ::operator delete[](p, std::align_val_t(kAlignment));
  }
  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void upload(void* dst, const void* host, std::size_t bytes) const { copy(dst, host, bytes); }
  void download(void* host, const void* src, std::size_t bytes) const { copy(host, src, bytes); }
  void zero(void* p, std::size_t bytes) const {
    if (bytes) std::memset(p, 0, bytes);
  }
  void zero_rows(void* base, const std::int64_t* rows, std::int64_t n, std::size_t row_bytes) const {
    for (std::int64_t i = 0; i < n; ++i) std::memset(static_cast<char*>(base) + rows[i] * row_bytes, 0, row_bytes);
  }
};
}  // namespace detail

struct Cpu : detail::HostDevice {
  static const char* name() { return "cpu"; }
};
struct Reference : detail::HostDevice {
  static const char* name() { return "reference"; }
};

// ---- the fake device ---------------------------------------------------------------

// One arena per process (mprotect acts on the whole process). Blocks come
// from power-of-two size classes with free lists; the block metadata lives
// on the host heap, so the arena itself is never read by the allocator.
// enter()/leave() count the kernels and copies running now: the arena is
// readable while the count is positive and PROT_NONE when it drops to zero.
class FakeArena {
 public:
  static FakeArena& instance() {
    static FakeArena a;
    return a;
  }

  void* allocate(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const int c = size_class(bytes);
    if (!free_[c].empty()) {
      void* p = free_[c].back();
      free_[c].pop_back();
      in_use_ += std::size_t(1) << c;
      return p;
    }
    const std::size_t sz = std::size_t(1) << c;
    check(used_ + sz <= kReserve, "Fake::allocate", "the fake device's arena of ", kReserve >> 20,
          " MiB cannot hold another ", sz, " bytes (", used_, " bytes handed out)");
    void* p = base_ + used_;
    const std::size_t old_top = round_page(used_);
    used_ += sz;
    const std::size_t top = round_page(used_);
    if (depth_ > 0 && top > old_top) protect(old_top, top - old_top, PROT_READ | PROT_WRITE);
    in_use_ += sz;
    return p;
  }
  void deallocate(void* p, std::size_t bytes) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mu_);
    check(contains(p), "Fake::deallocate", "pointer ", p, " is not fake-device memory");
    const int c = size_class(bytes);
    free_[c].push_back(p);
    in_use_ -= std::size_t(1) << c;
  }

  void enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (depth_++ == 0 && used_) protect(0, round_page(used_), PROT_READ | PROT_WRITE);
  }
  void leave() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--depth_ == 0 && used_) protect(0, round_page(used_), PROT_NONE);
  }

  bool contains(const void* p) const {
    const char* c = static_cast<const char*>(p);
    return c >= base_ && c < base_ + kReserve;
  }
  std::size_t bytes_in_use() const { return in_use_; }
  std::uint64_t transitions() const { return transitions_; }  // mprotect calls so far
  // Host-to-device copies so far (tests count them: a batch is one upload).
  std::uint64_t uploads() const { return uploads_.load(std::memory_order_relaxed); }
  void count_upload() { uploads_.fetch_add(1, std::memory_order_relaxed); }

 private:
  static constexpr std::size_t kReserve = std::size_t(16) << 30;  // address space only (MAP_NORESERVE)

  FakeArena() {
    void* p = ::mmap(nullptr, kReserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    check(p != MAP_FAILED, "Fake", "could not reserve ", kReserve >> 20, " MiB of address space for the arena");
    base_ = static_cast<char*>(p);
    page_ = std::size_t(::sysconf(_SC_PAGESIZE));
  }
  ~FakeArena() = default;  // the mapping lives until the process ends: tensors may outlive statics

  static int size_class(std::size_t bytes) {
    int c = 6;  // 64 bytes at least: every block is cache-line aligned
    while ((std::size_t(1) << c) < bytes) ++c;
    return c;
  }
  std::size_t round_page(std::size_t n) const { return (n + page_ - 1) / page_ * page_; }
  void protect(std::size_t off, std::size_t len, int prot) {
    ++transitions_;
    check(::mprotect(base_ + off, len, prot) == 0, "Fake", "mprotect of the arena failed");
  }

  std::mutex mu_;
  char* base_ = nullptr;
  std::size_t page_ = 4096;
  std::size_t used_ = 0, in_use_ = 0;
  int depth_ = 0;
  std::uint64_t transitions_ = 0;
  std::atomic<std::uint64_t> uploads_{0};
  std::vector<void*> free_[64];
};

// The arena is readable for the lifetime of a guard (counted: guards nest
// and may be held by several threads at once).
struct FakeGuard {
  FakeGuard() { FakeArena::instance().enter(); }
  ~FakeGuard() { FakeArena::instance().leave(); }
  FakeGuard(const FakeGuard&) = delete;
  FakeGuard& operator=(const FakeGuard&) = delete;
};

struct Fake {
  using memory = FakeMemory;
  static const char* name() { return "fake"; }
  void* allocate(std::size_t bytes) const { return FakeArena::instance().allocate(bytes); }
  void deallocate(void* p, std::size_t bytes) const { FakeArena::instance().deallocate(p, bytes); }
  // Every memory operation checks that its device side is arena memory, as a
  // GPU copy would fault on a host address.
  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (!bytes) return;
    in_arena("Fake::copy", "dst", dst);
    in_arena("Fake::copy", "src", src);
    FakeGuard g;
    std::memcpy(dst, src, bytes);
  }
  void upload(void* dst, const void* host, std::size_t bytes) const {
    if (!bytes) return;
    in_arena("Fake::upload", "dst", dst);
    not_in_arena("Fake::upload", "host", host);
    FakeArena::instance().count_upload();
    FakeGuard g;
    std::memcpy(dst, host, bytes);
  }
  void download(void* host, const void* src, std::size_t bytes) const {
    if (!bytes) return;
    in_arena("Fake::download", "src", src);
    not_in_arena("Fake::download", "host", host);
    FakeGuard g;
    std::memcpy(host, src, bytes);
  }
  void zero(void* p, std::size_t bytes) const {
    if (!bytes) return;
    in_arena("Fake::zero", "p", p);
    FakeGuard g;
    std::memset(p, 0, bytes);
  }
  // rows (n) is device memory too, like every index array a kernel reads.
  void zero_rows(void* base, const std::int64_t* rows, std::int64_t n, std::size_t row_bytes) const {
    if (!n) return;
    in_arena("Fake::zero_rows", "base", base);
    in_arena("Fake::zero_rows", "rows", rows);
    FakeGuard g;
    detail::HostDevice{}.zero_rows(base, rows, n, row_bytes);
  }
  static void in_arena(const char* op, const char* what, const void* p) {
    check(FakeArena::instance().contains(p), op, what, " expected Fake-device memory but got host address ", p);
  }
  static void not_in_arena(const char* op, const char* what, const void* p) {
    check(!FakeArena::instance().contains(p), op, what, " expected host memory but got Fake-device address ", p);
  }
};

template <class D>
constexpr bool host_readable_v = D::memory::host_readable;

}  // namespace mtrec
