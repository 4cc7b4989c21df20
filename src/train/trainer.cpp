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
#include "model/kokkos_memory.hpp"
#include "model/transformer.hpp"
#include "train/adamw.hpp"
#include "train/checkpoint.hpp"
#include "train/data_loader.hpp"
#include "train/lr_schedule.hpp"
#include "train/mpi_device_check.hpp"
#include "train/run_plan.hpp"
#include "train/step_device.hpp"
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
      moe->statistics_to_host();
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
      if (keep && i + a.assignments.size() + 4 <= in.size()) {
        for (auto& v : a.assignments) v = in[i++];
        a.dropped = in[i++];
        a.routed = in[i++];
        a.entropy_sum = in[i++];
        a.token_count = in[i++];
        if (margins) a.margin_sum = in[L * (E + 4) + layer];
        ++layer;
      }
      moe->statistics_to_device();
    }
}
using Real = float;  // the model trains in float; tests instantiate double

// Kokkos' memory is not the host's (a GPU build): the step loop then fences
// only where it must (see PhaseTimer).
constexpr bool kDeviceMemory = !Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;

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
  double seconds(const std::string& name) const {
    auto it = totals.find(name);
    return it == totals.end() ? 0.0 : it->second.first;
  }
  long calls(const std::string& name) const {
    auto it = totals.find(name);
    return it == totals.end() ? 0 : it->second.second;
  }
};

// Wall-clock time per phase of a step. On a timed step each phase boundary
// fences the device first, so a phase is charged with its own kernels and
// not with the launch of asynchronous ones. Host builds time every step (a
// fence costs nothing there); device builds time only the steps that end at
// a log step, where the loop waits for the device anyway, so the other steps
// run without host waits (/timers calls = timed steps).
class PhaseTimer {
 public:
  explicit PhaseTimer(bool timed) : timed_(timed) {
    if (timed_) Kokkos::fence();
    t_ = Clock::now();
  }
  // Charges the time since the previous boundary to `phase`.
  void lap(double& phase) {
    if (!timed_) return;
    Kokkos::fence();
    const auto now = Clock::now();
    phase += std::chrono::duration<double>(now - t_).count();
    t_ = now;
  }
  bool timed() const { return timed_; }

 private:
  bool timed_;
  Clock::time_point t_;
};

void write_config(RunFile& file, const RunConfig& c, const RunPlan& plan) {
  for (const auto& [key, value] : describe_run(c, plan)) {
    if (auto i = std::get_if<std::int64_t>(&value)) file.set_config(key, *i);
    else if (auto d = std::get_if<double>(&value)) file.set_config(key, *d);
    else file.set_config(key, std::get<std::string>(value));
  }
}

// Routing diagnostics since the last snapshot (call reduce_routing_statistics
// first); resets the accumulators.
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
    moe->reset_statistics();
  }
  return snap;
}

// Mean validation loss over the held-out rows, split evenly over the ranks
// (every rank runs the same number of forwards: the MoE exchange is
// collective). The sum stays in device memory until the end: one wait.
double evaluate(Transformer<Real>& model, const TrainingData& valid, std::uint64_t eval_tokens, int micro_batch,
                const ParallelGroups& groups) {
  const std::int64_t W = groups.world_size;
  const std::int64_t rows_per_rank = std::max<std::int64_t>(1, valid.eval_row_count(eval_tokens) / W);
  std::vector<int> inputs, targets;
  DeviceBuffer<double> sum_dev("eval::sum", 1);  // zeroed
  double* sum = sum_dev.data();
  const double* losses = model.device_losses().data();
  std::int64_t done = 0;
  model.set_routing_statistics(false);
  while (done < rows_per_rank) {
    const int n = static_cast<int>(std::min<std::int64_t>(micro_batch, rows_per_rank - done));
    valid.eval_rows(groups.world_rank * rows_per_rank + done, n, inputs, targets);
    model.set_batch(inputs, targets, n);
    model.forward_device();
    Kokkos::parallel_for("eval::accumulate", RangePolicy(0, 1), KOKKOS_LAMBDA(const int) { *sum += losses[0] * n; });
    done += n;
  }
  model.set_routing_statistics(true);
  double total = 0;
  Kokkos::deep_copy(Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(&total, 1),
                    sum_dev);
  MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_DOUBLE, MPI_SUM, groups.world);
  return total / static_cast<double>(rows_per_rank * W);
}

