// fulcrum-data build, the bpe tokenizer and MixtureDataset on small fixture
// text written by the tests (doc/data.md).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/bpe_tokenizer.hpp"
#include "data/byte_tokenizer.hpp"
#include "data/corpus_build.hpp"
#include "data/hash.hpp"
#include "data/mixture_dataset.hpp"
#include "data/text_clean.hpp"
#include "data/token_file.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using fulcrum_test::TempDir;
using fulcrum_test::write_bytes;
using fulcrum_test::read_bytes;

namespace {

// Deterministic pseudo text.
struct Lcg {
  std::uint64_t s;
  std::uint64_t next() { return s = s * 6364136223846793005ull + 1442695040888963407ull, s >> 33; }
};

const char* kWords[] = {"the", "and", "of", "light", "water", "over", "earth", "said", "unto",
                        "king", "house", "city", "day", "night", "people", "voice", "great",
                        "small", "river", "stone", "fire", "wind", "heart", "hand", "word"};

std::vector<std::string> prose_docs(int n, std::uint64_t seed) {
  Lcg r{seed};
  std::vector<std::string> docs;
  for (int d = 0; d < n; ++d) {
    std::string t = "Chapter " + std::to_string(d + 1) + "\n";
    const int lines = 3 + static_cast<int>(r.next() % 5);
    for (int l = 0; l < lines; ++l) {
      std::string line;
      const int words = 5 + static_cast<int>(r.next() % 12);
      for (int w = 0; w < words; ++w) {
        std::string word = kWords[r.next() % (sizeof kWords / sizeof *kWords)];
        if (w == 0) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
        line += (w ? " " : "") + word;
      }
      line += (r.next() % 3 == 0) ? "; “quoted” — é!" : ".";
      t += line + "\n";
    }
    docs.push_back(t);
  }
  return docs;
}

std::vector<std::string> gloss_docs(int n, std::uint64_t seed) {
  Lcg r{seed};
  std::vector<std::string> docs;
  for (int d = 0; d < n; ++d) {
    std::string t;
    for (int l = 0; l < 6; ++l) {
      t += std::string(kWords[r.next() % 25]) + ", " + kWords[r.next() % 25] + ": a " +
           kWords[r.next() % 25] + " of the " + kWords[r.next() % 25] + " (" +
           std::to_string(r.next() % 1000) + ")\n";
    }
    docs.push_back(t);
  }
  return docs;
}

std::vector<std::string> code_docs(int n, std::uint64_t seed) {
  Lcg r{seed};
  std::vector<std::string> docs;
  for (int d = 0; d < n; ++d) {
    std::string t = "def f" + std::to_string(d) + "(x, y=" + std::to_string(r.next() % 100) + "):\n";
    t += "    \"\"\"Return the " + std::string(kWords[r.next() % 25]) + " of x.\"\"\"\n";
    t += "    if x > y:\n        return x  # " + std::string(kWords[r.next() % 25]) + "\n";
    t += "\tfor i in range(10):\n\t\ty += i * 2\n";
    t += "    return {\"k\": [x, y], 'z': 3.14}\n";
    docs.push_back(t);
  }
  return docs;
}

std::string join_ff(const std::vector<std::string>& docs) {
  std::string t;
  for (std::size_t i = 0; i < docs.size(); ++i) t += (i ? "\f\n" : "") + docs[i];
  return t;
}

struct Fixture {
  TempDir dir;
  std::map<std::string, std::vector<std::string>> docs;  // group -> documents
  Fixture() {
    docs["books"] = prose_docs(120, 1);
    docs["reference"] = gloss_docs(80, 2);
    docs["code"] = code_docs(80, 3);
    write_bytes(dir.file("books.txt"), join_ff(docs["books"]));
    write_bytes(dir.file("glossary.txt"), join_ff(docs["reference"]));
    fs::create_directories(dir.file("src"));
    for (std::size_t i = 0; i < docs["code"].size(); ++i)
      write_bytes(dir.file("src/m" + std::to_string(1000 + i) + ".py"), docs["code"][i]);
  }
  std::string spec(const std::string& tokenizer, const std::string& extra_tokenizer = "",
                   const std::string& mixture = "books = 0.5\nreference = 0.3\ncode = 0.2\n",
                   const std::string& extra_sources = "") const {
    std::string s = "[corpus]\nname = \"fixture\"\nvalid_fraction = 0.1\n\n[tokenizer]\ntype = \"" +
                    tokenizer + "\"\n" + extra_tokenizer +
                    "\n[[source]]\nname = \"prose\"\nkind = \"files\"\ngroup = \"books\"\n"
                    "paths = [\"books.txt\"]\nlicence = \"CC0 (test fixture)\"\n"
                    "\n[[source]]\nname = \"gloss\"\nkind = \"files\"\ngroup = \"reference\"\n"
                    "paths = [\"glossary.txt\"]\nlicence = \"CC0 (test fixture)\"\n"
                    "\n[[source]]\nname = \"code\"\nkind = \"files\"\ngroup = \"code\"\n"
                    "paths = [\"src/*.py\"]\ndocuments = \"file\"\nlicence = \"CC0 (test fixture)\"\n" +
                    extra_sources;
    if (!mixture.empty()) s += "\n[mixture]\n" + mixture;
    return s;
  }
  std::string write_spec(const std::string& name, const std::string& text) const {
    write_bytes(dir.file(name), text);
    return dir.file(name);
  }
  fulcrum::BuildStats build(const std::string& spec_path, const std::string& out) const {
    fulcrum::BuildOptions o;
    o.threads = 2;
    o.output = out;
    o.quiet = true;
    return fulcrum::build_corpus(fulcrum::parse_corpus_spec(spec_path), o);
  }
};

const std::string kBpe = "vocab_size = 400\n";

// Documents of a token stream (split at EOD).
std::vector<std::vector<std::int32_t>> split_eod(const std::vector<std::int32_t>& t, std::int32_t eod) {
  std::vector<std::vector<std::int32_t>> out(1);
  for (auto x : t) {
    if (x == eod) out.emplace_back();
    else out.back().push_back(x);
  }
  out.pop_back();  // after the final EOD
  return out;
}

void check_round_trip(const Fixture& fx, const std::string& out, const std::string& tok) {
  std::unique_ptr<fulcrum::BpeTokenizer> bpe;
  std::int32_t eod = fulcrum::kByteEodToken;
  if (tok == "bpe") {
    bpe = std::make_unique<fulcrum::BpeTokenizer>(fulcrum::BpeTokenizer::load(out + "/tokenizer.model"));
    eod = bpe->eod();
  }
  for (const auto& kv : fx.docs) {
    const std::set<std::string> want(kv.second.begin(), kv.second.end());
    std::size_t seen = 0;
    for (const char* split : {"train", "valid"}) {
      const auto toks = fulcrum::read_tokens(out + "/" + kv.first + "." + split + ".tok");
      for (const auto& d : split_eod(toks, eod)) {
        const std::string text = bpe ? bpe->decode(d) : fulcrum::byte_decode(d);
        EXPECT_TRUE(want.count(text)) << kv.first << ": decoded document not in the input:\n" << text;
        if (bpe) {
          // decode(encode(x)) == x, and the segmented encoder equals the plain one.
          EXPECT_EQ(bpe->encode(text), d);
          EXPECT_EQ(bpe->encode_whole(text), d);
        }
        ++seen;
      }
    }
    EXPECT_EQ(seen, want.size()) << kv.first;
  }
}

}  // namespace

