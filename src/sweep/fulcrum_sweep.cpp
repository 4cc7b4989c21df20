// fulcrum-sweep: plan, run, submit and follow a sweep of runs (doc/sweeps.md).
//
//   fulcrum-sweep plan SWEEP_DECK [--out DIR] [--dry-run]
//   fulcrum-sweep run DIR [-j K] [--retry-failed] [--retry-diverged] [--only ID]...
//   fulcrum-sweep run-one DIR --index I          (one manifest entry; Slurm array tasks)
//   fulcrum-sweep status DIR [--brief | --csv]
//   fulcrum-sweep submit DIR [--throttle N] [--sbatch ARG]... [--fit PATH] [--dry-run]
//   fulcrum-sweep study run|status|submit STUDY.toml   (doc/studies.md)
//
// Exit codes: 0 success; 1 some run failed or diverged (run), an error;
// 2 bad input (sweep deck, manifest, command line); 130 interrupted.
// study: 0 completed (or submitted), 1 error, 2 bad study deck, 4 stopped at a
// gate (a required law missing or not trustworthy), 130 interrupted.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>

#include "fulcrum_version.hpp"
#include "sweep/sweep_manifest.hpp"
#include "sweep/sweep_plan.hpp"
#include "sweep/sweep_runner.hpp"
#include "sweep/study.hpp"

using namespace fulcrum::sweep;

