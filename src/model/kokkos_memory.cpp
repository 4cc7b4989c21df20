// kokkos_memory.cpp: Kokkos allocation callbacks summed into current and peak
// bytes (kokkos_memory.hpp). Allocations happen on the host thread that owns
// the View, but a Kokkos-OpenMP or threaded program may allocate from more
// than one thread: the counters are guarded by a mutex (allocations are
// rare: per model build and per growth of a buffer, never per kernel).
#include "model/kokkos_memory.hpp"

#include <Kokkos_Core.hpp>

#include <mutex>

namespace fulcrum {
namespace {

struct Counters {
  std::mutex lock;
  bool installed = false;
  std::uint64_t current = 0, peak = 0;
} counters;

void on_allocate(const Kokkos::Profiling::SpaceHandle /*space*/, const char* /*label*/, const void* /*ptr*/,
                 const std::uint64_t bytes) {
  std::lock_guard<std::mutex> g(counters.lock);
  counters.current += bytes;
  if (counters.current > counters.peak) counters.peak = counters.current;
}

void on_deallocate(const Kokkos::Profiling::SpaceHandle /*space*/, const char* /*label*/, const void* /*ptr*/,
                   const std::uint64_t bytes) {
  std::lock_guard<std::mutex> g(counters.lock);
  // Views allocated before tracking began are freed too: never go below 0.
  counters.current -= bytes < counters.current ? bytes : counters.current;
}

}  // namespace

void track_kokkos_memory() {
  std::lock_guard<std::mutex> g(counters.lock);
  if (counters.installed) return;
  // A Kokkos Tools library (KOKKOS_TOOLS_LIBS, e.g. the memory-high-water
  // tool) owns the callbacks: leave it alone rather than silently replace it.
  if (Kokkos::Tools::profileLibraryLoaded()) return;
  Kokkos::Tools::Experimental::set_allocate_data_callback(on_allocate);
  Kokkos::Tools::Experimental::set_deallocate_data_callback(on_deallocate);
  counters.installed = true;
}

void reset_kokkos_memory_peak() {
  std::lock_guard<std::mutex> g(counters.lock);
  counters.peak = counters.current;
}

KokkosMemoryUse kokkos_memory_use() {
  std::lock_guard<std::mutex> g(counters.lock);
  KokkosMemoryUse u;
  u.tracked = counters.installed;
  u.current = counters.current;
  u.peak = counters.peak;
  return u;
}

}  // namespace fulcrum
