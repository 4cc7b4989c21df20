// router.hpp: MoE router: scores, top-k, load-balancing and z losses.
// No communication here (Megatron-Core's split): the token dispatcher moves
// tokens, the experts compute, the MoE layer wires them together.
#pragma once

#include "model/kokkos_types.hpp"

namespace fulcrum {

template <class T>
class Router {
 public:
  // max_tokens N bounds the micro-batch; E experts, top-k.
  Router(int max_tokens, int d_model, int num_experts, int top_k, bool renormalize,
         double aux_coef, double z_coef)
      : C_(d_model), E_(num_experts), k_(top_k), renormalize_(renormalize),
        aux_coef_(aux_coef), z_coef_(z_coef),
        logits_("router::logits", (long)max_tokens * num_experts),
        probs_("router::probs", (long)max_tokens * num_experts),
        dlogits_("router::dlogits", (long)max_tokens * num_experts),
        lse_("router::lse", max_tokens),
        topk_idx_("router::topk_idx", (long)max_tokens * top_k),
        topk_weight_("router::topk_weight", (long)max_tokens * top_k),
        counts_("router::counts", num_experts),
        prob_mean_("router::prob_mean", num_experts) {}

  struct Losses {
    double aux = 0;      // aux_coef * E * sum_e f_e P_e
    double z = 0;        // z_coef * mean_t lse_t^2
    double entropy = 0;  // mean per-token entropy of p (nats), for statistics
  };

