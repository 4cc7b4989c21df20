// mpi_device_check.hpp: may MPI be handed device memory? A startup check
// for multi-rank GPU runs (doc/running.md, "CUDA build"): an MPI that is not
// CUDA-aware crashes, or silently reads garbage, when given a device pointer,
// so such a run is refused before it starts (bad input, exit code 2).
// Kokkos-free: the logic is unit-tested in CPU builds.
#pragma once

#include <mpi.h>

#if defined(__has_include)
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI's extensions: MPIX_Query_cuda_support
#endif
#endif

#include <cstdlib>
#include <string>

namespace fulcrum {

enum class MpiCudaSupport { Yes, No, Unknown };

inline const char* mpi_cuda_support_name(MpiCudaSupport s) {
  return s == MpiCudaSupport::Yes ? "CUDA-aware" : s == MpiCudaSupport::No ? "not CUDA-aware" : "of unknown CUDA support";
}

// The environment variable FULCRUM_MPI_CUDA_AWARE=1 (or 0) overrides the
// query, for MPIs that cannot be asked (MPICH, Cray MPICH, MVAPICH2 read
// their own settings). Otherwise Open MPI answers: built with CUDA
// (MPIX_CUDA_AWARE_SUPPORT) and running with it (MPIX_Query_cuda_support());
// other MPIs: unknown. Call after MPI_Init.
inline MpiCudaSupport mpi_cuda_support() {
  if (const char* env = std::getenv("FULCRUM_MPI_CUDA_AWARE")) {
    const std::string v = env;
    if (v == "1" || v == "yes" || v == "true") return MpiCudaSupport::Yes;
    if (v == "0" || v == "no" || v == "false") return MpiCudaSupport::No;
  }
#if defined(OMPI_HAVE_MPI_EXT_CUDA) && OMPI_HAVE_MPI_EXT_CUDA
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1 ? MpiCudaSupport::Yes : MpiCudaSupport::No;
#else
  return MpiCudaSupport::No;  // this Open MPI was built without CUDA
#endif
#else
  return MpiCudaSupport::Unknown;
#endif
}

// What a run hands to MPI. device_memory: Kokkos' memory space is not host
// memory (a GPU build). nccl: gradients and step statistics are summed by
// NCCL (FULCRUM_ENABLE_NCCL) rather than MPI.
struct MpiDeviceUse {
  bool device_memory = false;
  bool nccl = false;
  int world_size = 1;
  int expert_parallel = 1;
  std::string dispatcher = "local";
};

// Empty when the run may start; else why not (one sentence, names what to
// change). Host builds never pass device memory to MPI; in device builds MPI
// touches it for the gradient sums of a multi-rank run without NCCL and for
// the token exchange of the mpi_alltoall dispatcher at expert_parallel > 1.
inline std::string mpi_device_refusal(const MpiDeviceUse& use, MpiCudaSupport support) {
  if (!use.device_memory || use.world_size <= 1 || support == MpiCudaSupport::Yes) return "";
  std::string what;
  if (!use.nccl) what = "the gradient all-reduce (this build has no NCCL: FULCRUM_ENABLE_NCCL)";
  if (use.expert_parallel > 1 && use.dispatcher == "mpi_alltoall")
    what += std::string(what.empty() ? "" : " and ") + "the token exchange (dispatcher = 'mpi_alltoall')";
  if (what.empty()) return "";
  return "a " + std::to_string(use.world_size) + "-rank GPU run would pass device memory to MPI in " + what +
         ", but this MPI is " + mpi_cuda_support_name(support) +
         ": use a CUDA-aware MPI, an NCCL build with dispatcher = 'nccl', or set FULCRUM_MPI_CUDA_AWARE=1 "
         "if this MPI is CUDA-aware but cannot be queried";
}

}  // namespace fulcrum
