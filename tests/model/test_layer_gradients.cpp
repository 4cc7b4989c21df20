// Finite-difference gradient checks, in double, for every dense layer:
// embedding, RMSNorm, RoPE, GQA attention, SwiGLU, LM head + cross-entropy.
// Each check uses loss = sum(out * R) for a fixed random R, so dout = R.
#include <numeric>

#include "model/layers.hpp"
#include "test_helpers.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {
double dot(const std::vector<double>& a, const std::vector<double>& b) {
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}
}  // namespace

TEST(LayerGradients, Embedding) {
  const int V = 7, C = 5, N = 9;
  std::vector<int> tokens = {0, 3, 3, 6, 1, 3, 0, 2, 5};  // repeats: several adds to one row
  auto wte = random_vector(V * C, 1);
  auto R = random_vector(N * C, 2);
  auto d_tok = to_device(tokens);
  DeviceBuffer<double> out("out", N * C), dwte("dwte", V * C);
  auto loss = [&]() {
    auto d_w = to_device(wte);
    embedding_forward<double>(out.data(), d_tok.data(), d_w.data(), N, C);
    return dot(to_host(out.data(), N * C), R);
  };
  loss();
  auto d_R = to_device(R);
  const EmbeddingBackwardScratch sort(N, V);  // the device nest's sort (allocated on device backends)
  embedding_backward<double>(dwte.data(), d_R.data(), d_tok.data(), N, C, sort);
  expect_gradient_matches("wte", wte, to_host(dwte.data(), V * C), loss);
}

TEST(LayerGradients, RMSNorm) {
  const int N = 2 * kNormRowBlock + 5, C = 8;  // three row blocks, the last one partial
  auto x = random_vector(N * C, 3), w = random_vector(C, 4), R = random_vector(N * C, 5);
  for (auto& v : w) v += 1.0;
  DeviceBuffer<double> out("out", N * C), rstd("rstd", N), dx("dx", N * C), dw("dw", C);
  DeviceBuffer<double> partial("partial", rmsnorm_backward_scratch(N, C));
  auto loss = [&]() {
    auto d_x = to_device(x), d_w = to_device(w);
    rmsnorm_forward<double>(out.data(), rstd.data(), d_x.data(), d_w.data(), N, C, 1e-5);
    return dot(to_host(out.data(), N * C), R);
  };
  loss();
  auto d_x = to_device(x), d_w = to_device(w), d_R = to_device(R);
  rmsnorm_backward<double>(dx.data(), dw.data(), partial.data(), d_R.data(), d_x.data(), d_w.data(), rstd.data(), N, C);
  expect_gradient_matches("x", x, to_host(dx.data(), N * C), loss);
  expect_gradient_matches("w", w, to_host(dw.data(), C), loss);
}

TEST(LayerGradients, RoPE) {
  const int B = 2, T = 5, H = 3, hd = 6;
  const long n = (long)B * T * H * hd;
  auto x = random_vector(n, 6), R = random_vector(n, 7);
  DeviceBuffer<double> cos_t, sin_t, out("out", n), dx("dx", n);
  rope_tables<double>(cos_t, sin_t, T, hd, 10000.0);
  auto loss = [&]() {
    auto d_x = to_device(x);
    rope_permute_forward<double>(out.data(), d_x.data(), cos_t.data(), sin_t.data(), B, T, H, hd, true);
    return dot(to_host(out.data(), n), R);
  };
  loss();
  auto d_R = to_device(R);
  rope_permute_backward<double>(dx.data(), d_R.data(), cos_t.data(), sin_t.data(), B, T, H, hd, true);
  expect_gradient_matches("x", x, to_host(dx.data(), n), loss);
  // The map is a rotation, so the norm is kept.
  loss();
  auto o = to_host(out.data(), n);
  double nx = dot(x, x), no = dot(o, o);
  EXPECT_NEAR(nx, no, 1e-10 * nx);
}

