#include "train/trainer.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>

#include "data/token_file.hpp"
#include "fulcrum_version.hpp"
#include "io/run_file.hpp"
#include "model/transformer.hpp"
#include "train/adamw.hpp"
#include "train/checkpoint.hpp"
#include "train/data_loader.hpp"
#include "train/distributed.hpp"
#include "train/lr_schedule.hpp"
#include "train/run_plan.hpp"
#include "train/training_data.hpp"

namespace fulcrum {

namespace {

using Clock = std::chrono::steady_clock;

volatile std::sig_atomic_t g_stop_requested = 0;
extern "C" void request_stop(int) { g_stop_requested = 1; }

// Per MoE layer: E assignments, dropped, routed, entropy_sum, token_count;
// then every layer's margin_sum (appended after the blocks earlier versions
// wrote, so they still read what they know).
std::vector<double> pack_routing(Transformer<float>& model) {
  std::vector<double> out, margins;
  for (int l = 0; l < model.shape().n_layers; ++l)
    if (MoeLayer<float>* moe = model.moe_layer(l)) {
      const RoutingAccumulator& a = moe->stats;
      out.insert(out.end(), a.assignments.begin(), a.assignments.end());
      out.insert(out.end(), {a.dropped, a.routed, a.entropy_sum, a.token_count});
      margins.push_back(a.margin_sum);
    }
  out.insert(out.end(), margins.begin(), margins.end());
  return out;
}
void unpack_routing(Transformer<float>& model, const std::vector<double>& in, bool keep) {
  std::size_t i = 0, layer = 0;
  // checkpoints of earlier versions have no margins at the end
  const std::size_t L = static_cast<std::size_t>(model.shape().n_moe_layers());
  const std::size_t E = static_cast<std::size_t>(model.shape().num_experts);
  const bool margins = in.size() == L * (E + 4) + L;
  for (int l = 0; l < model.shape().n_layers; ++l)
    if (MoeLayer<float>* moe = model.moe_layer(l)) {
      RoutingAccumulator& a = moe->stats;
      a.reset(model.shape().num_experts);
      if (!keep || i + a.assignments.size() + 4 > in.size()) continue;
      for (auto& v : a.assignments) v = in[i++];
      a.dropped = in[i++];
      a.routed = in[i++];
      a.entropy_sum = in[i++];
      a.token_count = in[i++];
      if (margins) a.margin_sum = in[L * (E + 4) + layer];
      ++layer;
    }
}
using Real = float;  // the model trains in float; tests instantiate double

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}


// Named wall-clock accumulators, written to /timers at the end.
struct Timers {
  std::map<std::string, std::pair<double, long>> totals;
  void add(const std::string& name, double s) {
    auto& e = totals[name];
    e.first += s;
    e.second += 1;
  }
};

void write_config(RunFile& file, const RunConfig& c, const RunPlan& plan) {
  for (const auto& [key, value] : describe_run(c, plan)) {
    if (auto i = std::get_if<std::int64_t>(&value)) file.set_config(key, *i);
    else if (auto d = std::get_if<double>(&value)) file.set_config(key, *d);
    else file.set_config(key, std::get<std::string>(value));
  }
}

RunFile::RoutingSnapshot routing_snapshot(Transformer<Real>& model, std::int64_t step, std::int64_t tokens) {
  const ModelShape& s = model.shape();
  RunFile::RoutingSnapshot snap;
  snap.step = step;
  snap.tokens = tokens;
  snap.n_moe_layers = s.n_moe_layers();
  snap.n_experts = s.num_experts;
  for (int l = 0; l < s.n_layers; ++l) {
    MoeLayer<Real>* moe = model.moe_layer(l);
    if (!moe) continue;
    RoutingAccumulator& acc = moe->stats;
    double total = 0, mx = 0, mn = acc.assignments.empty() ? 0.0 : acc.assignments[0];
    for (double a : acc.assignments) {
      total += a;
      mx = std::max(mx, a);
      mn = std::min(mn, a);
    }
    for (double a : acc.assignments) snap.expert_share.push_back(total > 0 ? a / total : 0.0);
    snap.tokens_per_expert.insert(snap.tokens_per_expert.end(), acc.assignments.begin(), acc.assignments.end());
    const double mean = total / s.num_experts;
    snap.max_violation.push_back(mean > 0 ? mx / mean - 1.0 : 0.0);
    snap.min_load.push_back(mean > 0 ? mn / mean : 0.0);
    snap.topk_margin.push_back(acc.token_count > 0 ? acc.margin_sum / acc.token_count : 0.0);
    if (s.bias_balancing)
      snap.router_bias.insert(snap.router_bias.end(), moe->router().bias().begin(), moe->router().bias().end());
    snap.router_entropy.push_back(acc.token_count > 0 ? acc.entropy_sum / acc.token_count : 0.0);
    snap.dropped_fraction.push_back(acc.routed > 0 ? acc.dropped / acc.routed : 0.0);
    snap.moe_layer_index.push_back(l);
    acc.reset(s.num_experts);
  }
  return snap;
}

// Mean validation loss over the held-out rows, split evenly over the ranks
// (every rank runs the same number of forwards: the MoE exchange is collective).
double evaluate(Transformer<Real>& model, const TrainingData& valid, std::uint64_t eval_tokens, int micro_batch,
                const ParallelGroups& groups) {
  const std::int64_t W = groups.world_size;
  const std::int64_t rows_per_rank = std::max<std::int64_t>(1, valid.eval_row_count(eval_tokens) / W);
  std::vector<int> inputs, targets;
  double sum = 0;
  std::int64_t done = 0;
  model.set_routing_statistics(false);
  while (done < rows_per_rank) {
    const int n = static_cast<int>(std::min<std::int64_t>(micro_batch, rows_per_rank - done));
    valid.eval_rows(groups.world_rank * rows_per_rank + done, n, inputs, targets);
    model.set_batch(inputs, targets, n);
    sum += model.forward().lm * n;
    done += n;
  }
  model.set_routing_statistics(true);
  MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_DOUBLE, MPI_SUM, groups.world);
  return sum / static_cast<double>(rows_per_rank * W);
}