TEST(CorpusBuild, BpeRoundTripOnEveryGroup) {
  if (!fulcrum::bpe_available()) GTEST_SKIP() << "built without sentencepiece";
  Fixture fx;
  const auto st = fx.build(fx.write_spec("s.toml", fx.spec("bpe", kBpe)), fx.dir.file("out"));
  EXPECT_GT(st.train_tokens, 0u);
  EXPECT_TRUE(fulcrum_test::exists(fx.dir.file("out/manifest.toml")));
  EXPECT_TRUE(fulcrum_test::exists(fx.dir.file("out/LICENSES.txt")));
  EXPECT_EQ(fulcrum::read_token_header(fx.dir.file("out/code.train.tok")).vocab_size, 400u);
  check_round_trip(fx, fx.dir.file("out"), "bpe");
  // Arbitrary text, including characters never seen in training (byte fallback).
  const auto tok = fulcrum::BpeTokenizer::load(fx.dir.file("out/tokenizer.model"));
  for (const std::string& s : {std::string("  leading spaces\n\n\ttab  two  spaces \n"),
                              std::string("日本語のテキスト ☃ \xF0\x9F\x98\x80 Ωmega"),
                              std::string("x"), std::string("\n"), std::string("   ")}) {
    EXPECT_EQ(tok.decode(tok.encode(s)), s);
    EXPECT_EQ(tok.encode(s), tok.encode_whole(s));
  }
}

