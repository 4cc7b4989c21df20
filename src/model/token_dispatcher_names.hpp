// token_dispatcher_names.hpp: the names of the token dispatcher registry
// (token_dispatcher.hpp), without Kokkos or MPI, so that the deck schema
// takes the allowed values of [parallel] dispatcher from the registry.
#pragma once

#include <string>
#include <vector>

namespace fulcrum {

// Every dispatcher the registry knows, compiled in or not: "local" (EP = 1),
// "mpi_alltoall", and "nccl" (CUDA builds with NCCL). A deck may name any of
// them; the trainer refuses one that is not in its build
// (token_dispatcher_names() lists those).
inline std::vector<std::string> known_token_dispatcher_names() { return {"local", "mpi_alltoall", "nccl"}; }

}  // namespace fulcrum
