// study.cpp: study decks and the stage driver behind `fulcrum-sweep study`
// (doc/studies.md). Planning and running reuse the sweep planner and runner;
// fitting and the wind tunnel call fulcrum-fit.
#include "sweep/study.hpp"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <toml.hpp>

#include "deck/deck_reader.hpp"
#include "deck/toml_input.hpp"
#include "sweep/sweep_manifest.hpp"

namespace fs = std::filesystem;

namespace fulcrum::sweep {

namespace {

// ------------------------------------------------------------------ deck reading
const std::vector<std::string> kTopKeys = {"study", "deck", "stage"};
const std::vector<std::string> kStudyKeys = {"name", "dir", "jobs", "gate", "bootstrap", "seed", "plots",
                                             "windtunnel", "fit_args", "require", "laws"};
const std::vector<std::string> kStageKeys = {"name", "require", "laws", "sweep"};
const std::vector<std::string> kSweepKeys = {"name", "file", "base", "ranks", "token_multiplier", "budget_tolerance",
                                             "grid", "log2_grid", "isoflop", "activation", "granularity",
                                             "shared", "deck"};
const std::vector<std::string> kLaws = {"law1", "law2", "law3", "el"};

struct Reader {
  std::string path;
  [[noreturn]] void bad(int line, const std::string& key, const std::string& msg) const {
    throw StudyError(path + (line > 0 ? ":" + std::to_string(line) : "") + ": " + key + ": " + msg);
  }
  static int line(const toml::value& v) { return static_cast<int>(v.location().line()); }
  void keys(const toml::value& t, const std::vector<std::string>& allowed, const std::string& prefix) const {
    for (const auto& [k, v] : t.as_table()) {
      if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
      const std::string near = nearest_name(k, allowed);
      bad(line(v), prefix + k, "unknown key" + (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
  }
  const toml::value& table(const toml::value& t, const std::string& k, const std::string& key) const {
    const auto& v = t.at(k);
    if (!v.is_table()) bad(line(v), key, "expected a table");
    return v;
  }
  std::string str(const toml::value& t, const std::string& k, const std::string& key, const std::string& dflt) const {
    if (!t.contains(k)) return dflt;
    const auto& v = t.at(k);
    if (!v.is_string()) bad(line(v), key, "expected a string");
    return v.as_string();
  }
  long long integer(const toml::value& t, const std::string& k, const std::string& key, long long dflt, long long lo) const {
    if (!t.contains(k)) return dflt;
    const auto& v = t.at(k);
    if (!v.is_integer()) bad(line(v), key, "expected an integer");
    if (v.as_integer() < lo) bad(line(v), key, "must be >= " + std::to_string(lo));
    return v.as_integer();
  }
  bool boolean(const toml::value& t, const std::string& k, const std::string& key, bool dflt) const {
    if (!t.contains(k)) return dflt;
    const auto& v = t.at(k);
    if (!v.is_boolean()) bad(line(v), key, "expected true or false");
    return v.as_boolean();
  }
  std::vector<std::string> strings(const toml::value& t, const std::string& k, const std::string& key) const {
    std::vector<std::string> out;
    const auto& v = t.at(k);
    if (!v.is_array()) bad(line(v), key, "expected an array of strings");
    for (const auto& e : v.as_array()) {
      if (!e.is_string()) bad(line(v), key, "expected an array of strings");
      out.push_back(e.as_string());
    }
    return out;
  }
  std::vector<std::string> laws(const toml::value& t, const std::string& k, const std::string& key) const {
    auto out = strings(t, k, key);
    for (const auto& l : out)
      if (std::find(kLaws.begin(), kLaws.end(), l) == kLaws.end()) {
        const std::string near = nearest_name(l, kLaws);
        bad(line(t.at(k)), key, "unknown law '" + l + "' (law1, law2, law3, el)" +
                                    (near.empty() ? "" : "; did you mean '" + near + "'?"));
      }
    return out;
  }
  void name(const std::string& n, int ln, const std::string& key) const {
    if (n.empty()) bad(ln, key, "empty");
    for (char c : n)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'))
        bad(ln, key, "'" + n + "' may contain only letters, digits, '-' and '_'");
  }
  void numbers(const toml::value& t, const std::string& k, const std::string& key, bool integers) const {
    if (!t.contains(k)) return;
    const auto& v = t.at(k);
    if (!v.is_array() || v.as_array().empty()) bad(line(v), key, "expected a non-empty array of numbers");
    for (const auto& e : v.as_array())
      if (!(e.is_integer() || (!integers && e.is_floating())))
        bad(line(v), key, integers ? "expected integers" : "expected numbers");
  }
};

std::string absolute(const std::string& p) { return p.empty() ? p : fs::absolute(p).lexically_normal().string(); }

void merge_sections(toml::value& into, const toml::value& from) {
  for (const auto& [sec, t] : from.as_table()) {
    if (!t.is_table()) continue;
    if (!into.contains(sec)) into[sec] = toml::table{};
    for (const auto& [k, v] : t.as_table()) into[sec][k] = v;
  }
}

// The part of a DeckError's message after "[section] key: ".
std::string deck_message(const DeckError& e) { return e.message; }

// A sweep or base deck named by the study deck, read by the deck machinery
// (limits, located syntax errors); problems are reported at the study's key
// that names the file, quoting the file's own location.
toml::value read_named_deck(const Reader& R, const toml::value& at, const std::string& key, const std::string& file,
                            const char* what) {
  std::ifstream in(file, std::ios::binary);
  if (!in) R.bad(Reader::line(at), key, std::string("cannot read ") + what + " '" + file + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return parse_toml_deck(ss.str(), file);
  } catch (const DeckError& e) {
    R.bad(Reader::line(at), key, std::string("cannot read ") + what + ": " + e.what());
  }
}

// A sweep of a stage -> sweep deck text (without dir and laws), and the
// deck keys checked against the trainer's reader with the study deck's lines.
StudySweep read_sweep(const Reader& R, const toml::value& sw, const toml::value& study_deck, const std::string& key,
                      const std::string& stage) {
  StudySweep out;
  out.line = Reader::line(sw);
  for (const char* k : {"dir", "laws"})
    if (sw.contains(k))
      R.bad(Reader::line(sw.at(k)), key + "." + k, "set by the study (each sweep lives in the stage's directory; "
                                                      "its laws are the stage's laws)");
  R.keys(sw, kSweepKeys, key + ".");
  toml::value sweep = toml::table{};
  toml::value sections = toml::table{};
  merge_sections(sections, study_deck);
  if (sw.contains("file")) {
    for (const auto& [k, v] : sw.as_table())
      if (k != "file" && k != "name")
        R.bad(Reader::line(v), key + "." + k, "a sweep given by 'file' takes only 'name' besides it");
    const std::string file = R.str(sw, "file", key + ".file", "");
    const toml::value f = read_named_deck(R, sw.at("file"), key + ".file", file, "sweep deck");
    if (!f.contains("sweep") || !f.at("sweep").is_table())
      R.bad(Reader::line(sw.at("file")), key + ".file", "'" + file + "' has no [sweep] section (doc/sweeps.md)");
    for (const auto& [k, v] : f.at("sweep").as_table())
      if (k != "dir" && k != "laws" && k != "name") sweep[k] = v;
    toml::value own = f;
    own.as_table().erase("sweep");
    merge_sections(sections, own);
    out.name = R.str(sw, "name", key + ".name", fs::path(file).stem().string());
  } else {
    out.name = R.str(sw, "name", key + ".name", "");
    if (!sw.contains("name")) R.bad(out.line, key + ".name", "required (the sweep's directory name)");
    for (const auto& [k, v] : sw.as_table())
      if (k != "deck" && k != "name") sweep[k] = v;
    if (sw.contains("isoflop")) {
      const auto& t = R.table(sw, "isoflop", key + ".isoflop");
      R.keys(t, {"compute", "d_model", "n_layers", "allocation"}, key + ".isoflop.");
      R.numbers(t, "compute", key + ".isoflop.compute", false);
      R.numbers(t, "d_model", key + ".isoflop.d_model", true);
      R.numbers(t, "n_layers", key + ".isoflop.n_layers", true);
      if (!t.contains("compute")) R.bad(Reader::line(t), key + ".isoflop.compute", "required (list of budgets in FLOPs)");
    }
    const std::vector<std::pair<const char*, const char*>> abl = {
        {"activation", "num_experts"}, {"granularity", "granularity"}, {"shared", "num_shared_experts"}};
    for (const auto& [tab, k] : abl)
      if (sw.contains(tab)) {
        const auto& t = R.table(sw, tab, key + "." + tab);
        R.keys(t, {k}, key + "." + tab + ".");
        if (!t.contains(k)) R.bad(Reader::line(t), key + "." + tab + "." + k, "required");
        R.numbers(t, k, key + "." + tab + "." + k, std::string(tab) != "granularity");
      }
    for (const char* g : {"grid", "log2_grid"})
      if (sw.contains(g)) R.table(sw, g, key + "." + g);
    if (sw.contains("base")) R.str(sw, "base", key + ".base", "");
    if (sw.contains("deck")) {
      const auto& d = R.table(sw, "deck", key + ".deck");
      for (const auto& [sec, t] : d.as_table())
        if (!t.is_table()) R.bad(Reader::line(t), key + ".deck." + sec, "expected a deck section ([" + key + ".deck.SECTION])");
      merge_sections(sections, d);
    }
  }
  R.name(out.name, out.line, key + ".name");
  if (sweep.contains("base")) {
    if (!sweep.at("base").is_string()) R.bad(out.line, key + ".base", "expected a string");
    sweep["base"] = absolute(sweep.at("base").as_string());
  }
  // the deck the sweep expands (its base file under the study's and the
  // sweep's own sections) must read; a bad key is reported where it was written
  toml::value deck = toml::table{};
  if (sweep.contains("base")) {
    const std::string base = sweep.at("base").as_string();
    merge_sections(deck, read_named_deck(R, sw, key + ".base", base, "base deck"));
  }
  merge_sections(deck, sections);
  std::vector<std::string> placeholder;
  if (sweep.contains("isoflop") && sweep.at("isoflop").contains("compute")) {
    const auto& c = sweep.at("isoflop").at("compute").as_array().front();
    placeholder.push_back("train.compute=" + std::to_string(c.is_integer() ? (double)c.as_integer() : c.as_floating()));
  } else if (sweep.contains("token_multiplier")) {
    placeholder.push_back("train.tokens=1");
  }
  try {
    read_deck_text(toml::format(deck), R.path + " (stage " + stage + ", sweep " + out.name + ")", placeholder);
  } catch (const DeckError& e) {
    const std::string sec = e.key.substr(0, e.key.find('.')), leaf = e.key.substr(e.key.find('.') + 1);
    const toml::value* own = sw.contains("deck") ? &sw.at("deck") : nullptr;
    for (const auto& [where, t] : {std::pair<std::string, const toml::value*>{key + ".deck.", own},
                                   std::pair<std::string, const toml::value*>{"deck.", &study_deck}}) {
      if (!t || e.key.empty() || !t->contains(sec) || !t->at(sec).is_table()) continue;
      if (t->at(sec).contains(leaf)) R.bad(Reader::line(t->at(sec).at(leaf)), where + e.key, deck_message(e));
      if (e.key.find('.') == std::string::npos) R.bad(Reader::line(t->at(sec)), where + e.key, deck_message(e));
    }
    R.bad(out.line, key + " (its deck)", e.what());
  }
  out.moe = deck.contains("moe");
  toml::value root = toml::table{};
  root["sweep"] = sweep;
  for (const auto& [sec, t] : sections.as_table()) root[sec] = t;
  out.text = toml::format(root);
  return out;
}

}  // namespace

std::string Study::stage_dir(size_t k) const { return dir + "/" + std::to_string(k + 1) + "-" + stages[k].name; }

Study read_study(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw StudyError(path + ": cannot read study deck");
  std::stringstream ss;
  ss << f.rdbuf();
  return read_study_text(ss.str(), path);
}

Study read_study_text(const std::string& text, const std::string& path) {
  Reader R{path};
  toml::value root;
  try {
    root = parse_toml_deck(text, path);  // the input decks' limits and located syntax errors
  } catch (const DeckError& e) {
    R.bad(e.line, e.key.empty() ? "(syntax)" : e.key, e.message);
  }
  R.keys(root, kTopKeys, "");
  if (!root.contains("study")) R.bad(0, "study", "required: a [study] section (doc/studies.md)");
  const auto& st = R.table(root, "study", "study");
  R.keys(st, kStudyKeys, "study.");
  Study s;
  s.path = path;
  s.name = R.str(st, "name", "study.name", fs::path(path).stem().string());
  R.name(s.name, st.contains("name") ? Reader::line(st.at("name")) : Reader::line(st), "study.name");
  s.dir = absolute(R.str(st, "dir", "study.dir", "runs/studies/" + s.name));
  s.jobs = static_cast<int>(R.integer(st, "jobs", "study.jobs", 1, 1));
  s.gate = R.str(st, "gate", "study.gate", "trusted");
  if (s.gate != "trusted" && s.gate != "fitted")
    R.bad(Reader::line(st.at("gate")), "study.gate", "'" + s.gate + "': expected \"trusted\" or \"fitted\"");
  s.bootstrap = static_cast<int>(R.integer(st, "bootstrap", "study.bootstrap", 200, 0));
  s.seed = static_cast<int>(R.integer(st, "seed", "study.seed", 1, 0));
  s.plots = R.boolean(st, "plots", "study.plots", true);
  s.windtunnel = R.boolean(st, "windtunnel", "study.windtunnel", true);
  if (st.contains("fit_args")) s.fit_args = R.strings(st, "fit_args", "study.fit_args");
  if (st.contains("require")) s.require = R.laws(st, "require", "study.require");
  s.laws = absolute(R.str(st, "laws", "study.laws", ""));
  if (!s.laws.empty() && !fs::exists(s.laws)) R.bad(Reader::line(st.at("laws")), "study.laws", "no such laws file '" + s.laws + "'");

  toml::value deck = toml::table{};
  if (root.contains("deck")) {
    const auto& d = R.table(root, "deck", "deck");
    for (const auto& [sec, t] : d.as_table())
      if (!t.is_table()) R.bad(Reader::line(t), "deck." + sec, "expected a deck section ([deck.SECTION])");
    deck = d;
  }
  if (!root.contains("stage")) R.bad(0, "stage", "required: one or more [[stage]] tables (doc/studies.md)");
  const auto& stages = root.at("stage");
  if (!stages.is_array() || stages.as_array().empty())
    R.bad(Reader::line(stages), "stage", "expected [[stage]] tables");
  std::set<std::string> names;
  for (size_t i = 0; i < stages.as_array().size(); ++i) {
    const auto& t = stages.as_array()[i];
    const std::string key = "stage[" + std::to_string(i + 1) + "]";
    if (!t.is_table()) R.bad(Reader::line(t), key, "expected a table ([[stage]])");
    R.keys(t, kStageKeys, key + ".");
    StudyStage g;
    g.line = Reader::line(t);
    if (!t.contains("name")) R.bad(g.line, key + ".name", "required");
    g.name = R.str(t, "name", key + ".name", "");
    R.name(g.name, Reader::line(t.at("name")), key + ".name");
    if (!names.insert(g.name).second) R.bad(Reader::line(t.at("name")), key + ".name", "'" + g.name + "' is used by two stages");
    if (!t.contains("require")) R.bad(g.line, key + ".require", "required: the laws this stage's fit must give (law1, law2, law3, el)");
    g.require = R.laws(t, "require", key + ".require");
    if (g.require.empty()) R.bad(Reader::line(t.at("require")), key + ".require", "empty: name at least one law");
    g.laws = R.str(t, "laws", key + ".laws", "previous");
    if (g.laws != "previous" && g.laws != "none") {
      g.laws = absolute(g.laws);
      if (!fs::exists(g.laws)) R.bad(Reader::line(t.at("laws")), key + ".laws", "no such laws file '" + g.laws + "' (or \"previous\", \"none\")");
    }
    if (!t.contains("sweep")) R.bad(g.line, key + ".sweep", "required: one or more [[stage.sweep]] tables");
    const auto& sws = t.at("sweep");
    if (!sws.is_array() || sws.as_array().empty()) R.bad(Reader::line(sws), key + ".sweep", "expected [[stage.sweep]] tables");
    std::set<std::string> swnames;
    for (size_t j = 0; j < sws.as_array().size(); ++j) {
      const auto& sw = sws.as_array()[j];
      const std::string skey = key + ".sweep[" + std::to_string(j + 1) + "]";
      if (!sw.is_table()) R.bad(Reader::line(sw), skey, "expected a table ([[stage.sweep]])");
      StudySweep x = read_sweep(R, sw, deck, skey, g.name);
      if (!swnames.insert(x.name).second) R.bad(x.line, skey + ".name", "'" + x.name + "' is used by two sweeps of the stage");
      g.sweeps.push_back(std::move(x));
    }
    s.stages.push_back(std::move(g));
  }
  return s;
}

// ------------------------------------------------------------------ driver
namespace {

std::string read_file(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
void write_file(const std::string& p, const std::string& text) {
  {
    std::ofstream f(p + ".tmp");
    f << text;
    if (!f) throw SweepError("cannot write " + p);
  }
  std::error_code ec;
  fs::rename(p + ".tmp", p, ec);
  if (ec) throw SweepError("cannot write " + p + ": " + ec.message());
}

std::string law_title(const std::string& l) {
  if (l == "el") return "EL joint law";
  return "Law " + l.substr(3);
}

// Runs cmd (argv) with stdout+stderr to `log`; returns the exit code.
int run_logged(const std::vector<std::string>& argv, const std::string& log) {
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + shell_word(a);
  std::ofstream(log) << "$ " << cmd << "\n";
  cmd += " >> " + shell_word(log) + " 2>&1";
  const int st = std::system(cmd.c_str());
  if (st == -1) return 1;
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return WEXITSTATUS(st);
}

struct Verdict {
  std::string law, family;
  bool fitted = false, trusted = false;
  std::vector<std::string> reasons;
};
std::vector<Verdict> read_verdicts(const std::string& laws_file) {
  std::vector<Verdict> out;
  toml::value root;
  try {
    root = toml::parse(laws_file);
  } catch (const std::exception& e) {
    throw SweepError("cannot read laws file " + laws_file + ": " + std::string(e.what()).substr(0, std::string(e.what()).find('\n')));
  }
  if (!root.contains("diagnostics")) return out;
  for (const auto& d : root.at("diagnostics").as_array()) {
    Verdict v;
    v.law = toml::find_or<std::string>(d, "law", "");
    v.family = toml::find_or<std::string>(d, "family", "");
    v.fitted = toml::find_or<bool>(d, "fitted", false);
    v.trusted = toml::find_or<bool>(d, "trusted", false);
    v.reasons = toml::find_or<std::vector<std::string>>(d, "reasons", {});
    out.push_back(v);
  }
  return out;
}

// The gate: one line per required law that fails (empty: passed); `ok`
// gets one line per required law that passes.
// Law 1 and Law 2 are read by the planner per family kind ("dense", "moe"):
// each kind in `kinds` must pass; Law 3 passes with any family, EL has one.
std::vector<std::string> check_gate(const std::string& laws_file, const std::string& fit_log,
                                    const std::vector<std::string>& require, const std::string& gate,
                                    const std::set<std::string>& kinds, std::vector<std::string>* ok) {
  std::vector<std::string> bad;
  if (!fs::exists(laws_file)) {
    // fulcrum-fit exited 3 (nothing could be fitted): its message lists
    // "  - Law 1 [dense]: why" for every law
    std::vector<std::string> all, mine;
    std::istringstream is(read_file(fit_log));
    std::string l;
    while (std::getline(is, l)) {
      if (l.rfind("  - ", 0) != 0) continue;
      l = l.substr(4);
      all.push_back(l);
      for (const auto& law : require)
        if (l.rfind(law_title(law) + " ", 0) == 0 || l.rfind(law_title(law) + ":", 0) == 0) {
          const size_t c = l.find(": ");
          mine.push_back(c == std::string::npos ? l : l.substr(0, c) + ": not fitted\n      " + l.substr(c + 2));
        }
    }
    if (mine.empty()) {
      std::string why;
      for (const auto& a : all) why += "\n      " + a;
      mine.push_back("nothing could be fitted (see " + fit_log + ")" + why);
    }
    return mine;
  }
  const auto vs = read_verdicts(laws_file);
  std::vector<std::pair<std::string, std::string>> checks;  // law, kind ("" any)
  for (const auto& law : require) {
    if ((law == "law1" || law == "law2") && !kinds.empty())
      for (const auto& k : kinds) checks.emplace_back(law, k);
    else
      checks.emplace_back(law, "");
  }
  for (const auto& [law, kind] : checks) {
    std::vector<std::string> lines;
    bool pass = false;
    for (const auto& v : vs) {
      if (v.law != law) continue;
      if (!kind.empty() && (kind == "dense") != (v.family == "dense")) continue;
      const bool good = v.fitted && (v.trusted || gate == "fitted");
      const std::string name = law_title(law) + (v.family.empty() ? "" : " [" + v.family + "]");
      std::string line = name + ": " + (!v.fitted ? "not fitted" : v.trusted ? "fitted, trustworthy" : "fitted, NOT TRUSTWORTHY");
      for (const auto& r : v.reasons) line += "\n      " + r;
      if (good) {
        pass = true;
        if (ok) ok->push_back(line);
      } else {
        lines.push_back(line);
      }
    }
    if (pass && ok) {  // the families without the law, in one line (report.txt says why)
      int n = 0;
      for (const auto& l : lines) n += l.find(": not fitted") != std::string::npos;
      std::vector<std::string> kept;
      for (const auto& l : lines)
        if (l.find(": not fitted") == std::string::npos) kept.push_back(l);
      if (n) kept.push_back(law_title(law) + ": not fitted for " + std::to_string(n) + " other famil" + (n == 1 ? "y" : "ies") + " (report.txt says why)");
      lines = kept;
    }
    if (!pass) {
      if (lines.empty())
        lines.push_back(law_title(law) + (kind.empty() ? "" : " [" + kind + "]") + ": no verdict in " + laws_file +
                        (kind.empty() ? "" : " (a later sweep plans " + kind + " models from it)"));
      for (auto& l : lines) bad.push_back(l);
    } else if (ok) {
      for (auto& l : lines) ok->push_back(l);
    }
  }
  return bad;
}

// What a fit of these run lists was made from: the command and every run
// file's size and time. Equal keys: the fit need not run again.
std::string fit_key(const std::vector<std::string>& cmd, const std::vector<std::string>& lists) {
  std::ostringstream k;
  for (const auto& a : cmd) k << a << "\n";
  for (const auto& l : lists) {
    std::istringstream is(read_file(l));
    std::string p;
    while (std::getline(is, p)) {
      struct stat sb {};
      if (p.empty() || p[0] == '#' || ::stat(p.c_str(), &sb) != 0) continue;
      k << p << " " << sb.st_size << " " << sb.st_mtim.tv_sec << "." << sb.st_mtim.tv_nsec << "\n";
    }
  }
  return k.str();
}

std::map<std::string, std::string> read_kv(const std::string& p) {
  std::map<std::string, std::string> m;
  std::istringstream is(read_file(p));
  std::string l;
  while (std::getline(is, l)) {
    const auto eq = l.find('=');
    if (eq == std::string::npos) continue;
    auto& v = m[l.substr(0, eq)];
    v += (v.empty() ? "" : "\n") + l.substr(eq + 1);
  }
  return m;
}

std::string sweep_dir(const Study& s, size_t k, const StudySweep& sw) { return s.stage_dir(k) + "/" + sw.name; }

std::string sweep_deck_text(const Study& s, size_t k, const StudySweep& sw, const std::string& laws) {
  std::istringstream is(sw.text);
  toml::value root = toml::parse(is, "study");
  toml::value& t = root["sweep"];
  t["name"] = s.name + "." + s.stages[k].name + "." + sw.name;
  t["dir"] = sweep_dir(s, k, sw);
  if (!laws.empty()) t["laws"] = laws;
  return "# Written by fulcrum-sweep study from " + s.path + " (stage " + std::to_string(k + 1) + " \"" +
         s.stages[k].name + "\", sweep \"" + sw.name + "\"). Do not edit: edit the study deck.\n" + toml::format(root);
}

struct Counts {
  int total = 0;
  std::map<RunStatus, int> n;
  int to_run = 0;
};
Counts count(const std::vector<Manifest>& ms, const RunOptions& ro) {
  Counts c;
  for (const auto& m : ms)
    for (const auto& r : m.runs) {
      const auto s = inspect_run(r);
      c.total++;
      c.n[s.status]++;
      if (should_run(s, ro)) c.to_run++;
    }
  return c;
}
std::string counts_text(Counts c) {
  std::ostringstream o;
  o << c.total << " runs:";
  for (RunStatus s : {RunStatus::completed, RunStatus::running, RunStatus::diverged, RunStatus::failed, RunStatus::pending})
    if (c.n[s]) o << " " << status_name(s) << " " << c.n[s];
  return o.str();
}

std::string fit_status_line(const std::string& laws_file) {
  // one line per law: verdicts of every family
  std::map<std::string, std::string> per;
  std::map<std::string, int> unfitted;
  for (const auto& v : read_verdicts(laws_file)) {
    if (!v.fitted && !v.family.empty()) {
      unfitted[v.law]++;
      continue;
    }
    auto& t = per[v.law];
    t += (t.empty() ? "" : ", ") + (v.family.empty() ? std::string() : v.family + ": ") +
         (!v.fitted ? "not fitted" : v.trusted ? "trusted" : "NOT TRUSTWORTHY");
  }
  std::string o;
  for (const auto& l : kLaws) {
    if (!per.count(l) && !unfitted.count(l)) continue;
    std::string t = per[l];
    if (unfitted[l]) t += (t.empty() ? "" : "; ") + std::string("not fitted for ") + std::to_string(unfitted[l]) + " famil" + (unfitted[l] == 1 ? "y" : "ies");
    o += "      " + law_title(l) + ": " + t + "\n";
  }
  return o;
}

}  // namespace

std::string default_fit_executable() {
  if (const char* e = std::getenv("FULCRUM_FIT"); e && *e) return e;
  const fs::path self = self_executable();
  for (const fs::path& p : {self.parent_path() / "fulcrum-fit", self.parent_path().parent_path().parent_path() / "postprocess" / "fulcrum-fit"})
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  return "fulcrum-fit";
}

int run_study(const Study& s, const StudyOptions& o) {
  const std::string fit = o.fit.empty() ? default_fit_executable() : o.fit;
  std::error_code ec;
  fs::create_directories(s.dir, ec);
  if (ec) throw SweepError("cannot create " + s.dir + ": " + ec.message());
  RunOptions ro;
  ro.jobs = o.jobs > 0 ? o.jobs : s.jobs;
  ro.train = o.train.empty() ? default_train_executable() : o.train;
  ro.launcher = o.launcher;
  ro.retry_failed = o.retry_failed;
  ro.quiet = o.quiet;
  std::printf("study %s (%s): %zu stage(s), gate \"%s\"\n", s.name.c_str(), s.dir.c_str(), s.stages.size(), s.gate.c_str());
  std::vector<std::string> lists;
  std::string laws_prev = s.laws;
  for (size_t k = 0; k < s.stages.size(); ++k) {
    const StudyStage& st = s.stages[k];
    const std::string sdir = s.stage_dir(k);
    const std::string tag = "stage " + std::to_string(k + 1) + " \"" + st.name + "\"";
    const std::string laws = st.laws == "previous" ? laws_prev : st.laws == "none" ? "" : st.laws;
    fs::create_directories(sdir, ec);
    // ---- plan every sweep of the stage with the laws in force
    std::vector<Manifest> ms;
    for (const auto& sw : st.sweeps) {
      const std::string deck = sdir + "/" + sw.name + ".sweep.toml";
      const std::string text = sweep_deck_text(s, k, sw, laws);
      try {
        write_file(deck, text);
        const SweepPlan p = plan_sweep_text(text, deck);
        write_plan(p);
        ms.push_back(read_manifest(p.dir));
      } catch (const SweepError& e) {
        std::fflush(stdout);
        const bool changed = std::string(e.what()).find("from a different deck") != std::string::npos;
        throw StudyError(s.path + ":" + std::to_string(sw.line) + ": " + tag + ", sweep \"" + sw.name +
                         "\": cannot be planned" + (laws.empty() ? "" : " (laws " + laws + ")") + ": " + e.what() +
                         (changed ? " (in a study: the deck or the laws it is planned from changed since the run was "
                                    "made; give [study] dir a new directory, or delete " + sdir + " and the directories of "
                                    "the stages after it to redo them)"
                                  : ""));
      }
      lists.push_back(ms.back().dir + "/runs.list");
    }
    Counts c = count(ms, ro);
    std::printf("%s: %zu sweep(s), %s%s\n", tag.c_str(), ms.size(), counts_text(c).c_str(),
                laws.empty() ? "" : (", planned from " + laws).c_str());
    std::fflush(stdout);
    // ---- run (or submit) what needs running
    if (c.to_run > 0 && o.slurm) {
      SubmitOptions so = o.submit;
      so.postprocess = false;
      so.retry_failed = o.retry_failed;
      if (so.train.empty()) so.train = ro.train;
      std::vector<std::string> jobs;
      for (const auto& m : ms) {
        const SubmitResult r = submit_sweep(m, so);
        jobs.insert(jobs.end(), r.array_jobs.begin(), r.array_jobs.end());
        for (const auto& sc : r.scripts) std::printf("script %s\n", sc.c_str());
      }
      // the fit, the gate and the next stage: this command again, after the arrays
      const std::string tdir = so.templates.empty() ? default_templates_dir() : so.templates;
      std::string args;
      auto add = [&](const std::string& a) { args += " " + shell_word(a); };
      add("--throttle"), add(std::to_string(so.throttle));
      for (const auto& a : so.sbatch_args) add("--sbatch=" + a);
      add("--train"), add(so.train);
      add("--fit"), add(fit);
      add("--launcher"), add(so.launcher);
      add("--templates"), add(tdir);
      if (o.retry_failed) add("--retry-failed");
      std::ifstream tf(tdir + "/study-next.sbatch");
      if (!tf) throw SweepError("cannot read job script template " + tdir + "/study-next.sbatch");
      std::stringstream ts;
      ts << tf.rdbuf();
      fs::create_directories(s.dir + "/slurm/logs", ec);
      const std::string script = fill_template(ts.str(),
                                               {{"JOB_NAME", s.name + "-next"},
                                                {"LOG_DIR", s.dir + "/slurm/logs"},
                                                {"CWD", fs::current_path().string()},
                                                {"FULCRUM_SWEEP", self_executable()},
                                                {"STUDY_DECK", shell_word(absolute(s.path))},
                                                {"ARGS", args}},
                                               tdir + "/study-next.sbatch");
      const std::string path = s.dir + "/slurm/study-next-" + std::to_string(k + 1) + ".sbatch";
      write_file(path, script);
      std::vector<std::string> sargs = so.sbatch_args;
      if (!jobs.empty()) {
        std::string dep = "--dependency=afterany";
        for (const auto& j : jobs) dep += ":" + j;
        sargs.push_back(dep);
      }
      const std::string next = submit_job(sargs, path, so.dry_run);
      std::string arr;
      for (const auto& j : jobs) arr += (arr.empty() ? "" : ",") + j;
      std::printf("script %s\n", path.c_str());
      std::printf("FULCRUM_STUDY_SUBMIT study=%s stage=%s arrays=%s next=%s\n", s.name.c_str(), st.name.c_str(),
                  arr.empty() ? "-" : arr.c_str(), next.c_str());
      return kStudyDone;
    }
    if (c.to_run > 0) {
      Manifest all;
      all.name = s.name + "." + st.name;
      all.dir = sdir;
      for (size_t i = 0; i < ms.size(); ++i)  // ids as <sweep>/<id>: sweeps of a stage share ids
        for (ManifestRun r : ms[i].runs) {
          r.id = st.sweeps[i].name + "/" + r.id;
          all.runs.push_back(r);
        }
      const RunSummary r = run_sweep(all, ro);
      if (r.interrupted) {
        std::printf("study %s: interrupted in %s; run the same command again to resume\n", s.name.c_str(), tag.c_str());
        return kStudyInterrupted;
      }
      c = count(ms, ro);
      std::printf("%s: %s\n", tag.c_str(), counts_text(c).c_str());
    }
    write_file(s.dir + "/runs.csv", study_runs_csv(s));  // every planned run so far, one line each
    if (c.n[RunStatus::running] || c.n[RunStatus::pending]) {
      std::printf("%s: %d run(s) still running elsewhere (another fulcrum-sweep or a Slurm job); run again when they end\n",
                  tag.c_str(), c.n[RunStatus::running] + c.n[RunStatus::pending]);
      return o.slurm ? kStudyDone : kStudyError;
    }
    if (c.n[RunStatus::completed] == 0) {
      std::fflush(stdout);
      std::fprintf(stderr, "study %s: %s: no run completed (%d failed, %d diverged); see `fulcrum-sweep study status %s`\n",
                   s.name.c_str(), tag.c_str(), c.n[RunStatus::failed], c.n[RunStatus::diverged], s.path.c_str());
      return kStudyError;
    }
    // ---- fit the runs of stages 1..k, unless nothing changed since the last fit
    const std::string fdir = sdir + "/fit";
    std::vector<std::string> cmd = {fit, "fit"};
    cmd.insert(cmd.end(), lists.begin(), lists.end());
    for (const std::string& a : {std::string("--out"), fdir, std::string("--bootstrap"), std::to_string(s.bootstrap),
                                 std::string("--seed"), std::to_string(s.seed)})
      cmd.push_back(a);
    if (!s.plots) cmd.push_back("--no-plots");
    if (s.gate == "trusted") {
      std::string req;
      for (const auto& l : st.require) req += (req.empty() ? "" : ",") + l;
      cmd.push_back("--require");
      cmd.push_back(req);
    }
    cmd.insert(cmd.end(), s.fit_args.begin(), s.fit_args.end());
    const std::string key = fit_key(cmd, lists);
    const std::string state_file = sdir + "/stage.state";
    auto state = read_kv(state_file);
    int rc = 0;
    if (read_file(sdir + "/fit.key") == key && state.count("fit_rc")) {
      rc = std::atoi(state["fit_rc"].c_str());
      std::printf("%s: fit is up to date (%s)\n", tag.c_str(), fdir.c_str());
    } else {
      std::printf("%s: fitting the runs of stage(s) 1-%zu -> %s\n", tag.c_str(), k + 1, fdir.c_str());
      std::fflush(stdout);
      fs::remove(fdir + "/laws.toml", ec);
      fs::remove(sdir + "/fit.key", ec);
      rc = run_logged(cmd, sdir + "/fit.log");
      if (rc != 0 && rc != 3 && rc != 4) {
        std::fflush(stdout);
        std::fprintf(stderr, "study %s: %s: fulcrum-fit exited %d; see %s/fit.log:\n%s", s.name.c_str(), tag.c_str(), rc,
                     sdir.c_str(), read_file(sdir + "/fit.log").c_str());
        return kStudyError;
      }
      write_file(sdir + "/fit.key", key);
    }
    // ---- the gate
    std::vector<std::string> ok;
    std::set<std::string> kinds;  // the families the next stage plans from these laws
    for (const auto& sw : s.stages[k + 1 < s.stages.size() ? k + 1 : k].sweeps) kinds.insert(sw.moe ? "moe" : "dense");
    const auto bad = check_gate(fdir + "/laws.toml", sdir + "/fit.log", st.require, s.gate, kinds, &ok);
    std::string st_text = "fit_rc=" + std::to_string(rc) + "\ngate=" + (bad.empty() ? "passed" : "stopped") + "\n";
    for (const auto& b : bad) st_text += "reason=" + b.substr(0, b.find('\n')) + "\n";
    write_file(state_file, st_text);
    if (!bad.empty()) {
      std::printf("study %s: STOPPED at %s: its fit does not give %s the next step needs (gate \"%s\"):\n", s.name.c_str(),
                  tag.c_str(), st.require.size() == 1 ? "the law" : "the laws", s.gate.c_str());
      for (const auto& b : bad) std::printf("  - %s\n", b.c_str());
      std::printf("next: change stage %zu \"%s\" of %s as the reasons say (e.g. extend its ladder or grid, add "
                  "budgets), then run `fulcrum-sweep study %s %s` again: completed runs are kept and only new runs "
                  "train. Fit report: %s%s\n",
                  k + 1, st.name.c_str(), s.path.c_str(), o.slurm ? "submit" : "run", s.path.c_str(),
                  fs::exists(fdir + "/report.txt") ? (fdir + "/report.txt").c_str() : (sdir + "/fit.log").c_str(),
                  s.gate == "trusted" ? "; or set [study] gate = \"fitted\" to go on with laws that are fitted but flagged" : "");
      std::printf("FULCRUM_STUDY study=%s status=stopped stage=%s\n", s.name.c_str(), st.name.c_str());
      return kStudyStopped;
    }
    std::printf("%s: gate passed:\n", tag.c_str());
    for (const auto& l : ok) std::printf("  %s\n", l.c_str());
    std::fflush(stdout);
    laws_prev = fdir + "/laws.toml";
  }
  // ---- final laws and the wind tunnel
  const std::string final_laws = s.dir + "/laws.toml";
  fs::copy_file(laws_prev, final_laws, fs::copy_options::overwrite_existing, ec);
  if (ec) throw SweepError("cannot write " + final_laws + ": " + ec.message());
  std::vector<std::string> ok;
  std::set<std::string> kinds;
  for (const auto& st : s.stages)
    for (const auto& sw : st.sweeps) kinds.insert(sw.moe ? "moe" : "dense");
  const auto bad = check_gate(final_laws, "", s.require, s.gate, kinds, &ok);
  write_file(s.dir + "/final.state", std::string("gate=") + (bad.empty() ? "passed" : "stopped") + "\n");
  if (!bad.empty()) {
    std::printf("study %s: STOPPED: the final laws (%s) do not give what [study] require asks:\n", s.name.c_str(), final_laws.c_str());
    for (const auto& b : bad) std::printf("  - %s\n", b.c_str());
    std::printf("next: extend the last stage (more ablation points or budgets), then run `fulcrum-sweep study %s %s` again\n",
                o.slurm ? "submit" : "run", s.path.c_str());
    std::printf("FULCRUM_STUDY study=%s status=stopped stage=final\n", s.name.c_str());
    return kStudyStopped;
  }
  std::printf("final laws %s:\n", final_laws.c_str());
  for (const auto& l : ok) std::printf("  %s\n", l.c_str());
  std::string wt = "-";
  if (s.windtunnel) {
    std::vector<std::string> cmd = {fit, "windtunnel"};
    cmd.insert(cmd.end(), lists.begin(), lists.end());
    cmd.push_back("--out");
    cmd.push_back(s.dir + "/windtunnel");
    const int rc = run_logged(cmd, s.dir + "/windtunnel.log");
    const std::string log = read_file(s.dir + "/windtunnel.log");
    std::printf("%s", log.substr(log.find('\n') + 1).c_str());
    if (rc == 0) wt = s.dir + "/windtunnel/windtunnel.txt";
    else std::printf("wind tunnel: not available (fulcrum-fit windtunnel exited %d)\n", rc);
  }
  std::printf("FULCRUM_STUDY study=%s status=completed stages=%zu laws=%s windtunnel=%s\n", s.name.c_str(),
              s.stages.size(), final_laws.c_str(), wt.c_str());
  return kStudyDone;
}

std::string study_runs_csv(const Study& s) {
  std::string csv = runs_csv_header();
  for (size_t k = 0; k < s.stages.size(); ++k)
    for (const auto& sw : s.stages[k].sweeps)
      if (fs::exists(sweep_dir(s, k, sw) + "/manifest.toml"))
        csv += runs_csv_rows(read_manifest(sweep_dir(s, k, sw)), s.stages[k].name, sw.name);
  return csv;
}

std::string study_status(const Study& s, bool tables) {
  std::ostringstream o;
  o << "study " << s.name << " (" << s.dir << "): " << s.stages.size() << " stage(s), gate \"" << s.gate << "\"\n";
  RunOptions ro;
  bool blocked = false;
  for (size_t k = 0; k < s.stages.size(); ++k) {
    const StudyStage& st = s.stages[k];
    const std::string sdir = s.stage_dir(k);
    o << "stage " << k + 1 << " \"" << st.name << "\" (requires";
    for (const auto& l : st.require) o << " " << l;
    o << "): ";
    std::vector<Manifest> ms;
    for (const auto& sw : st.sweeps)
      if (fs::exists(sweep_dir(s, k, sw) + "/manifest.toml")) ms.push_back(read_manifest(sweep_dir(s, k, sw)));
    if (ms.empty()) {
      o << (blocked || k > 0 ? "not planned yet (planned from stage " + std::to_string(k) + "'s laws once its gate passes)"
                             : "not planned yet")
        << "\n";
      blocked = true;
      continue;
    }
    Counts c = count(ms, ro);
    auto state = read_kv(sdir + "/stage.state");
    const bool complete = c.n[RunStatus::pending] == 0 && c.n[RunStatus::running] == 0;
    std::string what = !complete ? "running" : state.count("gate") == 0 ? "runs done, not fitted yet"
                                   : state["gate"] == "passed"          ? "fitted, gate passed"
                                                                        : "fitted, STOPPED at the gate";
    o << what << "; " << counts_text(c) << "\n";
    if (state.count("reason")) {
      std::istringstream is(state["reason"]);
      std::string l;
      while (std::getline(is, l)) o << "    reason: " << l << "\n";
    }
    if (fs::exists(sdir + "/fit/laws.toml")) o << "    fit " << sdir << "/fit:\n" << fit_status_line(sdir + "/fit/laws.toml");
    for (const auto& m : ms) {
      std::string t = status_report(m, tables);
      std::istringstream is(t);
      std::string l;
      while (std::getline(is, l)) o << "    " << l << "\n";
    }
    if (!(complete && state["gate"] == "passed")) blocked = true;
  }
  auto fin = read_kv(s.dir + "/final.state");
  if (fin.count("gate")) {
    o << "final laws " << s.dir << "/laws.toml: " << (fin["gate"] == "passed" ? "complete" : "STOPPED at [study] require")
      << "\n";
    if (fs::exists(s.dir + "/laws.toml")) o << fit_status_line(s.dir + "/laws.toml");
  } else {
    o << "final laws: not yet\n";
  }
  if (fs::exists(s.dir + "/windtunnel/windtunnel.txt")) o << read_file(s.dir + "/windtunnel/windtunnel.txt");
  else if (s.windtunnel) o << "wind tunnel: not yet\n";
  return o.str();
}

}  // namespace fulcrum::sweep
