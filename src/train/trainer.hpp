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
};

struct TrainOptions {
  bool quiet = false;  // no progress lines (tests)
};

// Checks everything that needs more than the deck itself (token files exist,
// their vocabulary matches [model] vocab_size, the run file may be created,
// the launch matches [parallel]). Throws DeckError naming the deck key at
// fault. Creates nothing. Every rank runs it and reaches the same verdict.
void check_run_inputs(const LoadedDeck& deck, int world_size);

// Trains on the ranks of `world`; returns an ExitCode. Bad-input errors are
// thrown (DeckError) before any output exists; later failures set the run
// file's status to failed (rank 0 writes the run file).
int train(const LoadedDeck& deck, const TrainOptions& options, MPI_Comm world = MPI_COMM_WORLD);

}  // namespace fulcrum
