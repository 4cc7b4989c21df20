// A mixture deck (corpus manifest + data.weights, relative paths) swept over
// seeds: it plans with `fulcrum-sweep plan`, every concrete deck has absolute
// paths and the weights, its concrete decks run with `fulcrum-sweep run` (a
// few steps each) from another directory, and the resolved deck stored in each
// run file reads back to the planned config.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "data/token_file.hpp"
#include "deck/deck_reader.hpp"
#include "deck/deck_schema.hpp"
#include "io/run_file.hpp"
#include "sweep/sweep_manifest.hpp"

namespace fs = std::filesystem;

namespace {

struct Result {
  int rc = -1;
  std::string out;
};

Result sh(const std::string& cmd) {
  Result r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// Byte-token files with a learnable pattern, one vocabulary per group.
void write_tokens(const std::string& path, size_t n, unsigned seed, const char* const* words, int nwords) {
  std::mt19937 g(seed);
  std::vector<std::int32_t> t;
  while (t.size() < n)
    for (const char* c = words[g() % nwords]; *c; ++c) t.push_back(static_cast<unsigned char>(*c));
  t.resize(n);
  fulcrum::write_token_file(path, t, 257);
}

// Every schema key of two configs, as the resolved deck writes them.
void expect_same_config(const fulcrum::RunConfig& a, const fulcrum::RunConfig& b) {
  for (const auto& k : fulcrum::deck_keys())
    EXPECT_EQ(fulcrum::toml_value_text(k, k.get(a)), fulcrum::toml_value_text(k, k.get(b))) << k.dotted();
  EXPECT_EQ(a.moe.enabled, b.moe.enabled);
}

}  // namespace

TEST(SweepMixture, SeedsPlanAndRun) {
  const fs::path dir = fs::temp_directory_path() / ("fulcrum-sweep-mixture-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "corpus");
  const char* prose[] = {"the ", "expert ", "router ", "token ", "law "};
  const char* code[] = {"int ", "x = ", "1; ", "return ", "{ } "};
  write_tokens((dir / "corpus/prose.train.tok").string(), 30000, 1, prose, 5);
  write_tokens((dir / "corpus/prose.valid.tok").string(), 3000, 2, prose, 5);
  write_tokens((dir / "corpus/code.train.tok").string(), 30000, 3, code, 5);
  write_tokens((dir / "corpus/code.valid.tok").string(), 3000, 4, code, 5);
  std::ofstream(dir / "corpus/manifest.toml")
      << "vocab_size = 257\n"
         "[[group]]\nname = \"prose\"\ntrain = \"prose.train.tok\"\nvalid = \"prose.valid.tok\"\n"
         "[[group]]\nname = \"code\"\ntrain = \"code.train.tok\"\nvalid = \"code.valid.tok\"\n";
  // Relative paths: the planner must make them absolute (the runs start elsewhere).
  std::ofstream(dir / "mix.toml")
      << "[sweep]\nname = \"mix\"\n[sweep.grid]\nrun.seed = [1, 2, 3]\n"
         "[data]\nmanifest = \"corpus/manifest.toml\"\nweights = { prose = 0.7, \"code\" = 0.3 }\n"
         "[model]\nvocab_size = 257\nd_model = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 1\nd_ffn = 64\nseq_len = 32\n"
         "[moe]\nnum_experts = 4\nnum_active_experts = 1\nnum_shared_experts = 1\nd_expert = 16\n"
         "[train]\ntokens = 1024\nbatch_tokens = 128\nmicro_batch_size = 4\nlr = 0.003\n"
         "eval_interval = 4\neval_tokens = 256\nlog_interval = 2\n";
  ::setenv("FULCRUM_TRAIN", FULCRUM_TRAIN_EXE, 1);
  ::setenv("HDF5_USE_FILE_LOCKING", "FALSE", 1);
  const std::string sweep_dir = (dir / "sweep").string();
  Result r = sh("cd " + dir.string() + " && " + FULCRUM_SWEEP_EXE + " plan mix.toml --out " + sweep_dir);
  ASSERT_EQ(r.rc, 0) << r.out;
  const fulcrum::sweep::Manifest m = fulcrum::sweep::read_manifest(sweep_dir);
  ASSERT_EQ(m.runs.size(), 3u);
  std::map<std::string, fulcrum::RunConfig> planned;
  for (const auto& run : m.runs) {
    SCOPED_TRACE(run.id);
    const fulcrum::LoadedDeck d = fulcrum::read_deck(run.deck);
    EXPECT_EQ(d.config.data.manifest_path, (dir / "corpus/manifest.toml").string());
    EXPECT_EQ(d.config.data.weights, (std::map<std::string, double>{{"prose", 0.7}, {"code", 0.3}}));
    EXPECT_TRUE(fs::path(d.config.output.dir).is_absolute());
    planned[run.id] = d.config;
  }
  EXPECT_NE(planned.at("seed1").run.seed, planned.at("seed2").run.seed);

  // Run from another directory: only absolute paths can work there.
  fs::create_directories(dir / "elsewhere");
  r = sh("cd " + (dir / "elsewhere").string() + " && " + FULCRUM_SWEEP_EXE + " run " + sweep_dir + " -j 1");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (const auto& run : m.runs) {
    SCOPED_TRACE(run.id);
    const std::string file = run.dir + "/run.h5";
    ASSERT_TRUE(fs::exists(file)) << r.out;
    EXPECT_EQ(fulcrum::read_string_attr(file, "/", "status"), "completed");
    // The resolved deck stored in the run file reads back to the planned config.
    const fulcrum::LoadedDeck stored = fulcrum::read_deck_text(fulcrum::read_string_attr(file, "/", "deck"), file);
    expect_same_config(stored.config, planned.at(run.id));
  }
  if (!HasFailure()) fs::remove_all(dir);
}
