// mtrec: the CUDA device — memory, streams, cuBLAS handles and error checks.
//
// Included only by a translation unit compiled by nvcc with MTREC_WITH_CUDA=1
// (kernels/cuda.hpp holds the guard); a g++ build never sees this folder.
//
//   Cuda dev;                                  // device 0, or the one set with cudaSetDevice
//   MultiTaskModel<float, Cuda> model(cfg);    // the same API as on Cpu
//
// What a Cuda value holds, and where it lives:
//   memory  one caching arena per process (CudaArena below): blocks of
//           power-of-two size classes, kept on free lists when released, so
//           a warm training step or predict calls neither cudaMalloc nor
//           cudaFree. When cudaMalloc fails, the arena frees its cached
//           blocks and tries once more, then throws an Error naming the
//           request, the bytes in use and the device's free memory.
//   stream  one per host thread (CudaThread below), created on the thread's
//   cuBLAS  first CUDA call, non-blocking, with its own cuBLAS handle bound
//           to it: kernels, copies and GEMMs issued from one thread run in
//           order on that thread's stream, and several threads (each with
//           its own workspace) run concurrently without sharing a handle,
//           like PyTorch's per-thread current stream.
//   options `tf32` (off by default): cuBLAS fp32 GEMMs may use TF32 tensor
//           cores, which round the operands to a 10-bit mantissa (relative
//           error about 1e-3 per product instead of 1e-7): faster on
//           Ampere and later, and no longer within the op table's fp32
//           tolerances. Set process-wide with cuda::options().tf32 = true
//           before building a model.
//
// Every CUDA and cuBLAS call is checked: a failure throws mtrec::Error with
// the op, the CUDA error string and the shapes. Kernels are launched on the
// calling thread's stream and checked with cudaGetLastError; copies to the
// host synchronise that stream (so a host read after download sees every
// kernel issued before it).
#pragma once

#if !defined(__CUDACC__)
#error "mtrec/kernels/cuda/*.cuh are CUDA headers: compile the including file with nvcc and -DMTREC_WITH_CUDA=1"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "mtrec/core/device.hpp"
#include "mtrec/core/error.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/device.hpp"

namespace mtrec {

struct CudaMemory {
  static constexpr bool host_readable = false;
};

namespace cuda {

// ---- errors ------------------------------------------------------------------------

inline const char* cublas_status_string(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "an unknown cuBLAS status";
  }
}

// Throws Error(op, "<CUDA error string> (<name>) <details...>") unless e is cudaSuccess.
template <class... Parts>
inline void check(cudaError_t e, const char* op, const Parts&... details) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a sticky launch error so later calls report their own
  fail(op, "CUDA error: ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ")", sizeof...(details) ? "; " : "",
       details...);
}
template <class... Parts>
inline void check_blas(cublasStatus_t s, const char* op, const Parts&... details) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail(op, "cuBLAS error: ", cublas_status_string(s), sizeof...(details) ? "; " : "", details...);
}
// After a <<<...>>> launch: a bad configuration or an earlier asynchronous
// fault shows up here.
template <class... Parts>
inline void check_launch(const char* op, const Parts&... details) {
  check(cudaGetLastError(), op, "kernel launch failed; ", details...);
}

// Devices present (0 when there is no driver or no GPU: never throws).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}
inline bool available() { return device_count() > 0; }
// Why there is no device, for a test's skip line.
inline std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  (void)cudaGetLastError();
  if (e != cudaSuccess) return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  if (n == 0) return "the driver reports no CUDA device";
  return "";
}

// ---- per-thread stream and cuBLAS handle ------------------------------------------------

