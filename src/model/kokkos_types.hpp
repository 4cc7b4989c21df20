// kokkos_types.hpp: the memory/execution spaces and the one matrix-product
// entry point every layer uses.
//
// Buffers are flat device arrays addressed with explicit strides, as in llm.c.
// Float matrix products go through the gemm layer (gemm.hpp: the backend and
// precision the run chose); double products (gradient checks) and float
// products outside a run go through Kokkos Kernels' BLAS (OpenBLAS on CPU,
// cuBLAS in CUDA builds) on unmanaged row-major views of those buffers.
#pragma once

#include <cstring>
#include <type_traits>
#include <vector>

#include <Kokkos_Core.hpp>
#include <KokkosBlas3_gemm.hpp>

#include "model/gemm.hpp"

namespace fulcrum {

using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
using RangePolicy = Kokkos::RangePolicy<ExecSpace>;
using TeamPolicy = Kokkos::TeamPolicy<ExecSpace>;
using TeamMember = TeamPolicy::member_type;

// Row kernels come in two loop nests (one algorithm, fixed summation orders):
// HostLoops = true on host backends (Serial, OpenMP, Threads): a row per work
// item, the 16-lane helpers below for the reductions (what the compiler
// vectorises); HostLoops = false on device backends: Kokkos teams, a thread
// (TeamThreadRange) per row of a block of kTeamRows rows, vector lanes
// (ThreadVectorRange) along the row with vector reductions. Each kernel
// takes HostLoops as a template parameter defaulting to this constant, so
// both nests are compiled and tested on any backend (tests/model).
constexpr bool kHostLoops = std::is_same_v<MemSpace, Kokkos::HostSpace>;
constexpr int kTeamRows = 8;
// A team per block of kTeamRows rows, vector lanes along the row (32 on
// device backends, 1 on host backends).
inline TeamPolicy row_team_policy(long rows) {
  const int vector = std::is_same_v<ExecSpace, Kokkos::DefaultHostExecutionSpace> ? 1 : 32;
  return TeamPolicy((int)((rows + kTeamRows - 1) / kTeamRows), Kokkos::AUTO, vector);
}
// Calls row(n) for the rows of this team's block, a thread per row.
template <class F>
KOKKOS_INLINE_FUNCTION void for_team_rows(const TeamMember& member, long rows, const F& row) {
  const long first = (long)member.league_rank() * kTeamRows;
  const int count = (int)((rows - first) < kTeamRows ? (rows - first) : kTeamRows);
  Kokkos::parallel_for(Kokkos::TeamThreadRange(member, count), [&](const int r) { row(first + r); });
}

// Device math: Kokkos 3.4 keeps these in Kokkos::Experimental, 3.6+ in Kokkos.
namespace math {
#if KOKKOS_VERSION >= 30600
using Kokkos::exp;
using Kokkos::log;
using Kokkos::sqrt;
#else
using Kokkos::Experimental::exp;
using Kokkos::Experimental::log;
using Kokkos::Experimental::sqrt;
#endif

KOKKOS_INLINE_FUNCTION float float_from_bits(int bits) {
#ifdef __CUDA_ARCH__
  return __int_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

KOKKOS_INLINE_FUNCTION int bits_from_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_int(f);
#else
  int bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

// x rounded to the nearest bf16 (ties to even), as a float: what a bf16
// product does to its operands (gemm.hpp; oneDNN and cuBLAS round this way).
// NaN stays NaN. double: unchanged (double products are never bf16).
template <class T>
KOKKOS_INLINE_FUNCTION T round_bf16(T x) {
  if constexpr (std::is_same_v<T, float>) {
    const unsigned u = static_cast<unsigned>(bits_from_float(x));
    const unsigned r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    return x != x ? x : float_from_bits(static_cast<int>(r));
  } else {
    return x;
  }
}

// exp for the elementwise kernels (SiLU, attention softmax, cross-entropy).
// double: the library exp (gradient checks). float: Cephes' expf polynomial
// (relative error <= 2 ulp where expf is normal), free of calls and branches
// so the loops that use it vectorise (with -fno-trapping-math, set for the
// model in host builds), where a call to libm's expf keeps them scalar.
// NaN in, NaN out (divergence detection relies on it); 0 below -87.34 and
// +inf above 88.72, as expf.
template <class T>
KOKKOS_INLINE_FUNCTION T fast_exp(T x) {
  if constexpr (std::is_same_v<T, float>) {
    const float xc = x < -87.33654f ? -87.33654f : (x > 88.72283f ? 88.72283f : x);
    // n = round(x / ln 2) by the 1.5 * 2^23 trick (no call to floorf)
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln 2, ln 2 in two parts
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    const float y = p * r * r + r + 1.0f;
    // y * 2^n with n in [-126, 128]: two factors, so 2^128 needs no exponent 255
    const int ni = static_cast<int>(n);
    const int n1 = ni / 2, n2 = ni - n1;
    const float out = x < -87.33654f ? 0.0f
                      : x > 88.72283f ? __builtin_huge_valf()
                                      : y * float_from_bits((n1 + 127) << 23) * float_from_bits((n2 + 127) << 23);
    return x != x ? x : out;
  } else {
    return exp(x);
  }
}

// Row reductions for the softmax-like kernels (cross-entropy over V,
// attention over T). A single running max or sum is a serial dependency that
// the compiler may not reorder without -ffast-math, so the loops would stay
// scalar; kLanes independent partial results (folded at the end) let them
// vectorise. The summation order is fixed, so results are deterministic.
constexpr int kRowLanes = 16;

template <class T>
KOKKOS_INLINE_FUNCTION T row_max(const T* z, int n) {
  T m[kRowLanes];
  for (int l = 0; l < kRowLanes; ++l) m[l] = z[0];
  int v = 0;
  for (; v + kRowLanes <= n; v += kRowLanes)
    for (int l = 0; l < kRowLanes; ++l) m[l] = z[v + l] > m[l] ? z[v + l] : m[l];
  for (; v < n; ++v) m[0] = z[v] > m[0] ? z[v] : m[0];
  T mx = m[0];
  for (int l = 1; l < kRowLanes; ++l) mx = m[l] > mx ? m[l] : mx;
  return mx;
}

// sum_v exp(z[v] - shift)
template <class T>
KOKKOS_INLINE_FUNCTION T row_sum_exp(const T* z, int n, T shift) {
  T s[kRowLanes] = {};
  int v = 0;
  for (; v + kRowLanes <= n; v += kRowLanes)
    for (int l = 0; l < kRowLanes; ++l) s[l] += fast_exp(z[v + l] - shift);
  for (; v < n; ++v) s[0] += fast_exp(z[v] - shift);
  T sum = 0;
  for (int l = 0; l < kRowLanes; ++l) sum += s[l];
  return sum;
}

// sum_v z[v]
template <class T>
KOKKOS_INLINE_FUNCTION T row_sum(const T* z, int n) {
  T s[kRowLanes] = {};
  int v = 0;
  for (; v + kRowLanes <= n; v += kRowLanes)
    for (int l = 0; l < kRowLanes; ++l) s[l] += z[v + l];
  for (; v < n; ++v) s[0] += z[v];
  T sum = 0;
  for (int l = 0; l < kRowLanes; ++l) sum += s[l];
  return sum;
}

// sum_v a[v] b[v]
template <class T>
KOKKOS_INLINE_FUNCTION T row_dot(const T* a, const T* b, int n) {
  T s[kRowLanes] = {};
  int v = 0;
  for (; v + kRowLanes <= n; v += kRowLanes)
    for (int l = 0; l < kRowLanes; ++l) s[l] += a[v + l] * b[v + l];
  for (; v < n; ++v) s[0] += a[v] * b[v];
  T sum = 0;
  for (int l = 0; l < kRowLanes; ++l) sum += s[l];
  return sum;
}
}  // namespace math

template <class T>
using DeviceBuffer = Kokkos::View<T*, MemSpace>;

template <class T>
using UnmanagedMatrix = Kokkos::View<T**, Kokkos::LayoutRight, MemSpace,
                                     Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

// C (M,N) = alpha * op(A) * op(B) + beta * C, all row-major and contiguous.
// op(A) is (M,K): A is stored (M,K) if trans_a == 'N', (K,M) if 'T'.
// op(B) is (K,N): B is stored (K,N) if trans_b == 'N', (N,K) if 'T'.
// beta = 1 accumulates (the llm.c "+=" convention for gradients).
// kokkos_matmul is the KokkosBlas path; matmul() is what the layers call.
template <class T>
inline void kokkos_matmul(char trans_a, char trans_b, int M, int N, int K, T alpha,
                          const T* A, const T* B, T beta, T* C) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // op(A) op(B) is empty: C = beta * C
    UnmanagedMatrix<T> c(C, M, N);
    if (beta == T(0)) Kokkos::deep_copy(c, T(0));
    else if (beta != T(1)) {
      Kokkos::parallel_for("blas::scale", RangePolicy(0, M * N),
                           KOKKOS_LAMBDA(const int i) { C[i] *= beta; });
    }
    return;
  }
  UnmanagedMatrix<T> a(const_cast<T*>(A), trans_a == 'N' ? M : K, trans_a == 'N' ? K : M);
  UnmanagedMatrix<T> b(const_cast<T*>(B), trans_b == 'N' ? K : N, trans_b == 'N' ? N : K);
  UnmanagedMatrix<T> c(C, M, N);
  const char ta[2] = {trans_a, '\0'};
  const char tb[2] = {trans_b, '\0'};
  KokkosBlas::gemm(ta, tb, alpha, a, b, beta, c);
}

