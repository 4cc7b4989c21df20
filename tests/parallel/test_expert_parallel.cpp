// Expert parallelism: at W = 1, 2, 4 ranks and every EP dividing W, the
// distributed MoE layer and the full model equal their single-rank values
// (forward output, losses, every gradient), including edge cases: an expert
// that receives no tokens, every token routed to one rank's experts, a rank
// whose slice routes nothing to some peer. Written once, run by ctest through
// mpiexec at 1, 2 and 4 ranks.
#include <mpi.h>

#include "../model/test_helpers.hpp"
#include "model/moe_layer.hpp"
#include "model/mpi_token_dispatcher.hpp"
#include "model/transformer.hpp"
#include "train/distributed.hpp"

using namespace fulcrum;
using namespace fulcrum::test;

namespace {

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
std::vector<int> ep_sizes() {  // every EP that divides W (and the 4 experts)
  std::vector<int> out;
  for (int ep : {1, 2, 4})
    if (world_size() % ep == 0) out.push_back(ep);
  return out;
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / std::max(den, 1e-300);
}

ModelShape moe_shape() {
  ModelShape s;
  s.vocab_size = 19;
  s.d_model = 8;
  s.n_layers = 2;
  s.n_heads = 2;
  s.n_kv_heads = 1;
  s.head_dim = 4;
  s.d_ffn = 12;
  s.seq_len = 6;
  s.is_moe = true;
  s.num_experts = 4;
  s.num_active = 2;
  s.num_shared = 1;
  s.d_expert = 6;
  s.first_k_dense = 1;
  s.aux_loss_coef = 0.05;
  s.z_loss_coef = 0.01;
  return s;
}

// Router modes for the layer-level edge cases.
enum class Routing { Random, AllToFirstRankExperts, ExpertStarved };

// One MoE layer, N tokens per rank: distributed vs the same tokens through a
// local layer holding every expert.
void check_moe_layer(int ep, Routing routing) {
  ModelShape s = moe_shape();
  const int N = 7, C = s.d_model, E = s.num_experts, De = s.d_expert, W = s.shared_width();
  const int rank = world_rank();
  ParallelGroups g = ParallelGroups::create(MPI_COMM_WORLD, ep);
  // identical full weights on every rank
  auto router = random_vector((long)E * C, 1, 0.8);
  auto w1 = random_vector((long)E * De * C, 2, 0.4), w3 = random_vector((long)E * De * C, 3, 0.4);
  auto w2 = random_vector((long)E * C * De, 4, 0.4);
  auto sw1 = random_vector((long)W * C, 5, 0.4), sw3 = random_vector((long)W * C, 6, 0.4);
  auto sw2 = random_vector((long)C * W, 7, 0.4);
  auto h = random_vector((long)N * C, 100 + rank);  // each rank its own tokens
  if (routing != Routing::Random) {
    for (auto& x : h) x = std::abs(x) + 0.1;  // positive features
    for (int e = 0; e < E; ++e)
      for (int c = 0; c < C; ++c) {
        // AllToFirstRankExperts: experts 0 and 1 (rank 0 of the EP group) win for
        // every token; ExpertStarved: expert 3 never wins, the others do.
        const bool favoured = routing == Routing::AllToFirstRankExperts ? e < 2 : e < 3;
        router[e * C + c] = (favoured ? 3.0 : -3.0) + 0.3 * router[e * C + c];
      }
  }
  auto R = random_vector((long)N * C, 200 + rank);
  // local reference: all experts
  ModelShape sl = s;
  MoeLayer<double> local(sl, N, "local");
  auto d_router = to_device(router), d_w1 = to_device(w1), d_w3 = to_device(w3), d_w2 = to_device(w2);
  auto d_sw1 = to_device(sw1), d_sw3 = to_device(sw3), d_sw2 = to_device(sw2);
  MoeWeights<double> wl{d_router.data(), d_w1.data(), d_w3.data(), d_w2.data(), d_sw1.data(), d_sw3.data(), d_sw2.data()};
  auto d_h = to_device(h), d_R = to_device(R);
  DeviceBuffer<double> out_l("out_l", (long)N * C), dh_l("dh_l", (long)N * C);
  DeviceBuffer<double> gr_l("gr", (long)E * C), g1_l("g1", (long)E * De * C), g3_l("g3", (long)E * De * C),
      g2_l("g2", (long)E * C * De), gs1_l("gs1", (long)W * C), gs3_l("gs3", (long)W * C), gs2_l("gs2", (long)C * W);
  MoeWeights<double> gl{gr_l.data(), g1_l.data(), g3_l.data(), g2_l.data(), gs1_l.data(), gs3_l.data(), gs2_l.data()};
  auto loss_l = local.forward(out_l.data(), d_h.data(), wl, N);
  local.backward(dh_l.data(), gl, d_R.data(), d_h.data(), wl, N, 1.0);
  // distributed: this rank holds experts [ep_rank*El, (ep_rank+1)*El)
  s.ep_size = ep;
  s.ep_rank = g.ep_rank;
  const int El = E / ep;
  const long wsz = (long)De * C;
  std::vector<double> w1s(w1.begin() + g.ep_rank * El * wsz, w1.begin() + (g.ep_rank + 1) * El * wsz);
  std::vector<double> w3s(w3.begin() + g.ep_rank * El * wsz, w3.begin() + (g.ep_rank + 1) * El * wsz);
  std::vector<double> w2s(w2.begin() + g.ep_rank * El * wsz, w2.begin() + (g.ep_rank + 1) * El * wsz);
  auto d_w1s = to_device(w1s), d_w3s = to_device(w3s), d_w2s = to_device(w2s);
  MoeWeights<double> wd{d_router.data(), d_w1s.data(), d_w3s.data(), d_w2s.data(), d_sw1.data(), d_sw3.data(), d_sw2.data()};
  MoeLayer<double> dist(s, N, ep == 1 ? "local" : "mpi_alltoall", g.ep);
  DeviceBuffer<double> out_d("out_d", (long)N * C), dh_d("dh_d", (long)N * C);
  DeviceBuffer<double> gr_d("gr", (long)E * C), g1_d("g1", El * wsz), g3_d("g3", El * wsz), g2_d("g2", El * wsz),
      gs1_d("gs1", (long)W * C), gs3_d("gs3", (long)W * C), gs2_d("gs2", (long)C * W);
  MoeWeights<double> gd{gr_d.data(), g1_d.data(), g3_d.data(), g2_d.data(), gs1_d.data(), gs3_d.data(), gs2_d.data()};
  auto loss_d = dist.forward(out_d.data(), d_h.data(), wd, N);
  dist.backward(dh_d.data(), gd, d_R.data(), d_h.data(), wd, N, 1.0);
  const char* what = routing == Routing::Random ? "random" : routing == Routing::AllToFirstRankExperts ? "all-to-rank-0" : "starved";
  EXPECT_LT(max_rel(to_host(out_d.data(), (long)N * C), to_host(out_l.data(), (long)N * C)), 1e-12) << what << " output, EP " << ep;
  EXPECT_LT(max_rel(to_host(dh_d.data(), (long)N * C), to_host(dh_l.data(), (long)N * C)), 1e-12) << what << " dh, EP " << ep;
  EXPECT_NEAR(loss_d.aux, loss_l.aux, 1e-14);
  EXPECT_NEAR(loss_d.z, loss_l.z, 1e-14);
  // expert gradients: the local layer saw only this rank's tokens for every
  // expert; the distributed shard saw every EP peer's tokens for its experts.
  // Sum the local reference over the EP group and compare with the shard.
  auto g1_ref = to_host(g1_l.data(), (long)E * wsz);
  MPI_Allreduce(MPI_IN_PLACE, g1_ref.data(), (int)g1_ref.size(), MPI_DOUBLE, MPI_SUM, g.ep);
  std::vector<double> g1_ref_shard(g1_ref.begin() + g.ep_rank * El * wsz, g1_ref.begin() + (g.ep_rank + 1) * El * wsz);
  EXPECT_LT(max_rel(to_host(g1_d.data(), El * wsz), g1_ref_shard), 1e-12) << what << " experts_w1 grad, EP " << ep;
  auto g2_ref = to_host(g2_l.data(), (long)E * wsz);
  MPI_Allreduce(MPI_IN_PLACE, g2_ref.data(), (int)g2_ref.size(), MPI_DOUBLE, MPI_SUM, g.ep);
  std::vector<double> g2_ref_shard(g2_ref.begin() + g.ep_rank * El * wsz, g2_ref.begin() + (g.ep_rank + 1) * El * wsz);
  EXPECT_LT(max_rel(to_host(g2_d.data(), El * wsz), g2_ref_shard), 1e-12) << what << " experts_w2 grad, EP " << ep;
  EXPECT_LT(max_rel(to_host(gr_d.data(), (long)E * C), to_host(gr_l.data(), (long)E * C)), 1e-12) << what << " router grad";
  if (routing == Routing::AllToFirstRankExperts) {
    EXPECT_EQ(dist.stats.assignments[2] + dist.stats.assignments[3], 0.0);
  }
  if (routing == Routing::ExpertStarved) {
    EXPECT_EQ(dist.stats.assignments[3], 0.0);
  }
  g.free();
}

// Full model: each rank's micro-batch through the sharded model, gradients
// reduced, vs one rank running all W micro-batches with every expert.
// Routing options for the full-model checks.
enum class Options { Paper, SigmoidBiasSequence, SigmoidBiasGlobal };
void apply(Options o, ModelShape& s) {
  if (o == Options::Paper) return;
  s.sigmoid_scores = true;
  s.route_scale = 2.5;
  s.bias_balancing = true;
  s.balance_scope = o == Options::SigmoidBiasSequence ? RouterOptions::Sequence : RouterOptions::Global;
}
const std::vector<double> kBias = {0.2, -0.05, 0.1, -0.25};  // moves some choices

template <class T>
void check_full_model(int ep, double tol, Options options = Options::Paper) {
  const int W = world_size(), rank = world_rank();
  ParallelGroups g = ParallelGroups::create(MPI_COMM_WORLD, ep);
  ModelShape s = moe_shape();
  apply(options, s);
  const int B = 2, Tn = s.seq_len;
  auto batch = [&](int r, std::vector<int>& tok, std::vector<int>& tgt) {
    tok.resize(B * Tn);
    tgt.resize(B * Tn);
    for (int i = 0; i < B * Tn; ++i) {
      tok[i] = (i * 5 + r * 7 + 1) % s.vocab_size;
      tgt[i] = (i * 3 + r * 11 + 2) % s.vocab_size;
    }
  };
  // reference: every rank computes it redundantly with EP = 1 on MPI_COMM_SELF;
  // the global balance-loss scope over W ranks is the micro-batch loss of all
  // W micro-batches as one (the counts of the whole global batch)
  const bool global = options == Options::SigmoidBiasGlobal;
  ModelShape rs = s;
  if (global) rs.balance_scope = RouterOptions::MicroBatch;
  Transformer<T> ref(rs, global ? W * B : B);
  ref.init_parameters(42, 0.3);
  if (options != Options::Paper) ref.set_routing_bias(std::vector<double>{kBias});
  ref.zero_grads();
  double ref_loss = 0;
  std::vector<double> ref_logits;
  std::vector<int> tok, tgt;
  if (global) {
    std::vector<int> all_tok, all_tgt;
    for (int r = 0; r < W; ++r) {
      batch(r, tok, tgt);
      all_tok.insert(all_tok.end(), tok.begin(), tok.end());
      all_tgt.insert(all_tgt.end(), tgt.begin(), tgt.end());
    }
    ref.set_batch(all_tok, all_tgt, W * B);
    ref_loss = ref.forward().total();
    auto lg = to_host(ref.logits() + (long)rank * B * Tn * s.vocab_size, (long)B * Tn * s.vocab_size);
    ref_logits.assign(lg.begin(), lg.end());
    ref.backward(T(1));
  } else {
    for (int r = 0; r < W; ++r) {
      batch(r, tok, tgt);
      ref.set_batch(tok, tgt, B);
      ref_loss += ref.forward().total() / W;
      if (r == rank) {
        auto lg = to_host(ref.logits(), (long)B * Tn * s.vocab_size);
        ref_logits.assign(lg.begin(), lg.end());
      }
      ref.backward(T(1) / W);
    }
  }
  auto ref_grads = to_host(ref.grads().data(), ref.num_parameters());
  // distributed
  s.ep_size = ep;
  s.ep_rank = g.ep_rank;
  Transformer<T> dist(s, B, ep == 1 ? "local" : "mpi_alltoall", g.ep, MPI_COMM_WORLD);
  dist.init_parameters(42, 0.3);
  if (options != Options::Paper) dist.set_routing_bias(std::vector<double>{kBias});
  dist.zero_grads();
  batch(rank, tok, tgt);
  dist.set_batch(tok, tgt, B);
  const double loss = mean_over_ranks(dist.forward().total(), MPI_COMM_WORLD);
  auto lg = to_host(dist.logits(), (long)B * Tn * s.vocab_size);
  dist.backward(T(1) / W);
  reduce_gradients(dist, g);
  auto grads = to_host(dist.grads().data(), dist.num_parameters());
  EXPECT_NEAR(loss, ref_loss, tol * std::abs(ref_loss)) << "loss, W " << W << " EP " << ep;
  EXPECT_LT(max_rel(std::vector<double>(lg.begin(), lg.end()), ref_logits), tol) << "logits";
  for (const auto& t : dist.layout()) {
    const auto& rt = ref.tensor(t.name);
    std::vector<double> a(grads.begin() + t.offset, grads.begin() + t.offset + t.size);
    std::vector<double> b(ref_grads.begin() + rt.offset + t.shard_offset,
                          ref_grads.begin() + rt.offset + t.shard_offset + t.size);
    EXPECT_LT(max_rel(a, b), tol) << "gradient of " << t.name << ", W " << W << " EP " << ep;
  }
  g.free();
}

}  // namespace

