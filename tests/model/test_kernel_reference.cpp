// Rewritten kernels (src/model/layers.hpp) against their previous, simpler
// implementations (reference_kernels.hpp) in double precision on odd shapes,
// and the team nests of the row kernels (layers.hpp, router.hpp) against
// their host nests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "model/layers.hpp"
#include "model/model_memory.hpp"
#include "model/router.hpp"
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

TEST(KernelReference, AttentionStackedGroups) {
  // GQA groups of 1, 2 and 4, odd T and T = 1, forward and backward
  const int shapes[][5] = {{2, 7, 4, 4, 6}, {1, 9, 4, 2, 4}, {2, 5, 8, 2, 8}, {3, 1, 4, 1, 2}};  // B,T,nh,nkv,hd
  for (const auto& sh : shapes) {
    const int B = sh[0], T = sh[1], nh = sh[2], nkv = sh[3], hd = sh[4];
    const long nq = (long)B * nh * T * hd, nkvn = (long)B * nkv * T * hd, na = (long)B * nh * T * T;
    auto q = to_device(random_vector(nq, 21)), k = to_device(random_vector(nkvn, 22));
    auto v = to_device(random_vector(nkvn, 23)), dout = to_device(random_vector(nq, 24));
    DeviceBuffer<double> out_a("oa", nq), out_b("ob", nq), att_a("aa", na), att_b("ab", na);
    attention_forward<double>(out_a.data(), att_a.data(), q.data(), k.data(), v.data(), B, T, nh, nkv, hd);
    reference::attention_forward_reference<double>(out_b.data(), att_b.data(), q.data(), k.data(), v.data(), B, T, nh,
                                                   nkv, hd);
    expect_close(to_host(out_a.data(), nq), to_host(out_b.data(), nq), "attention out");
    expect_close(to_host(att_a.data(), na), to_host(att_b.data(), na), "attention probabilities");
    DeviceBuffer<double> dq_a("dqa", nq), dq_b("dqb", nq), dk_a("dka", nkvn), dk_b("dkb", nkvn);
    DeviceBuffer<double> dv_a("dva", nkvn), dv_b("dvb", nkvn), datt_a("da", na), datt_b("db", na);
    attention_backward<double>(dq_a.data(), dk_a.data(), dv_a.data(), datt_a.data(), dout.data(), att_a.data(),
                               q.data(), k.data(), v.data(), B, T, nh, nkv, hd);
    reference::attention_backward_reference<double>(dq_b.data(), dk_b.data(), dv_b.data(), datt_b.data(), dout.data(),
                                                    att_b.data(), q.data(), k.data(), v.data(), B, T, nh, nkv, hd);
    expect_close(to_host(dq_a.data(), nq), to_host(dq_b.data(), nq), "attention dq");
    expect_close(to_host(dk_a.data(), nkvn), to_host(dk_b.data(), nkvn), "attention dk");
    expect_close(to_host(dv_a.data(), nkvn), to_host(dv_b.data(), nkvn), "attention dv");
  }
}

