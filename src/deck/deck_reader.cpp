// deck_reader.cpp: reading decks against the schema (deck_schema.hpp).
//
//   parse (toml_input) -> per layer, per key in line order: known? type?
//   value valid (schema)? -> settings / --set (same checks) -> required keys
//   -> cross-key rules (schema).
// The first problem found is thrown as a DeckError naming file, line, key.
#include "deck/deck_reader.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "deck/deck_schema.hpp"
#include "deck/toml_input.hpp"

namespace fulcrum {

namespace {

// Where a key's value came from; `rank` orders them (layer index, then the
// settings after every layer) for "which source was given second".
struct Origin {
  std::string file;
  int line = 0;
  bool setting = false;  // a --set or a DeckSetting
  std::pair<int, int> rank{0, 0};
};

constexpr int kSettingsRank = 1 << 30;

const char* expected_type(KeyType t) {
  switch (t) {
    case KeyType::Integer: return "an integer";
    case KeyType::Float: return "a number (float or integer)";
    case KeyType::String: return "a string";
    case KeyType::Boolean: return "a boolean (true/false)";
    case KeyType::Weights: return "a table of group = weight, e.g. { books = 0.5, code = 0.5 }";
  }
  return "?";
}

bool is_section(const std::string& s) {
  const auto& n = deck_sections();
  return std::find(n.begin(), n.end(), s) != n.end();
}

// The section a misplaced key belongs in ("" if none).
std::string home_section(const std::string& key) {
  for (const auto& k : deck_keys()) {
    if (k.name == key || k.field == key) return k.section;
  }
  return "";
}

std::string unknown_section_message(const std::string& sec) {
  std::string msg = "unknown section";
  const std::string near = nearest_name(sec, deck_sections());
  if (!near.empty()) msg += "; did you mean [" + near + "]?";
  return msg + " (valid sections: " + join_names(deck_sections()) + ")";
}

template <class Map>
std::vector<std::pair<std::string, const toml::value*>> by_line(const Map& table) {
  std::vector<std::pair<std::string, const toml::value*>> v;
  for (const auto& kv : table) v.emplace_back(kv.first, &kv.second);
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
    const int la = line_of(*a.second), lb = line_of(*b.second);
    return la != lb ? la < lb : a.first < b.first;
  });
  return v;
}

