// deck_reader.cpp: TOML input deck -> RunConfig with strict validation.
//
// The reader is table driven: kKeys (built by key_table()) lists every deck
// key once with its type, range and accessors. Reading is
//   parse (toml11) -> per key in line order: known? type? range/enum?
//   -> --set overrides (same checks) -> required keys -> cross-key checks.
// The first problem found is thrown as a DeckError. See doc/input-decks.md.
#include "deck/deck_reader.hpp"

#include <toml.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <regex>
#include <sstream>

namespace fulcrum {

namespace {

constexpr const char* kSetFile = "--set";

// Longest excerpt of deck text (a key, a value, a line) echoed in a message,
// in characters after escaping; longer ones end in "...".
constexpr std::size_t kExcerptChars = 80;

// Length of the valid UTF-8 sequence at s[i] (1..4), or 0 if the bytes there
// are not valid UTF-8 (overlong forms, surrogates and > U+10FFFF are invalid).
std::size_t utf8_length(const std::string& s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xbf) return 0;
  }
  return n;
}

// Text made safe for a one-line message: \n and \r escaped as "\n" and "\r",
// other control characters (< 0x20, 0x7f) and bytes that are not valid UTF-8
// written as \xNN. The result is printable and valid UTF-8, and sanitising it
// again changes nothing. With max_chars > 0, at most that many characters (an
// escape counts as its length) are kept, the last three being "..." when the
// text was cut.
std::string sanitize(const std::string& s, std::size_t max_chars = 0) {
  std::string out;
  std::vector<std::pair<std::size_t, std::size_t>> pieces;  // (bytes, chars) of each piece
  std::size_t chars = 0;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::string piece;
    std::size_t len = c < 0x80 ? 1 : utf8_length(s, i);
    std::size_t width = 1;
    if (c == '\n') {
      piece = "\\n";
    } else if (c == '\r') {
      piece = "\\r";
    } else if (c < 0x20 || c == 0x7f || len == 0) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      piece = buf;
      len = 1;
    } else {
      piece = s.substr(i, len);
    }
    if (piece[0] == '\\' && piece.size() > 1 && c != '\\') width = piece.size();
    if (max_chars > 0 && chars + width > max_chars) {
      while (!pieces.empty() && chars + 3 > max_chars) {
        out.erase(out.size() - pieces.back().first);
        chars -= pieces.back().second;
        pieces.pop_back();
      }
      return out + "...";
    }
    out += piece;
    pieces.emplace_back(piece.size(), width);
    chars += width;
    i += len;
  }
  return out;
}

// Deck text echoed in a message: sanitised and capped.
std::string excerpt(const std::string& s) { return sanitize(s, kExcerptChars); }

std::string format_message(const std::string& file, int line, const std::string& key,
                           const std::string& message) {
  std::string out = sanitize(file);
  if (line > 0) out += ":" + std::to_string(line);
  out += ": ";
  if (!key.empty()) {
    const auto dot = key.find('.');
    if (dot == std::string::npos) {
      out += "[" + excerpt(key) + "]: ";
    } else {
      out += "[" + excerpt(key.substr(0, dot)) + "] " + excerpt(key.substr(dot + 1)) + ": ";
    }
  }
  // Every message is one line, whatever deck text it quotes.
  return out + sanitize(message);
}

}  // namespace

DeckError::DeckError(std::string file_, int line_, std::string key_, const std::string& message)
    : std::runtime_error(format_message(file_, line_, key_, message)),
      file(std::move(file_)),
      line(line_),
      key(std::move(key_)) {}

namespace {

// ---------------------------------------------------------------------------
// Key table

// Table: a map of name -> number (data.weights), the one non-scalar key.
enum class Kind { Int, UInt64, Float, String, Bool, Table };

struct Value {
  Kind kind = Kind::Int;
  std::int64_t i = 0;
  double f = 0.0;
  std::string s;
  bool b = false;
  std::map<std::string, double> m;  // Table
};

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();

struct FloatRange {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;
};
FloatRange closed(double lo, double hi) { return {lo, hi, false, false}; }
FloatRange open_closed(double lo, double hi) { return {lo, hi, true, false}; }
FloatRange closed_open(double lo, double hi) { return {lo, hi, false, true}; }
FloatRange open_open(double lo, double hi) { return {lo, hi, true, true}; }

struct KeySpec {
  std::string section;
  std::string name;   // deck spelling
  std::string field;  // RunConfig field name when it differs (hint only)
  Kind kind = Kind::Int;
  std::int64_t imin = 0, imax = kIntMax;  // Int / UInt64
  FloatRange frange;                      // Float (always finite as well)
  std::vector<std::string> choices;       // String: allowed values; empty = any non-empty
  // Extra single-key rule; returns "" when fine, else the error text.
  std::function<std::string(const Value&)> extra;
  std::function<void(RunConfig&, const Value&)> set;
  std::function<Value(const RunConfig&)> get;

  std::string dotted() const { return section + "." + name; }
};

template <class S>
KeySpec int_key(const char* sec, const char* name, S RunConfig::*s, int S::*f,
                std::int64_t lo, std::int64_t hi = kIntMax) {
  KeySpec k;
  k.section = sec;
  k.name = name;
  k.kind = Kind::Int;
  k.imin = lo;
  k.imax = hi;
  k.set = [s, f](RunConfig& c, const Value& v) { (c.*s).*f = static_cast<int>(v.i); };
  k.get = [s, f](const RunConfig& c) {
    Value v;
    v.kind = Kind::Int;
    v.i = (c.*s).*f;
    return v;
  };
  return k;
}

template <class S>
KeySpec u64_key(const char* sec, const char* name, S RunConfig::*s, std::uint64_t S::*f,
                std::int64_t lo, std::int64_t hi = kI64Max) {
  KeySpec k;
  k.section = sec;
  k.name = name;
  k.kind = Kind::UInt64;
  k.imin = lo;
  k.imax = hi;
  k.set = [s, f](RunConfig& c, const Value& v) {
    (c.*s).*f = static_cast<std::uint64_t>(v.i);
  };
  k.get = [s, f](const RunConfig& c) {
    Value v;
    v.kind = Kind::UInt64;
    v.i = static_cast<std::int64_t>((c.*s).*f);
    return v;
  };
  return k;
}

template <class S>
KeySpec float_key(const char* sec, const char* name, S RunConfig::*s, double S::*f,
                  FloatRange r) {
  KeySpec k;
  k.section = sec;
  k.name = name;
  k.kind = Kind::Float;
  k.frange = r;
  k.set = [s, f](RunConfig& c, const Value& v) { (c.*s).*f = v.f; };
  k.get = [s, f](const RunConfig& c) {
    Value v;
    v.kind = Kind::Float;
    v.f = (c.*s).*f;
    return v;
  };
  return k;
}

template <class S>
KeySpec string_key(const char* sec, const char* name, S RunConfig::*s, std::string S::*f,
                   std::vector<std::string> choices = {}, const char* field = "") {
  KeySpec k;
  k.section = sec;
  k.name = name;
  k.field = field;
  k.kind = Kind::String;
  k.choices = std::move(choices);
  k.set = [s, f](RunConfig& c, const Value& v) { (c.*s).*f = v.s; };
  k.get = [s, f](const RunConfig& c) {
    Value v;
    v.kind = Kind::String;
    v.s = (c.*s).*f;
    return v;
  };
  return k;
}

template <class S>
KeySpec bool_key(const char* sec, const char* name, S RunConfig::*s, bool S::*f) {
  KeySpec k;
  k.section = sec;
  k.name = name;
  k.kind = Kind::Bool;
  k.set = [s, f](RunConfig& c, const Value& v) { (c.*s).*f = v.b; };
  k.get = [s, f](const RunConfig& c) {
    Value v;
    v.kind = Kind::Bool;
    v.b = (c.*s).*f;
    return v;
  };
  return k;
}

// data.weights: group name -> mixture weight. Weights are in [0, 1e30]
// (finite; integers accepted), their sum > 0; at most kMaxWeightGroups
// groups, names 1-kMaxGroupNameBytes bytes without control characters (the
// corpus builder allows 1-64 characters of a-z 0-9 _ -; the trainer checks
// the names against the manifest).
constexpr std::size_t kMaxWeightGroups = 64;
constexpr std::size_t kMaxGroupNameBytes = 64;
constexpr double kMaxWeight = 1e30;

template <class S>
KeySpec table_key(const char* sec, const char* name, S RunConfig::*s,
                  std::map<std::string, double> S::*f) {
  KeySpec k;
  k.section = sec;
  k.name = name;
  k.kind = Kind::Table;
  k.frange = closed(0.0, kMaxWeight);
  k.set = [s, f](RunConfig& c, const Value& v) { (c.*s).*f = v.m; };
  k.get = [s, f](const RunConfig& c) {
    Value v;
    v.kind = Kind::Table;
    v.m = (c.*s).*f;
    return v;
  };
  return k;
}

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names = {"run",   "data",     "model", "moe",
                                                 "train", "parallel", "output"};
  return names;
}

