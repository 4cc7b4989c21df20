// deck_schema.cpp: the deck's keys and cross-key rules (deck_schema.hpp).
// Adding a key: one entry in deck_keys() (and the field in run_config.hpp);
// the reader, the writer, the docs (regenerate with fulcrum-deck-doc) and the
// fuzz test follow.
#include "deck/deck_schema.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <sstream>
#include <type_traits>

#include "data/corpus.hpp"                  // tokenizer registry
#include "deck/deck_messages.hpp"
#include "model/gemm.hpp"                   // gemm backends, precisions (header only)
#include "model/model_shape.hpp"            // router score functions, balance scopes (header only)
#include "model/token_dispatcher_names.hpp" // token dispatchers
#include "train/lr_schedule.hpp"            // lr schedules (header only)

namespace fulcrum {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr std::int64_t kIntMax = INT_MAX;
constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();

NumberRange closed(double lo, double hi) { return {lo, hi, false, false}; }
NumberRange open_closed(double lo, double hi) { return {lo, hi, true, false}; }
NumberRange closed_open(double lo, double hi) { return {lo, hi, false, true}; }
NumberRange open_open(double lo, double hi) { return {lo, hi, true, true}; }

// Number for messages and docs: integers without a trailing ".0".
std::string number_text(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) {
    return std::to_string(static_cast<long long>(d));
  }
  return shortest_double_text(d);
}

void assign(int& f, const KeyValue& v) { f = static_cast<int>(v.integer); }
void assign(std::uint64_t& f, const KeyValue& v) { f = static_cast<std::uint64_t>(v.integer); }
void assign(double& f, const KeyValue& v) { f = v.number; }
void assign(std::string& f, const KeyValue& v) { f = v.text; }
void assign(bool& f, const KeyValue& v) { f = v.boolean; }
void assign(std::map<std::string, double>& f, const KeyValue& v) { f = v.weights; }
void store(KeyValue& v, int f) { v.integer = f; }
void store(KeyValue& v, std::uint64_t f) { v.integer = static_cast<std::int64_t>(f); }
void store(KeyValue& v, double f) { v.number = f; }
void store(KeyValue& v, const std::string& f) { v.text = f; }
void store(KeyValue& v, bool f) { v.boolean = f; }
void store(KeyValue& v, const std::map<std::string, double>& f) { v.weights = f; }

// One key of the table: binds a RunConfig field and takes its type (and the
// full range of that type) from the field; the methods narrow it.
struct Key {
  KeySpec spec;

  template <class Section, class Field>
  Key(const char* section, const char* name, Section RunConfig::*sec, Field Section::*field,
      const char* doc) {
    spec.section = section;
    spec.name = name;
    spec.doc = doc;
    if constexpr (std::is_same_v<Field, int>) {
      spec.type = KeyType::Integer;
      spec.int_min = INT_MIN;
      spec.int_max = kIntMax;
    } else if constexpr (std::is_same_v<Field, std::uint64_t>) {
      spec.type = KeyType::Integer;
      spec.int_min = 0;
      spec.int_max = kI64Max;  // the reader's integers are signed 64-bit
    } else if constexpr (std::is_same_v<Field, double>) {
      spec.type = KeyType::Float;
    } else if constexpr (std::is_same_v<Field, std::string>) {
      spec.type = KeyType::String;
    } else if constexpr (std::is_same_v<Field, bool>) {
      spec.type = KeyType::Boolean;
    } else {
      static_assert(std::is_same_v<Field, std::map<std::string, double>>, "no deck type for this field");
      spec.type = KeyType::Weights;
    }
    spec.set = [sec, field](RunConfig& c, const KeyValue& v) { assign((c.*sec).*field, v); };
    const KeyType type = spec.type;
    spec.get = [sec, field, type](const RunConfig& c) {
      KeyValue v;
      v.type = type;
      store(v, (c.*sec).*field);
      return v;
    };
  }
  Key& ints(std::int64_t lo, std::int64_t hi) {
    spec.int_min = lo;
    spec.int_max = hi;
    return *this;
  }
  Key& at_least(std::int64_t lo) {
    spec.int_min = lo;
    return *this;
  }
  Key& floats(NumberRange r) {
    spec.range = r;
    return *this;
  }
  Key& or_zero() {
    spec.zero_allowed = true;
    return *this;
  }
  Key& one_of(std::vector<std::string> names) {
    spec.allowed = std::move(names);
    return *this;
  }
  Key& path(const char* field_name = "") {
    spec.is_path = true;
    spec.field = field_name;
    return *this;
  }
  Key& required(const char* when) {
    spec.requirement = when;
    return *this;
  }
  Key& omitted_at_default() {
    spec.written_at_default = false;
    return *this;
  }
};

