// Linear-memory attention (src/model/attention.hpp) against the T x T path
// (layers.hpp attention_forward/backward, itself checked against the
// per-head reference in test_kernel_reference): forward output and log-sum-exp,
// backward dq, dk, dv, in double; GQA groups of 1, 2 and 4, odd T, T = 1, T
// not a multiple of the block sizes; both loop nests (host and device) on
// this backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "model/attention.hpp"
#include "model/attention_kernel.hpp"
#include "model/layers.hpp"
#include "model/transformer.hpp"
#include "test_helpers.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {
template <class T>
double worst_relative(const std::vector<T>& a, const std::vector<T>& b) {
  double w = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    w = std::max(w, std::abs((double)a[i] - (double)b[i]) / (1 + std::abs((double)b[i])));
  return w;
}

template <class T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// log-sum-exp of each causal score row, computed on the host in long double
std::vector<double> host_lse(const std::vector<double>& q, const std::vector<double>& k, int B, int Tn, int nh,
                             int nkv, int hd) {
  std::vector<double> out((std::size_t)B * nh * Tn);
  const int group = nh / nkv;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h)
      for (int i = 0; i < Tn; ++i) {
        std::vector<long double> s(i + 1);
        for (int j = 0; j <= i; ++j) {
          long double acc = 0;
          for (int d = 0; d < hd; ++d)
            acc += (long double)q[(((long)b * nh + h) * Tn + i) * hd + d] *
                   k[(((long)b * nkv + h / group) * Tn + j) * hd + d];
          s[j] = acc / std::sqrt((long double)hd);
        }
        const long double mx = *std::max_element(s.begin(), s.end());
        long double sum = 0;
        for (auto x : s) sum += std::exp(x - mx);
        out[((long)b * nh + h) * Tn + i] = (double)(mx + std::log(sum));
      }
  return out;
}

// Runs the T x T path and the flash path (loop nest HostLoops) on the same
// inputs; returns the worst relative difference over out, dq, dk, dv and lse.
template <class T, bool HostLoops>
double compare(int B, int Tn, int nh, int nkv, int hd, std::uint64_t seed) {
  const long nq = (long)B * nh * Tn * hd, nkvn = (long)B * nkv * Tn * hd, na = (long)B * nh * Tn * Tn;
  const long nr = (long)B * nh * Tn;
  const auto qh = random_vector(nq, seed), kh = random_vector(nkvn, seed + 1);
  const auto vh = random_vector(nkvn, seed + 2), doh = random_vector(nq, seed + 3);
  auto q = to_device(cast<T>(qh)), k = to_device(cast<T>(kh)), v = to_device(cast<T>(vh));
  auto dout = to_device(cast<T>(doh));
  // reference: T x T
  DeviceBuffer<T> out_r("out_r", nq), att("att", na), datt("datt", na);
  DeviceBuffer<T> dq_r("dq_r", nq), dk_r("dk_r", nkvn), dv_r("dv_r", nkvn);
  attention_forward<T>(out_r.data(), att.data(), q.data(), k.data(), v.data(), B, Tn, nh, nkv, hd);
  attention_backward<T>(dq_r.data(), dk_r.data(), dv_r.data(), datt.data(), dout.data(), att.data(), q.data(),
                        k.data(), v.data(), B, Tn, nh, nkv, hd);
  // flash; outputs pre-filled with NaN: every element must be written
  auto nan_buffer = [](const char* label, long n) {
    DeviceBuffer<T> x(std::string(label), n);
    Kokkos::deep_copy(x, std::nan(""));
    return x;
  };
  auto out_f = nan_buffer("out_f", nq), lse = nan_buffer("lse", nr), delta = nan_buffer("delta", nr);
  auto dq_f = nan_buffer("dq_f", nq), dk_f = nan_buffer("dk_f", nkvn), dv_f = nan_buffer("dv_f", nkvn);
  flash_attention_forward<T, HostLoops>(out_f.data(), lse.data(), q.data(), k.data(), v.data(), B, Tn, nh, nkv, hd);
  flash_attention_backward_delta<T, HostLoops>(delta.data(), dout.data(), out_f.data(), B, Tn, nh, hd, true);
  flash_attention_backward<T, HostLoops>(dq_f.data(), dk_f.data(), dv_f.data(), dout.data(), lse.data(),
                                         delta.data(), q.data(), k.data(), v.data(), B, Tn, nh, nkv, hd);
  double worst = 0;
  auto check = [&](const DeviceBuffer<T>& a, const DeviceBuffer<T>& b, long n, const char* what) {
    const auto ha = to_host(a.data(), n), hb = to_host(b.data(), n);
    for (std::size_t i = 0; i < ha.size(); ++i)
      EXPECT_FALSE(std::isnan((double)ha[i])) << what << " not written at " << i;
    const double w = worst_relative(ha, hb);
    worst = std::max(worst, w);
    return w;
  };
  check(out_f, out_r, nq, "out");
  check(dq_f, dq_r, nq, "dq");
  check(dk_f, dk_r, nkvn, "dk");
  check(dv_f, dv_r, nkvn, "dv");
  worst = std::max(worst, worst_relative(to_host(lse.data(), nr), cast<T>(host_lse(qh, kh, B, Tn, nh, nkv, hd))));
  return worst;
}

