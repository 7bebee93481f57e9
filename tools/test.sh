#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs, builds, and runs
#   1. CTest: the core's Catch2 tests and the CLI contract (tests/),
#   2. the same CTest suite built with ASan + UBSan (build-asan/, tools/build-asan.sh), then each libFuzzer
#      harness for MEMFIT_FUZZ_SECONDS (default 20; 0 skips) when clang's libFuzzer is available (fuzz/README.md),
#   3. the importers against PyTorch 1.13 on the CPU (Debian's python3-torch): torchvision models exported to
#      ONNX during the run and imported (tools/check_onnx_torchvision.py), and exported by tools/memfit_export.py
#      and compared with what autograd saves on the real module (tools/check_export_torchvision.py),
#   4. the WebAssembly module (with the bad-input corpus) and the calculator page in Chromium (tests/web/run.sh).
# MEMFIT_SKIP_WEB=1 skips part 4, MEMFIT_SKIP_ASAN=1 part 2, MEMFIT_SKIP_TORCH=1 part 3.
set -euo pipefail
cd "$(dirname "$0")/.."
groups=(core)
[ "${MEMFIT_SKIP_WEB:-0}" = 1 ] || groups+=(web)
[ "${MEMFIT_SKIP_TORCH:-0}" = 1 ] || groups+=(torch)
tools/install-deps.sh "${groups[@]}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2
(cd build && ctest --output-on-failure)
if [ "${MEMFIT_SKIP_ASAN:-0}" != 1 ]; then
  tools/build-asan.sh
  # detect_leaks: a leak is a bug here too (W1 leaked per request); halt_on_error: the first report fails
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure)
  [ "${MEMFIT_FUZZ_SECONDS:-20}" = 0 ] || tools/fuzz.sh "${MEMFIT_FUZZ_SECONDS:-20}"
fi
if [ "${MEMFIT_SKIP_TORCH:-0}" != 1 ]; then
  /usr/bin/python3 tools/check_onnx_torchvision.py build/memfit
  /usr/bin/python3 tools/check_export_torchvision.py --memfit build/memfit
fi
if [ "${MEMFIT_SKIP_WEB:-0}" != 1 ] && [ -x tests/web/run.sh ]; then
  tests/web/run.sh
fi
