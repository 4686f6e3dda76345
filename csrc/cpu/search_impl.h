// The CPU nearest-neighbour search kernel, written once over a small SIMD abstraction and
// compiled once per instruction set. Include it from exactly one .cpp per ISA, after defining
// EAE_ISA (the namespace: avx512, avx2 or generic) and enabling that ISA for the functions below
// (see search_avx512.cpp). It must not instantiate standard-library templates: an inline
// function compiled for AVX-512 could otherwise be picked by the linker for generic callers.
//
// Work mapping. Every query row i needs the k smallest distances to the reference rows (the other
// rows of its own set in the self case, see SearchArgs). The query rows are
// processed in blocks of kRowBlock rows (one thread owns a range of blocks). For each block, the
// kernel streams the packed column panels (PW = SIMD width x COLS columns, all d coordinates,
// see kl_cpu.cpp) and computes a ROWS x PW tile of distances held entirely in SIMD registers:
//
//   for c in 0..d:  col[q] = panel[c][q*W : (q+1)*W]          (COLS vector loads)
//                   for r: x = broadcast(z[i0 + r][c])         (ROWS broadcasts)
//                          acc[r][q] += (col[q] - x)^2         (ROWS*COLS sub + fma)
//
// i.e. exact sums of (a - b)^2, never ||a||^2 + ||b||^2 - 2ab. A vector compare of the tile
// against each row's current k-th key (one instruction per register) finds the rare candidates,
// which a scalar insertion (core/kl_math.h) merges into the row's sorted top-k list. Columns
// are visited in ascending order, so a later candidate with an equal key never displaces an
// earlier one: the lower index wins ties.
//
// Two specialisations of the merge, same results: k = 1 on bounded data takes a row's minimum
// over the tile (row_tile's Top1), and a whole small self set computes each pair once
// (search_small_self). The gradient rows (gradient_rows) are compiled here too, for the ISA's
// vector width.

#include "search.h"

