// The HDF5 layer (src/io/h5.hpp): every helper round-trips its values, and
// every failure is an h5::Error naming the file and the object path.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/h5.hpp"

using namespace fulcrum;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = std::filesystem::temp_directory_path().string() + "/fulcrum_h5_XXXXXX";
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Runs `body`, which must throw an h5::Error; returns it.
template <class Body>
h5::Error error_of(Body&& body) {
  try {
    body();
  } catch (const h5::Error& e) {
    return e;
  }
  ADD_FAILURE() << "no h5::Error thrown";
  return h5::Error("", "", "", "none");
}

}  // namespace

TEST(H5, AttributesRoundTripOnGroupsAndDatasets) {
  TempDir d;
  const std::string path = d.file("attrs.h5");
  {
    h5::File f = h5::File::create(path, h5::File::Create::exclusive);
    h5::Group root = f.root();
    root.set_attr("real", 2.5);
    root.set_attr("int", std::int64_t{-9007199254740993});  // not representable as double
    root.set_attr("text", std::string("caf\xc3\xa9 \"quoted\"\nline"));
    root.set_attr("empty", "");
    h5::Group g = root.require_group("a/b");  // with its missing parent
    g.set_attr("replaced", 1.0);
    g.set_attr("replaced", "now a string");  // another type under the same name
    g.write_dataset("values", std::vector<double>{1, 2});
    h5::Dataset ds = g.dataset("values");
    ds.set_attr("unit", "nats");
    ds.set_attr("count", std::int64_t{3});
  }
  const h5::File f = h5::File::open(path, h5::File::Access::read_only);
  const h5::Group root = f.root();
  EXPECT_EQ(root.attr_number("real"), 2.5);
  EXPECT_EQ(root.attr_int("int"), std::int64_t{-9007199254740993});
  EXPECT_EQ(root.attr_int("real"), 2);  // a float read as an integer truncates
  EXPECT_EQ(root.attr_string("text"), "caf\xc3\xa9 \"quoted\"\nline");
  EXPECT_EQ(root.attr_string("empty"), "");
  EXPECT_EQ(root.attr_class("real"), h5::TypeClass::floating);
  EXPECT_EQ(root.attr_class("int"), h5::TypeClass::integer);
  EXPECT_EQ(root.attr_class("text"), h5::TypeClass::string);
  EXPECT_EQ(root.attr_names(), (std::vector<std::string>{"empty", "int", "real", "text"}));
  EXPECT_TRUE(root.has_attr("real"));
  EXPECT_FALSE(root.has_attr("nope"));
  const h5::Group g = root.group("/a/b");
  EXPECT_EQ(g.path(), "/a/b");
  EXPECT_EQ(g.attr_string("replaced"), "now a string");
  EXPECT_EQ(g.attr_names(), std::vector<std::string>{"replaced"});
  const h5::Dataset ds = g.dataset("values");
  EXPECT_EQ(ds.path(), "/a/b/values");
  EXPECT_EQ(ds.attr_string("unit"), "nats");
  EXPECT_EQ(ds.attr_int("count"), 3);
  EXPECT_EQ(root.object("a/b/values").attr_string("unit"), "nats");
}

