// Local execution of a tiny sweep through fulcrum-sweep and fulcrum-train:
// one run forced to diverge and one forced to fail, the others complete;
// status reports every state; a second `run` does nothing, and only the failed
// run on --retry-failed; an interrupted run is rerun (overwriting) on resume.
//
// Needs the fulcrum-sweep and fulcrum-train executables (paths compiled in)
// and mpiexec. Writes its own tiny token files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "data/token_file.hpp"
#include "io/run_file.hpp"
#include "sweep/sweep_manifest.hpp"

namespace fs = std::filesystem;
using namespace fulcrum::sweep;

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

std::string read_text(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_text(const std::string& p, const std::string& t) { std::ofstream(p) << t; }

// Replace "key = ..." in a resolved deck.
void set_deck_key(const std::string& deck, const std::string& key, const std::string& value) {
  std::string t = read_text(deck);
  const std::regex re("(^|\\n)" + key + " = [^\\n]*");
  ASSERT_TRUE(std::regex_search(t, re)) << key << " not in " << deck;
  t = std::regex_replace(t, re, "$1" + key + " = " + value, std::regex_constants::format_first_only);
  write_text(deck, t);
}

// Token files with a learnable pattern (repeated byte sentences).
void write_tokens(const std::string& path, size_t n, unsigned seed) {
  std::mt19937 g(seed);
  const std::string words[] = {"the ", "expert ", "router ", "token ", "scaling ", "law ", "mixture ", "of "};
  std::vector<std::int32_t> t;
  while (t.size() < n)
    for (char c : words[g() % 8]) t.push_back(static_cast<unsigned char>(c));
  t.resize(n);
  fulcrum::write_token_file(path, t, 257);
}

class SweepLocal : public ::testing::Test {
 protected:
  std::string dir, sweep_dir, cmd;
  void SetUp() override {
    dir = (fs::temp_directory_path() / ("fulcrum-sweep-local-" + std::to_string(::getpid()))).string();
    fs::remove_all(dir);
    fs::create_directories(dir);
    sweep_dir = dir + "/sweep";
    cmd = std::string(FULCRUM_SWEEP_EXE);
    ::setenv("FULCRUM_TRAIN", FULCRUM_TRAIN_EXE, 1);
    ::setenv("HDF5_USE_FILE_LOCKING", "FALSE", 1);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir);
    else std::fprintf(stderr, "kept %s for inspection\n", dir.c_str());
  }
  void write_sweep(const std::string& extra) {
    write_tokens(dir + "/train.tok", 40000, 1);
    write_tokens(dir + "/valid.tok", 4000, 2);
    write_tokens(dir + "/other.tok", 40000, 3);
    write_text(dir + "/tiny.toml", "[sweep]\nname = \"local\"\n" + extra +
                                       "[data]\ntrain = \"" + dir + "/train.tok\"\nvalid = \"" + dir +
                                       "/valid.tok\"\n"
                                       "[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 1\n"
                                       "d_ffn = 64\nseq_len = 32\n"
                                       "[moe]\nnum_experts = 4\nnum_active_experts = 1\nnum_shared_experts = 1\n"
                                       "d_expert = 16\n"
                                       "[train]\ntokens = 2048\nbatch_tokens = 128\nmicro_batch_size = 4\n"
                                       "lr = 0.003\neval_interval = 8\neval_tokens = 256\nlog_interval = 2\n");
  }
  Manifest manifest() { return read_manifest(sweep_dir); }
  const ManifestRun& run(const std::string& id) {
    static Manifest m;
    m = manifest();
    const ManifestRun* r = m.find(id);
    EXPECT_NE(r, nullptr) << id;
    return *r;
  }
};

}  // namespace

