// mtrec: kernels over lists of table rows — the lazy (row-wise) optimizer
// updates, and the norms, checks and scalings of the touched rows.
//
// A RowSet (core/tensor.hpp) names the rows of one table inside a flat parameter block: row r
// of the set is the `dim` elements at offset + rows[r] * dim. One call covers
// every table (an array of sets), so the cpu versions fork once per step, not
// once per table. The rows of one set are distinct (a touched-row list).
#pragma once

#include <algorithm>
#include <cmath>

#include "mtrec/core/parallel.hpp"
#include "mtrec/core/tensor.hpp"
#include "mtrec/kernels/cpu.hpp"
#include "mtrec/kernels/device.hpp"
#include "mtrec/kernels/reference.hpp"

namespace mtrec {
namespace kernels {

namespace detail {
inline double row_set_elements(const RowSet* sets, index_t n_sets) {
  double e = 0;
  for (index_t s = 0; s < n_sets; ++s) e += double(sets[s].n) * double(sets[s].dim);
  return e;
}
// Calls fn(element offset, dim) for every row of every set; rows of all sets
// in one parallel region when `fork` (rows are disjoint: order is irrelevant).
template <class Fn>
inline void for_each_row(const RowSet* sets, index_t n_sets, bool fork, Fn&& fn) {
  auto body = [&](bool worksharing) {
    for (index_t s = 0; s < n_sets; ++s) {
      const RowSet& rs = sets[s];
      if (worksharing) {
        MTREC_OMP(for schedule(static) nowait)
        for (index_t i = 0; i < rs.n; ++i) fn(rs.offset + rs.rows[i] * rs.dim, rs.dim);
      } else {
        for (index_t i = 0; i < rs.n; ++i) fn(rs.offset + rs.rows[i] * rs.dim, rs.dim);
      }
    }
  };
  if (fork && num_threads() > 1 && !in_parallel_region()) {
    MTREC_OMP(parallel)
    body(true);
  } else {
    body(false);
  }
}
}  // namespace detail

// ---- reference ----------------------------------------------------------------

// adam_update (kernels/reference.hpp) on every listed row; returns true when
// every updated weight is finite.
template <class T>
inline bool adam_update_rows(reference_t, T* w, T* m, T* v, const T* g, const RowSet* sets, index_t n_sets,
                             const AdamStep<T>& st) {
  bool finite = true;
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i) {
      const index_t o = sets[s].offset + sets[s].rows[i] * sets[s].dim;
      finite &= adam_update(reference, w + o, m + o, v + o, g + o, sets[s].dim, st);
    }
  return finite;
}

// sgd_update on every listed row (buf may be null when momentum == 0).
template <class T>
inline bool sgd_update_rows(reference_t, T* w, T* buf, const T* g, const RowSet* sets, index_t n_sets, T lr,
                            T momentum, T weight_decay, bool nesterov) {
  bool finite = true;
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i) {
      const index_t o = sets[s].offset + sets[s].rows[i] * sets[s].dim;
      finite &= sgd_update(reference, w + o, buf ? buf + o : nullptr, g + o, sets[s].dim, lr, momentum, weight_decay,
                           nesterov);
    }
  return finite;
}

// Sum of x^2 over every listed row, in double, sets and rows in order.
template <class T>
inline double sum_squares_rows(reference_t, const T* x, const RowSet* sets, index_t n_sets) {
  double acc = 0;
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i)
      acc += sum_squares(reference, x + sets[s].offset + sets[s].rows[i] * sets[s].dim, sets[s].dim);
  return acc;
}

// x *= alpha on every listed row.
template <class T>
inline void scale_rows(reference_t, T* x, const RowSet* sets, index_t n_sets, T alpha) {
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i) {
      T* r = x + sets[s].offset + sets[s].rows[i] * sets[s].dim;
      scale(reference, r, r, sets[s].dim, alpha);
    }
}

// x = value on every listed row.
template <class T>
inline void fill_rows(reference_t, T* x, const RowSet* sets, index_t n_sets, T value) {
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i) fill(reference, x + sets[s].offset + sets[s].rows[i] * sets[s].dim, sets[s].dim, value);
}

