#!/usr/bin/env bash
# Builds the memfit WebAssembly module and the web calculator, then serves web/dist/ on localhost.
#   tools/serve-web.sh            -> http://localhost:8080/ (the question's CNN is loaded by default)
#   PORT=9000 tools/serve-web.sh
# Installs what it needs on Debian 12 (emscripten via apt-get when em++ is missing; python3 when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-8080}"
"$ROOT/tools/build-web.sh"
if ! command -v python3 >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q python3
fi
exec python3 "$ROOT/tools/serve_web.py" "$ROOT/web/dist" "$PORT"
