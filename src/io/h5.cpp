#include "io/h5.hpp"

#include <unistd.h>

#include <utility>

namespace fulcrum::h5 {

namespace {

herr_t most_specific_message(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n == 0 && err && err->desc) *out = err->desc;
  return 0;
}

// The most specific message of HDF5's current error stack (it names the
// system error, e.g. "No space left on device"), then clears the stack.
std::string hdf5_detail() {
  std::string detail;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, most_specific_message, &detail);
  H5Eclear2(H5E_DEFAULT);
  return detail.empty() ? std::string() : " (HDF5: " + detail + ")";
}

std::string join_path(const std::string& parent, const std::string& name) {
  if (!name.empty() && name[0] == '/') return name;
  if (parent.empty() || parent == "/") return "/" + name;
  return parent + "/" + name;
}

std::string parent_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return "/";
  return path.substr(0, slash);
}

TypeClass classify(hid_t type) {
  switch (H5Tget_class(type)) {
    case H5T_INTEGER: return TypeClass::integer;
    case H5T_FLOAT: return TypeClass::floating;
    case H5T_STRING: return TypeClass::string;
    default: return TypeClass::other;
  }
}

Handle vlen_utf8_string_type() {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!t.valid() || H5Tset_size(t.get(), H5T_VARIABLE) < 0 || H5Tset_cset(t.get(), H5T_CSET_UTF8) < 0)
    throw Error("HDF5", "", "", "cannot make the variable-length UTF-8 string type" + hdf5_detail());
  return t;
}

std::vector<hsize_t> to_hsize(const std::vector<std::uint64_t>& v) {
  return std::vector<hsize_t>(v.begin(), v.end());
}

herr_t collect_attr_name(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

}  // namespace

Error::Error(const std::string& label, const std::string& file, const std::string& object,
             const std::string& what)
    : std::runtime_error(label + " '" + file + "': " + (object.empty() ? "" : object + ": ") + what +
                         hdf5_detail()),
      file_(file),
      object_(object) {}

void silence_error_printing() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

// ---------------------------------------------------------------- Handle

Handle::Handle(Handle&& other) noexcept
    : id_(std::exchange(other.id_, -1)), close_(other.close_) {}

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = std::exchange(other.id_, -1);
    close_ = other.close_;
  }
  return *this;
}

herr_t Handle::close() {
  herr_t rc = 0;
  if (id_ >= 0 && close_) rc = close_(id_);
  id_ = -1;
  return rc;
}

// ---------------------------------------------------------------- Object

void Object::fail(const std::string& what) const { throw Error(origin_.label, origin_.file, path_, what); }

std::string Object::child_path(const std::string& name) const { return join_path(path_, name); }

bool Object::has_attr(const std::string& name) const {
  const htri_t e = H5Aexists(id(), name.c_str());
  if (e < 0) fail("cannot check attribute '" + name + "'");
  return e > 0;
}

