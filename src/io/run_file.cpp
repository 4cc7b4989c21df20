#include "io/run_file.hpp"

#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <limits>
#include <type_traits>
#include <utility>

namespace fulcrum {

static_assert(std::is_same<hid_t, std::int64_t>::value,
              "RunFile stores hid_t as int64_t (HDF5 >= 1.10)");

namespace {

// Silences HDF5's automatic error printing once per process; every failure
// becomes a RunFileError instead.
void silence_hdf5() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

herr_t walk_cb(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n == 0 && err && err->desc) *out = err->desc;  // innermost cause
  return 0;
}

// The innermost message of the current HDF5 error stack, if any.
std::string hdf5_detail() {
  std::string d;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &d);
  H5Eclear2(H5E_DEFAULT);
  return d.empty() ? std::string() : " (HDF5: " + d + ")";
}

[[noreturn]] void throw_err(const std::string& file, const std::string& what) {
  throw RunFileError("run file '" + file + "': " + what + hdf5_detail());
}

// Owns one HDF5 identifier; closes it with the matching H5*close.
class Hid {
 public:
  Hid() = default;
  Hid(hid_t id, herr_t (*closer)(hid_t)) : id_(id), close_(closer) {}
  ~Hid() { reset(); }
  Hid(Hid&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Checked constructors: throw naming file and object when the id is invalid.
Hid checked(hid_t id, herr_t (*closer)(hid_t), const std::string& file,
            const std::string& what) {
  if (id < 0) throw_err(file, what);
  return Hid(id, closer);
}
void check(herr_t rc, const std::string& file, const std::string& what) {
  if (rc < 0) throw_err(file, what);
}

Hid vlen_utf8_type(const std::string& file) {
  Hid t = checked(H5Tcopy(H5T_C_S1), H5Tclose, file, "H5Tcopy string type");
  check(H5Tset_size(t, H5T_VARIABLE), file, "H5Tset_size variable");
  check(H5Tset_cset(t, H5T_CSET_UTF8), file, "H5Tset_cset UTF-8");
  return t;
}

bool link_exists(hid_t loc, const std::string& name) {
  // H5Lexists on a path with missing intermediate groups fails; walk it.
  std::string cur;
  std::size_t pos = 0;
  while (pos <= name.size()) {
    std::size_t slash = name.find('/', pos);
    if (slash == std::string::npos) slash = name.size();
    const std::string part = name.substr(pos, slash - pos);
    if (!part.empty()) {
      cur += (cur.empty() && name[0] != '/' ? "" : "/") + part;
      const htri_t e = H5Lexists(loc, cur.c_str(), H5P_DEFAULT);
      if (e <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
      }
    }
    pos = slash + 1;
  }
  return true;
}

void mkdir_p(const std::string& dir) {
  if (dir.empty()) return;
  std::string cur;
  std::size_t pos = 0;
  while (pos <= dir.size()) {
    std::size_t slash = dir.find('/', pos);
    if (slash == std::string::npos) slash = dir.size();
    cur = dir.substr(0, slash);
    if (!cur.empty()) {
      if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
        throw RunFileError("cannot create directory '" + cur + "': " +
                           std::strerror(errno));
      struct stat st {};
      if (::stat(cur.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw RunFileError("'" + cur + "' exists and is not a directory");
    }
    pos = slash + 1;
  }
}

const char* const kTrainI64[] = {"step", "tokens"};
const char* const kTrainF64[] = {"flops",  "loss", "lm_loss",   "aux_loss",
                                 "z_loss", "lr",   "grad_norm", "tokens_per_second"};
const char* const kEvalI64[] = {"step", "tokens"};
const char* const kEvalF64[] = {"flops", "val_loss"};
constexpr hsize_t kChunk1d = 1024;

// Creates an empty chunked dataset, unlimited along dim 0.
void create_extendible(hid_t loc, const std::string& file, const std::string& name,
                       hid_t file_type, const std::vector<hsize_t>& inner,
                       hsize_t chunk0) {
  std::vector<hsize_t> dims{0}, maxdims{H5S_UNLIMITED}, chunk{chunk0};
  for (hsize_t d : inner) {
    dims.push_back(d);
    maxdims.push_back(d);
    chunk.push_back(d);
  }
  Hid space = checked(H5Screate_simple(static_cast<int>(dims.size()), dims.data(),
                                       maxdims.data()),
                      H5Sclose, file, "dataspace for '" + name + "'");
  Hid dcpl = checked(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, file, "dcpl");
  check(H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data()), file,
        "chunking for '" + name + "'");
  Hid ds = checked(H5Dcreate2(loc, name.c_str(), file_type, space, H5P_DEFAULT, dcpl,
                              H5P_DEFAULT),
                   H5Dclose, file, "create dataset '" + name + "'");
}

// Appends one row (the dataset's full inner extent) along dim 0.
void append_row(hid_t file_id, const std::string& file, const std::string& name,
                hid_t mem_type, const void* data) {
  Hid ds = checked(H5Dopen2(file_id, name.c_str(), H5P_DEFAULT), H5Dclose, file,
                   "open dataset '" + name + "'");
  Hid space = checked(H5Dget_space(ds), H5Sclose, file, "dataspace of '" + name + "'");
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 1) throw_err(file, "rank of '" + name + "'");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), file,
        "dims of '" + name + "'");
  std::vector<hsize_t> newdims = dims;
  newdims[0] += 1;
  check(H5Dset_extent(ds, newdims.data()), file, "extend '" + name + "'");
  Hid fspace = checked(H5Dget_space(ds), H5Sclose, file, "dataspace of '" + name + "'");
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = dims[0];
  count[0] = 1;
  check(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr,
                            count.data(), nullptr),
        file, "select row of '" + name + "'");
  Hid mspace = checked(H5Screate_simple(rank, count.data(), nullptr), H5Sclose, file,
                       "memory space for '" + name + "'");
  check(H5Dwrite(ds, mem_type, mspace, fspace, H5P_DEFAULT, data), file,
        "append to '" + name + "'");
}

