// model_shape.hpp: the architecture numbers of one model (from [model] and
// [moe]), and its exact parameter and FLOP accounting (Appendix C of the
// method notes, doc/model.md). No Kokkos here: --describe uses it alone.
#pragma once

#include <string>
#include <vector>

#include "config/run_config.hpp"

namespace fulcrum {

// The router's score functions and balance-loss scopes by deck name
// ([moe] score_function, balance_loss_scope); model_shape_from_config maps
// them to ModelShape codes, and the deck schema takes its allowed values
// from here.
inline const std::vector<std::string>& score_function_names() {
  static const std::vector<std::string> names = {"softmax", "sigmoid"};
  return names;
}
inline const std::vector<std::string>& balance_loss_scope_names() {  // index = ModelShape::balance_scope
  static const std::vector<std::string> names = {"micro_batch", "sequence", "global"};
  return names;
}

struct ModelShape {
  int vocab_size = 0;   // V
  int d_model = 0;      // C
  int n_layers = 0;     // L
  int n_heads = 0;      // nh
  int n_kv_heads = 0;   // nkv
  int head_dim = 0;     // hd = C / nh
  int d_ffn = 0;        // F (dense SwiGLU width)
  int seq_len = 0;      // T
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  // MoE (is_moe == false: every layer is dense)
  bool is_moe = false;
  int num_experts = 0;         // E
  int num_active = 0;          // E_a = top-k
  int num_shared = 0;          // E_s
  int d_expert = 0;            // De
  int first_k_dense = 0;
  bool renormalize_topk = false;
  double capacity_factor = 0.0;
  double aux_loss_coef = 0.0;
  double z_loss_coef = 0.0;
  // Routing options (doc/model.md "Routing options"); defaults: the paper's recipe.
  bool sigmoid_scores = false;        // score_function = "sigmoid" (score_function_names()[1])
  double route_scale = 1.0;           // combine weights x route_scale
  int balance_scope = 0;              // index into balance_loss_scope_names() (RouterOptions::Scope)
  bool bias_balancing = false;        // aux-loss-free balancing bias
  double bias_update_rate = 1e-3;     // u

  // Expert parallelism: routed experts are sharded over ep_size ranks; this
  // rank holds experts [ep_rank * E_local, (ep_rank + 1) * E_local).
  int ep_size = 1;
  int ep_rank = 0;
  int num_local_experts() const { return num_experts / ep_size; }

  bool is_moe_layer(int layer) const { return is_moe && layer >= first_k_dense; }
  int n_moe_layers() const { return is_moe ? n_layers - first_k_dense : 0; }
  int shared_width() const { return num_shared * d_expert; }
};

ModelShape model_shape_from_config(const RunConfig& config);

// One named parameter tensor in the flat parameter buffer (doc/model.md names).
struct ParameterTensor {
  std::string name;          // e.g. "layers.3.experts_w1"
  std::vector<long> shape;   // e.g. {E, De, C}
  long offset = 0;           // in elements, into the flat buffer
  long size = 0;
  bool is_matrix = false;    // rank >= 2: receives weight decay
  bool is_expert = false;    // routed-expert shard (sharded over EP ranks)
  long shard_offset = 0;     // first element of this shard in the full tensor
  long full_size = 0;        // elements of the full (unsharded) tensor
  int id = 0;                // position in the layout; identical at every EP
};

// The order and shapes of every parameter: one allocation, named views.
// Replicated tensors come first, routed-expert shards last, so gradient
// reduction is one call per group: [0, replicated_count) over all ranks,
// the rest over the ranks holding the same expert shard.
std::vector<ParameterTensor> parameter_layout(const ModelShape& shape);
long replicated_parameter_count(const std::vector<ParameterTensor>& layout);
long parameter_count(const std::vector<ParameterTensor>& layout);

struct ModelAccounting {
  double params_total = 0;      // non-embedding (excludes wte and lm_head)
  double params_active = 0;     // non-embedding, per token: shared + top-k experts
  double params_embedding = 0;  // wte + lm_head
  double flops_per_token = 0;   // M, Appendix C: 3 x forward, per token
  double activation_ratio = 1;  // A = (E_a + E_s) / (E + E_s); 1 for dense
  double granularity = 0;       // G = 2 d_model / d_expert; 0 for dense
  double shared_ratio = 0;      // S = E_s / (E_a + E_s); 0 for dense
  double attention_flops_fraction = 0;  // attention share of M
};

ModelAccounting model_accounting(const ModelShape& shape);

}  // namespace fulcrum