std::vector<std::string> with_auto(std::vector<std::string> names) {
  names.insert(names.begin(), "auto");
  return names;
}

}  // namespace

const std::vector<std::string>& deck_sections() {
  static const std::vector<std::string> names = {"run", "data", "model", "moe", "train", "parallel", "output"};
  return names;
}

const std::vector<KeySpec>& deck_keys() {
  static const std::vector<KeySpec> table = [] {
    using R = RunConfig;
    using Run = RunSection;
    using Data = DataSection;
    using Model = ModelSection;
    using Moe = MoeSection;
    using Train = TrainSection;
    using Par = ParallelSection;
    using Out = OutputSection;
    std::vector<KeySpec> t;
    const auto add = [&](const Key& k) { t.push_back(k.spec); };
    // [run]
    add(Key("run", "name", &R::run, &Run::name, "run id, used in the summary line"));
    add(Key("run", "seed", &R::run, &Run::seed, "seeds initialisation, data sampling, everything"));
    // [data]
    add(Key("data", "train", &R::data, &Data::train_path,
            "training token file (doc/data-format.md)")
            .path("train_path").required("required unless `manifest`"));
    add(Key("data", "valid", &R::data, &Data::valid_path, "validation token file")
            .path("valid_path").required("required unless `manifest`"));
    add(Key("data", "tokenizer", &R::data, &Data::tokenizer,
            "tokenizer registry name; ignored with `manifest` (the manifest names the tokenizer)")
            .one_of(tokenizer_names()));
    add(Key("data", "manifest", &R::data, &Data::manifest_path,
            "`manifest.toml` of a corpus built by `fulcrum-data build` (doc/data.md); instead of "
            "`train` / `valid`")
            .path("manifest_path").required("required with `weights`"));
    add(Key("data", "weights", &R::data, &Data::weights,
            "mixture weight of each source group of the manifest, e.g. `{ books = 0.4, code = 0.6 }`; "
            "see [Data mixture](#data-mixture)")
            .floats(closed(0.0, 1e30)).required("required with `manifest`"));
    // [model]
    add(Key("model", "vocab_size", &R::model, &Model::vocab_size,
            "vocabulary size; the trainer checks it equals the token files'").ints(2, 1 << 24));
    add(Key("model", "d_model", &R::model, &Model::d_model, "residual width").ints(2, 1 << 16));
    add(Key("model", "n_layers", &R::model, &Model::n_layers, "transformer blocks").ints(1, 1024));
    add(Key("model", "n_heads", &R::model, &Model::n_heads,
            "attention (query) heads; head dim `d_model / n_heads`").ints(1, 1024));
    add(Key("model", "n_kv_heads", &R::model, &Model::n_kv_heads, "key/value heads (GQA)").ints(1, 1024));
    add(Key("model", "d_ffn", &R::model, &Model::d_ffn,
            "dense SwiGLU width (every layer of a dense model; the first `first_k_dense` layers of a MoE)")
            .ints(1, 1 << 20));
    add(Key("model", "seq_len", &R::model, &Model::seq_len, "training sequence length").ints(2, 1 << 20));
    add(Key("model", "rope_theta", &R::model, &Model::rope_theta, "RoPE base").floats(open_closed(0.0, 1e12)));
    add(Key("model", "norm_eps", &R::model, &Model::norm_eps, "RMSNorm epsilon").floats(open_open(0.0, 1.0)));
    add(Key("model", "init_std", &R::model, &Model::init_std, "std of the normal weight initialisation")
            .floats(open_closed(0.0, 1.0)));
    // [moe]: its presence makes the model MoE
    add(Key("moe", "num_experts", &R::moe, &Moe::num_experts, "E, routed experts")
            .ints(1, 1 << 16).required("required"));
    add(Key("moe", "num_active_experts", &R::moe, &Moe::num_active_experts, "E_a, top-k")
            .ints(1, 1 << 16).required("required"));
    add(Key("moe", "num_shared_experts", &R::moe, &Moe::num_shared_experts, "E_s, always-active experts")
            .ints(0, 1 << 16));
    add(Key("moe", "d_expert", &R::moe, &Moe::d_expert, "SwiGLU width of every expert")
            .ints(1, 1 << 20).required("required"));
    add(Key("moe", "first_k_dense", &R::moe, &Moe::first_k_dense,
            "the first layers use the dense SwiGLU (`d_ffn`); at least one layer must be MoE").ints(0, 1023));
    add(Key("moe", "renormalize_topk", &R::moe, &Moe::renormalize_topk,
            "renormalise the top-k router probabilities to sum to 1"));
    add(Key("moe", "capacity_factor", &R::moe, &Moe::capacity_factor,
            "0 = dropless; otherwise per-expert capacity factor, overflow tokens dropped")
            .floats(closed(1.0, 1e3)).or_zero());
    add(Key("moe", "aux_loss_coef", &R::moe, &Moe::aux_loss_coef, "load-balancing loss coefficient")
            .floats(closed(0.0, 1.0)));
    add(Key("moe", "z_loss_coef", &R::moe, &Moe::z_loss_coef, "router z-loss coefficient")
            .floats(closed(0.0, 1.0)));
    add(Key("moe", "score_function", &R::moe, &Moe::score_function,
            "router scores: softmax over the E logits (the paper), or a sigmoid per expert (DeepSeek-V3, "
            "Ling 2.0); with `sigmoid` the top-k weights are always normalised to sum to 1")
            .one_of(score_function_names()));
    add(Key("moe", "route_scale", &R::moe, &Moe::route_scale,
            "the top-k combine weights are multiplied by it (Ling 2.0 uses 2.5 with sigmoid)")
            .floats(open_closed(0.0, 100.0)));
    add(Key("moe", "balance_loss_scope", &R::moe, &Moe::balance_loss_scope,
            "where the load-balancing loss counts tokens: per micro-batch (the paper), per sequence "
            "(averaged over sequences), or over the global batch (all ranks, the step's micro-batches so far)")
            .one_of(balance_loss_scope_names()));
    add(Key("moe", "bias_balancing", &R::moe, &Moe::bias_balancing,
            "aux-loss-free balancing: a per-expert bias added to the scores for the top-k choice only, moved "
            "after each optimizer step by `bias_update_rate` toward balance; usually with `aux_loss_coef = 0`"));
    add(Key("moe", "bias_update_rate", &R::moe, &Moe::bias_update_rate,
            "u in b_e += u * sign(mean load - load_e); ignored unless `bias_balancing = true`")
            .floats(open_closed(0.0, 1.0)));
    // [train]
    add(Key("train", "tokens", &R::train, &Train::tokens, "training tokens D")
            .at_least(1).required("one of `tokens` / `compute` required"));
    add(Key("train", "compute", &R::train, &Train::compute, "compute budget C in FLOPs; D = C / M")
            .floats(open_closed(0.0, 1e30)).required("one of `tokens` / `compute` required"));
    add(Key("train", "compute_budget", &R::train, &Train::compute_budget,
            "the compute budget (FLOPs) of the study this run belongs to (one budget of an IsoFLOP ladder): "
            "recorded in the run file and used by `fulcrum-fit` to group runs (doc/fit.md); does not set "
            "the run length; written to a resolved deck only when given")
            .floats(open_closed(0.0, 1e30)).omitted_at_default());
    add(Key("train", "batch_tokens", &R::train, &Train::batch_tokens, "global batch in tokens per step")
            .ints(1, std::int64_t{1} << 40));
    add(Key("train", "micro_batch_size", &R::train, &Train::micro_batch_size,
            "sequences per micro-batch per rank").ints(1, 1 << 16));
    add(Key("train", "lr", &R::train, &Train::lr, "peak learning rate").floats(open_closed(0.0, 1.0)));
    add(Key("train", "lr_schedule", &R::train, &Train::lr_schedule, "learning-rate schedule")
            .one_of(lr_schedule_names()));
    add(Key("train", "warmup_fraction", &R::train, &Train::warmup_fraction,
            "fraction of steps in linear warm-up").floats(closed(0.0, 1.0)));
    add(Key("train", "decay_fraction", &R::train, &Train::decay_fraction,
            "fraction of steps in the final decay (wsd)").floats(closed(0.0, 1.0)));
    add(Key("train", "final_lr_fraction", &R::train, &Train::final_lr_fraction, "final lr / peak lr")
            .floats(closed(0.0, 1.0)));
    add(Key("train", "weight_decay", &R::train, &Train::weight_decay, "AdamW weight decay (matrices only)")
            .floats(closed(0.0, 1.0)));
    add(Key("train", "beta1", &R::train, &Train::beta1, "AdamW beta1").floats(closed_open(0.0, 1.0)));
    add(Key("train", "beta2", &R::train, &Train::beta2, "AdamW beta2").floats(closed_open(0.0, 1.0)));
    add(Key("train", "eps", &R::train, &Train::eps, "AdamW epsilon").floats(open_open(0.0, 1.0)));
    add(Key("train", "grad_clip", &R::train, &Train::grad_clip, "global gradient-norm clip; 0 = off")
            .floats(closed(0.0, 1e6)));
    add(Key("train", "log_interval", &R::train, &Train::log_interval,
            "steps between flushes / progress lines").at_least(1));
    add(Key("train", "eval_interval", &R::train, &Train::eval_interval,
            "steps between validation evaluations").at_least(1));
    add(Key("train", "eval_tokens", &R::train, &Train::eval_tokens, "held-out tokens per evaluation")
            .ints(1, std::int64_t{1} << 40));
    add(Key("train", "divergence_factor", &R::train, &Train::divergence_factor,
            "loss > factor * first loss => run declared diverged").floats(open_closed(1.0, 1e6)));
    add(Key("train", "checkpoint_interval", &R::train, &Train::checkpoint_interval,
            "steps between checkpoints (`<output.dir>/checkpoint.h5`); 0 = only at the end and on "
            "SIGTERM/SIGUSR1 (doc/checkpoints.md)")
            .at_least(0));
    // resolved against the build and the machine by resolve_gemm() (gemm.hpp)
    add(Key("train", "precision", &R::train, &Train::precision,
            "matrix products (doc/model.md \"Mixed precision\"): `bf16` operands with fp32 accumulation, "
            "or `fp32`; `auto` = bf16 where the chosen backend has native bf16, else fp32; `bf16` on a "
            "machine without it is an error")
            .one_of(precision_names()));
    add(Key("train", "gemm_backend", &R::train, &Train::gemm_backend,
            "library for matrix products: `kokkos` (KokkosBlas, fp32 only), `onednn` (host builds with "
            "libdnnl-dev), `cublas` (CUDA builds); `auto` = cublas, else onednn, else kokkos; a backend "
            "not in this build is an error that lists the available ones")
            .one_of(with_auto(gemm_backend_names())));
    // [parallel]
    add(Key("parallel", "world_size", &R::parallel, &Par::world_size,
            "0 = take from the launch; else must match it").ints(0, 1 << 20));
    add(Key("parallel", "expert_parallel", &R::parallel, &Par::expert_parallel,
            "EP degree; DP = W / EP").ints(1, 1 << 16));
    add(Key("parallel", "dispatcher", &R::parallel, &Par::dispatcher,
            "token dispatcher between expert-parallel ranks (`nccl`: CUDA builds with NCCL)")
            .one_of(known_token_dispatcher_names()));
    // [output]
    add(Key("output", "dir", &R::output, &Out::dir, "the run directory; the run file is `dir/run.h5`").path());
    add(Key("output", "overwrite", &R::output, &Out::overwrite, "allow replacing an existing run file"));
    return t;
  }();
  return table;
}