  // logits = h router^T; p = softmax(logits); top-k; aux and z losses.
  // h is (N,C), w_router is (E,C)
  Losses forward(const T* h, const T* w_router, int N) {
    const int E = E_, k = k_;
    T* logits = logits_.data();
    T* probs = probs_.data();
    T* lse = lse_.data();
    int* topk_idx = topk_idx_.data();
    T* topk_w = topk_weight_.data();
    const bool renorm = renormalize_;
    matmul_fp32<T>('N', 'T', N, E, C_, T(1), h, w_router, T(0), logits);
    double entropy_sum = 0, lse_sq_sum = 0;
    Kokkos::parallel_reduce("router::softmax_topk", RangePolicy(0, N),
                            KOKKOS_LAMBDA(const int t, double& ent, double& lsq) {
      const T* z = logits + (long)t * E;
      T* p = probs + (long)t * E;
      T mx = z[0];
      for (int e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
      T sum = 0;
      for (int e = 0; e < E; ++e) sum += math::exp(z[e] - mx);
      const T l = mx + math::log(sum);
      lse[t] = l;
      lsq += static_cast<double>(l) * static_cast<double>(l);
      T h_t = 0;
      for (int e = 0; e < E; ++e) {
        p[e] = math::exp(z[e] - l);
        if (p[e] > T(0)) h_t -= p[e] * math::log(p[e]);
      }
      ent += static_cast<double>(h_t);
      // top-k by repeated selection: largest first, ties -> lower index
      T wsum = 0;
      for (int j = 0; j < k; ++j) {
        int best = -1;
        for (int e = 0; e < E; ++e) {
          bool taken = false;
          for (int i = 0; i < j; ++i) taken = taken || (topk_idx[(long)t * k + i] == e);
          if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        topk_idx[(long)t * k + j] = best;
        topk_w[(long)t * k + j] = p[best];
        wsum += p[best];
      }
      if (renorm)
        for (int j = 0; j < k; ++j) topk_w[(long)t * k + j] /= wsum;
    }, entropy_sum, lse_sq_sum);

    // f_e (counts) and P_e (mean probability), one thread per expert: deterministic.
    int* counts = counts_.data();
    T* pmean = prob_mean_.data();
    Kokkos::parallel_for("router::load_statistics", RangePolicy(0, E), KOKKOS_LAMBDA(const int e) {
      int c = 0;
      T s = 0;
      for (long a = 0; a < (long)N * k; ++a) c += (topk_idx[a] == e);
      for (int t = 0; t < N; ++t) s += probs[(long)t * E + e];
      counts[e] = c;
      pmean[e] = s / N;
    });
    double fp_sum = 0;
    const double Nk = static_cast<double>(N) * k;
    Kokkos::parallel_reduce("router::aux_loss", RangePolicy(0, E), KOKKOS_LAMBDA(const int e, double& acc) {
      acc += (counts[e] / Nk) * static_cast<double>(pmean[e]);
    }, fp_sum);
    Losses out;
    out.aux = aux_coef_ * E * fp_sum;
    out.z = z_coef_ * lse_sq_sum / N;
    out.entropy = entropy_sum / N;
    return out;
  }

  // dh is (N,C) (+=), dw_router is (E,C) (+=), dtopk_weight is (N,k): the
  // gradient of the loss w.r.t. the combine weights; h is (N,C).
  // dloss scales the aux and z terms (gradient accumulation).
  void backward(T* dh, T* dw_router, const T* dtopk_weight, const T* h, const T* w_router, int N,
                T dloss) {
    const int E = E_, k = k_;
    const T* probs = probs_.data();
    const T* lse = lse_.data();
    const int* topk_idx = topk_idx_.data();
    const T* topk_w = topk_weight_.data();
    const int* counts = counts_.data();
    T* dlogits = dlogits_.data();
    const bool renorm = renormalize_;
    // d aux / d p_{t,e} = aux_coef * E * f_e / N     (f_e carries no gradient)
    const T aux_scale = static_cast<T>(aux_coef_ * E / (static_cast<double>(N) * N * k)) * dloss;
    // d z / d logit_{t,e} = z_coef * 2 lse_t p_{t,e} / N
    const T z_scale = static_cast<T>(2.0 * z_coef_ / N) * dloss;
    Kokkos::parallel_for("router::backward", RangePolicy(0, N), KOKKOS_LAMBDA(const int t) {
      const T* p = probs + (long)t * E;
      T* dz = dlogits + (long)t * E;
      // dp: from the combine weights (top-k only), then the aux loss term
      for (int e = 0; e < E; ++e) dz[e] = aux_scale * counts[e];
      const int* idx = topk_idx + (long)t * k;
      const T* dw = dtopk_weight + (long)t * k;
      if (renorm) {
        // w_j = p_j / s, s = sum_i p_i: dp_j = (dw_j - sum_i dw_i w_i) / s
        T s = 0, dot = 0;
        for (int j = 0; j < k; ++j) {
          s += p[idx[j]];
          dot += dw[j] * topk_w[(long)t * k + j];
        }
        for (int j = 0; j < k; ++j) dz[idx[j]] += (dw[j] - dot) / s;
      } else {
        for (int j = 0; j < k; ++j) dz[idx[j]] += dw[j];
      }
      // softmax backward: dlogit = p (dp - sum p dp), plus the z-loss term
      T dot = 0;
      for (int e = 0; e < E; ++e) dot += p[e] * dz[e];
      for (int e = 0; e < E; ++e) dz[e] = p[e] * (dz[e] - dot) + z_scale * lse[t] * p[e];
    });
    matmul_fp32<T>('T', 'N', E, C_, N, T(1), dlogits, h, T(1), dw_router);
    matmul_fp32<T>('N', 'N', N, C_, E, T(1), dlogits, w_router, T(1), dh);
  }

  const T* logits() const { return logits_.data(); }          // (N,E)
  const T* probs() const { return probs_.data(); }            // (N,E)
  const int* topk_idx() const { return topk_idx_.data(); }    // (N,k)
  const T* topk_weight() const { return topk_weight_.data(); }  // (N,k)
  int top_k() const { return k_; }
  int num_experts() const { return E_; }

 private:
  int C_, E_, k_;
  bool renormalize_;
  double aux_coef_, z_coef_;
  DeviceBuffer<T> logits_, probs_, dlogits_, lse_;
  DeviceBuffer<int> topk_idx_;
  DeviceBuffer<T> topk_weight_;
  DeviceBuffer<int> counts_;
  DeviceBuffer<T> prob_mean_;
};

}  // namespace fulcrum
