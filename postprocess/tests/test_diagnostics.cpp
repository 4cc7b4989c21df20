// Budget grouping (runs whose compute misses their budget, with and without
// the recorded train.compute_budget) and the fit diagnostics: a ladder whose
// minima sit at an edge, a Law 3 with a negative asymptote, a non-convex
// IsoFLOP curve; each gives its message, and `fulcrum-fit fit --strict`
// exits 4 (doc/fit.md).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "fitting.hpp"
#include "laws.hpp"
#include "runs.hpp"
#include "synth.hpp"

using namespace fulcrum::fit;
namespace fs = std::filesystem;

namespace {

// A completed dense run: size M, compute C_run, loss; budget > 0 is recorded.
RunRecord rec(double M, double C_run, double loss, double budget = 0, double d_model = 64) {
  RunRecord r;
  r.status = "completed";
  auto& c = r.config;
  c["flops_per_token"] = M;
  c["activation_ratio"] = 1;
  c["granularity"] = 0;
  c["shared_ratio"] = 0;
  c["is_moe"] = 0;
  c["lr_peak"] = 1e-3;
  c["batch_tokens"] = 8192;
  c["tokens_target"] = C_run / M;
  c["compute_target"] = C_run;
  c["d_model"] = d_model;
  if (budget > 0) c["compute_budget"] = budget;
  r.summary["final_val_loss"] = loss;
  r.summary["final_train_loss"] = loss;
  r.summary["tokens_seen"] = C_run / M;
  r.summary["flops_seen"] = C_run;
  return r;
}

// IsoFLOP ladders on the synthetic dense law: sizes M_opt(C) * 2^k, compute
// C * (1 + miss[j]) (the planner's whole batches miss the budget).
std::vector<RunRecord> ladders(const std::vector<double>& budgets, const std::vector<double>& ks,
                               const std::vector<double>& miss, bool record) {
  SynthTruth t;
  std::vector<RunRecord> out;
  for (double C : budgets)
    for (size_t j = 0; j < ks.size(); ++j) {
      double M = t.M_opt_dense(C) * std::exp2(ks[j]);
      double Cr = C * (1 + miss[j % miss.size()]);
      out.push_back(rec(M, Cr, t.loss_dense(M, Cr / M), record ? C : 0, 64 * (j + 1)));
    }
  return out;
}

const Verdict* verdict(const FitResult& R, const std::string& law, const std::string& fam = "dense") {
  for (auto& v : R.verdicts)
    if (v.law == law && v.family == fam) return &v;
  return nullptr;
}

bool has_reason(const Verdict* v, const std::string& text) {
  if (!v) return false;
  for (auto& r : v->reasons)
    if (r.find(text) != std::string::npos) return true;
  return false;
}

std::string all_reasons(const FitResult& R) {
  std::string s;
  for (auto& v : R.verdicts) {
    s += v.law + " [" + v.family + "] " + (v.fitted ? "fitted" : "not fitted") + (v.trusted ? " trusted" : "") + "\n";
    for (auto& r : v.reasons) s += "  " + r + "\n";
  }
  for (auto& n : R.notes) s += "note: " + n + "\n";
  return s;
}

FitResult fit_and_diagnose(std::vector<fulcrum::fit::Run> runs, int bootstrap_n = 0) {
  FitOptions o;
  o.bootstrap = bootstrap_n;
  ensure_grouped(runs, o.budget_tolerance);
  FitResult R = fit_all(runs, o);
  bootstrap(runs, o, R);
  diagnose(R, runs, o);
  return R;
}

const std::vector<double> kMiss = {-0.1, -0.03, 0.0, 0.04, 0.1};  // up to the planner's 10%

}  // namespace

TEST(BudgetGrouping, ComputeMissingTheBudgetByUpToTheToleranceIsOneBudget) {
  auto recs = ladders({1e18, 1e19, 1e20}, {-2, -1, 0, 1, 2}, kMiss, false);
  std::vector<fulcrum::fit::Run> runs = records_to_runs(recs);
  ASSERT_EQ(runs.size(), 15u);
  auto notes = group_budgets(runs, 0.1);
  std::map<double, int> n;
  for (auto& r : runs) n[r.C]++;
  ASSERT_EQ(n.size(), 3u) << notes.size();
  for (auto& [C, k] : n) EXPECT_EQ(k, 5) << C;
  EXPECT_NEAR(n.begin()->first, 1e18, 0.02e18);  // the centre of the cluster
  // every law sees 3 budgets: Law 2 from 3 IsoFLOP minima, near the planted exponent
  FitResult R = fit_and_diagnose(runs);
  ASSERT_EQ(R.isofits.size(), 3u) << all_reasons(R);
  ASSERT_EQ(R.law2_all.size(), 1u) << all_reasons(R);
  EXPECT_NEAR(R.law2_all[0].M_opt.a.v, 0.5423, 0.05);  // planted beta/(alpha+beta) of the synthetic law
  const Law3* l3 = R.laws.law3.empty() ? nullptr : &R.laws.law3[0];
  ASSERT_NE(l3, nullptr) << all_reasons(R);
  EXPECT_EQ(l3->n, 3);  // one point per budget (the frontier), not one per run
  // a tighter tolerance than the misses splits the budgets
  std::vector<fulcrum::fit::Run> tight = records_to_runs(recs);
  group_budgets(tight, 0.01);
  std::set<double> b;
  for (auto& r : tight) b.insert(r.C);
  EXPECT_GT(b.size(), 3u);
}