const KeySpec* find_deck_key(const std::string& section, const std::string& name) {
  for (const auto& k : deck_keys()) {
    if (k.section == section && k.name == name) return &k;
  }
  return nullptr;
}

const KeySpec* find_deck_key(const std::string& dotted) {
  const auto dot = dotted.find('.');
  if (dot == std::string::npos) return nullptr;
  return find_deck_key(dotted.substr(0, dot), dotted.substr(dot + 1));
}

std::vector<std::string> deck_key_names(const std::string& section) {
  std::vector<std::string> out;
  for (const auto& k : deck_keys()) {
    if (k.section == section) out.push_back(k.name);
  }
  return out;
}

std::string KeySpec::range_text() const {
  if (type == KeyType::Integer) {
    if (int_max == kIntMax || int_max == kI64Max) return ">= " + std::to_string(int_min);
    return "in [" + std::to_string(int_min) + ", " + std::to_string(int_max) + "]";
  }
  const NumberRange& r = range;
  std::string text;
  if (std::isinf(r.hi)) {
    text = (r.lo_open ? "> " : ">= ") + number_text(r.lo);
  } else {
    text = std::string("in ") + (r.lo_open ? "(" : "[") + number_text(r.lo) + ", " + number_text(r.hi) +
           (r.hi_open ? ")" : "]");
  }
  return zero_allowed ? "0 or " + text : text;
}

