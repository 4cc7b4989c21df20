// deck_reader.hpp: input deck (TOML) -> fulcrum::RunConfig, strictly validated
// against the deck schema (deck_schema.hpp; doc/input-decks.md is generated
// from it).
//
// All validation happens here, before anything runs; the first error found is
// thrown as a DeckError whose what() is one line:
//     <file>:<line>: [<section>] <key>: <what is wrong>
// (":<line>" is left out when the key has no line, e.g. a missing required
// key or a key set with --set, whose file is "--set"). Programs exit with
// status 2 on a DeckError.
#pragma once

#include <toml.hpp>

#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/run_config.hpp"
#include "deck/deck_messages.hpp"

namespace fulcrum {

struct DeckError : std::runtime_error {  // what() is the full one-line message
  std::string file;
  int line;         // 0 if unknown
  std::string key;  // dotted, "model.n_heads"; "" for syntax errors
  std::string message;  // what is wrong, without file, line and key (sanitised)
  DeckError(std::string file, int line, std::string key, const std::string& message);
};

struct LoadedDeck {
  RunConfig config;                      // resolved: defaults + deck + overrides
  std::map<std::string, int> key_lines;  // "model.vocab_size" -> line in the deck (absent if defaulted)
  std::map<std::string, std::string> key_files;  // key -> its file, where not config.deck_path (layered decks)
  std::set<std::string> overridden_keys; // dotted keys whose value came from --set
  // Builds a DeckError for a check done later by the caller (e.g. the trainer
  // checks vocab_size against the token files): names file, line of the key, key.
  // A key set with --set is reported with file "--set".
  DeckError error(const std::string& dotted_key, const std::string& message) const;
  // The same for several keys: names the first of them the deck or a --set gave.
  DeckError error(const std::vector<std::string>& dotted_keys, const std::string& message) const;
};

// Reads and validates. overrides are "section.key=value" strings from the command
// line (value is TOML syntax, e.g. train.tokens=200000, run.name="x"); they are
// applied after the file and validated like file keys (file in messages: "--set").
LoadedDeck read_deck(const std::string& path, const std::vector<std::string>& overrides = {});
LoadedDeck read_deck_text(const std::string& text, const std::string& path_for_messages,
                          const std::vector<std::string>& overrides = {});

// A deck made of several files read in turn (a sweep's base deck, then the
// sweep deck's own sections): a key of a later layer replaces the same key of
// an earlier one, and every error names the file and line the key came from.
struct DeckLayer {
  toml::value root;                // parse_toml_deck (toml_input.hpp) of the file
  std::string path;                // for messages
  std::set<std::string> foreign;   // top-level tables of another schema, skipped ("sweep")
};
// A value set after the layers (like --set: one of train.tokens/compute
// replaces the other), located where it was written (file "--set" and line 0
// for the command line).
struct DeckSetting {
  std::string key;                 // dotted
  toml::value value;
  std::string file = kSetFile;
  int line = 0;
};
LoadedDeck read_deck_layers(const std::vector<DeckLayer>& layers, const std::vector<DeckSetting>& settings);

// Checks the schema's cross-key rules (deck_schema.hpp) on `config`, which
// may differ from deck.config by what only the caller knows (the trainer: the
// launched world size); throws deck.error(...) for the first rule broken.
void check_cross_key_rules(const LoadedDeck& deck, const RunConfig& config);

// The fully resolved deck (every key, defaults included) as TOML text; reading it
// back with read_deck_text gives an identical RunConfig. Stored in every run file.
std::string resolved_deck_toml(const RunConfig& config);

// The resolved deck without [parallel] and [output] (and without the deck's
// path and text): what a resumed run must share with its checkpoint. A run
// may resume on another rank layout or write elsewhere, nothing else.
std::string training_fingerprint(const RunConfig& config);

}  // namespace fulcrum
