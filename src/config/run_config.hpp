// run_config.hpp: the resolved, validated content of one input deck.
//
// Deck (TOML) -> RunConfig (this struct, plain data, no Kokkos) -> model,
// trainer and run file. Every field here is bound to one deck key
// `[section] key` in the deck schema (src/deck/deck_schema.cpp), which gives
// its range, allowed values and doc (doc/input-decks.md is generated from it).
// Defaults below ARE the deck defaults: the reader starts from a
// default-constructed RunConfig and overwrites what the deck sets.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace fulcrum {

// [run]
struct RunSection {
  std::string name = "run";       // run id, used in the summary line
  std::uint64_t seed = 1234;      // seeds init, data sampling, everything
};

// [data]: either one token-file pair (train + valid) or a built corpus
// (manifest + weights per source group, doc/data.md); exactly one of the two.
struct DataSection {
  std::string train_path;         // token file (doc/data-format.md)
  std::string valid_path;         // token file
  std::string tokenizer = "byte"; // tokenizer registry name (tokenizer_names())
  std::string manifest_path;      // manifest.toml of `fulcrum-data build`
  std::map<std::string, double> weights;  // source group -> mixture weight (sum > 0)
};

// [model]
struct ModelSection {
  int vocab_size = 257;           // must equal the token files' vocab size
  int d_model = 256;
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 4;             // GQA: n_heads % n_kv_heads == 0
  int d_ffn = 1024;               // dense SwiGLU width (dense layers, first_k_dense)
  int seq_len = 256;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.006;
};

// [moe]; absent section => dense model (enabled = false)
struct MoeSection {
  bool enabled = false;
  int num_experts = 0;            // E, routed experts
  int num_active_experts = 0;     // E_a = top-k
  int num_shared_experts = 0;     // E_s, always active
  int d_expert = 0;               // width of every expert's SwiGLU
  int first_k_dense = 0;          // first layers use the dense SwiGLU (d_ffn)
  bool renormalize_topk = false;  // renormalise the top-k probabilities to 1
  double capacity_factor = 0.0;   // 0 = dropless; > 0 drops overflow tokens
  double aux_loss_coef = 0.01;    // load-balancing loss coefficient
  double z_loss_coef = 0.001;     // router z-loss coefficient
  // Routing (doc/model.md, "Routing options"); the defaults are the paper's recipe.
  std::string score_function = "softmax";        // router scores (score_function_names())
  double route_scale = 1.0;                      // combine weights x route_scale
  std::string balance_loss_scope = "micro_batch";  // balance_loss_scope_names()
  bool bias_balancing = false;    // aux-loss-free balancing: per-expert selection bias
  double bias_update_rate = 1e-3; // u: b_e += u * sign(mean load - load_e) per step
};

// [train]
struct TrainSection {
  // Run length: exactly one of tokens / compute is set in the deck.
  std::uint64_t tokens = 0;       // training tokens D
  double compute = 0.0;           // compute budget C in FLOPs; D = C / M
  double compute_budget = 0.0;    // the budget (FLOPs) this run belongs to in a study (IsoFLOP
                                  // ladder); 0 = unset. Recorded only; does not set the run length
  std::uint64_t batch_tokens = 8192;   // global batch in tokens per step
  int micro_batch_size = 4;       // sequences per micro-batch per rank
  double lr = 1e-3;               // peak learning rate
  std::string lr_schedule = "wsd";     // lr_schedule_names() (train/lr_schedule.hpp)
  double warmup_fraction = 0.01;  // of total steps, linear warm-up
  double decay_fraction = 0.1;    // of total steps, final decay phase (wsd)
  double final_lr_fraction = 0.1; // lr at the end / peak lr
  double weight_decay = 0.1;      // matrices only
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;         // global gradient-norm clip; 0 = off
  int log_interval = 10;          // steps between flushes / progress lines
  int eval_interval = 100;        // steps between validation evaluations
  std::uint64_t eval_tokens = 65536;   // held-out tokens per evaluation
  double divergence_factor = 3.0; // loss > factor * first loss => diverged
  int checkpoint_interval = 0;    // steps between checkpoints; 0 = only at the end and on SIGTERM/SIGUSR1
  std::string precision = "auto";     // matrix products: precision_names() (model/gemm.hpp)
  std::string gemm_backend = "auto";  // "auto" or gemm_backend_names() (model/gemm.hpp)
};

// [parallel]
struct ParallelSection {
  int world_size = 0;             // 0 = take from the launch; else must match
  int expert_parallel = 1;        // EP; DP = W / EP
  std::string dispatcher = "local";    // known_token_dispatcher_names()
};

// [output]
struct OutputSection {
  std::string dir = "runs/run";   // the run directory; run file is dir/run.h5
  bool overwrite = false;         // refuse to replace an existing run file
};

struct RunConfig {
  std::string deck_path;          // as given on the command line
  std::string deck_text;          // the deck file's text, verbatim
  RunSection run;
  DataSection data;
  ModelSection model;
  MoeSection moe;
  TrainSection train;
  ParallelSection parallel;
  OutputSection output;
};

}  // namespace fulcrum
