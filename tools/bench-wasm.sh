#!/usr/bin/env bash
# The same estimate requests natively and in the WebAssembly module (Node, after warm-up), and the ratio:
#   native: memfit::handle_request in tests/web/request_bench.cpp, linked against build/core/libmemfit_core.a
#           (the Release library the CLI uses);
#   module: build-wasm/node/memfit-node.cjs (tools/build-web.sh), the same objects as the page's memfit.wasm.
# Requests: tests/web/bench-requests.json. Writes test-artifacts/bench-module.json. Env: RUNS (default 200),
# MEMFIT_NODE_MODULE (another Node build of the module, e.g. to compare build flags).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMEMFIT_BENCH=OFF >/dev/null
cmake --build build --target memfit_core -j"$JOBS" >/dev/null
${CXX:-c++} -std=c++20 -O3 -DNDEBUG -Icore/include tests/web/request_bench.cpp build/core/libmemfit_core.a -o build/request_bench
[ -n "${MEMFIT_NODE_MODULE:-}" ] || tools/build-web.sh >/dev/null
node tests/web/bench-module.mjs build/request_bench "${RUNS:-200}"