// B, T, nh, nkv, hd: groups of 1, 2 and 4; T = 1; odd T; T not a multiple of
// either loop nest's blocks (64 host, 32 device) and spanning several blocks
const int kShapes[][5] = {{2, 7, 4, 4, 6},  {1, 9, 4, 2, 4},  {2, 5, 8, 2, 8},   {3, 1, 4, 1, 2},
                          {1, 1, 2, 2, 16}, {1, 65, 2, 1, 8}, {2, 97, 4, 2, 10}, {1, 150, 4, 1, 16},
                          {1, 64, 2, 2, 32}, {1, 33, 6, 2, 12}, {1, 130, 2, 1, 48}};
}  // namespace

TEST(FlashAttention, MatchesTxTDoubleHostLoops) {
  for (const auto& s : kShapes) {
    const double w = compare<double, true>(s[0], s[1], s[2], s[3], s[4], 100 + s[1]);
    EXPECT_LT(w, 1e-12) << "B=" << s[0] << " T=" << s[1] << " nh=" << s[2] << " nkv=" << s[3] << " hd=" << s[4];
  }
}

TEST(FlashAttention, MatchesTxTDoubleDeviceLoops) {
  for (const auto& s : kShapes) {
    const double w = compare<double, false>(s[0], s[1], s[2], s[3], s[4], 200 + s[1]);
    EXPECT_LT(w, 1e-12) << "B=" << s[0] << " T=" << s[1] << " nh=" << s[2] << " nkv=" << s[3] << " hd=" << s[4];
  }
}

TEST(FlashAttention, MatchesTxTFloat) {
  // float: the Cephes exp and a different summation order, so a float tolerance
  for (const auto& s : kShapes) {
    EXPECT_LT((compare<float, true>(s[0], s[1], s[2], s[3], s[4], 300 + s[1])), 2e-5) << "T=" << s[1];
    EXPECT_LT((compare<float, false>(s[0], s[1], s[2], s[3], s[4], 400 + s[1])), 2e-5) << "T=" << s[1];
  }
}

