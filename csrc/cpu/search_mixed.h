// The certified low-precision L2 neighbour search ("mixed" search): a 16-bit integer candidate
// pass with a rigorous error bound, then exact re-measurement of the candidates with the exact
// kernel's own arithmetic, so that keys and indices are bit-identical to the exact search (ties
// included).
//
//   1. Centre the rows (z - mu, in double) and quantise them with one scale alpha to integers:
//      q_j = round((z_j - mu) / alpha), |q| <= qmax = floor(sqrt((2^31 - 1) / (4 d))) (2047 at
//      d = 128), so that every sum below fits int32. The quantised squared distance
//      I_ij = |q_i - q_j|^2 = |q_i|^2 + |q_j|^2 - 2 q_i.q_j is an exact integer (AVX512_VNNI
//      vpdpwssd: 32 int16 products per instruction, int32 accumulation, no rounding), so
//      s_ij = alpha sqrt(I_ij) is the exact distance between the quantised rows.
//   2. Each row's quantisation error delta_j = |(z_j - mu) - alpha q_j| is measured (not
//      estimated) in double. By the triangle inequality the true distance r_ij = |z_i - z_j|
//      lies in [s_ij - delta_i - delta_j, s_ij + delta_i + delta_j].
//   3. The exact kernel's key K_ij is the float sum over c of (z_jc - z_ic)^2 with one rounded
//      subtraction and one FMA per coordinate. The subtraction's rounding enters squared
//      ((1 + u)^2 on each term, u = 2^-24; a subnormal difference is exact), each of the d FMAs
//      rounds a sum of non-negative terms by a relative u, or by at most 2^-150 absolute when
//      the sum is subnormal. Hence
//          (1 - u)^(d+2) r^2 - d 2^-149  <=  K_ij  <=  (1 + u)^(d+2) r^2 + d 2^-149
//      (no overflow: the plan refuses data whose keys could exceed the float range).
//   4. Row i tracks the k-th smallest I over the columns seen so far (self excluded). Those k
//      columns have K <= T_i = key_upper(I_k), so the row's exact k-th key is <= T_i, and every
//      column of the exact top-k (ties included) has K <= T_i, i.e. I <= reach(T_i). Columns
//      with I <= reach(T_i) are the candidates; as T_i only falls, filtering the list by the
//      final threshold is still a superset of the exact top-k. The exact top-k of the candidates
//      (same keys, same (key, index) order) is then the exact top-k of all columns.
//
// A separate reference set (x searched among y): x and y are centred by the same mu and
// quantised with the same alpha, so steps 1-4 hold unchanged with z_i a query row of x and z_j a
// reference row of y; delta_i is the query row's error, and delta_max (step 4) is taken over the
// reference rows only. Nothing is excluded as "self" (y == x copies tie at distance 0 and keep
// the lower index, as in the exact kernel).
//
// All bound arithmetic is done in double with a relative safety margin that exceeds the
// accumulated double rounding of the few operations involved (each at most 2^-53).
// A few far outlier rows ("wild" rows) are set aside: the step is chosen without them, every row
// re-measures them exactly, and they are searched by the exact kernel. A row block whose
// candidate lists overflow (near-duplicates, clusters much tighter than the quantisation step)
// is searched again by the exact kernel; see search_mixed.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kl_cpu.h"
#include "search.h"