int main(int argc, char** argv) {
  // Reading run files that a live trainer holds open must not fail on HDF5's lock.
  ::setenv("HDF5_USE_FILE_LOCKING", "FALSE", 0);
  CLI::App app{"fulcrum-sweep: expand a sweep deck into runs, run them here or on Slurm, follow them"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("fulcrum-sweep ") + FULCRUM_VERSION + " (" + FULCRUM_GIT_REVISION + ")");

  std::string deck, out, dir, train, launcher, fit, templates;
  bool dry = false, retry_failed = false, retry_diverged = false, brief = false, no_post = false, quiet = false;
  bool csv = false;
  int jobs = 1, index = -1, throttle = 4;
  std::vector<std::string> only, sbatch_args;

  auto* plan = app.add_subcommand("plan", "write one concrete deck per run and the manifest");
  plan->add_option("deck", deck, "sweep deck (TOML with a [sweep] section)")->required();
  plan->add_option("--out", out, "sweep directory (default: [sweep] dir, or runs/sweeps/<name>)");
  plan->add_flag("--dry-run", dry, "print the table of runs; write nothing");

  auto* run = app.add_subcommand("run", "run the sweep on this machine, K runs at a time");
  run->add_option("dir", dir, "sweep directory (or its manifest.toml)")->required();
  run->add_option("-j,--jobs", jobs, "concurrent runs")->capture_default_str();
  run->add_option("--train", train, "fulcrum-train executable (default: next to fulcrum-sweep, $FULCRUM_TRAIN, PATH)");
  run->add_option("--launcher", launcher,
                  "launch command, {ranks} replaced (default: mpiexec -n {ranks} --oversubscribe --allow-run-as-root)");
  run->add_flag("--retry-failed", retry_failed, "also rerun failed runs");
  run->add_flag("--retry-diverged", retry_diverged, "also rerun diverged runs");
  run->add_option("--only", only, "run only these ids");
  run->add_flag("-q,--quiet", quiet, "no progress lines");

  auto* one = app.add_subcommand("run-one", "run one manifest entry in the foreground (Slurm array task)");
  one->add_option("dir", dir, "sweep directory")->required();
  one->add_option("--index", index, "manifest index (0-based)")->required();
  one->add_option("--train", train, "fulcrum-train executable");
  one->add_option("--launcher", launcher, "launch command, {ranks} replaced");
  one->add_flag("--retry-failed", retry_failed, "rerun the run if it failed");

  auto* status = app.add_subcommand("status", "counts and a table: completed, running, diverged, failed, pending");
  status->add_option("dir", dir, "sweep directory")->required();
  status->add_flag("--brief", brief, "counts only");
  status->add_flag("--csv", csv, "one CSV line per run: deck values, budget, compute, tokens, final losses");

  auto* submit = app.add_subcommand("submit", "submit the sweep to Slurm: job array(s) + postprocessing");
  submit->add_option("dir", dir, "sweep directory")->required();
  submit->add_option("--throttle", throttle, "array tasks running at once (%N)")->capture_default_str();
  submit->add_option("--sbatch", sbatch_args, "extra sbatch argument for every job (repeatable), e.g. --sbatch=--partition=debug");
  submit->add_option("--train", train, "fulcrum-train executable the jobs use");
  submit->add_option("--launcher", launcher, "how array tasks start the trainer (default: srun)");
  submit->add_option("--fit", fit, "fulcrum-fit for the postprocessing job (default: stand-in file check)");
  submit->add_option("--templates", templates, "job script templates directory (default: jobscripts/)");
  submit->add_flag("--no-postprocess", no_post, "do not submit the postprocessing job");
  submit->add_flag("--retry-failed", retry_failed, "also resubmit failed runs");
  submit->add_flag("--dry-run", dry, "write the filled job scripts, do not call sbatch");

  auto* study = app.add_subcommand("study", "run a study deck: stages of sweeps, each planned from the previous stage's laws (doc/studies.md)");
  study->require_subcommand(1);
  std::string study_deck;
  int study_jobs = 0;
  auto* srun = study->add_subcommand("run", "plan, run, fit and gate every stage in order, here; resumes where it stopped");
  srun->add_option("study", study_deck, "study deck (TOML)")->required();
  srun->add_option("-j,--jobs", study_jobs, "concurrent runs (default: [study] jobs)")->check(CLI::PositiveNumber);
  srun->add_option("--train", train, "fulcrum-train executable");
  srun->add_option("--fit", fit, "fulcrum-fit executable (default: next to fulcrum-sweep, $FULCRUM_FIT, PATH)");
  srun->add_option("--launcher", launcher, "launch command, {ranks} replaced");
  srun->add_flag("--retry-failed", retry_failed, "also rerun failed runs");
  srun->add_flag("-q,--quiet", quiet, "no per-run progress lines");
  auto* sstat = study->add_subcommand("status", "every stage (runs, fit, gate) and every run, the final laws, the wind tunnel");
  sstat->add_option("study", study_deck, "study deck (TOML)")->required();
  sstat->add_flag("--brief", brief, "counts only, no run tables");
  sstat->add_flag("--csv", csv, "every run of every stage as CSV (as DIR/runs.csv)");
  auto* ssub = study->add_subcommand("submit", "Slurm: the next stage as job arrays plus a dependent job that fits, gates and submits the stage after");
  ssub->add_option("study", study_deck, "study deck (TOML)")->required();
  ssub->add_option("--throttle", throttle, "array tasks running at once (%N)")->capture_default_str();
  ssub->add_option("--sbatch", sbatch_args, "extra sbatch argument for every job (repeatable)");
  ssub->add_option("--train", train, "fulcrum-train executable the jobs use");
  ssub->add_option("--fit", fit, "fulcrum-fit executable");
  ssub->add_option("--launcher", launcher, "how array tasks start the trainer (default: srun)");
  ssub->add_option("--templates", templates, "job script templates directory (default: jobscripts/)");
  ssub->add_flag("--retry-failed", retry_failed, "also resubmit failed runs");
  ssub->add_flag("--dry-run", dry, "write the filled job scripts, do not call sbatch");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    if (*study) {
      try {
        const Study st = read_study(study_deck);
        if (*sstat) {
          std::fputs(csv ? study_runs_csv(st).c_str() : study_status(st, !brief).c_str(), stdout);
          return 0;
        }
        StudyOptions so;
        so.jobs = study_jobs;
        so.train = train;
        so.fit = fit;
        so.retry_failed = retry_failed;
        so.quiet = quiet;
        if (*ssub) {
          so.slurm = true;
          so.submit.templates = templates;
          so.submit.train = train;
          so.submit.throttle = throttle;
          if (!launcher.empty()) so.submit.launcher = launcher;
          so.submit.sbatch_args = sbatch_args;
          so.submit.dry_run = dry;
        } else {
          so.launcher = launcher;
        }
        return run_study(st, so);
      } catch (const StudyError& e) {
        std::fprintf(stderr, "fulcrum-sweep: error: %s\n", e.what());
        return kStudyBadInput;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "fulcrum-sweep: error: %s\n", e.what());
        return kStudyError;
      }
    }
    if (*plan) {
      PlanOptions po;
      po.dir = out;
      const SweepPlan p = plan_sweep(deck, po);
      if (dry) {
        std::fputs(plan_table(p).c_str(), stdout);
        return 0;
      }
      write_plan(p);
      std::printf("planned %zu runs in %s (manifest %s/manifest.toml)\n", p.runs.size(), p.dir.c_str(), p.dir.c_str());
      return 0;
    }
    RunOptions ro;
    ro.jobs = jobs;
    ro.train = train.empty() ? default_train_executable() : train;
    ro.launcher = launcher;
    ro.retry_failed = retry_failed;
    ro.retry_diverged = retry_diverged;
    ro.only_ids = only;
    ro.quiet = quiet;
    if (*run) {
      const Manifest m = read_manifest(dir);
      const RunSummary s = run_sweep(m, ro);
      std::printf("%s", status_report(m, false).c_str());
      if (s.interrupted) return 130;
      return (s.failed || s.diverged) ? 1 : 0;
    }
    if (*one) {
      const Manifest m = read_manifest(dir);
      ro.launcher_name = std::getenv("SLURM_JOB_ID") ? std::string("slurm:") + std::getenv("SLURM_JOB_ID") : "run-one";
      if (launcher.empty()) ro.launcher = "srun";
      return run_one(m, index, ro);
    }
    if (*status) {
      const Manifest m = read_manifest(dir);
      std::fputs(csv ? (runs_csv_header() + runs_csv_rows(m, "", m.name)).c_str() : status_report(m, !brief).c_str(), stdout);
      return 0;
    }
    if (*submit) {
      const Manifest m = read_manifest(dir);
      SubmitOptions so;
      so.templates = templates;
      so.train = ro.train;
      so.fit = fit;
      so.throttle = throttle;
      if (!launcher.empty()) so.launcher = launcher;
      so.sbatch_args = sbatch_args;
      so.postprocess = !no_post;
      so.dry_run = dry;
      so.retry_failed = retry_failed;
      const SubmitResult r = submit_sweep(m, so);
      for (const auto& s : r.scripts) std::printf("script %s\n", s.c_str());
      std::string arrays;
      for (const auto& j : r.array_jobs) arrays += (arrays.empty() ? "" : ",") + j;
      if (r.array_jobs.empty()) std::printf("nothing to run: every run is completed, running, diverged or failed\n");
      std::printf("FULCRUM_SUBMIT array=%s postprocess=%s\n", arrays.empty() ? "-" : arrays.c_str(),
                  r.postprocess_job.empty() ? "-" : r.postprocess_job.c_str());
      return 0;
    }
  } catch (const SweepError& e) {
    std::fprintf(stderr, "fulcrum-sweep: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fulcrum-sweep: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
