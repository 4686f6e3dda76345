// The integer candidate kernel of the mixed search (see search_mixed.h for the method and the
// bound), compiled for AVX-512 with VNNI and chosen at run time when the CPU has it.
//
// Why 16-bit integers and not bf16 (AVX512_BF16 vdpbf16ps): measured on an Intel Xeon with both,
// one vdpbf16ps (32 products) issues at a quarter of the FMA rate, so a bf16 dot product is no
// faster than the exact kernel's subtract + FMA per pair and coordinate. vpdpwssd issues at the
// full FMA rate with 32 products (4x the exact kernel's pairs x coordinates per instruction), its
// int32 accumulation is exact (the bound has no accumulation term), and 11-12 bits per
// coordinate keep the candidate band narrow. (int8 vpdpbusd is twice as fast per instruction,
// but its quantisation error made the band, and so the exact refinement, several times wider
// in high dimension: slower overall.)
//
// Work mapping (like search_impl.h): a block of query rows streams the reference panels; a tile
// of ROWS query rows x 48 columns is accumulated in ROWS x 3 int32 registers:
//
//   for each pair g of coordinates:  col[c] = panel[g][c*16 : c*16+16][0:2]   (int16)
//                                    x_r = broadcast(q_i[g : g+2])            (int16 pair)
//                                    acc[r][c] = vpdpwssd(acc[r][c], x_r, col[c])
//
// so acc = q_i.q_j and y = |q_j|^2 - 2 acc = I_ij - |q_i|^2. The tile compares y against the row's
// threshold (one instruction per register); the rare hits go to the row's candidate list.
#include "search_mixed.h"

#if defined(EAE_HAVE_X86_KERNELS)
#include <immintrin.h>

