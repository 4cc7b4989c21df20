// output.hpp: report.txt, fit.h5 and the PNG plots of a fit.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "fitting.hpp"
#include "runs.hpp"

namespace fulcrum::fit {

// The verdict of every law (fitted or not, trustworthy or not, and why).
std::string diagnostics_text(const FitResult& R);
// The same as TOML ([[diagnostics]] law, family, fitted, trusted, reasons),
// appended to laws.toml so that the next stage can check its inputs.
std::string diagnostics_toml(const FitResult& R);
void write_report(std::ostream& o, const FitResult& R, const LoadResult& L, const FitOptions& opt);
void write_fit_h5(const std::string& path, const FitResult& R, const LoadResult& L);
// Writes the plots into dir; returns the files written.
std::vector<std::string> write_plots(const std::string& dir, const FitResult& R);
// EL contour map of a law set over A and G at budget C (used by `grid`).
bool plot_el_map(const std::string& png, const LawSet& L, double C, double A_lo, double A_hi,
                 double G_lo, double G_hi, const std::vector<const ELPoint*>& pts = {});

}  // namespace fulcrum::fit
