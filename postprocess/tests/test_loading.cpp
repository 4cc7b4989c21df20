// Loading run files: layout, exclusion reasons, manifests, corrupt files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "runs.hpp"
#include "synth.hpp"

using namespace fulcrum::fit;
namespace fs = std::filesystem;

namespace {
std::string fresh_dir(const std::string& name) {
  std::string d = testing::TempDir() + "/fulcrum_fit_" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
SynthSpec small_spec() {
  SynthSpec s;
  s.budgets = {1e18, 1e19, 1e20};
  s.iso_sizes = 3;
  s.hp_runs = 0;
  s.el_A = {0.031};
  s.el_G = {8};
  return s;
}
}  // namespace

TEST(Loading, ReadsWhatItWrites) {
  std::string d = fresh_dir("rw");
  auto recs = synth_campaign(SynthTruth{}, small_spec());
  write_campaign(d, recs);
  RunRecord r;
  std::string why;
  ASSERT_TRUE(read_run_file(recs[0].path, r, why)) << why;
  EXPECT_EQ(r.status, "completed");
  EXPECT_EQ(r.format_version, 1);
  EXPECT_DOUBLE_EQ(r.config.at("flops_per_token"), recs[0].config.at("flops_per_token"));
  EXPECT_DOUBLE_EQ(r.config.at("is_moe"), 0.0);  // int64 attribute read as double
  EXPECT_DOUBLE_EQ(r.summary.at("final_val_loss"), recs[0].summary.at("final_val_loss"));
  LoadResult L = load_runs({d}, LoadOptions{});
  EXPECT_EQ(L.runs.size(), recs.size());
  EXPECT_TRUE(L.excluded.empty());
}

TEST(Loading, ExcludesWithReasonsAndSkipsCorruptFiles) {
  std::string d = fresh_dir("bad");
  auto recs = synth_campaign(SynthTruth{}, small_spec());
  recs[0].status = "diverged";
  recs[1].status = "failed";
  recs[2].status = "running";
  recs[3].summary["final_val_loss"] = NAN;
  write_campaign(d, recs);
  // truncated copy of a good file, and a foreign HDF5 file
  {
    std::ifstream in(recs[5].path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(d + "/truncated.h5", std::ios::binary) << bytes.substr(0, bytes.size() / 3);
    RunRecord foreign = recs[5];
    foreign.format = "something-else";
    write_run_file(d + "/foreign.h5", foreign);
  }
  LoadResult L = load_runs({d}, LoadOptions{});
  EXPECT_EQ(L.runs.size(), recs.size() - 4);
  ASSERT_EQ(L.excluded.size(), 4u);
  std::map<std::string, std::string> why;
  for (auto& e : L.excluded) why[fs::path(e.path).filename().string()] = e.reason;
  EXPECT_EQ(why["run0.h5"], "diverged");
  EXPECT_EQ(why["run1.h5"], "failed");
  EXPECT_NE(why["run2.h5"].find("unfinished"), std::string::npos);
  EXPECT_NE(why["run3.h5"].find("NaN"), std::string::npos);
  ASSERT_EQ(L.unreadable.size(), 2u);
  for (auto& u : L.unreadable) {
    if (u.path.find("truncated") != std::string::npos)
      EXPECT_NE(u.reason.find("truncated"), std::string::npos) << u.reason;
    else
      EXPECT_NE(u.reason.find("foreign"), std::string::npos) << u.reason;
  }
  LoadOptions strict;
  strict.strict = true;
  try {
    load_runs({d}, strict);
    FAIL() << "strict load should throw";
  } catch (const FitError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated.h5"), std::string::npos);
  }
}

TEST(Loading, Manifest) {
  std::string d = fresh_dir("manifest");
  auto recs = synth_campaign(SynthTruth{}, small_spec());
  write_campaign(d, recs);
  std::ofstream m(d + "/sweep.txt");
  m << "# a sweep manifest\n\nrun0.h5\n  run1.h5  \n" << recs[2].path << "\n# run3.h5\nmissing.h5\n";
  m.close();
  LoadResult L = load_runs({d + "/sweep.txt"}, LoadOptions{});
  EXPECT_EQ(L.runs.size(), 3u);
  ASSERT_EQ(L.unreadable.size(), 1u);
  EXPECT_NE(L.unreadable[0].reason.find("does not exist"), std::string::npos);
}

TEST(Loading, NothingUsableIsAnError) {
  EXPECT_THROW(load_runs({}, LoadOptions{}), FitError);
  std::string d = fresh_dir("div");
  auto s = small_spec();
  s.diverged_fraction = 1.0;
  auto recs = synth_campaign(SynthTruth{}, s);
  write_campaign(d, recs);
  try {
    load_runs({d}, LoadOptions{});
    FAIL();
  } catch (const FitError& e) {
    EXPECT_NE(std::string(e.what()).find("every run diverged"), std::string::npos) << e.what();
  }
  std::string e = fresh_dir("empty");
  EXPECT_THROW(load_runs({e}, LoadOptions{}), FitError);
}

TEST(Loading, Families) {
  EXPECT_EQ(family_key(false, 0.5, 8, 0.1), "dense");
  EXPECT_EQ(family_key(true, 0.031, 12, 0.5), "moe A=0.031 G=12 S=0.5");
  EXPECT_EQ(budget_key(1e20), budget_key(1e20 * (1 + 1e-7)));
  EXPECT_NE(budget_key(1e20), budget_key(3e20));
}
