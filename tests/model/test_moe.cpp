// MoE layer: finite-difference gradients (router with both aux losses, the
// whole layer, capacity dropping and renormalisation), equality with a naive
// per-token loop over experts, and a one-expert MoE equals the dense SwiGLU.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "model/moe_layer.hpp"
#include "test_helpers.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}

ModelShape moe_shape(int E, int k, int Es, int C, int De, bool renorm, double cap) {
  ModelShape s;
  s.d_model = C;
  s.is_moe = true;
  s.num_experts = E;
  s.num_active = k;
  s.num_shared = Es;
  s.d_expert = De;
  s.renormalize_topk = renorm;
  s.capacity_factor = cap;
  s.aux_loss_coef = 0.05;  // larger than the default so the terms are visible
  s.z_loss_coef = 0.01;
  return s;
}

// Host copies of one MoE layer's weights, uploaded per evaluation.
struct HostMoe {
  ModelShape s;
  std::vector<double> router, w1, w3, w2, sw1, sw3, sw2;
  HostMoe(const ModelShape& shape, std::uint64_t seed) : s(shape) {
    const int E = s.num_experts, C = s.d_model, De = s.d_expert, W = s.shared_width();
    router = random_vector((long)E * C, seed, 0.7);
    w1 = random_vector((long)E * De * C, seed + 1, 0.4);
    w3 = random_vector((long)E * De * C, seed + 2, 0.4);
    w2 = random_vector((long)E * C * De, seed + 3, 0.4);
    sw1 = random_vector((long)W * C, seed + 4, 0.4);
    sw3 = random_vector((long)W * C, seed + 5, 0.4);
    sw2 = random_vector((long)C * W, seed + 6, 0.4);
  }
  std::vector<DeviceBuffer<double>> dev;
  MoeWeights<double> upload() {
    dev = {to_device(router), to_device(w1), to_device(w3), to_device(w2),
           to_device(sw1), to_device(sw3), to_device(sw2)};
    MoeWeights<double> w;
    w.router = dev[0].data();
    w.experts_w1 = dev[1].data();
    w.experts_w3 = dev[2].data();
    w.experts_w2 = dev[3].data();
    if (s.num_shared > 0) {
      w.shared_w1 = dev[4].data();
      w.shared_w3 = dev[5].data();
      w.shared_w2 = dev[6].data();
    }
    return w;
  }
};

void check_moe_gradients(const ModelShape& s, int N) {
  const int C = s.d_model;
  HostMoe hw(s, 100);
  auto h = random_vector((long)N * C, 200);
  auto R = random_vector((long)N * C, 300);
  MoeLayer<double> layer(s, N, "local");
  DeviceBuffer<double> out("out", (long)N * C);
  auto loss = [&]() {
    auto w = hw.upload();
    auto d_h = to_device(h);
    auto l = layer.forward(out.data(), d_h.data(), w, N);
    return dot(to_host(out.data(), (long)N * C), R) + l.aux + l.z;
  };
  loss();
  // gradients
  const int E = s.num_experts, De = s.d_expert, W = s.shared_width();
  DeviceBuffer<double> g_router("g", (long)E * C), g1("g1", (long)E * De * C), g3("g3", (long)E * De * C),
      g2("g2", (long)E * C * De), gs1("gs1", (long)W * C + 1), gs3("gs3", (long)W * C + 1),
      gs2("gs2", (long)C * W + 1), dh("dh", (long)N * C);
  MoeWeights<double> g{g_router.data(), g1.data(), g3.data(), g2.data(), gs1.data(), gs3.data(), gs2.data()};
  auto w = hw.upload();
  auto d_h = to_device(h);
  auto d_R = to_device(R);
  layer.forward(out.data(), d_h.data(), w, N);
  layer.backward(dh.data(), g, d_R.data(), d_h.data(), w, N, 1.0);
  expect_gradient_matches("h", h, to_host(dh.data(), (long)N * C), loss, 1e-6);
  expect_gradient_matches("router", hw.router, to_host(g_router.data(), (long)E * C), loss, 1e-6);
  expect_gradient_matches("experts_w1", hw.w1, to_host(g1.data(), (long)E * De * C), loss, 1e-6);
  expect_gradient_matches("experts_w3", hw.w3, to_host(g3.data(), (long)E * De * C), loss, 1e-6);
  expect_gradient_matches("experts_w2", hw.w2, to_host(g2.data(), (long)E * C * De), loss, 1e-6);
  if (W > 0) {
    expect_gradient_matches("shared_w1", hw.sw1, to_host(gs1.data(), (long)W * C), loss, 1e-6);
    expect_gradient_matches("shared_w3", hw.sw3, to_host(gs3.data(), (long)W * C), loss, 1e-6);
    expect_gradient_matches("shared_w2", hw.sw2, to_host(gs2.data(), (long)C * W), loss, 1e-6);
  }
}

}  // namespace

