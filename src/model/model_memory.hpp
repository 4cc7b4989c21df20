// model_memory.hpp: the memory one rank of a training run will hold, estimated
// from the deck before anything is allocated (fulcrum-train --describe), so a
// user sizes a GPU or a node before submitting. No Kokkos here.
//
// The estimate counts the buffers the trainer allocates (transformer.hpp
// allocate_activations, moe_layer.hpp, token_dispatcher.hpp, experts.hpp,
// adamw.hpp): parameters, gradients and AdamW moments of this rank's share
// (routed experts sharded over EP); activations kept for backward per layer;
// the gradient scratch shared by layers; the logits; per MoE layer the router,
// dispatcher and expert buffers at balanced routing. The run file records the
// measured Kokkos peak beside it (/summary/peak_kokkos_bytes), and
// tests/cli checks the two agree. Not counted: the process itself (libraries,
// MPI, the token files), which is in the resident set but not in Kokkos.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/model_shape.hpp"

namespace fulcrum {

struct MemoryEstimate {
  // (part, bytes), printed by --describe as memory_<part>_bytes: parameters_state,
  // activations, attention, logits, gradient_scratch, embedding_sort (device backends), moe_layers,
  // moe_grad_scratch (Kokkos), bf16_weight_copy (host)
  std::vector<std::pair<std::string, double>> parts;
  double kokkos_bytes = 0;  // sum of the parts allocated through Kokkos (device memory on a GPU)
  double host_bytes = 0;    // the gemm backend's bf16 weight copy (host memory, oneDNN)
};

struct MemoryEstimateInputs {
  int micro_batch = 1;              // sequences per micro-batch (B)
  int float_bytes = 4;              // the model's float (4: float)
  bool bf16_products = false;       // precision bf16: one bf16 copy of the weights
  bool distributed_dispatcher = false;  // mpi_alltoall / nccl (receive buffers sized from counts)
  bool flash_attention = false;     // attention_kernel_for(...) == flash
  bool device_nests = false;        // a device backend (GPU): the embedding backward's sort buffers
};

MemoryEstimate estimate_rank_memory(const ModelShape& shape, const MemoryEstimateInputs& in);

// Bytes of the embedding backward's sort buffers (layers.hpp
// EmbeddingBackwardScratch, device backends only) for `tokens` positions and
// a vocabulary of `vocab`.
double embedding_sort_bytes(double tokens, double vocab);

}  // namespace fulcrum