// The team nests of the row kernels (kokkos_types.hpp: HostLoops = false,
// the default on device backends; here with teams of one thread) against the
// host nests, and the RMSNorm backward against the per-column reference.
TEST(KernelReference, RmsnormTeamNest) {
  for (int N : {1, 7, 64, 65, 200})
    for (int C : {1, 7, 48}) {
      const long NC = (long)N * C;
      auto x = to_device(random_vector(NC, 31)), dy = to_device(random_vector(NC, 32));
      auto w = to_device(random_vector(C, 33, 0.5));
      DeviceBuffer<double> out_h("oh", NC), out_t("ot", NC), rstd_h("rh", N), rstd_t("rt", N);
      rmsnorm_forward<double, true>(out_h.data(), rstd_h.data(), x.data(), w.data(), N, C, 1e-5);
      rmsnorm_forward<double, false>(out_t.data(), rstd_t.data(), x.data(), w.data(), N, C, 1e-5);
      expect_close(to_host(out_t.data(), NC), to_host(out_h.data(), NC), "rmsnorm team out");
      expect_close(to_host(rstd_t.data(), N), to_host(rstd_h.data(), N), "rmsnorm team rstd");
      auto dx_t = to_device(random_vector(NC, 34)), dx_r = to_device(random_vector(NC, 34));
      auto dw_t = to_device(random_vector(C, 35)), dw_r = to_device(random_vector(C, 35));
      DeviceBuffer<double> partial("partial", rmsnorm_backward_scratch(N, C));
      rmsnorm_backward<double, false>(dx_t.data(), dw_t.data(), partial.data(), dy.data(), x.data(), w.data(),
                                      rstd_h.data(), N, C);
      reference::rmsnorm_backward_reference<double>(dx_r.data(), dw_r.data(), dy.data(), x.data(), w.data(),
                                                    rstd_h.data(), N, C);
      expect_close(to_host(dx_t.data(), NC), to_host(dx_r.data(), NC), "rmsnorm team dx");
      expect_close(to_host(dw_t.data(), C), to_host(dw_r.data(), C), "rmsnorm team dw");
    }
}

TEST(KernelReference, CrossentropyTeamNest) {
  for (int N : {1, 9, 64})
    for (int V : {1, 13, 257}) {
      const long NV = (long)N * V;
      auto z = to_device(random_vector(NV, 41, 3.0));
      std::vector<int> t(N);
      for (int n = 0; n < N; ++n) t[n] = (n * 7 + 2) % V;
      DeviceBuffer<int> targets("targets", N);
      copy_to_device(targets.data(), t);
      DeviceBuffer<double> lse_h("lh", N), lse_t("lt", N), dz_h("dh", NV), dz_t("dt", NV);
      const double loss_h = crossentropy_forward<double, true>(lse_h.data(), z.data(), targets.data(), N, V);
      const double loss_t = crossentropy_forward<double, false>(lse_t.data(), z.data(), targets.data(), N, V);
      EXPECT_NEAR(loss_t, loss_h, 1e-13 * (1 + std::abs(loss_h)));
      expect_close(to_host(lse_t.data(), N), to_host(lse_h.data(), N), "crossentropy team lse");
      crossentropy_backward<double, true>(dz_h.data(), z.data(), lse_h.data(), targets.data(), N, V, 0.7);
      crossentropy_backward<double, false>(dz_t.data(), z.data(), lse_h.data(), targets.data(), N, V, 0.7);
      expect_close(to_host(dz_t.data(), NV), to_host(dz_h.data(), NV), "crossentropy team dlogits");
    }
}

