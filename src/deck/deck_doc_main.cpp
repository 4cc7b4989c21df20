// fulcrum-deck-doc: doc/input-decks.md's key tables, generated from the deck
// schema (deck_schema.hpp).
//
//   fulcrum-deck-doc                 print the generated markdown
//   fulcrum-deck-doc --check DOC     exit 1 (printing a diff and the command
//                                    that regenerates it) when DOC's generated
//                                    part differs from the schema's
//   fulcrum-deck-doc --write DOC     rewrite DOC's generated part
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "deck/deck_schema.hpp"

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream is(text);
  std::string l;
  while (std::getline(is, l)) out.push_back(l);
  return out;
}

// A line diff (longest common subsequence; the texts are a few hundred lines).
std::string line_diff(const std::string& committed, const std::string& generated) {
  const auto a = lines_of(committed), b = lines_of(generated);
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> lcs(n + 1, std::vector<int>(m + 1, 0));
  for (std::size_t i = n; i-- > 0;) {
    for (std::size_t j = m; j-- > 0;) {
      lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  std::string out;
  std::size_t i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] == b[j]) {
      ++i, ++j;
    } else if (j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j])) {
      out += "+ " + b[j++] + "\n";
    } else {
      out += "- " + a[i++] + "\n";
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string generated = fulcrum::deck_keys_markdown();
  if (argc == 1) {
    std::cout << generated;
    return 0;
  }
  const std::string mode = argv[1];
  if (argc != 3 || (mode != "--check" && mode != "--write")) {
    std::cerr << "usage: fulcrum-deck-doc [--check DOC | --write DOC]\n";
    return 2;
  }
  const std::string path = argv[2];
  std::string doc;
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::cerr << "fulcrum-deck-doc: cannot read " << path << "\n";
      return 2;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    doc = ss.str();
  }
  const std::string begin = std::string(fulcrum::kGeneratedDocBegin) + "\n";
  const std::string end = fulcrum::kGeneratedDocEnd;
  const auto b = doc.find(begin);
  const auto e = b == std::string::npos ? std::string::npos : doc.find(end, b);
  if (e == std::string::npos) {
    std::cerr << "fulcrum-deck-doc: " << path << " has no generated part (the lines\n  " << begin << "  " << end
              << "\naround it)\n";
    return 2;
  }
  const std::string committed = doc.substr(b + begin.size(), e - b - begin.size());
  if (mode == "--check") {
    if (committed == generated) {
      std::cout << path << ": the key tables match the deck schema\n";
      return 0;
    }
    std::cout << path << ": the key tables differ from the deck schema (- committed, + generated):\n"
              << line_diff(committed, generated) << "\nregenerate them with\n  fulcrum-deck-doc --write " << path
              << "\n(build target fulcrum-deck-doc, e.g. build/src/deck/fulcrum-deck-doc --write doc/input-decks.md)\n";
    return 1;
  }
  doc.replace(b + begin.size(), e - b - begin.size(), generated);
  std::ofstream out(path, std::ios::binary);
  out << doc;
  if (!out) {
    std::cerr << "fulcrum-deck-doc: cannot write " << path << "\n";
    return 2;
  }
  std::cout << "wrote the key tables of " << path << "\n";
  return 0;
}
