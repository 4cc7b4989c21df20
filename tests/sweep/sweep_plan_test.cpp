// Plan expansion: counts, ids, determinism, FLOPs-per-token invariance of the
// activation / granularity / shared ablations, IsoFLOP budgets within 1%,
// laws, and clear errors for invalid expansions.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "deck/deck_reader.hpp"
#include "deck/deck_schema.hpp"
#include "sweep/sweep_manifest.hpp"
#include "sweep/sweep_plan.hpp"
#include "sweep/study.hpp"

namespace fs = std::filesystem;
using namespace fulcrum::sweep;

namespace {

// A tiny MoE base deck (never trained here: planning does not open data).
const std::string kBase = R"(
[data]
train = "t.tok"
valid = "v.tok"
[model]
d_model = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
d_ffn = 128
seq_len = 32
[moe]
num_experts = 8
num_active_experts = 2
num_shared_experts = 1
d_expert = 32
[train]
tokens = 4096
batch_tokens = 128
micro_batch_size = 4
)";

std::string tmpdir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("fulcrum-sweep-plan-" + name);
  fs::remove_all(p);
  return p.string();
}

SweepPlan plan(const std::string& sweep, const std::string& name) {
  PlanOptions o;
  o.dir = tmpdir(name);
  return plan_sweep_text("[sweep]\nname = \"" + name + "\"\n" + sweep + kBase, name + ".toml", o);
}

}  // namespace

TEST(SweepPlan, GridCountsIdsAndDeterminism) {
  const std::string s = "[sweep.log2_grid]\ntrain.lr = [-11, -10, -9]\ntrain.batch_tokens = [7, 8]\n"
                        "[sweep.grid]\n\"run.seed\" = [1, 2]\n";
  const SweepPlan a = plan(s, "grid");
  ASSERT_EQ(a.runs.size(), 12u);
  std::set<std::string> ids;
  for (const auto& r : a.runs) {
    ids.insert(r.id);
    EXPECT_EQ(r.config.output.dir, a.dir + "/runs/" + r.id);
    EXPECT_EQ(r.config.run.name, "grid/" + r.id);
    EXPECT_TRUE(fs::path(r.config.data.train_path).is_absolute());
    EXPECT_NO_THROW(fulcrum::read_deck_text(r.deck_text, "x"));
  }
  EXPECT_EQ(ids.size(), 12u);
  // axes ordered by key name, last fastest
  EXPECT_EQ(a.runs[0].id, "seed1_batch_tokens2pow7_lr2pow-11");
  EXPECT_EQ(a.runs[1].id, "seed1_batch_tokens2pow7_lr2pow-10");
  EXPECT_DOUBLE_EQ(a.runs[0].config.train.lr, std::exp2(-11));
  EXPECT_EQ(a.runs[0].config.train.batch_tokens, 128u);
  EXPECT_EQ(a.runs[3].config.train.batch_tokens, 256u);
  EXPECT_EQ(a.runs[6].config.run.seed, 2u);
  const SweepPlan b = plan(s, "grid");
  ASSERT_EQ(b.runs.size(), a.runs.size());
  for (size_t i = 0; i < a.runs.size(); ++i) {
    EXPECT_EQ(a.runs[i].id, b.runs[i].id);
    EXPECT_EQ(a.runs[i].deck_text, b.runs[i].deck_text);
  }
}

TEST(SweepPlan, ActivationAblationKeepsFlopsPerToken) {
  const SweepPlan p = plan("[sweep.activation]\nnum_experts = [4, 8, 16, 32]\n", "act");
  ASSERT_EQ(p.runs.size(), 4u);
  EXPECT_EQ(p.runs[0].id, "E4");
  for (const auto& r : p.runs) {
    EXPECT_DOUBLE_EQ(r.flops_per_token, p.runs[0].flops_per_token) << r.id;
    EXPECT_DOUBLE_EQ(r.granularity, p.runs[0].granularity);
    EXPECT_EQ(r.config.moe.num_active_experts, 2);
    EXPECT_EQ(r.config.moe.num_shared_experts, 1);
    EXPECT_EQ(r.config.moe.d_expert, 32);
  }
  EXPECT_NEAR(p.runs[0].activation_ratio, 3.0 / 5.0, 1e-12);
  EXPECT_NEAR(p.runs[3].activation_ratio, 3.0 / 33.0, 1e-12);
  EXPECT_GT(p.runs[3].params_total, p.runs[0].params_total);
}