class CudaThread {
 public:
  static CudaThread& current() {
    thread_local CudaThread t;
    return t;
  }
  cudaStream_t stream() {
    init();
    return stream_;
  }
  cublasHandle_t blas() {
    init();
    return blas_;
  }
  // Pinned host scratch for the small results kernels return (a flag, a sum).
  void* host_scratch() {
    init();
    return host_scratch_;
  }
  // Device scratch of at least `bytes` for reductions; grows (rarely), never shrinks.
  void* device_scratch(std::size_t bytes);
  void synchronize(const char* op) {
    if (stream_) check(cudaStreamSynchronize(stream_), op, "waiting for the thread's stream");
  }
  // The same without throwing (a fault here surfaces at the next checked call).
  void synchronize_quietly() noexcept {
    if (stream_ && cudaStreamSynchronize(stream_) != cudaSuccess) (void)cudaGetLastError();
  }
  ~CudaThread();

 private:
  CudaThread() = default;
  void init() {
    if (stream_) return;
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "Cuda", "creating the thread's stream");
    check_blas(cublasCreate(&blas_), "Cuda", "creating the thread's cuBLAS handle");
    check_blas(cublasSetStream(blas_, stream_), "Cuda", "binding the cuBLAS handle to the stream");
    // The default pointer mode (host) and no atomics: cuBLAS results are
    // reproducible run to run on the same GPU.
    check_blas(cublasSetAtomicsMode(blas_, CUBLAS_ATOMICS_NOT_ALLOWED), "Cuda", "cublasSetAtomicsMode");
    check(cudaMallocHost(&host_scratch_, 256), "Cuda", "allocating 256 bytes of pinned host scratch");
  }
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* host_scratch_ = nullptr;
  void* dev_scratch_ = nullptr;
  std::size_t dev_scratch_bytes_ = 0;
};

// ---- the caching arena ------------------------------------------------------------------

class CudaArena {
 public:
  static CudaArena& instance() {
    static CudaArena* a = new CudaArena();  // never destroyed: tensors may outlive statics
    return *a;
  }

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    const int c = size_class(bytes);
    const std::size_t sz = std::size_t(1) << c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_[c].empty()) {
        void* p = free_[c].back();
        free_[c].pop_back();
        in_use_ += sz;
        cached_ -= sz;
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, sz);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cached();
      e = cudaMalloc(&p, sz);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      std::size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      std::lock_guard<std::mutex> lock(mu_);
      if (e == cudaErrorMemoryAllocation)
        fail("Cuda::allocate", "out of GPU memory: a tensor of ", bytes, " bytes (block of ", sz,
             " bytes) does not fit; the arena holds ", in_use_, " bytes in use and the device has ", free_b,
             " of ", total_b, " bytes free");
      check(e, "Cuda::allocate", "cudaMalloc of ", sz, " bytes");
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++mallocs_;
    in_use_ += sz;
    return p;
  }
  // The block goes back to its free list. The calling thread's stream is
  // synchronised first, so work it issued on the block has finished before
  // the block can be handed out again.
  void deallocate(void* p, std::size_t bytes) {
    if (!p) return;
    CudaThread::current().synchronize_quietly();  // never throws: called from destructors
    const int c = size_class(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    free_[c].push_back(p);
    in_use_ -= std::size_t(1) << c;
    cached_ += std::size_t(1) << c;
  }
  // cudaFree of every cached block (called before giving up on an allocation).
  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    (void)cudaDeviceSynchronize();
    for (auto& list : free_) {
      for (void* p : list) (void)cudaFree(p);
      list.clear();
    }
    cached_ = 0;
    (void)cudaGetLastError();
  }
  std::size_t bytes_in_use() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_use_;
  }
  std::size_t bytes_cached() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }
  // cudaMalloc calls so far: a steady-state step adds none (tests check it).
  std::uint64_t mallocs() const {
    std::lock_guard<std::mutex> lock(mu_);
    return mallocs_;
  }
  std::uint64_t uploads() const { return uploads_.load(std::memory_order_relaxed); }
  void count_upload() { uploads_.fetch_add(1, std::memory_order_relaxed); }

 private:
  CudaArena() = default;
  static int size_class(std::size_t bytes) {
    int c = 8;  // 256 bytes at least: cudaMalloc's own alignment
    while ((std::size_t(1) << c) < bytes) ++c;
    return c;
  }
  mutable std::mutex mu_;
  std::size_t in_use_ = 0, cached_ = 0;
  std::uint64_t mallocs_ = 0;
  std::atomic<std::uint64_t> uploads_{0};
  std::vector<void*> free_[64];
};

