// corpus.hpp: plain-text corpora -> token streams (doc/data-format.md).
//
// A corpus file holds documents separated by a line that consists of the
// form-feed character alone ("\f", optionally followed by "\r"). A document
// is the exact bytes between separator lines (its lines keep their "\n");
// documents that are empty or whitespace-only are skipped. End of file ends a
// document: documents never span input files.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace fulcrum {

struct Tokenizer {
  std::string name;
  std::uint32_t vocab_size = 0;
  std::int32_t eod = -1;  // end-of-document token
  std::function<std::vector<std::int32_t>(std::string_view)> encode;
};

// Registered tokenizer names ("byte").
std::vector<std::string> tokenizer_names();
// Looks a tokenizer up; throws DataError listing the valid names.
const Tokenizer& find_tokenizer(const std::string& name);

// Splits one corpus file's text into documents (see above).
std::vector<std::string> split_documents(std::string_view text);

struct CorpusSplit {
  std::vector<std::int32_t> train, valid;
  std::uint64_t train_docs = 0, valid_docs = 0;
};

// Encodes documents in order, each followed by the EOD token. Document i
// (counted over all non-empty documents of all inputs, from 0) goes to valid
// when i % valid_every == valid_every - 1, else to train. valid_every >= 1
// (1 => everything to valid); throws DataError otherwise.
class CorpusEncoder {
 public:
  CorpusEncoder(const Tokenizer& tok, std::uint64_t valid_every);
  void add_document(std::string_view doc);
  void add_text(std::string_view text);  // split_documents + add_document
  const CorpusSplit& result() const { return split_; }
  std::uint64_t documents() const { return split_.train_docs + split_.valid_docs; }

 private:
  const Tokenizer& tok_;
  std::uint64_t every_;
  CorpusSplit split_;
};

}  // namespace fulcrum
