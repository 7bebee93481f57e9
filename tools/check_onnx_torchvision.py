#!/usr/bin/python3
"""Exports torchvision models to ONNX in a temporary folder and checks memfit's import of them.

For resnet18 (45 MB, never committed): the imported model has torchvision's parameter count
(11,689,512, counted here from the module itself), and its estimate equals the one of
models/resnet18.memfit with `inplace` removed (ONNX does not record in-place activations; the file
can only say "out of place", docs/onnx.md). The estimate of the real resnet18.memfit is printed too.
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


def main():
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        model = torchvision.models.resnet18()
        n_params = sum(p.numel() for p in model.parameters())
        path = os.path.join(tmp, "resnet18.onnx")
        model.train()
        # training mode: BatchNorm stays a node (eval mode folds it into the convolutions)
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), path, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        size = os.path.getsize(path)
        text = open(os.path.join(ROOT, "models", "resnet18.memfit")).read()
        twin = os.path.join(tmp, "resnet18_out_of_place.memfit")
        with open(twin, "w") as f:
            f.write(re.sub(r"\s+inplace\b", "", text))
        onnx_e, twin_e, real_e = estimate(path), estimate(twin), estimate(os.path.join(ROOT, "models", "resnet18.memfit"))
        a, b = pick(onnx_e), pick(twin_e)
        print(f"resnet18.onnx: {size:,} bytes, torchvision parameters {n_params:,}")
        params = onnx_e["totals"]["params"]
        print(f"  imported parameters: {params}")
        if params != n_params:
            print("  MISMATCH: parameter count"); failed = True
        for k in sorted(set(a) | set(b)):
            same = a.get(k) == b.get(k)
            failed |= not same
            print(f"  {k}: onnx {a.get(k)} vs resnet18.memfit without inplace {b.get(k)}{'' if same else '  MISMATCH'}")
        r = pick(real_e)
        for k in ("peak.allocated_bytes", "peak.reserved_bytes", "totals.saved_activation_bytes"):
            if k in r:
                print(f"  (resnet18.memfit as written, with inplace: {k} {r[k]})")
    print("FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
