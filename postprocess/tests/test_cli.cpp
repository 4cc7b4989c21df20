// The fulcrum-fit binary end to end, including the bad-input contract:
// a clear message and a non-zero exit where nothing can be fitted.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "laws.hpp"
#include "synth.hpp"

using namespace fulcrum::fit;
namespace fs = std::filesystem;

namespace {

std::string bin() {
  const char* b = std::getenv("FULCRUM_FIT_BIN");
  return b ? b : "fulcrum-fit";
}

struct Out {
  int code;
  std::string text;
};

Out run(const std::string& args) {
  std::string log = testing::TempDir() + "/fulcrum_fit_cli.log";
  int rc = std::system((bin() + " " + args + " > " + log + " 2>&1").c_str());
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ss.str()};
}

std::string campaign(const std::string& name, SynthSpec s,
                     void (*edit)(std::vector<RunRecord>&) = nullptr) {
  std::string d = testing::TempDir() + "/fulcrum_fit_cli_" + name;
  fs::remove_all(d);
  auto recs = synth_campaign(SynthTruth{}, s);
  if (edit) edit(recs);
  write_campaign(d, recs);
  return d;
}

SynthSpec small() {
  SynthSpec s;
  s.budgets = {1e18, 1e19, 1e20, 1e21};
  s.iso_sizes = 5;
  s.hp_runs = 6;
  s.el_A = {0.016, 0.0625, 0.25};
  s.el_G = {2, 8, 16};
  return s;
}

}  // namespace

TEST(Cli, PredictPaperPreset) {
  Out o = run("predict --preset paper --A 0.031 --G 12 --C 1e22");
  ASSERT_EQ(o.code, 0) << o.text;
  auto p = o.text.find("EL = ");
  ASSERT_NE(p, std::string::npos) << o.text;
  double el = std::stod(o.text.substr(p + 5));
  EXPECT_GT(el, 7.0);
  EXPECT_NE(o.text.find("compute-optimal M"), std::string::npos);
  Out a = run("advise --preset paper --C 1e22 --A-range 0.01,0.5 --G-range 2,64");
  ASSERT_EQ(a.code, 0) << a.text;
  EXPECT_NE(a.text.find("G = 11.3"), std::string::npos) << a.text;
  Out g = run("grid --preset paper --A-range 0.01,0.5 --G-range 2,32 --C 1e20,1e22 --nA 3 --nG 5");
  ASSERT_EQ(g.code, 0) << g.text;
  EXPECT_NE(g.text.find("C = 1e+22"), std::string::npos) << g.text;
  EXPECT_NE(run("predict --A 0.031 --G 12 --C 1e22").code, 0);
  EXPECT_NE(run("predict --preset nope --A 0.031 --G 12 --C 1e22").code, 0);
  EXPECT_NE(run("predict --preset paper --A 2 --G 12 --C 1e22").code, 0);
}

TEST(Cli, FitThenPredictFromLawsFile) {
  std::string d = campaign("ok", small());
  std::string out = d + "_out";
  Out f = run("fit " + d + " --out " + out + " --bootstrap 30 --seed 4");
  ASSERT_EQ(f.code, 0) << f.text;
  for (const char* n : {"laws.toml", "fit.h5", "report.txt", "law1_hyperparameters.png",
                        "law2_isoflop.png", "law3_loss_vs_compute.png", "el_vs_A.png", "el_vs_G.png",
                        "el_vs_C.png", "el_contour.png"})
    EXPECT_TRUE(fs::exists(out + "/" + n)) << n;
  LawSet L = read_laws_toml(out + "/laws.toml");
  EXPECT_TRUE(L.el.ok());
  EXPECT_TRUE(std::isfinite(L.el.d.lo));
  Out p = run("predict --laws " + out + "/laws.toml --A 0.031 --G 12 --C 1e21");
  ASSERT_EQ(p.code, 0) << p.text;
  EXPECT_NE(p.text.find("EL = "), std::string::npos);
  Out a = run("advise --laws " + out + "/laws.toml --C 1e21 --A-range 0.02,0.3 --G-range 2,16");
  EXPECT_EQ(a.code, 0) << a.text;
}

