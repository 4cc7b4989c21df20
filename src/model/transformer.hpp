// transformer.hpp: the decoder-only model (doc/model.md), dense or MoE.
//
// Parameters live in ONE device allocation; gradients and the optimiser's
// moments share its layout (parameter_layout()). Activations needed by
// backward are kept per layer; gradient scratch is shared across layers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/hash.hpp"  // splitmix64 (header-only part)
#include "model/attention.hpp"
#include "model/attention_kernel.hpp"
#include "model/layers.hpp"
#include "model/model_shape.hpp"
#include "model/moe_layer.hpp"

namespace fulcrum {

// Named views into a flat parameter-shaped buffer (params or grads).
template <class T>
struct LayerWeights {
  T* ln1_w = nullptr;  // (C)
  T* wq = nullptr;     // (nh*hd,C)
  T* wk = nullptr;     // (nkv*hd,C)
  T* wv = nullptr;     // (nkv*hd,C)
  T* wo = nullptr;     // (C,nh*hd)
  T* ln2_w = nullptr;  // (C)
  T* w1 = nullptr;     // (F,C)   dense layers
  T* w3 = nullptr;     // (F,C)
  T* w2 = nullptr;     // (C,F)
  MoeWeights<T> moe;   // MoE layers
};

template <class T>
struct ModelWeights {
  T* wte = nullptr;      // (V,C)
  std::vector<LayerWeights<T>> layers;
  T* lnf_w = nullptr;    // (C)
  T* lm_head = nullptr;  // (V,C)
};

struct ModelLosses {
  double lm = 0;    // mean cross-entropy
  double aux = 0;   // load-balancing loss, summed over MoE layers
  double z = 0;     // router z-loss, summed over MoE layers
  double total() const { return lm + aux + z; }
};

template <class T>
class Transformer {
 public:
  // max_batch: sequences per micro-batch (B); every batch has T = seq_len.
  // ep_comm: the ranks sharing this model's routed experts (shape.ep_size of them).
  // balance_comm: the ranks sharing one global batch (global balance-loss
  // scope; the bias update takes its communicator as an argument).
  // attention: the attention kernel; automatic = attention_kernel_for(shape)
  // (attention_kernel.hpp), the others force one (tests, benchmarks).
  Transformer(const ModelShape& shape, int max_batch, const std::string& dispatcher = "local",
              MPI_Comm ep_comm = MPI_COMM_SELF, MPI_Comm balance_comm = MPI_COMM_SELF,
              AttentionKernel attention = AttentionKernel::automatic)
      : s_(shape), B_(max_batch), attention_(attention_kernel_for(shape, max_batch, attention)),
        layout_(parameter_layout(shape)), ep_comm_(ep_comm), balance_comm_(balance_comm) {
    const long n = parameter_count(layout_);
    for (std::size_t i = 0; i < layout_.size(); ++i) index_[layout_[i].name] = i;
    params_ = DeviceBuffer<T>("model::params", n);
    grads_ = DeviceBuffer<T>("model::grads", n);
    weights_ = bind(params_.data());
    grad_weights_ = bind(grads_.data());
    allocate_activations(dispatcher);
    rope_tables<T>(rope_cos_, rope_sin_, s_.seq_len, s_.head_dim, s_.rope_theta);
  }

  const ModelShape& shape() const { return s_; }
  AttentionKernel attention_kernel() const { return attention_; }  // full or flash
  const std::vector<ParameterTensor>& layout() const { return layout_; }
  long num_parameters() const { return params_.extent(0); }
  DeviceBuffer<T>& params() { return params_; }
  DeviceBuffer<T>& grads() { return grads_; }
  const ParameterTensor& tensor(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) throw std::out_of_range("no parameter named '" + name + "'");
    return layout_[it->second];
  }
  MoeLayer<T>* moe_layer(int l) { return moe_[l].get(); }
  // Routing statistics count training forwards only (off for evaluation).
  void set_routing_statistics(bool on) {
    for (auto& m : moe_)
      if (m) m->collect_statistics = on;
  }

