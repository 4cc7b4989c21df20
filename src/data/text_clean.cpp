#include "data/text_clean.hpp"

#include <cctype>
#include <cstdint>
#include <algorithm>
#include <cstdlib>

namespace fulcrum {
namespace {

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 sequence at s[i], or 0 if invalid.
std::size_t utf8_len(std::string_view s, std::size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  std::size_t n;
  std::uint32_t cp;
  if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; }
  else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; }
  else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; }
  else return 0;
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3F);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
      cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

bool is_blank_char(char c) { return c == ' ' || c == '\t'; }

std::string tidy_line(std::string_view line) {  // collapse blanks, trim
  std::string out;
  bool space = false;
  for (char c : line) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
      space = !out.empty();
    } else {
      if (space) {
        if (!(c == ',' || c == '.' || c == ';' || c == ':' || c == '!' || c == '?')) out.push_back(' ');
        space = false;
      }
      out.push_back(c);
    }
  }
  return out;
}

std::string tidy_text(std::string_view t) {
  std::string out;
  std::size_t p = 0;
  while (p <= t.size()) {
    std::size_t nl = t.find('\n', p);
    if (nl == std::string_view::npos) nl = t.size();
    std::string l = tidy_line(t.substr(p, nl - p));
    if (!l.empty()) {
      if (!out.empty()) out.push_back('\n');
      out += l;
    }
    p = nl + 1;
  }
  return out;
}

bool starts_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(0, p.size()) == p;
}

std::string decode_entities(std::string_view t) {
  std::string out;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '&') {
      static const std::pair<const char*, const char*> ents[] = {
          {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&apos;", "'"}};
      bool hit = false;
      for (const auto& e : ents) {
        if (starts_with(t.substr(i), e.first)) {
          out += e.second;
          i += std::string_view(e.first).size() - 1;
          hit = true;
          break;
        }
      }
      if (hit) continue;
    }
    out.push_back(t[i]);
  }
  return out;
}

bool has_attr(std::string_view tag, std::string_view needle) {
  return tag.find(needle) != std::string_view::npos;
}

// One OSIS verse entry -> text with '\x01' where notes were.
std::string clean_osis(std::string_view t) {
  std::string out;
  std::size_t i = 0;
  while (i < t.size()) {
    if (t[i] != '<') {
      out.push_back(t[i++]);
      continue;
    }
    const std::size_t end = t.find('>', i);
    if (end == std::string_view::npos) break;  // tag cut off at the end
    std::string_view tag = t.substr(i, end - i + 1);
    const bool closing = tag.size() > 1 && tag[1] == '/';
    const bool empty = tag.size() > 2 && tag[tag.size() - 2] == '/';
    std::size_t n0 = closing ? 2 : 1, n1 = n0;
    while (n1 < tag.size() && (std::isalnum(static_cast<unsigned char>(tag[n1])) || tag[n1] == ':')) ++n1;
    const std::string_view name = tag.substr(n0, n1 - n0);
    i = end + 1;
    if (name == "note" && !closing) {
      if (!empty) {
        const std::size_t close = t.find("</note>", i);
        if (close == std::string_view::npos) { i = t.size(); break; }
        i = close + 7;
      }
      out.push_back('\x01');
    } else if (name == "title") {
      out.push_back('\n');
    } else if ((name == "div" && has_attr(tag, "x-p") && has_attr(tag, "sID")) ||
               (name == "l" && has_attr(tag, "sID")) || name == "lb" ||
               (name == "item" && !closing)) {
      out.push_back('\n');
    } else if (empty) {
      out.push_back(' ');
    }
  }
  out = decode_entities(out);
  // A dropped note between two words separated them: keep a space there.
  std::string res;
  for (std::size_t k = 0; k < out.size(); ++k) {
    if (out[k] != '\x01') { res.push_back(out[k]); continue; }
    std::size_t m = k;
    while (m < out.size() && out[m] == '\x01') ++m;
    const char prev = res.empty() ? ' ' : res.back();
    const char next = m < out.size() ? out[m] : ' ';
    const bool prev_word = !(prev == ' ' || prev == '\n' || prev == '\t');
    const bool next_word = !(next == ' ' || next == '\n' || next == '\t' || next == ',' ||
                             next == '.' || next == ';' || next == ':' || next == '!' ||
                             next == '?' || next == ')' || next == ']' ||
                             static_cast<unsigned char>(next) >= 0x80);
    if (prev_word && next_word) res.push_back(' ');
    k = m - 1;
  }
  return res;
}

}  // namespace

