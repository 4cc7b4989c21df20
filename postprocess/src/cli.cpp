#include "cli.hpp"

#include <unistd.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include "format.hpp"
#include "fitting.hpp"
#include "laws.hpp"
#include "output.hpp"
#include "runs.hpp"
#include "synth.hpp"
#include "windtunnel.hpp"

namespace fulcrum::fit {

namespace {


LawSet load_laws(const std::string& file, const std::string& preset) {
  if (!file.empty() && !preset.empty()) throw FitError("give either --laws or --preset, not both", 1);
  if (!preset.empty()) {
    if (preset == "zhao") return zhao_preset();
    if (preset != "paper") throw FitError("unknown preset \"" + preset + "\" (known: paper, zhao)", 1);
    return paper_preset();
  }
  if (file.empty()) throw FitError("no laws: give --laws FILE or --preset paper", 1);
  return read_laws_toml(file);
}

void check_range(const std::vector<double>& r, const char* name) {
  if (r.size() != 2 || !(r[0] > 0) || !(r[1] >= r[0]))
    throw FitError(std::string(name) + " must be lo,hi with 0 < lo <= hi", 1);
}

// Runs f with stderr (fd 2) sent to a temporary file; returns what was written there.
template <class F>
std::string capture_stderr(F&& f) {
  std::fflush(stderr);
  char name[] = "/tmp/fulcrum-fit-stderr-XXXXXX";
  const int fd = mkstemp(name);
  if (fd < 0) {
    f();
    return "";
  }
  unlink(name);
  const int saved = dup(2);
  dup2(fd, 2);
  auto restore = [&] {
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
  };
  try {
    f();
  } catch (...) {
    restore();
    close(fd);
    throw;
  }
  restore();
  std::string text;
  lseek(fd, 0, SEEK_SET);
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  close(fd);
  return text;
}

// Exit status when a requested law is missing or not trustworthy (--strict,
// --require); the outputs are written first (doc/fit.md).
constexpr int kExitUntrusted = 4;

int cmd_fit(const std::vector<std::string>& inputs, const std::string& out, const FitOptions& opt,
            const LoadOptions& lopt, bool plots, bool strict, const std::vector<std::string>& require) {
  auto t0 = std::chrono::steady_clock::now();
  LoadResult L = load_runs(inputs, lopt);
  std::cerr << "fulcrum-fit: " << L.runs.size() << " usable run(s) from " << L.files_seen << " file(s)";
  if (!L.excluded.empty()) std::cerr << ", " << L.excluded.size() << " excluded";
  if (!L.unreadable.empty()) std::cerr << ", " << L.unreadable.size() << " unreadable";
  std::cerr << "\n";
  for (auto& e : L.excluded) std::cerr << "  excluded " << e.path << ": " << e.reason << "\n";
  for (auto& e : L.unreadable) std::cerr << "  skipped " << e.path << ": " << e.reason << "\n";
  auto budget_notes = group_budgets(L.runs, opt.budget_tolerance);
  FitResult R = fit_all(L.runs, opt);
  R.budget_notes = budget_notes;
  if (!R.any()) {
    diagnose(R, L.runs, opt);
    std::string m = "nothing could be fitted:";
    for (auto& v : R.verdicts)
      for (auto& w : v.reasons) m += "\n  - " + law_title(v.law) + (v.family.empty() ? "" : " [" + v.family + "]") + ": " + w;
    m += "\n  budgets:";
    for (auto& n : budget_notes) m += "\n    " + n;
    throw FitError(m, 3);
  }
  bootstrap(L.runs, opt, R);
  R.holdout = holdout_errors(L.runs, R, opt, R.holdout_notes);
  diagnose(R, L.runs, opt);
  std::filesystem::create_directories(out);
  write_laws_toml(out + "/laws.toml", R.laws);
  {
    std::ofstream f(out + "/laws.toml", std::ios::app);
    f << diagnostics_toml(R);
    if (!f) throw FitError("cannot write " + out + "/laws.toml", 1);
  }
  write_fit_h5(out + "/fit.h5", R, L);
  std::vector<std::string> pngs;
  if (plots) {
    // plplot warns on stderr: keep it there only through the report
    std::string w = capture_stderr([&] { pngs = write_plots(out, R); });
    std::string one;
    for (char c : w) one += c == '\n' ? ' ' : c;
    while (one.find("  ") != std::string::npos) one.erase(one.find("  "), 1);
    if (one.find_first_not_of(' ') != std::string::npos) R.notes.push_back("plots: plplot warned: " + one);
  }
  {
    std::ofstream f(out + "/report.txt");
    write_report(f, R, L, opt);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "wrote " << out << "/laws.toml, fit.h5, report.txt and " << pngs.size()
            << " plot(s) in " << format_number(s) << " s\n";
  for (auto& n : R.notes) std::cout << "  note: " << n << "\n";
  // verdicts: one line per fitted law; the laws not fitted counted (report.txt says why)
  std::vector<std::string> bad;
  std::map<std::string, int> not_fitted;
  for (auto& v : R.verdicts) {
    const std::string name = law_title(v.law) + (v.family.empty() ? "" : " [" + v.family + "]");
    bool requested = std::find(require.begin(), require.end(), v.law) != require.end();
    if (!v.fitted) {
      not_fitted[law_title(v.law)]++;
      continue;
    }
    std::cout << "  " << name << ": " << (v.trusted ? "fitted, trustworthy" : "fitted, NOT TRUSTWORTHY");
    if (!v.reasons.empty()) std::cout << ": " << v.reasons[0] << (v.reasons.size() > 1 ? " (and more, see report.txt)" : "");
    std::cout << "\n";
    if (!v.trusted && (strict || requested)) bad.push_back(name + " is not trustworthy: " + v.reasons[0]);
  }
  for (auto& [law, n] : not_fitted)
    std::cout << "  " << law << ": not fitted for " << n << " famil" << (n == 1 ? "y" : "ies") << " (report.txt says why)\n";
  for (auto& law : require) {
    bool any = false;
    std::string why;
    for (auto& v : R.verdicts)
      if (v.law == law) {
        any |= v.fitted;
        if (!v.fitted && why.empty() && !v.reasons.empty())
          why = (v.family.empty() ? "" : "[" + v.family + "] ") + v.reasons[0];
      }
    if (!any) bad.push_back(law_title(law) + " was requested (--require) but not fitted" + (why.empty() ? "" : ": " + why));
  }
  if (!bad.empty()) {
    std::string m = "a requested law is not trustworthy (exit " + std::to_string(kExitUntrusted) +
                    "; outputs written, see " + out + "/report.txt):";
    for (auto& b : bad) m += "\n  - " + b;
    throw FitError(m, kExitUntrusted);
  }
  return 0;
}

void print_prediction(const LawSet& L, double A, double G, double C) {
  if (!L.el.ok()) throw FitError("the laws have no joint EL law (el.joint)", 3);
  double el = el_joint(L.el, A, G, C);
  std::printf("A = %s  G = %s  C = %s  EL = %.4f  (dense-equivalent compute %s FLOPs)\n", format_number(A).c_str(),
              format_number(G).c_str(), format_number(C).c_str(), el, format_number(el * C).c_str());
  const Law2& l2 = L.law2_moe.ok() ? L.law2_moe : L.law2_dense;
  if (l2.ok())
    std::printf("  compute-optimal M = %s FLOPs/token, D = %s tokens  (law2 %s)\n", format_number(l2.M_opt(C)).c_str(),
                format_number(C / l2.M_opt(C)).c_str(), l2.family.c_str());
  const Law1& l1 = L.law1_moe.ok() ? L.law1_moe : L.law1_dense;
  if (l1.ok())
    std::printf("  eta_opt = %s, B_opt = %s tokens  (law1 %s)\n", format_number(l1.eta(C)).c_str(), format_number(l1.batch(C)).c_str(),
                l1.family.c_str());
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"fulcrum-fit: fit scaling laws and efficiency leverage from Fulcrum run files"};
  app.footer(
      "Exit status: 0 success; 1 usage or I/O error; 2 no usable runs (or an unreadable input under "
      "--strict); 3 nothing could be fitted; 4 a law requested by --strict or --require is missing or "
      "not trustworthy (outputs are written first; report.txt says why). windtunnel: 3 when nothing can be "
      "predicted (fewer than 3 budgets, or no law refits without the largest).");
  app.require_subcommand(1);

  // fit
  auto* fit = app.add_subcommand("fit", "fit every law the runs allow; write laws.toml, fit.h5, report, plots");
  std::vector<std::string> inputs;
  std::string out;
  FitOptions opt;
  LoadOptions lopt;
  bool no_plots = false;
  fit->add_option("inputs", inputs, "run files, directories, sweep manifests or run tables (.csv, .tsv)");
  fit->add_option("--out", out, "output directory")->required();
  fit->add_option("--bootstrap", opt.bootstrap, "bootstrap resamples (0: no intervals)")->capture_default_str();
  fit->add_option("--seed", opt.seed, "bootstrap seed")->capture_default_str();
  bool strict = false;
  std::vector<std::string> require;
  fit->add_flag("--strict", strict,
                "unreadable or foreign input files are fatal (exit 2), and so is any fitted law that the "
                "diagnostics flag as not trustworthy (exit 4, after writing the outputs)");
  fit->add_option("--require", require,
                  "laws that must be fitted and trustworthy, comma separated: law1, law2, law3, el "
                  "(exit 4 otherwise, after writing the outputs)")
      ->delimiter(',')
      ->check(CLI::IsMember({"law1", "law2", "law3", "el"}));
  fit->add_option("--budget-tolerance", opt.budget_tolerance,
                  "runs without a recorded compute_budget whose compute misses a budget by at most this "
                  "fraction belong to it")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  fit->add_option("--near-optimal", opt.near_optimal, "Law 1 near-optimal tolerance (fraction)")->capture_default_str();
  fit->add_option("--el-threshold", opt.el_threshold, "train the EL law on EL below this")->capture_default_str();
  fit->add_option("--el-budgets", opt.el_budgets,
                  "reference budgets (FLOPs, comma separated) at which EL is computed from the fitted Law 3 "
                  "curves (default: the budgets of the runs); a family is not extrapolated beyond its observed budgets")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  std::string law1_method = "vertex";
  fit->add_option("--law1-method", law1_method,
                  "Law 1 estimator: vertex (per-budget quadratic surface, default) or near-optimal "
                  "(the paper's power law through near-optimal runs); the other is reported for comparison")
      ->check(CLI::IsMember({"vertex", "near-optimal"}))
      ->capture_default_str();
  fit->add_flag("--train-loss", lopt.use_train_loss, "fit final_train_loss instead of final_val_loss");
  fit->add_flag("--no-plots", no_plots, "skip the PNG plots");

  // shared law options
  std::string laws_file, preset;
  double A = NAN, G = NAN, C = NAN;
  auto* pred = app.add_subcommand("predict", "EL (and M, D, eta, B) for one configuration");
  auto law_opts = [&](CLI::App* s) {
    s->add_option("--laws", laws_file, "laws file written by `fit`");
    s->add_option("--preset", preset, "built-in law set: paper (Tian et al.) or zhao (Zhao et al., predict only)");
  };
  law_opts(pred);
  pred->add_option("--A", A, "activation ratio (0, 1]");
  pred->add_option("--G", G, "granularity 2 d_model / d_expert (Tian et al.)");
  pred->add_option("--C", C, "compute budget in FLOPs");
  double zN = NAN, zNa = NAN, zD = NAN, zGz = NAN, zS = 0;
  pred->add_option("--N", zN, "Zhao et al. law: total parameters");
  pred->add_option("--N-active", zNa, "Zhao et al. law: active parameters");
  pred->add_option("--D", zD, "Zhao et al. law: training tokens");
  pred->add_option("--active-experts", zGz, "Zhao et al. law: number of active experts (their \"G\", not --G)");
  pred->add_option("--S", zS, "Zhao et al. law: shared ratio")->capture_default_str();

  auto* grid = app.add_subcommand("grid", "EL over a log-spaced grid of A and G at given budgets");
  law_opts(grid);
  std::vector<double> Ar, Gr, Cs;
  int nA = 7, nG = 7;
  std::string csv, png;
  grid->add_option("--A-range", Ar, "lo,hi")->delimiter(',')->required();
  grid->add_option("--G-range", Gr, "lo,hi")->delimiter(',')->required();
  grid->add_option("--C", Cs, "budget(s), comma separated")->delimiter(',')->required();
  grid->add_option("--nA", nA, "grid points in A")->capture_default_str();
  grid->add_option("--nG", nG, "grid points in G")->capture_default_str();
  grid->add_option("--csv", csv, "also write the grid as CSV");
  grid->add_option("--plot", png, "also write an EL contour map (PNG) for the first budget");

  auto* adv = app.add_subcommand("advise", "configuration with the highest EL for a budget");
  law_opts(adv);
  adv->add_option("--C", C, "compute budget in FLOPs")->required();
  adv->add_option("--A-range", Ar, "lo,hi")->delimiter(',')->required();
  adv->add_option("--G-range", Gr, "lo,hi")->delimiter(',')->required();

  auto* wt = app.add_subcommand("windtunnel",
                                "leave-largest-budget-out: refit without the largest budget, predict its runs");
  std::vector<std::string> wt_inputs;
  std::string wt_out;
  wt->add_option("inputs", wt_inputs, "run files, directories or sweep manifests");
  wt->add_option("--out", wt_out, "output directory (windtunnel.txt, windtunnel.csv)")->required();
  wt->add_option("--budget-tolerance", opt.budget_tolerance, "relative tolerance of the budget clustering")
      ->capture_default_str();
  wt->add_flag("--train-loss", lopt.use_train_loss, "use final_train_loss instead of final_val_loss");

  auto* ex = app.add_subcommand("export", "write the usable runs of run files as a CSV run table (doc/fit.md)");
  std::vector<std::string> ex_inputs;
  std::string ex_out;
  ex->add_option("inputs", ex_inputs, "run files, directories, sweep manifests or run tables");
  ex->add_option("--out", ex_out, "the CSV file to write")->required();
  ex->add_flag("--train-loss", lopt.use_train_loss, "export final_train_loss as the loss instead of final_val_loss");

  auto* syn = app.add_subcommand("synth", "write a synthetic campaign of run files (tests, demos)");
  std::string sdir;
  SynthSpec spec;
  syn->add_option("--out", sdir, "directory")->required();
  syn->add_option("--seed", spec.seed)->capture_default_str();
  syn->add_option("--noise", spec.noise, "relative loss noise")->capture_default_str();
  syn->add_option("--hp-runs", spec.hp_runs, "hyper-parameter runs per budget and family")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 1;
  }
  try {
    if (*fit) {
      opt.law1_method = law1_method == "near-optimal" ? Law1Method::near_optimal : Law1Method::vertex;
      lopt.strict = strict;
      return cmd_fit(inputs, out, opt, lopt, !no_plots, strict, require);
    }
    if (*wt) {
      LoadResult L = load_runs(wt_inputs, lopt);
      opt.bootstrap = 0;
      WindTunnel w = wind_tunnel(L.runs, opt);
      std::filesystem::create_directories(wt_out);
      const std::string rep = wind_tunnel_report(w);
      std::ofstream(wt_out + "/windtunnel.txt") << rep;
      std::ofstream(wt_out + "/windtunnel.csv") << wind_tunnel_csv(w);
      std::cout << rep;
      return 0;
    }
    if (*ex) {
      LoadResult L = load_runs(ex_inputs, lopt);
      std::ofstream f(ex_out);
      f << run_table_csv(L.runs);
      f.close();
      if (!f) throw FitError("cannot write " + ex_out, 1);
      std::cout << "wrote " << L.runs.size() << " run(s) to " << ex_out;
      if (!L.excluded.empty() || !L.unreadable.empty())
        std::cout << " (" << L.excluded.size() << " excluded and " << L.unreadable.size()
                  << " unreadable input(s) left out)";
      std::cout << "\n";
      return 0;
    }
    if (*pred) {
      if (preset == "zhao" || std::isfinite(zN)) {  // the competing law (Zhao et al.)
        LawSet Lz = load_laws(laws_file, preset);
        if (!Lz.zhao.ok()) throw FitError("the laws have no Zhao et al. law ([zhao])", 3);
        if (!(zN > 0) || !(zNa > 0) || !(zNa <= zN) || !(zD > 0) || !(zGz > 0) || !(zS >= 0 && zS <= 1))
          throw FitError("predict (Zhao et al.): need --N > 0, 0 < --N-active <= N, --D > 0, --active-experts > 0, "
                         "0 <= --S <= 1", 1);
        const ZhaoLaw& z = Lz.zhao;
        std::printf("Zhao et al. law (%s): N = %s  N_active = %s  D = %s  active experts G_z = %s  S = %s  loss = %.4f\n",
                    Lz.source.c_str(), format_number(zN).c_str(), format_number(zNa).c_str(), format_number(zD).c_str(),
                    format_number(zGz).c_str(), format_number(zS).c_str(), z(zN, zNa, zD, zGz, zS));
        std::printf("  optimal number of active experts G_z* = sqrt(f/e) = %s, optimal shared ratio S* = -n/(2m) = %s\n",
                    format_number(z.optimal_Gz()).c_str(), format_number(z.optimal_S()).c_str());
        return 0;
      }
      if (!(A > 0 && A <= 1) || !(G > 0) || !(C > 0))
        throw FitError("predict: need 0 < A <= 1, G > 0, C > 0", 1);
      print_prediction(load_laws(laws_file, preset), A, G, C);
      return 0;
    }
    if (*grid) {
      LawSet L = load_laws(laws_file, preset);
      if (!L.el.ok()) throw FitError("the laws have no joint EL law (el.joint)", 3);
      check_range(Ar, "--A-range");
      check_range(Gr, "--G-range");
      if (nA < 1 || nG < 1) throw FitError("--nA and --nG must be positive", 1);
      std::ofstream f;
      if (!csv.empty()) {
        f.open(csv);
        if (!f) throw FitError("cannot write " + csv, 1);
        f << "C,A,G,EL\n";
      }
      auto at = [](const std::vector<double>& r, int i, int n) {
        return n == 1 ? r[0] : std::exp(std::log(r[0]) + (std::log(r[1]) - std::log(r[0])) * i / (n - 1));
      };
      for (double c : Cs) {
        if (!(c > 0)) throw FitError("--C values must be positive", 1);
        std::printf("C = %s FLOPs: EL (rows A, columns G)\n%10s", format_number(c).c_str(), "A \\ G");
        for (int j = 0; j < nG; ++j) std::printf("%9s", format_number(at(Gr, j, nG)).c_str());
        std::printf("\n");
        for (int i = 0; i < nA; ++i) {
          double a = at(Ar, i, nA);
          std::printf("%10s", format_number(a).c_str());
          for (int j = 0; j < nG; ++j) {
            double e = el_joint(L.el, a, at(Gr, j, nG), c);
            std::printf("%9.3f", e);
            if (f) f << c << "," << a << "," << at(Gr, j, nG) << "," << e << "\n";
          }
          std::printf("\n");
        }
      }
      if (!png.empty()) plot_el_map(png, L, Cs[0], Ar[0], Ar[1], Gr[0], Gr[1]);
      return 0;
    }
    if (*adv) {
      check_range(Ar, "--A-range");
      check_range(Gr, "--G-range");
      LawSet L = load_laws(laws_file, preset);
      Advice a = advise(L, C, Ar[0], Ar[1], Gr[0], Gr[1]);
      std::printf("best configuration at C = %s FLOPs (laws: %s)\n", format_number(C).c_str(), L.source.c_str());
      std::printf("  A = %s  G = %s  EL = %.4f\n", format_number(a.A).c_str(), format_number(a.G).c_str(), a.EL);
      std::printf("  M_opt = %s FLOPs/token  D_opt = %s tokens\n", format_number(a.M_opt).c_str(), format_number(a.D_opt).c_str());
      std::printf("  eta_opt = %s  B_opt = %s tokens\n", format_number(a.eta).c_str(), format_number(a.batch).c_str());
      if (a.A <= Ar[0] * (1 + 1e-9)) std::printf("  note: A is at the lower bound of --A-range (EL grows as A falls)\n");
      return 0;
    }
    if (*syn) {
      auto recs = synth_campaign(SynthTruth{}, spec);
      auto paths = write_campaign(sdir, recs);
      std::ofstream m(sdir + "/manifest.txt");
      m << "# synthetic campaign\n";
      for (auto& p : paths) m << std::filesystem::path(p).filename().string() << "\n";
      std::printf("wrote %zu run files and manifest.txt to %s\n", paths.size(), sdir.c_str());
      return 0;
    }
  } catch (const FitError& e) {
    std::cerr << "fulcrum-fit: error: " << e.what() << "\n";
    return e.code;
  } catch (const std::exception& e) {
    std::cerr << "fulcrum-fit: error: " << e.what() << "\n";
    return 1;
  }
  return 1;
}

}  // namespace fulcrum::fit
