// study.hpp: a study deck (stages of sweeps, each planned from the laws the
// previous stage's fit gave) and the driver behind `fulcrum-sweep study`
// (doc/studies.md).
//
// A study directory DIR holds, per stage k (1-based) named NAME:
//   DIR/<k>-<NAME>/<SWEEP>.sweep.toml   the sweep deck the study wrote (laws, dir filled in)
//   DIR/<k>-<NAME>/<SWEEP>/             the sweep directory (manifest, runs; doc/sweeps.md)
//   DIR/<k>-<NAME>/fit/                 fulcrum-fit's outputs over the runs of stages 1..k
//   DIR/<k>-<NAME>/fit.log, fit.key     the fit's output; what it was fitted from
//   DIR/<k>-<NAME>/stage.state          gate=passed|stopped, reason lines
// and at the end DIR/laws.toml (the final laws) and DIR/windtunnel/.
#pragma once

#include <string>
#include <vector>

#include "sweep/sweep_plan.hpp"
#include "sweep/sweep_runner.hpp"

namespace fulcrum::sweep {

// A bad study deck: what() is "FILE:LINE: KEY: message" (":LINE" left out
// when unknown).
struct StudyError : SweepError {
  using SweepError::SweepError;
};

struct StudySweep {
  std::string name;
  int line = 0;               // line of its [[stage.sweep]] header (or its file key)
  std::string text;           // the sweep deck, without [sweep] dir and laws (filled in per run)
  bool moe = false;           // its deck has a [moe] section (plans from the moe laws)
};

struct StudyStage {
  std::string name;
  int line = 0;
  std::vector<std::string> require;  // laws its fit must give: law1 law2 law3 el
  std::string laws = "previous";     // "previous" | "none" | absolute path
  std::vector<StudySweep> sweeps;
};

struct Study {
  std::string path;           // study deck as given
  std::string name;
  std::string dir;            // absolute
  int jobs = 1;
  std::string gate = "trusted";  // "trusted" | "fitted"
  int bootstrap = 200;
  int seed = 1;
  bool plots = true;
  bool windtunnel = true;
  std::vector<std::string> fit_args;
  std::vector<std::string> require = {"el"};  // the final laws
  std::string laws;           // laws for the first stage (absolute path, "" none)
  std::vector<StudyStage> stages;
  std::string stage_dir(size_t k) const;  // DIR/<k+1>-<name>
};

// Reads and validates a study deck; throws StudyError (file, line, key).
Study read_study(const std::string& path);
Study read_study_text(const std::string& text, const std::string& path);

struct StudyOptions {
  int jobs = 0;                  // 0: [study] jobs
  std::string train;             // fulcrum-train
  std::string fit;               // fulcrum-fit ("" : default_fit_executable())
  std::string launcher;          // local launcher template (RunOptions::launcher)
  bool retry_failed = false;
  bool quiet = false;
  // Slurm: each stage an array (submit_sweep), then a dependent job that runs
  // `fulcrum-sweep study submit` again (fit, gate, next stage).
  bool slurm = false;
  SubmitOptions submit;
};

// Exit codes of `fulcrum-sweep study run|submit` (doc/studies.md).
constexpr int kStudyDone = 0;       // every stage passed, final laws (and wind tunnel) written;
                                    // submit: also when a stage was submitted
constexpr int kStudyError = 1;      // a fit failed to run, every run of a stage failed, I/O
constexpr int kStudyBadInput = 2;   // bad study deck or command line, a stage that cannot be planned
constexpr int kStudyStopped = 4;    // a stage's (or the final) required law is missing or not trustworthy
constexpr int kStudyInterrupted = 130;

// Runs (or, with options.slurm, submits) the study from where it stands.
int run_study(const Study& s, const StudyOptions& options);

// `study status`: every stage (planned? runs by status, fit and gate) and
// every run, then the final laws and the wind tunnel.
std::string study_status(const Study& s, bool tables = true);

// Every planned run of every stage as CSV (runs_csv_header(), sweep_manifest.hpp);
// `study run` keeps it in DIR/runs.csv, `study status --csv` prints it.
std::string study_runs_csv(const Study& s);

// fulcrum-fit next to this executable (or ../../postprocess/ in a build
// tree), $FULCRUM_FIT, else PATH.
std::string default_fit_executable();

}  // namespace fulcrum::sweep