TEST(KernelReference, AttentionSoftmaxTeamNest) {
  // the full path with the team nests of its two softmax kernels against the host nests
  const int shapes[][5] = {{2, 7, 4, 4, 6}, {1, 9, 4, 2, 4}, {3, 1, 4, 1, 2}, {1, 40, 2, 1, 8}};  // B,T,nh,nkv,hd
  for (const auto& sh : shapes) {
    const int B = sh[0], T = sh[1], nh = sh[2], nkv = sh[3], hd = sh[4];
    const long nq = (long)B * nh * T * hd, nkvn = (long)B * nkv * T * hd, na = (long)B * nh * T * T;
    auto q = to_device(random_vector(nq, 51)), k = to_device(random_vector(nkvn, 52));
    auto v = to_device(random_vector(nkvn, 53)), dout = to_device(random_vector(nq, 54));
    DeviceBuffer<double> out_h("oh", nq), out_t("ot", nq), att_h("ah", na), att_t("at", na);
    attention_forward<double, true>(out_h.data(), att_h.data(), q.data(), k.data(), v.data(), B, T, nh, nkv, hd);
    attention_forward<double, false>(out_t.data(), att_t.data(), q.data(), k.data(), v.data(), B, T, nh, nkv, hd);
    expect_close(to_host(out_t.data(), nq), to_host(out_h.data(), nq), "attention team out");
    expect_close(to_host(att_t.data(), na), to_host(att_h.data(), na), "attention team probabilities");
    DeviceBuffer<double> dq_h("dqh", nq), dq_t("dqt", nq), dk_h("dkh", nkvn), dk_t("dkt", nkvn);
    DeviceBuffer<double> dv_h("dvh", nkvn), dv_t("dvt", nkvn), datt_h("dh", na), datt_t("dt", na);
    attention_backward<double, true>(dq_h.data(), dk_h.data(), dv_h.data(), datt_h.data(), dout.data(), att_h.data(),
                                     q.data(), k.data(), v.data(), B, T, nh, nkv, hd);
    attention_backward<double, false>(dq_t.data(), dk_t.data(), dv_t.data(), datt_t.data(), dout.data(),
                                      att_h.data(), q.data(), k.data(), v.data(), B, T, nh, nkv, hd);
    expect_close(to_host(dq_t.data(), nq), to_host(dq_h.data(), nq), "attention team dq");
    expect_close(to_host(dk_t.data(), nkvn), to_host(dk_h.data(), nkvn), "attention team dk");
    expect_close(to_host(dv_t.data(), nkvn), to_host(dv_h.data(), nkvn), "attention team dv");
  }
}

// ---------------------------------------------------------------- router
// The router's team nests (HostLoops = false) against its host nests, in
// double: the same top-k experts in the same order, the same outputs and
// gradients. "tied" inputs take h and w_router from {-1, -1/2, 0, 1/2, 1} with
// C = 3, so every logit is exact (any summation order) and many are equal:
// equal scores, broken by the lower expert index in both nests.
namespace {
std::vector<double> dyadic_vector(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> dist(-2, 2);
  std::vector<double> v(n);
  for (auto& x : v) x = 0.5 * dist(gen);
  return v;
}

struct RouterCase {
  int N, C, E, k;
  bool sigmoid, renorm, bias, tied;
  double scale;
  int scope;
};

std::string describe(const RouterCase& c) {
  return "N=" + std::to_string(c.N) + " E=" + std::to_string(c.E) + " k=" + std::to_string(c.k) +
         (c.sigmoid ? " sigmoid" : " softmax") + (c.renorm ? " renorm" : "") + (c.bias ? " bias" : "") +
         (c.tied ? " tied" : "") + " scale=" + std::to_string(c.scale) + " scope=" + std::to_string(c.scope);
}

RouterOptions router_options(const RouterCase& c) {
  RouterOptions o;
  o.sigmoid = c.sigmoid;
  o.route_scale = c.scale;
  o.bias = c.bias;
  o.scope = c.scope;
  o.seq_len = c.scope == RouterOptions::Sequence ? 3 : 0;  // sequences of 3 tokens, the last one shorter
  return o;
}

// a within 1e-12 of b, or both NaN
void expect_router_close(const std::vector<double>& a, const std::vector<double>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(b[i])) {
      ASSERT_TRUE(std::isnan(a[i])) << what << " at " << i;
      continue;
    }
    ASSERT_NEAR(a[i], b[i], 1e-12 * (1 + std::abs(b[i]))) << what << " at " << i;
  }
}