TEST(SweepPlan, GranularityAblationKeepsFlopsAndActivation) {
  // base G = 2*64/32 = 4; G = 2 and 8 halve / double d_expert, E, E_a, E_s scale inversely
  const SweepPlan p = plan("[sweep.granularity]\ngranularity = [4, 8, 16]\n", "gran");
  ASSERT_EQ(p.runs.size(), 3u);
  for (const auto& r : p.runs) {
    EXPECT_NEAR(r.flops_per_token, p.runs[0].flops_per_token, 1e-9 * r.flops_per_token) << r.id;
    EXPECT_NEAR(r.activation_ratio, p.runs[0].activation_ratio, 1e-12) << r.id;
    EXPECT_NEAR(r.shared_ratio, p.runs[0].shared_ratio, 1e-12) << r.id;
  }
  EXPECT_DOUBLE_EQ(p.runs[1].granularity, 8.0);
  EXPECT_EQ(p.runs[1].config.moe.d_expert, 16);
  EXPECT_EQ(p.runs[1].config.moe.num_experts, 16);
  EXPECT_EQ(p.runs[2].config.moe.num_active_experts, 8);
  EXPECT_EQ(p.runs[2].id, "G16");
  // G = 3 gives a non-integer d_expert: a clear error naming deck and run
  try {
    plan("[sweep.granularity]\ngranularity = [3]\n", "gran-bad");
    FAIL() << "expected an error";
  } catch (const SweepError& e) {
    EXPECT_NE(std::string(e.what()).find("gran-bad.toml: run G3"), std::string::npos) << e.what();
  }
}

TEST(SweepPlan, SharedAblationTradesActiveForShared) {
  const SweepPlan p = plan("[sweep.shared]\nnum_shared_experts = [0, 1, 2]\n", "shared");
  ASSERT_EQ(p.runs.size(), 3u);
  for (const auto& r : p.runs) {
    EXPECT_NEAR(r.flops_per_token, p.runs[0].flops_per_token, 1e-9 * r.flops_per_token);
    EXPECT_NEAR(r.activation_ratio, p.runs[0].activation_ratio, 1e-12);
    // expert count E + E_s fixed; only the router (E x d_model) changes
    EXPECT_NEAR(r.params_total, p.runs[0].params_total, 0.01 * r.params_total);
    EXPECT_EQ(r.config.moe.num_active_experts + r.config.moe.num_shared_experts, 3);
  }
  EXPECT_DOUBLE_EQ(p.runs[0].shared_ratio, 0.0);
  EXPECT_NEAR(p.runs[2].shared_ratio, 2.0 / 3.0, 1e-12);
  EXPECT_THROW(plan("[sweep.shared]\nnum_shared_experts = [3]\n", "shared-bad"), SweepError);
}

TEST(SweepPlan, IsoflopLadderHitsBudgets) {
  const SweepPlan p = plan("[sweep.isoflop]\ncompute = [1e12, 4e12]\nd_model = [32, 64, 96, 128]\n", "iso");
  ASSERT_EQ(p.runs.size(), 8u);
  EXPECT_EQ(p.runs[0].id, "C1e12_d32L1");
  EXPECT_EQ(p.runs[3].id, "C1e12_d128L4");
  for (const auto& r : p.runs) {
    EXPECT_LE(std::fabs(r.compute - r.budget) / r.budget, 0.01) << r.id;
    EXPECT_EQ(r.config.model.d_model / r.config.model.n_heads, 16) << r.id;  // head_dim fixed
    EXPECT_EQ(r.config.model.n_heads / r.config.model.n_kv_heads, 2) << r.id;
    EXPECT_NEAR(r.granularity, 4.0, 1e-12) << r.id;
    EXPECT_NEAR(r.activation_ratio, 3.0 / 9.0, 1e-12) << r.id;
    EXPECT_NEAR(r.shared_ratio, 1.0 / 3.0, 1e-12) << r.id;
    EXPECT_EQ(r.config.train.tokens % r.config.train.batch_tokens, 0u);
    EXPECT_NEAR(r.tokens * r.flops_per_token, r.compute, 1e-6 * r.compute);
    EXPECT_EQ(r.config.train.compute_budget, r.budget) << r.id;  // the budget is in the deck
    EXPECT_NE(r.deck_text.find("\ncompute_budget = "), std::string::npos) << r.id;
  }
  // n_layers scales with d_model (constant aspect ratio)
  EXPECT_EQ(p.runs[2].config.model.n_layers, 3);
  EXPECT_EQ(p.runs[2].config.model.d_ffn, 192);
  // a budget too small for whole batches is an error, not a silent miss
  EXPECT_THROW(plan("[sweep.isoflop]\ncompute = [1e8]\nd_model = [64]\n", "iso-small"), SweepError);
  // a width that breaks head_dim
  EXPECT_THROW(plan("[sweep.isoflop]\ncompute = [1e12]\nd_model = [40]\n", "iso-bad"), SweepError);
}