// Ranges are documented in doc/input-decks.md; keep the two in step.
const std::vector<KeySpec>& key_table() {
  static const std::vector<KeySpec> table = [] {
    using R = RunConfig;
    std::vector<KeySpec> t;
    // [run]
    t.push_back(string_key("run", "name", &R::run, &RunSection::name));
    t.push_back(u64_key("run", "seed", &R::run, &RunSection::seed, 0));
    // [data]
    t.push_back(string_key("data", "train", &R::data, &DataSection::train_path, {}, "train_path"));
    t.push_back(string_key("data", "valid", &R::data, &DataSection::valid_path, {}, "valid_path"));
    t.push_back(string_key("data", "tokenizer", &R::data, &DataSection::tokenizer, {"byte"}));
    t.push_back(string_key("data", "manifest", &R::data, &DataSection::manifest_path, {},
                           "manifest_path"));
    t.push_back(table_key("data", "weights", &R::data, &DataSection::weights));
    // [model]
    t.push_back(int_key("model", "vocab_size", &R::model, &ModelSection::vocab_size, 2, 1 << 24));
    t.push_back(int_key("model", "d_model", &R::model, &ModelSection::d_model, 2, 1 << 16));
    t.push_back(int_key("model", "n_layers", &R::model, &ModelSection::n_layers, 1, 1024));
    t.push_back(int_key("model", "n_heads", &R::model, &ModelSection::n_heads, 1, 1024));
    t.push_back(int_key("model", "n_kv_heads", &R::model, &ModelSection::n_kv_heads, 1, 1024));
    t.push_back(int_key("model", "d_ffn", &R::model, &ModelSection::d_ffn, 1, 1 << 20));
    t.push_back(int_key("model", "seq_len", &R::model, &ModelSection::seq_len, 2, 1 << 20));
    t.push_back(float_key("model", "rope_theta", &R::model, &ModelSection::rope_theta,
                          open_closed(0.0, 1e12)));
    t.push_back(float_key("model", "norm_eps", &R::model, &ModelSection::norm_eps,
                          open_open(0.0, 1.0)));
    t.push_back(float_key("model", "init_std", &R::model, &ModelSection::init_std,
                          open_closed(0.0, 1.0)));
    // [moe]
    t.push_back(int_key("moe", "num_experts", &R::moe, &MoeSection::num_experts, 1, 1 << 16));
    t.push_back(int_key("moe", "num_active_experts", &R::moe, &MoeSection::num_active_experts,
                        1, 1 << 16));
    t.push_back(int_key("moe", "num_shared_experts", &R::moe, &MoeSection::num_shared_experts,
                        0, 1 << 16));
    t.push_back(int_key("moe", "d_expert", &R::moe, &MoeSection::d_expert, 1, 1 << 20));
    t.push_back(int_key("moe", "first_k_dense", &R::moe, &MoeSection::first_k_dense, 0, 1023));
    t.push_back(bool_key("moe", "renormalize_topk", &R::moe, &MoeSection::renormalize_topk));
    {
      KeySpec k = float_key("moe", "capacity_factor", &R::moe, &MoeSection::capacity_factor,
                            closed(0.0, 1e3));
      k.extra = [](const Value& v) -> std::string {
        if (v.f != 0.0 && v.f < 1.0) {
          return "out of range: must be 0 (dropless) or in [1, 1000]";
        }
        return "";
      };
      t.push_back(std::move(k));
    }
    t.push_back(float_key("moe", "aux_loss_coef", &R::moe, &MoeSection::aux_loss_coef,
                          closed(0.0, 1.0)));
    t.push_back(float_key("moe", "z_loss_coef", &R::moe, &MoeSection::z_loss_coef,
                          closed(0.0, 1.0)));
    t.push_back(string_key("moe", "score_function", &R::moe, &MoeSection::score_function,
                           {"softmax", "sigmoid"}));
    t.push_back(float_key("moe", "route_scale", &R::moe, &MoeSection::route_scale,
                          open_closed(0.0, 100.0)));
    t.push_back(string_key("moe", "balance_loss_scope", &R::moe, &MoeSection::balance_loss_scope,
                           {"micro_batch", "sequence", "global"}));
    t.push_back(bool_key("moe", "bias_balancing", &R::moe, &MoeSection::bias_balancing));
    t.push_back(float_key("moe", "bias_update_rate", &R::moe, &MoeSection::bias_update_rate,
                          open_closed(0.0, 1.0)));
    // [train]
    t.push_back(u64_key("train", "tokens", &R::train, &TrainSection::tokens, 1));
    t.push_back(float_key("train", "compute", &R::train, &TrainSection::compute,
                          open_closed(0.0, 1e30)));
    t.push_back(float_key("train", "compute_budget", &R::train, &TrainSection::compute_budget,
                          open_closed(0.0, 1e30)));
    t.push_back(u64_key("train", "batch_tokens", &R::train, &TrainSection::batch_tokens, 1,
                        std::int64_t{1} << 40));
    t.push_back(int_key("train", "micro_batch_size", &R::train, &TrainSection::micro_batch_size,
                        1, 1 << 16));
    t.push_back(float_key("train", "lr", &R::train, &TrainSection::lr, open_closed(0.0, 1.0)));
    t.push_back(string_key("train", "lr_schedule", &R::train, &TrainSection::lr_schedule,
                           {"wsd", "cosine"}));
    t.push_back(float_key("train", "warmup_fraction", &R::train, &TrainSection::warmup_fraction,
                          closed(0.0, 1.0)));
    t.push_back(float_key("train", "decay_fraction", &R::train, &TrainSection::decay_fraction,
                          closed(0.0, 1.0)));
    t.push_back(float_key("train", "final_lr_fraction", &R::train,
                          &TrainSection::final_lr_fraction, closed(0.0, 1.0)));
    t.push_back(float_key("train", "weight_decay", &R::train, &TrainSection::weight_decay,
                          closed(0.0, 1.0)));
    t.push_back(float_key("train", "beta1", &R::train, &TrainSection::beta1, closed_open(0.0, 1.0)));
    t.push_back(float_key("train", "beta2", &R::train, &TrainSection::beta2, closed_open(0.0, 1.0)));
    t.push_back(float_key("train", "eps", &R::train, &TrainSection::eps, open_open(0.0, 1.0)));
    t.push_back(float_key("train", "grad_clip", &R::train, &TrainSection::grad_clip,
                          closed(0.0, 1e6)));
    t.push_back(int_key("train", "log_interval", &R::train, &TrainSection::log_interval, 1));
    t.push_back(int_key("train", "eval_interval", &R::train, &TrainSection::eval_interval, 1));
    t.push_back(u64_key("train", "eval_tokens", &R::train, &TrainSection::eval_tokens, 1,
                        std::int64_t{1} << 40));
    t.push_back(float_key("train", "divergence_factor", &R::train,
                          &TrainSection::divergence_factor, open_closed(1.0, 1e6)));
    t.push_back(int_key("train", "checkpoint_interval", &R::train,
                        &TrainSection::checkpoint_interval, 0));
    // resolved against the build and the CPU/GPU by resolve_gemm() (gemm.hpp)
    t.push_back(string_key("train", "precision", &R::train, &TrainSection::precision,
                           {"auto", "fp32", "bf16"}));
    t.push_back(string_key("train", "gemm_backend", &R::train, &TrainSection::gemm_backend,
                           {"auto", "kokkos", "onednn", "cublas"}));
    // [parallel]
    t.push_back(int_key("parallel", "world_size", &R::parallel, &ParallelSection::world_size, 0,
                        1 << 20));
    t.push_back(int_key("parallel", "expert_parallel", &R::parallel,
                        &ParallelSection::expert_parallel, 1, 1 << 16));
    t.push_back(string_key("parallel", "dispatcher", &R::parallel, &ParallelSection::dispatcher,
                           {"local", "mpi_alltoall", "nccl"}));
    // [output]
    t.push_back(string_key("output", "dir", &R::output, &OutputSection::dir));
    t.push_back(bool_key("output", "overwrite", &R::output, &OutputSection::overwrite));
    return t;
  }();
  return table;
}

