// h5.hpp: the one HDF5 layer of Fulcrum, used by the run file, checkpoints and
// fulcrum-fit. RAII handles (every identifier closed by its owner), typed
// attribute and dataset helpers, and errors that name the file and the object
// path. HDF5's own error printing is switched off: every failure is an
// h5::Error carrying the innermost message of HDF5's error stack.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fulcrum::h5 {

// What went wrong, where: "<label> '<file>': <object>: <what> (HDF5: ...)".
// The label says what kind of file it is ("run file", "checkpoint"), so users
// read the same messages as before the layer existed.
class Error : public std::runtime_error {
 public:
  Error(const std::string& label, const std::string& file, const std::string& object,
        const std::string& what);
  const std::string& file() const noexcept { return file_; }
  const std::string& object() const noexcept { return object_; }

 private:
  std::string file_, object_;
};

// Switches off HDF5's printing of its error stack (once per process).
void silence_error_printing();

// Owns one HDF5 identifier and closes it with the matching H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), close_(closer) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept;
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and returns H5*close's status (callers that must know a close
  // succeeded, e.g. of data written to a full disk, check it). The
  // identifier is let go of either way: HDF5 cannot retry a failed close.
  herr_t close();
  void reset() { (void)close(); }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// Element types the dataset and attribute helpers read and write. The file
// type is the little-endian standard type of the same width (what the native
// types are on every machine Fulcrum runs on), so files are identical across
// builds.
template <class T>
struct TypeOf;
template <>
struct TypeOf<float> {
  static hid_t memory() { return H5T_NATIVE_FLOAT; }
  static hid_t file() { return H5T_IEEE_F32LE; }
};
template <>
struct TypeOf<double> {
  static hid_t memory() { return H5T_NATIVE_DOUBLE; }
  static hid_t file() { return H5T_IEEE_F64LE; }
};
template <>
struct TypeOf<std::int32_t> {
  static hid_t memory() { return H5T_NATIVE_INT32; }
  static hid_t file() { return H5T_STD_I32LE; }
};
template <>
struct TypeOf<std::int64_t> {
  static hid_t memory() { return H5T_NATIVE_INT64; }
  static hid_t file() { return H5T_STD_I64LE; }
};

enum class TypeClass { integer, floating, string, other };

// Where an object lives, for error messages: the file's path and label.
struct Origin {
  std::string label;
  std::string file;
};

// A group or dataset: what both have, attributes.
class Object {
 public:
  const std::string& path() const { return path_; }  // object path inside the file
  const std::string& file() const { return origin_.file; }
  hid_t id() const { return handle_.get(); }

  bool has_attr(const std::string& name) const;
  TypeClass attr_class(const std::string& name) const;
  // Scalar attributes; an existing attribute of the same name is replaced
  // (its type may change).
  void set_attr(const std::string& name, double value);
  void set_attr(const std::string& name, std::int64_t value);
  void set_attr(const std::string& name, const std::string& value);  // variable-length UTF-8
  void set_attr(const std::string& name, const char* value) { set_attr(name, std::string(value)); }
  // Scalar numeric attribute (any integer or float type) as double / int64.
  double attr_number(const std::string& name) const;
  std::int64_t attr_int(const std::string& name) const;
  // String attribute, variable or fixed length, any character set.
  std::string attr_string(const std::string& name) const;
  // Attribute names in name order.
  std::vector<std::string> attr_names() const;

  // Throws an Error naming the file and this object.
  [[noreturn]] void fail(const std::string& what) const;

 protected:
  friend class Group;  // opens members of any kind (Group::object)
  Object(Origin origin, std::string path, Handle handle)
      : origin_(std::move(origin)), path_(std::move(path)), handle_(std::move(handle)) {}
  std::string child_path(const std::string& name) const;
  Handle open_attr(const std::string& name) const;
  void write_scalar_attr(const std::string& name, hid_t file_type, hid_t memory_type, const void* value);

  Origin origin_;
  std::string path_;
  Handle handle_;
};

class Dataset : public Object {
 public:
  std::vector<std::uint64_t> dims() const;
  std::uint64_t size() const;  // number of elements
  // Created by Group::create_appendable (unlimited along dimension 0).
  bool appendable() const;
  TypeClass type_class() const;
  // The whole dataset, flattened row-major, converted to T (numeric datasets).
  template <class T>
  std::vector<T> read() const;
  // Appends one row along dimension 0; `count` must be the product of the
  // other dimensions (1 for a 1-D dataset).
  template <class T>
  void append_row(const T* row, std::size_t count);
  // Keeps the first `rows` rows of an appendable dataset.
  void resize_rows(std::uint64_t rows);

