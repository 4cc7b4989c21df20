// token_dispatcher.hpp: moves routed tokens to their experts and back.
//
// The dispatcher owns the permutation and the per-expert split counts
// (Megatron-Core's TokenDispatcher). Implementations are registry entries
// keyed by the deck string [parallel] dispatcher; "local" (EP = 1) only
// permutes. Assignment a = t*k + j is token t's j-th choice; permuted rows are
// grouped by expert, in assignment order within an expert, so the result is
// deterministic and capacity dropping keeps the earliest tokens.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <mpi.h>

#include "model/kokkos_types.hpp"
#include "model/token_dispatcher_names.hpp"

namespace fulcrum {

template <class T>
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // Groups the N*k assignments by expert and gathers their inputs.
  // h is (N,C), topk_idx is (N,k).
  virtual void dispatch(const T* h, const int* topk_idx, int N) = 0;
  // Rows per local expert after dispatch (host copy, drives the grouped GEMM).
  virtual const std::vector<int>& tokens_per_local_expert() const = 0;
  // This rank's top-k assignments per expert (all E experts) before capacity
  // dropping, from the same host copy: routing statistics need no other one.
  virtual const std::vector<int>& assignments_per_expert() const = 0;
  virtual T* permuted_input() = 0;    // (rows,C) input rows grouped by local expert
  virtual T* permuted_output() = 0;   // (rows,C) the experts' outputs
  virtual T* permuted_input_grad() = 0;   // (rows,C)
  virtual T* permuted_output_grad() = 0;  // (rows,C)
  // y is (N,C) (+=): y[t] += sum_j w[t,j] * out[pos(t,j)]; topk_weight is (N,k)
  virtual void combine(T* y, const T* topk_weight, int N) = 0;
  // dy is (N,C): fills permuted_output_grad() and dtopk_weight (N,k, overwritten)
  virtual void combine_backward(T* dtopk_weight, const T* dy, const T* topk_weight, int N) = 0;
  // dh is (N,C) (+=): dh[t] += sum_j permuted_input_grad()[pos(t,j)]
  virtual void dispatch_backward(T* dh, int N) = 0;
  // Assignments dropped by the capacity factor in the last dispatch.
  virtual long dropped_assignments() const = 0;
  // Cumulative time in and volume sent by token exchanges (0 when local).
  virtual double exchange_seconds() const { return 0; }
  virtual double exchange_bytes() const { return 0; }
};

// EP = 1: every expert is local; permute and un-permute only.
template <class T>
class LocalTokenDispatcher : public TokenDispatcher<T> {
 public:
  LocalTokenDispatcher(int max_tokens, int d_model, int num_experts, int top_k,
                       double capacity_factor)
      : C_(d_model), E_(num_experts), k_(top_k), capacity_factor_(capacity_factor),
        position_("dispatch::position", (long)max_tokens * top_k),
        block_table_("dispatch::block_table",
                     (long)num_experts * (((long)max_tokens * top_k + kBlock - 1) / kBlock) + 1),
        first_("dispatch::first", num_experts),
        kept_("dispatch::kept", 2 * num_experts),  // [kept (E) | requested (E)]
        offset_("dispatch::offset", num_experts + 1),
        kept_host_(Kokkos::create_mirror_view(kept_)),
        input_("dispatch::permuted_input", (long)max_tokens * top_k * d_model),
        output_("dispatch::permuted_output", (long)max_tokens * top_k * d_model),
        input_grad_("dispatch::permuted_input_grad", (long)max_tokens * top_k * d_model),
        output_grad_("dispatch::permuted_output_grad", (long)max_tokens * top_k * d_model),
        tokens_per_expert_(num_experts, 0), assignments_(num_experts, 0) {}

  // Assignments per block of the counting sort: one thread per block, so a
  // block's counters (a column of the (E, blocks) table) have one writer.
  static constexpr int kBlock = 64;

