// Small host<->device helpers and a finite-difference driver for the model tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "model/kokkos_types.hpp"

namespace fulcrum::test {

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& host, const char* label = "test::buffer") {
  DeviceBuffer<T> d(std::string(label), host.size());
  auto h = Kokkos::create_mirror_view(d);
  for (std::size_t i = 0; i < host.size(); ++i) h(i) = host[i];
  Kokkos::deep_copy(d, h);
  return d;
}

template <class T>
std::vector<T> to_host(const T* device, std::size_t n) {
  std::vector<T> out(n);
  Kokkos::View<T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(out.data(), n);
  Kokkos::View<const T*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> d(device, n);
  Kokkos::deep_copy(h, d);
  return out;
}

template <class T>
void copy_to_device(T* device, const std::vector<T>& host) {
  Kokkos::View<const T*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(host.data(), host.size());
  Kokkos::View<T*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> d(device, host.size());
  Kokkos::deep_copy(d, h);
}

inline std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// Central finite differences of loss() w.r.t. x[i] for every i (or `samples`
// evenly spread entries), compared with analytic[i]. loss() must read x.
inline void expect_gradient_matches(const char* what, std::vector<double>& x,
                                    const std::vector<double>& analytic,
                                    const std::function<double()>& loss,
                                    double tol = 1e-6, std::size_t samples = 40,
                                    double eps = 1e-5) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const std::size_t stride = x.size() <= samples ? 1 : x.size() / samples;
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); i += stride) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double lp = loss();
    x[i] = saved - eps;
    const double lm = loss();
    x[i] = saved;
    const double numeric = (lp - lm) / (2 * eps);
    const double err = std::abs(numeric - analytic[i]) /
                       std::max(1e-4, std::abs(numeric) + std::abs(analytic[i]));
    worst = std::max(worst, err);
    EXPECT_LT(err, tol) << what << "[" << i << "]: numeric " << numeric << " analytic " << analytic[i];
  }
  ::testing::Test::RecordProperty(what, std::to_string(worst));
}

}  // namespace fulcrum::test
