// gemm_onednn.cpp: the "onednn" gemm backend (gemm.hpp): host matrix
// products through oneDNN matmul primitives, fp32 or bf16 operands with fp32
// accumulation and fp32 output.
//
// - Row-major operands and their transposes are described by strides, so no
//   operand is copied for layout (oneDNN's brgemm matmul takes all four).
// - beta is a "sum" post-op (C = alpha A B + beta C) and alpha an output
//   scale, so the "+=" gradient convention costs nothing extra.
// - Primitives are created once per (shape, transposes, alpha, beta) and
//   cached: creating one costs far more than a small product.
// - bf16: each operand is rounded to bf16 (round to nearest even) by a cached
//   oneDNN reorder into a scratch buffer of the same layout, then multiplied
//   by the bf16 primitive, which accumulates in fp32. Operands inside the
//   registered parameter buffer (set_weights) use its bf16 copy, converted
//   once per optimizer step.
#include <dnnl.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "model/gemm_backends.hpp"

namespace fulcrum {

namespace {

using dnnl::memory;
using dt = memory::data_type;

std::string isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "isa#" + std::to_string(static_cast<int>(isa));
  }
}

// (rows, cols) row-major buffer seen as op(X) of shape (r, c): stored (r, c)
// when trans == 'N', (c, r) when 'T' (a transpose is a swap of strides).
memory::desc operand_desc(char trans, memory::dim r, memory::dim c, dt type) {
  return trans == 'N' ? memory::desc({r, c}, type, {c, 1}) : memory::desc({r, c}, type, {1, r});
}

// fp32 -> bf16 as the cached reorder (to_bf16) converts on the machines that
// run bf16 (vcvtneps2bf16): round to nearest even, fp32 denormals to a signed
// zero (measured: the reorder gives 0x0000 for 1e-39), NaN kept a quiet NaN.
// (The bf16 dot-product instructions treat denormal inputs as zero anyway, so
// products agree either way.) Written without branches so the compiler
// vectorises it.
void round_to_bf16(const float* src, long n, std::uint16_t* dst) {
  for (long i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, src + i, sizeof u);
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const std::uint32_t quiet_nan = (u >> 16) | 0x40u;
    const std::uint32_t signed_zero = (u & 0x80000000u) >> 16;
    const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u, is_denormal = (u & 0x7f800000u) == 0;
    dst[i] = static_cast<std::uint16_t>(is_nan ? quiet_nan : is_denormal ? signed_zero : rounded);
  }
}

// oneDNN marks every primitive execution for Intel VTune (ITT tasks, with a
// processor-trace write each time) unless told otherwise; a training step runs
// thousands of small products (per expert, per head group), where that costs
// a few percent. Off unless the user set the variable (to profile with VTune).
// Must run before oneDNN's first primitive: it reads the variable once.
void disable_itt_tasks_unless_asked() {
  if (!std::getenv("ONEDNN_ITT_TASK_LEVEL") && !std::getenv("DNNL_ITT_TASK_LEVEL"))
    setenv("DNNL_ITT_TASK_LEVEL", "0", 0);
}

class OnednnGemm final : public GemmBackend {
 public:
  explicit OnednnGemm(Precision p)
      : precision_(p), engine_((disable_itt_tasks_unless_asked(), dnnl::engine(dnnl::engine::kind::cpu, 0))),
        stream_(engine_) {
    // A trial product: fails here (clearly) rather than in the first step, and
    // names the kernel oneDNN picked for the run file.
    std::vector<float> a(64 * 64, 1.0f), b(64 * 64, 1.0f), c(64 * 64, 0.0f);
    gemm('N', 'T', 64, 64, 64, 1.0f, a.data(), b.data(), 0.0f, c.data(), false);
  }

