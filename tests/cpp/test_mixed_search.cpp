// Torch-free test of the mixed search's error bound (built and run by CMake/ctest). On random and
// adversarial data, for every pair of rows (a self search, and x searched among a separate set y
// with the shared quantisation of the cross search):
//   - the true distance |z_i - z_j| (long double) lies within alpha sqrt(I_ij) +- (delta_i + delta_j),
//   - the exact kernel's float key K_ij (subtract + FMA, as search_impl.h computes it) lies within
//     [mixed_key_lower, mixed_key_upper] of the pair's quantised squared distance I_ij,
//   - the kernel's one-sqrt threshold is never below the two-step one it stands for;
// and knn_search gives identical keys and indices with EAE_KERNELS_SEARCH=mixed and =exact.
// Exits non-zero on the first failing data set.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cpu/kl_cpu.h"
#include "cpu/search_mixed.h"

using eae::Norm;
using namespace eae::cpu;

static int failures = 0;

static float exact_key(const float* a, const float* b, int64_t d) {
  float acc = 0.0f;
  for (int64_t c = 0; c < d; ++c) {
    const float diff = b[c] - a[c];
    acc = std::fma(diff, diff, acc);
  }
  return acc;
}

// The bound on every (query, reference) pair. y empty: the self search of x; otherwise x is
// searched among y with the shared quantisation of the cross search.
// Returns whether the mixed search accepts the data.
static bool check_bound(const std::string& name, const std::vector<float>& x, int64_t nx,
                        const std::vector<float>& y, int64_t ny, int64_t d) {
  const bool self = y.empty();
  const std::vector<float>& ref = self ? x : y;
  const int64_t n = self ? nx : ny;
  MixedData m;
  if (!build_mixed_data(x.data(), nx, self ? nullptr : y.data(), n, d, 1, serial_for, &m)) {
    std::printf("%-40s refused by the mixed search (exact path)\n", name.c_str());
    return false;
  }
  std::vector<uint8_t> wild(static_cast<size_t>(n), 0);
  for (const int32_t j : m.wild) wild[j] = 1;
  const MixedBound& b = m.plan.bound;
  const int64_t d2 = m.plan.d2;
  // The self search keeps one copy of the quantised rows (query and reference alike).
  const std::vector<int16_t>& ref_q = self ? m.q : m.ref_q;
  const std::vector<double>& ref_delta = self ? m.delta : m.ref_delta;
  int bad = 0;
  double worst_slack = INFINITY;  // smallest (bound - value) / value seen, for the log
  for (int64_t i = 0; i < nx && bad < 5; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      if (self && j == i) continue;
      int64_t I = 0;
      long double r2 = 0;
      for (int64_t c = 0; c < d2; ++c) {
        const int64_t e = int64_t{m.q[i * d2 + c]} - ref_q[j * d2 + c];
        I += e * e;
      }
      for (int64_t c = 0; c < d; ++c) {
        const long double e = static_cast<long double>(x[i * d + c]) - ref[j * d + c];
        r2 += e * e;
      }
      const long double r = std::sqrt(r2);
      const long double s = b.alpha * std::sqrt(static_cast<long double>(I));
      const long double dd = m.delta[i] + ref_delta[j];
      const double K = exact_key(&x[i * d], &ref[j * d], d);
      const double lower = mixed_key_lower(static_cast<double>(I), m.delta[i], ref_delta[j], b);
      const double upper = mixed_key_upper(static_cast<double>(I), m.delta[i], b);
      const double slow = mixed_reach(upper, m.delta[i], b);
      const double fast = mixed_fast_reach(static_cast<double>(I), m.plan.reach_slope, m.reach[i]);
      // Outlier columns never meet the integer pass (delta_max leaves them out): only the
      // two-sided distance bound and the lower key bound apply to them.
      const bool column_in_pass = !wild[j];
      const bool ok = r >= s - dd && r <= s + dd && K >= lower &&
                      (!column_in_pass || (K <= upper && fast >= slow && slow >= static_cast<double>(I)));
      if (K > 0 && column_in_pass)
        worst_slack = std::min(worst_slack, std::min((upper - K) / K, (K - lower) / K));
      if (!ok && ++bad <= 5)
        std::printf("FAIL %s: i=%ld j=%ld I=%ld r=%.9Lg s=%.9Lg delta=%.3Lg K=%.9g in [%.9g, %.9g]? "
                    "reach fast %.9g slow %.9g\n",
                    name.c_str(), static_cast<long>(i), static_cast<long>(j), static_cast<long>(I), r,
                    s, dd, K, lower, upper, fast, slow);
    }
  }
  std::printf("%-40s alpha=%.3g delta_max=%.3g outliers %zu, min relative slack %.3g %s\n", name.c_str(),
              b.alpha, b.delta_max, m.wild.size(), worst_slack, bad ? "FAILED" : "ok");
  failures += bad;
  return true;
}

