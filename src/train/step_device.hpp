// step_device.hpp: the collective and bookkeeping parts of a training step
// that stay in device memory: sums over process groups (NCCL in NCCL builds,
// MPI otherwise), the gradient all-reduce with the global norm and clip
// scale, and the per-step loss history read at log steps.
#pragma once

#include <mpi.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <vector>

#include "model/expert_parallel.hpp"
#include "model/transformer.hpp"
#include "train/adamw.hpp"
#ifdef FULCRUM_HAVE_NCCL
#include "model/nccl_communicator.hpp"
#endif

namespace fulcrum {

// In-place sums of device buffers over a process group. NCCL builds: one
// shared NCCL communicator per group, enqueued on the kernels' stream (no
// host wait). Otherwise MPI, after a fence (MPI reads the buffer from the
// host side; in a GPU build that needs a CUDA-aware MPI, checked at startup:
// mpi_device_check.hpp).
class GroupSums {
 public:
  explicit GroupSums(const ParallelGroups& g) {
#ifdef FULCRUM_HAVE_NCCL
    // in the same order on every rank: creating a communicator is collective
    for (MPI_Comm c : {g.world, g.shard, g.ep}) {
      int n = 1;
      MPI_Comm_size(c, &n);
      if (n > 1 && !comms_.count(c)) comms_[c] = NcclCommunicator::of(c, ExecSpace().cuda_stream());
    }
#else
    (void)g;
#endif
  }

  template <class T>
  void sum(T* device_data, long long n, MPI_Comm comm) {
    int size = 1;
    MPI_Comm_size(comm, &size);
    if (size == 1 || n == 0) return;
#ifdef FULCRUM_HAVE_NCCL
    comms_.at(comm)->allreduce_sum(device_data, n);
#else
    Kokkos::fence();
    allreduce_sum(device_data, n, comm);
#endif
  }

  static constexpr bool uses_nccl() {
#ifdef FULCRUM_HAVE_NCCL
    return true;
#else
    return false;
#endif
  }

 private:
#ifdef FULCRUM_HAVE_NCCL
  std::map<MPI_Comm, std::shared_ptr<NcclCommunicator>> comms_;
#endif
};

// Gradient sums over the ranks, then the global gradient norm and the clip
// scale, in device memory: norm_scale() = [norm, scale] for
// AdamW::step_device. Replicated parameters are summed over all ranks, expert
// shards over the ranks holding the same shard (parameter_layout puts the
// shards last); the norm adds the expert shards' squares over the EP group.
template <class T>
class GradientReduction {
 public:
  GradientReduction() : sq_replicated_("grad::sq_replicated"), sq_expert_("grad::sq_expert"),
                        norm_scale_("grad::norm_scale", 2) {}

  // Sums the gradients over the ranks (the step's "exchange" phase).
  void sum_over_ranks(Transformer<T>& model, const ParallelGroups& g, GroupSums& sums) {
    T* grads = model.grads().data();
    const long total = model.num_parameters();
    const long replicated = replicated_parameter_count(model.layout());
    if (g.world_size > 1) sums.sum(grads, replicated, g.world);
    if (g.dp_size > 1 && total > replicated) sums.sum(grads + replicated, total - replicated, g.shard);
  }
  // The global norm of the summed gradients (identical on every rank) and
  // the clip scale, into norm_scale().
  void norm_and_clip_scale(Transformer<T>& model, const ParallelGroups& g, GroupSums& sums, double clip) {
    const long total = model.num_parameters();
    const long replicated = replicated_parameter_count(model.layout());
    AdamW<T>::grad_sq_sum_device(model.grads(), replicated, total, sq_expert_);  // EP ranks hold distinct experts
    if (g.ep_size > 1) sums.sum(sq_expert_.data(), 1, g.ep);
    AdamW<T>::grad_sq_sum_device(model.grads(), 0, replicated, sq_replicated_);
    AdamW<T>::clip_scale_device(sq_replicated_, sq_expert_, clip, norm_scale_.data());
  }
  // [global gradient norm, clip scale] of the last reduce (device).
  const double* norm_scale() const { return norm_scale_.data(); }

 private:
  Kokkos::View<double, MemSpace> sq_replicated_, sq_expert_;
  DeviceBuffer<double> norm_scale_;
};

// The statistics of the steps since the last log step, one row per step in
// device memory: [lm, aux, z] (this rank's means over the step's
// micro-batches; summed over the ranks when read) and the gradient norm.
class StepHistory {
 public:
  static constexpr int kLosses = 3;
  explicit StepHistory(int capacity)
      : capacity_(capacity), losses_("history::losses", (long)capacity * kLosses),
        norms_("history::grad_norm", capacity) {}

  int capacity() const { return capacity_; }
  int rows() const { return rows_; }

  // Starts the next step's row (zeroed).
  void begin_step() {
    if (rows_ == capacity_) throw std::logic_error("StepHistory: more steps than its capacity between reads");
    double* row = losses_.data() + (long)rows_ * kLosses;
    Kokkos::parallel_for("history::begin_step", RangePolicy(0, kLosses), KOKKOS_LAMBDA(const int i) { row[i] = 0; });
  }
  // row += forward losses / micro_batches (model.device_losses(): [lm, aux, z])
  void add_micro_batch(const DeviceBuffer<double>& forward_losses, int micro_batches) {
    double* row = losses_.data() + (long)rows_ * kLosses;
    const double* l = forward_losses.data();
    Kokkos::parallel_for("history::add_micro_batch", RangePolicy(0, kLosses), KOKKOS_LAMBDA(const int i) {
      row[i] += l[i] / micro_batches;
    });
  }
  // Ends the step: its gradient norm (norm_scale[0]).
  void end_step(const double* norm_scale) {
    double* n = norms_.data() + rows_;
    Kokkos::parallel_for("history::end_step", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) { *n = norm_scale[0]; });
    ++rows_;
  }

  struct Row {
    double lm, aux, z, grad_norm;
  };
  // Every row since the last read, losses averaged over the ranks of world
  // (collective); clears the history. The one host wait of the step loop.
  std::vector<Row> read(GroupSums& sums, MPI_Comm world) {
    std::vector<Row> out;
    if (rows_ == 0) return out;
    int W = 1;
    MPI_Comm_size(world, &W);
    sums.sum(losses_.data(), (long long)rows_ * kLosses, world);
    std::vector<double> l((std::size_t)rows_ * kLosses), n((std::size_t)rows_);
    using Host = Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
    Kokkos::deep_copy(Host(l.data(), l.size()), Kokkos::subview(losses_, std::make_pair(0L, (long)l.size())));
    Kokkos::deep_copy(Host(n.data(), n.size()), Kokkos::subview(norms_, std::make_pair(0L, (long)n.size())));
    for (int r = 0; r < rows_; ++r) {
      const double* v = l.data() + (std::size_t)r * kLosses;
      // as the per-step MPI mean before: the sum over ranks / W (W = 1: unchanged)
      out.push_back(W > 1 ? Row{v[0] / W, v[1] / W, v[2] / W, n[r]} : Row{v[0], v[1], v[2], n[r]});
    }
    rows_ = 0;
    return out;
  }

 private:
  int capacity_, rows_ = 0;
  DeviceBuffer<double> losses_, norms_;
};

}  // namespace fulcrum
