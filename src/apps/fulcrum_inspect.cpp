// fulcrum-inspect: a summary of one run file and, in builds with plplot, PNG
// plots: loss curves, learning rate, and per MoE layer a heatmap of the
// expert load over training (doc/output-format.md, "/routing").
//
//   fulcrum-inspect RUN.h5 [--plots DIR] [--no-plots]
//
// Exit codes: 0 = printed (and plotted), 1 = unreadable run file, 2 = usage.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "io/run_file.hpp"

#ifdef FULCRUM_HAVE_PLPLOT
#include <plplot.h>
#endif

namespace {

using fulcrum::read_dataset_1d;
using fulcrum::read_dataset_dims;

bool has(const std::string& file, const std::string& ds) {
  try {
    (void)read_dataset_dims(file, ds);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::string attr_text(const std::string& file, const std::string& obj, const std::string& name) {
  try {
    return fulcrum::read_string_attr(file, obj, name);
  } catch (const std::exception&) {
  }
  try {
    char b[64];
    std::snprintf(b, sizeof b, "%.6g", fulcrum::read_numeric_attr(file, obj, name));
    return b;
  } catch (const std::exception&) {
    return "-";
  }
}

struct Routing {
  std::size_t S = 0, L = 0, E = 0;
  std::vector<double> step, tokens_per_expert, share, max_violation, min_load, margin, dropped, entropy, bias;
  std::vector<double> layer_index;
};

Routing read_routing(const std::string& f) {
  namespace layout = fulcrum::run_layout;
  const auto routing = [](const char* name) { return layout::in_group(layout::kRouting, name); };
  // absent datasets (dense runs; files of versions before the routing options) stay empty
  const auto read_if_present = [&](const char* name) {
    return has(f, routing(name)) ? read_dataset_1d(f, routing(name)) : std::vector<double>{};
  };
  Routing r;
  if (!has(f, routing(layout::kExpertShare))) return r;
  const auto d = read_dataset_dims(f, routing(layout::kExpertShare));
  r.S = d.at(0), r.L = d.at(1), r.E = d.at(2);
  r.step = read_dataset_1d(f, routing(layout::kStepColumn));
  r.share = read_dataset_1d(f, routing(layout::kExpertShare));
  r.max_violation = read_dataset_1d(f, routing(layout::kMaxViolation));
  r.dropped = read_dataset_1d(f, routing(layout::kDroppedFraction));
  r.entropy = read_dataset_1d(f, routing(layout::kRouterEntropy));
  r.layer_index = read_dataset_1d(f, routing(layout::kLayerIndex));
  r.tokens_per_expert = read_if_present(layout::kTokensPerExpert);
  r.min_load = read_if_present(layout::kMinLoad);
  r.margin = read_if_present(layout::kTopkMargin);
  r.bias = read_if_present(layout::kRouterBias);
  return r;
}

#ifdef FULCRUM_HAVE_PLPLOT
struct Png {
  Png(const std::string& path) {
    plsdev("pngcairo");
    plsfnam(path.c_str());
    plsetopt("geometry", "900x600");
    // colour 0 the white background, 1 black, then the curves' colours
    PLINT r[6] = {255, 0, 214, 31, 44, 255}, g[6] = {255, 0, 39, 119, 160, 127}, b[6] = {255, 0, 40, 180, 44, 14};
    plscmap0(r, g, b, 6);
    plinit();
    pladv(0);
  }
  ~Png() { plend(); }
};

void range(const std::vector<double>& v, double& lo, double& hi) {
  for (double x : v)
    if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
}

void curve_plot(const std::string& png, const std::vector<std::vector<double>>& xs,
                const std::vector<std::vector<double>>& ys, const std::vector<std::string>& names,
                const char* xl, const char* yl, const std::string& title) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (std::size_t i = 0; i < xs.size(); ++i) range(xs[i], x0, x1), range(ys[i], y0, y1);
  if (!(x1 > x0)) x0 -= 0.5, x1 += 0.5;
  if (!(y1 > y0)) y0 -= 0.5, y1 += 0.5;
  Png p(png);
  plcol0(1);  // black frame on white
  plschr(0, 0.9);
  plvsta();
  plwind(x0, x1, y0 - 0.03 * (y1 - y0), y1 + 0.03 * (y1 - y0));
  plbox("bcnst", 0, 0, "bcnstv", 0, 0);
  pllab(xl, yl, title.c_str());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    plcol0(2 + (int)(i % 4));
    plwidth(2);
    // a few points (e.g. evaluations only at the start and the end) are
    // markers: a line between them would draw a curve nobody measured
    if (xs[i].size() >= 5) plline((PLINT)xs[i].size(), xs[i].data(), ys[i].data());
    if (xs[i].size() < 30) {
      plssym(0, xs[i].size() < 5 ? 1.5 : 1.0);
      plpoin((PLINT)xs[i].size(), xs[i].data(), ys[i].data(), xs[i].size() < 5 ? 4 : 17);
      plssym(0, 1.0);
    }
    plwidth(1);
    plschr(0, 0.7);
    plmtex("rv", -12.0, 0.95 - 0.05 * i, 0.0, names[i].c_str());
    plschr(0, 0.9);
  }
}

// load / mean load of every expert over the snapshots of MoE layer l
void heatmap(const std::string& png, const Routing& r, std::size_t l) {
  const std::size_t S = r.S, E = r.E;
  std::vector<double> buf(S * E);
  std::vector<PLFLT*> rows(S);
  double zmax = 1.0;
  for (std::size_t s = 0; s < S; ++s) {
    rows[s] = &buf[s * E];
    for (std::size_t e = 0; e < E; ++e) {
      buf[s * E + e] = r.share[(s * r.L + l) * E + e] * E;
      zmax = std::max(zmax, buf[s * E + e]);
    }
  }
  const double x0 = S > 1 ? r.step.front() : 0, x1 = S > 1 ? r.step.back() : 1;
  Png p(png);
  plcol0(1);
  plschr(0, 0.9);
  plvpor(0.1, 0.85, 0.12, 0.9);
  plwind(x0, x1, 0, (double)E);
  plspal1("cmap1_blue_red.pal", 1);
  plimage(rows.data(), (PLINT)S, (PLINT)E, x0, x1, 0, (double)E, 0.0, zmax, x0, x1, 0, (double)E);
  plcol0(1);
  double expert_tick = 1;  // at most about 10 expert labels (32 labels overlapped)
  while (E / expert_tick > 10) expert_tick *= 2;
  plbox("bcnst", 0, 0, "bcnst", expert_tick, 0);
  const std::string t = "expert load / mean load, MoE layer " + std::to_string((int)r.layer_index[l]) +
                        " (0 .. " + std::to_string(zmax).substr(0, 4) + ")";
  pllab("step", "expert", t.c_str());
}
#endif

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fulcrum-inspect: summary and plots of a Fulcrum run file"};
  std::string file, plots;
  bool no_plots = false;
  app.add_option("run_file", file, "the run file (run.h5)")->required();
  app.add_option("--plots", plots, "directory for the PNG plots (default: the run file's directory)");
  app.add_flag("--no-plots", no_plots, "print the summary only");
  CLI11_PARSE(app, argc, argv);
  try {
    namespace layout = fulcrum::run_layout;
    using layout::in_group;
    std::printf("run %s: %s, status %s\n", file.c_str(), attr_text(file, layout::kRoot, "name").c_str(),
                attr_text(file, layout::kRoot, layout::kStatusAttr).c_str());
    for (const char* k : {"params_total", "params_active", "num_experts", "num_active_experts", "score_function",
                          "route_scale", "balance_loss_scope", "aux_loss_coef", "bias_balancing",
                          "bias_update_rate"})
      std::printf("  %-20s %s\n", k, attr_text(file, layout::kConfig, k).c_str());
    for (const char* k : {"steps_completed", "tokens_seen", "final_train_loss", "final_val_loss",
                          "tokens_per_second", "wall_time_s"})
      std::printf("  %-20s %s\n", k, attr_text(file, layout::kSummary, k).c_str());
    const auto step = read_dataset_1d(file, in_group(layout::kTrain, layout::kStepColumn));
    const auto loss = read_dataset_1d(file, in_group(layout::kTrain, layout::kLossColumn));
    const auto lm = read_dataset_1d(file, in_group(layout::kTrain, layout::kLmLossColumn));
    const auto aux = read_dataset_1d(file, in_group(layout::kTrain, layout::kAuxLossColumn));
    const auto lr = read_dataset_1d(file, in_group(layout::kTrain, layout::kLrColumn));
    const auto estep = read_dataset_1d(file, in_group(layout::kEval, layout::kStepColumn));
    const auto val = read_dataset_1d(file, in_group(layout::kEval, layout::kValLossColumn));
    if (!step.empty())
      std::printf("  train rows %zu: loss %.4f -> %.4f (lm %.4f, aux %.4g at the end)\n", step.size(),
                  loss.front(), loss.back(), lm.back(), aux.back());
    if (!val.empty()) std::printf("  evaluations %zu: val_loss %.4f -> %.4f\n", val.size(), val.front(), val.back());
    const Routing r = read_routing(file);
    if (r.S > 0) {
      std::printf("  routing: %zu snapshots, %zu MoE layers, %zu experts; last snapshot (step %.0f):\n", r.S, r.L,
                  r.E, r.step.back());
      const std::size_t s = r.S - 1;
      for (std::size_t l = 0; l < r.L; ++l) {
        std::printf("    layer %d: max violation %.3f", (int)r.layer_index[l], r.max_violation[s * r.L + l]);
        if (!r.min_load.empty()) std::printf(", min load %.3f", r.min_load[s * r.L + l]);
        if (!r.margin.empty()) std::printf(", top-k margin %.4g", r.margin[s * r.L + l]);
        std::printf(", dropped %.4f, entropy %.3f\n", r.dropped[s * r.L + l], r.entropy[s * r.L + l]);
        if (!r.tokens_per_expert.empty()) {
          std::printf("      tokens per expert:");
          for (std::size_t e = 0; e < r.E; ++e) std::printf(" %.0f", r.tokens_per_expert[(s * r.L + l) * r.E + e]);
          std::printf("\n");
        }
        if (!r.bias.empty()) {
          std::printf("      bias:");
          for (std::size_t e = 0; e < r.E; ++e) std::printf(" %+.4f", r.bias[(s * r.L + l) * r.E + e]);
          std::printf("\n");
        }
      }
    }
    if (no_plots) return 0;
#ifdef FULCRUM_HAVE_PLPLOT
    const std::string dir =
        plots.empty() ? std::filesystem::absolute(file).parent_path().string() : plots;
    std::filesystem::create_directories(dir);
    std::vector<std::string> written;
    curve_plot(dir + "/loss.png", {step, step, estep}, {loss, lm, val}, {"loss", "lm_loss", "val_loss"}, "step",
               "loss (nats/token)", "losses");
    written.push_back(dir + "/loss.png");
    curve_plot(dir + "/lr.png", {step}, {lr}, {"lr"}, "step", "learning rate", "learning rate");
    written.push_back(dir + "/lr.png");
    for (std::size_t l = 0; r.S > 0 && l < r.L; ++l) {
      const std::string png = dir + "/expert_load_layer" + std::to_string((int)r.layer_index[l]) + ".png";
      heatmap(png, r, l);
      written.push_back(png);
    }
    for (const auto& w : written) std::printf("  wrote %s\n", w.c_str());
#else
    (void)plots;
    std::printf("  (no plots: this build has no plplot)\n");
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fulcrum-inspect: %s\n", e.what());
    return 1;
  }
  return 0;
}
