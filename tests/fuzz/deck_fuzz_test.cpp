// deck_fuzz_test.cpp: throws a few thousand malformed decks at the validator.
//
// The mutants are made from the shipped decks (input_decks/*.toml and
// input_decks/paper/*.toml) by a deterministic, seeded mutator: structured
// mutations (wrong types, negative / huge / non-finite numbers, deleted keys and
// sections, duplicated keys and sections, renamed and unknown keys / sections)
// and unstructured ones (bit flips, inserted / deleted bytes, NUL, invalid
// UTF-8, truncation, binary garbage). For every mutant read_deck_text must
// either throw fulcrum::DeckError with a one-line message that starts with the
// path given, or - only for a mutation that cannot make the deck invalid -
// accept it. Mutations are classified: MustReject ones are asserted rejected,
// MustAccept ones (comments, whitespace, a valid value) asserted accepted, the
// rest (MayAccept) only counted. Any other exception, a crash or a parse over
// one second is a failure; nothing may be written to the current directory.
//
// A second test feeds pathologically nested / long input (deep arrays, inline
// tables, dotted keys) to the reader in a forked child, so that a crash (stack
// overflow) or a hang is reported as a failure of that case.
//
// Reproducing: FULCRUM_FUZZ_SHOW=<n> prints mutant n (escaped) before running.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "deck/deck_reader.hpp"
#include "deck/deck_schema.hpp"

#ifndef FULCRUM_SOURCE_DIR
#error "FULCRUM_SOURCE_DIR must be defined (tests/fuzz/CMakeLists.txt)"
#endif

namespace fs = std::filesystem;

namespace {

constexpr int kMutants = 3000;
constexpr std::uint64_t kSeed = 0xF17C2017D3C4ULL;
constexpr double kPerMutantLimitS = 1.0;
constexpr double kTotalLimitS = 60.0;

// ---------------------------------------------------------------------------
// Deterministic RNG (splitmix64: same sequence on every platform / libstdc++).
struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(next() % n); }
  bool coin() { return next() & 1; }
  template <class T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
};

// ---------------------------------------------------------------------------
// Schema knowledge the mutator needs: key names per section, from the deck
// schema itself (src/deck/deck_schema.hpp), so a key added there is fuzzed.
const std::map<std::string, std::set<std::string>>& schema() {
  static const std::map<std::string, std::set<std::string>> s = [] {
    std::map<std::string, std::set<std::string>> out;
    for (const auto& sec : fulcrum::deck_sections()) out[sec];
    for (const auto& k : fulcrum::deck_keys()) out[k.section].insert(k.name);
    return out;
  }();
  return s;
}

bool known_key(const std::string& sec, const std::string& key) {
  const auto it = schema().find(sec);
  return it != schema().end() && it->second.count(key) != 0;
}

// ---------------------------------------------------------------------------
// A shipped deck split into lines. The shipped decks use one simple layout:
// "[section]" headers, "key = value   # comment" assignments, comments, blanks.
enum class Kind { Int, Float, String, Bool };

struct Line {
  enum Type { Blank, Comment, Header, Assign } type = Blank;
  std::string raw;
  std::string section;  // section in effect (Header: its name)
  std::string key, value, tail;  // Assign: tail = spaces + comment after the value
  Kind kind = Kind::Int;
  std::string text() const { return type == Assign ? key + " = " + value + tail : raw; }
};

struct Deck {
  std::string name;
  std::vector<Line> lines;
  std::string text() const {
    std::string out;
    for (const auto& l : lines) out += l.text() + "\n";
    return out;
  }
  std::vector<std::size_t> assigns() const {
    std::vector<std::size_t> v;
    for (std::size_t i = 0; i < lines.size(); ++i)
      if (lines[i].type == Line::Assign) v.push_back(i);
    return v;
  }
  std::vector<std::size_t> headers() const {
    std::vector<std::size_t> v;
    for (std::size_t i = 0; i < lines.size(); ++i)
      if (lines[i].type == Line::Header) v.push_back(i);
    return v;
  }
  bool has_section(const std::string& s) const {
    for (const auto& l : lines)
      if (l.type == Line::Header && l.section == s) return true;
    return false;
  }
  bool has_key(const std::string& s, const std::string& k) const {
    for (const auto& l : lines)
      if (l.type == Line::Assign && l.section == s && l.key == k) return true;
    return false;
  }
  // One past the last line of the section opened at header index h.
  std::size_t section_end(std::size_t h) const {
    std::size_t i = h + 1;
    while (i < lines.size() && lines[i].type != Line::Header) ++i;
    return i;
  }
  // A key the schema marks required (alone or as one of a choice: the deck
  // gives exactly the alternative it uses, so deleting one leaves it missing).
  bool required(const std::string& sec, const std::string& key) const {
    const fulcrum::KeySpec* k = fulcrum::find_deck_key(sec, key);
    return k != nullptr && !k->requirement.empty();
  }
};

// The schema's type of a known key; else guessed from the value's text.
Kind kind_of(const std::string& sec, const std::string& key, const std::string& v) {
  if (const fulcrum::KeySpec* k = fulcrum::find_deck_key(sec, key)) {
    switch (k->type) {
      case fulcrum::KeyType::Integer: return Kind::Int;
      case fulcrum::KeyType::Float: return Kind::Float;
      case fulcrum::KeyType::String: return Kind::String;
      case fulcrum::KeyType::Boolean: return Kind::Bool;
      case fulcrum::KeyType::Weights: break;  // a table: by its text
    }
  }
  if (!v.empty() && (v[0] == '"' || v[0] == '\'')) return Kind::String;
  if (v == "true" || v == "false") return Kind::Bool;
  if (v.find_first_of(".eE") != std::string::npos) return Kind::Float;
  return Kind::Int;
}

