// run_file.hpp: the HDF5 run file, one per run, written by rank 0.
// The layout is the contract documented in doc/output-format.md.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/run_file_layout.hpp"

namespace fulcrum {

namespace h5 {
class File;
}

struct RunFileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class RunFile {
 public:
  // Creates dir (mkdir -p) and dir/run.h5 and writes the root attributes
  // format = "fulcrum-run", format_version = 1, status = "running", plus the
  // empty /train and /eval datasets and the /config, /timers, /summary groups.
  // Refuses (RunFileError) if run.h5 exists and !overwrite.
  static RunFile create(const std::string& dir, bool overwrite);
  // The same at an explicit file path (its directory must exist): for tools
  // that write many run files into one directory (fulcrum-fit's synthetic
  // campaigns).
  static RunFile create_file(const std::string& path, bool overwrite);
  // Opens an existing run file read-write (for resume); checks the format.
  static RunFile open_existing(const std::string& path);
  // A run file that writes nothing: what ranks other than 0 hold, so the
  // trainer's code is the same on every rank.
  static RunFile detached();

  ~RunFile();
  RunFile(RunFile&& other) noexcept;
  RunFile& operator=(RunFile&& other) noexcept;
  RunFile(const RunFile&) = delete;
  RunFile& operator=(const RunFile&) = delete;

  const std::string& path() const { return path_; }

  // Root attributes (an existing attribute of the same name is replaced).
  void set_root_attr(const std::string& name, const std::string& value);
  void set_root_attr(const std::string& name, const char* value) {
    set_root_attr(name, std::string(value));
  }
  void set_root_attr(const std::string& name, double value);
  void set_root_attr(const std::string& name, std::int64_t value);
  void set_root_attr(const std::string& name, int value) {
    set_root_attr(name, static_cast<std::int64_t>(value));
  }
  void set_root_attr(const std::string& name, std::uint64_t value);  // throws if > INT64_MAX
  // "running" | "completed" | "diverged" | "failed"; anything else throws.
  void set_status(const std::string& status);

  // /config attributes. Integers (and bool as 0/1) are stored as int64.
  void set_config(const std::string& name, double value);
  void set_config(const std::string& name, std::int64_t value);
  void set_config(const std::string& name, int value) {
    set_config(name, static_cast<std::int64_t>(value));
  }
  void set_config(const std::string& name, std::uint64_t value);  // throws if > INT64_MAX
  void set_config(const std::string& name, bool value) {
    set_config(name, static_cast<std::int64_t>(value ? 1 : 0));
  }
  void set_config(const std::string& name, const std::string& value);
  void set_config(const std::string& name, const char* value) {
    set_config(name, std::string(value));
  }

  // /train: extendible 1-D datasets of equal length, one element per row.
  struct TrainRow {
    std::int64_t step = 0, tokens = 0;
    double flops = 0, loss = 0, lm_loss = 0, aux_loss = 0, z_loss = 0, lr = 0,
           grad_norm = 0, tokens_per_second = 0;
  };
  void append_train(const TrainRow& row);

  // /eval: step, tokens, flops, val_loss.
  struct EvalRow {
    std::int64_t step = 0, tokens = 0;
    double flops = 0, val_loss = 0;
  };
  void append_eval(const EvalRow& row);

  // /routing: one snapshot = one row; (n_moe_layers, n_experts) fixed by the
  // first call (later calls with other sizes throw).
  struct RoutingSnapshot {
    std::int64_t step = 0, tokens = 0;
    int n_moe_layers = 0, n_experts = 0;
    std::vector<double> expert_share;        // (L, E) row-major
    std::vector<double> max_violation;       // (L) max load / mean load - 1
    std::vector<double> router_entropy;      // (L) nats
    std::vector<double> dropped_fraction;    // (L)
    std::vector<std::int32_t> moe_layer_index;  // (L) transformer layer indices
    // added with the routing options; empty vectors are not written
    std::vector<double> tokens_per_expert;   // (L, E) top-k assignments since the last snapshot (all ranks)
    std::vector<double> min_load;            // (L) min load / mean load
    std::vector<double> topk_margin;         // (L) mean gap between the k-th and (k+1)-th selection score
    std::vector<double> router_bias;         // (L, E) selection bias (bias balancing only)
  };
  void append_routing(const RoutingSnapshot& snap);

  // /timers: attributes "<name>.seconds" (double) and "<name>.calls" (int64).
  // Any name without '/' (each call adds or replaces one timer).
  void set_timer(const std::string& name, double seconds, std::int64_t calls);

  // /summary attributes.
  void set_summary(const std::string& name, double value);
  void set_summary(const std::string& name, std::int64_t value);
  void set_summary(const std::string& name, int value) {
    set_summary(name, static_cast<std::int64_t>(value));
  }

  // Rows in /train and /eval so far.
  std::int64_t train_rows() const;
  std::int64_t eval_rows() const;
  std::int64_t routing_rows() const;  // 0 before the first snapshot

  // H5Fflush: a crash after flush leaves a readable file.
  void flush();
  // Resume support: drops rows logged after `step` from /train, /eval, /routing.
  void truncate_after_step(std::int64_t step);
  // Closes now (the destructor does it otherwise); further calls throw.
  void close();

 private:
  RunFile(std::string path, std::unique_ptr<h5::File> file);
  h5::File& file() const;  // throws if closed
  [[noreturn]] void fail(const std::string& what) const;
  template <class T>
  void write_attr(const std::string& group, const std::string& name, const T& value);
  void create_layout();

  std::string path_;
  bool detached_ = false;
  std::unique_ptr<h5::File> file_;  // null when detached or closed (HDF5 is not exposed here)
};

// Reading helpers (also used by tests and tools). Each opens `file`
// read-only, and throws RunFileError naming file and object on failure.
// read_dataset_1d reads any numeric dataset as double, flattened row-major.
std::vector<double> read_dataset_1d(const std::string& file, const std::string& dataset);
// Dimensions of a dataset.
std::vector<std::uint64_t> read_dataset_dims(const std::string& file,
                                             const std::string& dataset);
std::string read_string_attr(const std::string& file, const std::string& object,
                             const std::string& name);
double read_numeric_attr(const std::string& file, const std::string& object,
                         const std::string& name);
// Names of the attributes of an object, in creation/name order.
std::vector<std::string> list_attrs(const std::string& file, const std::string& object);

// Current time as ISO 8601 UTC, e.g. "2024-05-01T12:34:56Z".
std::string iso8601_utc_now();

}  // namespace fulcrum