// One forward (and backward unless skipped) of both nests on the same
// inputs; h is (N,C), w is (E,C).
void check_router_nests(const RouterCase& c, const std::vector<double>& h, const std::vector<double>& w,
                        bool backward = true) {
  SCOPED_TRACE(describe(c));
  const int N = c.N, C = c.C, E = c.E, k = c.k;
  const RouterOptions o = router_options(c);
  Router<double, true> rh(N, C, E, k, c.renorm, 0.05, 0.01, o);
  Router<double, false> rt(N, C, E, k, c.renorm, 0.05, 0.01, o);
  if (c.bias) {
    // tied: dyadic biases, so equal scores with equal biases stay tied keys
    std::vector<double> b = c.tied ? dyadic_vector(E, 90 + E) : random_vector(E, 90 + E, 0.05);
    if (c.tied)
      for (auto& x : b) x *= 0.25;
    rh.set_bias(b);
    rt.set_bias(b);
  }
  auto d_h = to_device(h), d_w = to_device(w);
  const auto lh = rh.forward(d_h.data(), d_w.data(), N);
  const auto lt = rt.forward(d_h.data(), d_w.data(), N);
  const long NE = (long)N * E, Nk = (long)N * k;
  const auto idx_h = to_host(rh.topk_idx(), Nk), idx_t = to_host(rt.topk_idx(), Nk);
  ASSERT_EQ(idx_t, idx_h) << "router team top-k experts";
  expect_router_close(to_host(rt.topk_weight(), Nk), to_host(rh.topk_weight(), Nk), "router team topk_weight");
  expect_router_close(to_host(rt.probs(), NE), to_host(rh.probs(), NE), "router team probs");
  expect_router_close(to_host(rt.logits(), NE), to_host(rh.logits(), NE), "router team logits");
  expect_router_close({lt.aux, lt.z, lt.entropy, lt.margin}, {lh.aux, lh.z, lh.entropy, lh.margin},
                      "router team losses (aux, z, entropy, margin)");
  EXPECT_EQ(rt.step_counts(), rh.step_counts()) << "router team step counts";
  if (!backward) return;
  const auto dtw = to_device(random_vector(Nk, 95));
  auto dh_h = to_device(random_vector((long)N * C, 96)), dh_t = to_device(random_vector((long)N * C, 96));
  auto dw_h = to_device(random_vector((long)E * C, 97)), dw_t = to_device(random_vector((long)E * C, 97));
  rh.backward(dh_h.data(), dw_h.data(), dtw.data(), d_h.data(), d_w.data(), N, 0.7);
  rt.backward(dh_t.data(), dw_t.data(), dtw.data(), d_h.data(), d_w.data(), N, 0.7);
  expect_router_close(to_host(dh_t.data(), (long)N * C), to_host(dh_h.data(), (long)N * C), "router team dh");
  expect_router_close(to_host(dw_t.data(), (long)E * C), to_host(dw_h.data(), (long)E * C), "router team dw_router");
}
}  // namespace

TEST(KernelReference, RouterTeamNest) {
  int cases = 0, tied_rows = 0;
  for (int E : {5, 13, 64})
    for (int k : {1, 2, 3, E == 5 ? 5 : 6})
      for (int N : {1, 7, 33})
        for (int variant = 0; variant < 16; ++variant) {
          RouterCase c;
          c.N = N;
          c.E = E;
          c.k = k;
          c.sigmoid = variant & 1;
          c.renorm = variant & 2;
          c.bias = variant & 4;
          c.tied = variant & 8;
          c.C = c.tied ? 3 : 8;
          c.scale = (variant % 3 == 0) ? 2.5 : 1.0;
          c.scope = (variant + N + k) % 3;  // micro-batch, sequence, global (over MPI_COMM_SELF)
          const std::uint64_t seed = 1000 * E + 100 * k + 10 * N + variant;
          const auto h = c.tied ? dyadic_vector((long)N * c.C, seed) : random_vector((long)N * c.C, seed);
          const auto w = c.tied ? dyadic_vector((long)E * c.C, seed + 7) : random_vector((long)E * c.C, seed + 7);
          if (c.tied) {  // how many tokens have a tie among their logits (the test must exercise ties)
            for (int t = 0; t < N; ++t) {
              std::vector<double> z(E);
              for (int e = 0; e < E; ++e)
                for (int i = 0; i < c.C; ++i) z[e] += h[t * c.C + i] * w[e * c.C + i];
              std::sort(z.begin(), z.end());
              tied_rows += std::adjacent_find(z.begin(), z.end()) != z.end();
            }
          }
          check_router_nests(c, h, w);
          if (HasFatalFailure()) return;
          ++cases;
        }
  EXPECT_EQ(cases, 3 * 4 * 3 * 16);
  EXPECT_GT(tied_rows, 100);
}