TEST(Cli, NoFiles) {
  Out o = run("fit --out " + testing::TempDir() + "/x");
  EXPECT_NE(o.code, 0);
  EXPECT_NE(o.text.find("no input files"), std::string::npos) << o.text;
  std::string e = testing::TempDir() + "/fulcrum_fit_empty_dir";
  fs::create_directories(e);
  o = run("fit " + e + " --out " + e + "_out");
  EXPECT_NE(o.code, 0);
  EXPECT_NE(o.text.find("no run files found"), std::string::npos) << o.text;
}

TEST(Cli, OneBudgetOnly) {
  SynthSpec s = small();
  s.budgets = {1e19};
  std::string d = campaign("onebudget", s);
  Out o = run("fit " + d + " --out " + d + "_out --bootstrap 0");
  EXPECT_EQ(o.code, 3) << o.text;
  EXPECT_NE(o.text.find("only one compute budget"), std::string::npos) << o.text;
}

TEST(Cli, EveryRunDiverged) {
  SynthSpec s = small();
  s.diverged_fraction = 1.0;
  std::string d = campaign("diverged", s);
  Out o = run("fit " + d + " --out " + d + "_out");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("every run diverged"), std::string::npos) << o.text;
}

TEST(Cli, SingleModelSizeFamily) {
  // (a hyper-parameter sweep at one size would still give Law 1: leave it out)
  SynthSpec s = small();
  s.hp_runs = 0;
  std::string d = campaign("onesize", s, [](std::vector<RunRecord>& r) {
    std::vector<RunRecord> keep;
    for (auto& x : r)
      if (x.config["is_moe"] == 0) {
        x.config["flops_per_token"] = 1e9;  // one size at every budget
        keep.push_back(x);
      }
    r = keep;
  });
  Out o = run("fit " + d + " --out " + d + "_out --bootstrap 0");
  EXPECT_EQ(o.code, 3) << o.text;
  EXPECT_NE(o.text.find("single model size"), std::string::npos) << o.text;
}

TEST(Cli, NaNLosses) {
  std::string d = campaign("nan", small(), [](std::vector<RunRecord>& r) {
    for (auto& x : r) x.summary["final_val_loss"] = NAN;
  });
  Out o = run("fit " + d + " --out " + d + "_out");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("final_val_loss is NaN"), std::string::npos) << o.text;
  // some NaN: the fit goes on and names them
  std::string d2 = campaign("somenan", small(), [](std::vector<RunRecord>& r) {
    r[0].summary["final_val_loss"] = NAN;
  });
  o = run("fit " + d2 + " --out " + d2 + "_out --bootstrap 0 --no-plots");
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("run0.h5: final_val_loss is NaN"), std::string::npos) << o.text;
}

TEST(Cli, TruncatedFile) {
  std::string d = campaign("trunc", small());
  {
    std::ifstream in(d + "/run0.h5", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(d + "/run0.h5", std::ios::binary | std::ios::trunc) << bytes.substr(0, 700);
  }
  // alone: nothing usable
  Out o = run("fit " + d + "/run0.h5 --out " + d + "_out");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("truncated"), std::string::npos) << o.text;
  // among good files: skipped with its name and reason
  o = run("fit " + d + " --out " + d + "_out --bootstrap 0 --no-plots");
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("skipped " + d + "/run0.h5"), std::string::npos) << o.text;
  // --strict: fatal
  o = run("fit " + d + " --out " + d + "_out --bootstrap 0 --strict");
  EXPECT_NE(o.code, 0);
  EXPECT_NE(o.text.find("run0.h5"), std::string::npos) << o.text;
}

