// row_exchange.hpp: how token rows travel between the ranks of an expert-
// parallel group once the per-peer counts are known (Megatron-Core's
// all-to-all backends). The token dispatcher owns counts and permutations;
// a RowExchange only moves contiguous blocks of rows.
#pragma once

#include <mpi.h>

#include "model/expert_parallel.hpp"

namespace fulcrum {

template <class T>
class RowExchange {
 public:
  virtual ~RowExchange() = default;
  // Counts and displacements in elements of T, one per peer of the group.
  virtual void alltoallv(const T* send, const int* send_counts, const int* send_displs, T* recv,
                         const int* recv_counts, const int* recv_displs) = 0;
  // True when the exchange is enqueued on the kernels' stream (NCCL): the
  // caller need not wait for the device before it, nor after it.
  virtual bool stream_ordered() const { return false; }
};

// MPI_Alltoallv on the group's communicator (device buffers need a
// CUDA-aware MPI; use the NCCL exchange on GPUs).
template <class T>
class MpiRowExchange : public RowExchange<T> {
 public:
  explicit MpiRowExchange(MPI_Comm comm) : comm_(comm) {}
  void alltoallv(const T* send, const int* sc, const int* sd, T* recv, const int* rc, const int* rd) override {
    MPI_Alltoallv(send, sc, sd, mpi_datatype<T>(), recv, rc, rd, mpi_datatype<T>(), comm_);
  }

 private:
  MPI_Comm comm_;
};

}  // namespace fulcrum