TEST(MoeGradients, RouterWithAuxAndZLoss) {
  const int N = 12, C = 6, E = 5, k = 2;
  auto h = random_vector(N * C, 1), wr = random_vector(E * C, 2), Rw = random_vector(N * k, 3);
  Router<double> router(N, C, E, k, false, 0.05, 0.01);
  auto loss = [&]() {
    auto d_h = to_device(h), d_w = to_device(wr);
    auto l = router.forward(d_h.data(), d_w.data(), N);
    return dot(to_host(router.topk_weight(), N * k), Rw) + l.aux + l.z;
  };
  loss();
  auto d_h = to_device(h), d_w = to_device(wr), d_Rw = to_device(Rw);
  router.forward(d_h.data(), d_w.data(), N);
  DeviceBuffer<double> dh("dh", N * C), dw("dw", E * C);
  router.backward(dh.data(), dw.data(), d_Rw.data(), d_h.data(), d_w.data(), N, 1.0);
  expect_gradient_matches("h", h, to_host(dh.data(), N * C), loss);
  expect_gradient_matches("router", wr, to_host(dw.data(), E * C), loss);
}

TEST(MoeGradients, RouterLossValues) {
  // Uniform router (zero weights): p = 1/E, aux = coef (perfect balance by
  // probability mass, any counts), z = coef * log(E)^2.
  const int N = 8, C = 4, E = 4, k = 2;
  Router<double> router(N, C, E, k, false, 0.01, 0.001);
  auto d_h = to_device(random_vector(N * C, 4));
  auto d_w = to_device(std::vector<double>(E * C, 0.0));
  auto l = router.forward(d_h.data(), d_w.data(), N);
  EXPECT_NEAR(l.aux, 0.01, 1e-12);
  EXPECT_NEAR(l.z, 0.001 * std::log(4.0) * std::log(4.0), 1e-12);
  EXPECT_NEAR(l.entropy, std::log(4.0), 1e-12);
}

// --- routing options: sigmoid scores, selection bias, balance-loss scopes ---

namespace {

// Finite-difference check of one router configuration. `before` runs ahead
// of every evaluated forward (e.g. an earlier micro-batch of the step for the
// global scope); the step's counts are cleared before each evaluation.
void check_router(const RouterOptions& o, int N, int C, int E, int k, bool renorm,
                  const std::vector<double>& bias = {}, int micro_batches_before = 0) {
  auto h = random_vector(N * C, 11), wr = random_vector(E * C, 12, 0.8), Rw = random_vector(N * k, 13);
  auto h_prev = random_vector(N * C, 14);
  Router<double> router(N, C, E, k, renorm, 0.05, 0.01, o);
  if (!bias.empty()) router.set_bias(bias);
  auto run = [&](const DeviceBuffer<double>& d_h, const DeviceBuffer<double>& d_w) {
    router.end_step();
    for (int m = 0; m < micro_batches_before; ++m) {
      auto d_prev = to_device(h_prev);
      router.forward(d_prev.data(), d_w.data(), N);
    }
    return router.forward(d_h.data(), d_w.data(), N);
  };
  auto loss = [&]() {
    auto d_h = to_device(h), d_w = to_device(wr);
    auto l = run(d_h, d_w);
    return dot(to_host(router.topk_weight(), N * k), Rw) + l.aux + l.z;
  };
  loss();
  auto d_h = to_device(h), d_w = to_device(wr), d_Rw = to_device(Rw);
  run(d_h, d_w);
  DeviceBuffer<double> dh("dh", N * C), dw("dw", E * C);
  router.backward(dh.data(), dw.data(), d_Rw.data(), d_h.data(), d_w.data(), N, 1.0);
  expect_gradient_matches("h", h, to_host(dh.data(), N * C), loss);
  expect_gradient_matches("router", wr, to_host(dw.data(), E * C), loss);
}

RouterOptions sigmoid_options(double scale = 2.5) {
  RouterOptions o;
  o.sigmoid = true;
  o.route_scale = scale;
  return o;
}

}  // namespace

TEST(RouterOptions, SigmoidGradients) { check_router(sigmoid_options(), 12, 6, 5, 2, false); }
TEST(RouterOptions, SigmoidTop1Gradients) { check_router(sigmoid_options(1.0), 9, 5, 4, 1, false); }
TEST(RouterOptions, SigmoidWithBiasGradients) {
  RouterOptions o = sigmoid_options();
  o.bias = true;
  // large enough to change the choice: expert 3 is pushed in, 0 pushed out
  check_router(o, 12, 6, 5, 2, false, {-0.4, 0.05, -0.1, 0.5, -0.05});
}
TEST(RouterOptions, SoftmaxWithBiasAndScaleGradients) {
  RouterOptions o;
  o.bias = true;
  o.route_scale = 1.7;
  check_router(o, 12, 6, 5, 2, true, {0.2, -0.1, 0.05, -0.3, 0.15});
}
TEST(RouterOptions, SequenceScopeGradients) {
  RouterOptions o;
  o.scope = RouterOptions::Sequence;
  o.seq_len = 4;  // 3 sequences of 4 tokens
  check_router(o, 12, 6, 5, 2, false);
  o.sigmoid = true;
  check_router(o, 12, 6, 5, 2, false);
}
TEST(RouterOptions, GlobalScopeGradients) {
  RouterOptions o;
  o.scope = RouterOptions::Global;  // counts of an earlier micro-batch enter f
  check_router(o, 12, 6, 5, 2, false, {}, 1);
  o.sigmoid = true;
  check_router(o, 12, 6, 5, 2, false, {}, 2);
}

