// mtrec: counter-based random numbers.
//
// A random value is a pure function of (seed, stream, counter), so a stream
// can be consumed in any order by any number of threads and still give the
// same numbers: initialisation, dropout masks and shuffling all depend on the
// seed alone, never on the thread count.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

#include "mtrec/core/config.hpp"

namespace mtrec {

// Philox4x32-10 (Salmon et al., SC'11): 128-bit counter, 64-bit key.
struct Philox {
  using Block = std::array<std::uint32_t, 4>;

  static Block generate(std::uint64_t key, std::uint64_t ctr_hi, std::uint64_t ctr_lo) {
    std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
    std::uint32_t c0 = static_cast<std::uint32_t>(ctr_lo), c1 = static_cast<std::uint32_t>(ctr_lo >> 32);
    std::uint32_t c2 = static_cast<std::uint32_t>(ctr_hi), c3 = static_cast<std::uint32_t>(ctr_hi >> 32);
    for (int round = 0; round < 10; ++round) {
      const std::uint64_t p0 = std::uint64_t{0xD2511F53u} * c0;
      const std::uint64_t p1 = std::uint64_t{0xCD9E8D57u} * c2;
      const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1 ^ k0;
      const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3 ^ k1;
      c1 = static_cast<std::uint32_t>(p1);
      c3 = static_cast<std::uint32_t>(p0);
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    return {c0, c1, c2, c3};
  }
};

// 64-bit mixing (splitmix64 finaliser); used to derive keys and to hash IDs.
inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// 32-bit integer hash (lowbias32). Cheap enough to vectorise: the dropout
// kernels use it on (key ^ counter) so SIMD and scalar masks agree bit for bit.
MTREC_HD inline std::uint32_t hash32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// A named random stream. value i of the stream is a function of
// (seed, stream id, i) only.
class RandomStream {
 public:
  RandomStream(std::uint64_t seed, std::uint64_t stream) : key_(mix64(seed ^ mix64(stream))), stream_(stream) {}

  // Four independent 32-bit words for counter i.
  Philox::Block block(std::uint64_t i) const { return Philox::generate(key_, stream_, i); }
  // Uniform in [0, 1) with 24 random bits (exact in float).
  double uniform(std::uint64_t i) const { return (block(i)[0] >> 8) * (1.0 / 16777216.0); }
  // Standard normal by Box-Muller on one Philox block.
  double normal(std::uint64_t i) const {
    const auto b = block(i);
    const double u1 = ((b[0] >> 8) + 1.0) * (1.0 / 16777217.0);  // (0, 1]
    const double u2 = (b[1] >> 8) * (1.0 / 16777216.0);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // Uniform integer in [0, n) (n > 0) with 64 random bits and rejection-free
  // multiply-shift; the bias is below 2^-32 for n < 2^32.
  std::uint64_t below(std::uint64_t i, std::uint64_t n) const {
    const auto b = block(i);
    const std::uint64_t r = (std::uint64_t{b[0]} << 32) | b[1];
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(r) * n) >> 64);
  }
  std::uint64_t key() const { return key_; }

 private:
  std::uint64_t key_;
  std::uint64_t stream_;
};

// Seeded Fisher-Yates permutation of [0, n): the same for a given seed
// whatever the thread count.
template <class Index>
inline void shuffle_indices(Index* idx, std::uint64_t n, std::uint64_t seed, std::uint64_t stream = 0x5E1F) {
  RandomStream rs(seed, stream);
  for (std::uint64_t i = n; i > 1; --i) {
    const std::uint64_t j = rs.below(i, i);
    std::swap(idx[i - 1], idx[j]);
  }
}

}  // namespace mtrec
