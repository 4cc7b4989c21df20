// nccl_row_exchange.hpp: the row exchange as grouped ncclSend/ncclRecv on
// the device stream (CUDA builds with NCCL; FULCRUM_ENABLE_NCCL). It uses
// the EP group's shared NCCL communicator (nccl_communicator.hpp): every MoE
// layer's exchange goes through the same one.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "model/nccl_communicator.hpp"
#include "model/row_exchange.hpp"

namespace fulcrum {

template <class T>
class NcclRowExchange : public RowExchange<T> {
 public:
  // stream: the CUDA stream the model's kernels run on (Kokkos' default).
  NcclRowExchange(MPI_Comm comm, cudaStream_t stream) : comm_(NcclCommunicator::of(comm, stream)) {}

  void alltoallv(const T* send, const int* sc, const int* sd, T* recv, const int* rc, const int* rd) override {
    const ncclComm_t comm = comm_->get();
    const cudaStream_t stream = comm_->stream();
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < comm_->size(); ++p) {
      if (sc[p] > 0) nccl_check(ncclSend(send + sd[p], sc[p], nccl_datatype<T>(), p, comm, stream), "ncclSend");
      if (rc[p] > 0) nccl_check(ncclRecv(recv + rd[p], rc[p], nccl_datatype<T>(), p, comm, stream), "ncclRecv");
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    // no wait: the kernels that read recv run later on the same stream, and
    // the host reads nothing the exchange writes (the split counts come
    // from MPI_Alltoall on the host before it)
  }
  bool stream_ordered() const override { return true; }

 private:
  std::shared_ptr<NcclCommunicator> comm_;
};

}  // namespace fulcrum
