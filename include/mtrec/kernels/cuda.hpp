// mtrec: the CUDA backend's kernels (kernels/cuda/*.cuh), present only in a
// translation unit that nvcc compiles with MTREC_WITH_CUDA=1. Anywhere else
// (g++, clang, or nvcc without the define) this header is empty, so a
// project may set MTREC_WITH_CUDA for all its files and compile the host-only
// ones with a plain C++ compiler.
//
//   kernels/cuda/device.cuh     the Cuda device: arena, per-thread stream and cuBLAS handle, checks
//   kernels/cuda/dense.cuh      GEMM (cuBLAS), bias, activations, softmax, layernorm, dropout, Adam/SGD, reductions
//   kernels/cuda/embedding.cuh  gather, scatter, embedding bags, the fused embedding backward + row-wise Adam
//   kernels/cuda/rows.cuh       the row-wise (lazy) optimizer updates and row norms
//   kernels/cuda/sequence.cuh   packing, pooling, positional, attention (strided-batched cuBLAS)
//   kernels/cuda/loss.cuh       the losses and output transforms
//   kernels/cuda/mixture.cuh    the gates' expert mixing and column copies
//   kernels/cuda/retrieval.cuh  exact top-K by inner product (scores on the GPU, selection on the host)
#pragma once

#include "mtrec/core/config.hpp"
#include "mtrec/core/device.hpp"
#include "mtrec/core/error.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/embedding.hpp"
#include "mtrec/kernels/loss.hpp"
#include "mtrec/kernels/mixture.hpp"
#include "mtrec/kernels/reference.hpp"
#include "mtrec/kernels/retrieval.hpp"
#include "mtrec/kernels/rows.hpp"
#include "mtrec/kernels/sequence.hpp"

// The .cuh files include nothing of mtrec beyond the headers above.
#if MTREC_WITH_CUDA && defined(__CUDACC__)
#define MTREC_HAS_CUDA 1
#include "mtrec/kernels/cuda/device.cuh"
#include "mtrec/kernels/cuda/dense.cuh"
#include "mtrec/kernels/cuda/embedding.cuh"
#include "mtrec/kernels/cuda/rows.cuh"
#include "mtrec/kernels/cuda/sequence.cuh"
#include "mtrec/kernels/cuda/loss.cuh"
#include "mtrec/kernels/cuda/mixture.cuh"
#include "mtrec/kernels/cuda/retrieval.cuh"
#else
#define MTREC_HAS_CUDA 0
#endif