  void dispatch(const T* h, const int* topk_idx, int N) override {
    const int E = E_, k = k_, C = C_;
    const long NK = (long)N * k;
    const long nb = (NK + kBlock - 1) / kBlock;  // blocks of assignments
    // capacity = ceil(c N k / E); 0 means dropless
    const long capacity = capacity_factor_ > 0
        ? static_cast<long>(std::ceil(capacity_factor_ * NK / E)) : NK;
    // A stable counting sort by expert, deterministic without atomics:
    // (1) per block, how many of its assignments go to each expert;
    int* table = block_table_.data();  // (E, nb) expert-major, then one total
    Kokkos::parallel_for("moe::dispatch_histogram", RangePolicy(0, nb), KOKKOS_LAMBDA(const long b) {
      for (int e = 0; e < E; ++e) table[e * nb + b] = 0;
      const long a1 = (b + 1) * kBlock < NK ? (b + 1) * kBlock : NK;
      for (long a = b * kBlock; a < a1; ++a) ++table[topk_idx[a] * nb + b];
    });
    // (2) an exclusive scan over the expert-major table: entry (e, b) becomes
    // the number of assignments to experts < e, plus those to e in blocks < b;
    // entry E nb the total
    Kokkos::parallel_scan("moe::dispatch_scan", RangePolicy(0, E * nb + 1),
                          KOKKOS_LAMBDA(const long i, int& sum, const bool final) {
      const int c = i < E * nb ? table[i] : 0;
      if (final) table[i] = sum;
      sum += c;
    });
    // (3) per expert: requested and kept (capacity) counts
    int* kept = kept_.data();
    int* first = first_.data();
    Kokkos::parallel_for("moe::dispatch_counts", RangePolicy(0, E), KOKKOS_LAMBDA(const int e) {
      const int requested = table[(e + 1) * nb] - table[e * nb];
      first[e] = table[e * nb];
      kept[e] = static_cast<int>(requested < capacity ? requested : capacity);
      kept[E + e] = requested;
    });
    // (4) rows of kept assignments start at the scan of the kept counts
    int* offset = offset_.data();
    Kokkos::parallel_scan("moe::dispatch_offsets", RangePolicy(0, E + 1),
                          KOKKOS_LAMBDA(const int e, int& sum, const bool final) {
      if (final) offset[e] = sum;
      if (e < E) sum += kept[e];
    });
    // (5) per block, in assignment order: the rank of each assignment within
    // its expert (earliest first, so capacity drops the latest) and its row
    int* position = position_.data();
    Kokkos::parallel_for("moe::dispatch_position", RangePolicy(0, nb), KOKKOS_LAMBDA(const long b) {
      const long a1 = (b + 1) * kBlock < NK ? (b + 1) * kBlock : NK;
      for (long a = b * kBlock; a < a1; ++a) {
        const int e = topk_idx[a];
        const long rank = table[e * nb + b]++ - first[e];
        position[a] = rank < capacity ? offset[e] + static_cast<int>(rank) : -1;
      }
    });
    T* in = input_.data();
    // one assignment (row of C) per work item: contiguous, vectorisable copies
    Kokkos::parallel_for("moe::permute", RangePolicy(0, NK), KOKKOS_LAMBDA(const long a) {
      const int p = position[a];
      if (p < 0) return;
      const T* src = h + (a / k) * C;
      T* dst = in + (long)p * C;
      for (int c = 0; c < C; ++c) dst[c] = src[c];
    });
    // The grouped GEMM needs the split sizes on the host (as Megatron's
    // tokens_per_expert.cpu()): 2E integers per MoE layer per micro-batch,
    // the one device-to-host copy of the MoE layer.
    Kokkos::deep_copy(kept_host_, kept_);
    dropped_ = NK;
    for (int e = 0; e < E; ++e) {
      tokens_per_expert_[e] = kept_host_(e);
      assignments_[e] = kept_host_(E + e);
      dropped_ -= kept_host_(e);
    }
  }

