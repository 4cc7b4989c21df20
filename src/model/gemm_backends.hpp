// gemm_backends.hpp: factories of the optional gemm backends (gemm.hpp), one
// per library, each compiled only when its library is found (CMake
// FULCRUM_ENABLE_ONEDNN, CUDA Kokkos builds for cuBLAS).
#pragma once

#include <memory>
#include <string>

#include "model/gemm.hpp"

namespace fulcrum {

#ifdef FULCRUM_HAVE_ONEDNN
// oneDNN matmul primitives on the host CPU (gemm_onednn.cpp).
std::unique_ptr<GemmBackend> make_onednn_gemm(Precision precision);
// oneDNN's effective ISA name ("avx512_core_amx", "avx512_core_bf16", ...).
std::string onednn_cpu_isa();
// AVX512-BF16 or AMX-BF16 available (respects DNNL_MAX_CPU_ISA).
bool onednn_native_bf16();
#endif

#ifdef FULCRUM_HAVE_CUBLAS
// cublasGemmEx on `cuda_stream` (a cudaStream_t; gemm_cublas.cpp). bf16:
// compute type CUBLAS_COMPUTE_32F_FAST_16BF (operands rounded to bf16, fp32
// accumulation, fp32 in and out).
std::unique_ptr<GemmBackend> make_cublas_gemm(Precision precision, void* cuda_stream);
// Compute capability of the current device >= 8.0 (bf16 tensor cores).
bool cuda_native_bf16();
#endif

}  // namespace fulcrum
