// deck_reader.hpp: input deck (TOML) -> fulcrum::RunConfig, strictly validated.
//
// Every key, its type, default and range is documented in doc/input-decks.md.
// All validation happens here, before anything runs; the first error found is
// thrown as a DeckError whose what() is one line:
//     <file>:<line>: [<section>] <key>: <what is wrong>
// (":<line>" is left out when the key has no line, e.g. a missing required
// key or a key set with --set, whose file is "--set"). Programs exit with
// status 2 on a DeckError.
#pragma once

#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/run_config.hpp"

namespace fulcrum {

struct DeckError : std::runtime_error {  // what() is the full one-line message
  std::string file;
  int line;         // 0 if unknown
  std::string key;  // dotted, "model.n_heads"; "" for syntax errors
  DeckError(std::string file, int line, std::string key, const std::string& message);
};

struct LoadedDeck {
  RunConfig config;                      // resolved: defaults + deck + overrides
  std::map<std::string, int> key_lines;  // "model.vocab_size" -> line in the deck (absent if defaulted)
  std::set<std::string> overridden_keys; // dotted keys whose value came from --set
  // Builds a DeckError for a check done later by the caller (e.g. the trainer
  // checks vocab_size against the token files): names file, line of the key, key.
  // A key set with --set is reported with file "--set".
  DeckError error(const std::string& dotted_key, const std::string& message) const;
};

// Reads and validates. overrides are "section.key=value" strings from the command
// line (value is TOML syntax, e.g. train.tokens=200000, run.name="x"); they are
// applied after the file and validated like file keys (file in messages: "--set").
LoadedDeck read_deck(const std::string& path, const std::vector<std::string>& overrides = {});
LoadedDeck read_deck_text(const std::string& text, const std::string& path_for_messages,
                          const std::vector<std::string>& overrides = {});

// The fully resolved deck (every key, defaults included) as TOML text; reading it
// back with read_deck_text gives an identical RunConfig. Stored in every run file.
std::string resolved_deck_toml(const RunConfig& config);

// The resolved deck without [parallel] and [output] (and without the deck's
// path and text): what a resumed run must share with its checkpoint. A run
// may resume on another rank layout or write elsewhere, nothing else.
std::string training_fingerprint(const RunConfig& config);

// Closest valid name for a near-miss (edit distance), "" if none is close.
std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates);

}  // namespace fulcrum
