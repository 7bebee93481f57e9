#!/usr/bin/env python3
"""CPU reference for activation checkpointing (torch.utils.checkpoint), torch 1.13.

For each model (memfit names: its regions are the dotted prefixes of layer names) this runs
memfit's training loop (tools/cpu_live_reference.py's method: torch.profiler, profile_memory=True,
three iterations of memfit_torch.training_step, SGD foreach) three ways:

  none           memfit_torch.MemfitNet.forward
  reentrant      each region named by --checkpoint is one
                 torch.utils.checkpoint.checkpoint(fn, *inputs, use_reentrant=True) call
  non-reentrant  the same with use_reentrant=False

fn runs the region's layers in order and drops each intermediate after its last use inside the
region (as the un-checkpointed forward does); its inputs are every value the region reads from
outside (all passed as arguments, so checkpoint holds them), its outputs every value used after it.

Recorded per run: the live-bytes iterations (start/peak/phase peaks, where the peak is: see
tools/cpu_live_reference.py) and `saved`: what a torch.autograd.graph.saved_tensors_hooks context
around forward + loss sees, unique storages, parameters/buffers and the input batch/targets
excluded.  Those hooks only see the OUTER graph: inside a non-reentrant checkpoint its own hooks
replace them (nothing recorded there), a reentrant checkpoint's forward runs under no_grad (saves
nothing) and its ctx.save_for_backward of the inputs goes through them; the rerun in backward is
outside the hook context.

Usage (repository root, build/memfit built):
  /usr/bin/python3 tools/cpu_checkpoint_reference.py -o tests/reference/cpu_live_checkpoint.json
Needs only torch (tested with Debian python3-torch 1.13, CPU).
"""

import argparse
import json
import os
import sys

import torch
import torch.utils.checkpoint as ckpt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_live_reference as clr  # noqa: E402
import memfit_torch as mt  # noqa: E402

# (model file, batch, regions checkpointed: memfit region names)
RUNS = [
    ("tests/reference/fixtures/resnet18_64.memfit", 2, ["layer1", "layer2", "layer3", "layer4"]),
    ("tests/reference/fixtures/ckpt_mlp.memfit", 256, ["layers.0", "layers.1", "layers.2", "layers.3"]),
]
IMPLS = ["none", "reentrant", "non-reentrant"]


def segments(net, regions):
    """[(a, b, region)] over net.plan: runs of consecutive steps inside one region, else single steps."""
    def region_of(name):
        for r in regions:
            if name.startswith(r + "."):
                return r
        return None
    plan, out, i = net.plan, [], 0
    while i < len(plan):
        r = region_of(plan[i][0])
        j = i
        while r is not None and j + 1 < len(plan) and region_of(plan[j + 1][0]) == r:
            j += 1
        out.append((i, j, r))
        i = j + 1
    return out


def checkpointed_forward(regions, use_reentrant):
    def wrap(net):
        plan = net.plan
        last_use = {}
        for k, (_, _, src) in enumerate(plan):
            for s in src:
                last_use[s] = k
        segs = []
        for a, b, r in segments(net, regions):
            if r is None:
                segs.append((a, b, None, None, None, None))
                continue
            inside = {plan[k][0] for k in range(a, b + 1)}
            ins, inner_last = [], {}
            for k in range(a, b + 1):
                for s in plan[k][2]:
                    if s not in inside and s not in ins:
                        ins.append(s)
                    inner_last[s] = k
            outs = [n for n in (plan[k][0] for k in range(a, b + 1))
                    if last_use.get(n, -1) > b or n == net.output_name]
            segs.append((a, b, r, ins, outs, inner_last))

        def run_region(a, b, ins, outs, inner_last):
            def fn(*args):
                local = dict(zip(ins, args))
                del args
                for k in range(a, b + 1):
                    name, key, src = plan[k]
                    local[name] = net.layers[key](*[local[s] for s in src])
                    for s in set(src):
                        if inner_last.get(s) == k and s not in outs:
                            del local[s]
                res = tuple(local.pop(o) for o in outs)
                return res[0] if len(res) == 1 else res
            return fn

        def forward(*xs):
            if len(xs) == 1 and isinstance(xs[0], (tuple, list)):
                xs = tuple(xs[0])
            env = dict(zip(net.inputs, xs))
            del xs
            for a, b, r, ins, outs, inner_last in segs:
                if r is None:
                    name, key, src = plan[a]
                    env[name] = net.layers[key](*[env[s] for s in src])
                    used = src
                else:
                    res = ckpt.checkpoint(run_region(a, b, ins, outs, inner_last), *[env[s] for s in ins],
                                          use_reentrant=use_reentrant)
                    if len(outs) == 1:
                        res = (res,)
                    for o, t in zip(outs, res):
                        env[o] = t
                    del res
                    used = ins
                for s in set(used):
                    if a <= last_use.get(s, -1) <= b and s != net.output_name:
                        env.pop(s, None)
            return env.pop(net.output_name)
        return forward
    return wrap


def saved_bytes(m, batch, wrap, seed):
    """Unique storages packed by a saved_tensors_hooks context around forward + loss (outer graph only)."""
    torch.manual_seed(seed)
    net = mt.build_module(m)
    net.train()
    if wrap is not None:
        net.forward = wrap(net)
    loss_fn = mt.loss_fn_for(net)
    x, target = mt.make_batch(m, batch, "cpu", torch.float32, seed=seed)
    xs = x if isinstance(x, tuple) else (x,)
    skip = {t.storage().data_ptr() for t in list(net.parameters()) + list(net.buffers()) + list(xs) + [target]}
    seen = {}

    def pack(t):
        s = t.storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(*xs)
        loss = loss_fn(out, target)
    loss.backward()
    return {"total_bytes": sum(seen.values()), "storages": len(seen)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memfit", default="build/memfit", help="memfit binary (for `model FILE --json`)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "generated_by": " ".join(["/usr/bin/python3"] + sys.argv),
        "torch_version": torch.__version__,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "training_loop": mt.TRAINING_LOOP,
        "optimizer": "sgd (foreach)",
        "checkpoint_call": "torch.utils.checkpoint.checkpoint(fn, *region_inputs, use_reentrant=...) per region; "
                           "preserve_rng_state left at True (its RNG state is a CPU tensor: torch.get_rng_state())",
        "notes": clr.NOTES + [
            "saved: saved_tensors_hooks see the outer graph only (non-reentrant: checkpoint's own hooks replace "
            "them inside the region; reentrant: the region runs under no_grad, its inputs are saved by "
            "CheckpointFunction's ctx.save_for_backward; the rerun in backward is outside the hook context).",
        ],
        "models": [],
    }
    for src, batch, regions in RUNS:
        m = clr.load_model(src, args.memfit)
        entry = {"name": m.get("name"), "source": src, "batch": batch, "checkpoint": regions, "runs": []}
        for impl in IMPLS:
            sys.stderr.write("%s batch %d %s\n" % (src, batch, impl))
            wrap = None if impl == "none" else checkpointed_forward(regions, impl == "reentrant")
            res, _, _ = clr.measure(m, batch, "sgd", "foreach", args.seed, False, wrap_forward=wrap)
            res["checkpoint_impl"] = impl
            res["saved"] = saved_bytes(m, batch, wrap, args.seed)
            entry["runs"].append(res)
        result["models"].append(entry)
    mt.write_json(result, args.output)


if __name__ == "__main__":
    main()
