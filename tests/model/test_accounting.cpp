// Parameter and FLOP accounting against hand-computed cases and the paper's
// Table 3 architectures (method notes, Appendix C).
#include <gtest/gtest.h>

#include "model/model_shape.hpp"

using namespace fulcrum;

namespace {
ModelShape small_dense() {
  ModelShape s;
  s.vocab_size = 10;
  s.d_model = 8;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.head_dim = 2;
  s.d_ffn = 12;
  s.seq_len = 16;
  return s;
}
}  // namespace

TEST(Accounting, SmallDenseByHand) {
  const ModelShape s = small_dense();
  const auto a = model_accounting(s);
  // per layer: wq 8*8 + wk 4*8 + wv 4*8 + wo 8*8 = 192; norms 16; ffn 3*8*12 = 288
  // total = 2 * (192 + 16 + 288) + final norm 8 = 1000
  EXPECT_DOUBLE_EQ(a.params_total, 1000.0);
  EXPECT_DOUBLE_EQ(a.params_active, 1000.0);
  EXPECT_DOUBLE_EQ(a.params_embedding, 2 * 10 * 8);
  // per layer fwd/token: attn 64*(2 + 2/2) + 4*16*8 = 192 + 512 = 704; ffn 6*8*12 = 576
  // logits 2*8*10 = 160; M = 3 * (2*(704+576) + 160) = 8160
  EXPECT_DOUBLE_EQ(a.flops_per_token, 8160.0);
  EXPECT_DOUBLE_EQ(a.activation_ratio, 1.0);
  EXPECT_DOUBLE_EQ(a.granularity, 0.0);
  EXPECT_EQ(parameter_count(parameter_layout(s)), 1000 + 160);
}

TEST(Accounting, SmallMoEByHand) {
  ModelShape s = small_dense();
  s.is_moe = true;
  s.num_experts = 6;
  s.num_active = 2;
  s.num_shared = 1;
  s.d_expert = 4;
  s.first_k_dense = 1;
  const auto a = model_accounting(s);
  // layer 0 dense: 192 + 16 + 288 = 496. layer 1 MoE: 192 + 16 + router 48 +
  // (6 + 1) experts * 3*8*4 = 672 -> 928. total = 496 + 928 + 8 = 1432
  EXPECT_DOUBLE_EQ(a.params_total, 1432.0);
  // active: 496 + 192 + 16 + 48 + 3 * 96 + 8 = 1048
  EXPECT_DOUBLE_EQ(a.params_active, 1048.0);
  // fwd: layer 0: 704 + 576; layer 1: 704 + 6*8*(2*4) + 6*8*4*1 = 704 + 384 + 192
  // logits 160 -> M = 3 * (1280 + 1280 + 160) = 8160
  EXPECT_DOUBLE_EQ(a.flops_per_token, 3 * (1280 + 1280 + 160));
  EXPECT_DOUBLE_EQ(a.activation_ratio, 3.0 / 7.0);
  EXPECT_DOUBLE_EQ(a.granularity, 4.0);
  EXPECT_DOUBLE_EQ(a.shared_ratio, 1.0 / 3.0);
}

TEST(Accounting, PaperLingMiniBeta) {
  ModelShape s;
  s.vocab_size = 126464;
  s.d_model = 2048;
  s.n_layers = 20;
  s.n_heads = 16;
  s.n_kv_heads = 4;
  s.head_dim = 128;
  s.d_ffn = 5120;
  s.seq_len = 8192;
  s.is_moe = true;
  s.num_experts = 384;
  s.num_active = 12;
  s.num_shared = 1;
  s.d_expert = 384;
  s.first_k_dense = 1;
  const auto a = model_accounting(s);
  EXPECT_NEAR(a.params_total / 1e9, 17.5, 0.05);   // Table 3: 17.5B
  EXPECT_NEAR(a.params_active / 1e9, 0.85, 0.03);  // Table 3: 0.85B
  EXPECT_NEAR(a.activation_ratio, 13.0 / 385.0, 1e-15);
  EXPECT_NEAR(a.granularity, 2.0 * 2048 / 384, 1e-12);
}

TEST(Accounting, PaperDense6p1B) {
  ModelShape s;
  s.vocab_size = 126464;
  s.d_model = 4096;
  s.n_layers = 28;
  s.n_heads = 32;
  s.n_kv_heads = 8;
  s.head_dim = 128;
  s.d_ffn = 14336;
  s.seq_len = 4096;
  const auto a = model_accounting(s);
  EXPECT_NEAR(a.params_total / 1e9, 6.11, 0.01);  // Table 3: 6.11B
}
