// nccl_communicator.hpp: NCCL communicators of the process groups (CUDA
// builds with NCCL; FULCRUM_ENABLE_NCCL). One communicator per MPI process
// group, shared by everything that talks within that group (every MoE
// layer's token exchange on the EP group, the gradient sums on the world and
// shard groups): creating one per user would multiply NCCL's setup time and
// its per-communicator device buffers by the number of MoE layers.
// Kokkos-free, so tests/parallel/nccl_exchange_compile_check builds it
// against the CUDA and NCCL headers in any build.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>

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

class NcclCommunicator {
 public:
  // Collective over `comm`: rank 0 makes the unique id, MPI_Bcast shares it.
  // stream: the CUDA stream the model's kernels run on (Kokkos' default), so
  // collectives are ordered after the kernels that produce their buffers
  // without a host wait.
  NcclCommunicator(MPI_Comm comm, cudaStream_t stream) : stream_(stream) {
    MPI_Comm_size(comm, &size_);
    MPI_Comm_rank(comm, &rank_);
    ncclUniqueId id;
    if (rank_ == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm);
    nccl_check(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
  }
  ~NcclCommunicator() { ncclCommDestroy(comm_); }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  ncclComm_t get() const { return comm_; }
  cudaStream_t stream() const { return stream_; }
  int size() const { return size_; }
  int rank() const { return rank_; }

  // In-place sum of n device elements over the group, enqueued on the
  // stream (no host wait). Counts are size_t for NCCL, 64-bit here; chunks
  // of at most max_chunk elements keep each call's count bounded (as the MPI
  // path's int counts must be) and let NCCL pipeline a large buffer.
  template <class T>
  void allreduce_sum(T* data, long long n, long long max_chunk = 1LL << 30) {
    if (max_chunk <= 0) throw std::invalid_argument("NCCL all-reduce: chunk must be positive");
    for (long long off = 0; off < n; off += max_chunk) {
      const long long len = n - off < max_chunk ? n - off : max_chunk;
      nccl_check(ncclAllReduce(data + off, data + off, static_cast<size_t>(len), nccl_datatype<T>(), ncclSum,
                               comm_, stream_),
                 "ncclAllReduce");
    }
  }

  // Waits for this group's enqueued collectives (and everything before them
  // on the stream).
  void synchronize() const {
    if (cudaStreamSynchronize(stream_) != cudaSuccess) throw std::runtime_error("NCCL: stream failed");
  }

  // The communicator of the MPI group `comm` on `stream`, created (a
  // collective over comm) on first use and shared while anyone holds it.
  static std::shared_ptr<NcclCommunicator> of(MPI_Comm comm, cudaStream_t stream) {
    auto& cache = registry();
    auto it = cache.find(comm);
    if (it != cache.end())
      if (auto shared = it->second.lock()) {
        if (shared->stream_ != stream)
          throw std::logic_error("NCCL communicator requested on a second CUDA stream for one MPI group");
        return shared;
      }
    auto made = std::make_shared<NcclCommunicator>(comm, stream);
    cache[comm] = made;
    return made;
  }

 private:
  static std::map<MPI_Comm, std::weak_ptr<NcclCommunicator>>& registry() {
    static std::map<MPI_Comm, std::weak_ptr<NcclCommunicator>> cache;
    return cache;
  }

  ncclComm_t comm_{};
  cudaStream_t stream_;
  int size_ = 1, rank_ = 0;
};

}  // namespace fulcrum
