// Torch-free test of the CPU core (built and run by CMake/ctest): every compiled instruction set
// against a brute-force double-precision reference, on random data, exact ties, duplicates and
// non-finite rows. Exits non-zero on the first failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "cpu/kl_cpu.h"

using eae::Norm;

static int failures = 0;
#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      ++failures;                                                     \
      std::printf("FAIL %s:%d: %s | ", __FILE__, __LINE__, #cond);    \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)

// Two threads, to exercise the split of rows between workers.
static void two_threads(int64_t n, int64_t grain, const eae::cpu::RangeFn& body) {
  if (n <= grain) return body(0, n);
  const int64_t mid = n / 2;
  std::thread t([&] { body(0, mid); });
  body(mid, n);
  t.join();
}

static double distance(const double* a, const double* b, int64_t d, Norm norm) {
  double s = 0;
  for (int64_t c = 0; c < d; ++c) {
    const double v = std::abs(a[c] - b[c]);
    if (norm == Norm::L2) s += v * v;
    else if (norm == Norm::L1) s += v;
    else s = std::max(s, v);
  }
  return norm == Norm::L2 ? std::sqrt(s) : s;
}

struct Neighbours { std::vector<double> dist; std::vector<int64_t> idx; };

// Sorted by (distance, index): the lower index wins ties.
static Neighbours brute_force(const std::vector<double>& z, int64_t n, int64_t d, int64_t k, Norm norm) {
  Neighbours out{std::vector<double>(n * k), std::vector<int64_t>(n * k)};
  for (int64_t i = 0; i < n; ++i) {
    std::vector<std::pair<double, int64_t>> all;
    for (int64_t j = 0; j < n; ++j)
      if (j != i) all.push_back({distance(&z[i * d], &z[j * d], d, norm), j});
    std::sort(all.begin(), all.end());
    for (int64_t m = 0; m < k; ++m) { out.dist[i * k + m] = all[m].first; out.idx[i * k + m] = all[m].second; }
  }
  return out;
}

// H and dH/dz by the formulas of core/kl_math.h, written out directly.
static double brute_force_kl(const std::vector<double>& z, int64_t n, int64_t d, int64_t k, Norm norm,
                             double eps, std::vector<double>* grad) {
  const Neighbours nb = brute_force(z, n, d, k, norm);
  double sum = 0;
  grad->assign(n * d, 0.0);
  const double c = double(d) / double(n);
  for (int64_t i = 0; i < n; ++i) {
    const double r = nb.dist[i * k + k - 1];
    const int64_t j = nb.idx[i * k + k - 1];
    sum += 0.5 * std::log(r * r + eps * eps);
    const double* a = &z[i * d];
    const double* b = &z[j * d];
    int64_t m = 0;
    for (int64_t q = 1; q < d; ++q) if (std::abs(a[q] - b[q]) > std::abs(a[m] - b[m])) m = q;
    for (int64_t q = 0; q < d; ++q) {
      const double diff = a[q] - b[q];
      const double sgn = (diff > 0) - (diff < 0);
      double g = 0;
      if (norm == Norm::L2) g = diff / (r * r + eps * eps);
      else if (norm == Norm::L1) g = sgn * r / (r * r + eps * eps);
      else if (q == m) g = sgn * r / (r * r + eps * eps);
      (*grad)[i * d + q] += c * g;
      (*grad)[j * d + q] -= c * g;
    }
  }
  return eae::kl_constant(n, d, k, norm) + c * sum;
}

template <class T>
static void check_case(const std::vector<double>& z64, int64_t n, int64_t d, int64_t k, Norm norm,
                       bool exact_ties, const char* what) {
  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-11;
  std::vector<T> z(z64.begin(), z64.end());
  std::vector<double> zt(z.begin(), z.end());  // the values the kernel really sees
  const Neighbours ref = brute_force(zt, n, d, k, norm);

  std::vector<T> keys(n * k);
  std::vector<int64_t> idx(n * k);
  eae::cpu::knn_search<T>(z.data(), n, d, k, norm, {0, n}, keys.data(), idx.data(), two_threads);
  for (int64_t i = 0; i < n * k; ++i) {
    const double got = norm == Norm::L2 ? std::sqrt(double(keys[i])) : double(keys[i]);
    CHECK(std::abs(got - ref.dist[i]) <= tol * (1 + ref.dist[i]), "%s isa=%s n=%ld d=%ld k=%ld p=%d slot %ld: %g vs %g",
          what, eae::cpu::isa(), n, d, k, int(norm), i, got, ref.dist[i]);
    // Indices must agree exactly where the order is not within rounding of a tie.
    const int64_t row = i / k, m = i % k;
    const double next = m + 1 < k ? ref.dist[i + 1] : INFINITY;
    const double prev = m > 0 ? ref.dist[i - 1] : -INFINITY;
    const bool separated = next - ref.dist[i] > 1e-3 * (1 + ref.dist[i]) && ref.dist[i] - prev > 1e-3 * (1 + ref.dist[i]);
    if (exact_ties || separated)
      CHECK(idx[i] == ref.idx[i], "%s isa=%s n=%ld d=%ld k=%ld p=%d row %ld slot %ld: idx %ld vs %ld", what,
            eae::cpu::isa(), n, d, k, int(norm), row, m, idx[i], ref.idx[i]);
  }

  std::vector<double> ref_grad;
  const double eps = 1e-8;
  const double ref_h = brute_force_kl(zt, n, d, k, norm, eps, &ref_grad);
  std::vector<T> grad(n * d);
  const double h = eae::cpu::kl_entropy<T>(z.data(), n, d, k, norm, eps, {0, n}, grad.data(), nullptr, two_threads);
  CHECK(std::abs(h - ref_h) <= tol * (1 + std::abs(ref_h)), "%s isa=%s H %g vs %g", what, eae::cpu::isa(), h, ref_h);
  double gmax = 0, err = 0;
  for (int64_t i = 0; i < n * d; ++i) {
    gmax = std::max(gmax, std::abs(ref_grad[i]));
    err = std::max(err, std::abs(double(grad[i]) - ref_grad[i]));
  }
  CHECK(err <= 1e-3 * (sizeof(T) == 4 ? 1 : 1e-6) * (1 + gmax), "%s isa=%s n=%ld d=%ld k=%ld p=%d grad err %g (max %g)",
        what, eae::cpu::isa(), n, d, k, int(norm), err, gmax);

  // A partition of the rows into ranges: the values and the gradients add up to the whole.
  const int64_t cut1 = n / 3, cut2 = (2 * n) / 3;
  const eae::cpu::RowRange parts[] = {{0, cut1}, {cut1, cut2}, {cut2, n}};
  double h_sum = 0;
  std::vector<double> g_sum(n * d, 0.0);
  for (const auto& part : parts) {
    std::vector<T> g(n * d);
    std::vector<int64_t> nbr(part.end - part.begin);
    h_sum += eae::cpu::kl_entropy<T>(z.data(), n, d, k, norm, eps, part, g.data(), nbr.data(), two_threads);
    for (int64_t i = 0; i < n * d; ++i) g_sum[i] += g[i];
  }
  CHECK(std::abs(h_sum - h) <= 1e-9 * (1 + std::abs(h)), "%s partition H %g vs %g", what, h_sum, h);
  double part_err = 0;
  for (int64_t i = 0; i < n * d; ++i) part_err = std::max(part_err, std::abs(g_sum[i] - double(grad[i])));
  CHECK(part_err <= (sizeof(T) == 4 ? 1e-5 : 1e-12) * (1 + gmax), "%s partition grad err %g", what, part_err);
}

// Cross search (queries x against a separate reference set y) against brute force: same keys
// (to rounding) and, on exact data, the same indices.
template <class T>
static void check_cross(const std::vector<double>& x64, int64_t m, const std::vector<double>& y64, int64_t n,
                        int64_t d, int64_t k, Norm norm, bool exact_ties) {
  std::vector<T> x(x64.begin(), x64.end()), y(y64.begin(), y64.end()), keys(m * k);
  std::vector<int64_t> idx(m * k);
  eae::cpu::knn_search<T>(x.data(), m, {0, m}, y.data(), n, d, k, norm, keys.data(), idx.data(), two_threads);
  for (int64_t i = 0; i < m; ++i) {
    std::vector<std::pair<double, int64_t>> all;
    for (int64_t j = 0; j < n; ++j) all.push_back({distance(&x64[i * d], &y64[j * d], d, norm), j});
    std::sort(all.begin(), all.end());
    for (int64_t s = 0; s < k; ++s) {
      const double got = norm == Norm::L2 ? std::sqrt(double(keys[i * k + s])) : double(keys[i * k + s]);
      const double tol = sizeof(T) == 4 ? 1e-5 : 1e-12;
      CHECK(std::abs(got - all[s].first) <= tol * (1 + all[s].first), "cross isa=%s m=%ld n=%ld d=%ld k=%ld: %g vs %g",
            eae::cpu::isa(), long(m), long(n), long(d), long(k), got, all[s].first);
      if (exact_ties)
        CHECK(idx[i * k + s] == all[s].second, "cross ties isa=%s row %ld slot %ld: idx %ld vs %ld", eae::cpu::isa(),
              long(i), long(s), long(idx[i * k + s]), long(all[s].second));
    }
  }
}

int main() {
  std::mt19937_64 rng(1234);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small_int(-2, 2);
  const Norm norms[] = {Norm::L2, Norm::L1, Norm::Linf};
  int isas_run = 0;

  for (const char* isa : {"generic", "avx2", "avx512"}) {
    if (!eae::cpu::set_isa(isa)) { std::printf("skip isa %s (not supported here)\n", isa); continue; }
    ++isas_run;
    for (Norm norm : norms)
      for (int64_t n : {2, 3, 17, 100, 257})
        for (int64_t d : {1, 3, 16, 64, 200})
          for (int64_t k : {1, 2, 5}) {
            if (n <= k) continue;
            std::vector<double> z(n * d);
            for (double& v : z) v = normal(rng);
            check_case<float>(z, n, d, k, norm, false, "random");
            check_case<double>(z, n, d, k, norm, false, "random");
            // Small integers: many exact ties, every distance exact in float.
            for (double& v : z) v = small_int(rng);
            check_case<float>(z, n, d, k, norm, true, "ties");
            check_case<double>(z, n, d, k, norm, true, "ties");
          }

    for (Norm norm : norms)
      for (int64_t d : {1, 5, 70}) {
        const int64_t m = 37, n = 29;
        std::vector<double> x(m * d), y(n * d);
        for (double& v : x) v = normal(rng);
        for (double& v : y) v = normal(rng);
        check_cross<float>(x, m, y, n, d, 3, norm, false);
        check_cross<double>(x, m, y, n, d, 3, norm, false);
        for (double& v : x) v = small_int(rng);
        for (double& v : y) v = small_int(rng);
        check_cross<float>(x, m, y, n, d, 4, norm, true);
        check_cross<double>(x, m, y, n, d, 4, norm, true);
      }
    // Duplicate rows: finite value and finite (zero) gradient.
    {
      const int64_t n = 6, d = 3;
      std::vector<float> z = {0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 2, 3, 5, 5, 5, 5, 5, 5};
      std::vector<float> grad(n * d);
      const double h = eae::cpu::kl_entropy<float>(z.data(), n, d, 1, Norm::L2, 1e-8, {0, n}, grad.data(), nullptr, two_threads);
      CHECK(std::isfinite(h), "duplicates H=%g", h);
      for (float g : grad) CHECK(std::isfinite(g), "duplicates grad %g", g);
    }
    // Non-finite rows: NaN result, every index in range, no crash.
    for (float bad : {NAN, INFINITY, -INFINITY}) {
      const int64_t n = 50, d = 7, k = 3;
      std::vector<float> z(n * d);
      for (float& v : z) v = float(normal(rng));
      z[10 * d + 2] = bad;
      std::vector<float> keys(n * k), grad(n * d);
      std::vector<int64_t> idx(n * k);
      eae::cpu::knn_search<float>(z.data(), n, d, k, Norm::L2, {0, n}, keys.data(), idx.data(), two_threads);
      for (int64_t v : idx) CHECK(v >= 0 && v < n, "index %ld out of range", v);
      for (int64_t m = 0; m < k; ++m) CHECK(std::isnan(keys[10 * k + m]), "non-finite row key %g", keys[10 * k + m]);
      const double h = eae::cpu::kl_entropy<float>(z.data(), n, d, k, Norm::L2, 1e-8, {0, n}, grad.data(), nullptr, two_threads);
      CHECK(std::isnan(h), "non-finite input gave H=%g", h);
    }
  }

  // The constants against values computed independently (scipy.special: digamma, gammaln).
  CHECK(std::abs(eae::digamma_int(1) + 0.5772156649015329) < 1e-15, "psi(1)");
  CHECK(std::abs(eae::digamma_int(9) - 2.1406414779556098) < 1e-14, "psi(9)");
  CHECK(std::abs(eae::digamma_int(10) - 2.251752589066721) < 1e-14, "psi(10)");
  CHECK(std::abs(eae::digamma_int(1000000) - 13.81551005796419) < 1e-13, "psi(1e6)");
  CHECK(std::abs(eae::log_unit_ball_volume(3, Norm::L2) - std::log(4.0 / 3.0 * M_PI)) < 1e-14, "log V(3, 2)");
  CHECK(std::abs(eae::log_unit_ball_volume(4, Norm::L1) - std::log(16.0 / 24.0)) < 1e-14, "log V(4, 1)");

  std::printf("%s: %d instruction sets checked\n", failures ? "FAILED" : "OK", isas_run);
  return failures ? 1 : 0;
}
