#include "train/data_loader.hpp"

#include <stdexcept>

#include "data/hash.hpp"
#include "data/token_file.hpp"

namespace fulcrum {

TokenDataset::TokenDataset(const std::string& path, int seq_len) : T_(seq_len) {
  vocab_size_ = static_cast<int>(read_token_header(path).vocab_size);
  tokens_ = read_tokens(path);
  if (tokens_.size() < static_cast<std::size_t>(seq_len) + 2)
    throw DataError(path + ": " + std::to_string(tokens_.size()) +
                    " tokens, fewer than seq_len + 2 = " + std::to_string(seq_len + 2));
}

void TokenDataset::training_rows(std::uint64_t seed, std::int64_t step, std::int64_t first_row,
                                 int rows, std::vector<int>& inputs,
                                 std::vector<int>& targets) const {
  inputs.resize(static_cast<std::size_t>(rows) * T_);
  targets.resize(inputs.size());
  const std::uint64_t span = tokens_.size() - T_ - 1;  // valid start positions
  for (int r = 0; r < rows; ++r) {
    const std::uint64_t row = static_cast<std::uint64_t>(first_row + r);
    const std::uint64_t h = splitmix64(splitmix64(seed ^ 0xDA7A5EEDULL) ^
                                       splitmix64((std::uint64_t)step * 0x100000001B3ULL + row));
    const std::uint64_t start = h % (span + 1);
    for (int t = 0; t < T_; ++t) {
      inputs[(std::size_t)r * T_ + t] = tokens_[start + t];
      targets[(std::size_t)r * T_ + t] = tokens_[start + t + 1];
    }
  }
}

std::int64_t TokenDataset::eval_row_count(std::uint64_t eval_tokens) const {
  const std::int64_t wanted = static_cast<std::int64_t>(eval_tokens / T_);
  return wanted > 0 ? wanted : 1;
}

void TokenDataset::eval_rows(std::int64_t first_row, int rows, std::vector<int>& inputs,
                             std::vector<int>& targets) const {
  inputs.resize(static_cast<std::size_t>(rows) * T_);
  targets.resize(inputs.size());
  const std::uint64_t windows = (tokens_.size() - 1) / T_;
  for (int r = 0; r < rows; ++r) {
    const std::uint64_t start = (static_cast<std::uint64_t>(first_row + r) % windows) * T_;
    for (int t = 0; t < T_; ++t) {
      inputs[(std::size_t)r * T_ + t] = tokens_[start + t];
      targets[(std::size_t)r * T_ + t] = tokens_[start + t + 1];
    }
  }
}

}  // namespace fulcrum
