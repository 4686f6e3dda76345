// CUDA kernels of the estimator family on batches of sets (interface and guarantees: sets_cuda.h).
//
// Work mapping. One kernel, three roles, chosen per block:
//
//   search blocks   block s = (set b, block of 8 query rows); one warp per query row. Lane l
//                   measures candidates j = l, l + 32, ... of the set (exact sums, coordinates in
//                   ascending order: the CPU kernels' keys), keeps a sorted register top-K list
//                   (K in {1, 4, 16}; a list in global memory for k > 16), and the 32 lists are
//                   merged with xor shuffles. The row's epilogue then writes the knn outputs, or
//                   the k-th neighbour, its log term and its signed gradient weight per search
//                   (self, cross) to the workspace; the atomic path also scatters the gradient.
//   value blocks    one per set: the terms summed in a fixed order (deterministic).
//   gradient blocks one warp per row of x (then of y), over all sets: the row's own terms, then
//                   those of the query rows that chose it, found by scanning the set's neighbours
//                   in ascending row order: the CPU kernel's sums in the CPU kernel's order, no
//                   atomics, no sort.
//
// Fused path (every set <= 1024 rows): one launch; blocks take tickets, the first S search and the
// rest wait for the S searches, then compute values and gradients (a waiting block waits only for
// blocks with earlier tickets, which are running: no deadlock). Otherwise the search and the
// value/gradient blocks are two launches on the stream.
#include "sets_cuda.h"

#include <algorithm>
#include <cstring>

#include "gradient.cuh"
#include "host_util.h"
#include "kernel_params.cuh"
#include "ptx.cuh"
#include "row_epilogue.cuh"
#include "search_list.cuh"
#include "search_tile.cuh"
#include "static_switch.h"
#include "topk.cuh"

namespace eae {
namespace cuda {
namespace {

using namespace detail;

constexpr int kSetsFusedMaxRows = 1024;

template <class T>
struct SetParams {
  const T* x;  // (sets, mx, d)
  const T* y;  // (sets, my, d): reference sets of the cross search, or null
  int64_t sets;
  int mx, my, d, k;
  const int64_t* len_x;
  const int64_t* len_y;
  int row_begin, row_end;  // query rows of each set; row_end < 0: all
  bool self, cross;        // which searches run
  bool knn_mode;           // knn outputs (one search: self, or cross when y is given)
  bool koleo;              // KoLeo's term log(r + eps), else 0.5 log(r^2 + eps^2)
  bool atomic_grad;
  T self_sign, cross_sign;
  double eps;
  const double* spec;      // (sets, 2): constant, scale; or null: the same for every set
  double constant, scale;

  T* values;
  T* grad_x;
  T* grad_y;
  int64_t* nbr_out;  // (sets, mx)
  T* dist;           // knn: (sets, mx, k)
  int64_t* idx;

  // workspace, (sets, mx) each: k-th neighbour, signed gradient weight and log term per search
  int* nbr_s;
  T* w_s;
  double* term_s;
  int* nbr_c;
  T* w_c;
  double* term_c;
  T* list_key;  // k > 16: (sets, mx, k) running list
  int* list_idx;
  unsigned* counters;  // [0]: search blocks finished, [1]: next ticket (fused)

  int row_blocks;     // search blocks per set
  int search_blocks;  // sets * row_blocks
  int value_blocks;   // sets (0 for knn)
  int grad_x_blocks, grad_y_blocks;
  bool fused;
  int block_offset;  // role of blockIdx.x 0 (two-launch path)

