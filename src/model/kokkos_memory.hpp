// kokkos_memory.hpp: how many bytes this process has allocated through Kokkos
// (every View: parameters, gradients, optimizer moments, activations,
// dispatcher buffers), now and at its peak, per memory space.
//
// Why not the resident set: on a GPU the model lives in device memory, which
// the host's RSS does not see; and on the host RSS also counts libraries,
// MPI's buffers and oneDNN's scratch. The Kokkos peak is the number the
// --describe estimate (model_memory.hpp) predicts and the one a user sizes a
// GPU by. It is read from Kokkos' own allocation callbacks (Kokkos Tools),
// available in Kokkos 3.4 through 5.x.
#pragma once

#include <cstdint>

namespace fulcrum {

struct KokkosMemoryUse {
  bool tracked = false;        // false: a Kokkos Tools library owns the callbacks
  std::uint64_t current = 0;   // bytes allocated now, all memory spaces
  std::uint64_t peak = 0;      // largest `current` seen since tracking began
};

// Installs the allocation callbacks. Call once, after Kokkos::initialize and
// before the model is built. Does nothing (tracked = false) when a Kokkos
// Tools library was loaded (KOKKOS_TOOLS_LIBS): its callbacks are left alone.
void track_kokkos_memory();
// Starts a new peak from what is allocated now (one run of several in a process).
void reset_kokkos_memory_peak();
// What has been counted so far (process-local; reduce over ranks yourself).
KokkosMemoryUse kokkos_memory_use();

}  // namespace fulcrum