// True when every element of every listed row is finite.
template <class T>
inline bool all_finite_rows(reference_t, const T* x, const RowSet* sets, index_t n_sets) {
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i)
      if (!all_finite(reference, x + sets[s].offset + sets[s].rows[i] * sets[s].dim, sets[s].dim)) return false;
  return true;
}

// ---- cpu ------------------------------------------------------------------------

template <class T>
inline bool adam_update_rows(cpu_t, T* w, T* m, T* v, const T* g, const RowSet* sets, index_t n_sets,
                             const AdamStep<T>& st) {
  simd::FiniteFlag finite;
  detail::for_each_row(sets, n_sets, worth_forking_flops(16.0 * detail::row_set_elements(sets, n_sets)),
                       [&](index_t o, index_t dim) {
                         if (!adam_update(cpu, w + o, m + o, v + o, g + o, dim, st)) finite.clear();
                       });
  return finite.get();
}

template <class T>
inline bool sgd_update_rows(cpu_t, T* w, T* buf, const T* g, const RowSet* sets, index_t n_sets, T lr, T momentum,
                            T weight_decay, bool nesterov) {
  simd::FiniteFlag finite;
  detail::for_each_row(sets, n_sets, worth_forking_flops(8.0 * detail::row_set_elements(sets, n_sets)),
                       [&](index_t o, index_t dim) {
                         if (!sgd_update(cpu, w + o, buf ? buf + o : nullptr, g + o, dim, lr, momentum, weight_decay,
                                         nesterov))
                           finite.clear();
                       });
  return finite.get();
}

// Rows are summed in parts of ~16K elements whose bounds depend on the row
// count and dim only; the parts are added in order, so the result is the
// same bits for every thread count.
template <class T>
inline double sum_squares_rows(cpu_t, const T* x, const RowSet* sets, index_t n_sets) {
  constexpr index_t kBatch = 64;
  double total = 0;
  for (index_t s = 0; s < n_sets; ++s) {
    const RowSet& rs = sets[s];
    if (rs.n == 0) continue;
    const index_t per_part = std::max<index_t>(1, 16384 / std::max<index_t>(rs.dim, 1));
    const index_t n_parts = (rs.n + per_part - 1) / per_part;
    double partial[kBatch];
    for (index_t k0 = 0; k0 < n_parts; k0 += kBatch) {
      const index_t nk = std::min(kBatch, n_parts - k0);
      parallel_chunks(nk, 1, [&](index_t b, index_t e) {
        for (index_t k = b; k < e; ++k) {
          double acc = 0;
          const index_t i0 = (k0 + k) * per_part, i1 = std::min(rs.n, i0 + per_part);
          for (index_t i = i0; i < i1; ++i) acc += sum_squares(cpu, x + rs.offset + rs.rows[i] * rs.dim, rs.dim);
          partial[k] = acc;
        }
      });
      for (index_t k = 0; k < nk; ++k) total += partial[k];
    }
  }
  return total;
}

template <class T>
inline void scale_rows(cpu_t, T* x, const RowSet* sets, index_t n_sets, T alpha) {
  detail::for_each_row(sets, n_sets, worth_forking_flops(2.0 * detail::row_set_elements(sets, n_sets)),
                       [&](index_t o, index_t dim) { scale(cpu, x + o, x + o, dim, alpha); });
}

template <class T>
inline void fill_rows(cpu_t, T* x, const RowSet* sets, index_t n_sets, T value) {
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i) fill(cpu, x + sets[s].offset + sets[s].rows[i] * sets[s].dim, sets[s].dim, value);
}

template <class T>
inline bool all_finite_rows(cpu_t, const T* x, const RowSet* sets, index_t n_sets) {
  for (index_t s = 0; s < n_sets; ++s)
    for (index_t i = 0; i < sets[s].n; ++i)
      if (!all_finite(cpu, x + sets[s].offset + sets[s].rows[i] * sets[s].dim, sets[s].dim)) return false;
  return true;
}

}  // namespace kernels
}  // namespace mtrec
