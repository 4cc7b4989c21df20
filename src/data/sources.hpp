// sources.hpp: text sources for `fulcrum-data build` (doc/data.md).
//
// A built-in source reads text that a Debian package installs (World English
// Bible, KJV, fortunes, WordNet glosses, Python and Perl docs, Python and Go
// standard libraries); the "files" kind reads the user's own text files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fulcrum {

struct BuiltinSource {
  std::string name;          // as written in a spec: [[source]] name = "web"
  std::string group;         // default source group
  std::string package;       // Debian package that installs the text
  std::string tool_package;  // Debian package of the extraction tool ("" if none)
  std::string tool;          // extraction program looked up in PATH ("" if none)
  std::string root;          // default install location
  std::string licence;
  std::string description;
};

const std::vector<BuiltinSource>& builtin_sources();
const BuiltinSource* find_builtin_source(const std::string& name);

// One [[source]] of a spec.
struct SourceConfig {
  std::string name;              // unique within the spec
  std::string kind;              // a builtin source name, or "files"
  std::string group;             // source group (books, reference, technical, code, ...)
  std::string root;              // builtin: install location override
  std::vector<std::string> paths;  // files: paths or glob patterns (absolute)
  std::string documents = "formfeed";  // files: "formfeed" (\f lines) or "file"
  std::string licence;           // files: required; builtin: override
  std::uint64_t max_bytes = 0;   // 0 = all; else stop after this many bytes of documents
};

struct SourceText {
  std::vector<std::string> documents;  // cleaned (clean_document), non-empty
  std::string package;                 // "" for files
  std::string package_version;         // dpkg version or ""
  std::string licence;
  std::uint64_t files = 0;             // input files read
};

// Throws DataError when the source cannot be read, naming the Debian package
// to install (e.g. "apt-get install golang-1.19-src").
void check_source(const SourceConfig& src);

// Reads and cleans the documents of one source, in a deterministic order
// (files sorted by path). Throws DataError.
SourceText extract_source(const SourceConfig& src);

// dpkg version of an installed package, "" when unknown.
std::string package_version(const std::string& package);

}  // namespace fulcrum