class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) { out_.config.deck_path = path_; }

  void set_text(const std::string& text) { out_.config.deck_text = text; }

  void apply_layer(const DeckLayer& layer, int index) {
    const toml::value& root = layer.root;
    if (!root.is_table()) throw DeckError(layer.path, 0, "", "the deck is not a TOML table");
    for (const auto& [sec, sv] : by_line(root.as_table())) {
      if (layer.foreign.count(sec)) continue;
      const Origin at{layer.path, line_of(*sv), false, {index, line_of(*sv)}};
      if (!is_section(sec)) {
        if (!sv->is_table()) {
          const std::string home = home_section(sec);
          std::string msg = "key '" + excerpt(sec) + "' is outside any section";
          msg += home.empty() ? "; valid sections: " + join_names(deck_sections()) : "; it belongs in [" + home + "]";
          fail(at, "", msg);
        }
        fail(at, sec, unknown_section_message(sec));
      }
      if (!sv->is_table()) {
        fail(at, sec, std::string("expected a section (table), got ") + toml_type_name(sv->type()));
      }
      if (sec == "moe") moe_present_ = true;
      for (const auto& [key, v] : by_line(sv->as_table())) {
        const Origin kat{layer.path, line_of(*v), false, {index, line_of(*v)}};
        const KeySpec& spec = lookup(sec, key, kat);
        set_value(spec, *v, kat);
      }
    }
  }

  // "section.key=value" from the command line.
  void apply_override(const std::string& o) {
    const Origin at = next_setting(kSetFile, 0);
    const auto eq = o.find('=');
    const auto trim = [](const std::string& s) {
      const auto b = s.find_first_not_of(" \t");
      const auto e = s.find_last_not_of(" \t");
      return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    };
    const std::string lhs = trim(o.substr(0, eq));
    const auto dot = lhs.find('.');
    if (eq == std::string::npos || dot == std::string::npos || dot == 0 || dot + 1 == lhs.size()) {
      fail(at, "", "'" + excerpt(o) + "': expected section.key=value, e.g. train.tokens=200000");
    }
    const KeySpec& spec = lookup_dotted(lhs, at);
    const std::string rhs = trim(o.substr(eq + 1));
    int limit_line = 0;
    std::string limit;
    if (breaks_toml_limits("v = " + rhs + "\n", &limit_line, &limit)) fail(at, spec.dotted(), limit);
    toml::value doc;
    bool parsed = false;
    try {
      std::istringstream is("v = " + rhs + "\n");
      doc = toml::parse(is, kSetFile);
      parsed = true;
    } catch (const std::exception&) {
    }
    if (spec.type == KeyType::String && !(parsed && doc.at("v").is_string())) {
      // Bare words are accepted for string keys (shells eat the quotes).
      doc = toml::table{{"v", toml::value(rhs)}};
    } else if (!parsed) {
      fail(at, spec.dotted(),
           "'" + excerpt(rhs) + "' is not a valid TOML value; expected " + expected_type(spec.type));
    }
    apply_setting(spec, doc.at("v"), at);
  }

  void apply_setting(const DeckSetting& s) {
    const Origin at = next_setting(s.file, s.line);
    apply_setting(lookup_dotted(s.key, at), s.value, at);
  }

  LoadedDeck finish() {
    check_required();
    check_cross_key_rules(out_, out_.config);
    return std::move(out_);
  }

 private:
  std::string path_;
  LoadedDeck out_;
  std::map<std::string, Origin> given_;  // dotted key -> where it was set (last)
  int setting_count_ = 0;
  bool moe_present_ = false;

  [[noreturn]] void fail(const Origin& o, const std::string& key, const std::string& msg) const {
    throw DeckError(o.file, o.line, key, msg);
  }

  Origin next_setting(const std::string& file, int line) {
    return Origin{file, line, true, {kSettingsRank, setting_count_++}};
  }

  const KeySpec& lookup_dotted(const std::string& dotted, const Origin& at) const {
    const auto dot = dotted.find('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == dotted.size()) {
      fail(at, "", "'" + excerpt(dotted) + "': expected section.key, e.g. train.tokens");
    }
    const std::string sec = dotted.substr(0, dot);
    if (!is_section(sec)) fail(at, sec, unknown_section_message(sec));
    return lookup(sec, dotted.substr(dot + 1), at);
  }

  const KeySpec& lookup(const std::string& sec, const std::string& key, const Origin& at) const {
    if (const KeySpec* k = find_deck_key(sec, key)) return *k;
    const std::vector<std::string> valid = deck_key_names(sec);
    std::string msg = "unknown key '" + excerpt(key) + "'";
    const std::string near = nearest_name(key, valid);
    if (sec == "moe" && key == "enabled") {
      msg += "; there is no moe.enabled: a [moe] section makes the model MoE, "
             "leave [moe] out for a dense model";
    } else if (!near.empty()) {
      msg += "; did you mean '" + near + "'?";
    } else {
      // The deck spelling of a renamed field, or a key from another section.
      std::string hint;
      for (const auto& k : deck_keys()) {
        if (k.section == sec && k.field == key) {
          hint = "; did you mean '" + k.name + "'?";
          break;
        }
      }
      if (hint.empty()) {
        const std::string home = home_section(key);
        if (!home.empty()) hint = "; it belongs in [" + home + "]";
      }
      if (hint.empty()) hint = " (valid keys in [" + sec + "]: " + join_names(valid) + ")";
      msg += hint;
    }
    fail(at, sec + "." + key, msg);
  }

  void apply_setting(const KeySpec& spec, const toml::value& v, const Origin& at) {
    set_value(spec, v, at);
    const std::string key = spec.dotted();
    // The run length is one choice: a setting of one of tokens/compute
    // replaces the deck's other one.
    const auto drop_other = [&](const char* other, auto clear) {
      auto it = given_.find(other);
      if (it != given_.end() && !it->second.setting) {
        given_.erase(it);
        out_.key_lines.erase(other);
        out_.key_files.erase(other);
        clear();
      }
    };
    if (key == "train.tokens") drop_other("train.compute", [&] { out_.config.train.compute = 0.0; });
    if (key == "train.compute") drop_other("train.tokens", [&] { out_.config.train.tokens = 0; });
  }

  // Type check, convert, check against the schema, then store.
  void set_value(const KeySpec& spec, const toml::value& v, const Origin& at) {
    const std::string key = spec.dotted();
    const auto wrong_type = [&]() {
      fail(at, key, std::string("wrong type: expected ") + expected_type(spec.type) + ", got " +
                        toml_type_with_text(v));
    };
    KeyValue val;
    val.type = spec.type;
    switch (spec.type) {
      case KeyType::Integer:
        if (!v.is_integer()) wrong_type();
        if (!exact_integer(v, &val.integer)) {
          fail(at, key, "integer " + written_text(v) + " does not fit in 64 bits; must be " + spec.range_text());
        }
        break;
      case KeyType::Float:
        val.number = number(spec, v, at, "");
        break;
      case KeyType::String:
        if (!v.is_string()) wrong_type();
        val.text = v.as_string().str;
        break;
      case KeyType::Boolean:
        if (!v.is_boolean()) wrong_type();
        val.boolean = v.as_boolean();
        break;
      case KeyType::Weights:
        if (!v.is_table()) wrong_type();
        val.weights = weights(spec, v, at);
        break;
    }
    const std::string err = spec.value_error(val, spec.type == KeyType::Float ? written_text(v) : "");
    if (!err.empty()) fail(at, key, err);
    spec.set(out_.config, val);
    given_[key] = at;
    if (at.file == kSetFile) {
      out_.overridden_keys.insert(key);  // the deck's line, if any, is kept
    } else {
      out_.overridden_keys.erase(key);
      out_.key_lines[key] = at.line;
      if (at.file != path_) {
        out_.key_files[key] = at.file;
      } else {
        out_.key_files.erase(key);
      }
    }
    if (spec.section == "moe") moe_present_ = true;
  }

  // A float key (or one weight): floats or integers that fit in 64 bits.
  double number(const KeySpec& spec, const toml::value& v, const Origin& at, const std::string& what) const {
    if (v.is_floating()) return v.as_floating();
    if (!v.is_integer()) {
      std::string got = toml_type_with_text(v);
      if (!what.empty()) got = got.substr(got.find(' ') + 1);  // "got table", as weights always said
      fail(at, spec.dotted(), what + "wrong type: expected a number (float or integer), got " + got);
    }
    std::int64_t i = 0;
    if (!exact_integer(v, &i)) {
      fail(at, spec.dotted(),
           what + "integer " + written_text(v) + " does not fit in 64 bits; must be " + spec.range_text());
    }
    return static_cast<double>(i);
  }

  // data.weights: every problem is reported at the line of the key, groups in
  // the order written.
  std::map<std::string, double> weights(const KeySpec& spec, const toml::value& v, const Origin& at) const {
    const auto& table = v.as_table();
    if (table.size() > kMaxWeightGroups) {
      fail(at, spec.dotted(), "too many groups: " + std::to_string(table.size()) + "; at most " +
                                  std::to_string(kMaxWeightGroups));
    }
    std::map<std::string, double> out;
    for (const auto& [group, w] : by_line(table)) {
      const double weight = number(spec, *w, at, "weight of group '" + excerpt(group) + "': ");
      const std::string err = spec.weight_error(group, weight, written_text(*w));
      if (!err.empty()) fail(at, spec.dotted(), err);
      out[group] = weight;
    }
    return out;
  }

  bool given(const std::string& k) const { return given_.count(k) != 0; }

  void check_required() {
    const auto missing = [&](const std::string& key, const std::string& what) {
      fail(Origin{path_, 0}, key, "missing required key (" + what + ")");
    };
    check_data_source(missing);
    if (!given("train.tokens") && !given("train.compute")) {
      missing("train.tokens", "give exactly one of train.tokens (training tokens) or train.compute (FLOPs)");
    }
    if (given("train.tokens") && given("train.compute")) {
      const Origin& t = given_.at("train.tokens");
      const Origin& c = given_.at("train.compute");
      const bool compute_later = c.rank >= t.rank;
      const std::string other = compute_later ? "tokens" : "compute";
      const Origin& second = compute_later ? c : t;
      fail(second, compute_later ? "train.compute" : "train.tokens",
           "give exactly one of train.tokens and train.compute (train." + other + " is set " +
               where(compute_later ? t : c, second) + ")");
    }
    out_.config.moe.enabled = moe_present_;
    if (moe_present_) {
      for (const auto& k : deck_keys()) {
        if (k.section != "moe" || k.requirement.empty() || given(k.dotted())) continue;
        missing(k.dotted(), "a [moe] section makes the model MoE and then needs num_experts, "
                            "num_active_experts and d_expert");
      }
    }
  }

  // "on line 3", "by --set", "in base.toml on line 3": where `o` was given,
  // said from the message about `from`.
  static std::string where(const Origin& o, const Origin& from) {
    if (o.file == kSetFile) return "by --set";
    const bool same_file = o.file == from.file || from.file == kSetFile;
    const std::string in = same_file ? "" : "in " + sanitize(o.file) + " ";
    return o.line > 0 ? in + "on line " + std::to_string(o.line) : (in.empty() ? "too" : in.substr(0, in.size() - 1));
  }

  // Exactly one data source: token files (train + valid) or a corpus
  // manifest with mixture weights (manifest + weights).
  template <class Missing>
  void check_data_source(const Missing& missing) {
    const std::vector<std::string> files = {"data.train", "data.valid"};
    const std::vector<std::string> mix = {"data.manifest", "data.weights"};
    // The first-set key of a source ("" if none): settings count as after
    // the layers, in the order they were given.
    const auto first = [&](const std::vector<std::string>& keys) {
      std::string best;
      for (const auto& k : keys) {
        if (!given(k)) continue;
        if (best.empty() || given_.at(k).rank < given_.at(best).rank) best = k;
      }
      return best;
    };
    const std::string f = first(files), m = first(mix);
    if (!f.empty() && !m.empty()) {
      const bool mix_later = given_.at(m).rank >= given_.at(f).rank;
      const std::string& second = mix_later ? m : f;
      const std::string& other = mix_later ? f : m;
      fail(given_.at(second), second,
           "give exactly one data source: train and valid (token files) or manifest and weights "
           "(a corpus manifest); " + other + " is set " + where(given_.at(other), given_.at(second)));
    }
    if (!m.empty()) {
      if (!given("data.manifest")) {
        missing("data.manifest", "data.weights is given: the mixture needs the corpus manifest "
                                 "(manifest.toml of fulcrum-data build)");
      }
      if (!given("data.weights")) {
        missing("data.weights", "data.manifest is given: the mixture needs a weight per group, "
                                "e.g. weights = { books = 0.5, code = 0.5 }");
      }
      return;
    }
    const char* either = "; or, instead of train and valid, give data.manifest and data.weights";
    if (!given("data.train")) missing("data.train", std::string("path of the training token file") + either);
    if (!given("data.valid")) missing("data.valid", std::string("path of the validation token file") + either);
  }
};

}  // namespace

