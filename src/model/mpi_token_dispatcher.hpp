// mpi_token_dispatcher.hpp: expert-parallel token exchange with MPI.
//
// dispatch: permute locally by expert (experts are owned contiguously, so
// expert-major order is destination-major order), exchange per-expert counts
// with MPI_Alltoall, rows with MPI_Alltoallv, then regroup the received rows
// (source-major) by local expert for the grouped GEMM. combine is the mirror
// exchange; backward exchanges gradients the same two ways. The receive-side
// buffers are sized from the exchanged counts (grown, with headroom, when a
// micro-batch needs more rows; never the worst case of every peer sending
// every token, P x N x k rows, which at production sizes does not fit). Buffers are
// passed to MPI directly (device memory needs a CUDA-aware MPI; the nccl
// dispatcher is the CUDA path: the same class with an NCCL RowExchange).
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "model/expert_parallel.hpp"
#include "model/row_exchange.hpp"
#include "model/scratch_pool.hpp"
#include "model/token_dispatcher.hpp"

namespace fulcrum {

template <class T>
class MpiAlltoallTokenDispatcher : public TokenDispatcher<T> {
 public:
  // rows: how rows move between peers (MPI_Alltoallv or NCCL send/recv);
  // the split counts always go through MPI_Alltoall on the host.
  MpiAlltoallTokenDispatcher(int max_tokens, int d_model, int num_experts, int top_k,
                             double capacity_factor, MPI_Comm ep_comm,
                             std::unique_ptr<RowExchange<T>> rows = nullptr)
      : local_(max_tokens, d_model, num_experts, top_k, capacity_factor), comm_(ep_comm),
        rows_exchange_(rows ? std::move(rows) : std::make_unique<MpiRowExchange<T>>(ep_comm)),
        C_(d_model), E_(num_experts) {
    MPI_Comm_size(comm_, &P_);
    El_ = E_ / P_;
    // start at the balanced load (each rank receives its own N k rows) and grow
    reserve_rows((long)max_tokens * top_k);
    tokens_per_expert_.assign(El_, 0);
  }

  // Rows the receive-side buffers hold now (tests: memory that scales).
  long capacity_rows() const { return capacity_rows_; }

  void dispatch(const T* h, const int* topk_idx, int N) override {
    local_.dispatch(h, topk_idx, N);
    const std::vector<int>& per_expert = local_.tokens_per_local_expert();  // (E): all experts
    // counts: what I send to each peer, per peer-local expert; what I receive
    send_expert_counts_.assign(per_expert.begin(), per_expert.end());
    recv_expert_counts_.assign((std::size_t)P_ * El_, 0);
    timed([&] {
      MPI_Alltoall(send_expert_counts_.data(), El_, MPI_INT, recv_expert_counts_.data(), El_, MPI_INT, comm_);
    });
    send_rows_.assign(P_, 0);
    recv_rows_.assign(P_, 0);
    for (int p = 0; p < P_; ++p)
      for (int e = 0; e < El_; ++e) {
        send_rows_[p] += send_expert_counts_[(std::size_t)p * El_ + e];
        recv_rows_[p] += recv_expert_counts_[(std::size_t)p * El_ + e];
      }
    counts_and_displacements();
    long incoming = 0;
    for (int p = 0; p < P_; ++p) incoming += recv_rows_[p];
    reserve_rows(incoming);
    // rows (source-major) into staging, then regroup by local expert
    exchange(local_.permuted_input(), send_counts_, send_displs_, staging_.data(), recv_counts_, recv_displs_);
    build_regroup_map();
    regroup(input_.data(), staging_.data(), /*to_expert_major=*/true);
  }

  const std::vector<int>& tokens_per_local_expert() const override { return tokens_per_expert_; }
  const std::vector<int>& assignments_per_expert() const override { return local_.assignments_per_expert(); }
  T* permuted_input() override { return input_.data(); }
  T* permuted_output() override { return output_.data(); }
  T* permuted_input_grad() override { return input_grad_.data(); }
  T* permuted_output_grad() override { return output_grad_.data(); }

  void combine(T* y, const T* topk_weight, int N) override {
    regroup(staging_.data(), output_.data(), /*to_expert_major=*/false);
    exchange(staging_.data(), recv_counts_, recv_displs_, local_.permuted_output(), send_counts_, send_displs_);
    local_.combine(y, topk_weight, N);
  }

  void combine_backward(T* dtopk_weight, const T* dy, const T* topk_weight, int N) override {
    local_.combine_backward(dtopk_weight, dy, topk_weight, N);
    exchange(local_.permuted_output_grad(), send_counts_, send_displs_, staging_.data(), recv_counts_, recv_displs_);
    regroup(output_grad_.data(), staging_.data(), /*to_expert_major=*/true);
  }

  void dispatch_backward(T* dh, int N) override {
    regroup(staging_.data(), input_grad_.data(), /*to_expert_major=*/false);
    exchange(staging_.data(), recv_counts_, recv_displs_, local_.permuted_input_grad(), send_counts_, send_displs_);
    local_.dispatch_backward(dh, N);
  }

