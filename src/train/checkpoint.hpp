// checkpoint.hpp: restartable training state in HDF5 (doc/checkpoints.md).
//
// A checkpoint holds every parameter and both AdamW moments as FULL tensors
// (expert shards gathered), so it can be loaded at any expert-parallel
// layout; plus the step, the optimizer step count, the trainer's running
// state (losses for the summary and the divergence test, routing
// accumulators) and a fingerprint of the deck. The data loader and the
// initialisation are pure functions of (seed, step, row), so the step is the
// whole data-loader and RNG state. Files are written atomically (temporary
// file, fsync, rename) with a checksum verified on load.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/expert_parallel.hpp"
#include "model/transformer.hpp"
#include "train/adamw.hpp"

namespace fulcrum {

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TrainerState {
  std::int64_t step = 0;           // optimizer steps completed
  std::int64_t optimizer_steps = 0;
  double tokens_seen = 0;
  double first_loss = 0;           // reference for the divergence test
  double last_val_loss = 0;
  std::vector<double> logged_lm;   // per-step lm loss (summary smoothing)
  std::vector<double> routing;     // per MoE layer: E assignments, dropped, routed, entropy_sum, token_count; then each layer's margin_sum
  std::vector<double> router_bias; // per MoE layer: E selection biases; empty without bias balancing
  std::string fingerprint;         // deck without [parallel]/[output]: must match on resume
};

inline std::string checkpoint_path(const std::string& run_dir) { return run_dir + "/checkpoint.h5"; }

// Collective over g.world. Rank 0 writes `path` atomically; throws
// CheckpointError on every rank if the write failed (the previous file is kept).
void save_checkpoint(const std::string& path, Transformer<float>& model, AdamW<float>& optimizer,
                     const TrainerState& state, const ParallelGroups& g);

// Collective. Verifies the checksum, then every rank loads its shard.
// Throws CheckpointError naming the path and the reason on every rank.
TrainerState load_checkpoint(const std::string& path, Transformer<float>& model, AdamW<float>& optimizer,
                             const ParallelGroups& g);

}  // namespace fulcrum
