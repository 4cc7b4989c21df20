// windtunnel.cpp: leave-largest-budget-out predictions (doc/fit.md).
#include "windtunnel.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "format.hpp"

namespace fulcrum::fit {

namespace {
template <class T>
const T* by_family(const std::vector<T>& v, const std::string& fam) {
  for (auto& x : v)
    if (x.family == fam) return &x;
  return nullptr;
}

// The largest budget and every budget within a factor (1 + t) / (1 - t)
// below it form the held-out group (families whose budgets differ slightly
// are held out together); returns its lowest budget and the number of such
// groups among the runs' budgets.
std::pair<double, size_t> top_group(const std::vector<Run>& runs, double tol) {
  std::vector<double> b;
  std::set<long long> seen;
  for (auto& r : runs)
    if (seen.insert(budget_key(r.C)).second) b.push_back(r.C);
  std::sort(b.begin(), b.end(), std::greater<double>());
  const double t = std::clamp(tol, 0.0, 0.99), span = (1 + t) / (1 - t);
  size_t n = 0;
  double lo = NAN;
  for (size_t i = 0; i < b.size();) {
    size_t j = i;
    while (j < b.size() && b[j] * span * (1 + 1e-12) >= b[i]) ++j;
    if (n == 0) lo = b[j - 1];
    ++n, i = j;
  }
  return {lo, n};
}

struct Acc {
  double sum = 0, worst = 0, C = 0;  // C: the largest budget compared
  int n = 0;
  void add(double pred, double obs, double at) {
    const double e = std::fabs(pred / obs - 1);
    if (!std::isfinite(e)) return;
    sum += e, worst = std::max(worst, e), ++n, C = std::max(C, at);
  }
};

}  // namespace

std::vector<HoldOut> holdout_errors(std::vector<Run> runs, const FitResult& full, const FitOptions& opt0,
                                    std::vector<std::string>& notes) {
  FitOptions opt = opt0;
  opt.bootstrap = 0;
  std::vector<HoldOut> out;
  ensure_grouped(runs, opt.budget_tolerance);
  // each family's largest budget (with the budgets within the tolerance
  // below it) is held out, where the family has 3+ budgets: with shared
  // budgets that is the largest budget of the campaign; with budgets that
  // differ per family (runs from elsewhere) every family is tested at its own
  std::map<std::string, std::vector<Run>> byfam;
  for (auto& r : runs) byfam[r.family].push_back(r);
  std::map<std::string, double> cut;  // family -> lowest held-out budget
  for (auto& [fam, rs] : byfam) {
    auto [lo, n] = top_group(rs, opt.budget_tolerance);
    if (n >= 3) cut[fam] = lo * (1 - 1e-9);
  }
  if (cut.empty()) {
    notes.push_back("extrapolation error: no family has 3 or more budgets; leaving the largest out needs 3 or more");
    return out;
  }
  auto held = [&](const std::string& fam, double C) {
    auto it = cut.find(fam);
    return it != cut.end() && C >= it->second;
  };
  std::vector<Run> train;
  for (auto& r : runs)
    if (!held(r.family, r.C)) train.push_back(r);
  const FitResult W = fit_all(train, opt);
  auto push = [&](const std::string& law, const std::string& fam, const Acc& a) {
    if (a.n == 0) return;
    HoldOut h;
    h.law = law, h.family = fam, h.C = a.C, h.error = a.sum / a.n, h.worst = a.worst, h.n = a.n;
    out.push_back(h);
  };
  std::vector<std::string> lost3, lost2;  // families whose law cannot be refitted
  for (auto& l : full.laws.law3) {
    Acc a;
    const Law3* w = by_family(W.laws.law3, l.family);
    for (auto& c : full.curve)
      if (c.family == l.family && held(c.family, c.C)) {
        if (!w) {
          lost3.push_back(l.family);
          break;
        }
        a.add((*w)(c.C), c.loss, c.C);
      }
    push("law3", l.family, a);
  }
  for (auto& l : full.law2_all) {
    Acc a;
    const Law2* w = by_family(W.law2_all, l.family);
    for (auto& f : full.isofits)
      if (f.family == l.family && held(f.family, f.C)) {
        if (!w || !w->ok()) {
          lost2.push_back(l.family);
          break;
        }
        a.add(w->M_opt(f.C), f.M_opt, f.C);
      }
    push("law2", l.family, a);
  }
  for (auto [law, v] : {std::pair<const char*, std::vector<std::string>*>{"Law 3", &lost3}, {"Law 2", &lost2}}) {
    if (v->empty()) continue;
    std::string list;
    for (size_t i = 0; i < v->size() && i < 3; ++i) list += (i ? ", " : "") + (*v)[i];
    if (v->size() > 3) list += " and " + std::to_string(v->size() - 3) + " more";
    notes.push_back(std::string("extrapolation error: ") + law + " cannot be refitted without the largest budget for " +
                    std::to_string(v->size()) + " famil" + (v->size() == 1 ? "y" : "ies") + " (" + list +
                    "): too few budgets left");
  }
  // EL laws: the EL observed at the held-out budgets (each MoE family's best
  // run or IsoFLOP minimum there, through the full fit's dense Law 3: the
  // raw EL of fit.h5:/el/raw), not the smoothed curve EL, which the held-out
  // runs move only through the fit of the whole curve
  if (full.laws.el.ok() || full.laws.el_C.ok()) {
    Acc aj, ac;
    for (auto& e : full.el_raw) {
      if (e.other_S || !held(e.family, e.C) || !(e.EL > 0)) continue;
      if (full.laws.el.ok() && W.laws.el.ok()) aj.add(el_joint(W.laws.el, e.A, e.G, e.C), e.EL, e.C);
      const ELCompute& c = W.laws.el_C;
      if (full.laws.el_C.ok() && c.ok() && std::fabs(std::log(e.A / c.A)) < 1e-3 &&
          std::fabs(std::log(e.G / c.G)) < 1e-3)
        ac.add(std::exp(c.a_C.v * std::log10(e.C) + c.c_C.v), e.EL, e.C);
    }
    if (full.laws.el.ok() && !W.laws.el.ok())
      notes.push_back("extrapolation error: the joint EL law cannot be fitted without the largest budget");
    if (full.laws.el_C.ok() && !W.laws.el_C.ok())
      notes.push_back("extrapolation error: the EL compute law cannot be fitted without the largest budget");
    if (aj.n == 0 && ac.n == 0 && W.laws.el.ok())
      notes.push_back("extrapolation error: no EL observed at the largest budget");
    push("el", "", aj);
    push("el.compute", "", ac);
  }
  // The competing law (Zhao et al.) against the EL law on the same held-out
  // MoE runs (each family's best run at the held-out budget(s) that carries
  // N, N_a, D and G_z): Zhao's L(N, N_a, D, G_z, S) against the EL route,
  // the refitted dense Law 3 at the dense-equivalent compute C EL(A, G, C).
  if (full.laws.zhao.ok()) {
    const Law3* dense = by_family(W.laws.law3, "dense");
    std::map<std::pair<std::string, long long>, const Run*> hb;
    for (auto& r : runs)
      if (r.is_moe && held(r.family, r.C) && r.N > 0 && r.N_active > 0 && r.D > 0 && r.n_active_experts > 0) {
        auto& b = hb[{r.family, budget_key(r.C)}];
        if (!b || r.loss < b->loss) b = &r;
      }
    Acc az, ae;
    const bool el = W.laws.el.ok() && dense;
    if (!W.laws.zhao.ok())
      notes.push_back("extrapolation error: the Zhao law cannot be fitted without the largest budget");
    else if (!el)
      notes.push_back("extrapolation error: no EL law (or dense Law 3) without the largest budget to compare the "
                      "Zhao law with");
    if (W.laws.zhao.ok())
      for (auto& [k, r] : hb) {
        az.add(W.laws.zhao(r->N, r->N_active, r->D, r->n_active_experts, r->S), r->loss, r->C);
        if (el) ae.add((*dense)(r->C * el_joint(W.laws.el, r->A, r->G, r->C)), r->loss, r->C);
      }
    push("zhao", "", az);
    push("el.loss", "", ae);
  }
  return out;
}

WindTunnel wind_tunnel(std::vector<Run> runs, const FitOptions& opt) {
  WindTunnel w;
  ensure_grouped(runs, opt.budget_tolerance);
  std::set<long long> budgets;
  for (auto& r : runs) budgets.insert(budget_key(r.C));
  if (budgets.size() < 3)
    throw FitError("wind tunnel: " + std::to_string(budgets.size()) +
                       " budget(s); holding out the largest needs 3 or more (2+ left to fit)",
                   3);
  const long long kmax = *budgets.rbegin();
  std::vector<Run> train, held;
  for (auto& r : runs) (budget_key(r.C) == kmax ? held : train).push_back(r);
  w.C_held = held.front().C;
  w.n_held = static_cast<int>(held.size());
  w.n_train = static_cast<int>(train.size());
  FitResult R = fit_all(train, opt);

  // observed frontier of each family at the held-out budget: its best run
  std::map<std::string, const Run*> best;
  for (auto& r : held)
    if (!best.count(r.family) || r.loss < best[r.family]->loss) best[r.family] = &r;
  const Law3* dense = by_family(R.laws.law3, "dense");
  for (auto& [fam, r] : best) {
    if (const Law3* l = by_family(R.laws.law3, fam)) {
      WindRow row{"law3", fam, "", w.C_held, r->M, r->D, (*l)(w.C_held), r->loss};
      w.rows.push_back(row);
    } else {
      w.notes.push_back("Law 3 [" + fam + "]: not fitted without the held-out budget");
    }
    if (r->is_moe) {
      if (!dense) {
        w.notes.push_back("EL [" + fam + "]: no dense Law 3 without the held-out budget");
      } else if (!R.laws.el.ok()) {
        w.notes.push_back("EL [" + fam + "]: the joint EL law is not fitted without the held-out budget");
      } else {
        const double Cd = dense->inverse(r->loss);
        if (!std::isfinite(Cd)) {
          w.notes.push_back("EL [" + fam + "]: observed loss " + format_number(r->loss) +
                            " is below the refitted dense asymptote; no observed EL");
        } else {
          WindRow row{"el", fam, "", w.C_held, r->M, r->D, el_joint(R.laws.el, r->A, r->G, w.C_held),
                      Cd / w.C_held};
          w.rows.push_back(row);
        }
      }
    }
  }
  // the held-out IsoFLOP frontier (the best run of each model size of each
  // family, as the parametric fit uses) through its family's L(M, D); runs of
  // a hyper-parameter sweep at other lr and batch are not what L(M, D) models
  std::map<std::pair<std::string, long long>, const Run*> frontier;
  for (auto& r : held) {
    auto& f = frontier[{r.family, std::llround(std::log(r.M) * 1000)}];
    if (!f || r.loss < f->loss) f = &r;
  }
  std::set<std::string> no_param;
  for (auto& [key, rp] : frontier) {
    const Run& r = *rp;
    const Parametric* p = by_family(R.laws.parametric, r.family);
    if (!p || !p->ok()) {
      no_param.insert(r.family);
      continue;
    }
    const double pred = p->E.v + p->A.v / std::pow(r.M, p->alpha.v) + p->B.v / std::pow(r.D, p->beta.v);
    w.rows.push_back({"parametric", r.family, r.path, r.C, r.M, r.D, pred, r.loss});
  }
  for (auto& f : no_param)
    w.notes.push_back("parametric L(M, D) [" + f + "]: not fitted without the held-out budget (needs IsoFLOP ladders)");
  if (w.rows.empty()) {
    std::string m = "wind tunnel: nothing could be predicted for the held-out budget C=" + format_number(w.C_held) + ":";
    for (auto& n : w.notes) m += "\n  - " + n;
    throw FitError(m, 3);
  }
  return w;
}

std::string wind_tunnel_report(const WindTunnel& w) {
  std::ostringstream o;
  o << "Wind tunnel: laws refitted without the largest budget C=" << format_number(w.C_held) << " (" << w.n_train
    << " run(s) fitted, " << w.n_held << " held out), predicted vs observed there\n";
  char b[512];
  std::snprintf(b, sizeof b, "  %-10s %-28s %10s %10s %10s %10s  %s\n", "law", "family", "M", "D", "predicted",
                "observed", "error");
  o << b;
  std::map<std::string, std::pair<int, double>> sum;  // kind -> n, sum |err|
  std::map<std::string, double> worst;
  for (auto& r : w.rows) {
    std::string what = r.kind == "el" ? "EL" : r.kind == "law3" ? "Law 3 loss" : "L(M,D)";
    std::snprintf(b, sizeof b, "  %-10s %-28s %10s %10s %10s %10s  %+.2f%%%s\n", what.c_str(), r.family.c_str(),
                  format_number(r.M).c_str(), format_number(r.D).c_str(), format_number(r.predicted).c_str(), format_number(r.observed).c_str(),
                  100 * r.rel_error(), r.run.empty() ? "" : ("  " + r.run).c_str());
    o << b;
    auto& s = sum[r.kind];
    s.first++, s.second += std::fabs(r.rel_error());
    worst[r.kind] = std::max(worst[r.kind], std::fabs(r.rel_error()));
  }
  for (auto& [k, s] : sum) {
    std::snprintf(b, sizeof b, "  summary %-10s %d point(s): mean |error| %.2f%%, worst %.2f%%\n",
                  k == "el" ? "EL" : k == "law3" ? "Law 3" : "L(M,D)", s.first, 100 * s.second / s.first,
                  100 * worst[k]);
    o << b;
  }
  for (auto& n : w.notes) o << "  note: " << n << "\n";
  return o.str();
}

std::string wind_tunnel_csv(const WindTunnel& w) {
  std::ostringstream o;
  o.precision(10);
  o << "kind,family,run,C,M,D,predicted,observed,rel_error\n";
  for (auto& r : w.rows)
    o << r.kind << ",\"" << r.family << "\"," << r.run << "," << r.C << "," << r.M << "," << r.D << ","
      << r.predicted << "," << r.observed << "," << r.rel_error() << "\n";
  return o.str();
}

}  // namespace fulcrum::fit
