// Paper preset, log-base choice, laws file round trip, advisor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fcntl.h>
#include <glog/logging.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

#include "laws.hpp"
#include "runs.hpp"
#include "fitting.hpp"
#include "synth.hpp"

using namespace fulcrum::fit;

TEST(PaperPreset, ReproducesPublishedClaims) {
  LawSet p = paper_preset();
  double el = el_joint(p.el, 0.031, 12, 1e22);
  EXPECT_GT(el, 7.0) << el;
  EXPECT_LT(el, 8.0) << el;
  double Gs = el_optimal_G(p.el);
  EXPECT_GT(Gs, 10.0) << Gs;
  EXPECT_LT(Gs, 13.0) << Gs;
  // EL grows with compute and as A falls
  EXPECT_GT(el_joint(p.el, 0.031, 12, 1e23), el);
  EXPECT_GT(el_joint(p.el, 0.016, 12, 1e22), el);
}

TEST(PaperPreset, OtherLogBasesDoNotReproduceTheClaims) {
  // The reason for log10 C and log2 G (doc/fit.md): every other combination
  // of natural / base-10 / base-2 logs misses at least one claim.
  LawSet p = paper_preset();
  const auto& j = p.el;
  double ah = std::log(a_hat(0.031, j.A_start.v, j.A_max.v));
  const double bases[] = {std::exp(1.0), 10.0, 2.0};
  int ok = 0;
  for (double bC : bases)
    for (double bG : bases) {
      double lc = std::log(1e22) / std::log(bC), lg = std::log(12.0) / std::log(bG);
      double el = std::exp(ah * (j.a.v + j.d.v * lc + j.gamma.v * lg * lg + j.beta.v * lg));
      double Gs = std::pow(bG, -j.beta.v / (2 * j.gamma.v));
      bool claims = el > 7 && el < 20 && Gs > 8 && Gs < 16;
      ok += claims;
      if (claims) {
        EXPECT_EQ(bC, 10.0);
        EXPECT_EQ(bG, 2.0);
      }
    }
  EXPECT_EQ(ok, 1);
}

TEST(PaperPreset, AHatTransform) {
  // A_hat -> A_start as A -> 0; ~A + A_start when A_max is huge
  EXPECT_NEAR(a_hat(0.0, 0.0163, 5.28e16), 0.0163, 1e-12);
  EXPECT_NEAR(a_hat(0.031, 0.0163, 5.28e16), 0.0473, 1e-9);
  EXPECT_NEAR(a_hat(0.5, 0.1, 2.0), 1.0 / (1.0 / (0.5 + 1.0 / (10 - 0.5)) + 0.5), 1e-12);
}

TEST(LawsFile, RoundTrip) {
  LawSet p = paper_preset();
  p.el.d.lo = -0.08;
  p.el.d.hi = -0.07;
  Law3 l;
  l.family = "dense";
  l.alpha.v = 1500, l.beta.v = -0.16, l.b.v = 1.8, l.r2 = 0.999;
  p.law3.push_back(l);
  std::string f = testing::TempDir() + "/laws_rt.toml";
  write_laws_toml(f, p);
  LawSet q = read_laws_toml(f);
  EXPECT_EQ(q.source, "preset:paper");
  EXPECT_DOUBLE_EQ(q.el.a.v, 1.23);
  EXPECT_DOUBLE_EQ(q.el.d.lo, -0.08);
  EXPECT_DOUBLE_EQ(q.el.d.hi, -0.07);
  EXPECT_DOUBLE_EQ(q.law1_moe.eta.k.v, 1.1576);
  EXPECT_DOUBLE_EQ(q.law2_moe.M_opt.a.v, 0.5095);
  ASSERT_EQ(q.law3.size(), 1u);
  EXPECT_DOUBLE_EQ(q.law3[0].beta.v, -0.16);
  EXPECT_NEAR(el_joint(q.el, 0.031, 12, 1e22), el_joint(p.el, 0.031, 12, 1e22), 1e-9);
}

TEST(LawsFile, RejectsForeignOrMissing) {
  std::string f = testing::TempDir() + "/not_laws.toml";
  std::ofstream(f) << "format = \"something-else\"\n";
  EXPECT_THROW(read_laws_toml(f), FitError);
  EXPECT_THROW(read_laws_toml(testing::TempDir() + "/does_not_exist.toml"), FitError);
  std::ofstream(f) << "format = \"fulcrum-laws\"\nformat_version = 2\n";
  EXPECT_THROW(read_laws_toml(f), FitError);
}