std::string KeySpec::value_error(const KeyValue& v, const std::string& written) const {
  switch (type) {
    case KeyType::Integer:
      if (v.integer < int_min || v.integer > int_max) {
        return "out of range: " + std::to_string(v.integer) + "; must be " + range_text();
      }
      return "";
    case KeyType::Float: {
      // toml11 saturates huge literals (1e400): quote what was written.
      const std::string shown = written.empty() ? number_text(v.number) : written;
      if (!std::isfinite(v.number)) return "out of range: " + shown + "; must be finite and " + range_text();
      if (!(range.contains(v.number) || (zero_allowed && v.number == 0.0))) {
        return "out of range: " + shown + "; must be " + range_text();
      }
      return "";
    }
    case KeyType::String: {
      const std::string& s = v.text;
      if (allowed.empty()) {
        // Names and paths: no empty ones, no NUL (which would cut a path
        // short), no newlines or other control characters (tab excepted).
        if (s.empty()) return "must not be empty";
        for (const char ch : s) {
          const auto c = static_cast<unsigned char>(ch);
          if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return "must not contain control characters (got '" + excerpt(s) + "')";
          }
        }
        return "";
      }
      if (std::find(allowed.begin(), allowed.end(), s) != allowed.end()) return "";
      std::string msg = "invalid value '" + excerpt(s) + "'";
      const std::string near = nearest_name(s, allowed);
      if (!near.empty()) msg += "; did you mean '" + near + "'?";
      return msg + " (valid values: " + join_names(allowed) + ")";
    }
    case KeyType::Boolean: return "";
    case KeyType::Weights: {
      double sum = 0.0;
      for (const auto& [group, w] : v.weights) {
        const std::string err = weight_error(group, w);
        if (!err.empty()) return err;
        sum += w;
      }
      if (!(sum > 0.0)) {
        return v.weights.empty() ? "no groups; give at least one group with a weight > 0"
                                 : "the weights sum to 0; at least one group needs a weight > 0";
      }
      return "";
    }
  }
  return "";
}

