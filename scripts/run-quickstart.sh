#!/usr/bin/env bash
# run-quickstart.sh: one command from a fresh Debian 12 machine to a trained
# quickstart model.
#
#   scripts/run-quickstart.sh [extra fulcrum-train arguments, e.g. --set train.tokens=500000]
#
# 1. installs the Debian packages (scripts/install-deps.sh; idempotent, needs
#    root or sudo), 2. configures (first time only) and builds build/
#    (Release, -j2), 3. prepares data/default, 4. runs
#      mpiexec -n 1 --allow-run-as-root build/src/apps/fulcrum-train \
#          input_decks/quickstart.toml --set output.overwrite=true "$@"
#    from the repository root; the trainer's last line is its
#    FULCRUM_SUMMARY line. The run file is runs/quickstart/run.h5. Exit status: the
#    trainer's (0 completed, 1 failed, 2 bad input, 3 diverged;
#    doc/running.md). Works from any directory.
#
# Environment: FULCRUM_BUILD_DIR (default <repo>/build), FULCRUM_JOBS
# (default 2), FULCRUM_SKIP_DEPS=1 skips step 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FULCRUM_BUILD_DIR:-$ROOT/build}"
JOBS="${FULCRUM_JOBS:-2}"

step() { printf '==== run-quickstart: %s\n' "$*"; }

if [ "${FULCRUM_SKIP_DEPS:-0}" != 1 ]; then
  step "install dependencies"
  "$ROOT/scripts/install-deps.sh" < /dev/null
fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  step "configure $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
fi
step "build fulcrum-train, fulcrum-data (-j$JOBS)"
cmake --build "$BUILD" -j"$JOBS" --target fulcrum-train fulcrum-data

step "prepare default data"
"$ROOT/scripts/prepare-default-data.sh" "$BUILD/src/apps/fulcrum-data"

step "train input_decks/quickstart.toml"
cd "$ROOT"   # the deck's data and output paths are relative to the repository root
exec mpiexec -n 1 --allow-run-as-root "$BUILD/src/apps/fulcrum-train" input_decks/quickstart.toml \
  --set output.overwrite=true "$@"
