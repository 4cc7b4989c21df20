// lr_schedule.hpp: learning-rate schedules, registry keyed by [train] lr_schedule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fulcrum {

struct LrSchedule {
  std::string kind = "wsd";      // "wsd" | "cosine"
  double peak = 1e-3;
  std::int64_t total_steps = 1;
  double warmup_fraction = 0.01; // linear warm-up over the first steps
  double decay_fraction = 0.1;   // wsd: final phase of exponential decay
  double final_fraction = 0.1;   // lr at the last step / peak

  std::int64_t warmup_steps() const;
  std::int64_t decay_steps() const;
  // lr used by optimizer step `step` (0-based).
  double at(std::int64_t step) const;
};

// The schedules LrSchedule::at implements, by [train] lr_schedule name.
// Inline: the deck reader (no Kokkos) takes its allowed values from here.
inline std::vector<std::string> lr_schedule_names() { return {"wsd", "cosine"}; }

}  // namespace fulcrum