inline void* CudaThread::device_scratch(std::size_t bytes) {
  init();
  if (bytes > dev_scratch_bytes_) {
    if (dev_scratch_) CudaArena::instance().deallocate(dev_scratch_, dev_scratch_bytes_);
    std::size_t sz = 4096;
    while (sz < bytes) sz <<= 1;
    dev_scratch_ = CudaArena::instance().allocate(sz);
    dev_scratch_bytes_ = sz;
  }
  return dev_scratch_;
}

inline CudaThread::~CudaThread() {
  // At process exit the runtime may already be gone: errors are ignored.
  if (dev_scratch_) CudaArena::instance().deallocate(dev_scratch_, dev_scratch_bytes_);
  if (host_scratch_) (void)cudaFreeHost(host_scratch_);
  if (blas_) (void)cublasDestroy(blas_);
  if (stream_) (void)cudaStreamDestroy(stream_);
  (void)cudaGetLastError();
}

// Grid for a grid-stride loop over n elements.
inline unsigned grid_for(std::int64_t n, unsigned threads = 256, unsigned max_blocks = 65535u * 4u) {
  const std::int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > std::int64_t(max_blocks) ? max_blocks : b));
}

template <class T>
__global__ void zero_rows_kernel(T* base, const std::int64_t* rows, std::int64_t n, std::int64_t row_words) {
  const std::int64_t total = n * row_words;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < total;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / row_words, c = i - r * row_words;
    base[rows[r] * row_words + c] = T(0);
  }
}

// The options a Cuda value starts with, process-wide, as PyTorch's
// torch.backends.cuda.matmul.allow_tf32: set them before building a model
// (every layer keeps the device value its ParameterStore was built with).
//   mtrec::cuda::options().tf32 = true;
struct Options {
  bool tf32 = false;  // fp32 GEMMs on TF32 tensor cores (see the header comment)
};
inline Options& options() {
  static Options o;
  return o;
}

}  // namespace cuda

// ---- the device value ------------------------------------------------------------------------

struct Cuda {
  using memory = CudaMemory;
  static const char* name() { return "cuda"; }

  bool tf32 = cuda::options().tf32;

  cudaStream_t stream() const { return cuda::CudaThread::current().stream(); }
  cublasHandle_t blas() const { return cuda::CudaThread::current().blas(); }
  void synchronize(const char* op = "Cuda::synchronize") const { cuda::CudaThread::current().synchronize(op); }

  void* allocate(std::size_t bytes) const { return cuda::CudaArena::instance().allocate(bytes); }
  void deallocate(void* p, std::size_t bytes) const { cuda::CudaArena::instance().deallocate(p, bytes); }
  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (!bytes) return;
    cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "Cuda::copy", bytes,
                " bytes device to device");
  }
  // From pageable host memory: returns once the source has been staged, so
  // the host buffer may be reused at once.
  void upload(void* dst, const void* host, std::size_t bytes) const {
    if (!bytes) return;
    cuda::CudaArena::instance().count_upload();
    cuda::check(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream()), "Cuda::upload", bytes,
                " bytes host to device");
  }
  // Waits for every kernel issued on this thread's stream, then copies.
  void download(void* host, const void* src, std::size_t bytes) const {
    if (!bytes) return;
    cuda::check(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream()), "Cuda::download", bytes,
                " bytes device to host");
    cuda::check(cudaStreamSynchronize(stream()), "Cuda::download", "waiting for ", bytes, " bytes device to host");
  }
  void zero(void* p, std::size_t bytes) const {
    if (!bytes) return;
    cuda::check(cudaMemsetAsync(p, 0, bytes, stream()), "Cuda::zero", bytes, " bytes");
  }
  // rows (n) is device memory, like every index array a kernel reads.
  void zero_rows(void* base, const std::int64_t* rows, std::int64_t n, std::size_t row_bytes) const {
    if (!n) return;
    if (row_bytes % 4 == 0) {
      const std::int64_t words = std::int64_t(row_bytes / 4);
      cuda::zero_rows_kernel<std::uint32_t><<<cuda::grid_for(n * words), 256, 0, stream()>>>(
          static_cast<std::uint32_t*>(base), rows, n, words);
    } else {
      cuda::zero_rows_kernel<std::uint8_t><<<cuda::grid_for(n * std::int64_t(row_bytes)), 256, 0, stream()>>>(
          static_cast<std::uint8_t*>(base), rows, n, std::int64_t(row_bytes));
    }
    cuda::check_launch("Cuda::zero_rows", n, " rows of ", row_bytes, " bytes");
  }
};