TEST(SweepPlan, LawsConfigureLrBatchAndAllocation) {
  const std::string laws = "[sweep.laws.law1.moe]\neta_k = 1.1576\neta_a = -0.1529\nbatch_k = 0.0694\nbatch_a = 0.3644\n"
                           "[sweep.laws.law2.moe]\nM_k = 0.1915\nM_a = 0.5095\n";
  const SweepPlan p = plan("[sweep.isoflop]\ncompute = [1e13, 1e14]\nallocation = \"laws\"\n" + laws, "laws");
  ASSERT_EQ(p.runs.size(), 2u);
  for (const auto& r : p.runs) {
    EXPECT_NEAR(r.config.train.lr, 1.1576 * std::pow(r.budget, -0.1529), 1e-12);
    EXPECT_EQ(r.config.train.batch_tokens % 128, 0u);
    EXPECT_LE(std::fabs(r.compute - r.budget) / r.budget, 0.01) << r.id;
  }
  EXPECT_GT(p.runs[1].config.model.d_model, p.runs[0].config.model.d_model);
  // token multiplier: D = 3 x the compute-optimal D for the base model
  const SweepPlan m = plan_sweep_text("[sweep]\nname = \"mult\"\ntoken_multiplier = 3.0\n" + laws + kBase, "mult.toml",
                                      PlanOptions{tmpdir("mult")});
  ASSERT_EQ(m.runs.size(), 1u);
  const double M = m.runs[0].flops_per_token;
  const double Cstar = std::pow(M / 0.1915, 1.0 / 0.5095);
  EXPECT_NEAR(m.runs[0].tokens, 3.0 * Cstar / M, m.runs[0].config.train.batch_tokens);
}

TEST(SweepPlan, InvalidExpansionNamesDeckAndRun) {
  try {
    plan("[sweep.grid]\nmodel.n_heads = [4, 3]\n", "bad");
    FAIL() << "expected an error";
  } catch (const SweepError& e) {
    const std::string w = e.what();
    EXPECT_EQ(w.rfind("bad.toml:4: [model] n_heads: ", 0), 0u) << w;  // where the grid value was written
    EXPECT_NE(w.find("(planning run n_heads3)"), std::string::npos) << w;
    EXPECT_NE(w.find("n_heads"), std::string::npos) << w;
  }
  EXPECT_THROW(plan("[sweep.grid]\ntrain.lr = [2.0]\n", "bad-range"), SweepError);
  EXPECT_THROW(plan("[sweep]\nbogus = 1\n", "bad-key"), SweepError);
  EXPECT_THROW(plan_sweep_text(kBase, "nosweep.toml"), SweepError);
}

TEST(SweepPlan, WritePlanManifestRoundTrip) {
  const SweepPlan p = plan("[sweep.grid]\nrun.seed = [1, 2, 3]\n", "write");
  write_plan(p);
  const Manifest m = read_manifest(p.dir);
  ASSERT_EQ(m.runs.size(), 3u);
  EXPECT_EQ(m.name, "write");
  EXPECT_EQ(m.runs[2].id, "seed3");
  EXPECT_EQ(m.runs[2].index, 2);
  EXPECT_TRUE(fs::exists(m.runs[2].deck));
  EXPECT_NO_THROW(fulcrum::read_deck(m.runs[2].deck));
  EXPECT_EQ(inspect_run(m.runs[0]).status, RunStatus::pending);
  // re-planning the same deck is a no-op; changing a deck under a run file is refused
  EXPECT_NO_THROW(write_plan(p));
  std::ofstream(m.runs[0].dir + "/run.h5") << "x";
  const SweepPlan q = plan_sweep_text("[sweep]\nname = \"write\"\n[sweep.grid]\nrun.seed = [1, 2, 3]\n" + kBase +
                                          "\n[output]\noverwrite = true\n",
                                      "write.toml", PlanOptions{p.dir});
  EXPECT_THROW(write_plan(q), SweepError);
}