DeckError LoadedDeck::error(const std::string& dotted_key, const std::string& message) const {
  if (overridden_keys.count(dotted_key)) return DeckError(kSetFile, 0, dotted_key, message);
  const auto line = key_lines.find(dotted_key);
  const auto file = key_files.find(dotted_key);
  return DeckError(file == key_files.end() ? config.deck_path : file->second,
                   line == key_lines.end() ? 0 : line->second, dotted_key, message);
}

DeckError LoadedDeck::error(const std::vector<std::string>& dotted_keys, const std::string& message) const {
  for (const auto& k : dotted_keys) {
    if (overridden_keys.count(k) || key_lines.count(k)) return error(k, message);
  }
  return error(dotted_keys.front(), message);
}

void check_cross_key_rules(const LoadedDeck& deck, const RunConfig& config) {
  if (const CrossKeyRule* rule = first_broken_rule(config)) throw deck.error(rule->keys, rule->message(config));
}

LoadedDeck read_deck_layers(const std::vector<DeckLayer>& layers, const std::vector<DeckSetting>& settings) {
  Reader reader(layers.empty() ? std::string() : layers.front().path);
  for (std::size_t i = 0; i < layers.size(); ++i) reader.apply_layer(layers[i], static_cast<int>(i));
  for (const auto& s : settings) reader.apply_setting(s);
  return reader.finish();
}

LoadedDeck read_deck_text(const std::string& text, const std::string& path_for_messages,
                          const std::vector<std::string>& overrides) {
  Reader reader(path_for_messages);
  reader.set_text(text);
  reader.apply_layer(DeckLayer{parse_toml_deck(text, path_for_messages), path_for_messages, {}}, 0);
  for (const auto& o : overrides) reader.apply_override(o);
  return reader.finish();
}

LoadedDeck read_deck(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DeckError(path, 0, "", "cannot open the deck file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw DeckError(path, 0, "", "cannot read the deck file");
  return read_deck_text(ss.str(), path, overrides);
}

}  // namespace fulcrum
