#!/usr/bin/env python3
"""Per-convolution cuDNN workspace measurement for memfit's builtin models (one prepared GPU script).

What it measures (see docs/cudnn-workspace.md for why):
  For every distinct Conv2d configuration of question_cnn (50x50x3: conv 32 3x3 same, maxpool, conv 64 3x3
  same, maxpool, fc 500, fc 10), resnet18, resnet50, vgg16 and mobilenet_v2 (torchvision module names,
  224x224 input) at --batch (default 64), for fp32 and bf16, it runs each convolution call ALONE:
    fwd         F.conv2d(x, w, b)                                  (new: output)
    bwd_data    aten.convolution_backward(..., mask [T, F, F])     (new: grad_input)
    bwd_filter  aten.convolution_backward(..., mask [F, T, F])     (new: grad_weight)
    bwd_both    aten.convolution_backward(..., mask [T, T, F])     (new: grad_input + grad_weight)
  Each call is bracketed with torch.cuda.synchronize(), memory_allocated() and reset_peak_memory_stats():
    new_bytes       = allocated after - allocated before  (what the call leaves: outputs / grads)
    transient_bytes = max_memory_allocated - allocated after  (= the workspace; for bwd_both it is
                      max(ws_data - grad_weight, ws_filter), because grad_weight is allocated after bwd_data)
  Every call runs twice: call 1 includes cuDNN's plan search (in benchmark mode, the find buffer);
  call 2 reuses the cached plan (steady state). num_ooms deltas show workspace OOMs that cuDNN caught.
  bf16 = what autocast runs: x, w, b are created in bf16 directly, so the cast copies are excluded.

Modes (each in its own fresh process: cuDNN's plan cache is keyed without the benchmark flag):
  heuristic  torch.backends.cudnn.benchmark = False (the default), no cap.
  capped     same process as heuristic, after it: per config and call, the cap is set with
             torch.cuda.set_per_process_memory_fraction to reserved + segment(new bytes) + headroom,
             for headrooms --headrooms-mib in descending order (default 256,32,4,0). This shows the
             elasticity: the cached plan fails, cuDNN falls through to a plan that fits (num_ooms > 0).
  benchmark  torch.backends.cudnn.benchmark = True, no cap.
  v7         (opt-in) heuristic mode with TORCH_CUDNN_V8_API_DISABLED=1.

A global time budget (--budget-s, default 85) is split between the modes. Configurations are visited
round-robin over the models, so a cut leaves every model covered. Whatever was not measured is listed
under "skipped".

--dry-run (CPU only, e.g. /usr/bin/python3 with torch 1.13): builds the same conv list, cross-checks it
against torchvision (if importable) with forward hooks, checks the F.conv2d / aten.convolution_backward /
_select_conv_backend calls on a tiny CPU tensor, and prints what it would measure. Writes --out if given.

Usage:
  python3 tools/gpu_cudnn_workspace.py --out cudnn_workspace.json
  /usr/bin/python3 tools/gpu_cudnn_workspace.py --dry-run
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

MiB = 1 << 20
FORMAT = "memfit-cudnn-workspace/1"


# ===========================================================================
# Conv list (hand-written from the torchvision architectures; cross-checked against torchvision
# in --dry-run when torchvision is importable). Names are torchvision module names = memfit layer names.

def conv_out(h, k, s, p, d=1):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


class ConvList:
    def __init__(self, model, batch):
        self.model, self.batch, self.items = model, batch, []

    def add(self, name, cin, h, w, cout, k, s=1, p=0, groups=1, bias=False):
        # first=True: the conv reads the network input, so training runs no bwd_data for it
        self.items.append(dict(model=self.model, name=name, first=not self.items, N=self.batch, C=cin, H=h, W=w, K=cout,
                               k=k, stride=s, pad=p, dilation=1, groups=groups, bias=bias,
                               OH=conv_out(h, k, s, p), OW=conv_out(w, k, s, p)))
        return conv_out(h, k, s, p)


def question_cnn(batch):
    L = ConvList("question_cnn", batch)
    h = L.add("conv1", 3, 50, 50, 32, 3, 1, 1, bias=True)    # pad=same (3x3 -> 1)
    h = h // 2                                                # maxpool 2x2 stride 2: 50 -> 25
    L.add("conv2", 32, h, h, 64, 3, 1, 1, bias=True)
    return L.items


def resnet(batch, kind):
    L = ConvList(kind, batch)
    h = L.add("conv1", 3, 224, 224, 64, 7, 2, 3)
    h = conv_out(h, 3, 2, 1)                                  # maxpool 3 stride 2 pad 1: 112 -> 56
    cin = 64
    if kind == "resnet18":
        blocks, expansion = [2, 2, 2, 2], 1
    else:
        blocks, expansion = [3, 4, 6, 3], 4
    for li, (n, width) in enumerate(zip(blocks, [64, 128, 256, 512]), start=1):
        for bi in range(n):
            s = 2 if (li > 1 and bi == 0) else 1
            out = width * expansion
            pre = "layer%d.%d." % (li, bi)
            if kind == "resnet18":
                h2 = L.add(pre + "conv1", cin, h, h, width, 3, s, 1)
                L.add(pre + "conv2", width, h2, h2, width, 3, 1, 1)
            else:                                              # torchvision v1.5: stride on conv2
                L.add(pre + "conv1", cin, h, h, width, 1)
                h2 = L.add(pre + "conv2", width, h, h, width, 3, s, 1)
                L.add(pre + "conv3", width, h2, h2, out, 1)
            if s != 1 or cin != out:
                L.add(pre + "downsample.0", cin, h, h, out, 1, s, 0)
            cin, h = out, h2
    return L.items


def vgg16(batch):
    L = ConvList("vgg16", batch)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    cin, h, idx = 3, 224, 0
    for v in cfg:
        if v == "M":
            h //= 2
            idx += 1
        else:
            L.add("features.%d" % idx, cin, h, h, v, 3, 1, 1, bias=True)
            cin = v
            idx += 2                                           # conv, relu
    return L.items


def mobilenet_v2(batch):
    L = ConvList("mobilenet_v2", batch)
    h = L.add("features.0.0", 3, 224, 224, 32, 3, 2, 1)
    cin, fi = 32, 1
    for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                       [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]:
        for i in range(n):
            st = s if i == 0 else 1
            hid = cin * t
            pre = "features.%d.conv." % fi
            if t == 1:
                h2 = L.add(pre + "0.0", hid, h, h, hid, 3, st, 1, groups=hid)
                L.add(pre + "1", hid, h2, h2, c, 1)
            else:
                L.add(pre + "0.0", cin, h, h, hid, 1)
                h2 = L.add(pre + "1.0", hid, h, h, hid, 3, st, 1, groups=hid)
                L.add(pre + "2", hid, h2, h2, c, 1)
            cin, h, fi = c, h2, fi + 1
    L.add("features.18.0", cin, h, h, 1280, 1)
    return L.items


MODELS = {
    "question_cnn": question_cnn,
    "resnet18": lambda b: resnet(b, "resnet18"),
    "resnet50": lambda b: resnet(b, "resnet50"),
    "vgg16": vgg16,
    "mobilenet_v2": mobilenet_v2,
}

KEY_FIELDS = ("N", "C", "H", "W", "K", "k", "stride", "pad", "dilation", "groups", "bias")


def build_configs(models, batch):
    """Unique conv configurations, in round-robin order over the models."""
    per_model = [MODELS[m](batch) for m in models]
    layers = [it for lst in per_model for it in lst]
    uniq, order = {}, []
    queues = [list(lst) for lst in per_model]
    while any(queues):
        for q in queues:
            if not q:
                continue
            it = q.pop(0)
            key = tuple(it[f] for f in KEY_FIELDS)
            if key not in uniq:
                cfg = {f: it[f] for f in KEY_FIELDS}
                cfg.update(OH=it["OH"], OW=it["OW"], layers=[])
                uniq[key] = cfg
                order.append(key)
            uniq[key]["layers"].append("%s:%s" % (it["model"], it["name"]))
    configs = []
    for i, key in enumerate(order):
        c = uniq[key]
        c["id"] = "c%02d_%dx%dx%d_k%d_%dx%d_s%d_g%d%s" % (i, c["C"], c["H"], c["W"], c["K"], c["k"], c["k"],
                                                       c["stride"], c["groups"], "_b" if c["bias"] else "")
        configs.append(c)
    return layers, configs


def tensor_bytes(c, dtype_bytes):
    x = c["N"] * c["C"] * c["H"] * c["W"] * dtype_bytes
    y = c["N"] * c["K"] * c["OH"] * c["OW"] * dtype_bytes
    w = c["K"] * (c["C"] // c["groups"]) * c["k"] * c["k"] * dtype_bytes
    return x, y, w


def check_against_torchvision(models, layers):
    """Forward hooks on torchvision's Conv2d modules (batch 1, CPU) vs the hand-written list."""
    try:
        import torch
        import torchvision
    except Exception as e:  # noqa: BLE001
        return {"checked": False, "reason": "torchvision not importable: %s" % e}
    res = {"checked": True, "torchvision": torchvision.__version__, "models": {}}
    for m in models:
        if m == "question_cnn":
            continue
        net = getattr(torchvision.models, m)()
        seen = []

        def hook(mod, inp, out, name=None):
            x = inp[0]
            seen.append(dict(name=name, C=x.shape[1], H=x.shape[2], W=x.shape[3], K=mod.out_channels,
                             k=mod.kernel_size[0], stride=mod.stride[0], pad=mod.padding[0],
                             groups=mod.groups, bias=mod.bias is not None))
        hs = [mod.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
              for n, mod in net.named_modules() if isinstance(mod, torch.nn.Conv2d)]
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, 224, 224))
        for h in hs:
            h.remove()
        mine = [dict(name=it["name"], **{f: it[f] for f in ("C", "H", "W", "K", "k", "stride", "pad", "groups", "bias")})
                for it in layers if it["model"] == m]
        diffs = [(a, b) for a, b in zip(mine, seen) if a != b]
        res["models"][m] = {"convs": len(seen), "match": len(mine) == len(seen) and not diffs,
                            "first_diffs": [{"mine": a, "torchvision": b} for a, b in diffs[:3]]}
    res["all_match"] = all(v["match"] for v in res["models"].values())
    return res


