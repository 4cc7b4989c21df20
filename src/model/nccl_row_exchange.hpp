// nccl_row_exchange.hpp: the row exchange as grouped ncclSend/ncclRecv on
// the device stream (CUDA builds with NCCL; FULCRUM_ENABLE_NCCL). The NCCL
// communicator is created from the group's MPI communicator: rank 0 makes
// the unique id, MPI_Bcast shares it.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "model/row_exchange.hpp"

namespace fulcrum {

template <class T>
inline ncclDataType_t nccl_datatype();
template <>
inline ncclDataType_t nccl_datatype<float>() { return ncclFloat; }
template <>
inline ncclDataType_t nccl_datatype<double>() { return ncclDouble; }

inline void nccl_check(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) throw std::runtime_error(std::string("NCCL ") + what + ": " + ncclGetErrorString(rc));
}

template <class T>
class NcclRowExchange : public RowExchange<T> {
 public:
  // stream: the CUDA stream the model's kernels run on (Kokkos' default).
  NcclRowExchange(MPI_Comm comm, cudaStream_t stream) : stream_(stream) {
    MPI_Comm_size(comm, &size_);
    MPI_Comm_rank(comm, &rank_);
    ncclUniqueId id;
    if (rank_ == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm);
    nccl_check(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
  }
  ~NcclRowExchange() override { ncclCommDestroy(comm_); }
  NcclRowExchange(const NcclRowExchange&) = delete;
  NcclRowExchange& operator=(const NcclRowExchange&) = delete;

  void alltoallv(const T* send, const int* sc, const int* sd, T* recv, const int* rc, const int* rd) override {
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < size_; ++p) {
      if (sc[p] > 0) nccl_check(ncclSend(send + sd[p], sc[p], nccl_datatype<T>(), p, comm_, stream_), "ncclSend");
      if (rc[p] > 0) nccl_check(ncclRecv(recv + rd[p], rc[p], nccl_datatype<T>(), p, comm_, stream_), "ncclRecv");
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    // the regroup kernels that follow run on the same stream, but the host
    // reads split counts next: finish the exchange here
    if (cudaStreamSynchronize(stream_) != cudaSuccess) throw std::runtime_error("NCCL exchange: stream failed");
  }

 private:
  ncclComm_t comm_;
  cudaStream_t stream_;
  int size_ = 1, rank_ = 0;
};

}  // namespace fulcrum