TEST_F(SweepLocal, FourStatesSkipAndRetry) {
  write_sweep("[sweep.grid]\nrun.seed = [1, 2, 3, 4, 5]\n");
  Result r = sh(cmd + " plan " + dir + "/tiny.toml --out " + sweep_dir);
  ASSERT_EQ(r.rc, 0) << r.out;
  const Manifest m = manifest();
  ASSERT_EQ(m.runs.size(), 5u);
  // seed3 diverges, seed4's data file is gone after planning, seed5 is "running" elsewhere
  set_deck_key(m.find("seed3")->deck, "lr", "1.0");
  set_deck_key(m.find("seed3")->deck, "divergence_factor", "1.0001");
  set_deck_key(m.find("seed4")->deck, "train", "\"" + dir + "/missing.tok\"");
  StateRecord fake;
  fake.state = "running";
  fake.pid = ::getpid();
  fake.pid_start = process_start_time(::getpid());
  fake.host = host_name();
  fake.launcher = "test";
  write_state(m.find("seed5")->state_file(), fake);

  r = sh(cmd + " status " + sweep_dir);
  EXPECT_NE(r.out.find("completed 0 running 1 diverged 0 failed 0 pending 4"), std::string::npos) << r.out;

  r = sh(cmd + " run " + sweep_dir + " -j 2");
  EXPECT_EQ(r.rc, 1) << r.out;  // some runs failed or diverged
  EXPECT_EQ(r.out.find("start  seed5"), std::string::npos) << r.out;
  r = sh(cmd + " status " + sweep_dir);
  EXPECT_NE(r.out.find("completed 2 running 1 diverged 1 failed 1 pending 0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("seed4"), std::string::npos);
  EXPECT_NE(r.out.find("exit 2"), std::string::npos) << r.out;  // bad input: the data file
  EXPECT_EQ(fulcrum::read_string_attr(m.find("seed1")->run_file(), "/", "status"), "completed");
  EXPECT_EQ(fulcrum::read_string_attr(m.find("seed3")->run_file(), "/", "status"), "diverged");
  EXPECT_FALSE(fs::exists(m.find("seed4")->run_file()));

  // the fake "running" run ends without a trace: it becomes pending (interrupted)
  StateRecord dead = fake;
  dead.pid = 999999;
  dead.pid_start = 1;
  write_state(m.find("seed5")->state_file(), dead);
  r = sh(cmd + " status " + sweep_dir);
  EXPECT_NE(r.out.find("completed 2 running 0 diverged 1 failed 1 pending 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("interrupted"), std::string::npos) << r.out;
  r = sh(cmd + " run " + sweep_dir + " --only seed5");
  EXPECT_EQ(r.rc, 0) << r.out;

  // a second run does nothing ...
  r = sh(cmd + " run " + sweep_dir);
  EXPECT_EQ(r.out.find("start"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skip   seed4 (failed"), std::string::npos) << r.out;
  // ... but the failed run on request (its data is back now)
  set_deck_key(m.find("seed4")->deck, "train", "\"" + dir + "/other.tok\"");
  r = sh(cmd + " run " + sweep_dir + " --retry-failed");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("start  seed4"), std::string::npos) << r.out;
  std::smatch sm;
  const std::regex starts("start  ");
  EXPECT_EQ(std::distance(std::sregex_iterator(r.out.begin(), r.out.end(), starts), std::sregex_iterator()), 1)
      << r.out;
  r = sh(cmd + " status " + sweep_dir + " --brief");
  EXPECT_NE(r.out.find("completed 4 running 0 diverged 1 failed 0 pending 0"), std::string::npos) << r.out;
}

TEST_F(SweepLocal, InterruptAndResume) {
  write_sweep("[sweep.grid]\ntrain.tokens = [400000]\n");
  Result r = sh(cmd + " plan " + dir + "/tiny.toml --out " + sweep_dir);
  ASSERT_EQ(r.rc, 0) << r.out;
  const std::string id = manifest().runs.at(0).id;
  const std::string log = dir + "/run1.out";
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl(FULCRUM_SWEEP_EXE, FULCRUM_SWEEP_EXE, "run", sweep_dir.c_str(), (char*)nullptr);
    ::_exit(127);
  }
  // wait until the trainer has created its run file, then interrupt the sweep
  const std::string rf = manifest().runs.at(0).run_file();
  for (int i = 0; i < 300 && !fs::exists(rf); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(fs::exists(rf)) << read_text(log);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(pid, SIGINT);
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st)) << read_text(log);
  EXPECT_EQ(WEXITSTATUS(st), 130) << read_text(log);
  r = sh(cmd + " status " + sweep_dir);
  EXPECT_NE(r.out.find("pending 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("interrupted"), std::string::npos) << r.out;
  EXPECT_EQ(read_state(manifest().runs.at(0).state_file()).state, "interrupted");

  // resume: the partial run file is replaced (output.overwrite = true); shorten it first
  set_deck_key(manifest().runs.at(0).deck, "tokens", "2048");
  r = sh(cmd + " run " + sweep_dir);
  EXPECT_EQ(r.rc, 0) << r.out << read_text(manifest().runs.at(0).log_file());
  EXPECT_NE(r.out.find("overwriting"), std::string::npos) << r.out;
  EXPECT_EQ(fulcrum::read_string_attr(rf, "/", "status"), "completed");
  (void)id;
}

// K local runs share the machine's cores: each trainer gets OMP_NUM_THREADS
// and OPENBLAS_NUM_THREADS = cores / (K x ranks), unless the user set them.
TEST_F(SweepLocal, ThreadsPerRunFromJobs) {
  write_sweep("[sweep.grid]\nrun.seed = [1]\n");
  ASSERT_EQ(sh(cmd + " plan " + dir + "/tiny.toml --out " + sweep_dir).rc, 0);
  // a stand-in trainer that records its thread settings and fails
  const std::string fake = dir + "/fake-train.sh", seen = dir + "/threads.txt";
  write_text(fake, "#!/bin/sh\necho \"$OMP_NUM_THREADS $OPENBLAS_NUM_THREADS\" > " + seen + "\nexit 1\n");
  fs::permissions(fake, fs::perms::owner_all);
  const long cores = std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN));
  const std::string per = std::to_string(std::max(1L, cores / 2));
  sh("env -u OMP_NUM_THREADS -u OPENBLAS_NUM_THREADS " + cmd + " run " + sweep_dir + " -j 2 --launcher env --train " +
     fake);
  EXPECT_EQ(read_text(seen), per + " " + per + "\n") << "cores " << cores << ", 2 jobs";
  sh("OMP_NUM_THREADS=3 env -u OPENBLAS_NUM_THREADS " + cmd + " run " + sweep_dir +
     " -j 2 --retry-failed --launcher env --train " + fake);
  EXPECT_EQ(read_text(seen), "3 " + per + "\n") << "a thread count set by the user is kept";
}
