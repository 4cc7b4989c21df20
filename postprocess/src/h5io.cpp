#include "h5io.hpp"

#include <hdf5.h>

#include <stdexcept>

namespace fulcrum::fit {

void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

namespace {

bool read_string_attr(hid_t obj, const char* name, std::string& out) {
  if (H5Aexists(obj, name) <= 0) return false;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) return false;
  hid_t ft = H5Aget_type(a);
  bool ok = false;
  if (H5Tget_class(ft) == H5T_STRING) {
    if (H5Tis_variable_str(ft) > 0) {
      hid_t mt = H5Tcopy(H5T_C_S1);
      H5Tset_size(mt, H5T_VARIABLE);
      H5Tset_cset(mt, H5Tget_cset(ft));
      char* s = nullptr;
      if (H5Aread(a, mt, &s) >= 0 && s) {
        out = s;
        ok = true;
        hid_t sp = H5Aget_space(a);
        H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, &s);
        H5Sclose(sp);
      }
      H5Tclose(mt);
    } else {
      size_t n = H5Tget_size(ft);
      std::string buf(n, '\0');
      hid_t mt = H5Tcopy(H5T_C_S1);
      H5Tset_size(mt, n);
      if (H5Aread(a, mt, buf.data()) >= 0) {
        out = buf.substr(0, buf.find('\0'));
        ok = true;
      }
      H5Tclose(mt);
    }
  }
  H5Tclose(ft);
  H5Aclose(a);
  return ok;
}

bool read_num_attr(hid_t a, double& v) {
  hid_t ft = H5Aget_type(a);
  H5T_class_t c = H5Tget_class(ft);
  H5Tclose(ft);
  if (c != H5T_INTEGER && c != H5T_FLOAT) return false;
  hid_t sp = H5Aget_space(a);
  hssize_t n = H5Sget_simple_extent_npoints(sp);
  H5Sclose(sp);
  if (n != 1) return false;
  return H5Aread(a, H5T_NATIVE_DOUBLE, &v) >= 0;
}

struct IterCtx {
  std::map<std::string, double>* out;
};

herr_t attr_cb(hid_t loc, const char* name, const H5A_info_t*, void* data) {
  auto* ctx = static_cast<IterCtx*>(data);
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  if (a < 0) return 0;
  double v;
  if (read_num_attr(a, v)) (*ctx->out)[name] = v;
  H5Aclose(a);
  return 0;
}

bool read_group_attrs(hid_t file, const char* group, std::map<std::string, double>& out) {
  if (H5Lexists(file, group, H5P_DEFAULT) <= 0) return false;
  hid_t g = H5Gopen2(file, group, H5P_DEFAULT);
  if (g < 0) return false;
  IterCtx ctx{&out};
  hsize_t idx = 0;
  herr_t r = H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, attr_cb, &ctx);
  H5Gclose(g);
  return r >= 0;
}

void write_str_attr(hid_t obj, const std::string& name, const std::string& v) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  hid_t sp = H5Screate(H5S_SCALAR);
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  hid_t a = H5Acreate2(obj, name.c_str(), t, sp, H5P_DEFAULT, H5P_DEFAULT);
  const char* p = v.c_str();
  H5Awrite(a, t, &p);
  H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
}

void write_num_attr(hid_t obj, const std::string& name, double v, bool as_int) {
  hid_t sp = H5Screate(H5S_SCALAR);
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  hid_t ft = as_int ? H5T_STD_I64LE : H5T_IEEE_F64LE;
  hid_t a = H5Acreate2(obj, name.c_str(), ft, sp, H5P_DEFAULT, H5P_DEFAULT);
  if (as_int) {
    std::int64_t i = static_cast<std::int64_t>(v);
    H5Awrite(a, H5T_NATIVE_INT64, &i);
  } else {
    H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
  }
  H5Aclose(a);
  H5Sclose(sp);
}

void write_dataset(hid_t loc, const std::string& name, const std::vector<double>& v) {
  hsize_t n = v.size();
  hid_t sp = H5Screate_simple(1, &n, nullptr);
  hid_t d = H5Dcreate2(loc, name.c_str(), H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT,
                       H5P_DEFAULT);
  if (d < 0) {
    H5Sclose(sp);
    throw std::runtime_error("HDF5: cannot create dataset " + name);
  }
  if (n) H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
  H5Dclose(d);
  H5Sclose(sp);
}

bool is_int_key(const std::string& k) {
  static const char* ints[] = {"is_moe", "d_model", "n_layers", "num_experts",
                               "num_active_experts", "num_shared_experts", "d_expert",
                               "batch_tokens"};
  for (auto* s : ints)
    if (k == s) return true;
  return false;
}

}  // namespace

