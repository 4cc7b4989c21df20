#include "io/run_file.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <iterator>
#include <limits>
#include <utility>

#include "io/h5.hpp"

namespace fulcrum {

namespace layout = run_layout;
using run_layout::in_group;

namespace {

constexpr const char* kLabel = "run file";

// Runs `body`, turning the HDF5 layer's errors into RunFileErrors (the type
// the run file's users catch), message unchanged.
template <class Body>
decltype(auto) as_run_file_error(Body&& body) {
  try {
    return body();
  } catch (const h5::Error& e) {
    throw RunFileError(e.what());
  }
}

void mkdir_p(const std::string& dir) {
  if (dir.empty()) return;
  std::string cur;
  std::size_t pos = 0;
  while (pos <= dir.size()) {
    std::size_t slash = dir.find('/', pos);
    if (slash == std::string::npos) slash = dir.size();
    cur = dir.substr(0, slash);
    if (!cur.empty()) {
      if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
        throw RunFileError("cannot create directory '" + cur + "': " + std::strerror(errno));
      struct stat st {};
      if (::stat(cur.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw RunFileError("'" + cur + "' exists and is not a directory");
    }
    pos = slash + 1;
  }
}

void check_name(const std::string& file, const std::string& kind, const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == ".")
    throw RunFileError("run file '" + file + "': invalid " + kind + " name '" + name +
                       "' (empty, '.', or contains '/')");
}

std::int64_t rows_of(const h5::Group& root, const char* group) {
  const std::string step = in_group(group, layout::kStepColumn);
  if (!root.has(step)) return 0;
  return static_cast<std::int64_t>(root.dataset(step).dims().at(0));
}

}  // namespace

// ---------------------------------------------------------------- RunFile

RunFile::RunFile(std::string path, std::unique_ptr<h5::File> file)
    : path_(std::move(path)), file_(std::move(file)) {}

RunFile::~RunFile() = default;
RunFile::RunFile(RunFile&& other) noexcept = default;
RunFile& RunFile::operator=(RunFile&& other) noexcept = default;

RunFile RunFile::detached() {
  RunFile f("", nullptr);
  f.detached_ = true;
  return f;
}

RunFile RunFile::create(const std::string& dir, bool overwrite) {
  mkdir_p(dir);
  return create_file((dir.empty() ? std::string(".") : dir) + "/run.h5", overwrite);
}

RunFile RunFile::create_file(const std::string& path, bool overwrite) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (!overwrite)
      throw RunFileError("run file '" + path +
                         "' already exists; refusing to overwrite it "
                         "(set [output] overwrite = true or choose another dir)");
    if (S_ISDIR(st.st_mode)) throw RunFileError("run file '" + path + "' is a directory");
  }
  return as_run_file_error([&] {
    const auto mode = overwrite ? h5::File::Create::truncate : h5::File::Create::exclusive;
    RunFile rf(path, std::make_unique<h5::File>(h5::File::create(path, mode, kLabel)));
    rf.create_layout();
    rf.flush();
    return rf;
  });
}

RunFile RunFile::open_existing(const std::string& path) {
  return as_run_file_error([&] {
    RunFile rf(path, std::make_unique<h5::File>(h5::File::open(path, h5::File::Access::read_write, kLabel)));
    const h5::Group root = rf.file().root();
    if (!root.has_attr(layout::kFormatAttr))
      throw RunFileError("run file '" + path + "': no 'format' attribute; not a " + kRunFileFormat + " file");
    const std::string format = root.attr_string(layout::kFormatAttr);
    if (format != kRunFileFormat)
      throw RunFileError("run file '" + path + "': format is '" + format + "', expected '" + kRunFileFormat +
                         "'");
    return rf;
  });
}

h5::File& RunFile::file() const {
  if (!file_) throw RunFileError("run file '" + path_ + "': is closed");
  return *file_;
}

void RunFile::fail(const std::string& what) const { throw RunFileError("run file '" + path_ + "': " + what); }

void RunFile::close() {
  if (!file_) return;
  std::unique_ptr<h5::File> f = std::move(file_);
  as_run_file_error([&] { f->close(); });
}

