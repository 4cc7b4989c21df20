#include "synth.hpp"

#include <cmath>
#include <filesystem>
#include <random>

namespace fulcrum::fit {

SynthTruth::SynthTruth() {
  el = paper_preset().el;
  LawSet p = paper_preset();
  eta_dense = p.law1_dense.eta, batch_dense = p.law1_dense.batch;
  eta_moe = p.law1_moe.eta, batch_moe = p.law1_moe.batch;
}

double SynthTruth::M_opt_dense(double C) const {
  double G0 = std::pow(alpha * A / (beta * B), 1.0 / (alpha + beta));
  return G0 * std::pow(C, beta / (alpha + beta));
}

double SynthTruth::loss_dense(double M, double D) const {
  return E + A * std::pow(M, -alpha) + B * std::pow(D, -beta);
}

double SynthTruth::loss(bool moe, double Ar, double G, double M, double D) const {
  if (!moe) return loss_dense(M, D);
  double s = std::sqrt(el_joint(el, Ar, G, M * D));
  return loss_dense(M * s, D * s);
}

double SynthTruth::M_opt(bool moe, double Ar, double G, double C) const {
  if (!moe) return M_opt_dense(C);
  double el_ = el_joint(el, Ar, G, C);
  return M_opt_dense(C * el_) / std::sqrt(el_);
}

std::vector<RunRecord> synth_campaign(const SynthTruth& t, const SynthSpec& s) {
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<double> nrm(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<RunRecord> out;
  auto add = [&](bool moe, double Ar, double G, double M, double C, double lr, double batch,
                 const char* kind) {
    double D = C / M;
    double L = t.loss(moe, Ar, G, M, D);
    const PowerLaw& pe = moe ? t.eta_moe : t.eta_dense;
    const PowerLaw& pb = moe ? t.batch_moe : t.batch_dense;
    double le = std::log2(lr / pe(C)), lb = std::log2(batch / pb(C));
    L *= 1 + t.h_lr * le * le + t.h_batch * lb * lb;
    L *= std::exp(s.noise * nrm(rng));
    RunRecord r;
    r.path = "synthetic/" + std::to_string(out.size()) + ".h5";
    r.status = uni(rng) < s.diverged_fraction ? "diverged" : "completed";
    r.deck = std::string("# synthetic ") + kind + " run\n";
    r.seed = static_cast<std::int64_t>(out.size());
    double S = moe ? 0.5 : 0.0;
    auto& c = r.config;
    c["flops_per_token"] = M;
    // counts the trainer stores as integers are whole numbers here too, so a
    // record and the run file written from it agree
    c["params_active"] = std::round(M / 6);
    c["params_total"] = std::round(moe ? M / 6 / Ar : M / 6);
    c["activation_ratio"] = moe ? Ar : 1.0;
    c["granularity"] = moe ? G : 0.0;
    c["shared_ratio"] = S;
    c["is_moe"] = moe ? 1 : 0;
    c["batch_tokens"] = std::round(batch);
    c["lr_peak"] = lr;
    c["tokens_target"] = D;
    c["compute_target"] = C;
    double dm = std::round(std::pow(M / 6 / 12, 1.0 / 3) / 64) * 64;
    c["d_model"] = std::max(64.0, dm);
    c["n_layers"] = 12;
    c["num_experts"] = moe ? std::round(2 / Ar) : 0;
    c["num_active_experts"] = moe ? 1 : 0;
    c["num_shared_experts"] = moe ? 1 : 0;
    c["d_expert"] = moe ? std::round(2 * c["d_model"] / G) : 0;
    auto& m = r.summary;
    m["final_val_loss"] = r.status == "completed" ? L : NAN;
    m["final_train_loss"] = r.status == "completed" ? L * 1.005 : NAN;
    m["tokens_seen"] = std::round(D);
    m["flops_seen"] = C;
    m["wall_time_s"] = C / 1e15;
    out.push_back(std::move(r));
  };
  for (double C : s.budgets) {
    // IsoFLOP profiles (Law 2) at Law-1-optimal hyper-parameters
    for (int f = 0; f < 2; ++f) {
      bool moe = f == 1;
      if (moe ? !s.moe_iso : !s.dense_iso) continue;
      double Mo = t.M_opt(moe, s.ref_A, s.ref_G, C);
      for (int i = 0; i < s.iso_sizes; ++i) {
        double x = s.iso_sizes == 1 ? 0 : -2.0 + 4.0 * i / (s.iso_sizes - 1);
        const PowerLaw& pe = moe ? t.eta_moe : t.eta_dense;
        const PowerLaw& pb = moe ? t.batch_moe : t.batch_dense;
        add(moe, s.ref_A, s.ref_G, Mo * std::exp2(x), C, pe(C), pb(C), "isoflop");
      }
    }
    // hyper-parameter sweeps (Law 1) at the compute-optimal size
    for (int f = 0; f < 2 && s.hp_runs > 0; ++f) {
      bool moe = f == 1;
      double Mo = t.M_opt(moe, s.ref_A, s.ref_G, C);
      const PowerLaw& pe = moe ? t.eta_moe : t.eta_dense;
      const PowerLaw& pb = moe ? t.batch_moe : t.batch_dense;
      for (int i = 0; i < s.hp_runs; ++i) {
        double u = 2 * uni(rng) - 1, v = 2 * uni(rng) - 1;
        add(moe, s.ref_A, s.ref_G, Mo, C, pe(C) * std::exp2(1.2 * u), pb(C) * std::exp2(1.2 * v), "hp");
      }
    }
    // EL sweep: one compute-optimal run per (A, G) family and budget
    for (double Ar : s.el_A)
      for (double G : s.el_G)
        add(true, Ar, G, t.M_opt(true, Ar, G, C), C, t.eta_moe(C), t.batch_moe(C), "el");
  }
  return out;
}

std::vector<std::string> write_campaign(const std::string& dir, std::vector<RunRecord>& recs) {
  std::filesystem::create_directories(dir);
  std::vector<std::string> paths;
  for (size_t i = 0; i < recs.size(); ++i) {
    recs[i].path = dir + "/run" + std::to_string(i) + ".h5";
    write_run_file(recs[i].path, recs[i]);
    paths.push_back(recs[i].path);
  }
  return paths;
}

std::vector<Run> records_to_runs(const std::vector<RunRecord>& recs) {
  std::vector<Run> out;
  LoadOptions o;
  for (auto& r : recs) {
    Run x;
    std::string why;
    if (run_from_record(r, o, x, why)) out.push_back(x);
  }
  return out;
}

}  // namespace fulcrum::fit