TEST(CorpusBuild, ByteRoundTripOnEveryGroup) {
  Fixture fx;
  fx.build(fx.write_spec("s.toml", fx.spec("byte")), fx.dir.file("out"));
  EXPECT_EQ(fulcrum::read_token_header(fx.dir.file("out/books.train.tok")).vocab_size, 257u);
  EXPECT_FALSE(fulcrum_test::exists(fx.dir.file("out/tokenizer.model")));
  check_round_trip(fx, fx.dir.file("out"), "byte");
}

TEST(CorpusBuild, IdenticalAcrossTwoBuilds) {
  Fixture fx;
  const std::string tok = fulcrum::bpe_available() ? "bpe" : "byte";
  const std::string spec = fx.write_spec("s.toml", fx.spec(tok, tok == "bpe" ? kBpe : ""));
  fx.build(spec, fx.dir.file("a"));
  fx.build(spec, fx.dir.file("b"));
  EXPECT_EQ(read_bytes(fx.dir.file("a/manifest.toml")), read_bytes(fx.dir.file("b/manifest.toml")));
  for (const char* g : {"books", "reference", "code"})
    for (const char* s : {"train", "valid"}) {
      const std::string f = std::string(g) + "." + s + ".tok";
      EXPECT_EQ(fulcrum::fnv1a64_file(fx.dir.file("a/" + f)), fulcrum::fnv1a64_file(fx.dir.file("b/" + f))) << f;
    }
  // The manifest records those checksums.
  const std::string m = read_bytes(fx.dir.file("a/manifest.toml"));
  EXPECT_NE(m.find(fulcrum::hex64(fulcrum::fnv1a64_file(fx.dir.file("a/books.train.tok")))), std::string::npos);
  // Rebuilding over a previous build replaces it.
  fx.build(spec, fx.dir.file("a"));
  EXPECT_EQ(read_bytes(fx.dir.file("a/manifest.toml")), m);
}

TEST(CorpusBuild, DuplicatesRemovedAndSplitByDocument) {
  Fixture fx;
  // The same prose file twice under another name: every document is a duplicate.
  const std::string extra =
      "\n[[source]]\nname = \"prose-again\"\nkind = \"files\"\ngroup = \"books\"\n"
      "paths = [\"books.txt\"]\nlicence = \"CC0\"\n";
  const auto st = fx.build(fx.write_spec("s.toml", fx.spec("byte", "", "books = 1\n", extra)), fx.dir.file("out"));
  EXPECT_EQ(st.duplicates, fx.docs["books"].size());
  EXPECT_EQ(st.documents, fx.docs["books"].size() + fx.docs["reference"].size() + fx.docs["code"].size());
  check_round_trip(fx, fx.dir.file("out"), "byte");  // whole documents on both sides
}