#include <cstring>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace eae {
namespace cpu {
namespace avx512vnni {
namespace {

constexpr int W = 16, COLS = 3, PW = W * COLS;
constexpr int ROWS = 8;
static_assert(PW == kMixedPanel, "panel width");
constexpr int32_t kNoThreshold = 2147483647;  // every lane is a candidate
constexpr int32_t kNoCandidate = -2147483647 - 1;  // below every y (|y| < 2^31 - 1)

// The per-row state of one block.
struct Rows {
  const MixedPlan& p;
  const MixedBlock& b;
  int32_t thr[kMixedRowBlock];   // candidate threshold on y
  int64_t count[kMixedRowBlock]; // candidate list lengths
};

// The threshold on y for block row r: every column whose y is above it is provably outside the
// row's exact top-k (search_mixed.h, step 4).
int32_t threshold_for(const Rows& s, int64_t r) {
  const int64_t k = s.p.k;
  const int32_t ykth = s.b.approx_top[r * k + k - 1];
  if (ykth == kNoThreshold) return kNoThreshold;  // fewer than k columns seen
  const int64_t q = s.b.first_query + r;
  const double norm = static_cast<double>(s.p.query_norm[q]);
  const double reach = mixed_fast_reach(static_cast<double>(ykth) + norm, s.p.reach_slope,
                                        s.p.query_reach[q]);
  const double t = __builtin_floor(reach) - norm;
  return t >= 2147483647.0 ? kNoThreshold : static_cast<int32_t>(t);
}

// Keeps the candidates whose y is within the row's current threshold; returns the new length.
int64_t compact(const Rows& s, int64_t r) {
  const int64_t cap = s.p.capacity;
  int32_t* cand = s.b.cand + r * cap;
  int32_t* cand_y = s.b.cand_y + r * cap;
  const int32_t t = s.thr[r];
  int64_t m = 0;
  for (int64_t e = 0; e < s.count[r]; ++e)
    if (cand_y[e] <= t) { cand[m] = cand[e]; cand_y[m] = cand_y[e]; ++m; }
  return m;
}

uint64_t lanes_within(const __m512i* y, int32_t t) {
  const __m512i tv = _mm512_set1_epi32(t);
  uint64_t mask = 0;
  for (int q = 0; q < COLS; ++q)
    mask |= static_cast<uint64_t>(_mm512_cmple_epi32_mask(y[q], tv)) << (q * W);
  return mask;
}

// Adds the hits of one row's tile to its candidate list; false when the list overflows.
bool add_candidates(Rows& s, int64_t r, int64_t panel, const __m512i* y, uint64_t mask) {
  const MixedPlan& p = s.p;
  const int64_t k = p.k, cap = p.capacity;
  const int64_t first = panel * PW;
  mask &= p.ref_live[panel];  // padding and outlier columns never take part
  const int64_t self = p.self_offset >= 0 ? s.b.first_query + r + p.self_offset - first : -1;
  if (self >= 0 && self < PW) mask &= ~(uint64_t{1} << self);
  if (!mask) return true;
  const int64_t hits = __builtin_popcountll(mask);
  if (s.count[r] + hits > cap) {
    s.count[r] = compact(s, r);
    if (s.count[r] > cap / 2 || s.count[r] + hits > cap) return false;  // band too wide here
  }
  // Append the hits in column order (vector compress), then merge the ones below the k-th
  // smallest y into the approximate top-k.
  int32_t* cand = s.b.cand + r * cap;
  int32_t* cand_y = s.b.cand_y + r * cap;
  const __m512i lane_ids = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int c = 0; c < COLS; ++c) {
    const __mmask16 m = static_cast<__mmask16>(mask >> (c * W));
    if (!m) continue;
    const __m512i j = _mm512_add_epi32(lane_ids, _mm512_set1_epi32(static_cast<int32_t>(first + c * W)));
    _mm512_mask_compressstoreu_epi32(cand + s.count[r], m, j);
    _mm512_mask_compressstoreu_epi32(cand_y + s.count[r], m, y[c]);
    s.count[r] += __builtin_popcount(m);
  }
  int32_t* top = s.b.approx_top + r * k;
  const __m512i kth = _mm512_set1_epi32(top[k - 1]);
  uint64_t better = 0;
  for (int c = 0; c < COLS; ++c)
    better |= static_cast<uint64_t>(_mm512_cmplt_epi32_mask(y[c], kth)) << (c * W);
  better &= mask;
  if (!better) return true;
  int32_t ys[PW];
  for (int c = 0; c < COLS; ++c) _mm512_storeu_si512(ys + c * W, y[c]);
  while (better) {
    const int32_t yj = ys[__builtin_ctzll(better)];
    better &= better - 1;
    if (yj >= top[k - 1]) continue;
    int64_t pos = k - 1;
    while (pos > 0 && yj < top[pos - 1]) { top[pos] = top[pos - 1]; --pos; }
    top[pos] = yj;
  }
  // Once per tile: this tile's hits were filtered with the old threshold (still a superset).
  s.thr[r] = threshold_for(s, r);
  return true;
}

// The y values of RR query rows (block rows r0...) against one panel; collects the candidates.
template <int RR>
bool tile(Rows& s, int64_t r0, int64_t panel) {
  const MixedPlan& p = s.p;
  const int64_t d2 = p.d2;
  const int16_t* rows = p.query_q + (s.b.first_query + r0) * d2;
  const int16_t* pan = p.ref_panels + panel * d2 * PW;

  __m512i acc[RR][COLS];
  for (int r = 0; r < RR; ++r)
    for (int c = 0; c < COLS; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t g = 0; g < d2; g += 2) {
    __m512i col[COLS];
    for (int c = 0; c < COLS; ++c) col[c] = _mm512_loadu_si512(pan + g * PW + c * 2 * W);
    for (int r = 0; r < RR; ++r) {
      int32_t pair;
      std::memcpy(&pair, rows + r * d2 + g, 4);
      const __m512i x = _mm512_set1_epi32(pair);
      for (int c = 0; c < COLS; ++c) acc[r][c] = _mm512_dpwssd_epi32(acc[r][c], x, col[c]);
    }
  }

  __m512i rv[COLS];
  for (int c = 0; c < COLS; ++c) rv[c] = _mm512_loadu_si512(p.ref_norm + panel * PW + c * W);
  for (int r = 0; r < RR; ++r) {
    __m512i y[COLS];
    for (int c = 0; c < COLS; ++c) y[c] = _mm512_sub_epi32(rv[c], _mm512_add_epi32(acc[r][c], acc[r][c]));
    const uint64_t mask = lanes_within(y, s.thr[r0 + r]);
    if (mask && !add_candidates(s, r0 + r, panel, y, mask)) return false;
  }
  return true;
}

// Exact keys of the row's candidates, computed exactly as the exact kernel does (search_impl.h:
// diff = z_j[c] - z_i[c], acc = fma(diff, diff, acc), c ascending, from acc = 0), 16 candidates
// at a time, merged into the row's top-k list with the same (key, index) order.
void refine(const MixedPlan& p, const MixedBlock& b, int64_t r, const int32_t* cand, int64_t m) {
  const int64_t d = p.d, k = p.k;
  const float* zi = p.query_rows + (b.first_query + r) * d;
  float* keys = b.keys + r * k;
  int64_t* idx = b.idx + r * k;
  const __m512i stride = _mm512_set1_epi32(static_cast<int32_t>(d));  // n_ref * d < 2^31
  for (int64_t s = 0; s < m; s += W) {
    const int lanes = static_cast<int>(m - s < W ? m - s : W);
    const __mmask16 live = static_cast<__mmask16>((1u << lanes) - 1u);
    const __m512i offset = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(live, cand + s), stride);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
      const __m512 col = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, offset, p.ref_rows + c, 4);
      const __m512 diff = _mm512_sub_ps(col, _mm512_set1_ps(zi[c]));
      acc = _mm512_fmadd_ps(diff, diff, acc);
    }
    float key[W];
    _mm512_storeu_ps(key, acc);
    for (int l = 0; l < lanes; ++l) topk_insert(keys, idx, static_cast<int>(k), key[l], cand[s + l]);
  }
}

}  // namespace