  // After each optimizer step (collective over `world`, every rank of the
  // global batch): with bias balancing, each MoE layer's bias moves by
  // u * sign(mean load - load_e) over the step's counts summed over all
  // ranks and micro-batches, then is centred; identical on every rank. Then
  // the step's counts are cleared.
  void end_routing_step(MPI_Comm world) {
    for (auto& m : moe_) {
      if (!m) continue;
      Router<T>& r = m->router();
      if (s_.bias_balancing) {
        std::vector<double> load = r.step_counts();
        MPI_Allreduce(MPI_IN_PLACE, load.data(), (int)load.size(), MPI_DOUBLE, MPI_SUM, world);
        std::vector<double> b = r.bias();
        update_balance_bias(b, load, s_.bias_update_rate);
        r.set_bias(b);
      }
      r.end_step();
    }
  }
  // Clears the step's routing counts without a bias update (tests, evaluation).
  void clear_routing_step() {
    for (auto& m : moe_)
      if (m) m->router().end_step();
  }
  // Every MoE layer's selection bias, layer after layer (E each); empty for a dense model.
  std::vector<double> routing_bias() const {
    std::vector<double> out;
    for (const auto& m : moe_)
      if (m) out.insert(out.end(), m->router().bias().begin(), m->router().bias().end());
    return out;
  }
  void set_routing_bias(const std::vector<double>& all) {
    std::size_t i = 0;
    for (auto& m : moe_) {
      if (!m) continue;
      const std::size_t E = (std::size_t)s_.num_experts;
      std::vector<double> b(E, 0.0);
      for (std::size_t e = 0; e < E && i + e < all.size(); ++e) b[e] = all[i + e];
      i += E;
      m->router().set_bias(b);
    }
  }

  // Normal(0, std) for matrices, 1 for norm weights. Each value is a pure
  // function of (seed, tensor id, element index in the full tensor)
  // (SplitMix64 + Box-Muller), so the model is identical at any expert-
  // parallel layout and independent of the build.
  void init_parameters(std::uint64_t seed, double std) {
    auto host = Kokkos::create_mirror_view(params_);
    auto mix = splitmix64;
    // in (0,1): never 0, so log(u1) is finite
    auto uniform = [](std::uint64_t z) { return ((z >> 11) + 0.5) * (1.0 / 9007199254740992.0); };
    for (const auto& t : layout_) {
      const std::uint64_t tensor_key = mix(mix(seed) ^ (0x1000003ULL * (std::uint64_t)(t.id + 1)));
      for (long i = 0; i < t.size; ++i) {
        if (!t.is_matrix) {
          host(t.offset + i) = T(1);
          continue;
        }
        const std::uint64_t h = mix(tensor_key ^ mix((std::uint64_t)(t.shard_offset + i)));
        const double u1 = uniform(h), u2 = uniform(mix(h));
        host(t.offset + i) = static_cast<T>(std * std::sqrt(-2.0 * std::log(u1)) *
                                            std::cos(6.283185307179586 * u2));
      }
    }
    Kokkos::deep_copy(params_, host);
  }

  // tokens, targets are (B,T) on the host; B <= max_batch.
  void set_batch(const std::vector<int>& tokens, const std::vector<int>& targets, int B) {
    if (B > B_ || (long)tokens.size() != (long)B * s_.seq_len || targets.size() != tokens.size())
      throw std::invalid_argument("set_batch: wrong batch shape");
    batch_ = B;
    auto tok = Kokkos::subview(tokens_, std::make_pair(0L, (long)tokens.size()));
    auto tgt = Kokkos::subview(targets_, std::make_pair(0L, (long)targets.size()));
    Kokkos::View<const int*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>
        htok(tokens.data(), tokens.size()), htgt(targets.data(), targets.size());
    Kokkos::deep_copy(tok, htok);
    Kokkos::deep_copy(tgt, htgt);
  }

  // Forward pass; its losses stay in device memory (device_losses(): [lm,
  // aux, z] as doubles), so the training step need not wait for the device.
  void forward_device();
  // forward_device, then the losses read back (waits for the device).
  ModelLosses forward();
  const DeviceBuffer<double>& device_losses() const { return losses_; }
  // Accumulates d(dloss * loss)/dparams into grads() (+=).
  void backward(T dloss);
  void zero_grads() { zero(grads_.data(), grads_.extent(0)); }  // a kernel: deep_copy of a value would fence

  const T* logits() const { return logits_.data(); }  // (B,T,V) of the last forward
  int batch() const { return batch_; }

