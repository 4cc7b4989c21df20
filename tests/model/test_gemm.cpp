// The gemm layer (src/model/gemm.hpp): every backend compiled into this build,
// in every precision it supports, against a naive double product on odd
// shapes, all four transpose combinations, alpha != 1, beta 0 and 1, and
// empty dimensions; the registry's messages; bf16 rounding semantics.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/gemm.hpp"
#include "model/kokkos_types.hpp"
#include "test_helpers.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {

// fp32 -> bf16 -> fp32, round to nearest even (what the backends must do to
// each operand in bf16).
float round_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  u &= 0xFFFF0000u;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

struct Case {
  char ta, tb;
  int M, N, K;
  float alpha, beta;
};

// C = alpha op(A) op(B) + beta C in double, operands optionally rounded to bf16.
std::vector<double> naive(const Case& c, const std::vector<float>& A, const std::vector<float>& B,
                          const std::vector<float>& C0, bool bf16) {
  std::vector<double> C(C0.begin(), C0.end());
  for (int m = 0; m < c.M; ++m)
    for (int n = 0; n < c.N; ++n) {
      double s = 0;
      for (int k = 0; k < c.K; ++k) {
        float a = c.ta == 'N' ? A[(long)m * c.K + k] : A[(long)k * c.M + m];
        float b = c.tb == 'N' ? B[(long)k * c.N + n] : B[(long)n * c.K + k];
        if (bf16) a = round_bf16(a), b = round_bf16(b);
        s += (double)a * b;
      }
      C[(long)m * c.N + n] = c.alpha * s + (c.beta == 0 ? 0.0 : c.beta * C[(long)m * c.N + n]);
    }
  return C;
}

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

std::vector<GemmChoice> every_backend_and_precision() {
  std::vector<GemmChoice> out;
  for (const auto& b : available_gemm_backends()) {
    out.push_back(resolve_gemm(b, "fp32"));
    if (b != "kokkos" && native_bf16(b)) out.push_back(resolve_gemm(b, "bf16"));
  }
  return out;
}

void run_case(GemmBackend& be, const Case& c, unsigned seed) {
  const bool bf16 = be.precision() == Precision::bf16;
  const auto A = random_floats((std::size_t)c.M * c.K, seed);
  const auto B = random_floats((std::size_t)c.K * c.N, seed + 1);
  // beta = 0 must ignore C entirely, even NaN garbage (the product overwrites)
  std::vector<float> C0 = random_floats((std::size_t)c.M * c.N, seed + 2);
  if (c.beta == 0)
    for (auto& x : C0) x = std::nanf("");
  const auto want = naive(c, A, B, C0, bf16);
  DeviceBuffer<float> dA("A", A.size() + 1), dB("B", B.size() + 1), dC("C", C0.size() + 1);
  copy_to_device(dA.data(), A);
  copy_to_device(dB.data(), B);
  copy_to_device(dC.data(), C0);
  {
    ScopedGemm scope(resolve_gemm(be.name(), precision_name(be.precision())));
    matmul<float>(c.ta, c.tb, c.M, c.N, c.K, c.alpha, dA.data(), dB.data(), c.beta, dC.data());
  }
  const auto got = to_host(dC.data(), (long)C0.size());
  // fp32 accumulation of K products of O(1) terms: error ~ sqrt(K) * 2^-24 * |terms|
  const double tol = 1e-5 * std::sqrt((double)c.K + 1) * 4;
  for (std::size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1 + std::abs(want[i])))
        << be.implementation() << " " << c.ta << c.tb << " M=" << c.M << " N=" << c.N << " K=" << c.K
        << " alpha=" << c.alpha << " beta=" << c.beta << " at " << i;
}

}  // namespace

TEST(Gemm, EveryBackendMatchesNaiveProduct) {
  const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {64, 48, 31}, {130, 3, 257}};
  for (const GemmChoice& choice : every_backend_and_precision()) {
    auto be = make_gemm_backend(choice);
    unsigned seed = 1;
    for (const auto& s : shapes)
      for (char ta : {'N', 'T'})
        for (char tb : {'N', 'T'})
          for (float beta : {0.0f, 1.0f})
            for (float alpha : {1.0f, 0.5f}) run_case(*be, {ta, tb, s[0], s[1], s[2], alpha, beta}, seed++);
  }
}

