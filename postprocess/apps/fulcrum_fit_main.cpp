// fulcrum-fit: see doc/fit.md.
#include "cli.hpp"

int main(int argc, char** argv) { return fulcrum::fit::run_cli(argc, argv); }
