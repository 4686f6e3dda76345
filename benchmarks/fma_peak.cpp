// Measures this CPU's fp32 FMA throughput, the ceiling the fused kernel is compared with.
//
// Each thread runs ACC independent chains of vector FMAs, acc = acc * m + c, on registers only:
// ACC = 24 chains cover the FMA latency (4 cycles) times the FMA pipes (2) several times over, so
// the loop is bound by how many FMAs the core issues per cycle, at the clock it really runs
// (boost included), not by latency or memory. Built at run time by benchmarks/machine.py with
// -O2 -march=native -fopenmp, so the vectors are as wide as this CPU's widest (16 fp32 lanes with
// AVX-512; a 16-lane vector is split in two on AVX2-only CPUs, which counts the same FMAs).
//
// Usage: fma_peak ITERATIONS THREADS
// Prints: THREADS SECONDS FMAS_PER_SECOND CHECKSUM
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

constexpr int LANES = 16;
constexpr int ACC = 24;
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

int main(int argc, char** argv) {
  const long iters = argc > 1 ? std::atol(argv[1]) : 20000000L;
  const int threads = argc > 2 ? std::atoi(argv[2]) : omp_get_max_threads();
  float checksum = 0;  // printed, so the compiler must compute every chain
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : checksum)
  {
    vec acc[ACC];
    const vec m = vec{} + 0.999999f;
    const vec c = vec{} + 1e-6f * float(1 + omp_get_thread_num());
    for (int j = 0; j < ACC; ++j) acc[j] = vec{} + float(j);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 24
      for (int j = 0; j < ACC; ++j) acc[j] = acc[j] * m + c;  // contracted to one FMA
    }
    for (int j = 0; j < ACC; ++j)
      for (int l = 0; l < LANES; ++l) checksum += acc[j][l];
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double fmas = double(iters) * ACC * LANES * threads;
  std::printf("%d %.6f %.6e %g\n", threads, seconds, fmas / seconds, checksum);
  return 0;
}
