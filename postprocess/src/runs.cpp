#include "runs.hpp"

#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace fs = std::filesystem;

namespace fulcrum::fit {

std::string family_key(bool is_moe, double A, double G, double S) {
  if (!is_moe) return "dense";
  char buf[128];
  std::snprintf(buf, sizeof buf, "moe A=%.4g G=%.4g S=%.3g", A, G, S);
  return buf;
}

long long budget_key(double C) { return std::llround(std::log10(C) * 1e4); }

namespace {
std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}
}  // namespace

std::vector<std::string> group_budgets(std::vector<Run>& runs, double tol) {
  if (!(tol >= 0 && tol < 1)) throw FitError("budget tolerance must be in [0, 1)", 1);
  std::vector<std::string> notes;
  // recorded budgets: distinct values (equal to 1e-9 relative are one)
  std::vector<double> rec;
  for (auto& r : runs)
    if (r.C_recorded > 0) rec.push_back(r.C_recorded);
  std::sort(rec.begin(), rec.end());
  std::vector<double> budgets;
  for (double b : rec)
    if (budgets.empty() || b > budgets.back() * (1 + 1e-9)) budgets.push_back(b);
  auto nearest = [&](double c) {
    double best = NAN, d = INFINITY;
    for (double b : budgets)
      if (std::abs(std::log(c / b)) < d) d = std::abs(std::log(c / b)), best = b;
    return best;
  };
  struct Info {
    int n = 0, n_rec = 0;
    double lo = INFINITY, hi = 0;
  };
  std::map<double, Info> info;
  std::vector<size_t> rest;
  for (size_t i = 0; i < runs.size(); ++i) {
    Run& r = runs[i];
    if (!(r.C_run > 0) || !std::isfinite(r.C_run)) r.C_run = r.C_recorded > 0 ? r.C_recorded : r.C;
    if (r.C_recorded > 0) {
      r.C = nearest(r.C_recorded);
      if (std::abs(r.C_run - r.C) > tol * r.C)
        notes.push_back("run " + r.path + ": compute " + num(r.C_run) + " misses its recorded budget " +
                        num(r.C) + " by " + num(100 * std::abs(r.C_run / r.C - 1)) +
                        "% (more than the " + num(100 * tol) + "% tolerance); grouped by the recorded budget");
      info[r.C].n_rec++;
    } else {
      double b = nearest(r.C_run);
      if (std::isfinite(b) && std::abs(r.C_run - b) <= tol * b) r.C = b;
      else { rest.push_back(i); continue; }
    }
    auto& in = info[r.C];
    in.n++, in.lo = std::min(in.lo, r.C_run), in.hi = std::max(in.hi, r.C_run);
    r.grouped = true;
  }
  // the rest: greedy clusters from the smallest compute
  std::sort(rest.begin(), rest.end(), [&](size_t a, size_t b) { return runs[a].C_run < runs[b].C_run; });
  const double span = (1 + tol) / (1 - tol);
  for (size_t i = 0; i < rest.size();) {
    const double c0 = runs[rest[i]].C_run;
    size_t j = i;
    double sl = 0;
    while (j < rest.size() && runs[rest[j]].C_run <= c0 * span * (1 + 1e-12)) sl += std::log(runs[rest[j]].C_run), ++j;
    const double c1 = runs[rest[j - 1]].C_run;
    // the centre: the geometric mean; exact when every member has the same compute
    double centre = c1 <= c0 * (1 + 1e-12) ? c0 : std::exp(sl / (j - i));
    for (size_t k = i; k < j; ++k) {
      Run& r = runs[rest[k]];
      r.C = centre;
      r.grouped = true;
      auto& in = info[centre];
      in.n++, in.lo = std::min(in.lo, r.C_run), in.hi = std::max(in.hi, r.C_run);
    }
    i = j;
  }
  for (auto& [C, in] : info) {
    std::string n = "C=" + num(C) + ": " + std::to_string(in.n) + " run(s), ";
    if (in.n_rec == in.n) n += "recorded budget";
    else if (in.n_rec > 0) n += std::to_string(in.n_rec) + " with the recorded budget, " +
                               std::to_string(in.n - in.n_rec) + " matched within " + num(100 * tol) + "%";
    else n += "no recorded budget: clustered within " + num(100 * tol) + "%";
    n += "; compute " + (in.hi > in.lo * (1 + 1e-9) ? num(in.lo) + ".." + num(in.hi) : num(in.lo));
    notes.push_back(n);
  }
  return notes;
}

namespace {

bool has_ext(const fs::path& p) {
  auto e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".h5" || e == ".hdf5" || e == ".hdf";
}

void expand_one(const fs::path& p, std::vector<std::string>& out, std::vector<Skipped>& problems,
                int depth) {
  std::error_code ec;
  if (!fs::exists(p, ec)) {
    problems.push_back({p.string(), "does not exist"});
    return;
  }
  if (fs::is_directory(p, ec)) {
    std::vector<std::string> found;
    for (auto& e : fs::recursive_directory_iterator(p, ec))
      if (e.is_regular_file() && has_ext(e.path())) found.push_back(e.path().string());
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
    return;
  }
  if (has_ext(p) || H5Fis_hdf5(p.string().c_str()) > 0) {
    out.push_back(p.string());
    return;
  }
  // A sweep manifest: one run-file path per line.
  if (depth > 4) {
    problems.push_back({p.string(), "manifest nesting too deep"});
    return;
  }
  std::ifstream in(p);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    auto e = line.find_last_not_of(" \t\r");
    fs::path q = line.substr(b, e - b + 1);
    if (q.is_relative()) q = p.parent_path() / q;
    ++n;
    expand_one(q, out, problems, depth + 1);
  }
  if (n == 0) problems.push_back({p.string(), "not HDF5 and not a manifest listing run files"});
}

