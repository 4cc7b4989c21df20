// MoE layer: finite-difference gradients (router with both aux losses, the
// whole layer, capacity dropping and renormalisation), equality with a naive
// per-token loop over experts, and a one-expert MoE equals the dense SwiGLU.
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
    if (cap > 0) EXPECT_GT(dropped, 0) << "the capacity case must actually drop tokens";
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
