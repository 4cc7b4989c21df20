// Planted-constant recovery: synthetic campaigns from known laws plus noise.
#include <gtest/gtest.h>

#include <cmath>

#include "fitting.hpp"
#include "synth.hpp"

using namespace fulcrum::fit;

namespace {

double rel(double got, double want) { return std::abs(got - want) / std::abs(want); }

// True compute-optimal-M exponent of a family, from the planted laws.
double true_M_exponent(const SynthTruth& t, bool moe, double A, double G) {
  double c1 = 1e18, c2 = 1e21;
  return std::log(t.M_opt(moe, A, G, c2) / t.M_opt(moe, A, G, c1)) / std::log(c2 / c1);
}

const Law2* law2(const FitResult& R, const std::string& fam) {
  for (auto& l : R.law2_all) if (l.family == fam) return &l;
  return nullptr;
}
const Law3* law3(const FitResult& R, const std::string& fam) {
  for (auto& l : R.laws.law3) if (l.family == fam) return &l;
  return nullptr;
}

struct Campaign {
  SynthTruth truth;
  SynthSpec spec;
  std::vector<Run> runs;
  FitResult fit;
  explicit Campaign(int hp_runs, double noise, std::uint64_t seed = 7) {
    spec.hp_runs = hp_runs;
    spec.noise = noise;
    spec.seed = seed;
    runs = records_to_runs(synth_campaign(truth, spec));
    fit = fit_all(runs, FitOptions{});
  }
};

}  // namespace

TEST(Recovery, Law2IsoFlopAndLaw3Exponents) {
  Campaign c(0, 1e-3);
  const auto& t = c.truth;
  const Law2* d = law2(c.fit, "dense");
  ASSERT_NE(d, nullptr);
  double a_true = t.beta / (t.alpha + t.beta);
  EXPECT_LT(rel(d->M_opt.a.v, a_true), 0.02) << d->M_opt.a.v << " vs " << a_true;
  EXPECT_LT(rel(d->D_opt.a.v, 1 - a_true), 0.02);
  const std::string moe = family_key(true, c.spec.ref_A, c.spec.ref_G, 0.5);
  const Law2* m = law2(c.fit, moe);
  ASSERT_NE(m, nullptr);
  double am = true_M_exponent(t, true, c.spec.ref_A, c.spec.ref_G);
  EXPECT_LT(rel(m->M_opt.a.v, am), 0.02) << m->M_opt.a.v << " vs " << am;
  // Law 3: dense L_opt(C) = E + K C^-(alpha beta / (alpha + beta))
  const Law3* l3 = law3(c.fit, "dense");
  ASSERT_NE(l3, nullptr);
  double b_true = -t.alpha * t.beta / (t.alpha + t.beta);
  EXPECT_LT(rel(l3->beta.v, b_true), 0.02) << l3->beta.v << " vs " << b_true;
  EXPECT_LT(rel(l3->b.v, t.E), 0.01);
  EXPECT_GT(l3->r2, 0.999);
  // Parametric cross-check: exponents of L(M, D)
  ASSERT_FALSE(c.fit.laws.parametric.empty());
  const Parametric& p = c.fit.laws.parametric[0];
  EXPECT_EQ(p.family, "dense");
  EXPECT_LT(rel(p.alpha.v, t.alpha), 0.05) << p.alpha.v;
  EXPECT_LT(rel(p.beta.v, t.beta), 0.05) << p.beta.v;
  EXPECT_LT(rel(p.beta.v / (p.alpha.v + p.beta.v), a_true), 0.02);
}

TEST(Recovery, Law1NearOptimalWithinInterval) {
  // The paper's estimator (power law through near-optimal points) is
  // unbiased but noisy: with 40 random runs per budget at 0.1% noise the
  // exponents land only within ~30% (see doc/fit.md).
  Campaign c(40, 1e-3, 5);
  const auto& d = c.fit.laws.law1_dense;
  ASSERT_TRUE(d.ok());
  EXPECT_LT(rel(d.eta.a.v, c.truth.eta_dense.a.v), 0.3) << d.eta.a.v;
  EXPECT_LT(rel(d.batch.a.v, c.truth.batch_dense.a.v), 0.3) << d.batch.a.v;
}

TEST(Recovery, Law1VertexExponents) {
  // Per-budget quadratic-bowl optima (--law1-vertex): exponents within 2%.
  Campaign c(40, 3e-4, 11);
  FitOptions o;
  o.law1_vertex = true;
  c.fit = fit_all(c.runs, o);
  ASSERT_TRUE(c.fit.laws.law1_dense.ok());
  ASSERT_TRUE(c.fit.laws.law1_moe.ok());
  ASSERT_TRUE(c.fit.laws.law1_dense.ok());
  ASSERT_TRUE(c.fit.laws.law1_moe.ok());
  const auto& t = c.truth;
  const auto& d = c.fit.laws.law1_dense;
  const auto& m = c.fit.laws.law1_moe;
  EXPECT_LT(rel(d.eta.a.v, t.eta_dense.a.v), 0.02) << d.eta.a.v;
  EXPECT_LT(rel(d.batch.a.v, t.batch_dense.a.v), 0.02) << d.batch.a.v;
  EXPECT_LT(rel(m.eta.a.v, t.eta_moe.a.v), 0.02) << m.eta.a.v;
  EXPECT_LT(rel(m.batch.a.v, t.batch_moe.a.v), 0.02) << m.batch.a.v;
}