// Loss values of the scopes against a host computation from the router's
// own outputs (probabilities and choices).
TEST(RouterOptions, ScopeLossValues) {
  const int N = 12, C = 5, E = 4, k = 2, T = 3;
  auto h = random_vector(N * C, 21), wr = random_vector(E * C, 22);
  auto h2 = random_vector(N * C, 23);
  auto d_h = to_device(h), d_w = to_device(wr), d_h2 = to_device(h2);
  // host aux over token range [t0, t1) with counts from `cnt` over n_cnt tokens
  auto aux_of = [&](const std::vector<double>& p, const std::vector<int>& idx, int t0, int t1,
                    const std::vector<double>& cnt, double n_cnt) {
    double acc = 0;
    for (int e = 0; e < E; ++e) {
      double P = 0;
      for (int t = t0; t < t1; ++t) P += p[(long)t * E + e];
      acc += cnt[e] / (n_cnt * k) * P / (t1 - t0);
    }
    (void)idx;
    return 0.05 * E * acc;
  };
  auto counts = [&](const std::vector<int>& idx, int t0, int t1) {
    std::vector<double> c(E, 0.0);
    for (int a = t0 * k; a < t1 * k; ++a) c[idx[a]] += 1;
    return c;
  };
  {  // sequence scope: mean over the 4 sequences
    RouterOptions o;
    o.scope = RouterOptions::Sequence;
    o.seq_len = T;
    Router<double> r(N, C, E, k, false, 0.05, 0.0, o);
    auto l = r.forward(d_h.data(), d_w.data(), N);
    auto p = to_host(r.probs(), N * E);
    std::vector<int> idx = to_host(r.topk_idx(), N * k);
    double want = 0;
    for (int b = 0; b < N / T; ++b) want += aux_of(p, idx, b * T, (b + 1) * T, counts(idx, b * T, (b + 1) * T), T);
    EXPECT_NEAR(l.aux, want / (N / T), 1e-14);
    // differs from the micro-batch loss on the same tokens
    Router<double> m(N, C, E, k, false, 0.05, 0.0);
    EXPECT_GT(std::abs(m.forward(d_h.data(), d_w.data(), N).aux - l.aux), 1e-6);
  }
  {  // global scope: f from both micro-batches of the step, P from the current one
    RouterOptions o;
    o.scope = RouterOptions::Global;
    Router<double> r(N, C, E, k, false, 0.05, 0.0, o);
    r.forward(d_h2.data(), d_w.data(), N);
    std::vector<int> idx2 = to_host(r.topk_idx(), N * k);
    auto l = r.forward(d_h.data(), d_w.data(), N);
    auto p = to_host(r.probs(), N * E);
    std::vector<int> idx = to_host(r.topk_idx(), N * k);
    auto c = counts(idx, 0, N), c2 = counts(idx2, 0, N);
    for (int e = 0; e < E; ++e) c[e] += c2[e];
    EXPECT_NEAR(l.aux, aux_of(p, idx, 0, N, c, 2.0 * N), 1e-14);
    // evaluation forwards (training = false) neither count nor use the step's counts
    auto le = r.forward(d_h.data(), d_w.data(), N, false);
    EXPECT_NEAR(le.aux, aux_of(p, idx, 0, N, counts(idx, 0, N), N), 1e-14);
    double total = 0;
    for (double x : r.step_counts()) total += x;
    EXPECT_EQ(total, 2.0 * N * k);
    r.end_step();
    for (double x : r.step_counts()) EXPECT_EQ(x, 0.0);
  }
}

