// gemm.cpp: the backend registry, deck-string resolution and the active
// backend (gemm.hpp). The kokkos backend lives here; the optional ones in
// gemm_onednn.cpp and gemm_cublas.cpp.
#include "model/gemm.hpp"

#include <algorithm>
#include <chrono>

#include "model/gemm_backends.hpp"
#include "model/kokkos_types.hpp"

namespace fulcrum {

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

namespace {

GemmBackend* g_active = nullptr;
double g_seconds = 0;  // time inside gemm_f32 (host builds)

constexpr bool kCudaBuild =
#ifdef KOKKOS_ENABLE_CUDA
    true;
#else
    false;
#endif

// KokkosBlas::gemm in fp32: OpenBLAS on the host, cuBLAS (CUDA cores) on GPUs.
class KokkosGemm final : public GemmBackend {
 public:
  void gemm(char ta, char tb, int M, int N, int K, float alpha, const float* A, const float* B, float beta,
            float* C, bool /*keep_fp32: always fp32*/) override {
    kokkos_matmul<float>(ta, tb, M, N, K, alpha, A, B, beta, C);
  }
  std::string name() const override { return "kokkos"; }
  Precision precision() const override { return Precision::fp32; }
  std::string implementation() const override {
    return kCudaBuild ? "KokkosBlas::gemm (cuBLAS sgemm)" : "KokkosBlas::gemm (host BLAS sgemm)";
  }
};

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

std::vector<std::string> available_gemm_backends() {
  std::vector<std::string> out{"kokkos"};
#ifdef FULCRUM_HAVE_ONEDNN
  if (!kCudaBuild) out.push_back("onednn");  // host products only: CUDA builds keep data on the GPU
#endif
#ifdef FULCRUM_HAVE_CUBLAS
  out.push_back("cublas");
#endif
  return out;
}

std::string host_cpu_isa() {
#ifdef FULCRUM_HAVE_ONEDNN
  return onednn_cpu_isa();
#else
  return "unknown (built without oneDNN)";
#endif
}

bool native_bf16(const std::string& backend) {
#ifdef FULCRUM_HAVE_ONEDNN
  if (backend == "onednn") return onednn_native_bf16();
#endif
#ifdef FULCRUM_HAVE_CUBLAS
  if (backend == "cublas") return cuda_native_bf16();
#endif
  (void)backend;
  return false;  // kokkos: sgemm only (Debian's OpenBLAS has no sbgemm)
}

GemmChoice resolve_gemm(const std::string& backend, const std::string& precision) {
  GemmChoice c;
  c.requested_backend = backend;
  c.requested_precision = precision;
  const auto avail = available_gemm_backends();
  if (backend == "auto") {
    c.backend = std::find(avail.begin(), avail.end(), "cublas") != avail.end()   ? "cublas"
                : std::find(avail.begin(), avail.end(), "onednn") != avail.end() ? "onednn"
                                                                                 : "kokkos";
  } else {
    const auto all = gemm_backend_names();
    if (std::find(all.begin(), all.end(), backend) == all.end())
      throw GemmConfigError("train.gemm_backend", "'" + backend + "' is not a gemm backend (valid: auto, " +
                                                      join(all) + ")");
    if (std::find(avail.begin(), avail.end(), backend) == avail.end())
      throw GemmConfigError("train.gemm_backend",
                            "'" + backend + "' is not available in this build (available: auto, " + join(avail) +
                                (backend == "onednn" ? "; oneDNN needs libdnnl-dev and a host (non-CUDA) build"
                                 : backend == "cublas" ? "; cuBLAS needs a Kokkos built with CUDA"
                                                       : "") +
                                ")");
    c.backend = backend;
  }
  const bool native = native_bf16(c.backend);
  if (precision == "auto") {
    c.precision = native ? Precision::bf16 : Precision::fp32;
  } else if (precision == "fp32") {
    c.precision = Precision::fp32;
  } else if (precision == "bf16") {
    if (c.backend == "kokkos")
      throw GemmConfigError("train.precision",
                            "is 'bf16', but gemm backend 'kokkos' computes in fp32 only; use gemm_backend = "
                            "\"onednn\" (CPU) or \"cublas\" (CUDA), or precision = \"fp32\"");
    if (!native)
      throw GemmConfigError("train.precision",
                            "is 'bf16', but this machine has no native bf16 matrix instructions for backend '" +
                                c.backend + "' (" +
                                (c.backend == "cublas" ? std::string("needs a GPU of compute capability 8.0+")
                                                       : "CPU ISA " + host_cpu_isa() +
                                                             "; needs AVX512-BF16 or AMX-BF16") +
                                "); use precision = \"auto\" or \"fp32\"");
    c.precision = Precision::bf16;
  } else {
    throw GemmConfigError("train.precision", "'" + precision + "' is not a precision (valid: " + join(precision_names()) + ")");
  }
  return c;
}

std::unique_ptr<GemmBackend> make_gemm_backend(const GemmChoice& c) {
#ifdef FULCRUM_HAVE_ONEDNN
  if (c.backend == "onednn") return make_onednn_gemm(c.precision);
#endif
#ifdef FULCRUM_HAVE_CUBLAS
  if (c.backend == "cublas") return make_cublas_gemm(c.precision, ExecSpace().cuda_stream());
#endif
  if (c.backend == "kokkos" && c.precision == Precision::fp32) return std::make_unique<KokkosGemm>();
  throw GemmConfigError("train.gemm_backend", "backend '" + c.backend + "' in " + precision_name(c.precision) +
                                                  " is not available in this build");
}

ScopedGemm::ScopedGemm(const GemmChoice& choice) : backend_(make_gemm_backend(choice)), previous_(g_active) {
  g_active = backend_.get();
}
ScopedGemm::~ScopedGemm() { g_active = previous_; }

GemmBackend* active_gemm_backend() { return g_active; }

void gemm_f32(char ta, char tb, int M, int N, int K, float alpha, const float* A, const float* B, float beta,
              float* C, bool keep_fp32) {
  const auto t0 = std::chrono::steady_clock::now();
  if (g_active) g_active->gemm(ta, tb, M, N, K, alpha, A, B, beta, C, keep_fp32);
  else kokkos_matmul<float>(ta, tb, M, N, K, alpha, A, B, beta, C);
  g_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void gemm_grouped_f32(char ta, char tb, float alpha, float beta, const std::vector<GemmProblem>& problems) {
  const auto t0 = std::chrono::steady_clock::now();
  if (g_active) g_active->gemm_grouped(ta, tb, alpha, beta, problems);
  else
    for (const GemmProblem& p : problems) kokkos_matmul<float>(ta, tb, p.M, p.N, p.K, alpha, p.A, p.B, beta, p.C);
  g_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double gemm_seconds() { return kCudaBuild ? -1.0 : g_seconds; }

}  // namespace fulcrum
