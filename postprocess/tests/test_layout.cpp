// fulcrum-fit's synthetic run files (the campaigns its tests fit) have the
// layout of a real trainer run file: the groups, datasets and attributes the
// fitter reads exist in both with the same HDF5 types, and the fitter loads
// the real file. Needs fulcrum-train and data/default (FULCRUM_TRAIN_BIN,
// FULCRUM_SOURCE_DIR).
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <ostream>
#include <sstream>
#include <string>

#include "io/h5.hpp"
#include "io/run_file_layout.hpp"
#include "runs.hpp"
#include "synth.hpp"

using namespace fulcrum;
using namespace fulcrum::fit;
namespace fs = std::filesystem;

namespace fulcrum::h5 {
// readable failure messages
void PrintTo(TypeClass c, std::ostream* os) {
  static const char* const names[] = {"integer", "floating", "string", "other"};
  *os << names[static_cast<int>(c)];
}
}  // namespace fulcrum::h5

namespace {

// What a reader sees of one dataset: its element class, rank and growth.
struct DatasetShape {
  h5::TypeClass type;
  std::size_t rank;
  bool appendable;
  bool operator==(const DatasetShape& o) const {
    return type == o.type && rank == o.rank && appendable == o.appendable;
  }
};
void PrintTo(const DatasetShape& d, std::ostream* os) {
  fulcrum::h5::PrintTo(d.type, os);
  *os << ", rank " << d.rank << (d.appendable ? ", appendable" : ", fixed");
}

std::map<std::string, DatasetShape> datasets_in(const h5::Group& group) {
  std::map<std::string, DatasetShape> out;
  for (const std::string& name : group.children()) {
    if (!group.has_dataset(name)) continue;
    const h5::Dataset d = group.dataset(name);
    out[d.path()] = {d.type_class(), d.dims().size(), d.appendable()};
  }
  return out;
}

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A 4-step run of the checkpoint tests' tiny MoE deck; returns its run file.
std::string real_run_file(const std::string& dir) {
  const char* train = std::getenv("FULCRUM_TRAIN_BIN");
  const char* source = std::getenv("FULCRUM_SOURCE_DIR");
  if (!train || !source) {
    ADD_FAILURE() << "FULCRUM_TRAIN_BIN and FULCRUM_SOURCE_DIR must be set (ctest sets them)";
    return "";
  }
  const std::string src = source, log = dir + "/train.log";
  const std::string cmd = std::string(train) + " " + src + "/tests/checkpoint/tiny.toml --quiet" +
                          " --set data.train=" + src + "/data/default/train.tok" +
                          " --set data.valid=" + src + "/data/default/valid.tok" + " --set output.dir=" + dir +
                          "/real --set output.overwrite=true --set train.tokens=8192" +
                          " --set train.checkpoint_interval=0 > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
    ADD_FAILURE() << "fulcrum-train failed: " << cmd << "\n" << text_of(log);
    return "";
  }
  return dir + "/real/run.h5";
}

}  // namespace

TEST(Layout, SyntheticRunFilesHaveTheTrainersLayout) {
  const std::string dir = testing::TempDir() + "/fulcrum_fit_layout";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string real_path = real_run_file(dir);
  ASSERT_FALSE(real_path.empty());

  SynthSpec spec;
  spec.budgets = {1e18};
  spec.iso_sizes = 1;
  spec.hp_runs = 0;
  spec.el_A = {0.031};
  spec.el_G = {8};
  auto recs = synth_campaign(SynthTruth{}, spec);
  write_campaign(dir + "/synthetic", recs);
  ASSERT_GE(recs.size(), 2u);
  ASSERT_EQ(recs.front().config.at("is_moe"), 0.0);  // one dense and one MoE run at least
  ASSERT_EQ(recs.back().config.at("is_moe"), 1.0);

  const h5::File real_file = h5::File::open(real_path, h5::File::Access::read_only);
  const h5::Group real = real_file.root();
  for (const RunRecord& rec : {recs.front(), recs.back()}) {
    SCOPED_TRACE(rec.path);
    const h5::File synthetic_file = h5::File::open(rec.path, h5::File::Access::read_only);
    const h5::Group synthetic = synthetic_file.root();

    for (const char* group : run_layout::kCreatedGroups) {
      EXPECT_TRUE(real.has(group)) << group;
      EXPECT_TRUE(synthetic.has(group)) << group;
    }
    // /train and /eval: the same columns, types, ranks, appendable
    for (const char* group : {run_layout::kTrain, run_layout::kEval}) {
      const auto real_sets = datasets_in(real.group(group));
      EXPECT_FALSE(real_sets.empty()) << group;
      EXPECT_EQ(datasets_in(synthetic.group(group)), real_sets) << group;
      EXPECT_GT(synthetic.group(group).dataset(run_layout::kStepColumn).size(), 0u) << group << " has rows";
    }
    // the root attributes fulcrum-fit reads, with the trainer's types
    for (const char* attr : {run_layout::kFormatAttr, run_layout::kFormatVersionAttr, run_layout::kStatusAttr,
                             run_layout::kDeckAttr, run_layout::kSeedAttr}) {
      ASSERT_TRUE(real.has_attr(attr)) << attr;
      ASSERT_TRUE(synthetic.has_attr(attr)) << attr;
      EXPECT_EQ(synthetic.attr_class(attr), real.attr_class(attr)) << attr;
    }
    // every /config and /summary value of a synthetic run is one the trainer
    // writes, stored with the trainer's type (int64 or float64)
    for (const char* group : {run_layout::kConfig, run_layout::kSummary}) {
      const h5::Group real_group = real.group(group), synthetic_group = synthetic.group(group);
      const auto names = synthetic_group.attr_names();
      EXPECT_GE(names.size(), 5u) << group;
      for (const std::string& name : names) {
        ASSERT_TRUE(real_group.has_attr(name)) << group << "/" << name << " is not written by the trainer";
        EXPECT_EQ(synthetic_group.attr_class(name), real_group.attr_class(name)) << group << "/" << name;
      }
    }
  }

  // the fitter reads the real file as it reads the synthetic ones
  RunRecord real_record;
  std::string why;
  ASSERT_TRUE(read_run_file(real_path, real_record, why)) << why;
  EXPECT_EQ(real_record.status, "completed");
  fit::Run run;
  ASSERT_TRUE(run_from_record(real_record, LoadOptions{}, run, why)) << why;
  EXPECT_TRUE(run.is_moe);
  EXPECT_GT(run.M, 0);
  EXPECT_GT(run.loss, 0);
}
