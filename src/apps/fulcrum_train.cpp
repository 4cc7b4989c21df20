// fulcrum-train: trains one dense or MoE model from an input deck.
//
//   fulcrum-train DECK [--set section.key=value]... [--describe] [--quiet] [--resume]
//   fulcrum-train --describe-keys markdown   (every deck key, from the deck schema)
//   fulcrum-train RUN.h5 --set output.dir=...   (re-run the deck stored in a run file)
//
// Exit codes: 0 completed, 1 failed, 2 bad input (deck, data, command line),
// 3 diverged, 4 stopped by SIGTERM/SIGUSR1 after a checkpoint (doc/running.md).
// Nothing is written for bad input.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>
#include <cstdio>

#include "deck/deck_reader.hpp"
#include "deck/deck_schema.hpp"
#include "io/run_file.hpp"
#include "fulcrum_version.hpp"
#include "train/run_plan.hpp"
#include "train/trainer.hpp"

namespace {

// A deck, or the resolved deck stored in a run file (root attribute "deck"):
// every run can be repeated from its HDF5 file alone.
fulcrum::LoadedDeck load_deck_or_run_file(const std::string& path, const std::vector<std::string>& overrides,
                                          int world_rank) {
  const bool is_run_file = path.size() > 3 && path.compare(path.size() - 3, 3, ".h5") == 0;
  if (!is_run_file) return fulcrum::read_deck(path, overrides);
  std::string text, revision;
  try {
    text = fulcrum::read_string_attr(path, "/", "deck");
    revision = fulcrum::read_string_attr(path, "/", "git_revision");
  } catch (const std::exception& e) {
    throw fulcrum::DeckError(path, 0, "", std::string("cannot read the deck stored in this run file: ") + e.what());
  }
  if (world_rank == 0 && revision != FULCRUM_GIT_REVISION)
    std::fprintf(stderr, "fulcrum-train: note: %s was written by revision %s, this binary is %s\n", path.c_str(),
                 revision.c_str(), FULCRUM_GIT_REVISION);
  return fulcrum::read_deck_text(text, path + ":/deck", overrides);
}

int run(int argc, char** argv, int world_rank, int world_size) {
  CLI::App app{"fulcrum-train: train a dense or MoE transformer from an input deck"};
  std::string deck_path;
  std::vector<std::string> overrides;
  std::string describe_keys;
  bool describe = false, quiet = false, resume = false;
  app.add_option("deck", deck_path,
                 "input deck (TOML, see doc/input-decks.md), or a run file (*.h5) to re-run the "
                 "resolved deck stored in it");
  app.add_option("--describe-keys", describe_keys,
                 "print every deck key (type, default, range, meaning) and the cross-key rules "
                 "from the deck schema, as the tables of doc/input-decks.md, and exit")
      ->check(CLI::IsMember({"markdown"}));
  app.add_option("--set", overrides, "override a deck key: section.key=value (TOML value)");
  app.add_flag("--describe", describe, "print parameter counts, FLOPs per token, A, G, S and exit");
  app.add_flag("--quiet", quiet, "no progress lines");
  app.add_flag("--resume", resume,
               "continue from <output.dir>/checkpoint.h5 (automatic when the run directory has a "
               "checkpoint and an unfinished run file)");
  app.set_version_flag("--version", std::string("fulcrum-train ") + FULCRUM_VERSION + " (" +
                                        FULCRUM_GIT_REVISION + ")");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : fulcrum::kExitBadInput;
  }
  if (!describe_keys.empty()) {
    if (world_rank == 0) std::fputs(fulcrum::deck_keys_markdown().c_str(), stdout);
    return fulcrum::kExitCompleted;
  }
  if (deck_path.empty()) {
    if (world_rank == 0) std::fprintf(stderr, "deck is required\nRun with --help for more information.\n");
    return fulcrum::kExitBadInput;
  }
  try {
    const fulcrum::LoadedDeck deck = load_deck_or_run_file(deck_path, overrides, world_rank);
    const auto& cfg = deck.config;
    if (describe) {
      fulcrum::RunPlan plan;
      try {
        plan = fulcrum::make_run_plan(cfg, world_size);
      } catch (const fulcrum::GemmConfigError& e) {
        throw deck.error(e.key, e.what());
      }
      if (world_rank == 0)
        for (const auto& [key, value] : fulcrum::describe_run(cfg, plan))
          std::printf("%s = %s\n", key.c_str(), fulcrum::format_config_value(value).c_str());
      return fulcrum::kExitCompleted;
    }
    fulcrum::TrainOptions options;
    options.quiet = quiet;
    options.resume = resume;
    fulcrum::install_stop_signal_handlers();
    return fulcrum::train(deck, options, MPI_COMM_WORLD);
  } catch (const fulcrum::DeckError& e) {
    if (world_rank == 0) std::fprintf(stderr, "fulcrum-train: error: %s\n", e.what());
    return fulcrum::kExitBadInput;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fulcrum-train: error: %s\n", e.what());
    return fulcrum::kExitFailed;
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rc = 0;
  {
    Kokkos::initialize();  // defaults; Kokkos flags are not taken from our command line
    rc = run(argc, argv, rank, size);
    Kokkos::finalize();
  }
  MPI_Finalize();
  return rc;
}
