// corpus_build.hpp: `fulcrum-data build SPEC.toml` (doc/data.md).
//
// A spec names text sources (built-in, package-backed, or the user's files),
// puts each in a source group, gives mixture weights per group and a
// tokenizer. The build extracts and cleans every source, removes exact
// duplicate documents, splits each group into train/valid by document,
// trains the tokenizer (SentencePiece BPE, or "byte"), encodes in parallel
// and writes, into the output directory:
//   manifest.toml                 counts, checksums, weights, licence records
//   spec.toml                     the spec, as given
//   tokenizer.model               the SentencePiece model (bpe only)
//   LICENSES.txt                  one licence record per source
//   GROUP.train.tok, GROUP.valid.tok   token files (doc/data-format.md)
// Everything is built in a temporary sibling directory and renamed into
// place at the end: a failed build leaves nothing behind.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/sources.hpp"

namespace fulcrum {

struct TokenizerSpec {
  std::string type = "bpe";             // "bpe" or "byte"
  int vocab_size = 4096;                // bpe; byte is always 257
  std::uint64_t sample_bytes = 20000000;  // text used to train the bpe model
  double character_coverage = 0.9995;
};

struct CorpusSpec {
  std::string path;                     // the spec file
  std::string text;                     // its bytes
  std::string name;
  std::string output;                   // absolute, "" when not given
  double valid_fraction = 0.01;         // share of documents held out, per group
  std::uint64_t seed = 0;               // split hash seed
  TokenizerSpec tokenizer;
  std::vector<SourceConfig> sources;
  std::map<std::string, double> weights;  // [mixture] group -> weight
};

// Parses and validates a spec (unknown keys, sources and groups, weights,
// vocabulary size). Relative paths are relative to the spec's directory.
// Throws DataError.
CorpusSpec parse_corpus_spec(const std::string& path);

struct BuildOptions {
  int threads = 2;
  std::string output;  // overrides the spec's [corpus] output
  bool quiet = false;
};

struct BuildStats {
  std::uint64_t text_bytes = 0, documents = 0, duplicates = 0;
  std::uint64_t train_tokens = 0, valid_tokens = 0;
  double extract_s = 0, tokenizer_s = 0, encode_s = 0, total_s = 0;
  double encode_mb_per_s = 0;  // MB (1e6 bytes) of text per second of encoding
  std::string output;
};

// Builds the corpus (see above). Throws DataError; nothing is left behind on
// failure. An existing output directory is replaced only if it holds a
// manifest.toml (a previous build) or is empty.
BuildStats build_corpus(const CorpusSpec& spec, const BuildOptions& opt);

}  // namespace fulcrum
