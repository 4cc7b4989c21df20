#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <toml.hpp>
#include <map>
#include <set>

#include "format.hpp"
#include "h5io.hpp"
#include "output.hpp"

namespace fulcrum::fit {

namespace {


std::string vci(const Value& v) {
  std::string s = format_number(v.v);
  if (std::isfinite(v.lo)) s += "  [" + format_number(v.lo) + ", " + format_number(v.hi) + "]";
  return s;
}

// Fit quality in plain words, next to the constant it concerns (doc/fit.md,
// "Fit quality"): an interval spanning more than a decade or including 0,
// bootstrap resamples that could not fit it.
struct Quality {
  const FitResult* R = nullptr;
  const FitOptions* opt = nullptr;
  std::string words(const std::string& key, const Value& v, bool prefactor) const {
    std::vector<std::string> w;
    if (std::isfinite(v.lo) && std::isfinite(v.hi)) {
      const double lo = v.lo, hi = v.hi;
      if (lo <= 0 && hi >= 0) {
        w.push_back("interval includes 0: sign not determined");
      } else {
        const double dec = std::log10(std::max(std::abs(lo), std::abs(hi)) / std::min(std::abs(lo), std::abs(hi)));
        if (dec > 1)
          w.push_back("interval spans " + format_number(dec, "%.2g") + " decades" +
                      (prefactor ? " (a prefactor at C = 1 FLOP: moves with its exponent)" : ""));
      }
    }
    if (R && opt && opt->bootstrap > 0 && !key.empty()) {
      auto it = R->boot_ok.find(key);
      const int ok = it == R->boot_ok.end() ? 0 : it->second;
      const double fail = 1.0 - static_cast<double>(ok) / opt->bootstrap;
      if (fail > opt->max_bootstrap_failures)
        w.push_back(format_number(100 * fail, "%.3g") + "% of the " + std::to_string(opt->bootstrap) +
                    " bootstrap resamples could not fit it" + (ok < 20 ? " (no interval)" : ""));
    }
    std::string s;
    for (auto& x : w) s += (s.empty() ? "  <- " : "; ") + x;
    return s;
  }
};
Quality g_quality;

void row(std::ostream& o, const std::string& name, const Value& v, const std::string& key = "",
         bool prefactor = false) {
  char b[512];
  std::snprintf(b, sizeof b, "  %-28s %s", name.c_str(), vci(v).c_str());
  o << b << g_quality.words(key, v, prefactor) << "\n";
}

// "fewer points than twice the constants": a line under the law's header
void few_points(std::ostream& o, int n, int k, const char* what = "points") {
  if (n > 0 && n < 2 * k)
    o << "  note: " << n << " " << what << " for " << k << " constants (fewer than twice as many): the fit can "
      << "follow the noise and its intervals are wide\n";
}

}  // namespace

std::string diagnostics_text(const FitResult& R) {
  std::string o;
  // fitted laws one by one; laws not fitted grouped by their reasons
  std::vector<std::pair<std::string, std::vector<std::string>>> groups;  // key -> families
  std::map<std::string, const Verdict*> first;
  for (auto& v : R.verdicts) {
    if (!v.fitted && !v.family.empty()) {
      std::string key = v.law + "\n";
      for (auto& r : v.reasons) key += r + "\n";
      auto it = std::find_if(groups.begin(), groups.end(), [&](auto& g) { return g.first == key; });
      if (it == groups.end()) groups.push_back({key, {v.family}}), first[key] = &v;
      else it->second.push_back(v.family);
      continue;
    }
    o += "  " + law_title(v.law) + (v.family.empty() ? "" : " [" + v.family + "]") + ": ";
    o += !v.fitted ? "not fitted" : v.trusted ? "fitted, trustworthy" : "fitted, NOT TRUSTWORTHY";
    if (!v.summary.empty()) o += " (" + v.summary + ")";
    o += "\n";
    for (auto& r : v.reasons) o += "    - " + r + "\n";
  }
  for (auto& [key, fams] : groups) {
    const Verdict* v = first[key];
    o += "  " + law_title(v->law) + " [";
    if (fams.size() <= 3) {
      for (size_t i = 0; i < fams.size(); ++i) o += (i ? "], [" : "") + fams[i];
    } else {
      o += fams[0] + "] and " + std::to_string(fams.size() - 1) + " more famil" +
           (fams.size() == 2 ? "y" : "ies") + " [...";
    }
    o += "]: not fitted\n";
    for (auto& r : v->reasons) o += "    - " + r + "\n";
  }
  return o;
}

std::string diagnostics_toml(const FitResult& R) {
  auto q = [](const std::string& x) {
    return toml::visit(toml::serializer<toml::value>((std::numeric_limits<std::size_t>::max)()), toml::value(x));
  };
  std::string o = "\n# fulcrum-fit's verdict on every law (doc/fit.md, \"Diagnostics\"); report.txt has the details\n";
  for (auto& v : R.verdicts) {
    o += "[[diagnostics]]\nlaw = " + q(v.law) + "\n";
    if (!v.family.empty()) o += "family = " + q(v.family) + "\n";
    o += std::string("fitted = ") + (v.fitted ? "true" : "false") + "\ntrusted = " + (v.trusted ? "true" : "false") +
         "\nreasons = [";
    for (size_t i = 0; i < v.reasons.size(); ++i) o += (i ? ", " : "") + q(v.reasons[i]);
    o += "]\n";
    if (const HoldOut* h = R.holdout_of(v.law, v.family))
      o += "holdout_C = " + format_number(h->C, "%.10e") + "\nholdout_error = " + format_number(h->error, "%.10e") + "\n";
  }
  return o;
}

void write_report(std::ostream& o, const FitResult& R, const LoadResult& L, const FitOptions& opt) {
  g_quality = Quality{&R, &opt};
  o << "fulcrum-fit report\n==================\n\n";
  o << "Inputs: " << L.files_seen << " file(s), " << L.runs.size() << " usable run(s), "
    << L.excluded.size() << " excluded, " << L.unreadable.size() << " unreadable\n";
  std::map<std::string, int> fams;
  for (auto& r : L.runs) fams[r.family]++;
  o << "Families: " << fams.size() << "\n";
  for (auto& [f, n] : fams) o << "  " << f << ": " << n << " run(s)\n";
  if (!L.excluded.empty()) {
    o << "\nExcluded runs (not used in any fit):\n";
    for (auto& e : L.excluded) o << "  " << e.path << ": " << e.reason << "\n";
  }
  if (!L.unreadable.empty()) {
    o << "\nUnreadable inputs (skipped):\n";
    for (auto& e : L.unreadable) o << "  " << e.path << ": " << e.reason << "\n";
  }
  if (!R.budget_notes.empty()) {
    o << "\nBudgets (runs grouped by the recorded compute_budget, else clustered within "
      << format_number(100 * opt.budget_tolerance) << "% of their compute; every law uses the best run or the IsoFLOP "
      << "minimum per family and budget):\n";
    for (auto& n : R.budget_notes) o << "  " << n << "\n";
  }
  if (!R.verdicts.empty()) {
    o << "\nDiagnostics (every law, fitted or not; NOT TRUSTWORTHY fits are in laws.toml but should not "
         "be used until the reasons are fixed):\n";
    o << diagnostics_text(R);
  }
  if (!R.holdout.empty() || !R.holdout_notes.empty()) {
    o << "\nExtrapolation error (leave-largest-budget-out: every law refitted without each family's largest budget "
         "(the campaign's largest where budgets are shared), its prediction there against what was found there; "
         "limits: EL laws "
      << format_number(100 * opt.max_holdout_el) << "% mean, Law 3 loss " << format_number(100 * opt.max_holdout_loss)
      << "%, Law 2 M_opt " << format_number(100 * opt.max_holdout_M) << "%):\n";
    for (auto& h : R.holdout) {
      std::string name = h.law == "el" ? "EL joint law" : h.law == "el.compute" ? "EL compute law"
                       : h.law == "zhao" ? "Zhao et al. law, MoE loss"
                       : h.law == "el.loss" ? "EL law via dense Law 3, MoE loss" : law_title(h.law);
      o << "  " << name << (h.family.empty() ? ": at each family's largest budget (up to C=" + format_number(h.C) + ")"
                                             : " [" + h.family + "]: at C=" + format_number(h.C))
        << " mean |error| " << format_number(100 * h.error, "%.3g") << "%, worst " << format_number(100 * h.worst, "%.3g")
        << "% (" << h.n << " point" << (h.n == 1 ? "" : "s") << ")\n";
    }
    for (auto& n : R.holdout_notes) o << "  note: " << n << "\n";
  }
  o << "\nBootstrap: " << opt.bootstrap << " resample(s) of runs within each family, seed "
    << opt.seed << "; " << R.bootstrap_done << " usable, " << R.bootstrap_failed
    << " failed. Intervals: 95% percentile.\n";
  o << "Log conventions: log10 C, log2 G, ln EL (doc/fit.md).\n";

  const bool vtx = opt.law1_method == Law1Method::vertex;
  o << "\nLaw 1: optimal hyper-parameters vs compute (method: " << law1_method_name(opt.law1_method)
    << (vtx ? ", per-budget vertex of a quadratic surface of ln(loss) in (log lr, log B)"
            : ", the paper's power law through the near-optimal runs")
    << "; near-optimal: within " << format_number(100 * opt.near_optimal) << "% of the best loss per budget)\n";
  if (R.law1_all.empty()) o << "  not fitted\n";
  auto nearopt_counts = [&](const std::string& fam, int& n, int& olr, int& ob, size_t& nb) {
    std::set<double> b;
    n = olr = ob = 0;
    for (auto& p : R.hp)
      if (p.family == fam && p.near_opt) n++, olr += p.outlier_lr, ob += p.outlier_batch, b.insert(p.C);
    nb = b.size();
  };
  for (auto& l : R.law1_all) {
    if (vtx) {
      int nv = 0, nf = 0, olr = 0, ob = 0;
      for (auto& q : R.hp_opt)
        if (q.family == l.family) (q.vertex ? nv : nf)++, olr += q.outlier_lr, ob += q.outlier_batch;
      o << " [" << l.family << "]  eta_opt = k C^a, B_opt = k C^a  (" << nv + nf << " budgets: " << nv
        << " vertex, " << nf << " near-optimal fallback; outliers removed: lr " << olr << ", batch " << ob
        << ")\n";
    } else {
      int n, olr, ob;
      size_t nb;
      nearopt_counts(l.family, n, olr, ob, nb);
      o << " [" << l.family << "]  eta_opt = k C^a, B_opt = k C^a  (" << n << " near-optimal points, " << nb
        << " budgets; outliers removed: lr " << olr << ", batch " << ob << ")\n";
    }
    {
      int nb = 0;
      for (auto& q : R.hp_opt) nb += q.family == l.family;
      if (vtx) few_points(o, nb, 2, "budget optima");
    }
    const std::string k1 = "law1[" + l.family + "].";
    row(o, "eta k", l.eta.k, k1 + "eta_k", true);
    row(o, "eta a", l.eta.a, k1 + "eta_a");
    row(o, "batch k", l.batch.k, k1 + "batch_k", true);
    row(o, "batch a", l.batch.a, k1 + "batch_a");
  }
  if (!R.law1_alt.empty()) {
    o << " Comparison (not written to laws.toml): method "
      << law1_method_name(vtx ? Law1Method::near_optimal : Law1Method::vertex)
      << (vtx ? " (the paper's procedure, Sec. 2.2)" : "") << "\n";
    for (auto& l : R.law1_alt) {
      o << " [" << l.family << "]";
      if (vtx) {
        int n, olr, ob;
        size_t nb;
        nearopt_counts(l.family, n, olr, ob, nb);
        o << "  (" << n << " near-optimal points, " << nb << " budgets)";
      }
      o << "\n";
      const std::string k1 = "law1_alt[" + l.family + "].";
      row(o, "eta k", l.eta.k, k1 + "eta_k", true);
      row(o, "eta a", l.eta.a, k1 + "eta_a");
      row(o, "batch k", l.batch.k, k1 + "batch_k", true);
      row(o, "batch a", l.batch.a, k1 + "batch_a");
    }
  }

  o << "\nLaw 2: compute-optimal allocation (IsoFLOP minima; M_opt = k C^a, D_opt = C / M_opt)\n";
  if (R.law2_all.empty()) o << "  not fitted\n";
  for (auto& l : R.law2_all) {
    int n = 0;
    for (auto& f : R.isofits) n += f.family == l.family;
    o << " [" << l.family << "]  (" << n << " IsoFLOP budgets)\n";
    few_points(o, n, 2, "IsoFLOP minima");
    const std::string k2 = "law2[" + l.family + "].";
    row(o, "M_opt k", l.M_opt.k, k2 + "M_k", true);
    row(o, "M_opt a", l.M_opt.a, k2 + "M_a");
    row(o, "D_opt k", l.D_opt.k, k2 + "D_k", true);
    row(o, "D_opt a", l.D_opt.a, k2 + "D_a");
    if (const HoldOut* h = R.holdout_of("law2", l.family))
      o << "  held-out error of M_opt at C=" << format_number(h->C) << ": " << format_number(100 * h->error, "%.3g") << "%\n";
    for (auto& f : R.isofits)
      if (f.family == l.family)
        o << "    C=" << format_number(f.C) << "  M_opt=" << format_number(f.M_opt) << "  L_min=" << format_number(f.L_min, "%.5f") << "\n";
  }
  for (auto& p : R.laws.parametric) {
    o << " parametric cross-check [" << p.family << "]  L = E + A/M^alpha + B/D^beta (Huber on ln L)\n";
    {
      int n = 0;
      for (auto& q : R.iso) n += q.family == p.family;
      few_points(o, n, 5);
    }
    const std::string kp = "parametric[" + p.family + "].";
    row(o, "E", p.E, kp + "E");
    row(o, "A", p.A, kp + "A");
    row(o, "B", p.B, kp + "B");
    row(o, "alpha", p.alpha, kp + "alpha");
    row(o, "beta", p.beta, kp + "beta");
    o << "  implied M_opt exponent beta/(alpha+beta) = " << format_number(p.beta.v / (p.alpha.v + p.beta.v)) << "\n";
  }

  o << "\nLaw 3: loss vs compute per family, L(C) = alpha C^beta + b\n";
  if (R.laws.law3.empty()) o << "  not fitted\n";
  char b[512];
  std::snprintf(b, sizeof b, "  %-32s %-30s %-30s %-30s %6s %3s %9s\n", "family", "alpha [CI]",
                "beta [CI]", "b [CI]", "R^2", "n", "held-out");
  o << b;
  for (auto& l : R.laws.law3) {
    const HoldOut* h = R.holdout_of("law3", l.family);
    std::snprintf(b, sizeof b, "  %-32s %-30s %-30s %-30s %6s %3d %9s\n", l.family.c_str(),
                  vci(l.alpha).c_str(), vci(l.beta).c_str(), vci(l.b).c_str(), format_number(l.r2, "%.4f").c_str(), l.n,
                  h ? (format_number(100 * h->error, "%.3g") + "%").c_str() : "n/a");
    o << b;
  }
  o << "  (held-out: error of the loss predicted at the largest budget by the law refitted without it)\n";
  for (auto& l : R.laws.law3) {  // fit quality in plain words, per family
    std::string w;
    const std::string k3 = "law3[" + l.family + "].";
    for (auto [n, v] : {std::pair<const char*, const Value*>{"alpha", &l.alpha}, {"beta", &l.beta}, {"b", &l.b}}) {
      std::string q = g_quality.words(k3 + n, *v, std::string(n) == "alpha");
      if (!q.empty()) w += "    " + std::string(n) + ": " + q.substr(5) + "\n";
    }
    if (l.n > 0 && l.n < 6)
      w += "    " + std::to_string(l.n) + " budgets for 3 constants (fewer than twice as many): the curve can "
           "follow the noise and its intervals are wide\n";
    if (!w.empty()) o << "  [" << l.family << "]\n" << w;
  }

  const LawSet& S = R.laws;
  {
    int nc = 0;
    for (auto& e : R.el) nc += e.from_curve;
    o << "\nEfficiency leverage: " << R.el.size() << " EL point(s), EL(C) = C_dense(L_moe(C)) / C; " << nc
      << " from the fitted Law 3 curves at " << R.el_grid.size() << " reference budget(s)";
    if (!R.el_grid.empty()) {
      o << " (";
      for (size_t i = 0; i < R.el_grid.size(); ++i) o << (i ? ", " : "") << format_number(R.el_grid[i]);
      o << ")";
    }
    o << ", " << R.el.size() - nc << " from runs of families without a Law 3 fit; " << R.el_raw.size()
      << " raw per-run EL point(s) in fit.h5:/el/raw for comparison\n";
  }
  if (S.el.ok()) {
    o << " joint law EL = A_hat^(a + d log10 C + gamma log2(G)^2 + beta log2 G), A_max fixed at "
      << format_number(S.el.A_max.v) << "\n";
    auto jrow = [&](const char* n, const Value& v) {
      for (size_t i = 0; i < S.el_fixed.size(); ++i)
        if (S.el_fixed[i] == n) {
          char fb[512];
          std::snprintf(fb, sizeof fb, "  %-28s 0 (fixed: %s)\n", n,
                        i < S.el_fixed_why.size() ? S.el_fixed_why[i].c_str() : "");
          o << fb;
          return;
        }
      row(o, n, v, std::string("el.joint.") + n);
    };
    few_points(o, S.n_train, 5 - static_cast<int>(S.el_fixed.size()), "training points");
    jrow("a", S.el.a);
    jrow("d", S.el.d);
    jrow("gamma", S.el.gamma);
    jrow("beta", S.el.beta);
    jrow("A_start", S.el.A_start);
    o << "  train (EL < " << format_number(S.el_threshold) << "): n=" << S.n_train << "  R^2=" << format_number(S.r2_train, "%.4f")
      << "  MAPE=" << format_number(S.mape_train, "%.2f") << "%\n";
    o << "  validation (EL >= " << format_number(S.el_threshold) << "): n=" << S.n_val << "  R^2=" << format_number(S.r2_val, "%.4f")
      << "  MAPE=" << format_number(S.mape_val, "%.2f") << "%\n";
    if (const HoldOut* h = R.holdout_of("el", ""))
      o << "  held-out (refitted without each family's largest budget, up to C=" << format_number(h->C) << "): n=" << h->n
        << "  mean |error|=" << format_number(100 * h->error, "%.3g") << "%  worst=" << format_number(100 * h->worst, "%.3g")
        << "%\n";
    double Go = el_optimal_G(S.el);
    o << "  optimal granularity (unconstrained) G* = " << format_number(Go) << "\n";
  } else {
    o << " joint law: not fitted\n";
  }
  if (S.el_A.ok()) {
    o << " activation law ln EL = a_A ln A_hat  (slice G=" << format_number(S.el_A.G) << ", C=" << format_number(S.el_A.C) << ")\n";
    row(o, "a_A", S.el_A.a_A, "el.activation.a_A");
    row(o, "A_start", S.el_A.A_start, "el.activation.A_start");
  }
  if (S.el_G.ok()) {
    o << " granularity law ln EL = a_G + b_G log2 G (log2 G + c_G)  (slice A=" << format_number(S.el_G.A)
      << ", C=" << format_number(S.el_G.C) << ")\n";
    row(o, "a_G", S.el_G.a_G, "el.granularity.a_G");
    row(o, "b_G", S.el_G.b_G, "el.granularity.b_G");
    row(o, "c_G", S.el_G.c_G, "el.granularity.c_G");
  }
  if (S.el_C.ok()) {
    o << " compute law ln EL = a_C log10 C + c_C  (slice A=" << format_number(S.el_C.A) << ", G=" << format_number(S.el_C.G) << ")\n";
    row(o, "a_C", S.el_C.a_C, "el.compute.a_C");
    row(o, "c_C", S.el_C.c_C, "el.compute.c_C");
    if (const HoldOut* h = R.holdout_of("el.compute", ""))
      o << "  held-out error at C=" << format_number(h->C) << ": " << format_number(100 * h->error, "%.3g") << "%\n";
  }
  if (S.zhao.ok()) {
    const ZhaoLaw& z = S.zhao;
    o << "\nCompeting law (Zhao et al. 2025, arXiv 2509.23678), fitted to the MoE runs that carry N, N_a, D, G_z, S:\n"
         " L = (e G_z + f/G_z + m S^2 + n S)(1/N^alpha + k/N_a^alpha + h N_a/N) + a/N^alpha + b/D^beta + c/N_a^alpha + eps\n"
         " N, N_a: total and active parameters; D: tokens; G_z: the NUMBER OF ACTIVE EXPERTS (not Tian et al.'s "
         "granularity G = 2 d_model / d_expert); S: shared ratio\n";
    for (auto [n, v] : {std::pair<const char*, const Value*>{"e", &z.e}, {"f", &z.f}, {"m", &z.m}, {"n", &z.n},
                        {"k", &z.k}, {"h", &z.h}, {"a", &z.a}, {"alpha", &z.alpha}, {"b", &z.b}, {"beta", &z.beta},
                        {"c", &z.c}, {"eps", &z.eps}}) {
      const bool fixed = std::find(S.zhao_fixed.begin(), S.zhao_fixed.end(), n) != S.zhao_fixed.end();
      char zb[256];
      std::snprintf(zb, sizeof zb, "  %-28s %s%s\n", n, format_number(v->v).c_str(),
                    fixed ? "  (held at the published value: not identified by these runs)" : "");
      o << zb;
    }
    o << "  " << S.zhao_n << " frontier MoE runs: R^2 (ln L) = " << format_number(S.zhao_r2, "%.4f")
      << ", MAPE = " << format_number(S.zhao_mape, "%.3g") << "%; optimal G_z* = sqrt(f/e) = "
      << format_number(z.optimal_Gz()) << ", S* = -n/(2m) = " << format_number(z.optimal_S()) << "\n";
    const HoldOut *hz = R.holdout_of("zhao", ""), *he = R.holdout_of("el.loss", "");
    if (hz) {
      o << "  held-out MoE loss (refitted without each family's largest budget, up to C=" << format_number(hz->C) << ", " << hz->n
        << " run(s)): Zhao law mean |error| " << format_number(100 * hz->error, "%.3g") << "%";
      if (he)
        o << ", EL law through the dense Law 3 " << format_number(100 * he->error, "%.3g") << "% on the same runs: "
          << (hz->error < he->error ? "the Zhao law" : "the EL law") << " extrapolates better here";
      o << "\n";
    }
  }
  if (!R.el.empty()) {
    o << "\n  EL points:\n";
    std::snprintf(b, sizeof b, "  %-10s %-6s %-6s %-10s %-10s %-10s %-10s %-6s %s\n", "A", "G", "S", "C", "loss", "EL",
                  "EL_pred", "from", "set");
    o << b;
    for (auto& e : R.el) {
      std::snprintf(b, sizeof b, "  %-10s %-6s %-6s %-10s %-10s %-10s %-10s %-6s %s\n", format_number(e.A).c_str(),
                    format_number(e.G).c_str(), format_number(e.S).c_str(), format_number(e.C).c_str(),
                    format_number(e.loss, "%.5f").c_str(), format_number(e.EL).c_str(), format_number(e.EL_pred).c_str(),
                    e.from_curve ? "curve" : "runs",
                    (std::string(e.other_S ? "other S" : e.train ? "train" : "validation") +
                     (e.dense_extrapolated ? " (dense extrap.)" : "")).c_str());
      o << b;
    }
  }
  if (!R.notes.empty()) {
    o << "\nNot fitted / left out:\n";
    for (auto& n : R.notes) o << "  - " << n << "\n";
  }
}

void write_fit_h5(const std::string& path, const FitResult& R, const LoadResult& L) {
  H5Writer w(path);
  w.attr("/", "format", std::string("fulcrum-fit"));
  w.attr("/", "format_version", 1.0);
  {
    std::vector<double> C, lr, bt, loss, near, olr, ob;
    std::string fams;
    for (auto& p : R.hp) {
      C.push_back(p.C), lr.push_back(p.lr), bt.push_back(p.batch), loss.push_back(p.loss);
      near.push_back(p.near_opt), olr.push_back(p.outlier_lr), ob.push_back(p.outlier_batch);
      fams += p.family + "\n";
    }
    w.dataset("/law1/C", C);
    w.dataset("/law1/lr", lr);
    w.dataset("/law1/batch", bt);
    w.dataset("/law1/loss", loss);
    w.dataset("/law1/near_optimal", near);
    w.dataset("/law1/outlier_lr", olr);
    w.dataset("/law1/outlier_batch", ob);
    w.attr("/law1", "family_per_point", fams);
  }
  if (!R.hp_opt.empty()) {  // per-budget optima of the vertex method
    std::vector<double> C, lr, bt, vx, olr, ob;
    std::string fams;
    for (auto& q : R.hp_opt) {
      C.push_back(q.C), lr.push_back(q.lr), bt.push_back(q.batch), vx.push_back(q.vertex);
      olr.push_back(q.outlier_lr), ob.push_back(q.outlier_batch);
      fams += q.family + "\n";
    }
    w.dataset("/law1/optima/C", C);
    w.dataset("/law1/optima/lr", lr);
    w.dataset("/law1/optima/batch", bt);
    w.dataset("/law1/optima/vertex", vx);
    w.dataset("/law1/optima/outlier_lr", olr);
    w.dataset("/law1/optima/outlier_batch", ob);
    w.attr("/law1/optima", "family_per_point", fams);
  }
  {
    std::vector<double> C, M, D, loss, res;
    std::string fams;
    for (auto& p : R.iso) {
      C.push_back(p.C), M.push_back(p.M), D.push_back(p.D), loss.push_back(p.loss);
      res.push_back(p.resid_parametric);
      fams += p.family + "\n";
    }
    w.dataset("/law2/points/C", C);
    w.dataset("/law2/points/M", M);
    w.dataset("/law2/points/D", D);
    w.dataset("/law2/points/loss", loss);
    w.dataset("/law2/points/residual_parametric_lnL", res);
    w.attr("/law2/points", "family_per_point", fams);
    std::vector<double> fc, c0, c1, c2, mo, lm;
    fams.clear();
    for (auto& f : R.isofits) {
      fc.push_back(f.C), c0.push_back(f.c0), c1.push_back(f.c1), c2.push_back(f.c2);
      mo.push_back(f.M_opt), lm.push_back(f.L_min);
      fams += f.family + "\n";
    }
    w.dataset("/law2/isoflop/C", fc);
    w.dataset("/law2/isoflop/c0", c0);
    w.dataset("/law2/isoflop/c1", c1);
    w.dataset("/law2/isoflop/c2", c2);
    w.dataset("/law2/isoflop/M_opt", mo);
    w.dataset("/law2/isoflop/L_min", lm);
    w.attr("/law2/isoflop", "family_per_point", fams);
    w.attr("/law2/isoflop", "parabola", std::string("loss = c0 + c1 x + c2 x^2, x = log10 M"));
  }
  {
    std::vector<double> C, loss, res;
    std::string fams;
    for (auto& p : R.curve) C.push_back(p.C), loss.push_back(p.loss), res.push_back(p.resid), fams += p.family + "\n";
    w.dataset("/law3/C", C);
    w.dataset("/law3/loss", loss);
    w.dataset("/law3/residual", res);
    w.attr("/law3", "family_per_point", fams);
  }
  // The columns shared by the EL points of the laws (/el) and the raw per-run
  // EL points (/el/raw); returns EL and the joint law's prediction.
  auto write_el_points = [&w](const std::string& g, const std::vector<ELPoint>& pts) {
    std::vector<double> A, G, S, C, loss, Cd, EL, pr, os;
    std::string fams;
    for (auto& e : pts) {
      A.push_back(e.A), G.push_back(e.G), S.push_back(e.S), C.push_back(e.C), loss.push_back(e.loss);
      Cd.push_back(e.C_dense), EL.push_back(e.EL), pr.push_back(e.EL_pred), os.push_back(e.other_S);
      fams += e.family + "\n";
    }
    for (auto& [name, v] : std::vector<std::pair<const char*, const std::vector<double>*>>{
             {"A", &A}, {"G", &G}, {"S", &S}, {"other_S", &os}, {"C", &C}, {"loss", &loss},
             {"C_dense", &Cd}, {"EL", &EL}, {"EL_pred_joint", &pr}})
      w.dataset(g + "/" + name, *v);
    w.attr(g, "family_per_point", fams);
    return std::make_pair(EL, pr);
  };
  {
    const auto [EL, pr] = write_el_points("/el", R.el);
    std::vector<double> res, tr, fc, dx;
    for (size_t i = 0; i < EL.size(); ++i) res.push_back(std::log(EL[i]) - std::log(pr[i]));
    for (auto& e : R.el) tr.push_back(e.train), fc.push_back(e.from_curve), dx.push_back(e.dense_extrapolated);
    w.dataset("/el/residual_lnEL", res);
    w.dataset("/el/train", tr);
    w.dataset("/el/from_curve", fc);
    w.dataset("/el/dense_extrapolated", dx);
    w.dataset("/el/reference_budgets", R.el_grid);
    w.attr("/el", "definition", std::string("EL(C) = C_dense(L_moe(C)) / C on the fitted Law 3 curves (from_curve = 1), "
                                            "else from the family's best run per budget"));
  }
  write_el_points("/el/raw", R.el_raw);  // raw per-run EL: the best run (or IsoFLOP minimum) of each MoE family and budget
  std::string ex;
  for (auto& e : L.excluded) ex += e.path + ": " + e.reason + "\n";
  for (auto& e : L.unreadable) ex += e.path + ": unreadable: " + e.reason + "\n";
  w.attr("/", "excluded_runs", ex);
  w.attr("/", "diagnostics", diagnostics_text(R));
  std::string bud;
  for (auto& n : R.budget_notes) bud += n + "\n";
  w.attr("/", "budgets", bud);
}

}  // namespace fulcrum::fit
