// Planted-constant recovery: synthetic campaigns from known laws plus noise.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>

#include "fitting.hpp"
#include "synth.hpp"
#include "windtunnel.hpp"

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
  std::vector<fulcrum::fit::Run> runs;
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

// Law 1 exponent errors (relative) of one fit: dense eta, dense B, MoE eta, MoE B.
std::array<double, 4> law1_errors(const Law1& d, const Law1& m, const SynthTruth& t) {
  return {rel(d.eta.a.v, t.eta_dense.a.v), rel(d.batch.a.v, t.batch_dense.a.v),
          rel(m.eta.a.v, t.eta_moe.a.v), rel(m.batch.a.v, t.batch_moe.a.v)};
}

const Law1* alt(const FitResult& R, const std::string& fam) {
  for (auto& l : R.law1_alt) if (l.family == fam) return &l;
  return nullptr;
}

TEST(Recovery, Law1VertexExponentsDefault) {
  // Default method (vertex): exponents within 2% at 0.03% noise, 40 random
  // (lr, B) runs per budget; the paper's near-optimal fit is kept for comparison.
  Campaign c(40, 3e-4, 11);
  ASSERT_TRUE(c.fit.laws.law1_dense.ok());
  ASSERT_TRUE(c.fit.laws.law1_moe.ok());
  for (double e : law1_errors(c.fit.laws.law1_dense, c.fit.laws.law1_moe, c.truth)) EXPECT_LT(e, 0.02);
  const std::string moe = family_key(true, c.spec.ref_A, c.spec.ref_G, 0.5);
  ASSERT_NE(alt(c.fit, "dense"), nullptr);
  ASSERT_NE(alt(c.fit, moe), nullptr);
  int nv = 0;
  for (auto& q : c.fit.hp_opt) nv += q.vertex;
  EXPECT_EQ(nv, 14);  // 7 budgets x 2 families, no fallback
}

TEST(Recovery, Law1VertexExponentsAtLawTwoNoise) {
  // At the 0.1% noise of the Law 2/3 tests the vertex fit is not reliably
  // within 2% (Law1Survey: mean 0.7-1.3%, worst of 20 seeds 3.3% with 100 runs
  // per budget), so this check is 4%.
  Campaign c(100, 1e-3, 5);
  for (double e : law1_errors(c.fit.laws.law1_dense, c.fit.laws.law1_moe, c.truth)) EXPECT_LT(e, 0.04);
}

TEST(Recovery, Law1NearOptimalLooseCheck) {
  // The paper's estimator (power law through near-optimal points) is
  // unbiased but noisy: with 40 random runs per budget at 0.1% noise the
  // exponents land only within ~30% (doc/fit.md), so the check is loose.
  Campaign c(40, 1e-3, 5);
  FitOptions o;
  o.law1_method = Law1Method::near_optimal;
  FitResult f = fit_all(c.runs, o);
  const auto& d = f.laws.law1_dense;
  ASSERT_TRUE(d.ok());
  EXPECT_LT(rel(d.eta.a.v, c.truth.eta_dense.a.v), 0.3) << d.eta.a.v;
  EXPECT_LT(rel(d.batch.a.v, c.truth.batch_dense.a.v), 0.3) << d.batch.a.v;
  // the default fit reports the same near-optimal law as its comparison
  const Law1* a = alt(c.fit, "dense");
  ASSERT_NE(a, nullptr);
  EXPECT_DOUBLE_EQ(a->eta.a.v, d.eta.a.v);
  EXPECT_DOUBLE_EQ(a->batch.a.v, d.batch.a.v);
}