TEST(Advise, PicksLowestAAndInteriorG) {
  LawSet p = paper_preset();
  Advice a = advise(p, 1e22, 0.01, 0.5, 2, 64);
  EXPECT_NEAR(a.A, 0.01, 1e-9);
  EXPECT_NEAR(a.G, el_optimal_G(p.el), 0.1);
  EXPECT_NEAR(a.EL, el_joint(p.el, a.A, a.G, 1e22), 1e-9);
  EXPECT_NEAR(a.M_opt, 0.1915 * std::pow(1e22, 0.5095), 1e-6 * a.M_opt);
  EXPECT_NEAR(a.D_opt * a.M_opt, 1e22, 1e10);
  EXPECT_NEAR(a.eta, 1.1576 * std::pow(1e22, -0.1529), 1e-12);
  // G range below the optimum: best at the upper end
  Advice b = advise(p, 1e22, 0.01, 0.5, 2, 6);
  EXPECT_NEAR(b.G, 6, 1e-6);
  EXPECT_THROW(advise(p, 1e22, 0.5, 0.1, 2, 6), FitError);
}

// Ceres logs through glog: after a fit, a glog warning (what Ceres emits on a
// failed line search) must not reach stderr (doc/fit.md, "Fit quality").
TEST(Quality, SolverLoggingStaysOffStderr) {
  fulcrum::fit::SynthSpec s;
  s.budgets = {1e18, 1e19, 1e20};
  s.hp_runs = 0;
  auto runs = fulcrum::fit::records_to_runs(fulcrum::fit::synth_campaign(fulcrum::fit::SynthTruth{}, s));
  const std::string path = testing::TempDir() + "/fulcrum_fit_stderr.txt";
  std::fflush(stderr);
  const int saved = dup(2);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  dup2(fd, 2);
  close(fd);
  fulcrum::fit::FitResult f = fulcrum::fit::fit_all(runs, fulcrum::fit::FitOptions{});
  LOG(WARNING) << "probe: a solver warning";
  LOG(ERROR) << "probe: a solver error";
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_TRUE(text.empty()) << text;
  EXPECT_TRUE(f.any());
}

// Zhao et al.'s published constants (el-method.md): their own optima and a
// loss computed by hand.
TEST(ZhaoPreset, ReproducesItsPublishedOptimaAndAHandComputedLoss) {
  const ZhaoLaw z = zhao_preset().zhao;
  ASSERT_TRUE(z.ok());
  EXPECT_NEAR(z.optimal_Gz(), 6.78, 0.01);   // sqrt(7.2446 / 0.1577); the paper: about 7
  EXPECT_NEAR(z.optimal_S(), 0.315, 0.001);  // 3.2363 / (2 * 5.1395); the paper: about 0.3
  // N = 1e9, N_a = 3e8, D = 1e10, G_z = 8 active experts, S = 0.5, by hand:
  //   prefactor  0.1577*8 + 7.2446/8 + 5.1395*0.25 - 3.2363*0.5      = 1.841100
  //   bracket    1e9^-0.2383 + 0.0013 * 3e8^-0.2383 + 0.045 * 0.3    = 0.0135194..
  //   a/N^alpha  38.051 * 1e9^-0.2383 = 0.27088..; b/D^beta 27129.05 * 1e10^-0.4694 = 0.53963..
  //   c/N_a^alpha 31.096 * 3e8^-0.2383 = 0.29734..; eps 1.8182
  const double pre = 0.1577 * 8 + 7.2446 / 8 + 5.1395 * 0.25 - 3.2363 * 0.5;
  const double bracket = std::pow(1e9, -0.2383) + 0.0013 * std::pow(3e8, -0.2383) + 0.0450 * 0.3;
  const double hand = pre * bracket + 38.051 * std::pow(1e9, -0.2383) + 27129.05 * std::pow(1e10, -0.4694) +
                      31.096 * std::pow(3e8, -0.2383) + 1.8182;
  EXPECT_NEAR(hand, 2.97453, 1e-4);
  EXPECT_NEAR(z(1e9, 3e8, 1e10, 8, 0.5), hand, 1e-12);
  // at its optima the loss of that model is about 2.97 (el-method.md)
  EXPECT_NEAR(z(1e9, 3e8, 1e10, z.optimal_Gz(), z.optimal_S()), 2.970, 0.002);
  // and the loss is smallest there
  EXPECT_LT(z(1e9, 3e8, 1e10, 6.78, 0.315), z(1e9, 3e8, 1e10, 4, 0.315));
  EXPECT_LT(z(1e9, 3e8, 1e10, 6.78, 0.315), z(1e9, 3e8, 1e10, 12, 0.315));
  EXPECT_LT(z(1e9, 3e8, 1e10, 6.78, 0.315), z(1e9, 3e8, 1e10, 6.78, 0.6));
  // the laws file keeps it
  LawSet L = zhao_preset();
  const std::string p = testing::TempDir() + "/zhao_laws.toml";
  write_laws_toml(p, L);
  LawSet R = read_laws_toml(p);
  ASSERT_TRUE(R.zhao.ok());
  EXPECT_NEAR(R.zhao(1e9, 3e8, 1e10, 8, 0.5), hand, 1e-9);
}
