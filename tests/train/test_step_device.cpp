// The step loop's device-side pieces (src/train/step_device.hpp, adamw.hpp)
// against host computations, at 1 and 2 ranks: the gradient norm and clip
// scale computed on the device, AdamW reading that scale from device memory,
// the per-step loss history read at log steps (mean over micro-batches and
// ranks), and sums over a process group.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <vector>

#include "train/adamw.hpp"
#include "train/mpi_device_check.hpp"
#include "train/step_device.hpp"

using namespace fulcrum;

namespace {

template <class T>
using HostView = Kokkos::View<T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

std::vector<float> values(long n, double amplitude, std::uint64_t seed) {
  std::vector<float> v(n);
  for (long i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    v[i] = static_cast<float>(amplitude * (((seed >> 11) * (1.0 / 9007199254740992.0)) - 0.5));
  }
  return v;
}

DeviceBuffer<float> upload(const std::vector<float>& h) {
  DeviceBuffer<float> d("test::grads", h.size());
  Kokkos::deep_copy(d, HostView<const float>(h.data(), h.size()));
  return d;
}

// [norm, scale] from the device kernels for grads split at `split`.
std::vector<double> device_norm_scale(const DeviceBuffer<float>& g, long split, double clip) {
  Kokkos::View<double, MemSpace> a("a"), b("b");
  DeviceBuffer<double> out("out", 2);
  AdamW<float>::grad_sq_sum_device(g, 0, split, a);
  AdamW<float>::grad_sq_sum_device(g, split, -1, b);
  AdamW<float>::clip_scale_device(a, b, clip, out.data());
  std::vector<double> h(2);
  Kokkos::deep_copy(HostView<double>(h.data(), 2), out);
  return h;
}

}  // namespace

TEST(StepDevice, ClipScaleMatchesHostComputation) {
  const long n = 1000, split = 613;
  for (double amplitude : {1e-3, 1.0, 40.0}) {
    const std::vector<float> h = values(n, amplitude, 11);
    const DeviceBuffer<float> g = upload(h);
    // host: the two parts' sums of squares in double, in index order
    double sa = 0, sb = 0;
    for (long i = 0; i < split; ++i) sa += (double)h[i] * (double)h[i];
    for (long i = split; i < n; ++i) sb += (double)h[i] * (double)h[i];
    const double norm = std::sqrt(sa + sb);
    for (double clip : {0.0, 1.0, 1e9}) {
      const std::vector<double> d = device_norm_scale(g, split, clip);
      EXPECT_NEAR(d[0], norm, 1e-13 * norm) << amplitude;
      const double want = AdamW<float>::clip_scale(norm, clip);
      EXPECT_NEAR(d[1], want, 1e-13) << "amplitude " << amplitude << " clip " << clip;
      if (clip <= 0 || norm < clip) EXPECT_EQ(d[1], 1.0);
      else EXPECT_LT(d[1], 1.0);
    }
  }
  // a non-finite gradient gives a non-finite norm (divergence detection)
  std::vector<float> h = values(n, 1.0, 12);
  h[700] = std::nanf("");
  EXPECT_TRUE(std::isnan(device_norm_scale(upload(h), split, 1.0)[0]));
}

TEST(StepDevice, AdamWStepWithDeviceScaleEqualsHostScale) {
  const long n = 257;
  std::vector<ParameterTensor> layout(1);
  layout[0].name = "w";
  layout[0].offset = 0;
  layout[0].size = n;
  layout[0].is_matrix = true;
  const std::vector<float> p0 = values(n, 2.0, 21), g0 = values(n, 5.0, 22);
  AdamW<float> host(layout, n, {}), dev(layout, n, {});
  DeviceBuffer<float> ph = upload(p0), pd = upload(p0), g = upload(g0);
  const std::vector<double> ns = device_norm_scale(g, n / 2, 1.0);
  ASSERT_LT(ns[1], 1.0) << "the test should clip";
  DeviceBuffer<double> scale("scale", 1);
  Kokkos::deep_copy(scale, ns[1]);
  for (int t = 0; t < 3; ++t) {
    host.step(ph, g, 1e-2, ns[1]);
    dev.step_device(pd, g, 1e-2, scale.data());
  }
  std::vector<float> a(n), b(n);
  Kokkos::deep_copy(HostView<float>(a.data(), n), ph);
  Kokkos::deep_copy(HostView<float>(b.data(), n), pd);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, p0);
}