TEST(BudgetGrouping, RecordedBudgetsAndRunsWithoutThem) {
  auto with = ladders({1e18, 1e19, 1e20}, {-2, 0, 2}, kMiss, true);
  auto without = ladders({1e18, 1e19, 1e20}, {-1, 1}, {0.08, -0.09}, false);
  std::vector<RunRecord> recs = with;
  recs.insert(recs.end(), without.begin(), without.end());
  // recorded 1e19 but a compute 30% off: stays in its recorded budget, with a note
  recs.push_back(rec(1e9, 1.3e19, 3.0, 1e19));
  // no record, 50% off any budget: a budget of its own
  recs.push_back(rec(1e9, 1.5e19, 3.0));
  std::vector<fulcrum::fit::Run> runs = records_to_runs(recs);
  auto notes = group_budgets(runs, 0.1);
  std::map<double, int> n;
  for (auto& r : runs) n[r.C]++;
  ASSERT_EQ(n.size(), 4u);
  EXPECT_EQ(n[1e18], 5);  // exactly the recorded value, 3 recorded + 2 matched
  EXPECT_EQ(n[1e19], 6);
  EXPECT_EQ(n[1e20], 5);
  EXPECT_EQ(n[1.5e19], 1);
  std::string all;
  for (auto& s : notes) all += s + "\n";
  EXPECT_NE(all.find("misses its recorded budget 1e+19 by 30%"), std::string::npos) << all;
  EXPECT_NE(all.find("C=1e+19: 6 run(s), 4 with the recorded budget, 2 matched within 10%"), std::string::npos) << all;
  EXPECT_NE(all.find("C=1.5e+19: 1 run(s), no recorded budget"), std::string::npos) << all;
}

TEST(Diagnostics, LadderMinimaAtTheSmallestWidth) {
  auto recs = ladders({1e18, 1e19, 1e20}, {0, 0.5, 1, 1.5, 2}, {0.0}, true);
  FitResult R = fit_and_diagnose(records_to_runs(recs));
  const Verdict* v = verdict(R, "law2");
  ASSERT_NE(v, nullptr);
  EXPECT_FALSE(v->trusted) << all_reasons(R);
  EXPECT_TRUE(has_reason(v, "budget 1e+19: minimum at the smallest size of the ladder (d_model 64, M=")) << all_reasons(R);
  EXPECT_TRUE(has_reason(v, "extend the ladder toward smaller models")) << all_reasons(R);
  // and the mirror image
  auto big = ladders({1e18, 1e19, 1e20}, {-2, -1.5, -1, -0.5, 0}, {0.0}, true);
  FitResult B = fit_and_diagnose(records_to_runs(big));
  EXPECT_TRUE(has_reason(verdict(B, "law2"), "extend the ladder toward larger models")) << all_reasons(B);
  // a bracketing ladder is trusted
  auto ok = ladders({1e18, 1e19, 1e20, 1e21}, {-3, -2, -1, 0, 1, 2, 3}, {0.0}, true);
  FitResult K = fit_and_diagnose(records_to_runs(ok), 100);
  ASSERT_NE(verdict(K, "law2"), nullptr);
  EXPECT_TRUE(verdict(K, "law2")->trusted) << all_reasons(K);
}

// L(C) = 5 (C / 1e18)^-0.05 - 1: the best run of each budget lies on a curve
// whose asymptote is negative.
std::vector<RunRecord> negative_asymptote() {
  std::vector<RunRecord> recs;
  for (double C : {1e18, 1e19, 1e20, 1e21, 1e22}) {
    double L = 5 * std::pow(C / 1e18, -0.05) - 1;
    recs.push_back(rec(1e9, C, L, C, 64));
    recs.push_back(rec(4e9, C, L + 0.2, C, 128));  // a second, worse size
  }
  return recs;
}

TEST(Diagnostics, Law3NegativeAsymptote) {
  FitResult R = fit_and_diagnose(records_to_runs(negative_asymptote()));
  const Verdict* v = verdict(R, "law3");
  ASSERT_NE(v, nullptr);
  ASSERT_TRUE(v->fitted) << all_reasons(R);
  EXPECT_FALSE(v->trusted);
  EXPECT_TRUE(has_reason(v, "<= 0: unphysical")) << all_reasons(R);
  EXPECT_LT(R.laws.law3[0].b.v, 0);
}