namespace eae {
namespace cpu {
namespace EAE_ISA {

// ---- SIMD wrappers: R is one register of W lanes; ROWS x COLS is the register tile. ----

#if defined(EAE_ISA_AVX512)
struct VecF32 {
  using T = float;
  using R = __m512;
  static constexpr int W = 16, ROWS = 4, COLS = 3;
  static R zero() { return _mm512_setzero_ps(); }
  static R load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, R a) { _mm512_storeu_ps(p, a); }
  static R set1(T x) { return _mm512_set1_ps(x); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R abs(R a) { return _mm512_abs_ps(a); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  // bit l set where !(a[l] >= t[l]): below the threshold, or unordered (NaN)
  static uint64_t below(R a, R t) { return _mm512_cmp_ps_mask(a, t, _CMP_NGE_UQ); }
  static uint64_t equal(R a, R t) { return _mm512_cmp_ps_mask(a, t, _CMP_EQ_OQ); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  // lanes where a < b take x, the others y
  static R select_less(R a, R b, R x, R y) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x); }
  static T reduce_min(R a) { return _mm512_reduce_min_ps(a); }
  static R with_inf_at(R a, int lane) {
    return _mm512_mask_mov_ps(a, static_cast<__mmask16>(1u << lane), _mm512_set1_ps(INFINITY));
  }
};
struct VecF64 {
  using T = double;
  using R = __m512d;
  static constexpr int W = 8, ROWS = 4, COLS = 3;
  static R zero() { return _mm512_setzero_pd(); }
  static R load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, R a) { _mm512_storeu_pd(p, a); }
  static R set1(T x) { return _mm512_set1_pd(x); }
  static R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R abs(R a) { return _mm512_abs_pd(a); }
  static R max(R a, R b) { return _mm512_max_pd(a, b); }
  static uint64_t below(R a, R t) { return _mm512_cmp_pd_mask(a, t, _CMP_NGE_UQ); }
  static uint64_t equal(R a, R t) { return _mm512_cmp_pd_mask(a, t, _CMP_EQ_OQ); }
  static R min(R a, R b) { return _mm512_min_pd(a, b); }
  static R select_less(R a, R b, R x, R y) { return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, _CMP_LT_OQ), y, x); }
  static T reduce_min(R a) { return _mm512_reduce_min_pd(a); }
  static R with_inf_at(R a, int lane) {
    return _mm512_mask_mov_pd(a, static_cast<__mmask8>(1u << lane), _mm512_set1_pd(INFINITY));
  }
};
#elif defined(EAE_ISA_AVX2)
struct VecF32 {
  using T = float;
  using R = __m256;
  static constexpr int W = 8, ROWS = 4, COLS = 2;
  static R zero() { return _mm256_setzero_ps(); }
  static R load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, R a) { _mm256_storeu_ps(p, a); }
  static R set1(T x) { return _mm256_set1_ps(x); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R abs(R a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static uint64_t below(R a, R t) {
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_NGE_UQ)));
  }
  static uint64_t equal(R a, R t) {
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_EQ_OQ)));
  }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R select_less(R a, R b, R x, R y) { return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
  static T reduce_min(R a) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
  }
  static R with_inf_at(R a, int lane) {
    const __m256i hit = _mm256_cmpeq_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(lane));
    return _mm256_blendv_ps(a, _mm256_set1_ps(INFINITY), _mm256_castsi256_ps(hit));
  }
};
struct VecF64 {
  using T = double;
  using R = __m256d;
  static constexpr int W = 4, ROWS = 4, COLS = 2;
  static R zero() { return _mm256_setzero_pd(); }
  static R load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, R a) { _mm256_storeu_pd(p, a); }
  static R set1(T x) { return _mm256_set1_pd(x); }
  static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R abs(R a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static R max(R a, R b) { return _mm256_max_pd(a, b); }
  static uint64_t below(R a, R t) {
    return static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(a, t, _CMP_NGE_UQ)));
  }
  static uint64_t equal(R a, R t) {
    return static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(a, t, _CMP_EQ_OQ)));
  }
  static R min(R a, R b) { return _mm256_min_pd(a, b); }
  static R select_less(R a, R b, R x, R y) { return _mm256_blendv_pd(y, x, _mm256_cmp_pd(a, b, _CMP_LT_OQ)); }
  static T reduce_min(R a) {
    const __m128d m = _mm_min_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_min_sd(m, _mm_unpackhi_pd(m, m)));
  }
  static R with_inf_at(R a, int lane) {
    const __m256i hit = _mm256_cmpeq_epi64(_mm256_setr_epi64x(0, 1, 2, 3), _mm256_set1_epi64x(lane));
    return _mm256_blendv_pd(a, _mm256_set1_pd(INFINITY), _mm256_castsi256_pd(hit));
  }
};
#else
template <class TT>
struct VecScalar {
  using T = TT;
  using R = TT;
  static constexpr int W = 1, ROWS = 4, COLS = 4;
  static R zero() { return T(0); }
  static R load(const T* p) { return *p; }
  static void store(T* p, R a) { *p = a; }
  static R set1(T x) { return x; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R add(R a, R b) { return a + b; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R abs(R a) { return a < T(0) ? -a : a; }
  static R max(R a, R b) { return a > b ? a : b; }
  static uint64_t below(R a, R t) { return (a >= t) ? 0u : 1u; }
  static uint64_t equal(R a, R t) { return (a == t) ? 1u : 0u; }
  static R min(R a, R b) { return b < a ? b : a; }
  static R select_less(R a, R b, R x, R y) { return a < b ? x : y; }
  static T reduce_min(R a) { return a; }
  static R with_inf_at(R a, int /*lane*/) { return T(INFINITY); }
};
using VecF32 = VecScalar<float>;
using VecF64 = VecScalar<double>;
#endif

template <class T> struct VecOf;
template <> struct VecOf<float> { using type = VecF32; };
template <> struct VecOf<double> { using type = VecF64; };

// Rows processed together against one panel; their data and the panel stay in L1.
constexpr int64_t kRowBlock = 64;

template <class V, Norm N>
EAE_HD void accumulate(typename V::R& acc, typename V::R diff) {
  if (N == Norm::L2) acc = V::fma(diff, diff, acc);
  else if (N == Norm::L1) acc = V::add(acc, V::abs(diff));
  else acc = V::max(acc, V::abs(diff));
}

// The keys of RR query rows (row r at rows + r * d) to CC registers of panel columns (register q
// of coordinate c at panel + c * PW + q * W), in registers.
template <class V, Norm N, int RR, int CC>
EAE_HD void tile_keys(const typename V::T* rows, const typename V::T* panel, int64_t d,
                      typename V::R (&acc)[RR][CC]) {
  using R = typename V::R;
  constexpr int W = V::W, PW = V::W * V::COLS;
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < CC; ++q) acc[r][q] = V::zero();
  for (int64_t c = 0; c < d; ++c) {
    R col[CC];
#pragma GCC unroll 8
    for (int q = 0; q < CC; ++q) col[q] = V::load(panel + c * PW + q * W);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const R x = V::set1(rows[r * d + c]);
#pragma GCC unroll 8
      for (int q = 0; q < CC; ++q) accumulate<V, N>(acc[r][q], V::sub(col[q], x));
    }
  }
}

