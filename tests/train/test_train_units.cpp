// Units of src/train: LR schedules (Appendix B's WSD and cosine), the token
// loader (batches independent of the rank split), the run plan.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "data/token_file.hpp"
#include "train/data_loader.hpp"
#include "train/lr_schedule.hpp"
#include "train/run_plan.hpp"

using namespace fulcrum;

namespace {

LrSchedule schedule(const std::string& kind, std::int64_t steps) {
  LrSchedule s;
  s.kind = kind;
  s.peak = 2e-3;
  s.total_steps = steps;
  s.warmup_fraction = 0.1;
  s.decay_fraction = 0.2;
  s.final_fraction = 0.1;
  return s;
}

}  // namespace

// WSD: linear warm-up to the peak, flat, then exponential decay that lands on
// final_fraction * peak at the last step.
TEST(LrSchedule, WsdWarmupStableDecayEndPoints) {
  const LrSchedule s = schedule("wsd", 100);
  ASSERT_EQ(s.warmup_steps(), 10);
  ASSERT_EQ(s.decay_steps(), 20);
  EXPECT_DOUBLE_EQ(s.at(0), 2e-4);        // 1/10 of the peak
  EXPECT_DOUBLE_EQ(s.at(4), 1e-3);        // 5/10
  EXPECT_DOUBLE_EQ(s.at(9), 2e-3);        // warm-up reaches the peak
  for (int k = 10; k < 80; ++k) EXPECT_DOUBLE_EQ(s.at(k), 2e-3) << k;
  EXPECT_DOUBLE_EQ(s.at(99), 2e-4);       // final_fraction * peak at the last step
  EXPECT_NEAR(s.at(89), 2e-3 * std::pow(0.1, 0.5), 1e-15);  // half-way through the decay
  for (int k = 80; k < 99; ++k) EXPECT_GT(s.at(k), s.at(k + 1)) << k;
}

TEST(LrSchedule, CosineEndsAtTheFloor) {
  const LrSchedule s = schedule("cosine", 110);
  ASSERT_EQ(s.warmup_steps(), 11);
  EXPECT_DOUBLE_EQ(s.at(10), 2e-3);
  EXPECT_NEAR(s.at(109), 2e-4, 1e-15);
  // half-way through the 99 post-warm-up steps: the mean of peak and floor
  EXPECT_NEAR(s.at(11 + 98 / 2), 0.5 * (2e-3 + 2e-4), 2e-5);
  for (int k = 11; k < 109; ++k) EXPECT_GE(s.at(k), s.at(k + 1)) << k;
}

TEST(LrSchedule, NoWarmupAndUnknownKind) {
  LrSchedule s = schedule("wsd", 10);
  s.warmup_fraction = 0;
  EXPECT_DOUBLE_EQ(s.at(0), 2e-3);
  s.kind = "linear";
  EXPECT_THROW(s.at(5), std::invalid_argument);
}

// The rows of one optimizer step do not depend on how they are split over
// ranks and micro-batches (doc/running.md: results independent of layout).
TEST(TokenDataset, RowsDoNotDependOnTheSplit) {
  const std::string path = (std::filesystem::temp_directory_path() / "fulcrum_test_train_units.tok").string();
  std::vector<std::int32_t> tokens(5000);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int32_t>((i * 7919) % 1000);
  write_token_file(path, tokens, 1000);
  const int T = 16, R = 8;
  TokenDataset ds(path, T);
  std::vector<int> in_all, tg_all;
  ds.training_rows(42, 3, 0, R, in_all, tg_all);
  for (int parts : {2, 4, 8}) {
    std::vector<int> in, tg;
    for (int p = 0; p < parts; ++p) {
      std::vector<int> a, b;
      ds.training_rows(42, 3, p * (R / parts), R / parts, a, b);
      in.insert(in.end(), a.begin(), a.end());
      tg.insert(tg.end(), b.begin(), b.end());
    }
    EXPECT_EQ(in, in_all) << parts << " parts";
    EXPECT_EQ(tg, tg_all) << parts << " parts";
  }
  // targets are the inputs shifted by one token
  for (int r = 0; r < R; ++r)
    for (int t = 0; t + 1 < T; ++t) EXPECT_EQ(tg_all[r * T + t], in_all[r * T + t + 1]);
  // another step or seed gives other rows
  std::vector<int> other, unused;
  ds.training_rows(42, 4, 0, R, other, unused);
  EXPECT_NE(other, in_all);
  ds.training_rows(43, 3, 0, R, other, unused);
  EXPECT_NE(other, in_all);
  // evaluation rows are consecutive windows that wrap around
  const std::int64_t windows = (5000 - 1) / T;
  std::vector<int> e0, e1, et;
  ds.eval_rows(0, 1, e0, et);
  ds.eval_rows(windows, 1, e1, et);
  EXPECT_EQ(e0, e1);
  EXPECT_EQ(e0[0], tokens[0]);
  EXPECT_EQ(ds.eval_row_count(65536), 65536 / T);
  EXPECT_EQ(ds.eval_row_count(1), 1);
  std::filesystem::remove(path);
}

// Run length and accumulation: steps = ceil(D / batch_tokens); each rank
// takes rows_per_step / W rows, micro_batch_size at a time; C = D * M.
TEST(RunPlan, StepsAccumulationAndCompute) {
  RunConfig c;
  c.model.vocab_size = 257;
  c.model.d_model = 32;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.n_kv_heads = 2;
  c.model.d_ffn = 64;
  c.model.seq_len = 16;
  c.train.batch_tokens = 512;     // 32 rows
  c.train.micro_batch_size = 4;
  c.train.tokens = 10000;
  c.train.precision = "fp32";
  c.train.gemm_backend = "kokkos";
  const RunPlan p1 = make_run_plan(c, 1);
  EXPECT_EQ(p1.steps_total, 20);  // ceil(10000 / 512)
  EXPECT_EQ(p1.rows_per_step, 32);
  EXPECT_EQ(p1.grad_accum_steps, 8);
  EXPECT_DOUBLE_EQ(p1.compute_target, 10000 * p1.accounting.flops_per_token);
  EXPECT_EQ(make_run_plan(c, 2).grad_accum_steps, 4);
  EXPECT_EQ(make_run_plan(c, 4).grad_accum_steps, 2);
  // a compute target gives the tokens: D = C / M
  c.train.tokens = 0;
  c.train.compute = 1e9;
  const RunPlan pc = make_run_plan(c, 1);
  EXPECT_DOUBLE_EQ(pc.tokens_target, 1e9 / pc.accounting.flops_per_token);
  EXPECT_EQ(pc.steps_total, static_cast<std::int64_t>(std::ceil(pc.tokens_target / 512)));
}
