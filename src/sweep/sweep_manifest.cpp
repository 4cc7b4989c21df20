// sweep_manifest.cpp: manifest, state files and run status (doc/sweeps.md).
#include "sweep/sweep_manifest.hpp"

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <toml.hpp>

#include "io/run_file.hpp"
#include "sweep/sweep_plan.hpp"

namespace fs = std::filesystem;

namespace fulcrum::sweep {

namespace {

std::string quote(const std::string& x) {
  std::string s = "\"";
  for (char c : x) {
    if (c == '"' || c == '\\') s += '\\';
    s += c;
  }
  return s + "\"";
}
std::string num(double x) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", x);
  std::string s = b;
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

void write_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp);
    f << text;
    f.flush();
    if (!f) throw SweepError("cannot write " + path);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw SweepError("cannot write " + path + ": " + ec.message());
}

double getd(const toml::value& t, const char* k) {
  if (!t.contains(k)) return 0;
  const auto& v = t.at(k);
  return v.is_floating() ? v.as_floating() : v.is_integer() ? static_cast<double>(v.as_integer()) : 0;
}
std::string gets(const toml::value& t, const char* k) {
  return t.contains(k) && t.at(k).is_string() ? std::string(t.at(k).as_string()) : std::string();
}

std::string last_line(const std::string& path, const std::string& skip_prefix = "") {
  std::ifstream f(path);
  std::string line, last;
  while (std::getline(f, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (!skip_prefix.empty() && line.rfind(skip_prefix, 0) == 0) continue;
    last = line;
  }
  return last;
}

}  // namespace

// ------------------------------------------------------------------ manifest
const ManifestRun* Manifest::find(const std::string& id) const {
  for (const auto& r : runs)
    if (r.id == id) return &r;
  return nullptr;
}

void write_manifest(const Manifest& m) {
  std::ostringstream o;
  o << "# fulcrum-sweep manifest (doc/sweeps.md). Written by `fulcrum-sweep plan`.\n"
    << "format = \"fulcrum-sweep-manifest\"\nformat_version = 1\n"
    << "name = " << quote(m.name) << "\nsweep_deck = " << quote(m.sweep_deck) << "\ndir = " << quote(m.dir)
    << "\nlaws = " << quote(m.laws) << "\nn_runs = " << m.runs.size() << "\n";
  std::ostringstream list, tsv;
  list << "# run files of sweep " << m.name << " (input for fulcrum-fit)\n";
  tsv << "#index\tid\tranks\tdeck\tdir\n";
  for (const auto& r : m.runs) {
    o << "\n[[run]]\nindex = " << r.index << "\nid = " << quote(r.id) << "\nranks = " << r.ranks
      << "\ndeck = " << quote(r.deck) << "\ndir = " << quote(r.dir) << "\nflops_per_token = " << num(r.flops_per_token)
      << "\nparams_total = " << num(r.params_total) << "\nparams_active = " << num(r.params_active)
      << "\ntokens = " << num(r.tokens) << "\ncompute = " << num(r.compute) << "\nbudget = " << num(r.budget)
      << "\nlr = " << num(r.lr) << "\nbatch_tokens = " << num(r.batch_tokens)
      << "\nactivation_ratio = " << num(r.activation_ratio) << "\ngranularity = " << num(r.granularity)
      << "\nshared_ratio = " << num(r.shared_ratio) << "\nd_model = " << r.d_model << "\nn_layers = " << r.n_layers
      << "\nnum_experts = " << r.num_experts << "\n";
    list << r.run_file() << "\n";
    tsv << r.index << "\t" << r.id << "\t" << r.ranks << "\t" << r.deck << "\t" << r.dir << "\n";
  }
  std::error_code ec;
  fs::create_directories(m.dir, ec);
  write_atomic(m.dir + "/runs.list", list.str());
  write_atomic(m.dir + "/runs.tsv", tsv.str());
  write_atomic(m.dir + "/manifest.toml", o.str());  // last: its presence means the plan is complete
}

