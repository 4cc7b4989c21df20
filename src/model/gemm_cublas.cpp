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
#include <vector>

#include "model/gemm_backends.hpp"

namespace fulcrum {

namespace {

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed (status " + std::to_string((int)s) + ")");
}

class CublasGemm final : public GemmBackend {
 public:
  CublasGemm(Precision p, cudaStream_t stream) : stream_(stream), precision_(p) {
    check(cublasCreate(&handle_), "cublasCreate");
    check(cublasSetStream(handle_, stream), "cublasSetStream");
    // fp32 must stay fp32: forbid TF32 down-conversion in the fp32 path.
    check(cublasSetMathMode(handle_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
  }
  ~CublasGemm() override {
#if CUBLAS_VERSION >= 120500
    if (device_pointers_) cudaFree(device_pointers_);
#endif
    cublasDestroy(handle_);
  }

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
  // One cublasGemmGroupedBatchedEx call for the group (cuBLAS 12.5+): each
  // problem is its own group of size one, as the experts' row counts differ.
  // Sizes, transposes and scalars are host arrays; the operand pointers must
  // be device arrays, copied once per call on the stream. Where cuBLAS
  // refuses the compute type (its grouped product supports fewer than
  // cublasGemmEx), the backend falls back to one cublasGemmEx per problem
  // from then on, and says so in implementation().
  void gemm_grouped(char ta, char tb, float alpha, float beta, const std::vector<GemmProblem>& problems) override {
#if CUBLAS_VERSION >= 120500
    if (grouped_status_ == CUBLAS_STATUS_SUCCESS && !problems.empty()) {
      const cublasStatus_t s = gemm_grouped_batched(ta, tb, alpha, beta, problems);
      if (s == CUBLAS_STATUS_SUCCESS) return;
      if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE) check(s, "cublasGemmGroupedBatchedEx");
      grouped_status_ = s;  // refused before anything ran: loop from now on
    }
#endif
    GemmBackend::gemm_grouped(ta, tb, alpha, beta, problems);
  }

  std::string name() const override { return "cublas"; }
  Precision precision() const override { return precision_; }
  std::string implementation() const override {
    int v = 0;
    cublasGetVersion(handle_, &v);
    return "cuBLAS " + std::to_string(v) + " cublasGemmEx " +
           (precision_ == Precision::bf16 ? "CUBLAS_COMPUTE_32F_FAST_16BF" : "CUBLAS_COMPUTE_32F_PEDANTIC") +
           (grouped_status_ == CUBLAS_STATUS_SUCCESS
                ? std::string(kHaveGrouped ? ", experts: cublasGemmGroupedBatchedEx" : ", experts: cublasGemmEx per expert (cuBLAS < 12.5)")
                : ", experts: cublasGemmEx per expert (grouped product refused, status " +
                      std::to_string((int)grouped_status_) + ")");
  }

 private:
#if CUBLAS_VERSION >= 120500
  static constexpr bool kHaveGrouped = true;
  cublasStatus_t gemm_grouped_batched(char ta, char tb, float alpha, float beta,
                                      const std::vector<GemmProblem>& problems) {
    const int G = (int)problems.size();
    // column-major view, as in gemm(): C^T (N,M) = op(B)^T op(A)^T
    const cublasOperation_t opb = tb == 'N' ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t opa = ta == 'N' ? CUBLAS_OP_N : CUBLAS_OP_T;
    std::vector<cublasOperation_t> op_first(G, opb), op_second(G, opa);
    std::vector<int> m(G), n(G), k(G), ld_first(G), ld_second(G), ldc(G), group_size(G, 1);
    std::vector<float> alphas(G, alpha), betas(G, beta);
    std::vector<const void*> pointers(3 * (std::size_t)G);  // [B... | A... | C...]
    for (int g = 0; g < G; ++g) {
      const GemmProblem& p = problems[g];
      m[g] = p.N;
      n[g] = p.M;
      k[g] = p.K;
      ld_first[g] = tb == 'N' ? p.N : p.K;
      ld_second[g] = ta == 'N' ? p.K : p.M;
      ldc[g] = p.N;
      pointers[g] = p.B;
      pointers[G + g] = p.A;
      pointers[2 * G + g] = p.C;
    }
    const std::size_t bytes = pointers.size() * sizeof(void*);
    if (bytes > device_pointers_bytes_) {
      if (device_pointers_) cudaFree(device_pointers_);  // synchronises: no product still reads it
      if (cudaMalloc(&device_pointers_, bytes) != cudaSuccess)
        throw std::runtime_error("cuBLAS grouped product: cudaMalloc of the pointer arrays failed");
      device_pointers_bytes_ = bytes;
    }
    // From pageable memory: returns once `pointers` is staged, so it may go out of scope.
    if (cudaMemcpyAsync(device_pointers_, pointers.data(), bytes, cudaMemcpyHostToDevice, stream_) != cudaSuccess)
      throw std::runtime_error("cuBLAS grouped product: copying the pointer arrays failed");
    const void* const* d = static_cast<const void* const*>(device_pointers_);
    const cublasComputeType_t compute =
        precision_ == Precision::bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
    return cublasGemmGroupedBatchedEx(handle_, op_first.data(), op_second.data(), m.data(), n.data(), k.data(),
                                      alphas.data(), d, CUDA_R_32F, ld_first.data(), d + G, CUDA_R_32F,
                                      ld_second.data(), betas.data(), const_cast<void* const*>(d + 2 * G),
                                      CUDA_R_32F, ldc.data(), G, group_size.data(), compute);
  }
  void* device_pointers_ = nullptr;  // the grouped call's operand pointer arrays (device)
  std::size_t device_pointers_bytes_ = 0;
#else
  static constexpr bool kHaveGrouped = false;
#endif
  cublasStatus_t grouped_status_ = CUBLAS_STATUS_SUCCESS;  // a refusal switches the experts to the loop
  cudaStream_t stream_;
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
