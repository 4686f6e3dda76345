// The search kernel compiled for AVX-512 (16 float lanes); chosen at run time when the CPU has it.
#include "search.h"

#if defined(EAE_HAVE_X86_KERNELS)
#include <immintrin.h>

#define EAE_ISA avx512
#define EAE_ISA_AVX512
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")
// GCC 12 warns about the undefined upper lanes inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "search_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
