#!/usr/bin/env bash
# run-tests.sh: one command from a fresh Debian 12 machine to a tested tree.
#
#   scripts/run-tests.sh [extra ctest arguments, e.g. -L cli or -R e2e]
#
# 1. installs the Debian packages (scripts/install-deps.sh; idempotent, needs
#    root or sudo), 2. configures and builds everything (Release, -j2) in
#    build/ under the repository root, 3. prepares data/default
#    (scripts/prepare-default-data.sh), 4. runs `ctest --output-on-failure -j2`.
# Exits non-zero when any step or any test fails. Works from any directory.
#
# Environment: FULCRUM_BUILD_DIR (default <repo>/build), FULCRUM_JOBS
# (default 2), FULCRUM_SKIP_DEPS=1 skips step 1.
# .ci/run calls this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FULCRUM_BUILD_DIR:-$ROOT/build}"
JOBS="${FULCRUM_JOBS:-2}"
# Open MPI refuses to run as root unless told; CI containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

step() { printf '\n==== run-tests: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
t0=$SECONDS

if [ "${FULCRUM_SKIP_DEPS:-0}" != 1 ]; then
  step "install dependencies"
  "$ROOT/scripts/install-deps.sh" < /dev/null
fi

step "configure $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFULCRUM_ENABLE_TESTS=ON

step "build (-j$JOBS)"
cmake --build "$BUILD" -j"$JOBS"

step "prepare default data"
"$ROOT/scripts/prepare-default-data.sh" "$BUILD/src/apps/fulcrum-data"

step "ctest"
cd "$BUILD"
rc=0
ctest --output-on-failure -j"$JOBS" "$@" || rc=$?
printf '\n==== run-tests: %s after %d s\n' "$([ $rc -eq 0 ] && echo PASSED || echo "FAILED (ctest exit $rc)")" $((SECONDS - t0))
exit $rc
