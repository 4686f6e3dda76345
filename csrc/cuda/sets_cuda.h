// Torch-free CUDA kernels of the estimator family on batches of sets (see core/kl_math.h,
// estimate_spec, and ../bindings.cpp for the op semantics): the neighbour search of query rows
// x[b] among the other rows of x[b] (the self case, a row excluded by index) and/or among the rows
// of a separate reference set y[b]; the estimates built on it (entropy, cross-entropy, divergence,
// KoLeo) with their gradients for both inputs; and the batched k-nearest-neighbour search.
//
// Sets are stored padded, (B, mx, d) and (B, my, d) row-major, with optional device lengths (B,)
// int64; rows at or past a set's length are ignored and get a zero gradient. The whole batch runs
// in ONE launch of the search (grid over (set, block of 8 query rows)); with a gradient, sets of
// at most 1024 rows also compute values and gradients in that same launch (the fused path),
// larger ones in one more launch. Offsets are 64-bit; a set has fewer than 2^31 rows.
//
// The same keys, tie-break (lower index), non-finite rule and gradient roundings as the CPU
// kernels (cpu/kl_cpu.cpp, estimate): neighbours are identical, gradients are summed in the CPU's
// order (deterministic paths), values are summed in a fixed order (deterministic, equal to the
// CPU's to rounding).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../core/kl_math.h"

namespace eae {
namespace cuda {

struct SetsProblem {
  int64_t sets, mx, my, d, k;  // my: rows of y (cross searches); mx for self-only estimates
  Norm norm;
  double eps;
  Estimator est;
  bool cross_only;             // knn_sets with y: only the search among y (est unused)
  bool compute_grad;
  const int64_t* len_x;        // device (sets,) or null: all mx rows
  const int64_t* len_y;        // device (sets,) or null: all my rows
  int64_t row_begin, row_end;  // query rows of every set (KoLeo's row range; row_end -1: all)
  double constant, scale;      // every set's constant and scale, when estimate_sets gets no spec
};

// How an estimate runs (chosen per call; EAE_KERNELS_CUDA_PATH = atomic | gather forces one).
enum class SetsPath : int {
  kFused = 0,   // sets of <= 1024 rows: ONE launch (search blocks, then value and gradient blocks)
  kGather = 1,  // search launch, then a value + gradient launch (deterministic)
  kAtomic = 2,  // search launch scattering the gradient with float atomics, then a value launch
  kForward = 3, // values only: search launch, value launch (fused into one for small sets)
};

SetsPath sets_path(const SetsProblem& problem);

// Device workspace bytes for estimate_sets / knn_sets (256-byte aligned layout).
size_t sets_workspace_bytes(const SetsProblem& problem, bool is_double, bool knn);

// An estimate on every set.
//   x: (sets, mx, d); y: (sets, my, d) or null for the self-only estimators (Entropy, KoLeo).
//   spec: device (sets, 2) doubles: each set's constant and scale (estimate_spec, computed by the
//         caller from the set sizes); or null when all sets have the same sizes: then
//         problem.constant and problem.scale (no host-to-device copy: CUDA-graph capturable).
//   values: (sets,) output. grad_x (sets, mx, d), grad_y (sets, my, d): outputs or null (both null
//   when !compute_grad). nbr: (sets, mx) int64 self-search k-th neighbour (-1 padded), or null.
template <class T>
cudaError_t estimate_sets(const T* x, const T* y, const SetsProblem& problem, const double* spec,
                          T* values, T* grad_x, T* grad_y, int64_t* nbr, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

// knn on every set: dist, idx (sets, mx, k); y null: the self case. Padded query rows: 0 / -1.
template <class T>
cudaError_t knn_sets(const T* x, const T* y, const SetsProblem& problem, T* dist, int64_t* idx,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace eae