TEST(KernelReference, RouterTeamNestNaNScores) {
  // A NaN score is not ordered; the serial scan picks the first untaken
  // expert when its key is NaN and skips NaN keys otherwise. The team nest
  // must pick the same experts (and stay inside 0..E-1).
  const int N = 7, C = 4, E = 5, k = 3;
  for (int nan_expert : {0, 2})
    for (bool sigmoid : {false, true}) {
      RouterCase c{N, C, E, k, sigmoid, false, false, false, 1.0, RouterOptions::MicroBatch};
      auto h = random_vector((long)N * C, 71), w = random_vector((long)E * C, 72);
      for (int i = 0; i < C; ++i) w[nan_expert * C + i] = std::nan("");  // one expert's logits NaN
      check_router_nests(c, h, w, false);
      // one token's logits all NaN
      auto w2 = random_vector((long)E * C, 73);
      for (int i = 0; i < C; ++i) h[3 * C + i] = std::nan("");
      check_router_nests(c, h, w2, false);
    }
}

// ---------------------------------------------------------------- cross-entropy: the model's use
// The model's loss (crossentropy_forward_device: the sum reduced into a device
// scalar, the mean written to device memory) against crossentropy_forward
// (the sum returned to the host), in each nest: the one implementation, so
// the same bits, lse included.
TEST(KernelReference, CrossentropyDeviceSumMatchesHostReturn) {
  for (int N : {1, 9, 64})
    for (int V : {1, 13, 257}) {
      const long NV = (long)N * V;
      auto z = to_device(random_vector(NV, 43, 3.0));
      std::vector<int> t(N);
      for (int n = 0; n < N; ++n) t[n] = (n * 5 + 3) % V;
      DeviceBuffer<int> targets("targets", N);
      copy_to_device(targets.data(), t);
      auto check = [&](auto host_loops) {
        constexpr bool HL = decltype(host_loops)::value;
        DeviceBuffer<double> lse_r("lr", N), lse_d("ld", N), loss("loss", 3);
        Kokkos::View<double, MemSpace> total("total");
        const double returned = crossentropy_forward<double, HL>(lse_r.data(), z.data(), targets.data(), N, V);
        crossentropy_forward_device<double, HL>(lse_d.data(), loss.data(), total, z.data(), targets.data(), N, V);
        const double device = to_host(loss.data(), 3)[0];
        EXPECT_EQ(device, returned) << "HostLoops " << HL << " N " << N << " V " << V;
        EXPECT_EQ(to_host(lse_d.data(), N), to_host(lse_r.data(), N)) << "HostLoops " << HL;
      };
      check(std::true_type{});
      check(std::false_type{});
    }
}

