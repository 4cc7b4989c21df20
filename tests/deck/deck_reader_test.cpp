// Tests for the input deck reader (src/deck): one test per error class, each
// checking that the message names the file, the line and the key; defaults,
// overrides, the resolved-deck round trip and the shipped decks.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "deck/deck_reader.hpp"
#include "deck/deck_schema.hpp"
#include "model/gemm.hpp"
#include "model/model_shape.hpp"
#include "model/token_dispatcher_names.hpp"
#include "train/lr_schedule.hpp"

namespace fulcrum {
namespace {

const char* kFile = "deck.toml";

// A minimal valid MoE deck. Line numbers matter to the tests below.
const std::string kBase =
    "[data]\n"                           // 1
    "train = \"train.tok\"\n"            // 2
    "valid = \"valid.tok\"\n"            // 3
    "[model]\n"                          // 4
    "d_model = 128\n"                    // 5
    "n_heads = 4\n"                      // 6
    "n_kv_heads = 2\n"                   // 7
    "seq_len = 128\n"                    // 8
    "[moe]\n"                            // 9
    "num_experts = 8\n"                  // 10
    "num_active_experts = 2\n"           // 11
    "d_expert = 64\n"                    // 12
    "[train]\n"                          // 13
    "tokens = 100000\n"                  // 14
    "micro_batch_size = 4\n";            // 15 (batch_tokens 8192 default = 16 * 128 * 4)

// kBase with extra text appended (sections not already in kBase).
std::string with(const std::string& extra) { return kBase + extra; }

// `base` with "key = value" set in [section]: replaces the key's line if the
// section has it, else inserts it right below the header (appending the
// section if absent). Returns the text and the 1-based line of the key.
struct Edited {
  std::string text;
  int line;
};
Edited edit(const std::string& base, const std::string& section, const std::string& assignment) {
  std::vector<std::string> lines;
  {
    std::istringstream in(base);
    std::string l;
    while (std::getline(in, l)) lines.push_back(l);
  }
  const std::string key = assignment.substr(0, assignment.find(' '));
  int at = -1;
  std::size_t header = lines.size();
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i] == "[" + section + "]") header = i;
  }
  if (header == lines.size()) {
    lines.push_back("[" + section + "]");
    lines.push_back(assignment);
    at = static_cast<int>(lines.size());
  } else {
    std::size_t i = header + 1;
    for (; i < lines.size() && lines[i].rfind("[", 0) != 0; ++i) {
      if (lines[i].rfind(key + " =", 0) == 0) {
        lines[i] = assignment;
        at = static_cast<int>(i) + 1;
        break;
      }
    }
    if (at < 0) {
      lines.insert(lines.begin() + static_cast<long>(header) + 1, assignment);
      at = static_cast<int>(header) + 2;
    }
  }
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  return {text, at};
}

// Expects read_deck_text to throw; returns the DeckError.
DeckError expect_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    read_deck_text(text, kFile, overrides);
  } catch (const DeckError& e) {
    return e;
  }
  ADD_FAILURE() << "no DeckError for deck:\n" << text;
  return DeckError("", 0, "", "none");
}

// Checks file, line and key in both the fields and the one-line message.
void expect_located(const DeckError& e, int line, const std::string& key) {
  const std::string what = e.what();
  EXPECT_EQ(e.file, kFile) << what;
  EXPECT_EQ(e.line, line) << what;
  EXPECT_EQ(e.key, key) << what;
  const std::string prefix = line > 0 ? std::string(kFile) + ":" + std::to_string(line) + ": "
                                      : std::string(kFile) + ": ";
  EXPECT_EQ(what.rfind(prefix, 0), 0u) << what;
  const auto dot = key.find('.');
  const std::string shown = dot == std::string::npos
                                ? "[" + key + "]"
                                : "[" + key.substr(0, dot) + "] " + key.substr(dot + 1) + ":";
  EXPECT_NE(what.find(shown), std::string::npos) << what;
  EXPECT_EQ(what.find('\n'), std::string::npos) << "message must be one line: " << what;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// The resolved deck without its comment lines (which name the source path).
std::string body(const std::string& toml) {
  std::istringstream in(toml);
  std::string line, out;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '#') continue;
    out += line + "\n";
  }
  return out;
}

TEST(DeckReader, MinimalDeckLoadsWithDefaults) {
  const LoadedDeck d = read_deck_text(kBase, kFile);
  const RunConfig& c = d.config;
  EXPECT_EQ(c.deck_path, kFile);
  EXPECT_EQ(c.deck_text, kBase);
  EXPECT_EQ(c.data.train_path, "train.tok");
  EXPECT_EQ(c.data.valid_path, "valid.tok");
  EXPECT_TRUE(c.moe.enabled);
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.num_shared_experts, 0);
  EXPECT_EQ(c.train.tokens, 100000u);
  EXPECT_EQ(c.train.compute, 0.0);
  // Defaults from run_config.hpp.
  const RunConfig def;
  EXPECT_EQ(c.run.name, def.run.name);
  EXPECT_EQ(c.run.seed, def.run.seed);
  EXPECT_EQ(c.model.vocab_size, def.model.vocab_size);
  EXPECT_EQ(c.model.n_layers, def.model.n_layers);
  EXPECT_EQ(c.model.d_ffn, def.model.d_ffn);
  EXPECT_EQ(c.model.rope_theta, def.model.rope_theta);
  EXPECT_EQ(c.train.lr, def.train.lr);
  EXPECT_EQ(c.train.lr_schedule, "wsd");
  EXPECT_EQ(c.train.batch_tokens, def.train.batch_tokens);
  EXPECT_EQ(c.moe.aux_loss_coef, def.moe.aux_loss_coef);
  // routing: the paper's recipe
  EXPECT_EQ(c.moe.score_function, "softmax");
  EXPECT_EQ(c.moe.route_scale, 1.0);
  EXPECT_EQ(c.moe.balance_loss_scope, "micro_batch");
  EXPECT_EQ(c.moe.bias_balancing, false);
  EXPECT_EQ(c.moe.bias_update_rate, 1e-3);
  EXPECT_EQ(c.moe.aux_loss_coef, 0.01);
  EXPECT_EQ(c.moe.z_loss_coef, 0.001);
  EXPECT_EQ(c.parallel.dispatcher, "local");
  EXPECT_EQ(c.output.dir, def.output.dir);
  // key_lines: given keys only.
  EXPECT_EQ(d.key_lines.at("data.train"), 2);
  EXPECT_EQ(d.key_lines.at("moe.d_expert"), 12);
  EXPECT_EQ(d.key_lines.count("model.vocab_size"), 0u);
  EXPECT_TRUE(d.overridden_keys.empty());
}

TEST(DeckReader, DenseWithoutMoeSection) {
  const std::string text =
      "[data]\ntrain = \"a\"\nvalid = \"b\"\n[train]\ncompute = 1e18\nlr = 1\n";
  const RunConfig c = read_deck_text(text, kFile).config;
  EXPECT_FALSE(c.moe.enabled);
  EXPECT_EQ(c.moe.num_experts, 0);
  EXPECT_EQ(c.train.compute, 1e18);
  EXPECT_EQ(c.train.tokens, 0u);
  EXPECT_EQ(c.train.lr, 1.0);  // integer accepted for a float key
}

TEST(DeckReader, RelativePathsKeptAsWritten) {
  const RunConfig c =
      read_deck_text(with("[output]\ndir = \"../runs/./x\"\n"), kFile).config;
  EXPECT_EQ(c.output.dir, "../runs/./x");
  EXPECT_EQ(c.data.train_path, "train.tok");
}

// 1. TOML syntax error.
TEST(DeckErrors, SyntaxError) {
  const DeckError e = expect_error(with("[run]\nname = = 3\n"));  // line 17
  EXPECT_EQ(e.line, 17) << e.what();
  EXPECT_EQ(e.file, kFile);
  EXPECT_TRUE(contains(e.what(), "deck.toml:17: ")) << e.what();
  EXPECT_TRUE(contains(e.what(), "syntax error")) << e.what();
  EXPECT_TRUE(contains(e.what(), "name = = 3")) << e.what();
  EXPECT_FALSE(contains(e.what(), "\n")) << e.what();

  const DeckError u = expect_error(with("[run]\nname = \"unterminated\n"));
  EXPECT_EQ(u.line, 17) << u.what();
  EXPECT_TRUE(contains(u.what(), "deck.toml:17: ")) << u.what();
}

// 2. Unknown section / unknown key with a suggestion.
TEST(DeckErrors, UnknownSection) {
  const DeckError e = expect_error(with("[modle]\nx = 1\n"));
  expect_located(e, 16, "modle");
  EXPECT_TRUE(contains(e.what(), "unknown section")) << e.what();
  EXPECT_TRUE(contains(e.what(), "did you mean [model]?")) << e.what();
}