TEST(SweepPlan, ShippedSweepDecksPlan) {
  const fs::path dir = fs::path(FULCRUM_SOURCE_DIR) / "input_decks" / "sweeps";
  ASSERT_TRUE(fs::exists(dir));
  int n = 0;
  const auto cwd = fs::current_path();
  fs::current_path(FULCRUM_SOURCE_DIR);  // shipped decks use repository-relative paths
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".toml") continue;
    ++n;
    PlanOptions o;
    o.dir = tmpdir("shipped-" + e.path().stem().string());
    EXPECT_NO_THROW({
      const SweepPlan p = plan_sweep(e.path().string(), o);
      EXPECT_FALSE(p.runs.empty()) << e.path();
    }) << e.path();
  }
  fs::current_path(cwd);
  EXPECT_GE(n, 1);
}

// A sweep over the shipped mixture deck (inline-table data.weights, a corpus
// manifest instead of token files): every planned deck reads back with the
// trainer's reader, keeps the weights, has an absolute manifest path and
// records its IsoFLOP budget (train.compute_budget).
TEST(SweepPlan, MixtureBaseDeckPlansAndEveryDeckReadsBack) {
  const auto cwd = fs::current_path();
  fs::current_path(FULCRUM_SOURCE_DIR);  // the base deck's paths are repository-relative
  PlanOptions o;
  o.dir = tmpdir("mixture");
  SweepPlan p;
  ASSERT_NO_THROW(p = plan_sweep_text("[sweep]\nname = \"mixture\"\nbase = \"input_decks/data-mixture.toml\"\n"
                                      "budget_tolerance = 0.1\n"
                                      "[sweep.isoflop]\ncompute = [1e13, 3e13]\nd_model = [64, 128]\n",
                                      "mixture.toml", o));
  fs::current_path(cwd);
  ASSERT_EQ(p.runs.size(), 4u);
  write_plan(p);
  const Manifest m = read_manifest(p.dir);
  ASSERT_EQ(m.runs.size(), 4u);
  const std::map<std::string, double> weights = {{"books", 0.4}, {"reference", 0.2}, {"technical", 0.2}, {"code", 0.2}};
  for (const auto& mr : m.runs) {
    SCOPED_TRACE(mr.id);
    fulcrum::LoadedDeck d;
    ASSERT_NO_THROW(d = fulcrum::read_deck(mr.deck));
    EXPECT_EQ(d.config.data.weights, weights);
    EXPECT_EQ(d.config.data.manifest_path, (fs::path(FULCRUM_SOURCE_DIR) / "data/mix-small/manifest.toml").lexically_normal().string());
    EXPECT_TRUE(d.config.data.train_path.empty());
    EXPECT_EQ(d.config.train.compute_budget, mr.budget);
    EXPECT_GT(mr.budget, 0.0);
  }
}

// Strings with quotes, backslashes and control characters, and table keys that
// need quoting, survive the base-deck serialisation (the plan used to write
// them unescaped: invalid TOML, or a different value).
TEST(SweepPlan, BaseDeckStringsAndTableKeysAreEscaped) {
  const std::string base = R"(
[data]
manifest = "m/\"q\" b\\s/manifest.toml"
weights = {"group one" = 0.5, two = 0.5}
[model]
d_model = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
d_ffn = 128
seq_len = 32
[train]
tokens = 4096
batch_tokens = 128
micro_batch_size = 4
)";
  const std::string sweep = "[sweep]\nname = \"escape\"\n[sweep.grid]\n\"run.seed\" = [1, 2]\n";
  SweepPlan p;
  ASSERT_NO_THROW(p = plan_sweep_text(sweep + base, "escape.toml", PlanOptions{tmpdir("escape")}));
  ASSERT_EQ(p.runs.size(), 2u);
  for (const auto& r : p.runs) {
    fulcrum::LoadedDeck d;
    ASSERT_NO_THROW(d = fulcrum::read_deck_text(r.deck_text, r.id));
    EXPECT_EQ(d.config.data.weights.at("group one"), 0.5);
    EXPECT_EQ(d.config.data.manifest_path, (fs::current_path() / "m/\"q\" b\\s/manifest.toml").string());
    EXPECT_EQ(d.config.train.compute_budget, 0.0);  // not a budget ladder
  }
  // A control character reaches the deck reader's own check (file, line, key),
  // not a TOML syntax error of the serialised base deck.
  try {
    plan_sweep_text(sweep + "[run]\nname = \"a\\u0001b\"\n" + base, "escape.toml", PlanOptions{tmpdir("escape2")});
    FAIL() << "a control character in run.name must be rejected";
  } catch (const SweepError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("[run] name: must not contain control characters"), std::string::npos) << w;
    EXPECT_EQ(w.find("syntax"), std::string::npos) << w;
  }
}

