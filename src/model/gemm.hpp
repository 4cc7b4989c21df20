// gemm.hpp: the matrix-product layer. Every float product of the model goes
// through gemm_f32(); which library computes it, and in which precision, is
// chosen once per run from the deck keys `train.gemm_backend` and
// `train.precision` (doc/input-decks.md, doc/model.md "Mixed precision").
//
// Backends (a registry keyed by the deck string; unknown names list the valid
// ones, and a backend that is not compiled in says so):
//   kokkos  KokkosBlas::gemm (OpenBLAS on the host, cuBLAS in CUDA builds), fp32 only
//   onednn  oneDNN matmul primitives on the host (FULCRUM_ENABLE_ONEDNN): fp32,
//           or bf16 operands with fp32 accumulation and fp32 output
//   cublas  cublasGemmEx on the Kokkos CUDA stream (CUDA builds): fp32, or
//           bf16 operands with fp32 accumulation and fp32 output
//
// Precision bf16 means exactly this (the autocast rule of Megatron/torch):
// both operands of a product are rounded to bf16 (round to nearest even)
// where they feed the product, products accumulate in fp32 and C stays fp32.
// Master weights, gradients, optimiser moments, norms, softmax, the router
// and the losses never leave fp32; the router's products (matmul_fp32) too. Double-precision products (the gradient
// checks) always use the kokkos path.
//
// The active backend is process-wide state, like torch.autocast: a
// ScopedGemm installs it for the lifetime of a run and restores the previous
// one after (the default, with no scope, is kokkos in fp32, which is what the
// unit tests of the layers use).
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace fulcrum {

enum class Precision { fp32, bf16 };
const char* precision_name(Precision p);

// Deck errors about backend or precision (unknown, not compiled in, not
// supported by this CPU/GPU). The trainer turns them into deck errors naming
// the key (exit code 2).
struct GemmConfigError : std::runtime_error {
  std::string key;  // "train.gemm_backend" or "train.precision"
  GemmConfigError(std::string k, const std::string& what) : std::runtime_error(what), key(std::move(k)) {}
};

// One product of a grouped call: C (M,N) = alpha op(A) op(B) + beta C, with
// the transposes, alpha and beta of the call (row-major, contiguous; the
// argument convention of matmul() in kokkos_types.hpp).
template <class T>
struct MatmulProblem {
  int M, N, K;
  const T* A;
  const T* B;
  T* C;
};
using GemmProblem = MatmulProblem<float>;

// One backend instance: computes C (M,N) = alpha op(A) op(B) + beta C on
// row-major contiguous float buffers in its precision. Same argument
// convention as matmul() in kokkos_types.hpp.
class GemmBackend {
 public:
  virtual ~GemmBackend() = default;
  // keep_fp32: compute this product in fp32 whatever the precision (the
  // router's products: routing decisions must not depend on bf16 rounding).
  virtual void gemm(char trans_a, char trans_b, int M, int N, int K, float alpha, const float* A, const float* B,
                    float beta, float* C, bool keep_fp32) = 0;
  // A group of products with the same transposes, alpha and beta and sizes
  // that differ per problem: the routed experts' products of one weight
  // matrix (experts.hpp), one problem per local expert. Default: one gemm()
  // per problem (oneDNN 2.6 and Kokkos Kernels have no grouped product);
  // cuBLAS 12.5+ issues the whole group as one call.
  virtual void gemm_grouped(char trans_a, char trans_b, float alpha, float beta,
                            const std::vector<GemmProblem>& problems) {
    for (const GemmProblem& p : problems) gemm(trans_a, trans_b, p.M, p.N, p.K, alpha, p.A, p.B, beta, p.C, false);
  }
  virtual std::string name() const = 0;
  virtual Precision precision() const = 0;
  // What actually runs (e.g. "oneDNN 2.6.3 brg:avx512_core_bf16"), for the run file.
  virtual std::string implementation() const = 0;

  // The model's parameters: n floats at `params`. Backends that round
  // operands to bf16 keep one bf16 copy of this buffer and use it for every
  // operand that lies inside it, instead of converting the weights in every
  // product. The copy is made on first use after weights_changed(), which
  // the owner calls whenever the parameters change (optimizer step, load,
  // init): once per optimizer step. Default: no copy (fp32 backends).
  virtual void set_weights(const float* params, long n) { (void)params, (void)n; }
  virtual void weights_changed() {}
};

// What a deck asks for, resolved against this build and this machine.
struct GemmChoice {
  std::string backend;    // "kokkos" | "onednn" | "cublas"
  Precision precision = Precision::fp32;
  std::string requested_backend;    // the deck's string ("auto" allowed)
  std::string requested_precision;  // the deck's string ("auto" allowed)
};

// Every backend name the registry knows, compiled in or not (for messages and
// the deck schema's allowed values of train.gemm_backend, besides "auto").
// Inline: the deck reader (no Kokkos) reads the registry's own list.
inline std::vector<std::string> gemm_backend_names() { return {"kokkos", "onednn", "cublas"}; }
// The deck spellings of a precision that resolve_gemm() accepts ("auto":
// bf16 where the backend has native bf16, else fp32).
inline std::vector<std::string> precision_names() { return {"auto", "fp32", "bf16"}; }
// The backends compiled into this build.
std::vector<std::string> available_gemm_backends();
// The instruction set the host matrix products can use, e.g.
// "avx512_core_amx (AMX-BF16)", "avx512_core_bf16", "avx2" (oneDNN's view;
// respects DNNL_MAX_CPU_ISA), or "unknown (built without oneDNN)".
std::string host_cpu_isa();
// Whether `backend` runs bf16 products natively on this machine
// (host: AVX512-BF16 or AMX-BF16; CUDA: compute capability 8.0+).
bool native_bf16(const std::string& backend);

// Resolves the deck strings. backend "auto": cublas in CUDA builds, else
// onednn when compiled in, else kokkos. precision "auto": bf16 where the
// chosen backend has native bf16, fp32 elsewhere. Throws GemmConfigError.
GemmChoice resolve_gemm(const std::string& backend, const std::string& precision);

// Creates a backend instance (throws GemmConfigError when unavailable).
std::unique_ptr<GemmBackend> make_gemm_backend(const GemmChoice& choice);

// Installs a backend for float products for the lifetime of the scope.
class ScopedGemm {
 public:
  explicit ScopedGemm(const GemmChoice& choice);
  ~ScopedGemm();
  ScopedGemm(const ScopedGemm&) = delete;
  ScopedGemm& operator=(const ScopedGemm&) = delete;
  GemmBackend& backend() { return *backend_; }

 private:
  std::unique_ptr<GemmBackend> backend_;
  GemmBackend* previous_;
};

// The installed backend, or nullptr (then matmul<float> uses KokkosBlas in fp32).
GemmBackend* active_gemm_backend();

// Wall seconds spent in float products since the process started (host
// backends, whose calls return when the product is done; CUDA builds return
// a negative value: their products are asynchronous and not timed here).
// The trainer reports the share of step time spent outside products.
double gemm_seconds();

// C (M,N) = alpha op(A) op(B) + beta C through the active backend.
void gemm_f32(char trans_a, char trans_b, int M, int N, int K, float alpha, const float* A, const float* B,
              float beta, float* C, bool keep_fp32 = false);
// A group of products through the active backend's gemm_grouped().
void gemm_grouped_f32(char trans_a, char trans_b, float alpha, float beta, const std::vector<GemmProblem>& problems);

}  // namespace fulcrum
