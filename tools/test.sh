#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs, builds, and runs
#   1. CTest: the core's Catch2 tests and the CLI contract (tests/),
#   2. the WebAssembly module and the calculator page in Chromium (tests/web/run.sh).
# MEMFIT_SKIP_WEB=1 runs only the first part.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${MEMFIT_SKIP_WEB:-0}" = 1 ]; then tools/install-deps.sh core; else tools/install-deps.sh web; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
(cd build && ctest --output-on-failure)
if [ "${MEMFIT_SKIP_WEB:-0}" != 1 ] && [ -x tests/web/run.sh ]; then
  tests/web/run.sh
fi
