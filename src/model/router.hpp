// router.hpp: MoE router: scores, top-k, load-balancing and z losses.
// No communication here (Megatron-Core's split) except the global-batch
// balance loss, which sums the expert counts over the data-parallel ranks:
// the token dispatcher moves tokens, the experts compute, the MoE layer wires
// them together.
//
// Options (doc/model.md, "Routing options"; RouterOptions() is the paper's
// recipe): softmax or sigmoid scores; an optional per-expert selection bias
// (aux-loss-free balancing: it only changes which experts are chosen, never
// the combine weights, and carries no gradient); the combine weights scaled
// by route_scale; the load-balancing loss over the micro-batch, per sequence,
// or over the global batch.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/kokkos_types.hpp"

namespace fulcrum {

struct RouterOptions {
  enum Scope { MicroBatch = 0, Sequence = 1, Global = 2 };
  bool sigmoid = false;         // scores sigmoid(logit) instead of softmax(logits)
  bool renormalize = false;     // softmax: top-k weights renormalised to 1 (sigmoid: always)
  double route_scale = 1.0;     // combine weights x route_scale
  int scope = MicroBatch;       // balance loss: micro_batch | sequence | global
  int seq_len = 0;              // tokens per sequence (sequence scope)
  bool bias = false;            // select the top-k on score + bias
  MPI_Comm balance_comm = MPI_COMM_SELF;  // global scope: the ranks whose counts are summed
};

// Per-token sums of one router forward, reduced in device memory.
struct RouterSums {
  double lse_sq = 0, entropy = 0, margin = 0;
  KOKKOS_INLINE_FUNCTION RouterSums& operator+=(const RouterSums& o) {
    lse_sq += o.lse_sq;
    entropy += o.entropy;
    margin += o.margin;
    return *this;
  }
  // Kokkos 3.x joins through volatile references
  KOKKOS_INLINE_FUNCTION void operator+=(const volatile RouterSums& o) volatile {
    lse_sq += o.lse_sq;
    entropy += o.entropy;
    margin += o.margin;
  }
};

}  // namespace fulcrum

namespace Kokkos {
template <>
struct reduction_identity<fulcrum::RouterSums> {
  KOKKOS_FORCEINLINE_FUNCTION static fulcrum::RouterSums sum() { return fulcrum::RouterSums(); }
};
}  // namespace Kokkos

namespace fulcrum {

// ---------------------------------------------------------------- row helpers
// Top-k of one token by repeated selection on key_e = score(e) (+ bias_e):
// largest first, ties -> lower index. idx, w: the token's k slots (w = the
// selected scores), wsum: their sum in selection order. Returns the top-k
// margin, key of the k-th pick minus the best unselected key (0 when k >= E).
// The host nest per token; the team nest for a token with a NaN key.
template <class T, class Score>
KOKKOS_INLINE_FUNCTION T router_topk_serial(const Score& score, const T* bias, bool use_bias, int E, int k,
                                            int* idx, T* w, T& wsum) {
  T kth = 0, margin = 0;
  wsum = 0;
  for (int j = 0; j <= k && j < E; ++j) {
    int best = -1;
    T best_key = 0;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int i = 0; i < j && i < k; ++i) taken = taken || (idx[i] == e);
      if (taken) continue;
      const T key = use_bias ? score(e) + bias[e] : score(e);
      if (best < 0 || key > best_key) {
        best = e;
        best_key = key;
      }
    }
    if (j == k) {  // the best unselected expert: the top-k margin
      margin = kth - best_key;
      break;
    }
    kth = best_key;
    idx[j] = best;
    w[j] = score(best);
    wsum += w[j];
  }
  return margin;
}

// The combine weights from the selected scores: / wsum (renormalised), x scale.
template <class T>
KOKKOS_INLINE_FUNCTION void router_finish_weights(T* w, int k, T wsum, bool renorm, bool scaled, T scale) {
  if (renorm)
    for (int j = 0; j < k; ++j) w[j] /= wsum;
  if (scaled)
    for (int j = 0; j < k; ++j) w[j] *= scale;
}

