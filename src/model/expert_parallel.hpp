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

}  // namespace fulcrum
