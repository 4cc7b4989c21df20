// transformer_impl.hpp: Transformer<T>::forward/backward (doc/model.md).
#pragma once

namespace fulcrum {

template <class T>
void Transformer<T>::allocate_activations(const std::string& dispatcher) {
  const long L = s_.n_layers, N = (long)B_ * s_.seq_len, C = s_.d_model, V = s_.vocab_size;
  const long Tn = s_.seq_len, nh = s_.n_heads, nkv = s_.n_kv_heads, hd = s_.head_dim;
  long dense_layers = 0;
  for (int l = 0; l < s_.n_layers; ++l) dense_layers += !s_.is_moe_layer(l);
  const long F = dense_layers > 0 ? s_.d_ffn : 0;
  tokens_ = DeviceBuffer<int>("batch::tokens", N);
  targets_ = DeviceBuffer<int>("batch::targets", N);
  resid_ = DeviceBuffer<T>("act::resid", (L + 1) * N * C);
  mid_ = DeviceBuffer<T>("act::mid", L * N * C);
  ln1_ = DeviceBuffer<T>("act::ln1", L * N * C);
  ln2_ = DeviceBuffer<T>("act::ln2", L * N * C);
  rstd1_ = DeviceBuffer<T>("act::rstd1", L * N);
  rstd2_ = DeviceBuffer<T>("act::rstd2", L * N);
  q_ = DeviceBuffer<T>("act::q", L * N * nh * hd);
  k_ = DeviceBuffer<T>("act::k", L * N * nkv * hd);
  v_ = DeviceBuffer<T>("act::v", L * N * nkv * hd);
  const bool full = attention_ == AttentionKernel::full;
  att_ = DeviceBuffer<T>("act::att", full ? L * B_ * nh * Tn * Tn : 0);
  att_lse_ = DeviceBuffer<T>("act::att_lse", full ? 0 : L * B_ * nh * Tn);
  attn_out_ = DeviceBuffer<T>("act::attn_out", L * N * nh * hd);
  ffn_h1_ = DeviceBuffer<T>("act::ffn_h1", L * N * F);
  ffn_h3_ = DeviceBuffer<T>("act::ffn_h3", L * N * F);
  ffn_act_ = DeviceBuffer<T>("act::ffn_act", L * N * F);
  lnf_ = DeviceBuffer<T>("act::lnf", N * C);
  rstdf_ = DeviceBuffer<T>("act::rstdf", N);
  logits_ = DeviceBuffer<T>("act::logits", N * V);
  lse_ = DeviceBuffer<T>("act::logsumexp", N);
  moe_.resize(L);
  // one backward scratch pool for every MoE layer (their backwards run one after another)
  auto moe_grad_scratch = std::make_shared<ScratchPool<T>>("moe::grad_scratch");
  for (int l = 0; l < s_.n_layers; ++l)
    if (s_.is_moe_layer(l))
      moe_[l] = std::make_unique<MoeLayer<T>>(s_, (int)N, dispatcher, ep_comm_, balance_comm_, moe_grad_scratch);
  proj_q_ = DeviceBuffer<T>("grad::proj_q", N * nh * hd);
  proj_k_ = DeviceBuffer<T>("grad::proj_k", N * nkv * hd);
  proj_v_ = DeviceBuffer<T>("grad::proj_v", N * nkv * hd);
  heads_ = DeviceBuffer<T>("grad::heads", N * nh * hd);
  dq_ = DeviceBuffer<T>("grad::dq", N * nh * hd);
  dk_ = DeviceBuffer<T>("grad::dk", N * nkv * hd);
  dv_ = DeviceBuffer<T>("grad::dv", N * nkv * hd);
  datt_ = DeviceBuffer<T>("grad::datt", full ? (long)B_ * nh * Tn * Tn : 0);
  att_delta_ = DeviceBuffer<T>("grad::att_delta", full ? 0 : (long)B_ * nh * Tn);
  norm_partial_ = DeviceBuffer<T>("grad::norm_partial", rmsnorm_backward_scratch((int)N, (int)C));
  dresid_ = DeviceBuffer<T>("grad::dresid", N * C);
  dln_ = DeviceBuffer<T>("grad::dln", N * C);
  ffn_out_ = DeviceBuffer<T>("act::ffn_out", N * C);
  dffn_act_ = DeviceBuffer<T>("grad::dffn_act", N * F);
  dffn_h1_ = DeviceBuffer<T>("grad::dffn_h1", N * F);
  dffn_h3_ = DeviceBuffer<T>("grad::dffn_h3", N * F);
  dlogits_ = DeviceBuffer<T>("grad::dlogits", N * V);
  embed_sort_ = EmbeddingBackwardScratch((int)N, (int)V);  // allocates on device backends only
}

template <class T>
ModelLosses Transformer<T>::forward() {
  forward_device();
  double v[3];
  Kokkos::deep_copy(Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(v, 3),
                    losses_);
  ModelLosses losses;
  losses.lm = v[0];
  losses.aux = v[1];
  losses.z = v[2];
  return losses;
}

template <class T>
void Transformer<T>::forward_device() {
  const int B = batch_, Tn = s_.seq_len, N = B * Tn, C = s_.d_model, V = s_.vocab_size;
  const int nh = s_.n_heads, nkv = s_.n_kv_heads, hd = s_.head_dim, F = s_.d_ffn;
  const long NC = (long)N * C;
  const long att_stride = (long)B_ * nh * Tn * Tn;
  const long big_NC = (long)B_ * Tn * C, big_Nq = (long)B_ * Tn * nh * hd;
  const long big_Nkv = (long)B_ * Tn * nkv * hd, big_NF = (long)B_ * Tn * F;
  double* loss_sums = losses_.data();  // [lm, aux, z]: aux and z summed over the MoE layers
  Kokkos::parallel_for("model::clear_losses", RangePolicy(0, 3), KOKKOS_LAMBDA(const int i) { loss_sums[i] = 0; });
  T* resid = resid_.data();
  embedding_forward<T>(resid, tokens_.data(), weights_.wte, N, C);
  for (int l = 0; l < s_.n_layers; ++l) {
    const LayerWeights<T>& w = weights_.layers[l];
    T* x = resid + l * big_NC;            // (N,C) layer input
    T* mid = mid_.data() + l * big_NC;    // (N,C)
    T* xout = resid + (l + 1) * big_NC;   // (N,C) layer output
    T* ln1 = ln1_.data() + l * big_NC;
    T* ln2 = ln2_.data() + l * big_NC;
    T* q = q_.data() + l * big_Nq;
    T* k = k_.data() + l * big_Nkv;
    T* v = v_.data() + l * big_Nkv;
    T* att = att_.extent(0) ? att_.data() + l * att_stride : nullptr;  // full attention only
    T* attn_out = attn_out_.data() + l * big_Nq;
    // attention block
    rmsnorm_forward<T>(ln1, rstd1_.data() + (long)l * B_ * Tn, x, w.ln1_w, N, C, s_.norm_eps);
    matmul<T>('N', 'T', N, nh * hd, C, T(1), ln1, w.wq, T(0), proj_q_.data());
    matmul<T>('N', 'T', N, nkv * hd, C, T(1), ln1, w.wk, T(0), proj_k_.data());
    matmul<T>('N', 'T', N, nkv * hd, C, T(1), ln1, w.wv, T(0), proj_v_.data());
    rope_permute_forward<T>(q, proj_q_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nh, hd, true);
    rope_permute_forward<T>(k, proj_k_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nkv, hd, true);
    rope_permute_forward<T>(v, proj_v_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nkv, hd, false);
    if (attention_ == AttentionKernel::flash)
      flash_attention_forward<T>(heads_.data(), att_lse_.data() + (long)l * B_ * nh * Tn, q, k, v, B, Tn, nh, nkv, hd);
    else
      attention_forward<T>(heads_.data(), att, q, k, v, B, Tn, nh, nkv, hd);
    // heads (B,nh,T,hd) -> (B,T,nh*hd): the permute's inverse without rotation
    rope_permute_backward<T>(attn_out, heads_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nh, hd, false);
    Kokkos::deep_copy(ExecSpace(), Kokkos::subview(mid_, std::make_pair(l * big_NC, l * big_NC + NC)),
                      Kokkos::subview(resid_, std::make_pair(l * big_NC, l * big_NC + NC)));
    matmul<T>('N', 'T', N, C, nh * hd, T(1), attn_out, w.wo, T(1), mid);
    // FFN block
    rmsnorm_forward<T>(ln2, rstd2_.data() + (long)l * B_ * Tn, mid, w.ln2_w, N, C, s_.norm_eps);
    Kokkos::deep_copy(ExecSpace(), Kokkos::subview(resid_, std::make_pair((l + 1) * big_NC, (l + 1) * big_NC + NC)),
                      Kokkos::subview(mid_, std::make_pair(l * big_NC, l * big_NC + NC)));
    if (!s_.is_moe_layer(l)) {
      swiglu_forward<T>(xout, ffn_h1_.data() + l * big_NF, ffn_h3_.data() + l * big_NF,
                        ffn_act_.data() + l * big_NF, ln2, w.w1, w.w3, w.w2, N, C, F, T(1));
    } else {
      moe_[l]->forward_device(ffn_out_.data(), ln2, w.moe, N, loss_sums);
      T* fo = ffn_out_.data();
      Kokkos::parallel_for("residual::add", RangePolicy(0, NC), KOKKOS_LAMBDA(const long i) { xout[i] += fo[i]; });
    }
  }
  rmsnorm_forward<T>(lnf_.data(), rstdf_.data(), resid + s_.n_layers * big_NC, weights_.lnf_w, N, C, s_.norm_eps);
  matmul<T>('N', 'T', N, V, C, T(1), lnf_.data(), weights_.lm_head, T(0), logits_.data());
  // loss_sums[0] = mean loss, reduced in device memory (no wait for the device; layers.hpp)
  crossentropy_forward_device<T>(lse_.data(), loss_sums, ce_sum_, logits_.data(), targets_.data(), N, V);
}

template <class T>
void Transformer<T>::backward(T dloss) {
  const int B = batch_, Tn = s_.seq_len, N = B * Tn, C = s_.d_model, V = s_.vocab_size;
  const int nh = s_.n_heads, nkv = s_.n_kv_heads, hd = s_.head_dim, F = s_.d_ffn;
  const long att_stride = (long)B_ * nh * Tn * Tn;
  const long big_NC = (long)B_ * Tn * C, big_Nq = (long)B_ * Tn * nh * hd;
  const long big_Nkv = (long)B_ * Tn * nkv * hd, big_NF = (long)B_ * Tn * F;
  T* resid = resid_.data();
  T* dresid = dresid_.data();
  T* dln = dln_.data();
  const ModelWeights<T>& g = grad_weights_;
  // LM head and final norm
  crossentropy_backward<T>(dlogits_.data(), logits_.data(), lse_.data(), targets_.data(), N, V, dloss);
  matmul<T>('T', 'N', V, C, N, T(1), dlogits_.data(), lnf_.data(), T(1), g.lm_head);
  matmul<T>('N', 'N', N, C, V, T(1), dlogits_.data(), weights_.lm_head, T(0), dln);
  zero(dresid, (std::size_t)N * C);
  rmsnorm_backward<T>(dresid, g.lnf_w, norm_partial_.data(), dln, resid + s_.n_layers * big_NC, weights_.lnf_w, rstdf_.data(), N, C);
  for (int l = s_.n_layers - 1; l >= 0; --l) {
    const LayerWeights<T>& w = weights_.layers[l];
    const LayerWeights<T>& gl = g.layers[l];
    T* x = resid + l * big_NC;
    T* mid = mid_.data() + l * big_NC;
    T* ln1 = ln1_.data() + l * big_NC;
    T* ln2 = ln2_.data() + l * big_NC;
    T* q = q_.data() + l * big_Nq;
    T* k = k_.data() + l * big_Nkv;
    T* v = v_.data() + l * big_Nkv;
    T* att = att_.extent(0) ? att_.data() + l * att_stride : nullptr;  // full attention only
    T* attn_out = attn_out_.data() + l * big_Nq;
    // FFN block: xout = mid + ffn(ln2(mid)); dresid holds d xout.
    if (!s_.is_moe_layer(l)) {  // dln = d ln2, written (beta = 0) by the FFN's input gradient
      swiglu_backward<T>(dln, gl.w1, gl.w3, gl.w2, dffn_act_.data(), dffn_h1_.data(), dffn_h3_.data(),
                         dresid, ffn_h1_.data() + l * big_NF, ffn_h3_.data() + l * big_NF,
                         ffn_act_.data() + l * big_NF, ln2, w.w1, w.w3, w.w2, N, C, F, T(0));
    } else {  // the MoE layer adds its parts (routed, shared, router) into dln
      zero(dln, (std::size_t)N * C);
      moe_[l]->backward(dln, gl.moe, dresid, ln2, w.moe, N, dloss);
    }
    rmsnorm_backward<T>(dresid, gl.ln2_w, norm_partial_.data(), dln, mid, w.ln2_w, rstd2_.data() + (long)l * B_ * Tn, N, C);
    // attention block: mid = x + attn_out wo^T; dresid now holds d mid.
    matmul<T>('T', 'N', C, nh * hd, N, T(1), dresid, attn_out, T(1), gl.wo);
    matmul<T>('N', 'N', N, nh * hd, C, T(1), dresid, w.wo, T(0), proj_q_.data());  // d attn_out
    rope_permute_forward<T>(heads_.data(), proj_q_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nh, hd, false);
    if (attention_ == AttentionKernel::flash) {
      // delta from the token-major d attn_out (proj_q_) and attn_out
      flash_attention_backward_delta<T>(att_delta_.data(), proj_q_.data(), attn_out, B, Tn, nh, hd, false);
      flash_attention_backward<T>(dq_.data(), dk_.data(), dv_.data(), heads_.data(),
                                  att_lse_.data() + (long)l * B_ * nh * Tn, att_delta_.data(), q, k, v, B, Tn, nh,
                                  nkv, hd);
    } else {
      attention_backward<T>(dq_.data(), dk_.data(), dv_.data(), datt_.data(), heads_.data(), att, q, k, v,
                            B, Tn, nh, nkv, hd);
    }
    rope_permute_backward<T>(proj_q_.data(), dq_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nh, hd, true);
    rope_permute_backward<T>(proj_k_.data(), dk_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nkv, hd, true);
    rope_permute_backward<T>(proj_v_.data(), dv_.data(), rope_cos_.data(), rope_sin_.data(), B, Tn, nkv, hd, false);
    matmul<T>('T', 'N', nh * hd, C, N, T(1), proj_q_.data(), ln1, T(1), gl.wq);
    matmul<T>('T', 'N', nkv * hd, C, N, T(1), proj_k_.data(), ln1, T(1), gl.wk);
    matmul<T>('T', 'N', nkv * hd, C, N, T(1), proj_v_.data(), ln1, T(1), gl.wv);
    matmul<T>('N', 'N', N, C, nh * hd, T(1), proj_q_.data(), w.wq, T(0), dln);
    matmul<T>('N', 'N', N, C, nkv * hd, T(1), proj_k_.data(), w.wk, T(1), dln);
    matmul<T>('N', 'N', N, C, nkv * hd, T(1), proj_v_.data(), w.wv, T(1), dln);
    rmsnorm_backward<T>(dresid, gl.ln1_w, norm_partial_.data(), dln, x, w.ln1_w, rstd1_.data() + (long)l * B_ * Tn, N, C);
  }
  embedding_backward<T>(g.wte, dresid, tokens_.data(), N, C, embed_sort_);
}

}  // namespace fulcrum