// Grouped products (gemm_grouped: the routed experts' products, sizes that
// change per problem and per call) against the naive product on every
// backend and precision: M and K vary per problem (as the experts' row counts
// do), N is the weight side; beta = 0 over NaN garbage; operands outside and
// (for B) inside the registered weights, whose bf16 copy the backend uses.
TEST(Gemm, GroupedProductsMatchNaiveProduct) {
  const int N = 17;
  const int sizes[][2] = {{7, 5}, {1, 33}, {65, 1}, {130, 64}, {3, 200}};  // (M, K) per problem
  for (const GemmChoice& choice : every_backend_and_precision()) {
    auto be = make_gemm_backend(choice);
    const bool bf16 = be->precision() == Precision::bf16;
    unsigned seed = 100;
    for (char ta : {'N', 'T'})
      for (char tb : {'N', 'T'})
        for (float beta : {0.0f, 1.0f})
          for (bool b_in_weights : {false, true}) {
            std::vector<Case> cases;
            std::vector<std::vector<float>> A, B, C0;
            long b_total = 0;
            for (const auto& mk : sizes) {
              cases.push_back({ta, tb, mk[0], N, mk[1], 0.5f, beta});
              A.push_back(random_floats((std::size_t)mk[0] * mk[1], seed++));
              B.push_back(random_floats((std::size_t)mk[1] * N, seed++));
              C0.push_back(random_floats((std::size_t)mk[0] * N, seed++));
              if (beta == 0)
                for (auto& x : C0.back()) x = std::nanf("");
              b_total += (long)B.back().size();
            }
            // all B operands in one buffer (the experts' weights lie in one parameter buffer)
            std::vector<float> all_b;
            for (const auto& b : B) all_b.insert(all_b.end(), b.begin(), b.end());
            DeviceBuffer<float> dB("B", b_total);
            copy_to_device(dB.data(), all_b);
            if (b_in_weights) be->set_weights(dB.data(), b_total);
            else be->set_weights(nullptr, 0);
            std::vector<DeviceBuffer<float>> dA, dC;
            std::vector<GemmProblem> problems;
            long b_offset = 0;
            for (std::size_t i = 0; i < cases.size(); ++i) {
              dA.push_back(to_device(A[i]));
              dC.push_back(to_device(C0[i]));
              problems.push_back({cases[i].M, N, cases[i].K, dA[i].data(), dB.data() + b_offset, dC[i].data()});
              b_offset += (long)B[i].size();
            }
            be->gemm_grouped(ta, tb, 0.5f, beta, problems);
            for (std::size_t i = 0; i < cases.size(); ++i) {
              const auto want = naive(cases[i], A[i], B[i], C0[i], bf16);
              const auto got = to_host(dC[i].data(), C0[i].size());
              const double tol = 1e-5 * std::sqrt((double)cases[i].K + 1) * 4;
              for (std::size_t j = 0; j < want.size(); ++j)
                ASSERT_NEAR(got[j], want[j], tol * (1 + std::abs(want[j])))
                    << be->implementation() << " grouped " << ta << tb << " problem " << i << " M=" << cases[i].M
                    << " K=" << cases[i].K << " beta=" << beta << " B in weights=" << b_in_weights << " at " << j;
            }
          }
    be->set_weights(nullptr, 0);
  }
}

TEST(Gemm, EmptyDimensions) {
  for (const GemmChoice& choice : every_backend_and_precision()) {
    auto be = make_gemm_backend(choice);
    for (char ta : {'N', 'T'})
      for (float beta : {0.0f, 1.0f}) {
        run_case(*be, {ta, 'N', 5, 4, 0, 1.0f, beta}, 9);  // K = 0: C = beta C
        run_case(*be, {ta, 'T', 0, 4, 3, 1.0f, beta}, 9);  // nothing to do
        run_case(*be, {ta, 'N', 5, 0, 3, 1.0f, beta}, 9);
      }
  }
}

TEST(Gemm, Bf16RoundsOperandsNotAccumulation) {
  // 1 + 2^-9 is not a bf16 number: rounded to 1 (even), so sum_k a_k b_k with
  // a = b = 1 + 2^-9 over K = 256 is exactly 256 in bf16 and 256.999... in fp32.
  for (const auto& b : available_gemm_backends()) {
    if (b == "kokkos" || !native_bf16(b)) continue;
    const int K = 256;
    std::vector<float> A(K, 1.0f + 1.0f / 512), B(K, 1.0f + 1.0f / 512);
    DeviceBuffer<float> dA("A", K), dB("B", K), dC("C", 1);
    copy_to_device(dA.data(), A);
    copy_to_device(dB.data(), B);
    ScopedGemm scope(resolve_gemm(b, "bf16"));
    matmul<float>('N', 'N', 1, 1, K, 1.0f, dA.data(), dB.data(), 0.0f, dC.data());
    EXPECT_EQ(to_host(dC.data(), 1)[0], 256.0f) << b;
    // matmul_fp32 (the router's products) keeps fp32 operands inside a bf16 run
    matmul_fp32<float>('N', 'N', 1, 1, K, 1.0f, dA.data(), dB.data(), 0.0f, dC.data());
    EXPECT_NEAR(to_host(dC.data(), 1)[0], K * (1.0 + 1.0 / 512) * (1.0 + 1.0 / 512), 1e-3) << b;
    // the accumulation is fp32: 2^-8 steps survive a sum of 2^8 terms
    std::vector<float> ones(K, 1.0f), small(K, 1.0f);
    small[0] = 1.0f + 1.0f / 128;  // a bf16 number (7 mantissa bits)
    copy_to_device(dA.data(), ones);
    copy_to_device(dB.data(), small);
    matmul<float>('N', 'N', 1, 1, K, 1.0f, dA.data(), dB.data(), 0.0f, dC.data());
    EXPECT_EQ(to_host(dC.data(), 1)[0], 256.0f + 1.0f / 128) << b;
  }
}