// knn_search with EAE_KERNELS_SEARCH=mixed and =exact: identical keys and indices (y empty: the
// self search); `accepted`: the mixed path must have run.
static void check_search(const std::string& name, const std::vector<float>& x, int64_t nx,
                         const std::vector<float>& y, int64_t ny, int64_t d, int64_t k, bool accepted) {
  const int64_t calls_before = mixed_search_stats().calls;
  std::vector<float> keys[2];
  std::vector<int64_t> idx[2];
  const char* modes[2] = {"exact", "mixed"};
  for (int m = 0; m < 2; ++m) {
    setenv("EAE_KERNELS_SEARCH", modes[m], 1);
    keys[m].resize(nx * k);
    idx[m].resize(nx * k);
    knn_search<float>(x.data(), nx, {0, nx}, y.empty() ? nullptr : y.data(), y.empty() ? nx : ny, d, k,
                      Norm::L2, keys[m].data(), idx[m].data(), serial_for);
  }
  unsetenv("EAE_KERNELS_SEARCH");
  if (accepted && mixed_search_stats().calls == calls_before) {
    std::printf("FAIL %s k=%ld: the mixed path did not run\n", name.c_str(), static_cast<long>(k));
    ++failures;
  }
  for (int64_t e = 0; e < nx * k; ++e) {
    const bool same_key = keys[0][e] == keys[1][e] || (keys[0][e] != keys[0][e] && keys[1][e] != keys[1][e]);
    if (!same_key || idx[0][e] != idx[1][e]) {
      std::printf("FAIL %s k=%ld: entry %ld exact (%.9g, %ld) mixed (%.9g, %ld)\n", name.c_str(),
                  static_cast<long>(k), static_cast<long>(e), keys[0][e], static_cast<long>(idx[0][e]),
                  keys[1][e], static_cast<long>(idx[1][e]));
      ++failures;
      return;
    }
  }
}