Handle Object::open_attr(const std::string& name) const {
  if (!has_attr(name)) fail("attribute '" + name + "' not found");
  Handle a(H5Aopen(id(), name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!a.valid()) fail("cannot open attribute '" + name + "'");
  Handle space(H5Aget_space(a.get()), H5Sclose);
  if (!space.valid() || H5Sget_simple_extent_npoints(space.get()) != 1)
    fail("attribute '" + name + "' is not a single value");
  return a;
}

TypeClass Object::attr_class(const std::string& name) const {
  Handle a = open_attr(name);
  Handle t(H5Aget_type(a.get()), H5Tclose);
  if (!t.valid()) fail("cannot read the type of attribute '" + name + "'");
  return classify(t.get());
}

void Object::write_scalar_attr(const std::string& name, hid_t file_type, hid_t memory_type,
                               const void* value) {
  if (has_attr(name) && H5Adelete(id(), name.c_str()) < 0) fail("cannot replace attribute '" + name + "'");
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  if (!space.valid()) fail("cannot make a scalar dataspace for attribute '" + name + "'");
  Handle a(H5Acreate2(id(), name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.valid()) fail("cannot create attribute '" + name + "'");
  if (H5Awrite(a.get(), memory_type, value) < 0) fail("cannot write attribute '" + name + "'");
}

void Object::set_attr(const std::string& name, double value) {
  write_scalar_attr(name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

void Object::set_attr(const std::string& name, std::int64_t value) {
  write_scalar_attr(name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void Object::set_attr(const std::string& name, const std::string& value) {
  Handle t = vlen_utf8_string_type();
  const char* p = value.c_str();
  write_scalar_attr(name, t.get(), t.get(), &p);
}

double Object::attr_number(const std::string& name) const {
  const TypeClass c = attr_class(name);
  if (c != TypeClass::integer && c != TypeClass::floating) fail("attribute '" + name + "' is not numeric");
  Handle a = open_attr(name);
  double v = 0;
  if (H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v) < 0) fail("cannot read attribute '" + name + "'");
  return v;
}

std::int64_t Object::attr_int(const std::string& name) const {
  const TypeClass c = attr_class(name);
  if (c == TypeClass::floating) return static_cast<std::int64_t>(attr_number(name));
  if (c != TypeClass::integer) fail("attribute '" + name + "' is not numeric");
  Handle a = open_attr(name);
  std::int64_t v = 0;
  if (H5Aread(a.get(), H5T_NATIVE_INT64, &v) < 0) fail("cannot read attribute '" + name + "'");
  return v;
}

std::string Object::attr_string(const std::string& name) const {
  Handle a = open_attr(name);
  Handle file_type(H5Aget_type(a.get()), H5Tclose);
  if (!file_type.valid()) fail("cannot read the type of attribute '" + name + "'");
  if (classify(file_type.get()) != TypeClass::string) fail("attribute '" + name + "' is not a string");
  // The memory type copies the file's (HDF5 does not convert between
  // character sets, and files written by h5py may be ASCII).
  Handle memory_type(H5Tcopy(file_type.get()), H5Tclose);
  const htri_t variable = H5Tis_variable_str(file_type.get());
  if (!memory_type.valid() || variable < 0) fail("cannot read the string type of attribute '" + name + "'");
  if (variable > 0) {
    char* s = nullptr;
    if (H5Aread(a.get(), memory_type.get(), &s) < 0) fail("cannot read attribute '" + name + "'");
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  std::string out(H5Tget_size(file_type.get()), '\0');
  if (H5Aread(a.get(), memory_type.get(), out.data()) < 0) fail("cannot read attribute '" + name + "'");
  const auto nul = out.find('\0');
  if (nul != std::string::npos) out.resize(nul);
  return out;
}

std::vector<std::string> Object::attr_names() const {
  std::vector<std::string> names;
  hsize_t index = 0;
  if (H5Aiterate2(id(), H5_INDEX_NAME, H5_ITER_INC, &index, collect_attr_name, &names) < 0)
    fail("cannot list attributes");
  return names;
}

// ---------------------------------------------------------------- Dataset

std::vector<std::uint64_t> Dataset::dims() const {
  Handle space(H5Dget_space(id()), H5Sclose);
  const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (rank < 0) fail("cannot read the dataspace");
  std::vector<hsize_t> d(static_cast<std::size_t>(rank));
  if (rank > 0 && H5Sget_simple_extent_dims(space.get(), d.data(), nullptr) < 0) fail("cannot read the dimensions");
  return std::vector<std::uint64_t>(d.begin(), d.end());
}

std::uint64_t Dataset::size() const {
  Handle space(H5Dget_space(id()), H5Sclose);
  const hssize_t n = space.valid() ? H5Sget_simple_extent_npoints(space.get()) : -1;
  if (n < 0) fail("cannot read the size");
  return static_cast<std::uint64_t>(n);
}

bool Dataset::appendable() const {
  Handle space(H5Dget_space(id()), H5Sclose);
  const int rank = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (rank < 0) fail("cannot read the dataspace");
  if (rank == 0) return false;
  std::vector<hsize_t> d(static_cast<std::size_t>(rank)), maxd(d.size());
  if (H5Sget_simple_extent_dims(space.get(), d.data(), maxd.data()) < 0) fail("cannot read the dimensions");
  return maxd[0] == H5S_UNLIMITED;
}

TypeClass Dataset::type_class() const {
  Handle t(H5Dget_type(id()), H5Tclose);
  if (!t.valid()) fail("cannot read the type");
  return classify(t.get());
}

void Dataset::read_raw(hid_t memory_type, void* out, std::size_t elements) const {
  const TypeClass c = type_class();
  if (c != TypeClass::integer && c != TypeClass::floating) fail("is not numeric");
  if (elements == 0) return;
  if (H5Dread(id(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) fail("cannot read");
}

void Dataset::append_raw(hid_t memory_type, const void* row, std::size_t count) {
  const std::vector<std::uint64_t> d = dims();
  if (d.empty()) fail("is a scalar; cannot append");
  std::uint64_t row_size = 1;
  for (std::size_t i = 1; i < d.size(); ++i) row_size *= d[i];
  if (count != row_size)
    fail("row of " + std::to_string(count) + " values appended, a row has " + std::to_string(row_size));
  std::vector<hsize_t> grown = to_hsize(d);
  grown[0] += 1;
  if (H5Dset_extent(id(), grown.data()) < 0) fail("cannot extend (not appendable?)");
  Handle file_space(H5Dget_space(id()), H5Sclose);
  std::vector<hsize_t> start(d.size(), 0), one_row = to_hsize(d);
  start[0] = d[0];
  one_row[0] = 1;
  if (!file_space.valid() ||
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, one_row.data(), nullptr) < 0)
    fail("cannot select the new row");
  Handle memory_space(H5Screate_simple(static_cast<int>(one_row.size()), one_row.data(), nullptr), H5Sclose);
  if (!memory_space.valid()) fail("cannot make the row's dataspace");
  if (H5Dwrite(id(), memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, row) < 0)
    fail("cannot append a row");
}

void Dataset::resize_rows(std::uint64_t rows) {
  std::vector<hsize_t> d = to_hsize(dims());
  if (d.empty()) fail("is a scalar; cannot resize");
  d[0] = rows;
  if (H5Dset_extent(id(), d.data()) < 0) fail("cannot resize to " + std::to_string(rows) + " rows");
}

// ---------------------------------------------------------------- Group

bool Group::has(const std::string& name) const {
  // H5Lexists fails on a path whose intermediate groups are missing: walk it.
  std::string prefix = !name.empty() && name[0] == '/' ? "/" : "";
  std::size_t pos = 0;
  while (pos <= name.size()) {
    std::size_t slash = name.find('/', pos);
    if (slash == std::string::npos) slash = name.size();
    const std::string part = name.substr(pos, slash - pos);
    if (!part.empty()) {
      prefix += (prefix.empty() || prefix.back() == '/' ? "" : "/") + part;
      if (H5Lexists(id(), prefix.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
      }
    }
    pos = slash + 1;
  }
  return true;
}

Group Group::group(const std::string& name) const {
  const std::string path = child_path(name);
  if (path != "/" && !has(name)) throw Error(origin_.label, origin_.file, path, "group not found");
  Handle g(H5Gopen2(id(), name.c_str(), H5P_DEFAULT), H5Gclose);
  if (!g.valid()) throw Error(origin_.label, origin_.file, path, "cannot open as a group");
  return Group(origin_, path, std::move(g));
}

Group Group::require_group(const std::string& name) {
  if (child_path(name) == "/" || has(name)) return group(name);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  if (!lcpl.valid() || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0) fail("cannot make link properties");
  Handle g(H5Gcreate2(id(), name.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!g.valid()) throw Error(origin_.label, origin_.file, child_path(name), "cannot create group");
  return Group(origin_, child_path(name), std::move(g));
}

Dataset Group::dataset(const std::string& name) const {
  const std::string path = child_path(name);
  if (!has(name)) throw Error(origin_.label, origin_.file, path, "dataset not found");
  Handle d(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!d.valid()) throw Error(origin_.label, origin_.file, path, "cannot open as a dataset");
  return Dataset(origin_, path, std::move(d));
}

Object Group::object(const std::string& name) const {
  const std::string path = child_path(name);
  if (path != "/" && !has(name)) throw Error(origin_.label, origin_.file, path, "object not found");
  Handle o(H5Oopen(id(), name.c_str(), H5P_DEFAULT), H5Oclose);
  if (!o.valid()) throw Error(origin_.label, origin_.file, path, "cannot open");
  return Object(origin_, path, std::move(o));
}

bool Group::has_dataset(const std::string& name) const {
  if (!has(name)) return false;
  return H5Iget_type(object(name).id()) == H5I_DATASET;
}

std::vector<std::string> Group::children() const {
  // by index rather than H5Literate, whose callback type differs between
  // HDF5 1.10 and 1.12+
  H5G_info_t info;
  if (H5Gget_info(id(), &info) < 0) fail("cannot list the group's members");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n = H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (n < 0) fail("cannot list the group's members");
    std::string name(static_cast<std::size_t>(n) + 1, '\0');
    H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
    name.resize(static_cast<std::size_t>(n));
    names.push_back(std::move(name));
  }
  return names;
}

void Group::write_raw(const std::string& name, hid_t file_type, hid_t memory_type, const void* data,
                      const std::vector<std::uint64_t>& dims) {
  const std::string path = child_path(name);
  const std::string parent = parent_of(path);
  if (parent != "/") require_group(parent);
  const std::vector<hsize_t> d = to_hsize(dims);
  Handle space(H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr), H5Sclose);
  if (!space.valid()) throw Error(origin_.label, origin_.file, path, "cannot make the dataspace");
  Handle ds(H5Dcreate2(id(), name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
            H5Dclose);
  if (!ds.valid()) throw Error(origin_.label, origin_.file, path, "cannot create dataset");
  std::uint64_t elements = 1;
  for (auto n : dims) elements *= n;
  if (elements > 0 && H5Dwrite(ds.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    throw Error(origin_.label, origin_.file, path, "cannot write dataset");
  // Closed and checked here: on a full disk this is where the write fails,
  // while the file can still be emptied and closed (a failed file close
  // cannot be retried).
  if (ds.close() < 0) throw Error(origin_.label, origin_.file, path, "cannot close dataset (data not written)");
}

Dataset Group::create_appendable_raw(const std::string& name, hid_t file_type,
                                     const std::vector<std::uint64_t>& row_dims, std::uint64_t chunk_rows) {
  const std::string path = child_path(name);
  std::vector<hsize_t> dims{0}, maxdims{H5S_UNLIMITED}, chunk{chunk_rows};
  for (auto n : row_dims) {
    dims.push_back(n);
    maxdims.push_back(n);
    chunk.push_back(n);
  }
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.data()), H5Sclose);
  if (!space.valid()) throw Error(origin_.label, origin_.file, path, "cannot make the dataspace");
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!dcpl.valid() || H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) < 0)
    throw Error(origin_.label, origin_.file, path, "cannot set chunking");
  Handle ds(H5Dcreate2(id(), name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
            H5Dclose);
  if (!ds.valid()) throw Error(origin_.label, origin_.file, path, "cannot create dataset");
  return Dataset(origin_, path, std::move(ds));
}

// ---------------------------------------------------------------- File

File File::create(const std::string& path, Create mode, const std::string& label) {
  silence_error_printing();
  // Default file-access properties on purpose: the earliest-format superblock
  // has no "open for writing" flag, so a file left by a killed writer (after
  // a flush) opens without h5clear.
  Handle f(H5Fcreate(path.c_str(), mode == Create::truncate ? H5F_ACC_TRUNC : H5F_ACC_EXCL, H5P_DEFAULT,
                     H5P_DEFAULT),
           H5Fclose);
  if (!f.valid()) throw Error(label, path, "", "cannot create");
  return File(Origin{label, path}, std::move(f));
}

File File::open(const std::string& path, Access access, const std::string& label) {
  silence_error_printing();
  if (::access(path.c_str(), F_OK) != 0) throw Error(label, path, "", "does not exist");
  const bool read_only = access == Access::read_only;
  Handle f(H5Fopen(path.c_str(), read_only ? H5F_ACC_RDONLY : H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
  if (!f.valid())
    throw Error(label, path, "",
                std::string("cannot open ") + (read_only ? "read-only" : "read-write") +
                    " (not an HDF5 file, truncated or corrupt?)");
  return File(Origin{label, path}, std::move(f));
}

bool File::is_hdf5(const std::string& path) {
  silence_error_printing();
  const htri_t r = H5Fis_hdf5(path.c_str());
  H5Eclear2(H5E_DEFAULT);
  return r > 0;
}

void File::fail(const std::string& what) const { throw Error(origin_.label, origin_.file, "", what); }

Group File::root() const {
  if (!handle_.valid()) fail("is closed");
  Handle g(H5Gopen2(handle_.get(), "/", H5P_DEFAULT), H5Gclose);
  if (!g.valid()) fail("cannot open the root group");
  return Group(origin_, "/", std::move(g));
}

void File::flush() {
  if (!handle_.valid()) fail("is closed");
  if (H5Fflush(handle_.get(), H5F_SCOPE_GLOBAL) < 0) fail("cannot flush");
}

void File::close() {
  if (handle_.valid() && handle_.close() < 0) fail("cannot close (buffered data not written: disk full?)");
}

}  // namespace fulcrum::h5
