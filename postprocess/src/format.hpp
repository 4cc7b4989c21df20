// format.hpp: how fulcrum-fit prints numbers in its reports and messages.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace fulcrum::fit {

// v with printf format f (4 significant digits by default); "n/a" when v is
// not finite (a law or point that could not be computed).
inline std::string format_number(double v, const char* f = "%.4g") {
  if (!std::isfinite(v)) return "n/a";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace fulcrum::fit