// The smallest key of one tile row (CC registers), its own column own_lane (when in [0, CC W))
// first set to +inf. Used by the k = 1 merges.
template <class V, int CC>
EAE_HD typename V::T row_minimum(typename V::R (&row)[CC], int64_t own_lane) {
  constexpr int W = V::W;
  if (own_lane >= 0 && own_lane < CC * W) {
#pragma GCC unroll 8
    for (int q = 0; q < CC; ++q)  // a constant register index keeps the row in registers
      if (own_lane / W == q) row[q] = V::with_inf_at(row[q], static_cast<int>(own_lane % W));
  }
  typename V::R m = row[0];
#pragma GCC unroll 8
  for (int q = 1; q < CC; ++q) m = V::min(m, row[q]);
  return V::reduce_min(m);
}

// The lowest lane of one tile row that holds key.
template <class V, int CC>
EAE_HD int lowest_lane(const typename V::R (&row)[CC], typename V::T key) {
  const typename V::R t = V::set1(key);
  uint64_t hit = 0;
#pragma GCC unroll 8
  for (int q = 0; q < CC; ++q) hit |= V::equal(row[q], t) << (q * V::W);
  return __builtin_ctzll(hit);
}

// The value a tile entry must be below to be a candidate for the row: the k-th key, or NaN while
// the list still has empty slots (NaN makes every lane a candidate).
template <class T>
EAE_HD T candidate_threshold(const T* keys, const int64_t* idx, int64_t k, int64_t n) {
  if (idx[k - 1] == n) return T(NAN);
  const T key = keys[k - 1];
  return key != key ? T(INFINITY) : key;
}

// Bit l set for each tile lane l (across the COLS registers of one row) below the threshold.
template <class V, int CC = V::COLS>
EAE_HD uint64_t candidate_lanes(const typename V::R* acc, typename V::T threshold) {
  const typename V::R t = V::set1(threshold);
  uint64_t mask = 0;
#pragma GCC unroll 8
  for (int q = 0; q < CC; ++q) mask |= V::below(acc[q], t) << (q * V::W);
  return mask;
}

// Distances of RR rows (i0..i0+RR-1) to the first CC * W columns of one panel (all PW columns
// but in the last panel, whose columns past n are +inf and need not be computed); merges the
// candidates. Top1: k = 1 on bounded data (SearchArgs::bounded), where a row's best lane of the
// tile is found by a vector minimum and merged once, instead of lane by lane.
template <class V, Norm N, bool Top1, int RR, int CC = V::COLS>
EAE_HD void row_tile(const SearchArgs<typename V::T>& a, int64_t i0, int64_t panel_index,
                     typename V::T* thr) {
  using T = typename V::T;
  using R = typename V::R;
  constexpr int W = V::W, PW = V::W * V::COLS;
  R acc[RR][CC];
  tile_keys<V, N, RR, CC>(a.queries + i0 * a.d, a.panels + panel_index * a.d * PW, a.d, acc);

  if constexpr (Top1) {
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      // Every real key is finite (bounded), padding columns are +inf and the row's own column
      // is set to +inf: a finite minimum is the best real candidate of the tile, and its lowest
      // lane its lowest index. It replaces the row's entry in topk_insert's (key, index) order.
      const int64_t i = i0 + r;
      const T best = row_minimum<V, CC>(acc[r], a.exclude_self ? i - panel_index * PW : -1);
      if (!(best < T(INFINITY)) || best > thr[r]) continue;  // thr[r] is NaN while the list is empty
      const int64_t j = panel_index * PW + lowest_lane<V, CC>(acc[r], best);
      int64_t* idx = a.idx + (i - a.first_row);
      if (best == thr[r] && *idx <= j) continue;
      a.keys[i - a.first_row] = best;
      *idx = j;
      thr[r] = best;
    }
    return;
  }