Deck parse_shipped(const std::string& name, const std::string& text) {
  Deck d;
  d.name = name;
  std::istringstream in(text);
  std::string raw, section;
  while (std::getline(in, raw)) {
    Line l;
    l.raw = raw;
    const auto b = raw.find_first_not_of(" \t");
    if (b == std::string::npos) {
      l.type = Line::Blank;
    } else if (raw[b] == '#') {
      l.type = Line::Comment;
    } else if (raw[b] == '[') {
      l.type = Line::Header;
      section = raw.substr(b + 1, raw.find(']') - b - 1);
    } else {
      l.type = Line::Assign;
      const auto eq = raw.find('=');
      l.key = raw.substr(b, raw.find_last_not_of(" \t", eq - 1) - b + 1);
      std::size_t v = raw.find_first_not_of(" \t", eq + 1);
      std::size_t e;
      if (raw[v] == '"') {
        e = raw.find('"', v + 1) + 1;
      } else {
        e = raw.find_first_of(" \t#", v);
        if (e == std::string::npos) e = raw.size();
      }
      l.value = raw.substr(v, e - v);
      l.tail = raw.substr(e);
      l.kind = kind_of(section, l.key, l.value);
    }
    l.section = section;
    d.lines.push_back(l);
  }
  return d;
}

// ---------------------------------------------------------------------------
// Mutants

enum class Expect { MustReject, MustAccept, MayAccept };

struct Mutant {
  std::string cls;
  Expect expect = Expect::MayAccept;
  std::string text;
  std::string note;  // what was done, for failure messages
};

std::string escaped(const std::string& s, std::size_t max = 4000) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && out.size() < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n\n";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (out.size() >= max) out += "...";
  return out;
}

// Values of a type other than `k` (wrong for a key of kind k).
std::vector<std::string> wrong_type_values(Kind k) {
  std::vector<std::string> v = {"[1, 2]", "[]", "{ x = 1 }", "{}", "1979-05-27T07:32:00Z",
                                "1979-05-27", "07:32:00", "1979-05-27T07:32:00"};
  if (k != Kind::String) {
    v.insert(v.end(), {"\"8\"", "'literal'", "\"\"", "\"\"\"multi\nline\"\"\"", "\"true\""});
  }
  if (k != Kind::Bool) v.insert(v.end(), {"true", "false"});
  if (k == Kind::Int) v.insert(v.end(), {"0.5", "128.0", "1e3", "3.0e0"});
  if (k == Kind::String || k == Kind::Bool) v.insert(v.end(), {"7", "0", "1.5", "1e3"});
  return v;
}

// Numbers no key accepts (every numeric range tops out at or below 1e30; int
// keys take no floats; string / bool keys take no numbers).
const std::vector<std::string> kHuge = {
    "1e308", "1.7976931348623157e308", "1e400", "-1e400", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "18446744073709551616",
    "18446744073709551617", "99999999999999999999999999999", "9_223_372_036_854_775_808",
    "0x8000000000000000", "0xffffffffffffffff", "0x10000000000000001",
    "0o1000000000000000000000", "0o2000000000000000000001",
    "0b1000000000000000000000000000000000000000000000000000000000000000",
    "0b10000000000000000000000000000000000000000000000000000000000000001",
    "1e31", "-2147483649"};
const std::vector<std::string> kNonFinite = {"nan", "+nan", "-nan", "inf", "+inf", "-inf"};
// Valid-looking boundary values: some keys take them, some do not.
const std::vector<std::string> kBoundary = {
    "0", "1", "-0", "+0", "0.0", "-0.0", "1e-400", "9223372036854775807", "2147483647", "2147483648",
    "1e30", "1.0", "0x7fffffffffffffff", "1_000", "5e-324"};

class Mutator {
 public:
  Mutator(std::vector<Deck> decks, std::uint64_t seed) : decks_(std::move(decks)), rng_(seed) {}

  using Fn = Mutant (Mutator::*)(const Deck&);
  struct Class {
    const char* name;
    Fn fn;
  };
  static const std::vector<Class>& classes() {
    static const std::vector<Class> c = {
        {"wrong_type", &Mutator::wrong_type},
        {"negative", &Mutator::negative},
        {"huge", &Mutator::huge},
        {"nan_inf", &Mutator::nan_inf},
        {"boundary", &Mutator::boundary},
        {"delete_required_key", &Mutator::delete_required_key},
        {"delete_optional_key", &Mutator::delete_optional_key},
        {"delete_section", &Mutator::delete_section},
        {"delete_header_only", &Mutator::delete_header_only},
        {"duplicate_key", &Mutator::duplicate_key},
        {"duplicate_section", &Mutator::duplicate_section},
        {"rename_key", &Mutator::rename_key},
        {"garbage_in_key", &Mutator::garbage_in_key},
        {"unknown_key", &Mutator::unknown_key},
        {"unknown_section", &Mutator::unknown_section},
        {"section_not_table", &Mutator::section_not_table},
        {"comment_edit", &Mutator::comment_edit},
        {"whitespace_edit", &Mutator::whitespace_edit},
        {"crlf_with_error", &Mutator::crlf_with_error},
        {"valid_value", &Mutator::valid_value},
        {"nul_byte", &Mutator::nul_byte},
        {"invalid_utf8", &Mutator::invalid_utf8},
        {"bit_flip", &Mutator::bit_flip},
        {"byte_insert", &Mutator::byte_insert},
        {"byte_delete", &Mutator::byte_delete},
        {"truncate", &Mutator::truncate},
        {"garbage_block", &Mutator::garbage_block},
        {"binary_garbage", &Mutator::binary_garbage},
        {"line_swap", &Mutator::line_swap},
    };
    return c;
  }