// Sigmoid: the top-k weights are the chosen scores normalised to 1, times
// route_scale; the bias moves the choice but not the weights.
TEST(RouterOptions, SigmoidWeightsAndBiasOnlySelects) {
  const int N = 6, C = 4, E = 5, k = 2;
  auto d_h = to_device(random_vector(N * C, 31));
  auto wr = random_vector(E * C, 32);
  auto d_w = to_device(wr);
  Router<double> r(N, C, E, k, false, 0.0, 0.0, sigmoid_options(2.5));
  r.forward(d_h.data(), d_w.data(), N);
  auto logits = to_host(r.logits(), N * E);
  auto idx = to_host(r.topk_idx(), N * k);
  auto w = to_host(r.topk_weight(), N * k);
  for (int t = 0; t < N; ++t) {
    auto sg = [&](int e) { return 1.0 / (1.0 + std::exp(-logits[t * E + e])); };
    const double s0 = sg(idx[t * k]), s1 = sg(idx[t * k + 1]);
    EXPECT_GE(s0, s1);
    for (int e = 0; e < E; ++e)
      if (e != idx[t * k] && e != idx[t * k + 1]) {
        EXPECT_LE(sg(e), s1);
      }
    EXPECT_NEAR(w[t * k], 2.5 * s0 / (s0 + s1), 1e-14);
    EXPECT_NEAR(w[t * k] + w[t * k + 1], 2.5, 1e-14);
  }
  RouterOptions o = sigmoid_options(2.5);
  o.bias = true;
  Router<double> rb(N, C, E, k, false, 0.0, 0.0, o);
  rb.set_bias({0.0, 0.0, 0.0, 0.0, 5.0});  // expert 4 always chosen first
  rb.forward(d_h.data(), d_w.data(), N);
  auto idxb = to_host(rb.topk_idx(), N * k);
  auto wb = to_host(rb.topk_weight(), N * k);
  for (int t = 0; t < N; ++t) {
    auto sg = [&](int e) { return 1.0 / (1.0 + std::exp(-logits[t * E + e])); };
    EXPECT_EQ(idxb[t * k], 4);
    EXPECT_EQ(idxb[t * k + 1], idx[t * k] == 4 ? idx[t * k + 1] : idx[t * k]);
    const double a = sg(idxb[t * k]), b = sg(idxb[t * k + 1]);
    EXPECT_NEAR(wb[t * k], 2.5 * a / (a + b), 1e-14) << "the bias is not in the weights";
  }
}

TEST(RouterOptions, BiasUpdateRule) {
  std::vector<double> b(4, 0.0);
  update_balance_bias(b, {10, 2, 4, 4}, 0.01);  // mean 5: expert 0 over, 1-3 under
  EXPECT_NEAR(b[0], -0.01 - 0.005, 1e-15);
  EXPECT_NEAR(b[1], 0.01 - 0.005, 1e-15);
  double sum = 0;
  for (double x : b) sum += x;
  EXPECT_NEAR(sum, 0.0, 1e-15);
  std::vector<double> c = b;
  update_balance_bias(c, {5, 5, 5, 5}, 0.01);  // balanced: no change
  for (int e = 0; e < 4; ++e) EXPECT_NEAR(c[e], b[e], 1e-15);
}

// A planted imbalance (every token's logits favour experts 0 and 1) is driven
// toward balance by the bias alone (no loss, no weight change); the bias stays
// centred.
TEST(RouterOptions, BiasBalancingRemovesPlantedImbalance) {
  const int N = 64, C = 4, E = 8, k = 2;
  auto h = random_vector(N * C, 41);
  for (int t = 0; t < N; ++t) h[t * C] = 1.0;  // a constant feature
  auto wr = random_vector(E * C, 42, 0.3);
  wr[0 * C] = 3.0;  // experts 0 and 1 win for (almost) every token
  wr[1 * C] = 2.5;
  auto d_h = to_device(h), d_w = to_device(wr);
  for (bool sigmoid : {true, false}) {
    RouterOptions o;
    o.sigmoid = sigmoid;
    o.bias = true;
    Router<double> r(N, C, E, k, false, 0.0, 0.0, o);
    auto violation = [&](const std::vector<double>& c) {
      double mx = 0, sum = 0;
      for (double x : c) {
        mx = std::max(mx, x);
        sum += x;
      }
      return mx / (sum / E) - 1.0;
    };
    r.forward(d_h.data(), d_w.data(), N);
    const double before = violation(r.step_counts());
    // softmax scores of the losing experts are small: a smaller step
    const double u = sigmoid ? 0.01 : 0.002;
    std::vector<double> late(E, 0.0);  // loads of the last 300 steps: the bias oscillates by u
    for (int step = 0; step < 1500; ++step) {
      r.end_step();
      r.forward(d_h.data(), d_w.data(), N);
      if (step >= 1200)
        for (int e = 0; e < E; ++e) late[e] += r.step_counts()[e];
      std::vector<double> b = r.bias();
      update_balance_bias(b, r.step_counts(), u);
      r.set_bias(b);
    }
    EXPECT_GT(before, 2.0) << "sigmoid " << sigmoid;
    const double after = violation(late);
    EXPECT_LT(after, 0.2) << "sigmoid " << sigmoid << " before " << before;
    ::testing::Test::RecordProperty(sigmoid ? "violation_after_sigmoid" : "violation_after_softmax",
                                    std::to_string(after));
    double sum = 0;
    for (double x : r.bias()) sum += x;
    EXPECT_NEAR(sum, 0.0, 1e-12);
    EXPECT_LT(r.bias()[0], 0.0);
  }
}