#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r) {
    uint64_t mask = candidate_lanes<V, CC>(acc[r], thr[r]);
    if (!mask) continue;

    // Rare path: merge each candidate lane, in ascending column order. Each insertion lowers
    // the threshold, so the remaining lanes are filtered again (cheap, in registers): this keeps
    // the first panels, where every lane starts as a candidate, from costing a scalar insertion
    // per lane.
    T tile[CC * W];
    for (int q = 0; q < CC; ++q) V::store(tile + q * W, acc[r][q]);
    const int64_t i = i0 + r;
    T* keys = a.keys + (i - a.first_row) * a.k;
    int64_t* idx = a.idx + (i - a.first_row) * a.k;
    while (mask) {
      const int lane = __builtin_ctzll(mask);
      mask &= mask - 1;
      const int64_t j = panel_index * PW + lane;
      if (j >= a.n || (j == i && a.exclude_self)) continue;
      const T key = (a.query_finite[i] && a.finite[j]) ? tile[lane] : T(NAN);
      if (topk_insert(keys, idx, a.k, key, j)) {
        thr[r] = candidate_threshold(keys, idx, a.k, a.n);
        mask &= candidate_lanes<V, CC>(acc[r], thr[r]);
      }
    }
  }
}

// All rows of one block against panel p, using its first CC registers of columns.
template <class V, Norm N, bool Top1, int CC>
EAE_HD void panel_rows(const SearchArgs<typename V::T>& a, int64_t block, int64_t block_end,
                       int64_t p, typename V::T* thr) {
  constexpr int RR = V::ROWS;
  int64_t i0 = block;
  for (; i0 + RR <= block_end; i0 += RR) row_tile<V, N, Top1, RR, CC>(a, i0, p, thr + (i0 - block));
  for (; i0 < block_end; ++i0) row_tile<V, N, Top1, 1, CC>(a, i0, p, thr + (i0 - block));
}

// The last panel with only its first `regs` registers of columns (regs <= V::COLS): at small n
// (a set of 100 rows fills 100 of the 144 columns of three AVX-512 float panels) this skips the
// all-+inf registers, a fifth of the work. The keys of the columns computed are unchanged.
template <class V, Norm N, bool Top1>
EAE_HD void last_panel_rows(const SearchArgs<typename V::T>& a, int64_t block, int64_t block_end,
                            int64_t p, int regs, typename V::T* thr) {
  if (V::COLS > 1 && regs == 1) return panel_rows<V, N, Top1, 1>(a, block, block_end, p, thr);
  if (V::COLS > 2 && regs == 2) return panel_rows<V, N, Top1, (V::COLS > 2 ? 2 : 1)>(a, block, block_end, p, thr);
  if (V::COLS > 3 && regs == 3) return panel_rows<V, N, Top1, (V::COLS > 3 ? 3 : 1)>(a, block, block_end, p, thr);
  panel_rows<V, N, Top1, V::COLS>(a, block, block_end, p, thr);
}

template <class V, Norm N, bool Top1>
void search_rows_blocks(const SearchArgs<typename V::T>& a, int64_t begin, int64_t end) {
  using T = typename V::T;
  constexpr int PW = V::W * V::COLS;
  const int64_t num_panels = (a.n + PW - 1) / PW;
  const int last_regs = static_cast<int>((a.n - (num_panels - 1) * PW + V::W - 1) / V::W);
  T thr[kRowBlock];
  for (int64_t block = begin; block < end; block += kRowBlock) {
    const int64_t block_end = (block + kRowBlock < end) ? block + kRowBlock : end;
    for (int64_t i = block; i < block_end; ++i)
      thr[i - block] = candidate_threshold(a.keys + (i - a.first_row) * a.k,
                                           a.idx + (i - a.first_row) * a.k, a.k, a.n);
    for (int64_t p = 0; p + 1 < num_panels; ++p)
      panel_rows<V, N, Top1, V::COLS>(a, block, block_end, p, thr);
    if (num_panels > 0) last_panel_rows<V, N, Top1>(a, block, block_end, num_panels - 1, last_regs, thr);
  }
}

template <class V, Norm N>
void search_rows_norm(const SearchArgs<typename V::T>& a, int64_t begin, int64_t end) {
  if (a.k == 1 && a.bounded) search_rows_blocks<V, N, true>(a, begin, end);
  else search_rows_blocks<V, N, false>(a, begin, end);
}

