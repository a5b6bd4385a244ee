// mtrec — multi-task recommendation models in plain C++17, header-only.
//
//   #include <mtrec/mtrec.hpp>
//
// Layout (each layer's forward and backward live in one header):
//   core/      tensors and views, errors, counter-based RNG, parallel loops,
//              the flat parameter store
//   kernels/   device tags (the backend seam), scalar reference kernels,
//              xsimd/OpenMP CPU kernels
//   layers/    Linear, activations, Dropout, LayerNorm, MLP, Embedding,
//              EmbeddingBag, PositionalEmbedding, MultiHeadAttention,
//              TransformerEncoderLayer/Encoder, SequencePooling
#pragma once

#include "mtrec/core/config.hpp"
#include "mtrec/core/error.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/parameters.hpp"
#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/reference.hpp"
#include "mtrec/layers/activation.hpp"
#include "mtrec/layers/attention.hpp"
#include "mtrec/layers/common.hpp"
#include "mtrec/layers/dropout.hpp"
#include "mtrec/layers/embedding.hpp"
#include "mtrec/layers/layernorm.hpp"
#include "mtrec/layers/linear.hpp"
#include "mtrec/layers/mlp.hpp"
#include "mtrec/layers/pooling.hpp"
#include "mtrec/layers/positional.hpp"
#include "mtrec/layers/transformer.hpp"
#include "mtrec/model/config.hpp"
#include "mtrec/model/features.hpp"
#include "mtrec/model/multitask.hpp"
#include "mtrec/train/losses.hpp"
