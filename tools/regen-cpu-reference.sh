#!/usr/bin/env bash
# Regenerates tests/reference/cpu_saved_*.json (and the frozen / densenet references below) with Debian's PyTorch on the CPU (see tests/reference/README.md).
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

# Frozen layers (--train GLOBS: every other layer frozen; tests/frozen_reference_test.cpp) and the small
# DenseNet fixture (tests/densenet_reference_test.cpp): saved bytes and live bytes, one run per setting,
# merged with tools/merge_reference.py. About 6 minutes on 2 shared cores (vgg16's live run is 1.5-2.5 of them).
J=tests/reference/models-json
T=/tmp/memfit_frozen_ref && rm -rf $T && mkdir -p $T
for spec in "resnet18 fc 1,8 8" "resnet18 layer4,fc 1,8 8" "mobilenet_v2 classifier 1,8 4" "vgg16 classifier 1,2 2"; do
  set -- $spec
  tag=$1_${2//,/_}
  /usr/bin/python3 tools/cpu_reference.py $J/$1.json --train $2 --batches $3 -o $T/saved_$tag.json
  /usr/bin/python3 tools/cpu_live_reference.py --runs $J/$1.json:$4 --train $2 --nodes -o $T/live_$tag.json
done
/usr/bin/python3 tools/merge_reference.py -o tests/reference/cpu_saved_frozen.json \
    $T/saved_resnet18_fc.json $T/saved_resnet18_layer4_fc.json $T/saved_mobilenet_v2_classifier.json \
    $T/saved_vgg16_classifier.json
/usr/bin/python3 tools/merge_reference.py -o tests/reference/cpu_live_frozen.json \
    $T/live_resnet18_fc.json $T/live_resnet18_layer4_fc.json $T/live_mobilenet_v2_classifier.json \
    $T/live_vgg16_classifier.json
/usr/bin/python3 tools/cpu_reference.py tests/reference/fixtures/densenet_mini.json --batches 1,4 \
    -o tests/reference/cpu_saved_densenet.json
/usr/bin/python3 tools/cpu_live_reference.py --runs tests/reference/fixtures/densenet_mini.json:4 --nodes \
    -o tests/reference/cpu_live_densenet.json

# Activation checkpointing, reentrant and non-reentrant (docs/checkpointing.md; about 1 minute).
/usr/bin/python3 tools/cpu_checkpoint_reference.py -o tests/reference/cpu_live_checkpoint.json

# The PyTorch exporter on torchvision's models (tools/check_export_torchvision.py; about 5 minutes). It exits 1
# on a mismatch, which it records in the file as well: report it, do not stop the other references.
[ -x build/live_bytes_estimate ] || g++ -std=c++20 -O1 -Icore/include tools/live_bytes_estimate.cpp \
    build/core/libmemfit_core.a -o build/live_bytes_estimate
/usr/bin/python3 tools/check_export_torchvision.py --memfit build/memfit --live build/live_bytes_estimate \
    -o tests/reference/export_torchvision.json || echo "check_export_torchvision: mismatches (see above and the file)"