TEST(Gemm, RegistryMessages) {
  try {
    resolve_gemm("openblas", "fp32");
    FAIL() << "unknown backend accepted";
  } catch (const GemmConfigError& e) {
    EXPECT_EQ(e.key, "train.gemm_backend");
    EXPECT_NE(std::string(e.what()).find("valid: auto, kokkos, onednn, cublas"), std::string::npos) << e.what();
  }
  try {
    resolve_gemm("kokkos", "bf16");
    FAIL() << "bf16 on the fp32-only backend accepted";
  } catch (const GemmConfigError& e) {
    EXPECT_EQ(e.key, "train.precision");
    EXPECT_NE(std::string(e.what()).find("fp32 only"), std::string::npos) << e.what();
  }
  try {
    resolve_gemm("kokkos", "fp16");
    FAIL() << "unknown precision accepted";
  } catch (const GemmConfigError& e) {
    EXPECT_EQ(e.key, "train.precision");
  }
#ifndef FULCRUM_HAVE_CUBLAS
  try {
    resolve_gemm("cublas", "auto");
    FAIL() << "cublas accepted in a build without it";
  } catch (const GemmConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("not available in this build"), std::string::npos) << e.what();
  }
#endif
  // auto picks bf16 exactly where the chosen backend has it natively
  const GemmChoice a = resolve_gemm("auto", "auto");
  EXPECT_EQ(a.precision == Precision::bf16, native_bf16(a.backend));
  EXPECT_EQ(resolve_gemm("kokkos", "auto").precision, Precision::fp32);
}

TEST(Gemm, ScopeInstallsAndRestores) {
  EXPECT_EQ(active_gemm_backend(), nullptr);
  {
    ScopedGemm outer(resolve_gemm("kokkos", "fp32"));
    EXPECT_EQ(active_gemm_backend(), &outer.backend());
    {
      ScopedGemm inner(resolve_gemm("auto", "fp32"));
      EXPECT_EQ(active_gemm_backend(), &inner.backend());
    }
    EXPECT_EQ(active_gemm_backend(), &outer.backend());
  }
  EXPECT_EQ(active_gemm_backend(), nullptr);
}

TEST(Gemm, Bf16WeightCopy) {
  // Operands inside the registered weights come from their bf16 copy, made
  // once per weights_changed(): a change not announced is not seen (proof
  // that the copy is used), an announced one is; operands outside are
  // converted per product.
  for (const auto& b : available_gemm_backends()) {
    if (b == "kokkos" || !native_bf16(b)) continue;
    const int M = 5, N = 3, K = 4;
    std::vector<float> A = random_floats(M * K, 1), W = random_floats(N * K + 2, 2);
    DeviceBuffer<float> dA("A", M * K), dW("W", N * K + 2), dC("C", M * N);
    copy_to_device(dA.data(), A);
    copy_to_device(dW.data(), W);
    ScopedGemm scope(resolve_gemm(b, "bf16"));
    scope.backend().set_weights(dW.data(), N * K + 2);
    auto product = [&]() {  // C = A W^T with W the (N,K) block at offset 2
      matmul<float>('N', 'T', M, N, K, 1.0f, dA.data(), dW.data() + 2, 0.0f, dC.data());
      return to_host(dC.data(), M * N);
    };
    const auto first = product();
    std::vector<float> W2 = W;
    for (auto& x : W2) x *= 2.0f;
    copy_to_device(dW.data(), W2);
    EXPECT_EQ(product(), first) << b << ": the products must use the bf16 copy until weights_changed()";
    scope.backend().weights_changed();
    const auto second = product();
    for (int i = 0; i < M * N; ++i) EXPECT_FLOAT_EQ(second[i], 2.0f * first[i]) << b << " at " << i;
    // A is not inside the weights: converted per product, changes are seen at once
    for (auto& x : A) x *= 2.0f;
    copy_to_device(dA.data(), A);
    const auto third = product();
    for (int i = 0; i < M * N; ++i) EXPECT_FLOAT_EQ(third[i], 4.0f * first[i]) << b << " at " << i;
  }
}