  Mutant make(int i) {
    const Class& c = classes()[static_cast<std::size_t>(i) % classes().size()];
    const Deck& d = decks_[rng_.below(decks_.size())];
    Mutant m = (this->*c.fn)(d);
    m.cls = c.name;
    m.note = d.name + ": " + m.note;
    return m;
  }

 private:
  std::vector<Deck> decks_;
  Rng rng_;

  static Mutant result(Expect e, std::string text, std::string note) {
    Mutant m;
    m.expect = e;
    m.text = std::move(text);
    m.note = std::move(note);
    return m;
  }
  std::size_t any_assign(const Deck& d) { return rng_.pick(d.assigns()); }
  std::string with_value(const Deck& d, std::size_t at, const std::string& value) {
    Deck c = d;
    c.lines[at].value = value;
    return c.text();
  }

  // --- structured ------------------------------------------------------------
  Mutant wrong_type(const Deck& d) {
    const std::size_t at = any_assign(d);
    const Line& l = d.lines[at];
    const std::string v = rng_.pick(wrong_type_values(l.kind));
    // data.weights is a table: another table may well be a valid value
    const Expect e = (l.section == "data" && l.key == "weights" && v.rfind("{", 0) == 0)
                         ? Expect::MayAccept : Expect::MustReject;
    return result(e, with_value(d, at, v), l.section + "." + l.key + " = " + v);
  }
  Mutant negative(const Deck& d) {
    const std::size_t at = any_assign(d);
    const Line& l = d.lines[at];
    std::string v;
    if ((l.kind == Kind::Int || l.kind == Kind::Float) && l.value != "0" && rng_.coin()) {
      v = "-" + l.value;
    } else {
      v = rng_.pick(std::vector<std::string>{"-1", "-2", "-1.0", "-1e-300", "-0.5", "-65536"});
    }
    return result(Expect::MustReject, with_value(d, at, v), l.section + "." + l.key + " = " + v);
  }
  Mutant huge(const Deck& d) {
    const std::size_t at = any_assign(d);
    const std::string v = rng_.pick(kHuge);
    return result(Expect::MustReject, with_value(d, at, v),
                  d.lines[at].section + "." + d.lines[at].key + " = " + v);
  }
  Mutant nan_inf(const Deck& d) {
    const std::size_t at = any_assign(d);
    const std::string v = rng_.pick(kNonFinite);
    return result(Expect::MustReject, with_value(d, at, v),
                  d.lines[at].section + "." + d.lines[at].key + " = " + v);
  }
  Mutant boundary(const Deck& d) {
    const std::size_t at = any_assign(d);
    const std::string v = rng_.pick(kBoundary);
    return result(Expect::MayAccept, with_value(d, at, v),
                  d.lines[at].section + "." + d.lines[at].key + " = " + v);
  }
  Mutant delete_required_key(const Deck& d) {
    std::vector<std::size_t> req;
    for (std::size_t i : d.assigns())
      if (d.required(d.lines[i].section, d.lines[i].key)) req.push_back(i);
    const std::size_t at = rng_.pick(req);
    Deck c = d;
    c.lines.erase(c.lines.begin() + static_cast<long>(at));
    return result(Expect::MustReject, c.text(),
                  "deleted " + d.lines[at].section + "." + d.lines[at].key);
  }
  Mutant delete_optional_key(const Deck& d) {
    std::vector<std::size_t> opt;
    for (std::size_t i : d.assigns())
      if (!d.required(d.lines[i].section, d.lines[i].key)) opt.push_back(i);
    const std::size_t at = rng_.pick(opt);
    Deck c = d;
    c.lines.erase(c.lines.begin() + static_cast<long>(at));
    return result(Expect::MayAccept, c.text(),
                  "deleted " + d.lines[at].section + "." + d.lines[at].key);
  }
  Mutant delete_section(const Deck& d) {
    const std::size_t h = rng_.pick(d.headers());
    const std::string sec = d.lines[h].section;
    Deck c = d;
    c.lines.erase(c.lines.begin() + static_cast<long>(h),
                  c.lines.begin() + static_cast<long>(d.section_end(h)));
    // [data] and [train] hold required keys; others have defaults (or, for
    // [moe], make the deck dense), so their removal may be fine.
    const Expect e = (sec == "data" || sec == "train") ? Expect::MustReject : Expect::MayAccept;
    return result(e, c.text(), "deleted section [" + sec + "]");
  }
  Mutant delete_header_only(const Deck& d) {
    // Its keys then land in the previous section (or at top level): no key
    // name is valid in two sections, so the deck must be rejected.
    const std::size_t h = rng_.pick(d.headers());
    Deck c = d;
    c.lines.erase(c.lines.begin() + static_cast<long>(h));
    return result(Expect::MustReject, c.text(), "deleted header " + d.lines[h].raw);
  }
  Mutant duplicate_key(const Deck& d) {
    const std::size_t at = any_assign(d);
    const Line& l = d.lines[at];
    Line dup = l;
    switch (rng_.below(4)) {
      case 0: break;
      case 1: dup.key = "\"" + l.key + "\""; break;
      case 2: dup.key = "'" + l.key + "'"; break;
      default: dup.value = rng_.pick(wrong_type_values(l.kind)); break;
    }
    dup.tail = "";
    Deck c = d;
    // Right below the original, or at the end of its section.
    std::size_t pos = at + 1;
    if (rng_.coin()) {
      pos = at;
      while (pos < c.lines.size() && c.lines[pos].type != Line::Header) ++pos;
    }
    c.lines.insert(c.lines.begin() + static_cast<long>(pos), dup);
    return result(Expect::MustReject, c.text(), "duplicated as " + dup.text());
  }
  Mutant duplicate_section(const Deck& d) {
    const std::size_t h = rng_.pick(d.headers());
    const std::string sec = d.lines[h].section;
    std::string hdr = rng_.pick(std::vector<std::string>{"[" + sec + "]", "[ " + sec + " ]",
                                                         "[\"" + sec + "\"]", "['" + sec + "']"});
    std::string extra = "\n" + hdr + "\n";
    const std::size_t end = d.section_end(h);
    if (end > h + 1 && rng_.coin()) {
      // Re-open it with a copy of one of its keys.
      for (std::size_t i = h + 1; i < end; ++i) {
        if (d.lines[i].type == Line::Assign) {
          extra += d.lines[i].text() + "\n";
          break;
        }
      }
    }
    std::string text = d.text();
    if (rng_.coin()) {
      text += extra;
    } else {  // directly after the section
      Deck c = d;
      Line l;
      l.type = Line::Blank;
      l.raw = extra;
      c.lines.insert(c.lines.begin() + static_cast<long>(end), l);
      text = c.text();
    }
    return result(Expect::MustReject, text, "re-opened " + hdr);
  }
  Mutant rename_key(const Deck& d) {
    const std::size_t at = any_assign(d);
    const Line& l = d.lines[at];
    static const std::string alpha = "abcdefghijklmnopqrstuvwxyz0123456789_";
    std::string k = l.key;
    for (;;) {
      k = l.key;
      const std::size_t p = rng_.below(k.size());
      switch (rng_.below(4)) {
        case 0: k[p] = alpha[rng_.below(alpha.size())]; break;                  // substitute
        case 1: k.insert(k.begin() + static_cast<long>(p), alpha[rng_.below(alpha.size())]); break;
        case 2: if (k.size() > 1) k.erase(p, 1); break;                          // delete
        default: if (p + 1 < k.size()) std::swap(k[p], k[p + 1]); break;       // transpose
      }
      if (k != l.key) break;
    }
    // Unknown names must be rejected; a rename onto another valid key of the
    // section is a duplicate if the deck has it, else possibly valid.
    const bool known = known_key(l.section, k);
    const Expect e = (!known || d.has_key(l.section, k)) ? Expect::MustReject : Expect::MayAccept;
    Deck c = d;
    c.lines[at].key = k;
    return result(e, c.text(), l.section + "." + l.key + " -> " + k);
  }
  Mutant garbage_in_key(const Deck& d) {
    // A byte that cannot appear in a bare key, strictly inside the key.
    const std::size_t at = any_assign(d);
    const Line& l = d.lines[at];
    std::string b;
    do {
      b = std::string(1, static_cast<char>(rng_.below(256)));
    } while (std::isalnum(static_cast<unsigned char>(b[0])) || b[0] == '_' || b[0] == '-');
    if (rng_.below(4) == 0) b = rng_.pick(std::vector<std::string>{"\xff", "\xc3", "\xe2\x82", "\xc3\xa9", "\xed\xa0\x80"});
    Deck c = d;
    c.lines[at].key.insert(1 + rng_.below(l.key.size() - 1), b);
    return result(Expect::MustReject, c.text(), "key " + escaped(c.lines[at].key));
  }
  Mutant unknown_key(const Deck& d) {
    std::string name;
    switch (rng_.below(6)) {
      case 0:
        do {
          name.clear();
          for (std::size_t n = 3 + rng_.below(8); n > 0; --n)
            name += static_cast<char>('a' + rng_.below(26));
        } while (known_key("run", name) || known_key("model", name) || known_key("train", name));
        break;
      case 1: name = rng_.pick(std::vector<std::string>{"enabled", "n_head", "d_ff", "train_path",
                                                          "batch_size", "learning_rate"}); break;
      case 2: name = rng_.pick(std::vector<std::string>{"\"a\\nb\"", "\"\"", "\"\\u0000\"",
                                                          "\"x\\ry\"", "\"\\u00e9\"", "'x y'"}); break;
      case 3: name = rng_.pick(std::vector<std::string>{"a.b", "x.y.z", "\"q\".r"}); break;
      case 4: name = "tokens"; break;  // valid in [train] only
      default: name = "dir"; break;    // valid in [output] only
    }
    const std::vector<std::size_t> hs = d.headers();
    Deck c = d;
    Line l;
    l.type = Line::Blank;
    l.raw = name + " = " + rng_.pick(std::vector<std::string>{"1", "\"x\"", "true", "1.5"});
    std::string where = "top level";
    if (rng_.below(5) != 0) {
      const std::size_t h = rng_.pick(hs);
      const std::string sec = d.lines[h].section;
      if (known_key(sec, name)) return unknown_key(d);  // "tokens" in [train]: try again
      c.lines.insert(c.lines.begin() + static_cast<long>(h + 1), l);
      where = "[" + sec + "]";
    } else {
      c.lines.insert(c.lines.begin(), l);
    }
    return result(Expect::MustReject, c.text(), l.raw + " in " + where);
  }
  Mutant unknown_section(const Deck& d) {
    const std::string hdr = rng_.pick(std::vector<std::string>{
        "[bogus]", "[modl]", "[Model]", "[models]", "[model.extra]", "[run.x]", "[[train]]",
        "[[bogus]]", "[\"model \"]", "[\"\"]", "[\"a\\nb\"]", "[moe.experts]", "[trian]",
        "[outputs]", "[a.b.c]"});
    std::string extra = "\n" + hdr + "\n";
    if (rng_.coin()) extra += "x = 1\n";
    std::string text = d.text();
    if (rng_.coin()) {
      text += extra;
    } else {
      text = extra + text;
    }
    return result(Expect::MustReject, text, "added " + hdr);
  }
  Mutant section_not_table(const Deck& d) {
    const std::string sec = rng_.pick(std::vector<std::string>{"run", "data", "model", "moe",
                                                               "train", "parallel", "output"});
    const std::string v = rng_.pick(std::vector<std::string>{"1", "\"x\"", "[1]", "true", "[]"});
    return result(Expect::MustReject, sec + " = " + v + "\n" + d.text(), sec + " = " + v);
  }
  Mutant comment_edit(const Deck& d) {
    Deck c = d;
    std::string note;
    const std::size_t at = rng_.below(c.lines.size());
    std::string words;
    for (std::size_t n = rng_.below(40); n > 0; --n)
      words += static_cast<char>(0x20 + rng_.below(0x7f - 0x20));  // printable ASCII
    switch (rng_.below(4)) {
      case 0: {  // new comment line
        Line l;
        l.type = Line::Comment;
        l.raw = "#" + words;
        c.lines.insert(c.lines.begin() + static_cast<long>(at), l);
        note = "comment line inserted";
        break;
      }
      case 1: {  // comment after an assignment or header
        Line& l = c.lines[any_assign(d)];
        l.tail += " #" + words;
        note = "trailing comment on " + l.key;
        break;
      }
      case 2: {  // drop every comment
        c.lines.erase(std::remove_if(c.lines.begin(), c.lines.end(),
                                     [](const Line& l) { return l.type == Line::Comment; }),
                      c.lines.end());
        for (auto& l : c.lines) l.tail.clear();
        note = "comments removed";
        break;
      }
      default: {  // UTF-8 text in a comment
        Line l;
        l.type = Line::Comment;
        l.raw = "# \xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 " + words;
        c.lines.insert(c.lines.begin() + static_cast<long>(at), l);
        note = "UTF-8 comment inserted";
        break;
      }
    }
    return result(Expect::MustAccept, c.text(), note);
  }
  Mutant whitespace_edit(const Deck& d) {
    std::string text = d.text();
    std::string note;
    switch (rng_.below(4)) {
      case 0: {  // CRLF line endings
        std::string o;
        for (char ch : text) o += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
        text = o;
        note = "CRLF";
        break;
      }
      case 1: {  // tabs / spaces around '='
        Deck c = d;
        for (std::size_t i : c.assigns()) {
          if (rng_.coin()) c.lines[i].key = std::string(rng_.below(3), '\t') + c.lines[i].key + "\t";
        }
        text = c.text();
        note = "tabs around keys";
        break;
      }
      case 2:
        text = "\n\n  \t\n" + text + "\n\n\n";
        note = "blank lines";
        break;
      default:
        text.pop_back();  // no final newline
        note = "no final newline";
        break;
    }
    return result(Expect::MustAccept, text, note);
  }
  Mutant crlf_with_error(const Deck& d) {
    // A deck saved with CRLF line endings and one value left out ("key =").
    const std::size_t at = any_assign(d);
    Deck c = d;
    c.lines[at].value.clear();
    c.lines[at].tail.clear();
    std::string text;
    for (char ch : c.text()) text += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
    return result(Expect::MustReject, text, "CRLF, " + d.lines[at].key + " = (nothing)");
  }
  Mutant valid_value(const Deck& d) {
    // Keys without cross-key rules, set to values inside their range.
    struct Choice {
      const char* sec;
      const char* key;
      std::vector<std::string> values;
    };
    static const std::vector<Choice> choices = {
        {"run", "name", {"\"x\"", "\"fuzz run\"", "'literal'", "\"\xc3\xa9t\xc3\xa9\"", "\"a\\tb\""}},
        {"run", "seed", {"0", "1", "0x10", "0o17", "0b101", "1_000", "+7", "9223372036854775807"}},
        {"output", "dir", {"\"runs/x\"", "\"/tmp/y\"", "'C:\\dir'"}},
        {"data", "train", {"\"t.tok\"", "\"a b/c.tok\""}},
        {"train", "lr", {"1", "1e-4", "0.5", "1.0", "+0.001"}},
        {"train", "log_interval", {"1", "100", "1_0"}},
        {"train", "grad_clip", {"0", "0.0", "1e6", "2"}},
    };
    std::vector<std::pair<std::size_t, const Choice*>> options;
    for (std::size_t i : d.assigns())
      for (const auto& ch : choices)
        if (d.lines[i].section == ch.sec && d.lines[i].key == ch.key) options.push_back({i, &ch});
    const auto& o = options[rng_.below(options.size())];
    const std::string v = rng_.pick(o.second->values);
    return result(Expect::MustAccept, with_value(d, o.first, v),
                  std::string(o.second->sec) + "." + o.second->key + " = " + v);
  }