TEST(DeckErrors, UnknownKeySuggestsNearest) {
  const std::string text =
      "[data]\ntrain = \"a\"\nvalid = \"b\"\n[model]\nn_head = 4\n[train]\ntokens = 10\n";
  const DeckError e = expect_error(text);
  expect_located(e, 5, "model.n_head");
  EXPECT_TRUE(contains(e.what(), "unknown key 'n_head'; did you mean 'n_heads'?")) << e.what();
}

TEST(DeckErrors, UnknownKeyOtherHints) {
  // A key from another section.
  const Edited lr = edit(kBase, "model", "lr = 0.1");
  DeckError e = expect_error(lr.text);
  expect_located(e, lr.line, "model.lr");
  EXPECT_TRUE(contains(e.what(), "belongs in [train]")) << e.what();
  // The RunConfig field name instead of the deck spelling.
  e = expect_error("[data]\ntrain_path = \"a\"\n");
  expect_located(e, 2, "data.train_path");
  EXPECT_TRUE(contains(e.what(), "did you mean 'train'?")) << e.what();
  // moe.enabled is not a key.
  e = expect_error(with("enabled = true\n"));  // under [train]: belongs nowhere
  EXPECT_EQ(e.key, "train.enabled");
  e = expect_error(kBase.substr(0, kBase.find("[train]")) + "enabled = true\n");
  expect_located(e, 13, "moe.enabled");
  EXPECT_TRUE(contains(e.what(), "a [moe] section makes the model MoE")) << e.what();
  // Key outside any section.
  e = expect_error("seed = 3\n" + kBase);
  EXPECT_EQ(e.line, 1);
  EXPECT_TRUE(contains(e.what(), "deck.toml:1: ")) << e.what();
  EXPECT_TRUE(contains(e.what(), "'seed'")) << e.what();
  EXPECT_TRUE(contains(e.what(), "[run]")) << e.what();
}

// 3. Wrong type.
TEST(DeckErrors, WrongType) {
  DeckError e = expect_error(with("[run]\nseed = \"42\"\n"));
  expect_located(e, 17, "run.seed");
  EXPECT_TRUE(contains(e.what(), "expected an integer")) << e.what();
  EXPECT_TRUE(contains(e.what(), "got a string")) << e.what();

  e = expect_error(kBase + "lr = \"fast\"\n");  // under [train]
  expect_located(e, 16, "train.lr");
  EXPECT_TRUE(contains(e.what(), "got a string")) << e.what();

  e = expect_error(kBase + "batch_tokens = 8192.0\n");  // float for an integer
  expect_located(e, 16, "train.batch_tokens");
  EXPECT_TRUE(contains(e.what(), "expected an integer, got a float (8192.0)")) << e.what();

  e = expect_error(with("[output]\noverwrite = 1\n"));
  expect_located(e, 17, "output.overwrite");
  EXPECT_TRUE(contains(e.what(), "boolean")) << e.what();

  e = expect_error(with("[run]\nname = 5\n"));
  expect_located(e, 17, "run.name");

  e = expect_error(with("[run]\nname = [\"a\"]\n"));
  expect_located(e, 17, "run.name");
  EXPECT_TRUE(contains(e.what(), "got an array") || contains(e.what(), "got a array")) << e.what();

  e = expect_error(with("[run]\nseed = true\n"));
  expect_located(e, 17, "run.seed");
  EXPECT_TRUE(contains(e.what(), "boolean")) << e.what();
}

// 4. Out of range, including negatives and 64-bit overflow.
TEST(DeckErrors, OutOfRange) {
  struct Case {
    std::string section, line;
    std::string key;
  };
  const std::vector<Case> cases = {
      {"[model]", "d_model = 0", "model.d_model"},
      {"[model]", "seq_len = 1", "model.seq_len"},
      {"[model]", "norm_eps = 0.0", "model.norm_eps"},
      {"[model]", "init_std = -0.1", "model.init_std"},
      {"[train]", "lr = 0.0", "train.lr"},
      {"[train]", "lr = 1.5", "train.lr"},
      {"[train]", "beta1 = 1.0", "train.beta1"},
      {"[train]", "beta2 = -0.1", "train.beta2"},
      {"[train]", "eps = 0", "train.eps"},
      {"[train]", "warmup_fraction = 1.2", "train.warmup_fraction"},
      {"[train]", "micro_batch_size = 0", "train.micro_batch_size"},
      {"[train]", "compute = inf", "train.compute"},
      {"[train]", "lr = nan", "train.lr"},
      {"[moe]", "capacity_factor = 0.5", "moe.capacity_factor"},
      {"[moe]", "num_shared_experts = -1", "moe.num_shared_experts"},
      {"[moe]", "route_scale = 0", "moe.route_scale"},
      {"[moe]", "route_scale = 101", "moe.route_scale"},
      {"[moe]", "bias_update_rate = 0", "moe.bias_update_rate"},
      {"[moe]", "bias_update_rate = -1e-3", "moe.bias_update_rate"},
      {"[moe]", "aux_loss_coef = -0.01", "moe.aux_loss_coef"},
      {"[run]", "seed = -1", "run.seed"},
      {"[run]", "seed = 99999999999999999999999", "run.seed"},
      {"[model]", "vocab_size = 9223372036854775807", "model.vocab_size"},
  };
  for (const auto& c : cases) {
    const Edited ed = edit(kBase, c.section.substr(1, c.section.size() - 2), c.line);
    const DeckError e = expect_error(ed.text);
    SCOPED_TRACE(c.line);
    expect_located(e, ed.line, c.key);
    EXPECT_TRUE(contains(e.what(), "range") || contains(e.what(), "64 bits")) << e.what();
  }
  // Overflow is reported as such, not as a saturated value.
  const DeckError e = expect_error(with("[run]\nseed = 99999999999999999999999\n"));
  EXPECT_TRUE(contains(e.what(), "does not fit in 64 bits")) << e.what();
  // Edges that are valid.
  const RunConfig c = read_deck_text(edit(kBase, "moe", "capacity_factor = 1").text, kFile).config;
  EXPECT_EQ(c.moe.capacity_factor, 1.0);
  read_deck_text(kBase + "beta1 = 0.0\nlr = 1.0\ngrad_clip = 0\nwarmup_fraction = 0\n", kFile);
  const RunConfig s =
      read_deck_text(with("[run]\nseed = 9223372036854775807\n"), kFile).config;
  EXPECT_EQ(s.run.seed, 9223372036854775807ull);
}

// 5. Enumerations list the valid values.
TEST(DeckErrors, BadEnumerations) {
  DeckError e = expect_error(kBase + "lr_schedule = \"linear\"\n");
  expect_located(e, 16, "train.lr_schedule");
  EXPECT_TRUE(contains(e.what(), "invalid value 'linear'")) << e.what();
  EXPECT_TRUE(contains(e.what(), "wsd, cosine")) << e.what();

  e = expect_error("[data]\ntrain = \"a\"\nvalid = \"b\"\ntokenizer = \"bpe\"\n[train]\ntokens = 1\n");
  expect_located(e, 4, "data.tokenizer");
  EXPECT_TRUE(contains(e.what(), "valid values: byte")) << e.what();

  e = expect_error(with("[parallel]\ndispatcher = \"ncll\"\n"));
  expect_located(e, 17, "parallel.dispatcher");
  EXPECT_TRUE(contains(e.what(), "did you mean 'nccl'?")) << e.what();
  EXPECT_TRUE(contains(e.what(), "local, mpi_alltoall, nccl")) << e.what();

  // routing options
  Edited ed = edit(kBase, "moe", "score_function = \"sigmoi\"");
  e = expect_error(ed.text);
  expect_located(e, ed.line, "moe.score_function");
  EXPECT_TRUE(contains(e.what(), "did you mean 'sigmoid'?")) << e.what();
  EXPECT_TRUE(contains(e.what(), "softmax, sigmoid")) << e.what();
  ed = edit(kBase, "moe", "balance_loss_scope = \"microbatch\"");
  e = expect_error(ed.text);
  expect_located(e, ed.line, "moe.balance_loss_scope");
  EXPECT_TRUE(contains(e.what(), "did you mean 'micro_batch'?")) << e.what();
  EXPECT_TRUE(contains(e.what(), "micro_batch, sequence, global")) << e.what();
  ed = edit(kBase, "moe", "bias_balancing = 1");
  e = expect_error(ed.text);
  expect_located(e, ed.line, "moe.bias_balancing");
  // a near-miss key name is suggested
  ed = edit(kBase, "moe", "bias_balance = true");
  e = expect_error(ed.text);
  EXPECT_TRUE(contains(e.what(), "bias_balancing")) << e.what();
}

