// h5io.hpp: the HDF5 side of fulcrum-fit, on the HDF5 layer shared with the
// trainer (src/io/h5.hpp). Reads run files (layout in doc/output-format.md and
// src/io/run_file_layout.hpp; the agreed part is restated in doc/fit.md),
// writes run files through the trainer's own writer (RunFile) for synthetic
// tests, and writes fit.h5.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/h5.hpp"

namespace fulcrum::fit {

// Raw content of one run file, exactly as stored.
struct RunRecord {
  std::string path;                       // the run id
  std::string format = "fulcrum-run";
  std::int64_t format_version = 1;
  std::string status;                     // running|completed|diverged|failed
  std::string deck;
  std::int64_t seed = 0;
  std::map<std::string, double> config;   // /config attributes, any numeric type
  std::map<std::string, double> summary;  // /summary attributes
};

// Reads `path`. On failure returns false and a one-line reason (truncated,
// not HDF5, foreign layout, unsupported version, missing group).
bool read_run_file(const std::string& path, RunRecord& out, std::string& reason);

// Writes a run file through the trainer's writer (fulcrum::RunFile), so it
// has the trainer's layout: root attributes, /config and /summary attributes
// typed as the trainer types them, and /train and /eval rows (three training
// rows and two evaluations whose last loss is the summary's).
void write_run_file(const std::string& path, const RunRecord& rec);

// Minimal writer for fit.h5: groups, 1-D float64 datasets, attributes.
class H5Writer {
 public:
  explicit H5Writer(const std::string& path);
  void group(const std::string& path);  // creates intermediate groups
  void dataset(const std::string& path, const std::vector<double>& v);  // and its parent groups
  void attr(const std::string& obj, const std::string& name, double v);
  void attr(const std::string& obj, const std::string& name, const std::string& v);

 private:
  h5::File file_;
};

}  // namespace fulcrum::fit
