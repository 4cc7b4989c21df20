// gemm_cublas.cpp: the "cublas" gemm backend (gemm.hpp) for CUDA builds.
//
// Row-major C (M,N) = alpha op(A) op(B) + beta C is the column-major product
// C^T (N,M) = op(B)^T op(A)^T, so cuBLAS is called with the operands swapped
// and no copies. bf16 uses compute type CUBLAS_COMPUTE_32F_FAST_16BF: cuBLAS
// rounds the fp32 operands to bf16 and multiplies on the tensor cores with
// fp32 accumulation, C stays fp32 (the same rule as the onednn backend).
// The handle runs on the Kokkos execution space's stream, so products are
// ordered with the model's kernels without host waits.
//
// Only CUDA runtime and cuBLAS headers are used here (no Kokkos), so this file
// compiles with a host compiler against the CUDA toolkit.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "model/gemm_backends.hpp"

namespace fulcrum {

namespace {

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed (status " + std::to_string((int)s) + ")");
}

class CublasGemm final : public GemmBackend {
 public:
  CublasGemm(Precision p, cudaStream_t stream) : precision_(p) {
    check(cublasCreate(&handle_), "cublasCreate");
    check(cublasSetStream(handle_, stream), "cublasSetStream");
    // fp32 must stay fp32: forbid TF32 down-conversion in the fp32 path.
    check(cublasSetMathMode(handle_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
  }
  ~CublasGemm() override { cublasDestroy(handle_); }

  void gemm(char ta, char tb, int M, int N, int K, float alpha, const float* A, const float* B, float beta,
            float* C, bool keep_fp32) override {
    if (M == 0 || N == 0) return;
    // column-major view: C^T (N,M) = op(B)^T (N,K) * op(A)^T (K,M)
    const cublasOperation_t opb = tb == 'N' ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t opa = ta == 'N' ? CUBLAS_OP_N : CUBLAS_OP_T;
    const int ldb = tb == 'N' ? N : K;  // B stored (K,N) or (N,K), row-major
    const int lda = ta == 'N' ? K : M;  // A stored (M,K) or (K,M), row-major
    const cublasComputeType_t compute =
        precision_ == Precision::bf16 && !keep_fp32 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_PEDANTIC;
    check(cublasGemmEx(handle_, opb, opa, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C,
                       CUDA_R_32F, N, compute, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
  }
  std::string name() const override { return "cublas"; }
  Precision precision() const override { return precision_; }
  std::string implementation() const override {
    int v = 0;
    cublasGetVersion(handle_, &v);
    return "cuBLAS " + std::to_string(v) + " cublasGemmEx " +
           (precision_ == Precision::bf16 ? "CUBLAS_COMPUTE_32F_FAST_16BF" : "CUBLAS_COMPUTE_32F_PEDANTIC");
  }

 private:
  Precision precision_;
  cublasHandle_t handle_ = nullptr;
};

}  // namespace

std::unique_ptr<GemmBackend> make_cublas_gemm(Precision precision, void* cuda_stream) {
  return std::make_unique<CublasGemm>(precision, static_cast<cudaStream_t>(cuda_stream));
}

bool cuda_native_bf16() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 8;
}

}  // namespace fulcrum