// ---- Small self sets, k = 1: each pair computed once ----
//
// The EAE and KoLeo shapes are many sets of a few hundred rows, each row searched for its nearest
// other row. The kernel above computes every distance twice there: d(i, j) for row i and d(j, i)
// for row j, equal bit for bit (the differences are negated exactly, then squared). This path
// takes the rows in blocks of W (one register of columns) and computes block b only against the
// columns of registers b, b + 1, ...: each tile's row minima update its rows (the row direction,
// as in row_tile) and its column minima update the rows of its columns (the column direction),
// except in the diagonal register, whose W x W distances all go the row direction. A row thus
// receives its candidates in ascending index (first as a column, from the blocks before its own;
// then as a row, from its own register on), so strict "<" updates keep the lower index on ties,
// the order of topk_insert. Needs bounded data (every real key finite, padding columns +inf).
constexpr int64_t kSymmetricMaxRows = 512;

template <class V, Norm N, int RR, int CC>
EAE_HD void symmetric_tile(const SearchArgs<typename V::T>& a, int64_t i0, int64_t panel_index, int q0,
                           int64_t diagonal_reg, typename V::T* best_key, typename V::T* best_idx) {
  using T = typename V::T;
  using R = typename V::R;
  constexpr int W = V::W, PW = V::W * V::COLS;
  const int64_t reg0 = panel_index * V::COLS + q0;  // the register (of W columns) of acc[.][0]
  R acc[RR][CC];
  tile_keys<V, N, RR, CC>(a.queries + i0 * a.d, a.panels + panel_index * a.d * PW + q0 * W, a.d, acc);

  // Column direction: the best of the RR rows for each column (the lowest row on ties), merged
  // into the columns' running best.
#pragma GCC unroll 8
  for (int q = 0; q < CC; ++q) {
    if (reg0 + q == diagonal_reg) continue;
    R best = acc[0][q];
    R row = V::set1(static_cast<T>(i0));
#pragma GCC unroll 8
    for (int r = 1; r < RR; ++r) {
      row = V::select_less(acc[r][q], best, V::set1(static_cast<T>(i0 + r)), row);
      best = V::select_less(acc[r][q], best, acc[r][q], best);
    }
    T* key = best_key + (reg0 + q) * W;
    T* idx = best_idx + (reg0 + q) * W;
    const R current = V::load(key);
    V::store(idx, V::select_less(best, current, row, V::load(idx)));
    V::store(key, V::select_less(best, current, best, current));
  }

  // Row direction, as in row_tile's Top1 merge (own column set to +inf).
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r) {
    const int64_t i = i0 + r;
    const T best = row_minimum<V, CC>(acc[r], i - reg0 * W);
    if (!(best < best_key[i])) continue;
    best_key[i] = best;
    best_idx[i] = static_cast<T>(reg0 * W + lowest_lane<V, CC>(acc[r], best));
  }
}

// Rows [r0, r1) of one block against CC registers of panel p from register q0 on.
template <class V, Norm N, int CC>
EAE_HD void symmetric_rows(const SearchArgs<typename V::T>& a, int64_t r0, int64_t r1, int64_t p, int q0,
                           int64_t diagonal_reg, typename V::T* best_key, typename V::T* best_idx) {
  constexpr int RR = V::ROWS;
  int64_t i0 = r0;
  for (; i0 + RR <= r1; i0 += RR) symmetric_tile<V, N, RR, CC>(a, i0, p, q0, diagonal_reg, best_key, best_idx);
  for (; i0 < r1; ++i0) symmetric_tile<V, N, 1, CC>(a, i0, p, q0, diagonal_reg, best_key, best_idx);
}