TEST(MoeGradients, WholeLayerSigmoidBiasSequenceScope) {
  ModelShape s = moe_shape(5, 2, 1, 6, 4, false, 0.0);
  s.sigmoid_scores = true;
  s.route_scale = 2.5;
  s.bias_balancing = true;
  s.balance_scope = RouterOptions::Sequence;
  s.seq_len = 5;
  check_moe_gradients(s, 10);
}

TEST(MoeGradients, WholeLayerWithSharedExperts) { check_moe_gradients(moe_shape(4, 2, 2, 6, 5, false, 0.0), 10); }
TEST(MoeGradients, WholeLayerNoSharedTop1) { check_moe_gradients(moe_shape(3, 1, 0, 5, 4, false, 0.0), 9); }
TEST(MoeGradients, WholeLayerRenormalized) { check_moe_gradients(moe_shape(5, 3, 1, 6, 4, true, 0.0), 10); }
TEST(MoeGradients, WholeLayerWithCapacityDropping) {
  check_moe_gradients(moe_shape(4, 2, 1, 6, 5, false, 1.0), 11);
}

// The MoE layer equals a naive per-token loop: for each token, evaluate its
// top-k experts' SwiGLUs one by one (no permutation, no grouped GEMM).
TEST(MoeEquivalence, EqualsNaivePerTokenLoop) {
  for (double cap : {0.0, 0.75}) {
    const ModelShape s = moe_shape(6, 2, 1, 8, 5, false, cap);
    const int N = 16, C = s.d_model, E = s.num_experts, k = s.num_active, De = s.d_expert;
    HostMoe hw(s, 7);
    auto h = random_vector((long)N * C, 8);
    MoeLayer<double> layer(s, N, "local");
    DeviceBuffer<double> out("out", (long)N * C);
    auto w = hw.upload();
    auto d_h = to_device(h);
    layer.forward(out.data(), d_h.data(), w, N);
    auto got = to_host(out.data(), (long)N * C);
    auto silu = [](double z) { return z / (1 + std::exp(-z)); };
    auto swiglu = [&](const double* x, const double* w1, const double* w3, const double* w2, int Wd,
                      std::vector<double>& y, double scale) {
      for (int f = 0; f < Wd; ++f) {
        double a = 0, b = 0;
        for (int c = 0; c < C; ++c) {
          a += w1[f * C + c] * x[c];
          b += w3[f * C + c] * x[c];
        }
        const double act = silu(a) * b;
        for (int c = 0; c < C; ++c) y[c] += scale * w2[c * Wd + f] * act;
      }
    };
    const long capacity = cap > 0 ? (long)std::ceil(cap * N * k / E) : (long)N * k;
    std::vector<long> used(E, 0);
    long dropped = 0;
    for (int t = 0; t < N; ++t) {
      const double* x = &h[(long)t * C];
      std::vector<double> logits(E), p(E), y(C, 0.0);
      double mx = -1e300;
      for (int e = 0; e < E; ++e) {
        logits[e] = 0;
        for (int c = 0; c < C; ++c) logits[e] += hw.router[e * C + c] * x[c];
        mx = std::max(mx, logits[e]);
      }
      double sum = 0;
      for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(logits[e] - mx));
      for (auto& v : p) v /= sum;
      std::vector<int> order(E);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
      for (int j = 0; j < k; ++j) {
        const int e = order[j];
        if (used[e]++ >= capacity) {
          ++dropped;
          continue;
        }
        swiglu(x, &hw.w1[(long)e * De * C], &hw.w3[(long)e * De * C], &hw.w2[(long)e * C * De], De, y, p[e]);
      }
      swiglu(x, hw.sw1.data(), hw.sw3.data(), hw.sw2.data(), s.shared_width(), y, 1.0);
      for (int c = 0; c < C; ++c) EXPECT_NEAR(got[(long)t * C + c], y[c], 1e-12) << "token " << t << " cap " << cap;
    }
    EXPECT_DOUBLE_EQ(layer.stats.dropped, (double)dropped);
    if (cap > 0) {
      EXPECT_GT(dropped, 0) << "the capacity case must actually drop tokens";
    }
  }
}

// One expert, top-1, no shared expert: p = 1, so the layer is the dense SwiGLU.
TEST(MoeEquivalence, OneExpertTop1EqualsDenseSwiGLU) {
  const ModelShape s = moe_shape(1, 1, 0, 8, 12, false, 0.0);
  const int N = 10, C = s.d_model, W = s.d_expert;
  HostMoe hw(s, 11);
  auto h = random_vector((long)N * C, 12);
  MoeLayer<double> layer(s, N, "local");
  DeviceBuffer<double> out("out", (long)N * C), dense("dense", (long)N * C);
  DeviceBuffer<double> h1("h1", N * W), h3("h3", N * W), act("act", N * W);
  auto w = hw.upload();
  auto d_h = to_device(h);
  auto l = layer.forward(out.data(), d_h.data(), w, N);
  swiglu_forward<double>(dense.data(), h1.data(), h3.data(), act.data(), d_h.data(), w.experts_w1,
                         w.experts_w3, w.experts_w2, N, C, W, 0.0);
  auto a = to_host(out.data(), (long)N * C), b = to_host(dense.data(), (long)N * C);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-13);
  EXPECT_NEAR(l.aux, s.aux_loss_coef, 1e-14);  // E * f * P = 1 * 1 * 1
}