namespace kernels {

// The tag the CUDA kernel implementations take in place of reference_t:
// their pointer arguments are plain addresses of device memory (or, through
// CudaDispatch, of host memory the GPU can read). `dev` is the device value
// the call came from (its options), `stream`/`blas` the calling thread's.
struct cuda_raw_t {
  const Cuda* dev;
  cudaStream_t stream;
  cublasHandle_t blas() const { return cuda::CudaThread::current().blas(); }
  bool tf32() const { return dev && dev->tf32; }
};

namespace detail {
// One argument of a Cuda kernel call, as the implementation takes it
// (kernels/device.hpp, open_device_arg): a host pointer to numbers, or a
// pointer into another device's memory, is refused at compile time.
template <class A>
inline decltype(auto) cuda_arg(A&& a) {
  using U = std::decay_t<A>;
  static_assert(!is_foreign_device_ptr<U, CudaMemory>,
                "a pointer into another device's memory was passed to a Cuda kernel");
  static_assert(!is_host_number_pointer<U>,
                "a host pointer was passed to a Cuda kernel: pass device memory (a Tensor or view of the "
                "device; to_device() copies host data there)");
  return open_device_arg(std::forward<A>(a));
}
}  // namespace detail

// CudaDispatch: the Cuda kernels on host buffers, for the op table only
// (tests/ops): its memory is host memory, which the GPU reads through the
// driver's pageable-memory access (HMM; cuda::pageable_memory_access()).
// Each call synchronises the stream, so the host may read the results.
struct CudaDispatch : mtrec::detail::HostDevice {
  static const char* name() { return "cuda"; }
  bool tf32 = false;
};

}  // namespace kernels

namespace cuda {
// Whether the GPU can read ordinary host memory (HMM or ATS): the op table's
// Cuda column needs it; the typed tests do not.
inline bool pageable_memory_access() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&v, cudaDevAttrPageableMemoryAccess, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return v != 0;
}
}  // namespace cuda

// Declares `name` on Cuda (device pointers opened) and on CudaDispatch (host
// buffers, synchronised), both forwarding to `name(cuda_raw_t, ...)`, the
// implementation in the kernel's .cuh file.
#define MTREC_CUDA_KERNEL(name)                                                                  \
  namespace kernels {                                                                            \
  template <class... A>                                                                          \
  inline decltype(auto) name(const ::mtrec::Cuda& d, A&&... a) {                                 \
    return name(cuda_raw_t{&d, d.stream()}, detail::cuda_arg(std::forward<A>(a))...);            \
  }                                                                                              \
  template <class... A>                                                                          \
  inline decltype(auto) name(const CudaDispatch& d, A&&... a) {                                  \
    ::mtrec::Cuda c;                                                                             \
    c.tf32 = d.tf32;                                                                             \
    struct Sync {                                                                                \
      ~Sync() noexcept(false) {                                                                  \
        if (!std::uncaught_exceptions()) ::mtrec::cuda::CudaThread::current().synchronize(#name); \
      }                                                                                          \
    } sync;                                                                                      \
    return name(cuda_raw_t{&c, c.stream()}, std::forward<A>(a)...);                              \
  }                                                                                              \
  }

}  // namespace mtrec
