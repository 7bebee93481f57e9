#!/usr/bin/python3
"""Exports torchvision models to ONNX in a temporary folder and checks memfit's import of them.

For resnet18 (45 MB, never committed), mobilenet_v2 and resnet50: the imported model has torchvision's
parameter count (resnet18: 11,689,512, counted here from the module itself), and its estimate equals the
one of models/NAME.memfit with `inplace` removed (ONNX does not record in-place activations; the file
can only say "out of place", docs/onnx.md). The estimate of the real NAME.memfit is printed too. More
torchvision models (PARAMS_ONLY) must import with torchvision's parameter count.
Usage: tools/check_onnx_torchvision.py [path/to/memfit]   (default build/memfit); exit 1 on a mismatch.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import torchvision

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MEMFIT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "memfit")
BATCH = "32"


def estimate(model_path, *extra):
    out = subprocess.run([MEMFIT, "estimate", model_path, "--batch", BATCH, "--json", *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def pick(e):
    """The numbers compared: every total and the peak (docs/json-output.md)."""
    out = {"totals." + k: v for k, v in e["totals"].items()}
    out.update({"peak." + k: v for k, v in e["peak"].items() if k.endswith("_bytes")})
    return out


# Models with a hand-written twin in models/ (compared estimate field by field, `inplace` removed), and
# more torchvision models whose import must give torchvision's parameter count (and estimate at all).
TWINS = ["resnet18", "mobilenet_v2", "resnet50"]
PARAMS_ONLY = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_0", "densenet121", "mnasnet0_5", "regnet_x_400mf",
               "alexnet", "vgg11"]


def export(name, tmp):
    model = getattr(torchvision.models, name)()
    model.train()
    path = os.path.join(tmp, name + ".onnx")
    # training mode: BatchNorm stays a node (eval mode folds it into the convolutions)
    torch.onnx.export(model, torch.randn(2, 3, 224, 224), path, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path, sum(p.numel() for p in model.parameters())


def main():
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in TWINS + PARAMS_ONLY:
            path, n_params = export(name, tmp)
            onnx_e = estimate(path)
            params = onnx_e["totals"]["params"]
            ok = params == n_params
            failed |= not ok
            print(f"{name}.onnx: {os.path.getsize(path):,} bytes; parameters imported {params:,}, torchvision {n_params:,}"
                  f"{'' if ok else '  MISMATCH'}")
            if name not in TWINS:
                continue
            text = open(os.path.join(ROOT, "models", name + ".memfit")).read()
            twin = os.path.join(tmp, name + "_out_of_place.memfit")
            with open(twin, "w") as f:
                f.write(re.sub(r"\s+inplace\b", "", text))
            a, b = pick(onnx_e), pick(estimate(twin))
            for k in sorted(set(a) | set(b)):
                same = a.get(k) == b.get(k)
                failed |= not same
                if not same or k in ("peak.allocated_bytes", "peak.reserved_bytes", "totals.saved_activation_bytes"):
                    print(f"  {k}: onnx {a.get(k)} vs {name}.memfit without inplace {b.get(k)}{'' if same else '  MISMATCH'}")
            r = pick(estimate(os.path.join(ROOT, "models", name + ".memfit")))
            print(f"  ({name}.memfit as written, in place: peak allocated {r['peak.allocated_bytes']}, reserved {r['peak.reserved_bytes']})")
    print("FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
