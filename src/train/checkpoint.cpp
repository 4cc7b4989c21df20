#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>

#include "data/hash.hpp"
#include "io/h5.hpp"

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
  full.reserve((std::size_t)replicated + all_experts.size());
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

constexpr const char* kLabel = "checkpoint";

// Group of every tensor set: parameters and both AdamW moments.
const char* const kGroups[3] = {"params", "adam_m", "adam_v"};

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
  // One tensor set in host memory at a time (gathered, written, freed): the
  // three full sets at once more than doubled a run's peak RSS (a 53M-parameter
  // model: 2.5 GiB resident against 0.9 GiB of Kokkos allocations).
  const DeviceBuffer<float>* const sets[3] = {&model.params(), &optimizer.first_moment(),
                                              &optimizer.second_moment()};
  const std::string tmp = path + ".tmp";
  std::optional<h5::File> file;
  Fnv1a sum;
  std::string error;  // rank 0's first failure; the other ranks keep taking part in the gathers
  auto on_rank0 = [&](const auto& work) {
    if (g.world_rank != 0 || !error.empty()) return;
    errno = 0;
    try {
      work();
    } catch (const std::exception& e) {
      // HDF5 keeps the system error in errno for failed writes (ENOSPC, EACCES)
      const bool from_hdf5 = dynamic_cast<const h5::Error*>(&e) != nullptr;
      const std::string why = from_hdf5 && errno != 0 ? std::string(" (") + std::strerror(errno) + ")" : "";
      std::error_code ec;
      // On a full disk H5Fclose cannot flush and leaves the file open: empty it
      // first, so its blocks are freed (the run file still has room to finish)
      // and the close succeeds.
      if (file) std::filesystem::resize_file(tmp, 0, ec);
      file.reset();
      std::filesystem::remove(tmp, ec);  // the previous checkpoint stays intact
      error = e.what() + why;
    }
  };
  on_rank0([&] {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    file = h5::File::create(tmp, h5::File::Create::truncate, kLabel);
  });
  for (int k = 0; k < 3; ++k) {
    const std::vector<float> full = gather_full(host_copy(*sets[k]), layout, g);  // collective over g.ep
    on_rank0([&] {
      h5::Group tensors = file->root().require_group(kGroups[k]);
      long off = 0;
      for (const auto& t : layout) {
        std::vector<std::uint64_t> dims(t.shape.begin(), t.shape.end());
        if (t.is_expert) dims[0] *= g.ep_size;  // full tensor
        tensors.write_dataset(t.name, full.data() + off, dims);
        sum.add(full.data() + off, sizeof(float) * t.full_size);
        off += t.full_size;
      }
    });
  }
  on_rank0([&] {
    {
      h5::Group root = file->root();
      sum.add(state.logged_lm.data(), sizeof(double) * state.logged_lm.size());
      sum.add(state.routing.data(), sizeof(double) * state.routing.size());
      sum.add(state.router_bias.data(), sizeof(double) * state.router_bias.size());
      const double scalars[4] = {(double)state.step, (double)state.optimizer_steps, state.tokens_seen,
                                 state.first_loss};
      sum.add(scalars, sizeof scalars);
      h5::Group st = root.require_group("state");
      st.write_dataset("logged_lm", state.logged_lm);
      st.write_dataset("routing", state.routing);
      if (!state.router_bias.empty()) st.write_dataset("router_bias", state.router_bias);
      root.set_attr("format", kFormat);
      root.set_attr("format_version", kFormatVersion);
      root.set_attr("step", std::int64_t{state.step});
      root.set_attr("optimizer_steps", std::int64_t{state.optimizer_steps});
      root.set_attr("tokens_seen", state.tokens_seen);
      root.set_attr("first_loss", state.first_loss);
      root.set_attr("last_val_loss", state.last_val_loss);
      root.set_attr("fingerprint", state.fingerprint);
      root.set_attr("saved_expert_parallel", std::int64_t{g.ep_size});
      root.set_attr("checksum_fnv1a64", hex64(sum.h));
    }  // every object closed before the file, so close() really closes it
    file->close();
    file.reset();
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
  });
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
  try {
    const h5::File file = h5::File::open(path, h5::File::Access::read_only, kLabel);
    const h5::Group root = file.root();
    if (!root.has_attr("format") || root.attr_string("format") != kFormat)
      throw CheckpointError("checkpoint '" + path + "': not a Fulcrum checkpoint");
    Fnv1a sum;
    for (int k = 0; k < 3; ++k) {
      const h5::Group tensors = root.group(kGroups[k]);
      for (const auto& t : layout) {
        const std::vector<float> v = tensors.dataset(t.name).read<float>();
        if ((long)v.size() != t.full_size)
          throw CheckpointError("checkpoint '" + path + "': tensor " + t.name + " has " + std::to_string(v.size()) +
                                " elements, the model needs " + std::to_string(t.full_size));
        sum.add(v.data(), sizeof(float) * v.size());
        full[k].insert(full[k].end(), v.begin(), v.end());
      }
    }
    const h5::Group st = root.group("state");
    state.logged_lm = st.dataset("logged_lm").read<double>();
    state.routing = st.dataset("routing").read<double>();
    if (st.has("router_bias"))  // absent in checkpoints of earlier versions
      state.router_bias = st.dataset("router_bias").read<double>();
    state.step = root.attr_int("step");
    state.optimizer_steps = root.attr_int("optimizer_steps");
    state.tokens_seen = root.attr_number("tokens_seen");
    state.first_loss = root.attr_number("first_loss");
    state.last_val_loss = root.attr_number("last_val_loss");
    state.fingerprint = root.attr_string("fingerprint");
    sum.add(state.logged_lm.data(), sizeof(double) * state.logged_lm.size());
    sum.add(state.routing.data(), sizeof(double) * state.routing.size());
    sum.add(state.router_bias.data(), sizeof(double) * state.router_bias.size());
    const double scalars[4] = {(double)state.step, (double)state.optimizer_steps, state.tokens_seen, state.first_loss};
    sum.add(scalars, sizeof scalars);
    const std::string stored = root.attr_string("checksum_fnv1a64");
    if (stored != hex64(sum.h))
      throw CheckpointError("checkpoint '" + path + "': checksum mismatch (stored " + stored + ", computed " +
                            hex64(sum.h) + "): the file is corrupted");
  } catch (const std::exception& e) {
    error = e.what();
  }
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
