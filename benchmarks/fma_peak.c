// The ceiling no float32 GEMM can pass on this CPU: one thread's fused multiply-add throughput, in GFLOP/s.
//
//     gcc -O2 -march=native benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
//
// `rnnlab bench` measures its "GEMM peak" with a 1024^3 matmul (MKL's best case); this is the hardware's own limit,
// against which that peak and each kernel's share of it can be judged (docs/performance.md). Twelve independent
// chains of FMAs on the widest vectors the build allows (16 floats with AVX-512, else 8): enough to keep two FMA
// units of 4-5 cycles' latency busy, few enough to stay in registers. The best of 7 runs of process CPU time.
#include <stdio.h>
#include <time.h>

#ifdef __AVX512F__
#define WIDTH 16
#else
#define WIDTH 8
#endif
typedef float vec __attribute__((vector_size(WIDTH * sizeof(float))));
enum { kChains = 12 };

static double cpu_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  vec acc[kChains];
  const vec m = (vec){0} + 0.999999f, c = (vec){0} + 1e-7f;
  for (int i = 0; i < kChains; ++i) acc[i] = (vec){0} + (float)i;
  const long n = 100000000;
  double best = 0;
  for (int run = 0; run < 7; ++run) {
    const double t0 = cpu_seconds();
    for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
      for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * m + c;  // one FMA each (gcc contracts by default)
    }
    const double gflops = 2.0 * WIDTH * kChains * n / (cpu_seconds() - t0) / 1e9;
    if (gflops > best) best = gflops;
  }
  float sum = 0;  // use the results, so that the loop is not optimised away
  for (int i = 0; i < kChains; ++i) sum += acc[i][0];
  printf("FMA peak %.1f GFLOP/s (1 thread, %d-float vectors; checksum %g)\n", best, WIDTH, sum);
  return 0;
}