// ---------------------------------------------------------------- embedding backward: the two nests
// The device nest (stable counting sort by id, then a work item per (id,
// column)) against the host nest (a work item per column) and a plain loop:
// all add each row's positions in increasing order, so dwte (+=, non-zero
// before) must have the same bits. The scratch is sized once for more tokens
// than any call and reused, as the model does.
TEST(KernelReference, EmbeddingBackwardNestsBitIdentical) {
  struct Case {
    int N, V, C;
    const char* what;
  };
  const Case cases[] = {
      {1, 1, 3, "single token, vocab 1"},
      {9, 1, 4, "vocab 1, every position the same id"},
      {1, 50, 5, "single token"},
      {9, 11, 5, "repeats, ids absent"},
      {201, 13, 7, "N odd, several chunks, one id frequent"},
      {333, 500, 17, "most ids absent"},
      {1000, (int)(EmbeddingBackwardScratch::kMaxCounts / 3 + 1), 2, "large vocab: chunks capped by memory"},
  };
  for (const Case& k : cases) {
    const int N = k.N, V = k.V, C = k.C;
    std::vector<int> t(N);
    for (int n = 0; n < N; ++n) {
      const unsigned h = (unsigned)n * 2654435761u + 12345u;
      t[n] = (int)((h >> 7) % (unsigned)V);
      if (V == 13 && n % 3 != 1) t[n] = 4;                  // one id in two thirds of the positions
      if (V == 500) t[n] = (int)(((h >> 7) % 37) * 13 % V);  // 37 ids of 500
    }
    DeviceBuffer<int> tokens("tokens", N);
    copy_to_device(tokens.data(), t);
    auto dout = to_device(random_vector((long)N * C, 81));
    const std::vector<double> w0 = random_vector((long)V * C, 82);
    auto dwte_h = to_device(w0), dwte_d = to_device(w0);
    const EmbeddingBackwardScratch sort(N + 7, V, true);
    ASSERT_GE(sort.chunks, 1);
    // twice: all N positions, then the first (N+1)/2 (a smaller batch, same scratch)
    std::vector<double> ref = w0;
    const std::vector<double> d = to_host(dout.data(), (long)N * C);
    for (int n_call : {N, (N + 1) / 2}) {
      embedding_backward<double, true>(dwte_h.data(), dout.data(), tokens.data(), n_call, C, sort);
      embedding_backward<double, false>(dwte_d.data(), dout.data(), tokens.data(), n_call, C, sort);
      for (int n = 0; n < n_call; ++n)
        for (int c = 0; c < C; ++c) ref[(long)t[n] * C + c] += d[(long)n * C + c];
    }
    const std::vector<double> h = to_host(dwte_h.data(), (long)V * C), dv = to_host(dwte_d.data(), (long)V * C);
    long differ = 0, differ_ref = 0;
    for (long i = 0; i < (long)V * C; ++i) {
      differ += std::memcmp(&h[i], &dv[i], sizeof(double)) != 0;
      differ_ref += std::memcmp(&h[i], &ref[i], sizeof(double)) != 0;
    }
    EXPECT_EQ(differ, 0) << k.what << ": device nest against host nest, chunks " << sort.chunks;
    EXPECT_EQ(differ_ref, 0) << k.what << ": host nest against the plain loop";
  }
  // the device nest refuses more tokens than its scratch holds
  const EmbeddingBackwardScratch small(4, 3, true);
  DeviceBuffer<int> tokens("tokens", 5);
  DeviceBuffer<double> dwte("dwte", 3), dout("dout", 5);
  EXPECT_THROW((embedding_backward<double, false>(dwte.data(), dout.data(), tokens.data(), 5, 1, small)),
               std::invalid_argument);
}

// --describe's memory estimate counts the sort buffers of device backends
// (model_memory.cpp embedding_sort_bytes) as EmbeddingBackwardScratch
// allocates them: small and large vocabularies, the 2^22 cap, one token.
TEST(KernelReference, EmbeddingSortBuffersMatchTheMemoryEstimate) {
  const int shapes[][2] = {{2048, 257}, {1, 7}, {8192, 50304}, {130, 3}, {4096, (int)(EmbeddingBackwardScratch::kMaxCounts / 5)}};
  for (const auto& nv : shapes) {
    const EmbeddingBackwardScratch sort(nv[0], nv[1], true);
    const double allocated = 4.0 * (sort.counts.extent(0) + sort.sorted.extent(0) + sort.ids.extent(0) + sort.begin.extent(0));
    EXPECT_EQ(embedding_sort_bytes(nv[0], nv[1]), allocated) << "tokens " << nv[0] << ", vocab " << nv[1];
  }
}
