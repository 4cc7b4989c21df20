// sweep_plan.hpp: a sweep deck ([sweep] section + a base deck) -> a list of
// concrete runs, each with a deck that fulcrum::read_deck accepts.
//
// The sweep deck format, the IsoFLOP shape rule and the ablation protocols
// are documented in doc/sweeps.md. Planning is deterministic: the same sweep
// deck (and laws file) always gives the same runs, ids and deck texts.
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/run_config.hpp"

namespace fulcrum::sweep {

// Every sweep error (bad sweep deck, invalid expansion, I/O) is one line.
struct SweepError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// y = k * C^a
struct PowerLaw {
  double k = 0, a = 0;
  bool ok() const { return k > 0; }
  double operator()(double C) const;
};

// The part of a laws file (fulcrum-fit's laws.toml, doc/fit.md) a sweep reads:
// per family ("moe" | "dense"):
//   [law1.<family>] eta_k, eta_a, batch_k, batch_a   eta_opt = eta_k C^eta_a, B_opt = batch_k C^batch_a (tokens)
//   [law2.<family>] M_k, M_a                         M_opt = M_k C^M_a (FLOPs per token)
// Anything else in the file is ignored. The same layout is accepted inline as
// [sweep.laws.law1.moe] ... in the sweep deck.
struct FamilyLaws {
  PowerLaw eta, batch, M_opt;
};
struct Laws {
  std::string source;                   // file path or "inline"
  std::map<std::string, FamilyLaws> family;
  // The laws for a family; throws SweepError naming what is missing.
  const FamilyLaws& get(const std::string& fam) const;
};
Laws read_laws_file(const std::string& path);

// One planned run.
struct PlannedRun {
  std::string id;           // stable, readable, unique within the sweep
  std::string deck_text;    // the concrete deck (resolved, every key explicit)
  RunConfig config;         // what deck_text reads back as
  int ranks = 1;            // MPI ranks (parallel.world_size, or [sweep] ranks)
  // Accounting (model_accounting of the run's shape)
  double flops_per_token = 0;  // M
  double params_total = 0, params_active = 0;
  double activation_ratio = 1, granularity = 0, shared_ratio = 0;
  double tokens = 0;        // planned training tokens D
  double compute = 0;       // planned C = M * D
  double budget = 0;        // the IsoFLOP budget this run belongs to (0: none)
  std::map<std::string, std::string> axes;  // axis name -> value, as in the id
};

struct SweepPlan {
  std::string name;         // [sweep] name
  std::string sweep_deck;   // path of the sweep deck as given
  std::string dir;          // sweep directory; run i lives in dir/runs/<id>
  std::string laws_source;  // "" if no laws were used
  std::vector<PlannedRun> runs;
};

struct PlanOptions {
  std::string dir;          // overrides [sweep] dir when non-empty
};

// Parses and expands a sweep deck. Every concrete deck is validated with
// read_deck_text; the first problem is thrown as SweepError naming the sweep
// deck and (for an invalid expansion) the run id.
SweepPlan plan_sweep(const std::string& sweep_deck_path, const PlanOptions& options = {});
SweepPlan plan_sweep_text(const std::string& text, const std::string& path_for_messages,
                          const PlanOptions& options = {});

// Writes dir/runs/<id>/deck.toml for each run and the manifest (sweep_manifest.hpp).
// Refuses (SweepError) to change the deck of a run that already has a run file.
void write_plan(const SweepPlan& plan);

// The --dry-run table (one header line, one line per run).
std::string plan_table(const SweepPlan& plan);

// IsoFLOP shape rule (doc/sweeps.md): the base shape scaled to width d_model,
// keeping head_dim, the GQA group size, E, E_a, E_s (so A and S) and
// G = 2 d_model / d_expert fixed, scaling d_ffn with d_model and n_layers
// with d_model (constant d_model / n_layers) unless n_layers > 0 is given.
// Throws SweepError when d_model is not compatible with the base.
RunConfig scale_shape(const RunConfig& base, int d_model, int n_layers = 0);

}  // namespace fulcrum::sweep