TEST(Recovery, Law1VertexFallsBackWithFewRuns) {
  // 5 runs per budget (4 random + the IsoFLOP run at the same size and the
  // optimal lr, B): below the 6 the vertex fit needs, so every budget uses its
  // near-optimal runs, with a note.
  Campaign c(4, 1e-3, 5);
  ASSERT_TRUE(c.fit.laws.law1_dense.ok());
  ASSERT_FALSE(c.fit.hp_opt.empty());
  for (auto& q : c.fit.hp_opt) EXPECT_FALSE(q.vertex);
  int n = 0;
  for (auto& s : c.fit.notes) n += s.find("the vertex fit needs 6 runs") != std::string::npos;
  EXPECT_EQ(n, 14);
}

TEST(Recovery, Law1VertexNotExtrapolated) {
  // A 3x3 grid whose sampled lr range lies above the optimum at one budget:
  // that vertex is rejected (note) and the budget falls back.
  std::vector<fulcrum::fit::Run> runs;
  for (double C : {1e19, 1e20, 1e21}) {
    double lo = std::pow(C / 1e19, -0.125), bo = 1e5 * std::pow(C / 1e19, 0.33);
    double shift = C == 1e20 ? 8.0 : 1.0;  // sampled lr: 2x..8x the optimum
    for (int i = -1; i <= 1; ++i)
      for (int j = -1; j <= 1; ++j) {
        fulcrum::fit::Run r;
        r.path = "grid/" + std::to_string(runs.size());
        r.family = "dense";
        r.M = 1e9, r.C = C, r.D = C / r.M;
        r.lr = lo * shift * std::exp2(i), r.batch = bo * std::exp2(j);
        double a = std::log2(r.lr / lo), b = std::log2(r.batch / bo);
        r.loss = 2.5 * (1 + 0.004 * a * a + 0.003 * b * b) * (1 + 1e-5 * (i + 2 * j));
        runs.push_back(r);
      }
  }
  FitResult f = fit_all(runs, FitOptions{});
  ASSERT_TRUE(f.laws.law1_dense.ok());
  ASSERT_EQ(f.hp_opt.size(), 3u);
  EXPECT_TRUE(f.hp_opt[0].vertex);
  EXPECT_FALSE(f.hp_opt[1].vertex);
  EXPECT_TRUE(f.hp_opt[2].vertex);
  int n = 0;
  for (auto& s : f.notes) n += s.find("outside the sampled range") != std::string::npos;
  EXPECT_EQ(n, 1);
}