double get(const std::map<std::string, double>& m, const char* k, double dflt = NAN) {
  auto it = m.find(k);
  return it == m.end() ? dflt : it->second;
}

}  // namespace

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs,
                                       std::vector<Skipped>& problems) {
  quiet_hdf5();
  std::vector<std::string> out;
  for (auto& s : inputs) expand_one(s, out, problems, 0);
  return out;
}

bool run_from_record(const RunRecord& rec, const LoadOptions& opt, Run& r, std::string& reason) {
  r = Run{};
  r.path = rec.path;
  if (rec.status != "completed") {
    if (rec.status == "diverged")
      reason = "diverged";
    else if (rec.status == "failed")
      reason = "failed";
    else
      reason = "unfinished (status \"" + rec.status + "\")";
    return false;
  }
  const auto& c = rec.config;
  const auto& s = rec.summary;
  for (const char* k : {"flops_per_token", "activation_ratio", "granularity"}) {
    if (!std::isfinite(get(c, k))) {
      reason = std::string("missing /config attribute ") + k;
      return false;
    }
  }
  r.M = get(c, "flops_per_token");
  r.A = get(c, "activation_ratio");
  r.G = get(c, "granularity");
  r.S = get(c, "shared_ratio", 0.0);
  double is_moe = get(c, "is_moe", NAN);
  r.is_moe = std::isfinite(is_moe) ? is_moe != 0.0 : r.G > 0;
  if (!r.is_moe) r.A = 1, r.G = 0, r.S = 0;
  r.N = get(c, "params_total", 0.0);
  r.N_active = get(c, "params_active", 0.0);
  r.lr = get(c, "lr_peak", 0.0);
  r.batch = get(c, "batch_tokens", 0.0);
  r.C_run = get(c, "compute_target", NAN);
  if (!(r.C_run > 0)) r.C_run = get(s, "flops_seen", NAN);
  r.C_recorded = get(c, "compute_budget", 0.0);
  if (!(r.C_recorded > 0) || !std::isfinite(r.C_recorded)) r.C_recorded = 0;
  r.d_model = get(c, "d_model", 0.0);
  r.C = r.C_recorded > 0 ? r.C_recorded : r.C_run;  // until group_budgets
  r.D = get(s, "tokens_seen", NAN);
  if (!(r.D > 0)) r.D = get(c, "tokens_target", NAN);
  if (!(r.D > 0) && r.C > 0 && r.M > 0) r.D = r.C / r.M;
  const char* lk = opt.use_train_loss ? "final_train_loss" : "final_val_loss";
  r.loss = get(s, lk);
  if (!opt.use_train_loss && !std::isfinite(r.loss) && !s.count(lk)) {
    lk = "final_train_loss";
    r.loss = get(s, lk);
  }
  if (!(r.M > 0) || !std::isfinite(r.M)) {
    reason = "flops_per_token is not positive";
    return false;
  }
  if (!(r.C > 0) || !std::isfinite(r.C)) {
    reason = "no positive compute_budget, compute_target or flops_seen";
    return false;
  }
  if (std::isnan(r.loss)) {
    reason = std::string(s.count(lk) ? "" : "missing ") + lk + (s.count(lk) ? " is NaN" : "");
    return false;
  }
  if (!std::isfinite(r.loss) || r.loss <= 0) {
    reason = std::string(lk) + " is not a positive finite number";
    return false;
  }
  if (r.is_moe && !(r.A > 0 && r.A <= 1)) {
    reason = "activation_ratio outside (0, 1]";
    return false;
  }
  if (r.is_moe && !(r.G > 0)) {
    reason = "MoE run with non-positive granularity";
    return false;
  }
  r.family = family_key(r.is_moe, r.A, r.G, r.S);
  return true;
}

LoadResult load_runs(const std::vector<std::string>& inputs, const LoadOptions& opt) {
  if (inputs.empty()) throw FitError("no input files given", 2);
  LoadResult res;
  auto files = expand_inputs(inputs, res.unreadable);
  res.files_seen = static_cast<int>(files.size());
  for (auto& f : files) {
    RunRecord rec;
    std::string why;
    if (!read_run_file(f, rec, why)) {
      res.unreadable.push_back({f, why});
      continue;
    }
    Run r;
    if (run_from_record(rec, opt, r, why))
      res.runs.push_back(std::move(r));
    else
      res.excluded.push_back({f, why});
  }
  if (opt.strict && !res.unreadable.empty()) {
    std::ostringstream m;
    m << res.unreadable.size() << " input(s) unreadable (--strict):";
    for (auto& u : res.unreadable) m << "\n  " << u.path << ": " << u.reason;
    throw FitError(m.str(), 2);
  }
  if (res.runs.empty()) {
    std::ostringstream m;
    if (res.files_seen == 0 && res.unreadable.empty()) {
      m << "no run files found in the inputs";
    } else {
      m << "no usable runs: " << res.files_seen << " file(s) read";
      std::map<std::string, int> why;
      for (auto& e : res.excluded) why[e.reason]++;
      for (auto& u : res.unreadable) why["unreadable: " + u.reason]++;
      for (auto& [k, n] : why) m << "\n  " << n << " x " << k;
      if (!res.excluded.empty() &&
          std::all_of(res.excluded.begin(), res.excluded.end(),
                      [](const Skipped& s) { return s.reason == "diverged"; }) &&
          res.unreadable.empty())
        m << "\n  (every run diverged)";
    }
    throw FitError(m.str(), 2);
  }
  return res;
}

}  // namespace fulcrum::fit