const KeySpec* find_key(const std::string& section, const std::string& name) {
  for (const auto& k : key_table()) {
    if (k.section == section && k.name == name) return &k;
  }
  return nullptr;
}

std::vector<std::string> keys_of(const std::string& section) {
  std::vector<std::string> out;
  for (const auto& k : key_table()) {
    if (k.section == section) out.push_back(k.name);
  }
  return out;
}

bool is_section(const std::string& s) {
  const auto& n = section_names();
  return std::find(n.begin(), n.end(), s) != n.end();
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

// ---------------------------------------------------------------------------
// Formatting

// Shortest text that reads back as exactly the same double, always TOML-float
// syntax (has '.', an exponent, inf or nan).
std::string format_double(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// Number for messages: integers without a trailing ".0".
std::string format_number(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) {
    return std::to_string(static_cast<long long>(d));
  }
  return format_double(d);
}

std::string toml_quote(const std::string& s) {
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

std::string range_text(const KeySpec& k) {
  if (k.kind == Kind::Int || k.kind == Kind::UInt64) {
    const std::int64_t top = k.kind == Kind::Int ? kIntMax : kI64Max;
    if (k.imax >= top) return ">= " + std::to_string(k.imin);
    return "in [" + std::to_string(k.imin) + ", " + std::to_string(k.imax) + "]";
  }
  const FloatRange& r = k.frange;
  if (std::isinf(r.hi)) return (r.lo_open ? "> " : ">= ") + format_number(r.lo);
  return std::string("in ") + (r.lo_open ? "(" : "[") + format_number(r.lo) + ", " +
         format_number(r.hi) + (r.hi_open ? ")" : "]");
}

const char* type_name(toml::value_t t) {
  switch (t) {
    case toml::value_t::boolean: return "boolean";
    case toml::value_t::integer: return "integer";
    case toml::value_t::floating: return "float";
    case toml::value_t::string: return "string";
    case toml::value_t::offset_datetime: return "offset datetime";
    case toml::value_t::local_datetime: return "local datetime";
    case toml::value_t::local_date: return "local date";
    case toml::value_t::local_time: return "local time";
    case toml::value_t::array: return "array";
    case toml::value_t::table: return "table";
    default: return "empty value";
  }
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Int:
    case Kind::UInt64: return "an integer";
    case Kind::Float: return "a number (float or integer)";
    case Kind::String: return "a string";
    case Kind::Bool: return "a boolean (true/false)";
    case Kind::Table: return "a table of group = weight, e.g. { books = 0.5, code = 0.5 }";
  }
  return "?";
}

// The value's text as written in the deck (for messages).
std::string raw_text(const toml::value& v) {
  const auto loc = v.location();
  const std::string& line = loc.line_str();
  if (loc.column() == 0 || loc.column() - 1 >= line.size()) return "";
  return sanitize(line.substr(loc.column() - 1, loc.region()), 40);
}

// toml11 3.7 does not check integer literals for overflow consistently:
// decimal, hex and octal ones saturate to INT64_MAX / INT64_MIN, binary ones
// wrap silently (0b1 followed by 64 zeros and a 1 reads as 1). So every
// integer literal is re-read here from the deck text.
enum class LiteralCheck { Fits, Overflows, Unreadable };

// Reads the TOML integer literal `lit` (sign, 0x / 0o / 0b prefix,
// underscores). On Fits, *value is the literal's value.
LiteralCheck parse_integer_literal(const std::string& lit, std::int64_t* value) {
  std::size_t p = 0;
  bool neg = false;
  if (p < lit.size() && (lit[p] == '+' || lit[p] == '-')) neg = lit[p++] == '-';
  unsigned base = 10;
  if (lit.size() > p + 1 && lit[p] == '0') {
    const char x = lit[p + 1];
    if (x == 'x' || x == 'o' || x == 'b') {
      base = x == 'x' ? 16 : x == 'o' ? 8 : 2;
      p += 2;
    }
  }
  // Decimal literals reach INT64_MIN when negative; prefixed ones (always
  // non-negative in TOML) at most INT64_MAX.
  const std::uint64_t limit = (neg && base == 10) ? 9223372036854775808ULL
                                                  : 9223372036854775807ULL;
  std::uint64_t acc = 0;
  std::size_t digits = 0;
  for (; p < lit.size(); ++p) {
    const auto ch = static_cast<unsigned char>(lit[p]);
    if (ch == '_') continue;
    unsigned d;
    if (ch >= '0' && ch <= '9') {
      d = ch - '0';
    } else if (ch >= 'a' && ch <= 'f') {
      d = ch - 'a' + 10;
    } else if (ch >= 'A' && ch <= 'F') {
      d = ch - 'A' + 10;
    } else {
      return LiteralCheck::Unreadable;
    }
    if (d >= base) return LiteralCheck::Unreadable;
    ++digits;
    if (acc > (limit - d) / base) return LiteralCheck::Overflows;
    acc = acc * base + d;
  }
  if (digits == 0) return LiteralCheck::Unreadable;
  if (neg) {
    *value = acc == 9223372036854775808ULL ? std::numeric_limits<std::int64_t>::min()
                                           : -static_cast<std::int64_t>(acc);
  } else {
    *value = static_cast<std::int64_t>(acc);
  }
  return LiteralCheck::Fits;
}

// The integer value `v` as written in the deck; false if the literal does not
// fit in a signed 64-bit integer.
bool literal_integer(const toml::value& v, std::int64_t* value) {
  const std::int64_t parsed = v.as_integer();
  const auto loc = v.location();
  if (loc.column() > 0 && loc.column() - 1 < loc.line_str().size()) {
    const std::string lit = loc.line_str().substr(loc.column() - 1, loc.region());
    std::int64_t mine = 0;
    switch (parse_integer_literal(lit, &mine)) {
      case LiteralCheck::Fits:
        // Disagreeing with toml11 on a literal that fits would mean the
        // located text is not the literal; then fall back to toml11's value.
        if (mine == parsed) {
          *value = mine;
          return true;
        }
        break;
      case LiteralCheck::Overflows: return false;
      case LiteralCheck::Unreadable: break;
    }
  }
  // No literal to re-read: trust toml11 unless it saturated.
  *value = parsed;
  return parsed != std::numeric_limits<std::int64_t>::max() &&
         parsed != std::numeric_limits<std::int64_t>::min();
}

// ---------------------------------------------------------------------------
// Pre-parse limits
//
// toml11 parses recursively and some of its paths are quadratic, so deeply
// nested or huge input crashes it (stack overflow) or takes minutes. Decks
// are small; anything beyond these limits is rejected before toml11 sees it.
// Documented in doc/input-decks.md ("Limits").

constexpr std::size_t kMaxDeckBytes = std::size_t{1} << 20;  // 1 MiB
constexpr std::size_t kMaxLineBytes = 4096;
constexpr int kMaxNesting = 32;    // arrays / inline tables inside each other
constexpr int kMaxKeyParts = 8;    // a.b.c... in a key or a [section.header]

struct LimitError {
  int line = 0;  // 1-based
  std::string message;
};

// Returns the first limit the text breaks, if any. The nesting / key scanner
// is a conservative approximation of TOML's grammar (it tracks strings,
// comments, headers, keys and values), linear in the size of the text.
bool check_limits(const std::string& text, LimitError* err) {
  const auto line_at = [&](std::size_t pos) {
    return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(pos), '\n'));
  };
  if (text.size() > kMaxDeckBytes) {
    *err = {line_at(kMaxDeckBytes),
            "deck too large: " + std::to_string(text.size()) + " bytes; the limit is " +
                std::to_string(kMaxDeckBytes) + " bytes (1 MiB)"};
    return false;
  }
  {
    int line = 1;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= text.size(); ++i) {
      if (i == text.size() || text[i] == '\n') {
        if (i - start > kMaxLineBytes) {
          *err = {line, "line too long: " + std::to_string(i - start) +
                            " bytes; the limit is " + std::to_string(kMaxLineBytes)};
          return false;
        }
        ++line;
        start = i + 1;
      }
    }
  }

  enum class Mode { Key, Value, Header };
  Mode mode = Mode::Key;
  bool line_start = true;  // only whitespace so far on this line (at depth 0)
  int parts = 1;           // parts of the key / header being read
  std::vector<char> stack; // open '[' / '{' of values
  int line = 1;
  const std::size_t n = text.size();
  const auto too_many_parts = [&]() {
    *err = {line, std::string(mode == Mode::Header ? "section name" : "dotted key") +
                      " with more than " + std::to_string(kMaxKeyParts) + " parts"};
    return false;
  };
  // Skips a string starting at i (at its opening quote); returns the index
  // just past it (or the end of the line / text when unterminated).
  const auto skip_string = [&](std::size_t i) {
    const char q = text[i];
    const bool multi = i + 2 < n && text[i + 1] == q && text[i + 2] == q;
    if (multi) {
      i += 3;
      while (i < n) {
        if (q == '"' && text[i] == '\\') {
          if (i + 1 < n && text[i + 1] == '\n') ++line;
          i += 2;
          continue;
        }
        if (text[i] == '\n') ++line;
        if (text[i] == q && i + 2 < n && text[i + 1] == q && text[i + 2] == q) {
          i += 3;
          while (i < n && text[i] == q) ++i;  // up to two quotes may end the content
          return i;
        }
        ++i;
      }
      return std::min(i, n);
    }
    ++i;
    while (i < n && text[i] != '\n') {
      if (q == '"' && text[i] == '\\') {
        if (i + 1 < n && text[i + 1] == '\n') return i + 1;  // unterminated
        i += 2;
        continue;
      }
      if (text[i] == q) return i + 1;
      ++i;
    }
    return std::min(i, n);
  };
  for (std::size_t i = 0; i < n;) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      ++i;
      if (stack.empty()) {
        mode = Mode::Key;
        parts = 1;
        line_start = true;
      }
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') {
      ++i;
      continue;
    }
    if (c == '#') {
      while (i < n && text[i] != '\n') ++i;
      continue;
    }
    if (c == '"' || c == '\'') {
      i = skip_string(i);
      line_start = false;
      continue;
    }
    const bool at_line_start = line_start;
    line_start = false;
    switch (mode) {
      case Mode::Header:
        if (c == '.' && ++parts > kMaxKeyParts) return too_many_parts();
        if (c == ']') mode = Mode::Value;  // the rest of the line is not a key
        break;
      case Mode::Key:
        if (c == '[' && at_line_start && stack.empty()) {
          mode = Mode::Header;
          parts = 1;
          if (i + 1 < n && text[i + 1] == '[') ++i;  // [[array of tables]]
        } else if (c == '.') {
          if (++parts > kMaxKeyParts) return too_many_parts();
        } else if (c == '=') {
          mode = Mode::Value;
        } else if (c == '}' && !stack.empty()) {
          stack.pop_back();  // "{}" or a trailing "," (invalid, toml11 says so)
          mode = Mode::Value;
        }
        break;
      case Mode::Value:
        if (c == '[' || c == '{') {
          stack.push_back(c);
          if (static_cast<int>(stack.size()) > kMaxNesting) {
            *err = {line, "arrays / inline tables nested more than " +
                              std::to_string(kMaxNesting) + " deep"};
            return false;
          }
          if (c == '{') {
            mode = Mode::Key;
            parts = 1;
          }
        } else if ((c == ']' || c == '}') && !stack.empty()) {
          stack.pop_back();
        } else if (c == ',' && !stack.empty() && stack.back() == '{') {
          mode = Mode::Key;
          parts = 1;
        }
        break;
    }
    ++i;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Reading

