#!/usr/bin/env bash
# Regenerates what the docs copy from the op registry (tests/ops_registry_test.cpp fails when stale):
#   docs/ops.json                 = memfit ops --json   (read by tools/memfit_torch.py)
#   docs/model-format.md table    = memfit ops --markdown (between the ops-table markers)
set -euo pipefail
cd "$(dirname "$0")/.."
MEMFIT="${MEMFIT:-build/memfit}"
"$MEMFIT" ops --json > docs/ops.json
python3 - "$MEMFIT" <<'PY'
import subprocess, sys, re
table = subprocess.run([sys.argv[1], "ops", "--markdown"], check=True, capture_output=True, text=True).stdout
p = "docs/model-format.md"
s = open(p).read()
begin = s.index("<!-- ops-table:")
begin = s.index("\n", begin) + 1
end = s.index("<!-- end ops-table -->")
open(p, "w").write(s[:begin] + table + s[end:])
PY
echo "update-docs: docs/ops.json and docs/model-format.md's layer table regenerated"
