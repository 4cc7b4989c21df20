// Collectives of the training step at 1, 2 and 4 ranks: the chunked in-place
// sum (allreduce_sum, model/expert_parallel.hpp) that keeps MPI's int counts
// from overflowing past 2^31 gradient elements gives exactly one MPI_Allreduce.
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "model/expert_parallel.hpp"

using fulcrum::allreduce_sum;

namespace {
std::vector<double> rank_values(int rank, int n) {
  std::vector<double> v(n);
  for (int i = 0; i < n; ++i) v[i] = 0.5 * i + 1000.0 * rank + 1.0 / (i + 1);
  return v;
}
}  // namespace

TEST(Collectives, ChunkedSumEqualsOneAllreduce) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int n : {0, 1, 6, 7, 8, 1000}) {
    std::vector<double> want = rank_values(rank, n);
    MPI_Allreduce(MPI_IN_PLACE, want.data(), n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    for (long long chunk : {1LL, 7LL, 1LL << 30}) {
      std::vector<double> got = rank_values(rank, n);
      allreduce_sum(got.data(), n, MPI_COMM_WORLD, chunk);
      EXPECT_EQ(got, want) << "n " << n << " chunk " << chunk << " ranks " << size;
    }
  }
  std::vector<float> f(9, 1.0f + rank);
  allreduce_sum(f.data(), 9, MPI_COMM_WORLD, 4);
  EXPECT_EQ(f[8], static_cast<float>(size * (size + 1) / 2));
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& l = ::testing::UnitTest::GetInstance()->listeners();
    delete l.Release(l.default_result_printer());
  }
  int rc = RUN_ALL_TESTS(), worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