// One candidate of the team nest's top-k: its key (score + bias), score and
// expert index; idx < 0 is the empty candidate.
template <class T>
struct RouterPick {
  T key;
  T score;
  int idx;
  // (key a, index a) ranks before (key b, index b): larger key, ties -> lower
  // index. A strict total order for non-NaN keys, so the j-th pick of the
  // repeated selection is the first candidate ranked after the (j-1)-th.
  KOKKOS_INLINE_FUNCTION static bool before(T ka, int ia, T kb, int ib) { return ka > kb || (ka == kb && ia < ib); }
};

// Vector reduction of RouterPick: the first candidate in the order above.
// The join is commutative and associative (a minimum in a total order), so
// any lane layout or tree shape picks the same expert as the serial scan.
template <class T>
struct RouterPickReducer {
  using reducer = RouterPickReducer<T>;
  using value_type = RouterPick<T>;
  using result_view_type = Kokkos::View<value_type, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  KOKKOS_INLINE_FUNCTION explicit RouterPickReducer(value_type& v) : value_(&v) {}
  KOKKOS_INLINE_FUNCTION void join(value_type& dest, const value_type& src) const {
    if (src.idx >= 0 && (dest.idx < 0 || value_type::before(src.key, src.idx, dest.key, dest.idx))) dest = src;
  }
#if KOKKOS_VERSION < 40000
  // Kokkos 3.x joins through volatile references
  KOKKOS_INLINE_FUNCTION void join(volatile value_type& dest, const volatile value_type& src) const {
    if (src.idx >= 0 && (dest.idx < 0 || value_type::before(src.key, src.idx, dest.key, dest.idx))) {
      dest.key = src.key;
      dest.score = src.score;
      dest.idx = src.idx;
    }
  }
#endif
  KOKKOS_INLINE_FUNCTION void init(value_type& v) const {
    v.key = T(0);
    v.score = T(0);
    v.idx = -1;
  }
  KOKKOS_INLINE_FUNCTION value_type& reference() const { return *value_.data(); }
  KOKKOS_INLINE_FUNCTION result_view_type view() const { return value_; }
  KOKKOS_INLINE_FUNCTION bool references_scalar() const { return true; }

 private:
  result_view_type value_;
};

// Row kernels in two loop nests (kokkos_types.hpp, kHostLoops): HostLoops =
// true, a token per work item, loops over the E experts; HostLoops = false
// (the default on device backends), a thread per token (for_team_rows),
// vector lanes over the experts. Same algorithm and outputs; the top-k picks
// are the same experts (same order, same tie-breaking) in both.
template <class T, bool HostLoops = kHostLoops>
class Router {
 public:
  // max_tokens N bounds the micro-batch; E experts, top-k.
  Router(int max_tokens, int d_model, int num_experts, int top_k, bool renormalize,
         double aux_coef, double z_coef, RouterOptions options = RouterOptions())
      : C_(d_model), E_(num_experts), k_(top_k), opt_(options),
        aux_coef_(aux_coef), z_coef_(z_coef),
        logits_("router::logits", (long)max_tokens * num_experts),
        probs_("router::probs", (long)max_tokens * num_experts),
        scores_("router::scores", options.sigmoid ? (long)max_tokens * num_experts : 0),
        dlogits_("router::dlogits", (long)max_tokens * num_experts),
        lse_("router::lse", max_tokens),
        topk_idx_("router::topk_idx", (long)max_tokens * top_k),
        topk_weight_("router::topk_weight", (long)max_tokens * top_k),
        bias_("router::bias", num_experts),
        step_counts_("router::step_counts", num_experts),
        global_counts_dev_("router::global_counts", num_experts), out_("router::losses", kLossSlots),
        sums_("router::sums"), fp_sum_("router::fp_sum"),
        token_entropy_("router::token_entropy", HostLoops ? 0 : max_tokens),
        token_margin_("router::token_margin", HostLoops ? 0 : max_tokens),
        bias_host_(num_experts, 0.0), global_counts_(num_experts, 0.0) {
    opt_.renormalize = renormalize || options.sigmoid;
    const int segments = opt_.scope == RouterOptions::Sequence && opt_.seq_len > 0
                             ? (max_tokens + opt_.seq_len - 1) / opt_.seq_len : 1;
    counts_ = DeviceBuffer<int>("router::counts", (long)segments * num_experts);
    prob_mean_ = DeviceBuffer<T>("router::prob_mean", (long)segments * num_experts);
    count_weight_ = DeviceBuffer<T>("router::count_weight", (long)segments * num_experts);
  }