namespace eae {
namespace cpu {

// Constants of the bound for one call (see the derivation above).
struct MixedBound {
  double alpha;      // quantisation step: x ~ alpha * q
  double delta_max;  // max_j delta_j over the reference rows that take part in the integer pass
  double grow;       // >= (1 + u)^(d+2)
  double shrink;     // <= (1 - u)^(d+2)
  double underflow;  // >= d * 2^-149, the absolute underflow error of the exact key
};

// Relative margin covering the double rounding of the few operations in the functions below.
constexpr double kBoundMargin = 1.0 + 0x1p-40;

// An upper bound on the exact key K_ij of any pair with quantised squared distance I, for a row
// with quantisation error delta_i (the column's delta is bounded by delta_max).
static inline double mixed_key_upper(double I, double delta_i, const MixedBound& b) {
  const double rho = b.alpha * std::sqrt(I) + delta_i + b.delta_max;  // >= r_ij
  return (rho * rho * b.grow + b.underflow) * kBoundMargin;
}

// A lower bound on K_ij from the pair's own I and both quantisation errors.
static inline double mixed_key_lower(double I, double delta_i, double delta_j, const MixedBound& b) {
  const double r = b.alpha * std::sqrt(I) / kBoundMargin - delta_i - delta_j;  // <= r_ij
  if (r <= 0) return -b.underflow;
  return r * r * b.shrink / kBoundMargin - b.underflow;
}

// The largest quantised squared distance I of a pair (with row error delta_i) whose exact key
// can be <= T: columns with a larger I cannot enter a top-k whose k-th key is <= T.
static inline double mixed_reach(double T, double delta_i, const MixedBound& b) {
  const double r = std::sqrt((T + b.underflow) / b.shrink) * kBoundMargin;  // >= r_ij
  const double s = (r + delta_i + b.delta_max) / b.alpha * kBoundMargin;   // >= sqrt(I_ij)
  return s * s * kBoundMargin;
}

// mixed_reach(mixed_key_upper(I, delta_i), delta_i) in one square root, as the kernel evaluates
// it: with rho = alpha sqrt(I) + delta_i + delta_max, sqrt(a + b) <= sqrt(a) + sqrt(b) gives
//   sqrt((T + underflow) / shrink) <= rho sqrt(grow / shrink) + sqrt(2 underflow / shrink)
// (margins folded in), so reach <= (sqrt(I) G + c_i)^2 with
//   G = sqrt(grow / shrink) and c_i = ((delta_i + delta_max) (G + 1) + sqrt(2 underflow / shrink)) / alpha.
// mixed_fast_reach_slope gives G and mixed_fast_reach_offset c_i, both rounded up.
static inline double mixed_fast_reach_slope(const MixedBound& b) {
  return std::sqrt(b.grow / b.shrink) * kBoundMargin * kBoundMargin * kBoundMargin;
}
static inline double mixed_fast_reach_offset(double delta_i, const MixedBound& b) {
  const double g = mixed_fast_reach_slope(b);
  const double h = std::sqrt(2.0 * b.underflow / b.shrink) * kBoundMargin * kBoundMargin;
  return ((delta_i + b.delta_max) * (g + 1.0) + h) / b.alpha * kBoundMargin * kBoundMargin;
}
static inline double mixed_fast_reach(double I, double slope, double offset) {
  const double s = std::sqrt(I) * slope + offset;
  return s * s * kBoundMargin;
}

// Everything the integer kernel reads. Query rows are searched against reference rows; when the
// two sets are the same, query row i is reference row i + self_offset and is skipped as its own
// neighbour (self_offset < 0: separate sets, nothing skipped).
struct MixedPlan {
  int64_t n_ref, d, k;
  int64_t d2;                 // coordinates rounded up to a multiple of 2 (zero padded)
  const int16_t* ref_panels;  // [panel][d2/2][kMixedPanel][2] q of the reference rows
  const int32_t* ref_norm;    // [panel * kMixedPanel + w] |q_j|^2 (padding columns: INT32_MAX)
  const int16_t* query_q;     // [query][d2] q of the query rows
  const int32_t* query_norm;  // [query] |q_i|^2
  const double* query_delta;  // [query] delta_i
  const double* query_reach;  // [query] mixed_fast_reach_offset(delta_i)
  const uint8_t* query_wild;  // [query] 1: an outlier row, left to the exact kernel by the caller
  const uint64_t* ref_live;   // [panel] bit w set when column panel * kMixedPanel + w takes part
  const int32_t* ref_wild;    // [num_wild] outlier reference rows, re-measured for every row
  int64_t num_wild;
  MixedBound bound;
  double reach_slope;         // mixed_fast_reach_slope
  int64_t self_offset;
  int64_t capacity;           // candidate list entries per query row
  // Exact re-measurement: the original float rows, exactly as the exact kernel reads them.
  const float* query_rows;    // [query][d]
  const float* ref_rows;      // [n_ref][d]
};

// Per-query-row scratch and outputs for one block of rows (rows [0, count) of the block).
struct MixedBlock {
  int64_t first_query, count;  // query rows first_query ... first_query + count - 1 (count <= kMixedRowBlock)
  int32_t* cand;               // [count][capacity] candidate column indices
  int32_t* cand_y;             // [count][capacity] their y = I - |q_i|^2
  int32_t* approx_top;         // [count][k] the k smallest y seen, ascending
  float* keys;                 // [count][k] exact top-k lists, initialised to (+inf, n_ref)
  int64_t* idx;
};

// Columns per integer panel (3 registers of 16 int32 lanes) and query rows per block.
constexpr int64_t kMixedPanel = 48;
constexpr int64_t kMixedRowBlock = 128;

namespace avx512vnni {
// The block's top-k lists by the certified integer pass and exact re-measurement; returns false
// (top-k lists untouched) when a row's candidate list overflowed: the caller then runs the exact
// kernel on the block.
bool mixed_search_block(const MixedPlan& plan, const MixedBlock& block);
// One row of the quantisation (search_mixed.cpp, quantise_rows) in AVX-512: q_c = an integer near
// (row_c - centre_c) / alpha clamped to +-qmax, written to q (d values); returns through the
// pointers sum_c (x_c - alpha q_c)^2, sum_c x_c^2 (x_c = row_c - centre_c, in double) and sum q_c^2.
void quantise_row(const float* row, const double* centre, int64_t d, double alpha, double qmax, int16_t* q,
                  double* err2, double* x2, int64_t* q2);
}  // namespace avx512vnni

// Whether this CPU can run the integer kernel (AVX-512 F/BW/VL and VNNI).
bool mixed_search_supported();

// The search mode requested by EAE_KERNELS_SEARCH (read on every call): "exact", "mixed" or
// "auto" (the default, also for unknown values).
enum class SearchMode { Auto, Exact, Mixed };
SearchMode search_mode_from_env();

// The mixed search of the query rows `rows` of args (the self search, args.exclude_self, or the
// search among a separate reference set whose args.n rows, row-major, are reference_rows),
// writing the same keys and indices as exact.search_rows(args, ...); args, keys and idx as
// search_pass prepares them (float, L2). Returns false, having written nothing, when the mixed
// path is not wanted (EAE_KERNELS_SEARCH, the auto rule) or not applicable (CPU, ISA, non-finite
// or extreme values, sizes): the caller then runs the exact search.
bool knn_search_mixed(const SearchArgs<float>& args, const float* reference_rows,
                      const SearchKernel<float>& exact, RowRange rows, const ParallelFor& pfor);

// The quantised rows and their plan (the arrays the plan points to), as knn_search_mixed builds
// them; exposed for the bound's test. Query arrays are indexed by query row, reference arrays by
// reference row (in the self case both describe the same rows).
struct MixedData {
  std::vector<int16_t> q, ref_q;  // [row][d2] quantised query / reference rows (ref_*: cross search only)
  std::vector<int32_t> norm;      // [query] |q_i|^2
  std::vector<double> delta, ref_delta, reach;
  std::vector<uint8_t> is_wild;   // [query]
  std::vector<int16_t> panels;    // the reference rows packed for the kernel (outliers zeroed)
  std::vector<int32_t> ref_norm, wild;
  std::vector<uint64_t> live;
  MixedPlan plan;
};
// Centres and quantises the query rows x (nx, d) and the reference rows y (ny, d) with one
// centre and one step, and fills *out; y == nullptr is the self search (y = x, a row never its
// own neighbour). False when the values or sizes are out of the mixed search's range (all rows
// equal, keys that could overflow float, d > 16384, n * d >= 2^31).
bool build_mixed_data(const float* x, int64_t nx, const float* y, int64_t ny, int64_t d, int64_t k,
                      const ParallelFor& pfor, MixedData* out);

// Counters since start-up, for tests and benchmarks: calls that took the mixed path, and their
// row blocks searched by the integer pass or by the exact kernel (fallback).
struct MixedStats {
  int64_t calls, mixed_blocks, exact_blocks;
};
MixedStats mixed_search_stats();

}  // namespace cpu
}  // namespace eae