TEST(FlashAttention, DeltaTokenMajorEqualsHeadMajor) {
  // the model passes token-major dout/out to the delta kernel
  const int B = 2, Tn = 5, nh = 3, hd = 4;
  const long n = (long)B * Tn * nh * hd;
  const auto a = random_vector(n, 7), c = random_vector(n, 8);
  std::vector<double> ah(n), ch(n);  // head-major copies of the token-major a, c
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t)
      for (int h = 0; h < nh; ++h)
        for (int d = 0; d < hd; ++d) {
          ah[(((long)b * nh + h) * Tn + t) * hd + d] = a[(((long)b * Tn + t) * nh + h) * hd + d];
          ch[(((long)b * nh + h) * Tn + t) * hd + d] = c[(((long)b * Tn + t) * nh + h) * hd + d];
        }
  auto da = to_device(a), dc = to_device(c), dah = to_device(ah), dch = to_device(ch);
  DeviceBuffer<double> d1("d1", B * nh * Tn), d2("d2", B * nh * Tn);
  flash_attention_backward_delta<double>(d1.data(), da.data(), dc.data(), B, Tn, nh, hd, false);
  flash_attention_backward_delta<double>(d2.data(), dah.data(), dch.data(), B, Tn, nh, hd, true);
  const auto h1 = to_host(d1.data(), B * nh * Tn), h2 = to_host(d2.data(), B * nh * Tn);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h)
      for (int t = 0; t < Tn; ++t) {
        double want = 0;
        for (int d = 0; d < hd; ++d) want += ah[(((long)b * nh + h) * Tn + t) * hd + d] * ch[(((long)b * nh + h) * Tn + t) * hd + d];
        const long r = ((long)b * nh + h) * Tn + t;
        EXPECT_NEAR(h1[r], want, 1e-13 * (1 + std::abs(want)));
        EXPECT_EQ(h1[r], h2[r]);
      }
}

namespace {
// A whole model's loss and gradients with the kernel forced to `kernel`.
template <class T>
std::pair<double, std::vector<T>> model_loss_and_grads(const ModelShape& s, int B, AttentionKernel kernel) {
  Transformer<T> model(s, B, "local", MPI_COMM_SELF, MPI_COMM_SELF, kernel);
  EXPECT_EQ(model.attention_kernel(), kernel);
  model.init_parameters(5, 0.3);
  std::vector<int> tokens(B * s.seq_len), targets(B * s.seq_len);
  for (int i = 0; i < B * s.seq_len; ++i) {
    tokens[i] = (i * 7 + 3) % s.vocab_size;
    targets[i] = (i * 5 + 1) % s.vocab_size;
  }
  model.set_batch(tokens, targets, B);
  model.zero_grads();
  model.clear_routing_step();
  const double loss = model.forward().total();
  model.backward(T(1));
  return {loss, to_host(model.grads().data(), model.num_parameters())};
}

ModelShape moe_shape(int seq_len, int n_heads, int n_kv_heads, int head_dim) {
  ModelShape s;
  s.vocab_size = 13;
  s.d_model = n_heads * head_dim;
  s.n_layers = 2;
  s.n_heads = n_heads;
  s.n_kv_heads = n_kv_heads;
  s.head_dim = head_dim;
  s.d_ffn = 12;
  s.seq_len = seq_len;
  s.is_moe = true;
  s.num_experts = 4;
  s.num_active = 2;
  s.num_shared = 1;
  s.d_expert = 4;
  s.first_k_dense = 1;
  s.aux_loss_coef = 0.05;
  s.z_loss_coef = 0.01;
  return s;
}
}  // namespace

TEST(FlashAttention, WholeModelMatchesFullAttention) {
  // the model's wiring of the flash path (delta from the token-major output
  // and its gradient, per-layer lse) against the full path, in double
  for (const auto& sh : {std::array<int, 4>{7, 4, 2, 2}, std::array<int, 4>{70, 4, 1, 4}, std::array<int, 4>{1, 2, 2, 4}}) {
    const ModelShape s = moe_shape(sh[0], sh[1], sh[2], sh[3]);
    const auto [loss_full, g_full] = model_loss_and_grads<double>(s, 2, AttentionKernel::full);
    const auto [loss_flash, g_flash] = model_loss_and_grads<double>(s, 2, AttentionKernel::flash);
    EXPECT_NEAR(loss_flash, loss_full, 1e-12 * std::abs(loss_full)) << "T=" << sh[0];
    EXPECT_LT(worst_relative(g_flash, g_full), 1e-10) << "T=" << sh[0];
  }
}