Manifest read_manifest(const std::string& arg) {
  std::string path = arg;
  if (fs::is_directory(arg)) path = (fs::path(arg) / "manifest.toml").string();
  if (!fs::exists(path)) throw SweepError(path + ": no sweep manifest here (run `fulcrum-sweep plan` first)");
  toml::value t;
  try {
    t = toml::parse(path);
  } catch (const std::exception& e) {
    throw SweepError("cannot read manifest " + path + ": " + e.what());
  }
  if (gets(t, "format") != "fulcrum-sweep-manifest") throw SweepError(path + ": not a fulcrum-sweep manifest");
  if (!t.contains("format_version") || !t.at("format_version").is_integer() ||
      t.at("format_version").as_integer() != 1)
    throw SweepError(path + ": unsupported manifest format_version (this build reads 1)");
  Manifest m;
  m.name = gets(t, "name");
  m.sweep_deck = gets(t, "sweep_deck");
  m.dir = gets(t, "dir");
  m.laws = gets(t, "laws");
  if (t.contains("run"))
    for (const auto& r : t.at("run").as_array()) {
      ManifestRun x;
      x.index = static_cast<int>(getd(r, "index"));
      x.id = gets(r, "id");
      x.ranks = static_cast<int>(getd(r, "ranks"));
      x.deck = gets(r, "deck");
      x.dir = gets(r, "dir");
      x.flops_per_token = getd(r, "flops_per_token");
      x.params_total = getd(r, "params_total");
      x.params_active = getd(r, "params_active");
      x.tokens = getd(r, "tokens");
      x.compute = getd(r, "compute");
      x.budget = getd(r, "budget");
      x.lr = getd(r, "lr");
      x.batch_tokens = getd(r, "batch_tokens");
      x.activation_ratio = getd(r, "activation_ratio");
      x.granularity = getd(r, "granularity");
      x.shared_ratio = getd(r, "shared_ratio");
      x.d_model = static_cast<int>(getd(r, "d_model"));
      x.n_layers = static_cast<int>(getd(r, "n_layers"));
      x.num_experts = static_cast<int>(getd(r, "num_experts"));
      m.runs.push_back(x);
    }
  return m;
}

// ------------------------------------------------------------------ state
std::string host_name() {
  char b[256] = {0};
  ::gethostname(b, sizeof b - 1);
  return b;
}

long long process_start_time(long pid) {
  if (pid <= 0) return 0;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(f, s)) return 0;
  const auto close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream is(s.substr(close + 2));
  std::string field;
  // fields after the command: state(3) ... starttime is field 22 overall -> 20th here
  for (int i = 3; i <= 22; ++i)
    if (!(is >> field)) return 0;
  try {
    return std::stoll(field);
  } catch (...) {
    return 0;
  }
}

StateRecord read_state(const std::string& path) {
  StateRecord s;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    try {
      if (k == "state") s.state = v;
      else if (k == "pid") s.pid = std::stol(v);
      else if (k == "pid_start") s.pid_start = std::stoll(v);
      else if (k == "host") s.host = v;
      else if (k == "launcher") s.launcher = v;
      else if (k == "exit_code") s.exit_code = std::stoi(v);
      else if (k == "start_time") s.start_time = v;
      else if (k == "end_time") s.end_time = v;
      else if (k == "note") s.note = v;
    } catch (...) {
    }
  }
  return s;
}

void write_state(const std::string& path, const StateRecord& s) {
  std::ostringstream o;
  std::string note = s.note;
  for (auto& c : note)
    if (c == '\n' || c == '\r') c = ' ';
  o << "state=" << s.state << "\npid=" << s.pid << "\npid_start=" << s.pid_start << "\nhost=" << s.host
    << "\nlauncher=" << s.launcher << "\nexit_code=" << s.exit_code << "\nstart_time=" << s.start_time
    << "\nend_time=" << s.end_time << "\nnote=" << note << "\n";
  write_atomic(path, o.str());
}

bool state_process_alive(const StateRecord& s) {
  if (s.state != "running" || s.pid <= 0) return false;
  if (!s.host.empty() && s.host != host_name()) return true;  // cannot check another host: trust it
  if (::kill(static_cast<pid_t>(s.pid), 0) != 0 && errno == ESRCH) return false;
  const long long st = process_start_time(s.pid);
  if (st == 0) return false;
  return s.pid_start == 0 || st == s.pid_start;
}

// ------------------------------------------------------------------ status
const char* status_name(RunStatus s) {
  switch (s) {
    case RunStatus::pending: return "pending";
    case RunStatus::running: return "running";
    case RunStatus::completed: return "completed";
    case RunStatus::diverged: return "diverged";
    case RunStatus::failed: return "failed";
  }
  return "?";
}