// Routing options: every value is read; aux_loss_coef = 0 with bias balancing
// (aux-loss-free) is valid; the rate alone (bias off) is accepted and unused,
// so a sweep axis over bias_balancing works with a fixed rate.
TEST(DeckReader, RoutingOptions) {
  const std::string t = kBase + "";
  const RunConfig c =
      read_deck_text(t, kFile, {"moe.score_function=sigmoid", "moe.route_scale=2.5",
                                "moe.balance_loss_scope=global", "moe.bias_balancing=true",
                                "moe.bias_update_rate=0.002", "moe.aux_loss_coef=0"})
          .config;
  EXPECT_EQ(c.moe.score_function, "sigmoid");
  EXPECT_EQ(c.moe.route_scale, 2.5);
  EXPECT_EQ(c.moe.balance_loss_scope, "global");
  EXPECT_TRUE(c.moe.bias_balancing);
  EXPECT_EQ(c.moe.bias_update_rate, 0.002);
  EXPECT_EQ(c.moe.aux_loss_coef, 0.0);
  for (const char* scope : {"micro_batch", "sequence", "global"})
    EXPECT_EQ(read_deck_text(t, kFile, {std::string("moe.balance_loss_scope=") + scope}).config.moe.balance_loss_scope,
              scope);
  EXPECT_FALSE(read_deck_text(t, kFile, {"moe.bias_update_rate=0.01"}).config.moe.bias_balancing);
  // resolved round trip keeps them
  const std::string r = resolved_deck_toml(c);
  EXPECT_TRUE(contains(r, "score_function = \"sigmoid\"")) << r;
  EXPECT_TRUE(contains(r, "balance_loss_scope = \"global\"")) << r;
  const RunConfig b = read_deck_text(r, "resolved.toml").config;
  EXPECT_EQ(body(resolved_deck_toml(b)), body(r));
  EXPECT_EQ(b.moe.bias_update_rate, 0.002);
  // the training fingerprint: unchanged by the routing keys at their defaults
  // (checkpoints of earlier versions still resume), changed by any other value
  const RunConfig base = read_deck_text(t, kFile).config;
  EXPECT_FALSE(contains(training_fingerprint(base), "score_function"));
  EXPECT_FALSE(contains(training_fingerprint(base), "bias_update_rate"));
  EXPECT_TRUE(contains(resolved_deck_toml(base), "score_function = \"softmax\""));
  for (const char* o : {"moe.score_function=sigmoid", "moe.route_scale=2", "moe.balance_loss_scope=sequence",
                        "moe.bias_balancing=true", "moe.bias_update_rate=0.01"})
    EXPECT_NE(training_fingerprint(read_deck_text(t, kFile, {o}).config), training_fingerprint(base)) << o;
}

// 6. Inconsistent architecture and cross-key rules.
TEST(DeckErrors, InconsistentArchitecture) {
  // d_model % n_heads: blames n_heads (line 6).
  std::string t = kBase;
  t.replace(t.find("n_heads = 4"), 11, "n_heads = 3");
  DeckError e = expect_error(t);
  expect_located(e, 6, "model.n_heads");
  EXPECT_TRUE(contains(e.what(), "not divisible by n_heads")) << e.what();

  // Odd head dimension: d_model 136 / 8 heads = 17.
  t = kBase;
  t.replace(t.find("d_model = 128"), 13, "d_model = 136");
  t.replace(t.find("n_heads = 4"), 11, "n_heads = 8");
  e = expect_error(t);
  expect_located(e, 6, "model.n_heads");
  EXPECT_TRUE(contains(e.what(), "must be even")) << e.what();

  // n_heads % n_kv_heads.
  t = kBase;
  t.replace(t.find("n_kv_heads = 2"), 14, "n_kv_heads = 3");
  e = expect_error(t);
  expect_located(e, 7, "model.n_kv_heads");

  // num_active_experts > num_experts.
  t = kBase;
  t.replace(t.find("num_active_experts = 2"), 22, "num_active_experts = 9");
  e = expect_error(t);
  expect_located(e, 11, "moe.num_active_experts");

  // first_k_dense >= n_layers (default 4).
  e = expect_error(kBase.substr(0, kBase.find("[train]")) + "first_k_dense = 4\n" +
                   kBase.substr(kBase.find("[train]")));
  expect_located(e, 13, "moe.first_k_dense");
  EXPECT_TRUE(contains(e.what(), "at least one layer must be MoE")) << e.what();

  // expert_parallel must divide num_experts.
  e = expect_error(with("[parallel]\nexpert_parallel = 3\ndispatcher = \"nccl\"\n"));
  expect_located(e, 17, "parallel.expert_parallel");
  // ... and needs a distributed dispatcher when > 1.
  e = expect_error(with("[parallel]\nexpert_parallel = 2\n"));
  expect_located(e, 17, "parallel.expert_parallel");
  EXPECT_TRUE(contains(e.what(), "distributed dispatcher")) << e.what();
  read_deck_text(with("[parallel]\nexpert_parallel = 2\ndispatcher = \"mpi_alltoall\"\n"), kFile);
  // ... and be 1 for a dense model.
  e = expect_error(
      "[data]\ntrain = \"a\"\nvalid = \"b\"\n[train]\ntokens = 1\n[parallel]\nexpert_parallel = 2\n");
  expect_located(e, 7, "parallel.expert_parallel");

  // batch_tokens multiple of seq_len * micro_batch_size.
  e = expect_error(kBase + "batch_tokens = 1000\n");
  expect_located(e, 16, "train.batch_tokens");
  EXPECT_TRUE(contains(e.what(), "128 * 4 = 512")) << e.what();

  // eval_tokens >= seq_len.
  e = expect_error(kBase + "eval_tokens = 100\n");
  expect_located(e, 16, "train.eval_tokens");

  // warmup + decay <= 1.
  e = expect_error(kBase + "warmup_fraction = 0.5\ndecay_fraction = 0.6\n");
  expect_located(e, 17, "train.decay_fraction");
}

TEST(DeckErrors, RequiredKeys) {
  // Missing data.train: no line.
  DeckError e = expect_error("[data]\nvalid = \"b\"\n[train]\ntokens = 1\n");
  expect_located(e, 0, "data.train");
  EXPECT_TRUE(contains(e.what(), "missing required key")) << e.what();
  EXPECT_EQ(std::string(e.what()).rfind("deck.toml: [data] train: ", 0), 0u) << e.what();
  e = expect_error("[data]\ntrain = \"b\"\n[train]\ntokens = 1\n");
  expect_located(e, 0, "data.valid");

  // Neither tokens nor compute.
  e = expect_error("[data]\ntrain = \"a\"\nvalid = \"b\"\n");
  expect_located(e, 0, "train.tokens");
  EXPECT_TRUE(contains(e.what(), "train.compute")) << e.what();
  // Both.
  e = expect_error(kBase + "compute = 1e18\n");
  expect_located(e, 16, "train.compute");
  EXPECT_TRUE(contains(e.what(), "exactly one")) << e.what();

  // [moe] present without its required keys.
  e = expect_error(
      "[data]\ntrain = \"a\"\nvalid = \"b\"\n[moe]\nnum_experts = 4\nd_expert = 8\n"
      "[train]\ntokens = 1\n");
  expect_located(e, 0, "moe.num_active_experts");
  // An empty [moe] section still makes the model MoE.
  e = expect_error("[data]\ntrain = \"a\"\nvalid = \"b\"\n[moe]\n[train]\ntokens = 1\n");
  expect_located(e, 0, "moe.num_experts");
}

// 7. Duplicate keys and sections.
TEST(DeckErrors, DuplicateKeys) {
  DeckError e = expect_error(kBase + "tokens = 5\n");  // line 16, first on 14
  expect_located(e, 16, "train.tokens");
  EXPECT_TRUE(contains(e.what(), "duplicate key 'tokens' (first set on line 14)")) << e.what();

  e = expect_error(with("[model]\nn_layers = 2\n"));
  expect_located(e, 16, "model");
  EXPECT_TRUE(contains(e.what(), "duplicate section (first opened on line 4)")) << e.what();
}

