// hash.hpp: small stateless hashes used by the data pipeline.
//   fnv1a64   - checksums of files, documents and specs (FNV-1a, 64 bit)
//   splitmix64 - the mixing step of SplitMix64, a stateless PRNG for sampling
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace fulcrum {

inline constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ull;
inline constexpr std::uint64_t kFnvPrime = 0x100000001b3ull;

inline std::uint64_t fnv1a64(std::string_view s, std::uint64_t h = kFnvOffset) {
  for (unsigned char c : s) {
    h ^= c;
    h *= kFnvPrime;
  }
  return h;
}

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform double in [0, 1) from the top 53 bits.
inline double unit_double(std::uint64_t h) {
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

// 16 lower-case hex digits.
inline std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// FNV-1a 64 of a whole file's bytes; throws DataError (token_file.hpp) when
// the file cannot be read.
std::uint64_t fnv1a64_file(const std::string& path);

}  // namespace fulcrum