struct Origin {
  std::string file;
  int line = 0;
};

class Reader {
 public:
  Reader(const std::string& text, const std::string& path) : text_(text), path_(path) {
    out_.config.deck_path = path;
    out_.config.deck_text = text;
  }

  LoadedDeck run(const std::vector<std::string>& overrides) {
    toml::value root = parse_deck();
    apply_file(root);
    for (const auto& o : overrides) apply_override(o);
    check_required();
    check_consistency();
    return std::move(out_);
  }

 private:
  const std::string& text_;
  std::string path_;
  LoadedDeck out_;
  std::map<std::string, Origin> given_;  // dotted key -> where it was set
  std::map<std::string, int> set_order_; // dotted key -> index of its (last) --set
  int set_count_ = 0;
  bool moe_present_ = false;

  [[noreturn]] void fail(const Origin& o, const std::string& key, const std::string& msg) const {
    throw DeckError(o.file, o.line, key, msg);
  }

  // Report against the first of `keys` that the deck/--set gave (so the line
  // points at something the user wrote), else against the first key.
  [[noreturn]] void fail_keys(const std::vector<std::string>& keys, const std::string& msg) const {
    for (const auto& k : keys) {
      auto it = given_.find(k);
      if (it != given_.end()) fail(it->second, k, msg);
    }
    fail(Origin{path_, 0}, keys.front(), msg);
  }

