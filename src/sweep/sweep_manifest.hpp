// sweep_manifest.hpp: the manifest of a planned sweep, the per-run state
// files, and the status of each run (doc/sweeps.md).
//
// Layout of a sweep directory DIR:
//   DIR/manifest.toml           the runs, in plan order (index 0..N-1)
//   DIR/runs.list               one run-file path per line (fulcrum-fit input)
//   DIR/runs.tsv                index, id, ranks, deck, run dir (job scripts)
//   DIR/runs/<id>/deck.toml     the concrete deck
//   DIR/runs/<id>/run.h5        the run file (written by fulcrum-train)
//   DIR/runs/<id>/train.log     stdout + stderr of every attempt
//   DIR/runs/<id>/state         key=value lines, written by whoever launches the run
#pragma once

#include <string>
#include <vector>

namespace fulcrum::sweep {

struct ManifestRun {
  int index = 0;
  std::string id;
  int ranks = 1;
  std::string deck;      // absolute path of the concrete deck
  std::string dir;       // absolute path of the run directory (output.dir)
  double flops_per_token = 0, params_total = 0, params_active = 0;
  double tokens = 0, compute = 0, budget = 0, lr = 0, batch_tokens = 0;
  double activation_ratio = 1, granularity = 0, shared_ratio = 0;
  int d_model = 0, n_layers = 0, num_experts = 0;
  std::string run_file() const { return dir + "/run.h5"; }
  std::string state_file() const { return dir + "/state"; }
  std::string log_file() const { return dir + "/train.log"; }
};

struct Manifest {
  std::string name;
  std::string sweep_deck;
  std::string dir;       // absolute sweep directory
  std::string laws;
  std::vector<ManifestRun> runs;
  const ManifestRun* find(const std::string& id) const;
};

// DIR may be the sweep directory or its manifest.toml. Throws SweepError.
Manifest read_manifest(const std::string& dir_or_manifest);
void write_manifest(const Manifest& m);  // manifest.toml, runs.list, runs.tsv (atomic)

// ---- per-run state file ----------------------------------------------------
// Plain key=value lines (so shell job scripts can write it too):
//   state=running|exited|interrupted   pid=  pid_start=  host=  launcher=
//   exit_code=  start_time=  end_time=  note=
struct StateRecord {
  std::string state;     // "" if there is no state file
  long pid = 0;
  long long pid_start = 0;  // /proc/<pid>/stat starttime (guards against pid reuse)
  std::string host, launcher, start_time, end_time, note;
  int exit_code = 0;
};
StateRecord read_state(const std::string& path);
void write_state(const std::string& path, const StateRecord& s);  // atomic
long long process_start_time(long pid);  // 0 if no such process
bool state_process_alive(const StateRecord& s);  // running here and still alive
std::string host_name();

// ---- status ------------------------------------------------------------------
enum class RunStatus { pending, running, completed, diverged, failed };
const char* status_name(RunStatus s);

struct RunStatusInfo {
  RunStatus status = RunStatus::pending;
  std::string note;          // "interrupted", "exit 2: <last log line>", host, ...
  bool has_run_file = false;
  std::string file_status;   // root attribute status of run.h5 ("" if none/unreadable)
  double final_val_loss = 0; // when completed and present
  bool has_val_loss = false;
};

// Combines the state file and the run file (doc/sweeps.md, "Run states").
RunStatusInfo inspect_run(const ManifestRun& run);

// `fulcrum-sweep status`: a counts line and a table.
std::string status_report(const Manifest& m, bool table = true);

// One line per run (doc/sweeps.md, "Run tables as CSV"): the stage (may be
// empty), the sweep (its name in a study, else the manifest's), the run's
// deck values and budget, the compute and tokens planned, and, for completed
// runs, the final losses and the throughput from the run file's /summary
// (empty when absent).
std::string runs_csv_header();
std::string runs_csv_rows(const Manifest& m, const std::string& stage, const std::string& sweep);

}  // namespace fulcrum::sweep