# ===========================================================================
# Measurement (child process, CUDA)

def seg_size(n):
    """Segment size the caching allocator cudaMallocs for a request of n bytes (get_allocation_size)."""
    if n <= 0:
        return 0
    n = max(512, (n + 511) // 512 * 512)
    if n <= 1 * MiB:
        return 2 * MiB
    if n < 10 * MiB:
        return 20 * MiB
    return (n + 2 * MiB - 1) // (2 * MiB) * (2 * MiB)


def conv_backend(torch, x, w, b, c):
    args = (x, w, b, [c["stride"]] * 2, [c["pad"]] * 2, [1, 1], False, [0, 0], c["groups"])
    err = None
    for extra in ((), (None,)):            # 1.13: 9 arguments; some 2.x builds add bias_sizes_opt
        try:
            return str(torch._C._select_conv_backend(*(args + extra))).split(".")[-1]
        except Exception as e:  # noqa: BLE001
            err = e
    return "unknown (%s)" % type(err).__name__


class Meter:
    def __init__(self, torch, cuda):
        self.t, self.cuda = torch, cuda

    def num_ooms(self):
        if not self.cuda:
            return 0
        return int(self.t.cuda.memory_stats().get("num_ooms", 0))

    def run(self, fn):
        """Run fn() once, return (result, record)."""
        t = self.t
        rec = {}
        if self.cuda:
            t.cuda.synchronize()
            rec["allocated_before"] = t.cuda.memory_allocated()
            rec["reserved_before"] = t.cuda.memory_reserved()
            t.cuda.reset_peak_memory_stats()
        ooms0 = self.num_ooms()
        t0 = time.time()
        try:
            out = fn()
            if self.cuda:
                t.cuda.synchronize()
            rec["ok"] = True
        except Exception as e:  # noqa: BLE001  (OOM or "unable to find an engine")
            out = None
            rec["ok"] = False
            rec["error"] = ("%s: %s" % (type(e).__name__, e))[:300]
            if self.cuda:
                t.cuda.synchronize()
        rec["ms"] = round((time.time() - t0) * 1000.0, 3)
        rec["num_ooms_delta"] = self.num_ooms() - ooms0
        if self.cuda:
            after = t.cuda.memory_allocated()
            peak = t.cuda.max_memory_allocated()
            rec["new_bytes"] = after - rec["allocated_before"]
            rec["transient_bytes"] = peak - after
            rec["peak_minus_before"] = peak - rec["allocated_before"]
            rec["reserved_after"] = t.cuda.memory_reserved()
        return out, rec


def make_tensors(torch, c, dtype, device):
    # random values made on the device (CPU randn of vgg16's 784 MiB inputs would take seconds);
    # the values do not change which plan cuDNN picks
    torch.manual_seed(0)
    x = torch.randn(c["N"], c["C"], c["H"], c["W"], device=device).to(dtype)
    w = (torch.randn(c["K"], c["C"] // c["groups"], c["k"], c["k"], device=device) * 0.05).to(dtype)
    b = torch.randn(c["K"], device=device).to(dtype) if c["bias"] else None
    return x, w, b


def calls(torch, c, x, w, b):
    import torch.nn.functional as F
    st, pd = [c["stride"]] * 2, [c["pad"]] * 2

    def fwd():
        return F.conv2d(x, w, b, st, pd, 1, c["groups"])

    def bwd(mask, gy):
        def f():
            return torch.ops.aten.convolution_backward(gy, x, w, None, st, pd, [1, 1], False, [0, 0],
                                                       c["groups"], mask)
        return f
    return fwd, bwd


OPS = (("bwd_data", [True, False, False]), ("bwd_filter", [False, True, False]), ("bwd_both", [True, True, False]))


def measure_config(torch, meter, c, dtype, device, cuda):
    """Uncapped: fwd / bwd_data / bwd_filter / bwd_both, two calls each."""
    x, w, b = make_tensors(torch, c, dtype, device)
    res = {"backend": conv_backend(torch, x, w, b, c), "ops": {}}
    fwd, bwd = calls(torch, c, x, w, b)
    recs = []
    y = None
    for call in (1, 2):
        y = None
        y, r = meter.run(fwd)
        r["call"] = call
        recs.append(r)
    res["ops"]["fwd"] = recs
    if y is None:
        y = fwd()
    gy = torch.randn_like(y)
    del y
    for op, mask in OPS:
        recs = []
        for call in (1, 2):
            out, r = meter.run(bwd(mask, gy))
            del out
            r["call"] = call
            recs.append(r)
        res["ops"][op] = recs
    del x, w, b, gy
    return res


def measure_capped(torch, meter, c, dtype, device, headrooms):
    """Per call: cap = reserved (after empty_cache) + segment(new bytes) + headroom, descending headrooms."""
    total = torch.cuda.get_device_properties(0).total_memory
    x, w, b = make_tensors(torch, c, dtype, device)
    fwd, bwd = calls(torch, c, x, w, b)
    y = fwd()
    gy = torch.randn_like(y)
    new = {"fwd": [y.numel() * y.element_size()],
           "bwd_data": [x.numel() * x.element_size()],
           "bwd_filter": [w.numel() * w.element_size()],
           "bwd_both": [x.numel() * x.element_size(), w.numel() * w.element_size()]}
    del y
    fns = {"fwd": fwd}
    for op, mask in OPS:
        fns[op] = bwd(mask, gy)
    res = {}
    try:
        for op in ("fwd", "bwd_data", "bwd_filter"):
            recs = []
            for hr in headrooms:
                torch.cuda.empty_cache()
                torch.cuda.synchronize()
                # + 64 KiB so that float rounding of fraction * total cannot refuse the outputs themselves
                allowed = torch.cuda.memory_reserved() + sum(seg_size(n) for n in new[op]) + hr * MiB + 64 * 1024
                torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / float(total)))
                out, r = meter.run(fns[op])
                del out
                torch.cuda.set_per_process_memory_fraction(1.0)
                r.update(headroom_mib=hr, allowed_bytes=allowed)
                recs.append(r)
            res[op] = recs
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    del x, w, b, gy
    torch.cuda.empty_cache()
    return res


def _dump(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def child(args):
    import torch
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    with open(args.child_spec) as f:
        spec = json.load(f)
    deadline = spec["deadline"]
    mode = spec["mode"]
    torch.backends.cudnn.benchmark = (mode == "benchmark")
    meter = Meter(torch, cuda)
    out = {"mode": mode, "pid": os.getpid(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "results": {}, "capped": {}, "skipped": [], "errors": []}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # warm-up: cuDNN handle and library load are outside the caching allocator, keep them out of call 1
    try:
        xw = torch.randn(1, 3, 8, 8, device=device)
        torch.nn.functional.conv2d(xw, torch.randn(4, 3, 3, 3, device=device))
        if cuda:
            torch.cuda.synchronize()
        del xw
    except Exception as e:  # noqa: BLE001
        out["errors"].append("warm-up: %s" % e)
    jobs = [(c, dn) for c in spec["configs"] for dn in spec["dtypes"]]
    for c, dn in jobs:
        if time.time() > deadline:
            out["skipped"].append({"id": c["id"], "dtype": dn, "mode": mode, "reason": "time budget"})
            continue
        try:
            r = measure_config(torch, meter, c, dtypes[dn], device, cuda)
            out["results"].setdefault(c["id"], {})[dn] = r
        except Exception as e:  # noqa: BLE001
            out["errors"].append({"id": c["id"], "dtype": dn, "error": traceback.format_exc()[-800:]})
        if cuda:
            torch.cuda.empty_cache()
        _dump(out, args.child_out)         # partial results survive a timeout
    if spec.get("capped") and cuda:
        for c, dn in jobs:
            if time.time() > spec["capped_deadline"]:
                out["skipped"].append({"id": c["id"], "dtype": dn, "mode": "capped", "reason": "time budget"})
                continue
            if c["id"] not in out["results"]:
                continue
            try:
                out["capped"].setdefault(c["id"], {})[dn] = measure_capped(
                    torch, meter, c, dtypes[dn], device, spec["headrooms"])
            except Exception:  # noqa: BLE001
                out["errors"].append({"id": c["id"], "dtype": dn, "capped": True,
                                      "error": traceback.format_exc()[-800:]})
                torch.cuda.set_per_process_memory_fraction(1.0)
            _dump(out, args.child_out)
    out["finished"] = True
    _dump(out, args.child_out)
    return 0


# ===========================================================================
# Parent

def meta_info():
    import torch
    m = {"torch": torch.__version__, "python": sys.version.split()[0],
         "env": {k: os.environ.get(k) for k in ("TORCH_CUDNN_V8_API_DISABLED", "TORCH_CUDNN_V8_API_ENABLED",
                                                "TORCH_CUDNN_USE_HEURISTIC_MODE_B", "TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT",
                                                "PYTORCH_CUDA_ALLOC_CONF", "CUDA_VISIBLE_DEVICES")}}
    try:
        m["cuda_available"] = torch.cuda.is_available()
        m["cuda"] = torch.version.cuda
        m["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        m["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        if m["cuda_available"]:
            p = torch.cuda.get_device_properties(0)
            m["gpu"] = {"name": p.name, "total_memory": p.total_memory, "cc": "%d.%d" % (p.major, p.minor)}
    except Exception as e:  # noqa: BLE001
        m["error"] = str(e)
    return m


def summarize(result):
    """Per config / dtype: steady (call 2) transient bytes per op, per mode."""
    rows = []
    for cid, per_dt in result["runs"].get("heuristic", {}).get("results", {}).items():
        for dn, r in per_dt.items():
            row = {"id": cid, "dtype": dn, "backend": r.get("backend")}
            for op, recs in r["ops"].items():
                st = [x for x in recs if x.get("call") == 2 and x.get("ok")]
                row[op] = st[0].get("transient_bytes") if st else None
            b = result["runs"].get("benchmark", {}).get("results", {}).get(cid, {}).get(dn)
            if b:
                for op, recs in b["ops"].items():
                    c1 = [x for x in recs if x.get("call") == 1 and x.get("ok")]
                    c2 = [x for x in recs if x.get("call") == 2 and x.get("ok")]
                    row["bench_" + op] = c2[0].get("transient_bytes") if c2 else None
                    row["bench_first_" + op] = c1[0].get("transient_bytes") if c1 else None
            cp = result["runs"].get("heuristic", {}).get("capped", {}).get(cid, {}).get(dn)
            if cp:
                for op, recs in cp.items():
                    row["capped_" + op] = [(x["headroom_mib"], x.get("transient_bytes") if x.get("ok") else "fail",
                                            x.get("num_ooms_delta")) for x in recs]
            rows.append(row)
    return rows


def per_model(result):
    """Largest steady (call 2, heuristic) workspace per model and dtype: one workspace is live at a time."""
    cfg_of = {}
    for c in result["configs"]:
        for ln in c["layers"]:
            cfg_of[ln] = c["id"]
    first = {"%s:%s" % (it["model"], it["name"]) for it in result["layers"] if it.get("first")}
    res = result["runs"].get("heuristic", {}).get("results", {})
    out = {}
    for ln, cid in cfg_of.items():
        model = ln.split(":")[0]
        for dn, r in res.get(cid, {}).items():
            d = out.setdefault(model, {}).setdefault(dn, {"layers_measured": 0})
            d["layers_measured"] += 1
            for op in ("fwd", "bwd_data", "bwd_filter"):
                if op == "bwd_data" and ln in first:
                    continue
                st = [x for x in r["ops"].get(op, []) if x.get("call") == 2 and x.get("ok")]
                v = st[0].get("transient_bytes") if st else None
                if v is not None and v > d.get("max_" + op, -1):
                    d["max_" + op], d["layer_of_max_" + op] = v, ln.split(":", 1)[1]
    return out


def print_plan(configs, layers, args, tv):
    print("memfit cuDNN workspace measurement plan (batch %d)" % args.batch)
    print("  models: %s" % ", ".join(args.models))
    print("  conv layers: %d, distinct configurations: %d" % (len(layers), len(configs)))
    if tv is not None:
        if tv.get("checked"):
            print("  torchvision %s cross-check: %s" % (tv["torchvision"], "all match" if tv["all_match"] else "MISMATCH"))
            for m, v in tv["models"].items():
                print("    %-13s %3d convs  %s" % (m, v["convs"], "ok" if v["match"] else "DIFF %s" % v["first_diffs"]))
        else:
            print("  torchvision cross-check skipped: %s" % tv.get("reason"))
    n_dt = len(args.dtypes)
    print("  dtypes: %s; modes: %s" % (", ".join(args.dtypes), ", ".join(args.modes)))
    print("  per config and dtype: fwd, bwd_data, bwd_filter, bwd_both x 2 calls (call 1 = plan search)")
    if "capped" in args.modes:
        print("  capped: fwd, bwd_data, bwd_filter at headrooms %s MiB (descending)" % args.headrooms_mib)
    n_calls = len(configs) * n_dt * 8 * sum(1 for m in args.modes if m != "capped")
    if "capped" in args.modes:
        n_calls += len(configs) * n_dt * 3 * len(args.headrooms)
    print("  calls: about %d; time budget %.0f s" % (n_calls, args.budget_s))
    print()
    print("  %-34s %-52s %9s %9s %9s" % ("id", "layers", "x MiB", "y MiB", "w MiB"))
    for c in configs:
        xb, yb, wb = tensor_bytes(c, 4)
        names = ", ".join(c["layers"])
        if len(names) > 52:
            names = names[:49] + "..."
        print("  %-34s %-52s %9.1f %9.1f %9.2f" % (c["id"], names, xb / MiB, yb / MiB, wb / MiB))


def cpu_call_check():
    """Run the exact measurement calls on a tiny CPU config (signature check for the GPU run)."""
    import torch
    c = dict(N=2, C=4, H=9, W=9, K=6, k=3, stride=2, pad=1, dilation=1, groups=2, bias=True,
             OH=conv_out(9, 3, 2, 1), OW=conv_out(9, 3, 2, 1), id="cpu_check")
    meter = Meter(torch, False)
    r = measure_config(torch, meter, c, torch.float32, "cpu", False)
    ok = all(rec["ok"] for recs in r["ops"].values() for rec in recs)
    # numerical check of the backward call against autograd
    x, w, b = make_tensors(torch, c, torch.float32, "cpu")
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = torch.nn.functional.conv2d(x, w, b, 2, 1, 1, 2)
    gy = torch.randn_like(y)
    y.backward(gy)
    gi, gw, _ = torch.ops.aten.convolution_backward(gy, x.detach(), w.detach(), None, [2, 2], [1, 1], [1, 1],
                                                    False, [0, 0], 2, [True, True, False])
    close = bool(torch.allclose(gi, x.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5))
    errs = [rec.get("error") for recs in r["ops"].values() for rec in recs if not rec["ok"]]
    return {"calls_ok": ok, "grads_match_autograd": close, "backend_cpu": r["backend"], "errors": errs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON output file")
    ap.add_argument("--dry-run", action="store_true", help="CPU only: build the conv list, check, print the plan")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--modes", default="heuristic,capped,benchmark",
                    help="comma list of heuristic, capped, benchmark, v7 (capped needs heuristic)")
    ap.add_argument("--headrooms-mib", default="256,32,4,0")
    ap.add_argument("--budget-s", type=float, default=85.0, help="total wall-clock budget for all modes")
    ap.add_argument("--cpu-selftest", action="store_true",
                    help="run the parent/child orchestration on the CPU (no memory numbers; for testing this script)")
    ap.add_argument("--child-spec", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_spec:
        return child(args)

    start = time.time()
    args.models = [m for m in args.models.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.modes = [m for m in args.modes.split(",") if m]
    args.headrooms = sorted({int(h) for h in args.headrooms_mib.split(",") if h != ""}, reverse=True)
    for m in args.models:
        if m not in MODELS:
            ap.error("unknown model %s (have %s)" % (m, ", ".join(MODELS)))
    if "capped" in args.modes and "heuristic" not in args.modes:
        ap.error("capped runs inside the heuristic process; add heuristic to --modes")
    layers, configs = build_configs(args.models, args.batch)
    result = {"format": FORMAT, "dry_run": args.dry_run, "batch": args.batch, "models": args.models,
              "dtypes": args.dtypes, "modes": args.modes, "headrooms_mib": args.headrooms,
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
              "definitions": {
                  "new_bytes": "memory_allocated after the call - before (outputs/grads the call leaves)",
                  "transient_bytes": "max_memory_allocated during the call - memory_allocated after it (the workspace; "
                                     "bwd_both: max(ws_data - grad_weight, ws_filter))",
                  "call": "1 = first call for the shape (plan search / cudnnFind), 2 = cached plan",
                  "num_ooms_delta": "caching-allocator OOMs during the call that PyTorch caught (elastic fall-through)",
                  "capped.allowed_bytes": "set_per_process_memory_fraction cap = reserved + segment(new bytes) + headroom"},
              "layers": layers, "configs": configs}
    meta = None
    try:
        meta = meta_info()
    except Exception as e:  # noqa: BLE001
        meta = {"error": str(e)}
    result["meta"] = meta

    if args.dry_run:
        tv = check_against_torchvision(args.models, layers)
        result["torchvision_check"] = tv
        print_plan(configs, layers, args, tv)
        try:
            result["cpu_call_check"] = cpu_call_check()
        except Exception:  # noqa: BLE001
            result["cpu_call_check"] = {"calls_ok": False, "error": traceback.format_exc()[-800:]}
        print()
        print("  CPU call check: %s" % json.dumps(result["cpu_call_check"]))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
            print("  wrote %s" % args.out)
        ok = result["cpu_call_check"].get("calls_ok") and result["cpu_call_check"].get("grads_match_autograd") \
            and (not tv.get("checked") or tv.get("all_match"))
        return 0 if ok else 1

    if not meta.get("cuda_available") and not args.cpu_selftest:
        print("no CUDA device; use --dry-run on CPU-only machines", file=sys.stderr)
        return 2

    # budget split: heuristic(+capped) gets 60 %, benchmark 30 %, v7 10 % (renormalised over the modes asked for)
    weights = {"heuristic": 0.35 + (0.25 if "capped" in args.modes else 0.0), "benchmark": 0.3, "v7": 0.1}
    procs = [m for m in ("heuristic", "benchmark", "v7") if m in args.modes]
    wsum = sum(weights[m] for m in procs)
    result["runs"], result["skipped"] = {}, []
    tmp = tempfile.mkdtemp(prefix="cudnn_ws_")
    t_mode = time.time()
    for m in procs:
        share = (args.budget_s - (time.time() - start) - 2.0) * weights[m] / wsum
        wsum -= weights[m]
        now = time.time()                                 # the child's start-up (import, CUDA init) is inside its share
        spec = {"mode": m, "configs": configs, "dtypes": args.dtypes, "headrooms": args.headrooms,
                "capped": m == "heuristic" and "capped" in args.modes,
                "deadline": now + share * (0.55 if (m == "heuristic" and "capped" in args.modes) else 1.0),
                "capped_deadline": now + share}
        sp, op = os.path.join(tmp, m + "_spec.json"), os.path.join(tmp, m + "_out.json")
        with open(sp, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ)
        if m == "v7":
            env["TORCH_CUDNN_V8_API_DISABLED"] = "1"
        t0 = time.time()
        try:
            rc = subprocess.call([sys.executable, os.path.abspath(__file__), "--child-spec", sp, "--child-out", op],
                                 env=env, timeout=max(30.0, share + 45.0))
        except subprocess.TimeoutExpired:
            rc = 124                                       # the child wrote partial results after each job
        run = {"rc": rc, "wall_s": round(time.time() - t0, 2)}
        if os.path.exists(op):
            with open(op) as f:
                run.update(json.load(f))
            result["skipped"].extend(run.pop("skipped", []))
        result["runs"][m] = run
        print("mode %-9s rc=%d  %.1f s  measured %d  errors %d" % (
            m, rc, run["wall_s"], sum(len(v) for v in run.get("results", {}).values()), len(run.get("errors", []))))
    result["wall_s"] = round(time.time() - t_mode, 2)
    result["summary"] = summarize(result)
    result["per_model"] = per_model(result)
    out = args.out or "cudnn_workspace.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote %s (%d skipped)" % (out, len(result["skipped"])))
    for model, per_dt in result["per_model"].items():
        for dn, d in per_dt.items():
            print("  %-13s %-4s layers %3d  max workspace MiB: fwd %s  bwd_data %s  bwd_filter %s" % (
                model, dn, d["layers_measured"],
                *["%.1f (%s)" % (d["max_" + op] / MiB, d["layer_of_max_" + op]) if ("max_" + op) in d else "-"
                  for op in ("fwd", "bwd_data", "bwd_filter")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
