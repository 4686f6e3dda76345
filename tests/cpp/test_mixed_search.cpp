// Torch-free test of the mixed search's error bound (built and run by CMake/ctest). On random and
// adversarial data, for every pair of rows:
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

static void check_bound(const std::string& name, const std::vector<float>& z, int64_t n, int64_t d) {
  MixedData m;
  if (!build_mixed_data(z.data(), n, d, 1, serial_for, &m)) {
    std::printf("%-34s refused by the mixed search (exact path)\n", name.c_str());
    return;
  }
  const MixedBound& b = m.plan.bound;
  const int64_t d2 = m.plan.d2;
  int bad = 0;
  double worst_slack = INFINITY;  // smallest (bound - value) / value seen, for the log
  for (int64_t i = 0; i < n && bad < 5; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      if (j == i) continue;
      int64_t I = 0;
      long double r2 = 0;
      for (int64_t c = 0; c < d2; ++c) {
        const int64_t e = int64_t{m.q[i * d2 + c]} - m.q[j * d2 + c];
        I += e * e;
      }
      for (int64_t c = 0; c < d; ++c) {
        const long double e = static_cast<long double>(z[i * d + c]) - z[j * d + c];
        r2 += e * e;
      }
      const long double r = std::sqrt(r2);
      const long double s = b.alpha * std::sqrt(static_cast<long double>(I));
      const long double dd = m.delta[i] + m.delta[j];
      const double K = exact_key(&z[i * d], &z[j * d], d);
      const double lower = mixed_key_lower(static_cast<double>(I), m.delta[i], m.delta[j], b);
      const double upper = mixed_key_upper(static_cast<double>(I), m.delta[i], b);
      const double slow = mixed_reach(upper, m.delta[i], b);
      const double fast = mixed_fast_reach(static_cast<double>(I), m.plan.reach_slope, m.reach[i]);
      // Outlier columns never meet the integer pass (delta_max leaves them out): only the
      // two-sided distance bound and the lower key bound apply to them.
      const bool column_in_pass = !m.is_wild[j];
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
  std::printf("%-34s alpha=%.3g delta_max=%.3g outliers %zu, min relative slack %.3g %s\n", name.c_str(),
              b.alpha, b.delta_max, m.wild.size(), worst_slack, bad ? "FAILED" : "ok");
  failures += bad;
}

static void check_search(const std::string& name, const std::vector<float>& z, int64_t n, int64_t d,
                         int64_t k) {
  std::vector<float> keys[2];
  std::vector<int64_t> idx[2];
  const char* modes[2] = {"exact", "mixed"};
  for (int m = 0; m < 2; ++m) {
    setenv("EAE_KERNELS_SEARCH", modes[m], 1);
    keys[m].resize(n * k);
    idx[m].resize(n * k);
    knn_search<float>(z.data(), n, d, k, Norm::L2, {0, n}, keys[m].data(), idx[m].data(), serial_for);
  }
  unsetenv("EAE_KERNELS_SEARCH");
  for (int64_t e = 0; e < n * k; ++e) {
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
  struct Case { std::string name; std::vector<float> z; int64_t n, d; };
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

  for (const Case& c : cases) check_bound(c.name, c.z, c.n, c.d);
  if (mixed_search_supported()) {
    for (const Case& c : cases)
      for (int64_t k : {1, 2, 5}) check_search(c.name, c.z, c.n, c.d, k);
  } else {
    std::printf("this CPU lacks AVX-512 VNNI: the end-to-end comparison is skipped\n");
  }
  std::printf(failures ? "FAILED (%d)\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
