#!/usr/bin/env bash
# Writes tests/reference/models-json/NAME.json = `memfit model models/NAME.memfit --json` for every model,
# so the PyTorch tools (tools/gpu_reference.py on a GPU machine) need no memfit binary.
# tests/cli_test.sh checks that the committed files equal what memfit prints.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${MEMFIT:-build/memfit}
mkdir -p tests/reference/models-json
for f in models/*.memfit; do
  name=$(basename "$f" .memfit)
  "$BIN" model "$f" --json > "tests/reference/models-json/$name.json"
done
