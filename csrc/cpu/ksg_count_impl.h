// The max-norm range-count kernel of the KSG estimator, written once with GCC/Clang vector
// extensions and compiled once per instruction set: ksg_cpu.cpp includes this file (no include
// guard) three times, inside namespaces avx512, avx2 and generic, each under its own target
// pragma. Like search_impl.h it must not instantiate standard-library templates (an inline copy
// compiled for AVX-512 could be picked by the linker for generic callers): everything here is
// static or in the per-ISA namespace, built from plain operators.
//
// Work mapping: rows in blocks of kCountRowBlock (one task owns a range of blocks, the block's
// rows stay in L1); for each block, stream the column panels (PW = lanes x kCountCols columns,
// all d coordinates, packed by the driver) and compute a kCountRows x PW tile of max-norm
// distances in registers:
//
//   for c in 0..d:  col[q] = panel[c][q*W : (q+1)*W]
//                   for r:  acc[r][q] = max(acc[r][q], |col[q] - z[i0 + r][c]|)
//
// then add (acc < radius_r) (or <=) to per-lane integer counters. Padding columns hold +inf and
// count only for an infinite radius (subtracted then); the row itself (distance exactly 0) is
// counted by the tile and subtracted at the end, so no lane needs an index test.
//
// Expects before inclusion: EAE_KSG_ISA (namespace name), EAE_KSG_VECTOR_BYTES, and the
// CountArgs / CountKernel types of ksg_cpu.cpp.

namespace EAE_KSG_ISA {

template <class T> struct CountLane;
template <> struct CountLane<float> { typedef int32_t I; };
template <> struct CountLane<double> { typedef int64_t I; };

template <class T>
struct CountSimd {
  static constexpr int W = EAE_KSG_VECTOR_BYTES / static_cast<int>(sizeof(T));
  typedef T V __attribute__((vector_size(EAE_KSG_VECTOR_BYTES)));
  typedef typename CountLane<T>::I I;
  typedef I IV __attribute__((vector_size(EAE_KSG_VECTOR_BYTES)));
};

// Distances of RR rows (i0...) to one panel's PW columns, compared with the rows' radii.
template <class T, bool kInclusive, int RR>
static inline __attribute__((always_inline)) void count_tile(
    const CountArgs<T>& a, int64_t i0, int64_t panel_index, const T* radius,
    typename CountSimd<T>::IV (*cnt)[kCountCols]) {
  typedef typename CountSimd<T>::V V;
  typedef typename CountSimd<T>::IV IV;
  constexpr int W = CountSimd<T>::W, PW = W * kCountCols;
  const int64_t d = a.d;
  const T* rows = a.rows + i0 * d;
  const T* panel = a.panels + panel_index * d * PW;
  const V zero = {};

  V acc[RR][kCountCols];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < kCountCols; ++q) acc[r][q] = zero;

  for (int64_t c = 0; c < d; ++c) {
    V col[kCountCols];
#pragma GCC unroll 8
    for (int q = 0; q < kCountCols; ++q) __builtin_memcpy(&col[q], panel + c * PW + q * W, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const V x = zero + rows[r * d + c];
#pragma GCC unroll 8
      for (int q = 0; q < kCountCols; ++q) {
        const V diff = col[q] - x;
        const V dist = diff < zero ? -diff : diff;
        acc[r][q] = acc[r][q] > dist ? acc[r][q] : dist;
      }
    }
  }

#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r) {
    const V rad = zero + radius[r];
#pragma GCC unroll 8
    for (int q = 0; q < kCountCols; ++q)
      cnt[r][q] -= kInclusive ? (IV)(acc[r][q] <= rad) : (IV)(acc[r][q] < rad);  // true = -1
  }
}

template <class T, bool kInclusive>
static void count_rows_impl(const CountArgs<T>& a, int64_t begin, int64_t end, int64_t* counts) {
  typedef typename CountSimd<T>::IV IV;
  constexpr int W = CountSimd<T>::W, PW = W * kCountCols, RR = kCountRows;
  const int64_t num_panels = (a.n + PW - 1) / PW;
  IV cnt[kCountRowBlock][kCountCols];
  for (int64_t block = begin; block < end; block += kCountRowBlock) {
    const int64_t block_end = (block + kCountRowBlock < end) ? block + kCountRowBlock : end;
    const int64_t rows_in_block = block_end - block;
    const IV izero = {};
    for (int64_t r = 0; r < rows_in_block; ++r)
      for (int q = 0; q < kCountCols; ++q) cnt[r][q] = izero;
    for (int64_t p = 0; p < num_panels; ++p) {
      int64_t i0 = block;
      for (; i0 + RR <= block_end; i0 += RR)
        count_tile<T, kInclusive, RR>(a, i0, p, a.radius + i0, cnt + (i0 - block));
      for (; i0 < block_end; ++i0)
        count_tile<T, kInclusive, 1>(a, i0, p, a.radius + i0, cnt + (i0 - block));
    }
    for (int64_t r = 0; r < rows_in_block; ++r) {
      int64_t total = 0;
      for (int q = 0; q < kCountCols; ++q)
        for (int l = 0; l < W; ++l) total += cnt[r][q][l];
      const T rad = a.radius[block + r];
      const bool self_counted = kInclusive ? (T(0) <= rad) : (T(0) < rad);
      // The +inf padding columns are within an infinite radius (inclusive): a finite-data
      // distance overflows to inf when coordinates are near the largest float.
      const bool padding_counted = kInclusive && rad == static_cast<T>(__builtin_inf());
      counts[block + r] = total - (self_counted ? 1 : 0) - (padding_counted ? num_panels * PW - a.n : 0);
    }
  }
}

template <class T>
static void count_rows(const CountArgs<T>& a, bool inclusive, int64_t begin, int64_t end,
                       int64_t* counts) {
  if (inclusive) count_rows_impl<T, true>(a, begin, end, counts);
  else count_rows_impl<T, false>(a, begin, end, counts);
}

const CountKernel<float>* count_kernel_f32() {
  static const CountKernel<float> kernel{CountSimd<float>::W * kCountCols, &count_rows<float>};
  return &kernel;
}
const CountKernel<double>* count_kernel_f64() {
  static const CountKernel<double> kernel{CountSimd<double>::W * kCountCols, &count_rows<double>};
  return &kernel;
}

}  // namespace EAE_KSG_ISA