  long dropped_assignments() const override { return local_.dropped_assignments(); }

  // Public only because CUDA forbids device lambdas in private member
  // functions: copies rows between source-major and expert-major order.
  void regroup(T* dst, const T* src, bool to_expert_major) {
    const int C = C_;
    const int* map = expert_to_source_.data();
    Kokkos::parallel_for("moe::a2a_regroup", RangePolicy(0, rows_ * C), KOKKOS_LAMBDA(const long i) {
      const long row = i / C, c = i % C;
      if (to_expert_major) dst[i] = src[(long)map[row] * C + c];
      else dst[(long)map[row] * C + c] = src[i];
    });
  }

  double exchange_seconds() const override { return seconds_; }
  double exchange_bytes() const override { return bytes_; }

 private:
  template <class F>
  void timed(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Grows the five receive-side row buffers to hold `rows` rows (25% headroom
  // so a fluctuating load does not reallocate every micro-batch). Contents
  // are not kept: called only in dispatch, before anything is received.
  void reserve_rows(long rows) {
    const long cap = grown_row_capacity(rows, capacity_rows_);
    if (cap == capacity_rows_) return;
    Kokkos::fence();
    input_ = DeviceBuffer<T>("a2a::input", cap * C_);
    output_ = DeviceBuffer<T>("a2a::output", cap * C_);
    input_grad_ = DeviceBuffer<T>("a2a::input_grad", cap * C_);
    output_grad_ = DeviceBuffer<T>("a2a::output_grad", cap * C_);
    staging_ = DeviceBuffer<T>("a2a::staging", cap * C_);
    expert_to_source_ = DeviceBuffer<int>("a2a::expert_to_source", cap);
    map_host_ = Kokkos::create_mirror_view(expert_to_source_);
    capacity_rows_ = cap;
  }

  void counts_and_displacements() {
    send_counts_.assign(P_, 0);
    recv_counts_.assign(P_, 0);
    send_displs_.assign(P_, 0);
    recv_displs_.assign(P_, 0);
    for (int p = 0; p < P_; ++p) {
      send_counts_[p] = send_rows_[p] * C_;
      recv_counts_[p] = recv_rows_[p] * C_;
      if (p > 0) {
        send_displs_[p] = send_displs_[p - 1] + send_counts_[p - 1];
        recv_displs_[p] = recv_displs_[p - 1] + recv_counts_[p - 1];
      }
    }
  }

  void exchange(const T* send, const std::vector<int>& scounts, const std::vector<int>& sdispls, T* recv,
                const std::vector<int>& rcounts, const std::vector<int>& rdispls) {
    // MPI reads the buffers from the host side: they must be complete (a
    // stream-ordered NCCL exchange follows the kernels on the device)
    if (!rows_exchange_->stream_ordered()) Kokkos::fence();
    timed([&] {
      rows_exchange_->alltoallv(send, scounts.data(), sdispls.data(), recv, rcounts.data(), rdispls.data());
    });
    for (int p = 0; p < P_; ++p) bytes_ += (double)scounts[p] * sizeof(T);
  }

  // expert_to_source[i] = row in the source-major receive order of the i-th
  // row in expert-major order (local expert, then source rank).
  void build_regroup_map() {
    std::vector<long> source_offset((std::size_t)P_ * El_);
    long off = 0;
    for (int p = 0; p < P_; ++p)
      for (int e = 0; e < El_; ++e) {
        source_offset[(std::size_t)p * El_ + e] = off;
        off += recv_expert_counts_[(std::size_t)p * El_ + e];
      }
    rows_ = off;
    long i = 0;
    for (int e = 0; e < El_; ++e) {
      tokens_per_expert_[e] = 0;
      for (int p = 0; p < P_; ++p) {
        const int n = recv_expert_counts_[(std::size_t)p * El_ + e];
        for (int r = 0; r < n; ++r) map_host_(i++) = static_cast<int>(source_offset[(std::size_t)p * El_ + e] + r);
        tokens_per_expert_[e] += n;
      }
    }
    Kokkos::deep_copy(Kokkos::subview(expert_to_source_, std::make_pair(0L, rows_)),
                      Kokkos::subview(map_host_, std::make_pair(0L, rows_)));
  }

  LocalTokenDispatcher<T> local_;
  MPI_Comm comm_;
  std::unique_ptr<RowExchange<T>> rows_exchange_;
  int P_ = 1, C_, E_, El_ = 0;
  long rows_ = 0, capacity_rows_ = 0;
  DeviceBuffer<T> input_, output_, input_grad_, output_grad_, staging_;
  DeviceBuffer<int> expert_to_source_;
  typename DeviceBuffer<int>::host_mirror_type map_host_;
  std::vector<int> tokens_per_expert_, send_expert_counts_, recv_expert_counts_;
  std::vector<int> send_rows_, recv_rows_, send_counts_, recv_counts_, send_displs_, recv_displs_;
  double seconds_ = 0, bytes_ = 0;
};

}  // namespace fulcrum