TEST(DeckOverrides, AppliedAndValidated) {
  LoadedDeck d = read_deck_text(
      kBase, kFile,
      {"train.tokens=200000", "run.name=\"x\"", "train.lr = 1", "output.dir=runs/o",
       "train.lr_schedule=cosine", "moe.capacity_factor=1.25"});
  EXPECT_EQ(d.config.train.tokens, 200000u);
  EXPECT_EQ(d.config.run.name, "x");
  EXPECT_EQ(d.config.train.lr, 1.0);
  EXPECT_EQ(d.config.output.dir, "runs/o");  // bare word accepted for string keys
  EXPECT_EQ(d.config.train.lr_schedule, "cosine");
  EXPECT_EQ(d.config.moe.capacity_factor, 1.25);
  EXPECT_EQ(d.overridden_keys.count("train.tokens"), 1u);
  EXPECT_EQ(d.key_lines.at("train.tokens"), 14);  // the deck's line is kept
  // LoadedDeck::error names --set for an overridden key, the deck otherwise.
  EXPECT_STREQ(d.error("train.tokens", "bad").what(), "--set: [train] tokens: bad");
  EXPECT_STREQ(d.error("moe.d_expert", "bad").what(), "deck.toml:12: [moe] d_expert: bad");
  EXPECT_STREQ(d.error("model.vocab_size", "vocab mismatch").what(),
               "deck.toml: [model] vocab_size: vocab mismatch");

  // compute replaces the deck's tokens.
  d = read_deck_text(kBase, kFile, {"train.compute=1e19"});
  EXPECT_EQ(d.config.train.tokens, 0u);
  EXPECT_EQ(d.config.train.compute, 1e19);

  // Errors are reported with file "--set" and the key.
  DeckError e = expect_error(kBase, {"train.tokens=-5"});
  EXPECT_EQ(e.file, "--set");
  EXPECT_EQ(e.key, "train.tokens");
  EXPECT_EQ(std::string(e.what()).rfind("--set: [train] tokens: out of range", 0), 0u) << e.what();
  e = expect_error(kBase, {"train.tokenz=5"});
  EXPECT_TRUE(contains(e.what(), "--set: [train] tokenz: unknown key 'tokenz'; did you mean 'tokens'?"))
      << e.what();
  e = expect_error(kBase, {"train.lr=\"x\""});
  EXPECT_TRUE(contains(e.what(), "--set: [train] lr: wrong type")) << e.what();
  e = expect_error(kBase, {"train.lr=abc"});
  EXPECT_TRUE(contains(e.what(), "--set: [train] lr: 'abc' is not a valid TOML value")) << e.what();
  e = expect_error(kBase, {"train.lr_schedule=linear"});
  EXPECT_TRUE(contains(e.what(), "--set: [train] lr_schedule: invalid value")) << e.what();
  e = expect_error(kBase, {"nonsense"});
  EXPECT_EQ(e.file, "--set");
  e = expect_error(kBase, {"trian.lr=1"});
  EXPECT_TRUE(contains(e.what(), "did you mean [train]?")) << e.what();
  // A moe.* override turns a dense deck into a MoE, which then needs its keys.
  const std::string dense = "[data]\ntrain = \"a\"\nvalid = \"b\"\n[train]\ntokens = 10\n";
  e = expect_error(dense, {"moe.num_experts=4"});
  EXPECT_EQ(e.key, "moe.num_active_experts");
  d = read_deck_text(dense, kFile,
                     {"moe.num_experts=4", "moe.num_active_experts=1", "moe.d_expert=8"});
  EXPECT_TRUE(d.config.moe.enabled);
  // Cross-key rules see the overridden values and blame the --set key.
  e = expect_error(kBase, {"model.n_heads=3"});
  EXPECT_EQ(std::string(e.what()).rfind("--set: [model] n_heads:", 0), 0u) << e.what();
}

// train.compute_budget: unset (0) by default and then absent from the resolved
// deck; when given it must be > 0, is kept, and does not set the run length.
TEST(DeckComputeBudget, ValidatedRecordedAndRoundTripped) {
  const RunConfig a = read_deck_text(kBase, kFile).config;
  EXPECT_EQ(a.train.compute_budget, 0.0);
  EXPECT_FALSE(contains(resolved_deck_toml(a), "compute_budget"));
  const RunConfig b = read_deck_text(kBase + "compute_budget = 1e12\n", kFile).config;
  EXPECT_EQ(b.train.compute_budget, 1e12);
  EXPECT_EQ(b.train.tokens, 100000u);  // the run length is still train.tokens
  const std::string r = resolved_deck_toml(b);
  EXPECT_TRUE(contains(r, "\ncompute_budget = ")) << r;
  EXPECT_EQ(read_deck_text(r, "resolved.toml").config.train.compute_budget, 1e12);
  for (const char* bad : {"0", "-1e12", "inf", "\"1e12\""}) {
    SCOPED_TRACE(bad);
    const DeckError e = expect_error(kBase + "compute_budget = " + bad + "\n");
    expect_located(e, 16, "train.compute_budget");
  }
}

TEST(DeckResolved, RoundTripIsIdentical) {
  const std::string text =
      "[run]\nname = \"we\\\"ird \\\\ name\\t \xC3\xA9\"\nseed = 9223372036854775807\n"
      "[data]\ntrain = \"a b/c.tok\"\nvalid = \"v.tok\"\n"
      "[model]\nvocab_size = 300\nd_model = 96\nn_layers = 3\nn_heads = 6\nn_kv_heads = 3\n"
      "d_ffn = 333\nseq_len = 64\nrope_theta = 500000\nnorm_eps = 1.2345678901234567e-6\n"
      "init_std = 0.1\n"
      "[moe]\nnum_experts = 6\nnum_active_experts = 3\nnum_shared_experts = 2\nd_expert = 40\n"
      "first_k_dense = 2\nrenormalize_topk = true\ncapacity_factor = 1.5\naux_loss_coef = 0.1\n"
      "z_loss_coef = 0\n"
      "[train]\ncompute = 3.3e19\nbatch_tokens = 1024\nmicro_batch_size = 2\nlr = 0.1\n"
      "lr_schedule = \"cosine\"\nwarmup_fraction = 0.3\ndecay_fraction = 0.7\n"
      "final_lr_fraction = 0\nweight_decay = 0.3\nbeta1 = 0.5\nbeta2 = 0.999\neps = 1e-12\n"
      "grad_clip = 0\nlog_interval = 3\neval_interval = 7\neval_tokens = 64\n"
      "divergence_factor = 10\n"
      "[parallel]\nworld_size = 6\nexpert_parallel = 3\ndispatcher = \"nccl\"\n"
      "[output]\ndir = \"out/dir\"\noverwrite = true\n";
  const RunConfig a = read_deck_text(text, kFile).config;
  const std::string resolved = resolved_deck_toml(a);
  const RunConfig b = read_deck_text(resolved, "resolved.toml").config;
  EXPECT_EQ(body(resolved_deck_toml(b)), body(resolved));
  EXPECT_EQ(b.run.name, "we\"ird \\ name\t \xC3\xA9");
  EXPECT_EQ(b.run.seed, a.run.seed);
  EXPECT_EQ(b.data.train_path, a.data.train_path);
  EXPECT_EQ(b.model.norm_eps, a.model.norm_eps);
  EXPECT_EQ(b.model.rope_theta, 500000.0);
  EXPECT_EQ(b.moe.enabled, true);
  EXPECT_EQ(b.moe.renormalize_topk, true);
  EXPECT_EQ(b.moe.first_k_dense, 2);
  EXPECT_EQ(b.moe.z_loss_coef, 0.0);
  EXPECT_EQ(b.train.compute, 3.3e19);
  EXPECT_EQ(b.train.tokens, 0u);
  EXPECT_EQ(b.train.eps, 1e-12);
  EXPECT_EQ(b.train.beta2, 0.999);
  EXPECT_EQ(b.train.divergence_factor, 10.0);
  EXPECT_EQ(b.parallel.world_size, 6);
  EXPECT_EQ(b.parallel.dispatcher, "nccl");
  EXPECT_EQ(b.output.overwrite, true);
}

TEST(DeckResolved, DenseRoundTripAndEveryKeyListed) {
  const RunConfig a =
      read_deck_text("[data]\ntrain = \"a\"\nvalid = \"b\"\n[train]\ntokens = 77\n", kFile).config;
  const std::string resolved = resolved_deck_toml(a);
  EXPECT_FALSE(contains(resolved, "\n[moe]"));
  const LoadedDeck b = read_deck_text(resolved, "resolved.toml");
  EXPECT_FALSE(b.config.moe.enabled);
  EXPECT_EQ(b.config.train.tokens, 77u);
  EXPECT_EQ(body(resolved_deck_toml(b.config)), body(resolved));
  // Every default key is present (tokens or compute: one of them).
  for (const char* k : {"name", "seed", "train", "valid", "tokenizer", "vocab_size", "rope_theta",
                        "lr_schedule", "divergence_factor", "world_size", "dispatcher", "dir",
                        "overwrite"}) {
    EXPECT_TRUE(contains(resolved, std::string("\n") + k + " = ")) << k;
  }
}

// Every key the reader knows (all appear in a resolved MoE deck with tokens,
// plus compute) is documented in doc/input-decks.md under its section.
TEST(DeckDoc, EveryKeyDocumented) {
  std::ifstream in(std::string(FULCRUM_SOURCE_DIR) + "/doc/input-decks.md");
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  // A deck gives one data source and one of tokens / compute: add the others.
  const std::string resolved = resolved_deck_toml(read_deck_text(kBase, kFile).config) +
                               "[train]\ncompute = 1.0\ncompute_budget = 1.0\n"
                               "[data]\nmanifest = \"m\"\n"
                               "weights = { a = 1.0 }\n";
  std::istringstream lines(resolved);
  std::string line, section;
  int keys = 0;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line;
      continue;
    }
    const std::string key = line.substr(0, line.find(' '));
    const auto sec_pos = doc.find("### " + section);
    ASSERT_NE(sec_pos, std::string::npos) << section;
    const auto next = doc.find("\n### ", sec_pos + 1);
    const auto key_pos = doc.find("| `" + key + "` |", sec_pos);
    EXPECT_TRUE(key_pos != std::string::npos && key_pos < next) << section << " " << key;
    ++keys;
  }
  EXPECT_EQ(keys, 58);  // every key of the reader
}

