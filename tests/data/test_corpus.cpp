#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>
#include <sys/wait.h>
#include <vector>

#include "data/byte_tokenizer.hpp"
#include "data/corpus.hpp"
#include "data/token_file.hpp"
#include "test_util.hpp"

using namespace fulcrum;
using fulcrum_test::TempDir;

namespace {

// Splits a token stream at EOD into decoded documents.
std::vector<std::string> docs_of(const std::vector<std::int32_t>& toks) {
  std::vector<std::string> out;
  std::vector<std::int32_t> cur;
  for (auto t : toks) {
    if (t == kByteEodToken) {
      out.push_back(byte_decode(cur));
      cur.clear();
    } else {
      cur.push_back(t);
    }
  }
  EXPECT_TRUE(cur.empty()) << "stream does not end with EOD";
  return out;
}

std::string doc_text(int i) { return "Document " + std::to_string(i) + " line one.\nline two\n"; }

}  // namespace

TEST(Corpus, SplitDocumentsOnFormFeedLines) {
  const std::string text = "a\nb\n\f\nc\n\f\r\n\n\f\n  \n\f\nd \fnot a separator\n\f";
  const auto d = split_documents(text);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0], "a\nb\n");
  EXPECT_EQ(d[1], "c\n");
  EXPECT_EQ(d[2], "d \fnot a separator\n");
  EXPECT_TRUE(split_documents("").empty());
  EXPECT_TRUE(split_documents("\f\n\f\n").empty());
  EXPECT_EQ(split_documents("no newline at end").at(0), "no newline at end");
}

TEST(Corpus, TokenizerRegistry) {
  EXPECT_EQ(find_tokenizer("byte").vocab_size, 257u);
  EXPECT_EQ(find_tokenizer("byte").eod, 256);
  try {
    find_tokenizer("bpe");
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("bpe"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("byte"), std::string::npos);
  }
}

TEST(Corpus, EncoderSplitsByDocument) {
  CorpusEncoder enc(find_tokenizer("byte"), 3);
  for (int i = 0; i < 10; ++i) enc.add_document(doc_text(i));
  const auto& r = enc.result();
  EXPECT_EQ(r.valid_docs, 3u);  // documents 2, 5, 8
  EXPECT_EQ(r.train_docs, 7u);
  const auto v = docs_of(r.valid);
  const auto t = docs_of(r.train);
  EXPECT_EQ(v, (std::vector<std::string>{doc_text(2), doc_text(5), doc_text(8)}));
  EXPECT_EQ(t, (std::vector<std::string>{doc_text(0), doc_text(1), doc_text(3), doc_text(4),
                                         doc_text(6), doc_text(7), doc_text(9)}));
  EXPECT_THROW(CorpusEncoder(find_tokenizer("byte"), 0), DataError);
}

#ifdef FULCRUM_DATA_EXE
namespace {

struct CmdResult {
  int rc;
  std::string out;
};

CmdResult run(const std::string& args) {
  const std::string cmd = std::string("'") + FULCRUM_DATA_EXE + "' " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace

TEST(FulcrumDataCli, EncodeSplitsByDocumentAcrossFiles) {
  TempDir d;
  // 7 documents in file a, 5 in file b (the last without a trailing separator).
  std::string a, b;
  for (int i = 0; i < 7; ++i) a += doc_text(i) + "\f\n";
  for (int i = 7; i < 12; ++i) b += (i > 7 ? "\f\n" : "") + doc_text(i);
  fulcrum_test::write_bytes(d.file("a.txt"), a);
  fulcrum_test::write_bytes(d.file("b.txt"), b);
  const auto r = run("encode --input " + d.file("a.txt") + " " + d.file("b.txt") +
                     " --train-out " + d.file("train.tok") + " --valid-out " +
                     d.file("valid.tok") + " --valid-every 4");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("documents = 12 (train 9, valid 3)"), std::string::npos) << r.out;
  const auto v = docs_of(read_tokens(d.file("valid.tok")));
  const auto t = docs_of(read_tokens(d.file("train.tok")));
  EXPECT_EQ(v, (std::vector<std::string>{doc_text(3), doc_text(7), doc_text(11)}));
  ASSERT_EQ(t.size(), 9u);
  EXPECT_EQ(t.front(), doc_text(0));
  EXPECT_EQ(t.back(), doc_text(10));
  EXPECT_EQ(read_token_header(d.file("train.tok")).vocab_size, 257u);

  const auto info = run("info " + d.file("valid.tok"));
  ASSERT_EQ(info.rc, 0) << info.out;
  EXPECT_NE(info.out.find("vocab_size = 257\n"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("bytes_per_token = 2\n"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("token_count = " + std::to_string(v.size() + doc_text(3).size() +
                                                            doc_text(7).size() +
                                                            doc_text(11).size())),
            std::string::npos)
      << info.out;
}

TEST(FulcrumDataCli, DefaultValidEveryIs50) {
  TempDir d;
  std::string a;
  for (int i = 0; i < 100; ++i) a += doc_text(i) + "\f\n";
  fulcrum_test::write_bytes(d.file("a.txt"), a);
  const auto r = run("encode --input " + d.file("a.txt") + " --train-out " +
                     d.file("t.tok") + " --valid-out " + d.file("v.tok"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(docs_of(read_tokens(d.file("v.tok"))),
            (std::vector<std::string>{doc_text(49), doc_text(99)}));
}

TEST(FulcrumDataCli, ErrorsExit2AndWriteNothing) {
  TempDir d;
  fulcrum_test::write_bytes(d.file("ok.txt"), doc_text(0) + "\f\n" + doc_text(1));
  fulcrum_test::write_bytes(d.file("blank.txt"), "\n\f\n  \n");
  const std::string outs =
      " --train-out " + d.file("t.tok") + " --valid-out " + d.file("v.tok");

  auto r = run("encode --input " + d.file("ok.txt") + " " + d.file("missing.txt") + outs);
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("missing.txt"), std::string::npos) << r.out;

  r = run("encode --input " + d.file("blank.txt") + outs);
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("empty corpus"), std::string::npos) << r.out;

  r = run("encode --input " + d.file("ok.txt") + outs + " --tokenizer gpt2");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("gpt2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("valid: byte"), std::string::npos) << r.out;

  // Fewer documents than --valid-every: no validation split.
  r = run("encode --input " + d.file("ok.txt") + outs);
  EXPECT_EQ(r.rc, 2) << r.out;

  r = run("encode --input " + d.file("ok.txt"));  // missing required options
  EXPECT_EQ(r.rc, 2) << r.out;
  r = run("");  // no subcommand
  EXPECT_EQ(r.rc, 2) << r.out;
  r = run("info " + d.file("missing.tok"));
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("missing.tok"), std::string::npos) << r.out;

  EXPECT_FALSE(fulcrum_test::exists(d.file("t.tok")));
  EXPECT_FALSE(fulcrum_test::exists(d.file("v.tok")));
  EXPECT_EQ(run("--help").rc, 0);
}
#endif
