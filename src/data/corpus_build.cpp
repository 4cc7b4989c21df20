#include "data/corpus_build.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_set>
#include <toml.hpp>

#include "data/bpe_tokenizer.hpp"
#include "data/byte_tokenizer.hpp"
#include "data/corpus.hpp"
#include "data/hash.hpp"
#include "data/token_file.hpp"

namespace fs = std::filesystem;

namespace fulcrum {

std::uint64_t fnv1a64_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError("cannot open '" + path + "' for its checksum");
  std::uint64_t h = kFnvOffset;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = fnv1a64(std::string_view(buf.data(), static_cast<std::size_t>(in.gcount())), h);
  }
  return h;
}

namespace {

using Clock = std::chrono::steady_clock;
double secs(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError("cannot open spec '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double number(const toml::value& v, const std::string& where) {
  if (v.is_floating()) return v.as_floating();
  if (v.is_integer()) return static_cast<double>(v.as_integer());
  throw DataError(where + " must be a number");
}
std::int64_t integer(const toml::value& v, const std::string& where) {
  if (v.is_integer()) return v.as_integer();
  throw DataError(where + " must be an integer");
}
std::string string(const toml::value& v, const std::string& where) {
  if (v.is_string()) return v.as_string().str;
  throw DataError(where + " must be a string");
}

void check_keys(const toml::value& t, const std::string& where, const std::set<std::string>& known) {
  for (const auto& kv : t.as_table())
    if (!known.count(kv.first)) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw DataError(where + ": unknown key '" + kv.first + "' (valid: " + list + ")");
    }
}

bool valid_group_name(const std::string& g) {
  if (g.empty() || g.size() > 64) return false;
  for (char c : g)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) ||
          c == '_' || c == '-'))
      return false;
  return true;
}

std::string absolute_from(const std::string& base_dir, const std::string& p) {
  if (!p.empty() && p[0] == '/') return p;
  return base_dir + "/" + p;
}

std::string toml_str(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"') o += "\\\"";
    else if (c == '\\') o += "\\\\";
    else if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else o.push_back(static_cast<char>(c));
  }
  return o + "\"";
}

std::string fmt_double(double d) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", d);
  std::string s = b;
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string fixed2(double d) {
  char b[64];
  std::snprintf(b, sizeof b, "%.2f", d);
  return b;
}