  void gemm(char ta, char tb, int M, int N, int K, float alpha, const float* A, const float* B, float beta,
            float* C, bool keep_fp32) override {
    if (M == 0 || N == 0) return;
    if (K == 0) {  // op(A) op(B) is empty: C = beta C
      const std::size_t n = static_cast<std::size_t>(M) * N;
      for (std::size_t i = 0; i < n; ++i) C[i] = beta == 0.0f ? 0.0f : beta * C[i];
      return;
    }
    const dt type = precision_ == Precision::bf16 && !keep_fp32 ? dt::bf16 : dt::f32;
    Product& p = product(ta, tb, M, N, K, alpha, beta, type);
    memory a_mem, b_mem;
    if (type == dt::bf16) {
      a_mem = memory(p.a, engine_, bf16_operand(A, static_cast<long>(M) * K, scratch_a_));
      b_mem = memory(p.b, engine_, bf16_operand(B, static_cast<long>(K) * N, scratch_b_));
    } else {
      a_mem = memory(p.a, engine_, const_cast<float*>(A));
      b_mem = memory(p.b, engine_, const_cast<float*>(B));
    }
    memory c_mem(p.c, engine_, C);
    p.prim.execute(stream_, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
    stream_.wait();
  }

  // The experts' products (gemm.hpp gemm_grouped): their row counts change
  // every micro-batch, and a primitive specialised to each (M, K) would be
  // created for every new count and kept for the run (measured on this
  // machine: ~570 us to create one against ~70 us to run a 128x192x384 bf16
  // product; a 4-step study-size run created 3,619 primitives). So a grouped
  // call runs one primitive whose M and K are runtime dimensions
  // (DNNL_RUNTIME_DIM_VAL; N, the weight side, stays fixed), created once per
  // (transposes, N, alpha, beta, precision) and reused by every expert, layer
  // and step. Activation operands are rounded to bf16 by round_to_bf16 (no
  // reorder primitive per size either); weight operands use the bf16 copy.
  void gemm_grouped(char ta, char tb, float alpha, float beta, const std::vector<GemmProblem>& problems) override {
    const dt type = precision_ == Precision::bf16 ? dt::bf16 : dt::f32;
    Product* prim = nullptr;  // looked up once per N (the same for every problem of the experts' calls)
    int prim_n = -1;
    for (const GemmProblem& p : problems) {
      if (p.M == 0 || p.N == 0 || p.K == 0) {  // nothing to multiply: gemm() handles C = beta C
        gemm(ta, tb, p.M, p.N, p.K, alpha, p.A, p.B, beta, p.C, false);
        continue;
      }
      if (p.N != prim_n) {
        prim = &product(ta, tb, DNNL_RUNTIME_DIM_VAL, p.N, DNNL_RUNTIME_DIM_VAL, alpha, beta, type);
        prim_n = p.N;
      }
      const memory::desc a_desc = operand_desc(ta, p.M, p.K, type), b_desc = operand_desc(tb, p.K, p.N, type);
      memory a_mem, b_mem;
      if (type == dt::bf16) {
        a_mem = memory(a_desc, engine_, bf16_activation_or_weight(p.A, static_cast<long>(p.M) * p.K, scratch_a_));
        b_mem = memory(b_desc, engine_, bf16_activation_or_weight(p.B, static_cast<long>(p.K) * p.N, scratch_b_));
      } else {
        a_mem = memory(a_desc, engine_, const_cast<float*>(p.A));
        b_mem = memory(b_desc, engine_, const_cast<float*>(p.B));
      }
      memory c_mem(memory::desc({p.M, p.N}, dt::f32, {p.N, 1}), engine_, p.C);
      prim->prim.execute(stream_, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
      stream_.wait();
    }
  }

  void set_weights(const float* params, long n) override {
    weights_ = params;
    weights_n_ = n;
    weights_valid_ = false;
  }
  void weights_changed() override { weights_valid_ = false; }

  std::string name() const override { return "onednn"; }
  Precision precision() const override { return precision_; }
  std::string implementation() const override {
    const dnnl_version_t* v = dnnl_version();
    std::string out = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                      std::to_string(v->patch) + " matmul";
    for (const auto& k : kernels_) out += " " + k;
    return out;
  }

 private:
  struct Product {
    memory::desc a, b, c;
    dnnl::matmul prim;
  };
  using Key = std::tuple<char, char, memory::dim, memory::dim, memory::dim, float, float, int>;

  // M or K may be DNNL_RUNTIME_DIM_VAL (the grouped products): then the
  // operand descriptors carry runtime dimensions and strides.
  Product& product(char ta, char tb, memory::dim M, memory::dim N, memory::dim K, float alpha, float beta, dt type) {
    const Key key{ta, tb, M, N, K, alpha, beta, static_cast<int>(type)};
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    Product p;
    p.a = operand_desc(ta, M, K, type);
    p.b = operand_desc(tb, K, N, type);
    p.c = memory::desc({M, N}, dt::f32, {N, 1});
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(beta);
      attr.set_post_ops(ops);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(p.a, p.b, p.c), attr, engine_);
    kernels_.insert(pd.impl_info_str());
    p.prim = dnnl::matmul(pd);
    return cache_.emplace(key, std::move(p)).first->second;
  }

  // Inside the registered weights: a view into their bf16 copy (converted
  // once per weights_changed()); else nullptr.
  void* bf16_weight(const float* src, long n) {
    if (!(weights_ && src >= weights_ && src + n <= weights_ + weights_n_)) return nullptr;
    if (!weights_valid_) {
      to_bf16(weights_, weights_n_, weights_bf16_);
      weights_valid_ = true;
    }
    return weights_bf16_.data() + (src - weights_);
  }
  // The bf16 operand for n floats at src: a weight view, else converted into
  // `scratch` by a reorder primitive cached per n (fixed-shape products).
  void* bf16_operand(const float* src, long n, std::vector<std::uint16_t>& scratch) {
    if (void* w = bf16_weight(src, n)) return w;
    return to_bf16(src, n, scratch).get_data_handle();
  }
  // The same for operands whose size changes every call (grouped products):
  // converted by round_to_bf16, which needs no primitive per size.
  void* bf16_activation_or_weight(const float* src, long n, std::vector<std::uint16_t>& scratch) {
    if (void* w = bf16_weight(src, n)) return w;
    if (scratch.size() < static_cast<std::size_t>(n)) scratch.resize(static_cast<std::size_t>(n));
    round_to_bf16(src, n, scratch.data());
    return scratch.data();
  }

  // n contiguous floats -> bf16 in `scratch` (grown as needed), via a cached
  // 1-D reorder (oneDNN converts with round to nearest even).
  memory to_bf16(const float* src, memory::dim n, std::vector<std::uint16_t>& scratch) {
    if (scratch.size() < static_cast<std::size_t>(n)) scratch.resize(static_cast<std::size_t>(n));
    auto it = reorders_.find(n);
    if (it == reorders_.end()) {
      const memory::desc f({n}, dt::f32, memory::format_tag::a);
      const memory::desc h({n}, dt::bf16, memory::format_tag::a);
      it = reorders_.emplace(n, dnnl::reorder(dnnl::reorder::primitive_desc(engine_, f, engine_, h))).first;
    }
    memory f_mem(memory::desc({n}, dt::f32, memory::format_tag::a), engine_, const_cast<float*>(src));
    memory h_mem(memory::desc({n}, dt::bf16, memory::format_tag::a), engine_, scratch.data());
    it->second.execute(stream_, f_mem, h_mem);
    return h_mem;
  }

  Precision precision_;
  dnnl::engine engine_;
  dnnl::stream stream_;
  std::map<Key, Product> cache_;
  std::map<memory::dim, dnnl::reorder> reorders_;
  std::vector<std::uint16_t> scratch_a_, scratch_b_;
  const float* weights_ = nullptr;  // the model's parameters (set_weights)
  long weights_n_ = 0;
  bool weights_valid_ = false;
  std::vector<std::uint16_t> weights_bf16_;  // their bf16 copy
  std::set<std::string> kernels_;
};

}  // namespace

std::unique_ptr<GemmBackend> make_onednn_gemm(Precision precision) {
  return std::make_unique<OnednnGemm>(precision);
}

std::string onednn_cpu_isa() { return isa_name(dnnl::get_effective_cpu_isa()); }

bool onednn_native_bf16() {
  // ISA values are nested bit masks: every ISA with bf16 contains avx512_core_bf16's bits.
  const unsigned isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const unsigned bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;
}

}  // namespace fulcrum
