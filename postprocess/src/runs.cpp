#include "runs.hpp"

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
  if (has_ext(p) || is_run_table(p.string()) || h5::File::is_hdf5(p.string())) {
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
  r.n_active_experts = r.is_moe ? get(c, "num_active_experts", 0.0) : 0;
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
    if (is_run_table(f)) {  // a table of runs (CSV/TSV): malformed cells are fatal (exit 2)
      auto rs = read_run_table(f, opt, res.excluded);
      for (auto& r : rs) res.runs.push_back(std::move(r));
      continue;
    }
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

// ---------------------------------------------------------------- run tables
namespace fulcrum::fit {

namespace {

// Columns of a run table (doc/fit.md, "Runs from elsewhere"), and the names
// of the run file's /config and /summary (and of `fulcrum-sweep status --csv`
// and a study's runs.csv) accepted for them.
const std::vector<std::string> kTableColumns = {
    "run", "status", "is_moe", "A", "G", "S", "M", "params", "tokens", "compute", "budget", "loss",
    "lr", "batch", "N_total", "N_active", "n_active_experts", "d_model", "final_val_loss", "final_train_loss"};
const std::map<std::string, std::string> kColumnAlias = {
    {"id", "run"}, {"activation_ratio", "A"}, {"granularity", "G"}, {"shared_ratio", "S"},
    {"flops_per_token", "M"}, {"params_total", "N_total"}, {"params_active", "N_active"},
    {"batch_tokens", "batch"}, {"lr_peak", "lr"}, {"num_active_experts", "n_active_experts"},
    {"compute_budget", "budget"}, {"tokens_seen", "tokens"}};

std::vector<std::string> split_row(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string cur;
  bool q = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (q) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') cur += '"', ++i;
      else if (c == '"') q = false;
      else cur += c;
    } else if (c == '"') {
      q = true;
    } else if (c == sep) {
      out.push_back(cur), cur.clear();
    } else if (c != '\r') {
      cur += c;
    }
  }
  out.push_back(cur);
  for (auto& f : out) {  // surrounding blanks
    auto b = f.find_first_not_of(" \t"), e = f.find_last_not_of(" \t");
    f = b == std::string::npos ? "" : f.substr(b, e - b + 1);
  }
  return out;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

std::string num17(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

}  // namespace

bool is_run_table(const std::string& path) {
  auto e = fs::path(path).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ".csv" || e == ".tsv";
}

std::vector<Run> read_run_table(const std::string& path, const LoadOptions& opt, std::vector<Skipped>& excluded) {
  std::ifstream in(path);
  if (!in) throw FitError(path + ": cannot open the run table", 2);
  std::string line;
  int ln = 0;
  std::map<std::string, size_t> col;
  std::vector<std::string> header;
  char sep = ',';
  auto where = [&](int l, size_t c) {
    std::string w = path + ": line " + std::to_string(l);
    if (c != std::string::npos)
      w += ", column " + std::to_string(c + 1) + (c < header.size() ? " (" + header[c] + ")" : "");
    return w + ": ";
  };
  while (std::getline(in, line)) {  // the header: the first line that is not blank or a comment
    ++ln;
    auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    sep = line.find('\t') != std::string::npos ? '\t' : ',';
    header = split_row(line, sep);
    break;
  }
  if (header.empty()) throw FitError(path + ": empty run table (no header line)", 2);
  const int header_line = ln;
  for (size_t c = 0; c < header.size(); ++c) {
    const std::string& h0 = header[c];
    if (h0.empty()) throw FitError(where(header_line, c) + "empty column name", 2);
    auto al = kColumnAlias.find(h0);
    const std::string h = al == kColumnAlias.end() ? h0 : al->second;
    // other columns (a trainer's extras, a study's stage, sweep, wall_time_s, ...) are ignored
    if (std::find(kTableColumns.begin(), kTableColumns.end(), h) == kTableColumns.end()) continue;
    if (col.count(h))
      throw FitError(where(header_line, c) + "duplicate column \"" + h0 + "\" (also column " +
                         std::to_string(col[h] + 1) + (header[col[h]] != h0 ? ", \"" + header[col[h]] + "\"" : "") +
                         ")", 2);
    col[h] = c;
  }
  // the loss: `loss`, else the run file's final_val_loss (final_train_loss
  // with --train-loss, or when there is no validation loss)
  if (!col.count("loss")) {
    const char* pick = opt.use_train_loss ? "final_train_loss" : "final_val_loss";
    if (!col.count(pick)) pick = "final_train_loss";
    if (col.count(pick)) col["loss"] = col[pick];
  }
  auto need = [&](const char* a, const char* b = nullptr) {
    if (col.count(a) || (b && col.count(b))) return;
    throw FitError(where(header_line, std::string::npos) + "missing column \"" + a + "\"" +
                       (b ? std::string(" (or \"") + b + "\")" : std::string()), 2);
  };
  need("is_moe");
  if (!col.count("loss"))
    throw FitError(where(header_line, std::string::npos) + "missing column \"loss\" (or final_val_loss)", 2);
  need("M", "params");
  need("compute", "tokens");
  std::vector<Run> runs;
  while (std::getline(in, line)) {
    ++ln;
    auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    auto f = split_row(line, sep);
    if (f.size() != header.size())
      throw FitError(where(ln, std::string::npos) + std::to_string(f.size()) + " cells, the header has " +
                         std::to_string(header.size()), 2);
    // a number, or NaN when the cell is empty or the column absent
    auto get = [&](const char* k) -> double {
      auto it = col.find(k);
      if (it == col.end()) return NAN;
      const std::string& s = f[it->second];
      if (s.empty()) return NAN;
      std::string low = s;
      std::transform(low.begin(), low.end(), low.begin(), ::tolower);
      if (low == "nan") return NAN;
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      if (end == s.c_str() || *end != '\0')
        throw FitError(where(ln, it->second) + "\"" + s + "\" is not a number", 2);
      return v;
    };
    auto positive = [&](const char* k, double v) {
      if (std::isfinite(v) && v <= 0)
        throw FitError(where(ln, col[k]) + k + " = " + f[col[k]] + " must be positive", 2);
      if (std::isinf(v)) throw FitError(where(ln, col[k]) + k + " is infinite", 2);
    };
    Run r;
    r.path = col.count("run") && !f[col["run"]].empty() ? f[col["run"]] : path + ":" + std::to_string(ln);
    const std::string status = col.count("status") && !f[col["status"]].empty() ? f[col["status"]] : "completed";
    const double moe = get("is_moe");
    if (!(moe == 0 || moe == 1)) throw FitError(where(ln, col["is_moe"]) + "is_moe must be 0 or 1", 2);
    r.is_moe = moe == 1;
    double M = get("M"), params = get("params"), D = get("tokens"), C = get("compute"), budget = get("budget");
    for (auto [k, v] : {std::pair<const char*, double>{"M", M}, {"params", params}, {"tokens", D},
                        {"compute", C}, {"budget", budget}})
      if (col.count(k)) positive(k, v);
    if (!std::isfinite(M) && std::isfinite(params)) M = 6 * params;  // training FLOPs per token ~ 6 N
    if (!std::isfinite(M))
      throw FitError(where(ln, col.count("M") ? col["M"] : col["params"]) + "no M (or params) for this run", 2);
    if (!std::isfinite(C) && std::isfinite(D)) C = M * D;
    if (!std::isfinite(D) && std::isfinite(C)) D = C / M;
    if (!std::isfinite(C))
      throw FitError(where(ln, col.count("compute") ? col["compute"] : col["tokens"]) +
                         "no compute (or tokens) for this run", 2);
    r.M = M, r.D = D, r.C_run = C;
    r.C_recorded = std::isfinite(budget) ? budget : 0;
    r.C = r.C_recorded > 0 ? r.C_recorded : r.C_run;
    if (r.is_moe) {
      r.A = get("A"), r.G = get("G"), r.S = get("S");
      if (!(r.A > 0 && r.A <= 1))
        throw FitError(where(ln, col.count("A") ? col["A"] : std::string::npos) +
                           "a MoE run needs an activation ratio A in (0, 1]", 2);
      if (!(r.G > 0))
        throw FitError(where(ln, col.count("G") ? col["G"] : std::string::npos) +
                           "a MoE run needs a granularity G > 0 (2 d_model / d_expert)", 2);
      if (!std::isfinite(r.S)) r.S = 0;
      if (r.S < 0 || r.S > 1) throw FitError(where(ln, col["S"]) + "S must lie in [0, 1]", 2);
    } else {
      r.A = 1, r.G = 0, r.S = 0;
    }
    r.N = std::isfinite(get("N_total")) ? get("N_total") : 0;
    r.N_active = std::isfinite(get("N_active")) ? get("N_active") : 0;
    r.n_active_experts = std::isfinite(get("n_active_experts")) ? get("n_active_experts") : 0;
    r.lr = std::isfinite(get("lr")) ? get("lr") : 0;
    r.batch = std::isfinite(get("batch")) ? get("batch") : 0;
    r.d_model = std::isfinite(get("d_model")) ? get("d_model") : 0;
    r.loss = get("loss");
    r.family = family_key(r.is_moe, r.A, r.G, r.S);
    if (status != "completed") {
      excluded.push_back({r.path, status == "diverged" || status == "failed" ? status
                                                                              : "unfinished (status \"" + status + "\")"});
      continue;
    }
    if (std::isnan(r.loss)) {
      excluded.push_back({r.path, "loss is NaN or empty"});
      continue;
    }
    if (!std::isfinite(r.loss) || r.loss <= 0) {
      excluded.push_back({r.path, "loss is not a positive finite number"});
      continue;
    }
    runs.push_back(std::move(r));
  }
  return runs;
}

std::string run_table_csv(const std::vector<Run>& runs) {
  std::string o =
      "# fulcrum-fit run table (doc/fit.md): M = non-embedding training FLOPs per token, tokens, compute and "
      "budget in FLOPs, batch in tokens, G = 2 d_model / d_expert\n"
      "run,status,is_moe,A,G,S,M,tokens,compute,budget,loss,lr,batch,N_total,N_active,n_active_experts,d_model\n";
  auto opt = [](double v) { return v > 0 ? num17(v) : std::string(); };
  for (auto& r : runs) {
    o += csv_field(r.path) + ",completed," + (r.is_moe ? "1" : "0") + "," + num17(r.A) + "," + num17(r.G) + "," +
         num17(r.S) + "," + num17(r.M) + "," + num17(r.D) + "," + num17(r.C_run) + "," + opt(r.C_recorded) + "," +
         num17(r.loss) + "," + opt(r.lr) + "," + opt(r.batch) + "," + opt(r.N) + "," + opt(r.N_active) + "," +
         opt(r.n_active_experts) + "," + opt(r.d_model) + "\n";
  }
  return o;
}

}  // namespace fulcrum::fit