TEST(H5, FixedLengthAndAsciiStringsAreRead) {
  // what other writers (h5py, h5dump-made files) may store
  TempDir d;
  const std::string path = d.file("fixed.h5");
  {
    h5::File f = h5::File::create(path, h5::File::Create::truncate);
    h5::Group root = f.root();
    h5::Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    ASSERT_GE(H5Tset_size(type.get(), 8), 0);
    h5::Handle space(H5Screate(H5S_SCALAR), H5Sclose);
    h5::Handle a(H5Acreate2(root.id(), "fixed", type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const char value[8] = {'a', 'b', 'c', '\0', '\0', '\0', '\0', '\0'};
    ASSERT_GE(H5Awrite(a.get(), type.get(), value), 0);
  }
  EXPECT_EQ(h5::File::open(path, h5::File::Access::read_only).root().attr_string("fixed"), "abc");
}

TEST(H5, DatasetsRoundTripEveryType) {
  TempDir d;
  const std::string path = d.file("data.h5");
  {
    h5::File f = h5::File::create(path, h5::File::Create::truncate);
    h5::Group root = f.root();
    root.write_dataset("f32", std::vector<float>{1.5f, -2.25f, 3e-8f});
    root.write_dataset("f64", std::vector<double>{0.1, 1e300, -0.0});
    root.write_dataset("i32", std::vector<std::int32_t>{-7, 0, 2147483647});
    root.write_dataset("i64", std::vector<std::int64_t>{-9007199254740993, 4});
    const std::vector<double> matrix = {1, 2, 3, 4, 5, 6};
    root.write_dataset("deep/group/matrix", matrix, {2, 3});
    root.write_dataset("deep/group/raw", matrix.data() + 1, {5});
    root.write_dataset("empty", std::vector<double>{});
  }
  const h5::Group root = h5::File::open(path, h5::File::Access::read_only).root();
  EXPECT_EQ(root.dataset("f32").read<float>(), (std::vector<float>{1.5f, -2.25f, 3e-8f}));
  EXPECT_EQ(root.dataset("f64").read<double>(), (std::vector<double>{0.1, 1e300, -0.0}));
  EXPECT_EQ(root.dataset("i32").read<std::int32_t>(), (std::vector<std::int32_t>{-7, 0, 2147483647}));
  EXPECT_EQ(root.dataset("i64").read<std::int64_t>(), (std::vector<std::int64_t>{-9007199254740993, 4}));
  EXPECT_EQ(root.dataset("i32").read<double>(), (std::vector<double>{-7, 0, 2147483647}));  // converted
  EXPECT_EQ(root.dataset("f32").type_class(), h5::TypeClass::floating);
  EXPECT_EQ(root.dataset("i64").type_class(), h5::TypeClass::integer);
  const h5::Dataset matrix = root.dataset("/deep/group/matrix");
  EXPECT_EQ(matrix.dims(), (std::vector<std::uint64_t>{2, 3}));
  EXPECT_EQ(matrix.size(), 6u);
  EXPECT_FALSE(matrix.appendable());
  EXPECT_EQ(matrix.read<double>(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(root.dataset("deep/group/raw").read<double>(), (std::vector<double>{2, 3, 4, 5, 6}));
  EXPECT_TRUE(root.dataset("empty").read<double>().empty());
  EXPECT_EQ(root.group("deep/group").children(), (std::vector<std::string>{"matrix", "raw"}));
  EXPECT_EQ(root.children(), (std::vector<std::string>{"deep", "empty", "f32", "f64", "i32", "i64"}));
  EXPECT_TRUE(root.has("deep/group/matrix"));
  EXPECT_TRUE(root.has_dataset("deep/group/matrix"));
  EXPECT_FALSE(root.has_dataset("deep/group"));   // a group
  EXPECT_FALSE(root.has("deep/nothing/matrix"));  // a missing intermediate group
  EXPECT_FALSE(root.has_dataset("nothing"));
}

TEST(H5, AppendableDatasetsGrowByRowsAndShrink) {
  TempDir d;
  const std::string path = d.file("rows.h5");
  {
    h5::File f = h5::File::create(path, h5::File::Create::truncate);
    h5::Group g = f.root().require_group("log");
    h5::Dataset steps = g.create_appendable<std::int64_t>("step", {}, 4);
    h5::Dataset grid = g.create_appendable<double>("grid", {2, 3}, 2);
    EXPECT_TRUE(steps.appendable());
    EXPECT_EQ(grid.dims(), (std::vector<std::uint64_t>{0, 2, 3}));
    for (std::int64_t s = 0; s < 10; ++s) steps.append_row(&s, 1);  // more rows than one chunk
    const std::vector<double> row0 = {0, 1, 2, 3, 4, 5}, row1 = {6, 7, 8, 9, 10, 11};
    grid.append_row(row0.data(), row0.size());
    grid.append_row(row1.data(), row1.size());
    f.flush();
  }
  {
    h5::File f = h5::File::open(path, h5::File::Access::read_write);
    h5::Group g = f.root().group("log");
    EXPECT_EQ(g.dataset("step").read<std::int64_t>(),
              (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
    h5::Dataset grid = g.dataset("grid");
    EXPECT_EQ(grid.dims(), (std::vector<std::uint64_t>{2, 2, 3}));
    EXPECT_EQ(grid.read<double>()[7], 7.0);
    g.dataset("step").resize_rows(3);
    grid.resize_rows(1);
    const double wrong_row[] = {1, 2};
    const h5::Error e = error_of([&] { grid.append_row(wrong_row, 2); });
    EXPECT_TRUE(contains(e.what(), path)) << e.what();
    EXPECT_TRUE(contains(e.what(), "/log/grid")) << e.what();
    EXPECT_TRUE(contains(e.what(), "a row has 6")) << e.what();
    f.close();
  }
  const h5::Group g = h5::File::open(path, h5::File::Access::read_only).root().group("log");
  EXPECT_EQ(g.dataset("step").read<std::int64_t>(), (std::vector<std::int64_t>{0, 1, 2}));
  EXPECT_EQ(g.dataset("grid").read<double>(), (std::vector<double>{0, 1, 2, 3, 4, 5}));
}

TEST(H5, ErrorsNameTheFileAndTheObjectPath) {
  TempDir d;
  const std::string path = d.file("errors.h5");
  {
    h5::File f = h5::File::create(path, h5::File::Create::truncate, "test file");
    h5::Group root = f.root();
    root.require_group("config").set_attr("name", "x");
    root.write_dataset("config/values", std::vector<double>{1});
    root.write_dataset("labels", std::vector<std::int32_t>{1});
  }
  const h5::File f = h5::File::open(path, h5::File::Access::read_only, "test file");
  const h5::Group root = f.root();

  // a missing object: the message and the error's fields name file and path
  const h5::Error missing = error_of([&] { root.dataset("train/nope"); });
  EXPECT_EQ(missing.file(), path);
  EXPECT_EQ(missing.object(), "/train/nope");
  EXPECT_TRUE(contains(missing.what(), "test file '" + path + "'")) << missing.what();
  EXPECT_TRUE(contains(missing.what(), "/train/nope: dataset not found")) << missing.what();

  const h5::Error missing_group = error_of([&] { root.group("config").group("sub"); });
  EXPECT_EQ(missing_group.object(), "/config/sub");
  EXPECT_TRUE(contains(missing_group.what(), "group not found")) << missing_group.what();

  const h5::Error missing_attr = error_of([&] { root.group("config").attr_string("seed"); });
  EXPECT_EQ(missing_attr.object(), "/config");
  EXPECT_TRUE(contains(missing_attr.what(), "attribute 'seed' not found")) << missing_attr.what();

  const h5::Error not_numeric = error_of([&] { root.group("config").attr_number("name"); });
  EXPECT_TRUE(contains(not_numeric.what(), "'name' is not numeric")) << not_numeric.what();
  const h5::Error not_string = error_of([&] { root.dataset("labels").attr_string("unit"); });
  EXPECT_EQ(not_string.object(), "/labels");
  const h5::Error a_group = error_of([&] { root.dataset("config"); });
  EXPECT_TRUE(contains(a_group.what(), "/config: cannot open as a dataset")) << a_group.what();
  const h5::Error a_dataset = error_of([&] { root.group("config/values"); });
  EXPECT_TRUE(contains(a_dataset.what(), "/config/values: cannot open as a group")) << a_dataset.what();
  const h5::Error read_only = error_of([&] { root.group("config").set_attr("more", 1.0); });
  EXPECT_TRUE(contains(read_only.what(), "cannot create attribute 'more'")) << read_only.what();
  EXPECT_TRUE(contains(read_only.what(), "(HDF5: ")) << read_only.what();  // HDF5's own reason follows
}

TEST(H5, FileErrorsNameTheFile) {
  TempDir d;
  const std::string missing = d.file("missing.h5");
  const h5::Error not_there = error_of([&] { h5::File::open(missing, h5::File::Access::read_only, "run file"); });
  EXPECT_EQ(std::string(not_there.what()), "run file '" + missing + "': does not exist");
  EXPECT_FALSE(h5::File::is_hdf5(missing));

  const std::string junk = d.file("junk.h5");
  std::ofstream(junk) << "not an HDF5 file\n";
  EXPECT_FALSE(h5::File::is_hdf5(junk));
  const h5::Error not_hdf5 = error_of([&] { h5::File::open(junk, h5::File::Access::read_write); });
  EXPECT_TRUE(contains(not_hdf5.what(), "HDF5 file '" + junk + "': cannot open read-write")) << not_hdf5.what();

  const std::string existing = d.file("existing.h5");
  h5::File::create(existing, h5::File::Create::truncate).close();
  EXPECT_TRUE(h5::File::is_hdf5(existing));
  const h5::Error exclusive = error_of([&] { h5::File::create(existing, h5::File::Create::exclusive); });
  EXPECT_TRUE(contains(exclusive.what(), existing + "': cannot create")) << exclusive.what();

  h5::File f = h5::File::open(existing, h5::File::Access::read_write);
  f.close();
  const h5::Error closed = error_of([&] { f.root(); });
  EXPECT_TRUE(contains(closed.what(), "is closed")) << closed.what();
}