  // --- unstructured ----------------------------------------------------------
  Mutant nul_byte(const Deck& d) {
    // TOML allows no NUL anywhere (not even in comments): must be rejected.
    std::string t = d.text();
    const std::size_t p = rng_.below(t.size() + 1);
    t.insert(p, 1, '\0');
    return result(Expect::MustReject, t, "NUL at byte " + std::to_string(p));
  }
  Mutant invalid_utf8(const Deck& d) {
    // A TOML document must be valid UTF-8 throughout: must be rejected.
    std::string t = d.text();
    const std::string seq = rng_.pick(std::vector<std::string>{
        "\xff", "\xfe", "\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80",
        "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80", "\xc3", "\xe2\x82", "\xf0\x9f\x98"});
    const std::size_t p = rng_.below(t.size() + 1);
    t.insert(p, seq);
    return result(Expect::MustReject, t,
                  "invalid UTF-8 " + escaped(seq) + " at byte " + std::to_string(p));
  }
  Mutant bit_flip(const Deck& d) {
    std::string t = d.text();
    std::string note = "flipped";
    for (std::size_t n = 1 + rng_.below(4); n > 0; --n) {
      const std::size_t p = rng_.below(t.size());
      const int bit = static_cast<int>(rng_.below(8));
      t[p] = static_cast<char>(static_cast<unsigned char>(t[p]) ^ (1u << bit));
      note += " byte " + std::to_string(p) + " bit " + std::to_string(bit);
    }
    return result(Expect::MayAccept, t, note);
  }
  Mutant byte_insert(const Deck& d) {
    std::string t = d.text();
    std::string note = "inserted";
    for (std::size_t n = 1 + rng_.below(4); n > 0; --n) {
      const std::size_t p = rng_.below(t.size() + 1);
      const char ch = rng_.coin() ? static_cast<char>(rng_.below(256))
                                  : rng_.pick(std::vector<char>{'[', ']', '=', '"', '\'', '#', '\n',
                                                                '.', ',', '{', '}', '\\', '-', '+'});
      t.insert(p, 1, ch);
      note += " " + escaped(std::string(1, ch)) + "@" + std::to_string(p);
    }
    return result(Expect::MayAccept, t, note);
  }
  Mutant byte_delete(const Deck& d) {
    std::string t = d.text();
    const std::size_t p = rng_.below(t.size());
    const std::size_t n = 1 + rng_.below(8);
    t.erase(p, n);
    return result(Expect::MayAccept, t,
                  "deleted " + std::to_string(n) + " bytes at " + std::to_string(p));
  }
  Mutant truncate(const Deck& d) {
    std::string t = d.text();
    const std::size_t p = rng_.below(t.size());
    // Cut before the first byte of a required key's value, the deck lacks
    // that key (or ends in "key =") and cannot be valid. (A cut inside a
    // number may leave a shorter, valid number.)
    std::size_t last_value_start = 0, off = 0;
    for (const auto& l : d.lines) {
      if (l.type == Line::Assign && d.required(l.section, l.key)) {
        last_value_start = off + l.key.size() + 3;  // "key = " -> first value byte
      }
      off += l.text().size() + 1;
    }
    const Expect e = p <= last_value_start ? Expect::MustReject : Expect::MayAccept;
    return result(e, t.substr(0, p), "truncated at byte " + std::to_string(p));
  }
  Mutant garbage_block(const Deck& d) {
    std::string t = d.text();
    const std::size_t p = rng_.below(t.size());
    const std::size_t n = std::min<std::size_t>(1 + rng_.below(64), t.size() - p);
    for (std::size_t i = 0; i < n; ++i) t[p + i] = static_cast<char>(rng_.below(256));
    return result(Expect::MayAccept, t,
                  "overwrote " + std::to_string(n) + " bytes at " + std::to_string(p));
  }
  Mutant binary_garbage(const Deck&) {
    std::string t;
    const std::size_t n = rng_.below(4) == 0 ? rng_.below(8) : rng_.below(4096);
    const bool printable = rng_.coin();
    for (std::size_t i = 0; i < n; ++i) {
      t += printable ? static_cast<char>(rng_.pick(std::vector<char>{'[', ']', '=', '"', 'a', '1',
                                                                     '\n', ' ', '.', '#', '{', '}'}))
                     : static_cast<char>(rng_.below(256));
    }
    // Without the text "valid" it cannot give data.valid, a required key.
    const Expect e = t.find("valid") == std::string::npos ? Expect::MustReject : Expect::MayAccept;
    return result(e, t, std::to_string(n) + (printable ? " TOML-ish" : " random") + " bytes");
  }
  Mutant line_swap(const Deck& d) {
    Deck c = d;
    const std::size_t a = rng_.below(c.lines.size()), b = rng_.below(c.lines.size());
    std::swap(c.lines[a], c.lines[b]);
    return result(Expect::MayAccept, c.text(),
                  "swapped lines " + std::to_string(a + 1) + " and " + std::to_string(b + 1));
  }
};