// Sums every MoE layer's routing accumulators over all ranks (collective).
void reduce_routing_statistics(Transformer<Real>& model, MPI_Comm world) {
  for (int l = 0; l < model.shape().n_layers; ++l) {
    MoeLayer<Real>* moe = model.moe_layer(l);
    if (!moe) continue;
    moe->statistics_to_host();
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


// Refuses (bad input, exit code 2) a multi-rank GPU run in which MPI would
// be handed device memory by an MPI that is not CUDA-aware: it would crash or
// sum garbage mid-run (doc/running.md, "CUDA build").
void check_mpi_device_memory(const LoadedDeck& deck, int world_size) {
  if (!kDeviceMemory || world_size <= 1) return;
  MpiDeviceUse use;
  use.device_memory = kDeviceMemory;
  use.nccl = GroupSums::uses_nccl();
  use.world_size = world_size;
  use.expert_parallel = deck.config.parallel.expert_parallel;
  use.dispatcher = deck.config.parallel.dispatcher;
  const std::string why = mpi_device_refusal(use, mpi_cuda_support());
  if (!why.empty()) throw deck.error("parallel.dispatcher", why);
}

// One training run on this rank: the model, its optimizer and data, the run
// file and the timers, driven step by step by train() below. A step leaves
// everything it computes in device memory (losses, gradient norm, clip
// scale, routing statistics); log() reads the steps since the previous log
// step at once. Every method is collective over the ranks of the run.
class TrainingSession {
 public:
  TrainingSession(const RunConfig& cfg, const RunPlan& plan, ParallelGroups& groups, TrainingData& data,
                  RunFile& file, ProgressPrinter& progress)
      : cfg_(cfg), plan_(plan), groups_(groups), data_(data), file_(file), progress_(progress),
        root_(groups.world_rank == 0), M_(plan.accounting.flops_per_token),
        fingerprint_(training_fingerprint(cfg)) {}

  // Builds the model and optimizer, then resumes from the checkpoint or
  // evaluates the untrained model (step 0).
  void start(bool resuming) {
    gemm_ = std::make_unique<ScopedGemm>(plan_.gemm);  // every float product of this run: backend and precision
    file_.set_root_attr("precision", std::string(precision_name(plan_.gemm.precision)));
    file_.set_root_attr("gemm_backend", plan_.gemm.backend);
    file_.set_root_attr("gemm_implementation", gemm_->backend().implementation());
    file_.set_root_attr("cpu_isa", host_cpu_isa());
    model_ = std::make_unique<Transformer<Real>>(plan_.shape, cfg_.train.micro_batch_size, cfg_.parallel.dispatcher,
                                                 groups_.ep, groups_.world);
    model_->init_parameters(cfg_.run.seed, cfg_.model.init_std);
    // bf16 backends keep one bf16 copy of the parameters, refreshed after
    // every change below (resume, optimizer step)
    gemm_->backend().set_weights(model_->params().data(), model_->num_parameters());
    optimizer_ = std::make_unique<AdamW<Real>>(
        model_->layout(), model_->num_parameters(),
        AdamWSettings{cfg_.train.beta1, cfg_.train.beta2, cfg_.train.eps, cfg_.train.weight_decay});
    sums_ = std::make_unique<GroupSums>(groups_);
    history_ = std::make_unique<StepHistory>(std::max(1, cfg_.train.log_interval));
    schedule_ = LrSchedule{cfg_.train.lr_schedule, cfg_.train.lr, plan_.steps_total, cfg_.train.warmup_fraction,
                           cfg_.train.decay_fraction, cfg_.train.final_lr_fraction};
    // each rank's loss is the mean over its micro-batches; the gradients are
    // summed over ranks, so scale by 1 / (accumulation x ranks)
    dloss_ = Real(1) / static_cast<Real>(plan_.grad_accum_steps * groups_.world_size);
    progress_.line("fulcrum-train " + std::string(FULCRUM_VERSION) + " run '" + cfg_.run.name + "': " +
                   std::to_string(plan_.steps_total) + " steps x " + std::to_string(cfg_.train.batch_tokens) +
                   " tokens, params_total " + std::to_string((long long)plan_.accounting.params_total) +
                   ", params_active " + std::to_string((long long)plan_.accounting.params_active) + ", M " +
                   format_config_value(M_) + " FLOPs/token, products in " + precision_name(plan_.gemm.precision) +
                   " (" + gemm_->backend().implementation() + ") -> " + file_.path());
    if (resuming) {
      const TrainerState st = load_checkpoint(checkpoint_path(cfg_.output.dir), *model_, *optimizer_, groups_);
      gemm_->backend().weights_changed();
      if (st.fingerprint != fingerprint_)
        throw CheckpointError("checkpoint '" + checkpoint_path(cfg_.output.dir) +
                              "' was written by a different deck (model or training keys differ); "
                              "resume with the original deck or start a new run");
      step_ = st.step;
      tokens_seen_ = st.tokens_seen;
      first_loss_ = st.first_loss;
      last_val_ = st.last_val_loss;
      logged_lm_ = st.logged_lm;
      unpack_routing(*model_, st.routing, root_);  // rank 0 carries the reduced sums
      model_->set_routing_bias(st.router_bias);    // every rank: the same bias
      file_.truncate_after_step(step_);
      file_.set_status("running");
      file_.set_root_attr("resumed_from_step", static_cast<std::int64_t>(step_));
      file_.flush();
      progress_.line("resumed from step " + std::to_string(step_) + " (" + checkpoint_path(cfg_.output.dir) + ")");
    } else {
      evaluate();  // step 0: the untrained model
    }
    window_start_ = Clock::now();
  }

  bool done() const { return step_ >= plan_.steps_total || status_ != "running" || exit_code_ != kExitCompleted; }
  bool log_due() const { return is_log_step(step_); }
  bool eval_due() const { return step_ % cfg_.train.eval_interval == 0 && step_ != plan_.steps_total; }
  bool checkpoint_due() const {
    return cfg_.train.checkpoint_interval > 0 && step_ % cfg_.train.checkpoint_interval == 0 &&
           step_ != plan_.steps_total;
  }

  // One optimizer step: forward and backward over this rank's micro-batches,
  // gradient all-reduce, norm, clip scale and AdamW, all enqueued without a
  // host wait (the MoE layers copy their split counts to the host: the
  // experts' products are sized by them).
  void step() {
    PhaseTimer clock(!kDeviceMemory || is_log_step(step_ + 1));
    const auto t_step = Clock::now();  // the step's own clock: the phases should cover it
    double t_data = 0, t_fwd = 0, t_bwd = 0, t_exchange = 0, t_opt = 0;
    const double lr = schedule_.at(step_);
    const double gemm_s0 = gemm_seconds();  // < 0: products not timed (CUDA)
    const int micro = cfg_.train.micro_batch_size, G = plan_.grad_accum_steps;
    const std::int64_t rows_per_rank = plan_.rows_per_step / groups_.world_size;
    model_->zero_grads();
    history_->begin_step();
    clock.lap(t_bwd);
    for (int m = 0; m < G; ++m) {
      data_.training_rows(cfg_.run.seed, step_, groups_.world_rank * rows_per_rank + static_cast<std::int64_t>(m) * micro,
                          micro, inputs_, targets_);
      model_->set_batch(inputs_, targets_, micro);
      clock.lap(t_data);
      model_->forward_device();
      history_->add_micro_batch(model_->device_losses(), G);
      clock.lap(t_fwd);
      model_->backward(dloss_);
      clock.lap(t_bwd);
    }
    gradients_.sum_over_ranks(*model_, groups_, *sums_);
    clock.lap(t_exchange);
    gradients_.norm_and_clip_scale(*model_, groups_, *sums_, cfg_.train.grad_clip);
    optimizer_->step_device(model_->params(), model_->grads(), lr, gradients_.norm_scale() + 1);
    history_->end_step(gradients_.norm_scale());
    if (plan_.shape.is_moe) model_->end_routing_step(groups_.world);  // bias balancing (collective), step counts cleared
    gemm_->backend().weights_changed();
    clock.lap(t_opt);
    if (clock.timed()) {
      timers_.add("data", t_data);
      timers_.add("forward", t_fwd);
      timers_.add("backward", t_bwd);
      timers_.add("exchange", t_exchange);
      timers_.add("optimizer", t_opt);
      if (gemm_s0 >= 0) timers_.add("matmul", gemm_seconds() - gemm_s0);  // inside forward/backward
    }
    ++step_;
    tokens_seen_ += static_cast<double>(cfg_.train.batch_tokens);
    window_tokens_ += static_cast<double>(cfg_.train.batch_tokens);
    // throughput over the logging window so far (in device builds the
    // host's pace; exact at log steps, which wait for the device)
    const double elapsed = seconds_since(window_start_);
    pending_.push_back({step_, tokens_seen_, lr, elapsed > 0 ? window_tokens_ / elapsed : 0});
    if (clock.timed()) timers_.add("step", seconds_since(t_step));
  }

  // Reads the steps since the previous log step (their train rows, progress,
  // divergence), the routing snapshot, and flushes the run file.
  void log() {
    const auto t0 = Clock::now();
    if (!write_pending_rows()) return;  // diverged
    if (plan_.shape.is_moe) {
      reduce_routing_statistics(*model_, groups_.world);
      auto snapshot = routing_snapshot(*model_, step_, static_cast<std::int64_t>(tokens_seen_));
      if (root_) file_.append_routing(snapshot);
    }
    file_.flush();
    timers_.add("io", seconds_since(t0));
    window_start_ = Clock::now();
    window_tokens_ = 0;
  }

  void evaluate() {
    const auto t0 = Clock::now();
    last_val_ = fulcrum::evaluate(*model_, data_, cfg_.train.eval_tokens, cfg_.train.micro_batch_size, groups_);
    timers_.add("eval", seconds_since(t0));
    file_.append_eval({step_, static_cast<std::int64_t>(tokens_seen_), tokens_seen_ * M_, last_val_});
  }

  // Every train row up to this step is on disk before the checkpoint names it.
  void checkpoint() {
    if (status_ == "diverged" || !write_pending_rows()) return;  // diverged: nothing worth resuming
    const auto t0 = Clock::now();
    file_.flush();
    TrainerState st;
    st.step = step_;
    st.optimizer_steps = optimizer_->steps_taken();
    st.tokens_seen = tokens_seen_;
    st.first_loss = first_loss_;
    st.last_val_loss = last_val_;
    st.logged_lm = logged_lm_;
    st.routing = pack_routing(*model_);
    // only with bias balancing: otherwise the checkpoint is the earlier versions' format
    if (plan_.shape.bias_balancing) st.router_bias = model_->routing_bias();
    st.fingerprint = fingerprint_;
    save_checkpoint(checkpoint_path(cfg_.output.dir), *model_, *optimizer_, st, groups_);
    timers_.add("checkpoint", seconds_since(t0));
  }

  // Pre-emption (SIGTERM/SIGUSR1): all ranks agree on stopping at this step boundary.
  bool stop_requested() {
    int stop = g_stop_requested ? 1 : 0;
    if (groups_.world_size > 1) MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, groups_.world);
    return stop && step_ != plan_.steps_total;
  }
  void preempt() {
    if (status_ != "running") return;
    checkpoint();
    if (status_ != "running") return;
    exit_code_ = kExitPreempted;
    progress_.line("stop signal: checkpoint written at step " + std::to_string(step_) +
                   "; resume with the same command (or --resume)");
  }

  // After the loop: the final evaluation and checkpoint of a completed run,
  // then what the run file keeps of the whole run.
  void complete() {
    if (status_ == "running" && exit_code_ != kExitPreempted) {
      write_pending_rows();
      if (status_ == "running") {
        evaluate();
        status_ = "completed";
        checkpoint();  // lets a finished run be continued or inspected
      }
    }
    // every kernel the run used (at the start only the trial product's was known)
    file_.set_root_attr("gemm_implementation", gemm_->backend().implementation());
    // per-rank token-exchange time and volume (all MoE layers)
    double a2a[2] = {0, 0};
    for (int l = 0; l < plan_.shape.n_layers; ++l)
      if (MoeLayer<Real>* moe = model_->moe_layer(l)) {
        a2a[0] += moe->dispatcher().exchange_seconds();
        a2a[1] += moe->dispatcher().exchange_bytes();
      }
    std::vector<double> all(2 * groups_.world_size);
    MPI_Gather(a2a, 2, MPI_DOUBLE, all.data(), 2, MPI_DOUBLE, 0, groups_.world);
    if (root_ && groups_.world_size > 1)
      for (int r = 0; r < groups_.world_size; ++r) {
        timers_.add("alltoall_rank" + std::to_string(r), all[2 * r]);
        file_.set_summary("alltoall_bytes_rank" + std::to_string(r), all[2 * r + 1]);
      }
  }

  void fail(const std::exception& e) {
    status_ = "failed";
    exit_code_ = kExitFailed;
    std::fprintf(stderr, "fulcrum-train: error on rank %d: %s\n", groups_.world_rank, e.what());
    // Peers may be blocked in a collective: abort the job rather than hang.
    // The run file then says running (or failed, if rank 0 got here first).
    if (groups_.world_size > 1) {
      if (root_) {
        try {
          file_.set_status("failed");
          file_.flush();
        } catch (...) {
        }
      }
      MPI_Abort(groups_.world, kExitFailed);
    }
  }

  // Releases the model and the process groups, writes /timers and /summary
  // (also for diverged and failed runs: what was reached) and prints the
  // summary line. Returns the exit code.
  int finish(Clock::time_point t_start) {
    history_.reset();
    sums_.reset();
    optimizer_.reset();
    model_.reset();
    gemm_.reset();
    groups_.free();
    // Peak resident memory of the largest rank (host memory; in CUDA builds
    // device memory is not included).
    double peak_rss = 0;
    {
      struct rusage ru {};
      getrusage(RUSAGE_SELF, &ru);
      peak_rss = static_cast<double>(ru.ru_maxrss) * 1024.0;  // Linux: KiB
      if (groups_.world_size > 1) MPI_Allreduce(MPI_IN_PLACE, &peak_rss, 1, MPI_DOUBLE, MPI_MAX, groups_.world);
    }
    // Peak bytes allocated through Kokkos by the largest rank (device memory
    // in CUDA builds): the measured counterpart of --describe's
    // memory_estimate_bytes. NaN when a Kokkos Tools library owns the callbacks.
    const KokkosMemoryUse kokkos_mem = kokkos_memory_use();
    double peak_kokkos = kokkos_mem.tracked ? static_cast<double>(kokkos_mem.peak) : std::nan("");
    if (groups_.world_size > 1) MPI_Allreduce(MPI_IN_PLACE, &peak_kokkos, 1, MPI_DOUBLE, MPI_MAX, groups_.world);
    const double wall = seconds_since(t_start);
    double final_train = std::nan("");
    if (!logged_lm_.empty()) {
      const std::size_t n = std::max<std::size_t>(1, logged_lm_.size() / 10);
      double s = 0;
      for (std::size_t i = logged_lm_.size() - n; i < logged_lm_.size(); ++i) s += logged_lm_[i];
      final_train = s / n;
    }
    // throughput of the timed steps (all steps in host builds)
    const double step_time = timers_.seconds("step");
    const double mean_tps =
        step_time > 0 ? static_cast<double>(cfg_.train.batch_tokens) * timers_.calls("step") / step_time : 0;
    // share of the training steps' time spent outside matrix products (host builds)
    const double nonmatrix_share =
        step_time > 0 && timers_.calls("matmul") > 0 ? 1.0 - timers_.seconds("matmul") / step_time : std::nan("");
    if (root_) try {
        for (const auto& [name, v] : timers_.totals) file_.set_timer(name, v.first, v.second);
        file_.set_summary("final_train_loss", final_train);
        file_.set_summary("final_val_loss", last_val_);
        file_.set_summary("tokens_seen", static_cast<std::int64_t>(tokens_seen_));
        file_.set_summary("flops_seen", tokens_seen_ * M_);
        file_.set_summary("wall_time_s", wall);
        file_.set_summary("steps_completed", static_cast<std::int64_t>(step_));
        file_.set_summary("tokens_per_second", mean_tps);
        file_.set_summary("model_flops_per_second", mean_tps * M_);
        file_.set_summary("nonmatrix_share", nonmatrix_share);
        file_.set_summary("peak_rss_bytes", peak_rss);
        file_.set_summary("peak_kokkos_bytes", peak_kokkos);
        if (exit_code_ != kExitPreempted) file_.set_root_attr("end_time", iso8601_utc_now());
        file_.set_status(status_);  // "running" after a pre-emption: the run is not over
        file_.flush();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "fulcrum-train: error: cannot finish run file: %s\n", e.what());
        if (exit_code_ == kExitCompleted) exit_code_ = kExitFailed;
      }
    // one line, greppable: the run's outcome and where its time went (per
    // step phase in seconds, rank 0; timed steps only in device builds)
    char summary[1536];
    std::snprintf(summary, sizeof summary,
                  "FULCRUM_SUMMARY run=%s status=%s steps=%lld tokens=%.0f final_train_loss=%.5f "
                  "final_val_loss=%.5f tokens_per_s=%.1f model_flops_per_s=%.4e nonmatrix_share=%.3f "
                  "peak_rss_mib=%.0f peak_kokkos_mib=%.0f wall_s=%.1f step_s=%.2f data_s=%.2f forward_s=%.2f backward_s=%.2f "
                  "exchange_s=%.2f optimizer_s=%.2f eval_s=%.2f io_s=%.2f checkpoint_s=%.2f file=%s",
                  cfg_.run.name.c_str(), status_.c_str(), (long long)step_, tokens_seen_, final_train, last_val_,
                  mean_tps, mean_tps * M_, nonmatrix_share, peak_rss / 1048576.0, peak_kokkos / 1048576.0, wall, step_time,
                  timers_.seconds("data"), timers_.seconds("forward"), timers_.seconds("backward"),
                  timers_.seconds("exchange"), timers_.seconds("optimizer"), timers_.seconds("eval"),
                  timers_.seconds("io"), timers_.seconds("checkpoint"), file_.path().c_str());
    progress_.line("");
    if (root_) {
      std::printf("%s\n", summary);
      std::fflush(stdout);
    }
    return exit_code_;
  }

 private:
  bool is_log_step(std::int64_t s) const {
    return s % cfg_.train.log_interval == 0 || s == plan_.steps_total;
  }

  // Appends the train rows of the steps since the last read (the loop's one
  // wait for the device), updates the progress line and checks for
  // divergence. Returns false when the run diverged: the rows end at the
  // diverged step, and so do the step and token counts.
  bool write_pending_rows() {
    const std::vector<StepHistory::Row> rows = history_->read(*sums_, groups_.world);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const StepHistory::Row& r = rows[i];
      const PendingStep& p = pending_[i];
      const double loss = r.lm + r.aux + r.z;  // ModelLosses::total()
      if (std::isnan(first_loss_)) first_loss_ = loss;
      logged_lm_.push_back(r.lm);
      file_.append_train({p.step, static_cast<std::int64_t>(p.tokens), p.tokens * M_, loss, r.lm, r.aux, r.z, p.lr,
                          r.grad_norm, p.tokens_per_second});
      const bool diverged = !std::isfinite(loss) || !std::isfinite(r.grad_norm) ||
                            loss > cfg_.train.divergence_factor * first_loss_;
      const double eta = p.tokens_per_second > 0
                             ? (plan_.steps_total - p.step) * cfg_.train.batch_tokens / p.tokens_per_second : 0;
      progress_.update(p.step, plan_.steps_total, p.tokens, loss, p.lr, p.tokens_per_second, eta,
                       is_log_step(p.step) || diverged);
      if (diverged) {
        status_ = "diverged";
        exit_code_ = kExitDiverged;
        step_ = p.step;  // the later steps' updates are not recorded
        tokens_seen_ = p.tokens;
        progress_.line("diverged at step " + std::to_string(p.step) + ": loss " + std::to_string(loss) +
                       " (first loss " + std::to_string(first_loss_) + ", divergence_factor " +
                       std::to_string(cfg_.train.divergence_factor) + ")");
        pending_.clear();
        return false;
      }
    }
    pending_.clear();
    return true;
  }

  struct PendingStep {
    std::int64_t step;
    double tokens, lr, tokens_per_second;
  };

  const RunConfig& cfg_;
  const RunPlan& plan_;
  ParallelGroups& groups_;
  TrainingData& data_;
  RunFile& file_;
  ProgressPrinter& progress_;
  const bool root_;
  const double M_;
  const std::string fingerprint_;
  // destroyed in reverse order: the gemm scope outlives the model
  std::unique_ptr<ScopedGemm> gemm_;
  std::unique_ptr<Transformer<Real>> model_;
  std::unique_ptr<AdamW<Real>> optimizer_;
  std::unique_ptr<GroupSums> sums_;
  std::unique_ptr<StepHistory> history_;
  GradientReduction<Real> gradients_;
  LrSchedule schedule_;
  Real dloss_ = 1;
  std::vector<int> inputs_, targets_;
  std::vector<PendingStep> pending_;
  Timers timers_;
  std::string status_ = "running";
  int exit_code_ = kExitCompleted;
  std::vector<double> logged_lm_;
  double last_val_ = std::nan("");
  double first_loss_ = std::nan("");
  std::int64_t step_ = 0;
  double tokens_seen_ = 0;
  Clock::time_point window_start_ = Clock::now();
  double window_tokens_ = 0;
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

