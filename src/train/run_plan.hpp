// run_plan.hpp: numbers derived from a deck before training: run length,
// accumulation, accounting. Used by --describe, the trainer and the run file.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "config/run_config.hpp"
#include "model/gemm.hpp"
#include "model/model_shape.hpp"

namespace fulcrum {

struct RunPlan {
  ModelShape shape;
  ModelAccounting accounting;
  double tokens_target = 0;       // D = train.tokens, or C / M
  double compute_target = 0;      // C = train.compute, or D * M
  std::int64_t steps_total = 0;   // ceil(D / batch_tokens)
  int rows_per_step = 0;          // global sequences per step = batch_tokens / seq_len
  int grad_accum_steps = 0;       // micro-batches per rank per step
  GemmChoice gemm;                // train.gemm_backend / train.precision resolved for this build and machine
};

// Throws GemmConfigError when the deck's backend or precision cannot run here.
RunPlan make_run_plan(const RunConfig& config, int world_size);

using ConfigValue = std::variant<std::int64_t, double, std::string>;
// Every number written to /config (doc/output-format.md) and printed by
// --describe, as ordered key/value pairs.
std::vector<std::pair<std::string, ConfigValue>> describe_run(const RunConfig& config,
                                                              const RunPlan& plan);
std::string format_config_value(const ConfigValue& v);

}  // namespace fulcrum
