#include "train/run_plan.hpp"

#include "model/attention_kernel.hpp"
#include "model/kokkos_types.hpp"
#include "model/model_memory.hpp"

#include <cmath>
#include <cstdio>

namespace fulcrum {

RunPlan make_run_plan(const RunConfig& config, int world_size) {
  RunPlan p;
  p.shape = model_shape_from_config(config);
  p.accounting = model_accounting(p.shape);
  const double M = p.accounting.flops_per_token;
  if (config.train.tokens > 0) {
    p.tokens_target = static_cast<double>(config.train.tokens);
    p.compute_target = p.tokens_target * M;
  } else {
    p.compute_target = config.train.compute;
    p.tokens_target = config.train.compute / M;  // D = C / M
  }
  const double bt = static_cast<double>(config.train.batch_tokens);
  p.steps_total = std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(p.tokens_target / bt)));
  p.rows_per_step = static_cast<int>(config.train.batch_tokens / config.model.seq_len);
  // Every rank processes rows_per_step / W rows per step (expert parallelism
  // shards experts, not tokens), micro_batch_size rows at a time.
  const int W = world_size > 0 ? world_size : 1;
  const int rows_per_rank = p.rows_per_step / W;
  p.grad_accum_steps = std::max(1, rows_per_rank / config.train.micro_batch_size);
  p.gemm = resolve_gemm(config.train.gemm_backend, config.train.precision);
  return p;
}

std::vector<std::pair<std::string, ConfigValue>> describe_run(const RunConfig& c, const RunPlan& p) {
  using I = std::int64_t;
  const auto& a = p.accounting;
  std::vector<std::pair<std::string, ConfigValue>> kv = {
      {"params_total", I(std::llround(a.params_total))},
      {"params_active", I(std::llround(a.params_active))},
      {"params_embedding", I(std::llround(a.params_embedding))},
      {"flops_per_token", a.flops_per_token},
      {"activation_ratio", a.activation_ratio},
      {"granularity", a.granularity},
      {"shared_ratio", a.shared_ratio},
      {"attention_flops_fraction", a.attention_flops_fraction},
      {"is_moe", I(c.moe.enabled ? 1 : 0)},
      {"vocab_size", I(c.model.vocab_size)},
      {"d_model", I(c.model.d_model)},
      {"n_layers", I(c.model.n_layers)},
      {"n_heads", I(c.model.n_heads)},
      {"n_kv_heads", I(c.model.n_kv_heads)},
      {"head_dim", I(p.shape.head_dim)},
      {"d_ffn", I(c.model.d_ffn)},
      {"seq_len", I(c.model.seq_len)},
      {"rope_theta", c.model.rope_theta},
      {"norm_eps", c.model.norm_eps},
      {"init_std", c.model.init_std},
      {"num_experts", I(p.shape.num_experts)},
      {"num_active_experts", I(p.shape.num_active)},
      {"num_shared_experts", I(p.shape.num_shared)},
      {"d_expert", I(p.shape.d_expert)},
      {"first_k_dense", I(p.shape.first_k_dense)},
      {"renormalize_topk", I(p.shape.renormalize_topk ? 1 : 0)},
      {"capacity_factor", p.shape.capacity_factor},
      {"aux_loss_coef", p.shape.aux_loss_coef},
      {"z_loss_coef", p.shape.z_loss_coef},
      {"score_function", c.moe.score_function},
      {"route_scale", c.moe.route_scale},
      {"balance_loss_scope", c.moe.balance_loss_scope},
      {"bias_balancing", I(c.moe.bias_balancing ? 1 : 0)},
      {"bias_update_rate", c.moe.bias_update_rate},
      {"batch_tokens", I(c.train.batch_tokens)},
      {"micro_batch_size", I(c.train.micro_batch_size)},
      {"grad_accum_steps", I(p.grad_accum_steps)},
      {"lr_peak", c.train.lr},
      {"lr_schedule", c.train.lr_schedule},
      {"warmup_fraction", c.train.warmup_fraction},
      {"decay_fraction", c.train.decay_fraction},
      {"final_lr_fraction", c.train.final_lr_fraction},
      {"tokens_target", p.tokens_target},
      {"compute_target", p.compute_target},
      {"compute_budget", c.train.compute_budget},
      {"steps_total", I(p.steps_total)},
      {"weight_decay", c.train.weight_decay},
      {"beta1", c.train.beta1},
      {"beta2", c.train.beta2},
      {"eps", c.train.eps},
      {"grad_clip", c.train.grad_clip},
      {"expert_parallel", I(c.parallel.expert_parallel)},
      {"dispatcher", c.parallel.dispatcher},
      {"precision", std::string(precision_name(p.gemm.precision))},
      {"gemm_backend", p.gemm.backend},
      {"attention_kernel", std::string(attention_kernel_name(attention_kernel_for(p.shape, c.train.micro_batch_size)))},
      {"cpu_isa", host_cpu_isa()},
  };
  // Memory of one rank, estimated before anything is allocated
  // (model_memory.hpp); the run file's /summary/peak_kokkos_bytes is the
  // measured counterpart of memory_estimate_bytes.
  MemoryEstimateInputs mem;
  mem.micro_batch = c.train.micro_batch_size;
  mem.bf16_products = p.gemm.precision == Precision::bf16;
  mem.distributed_dispatcher = c.parallel.dispatcher != "local";
  mem.flash_attention = attention_kernel_for(p.shape, c.train.micro_batch_size) == AttentionKernel::flash;
  mem.device_nests = !kHostLoops;
  ModelShape rank_shape = p.shape;  // one rank's share: routed experts over expert_parallel ranks
  rank_shape.ep_size = c.parallel.expert_parallel;
  const MemoryEstimate m = estimate_rank_memory(rank_shape, mem);
  kv.emplace_back("memory_estimate_bytes", I(std::llround(m.kokkos_bytes)));
  for (const auto& [part, bytes] : m.parts) kv.emplace_back("memory_" + part + "_bytes", I(std::llround(bytes)));
  return kv;
}

std::string format_config_value(const ConfigValue& v) {
  if (auto i = std::get_if<std::int64_t>(&v)) return std::to_string(*i);
  if (auto s = std::get_if<std::string>(&v)) return *s;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.10g", std::get<double>(v));
  return buf;
}

}  // namespace fulcrum
