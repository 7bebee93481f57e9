#!/usr/bin/env bash
# Builds the memfit web calculator into web/dist/ (a static folder any web server can serve):
#   web/dist/memfit.mjs + memfit.wasm   the WebAssembly module (core/src/*.cpp + models/*.memfit + wasm/bindings.cpp)
#   web/dist/*.html, *.js, *.css        the page, the embed page, <memfit-calculator>, the example docs page
# and build-wasm/node/memfit-node.mjs (the same objects in one file, for the Node tests).
# Installs emscripten / nlohmann-json3-dev with apt-get when missing (Debian 12). Incremental (make).
# Env: MEMFIT_WASM_OPT (default -O3), MEMFIT_WASM_EH (wasm: native WebAssembly exceptions, the default; js:
# Emscripten's JS-based exceptions, slower), JOBS (default: number of CPUs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
B="$ROOT/build-wasm"
DIST="$ROOT/web/dist"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}
command -v em++ >/dev/null 2>&1 || { echo "build-web: em++ not found; installing emscripten" >&2; apt_install emscripten; }
[ -f /usr/include/nlohmann/json.hpp ] || { echo "build-web: installing nlohmann-json3-dev" >&2; apt_install nlohmann-json3-dev; }
command -v cmake >/dev/null 2>&1 || { echo "build-web: installing cmake" >&2; apt_install cmake; }
command -v make >/dev/null 2>&1 || apt_install make

# Debian's emscripten runs its JS optimizer with the system node; acorn lives in /usr/share/nodejs.
export NODE_PATH="${NODE_PATH:-/usr/share/nodejs}"
mkdir -p "$B" "$DIST"
# Builtin models (the page's presets), generated exactly as the native build does.
cmake -DMODELS_DIR="$ROOT/models" -DOUT="$B/builtin_models.cpp" -P "$ROOT/tools/embed_models.cmake"

make --no-print-directory -C "$ROOT/wasm" -j"$JOBS" ROOT="$ROOT" B="$B" DIST="$DIST" OPT="${MEMFIT_WASM_OPT:--O3}" EH="${MEMFIT_WASM_EH:-wasm}"

# The page: plain HTML/CSS/JS, no libraries, copied next to the module.
cp "$ROOT"/web/*.html "$ROOT"/web/*.js "$ROOT"/web/*.css "$DIST"/ 2>/dev/null || true
echo "build-web: $DIST ready ($(du -sh "$DIST" | cut -f1))"
