// Builds the NCCL code (the row exchange, the shared per-group communicator
// and its chunked all-reduce used for the gradients) against the CUDA
// toolkit and NCCL where they are installed, even in a CPU (Serial Kokkos)
// build, so the GPU path keeps compiling. It is a build check only: running
// it needs a GPU.
#include "model/nccl_communicator.hpp"
#include "model/nccl_row_exchange.hpp"
#include "train/mpi_device_check.hpp"
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  if (argc > 5) {  // never taken: only instantiate
    fulcrum::NcclRowExchange<float> f(MPI_COMM_WORLD, nullptr);
    fulcrum::NcclRowExchange<double> d(MPI_COMM_WORLD, nullptr);
    int c[1] = {0};
    f.alltoallv(nullptr, c, c, nullptr, c, c);
    d.alltoallv(nullptr, c, c, nullptr, c, c);
    auto comm = fulcrum::NcclCommunicator::of(MPI_COMM_WORLD, nullptr);
    comm->allreduce_sum(static_cast<float*>(nullptr), 3LL << 31);  // 3 chunks of 2^30
    comm->allreduce_sum(static_cast<double*>(nullptr), 5, 2);
    comm->synchronize();
    (void)fulcrum::mpi_cuda_support();
  }
  MPI_Finalize();
  return 0;
}
