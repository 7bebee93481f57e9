#!/usr/bin/env bash
# Regenerates tests/golden/*.json (regression pins of memfit's estimates) from the current core.
# Use only when a change of the numbers is intended, and explain every changed golden in the commit
# message (tests/golden/README.md). Builds first; BUILD_DIR (default build) selects the build tree.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
if [ ! -d "$BUILD_DIR" ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMEMFIT_BENCH=OFF
fi
cmake --build "$BUILD_DIR" -j2 --target memfit_tests
MEMFIT_UPDATE_GOLDEN=1 "$BUILD_DIR/tests/memfit_tests" "[golden]"
# the check without the flag must now pass
"$BUILD_DIR/tests/memfit_tests" "[golden]"
git status --short tests/golden/
git --no-pager diff --stat -- tests/golden/
