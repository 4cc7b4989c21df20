// bench_fit: fit every law with a 1000-resample bootstrap on 1000 synthetic
// runs (goal: under 10 s on one core). Usage: bench_fit [resamples] [dir]
// With a directory the runs are also written to and loaded from HDF5 files.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

#include "fitting.hpp"
#include "synth.hpp"

using namespace fulcrum::fit;

int main(int argc, char** argv) {
  int B = argc > 1 ? std::atoi(argv[1]) : 1000;
  SynthSpec s;
  s.budgets.clear();
  for (int i = 0; i < 10; ++i) s.budgets.push_back(1e18 * std::pow(10.0, 3.5 * i / 9));
  s.hp_runs = 24;  // 10 budgets x (9 + 9 IsoFLOP + 2 x 24 hp + 35 EL) = 1010 runs
  auto recs = synth_campaign(SynthTruth{}, s);
  recs.resize(1000);
  using clk = std::chrono::steady_clock;
  std::vector<Run> runs;
  double t_load = 0;
  if (argc > 2) {
    auto paths = write_campaign(argv[2], recs);
    auto t0 = clk::now();
    runs = load_runs({argv[2]}, LoadOptions{}).runs;
    t_load = std::chrono::duration<double>(clk::now() - t0).count();
  } else {
    runs = records_to_runs(recs);
  }
  FitOptions o;
  o.bootstrap = B;
  auto t0 = clk::now();
  std::clock_t c0 = std::clock();
  FitResult R = fit_all(runs, o);
  auto t1 = clk::now();
  bootstrap(runs, o, R);
  auto t2 = clk::now();
  double cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
  double tf = std::chrono::duration<double>(t1 - t0).count();
  double tb = std::chrono::duration<double>(t2 - t1).count();
  std::printf("runs: %zu  families: law1 %zu, law2 %zu, law3 %zu; EL points %zu\n", runs.size(),
              R.law1_all.size(), R.law2_all.size(), R.laws.law3.size(), R.el.size());
  if (argc > 2) std::printf("load HDF5: %.3f s\n", t_load);
  std::printf("point fit: %.3f s\nbootstrap (%d resamples, %d usable): %.3f s\ntotal fit+bootstrap: %.3f s (goal < 10 s)\n",
              tf, B, R.bootstrap_done, tb, tf + tb);
  std::printf("CPU time fit+bootstrap: %.3f s (wall time above is inflated on a loaded machine)\n", cpu);
  std::printf("EL joint d = %.4g [%.4g, %.4g]\n", R.laws.el.d.v, R.laws.el.d.lo, R.laws.el.d.hi);
  return 0;
}
