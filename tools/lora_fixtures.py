#!/usr/bin/env python3
"""CPU references for LoRA: PEFT's LoRA forward written as plain torch modules.

PEFT is not installed here (and needs no GPU for LoRA), so LoraLinear below is
PEFT's lora.Linear with one adapter, transcribed from huggingface/peft
src/peft/tuners/lora/layer.py (Linear.forward, unmerged, no DoRA):

    result = self.base_layer(x)
    torch_result_dtype = result.dtype
    x = self._cast_input_dtype(x, lora_A.weight.dtype)   # x.to(dtype) only when it differs
    result = result + lora_B(lora_A(dropout(x))) * scaling
    result = result.to(torch_result_dtype)

with lora_dropout = nn.Dropout(p) for p > 0 and nn.Identity() for p == 0 (LoraLayer.update_layer),
lora_A = nn.Linear(in, r, bias=False), lora_B = nn.Linear(r, out, bias=False), scaling = alpha / r;
every parameter whose name lacks "lora_" frozen (mark_only_lora_as_trainable, bias="none").

The two fixtures are tests/reference/fixtures/lora_mlp.memfit and lora_stack.memfit (module names =
memfit layer names; the adapters are FIXTURE_LAYER.lora_A / .lora_B / .lora_dropout / .base_layer as
memfit's transformation names them). For each setting (targets, r, alpha, dropout) it records:

  saved   (-o-saved): what autograd saves during forward + loss (saved_tensors_hooks), unique storages,
          per innermost module, as tools/cpu_reference.py measures (parameters and the loop's input and
          target flagged, not counted), at batches 1 and 8;
  live    (-o-live): live CPU bytes through three training iterations (torch.profiler,
          profile_memory=True, tools/cpu_live_reference.py's analyse()) with SGD and foreach Adam, batch 4.

Usage (repository root):
  /usr/bin/python3 tools/lora_fixtures.py -o-saved tests/reference/cpu_saved_lora.json \
      -o-live tests/reference/cpu_live_lora.json
Needs only torch (tested with Debian python3-torch 1.13, CPU).
"""

import argparse
import json
import os
import sys

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_live_reference as clr  # noqa: E402
import memfit_torch as mt  # noqa: E402
from cpu_reference import _storage  # noqa: E402  (the saved-tensor hook's storage identity)


class LoraLinear(nn.Module):
    """peft/tuners/lora/layer.py Linear with one adapter ('default'), as the module path without it."""

    def __init__(self, base, r, alpha, dropout, dtype=torch.float32):
        super().__init__()
        self.base_layer = base
        self.lora_dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, r, bias=False, dtype=dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, dtype=dtype)
        nn.init.zeros_(self.lora_B.weight)  # reset_lora_parameters: B starts at zero
        self.scaling = alpha / r

    def forward(self, x):
        result = self.base_layer(x)
        torch_result_dtype = result.dtype
        if x.dtype != self.lora_A.weight.dtype:
            x = x.to(self.lora_A.weight.dtype)
        result = result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        result = result.to(torch_result_dtype)
        return result


class Mlp(nn.Module):  # tests/reference/fixtures/lora_mlp.memfit
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(64, 128)
        self.v_proj = nn.Linear(128, 64)


class Stack(nn.Module):  # tests/reference/fixtures/lora_stack.memfit
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block()])
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(64 * 16, 10)

    def forward(self, x):
        x = self.relu1(self.layers[0].q_proj(x))
        x = self.relu2(self.layers[0].v_proj(x))
        return self.head(torch.flatten(x, 1))


FIXTURES = {
    "lora_mlp": (Mlp, [32], "tests/reference/fixtures/lora_mlp.memfit"),
    "lora_stack": (Stack, [16, 64], "tests/reference/fixtures/lora_stack.memfit"),
}

# (fixture, memfit --lora spec, targets for the module walk, r, alpha, dropout)
SETTINGS = [
    ("lora_mlp", "r=8,alpha=16,targets=fc1,fc2", ["fc1", "fc2"], 8, 16.0, 0.0),
    ("lora_mlp", "r=4,alpha=8,dropout=0.1,targets=all-linear", ["fc1", "fc2"], 4, 8.0, 0.1),
    ("lora_stack", "r=8,alpha=16,dropout=0.05,targets=q_proj,v_proj", ["q_proj", "v_proj"], 8, 16.0, 0.05),
    ("lora_stack", "r=16,alpha=32,targets=v_proj", ["v_proj"], 16, 32.0, 0.0),
]


def build(fixture, targets, r, alpha, dropout, seed):
    torch.manual_seed(seed)
    cls, shape, _ = FIXTURES[fixture]
    net = cls()
    # PEFT check_target_module_exists: the module name is a target or ends in "." + target
    for name, mod in list(net.named_modules()):
        if isinstance(mod, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, LoraLinear(mod, r, alpha, dropout))
    for n, p in net.named_parameters():
        p.requires_grad_("lora_" in n)
    net.train()
    return net, shape


