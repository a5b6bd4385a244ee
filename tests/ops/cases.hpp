// The whole op table: every cases_*.hpp, then the rows the layers' and losses'
// test files register (OPTABLE_REGISTER, ops/op_table.hpp), in one list.
#pragma once

#include "ops/cases_bf16.hpp"
#include "ops/cases_dense.hpp"
#include "ops/cases_embedding.hpp"
#include "ops/cases_loss.hpp"
#include "ops/cases_model.hpp"
#include "ops/cases_retrieval.hpp"
#include "ops/cases_sequence.hpp"

namespace optable {

inline std::vector<OpCase> all_cases() {
  std::vector<OpCase> all;
  for (auto part : {dense_cases, embedding_cases, sequence_cases, loss_cases, model_cases, retrieval_cases, bf16_cases, registered_cases}) {
    auto v = part();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

}  // namespace optable
