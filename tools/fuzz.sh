#!/usr/bin/env bash
# Runs each libFuzzer harness in fuzz/ for a bounded time (fuzz/README.md). Usage: tools/fuzz.sh [SECONDS]
# (default 20 per harness). Builds build-asan when needed; exits 0 without running when clang's
# libFuzzer is unavailable. A find is left in build-asan/fuzz-out/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
[ -x build-asan/fuzz/request_fuzzer ] || tools/build-asan.sh
if [ ! -x build-asan/fuzz/request_fuzzer ]; then echo "fuzz: no libFuzzer (clang++ -fsanitize=fuzzer): skipped"; exit 0; fi
mkdir -p build-asan/fuzz-out
status=0
for h in parse_estimate:model request:request onnx:onnx; do
  name=${h%%:*} seeds=fuzz/seeds/${h##*:}
  work=build-asan/fuzz-corpus/$name
  mkdir -p "$work"
  echo "== fuzz $name for ${secs}s"
  # -timeout: one input over 10 s is a hang; -rss_limit_mb: over 2 GiB is a memory bug, not a big model.
  if ! build-asan/fuzz/${name}_fuzzer "$work" "$seeds" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
       -max_len=4096 -print_final_stats=1 -artifact_prefix=build-asan/fuzz-out/${name}- 2> build-asan/fuzz-out/$name.log; then
    status=1
    echo "fuzz $name FOUND a failure:"; tail -40 build-asan/fuzz-out/$name.log
  else
    grep -E "stat::number_of_executed_units|cov:" build-asan/fuzz-out/$name.log | tail -2
  fi
done
exit $status
