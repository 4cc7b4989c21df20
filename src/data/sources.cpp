#include "data/sources.hpp"

#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/corpus.hpp"
#include "data/text_clean.hpp"
#include "data/token_file.hpp"

namespace fs = std::filesystem;

namespace fulcrum {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool in_path(const std::string& tool) {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  std::size_t i = 0;
  while (i <= p.size()) {
    std::size_t c = p.find(':', i);
    if (c == std::string::npos) c = p.size();
    const std::string dir = p.substr(i, c - i);
    if (!dir.empty() && ::access((dir + "/" + tool).c_str(), X_OK) == 0) return true;
    i = c + 1;
  }
  return false;
}

std::string run_capture(const std::string& cmd) {
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) throw DataError("cannot run '" + cmd + "'");
  std::string out;
  char buf[1 << 16];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int rc = ::pclose(f);
  if (rc != 0) throw DataError("'" + cmd + "' failed (status " + std::to_string(rc) + ")");
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "'\\''";
    else q.push_back(c);
  }
  return q + "'";
}

// Regular files under root whose name ends in one of `exts`, sorted, with
// any path component in `skip_dirs` excluded.
std::vector<std::string> walk(const std::string& root, const std::vector<std::string>& exts,
                              const std::vector<std::string>& skip_dirs) {
  std::vector<std::string> out;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
  if (ec) throw DataError("cannot list '" + root + "': " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) break;
    const auto& e = *it;
    const std::string name = e.path().filename().string();
    if (e.is_directory(ec)) {
      if (std::find(skip_dirs.begin(), skip_dirs.end(), name) != skip_dirs.end())
        it.disable_recursion_pending();
      continue;
    }
    if (!e.is_regular_file(ec)) continue;
    for (const auto& x : exts) {
      if (name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0) {
        out.push_back(e.path().string());
        break;
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

const std::string kWebModule = "engWEB2015eb";
const std::string kKjvModule = "engKJV2006eb";

std::string module_of(const std::string& kind) { return kind == "web" ? kWebModule : kKjvModule; }


// Path whose presence shows that the package is installed.
std::string probe_path(const BuiltinSource& b, const std::string& root) {
  if (b.name == "web" || b.name == "kjv") return root + "/mods.d/" + module_of(b.name) + ".conf";
  if (b.name == "wordnet") return root + "/data.noun";
  if (b.name == "perl-docs") return root + "/perl.pod";
  if (b.name == "python-stdlib") return root + "/os.py";
  if (b.name == "go-stdlib") return root + "/fmt/print.go";
  return root;
}

void add_doc(SourceText& out, const std::string& raw, std::uint64_t max_bytes, std::uint64_t& bytes) {
  if (max_bytes && bytes >= max_bytes) return;
  std::string d = clean_document(raw);
  if (d.empty()) return;
  bytes += d.size();
  out.documents.push_back(std::move(d));
}

}  // namespace

const std::vector<BuiltinSource>& builtin_sources() {
  static const std::vector<BuiltinSource> v = {
      {"web", "books", "sword-text-web", "libsword-utils", "mod2imp", "/usr/share/sword",
       "Public domain (World English Bible; \"World English Bible\" is a trademark of eBible.org)",
       "World English Bible with Deuterocanon (SWORD engWEB2015eb), one document per chapter"},
      {"kjv", "books", "sword-text-kjv", "libsword-utils", "mod2imp", "/usr/share/sword",
       "Public domain (outside the UK, where Crown patent applies)",
       "King James Version 1769 with Apocrypha (SWORD engKJV2006eb), one document per chapter"},
      {"fortunes", "books", "fortunes", "", "", "/usr/share/games/fortunes",
       "BSD-4-Clause-UC and public domain (Debian fortunes copyright file)",
       "fortune cookie files (fortunes, excluding the offensive set), one document per fortune"},
      {"wordnet", "reference", "wordnet-base", "", "", "/usr/share/wordnet",
       "WordNet 3.0 licence (Princeton University, permissive)",
       "WordNet glosses \"word, synonym: gloss\", 100 synsets per document"},
      {"python-docs", "technical", "python3.11-doc", "", "", "/usr/share/doc/python3.11/html/_sources",
       "PSF-2.0 (Python documentation)", "Python 3.11 documentation sources (.rst), one document per file"},
      {"perl-docs", "technical", "perl-doc", "", "", "/usr/share/perl/5.36.0/pod",
       "GPL-1+ or Artistic (Perl documentation)", "Perl 5.36 core documentation (POD rendered to text), one document per file"},
      {"python-stdlib", "code", "libpython3.11-stdlib", "", "", "/usr/lib/python3.11",
       "PSF-2.0 (Python standard library)",
       "Python 3.11 standard library .py files (tests and site-packages excluded), one document per file"},
      {"go-stdlib", "code", "golang-1.19-src", "", "", "/usr/share/go-1.19/src",
       "BSD-3-Clause (Go standard library)",
       "Go 1.19 standard library .go files (testdata excluded), one document per file"},
  };
  return v;
}

const BuiltinSource* find_builtin_source(const std::string& name) {
  for (const auto& b : builtin_sources())
    if (b.name == name) return &b;
  return nullptr;
}

std::string package_version(const std::string& package) {
  if (package.empty() || !in_path("dpkg-query")) return "";
  try {
    std::string v = run_capture("dpkg-query -W -f='${Version}' " + shell_quote(package) + " 2>/dev/null");
    while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
    return v;
  } catch (const DataError&) {
    return "";
  }
}

void check_source(const SourceConfig& src) {
  if (src.kind == "files") {
    if (src.paths.empty()) throw DataError("source '" + src.name + "': kind \"files\" needs paths = [...]");
    if (src.licence.empty())
      throw DataError("source '" + src.name + "': kind \"files\" needs a licence = \"...\" record");
    if (src.documents != "formfeed" && src.documents != "file")
      throw DataError("source '" + src.name + "': documents must be \"formfeed\" or \"file\" (got \"" +
                      src.documents + "\")");
    return;
  }
  const BuiltinSource* b = find_builtin_source(src.kind);
  if (!b) {
    std::string valid;
    for (const auto& s : builtin_sources()) valid += s.name + ", ";
    throw DataError("unknown source '" + src.kind + "' (valid: " + valid + "files)");
  }
  const std::string root = src.root.empty() ? b->root : src.root;
  const std::string probe = probe_path(*b, root);
  if (!is_dir(root) || !(is_dir(probe) || is_file(probe)))
    throw DataError("source '" + src.name + "' needs the Debian package " + b->package +
                    " (apt-get install " + b->package + "): " + probe + " not found");
  if (!b->tool.empty() && !in_path(b->tool))
    throw DataError("source '" + src.name + "' needs the program " + b->tool +
                    " from the Debian package " + b->tool_package + " (apt-get install " +
                    b->tool_package + ")");
}

SourceText extract_source(const SourceConfig& src) {
  check_source(src);
  SourceText out;
  std::uint64_t bytes = 0;
  const std::uint64_t cap = src.max_bytes;
  if (src.kind == "files") {
    out.licence = src.licence;
    std::vector<std::string> files;
    for (const auto& pat : src.paths) {
      glob_t g{};
      const int rc = ::glob(pat.c_str(), 0, nullptr, &g);
      if (rc != 0) {
        ::globfree(&g);
        throw DataError("source '" + src.name + "': no file matches '" + pat + "'");
      }
      std::vector<std::string> hit(g.gl_pathv, g.gl_pathv + g.gl_pathc);
      ::globfree(&g);
      std::sort(hit.begin(), hit.end());
      for (auto& h : hit)
        if (is_file(h)) files.push_back(h);
    }
    for (const auto& f : files) {
      const std::string text = slurp(f);
      ++out.files;
      if (src.documents == "file") {
        add_doc(out, text, cap, bytes);
      } else {
        for (const auto& d : split_documents(text)) add_doc(out, d, cap, bytes);
      }
    }
    return out;
  }
  const BuiltinSource& b = *find_builtin_source(src.kind);
  const std::string root = src.root.empty() ? b.root : src.root;
  out.package = b.package;
  out.package_version = package_version(b.package);
  out.licence = src.licence.empty() ? b.licence : src.licence;
  if (b.name == "web" || b.name == "kjv") {
    const std::string cmd = "SWORD_PATH=" + shell_quote(root) + " " + b.tool + " " +
                            module_of(b.name) + " 2>/dev/null";
    const std::string imp = run_capture(cmd);
    if (imp.empty())
      throw DataError("source '" + src.name + "': " + b.tool + " " + module_of(b.name) +
                      " gave no text (apt-get install " + b.package + ")");
    out.files = 1;
    for (const auto& d : osis_imp_to_chapters(imp)) add_doc(out, d, cap, bytes);
  } else if (b.name == "fortunes") {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(root)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || name.find('.') != std::string::npos) continue;
      files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      ++out.files;
      for (const auto& d : split_fortunes(slurp(f))) add_doc(out, d, cap, bytes);
    }
  } else if (b.name == "wordnet") {
    for (const char* part : {"noun", "verb", "adj", "adv"}) {
      const std::string f = root + "/data." + part;
      if (!is_file(f)) continue;
      ++out.files;
      for (const auto& d : wordnet_glosses(slurp(f), 100)) add_doc(out, d, cap, bytes);
    }
  } else if (b.name == "python-docs") {
    for (const auto& f : walk(root, {".txt"}, {})) {
      ++out.files;
      add_doc(out, slurp(f), cap, bytes);
    }
  } else if (b.name == "perl-docs") {
    for (const auto& f : walk(root, {".pod"}, {})) {
      ++out.files;
      add_doc(out, pod_to_text(slurp(f)), cap, bytes);
    }
  } else if (b.name == "python-stdlib") {
    for (const auto& f : walk(root, {".py"}, {"test", "tests", "idle_test", "site-packages",
                                              "dist-packages", "__pycache__"})) {
      ++out.files;
      add_doc(out, slurp(f), cap, bytes);
    }
  } else if (b.name == "go-stdlib") {
    for (const auto& f : walk(root, {".go"}, {"testdata"})) {
      ++out.files;
      add_doc(out, slurp(f), cap, bytes);
    }
  }
  if (out.documents.empty())
    throw DataError("source '" + src.name + "' has no text under " + root + " (apt-get install " +
                    b.package + ")");
  return out;
}

}  // namespace fulcrum
