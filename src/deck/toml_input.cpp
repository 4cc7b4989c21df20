// toml_input.cpp: limits, located syntax errors and exact integers over
// toml11 3.7 (toml_input.hpp).
#include "deck/toml_input.hpp"

#include <algorithm>
#include <cctype>
#include <limits>
#include <regex>
#include <sstream>
#include <vector>

#include "deck/deck_messages.hpp"
#include "deck/deck_reader.hpp"

namespace fulcrum {

namespace {

// ---------------------------------------------------------------------------
// Limits (doc/input-decks.md, "Limits"): decks are small; anything beyond
// these is refused before toml11 sees it.

constexpr std::size_t kMaxDeckBytes = std::size_t{1} << 20;  // 1 MiB
constexpr std::size_t kMaxLineBytes = 4096;
constexpr int kMaxNesting = 32;  // arrays / inline tables inside each other
constexpr int kMaxKeyParts = 8;  // a.b.c... in a key or a [section.header]

// A conservative approximation of TOML's grammar (strings, comments, headers,
// keys and values), linear in the size of the text.
bool nesting_and_key_limits(const std::string& text, int* err_line, std::string* err) {
  enum class Mode { Key, Value, Header };
  Mode mode = Mode::Key;
  bool line_start = true;   // only whitespace so far on this line (at depth 0)
  int parts = 1;            // parts of the key / header being read
  std::vector<char> stack;  // open '[' / '{' of values
  int line = 1;
  const std::size_t n = text.size();
  const auto too_many_parts = [&]() {
    *err_line = line;
    *err = std::string(mode == Mode::Header ? "section name" : "dotted key") + " with more than " +
           std::to_string(kMaxKeyParts) + " parts";
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
            *err_line = line;
            *err = "arrays / inline tables nested more than " + std::to_string(kMaxNesting) + " deep";
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

// toml11's first message line without its "[error] " and function-name prefixes.
std::string first_line(const std::string& s) {
  std::string l = s.substr(0, s.find('\n'));
  if (l.rfind("[error] ", 0) == 0) l = l.substr(8);
  static const std::regex fn(R"(^toml::[A-Za-z_]+: )");
  l = std::regex_replace(l, fn, "");
  while (!l.empty() && (l.back() == '.' || std::isspace(static_cast<unsigned char>(l.back())))) {
    l.pop_back();
  }
  return sanitize(l, 200);
}

// The [section] in effect at `line` of the text ("" at top level).
std::string section_at(const std::string& text, int line) {
  std::istringstream is(text);
  std::string l, section;
  static const std::regex header(R"(^\s*\[\s*([A-Za-z0-9_\-]+)[^\]]*\])");
  for (int n = 1; n <= line && std::getline(is, l); ++n) {
    std::smatch m;
    if (std::regex_search(l, m, header)) section = m[1];
  }
  return section;
}

// toml11 3.7 reports duplicates only in its message text ("value ("x")
// already exists", with the first definition's line in its excerpt); these
// become the reader's duplicate-key / duplicate-section errors.
DeckError syntax_error(const std::string& text, const std::string& path, const std::string& what, int line) {
  std::vector<int> shown;  // line numbers of toml11's annotated excerpt ("  2 | d_model = 3")
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
    const std::string sec = section_at(text, line);
    std::string msg = "duplicate key '" + excerpt(name) + "'";
    if (!shown.empty() && shown.front() != line) {
      msg += " (first set on line " + std::to_string(shown.front()) + ")";
    }
    msg += "; each key may be given only once";
    return DeckError(path, line, sec.empty() ? name : sec + "." + name, msg);
  }
  if (std::regex_search(head, m, dup_table)) {
    const std::string name = m[1];
    std::string msg = "duplicate section";
    if (!shown.empty() && shown.front() != line) {
      msg += " (first opened on line " + std::to_string(shown.front()) + ")";
    }
    msg += "; each section may appear only once";
    return DeckError(path, line, name, msg);
  }
  std::string msg = "TOML syntax error: " + first_line(what);
  // Quote the offending line so the message stands on its own.
  std::istringstream is(text);
  std::string l;
  for (int n = 1; n <= line && std::getline(is, l); ++n) {
  }
  while (!l.empty() && (l.back() == '\r' || l.back() == ' ' || l.back() == '\t')) l.pop_back();
  if (line > 0 && !l.empty()) msg += " (in: " + excerpt(l) + ")";
  return DeckError(path, line, "", msg);
}

// Reads the TOML integer literal `lit` (sign, 0x / 0o / 0b prefix,
// underscores). Fits: *value is its value.
enum class LiteralCheck { Fits, Overflows, Unreadable };
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
  const std::uint64_t limit = (neg && base == 10) ? 9223372036854775808ULL : 9223372036854775807ULL;
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

}  // namespace

bool breaks_toml_limits(const std::string& text, int* line, std::string* message) {
  const auto line_at = [&](std::size_t pos) {
    return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(pos), '\n'));
  };
  if (text.size() > kMaxDeckBytes) {
    *line = line_at(kMaxDeckBytes);
    *message = "deck too large: " + std::to_string(text.size()) + " bytes; the limit is " +
               std::to_string(kMaxDeckBytes) + " bytes (1 MiB)";
    return true;
  }
  int n = 1;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '\n') {
      if (i - start > kMaxLineBytes) {
        *line = n;
        *message = "line too long: " + std::to_string(i - start) + " bytes; the limit is " +
                   std::to_string(kMaxLineBytes);
        return true;
      }
      ++n;
      start = i + 1;
    }
  }
  return !nesting_and_key_limits(text, line, message);
}

toml::value parse_toml_deck(const std::string& text, const std::string& path) {
  int limit_line = 0;
  std::string limit;
  if (breaks_toml_limits(text, &limit_line, &limit)) throw DeckError(path, limit_line, "", limit);
  std::istringstream is(text);
  try {
    return toml::parse(is, path);
  } catch (const toml::exception& e) {
    throw syntax_error(text, path, e.what(), static_cast<int>(e.location().line()));
  } catch (const std::exception& e) {
    throw DeckError(path, 0, "", std::string("TOML syntax error: ") + first_line(e.what()));
  }
}

int line_of(const toml::value& v) { return static_cast<int>(v.location().line()); }

std::string written_text(const toml::value& v) {
  const auto loc = v.location();
  const std::string& line = loc.line_str();
  if (loc.column() == 0 || loc.column() - 1 >= line.size()) return "";
  return sanitize(line.substr(loc.column() - 1, loc.region()), 40);
}

const char* toml_type_name(toml::value_t t) {
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

std::string toml_type_with_text(const toml::value& v) {
  std::string got = toml_type_name(v.type());
  const std::string raw = written_text(v);
  if (!v.is_table() && !v.is_array() && !raw.empty()) got += " (" + raw + ")";
  const bool vowel = v.is_integer() || v.is_array() || v.type() == toml::value_t::offset_datetime;
  return (vowel ? "an " : "a ") + got;
}

bool exact_integer(const toml::value& v, std::int64_t* value) {
  const std::int64_t parsed = v.as_integer();
  const auto loc = v.location();
  if (loc.column() > 0 && loc.column() - 1 < loc.line_str().size()) {
    const std::string lit = loc.line_str().substr(loc.column() - 1, loc.region());
    std::int64_t mine = 0;
    switch (parse_integer_literal(lit, &mine)) {
      case LiteralCheck::Fits:
        // Disagreeing with toml11 on a literal that fits would mean the
        // located text is not the literal; then toml11's value is used.
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

}  // namespace fulcrum