// Leave-largest-budget-out on a synthetic campaign without noise: the laws
// refitted on 1e18..1e20 predict the planted losses and EL at 1e21.
TEST(Cli, WindTunnelPredictsTheHeldOutBudget) {
  SynthSpec s = small();
  s.noise = 0;
  const std::string d = campaign("windtunnel", s);
  const std::string out = testing::TempDir() + "/fulcrum_fit_cli_windtunnel_out";
  fs::remove_all(out);
  Out o = run("windtunnel " + d + " --out " + out);
  ASSERT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("without the largest budget C=1e+21"), std::string::npos) << o.text;
  std::ifstream f(out + "/windtunnel.csv");
  ASSERT_TRUE(f) << "no windtunnel.csv";
  std::string line;
  std::getline(f, line);
  EXPECT_EQ(line, "kind,family,run,C,M,D,predicted,observed,rel_error");
  int law3 = 0, el = 0, param = 0;
  while (std::getline(f, line)) {
    const std::string kind = line.substr(0, line.find(','));
    const double err = std::stod(line.substr(line.rfind(',') + 1));
    if (kind == "law3") {
      ++law3;
      EXPECT_LT(std::fabs(err), 0.01) << line;
    } else if (kind == "parametric") {
      ++param;
      EXPECT_LT(std::fabs(err), 0.015) << line;
    } else if (kind == "el") {
      ++el;
      EXPECT_LT(std::fabs(err), 0.1) << line;
    }
  }
  EXPECT_GE(law3, 2);
  EXPECT_GE(param, 1);
  EXPECT_GE(el, 3);
}

TEST(Cli, WindTunnelNeedsThreeBudgets) {
  SynthSpec s = small();
  s.budgets = {1e18, 1e19};
  const std::string d = campaign("windtunnel2", s);
  Out o = run("windtunnel " + d + " --out " + testing::TempDir() + "/fulcrum_fit_cli_wt2");
  EXPECT_EQ(o.code, 3) << o.text;
  EXPECT_NE(o.text.find("holding out the largest needs 3 or more"), std::string::npos) << o.text;
}

