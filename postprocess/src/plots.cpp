// PNG plots with plplot (pngcairo driver).
#include <plplot.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "output.hpp"

namespace fulcrum::fit {

namespace {

const int kColors[][3] = {{255, 255, 255}, {0, 0, 0},     {214, 39, 40},  {31, 119, 180},
                          {44, 160, 44},   {255, 127, 14}, {148, 103, 189}, {23, 190, 207},
                          {140, 86, 75},   {227, 119, 194}, {127, 127, 127}, {188, 189, 34},
                          {0, 0, 128},     {0, 128, 128},   {255, 152, 150}, {64, 64, 64}};
int col(size_t i) { return 2 + static_cast<int>(i % 13); }

struct Png {
  bool ok = false;
  Png(const std::string& path, int nx = 1, int ny = 1, const char* geom = "900x650") {
    plsdev("pngcairo");
    plsfnam(path.c_str());
    plsetopt("geometry", geom);
    PLINT r[16], g[16], b[16];
    for (int i = 0; i < 16; ++i) r[i] = kColors[i][0], g[i] = kColors[i][1], b[i] = kColors[i][2];
    plscmap0(r, g, b, 16);
    plssub(nx, ny);
    plinit();
    plfontld(1);
    ok = true;
  }
  ~Png() { plend(); }
};

// plplot numbers a log axis at whole decades only, so an axis inside one or
// two decades (the learning rates, batches and budgets of one study) showed
// no number at all: label 2 and 5 x 10^k inside [lo, hi] (log10 units) too.
void label_log_axis(bool x_axis, double lo, double hi) {
  if (!(hi - lo < 2.5)) return;
  plschr(0, 0.75);
  for (int k = static_cast<int>(std::floor(lo)); k <= static_cast<int>(std::ceil(hi)); ++k)
    for (int m : {2, 5}) {
      const double v = std::log10(static_cast<double>(m)) + k;
      if (v < lo || v > hi) continue;
      char b[48];
      if (k >= -3 && k <= 4) std::snprintf(b, sizeof b, "%g", m * std::pow(10.0, k));
      else std::snprintf(b, sizeof b, "%dx10#u%d#d", m, k);
      const double pos = (v - lo) / (hi - lo);
      if (x_axis) plmtex("b", 1.6, pos, 0.5, b);
      else plmtex("lv", 0.6, pos, 1.0, b);
    }
  plschr(0, 0.9);
}

void frame(double x0, double x1, double y0, double y1, int axis, const char* xl, const char* yl,
           const char* title) {
  if (x1 <= x0) x0 -= 0.5, x1 += 0.5;
  if (y1 <= y0) y0 -= 0.5, y1 += 0.5;
  double dx = 0.04 * (x1 - x0), dy = 0.06 * (y1 - y0);
  plcol0(1);
  plschr(0, 0.9);
  plenv(x0 - dx, x1 + dx, y0 - dy, y1 + dy, 0, axis);
  if (axis == 10 || axis == 30) label_log_axis(true, x0 - dx, x1 + dx);
  if (axis == 20 || axis == 30) label_log_axis(false, y0 - dy, y1 + dy);
  pllab(xl, yl, title);
}

void points(const std::vector<double>& x, const std::vector<double>& y, int c, int sym) {
  if (x.empty()) return;
  plcol0(c);
  plpoin(static_cast<PLINT>(x.size()), x.data(), y.data(), sym);
}

void line(const std::vector<double>& x, const std::vector<double>& y, int c, double w = 2) {
  if (x.size() < 2) return;
  plcol0(c);
  plwidth(w);
  plline(static_cast<PLINT>(x.size()), x.data(), y.data());
  plwidth(1);
}

void legend_text(int i, int c, const std::string& s, double x0 = 0.03, bool right = false) {
  // small legend in the upper left (right) of the current viewport
  plcol0(c);
  plschr(0, 0.65);
  if (right) plmtex("rv", -1.0, 1.0 - 0.05 * (i + 1) - x0 + 0.03, 1.0, s.c_str());
  else plmtex("lv", -1.0, 1.0 - 0.05 * (i + 1) - x0 + 0.03, 0.0, s.c_str());
  plschr(0, 0.9);
}

std::string g(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

void mm(const std::vector<double>& v, double& lo, double& hi) {
  for (double x : v) if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
}

}  // namespace

bool plot_el_map(const std::string& png, const LawSet& L, double C, double A_lo, double A_hi,
                 double G_lo, double G_hi, const std::vector<const ELPoint*>& pts) {
  if (!L.el.ok()) return false;
  const int nx = 80, ny = 80;
  std::vector<double> buf(nx * ny);
  std::vector<PLFLT*> rows(nx);
  double zmin = INFINITY, zmax = -INFINITY;
  double xa = std::log10(A_lo), xb = std::log10(A_hi), ya = std::log2(G_lo), yb = std::log2(G_hi);
  for (int i = 0; i < nx; ++i) {
    rows[i] = &buf[i * ny];
    for (int j = 0; j < ny; ++j) {
      double A = std::pow(10.0, xa + (xb - xa) * i / (nx - 1));
      double G = std::exp2(ya + (yb - ya) * j / (ny - 1));
      double e = el_joint(L.el, A, G, C);
      rows[i][j] = e;
      if (std::isfinite(e)) zmin = std::min(zmin, e), zmax = std::max(zmax, e);
    }
  }
  if (!std::isfinite(zmin) || zmax <= zmin) zmax = zmin + 1;
  const int nl = 16;
  std::vector<double> lev(nl);
  for (int k = 0; k < nl; ++k) lev[k] = zmin + (zmax - zmin) * k / (nl - 1);
  Png p(png);
  pladv(0);
  plcol0(1);
  plschr(0, 0.9);
  plvpor(0.1, 0.82, 0.12, 0.9);
  plwind(xa, xb, ya, yb);
  plpsty(0);
  plshades(rows.data(), nx, ny, nullptr, xa, xb, ya, yb, lev.data(), nl, 1.0, 1, 0.6, plfill, 1,
           nullptr, nullptr);
  plcol0(1);
  plbox("bclnst", 0, 0, "bcnst", 0, 0);
  std::string t = "EL(A, G) at C = " + g(C) + " FLOPs (" + L.source + ")";
  pllab("activation ratio A", "log#d2#u G", t.c_str());
  std::vector<double> px, py;
  for (auto* e : pts) px.push_back(std::log10(e->A)), py.push_back(std::log2(e->G));
  points(px, py, 1, 17);
  double Gs = el_optimal_G(L.el);
  if (std::isfinite(Gs) && std::log2(Gs) > ya && std::log2(Gs) < yb)
    line({xa, xb}, {std::log2(Gs), std::log2(Gs)}, 1, 1.5);
  PLFLT cw, ch;
  PLINT lopt[] = {PL_COLORBAR_LABEL_BOTTOM};
  const char* labels[] = {"EL"};
  const char* axis_opts[] = {"bcvtm"};
  PLFLT ticks[] = {0.0};
  PLINT sub[] = {0};
  PLINT nv[] = {nl};
  const PLFLT* vals[] = {lev.data()};
  plcolorbar(&cw, &ch, PL_COLORBAR_SHADE | PL_COLORBAR_SHADE_LABEL, 0, 0.02, 0.0, 0.04, 0.78, 0,
             1, 1, 0.0, 0.0, 1, 0.5, 1, lopt, labels, 1, axis_opts, ticks, sub, nv, vals);
  return true;
}

std::vector<std::string> write_plots(const std::string& dir, const FitResult& R) {
  std::vector<std::string> out;
  // ---------------- Law 1
  if (!R.hp.empty()) {
    std::string f = dir + "/law1_hyperparameters.png";
    Png p(f, 2, 1, "1300x560");
    for (int which = 0; which < 2; ++which) {
      double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
      std::vector<double> xs, ys;
      for (auto& h : R.hp) xs.push_back(std::log10(h.C)), ys.push_back(std::log10(which ? h.batch : h.lr));
      mm(xs, x0, x1);
      mm(ys, y0, y1);
      frame(x0, x1, y0, y1, 30, "compute C (FLOPs)", which ? "batch (tokens)" : "peak learning rate",
            which ? "Law 1: B_opt(C)" : "Law 1: eta_opt(C)");
      std::map<std::string, int> fc;
      for (auto& h : R.hp) if (!fc.count(h.family)) fc[h.family] = col(fc.size());
      int li = 0;
      for (auto& [fam, c] : fc) {
        std::vector<double> ax, ay, nx, ny, ox, oy;
        for (auto& h : R.hp) {
          if (h.family != fam) continue;
          double x = std::log10(h.C), y = std::log10(which ? h.batch : h.lr);
          bool out = which ? h.outlier_batch : h.outlier_lr;
          if (!h.near_opt) ax.push_back(x), ay.push_back(y);
          else if (out) ox.push_back(x), oy.push_back(y);
          else nx.push_back(x), ny.push_back(y);
        }
        points(ax, ay, 10, 1);
        points(nx, ny, c, 17);
        points(ox, oy, 1, 5);
        std::vector<double> vx, vy;  // per-budget optima (vertex method), open circles
        for (auto& q : R.hp_opt)
          if (q.family == fam) vx.push_back(std::log10(q.C)), vy.push_back(std::log10(which ? q.batch : q.lr));
        points(vx, vy, c, 4);
        for (auto& l : R.law1_all) {
          if (l.family != fam) continue;
          const PowerLaw& pl = which ? l.batch : l.eta;
          std::vector<double> lx{x0, x1}, ly{std::log10(pl(std::pow(10, x0))), std::log10(pl(std::pow(10, x1)))};
          line(lx, ly, c);
          legend_text(li++, c, fam + ": " + g(pl.k.v) + " C^" + g(pl.a.v));
        }
      }
    }
    out.push_back(f);
  }
  // ---------------- Law 2 IsoFLOP
  std::set<std::string> isofam;
  for (auto& f : R.isofits) isofam.insert(f.family);
  if (!isofam.empty()) {
    std::string f = dir + "/law2_isoflop.png";
    int n = static_cast<int>(std::min<size_t>(isofam.size(), 2));
    Png p(f, n, 1, n == 2 ? "1300x560" : "900x650");
    int k = 0;
    for (auto& fam : isofam) {
      if (k++ >= 2) break;
      double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
      std::vector<double> xs, ys;
      for (auto& q : R.iso) if (q.family == fam) xs.push_back(std::log10(q.M)), ys.push_back(q.loss);
      mm(xs, x0, x1);
      mm(ys, y0, y1);
      frame(x0, x1, y0, y1, 10, "M (FLOPs per token)", "final loss", ("IsoFLOP: " + fam).c_str());
      std::vector<double> bud;
      for (auto& fit : R.isofits) if (fit.family == fam) bud.push_back(fit.C);
      for (size_t i = 0; i < bud.size(); ++i) {
        std::vector<double> px, py;
        for (auto& q : R.iso)
          if (q.family == fam && budget_key(q.C) == budget_key(bud[i])) px.push_back(std::log10(q.M)), py.push_back(q.loss);
        points(px, py, col(i), 17);
        for (auto& fit : R.isofits) {
          if (fit.family != fam || budget_key(fit.C) != budget_key(bud[i])) continue;
          std::vector<double> lx, ly;
          for (int t = 0; t <= 50; ++t) {
            double x = fit.x_lo + (fit.x_hi - fit.x_lo) * t / 50;
            lx.push_back(x), ly.push_back(fit.c0 + fit.c1 * x + fit.c2 * x * x);
          }
          line(lx, ly, col(i), 1.5);
          points({std::log10(fit.M_opt)}, {fit.L_min}, 1, 5);
          legend_text(static_cast<int>(i), col(i), "C = " + g(fit.C));
        }
      }
    }
    out.push_back(f);
  }
  // ---------------- Law 3
  if (!R.curve.empty()) {
    std::string f = dir + "/law3_loss_vs_compute.png";
    Png p(f);
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    std::vector<double> xs, ys;
    for (auto& c : R.curve) xs.push_back(std::log10(c.C)), ys.push_back(c.loss);
    mm(xs, x0, x1);
    mm(ys, y0, y1);
    frame(x0, x1, y0, y1, 10, "compute C (FLOPs)", "loss", "Law 3: L(C) = alpha C^beta + b per family");
    size_t i = 0;
    for (auto& l : R.laws.law3) {
      int c = l.family == "dense" ? 1 : col(i++);
      std::vector<double> px, py, lx, ly;
      for (auto& q : R.curve) if (q.family == l.family) px.push_back(std::log10(q.C)), py.push_back(q.loss);
      points(px, py, c, l.family == "dense" ? 16 : 17);
      for (int t = 0; t <= 40; ++t) {
        double x = x0 + (x1 - x0) * t / 40;
        lx.push_back(x), ly.push_back(l(std::pow(10.0, x)));
      }
      line(lx, ly, c, l.family == "dense" ? 3 : 1);
      // legend: one line per family (A, G, S); long lists end with a count
      const int li = static_cast<int>(&l - R.laws.law3.data());
      if (li < 18) legend_text(li, c, l.family == "dense" ? "dense (thick black)" : l.family, 0.03, true);
      else if (li == 18)
        legend_text(li, 1, "... and " + std::to_string(R.laws.law3.size() - 18) + " more families", 0.03, true);
    }
    out.push_back(f);
  }
  // ---------------- EL vs A, G, C
  if (!R.el.empty()) {
    const LawSet& L = R.laws;
    std::set<double> As, Gs, Cs;
    for (auto& e : R.el) As.insert(e.A), Gs.insert(e.G), Cs.insert(e.C);
    // the reference budget of the A and G plots: the one with the most EL
    // points (every family whose observed budgets cover it; ties: the larger)
    double Cmax = *Cs.rbegin();
    {
      std::map<long long, std::pair<int, double>> per;
      for (auto& e : R.el)
        if (!e.other_S) per[budget_key(e.C)].first++, per[budget_key(e.C)].second = e.C;
      int most = 0;
      for (auto& [k, v] : per)
        if (v.first >= most) most = v.first, Cmax = v.second;
    }
    double ymax = 0;
    for (auto& e : R.el) ymax = std::max(ymax, e.EL);
    {
      const double cap = 2 * ymax;  // the runs' EL (EL vs C) within reason
      for (auto& e : R.el_raw)
        if (!e.other_S && e.EL <= cap) ymax = std::max(ymax, e.EL);
    }
    auto elplot = [&](const std::string& name, int var) {
      std::string f = dir + "/" + name;
      Png p(f);
      std::vector<double> xs;
      for (auto& e : R.el) xs.push_back(var == 0 ? std::log10(e.A) : var == 1 ? std::log2(e.G) : std::log10(e.C));
      double x0 = INFINITY, x1 = -INFINITY;
      mm(xs, x0, x1);
      const char* xl = var == 0 ? "activation ratio A" : var == 1 ? "log#d2#u granularity G" : "compute C (FLOPs)";
      std::string Ss;  // the shared ratio of the EL laws' points
      for (auto& e : R.el)
        if (!e.other_S) { Ss = ", S = " + g(e.S); break; }
      std::string t = var == 0 ? "EL vs A (C = " + g(Cmax) + Ss + ", one colour per G)"
                    : var == 1 ? "EL vs G (C = " + g(Cmax) + Ss + ", one colour per A)"
                               : "EL vs C (one colour per A, G = " + g(L.el_C.ok() ? L.el_C.G : *Gs.rbegin()) + Ss +
                                     "; open circles: EL of the runs)";
      frame(x0, x1, 0, ymax, var == 1 ? 0 : 10, xl, "efficiency leverage EL", t.c_str());
      plcol0(10);
      pllsty(2);
      plline(2, std::vector<double>{x0, x1}.data(), std::vector<double>{L.el_threshold, L.el_threshold}.data());
      pllsty(1);
      // groups
      std::vector<double> groups(var == 0 ? Gs.begin() : As.begin(), var == 0 ? Gs.end() : As.end());
      double Gfix = L.el_C.ok() ? L.el_C.G : *Gs.rbegin();
      for (size_t i = 0; i < groups.size(); ++i) {
        std::vector<double> px, py, vx, vy;
        for (auto& e : R.el) {
          const bool atC = budget_key(e.C) == budget_key(Cmax);
          bool in = var == 0 ? (e.G == groups[i] && atC)
                  : var == 1 ? (e.A == groups[i] && atC)
                             : (e.A == groups[i] && e.G == Gfix);
          if (!in || e.other_S) continue;
          double x = var == 0 ? std::log10(e.A) : var == 1 ? std::log2(e.G) : std::log10(e.C);
          (e.train ? px : vx).push_back(x);
          (e.train ? py : vy).push_back(e.EL);
        }
        if (px.empty() && vx.empty()) continue;
        points(px, py, col(i), 17);
        points(vx, vy, col(i), 5);
        if (var == 2) {  // the EL of the runs themselves (fit.h5:/el/raw), open circles
          std::vector<double> rx, ry;
          for (auto& e : R.el_raw)
            if (!e.other_S && e.A == groups[i] && e.G == Gfix) rx.push_back(std::log10(e.C)), ry.push_back(e.EL);
          points(rx, ry, col(i), 4);
        }
        if (L.el.ok()) {
          std::vector<double> lx, ly;
          for (int t2 = 0; t2 <= 60; ++t2) {
            double x = x0 + (x1 - x0) * t2 / 60;
            double e = var == 0 ? el_joint(L.el, std::pow(10.0, x), groups[i], Cmax)
                     : var == 1 ? el_joint(L.el, groups[i], std::exp2(x), Cmax)
                                : el_joint(L.el, groups[i], Gfix, std::pow(10.0, x));
            lx.push_back(x), ly.push_back(e);
          }
          line(lx, ly, col(i), 1.5);
        }
        legend_text(static_cast<int>(i), col(i), (var == 0 ? "G = " : "A = ") + g(groups[i]));
      }
      out.push_back(f);
    };
    elplot("el_vs_A.png", 0);
    elplot("el_vs_G.png", 1);
    elplot("el_vs_C.png", 2);
    if (L.el.ok()) {
      std::vector<const ELPoint*> pts;
      for (auto& e : R.el) if (budget_key(e.C) == budget_key(Cmax)) pts.push_back(&e);
      std::string f = dir + "/el_contour.png";
      // one A or one G in the data: a range around it (plplot needs a window)
      double a0 = *As.begin(), a1 = *As.rbegin(), g0 = std::max(1.0, *Gs.begin()), g1 = std::max(g0, *Gs.rbegin());
      if (!(a1 > a0 * 1.001)) a0 /= 2, a1 = std::min(1.0, a1 * 2);
      if (!(g1 > g0 * 1.001)) g0 = std::max(1.0, g0 / 2), g1 *= 2;
      if (plot_el_map(f, L, Cmax, a0, a1, g0, g1, pts))
        out.push_back(f);
    }
  }
  return out;
}

}  // namespace fulcrum::fit
