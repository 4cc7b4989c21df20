#include "fitting.hpp"

#include <ceres/ceres.h>
#include <glog/logging.h>

#include <Eigen/Dense>
#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>

namespace fulcrum::fit {

bool FitResult::any() const {
  const LawSet& L = laws;
  if (L.el.ok()) return true;
  for (auto& l : law1_all) if (l.ok()) return true;
  for (auto& l : law2_all) if (l.ok()) return true;
  for (auto& l : L.law3) if (l.ok()) return true;
  return false;
}

namespace {

// ------------------------------------------------------------ numerics
Value V(double v) { Value x; x.v = v; return x; }

// Ordinary least squares y = X b (Eigen, column-pivoting QR).
Eigen::VectorXd ols(const Eigen::MatrixXd& X, const Eigen::VectorXd& y) {
  return X.colPivHouseholderQr().solve(y);
}

// Line fit y = c0 + c1 x; returns {c0, c1}.
std::array<double, 2> linfit(const std::vector<double>& x, const std::vector<double>& y) {
  Eigen::MatrixXd X(x.size(), 2);
  Eigen::VectorXd Y(x.size());
  for (size_t i = 0; i < x.size(); ++i) X(i, 0) = 1, X(i, 1) = x[i], Y(i) = y[i];
  Eigen::VectorXd b = ols(X, Y);
  return {b(0), b(1)};
}

// Line fit with iterative MAD outlier rejection; `keep` flags the points used.
std::array<double, 2> robust_linfit(const std::vector<double>& x, const std::vector<double>& y,
                                    double k, std::vector<bool>& keep) {
  keep.assign(x.size(), true);
  std::array<double, 2> c{NAN, NAN};
  for (int it = 0; it < 5; ++it) {
    std::vector<double> xs, ys;
    for (size_t i = 0; i < x.size(); ++i)
      if (keep[i]) xs.push_back(x[i]), ys.push_back(y[i]);
    c = linfit(xs, ys);
    std::vector<double> r;
    for (size_t i = 0; i < x.size(); ++i) r.push_back(std::abs(y[i] - c[0] - c[1] * x[i]));
    std::vector<double> rk;
    for (size_t i = 0; i < x.size(); ++i) if (keep[i]) rk.push_back(r[i]);
    std::nth_element(rk.begin(), rk.begin() + rk.size() / 2, rk.end());
    double mad = 1.4826 * rk[rk.size() / 2];
    if (!(mad > 0)) break;
    bool changed = false;
    for (size_t i = 0; i < x.size(); ++i) {
      bool kk = r[i] <= k * mad;
      if (kk != keep[i]) changed = true;
      keep[i] = kk;
    }
    if (std::count(keep.begin(), keep.end(), true) < 3) {
      keep.assign(x.size(), true);
      c = linfit(x, y);
      break;
    }
    if (!changed) break;
  }
  return c;
}

double huber(double r, double d) {
  double s = r * r;
  return s <= d * d ? s : 2 * d * std::abs(r) - d * d;
}

// Huber-loss fit with Ceres' line-search BFGS. Returns the final cost, +inf
// when the solver result is unusable.
}  // namespace

void quiet_solver_logging() {
  // Ceres logs through glog, whose warnings go to stderr when glog was never
  // initialised; fulcrum-fit reports what it needs itself (doc/fit.md).
  static const bool done = [] {
    FLAGS_logtostderr = false;
    FLAGS_alsologtostderr = false;
    FLAGS_stderrthreshold = google::GLOG_FATAL;
    FLAGS_minloglevel = google::GLOG_FATAL;
    return true;
  }();
  (void)done;
}

namespace {

template <class Fn, int NP>
double huber_fit(const std::vector<Fn>& res, std::array<double, NP>& p, double delta) {
  quiet_solver_logging();
  ceres::Problem::Options po;
  po.loss_function_ownership = ceres::DO_NOT_TAKE_OWNERSHIP;
  po.enable_fast_removal = false;
  ceres::Problem prob(po);
  ceres::HuberLoss loss(delta);
  for (const auto& r : res)
    prob.AddResidualBlock(new ceres::AutoDiffCostFunction<Fn, 1, NP>(new Fn(r)), &loss, p.data());
  ceres::Solver::Options o;
  o.minimizer_type = ceres::LINE_SEARCH;
  o.line_search_direction_type = ceres::BFGS;
  o.max_num_iterations = 400;
  o.function_tolerance = 1e-12;
  o.gradient_tolerance = 1e-12;
  o.parameter_tolerance = 1e-12;
  o.logging_type = ceres::SILENT;
  o.minimizer_progress_to_stdout = false;
  ceres::Solver::Summary s;
  ceres::Solve(o, &prob, &s);
  if (!s.IsSolutionUsable() || !std::isfinite(s.final_cost)) return INFINITY;
  for (double v : p) if (!std::isfinite(v)) return INFINITY;
  return s.final_cost;
}

// Direct cost of a functor set at p (no derivatives), for choosing starts.
template <class Fn, int NP>
double cost_at(const std::vector<Fn>& res, const std::array<double, NP>& p, double delta) {
  double c = 0;
  for (auto& r : res) {
    double e;
    if (!r(p.data(), &e) || !std::isfinite(e)) return INFINITY;
    c += 0.5 * huber(e, delta);
  }
  return c;
}

// Fit from several starts: evaluate all, optimise the best `n_opt`.
template <class Fn, int NP>
double multistart(const std::vector<Fn>& res, std::vector<std::array<double, NP>> starts,
                  std::array<double, NP>& best, double delta, size_t n_opt) {
  std::vector<std::pair<double, size_t>> c;
  for (size_t i = 0; i < starts.size(); ++i) c.push_back({cost_at<Fn, NP>(res, starts[i], delta), i});
  std::sort(c.begin(), c.end());
  double bc = INFINITY;
  for (size_t j = 0; j < std::min(n_opt, c.size()); ++j) {
    if (!std::isfinite(c[j].first)) break;
    auto p = starts[c[j].second];
    double f = huber_fit<Fn, NP>(res, p, delta);
    if (f < bc) bc = f, best = p;
  }
  return bc;
}

double r2(const std::vector<double>& obs, const std::vector<double>& pred) {
  if (obs.size() < 2) return NAN;
  double m = 0;
  for (double o : obs) m += o;
  m /= obs.size();
  double ss = 0, st = 0;
  for (size_t i = 0; i < obs.size(); ++i)
    ss += (obs[i] - pred[i]) * (obs[i] - pred[i]), st += (obs[i] - m) * (obs[i] - m);
  return st > 0 ? 1 - ss / st : NAN;
}

double mape(const std::vector<double>& obs, const std::vector<double>& pred) {
  if (obs.empty()) return NAN;
  double s = 0;
  for (size_t i = 0; i < obs.size(); ++i) s += std::abs(pred[i] - obs[i]) / std::abs(obs[i]);
  return 100 * s / obs.size();
}

long long key3(double v) { return std::llround(std::log(v) * 1e3); }  // relative 1e-3

std::string fmt(double v) {
  std::ostringstream o;
  o.precision(4);
  o << v;
  return o.str();
}

// ------------------------------------------------------------ functors
struct Law3Res {
  double lc, L;
  template <class T> bool operator()(const T* p, T* r) const {
    using std::exp;
    r[0] = (p[0] + exp(p[1] + p[2] * lc) - L) / L;
    return true;
  }
};

struct ParamRes {  // ln L = LSE(e, a - alpha ln M~, b - beta ln D~)
  double lm, ld, lL;
  template <class T> bool operator()(const T* p, T* r) const {
    using std::exp;
    using std::log;
    T u0 = p[0], u1 = p[1] - p[3] * lm, u2 = p[2] - p[4] * ld;
    T mx = u0;
    if (u1 > mx) mx = u1;
    if (u2 > mx) mx = u2;
    r[0] = mx + log(exp(u0 - mx) + exp(u1 - mx) + exp(u2 - mx)) - lL;
    return true;
  }
};

template <class T> T ahat_t(double A, const T& lnAs, double Amax) {
  using std::exp;
  T k = T(1.0) / (exp(-lnAs) - 1.0 / Amax);
  return T(1.0) / (T(1.0) / (A + k) + 1.0 / Amax);
}

struct JointRes {  // ln EL = ln A_hat * (a + d lc + gamma lg^2 + beta lg)
  double A, lc, lg, lnEL, Amax;
  bool fix_d = false, fix_gamma = false, fix_beta = false;  // term fixed at 0 (not identified)
  template <class T> bool operator()(const T* p, T* r) const {
    using std::log;
    T ah = ahat_t(A, p[4], Amax);
    T e = p[0];
    if (!fix_d) e += p[1] * lc;
    if (!fix_gamma) e += p[2] * lg * lg;
    if (!fix_beta) e += p[3] * lg;
    r[0] = log(ah) * e - lnEL;
    return true;
  }
};

struct ActRes {  // ln EL = a_A ln A_hat
  double A, lnEL, Amax;
  template <class T> bool operator()(const T* p, T* r) const {
    using std::log;
    r[0] = p[0] * log(ahat_t(A, p[1], Amax)) - lnEL;
    return true;
  }
};

template <class K, class T> const T* find_family(const std::vector<T>& v, const K& fam) {
  for (auto& x : v) if (x.family == fam) return &x;
  return nullptr;
}

// ------------------------------------------------------------ Law 1
// Paper's procedure (Sec. 2.2): power laws through every near-optimal run of
// every budget, outliers removed. Sets the outlier flags of `pts`.
bool law1_near_optimal(std::vector<HPPoint>& pts, const FitOptions& opt, Law1& l) {
  std::vector<double> x, ye, yb;
  std::vector<size_t> idx;
  std::set<long long> bud;
  for (size_t i = 0; i < pts.size(); ++i)
    if (pts[i].near_opt) {
      x.push_back(std::log10(pts[i].C));
      ye.push_back(std::log10(pts[i].lr));
      yb.push_back(std::log10(pts[i].batch));
      idx.push_back(i);
      bud.insert(budget_key(pts[i].C));
    }
  if (bud.size() < 2) return false;
  std::vector<bool> ke, kb;
  auto ce = robust_linfit(x, ye, opt.outlier_k, ke);
  auto cb = robust_linfit(x, yb, opt.outlier_k, kb);
  for (size_t j = 0; j < idx.size(); ++j) {
    pts[idx[j]].outlier_lr = !ke[j];
    pts[idx[j]].outlier_batch = !kb[j];
  }
  l.eta = {V(std::pow(10.0, ce[0])), V(ce[1])};
  l.batch = {V(std::pow(10.0, cb[0])), V(cb[1])};
  return true;
}

// Vertex method: per budget, ln(loss) = quadratic in (log2 lr, log2 B) over
// the sweep runs; its vertex is (eta_opt, B_opt). A budget with too few runs
// or values, a non-convex surface or a vertex outside the sampled range falls
// back to the log-mean of its near-optimal runs (one point per budget either
// way). Power laws through the per-budget optima, outliers removed.
bool law1_vertex(const std::vector<HPPoint>& pts, const FitOptions& opt, Law1& l,
                 std::vector<HPOptimum>& optima, std::vector<std::string>* notes) {
  const std::string& fam = l.family;
  std::map<long long, std::vector<const HPPoint*>> bb;
  for (auto& p : pts) bb[budget_key(p.C)].push_back(&p);
  std::vector<HPOptimum> op;
  auto note = [&](double C, const std::string& why) {
    if (notes)
      notes->push_back("Law 1 (" + fam + ", C=" + fmt(C) + "): " + why +
                       "; near-optimal runs used for this budget");
  };
  for (auto& [k, v] : bb) {
    double C = v[0]->C;
    HPOptimum o{fam, C, NAN, NAN};
    o.n_points = static_cast<int>(v.size());
    std::set<long long> ulr, ub;
    std::set<std::pair<long long, long long>> upair;
    double a0 = INFINITY, a1 = -INFINITY, b0 = INFINITY, b1 = -INFINITY;
    for (auto* p : v) {
      ulr.insert(key3(p->lr)), ub.insert(key3(p->batch)), upair.insert({key3(p->lr), key3(p->batch)});
      double a = std::log2(p->lr), b = std::log2(p->batch);
      a0 = std::min(a0, a), a1 = std::max(a1, a), b0 = std::min(b0, b), b1 = std::max(b1, b);
    }
    bool done = false;
    if (static_cast<int>(upair.size()) < opt.law1_vertex_min_points ||
        static_cast<int>(ulr.size()) < opt.law1_vertex_min_values ||
        static_cast<int>(ub.size()) < opt.law1_vertex_min_values) {
      note(C, std::to_string(upair.size()) + " distinct (lr, B) runs, " + std::to_string(ulr.size()) +
                  " lr and " + std::to_string(ub.size()) + " B values (the vertex fit needs " +
                  std::to_string(opt.law1_vertex_min_points) + " runs and " +
                  std::to_string(opt.law1_vertex_min_values) + " values on each axis)");
    } else {
      double mx = 0, my = 0;
      for (auto* p : v) mx += std::log2(p->lr) / v.size(), my += std::log2(p->batch) / v.size();
      Eigen::MatrixXd X(v.size(), 6);
      Eigen::VectorXd Y(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        double a = std::log2(v[i]->lr) - mx, b = std::log2(v[i]->batch) - my;
        X.row(i) << 1, a, b, a * a, b * b, a * b;
        Y(i) = std::log(v[i]->loss);
      }
      Eigen::VectorXd c = ols(X, Y);
      Eigen::Matrix2d H;
      H << 2 * c(3), c(5), c(5), 2 * c(4);
      if (!(H(0, 0) > 0 && H.determinant() > 0)) {
        note(C, "loss surface in (log lr, log B) is not convex");
      } else {
        Eigen::Vector2d x = H.ldlt().solve(Eigen::Vector2d(-c(1), -c(2)));
        double a = x(0) + mx, b = x(1) + my, tol = 1e-9;
        if (!(a >= a0 - tol && a <= a1 + tol && b >= b0 - tol && b <= b1 + tol)) {
          note(C, "vertex (lr " + fmt(std::exp2(a)) + ", B " + fmt(std::exp2(b)) +
                      ") outside the sampled range (lr " + fmt(std::exp2(a0)) + ".." + fmt(std::exp2(a1)) +
                      ", B " + fmt(std::exp2(b0)) + ".." + fmt(std::exp2(b1)) + "), not extrapolated");
        } else {
          o.lr = std::exp2(a), o.batch = std::exp2(b), done = true;
        }
      }
    }
    if (!done) {
      double sa = 0, sb = 0;
      int n = 0;
      for (auto* p : v)
        if (p->near_opt) sa += std::log2(p->lr), sb += std::log2(p->batch), ++n;
      o.lr = std::exp2(sa / n), o.batch = std::exp2(sb / n), o.vertex = false;
    }
    op.push_back(o);
  }
  if (op.size() < 2) return false;
  std::vector<double> x, ye, yb;
  for (auto& o : op) x.push_back(std::log10(o.C)), ye.push_back(std::log10(o.lr)), yb.push_back(std::log10(o.batch));
  std::vector<bool> ke, kb;
  auto ce = robust_linfit(x, ye, opt.outlier_k, ke);
  auto cb = robust_linfit(x, yb, opt.outlier_k, kb);
  for (size_t j = 0; j < op.size(); ++j) op[j].outlier_lr = !ke[j], op[j].outlier_batch = !kb[j];
  l.eta = {V(std::pow(10.0, ce[0])), V(ce[1])};
  l.batch = {V(std::pow(10.0, cb[0])), V(cb[1])};
  optima.insert(optima.end(), op.begin(), op.end());
  return true;
}

void fit_law1(const std::vector<Run>& runs, const FitOptions& opt, FitResult& R) {
  std::map<std::string, std::map<long long, std::vector<const Run*>>> byfam;
  for (auto& r : runs)
    if (r.lr > 0 && r.batch > 0) byfam[r.family][budget_key(r.C)].push_back(&r);
  for (auto& [fam, budgets] : byfam) {
    std::vector<HPPoint> pts;
    int nb = 0;
    for (auto& [bk, rs] : budgets) {
      // the hyper-parameter sweep of a budget: runs at its most common size M
      std::map<long long, std::vector<const Run*>> byM;
      for (auto* r : rs) byM[key3(r->M)].push_back(r);
      const std::vector<const Run*>* sw = nullptr;
      for (auto& [mk, v] : byM) if (!sw || v.size() > sw->size()) sw = &v;
      std::set<std::pair<long long, long long>> hp;
      for (auto* r : *sw) hp.insert({key3(r->lr), key3(r->batch)});
      if (hp.size() < 3) continue;
      double best = INFINITY;
      const Run* rb = nullptr;
      for (auto* r : *sw)
        if (r->loss < best) best = r->loss, rb = r;
      ++nb;
      {  // the best run at an edge of the sampled lr or batch range: optimum not bracketed
        double lr0 = INFINITY, lr1 = 0, b0 = INFINITY, b1 = 0;
        for (auto* r : *sw)
          lr0 = std::min(lr0, r->lr), lr1 = std::max(lr1, r->lr), b0 = std::min(b0, r->batch), b1 = std::max(b1, r->batch);
        auto edge = [&](double v, double lo, double hi, const char* what, const char* unit) {
          if (!(hi > lo * (1 + 1e-9))) return;
          std::string side = v <= lo * (1 + 1e-9) ? "smallest" : v >= hi * (1 - 1e-9) ? "largest" : "";
          if (side.empty()) return;
          R.flags.push_back({"law1", fam, "budget " + fmt(rb->C) + ": the best run has the " + side + " " + what +
                                              " of the sweep (" + fmt(v) + unit + "); extend the " + what +
                                              " grid toward " + (side == "smallest" ? "smaller" : "larger") +
                                              " values"});
        };
        edge(rb->lr, lr0, lr1, "learning rate", "");
        edge(rb->batch, b0, b1, "batch", " tokens");
      }
      for (auto* r : *sw) {
        HPPoint p{fam, r->C, r->lr, r->batch, r->loss};
        p.near_opt = r->loss <= best * (1 + opt.near_optimal);
        pts.push_back(p);
      }
    }
    if (nb == 0) continue;
    if (nb < 2) {
      R.notes.push_back("Law 1 (" + fam + "): hyper-parameter sweep at only one budget; needs two or more");
      R.hp.insert(R.hp.end(), pts.begin(), pts.end());
      continue;
    }
    Law1 lv, ln;
    lv.family = ln.family = fam;
    bool vertex = opt.law1_method == Law1Method::vertex;
    bool ok_n = (!vertex || opt.law1_compare) && law1_near_optimal(pts, opt, ln);
    std::vector<HPOptimum> optima;
    bool ok_v = (vertex || opt.law1_compare) &&
                law1_vertex(pts, opt, lv, optima, vertex ? &R.notes : nullptr);
    if (vertex) {
      if (ok_v) R.law1_all.push_back(lv), R.hp_opt.insert(R.hp_opt.end(), optima.begin(), optima.end());
      else R.notes.push_back("Law 1 (" + fam + "): fewer than two budgets with a usable optimum");
      if (ok_n) R.law1_alt.push_back(ln);
    } else {
      if (ok_n) R.law1_all.push_back(ln);
      else R.notes.push_back("Law 1 (" + fam + "): near-optimal runs at fewer than two budgets");
      if (ok_v) R.law1_alt.push_back(lv), R.hp_opt.insert(R.hp_opt.end(), optima.begin(), optima.end());
    }
    R.hp.insert(R.hp.end(), pts.begin(), pts.end());
  }
}

// ------------------------------------------------------------ Law 2
void fit_law2(const std::vector<Run>& runs, const FitOptions& opt, const FitResult* warm,
              FitResult& R) {
  std::map<std::string, std::map<long long, std::map<long long, const Run*>>> byfam;
  for (auto& r : runs) {
    auto& slot = byfam[r.family][budget_key(r.C)][key3(r.M)];
    if (!slot || r.loss < slot->loss) slot = &r;
  }
  for (auto& [fam, budgets] : byfam) {
    std::vector<IsoFit> fits;
    std::vector<IsoPoint> pts;
    std::set<long long> sizes;
    std::vector<std::string> few;  // budgets with fewer than 3 sizes
    for (auto& [bk, byM] : budgets) {
      for (auto& [mk, r] : byM) sizes.insert(mk);
      if (byM.size() < 3) {
        few.push_back(fmt(byM.begin()->second->C) + " (" + std::to_string(byM.size()) + ")");
        continue;
      }
      std::vector<double> x, y;
      for (auto& [mk, r] : byM) {
        x.push_back(std::log10(r->M));
        y.push_back(r->loss);
        pts.push_back({fam, r->C, r->M, r->D, r->loss});
      }
      double xm = 0;
      for (double v : x) xm += v;
      xm /= x.size();
      Eigen::MatrixXd X(x.size(), 3);
      Eigen::VectorXd Y(x.size());
      for (size_t i = 0; i < x.size(); ++i)
        X(i, 0) = 1, X(i, 1) = x[i] - xm, X(i, 2) = (x[i] - xm) * (x[i] - xm), Y(i) = y[i];
      Eigen::VectorXd c = ols(X, Y);
      double lo = *std::min_element(x.begin(), x.end()), hi = *std::max_element(x.begin(), x.end());
      const double Cb = byM.begin()->second->C;
      // where the best run of the ladder sits (byM is ordered by size)
      const Run* rmin = nullptr;
      for (auto& [mk, r] : byM) if (!rmin || r->loss < rmin->loss) rmin = r;
      const bool at_small = rmin == byM.begin()->second, at_large = rmin == byM.rbegin()->second;
      auto size_text = [](const Run* r) {
        return (r->d_model > 0 ? "d_model " + fmt(r->d_model) + ", " : std::string()) + "M=" + fmt(r->M);
      };
      if (at_small || at_large) {
        R.flags.push_back({"law2", fam, "budget " + fmt(Cb) + ": minimum at the " +
                                            (at_small ? "smallest" : "largest") + " size of the ladder (" +
                                            size_text(rmin) + "); extend the ladder toward " +
                                            (at_small ? "smaller" : "larger") + " models"});
      }
      if (!(c(2) > 0)) {
        R.notes.push_back("Law 2 (" + fam + "): IsoFLOP curve at C=" + fmt(Cb) + " is not convex; budget skipped");
        R.flags.push_back({"law2", fam, "budget " + fmt(Cb) + ": the IsoFLOP curve (loss vs log M over " +
                                            std::to_string(byM.size()) + " sizes) is not convex: no minimum "
                                            "inside the ladder, or noise larger than the curvature; "
                                            "budget skipped"});
        continue;
      }
      double xv = xm - c(1) / (2 * c(2));
      if (xv < lo - 0.5 * (hi - lo) || xv > hi + 0.5 * (hi - lo)) {
        R.notes.push_back("Law 2 (" + fam + "): IsoFLOP minimum at C=" + fmt(Cb) +
                          " lies far outside the sampled sizes; budget skipped");
        R.flags.push_back({"law2", fam, "budget " + fmt(Cb) + ": the IsoFLOP parabola's minimum (M=" +
                                            fmt(std::pow(10.0, xv)) + ") lies far outside the sampled sizes; "
                                            "budget skipped"});
        continue;
      }
      IsoFit f{fam, byM.begin()->second->C};
      // store coefficients in absolute x = log10 M
      f.c2 = c(2);
      f.c1 = c(1) - 2 * c(2) * xm;
      f.c0 = c(0) - c(1) * xm + c(2) * xm * xm;
      f.M_opt = std::pow(10.0, xv);
      f.L_min = c(0) - c(1) * c(1) / (4 * c(2));
      f.x_lo = lo, f.x_hi = hi;
      fits.push_back(f);
    }
    if (budgets.size() >= 2 && sizes.size() == 1) {
      R.notes.push_back("Law 2 (" + fam + "): a single model size (M=" +
                        fmt(budgets.begin()->second.begin()->second->M) +
                        ") at every budget; IsoFLOP needs 3+ sizes per budget");
      continue;
    }
    // budgets with 2 sizes next to budgets with ladders (one size everywhere is
    // the plain "no IsoFLOP ladder" of the diagnostics)
    if (!few.empty() && !std::all_of(budgets.begin(), budgets.end(), [](auto& b) { return b.second.size() == 1; })) {
      std::string m = "Law 2 (" + fam + "): fewer than 3 model sizes at budget(s) ";
      for (size_t i = 0; i < few.size(); ++i) m += (i ? ", " : "") + few[i];
      m += " (sizes in parentheses); an IsoFLOP parabola needs 3+ sizes per budget";
      R.notes.push_back(m);
    }
    if (fits.empty()) continue;
    R.isofits.insert(R.isofits.end(), fits.begin(), fits.end());
    if (fits.size() < 2) {
      R.notes.push_back("Law 2 (" + fam + "): IsoFLOP minimum at only one budget; needs two or more");
      R.iso.insert(R.iso.end(), pts.begin(), pts.end());
      continue;
    }
    std::vector<double> x, y;
    for (auto& f : fits) x.push_back(std::log10(f.C)), y.push_back(std::log10(f.M_opt));
    auto c = linfit(x, y);
    if (fits.size() >= 3) {  // with two budgets the line is exact
      std::vector<double> pr;
      for (double xi : x) pr.push_back(c[0] + c[1] * xi);
      double q = r2(y, pr);
      if (q < opt.min_r2)
        R.flags.push_back({"law2", fam, "log M_opt vs log C is not a line: R^2 = " + fmt(q) + " < " +
                                            fmt(opt.min_r2) + " over " + std::to_string(fits.size()) + " budgets"});
    }
    Law2 l;
    l.family = fam;
    l.M_opt = {V(std::pow(10.0, c[0])), V(c[1])};
    l.D_opt = {V(std::pow(10.0, -c[0])), V(1 - c[1])};
    R.law2_all.push_back(l);

    // Parametric cross-check (Chinchilla approach 3) on the IsoFLOP points.
    double lm0 = 0, ld0 = 0, lmin = INFINITY;
    for (auto& p : pts) lm0 += std::log(p.M), ld0 += std::log(p.D), lmin = std::min(lmin, p.loss);
    lm0 /= pts.size(), ld0 /= pts.size();
    std::vector<ParamRes> res;
    for (auto& p : pts) res.push_back({std::log(p.M) - lm0, std::log(p.D) - ld0, std::log(p.loss)});
    std::array<double, 5> best{};
    double cost = INFINITY;
    const Parametric* w = warm ? find_family(warm->laws.parametric, fam) : nullptr;
    if (w && w->ok()) {
      best = {std::log(w->E.v), std::log(w->A.v) - w->alpha.v * lm0, std::log(w->B.v) - w->beta.v * ld0,
              w->alpha.v, w->beta.v};
      cost = huber_fit<ParamRes, 5>(res, best, opt.huber_loss);
    } else {
      std::vector<std::array<double, 5>> starts;
      for (double e : {0.3, 0.6, 0.85})
        for (double a : {0.02, 0.1, 0.3})
          for (double b : {0.02, 0.1, 0.3})
            for (double al : {0.15, 0.35, 0.7})
              for (double be : {0.15, 0.35, 0.7})
                starts.push_back({std::log(e * lmin), std::log(a * lmin), std::log(b * lmin), al, be});
      cost = multistart<ParamRes, 5>(res, starts, best, opt.huber_loss, 6);
    }
    if (std::isfinite(cost) && best[3] > 0 && best[4] > 0) {
      Parametric p;
      p.family = fam;
      p.E = V(std::exp(best[0]));
      p.A = V(std::exp(best[1] + best[3] * lm0));
      p.B = V(std::exp(best[2] + best[4] * ld0));
      p.alpha = V(best[3]);
      p.beta = V(best[4]);
      R.laws.parametric.push_back(p);
      for (size_t i = 0; i < pts.size(); ++i) {
        double e;
        res[i](best.data(), &e);
        pts[i].resid_parametric = e;
      }
    } else {
      R.notes.push_back("Law 2 parametric (" + fam + "): L(M, D) fit did not converge");
    }
    R.iso.insert(R.iso.end(), pts.begin(), pts.end());
  }
}

// ------------------------------------------------------------ Law 3
void fit_law3(const std::vector<Run>& runs, const FitOptions& opt, const FitResult* warm,
              FitResult& R) {
  std::map<std::string, std::map<long long, double>> best;
  std::map<std::string, std::map<long long, double>> budgetC;
  std::map<std::string, std::set<long long>> sizes;
  for (auto& r : runs) {
    auto k = budget_key(r.C);
    auto& b = best[r.family];
    if (!b.count(k) || r.loss < b[k]) b[k] = r.loss;
    budgetC[r.family][k] = r.C;
    sizes[r.family].insert(key3(r.M));
  }
  // where an IsoFLOP parabola exists, its minimum is the budget's loss
  for (auto& f : R.isofits) best[f.family][budget_key(f.C)] = f.L_min;
  for (auto& [fam, b] : best) {
    if (b.size() < 3) {
      R.notes.push_back("Law 3 (" + fam + "): " + std::to_string(b.size()) +
                        " compute budget(s); loss vs compute needs 3 or more");
      continue;
    }
    if (sizes[fam].size() == 1) {
      R.notes.push_back("Law 3 (" + fam + "): a single model size at every budget; loss vs "
                        "compute needs model sizes that grow with the budget");
      continue;
    }
    std::vector<CurvePoint> pts;
    double lc0 = 0, lmin = INFINITY, lmax = 0;
    for (auto& [k, l] : b) {
      pts.push_back({fam, budgetC[fam][k], l});
      lc0 += std::log(budgetC[fam][k]);
      lmin = std::min(lmin, l), lmax = std::max(lmax, l);
    }
    lc0 /= pts.size();
    std::vector<Law3Res> res;
    for (auto& p : pts) res.push_back({std::log(p.C) - lc0, p.loss});
    std::array<double, 3> p{};
    double cost;
    const Law3* w = warm ? find_family(warm->laws.law3, fam) : nullptr;
    if (w && w->ok()) {
      p = {w->b.v, std::log(w->alpha.v) + w->beta.v * lc0, w->beta.v};
      cost = huber_fit<Law3Res, 3>(res, p, opt.huber_loss);
    } else {
      std::vector<std::array<double, 3>> starts;
      for (double bf : {0.0, 0.3, 0.6, 0.8, 0.9, 0.95})
        for (double be : {-0.03, -0.08, -0.15, -0.3, -0.6}) {
          double bb = bf * lmin;
          starts.push_back({bb, std::log(std::max(1e-6, 0.5 * (lmin + lmax) - bb)), be});
        }
      cost = multistart<Law3Res, 3>(res, starts, p, opt.huber_loss, 5);
    }
    if (!std::isfinite(cost) || !(p[2] < 0)) {
      R.notes.push_back("Law 3 (" + fam + "): L(C) = alpha C^beta + b did not converge to a "
                        "decreasing curve");
      continue;
    }
    Law3 l;
    l.family = fam;
    l.b = V(p[0]);
    l.beta = V(p[2]);
    l.alpha = V(std::exp(p[1] - p[2] * lc0));
    if (!std::isfinite(l.alpha.v) || !(l.alpha.v > 0)) {
      R.notes.push_back("Law 3 (" + fam + "): L(C) = alpha C^beta + b did not converge to a finite curve "
                        "(beta = " + fmt(p[2]) + ")");
      continue;
    }
    l.n = static_cast<int>(pts.size());
    std::vector<double> o, pr;
    for (auto& q : pts) {
      o.push_back(q.loss);
      pr.push_back(l(q.C));
      q.resid = q.loss - pr.back();
    }
    l.r2 = r2(o, pr);
    if (!(l.b.v > 0))
      R.flags.push_back({"law3", fam, "asymptote b = " + fmt(l.b.v) + " <= 0: unphysical (a loss cannot fall "
                                          "below 0); the budgets do not constrain the curve's floor"});
    else if (l.b.v >= lmin)
      R.flags.push_back({"law3", fam, "asymptote b = " + fmt(l.b.v) + " is not below the lowest observed loss " +
                                          fmt(lmin)});
    if (!(l.r2 >= opt.min_r2))
      R.flags.push_back({"law3", fam, "R^2 = " + fmt(l.r2) + " < " + fmt(opt.min_r2) + " over " +
                                          std::to_string(l.n) + " budgets"});
    R.laws.law3.push_back(l);
    R.curve.insert(R.curve.end(), pts.begin(), pts.end());
  }
}

// ------------------------------------------------------------ EL
// The reference budgets of the curve EL points (doc/fit.md, "EL"):
// --el-budgets, else the budgets of the runs, clustered as group_budgets
// clusters computes: budgets of different families within a factor
// (1 + t) / (1 - t) of each other are one reference budget (their geometric
// mean), so families whose budgets differ slightly meet at common budgets.
std::vector<double> el_reference_budgets(const std::vector<Run>& runs, const FitOptions& opt) {
  std::vector<double> g;
  if (!opt.el_budgets.empty()) {
    for (double c : opt.el_budgets)
      if (c > 0 && std::isfinite(c)) g.push_back(c);
    std::sort(g.begin(), g.end());
    g.erase(std::unique(g.begin(), g.end(), [](double a, double b) { return budget_key(a) == budget_key(b); }),
            g.end());
    return g;
  }
  std::vector<double> b;
  std::set<long long> seen;
  for (auto& r : runs)
    if (seen.insert(budget_key(r.C)).second) b.push_back(r.C);
  std::sort(b.begin(), b.end());
  const double t = std::clamp(opt.budget_tolerance, 0.0, 0.99), span = (1 + t) / (1 - t);
  for (size_t i = 0; i < b.size();) {
    size_t j = i;
    double sl = 0;
    while (j < b.size() && b[j] <= b[i] * span * (1 + 1e-12)) sl += std::log(b[j]), ++j;
    g.push_back(j - i == 1 ? b[i] : std::exp(sl / (j - i)));
    i = j;
  }
  return g;
}

void fit_el(const std::vector<Run>& runs, const FitOptions& opt, const FitResult* warm,
            FitResult& R) {
  const Law3* dense = find_family(R.laws.law3, std::string("dense"));
  bool any_moe = std::any_of(runs.begin(), runs.end(), [](const Run& r) { return r.is_moe; });
  if (!any_moe) {
    R.notes.push_back("EL: no MoE runs");
    return;
  }
  if (!dense) {
    R.notes.push_back("EL: no loss-vs-compute fit for the dense family, so no EL can be computed");
    return;
  }
  std::map<std::string, const Run*> famrun;
  for (auto& r : runs) if (r.is_moe) famrun[r.family] = &r;
  // Raw EL (kept for comparison, and used for families without a Law 3
  // fit): per MoE family and budget, the IsoFLOP minimum where the family has
  // one, else its best run.
  std::map<std::string, std::map<long long, std::pair<double, double>>> pts;  // C, loss
  for (auto& r : runs) {
    if (!r.is_moe) continue;
    auto& s = pts[r.family][budget_key(r.C)];
    if (s.first == 0 || r.loss < s.second) s = {r.C, r.loss};
  }
  for (auto& f : R.isofits)
    if (pts.count(f.family)) pts[f.family][budget_key(f.C)] = {f.C, f.L_min};
  std::map<std::string, int> unreachable_raw;
  for (auto& [fam, b] : pts) {
    const Run* r0 = famrun[fam];
    for (auto& [k, cl] : b) {
      double Cd = dense->inverse(cl.second);
      if (!std::isfinite(Cd)) {
        ++unreachable_raw[fam];
        continue;
      }
      ELPoint e{fam, r0->A, r0->G, cl.first, cl.second, Cd, Cd / cl.first};
      e.S = r0->S;
      e.train = e.EL < opt.el_threshold;
      R.el_raw.push_back(e);
    }
  }
  // EL from fitted curves (the paper's definition): for each MoE family with
  // a Law 3 fit, EL(C) = C_dense(L_moe(C)) / C at every reference budget C
  // inside the family's observed budgets (beyond them by at most the budget
  // tolerance; farther out is extrapolation and is refused).
  R.el_grid = el_reference_budgets(runs, opt);
  std::map<std::string, std::pair<double, double>> range;
  for (auto& c : R.curve) {
    auto it = range.find(c.family);
    if (it == range.end()) range[c.family] = {c.C, c.C};
    else it->second.first = std::min(it->second.first, c.C), it->second.second = std::max(it->second.second, c.C);
  }
  const double tol = std::clamp(opt.budget_tolerance, 0.0, 0.99);
  int unreachable = 0, outside = 0, famout = 0;
  std::vector<std::string> no_curve;
  for (auto& [fam, b] : pts) {
    const Run* r0 = famrun[fam];
    const Law3* l = find_family(R.laws.law3, fam);
    if (!l || !l->ok() || !range.count(fam)) {
      no_curve.push_back(fam);
      unreachable += unreachable_raw[fam];
      for (auto& e : R.el_raw) {
        if (e.family != fam) continue;
        // with --el-budgets, only the runs at those budgets (within the tolerance)
        bool at = opt.el_budgets.empty();
        for (double C : R.el_grid) at |= std::abs(std::log(e.C / C)) <= std::log1p(opt.budget_tolerance) + 1e-9;
        if (at) R.el.push_back(e);
      }
      continue;
    }
    const double lo = range[fam].first * (1 - tol) * (1 - 1e-9), hi = range[fam].second * (1 + tol) * (1 + 1e-9);
    int out_f = 0;
    for (double C : R.el_grid) {
      if (C < lo || C > hi) {
        ++out_f;
        continue;
      }
      const double L = (*l)(C), Cd = dense->inverse(L);
      if (!std::isfinite(Cd)) {
        ++unreachable;
        continue;
      }
      ELPoint e{fam, r0->A, r0->G, C, L, Cd, Cd / C};
      e.S = r0->S;
      e.from_curve = true;
      e.train = e.EL < opt.el_threshold;
      R.el.push_back(e);
    }
    outside += out_f, famout += out_f > 0;
  }
  if (outside)
    R.notes.push_back("EL: " + std::to_string(outside) + " (family, reference budget) pair(s) in " +
                      std::to_string(famout) + " famil" + (famout == 1 ? "y" : "ies") +
                      " lie outside the family's observed budgets (by more than the " + fmt(100 * tol) +
                      "% budget tolerance): not evaluated, Law 3 is not extrapolated");
  if (!no_curve.empty()) {
    std::string list;
    for (size_t i = 0; i < no_curve.size() && i < 3; ++i) list += (i ? ", " : "") + no_curve[i];
    if (no_curve.size() > 3) list += " and " + std::to_string(no_curve.size() - 3) + " more";
    R.notes.push_back("EL: " + std::to_string(no_curve.size()) + " MoE famil" + (no_curve.size() == 1 ? "y" : "ies") +
                      " without a Law 3 fit (" + list + ") use the EL of their runs at their own budgets");
  }
  if (unreachable)
    R.notes.push_back("EL: " + std::to_string(unreachable) +
                      " MoE point(s) have a loss below the dense family's asymptote b; left out");
  // C_dense outside the dense family's observed budgets: the dense Law 3 is
  // extrapolated there (inherent in EL > 1 at the largest budgets): marked
  if (range.count("dense")) {
    const double dlo = range["dense"].first * (1 - tol), dhi = range["dense"].second * (1 + tol);
    int nx = 0;
    for (auto* v : {&R.el, &R.el_raw})
      for (auto& e : *v) {
        e.dense_extrapolated = e.C_dense < dlo || e.C_dense > dhi;
        if (v == &R.el) nx += e.dense_extrapolated;
      }
    if (nx)
      R.notes.push_back("EL: " + std::to_string(nx) + " point(s) read the dense Law 3 outside its observed budgets (" +
                        fmt(range["dense"].first) + ".." + fmt(range["dense"].second) +
                        "): C_dense is extrapolated (marked \"dense extrap.\" in the EL table)");
  }
  // The EL laws (Eq. 13 and the separable laws) have no shared-ratio term, so
  // they are fitted at one S: the one with the most EL points (ties: the
  // smaller S). Points at other S (a shared-expert ablation) are reported
  // beside them, as the paper reports its S sweep, and would otherwise read
  // as scatter in A or G.
  {
    auto S_key = [](double S) { return std::llround(S * 1e4); };  // S may be 0: no log key
    std::map<long long, int> per_S;
    for (auto& e : R.el) ++per_S[S_key(e.S)];
    long long S_ref = 0;
    int most = -1;
    for (auto& [k, n] : per_S)
      if (n > most) most = n, S_ref = k;
    int other = 0;
    std::set<std::string> other_S;
    for (auto& e : R.el)
      if (S_key(e.S) != S_ref) e.other_S = true, e.train = false, ++other, other_S.insert(fmt(e.S));
    for (auto& e : R.el_raw)
      if (S_key(e.S) != S_ref) e.other_S = true, e.train = false;
    if (other) {
      std::string list;
      for (auto& v : other_S) list += (list.empty() ? "" : ", ") + v;
      R.notes.push_back("EL laws: fitted at the shared ratio S = " + fmt(S_ref * 1e-4) + " (most EL points); " +
                        std::to_string(other) + " point(s) at S = " + list +
                        " are listed with set \"other S\" and not fitted (the laws have no S term)");
    }
  }
  LawSet& L = R.laws;
  L.el_threshold = opt.el_threshold;
  L.el_fixed.clear(), L.el_fixed_why.clear();
  std::vector<const ELPoint*> tr;
  for (auto& e : R.el) if (e.train && e.EL > 0) tr.push_back(&e);
  std::set<long long> dA, dG, dC;
  for (auto* e : tr) dA.insert(key3(e->A)), dG.insert(key3(e->G)), dC.insert(budget_key(e->C));
  // The terms the data identify (doc/fit.md, "Laws from the variables
  // present"): gamma needs 3+ granularities, beta 2+, d 2+ budgets; a term
  // that is not identified is fixed at 0 and the others absorb it.
  const bool fix_gamma = dG.size() < 3, fix_beta = dG.size() < 2, fix_d = dC.size() < 2;
  const int nfree = 5 - fix_gamma - fix_beta - fix_d;
  if (tr.size() < static_cast<size_t>(nfree + 1) || dA.size() < 2) {
    R.notes.push_back("EL joint law: needs EL points (below the threshold) at 2+ activation ratios, more "
                      "points than free constants (" + std::to_string(nfree) + "); have " +
                      std::to_string(tr.size()) + " points, " + std::to_string(dA.size()) + " A, " +
                      std::to_string(dG.size()) + " G, " + std::to_string(dC.size()) + " C");
  } else {
    if (fix_gamma) {
      const std::string g1 = tr.empty() ? "" : fmt(tr[0]->G);
      L.el_fixed.push_back("gamma");
      L.el_fixed_why.push_back(fix_beta ? "one granularity (G = " + g1 + ") in the EL points: a holds the G terms at that G"
                                        : "two granularities in the EL points: a quadratic in log2 G needs 3+");
      if (fix_beta) {
        L.el_fixed.push_back("beta");
        L.el_fixed_why.push_back("one granularity (G = " + g1 + ") in the EL points: a holds the G terms at that G");
      }
    }
    if (fix_d) {
      L.el_fixed.push_back("d");
      L.el_fixed_why.push_back("one budget (C = " + fmt(tr[0]->C) +
                               ") in the EL points: a holds d log10 C at that budget");
    }
    std::vector<JointRes> res;
    for (auto* e : tr)
      res.push_back({e->A, std::log10(e->C), std::log2(e->G), std::log(e->EL), opt.A_max, fix_d, fix_gamma, fix_beta});
    std::array<double, 5> p{};
    double cost = INFINITY;
    if (warm && warm->laws.el.ok()) {
      auto& w = warm->laws.el;
      p = {w.a.v, w.d.v, w.gamma.v, w.beta.v, std::log(w.A_start.v)};
      cost = huber_fit<JointRes, 5>(res, p, opt.huber_el);
    } else {
      // For fixed A_start the law is linear in (a, d, gamma, beta): profile
      // A_start on a grid with least squares, then refine all with Huber+BFGS.
      std::vector<int> cols{0};
      if (!fix_d) cols.push_back(1);
      if (!fix_gamma) cols.push_back(2);
      if (!fix_beta) cols.push_back(3);
      double bestss = INFINITY;
      for (int i = 0; i <= 40; ++i) {
        double As = std::pow(10.0, -4 + 4.0 * i / 40);
        Eigen::MatrixXd X(tr.size(), cols.size());
        Eigen::VectorXd Y(tr.size());
        for (size_t j = 0; j < tr.size(); ++j) {
          double la = std::log(a_hat(tr[j]->A, As, opt.A_max));
          double lg = std::log2(tr[j]->G);
          const double all[4] = {la, la * std::log10(tr[j]->C), la * lg * lg, la * lg};
          for (size_t k = 0; k < cols.size(); ++k) X(j, k) = all[cols[k]];
          Y(j) = std::log(tr[j]->EL);
        }
        Eigen::VectorXd c = ols(X, Y);
        double ss = (X * c - Y).squaredNorm();
        if (ss < bestss) {
          bestss = ss;
          p = {0, 0, 0, 0, std::log(As)};
          for (size_t k = 0; k < cols.size(); ++k) p[cols[k]] = c(k);
        }
      }
      cost = huber_fit<JointRes, 5>(res, p, opt.huber_el);
    }
    if (fix_d) p[1] = 0;
    if (fix_gamma) p[2] = 0;
    if (fix_beta) p[3] = 0;
    if (std::isfinite(cost)) {
      L.el.a = V(p[0]), L.el.d = V(p[1]), L.el.gamma = V(p[2]), L.el.beta = V(p[3]);
      L.el.A_start = V(std::exp(p[4]));
      L.el.A_max = V(opt.A_max);
      std::vector<double> ot, pt, ov, pv;
      for (auto& e : R.el) {
        e.EL_pred = el_joint(L.el, e.A, e.G, e.C);
        if (e.other_S) continue;
        (e.train ? ot : ov).push_back(e.EL);
        (e.train ? pt : pv).push_back(e.EL_pred);
      }
      for (auto& e : R.el_raw) e.EL_pred = el_joint(L.el, e.A, e.G, e.C);
      L.n_train = ot.size(), L.n_val = ov.size();
      L.r2_train = r2(ot, pt), L.mape_train = mape(ot, pt);
      L.r2_val = r2(ov, pv), L.mape_val = mape(ov, pv);
    } else {
      L.el_fixed.clear(), L.el_fixed_why.clear();
      R.notes.push_back("EL joint law: fit did not converge");
    }
  }
  // Separable laws on one slice each (chosen once, reused by the bootstrap).
  if (!R.slices_set) {
    auto pick = [&](auto keyfn, auto varfn, long long& k1, long long& k2) {
      std::map<std::pair<long long, long long>, std::set<long long>> g;
      for (auto* e : tr) g[keyfn(e)].insert(varfn(e));
      size_t bestn = 0;
      for (auto& [k, s] : g)
        if (s.size() >= bestn) bestn = s.size(), k1 = k.first, k2 = k.second;  // ties: larger key
      return bestn;
    };
    pick([](const ELPoint* e) { return std::make_pair(key3(e->G), budget_key(e->C)); },
         [](const ELPoint* e) { return key3(e->A); }, R.slice_A_G, R.slice_A_C);
    pick([](const ELPoint* e) { return std::make_pair(key3(e->A), budget_key(e->C)); },
         [](const ELPoint* e) { return key3(e->G); }, R.slice_G_A, R.slice_G_C);
    pick([](const ELPoint* e) { return std::make_pair(key3(e->A), key3(e->G)); },
         [](const ELPoint* e) { return budget_key(e->C); }, R.slice_C_A, R.slice_C_G);
    R.slices_set = true;
  }
  // activation
  {
    std::vector<const ELPoint*> s;
    std::set<long long> d;
    for (auto* e : tr)
      if (key3(e->G) == R.slice_A_G && budget_key(e->C) == R.slice_A_C) s.push_back(e), d.insert(key3(e->A));
    if (d.size() >= 3) {
      std::vector<ActRes> res;
      for (auto* e : s) res.push_back({e->A, std::log(e->EL), opt.A_max});
      std::array<double, 2> p{};
      if (warm && warm->laws.el_A.ok()) {
        p = {warm->laws.el_A.a_A.v, std::log(warm->laws.el_A.A_start.v)};
      } else {
        double bestss = INFINITY;
        for (int i = 0; i <= 40; ++i) {
          double As = std::pow(10.0, -4 + 4.0 * i / 40);
          double sxy = 0, sxx = 0;
          for (auto* e : s) {
            double x = std::log(a_hat(e->A, As, opt.A_max));
            sxy += x * std::log(e->EL), sxx += x * x;
          }
          double a = sxy / sxx, ss = 0;
          for (auto* e : s) {
            double x = std::log(a_hat(e->A, As, opt.A_max));
            ss += (a * x - std::log(e->EL)) * (a * x - std::log(e->EL));
          }
          if (ss < bestss) bestss = ss, p = {a, std::log(As)};
        }
      }
      if (std::isfinite(huber_fit<ActRes, 2>(res, p, opt.huber_el))) {
        L.el_A.a_A = V(p[0]);
        L.el_A.A_start = V(std::exp(p[1]));
        L.el_A.A_max = opt.A_max;
        L.el_A.G = s[0]->G, L.el_A.C = s[0]->C;
      }
    } else if (!tr.empty()) {
      R.notes.push_back("EL activation law: no slice (fixed G, C) with 3+ activation ratios");
    }
  }
  // granularity
  {
    std::vector<double> x, y;
    const ELPoint* e0 = nullptr;
    std::set<long long> d;
    for (auto* e : tr)
      if (key3(e->A) == R.slice_G_A && budget_key(e->C) == R.slice_G_C)
        x.push_back(std::log2(e->G)), y.push_back(std::log(e->EL)), d.insert(key3(e->G)), e0 = e;
    if (d.size() >= 3) {
      Eigen::MatrixXd X(x.size(), 3);
      Eigen::VectorXd Y(x.size());
      for (size_t i = 0; i < x.size(); ++i) X(i, 0) = 1, X(i, 1) = x[i], X(i, 2) = x[i] * x[i], Y(i) = y[i];
      Eigen::VectorXd c = ols(X, Y);
      if (c(2) != 0) {
        L.el_G.a_G = V(c(0)), L.el_G.b_G = V(c(2)), L.el_G.c_G = V(c(1) / c(2));
        L.el_G.A = e0->A, L.el_G.C = e0->C;
      }
    } else if (!tr.empty()) {
      R.notes.push_back("EL granularity law: no slice (fixed A, C) with 3+ granularities");
    }
  }
  // compute
  {
    std::vector<double> x, y;
    const ELPoint* e0 = nullptr;
    std::set<long long> d;
    for (auto* e : tr)
      if (key3(e->A) == R.slice_C_A && key3(e->G) == R.slice_C_G)
        x.push_back(std::log10(e->C)), y.push_back(std::log(e->EL)), d.insert(budget_key(e->C)), e0 = e;
    if (d.size() >= 3) {
      auto c = linfit(x, y);
      L.el_C.a_C = V(c[1]), L.el_C.c_C = V(c[0]);
      L.el_C.A = e0->A, L.el_C.G = e0->G;
    } else if (!tr.empty()) {
      R.notes.push_back("EL compute law: no slice (fixed A, G) with 3+ budgets");
    }
  }
}

// ------------------------------------------------------------ Zhao et al.
struct ZhaoRes {  // ln L of Zhao et al.'s law; positive constants as logs, n as is
  double lN, lNa, lD, Gz, S, lL;
  bool fix_G, fix_S;         // not identified: held at the start values below
  double e0, f0, m0, n0;
  template <class T> bool operator()(const T* p, T* r) const {
    using std::exp;
    using std::log;
    T e = fix_G ? T(e0) : exp(p[0]), f = fix_G ? T(f0) : exp(p[1]);
    T m = fix_S ? T(m0) : exp(p[2]), n = fix_S ? T(n0) : p[3];
    T al = exp(p[7]);
    T na = exp(-al * lN), naa = exp(-al * lNa);
    T pre = e * Gz + f / Gz + m * S * S + n * S;
    T L = pre * (na + exp(p[4]) * naa + exp(p[5]) * exp(lNa - lN)) + exp(p[6]) * na +
          exp(p[8]) * exp(-exp(p[9]) * lD) + exp(p[10]) * naa + exp(p[11]);
    if (!(L > T(0))) return false;
    r[0] = log(L) - lL;
    return true;
  }
};

// Zhao et al.'s law on the MoE runs that carry N, N_a, D, G_z (active
// experts) and S: the best run per family, budget and size (the frontier, as
// the parametric fit), Huber on ln L, started from the published constants.
void fit_zhao(const std::vector<Run>& runs, const FitOptions& opt, const FitResult* warm, FitResult& R) {
  std::map<std::tuple<std::string, long long, long long>, const Run*> best;
  int moe = 0;
  for (auto& r : runs) {
    if (!r.is_moe) continue;
    ++moe;
    if (!(r.N > 0 && r.N_active > 0 && r.D > 0 && r.n_active_experts > 0)) continue;
    auto& b = best[{r.family, budget_key(r.C), key3(r.M)}];
    if (!b || r.loss < b->loss) b = &r;
  }
  if (moe == 0) return;
  if (best.empty()) {
    R.notes.push_back("Zhao law: no MoE run carries N_total, N_active, tokens and the number of active experts "
                      "(params_total, params_active, num_active_experts)");
    return;
  }
  std::set<long long> dG, dS;
  for (auto& [k, r] : best) dG.insert(key3(r->n_active_experts)), dS.insert(std::llround(r->S * 1e4));
  const bool fix_G = dG.size() < 2, fix_S = dS.size() < 3;
  const int nfree = 12 - 2 * fix_G - 2 * fix_S;
  if (static_cast<int>(best.size()) < 2 * nfree) {
    R.notes.push_back("Zhao law: " + std::to_string(best.size()) + " frontier MoE runs for " + std::to_string(nfree) +
                      " free constants; needs twice as many");
    return;
  }
  const ZhaoLaw pub = zhao_preset().zhao;
  const ZhaoLaw& w0 = warm && warm->laws.zhao.ok() ? warm->laws.zhao : pub;
  auto to_p = [](const ZhaoLaw& z) {
    return std::array<double, 12>{std::log(z.e.v), std::log(z.f.v), std::log(z.m.v), z.n.v,
                                  std::log(z.k.v), std::log(z.h.v), std::log(z.a.v), std::log(z.alpha.v),
                                  std::log(z.b.v), std::log(z.beta.v), std::log(z.c.v), std::log(z.eps.v)};
  };
  std::vector<ZhaoRes> res;
  for (auto& [k, r] : best)
    res.push_back({std::log(r->N), std::log(r->N_active), std::log(r->D), r->n_active_experts, r->S, std::log(r->loss),
                   fix_G, fix_S, pub.e.v, pub.f.v, pub.m.v, pub.n.v});
  std::array<double, 12> p = to_p(w0);
  double cost;
  if (warm && warm->laws.zhao.ok()) {
    cost = huber_fit<ZhaoRes, 12>(res, p, opt.huber_loss);
  } else {
    std::vector<std::array<double, 12>> starts;
    double lmin = INFINITY;
    for (auto& r : res) lmin = std::min(lmin, std::exp(r.lL));
    for (double se : {1.0, 0.5, 0.8})
      for (double sa : {1.0, 0.7, 1.4})
        for (double sb : {1.0, 0.7, 1.4}) {
          auto q = to_p(pub);
          q[11] = std::log(std::min(pub.eps.v, se * lmin));
          q[7] += std::log(sa), q[9] += std::log(sb);
          starts.push_back(q);
        }
    cost = multistart<ZhaoRes, 12>(res, starts, p, opt.huber_loss, 4);
  }
  if (!std::isfinite(cost)) {
    R.notes.push_back("Zhao law: the fit did not converge");
    return;
  }
  ZhaoLaw z;
  z.e = V(fix_G ? pub.e.v : std::exp(p[0])), z.f = V(fix_G ? pub.f.v : std::exp(p[1]));
  z.m = V(fix_S ? pub.m.v : std::exp(p[2])), z.n = V(fix_S ? pub.n.v : p[3]);
  z.k = V(std::exp(p[4])), z.h = V(std::exp(p[5])), z.a = V(std::exp(p[6])), z.alpha = V(std::exp(p[7]));
  z.b = V(std::exp(p[8])), z.beta = V(std::exp(p[9])), z.c = V(std::exp(p[10])), z.eps = V(std::exp(p[11]));
  LawSet& L = R.laws;
  L.zhao = z;
  L.zhao_fixed.clear();
  if (fix_G) L.zhao_fixed.push_back("e"), L.zhao_fixed.push_back("f");
  if (fix_S) L.zhao_fixed.push_back("m"), L.zhao_fixed.push_back("n");
  std::vector<double> o, pr, ol, pl;
  for (auto& [k, r] : best) {
    const double q = z(r->N, r->N_active, r->D, r->n_active_experts, r->S);
    o.push_back(std::log(r->loss)), pr.push_back(std::log(q)), ol.push_back(r->loss), pl.push_back(q);
  }
  L.zhao_n = static_cast<int>(best.size());
  L.zhao_r2 = r2(o, pr), L.zhao_mape = mape(ol, pl);
  if (fix_G || fix_S)
    R.notes.push_back(std::string("Zhao law: ") + (fix_G ? "one number of active experts: e, f held at the published values" : "") +
                      (fix_G && fix_S ? "; " : "") +
                      (fix_S ? "fewer than 3 shared ratios: m, n held at the published values" : ""));
}

void choose_main_laws(FitResult& R) {
  LawSet& L = R.laws;
  L.law1_dense = Law1{}, L.law1_moe = Law1{}, L.law2_dense = Law2{}, L.law2_moe = Law2{};
  for (auto& l : R.law1_all) {
    if (l.family == "dense") L.law1_dense = l;
    else if (!L.law1_moe.ok()) L.law1_moe = l;  // first MoE family with a sweep
  }
  size_t best = 0;
  for (auto& l : R.law1_all) {
    if (l.family == "dense") continue;
    size_t n = std::count_if(R.hp.begin(), R.hp.end(),
                             [&](const HPPoint& p) { return p.family == l.family; });
    if (n > best) best = n, L.law1_moe = l;
  }
  best = 0;
  for (auto& l : R.law2_all) {
    if (l.family == "dense") { L.law2_dense = l; continue; }
    size_t n = std::count_if(R.isofits.begin(), R.isofits.end(),
                             [&](const IsoFit& f) { return f.family == l.family; });
    if (n > best) best = n, L.law2_moe = l;
  }
}

}  // namespace

std::vector<std::string> ensure_grouped(std::vector<Run>& runs, double tol) {
  if (std::all_of(runs.begin(), runs.end(), [](const Run& r) { return r.grouped; })) return {};
  return group_budgets(runs, tol);
}

FitResult fit_all(const std::vector<Run>& runs_in, const FitOptions& opt, const FitResult* warm) {
  std::vector<Run> grouped;
  const std::vector<Run>* rp = &runs_in;
  std::vector<std::string> bnotes;
  if (!std::all_of(runs_in.begin(), runs_in.end(), [](const Run& r) { return r.grouped; })) {
    grouped = runs_in;
    bnotes = group_budgets(grouped, opt.budget_tolerance);
    rp = &grouped;
  }
  const std::vector<Run>& runs = *rp;
  FitResult R;
  R.budget_notes = std::move(bnotes);
  R.n_runs = static_cast<int>(runs.size());
  if (warm) {
    R.slices_set = warm->slices_set;
    R.slice_A_G = warm->slice_A_G, R.slice_A_C = warm->slice_A_C;
    R.slice_G_A = warm->slice_G_A, R.slice_G_C = warm->slice_G_C;
    R.slice_C_A = warm->slice_C_A, R.slice_C_G = warm->slice_C_G;
  }
  std::set<long long> budgets;
  for (auto& r : runs) budgets.insert(budget_key(r.C));
  if (budgets.size() < 2) {
    std::ostringstream m;
    m << "only one compute budget (C=" << fmt(runs.empty() ? NAN : runs[0].C)
      << ") among the usable runs: every law needs two or more budgets";
    R.notes.push_back(m.str());
    return R;
  }
  fit_law1(runs, opt, R);
  fit_law2(runs, opt, warm, R);
  fit_law3(runs, opt, warm, R);
  fit_el(runs, opt, warm, R);
  if (opt.fit_zhao) fit_zhao(runs, opt, warm, R);
  choose_main_laws(R);
  return R;
}

const char* law1_method_name(Law1Method m) {
  return m == Law1Method::vertex ? "vertex" : "near-optimal";
}

std::vector<std::pair<std::string, Value*>> constants(LawSet& L, std::vector<Law1>* l1,
                                                      std::vector<Law2>* l2, std::vector<Law1>* l1_alt) {
  std::vector<std::pair<std::string, Value*>> c;
  auto add1 = [&](const std::string& n, Law1& l) {
    if (!l.ok()) return;
    c.push_back({n + ".eta_k", &l.eta.k});
    c.push_back({n + ".eta_a", &l.eta.a});
    c.push_back({n + ".batch_k", &l.batch.k});
    c.push_back({n + ".batch_a", &l.batch.a});
  };
  auto add2 = [&](const std::string& n, Law2& l) {
    if (!l.ok()) return;
    c.push_back({n + ".M_k", &l.M_opt.k});
    c.push_back({n + ".M_a", &l.M_opt.a});
    c.push_back({n + ".D_k", &l.D_opt.k});
    c.push_back({n + ".D_a", &l.D_opt.a});
  };
  if (l1) for (auto& l : *l1) add1("law1[" + l.family + "]", l);
  if (l2) for (auto& l : *l2) add2("law2[" + l.family + "]", l);
  if (l1_alt) for (auto& l : *l1_alt) add1("law1_alt[" + l.family + "]", l);
  add1("law1.dense", L.law1_dense);
  add1("law1.moe", L.law1_moe);
  add2("law2.dense", L.law2_dense);
  add2("law2.moe", L.law2_moe);
  for (auto& p : L.parametric) {
    if (!p.ok()) continue;
    std::string n = "parametric[" + p.family + "]";
    c.push_back({n + ".E", &p.E});
    c.push_back({n + ".A", &p.A});
    c.push_back({n + ".B", &p.B});
    c.push_back({n + ".alpha", &p.alpha});
    c.push_back({n + ".beta", &p.beta});
  }
  for (auto& l : L.law3) {
    if (!l.ok()) continue;
    std::string n = "law3[" + l.family + "]";
    c.push_back({n + ".alpha", &l.alpha});
    c.push_back({n + ".beta", &l.beta});
    c.push_back({n + ".b", &l.b});
  }
  if (L.el.ok()) {  // terms fixed at 0 (not identified by the data) are not constants of the fit
    c.push_back({"el.joint.a", &L.el.a});
    if (!L.el_term_fixed("d")) c.push_back({"el.joint.d", &L.el.d});
    if (!L.el_term_fixed("gamma")) c.push_back({"el.joint.gamma", &L.el.gamma});
    if (!L.el_term_fixed("beta")) c.push_back({"el.joint.beta", &L.el.beta});
    c.push_back({"el.joint.A_start", &L.el.A_start});
  }
  if (L.el_A.ok()) {
    c.push_back({"el.activation.a_A", &L.el_A.a_A});
    c.push_back({"el.activation.A_start", &L.el_A.A_start});
  }
  if (L.el_G.ok()) {
    c.push_back({"el.granularity.a_G", &L.el_G.a_G});
    c.push_back({"el.granularity.b_G", &L.el_G.b_G});
    c.push_back({"el.granularity.c_G", &L.el_G.c_G});
  }
  if (L.el_C.ok()) {
    c.push_back({"el.compute.a_C", &L.el_C.a_C});
    c.push_back({"el.compute.c_C", &L.el_C.c_C});
  }
  return c;
}

void bootstrap(const std::vector<Run>& runs_in, const FitOptions& opt, FitResult& res) {
  if (opt.bootstrap <= 0) return;
  std::vector<Run> runs = runs_in;  // resample grouped runs: budgets stay those of the point fit
  ensure_grouped(runs, opt.budget_tolerance);
  std::map<std::string, std::vector<size_t>> fam;
  for (size_t i = 0; i < runs.size(); ++i) fam[runs[i].family].push_back(i);
  auto target = constants(res.laws, &res.law1_all, &res.law2_all, &res.law1_alt);
  std::unordered_map<std::string, std::vector<double>> samples;
  for (auto& [n, v] : target) samples[n].reserve(opt.bootstrap);
  std::mt19937_64 rng(opt.seed);
  FitOptions bopt = opt;
  bopt.fit_zhao = false;  // the competing law is compared by held-out error, without intervals
  std::vector<Run> rs;
  rs.reserve(runs.size());
  for (int b = 0; b < opt.bootstrap; ++b) {
    rs.clear();
    for (auto& [f, idx] : fam) {
      std::uniform_int_distribution<size_t> u(0, idx.size() - 1);
      for (size_t j = 0; j < idx.size(); ++j) rs.push_back(runs[idx[u(rng)]]);
    }
    FitResult r = fit_all(rs, bopt, &res);
    auto got = constants(r.laws, &r.law1_all, &r.law2_all, &r.law1_alt);
    if (got.empty()) {
      ++res.bootstrap_failed;
      continue;
    }
    ++res.bootstrap_done;
    // a resample whose EL points identify other terms of the joint law (a
    // family lost its Law 3 fit, say) fits another law: not a sample of it
    const bool same_el = r.laws.el_fixed == res.laws.el_fixed;
    for (auto& [n, v] : got) {
      if (!same_el && n.rfind("el.joint.", 0) == 0) continue;
      auto it = samples.find(n);
      if (it != samples.end() && std::isfinite(v->v)) it->second.push_back(v->v);
    }
  }
  for (auto& [n, v] : target) {
    auto& s = samples[n];
    res.boot_ok[n] = static_cast<int>(s.size());
    if (s.size() < 20) continue;  // too few successful resamples: no interval
    std::sort(s.begin(), s.end());
    auto q = [&](double p) {
      double x = p * (s.size() - 1);
      size_t i = static_cast<size_t>(x);
      double f = x - i;
      return i + 1 < s.size() ? s[i] * (1 - f) + s[i + 1] * f : s[i];
    };
    v->lo = q(0.025);
    v->hi = q(0.975);
  }
  // Main laws are copies of entries of law1_all / law2_all: keep them in step.
  choose_main_laws(res);
}

}  // namespace fulcrum::fit

