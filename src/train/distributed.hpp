// distributed.hpp: the collective steps of data + expert parallel training.
#pragma once

#include <cmath>

#include "model/expert_parallel.hpp"
#include "model/transformer.hpp"
#include "train/adamw.hpp"

namespace fulcrum {

// Sums gradients: replicated parameters over all ranks, expert shards over
// the ranks holding the same shard (parameter_layout puts the shards last).
// Returns the global gradient L2 norm, identical on every rank.
template <class T>
double reduce_gradients(Transformer<T>& model, const ParallelGroups& g) {
  T* grads = model.grads().data();
  const long total = model.num_parameters();
  const long replicated = replicated_parameter_count(model.layout());
  Kokkos::fence();
  if (g.world_size > 1) allreduce_sum(grads, replicated, g.world);
  if (g.dp_size > 1 && total > replicated) allreduce_sum(grads + replicated, total - replicated, g.shard);
  double expert_sq = AdamW<T>::grad_sq_sum(model.grads(), replicated, total);  // EP ranks hold distinct experts
  if (g.ep_size > 1) MPI_Allreduce(MPI_IN_PLACE, &expert_sq, 1, MPI_DOUBLE, MPI_SUM, g.ep);
  return std::sqrt(AdamW<T>::grad_sq_sum(model.grads(), 0, replicated) + expert_sq);
}

// Mean of a per-rank value over all ranks.
inline double mean_over_ranks(double value, MPI_Comm world) {
  int n = 1;
  MPI_Comm_size(world, &n);
  if (n == 1) return value;
  MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, world);
  return value / n;
}

}  // namespace fulcrum