// Fit quality in plain words (4 budgets: Law 3 rests on 4 points for 3
// constants), the extrapolation error beside R^2, and nothing on stderr but
// fulcrum-fit's own lines.
TEST(Cli, ReportSaysFitQualityInPlainWords) {
  SynthSpec s = small();
  s.noise = 3e-3;
  const std::string d = campaign("quality", s);
  const std::string out = d + "_out";
  fs::remove_all(out);
  const std::string err = testing::TempDir() + "/fulcrum_fit_cli_quality.err";
  int rc = std::system((bin() + " fit " + d + " --out " + out + " --bootstrap 30 > /dev/null 2> " + err).c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  EXPECT_EQ(WEXITSTATUS(rc), 0);
  std::ifstream e(err);
  std::string line;
  while (std::getline(e, line))
    EXPECT_TRUE(line.rfind("fulcrum-fit:", 0) == 0 || line.rfind("  excluded", 0) == 0 ||
                line.rfind("  skipped", 0) == 0)
        << "stray stderr line: " << line;
  std::ifstream in(out + "/report.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string rep = ss.str();
  EXPECT_NE(rep.find("4 budgets for 3 constants (fewer than twice as many)"), std::string::npos);
  EXPECT_NE(rep.find("\nExtrapolation error"), std::string::npos);
  EXPECT_NE(rep.find("Law 3 [dense]: at C=1e+21 mean |error|"), std::string::npos);
  EXPECT_NE(rep.find("held-out"), std::string::npos);
  EXPECT_NE(rep.find("<- interval"), std::string::npos);  // some interval is named next to its constant
  // laws.toml: the held-out error in the diagnostics
  std::ifstream lt(out + "/laws.toml");
  std::stringstream ls;
  ls << lt.rdbuf();
  EXPECT_NE(ls.str().find("holdout_error = "), std::string::npos);
  EXPECT_NE(ls.str().find("fixed = []"), std::string::npos);
}

// ---------------------------------------------------------------- run tables (CSV)
namespace {

std::string slurp(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void expect_same_laws(const std::string& a, const std::string& b, double tol = 1e-9) {
  LawSet x = read_laws_toml(a), y = read_laws_toml(b);
  auto same = [tol](double u, double v) { return std::abs(u - v) <= tol * std::max(std::abs(u), 1e-12); };
  ASSERT_EQ(x.law3.size(), y.law3.size());
  ASSERT_GE(x.law3.size(), 4u);  // dense and 3 MoE families
  for (size_t i = 0; i < x.law3.size(); ++i) {
    EXPECT_EQ(x.law3[i].family, y.law3[i].family);
    EXPECT_TRUE(same(x.law3[i].beta.v, y.law3[i].beta.v)) << x.law3[i].beta.v << " " << y.law3[i].beta.v;
    EXPECT_TRUE(same(x.law3[i].b.v, y.law3[i].b.v));
  }
  ASSERT_TRUE(x.el.ok());
  ASSERT_TRUE(y.el.ok());
  EXPECT_TRUE(same(x.el.a.v, y.el.a.v)) << x.el.a.v << " " << y.el.a.v;
  EXPECT_TRUE(same(x.el.d.v, y.el.d.v));
  EXPECT_TRUE(same(x.el.A_start.v, y.el.A_start.v));
  EXPECT_EQ(x.el_fixed, y.el_fixed);
  ASSERT_TRUE(x.law2_dense.ok());
  EXPECT_TRUE(same(x.law2_dense.M_opt.a.v, y.law2_dense.M_opt.a.v));
  EXPECT_TRUE(same(x.law1_dense.eta.a.v, y.law1_dense.eta.a.v));
}

}  // namespace

TEST(Cli, CsvRunTableFitsLikeRunFiles) {
  SynthSpec s = small();
  s.el_A = {0.016, 0.0625, 0.25};
  s.el_G = {8};  // with the reference family (0.0625, 8): dense + 3 MoE families
  const std::string d = campaign("csv", s);
  // the fixture, written here from the same records (not by `export`)
  auto recs = synth_campaign(SynthTruth{}, s);
  const std::string csv = testing::TempDir() + "/fulcrum_fit_cli_fixture.csv";
  {
    std::ofstream f(csv);
    f << "# runs of another trainer\nrun,is_moe,A,G,S,M,tokens,compute,loss,lr,batch\n";
    char b[1024];
    for (size_t i = 0; i < recs.size(); ++i) {
      auto& c = recs[i].config;
      std::snprintf(b, sizeof b, "r%zu,%g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g,%.17g\n", i, c["is_moe"],
                    c["activation_ratio"], c["granularity"], c["shared_ratio"], c["flops_per_token"],
                    recs[i].summary["tokens_seen"], c["compute_target"], recs[i].summary["final_val_loss"],
                    c["lr_peak"], c["batch_tokens"]);
      f << b;
    }
  }
  const std::string o1 = d + "_h5", o2 = d + "_csv", o3 = d + "_exp";
  for (auto& o : {o1, o2, o3}) fs::remove_all(o);
  Out f1 = run("fit " + d + " --out " + o1 + " --bootstrap 0 --no-plots");
  ASSERT_EQ(f1.code, 0) << f1.text;
  Out f2 = run("fit " + csv + " --out " + o2 + " --bootstrap 0 --no-plots");
  ASSERT_EQ(f2.code, 0) << f2.text;
  EXPECT_NE(f2.text.find(std::to_string(recs.size()) + " usable run(s) from 1 file(s)"), std::string::npos) << f2.text;
  expect_same_laws(o1 + "/laws.toml", o2 + "/laws.toml");
  // export: Fulcrum's own runs as a table, refitted from the table alone
  const std::string exp = testing::TempDir() + "/fulcrum_fit_cli_export.csv";
  Out e = run("export " + d + " --out " + exp);
  ASSERT_EQ(e.code, 0) << e.text;
  EXPECT_NE(e.text.find("wrote " + std::to_string(recs.size()) + " run(s)"), std::string::npos) << e.text;
  Out f3 = run("fit " + exp + " --out " + o3 + " --bootstrap 0 --no-plots");
  ASSERT_EQ(f3.code, 0) << f3.text;
  expect_same_laws(o1 + "/laws.toml", o3 + "/laws.toml");
  // TSV: the same table with tabs
  std::string t = slurp(exp);
  for (auto& ch : t) if (ch == ',') ch = '\t';
  const std::string tsv = testing::TempDir() + "/fulcrum_fit_cli_export.tsv";
  std::ofstream(tsv) << t;
  Out f4 = run("fit " + tsv + " --out " + o3 + "_tsv --bootstrap 0 --no-plots");
  ASSERT_EQ(f4.code, 0) << f4.text;
  expect_same_laws(o1 + "/laws.toml", o3 + "_tsv/laws.toml");
}

TEST(Cli, MalformedCsvNamesLineAndColumn) {
  auto bad = [](const std::string& name, const std::string& text) {
    const std::string p = testing::TempDir() + "/fulcrum_fit_bad_" + name + ".csv";
    std::ofstream(p) << text;
    return run("fit " + p + " --out " + p + "_out --bootstrap 0 --no-plots");
  };
  const std::string ok1 = "0,1e9,1e10,1e19,3.1\n", ok2 = "0,2e9,5e9,1e19,3.0\n";
  Out o = bad("missing", "is_moe,M,tokens,compute\n0,1e9,1e10,1e19\n");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("line 1: missing column \"loss\""), std::string::npos) << o.text;
  o = bad("nonnum", "is_moe,M,tokens,compute,loss\n" + ok1 + "0,2e9x,5e9,1e19,3.0\n");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("line 3, column 2 (M): \"2e9x\" is not a number"), std::string::npos) << o.text;
  o = bad("negative", "# comment\nis_moe,M,tokens,compute,loss\n" + ok1 + ok2 + "0,2e9,5e9,-1e19,3.0\n");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("line 5, column 4 (compute): compute = -1e19 must be positive"), std::string::npos) << o.text;
  o = bad("duplicate", "is_moe,M,tokens,loss,compute,loss\n0,1e9,1e10,3,1e19,3\n");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("line 1, column 6 (loss): duplicate column \"loss\" (also column 4)"), std::string::npos)
      << o.text;
  o = bad("moe", "is_moe,A,G,M,tokens,compute,loss\n1,0,8,1e9,1e10,1e19,3\n");
  EXPECT_EQ(o.code, 2) << o.text;
  EXPECT_NE(o.text.find("line 2, column 2 (A): a MoE run needs an activation ratio"), std::string::npos) << o.text;
}

