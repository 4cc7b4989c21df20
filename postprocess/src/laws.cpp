#include "laws.hpp"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <toml.hpp>

#include "runs.hpp"

namespace fulcrum::fit {

double Law3::inverse(double loss) const {
  double r = (loss - b.v) / alpha.v;
  if (!(r > 0)) return NAN;
  return std::pow(r, 1.0 / beta.v);
}

double a_hat(double A, double A_start, double A_max) {
  double k = 1.0 / (1.0 / A_start - 1.0 / A_max);
  return 1.0 / (1.0 / (A + k) + 1.0 / A_max);
}

double el_joint(const ELJoint& j, double A, double G, double C) {
  double lg = std::log2(G);
  double e = j.a.v + j.d.v * std::log10(C) + j.gamma.v * lg * lg + j.beta.v * lg;
  return std::pow(a_hat(A, j.A_start.v, j.A_max.v), e);
}

double el_optimal_G(const ELJoint& j) {
  // ln A_hat < 0 for A < A_max: EL is largest where gamma lg^2 + beta lg is
  // smallest, i.e. lg = -beta / (2 gamma) when gamma > 0.
  if (!(j.gamma.v > 0)) return NAN;
  return std::exp2(-j.beta.v / (2 * j.gamma.v));
}

LawSet paper_preset() {
  LawSet L;
  L.source = "preset:paper";
  auto V = [](double v) { Value x; x.v = v; return x; };
  L.law1_moe.family = "moe (paper: 64 experts, 4 active + 1 shared)";
  L.law1_moe.eta = {V(1.1576), V(-0.1529)};
  L.law1_moe.batch = {V(0.0694), V(0.3644)};
  L.law1_dense.family = "dense (paper: DeepSeek LLM)";
  L.law1_dense.eta = {V(0.3118), V(-0.1250)};
  L.law1_dense.batch = {V(0.2920), V(0.3271)};
  L.law2_dense.family = "dense (paper Table 1)";
  L.law2_dense.M_opt = {V(0.0655), V(0.5422)};
  L.law2_dense.D_opt = {V(15.2582), V(0.4578)};
  L.law2_moe.family = "moe (paper Table 1)";
  L.law2_moe.M_opt = {V(0.1915), V(0.5095)};
  L.law2_moe.D_opt = {V(5.2232), V(0.4905)};
  L.el.a = V(1.23);
  L.el.d = V(-7.61e-2);
  L.el.gamma = V(1.67e-2);
  L.el.beta = V(-1.17e-1);
  L.el.A_start = V(1.63e-2);
  L.el.A_max = V(5.28e16);
  return L;
}

LawSet zhao_preset() {
  LawSet L;
  L.source = "preset:zhao";
  auto V = [](double v) { Value x; x.v = v; return x; };
  ZhaoLaw& z = L.zhao;
  z.e = V(0.1577), z.f = V(7.2446), z.m = V(5.1395), z.n = V(-3.2363), z.k = V(0.0013), z.h = V(0.0450);
  z.a = V(38.051), z.alpha = V(0.2383), z.b = V(27129.05), z.beta = V(0.4694), z.c = V(31.096), z.eps = V(1.8182);
  return L;
}

// ---------------------------------------------------------------- TOML out
namespace {

std::string num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char b[64];
  std::snprintf(b, sizeof b, "%.10e", v);
  return b;
}

std::string quote(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

void put(std::ostream& o, const char* k, const Value& v) {
  o << k << " = " << num(v.v) << "\n";
  if (std::isfinite(v.lo) || std::isfinite(v.hi))
    o << k << "_ci95 = [" << num(v.lo) << ", " << num(v.hi) << "]\n";
}

void put_law1(std::ostream& o, const char* name, const Law1& l) {
  if (!l.ok()) return;
  o << "\n[law1." << name << "]\nfamily = " << quote(l.family) << "\n";
  put(o, "eta_k", l.eta.k);
  put(o, "eta_a", l.eta.a);
  put(o, "batch_k", l.batch.k);
  put(o, "batch_a", l.batch.a);
}

void put_law2(std::ostream& o, const char* name, const Law2& l) {
  if (!l.ok()) return;
  o << "\n[law2." << name << "]\nfamily = " << quote(l.family) << "\n";
  put(o, "M_k", l.M_opt.k);
  put(o, "M_a", l.M_opt.a);
  put(o, "D_k", l.D_opt.k);
  put(o, "D_a", l.D_opt.a);
}

// ---------------------------------------------------------------- TOML in
Value get(const toml::value& t, const std::string& k) {
  Value v;
  if (!t.is_table() || !t.contains(k)) return v;
  const auto& x = t.at(k);
  if (x.is_floating()) v.v = x.as_floating();
  else if (x.is_integer()) v.v = static_cast<double>(x.as_integer());
  std::string kc = k + "_ci95";
  if (t.contains(kc) && t.at(kc).is_array() && t.at(kc).size() == 2) {
    auto f = [](const toml::value& e) {
      return e.is_floating() ? e.as_floating() : e.is_integer() ? double(e.as_integer()) : NAN;
    };
    v.lo = f(t.at(kc).at(0));
    v.hi = f(t.at(kc).at(1));
  }
  return v;
}

const toml::value* sub(const toml::value& t, const std::string& a, const std::string& b = "") {
  if (!t.is_table() || !t.contains(a)) return nullptr;
  const toml::value* x = &t.at(a);
  if (b.empty()) return x;
  if (!x->is_table() || !x->contains(b)) return nullptr;
  return &x->at(b);
}

std::string gets(const toml::value& t, const std::string& k) {
  if (t.is_table() && t.contains(k) && t.at(k).is_string()) return t.at(k).as_string();
  return "";
}

}  // namespace

void write_laws_toml(const std::string& path, const LawSet& L) {
  std::ostringstream o;
  o << "# fulcrum-fit laws file (doc/fit.md)\n";
  o << "format = \"fulcrum-laws\"\nformat_version = 1\nsource = " << quote(L.source) << "\n";
  o << "\n[conventions]\nlog_C = \"log10\"\nlog_G = \"log2\"\nlog_EL = \"ln\"\n"
       "compute = \"training FLOPs C = M * D, M = non-embedding FLOPs per token\"\n"
       "A_hat = \"1/A_hat = 1/(A + (1/A_start - 1/A_max)^-1) + 1/A_max\"\n"
       "el_joint = \"EL = A_hat^(a + d*log10(C) + gamma*log2(G)^2 + beta*log2(G))\"\n";
  put_law1(o, "dense", L.law1_dense);
  put_law1(o, "moe", L.law1_moe);
  put_law2(o, "dense", L.law2_dense);
  put_law2(o, "moe", L.law2_moe);
  for (auto& p : L.parametric) {
    if (!p.ok()) continue;
    o << "\n[[parametric]]\nfamily = " << quote(p.family) << "\n";
    put(o, "E", p.E);
    put(o, "A", p.A);
    put(o, "B", p.B);
    put(o, "alpha", p.alpha);
    put(o, "beta", p.beta);
  }
  for (auto& l : L.law3) {
    if (!l.ok()) continue;
    o << "\n[[law3]]\nfamily = " << quote(l.family) << "\n";
    put(o, "alpha", l.alpha);
    put(o, "beta", l.beta);
    put(o, "b", l.b);
    o << "r2 = " << num(l.r2) << "\nn = " << l.n << "\n";
  }
  if (L.el.ok()) {
    o << "\n[el.joint]\n";
    put(o, "a", L.el.a);
    put(o, "d", L.el.d);
    put(o, "gamma", L.el.gamma);
    put(o, "beta", L.el.beta);
    put(o, "A_start", L.el.A_start);
    put(o, "A_max", L.el.A_max);
    o << "el_threshold = " << num(L.el_threshold) << "\n";
    o << "n_train = " << L.n_train << "\nn_val = " << L.n_val << "\n";
    o << "r2_train = " << num(L.r2_train) << "\nmape_train = " << num(L.mape_train) << "\n";
    o << "r2_val = " << num(L.r2_val) << "\nmape_val = " << num(L.mape_val) << "\n";
    // terms the data do not identify, fixed at 0, and why (doc/fit.md)
    o << "fixed = [";
    for (size_t i = 0; i < L.el_fixed.size(); ++i) o << (i ? ", " : "") << quote(L.el_fixed[i]);
    o << "]\nfixed_why = [";
    for (size_t i = 0; i < L.el_fixed_why.size(); ++i) o << (i ? ", " : "") << quote(L.el_fixed_why[i]);
    o << "]\n";
  }
  if (L.el_A.ok()) {
    o << "\n[el.activation]\n";
    put(o, "a_A", L.el_A.a_A);
    put(o, "A_start", L.el_A.A_start);
    o << "A_max = " << num(L.el_A.A_max) << "\nG = " << num(L.el_A.G) << "\nC = " << num(L.el_A.C)
      << "\n";
  }
  if (L.el_G.ok()) {
    o << "\n[el.granularity]\n";
    put(o, "a_G", L.el_G.a_G);
    put(o, "b_G", L.el_G.b_G);
    put(o, "c_G", L.el_G.c_G);
    o << "A = " << num(L.el_G.A) << "\nC = " << num(L.el_G.C) << "\n";
  }
  if (L.el_C.ok()) {
    o << "\n[el.compute]\n";
    put(o, "a_C", L.el_C.a_C);
    put(o, "c_C", L.el_C.c_C);
    o << "A = " << num(L.el_C.A) << "\nG = " << num(L.el_C.G) << "\n";
  }
  if (L.zhao.ok()) {
    const ZhaoLaw& z = L.zhao;
    o << "\n[zhao]\n# Zhao et al. 2025: L = (e G_z + f/G_z + m S^2 + n S)(1/N^alpha + k/N_a^alpha + h N_a/N)"
         " + a/N^alpha + b/D^beta + c/N_a^alpha + eps\n# N, N_a: total and active parameters, D: tokens, G_z: NUMBER"
         " OF ACTIVE EXPERTS (not the granularity G), S: shared ratio\n";
    put(o, "e", z.e), put(o, "f", z.f), put(o, "m", z.m), put(o, "n", z.n), put(o, "k", z.k), put(o, "h", z.h);
    put(o, "a", z.a), put(o, "alpha", z.alpha), put(o, "b", z.b), put(o, "beta", z.beta), put(o, "c", z.c);
    put(o, "eps", z.eps);
    o << "n_runs = " << L.zhao_n << "\nr2_lnL = " << num(L.zhao_r2) << "\nmape = " << num(L.zhao_mape) << "\nfixed = [";
    for (size_t i = 0; i < L.zhao_fixed.size(); ++i) o << (i ? ", " : "") << quote(L.zhao_fixed[i]);
    o << "]\n";
  }
  std::ofstream f(path);
  if (!f) throw FitError("cannot write " + path, 1);
  f << o.str();
}

LawSet read_laws_toml(const std::string& path) {
  toml::value t;
  try {
    t = toml::parse(path);
  } catch (const std::exception& e) {
    throw FitError("cannot read laws file " + path + ": " + e.what(), 1);
  }
  if (gets(t, "format") != "fulcrum-laws")
    throw FitError(path + ": not a fulcrum laws file (format != \"fulcrum-laws\")", 1);
  Value ver = get(t, "format_version");
  if (ver.v != 1)
    throw FitError(path + ": unsupported laws format_version (this build reads 1)", 1);
  LawSet L;
  L.source = gets(t, "source");
  auto law1 = [&](const char* n, Law1& l) {
    if (auto* x = sub(t, "law1", n)) {
      l.family = gets(*x, "family");
      l.eta = {get(*x, "eta_k"), get(*x, "eta_a")};
      l.batch = {get(*x, "batch_k"), get(*x, "batch_a")};
    }
  };
  auto law2 = [&](const char* n, Law2& l) {
    if (auto* x = sub(t, "law2", n)) {
      l.family = gets(*x, "family");
      l.M_opt = {get(*x, "M_k"), get(*x, "M_a")};
      l.D_opt = {get(*x, "D_k"), get(*x, "D_a")};
    }
  };
  law1("dense", L.law1_dense);
  law1("moe", L.law1_moe);
  law2("dense", L.law2_dense);
  law2("moe", L.law2_moe);
  if (auto* x = sub(t, "parametric"); x && x->is_array()) {
    for (auto& e : x->as_array()) {
      Parametric p;
      p.family = gets(e, "family");
      p.E = get(e, "E"), p.A = get(e, "A"), p.B = get(e, "B");
      p.alpha = get(e, "alpha"), p.beta = get(e, "beta");
      L.parametric.push_back(p);
    }
  }
  if (auto* x = sub(t, "law3"); x && x->is_array()) {
    for (auto& e : x->as_array()) {
      Law3 l;
      l.family = gets(e, "family");
      l.alpha = get(e, "alpha"), l.beta = get(e, "beta"), l.b = get(e, "b");
      l.r2 = get(e, "r2").v;
      L.law3.push_back(l);
    }
  }
  if (auto* x = sub(t, "el", "joint")) {
    L.el.a = get(*x, "a"), L.el.d = get(*x, "d"), L.el.gamma = get(*x, "gamma");
    L.el.beta = get(*x, "beta"), L.el.A_start = get(*x, "A_start"), L.el.A_max = get(*x, "A_max");
    if (!L.el.A_max.ok()) L.el.A_max.v = 5.28e16;
    L.el_threshold = get(*x, "el_threshold").v;
    L.r2_train = get(*x, "r2_train").v, L.mape_train = get(*x, "mape_train").v;
    L.r2_val = get(*x, "r2_val").v, L.mape_val = get(*x, "mape_val").v;
    for (const char* k : {"fixed", "fixed_why"})
      if (x->contains(k) && x->at(k).is_array())
        for (auto& e : x->at(k).as_array())
          if (e.is_string()) (k[5] ? L.el_fixed_why : L.el_fixed).push_back(e.as_string());
  }
  if (auto* x = sub(t, "zhao")) {
    ZhaoLaw& z = L.zhao;
    z.e = get(*x, "e"), z.f = get(*x, "f"), z.m = get(*x, "m"), z.n = get(*x, "n"), z.k = get(*x, "k");
    z.h = get(*x, "h"), z.a = get(*x, "a"), z.alpha = get(*x, "alpha"), z.b = get(*x, "b");
    z.beta = get(*x, "beta"), z.c = get(*x, "c"), z.eps = get(*x, "eps");
    L.zhao_r2 = get(*x, "r2_lnL").v, L.zhao_mape = get(*x, "mape").v;
  }
  if (auto* x = sub(t, "el", "activation")) {
    L.el_A.a_A = get(*x, "a_A"), L.el_A.A_start = get(*x, "A_start");
    L.el_A.A_max = get(*x, "A_max").v, L.el_A.G = get(*x, "G").v, L.el_A.C = get(*x, "C").v;
  }
  if (auto* x = sub(t, "el", "granularity")) {
    L.el_G.a_G = get(*x, "a_G"), L.el_G.b_G = get(*x, "b_G"), L.el_G.c_G = get(*x, "c_G");
    L.el_G.A = get(*x, "A").v, L.el_G.C = get(*x, "C").v;
  }
  if (auto* x = sub(t, "el", "compute")) {
    L.el_C.a_C = get(*x, "a_C"), L.el_C.c_C = get(*x, "c_C");
    L.el_C.A = get(*x, "A").v, L.el_C.G = get(*x, "G").v;
  }
  return L;
}

Advice advise(const LawSet& L, double C, double A_lo, double A_hi, double G_lo, double G_hi) {
  if (!L.el.ok()) throw FitError("the laws have no joint EL law (el.joint)", 3);
  if (!(C > 0) || !(A_lo > 0) || !(A_hi >= A_lo) || A_hi > 1 || !(G_lo > 0) || !(G_hi >= G_lo))
    throw FitError("advise: need C > 0, 0 < A_lo <= A_hi <= 1, 0 < G_lo <= G_hi", 1);
  Advice best;
  best.C = C;
  const int n = 60;
  auto lerp = [](double lo, double hi, int i, int n) {
    return n == 0 || lo == hi ? lo : std::exp(std::log(lo) + (std::log(hi) - std::log(lo)) * i / n);
  };
  int bi = 0, bj = 0;
  for (int i = 0; i <= n; ++i)
    for (int j = 0; j <= n; ++j) {
      double A = lerp(A_lo, A_hi, i, n), G = lerp(G_lo, G_hi, j, n);
      double e = el_joint(L.el, A, G, C);
      if (std::isfinite(e) && !(e <= best.EL)) best.EL = e, best.A = A, best.G = G, bi = i, bj = j;
    }
  if (!std::isfinite(best.EL)) throw FitError("advise: EL is not finite anywhere in the range", 3);
  // Coordinate-wise golden-section refinement inside the neighbouring cells.
  auto golden = [&](double lo, double hi, auto f) {
    const double r = 0.6180339887498949;
    double a = std::log(lo), b = std::log(hi);
    for (int it = 0; it < 60; ++it) {
      double x1 = b - r * (b - a), x2 = a + r * (b - a);
      if (f(std::exp(x1)) > f(std::exp(x2))) b = x2; else a = x1;
    }
    return std::exp(0.5 * (a + b));
  };
  for (int rep = 0; rep < 3; ++rep) {
    double alo = lerp(A_lo, A_hi, std::max(bi - 1, 0), n), ahi = lerp(A_lo, A_hi, std::min(bi + 1, n), n);
    double glo = lerp(G_lo, G_hi, std::max(bj - 1, 0), n), ghi = lerp(G_lo, G_hi, std::min(bj + 1, n), n);
    double A = golden(alo, ahi, [&](double a) { return el_joint(L.el, a, best.G, C); });
    double G = golden(glo, ghi, [&](double g) { return el_joint(L.el, A, g, C); });
    double e = el_joint(L.el, A, G, C);
    if (e > best.EL) best.EL = e, best.A = A, best.G = G;
  }
  // Endpoints exactly (the optimum in A is usually the lower bound).
  for (double A : {A_lo, A_hi})
    for (double G : {best.G, G_lo, G_hi}) {
      double e = el_joint(L.el, A, G, C);
      if (e > best.EL) best.EL = e, best.A = A, best.G = G;
    }
  const Law2& l2 = L.law2_moe.ok() ? L.law2_moe : L.law2_dense;
  if (l2.ok()) {
    best.M_opt = l2.M_opt(C);
    best.D_opt = C / best.M_opt;
  }
  const Law1& l1 = L.law1_moe.ok() ? L.law1_moe : L.law1_dense;
  if (l1.ok()) {
    best.eta = l1.eta(C);
    best.batch = l1.batch(C);
  }
  return best;
}

}  // namespace fulcrum::fit