TEST(MixtureDataset, ProportionsDeterminismAndShift) {
  Fixture fx;
  fx.build(fx.write_spec("s.toml", fx.spec("byte")), fx.dir.file("out"));
  const std::map<std::string, double> w = {{"books", 0.5}, {"reference", 0.3}, {"code", 0.2}};
  const int T = 16;
  fulcrum::MixtureDataset ds(fx.dir.file("out/manifest.toml"), w, T);
  EXPECT_EQ(ds.vocab_size(), 257);
  ASSERT_EQ(ds.group_names(), (std::vector<std::string>{"books", "code", "reference"}));
  // Group draw over a long sample: within 1% (relative) of each weight.
  std::vector<double> count(3, 0.0), ecount(3, 0.0);
  const std::int64_t n = 2000000;
  for (std::int64_t r = 0; r < n; ++r) count[static_cast<std::size_t>(ds.training_row_group(7, r / 64, r % 64))] += 1;
  const std::int64_t ne = 100000;
  for (std::int64_t r = 0; r < ne; ++r) ecount[static_cast<std::size_t>(ds.eval_row_group(r))] += 1;
  for (std::size_t g = 0; g < 3; ++g) {
    const double want = w.at(ds.group_names()[g]);
    EXPECT_NEAR(count[g] / n, want, 0.01 * want) << ds.group_names()[g];
    EXPECT_NEAR(ecount[g] / ne, want, 0.01 * want) << ds.group_names()[g];
  }
  // Rows are a pure function of (seed, step, row): any split gives the same rows.
  std::vector<int> a_in, a_tg, b_in, b_tg, c_in, c_tg;
  ds.training_rows(7, 3, 0, 8, a_in, a_tg);
  ds.training_rows(7, 3, 0, 3, b_in, b_tg);
  ds.training_rows(7, 3, 3, 5, c_in, c_tg);
  b_in.insert(b_in.end(), c_in.begin(), c_in.end());
  b_tg.insert(b_tg.end(), c_tg.begin(), c_tg.end());
  EXPECT_EQ(a_in, b_in);
  EXPECT_EQ(a_tg, b_tg);
  ASSERT_EQ(a_in.size(), 8u * T);
  for (int r = 0; r < 8; ++r)
    for (int t = 0; t + 1 < T; ++t) EXPECT_EQ(a_tg[r * T + t], a_in[r * T + t + 1]);
  ds.training_rows(8, 3, 0, 8, c_in, c_tg);
  EXPECT_NE(a_in, c_in);  // another seed, other rows
  // A row's window lies in its group's train tokens.
  const auto code = fulcrum::read_tokens(fx.dir.file("out/code.train.tok"));
  for (std::int64_t r = 0; r < 200; ++r) {
    if (ds.group_names()[static_cast<std::size_t>(ds.training_row_group(7, 3, r))] != "code") continue;
    ds.training_rows(7, 3, r, 1, c_in, c_tg);
    std::vector<std::int32_t> row(c_in.begin(), c_in.end());
    EXPECT_NE(std::search(code.begin(), code.end(), row.begin(), row.end()), code.end());
  }
  // Eval rows: deterministic, shifted, from the valid files.
  ds.eval_rows(0, 4, a_in, a_tg);
  ds.eval_rows(0, 4, b_in, b_tg);
  EXPECT_EQ(a_in, b_in);
  for (int t = 0; t + 1 < T; ++t) EXPECT_EQ(a_tg[t], a_in[t + 1]);
  EXPECT_GT(ds.eval_row_count(1000), 0);
  EXPECT_LE(ds.eval_row_count(1000), (1000 + T - 1) / T);
  // The checksum depends on the weights.
  fulcrum::MixtureDataset ds2(fx.dir.file("out/manifest.toml"), {{"books", 1.0}}, T);
  EXPECT_NE(ds.spec_checksum(), ds2.spec_checksum());
  EXPECT_EQ(ds.spec_checksum(), fulcrum::MixtureDataset(fx.dir.file("out/manifest.toml"), w, T).spec_checksum());
  // Bad weights.
  EXPECT_THROW(fulcrum::MixtureDataset(fx.dir.file("out/manifest.toml"), {{"books", 0.0}}, T), fulcrum::DataError);
  EXPECT_THROW(fulcrum::MixtureDataset(fx.dir.file("out/manifest.toml"), {{"nope", 1.0}}, T), fulcrum::DataError);
  EXPECT_THROW(fulcrum::MixtureDataset(fx.dir.file("out/manifest.toml"), {{"books", -1.0}, {"code", 2.0}}, T),
               fulcrum::DataError);
}

// ---- bad specs: clear errors, nothing written ----

namespace {

std::string build_error(const Fixture& fx, const std::string& spec_text) {
  const std::string spec = fx.write_spec("bad.toml", spec_text);
  try {
    fx.build(spec, fx.dir.file("out"));
  } catch (const fulcrum::DataError& e) {
    return e.what();
  }
  return "";
}

// Nothing but the fixture's own files in the directory.
void expect_nothing_written(const Fixture& fx) {
  EXPECT_FALSE(fulcrum_test::exists(fx.dir.file("out")));
  for (const auto& e : fs::directory_iterator(fx.dir.path()))
    EXPECT_EQ(e.path().filename().string().find("out"), std::string::npos) << e.path();
}

}  // namespace

