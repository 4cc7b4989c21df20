#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "data/byte_tokenizer.hpp"

using namespace fulcrum;

TEST(ByteTokenizer, AllByteValuesRoundTrip) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const auto t = byte_encode(all);
  ASSERT_EQ(t.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(t[b], b);
  EXPECT_EQ(byte_decode(t), all);
}

TEST(ByteTokenizer, Utf8RoundTrip) {
  const std::string s = u8"In the beginning — “God” אֱלֹהִ֑ים μονογενη 日本語 🙂\n";
  const auto t = byte_encode(s);
  EXPECT_EQ(t.size(), s.size());  // one token per byte, not per code point
  for (auto v : t) {
    EXPECT_GE(v, 0);
    EXPECT_LT(v, 256);
  }
  EXPECT_EQ(byte_decode(t), s);
}

TEST(ByteTokenizer, EodDecodesToNothing) {
  EXPECT_EQ(kByteVocabSize, 257);
  EXPECT_EQ(kByteEodToken, 256);
  auto t = byte_encode("ab");
  t.push_back(kByteEodToken);
  const auto u = byte_encode("c");
  t.insert(t.end(), u.begin(), u.end());
  t.push_back(kByteEodToken);
  EXPECT_EQ(byte_decode(t), "abc");
  EXPECT_TRUE(byte_encode("").empty());
  EXPECT_THROW(byte_decode({257}), std::invalid_argument);
  EXPECT_THROW(byte_decode({-1}), std::invalid_argument);
}
