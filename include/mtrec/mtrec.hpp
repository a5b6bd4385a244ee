// mtrec — multi-task recommendation models in plain C++17, header-only.
//
//   #include <mtrec/mtrec.hpp>
//
// Layout (each layer's forward and backward live in one header):
// Folders, lowest first; a header includes only its own folder and the
// folders listed above it (tools/check_layers.py checks this):
//   core/      tensors and views, errors, counter-based RNG, parallel loops,
//              the flat parameter store
//   io/        JSON, safetensors, atomic files
//   kernels/   device tags (the backend seam), scalar reference kernels,
//              xsimd/OpenMP CPU kernels (Eigen is used here only)
//   layers/    Linear, activations, Dropout, LayerNorm, MLP, Embedding,
//              EmbeddingBag, PositionalEmbedding, MultiHeadAttention,
//              TransformerEncoderLayer/Encoder, SequencePooling, losses
//   model/     feature specs, batches, FeatureEncoder, CgcLevels (the MMoE/PLE
//              expert levels), MultiTaskModel (single, shared-bottom, MMoE,
//              PLE, ESMM)
//   train/     metrics, optimizers and schedules, evaluate, Trainer,
//              checkpoints
//   serve/     top-K scoring of candidates, exact top-K retrieval
//   data/      CSV reading and tabular encoding (mtrec-train), MovieLens,
//              the MMoE paper's synthetic data
#pragma once

#include "mtrec/core/config.hpp"
#include "mtrec/core/device.hpp"
#include "mtrec/core/error.hpp"
#include "mtrec/core/parallel.hpp"
#include "mtrec/core/parameters.hpp"
#include "mtrec/core/rng.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/io/atomic_file.hpp"
#include "mtrec/io/json.hpp"
#include "mtrec/io/safetensors.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/cuda.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/eigen.hpp"
#include "mtrec/kernels/embedding.hpp"
#include "mtrec/kernels/fake.hpp"
#include "mtrec/kernels/loss.hpp"
#include "mtrec/kernels/mixture.hpp"
#include "mtrec/kernels/reference.hpp"
#include "mtrec/kernels/retrieval.hpp"
#include "mtrec/kernels/rows.hpp"
#include "mtrec/kernels/sequence.hpp"
#include "mtrec/layers/activation.hpp"
#include "mtrec/layers/attention.hpp"
#include "mtrec/layers/common.hpp"
#include "mtrec/layers/dropout.hpp"
#include "mtrec/layers/embedding.hpp"
#include "mtrec/layers/gate.hpp"
#include "mtrec/layers/layernorm.hpp"
#include "mtrec/layers/linear.hpp"
#include "mtrec/layers/losses.hpp"
#include "mtrec/layers/mlp.hpp"
#include "mtrec/layers/pooling.hpp"
#include "mtrec/layers/positional.hpp"
#include "mtrec/layers/transformer.hpp"
#include "mtrec/model/cgc.hpp"
#include "mtrec/model/config.hpp"
#include "mtrec/model/features.hpp"
#include "mtrec/model/feature_encoder.hpp"
#include "mtrec/model/multitask.hpp"
#include "mtrec/train/checkpoint.hpp"
#include "mtrec/train/evaluate.hpp"
#include "mtrec/train/metrics.hpp"
#include "mtrec/train/optimizer.hpp"
#include "mtrec/train/trainer.hpp"
#include "mtrec/serve/retrieval.hpp"
#include "mtrec/serve/serving.hpp"
#include "mtrec/serve/topk.hpp"
#include "mtrec/io/csv.hpp"
#include "mtrec/data/synthetic.hpp"
#include "mtrec/model/tabular.hpp"