std::string clean_document(std::string_view text) {
  // 1. UTF-8 repair, newlines, control characters.
  std::string a;
  a.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\r') {
      a.push_back('\n');
      i += (i + 1 < text.size() && text[i + 1] == '\n') ? 2 : 1;
      continue;
    }
    if (c < 0x20 && c != '\n' && c != '\t') { ++i; continue; }
    if (c == 0x7F) { ++i; continue; }
    const std::size_t n = utf8_len(text, i);
    if (n == 0) {
      append_utf8(a, 0xFFFD);
      ++i;
      continue;
    }
    // C1 controls (U+0080..U+009F) are dropped too.
    if (n == 2 && c == 0xC2 && static_cast<unsigned char>(text[i + 1]) < 0xA0) { i += 2; continue; }
    a.append(text.substr(i, n));
    i += n;
  }
  // 2. Lines: strip trailing blanks, collapse empty runs, trim.
  std::string out;
  out.reserve(a.size() + 1);
  int empties = 0;
  std::size_t p = 0;
  while (p < a.size()) {
    std::size_t nl = a.find('\n', p);
    if (nl == std::string::npos) nl = a.size();
    std::size_t e = nl;
    while (e > p && is_blank_char(a[e - 1])) --e;
    if (e == p) {
      ++empties;
    } else {
      if (!out.empty()) out.append(static_cast<std::size_t>(std::min(empties, 2)), '\n');
      empties = 0;
      out.append(a, p, e - p);
      out.push_back('\n');
    }
    p = nl + 1;
  }
  return out;
}

std::vector<std::string> osis_imp_to_chapters(std::string_view imp) {
  std::vector<std::string> docs;
  std::string chapter, book_of_chapter, doc, verse, pending0, pending0_book;
  bool have_verse = false;
  auto flush_doc = [&]() {
    std::string t = tidy_text(doc);
    doc.clear();
    if (!t.empty()) docs.push_back(t + "\n");
  };
  auto end_verse = [&]() {
    if (have_verse) doc += " " + clean_osis(verse);
    verse.clear();
    have_verse = false;
  };
  std::size_t p = 0;
  while (p < imp.size()) {
    std::size_t nl = imp.find('\n', p);
    if (nl == std::string_view::npos) nl = imp.size();
    std::string_view line = imp.substr(p, nl - p);
    p = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (starts_with(line, "$$$")) {
      end_verse();
      std::string key(line.substr(3));
      std::string book = key, ch = "x";
      const std::size_t colon = key.rfind(':');
      const std::size_t sp = key.rfind(' ', colon);
      if (colon != std::string::npos && sp != std::string::npos && sp + 1 < colon) {
        book = key.substr(0, sp);
        ch = key.substr(sp + 1, colon - sp - 1);
      }
      const std::string now = book + " " + ch;
      if (now != chapter) {
        const bool was_zero = chapter.size() > 2 && chapter.compare(chapter.size() - 2, 2, " 0") == 0;
        if (was_zero && tidy_text(doc).size() <= 500) {
          pending0 = doc;
          pending0_book = book_of_chapter;
          doc.clear();
        } else {
          flush_doc();
        }
        if (!pending0.empty() && ch != "0") {
          if (pending0_book == book) doc = pending0;
          pending0.clear();
        }
        chapter = now;
        book_of_chapter = book;
      }
    } else {
      if (have_verse) verse.push_back(' ');
      verse.append(line);
      have_verse = true;
    }
  }
  end_verse();
  flush_doc();
  return docs;
}