template <class V, Norm N>
void search_small_self(const SearchArgs<typename V::T>& a) {
  using T = typename V::T;
  constexpr int W = V::W, COLS = V::COLS, PW = W * COLS;
  const int64_t n = a.n, regs = (n + W - 1) / W;
  T best_key[kSymmetricMaxRows + PW], best_idx[kSymmetricMaxRows + PW];
  for (int64_t j = 0; j < regs * W; ++j) {
    best_key[j] = T(INFINITY);
    best_idx[j] = static_cast<T>(n);  // the empty slot (+inf, n)
  }
  for (int64_t b = 0; b < regs; ++b) {
    const int64_t r0 = b * W, r1 = (r0 + W < n) ? r0 + W : n;
    for (int64_t reg = b; reg < regs;) {  // from register b to the end of its panel, then by panel
      const int64_t p = reg / COLS;
      const int q0 = static_cast<int>(reg % COLS);
      const int64_t end = ((p + 1) * COLS < regs) ? (p + 1) * COLS : regs;
      const int cc = static_cast<int>(end - reg);
      if (COLS > 1 && cc == 1) symmetric_rows<V, N, 1>(a, r0, r1, p, q0, b, best_key, best_idx);
      else if (COLS > 2 && cc == 2) symmetric_rows<V, N, (COLS > 2 ? 2 : 1)>(a, r0, r1, p, q0, b, best_key, best_idx);
      else if (COLS > 3 && cc == 3) symmetric_rows<V, N, (COLS > 3 ? 3 : 1)>(a, r0, r1, p, q0, b, best_key, best_idx);
      else symmetric_rows<V, N, COLS>(a, r0, r1, p, q0, b, best_key, best_idx);
      reg = end;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    a.keys[i] = best_key[i];
    a.idx[i] = static_cast<int64_t>(best_idx[i]);
  }
}

template <class T>
void search_rows(const SearchArgs<T>& a, int64_t begin, int64_t end) {
  using V = typename VecOf<T>::type;
  // A whole small set searched from empty lists (the first_row == 0 lists of all n rows).
  if (a.exclude_self && a.k == 1 && a.bounded && a.first_row == 0 && begin == 0 && end == a.n &&
      a.n <= kSymmetricMaxRows) {
    switch (a.norm) {
      case Norm::L2: return search_small_self<V, Norm::L2>(a);
      case Norm::L1: return search_small_self<V, Norm::L1>(a);
      case Norm::Linf: return search_small_self<V, Norm::Linf>(a);
    }
  }
  switch (a.norm) {
    case Norm::L2: search_rows_norm<V, Norm::L2>(a, begin, end); break;
    case Norm::L1: search_rows_norm<V, Norm::L1>(a, begin, end); break;
    case Norm::Linf: search_rows_norm<V, Norm::Linf>(a, begin, end); break;
  }
}

// One pair's key with the tile's arithmetic: every lane of a broadcast register computes what the
// lane of the pair computes in row_tile (diff = reference - query, accumulated in order c = 0..d-1).
template <class V, Norm N>
typename V::T exact_key_norm(const typename V::T* query, const typename V::T* reference, int64_t d) {
  typename V::R acc = V::zero();
  for (int64_t c = 0; c < d; ++c) accumulate<V, N>(acc, V::sub(V::set1(reference[c]), V::set1(query[c])));
  typename V::T lanes[V::W];
  V::store(lanes, acc);
  return lanes[0];
}

template <class T>
T exact_key(const T* query, const T* reference, int64_t d, Norm norm) {
  using V = typename VecOf<T>::type;
  switch (norm) {
    case Norm::L2: return exact_key_norm<V, Norm::L2>(query, reference, d);
    case Norm::L1: return exact_key_norm<V, Norm::L1>(query, reference, d);
    case Norm::Linf: default: return exact_key_norm<V, Norm::Linf>(query, reference, d);
  }
}

// ---- The gradient rows (see GradientArgs) ----

// g (W coordinates from c) + weight * (a - b), each operation rounded once.
template <class V>
EAE_HD typename V::R add_scaled_difference(typename V::R g, typename V::R weight, const typename V::T* a,
                                            const typename V::T* b) {
  return V::add(g, V::mul(weight, V::sub(V::load(a), V::load(b))));
}

// L2: coordinates in register-wide chunks, each chunk's terms summed in a register (the same
// operations per coordinate as one pass per term).
template <class V>
EAE_HD void gradient_row_l2(const GradientArgs<typename V::T>& a, int64_t i) {
  using T = typename V::T;
  using R = typename V::R;
  constexpr int W = V::W;
  const int64_t d = a.d, own = i - a.own_first;
  const bool has_own = own >= 0 && own < a.own_count;
  const T* p = a.points + i * d;
  const T* self_b = (a.self_ref && has_own) ? a.self_ref + a.self_nbr[own] * d : nullptr;
  const T* cross_b = (a.cross_ref && has_own) ? a.cross_ref + a.cross_nbr[own] * d : nullptr;
  const int64_t q0 = a.rev_start ? a.rev_start[i] : 0, q1 = a.rev_start ? a.rev_start[i + 1] : 0;
  T* g = a.grad + i * d;
  int64_t c = 0;
  for (; c + W <= d; c += W) {
    R acc = V::zero();
    if (self_b) acc = add_scaled_difference<V>(acc, V::set1(a.self_weight[own]), p + c, self_b + c);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r = a.rev[q];
      acc = add_scaled_difference<V>(acc, V::set1(a.rev_weight[r]), p + c, a.rev_ref + (a.rev_first + r) * d + c);
    }
    if (cross_b) acc = add_scaled_difference<V>(acc, V::set1(a.cross_weight[own]), p + c, cross_b + c);
    V::store(g + c, V::mul(acc, V::set1(a.scale)));
  }
  for (; c < d; ++c) {
    T acc = T(0);
    if (self_b) acc = acc + a.self_weight[own] * (p[c] - self_b[c]);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r = a.rev[q];
      acc = acc + a.rev_weight[r] * (p[c] - a.rev_ref[(a.rev_first + r) * d + c]);
    }
    if (cross_b) acc = acc + a.cross_weight[own] * (p[c] - cross_b[c]);
    g[c] = acc * a.scale;
  }
}