std::vector<hsize_t> dataset_dims(hid_t file_id, const std::string& file,
                                  const std::string& name) {
  Hid ds = checked(H5Dopen2(file_id, name.c_str(), H5P_DEFAULT), H5Dclose, file,
                   "open dataset '" + name + "'");
  Hid space = checked(H5Dget_space(ds), H5Sclose, file, "dataspace of '" + name + "'");
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank < 0) throw_err(file, "rank of '" + name + "'");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  if (rank > 0)
    check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), file,
          "dims of '" + name + "'");
  return dims;
}

Hid open_read(const std::string& file) {
  silence_hdf5();
  if (::access(file.c_str(), F_OK) != 0)
    throw RunFileError("run file '" + file + "': does not exist");
  return checked(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, file,
                 "open read-only (not an HDF5 file?)");
}

Hid open_attr(hid_t f, const std::string& file, const std::string& object,
              const std::string& name) {
  if (!(object == "/" || object == "." || link_exists(f, object)))
    throw RunFileError("run file '" + file + "': object '" + object + "' not found");
  const htri_t e = H5Aexists_by_name(f, object.c_str(), name.c_str(), H5P_DEFAULT);
  if (e < 0) throw_err(file, "check attribute '" + name + "' of '" + object + "'");
  if (e == 0)
    throw RunFileError("run file '" + file + "': attribute '" + name + "' of '" +
                       object + "' not found");
  return checked(H5Aopen_by_name(f, object.c_str(), name.c_str(), H5P_DEFAULT,
                                 H5P_DEFAULT),
                 H5Aclose, file, "open attribute '" + name + "' of '" + object + "'");
}

void check_name(const std::string& file, const std::string& kind,
                const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == ".")
    throw RunFileError("run file '" + file + "': invalid " + kind + " name '" + name +
                       "' (empty, '.', or contains '/')");
}

}  // namespace

// ---------------------------------------------------------------- RunFile

RunFile RunFile::detached() {
  RunFile f("", -1);
  f.detached_ = true;
  return f;
}

RunFile RunFile::create(const std::string& dir, bool overwrite) {
  silence_hdf5();
  mkdir_p(dir);
  const std::string path = (dir.empty() ? std::string(".") : dir) + "/run.h5";
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (!overwrite)
      throw RunFileError("run file '" + path +
                         "' already exists; refusing to overwrite it "
                         "(set [output] overwrite = true or choose another dir)");
    if (S_ISDIR(st.st_mode))
      throw RunFileError("run file '" + path + "' is a directory");
  }
  // Default file-access properties on purpose: the earliest-format superblock
  // has no "open for writing" flag, so a file left by a killed writer (after
  // a flush) opens without h5clear. Do not switch to latest-format bounds
  // without revisiting that.
  const hid_t f = H5Fcreate(path.c_str(), overwrite ? H5F_ACC_TRUNC : H5F_ACC_EXCL,
                            H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) throw_err(path, "create");
  RunFile rf(path, f);
  rf.create_layout();
  rf.flush();
  return rf;
}

