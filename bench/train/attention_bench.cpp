// bench-attention: one layer's causal attention, forward + backward, with the
// T x T path ("full": layers.hpp, products through the gemm layer) and the
// linear-memory path ("flash": attention.hpp), on the attention shapes of the
// two bench/train models. The numbers behind attention_kernel_for()
// (doc/model.md "Attention kernels").
//
//   bench-attention [REPS=20] [B T nh nkv hd]
//
// Without a shape: quickstart (B 16, T 128, nh 4, nkv 2, hd 32) and
// study-size (B 8, T 256, nh 6, nkv 2, hd 64), each a micro-batch of its deck.
// Per shape, path and gemm precision (fp32, and bf16 where native; the flash
// path is fp32 arithmetic in both): one untimed call, then REPS timed calls
// (fenced). Prints one line each:
//   BENCH_ATTENTION shape=S kernel=K precision=P ms_forward=.. ms_backward=.. ms_total=.. kept_bytes=..
// kept_bytes is what the path keeps for backward per layer (full: the
// probabilities; flash: the log-sum-exp).
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model/attention.hpp"
#include "model/gemm.hpp"
#include "model/layers.hpp"

namespace {
struct Shape {
  const char* name;
  int B, T, nh, nkv, hd;
};
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  std::vector<Shape> shapes = {{"quickstart", 16, 128, 4, 2, 32}, {"study-size", 8, 256, 6, 2, 64}};
  if (argc == 7)
    shapes = {{"custom", std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]),
               std::atoi(argv[6])}};
  if (reps <= 0 || (argc != 1 && argc != 2 && argc != 7)) {
    std::fprintf(stderr, "usage: bench-attention [REPS>0] [B T nh nkv hd]\n");
    return 2;
  }
  Kokkos::initialize();
  {
    using namespace fulcrum;
    std::vector<std::string> precisions = {"fp32"};
    const std::string be = available_gemm_backends().back() == "cublas" ? "cublas" : "auto";
    if (native_bf16(resolve_gemm(be, "fp32").backend)) precisions.push_back("bf16");
    for (const Shape& s : shapes) {
      const long nq = (long)s.B * s.nh * s.T * s.hd, nkv = (long)s.B * s.nkv * s.T * s.hd;
      const long na = (long)s.B * s.nh * s.T * s.T, nr = (long)s.B * s.nh * s.T;
      DeviceBuffer<float> q("q", nq), k("k", nkv), v("v", nkv), dout("dout", nq), out("out", nq);
      DeviceBuffer<float> dq("dq", nq), dk("dk", nkv), dv("dv", nkv), lse("lse", nr), delta("delta", nr);
      DeviceBuffer<float> att("att", na), datt("datt", na);
      for (auto* buf : {&q, &k, &v, &dout}) {
        auto h = Kokkos::create_mirror_view(*buf);
        unsigned seed = 12345u + (unsigned)(long)buf->extent(0);
        for (long i = 0; i < (long)h.extent(0); ++i) {
          seed = seed * 1664525u + 1013904223u;
          h(i) = float(seed >> 8) / float(1u << 24) - 0.5f;
        }
        Kokkos::deep_copy(*buf, h);
      }
      for (const std::string& p : precisions)
        for (const char* kernel : {"full", "flash"}) {
          ScopedGemm scope(resolve_gemm(be, p));
          const bool full = std::string(kernel) == "full";
          auto forward = [&]() {
            if (full) attention_forward<float>(out.data(), att.data(), q.data(), k.data(), v.data(), s.B, s.T, s.nh,
                                               s.nkv, s.hd);
            else flash_attention_forward<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.nh,
                                                s.nkv, s.hd);
            Kokkos::fence();
          };
          auto backward = [&]() {
            if (full) {
              attention_backward<float>(dq.data(), dk.data(), dv.data(), datt.data(), dout.data(), att.data(),
                                        q.data(), k.data(), v.data(), s.B, s.T, s.nh, s.nkv, s.hd);
            } else {
              flash_attention_backward_delta<float>(delta.data(), dout.data(), out.data(), s.B, s.T, s.nh, s.hd, true);
              flash_attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), lse.data(), delta.data(),
                                              q.data(), k.data(), v.data(), s.B, s.T, s.nh, s.nkv, s.hd);
            }
            Kokkos::fence();
          };
          forward();
          backward();
          double tf = 0, tb = 0;
          for (int r = 0; r < reps; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            forward();
            tf += seconds_since(t0);
            t0 = std::chrono::steady_clock::now();
            backward();
            tb += seconds_since(t0);
          }
          std::printf("BENCH_ATTENTION shape=%s B=%d T=%d nh=%d nkv=%d hd=%d kernel=%s precision=%s ms_forward=%.3f "
                      "ms_backward=%.3f ms_total=%.3f kept_bytes=%ld\n",
                      s.name, s.B, s.T, s.nh, s.nkv, s.hd, kernel, p.c_str(), 1e3 * tf / reps, 1e3 * tb / reps,
                      1e3 * (tf + tb) / reps, (full ? na : nr) * (long)sizeof(float));
          std::fflush(stdout);
        }
    }
  }
  Kokkos::finalize();
  return 0;
}
