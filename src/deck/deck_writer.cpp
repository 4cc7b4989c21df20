// deck_writer.cpp: the resolved deck (every key of the schema, defaults
// included) as TOML that reads back to the same RunConfig.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "deck/deck_reader.hpp"
#include "deck/deck_schema.hpp"

namespace fulcrum {

namespace {

// The reader's line limit (toml_input.cpp); a longer weights line becomes a sub-table.
constexpr std::size_t kMaxLineBytes = 4096;

// A key whose default only stands for "not given" (a required key, or one
// left out at its default) is written only when it was given.
bool written(const KeySpec& k, const RunConfig& config) {
  if (k.requirement.empty() && k.written_at_default) return true;
  static const RunConfig defaults;
  return toml_value_text(k, k.get(config)) != toml_value_text(k, k.get(defaults));
}

}  // namespace

std::string shortest_double_text(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

std::string toml_quoted(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

std::string toml_key_text(const std::string& name) {
  const bool bare = !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return std::isalnum(c) || c == '_' || c == '-';
  });
  return bare ? name : toml_quoted(name);
}

std::string toml_value_text(const KeySpec& key, const KeyValue& v) {
  switch (key.type) {
    case KeyType::Weights: {
      std::string out = "{";
      const char* sep = " ";
      for (const auto& [name, w] : v.weights) {  // std::map: sorted by name
        out += sep + toml_key_text(name) + " = " + shortest_double_text(w);
        sep = ", ";
      }
      return out + " }";
    }
    case KeyType::Integer: return std::to_string(v.integer);
    case KeyType::Float: return shortest_double_text(v.number);
    case KeyType::String: return toml_quoted(v.text);
    case KeyType::Boolean: return v.boolean ? "true" : "false";
  }
  return "";
}

std::string resolved_deck_toml(const RunConfig& config) {
  std::ostringstream os;
  os << "# Fulcrum resolved input deck: every key, defaults included.\n";
  std::string src = config.deck_path;
  std::replace_if(src.begin(), src.end(), [](char ch) { return ch == '\n' || ch == '\r'; }, ' ');
  if (!src.empty()) os << "# Resolved from: " << src << "\n";
  const bool mixture = !config.data.manifest_path.empty();
  for (const auto& sec : deck_sections()) {
    if (sec == "moe" && !config.moe.enabled) {
      os << "\n# [moe] absent: dense model\n";
      continue;
    }
    os << "\n[" << sec << "]\n";
    std::string sub_table;  // a weights table too long for one line: closes the section
    for (const auto& k : deck_keys()) {
      if (k.section != sec || !written(k, config)) continue;
      const KeyValue v = k.get(config);
      std::string line = k.name + " = " + toml_value_text(k, v);
      if (k.dotted() == "data.tokenizer" && mixture) line += "  # ignored: the manifest names the tokenizer";
      if (k.type == KeyType::Weights && line.size() > kMaxLineBytes) {
        sub_table = "\n[" + sec + "." + k.name + "]\n";
        for (const auto& [name, w] : v.weights) sub_table += toml_key_text(name) + " = " + shortest_double_text(w) + "\n";
        continue;
      }
      os << line << "\n";
    }
    os << sub_table;
  }
  return os.str();
}

std::string training_fingerprint(const RunConfig& config) {
  RunConfig copy = config;
  copy.parallel = ParallelSection{};
  copy.output = OutputSection{};
  copy.deck_path.clear();
  copy.deck_text.clear();
  std::string text = resolved_deck_toml(copy);
  // Routing keys added after checkpoints already existed: left out while at
  // their defaults, so checkpoints of earlier versions (the paper's recipe)
  // still resume.
  const RunConfig defaults;
  for (const char* name : {"score_function", "route_scale", "balance_loss_scope", "bias_balancing",
                           "bias_update_rate"}) {
    const KeySpec* k = find_deck_key("moe", name);
    const std::string line = k->name + " = " + toml_value_text(*k, k->get(copy)) + "\n";
    if (line != k->name + " = " + toml_value_text(*k, k->get(defaults)) + "\n") continue;
    const std::size_t at = text.find("\n" + line);
    if (at != std::string::npos) text.erase(at + 1, line.size());
  }
  return text;
}

}  // namespace fulcrum
