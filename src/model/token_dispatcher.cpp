#include "model/token_dispatcher.hpp"

#include <stdexcept>

namespace fulcrum {

std::vector<std::string> token_dispatcher_names() { return {"local"}; }

template <class T>
std::unique_ptr<TokenDispatcher<T>> make_token_dispatcher(const std::string& name, int max_tokens,
                                                          int d_model, int num_experts, int top_k,
                                                          double capacity_factor) {
  if (name == "local")
    return std::make_unique<LocalTokenDispatcher<T>>(max_tokens, d_model, num_experts, top_k,
                                                     capacity_factor);
  std::string valid;
  for (const auto& n : token_dispatcher_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown token dispatcher '" + name + "' (valid: " + valid + ")");
}

template std::unique_ptr<TokenDispatcher<float>> make_token_dispatcher<float>(
    const std::string&, int, int, int, int, double);
template std::unique_ptr<TokenDispatcher<double>> make_token_dispatcher<double>(
    const std::string&, int, int, int, int, double);

}  // namespace fulcrum
