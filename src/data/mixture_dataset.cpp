#include "data/mixture_dataset.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <toml.hpp>

#include "data/hash.hpp"
#include "data/token_file.hpp"

namespace fs = std::filesystem;

namespace fulcrum {
namespace {

std::string str_of(const toml::value& t, const char* k, const std::string& where) {
  if (!t.contains(k) || !t.at(k).is_string()) throw DataError(where + ": missing string '" + k + "'");
  return t.at(k).as_string().str;
}

}  // namespace

MixtureDataset::MixtureDataset(const std::string& manifest_path,
                               const std::map<std::string, double>& weights, int seq_len)
    : T_(seq_len), manifest_(manifest_path) {
  const std::string w = "corpus manifest '" + manifest_path + "'";
  if (seq_len < 1) throw DataError("MixtureDataset: seq_len must be >= 1");
  std::string text;
  {
    std::ifstream in(manifest_path, std::ios::binary);
    if (!in) throw DataError(w + ": cannot open (build the corpus with fulcrum-data build)");
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  toml::value root;
  try {
    root = toml::parse(manifest_path);
  } catch (const std::exception& e) {
    throw DataError(w + ": not valid TOML: " + e.what());
  }
  if (!root.contains("vocab_size") || !root.at("vocab_size").is_integer())
    throw DataError(w + ": missing vocab_size");
  vocab_ = static_cast<int>(root.at("vocab_size").as_integer());
  if (!root.contains("group") || !root.at("group").is_array())
    throw DataError(w + ": no [[group]] tables");
  std::map<std::string, const toml::value*> groups;
  for (const auto& g : root.at("group").as_array()) groups[str_of(g, "name", w)] = &g;
  double sum = 0;
  for (const auto& kv : weights) {
    if (!groups.count(kv.first)) {
      std::string list;
      for (const auto& g : groups) list += (list.empty() ? "" : ", ") + g.first;
      throw DataError(w + ": mixture weight for unknown group '" + kv.first + "' (groups: " + list + ")");
    }
    if (!std::isfinite(kv.second) || kv.second < 0)
      throw DataError("mixture weight of group '" + kv.first + "' must be finite and >= 0");
    sum += kv.second;
  }
  if (!(sum > 0)) throw DataError("mixture weights must sum to a positive value");
  const fs::path dir = fs::path(manifest_path).parent_path();
  std::ostringstream ck;
  ck.precision(17);
  double c = 0;
  for (const auto& kv : weights) {  // std::map: sorted by group name
    ck << kv.first << "=" << kv.second << ";";
    if (kv.second <= 0) continue;
    const toml::value& g = *groups.at(kv.first);
    names_.push_back(kv.first);
    probs_.push_back(kv.second / sum);
    c += kv.second / sum;
    cum_.push_back(c);
    for (int split = 0; split < 2; ++split) {
      const std::string file = (dir / str_of(g, split ? "valid" : "train", w)).string();
      auto toks = read_tokens(file);
      const std::string sum_key = split ? "valid_fnv1a64" : "train_fnv1a64";
      if (g.contains(sum_key)) {
        const std::string want = g.at(sum_key).as_string().str;
        const std::string got = hex64(fnv1a64_file(file));
        if (want != got)
          throw DataError(w + ": checksum of '" + file + "' is " + got + ", the manifest says " + want +
                          " (rebuild the corpus)");
      }
      if (static_cast<std::int64_t>(toks.size()) < T_ + 1)
        throw DataError("group '" + kv.first + "': " + std::to_string(toks.size()) + " " +
                        (split ? "valid" : "train") + " tokens in '" + file +
                        "', fewer than seq_len + 1 = " + std::to_string(T_ + 1));
      if (static_cast<int>(read_token_header(file).vocab_size) != vocab_)
        throw DataError("'" + file + "': vocab_size differs from the manifest's");
      (split ? valid_ : train_).push_back(std::move(toks));
    }
  }
  cum_.back() = 1.0;
  checksum_ = hex64(fnv1a64(ck.str(), fnv1a64(text)));
}

int MixtureDataset::vocab_size() const { return vocab_; }
std::string MixtureDataset::spec_checksum() const { return checksum_; }

int MixtureDataset::pick(double u) const {
  const auto it = std::upper_bound(cum_.begin(), cum_.end(), u);
  const auto k = static_cast<int>(it - cum_.begin());
  return std::min(k, static_cast<int>(cum_.size()) - 1);
}

std::uint64_t MixtureDataset::row_hash(std::uint64_t seed, std::int64_t step, std::int64_t row) const {
  return splitmix64(splitmix64(splitmix64(seed) ^ static_cast<std::uint64_t>(step)) ^
                    static_cast<std::uint64_t>(row));
}

int MixtureDataset::training_row_group(std::uint64_t seed, std::int64_t step, std::int64_t row) const {
  return pick(unit_double(row_hash(seed, step, row)));
}

void MixtureDataset::training_rows(std::uint64_t seed, std::int64_t step, std::int64_t first_row,
                                   int rows, std::vector<int>& inputs,
                                   std::vector<int>& targets) const {
  const std::size_t T = static_cast<std::size_t>(T_);
  inputs.resize(static_cast<std::size_t>(rows) * T);
  targets.resize(static_cast<std::size_t>(rows) * T);
  for (int i = 0; i < rows; ++i) {
    const std::uint64_t h = row_hash(seed, step, first_row + i);
    const int g = pick(unit_double(h));
    const auto& toks = train_[static_cast<std::size_t>(g)];
    const std::uint64_t windows = toks.size() - T;  // start in [0, n - T - 1]
    const std::size_t start = static_cast<std::size_t>(splitmix64(h) % windows);
    const std::int32_t* p = toks.data() + start;
    int* in = inputs.data() + static_cast<std::size_t>(i) * T;
    int* tg = targets.data() + static_cast<std::size_t>(i) * T;
    for (std::size_t t = 0; t < T; ++t) {
      in[t] = p[t];
      tg[t] = p[t + 1];
    }
  }
}

int MixtureDataset::eval_row_group(std::int64_t row) const {
  // Low-discrepancy (golden ratio) sequence: group counts over any prefix of
  // rows track the weights within a row or two.
  const double phi = 0.6180339887498948482;
  const double u = std::fmod((static_cast<double>(row) + 0.5) * phi, 1.0);
  return pick(u);
}

void MixtureDataset::eval_rows(std::int64_t first_row, int rows, std::vector<int>& inputs,
                               std::vector<int>& targets) const {
  const std::size_t T = static_cast<std::size_t>(T_);
  inputs.resize(static_cast<std::size_t>(rows) * T);
  targets.resize(static_cast<std::size_t>(rows) * T);
  for (int i = 0; i < rows; ++i) {
    const std::int64_t r = first_row + i;
    const int g = eval_row_group(r);
    const auto& toks = valid_[static_cast<std::size_t>(g)];
    // Non-overlapping windows of T (+1 target) tokens; row r takes window
    // r mod (windows of its group): distinct rows of a group get distinct
    // windows until the group's valid tokens are used up.
    const std::uint64_t nwin = (toks.size() - 1) / T;
    const auto k = static_cast<std::uint64_t>(r);
    const std::size_t start = static_cast<std::size_t>((k % nwin) * T);
    const std::int32_t* p = toks.data() + start;
    int* in = inputs.data() + static_cast<std::size_t>(i) * T;
    int* tg = targets.data() + static_cast<std::size_t>(i) * T;
    for (std::size_t t = 0; t < T; ++t) {
      in[t] = p[t];
      tg[t] = p[t + 1];
    }
  }
}

std::int64_t MixtureDataset::eval_row_count(std::uint64_t eval_tokens) const {
  // ceil(eval_tokens / T), at most the number of distinct valid windows the
  // weighted groups hold together.
  const std::uint64_t want = (eval_tokens + static_cast<std::uint64_t>(T_) - 1) / static_cast<std::uint64_t>(T_);
  std::uint64_t have = 0;
  for (const auto& v : valid_) have += (v.size() - 1) / static_cast<std::uint64_t>(T_);
  return static_cast<std::int64_t>(std::min(want, have));
}

std::string MixtureDataset::describe() const {
  std::ostringstream o;
  o.precision(4);
  for (std::size_t i = 0; i < names_.size(); ++i) o << (i ? " " : "") << names_[i] << "=" << probs_[i];
  o << " (manifest " << manifest_ << ", checksum " << checksum_ << ")";
  return o.str();
}

}  // namespace fulcrum
