// kokkos_types.hpp: the memory/execution spaces and the one matrix-product
// entry point every layer uses.
//
// Buffers are flat device arrays addressed with explicit strides, as in llm.c.
// Float matrix products go through the gemm layer (gemm.hpp: the backend and
// precision the run chose); double products (gradient checks) and float
// products outside a run go through Kokkos Kernels' BLAS (OpenBLAS on CPU,
// cuBLAS in CUDA builds) on unmanaged row-major views of those buffers.
#pragma once

#include <type_traits>

#include <Kokkos_Core.hpp>
#include <KokkosBlas3_gemm.hpp>

#include "model/gemm.hpp"

namespace fulcrum {

using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
using RangePolicy = Kokkos::RangePolicy<ExecSpace>;

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