// Survey behind the numbers in doc/fit.md (not run by ctest):
//   fit_recovery_test --gtest_also_run_disabled_tests --gtest_filter='*Law1Survey*'
TEST(Recovery, DISABLED_Law1Survey) {
  for (int runs : {40, 100})
    for (double noise : {3e-4, 1e-3}) {
      for (auto m : {Law1Method::vertex, Law1Method::near_optimal}) {
        std::array<double, 4> mx{}, mean{};
        const int n = 20;
        for (int s = 1; s <= n; ++s) {
          Campaign c(runs, noise, 100 + s);
          FitOptions o;
          o.law1_method = m;
          FitResult f = fit_all(c.runs, o);
          auto e = law1_errors(f.laws.law1_dense, f.laws.law1_moe, c.truth);
          for (int k = 0; k < 4; ++k) mx[k] = std::max(mx[k], e[k]), mean[k] += e[k] / n;
        }
        std::printf("%3d runs noise %.0e %-12s mean%% %5.2f %5.2f %5.2f %5.2f  max%% %5.2f %5.2f %5.2f %5.2f\n",
                    runs, noise, law1_method_name(m), 100 * mean[0], 100 * mean[1], 100 * mean[2],
                    100 * mean[3], 100 * mx[0], 100 * mx[1], 100 * mx[2], 100 * mx[3]);
      }
    }
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
  // Default (vertex) method at 0.1% noise and 40 runs per budget, 200
  // resamples: the intervals cover the planted exponents of both families.
  Campaign c(40, 1e-3, 5);
  FitOptions o;
  o.bootstrap = 200;
  bootstrap(c.runs, o, c.fit);
  const auto& t = c.truth;
  auto covers = [](const Value& v, double truth) {
    return std::isfinite(v.lo) && v.lo <= truth && truth <= v.hi;
  };
  const auto& d = c.fit.laws.law1_dense;
  const auto& m = c.fit.laws.law1_moe;
  EXPECT_TRUE(covers(d.eta.a, t.eta_dense.a.v)) << d.eta.a.lo << " " << d.eta.a.hi;
  EXPECT_TRUE(covers(d.batch.a, t.batch_dense.a.v)) << d.batch.a.lo << " " << d.batch.a.hi;
  EXPECT_TRUE(covers(m.eta.a, t.eta_moe.a.v)) << m.eta.a.lo << " " << m.eta.a.hi;
  EXPECT_TRUE(covers(m.batch.a, t.batch_moe.a.v)) << m.batch.a.lo << " " << m.batch.a.hi;
  // the comparison (near-optimal) law gets intervals too
  const Law1* a = alt(c.fit, "dense");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(std::isfinite(a->eta.a.lo));
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

// A shared-expert ablation beside the A and G sweeps: the EL laws have no S
// term, so points at another S must not move them (they would read as
// scatter in A and G); they are listed as "other S" with a note.
TEST(Recovery, JointELLawIgnoresOtherSharedRatios) {
  Campaign c(0, 3e-4);
  std::vector<fulcrum::fit::Run> runs = c.runs;
  int added = 0;
  for (const fulcrum::fit::Run& r : c.runs)
    if (r.is_moe && r.family != family_key(true, c.spec.ref_A, c.spec.ref_G, r.S)) {
      fulcrum::fit::Run o = r;
      o.S = 0.2;
      o.family = family_key(true, o.A, o.G, o.S);
      o.loss *= 1.03;  // a much worse family: planted EL far off the joint law
      runs.push_back(o);
      ++added;
    }
  ASSERT_GT(added, 0);
  const FitResult f = fit_all(runs, FitOptions{});
  ASSERT_TRUE(f.laws.el.ok());
  EXPECT_NEAR(f.laws.el.a.v, c.fit.laws.el.a.v, 1e-6 * std::abs(c.fit.laws.el.a.v));
  EXPECT_NEAR(f.laws.el.gamma.v, c.fit.laws.el.gamma.v, 1e-6 * std::abs(c.fit.laws.el.gamma.v));
  EXPECT_NEAR(f.laws.r2_train, c.fit.laws.r2_train, 1e-9);
  int other = 0;
  for (auto& e : f.el) {
    if (std::abs(e.S - 0.2) < 1e-9) {
      EXPECT_TRUE(e.other_S);
      EXPECT_FALSE(e.train);
      ++other;
    } else {
      EXPECT_FALSE(e.other_S);
    }
  }
  EXPECT_GT(other, 0);
  bool noted = false;
  for (auto& n : f.notes) noted |= n.find("EL laws: fitted at the shared ratio S = 0.5") != std::string::npos;
  EXPECT_TRUE(noted);
}

// ---------------------------------------------------------------- EL from fitted curves
namespace {

// A campaign whose families have their own budgets (no two equal): the dense
// and reference MoE families at the base budgets, every EL family (A, G) at
// the base budgets times 1 + 0.011 f. Every run records its budget, so none
// are merged.
std::vector<fulcrum::fit::Run> staggered_campaign(const SynthTruth& t, double noise, int& n_families) {
  SynthSpec base;
  base.noise = noise;
  base.hp_runs = 0;
  std::vector<RunRecord> all;
  SynthSpec ref = base;
  ref.el_A = {}, ref.el_G = {};
  auto recs = synth_campaign(t, ref);
  all.insert(all.end(), recs.begin(), recs.end());
  int f = 0;
  for (double A : base.el_A)
    for (double G : base.el_G) {
      SynthSpec s = base;
      ++f;
      s.dense_iso = false, s.moe_iso = false;
      s.el_A = {A}, s.el_G = {G};
      s.seed = 100 + f;
      for (double& C : s.budgets) C *= 1 + 0.011 * f;
      auto r = synth_campaign(t, s);
      all.insert(all.end(), r.begin(), r.end());
    }
  n_families = f;
  for (auto& r : all) r.config["compute_budget"] = r.config["compute_target"];
  return records_to_runs(all);
}

}  // namespace

TEST(Recovery, JointELLawFromCurvesWithStaggeredBudgets) {
  SynthTruth t;
  int nf = 0;
  auto runs = staggered_campaign(t, 3e-4, nf);
  FitResult f = fit_all(runs, FitOptions{});
  std::set<long long> budgets;
  for (auto& e : f.el_raw) budgets.insert(budget_key(e.C));
  EXPECT_GE(budgets.size(), 7u * 30);  // the runs' budgets really differ per family
  const ELJoint& e = f.laws.el;
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(f.laws.el_fixed.empty());
  EXPECT_LT(rel(e.d.v, t.el.d.v), 0.05) << e.d.v;
  EXPECT_LT(rel(e.a.v, t.el.a.v), 0.05) << e.a.v;
  EXPECT_LT(rel(e.gamma.v, t.el.gamma.v), 0.05) << e.gamma.v;
  EXPECT_LT(rel(e.beta.v, t.el.beta.v), 0.05) << e.beta.v;
  EXPECT_LT(rel(e.A_start.v, t.el.A_start.v), 0.10) << e.A_start.v;
  // EL on common reference budgets: at the busiest one every family has a point
  std::map<long long, int> per;
  for (auto& p : f.el) {
    EXPECT_TRUE(p.from_curve);
    per[budget_key(p.C)]++;
  }
  int most = 0;
  for (auto& [k, n] : per) most = std::max(most, n);
  EXPECT_EQ(most, nf);  // every EL family (the reference MoE family is one of them)
  // EL at the largest budgets reads the dense curve beyond 1e21: marked
  int nx = 0;
  for (auto& p : f.el) {
    EXPECT_EQ(p.dense_extrapolated, p.C_dense > 1.1e21 || p.C_dense < 0.9e18) << p.C_dense;
    nx += p.dense_extrapolated;
  }
  EXPECT_GT(nx, 0);
  // no point beyond a family's observed budgets (+ the 10% tolerance)
  bool refused = false;
  for (auto& n : f.notes) refused |= n.find("not evaluated, Law 3 is not extrapolated") != std::string::npos;
  EXPECT_TRUE(refused);
}

TEST(Recovery, JointELLawOneGranularityFixesGammaAndBeta) {
  Campaign c(0, 3e-4);
  SynthSpec s = c.spec;
  s.el_G = {8};  // = ref_G: one granularity in the whole campaign
  auto runs = records_to_runs(synth_campaign(c.truth, s));
  FitResult f = fit_all(runs, FitOptions{});
  const ELJoint& e = f.laws.el;
  const ELJoint& t = c.truth.el;
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(f.laws.el_term_fixed("gamma"));
  EXPECT_TRUE(f.laws.el_term_fixed("beta"));
  EXPECT_FALSE(f.laws.el_term_fixed("d"));
  EXPECT_EQ(e.gamma.v, 0.0);
  EXPECT_EQ(e.beta.v, 0.0);
  const double lg = 3;  // log2 8: a holds the G terms at that G
  EXPECT_LT(rel(e.a.v, t.a.v + t.gamma.v * lg * lg + t.beta.v * lg), 0.05) << e.a.v;
  EXPECT_LT(rel(e.d.v, t.d.v), 0.05) << e.d.v;
  EXPECT_LT(rel(e.A_start.v, t.A_start.v), 0.10) << e.A_start.v;
  ASSERT_EQ(f.laws.el_fixed_why.size(), 2u);
  EXPECT_NE(f.laws.el_fixed_why[0].find("one granularity (G = 8)"), std::string::npos) << f.laws.el_fixed_why[0];
  // the fixed terms get no bootstrap interval and no "includes 0" verdict
  FitOptions o;
  o.bootstrap = 40;
  bootstrap(runs, o, f);
  diagnose(f, runs, o);
  EXPECT_FALSE(std::isfinite(f.laws.el.gamma.lo));
  for (auto& v : f.verdicts) {
    if (v.law != "el") continue;
    for (auto& r : v.reasons) EXPECT_EQ(r.find("of gamma"), std::string::npos) << r;
  }
}

TEST(Recovery, JointELLawOneReferenceBudgetFixesD) {
  // EL evaluated at one reference budget only (--el-budgets 1e20): d is not
  // identified and fixed at 0, a holds d log10 C at 1e20; 1e23 lies beyond
  // every family's observed budgets and is refused.
  Campaign c(0, 3e-4);
  FitOptions o;
  o.el_budgets = {1e20, 1e23};
  FitResult f = fit_all(c.runs, o);
  const ELJoint& e = f.laws.el;
  const ELJoint& t = c.truth.el;
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(f.laws.el_term_fixed("d"));
  EXPECT_FALSE(f.laws.el_term_fixed("gamma"));
  EXPECT_EQ(e.d.v, 0.0);
  EXPECT_LT(rel(e.a.v, t.a.v + 20 * t.d.v), 0.05) << e.a.v;
  EXPECT_LT(rel(e.gamma.v, t.gamma.v), 0.05) << e.gamma.v;
  EXPECT_LT(rel(e.beta.v, t.beta.v), 0.05) << e.beta.v;
  EXPECT_LT(rel(e.A_start.v, t.A_start.v), 0.10) << e.A_start.v;
  for (auto& p : f.el) EXPECT_EQ(budget_key(p.C), budget_key(1e20));
  bool refused = false;
  for (auto& n : f.notes) refused |= n.find("not extrapolated") != std::string::npos;
  EXPECT_TRUE(refused);
  EXPECT_FALSE(f.el_raw.empty());  // raw per-run EL kept for comparison
}

// ---------------------------------------------------------------- extrapolation error
TEST(Recovery, LeaveLargestBudgetOutKnownTruth) {
  // Noiseless campaign 1e18..1e21: refitted without 1e21, the laws predict
  // it (Law 3 loss within 0.5%, Law 2 M_opt within 10%, EL within 10%) and
  // no verdict is flagged for extrapolation.
  Campaign c(0, 0.0);
  std::vector<std::string> notes;
  c.fit.holdout = holdout_errors(c.runs, c.fit, FitOptions{}, notes);
  const HoldOut* d3 = c.fit.holdout_of("law3", "dense");
  ASSERT_NE(d3, nullptr);
  EXPECT_EQ(budget_key(d3->C), budget_key(1e21));
  EXPECT_LT(d3->worst, 0.005);
  const HoldOut* d2 = c.fit.holdout_of("law2", "dense");
  ASSERT_NE(d2, nullptr);
  EXPECT_LT(d2->error, 0.10);
  const HoldOut* el = c.fit.holdout_of("el", "");
  ASSERT_NE(el, nullptr);
  EXPECT_EQ(el->n, 35);
  EXPECT_LT(el->error, 0.10) << el->error;
  ASSERT_NE(c.fit.holdout_of("el.compute", ""), nullptr);
  FitOptions o;
  o.bootstrap = 0;
  diagnose(c.fit, c.runs, o);
  for (auto& v : c.fit.verdicts)
    for (auto& r : v.reasons) EXPECT_EQ(r.find("refitted without the largest budget"), std::string::npos) << r;

  // The MoE runs of the largest budget 6% worse than the law: the joint EL
  // law refitted without it misses the held-out EL by far more than 25% and
  // its verdict says so.
  std::vector<fulcrum::fit::Run> bent = c.runs;
  for (auto& r : bent)
    if (r.is_moe && budget_key(r.C) == budget_key(1e21)) r.loss *= 1.06;
  FitResult f = fit_all(bent, o);
  f.holdout = holdout_errors(bent, f, o, notes);
  diagnose(f, bent, o);
  const HoldOut* eb = f.holdout_of("el", "");
  ASSERT_NE(eb, nullptr);
  EXPECT_GT(eb->error, 0.25);
  bool flagged = false;
  for (auto& v : f.verdicts)
    if (v.law == "el")
      for (auto& r : v.reasons) flagged |= r.find("refitted without the largest budget") != std::string::npos;
  EXPECT_TRUE(flagged);
  // fewer than 3 budgets: a note, no rows
  SynthSpec s = c.spec;
  s.budgets = {1e18, 1e19};
  auto two = records_to_runs(synth_campaign(c.truth, s));
  std::vector<std::string> n2;
  EXPECT_TRUE(holdout_errors(two, fit_all(two, o), o, n2).empty());
  ASSERT_FALSE(n2.empty());
  EXPECT_NE(n2[0].find("needs 3 or more"), std::string::npos);
}

// ---------------------------------------------------------------- the competing law (Zhao et al.)
TEST(Recovery, ZhaoLawFromItsOwnCampaign) {
  // Runs planted from Zhao et al.'s law with other exponents and floor than
  // the published ones (alpha 0.26, beta 0.44, eps 1.9), 0.1% noise: the fit
  // (started from the published constants) finds them and the optima.
  ZhaoLaw t = zhao_preset().zhao;
  t.alpha.v = 0.26, t.beta.v = 0.44, t.eps.v = 1.9;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nrm(0, 1e-3);
  std::vector<fulcrum::fit::Run> runs;
  for (double Na : {1e8, 3e8, 1e9})
    for (double ratio : {2.0, 4.0, 8.0})
      for (double Gz : {1.0, 2.0, 4.0, 8.0, 16.0})
        for (double S : {0.0, 0.25, 0.5})
          for (double D : {1e10, 2.5e10, 6e10}) {
            fulcrum::fit::Run r;
            r.is_moe = true;
            r.N_active = Na, r.N = Na * ratio, r.D = D, r.n_active_experts = Gz, r.S = S;
            r.A = 1 / ratio, r.G = 2 * Gz;
            r.family = family_key(true, r.A, r.G, r.S);
            r.M = 6 * Na, r.C = r.C_run = r.M * D;
            r.loss = t(r.N, Na, D, Gz, S) * std::exp(nrm(rng));
            r.path = "zhao/" + std::to_string(runs.size());
            runs.push_back(r);
          }
  FitResult f = fit_all(runs, FitOptions{});
  const ZhaoLaw& z = f.laws.zhao;
  ASSERT_TRUE(z.ok());
  EXPECT_TRUE(f.laws.zhao_fixed.empty());
  EXPECT_LT(rel(z.alpha.v, 0.26), 0.05) << z.alpha.v;
  EXPECT_LT(rel(z.beta.v, 0.44), 0.05) << z.beta.v;
  EXPECT_LT(rel(z.eps.v, 1.9), 0.03) << z.eps.v;
  EXPECT_LT(rel(z.optimal_Gz(), t.optimal_Gz()), 0.10) << z.optimal_Gz();
  EXPECT_LT(rel(z.optimal_S(), t.optimal_S()), 0.10) << z.optimal_S();
  EXPECT_LT(f.laws.zhao_mape, 0.3);
}

TEST(Recovery, ZhaoLawComparedWithTheELLawByHeldOutError) {
  // A Tian et al. campaign (the EL law is the truth; one number of active
  // experts and one S, so e, f, m, n are held): both laws predict the
  // held-out MoE losses at 1e21 on the same runs; the EL law is within 1%.
  Campaign c(0, 0.0);
  const LawSet& L = c.fit.laws;
  ASSERT_TRUE(L.zhao.ok());
  EXPECT_EQ(L.zhao_fixed.size(), 4u);
  std::vector<std::string> notes;
  auto h = holdout_errors(c.runs, c.fit, FitOptions{}, notes);
  const HoldOut *hz = nullptr, *he = nullptr;
  for (auto& x : h) {
    if (x.law == "zhao") hz = &x;
    if (x.law == "el.loss") he = &x;
  }
  ASSERT_NE(hz, nullptr);
  ASSERT_NE(he, nullptr);
  EXPECT_EQ(hz->n, he->n);
  EXPECT_EQ(hz->n, 35);
  EXPECT_LT(he->error, 0.01) << he->error;
  EXPECT_TRUE(std::isfinite(hz->error));
  // the bootstrap does not refit it (no intervals, and no cost)
  FitOptions o;
  o.bootstrap = 5;
  bootstrap(c.runs, o, c.fit);
  EXPECT_FALSE(std::isfinite(c.fit.laws.zhao.alpha.lo));
  EXPECT_TRUE(c.fit.laws.zhao.ok());
}

TEST(Recovery, JointELLawMoEAtOneBudgetFixesD) {
  // The MoE runs at one budget only (1e20; the dense family at all 7): no
  // MoE family has a Law 3, so EL comes from their runs at 1e20 (noted), d is
  // fixed at 0 and the activation and granularity part is recovered.
  Campaign c(0, 3e-4);
  std::vector<fulcrum::fit::Run> runs;
  for (auto& r : c.runs)
    if (!r.is_moe || budget_key(r.C) == budget_key(1e20)) runs.push_back(r);
  FitResult f = fit_all(runs, FitOptions{});
  const ELJoint& e = f.laws.el;
  const ELJoint& t = c.truth.el;
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(f.laws.el_fixed, (std::vector<std::string>{"d"}));
  EXPECT_LT(rel(e.a.v, t.a.v + 20 * t.d.v), 0.05) << e.a.v;
  EXPECT_LT(rel(e.gamma.v, t.gamma.v), 0.05) << e.gamma.v;
  EXPECT_LT(rel(e.beta.v, t.beta.v), 0.05) << e.beta.v;
  EXPECT_LT(rel(e.A_start.v, t.A_start.v), 0.10) << e.A_start.v;
  for (auto& p : f.el) EXPECT_FALSE(p.from_curve);
  bool noted = false;
  for (auto& n : f.notes) noted |= n.find("without a Law 3 fit") != std::string::npos;
  EXPECT_TRUE(noted);
}

TEST(Recovery, JointELLawTwoGranularitiesFixGammaOnly) {
  // Two granularities (4 and 8, the reference family's): beta is identified,
  // the quadratic term is not; gamma = 0 and the rest is fitted.
  Campaign c(0, 3e-4);
  SynthSpec s = c.spec;
  s.el_G = {4, 8};
  auto runs = records_to_runs(synth_campaign(c.truth, s));
  FitResult f = fit_all(runs, FitOptions{});
  ASSERT_TRUE(f.laws.el.ok());
  EXPECT_EQ(f.laws.el_fixed, (std::vector<std::string>{"gamma"}));
  ASSERT_EQ(f.laws.el_fixed_why.size(), 1u);
  EXPECT_NE(f.laws.el_fixed_why[0].find("two granularities"), std::string::npos);
  EXPECT_EQ(f.laws.el.gamma.v, 0.0);
  EXPECT_NE(f.laws.el.beta.v, 0.0);
  EXPECT_LT(rel(f.laws.el.d.v, c.truth.el.d.v), 0.05) << f.laws.el.d.v;
  // the law through log2 G = 2 and 3 matches the planted one at those G
  for (double G : {4.0, 8.0})
    EXPECT_LT(rel(el_joint(f.laws.el, 0.031, G, 1e20), el_joint(c.truth.el, 0.031, G, 1e20)), 0.05) << G;
}