def batch_for(shape, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([batch] + shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, y


def measure_saved(net, shape, batch, seed):
    x, y = batch_for(shape, batch, seed)
    loss_fn = nn.CrossEntropyLoss()
    params = {_storage(p)[0] for p in net.parameters()}
    inputs = {_storage(x)[0], _storage(y)[0]}
    stack, handles = [], []
    leaves = [(n, m) for n, m in net.named_modules() if n and (not list(m.children()) or isinstance(m, LoraLinear))]
    leaves.append(("loss", loss_fn))
    def enter(name):
        def hook(mod, inp):
            stack.append(name)
        return hook

    def leave(mod, inp, out):
        stack.pop()  # (a forward hook must return None: a value would replace the output)

    for name, mod in leaves:
        handles.append(mod.register_forward_pre_hook(enter(name)))
        handles.append(mod.register_forward_hook(leave))
    sids, first = {}, {}
    per_layer = {}

    def pack(t):
        layer = stack[-1] if stack else "(outside)"
        ptr, nbytes = _storage(t)
        key = (ptr, nbytes)
        new = key not in sids
        if new:
            sids[key] = len(sids)
        entry = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "bytes": nbytes,
                 "storage_id": sids[key], "is_param": ptr in params, "is_input": ptr in inputs}
        per_layer.setdefault(layer, []).append(entry)
        if new:
            first[sids[key]] = (layer, entry)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(net(x), y)
    for h in handles:
        h.remove()
    loss.backward()
    total, first_seen, noise = 0, {}, 0
    for sid, (layer, e) in first.items():
        if e["is_param"] or e["is_input"]:
            continue
        total += e["bytes"]
        first_seen[layer] = first_seen.get(layer, 0) + e["bytes"]
        if layer.endswith(".lora_dropout") and e["dtype"] == "float32":
            n = 1
            for d in e["shape"]:
                n *= d
            noise += n
    return {"batch": batch, "saved_bytes": total, "first_seen_bytes": first_seen,
            "dropout_noise_elements": noise, "saved": per_layer}


def measure_live(net, shape, batch, opt_name, impl, seed):
    x, y = batch_for(shape, batch, seed)
    loss_fn = nn.CrossEntropyLoss()
    opt = mt.make_optimizer(opt_name, net.parameters(), impl)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(clr.N_ITERATIONS):
            mt.training_step(net, x, y, opt, loss_fn)
    its, end_bytes, _ = clr.analyse(prof.profiler.kineto_results, False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    state = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    return {"optimizer": opt_name, "optimizer_impl": impl, "batch": batch,
            "trainable_param_tensors": len(trainable),
            "trainable_param_bytes": sum(p.numel() * p.element_size() for p in trainable),
            "grad_bytes_after": sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None),
            "optimizer_state_bytes_after": state, "end_bytes": end_bytes, "iterations": its}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o-saved", dest="saved", required=True)
    ap.add_argument("-o-live", dest="live", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cmd = "/usr/bin/python3 tools/lora_fixtures.py -o-saved %s -o-live %s" % (a.saved, a.live)
    saved, live = [], []
    for fixture, spec, targets, r, alpha, dropout in SETTINGS:
        src = FIXTURES[fixture][2]
        net, shape = build(fixture, targets, r, alpha, dropout, a.seed)
        entry = {"name": fixture, "source": src, "lora": spec,
                 "params": sum(p.numel() for p in net.parameters()),
                 "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
                 "batches": [measure_saved(net, shape, b, a.seed) for b in (1, 8)]}
        saved.append(entry)
        runs = []
        for opt_name, impl in (("sgd", "default"), ("adam", "foreach")):
            net, shape = build(fixture, targets, r, alpha, dropout, a.seed)
            runs.append(measure_live(net, shape, 4, opt_name, impl, a.seed))
        live.append({"name": fixture, "source": src, "lora": spec, "runs": runs})
    meta = {"torch": torch.__version__, "generated_by": cmd,
            "notes": ["PEFT's LoRA forward transcribed as LoraLinear (tools/lora_fixtures.py docstring); CPU, float32.",
                      "saved: unique storages saved during forward + loss, parameters and the loop's x / target "
                      "excluded; dropout_noise_elements: CPU dropout saves a float32 noise tensor (CUDA a bool mask).",
                      "live: tools/cpu_live_reference.py's measurement (profiler [memory] records), 3 iterations."]}
    with open(a.saved, "w") as f:
        f.write(json.dumps(dict(meta, models=saved), indent=1, sort_keys=True) + "\n")
    with open(a.live, "w") as f:
        f.write(json.dumps(dict(meta, models=live), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
