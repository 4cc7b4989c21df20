#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "data/hash.hpp"

namespace fulcrum {

namespace {

constexpr const char* kFormat = "fulcrum-checkpoint";
constexpr std::int64_t kFormatVersion = 1;

// FNV-1a 64 (data/hash.hpp) over raw bytes: cheap and enough to detect corruption.
struct Fnv1a {
  std::uint64_t h = kFnvOffset;
  void add(const void* data, std::size_t n) { h = fnv1a64(std::string_view(static_cast<const char*>(data), n), h); }
};

// Host copy of a device buffer.
std::vector<float> host_copy(const DeviceBuffer<float>& d) {
  std::vector<float> out(d.extent(0));
  Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(out.data(), out.size());
  Kokkos::deep_copy(h, d);
  return out;
}
void device_copy(DeviceBuffer<float>& d, const std::vector<float>& host) {
  Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>> h(host.data(), host.size());
  Kokkos::deep_copy(d, h);
}

// Full tensors (in full-layout order) from this rank's buffer and its EP
// peers' expert shards. Result valid on EP rank 0; collective over g.ep.
std::vector<float> gather_full(const std::vector<float>& local, const std::vector<ParameterTensor>& layout,
                               const ParallelGroups& g) {
  const long replicated = replicated_parameter_count(layout);
  const long expert_region = static_cast<long>(local.size()) - replicated;
  std::vector<float> all_experts((std::size_t)expert_region * g.ep_size);
  MPI_Gather(local.data() + replicated, (int)expert_region, MPI_FLOAT, all_experts.data(), (int)expert_region,
             MPI_FLOAT, 0, g.ep);
  std::vector<float> full;
  for (const auto& t : layout) {
    if (!t.is_expert) {
      full.insert(full.end(), local.begin() + t.offset, local.begin() + t.offset + t.size);
      continue;
    }
    for (int p = 0; p < g.ep_size; ++p) {
      const float* shard = all_experts.data() + (std::size_t)p * expert_region + (t.offset - replicated);
      full.insert(full.end(), shard, shard + t.size);
    }
  }
  return full;
}

void check(herr_t rc, const std::string& path, const std::string& what) {
  if (rc >= 0) return;
  // HDF5 keeps the system error in errno for failed writes (ENOSPC, EACCES)
  const std::string why = errno != 0 ? std::string(" (") + std::strerror(errno) + ")" : "";
  throw CheckpointError("checkpoint '" + path + "': cannot " + what + why);
}

void write_attr_i64(hid_t obj, const char* name, std::int64_t v, const std::string& path) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, H5T_NATIVE_INT64, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT64, &v);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  check(rc, path, std::string("write attribute ") + name);
}
void write_attr_f64(hid_t obj, const char* name, double v, const std::string& path) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, H5T_NATIVE_DOUBLE, sp, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  check(rc, path, std::string("write attribute ") + name);
}
void write_attr_str(hid_t obj, const char* name, const std::string& v, const std::string& path) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
  const char* c = v.c_str();
  herr_t rc = a < 0 ? -1 : H5Awrite(a, type, &c);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(type);
  check(rc, path, std::string("write attribute ") + name);
}
std::int64_t read_attr_i64(hid_t obj, const char* name, const std::string& path) {
  std::int64_t v = 0;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  herr_t rc = a < 0 ? -1 : H5Aread(a, H5T_NATIVE_INT64, &v);
  if (a >= 0) H5Aclose(a);
  check(rc, path, std::string("read attribute ") + name);
  return v;
}
double read_attr_f64(hid_t obj, const char* name, const std::string& path) {
  double v = 0;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  herr_t rc = a < 0 ? -1 : H5Aread(a, H5T_NATIVE_DOUBLE, &v);
  if (a >= 0) H5Aclose(a);
  check(rc, path, std::string("read attribute ") + name);
  return v;
}
std::string read_attr_str(hid_t obj, const char* name, const std::string& path) {
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  if (a < 0) throw CheckpointError("checkpoint '" + path + "': missing attribute " + name);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);  // as written; HDF5 does not convert between csets
  char* c = nullptr;
  herr_t rc = H5Aread(a, type, &c);
  std::string out = (rc >= 0 && c) ? c : "";
  if (rc >= 0 && c) H5free_memory(c);
  H5Tclose(type);
  H5Aclose(a);
  check(rc, path, std::string("read attribute ") + name);
  return out;
}