  __device__ int rows_x(int64_t b) const { return len_x ? static_cast<int>(len_x[b]) : mx; }
  __device__ int rows_y(int64_t b) const { return len_y ? static_cast<int>(len_y[b]) : my; }
  __device__ double set_constant(int64_t b) const { return spec ? spec[2 * b] : constant; }
  __device__ double set_scale(int64_t b) const { return spec ? spec[2 * b + 1] : scale; }
  __device__ int query_end(int64_t b) const {
    const int m = rows_x(b);
    return row_end < 0 ? m : min(row_end, m);
  }
};

// ---- The search of one query row by one warp ----

// Register lists: lane l takes candidates l, l + 32, ...; the lists are merged at the end, so
// every lane holds the row's sorted top K.
template <class T, Norm N, int K>
__device__ void search_registers(const T* ref, int n, const T* q, int d, int exclude, int lane,
                                 TopK<T, K>& list) {
  list.reset(n);
  for (int j = lane; j < n; j += 32) {
    if (j == exclude) continue;
    const T* rj = ref + static_cast<int64_t>(j) * d;
    T key = T(0);
    for (int c = 0; c < d; ++c) key = accumulate<N>(key, rj[c] - q[c]);
    list.consider(key, j);
  }
  merge_group<32>(list);
}

// dv/dx_i += scale w dr(x_i, r_j) and dv/d(r_j) -= the same, with float atomics.
template <class T, Norm N>
__device__ void scatter_pair(T* gi, T* gj, const T* zi, const T* zj, int d, T w, T scale, int lane) {
  if constexpr (N == Norm::Linf) {
    const int c = group_argmax_abs_difference<32>(zi, zj, d, lane, true);
    if (lane == 0) {
      const T v = scale * (w * sign_of_difference(zi[c], zj[c]));
      atomicAdd(gi + c, v);
      atomicAdd(gj + c, -v);
    }
  } else {
    for (int c = lane; c < d; c += 32) {
      const T direction = N == Norm::L2 ? zi[c] - zj[c] : sign_of_difference(zi[c], zj[c]);
      const T v = scale * (w * direction);
      atomicAdd(gi + c, v);
      atomicAdd(gj + c, -v);
    }
  }
}

// The epilogue of query row r of set b for one search (ref: the set searched, n rows; slot s of
// the sorted list through get(s, &key, &j)). `cross`: the search among y.
template <class T, Norm N, class Get>
__device__ void finish_search(const SetParams<T>& p, int64_t b, int r, bool cross, const T* q, const T* ref,
                              int lane, const Get& get) {
  const int64_t g = b * p.mx + r;
  const int d = p.d;
  auto reported = [&](T key, int j) {  // the CPU's rule: NaN when either row is not finite
    if (isfinite(key)) return key;
    return (row_is_finite(q, 0, d) && row_is_finite(ref, j, d)) ? key : T(NAN);
  };
  if (p.knn_mode) {
    for (int s = lane; s < p.k; s += 32) {
      T key;
      int j;
      get(s, &key, &j);
      key = reported(key, j);
      p.dist[g * p.k + s] = N == Norm::L2 ? exact_sqrt(key) : key;
      p.idx[g * p.k + s] = j;
    }
    return;
  }
  T key;
  int j;
  get(p.k - 1, &key, &j);
  key = reported(key, j);
  const T eps_t = static_cast<T>(p.eps);
  const T sign = cross ? p.cross_sign : p.self_sign;
  double term;
  T w;
  if (p.koleo) {
    term = koleo_term(static_cast<double>(key), p.eps);
    w = isfinite(term) ? sign * koleo_gradient_weight(key, eps_t) : T(NAN);
  } else {
    term = log_distance_term(static_cast<double>(key), N, p.eps);
    w = isfinite(term) ? sign * gradient_weight(key, N, eps_t) : T(NAN);
  }
  if (lane == 0) {
    (cross ? p.nbr_c : p.nbr_s)[g] = j;
    (cross ? p.w_c : p.w_s)[g] = w;
    (cross ? p.term_c : p.term_s)[g] = term;
    if (!cross && p.nbr_out != nullptr) p.nbr_out[g] = j;
  }
  if (p.atomic_grad) {
    const T scale = static_cast<T>(p.set_scale(b));
    const int64_t set_x = b * p.mx * d;
    T* gj = cross ? p.grad_y + b * p.my * d : p.grad_x + set_x;
    scatter_pair<T, N>(p.grad_x + g * d, gj + static_cast<int64_t>(j) * d, q, ref + static_cast<int64_t>(j) * d,
                       d, w, scale, lane);
  }
}

// One search (self or cross) of query row r of set b, with the list kind K (0: global list).
template <class T, Norm N, int K>
__device__ void search_and_finish(const SetParams<T>& p, int64_t b, int r, bool cross, int lane) {
  const int d = p.d;
  const T* xb = p.x + b * p.mx * d;
  const T* ref = cross ? p.y + b * p.my * d : xb;
  const int n = cross ? p.rows_y(b) : p.rows_x(b);
  const int exclude = cross ? -1 : r;
  const T* q = xb + static_cast<int64_t>(r) * d;
  if constexpr (K > 0) {
    TopK<T, K> list;
    search_registers<T, N, K>(ref, n, q, d, exclude, lane, list);
    finish_search<T, N>(p, b, r, cross, q, ref, lane, [&](int s, T* key, int* j) { list.get(s, key, j); });
  } else {
    const int64_t o = (b * p.mx + r) * p.k;
    T* keys = p.list_key + o;
    int* idx = p.list_idx + o;
    search_global<T, N>(ref, n, q, d, exclude, p.k, keys, idx, lane);
    __syncwarp();
    finish_search<T, N>(p, b, r, cross, q, ref, lane, [&](int s, T* key, int* j) {
      *key = keys[s];
      *j = idx[s];
    });
    __syncwarp();  // the cross search reuses the list
  }
}

template <class T, Norm N, int K>
__device__ void search_block(const SetParams<T>& p, int s) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = s / p.row_blocks;
  const int r = p.row_begin + (s % p.row_blocks) * kWarps + warp;
  if (r < p.query_end(b)) {  // uniform in the warp
    if (p.self) search_and_finish<T, N, K>(p, b, r, false, lane);
    if (p.cross) search_and_finish<T, N, K>(p, b, r, true, lane);
  } else if (r < p.mx) {  // a padded row (or one outside the row range)
    const int64_t g = b * p.mx + r;
    if (p.knn_mode) {
      for (int t = lane; t < p.k; t += 32) {
        p.dist[g * p.k + t] = T(0);
        p.idx[g * p.k + t] = -1;
      }
    } else if (lane == 0) {
      if (p.self) p.term_s[g] = 0.0;
      if (p.cross) p.term_c[g] = 0.0;
      if (p.nbr_out != nullptr) p.nbr_out[g] = -1;
    }
  }
  if (p.fused) {
    __threadfence();  // this block's workspace writes, before the count
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(p.counters, 1u);
  }
}

// ---- Values and gradients ----

// Value of set b: constant + scale * (self_sign * sum term_s + cross_sign * sum term_c), each sum
// over the set's rows in a fixed order.
template <class T>
__device__ void value_block(const SetParams<T>& p, int64_t b) {
  __shared__ double red[2][kThreads];
  double s = 0.0, c = 0.0;
  const int64_t base = b * p.mx;
  const int q_end = p.query_end(b);
  for (int r = p.row_begin + threadIdx.x; r < q_end; r += kThreads) {
    if (p.self) s += __ldcg(p.term_s + base + r);
    if (p.cross) c += __ldcg(p.term_c + base + r);
  }
  red[0][threadIdx.x] = s;
  red[1][threadIdx.x] = c;
  __syncthreads();
#pragma unroll
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) {
      red[0][threadIdx.x] += red[0][threadIdx.x + width];
      red[1][threadIdx.x] += red[1][threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double sum = rn_add(rn_mul(static_cast<double>(p.self_sign), red[0][0]),
                              rn_mul(static_cast<double>(p.cross_sign), red[1][0]));
    p.values[b] = static_cast<T>(rn_add(p.set_constant(b), rn_mul(p.set_scale(b), sum)));
  }
}

// Row `row` of x (for_y false) or of y, flattened over the sets; one warp.
template <class T, Norm N>
__device__ void gradient_row(const SetParams<T>& p, int64_t row, bool for_y, int lane) {
  const int d = p.d;
  const int rows_per_set = for_y ? p.my : p.mx;
  const int64_t b = row / rows_per_set;
  const int i = static_cast<int>(row % rows_per_set);
  const int m = p.rows_x(b);
  const int n = for_y ? p.rows_y(b) : m;
  T* out = (for_y ? p.grad_y : p.grad_x) + row * d;
  const T* xb = p.x + b * p.mx * d;
  const T* zi = (for_y ? p.y + b * p.my * d : xb) + static_cast<int64_t>(i) * d;
  const int64_t set = b * p.mx;
  const int q_begin = p.row_begin, q_end = p.query_end(b);
  const bool own = !for_y && i >= q_begin && i < q_end;
  const T scale = static_cast<T>(p.set_scale(b));
  const int* chosen = for_y ? p.nbr_c : p.nbr_s;  // the neighbours whose choice of i counts
  const T* weights = for_y ? p.w_c : p.w_s;
  const bool scan = for_y ? p.cross : p.self;
  for (int c0 = 0; c0 < d; c0 += 32 * kGradCoords) {
    if (i >= n) {  // padded: zero
      for (int c = c0 + lane; c < min(d, c0 + 32 * kGradCoords); c += 32) out[c] = T(0);
      continue;
    }
    RowGradient<T, N> g(zi, d, c0, lane);
    if (own && p.self) g.add_row(xb + static_cast<int64_t>(__ldcg(p.nbr_s + set + i)) * d, __ldcg(p.w_s + set + i));
    if (scan) {
      for (int base = q_begin; base < q_end; base += 32) {
        const int r = base + lane;
        unsigned chose_i = __ballot_sync(kFullMask, r < q_end && __ldcg(chosen + set + r) == i);
        while (chose_i) {  // ascending r
          const int bit = __ffs(chose_i) - 1;
          chose_i &= chose_i - 1;
          g.add_row(xb + static_cast<int64_t>(base + bit) * d, __ldcg(weights + set + base + bit));
        }
      }
    }
    if (own && p.cross)
      g.add_row(p.y + b * p.my * d + static_cast<int64_t>(__ldcg(p.nbr_c + set + i)) * d, __ldcg(p.w_c + set + i));
    g.store(out, scale);
  }
}

template <class T, Norm N>
__device__ void finish_block(const SetParams<T>& p, int f) {
  if (p.fused) {
    if (threadIdx.x == 0) {
      while (load_acquire(p.counters) < static_cast<unsigned>(p.search_blocks)) __nanosleep(100);
      __threadfence();
    }
    __syncthreads();
  }
  if (f < p.value_blocks) return value_block(p, f);
  f -= p.value_blocks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool for_y = f >= p.grad_x_blocks;
  const int64_t row = static_cast<int64_t>(for_y ? f - p.grad_x_blocks : f) * kWarps + warp;
  if (row < p.sets * (for_y ? p.my : p.mx)) gradient_row<T, N>(p, row, for_y, lane);
}

template <class T, Norm N, int K>
__global__ void __launch_bounds__(kThreads, 1) sets_kernel(const __grid_constant__ SetParams<T> p) {
  __shared__ int s_ticket;
  int role = blockIdx.x + p.block_offset;
  if (p.fused) {
    if (threadIdx.x == 0) s_ticket = static_cast<int>(atomicAdd(p.counters + 1, 1u));
    __syncthreads();
    role = s_ticket;
  }
  if (role < p.search_blocks)
    search_block<T, N, K>(p, role);
  else
    finish_block<T, N>(p, role - p.search_blocks);
}

// ---- Host side ----

struct SetsPlan {
  SetsPath path = SetsPath::kForward;
  int capacity = 1;  // 0: global list
  size_t counters = 0, nbr_s = 0, w_s = 0, term_s = 0, nbr_c = 0, w_c = 0, term_c = 0;
  size_t list_key = 0, list_idx = 0, bytes = 0;
};

bool searches_self(const SetsProblem& pr, bool knn) {
  if (knn) return !pr.cross_only;
  return pr.est == Estimator::Entropy || pr.est == Estimator::Divergence || pr.est == Estimator::KoLeo;
}
bool searches_cross(const SetsProblem& pr, bool knn) {
  if (knn) return pr.cross_only;
  return pr.est == Estimator::CrossEntropy || pr.est == Estimator::Divergence;
}

SetsPath choose_sets_path(const SetsProblem& pr) {
  const bool small = pr.mx <= kSetsFusedMaxRows && pr.my <= kSetsFusedMaxRows;
  if (!pr.compute_grad) return SetsPath::kForward;
  if (env_is("EAE_KERNELS_CUDA_PATH", "atomic")) return SetsPath::kAtomic;
  if (env_is("EAE_KERNELS_CUDA_PATH", "gather")) return SetsPath::kGather;
  return small ? SetsPath::kFused : SetsPath::kGather;
}

SetsPlan plan_sets(const SetsProblem& pr, bool is_double, bool knn) {
  SetsPlan plan;
  plan.path = knn ? SetsPath::kForward : choose_sets_path(pr);
  plan.capacity = pr.k > kMaxRegisterK ? 0 : list_capacity(pr.k);
  const size_t scalar = is_double ? 8 : 4;
  const size_t rows = static_cast<size_t>(pr.sets * pr.mx);
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at += align_up(bytes);
    return offset;
  };
  plan.counters = take(2 * sizeof(unsigned));
  if (!knn) {
    if (searches_self(pr, knn)) {
      plan.nbr_s = take(rows * sizeof(int));
      plan.w_s = take(rows * scalar);
      plan.term_s = take(rows * sizeof(double));
    }
    if (searches_cross(pr, knn)) {
      plan.nbr_c = take(rows * sizeof(int));
      plan.w_c = take(rows * scalar);
      plan.term_c = take(rows * sizeof(double));
    }
  }
  if (plan.capacity == 0) {
    plan.list_key = take(rows * pr.k * scalar);
    plan.list_idx = take(rows * pr.k * sizeof(int));
  }
  plan.bytes = at;
  return plan;
}

template <class T>
SetParams<T> base_params(const T* x, const T* y, const SetsProblem& pr, const SetsPlan& plan, bool knn,
                         unsigned char* ws) {
  SetParams<T> p;
  std::memset(&p, 0, sizeof(p));
  p.x = x;
  p.y = y;
  p.sets = pr.sets;
  p.mx = static_cast<int>(pr.mx);
  p.my = static_cast<int>(pr.my);
  p.d = static_cast<int>(pr.d);
  p.k = static_cast<int>(pr.k);
  p.len_x = pr.len_x;
  p.len_y = pr.len_y;
  p.row_begin = static_cast<int>(pr.row_begin);
  p.row_end = static_cast<int>(pr.row_end);
  p.self = searches_self(pr, knn);
  p.cross = searches_cross(pr, knn);
  p.knn_mode = knn;
  p.eps = pr.eps;
  p.counters = reinterpret_cast<unsigned*>(ws + plan.counters);
  p.nbr_s = reinterpret_cast<int*>(ws + plan.nbr_s);
  p.w_s = reinterpret_cast<T*>(ws + plan.w_s);
  p.term_s = reinterpret_cast<double*>(ws + plan.term_s);
  p.nbr_c = reinterpret_cast<int*>(ws + plan.nbr_c);
  p.w_c = reinterpret_cast<T*>(ws + plan.w_c);
  p.term_c = reinterpret_cast<double*>(ws + plan.term_c);
  p.list_key = reinterpret_cast<T*>(ws + plan.list_key);
  p.list_idx = reinterpret_cast<int*>(ws + plan.list_idx);
  const int64_t query_rows = (pr.row_end < 0 ? pr.mx : pr.row_end) - pr.row_begin;
  p.row_blocks = static_cast<int>(std::max<int64_t>(1, (query_rows + kWarps - 1) / kWarps));
  p.search_blocks = static_cast<int>(pr.sets * p.row_blocks);
  return p;
}

template <class T>
void launch(const SetsPlan& plan, Norm norm, const SetParams<T>& p, int grid, cudaStream_t stream) {
  NORM_SWITCH(norm, N, [&] {
    if (plan.capacity == 0) {
      sets_kernel<T, N, 0><<<grid, kThreads, 0, stream>>>(p);
      return;
    }
    CAPACITY_SWITCH(plan.capacity, K, [&] { sets_kernel<T, N, K><<<grid, kThreads, 0, stream>>>(p); });
  });
}

}  // namespace

