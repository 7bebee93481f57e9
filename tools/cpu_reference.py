#!/usr/bin/env python3
"""CPU reference: what PyTorch autograd saves for backward, per memfit layer.

For each memfit JSON model and each batch size this builds the model with
memfit_torch.build_module, runs forward + loss in training mode under
torch.autograd.graph.saved_tensors_hooks and records every tensor autograd
packs: its storage (identity, nbytes), dtype, shape, the memfit layer that was
running (forward pre-hooks on the leaf modules; the loss is its own leaf
module, named "loss" unless the model has its own cross_entropy layer), and
whether the storage belongs to a parameter/buffer or to the input batch.

Usage:
  python3 tools/cpu_reference.py MODEL.json [MODEL.json ...] -o OUT.json
  python3 tools/cpu_reference.py --memfit build/memfit --models-dir models -o OUT.json
Options: --batches 1,8,64  --seed 0
  --freeze GLOB[,GLOB...] / --train GLOB[,GLOB...]: freeze layers as memfit's options of the same
  names do (memfit_torch.apply_freeze: requires_grad=False on their parameters; BatchNorm stays in
  train mode). Each model entry then has a "frozen" object saying what was frozen.

Needs only torch (tested with Debian python3-torch 1.13, CPU).
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memfit_torch as mt  # noqa: E402

NOTES = [
    "CPU autograd (torch.autograd.graph.saved_tensors_hooks) in training mode; forward + loss only, "
    "the backward pass is run afterwards only to check the graph.",
    "bytes = nbytes of the tensor's whole storage; tensor_bytes = numel * element_size of the saved view. "
    "Totals count each storage once (storage_id), parameters and buffers excluded.",
    "A storage saved by several layers is listed under each of them with the same storage_id; "
    "first_seen_bytes per layer counts only storages (non-parameter) first saved by that layer.",
    "Backend differences to expect on CUDA: cuDNN batch norm (cudnn_batch_norm) additionally saves a "
    "reserve-space tensor (uint8, usually empty or small) and saves save_mean/save_var like the CPU kernel; "
    "cuDNN convolution saves input and weight like the CPU path; CUDA dropout uses the fused "
    "native_dropout kernel which saves a bool mask (1 byte/element) whereas CPU dropout here multiplies "
    "by a float noise tensor (4 bytes/element, saved by mul); CUDA max_pool2d saves input and int64 "
    "indices like CPU. Under autocast fp16 saved activations for matmul/conv inputs are fp16 casts "
    "(new storages) while the fp32 originals may also be kept by fp32 ops.",
    "Storage identity: untyped_storage().data_ptr() (torch >= 2.0) or storage().data_ptr() (torch 1.13).",
]


def _storage(t):
    if hasattr(t, "untyped_storage"):
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    s = t.storage()
    return s.data_ptr(), s.nbytes()


def load_models(args):
    models = []
    for p in args.models:
        models.append((p, mt.load_model_json(p)))
    if args.memfit:
        files = sorted(glob.glob(os.path.join(args.models_dir, "*.memfit")))
        if not files:
            sys.exit("no *.memfit files in %s" % args.models_dir)
        for f in files:
            r = subprocess.run([args.memfit, "model", f, "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
            if r.returncode != 0:
                sys.exit("%s model %s --json failed (%d): %s" % (args.memfit, f, r.returncode, r.stderr))
            models.append((f, mt.load_model_json(json.loads(r.stdout))))
    if not models:
        sys.exit("no models given (JSON paths or --memfit BIN --models-dir DIR)")
    return models


def measure(m, batch, seed, freeze=None, train=None):
    torch.manual_seed(seed)
    net = mt.build_module(m)
    net.train()
    frozen = mt.apply_freeze(net, freeze, train) if (freeze is not None or train is not None) else None
    x, target = mt.make_batch(m, batch, "cpu", torch.float32, seed=seed)
    xs = x if isinstance(x, tuple) else (x,)

    param_ptrs = {}
    for n, p in net.named_parameters():
        param_ptrs[_storage(p)[0]] = "param:" + n
    for n, b in net.named_buffers():
        if b.numel():
            param_ptrs[_storage(b)[0]] = "buffer:" + n
    input_ptrs = {_storage(t)[0] for t in xs + (target,)}

    stack = []
    order = []                       # memfit layer names in execution order
    per_layer = {}                   # name -> {"saved": [...], ...}
    outputs = {}

    def enter(name):
        def pre_hook(mod, inp):
            stack.append(name)
            if name not in per_layer:
                order.append(name)
                per_layer[name] = {"layer": name, "saved": []}
        return pre_hook

    def leave(name):
        def hook(mod, inp, out):
            stack.pop()
            if isinstance(out, torch.Tensor):
                outputs[name] = out
        return hook

    handles = []
    for name, mod in net.memfit_modules():
        handles.append(mod.register_forward_pre_hook(enter(name)))
        handles.append(mod.register_forward_hook(leave(name)))

    storage_ids = {}
    storage_info = {}   # sid -> (nbytes, dtype, is_param)

    def pack(t):
        layer = stack[-1] if stack else "(outside)"
        if layer not in per_layer:
            order.append(layer)
            per_layer[layer] = {"layer": layer, "saved": []}
        ptr, nbytes = _storage(t)
        key = (ptr, nbytes) if ptr else ("empty", id(t))
        if key not in storage_ids:
            storage_ids[key] = len(storage_ids)
        sid = storage_ids[key]
        is_param = ptr in param_ptrs
        entry = {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "bytes": nbytes,
            "tensor_bytes": t.numel() * t.element_size(),
            "storage_id": sid,
            "is_param": bool(is_param),
            "is_input": bool(ptr in input_ptrs),
        }
        if is_param:
            entry["param"] = param_ptrs[ptr]
        per_layer[layer]["saved"].append(entry)
        storage_info.setdefault(sid, (nbytes, entry["dtype"], is_param, layer))
        return t

    def unpack(t):
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = net(x)
        loss = net.loss(out, target)
    for h in handles:
        h.remove()
    if loss.requires_grad:
        loss.backward()  # sanity: the recorded graph is usable

    total = 0
    by_dtype = {}
    first_seen = {}
    for sid, (nbytes, dtype, is_param, layer) in storage_info.items():
        if is_param:
            continue
        total += nbytes
        by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes
        first_seen[layer] = first_seen.get(layer, 0) + nbytes
    input_saved = sum(nb for sid, (nb, d, p, l) in storage_info.items() if not p and any(
        e["storage_id"] == sid and e["is_input"] for L in per_layer.values() for e in L["saved"]))

    layers = []
    for name in order:
        L = per_layer[name]
        o = outputs.get(name)
        if o is not None:
            L["output_shape"] = list(o.shape)
            L["output_dtype"] = str(o.dtype).replace("torch.", "")
        L["first_seen_bytes"] = first_seen.get(name, 0)
        layers.append(L)

    # cross-check memfit_torch's shape inference against what actually ran
    shapes = mt.infer_shapes(m)
    for name in order:
        o = outputs.get(name)
        if o is not None and name in shapes and shapes[name] and list(o.shape[1:]) != shapes[name]:
            raise AssertionError("shape inference mismatch at %s: %s vs %s" % (name, list(o.shape), shapes[name]))

    return {
        "batch": batch,
        "saved_total_bytes": total,
        "saved_input_bytes": input_saved,
        "saved_by_dtype": by_dtype,
        "unique_storages": len(storage_info),
        "loss": round(float(loss.detach()), 5),
        "layers": layers,
    }, net, frozen


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="memfit-model/1 JSON files")
    ap.add_argument("--memfit", help="memfit binary; runs `BIN model FILE --json` for each models-dir/*.memfit")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--freeze", help="GLOB[,GLOB...]: freeze these memfit layers (and the regions they name)")
    ap.add_argument("--train", help="GLOB[,GLOB...]: freeze every layer these globs do not match")
    ap.add_argument("-o", "--output", help="output JSON (default stdout)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    result = {
        "generated_by": " ".join(["python3"] + sys.argv),
        "torch_version": torch.__version__,
        "device": "cpu",
        "mkldnn_enabled": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "notes": NOTES,
        "training_loop": mt.TRAINING_LOOP,
        "models": [],
    }
    for src, m in load_models(args):
        entry = {"name": m.get("name"), "source": src, "batches": []}
        for b in batches:
            r, net, frozen = measure(m, b, args.seed, args.freeze, args.train)
            entry["batches"].append(r)
        if frozen is not None:
            entry["frozen"] = frozen
        entry["params"] = mt.param_count(net)
        entry["buffer_bytes"] = mt.buffer_bytes(net)
        entry["loss_layer"] = net.loss_name
        result["models"].append(entry)

    mt.write_json(result, args.output)


if __name__ == "__main__":
    main()