  // --- parse -----------------------------------------------------------------
  toml::value parse_deck() {
    LimitError limit;
    if (!check_limits(text_, &limit)) throw DeckError(path_, limit.line, "", limit.message);
    std::istringstream is(text_);
    try {
      return toml::parse(is, path_);
    } catch (const toml::exception& e) {
      throw syntax_error(e.what(), static_cast<int>(e.location().line()));
    } catch (const std::exception& e) {
      throw DeckError(path_, 0, "", std::string("TOML syntax error: ") + first_line(e.what()));
    }
  }

  static std::string first_line(const std::string& s) {
    std::string l = s.substr(0, s.find('\n'));
    if (l.rfind("[error] ", 0) == 0) l = l.substr(8);
    // Drop toml11's internal function name ("toml::parse_xyz: ").
    static const std::regex fn(R"(^toml::[A-Za-z_]+: )");
    l = std::regex_replace(l, fn, "");
    while (!l.empty() && (l.back() == '.' || std::isspace(static_cast<unsigned char>(l.back())))) {
      l.pop_back();
    }
    return sanitize(l, 200);
  }

  // The [section] in effect at `line` of the deck text ("" at top level).
  std::string section_at(int line) const {
    std::istringstream is(text_);
    std::string l, section;
    static const std::regex header(R"(^\s*\[\s*([A-Za-z0-9_\-]+)[^\]]*\])");
    for (int n = 1; n <= line && std::getline(is, l); ++n) {
      std::smatch m;
      if (std::regex_search(l, m, header)) section = m[1];
    }
    return section;
  }

  DeckError syntax_error(const std::string& what, int line) const {
    // Line numbers toml11 prints in its annotated excerpt ("  2 | d_model = 3").
    std::vector<int> shown;
    {
      static const std::regex num(R"(^\s*(\d+) \|)");
      std::istringstream is(what);
      std::string l;
      while (std::getline(is, l)) {
        std::smatch m;
        if (std::regex_search(l, m, num)) shown.push_back(std::stoi(m[1]));
      }
    }
    static const std::regex dup_value(R"rx(value \("([^"]+)"\) already exists)rx");
    static const std::regex dup_table(R"rx(table \("([^"]+)"\) already exists)rx");
    std::smatch m;
    const std::string head = what.substr(0, what.find('\n'));
    if (std::regex_search(head, m, dup_value)) {
      const std::string name = m[1];
      const std::string sec = section_at(line);
      std::string msg = "duplicate key '" + excerpt(name) + "'";
      if (!shown.empty() && shown.front() != line) {
        msg += " (first set on line " + std::to_string(shown.front()) + ")";
      }
      msg += "; each key may be given only once";
      return DeckError(path_, line, sec.empty() ? name : sec + "." + name, msg);
    }
    if (std::regex_search(head, m, dup_table)) {
      const std::string name = m[1];
      std::string msg = "duplicate section";
      if (!shown.empty() && shown.front() != line) {
        msg += " (first opened on line " + std::to_string(shown.front()) + ")";
      }
      msg += "; each section may appear only once";
      return DeckError(path_, line, name, msg);
    }
    std::string msg = "TOML syntax error: " + first_line(what);
    // Quote the offending line so the message stands on its own.
    std::istringstream is(text_);
    std::string l;
    for (int n = 1; n <= line && std::getline(is, l); ++n) {
    }
    while (!l.empty() && (l.back() == '\r' || l.back() == ' ' || l.back() == '\t')) l.pop_back();
    if (line > 0 && !l.empty()) msg += " (in: " + excerpt(l) + ")";
    return DeckError(path_, line, "", msg);
  }

  // --- apply -----------------------------------------------------------------
  static int line_of(const toml::value& v) { return static_cast<int>(v.location().line()); }

  template <class Map>
  static std::vector<std::pair<std::string, const toml::value*>> by_line(const Map& table) {
    std::vector<std::pair<std::string, const toml::value*>> v;
    for (const auto& kv : table) v.emplace_back(kv.first, &kv.second);
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
      const int la = line_of(*a.second), lb = line_of(*b.second);
      return la != lb ? la < lb : a.first < b.first;
    });
    return v;
  }

  std::string section_hint(const std::string& key) const {
    for (const auto& k : key_table()) {
      if (k.name == key || k.field == key) return k.section;
    }
    return "";
  }

  void apply_file(const toml::value& root) {
    if (!root.is_table()) throw DeckError(path_, 0, "", "the deck is not a TOML table");
    for (const auto& [sec, sv] : by_line(root.as_table())) {
      const Origin at{path_, line_of(*sv)};
      if (!is_section(sec)) {
        if (!sv->is_table()) {
          const std::string home = section_hint(sec);
          std::string msg = "key '" + excerpt(sec) + "' is outside any section";
          msg += home.empty() ? "; valid sections: " + join(section_names())
                              : "; it belongs in [" + home + "]";
          fail(at, "", msg);
        }
        std::string msg = "unknown section";
        const std::string near = nearest_name(sec, section_names());
        if (!near.empty()) msg += "; did you mean [" + near + "]?";
        msg += " (valid sections: " + join(section_names()) + ")";
        fail(at, sec, msg);
      }
      if (!sv->is_table()) {
        fail(at, sec, std::string("expected a section (table), got ") + type_name(sv->type()));
      }
      if (sec == "moe") moe_present_ = true;
      for (const auto& [key, v] : by_line(sv->as_table())) {
        const Origin kat{path_, line_of(*v)};
        const KeySpec& spec = lookup(sec, key, kat);
        set_value(spec, *v, kat);
        out_.key_lines[spec.dotted()] = kat.line;
      }
    }
  }

  const KeySpec& lookup(const std::string& sec, const std::string& key, const Origin& at) const {
    if (const KeySpec* k = find_key(sec, key)) return *k;
    std::string msg = "unknown key '" + excerpt(key) + "'";
    const std::string near = nearest_name(key, keys_of(sec));
    if (sec == "moe" && key == "enabled") {
      msg += "; there is no moe.enabled: a [moe] section makes the model MoE, "
             "leave [moe] out for a dense model";
    } else if (!near.empty()) {
      msg += "; did you mean '" + near + "'?";
    } else {
      // The deck spelling of a renamed field, or a key from another section.
      std::string hint;
      for (const auto& k : key_table()) {
        if (k.section == sec && k.field == key) {
          hint = "; did you mean '" + k.name + "'?";
          break;
        }
      }
      if (hint.empty()) {
        const std::string home = section_hint(key);
        if (!home.empty()) hint = "; it belongs in [" + home + "]";
      }
      if (hint.empty()) hint = " (valid keys in [" + sec + "]: " + join(keys_of(sec)) + ")";
      msg += hint;
    }
    fail(at, sec + "." + key, msg);
  }

