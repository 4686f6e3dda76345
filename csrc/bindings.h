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

// The set ops' checks (bindings.cpp). check_sets: x (B, M, d) floating with d >= 1, lengths (B,)
// int64 on x's device with values in [0, M]; returns the lengths copied to the CPU (undefined
// when absent). set_rows: set b's rows (lengths[b], or `full`). check_pair: y's B, d, dtype and
// device match x's. check_set_sizes: every set is large enough for the estimator and k.
at::Tensor check_sets(const at::Tensor& x, const c10::optional<at::Tensor>& lengths, const char* name);
int64_t set_rows(const at::Tensor& lengths, int64_t b, int64_t full);
Norm check_norm(double p);
void check_pair(const at::Tensor& x, const at::Tensor& y);
void check_set_sizes(Estimator est, const at::Tensor& lx, const at::Tensor& ly, int64_t sets,
                     int64_t mx, int64_t my, int64_t k);

}  // namespace eae
