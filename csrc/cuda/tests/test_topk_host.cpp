// Host test of the CUDA search's building blocks (csrc/cuda/topk.cuh), compiled with the host
// compiler: no GPU needed. It checks the claims the kernels' correctness rests on:
//
//   1. TopK::consider keeps exactly the list the CPU kernel's topk_insert (core/kl_math.h) keeps,
//      on streams with ties, duplicates, NaN and +inf.
//   2. Splitting a row's candidates between the lanes of a row group exactly as the kernels do
//      (tiles of BN columns, lane tx owns columns tx + COL_THREADS * q), one TopK per lane, then
//      merging the lanes with the xor-shuffle butterfly of merge_group, gives every lane the
//      CPU's list (so the k-th neighbour, with its lower-index tie-break, is the CPU's).
//   3. accumulate<Norm> computes the CPU kernels' keys, and a NaN or inf anywhere makes the key
//      non-finite (NaN propagates through the Linf max, whatever its sign bit).
//   4. The tile maps cover every (row, column) of a tile exactly once, every configuration fits
//      the 48 KiB of static shared memory, and rows are 16-byte aligned in shared memory.
//
// Exits non-zero on the first failed check's summary.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cuda/topk.cuh"

using eae::Norm;
using eae::cuda::TileConfig;
using eae::cuda::TopK;