void RunFile::flush() {
  if (detached_) return;  // non-writing rank
  as_run_file_error([&] { file().flush(); });
}

template <class T>
void RunFile::write_attr(const std::string& group, const std::string& name, const T& value) {
  check_name(path_, "attribute", name);
  as_run_file_error([&] { file().root().require_group(group).set_attr(name, value); });
}

void RunFile::create_layout() {
  h5::Group root = file().root();
  root.set_attr(layout::kFormatAttr, kRunFileFormat);
  root.set_attr(layout::kFormatVersionAttr, kRunFileFormatVersion);
  root.set_attr(layout::kStatusAttr, "running");
  for (const char* g : layout::kCreatedGroups) root.require_group(g);
  const auto columns = [&](const char* group, const auto& int_columns, const auto& real_columns) {
    for (const char* n : int_columns)
      root.create_appendable<std::int64_t>(in_group(group, n), {}, layout::kColumnChunkRows);
    for (const char* n : real_columns)
      root.create_appendable<double>(in_group(group, n), {}, layout::kColumnChunkRows);
  };
  columns(layout::kTrain, layout::kTrainIntColumns, layout::kTrainRealColumns);
  columns(layout::kEval, layout::kEvalIntColumns, layout::kEvalRealColumns);
}

void RunFile::set_root_attr(const std::string& name, const std::string& value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kRoot, name, value);
}
void RunFile::set_root_attr(const std::string& name, double value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kRoot, name, value);
}
void RunFile::set_root_attr(const std::string& name, std::int64_t value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kRoot, name, value);
}
void RunFile::set_root_attr(const std::string& name, std::uint64_t value) {
  if (detached_) return;  // non-writing rank
  if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    fail("root attribute '" + name + "' value " + std::to_string(value) + " does not fit int64");
  write_attr(layout::kRoot, name, static_cast<std::int64_t>(value));
}

void RunFile::set_status(const std::string& status) {
  if (detached_) return;  // non-writing rank
  if (status != "running" && status != "completed" && status != "diverged" && status != "failed")
    throw RunFileError("run file '" + path_ + "': invalid status '" + status +
                       "' (valid: running, completed, diverged, failed)");
  write_attr(layout::kRoot, layout::kStatusAttr, status);
}

void RunFile::set_config(const std::string& name, double value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kConfig, name, value);
}
void RunFile::set_config(const std::string& name, std::int64_t value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kConfig, name, value);
}
void RunFile::set_config(const std::string& name, std::uint64_t value) {
  if (detached_) return;  // non-writing rank
  if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    fail("config attribute '" + name + "' value " + std::to_string(value) + " does not fit int64");
  write_attr(layout::kConfig, name, static_cast<std::int64_t>(value));
}
void RunFile::set_config(const std::string& name, const std::string& value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kConfig, name, value);
}

void RunFile::append_train(const TrainRow& r) {
  if (detached_) return;  // non-writing rank
  as_run_file_error([&] {
    h5::Group g = file().root().group(layout::kTrain);
    const std::int64_t ints[] = {r.step, r.tokens};
    const double reals[] = {r.flops, r.loss, r.lm_loss, r.aux_loss, r.z_loss, r.lr, r.grad_norm, r.tokens_per_second};
    static_assert(std::size(ints) == layout::kTrainIntColumns.size() &&
                  std::size(reals) == layout::kTrainRealColumns.size(), "a /train column without a value");
    for (std::size_t i = 0; i < std::size(ints); ++i) g.dataset(layout::kTrainIntColumns[i]).append_row(&ints[i], 1);
    for (std::size_t i = 0; i < std::size(reals); ++i) g.dataset(layout::kTrainRealColumns[i]).append_row(&reals[i], 1);
  });
}

void RunFile::append_eval(const EvalRow& r) {
  if (detached_) return;  // non-writing rank
  as_run_file_error([&] {
    h5::Group g = file().root().group(layout::kEval);
    const std::int64_t ints[] = {r.step, r.tokens};
    const double reals[] = {r.flops, r.val_loss};
    static_assert(std::size(ints) == layout::kEvalIntColumns.size() &&
                  std::size(reals) == layout::kEvalRealColumns.size(), "an /eval column without a value");
    for (std::size_t i = 0; i < std::size(ints); ++i) g.dataset(layout::kEvalIntColumns[i]).append_row(&ints[i], 1);
    for (std::size_t i = 0; i < std::size(reals); ++i) g.dataset(layout::kEvalRealColumns[i]).append_row(&reals[i], 1);
  });
}