// Sums every MoE layer's routing accumulators over all ranks (collective).
void reduce_routing_statistics(Transformer<Real>& model, MPI_Comm world) {
  for (int l = 0; l < model.shape().n_layers; ++l) {
    MoeLayer<Real>* moe = model.moe_layer(l);
    if (!moe) continue;
    RoutingAccumulator& a = moe->stats;
    MPI_Allreduce(MPI_IN_PLACE, a.assignments.data(), (int)a.assignments.size(), MPI_DOUBLE, MPI_SUM, world);
    double s[5] = {a.dropped, a.routed, a.entropy_sum, a.token_count, a.margin_sum};
    MPI_Allreduce(MPI_IN_PLACE, s, 5, MPI_DOUBLE, MPI_SUM, world);
    a.dropped = s[0];
    a.routed = s[1];
    a.entropy_sum = s[2];
    a.token_count = s[3];
    a.margin_sum = s[4];
  }
}

class ProgressPrinter {
 public:
  // In-place (\r) updates only on an interactive terminal: MPI launchers give
  // ranks a pseudo-terminal even when the job's output goes to a file, so
  // under a launcher (or Slurm) plain lines are printed.
  explicit ProgressPrinter(bool quiet)
      : quiet_(quiet),
        tty_(isatty(fileno(stdout)) != 0 && !std::getenv("OMPI_COMM_WORLD_SIZE") && !std::getenv("PMI_SIZE") &&
             !std::getenv("PMIX_RANK") && !std::getenv("SLURM_JOB_ID")) {}
  void update(std::int64_t step, std::int64_t steps, double tokens, double loss, double lr, double tps,
              double eta_s, bool log_point) {
    if (quiet_) return;
    if (tty_) {
      std::printf("\rstep %6lld/%lld  tokens %.3e  loss %.4f  lr %.3e  %.0f tok/s  ETA %5.0fs   ",
                  (long long)step, (long long)steps, tokens, loss, lr, tps, eta_s);
      std::fflush(stdout);
    } else if (log_point) {
      std::printf("step %lld/%lld tokens %.6e loss %.5f lr %.4e tokens_per_s %.1f eta_s %.0f\n",
                  (long long)step, (long long)steps, tokens, loss, lr, tps, eta_s);
      std::fflush(stdout);
    }
  }
  void line(const std::string& text) {
    if (quiet_) return;
    if (tty_) std::printf("\n");
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
  }