static int failures = 0;
#define CHECK(cond, ...)                                           \
  do {                                                             \
    if (!(cond)) {                                                 \
      if (++failures <= 20) {                                      \
        std::printf("FAIL %s:%d: %s | ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                  \
        std::printf("\n");                                         \
      }                                                            \
    }                                                              \
  } while (0)

// Bitwise equality (NaN == NaN), for keys.
template <class T>
static bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

struct Candidate {
  double key;
  int j;
};

// A candidate stream for one query row: n columns, j = 0..n-1, with the row itself skipped.
// Keys come from a tiny alphabet so that ties are frequent; some are NaN or +inf.
template <class T>
static std::vector<T> random_keys(std::mt19937& rng, int n, bool non_finite) {
  std::uniform_int_distribution<int> pick(0, 9);
  std::vector<T> keys(n);
  for (int j = 0; j < n; ++j) {
    const int v = pick(rng);
    keys[j] = static_cast<T>(v);
    if (non_finite && v == 8) keys[j] = std::numeric_limits<T>::quiet_NaN();
    if (non_finite && v == 9) keys[j] = std::numeric_limits<T>::infinity();
  }
  return keys;
}

// The CPU kernel's list: topk_insert over j = 0..n-1 in order.
template <class T>
static void cpu_list(const std::vector<T>& keys, int self, int k, std::vector<T>* out_key,
                     std::vector<int64_t>* out_idx) {
  const int n = static_cast<int>(keys.size());
  out_key->assign(k, std::numeric_limits<T>::infinity());
  out_idx->assign(k, n);
  for (int j = 0; j < n; ++j)
    if (j != self) eae::topk_insert(out_key->data(), out_idx->data(), k, keys[j], j);
}

// 1. One TopK fed the whole stream in order.
template <class T, int K>
static void test_single_list(std::mt19937& rng) {
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 80);
    const bool non_finite = trial % 2 == 1;
    const std::vector<T> keys = random_keys<T>(rng, n, non_finite);
    const int self = static_cast<int>(rng() % n);
    std::vector<T> ref_key;
    std::vector<int64_t> ref_idx;
    cpu_list(keys, self, K, &ref_key, &ref_idx);
    TopK<T, K> list;
    list.reset(n);
    for (int j = 0; j < n; ++j)
      if (j != self) list.consider(keys[j], j);
    for (int s = 0; s < K; ++s) {
      CHECK(list.idx[s] == ref_idx[s] && same_bits(list.key[s], ref_key[s]),
            "K=%d n=%d slot %d: got (%g, %d), CPU (%g, %lld)", K, n, s, (double)list.key[s], list.idx[s],
            (double)ref_key[s], (long long)ref_idx[s]);
      T key;
      int j;
      list.get(s, &key, &j);
      CHECK(j == list.idx[s] && same_bits(key, list.key[s]), "get(%d) disagrees with slot %d", s, s);
    }
  }
}

// 2. The kernels' split of columns between the lanes of a row group, then the butterfly merge.
template <class Cfg>
static void test_group_merge(std::mt19937& rng) {
  using T = typename Cfg::Scalar;
  constexpr int K = Cfg::K, GROUP = Cfg::COL_THREADS, TN = Cfg::TN, BN = Cfg::BN;
  for (int trial = 0; trial < 100; ++trial) {
    const int n = K + 1 + static_cast<int>(rng() % (3 * BN));
    const bool non_finite = trial % 3 == 2;
    const std::vector<T> keys = random_keys<T>(rng, n, non_finite);
    const int self = static_cast<int>(rng() % n);
    std::vector<TopK<T, K>> lane(GROUP);
    for (auto& l : lane) l.reset(n);
    for (int tile = 0; tile * BN < n; ++tile)
      for (int tx = 0; tx < GROUP; ++tx)
        for (int q = 0; q < TN; ++q) {
          const int j = tile * BN + Cfg::col_of(tx, q);
          if (j < n && j != self) lane[tx].consider(keys[j], j);
        }
    for (int s = 1; s < GROUP; s *= 2) {  // merge_group: every lane merges with lane ^ s
      const std::vector<TopK<T, K>> before = lane;
      for (int tx = 0; tx < GROUP; ++tx) eae::cuda::merge_into(lane[tx], before[tx ^ s]);
    }
    std::vector<T> ref_key;
    std::vector<int64_t> ref_idx;
    cpu_list(keys, self, K, &ref_key, &ref_idx);
    for (int tx = 0; tx < GROUP; ++tx)
      for (int s = 0; s < K; ++s)
        CHECK(lane[tx].idx[s] == ref_idx[s] && same_bits(lane[tx].key[s], ref_key[s]),
              "K=%d GROUP=%d n=%d lane %d slot %d: got (%g, %d), CPU (%g, %lld)", K, GROUP, n, tx, s,
              (double)lane[tx].key[s], lane[tx].idx[s], (double)ref_key[s], (long long)ref_idx[s]);
  }
}

// 3. Keys: the CPU kernels' arithmetic (AVX2/AVX-512: fma for L2, add of |diff|, max), and
// non-finite input never gives a finite key.
template <class T>
static void test_accumulate(std::mt19937& rng) {
  std::normal_distribution<double> normal;
  for (int trial = 0; trial < 200; ++trial) {
    const int d = 1 + static_cast<int>(rng() % 40);
    std::vector<T> a(d), b(d);
    for (int c = 0; c < d; ++c) {
      a[c] = static_cast<T>(normal(rng));
      b[c] = static_cast<T>(normal(rng));
    }
    T l2 = 0, l1 = 0, linf = 0, ref_l2 = 0, ref_l1 = 0, ref_linf = 0;
    for (int c = 0; c < d; ++c) {
      const T diff = b[c] - a[c];
      l2 = eae::cuda::accumulate<Norm::L2>(l2, diff);
      l1 = eae::cuda::accumulate<Norm::L1>(l1, diff);
      linf = eae::cuda::accumulate<Norm::Linf>(linf, diff);
      ref_l2 = std::fma(diff, diff, ref_l2);
      ref_l1 = ref_l1 + std::fabs(diff);
      ref_linf = std::max(ref_linf, std::fabs(diff));
    }
    CHECK(same_bits(l2, ref_l2) && same_bits(l1, ref_l1) && same_bits(linf, ref_linf), "d=%d: keys differ", d);

    // One coordinate made non-finite, in either row, with either sign of NaN.
    const int c_bad = static_cast<int>(rng() % d);
    const T bad_values[] = {std::numeric_limits<T>::quiet_NaN(), -std::numeric_limits<T>::quiet_NaN(),
                            std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity()};
    for (T bad : bad_values)
      for (int which = 0; which < 2; ++which) {
        std::vector<T> x = a, y = b;
        (which ? x : y)[c_bad] = bad;
        T k2 = 0, k1 = 0, kinf = 0;
        for (int c = 0; c < d; ++c) {
          const T diff = y[c] - x[c];
          k2 = eae::cuda::accumulate<Norm::L2>(k2, diff);
          k1 = eae::cuda::accumulate<Norm::L1>(k1, diff);
          kinf = eae::cuda::accumulate<Norm::Linf>(kinf, diff);
        }
        CHECK(!std::isfinite(k2) && !std::isfinite(k1) && !std::isfinite(kinf),
              "non-finite %g at %d gave finite keys (%g, %g, %g)", (double)bad, c_bad, (double)k2, (double)k1,
              (double)kinf);
        if (std::isnan(bad)) CHECK(std::isnan(kinf), "a NaN coordinate must make the Linf key NaN");
      }
  }
}

// 4. Tile geometry: coverage, shared memory and alignment of every configuration kl_cuda.cu uses.
template <class Cfg>
static void test_tile_config(const char* name) {
  std::vector<int> rows(Cfg::BM, 0), cols(Cfg::BN, 0);
  for (int ty = 0; ty < Cfg::ROW_THREADS; ++ty)
    for (int r = 0; r < Cfg::TM; ++r) {
      const int row = Cfg::row_of(ty, r);
      CHECK(row >= 0 && row < Cfg::BM, "%s: row_of(%d, %d) = %d out of the tile", name, ty, r, row);
      if (row >= 0 && row < Cfg::BM) ++rows[row];
    }
  for (int tx = 0; tx < Cfg::COL_THREADS; ++tx)
    for (int q = 0; q < Cfg::TN; ++q) {
      const int col = Cfg::col_of(tx, q);
      CHECK(col >= 0 && col < Cfg::BN, "%s: col_of(%d, %d) = %d out of the tile", name, tx, q, col);
      if (col >= 0 && col < Cfg::BN) ++cols[col];
    }
  for (int v : rows) CHECK(v == 1, "%s: a row is owned by %d thread rows", name, v);
  for (int v : cols) CHECK(v == 1, "%s: a column is owned by %d thread columns", name, v);
  // The kernel also keeps BM doubles of row terms, 256 doubles for the h reduction and a few flags.
  const int static_smem = Cfg::SMEM_BYTES + Cfg::BM * 8 + 256 * 8 + 16;
  CHECK(static_smem <= 48 * 1024, "%s: %d bytes of static shared memory", name, static_smem);
  CHECK((Cfg::LD * sizeof(typename Cfg::Scalar)) % 16 == 0 && (Cfg::STAGE * sizeof(typename Cfg::Scalar)) % 16 == 0,
        "%s: shared rows and stages must stay 16-byte aligned", name);
}

int main() {
  std::mt19937 rng(1234);
  test_single_list<float, 1>(rng);
  test_single_list<float, 4>(rng);
  test_single_list<float, 16>(rng);
  test_single_list<double, 4>(rng);

  test_group_merge<eae::cuda::LargeTile<float, 1>::type>(rng);
  test_group_merge<eae::cuda::LargeTile<float, 4>::type>(rng);
  test_group_merge<eae::cuda::LargeTile<float, 16>::type>(rng);
  test_group_merge<eae::cuda::SmallTile<float, 1>::type>(rng);
  test_group_merge<eae::cuda::SmallTile<float, 4>::type>(rng);
  test_group_merge<eae::cuda::SmallTile<float, 16>::type>(rng);
  test_group_merge<eae::cuda::LargeTile<double, 1>::type>(rng);
  test_group_merge<eae::cuda::SmallTile<double, 16>::type>(rng);

  test_accumulate<float>(rng);
  test_accumulate<double>(rng);

  // The configurations kl_cuda.cu uses.
  using eae::cuda::LargeTile;
  using eae::cuda::SmallTile;
  test_tile_config<LargeTile<float, 1>::type>("large f32 K=1");
  test_tile_config<LargeTile<float, 4>::type>("large f32 K=4");
  test_tile_config<LargeTile<float, 16>::type>("large f32 K=16");
  test_tile_config<LargeTile<double, 1>::type>("large f64 K=1");
  test_tile_config<LargeTile<double, 4>::type>("large f64 K=4");
  test_tile_config<LargeTile<double, 16>::type>("large f64 K=16");
  test_tile_config<SmallTile<float, 16>::type>("small f32 K=16");
  test_tile_config<SmallTile<double, 16>::type>("small f64 K=16");

  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all CUDA building-block checks passed\n");
  return 0;
}