std::string KeySpec::weight_error(const std::string& group, double w, const std::string& written) const {
  if (group.empty()) return "group name must not be empty";
  if (group.size() > kMaxGroupNameBytes) {
    return "group name '" + excerpt(group) + "' is longer than " + std::to_string(kMaxGroupNameBytes) + " bytes";
  }
  for (const char ch : group) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return "group name '" + excerpt(group) + "' must not contain control characters";
  }
  if (!(std::isfinite(w) && range.contains(w))) {
    return "weight of group '" + excerpt(group) + "': out of range: " +
           (written.empty() ? number_text(w) : written) + "; must be " + (std::isfinite(w) ? "" : "finite and ") +
           range_text();
  }
  return "";
}

// ---------------------------------------------------------------------------
// Cross-key rules, in the order they are checked.

const std::vector<CrossKeyRule>& cross_key_rules() {
  static const std::vector<CrossKeyRule> rules = [] {
    const auto s = [](long long x) { return std::to_string(x); };
    std::vector<CrossKeyRule> r;
    r.push_back({{"model.n_heads", "model.d_model"},
                 [](const RunConfig& c) { return c.model.d_model % c.model.n_heads == 0; },
                 [s](const RunConfig& c) {
                   return "d_model (" + s(c.model.d_model) + ") is not divisible by n_heads (" + s(c.model.n_heads) + ")";
                 },
                 "`d_model % n_heads == 0`"});
    r.push_back({{"model.n_heads", "model.d_model"},
                 [](const RunConfig& c) { return (c.model.d_model / c.model.n_heads) % 2 == 0; },
                 [s](const RunConfig& c) {
                   const auto& m = c.model;
                   return "head dimension d_model/n_heads = " + s(m.d_model) + "/" + s(m.n_heads) + " = " +
                          s(m.d_model / m.n_heads) + " must be even (RoPE rotates pairs)";
                 },
                 "`d_model / n_heads` even, for RoPE"});
    r.push_back({{"model.n_kv_heads", "model.n_heads"},
                 [](const RunConfig& c) {
                   return c.model.n_kv_heads <= c.model.n_heads && c.model.n_heads % c.model.n_kv_heads == 0;
                 },
                 [s](const RunConfig& c) {
                   return "n_heads (" + s(c.model.n_heads) + ") must be a multiple of n_kv_heads (" +
                          s(c.model.n_kv_heads) + ") for grouped-query attention";
                 },
                 "`n_heads % n_kv_heads == 0`"});
    r.push_back({{"moe.num_active_experts", "moe.num_experts"},
                 [](const RunConfig& c) { return !c.moe.enabled || c.moe.num_active_experts <= c.moe.num_experts; },
                 [s](const RunConfig& c) {
                   return "num_active_experts (" + s(c.moe.num_active_experts) + ") must not exceed num_experts (" +
                          s(c.moe.num_experts) + ")";
                 },
                 "MoE: `num_active_experts <= num_experts`"});
    r.push_back({{"moe.first_k_dense", "model.n_layers"},
                 [](const RunConfig& c) { return !c.moe.enabled || c.moe.first_k_dense < c.model.n_layers; },
                 [s](const RunConfig& c) {
                   return "first_k_dense (" + s(c.moe.first_k_dense) + ") must be less than n_layers (" +
                          s(c.model.n_layers) + "): at least one layer must be MoE";
                 },
                 "MoE: `first_k_dense < n_layers` (at least one MoE layer)"});
    r.push_back({{"parallel.expert_parallel"},
                 [](const RunConfig& c) { return c.moe.enabled || c.parallel.expert_parallel == 1; },
                 [s](const RunConfig& c) {
                   return "must be 1 for a dense model (no [moe] section), got " + s(c.parallel.expert_parallel);
                 },
                 "`expert_parallel` is 1 for a dense model"});
    r.push_back({{"parallel.expert_parallel", "moe.num_experts"},
                 [](const RunConfig& c) { return !c.moe.enabled || c.moe.num_experts % c.parallel.expert_parallel == 0; },
                 [s](const RunConfig& c) {
                   return "expert_parallel (" + s(c.parallel.expert_parallel) + ") must divide num_experts (" +
                          s(c.moe.num_experts) + ")";
                 },
                 "MoE: `expert_parallel` divides `num_experts`"});
    r.push_back({{"parallel.expert_parallel", "parallel.world_size"},
                 [](const RunConfig& c) {
                   return c.parallel.world_size == 0 || c.parallel.world_size % c.parallel.expert_parallel == 0;
                 },
                 [s](const RunConfig& c) {
                   return "expert_parallel (" + s(c.parallel.expert_parallel) + ") must divide world_size (" +
                          s(c.parallel.world_size) + ")";
                 },
                 "`expert_parallel` divides `world_size` when that is > 0 (the trainer checks the launched ranks)"});
    r.push_back({{"parallel.expert_parallel", "parallel.dispatcher"},
                 [](const RunConfig& c) { return c.parallel.expert_parallel == 1 || c.parallel.dispatcher != "local"; },
                 [s](const RunConfig& c) {
                   return "expert_parallel (" + s(c.parallel.expert_parallel) +
                          ") > 1 needs a distributed dispatcher (mpi_alltoall or nccl); "
                          "dispatcher 'local' keeps every expert on one rank";
                 },
                 "`expert_parallel > 1` needs a distributed dispatcher (not `local`)"});
    r.push_back({{"train.batch_tokens", "train.micro_batch_size", "model.seq_len"},
                 [](const RunConfig& c) {
                   const auto unit = static_cast<std::uint64_t>(c.model.seq_len) *
                                     static_cast<std::uint64_t>(c.train.micro_batch_size);
                   return c.train.batch_tokens % unit == 0;
                 },
                 [s](const RunConfig& c) {
                   const auto unit = static_cast<std::uint64_t>(c.model.seq_len) *
                                     static_cast<std::uint64_t>(c.train.micro_batch_size);
                   return "batch_tokens (" + std::to_string(c.train.batch_tokens) +
                          ") must be a multiple of seq_len * micro_batch_size = " + s(c.model.seq_len) + " * " +
                          s(c.train.micro_batch_size) + " = " + std::to_string(unit);
                 },
                 "`batch_tokens % (seq_len * micro_batch_size) == 0`"});
    r.push_back({{"train.eval_tokens", "model.seq_len"},
                 [](const RunConfig& c) { return c.train.eval_tokens >= static_cast<std::uint64_t>(c.model.seq_len); },
                 [s](const RunConfig& c) {
                   return "eval_tokens (" + std::to_string(c.train.eval_tokens) + ") must be at least seq_len (" +
                          s(c.model.seq_len) + ")";
                 },
                 "`eval_tokens >= seq_len`"});
    r.push_back({{"train.decay_fraction", "train.warmup_fraction"},
                 [](const RunConfig& c) { return c.train.warmup_fraction + c.train.decay_fraction <= 1.0; },
                 [](const RunConfig& c) {
                   return "warmup_fraction + decay_fraction = " + number_text(c.train.warmup_fraction) + " + " +
                          number_text(c.train.decay_fraction) + " exceeds 1";
                 },
                 "`warmup_fraction + decay_fraction <= 1` (checked for both schedules)"});
    return r;
  }();
  return rules;
}

