#include "model/model_shape.hpp"

#include <algorithm>

namespace fulcrum {

ModelShape model_shape_from_config(const RunConfig& config) {
  const ModelSection& m = config.model;
  ModelShape s;
  s.vocab_size = m.vocab_size;
  s.d_model = m.d_model;
  s.n_layers = m.n_layers;
  s.n_heads = m.n_heads;
  s.n_kv_heads = m.n_kv_heads;
  s.head_dim = m.d_model / m.n_heads;
  s.d_ffn = m.d_ffn;
  s.seq_len = m.seq_len;
  s.rope_theta = m.rope_theta;
  s.norm_eps = m.norm_eps;
  const MoeSection& e = config.moe;
  s.is_moe = e.enabled;
  if (s.is_moe) {
    s.num_experts = e.num_experts;
    s.num_active = e.num_active_experts;
    s.num_shared = e.num_shared_experts;
    s.d_expert = e.d_expert;
    s.first_k_dense = e.first_k_dense;
    s.renormalize_topk = e.renormalize_topk;
    s.capacity_factor = e.capacity_factor;
    s.aux_loss_coef = e.aux_loss_coef;
    s.z_loss_coef = e.z_loss_coef;
    s.sigmoid_scores = e.score_function == score_function_names()[1];
    s.route_scale = e.route_scale;
    // The deck reader admits only these names; anything else is the default scope.
    const auto& scopes = balance_loss_scope_names();
    const auto scope = std::find(scopes.begin(), scopes.end(), e.balance_loss_scope);
    s.balance_scope = scope == scopes.end() ? 0 : static_cast<int>(scope - scopes.begin());
    s.bias_balancing = e.bias_balancing;
    s.bias_update_rate = e.bias_update_rate;
  }
  return s;
}

std::vector<ParameterTensor> parameter_layout(const ModelShape& s) {
  std::vector<ParameterTensor> replicated, experts;
  auto add = [](std::vector<ParameterTensor>& into, const std::string& name, std::vector<long> shape,
                bool is_expert, long shards, long shard) {
    ParameterTensor t;
    t.name = name;
    t.full_size = 1;
    for (long d : shape) t.full_size *= d;
    if (is_expert) shape[0] /= shards;  // experts are sharded along their first axis
    t.shape = std::move(shape);
    t.size = t.full_size / (is_expert ? shards : 1);
    t.shard_offset = is_expert ? shard * t.size : 0;
    t.is_matrix = t.shape.size() >= 2;
    t.is_expert = is_expert;
    into.push_back(std::move(t));
  };
  auto rep = [&](const std::string& name, std::vector<long> shape) {
    add(replicated, name, std::move(shape), false, 1, 0);
  };
  const long V = s.vocab_size, C = s.d_model, hd = s.head_dim;
  const long nh = s.n_heads, nkv = s.n_kv_heads;
  rep("wte", {V, C});
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    rep(p + "ln1_w", {C});
    rep(p + "wq", {nh * hd, C});
    rep(p + "wk", {nkv * hd, C});
    rep(p + "wv", {nkv * hd, C});
    rep(p + "wo", {C, nh * hd});
    rep(p + "ln2_w", {C});
    if (!s.is_moe_layer(l)) {
      rep(p + "w1", {s.d_ffn, C});
      rep(p + "w3", {s.d_ffn, C});
      rep(p + "w2", {C, s.d_ffn});
    } else {
      const long E = s.num_experts, De = s.d_expert, W = s.shared_width();
      rep(p + "router", {E, C});
      add(experts, p + "experts_w1", {E, De, C}, true, s.ep_size, s.ep_rank);
      add(experts, p + "experts_w3", {E, De, C}, true, s.ep_size, s.ep_rank);
      add(experts, p + "experts_w2", {E, C, De}, true, s.ep_size, s.ep_rank);
      if (W > 0) {
        rep(p + "shared_w1", {W, C});
        rep(p + "shared_w3", {W, C});
        rep(p + "shared_w2", {C, W});
      }
    }
  }
  rep("lnf_w", {C});
  rep("lm_head", {V, C});
  std::vector<ParameterTensor> layout = std::move(replicated);
  for (auto& t : experts) layout.push_back(std::move(t));
  long offset = 0;
  int id = 0;
  for (auto& t : layout) {
    t.offset = offset;
    t.id = id++;
    offset += t.size;
  }
  return layout;
}

long replicated_parameter_count(const std::vector<ParameterTensor>& layout) {
  long n = 0;
  for (const auto& t : layout)
    if (!t.is_expert) n += t.size;
  return n;
}

long parameter_count(const std::vector<ParameterTensor>& layout) {
  long n = 0;
  for (const auto& t : layout) n += t.size;
  return n;
}

ModelAccounting model_accounting(const ModelShape& s) {
  ModelAccounting a;
  const double C = s.d_model, V = s.vocab_size, T = s.seq_len;
  const double hd = s.head_dim, nh = s.n_heads, nkv = s.n_kv_heads;
  // Parameters, exact (norm weights and router included, embeddings excluded).
  const double attn_params = C * nh * hd + 2 * C * nkv * hd + nh * hd * C;
  const double norm_params = 2 * C;
  const double dense_ffn_params = 3 * C * s.d_ffn;
  const double expert_params = 3 * C * s.d_expert;
  a.params_embedding = 2 * V * C;
  double total = C;  // final norm
  double active = C;
  // Appendix C, per token (divide C_x by B s):
  //   attention  C_attn/(Bs) = d^2 (2 + 2/(nh/nkv)) + 4 s d
  //   dense FFN  C_ffn/(Bs)  = 6 d d_ffn
  //   MoE        C_moe/(Bs)  = 6 d (E_a d_expert) + 6 d d_expert E_s (router not counted)
  //   logits     2 d V;  M = 3 x forward.
  double fwd = 2 * C * V;
  double attn_fwd = 0;
  for (int l = 0; l < s.n_layers; ++l) {
    total += attn_params + norm_params;
    active += attn_params + norm_params;
    const double attn = C * C * (2.0 + 2.0 / (nh / nkv)) + 4.0 * T * C;
    attn_fwd += attn;
    fwd += attn;
    if (!s.is_moe_layer(l)) {
      total += dense_ffn_params;
      active += dense_ffn_params;
      fwd += 6 * C * s.d_ffn;
    } else {
      const double router = static_cast<double>(s.num_experts) * C;
      total += router + (s.num_experts + s.num_shared) * expert_params;
      active += router + (s.num_active + s.num_shared) * expert_params;
      fwd += 6 * C * (static_cast<double>(s.num_active) * s.d_expert) +
             6 * C * static_cast<double>(s.d_expert) * s.num_shared;
    }
  }
  a.params_total = total;
  a.params_active = active;
  a.flops_per_token = 3 * fwd;
  a.attention_flops_fraction = attn_fwd / fwd;
  if (s.is_moe) {
    a.activation_ratio = static_cast<double>(s.num_active + s.num_shared) /
                         static_cast<double>(s.num_experts + s.num_shared);
    a.granularity = 2.0 * s.d_model / s.d_expert;
    a.shared_ratio = static_cast<double>(s.num_shared) / (s.num_active + s.num_shared);
  }
  return a;
}

}  // namespace fulcrum
