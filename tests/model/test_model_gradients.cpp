// Full-model finite-difference gradient check in double (dense and MoE),
// every parameter tensor sampled.
#include "model/transformer.hpp"
#include "test_helpers.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {

ModelShape tiny_shape(bool moe) {
  ModelShape s;
  s.vocab_size = 13;
  s.d_model = 8;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.head_dim = 2;
  s.d_ffn = 12;
  s.seq_len = 6;
  if (moe) {
    s.is_moe = true;
    s.num_experts = 4;
    s.num_active = 2;
    s.num_shared = 1;
    s.d_expert = 4;
    s.first_k_dense = 1;
    s.aux_loss_coef = 0.05;
    s.z_loss_coef = 0.01;
  }
  return s;
}

void check_full_model(const ModelShape& s, const std::vector<double>& bias = {}) {
  const int B = 2, T = s.seq_len;
  Transformer<double> model(s, B);
  model.init_parameters(5, 0.3);
  if (!bias.empty()) model.set_routing_bias(bias);
  // perturb the norm weights away from 1 so their gradients are generic
  auto params = to_host(model.params().data(), model.num_parameters());
  auto noise = random_vector(params.size(), 77, 0.1);
  for (const auto& t : model.layout())
    if (!t.is_matrix)
      for (long i = 0; i < t.size; ++i) params[t.offset + i] += noise[t.offset + i];
  std::vector<int> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; ++i) {
    tokens[i] = (i * 7 + 3) % s.vocab_size;
    targets[i] = (i * 5 + 1) % s.vocab_size;
  }
  model.set_batch(tokens, targets, B);
  copy_to_device(model.params().data(), params);
  model.zero_grads();
  model.clear_routing_step();
  model.forward();
  model.backward(1.0);
  auto grads = to_host(model.grads().data(), model.num_parameters());
  for (const auto& t : model.layout()) {
    std::vector<double> x(params.begin() + t.offset, params.begin() + t.offset + t.size);
    std::vector<double> g(grads.begin() + t.offset, grads.begin() + t.offset + t.size);
    auto loss = [&]() {
      std::copy(x.begin(), x.end(), params.begin() + t.offset);
      copy_to_device(model.params().data(), params);
      model.clear_routing_step();  // the global scope's counts start afresh
      return model.forward().total();
    };
    expect_gradient_matches(t.name.c_str(), x, g, loss, 2e-6, 12);
    std::copy(x.begin(), x.end(), params.begin() + t.offset);
  }
}

}  // namespace

TEST(ModelGradients, DenseFullModel) { check_full_model(tiny_shape(false)); }
TEST(ModelGradients, MoEFullModel) { check_full_model(tiny_shape(true)); }
TEST(ModelGradients, MoEFullModelSigmoidBiasSequenceScope) {
  ModelShape s = tiny_shape(true);
  s.sigmoid_scores = true;
  s.route_scale = 2.5;
  s.bias_balancing = true;
  s.balance_scope = 1;  // sequence
  check_full_model(s, {0.3, -0.2, 0.05, -0.15});
}
TEST(ModelGradients, MoEFullModelGlobalScope) {
  ModelShape s = tiny_shape(true);
  s.balance_scope = 2;  // global (one rank, one micro-batch)
  check_full_model(s);
}

TEST(ModelGradients, BackwardAccumulates) {
  // Two backward passes give twice the gradient (the += convention used by
  // gradient accumulation).
  const ModelShape s = tiny_shape(true);
  Transformer<double> model(s, 1);
  model.init_parameters(3, 0.3);
  std::vector<int> tokens(s.seq_len, 1), targets(s.seq_len, 2);
  model.set_batch(tokens, targets, 1);
  model.zero_grads();
  model.forward();
  model.backward(1.0);
  auto once = to_host(model.grads().data(), model.num_parameters());
  model.forward();
  model.backward(1.0);
  auto twice = to_host(model.grads().data(), model.num_parameters());
  for (std::size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(twice[i], 2 * once[i], 1e-12 + 1e-12 * std::abs(once[i]));
}
