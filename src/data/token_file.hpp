// token_file.hpp: the binary token file format (doc/data-format.md).
//
// Little-endian, 32-byte header:
//   offset 0  char[8] magic "FULCRTOK"
//   offset 8  u32     version (= 1)
//   offset 12 u32     vocab_size
//   offset 16 u32     bytes_per_token (2 = uint16, 4 = uint32)
//   offset 20 u32     reserved (= 0)
//   offset 24 u64     token_count
// followed by token_count tokens of bytes_per_token bytes each.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fulcrum {

inline constexpr char kTokenFileMagic[8] = {'F', 'U', 'L', 'C', 'R', 'T', 'O', 'K'};
inline constexpr std::uint32_t kTokenFileVersion = 1;
inline constexpr std::size_t kTokenFileHeaderBytes = 32;

struct TokenFileHeader {
  std::uint32_t version = 0;
  std::uint32_t vocab_size = 0;
  std::uint32_t bytes_per_token = 0;
  std::uint64_t token_count = 0;
};

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Reads and validates the header (magic, version, bytes_per_token, and that
// the file size equals 32 + token_count * bytes_per_token). Throws DataError
// naming the path and the reason.
TokenFileHeader read_token_header(const std::string& path);

// Reads all tokens; validates the header and that every token < vocab_size
// (the error names the path and the first offending index).
std::vector<std::int32_t> read_tokens(const std::string& path);

// Writes a token file atomically (path.tmp, fsync, rename). Uses 2 bytes per
// token when vocab_size <= 65536, else 4. Throws DataError if a token is
// negative or >= vocab_size, or on any I/O failure (nothing is left behind).
void write_token_file(const std::string& path,
                      const std::vector<std::int32_t>& tokens,
                      std::uint32_t vocab_size);

}  // namespace fulcrum
