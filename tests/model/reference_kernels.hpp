// reference_kernels.hpp: the kernels as they were before their rewrite for
// speed (issue "Kernels at the hardware's pace"), kept as references: the
// rewritten kernels in src/model/layers.hpp must give the same results
// (tests/model/test_kernel_reference.cpp). One element or row per work item,
// per-element index arithmetic; simple and obviously right.
#pragma once

#include "model/kokkos_types.hpp"

namespace fulcrum::reference {

// dinp is (N,C) (+=), dweight is (C) (+=), dout is (N,C), inp is (N,C), rstd is (N)
template <class T>
void rmsnorm_backward_reference(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C) {
  Kokkos::parallel_for("reference::rmsnorm_backward_input", RangePolicy(0, N), KOKKOS_LAMBDA(const int n) {
    const T* x = inp + (long)n * C;
    const T* dy = dout + (long)n * C;
    const T r = rstd[n];
    // dx = r * (w dy - xhat * mean(w dy xhat)),  xhat = x r
    T dot = 0;
    for (int c = 0; c < C; ++c) dot += weight[c] * dy[c] * x[c] * r;
    dot /= C;
    T* dx = dinp + (long)n * C;
    for (int c = 0; c < C; ++c) dx[c] += r * (weight[c] * dy[c] - x[c] * r * dot);
  });
  Kokkos::parallel_for("reference::rmsnorm_backward_weight", RangePolicy(0, C), KOKKOS_LAMBDA(const int c) {
    T s = 0;
    for (int n = 0; n < N; ++n) s += dout[(long)n * C + c] * inp[(long)n * C + c] * rstd[n];
    dweight[c] += s;
  });
}

// Head-major permute with optional rotation (rotate-half convention):
// out is (B,H,T,hd), inp is (B,T,H*hd)
template <class T>
void rope_permute_forward_reference(T* out, const T* inp, const T* cos_t, const T* sin_t, int B, int Tn,
                          int H, int hd, bool rotate) {
  const int half = hd / 2;
  Kokkos::parallel_for("reference::rope_forward", RangePolicy(0, (long)B * Tn * H * half),
                       KOKKOS_LAMBDA(const long idx) {
    const int i = idx % half;
    const int h = (idx / half) % H;
    const int t = (idx / ((long)half * H)) % Tn;
    const int b = idx / ((long)half * H * Tn);
    const T* x = inp + (((long)b * Tn + t) * H + h) * hd;
    T* o = out + (((long)b * H + h) * Tn + t) * hd;
    const T x1 = x[i], x2 = x[i + half];
    if (rotate) {
      const T c = cos_t[t * half + i], s = sin_t[t * half + i];
      o[i] = x1 * c - x2 * s;
      o[i + half] = x2 * c + x1 * s;
    } else {
      o[i] = x1;
      o[i + half] = x2;
    }
  });
}
// dinp is (B,T,H*hd) (overwritten), dout is (B,H,T,hd)
template <class T>
void rope_permute_backward_reference(T* dinp, const T* dout, const T* cos_t, const T* sin_t, int B, int Tn,
                           int H, int hd, bool rotate) {
  const int half = hd / 2;
  Kokkos::parallel_for("reference::rope_backward", RangePolicy(0, (long)B * Tn * H * half),
                       KOKKOS_LAMBDA(const long idx) {
    const int i = idx % half;
    const int h = (idx / half) % H;
    const int t = (idx / ((long)half * H)) % Tn;
    const int b = idx / ((long)half * H * Tn);
    T* dx = dinp + (((long)b * Tn + t) * H + h) * hd;
    const T* d = dout + (((long)b * H + h) * Tn + t) * hd;
    const T d1 = d[i], d2 = d[i + half];
    if (rotate) {
      const T c = cos_t[t * half + i], s = sin_t[t * half + i];
      dx[i] = d1 * c + d2 * s;
      dx[i + half] = -d1 * s + d2 * c;
    } else {
      dx[i] = d1;
      dx[i + half] = d2;
    }
  });
}

}  // namespace fulcrum::reference