TEST(StepDevice, HistoryMeansOverMicroBatchesAndRanks) {
  int rank = 0, W = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &W);
  ParallelGroups groups = ParallelGroups::create(MPI_COMM_WORLD, 1);
  GroupSums sums(groups);
  StepHistory history(2);
  DeviceBuffer<double> forward("forward", 3), norm_scale("norm_scale", 2);
  auto set = [](DeviceBuffer<double>& d, std::vector<double> v) {
    Kokkos::deep_copy(d, HostView<const double>(v.data(), v.size()));
  };
  // step 1: micro-batches (lm, aux, z) = (4 + rank, 1, 0.5) and (2 + rank, 3, 0.5); norm 7
  history.begin_step();
  set(forward, {4.0 + rank, 1.0, 0.5});
  history.add_micro_batch(forward, 2);
  set(forward, {2.0 + rank, 3.0, 0.5});
  history.add_micro_batch(forward, 2);
  set(norm_scale, {7.0, 1.0});
  history.end_step(norm_scale.data());
  // step 2: one value per micro-batch, norm 9
  history.begin_step();
  set(forward, {1.0, 0.0, 0.25 * rank});
  history.add_micro_batch(forward, 2);
  history.add_micro_batch(forward, 2);
  set(norm_scale, {9.0, 0.5});
  history.end_step(norm_scale.data());
  EXPECT_THROW(history.begin_step(), std::logic_error) << "a third step exceeds the capacity";
  const auto rows = history.read(sums, MPI_COMM_WORLD);
  ASSERT_EQ(rows.size(), 2u);
  const double mean_rank = (W - 1) / 2.0;
  EXPECT_DOUBLE_EQ(rows[0].lm, 3.0 + mean_rank);
  EXPECT_DOUBLE_EQ(rows[0].aux, 2.0);
  EXPECT_DOUBLE_EQ(rows[0].z, 0.5);
  EXPECT_EQ(rows[0].grad_norm, 7.0);
  EXPECT_DOUBLE_EQ(rows[1].lm, 1.0);
  EXPECT_DOUBLE_EQ(rows[1].z, 0.25 * mean_rank);
  EXPECT_EQ(rows[1].grad_norm, 9.0);
  EXPECT_TRUE(history.read(sums, MPI_COMM_WORLD).empty()) << "read clears the history";
  groups.free();
}

TEST(StepDevice, GroupSumsSumOverTheWorld) {
  int rank = 0, W = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &W);
  ParallelGroups groups = ParallelGroups::create(MPI_COMM_WORLD, 1);
  GroupSums sums(groups);
  std::vector<float> h = {1.0f + rank, 2.0f, -3.0f * rank};
  DeviceBuffer<float> d = upload(h);
  sums.sum(d.data(), 3, groups.world);
  Kokkos::deep_copy(HostView<float>(h.data(), 3), d);
  EXPECT_EQ(h[0], W + W * (W - 1) / 2.0f);
  EXPECT_EQ(h[1], 2.0f * W);
  EXPECT_EQ(h[2], -3.0f * W * (W - 1) / 2.0f);
  groups.free();
}

TEST(MpiDeviceCheck, RefusesDeviceMemoryForAnMpiThatIsNotCudaAware) {
  MpiDeviceUse use;
  use.device_memory = true;
  use.world_size = 4;
  use.expert_parallel = 2;
  use.dispatcher = "mpi_alltoall";
  // without NCCL: the gradients, and the token exchange
  std::string why = mpi_device_refusal(use, MpiCudaSupport::No);
  EXPECT_NE(why.find("gradient all-reduce"), std::string::npos) << why;
  EXPECT_NE(why.find("mpi_alltoall"), std::string::npos) << why;
  EXPECT_NE(why.find("not CUDA-aware"), std::string::npos) << why;
  EXPECT_NE(mpi_device_refusal(use, MpiCudaSupport::Unknown), "");
  EXPECT_EQ(mpi_device_refusal(use, MpiCudaSupport::Yes), "");
  // NCCL build: the nccl dispatcher keeps MPI off device memory; mpi_alltoall does not
  use.nccl = true;
  EXPECT_NE(mpi_device_refusal(use, MpiCudaSupport::No).find("token exchange"), std::string::npos);
  use.dispatcher = "nccl";
  EXPECT_EQ(mpi_device_refusal(use, MpiCudaSupport::No), "");
  // one rank, or host memory: MPI is never given device memory
  use.nccl = false;
  use.world_size = 1;
  EXPECT_EQ(mpi_device_refusal(use, MpiCudaSupport::No), "");
  use.world_size = 4;
  use.device_memory = false;
  EXPECT_EQ(mpi_device_refusal(use, MpiCudaSupport::No), "");
  // this machine's Open MPI answers the query; the environment overrides it
  setenv("FULCRUM_MPI_CUDA_AWARE", "1", 1);
  EXPECT_EQ(mpi_cuda_support(), MpiCudaSupport::Yes);
  setenv("FULCRUM_MPI_CUDA_AWARE", "0", 1);
  EXPECT_EQ(mpi_cuda_support(), MpiCudaSupport::No);
  unsetenv("FULCRUM_MPI_CUDA_AWARE");
}
