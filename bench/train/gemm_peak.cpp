// bench-gemm: matrix-product throughput of every gemm backend and precision
// compiled into this build (src/model/gemm.hpp), through the same calls the
// trainer makes: the peaks the trainer's model FLOP/s are compared with.
//
//   bench-gemm [N=1024] [REPS=20]
//
// Times C = A B^T for N x N x N float matrices (the layout of a forward
// projection), one untimed warm-up call, then REPS timed calls, per backend
// (kokkos = KokkosBlas -> OpenBLAS sgemm; onednn fp32; onednn bf16 where the
// CPU has native bf16; cublas in CUDA builds). Prints one line each:
//   BENCH_GEMM backend=B precision=P n=N reps=R gflops_mean=... gflops_best=... impl="..."
// with GFLOP/s = 2 N^3 / seconds. Threads: OPENBLAS_NUM_THREADS (OpenBLAS)
// and OMP_NUM_THREADS (oneDNN), as in fulcrum-train.
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model/gemm.hpp"
#include "model/kokkos_types.hpp"

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1024;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  if (n <= 0 || reps <= 0) {
    std::fprintf(stderr, "usage: bench-gemm [N>0] [REPS>0]\n");
    return 2;
  }
  Kokkos::initialize();
  {
    using namespace fulcrum;
    DeviceBuffer<float> a("A", (long)n * n), b("B", (long)n * n), c("C", (long)n * n);
    auto ha = Kokkos::create_mirror_view(a);
    auto hb = Kokkos::create_mirror_view(b);
    unsigned s = 12345u;
    auto rnd = [&s]() { s = s * 1664525u + 1013904223u; return float(s >> 8) / float(1u << 24) - 0.5f; };
    for (long i = 0; i < (long)n * n; ++i) ha(i) = rnd(), hb(i) = rnd();
    Kokkos::deep_copy(a, ha);
    Kokkos::deep_copy(b, hb);
    std::vector<GemmChoice> choices;
    for (const auto& be : available_gemm_backends()) {
      choices.push_back(resolve_gemm(be, "fp32"));
      if (be != "kokkos" && native_bf16(be)) choices.push_back(resolve_gemm(be, "bf16"));
    }
    for (const GemmChoice& choice : choices) {
      ScopedGemm scope(choice);
      auto product = [&]() {
        matmul<float>('N', 'T', n, n, n, 1.0f, a.data(), b.data(), 0.0f, c.data());
        Kokkos::fence();
      };
      product();  // warm-up: thread pool, pages, primitive creation
      double total = 0, best = 1e300;
      for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        product();
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        total += dt;
        best = std::min(best, dt);
      }
      const double flop = 2.0 * double(n) * double(n) * double(n);
      std::printf("BENCH_GEMM backend=%s precision=%s n=%d reps=%d gflops_mean=%.2f gflops_best=%.2f impl=\"%s\"\n",
                  choice.backend.c_str(), precision_name(choice.precision), n, reps, flop * reps / total / 1e9,
                  flop / best / 1e9, scope.backend().implementation().c_str());
      std::fflush(stdout);
    }
  }
  Kokkos::finalize();
  return 0;
}