TEST(Cli, PredictZhaoPreset) {
  Out o = run("predict --preset zhao --N 1e9 --N-active 3e8 --D 1e10 --active-experts 8 --S 0.5");
  ASSERT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("loss = 2.9745"), std::string::npos) << o.text;
  EXPECT_NE(o.text.find("G_z* = sqrt(f/e) = 6.778"), std::string::npos) << o.text;
  EXPECT_NE(o.text.find("S* = -n/(2m) = 0.3148"), std::string::npos) << o.text;
  EXPECT_EQ(run("predict --preset zhao --N 1e9 --N-active 3e9 --D 1e10 --active-experts 8").code, 1);
  EXPECT_EQ(run("predict --preset paper --N 1e9 --N-active 3e8 --D 1e10 --active-experts 8").code, 3);
}

// One granularity (a published campaign's typical shape): the joint EL law is
// fitted with gamma = beta = 0 fixed and says so in the report and the laws
// file; the plots (EL map over a range around the one G) keep stderr clean.
TEST(Cli, OneGranularityCampaignEndToEnd) {
  SynthSpec s = small();
  s.el_G = {8};
  const std::string d = campaign("oneG", s);
  const std::string out = d + "_out";
  fs::remove_all(out);
  const std::string err = testing::TempDir() + "/fulcrum_fit_cli_oneG.err";
  int rc = std::system((bin() + " fit " + d + " --out " + out + " --bootstrap 20 > /dev/null 2> " + err).c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  EXPECT_EQ(WEXITSTATUS(rc), 0);
  std::ifstream e(err);
  std::string line;
  while (std::getline(e, line)) EXPECT_EQ(line.rfind("fulcrum-fit:", 0), 0u) << "stray stderr line: " << line;
  EXPECT_TRUE(fs::exists(out + "/el_contour.png"));
  const std::string rep = slurp(out + "/report.txt");
  EXPECT_NE(rep.find("gamma                        0 (fixed: one granularity (G = 8)"), std::string::npos) << rep;
  LawSet L = read_laws_toml(out + "/laws.toml");
  ASSERT_TRUE(L.el.ok());
  EXPECT_EQ(L.el_fixed, (std::vector<std::string>{"gamma", "beta"}));
  ASSERT_EQ(L.el_fixed_why.size(), 2u);
}

// A study's runs.csv (`fulcrum-sweep status --csv`: run-file column names,
// 10 digits, extra columns) refits to the laws of its run files.
TEST(Cli, StudyRunsCsvRefits) {
  SynthSpec s = small();
  s.el_A = {0.016, 0.0625, 0.25};
  s.el_G = {8};
  const std::string d = campaign("studycsv", s);
  auto recs = synth_campaign(SynthTruth{}, s);
  const std::string csv = testing::TempDir() + "/fulcrum_fit_cli_study_runs.csv";
  {
    std::ofstream f(csv);
    f << "stage,sweep,id,status,is_moe,d_model,n_layers,num_experts,activation_ratio,granularity,shared_ratio,"
         "params_total,params_active,flops_per_token,lr,batch_tokens,budget,compute,tokens,"
         "final_train_loss,final_val_loss,tokens_per_second,wall_time_s\n";
    char b[2048];
    for (size_t i = 0; i < recs.size(); ++i) {
      auto& c = recs[i].config;
      auto& m = recs[i].summary;
      std::snprintf(b, sizeof b,
                    "st,sw,r%zu,completed,%g,%g,12,%g,%.10g,%.10g,%.10g,%.10g,%.10g,%.10g,%.10g,%.10g,,%.10g,%.10g,"
                    "%.10g,%.10g,1000,%.10g\n",
                    i, c["is_moe"], c["d_model"], c["num_experts"], c["activation_ratio"], c["granularity"],
                    c["shared_ratio"], c["params_total"], c["params_active"], c["flops_per_token"], c["lr_peak"],
                    c["batch_tokens"], c["compute_target"], m["tokens_seen"], m["final_train_loss"],
                    m["final_val_loss"], m["wall_time_s"]);
      f << b;
    }
    f << "st,sw,pending1,pending,0,64,12,0,1,0,0,1e6,1e6,6e6,1e-3,8192,,1e18,1e11,,,,\n";
  }
  const std::string o1 = d + "_h5", o2 = d + "_studycsv";
  for (auto& o : {o1, o2}) fs::remove_all(o);
  Out f1 = run("fit " + d + " --out " + o1 + " --bootstrap 0 --no-plots");
  ASSERT_EQ(f1.code, 0) << f1.text;
  Out f2 = run("fit " + csv + " --out " + o2 + " --bootstrap 0 --no-plots");
  ASSERT_EQ(f2.code, 0) << f2.text;
  EXPECT_NE(f2.text.find("1 excluded"), std::string::npos) << f2.text;  // the pending run
  expect_same_laws(o1 + "/laws.toml", o2 + "/laws.toml", 1e-5);
}