// The routing options are sweep axes like any key: strings, booleans and
// floats, and every run's deck reads back with its values.
TEST(SweepPlan, RoutingOptionsAreAxes) {
  const std::string s =
      "[sweep.grid]\nmoe.balance_loss_scope = [\"micro_batch\", \"sequence\", \"global\"]\n"
      "moe.bias_balancing = [false, true]\nmoe.score_function = [\"softmax\", \"sigmoid\"]\n";
  const SweepPlan a = plan(s, "routing");
  ASSERT_EQ(a.runs.size(), 12u);
  std::set<std::string> ids, combos;
  for (const auto& r : a.runs) {
    ids.insert(r.id);
    const fulcrum::RunConfig c = fulcrum::read_deck_text(r.deck_text, "x").config;
    EXPECT_EQ(c.moe.balance_loss_scope, r.config.moe.balance_loss_scope);
    EXPECT_EQ(c.moe.bias_balancing, r.config.moe.bias_balancing);
    EXPECT_EQ(c.moe.score_function, r.config.moe.score_function);
    combos.insert(c.moe.balance_loss_scope + "/" + (c.moe.bias_balancing ? "bias" : "-") + "/" +
                  c.moe.score_function);
  }
  EXPECT_EQ(ids.size(), 12u);
  EXPECT_EQ(combos.size(), 12u);
  // a bad value is refused at planning, naming the key
  try {
    plan("[sweep.grid]\nmoe.score_function = [\"softmax\", \"sigmiod\"]\n", "routing-bad");
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("score_function"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------
// Sweep decks are read by the deck machinery: every error class names the
// file, the line and the key (a missing [sweep] section has no line).

namespace {

// The SweepError of planning `text` (as file "e.toml").
std::string sweep_error(const std::string& text, const std::string& file = "e.toml") {
  try {
    plan_sweep_text(text, file, PlanOptions{tmpdir("errors")});
  } catch (const SweepError& e) {
    return e.what();
  }
  return "(planned without an error)";
}

}  // namespace

TEST(SweepPlanErrors, EveryClassNamesFileLineAndKey) {
  struct Case {
    const char* what;
    std::string sweep;  // [sweep] section and deck sections, before kBase
    std::string located;  // "e.toml:<line>: [section] key: ..." prefix expected in the message
    std::string detail;
  };
  const std::vector<Case> cases = {
      {"syntax", "[sweep]\nname = \n", "e.toml:2: ", "TOML syntax error"},
      {"duplicate key", "[sweep]\nname = \"a\"\nname = \"b\"\n", "e.toml:3: [sweep] name: ", "duplicate key"},
      {"unknown key", "[sweep]\nrnaks = 2\n", "e.toml:2: [sweep] rnaks: ", "did you mean 'ranks'?"},
      {"wrong type", "[sweep]\nranks = \"2\"\n", "e.toml:2: [sweep] ranks: ", "wrong type: expected an integer"},
      {"out of range", "[sweep]\nranks = 0\n", "e.toml:2: [sweep] ranks: ", "out of range"},
      {"bad name", "[sweep]\nname = \"a b\"\n", "e.toml:2: [sweep] name: ", "may contain only"},
      {"unknown table key", "[sweep]\n[sweep.isoflop]\ncompute = [1e12]\nd_modl = [64]\n",
       "e.toml:4: [sweep] isoflop.d_modl: ", "did you mean 'd_model'?"},
      {"wrong element type", "[sweep]\n[sweep.isoflop]\ncompute = [1e12, \"x\"]\n", "e.toml:3: [sweep] isoflop.compute: ",
       "wrong type"},
      {"unknown grid key", "[sweep]\n[sweep.grid]\ntrain.lrr = [0.1]\n", "e.toml:3: [sweep] grid.train.lrr: ",
       "unknown key 'lrr'; did you mean 'lr'?"},
      {"unknown grid section", "[sweep]\n[sweep.log2_grid]\ntrian.lr = [-8]\n", "e.toml:3: [sweep] log2_grid.trian.lr: ",
       "did you mean 'train'?"},
      {"grid value out of range", "[sweep]\n[sweep.grid]\ntrain.lr = [0.1,\n 2.0]\n", "e.toml:4: [train] lr: ",
       "out of range: 2"},
      {"grid value of a wrong type", "[sweep]\n[sweep.grid]\nmoe.score_function = [\"softmax\", 3]\n",
       "e.toml:3: [moe] score_function: ", "wrong type"},
      {"deck key in the sweep deck", "[sweep]\n[output]\noverwrit = true\n", "e.toml:3: [output] overwrit: ",
       "did you mean 'overwrite'?"},
      {"ablation without its list", "[sweep]\n[sweep.shared]\n", "e.toml:", "[sweep] shared.num_shared_experts: "},
      {"laws of a wrong type", "[sweep]\nlaws = 3\n", "e.toml:2: [sweep] laws: ", "wrong type"},
      {"budgets out of range", "[sweep]\n[sweep.isoflop]\ncompute = [-1.0]\n", "e.toml:3: [sweep] isoflop.compute: ",
       "out of range"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string w = sweep_error(c.sweep + kBase);
    EXPECT_EQ(w.rfind(c.located, 0), 0u) << w;
    EXPECT_NE(w.find(c.detail), std::string::npos) << w;
    EXPECT_EQ(w.find('\n'), std::string::npos) << w;
  }
  // No [sweep] section: the file and the section, no line.
  EXPECT_EQ(sweep_error(kBase).rfind("e.toml: [sweep]: missing section", 0), 0u) << sweep_error(kBase);
  // A problem of the base deck is reported in the base deck, at its line.
  const std::string base = tmpdir("errors-base") + ".toml";
  std::ofstream(base) << kBase << "[output]\ndirr = \"x\"\n";
  const std::string w = sweep_error("[sweep]\nbase = \"" + base + "\"\n");
  EXPECT_NE(w.find(base + ":22: [output] dirr: unknown key 'dirr'; did you mean 'dir'?"), std::string::npos) << w;
  const std::string missing = sweep_error("[sweep]\nbase = \"/nonexistent/base.toml\"\n");
  EXPECT_EQ(missing.rfind("e.toml:2: [sweep] base: cannot read base deck", 0), 0u) << missing;
}

// ---------------------------------------------------------------------------
// The concrete decks are written by the schema's writer: every concrete deck
// of every shipped sweep reads back, is written again identically and reads
// to the same config; strings with quotes, backslashes, tabs and unicode and
// inline tables with quoted keys round-trip; every path key is absolute.

namespace {

void expect_same_config(const fulcrum::RunConfig& a, const fulcrum::RunConfig& b) {
  for (const auto& k : fulcrum::deck_keys())
    EXPECT_EQ(fulcrum::toml_value_text(k, k.get(a)), fulcrum::toml_value_text(k, k.get(b))) << k.dotted();
  EXPECT_EQ(a.moe.enabled, b.moe.enabled);
}

void expect_round_trip(const PlannedRun& r) {
  SCOPED_TRACE(r.id);
  fulcrum::LoadedDeck once, twice;
  ASSERT_NO_THROW(once = fulcrum::read_deck_text(r.deck_text, r.id + "/deck.toml"));
  expect_same_config(once.config, r.config);
  const std::string written = fulcrum::resolved_deck_toml(once.config);
  ASSERT_NO_THROW(twice = fulcrum::read_deck_text(written, r.id + "/deck.toml"));
  expect_same_config(twice.config, once.config);
  EXPECT_EQ(fulcrum::resolved_deck_toml(twice.config), written);
  for (const auto& k : fulcrum::deck_keys()) {
    const std::string path = k.get(once.config).text;
    if (k.is_path && !path.empty()) {
      EXPECT_TRUE(fs::path(path).is_absolute()) << k.dotted() << " = " << path;
    }
  }
}

}  // namespace

TEST(SweepPlanRoundTrip, EveryConcreteDeckOfEveryShippedSweep) {
  const fs::path dir = fs::path(FULCRUM_SOURCE_DIR) / "input_decks" / "sweeps";
  const auto cwd = fs::current_path();
  fs::current_path(FULCRUM_SOURCE_DIR);  // shipped decks use repository-relative paths
  int sweeps = 0, runs = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".toml") continue;
    SCOPED_TRACE(e.path().string());
    SweepPlan p;
    ASSERT_NO_THROW(p = plan_sweep(e.path().string(), PlanOptions{tmpdir("round-" + e.path().stem().string())}));
    ++sweeps;
    for (const auto& r : p.runs) {
      expect_round_trip(r);
      ++runs;
    }
  }
  fs::current_path(cwd);
  EXPECT_GE(sweeps, 6);
  EXPECT_GE(runs, 20);
}

TEST(SweepPlanRoundTrip, StringsWithAnyCharacterAndInlineTables) {
  const std::string odd = "a \\\"quoted\\\" b\\\\ack\\tslash \xc3\xa9 \xe2\x98\x83 #[x]={y}";  // TOML escapes
  const std::string odd_value = "a \"quoted\" b\\ack\tslash \xc3\xa9 \xe2\x98\x83 #[x]={y}";
  const std::string base = R"(
[data]
manifest = "m/manifest.toml"
weights = { books = 1.0 }
[model]
d_model = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
d_ffn = 128
seq_len = 32
[train]
tokens = 4096
batch_tokens = 128
micro_batch_size = 4
)";
  const std::string sweep =
      "[sweep]\nname = \"strings\"\n[sweep.grid]\n"
      "data.manifest = [\"" + odd + "/manifest.toml\", \"plain/manifest.toml\"]\n"
      "data.weights = [{ \"group one\" = 0.5, \"q\\\"uote\" = 0.25, \"\xc3\xa9t\xc3\xa9\" = 0.25 }, { technical = 0.2, code = 1 }]\n";
  SweepPlan p;
  ASSERT_NO_THROW(p = plan_sweep_text(sweep + base, "strings.toml", PlanOptions{tmpdir("strings")}));
  ASSERT_EQ(p.runs.size(), 4u);
  std::set<std::string> manifests;
  std::set<std::map<std::string, double>> weights;
  for (const auto& r : p.runs) {
    expect_round_trip(r);
    manifests.insert(r.config.data.manifest_path);
    weights.insert(r.config.data.weights);
  }
  EXPECT_TRUE(manifests.count((fs::current_path() / (odd_value + "/manifest.toml")).lexically_normal().string()))
      << *manifests.begin();
  EXPECT_TRUE(weights.count({{"group one", 0.5}, {"q\"uote", 0.25}, {"\xc3\xa9t\xc3\xa9", 0.25}}));
  EXPECT_TRUE(weights.count({{"technical", 0.2}, {"code", 1.0}}));
  // The inline table is written as one (not as "weights = technical = 0.2").
  for (const auto& r : p.runs) EXPECT_NE(r.deck_text.find("weights = { "), std::string::npos) << r.deck_text;
}

// A study deck's sweep files and base decks are read by the same machinery: a
// problem in one is reported at the study's key, quoting the file's location.
TEST(SweepPlanErrors, StudySweepFilesAreLocated) {
  const std::string file = tmpdir("study-sweep") + ".toml";
  std::ofstream(file) << "[sweep]\nname = \"x\"\n[sweep.grid]\ntrain.lr = [0.1,,]\n";
  const std::string study = "[study]\nname = \"s\"\n[[stage]]\nname = \"a\"\nrequire = [\"law1\"]\n"
                            "[[stage.sweep]]\nfile = \"" + file + "\"\n";
  try {
    read_study_text(study, "study.toml");
    FAIL() << "expected a StudyError";
  } catch (const StudyError& e) {
    const std::string w = e.what();
    EXPECT_EQ(w.rfind("study.toml:7: stage[1].sweep[1].file: cannot read sweep deck: " + file + ":4: TOML syntax error", 0), 0u) << w;
  }
  // and a syntax error of the study deck itself keeps its form
  try {
    read_study_text("[study]\nname = \"b\n", "study.toml");
    FAIL() << "expected a StudyError";
  } catch (const StudyError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("study.toml:2: (syntax): TOML syntax error", 0), 0u) << e.what();
  }
}
