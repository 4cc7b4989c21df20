// sweep_plan.cpp: sweep deck parsing and expansion (doc/sweeps.md).
#include "sweep/sweep_plan.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>
#include <toml.hpp>

#include "deck/deck_reader.hpp"
#include "deck/deck_schema.hpp"
#include "deck/toml_input.hpp"
#include "model/model_shape.hpp"
#include "sweep/sweep_manifest.hpp"

namespace fs = std::filesystem;

namespace fulcrum::sweep {

using fulcrum::DeckError;
using fulcrum::DeckLayer;
using fulcrum::DeckSetting;
using fulcrum::LoadedDeck;

double PowerLaw::operator()(double C) const { return k * std::pow(C, a); }

namespace {

// ------------------------------------------------------------------ helpers
std::string fmt_g(double x, int prec = 6) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", prec, x);
  return b;
}

// Compact number for run ids: 1e+12 -> 1e12, 0.001 -> 0.001, 64 -> 64.
std::string id_num(double x) {
  std::string s = fmt_g(x, 6);
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') continue;
    out += s[i];
    if ((s[i] == 'e') && i + 1 < s.size()) {
      size_t j = i + 1;
      if (s[j] == '-') { out += '-'; ++j; }
      if (j < s.size() && s[j] == '+') ++j;
      while (j + 1 < s.size() && s[j] == '0') ++j;
      i = j - 1;
    }
  }
  return out;
}


std::string id_value(const toml::value& v) {
  if (v.is_integer()) return std::to_string(v.as_integer());
  if (v.is_floating()) return id_num(v.as_floating());
  if (v.is_boolean()) return v.as_boolean() ? "true" : "false";
  if (v.is_string()) {
    std::string s;
    for (char c : v.as_string().str) s += (std::isalnum((unsigned char)c) || c == '.' || c == '-') ? c : '-';
    return s;
  }
  if (v.is_table()) {  // e.g. data.weights: its groups and weights, by group name
    std::vector<std::string> keys;
    for (const auto& kv : v.as_table()) keys.push_back(kv.first);
    std::sort(keys.begin(), keys.end());
    std::string s;
    for (const auto& k : keys) s += (s.empty() ? "" : "-") + id_value(toml::value(k)) + id_value(v.at(k));
    return s.empty() ? "empty" : s;
  }
  return "x";
}

// A number of a laws table (a laws file or [sweep.laws]), its errors located
// in the file the value was read from.
double as_number(const toml::value& v, const std::string& what) {
  if (v.is_integer()) return static_cast<double>(v.as_integer());
  if (v.is_floating()) return v.as_floating();
  throw SweepError(fulcrum::format_message(v.location().file_name(), line_of(v), "",
                                           what + ": wrong type: expected a number, got " + toml_type_with_text(v)));
}

// Flattens nested tables into dotted keys ("train" = {lr = [..]} -> "train.lr"),
// in key order, pointing into the parsed deck (whose values keep their lines).
void flatten(const toml::value& t, const std::string& prefix,
             std::vector<std::pair<std::string, const toml::value*>>& out) {
  std::vector<std::string> keys;
  for (const auto& kv : t.as_table()) keys.push_back(kv.first);
  std::sort(keys.begin(), keys.end());
  for (const auto& k : keys) {
    const toml::value& v = t.at(k);
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    if (v.is_table()) flatten(v, key, out);
    else out.emplace_back(key, &v);
  }
}

// ------------------------------------------------------------------ laws
PowerLaw law_from(const toml::value& t, const std::string& k, const std::string& a) {
  PowerLaw p;
  if (!t.is_table() || !t.contains(k) || !t.contains(a)) return p;
  p.k = as_number(t.at(k), k);
  p.a = as_number(t.at(a), a);
  return p;
}

Laws laws_from_table(const toml::value& root, const std::string& source) {
  Laws L;
  L.source = source;
  for (const char* fam : {"moe", "dense"}) {
    FamilyLaws f;
    if (root.contains("law1") && root.at("law1").is_table() && root.at("law1").contains(fam)) {
      const auto& t = root.at("law1").at(fam);
      f.eta = law_from(t, "eta_k", "eta_a");
      f.batch = law_from(t, "batch_k", "batch_a");
    }
    if (root.contains("law2") && root.at("law2").is_table() && root.at("law2").contains(fam))
      f.M_opt = law_from(root.at("law2").at(fam), "M_k", "M_a");
    if (f.eta.ok() || f.batch.ok() || f.M_opt.ok()) L.family[fam] = f;
  }
  return L;
}

// ------------------------------------------------------------------ sweep spec
// A sweep deck is read by the deck machinery (src/deck): parsed with the
// input decks' limits and located syntax errors, its deck sections read as a
// layer over the base deck, grid values applied as settings located where they
// were written; every error names file, line and key.

struct GridAxis {
  std::string key;                  // dotted deck key
  std::vector<toml::value> values;  // final values (log2_grid already raised)
  std::vector<int> lines;           // where each value was written
  std::string label;                // id prefix
  std::vector<std::string> labels;  // id value per entry
};

