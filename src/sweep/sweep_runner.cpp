// sweep_runner.cpp: local execution (K concurrent runs through mpiexec) and
// Slurm submission (doc/sweeps.md).
#include "sweep/sweep_runner.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "deck/deck_reader.hpp"
#include "io/run_file.hpp"
#include "sweep/sweep_plan.hpp"

#ifndef FULCRUM_SOURCE_DIR
#define FULCRUM_SOURCE_DIR ""
#endif

namespace fs = std::filesystem;

namespace fulcrum::sweep {

namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int sig) { g_stop = sig; }

struct SignalGuard {  // SIGINT/SIGTERM/SIGUSR1 set g_stop while a sweep runs
  struct sigaction old_int {}, old_term {}, old_usr1 {};
  SignalGuard() {
    g_stop = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGUSR1, &sa, &old_usr1);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    sigaction(SIGUSR1, &old_usr1, nullptr);
  }
};

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  std::string w;
  while (is >> w) out.push_back(w);
  return out;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
  return s;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct Child {
  pid_t pid = 0;
  const ManifestRun* run = nullptr;
  StateRecord state;
};

// fork + exec the launcher; stdout/stderr appended to the run's train.log.
// A rerun resumes when the run left a checkpoint and did not diverge (the
// trainer resumes automatically without overwrite); otherwise it restarts
// and replaces the partial run file.
bool rerun_overwrites(const ManifestRun& r, const RunStatusInfo& s) {
  if (!s.has_run_file) return false;
  if (s.file_status == "diverged" || s.file_status == "completed") return true;
  const std::string ckpt = r.dir + "/checkpoint.h5";
  if (!std::filesystem::exists(ckpt)) return true;
  try {  // resume only a checkpoint of this very deck (it may have been re-planned)
    return read_string_attr(ckpt, "/", "fingerprint") != training_fingerprint(read_deck(r.deck).config);
  } catch (const std::exception&) {
    return true;  // unreadable checkpoint or deck: start afresh
  }
}