template <class V>
void write_dataset(hid_t loc, const std::string& name, hid_t mem_type, const std::vector<hsize_t>& dims,
                   const V* data, const std::string& path) {
  hid_t sp = H5Screate_simple((int)dims.size(), dims.data(), nullptr);
  hid_t d = H5Dcreate2(loc, name.c_str(), mem_type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = d < 0 ? -1 : H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  if (d >= 0) check(H5Dclose(d), path, "close dataset " + name);
  H5Sclose(sp);
  check(rc, path, "write dataset " + name);
}
template <class V>
std::vector<V> read_dataset(hid_t loc, const std::string& name, hid_t mem_type, const std::string& path) {
  hid_t d = H5Dopen2(loc, name.c_str(), H5P_DEFAULT);
  if (d < 0) throw CheckpointError("checkpoint '" + path + "': missing dataset " + name);
  hid_t sp = H5Dget_space(d);
  const hssize_t n = H5Sget_simple_extent_npoints(sp);
  std::vector<V> out(n > 0 ? n : 0);
  herr_t rc = n > 0 ? H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) : 0;
  H5Sclose(sp);
  H5Dclose(d);
  check(rc, path, "read dataset " + name);
  return out;
}

const char* kGroups[3] = {"params", "adam_m", "adam_v"};

// Broadcasts rank 0's error (empty = none) and throws it on every rank.
void agree_on_error(std::string error, MPI_Comm world) {
  int n = static_cast<int>(error.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, world);
  error.resize(n);
  if (n > 0) MPI_Bcast(error.data(), n, MPI_CHAR, 0, world);
  if (n > 0) throw CheckpointError(error);
}

}  // namespace

