#!/usr/bin/env bash
# memfit web tests: builds what they need, then
#   1. tests/web/module.test.mjs   the WebAssembly module against the native CLI (byte-identical JSON on every
#                                  models/*.memfit), errors as values, the module usable after an error;
#   2. tests/web/browser.test.mjs  the page in headless Chromium (/usr/bin/chromium via playwright-core);
#      tests/web/page.test.mjs     layout, numbers, inputs, remedies, comparisons, exports, embedding (the web issue).
# Screenshots: test-artifacts/. Env: MEMFIT_CLI (a built `memfit`; default: build/memfit, built here),
# SKIP_BROWSER=1 (module tests only), CHROMIUM (default /usr/bin/chromium).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}

# The native CLI the module is compared with.
if [ -z "${MEMFIT_CLI:-}" ]; then
  [ -f build/CMakeCache.txt ] || cmake -S . -B build -DMEMFIT_BENCH=OFF >/dev/null
  cmake --build build --target memfit -j"$JOBS" >/dev/null
  export MEMFIT_CLI="$ROOT/build/memfit"
fi

# The module and the page (web/dist) plus the Node build of the module (build-wasm/node).
tools/build-web.sh

command -v node >/dev/null 2>&1 || apt_install nodejs npm
if [ ! -f node_modules/playwright-core/package.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

echo "== module tests (WebAssembly vs $MEMFIT_CLI)"
node --test tests/web/module.test.mjs
echo "== bad-input corpus through the module (tests/corpus/)"
node --test tests/web/corpus.test.mjs

if [ "${SKIP_BROWSER:-0}" != 1 ]; then
  [ -x "${CHROMIUM:-/usr/bin/chromium}" ] || apt_install chromium
  echo "== browser tests (screenshots in test-artifacts/)"
  node --test --test-concurrency=1 tests/web/browser.test.mjs tests/web/page.test.mjs
fi
