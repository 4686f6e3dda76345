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
template <class T>
struct SearchArgs {
  const T* rows;          // (n, d) row-major: all rows (the queries are rows first_row...)
  const T* panels;        // the same rows packed column-panel-major (see knn_search)
  const uint8_t* finite;  // (n,) 1 when the row's values are all finite
  int64_t n, d, k;
  Norm norm;
  int64_t first_row;      // keys/idx hold rows first_row, first_row + 1, ...
  T* keys;                // (rows, k) running top-k keys, initialised to (+inf, n)
  int64_t* idx;           // (rows, k) running top-k indices
};

template <class T>
struct SearchKernel {
  const char* name;
  int64_t panel_width;  // columns per packed panel (SIMD width x column registers)
  // Completes the top-k lists of rows [begin, end) against all n rows (begin >= first_row).
  void (*search_rows)(const SearchArgs<T>& args, int64_t begin, int64_t end);
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