// The routed experts' grouped products (one grouped call per weight matrix,
// one SwiGLU kernel over all rows) against the per-expert SwiGLU the layer
// used before, on every gemm backend and precision of this build: the same
// products (each run alone), so forward and backward must be bit-identical.
// Experts with no rows (first, middle, last) have no product.
TEST(MoeExperts, GroupedProductsEqualPerExpertSwiGLUOnEveryBackend) {
  const int C = 24, De = 20;
  const std::vector<int> rows_per_expert{0, 5, 17, 0, 1, 9, 0};
  const int El = (int)rows_per_expert.size();
  const long rows = std::accumulate(rows_per_expert.begin(), rows_per_expert.end(), 0L);
  const long wsz = (long)De * C;
  std::vector<GemmChoice> choices;
  for (const auto& b : available_gemm_backends()) {
    choices.push_back(resolve_gemm(b, "fp32"));
    if (b != "kokkos" && native_bf16(b)) choices.push_back(resolve_gemm(b, "bf16"));
  }
  auto floats = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  for (const GemmChoice& choice : choices) {
    SCOPED_TRACE(choice.backend + std::string(" ") + precision_name(choice.precision));
    ScopedGemm scope(choice);
    auto inp = to_device(floats(random_vector(rows * C, 1)));
    auto dout = to_device(floats(random_vector(rows * C, 2)));
    auto w1 = to_device(floats(random_vector(El * wsz, 3, 0.2)));
    auto w3 = to_device(floats(random_vector(El * wsz, 4, 0.2)));
    auto w2 = to_device(floats(random_vector(El * wsz, 5, 0.2)));
    const auto g0 = floats(random_vector(El * wsz, 6));  // gradients accumulate (+=) onto these
    // grouped
    Experts<float> experts(3, C, De);  // a small hint: forward must grow its buffers
    DeviceBuffer<float> out("out", rows * C), dinp("dinp", rows * C), scratch("scratch", experts.backward_scratch(rows));
    auto dw1 = to_device(g0), dw3 = to_device(g0), dw2 = to_device(g0);
    Kokkos::deep_copy(out, std::nanf(""));  // both are overwritten (beta = 0), never read
    Kokkos::deep_copy(dinp, std::nanf(""));
    experts.forward(out.data(), inp.data(), w1.data(), w3.data(), w2.data(), rows_per_expert);
    experts.backward(dinp.data(), dw1.data(), dw3.data(), dw2.data(), dout.data(), inp.data(), w1.data(), w3.data(),
                     w2.data(), rows_per_expert, scratch.data());
    // per expert, as the layer did before (the per-expert SwiGLU of
    // layers.hpp: zeroed dinp, += per product), each product issued alone as
    // a one-problem grouped call so it runs the same backend kernel
    DeviceBuffer<float> ref_out("ref_out", rows * C), ref_dinp("ref_dinp", rows * C);
    DeviceBuffer<float> h1("h1", rows * De), h3("h3", rows * De), act("act", rows * De);
    DeviceBuffer<float> dact("dact", rows * De), dh1("dh1", rows * De), dh3("dh3", rows * De);
    auto rw1 = to_device(g0), rw3 = to_device(g0), rw2 = to_device(g0);
    auto product = [](char ta, char tb, int M, int N, int K, const float* A, const float* B, float beta, float* Cm) {
      grouped_matmul<float>(ta, tb, 1.0f, beta, {MatmulProblem<float>{M, N, K, A, B, Cm}});
    };
    long row = 0;
    for (int e = 0; e < El; ++e) {
      const int n = rows_per_expert[e];
      if (n > 0) {
        const float *x = inp.data() + row * C, *dy = dout.data() + row * C;
        const float *W1 = w1.data() + e * wsz, *W3 = w3.data() + e * wsz, *W2 = w2.data() + e * wsz;
        float *H1 = h1.data() + row * De, *H3 = h3.data() + row * De, *Act = act.data() + row * De;
        float *dAct = dact.data() + row * De, *dH1 = dh1.data() + row * De, *dH3 = dh3.data() + row * De;
        product('N', 'T', n, De, C, x, W1, 0.0f, H1);
        product('N', 'T', n, De, C, x, W3, 0.0f, H3);
        swiglu_activation_forward<float>(Act, H1, H3, (long)n * De);
        product('N', 'T', n, C, De, Act, W2, 0.0f, ref_out.data() + row * C);
        product('T', 'N', C, De, n, dy, Act, 1.0f, rw2.data() + e * wsz);
        product('N', 'N', n, De, C, dy, W2, 0.0f, dAct);
        swiglu_activation_backward<float>(dH1, dH3, dAct, H1, H3, (long)n * De);
        product('T', 'N', De, C, n, dH1, x, 1.0f, rw1.data() + e * wsz);
        product('T', 'N', De, C, n, dH3, x, 1.0f, rw3.data() + e * wsz);
        product('N', 'N', n, C, De, dH1, W1, 1.0f, ref_dinp.data() + row * C);
        product('N', 'N', n, C, De, dH3, W3, 1.0f, ref_dinp.data() + row * C);
      }
      row += n;
    }
    auto same = [](const char* what, const float* a, const float* b, std::size_t n) {
      const auto x = to_host(a, n), y = to_host(b, n);
      std::size_t differ = 0;
      for (std::size_t i = 0; i < n; ++i) differ += x[i] != y[i];
      EXPECT_EQ(differ, 0u) << what << ": " << differ << " of " << n << " entries differ";
    };
    same("out", out.data(), ref_out.data(), rows * C);
    same("dinp", dinp.data(), ref_dinp.data(), rows * C);
    same("dw1", dw1.data(), rw1.data(), El * wsz);
    same("dw3", dw3.data(), rw3.data(), El * wsz);
    same("dw2", dw2.data(), rw2.data(), El * wsz);
  }
}