void quantise_row(const float* row, const double* centre, int64_t d, double alpha, double qmax, int16_t* q,
                  double* err2, double* x2, int64_t* q2) {
  const __m512d a = _mm512_set1_pd(alpha), inv_a = _mm512_set1_pd(1.0 / alpha);
  const __m512d hi = _mm512_set1_pd(qmax), lo = _mm512_set1_pd(-qmax);
  __m512d e2 = _mm512_setzero_pd(), xx = _mm512_setzero_pd(), qq = _mm512_setzero_pd();
  for (int64_t c = 0; c < d; c += 8) {
    // The last chunk masked: its missing lanes read 0 and add 0 to every sum.
    const __mmask8 m = d - c >= 8 ? __mmask8(0xff) : static_cast<__mmask8>((1u << (d - c)) - 1);
    const __m512d x = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, row + c)), _mm512_maskz_loadu_pd(m, centre + c));
    __m512d qd = _mm512_roundscale_pd(_mm512_mul_pd(x, inv_a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    qd = _mm512_min_pd(hi, _mm512_max_pd(lo, qd));
    const __m512d e = _mm512_sub_pd(x, _mm512_mul_pd(a, qd));  // alpha * q is exact
    e2 = _mm512_fmadd_pd(e, e, e2);
    xx = _mm512_fmadd_pd(x, x, xx);
    qq = _mm512_fmadd_pd(qd, qd, qq);  // exact: integers below 2^53 in total
    _mm_mask_storeu_epi16(q + c, m, _mm256_cvtepi32_epi16(_mm512_cvtpd_epi32(qd)));
  }
  *err2 = _mm512_reduce_add_pd(e2);
  *x2 = _mm512_reduce_add_pd(xx);
  *q2 = static_cast<int64_t>(_mm512_reduce_add_pd(qq));
}

bool mixed_search_block(const MixedPlan& p, const MixedBlock& b) {
  Rows s{p, b, {}, {}};
  for (int64_t r = 0; r < b.count; ++r) {
    // An outlier query row takes no candidates (no y is that low): the caller searches it.
    s.thr[r] = p.query_wild[b.first_query + r] ? kNoCandidate : kNoThreshold;
    s.count[r] = 0;
    for (int64_t e = 0; e < p.k; ++e) b.approx_top[r * p.k + e] = kNoThreshold;
  }
  const int64_t num_panels = (p.n_ref + PW - 1) / PW;
  for (int64_t panel = 0; panel < num_panels; ++panel) {
    int64_t r0 = 0;
    for (; r0 + ROWS <= b.count; r0 += ROWS)
      if (!tile<ROWS>(s, r0, panel)) return false;
    for (; r0 < b.count; ++r0)
      if (!tile<1>(s, r0, panel)) return false;
  }
  for (int64_t r = 0; r < b.count; ++r) {
    if (p.query_wild[b.first_query + r]) continue;  // the caller searches it exactly
    s.count[r] = compact(s, r);  // the final threshold
    refine(p, b, r, b.cand + r * p.capacity, s.count[r]);
    // Outlier columns (never candidates above) are re-measured for every row, self excluded.
    const int64_t self = p.self_offset >= 0 ? b.first_query + r + p.self_offset : -1;
    int64_t m = 0;
    for (int64_t w = 0; w < p.num_wild; ++w)
      if (p.ref_wild[w] != self) b.cand[r * p.capacity + m++] = p.ref_wild[w];
    refine(p, b, r, b.cand + r * p.capacity, m);
  }
  return true;
}

}  // namespace avx512vnni
}  // namespace cpu
}  // namespace eae

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