// Opens the data (bad input, no output yet, if it cannot be used), then the
// run file (rank 0; the other ranks get a detached one) with the run's
// identity and /config. From here on the run file records the outcome.
RunFile open_run(const LoadedDeck& deck, const RunPlan& plan, const ParallelGroups& groups, bool resuming,
                 std::unique_ptr<TrainingData>& data) {
  const RunConfig& cfg = deck.config;
  const bool root = groups.world_rank == 0;
  const int world_size = groups.world_size;
  // Opening the data reads and checks every token (and, for a mixture, the
  // manifest, its checksums and the group names): still bad input, no output yet.
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

  return file;
}

int train(const LoadedDeck& deck, const TrainOptions& options, MPI_Comm world) {
  const RunConfig& cfg = deck.config;
  int world_size = 1;
  MPI_Comm_size(world, &world_size);
  const bool resuming = should_resume(cfg, options);
  check_run_inputs(deck, world_size, resuming);
  check_mpi_device_memory(deck, world_size);
  ParallelGroups groups = ParallelGroups::create(world, cfg.parallel.expert_parallel);
  const bool root = groups.world_rank == 0;
  RunPlan plan = make_run_plan(cfg, world_size);
  plan.shape.ep_size = groups.ep_size;
  plan.shape.ep_rank = groups.ep_rank;
  const auto t_start = Clock::now();
  ProgressPrinter progress(options.quiet || !root);
  track_kokkos_memory();  // this run's peak of Kokkos allocations (/summary/peak_kokkos_bytes)
  reset_kokkos_memory_peak();

  std::unique_ptr<TrainingData> data;
  RunFile file = open_run(deck, plan, groups, resuming, data);

  // The loop, as llm.c's: step, and at their intervals log, evaluate,
  // checkpoint; a stop signal checkpoints and ends the run (resumable).
  TrainingSession session(cfg, plan, groups, *data, file, progress);
  try {
    session.start(resuming);
    while (!session.done()) {
      session.step();                     // no host wait
      if (session.log_due()) session.log();  // reads the steps since the last log; may find a divergence
      if (session.done()) break;
      if (session.eval_due()) session.evaluate();
      if (session.checkpoint_due()) session.checkpoint();
      if (session.stop_requested()) session.preempt();
    }
    session.complete();
  } catch (const std::exception& e) {
    session.fail(e);
  }
  return session.finish(t_start);
}

}  // namespace fulcrum