  // Row of each assignment t*k + j in permuted_input(), -1 when dropped (N*k, device).
  const int* positions() const { return position_.data(); }

  const std::vector<int>& tokens_per_local_expert() const override { return tokens_per_expert_; }
  const std::vector<int>& assignments_per_expert() const override { return assignments_; }
  T* permuted_input() override { return input_.data(); }
  T* permuted_output() override { return output_.data(); }
  T* permuted_input_grad() override { return input_grad_.data(); }
  T* permuted_output_grad() override { return output_grad_.data(); }

  void combine(T* y, const T* topk_weight, int N) override {
    const int k = k_, C = C_;
    const int* position = position_.data();
    const T* out = output_.data();
    // one token (row of C) per work item, no index division; per element the
    // k weighted expert outputs are summed in slot order, then added to y
    // (the same arithmetic as the expert-parallel dispatcher's combine)
    Kokkos::parallel_for("moe::unpermute", RangePolicy(0, N), KOKKOS_LAMBDA(const long t) {
      T* yt = y + t * C;
      for (int c = 0; c < C; ++c) {
        T acc = 0;
        for (int j = 0; j < k; ++j) {
          const int p = position[t * k + j];
          if (p >= 0) acc += topk_weight[t * k + j] * out[(long)p * C + c];
        }
        yt[c] += acc;
      }
    });
  }

  void combine_backward(T* dtopk_weight, const T* dy, const T* topk_weight, int N) override {
    const int k = k_, C = C_;
    const int* position = position_.data();
    const T* out = output_.data();
    T* dout = output_grad_.data();
    Kokkos::parallel_for("moe::unpermute_backward", RangePolicy(0, (long)N * k),
                         KOKKOS_LAMBDA(const long a) {
      const int p = position[a];
      const long t = a / k;
      T dw = 0;
      if (p >= 0) {
        const T w = topk_weight[a];
        for (int c = 0; c < C; ++c) {
          dout[(long)p * C + c] = w * dy[t * C + c];
          dw += dy[t * C + c] * out[(long)p * C + c];
        }
      }
      dtopk_weight[a] = dw;
    });
  }

  void dispatch_backward(T* dh, int N) override {
    const int k = k_, C = C_;
    const int* position = position_.data();
    const T* din = input_grad_.data();
    Kokkos::parallel_for("moe::permute_backward", RangePolicy(0, N), KOKKOS_LAMBDA(const long t) {
      T* d = dh + t * C;
      for (int c = 0; c < C; ++c) {
        T acc = 0;
        for (int j = 0; j < k; ++j) {
          const int p = position[t * k + j];
          if (p >= 0) acc += din[(long)p * C + c];
        }
        d[c] += acc;
      }
    });
  }

  long dropped_assignments() const override { return dropped_; }

 private:
  int C_, E_, k_;
  double capacity_factor_;
  DeviceBuffer<int> position_, block_table_, first_, kept_, offset_;
  typename DeviceBuffer<int>::host_mirror_type kept_host_;
  DeviceBuffer<T> input_, output_, input_grad_, output_grad_;
  std::vector<int> tokens_per_expert_, assignments_;
  long dropped_ = 0;
};

// Registry of dispatchers keyed by the deck string [parallel] dispatcher:
// "local" (EP = 1), "mpi_alltoall", and "nccl" in builds with NCCL. An
// unknown name throws std::invalid_argument listing the valid ones.
// The dispatchers of known_token_dispatcher_names() compiled into this build.
std::vector<std::string> token_dispatcher_names();

template <class T>
std::unique_ptr<TokenDispatcher<T>> make_token_dispatcher(const std::string& name, int max_tokens,
                                                          int d_model, int num_experts, int top_k,
                                                          double capacity_factor,
                                                          MPI_Comm ep_comm = MPI_COMM_SELF);

}  // namespace fulcrum
