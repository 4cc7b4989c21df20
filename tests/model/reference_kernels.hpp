// reference_kernels.hpp: the kernels as they were before their rewrite for
// speed (issue "Kernels at the hardware's pace"), kept as references: the
// rewritten kernels in src/model/layers.hpp must give the same results
// (tests/model/test_kernel_reference.cpp). One element or row per work item,
// per-element index arithmetic; simple and obviously right.
#pragma once

#include <cmath>

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

// ---------------------------------------------------------------- attention
// one product per (batch, head), heads of a group accumulated with beta = 1
// Causal GQA attention on head-major, already rotated q/k.
// out is (B,nh,T,hd), att is (B,nh,T,T) (softmax probabilities, kept for
// backward), q is (B,nh,T,hd), k and v are (B,nkv,T,hd).
template <class T>
void attention_forward_reference(T* out, T* att, const T* q, const T* k, const T* v, int B, int Tn, int nh,
                       int nkv, int hd) {
  const int group = nh / nkv;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const long qs = (long)Tn * hd, as = (long)Tn * Tn;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h) {
      const long bh = (long)b * nh + h, bg = (long)b * nkv + h / group;
      matmul<T>('N', 'T', Tn, Tn, hd, scale, q + bh * qs, k + bg * qs, T(0), att + bh * as);
    }
  Kokkos::parallel_for("reference::attention_softmax", RangePolicy(0, (long)B * nh * Tn),
                       KOKKOS_LAMBDA(const long row) {
    const int t = row % Tn;
    T* p = att + row * Tn;
    T mx = p[0];
    for (int j = 1; j <= t; ++j) mx = p[j] > mx ? p[j] : mx;
    T sum = 0;
    for (int j = 0; j <= t; ++j) {
      p[j] = math::exp(p[j] - mx);
      sum += p[j];
    }
    const T inv = T(1) / sum;
    for (int j = 0; j <= t; ++j) p[j] *= inv;
    for (int j = t + 1; j < Tn; ++j) p[j] = 0;
  });
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h) {
      const long bh = (long)b * nh + h, bg = (long)b * nkv + h / group;
      matmul<T>('N', 'N', Tn, hd, Tn, T(1), att + bh * as, v + bg * qs, T(0), out + bh * qs);
    }
}
// dq is (B,nh,T,hd) (overwritten); dk, dv are (B,nkv,T,hd) (overwritten);
// datt is (B,nh,T,T) scratch; dout is (B,nh,T,hd)
template <class T>
void attention_backward_reference(T* dq, T* dk, T* dv, T* datt, const T* dout, const T* att, const T* q,
                        const T* k, const T* v, int B, int Tn, int nh, int nkv, int hd) {
  const int group = nh / nkv;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const long qs = (long)Tn * hd, as = (long)Tn * Tn;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h) {
      const long bh = (long)b * nh + h, bg = (long)b * nkv + h / group;
      const T beta = (h % group == 0) ? T(0) : T(1);  // heads of a group sum into dv
      matmul<T>('N', 'T', Tn, Tn, hd, T(1), dout + bh * qs, v + bg * qs, T(0), datt + bh * as);
      matmul<T>('T', 'N', Tn, hd, Tn, T(1), att + bh * as, dout + bh * qs, beta, dv + bg * qs);
    }
  // dS = P * (dP - sum_j P_j dP_j) * scale
  Kokkos::parallel_for("reference::attention_softmax_backward", RangePolicy(0, (long)B * nh * Tn),
                       KOKKOS_LAMBDA(const long row) {
    const int t = row % Tn;
    const T* p = att + row * Tn;
    T* d = datt + row * Tn;
    T dot = 0;
    for (int j = 0; j <= t; ++j) dot += p[j] * d[j];
    for (int j = 0; j <= t; ++j) d[j] = p[j] * (d[j] - dot) * scale;
    for (int j = t + 1; j < Tn; ++j) d[j] = 0;
  });
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h) {
      const long bh = (long)b * nh + h, bg = (long)b * nkv + h / group;
      const T beta = (h % group == 0) ? T(0) : T(1);
      matmul<T>('N', 'N', Tn, hd, Tn, T(1), datt + bh * as, k + bg * qs, T(0), dq + bh * qs);
      matmul<T>('T', 'N', Tn, hd, Tn, T(1), datt + bh * as, q + bh * qs, beta, dk + bg * qs);
    }
}

}  // namespace fulcrum::reference
