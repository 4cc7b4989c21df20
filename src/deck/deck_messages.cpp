// deck_messages.cpp: sanitised one-line messages and near-miss suggestions.
#include "deck/deck_messages.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <utility>

#include "deck/deck_reader.hpp"

namespace fulcrum {

namespace {

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

}  // namespace

std::string sanitize(const std::string& s, std::size_t max_chars) {
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

DeckError::DeckError(std::string file_, int line_, std::string key_, const std::string& message_)
    : std::runtime_error(format_message(file_, line_, key_, message_)),
      file(std::move(file_)),
      line(line_),
      key(std::move(key_)),
      message(sanitize(message_)) {}

std::string join_names(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

std::string unknown_name_message(const std::string& what, const std::string& name,
                                 const std::vector<std::string>& valid) {
  std::string msg = "unknown " + what + " '" + excerpt(name) + "'";
  const std::string near = nearest_name(name, valid);
  if (!near.empty()) return msg + "; did you mean '" + near + "'?";
  return msg + " (valid " + what + "s: " + join_names(valid) + ")";
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

}  // namespace fulcrum