TEST(FlashAttention, FloatModelRunsAreBitIdentical) {
  // two identical float runs of the flash path: same loss and gradients bit for bit
  const ModelShape s = moe_shape(67, 4, 2, 8);
  const auto a = model_loss_and_grads<float>(s, 3, AttentionKernel::flash);
  const auto b = model_loss_and_grads<float>(s, 3, AttentionKernel::flash);
  EXPECT_EQ(a.first, b.first);
  EXPECT_TRUE(a.second == b.second);
  const auto full = model_loss_and_grads<float>(s, 3, AttentionKernel::full);
  EXPECT_NEAR(a.first, full.first, 1e-5 * std::abs(full.first));
}

TEST(FlashAttention, Bf16RoundsOperandsLikeTheGemmLayer) {
  // under a bf16 gemm backend the flash kernels round q, k, v, dout, p, ds
  // where they enter a product, as the full path's bf16 products do
  if (!native_bf16(resolve_gemm("auto", "fp32").backend)) GTEST_SKIP() << "no native bf16 on this machine";
  const int B = 2, Tn = 70, nh = 4, nkv = 2, hd = 32;
  double bf16_vs_full = 0;
  {
    ScopedGemm scope(resolve_gemm("auto", "bf16"));
    bf16_vs_full = std::max(compare<float, true>(B, Tn, nh, nkv, hd, 9), compare<float, false>(B, Tn, nh, nkv, hd, 9));
  }
  // the rounding must be visible: flash in bf16 differs from flash in fp32
  const long nq = (long)B * nh * Tn * hd, nkvn = (long)B * nkv * Tn * hd, nr = (long)B * nh * Tn;
  auto q = to_device(cast<float>(random_vector(nq, 9))), k = to_device(cast<float>(random_vector(nkvn, 10)));
  auto v = to_device(cast<float>(random_vector(nkvn, 11)));
  DeviceBuffer<float> o32("o32", nq), o16("o16", nq), lse("lse", nr);
  {
    ScopedGemm scope(resolve_gemm("auto", "fp32"));
    flash_attention_forward<float>(o32.data(), lse.data(), q.data(), k.data(), v.data(), B, Tn, nh, nkv, hd);
  }
  {
    ScopedGemm scope(resolve_gemm("auto", "bf16"));
    flash_attention_forward<float>(o16.data(), lse.data(), q.data(), k.data(), v.data(), B, Tn, nh, nkv, hd);
  }
  EXPECT_GT(worst_relative(to_host(o16.data(), nq), to_host(o32.data(), nq)), 1e-4) << "bf16 flash equals fp32 flash: operands not rounded?";
  EXPECT_LT(bf16_vs_full, 2e-2);
  ::testing::Test::RecordProperty("bf16_flash_vs_full", std::to_string(bf16_vs_full));
}

#if !defined(FULCRUM_ATTENTION_KERNEL_FULL) && !defined(FULCRUM_ATTENTION_KERNEL_FLASH)
TEST(FlashAttention, KernelRuleFollowsTheFullPathsMemory) {
  ModelShape s;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.seq_len = 128;  // quickstart: B 16 -> 4 MiB of probabilities per layer
  EXPECT_EQ(attention_kernel_for(s, 16), AttentionKernel::full);
  s.n_heads = 6;
  s.seq_len = 256;  // study-size: B 8 -> 12 MiB
  EXPECT_EQ(attention_kernel_for(s, 8), AttentionKernel::full);
  s.n_heads = 4;
  s.seq_len = 2048;  // B 1 -> 64 MiB: the threshold
  EXPECT_EQ(attention_kernel_for(s, 1), AttentionKernel::flash);
  s.seq_len = 2047;
  EXPECT_EQ(attention_kernel_for(s, 1), AttentionKernel::full);
  EXPECT_EQ(attention_kernel_for(s, 1, AttentionKernel::flash), AttentionKernel::flash);
  s.seq_len = 8192;
  EXPECT_EQ(attention_kernel_for(s, 1, AttentionKernel::full), AttentionKernel::full);
  EXPECT_STREQ(attention_kernel_name(attention_kernel_for(s, 1)), "flash");
}
#endif
