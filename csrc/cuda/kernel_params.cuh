// The launch shape every kernel shares (256 threads), the size limits of the paths, and the
// parameters of every kernel of kl_cuda.cu (one struct, passed by value).
#pragma once

#include <cstdint>

namespace eae {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// The fused path (one launch): batch sizes of the paper's regime.
constexpr int kFusedMaxRows = 1024;
constexpr int kFusedMaxDim = 256;
// Gradient of one row by one warp: 32 lanes x kGradCoords coordinates per pass.
constexpr int kGradCoords = 8;
constexpr int kGradRowsPerBlock = 32;  // fused path: 8 warps x 4 rows
// Register lists hold up to this many neighbours; larger k uses the list search.
constexpr int kMaxRegisterK = 16;

// ---------------------------------------------------------------------------------------------
// Parameters of every kernel (passed by value)
// ---------------------------------------------------------------------------------------------

template <class T>
struct Params {
  const T* z;  // (n, d) row-major
  int n, d, k;
  int row_begin, m;   // query rows [row_begin, row_begin + m)
  bool vector_loads;  // z is 16-byte aligned and d a multiple of 16 / sizeof(T)
  bool knn_mode;      // knn epilogue (else kl_entropy)

  // knn outputs: (n, k) each
  T* dist;
  int64_t* idx;

  // kl_entropy
  double eps;
  double scale;     // d / n
  double constant;  // psi(n) - psi(k) + log V, or 0 when row_begin > 0
  T* h;             // 0-dim output
  T* grad;          // (n, d) output, or null
  int64_t* nbr_out; // (m,) output, or null
  bool atomic_grad; // epilogue scatters dh/dz with atomics (grad zeroed beforehand)
  bool save_rows;   // epilogue saves nbr32 / rows32 / weight for a later gradient pass
  int* nbr32;       // (m,) k-th neighbour of each query row
  int* rows32;      // (m,) 0, 1, ..., m-1: the values the radix sort carries
  T* weight;        // (m,) gradient weight of each query row
  double* partial;  // (search_blocks,) sum of the terms of each search block
  unsigned* counters;  // [0]: search blocks finished, [1]: next ticket (fused path)
  int search_blocks;   // S
  int grad_blocks;     // fused path: gradient blocks launched after the S search blocks, else 0

  // list search (k > 16): (m, k) running lists
  T* list_key;
  int* list_idx;
};

}  // namespace detail
}  // namespace cuda
}  // namespace eae
