#!/usr/bin/env bash
# Regenerates tests/reference/cpu_saved_*.json with Debian's PyTorch on the CPU (see tests/reference/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh torch
[ -x build/memfit ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2 --target memfit; }
/usr/bin/python3 tools/cpu_reference.py tests/reference/fixtures/question_cnn.json \
    tests/reference/fixtures/tiny_residual.json tests/reference/fixtures/tiny_mlp.json \
    -o tests/reference/cpu_saved_fixtures.json
/usr/bin/python3 tools/cpu_reference.py --memfit build/memfit --models-dir models --batches 1,8 -o /tmp/cpu_saved_1_8.json
rm -rf /tmp/memfit_small_models && mkdir -p /tmp/memfit_small_models
cp models/question_cnn.memfit models/lenet5.memfit /tmp/memfit_small_models/
/usr/bin/python3 tools/cpu_reference.py --memfit build/memfit --models-dir /tmp/memfit_small_models \
    --batches 64 -o /tmp/cpu_saved_64.json
/usr/bin/python3 - <<'PY'
import json
a = json.load(open("/tmp/cpu_saved_1_8.json"))
b = json.load(open("/tmp/cpu_saved_64.json"))
extra = {m["name"]: m for m in b["models"]}
for m in a["models"]:
    if m["name"] in extra:
        assert extra[m["name"]]["params"] == m["params"]
        m["batches"] += extra[m["name"]]["batches"]
a["generated_by"] = [a["generated_by"], b["generated_by"] + "  (batch 64 merged into the same models)"]
open("tests/reference/cpu_saved_models.json", "w").write(json.dumps(a, indent=1, sort_keys=True) + "\n")
PY
