// fitting.hpp: Laws 1-4, EL and the bootstrap (doc/fit.md).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "laws.hpp"
#include "runs.hpp"

namespace fulcrum::fit {

// Law 1 estimator (doc/fit.md): `vertex` fits a quadratic surface of ln(loss)
// in (log2 lr, log2 B) per budget and fits the power laws through its vertices
// (default); `near_optimal` is the paper's procedure (Sec. 2.2): power laws
// through every run within `near_optimal` of the best loss of its budget.
enum class Law1Method { vertex, near_optimal };

struct FitOptions {
  double near_optimal = 0.0025;  // Law 1: within this fraction of the best loss
  double el_threshold = 6.0;     // joint EL law: train on EL < threshold
  Law1Method law1_method = Law1Method::vertex;
  bool law1_compare = true;      // also fit Law 1 with the other method (report only)
  int law1_vertex_min_points = 6;  // per budget, else near-optimal fallback
  int law1_vertex_min_values = 3;  // distinct lr and distinct B values per budget
  double outlier_k = 3.0;        // Law 1: drop |residual| > k * 1.4826 * MAD
  double huber_loss = 2e-3;      // Huber scale on relative / log loss residuals
  double huber_el = 0.05;        // Huber scale on ln EL residuals
  double A_max = 5.28e16;        // fixed A_max of the A_hat transform
  int bootstrap = 1000;
  std::uint64_t seed = 1;
  double budget_tolerance = kDefaultBudgetTolerance;  // group_budgets (runs.hpp)
  // Thresholds of the trust checks (doc/fit.md, "Diagnostics").
  double min_r2 = 0.9;                 // R^2 below this: not trustworthy
  double max_bootstrap_failures = 0.1; // fraction of resamples without the constant
  double max_ci_decades = 1.0;         // 95% interval wider than this many decades
  // EL from fitted curves (doc/fit.md, "EL"): the reference budgets at which
  // every MoE family's Law 3 is compared with the dense one; empty: the
  // budgets of the data (clustered within budget_tolerance).
  std::vector<double> el_budgets;
  // Leave-largest-budget-out error above which a law is not trustworthy.
  double max_holdout_el = 0.25;    // EL laws: relative error of EL
  double max_holdout_loss = 0.05;  // Law 3: relative error of the loss (worst)
  double max_holdout_M = 1.0;      // Law 2: relative error of M_opt (a factor 2)
  bool fit_zhao = true;            // fit the competing law (Zhao et al.); not in bootstrap resamples
};

// A reason that a fitted law should not be trusted (law: "law1", "law2",
// "law3", "el"; family "" for the EL joint law).
struct Flag {
  std::string law, family, message;
};

// The verdict on one law of one family, fitted or not, with every reason.
struct Verdict {
  std::string law;       // "law1" | "law2" | "law3" | "el"
  std::string family;    // "" for the EL joint law
  bool fitted = false;
  bool trusted = false;  // fitted and no flag
  std::vector<std::string> reasons = {};  // why not fitted, or why not trusted
  std::string summary = {};   // one line: what was fitted from what
};

struct HPPoint {                 // one run of a hyper-parameter sweep budget
  std::string family;
  double C, lr, batch, loss;
  bool near_opt = false, outlier_lr = false, outlier_batch = false;
};
struct HPOptimum {              // Law 1 optimum of one budget (vertex method)
  std::string family;
  double C, lr, batch;
  bool vertex = true;            // false: log-mean of the near-optimal runs (fallback)
  int n_points = 0;              // sweep runs of the budget
  bool outlier_lr = false, outlier_batch = false;
};
struct IsoPoint {                // best loss of one model size at one budget
  std::string family;
  double C, M, D, loss;
  double resid_parametric = 0;
};
struct IsoFit {                  // loss = c0 + c1 x + c2 x^2, x = log10 M
  std::string family;
  double C = 0, c0 = 0, c1 = 0, c2 = 0, M_opt = 0, L_min = 0;
  double x_lo = 0, x_hi = 0;
};
struct CurvePoint {              // Law 3 data: per family and budget
  std::string family;
  double C, loss, resid = 0;
};
struct ELPoint {
  std::string family;
  double A, G, C, loss, C_dense, EL, EL_pred = 0;
  double S = 0;         // shared-expert ratio of the family
  bool train = true;    // EL below the threshold: fitted (else held out for validation)
  bool other_S = false; // S differs from the reference S of the EL laws: shown, neither fitted nor validated
  bool from_curve = false; // EL(C) = C_dense(L_moe(C)) / C from the family's Law 3 fit (else from its runs)
  bool dense_extrapolated = false;  // C_dense lies outside the dense family's observed budgets (marked)
};

// The error of a law refitted without the largest budget, at that budget
// (the wind tunnel inside `fit`; doc/fit.md, "Extrapolation error").
struct HoldOut {
  std::string law;      // "law2" (M_opt), "law3" (loss), "el" (joint EL), "el.compute", and the
                        // held-out loss of MoE runs by "zhao" (Zhao et al.) and "el.loss" (the EL
                        // law through the dense Law 3), on the same runs
  std::string family;   // "" for the EL laws
  double C = 0;         // the held-out budget
  double error = NAN;   // mean |relative error| over the points of the law at C
  double worst = NAN;   // worst |relative error|
  int n = 0;            // points compared
};

struct FitResult {
  LawSet laws;
  std::vector<Law1> law1_all;      // fitted with opt.law1_method
  std::vector<Law1> law1_alt;      // the other Law 1 method, for comparison (report only)
  std::vector<HPOptimum> hp_opt;   // per-budget optima (vertex method)
  std::vector<Law2> law2_all;
  std::vector<HPPoint> hp;
  std::vector<IsoPoint> iso;
  std::vector<IsoFit> isofits;
  std::vector<CurvePoint> curve;
  std::vector<ELPoint> el;          // EL points the EL laws use (from fitted curves where a family has one)
  std::vector<ELPoint> el_raw;      // EL of each MoE family's runs (best per budget), for comparison
  std::vector<double> el_grid;      // reference budgets of the curve EL points
  std::vector<HoldOut> holdout;     // leave-largest-budget-out errors (filled by the CLI before diagnose)
  std::vector<std::string> holdout_notes;  // what could not be compared there, and why
  const HoldOut* holdout_of(const std::string& law, const std::string& family) const {
    for (auto& h : holdout) if (h.law == law && h.family == family) return &h;
    return nullptr;
  }
  std::vector<std::string> notes;   // why something was not fitted / left out
  // slice keys chosen for the separable laws (reused by the bootstrap)
  long long slice_A_G = 0, slice_A_C = 0, slice_G_A = 0, slice_G_C = 0, slice_C_A = 0,
            slice_C_G = 0;
  bool slices_set = false;
  int n_runs = 0;
  int bootstrap_done = 0, bootstrap_failed = 0;
  std::vector<std::string> budget_notes;  // group_budgets: one line per budget
  std::vector<Flag> flags;                // trust problems found while fitting
  std::map<std::string, int> boot_ok;     // constant -> resamples that produced it
  std::vector<Verdict> verdicts;          // filled by diagnose()
  bool any() const;                 // at least one law was fitted
};

// Point estimate of every law that the data allow. `warm`: a previous fit of
// the same data (bootstrap) whose constants start the optimisers.
FitResult fit_all(const std::vector<Run>& runs, const FitOptions& opt,
                  const FitResult* warm = nullptr);

// Resamples runs with replacement within each family, refits, and stores
// 95% percentile intervals in res.laws (and law1_all / law2_all).
void bootstrap(const std::vector<Run>& runs, const FitOptions& opt, FitResult& res);

// Groups the runs into budgets (group_budgets) when they are not yet grouped;
// returns the notes (empty when nothing was done).
std::vector<std::string> ensure_grouped(std::vector<Run>& runs, double tol);

// The verdict on every law of every family (after bootstrap()): fitted or not
// and why, trustworthy or not and why (doc/fit.md, "Diagnostics").
void diagnose(FitResult& res, const std::vector<Run>& runs, const FitOptions& opt);

// Law names for --require and messages: "law1" -> "Law 1", "el" -> "EL joint law".
std::string law_title(const std::string& law);

// Named list of every constant of a law set, for reports and the bootstrap.
std::vector<std::pair<std::string, Value*>> constants(LawSet& L, std::vector<Law1>* l1 = nullptr,
                                                      std::vector<Law2>* l2 = nullptr,
                                                      std::vector<Law1>* l1_alt = nullptr);

const char* law1_method_name(Law1Method m);

// Keeps Ceres' (glog) warnings off stderr; called before every solve.
void quiet_solver_logging();

}  // namespace fulcrum::fit