void RunFile::append_routing(const RoutingSnapshot& s) {
  if (detached_) return;  // non-writing rank
  const int L = s.n_moe_layers, E = s.n_experts;
  if (L <= 0 || E <= 0)
    fail("routing snapshot needs n_moe_layers > 0 and n_experts > 0 (got " + std::to_string(L) + ", " +
         std::to_string(E) + ")");
  const auto sizeok = [&](std::size_t got, std::size_t want, const char* what) {
    if (got != want)
      fail(std::string("routing snapshot: ") + what + " has " + std::to_string(got) + " values, expected " +
           std::to_string(want));
  };
  const std::size_t Lz = static_cast<std::size_t>(L), Ez = static_cast<std::size_t>(E);
  sizeok(s.expert_share.size(), Lz * Ez, "expert_share");
  sizeok(s.max_violation.size(), Lz, "max_violation");
  sizeok(s.router_entropy.size(), Lz, "router_entropy");
  sizeok(s.dropped_fraction.size(), Lz, "dropped_fraction");
  sizeok(s.moe_layer_index.size(), Lz, "moe_layer_index");
  if (!s.tokens_per_expert.empty()) sizeok(s.tokens_per_expert.size(), Lz * Ez, "tokens_per_expert");
  if (!s.min_load.empty()) sizeok(s.min_load.size(), Lz, "min_load");
  if (!s.topk_margin.empty()) sizeok(s.topk_margin.size(), Lz, "topk_margin");
  if (!s.router_bias.empty()) sizeok(s.router_bias.size(), Lz * Ez, "router_bias");

  const std::vector<double>* const layer_values[] = {&s.max_violation, &s.router_entropy, &s.dropped_fraction};
  static_assert(std::size(layer_values) == layout::kRoutingLayerColumns.size(), "a /routing column without a value");
  // optional diagnostics: created with the first snapshot that has them; a
  // file started by an earlier version lacks them and they are skipped
  struct Optional {
    const char* name;
    const std::vector<double>* values;
    bool per_expert;  // (L, E) rows, else (L)
  };
  const Optional optional[] = {{layout::kTokensPerExpert, &s.tokens_per_expert, true},
                               {layout::kRouterBias, &s.router_bias, true},
                               {layout::kMinLoad, &s.min_load, false},
                               {layout::kTopkMargin, &s.topk_margin, false}};
  const std::uint64_t hL = Lz, hE = Ez;
  as_run_file_error([&] {
    h5::Group root = file().root();
    const bool fresh = !root.has(in_group(layout::kRouting, layout::kExpertShare));
    h5::Group g = root.require_group(layout::kRouting);
    if (fresh) {
      const auto chunk = layout::kRoutingChunkRows;
      for (const Optional& o : optional)
        if (!o.values->empty())
          g.create_appendable<double>(o.name, o.per_expert ? std::vector<std::uint64_t>{hL, hE}
                                                           : std::vector<std::uint64_t>{hL}, chunk);
      for (const char* n : layout::kRoutingIntColumns)
        g.create_appendable<std::int64_t>(n, {}, layout::kColumnChunkRows);
      g.create_appendable<double>(layout::kExpertShare, {hL, hE}, chunk);
      for (const char* n : layout::kRoutingLayerColumns) g.create_appendable<double>(n, {hL}, chunk);
      g.write_dataset<std::int32_t>(layout::kLayerIndex, s.moe_layer_index);
      g.set_attr(layout::kMoeLayersAttr, std::int64_t{L});
      g.set_attr(layout::kExpertsAttr, std::int64_t{E});
    } else {
      const auto d = g.dataset(layout::kExpertShare).dims();
      if (d.size() != 3 || d[1] != hL || d[2] != hE)
        fail("routing snapshot shape (" + std::to_string(L) + ", " + std::to_string(E) + ") differs from the file's (" +
             (d.size() == 3 ? std::to_string(d[1]) : "?") + ", " + (d.size() == 3 ? std::to_string(d[2]) : "?") + ")");
    }
    g.dataset(layout::kRoutingIntColumns[0]).append_row(&s.step, 1);
    g.dataset(layout::kRoutingIntColumns[1]).append_row(&s.tokens, 1);
    g.dataset(layout::kExpertShare).append_row(s.expert_share.data(), s.expert_share.size());
    for (std::size_t i = 0; i < std::size(layer_values); ++i)
      g.dataset(layout::kRoutingLayerColumns[i]).append_row(layer_values[i]->data(), layer_values[i]->size());
    for (const Optional& o : optional)
      if (!o.values->empty() && g.has(o.name)) g.dataset(o.name).append_row(o.values->data(), o.values->size());
  });
}

