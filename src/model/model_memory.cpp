// model_memory.cpp: estimate_rank_memory (model_memory.hpp). Each term names
// the buffers it counts; when a buffer is added to the model, add it here
// (tests/cli/memory_estimate_test.py fails when the two drift apart).
#include "model/model_memory.hpp"

#include <algorithm>
#include <cmath>

namespace fulcrum {

double embedding_sort_bytes(double tokens, double vocab) {
  const double chunks =
      std::max(1.0, std::min(std::ceil(tokens / 64), std::floor((double)(1L << 22) / std::max(1.0, vocab))));
  return 4 * (vocab * chunks + 1 + tokens + 2 * std::min(tokens, vocab) + 1);
}

MemoryEstimate estimate_rank_memory(const ModelShape& s, const MemoryEstimateInputs& in) {
  const double fb = in.float_bytes;
  const double B = in.micro_batch, T = s.seq_len, N = B * T;
  const double L = s.n_layers, C = s.d_model, V = s.vocab_size;
  const double nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim;
  const double params = (double)parameter_count(parameter_layout(s));  // this rank's share
  long dense_layers = 0;
  for (int l = 0; l < s.n_layers; ++l) dense_layers += !s.is_moe_layer(l);
  const double F = dense_layers > 0 ? s.d_ffn : 0;  // dense FFN buffers are per layer of the model
  const double Lm = s.n_moe_layers();

  MemoryEstimate e;
  auto add = [&](const char* what, double bytes) { e.parts.emplace_back(what, bytes); e.kokkos_bytes += bytes; };

  // model::params, model::grads, adamw::m, adamw::v (float each), adamw::decay_mask (1 byte)
  add("parameters_state", params * (4 * fb + 1));

  // kept for backward, every layer: act::resid (L+1), act::mid, act::ln1, act::ln2 (N,C);
  // act::rstd1, act::rstd2 (N); act::q, act::attn_out (N,nh*hd); act::k, act::v (N,nkv*hd);
  // dense FFN act::ffn_h1, ffn_h3, ffn_act (N,F) for every layer when any layer is dense
  add("activations",
      fb * (N * C * (4 * L + 1) + 2 * L * N + L * N * hd * (2 * nh + 2 * nkv) + 3 * L * N * F));

  // act::att (L,B,nh,T,T) + grad::datt (B,nh,T,T) on the full path;
  // act::att_lse (L,B,nh,T) + grad::att_delta (B,nh,T) on the flash path
  add("attention", in.flash_attention ? fb * (L + 1) * B * nh * T : fb * (L + 1) * B * nh * T * T);

  // act::logits + grad::dlogits (N,V); act::lnf (N,C); act::rstdf, act::logsumexp (N)
  add("logits", fb * (2 * N * V + N * C + 2 * N));

  // gradient scratch shared across layers: grad::proj_q, heads, dq (N,nh*hd);
  // proj_k, proj_v, dk, dv (N,nkv*hd); dresid, dln, act::ffn_out (N,C);
  // dffn_act, dffn_h1, dffn_h3 (N,F); grad::norm_partial (blocks of 64 rows, C)
  // plus batch::tokens/targets (int) and the RoPE tables
  const double norm_blocks = (N + 63) / 64;
  add("gradient_scratch",
      fb * (N * hd * (3 * nh + 4 * nkv) + 3 * N * C + 3 * N * F + norm_blocks * C + T * hd) + 8 * N);

  // device backends only (layers.hpp EmbeddingBackwardScratch): embedding::sort_counts
  // (vocab*chunks + 1), sort_positions (N), sort_ids (min(N,V)), sort_begin (min(N,V) + 1), int;
  // chunks of 64 positions, vocab*chunks capped at 2^22
  if (in.device_nests) add("embedding_sort", embedding_sort_bytes(N, V));

  if (Lm > 0) {
    const double E = s.num_experts, k = s.num_active, De = s.d_expert, Ws = s.shared_width();
    // rows of routed experts on this rank at balanced routing: N*k (every
    // rank sends N*k assignments and, balanced, receives as many)
    const double rows = N * k;
    // router::logits, probs, dlogits (+ scores with sigmoid) (N,E); lse (N);
    // topk_idx (int) and topk_weight (N,k); moe::dtopk_weight (N,k)
    const double router = fb * (N * E * (s.sigmoid_scores ? 4 : 3) + N + 2 * N * k) + 4 * N * k;
    // dispatch::permuted_input/output and their gradients (N*k,C); dispatch::position (int)
    // plus, with an all-to-all dispatcher, a2a::input/output/input_grad/output_grad/staging
    // (received rows, C) and a2a::expert_to_source (int)
    double dispatch = fb * 4 * N * k * C + 4 * N * k;
    if (in.distributed_dispatcher) dispatch += fb * 5 * rows * C + 4 * rows;
    // kept for backward: experts::h1, h3, act (rows, De); moe::shared_h1, h3, act (N, Ws)
    const double experts = fb * 3 * rows * De + fb * 3 * N * Ws;
    add("moe_layers", Lm * (router + dispatch + experts));
    // moe::grad_scratch, one pool for all MoE layers: dact, dh1, dh3 of the
    // routed (rows, De) and shared (N, Ws) experts
    add("moe_grad_scratch", fb * 3 * (rows * De + N * Ws));
  }

  // the oneDNN backend's bf16 copy of the weights (host memory, not Kokkos)
  if (in.bf16_products) {
    e.host_bytes = params * 2;
    e.parts.emplace_back("bf16_weight_copy", e.host_bytes);
  }
  return e;
}

}  // namespace fulcrum
