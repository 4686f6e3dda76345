// Shared by the CPU binding (bindings.cpp) and the CUDA binding (cuda/bindings_cuda.cpp).
#pragma once

#include <ATen/ATen.h>

#include "core/kl_math.h"
#include "cpu/kl_cpu.h"

#ifndef EAE_WITH_CUDA
#define EAE_WITH_CUDA 0
#endif

namespace eae {

// Checks z (2-D floating, N > k, d >= 1), k >= 1 and p in {1, 2, inf}; returns the norm.
Norm check_args(const at::Tensor& z, int64_t k, double p);

// The row range [row_begin, row_end) of the kl_entropy op (row_end = -1 means N), checked.
cpu::RowRange check_row_range(const at::Tensor& z, int64_t row_begin, int64_t row_end);

// float32 for half inputs (float16, bfloat16), else the input type.
at::ScalarType accumulation_type(at::ScalarType t);

}  // namespace eae