bool read_run_file(const std::string& path, RunRecord& out, std::string& reason) {
  quiet_hdf5();
  out = RunRecord{};
  out.path = path;
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    reason = "not a readable HDF5 file (truncated, corrupt or another format)";
    return false;
  }
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    reason = "HDF5 file cannot be opened (truncated or corrupt)";
    return false;
  }
  bool ok = false;
  do {
    std::string fmt;
    if (!read_string_attr(f, "format", fmt) || fmt != "fulcrum-run") {
      reason = "foreign HDF5 file: no root attribute format = \"fulcrum-run\"";
      break;
    }
    out.format = fmt;
    double ver = 0;
    hid_t a = H5Aexists(f, "format_version") > 0 ? H5Aopen(f, "format_version", H5P_DEFAULT) : -1;
    if (a < 0 || !read_num_attr(a, ver)) {
      if (a >= 0) H5Aclose(a);
      reason = "missing root attribute format_version";
      break;
    }
    H5Aclose(a);
    out.format_version = static_cast<std::int64_t>(ver);
    if (out.format_version != 1) {
      reason = "unsupported format_version " + std::to_string(out.format_version) +
               " (this fulcrum-fit reads version 1)";
      break;
    }
    if (!read_string_attr(f, "status", out.status)) {
      reason = "missing root attribute status";
      break;
    }
    read_string_attr(f, "deck", out.deck);
    if (H5Aexists(f, "seed") > 0) {
      hid_t s = H5Aopen(f, "seed", H5P_DEFAULT);
      double sv = 0;
      if (s >= 0 && read_num_attr(s, sv)) out.seed = static_cast<std::int64_t>(sv);
      if (s >= 0) H5Aclose(s);
    }
    if (!read_group_attrs(f, "/config", out.config)) {
      reason = "missing or unreadable group /config";
      break;
    }
    if (!read_group_attrs(f, "/summary", out.summary)) {
      reason = "missing or unreadable group /summary";
      break;
    }
    ok = true;
  } while (false);
  H5Fclose(f);
  return ok;
}

void write_run_file(const std::string& path, const RunRecord& rec) {
  quiet_hdf5();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) throw std::runtime_error("cannot create " + path);
  write_str_attr(f, "format", rec.format);
  write_num_attr(f, "format_version", static_cast<double>(rec.format_version), true);
  write_str_attr(f, "status", rec.status);
  write_str_attr(f, "deck", rec.deck);
  write_num_attr(f, "seed", static_cast<double>(rec.seed), true);
  hid_t g = H5Gcreate2(f, "config", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  for (auto& [k, v] : rec.config) write_num_attr(g, k, v, is_int_key(k));
  H5Gclose(g);
  g = H5Gcreate2(f, "summary", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  for (auto& [k, v] : rec.summary) write_num_attr(g, k, v, false);
  H5Gclose(g);
  auto it = rec.summary.find("final_train_loss");
  double l = it == rec.summary.end() ? 0.0 : it->second;
  write_dataset(f, "train", {l * 1.5, l * 1.1, l});
  write_dataset(f, "eval", {l * 1.5, l});
  H5Fclose(f);
}

H5Writer::H5Writer(const std::string& path) {
  quiet_hdf5();
  file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file_ < 0) throw std::runtime_error("cannot create " + path);
}

H5Writer::~H5Writer() {
  if (file_ >= 0) H5Fclose(file_);
}

void H5Writer::group(const std::string& path) {
  if (H5Lexists(file_, path.c_str(), H5P_DEFAULT) > 0) return;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t g = H5Gcreate2(file_, path.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT);
  H5Pclose(lcpl);
  if (g < 0) throw std::runtime_error("HDF5: cannot create group " + path);
  H5Gclose(g);
}

void H5Writer::dataset(const std::string& path, const std::vector<double>& v) {
  auto slash = path.rfind('/');
  std::string parent = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
  if (parent != "/") group(parent);
  write_dataset(file_, path, v);
}

void H5Writer::attr(const std::string& obj, const std::string& name, double v) {
  hid_t o = H5Oopen(file_, obj.c_str(), H5P_DEFAULT);
  write_num_attr(o, name, v, false);
  H5Oclose(o);
}

void H5Writer::attr(const std::string& obj, const std::string& name, const std::string& v) {
  hid_t o = H5Oopen(file_, obj.c_str(), H5P_DEFAULT);
  write_str_attr(o, name, v);
  H5Oclose(o);
}

}  // namespace fulcrum::fit