TEST(Recovery, JointELLaw) {
  Campaign c(0, 3e-4);
  const ELJoint& e = c.fit.laws.el;
  const ELJoint& t = c.truth.el;
  ASSERT_TRUE(e.ok());
  EXPECT_LT(rel(e.d.v, t.d.v), 0.05) << e.d.v;
  EXPECT_LT(rel(e.a.v, t.a.v), 0.05) << e.a.v;
  EXPECT_LT(rel(e.gamma.v, t.gamma.v), 0.05) << e.gamma.v;
  EXPECT_LT(rel(e.beta.v, t.beta.v), 0.05) << e.beta.v;
  EXPECT_LT(rel(e.A_start.v, t.A_start.v), 0.10) << e.A_start.v;
  EXPECT_LT(rel(el_optimal_G(e), el_optimal_G(t)), 0.05);
  EXPECT_GT(c.fit.laws.r2_train, 0.99);
  EXPECT_GT(c.fit.laws.n_val, 0);
  EXPECT_LT(c.fit.laws.mape_val, 5.0);
  // separable laws are consistent with the joint law on their slice
  ASSERT_TRUE(c.fit.laws.el_G.ok());
  EXPECT_LT(rel(c.fit.laws.el_G.c_G.v, t.beta.v / t.gamma.v), 0.10) << c.fit.laws.el_G.c_G.v;
  ASSERT_TRUE(c.fit.laws.el_C.ok());
  double aC = t.d.v * std::log(a_hat(c.fit.laws.el_C.A, t.A_start.v, t.A_max.v));
  EXPECT_LT(rel(c.fit.laws.el_C.a_C.v, aC), 0.15) << c.fit.laws.el_C.a_C.v << " vs " << aC;
  ASSERT_TRUE(c.fit.laws.el_A.ok());
}

TEST(Recovery, NoiselessIsExact) {
  // With no noise the only errors are the IsoFLOP parabola and extrapolation.
  Campaign c(0, 0.0);
  const ELJoint& e = c.fit.laws.el;
  EXPECT_LT(rel(e.d.v, c.truth.el.d.v), 0.03);
  EXPECT_LT(rel(e.gamma.v, c.truth.el.gamma.v), 0.03);
}

TEST(Recovery, BootstrapCoversTruth1000) {
  // The one check at the full 1000 resamples.
  Campaign c(0, 1e-3, 21);
  FitOptions o;
  o.bootstrap = 1000;
  o.seed = 3;
  bootstrap(c.runs, o, c.fit);
  EXPECT_GT(c.fit.bootstrap_done, 950);
  const auto& t = c.truth;
  auto covers = [](const Value& v, double truth) {
    return std::isfinite(v.lo) && v.lo <= truth && truth <= v.hi;
  };
  const ELJoint& e = c.fit.laws.el;
  EXPECT_TRUE(covers(e.a, t.el.a.v)) << e.a.lo << " " << e.a.hi;
  EXPECT_TRUE(covers(e.d, t.el.d.v)) << e.d.lo << " " << e.d.hi;
  // gamma and beta: checked with a looser noise level in BootstrapCoversEL
  const Law2* d = law2(c.fit, "dense");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(covers(d->M_opt.a, t.beta / (t.alpha + t.beta))) << d->M_opt.a.lo << " " << d->M_opt.a.hi;
  const Law3* l3 = law3(c.fit, "dense");
  ASSERT_NE(l3, nullptr);
  EXPECT_TRUE(covers(l3->beta, -t.alpha * t.beta / (t.alpha + t.beta))) << l3->beta.lo << " " << l3->beta.hi;
  EXPECT_TRUE(covers(l3->b, t.E));
  // intervals are not degenerate
  EXPECT_GT(e.d.hi - e.d.lo, 1e-4);
}

TEST(Recovery, BootstrapCoversLaw1) {
  Campaign c(40, 1e-3, 5);
  FitOptions o;
  o.law1_vertex = true;
  c.fit = fit_all(c.runs, o);
  o.bootstrap = 200;
  bootstrap(c.runs, o, c.fit);
  const auto& l = c.fit.laws.law1_dense;
  ASSERT_TRUE(std::isfinite(l.eta.a.lo));
  EXPECT_LE(l.eta.a.lo, c.truth.eta_dense.a.v);
  EXPECT_GE(l.eta.a.hi, c.truth.eta_dense.a.v);
  EXPECT_LE(l.batch.a.lo, c.truth.batch_dense.a.v);
  EXPECT_GE(l.batch.a.hi, c.truth.batch_dense.a.v);
}

TEST(Recovery, BootstrapCoversEL) {
  Campaign c(0, 3e-4, 8);
  FitOptions o;
  o.bootstrap = 200;
  bootstrap(c.runs, o, c.fit);
  const ELJoint& e = c.fit.laws.el;
  const ELJoint& t = c.truth.el;
  for (auto [v, tv] : {std::pair{e.a, t.a.v}, {e.d, t.d.v}, {e.gamma, t.gamma.v}, {e.beta, t.beta.v},
                       {e.A_start, t.A_start.v}}) {
    EXPECT_LE(v.lo, tv);
    EXPECT_GE(v.hi, tv);
  }
}
