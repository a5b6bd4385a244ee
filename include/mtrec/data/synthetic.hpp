// mtrec: the synthetic two-task regression data of the MMoE paper
// (Ma et al., KDD 2018, section 3.2), with a controlled task correlation.
//
//   u1, u2   orthogonal unit vectors in R^d
//   w1 = c u1,  w2 = c (p u1 + sqrt(1 - p^2) u2)      p: the correlation score
//   x ~ N(0, I_d)
//   y_k = w_k.x + sum_{i<m} sin(alpha_i w_k.x + beta_i) + eps_k,  eps_k ~ N(0, 0.01)
//
// The paper leaves alpha_i, beta_i as "given parameters"; here they are drawn
// once from N(0, 1) with the seed, so both tasks share the same sinusoids and
// differ only through w_k. With p = 1 the tasks are identical up to noise.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "mtrec/core/rng.hpp"
#include "mtrec/model/features.hpp"

namespace mtrec {

struct SyntheticSpec {
  index_t rows = 10000;
  index_t dim = 100;          // d
  double correlation = 0.5;   // p in [-1, 1]
  double scale = 1.0;         // c
  int sinusoids = 10;         // m
  double noise_std = 0.1;     // eps ~ N(0, noise_std^2); the paper's variance 0.01
  std::uint64_t seed = 0;     // the task definition (u1, u2, alpha, beta)
  std::uint64_t sample_seed = 1;  // the rows drawn
};

// A batch with one dense field "x" (dim d) and two regression labels.
template <class T>
inline Batch<T> make_mmoe_synthetic(const SyntheticSpec& s) {
  const char* op = "make_mmoe_synthetic";
  check(s.rows > 0 && s.dim >= 2, op, "expected rows > 0 and dim >= 2 but got rows=", s.rows, " dim=", s.dim);
  check(s.correlation >= -1 && s.correlation <= 1, op, "expected correlation in [-1, 1] but got ", s.correlation);
  const index_t d = s.dim;
  // u1, u2: Gram-Schmidt on two Gaussian vectors.
  RandomStream task(s.seed, 0x5A11);
  std::vector<double> u1(static_cast<std::size_t>(d)), u2(static_cast<std::size_t>(d));
  for (index_t i = 0; i < d; ++i) {
    u1[i] = task.normal(std::uint64_t(i));
    u2[i] = task.normal(std::uint64_t(d + i));
  }
  auto dot = [&](const std::vector<double>& a, const std::vector<double>& b) {
    double r = 0;
    for (index_t i = 0; i < d; ++i) r += a[i] * b[i];
    return r;
  };
  const double n1 = std::sqrt(dot(u1, u1));
  for (double& v : u1) v /= n1;
  const double proj = dot(u1, u2);
  for (index_t i = 0; i < d; ++i) u2[i] -= proj * u1[i];
  const double n2 = std::sqrt(dot(u2, u2));
  for (double& v : u2) v /= n2;
  std::vector<double> w1(u1), w2(static_cast<std::size_t>(d));
  const double p = s.correlation, q = std::sqrt(std::max(0.0, 1 - p * p));
  for (index_t i = 0; i < d; ++i) {
    w1[i] = s.scale * u1[i];
    w2[i] = s.scale * (p * u1[i] + q * u2[i]);
  }
  std::vector<double> alpha(static_cast<std::size_t>(s.sinusoids)), beta(static_cast<std::size_t>(s.sinusoids));
  for (int i = 0; i < s.sinusoids; ++i) {
    alpha[i] = task.normal(std::uint64_t(2 * d + i));
    beta[i] = task.normal(std::uint64_t(2 * d + s.sinusoids + i));
  }
  Batch<T> b;
  b.size = s.rows;
  b.dense.assign(1, std::vector<T>(static_cast<std::size_t>(s.rows * d)));
  b.labels.assign(2, std::vector<T>(static_cast<std::size_t>(s.rows)));
  b.label_mask.assign(2, {});
  RandomStream rows(s.sample_seed, 0xDA7A);
  for (index_t r = 0; r < s.rows; ++r) {
    double z1 = 0, z2 = 0;
    for (index_t i = 0; i < d; ++i) {
      const double x = rows.normal(std::uint64_t(r * (d + 2) + i));
      b.dense[0][r * d + i] = T(x);
      z1 += w1[i] * x;
      z2 += w2[i] * x;
    }
    double y1 = z1, y2 = z2;
    for (int i = 0; i < s.sinusoids; ++i) {
      y1 += std::sin(alpha[i] * z1 + beta[i]);
      y2 += std::sin(alpha[i] * z2 + beta[i]);
    }
    y1 += s.noise_std * rows.normal(std::uint64_t(r * (d + 2) + d));
    y2 += s.noise_std * rows.normal(std::uint64_t(r * (d + 2) + d + 1));
    b.labels[0][r] = T(y1);
    b.labels[1][r] = T(y2);
  }
  return b;
}

// The matching feature spec: one dense field "x" of width d.
inline FeatureSpec mmoe_synthetic_features(index_t dim) {
  FeatureSpec f;
  f.dense = {{"x", dim}};
  return f;
}

}  // namespace mtrec