TEST(DeckNearestName, Basics) {
  const std::vector<std::string> c = {"n_heads", "n_kv_heads", "d_model", "seq_len"};
  EXPECT_EQ(nearest_name("n_head", c), "n_heads");
  EXPECT_EQ(nearest_name("N_HEADS", c), "n_heads");
  EXPECT_EQ(nearest_name("d_modle", c), "d_model");  // transposition
  EXPECT_EQ(nearest_name("seqlen", c), "seq_len");
  EXPECT_EQ(nearest_name("vocabulary", c), "");
  EXPECT_EQ(nearest_name("x", c), "");
  EXPECT_EQ(nearest_name("anything", {}), "");
}

TEST(DeckFiles, ShippedDecksLoad) {
  const std::string root = FULCRUM_SOURCE_DIR;
  for (const char* rel : {"input_decks/quickstart.toml", "input_decks/dense-quickstart.toml",
                          "input_decks/paper/ling-mini-beta.toml",
                          "input_decks/paper/dense-6.1b.toml", "input_decks/data-mixture.toml"}) {
    SCOPED_TRACE(rel);
    const std::string path = root + "/" + rel;
    LoadedDeck d;
    ASSERT_NO_THROW(d = read_deck(path)) << rel;
    EXPECT_EQ(d.config.deck_path, path);
    EXPECT_FALSE(d.config.deck_text.empty());
    // The resolved form of every shipped deck reads back identically.
    const std::string r = resolved_deck_toml(d.config);
    EXPECT_EQ(resolved_deck_toml(read_deck_text(r, path).config), r);  // same path
  }
  const RunConfig q = read_deck(root + "/input_decks/quickstart.toml").config;
  EXPECT_TRUE(q.moe.enabled);
  EXPECT_EQ(q.model.vocab_size, 257);
  EXPECT_EQ(q.moe.num_experts, 8);
  EXPECT_EQ(q.train.tokens, 3000000u);
  EXPECT_EQ(q.train.lr, 3e-3);
  EXPECT_EQ(q.output.dir, "runs/quickstart");
  EXPECT_EQ(q.data.train_path, "data/default/train.tok");
  const RunConfig dq = read_deck(root + "/input_decks/dense-quickstart.toml").config;
  EXPECT_FALSE(dq.moe.enabled);
  EXPECT_EQ(dq.model.d_ffn, 512);
  const RunConfig l = read_deck(root + "/input_decks/paper/ling-mini-beta.toml").config;
  EXPECT_EQ(l.model.n_layers, 20);
  EXPECT_EQ(l.model.d_model, 2048);
  EXPECT_EQ(l.model.d_ffn, 5120);
  EXPECT_EQ(l.moe.d_expert, 384);
  EXPECT_EQ(l.model.n_heads, 16);
  EXPECT_EQ(l.model.n_kv_heads, 4);
  EXPECT_EQ(l.moe.num_experts, 384);
  EXPECT_EQ(l.moe.num_active_experts, 12);
  EXPECT_EQ(l.moe.num_shared_experts, 1);
  EXPECT_EQ(l.moe.first_k_dense, 1);
  EXPECT_EQ(l.model.seq_len, 8192);
  EXPECT_EQ(l.model.vocab_size, 126464);
  const RunConfig d6 = read_deck(root + "/input_decks/paper/dense-6.1b.toml").config;
  EXPECT_FALSE(d6.moe.enabled);
  EXPECT_EQ(d6.model.n_layers, 28);
  EXPECT_EQ(d6.model.d_model, 4096);
  EXPECT_EQ(d6.model.d_ffn, 14336);
  EXPECT_EQ(d6.model.n_heads, 32);
  EXPECT_EQ(d6.model.n_kv_heads, 8);
  EXPECT_EQ(d6.model.seq_len, 4096);
  EXPECT_EQ(d6.model.vocab_size, 126464);
}

TEST(DeckFiles, OnDiskDeckErrorNamesPath) {
  const std::string path = ::testing::TempDir() + "fulcrum_deck_test_bad.toml";
  {
    std::ofstream out(path);
    out << "[data]\ntrain = \"a\"\nvalid = \"b\"\n[model]\nn_layers = 0\n[train]\ntokens = 1\n";
  }
  try {
    read_deck(path);
    ADD_FAILURE() << "expected a DeckError";
  } catch (const DeckError& e) {
    EXPECT_EQ(e.file, path);
    EXPECT_EQ(std::string(e.what()).rfind(path + ":5: [model] n_layers: out of range", 0), 0u)
        << e.what();
  }
  std::remove(path.c_str());
  // A missing file.
  try {
    read_deck(path);
    ADD_FAILURE() << "expected a DeckError";
  } catch (const DeckError& e) {
    EXPECT_EQ(e.file, path);
    EXPECT_TRUE(contains(e.what(), "cannot open")) << e.what();
  }
}

// ---------------------------------------------------------------------------
// Regressions for bugs found by the deck fuzz test (tests/fuzz).

// True if `s` is one printable line: no control characters, valid UTF-8.
bool printable_line(const std::string& s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c < 0x80) continue;
    std::size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    if (n == 0 || c > 0xf4 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += n - 1;
  }
  return true;
}

// Fuzz bug 1: binary literals beyond 64 bits wrapped silently (toml11 3.7).
TEST(DeckRegressions, BinaryIntegerOverflowIsRejected) {
  const std::string two64plus1 = "0b1" + std::string(63, '0') + "1";  // 2^64 + 1
  const std::string two63 = "0b1" + std::string(63, '0');             // 2^63
  for (const auto& [sec, key] : std::vector<std::pair<std::string, std::string>>{
           {"run", "seed"}, {"model", "d_ffn"}, {"train", "lr"}}) {
    for (const std::string& lit : {two64plus1, two63}) {
      const Edited d = edit(kBase, sec, key + " = " + lit);
      const DeckError e = expect_error(d.text);
      expect_located(e, d.line, sec + "." + key);
      EXPECT_TRUE(contains(e.what(), "does not fit in 64 bits")) << e.what();
    }
  }
  // Overflow with underscores, in every base.
  for (const std::string& lit :
       {std::string("9_223_372_036_854_775_808"), std::string("0x1_0000_0000_0000_0001"),
        std::string("0o2_000_000_000_000_000_000_001"), "0b" + std::string(65, '1'),
        std::string("-9_223_372_036_854_775_809")}) {
    const Edited d = edit(kBase, "run", "seed = " + lit);
    const DeckError e = expect_error(d.text);
    EXPECT_TRUE(contains(e.what(), "does not fit in 64 bits")) << lit << ": " << e.what();
  }
  // The largest literals that fit are read exactly.
  for (const std::string& lit :
       {"0b" + std::string(63, '1'), std::string("0x7fff_ffff_ffff_ffff"),
        std::string("0o777777777777777777777"), std::string("9_223_372_036_854_775_807")}) {
    const RunConfig c = read_deck_text(edit(kBase, "run", "seed = " + lit).text, kFile).config;
    EXPECT_EQ(c.run.seed, 9223372036854775807ULL) << lit;
  }
  EXPECT_EQ(read_deck_text(edit(kBase, "model", "d_ffn = 0b1_0000_0000").text, kFile).config.model.d_ffn,
            256);
  // INT64_MIN fits (then fails the range check, not the 64-bit check).
  const DeckError m = expect_error(edit(kBase, "run", "seed = -9223372036854775808").text);
  EXPECT_TRUE(contains(m.what(), "out of range")) << m.what();
  // The same check for --set.
  const DeckError s = expect_error(kBase, {"run.seed=" + two64plus1});
  EXPECT_EQ(s.file, "--set");
  EXPECT_TRUE(contains(s.what(), "does not fit in 64 bits")) << s.what();
}