// Three budgets with 3 sizes; at 1e19 the middle size is the worst (concave).
std::vector<RunRecord> non_convex() {
  auto recs = ladders({1e18, 1e20}, {-2, 0, 2}, {0.0}, true);
  SynthTruth t;
  double C = 1e19, M0 = t.M_opt_dense(C);
  double L = t.loss_dense(M0, C / M0);
  recs.push_back(rec(M0 / 4, C, L + 0.01, C, 64));
  recs.push_back(rec(M0, C, L + 0.05, C, 128));
  recs.push_back(rec(M0 * 4, C, L + 0.01, C, 192));
  return recs;
}

TEST(Diagnostics, NonConvexIsoflop) {
  FitResult R = fit_and_diagnose(records_to_runs(non_convex()));
  const Verdict* v = verdict(R, "law2");
  ASSERT_NE(v, nullptr);
  ASSERT_TRUE(v->fitted) << all_reasons(R);  // from the two convex budgets
  EXPECT_FALSE(v->trusted);
  EXPECT_TRUE(has_reason(v, "budget 1e+19: the IsoFLOP curve (loss vs log M over 3 sizes) is not convex")) << all_reasons(R);
}

// ---- the command line: messages, --strict and --require exit 4
namespace {

struct Out {
  int code;
  std::string text;
};

Out fit_cli(const std::string& args) {
  const char* b = std::getenv("FULCRUM_FIT_BIN");
  std::string log = testing::TempDir() + "/fulcrum_fit_diag.log";
  int rc = std::system(((b ? b : "fulcrum-fit") + std::string(" ") + args + " > " + log + " 2>&1").c_str());
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ss.str()};
}

std::string files(const std::string& name, std::vector<RunRecord> recs) {
  std::string d = testing::TempDir() + "/fulcrum_fit_diag_" + name;
  fs::remove_all(d);
  write_campaign(d, recs);
  return d;
}

std::string read(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST(DiagnosticsCli, StrictExitsFourWithTheReason) {
  struct Case {
    const char* name;
    std::vector<RunRecord> recs;
    const char* message;
  };
  std::vector<Case> cases = {
      {"edge", ladders({1e18, 1e19, 1e20}, {0, 0.5, 1, 1.5, 2}, {0.0}, true),
       "minimum at the smallest size of the ladder"},
      {"negb", negative_asymptote(), "<= 0: unphysical"},
      {"nonconvex", non_convex(), "is not convex"},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string d = files(c.name, c.recs);
    Out lax = fit_cli("fit " + d + " --out " + d + "_out --bootstrap 20 --no-plots");
    EXPECT_EQ(lax.code, 0) << lax.text;
    EXPECT_NE(lax.text.find("NOT TRUSTWORTHY"), std::string::npos) << lax.text;
    std::string report = read(d + "_out/report.txt");
    EXPECT_NE(report.find(c.message), std::string::npos) << report;
    // the verdicts travel with the laws file, which still reads back
    std::string laws = read(d + "_out/laws.toml");
    EXPECT_NE(laws.find("fitted = true\ntrusted = false\nreasons = ["), std::string::npos) << laws;
    EXPECT_NE(laws.find(c.message), std::string::npos) << laws;
    EXPECT_NO_THROW(read_laws_toml(d + "_out/laws.toml"));
    Out strict = fit_cli("fit " + d + " --out " + d + "_strict --bootstrap 20 --no-plots --strict");
    EXPECT_EQ(strict.code, 4) << strict.text;
    EXPECT_NE(strict.text.find("a requested law is not trustworthy"), std::string::npos) << strict.text;
    EXPECT_NE(strict.text.find(c.message), std::string::npos) << strict.text;
    EXPECT_TRUE(fs::exists(d + "_strict/report.txt"));  // outputs written first
  }
  // --require: a law that is not fitted at all (no MoE runs: no EL)
  std::string d = files("require", ladders({1e18, 1e19, 1e20, 1e21}, {-3, -2, -1, 0, 1, 2, 3}, {0.0}, true));
  Out ok = fit_cli("fit " + d + " --out " + d + "_out --bootstrap 50 --no-plots --require law2");
  EXPECT_EQ(ok.code, 0) << ok.text;
  Out el = fit_cli("fit " + d + " --out " + d + "_el --bootstrap 0 --no-plots --require law2,el");
  EXPECT_EQ(el.code, 4) << el.text;
  EXPECT_NE(el.text.find("EL joint law was requested (--require) but not fitted"), std::string::npos) << el.text;
  EXPECT_NE(fit_cli("fit " + d + " --out " + d + "_x --require law9").code, 0);
}
