#include "data/corpus.hpp"

#include "data/byte_tokenizer.hpp"
#include "data/token_file.hpp"

namespace fulcrum {
namespace {

const std::vector<Tokenizer>& registry() {
  static const std::vector<Tokenizer> r = {
      Tokenizer{"byte", static_cast<std::uint32_t>(kByteVocabSize), kByteEodToken,
                [](std::string_view s) { return byte_encode(s); }},
  };
  return r;
}

bool is_blank(std::string_view s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != '\v')
      return false;
  return true;
}

}  // namespace

std::vector<std::string> tokenizer_names() {
  std::vector<std::string> n;
  for (const auto& t : registry()) n.push_back(t.name);
  return n;
}

const Tokenizer& find_tokenizer(const std::string& name) {
  for (const auto& t : registry())
    if (t.name == name) return t;
  std::string valid;
  for (const auto& n : tokenizer_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw DataError("unknown tokenizer '" + name + "' (valid: " + valid + ")");
}

std::vector<std::string> split_documents(std::string_view text) {
  std::vector<std::string> docs;
  std::string cur;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    const std::size_t end = nl == std::string_view::npos ? text.size() : nl + 1;
    std::string_view line = text.substr(pos, end - pos);
    std::string_view body = line;
    if (!body.empty() && body.back() == '\n') body.remove_suffix(1);
    if (!body.empty() && body.back() == '\r') body.remove_suffix(1);
    if (body == "\f") {
      if (!is_blank(cur)) docs.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.append(line);
    }
    pos = end;
  }
  if (!is_blank(cur)) docs.push_back(std::move(cur));
  return docs;
}

CorpusEncoder::CorpusEncoder(const Tokenizer& tok, std::uint64_t valid_every)
    : tok_(tok), every_(valid_every) {
  if (valid_every < 1) throw DataError("valid-every must be >= 1");
}

void CorpusEncoder::add_document(std::string_view doc) {
  const std::uint64_t index = documents();
  const bool to_valid = index % every_ == every_ - 1;
  std::vector<std::int32_t>& out = to_valid ? split_.valid : split_.train;
  const std::vector<std::int32_t> t = tok_.encode(doc);
  out.insert(out.end(), t.begin(), t.end());
  out.push_back(tok_.eod);
  (to_valid ? split_.valid_docs : split_.train_docs) += 1;
}

void CorpusEncoder::add_text(std::string_view text) {
  for (const std::string& d : split_documents(text)) add_document(d);
}

}  // namespace fulcrum
