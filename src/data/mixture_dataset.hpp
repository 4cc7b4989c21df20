// mixture_dataset.hpp: training/eval rows sampled from a built corpus
// (fulcrum-data build, doc/data.md) with weights per source group.
//
// Stateless and deterministic: row r of optimizer step s depends only on
// (seed, s, r), via SplitMix64, so the batch is the same for any number of
// ranks or micro-batches.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fulcrum {

class MixtureDataset {
 public:
  // manifest: the built corpus manifest; weights: group -> weight (must sum > 0); seq_len T.
  // Throws DataError: unknown group, negative or non-finite weight, weights
  // not summing to a positive value, a group with a positive weight whose
  // train or valid tokens are fewer than T + 1, checksum mismatches.
  MixtureDataset(const std::string& manifest_path, const std::map<std::string, double>& weights,
                 int seq_len);
  int vocab_size() const;
  // inputs/targets are (rows, T), targets shifted by one; row r of optimizer step s is a pure
  // function of (seed, s, r): its group is drawn from the weights, its window inside that group's
  // train tokens from the same hash, so it does not depend on rank count or micro-batching.
  void training_rows(std::uint64_t seed, std::int64_t step, std::int64_t first_row, int rows,
                     std::vector<int>& inputs, std::vector<int>& targets) const;
  // held-out rows from the groups' valid files, deterministic, proportional to the weights.
  void eval_rows(std::int64_t first_row, int rows, std::vector<int>& inputs,
                 std::vector<int>& targets) const;
  std::int64_t eval_row_count(std::uint64_t eval_tokens) const;
  std::string spec_checksum() const;  // checksum of manifest + weights, recorded in the run file

  // Extras (tests, logging).
  const std::vector<std::string>& group_names() const { return names_; }  // weight > 0, sorted
  const std::vector<double>& group_weights() const { return probs_; }     // normalised
  int training_row_group(std::uint64_t seed, std::int64_t step, std::int64_t row) const;
  int eval_row_group(std::int64_t row) const;
  std::string describe() const;  // "books=0.5 code=0.5 (manifest ...)"

 private:
  int pick(double u) const;
  std::uint64_t row_hash(std::uint64_t seed, std::int64_t step, std::int64_t row) const;
  int T_;
  int vocab_ = 0;
  std::string checksum_;
  std::string manifest_;
  std::vector<std::string> names_;
  std::vector<double> probs_, cum_;
  std::vector<std::vector<std::int32_t>> train_, valid_;
};

}  // namespace fulcrum
