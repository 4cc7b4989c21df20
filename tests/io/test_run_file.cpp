#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "io/run_file.hpp"

using namespace fulcrum;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "fulcrum-io-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

RunFile::TrainRow train_row(int i) {
  RunFile::TrainRow r;
  r.step = 10 * i;
  r.tokens = 8192LL * 10 * i;
  r.flops = 1.5e12 * i;
  r.loss = 5.0 - 0.01 * i;
  r.lm_loss = 4.9 - 0.01 * i;
  r.aux_loss = 0.01 + 1e-4 * i;
  r.z_loss = 0.001 * i;
  r.lr = 1e-3 * (i + 1) / 100.0;
  r.grad_norm = 0.5 + i;
  r.tokens_per_second = 1e5 + i;
  return r;
}

template <class F>
std::vector<double> col(int n, F f) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(f(i));
  return v;
}

std::string big_deck() {
  std::string s = "# deck \xe2\x80\x94 UTF-8 “quotes”\n[model]\n";
  for (int i = 0; i < 400; ++i) s += "key_" + std::to_string(i) + " = " + std::to_string(i) + "\n";
  return s;
}

}  // namespace

TEST(RunFile, RoundTripEverything) {
  TempDir d;
  const std::string dir = d.path() + "/nested/run dir";
  const int n_train = 2500;  // more than one 1024-chunk
  const int L = 3, E = 4;
  std::string path;
  {
    RunFile rf = RunFile::create(dir, false);
    path = rf.path();
    EXPECT_EQ(path, dir + "/run.h5");
    rf.set_root_attr("deck", big_deck());
    rf.set_root_attr("deck_path", "decks/x.toml");
    rf.set_root_attr("seed", std::int64_t{1234});
    rf.set_root_attr("world_size", 2);
    rf.set_root_attr("hostname", std::string("node1"));
    rf.set_root_attr("pi", 3.25);
    rf.set_root_attr("start_time", iso8601_utc_now());
    rf.set_config("d_model", 256);
    rf.set_config("is_moe", true);
    rf.set_config("tokens_target", std::uint64_t{1} << 40);
    rf.set_config("lr_peak", 1e-3);
    rf.set_config("lr_schedule", "wsd");
    rf.set_config("d_model", 512);  // replacing an attribute works
    for (int i = 0; i < n_train; ++i) rf.append_train(train_row(i));
    for (int i = 0; i < 5; ++i) rf.append_eval({100 * i, 819200LL * i, 1e15 * i, 4.0 - 0.1 * i});
    for (int s = 0; s < 3; ++s) {
      RunFile::RoutingSnapshot snap;
      snap.step = 100 * s;
      snap.tokens = 1000 * s;
      snap.n_moe_layers = L;
      snap.n_experts = E;
      for (int l = 0; l < L; ++l) {
        for (int e = 0; e < E; ++e) snap.expert_share.push_back(s + 0.1 * l + 0.01 * e);
        snap.max_violation.push_back(0.5 * s + l);
        snap.router_entropy.push_back(1.3 - 0.1 * l);
        snap.dropped_fraction.push_back(0.01 * l);
        snap.moe_layer_index.push_back(l + 1);
      }
      rf.append_routing(snap);
    }
    rf.set_timer("forward", 12.5, 100);
    rf.set_timer("optimizer", 1.25, 100);
    rf.set_summary("final_train_loss", 2.5);
    rf.set_summary("steps_completed", std::int64_t{2490});
    rf.set_status("completed");
    EXPECT_EQ(rf.train_rows(), n_train);
    EXPECT_EQ(rf.eval_rows(), 5);
    EXPECT_EQ(rf.routing_rows(), 3);
  }
  EXPECT_EQ(read_string_attr(path, "/", "format"), "fulcrum-run");
  EXPECT_EQ(read_numeric_attr(path, "/", "format_version"), 1.0);
  EXPECT_EQ(read_string_attr(path, "/", "status"), "completed");
  EXPECT_EQ(read_string_attr(path, "/", "deck"), big_deck());
  EXPECT_EQ(read_string_attr(path, "/", "deck_path"), "decks/x.toml");
  EXPECT_EQ(read_string_attr(path, "/", "hostname"), "node1");
  EXPECT_EQ(read_numeric_attr(path, "/", "seed"), 1234.0);
  EXPECT_EQ(read_numeric_attr(path, "/", "world_size"), 2.0);
  EXPECT_EQ(read_numeric_attr(path, "/", "pi"), 3.25);
  EXPECT_EQ(read_string_attr(path, "/", "start_time").size(), 20u);
  EXPECT_EQ(read_numeric_attr(path, "/config", "d_model"), 512.0);
  EXPECT_EQ(read_numeric_attr(path, "/config", "is_moe"), 1.0);
  EXPECT_EQ(read_numeric_attr(path, "/config", "tokens_target"), 1099511627776.0);
  EXPECT_EQ(read_numeric_attr(path, "/config", "lr_peak"), 1e-3);
  EXPECT_EQ(read_string_attr(path, "/config", "lr_schedule"), "wsd");

  EXPECT_EQ(read_dataset_1d(path, "/train/step"), col(n_train, [](int i) { return train_row(i).step; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/tokens"), col(n_train, [](int i) { return train_row(i).tokens; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/flops"), col(n_train, [](int i) { return train_row(i).flops; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/loss"), col(n_train, [](int i) { return train_row(i).loss; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/lm_loss"), col(n_train, [](int i) { return train_row(i).lm_loss; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/aux_loss"), col(n_train, [](int i) { return train_row(i).aux_loss; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/z_loss"), col(n_train, [](int i) { return train_row(i).z_loss; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/lr"), col(n_train, [](int i) { return train_row(i).lr; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/grad_norm"), col(n_train, [](int i) { return train_row(i).grad_norm; }));
  EXPECT_EQ(read_dataset_1d(path, "/train/tokens_per_second"),
            col(n_train, [](int i) { return train_row(i).tokens_per_second; }));

  EXPECT_EQ(read_dataset_1d(path, "/eval/step"), col(5, [](int i) { return 100.0 * i; }));
  EXPECT_EQ(read_dataset_1d(path, "/eval/tokens"), col(5, [](int i) { return 819200.0 * i; }));
  EXPECT_EQ(read_dataset_1d(path, "/eval/flops"), col(5, [](int i) { return 1e15 * i; }));
  EXPECT_EQ(read_dataset_1d(path, "/eval/val_loss"), col(5, [](int i) { return 4.0 - 0.1 * i; }));

  EXPECT_EQ(read_dataset_1d(path, "/routing/step"), (std::vector<double>{0, 100, 200}));
  EXPECT_EQ(read_dataset_1d(path, "/routing/tokens"), (std::vector<double>{0, 1000, 2000}));
  EXPECT_EQ(read_dataset_dims(path, "/routing/expert_share"),
            (std::vector<std::uint64_t>{3, L, E}));
  EXPECT_EQ(read_dataset_dims(path, "/routing/max_violation"),
            (std::vector<std::uint64_t>{3, L}));
  std::vector<double> share, viol, ent, drop;
  for (int s = 0; s < 3; ++s)
    for (int l = 0; l < L; ++l) {
      for (int e = 0; e < E; ++e) share.push_back(s + 0.1 * l + 0.01 * e);
      viol.push_back(0.5 * s + l);
      ent.push_back(1.3 - 0.1 * l);
      drop.push_back(0.01 * l);
    }
  EXPECT_EQ(read_dataset_1d(path, "/routing/expert_share"), share);
  EXPECT_EQ(read_dataset_1d(path, "/routing/max_violation"), viol);
  EXPECT_EQ(read_dataset_1d(path, "/routing/router_entropy"), ent);
  EXPECT_EQ(read_dataset_1d(path, "/routing/dropped_fraction"), drop);
  EXPECT_EQ(read_dataset_1d(path, "/routing/layer_index"), (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(read_numeric_attr(path, "/routing", "n_moe_layers"), L);
  EXPECT_EQ(read_numeric_attr(path, "/routing", "n_experts"), E);

  EXPECT_EQ(read_numeric_attr(path, "/timers", "forward.seconds"), 12.5);
  EXPECT_EQ(read_numeric_attr(path, "/timers", "forward.calls"), 100.0);
  EXPECT_EQ(read_numeric_attr(path, "/timers", "optimizer.seconds"), 1.25);
  const auto timer_attrs = list_attrs(path, "/timers");
  EXPECT_EQ(timer_attrs.size(), 4u);
  EXPECT_EQ(read_numeric_attr(path, "/summary", "final_train_loss"), 2.5);
  EXPECT_EQ(read_numeric_attr(path, "/summary", "steps_completed"), 2490.0);
}

TEST(RunFile, FreshFileHasEmptyLayoutAndRunningStatus) {
  TempDir d;
  std::string path;
  { path = RunFile::create(d.path(), false).path(); }
  EXPECT_EQ(read_string_attr(path, "/", "status"), "running");
  EXPECT_TRUE(read_dataset_1d(path, "/train/lm_loss").empty());
  EXPECT_TRUE(read_dataset_1d(path, "/eval/val_loss").empty());
  EXPECT_TRUE(list_attrs(path, "/summary").empty());
}

TEST(RunFile, CreateRefusesExistingWithoutOverwrite) {
  TempDir d;
  std::string path;
  {
    RunFile rf = RunFile::create(d.path(), false);
    path = rf.path();
    rf.append_eval({1, 2, 3.0, 4.0});
  }
  try {
    RunFile::create(d.path(), false);
    FAIL() << "create did not refuse an existing run file";
  } catch (const RunFileError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_dataset_1d(path, "/eval/step"), std::vector<double>{1});  // untouched
  { RunFile rf = RunFile::create(d.path(), true); }
  EXPECT_TRUE(read_dataset_1d(path, "/eval/step").empty());  // replaced
}

TEST(RunFile, OpenExistingAppends) {
  TempDir d;
  std::string path;
  {
    RunFile rf = RunFile::create(d.path(), false);
    path = rf.path();
    rf.append_train(train_row(0));
  }
  {
    RunFile rf = RunFile::open_existing(path);
    EXPECT_EQ(rf.train_rows(), 1);
    rf.append_train(train_row(1));
    rf.set_status("completed");
  }
  EXPECT_EQ(read_dataset_1d(path, "/train/step"), (std::vector<double>{0, 10}));
  EXPECT_THROW(RunFile::open_existing(d.path() + "/nope.h5"), RunFileError);
}

TEST(RunFile, ErrorsAreRunFileErrorsNamingFileAndObject) {
  TempDir d;
  std::string path;
  {
    RunFile rf = RunFile::create(d.path(), false);
    path = rf.path();
    EXPECT_THROW(rf.set_status("done"), RunFileError);
    EXPECT_THROW(rf.set_config("a/b", 1.0), RunFileError);
    RunFile::RoutingSnapshot s;
    s.n_moe_layers = 1;
    s.n_experts = 2;
    s.expert_share = {0.5};  // wrong size
    s.max_violation = s.router_entropy = s.dropped_fraction = {0.0};
    s.moe_layer_index = {0};
    EXPECT_THROW(rf.append_routing(s), RunFileError);
    s.expert_share = {0.5, 0.5};
    rf.append_routing(s);
    s.n_experts = 3;
    s.expert_share = {0.3, 0.3, 0.4};
    EXPECT_THROW(rf.append_routing(s), RunFileError);  // shape fixed by the first call
    RunFile moved = std::move(rf);
    EXPECT_EQ(moved.path(), path);
    EXPECT_EQ(moved.routing_rows(), 1);
  }
  try {
    read_dataset_1d(path, "/train/nope");
    FAIL();
  } catch (const RunFileError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find("/train/nope"), std::string::npos) << m;
  }
  try {
    read_string_attr(path, "/config", "missing_attr");
    FAIL();
  } catch (const RunFileError& e) {
    EXPECT_NE(std::string(e.what()).find("missing_attr"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_string_attr(path, "/", "format_version"), RunFileError);  // not a string
  EXPECT_THROW(read_numeric_attr(path, "/", "format"), RunFileError);  // not numeric
  EXPECT_THROW(read_dataset_1d(d.path() + "/missing.h5", "/train/step"), RunFileError);
  // A file that is not HDF5.
  const std::string junk = d.path() + "/junk.h5";
  std::system(("echo not-hdf5 > '" + junk + "'").c_str());
  EXPECT_THROW(read_dataset_1d(junk, "/train/step"), RunFileError);
  EXPECT_THROW(RunFile::open_existing(junk), RunFileError);
}

TEST(RunFile, KilledRunIsReadableAfterFlush) {
  TempDir d;
  const std::string path = d.path() + "/run.h5";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: write, flush, then die without closing anything.
    try {
      RunFile rf = RunFile::create(d.path(), false);
      rf.set_root_attr("deck", big_deck());
      rf.set_config("d_model", 256);
      for (int i = 0; i < 1500; ++i) rf.append_train(train_row(i));
      rf.append_eval({10, 20, 30.0, 3.5});
      rf.flush();
      // Unflushed rows after the flush may or may not survive.
      rf.append_train(train_row(9999));
      std::abort();
    } catch (...) {
      ::_exit(3);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  EXPECT_EQ(read_string_attr(path, "/", "format"), "fulcrum-run");
  EXPECT_EQ(read_string_attr(path, "/", "status"), "running");
  EXPECT_EQ(read_string_attr(path, "/", "deck"), big_deck());
  EXPECT_EQ(read_numeric_attr(path, "/config", "d_model"), 256.0);
  const auto steps = read_dataset_1d(path, "/train/step");
  ASSERT_GE(steps.size(), 1500u);
  for (int i = 0; i < 1500; ++i) ASSERT_EQ(steps[i], train_row(i).step);
  const auto loss = read_dataset_1d(path, "/train/lm_loss");
  ASSERT_GE(loss.size(), 1500u);
  EXPECT_EQ(loss[1499], train_row(1499).lm_loss);
  EXPECT_EQ(read_dataset_1d(path, "/eval/val_loss"), std::vector<double>{3.5});
}

// The routing diagnostics added with the routing options: written when given
// (tokens per expert, min load, top-k margin, the bias), wrong sizes refused,
// absent datasets for a run without them (e.g. no bias balancing).
TEST(RunFile, RoutingDiagnostics) {
  TempDir d;
  std::string path;
  const int L = 2, E = 3;
  {
    RunFile rf = RunFile::create(d.path(), false);
    path = rf.path();
    for (int s = 0; s < 2; ++s) {
      RunFile::RoutingSnapshot snap;
      snap.step = 10 * (s + 1);
      snap.n_moe_layers = L;
      snap.n_experts = E;
      for (int l = 0; l < L; ++l) {
        for (int e = 0; e < E; ++e) {
          snap.expert_share.push_back(1.0 / E);
          snap.tokens_per_expert.push_back(100 * s + 10 * l + e);
          snap.router_bias.push_back(0.001 * (e - 1) * (s + 1));
        }
        snap.max_violation.push_back(0.1 * l);
        snap.router_entropy.push_back(1.0);
        snap.dropped_fraction.push_back(0.0);
        snap.moe_layer_index.push_back(l + 1);
        snap.min_load.push_back(0.9 - 0.1 * l);
        snap.topk_margin.push_back(0.05 * (s + 1));
      }
      if (s == 1) {
        RunFile::RoutingSnapshot bad = snap;
        bad.router_bias.pop_back();
        EXPECT_THROW(rf.append_routing(bad), RunFileError);
        bad = snap;
        bad.min_load.push_back(1.0);
        EXPECT_THROW(rf.append_routing(bad), RunFileError);
      }
      rf.append_routing(snap);
    }
  }
  EXPECT_EQ(read_dataset_dims(path, "/routing/tokens_per_expert"), (std::vector<std::uint64_t>{2, L, E}));
  EXPECT_EQ(read_dataset_dims(path, "/routing/router_bias"), (std::vector<std::uint64_t>{2, L, E}));
  EXPECT_EQ(read_dataset_1d(path, "/routing/min_load"), (std::vector<double>{0.9, 0.8, 0.9, 0.8}));
  EXPECT_EQ(read_dataset_1d(path, "/routing/topk_margin"), (std::vector<double>{0.05, 0.05, 0.1, 0.1}));
  const auto tpe = read_dataset_1d(path, "/routing/tokens_per_expert");
  EXPECT_EQ(tpe[0], 0.0);
  EXPECT_EQ(tpe[L * E + E + 2], 112.0);  // snapshot 1, layer 1, expert 2
  const auto bias = read_dataset_1d(path, "/routing/router_bias");
  EXPECT_DOUBLE_EQ(bias[L * E + 2], 0.002);
  // a run without the bias has no bias dataset
  TempDir d2;
  std::string path2;
  {
    RunFile rf = RunFile::create(d2.path(), false);
    path2 = rf.path();
    RunFile::RoutingSnapshot s;
    s.n_moe_layers = 1;
    s.n_experts = 2;
    s.expert_share = {0.5, 0.5};
    s.max_violation = s.router_entropy = s.dropped_fraction = s.min_load = s.topk_margin = {0.0};
    s.moe_layer_index = {0};
    s.tokens_per_expert = {4, 4};
    rf.append_routing(s);
  }
  EXPECT_THROW(read_dataset_dims(path2, "/routing/router_bias"), RunFileError);
  EXPECT_EQ(read_dataset_1d(path2, "/routing/tokens_per_expert"), (std::vector<double>{4, 4}));
}
