// The interface between the ISA-independent driver (kl_cpu.cpp) and the search kernel, which is
// compiled once per instruction set (search_avx512.cpp, search_avx2.cpp, search_generic.cpp from
// the same search_impl.h) and picked at run time.
#pragma once

#include <cstdint>

#include "../core/kl_math.h"

namespace eae {
namespace cpu {

// Everything one call of the search kernel reads and writes. Plain data: the ISA-specific files
// must not instantiate standard-library templates (see search_impl.h).
//
// The query rows are searched among the n reference rows. In the self case the queries *are*
// the reference rows (queries == rows of the same set) and query i never takes reference row i
// (exclude_self); for a separate reference set every reference row is a candidate.
template <class T>
struct SearchArgs {
  const T* queries;             // query row i at queries + i * d (row-major, contiguous)
  const uint8_t* query_finite;  // query_finite[i]: 1 when query row i's values are all finite
  const T* panels;              // the n reference rows packed column-panel-major (see kl_cpu.cpp)
  const uint8_t* finite;        // (n,) 1 when the reference row's values are all finite
  int64_t n, d, k;
  Norm norm;
  bool exclude_self;            // query i skips reference row i (the self case)
  int64_t first_row;            // keys/idx hold query rows first_row, first_row + 1, ...
  T* keys;                      // (rows, k) running top-k keys, initialised to (+inf, n)
  int64_t* idx;                 // (rows, k) running top-k indices
  // Every query and reference value is finite and small enough that no key overflows (see
  // keys_cannot_overflow in kl_cpu.cpp): every real key is then finite, only the +inf padding
  // columns are not, which lets k = 1 take the running minimum instead of the general merge.
  bool bounded = false;
};

// The gradient of rows [begin, end) of a point set P (x, or y of a cross search) from the
// neighbour lists of a search pass: for row i (i' = i - own_first, own terms when 0 <= i' < own_count)
//   g_i = scale * ( self_weight[i'] dr(P_i, self_ref[self_nbr[i']])
//                 + sum_{q = rev_start[i]}^{rev_start[i + 1] - 1} rev_weight[rev[q]] dr(P_i, rev_ref[rev_first + rev[q]])
//                 + cross_weight[i'] dr(P_i, cross_ref[cross_nbr[i']]) ),
// the terms added in this order to zero, then scaled (the same roundings on every ISA). dr is the
// distance's gradient in the form the weights multiply (L2: a - b; L1: sign(a - b); Linf: sign
// at the lowest coordinate of largest |a - b|). A null self_ref / rev_start / cross_ref drops
// that term.
template <class T>
struct GradientArgs {
  const T* points;
  T* grad;                     // rows [begin, end) of the (rows, d) gradient are written
  int64_t d;
  Norm norm;
  T scale;
  int64_t own_first, own_count;
  const T* self_ref;
  const int64_t* self_nbr;
  const T* self_weight;
  const int64_t* rev_start;
  const int64_t* rev;
  const T* rev_weight;
  const T* rev_ref;
  int64_t rev_first;
  const T* cross_ref;
  const int64_t* cross_nbr;
  const T* cross_weight;
};

template <class T>
struct SearchKernel {
  const char* name;
  int64_t panel_width;  // columns per packed panel (SIMD width x column registers)
  // Completes the top-k lists of query rows [begin, end) against all n reference rows
  // (begin >= first_row).
  void (*search_rows)(const SearchArgs<T>& args, int64_t begin, int64_t end);
  // The key search_rows computes for one (query, reference) pair, with the same arithmetic bit
  // for bit (faster candidate searches re-measure their candidates with it).
  T (*exact_key)(const T* query, const T* reference, int64_t d, Norm norm);
  // Writes the gradient rows [begin, end) (see GradientArgs).
  void (*gradient_rows)(const GradientArgs<T>& args, int64_t begin, int64_t end);
};

#define EAE_DECLARE_SEARCH_KERNELS(isa)            \
  namespace isa {                                  \
  const SearchKernel<float>* kernel_f32();         \
  const SearchKernel<double>* kernel_f64();        \
  }

EAE_DECLARE_SEARCH_KERNELS(generic)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EAE_HAVE_X86_KERNELS 1
EAE_DECLARE_SEARCH_KERNELS(avx2)
EAE_DECLARE_SEARCH_KERNELS(avx512)
#endif

}  // namespace cpu
}  // namespace eae
