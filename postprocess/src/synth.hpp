// synth.hpp: synthetic run campaigns generated from known laws, for tests and
// the benchmark. Dense loss: L(M, D) = E + A M^-alpha + B D^-beta. An MoE
// family (A_r, G) has L_moe(M, D) = L(M s, D s) with s = sqrt(EL(A_r, G, M D))
// from a planted joint EL law, so its compute-optimal loss is exactly
// L_dense_opt(C * EL). Hyper-parameters off their planted optimum multiply the
// loss by 1 + h (log2 ratio)^2. Noise: multiplicative log-normal.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "h5io.hpp"
#include "laws.hpp"
#include "runs.hpp"

namespace fulcrum::fit {

struct SynthTruth {
  double E = 1.8, A = 377.0, B = 1900.0, alpha = 0.30, beta = 0.3555;  // dense L(M, D)
  ELJoint el;                      // planted joint EL law (paper constants by default)
  PowerLaw eta_dense, batch_dense, eta_moe, batch_moe;  // Law 1 optima
  double h_lr = 0.004, h_batch = 0.003;
  SynthTruth();
  double M_opt_dense(double C) const;
  double loss_dense(double M, double D) const;
  double loss(bool moe, double Ar, double G, double M, double D) const;
  double M_opt(bool moe, double Ar, double G, double C) const;
};

struct SynthSpec {
  std::vector<double> budgets{1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21};
  int iso_sizes = 9;               // IsoFLOP sizes per budget, x = 2^-2 .. 2^2 around M_opt
  bool dense_iso = true;
  bool moe_iso = true;             // IsoFLOP for the reference MoE family
  int hp_runs = 10;                // hyper-parameter runs per budget (dense and reference MoE)
  double ref_A = 0.0625, ref_G = 8;  // reference MoE family (Law 1, Law 2)
  std::vector<double> el_A{0.008, 0.016, 0.031, 0.0625, 0.125, 0.25, 0.5};
  std::vector<double> el_G{2, 4, 8, 12, 16};
  double noise = 1e-3;             // sigma of the multiplicative loss noise
  double diverged_fraction = 0;    // marked diverged (left out by the loader)
  std::uint64_t seed = 7;
};

// One run record per synthetic run (paths are "synthetic/<n>.h5").
std::vector<RunRecord> synth_campaign(const SynthTruth& t, const SynthSpec& s);

// Writes every record under dir through the trainer's run-file writer (its
// path becomes dir/run<i>.h5); returns the paths.
std::vector<std::string> write_campaign(const std::string& dir, std::vector<RunRecord>& recs);

// In-memory conversion (no files) for fast tests and the benchmark.
std::vector<Run> records_to_runs(const std::vector<RunRecord>& recs);

}  // namespace fulcrum::fit