TEST(CorpusBuildErrors, UnknownSource) {
  Fixture fx;
  const std::string msg = build_error(fx, fx.spec("byte", "", "", "\n[[source]]\nname = \"enwik9\"\n"));
  EXPECT_NE(msg.find("unknown source 'enwik9'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("go-stdlib"), std::string::npos) << msg;  // lists the valid ones
  expect_nothing_written(fx);
}

TEST(CorpusBuildErrors, MissingPackageNamesIt) {
  Fixture fx;
  const std::string msg = build_error(
      fx, fx.spec("byte", "", "", "\n[[source]]\nname = \"fortunes\"\nroot = \"/nonexistent/fortunes\"\n"));
  EXPECT_NE(msg.find("apt-get install fortunes"), std::string::npos) << msg;
  expect_nothing_written(fx);
  const std::string msg2 = build_error(
      fx, fx.spec("byte", "", "", "\n[[source]]\nname = \"go\"\nkind = \"go-stdlib\"\nroot = \"/nonexistent\"\n"));
  EXPECT_NE(msg2.find("apt-get install golang-1.19-src"), std::string::npos) << msg2;
  expect_nothing_written(fx);
}

TEST(CorpusBuildErrors, WeightsNotPositive) {
  Fixture fx;
  std::string msg = build_error(fx, fx.spec("byte", "", "books = 0\nreference = 0\ncode = 0\n"));
  EXPECT_NE(msg.find("sum to a positive value"), std::string::npos) << msg;
  msg = build_error(fx, fx.spec("byte", "", "books = -1\nreference = 0.5\n"));
  EXPECT_NE(msg.find("must be finite and >= 0"), std::string::npos) << msg;
  msg = build_error(fx, fx.spec("byte", "", "books = 1\nwiki = 1\n"));
  EXPECT_NE(msg.find("group 'wiki'"), std::string::npos) << msg;
  expect_nothing_written(fx);
}

TEST(CorpusBuildErrors, VocabLargerThanDataSupports) {
  if (!fulcrum::bpe_available()) GTEST_SKIP() << "built without sentencepiece";
  Fixture fx;
  const std::string msg = build_error(fx, fx.spec("bpe", "vocab_size = 30000\n"));
  EXPECT_NE(msg.find("larger than the data supports"), std::string::npos) << msg;
  expect_nothing_written(fx);
  EXPECT_NE(build_error(fx, fx.spec("byte", "vocab_size = 4096\n")).find("257"), std::string::npos);
}

#ifdef FULCRUM_DATA_EXE
TEST(CorpusBuildErrors, CliExitsTwoAndWritesNothing) {
  Fixture fx;
  const std::string spec = fx.write_spec("bad.toml", fx.spec("byte", "", "", "\n[[source]]\nname = \"enwik9\"\n"));
  const std::string cmd = std::string("'") + FULCRUM_DATA_EXE + "' build '" + spec + "' --out '" +
                          fx.dir.file("out") + "' 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = ::pclose(p);
  EXPECT_EQ(WIFEXITED(st) ? WEXITSTATUS(st) : -1, 2) << out;
  EXPECT_NE(out.find("fulcrum-data: error: "), std::string::npos) << out;
  EXPECT_NE(out.find("unknown source 'enwik9'"), std::string::npos) << out;
  expect_nothing_written(fx);
}
#endif

TEST(TextClean, CleanDocumentAndPod) {
  EXPECT_EQ(fulcrum::clean_document("a \r\nb\t\n\n\n\n\nc\f\x01\n   \n"), "a\nb\n\n\nc\n");
  EXPECT_EQ(fulcrum::clean_document("  \n \t\n"), "");
  EXPECT_EQ(fulcrum::clean_document("bad \xff byte"), "bad \xEF\xBF\xBD byte\n");
  EXPECT_EQ(fulcrum::pod_to_text("=head1 NAME\n\nB<perl> - the C<< $x->y >> E<gt> L<text|perlfunc>\n\n=cut\n"),
            "NAME\n\nperl - the $x->y > text\n");
  const auto ch = fulcrum::osis_imp_to_chapters(
      "$$$Gen 1:1\n<title>Creation</title>In the beginning<note>fn</note> God created.\n$$$Gen 1:2\nThe earth.\n"
      "$$$Gen 2:1\nNext &amp; more.\n");
  ASSERT_EQ(ch.size(), 2u);
  EXPECT_EQ(ch[0], "Creation\nIn the beginning God created. The earth.\n");
  EXPECT_EQ(ch[1], "Next & more.\n");
}