// Fuzz bug 2: messages echoed newlines, CRs, control bytes and invalid UTF-8.
TEST(DeckRegressions, MessagesAreOneSanitisedLine) {
  // Quoted key with a newline, in a section and at top level.
  const DeckError k = expect_error(with("[output]\n\"a\\nb\" = 1\n"));
  EXPECT_EQ(k.line, 17) << k.what();
  EXPECT_EQ(k.key, "output.a\nb");  // the field keeps the key as written
  EXPECT_TRUE(contains(k.what(), "unknown key 'a\\nb'")) << k.what();
  EXPECT_TRUE(printable_line(k.what())) << k.what();
  const DeckError top = expect_error("\"a\\r\\nb\" = 1\n" + kBase);
  EXPECT_TRUE(contains(top.what(), "key 'a\\r\\nb' is outside any section")) << top.what();
  EXPECT_TRUE(printable_line(top.what())) << top.what();
  // Section name with a newline.
  const DeckError sec = expect_error(with("[\"a\\nb\"]\nx = 1\n"));
  EXPECT_EQ(sec.line, 16) << sec.what();
  EXPECT_TRUE(contains(sec.what(), "[a\\nb]: unknown section")) << sec.what();
  EXPECT_TRUE(printable_line(sec.what())) << sec.what();
  // Syntax error in a CRLF deck: the quoted line has no \r.
  const DeckError crlf = expect_error("[train]\r\nlr =\r\ntokens = 5\r\n");
  EXPECT_EQ(crlf.line, 2) << crlf.what();
  EXPECT_TRUE(contains(crlf.what(), "(in: lr =)")) << crlf.what();
  EXPECT_TRUE(printable_line(crlf.what())) << crlf.what();
  // Control bytes and invalid UTF-8 in a quoted line become \xNN.
  const DeckError bin = expect_error(with("[run]\nname = \x01\xff\xc3 x\n"));
  EXPECT_EQ(bin.line, 17) << bin.what();
  EXPECT_TRUE(printable_line(bin.what())) << bin.what();
  EXPECT_TRUE(contains(bin.what(), "\\x01\\xff\\xc3")) << bin.what();
  // A NUL byte in the deck.
  const DeckError nul = expect_error(with(std::string("[run]\nna\0me = 1\n", 17)));
  EXPECT_TRUE(printable_line(nul.what())) << nul.what();
  // Valid UTF-8 is kept as is.
  const DeckError utf = expect_error(with("[run]\n\"\xc3\xa9t\xc3\xa9\" = 1\n"));
  EXPECT_TRUE(contains(utf.what(), "unknown key '\xc3\xa9t\xc3\xa9'")) << utf.what();
  // Long keys and values are cut at 80 characters.
  const std::string longkey(300, 'k');
  const DeckError lk = expect_error(with("[run]\n" + longkey + " = 1\n"));
  EXPECT_TRUE(contains(lk.what(), "unknown key '" + std::string(77, 'k') + "...'")) << lk.what();
  EXPECT_FALSE(contains(lk.what(), std::string(81, 'k'))) << lk.what();
  EXPECT_LT(std::string(lk.what()).size(), 600u) << lk.what();
  const DeckError lv = expect_error(with("[train]\nlr_schedule = \"" + std::string(300, 'v') + "\"\n"));
  EXPECT_FALSE(contains(lv.what(), std::string(81, 'v'))) << lv.what();
  // --set text is sanitised as well.
  const DeckError so = expect_error(kBase, {"train.lr=\n1"});
  EXPECT_TRUE(printable_line(so.what())) << so.what();
  const DeckError sb = expect_error(kBase, {"nonsense\r\n"});
  EXPECT_TRUE(printable_line(sb.what())) << sb.what();
}

// Fuzz bug 3: deep nesting crashed toml11 (stack overflow), long dotted keys,
// huge arrays and huge keys took seconds. Rejected before parsing now.
TEST(DeckRegressions, PreParseLimits) {
  const auto nested = [](const std::string& open, const std::string& inner,
                         const std::string& close, int depth) {
    std::string s;
    for (int i = 0; i < depth; ++i) s += open;
    s += inner;
    for (int i = 0; i < depth; ++i) s += close;
    return s;
  };
  const auto expect_limit = [](const std::string& text, int line, const std::string& what) {
    const DeckError e = expect_error(text);
    EXPECT_EQ(e.file, kFile);
    EXPECT_EQ(e.line, line) << e.what();
    EXPECT_EQ(e.key, "") << e.what();
    EXPECT_TRUE(contains(e.what(), what)) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind(std::string(kFile) + ":" + std::to_string(line) + ": ", 0),
              0u)
        << e.what();
  };
  // Nesting: 32 levels pass the guard (x is then an unknown key), 33 do not.
  const DeckError ok32 = expect_error(with("[run]\nx = " + nested("[", "", "]", 32) + "\n"));
  EXPECT_TRUE(contains(ok32.what(), "unknown key 'x'")) << ok32.what();
  expect_limit(with("[run]\nx = " + nested("[", "", "]", 33) + "\n"), 17, "nested more than 32 deep");
  expect_limit(with("[run]\nx = " + nested("[", "", "]", 1000) + "\n"), 17, "nested more than 32");
  expect_limit(with("[run]\nx = " + nested("{a=", "1", "}", 1000) + "\n"), 17, "nested more than 32");
  // One bracket a line (no line is long): 10000 levels used to overflow the stack.
  expect_limit(with("[run]\nx = " + nested("[\n", "", "]\n", 10000)), 49, "nested more than 32");
  // A line of 10000 brackets is caught by the line length limit first.
  expect_limit(with("[run]\nx = " + nested("[", "", "]", 10000) + "\n"), 17, "line too long");
  expect_limit(with("[run]\nx = [\n" + nested("[{a=[", "1", "]}]", 11) + "\n]\n"), 18,
               "nested more than 32");
  // Brackets in strings and comments do not count.
  const DeckError str = expect_error(with("[run]\nname = \"" + std::string(100, '[') +
                                          "\" # " + std::string(100, '{') + "\nx = '''\n" +
                                          std::string(100, '[') + "\n'''\n"));
  EXPECT_TRUE(contains(str.what(), "unknown key 'x'")) << str.what();
  EXPECT_EQ(str.line, 18) << str.what();
  // Dotted keys / section names: 8 parts pass the guard, 9 do not.
  const DeckError ok8 = expect_error(with("[run]\na.b.c.d.e.f.g.h = 1\n"));
  EXPECT_TRUE(contains(ok8.what(), "unknown key 'a'")) << ok8.what();
  expect_limit(with("[run]\na.b.c.d.e.f.g.h.i = 1\n"), 17, "dotted key with more than 8 parts");
  expect_limit(with("[run.a.b.c.d.e.f.g.h]\n"), 16, "section name with more than 8 parts");
  expect_limit(with("[run]\nx = {a.b.c.d.e.f.g.h.i = 1}\n"), 17, "dotted key with more than 8");
  // Dots in quoted keys and in values do not count.
  const DeckError q = expect_error(with("[output]\n\"a.b.c.d.e.f.g.h.i\" = 1.5\n"));
  EXPECT_TRUE(contains(q.what(), "unknown key 'a.b.c.d.e.f.g.h.i'")) << q.what();
  // Size and line length.
  expect_limit(with("[run]\nx = [" + std::string(5000, '1') + "]\n"), 17, "line too long: 5006 bytes");
  std::string big = kBase;
  while (big.size() <= (1u << 20)) big += "# " + std::string(1000, 'c') + "\n";
  const DeckError b = expect_error(big);
  EXPECT_TRUE(contains(b.what(), "deck too large")) << b.what();
  EXPECT_GT(b.line, 15) << b.what();
  // The same guard protects --set values.
  const DeckError s = expect_error(kBase, {"run.name=" + nested("[", "", "]", 1000)});
  EXPECT_EQ(s.file, "--set");
  EXPECT_EQ(s.line, 0);
  EXPECT_TRUE(contains(s.what(), "nested more than 32")) << s.what();
}

// Fuzz bug 4: NUL and newlines inside names and paths.
TEST(DeckRegressions, ControlCharactersInNamesAndPaths) {
  for (const auto& [sec, key] : std::vector<std::pair<std::string, std::string>>{
           {"run", "name"}, {"data", "train"}, {"data", "valid"}, {"output", "dir"}}) {
    for (const std::string& value :
         {std::string("\"a\\u0000b\""), std::string("\"a\\nb\""), std::string("\"a\\r\""),
          std::string("\"\\u007f\""), std::string("\"\"\"\nx\ny\"\"\"")}) {
      const Edited d = edit(kBase, sec, key + " = " + value);
      const DeckError e = expect_error(d.text);
      expect_located(e, d.line, sec + "." + key);
      EXPECT_TRUE(contains(e.what(), "must not contain control characters")) << e.what();
      EXPECT_TRUE(printable_line(e.what())) << e.what();
    }
  }
  const DeckError s = expect_error(kBase, {"output.dir=\"a\\u0000b\""});
  EXPECT_EQ(s.file, "--set");
  EXPECT_TRUE(contains(s.what(), "must not contain control characters")) << s.what();
  // Tabs and non-ASCII text stay allowed.
  const RunConfig c =
      read_deck_text(edit(kBase, "run", "name = \"a\\tb \xc3\xa9\"").text, kFile).config;
  EXPECT_EQ(c.run.name, "a\tb \xc3\xa9");
}

}  // namespace
}  // namespace fulcrum

