// moe_layer.hpp: the MoE FFN. It only wires route -> dispatch -> compute ->
// combine (plus the always-active shared experts); each piece lives in its
// own file (router.hpp, token_dispatcher.hpp, experts.hpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/experts.hpp"
#include "model/scratch_pool.hpp"
#include "model/model_shape.hpp"
#include "model/router.hpp"
#include "model/token_dispatcher.hpp"

namespace fulcrum {

// Weights of one MoE layer inside the flat parameter (or gradient) buffer.
template <class T>
struct MoeWeights {
  T* router = nullptr;      // (E,C)
  T* experts_w1 = nullptr;  // (E,De,C)
  T* experts_w3 = nullptr;  // (E,De,C)
  T* experts_w2 = nullptr;  // (E,C,De)
  T* shared_w1 = nullptr;   // (Es*De,C) or null
  T* shared_w3 = nullptr;   // (Es*De,C)
  T* shared_w2 = nullptr;   // (C,Es*De)
};

// Routing statistics of one MoE layer, accumulated between snapshots.
struct RoutingAccumulator {
  std::vector<double> assignments;  // (E) top-k assignments per expert
  double dropped = 0, routed = 0, entropy_sum = 0, token_count = 0;
  double margin_sum = 0;  // sum over tokens of the top-k margin (k-th minus (k+1)-th selection score)
  void reset(int E) {
    assignments.assign(E, 0.0);
    dropped = routed = entropy_sum = token_count = margin_sum = 0;
  }
};

template <class T>
class MoeLayer {
 public:
  // balance_comm: the ranks of one global batch (global balance-loss scope).
  // grad_scratch: the model's pool that every MoE layer borrows its backward
  // scratch from (routed and shared experts' dact, dh1, dh3); a layer built
  // alone (tests) gets its own.
  MoeLayer(const ModelShape& s, int max_tokens, const std::string& dispatcher,
           MPI_Comm ep_comm = MPI_COMM_SELF, MPI_Comm balance_comm = MPI_COMM_SELF,
           SharedScratchPool<T> grad_scratch = nullptr)
      : C_(s.d_model), E_(s.num_experts), k_(s.num_active), Ws_(s.shared_width()),
        router_(max_tokens, s.d_model, s.num_experts, s.num_active, s.renormalize_topk,
                s.aux_loss_coef, s.z_loss_coef, router_options(s, balance_comm)),
        dispatcher_(make_token_dispatcher<T>(dispatcher, max_tokens, s.d_model, s.num_experts,
                                             s.num_active, s.capacity_factor, ep_comm)),
        experts_((long)max_tokens * s.num_active, s.d_model, s.d_expert),
        shared_h1_("moe::shared_h1", (long)max_tokens * Ws_),
        shared_h3_("moe::shared_h3", (long)max_tokens * Ws_),
        shared_act_("moe::shared_act", (long)max_tokens * Ws_),
        grad_scratch_(grad_scratch ? std::move(grad_scratch)
                                   : std::make_shared<ScratchPool<T>>("moe::grad_scratch")),
        dtopk_weight_("moe::dtopk_weight", (long)max_tokens * s.num_active),
        device_stats_("moe::statistics", 2) {
    stats.reset(E_);
  }

  // out is (N,C) (overwritten), h is (N,C). No host wait but the
  // dispatcher's one copy of the split counts (the grouped GEMM's sizes).
  // loss_sums (device, optional): the router's aux and z losses are added to
  // loss_sums[1] and loss_sums[2] (Transformer's [lm, aux, z]).
  void forward_device(T* out, const T* h, const MoeWeights<T>& w, int N, double* loss_sums = nullptr) {
    router_.forward_device(h, w.router, N, collect_statistics);
    dispatcher_->dispatch(h, router_.topk_idx(), N);
    experts_.forward(dispatcher_->permuted_output(), dispatcher_->permuted_input(), w.experts_w1,
                     w.experts_w3, w.experts_w2, dispatcher_->tokens_per_local_expert());
    if (Ws_ > 0)
      swiglu_forward<T>(out, shared_h1_.data(), shared_h3_.data(), shared_act_.data(), h,
                        w.shared_w1, w.shared_w3, w.shared_w2, N, C_, Ws_, T(0));
    else
      zero(out, (std::size_t)N * C_);
    dispatcher_->combine(out, router_.topk_weight(), N);
    const bool stats = collect_statistics;
    if (stats) accumulate_statistics(N);
    if (!loss_sums && !stats) return;
    const double* r = router_.device_losses();
    double* dev_stats = device_stats_.data();
    Kokkos::parallel_for("moe::accumulate_losses", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) {
      if (loss_sums) {
        loss_sums[1] += r[Router<T>::kAux];
        loss_sums[2] += r[Router<T>::kZ];
      }
      if (stats) {  // per-token means x tokens: the sums over the window's tokens
        dev_stats[0] += r[Router<T>::kEntropy] * N;
        dev_stats[1] += r[Router<T>::kMargin] * N;
      }
    });
  }
  // forward_device, returning the router's losses (waits for the device: tests).
  typename Router<T>::Losses forward(T* out, const T* h, const MoeWeights<T>& w, int N) {
    forward_device(out, h, w, N);
    return router_.losses();
  }