struct Spec {
  std::string path;
  std::string name;
  std::string dir;
  std::vector<DeckLayer> layers;    // the base deck, then the sweep deck's own sections
  int ranks = 0;
  // IsoFLOP
  std::vector<double> budgets;
  std::vector<int> ladder_d, ladder_L;
  bool allocate_with_laws = false;
  double tolerance = 0.01;
  // ablations
  std::vector<int> act_E;           // activation: E values
  std::vector<double> gran_G;       // granularity: G values
  std::vector<int> shared_Es;       // shared: E_s values
  std::vector<GridAxis> grid;       // ordered by key
  std::set<std::string> grid_keys;
  double token_multiplier = 0;
  std::optional<Laws> laws;
  // Lines of the [sweep] keys that planned values come from (0: none).
  int line_name = 0, line_dir = 0, line_budgets = 0, line_ladder = 0, line_act = 0, line_gran = 0,
      line_shared = 0, line_laws = 0, line_multiplier = 0;
};

[[noreturn]] void bad(const std::string& file, int line, const std::string& key, const std::string& msg) {
  throw SweepError(fulcrum::format_message(file, line, key, msg));
}
// An error about value `at` of the sweep deck, keyed "sweep.<key>".
[[noreturn]] void bad(const Spec& s, const toml::value& at, const std::string& key, const std::string& msg) {
  bad(s.path, line_of(at), key, msg);
}

const std::vector<std::string> kSweepKeys = {
    "name", "base", "dir", "ranks", "laws", "token_multiplier", "grid", "log2_grid",
    "isoflop", "activation", "granularity", "shared", "budget_tolerance"};

void known_keys(const Spec& s, const toml::value& t, const std::vector<std::string>& allowed,
                const std::string& prefix) {
  for (const auto& [k, v] : t.as_table())
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
      bad(s, v, prefix + k, fulcrum::unknown_name_message("key", k, allowed));
}

double number(const Spec& s, const toml::value& v, const std::string& key) {
  if (v.is_floating()) return v.as_floating();
  std::int64_t i = 0;
  if (!v.is_integer()) bad(s, v, key, "wrong type: expected a number, got " + toml_type_with_text(v));
  if (!exact_integer(v, &i)) bad(s, v, key, "integer " + written_text(v) + " does not fit in 64 bits");
  return static_cast<double>(i);
}

template <class T>
std::vector<T> number_list(const Spec& s, const toml::value& t, const std::string& key, const std::string& dotted,
                           bool integers, int* line) {
  std::vector<T> out;
  if (!t.contains(key)) return out;
  const auto& v = t.at(key);
  *line = line_of(v);
  if (!v.is_array()) bad(s, v, dotted, "wrong type: expected an array of numbers, got " + toml_type_with_text(v));
  for (const auto& e : v.as_array()) {
    if (integers && !e.is_integer())
      bad(s, e, dotted, "wrong type: expected integers, got " + toml_type_with_text(e));
    const double x = number(s, e, dotted);
    if (integers && (x < 1 || x > (1 << 30))) bad(s, e, dotted, "out of range: " + written_text(e) + "; must be in [1, 2^30]");
    out.push_back(static_cast<T>(x));
  }
  if (out.empty()) bad(s, v, dotted, "empty list");
  return out;
}