// ---------------------------------------------------------------------------
// Crash / hang reporting: the mutant being parsed is kept here so that a fatal
// signal or the watchdog can name it.
std::atomic<const Mutant*> g_current{nullptr};
std::atomic<int> g_current_index{-1};
std::atomic<std::int64_t> g_started_ns{0};

void write_all(const char* s, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<std::size_t>(w);
  }
}

void report_current(const char* why) {
  // Async-signal-safe: no allocation, only write(2).
  write_all(why, std::strlen(why));
  const Mutant* m = g_current.load();
  if (m == nullptr) return;
  char buf[64];
  const int n = std::snprintf(buf, sizeof buf, " on mutant #%d, class ", g_current_index.load());
  write_all(buf, static_cast<std::size_t>(n));
  write_all(m->cls.data(), m->cls.size());
  write_all(" (", 2);
  write_all(m->note.data(), m->note.size());
  static const char hdr[] = ")\n--- deck (escaped) ---\n";
  write_all(hdr, sizeof hdr - 1);
  for (unsigned char c : m->text) {
    if ((c >= 0x20 && c < 0x7f && c != '\\') || c == '\n') {
      write_all(reinterpret_cast<const char*>(&c), 1);
    } else {
      static const char hex[] = "0123456789abcdef";
      const char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
      write_all(e, 4);
    }
  }
  static const char end[] = "\n--- end ---\n";
  write_all(end, sizeof end - 1);
}