  // Type check, convert, range/enum check, then store.
  void set_value(const KeySpec& spec, const toml::value& v, const Origin& at) {
    const std::string key = spec.dotted();
    const auto wrong_type = [&]() {
      std::string got = type_name(v.type());
      const std::string raw = raw_text(v);
      if (!v.is_table() && !v.is_array() && !raw.empty()) got += " (" + raw + ")";
      const bool vowel = v.is_integer() || v.is_array() || v.type() == toml::value_t::offset_datetime;
      fail(at, key, std::string("wrong type: expected ") + kind_name(spec.kind) + ", got " +
                        (vowel ? "an " : "a ") + got);
    };
    Value val;
    val.kind = spec.kind;
    switch (spec.kind) {
      case Kind::Int:
      case Kind::UInt64: {
        if (!v.is_integer()) wrong_type();
        if (!literal_integer(v, &val.i)) {
          fail(at, key, "integer " + raw_text(v) + " does not fit in 64 bits; must be " +
                            range_text(spec));
        }
        if (val.i < spec.imin || val.i > spec.imax) {
          fail(at, key, "out of range: " + std::to_string(val.i) + "; must be " + range_text(spec));
        }
        break;
      }
      case Kind::Float: {
        if (v.is_integer()) {
          std::int64_t i = 0;
          if (!literal_integer(v, &i)) {
            fail(at, key, "integer " + raw_text(v) + " does not fit in 64 bits; must be " +
                              range_text(spec));
          }
          val.f = static_cast<double>(i);
        } else if (v.is_floating()) {
          val.f = v.as_floating();
        } else {
          wrong_type();
        }
        const FloatRange& r = spec.frange;
        const bool ok = std::isfinite(val.f) && (r.lo_open ? val.f > r.lo : val.f >= r.lo) &&
                        (r.hi_open ? val.f < r.hi : val.f <= r.hi);
        if (!ok) {
          // toml11 saturates huge literals (1e400); show what was written.
          const std::string raw = raw_text(v);
          fail(at, key, "out of range: " + (raw.empty() ? format_number(val.f) : raw) + "; must be " +
                            (std::isfinite(val.f) ? "" : "finite and ") + range_text(spec));
        }
        break;
      }
      case Kind::String: {
        if (!v.is_string()) wrong_type();
        val.s = v.as_string().str;
        check_string(spec, val.s, at);
        break;
      }
      case Kind::Bool: {
        if (!v.is_boolean()) wrong_type();
        val.b = v.as_boolean();
        break;
      }
      case Kind::Table: {
        if (!v.is_table()) wrong_type();
        val.m = table_weights(spec, v, at);
        break;
      }
    }
    if (spec.extra) {
      const std::string err = spec.extra(val);
      if (!err.empty()) fail(at, key, err);
    }
    spec.set(out_.config, val);
    given_[key] = at;
    if (spec.section == "moe") moe_present_ = true;
  }

