// Mixed precision (train.precision = "bf16", doc/model.md "Mixed precision"):
// the whole model's forward and backward in bf16 products against the fp32
// path, dense and MoE: losses within 1e-2 relative, every parameter tensor's
// gradient with cosine similarity > 0.999; and bf16 runs are bit-identical.
#include <cmath>
#include <string>
#include <vector>

#include "model/transformer.hpp"
#include "test_helpers.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {

// Large enough that products have realistic K (64-128), small enough for a unit test.
ModelShape small_shape(bool moe) {
  ModelShape s;
  s.vocab_size = 97;
  s.d_model = 64;
  s.n_layers = 3;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.head_dim = 16;
  s.d_ffn = 128;
  s.seq_len = 32;
  if (moe) {
    s.is_moe = true;
    s.num_experts = 8;
    s.num_active = 2;
    s.num_shared = 1;
    s.d_expert = 32;
    s.first_k_dense = 1;
    s.aux_loss_coef = 0.01;
    s.z_loss_coef = 0.001;
  }
  return s;
}

struct Pass {
  ModelLosses losses;
  std::vector<float> grads;
};

// One forward + backward of a fixed batch, with `precision`'s products (or
// the default fp32 KokkosBlas path when precision is empty).
Pass run_pass(const ModelShape& s, const std::string& precision) {
  const int B = 4;
  std::unique_ptr<ScopedGemm> scope;
  if (!precision.empty()) scope = std::make_unique<ScopedGemm>(resolve_gemm("auto", precision));
  Transformer<float> model(s, B);
  model.init_parameters(11, 0.02);
  std::vector<int> tokens(B * s.seq_len), targets(B * s.seq_len);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = (int)((i * 7919 + 13) % s.vocab_size);
    targets[i] = (int)((i * 104729 + 5) % s.vocab_size);
  }
  model.set_batch(tokens, targets, B);
  model.zero_grads();
  Pass p;
  p.losses = model.forward();
  model.backward(1.0f);
  p.grads = to_host(model.grads().data(), model.num_parameters());
  return p;
}

bool have_bf16() { return native_bf16(resolve_gemm("auto", "fp32").backend); }

void compare_bf16_to_fp32(bool moe) {
  if (!have_bf16()) GTEST_SKIP() << "no native bf16 on this machine (CPU ISA " << host_cpu_isa() << ")";
  const ModelShape s = small_shape(moe);
  const Pass ref = run_pass(s, "fp32");
  const Pass half = run_pass(s, "bf16");
  EXPECT_NEAR(half.losses.lm, ref.losses.lm, 1e-2 * std::abs(ref.losses.lm));
  EXPECT_NEAR(half.losses.total(), ref.losses.total(), 1e-2 * std::abs(ref.losses.total()));
  EXPECT_NE(half.losses.lm, ref.losses.lm) << "bf16 path gave bit-identical losses: products not in bf16?";
  Transformer<float> layout_only(s, 1);
  for (const auto& t : layout_only.layout()) {
    double dot = 0, na = 0, nb = 0;
    for (long i = 0; i < t.size; ++i) {
      const double a = ref.grads[t.offset + i], b = half.grads[t.offset + i];
      dot += a * b;
      na += a * a;
      nb += b * b;
    }
    ASSERT_GT(na, 0) << t.name << ": zero fp32 gradient, the comparison would be empty";
    EXPECT_GT(dot / std::sqrt(na * nb), 0.999) << t.name;
  }
}

}  // namespace

TEST(MixedPrecision, DenseBf16MatchesFp32) { compare_bf16_to_fp32(false); }
TEST(MixedPrecision, MoEBf16MatchesFp32) { compare_bf16_to_fp32(true); }

TEST(MixedPrecision, Bf16IsDeterministic) {
  if (!have_bf16()) GTEST_SKIP() << "no native bf16 on this machine";
  const ModelShape s = small_shape(true);
  const Pass a = run_pass(s, "bf16"), b = run_pass(s, "bf16");
  EXPECT_EQ(a.losses.lm, b.losses.lm);
  EXPECT_EQ(a.grads, b.grads);
}

TEST(MixedPrecision, OnednnFp32MatchesKokkos) {
  // the fp32 path through the default backend agrees with KokkosBlas to fp32 rounding
  const ModelShape s = small_shape(true);
  const Pass kk = run_pass(s, "");
  const Pass dflt = run_pass(s, "fp32");
  EXPECT_NEAR(dflt.losses.total(), kk.losses.total(), 1e-5 * std::abs(kk.losses.total()));
  double dot = 0, na = 0, nb = 0;
  for (std::size_t i = 0; i < kk.grads.size(); ++i) {
    dot += (double)kk.grads[i] * dflt.grads[i];
    na += (double)kk.grads[i] * kk.grads[i];
    nb += (double)dflt.grads[i] * dflt.grads[i];
  }
  EXPECT_GT(dot / std::sqrt(na * nb), 1 - 1e-8);
}

TEST(MixedPrecision, Bf16WeightCopyOncePerChange) {
  // A backend with the parameters registered (set_weights) uses one bf16 copy
  // of them: bit-identical to converting in every product; refreshed by
  // weights_changed() after the parameters change.
  if (!have_bf16()) GTEST_SKIP() << "no native bf16 on this machine";
  const ModelShape s = small_shape(true);
  const int B = 2;
  std::vector<int> tokens(B * s.seq_len), targets(B * s.seq_len);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = (int)((i * 31 + 7) % s.vocab_size);
    targets[i] = (int)((i * 17 + 3) % s.vocab_size);
  }
  ScopedGemm scope(resolve_gemm("auto", "bf16"));
  Transformer<float> model(s, B);
  model.init_parameters(5, 0.02);
  model.set_batch(tokens, targets, B);
  const double plain = model.forward().total();
  scope.backend().set_weights(model.params().data(), model.num_parameters());
  EXPECT_EQ(model.forward().total(), plain) << "the bf16 weight copy must equal per-product conversion";
  // change the parameters: scale every weight by 1.5
  auto p = to_host(model.params().data(), model.num_parameters());
  for (auto& x : p) x *= 1.5f;
  copy_to_device(model.params().data(), p);
  scope.backend().weights_changed();
  const double cached = model.forward().total();
  scope.backend().set_weights(nullptr, 0);
  const double fresh = model.forward().total();
  EXPECT_EQ(cached, fresh) << "after weights_changed() the copy follows the parameters";
  EXPECT_NE(fresh, plain);
}