// L1 and Linf: one pass per term (rare norms, kept simple).
template <class T, Norm N>
EAE_HD void add_sign_gradient(T* g, const T* a, const T* b, int64_t d, T weight) {
  if (N == Norm::L1) {
    for (int64_t c = 0; c < d; ++c) g[c] = g[c] + weight * sign_of_difference(a[c], b[c]);
    return;
  }
  int64_t m = 0;
  T best = a[0] > b[0] ? a[0] - b[0] : b[0] - a[0];
  for (int64_t c = 1; c < d; ++c) {
    const T v = a[c] > b[c] ? a[c] - b[c] : b[c] - a[c];
    if (v > best) { best = v; m = c; }
  }
  g[m] = g[m] + weight * sign_of_difference(a[m], b[m]);
}

template <class T, Norm N>
EAE_HD void gradient_row_sign(const GradientArgs<T>& a, int64_t i) {
  const int64_t d = a.d, own = i - a.own_first;
  const bool has_own = own >= 0 && own < a.own_count;
  const T* p = a.points + i * d;
  T* g = a.grad + i * d;
  for (int64_t c = 0; c < d; ++c) g[c] = T(0);
  if (a.self_ref && has_own) add_sign_gradient<T, N>(g, p, a.self_ref + a.self_nbr[own] * d, d, a.self_weight[own]);
  if (a.rev_start)
    for (int64_t q = a.rev_start[i]; q < a.rev_start[i + 1]; ++q) {
      const int64_t r = a.rev[q];
      add_sign_gradient<T, N>(g, p, a.rev_ref + (a.rev_first + r) * d, d, a.rev_weight[r]);
    }
  if (a.cross_ref && has_own) add_sign_gradient<T, N>(g, p, a.cross_ref + a.cross_nbr[own] * d, d, a.cross_weight[own]);
  for (int64_t c = 0; c < d; ++c) g[c] = g[c] * a.scale;
}

template <class T>
void gradient_rows(const GradientArgs<T>& a, int64_t begin, int64_t end) {
  using V = typename VecOf<T>::type;
  switch (a.norm) {
    case Norm::L2: for (int64_t i = begin; i < end; ++i) gradient_row_l2<V>(a, i); break;
    case Norm::L1: for (int64_t i = begin; i < end; ++i) gradient_row_sign<T, Norm::L1>(a, i); break;
    case Norm::Linf: for (int64_t i = begin; i < end; ++i) gradient_row_sign<T, Norm::Linf>(a, i); break;
  }
}

#define EAE_STRINGIFY2(x) #x
#define EAE_STRINGIFY(x) EAE_STRINGIFY2(x)

const SearchKernel<float>* kernel_f32() {
  static const SearchKernel<float> kernel{EAE_STRINGIFY(EAE_ISA), VecF32::W * VecF32::COLS,
                                          &search_rows<float>, &exact_key<float>, &gradient_rows<float>};
  return &kernel;
}
const SearchKernel<double>* kernel_f64() {
  static const SearchKernel<double> kernel{EAE_STRINGIFY(EAE_ISA), VecF64::W * VecF64::COLS,
                                           &search_rows<double>, &exact_key<double>, &gradient_rows<double>};
  return &kernel;
}

}  // namespace EAE_ISA
}  // namespace cpu
}  // namespace eae
