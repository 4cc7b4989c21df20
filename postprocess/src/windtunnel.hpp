// windtunnel.hpp: leave-largest-budget-out check of the laws (doc/fit.md,
// "Wind tunnel"): refit every law without the runs of the largest budget and
// compare what the refitted laws predict for that budget with what was
// observed there.
#pragma once

#include <string>
#include <vector>

#include "fitting.hpp"
#include "runs.hpp"

namespace fulcrum::fit {

struct WindRow {
  std::string kind;     // "law3" (frontier loss of a family), "parametric" (the best run of
                        // one size of a family), "el"
  std::string family;
  std::string run;      // run path ("" for per-family rows)
  double C = 0, M = 0, D = 0;
  double predicted = 0, observed = 0;
  double rel_error() const { return (predicted - observed) / observed; }
};

struct WindTunnel {
  double C_held = 0;              // the held-out budget
  int n_held = 0, n_train = 0;    // runs held out / used for the refit
  std::vector<WindRow> rows;
  std::vector<std::string> notes; // what could not be predicted, and why
};

// Groups `runs` into budgets, holds out the largest, refits (no bootstrap)
// and predicts. Throws FitError(3) when fewer than two budgets remain or
// nothing can be predicted.
WindTunnel wind_tunnel(std::vector<Run> runs, const FitOptions& opt);

// Extrapolation error of the fitted laws (doc/fit.md, "Extrapolation
// error"): refits without the largest budget (and every budget within the
// budget tolerance below it) and compares, at that budget, Law 3 (loss) and
// Law 2 (M_opt) of each family and the joint and compute EL laws with what
// the full fit `full` found there. What cannot be compared is said in
// `notes`. No exception: fewer than 3 budgets give an empty list and a note.
std::vector<HoldOut> holdout_errors(std::vector<Run> runs, const FitResult& full, const FitOptions& opt,
                                    std::vector<std::string>& notes);

// The report (also written to DIR/windtunnel.txt by `fulcrum-fit windtunnel`).
std::string wind_tunnel_report(const WindTunnel& w);
std::string wind_tunnel_csv(const WindTunnel& w);

}  // namespace fulcrum::fit
