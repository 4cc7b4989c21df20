#include "model/token_dispatcher.hpp"

#include <stdexcept>

#include "model/mpi_token_dispatcher.hpp"
#ifdef FULCRUM_HAVE_NCCL
#include "model/nccl_row_exchange.hpp"
#endif

namespace fulcrum {

std::vector<std::string> token_dispatcher_names() {
  std::vector<std::string> built;
  for (const auto& name : known_token_dispatcher_names()) {
#ifndef FULCRUM_HAVE_NCCL
    if (name == "nccl") continue;
#endif
    built.push_back(name);
  }
  return built;
}

template <class T>
std::unique_ptr<TokenDispatcher<T>> make_token_dispatcher(const std::string& name, int max_tokens,
                                                          int d_model, int num_experts, int top_k,
                                                          double capacity_factor, MPI_Comm ep_comm) {
  int ep_size = 1;
  MPI_Comm_size(ep_comm, &ep_size);
  if (name == "local") {
    if (ep_size != 1)
      throw std::invalid_argument("token dispatcher 'local' needs expert_parallel = 1 (got " +
                                  std::to_string(ep_size) + "); use mpi_alltoall");
    return std::make_unique<LocalTokenDispatcher<T>>(max_tokens, d_model, num_experts, top_k,
                                                     capacity_factor);
  }
  if (name == "mpi_alltoall")
    return std::make_unique<MpiAlltoallTokenDispatcher<T>>(max_tokens, d_model, num_experts, top_k,
                                                           capacity_factor, ep_comm);
#ifdef FULCRUM_HAVE_NCCL
  if (name == "nccl")
    return std::make_unique<MpiAlltoallTokenDispatcher<T>>(
        max_tokens, d_model, num_experts, top_k, capacity_factor, ep_comm,
        std::make_unique<NcclRowExchange<T>>(ep_comm, ExecSpace().cuda_stream()));
#endif
  std::string valid;
  for (const auto& n : token_dispatcher_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown token dispatcher '" + name + "' (valid: " + valid + ")");
}

template std::unique_ptr<TokenDispatcher<float>> make_token_dispatcher<float>(
    const std::string&, int, int, int, int, double, MPI_Comm);
template std::unique_ptr<TokenDispatcher<double>> make_token_dispatcher<double>(
    const std::string&, int, int, int, int, double, MPI_Comm);

}  // namespace fulcrum