extern "C" void on_fatal_signal(int sig) {
  report_current(sig == SIGSEGV ? "deck_fuzz: SIGSEGV" : "deck_fuzz: fatal signal");
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void install_crash_reporter() {
  static std::vector<char> alt(1 << 16);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  ::sigaltstack(&ss, nullptr);  // so a stack overflow can still be reported
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sa.sa_flags = SA_ONSTACK;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::sigaction(sig, &sa, nullptr);
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Kills the test (naming the mutant) if one parse runs for 10 s: a hang.
class Watchdog {
 public:
  Watchdog() : thread_([this] { loop(); }) {}
  ~Watchdog() {
    stop_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
  void loop() {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      const std::int64_t t0 = g_started_ns.load();
      if (t0 != 0 && now_ns() - t0 > 10'000'000'000LL) {
        report_current("deck_fuzz: HANG (parse over 10 s)");
        std::_Exit(3);
      }
    }
  }
};

// ---------------------------------------------------------------------------
std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<Deck> shipped_decks() {
  const fs::path root = fs::path(FULCRUM_SOURCE_DIR) / "input_decks";
  std::vector<fs::path> files;
  for (const fs::path& dir : {root, root / "paper"}) {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && e.path().extension() == ".toml") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());  // deterministic order
  std::vector<Deck> decks;
  for (const auto& f : files)
    decks.push_back(parse_shipped(fs::relative(f, root).string(), read_file(f)));
  return decks;
}

std::size_t count_lines(const std::string& s) {
  return static_cast<std::size_t>(std::count(s.begin(), s.end(), '\n')) + 1;
}

struct Tally {
  int tried = 0, rejected = 0, accepted = 0;
  int must_reject = 0, must_accept = 0, may = 0;
};

class ChdirToFreshTemp {
 public:
  ChdirToFreshTemp() {
    old_ = fs::current_path();
    std::string tmpl = (fs::temp_directory_path() / "fulcrum-deck-fuzz-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    fs::current_path(dir_);
  }
  ~ChdirToFreshTemp() {
    fs::current_path(old_);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const fs::path& dir() const { return dir_; }

 private:
  fs::path old_, dir_;
};

TEST(DeckFuzz, ShippedDecksAreValid) {
  const auto decks = shipped_decks();
  ASSERT_GE(decks.size(), 4u);
  for (const auto& d : decks) {
    SCOPED_TRACE(d.name);
    // The mutator's line model must reproduce the deck (modulo final newline).
    EXPECT_EQ(d.text(), read_file(fs::path(FULCRUM_SOURCE_DIR) / "input_decks" / d.name));
    EXPECT_NO_THROW(fulcrum::read_deck_text(d.text(), d.name));
  }
}

TEST(DeckFuzz, MalformedDecksAreRejectedCleanly) {
  install_crash_reporter();
  const auto decks = shipped_decks();
  ASSERT_FALSE(decks.empty());
  Mutator mutator(decks, kSeed);
  const char* show = std::getenv("FULCRUM_FUZZ_SHOW");

  std::map<std::string, Tally> by_class;
  Tally total;
  std::vector<std::string> failures;
  double slowest = 0.0;
  int slowest_index = -1;

  const auto t_start = std::chrono::steady_clock::now();
  {
    ChdirToFreshTemp cwd;
    Watchdog watchdog;
    for (int i = 0; i < kMutants; ++i) {
      const Mutant m = mutator.make(i);
      const std::string path = "fuzz/" + std::to_string(i) + "-" + m.cls + ".toml";
      if (show != nullptr && std::atoi(show) == i) {
        std::printf("mutant #%d class %s (%s)\n%s\n", i, m.cls.c_str(), m.note.c_str(),
                    escaped(m.text, 1 << 20).c_str());
      }
      Tally& t = by_class[m.cls];
      ++t.tried;
      ++total.tried;
      (m.expect == Expect::MustReject ? t.must_reject
       : m.expect == Expect::MustAccept ? t.must_accept
                                        : t.may)++;

      const auto fail = [&](const std::string& what) {
        failures.push_back("mutant #" + std::to_string(i) + " [" + m.cls + "] " + m.note + ": " +
                           what + "\n--- deck (escaped) ---\n" + escaped(m.text) + "\n--- end ---");
      };

      g_current = &m;
      g_current_index = i;
      g_started_ns = now_ns();
      bool accepted = false;
      std::string message;
      try {
        const fulcrum::LoadedDeck deck = fulcrum::read_deck_text(m.text, path);
        accepted = true;
        // An accepted deck must survive the documented round trip.
        const std::string resolved = fulcrum::resolved_deck_toml(deck.config);
        try {
          const auto again = fulcrum::read_deck_text(resolved, path);
          if (fulcrum::resolved_deck_toml(again.config) != resolved) {
            fail("accepted, but the resolved deck does not read back identically");
          }
        } catch (const std::exception& e) {
          fail(std::string("accepted, but its resolved deck is rejected: ") + e.what());
        }
      } catch (const fulcrum::DeckError& e) {
        message = e.what();
        if (message.empty()) fail("DeckError with an empty message");
        if (message.rfind(path + ":", 0) != 0) fail("message does not start with the path: " + escaped(message, 300));
        if (message.find('\n') != std::string::npos || message.find('\r') != std::string::npos) {
          fail("message is not one line: " + escaped(message, 300));
        }
        if (e.file != path) fail("DeckError::file is '" + escaped(e.file) + "'");
        if (e.line < 0 || static_cast<std::size_t>(e.line) > count_lines(m.text)) {
          fail("DeckError::line " + std::to_string(e.line) + " is outside the deck");
        }
        // Located: a line in the deck, or the key (a missing required key has no line).
        if (e.line == 0 && e.key.empty()) fail("message names neither a line nor a key: " + escaped(message, 300));
        if (!e.key.empty() && e.key.find('.') != std::string::npos &&
            message.find("] " + fulcrum::sanitize(e.key.substr(e.key.find('.') + 1), 80).substr(0, 20)) ==
                std::string::npos) {
          fail("message does not name its key '" + escaped(e.key) + "': " + escaped(message, 300));
        }
      } catch (const std::exception& e) {
        fail(std::string("threw a non-DeckError exception: ") + typeid(e).name() + ": " + e.what());
      } catch (...) {
        fail("threw a non-std::exception");
      }
      const double secs = static_cast<double>(now_ns() - g_started_ns.load()) * 1e-9;
      g_started_ns = 0;
      g_current = nullptr;
      if (secs > slowest) {
        slowest = secs;
        slowest_index = i;
      }
      if (secs > kPerMutantLimitS) fail("parse took " + std::to_string(secs) + " s");

      if (accepted) {
        ++t.accepted;
        ++total.accepted;
        if (m.expect == Expect::MustReject) fail("accepted, but this mutation must be rejected");
      } else {
        ++t.rejected;
        ++total.rejected;
        if (m.expect == Expect::MustAccept) {
          fail("rejected, but this mutation keeps the deck valid: " + escaped(message, 300));
        }
      }
    }
    // "Nothing written": the reader must not create files in the current directory.
    std::vector<std::string> created;
    for (const auto& e : fs::recursive_directory_iterator(cwd.dir()))
      created.push_back(e.path().string());
    EXPECT_TRUE(created.empty()) << "the reader created files, first: " << created.front();
  }
  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  std::printf("\ndeck fuzz: %d mutants of %zu shipped decks (seed 0x%llx), %.2f s, slowest #%d %.4f s\n",
              total.tried, decks.size(), static_cast<unsigned long long>(kSeed), total_s,
              slowest_index, slowest);
  std::printf("%-22s %6s %8s %8s   %s\n", "class", "tried", "rejected", "accepted",
              "(must-reject / must-accept / either)");
  for (const auto& [name, t] : by_class) {
    std::printf("%-22s %6d %8d %8d   (%d / %d / %d)\n", name.c_str(), t.tried, t.rejected,
                t.accepted, t.must_reject, t.must_accept, t.may);
  }
  std::printf("%-22s %6d %8d %8d\n", "total", total.tried, total.rejected, total.accepted);
  std::printf("failures: %zu\n", failures.size());
  std::fflush(stdout);

  EXPECT_LT(total_s, kTotalLimitS);
  // Report every failure, but at most 40 in full.
  for (std::size_t k = 0; k < failures.size() && k < 40; ++k) ADD_FAILURE() << failures[k];
  EXPECT_EQ(failures.size(), 0u) << "see the failures above (first 40 shown)";
}

// ---------------------------------------------------------------------------
// Pathological sizes: run each in a forked child so that a crash (stack
// overflow in the recursive TOML parser) or a hang is reported as a failure of
// that case instead of killing the test. Each must be a DeckError within 1 s.

struct Pathological {
  const char* name;
  std::string text;
};

std::string nested(const std::string& open, const std::string& inner, const std::string& close,
                   int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i) s += open;
  s += inner;
  for (int i = 0; i < depth; ++i) s += close;
  return s;
}

std::vector<Pathological> pathological_cases() {
  std::string dotted = "x";
  for (int i = 0; i < 30000; ++i) dotted += ".a";
  std::string header = "[run";
  for (int i = 0; i < 30000; ++i) header += ".a";
  std::string unterminated = "[run]\nx = [";
  for (int i = 0; i < 100000; ++i) unterminated += "1,";
  std::string many_lines = "[run]\n";
  for (int i = 0; i < 20000; ++i) many_lines += "# comment\n";
  many_lines += "x = 1\n";
  return {
      {"nested_arrays_depth_100", "[run]\nx = " + nested("[", "", "]", 100) + "\n"},
      {"nested_arrays_depth_10000", "[run]\nx = " + nested("[", "", "]", 10000) + "\n"},
      {"nested_arrays_depth_3000", "[run]\nx = " + nested("[", "", "]", 3000) + "\n"},
      {"nested_inline_tables_depth_10000", "[run]\nx = " + nested("{a=", "1", "}", 10000) + "\n"},
      {"nested_inline_tables_depth_2000", "[run]\nx = " + nested("{a=", "1", "}", 2000) + "\n"},
      {"dotted_key_30000_parts", "[run]\n" + dotted + " = 1\n"},
      {"dotted_header_30000_parts", header + "]\n"},
      {"unterminated_array_100000_items", unterminated},
      {"string_1MB", "[run]\nname = \"" + std::string(1 << 20, 'a') + "\"\n"},
      {"key_1MB", "[run]\n" + std::string(1 << 20, 'k') + " = 1\n"},
      {"comments_20000_lines", many_lines},
  };
}

TEST(DeckFuzz, PathologicalInputNeitherCrashesNorHangs) {
  const auto cases = pathological_cases();
  std::vector<std::string> failures;
  for (const auto& c : cases) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0) << "fork failed";
    if (pid == 0) {
      // Child: exit 0 = DeckError within 1 s, 1 = accepted, 2 = other
      // exception, 4 = too slow; killed by SIGALRM after 3 s = hang.
      for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::signal(sig, SIG_DFL);
      ::alarm(3);
      const auto t0 = std::chrono::steady_clock::now();
      int rc = 0;
      try {
        fulcrum::read_deck_text(c.text, "deep.toml");
        rc = 1;
      } catch (const fulcrum::DeckError& e) {
        rc = std::string(e.what()).rfind("deep.toml", 0) == 0 ? 0 : 2;
      } catch (...) {
        rc = 2;
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rc == 0 && s > kPerMutantLimitS) rc = 4;
      std::_Exit(rc);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::string what;
    if (WIFSIGNALED(status)) {
      const int sig = WTERMSIG(status);
      what = sig == SIGALRM ? "hang (no answer in 3 s)"
                            : std::string("crashed with signal ") + std::to_string(sig) + " (" +
                                  strsignal(sig) + ")";
    } else if (WEXITSTATUS(status) == 1) {
      what = "accepted";
    } else if (WEXITSTATUS(status) == 2) {
      what = "threw something other than a DeckError naming the file";
    } else if (WEXITSTATUS(status) == 4) {
      what = "rejected, but took over 1 s";
    }
    std::printf("pathological %-36s %s\n", c.name, what.empty() ? "ok (DeckError)" : what.c_str());
    if (!what.empty()) failures.push_back(std::string(c.name) + ": " + what);
  }
  std::fflush(stdout);
  for (const auto& f : failures) ADD_FAILURE() << f;
}

}  // namespace