namespace fulcrum {
namespace {

// A mixture deck: a corpus manifest and group weights instead of token files.
const std::string kMix =
    "[data]\n"                                                      // 1
    "manifest = \"data/mix/manifest.toml\"\n"                       // 2
    "weights = { books = 0.4, reference = 0.2, code = 2 }\n"        // 3
    "[model]\n"                                                     // 4
    "seq_len = 128\n"                                               // 5
    "[train]\n"                                                     // 6
    "tokens = 100000\n"                                             // 7
    "micro_batch_size = 4\n";                                       // 8

// kMix with line 3 (weights) replaced.
std::string mix_weights(const std::string& weights_line) {
  return edit(kMix, "data", weights_line).text;
}

TEST(DeckMixture, ValidDeckLoads) {
  const LoadedDeck d = read_deck_text(kMix, kFile);
  const DataSection& data = d.config.data;
  EXPECT_EQ(data.manifest_path, "data/mix/manifest.toml");
  const std::map<std::string, double> want = {{"books", 0.4}, {"code", 2.0}, {"reference", 0.2}};
  EXPECT_EQ(data.weights, want);
  EXPECT_TRUE(data.train_path.empty());
  EXPECT_TRUE(data.valid_path.empty());
  EXPECT_EQ(d.key_lines.at("data.manifest"), 2);
  EXPECT_EQ(d.key_lines.at("data.weights"), 3);
  EXPECT_EQ(d.error("data.weights", "no group 'x'").what(),
            std::string("deck.toml:3: [data] weights: no group 'x'"));

  // Sub-table and dotted-key forms; tokenizer is accepted (and ignored).
  const std::string sub =
      "[data]\nmanifest = \"m.toml\"\ntokenizer = \"byte\"\n[data.weights]\nbooks = 1\ncode = 0\n"
      "[train]\ntokens = 1\n";
  const DataSection s = read_deck_text(sub, kFile).config.data;
  EXPECT_EQ(s.weights, (std::map<std::string, double>{{"books", 1.0}, {"code", 0.0}}));
  const std::string dotted =
      "[data]\nmanifest = \"m.toml\"\nweights.books = 0.5\nweights.\"odd name\" = 0.5\n"
      "[train]\ntokens = 1\n";
  EXPECT_EQ(read_deck_text(dotted, kFile).config.data.weights,
            (std::map<std::string, double>{{"books", 0.5}, {"odd name", 0.5}}));

  // 64 groups is the limit.
  std::string many = "weights = {";
  for (int i = 0; i < 64; ++i) many += (i ? ", g" : " g") + std::to_string(i) + " = 1";
  EXPECT_EQ(read_deck_text(mix_weights(many + " }"), kFile).config.data.weights.size(), 64u);
}

TEST(DeckMixture, WeightErrors) {
  const auto check = [](const std::string& weights_line, const std::string& part) {
    SCOPED_TRACE(weights_line);
    const DeckError e = expect_error(mix_weights(weights_line));
    expect_located(e, 3, "data.weights");
    EXPECT_TRUE(contains(e.what(), part)) << e.what();
  };
  check("weights = 1.0", "wrong type: expected a table of group = weight");
  check("weights = \"books\"", "wrong type");
  check("weights = [1, 2]", "wrong type");
  check("weights = {}", "no groups");
  check("weights = { a = 0, b = 0.0 }", "the weights sum to 0");
  check("weights = { a = -0.5 }", "weight of group 'a': out of range: -0.5; must be in [0, 1e+30]");
  check("weights = { a = 1, b = -1 }", "weight of group 'b': out of range: -1");
  check("weights = { a = nan }", "finite");
  check("weights = { a = inf }", "finite");
  check("weights = { a = 1e31 }", "out of range: 1e31");
  check("weights = { a = 99999999999999999999 }", "does not fit in 64 bits");
  check("weights = { a = \"0.5\" }", "weight of group 'a': wrong type: expected a number");
  check("weights = { a = true }", "wrong type");
  check("weights = { a = { b = 1 } }", "wrong type: expected a number (float or integer), got table");
  check("weights = { \"\" = 1 }", "group name must not be empty");
  check("weights = { \"a\\nb\" = 1 }", "must not contain control characters");
  check("weights = { \"a\\u0000b\" = 1 }", "must not contain control characters");
  check("weights = { " + std::string(65, 'x') + " = 1 }", "longer than 64 bytes");
  std::string many = "weights = {";
  for (int i = 0; i < 65; ++i) many += (i ? ", g" : " g") + std::to_string(i) + " = 1";
  check(many + " }", "too many groups: 65; at most 64");

  // Sub-table form: reported at the line of [data.weights].
  const DeckError e = expect_error(
      "[data]\nmanifest = \"m\"\n[data.weights]\na = -1\n[train]\ntokens = 1\n");
  EXPECT_EQ(e.key, "data.weights") << e.what();
  EXPECT_TRUE(contains(e.what(), "[data] weights: weight of group 'a'")) << e.what();
  // weights in another section.
  const DeckError w = expect_error(
      "[data]\nmanifest = \"m\"\n[train]\ntokens = 1\nweights = { a = 1 }\n");
  expect_located(w, 5, "train.weights");
  EXPECT_TRUE(contains(w.what(), "it belongs in [data]")) << w.what();
}

TEST(DeckMixture, ExactlyOneDataSource) {
  // Both sources: the error names the one given second.
  DeckError e = expect_error("[data]\ntrain = \"t\"\nvalid = \"v\"\nmanifest = \"m\"\n"
                             "weights = { a = 1 }\n[train]\ntokens = 1\n");
  expect_located(e, 4, "data.manifest");
  EXPECT_TRUE(contains(e.what(), "give exactly one data source")) << e.what();
  EXPECT_TRUE(contains(e.what(), "data.train is set on line 2")) << e.what();
  e = expect_error("[data]\nweights = { a = 1 }\nmanifest = \"m\"\nvalid = \"v\"\n"
                   "[train]\ntokens = 1\n");
  expect_located(e, 4, "data.valid");
  EXPECT_TRUE(contains(e.what(), "data.weights is set on line 2")) << e.what();
  // One key of each source is enough to be "both".
  e = expect_error("[data]\ntrain = \"t\"\nweights = { a = 1 }\n[train]\ntokens = 1\n");
  expect_located(e, 3, "data.weights");
  // --set counts as after the deck.
  e = expect_error(kMix, {"data.train=t.tok"});
  EXPECT_EQ(e.file, "--set");
  EXPECT_EQ(e.key, "data.train");
  EXPECT_TRUE(contains(e.what(), "data.manifest is set on line 2")) << e.what();
  e = expect_error(kBase, {"data.manifest=m.toml", "data.weights={a=1}"});
  EXPECT_EQ(e.file, "--set");
  EXPECT_EQ(e.key, "data.manifest");
  EXPECT_TRUE(contains(e.what(), "data.train is set on line 2")) << e.what();

  // manifest without weights, weights without manifest.
  e = expect_error("[data]\nmanifest = \"m\"\n[train]\ntokens = 1\n");
  expect_located(e, 0, "data.weights");
  EXPECT_TRUE(contains(e.what(), "missing required key (data.manifest is given")) << e.what();
  e = expect_error("[data]\nweights = { a = 1 }\n[train]\ntokens = 1\n");
  expect_located(e, 0, "data.manifest");
  EXPECT_TRUE(contains(e.what(), "missing required key (data.weights is given")) << e.what();

  // Neither: the message names both options.
  e = expect_error("[train]\ntokens = 1\n");
  expect_located(e, 0, "data.train");
  EXPECT_TRUE(contains(e.what(), "path of the training token file")) << e.what();
  EXPECT_TRUE(contains(e.what(), "data.manifest and data.weights")) << e.what();
  e = expect_error("[data]\ntrain = \"t\"\n[train]\ntokens = 1\n");
  expect_located(e, 0, "data.valid");
  EXPECT_TRUE(contains(e.what(), "data.manifest and data.weights")) << e.what();

  // manifest is a path: same rules as the other paths.
  e = expect_error(edit(kMix, "data", "manifest = \"\"").text);
  expect_located(e, 2, "data.manifest");
  e = expect_error(edit(kMix, "data", "manifest = 3").text);
  expect_located(e, 2, "data.manifest");
  e = expect_error(edit(kMix, "data", "manifest = \"a\\nb\"").text);
  EXPECT_TRUE(contains(e.what(), "control characters")) << e.what();
  e = expect_error(edit(kMix, "data", "manifest_path = \"m\"").text);
  EXPECT_TRUE(contains(e.what(), "did you mean 'manifest'?")) << e.what();
}

TEST(DeckMixture, Overrides) {
  const LoadedDeck d = read_deck_text(
      kMix, kFile, {"data.weights={books=1.0}", "data.manifest=other/manifest.toml"});
  EXPECT_EQ(d.config.data.weights, (std::map<std::string, double>{{"books", 1.0}}));
  EXPECT_EQ(d.config.data.manifest_path, "other/manifest.toml");
  EXPECT_TRUE(d.overridden_keys.count("data.weights"));
  EXPECT_EQ(std::string(d.error("data.weights", "x").what()), "--set: [data] weights: x");
  // Spaces inside the inline table (one shell argument).
  EXPECT_EQ(read_deck_text(kMix, kFile, {"data.weights = { a = 1, b = 3 }"}).config.data.weights,
            (std::map<std::string, double>{{"a", 1.0}, {"b", 3.0}}));
  DeckError e = expect_error(kMix, {"data.weights={books=-1}"});
  EXPECT_EQ(e.file, "--set");
  EXPECT_EQ(std::string(e.what()).rfind("--set: [data] weights: weight of group 'books'", 0), 0u)
      << e.what();
  e = expect_error(kMix, {"data.weights=books"});
  EXPECT_TRUE(contains(e.what(), "not a valid TOML value; expected a table")) << e.what();
  e = expect_error(kMix, {"data.weights=0.5"});
  EXPECT_TRUE(contains(e.what(), "wrong type")) << e.what();
}

TEST(DeckMixture, ResolvedRoundTrip) {
  const auto round_trip = [](const std::string& deck) {
    const RunConfig c = read_deck_text(deck, kFile).config;
    const std::string r = resolved_deck_toml(c);
    const RunConfig back = read_deck_text(r, kFile).config;
    EXPECT_EQ(resolved_deck_toml(back), r);
    EXPECT_EQ(back.data.manifest_path, c.data.manifest_path);
    EXPECT_EQ(back.data.weights, c.data.weights);
    EXPECT_EQ(back.data.train_path, c.data.train_path);
    EXPECT_EQ(back.data.tokenizer, c.data.tokenizer);
    return r;
  };
  std::string r = round_trip(kMix);
  EXPECT_TRUE(contains(r, "\n[data]\ntokenizer = \"byte\"  # ignored: the manifest names the "
                          "tokenizer\nmanifest = \"data/mix/manifest.toml\"\n"
                          "weights = { books = 0.4, code = 2.0, reference = 0.2 }\n\n[model]\n"))
      << r;
  EXPECT_FALSE(contains(r, "train = ")) << r;
  EXPECT_FALSE(contains(r, "valid = ")) << r;

  // Token-file decks write no manifest / weights.
  r = round_trip(kBase);
  EXPECT_FALSE(contains(r, "manifest")) << r;
  EXPECT_FALSE(contains(r, "weights")) << r;

  // Sorted by name; names that are not bare keys are quoted; shortest round-trip floats.
  r = round_trip(mix_weights(
      "weights = { \"odd name\" = 0.1, 'q\"uote' = 1e-7, \"\xc3\xa9t\xc3\xa9\" = 3, b = 0 }"));
  EXPECT_TRUE(contains(r, "weights = { b = 0.0, \"odd name\" = 0.1, \"q\\\"uote\" = 1e-07, "
                          "\"\xc3\xa9t\xc3\xa9\" = 3.0 }\n"))
      << r;

  // Too long for one line: written as a [data.weights] sub-table.
  std::string many = "[data]\nmanifest = \"m\"\n[data.weights]\n";
  for (int i = 0; i < 64; ++i) {
    many += std::string(60, 'g') + std::to_string(100 + i) + " = 0.123456789\n";
  }
  r = round_trip(many + "[train]\ntokens = 1\n");
  EXPECT_TRUE(contains(r, "\n[data.weights]\n")) << r;
  EXPECT_EQ(read_deck_text(r, kFile).config.data.weights.size(), 64u);

  // The shipped mixture deck.
  const std::string path = std::string(FULCRUM_SOURCE_DIR) + "/input_decks/data-mixture.toml";
  const LoadedDeck shipped = read_deck(path);
  EXPECT_EQ(shipped.config.data.manifest_path, "data/mix-small/manifest.toml");
  EXPECT_EQ(shipped.config.data.weights,
            (std::map<std::string, double>{
                {"books", 0.4}, {"code", 0.2}, {"reference", 0.2}, {"technical", 0.2}}));
  EXPECT_EQ(shipped.config.model.vocab_size, 4096);
}

}  // namespace
}  // namespace fulcrum

