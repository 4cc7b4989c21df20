#include "train/training_data.hpp"

#include "data/hash.hpp"
#include "data/mixture_dataset.hpp"
#include "data/token_file.hpp"
#include "train/data_loader.hpp"

namespace fulcrum {

namespace {

class TokenFilePair : public TrainingData {
 public:
  TokenFilePair(const DataSection& d, int seq_len)
      : train_(d.train_path, seq_len), valid_(d.valid_path, seq_len),
        spec_("train=" + d.train_path + " valid=" + d.valid_path + " tokenizer=" + d.tokenizer),
        // file bytes, as the corpus manifest's *_fnv1a64 checksums
        checksum_("fnv1a64 train=" + hex64(fnv1a64_file(d.train_path)) +
                  " valid=" + hex64(fnv1a64_file(d.valid_path))) {}
  int vocab_size() const override { return train_.vocab_size(); }
  void training_rows(std::uint64_t seed, std::int64_t step, std::int64_t first_row, int rows,
                     std::vector<int>& in, std::vector<int>& tg) const override {
    train_.training_rows(seed, step, first_row, rows, in, tg);
  }
  void eval_rows(std::int64_t first_row, int rows, std::vector<int>& in, std::vector<int>& tg) const override {
    valid_.eval_rows(first_row, rows, in, tg);
  }
  std::int64_t eval_row_count(std::uint64_t eval_tokens) const override {
    return valid_.eval_row_count(eval_tokens);
  }
  std::string spec() const override { return spec_; }
  std::string checksum() const override { return checksum_; }

 private:
  TokenDataset train_, valid_;
  std::string spec_, checksum_;
};

class Mixture : public TrainingData {
 public:
  Mixture(const DataSection& d, int seq_len) : mix_(d.manifest_path, d.weights, seq_len) {}
  int vocab_size() const override { return mix_.vocab_size(); }
  void training_rows(std::uint64_t seed, std::int64_t step, std::int64_t first_row, int rows,
                     std::vector<int>& in, std::vector<int>& tg) const override {
    mix_.training_rows(seed, step, first_row, rows, in, tg);
  }
  void eval_rows(std::int64_t first_row, int rows, std::vector<int>& in, std::vector<int>& tg) const override {
    mix_.eval_rows(first_row, rows, in, tg);
  }
  std::int64_t eval_row_count(std::uint64_t eval_tokens) const override {
    return mix_.eval_row_count(eval_tokens);
  }
  std::string spec() const override { return mix_.describe(); }
  std::string checksum() const override { return mix_.spec_checksum(); }

 private:
  MixtureDataset mix_;
};

}  // namespace

std::unique_ptr<TrainingData> open_training_data(const DataSection& data, int seq_len) {
  if (!data.manifest_path.empty()) return std::make_unique<Mixture>(data, seq_len);
  return std::make_unique<TokenFilePair>(data, seq_len);
}

}  // namespace fulcrum
