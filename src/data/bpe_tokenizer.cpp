#include "data/bpe_tokenizer.hpp"

#include <fstream>
#include <sstream>

#include "data/token_file.hpp"

#if FULCRUM_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#endif

namespace fulcrum {

#if FULCRUM_HAVE_SENTENCEPIECE

bool bpe_available() { return true; }

namespace {

class LinesIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LinesIterator(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& v_;
  std::size_t i_ = 0;
};

}  // namespace

std::string train_bpe_model(const std::vector<std::string>& lines, const BpeTrainOptions& opt) {
  if (opt.vocab_size < 300)
    throw DataError("tokenizer vocab_size " + std::to_string(opt.vocab_size) +
                    " is too small for bpe (needs >= 300: 3 special pieces and 256 byte pieces)");
  if (lines.empty()) throw DataError("no text to train the tokenizer on");
  std::ostringstream cov;
  cov.precision(17);
  cov << opt.character_coverage;
  const std::unordered_map<std::string, std::string> kw = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"user_defined_symbols", "\n"},
      {"character_coverage", cov.str()},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"num_threads", std::to_string(opt.threads < 1 ? 1 : opt.threads)},
      {"max_sentence_length", "16384"},
      {"minloglevel", "2"},
      {"unk_id", "0"},
      {"eos_id", "1"},
      {"bos_id", "-1"},
      {"pad_id", "-1"},
      {"hard_vocab_limit", "true"},
  };
  sentencepiece::SetRandomGeneratorSeed(12345);
  LinesIterator it(lines);
  std::string model;
  const auto st = sentencepiece::SentencePieceTrainer::Train(kw, &it, &model);
  if (!st.ok()) {
    const std::string msg = st.ToString();
    const std::size_t hi = msg.find("Vocabulary size too high");
    if (hi != std::string::npos) {
      const std::size_t le = msg.find("<= ", hi);
      std::string most = le == std::string::npos ? "?" : msg.substr(le + 3);
      while (!most.empty() && (most.back() == '.' || most.back() == ' ')) most.pop_back();
      throw DataError("tokenizer vocab_size " + std::to_string(opt.vocab_size) +
                      " is larger than the data supports (the tokenizer sample allows at most " +
                      most + "): lower [tokenizer] vocab_size or add text");
    }
    throw DataError("sentencepiece training failed: " + msg);
  }
  return model;
}

struct BpeTokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::int32_t eod = 1;
};

BpeTokenizer::BpeTokenizer(const std::string& serialized_model) : impl_(new Impl) {
  const auto st = impl_->sp.LoadFromSerializedProto(serialized_model);
  if (!st.ok()) throw DataError("cannot load sentencepiece model: " + st.ToString());
  impl_->eod = impl_->sp.eos_id();
  if (impl_->eod < 0) throw DataError("sentencepiece model has no </s> (end-of-document) piece");
}

std::uint32_t BpeTokenizer::vocab_size() const {
  return static_cast<std::uint32_t>(impl_->sp.GetPieceSize());
}
std::int32_t BpeTokenizer::eod() const { return impl_->eod; }

std::vector<std::int32_t> BpeTokenizer::encode_whole(std::string_view text) const {
  std::vector<int> ids;
  const auto st = impl_->sp.Encode(absl::string_view(text.data(), text.size()), &ids);
  if (!st.ok()) throw DataError("sentencepiece encode failed: " + st.ToString());
  return std::vector<std::int32_t>(ids.begin(), ids.end());
}

void BpeTokenizer::encode(std::string_view text, std::vector<std::int32_t>& out,
                          Cache* cache) const {
  std::vector<int> ids;
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    std::size_t j;
    if (text[i] == '\n') {
      j = i + 1;
    } else {
      j = i;
      while (j < n && text[j] == ' ') ++j;
      while (j < n && text[j] != ' ' && text[j] != '\n') ++j;
    }
    const std::string_view seg = text.substr(i, j - i);
    i = j;
    if (cache && seg.size() <= 48) {
      auto it = cache->map.find(std::string(seg));
      if (it != cache->map.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    const auto st = impl_->sp.Encode(absl::string_view(seg.data(), seg.size()), &ids);
    if (!st.ok()) throw DataError("sentencepiece encode failed: " + st.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
    if (cache && seg.size() <= 48) {
      if (cache->map.size() > 1000000) cache->map.clear();
      cache->map.emplace(std::string(seg), std::vector<std::int32_t>(ids.begin(), ids.end()));
    }
  }
}

std::string BpeTokenizer::decode(const std::vector<std::int32_t>& ids) const {
  std::vector<int> v;
  v.reserve(ids.size());
  for (auto t : ids)
    if (t != impl_->eod) v.push_back(t);
  std::string out;
  const auto st = impl_->sp.Decode(v, &out);
  if (!st.ok()) throw DataError("sentencepiece decode failed: " + st.ToString());
  return out;
}

std::string BpeTokenizer::piece(std::int32_t id) const { return impl_->sp.IdToPiece(id); }

#else  // !FULCRUM_HAVE_SENTENCEPIECE

bool bpe_available() { return false; }

namespace {
[[noreturn]] void no_sp() {
  throw DataError(
      "the bpe tokenizer needs sentencepiece: this fulcrum was built without it "
      "(apt-get install libsentencepiece-dev, then reconfigure)");
}
}  // namespace

std::string train_bpe_model(const std::vector<std::string>&, const BpeTrainOptions&) { no_sp(); }
struct BpeTokenizer::Impl {};
BpeTokenizer::BpeTokenizer(const std::string&) { no_sp(); }
std::uint32_t BpeTokenizer::vocab_size() const { no_sp(); }
std::int32_t BpeTokenizer::eod() const { no_sp(); }
std::vector<std::int32_t> BpeTokenizer::encode_whole(std::string_view) const { no_sp(); }
void BpeTokenizer::encode(std::string_view, std::vector<std::int32_t>&, Cache*) const { no_sp(); }
std::string BpeTokenizer::decode(const std::vector<std::int32_t>&) const { no_sp(); }
std::string BpeTokenizer::piece(std::int32_t) const { no_sp(); }

#endif

BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> out;
  encode(text, out, nullptr);
  return out;
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError("cannot open tokenizer model '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return BpeTokenizer(ss.str());
}

}  // namespace fulcrum