TEST(LayerGradients, GroupedQueryAttention) {
  const int B = 2, T = 6, nh = 4, nkv = 2, hd = 4;
  const long nq = (long)B * nh * T * hd, nk = (long)B * nkv * T * hd;
  auto q = random_vector(nq, 8), k = random_vector(nk, 9), v = random_vector(nk, 10);
  auto R = random_vector(nq, 11);
  DeviceBuffer<double> out("out", nq), att("att", (long)B * nh * T * T), datt("datt", (long)B * nh * T * T);
  DeviceBuffer<double> dq("dq", nq), dk("dk", nk), dv("dv", nk);
  auto loss = [&]() {
    auto d_q = to_device(q), d_k = to_device(k), d_v = to_device(v);
    attention_forward<double>(out.data(), att.data(), d_q.data(), d_k.data(), d_v.data(), B, T, nh, nkv, hd);
    return dot(to_host(out.data(), nq), R);
  };
  loss();
  auto d_q = to_device(q), d_k = to_device(k), d_v = to_device(v), d_R = to_device(R);
  attention_backward<double>(dq.data(), dk.data(), dv.data(), datt.data(), d_R.data(), att.data(),
                             d_q.data(), d_k.data(), d_v.data(), B, T, nh, nkv, hd);
  expect_gradient_matches("q", q, to_host(dq.data(), nq), loss);
  expect_gradient_matches("k", k, to_host(dk.data(), nk), loss);
  expect_gradient_matches("v", v, to_host(dv.data(), nk), loss);
  // causality: the first output position depends on the first key/value only
  auto a = to_host(att.data(), (long)B * nh * T * T);
  EXPECT_DOUBLE_EQ(a[0], 1.0);
  for (int j = 1; j < T; ++j) EXPECT_EQ(a[j], 0.0);
}

TEST(LayerGradients, SwiGLU) {
  const int N = 5, C = 6, W = 7;
  auto x = random_vector(N * C, 12), w1 = random_vector(W * C, 13, 0.5), w3 = random_vector(W * C, 14, 0.5);
  auto w2 = random_vector(C * W, 15, 0.5), R = random_vector(N * C, 16);
  DeviceBuffer<double> out("out", N * C), h1("h1", N * W), h3("h3", N * W), act("act", N * W);
  DeviceBuffer<double> dx("dx", N * C), dw1("dw1", W * C), dw3("dw3", W * C), dw2("dw2", C * W);
  DeviceBuffer<double> s1("s1", N * W), s2("s2", N * W), s3("s3", N * W);
  auto loss = [&]() {
    auto d_x = to_device(x), d1 = to_device(w1), d3 = to_device(w3), d2 = to_device(w2);
    swiglu_forward<double>(out.data(), h1.data(), h3.data(), act.data(), d_x.data(), d1.data(), d3.data(),
                           d2.data(), N, C, W, 0.0);
    return dot(to_host(out.data(), N * C), R);
  };
  loss();
  auto d_x = to_device(x), d1 = to_device(w1), d3 = to_device(w3), d2 = to_device(w2), d_R = to_device(R);
  Kokkos::deep_copy(dx, std::nan(""));  // dinp_beta = 0 overwrites dx without reading it (the dense FFN's use)
  swiglu_backward<double>(dx.data(), dw1.data(), dw3.data(), dw2.data(), s1.data(), s2.data(), s3.data(),
                          d_R.data(), h1.data(), h3.data(), act.data(), d_x.data(), d1.data(), d3.data(),
                          d2.data(), N, C, W, 0.0);
  expect_gradient_matches("x", x, to_host(dx.data(), N * C), loss);
  expect_gradient_matches("w1", w1, to_host(dw1.data(), W * C), loss);
  expect_gradient_matches("w3", w3, to_host(dw3.data(), W * C), loss);
  expect_gradient_matches("w2", w2, to_host(dw2.data(), C * W), loss);
}

// V = 11 runs only the remainder loop of the row reductions (math::row_max,
// row_sum_exp: 16 lanes), V = 37 the lanes and the remainder.
TEST(LayerGradients, LMHeadCrossEntropy) {
  for (const int V : {11, 37}) {
    SCOPED_TRACE("V = " + std::to_string(V));
    const int N = 6, C = 5;
    auto x = random_vector(N * C, 17), W = random_vector(V * C, 18);
    std::vector<int> targets = {1, 0, 10, 4, 4, 7};
    auto d_t = to_device(targets);
    DeviceBuffer<double> logits("logits", N * V), lse("lse", N), dlogits("dlogits", N * V), dx("dx", N * C),
        dW("dW", V * C);
    auto loss = [&]() {
      auto d_x = to_device(x), d_W = to_device(W);
      matmul<double>('N', 'T', N, V, C, 1.0, d_x.data(), d_W.data(), 0.0, logits.data());
      return crossentropy_forward<double>(lse.data(), logits.data(), d_t.data(), N, V);
    };
    const double l0 = loss();
    EXPECT_GT(l0, 0.0);
    auto d_x = to_device(x), d_W = to_device(W);
    crossentropy_backward<double>(dlogits.data(), logits.data(), lse.data(), d_t.data(), N, V, 1.0);
    matmul<double>('T', 'N', V, C, N, 1.0, dlogits.data(), d_x.data(), 0.0, dW.data());
    matmul<double>('N', 'N', N, C, V, 1.0, dlogits.data(), d_W.data(), 0.0, dx.data());
    expect_gradient_matches("x", x, to_host(dx.data(), N * C), loss);
    expect_gradient_matches("W", W, to_host(dW.data(), V * C), loss);
  }
}