  // data.weights: every problem is reported at the line of the key.
  std::map<std::string, double> table_weights(const KeySpec& spec, const toml::value& v,
                                              const Origin& at) const {
    const std::string key = spec.dotted();
    const auto& table = v.as_table();
    if (table.size() > kMaxWeightGroups) {
      fail(at, key, "too many groups: " + std::to_string(table.size()) + "; at most " +
                        std::to_string(kMaxWeightGroups));
    }
    std::map<std::string, double> out;
    double sum = 0.0;
    for (const auto& [name, w] : by_line(table)) {
      if (name.empty()) fail(at, key, "group name must not be empty");
      if (name.size() > kMaxGroupNameBytes) {
        fail(at, key, "group name '" + excerpt(name) + "' is longer than " +
                          std::to_string(kMaxGroupNameBytes) + " bytes");
      }
      for (const char ch : name) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == 0x7f) {
          fail(at, key, "group name '" + excerpt(name) + "' must not contain control characters");
        }
      }
      const std::string group = "weight of group '" + excerpt(name) + "'";
      double f = 0.0;
      if (w->is_integer()) {
        std::int64_t i = 0;
        if (!literal_integer(*w, &i)) {
          fail(at, key, group + ": integer " + raw_text(*w) + " does not fit in 64 bits; must be " +
                            range_text(spec));
        }
        f = static_cast<double>(i);
      } else if (w->is_floating()) {
        f = w->as_floating();
      } else {
        std::string got = type_name(w->type());
        const std::string raw = raw_text(*w);
        if (!w->is_table() && !w->is_array() && !raw.empty()) got += " (" + raw + ")";
        fail(at, key, group + ": wrong type: expected a number (float or integer), got " + got);
      }
      const FloatRange& r = spec.frange;
      if (!(std::isfinite(f) && f >= r.lo && f <= r.hi)) {
        const std::string raw = raw_text(*w);
        fail(at, key, group + ": out of range: " + (raw.empty() ? format_number(f) : raw) +
                          "; must be " + (std::isfinite(f) ? "" : "finite and ") +
                          range_text(spec));
      }
      out[name] = f;
      sum += f;
    }
    if (!(sum > 0.0)) {
      fail(at, key, out.empty() ? "no groups; give at least one group with a weight > 0"
                                : "the weights sum to 0; at least one group needs a weight > 0");
    }
    return out;
  }

  void check_string(const KeySpec& spec, const std::string& s, const Origin& at) const {
    if (spec.choices.empty()) {
      // Free-form strings are names and paths: no empty ones, no NUL (which
      // would cut a path short), no newlines or other control characters
      // (tab excepted).
      if (s.empty()) fail(at, spec.dotted(), "must not be empty");
      for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
          fail(at, spec.dotted(), "must not contain control characters (got '" + excerpt(s) + "')");
        }
      }
      return;
    }
    if (std::find(spec.choices.begin(), spec.choices.end(), s) != spec.choices.end()) return;
    std::string msg = "invalid value '" + excerpt(s) + "'";
    const std::string near = nearest_name(s, spec.choices);
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    msg += " (valid values: " + join(spec.choices) + ")";
    fail(at, spec.dotted(), msg);
  }

  // "section.key=value" from the command line.
  void apply_override(const std::string& o) {
    const Origin at{kSetFile, 0};
    const auto eq = o.find('=');
    const auto trim = [](std::string s) {
      const auto b = s.find_first_not_of(" \t");
      const auto e = s.find_last_not_of(" \t");
      return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    };
    const std::string lhs = trim(o.substr(0, eq));
    const auto dot = lhs.find('.');
    if (eq == std::string::npos || dot == std::string::npos || dot == 0 ||
        dot + 1 == lhs.size()) {
      fail(at, "", "'" + excerpt(o) + "': expected section.key=value, e.g. train.tokens=200000");
    }
    const std::string sec = lhs.substr(0, dot);
    const std::string key = lhs.substr(dot + 1);
    const std::string rhs = trim(o.substr(eq + 1));
    if (!is_section(sec)) {
      std::string msg = "unknown section";
      const std::string near = nearest_name(sec, section_names());
      if (!near.empty()) msg += "; did you mean [" + near + "]?";
      msg += " (valid sections: " + join(section_names()) + ")";
      fail(at, sec, msg);
    }
    const KeySpec& spec = lookup(sec, key, at);

    LimitError limit;
    if (!check_limits("v = " + rhs + "\n", &limit)) fail(at, spec.dotted(), limit.message);
    toml::value doc;
    bool parsed = false;
    try {
      std::istringstream is("v = " + rhs + "\n");
      doc = toml::parse(is, kSetFile);
      parsed = true;
    } catch (const std::exception&) {
    }
    if (spec.kind == Kind::String && !(parsed && doc.at("v").is_string())) {
      // Bare words are accepted for string keys (shells eat the quotes).
      check_string(spec, rhs, at);
      Value val;
      val.kind = Kind::String;
      val.s = rhs;
      spec.set(out_.config, val);
      given_[spec.dotted()] = at;
    } else {
      if (!parsed) {
        fail(at, spec.dotted(), "'" + excerpt(rhs) + "' is not a valid TOML value; expected " +
                                    kind_name(spec.kind));
      }
      set_value(spec, doc.at("v"), at);
    }
    out_.overridden_keys.insert(spec.dotted());
    set_order_[spec.dotted()] = set_count_++;
    if (sec == "moe") moe_present_ = true;
    // The run length is one choice: --set of one of tokens/compute replaces
    // the deck's other one.
    const auto drop_other = [&](const char* other, auto clear) {
      auto it = given_.find(other);
      if (it != given_.end() && it->second.file != kSetFile) {
        given_.erase(it);
        clear();
      }
    };
    if (spec.dotted() == "train.tokens") drop_other("train.compute", [&] { out_.config.train.compute = 0.0; });
    if (spec.dotted() == "train.compute") drop_other("train.tokens", [&] { out_.config.train.tokens = 0; });
  }

  // --- whole-deck checks -------------------------------------------------------
  bool given(const std::string& k) const { return given_.count(k) != 0; }

  void check_required() {
    const auto missing = [&](const std::string& key, const std::string& what) {
      fail(Origin{path_, 0}, key, "missing required key (" + what + ")");
    };
    check_data_source(missing);
    if (!given("train.tokens") && !given("train.compute")) {
      missing("train.tokens",
              "give exactly one of train.tokens (training tokens) or train.compute (FLOPs)");
    }
    if (given("train.tokens") && given("train.compute")) {
      const Origin& t = given_.at("train.tokens");
      const Origin& c = given_.at("train.compute");
      const bool compute_later = c.line >= t.line;
      const std::string other = compute_later ? "tokens" : "compute";
      const Origin& o = compute_later ? t : c;
      const std::string where = o.file == kSetFile ? "by --set"
                                : o.line > 0       ? "on line " + std::to_string(o.line)
                                                   : "too";
      fail(compute_later ? c : t, compute_later ? "train.compute" : "train.tokens",
           "give exactly one of train.tokens and train.compute (train." + other + " is set " +
               where + ")");
    }
    out_.config.moe.enabled = moe_present_;
    if (moe_present_) {
      for (const char* k : {"num_experts", "num_active_experts", "d_expert"}) {
        const std::string key = std::string("moe.") + k;
        if (!given(key)) {
          missing(key, "a [moe] section makes the model MoE and then needs num_experts, "
                       "num_active_experts and d_expert");
        }
      }
    }
  }

  // Exactly one data source: token files (train + valid) or a corpus
  // manifest with mixture weights (manifest + weights).
  template <class Missing>
  void check_data_source(const Missing& missing) {
    const std::vector<std::string> files = {"data.train", "data.valid"};
    const std::vector<std::string> mix = {"data.manifest", "data.weights"};
    // The first-set key of a source ("" if none): --set keys count as after
    // the file's, in the order they were given.
    const auto first = [&](const std::vector<std::string>& keys) {
      std::string best;
      for (const auto& k : keys) {
        if (!given(k)) continue;
        if (best.empty() || order(k) < order(best)) best = k;
      }
      return best;
    };
    const std::string f = first(files), m = first(mix);
    if (!f.empty() && !m.empty()) {
      const bool mix_later = order(m) >= order(f);
      const std::string& second = mix_later ? m : f;
      const std::string& other = mix_later ? f : m;
      const Origin& o = given_.at(other);
      const std::string where = o.file == kSetFile ? "by --set"
                                : o.line > 0       ? "on line " + std::to_string(o.line)
                                                   : "too";
      fail(given_.at(second), second,
           "give exactly one data source: train and valid (token files) or manifest and weights "
           "(a corpus manifest); " + other + " is set " + where);
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
    if (!given("data.train")) {
      missing("data.train", std::string("path of the training token file") + either);
    }
    if (!given("data.valid")) {
      missing("data.valid", std::string("path of the validation token file") + either);
    }
  }

  // Position of a given key for "which came second": file line, --set after.
  std::pair<int, int> order(const std::string& key) const {
    const Origin& o = given_.at(key);
    if (o.file == kSetFile) return {1, set_order_.at(key)};
    return {0, o.line};
  }

  void check_consistency() {
    const RunConfig& c = out_.config;
    const ModelSection& m = c.model;
    const auto s = [](long long x) { return std::to_string(x); };
    if (m.d_model % m.n_heads != 0) {
      fail_keys({"model.n_heads", "model.d_model"},
                "d_model (" + s(m.d_model) + ") is not divisible by n_heads (" + s(m.n_heads) + ")");
    }
    if ((m.d_model / m.n_heads) % 2 != 0) {
      fail_keys({"model.n_heads", "model.d_model"},
                "head dimension d_model/n_heads = " + s(m.d_model) + "/" + s(m.n_heads) + " = " +
                    s(m.d_model / m.n_heads) + " must be even (RoPE rotates pairs)");
    }
    if (m.n_kv_heads > m.n_heads || m.n_heads % m.n_kv_heads != 0) {
      fail_keys({"model.n_kv_heads", "model.n_heads"},
                "n_heads (" + s(m.n_heads) + ") must be a multiple of n_kv_heads (" +
                    s(m.n_kv_heads) + ") for grouped-query attention");
    }
    const MoeSection& e = c.moe;
    if (e.enabled) {
      if (e.num_active_experts > e.num_experts) {
        fail_keys({"moe.num_active_experts", "moe.num_experts"},
                  "num_active_experts (" + s(e.num_active_experts) +
                      ") must not exceed num_experts (" + s(e.num_experts) + ")");
      }
      if (e.first_k_dense >= m.n_layers) {
        fail_keys({"moe.first_k_dense", "model.n_layers"},
                  "first_k_dense (" + s(e.first_k_dense) + ") must be less than n_layers (" +
                      s(m.n_layers) + "): at least one layer must be MoE");
      }
    }
    const ParallelSection& p = c.parallel;
    if (!e.enabled && p.expert_parallel != 1) {
      fail_keys({"parallel.expert_parallel"},
                "must be 1 for a dense model (no [moe] section), got " + s(p.expert_parallel));
    }
    if (e.enabled && e.num_experts % p.expert_parallel != 0) {
      fail_keys({"parallel.expert_parallel", "moe.num_experts"},
                "expert_parallel (" + s(p.expert_parallel) + ") must divide num_experts (" +
                    s(e.num_experts) + ")");
    }
    if (p.world_size > 0 && p.world_size % p.expert_parallel != 0) {
      fail_keys({"parallel.expert_parallel", "parallel.world_size"},
                "expert_parallel (" + s(p.expert_parallel) + ") must divide world_size (" +
                    s(p.world_size) + ")");
    }
    if (p.expert_parallel > 1 && p.dispatcher == "local") {
      fail_keys({"parallel.expert_parallel", "parallel.dispatcher"},
                "expert_parallel (" + s(p.expert_parallel) +
                    ") > 1 needs a distributed dispatcher (mpi_alltoall or nccl); "
                    "dispatcher 'local' keeps every expert on one rank");
    }
    const TrainSection& t = c.train;
    const std::uint64_t seq_batch =
        static_cast<std::uint64_t>(m.seq_len) * static_cast<std::uint64_t>(t.micro_batch_size);
    if (t.batch_tokens % seq_batch != 0) {
      fail_keys({"train.batch_tokens", "train.micro_batch_size", "model.seq_len"},
                "batch_tokens (" + std::to_string(t.batch_tokens) +
                    ") must be a multiple of seq_len * micro_batch_size = " + s(m.seq_len) + " * " +
                    s(t.micro_batch_size) + " = " + std::to_string(seq_batch));
    }
    if (t.eval_tokens < static_cast<std::uint64_t>(m.seq_len)) {
      fail_keys({"train.eval_tokens", "model.seq_len"},
                "eval_tokens (" + std::to_string(t.eval_tokens) + ") must be at least seq_len (" +
                    s(m.seq_len) + ")");
    }
    if (t.warmup_fraction + t.decay_fraction > 1.0) {
      fail_keys({"train.decay_fraction", "train.warmup_fraction"},
                "warmup_fraction + decay_fraction = " + format_number(t.warmup_fraction) + " + " +
                    format_number(t.decay_fraction) + " exceeds 1");
    }
  }
};