 private:
  friend class Group;
  using Object::Object;
  void read_raw(hid_t memory_type, void* out, std::size_t elements) const;
  void append_raw(hid_t memory_type, const void* row, std::size_t count);
};

class Group : public Object {
 public:
  // Whether a link of that (relative or absolute) path exists; false when an
  // intermediate group is missing.
  bool has(const std::string& name) const;
  Group group(const std::string& name) const;        // an existing group
  Group require_group(const std::string& name);      // opened or created, with missing parents
  Dataset dataset(const std::string& name) const;    // an existing dataset
  Object object(const std::string& name) const;      // an existing group or dataset, for its attributes
  bool has_dataset(const std::string& name) const;   // exists and is a dataset
  // Names of the links in this group, in name order.
  std::vector<std::string> children() const;

  // A fixed-size dataset holding `data` with dimensions `dims` (default: 1-D
  // of data.size()). Missing parent groups are created. The dataset is
  // closed before returning, so a write that could not reach the disk fails
  // here (open it with dataset() to add attributes).
  template <class T>
  void write_dataset(const std::string& name, const std::vector<T>& data, std::vector<std::uint64_t> dims = {});
  template <class T>
  void write_dataset(const std::string& name, const T* data, const std::vector<std::uint64_t>& dims);
  // An empty dataset of rows with dimensions `row_dims` each (empty: scalars),
  // unlimited along the row dimension, chunked `chunk_rows` rows at a time.
  template <class T>
  Dataset create_appendable(const std::string& name, const std::vector<std::uint64_t>& row_dims,
                            std::uint64_t chunk_rows);

 private:
  friend class File;
  using Object::Object;
  void write_raw(const std::string& name, hid_t file_type, hid_t memory_type, const void* data,
                 const std::vector<std::uint64_t>& dims);
  Dataset create_appendable_raw(const std::string& name, hid_t file_type,
                                const std::vector<std::uint64_t>& row_dims, std::uint64_t chunk_rows);
};

class File {
 public:
  enum class Create { truncate, exclusive };
  enum class Access { read_only, read_write };
  // `label` names the kind of file in error messages.
  static File create(const std::string& path, Create mode, const std::string& label = "HDF5 file");
  static File open(const std::string& path, Access access, const std::string& label = "HDF5 file");
  // Whether `path` is a readable HDF5 file (false for missing or foreign files).
  static bool is_hdf5(const std::string& path);

  const std::string& path() const { return origin_.file; }
  Group root() const;
  void flush();
  // Closes now, failing if HDF5 could not (e.g. could not write buffered data
  // on a full disk); the destructor closes silently otherwise.
  void close();
  [[noreturn]] void fail(const std::string& what) const;

 private:
  File(Origin origin, Handle handle) : origin_(std::move(origin)), handle_(std::move(handle)) {}
  Origin origin_;
  Handle handle_;
};

// ---------------------------------------------------------------- templates

template <class T>
std::vector<T> Dataset::read() const {
  std::vector<T> out(static_cast<std::size_t>(size()));
  read_raw(TypeOf<T>::memory(), out.data(), out.size());
  return out;
}

template <class T>
void Dataset::append_row(const T* row, std::size_t count) {
  append_raw(TypeOf<T>::memory(), row, count);
}

template <class T>
void Group::write_dataset(const std::string& name, const std::vector<T>& data, std::vector<std::uint64_t> dims) {
  if (dims.empty()) dims = {data.size()};
  write_raw(name, TypeOf<T>::file(), TypeOf<T>::memory(), data.data(), dims);
}

template <class T>
void Group::write_dataset(const std::string& name, const T* data, const std::vector<std::uint64_t>& dims) {
  write_raw(name, TypeOf<T>::file(), TypeOf<T>::memory(), data, dims);
}

template <class T>
Dataset Group::create_appendable(const std::string& name, const std::vector<std::uint64_t>& row_dims,
                                 std::uint64_t chunk_rows) {
  return create_appendable_raw(name, TypeOf<T>::file(), row_dims, chunk_rows);
}

}  // namespace fulcrum::h5