TEST(ExpertParallel, MoeLayerRandomRouting) {
  for (int ep : ep_sizes()) check_moe_layer(ep, Routing::Random);
}
TEST(ExpertParallel, MoeLayerEveryTokenToOneRank) {
  for (int ep : ep_sizes()) check_moe_layer(ep, Routing::AllToFirstRankExperts);
}
TEST(ExpertParallel, MoeLayerExpertWithoutTokens) {
  for (int ep : ep_sizes()) check_moe_layer(ep, Routing::ExpertStarved);
}
TEST(ExpertParallel, FullModelDouble) {
  for (int ep : ep_sizes()) check_full_model<double>(ep, 1e-6);
}
TEST(ExpertParallel, FullModelFloat) {
  for (int ep : ep_sizes()) check_full_model<float>(ep, 1e-4);
}
TEST(ExpertParallel, FullModelSigmoidBiasSequenceScope) {
  for (int ep : ep_sizes()) check_full_model<double>(ep, 1e-6, Options::SigmoidBiasSequence);
}
TEST(ExpertParallel, FullModelSigmoidBiasGlobalScope) {
  for (int ep : ep_sizes()) check_full_model<double>(ep, 1e-6, Options::SigmoidBiasGlobal);
}

// Aux-loss-free balancing over 12 steps (no weight change, so only the bias
// moves the routing): the bias after every step is the same at every rank
// count and EP layout as one rank running every micro-batch, and centred.
TEST(ExpertParallel, BiasBalancingIdenticalAtEveryLayout) {
  const int W = world_size(), rank = world_rank();
  ModelShape s = moe_shape();
  s.sigmoid_scores = true;
  s.bias_balancing = true;
  s.bias_update_rate = 0.02;
  s.aux_loss_coef = 0.0;
  const int B = 2, Tn = s.seq_len, steps = 12;
  auto batch = [&](int step, int r, std::vector<int>& tok, std::vector<int>& tgt) {
    tok.resize(B * Tn);
    tgt.resize(B * Tn);
    for (int i = 0; i < B * Tn; ++i) {
      tok[i] = (i * 5 + r * 7 + step * 3 + 1) % s.vocab_size;
      tgt[i] = (i * 3 + r * 11 + 2) % s.vocab_size;
    }
  };
  // the reference: one rank, W micro-batches per step
  Transformer<double> ref(s, B);
  ref.init_parameters(42, 0.3);
  std::vector<std::vector<double>> ref_bias;
  std::vector<int> tok, tgt;
  for (int step = 0; step < steps; ++step) {
    for (int r = 0; r < W; ++r) {
      batch(step, r, tok, tgt);
      ref.set_batch(tok, tgt, B);
      ref.forward();
    }
    ref.end_routing_step(MPI_COMM_SELF);
    ref_bias.push_back(ref.routing_bias());
  }
  double moved = 0;
  for (double b : ref_bias.back()) moved = std::max(moved, std::abs(b));
  EXPECT_GT(moved, 0.0);
  for (int ep : ep_sizes()) {
    ParallelGroups g = ParallelGroups::create(MPI_COMM_WORLD, ep);
    ModelShape d = s;
    d.ep_size = ep;
    d.ep_rank = g.ep_rank;
    Transformer<double> dist(d, B, ep == 1 ? "local" : "mpi_alltoall", g.ep, MPI_COMM_WORLD);
    dist.init_parameters(42, 0.3);
    for (int step = 0; step < steps; ++step) {
      batch(step, rank, tok, tgt);
      dist.set_batch(tok, tgt, B);
      dist.forward();
      dist.end_routing_step(MPI_COMM_WORLD);
      const std::vector<double> b = dist.routing_bias();
      ASSERT_EQ(b, ref_bias[step]) << "step " << step << ", W " << W << " EP " << ep;
      double sum = 0;
      for (int e = 0; e < s.num_experts; ++e) sum += b[e];
      EXPECT_NEAR(sum, 0.0, 1e-12);
    }
    g.free();
  }
}