Child launch(const ManifestRun& r, const RunOptions& o, bool overwrite) {
  std::error_code ec;
  fs::create_directories(r.dir, ec);
  std::string tmpl = o.launcher.empty() ? "mpiexec -n {ranks} --oversubscribe --allow-run-as-root" : o.launcher;
  std::vector<std::string> argv = split_words(replace_all(tmpl, "{ranks}", std::to_string(std::max(1, r.ranks))));
  argv.push_back(o.train);
  argv.push_back(r.deck);
  if (overwrite) {
    argv.push_back("--set");
    argv.push_back("output.overwrite=true");
  }
  argv.push_back("--quiet");
  {
    std::ofstream log(r.log_file(), std::ios::app);
    log << "==== fulcrum-sweep " << iso8601_utc_now() << " on " << host_name() << ":";
    for (const auto& a : argv) log << " " << a;
    log << "\n";
  }
  // Threads per rank: the machine's cores shared by the K concurrent runs of
  // r.ranks ranks each, unless the user set them. OpenMP (oneDNN) and OpenBLAS
  // threads of processes that share cores slow each other down several-fold.
  const long cores = std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN));
  const std::string threads =
      std::to_string(std::max(1L, cores / (static_cast<long>(std::max(1, o.jobs)) * std::max(1, r.ranks))));
  const pid_t pid = ::fork();
  if (pid < 0) throw SweepError(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    ::setenv("OMP_NUM_THREADS", threads.c_str(), /*overwrite=*/0);
    ::setenv("OPENBLAS_NUM_THREADS", threads.c_str(), /*overwrite=*/0);
    ::setpgid(0, 0);  // own process group: a signal to it reaches mpiexec and the ranks
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    const int fd = ::open(r.log_file().c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "fulcrum-sweep: cannot execute %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  Child c;
  c.pid = pid;
  c.run = &r;
  c.state.state = "running";
  c.state.pid = pid;
  for (int i = 0; i < 50 && (c.state.pid_start = process_start_time(pid)) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  c.state.host = host_name();
  c.state.launcher = o.launcher_name;
  c.state.start_time = iso8601_utc_now();
  write_state(r.state_file(), c.state);
  return c;
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

void finish(Child& c, int code, bool interrupted) {
  c.state.state = interrupted ? "interrupted" : "exited";
  c.state.exit_code = code;
  c.state.end_time = iso8601_utc_now();
  c.state.note = interrupted ? "stopped by a signal to fulcrum-sweep" : "";
  write_state(c.run->state_file(), c.state);
}

void stop_children(std::map<pid_t, Child>& children) {
  for (auto& [pid, c] : children) ::kill(-pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!children.empty()) {
    int status = 0;
    const pid_t p = ::waitpid(-1, &status, WNOHANG);
    if (p > 0) {
      auto it = children.find(p);
      if (it != children.end()) {
        finish(it->second, exit_code_of(status), true);
        children.erase(it);
      }
      continue;
    }
    if (p < 0 && errno == ECHILD) break;
    if (std::chrono::steady_clock::now() > deadline)
      for (auto& [pid, c] : children) ::kill(-pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

bool should_run(const RunStatusInfo& s, const RunOptions& o) {
  switch (s.status) {
    case RunStatus::pending: return true;
    case RunStatus::failed: return o.retry_failed;
    case RunStatus::diverged: return o.retry_diverged;
    default: return false;
  }
}

std::string self_executable() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.string();
}

std::string default_train_executable() {
  if (const char* e = std::getenv("FULCRUM_TRAIN"); e && *e) return e;
  const fs::path self = self_executable();
  if (!self.empty()) {
    for (const fs::path& c : {self.parent_path() / "fulcrum-train", self.parent_path().parent_path() / "apps" / "fulcrum-train"})
      if (fs::exists(c)) return c.string();
  }
  return "fulcrum-train";  // from PATH
}

std::string default_templates_dir() {
  if (const char* e = std::getenv("FULCRUM_JOBSCRIPTS"); e && *e) return e;
  const fs::path self = self_executable();
  const fs::path installed = self.parent_path().parent_path() / "share" / "fulcrum" / "jobscripts";
  if (fs::exists(installed)) return installed.string();
  return std::string(FULCRUM_SOURCE_DIR) + "/jobscripts";
}

RunSummary run_sweep(const Manifest& m, const RunOptions& o) {
  RunSummary sum;
  const std::set<std::string> only(o.only_ids.begin(), o.only_ids.end());
  for (const auto& id : only)
    if (!m.find(id)) throw SweepError("no run '" + id + "' in sweep " + m.name);
  std::vector<std::pair<const ManifestRun*, bool>> todo;  // run, overwrite
  for (const auto& r : m.runs) {
    if (!only.empty() && !only.count(r.id)) continue;
    const RunStatusInfo s = inspect_run(r);
    if (!should_run(s, o)) {
      ++sum.skipped;
      if (!o.quiet)
        std::printf("skip   %s (%s%s)\n", r.id.c_str(), status_name(s.status), s.note.empty() ? "" : (": " + s.note).c_str());
      continue;
    }
    todo.emplace_back(&r, rerun_overwrites(r, s));
  }
  std::fflush(stdout);
  SignalGuard guard;
  std::map<pid_t, Child> children;
  size_t next = 0;
  const int K = std::max(1, o.jobs);
  while (next < todo.size() || !children.empty()) {
    if (g_stop) {
      if (!o.quiet) std::printf("fulcrum-sweep: signal %d: stopping %zu running run(s)\n", (int)g_stop, children.size());
      stop_children(children);
      sum.interrupted = true;
      break;
    }
    while (!g_stop && next < todo.size() && static_cast<int>(children.size()) < K) {
      const auto& [r, overwrite] = todo[next++];
      Child c = launch(*r, o, overwrite);
      ++sum.launched;
      if (!o.quiet) {
        std::printf("start  %s (%d rank%s)%s\n", r->id.c_str(), r->ranks, r->ranks == 1 ? "" : "s",
                    overwrite ? " [overwriting a previous run file]" : "");
        std::fflush(stdout);
      }
      children[c.pid] = c;
    }
    int status = 0;
    const pid_t p = ::waitpid(-1, &status, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) break;
      throw SweepError(std::string("waitpid: ") + std::strerror(errno));
    }
    auto it = children.find(p);
    if (it == children.end()) continue;
    const int code = exit_code_of(status);
    if (g_stop && code != 0 && code != 3) {  // killed by our own stop: not a failure
      finish(it->second, code, true);
      children.erase(it);
      continue;
    }
    finish(it->second, code, false);
    const RunStatusInfo s = inspect_run(*it->second.run);
    if (s.status == RunStatus::completed) ++sum.completed;
    else if (s.status == RunStatus::diverged) ++sum.diverged;
    else ++sum.failed;
    if (!o.quiet) {
      std::printf("%-9s %s (exit %d)%s\n", status_name(s.status), it->second.run->id.c_str(), code,
                  s.status == RunStatus::failed ? (" log: " + it->second.run->log_file()).c_str() : "");
      std::fflush(stdout);
    }
    children.erase(it);
  }
  return sum;
}

int run_one(const Manifest& m, int index, const RunOptions& o) {
  if (index < 0 || index >= static_cast<int>(m.runs.size()))
    throw SweepError("index " + std::to_string(index) + " out of range (sweep " + m.name + " has " +
                     std::to_string(m.runs.size()) + " runs)");
  const ManifestRun& r = m.runs[index];
  const RunStatusInfo s = inspect_run(r);
  if (!should_run(s, o)) {
    std::printf("skip %s (%s)\n", r.id.c_str(), status_name(s.status));
    return s.status == RunStatus::completed || s.status == RunStatus::running ? 0 : (s.status == RunStatus::diverged ? 3 : 1);
  }
  SignalGuard guard;
  std::printf("start %s (%d rank%s)%s\n", r.id.c_str(), r.ranks, r.ranks == 1 ? "" : "s",
              s.has_run_file ? " [overwriting a previous run file]" : "");
  std::fflush(stdout);
  Child c = launch(r, o, rerun_overwrites(r, s));
  std::map<pid_t, Child> children{{c.pid, c}};
  int status = 0;
  for (;;) {
    if (g_stop) {
      std::printf("fulcrum-sweep: signal %d: stopping %s\n", (int)g_stop, r.id.c_str());
      stop_children(children);
      return 128 + static_cast<int>(g_stop);
    }
    const pid_t p = ::waitpid(c.pid, &status, 0);
    if (p == c.pid) break;
    if (p < 0 && errno != EINTR) throw SweepError(std::string("waitpid: ") + std::strerror(errno));
  }
  const int code = exit_code_of(status);
  finish(c, code, false);
  const RunStatus final_status = inspect_run(r).status;
  std::printf("%s %s (exit %d)\n", status_name(final_status), r.id.c_str(), code);
  // The run file is authoritative (doc/output-format.md): a trainer that wrote
  // "completed" and then crashed on exit still completed its run.
  if (final_status == RunStatus::completed) return 0;
  if (final_status == RunStatus::diverged) return 3;
  return code == 0 ? 1 : code;
}

// ------------------------------------------------------------------ Slurm
std::string fill_template(const std::string& text, const std::vector<std::pair<std::string, std::string>>& vars,
                          const std::string& what) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const size_t a = text.find('@', i);
    if (a == std::string::npos) {
      out += text.substr(i);
      break;
    }
    const size_t b = text.find('@', a + 1);
    const std::string name = b == std::string::npos ? "" : text.substr(a + 1, b - a - 1);
    const bool is_var = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'A' && c <= 'Z') || c == '_' || (c >= '0' && c <= '9');
    });
    if (!is_var) {  // a lone '@' (e.g. --signal=B:USR1@120)
      out += text.substr(i, a + 1 - i);
      i = a + 1;
      continue;
    }
    auto it = std::find_if(vars.begin(), vars.end(), [&](const auto& v) { return v.first == name; });
    if (it == vars.end()) throw SweepError(what + ": unknown placeholder @" + name + "@");
    out += text.substr(i, a - i) + it->second;
    i = b + 1;
  }
  return out;
}

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw SweepError("cannot read job script template " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string run_capture(const std::string& cmd, int& rc) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  rc = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
  return out;
}

