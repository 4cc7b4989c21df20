// fulcrum-data: build and inspect token files (doc/data-format.md).
//
//   fulcrum-data encode --input FILE... --train-out F --valid-out F
//                       [--valid-every N] [--tokenizer byte]
//   fulcrum-data info FILE [--check]
//   fulcrum-data build SPEC.toml [--out DIR] [--threads N] [--quiet]   (doc/data.md)
//   fulcrum-data sources                  list the built-in text sources
//
// Exit status: 0 success, 2 usage or data error (nothing is written).
#include <CLI/CLI.hpp>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "data/corpus.hpp"
#include "data/corpus_build.hpp"
#include "data/sources.hpp"
#include "data/token_file.hpp"

namespace {

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw fulcrum::DataError("cannot open input '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw fulcrum::DataError("cannot read input '" + path + "'");
  return ss.str();
}

int run_encode(const std::vector<std::string>& inputs, const std::string& train_out,
               const std::string& valid_out, std::uint64_t valid_every,
               const std::string& tokenizer) {
  using namespace fulcrum;
  const Tokenizer& tok = find_tokenizer(tokenizer);
  if (valid_every < 2)
    throw DataError("--valid-every must be >= 2 (got " + std::to_string(valid_every) +
                    "); 1 would leave no training documents");
  if (train_out == valid_out)
    throw DataError("--train-out and --valid-out are the same file '" + train_out + "'");
  // Read every input before writing anything.
  std::vector<std::string> texts;
  for (const auto& p : inputs) texts.push_back(read_whole_file(p));
  CorpusEncoder enc(tok, valid_every);
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const auto before = enc.documents();
    enc.add_text(texts[i]);
    std::cout << "input " << inputs[i] << ": " << (enc.documents() - before)
              << " documents, " << texts[i].size() << " bytes\n";
  }
  const CorpusSplit& s = enc.result();
  if (enc.documents() == 0)
    throw DataError("empty corpus: no non-blank documents in the input files");
  if (s.valid_docs == 0)
    throw DataError("no validation documents: the corpus has " +
                    std::to_string(enc.documents()) + " documents and --valid-every is " +
                    std::to_string(valid_every) + " (need at least that many documents)");
  write_token_file(train_out, s.train, tok.vocab_size);
  write_token_file(valid_out, s.valid, tok.vocab_size);
  std::cout << "tokenizer = " << tok.name << " (vocab_size " << tok.vocab_size << ")\n"
            << "documents = " << enc.documents() << " (train " << s.train_docs
            << ", valid " << s.valid_docs << ")\n"
            << "train_tokens = " << s.train.size() << " -> " << train_out << "\n"
            << "valid_tokens = " << s.valid.size() << " -> " << valid_out << "\n";
  return 0;
}

int run_info(const std::string& path, bool check) {
  using namespace fulcrum;
  const TokenFileHeader h = read_token_header(path);
  std::cout << "path = " << path << "\n"
            << "version = " << h.version << "\n"
            << "vocab_size = " << h.vocab_size << "\n"
            << "bytes_per_token = " << h.bytes_per_token << "\n"
            << "token_count = " << h.token_count << "\n";
  if (check) {
    const auto tokens = read_tokens(path);  // validates the range
    std::int32_t max_token = -1;
    for (auto t : tokens) max_token = t > max_token ? t : max_token;
    std::cout << "tokens_in_range = true\n"
              << "max_token = " << max_token << "\n";
  }
  return 0;
}

int run_build(const std::string& spec_path, const std::string& out, int threads, bool quiet) {
  using namespace fulcrum;
  if (threads < 1) throw DataError("--threads must be >= 1");
  const CorpusSpec spec = parse_corpus_spec(spec_path);
  BuildOptions opt;
  opt.threads = threads;
  opt.output = out;
  opt.quiet = quiet;
  const BuildStats st = build_corpus(spec, opt);
  std::cout << "output = " << st.output << "\n"
            << "documents = " << st.documents << " (" << st.duplicates << " duplicates removed)\n"
            << "text_bytes = " << st.text_bytes << "\n"
            << "train_tokens = " << st.train_tokens << "\n"
            << "valid_tokens = " << st.valid_tokens << "\n"
            << "extract_s = " << st.extract_s << "\n"
            << "tokenizer_s = " << st.tokenizer_s << "\n"
            << "encode_s = " << st.encode_s << "\n"
            << "encode_mb_per_s = " << st.encode_mb_per_s << "\n"
            << "total_s = " << st.total_s << "\n";
  return 0;
}

int run_sources() {
  using namespace fulcrum;
  for (const auto& b : builtin_sources()) {
    std::cout << b.name << "\n  group:   " << b.group << "\n  package: " << b.package;
    if (!b.tool_package.empty()) std::cout << " (+ " << b.tool_package << " for " << b.tool << ")";
    SourceConfig c;
    c.name = c.kind = b.name;
    std::string state = "installed";
    try {
      check_source(c);
    } catch (const DataError&) {
      state = "NOT installed";
    }
    std::cout << " [" << state << "]\n  licence: " << b.licence << "\n  text:    " << b.description << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fulcrum-data: build and inspect Fulcrum token files"};
  app.require_subcommand(1);

  std::vector<std::string> inputs;
  std::string train_out, valid_out, tokenizer = "byte";
  std::uint64_t valid_every = 50;
  auto* enc = app.add_subcommand("encode", "encode text corpora into train/valid token files");
  enc->add_option("--input", inputs, "corpus text files (documents separated by a line holding only \\f)")
      ->required()->expected(1, -1);
  enc->add_option("--train-out", train_out, "training token file to write")->required();
  enc->add_option("--valid-out", valid_out, "validation token file to write")->required();
  enc->add_option("--valid-every", valid_every,
                  "document i goes to valid when i % N == N-1")->capture_default_str();
  enc->add_option("--tokenizer", tokenizer, "tokenizer (valid: byte)")->capture_default_str();

  std::string info_path;
  bool check = false;
  auto* info = app.add_subcommand("info", "print a token file's header");
  info->add_option("file", info_path, "token file")->required();
  info->add_flag("--check", check, "also read every token and check its range");

  std::string spec_path, build_out;
  int threads = 2;
  bool quiet = false;
  auto* build = app.add_subcommand("build", "build a corpus (sources, tokenizer, token files, manifest) from a TOML spec");
  build->add_option("spec", spec_path, "corpus spec (input_decks/data/*.toml, doc/data.md)")->required();
  build->add_option("--out", build_out, "output directory (default: [corpus] output of the spec)");
  build->add_option("--threads", threads, "extraction / training / encoding threads")->capture_default_str();
  build->add_flag("--quiet", quiet, "print only the summary");
  auto* sources = app.add_subcommand("sources", "list the built-in text sources and whether they are installed");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    if (*enc) return run_encode(inputs, train_out, valid_out, valid_every, tokenizer);
    if (*info) return run_info(info_path, check);
    if (*build) return run_build(spec_path, build_out, threads, quiet);
    if (*sources) return run_sources();
  } catch (const std::exception& e) {
    std::cerr << "fulcrum-data: error: " << e.what() << "\n";
    return 2;
  }
  return 2;
}