void RunFile::set_timer(const std::string& name, double seconds, std::int64_t calls) {
  if (detached_) return;  // non-writing rank
  check_name(path_, "timer", name);
  write_attr(layout::kTimers, name + layout::kTimerSecondsSuffix, seconds);
  write_attr(layout::kTimers, name + layout::kTimerCallsSuffix, calls);
}

void RunFile::set_summary(const std::string& name, double value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kSummary, name, value);
}
void RunFile::set_summary(const std::string& name, std::int64_t value) {
  if (detached_) return;  // non-writing rank
  write_attr(layout::kSummary, name, value);
}

std::int64_t RunFile::train_rows() const {
  return as_run_file_error([&] { return rows_of(file().root(), layout::kTrain); });
}
std::int64_t RunFile::eval_rows() const {
  return as_run_file_error([&] { return rows_of(file().root(), layout::kEval); });
}
std::int64_t RunFile::routing_rows() const {
  return as_run_file_error([&] { return rows_of(file().root(), layout::kRouting); });
}

// Drops every /train, /eval and /routing row whose step is greater than
// `step` (rows written after the checkpoint a resumed run restarts from),
// so resuming appends without duplicating steps.
void RunFile::truncate_after_step(std::int64_t step) {
  if (detached_) return;  // non-writing rank
  as_run_file_error([&] {
    const h5::Group root = file().root();
    for (const char* group : {layout::kTrain, layout::kEval, layout::kRouting}) {
      if (!root.has(in_group(group, layout::kStepColumn))) continue;
      h5::Group g = root.group(group);
      const std::vector<std::int64_t> steps = g.dataset(layout::kStepColumn).read<std::int64_t>();
      std::uint64_t keep = 0;
      while (keep < steps.size() && steps[keep] <= step) ++keep;
      if (keep == steps.size()) continue;
      for (const std::string& name : g.children()) {
        if (!g.has_dataset(name)) continue;
        h5::Dataset d = g.dataset(name);
        if (d.appendable() && d.dims()[0] > keep) d.resize_rows(keep);
      }
    }
  });
}

// ---------------------------------------------------------------- readers

namespace {
h5::File open_for_reading(const std::string& file) {
  return h5::File::open(file, h5::File::Access::read_only, kLabel);
}
}  // namespace

std::vector<double> read_dataset_1d(const std::string& file, const std::string& dataset) {
  return as_run_file_error([&] { return open_for_reading(file).root().dataset(dataset).read<double>(); });
}

std::vector<std::uint64_t> read_dataset_dims(const std::string& file, const std::string& dataset) {
  return as_run_file_error([&] { return open_for_reading(file).root().dataset(dataset).dims(); });
}

std::string read_string_attr(const std::string& file, const std::string& object, const std::string& name) {
  return as_run_file_error([&] { return open_for_reading(file).root().object(object).attr_string(name); });
}

double read_numeric_attr(const std::string& file, const std::string& object, const std::string& name) {
  return as_run_file_error([&] { return open_for_reading(file).root().object(object).attr_number(name); });
}

std::vector<std::string> list_attrs(const std::string& file, const std::string& object) {
  return as_run_file_error([&] { return open_for_reading(file).root().object(object).attr_names(); });
}

std::string iso8601_utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace fulcrum