// Runs f(i) for i in [0, n) on `threads` threads (work stealing by index).
template <class F>
void parallel_for(std::size_t n, int threads, F f) {
  const int t = std::max(1, std::min<int>(threads, static_cast<int>(n)));
  std::atomic<std::size_t> next{0};
  std::vector<std::exception_ptr> errs(static_cast<std::size_t>(t));
  auto work = [&](int w) {
    try {
      for (std::size_t i; (i = next.fetch_add(1)) < n;) f(i, w);
    } catch (...) {
      errs[static_cast<std::size_t>(w)] = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < t; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& th : pool) th.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
}

struct Doc {
  const std::string* text;
  std::uint64_t hash;
  std::size_t source;
};

struct GroupOut {
  std::string name;
  std::vector<Doc> train, valid;
  std::vector<std::string> sources;
  std::uint64_t bytes = 0;
  std::vector<std::int32_t> train_tokens, valid_tokens;
  std::string train_sum, valid_sum;
};

// Removes a directory tree we created (best effort).
void remove_tree(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace

CorpusSpec parse_corpus_spec(const std::string& path) {
  CorpusSpec s;
  s.path = path;
  s.text = read_file(path);
  toml::value root;
  try {
    root = toml::parse(path);
  } catch (const std::exception& e) {
    throw DataError("spec '" + path + "' is not valid TOML: " + e.what());
  }
  std::string dir = fs::absolute(fs::path(path)).parent_path().string();
  const std::string w = "spec '" + path + "'";
  check_keys(root, w, {"corpus", "tokenizer", "source", "mixture"});
  if (root.contains("corpus")) {
    const auto& c = root.at("corpus");
    if (!c.is_table()) throw DataError(w + ": [corpus] must be a table");
    check_keys(c, w + " [corpus]", {"name", "output", "valid_fraction", "seed"});
    if (c.contains("name")) s.name = string(c.at("name"), w + " corpus.name");
    if (c.contains("output")) s.output = absolute_from(dir, string(c.at("output"), w + " corpus.output"));
    if (c.contains("valid_fraction")) s.valid_fraction = number(c.at("valid_fraction"), w + " corpus.valid_fraction");
    if (c.contains("seed")) s.seed = static_cast<std::uint64_t>(integer(c.at("seed"), w + " corpus.seed"));
  }
  if (s.name.empty()) s.name = fs::path(path).stem().string();
  if (!(s.valid_fraction > 0.0 && s.valid_fraction < 0.5))
    throw DataError(w + ": corpus.valid_fraction must be in (0, 0.5) (got " + fmt_double(s.valid_fraction) + ")");
  bool vocab_given = false;
  if (root.contains("tokenizer")) {
    const auto& t = root.at("tokenizer");
    if (!t.is_table()) throw DataError(w + ": [tokenizer] must be a table");
    check_keys(t, w + " [tokenizer]", {"type", "vocab_size", "sample_bytes", "character_coverage"});
    if (t.contains("type")) s.tokenizer.type = string(t.at("type"), w + " tokenizer.type");
    if (t.contains("vocab_size")) {
      s.tokenizer.vocab_size = static_cast<int>(integer(t.at("vocab_size"), w + " tokenizer.vocab_size"));
      vocab_given = true;
    }
    if (t.contains("sample_bytes"))
      s.tokenizer.sample_bytes = static_cast<std::uint64_t>(integer(t.at("sample_bytes"), w + " tokenizer.sample_bytes"));
    if (t.contains("character_coverage"))
      s.tokenizer.character_coverage = number(t.at("character_coverage"), w + " tokenizer.character_coverage");
  }
  if (s.tokenizer.type == "byte") {
    if (vocab_given && s.tokenizer.vocab_size != static_cast<int>(kByteVocabSize))
      throw DataError(w + ": the byte tokenizer has vocab_size 257 (got " +
                      std::to_string(s.tokenizer.vocab_size) + ")");
    s.tokenizer.vocab_size = static_cast<int>(kByteVocabSize);
  } else if (s.tokenizer.type == "bpe") {
    if (s.tokenizer.vocab_size < 300 || s.tokenizer.vocab_size > 1000000)
      throw DataError(w + ": tokenizer.vocab_size must be in [300, 1000000] for bpe (got " +
                      std::to_string(s.tokenizer.vocab_size) + ")");
    if (s.tokenizer.sample_bytes < 1000)
      throw DataError(w + ": tokenizer.sample_bytes must be >= 1000");
    if (!(s.tokenizer.character_coverage > 0.9 && s.tokenizer.character_coverage <= 1.0))
      throw DataError(w + ": tokenizer.character_coverage must be in (0.9, 1]");
    if (!bpe_available())
      throw DataError(w + ": tokenizer \"bpe\" needs sentencepiece, and this fulcrum-data was built "
                      "without it (apt-get install libsentencepiece-dev, reconfigure and rebuild)");
  } else {
    throw DataError(w + ": unknown tokenizer.type '" + s.tokenizer.type + "' (valid: bpe, byte)");
  }
  if (!root.contains("source") || !root.at("source").is_array() || root.at("source").as_array().empty())
    throw DataError(w + ": no sources: add [[source]] tables");
  std::set<std::string> names, groups;
  std::size_t idx = 0;
  for (const auto& v : root.at("source").as_array()) {
    const std::string sw = w + " source #" + std::to_string(++idx);
    if (!v.is_table()) throw DataError(sw + " must be a table");
    check_keys(v, sw, {"name", "kind", "group", "root", "paths", "documents", "licence", "max_bytes"});
    SourceConfig c;
    if (!v.contains("name")) throw DataError(sw + ": missing name");
    c.name = string(v.at("name"), sw + " name");
    c.kind = v.contains("kind") ? string(v.at("kind"), sw + " kind") : c.name;
    const BuiltinSource* b = find_builtin_source(c.kind);
    if (!b && c.kind != "files") {
      std::string valid;
      for (const auto& x : builtin_sources()) valid += x.name + ", ";
      throw DataError(w + ": unknown source '" + c.kind + "' (valid: " + valid + "files)");
    }
    if (v.contains("group")) c.group = string(v.at("group"), sw + " group");
    else if (b) c.group = b->group;
    else throw DataError(sw + " ('" + c.name + "'): kind \"files\" needs a group");
    if (!valid_group_name(c.group))
      throw DataError(sw + ": group '" + c.group + "' must be 1-64 characters of a-z 0-9 _ -");
    if (v.contains("root")) c.root = absolute_from(dir, string(v.at("root"), sw + " root"));
    if (v.contains("paths")) {
      if (!v.at("paths").is_array()) throw DataError(sw + ": paths must be an array of strings");
      for (const auto& p : v.at("paths").as_array()) c.paths.push_back(absolute_from(dir, string(p, sw + " paths")));
    }
    if (v.contains("documents")) c.documents = string(v.at("documents"), sw + " documents");
    if (v.contains("licence")) c.licence = string(v.at("licence"), sw + " licence");
    if (v.contains("max_bytes")) {
      const auto m = integer(v.at("max_bytes"), sw + " max_bytes");
      if (m < 0) throw DataError(sw + ": max_bytes must be >= 0");
      c.max_bytes = static_cast<std::uint64_t>(m);
    }
    if (!names.insert(c.name).second) throw DataError(w + ": two sources are named '" + c.name + "'");
    groups.insert(c.group);
    s.sources.push_back(c);
  }
  if (root.contains("mixture")) {
    const auto& m = root.at("mixture");
    if (!m.is_table()) throw DataError(w + ": [mixture] must be a table of group = weight");
    for (const auto& kv : m.as_table()) {
      if (!groups.count(kv.first)) {
        std::string list;
        for (const auto& g : groups) list += (list.empty() ? "" : ", ") + g;
        throw DataError(w + ": [mixture] names group '" + kv.first + "', which no source is in (groups: " + list + ")");
      }
      const double x = number(kv.second, w + " mixture." + kv.first);
      if (!std::isfinite(x) || x < 0)
        throw DataError(w + ": mixture weight of '" + kv.first + "' must be finite and >= 0 (got " + fmt_double(x) + ")");
      s.weights[kv.first] = x;
    }
    for (const auto& g : groups) s.weights.emplace(g, 0.0);
  } else {
    for (const auto& g : groups) s.weights[g] = 1.0;
  }
  double sum = 0;
  for (const auto& kv : s.weights) sum += kv.second;
  if (!(sum > 0))
    throw DataError(w + ": the [mixture] weights must sum to a positive value (they sum to " + fmt_double(sum) + ")");
  return s;
}

BuildStats build_corpus(const CorpusSpec& spec, const BuildOptions& opt) {
  const auto t_start = Clock::now();
  BuildStats st;
  const std::string out_dir = !opt.output.empty() ? fs::absolute(opt.output).lexically_normal().string()
                              : spec.output;
  if (out_dir.empty())
    throw DataError("no output directory: set [corpus] output in the spec or pass --out");
  st.output = out_dir;
  auto say = [&](const std::string& m) {
    if (!opt.quiet) std::cout << m << std::endl;
  };
  // The output may be replaced only when it is a previous build or empty.
  if (fs::exists(out_dir)) {
    if (!fs::is_directory(out_dir)) throw DataError("output '" + out_dir + "' exists and is not a directory");
    if (!fs::exists(out_dir + "/manifest.toml") && !fs::is_empty(out_dir))
      throw DataError("output '" + out_dir + "' exists, is not empty and holds no manifest.toml: refusing to replace it");
  }
  for (const auto& s : spec.sources) check_source(s);

  // 1. Extract.
  auto t0 = Clock::now();
  std::vector<SourceText> texts(spec.sources.size());
  parallel_for(spec.sources.size(), opt.threads, [&](std::size_t i, int) {
    texts[i] = extract_source(spec.sources[i]);
  });
  st.extract_s = secs(t0);

  // 2. Exact duplicate removal (first occurrence in spec order wins), groups,
  //    train/valid split by document hash.
  std::unordered_set<std::string> seen;
  std::map<std::string, GroupOut> groups;
  std::vector<std::uint64_t> src_docs(texts.size()), src_dups(texts.size()), src_bytes(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    GroupOut& g = groups[spec.sources[i].group];
    g.name = spec.sources[i].group;
    g.sources.push_back(spec.sources[i].name);
    for (const auto& d : texts[i].documents) {
      const std::uint64_t h1 = fnv1a64(d);
      const std::uint64_t h2 = fnv1a64(d, 0x84222325cbf29ce4ull);
      std::string key(16, '\0');
      for (int k = 0; k < 8; ++k) {
        key[k] = static_cast<char>(h1 >> (8 * k));
        key[8 + k] = static_cast<char>(h2 >> (8 * k));
      }
      if (!seen.insert(key).second) {
        ++src_dups[i];
        continue;
      }
      ++src_docs[i];
      src_bytes[i] += d.size();
      g.bytes += d.size();
      const Doc doc{&d, h1, i};
      const bool valid = unit_double(splitmix64(h1 ^ splitmix64(spec.seed))) < spec.valid_fraction;
      (valid ? g.valid : g.train).push_back(doc);
    }
  }
  for (auto& kv : groups) {
    GroupOut& g = kv.second;
    if (g.train.size() + g.valid.size() < 2)
      throw DataError("group '" + g.name + "' has " + std::to_string(g.train.size() + g.valid.size()) +
                      " document(s) after cleaning and deduplication; need at least 2 (one train, one valid)");
    if (g.valid.empty()) {  // move the train document with the smallest split hash
      std::size_t best = 0;
      for (std::size_t k = 1; k < g.train.size(); ++k)
        if (splitmix64(g.train[k].hash ^ splitmix64(spec.seed)) < splitmix64(g.train[best].hash ^ splitmix64(spec.seed)))
          best = k;
      g.valid.push_back(g.train[best]);
      g.train.erase(g.train.begin() + static_cast<std::ptrdiff_t>(best));
    }
    if (g.train.empty()) {
      g.train.push_back(g.valid.back());
      g.valid.pop_back();
    }
  }
  for (std::size_t i = 0; i < texts.size(); ++i) {
    st.documents += src_docs[i];
    st.duplicates += src_dups[i];
    st.text_bytes += src_bytes[i];
    say("source " + spec.sources[i].name + " (" + spec.sources[i].group + "): " + std::to_string(src_docs[i]) +
        " documents, " + std::to_string(src_bytes[i]) + " bytes, " + std::to_string(src_dups[i]) + " duplicates removed");
  }
  say("extracted " + std::to_string(st.text_bytes) + " bytes in " + fixed2(st.extract_s) + " s");

  // 3. Tokenizer.
  t0 = Clock::now();
  std::string model;
  std::unique_ptr<BpeTokenizer> bpe;
  std::uint32_t vocab = 257;
  std::int32_t eod = 256;
  if (spec.tokenizer.type == "bpe") {
    // Training lines: an equal share of sample_bytes per group, lines of
    // train documents kept with a hash-based probability.
    std::vector<std::string> lines;
    const double share = static_cast<double>(spec.tokenizer.sample_bytes) / static_cast<double>(groups.size());
    for (const auto& kv : groups) {
      const GroupOut& g = kv.second;
      std::uint64_t train_bytes = 0;
      for (const auto& d : g.train) train_bytes += d.text->size();
      const double keep = std::min(1.0, share / std::max<double>(1.0, static_cast<double>(train_bytes)));
      std::uint64_t n = 0;
      for (const auto& d : g.train) {
        std::string_view t(*d.text);
        std::size_t p = 0;
        while (p < t.size()) {
          std::size_t nl = t.find('\n', p);
          if (nl == std::string_view::npos) nl = t.size();
          const std::string_view line = t.substr(p, nl - p);
          p = nl + 1;
          ++n;
          if (line.empty()) continue;
          if (keep < 1.0 && unit_double(splitmix64(d.hash + n)) >= keep) continue;
          lines.emplace_back(line);
        }
      }
    }
    say("training bpe tokenizer (vocab_size " + std::to_string(spec.tokenizer.vocab_size) + ") on " +
        std::to_string(lines.size()) + " lines");
    BpeTrainOptions o;
    o.vocab_size = spec.tokenizer.vocab_size;
    o.threads = opt.threads;
    o.character_coverage = spec.tokenizer.character_coverage;
    model = train_bpe_model(lines, o);
    bpe = std::make_unique<BpeTokenizer>(model);
    vocab = bpe->vocab_size();
    eod = bpe->eod();
  }
  st.tokenizer_s = secs(t0);
  if (bpe) say("trained the tokenizer in " + fixed2(st.tokenizer_s) + " s");

  // 4. Encode, in parallel over documents.
  t0 = Clock::now();
  std::vector<std::pair<GroupOut*, bool>> jobs;  // (group, valid)
  std::vector<const Doc*> all;
  std::vector<std::vector<std::int32_t>> enc;
  for (auto& kv : groups) {
    for (const auto& d : kv.second.train) all.push_back(&d);
    for (const auto& d : kv.second.valid) all.push_back(&d);
  }
  enc.resize(all.size());
  std::vector<BpeTokenizer::Cache> caches(static_cast<std::size_t>(std::max(1, opt.threads)));
  parallel_for(all.size(), opt.threads, [&](std::size_t i, int w) {
    const std::string& t = *all[i]->text;
    auto& out = enc[i];
    if (bpe) {
      out.reserve(t.size() / 3 + 2);
      bpe->encode(t, out, &caches[static_cast<std::size_t>(w)]);
    } else {
      out.reserve(t.size() + 1);
      for (char c : t) out.push_back(static_cast<unsigned char>(c));
    }
    out.push_back(eod);
  });
  st.encode_s = secs(t0);
  st.encode_mb_per_s = static_cast<double>(st.text_bytes) / 1e6 / std::max(1e-9, st.encode_s);
  {
    std::size_t k = 0;
    for (auto& kv : groups) {
      GroupOut& g = kv.second;
      for (std::size_t j = 0; j < g.train.size(); ++j, ++k) {
        g.train_tokens.insert(g.train_tokens.end(), enc[k].begin(), enc[k].end());
        std::vector<std::int32_t>().swap(enc[k]);
      }
      for (std::size_t j = 0; j < g.valid.size(); ++j, ++k) {
        g.valid_tokens.insert(g.valid_tokens.end(), enc[k].begin(), enc[k].end());
        std::vector<std::int32_t>().swap(enc[k]);
      }
      st.train_tokens += g.train_tokens.size();
      st.valid_tokens += g.valid_tokens.size();
    }
  }
  say("encoded " + std::to_string(st.train_tokens + st.valid_tokens) + " tokens in " +
      fixed2(st.encode_s) + " s (" +
      fixed2(st.encode_mb_per_s) + " MB/s of text, " +
      std::to_string(opt.threads) + " threads)");

  // 5. Write into a temporary sibling directory, then rename it into place.
  const fs::path outp(out_dir);
  if (!outp.parent_path().empty()) fs::create_directories(outp.parent_path());
  const std::string tmp = out_dir + ".tmp-" + std::to_string(::getpid());
  remove_tree(tmp);
  try {
    fs::create_directories(tmp);
    auto write_text = [&](const std::string& name, const std::string& body) {
      std::ofstream f(tmp + "/" + name, std::ios::binary);
      f << body;
      f.close();
      if (!f) throw DataError("cannot write '" + tmp + "/" + name + "'");
    };
    write_text("spec.toml", spec.text);
    std::string model_sum;
    if (bpe) {
      write_text("tokenizer.model", model);
      model_sum = hex64(fnv1a64(model));
    }
    for (auto& kv : groups) {
      GroupOut& g = kv.second;
      write_token_file(tmp + "/" + g.name + ".train.tok", g.train_tokens, vocab);
      write_token_file(tmp + "/" + g.name + ".valid.tok", g.valid_tokens, vocab);
      g.train_sum = hex64(fnv1a64_file(tmp + "/" + g.name + ".train.tok"));
      g.valid_sum = hex64(fnv1a64_file(tmp + "/" + g.name + ".valid.tok"));
    }
    std::ostringstream m, lic;
    m << "# Fulcrum corpus manifest, written by fulcrum-data build (doc/data.md).\n"
      << "format = 1\n"
      << "name = " << toml_str(spec.name) << "\n"
      << "spec = \"spec.toml\"\n"
      << "spec_fnv1a64 = " << toml_str(hex64(fnv1a64(spec.text))) << "\n"
      << "tokenizer = " << toml_str(spec.tokenizer.type) << "\n";
    if (bpe) m << "tokenizer_model = \"tokenizer.model\"\ntokenizer_fnv1a64 = " << toml_str(model_sum) << "\n";
    m << "vocab_size = " << vocab << "\n"
      << "eod = " << eod << "\n"
      << "valid_fraction = " << fmt_double(spec.valid_fraction) << "\n"
      << "seed = " << spec.seed << "\n"
      << "documents = " << st.documents << "\n"
      << "duplicates_removed = " << st.duplicates << "\n"
      << "text_bytes = " << st.text_bytes << "\n"
      << "train_tokens = " << st.train_tokens << "\n"
      << "valid_tokens = " << st.valid_tokens << "\n\n"
      << "[weights]\n";
    for (const auto& kv : spec.weights) m << kv.first << " = " << fmt_double(kv.second) << "\n";
    for (const auto& kv : groups) {
      const GroupOut& g = kv.second;
      m << "\n[[group]]\n"
        << "name = " << toml_str(g.name) << "\n"
        << "train = " << toml_str(g.name + ".train.tok") << "\n"
        << "valid = " << toml_str(g.name + ".valid.tok") << "\n"
        << "train_tokens = " << g.train_tokens.size() << "\n"
        << "valid_tokens = " << g.valid_tokens.size() << "\n"
        << "train_documents = " << g.train.size() << "\n"
        << "valid_documents = " << g.valid.size() << "\n"
        << "text_bytes = " << g.bytes << "\n"
        << "train_fnv1a64 = " << toml_str(g.train_sum) << "\n"
        << "valid_fnv1a64 = " << toml_str(g.valid_sum) << "\n"
        << "sources = [";
      for (std::size_t k = 0; k < g.sources.size(); ++k) m << (k ? ", " : "") << toml_str(g.sources[k]);
      m << "]\n";
    }
    lic << "Licence records of corpus '" << spec.name << "' (fulcrum-data build)\n";
    for (std::size_t i = 0; i < spec.sources.size(); ++i) {
      const SourceConfig& c = spec.sources[i];
      const SourceText& t = texts[i];
      const BuiltinSource* b = find_builtin_source(c.kind);
      m << "\n[[source]]\n"
        << "name = " << toml_str(c.name) << "\n"
        << "kind = " << toml_str(c.kind) << "\n"
        << "group = " << toml_str(c.group) << "\n"
        << "package = " << toml_str(t.package) << "\n"
        << "package_version = " << toml_str(t.package_version) << "\n"
        << "licence = " << toml_str(t.licence) << "\n"
        << "description = " << toml_str(b ? b->description : "user files") << "\n"
        << "files = " << t.files << "\n"
        << "documents = " << src_docs[i] << "\n"
        << "duplicates_removed = " << src_dups[i] << "\n"
        << "text_bytes = " << src_bytes[i] << "\n";
      lic << "\n" << c.name << " (group " << c.group << ")\n"
          << "  what:     " << (b ? b->description : "user files") << "\n"
          << "  package:  " << (t.package.empty() ? "-" : t.package + " " + t.package_version) << "\n"
          << "  licence:  " << t.licence << "\n";
    }
    write_text("manifest.toml", m.str());
    write_text("LICENSES.txt", lic.str());
    // Swap into place.
    std::string old;
    if (fs::exists(out_dir)) {
      old = out_dir + ".old-" + std::to_string(::getpid());
      remove_tree(old);
      fs::rename(out_dir, old);
    }
    fs::rename(tmp, out_dir);
    if (!old.empty()) remove_tree(old);
  } catch (const fs::filesystem_error& e) {
    remove_tree(tmp);
    throw DataError(std::string("writing the corpus failed: ") + e.what());
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  st.total_s = secs(t_start);
  return st;
}

}  // namespace fulcrum
