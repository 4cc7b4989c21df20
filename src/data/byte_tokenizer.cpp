#include "data/byte_tokenizer.hpp"

#include <stdexcept>

namespace fulcrum {

std::vector<std::int32_t> byte_encode(std::string_view text) {
  std::vector<std::int32_t> out;
  out.reserve(text.size());
  for (char c : text) out.push_back(static_cast<unsigned char>(c));
  return out;
}

std::string byte_decode(const std::vector<std::int32_t>& tokens) {
  std::string out;
  out.reserve(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const std::int32_t t = tokens[i];
    if (t == kByteEodToken) continue;
    if (t < 0 || t > 255)
      throw std::invalid_argument("byte_decode: token " + std::to_string(t) +
                                  " at index " + std::to_string(i) +
                                  " is not a byte token");
    out.push_back(static_cast<char>(static_cast<unsigned char>(t)));
  }
  return out;
}

}  // namespace fulcrum
