// byte_tokenizer.hpp: the "byte" tokenizer (doc/data-format.md).
// Vocabulary 257: tokens 0..255 are the raw bytes, 256 is end-of-document.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fulcrum {

inline constexpr std::int32_t kByteVocabSize = 257;
inline constexpr std::int32_t kByteEodToken = 256;

// One token per byte (no EOD appended).
std::vector<std::int32_t> byte_encode(std::string_view text);

// Inverse of byte_encode: EOD tokens decode to nothing; any other token
// outside 0..255 throws std::invalid_argument.
std::string byte_decode(const std::vector<std::int32_t>& tokens);

}  // namespace fulcrum
