// trainer.hpp: runs one training job from a validated deck and writes its
// run file (doc/output-format.md). Exit codes are documented in
// doc/running.md: 0 completed, 1 failed, 2 bad input, 3 diverged.
#pragma once

#include <string>

#include "deck/deck_reader.hpp"
#include "model/expert_parallel.hpp"

namespace fulcrum {

enum ExitCode : int {
  kExitCompleted = 0,
  kExitFailed = 1,
  kExitBadInput = 2,
  kExitDiverged = 3,
  kExitPreempted = 4,  // SIGTERM/SIGUSR1: checkpoint written, run file says running; resume later
};

struct TrainOptions {
  bool quiet = false;   // no progress lines (tests)
  bool resume = false;  // continue from <output.dir>/checkpoint.h5 (also automatic, see below)
};

// A run resumes when --resume is given, or automatically when its directory
// holds a checkpoint and a run file whose status is not completed.
bool should_resume(const RunConfig& config, const TrainOptions& options);

// Checks everything that needs more than the deck itself (token files exist,
// their vocabulary matches [model] vocab_size, the run file may be created,
// the launch matches [parallel]). Throws DeckError naming the deck key at
// fault. Creates nothing. Every rank runs it and reaches the same verdict.
void check_run_inputs(const LoadedDeck& deck, int world_size, bool resuming = false);

// Installs SIGTERM/SIGUSR1 handlers that request a checkpoint and a clean
// stop at the next step boundary (Slurm pre-emption: sbatch --signal).
void install_stop_signal_handlers();

// Trains on the ranks of `world`; returns an ExitCode. Bad-input errors are
// thrown (DeckError) before any output exists; later failures set the run
// file's status to failed (rank 0 writes the run file).
int train(const LoadedDeck& deck, const TrainOptions& options, MPI_Comm world = MPI_COMM_WORLD);

}  // namespace fulcrum
