#!/usr/bin/env python3
"""Check models/*.memfit against the torchvision models they describe, deeper than a parameter count.

For each model: `memfit model FILE --json` -> tools/memfit_torch.build_module -> the module's
parameters and buffers in registration order, compared one by one with torchvision's
(named_parameters / named_buffers): the shape sequence, and the names (memfit layer name + ".weight"
etc. against torchvision's full parameter name; the memfit models use torchvision's module names).
Then one forward pass at batch 1 on both: every memfit layer whose name is a torchvision leaf module
must produce the shape that module produced (its first call), and the final outputs must agree.
lenet5 is compared with the PyTorch tutorial's Net (tools/torchvision_params.py TutorialLeNet).

Usage (from the repository root, after building build/memfit):
  /usr/bin/python3 tools/compare_torchvision.py --memfit build/memfit --models-dir models \
      -o tests/reference/torchvision_compare.json
Exit status 1 if any model differs.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memfit_torch as mt  # noqa: E402
import torchvision_params as tvp  # noqa: E402


def memfit_json(memfit, path):
    r = subprocess.run([memfit, "model", path, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if r.returncode != 0:
        sys.exit("%s model %s --json failed (%d): %s" % (memfit, path, r.returncode, r.stderr))
    return json.loads(r.stdout)


def memfit_tensor_name(net, full):
    """'layers.features__dot__0.weight' -> 'features.0.weight'."""
    assert full.startswith("layers."), full
    key, _, attr = full[len("layers."):].rpartition(".")
    return net.key_to_name[key] + "." + attr


def compare_seq(a, b):
    """a, b: lists of (name, shape). Returns a summary dict."""
    shapes_equal = [s for _, s in a] == [s for _, s in b]
    names_equal = [n for n, _ in a] == [n for n, _ in b]
    first_diff = None
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x != y:
            first_diff = {"index": i, "memfit": x, "reference": y}
            break
    return {"count_memfit": len(a), "count_reference": len(b), "shapes_equal_in_order": shapes_equal,
            "names_equal_in_order": names_equal, "same_as_multiset": sorted(map(str, a)) == sorted(map(str, b)),
            "first_difference": first_diff}


def leaf_output_shapes(net, modules, x):
    calls = {}
    handles = []
    for name, mod in modules:
        def hook(m, i, o, name=name):
            calls.setdefault(name, []).append(list(o.shape))
        handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        out = net(x)
    for h in handles:
        h.remove()
    return calls, list(out.shape)


def compare_model(stem, m):
    torch.manual_seed(0)
    ref, source, in_shape = tvp.reference_model(stem)
    net = mt.build_module(m)
    ref.train()
    net.train()
    mp = [(memfit_tensor_name(net, n), list(p.shape)) for n, p in net.named_parameters()]
    rp = [(n, list(p.shape)) for n, p in ref.named_parameters()]
    mb = [(memfit_tensor_name(net, n), list(b.shape)) for n, b in net.named_buffers()]
    rb = [(n, list(b.shape)) for n, b in ref.named_buffers()]

    mem_in = [l["shape"] for l in m["layers"] if l["kind"] == "input"][0]
    x = torch.randn([1] + list(mem_in))
    mcalls, mout = leaf_output_shapes(net, [(n, mod) for n, mod in net.memfit_modules() if n != net.loss_name], x)
    ref_leaves = [(n, mod) for n, mod in ref.named_modules() if n and not list(mod.children())]
    rcalls, rout = leaf_output_shapes(ref, ref_leaves, torch.randn([1] + in_shape))
    matched, mismatched, unmatched = 0, [], []
    for name, shapes in mcalls.items():
        if name in rcalls:
            if shapes[0] == rcalls[name][0]:
                matched += 1
            else:
                mismatched.append({"layer": name, "memfit": shapes[0], "reference": rcalls[name][0]})
        else:
            unmatched.append(name)
    out = {
        "reference": source,
        "input_shape_memfit": mem_in,
        "input_shape_reference": in_shape,
        "params_memfit": sum(p.numel() for p in net.parameters()),
        "params_reference": sum(p.numel() for p in ref.parameters()),
        "parameters": compare_seq(mp, rp),
        "buffers": compare_seq(mb, rb),
        "output_shape_memfit": mout,
        "output_shape_reference": rout,
        "layer_output_shapes": {
            "memfit_layers": len(mcalls),
            "named_like_a_reference_module_and_equal": matched,
            "named_like_a_reference_module_but_different": mismatched,
            "memfit_layers_without_a_reference_module": unmatched,
        },
    }
    out["ok"] = bool(out["params_memfit"] == out["params_reference"] and out["parameters"]["shapes_equal_in_order"]
                     and out["parameters"]["names_equal_in_order"] and out["buffers"]["shapes_equal_in_order"]
                     and out["buffers"]["names_equal_in_order"] and mout == rout and not mismatched
                     and mem_in == in_shape)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memfit", default="build/memfit")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("-o", "--output", help="output JSON (default stdout)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import torchvision
    result = {
        "generated_by": "python3 tools/compare_torchvision.py --memfit %s --models-dir %s" % (args.memfit,
                                                                                             args.models_dir),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "notes": [
            "parameters/buffers: memfit JSON -> memfit_torch.build_module -> named_parameters()/named_buffers() "
            "in registration order (= memfit layer order), names mapped back to memfit layer names; compared "
            "with the reference's named_parameters()/named_buffers().",
            "layer_output_shapes: batch 1, first call of each reference leaf module with the same name; memfit "
            "layers listed as without a reference module are functional calls or renamed uses of a shared "
            "module (torchvision ResNet's one `relu` per block, the additions, flatten, MobileNetV2's "
            "F.adaptive_avg_pool2d).",
        ],
        "models": {},
    }
    ok = True
    for stem in ["lenet5"] + list(tvp.MODELS):
        path = os.path.join(args.models_dir, stem + ".memfit")
        r = compare_model(stem, memfit_json(args.memfit, path))
        result["models"][stem] = r
        ok = ok and r["ok"]
        print("%-13s %s params %d/%d" % (stem, "ok" if r["ok"] else "DIFFERS", r["params_memfit"],
                                         r["params_reference"]), file=sys.stderr)
    result["all_ok"] = ok
    mt.write_json(result, args.output)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