RunFile RunFile::open_existing(const std::string& path) {
  silence_hdf5();
  if (::access(path.c_str(), F_OK) != 0)
    throw RunFileError("run file '" + path + "': does not exist");
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (f < 0) throw_err(path, "open read-write (not an HDF5 file?)");
  RunFile rf(path, f);
  const htri_t e = H5Aexists(f, "format");
  if (e <= 0)
    throw RunFileError("run file '" + path + "': no 'format' attribute; not a " +
                       kRunFileFormat + " file");
  Hid a = checked(H5Aopen(f, "format", H5P_DEFAULT), H5Aclose, path,
                  "open attribute 'format'");
  // Reuse the read helper logic on the open handle.
  Hid t = vlen_utf8_type(path);
  char* s = nullptr;
  check(H5Aread(a, t, &s), path, "read attribute 'format'");
  const std::string fmt = s ? s : "";
  H5free_memory(s);
  if (fmt != kRunFileFormat)
    throw RunFileError("run file '" + path + "': format is '" + fmt + "', expected '" +
                       kRunFileFormat + "'");
  return rf;
}

RunFile::~RunFile() {
  if (file_ >= 0) H5Fclose(file_);
}

RunFile::RunFile(RunFile&& o) noexcept
    : path_(std::move(o.path_)), detached_(o.detached_), file_(std::exchange(o.file_, -1)) {}

RunFile& RunFile::operator=(RunFile&& o) noexcept {
  if (this != &o) {
    if (file_ >= 0) H5Fclose(file_);
    path_ = std::move(o.path_);
    detached_ = o.detached_;
    file_ = std::exchange(o.file_, -1);
  }
  return *this;
}

std::int64_t RunFile::file() const {
  if (file_ < 0) throw RunFileError("run file '" + path_ + "': is closed");
  return file_;
}

void RunFile::fail(const std::string& what) const { throw_err(path_, what); }

void RunFile::close() {
  if (file_ >= 0) {
    const herr_t rc = H5Fclose(file_);
    file_ = -1;
    if (rc < 0) fail("close");
  }
}

void RunFile::flush() {
  if (detached_) return;  // non-writing rank
  check(H5Fflush(file(), H5F_SCOPE_GLOBAL), path_, "flush");
}

std::int64_t RunFile::open_group(const std::string& group) {
  const hid_t f = file();
  if (group == "/") return H5Oopen(f, "/", H5P_DEFAULT);
  hid_t g;
  if (link_exists(f, group))
    g = H5Gopen2(f, group.c_str(), H5P_DEFAULT);
  else
    g = H5Gcreate2(f, group.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) fail("open/create group '" + group + "'");
  return g;
}

namespace {
// Deletes an attribute of `obj` if present, so that it can be recreated with
// a possibly different type.
void delete_attr_if_exists(hid_t obj, const std::string& file, const std::string& object,
                           const std::string& name) {
  const htri_t e = H5Aexists(obj, name.c_str());
  if (e < 0) throw_err(file, "check attribute '" + name + "' of '" + object + "'");
  if (e > 0)
    check(H5Adelete(obj, name.c_str()), file,
          "replace attribute '" + name + "' of '" + object + "'");
}

void write_scalar_attr(hid_t obj, const std::string& file, const std::string& object,
                       const std::string& name, hid_t file_type, hid_t mem_type,
                       const void* value) {
  check_name(file, "attribute", name);
  delete_attr_if_exists(obj, file, object, name);
  Hid space = checked(H5Screate(H5S_SCALAR), H5Sclose, file, "scalar dataspace");
  Hid a = checked(H5Acreate2(obj, name.c_str(), file_type, space, H5P_DEFAULT,
                             H5P_DEFAULT),
                  H5Aclose, file, "create attribute '" + name + "' of '" + object + "'");
  check(H5Awrite(a, mem_type, value), file,
        "write attribute '" + name + "' of '" + object + "'");
}
}  // namespace

