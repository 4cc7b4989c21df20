// bpe_tokenizer.hpp: the "bpe" tokenizer, a SentencePiece BPE model trained
// and applied through the libsentencepiece C++ API (doc/data.md).
//
// The model is lossless on cleaned text: identity normalisation, no extra
// whitespace removal, no dummy prefix, byte fallback for characters outside
// the vocabulary, "\n" a piece of its own. Ids: 0 <unk>, 1 end-of-document
// (</s>), 2 "\n", 3..258 the byte-fallback pieces <0x00>..<0xFF>, then the
// learned pieces. decode(encode(x)) == x for every valid UTF-8 x.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fulcrum {

// Whether this build links libsentencepiece (else the bpe tokenizer throws
// DataError naming the Debian package libsentencepiece-dev).
bool bpe_available();

struct BpeTrainOptions {
  int vocab_size = 4096;
  int threads = 2;
  double character_coverage = 0.9995;
};

// Trains a BPE model on `lines` (text without "\n"); returns the serialized
// model. Throws DataError; when vocab_size is more than the sample supports,
// the message says so and gives the largest size sentencepiece accepts.
std::string train_bpe_model(const std::vector<std::string>& lines, const BpeTrainOptions& opt);

class BpeTokenizer {
 public:
  explicit BpeTokenizer(const std::string& serialized_model);
  static BpeTokenizer load(const std::string& path);  // a .model file
  ~BpeTokenizer();
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;

  std::uint32_t vocab_size() const;
  std::int32_t eod() const;  // end-of-document id (</s>)

  // Memo of segment -> ids (one per thread; never shared between threads).
  struct Cache {
    std::unordered_map<std::string, std::vector<std::int32_t>> map;
  };
  // Encodes text segment by segment (a segment is "\n", or a run of spaces
  // followed by non-spaces): pieces never cross those boundaries, so this
  // equals encode_whole() and is much faster on long inputs. Thread-safe
  // with distinct caches.
  void encode(std::string_view text, std::vector<std::int32_t>& out, Cache* cache = nullptr) const;
  std::vector<std::int32_t> encode(std::string_view text) const;
  // Plain sentencepiece Encode of the whole string (slow on long text).
  std::vector<std::int32_t> encode_whole(std::string_view text) const;
  // Inverse of encode; end-of-document ids decode to nothing.
  std::string decode(const std::vector<std::int32_t>& ids) const;
  std::string piece(std::int32_t id) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fulcrum
