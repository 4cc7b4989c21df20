// data_loader.hpp: deterministic batches from token files.
//
// The global batch of optimizer step s is R = batch_tokens / seq_len rows;
// row r starts at a position drawn from hash(seed, s, r), so the tokens a step
// sees do not depend on the number of ranks or on micro-batching: a rank
// takes rows [first_row, first_row + count) of that global batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fulcrum {

class TokenDataset {
 public:
  TokenDataset(const std::string& path, int seq_len);  // reads the whole file
  std::uint64_t size() const { return tokens_.size(); }
  int vocab_size() const { return vocab_size_; }
  // inputs/targets are (rows, T): targets are inputs shifted by one.
  void training_rows(std::uint64_t seed, std::int64_t step, std::int64_t first_row, int rows,
                     std::vector<int>& inputs, std::vector<int>& targets) const;
  // Held-out rows: row i is the i-th consecutive window (wrapping).
  void eval_rows(std::int64_t first_row, int rows, std::vector<int>& inputs,
                 std::vector<int>& targets) const;
  std::int64_t eval_row_count(std::uint64_t eval_tokens) const;

 private:
  std::vector<std::int32_t> tokens_;
  int vocab_size_ = 0;
  int T_ = 0;
};

}  // namespace fulcrum