void save_checkpoint(const std::string& path, Transformer<float>& model, AdamW<float>& optimizer,
                     const TrainerState& state, const ParallelGroups& g) {
  Kokkos::fence();
  const auto& layout = model.layout();
  std::vector<float> full[3] = {gather_full(host_copy(model.params()), layout, g),
                                gather_full(host_copy(optimizer.first_moment()), layout, g),
                                gather_full(host_copy(optimizer.second_moment()), layout, g)};
  std::string error;
  if (g.world_rank == 0) {
    const std::string tmp = path + ".tmp";
    hid_t f = -1;
    errno = 0;
    try {
      std::filesystem::create_directories(std::filesystem::path(path).parent_path());
      f = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
      if (f < 0) throw CheckpointError("checkpoint '" + tmp + "': cannot create file");
      Fnv1a sum;
      for (int k = 0; k < 3; ++k) {
        hid_t grp = H5Gcreate2(f, kGroups[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        long off = 0;
        for (const auto& t : layout) {
          std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
          if (t.is_expert) dims[0] *= g.ep_size;  // full tensor
          write_dataset(grp, t.name, H5T_NATIVE_FLOAT, dims, full[k].data() + off, tmp);
          sum.add(full[k].data() + off, sizeof(float) * t.full_size);
          off += t.full_size;
        }
        H5Gclose(grp);
      }
      sum.add(state.logged_lm.data(), sizeof(double) * state.logged_lm.size());
      sum.add(state.routing.data(), sizeof(double) * state.routing.size());
      sum.add(state.router_bias.data(), sizeof(double) * state.router_bias.size());
      const double scalars[4] = {(double)state.step, (double)state.optimizer_steps, state.tokens_seen, state.first_loss};
      sum.add(scalars, sizeof scalars);
      hid_t st = H5Gcreate2(f, "state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      write_dataset(st, "logged_lm", H5T_NATIVE_DOUBLE, {(hsize_t)state.logged_lm.size()}, state.logged_lm.data(), tmp);
      write_dataset(st, "routing", H5T_NATIVE_DOUBLE, {(hsize_t)state.routing.size()}, state.routing.data(), tmp);
      if (!state.router_bias.empty())
        write_dataset(st, "router_bias", H5T_NATIVE_DOUBLE, {(hsize_t)state.router_bias.size()},
                      state.router_bias.data(), tmp);
      H5Gclose(st);
      write_attr_str(f, "format", kFormat, tmp);
      write_attr_i64(f, "format_version", kFormatVersion, tmp);
      write_attr_i64(f, "step", state.step, tmp);
      write_attr_i64(f, "optimizer_steps", state.optimizer_steps, tmp);
      write_attr_f64(f, "tokens_seen", state.tokens_seen, tmp);
      write_attr_f64(f, "first_loss", state.first_loss, tmp);
      write_attr_f64(f, "last_val_loss", state.last_val_loss, tmp);
      write_attr_str(f, "fingerprint", state.fingerprint, tmp);
      write_attr_i64(f, "saved_expert_parallel", g.ep_size, tmp);
      write_attr_str(f, "checksum_fnv1a64", hex64(sum.h), tmp);
      const herr_t rc = H5Fclose(f);
      f = -1;
      check(rc, tmp, "close (disk full?)");
      // durability: the data, then the rename, then the directory entry
      const int fd = ::open(tmp.c_str(), O_RDONLY);
      if (fd < 0 || ::fsync(fd) != 0) {
        if (fd >= 0) ::close(fd);
        throw CheckpointError("checkpoint '" + tmp + "': fsync failed: " + std::strerror(errno));
      }
      ::close(fd);
      if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw CheckpointError("checkpoint '" + path + "': rename failed: " + std::strerror(errno));
      const int dfd = ::open(std::filesystem::path(path).parent_path().c_str(), O_RDONLY);
      if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
      }
    } catch (const std::exception& e) {
      std::error_code ec;
      // On a full disk H5Fclose cannot flush and leaves the file open: empty it
      // first, so its blocks are freed (the run file still has room to finish)
      // and the close succeeds.
      std::filesystem::resize_file(tmp, 0, ec);
      if (f >= 0) H5Fclose(f);
      std::filesystem::remove(tmp, ec);  // the previous checkpoint stays intact
      error = e.what();
    }
  }
  agree_on_error(error, g.world);
}

TrainerState load_checkpoint(const std::string& path, Transformer<float>& model, AdamW<float>& optimizer,
                             const ParallelGroups& g) {
  const auto& layout = model.layout();
  TrainerState state;
  std::string error;
  std::vector<float> full[3];
  // Every rank reads the file (read-only); rank 0's verdict on the checksum
  // and the shapes is shared so all ranks fail or succeed together.
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  try {
    if (f < 0) throw CheckpointError("checkpoint '" + path + "': cannot open (missing, truncated or not HDF5)");
    if (read_attr_str(f, "format", path) != kFormat)
      throw CheckpointError("checkpoint '" + path + "': not a Fulcrum checkpoint");
    Fnv1a sum;
    for (int k = 0; k < 3; ++k) {
      hid_t grp = H5Gopen2(f, kGroups[k], H5P_DEFAULT);
      if (grp < 0) throw CheckpointError("checkpoint '" + path + "': missing group " + kGroups[k]);
      for (const auto& t : layout) {
        auto v = read_dataset<float>(grp, t.name, H5T_NATIVE_FLOAT, path);
        if ((long)v.size() != t.full_size) {
          H5Gclose(grp);
          throw CheckpointError("checkpoint '" + path + "': tensor " + t.name + " has " + std::to_string(v.size()) +
                                " elements, the model needs " + std::to_string(t.full_size));
        }
        sum.add(v.data(), sizeof(float) * v.size());
        full[k].insert(full[k].end(), v.begin(), v.end());
      }
      H5Gclose(grp);
    }
    hid_t st = H5Gopen2(f, "state", H5P_DEFAULT);
    if (st < 0) throw CheckpointError("checkpoint '" + path + "': missing group state");
    state.logged_lm = read_dataset<double>(st, "logged_lm", H5T_NATIVE_DOUBLE, path);
    state.routing = read_dataset<double>(st, "routing", H5T_NATIVE_DOUBLE, path);
    if (H5Lexists(st, "router_bias", H5P_DEFAULT) > 0)  // absent in checkpoints of earlier versions
      state.router_bias = read_dataset<double>(st, "router_bias", H5T_NATIVE_DOUBLE, path);
    H5Gclose(st);
    state.step = read_attr_i64(f, "step", path);
    state.optimizer_steps = read_attr_i64(f, "optimizer_steps", path);
    state.tokens_seen = read_attr_f64(f, "tokens_seen", path);
    state.first_loss = read_attr_f64(f, "first_loss", path);
    state.last_val_loss = read_attr_f64(f, "last_val_loss", path);
    state.fingerprint = read_attr_str(f, "fingerprint", path);
    sum.add(state.logged_lm.data(), sizeof(double) * state.logged_lm.size());
    sum.add(state.routing.data(), sizeof(double) * state.routing.size());
    sum.add(state.router_bias.data(), sizeof(double) * state.router_bias.size());
    const double scalars[4] = {(double)state.step, (double)state.optimizer_steps, state.tokens_seen, state.first_loss};
    sum.add(scalars, sizeof scalars);
    const std::string stored = read_attr_str(f, "checksum_fnv1a64", path);
    if (stored != hex64(sum.h))
      throw CheckpointError("checkpoint '" + path + "': checksum mismatch (stored " + stored + ", computed " +
                            hex64(sum.h) + "): the file is corrupted");
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (f >= 0) H5Fclose(f);
  // a rank that alone failed to read makes everyone fail
  int bad = error.empty() ? 0 : 1, any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, g.world);
  if (any_bad) {  // rank 0's message (or a generic one) is thrown on every rank
    if (error.empty()) error = "checkpoint '" + path + "': another rank could not read it";
    agree_on_error(error, g.world);
  }
  // this rank's slice of every tensor
  DeviceBuffer<float>* targets[3] = {&model.params(), &optimizer.first_moment(), &optimizer.second_moment()};
  for (int k = 0; k < 3; ++k) {
    std::vector<float> local(targets[k]->extent(0));
    long off = 0;
    for (const auto& t : layout) {
      std::copy(full[k].begin() + off + t.shard_offset, full[k].begin() + off + t.shard_offset + t.size,
                local.begin() + t.offset);
      off += t.full_size;
    }
    device_copy(*targets[k], local);
  }
  optimizer.set_steps_taken(state.optimizer_steps);
  return state;
}

}  // namespace fulcrum