  struct Losses {
    double aux = 0;      // aux_coef * E * sum_e f_e P_e (averaged over sequences for that scope)
    double z = 0;        // z_coef * mean_t lse_t^2
    double entropy = 0;  // mean per-token entropy of the routing distribution (nats), for statistics
    double margin = 0;   // mean gap between the k-th and (k+1)-th selection score (0 when k = E)
  };
  // Device layout of the last forward's Losses (device_losses()).
  enum LossSlot { kAux = 0, kZ = 1, kEntropy = 2, kMargin = 3, kLossSlots = 4 };

  // logits = h router^T; scores; top-k; aux and z losses. h is (N,C),
  // w_router is (E,C). `training`: counts enter the step's load (bias
  // update, global balance loss); off for evaluation forwards.
  // Everything stays in device memory (device_losses(), the step counts): no
  // host wait, except the global balance scope, whose counts are summed over
  // the ranks by MPI on every training micro-batch.
  void forward_device(const T* h, const T* w_router, int N, bool training = true) {
    const int E = E_, k = k_;
    T* logits = logits_.data();
    T* probs = probs_.data();
    T* scores = opt_.sigmoid ? scores_.data() : probs_.data();
    T* lse = lse_.data();
    int* topk_idx = topk_idx_.data();
    T* topk_w = topk_weight_.data();
    const T* bias = bias_.data();
    const bool renorm = opt_.renormalize, sigmoid = opt_.sigmoid, use_bias = opt_.bias;
    const T scale = static_cast<T>(opt_.route_scale);
    const bool scaled = opt_.route_scale != 1.0;
    matmul_fp32<T>('N', 'T', N, E, C_, T(1), h, w_router, T(0), logits);
    // sums over tokens of lse^2, entropy and margin, reduced into device memory
    if constexpr (HostLoops) {
      Kokkos::parallel_reduce("router::scores_topk", RangePolicy(0, N),
                              KOKKOS_LAMBDA(const int t, RouterSums& acc) {
        const T* z = logits + (long)t * E;
        T* p = probs + (long)t * E;   // routing distribution (aux loss, entropy)
        T* s = scores + (long)t * E;  // selection and combine scores (== p for softmax)
        T mx = z[0];
        for (int e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
        T sum = 0;
        for (int e = 0; e < E; ++e) sum += math::exp(z[e] - mx);
        const T l = mx + math::log(sum);
        lse[t] = l;
        acc.lse_sq += static_cast<double>(l) * static_cast<double>(l);
        if (sigmoid) {
          T ssum = 0;
          for (int e = 0; e < E; ++e) {
            s[e] = T(1) / (T(1) + math::exp(-z[e]));
            ssum += s[e];
          }
          for (int e = 0; e < E; ++e) p[e] = s[e] / ssum;
        } else {
          for (int e = 0; e < E; ++e) p[e] = math::exp(z[e] - l);
        }
        T h_t = 0;
        for (int e = 0; e < E; ++e)
          if (p[e] > T(0)) h_t -= p[e] * math::log(p[e]);
        acc.entropy += static_cast<double>(h_t);
        // top-k by repeated selection on score (+ bias): largest first, ties -> lower index
        int* idx = topk_idx + (long)t * k;
        T* w = topk_w + (long)t * k;
        T wsum;
        const T margin = router_topk_serial<T>([&](const int e) { return s[e]; }, bias, use_bias, E, k, idx, w, wsum);
        if (k < E) acc.margin += static_cast<double>(margin);
        router_finish_weights(w, k, wsum, renorm, scaled, scale);
      }, Kokkos::Sum<RouterSums, MemSpace>(sums_));
    } else {
      // A thread per token, vector lanes over the experts. Lane e % (vector
      // length) owns z[e], p[e], s[e] in every vector loop below, and whatever
      // a lane needs of other experts reaches it through a vector reduction
      // (broadcast to all lanes), never through memory another lane wrote:
      // no lane synchronisation needed. Per-token statistics go to
      // token_entropy/margin (and lse), summed over tokens in a second pass.
      T* tok_entropy = token_entropy_.data();
      T* tok_margin = token_margin_.data();
      Kokkos::parallel_for("router::scores_topk_team", row_team_policy(N), KOKKOS_LAMBDA(const TeamMember& member) {
        for_team_rows(member, N, [&](const long t) {
          const T* z = logits + t * E;
          T* p = probs + t * E;   // routing distribution (aux loss, entropy)
          T* s = scores + t * E;  // selection and combine scores (== p for softmax)
          T mx = z[0];
          Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, T& m) {
            m = z[e] > m ? z[e] : m;
          }, Kokkos::Max<T>(mx));
          T sum = 0;
          Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, T& a) {
            a += math::exp(z[e] - mx);
          }, sum);
          const T l = mx + math::log(sum);
          if (sigmoid) {
            // s = sigmoid(z), p = s / sum s
            T ssum = 0;
            Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, T& a) {
              s[e] = T(1) / (T(1) + math::exp(-z[e]));
              a += s[e];
            }, ssum);
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, E), [&](const int e) { p[e] = s[e] / ssum; });
          } else {
            // p = softmax(z) = exp(z - lse)
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, E), [&](const int e) { p[e] = math::exp(z[e] - l); });
          }
          // entropy H = -sum_e p_e log p_e (terms with p_e = 0 are 0)
          T h_t = 0;
          Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, T& a) {
            if (p[e] > T(0)) a -= p[e] * math::log(p[e]);
          }, h_t);
          int* idx = topk_idx + t * k;
          T* w = topk_w + t * k;
          // A NaN key is not ordered: the serial scan then picks the first
          // untaken expert if its key is NaN and skips NaN keys otherwise.
          // Such a token (a diverged run) takes the serial selection on one
          // lane, scores recomputed from z (the same expressions as above),
          // so both nests pick the same experts even then.
          int nan_keys = 0;
          Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, int& c) {
            const T key = use_bias ? s[e] + bias[e] : s[e];
            c += key != key;
          }, nan_keys);
          if (nan_keys > 0) {
            Kokkos::single(Kokkos::PerThread(member), [&]() {
              auto score = [&](const int e) {
                return sigmoid ? T(1) / (T(1) + math::exp(-z[e])) : math::exp(z[e] - l);
              };
              T wsum;
              const T margin = router_topk_serial<T>(score, bias, use_bias, E, k, idx, w, wsum);
              router_finish_weights(w, k, wsum, renorm, scaled, scale);
              lse[t] = l;
              tok_entropy[t] = h_t;
              tok_margin[t] = margin;
            });
            return;
          }
          // Top-k as k vector reductions (+1 for the margin): pick j is the
          // first expert, in the order (larger key, then lower index), ranked
          // after pick j-1; i.e. the serial scan's choice among the untaken.
          T wsum = 0, kth = 0, margin = 0;
          RouterPick<T> prev{T(0), T(0), -1};
          for (int j = 0; j <= k && j < E; ++j) {
            RouterPick<T> best{T(0), T(0), -1};
            Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, RouterPick<T>& b) {
              const T key = use_bias ? s[e] + bias[e] : s[e];
              if (prev.idx >= 0 && !RouterPick<T>::before(prev.key, prev.idx, key, e)) return;  // taken
              if (b.idx < 0 || RouterPick<T>::before(key, e, b.key, b.idx)) b = RouterPick<T>{key, s[e], e};
            }, RouterPickReducer<T>(best));
            if (j == k) {  // the best unselected expert: the top-k margin
              margin = kth - best.key;
              break;
            }
            kth = best.key;
            Kokkos::single(Kokkos::PerThread(member), [&]() {
              idx[j] = best.idx;
              w[j] = best.score;
            });
            wsum += best.score;
            prev = best;
          }
          // the lane that wrote w above finishes it
          Kokkos::single(Kokkos::PerThread(member), [&]() {
            router_finish_weights(w, k, wsum, renorm, scaled, scale);
            lse[t] = l;
            tok_entropy[t] = h_t;
            tok_margin[t] = margin;
          });
        });
      });
      // the per-token sums in token order, as the host nest adds them
      Kokkos::parallel_reduce("router::scores_topk_sums", RangePolicy(0, N), KOKKOS_LAMBDA(const int t, RouterSums& acc) {
        acc.lse_sq += static_cast<double>(lse[t]) * static_cast<double>(lse[t]);
        acc.entropy += static_cast<double>(tok_entropy[t]);
        if (k < E) acc.margin += static_cast<double>(tok_margin[t]);
      }, Kokkos::Sum<RouterSums, MemSpace>(sums_));
    }

    // Per segment (the micro-batch, or each sequence) and expert: f (counts)
    // and P (mean probability), one thread per pair: deterministic.
    const int Tseg = opt_.scope == RouterOptions::Sequence && opt_.seq_len > 0 ? opt_.seq_len : N;
    const int S = (N + Tseg - 1) / Tseg;
    int* counts = counts_.data();
    T* pmean = prob_mean_.data();
    Kokkos::parallel_for("router::load_statistics", RangePolicy(0, (long)S * E), KOKKOS_LAMBDA(const long i) {
      const int g = static_cast<int>(i / E), e = static_cast<int>(i % E);
      const int t0 = g * Tseg, t1 = t0 + Tseg < N ? t0 + Tseg : N;
      int c = 0;
      T s = 0;
      for (long a = (long)t0 * k; a < (long)t1 * k; ++a) c += (topk_idx[a] == e);
      for (int t = t0; t < t1; ++t) s += probs[(long)t * E + e];
      counts[i] = c;
      pmean[i] = s / (t1 - t0);
    });
    if (training) {
      // the step's load per expert (bias update), read once per step
      double* step = step_counts_.data();
      Kokkos::parallel_for("router::step_counts", RangePolicy(0, E), KOKKOS_LAMBDA(const int e) {
        double local = 0;
        for (int g = 0; g < S; ++g) local += counts[(long)g * E + e];
        step[e] += local;
      });
    }
    // count weights w (f = w / (tokens k)) and the aux gradient scale:
    // d aux / d p_{t,e} = aux_coef * E * f_{g(t),e} / (S * tokens of g(t))
    T* weight = count_weight_.data();
    double* out = out_.data();
    const double aux_coef = aux_coef_;
    if (opt_.scope == RouterOptions::Global && training && aux_coef_ != 0) {
      // counts of this and the step's earlier micro-batches, all ranks
      // (Megatron-Core's global_aux_loss): a collective per micro-batch, so
      // the E counts come to the host here
      auto hc = Kokkos::create_mirror_view(Kokkos::subview(counts_, std::make_pair(0, E)));
      Kokkos::deep_copy(hc, Kokkos::subview(counts_, std::make_pair(0, E)));
      std::vector<double> mine(E + 1);
      for (int e = 0; e < E; ++e) mine[e] = hc(e);
      mine[E] = N;
      MPI_Allreduce(MPI_IN_PLACE, mine.data(), E + 1, MPI_DOUBLE, MPI_SUM, opt_.balance_comm);
      for (int e = 0; e < E; ++e) global_counts_[e] += mine[e];
      global_tokens_ += mine[E];
      const double Nk = global_tokens_ * k;
      Kokkos::deep_copy(global_counts_dev_,
                        HostView<double>(global_counts_.data(), global_counts_.size()));
      const double* gc = global_counts_dev_.data();
      Kokkos::parallel_for("router::balance_loss_global", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) {
        double fp_sum = 0;
        for (int e = 0; e < E; ++e) {
          weight[e] = static_cast<T>(gc[e]);
          fp_sum += (gc[e] / Nk) * static_cast<double>(pmean[e]);
        }
        out[kAux] = aux_coef * E * fp_sum;
      });
      aux_grad_scale_ = aux_coef_ * E / (static_cast<double>(N) * Nk);
    } else {
      Kokkos::parallel_for("router::count_weight", RangePolicy(0, (long)S * E), KOKKOS_LAMBDA(const long i) {
        weight[i] = static_cast<T>(counts[i]);
      });
      // sum over segments of sum_e f P, segment by segment in order (deterministic)
      Kokkos::parallel_reduce("router::balance_loss", RangePolicy(0, S), KOKKOS_LAMBDA(const int g, double& fp) {
        const int len = Tseg < N - g * Tseg ? Tseg : N - g * Tseg;
        const double Nk = static_cast<double>(len) * k;
        double acc = 0;
        for (int e = 0; e < E; ++e) {
          const long i = (long)g * E + e;
          acc += (counts[i] / Nk) * static_cast<double>(pmean[i]);
        }
        fp += acc;
      }, Kokkos::Sum<double, MemSpace>(fp_sum_));
      const double* fp = fp_sum_.data();
      Kokkos::parallel_for("router::balance_loss_scale", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) {
        out[kAux] = aux_coef * E * *fp / S;
      });
      // equal-length segments (sequences of one batch): one scale
      const double len = std::min(Tseg, N);
      aux_grad_scale_ = aux_coef_ * E / (static_cast<double>(S) * len * len * k);
    }
    const RouterSums* sums = sums_.data();
    const double z_coef = z_coef_;
    Kokkos::parallel_for("router::losses", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) {
      out[kZ] = z_coef * sums->lse_sq / N;
      out[kEntropy] = sums->entropy / N;
      out[kMargin] = k < E ? sums->margin / N : 0.0;
    });
    segment_len_ = Tseg;
  }

  // The last forward's losses in device memory, LossSlot order (double).
  const double* device_losses() const { return out_.data(); }
  // forward_device, then its losses read back (waits for the device: tests,
  // single forwards; the training step uses device_losses()).
  Losses forward(const T* h, const T* w_router, int N, bool training = true) {
    forward_device(h, w_router, N, training);
    return losses();
  }
  Losses losses() const {
    double v[kLossSlots];
    Kokkos::deep_copy(HostView<double>(v, kLossSlots), out_);
    Losses out;
    out.aux = v[kAux];
    out.z = v[kZ];
    out.entropy = v[kEntropy];
    out.margin = v[kMargin];
    return out;
  }

  // dh is (N,C) (+=), dw_router is (E,C) (+=), dtopk_weight is (N,k): the
  // gradient of the loss w.r.t. the combine weights; h is (N,C).
  // dloss scales the aux and z terms (gradient accumulation).
  void backward(T* dh, T* dw_router, const T* dtopk_weight, const T* h, const T* w_router, int N,
                T dloss) {
    const int E = E_, k = k_;
    const T* probs = probs_.data();
    const T* scores = opt_.sigmoid ? scores_.data() : probs_.data();
    const T* logits = logits_.data();
    const T* lse = lse_.data();
    const int* topk_idx = topk_idx_.data();
    const T* topk_w = topk_weight_.data();
    const T* cw = count_weight_.data();
    T* dlogits = dlogits_.data();
    const bool renorm = opt_.renormalize, sigmoid = opt_.sigmoid;
    const T r = static_cast<T>(opt_.route_scale);
    const int Tseg = segment_len_;
    // d aux / d p_{t,e} = aux_scale * w_{g(t),e}    (the counts carry no gradient)
    const T aux_scale = static_cast<T>(aux_grad_scale_) * dloss;
    // d z / d logit_{t,e} = z_coef * 2 lse_t softmax_{t,e} / N
    const T z_scale = static_cast<T>(2.0 * z_coef_ / N) * dloss;
    if constexpr (HostLoops) {
      Kokkos::parallel_for("router::backward", RangePolicy(0, N), KOKKOS_LAMBDA(const int t) {
        const T* p = probs + (long)t * E;
        const T* s = scores + (long)t * E;
        T* dz = dlogits + (long)t * E;
        const T* w = cw + (long)(t / Tseg) * E;
        const int* idx = topk_idx + (long)t * k;
        const T* dw = dtopk_weight + (long)t * k;
        if (!sigmoid) {
          // dp: from the combine weights (top-k only), then the aux loss term
          for (int e = 0; e < E; ++e) dz[e] = aux_scale * w[e];
          if (renorm) {
            // w_j = r p_j / s, s = sum_i p_i: dp_j = (r dw_j - sum_i dw_i w_i) / s
            T sm = 0, dot = 0;
            for (int j = 0; j < k; ++j) {
              sm += p[idx[j]];
              dot += dw[j] * topk_w[(long)t * k + j];
            }
            for (int j = 0; j < k; ++j) dz[idx[j]] += (r * dw[j] - dot) / sm;
          } else {
            for (int j = 0; j < k; ++j) dz[idx[j]] += r * dw[j];
          }
          // softmax backward: dlogit = p (dp - sum p dp), plus the z-loss term
          T dot = 0;
          for (int e = 0; e < E; ++e) dot += p[e] * dz[e];
          for (int e = 0; e < E; ++e) dz[e] = p[e] * (dz[e] - dot) + z_scale * lse[t] * p[e];
        } else {
          // aux term through p_e = s_e / S_all: ds_e = (dp_e - sum_i dp_i p_i) / S_all
          T sall = 0, dot = 0;
          for (int e = 0; e < E; ++e) {
            sall += s[e];
            dot += aux_scale * w[e] * p[e];
          }
          for (int e = 0; e < E; ++e) dz[e] = (aux_scale * w[e] - dot) / sall;
          // combine weights w_j = r s_j / sum_topk s (always normalised)
          T sm = 0, dotw = 0;
          for (int j = 0; j < k; ++j) {
            sm += s[idx[j]];
            dotw += dw[j] * topk_w[(long)t * k + j];
          }
          for (int j = 0; j < k; ++j) dz[idx[j]] += (r * dw[j] - dotw) / sm;
          // sigmoid backward, plus the z-loss term (softmax of the logits)
          const T* z = logits + (long)t * E;
          for (int e = 0; e < E; ++e)
            dz[e] = dz[e] * s[e] * (T(1) - s[e]) + z_scale * lse[t] * math::exp(z[e] - lse[t]);
        }
      });
    } else {
      // A thread per token, vector lanes over the experts; lane e % (vector
      // length) owns dz[e]. The k top-k terms (inputs, read-only here) are
      // summed by every lane in order j; expert e's combine term is added by
      // its own lane (an expert is picked at most once per token).
      Kokkos::parallel_for("router::backward_team", row_team_policy(N), KOKKOS_LAMBDA(const TeamMember& member) {
        for_team_rows(member, N, [&](const long t) {
          const T* p = probs + t * E;
          const T* s = scores + t * E;
          T* dz = dlogits + t * E;
          const T* w = cw + (t / Tseg) * E;
          const int* idx = topk_idx + t * k;
          const T* dw = dtopk_weight + t * k;
          const T* tw = topk_w + t * k;
          const T lse_t = lse[t];
          if (!sigmoid) {
            // dp_e = aux_scale w_e + (combine term if e is picked):
            //   renormalised, w_j = r p_j / sm, sm = sum_i p_i: dp_j = (r dw_j - sum_i dw_i w_i) / sm
            //   otherwise w_j = r p_j: dp_j = r dw_j
            T sm = 0, dotw = 0;
            if (renorm)
              for (int j = 0; j < k; ++j) {
                sm += p[idx[j]];
                dotw += dw[j] * tw[j];
              }
            // softmax backward: dlogit = p (dp - sum p dp), plus the z-loss term
            T dot = 0;
            Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, T& a) {
              T d = aux_scale * w[e];
              for (int j = 0; j < k; ++j)
                if (idx[j] == e) d += renorm ? (r * dw[j] - dotw) / sm : r * dw[j];
              dz[e] = d;
              a += p[e] * dz[e];
            }, dot);
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, E), [&](const int e) {
              dz[e] = p[e] * (dz[e] - dot) + z_scale * lse_t * p[e];
            });
          } else {
            // aux term through p_e = s_e / S_all: ds_e = (dp_e - sum_i dp_i p_i) / S_all
            T sall = 0, dot = 0;
            Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, T& a) { a += s[e]; }, sall);
            Kokkos::parallel_reduce(Kokkos::ThreadVectorRange(member, E), [&](const int e, T& a) {
              a += aux_scale * w[e] * p[e];
            }, dot);
            // combine weights w_j = r s_j / sum_topk s (always normalised)
            T sm = 0, dotw = 0;
            for (int j = 0; j < k; ++j) {
              sm += s[idx[j]];
              dotw += dw[j] * tw[j];
            }
            // sigmoid backward ds/dz = s (1 - s), plus the z-loss term (softmax of the logits)
            const T* z = logits + t * E;
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(member, E), [&](const int e) {
              T d = (aux_scale * w[e] - dot) / sall;
              for (int j = 0; j < k; ++j)
                if (idx[j] == e) d += (r * dw[j] - dotw) / sm;
              dz[e] = d * s[e] * (T(1) - s[e]) + z_scale * lse_t * math::exp(z[e] - lse_t);
            });
          }
        });
      });
    }
    matmul_fp32<T>('T', 'N', E, C_, N, T(1), dlogits, h, T(1), dw_router);
    matmul_fp32<T>('N', 'N', N, C_, E, T(1), dlogits, w_router, T(1), dh);
  }

  // --- aux-loss-free balancing --------------------------------------------
  // The selection bias (E), host master copy in double; identical on every rank.
  const std::vector<double>& bias() const { return bias_host_; }
  void set_bias(const std::vector<double>& b) {
    bias_host_ = b;
    bias_host_.resize(E_, 0.0);
    std::vector<T> tb(bias_host_.begin(), bias_host_.end());
    Kokkos::deep_copy(bias_, HostView<T>(tb.data(), tb.size()));
  }
  // Top-k assignments per expert of this step's training forwards (this
  // rank), read from the device (once per step, for the bias update).
  std::vector<double> step_counts() const {
    std::vector<double> out(E_);
    Kokkos::deep_copy(HostView<double>(out.data(), out.size()), step_counts_);
    return out;
  }
  // Ends the step: clears the step's counts (and the global-scope running sums).
  void end_step() {
    double* step = step_counts_.data();
    Kokkos::parallel_for("router::end_step", RangePolicy(0, E_), KOKKOS_LAMBDA(const int e) { step[e] = 0; });
    std::fill(global_counts_.begin(), global_counts_.end(), 0.0);
    global_tokens_ = 0;
  }
  const RouterOptions& options() const { return opt_; }

  const T* logits() const { return logits_.data(); }          // (N,E)
  const T* probs() const { return probs_.data(); }            // (N,E) routing distribution
  const int* topk_idx() const { return topk_idx_.data(); }    // (N,k)
  const T* topk_weight() const { return topk_weight_.data(); }  // (N,k)
  int top_k() const { return k_; }
  int num_experts() const { return E_; }

 private:
  template <class V>
  using HostView = Kokkos::View<V*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  int C_, E_, k_;
  RouterOptions opt_;
  double aux_coef_, z_coef_;
  DeviceBuffer<T> logits_, probs_, scores_, dlogits_, lse_;
  DeviceBuffer<int> topk_idx_;
  DeviceBuffer<T> topk_weight_;
  DeviceBuffer<T> bias_;
  DeviceBuffer<int> counts_;
  DeviceBuffer<T> prob_mean_, count_weight_;
  DeviceBuffer<double> step_counts_;        // (E) this step's load
  DeviceBuffer<double> global_counts_dev_;  // (E) global scope: the step's counts over all ranks
  DeviceBuffer<double> out_;                // (kLossSlots) the last forward's losses
  Kokkos::View<RouterSums, MemSpace> sums_;
  Kokkos::View<double, MemSpace> fp_sum_;
  DeviceBuffer<T> token_entropy_, token_margin_;  // (N) team nest: per-token statistics
  std::vector<double> bias_host_, global_counts_;
  double global_tokens_ = 0;
  double aux_grad_scale_ = 0;
  int segment_len_ = 1;
};

// One aux-loss-free balancing update from the step's global counts:
// b_e += u * sign(mean - load_e), then centred (mean subtracted).
inline void update_balance_bias(std::vector<double>& bias, const std::vector<double>& load, double u) {
  const std::size_t E = bias.size();
  double mean = 0;
  for (double c : load) mean += c;
  mean /= static_cast<double>(E);
  for (std::size_t e = 0; e < E; ++e) {
    const double d = mean - load[e];
    bias[e] += d > 0 ? u : d < 0 ? -u : 0.0;
  }
  double centre = 0;
  for (double b : bias) centre += b;
  centre /= static_cast<double>(E);
  for (double& b : bias) b -= centre;
}

}  // namespace fulcrum
