// cli.hpp: the fulcrum-fit command line (fit, predict, grid, advise, synth).
#pragma once

namespace fulcrum::fit {
// Exit codes: 0 ok, 1 usage or I/O error, 2 no usable runs, 3 nothing could be fitted.
int run_cli(int argc, char** argv);
}  // namespace fulcrum::fit