TEST(MoeDispatch, UnknownDispatcherListsValidOnes) {
  const ModelShape s = moe_shape(4, 2, 0, 4, 4, false, 0.0);
  try {
    MoeLayer<double> layer(s, 4, "all2all");
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("all2all"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("local"), std::string::npos);
  }
}

TEST(MoeDispatch, EveryTokenToOneExpertAndIdleExperts) {
  // A router that sends every token to expert 2 first: other experts idle.
  const ModelShape s = moe_shape(4, 1, 0, 4, 3, false, 0.0);
  const int N = 6, C = 4;
  HostMoe hw(s, 21);
  std::fill(hw.router.begin(), hw.router.end(), 0.0);
  for (int c = 0; c < C; ++c) hw.router[2 * C + c] = 5.0;
  std::vector<double> h((long)N * C, 1.0);
  MoeLayer<double> layer(s, N, "local");
  DeviceBuffer<double> out("out", (long)N * C);
  auto w = hw.upload();
  auto d_h = to_device(h);
  layer.forward(out.data(), d_h.data(), w, N);
  EXPECT_EQ(layer.stats.assignments[2], N);
  EXPECT_EQ(layer.stats.assignments[0] + layer.stats.assignments[1] + layer.stats.assignments[3], 0);
}

TEST(MoeDispatch, StatisticsCountTrainingForwardsOnly) {
  // assignments come from the dispatcher's counts (before capacity dropping);
  // with collection off (evaluation) nothing is added.
  const ModelShape s = moe_shape(4, 2, 0, 4, 3, false, 0.5);
  const int N = 8, C = 4;
  HostMoe hw(s, 31);
  MoeLayer<double> layer(s, N, "local");
  DeviceBuffer<double> out("out", (long)N * C);
  auto w = hw.upload();
  auto d_h = to_device(random_vector((long)N * C, 32));
  layer.forward(out.data(), d_h.data(), w, N);
  double total = 0;
  for (double a : layer.stats.assignments) total += a;
  EXPECT_EQ(total, N * 2.0) << "every top-k assignment, dropped ones included";
  EXPECT_GT(layer.stats.dropped, 0.0);
  layer.collect_statistics = false;
  layer.forward(out.data(), d_h.data(), w, N);
  double after = 0;
  for (double a : layer.stats.assignments) after += a;
  EXPECT_EQ(after, total);
  EXPECT_EQ(layer.stats.token_count, N);
}

