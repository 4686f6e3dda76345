// Torch-free CPU kernels for the k-nearest-neighbour search and the fused Kozachenko–Leonenko
// entropy (value and gradient in one call). Raw pointers in, raw pointers out; the caller owns
// all memory and supplies the parallel loop (the PyTorch binding passes at::parallel_for, which
// runs on PyTorch's OpenMP pool and honours torch.set_num_threads).
//
// Memory: O(N*d + N*k) beyond the caller's buffers. Nothing of size N x N is ever allocated.
#pragma once

#include <cstdint>
#include <functional>

#include "../core/kl_math.h"

namespace eae {
namespace cpu {

// Runs body(begin, end) over chunks that cover [0, n); a chunk has at least `grain` items unless
// it is the last. Chunks may run concurrently.
using RangeFn = std::function<void(int64_t begin, int64_t end)>;
using ParallelFor = std::function<void(int64_t n, int64_t grain, const RangeFn& body)>;

// A ParallelFor that runs everything on the calling thread.
void serial_for(int64_t n, int64_t grain, const RangeFn& body);

// The rows [row_begin, row_end) of z whose terms an op computes: all rows, or one rank's share
// of a global batch (eae_kernels' distributed mode).
struct RowRange {
  int64_t begin, end;
};

// k nearest other rows of the rows in `rows`, searched among all n rows of z (the self case).
//   z:    (n, d) row-major, contiguous.
//   keys: (rows, k) out, ascending. Squared distance for L2, distance for L1 and Linf; NaN for a
//         row whose own values or whose neighbour's values are not all finite.
//   idx:  (rows, k) out, neighbour row indices; ties are broken by the lower index. Always in
//         [0, n).
// Requires n > k >= 1, d >= 1, 0 <= rows.begin <= rows.end <= n.
template <class T>
void knn_search(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, RowRange rows, T* keys,
                int64_t* idx, const ParallelFor& pfor);

// The general search: the k nearest rows of each query row x[rows] among the reference rows y
// (ny, d); y == nullptr is the self case (the reference rows are x's nx rows and query row i never
// takes row i). Outputs as above, indices in [0, ny). Requires ny >= k (cross) or nx > k (self).
template <class T>
void knn_search(const T* x, int64_t nx, RowRange rows, const T* y, int64_t ny, int64_t d,
                int64_t k, Norm norm, T* keys, int64_t* idx, const ParallelFor& pfor);

// The Kozachenko–Leonenko estimate (see core/kl_math.h) restricted to the terms of `rows`:
//
//   h = [0 in rows] * (psi(n) - psi(k) + log V) + (d / n) * sum_{i in rows} log term_i
//
// returned in double, so that the values of a partition of the rows sum to H (exactly one
// range of a partition holds row 0 and carries the constant; for all rows h is H). When `grad`
// is not null, dh/dz is written to grad (n, d) row-major (every row: the neighbour part reaches
// rows outside the range); when `nbr` is not null, each range row's k-th neighbour to nbr
// (rows,). Deterministic: the gradient's neighbour ("scatter") part is gathered per row from a
// reverse-neighbour list, never with atomics, so the result does not depend on the number of
// threads.
template <class T>
double kl_entropy(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, double eps,
                  RowRange rows, T* grad, int64_t* nbr, const ParallelFor& pfor);

// One estimate (core/kl_math.h, EstimateSpec) over one set: the query rows x[rows] of x (nx, d)
// are searched among x itself (spec.self_sign != 0) and among y (ny, d) (spec.cross_sign != 0),
// both searches in one parallel pass over the query rows. Returns the value in double; writes,
// when not null, d value / dx to grad_x (nx, d), d value / dy to grad_y (ny, d) (every row), and
// each query row's k-th neighbour to nbr_self / nbr_cross (rows,). Deterministic, no atomics.
template <class T>
double estimate(const T* x, int64_t nx, RowRange rows, const T* y, int64_t ny, int64_t d,
                int64_t k, Norm norm, double eps, const EstimateSpec& spec, T* grad_x, T* grad_y,
                int64_t* nbr_self, int64_t* nbr_cross, const ParallelFor& pfor);

// A batch of B sets, stored padded: set b's query rows are x[b] (mx rows of d), its reference
// rows y[b] (my rows; y == nullptr: the self case, y = x). Only the first len_x[b] (len_y[b]) rows
// of a set are used (len == nullptr: all); the others are ignored and get a zero gradient.
struct Batch {
  int64_t sets, mx, my, d;
  const int64_t* len_x;
  const int64_t* len_y;
  int64_t rows_x(int64_t b) const { return len_x ? len_x[b] : mx; }
  int64_t rows_y(int64_t b) const { return len_y ? len_y[b] : my; }
};

// knn_search on every set: keys, idx (B, mx, k); padded query rows get key 0 and index -1.
template <class T>
void knn_search_sets(const T* x, const T* y, const Batch& batch, int64_t k, Norm norm, T* keys,
                     int64_t* idx, const ParallelFor& pfor);

// `est` on every set (estimate_spec(est, len_x[b], len_y[b], ...)): values (B,) in double;
// grad_x (B, mx, d) and grad_y (B, my, d) when not null (padded rows: 0); nbr (B, mx) the self
// search's k-th neighbour when not null (padded rows: -1). Requires every set's sizes to be valid
// for `est` (the caller checks).
template <class T>
void estimate_sets(const T* x, const T* y, const Batch& batch, int64_t k, Norm norm, double eps,
                   Estimator est, double* values, T* grad_x, T* grad_y, int64_t* nbr,
                   const ParallelFor& pfor);

// The instruction set the search kernel uses: "avx512", "avx2" or "generic". The best one the
// CPU supports is chosen at start-up; set_isa() forces another (for tests and benchmarks) and
// returns false, changing nothing, when the name is unknown or the CPU lacks it.
const char* isa();
bool set_isa(const char* name);
bool isa_supported(const char* name);

}  // namespace cpu
}  // namespace eae
