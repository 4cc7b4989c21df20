#include "train/lr_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace fulcrum {

std::int64_t LrSchedule::warmup_steps() const {
  return std::llround(warmup_fraction * static_cast<double>(total_steps));
}
std::int64_t LrSchedule::decay_steps() const {
  return std::llround(decay_fraction * static_cast<double>(total_steps));
}

double LrSchedule::at(std::int64_t step) const {
  const std::int64_t W = warmup_steps();
  if (step < W) return peak * static_cast<double>(step + 1) / static_cast<double>(W);
  if (kind == "wsd") {
    // Warm-up, Stable, Decay: the last D steps decay exponentially from the
    // peak to final_fraction * peak (reached at the last step).
    const std::int64_t D = decay_steps();
    const std::int64_t decay_start = total_steps - D;
    if (D <= 0 || step < decay_start) return peak;
    const double progress = static_cast<double>(step - decay_start + 1) / static_cast<double>(D);
    return peak * std::pow(final_fraction, std::min(progress, 1.0));
  }
  if (kind == "cosine") {
    const std::int64_t span = std::max<std::int64_t>(1, total_steps - W);
    const double progress = std::min(1.0, static_cast<double>(step - W + 1) / static_cast<double>(span));
    const double floor = final_fraction * peak;
    return floor + (peak - floor) * 0.5 * (1.0 + std::cos(3.141592653589793 * progress));
  }
  std::string valid;
  for (const auto& n : lr_schedule_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown lr_schedule '" + kind + "' (valid: " + valid + ")");
}

}  // namespace fulcrum