std::vector<std::string> split_fortunes(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  std::size_t p = 0;
  while (p < text.size()) {
    std::size_t nl = text.find('\n', p);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(p, nl - p);
    p = nl + 1;
    if (line == "%" || line == "%\r") {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.append(line);
      cur.push_back('\n');
    }
  }
  out.push_back(std::move(cur));
  return out;
}

std::vector<std::string> wordnet_glosses(std::string_view data, std::size_t per_doc) {
  std::vector<std::string> out;
  std::string cur;
  std::size_t in_doc = 0;
  std::size_t p = 0;
  while (p < data.size()) {
    std::size_t nl = data.find('\n', p);
    if (nl == std::string_view::npos) nl = data.size();
    std::string_view line = data.substr(p, nl - p);
    p = nl + 1;
    if (line.empty() || line[0] == ' ') continue;
    const std::size_t bar = line.find(" | ");
    if (bar == std::string_view::npos) continue;
    // offset lex_filenum ss_type w_cnt(hex) word lex_id ...
    std::vector<std::string_view> f;
    std::size_t q = 0;
    std::string_view head = line.substr(0, bar);
    while (q < head.size() && f.size() < 4 + 2 * 64) {
      std::size_t sp = head.find(' ', q);
      if (sp == std::string_view::npos) sp = head.size();
      if (sp > q) f.push_back(head.substr(q, sp - q));
      q = sp + 1;
    }
    if (f.size() < 5) continue;
    const unsigned long wcnt = std::strtoul(std::string(f[3]).c_str(), nullptr, 16);
    std::string words;
    for (unsigned long w = 0; w < wcnt && 4 + 2 * w < f.size(); ++w) {
      std::string word(f[4 + 2 * w]);
      const std::size_t paren = word.find('(');  // adjective markers "(a)"
      if (paren != std::string::npos) word.resize(paren);
      for (char& c : word) if (c == '_') c = ' ';
      if (!words.empty()) words += ", ";
      words += word;
    }
    std::string gloss = tidy_line(line.substr(bar + 3));
    cur += words + ": " + gloss + "\n";
    if (++in_doc == per_doc) {
      out.push_back(std::move(cur));
      cur.clear();
      in_doc = 0;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

namespace {

std::string pod_codes(std::string_view s);

// Resolves one formatting code body.
std::string pod_code(char code, std::string_view body) {
  switch (code) {
    case 'E': {
      const std::string b(body);
      if (b == "gt") return ">";
      if (b == "lt") return "<";
      if (b == "sol") return "/";
      if (b == "verbar") return "|";
      if (b == "quot") return "\"";
      if (b == "amp") return "&";
      if (b == "nbsp") return " ";
      if (!b.empty() && std::isdigit(static_cast<unsigned char>(b[0]))) {
        std::string o;
        append_utf8(o, static_cast<std::uint32_t>(std::strtoul(b.c_str(), nullptr, 0)));
        return o;
      }
      if (b.size() > 1 && b[0] == 'x') {
        std::string o;
        append_utf8(o, static_cast<std::uint32_t>(std::strtoul(b.c_str() + 1, nullptr, 16)));
        return o;
      }
      return b;
    }
    case 'X':
    case 'Z':
      return "";
    case 'L': {
      const std::size_t bar = body.find('|');
      if (bar != std::string_view::npos) return pod_codes(body.substr(0, bar));
      std::string t = pod_codes(body);
      // name/"section" -> section in name; "section" -> section
      std::string r;
      for (char c : t) if (c != '"') r.push_back(c);
      const std::size_t slash = r.find('/');
      if (slash != std::string::npos) {
        const std::string name = r.substr(0, slash), sec = r.substr(slash + 1);
        return name.empty() ? sec : sec + " in " + name;
      }
      return r;
    }
    default:
      return pod_codes(body);
  }
}

std::string pod_codes(std::string_view s) {
  std::string out;
  std::size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (i + 1 < s.size() && s[i + 1] == '<' && std::string_view("IBCLEFSXZ").find(c) != std::string_view::npos) {
      std::size_t n = 0;
      while (i + 1 + n < s.size() && s[i + 1 + n] == '<') ++n;
      const std::size_t start = i + 1 + n;
      if (n >= 2 && start < s.size() && (s[start] == ' ' || s[start] == '\n')) {
        const std::string close = " " + std::string(n, '>');
        const std::size_t e = s.find(close, start);
        if (e != std::string_view::npos) {
          std::string_view body = s.substr(start + 1, e - start - 1);
          while (!body.empty() && body.back() == ' ') body.remove_suffix(1);
          out += pod_code(c, body);
          i = e + close.size();
          continue;
        }
      } else if (n == 1) {
        int depth = 1;
        std::size_t k = start;
        for (; k < s.size(); ++k) {
          if (s[k] == '<' && k > 0 && std::isupper(static_cast<unsigned char>(s[k - 1]))) ++depth;
          else if (s[k] == '>' && --depth == 0) break;
        }
        if (k < s.size()) {
          out += pod_code(c, s.substr(start, k - start));
          i = k + 1;
          continue;
        }
      }
    }
    out.push_back(c);
    ++i;
  }
  return out;
}

}  // namespace

std::string pod_to_text(std::string_view pod) {
  // Paragraphs are separated by (blank-only) empty lines.
  std::string out;
  bool in_begin = false;
  std::size_t p = 0;
  auto emit = [&](const std::string& t) {
    if (!out.empty()) out += "\n";
    out += t;
    if (t.empty() || t.back() != '\n') out += "\n";
  };
  while (p < pod.size()) {
    {  // skip blank lines
      std::size_t k = p;
      while (k < pod.size() && (pod[k] == ' ' || pod[k] == '\t')) ++k;
      if (k < pod.size() && pod[k] == '\n') { p = k + 1; continue; }
      if (k >= pod.size()) break;
    }
    std::size_t e = p;
    for (;;) {
      std::size_t nl = pod.find('\n', e);
      if (nl == std::string_view::npos) { e = pod.size(); break; }
      std::size_t k = nl + 1;
      while (k < pod.size() && (pod[k] == ' ' || pod[k] == '\t')) ++k;
      if (k >= pod.size() || pod[k] == '\n') { e = nl; break; }
      e = nl + 1;
    }
    std::string_view para = pod.substr(p, e - p);
    p = e + 1;
    if (para.find_first_not_of(" \t\n") == std::string_view::npos) continue;
    if (para[0] == '=') {
      std::size_t sp = para.find_first_of(" \t\n");
      const std::string_view cmd = para.substr(1, sp == std::string_view::npos ? para.size() - 1 : sp - 1);
      std::string_view rest = sp == std::string_view::npos ? std::string_view() : para.substr(sp + 1);
      if (cmd == "begin") { in_begin = true; continue; }
      if (cmd == "end") { in_begin = false; continue; }
      if (in_begin) continue;
      if (starts_with(cmd, "head")) {
        emit(tidy_text(pod_codes(rest)));
      } else if (cmd == "item") {
        std::string t = tidy_text(pod_codes(rest));
        if (t == "*" || t.empty()) continue;  // bullet: the text follows
        if (starts_with(t, "* ")) t = t.substr(2);
        emit("* " + t);
      }
      continue;  // =pod =cut =over =back =for =encoding ...
    }
    if (in_begin) continue;
    if (para[0] == ' ' || para[0] == '\t') {
      emit(std::string(para));  // verbatim
    } else {
      // ordinary paragraph: resolve codes, join lines
      std::string t = pod_codes(para);
      for (char& c : t) if (c == '\n') c = ' ';
      emit(tidy_line(t));
    }
  }
  return out;
}

}  // namespace fulcrum