Spec parse_spec(const std::string& text, const std::string& path, const PlanOptions& opt) {
  Spec s;
  s.path = path;
  toml::value root;
  try {
    root = parse_toml_deck(text, path);
  } catch (const DeckError& e) {
    throw SweepError(e.what());
  }
  if (!root.contains("sweep")) bad(path, 0, "sweep", "missing section: a sweep deck needs a [sweep] section (doc/sweeps.md)");
  const auto& sw = root.at("sweep");
  if (!sw.is_table()) bad(s, sw, "sweep", "expected a section (table), got " + toml_type_with_text(sw));
  known_keys(s, sw, kSweepKeys, "sweep.");
  auto get_str = [&](const char* k, const std::string& dflt, int* line) {
    if (!sw.contains(k)) return dflt;
    const auto& v = sw.at(k);
    *line = line_of(v);
    if (!v.is_string()) bad(s, v, std::string("sweep.") + k, "wrong type: expected a string, got " + toml_type_with_text(v));
    return std::string(v.as_string());
  };
  s.name = get_str("name", fs::path(path).stem().string(), &s.line_name);
  if (s.name.empty()) bad(path, s.line_name, "sweep.name", "must not be empty");
  for (char c : s.name)
    if (!(std::isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.'))
      bad(path, s.line_name, "sweep.name", "'" + fulcrum::excerpt(s.name) + "' may contain only letters, digits, '-', '_', '.'");
  s.dir = opt.dir.empty() ? get_str("dir", "runs/sweeps/" + s.name, &s.line_dir) : opt.dir;
  if (sw.contains("ranks")) {
    const auto& v = sw.at("ranks");
    std::int64_t r = 0;
    if (!v.is_integer()) bad(s, v, "sweep.ranks", "wrong type: expected an integer, got " + toml_type_with_text(v));
    if (!exact_integer(v, &r) || r < 1 || r > (1 << 20)) bad(s, v, "sweep.ranks", "out of range: " + written_text(v) + "; must be in [1, 1048576]");
    s.ranks = static_cast<int>(r);
  }
  if (sw.contains("budget_tolerance")) {
    s.tolerance = number(s, sw.at("budget_tolerance"), "sweep.budget_tolerance");
    if (!(s.tolerance > 0 && s.tolerance < 1))
      bad(s, sw.at("budget_tolerance"), "sweep.budget_tolerance", "out of range: " + written_text(sw.at("budget_tolerance")) + "; must be in (0, 1)");
  }
  if (sw.contains("token_multiplier")) {
    const auto& v = sw.at("token_multiplier");
    s.line_multiplier = line_of(v);
    s.token_multiplier = number(s, v, "sweep.token_multiplier");
    if (!(s.token_multiplier > 0 && std::isfinite(s.token_multiplier)))
      bad(s, v, "sweep.token_multiplier", "out of range: " + written_text(v) + "; must be > 0");
  }

  // ---- the deck: the base file, then the sweep deck's own sections on top
  int line_base = 0;
  const std::string base = get_str("base", "", &line_base);
  if (!base.empty()) {
    std::ifstream in(base, std::ios::binary);
    if (!in) bad(path, line_base, "sweep.base", "cannot read base deck '" + fulcrum::excerpt(base) + "'");
    std::stringstream ss;
    ss << in.rdbuf();
    try {
      s.layers.push_back(DeckLayer{parse_toml_deck(ss.str(), base), base, {}});
    } catch (const DeckError& e) {
      throw SweepError(e.what());  // located in the base deck
    }
  }
  s.layers.push_back(DeckLayer{root, path, {"sweep"}});

  // ---- laws
  if (sw.contains("laws")) {
    const auto& l = sw.at("laws");
    s.line_laws = line_of(l);
    if (l.is_string()) {
      try {
        s.laws = read_laws_file(l.as_string());
      } catch (const SweepError& e) {
        bad(s, l, "sweep.laws", e.what());
      }
    } else if (l.is_table()) {
      s.laws = laws_from_table(l, "inline");
    } else {
      bad(s, l, "sweep.laws", "wrong type: expected a path (string) or a table, got " + toml_type_with_text(l));
    }
  }

  auto table_of = [&](const char* k) -> const toml::value* {
    if (!sw.contains(k)) return nullptr;
    const auto& v = sw.at(k);
    if (!v.is_table()) bad(s, v, std::string("sweep.") + k, "wrong type: expected a table, got " + toml_type_with_text(v));
    return &v;
  };
  // ---- IsoFLOP
  if (const toml::value* t = table_of("isoflop")) {
    known_keys(s, *t, {"compute", "d_model", "n_layers", "allocation"}, "sweep.isoflop.");
    s.budgets = number_list<double>(s, *t, "compute", "sweep.isoflop.compute", false, &s.line_budgets);
    if (s.budgets.empty()) bad(s, *t, "sweep.isoflop.compute", "missing required key (list of budgets in FLOPs)");
    for (const auto& c : t->at("compute").as_array())
      if (!(number(s, c, "sweep.isoflop.compute") > 0 && number(s, c, "sweep.isoflop.compute") <= 1e30))
        bad(s, c, "sweep.isoflop.compute", "out of range: " + written_text(c) + "; budgets must be in (0, 1e30]");
    s.ladder_d = number_list<int>(s, *t, "d_model", "sweep.isoflop.d_model", true, &s.line_ladder);
    int line_layers = 0;
    s.ladder_L = number_list<int>(s, *t, "n_layers", "sweep.isoflop.n_layers", true, &line_layers);
    if (!s.ladder_L.empty() && s.ladder_L.size() != s.ladder_d.size())
      bad(path, line_layers, "sweep.isoflop.n_layers", "must have as many entries as d_model (" + std::to_string(s.ladder_d.size()) + ")");
    if (t->contains("allocation")) {
      const auto& a = t->at("allocation");
      if (!a.is_string() || a.as_string() != "laws") bad(s, a, "sweep.isoflop.allocation", "invalid value; the only value is \"laws\"");
      if (!s.ladder_d.empty()) bad(s, a, "sweep.isoflop.allocation", "allocation = \"laws\" and a d_model ladder exclude each other");
      if (!s.laws) bad(s, a, "sweep.isoflop.allocation", "allocation = \"laws\" needs [sweep] laws");
      s.allocate_with_laws = true;
      s.line_ladder = line_of(a);
    }
    if (s.token_multiplier > 0)
      bad(path, s.line_multiplier, "sweep.token_multiplier", "token_multiplier and [sweep.isoflop] exclude each other (tokens = C / M)");
  }
  if (s.token_multiplier > 0 && !s.laws)
    bad(path, s.line_multiplier, "sweep.token_multiplier", "token_multiplier needs [sweep] laws (the M_opt law)");

  // ---- ablations
  const std::vector<std::tuple<const char*, const char*, int*>> ablations = {
      {"activation", "num_experts", &s.line_act},
      {"granularity", "granularity", &s.line_gran},
      {"shared", "num_shared_experts", &s.line_shared}};
  for (const auto& [table, key, line] : ablations) {
    const toml::value* t = table_of(table);
    if (!t) continue;
    const std::string dotted = std::string("sweep.") + table + "." + key;
    known_keys(s, *t, {key}, std::string("sweep.") + table + ".");
    if (!t->contains(key)) bad(s, *t, dotted, "missing required key (a list of values)");
    if (std::string(table) == "activation") s.act_E = number_list<int>(s, *t, key, dotted, true, line);
    if (std::string(table) == "granularity") s.gran_G = number_list<double>(s, *t, key, dotted, false, line);
    if (std::string(table) == "shared") {
      // E_s = 0 is a value of the shared ablation
      const auto& v = t->at(key);
      *line = line_of(v);
      if (!v.is_array() || v.as_array().empty()) bad(s, v, dotted, "expected a non-empty array of integers");
      for (const auto& e : v.as_array()) {
        std::int64_t x = -1;
        if (!e.is_integer() || !exact_integer(e, &x) || x < 0 || x > (1 << 16))
          bad(s, e, dotted, "expected integers in [0, 65536], got " + toml_type_with_text(e));
        s.shared_Es.push_back(static_cast<int>(x));
      }
    }
  }

  // ---- grids: deck keys (checked against the deck schema here, so a
  // misspelt key is reported where it was written) -> list of values
  std::map<std::string, GridAxis> grid;
  for (const char* gname : {"grid", "log2_grid"}) {
    const toml::value* t = table_of(gname);
    if (!t) continue;
    const bool log2 = std::string(gname) == "log2_grid";
    std::vector<std::pair<std::string, const toml::value*>> flat;
    flatten(*t, "", flat);
    for (const auto& [key, v] : flat) {
      const std::string where = std::string("sweep.") + gname + "." + key;
      const auto dot = key.find('.');
      if (dot == std::string::npos) bad(s, *v, where, "keys are section.key (e.g. train.lr)");
      const std::string sec = key.substr(0, dot), leaf = key.substr(dot + 1);
      const auto& sections = fulcrum::deck_sections();
      if (std::find(sections.begin(), sections.end(), sec) == sections.end())
        bad(s, *v, where, fulcrum::unknown_name_message("section", sec, sections));
      if (!fulcrum::find_deck_key(sec, leaf))
        bad(s, *v, where, fulcrum::unknown_name_message("key", leaf, fulcrum::deck_key_names(sec)));
      if (grid.count(key)) bad(s, *v, where, "given in both grid and log2_grid");
      if (!v->is_array() || v->as_array().empty())
        bad(s, *v, where, "wrong type: expected a non-empty array of values, got " + toml_type_with_text(*v));
      GridAxis& axis = grid[key];
      axis.key = key;
      for (const auto& e : v->as_array()) {
        axis.lines.push_back(line_of(e) > 0 ? line_of(e) : line_of(*v));
        if (!log2) {
          axis.values.push_back(e);
          axis.labels.push_back(id_value(e));
          continue;
        }
        const double x = number(s, e, where);
        if (!(x > -1024 && x < 1024)) bad(s, e, where, "out of range: " + written_text(e) + "; exponents must be in (-1024, 1024)");
        const double p = std::exp2(x);
        if (x >= 0 && x < 62 && x == std::floor(x)) axis.values.emplace_back(static_cast<toml::integer>(std::llround(p)));
        else axis.values.emplace_back(p);
        axis.labels.push_back("2pow" + id_num(x));
      }
    }
  }
  for (auto& [k, axis] : grid) {
    std::string shortname = k.substr(k.rfind('.') + 1);
    int same = 0;
    for (auto& [k2, a2] : grid) {
      (void)a2;
      if (k2.substr(k2.rfind('.') + 1) == shortname) ++same;
    }
    if (same > 1) {
      shortname = k;
      std::replace(shortname.begin(), shortname.end(), '.', '-');
    }
    axis.label = shortname;
    s.grid_keys.insert(k);
    s.grid.push_back(axis);
  }
  return s;
}

int round_to_multiple(double x, long long unit) {
  const long long m = std::max<long long>(1, std::llround(x / static_cast<double>(unit)));
  return static_cast<int>(std::min<long long>(m * unit, (1LL << 31) - 1));
}

}  // namespace

// ------------------------------------------------------------------ laws
const FamilyLaws& Laws::get(const std::string& fam) const {
  auto it = family.find(fam);
  if (it == family.end())
    throw SweepError("laws " + source + ": no laws for the " + fam + " family ([law1." + fam +
                     "] / [law2." + fam + "])");
  return it->second;
}

Laws read_laws_file(const std::string& path) {
  toml::value root;
  try {
    root = toml::parse(path);
  } catch (const std::exception& e) {
    throw SweepError("cannot read laws file '" + path + "': " + e.what());
  }
  if (root.contains("format") && root.at("format").is_string() &&
      root.at("format").as_string() != "fulcrum-laws")
    throw SweepError(path + ": not a laws file (format is not \"fulcrum-laws\")");
  Laws L = laws_from_table(root, path);
  if (L.family.empty())
    throw SweepError(path + ": no usable laws ([law1.moe|dense] eta_k/eta_a/batch_k/batch_a or [law2.moe|dense] M_k/M_a)");
  return L;
}

// ------------------------------------------------------------------ shape rule
RunConfig scale_shape(const RunConfig& base, int d, int n_layers) {
  const auto& m = base.model;
  auto bad = [&](const std::string& why) -> SweepError {
    return SweepError("d_model " + std::to_string(d) + " does not fit the base shape (d_model " +
                      std::to_string(m.d_model) + ", n_heads " + std::to_string(m.n_heads) + ", n_kv_heads " +
                      std::to_string(m.n_kv_heads) + (base.moe.enabled ? ", d_expert " + std::to_string(base.moe.d_expert) : "") +
                      "): " + why);
  };
  if (d < 2) throw bad("must be >= 2");
  const int hd = m.d_model / m.n_heads;
  const int group = m.n_heads / m.n_kv_heads;
  if (d % hd) throw bad("not a multiple of head_dim " + std::to_string(hd));
  const int nh = d / hd;
  if (nh % group) throw bad("n_heads " + std::to_string(nh) + " not a multiple of the GQA group " + std::to_string(group));
  RunConfig c = base;
  c.model.d_model = d;
  c.model.n_heads = nh;
  c.model.n_kv_heads = nh / group;
  const double r = static_cast<double>(d) / m.d_model;
  c.model.d_ffn = std::max(1, static_cast<int>(std::lround(m.d_ffn * r)));
  int L = n_layers > 0 ? n_layers : std::max(1, static_cast<int>(std::lround(m.n_layers * r)));
  if (base.moe.enabled) {
    const long long num = static_cast<long long>(base.moe.d_expert) * d;
    if (num % m.d_model) throw bad("d_expert " + std::to_string(base.moe.d_expert) + " * " + std::to_string(d) + " / " +
                                   std::to_string(m.d_model) + " is not an integer (G must stay fixed)");
    c.moe.d_expert = static_cast<int>(num / m.d_model);
    if (n_layers <= 0) L = std::max(L, base.moe.first_k_dense + 1);
  }
  c.model.n_layers = L;
  return c;
}

namespace {

// The planner's settings of a run: deck keys set after the base deck,
// located at the [sweep] key they were planned from.
using Settings = std::vector<DeckSetting>;
DeckSetting setting(const std::string& file, int line, const std::string& key, toml::value value) {
  return DeckSetting{key, std::move(value), file, line};
}
template <class T>
toml::value integer(T x) {
  return toml::value(static_cast<toml::integer>(x));
}

Settings shape_settings(const RunConfig& c, const std::string& file, int line) {
  Settings o = {setting(file, line, "model.d_model", integer(c.model.d_model)),
                setting(file, line, "model.n_layers", integer(c.model.n_layers)),
                setting(file, line, "model.n_heads", integer(c.model.n_heads)),
                setting(file, line, "model.n_kv_heads", integer(c.model.n_kv_heads)),
                setting(file, line, "model.d_ffn", integer(c.model.d_ffn))};
  if (c.moe.enabled) o.push_back(setting(file, line, "moe.d_expert", integer(c.moe.d_expert)));
  return o;
}

ModelAccounting accounting(const RunConfig& c) { return model_accounting(model_shape_from_config(c)); }

// One point of the cartesian product before accounting.
struct Point {
  std::vector<std::pair<std::string, std::string>> axes;  // name, label
  double budget = 0;
  int ladder = -1;                 // index into ladder_d, -1 none
  int act = -1, gran = -1, shared = -1;
  std::vector<int> grid;           // value index per grid axis
};

}  // namespace

SweepPlan plan_sweep(const std::string& path, const PlanOptions& options) {
  std::ifstream f(path);
  if (!f) throw SweepError(path + ": cannot read sweep deck");
  std::stringstream ss;
  ss << f.rdbuf();
  return plan_sweep_text(ss.str(), path, options);
}

SweepPlan plan_sweep_text(const std::string& text, const std::string& path, const PlanOptions& options) {
  const Spec s = parse_spec(text, path, options);
  SweepPlan plan;
  plan.name = s.name;
  plan.sweep_deck = path;
  plan.dir = fs::absolute(s.dir).lexically_normal().string();
  if (!plan.dir.empty() && plan.dir.back() == '/') plan.dir.pop_back();
  if (s.laws) plan.laws_source = s.laws->source;

  auto read = [&](const Settings& ov, const std::string& what) -> LoadedDeck {
    try {
      return read_deck_layers(s.layers, ov);
    } catch (const DeckError& e) {
      // located where the value was written (base deck, sweep deck, grid entry)
      throw SweepError(std::string(e.what()) + " (planning " + what + ")");
    }
  };
  const auto at = [&](int line, const std::string& key, toml::value v) { return setting(path, line, key, std::move(v)); };
  // A placeholder run length so that the base reads even if the sweep sets it.
  Settings length0;
  if (!s.budgets.empty()) length0.push_back(at(s.line_budgets, "train.compute", toml::value(s.budgets[0])));
  else if (s.token_multiplier > 0) length0.push_back(at(s.line_multiplier, "train.tokens", integer(1)));
  const RunConfig base = read(length0, "the base deck").config;
  const bool moe = base.moe.enabled;
  if ((!s.act_E.empty() || !s.gran_G.empty() || !s.shared_Es.empty()) && !moe)
    throw SweepError(path + ": architecture ablations need a MoE base deck ([moe] section)");

  // ---- cartesian product, outermost first: budget, ladder, A, G, S, grid
  std::vector<Point> points(1);
  auto expand = [&](size_t n, const std::function<void(Point&, size_t)>& set) {
    if (n == 0) return;
    std::vector<Point> next;
    for (const auto& p : points)
      for (size_t i = 0; i < n; ++i) {
        Point q = p;
        set(q, i);
        next.push_back(q);
      }
    points.swap(next);
  };
  expand(s.budgets.size(), [&](Point& p, size_t i) {
    p.budget = s.budgets[i];
    p.axes.push_back({"C", id_num(s.budgets[i])});
  });
  expand(s.ladder_d.size(), [&](Point& p, size_t i) { p.ladder = static_cast<int>(i); });
  expand(s.act_E.size(), [&](Point& p, size_t i) {
    p.act = static_cast<int>(i);
    p.axes.push_back({"E", std::to_string(s.act_E[i])});
  });
  expand(s.gran_G.size(), [&](Point& p, size_t i) {
    p.gran = static_cast<int>(i);
    p.axes.push_back({"G", id_num(s.gran_G[i])});
  });
  expand(s.shared_Es.size(), [&](Point& p, size_t i) {
    p.shared = static_cast<int>(i);
    p.axes.push_back({"Es", std::to_string(s.shared_Es[i])});
  });
  for (size_t g = 0; g < s.grid.size(); ++g)
    expand(s.grid[g].values.size(), [&](Point& p, size_t i) {
      p.grid.push_back(static_cast<int>(i));
      p.axes.push_back({s.grid[g].label, s.grid[g].labels[i]});
    });

  std::set<std::string> ids;
  for (const Point& p : points) {
    // ---- architecture ablations (on the base shape)
    Settings ov = length0;
    if (p.budget > 0) ov = {at(s.line_budgets, "train.compute", toml::value(p.budget))};
    RunConfig arch = base;
    std::string pending_id;  // filled below; ablation errors name the axes
    for (auto& [n, v] : p.axes) pending_id += (pending_id.empty() ? "" : "_") + n + v;
    const std::string id_for_errors = pending_id.empty() ? "base" : pending_id;
    auto err = [&](const std::string& m) { return SweepError(path + ": run " + id_for_errors + ": " + m); };
    if (p.act >= 0) {  // activation ratio: vary E at fixed E_a, E_s, d_expert
      arch.moe.num_experts = s.act_E[p.act];
      ov.push_back(at(s.line_act, "moe.num_experts", integer(arch.moe.num_experts)));
    }
    if (p.gran >= 0) {  // granularity: d_expert = 2 d_model / G; E, E_a, E_s scale by De0 / De
      const double G = s.gran_G[p.gran];
      const double de = 2.0 * arch.model.d_model / G;
      const int De = static_cast<int>(std::lround(de));
      if (std::fabs(de - De) > 1e-9 || De < 1)
        throw err("granularity " + fmt_g(G) + " gives d_expert = 2*" + std::to_string(arch.model.d_model) + "/G = " + fmt_g(de) + ", not an integer");
      const long long De0 = arch.moe.d_expert;
      auto scaled = [&](int n, const char* what) {
        const long long num = static_cast<long long>(n) * De0;
        if (num % De) throw err("granularity " + fmt_g(G) + ": " + what + " " + std::to_string(n) + " * " + std::to_string(De0) + " / " + std::to_string(De) + " is not an integer (FLOPs per token and A must stay fixed)");
        return static_cast<int>(num / De);
      };
      arch.moe.num_experts = scaled(arch.moe.num_experts, "num_experts");
      arch.moe.num_active_experts = scaled(arch.moe.num_active_experts, "num_active_experts");
      arch.moe.num_shared_experts = scaled(arch.moe.num_shared_experts, "num_shared_experts");
      arch.moe.d_expert = De;
      ov.push_back(at(s.line_gran, "moe.d_expert", integer(De)));
      ov.push_back(at(s.line_gran, "moe.num_experts", integer(arch.moe.num_experts)));
      ov.push_back(at(s.line_gran, "moe.num_active_experts", integer(arch.moe.num_active_experts)));
      ov.push_back(at(s.line_gran, "moe.num_shared_experts", integer(arch.moe.num_shared_experts)));
    }
    if (p.shared >= 0) {  // shared ratio: E_a + E_s and E + E_s fixed
      const int Es = s.shared_Es[p.shared];
      const int active = arch.moe.num_active_experts + arch.moe.num_shared_experts;
      const int total = arch.moe.num_experts + arch.moe.num_shared_experts;
      if (Es >= active) throw err("num_shared_experts " + std::to_string(Es) + " leaves no routed active expert (E_a + E_s = " + std::to_string(active) + ")");
      arch.moe.num_shared_experts = Es;
      arch.moe.num_active_experts = active - Es;
      arch.moe.num_experts = total - Es;
      ov.push_back(at(s.line_shared, "moe.num_shared_experts", integer(Es)));
      ov.push_back(at(s.line_shared, "moe.num_active_experts", integer(arch.moe.num_active_experts)));
      ov.push_back(at(s.line_shared, "moe.num_experts", integer(arch.moe.num_experts)));
    }

    // ---- shape: ladder entry, or laws allocation, or the base shape
    std::vector<std::pair<std::string, std::string>> axes = p.axes;
    RunConfig shaped = arch;
    try {
      if (p.ladder >= 0) {
        shaped = scale_shape(arch, s.ladder_d[p.ladder], s.ladder_L.empty() ? 0 : s.ladder_L[p.ladder]);
      } else if (s.allocate_with_laws && p.budget > 0) {
        const double Mopt = s.laws->get(moe ? "moe" : "dense").M_opt(p.budget);
        if (!(Mopt > 0)) throw SweepError("laws give no M_opt");
        const int hd = arch.model.d_model / arch.model.n_heads;
        double best = 1e300;
        for (int d = hd; d <= 65536; d += hd) {
          RunConfig c;
          try {
            c = scale_shape(arch, d);
          } catch (const SweepError&) {
            continue;
          }
          const double dist = std::fabs(std::log(accounting(c).flops_per_token / Mopt));
          if (dist < best) best = dist, shaped = c;
        }
        if (best == 1e300) throw SweepError("no width fits the base shape");
      }
    } catch (const SweepError& e) {
      throw err(e.what());
    }
    if (p.ladder >= 0 || s.allocate_with_laws) {
      const auto so = shape_settings(shaped, path, s.line_ladder);
      ov.insert(ov.end(), so.begin(), so.end());
      // the width and depth are an axis of the id (after the budget)
      const std::string shape_label = std::to_string(shaped.model.d_model) + "L" + std::to_string(shaped.model.n_layers);
      auto pos = axes.begin() + (p.budget > 0 ? 1 : 0);
      axes.insert(pos, {"d", shape_label});
    }
    // ---- grid values (override everything above)
    for (size_t g = 0; g < s.grid.size(); ++g)
      ov.push_back(at(s.grid[g].lines[p.grid[g]], s.grid[g].key, s.grid[g].values[p.grid[g]]));

    std::string id;
    for (auto& [n, v] : axes) id += (id.empty() ? "" : "_") + n + v;
    if (id.empty()) id = "base";
    if (!ids.insert(id).second) throw SweepError(path + ": run id '" + id + "' appears twice (two grid values give the same id)");

    LoadedDeck d1 = read(ov, "run " + id);
    const ModelAccounting acc = accounting(d1.config);
    const double M = acc.flops_per_token;
    const char* fam = d1.config.moe.enabled ? "moe" : "dense";

    // ---- run length and the compute the laws are evaluated at
    double C = 0, D = 0;
    const bool isoflop = p.budget > 0;
    if (isoflop) {
      C = p.budget;
    } else if (s.token_multiplier > 0) {
      const PowerLaw& Mopt = s.laws->get(fam).M_opt;
      if (!Mopt.ok()) throw SweepError(path + ": run " + id + ": token_multiplier needs the M_opt law (law2." + fam + ")");
      const double Cstar = std::pow(M / Mopt.k, 1.0 / Mopt.a);  // budget at which this M is optimal
      D = s.token_multiplier * Cstar / M;
      C = M * D;
    } else {
      C = d1.config.train.tokens > 0 ? static_cast<double>(d1.config.train.tokens) * M : d1.config.train.compute;
    }
    if (s.laws) {
      const FamilyLaws& fl = s.laws->get(fam);
      if (!s.grid_keys.count("train.lr") && fl.eta.ok())
        ov.push_back(at(s.line_laws, "train.lr", toml::value(std::min(1.0, fl.eta(C)))));
      if (!s.grid_keys.count("train.batch_tokens") && fl.batch.ok()) {
        const long long unit = static_cast<long long>(d1.config.model.seq_len) * d1.config.train.micro_batch_size;
        ov.push_back(at(s.line_laws, "train.batch_tokens", integer(round_to_multiple(fl.batch(C), unit))));
      }
      d1 = read(ov, "run " + id);
    }
    if (isoflop || s.token_multiplier > 0) {
      // whole batches, nearest to C / M (or the multiplied optimum)
      const double raw = isoflop ? C / M : D;
      const double bt = static_cast<double>(d1.config.train.batch_tokens);
      const double tokens = std::max(1.0, std::round(raw / bt)) * bt;
      if (isoflop && std::fabs(tokens * M - C) / C > s.tolerance)
        throw SweepError(path + ": run " + id + ": budget " + fmt_g(C) + " FLOPs cannot be hit within " + fmt_g(100 * s.tolerance) +
                         "% with whole batches of " + fmt_g(bt) + " tokens (M = " + fmt_g(M) + ", C/M = " + fmt_g(C / M) +
                         " tokens); use a smaller batch or larger budget, or raise [sweep] budget_tolerance");
      ov.erase(std::remove_if(ov.begin(), ov.end(),
                              [](const DeckSetting& x) { return x.key == "train.compute" || x.key == "train.tokens"; }),
               ov.end());
      ov.push_back(at(isoflop ? s.line_budgets : s.line_multiplier, "train.tokens", integer(static_cast<long long>(tokens))));
      // the budget this run belongs to is data: recorded in the deck and the
      // run file, so that fulcrum-fit groups runs by it (doc/fit.md)
      if (isoflop) ov.push_back(at(s.line_budgets, "train.compute_budget", toml::value(C)));
    }
    // ---- run identity and place
    const std::string dir = plan.dir + "/runs/" + id;
    ov.push_back(at(s.line_name, "run.name", toml::value(s.name + "/" + id)));
    ov.push_back(at(s.line_dir, "output.dir", toml::value(dir)));
    LoadedDeck d2 = read(ov, "run " + id);
    RunConfig cfg = d2.config;
    // every path key of the schema absolute (token files, the mixture's
    // corpus manifest, the run directory): runs start in other directories
    for (const fulcrum::KeySpec& k : fulcrum::deck_keys()) {
      if (!k.is_path) continue;
      fulcrum::KeyValue v = k.get(cfg);
      if (v.text.empty()) continue;
      v.text = fs::absolute(v.text).lexically_normal().string();
      k.set(cfg, v);
    }

    PlannedRun r;
    r.id = id;
    // written by the deck schema's writer (deck_writer.cpp)
    r.deck_text = "# Generated by fulcrum-sweep from " + fulcrum::sanitize(path) + " (sweep '" + s.name + "', run " + id +
                  "). Do not edit: re-plan instead.\n" + resolved_deck_toml(cfg);
    try {  // the concrete deck must read back as written
      r.config = read_deck_text(r.deck_text, dir + "/deck.toml").config;
    } catch (const DeckError& e) {
      throw SweepError(path + ": run " + id + ": generated deck is invalid: " + e.what());
    }
    r.ranks = r.config.parallel.world_size > 0 ? r.config.parallel.world_size : (s.ranks > 0 ? s.ranks : 1);
    const ModelAccounting a = accounting(r.config);
    r.flops_per_token = a.flops_per_token;
    r.params_total = a.params_total;
    r.params_active = a.params_active;
    r.activation_ratio = a.activation_ratio;
    r.granularity = a.granularity;
    r.shared_ratio = a.shared_ratio;
    r.tokens = r.config.train.tokens > 0 ? static_cast<double>(r.config.train.tokens) : r.config.train.compute / a.flops_per_token;
    r.compute = r.tokens * a.flops_per_token;
    r.budget = p.budget;
    for (auto& [n, v] : axes) r.axes[n] = v;
    plan.runs.push_back(std::move(r));
  }
  return plan;
}

// ------------------------------------------------------------------ output
std::string plan_table(const SweepPlan& plan) {
  std::ostringstream o;
  char b[512];
  size_t w = 4;
  for (const auto& r : plan.runs) w = std::max(w, r.id.size());
  std::snprintf(b, sizeof b, "%-*s %6s %3s %4s %10s %10s %10s %10s %10s %10s %9s %9s %5s\n", (int)w, "id", "d_model",
                "L", "E", "M", "params", "active", "tokens", "C", "budget", "lr", "batch", "ranks");
  o << b;
  for (const auto& r : plan.runs) {
    std::snprintf(b, sizeof b, "%-*s %6d %3d %4d %10.4g %10.4g %10.4g %10.4g %10.4g %10s %9.4g %9llu %5d\n", (int)w,
                  r.id.c_str(), r.config.model.d_model, r.config.model.n_layers,
                  r.config.moe.enabled ? r.config.moe.num_experts : 0, r.flops_per_token, r.params_total,
                  r.params_active, r.tokens, r.compute, r.budget > 0 ? fmt_g(r.budget, 4).c_str() : "-",
                  r.config.train.lr, (unsigned long long)r.config.train.batch_tokens, r.ranks);
    o << b;
  }
  std::snprintf(b, sizeof b, "%zu runs, sweep '%s', dir %s%s\n", plan.runs.size(), plan.name.c_str(), plan.dir.c_str(),
                plan.laws_source.empty() ? "" : (", laws " + plan.laws_source).c_str());
  o << b;
  return o.str();
}

void write_plan(const SweepPlan& plan) {
  Manifest m;
  m.name = plan.name;
  m.sweep_deck = plan.sweep_deck;
  m.dir = plan.dir;
  m.laws = plan.laws_source;
  // check first, write after: a refused plan leaves everything as it was
  for (const auto& r : plan.runs) {
    const std::string dir = plan.dir + "/runs/" + r.id;
    std::ifstream old(dir + "/deck.toml");
    if (!old) continue;
    std::stringstream ss;
    ss << old.rdbuf();
    if (ss.str() != r.deck_text && fs::exists(dir + "/run.h5"))
      throw SweepError("run " + r.id + " in " + plan.dir + " already has a run file from a different deck; plan into a new sweep directory (--out) or delete " + dir);
  }
  std::error_code ec;
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    const auto& r = plan.runs[i];
    const std::string dir = plan.dir + "/runs/" + r.id;
    fs::create_directories(dir, ec);
    if (ec) throw SweepError("cannot create " + dir + ": " + ec.message());
    const std::string deck = dir + "/deck.toml";
    {
      std::ofstream f(deck + ".tmp");
      f << r.deck_text;
      if (!f) throw SweepError("cannot write " + deck);
    }
    fs::rename(deck + ".tmp", deck, ec);
    if (ec) throw SweepError("cannot write " + deck + ": " + ec.message());
    ManifestRun mr;
    mr.index = static_cast<int>(i);
    mr.id = r.id;
    mr.ranks = r.ranks;
    mr.deck = deck;
    mr.dir = dir;
    mr.flops_per_token = r.flops_per_token;
    mr.params_total = r.params_total;
    mr.params_active = r.params_active;
    mr.tokens = r.tokens;
    mr.compute = r.compute;
    mr.budget = r.budget;
    mr.lr = r.config.train.lr;
    mr.batch_tokens = static_cast<double>(r.config.train.batch_tokens);
    mr.activation_ratio = r.activation_ratio;
    mr.granularity = r.granularity;
    mr.shared_ratio = r.shared_ratio;
    mr.d_model = r.config.model.d_model;
    mr.n_layers = r.config.model.n_layers;
    mr.num_experts = r.config.moe.enabled ? r.config.moe.num_experts : 0;
    m.runs.push_back(mr);
  }
  write_manifest(m);
}

}  // namespace fulcrum::sweep
