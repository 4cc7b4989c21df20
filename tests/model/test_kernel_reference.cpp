// Rewritten kernels (src/model/layers.hpp) against their previous, simpler
// implementations (reference_kernels.hpp) in double precision on odd shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "model/layers.hpp"
#include "reference_kernels.hpp"
#include "test_helpers.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {
void expect_close(const std::vector<double>& a, const std::vector<double>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-13 * (1 + std::abs(b[i]))) << what << " at " << i;
}
}  // namespace

TEST(KernelReference, RopePermuteBothDirections) {
  const int shapes[][4] = {{1, 1, 1, 2}, {2, 7, 3, 6}, {3, 33, 5, 16}};  // B, T, H, hd
  for (const auto& sh : shapes)
    for (bool rotate : {true, false}) {
      const int B = sh[0], T = sh[1], H = sh[2], hd = sh[3];
      const long n = (long)B * T * H * hd;
      DeviceBuffer<double> cos_t, sin_t;
      rope_tables<double>(cos_t, sin_t, T, hd, 10000.0);
      auto x = to_device(random_vector(n, 11));
      DeviceBuffer<double> a("a", n), b("b", n);
      rope_permute_forward<double>(a.data(), x.data(), cos_t.data(), sin_t.data(), B, T, H, hd, rotate);
      reference::rope_permute_forward_reference<double>(b.data(), x.data(), cos_t.data(), sin_t.data(), B, T, H, hd,
                                                        rotate);
      expect_close(to_host(a.data(), n), to_host(b.data(), n), "rope forward");
      rope_permute_backward<double>(a.data(), x.data(), cos_t.data(), sin_t.data(), B, T, H, hd, rotate);
      reference::rope_permute_backward_reference<double>(b.data(), x.data(), cos_t.data(), sin_t.data(), B, T, H,
                                                         hd, rotate);
      expect_close(to_host(a.data(), n), to_host(b.data(), n), "rope backward");
    }
}

TEST(KernelReference, RmsnormBackward) {
  for (int N : {1, 63, 64, 65, 200})
    for (int C : {1, 7, 48}) {
      auto x = to_device(random_vector((long)N * C, 3)), dy = to_device(random_vector((long)N * C, 4));
      auto w = to_device(random_vector(C, 5, 0.5));
      DeviceBuffer<double> out("out", (long)N * C), rstd("rstd", N);
      rmsnorm_forward<double>(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
      // both accumulate (+=) into non-zero gradients
      auto dx_a = to_device(random_vector((long)N * C, 6)), dx_b = to_device(random_vector((long)N * C, 6));
      auto dw_a = to_device(random_vector(C, 7)), dw_b = to_device(random_vector(C, 7));
      DeviceBuffer<double> partial("partial", rmsnorm_backward_scratch(N, C));
      rmsnorm_backward<double>(dx_a.data(), dw_a.data(), partial.data(), dy.data(), x.data(), w.data(), rstd.data(),
                               N, C);
      reference::rmsnorm_backward_reference<double>(dx_b.data(), dw_b.data(), dy.data(), x.data(), w.data(),
                                                    rstd.data(), N, C);
      expect_close(to_host(dx_a.data(), (long)N * C), to_host(dx_b.data(), (long)N * C), "rmsnorm dx");
      expect_close(to_host(dw_a.data(), C), to_host(dw_b.data(), C), "rmsnorm dw");
    }
}

TEST(KernelReference, FastExpMatchesLibm) {
  // float: within 2 ulp of expf wherever expf is a normal number; limits as expf
  double worst = 0;
  for (float x = -87.0f; x < 88.5f; x += 0.000917f) {
    const float want = std::exp(x);
    worst = std::max(worst, std::abs((double)math::fast_exp(x) - want) / want);
  }
  EXPECT_LT(worst, 2.5 * 5.97e-8);
  EXPECT_EQ(math::fast_exp(0.0f), 1.0f);
  EXPECT_EQ(math::fast_exp(-200.0f), 0.0f);
  EXPECT_TRUE(std::isinf(math::fast_exp(200.0f)));
  EXPECT_TRUE(std::isnan(math::fast_exp(std::nanf(""))));
  // double: the library exp, bit for bit
  EXPECT_EQ(math::fast_exp(0.3), std::exp(0.3));
}