namespace {

// The dispatcher's counting sort against a host loop over assignments in
// order: rows grouped by expert, assignment order within an expert, the
// first `capacity` of each expert kept.
struct HostDispatch {
  std::vector<int> kept, requested, offset, position;
};
HostDispatch host_dispatch(const std::vector<int>& idx, int E, long capacity) {
  HostDispatch r;
  r.kept.assign(E, 0);
  r.requested.assign(E, 0);
  std::vector<int> rank(idx.size());
  for (std::size_t a = 0; a < idx.size(); ++a) rank[a] = r.requested[idx[a]]++;
  for (int e = 0; e < E; ++e) r.kept[e] = (int)std::min<long>(r.requested[e], capacity);
  r.offset.assign(E + 1, 0);
  for (int e = 0; e < E; ++e) r.offset[e + 1] = r.offset[e] + r.kept[e];
  for (std::size_t a = 0; a < idx.size(); ++a)
    r.position.push_back(rank[a] < capacity ? r.offset[idx[a]] + rank[a] : -1);
  return r;
}

void check_dispatch_scan(const std::vector<int>& idx, int N, int k, int E, double capacity_factor) {
  const int C = 3;
  LocalTokenDispatcher<double> d(N, C, E, k, capacity_factor);
  std::vector<double> h((long)N * C);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = 0.25 * (double)i;
  auto d_h = to_device(h);
  DeviceBuffer<int> d_idx("idx", (long)N * k);
  Kokkos::deep_copy(d_idx, Kokkos::View<const int*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(
                               idx.data(), idx.size()));
  d.dispatch(d_h.data(), d_idx.data(), N);
  const long NK = (long)N * k;
  const long capacity = capacity_factor > 0 ? (long)std::ceil(capacity_factor * NK / E) : NK;
  const HostDispatch want = host_dispatch(idx, E, capacity);
  EXPECT_EQ(d.tokens_per_local_expert(), want.kept);
  EXPECT_EQ(d.assignments_per_expert(), want.requested);
  long dropped = 0;
  for (int e = 0; e < E; ++e) dropped += want.requested[e] - want.kept[e];
  EXPECT_EQ(d.dropped_assignments(), dropped);
  std::vector<int> pos(NK);
  Kokkos::deep_copy(Kokkos::View<int*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(pos.data(), NK),
                    Kokkos::View<const int*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(d.positions(), NK));
  EXPECT_EQ(pos, want.position);
  // the permuted rows are the tokens' rows at those positions
  const std::vector<double> in = to_host(d.permuted_input(), (long)want.offset[E] * C);
  for (long a = 0; a < NK; ++a)
    if (want.position[a] >= 0) {
      for (int c = 0; c < C; ++c) ASSERT_EQ(in[(long)want.position[a] * C + c], h[(a / k) * C + c]) << a;
    }
}

}  // namespace

TEST(MoeDispatch, CountingSortMatchesHostReference) {
  // more assignments than one block of the scan (64), an expert with no
  // tokens (3), one with most; then with capacity dropping
  const int N = 100, k = 2, E = 5;
  std::vector<int> idx((long)N * k);
  std::uint64_t z = 7;
  for (long a = 0; a < (long)N * k; ++a) {
    z = z * 6364136223846793005ULL + 1442695040888963407ULL;
    const int r = (int)((z >> 33) % 10);
    idx[a] = r < 5 ? 1 : r < 7 ? 0 : r < 9 ? 2 : 4;  // expert 3 never chosen
  }
  check_dispatch_scan(idx, N, k, E, 0.0);
  check_dispatch_scan(idx, N, k, E, 1.0);
  check_dispatch_scan(idx, N, k, E, 0.3);
  // every assignment to the last expert; a single token
  check_dispatch_scan(std::vector<int>((long)N * k, E - 1), N, k, E, 0.0);
  check_dispatch_scan({2, 0}, 1, 2, E, 0.0);
}

TEST(RouterDevice, LossesStayOnTheDeviceAndMatchTheHostRead) {
  // forward_device leaves the losses in device memory; forward() reads the
  // same numbers; the step counts sum every training assignment.
  const int N = 10, C = 4, E = 4, k = 2;
  RouterOptions o;
  o.scope = RouterOptions::Sequence;
  o.seq_len = 5;
  Router<double> r(N, C, E, k, false, 0.05, 0.01, o);
  auto d_h = to_device(random_vector(N * C, 41));
  auto d_w = to_device(random_vector(E * C, 42));
  r.forward_device(d_h.data(), d_w.data(), N);
  std::vector<double> dev(Router<double>::kLossSlots);
  Kokkos::deep_copy(Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(dev.data(), dev.size()),
                    Kokkos::View<const double*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(r.device_losses(), dev.size()));
  const auto l = r.forward(d_h.data(), d_w.data(), N);
  EXPECT_EQ(dev[Router<double>::kAux], l.aux);
  EXPECT_EQ(dev[Router<double>::kZ], l.z);
  EXPECT_EQ(dev[Router<double>::kEntropy], l.entropy);
  EXPECT_EQ(dev[Router<double>::kMargin], l.margin);
  // the aux loss from the counts and mean probabilities, per sequence, on the host
  const std::vector<int> idx = [&] {
    std::vector<int> v(N * k);
    Kokkos::deep_copy(Kokkos::View<int*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(v.data(), v.size()),
                      Kokkos::View<const int*, MemSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(r.topk_idx(), v.size()));
    return v;
  }();
  const std::vector<double> p = to_host(r.probs(), N * E);
  double aux = 0;
  for (int g = 0; g < 2; ++g) {
    double acc = 0;
    for (int e = 0; e < E; ++e) {
      int c = 0;
      double pm = 0;
      for (int t = g * 5; t < g * 5 + 5; ++t) {
        for (int j = 0; j < k; ++j) c += idx[t * k + j] == e;
        pm += p[t * E + e];
      }
      acc += (c / 10.0) * (pm / 5);
    }
    aux += acc;
  }
  EXPECT_NEAR(l.aux, 0.05 * E * aux / 2, 1e-12);
  double total = 0;
  for (double x : r.step_counts()) total += x;
  EXPECT_EQ(total, 2.0 * N * k) << "two training forwards";
}
