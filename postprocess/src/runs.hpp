// runs.hpp: loading run files into the flat table every fit works on.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "h5io.hpp"

namespace fulcrum::fit {

// Thrown for conditions where nothing useful can be done; the CLI prints the
// message and exits with `code`.
struct FitError : std::runtime_error {
  int code;
  FitError(const std::string& m, int c = 2) : std::runtime_error(m), code(c) {}
};

struct Run {
  std::string path;       // run id
  std::string family;     // "dense" or "moe A=.. G=.. S=.."
  bool is_moe = false;
  double A = 1, G = 0, S = 0;
  double M = 0;           // non-embedding training FLOPs per token
  double C = 0;           // the budget this run belongs to (set by group_budgets; every
                          // run of one budget has the same C): the recorded
                          // compute_budget, else the centre of a cluster of C_run
  double C_run = 0;       // compute of this run (compute_target, else flops_seen)
  double C_recorded = 0;  // /config compute_budget (deck train.compute_budget); 0 = absent
  bool grouped = false;   // C has been set by group_budgets
  double d_model = 0;     // /config d_model (0 when absent), for messages
  double D = 0;           // tokens (tokens_seen, else tokens_target)
  double N = 0, N_active = 0;
  double lr = 0, batch = 0;
  double loss = 0;        // final validation loss (or train, see LoadOptions)
  double n_active_experts = 0;  // routed experts active per token (top-k; Zhao et al.'s "G"), 0 = unknown
};

struct Skipped {
  std::string path;
  std::string reason;
};

struct LoadOptions {
  bool strict = false;        // unreadable/foreign files are fatal
  bool use_train_loss = false;
};

struct LoadResult {
  std::vector<Run> runs;          // usable
  std::vector<Skipped> excluded;  // readable run files left out (diverged, NaN, ...)
  std::vector<Skipped> unreadable;// corrupt, truncated or foreign files
  int files_seen = 0;
};

// Expands files, directories (recursively, *.h5 / *.hdf5) and sweep
// manifests (text: one path per line, '#' comments, relative to the manifest).
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs,
                                       std::vector<Skipped>& problems);

// Loads everything; throws FitError when nothing usable remains or (strict)
// when a file is unreadable.
LoadResult load_runs(const std::vector<std::string>& inputs, const LoadOptions& opt);

// Converts a record; returns false with the exclusion reason.
bool run_from_record(const RunRecord& rec, const LoadOptions& opt, Run& out,
                     std::string& reason);

std::string family_key(bool is_moe, double A, double G, double S);

// Tables of runs from other trainers (doc/fit.md, "Runs from elsewhere"):
// CSV (or TSV: tab-separated header) with the documented columns. An input
// path ending in .csv or .tsv is read as such a table.
bool is_run_table(const std::string& path);
// Reads a table; rows whose status is not "completed" or whose loss is NaN
// are appended to `excluded` with the reason. Throws FitError (code 2) naming
// the file, line and column of the first malformed cell.
std::vector<Run> read_run_table(const std::string& path, const LoadOptions& opt, std::vector<Skipped>& excluded);
// Writes runs in the table format (CSV, every number to 17 digits), so that
// a table read back gives the same runs.
std::string run_table_csv(const std::vector<Run>& runs);

// Budget key of a grouped budget C (runs of one budget have equal C; keys of
// values equal to 1e-4 in log10 coincide).
long long budget_key(double C);

// Default relative tolerance of the budget clustering (doc/fit.md).
constexpr double kDefaultBudgetTolerance = 0.1;

// Assigns every run its budget C (doc/fit.md, "Budgets"): the recorded
// compute_budget where the run file has one; else the recorded budget that
// the run's compute misses by at most `tol` (relative); else a cluster of the
// remaining runs whose computes all miss the cluster's geometric centre by at
// most `tol` (sorted, greedy from the smallest: a cluster spans at most a
// factor (1 + tol) / (1 - tol)). Returns one note per budget
// ("C=1e+12: 4 run(s), recorded" / "clustered from compute 9.9e11..1.005e12")
// and per recorded run whose compute misses its budget by more than `tol`.
std::vector<std::string> group_budgets(std::vector<Run>& runs, double tol);

}  // namespace fulcrum::fit