 private:
  bool quiet_, tty_;
};

}  // namespace

void install_stop_signal_handlers() {
  std::signal(SIGTERM, request_stop);
  std::signal(SIGUSR1, request_stop);
}

bool should_resume(const RunConfig& c, const TrainOptions& options) {
  if (options.resume) return true;
  if (c.output.overwrite) return false;  // an explicit fresh start
  const std::string dir = c.output.dir;
  if (!std::filesystem::exists(checkpoint_path(dir)) || !std::filesystem::exists(dir + "/run.h5")) return false;
  try {
    return read_string_attr(dir + "/run.h5", "/", "status") != "completed";
  } catch (const std::exception&) {
    return false;
  }
}

void check_run_inputs(const LoadedDeck& deck, int world_size, bool resuming) {
  const RunConfig& c = deck.config;
  const int ep = c.parallel.expert_parallel;
  if (c.parallel.world_size > 0 && c.parallel.world_size != world_size)
    throw deck.error("parallel.world_size", "is " + std::to_string(c.parallel.world_size) +
                                                " but the job was launched with " + std::to_string(world_size) +
                                                " ranks");
  if (world_size % ep != 0)
    throw deck.error("parallel.expert_parallel", "is " + std::to_string(ep) + ", which does not divide the " +
                                                     std::to_string(world_size) + " launched ranks");
  {
    // The deck schema's cross-key rules (EP against num_experts, the world
    // size and the dispatcher), on the world size this job was launched with.
    RunConfig launched = c;
    launched.parallel.world_size = world_size;
    check_cross_key_rules(deck, launched);
  }
  {
    const auto valid = token_dispatcher_names();
    if (std::find(valid.begin(), valid.end(), c.parallel.dispatcher) == valid.end()) {
      std::string list;
      for (const auto& n : valid) list += (list.empty() ? "" : ", ") + n;
      throw deck.error("parallel.dispatcher", "'" + c.parallel.dispatcher + "' is not available in this build (valid: " +
                                                  list + ")");
    }
  }
  try {
    (void)resolve_gemm(c.train.gemm_backend, c.train.precision);
  } catch (const GemmConfigError& e) {
    throw deck.error(e.key, e.what());
  }
  const long rows = static_cast<long>(c.train.batch_tokens / c.model.seq_len);
  if (rows % (static_cast<long>(world_size) * c.train.micro_batch_size) != 0)
    throw deck.error("train.batch_tokens", "gives " + std::to_string(rows) + " sequences per step, not a " +
                                               "multiple of ranks x micro_batch_size = " +
                                               std::to_string(world_size) + " x " +
                                               std::to_string(c.train.micro_batch_size));
  std::vector<std::pair<std::string, std::string>> files;
  if (c.data.manifest_path.empty()) files = {{"data.train", c.data.train_path}, {"data.valid", c.data.valid_path}};
  for (const auto& [key, path] : files) {
    TokenFileHeader h;
    try {
      h = read_token_header(path);
    } catch (const DataError& e) {
      throw deck.error(key, std::string("cannot use token file: ") + e.what());
    }
    if (static_cast<int>(h.vocab_size) != c.model.vocab_size)
      throw deck.error("model.vocab_size", "is " + std::to_string(c.model.vocab_size) + " but " + key +
                                               " '" + path + "' has vocabulary size " +
                                               std::to_string(h.vocab_size));
    if (h.token_count < static_cast<std::uint64_t>(c.model.seq_len) + 2)
      throw deck.error(key, "'" + path + "' holds " + std::to_string(h.token_count) +
                                " tokens, fewer than seq_len + 2");
  }
  const std::string run_path = (std::filesystem::path(c.output.dir) / "run.h5").string();
  if (resuming) {
    const std::string ckpt = checkpoint_path(c.output.dir);
    if (!std::filesystem::exists(ckpt))
      throw deck.error("output.dir", "cannot resume: no checkpoint '" + ckpt + "'");
    if (!std::filesystem::exists(run_path))
      throw deck.error("output.dir", "cannot resume: no run file '" + run_path + "'");
    std::string stored;
    try {
      stored = read_string_attr(ckpt, "/", "fingerprint");
    } catch (const std::exception&) {
      return;  // unreadable: load_checkpoint reports it with the reason
    }
    if (stored != training_fingerprint(c))
      throw deck.error("output.dir", "holds checkpoint '" + ckpt + "' from a different deck (model, data or " +
                                         "training keys differ): use the original deck, or set " +
                                         "output.overwrite = true to start afresh");
    return;
  }
  if (std::filesystem::exists(run_path) && !c.output.overwrite)
    throw deck.error("output.dir", "run file '" + run_path +
                                       "' already exists (set output.overwrite = true to replace it)");
}

