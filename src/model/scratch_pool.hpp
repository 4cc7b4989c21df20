// scratch_pool.hpp: one grow-only device buffer that layers borrow during
// their backward, so gradient scratch is allocated once per model instead of
// once per layer. Valid because layers run their backward one after another
// and nothing a layer writes into the pool is read after its backward
// returns. The pool grows (never shrinks) when a layer asks for more than it
// holds: with expert parallelism the rows a rank receives vary per step.
#pragma once

#include <algorithm>
#include <memory>
#include <string>

#include "model/kokkos_types.hpp"

namespace fulcrum {

template <class T>
class ScratchPool {
 public:
  explicit ScratchPool(const char* label) : label_(label) {}
  // At least `elements` values, contents undefined; valid until the next take().
  T* take(long elements) {
    if (elements > (long)buffer_.extent(0)) {
      Kokkos::fence();  // the previous buffer may still be read by queued kernels
      buffer_ = DeviceBuffer<T>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label_)), elements);
    }
    return buffer_.data();
  }
  long capacity() const { return (long)buffer_.extent(0); }

 private:
  const char* label_;
  DeviceBuffer<T> buffer_;
};

// The row capacity a kept, grow-only buffer (the routed experts' activations,
// the expert-parallel receive buffers) needs for `rows` rows when it now holds
// `capacity`: unchanged when they fit, else at least `rows` and 25% over the
// old capacity, so a load that fluctuates between micro-batches does not
// reallocate every time. Never the worst case (every peer sending every token).
inline long grown_row_capacity(long rows, long capacity) {
  if (rows <= capacity && capacity > 0) return capacity;
  return std::max<long>(1, std::max(rows, capacity + capacity / 4));
}

template <class T>
using SharedScratchPool = std::shared_ptr<ScratchPool<T>>;

}  // namespace fulcrum
