// The search kernel compiled for AVX2 + FMA (8 float lanes); chosen at run time when the CPU has
// it and lacks AVX-512.
#include "search.h"

#if defined(EAE_HAVE_X86_KERNELS)
#include <immintrin.h>

#define EAE_ISA avx2
#define EAE_ISA_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#include "search_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