int train(const LoadedDeck& deck, const TrainOptions& options, MPI_Comm world) {
  const RunConfig& cfg = deck.config;
  int world_size = 1;
  MPI_Comm_size(world, &world_size);
  const bool resuming = should_resume(cfg, options);
  check_run_inputs(deck, world_size, resuming);
  ParallelGroups groups = ParallelGroups::create(world, cfg.parallel.expert_parallel);
  const bool root = groups.world_rank == 0;
  RunPlan plan = make_run_plan(cfg, world_size);
  plan.shape.ep_size = groups.ep_size;
  plan.shape.ep_rank = groups.ep_rank;
  const auto t_start = Clock::now();
  ProgressPrinter progress(options.quiet || !root);

  // Everything below may fail for reasons outside the deck; from here on the
  // run file exists (rank 0) and records the outcome.
  // Opening the data reads and checks every token (and, for a mixture, the
  // manifest, its checksums and the group names): still bad input, no output yet.
  std::unique_ptr<TrainingData> data;
  try {
    data = open_training_data(cfg.data, cfg.model.seq_len);
  } catch (const DataError& e) {
    const std::string what = e.what();
    const bool about_weights = what.find("group") != std::string::npos || what.find("weight") != std::string::npos;
    throw deck.error(cfg.data.manifest_path.empty() ? "data.train" : about_weights ? "data.weights" : "data.manifest",
                     what);
  }
  // (token-file pairs were checked, file by file, in check_run_inputs)
  if (!cfg.data.manifest_path.empty() && data->vocab_size() != cfg.model.vocab_size)
    throw deck.error("model.vocab_size", "is " + std::to_string(cfg.model.vocab_size) + " but the data (" +
                                             data->spec() + ") has vocabulary size " +
                                             std::to_string(data->vocab_size()));
  RunFile file = !root ? RunFile::detached()
                 : resuming ? RunFile::open_existing(cfg.output.dir + "/run.h5")
                            : RunFile::create(cfg.output.dir, cfg.output.overwrite);
  if (root && !resuming) {  // a fresh run must not pick up a stale checkpoint later
    std::error_code ec;
    std::filesystem::remove(checkpoint_path(cfg.output.dir), ec);
  }
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  file.set_root_attr("deck", resolved_deck_toml(cfg));
  file.set_root_attr("deck_path", cfg.deck_path);
  file.set_root_attr("deck_text", cfg.deck_text);
  file.set_root_attr("data_spec", data->spec());
  file.set_root_attr("data_checksum", data->checksum());
  file.set_root_attr("name", cfg.run.name);
  file.set_root_attr("seed", static_cast<std::int64_t>(cfg.run.seed));
  file.set_root_attr("version", std::string(FULCRUM_VERSION));
  file.set_root_attr("git_revision", std::string(FULCRUM_GIT_REVISION));
  if (!resuming) file.set_root_attr("start_time", iso8601_utc_now());
  file.set_root_attr("hostname", std::string(host));
  file.set_root_attr("world_size", std::int64_t(world_size));
  file.set_root_attr("expert_parallel", std::int64_t(groups.ep_size));
  write_config(file, cfg, plan);
  file.flush();

  std::string status = "running";
  int exit_code = kExitCompleted;
  Timers timers;
  std::vector<double> logged_lm;
  double last_val = std::nan("");
  std::int64_t step = 0;
  double tokens_seen = 0;
  double tokens_per_second = 0;
  const double M = plan.accounting.flops_per_token;
  try {
    ScopedGemm gemm(plan.gemm);  // every float product of this run: backend and precision
    file.set_root_attr("precision", std::string(precision_name(plan.gemm.precision)));
    file.set_root_attr("gemm_backend", plan.gemm.backend);
    file.set_root_attr("gemm_implementation", gemm.backend().implementation());
    file.set_root_attr("cpu_isa", host_cpu_isa());
    Transformer<Real> model(plan.shape, cfg.train.micro_batch_size, cfg.parallel.dispatcher, groups.ep, world);
    model.init_parameters(cfg.run.seed, cfg.model.init_std);
    // bf16 backends keep one bf16 copy of the parameters, refreshed after
    // every change below (resume, optimizer step)
    gemm.backend().set_weights(model.params().data(), model.num_parameters());
    AdamW<Real> optimizer(model.layout(), model.num_parameters(),
                          {cfg.train.beta1, cfg.train.beta2, cfg.train.eps, cfg.train.weight_decay});
    LrSchedule schedule{cfg.train.lr_schedule, cfg.train.lr, plan.steps_total, cfg.train.warmup_fraction,
                        cfg.train.decay_fraction, cfg.train.final_lr_fraction};
    progress.line("fulcrum-train " + std::string(FULCRUM_VERSION) + " run '" + cfg.run.name + "': " +
                  std::to_string(plan.steps_total) + " steps x " + std::to_string(cfg.train.batch_tokens) +
                  " tokens, params_total " + std::to_string((long long)plan.accounting.params_total) +
                  ", params_active " + std::to_string((long long)plan.accounting.params_active) +
                  ", M " + format_config_value(M) + " FLOPs/token, products in " +
                  precision_name(plan.gemm.precision) + " (" + gemm.backend().implementation() + ") -> " +
                  file.path());

    auto do_eval = [&]() {
      const auto t0 = Clock::now();
      last_val = evaluate(model, *data, cfg.train.eval_tokens, cfg.train.micro_batch_size, groups);
      timers.add("eval", seconds_since(t0));
      file.append_eval({step, static_cast<std::int64_t>(tokens_seen), tokens_seen * M, last_val});
    };
    double first_loss = std::nan("");
    const std::string fingerprint = training_fingerprint(cfg);
    auto make_state = [&]() {
      TrainerState st;
      st.step = step;
      st.optimizer_steps = optimizer.steps_taken();
      st.tokens_seen = tokens_seen;
      st.first_loss = first_loss;
      st.last_val_loss = last_val;
      st.logged_lm = logged_lm;
      st.routing = pack_routing(model);
      // only with bias balancing: otherwise the checkpoint is the earlier versions' format
      if (plan.shape.bias_balancing) st.router_bias = model.routing_bias();
      st.fingerprint = fingerprint;
      return st;
    };
    auto write_checkpoint = [&]() {
      const auto t1 = Clock::now();
      file.flush();  // every row up to this step is on disk before the checkpoint names it
      save_checkpoint(checkpoint_path(cfg.output.dir), model, optimizer, make_state(), groups);
      timers.add("checkpoint", seconds_since(t1));
    };
    if (resuming) {
      const TrainerState st = load_checkpoint(checkpoint_path(cfg.output.dir), model, optimizer, groups);
      gemm.backend().weights_changed();
      if (st.fingerprint != fingerprint)
        throw CheckpointError("checkpoint '" + checkpoint_path(cfg.output.dir) +
                              "' was written by a different deck (model or training keys differ); "
                              "resume with the original deck or start a new run");
      step = st.step;
      tokens_seen = st.tokens_seen;
      first_loss = st.first_loss;
      last_val = st.last_val_loss;
      logged_lm = st.logged_lm;
      unpack_routing(model, st.routing, root);  // rank 0 carries the reduced sums
      model.set_routing_bias(st.router_bias);   // every rank: the same bias
      file.truncate_after_step(step);
      file.set_status("running");
      file.set_root_attr("resumed_from_step", static_cast<std::int64_t>(step));
      file.flush();
      progress.line("resumed from step " + std::to_string(step) + " (" + checkpoint_path(cfg.output.dir) + ")");
    } else {
      do_eval();  // step 0: the untrained model
    }
    std::vector<int> inputs, targets;
    const int micro = cfg.train.micro_batch_size;
    // each rank's loss is the mean over its micro-batches; the gradients are
    // summed over ranks, so scale by 1 / (accumulation x ranks)
    const Real dloss = Real(1) / static_cast<Real>(plan.grad_accum_steps * world_size);
    const std::int64_t rows_per_rank = plan.rows_per_step / world_size;
    auto window_start = Clock::now();
    double window_tokens = 0;
    while (step < plan.steps_total) {
      const auto t_step = Clock::now();
      const double lr = schedule.at(step);
      const double gemm_s0 = gemm_seconds();  // < 0: products not timed (CUDA)
      model.zero_grads();
      ModelLosses mean;
      double t_data = 0, t_fwd = 0, t_bwd = 0;
      for (int m = 0; m < plan.grad_accum_steps; ++m) {
        auto t0 = Clock::now();
        data->training_rows(cfg.run.seed, step, groups.world_rank * rows_per_rank + static_cast<std::int64_t>(m) * micro,
                                 micro, inputs, targets);
        model.set_batch(inputs, targets, micro);
        t_data += seconds_since(t0);
        t0 = Clock::now();
        const ModelLosses l = model.forward();
        t_fwd += seconds_since(t0);
        t0 = Clock::now();
        model.backward(dloss);
        t_bwd += seconds_since(t0);
        mean.lm += l.lm / plan.grad_accum_steps;
        mean.aux += l.aux / plan.grad_accum_steps;
        mean.z += l.z / plan.grad_accum_steps;
      }
      auto t0 = Clock::now();
      if (world_size > 1) {
        double l3[3] = {mean.lm, mean.aux, mean.z};
        MPI_Allreduce(MPI_IN_PLACE, l3, 3, MPI_DOUBLE, MPI_SUM, world);
        mean.lm = l3[0] / world_size;
        mean.aux = l3[1] / world_size;
        mean.z = l3[2] / world_size;
      }
      const double grad_norm = reduce_gradients(model, groups);
      optimizer.step(model.params(), model.grads(), lr, AdamW<Real>::clip_scale(grad_norm, cfg.train.grad_clip));
      if (plan.shape.is_moe) model.end_routing_step(world);  // bias balancing (collective), step counts cleared
      gemm.backend().weights_changed();
      Kokkos::fence();
      timers.add("optimizer", seconds_since(t0));
      timers.add("data", t_data);
      timers.add("forward", t_fwd);
      timers.add("backward", t_bwd);
      timers.add("step", seconds_since(t_step));
      if (gemm_s0 >= 0) timers.add("matmul", gemm_seconds() - gemm_s0);  // inside forward/backward
      ++step;
      tokens_seen += static_cast<double>(cfg.train.batch_tokens);
      window_tokens += static_cast<double>(cfg.train.batch_tokens);
      const double loss = mean.total();
      if (std::isnan(first_loss)) first_loss = loss;
      logged_lm.push_back(mean.lm);
      const double elapsed = seconds_since(window_start);
      tokens_per_second = elapsed > 0 ? window_tokens / elapsed : 0;
      file.append_train({step, static_cast<std::int64_t>(tokens_seen), tokens_seen * M, loss, mean.lm, mean.aux,
                         mean.z, lr, grad_norm, tokens_per_second});
      const bool diverged = !std::isfinite(loss) || !std::isfinite(grad_norm) ||
                            loss > cfg.train.divergence_factor * first_loss;
      const bool log_point = step % cfg.train.log_interval == 0 || step == plan.steps_total || diverged;
      const double eta = tokens_per_second > 0 ? (plan.steps_total - step) * cfg.train.batch_tokens / tokens_per_second : 0;
      progress.update(step, plan.steps_total, tokens_seen, loss, lr, tokens_per_second, eta, log_point);
      if (diverged) {
        status = "diverged";
        exit_code = kExitDiverged;
        progress.line("diverged at step " + std::to_string(step) + ": loss " + std::to_string(loss) +
                      " (first loss " + std::to_string(first_loss) + ", divergence_factor " +
                      std::to_string(cfg.train.divergence_factor) + ")");
        break;
      }
      if (log_point) {
        if (plan.shape.is_moe) {
          reduce_routing_statistics(model, world);
          auto snapshot = routing_snapshot(model, step, static_cast<std::int64_t>(tokens_seen));
          if (root) file.append_routing(snapshot);
        }
        const auto t1 = Clock::now();
        file.flush();
        timers.add("io", seconds_since(t1));
        window_start = Clock::now();
        window_tokens = 0;
      }
      if (step % cfg.train.eval_interval == 0 && step != plan.steps_total) do_eval();
      if (cfg.train.checkpoint_interval > 0 && step % cfg.train.checkpoint_interval == 0 &&
          step != plan.steps_total)
        write_checkpoint();
      // pre-emption: all ranks agree on stopping at this step boundary
      int stop = g_stop_requested ? 1 : 0;
      if (world_size > 1) MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, world);
      if (stop && step != plan.steps_total) {
        write_checkpoint();
        exit_code = kExitPreempted;
        progress.line("stop signal: checkpoint written at step " + std::to_string(step) +
                      "; resume with the same command (or --resume)");
        break;
      }
    }
    if (status == "running" && exit_code != kExitPreempted) {
      do_eval();
      status = "completed";
      write_checkpoint();  // lets a finished run be continued or inspected
    }
    // every kernel the run used (at the start only the trial product's was known)
    file.set_root_attr("gemm_implementation", gemm.backend().implementation());
    // per-rank token-exchange time and volume (all MoE layers)
    double a2a[2] = {0, 0};
    for (int l = 0; l < plan.shape.n_layers; ++l)
      if (MoeLayer<Real>* moe = model.moe_layer(l)) {
        a2a[0] += moe->dispatcher().exchange_seconds();
        a2a[1] += moe->dispatcher().exchange_bytes();
      }
    std::vector<double> all(2 * world_size);
    MPI_Gather(a2a, 2, MPI_DOUBLE, all.data(), 2, MPI_DOUBLE, 0, world);
    if (root && world_size > 1)
      for (int r = 0; r < world_size; ++r) {
        timers.add("alltoall_rank" + std::to_string(r), all[2 * r]);
        file.set_summary("alltoall_bytes_rank" + std::to_string(r), all[2 * r + 1]);
      }
  } catch (const std::exception& e) {
    status = "failed";
    exit_code = kExitFailed;
    std::fprintf(stderr, "fulcrum-train: error on rank %d: %s\n", groups.world_rank, e.what());
    // Peers may be blocked in a collective: abort the job rather than hang.
    // The run file then says running (or failed, if rank 0 got here first).
    if (world_size > 1) {
      if (root) {
        try {
          file.set_status("failed");
          file.flush();
        } catch (...) {
        }
      }
      MPI_Abort(world, kExitFailed);
    }
  }
  groups.free();
  // Peak resident memory of the largest rank (host memory; in CUDA builds
  // device memory is not included).
  double peak_rss = 0;
  {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    peak_rss = static_cast<double>(ru.ru_maxrss) * 1024.0;  // Linux: KiB
    if (world_size > 1) MPI_Allreduce(MPI_IN_PLACE, &peak_rss, 1, MPI_DOUBLE, MPI_MAX, world);
  }

  // Summary (also for diverged/failed runs: what was reached).
  const double wall = seconds_since(t_start);
  double final_train = std::nan("");
  if (!logged_lm.empty()) {
    const std::size_t n = std::max<std::size_t>(1, logged_lm.size() / 10);
    double s = 0;
    for (std::size_t i = logged_lm.size() - n; i < logged_lm.size(); ++i) s += logged_lm[i];
    final_train = s / n;
  }
  const double step_time = timers.totals.count("step") ? timers.totals["step"].first : 0;
  const double mean_tps = step_time > 0 ? tokens_seen / step_time : 0;
  // share of the training steps' time spent outside matrix products (host builds)
  const double nonmatrix_share = step_time > 0 && timers.totals.count("matmul")
                                     ? 1.0 - timers.totals["matmul"].first / step_time
                                     : std::nan("");
  if (root) try {
    for (const auto& [name, v] : timers.totals) file.set_timer(name, v.first, v.second);
    file.set_summary("final_train_loss", final_train);
    file.set_summary("final_val_loss", last_val);
    file.set_summary("tokens_seen", static_cast<std::int64_t>(tokens_seen));
    file.set_summary("flops_seen", tokens_seen * M);
    file.set_summary("wall_time_s", wall);
    file.set_summary("steps_completed", static_cast<std::int64_t>(step));
    file.set_summary("tokens_per_second", mean_tps);
    file.set_summary("model_flops_per_second", mean_tps * M);
    file.set_summary("nonmatrix_share", nonmatrix_share);
    file.set_summary("peak_rss_bytes", peak_rss);
    if (exit_code != kExitPreempted) file.set_root_attr("end_time", iso8601_utc_now());
    file.set_status(status);  // "running" after a pre-emption: the run is not over
    file.flush();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fulcrum-train: error: cannot finish run file: %s\n", e.what());
    if (exit_code == kExitCompleted) exit_code = kExitFailed;
  }
  char summary[1024];
  std::snprintf(summary, sizeof summary,
                "FULCRUM_SUMMARY run=%s status=%s steps=%lld tokens=%.0f final_train_loss=%.5f "
                "final_val_loss=%.5f tokens_per_s=%.1f model_flops_per_s=%.4e nonmatrix_share=%.3f peak_rss_mib=%.0f "
                "wall_s=%.1f file=%s",
                cfg.run.name.c_str(), status.c_str(), (long long)step, tokens_seen, final_train, last_val,
                mean_tps, mean_tps * M, nonmatrix_share, peak_rss / 1048576.0, wall, file.path().c_str());
  progress.line("");
  if (root) {
    std::printf("%s\n", summary);
    std::fflush(stdout);
  }
  return exit_code;
}

}  // namespace fulcrum