void RunFile::write_attr_str(const std::string& object, const std::string& name,
                             const std::string& value) {
  Hid obj(open_group(object), H5Oclose);
  Hid t = vlen_utf8_type(path_);
  const char* p = value.c_str();
  write_scalar_attr(obj, path_, object, name, t, t, &p);
}

void RunFile::write_attr_f64(const std::string& object, const std::string& name,
                             double value) {
  Hid obj(open_group(object), H5Oclose);
  write_scalar_attr(obj, path_, object, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

void RunFile::write_attr_i64(const std::string& object, const std::string& name,
                             std::int64_t value) {
  Hid obj(open_group(object), H5Oclose);
  write_scalar_attr(obj, path_, object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void RunFile::create_layout() {
  write_attr_str("/", "format", kRunFileFormat);
  write_attr_i64("/", "format_version", kRunFileFormatVersion);
  write_attr_str("/", "status", "running");
  for (const char* g : {"/config", "/train", "/eval", "/timers", "/summary"})
    Hid(open_group(g), H5Oclose);
  for (const char* n : kTrainI64)
    create_extendible(file_, path_, std::string("/train/") + n, H5T_STD_I64LE, {}, kChunk1d);
  for (const char* n : kTrainF64)
    create_extendible(file_, path_, std::string("/train/") + n, H5T_IEEE_F64LE, {}, kChunk1d);
  for (const char* n : kEvalI64)
    create_extendible(file_, path_, std::string("/eval/") + n, H5T_STD_I64LE, {}, kChunk1d);
  for (const char* n : kEvalF64)
    create_extendible(file_, path_, std::string("/eval/") + n, H5T_IEEE_F64LE, {}, kChunk1d);
}

void RunFile::set_root_attr(const std::string& name, const std::string& value) {
  if (detached_) return;  // non-writing rank
  write_attr_str("/", name, value);
}
void RunFile::set_root_attr(const std::string& name, double value) {
  if (detached_) return;  // non-writing rank
  write_attr_f64("/", name, value);
}
void RunFile::set_root_attr(const std::string& name, std::int64_t value) {
  if (detached_) return;  // non-writing rank
  write_attr_i64("/", name, value);
}
void RunFile::set_root_attr(const std::string& name, std::uint64_t value) {
  if (detached_) return;  // non-writing rank
  if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    fail("root attribute '" + name + "' value " + std::to_string(value) +
         " does not fit int64");
  write_attr_i64("/", name, static_cast<std::int64_t>(value));
}

void RunFile::set_status(const std::string& status) {
  if (detached_) return;  // non-writing rank
  if (status != "running" && status != "completed" && status != "diverged" &&
      status != "failed")
    throw RunFileError("run file '" + path_ + "': invalid status '" + status +
                       "' (valid: running, completed, diverged, failed)");
  write_attr_str("/", "status", status);
}

void RunFile::set_config(const std::string& name, double value) {
  if (detached_) return;  // non-writing rank
  write_attr_f64("/config", name, value);
}
void RunFile::set_config(const std::string& name, std::int64_t value) {
  if (detached_) return;  // non-writing rank
  write_attr_i64("/config", name, value);
}
void RunFile::set_config(const std::string& name, std::uint64_t value) {
  if (detached_) return;  // non-writing rank
  if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    fail("config attribute '" + name + "' value " + std::to_string(value) +
         " does not fit int64");
  write_attr_i64("/config", name, static_cast<std::int64_t>(value));
}
void RunFile::set_config(const std::string& name, const std::string& value) {
  if (detached_) return;  // non-writing rank
  write_attr_str("/config", name, value);
}

void RunFile::append_train(const TrainRow& r) {
  if (detached_) return;  // non-writing rank
  const hid_t f = file();
  append_row(f, path_, "/train/step", H5T_NATIVE_INT64, &r.step);
  append_row(f, path_, "/train/tokens", H5T_NATIVE_INT64, &r.tokens);
  const double v[] = {r.flops,  r.loss, r.lm_loss,   r.aux_loss,
                      r.z_loss, r.lr,   r.grad_norm, r.tokens_per_second};
  for (std::size_t i = 0; i < 8; ++i)
    append_row(f, path_, std::string("/train/") + kTrainF64[i], H5T_NATIVE_DOUBLE, &v[i]);
}

void RunFile::append_eval(const EvalRow& r) {
  if (detached_) return;  // non-writing rank
  const hid_t f = file();
  append_row(f, path_, "/eval/step", H5T_NATIVE_INT64, &r.step);
  append_row(f, path_, "/eval/tokens", H5T_NATIVE_INT64, &r.tokens);
  append_row(f, path_, "/eval/flops", H5T_NATIVE_DOUBLE, &r.flops);
  append_row(f, path_, "/eval/val_loss", H5T_NATIVE_DOUBLE, &r.val_loss);
}

void RunFile::append_routing(const RoutingSnapshot& s) {
  if (detached_) return;  // non-writing rank
  const hid_t f = file();
  const int L = s.n_moe_layers, E = s.n_experts;
  if (L <= 0 || E <= 0)
    fail("routing snapshot needs n_moe_layers > 0 and n_experts > 0 (got " +
         std::to_string(L) + ", " + std::to_string(E) + ")");
  const auto sizeok = [&](std::size_t got, std::size_t want, const char* what) {
    if (got != want)
      fail(std::string("routing snapshot: ") + what + " has " + std::to_string(got) +
           " values, expected " + std::to_string(want));
  };
  const std::size_t Lz = static_cast<std::size_t>(L), Ez = static_cast<std::size_t>(E);
  sizeok(s.expert_share.size(), Lz * Ez, "expert_share");
  sizeok(s.max_violation.size(), Lz, "max_violation");
  sizeok(s.router_entropy.size(), Lz, "router_entropy");
  sizeok(s.dropped_fraction.size(), Lz, "dropped_fraction");
  sizeok(s.moe_layer_index.size(), Lz, "moe_layer_index");
  if (!s.tokens_per_expert.empty()) sizeok(s.tokens_per_expert.size(), Lz * Ez, "tokens_per_expert");
  if (!s.min_load.empty()) sizeok(s.min_load.size(), Lz, "min_load");
  if (!s.topk_margin.empty()) sizeok(s.topk_margin.size(), Lz, "topk_margin");
  if (!s.router_bias.empty()) sizeok(s.router_bias.size(), Lz * Ez, "router_bias");

  const hsize_t hL = static_cast<hsize_t>(L), hE = static_cast<hsize_t>(E);
  const bool fresh = !link_exists(f, "/routing/expert_share");
  if (fresh) {
    Hid g(open_group("/routing"), H5Oclose);
    const hsize_t chunk = 64;
    // optional diagnostics: created with the first snapshot that has them
    if (!s.tokens_per_expert.empty())
      create_extendible(f, path_, "/routing/tokens_per_expert", H5T_IEEE_F64LE, {hL, hE}, chunk);
    if (!s.router_bias.empty())
      create_extendible(f, path_, "/routing/router_bias", H5T_IEEE_F64LE, {hL, hE}, chunk);
    if (!s.min_load.empty()) create_extendible(f, path_, "/routing/min_load", H5T_IEEE_F64LE, {hL}, chunk);
    if (!s.topk_margin.empty())
      create_extendible(f, path_, "/routing/topk_margin", H5T_IEEE_F64LE, {hL}, chunk);
    create_extendible(f, path_, "/routing/step", H5T_STD_I64LE, {}, kChunk1d);
    create_extendible(f, path_, "/routing/tokens", H5T_STD_I64LE, {}, kChunk1d);
    create_extendible(f, path_, "/routing/expert_share", H5T_IEEE_F64LE, {hL, hE}, chunk);
    for (const char* n : {"max_violation", "router_entropy", "dropped_fraction"})
      create_extendible(f, path_, std::string("/routing/") + n, H5T_IEEE_F64LE, {hL}, chunk);
    // layer_index: fixed (L) dataset, int32.
    Hid space = checked(H5Screate_simple(1, &hL, nullptr), H5Sclose, path_,
                        "dataspace for '/routing/layer_index'");
    Hid ds = checked(H5Dcreate2(f, "/routing/layer_index", H5T_STD_I32LE, space,
                                H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                     H5Dclose, path_, "create dataset '/routing/layer_index'");
    check(H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                   s.moe_layer_index.data()),
          path_, "write '/routing/layer_index'");
    write_attr_i64("/routing", "n_moe_layers", L);
    write_attr_i64("/routing", "n_experts", E);
  } else {
    const auto d = dataset_dims(f, path_, "/routing/expert_share");
    if (d.size() != 3 || d[1] != hL || d[2] != hE)
      fail("routing snapshot shape (" + std::to_string(L) + ", " + std::to_string(E) +
           ") differs from the file's (" + (d.size() == 3 ? std::to_string(d[1]) : "?") +
           ", " + (d.size() == 3 ? std::to_string(d[2]) : "?") + ")");
  }
  append_row(f, path_, "/routing/step", H5T_NATIVE_INT64, &s.step);
  append_row(f, path_, "/routing/tokens", H5T_NATIVE_INT64, &s.tokens);
  append_row(f, path_, "/routing/expert_share", H5T_NATIVE_DOUBLE, s.expert_share.data());
  append_row(f, path_, "/routing/max_violation", H5T_NATIVE_DOUBLE, s.max_violation.data());
  append_row(f, path_, "/routing/router_entropy", H5T_NATIVE_DOUBLE,
             s.router_entropy.data());
  append_row(f, path_, "/routing/dropped_fraction", H5T_NATIVE_DOUBLE,
             s.dropped_fraction.data());
  // (a file started by an earlier version lacks these datasets: they are skipped)
  const std::pair<const char*, const std::vector<double>*> optional[] = {
      {"/routing/tokens_per_expert", &s.tokens_per_expert},
      {"/routing/min_load", &s.min_load},
      {"/routing/topk_margin", &s.topk_margin},
      {"/routing/router_bias", &s.router_bias}};
  for (const auto& [name, v] : optional)
    if (!v->empty() && link_exists(f, name)) append_row(f, path_, name, H5T_NATIVE_DOUBLE, v->data());
}

void RunFile::set_timer(const std::string& name, double seconds, std::int64_t calls) {
  if (detached_) return;  // non-writing rank
  check_name(path_, "timer", name);
  write_attr_f64("/timers", name + ".seconds", seconds);
  write_attr_i64("/timers", name + ".calls", calls);
}

void RunFile::set_summary(const std::string& name, double value) {
  if (detached_) return;  // non-writing rank
  write_attr_f64("/summary", name, value);
}
void RunFile::set_summary(const std::string& name, std::int64_t value) {
  if (detached_) return;  // non-writing rank
  write_attr_i64("/summary", name, value);
}

std::int64_t RunFile::train_rows() const {
  return static_cast<std::int64_t>(dataset_dims(file(), path_, "/train/step").at(0));
}
std::int64_t RunFile::eval_rows() const {
  return static_cast<std::int64_t>(dataset_dims(file(), path_, "/eval/step").at(0));
}
std::int64_t RunFile::routing_rows() const {
  if (!link_exists(file(), "/routing/step")) return 0;
  return static_cast<std::int64_t>(dataset_dims(file(), path_, "/routing/step").at(0));
}

// ---------------------------------------------------------------- readers

std::vector<double> read_dataset_1d(const std::string& file, const std::string& dataset) {
  Hid f = open_read(file);
  if (!link_exists(f, dataset))
    throw RunFileError("run file '" + file + "': dataset '" + dataset + "' not found");
  Hid ds = checked(H5Dopen2(f, dataset.c_str(), H5P_DEFAULT), H5Dclose, file,
                   "open dataset '" + dataset + "'");
  Hid t = checked(H5Dget_type(ds), H5Tclose, file, "type of '" + dataset + "'");
  const H5T_class_t cls = H5Tget_class(t);
  if (cls != H5T_INTEGER && cls != H5T_FLOAT)
    throw RunFileError("run file '" + file + "': dataset '" + dataset +
                       "' is not numeric");
  Hid space = checked(H5Dget_space(ds), H5Sclose, file, "dataspace of '" + dataset + "'");
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n < 0) throw_err(file, "size of '" + dataset + "'");
  std::vector<double> out(static_cast<std::size_t>(n));
  if (n > 0)
    check(H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
          file, "read dataset '" + dataset + "'");
  return out;
}

std::vector<std::uint64_t> read_dataset_dims(const std::string& file,
                                             const std::string& dataset) {
  Hid f = open_read(file);
  if (!link_exists(f, dataset))
    throw RunFileError("run file '" + file + "': dataset '" + dataset + "' not found");
  const auto d = dataset_dims(f, file, dataset);
  return std::vector<std::uint64_t>(d.begin(), d.end());
}

std::string read_string_attr(const std::string& file, const std::string& object,
                             const std::string& name) {
  Hid f = open_read(file);
  Hid a = open_attr(f, file, object, name);
  Hid t = checked(H5Aget_type(a), H5Tclose, file, "type of attribute '" + name + "'");
  if (H5Tget_class(t) != H5T_STRING)
    throw RunFileError("run file '" + file + "': attribute '" + name + "' of '" +
                       object + "' is not a string");
  const htri_t vlen = H5Tis_variable_str(t);
  if (vlen < 0) throw_err(file, "string type of attribute '" + name + "'");
  if (vlen > 0) {
    Hid mt = vlen_utf8_type(file);
    char* s = nullptr;
    check(H5Aread(a, mt, &s), file, "read attribute '" + name + "' of '" + object + "'");
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  const std::size_t size = H5Tget_size(t);
  std::string out(size, '\0');
  Hid mt = checked(H5Tcopy(t), H5Tclose, file, "copy string type");
  check(H5Aread(a, mt, out.data()), file,
        "read attribute '" + name + "' of '" + object + "'");
  const auto nul = out.find('\0');
  if (nul != std::string::npos) out.resize(nul);
  return out;
}

double read_numeric_attr(const std::string& file, const std::string& object,
                         const std::string& name) {
  Hid f = open_read(file);
  Hid a = open_attr(f, file, object, name);
  Hid t = checked(H5Aget_type(a), H5Tclose, file, "type of attribute '" + name + "'");
  const H5T_class_t cls = H5Tget_class(t);
  if (cls != H5T_INTEGER && cls != H5T_FLOAT)
    throw RunFileError("run file '" + file + "': attribute '" + name + "' of '" +
                       object + "' is not numeric");
  double v = 0;
  check(H5Aread(a, H5T_NATIVE_DOUBLE, &v), file,
        "read attribute '" + name + "' of '" + object + "'");
  return v;
}

namespace {
herr_t attr_name_cb(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}
}  // namespace

std::vector<std::string> list_attrs(const std::string& file, const std::string& object) {
  Hid f = open_read(file);
  if (!(object == "/" || link_exists(f, object)))
    throw RunFileError("run file '" + file + "': object '" + object + "' not found");
  Hid o = checked(H5Oopen(f, object.c_str(), H5P_DEFAULT), H5Oclose, file,
                  "open object '" + object + "'");
  std::vector<std::string> names;
  hsize_t idx = 0;
  check(H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_name_cb, &names), file,
        "list attributes of '" + object + "'");
  return names;
}

std::string iso8601_utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Drops every /train, /eval and /routing row whose step is greater than
// `step` (rows written after the checkpoint a resumed run restarts from),
// so resuming appends without duplicating steps.
void RunFile::truncate_after_step(std::int64_t step) {
  if (detached_) return;  // non-writing rank
  const hid_t f = file();
  for (const char* group : {"/train", "/eval", "/routing"}) {
    const std::string step_name = std::string(group) + "/step";
    if (!link_exists(f, group) || !link_exists(f, step_name)) continue;
    const std::vector<double> steps = read_dataset_1d(path_, step_name);
    hsize_t keep = 0;
    while (keep < steps.size() && steps[keep] <= static_cast<double>(step)) ++keep;
    if (keep == steps.size()) continue;
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    H5G_info_t info;
    H5Gget_info(g, &info);
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      char name[256];
      H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT);
      hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
      if (ds < 0) continue;
      hid_t sp = H5Dget_space(ds);
      const int rank = H5Sget_simple_extent_ndims(sp);
      std::vector<hsize_t> dims(rank > 0 ? rank : 1), maxdims(dims.size());
      H5Sget_simple_extent_dims(sp, dims.data(), maxdims.data());
      H5Sclose(sp);
      if (rank >= 1 && maxdims[0] == H5S_UNLIMITED && dims[0] > keep) {
        dims[0] = keep;
        check(H5Dset_extent(ds, dims.data()), path_, std::string("truncate '") + group + "/" + name + "'");
      }
      H5Dclose(ds);
    }
    H5Gclose(g);
  }
}

}  // namespace fulcrum
