#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "data/token_file.hpp"
#include "test_util.hpp"

using namespace fulcrum;
using fulcrum_test::TempDir;

namespace {

// Expects `fn` to throw DataError whose message contains every `parts`.
template <class F>
void expect_data_error(F fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    FAIL() << "no DataError thrown";
  } catch (const DataError& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message '" << msg << "' lacks '" << p << "'";
  }
}

}  // namespace

TEST(TokenFile, HeaderRoundTripUint16) {
  TempDir d;
  const std::string p = d.file("a.tok");
  const std::vector<std::int32_t> toks = {0, 1, 255, 256, 7, 256};
  write_token_file(p, toks, 257);
  const TokenFileHeader h = read_token_header(p);
  EXPECT_EQ(h.version, 1u);
  EXPECT_EQ(h.vocab_size, 257u);
  EXPECT_EQ(h.bytes_per_token, 2u);
  EXPECT_EQ(h.token_count, toks.size());
  EXPECT_EQ(read_tokens(p), toks);
  EXPECT_FALSE(fulcrum_test::exists(p + ".tmp"));
  // Exact on-disk layout: 32-byte header, little-endian.
  const std::string raw = fulcrum_test::read_bytes(p);
  ASSERT_EQ(raw.size(), 32u + 2 * toks.size());
  EXPECT_EQ(raw.substr(0, 8), "FULCRTOK");
  EXPECT_EQ(static_cast<unsigned char>(raw[12]), 1);  // 257 = 0x0101
  EXPECT_EQ(static_cast<unsigned char>(raw[13]), 1);
  EXPECT_EQ(static_cast<unsigned char>(raw[24]), toks.size());
  EXPECT_EQ(static_cast<unsigned char>(raw[32 + 2 * 3]), 0);  // 256 low byte
  EXPECT_EQ(static_cast<unsigned char>(raw[32 + 2 * 3 + 1]), 1);
}

TEST(TokenFile, RoundTripUint32AndEmpty) {
  TempDir d;
  const std::string p = d.file("big.tok");
  const std::vector<std::int32_t> toks = {0, 65535, 65536, 100000, 99999};
  write_token_file(p, toks, 100001);
  EXPECT_EQ(read_token_header(p).bytes_per_token, 4u);
  EXPECT_EQ(read_tokens(p), toks);

  const std::string e = d.file("empty.tok");
  write_token_file(e, {}, 257);
  EXPECT_EQ(read_token_header(e).token_count, 0u);
  EXPECT_TRUE(read_tokens(e).empty());
}

TEST(TokenFile, OverwriteReplacesAtomically) {
  TempDir d;
  const std::string p = d.file("a.tok");
  write_token_file(p, {1, 2, 3}, 257);
  write_token_file(p, {4}, 257);
  EXPECT_EQ(read_tokens(p), std::vector<std::int32_t>{4});
}

TEST(TokenFile, MissingFileNamesPath) {
  TempDir d;
  const std::string p = d.file("nope.tok");
  expect_data_error([&] { read_token_header(p); }, {p, "cannot open"});
  expect_data_error([&] { read_tokens(p); }, {p});
}

TEST(TokenFile, BadMagicNamesPath) {
  TempDir d;
  const std::string p = d.file("bad.tok");
  write_token_file(p, {1, 2}, 257);
  std::string raw = fulcrum_test::read_bytes(p);
  raw[0] = 'X';
  fulcrum_test::write_bytes(p, raw);
  expect_data_error([&] { read_token_header(p); }, {p, "bad magic"});
}

TEST(TokenFile, BadVersionNamesPath) {
  TempDir d;
  const std::string p = d.file("v.tok");
  write_token_file(p, {1, 2}, 257);
  std::string raw = fulcrum_test::read_bytes(p);
  raw[8] = 2;
  fulcrum_test::write_bytes(p, raw);
  expect_data_error([&] { read_token_header(p); }, {p, "version 2"});
}

TEST(TokenFile, TruncatedNamesPath) {
  TempDir d;
  const std::string p = d.file("t.tok");
  write_token_file(p, {1, 2, 3, 4}, 257);
  const std::string raw = fulcrum_test::read_bytes(p);
  // Short header.
  fulcrum_test::write_bytes(p, raw.substr(0, 20));
  expect_data_error([&] { read_token_header(p); }, {p, "too short"});
  // Payload shorter than token_count says.
  fulcrum_test::write_bytes(p, raw.substr(0, raw.size() - 1));
  expect_data_error([&] { read_token_header(p); }, {p, "size mismatch"});
  // Trailing garbage is a mismatch too.
  fulcrum_test::write_bytes(p, raw + "xy");
  expect_data_error([&] { read_tokens(p); }, {p, "size mismatch"});
}

TEST(TokenFile, TokenRangeCheckedOnRead) {
  TempDir d;
  const std::string p = d.file("r.tok");
  write_token_file(p, {5, 6, 7}, 257);
  std::string raw = fulcrum_test::read_bytes(p);
  raw[32 + 2 * 2] = static_cast<char>(0x01);  // token 2 -> 257 (0x0101)
  raw[32 + 2 * 2 + 1] = static_cast<char>(0x01);
  fulcrum_test::write_bytes(p, raw);
  EXPECT_NO_THROW(read_token_header(p));  // the header alone is fine
  expect_data_error([&] { read_tokens(p); }, {p, "index 2", "257"});
}

TEST(TokenFile, WriteRejectsOutOfRangeAndLeavesNothing) {
  TempDir d;
  const std::string p = d.file("w.tok");
  expect_data_error([&] { write_token_file(p, {1, 257}, 257); }, {p, "index 1"});
  expect_data_error([&] { write_token_file(p, {-1}, 257); }, {p, "index 0"});
  EXPECT_FALSE(fulcrum_test::exists(p));
  EXPECT_FALSE(fulcrum_test::exists(p + ".tmp"));
  expect_data_error([&] { write_token_file(d.file("no/such/dir.tok"), {1}, 257); },
                    {"no/such/dir.tok"});
}