 private:
  ModelWeights<T> bind(T* base) {
    ModelWeights<T> w;
    auto at = [&](const std::string& name) { return base + tensor(name).offset; };
    auto maybe = [&](const std::string& name) {
      return index_.count(name) ? base + tensor(name).offset : nullptr;
    };
    w.wte = at("wte");
    w.lnf_w = at("lnf_w");
    w.lm_head = at("lm_head");
    for (int l = 0; l < s_.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      LayerWeights<T> lw;
      lw.ln1_w = at(p + "ln1_w");
      lw.wq = at(p + "wq");
      lw.wk = at(p + "wk");
      lw.wv = at(p + "wv");
      lw.wo = at(p + "wo");
      lw.ln2_w = at(p + "ln2_w");
      if (!s_.is_moe_layer(l)) {
        lw.w1 = at(p + "w1");
        lw.w3 = at(p + "w3");
        lw.w2 = at(p + "w2");
      } else {
        lw.moe.router = at(p + "router");
        lw.moe.experts_w1 = at(p + "experts_w1");
        lw.moe.experts_w3 = at(p + "experts_w3");
        lw.moe.experts_w2 = at(p + "experts_w2");
        lw.moe.shared_w1 = maybe(p + "shared_w1");
        lw.moe.shared_w3 = maybe(p + "shared_w3");
        lw.moe.shared_w2 = maybe(p + "shared_w2");
      }
      w.layers.push_back(lw);
    }
    return w;
  }

  void allocate_activations(const std::string& dispatcher);

  ModelShape s_;
  int B_;
  AttentionKernel attention_;  // full or flash, fixed at construction
  int batch_ = 0;
  std::vector<ParameterTensor> layout_;
  MPI_Comm ep_comm_, balance_comm_;
  std::map<std::string, std::size_t> index_;
  DeviceBuffer<T> params_, grads_;
  ModelWeights<T> weights_, grad_weights_;
  DeviceBuffer<T> rope_cos_, rope_sin_;
  DeviceBuffer<int> tokens_, targets_;
  // kept for backward, per layer l (N = B*T):
  DeviceBuffer<T> resid_;     // (L+1,N,C) residual stream entering layer l; [L] = final
  DeviceBuffer<T> mid_;       // (L,N,C)   residual after attention
  DeviceBuffer<T> ln1_, ln2_; // (L,N,C)
  DeviceBuffer<T> rstd1_, rstd2_;  // (L,N)
  DeviceBuffer<T> q_;         // (L,B,nh,T,hd) rotated
  DeviceBuffer<T> k_, v_;     // (L,B,nkv,T,hd), k rotated
  DeviceBuffer<T> att_;       // (L,B,nh,T,T) full attention's probabilities (empty with flash)
  DeviceBuffer<T> att_lse_;   // (L,B,nh,T) flash attention's log-sum-exp per query row (empty with full)
  DeviceBuffer<T> attn_out_;  // (L,N,nh*hd) attention output before wo
  DeviceBuffer<T> ffn_h1_, ffn_h3_, ffn_act_;  // (L,N,F) dense layers
  DeviceBuffer<T> lnf_, rstdf_, logits_;       // (N,C), (N), (N,V)
  DeviceBuffer<T> lse_;                        // (N): log-sum-exp of each logits row
  std::vector<std::unique_ptr<MoeLayer<T>>> moe_;
  // gradient scratch, shared across layers:
  DeviceBuffer<T> proj_q_, proj_k_, proj_v_;   // (N,nh*hd), (N,nkv*hd) x2
  DeviceBuffer<T> heads_;                      // (B,nh,T,hd)
  DeviceBuffer<T> dq_, dk_, dv_, datt_;        // head-major grads, (B,nh,T,T) (full attention)
  DeviceBuffer<T> att_delta_;                  // (B,nh,T) flash attention's rowsum(dout * out)
  DeviceBuffer<T> dresid_, dln_, ffn_out_;     // (N,C)
  DeviceBuffer<T> dffn_act_, dffn_h1_, dffn_h3_;  // (N,F)
  DeviceBuffer<T> dlogits_;                    // (N,V)
  DeviceBuffer<T> norm_partial_;               // (ceil(N/kNormRowBlock),C) RMSNorm weight-gradient partials
  EmbeddingBackwardScratch embed_sort_;        // the embedding backward's token sort (device backends)
  DeviceBuffer<double> losses_{"model::losses", 3};  // [lm, aux, z] of the last forward
  Kokkos::View<double, MemSpace> ce_sum_{"model::crossentropy_sum"};
};

}  // namespace fulcrum

#include "model/transformer_impl.hpp"