// A table key (data.weights): bare keys where TOML allows them.
std::string table_key_text(const std::string& name) {
  const bool bare = !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return std::isalnum(c) || c == '_' || c == '-';
  });
  return bare ? name : toml_quote(name);
}

std::string value_text(const Value& v) {
  switch (v.kind) {
    case Kind::Table: {
      std::string out = "{";
      const char* sep = " ";
      for (const auto& [name, w] : v.m) {  // std::map: sorted by name
        out += sep + table_key_text(name) + " = " + format_double(w);
        sep = ", ";
      }
      return out + " }";
    }
    case Kind::Int:
    case Kind::UInt64: return std::to_string(v.i);
    case Kind::Float: return format_double(v.f);
    case Kind::String: return toml_quote(v.s);
    case Kind::Bool: return v.b ? "true" : "false";
  }
  return "";
}

}  // namespace

DeckError LoadedDeck::error(const std::string& dotted_key, const std::string& message) const {
  if (overridden_keys.count(dotted_key)) return DeckError(kSetFile, 0, dotted_key, message);
  const auto it = key_lines.find(dotted_key);
  return DeckError(config.deck_path, it == key_lines.end() ? 0 : it->second, dotted_key, message);
}

LoadedDeck read_deck_text(const std::string& text, const std::string& path_for_messages,
                          const std::vector<std::string>& overrides) {
  Reader reader(text, path_for_messages);
  return reader.run(overrides);
}

LoadedDeck read_deck(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DeckError(path, 0, "", "cannot open the deck file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw DeckError(path, 0, "", "cannot read the deck file");
  return read_deck_text(ss.str(), path, overrides);
}

std::string resolved_deck_toml(const RunConfig& config) {
  std::ostringstream os;
  os << "# Fulcrum resolved input deck: every key, defaults included.\n";
  std::string src = config.deck_path;
  std::replace_if(src.begin(), src.end(), [](char ch) { return ch == '\n' || ch == '\r'; }, ' ');
  if (!src.empty()) os << "# Resolved from: " << src << "\n";
  for (const auto& sec : section_names()) {
    if (sec == "moe" && !config.moe.enabled) {
      os << "\n# [moe] absent: dense model\n";
      continue;
    }
    os << "\n[" << sec << "]\n";
    for (const auto& k : key_table()) {
      if (k.section != sec) continue;
      // Exactly one of tokens / compute is written.
      if (k.dotted() == "train.tokens" && config.train.tokens == 0) continue;
      if (k.dotted() == "train.compute" && config.train.tokens != 0) continue;
      // compute_budget: written only when set (0 = unset is outside its range).
      if (k.dotted() == "train.compute_budget" && config.train.compute_budget == 0.0) continue;
      // Only the data source in use: token files or manifest + weights.
      const bool mixture = !config.data.manifest_path.empty();
      if ((k.dotted() == "data.train" || k.dotted() == "data.valid") && mixture) continue;
      if ((k.dotted() == "data.manifest" || k.dotted() == "data.weights") && !mixture) continue;
      std::string line = k.name + " = " + value_text(k.get(config));
      if (k.dotted() == "data.tokenizer" && mixture) {
        line += "  # ignored: the manifest names the tokenizer";
      }
      if (k.kind == Kind::Table && line.size() > kMaxLineBytes) {
        // Too long for one line (the reader's line limit): a sub-table, which
        // must close [data]; weights is the section's last key.
        os << "\n[" << sec << "." << k.name << "]\n";
        for (const auto& [name, w] : k.get(config).m) {
          os << table_key_text(name) << " = " << format_double(w) << "\n";
        }
        continue;
      }
      os << line << "\n";
    }
  }
  return os.str();
}

std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates) {
  const auto lower = [](std::string s) {
    for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  // Optimal string alignment distance (Levenshtein plus adjacent transposition).
  const auto distance = [](const std::string& a, const std::string& b) {
    const std::size_t n = a.size(), m = b.size();
    std::vector<std::vector<std::size_t>> d(n + 1, std::vector<std::size_t>(m + 1));
    for (std::size_t i = 0; i <= n; ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= m; ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= n; ++i) {
      for (std::size_t j = 1; j <= m; ++j) {
        const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
          d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
      }
    }
    return d[n][m];
  };
  const std::string lname = lower(name);
  // Allow about one edit per four characters, at least 1 and at most 3.
  const std::size_t limit = std::max<std::size_t>(1, std::min<std::size_t>(3, (lname.size() + 2) / 4));
  std::string best;
  std::size_t best_d = limit + 1;
  for (const auto& c : candidates) {
    const std::size_t dd = distance(lname, lower(c));
    if (dd < best_d) {
      best_d = dd;
      best = c;
    }
  }
  return best;
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
    const KeySpec* k = find_key("moe", name);
    const std::string line = k->name + " = " + value_text(k->get(copy)) + "\n";
    if (line != k->name + " = " + value_text(k->get(defaults)) + "\n") continue;
    const std::size_t at = text.find("\n" + line);
    if (at != std::string::npos) text.erase(at + 1, line.size());
  }
  return text;
}

}  // namespace fulcrum
