#include "data/token_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace fulcrum {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw DataError("token file '" + path + "': " + why);
}

std::uint32_t get_u32(const unsigned char* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) |
         (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
}
std::uint64_t get_u64(const unsigned char* p) {
  return std::uint64_t(get_u32(p)) | (std::uint64_t(get_u32(p + 4)) << 32);
}
void put_u32(unsigned char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void put_u64(unsigned char* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

TokenFileHeader parse_header(const std::string& path, std::ifstream& in,
                             std::uint64_t* file_size_out) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail(path, std::string("cannot open: ") + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(path, "is a directory");
  in.open(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open: ") + std::strerror(errno));
  const std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
  if (size < kTokenFileHeaderBytes)
    fail(path, "too short for a header (" + std::to_string(size) +
                   " bytes, need " + std::to_string(kTokenFileHeaderBytes) + ")");
  unsigned char h[kTokenFileHeaderBytes];
  in.read(reinterpret_cast<char*>(h), sizeof h);
  if (!in) fail(path, "cannot read header");
  if (std::memcmp(h, kTokenFileMagic, 8) != 0)
    fail(path, "bad magic (not a FULCRTOK token file)");
  TokenFileHeader hd;
  hd.version = get_u32(h + 8);
  hd.vocab_size = get_u32(h + 12);
  hd.bytes_per_token = get_u32(h + 16);
  hd.token_count = get_u64(h + 24);
  if (hd.version != kTokenFileVersion)
    fail(path, "unsupported version " + std::to_string(hd.version) +
                   " (expected " + std::to_string(kTokenFileVersion) + ")");
  if (hd.bytes_per_token != 2 && hd.bytes_per_token != 4)
    fail(path, "bad bytes_per_token " + std::to_string(hd.bytes_per_token) +
                   " (expected 2 or 4)");
  if (hd.vocab_size == 0) fail(path, "vocab_size is 0");
  if (hd.bytes_per_token == 2 && hd.vocab_size > 65536)
    fail(path, "vocab_size " + std::to_string(hd.vocab_size) +
                   " does not fit 2-byte tokens");
  const std::uint64_t payload = size - kTokenFileHeaderBytes;
  if (hd.token_count > payload / hd.bytes_per_token ||
      payload != hd.token_count * hd.bytes_per_token)
    fail(path, "size mismatch: header says " + std::to_string(hd.token_count) +
                   " tokens of " + std::to_string(hd.bytes_per_token) +
                   " bytes but the file has " + std::to_string(payload) +
                   " payload bytes (truncated or corrupt)");
  if (file_size_out) *file_size_out = size;
  return hd;
}

}  // namespace

TokenFileHeader read_token_header(const std::string& path) {
  std::ifstream in;
  return parse_header(path, in, nullptr);
}

std::vector<std::int32_t> read_tokens(const std::string& path) {
  std::ifstream in;
  const TokenFileHeader hd = parse_header(path, in, nullptr);
  const std::size_t n = static_cast<std::size_t>(hd.token_count);
  std::vector<unsigned char> raw(n * hd.bytes_per_token);
  if (!raw.empty()) {
    in.read(reinterpret_cast<char*>(raw.data()),
            static_cast<std::streamsize>(raw.size()));
    if (!in) fail(path, "cannot read tokens");
  }
  std::vector<std::int32_t> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char* p = raw.data() + i * hd.bytes_per_token;
    const std::uint32_t t = hd.bytes_per_token == 2
                                ? std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8)
                                : get_u32(p);
    if (t >= hd.vocab_size)
      fail(path, "token " + std::to_string(t) + " at index " + std::to_string(i) +
                     " is out of range (vocab_size " +
                     std::to_string(hd.vocab_size) + ")");
    out[i] = static_cast<std::int32_t>(t);
  }
  return out;
}

void write_token_file(const std::string& path,
                      const std::vector<std::int32_t>& tokens,
                      std::uint32_t vocab_size) {
  if (vocab_size == 0) fail(path, "cannot write: vocab_size is 0");
  if (vocab_size > 0x7fffffffu)
    fail(path, "cannot write: vocab_size too large for int32 tokens");
  const std::uint32_t bpt = vocab_size <= 65536 ? 2 : 4;
  std::vector<unsigned char> buf(kTokenFileHeaderBytes + tokens.size() * bpt);
  std::memcpy(buf.data(), kTokenFileMagic, 8);
  put_u32(buf.data() + 8, kTokenFileVersion);
  put_u32(buf.data() + 12, vocab_size);
  put_u32(buf.data() + 16, bpt);
  put_u32(buf.data() + 20, 0);
  put_u64(buf.data() + 24, tokens.size());
  unsigned char* p = buf.data() + kTokenFileHeaderBytes;
  for (std::size_t i = 0; i < tokens.size(); ++i, p += bpt) {
    const std::int32_t t = tokens[i];
    if (t < 0 || static_cast<std::uint32_t>(t) >= vocab_size)
      fail(path, "cannot write: token " + std::to_string(t) + " at index " +
                     std::to_string(i) + " is out of range (vocab_size " +
                     std::to_string(vocab_size) + ")");
    if (bpt == 2) {
      p[0] = static_cast<unsigned char>(t);
      p[1] = static_cast<unsigned char>(t >> 8);
    } else {
      put_u32(p, static_cast<std::uint32_t>(t));
    }
  }
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "cannot create '" + tmp + "': " + std::strerror(errno));
  std::size_t done = 0;
  while (done < buf.size()) {
    const ssize_t w = ::write(fd, buf.data() + done, buf.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const std::string err = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(path, "write to '" + tmp + "' failed: " + err);
    }
    done += static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail(path, "fsync/close of '" + tmp + "' failed: " + err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail(path, "rename '" + tmp + "' -> '" + path + "' failed: " + err);
  }
}

}  // namespace fulcrum
