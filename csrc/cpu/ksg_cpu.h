// Torch-free CPU kernels of the Kraskov–Stögbauer–Grassberger (KSG) mutual-information estimator
// (Phys. Rev. E 69, 066138, 2004), algorithms 1 and 2, max-norm, no added noise. Raw pointers in,
// raw pointers out; the caller owns the memory and supplies the parallel loop.
//
// For paired rows (x_i, y_i), i < n, with ||.|| the max-norm and the joint distance
// max(||x_i - x_j||, ||y_i - y_j||) (= the max-norm of the concatenated rows [x, y]):
//
//   variant 1: eps_i  = joint distance from i to its k-th nearest other row
//              n_x(i) = #{j != i : ||x_i - x_j|| <  eps_i},  n_y(i) likewise
//              I      = psi(k) + psi(n) - mean_i [psi(n_x(i) + 1) + psi(n_y(i) + 1)]
//   variant 2: eps_x(i) = max ||x_i - x_j|| over the k joint nearest neighbours j of i
//              (the paper's eps_x(i)/2), eps_y(i) likewise
//              n_x(i) = #{j != i : ||x_i - x_j|| <= eps_x(i)},  n_y(i) likewise
//              I      = psi(k) - 1/k + psi(n) - mean_i [psi(n_x(i)) + psi(n_y(i))]
//
// Pass 1 is the k-nearest-neighbour search of kl_cpu.h (p = inf on [x, y]; ties broken by the
// lower index, which decides the neighbour set of variant 2 when the k-th distance is tied), or,
// in low dimension, an exact sweep with the same keys, tie rule and results (KsgPath below).
// Pass 2 is a range count over each marginal. Every distance is fl(|a - b|) maxed over the
// coordinates, in the input's precision, in both passes, so the comparisons are exact on the
// same numbers. Memory: O(n (dx + dy + k)); nothing of size n x n.
#pragma once

#include <cstdint>

#include "kl_cpu.h"

namespace eae {
namespace cpu {

// How a pass runs. Both give bit-identical results; kAuto picks the faster for the shape.
//   kTiled: every pair, in SIMD register tiles (O(n^2 d) work; wins in high dimension).
//   kSweep: rows sorted by their first coordinate; a row's candidates are a contiguous window of
//           that order, found by binary search (counts) or by walking outwards until the gap in
//           the first coordinate exceeds the current k-th distance (search). Exact, because
//           fl(|a - b|) is monotone in b and the max-norm is at least the first coordinate's gap.
//           O(n log n) for d = 1 counts; wins whenever the windows are small (low dimension).
enum class KsgPath : int { kAuto = 0, kTiled = 1, kSweep = 2 };

// counts[i] = #{j != i, j < n : max_c |z_i[c] - z_j[c]| < radius[i]}   (inclusive: <= radius[i])
//   z: (n, d) row-major, contiguous, finite; radius: (n,) finite. Requires n >= 1, d >= 1.
template <class T>
void range_count_linf(const T* z, int64_t n, int64_t d, const T* radius, bool inclusive,
                      int64_t* counts, const ParallelFor& pfor, KsgPath path = KsgPath::kAuto);

// The KSG estimate (variant 1 or 2, see above) of the n paired rows x (n, dx), y (n, dy), both
// row-major and contiguous, in nats. Requires n > k >= 1, dx, dy >= 1. NaN when a value of x or
// y is NaN or inf. When nx/ny are not null the counts n_x(i), n_y(i) are written to them (n,).
template <class T>
double ksg_mutual_information(const T* x, const T* y, int64_t n, int64_t dx, int64_t dy,
                              int64_t k, int variant, int64_t* nx, int64_t* ny,
                              const ParallelFor& pfor, KsgPath path = KsgPath::kAuto);

}  // namespace cpu
}  // namespace eae
