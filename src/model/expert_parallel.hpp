// expert_parallel.hpp: process groups for expert parallelism (EP) and data
// parallelism (DP). World W = DP x EP; rank r has ep_rank = r % EP and
// dp_rank = r / EP. An EP group (same dp_rank) shards the routed experts and
// exchanges tokens; a shard group (same ep_rank) holds replicas of one shard.
#pragma once

#include <mpi.h>

namespace fulcrum {

struct ParallelGroups {
  int world_size = 1, world_rank = 0;
  int ep_size = 1, ep_rank = 0;
  int dp_size = 1, dp_rank = 0;
  MPI_Comm world = MPI_COMM_SELF;
  MPI_Comm ep = MPI_COMM_SELF;     // ranks of my EP group (token exchange)
  MPI_Comm shard = MPI_COMM_SELF;  // ranks holding my expert shard (gradient all-reduce)

  // Splits `world` into groups; expert_parallel must divide its size.
  static ParallelGroups create(MPI_Comm world, int expert_parallel) {
    ParallelGroups g;
    g.world = world;
    MPI_Comm_size(world, &g.world_size);
    MPI_Comm_rank(world, &g.world_rank);
    g.ep_size = expert_parallel;
    g.ep_rank = g.world_rank % expert_parallel;
    g.dp_size = g.world_size / expert_parallel;
    g.dp_rank = g.world_rank / expert_parallel;
    MPI_Comm_split(world, g.dp_rank, g.ep_rank, &g.ep);
    MPI_Comm_split(world, g.ep_rank, g.dp_rank, &g.shard);
    return g;
  }
  void free() {
    if (ep != MPI_COMM_SELF && ep != MPI_COMM_NULL) MPI_Comm_free(&ep);
    if (shard != MPI_COMM_SELF && shard != MPI_COMM_NULL) MPI_Comm_free(&shard);
    ep = shard = MPI_COMM_SELF;
  }
};

template <class T>
inline MPI_Datatype mpi_datatype();
template <>
inline MPI_Datatype mpi_datatype<float>() { return MPI_FLOAT; }
template <>
inline MPI_Datatype mpi_datatype<double>() { return MPI_DOUBLE; }

// In-place sum over comm of n elements, n of any size: MPI counts are int, so
// a buffer past 2^31 elements (a 2B-parameter model's gradients) goes in
// chunks of at most max_chunk elements.
template <class T>
void allreduce_sum(T* data, long long n, MPI_Comm comm, long long max_chunk = 1LL << 30) {
  for (long long off = 0; off < n; off += max_chunk) {
    const long long len = n - off < max_chunk ? n - off : max_chunk;
    MPI_Allreduce(MPI_IN_PLACE, data + off, static_cast<int>(len), mpi_datatype<T>(), MPI_SUM, comm);
  }
}

}  // namespace fulcrum