int main() {
  std::mt19937 gen(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto gaussian = [&](int64_t n, int64_t d, float scale, float offset) {
    std::vector<float> z(n * d);
    for (float& v : z) v = normal(gen) * scale + offset;
    return z;
  };
  // x searched among itself (y empty) or among y.
  struct Case {
    std::string name;
    std::vector<float> x;
    int64_t nx, d;
    std::vector<float> y = {};
    int64_t ny = 0;
  };
  std::vector<Case> cases;
  cases.push_back({"gaussian d=64", gaussian(400, 64, 1, 0), 400, 64});
  cases.push_back({"gaussian d=3", gaussian(400, 3, 1, 0), 400, 3});
  cases.push_back({"d=1", gaussian(400, 1, 1, 0), 400, 1});
  cases.push_back({"z + 1e4", gaussian(300, 32, 1, 1e4f), 300, 32});
  cases.push_back({"z * 1e17 (keys near 1e37)", gaussian(300, 16, 1e17f, 0), 300, 16});
  cases.push_back({"z * 1e-20 (underflowing squares)", gaussian(300, 16, 1e-20f, 0), 300, 16});
  cases.push_back({"z * 1e-41 (subnormal values)", gaussian(300, 16, 1e-41f, 0), 300, 16});
  {
    std::vector<float> z = gaussian(150, 16, 1, 0);
    z.insert(z.end(), z.begin(), z.end());  // every row twice
    cases.push_back({"pairs of duplicates", z, 300, 16});
  }
  {
    std::vector<float> centres = gaussian(5, 32, 10, 0), z(600 * 32);
    std::uniform_int_distribution<int> pick(0, 4);
    for (int64_t j = 0; j < 600; ++j) {
      const int c = pick(gen);
      for (int64_t t = 0; t < 32; ++t) z[j * 32 + t] = centres[c * 32 + t] + 1e-4f * normal(gen);
    }
    cases.push_back({"clusters, spread 1e-4", z, 600, 32});
  }
  {
    std::vector<float> z(500 * 4);
    std::uniform_int_distribution<int> small(-2, 2);
    for (float& v : z) v = static_cast<float>(small(gen));
    cases.push_back({"small integers (exact ties)", z, 500, 4});
  }
  {
    std::vector<float> z = gaussian(300, 8, 1, 0);
    for (int64_t c = 0; c < 8; ++c) z[c] = 3e4f;  // one far outlier
    cases.push_back({"one far outlier", z, 300, 8});
    for (int64_t c = 0; c < 8; ++c) z[(100 + c) * 8 + c] = -1e3f * (c + 1);  // and 8 more
    cases.push_back({"nine outliers", z, 300, 8});
    for (int64_t j = 0; j < 30; ++j) z[(150 + j) * 8] = 5e2f;  // too many to set aside
    cases.push_back({"39 outliers", z, 300, 8});
  }

  // The cross search: x and y quantised together (one centre, one step).
  {
    std::vector<float> x = gaussian(300, 32, 1, 0);
    cases.push_back({"cross: gaussian x, gaussian y", x, 300, 32, gaussian(400, 32, 1, 0), 400});
    cases.push_back({"cross: y = x + 0.5", x, 300, 32, gaussian(400, 32, 1, 0.5f), 400});
    cases.push_back({"cross: y offset 1e4 from x", x, 300, 32, gaussian(400, 32, 1, 1e4f), 400});
    cases.push_back({"cross: y == x (ties at 0)", x, 300, 32, x, 300});
    std::vector<float> xx = x;
    xx.insert(xx.end(), x.begin(), x.begin() + 100 * 32);  // duplicates inside x and across sets
    cases.push_back({"cross: duplicates in both sets", xx, 400, 32, xx, 400});
    cases.push_back({"cross: y much wider than x", x, 300, 32, gaussian(400, 32, 100, 0), 400});
    cases.push_back({"cross: y tiny (ny = 5)", x, 300, 32, gaussian(5, 32, 1, 0), 5});
    std::vector<float> y = gaussian(400, 32, 1, 0);
    for (int64_t c = 0; c < 32; ++c) y[7 * 32 + c] = 1e5f;  // an outlier reference row
    for (int64_t c = 0; c < 32; ++c) xx[3 * 32 + c] = -2e5f;  // an outlier query row
    cases.push_back({"cross: outliers in x and y", xx, 400, 32, y, 400});
    cases.push_back({"cross: y * 1e17, x * 1e17", gaussian(200, 16, 1e17f, 0), 200, 16, gaussian(300, 16, 1e17f, 0), 300});
    cases.push_back({"cross: y * 1e-41 (subnormal)", gaussian(200, 16, 1e-41f, 0), 200, 16, gaussian(300, 16, 1e-41f, 0), 300});
    cases.push_back({"cross: d=1", gaussian(300, 1, 1, 0), 300, 1, gaussian(400, 1, 1, 0), 400});
  }

  std::vector<bool> accepted;
  for (const Case& c : cases) accepted.push_back(check_bound(c.name, c.x, c.nx, c.y, c.ny, c.d));
  if (mixed_search_supported()) {
    for (size_t e = 0; e < cases.size(); ++e)
      for (int64_t k : {1, 2, 5}) {
        const Case& c = cases[e];
        if (c.y.empty() || c.ny >= k) check_search(c.name, c.x, c.nx, c.y, c.ny, c.d, k, accepted[e]);
      }
  } else {
    std::printf("this CPU lacks AVX-512 VNNI: the end-to-end comparison is skipped\n");
  }
  std::printf(failures ? "FAILED (%d)\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