std::string sbatch(const std::vector<std::string>& args, const std::string& script, bool dry) {
  std::string cmd = "sbatch --parsable";
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " " + shell_quote(script) + " 2>&1";
  if (dry) {
    std::printf("would run: %s\n", cmd.c_str());
    return "DRYRUN";
  }
  int rc = 0;
  std::string out = run_capture(cmd, rc);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (rc != 0) throw SweepError("sbatch failed (exit " + std::to_string(rc) + "): " + out);
  const std::string id = out.substr(0, out.find(';'));  // "id;cluster"
  return id.substr(id.rfind('\n') + 1);
}

}  // namespace

std::string submit_job(const std::vector<std::string>& sbatch_args, const std::string& script, bool dry_run) {
  return sbatch(sbatch_args, script, dry_run);
}

std::string shell_word(const std::string& s) { return shell_quote(s); }

SubmitResult submit_sweep(const Manifest& m, const SubmitOptions& o) {
  SubmitResult res;
  const std::string sdir = m.dir + "/slurm";
  std::error_code ec;
  fs::create_directories(sdir + "/logs", ec);
  if (ec) throw SweepError("cannot create " + sdir + ": " + ec.message());
  RunOptions ro;
  ro.retry_failed = o.retry_failed;
  // group the runs that need running by rank count: one array per group
  std::map<int, std::vector<int>> groups;
  for (const auto& r : m.runs)
    if (should_run(inspect_run(r), ro)) groups[std::max(1, r.ranks)].push_back(r.index);
  const std::string tdir = o.templates.empty() ? default_templates_dir() : o.templates;
  const std::string array_tmpl = read_text(tdir + "/sweep-array.sbatch");
  const std::string self = self_executable();
  for (const auto& [ranks, idx] : groups) {
    const std::string tag = "r" + std::to_string(ranks);
    const std::string list = sdir + "/array-" + tag + ".idx";
    {
      std::ofstream f(list);
      for (int i : idx) f << i << "\n";
    }
    const std::string array = "0-" + std::to_string(idx.size() - 1) + "%" + std::to_string(std::max(1, o.throttle));
    const std::string script = fill_template(
        array_tmpl,
        {{"JOB_NAME", m.name + "-" + tag},
         {"ARRAY", array},
         {"NTASKS", std::to_string(ranks)},
         {"LOG_DIR", sdir + "/logs"},
         {"SWEEP_DIR", m.dir},
         {"INDEX_FILE", list},
         {"FULCRUM_SWEEP", self},
         {"FULCRUM_TRAIN", o.train.empty() ? default_train_executable() : o.train},
         {"LAUNCHER", o.launcher},
         {"RETRY", o.retry_failed ? "--retry-failed" : ""}},
        tdir + "/sweep-array.sbatch");
    const std::string path = sdir + "/sweep-array-" + tag + ".sbatch";
    {
      std::ofstream f(path);
      f << script;
    }
    fs::permissions(path, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add, ec);
    res.scripts.push_back(path);
    res.array_jobs.push_back(sbatch(o.sbatch_args, path, o.dry_run));
  }
  if (o.postprocess) {
    const std::string tmpl = read_text(tdir + "/postprocess.sbatch");
    const std::string script = fill_template(tmpl,
                                             {{"JOB_NAME", m.name + "-post"},
                                              {"LOG_DIR", sdir + "/logs"},
                                              {"SWEEP_DIR", m.dir},
                                              {"FULCRUM_SWEEP", self},
                                              {"FULCRUM_FIT", o.fit},
                                              {"FIT_OUT", m.dir + "/fit"}},
                                             tdir + "/postprocess.sbatch");
    const std::string path = sdir + "/postprocess.sbatch";
    {
      std::ofstream f(path);
      f << script;
    }
    res.scripts.push_back(path);
    std::vector<std::string> args = o.sbatch_args;
    if (!res.array_jobs.empty()) {
      std::string dep = "--dependency=afterany";
      for (const auto& j : res.array_jobs) dep += ":" + j;
      args.push_back(dep);
    }
    res.postprocess_job = sbatch(args, path, o.dry_run);
  }
  return res;
}

}  // namespace fulcrum::sweep