  // dh is (N,C) (+=), dout is (N,C), h is (N,C); g: gradients (+=).
  void backward(T* dh, const MoeWeights<T>& g, const T* dout, const T* h, const MoeWeights<T>& w,
                int N, T dloss) {
    dispatcher_->combine_backward(dtopk_weight_.data(), dout, router_.topk_weight(), N);
    const std::vector<int>& rows_per_expert = dispatcher_->tokens_per_local_expert();
    const long rows = Experts<T>::total_rows(rows_per_expert);
    // one borrow for the layer: routed experts' scratch first, then the shared expert's (N,Ws) x 3
    const long routed_scratch = experts_.backward_scratch(rows);
    T* scratch = grad_scratch_->take(routed_scratch + 3L * N * Ws_);
    experts_.backward(dispatcher_->permuted_input_grad(), g.experts_w1, g.experts_w3, g.experts_w2,
                      dispatcher_->permuted_output_grad(), dispatcher_->permuted_input(),
                      w.experts_w1, w.experts_w3, w.experts_w2, rows_per_expert, scratch);
    dispatcher_->dispatch_backward(dh, N);
    T* shared_scratch = scratch + routed_scratch;
    if (Ws_ > 0)
      swiglu_backward<T>(dh, g.shared_w1, g.shared_w3, g.shared_w2, shared_scratch,
                         shared_scratch + (long)N * Ws_, shared_scratch + 2L * N * Ws_, dout, shared_h1_.data(),
                         shared_h3_.data(), shared_act_.data(), h, w.shared_w1, w.shared_w3,
                         w.shared_w2, N, C_, Ws_);
    router_.backward(dh, g.router, dtopk_weight_.data(), h, w.router, N, dloss);
  }

  // Off during evaluation: routing statistics describe the training tokens.
  bool collect_statistics = true;
  // The statistics' entropy and margin sums accumulate in device memory; the
  // host fields of `stats` hold them only after statistics_to_host() (log
  // steps, checkpoints). statistics_to_device() after stats was set (resume),
  // reset_statistics() clears both.
  void statistics_to_host() {
    double v[2];
    Kokkos::deep_copy(Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(v, 2),
                      device_stats_);
    stats.entropy_sum = v[0];
    stats.margin_sum = v[1];
  }
  void statistics_to_device() {
    double v[2] = {stats.entropy_sum, stats.margin_sum};
    Kokkos::deep_copy(device_stats_,
                      Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(v, 2));
  }
  void reset_statistics() {
    stats.reset(E_);
    statistics_to_device();
  }
  const Router<T>& router() const { return router_; }
  Router<T>& router() { return router_; }
  const TokenDispatcher<T>& dispatcher() const { return *dispatcher_; }
  RoutingAccumulator stats;

 private:
  // The host parts, from the dispatcher's host copy of the counts.
  void accumulate_statistics(int N) {
    const std::vector<int>& assigned = dispatcher_->assignments_per_expert();
    for (int e = 0; e < E_; ++e) stats.assignments[e] += assigned[e];
    stats.routed += static_cast<double>(N) * k_;
    stats.dropped += static_cast<double>(dispatcher_->dropped_assignments());
    stats.token_count += N;
  }

  static RouterOptions router_options(const ModelShape& s, MPI_Comm balance_comm) {
    RouterOptions o;
    o.sigmoid = s.sigmoid_scores;
    o.route_scale = s.route_scale;
    o.scope = s.balance_scope;
    o.seq_len = s.seq_len;
    o.bias = s.bias_balancing;
    o.balance_comm = balance_comm;
    return o;
  }

  int C_, E_, k_, Ws_;
  Router<T> router_;
  std::unique_ptr<TokenDispatcher<T>> dispatcher_;
  Experts<T> experts_;
  DeviceBuffer<T> shared_h1_, shared_h3_, shared_act_;  // (N,Ws) kept for backward
  SharedScratchPool<T> grad_scratch_;
  DeviceBuffer<T> dtopk_weight_;
  DeviceBuffer<double> device_stats_;  // [entropy_sum, margin_sum] since the last reset
};

}  // namespace fulcrum
