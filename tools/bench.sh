#!/usr/bin/env bash
# Builds and runs the core benchmark (Release), writing bench/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh core
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMEMFIT_BENCH=ON >/dev/null
cmake --build build -j2 --target memfit_bench
{ echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"; build/memfit_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1; } | tee bench/results.txt