template <class T>
inline void matmul(char trans_a, char trans_b, int M, int N, int K, T alpha,
                   const T* A, const T* B, T beta, T* C) {
  if constexpr (std::is_same_v<T, float>) {
    if (active_gemm_backend()) return gemm_f32(trans_a, trans_b, M, N, K, alpha, A, B, beta, C);
  }
  kokkos_matmul<T>(trans_a, trans_b, M, N, K, alpha, A, B, beta, C);
}
// A group of products sharing transposes, alpha and beta (the routed
// experts' products of one weight matrix, one problem per local expert):
// one grouped call through the gemm layer for float, a loop of KokkosBlas
// products for double.
template <class T>
inline void grouped_matmul(char trans_a, char trans_b, T alpha, T beta, const std::vector<MatmulProblem<T>>& problems) {
  if constexpr (std::is_same_v<T, float>) {
    if (active_gemm_backend()) return gemm_grouped_f32(trans_a, trans_b, alpha, beta, problems);
  }
  for (const MatmulProblem<T>& p : problems) kokkos_matmul<T>(trans_a, trans_b, p.M, p.N, p.K, alpha, p.A, p.B, beta, p.C);
}
// The same product, always in fp32 operands (the router: top-k choices must
// not flip with bf16 rounding; doc/model.md "Mixed precision").
template <class T>
inline void matmul_fp32(char trans_a, char trans_b, int M, int N, int K, T alpha,
                        const T* A, const T* B, T beta, T* C) {
  if constexpr (std::is_same_v<T, float>) {
    if (active_gemm_backend()) return gemm_f32(trans_a, trans_b, M, N, K, alpha, A, B, beta, C, true);
  }
  kokkos_matmul<T>(trans_a, trans_b, M, N, K, alpha, A, B, beta, C);
}

// Sets n elements to zero (activation-gradient buffers before accumulation).
template <class T>
inline void zero(T* p, std::size_t n) {
  Kokkos::parallel_for("util::zero", RangePolicy(0, n), KOKKOS_LAMBDA(const std::size_t i) { p[i] = T(0); });
}

}  // namespace fulcrum