namespace fulcrum::fit {

std::string law_title(const std::string& law) {
  if (law == "law1") return "Law 1";
  if (law == "law2") return "Law 2";
  if (law == "law3") return "Law 3";
  if (law == "el") return "EL joint law";
  return law;
}

namespace {

// The bootstrap and interval checks of the constants of one law.
void check_constants(const std::string& law, const std::string& fam, const std::string& prefix,
                     const std::vector<std::pair<std::string, const Value*>>& cs, const FitResult& R,
                     const FitOptions& opt, std::vector<std::string>& out) {
  if (opt.bootstrap <= 0) return;
  (void)fam;
  int worst = opt.bootstrap;
  for (auto& [n, v] : cs) {
    auto it = R.boot_ok.find(prefix + n);
    worst = std::min(worst, it == R.boot_ok.end() ? 0 : it->second);
  }
  const double fail = 1.0 - static_cast<double>(worst) / opt.bootstrap;
  if (fail > opt.max_bootstrap_failures)
    out.push_back(fmt(100 * fail) + "% of the " + std::to_string(opt.bootstrap) +
                  " bootstrap resamples could not fit it (more than " + fmt(100 * opt.max_bootstrap_failures) +
                  "%): it rests on too few points");
  for (auto& [n, v] : cs) {
    if (!std::isfinite(v->lo) || !std::isfinite(v->hi)) continue;
    // prefactors of power laws in C (their value at C = 1 FLOP, many decades
    // below the data) are extrapolations that move with the exponent: their
    // intervals say nothing about the law within the data
    if (n == "eta_k" || n == "batch_k" || n == "M_k" || (law == "law3" && n == "alpha")) continue;
    const double lo = v->lo, hi = v->hi;
    if (lo <= 0 && hi >= 0)
      out.push_back("the 95% interval of " + n + " [" + fmt(lo) + ", " + fmt(hi) + "] includes 0: its sign is not determined");
    else if (std::log10(std::max(std::abs(lo), std::abs(hi)) / std::min(std::abs(lo), std::abs(hi))) > opt.max_ci_decades)
      out.push_back("the 95% interval of " + n + " [" + fmt(lo) + ", " + fmt(hi) + "] spans more than " +
                    (opt.max_ci_decades == 1.0 ? std::string("a decade") : fmt(opt.max_ci_decades) + " decades"));
  }
}

}  // namespace

void diagnose(FitResult& R, const std::vector<Run>& runs, const FitOptions& opt) {
  R.verdicts.clear();
  std::set<std::string> fams;
  bool any_moe = false;
  for (auto& r : runs) fams.insert(r.family), any_moe |= r.is_moe;
  // notes that concern every law (e.g. a single budget)
  std::vector<std::string> global;
  for (auto& n : R.notes)
    if (n.rfind("Law ", 0) != 0 && n.rfind("EL", 0) != 0 && n.rfind("Zhao", 0) != 0) global.push_back(n);
  auto notes_of = [&](const std::string& prefix, const std::string& fam) {
    std::vector<std::string> v;
    const std::string a = prefix + " (" + fam + "): ", b = prefix + " (" + fam + ", ",
                      c = prefix + " parametric (" + fam + "): ";
    for (auto& n : R.notes) {
      if (n.rfind(a, 0) == 0) {
        v.push_back(n.substr(a.size()));
      } else if (n.rfind(b, 0) == 0) {
        std::string r = n.substr(b.size());
        auto k = r.find("): ");
        if (k != std::string::npos) r = r.substr(0, k) + ": " + r.substr(k + 3);
        v.push_back(r);
      } else if (n.rfind(c, 0) == 0) {
        v.push_back("parametric cross-check: " + n.substr(c.size()));
      }
    }
    return v;
  };
  auto flags_of = [&](const std::string& law, const std::string& fam) {
    std::vector<std::string> v;
    for (auto& f : R.flags) if (f.law == law && f.family == fam) v.push_back(f.message);
    return v;
  };
  // leave-largest-budget-out error: the number practitioners trust
  auto holdout_check = [&](const std::string& law, const std::string& fam, double limit, const char* what,
                           Verdict& v, std::vector<std::string>& fl) {
    const HoldOut* h = R.holdout_of(law, fam);
    if (!h) return;
    v.summary += (v.summary.empty() ? "" : "; ") + std::string("held-out error ") + fmt(100 * h->error) + "%";
    const double e = law == "el" || law == "el.compute" ? h->error : h->worst;
    if (e > limit)
      fl.push_back("refitted without the largest budget, it predicts the " + std::string(what) + " at C=" +
                   fmt(h->C) + " " + fmt(100 * e) + "% off (" + (h->n > 1 ? "mean of " + std::to_string(h->n) + " points, " : "") +
                   "more than " + fmt(100 * limit) + "%): it does not extrapolate; do not trust it beyond the budgets fitted");
  };
  auto finish = [&](Verdict& v, std::vector<std::string> flags, const std::vector<std::string>& not_fitted_why,
                    const std::string& dflt_why) {
    if (v.fitted) {
      v.reasons = std::move(flags);
      v.trusted = v.reasons.empty();
    } else {
      v.reasons = global;
      v.reasons.insert(v.reasons.end(), not_fitted_why.begin(), not_fitted_why.end());
      v.reasons.insert(v.reasons.end(), flags.begin(), flags.end());
      if (v.reasons.empty()) v.reasons.push_back(dflt_why);
    }
    R.verdicts.push_back(std::move(v));
  };
  for (auto& fam : fams) {
    {  // Law 1
      Verdict v{"law1", fam};
      const Law1* l = find_family(R.law1_all, fam);
      v.fitted = l && l->ok();
      auto fl = flags_of("law1", fam);
      if (v.fitted) {
        int nb = 0;
        for (auto& q : R.hp_opt) nb += q.family == fam;
        v.summary = "eta_opt = " + fmt(l->eta.k.v) + " C^" + fmt(l->eta.a.v) + ", B_opt = " + fmt(l->batch.k.v) +
                    " C^" + fmt(l->batch.a.v);
        check_constants("law1", fam, "law1[" + fam + "].",
                        {{"eta_k", &l->eta.k}, {"eta_a", &l->eta.a}, {"batch_k", &l->batch.k}, {"batch_a", &l->batch.a}},
                        R, opt, fl);
      }
      finish(v, fl, notes_of("Law 1", fam),
             "no hyper-parameter sweep: needs 2+ budgets, each with 3+ distinct (lr, batch) runs at one model size");
    }
    {  // Law 2
      Verdict v{"law2", fam};
      const Law2* l = find_family(R.law2_all, fam);
      v.fitted = l && l->ok();
      auto fl = flags_of("law2", fam);
      if (v.fitted) {
        int nb = 0;
        for (auto& f : R.isofits) nb += f.family == fam;
        v.summary = "M_opt = " + fmt(l->M_opt.k.v) + " C^" + fmt(l->M_opt.a.v) + " from " + std::to_string(nb) +
                    " IsoFLOP minima";
        check_constants("law2", fam, "law2[" + fam + "].", {{"M_k", &l->M_opt.k}, {"M_a", &l->M_opt.a}}, R, opt, fl);
        holdout_check("law2", fam, opt.max_holdout_M, "compute-optimal size M_opt", v, fl);
      }
      finish(v, fl, notes_of("Law 2", fam), "no budget with 3+ model sizes (an IsoFLOP ladder)");
    }
    {  // Law 3
      Verdict v{"law3", fam};
      const Law3* l = find_family(R.laws.law3, fam);
      v.fitted = l && l->ok();
      auto fl = flags_of("law3", fam);
      if (v.fitted) {
        v.summary = "L(C) = " + fmt(l->alpha.v) + " C^" + fmt(l->beta.v) + " + " + fmt(l->b.v) + ", R^2 " +
                    fmt(l->r2) + ", " + std::to_string(l->n) + " budgets";
        check_constants("law3", fam, "law3[" + fam + "].", {{"alpha", &l->alpha}, {"beta", &l->beta}, {"b", &l->b}},
                        R, opt, fl);
        holdout_check("law3", fam, opt.max_holdout_loss, "loss", v, fl);
      }
      finish(v, fl, notes_of("Law 3", fam), "needs 3+ budgets and more than one model size");
    }
  }
  // EL joint law (all MoE families against the dense Law 3)
  if (any_moe) {
    Verdict v{"el", ""};
    const LawSet& L = R.laws;
    v.fitted = L.el.ok();
    auto fl = flags_of("el", "");
    if (v.fitted) {
      v.summary = "a = " + fmt(L.el.a.v) + ", d = " + fmt(L.el.d.v) + ", gamma = " + fmt(L.el.gamma.v) +
                  ", beta = " + fmt(L.el.beta.v) + ", A_start = " + fmt(L.el.A_start.v) + "; train R^2 " +
                  fmt(L.r2_train) + ", n " + std::to_string(L.n_train);
      for (auto& f : L.el_fixed) v.summary += "; " + f + " fixed at 0";
      if (!(L.r2_train >= opt.min_r2))
        fl.push_back("train R^2 = " + fmt(L.r2_train) + " < " + fmt(opt.min_r2));
      std::vector<std::pair<std::string, const Value*>> cs{{"a", &L.el.a}};
      for (auto [n, x] : {std::pair<const char*, const Value*>{"d", &L.el.d}, {"gamma", &L.el.gamma}, {"beta", &L.el.beta}})
        if (!L.el_term_fixed(n)) cs.push_back({n, x});
      cs.push_back({"A_start", &L.el.A_start});
      check_constants("el", "", "el.joint.", cs, R, opt, fl);
      holdout_check("el", "", opt.max_holdout_el, "EL", v, fl);
    }
    if (!R.el.empty())  // the EL points themselves (joint law fitted or not)
      for (auto& w : R.verdicts)
        if (w.law == "law3" && w.family == "dense" && w.fitted && !w.trusted)
          fl.push_back("the " + std::to_string(R.el.size()) +
                       " EL point(s) use the dense family's Law 3, which is not trustworthy");
    std::vector<std::string> why;
    for (auto& n : R.notes)
      if (n.rfind("EL", 0) == 0) why.push_back(n);
    finish(v, fl, why, "not enough EL points");
  }
}

}  // namespace fulcrum::fit
