#!/usr/bin/env bash
# Installs what memfit needs from Debian's packages, only when missing. Usage:
#   tools/install-deps.sh core   # compiler, CMake, header libraries, Catch2, Google Benchmark,
#                                # clang + its runtime (ASan/UBSan build and libFuzzer, tools/build-asan.sh)
#   tools/install-deps.sh web    # + Emscripten, Node/npm, Chromium (for the calculator and its tests)
#   tools/install-deps.sh torch  # + Debian's PyTorch (CPU) for tools/ reference scripts
set -euo pipefail
want=(cmake g++ make nlohmann-json3-dev libcli11-dev catch2 libbenchmark-dev clang libclang-rt-dev)
for group in "$@"; do
  case "$group" in
    core) ;;
    web) want+=(emscripten nodejs npm chromium) ;;
    torch) want+=(python3-torch python3-torchvision) ;;
    *) echo "install-deps: unknown group $group" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from outside Debian (e.g. /usr/bin/node from NodeSource): accept them if present
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done; missing=("${tmp[@]+"${tmp[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
