// bench-sgemm: single-precision GEMM throughput through KokkosBlas::gemm,
// the call every matrix product in the trainer goes through
// (src/model/kokkos_types.hpp; OpenBLAS behind it on Debian).
//
//   bench-sgemm [N=1024] [REPS=20]
//
// Times C = A B for N x N x N float matrices (LayoutRight, as the trainer's
// views), one untimed warm-up call, then REPS timed calls. Prints one line:
//   BENCH_SGEMM n=N reps=R gflops_mean=... gflops_best=... openblas_threads=...
// with GFLOP/s = 2 N^3 / seconds. The thread count is OpenBLAS's own
// (OPENBLAS_NUM_THREADS, default: all cores), as in fulcrum-train.
#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1024;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  if (n <= 0 || reps <= 0) {
    std::fprintf(stderr, "usage: bench-sgemm [N>0] [REPS>0]\n");
    return 2;
  }
  Kokkos::initialize();
  {
    using Matrix = Kokkos::View<float**, Kokkos::LayoutRight>;
    Matrix a("A", n, n), b("B", n, n), c("C", n, n);
    auto ha = Kokkos::create_mirror_view(a);
    auto hb = Kokkos::create_mirror_view(b);
    unsigned s = 12345u;
    auto rnd = [&s]() { s = s * 1664525u + 1013904223u; return float(s >> 8) / float(1u << 24) - 0.5f; };
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        ha(i, j) = rnd();
        hb(i, j) = rnd();
      }
    Kokkos::deep_copy(a, ha);
    Kokkos::deep_copy(b, hb);
    KokkosBlas::gemm("N", "N", 1.0f, a, b, 0.0f, c);  // warm-up (thread pool, pages)
    Kokkos::fence();
    double total = 0, best = 1e300;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      KokkosBlas::gemm("N", "N", 1.0f, a, b, 0.0f, c);
      Kokkos::fence();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      total += dt;
      best = std::min(best, dt);
    }
    const double flop = 2.0 * double(n) * double(n) * double(n);
    const char* th = std::getenv("OPENBLAS_NUM_THREADS");
    std::printf("BENCH_SGEMM n=%d reps=%d gflops_mean=%.2f gflops_best=%.2f openblas_threads=%s\n", n, reps,
                flop * reps / total / 1e9, flop / best / 1e9, th ? th : "default");
  }
  Kokkos::finalize();
  return 0;
}
