// attention_kernel.hpp: which attention kernel a model runs, decided from the
// model's shape alone (so a deck always runs the same kernel: runs stay
// reproducible), and recorded in the run file and in --describe.
//
//   full   the T x T path (layers.hpp attention_forward/backward): batched
//          products through the gemm layer, the (B,nh,T,T) probabilities kept
//          per layer for backward
//   flash  the linear-memory path (attention.hpp): blocked online softmax,
//          only the (B,nh,T) log-sum-exp kept; backward recomputes
//
// The rule and the measurements behind it: doc/model.md "Attention kernels".
#pragma once

#include "model/model_shape.hpp"

namespace fulcrum {

enum class AttentionKernel { automatic, full, flash };

inline const char* attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::full: return "full";
    case AttentionKernel::flash: return "flash";
    default: return "automatic";
  }
}

// Bytes of kept attention state per layer for a micro-batch of B sequences:
// the full path's probabilities (B,nh,T,T) in the model's float.
inline double attention_full_bytes_per_layer(const ModelShape& s, int micro_batch, int float_bytes = 4) {
  return (double)micro_batch * s.n_heads * s.seq_len * s.seq_len * float_bytes;
}

// The rule: flash when the full path would keep at least this many bytes of
// probabilities per layer, full below. Measured on the 2-core AVX512-BF16 CPU
// (bench-attention, doc/model.md "Attention kernels"): with bf16 products the
// full path's oneDNN bf16 products are faster up to about this size (the
// quickstart's 4 MiB and study-size's 12 MiB per layer: full 1.1-1.6x
// faster), the two are level at 32-64 MiB (T = 1024-2048), and above it the
// full path's memory grows as T^2 while flash keeps (B,nh,T).
constexpr double kAttentionFlashMinBytesPerLayer = 64.0 * 1024 * 1024;

// The kernel a model of this shape runs with micro-batches of micro_batch
// sequences (`requested` other than automatic forces one: tests and
// benchmarks). A function of the deck alone, not of the machine.
inline AttentionKernel attention_kernel_for(const ModelShape& s, int micro_batch,
                                            AttentionKernel requested = AttentionKernel::automatic) {
  if (requested != AttentionKernel::automatic) return requested;
  // benchmarking builds (-DFULCRUM_ATTENTION_KERNEL_FULL or _FLASH in
  // CMAKE_CXX_FLAGS) force one kernel for every model; /config records it
#if defined(FULCRUM_ATTENTION_KERNEL_FULL)
  (void)s, (void)micro_batch;
  return AttentionKernel::full;
#elif defined(FULCRUM_ATTENTION_KERNEL_FLASH)
  (void)s, (void)micro_batch;
  return AttentionKernel::flash;
#else
  return attention_full_bytes_per_layer(s, micro_batch) >= kAttentionFlashMinBytesPerLayer ? AttentionKernel::flash
                                                                                         : AttentionKernel::full;
#endif
}

}  // namespace fulcrum