const CrossKeyRule* first_broken_rule(const RunConfig& config) {
  for (const auto& rule : cross_key_rules()) {
    if (!rule.holds(config)) return &rule;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------
// Docs

namespace {

const char* type_word(KeyType t) {
  switch (t) {
    case KeyType::Integer: return "integer";
    case KeyType::Float: return "float";
    case KeyType::String: return "string";
    case KeyType::Boolean: return "boolean";
    case KeyType::Weights: return "table";
  }
  return "";
}

std::string range_cell(const KeySpec& k) {
  switch (k.type) {
    case KeyType::Boolean: return "";
    case KeyType::String: {
      if (k.allowed.empty()) return "non-empty, no control characters";
      std::string out;
      for (const auto& a : k.allowed) out += (out.empty() ? "`" : ", `") + a + "`";
      return out;
    }
    case KeyType::Weights:
      return "group = number " + k.range_text() + ", sum > 0; 1-" + std::to_string(kMaxWeightGroups) +
             " groups, names of 1-" + std::to_string(kMaxGroupNameBytes) + " bytes";
    default: {
      std::string r = k.range_text();
      if (r.rfind("in ", 0) == 0) r = r.substr(3);
      return r;
    }
  }
}

std::string default_cell(const KeySpec& k, const RunConfig& defaults) {
  if (!k.requirement.empty()) return k.requirement;
  const KeyValue v = k.get(defaults);
  if (!k.written_at_default) return "unset (" + toml_value_text(k, v) + ")";
  return "`" + toml_value_text(k, v) + "`";
}

}  // namespace

std::string deck_keys_markdown() {
  std::ostringstream o;
  const RunConfig defaults;
  o << "Generated from the deck schema (`src/deck/deck_schema.cpp`); defaults are those of a\n"
       "default-constructed `RunConfig`, allowed values those of the registries that\n"
       "implement them. Ranges are inclusive unless written with `(` / `)`.\n";
  for (const auto& sec : deck_sections()) {
    o << "\n### [" << sec << "]" << (sec == "moe" ? " (its presence makes the model MoE)" : "") << "\n\n";
    o << "| key | type | default | range | meaning |\n|---|---|---|---|---|\n";
    for (const auto& k : deck_keys()) {
      if (k.section != sec) continue;
      std::string meaning = k.doc;
      if (!k.field.empty()) meaning += "; field `" + k.field + "`";
      if (k.is_path) meaning += "; a path";
      o << "| `" << k.name << "` | " << type_word(k.type) << " | " << default_cell(k, defaults) << " | "
        << range_cell(k) << " | " << meaning << " |\n";
    }
  }
  o << "\n### Cross-key rules\n\n"
       "Checked after all keys and overrides are applied, after the required keys, in\n"
       "this order; the error names the first key of the rule that the deck (or a\n"
       "`--set`) gave, else the first key.\n\n"
       "| # | rule | keys |\n|---|---|---|\n";
  int n = 0;
  for (const auto& rule : cross_key_rules()) {
    std::string keys;
    for (const auto& k : rule.keys) keys += (keys.empty() ? "`" : ", `") + k + "`";
    o << "| " << ++n << " | " << rule.doc << " | " << keys << " |\n";
  }
  return o.str();
}

}  // namespace fulcrum
