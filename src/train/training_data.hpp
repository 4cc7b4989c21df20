// training_data.hpp: where training and validation rows come from: one
// token-file pair ([data] train/valid) or a built corpus sampled as a
// mixture ([data] manifest/weights). Both are stateless functions of
// (seed, step, row), so batches do not depend on the rank layout.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/run_config.hpp"

namespace fulcrum {

class TrainingData {
 public:
  virtual ~TrainingData() = default;
  virtual int vocab_size() const = 0;
  // inputs/targets are (rows, T); targets are inputs shifted by one.
  virtual void training_rows(std::uint64_t seed, std::int64_t step, std::int64_t first_row, int rows,
                             std::vector<int>& inputs, std::vector<int>& targets) const = 0;
  virtual void eval_rows(std::int64_t first_row, int rows, std::vector<int>& inputs,
                         std::vector<int>& targets) const = 0;
  virtual std::int64_t eval_row_count(std::uint64_t eval_tokens) const = 0;
  virtual std::string spec() const = 0;      // human-readable source description (run file)
  virtual std::string checksum() const = 0;  // of the data and the spec (run file)
};

// Opens what [data] names. Throws DataError (src/data/token_file.hpp).
std::unique_ptr<TrainingData> open_training_data(const DataSection& data, int seq_len);

}  // namespace fulcrum
