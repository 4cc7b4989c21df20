// sweep_runner.hpp: executing a planned sweep on this machine and submitting
// it to Slurm (doc/sweeps.md).
#pragma once

#include <string>
#include <vector>

#include "sweep/sweep_manifest.hpp"

namespace fulcrum::sweep {

struct RunOptions {
  int jobs = 1;                 // K runs at a time
  std::string train;            // fulcrum-train executable
  // Launcher template; {ranks} is replaced by the run's rank count. Empty:
  // "mpiexec -n {ranks} --oversubscribe --allow-run-as-root".
  std::string launcher;
  std::string launcher_name = "local";  // recorded in the state file
  bool retry_failed = false;    // rerun failed runs
  bool retry_diverged = false;  // rerun diverged runs
  bool quiet = false;
  std::vector<std::string> only_ids;  // restrict to these ids (empty: all)
};

struct RunSummary {
  int launched = 0, completed = 0, diverged = 0, failed = 0, skipped = 0;
  bool interrupted = false;
};

// What `run` would do with one run, given its status and the options.
bool should_run(const RunStatusInfo& s, const RunOptions& o);

// Runs every run that should run, K at a time; SIGINT/SIGTERM stop it cleanly
// (children get SIGTERM, their state is recorded as interrupted).
RunSummary run_sweep(const Manifest& m, const RunOptions& options);

// One manifest entry in the foreground (Slurm array tasks). Returns the
// trainer's exit code (0 also when the run was already completed).
int run_one(const Manifest& m, int index, const RunOptions& options);

// The fulcrum-train next to this executable, $FULCRUM_TRAIN, or PATH's.
std::string default_train_executable();
std::string self_executable();

struct SubmitOptions {
  std::string templates;        // jobscripts/ directory
  std::string train;            // fulcrum-train executable
  std::string fit;              // fulcrum-fit executable ("" : stand-in check)
  int throttle = 4;             // array throttle (%N)
  std::string launcher = "srun"; // how array tasks start the trainer ({ranks})
  std::vector<std::string> sbatch_args;  // extra sbatch arguments (all jobs)
  bool postprocess = true;
  bool dry_run = false;         // write the filled scripts, do not call sbatch
  bool retry_failed = false;
};

struct SubmitResult {
  std::vector<std::string> array_jobs;  // one per rank count
  std::string postprocess_job;
  std::vector<std::string> scripts;     // filled job scripts
};
SubmitResult submit_sweep(const Manifest& m, const SubmitOptions& options);

// `sbatch --parsable [args] script`: the job id ("DRYRUN" and nothing
// submitted when dry_run). Throws SweepError when sbatch fails.
std::string submit_job(const std::vector<std::string>& sbatch_args, const std::string& script, bool dry_run);
// The word quoted for a POSIX shell.
std::string shell_word(const std::string& s);

// Fills @NAME@ placeholders; throws SweepError on an unknown placeholder.
std::string fill_template(const std::string& text, const std::vector<std::pair<std::string, std::string>>& vars,
                          const std::string& what);
std::string default_templates_dir();

}  // namespace fulcrum::sweep