// Memory that scales: the receive buffers hold what the exchanged counts
// require (balanced routing: each rank's own N k rows), not the worst case of
// every peer sending every token (P N k rows); they grow when routing is
// skewed, and the rows that arrive are the rows that were sent.
TEST(ExpertParallel, ReceiveBuffersSizedFromCounts) {
  const int P = world_size(), rank = world_rank();
  const int N = 64, C = 5, k = 2, E = 4 * P;
  ParallelGroups g = ParallelGroups::create(MPI_COMM_WORLD, P);
  MpiAlltoallTokenDispatcher<double> d(N, C, E, k, 0.0, g.ep);
  std::vector<double> h((long)N * C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) h[(long)n * C + c] = rank * 1000 + n + 0.01 * c;
  auto d_h = to_device(h);
  // balanced: token n's two experts lie on ranks n % P and (n + 1) % P
  std::vector<int> idx((long)N * k);
  for (int n = 0; n < N; ++n) {
    idx[2 * n] = (n % P) * 4;
    idx[2 * n + 1] = ((n + 1) % P) * 4 + 1;
  }
  auto d_idx = to_device(idx);
  d.dispatch(d_h.data(), d_idx.data(), N);
  EXPECT_EQ(d.capacity_rows(), (long)N * k) << "balanced routing needs N k rows per rank";
  if (P > 1) {
    EXPECT_LT(d.capacity_rows(), (long)P * N * k);
  }
  // skewed: everything to rank 0's first expert; rank 0 grows to P N k rows
  std::vector<int> skew((long)N * k);
  for (int a = 0; a < N * k; ++a) skew[a] = a % 2;  // experts 0 and 1, both on rank 0
  auto d_skew = to_device(skew);
  d.dispatch(d_h.data(), d_skew.data(), N);
  if (rank == 0) {
    EXPECT_GE(d.capacity_rows(), (long)P * N * k);
    // expert 0 received, source rank by source rank, every token in order
    auto in = to_host(d.permuted_input(), (long)P * N * C);
    for (int src = 0; src < P; ++src)
      for (int n = 0; n < N; ++n)
        ASSERT_EQ(in[((long)src * N + n) * C], src * 1000 + n) << "row from rank " << src << " token " << n;
  } else {
    EXPECT_EQ(d.capacity_rows(), (long)N * k) << "a rank that receives nothing does not grow";
  }
  g.free();
}