// ---------------------------------------------------------------------------
// The deck schema (deck_schema.hpp) and the round trip of every shipped deck.
namespace fulcrum {
namespace {

// Every schema key of two configs, as the resolved deck writes them.
void expect_same_config(const RunConfig& a, const RunConfig& b) {
  for (const auto& k : deck_keys()) EXPECT_EQ(toml_value_text(k, k.get(a)), toml_value_text(k, k.get(b))) << k.dotted();
  EXPECT_EQ(a.moe.enabled, b.moe.enabled);
}

TEST(DeckSchema, AllowedValuesComeFromTheRegistries) {
  EXPECT_EQ(find_deck_key("train.lr_schedule")->allowed, lr_schedule_names());
  EXPECT_EQ(find_deck_key("train.precision")->allowed, precision_names());
  std::vector<std::string> backends = gemm_backend_names();
  backends.insert(backends.begin(), "auto");
  EXPECT_EQ(find_deck_key("train.gemm_backend")->allowed, backends);
  EXPECT_EQ(find_deck_key("parallel.dispatcher")->allowed, known_token_dispatcher_names());
  EXPECT_EQ(find_deck_key("moe.score_function")->allowed, score_function_names());
  EXPECT_EQ(find_deck_key("moe.balance_loss_scope")->allowed, balance_loss_scope_names());
  // A value outside the registry is refused, listing the registry's names.
  const DeckError e = expect_error(edit(kBase, "train", "lr_schedule = \"linear\"").text);
  EXPECT_TRUE(contains(e.what(), "(valid values: " + join_names(lr_schedule_names()) + ")")) << e.what();
}

TEST(DeckSchema, DefaultsAreThoseOfARunConfigAndValid) {
  const RunConfig defaults;
  for (const auto& k : deck_keys()) {
    SCOPED_TRACE(k.dotted());
    EXPECT_FALSE(k.doc.empty());
    ASSERT_TRUE(k.get && k.set);
    // Keys with a default (not required, not left out) take it from RunConfig and accept it.
    if (k.requirement.empty() && k.written_at_default) {
      EXPECT_EQ(k.value_error(k.get(defaults)), "");
    }
    // set(get(x)) is x.
    RunConfig c;
    k.set(c, k.get(defaults));
    EXPECT_EQ(toml_value_text(k, k.get(c)), toml_value_text(k, k.get(defaults)));
  }
  // Every key of a cross-key rule is a schema key; every rule holds for the quickstart.
  const RunConfig q = read_deck(std::string(FULCRUM_SOURCE_DIR) + "/input_decks/quickstart.toml").config;
  for (const auto& rule : cross_key_rules()) {
    for (const auto& key : rule.keys) EXPECT_NE(find_deck_key(key), nullptr) << key;
    EXPECT_TRUE(rule.holds(q)) << rule.doc;
  }
  EXPECT_EQ(first_broken_rule(q), nullptr);
}

// The trainer checks the rules again on its launched world size: the error
// names the key of the rule the deck gave, at its line.
TEST(DeckSchema, CrossKeyRulesForTheCaller) {
  const LoadedDeck d = read_deck_text(edit(kBase, "parallel", "expert_parallel = 2\ndispatcher = \"mpi_alltoall\"").text, kFile);
  RunConfig launched = d.config;
  launched.parallel.world_size = 3;
  try {
    check_cross_key_rules(d, launched);
    ADD_FAILURE() << "expected a DeckError";
  } catch (const DeckError& e) {
    EXPECT_STREQ(e.what(), "deck.toml:17: [parallel] expert_parallel: expert_parallel (2) must divide world_size (3)");
  }
  launched.parallel.world_size = 4;
  EXPECT_NO_THROW(check_cross_key_rules(d, launched));
}

// Every shipped run deck (input_decks/**, besides sweep, study, corpus and laws
// files) is read, written and read again to the same config.
TEST(DeckFiles, EveryShippedDeckRoundTrips) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(FULCRUM_SOURCE_DIR) / "input_decks";
  int run_decks = 0, others = 0;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file() || e.path().extension() != ".toml") continue;
    const std::string rel = fs::relative(e.path(), root).string();
    SCOPED_TRACE(rel);
    std::ifstream in(e.path());
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    const toml::value parsed = toml::parse(e.path().string());
    const bool corpus_spec = rel.rfind("data/", 0) == 0;
    const bool laws = rel.find("/laws/") != std::string::npos;
    if (parsed.contains("sweep") || parsed.contains("study") || corpus_spec || laws) {
      ++others;  // sweep decks: tests/sweep; study decks: tests/sweep/study_*.sh
      continue;
    }
    ++run_decks;
    LoadedDeck once, twice;
    ASSERT_NO_THROW(once = read_deck_text(text, rel));
    const std::string written = resolved_deck_toml(once.config);
    ASSERT_NO_THROW(twice = read_deck_text(written, rel));
    expect_same_config(twice.config, once.config);
    EXPECT_EQ(resolved_deck_toml(twice.config), written);
  }
  EXPECT_GE(run_decks, 5);
  EXPECT_GE(others, 8);
}

}  // namespace
}  // namespace fulcrum
