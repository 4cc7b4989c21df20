#include "h5io.hpp"

#include <cmath>
#include <optional>
#include <set>

#include "io/run_file.hpp"

namespace fulcrum::fit {

namespace layout = fulcrum::run_layout;

namespace {

// The numeric attributes of `group`; attributes of other kinds (strings such
// as /config/lr_schedule) are not values fulcrum-fit reads and are skipped.
std::map<std::string, double> numeric_attrs(const h5::Group& group) {
  std::map<std::string, double> out;
  for (const std::string& name : group.attr_names()) {
    const h5::TypeClass c = group.attr_class(name);
    if (c == h5::TypeClass::integer || c == h5::TypeClass::floating) out[name] = group.attr_number(name);
  }
  return out;
}

// /config and /summary values the trainer stores as int64 (src/train/
// run_plan.cpp describe_run, trainer.cpp); the rest are float64. The layout
// test (postprocess/tests/test_layout.cpp) checks these against a real run.
bool is_int_config_key(const std::string& k) {
  static const std::set<std::string> ints = {
      "is_moe", "d_model", "n_layers", "num_experts", "num_active_experts", "num_shared_experts", "d_expert",
      "batch_tokens", "params_total", "params_active"};
  return ints.count(k) > 0;
}
bool is_int_summary_key(const std::string& k) { return k == "tokens_seen" || k == "steps_completed"; }

double value_or(const std::map<std::string, double>& m, const char* key, double fallback) {
  const auto it = m.find(key);
  return it == m.end() ? fallback : it->second;
}

}  // namespace

bool read_run_file(const std::string& path, RunRecord& out, std::string& reason) {
  out = RunRecord{};
  out.path = path;
  if (!h5::File::is_hdf5(path)) {
    reason = "not a readable HDF5 file (truncated, corrupt or another format)";
    return false;
  }
  std::optional<h5::File> file;
  try {
    file = h5::File::open(path, h5::File::Access::read_only, "run file");
  } catch (const h5::Error&) {
    reason = "HDF5 file cannot be opened (truncated or corrupt)";
    return false;
  }
  try {
    const h5::Group root = file->root();
    const auto is_string = [&](const char* name) {
      return root.has_attr(name) && root.attr_class(name) == h5::TypeClass::string;
    };
    const auto is_number = [&](const char* name) {
      if (!root.has_attr(name)) return false;
      const h5::TypeClass c = root.attr_class(name);
      return c == h5::TypeClass::integer || c == h5::TypeClass::floating;
    };
    if (!is_string(layout::kFormatAttr) || root.attr_string(layout::kFormatAttr) != kRunFileFormat) {
      reason = std::string("foreign HDF5 file: no root attribute format = \"") + kRunFileFormat + "\"";
      return false;
    }
    out.format = root.attr_string(layout::kFormatAttr);
    if (!is_number(layout::kFormatVersionAttr)) {
      reason = "missing root attribute format_version";
      return false;
    }
    out.format_version = static_cast<std::int64_t>(root.attr_number(layout::kFormatVersionAttr));
    if (out.format_version != kRunFileFormatVersion) {
      reason = "unsupported format_version " + std::to_string(out.format_version) + " (this fulcrum-fit reads version " +
               std::to_string(kRunFileFormatVersion) + ")";
      return false;
    }
    if (!is_string(layout::kStatusAttr)) {
      reason = "missing root attribute status";
      return false;
    }
    out.status = root.attr_string(layout::kStatusAttr);
    if (is_string(layout::kDeckAttr)) out.deck = root.attr_string(layout::kDeckAttr);
    if (is_number(layout::kSeedAttr)) out.seed = static_cast<std::int64_t>(root.attr_number(layout::kSeedAttr));
    for (const auto& [group, values] : {std::pair{layout::kConfig, &out.config}, std::pair{layout::kSummary, &out.summary}}) {
      if (!root.has(group)) {
        reason = std::string("missing or unreadable group ") + group;
        return false;
      }
      *values = numeric_attrs(root.group(group));
    }
    return true;
  } catch (const h5::Error& e) {
    reason = e.what();
    return false;
  }
}

void write_run_file(const std::string& path, const RunRecord& rec) {
  try {
    RunFile file = RunFile::create_file(path, true);
    file.set_root_attr(layout::kFormatAttr, rec.format);
    file.set_root_attr(layout::kFormatVersionAttr, rec.format_version);
    file.set_status(rec.status);
    file.set_root_attr(layout::kDeckAttr, rec.deck);
    file.set_root_attr(layout::kSeedAttr, rec.seed);
    for (const auto& [k, v] : rec.config) {
      if (is_int_config_key(k)) file.set_config(k, static_cast<std::int64_t>(std::llround(v)));
      else file.set_config(k, v);
    }
    for (const auto& [k, v] : rec.summary) {
      if (is_int_summary_key(k) && std::isfinite(v)) file.set_summary(k, static_cast<std::int64_t>(std::llround(v)));
      else file.set_summary(k, v);
    }
    // A short loss curve ending at the summary's losses, as a trainer logs it.
    const double final_train = value_or(rec.summary, "final_train_loss", 0.0);
    const double final_val = value_or(rec.summary, "final_val_loss", final_train);
    const double tokens = value_or(rec.summary, "tokens_seen", value_or(rec.config, "tokens_target", 0.0));
    const double flops_per_token = value_or(rec.config, "flops_per_token", 0.0);
    const double lr = value_or(rec.config, "lr_peak", 0.0);
    const double loss_over_final[] = {1.5, 1.1, 1.0};
    for (int i = 0; i < 3; ++i) {
      RunFile::TrainRow row;
      row.step = i + 1;
      row.tokens = static_cast<std::int64_t>(std::llround(tokens * (i + 1) / 3));
      row.flops = static_cast<double>(row.tokens) * flops_per_token;
      row.loss = row.lm_loss = final_train * loss_over_final[i];
      row.lr = lr;
      file.append_train(row);
    }
    for (int i : {0, 2}) {
      RunFile::EvalRow row;
      row.step = i + 1;
      row.tokens = static_cast<std::int64_t>(std::llround(tokens * (i + 1) / 3));
      row.flops = static_cast<double>(row.tokens) * flops_per_token;
      row.val_loss = final_val * loss_over_final[i];
      file.append_eval(row);
    }
    file.close();
  } catch (const RunFileError& e) {
    throw std::runtime_error(std::string("cannot write synthetic run file: ") + e.what());
  }
}

H5Writer::H5Writer(const std::string& path)
    : file_(h5::File::create(path, h5::File::Create::truncate, "fit file")) {}

void H5Writer::group(const std::string& path) { file_.root().require_group(path); }

void H5Writer::dataset(const std::string& path, const std::vector<double>& v) {
  file_.root().write_dataset(path, v);
}

void H5Writer::attr(const std::string& obj, const std::string& name, double v) {
  file_.root().object(obj).set_attr(name, v);
}

void H5Writer::attr(const std::string& obj, const std::string& name, const std::string& v) {
  file_.root().object(obj).set_attr(name, v);
}

}  // namespace fulcrum::fit
