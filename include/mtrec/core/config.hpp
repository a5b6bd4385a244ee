// mtrec: build configuration shared by every header.
#pragma once

#define MTREC_VERSION_MAJOR 0
#define MTREC_VERSION_MINOR 1
#define MTREC_VERSION_PATCH 0


#if defined(_OPENMP)
#include <omp.h>
#define MTREC_HAS_OPENMP 1
#else
#define MTREC_HAS_OPENMP 0
#endif

#define MTREC_PRAGMA(x) _Pragma(#x)
#if MTREC_HAS_OPENMP
#define MTREC_OMP(x) MTREC_PRAGMA(omp x)
#else
#define MTREC_OMP(x)
#endif

#ifndef MTREC_WITH_CUDA
#define MTREC_WITH_CUDA 0
#endif

// A small function that CUDA kernels call too (an activation's formula, the
// dropout hash): __host__ __device__ under nvcc, nothing otherwise.
#if defined(__CUDACC__)
#define MTREC_HD __host__ __device__
#else
#define MTREC_HD
#endif