SetsPath sets_path(const SetsProblem& problem) { return choose_sets_path(problem); }

size_t sets_workspace_bytes(const SetsProblem& problem, bool is_double, bool knn) {
  return plan_sets(problem, is_double, knn).bytes;
}

template <class T>
cudaError_t estimate_sets(const T* x, const T* y, const SetsProblem& pr, const double* spec, T* values,
                          T* grad_x, T* grad_y, int64_t* nbr, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  if (pr.sets == 0) return cudaSuccess;
  const SetsPlan plan = plan_sets(pr, sizeof(T) == 8, false);
  if (workspace_bytes < plan.bytes) return cudaErrorInvalidValue;
  SetParams<T> p = base_params(x, y, pr, plan, false, static_cast<unsigned char*>(workspace));
  p.koleo = pr.est == Estimator::KoLeo;
  // The signs of the self and cross terms (the same for every set; constants and scales: spec).
  const EstimateSpec signs = estimate_spec(pr.est, 2, 2, pr.d, pr.k, pr.norm);
  p.self_sign = static_cast<T>(signs.self_sign);
  p.cross_sign = static_cast<T>(signs.cross_sign);
  p.spec = spec;
  p.constant = pr.constant;
  p.scale = pr.scale;
  p.values = values;
  p.grad_x = grad_x;
  p.grad_y = grad_y;
  p.nbr_out = nbr;
  p.atomic_grad = plan.path == SetsPath::kAtomic;
  p.value_blocks = static_cast<int>(pr.sets);
  const bool gather = plan.path == SetsPath::kFused || plan.path == SetsPath::kGather;
  if (gather) {
    p.grad_x_blocks = static_cast<int>((pr.sets * pr.mx + kWarps - 1) / kWarps);
    p.grad_y_blocks = p.cross ? static_cast<int>((pr.sets * pr.my + kWarps - 1) / kWarps) : 0;
  }
  const int finish_blocks = p.value_blocks + p.grad_x_blocks + p.grad_y_blocks;
  if (plan.path == SetsPath::kAtomic) {
    cudaMemsetAsync(grad_x, 0, pr.sets * pr.mx * pr.d * sizeof(T), stream);
    if (p.cross) cudaMemsetAsync(grad_y, 0, pr.sets * pr.my * pr.d * sizeof(T), stream);
  }
  const bool one_launch = plan.path == SetsPath::kFused ||
                          (plan.path == SetsPath::kForward && pr.mx <= kSetsFusedMaxRows && pr.my <= kSetsFusedMaxRows);
  if (one_launch) {
    p.fused = true;
    cudaMemsetAsync(p.counters, 0, 2 * sizeof(unsigned), stream);
    launch(plan, pr.norm, p, p.search_blocks + finish_blocks, stream);
  } else {
    launch(plan, pr.norm, p, p.search_blocks, stream);
    p.block_offset = p.search_blocks;
    launch(plan, pr.norm, p, finish_blocks, stream);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t knn_sets(const T* x, const T* y, const SetsProblem& pr, T* dist, int64_t* idx, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream) {
  if (pr.sets == 0 || pr.mx == 0) return cudaSuccess;
  const SetsPlan plan = plan_sets(pr, sizeof(T) == 8, true);
  if (workspace_bytes < plan.bytes) return cudaErrorInvalidValue;
  SetParams<T> p = base_params(x, y, pr, plan, true, static_cast<unsigned char*>(workspace));
  p.dist = dist;
  p.idx = idx;
  launch(plan, pr.norm, p, p.search_blocks, stream);
  return cudaGetLastError();
}

#define EAE_INSTANTIATE_SETS(T)                                                                          \
  template cudaError_t estimate_sets<T>(const T*, const T*, const SetsProblem&, const double*, T*, T*, T*, \
                                        int64_t*, void*, size_t, cudaStream_t);                          \
  template cudaError_t knn_sets<T>(const T*, const T*, const SetsProblem&, T*, int64_t*, void*, size_t,   \
                                   cudaStream_t);
EAE_INSTANTIATE_SETS(float)
EAE_INSTANTIATE_SETS(double)

}  // namespace cuda
}  // namespace eae