RunStatusInfo inspect_run(const ManifestRun& run) {
  RunStatusInfo info;
  const StateRecord st = read_state(run.state_file());
  if (st.state == "running" && state_process_alive(st)) {
    info.status = RunStatus::running;
    info.note = "pid " + std::to_string(st.pid) + " on " + st.host + (st.launcher.empty() ? "" : " (" + st.launcher + ")");
    return info;
  }
  info.has_run_file = fs::exists(run.run_file());
  if (info.has_run_file) {
    try {
      info.file_status = read_string_attr(run.run_file(), "/", "status");
    } catch (const std::exception&) {
      info.file_status = "";
    }
  }
  if (info.file_status == "completed") {
    info.status = RunStatus::completed;
    try {
      info.final_val_loss = read_numeric_attr(run.run_file(), "/summary", "final_val_loss");
      info.has_val_loss = true;
    } catch (const std::exception&) {
    }
    return info;
  }
  if (info.file_status == "diverged") {
    info.status = RunStatus::diverged;
    return info;
  }
  if (info.file_status == "failed") {
    info.status = RunStatus::failed;
    try {
      info.note = read_string_attr(run.run_file(), "/", "error");
    } catch (const std::exception&) {
      info.note = "run file status failed";
    }
    return info;
  }
  if (st.state == "exited" && st.exit_code != 0) {
    info.status = st.exit_code == 3 ? RunStatus::diverged : RunStatus::failed;
    std::string why = last_line(run.log_file(), "FULCRUM_SUMMARY");
    if (why.size() > 160) why = why.substr(0, 157) + "...";
    info.note = "exit " + std::to_string(st.exit_code) + (why.empty() ? "" : ": " + why);
    return info;
  }
  info.status = RunStatus::pending;
  if (st.state == "running" || st.state == "interrupted" || info.file_status == "running")
    info.note = "interrupted" + std::string(info.has_run_file ? " (partial run file, rerun overwrites)" : "");
  else if (info.has_run_file && info.file_status.empty())
    info.note = "unreadable run file (rerun overwrites)";
  return info;
}

std::string status_report(const Manifest& m, bool table) {
  std::map<RunStatus, int> counts;
  std::ostringstream rows;
  size_t w = 4;
  for (const auto& r : m.runs) w = std::max(w, r.id.size());
  char b[1024];
  for (const auto& r : m.runs) {
    const RunStatusInfo s = inspect_run(r);
    counts[s.status]++;
    if (!table) continue;
    std::string loss = s.has_val_loss ? std::to_string(s.final_val_loss).substr(0, 7) : "-";
    std::snprintf(b, sizeof b, "%-*s %-9s %10.4g %10.4g %9.3g %8s  %s\n", (int)w, r.id.c_str(), status_name(s.status),
                  r.flops_per_token, r.compute, r.lr, loss.c_str(), s.note.c_str());
    rows << b;
  }
  std::ostringstream o;
  o << "sweep " << m.name << " (" << m.dir << "): " << m.runs.size() << " runs:";
  for (RunStatus s : {RunStatus::completed, RunStatus::running, RunStatus::diverged, RunStatus::failed, RunStatus::pending})
    o << " " << status_name(s) << " " << counts[s];
  o << "\n";
  if (table) {
    std::snprintf(b, sizeof b, "%-*s %-9s %10s %10s %9s %8s  %s\n", (int)w, "id", "status", "M", "C", "lr", "val_loss", "note");
    o << b << rows.str();
  }
  return o.str();
}


std::string runs_csv_header() {
  return "stage,sweep,id,status,is_moe,d_model,n_layers,num_experts,activation_ratio,granularity,shared_ratio,"
         "params_total,params_active,flops_per_token,lr,batch_tokens,budget,compute,tokens,"
         "final_train_loss,final_val_loss,tokens_per_second,wall_time_s\n";
}

namespace {
// CSV field: quoted when it holds a comma, a quote or a line break
std::string csv_field(const std::string& v) {
  if (v.find_first_of(",\"\n\r") == std::string::npos) return v;
  std::string q = "\"";
  for (char c : v) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}
std::string csv_number(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.10g", v);
  return b;
}
}  // namespace

std::string runs_csv_rows(const Manifest& m, const std::string& stage, const std::string& sweep) {
  std::ostringstream o;
  for (const auto& r : m.runs) {
    const RunStatusInfo s = inspect_run(r);
    std::vector<std::string> f = {csv_field(stage), csv_field(sweep), csv_field(r.id), status_name(s.status),
                                  r.num_experts > 0 ? "1" : "0", std::to_string(r.d_model), std::to_string(r.n_layers),
                                  std::to_string(r.num_experts), csv_number(r.activation_ratio),
                                  csv_number(r.granularity), csv_number(r.shared_ratio), csv_number(r.params_total),
                                  csv_number(r.params_active), csv_number(r.flops_per_token), csv_number(r.lr),
                                  csv_number(r.batch_tokens), r.budget > 0 ? csv_number(r.budget) : "",
                                  csv_number(r.compute), csv_number(r.tokens)};
    for (const char* key : {"final_train_loss", "final_val_loss", "tokens_per_second", "wall_time_s"}) {
      std::string v;
      if (s.status == RunStatus::completed || s.status == RunStatus::diverged) {
        try {
          v = csv_number(read_numeric_attr(r.run_file(), "/summary", key));
        } catch (const std::exception&) {
        }
      }
      f.push_back(v);
    }
    for (size_t i = 0; i < f.size(); ++i) o << (i ? "," : "") << f[i];
    o << "\n";
  }
  return o.str();
}

}  // namespace fulcrum::sweep
