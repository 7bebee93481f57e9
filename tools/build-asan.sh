#!/usr/bin/env bash
# Builds build-asan/: the core, CLI and tests under AddressSanitizer + UndefinedBehaviorSanitizer (UB is
# fatal: -fno-sanitize-recover), and, with clang's libFuzzer, the fuzz/ harnesses in the same tree (the
# core then also carries libFuzzer's coverage hooks, -fsanitize=fuzzer-no-link, which cost the tests little).
# Prefers clang++ (needed for libFuzzer), else g++ (sanitizers only). -O1: ASan's recommended speed/detail.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX_BIN=${MEMFIT_ASAN_CXX:-$(command -v clang++ || command -v g++)}
flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
fuzz=OFF
if [[ "$(basename "$CXX_BIN")" == clang++* ]] &&
   echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
     "$CXX_BIN" -x c++ -fsanitize=fuzzer - -o /tmp/memfit-fuzz-check.$$ 2>/dev/null; then
  fuzz=ON
  flags="$flags -fsanitize=fuzzer-no-link"
fi
rm -f /tmp/memfit-fuzz-check.$$
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_COMPILER="$CXX_BIN" -DCMAKE_CXX_FLAGS="$flags" \
  -DMEMFIT_BENCH=OFF -DMEMFIT_CUDA=OFF -DMEMFIT_FUZZ=$fuzz >/dev/null
cmake --build build-asan -j"${JOBS:-2}"
echo "build-asan: $(basename "$CXX_BIN"), libFuzzer harnesses: $fuzz"
