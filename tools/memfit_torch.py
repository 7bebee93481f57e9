"""Build and train a PyTorch module from a memfit JSON model form.

The JSON form ("format": "memfit-model/1") is what `memfit model FILE --json`
emits.  This module is the single source of truth for how the reference tools
(cpu_reference.py, gpu_reference.py) turn that form into PyTorch:

* build_module(model_json) -> MemfitNet
    One leaf nn.Module per memfit layer, registered in a ModuleDict under a
    safe key (memfit name with '.' replaced, see `safe_key`).  `net.key_to_name`
    maps the key back to the memfit layer name, `net.name_to_key` the other way.
    Input layers get no module.  A trailing `cross_entropy` layer is not run in
    forward(); it becomes `net.loss` (an nn.CrossEntropyLoss registered as
    `net.loss`, memfit name = that layer's name).  If the model has no
    cross_entropy layer, `net.loss` is nn.CrossEntropyLoss with memfit name
    "loss" (memfit appends the same layer under that name).
    A layer with several outputs (chunk) is read as `name:K` in `from` (output K), as memfit names them.
    The N-d kinds (reshape, permute, transpose, contiguous, slice, mul, matmul, layer_norm, hardswish,
    hardsigmoid, stochastic_depth, identity) are built for models written by tools/memfit_export.py.
* make_batch(model_json, batch, device, dtype) -> (x, target)
* training_step(model, x, target, optimizer, loss_fn) -- the measured loop:
      optimizer.zero_grad(set_to_none=True)
      out = model(x)
      loss = loss_fn(out, target)
      loss.backward()
      optimizer.step()
* make_optimizer(name, params, impl)
* load_ops() -> OpRegistry: memfit's op registry (docs/ops.json, `memfit ops --json`); every layer
  is checked against it (kind, aliases, input count, attributes; defaults filled in) by
  load_model_json / check_layer, which fail clearly on a kind without a torch builder here.
* apply_freeze(net, freeze, train): memfit's --freeze / --train globs -> requires_grad=False on
  the frozen layers' parameters (frozen_layers / glob_matches give the selection).

Works with torch 1.13 (CPU) and torch 2.x (CUDA).  Standard library + torch only.
"""

import contextlib
import copy
import inspect
import json
import math
import os
import re
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT = "memfit-model/1"

# Kinds this module has a torch builder for (_make_layer). Which kinds exist, their aliases, input
# counts and attribute defaults come from memfit's op registry (`memfit ops --json`, checked in as
# docs/ops.json); see load_ops / check_layer.
TORCH_BUILDERS = frozenset((
    "input", "conv2d", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "flatten",
    "linear", "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "gelu", "silu",
    "batchnorm2d", "dropout", "softmax", "log_softmax", "cross_entropy", "add",
    "concat", "mean", "chunk", "mul", "hardswish", "hardsigmoid", "reshape", "permute", "transpose",
    "contiguous", "identity", "slice", "matmul", "layer_norm", "stochastic_depth",
))

OPS_FORMAT = "memfit-ops/1"
_TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
OPS_JSON = os.path.join(os.path.dirname(_TOOLS_DIR), "docs", "ops.json")


class OpRegistry:
    """memfit's op registry as `memfit ops --json` prints it ("format": "memfit-ops/1")."""

    def __init__(self, doc, path):
        if doc.get("format") != OPS_FORMAT:
            raise ValueError("%s: not a %s document (format=%r)" % (path, OPS_FORMAT, doc.get("format")))
        self.path = path
        self.ops = {}
        self.alias = {}
        for op in doc["ops"]:
            kind = op["kind"]
            if kind in self.ops:
                raise ValueError("%s: kind %r listed twice" % (path, kind))
            self.ops[kind] = op
            for name in [kind] + list(op.get("aliases", [])):
                if name in self.alias and self.alias[name] != kind:
                    raise ValueError("%s: alias %r names %r and %r" % (path, name, self.alias[name], kind))
                self.alias[name] = kind

    def canonical(self, kind):
        return self.alias.get(kind)

    def kinds(self):
        return tuple(self.ops)


_REGISTRY = None


def load_ops(path=None):
    """The op registry: `path`, else $MEMFIT_OPS_JSON, else docs/ops.json (regenerated with
    `memfit ops --json > docs/ops.json`). Cached when no path is given."""
    global _REGISTRY
    if path is None and _REGISTRY is not None:
        return _REGISTRY
    chosen = path or os.environ.get("MEMFIT_OPS_JSON") or OPS_JSON
    if not os.path.exists(chosen):
        raise FileNotFoundError("memfit's op registry %s does not exist (write it with `memfit ops --json > %s`)"
                                % (chosen, chosen))
    with open(chosen) as f:
        reg = OpRegistry(json.load(f), chosen)
    if path is None:
        _REGISTRY = reg
    return reg


def _parse_pair_text(text):
    parts = str(text).lower().split("x")
    if len(parts) == 1:
        return [int(parts[0]), int(parts[0])]
    if len(parts) == 2:
        return [int(parts[0]), int(parts[1])]
    raise ValueError("bad size %r" % text)


_TYPE_NAMES = {"integer": "integer", "int": "integer", "pair": "pair", "size": "pair", "boolean": "boolean",
               "bool": "boolean", "real": "real", "float": "real", "double": "real", "text": "text",
               "string": "text"}


def _default_value(attr, layer):
    """An attribute's default (the registry's text) as the JSON form spells the value."""
    t, d = _TYPE_NAMES.get(attr.get("type"), attr.get("type")), attr.get("default")
    if isinstance(d, str) and d in layer and d != attr["key"]:
        return layer[d]  # e.g. a pool's stride defaults to its kernel
    if not isinstance(d, str):
        return d  # already typed (a registry that writes JSON values)
    if t == "integer":
        return int(d)
    if t == "pair":
        return _parse_pair_text(d)
    if t == "boolean":
        if d.lower() in ("true", "1", "yes"):
            return True
        if d.lower() in ("false", "0", "no"):
            return False
        raise ValueError("bad boolean default %r for %s" % (d, attr["key"]))
    if t == "real":
        return float(d)
    return d


def check_layer(layer, index, registry=None):
    """Checks one layer against the op registry and returns a copy with its canonical kind and
    every attribute default filled in. Fails clearly on a kind memfit does not know, a kind with
    no torch builder here, a wrong number of inputs, an unknown or missing attribute."""
    reg = registry or load_ops()
    name = layer.get("name")
    kind = layer.get("kind")
    canon = reg.canonical(kind)
    if canon is None:
        raise ValueError("layer %d (%s): unknown kind %r (not in memfit's op registry %s; known: %s)"
                         % (index, name, kind, reg.path, ", ".join(reg.kinds())))
    if canon not in TORCH_BUILDERS:
        raise ValueError("layer %d (%s): kind %r is in memfit's op registry but tools/memfit_torch.py has no "
                         "torch builder for it (add one to _make_layer and TORCH_BUILDERS)" % (index, name, canon))
    op = reg.ops[canon]
    out = dict(layer)
    out["kind"] = canon
    if canon != "input":
        n_in = len(layer.get("from") or [])
        lo, hi = int(op.get("min_inputs", 1)), int(op.get("max_inputs", 1))
        if n_in < lo or (hi >= 0 and n_in > hi):
            raise ValueError("layer %r (%s): %d inputs, memfit's registry allows %d..%s"
                             % (name, canon, n_in, lo, hi if hi >= 0 else "any"))
    keys = {a["key"] for a in op.get("attrs", [])}
    for k in layer:
        if k not in ("name", "kind", "from") and k not in keys:
            raise ValueError("layer %r (%s): unknown attribute %r (memfit's registry has: %s)"
                             % (name, canon, k, ", ".join(sorted(keys)) or "none"))
    for a in op.get("attrs", []):
        if a["key"] in out:
            continue
        if a.get("default") is None or a.get("required"):
            raise ValueError("layer %r (%s): missing required attribute %r" % (name, canon, a["key"]))
        out[a["key"]] = _default_value(a, out)
    return out


LOSS_NAME = "loss"  # memfit's name for the appended CrossEntropyLoss

TRAINING_LOOP = (
    "optimizer.zero_grad(set_to_none=True); out = model(x); "
    "loss = loss_fn(out, target); loss.backward(); optimizer.step()"
)


# --------------------------------------------------------------------------
# loading / validation

def load_model_json(path_or_obj, registry=None):
    """Reads and checks a memfit-model/1 document; returns a copy whose layers carry their canonical
    kind and every attribute default from memfit's op registry (check_layer)."""
    if isinstance(path_or_obj, dict):
        m = path_or_obj
    else:
        with open(path_or_obj) as f:
            m = json.load(f)
    if m.get("format") != FORMAT:
        raise ValueError("not a %s document (format=%r)" % (FORMAT, m.get("format")))
    m = copy.deepcopy(m)
    seen = set()
    for i, layer in enumerate(m["layers"]):
        layer = m["layers"][i] = check_layer(layer, i, registry)
        kind = layer["kind"]
        name = layer.get("name")
        if not name:
            raise ValueError("layer %d has no name" % i)
        if name in seen:
            raise ValueError("duplicate layer name %r" % name)
        if kind != "input":
            src = layer.get("from")
            if not src:
                raise ValueError("layer %r has no 'from'" % name)
            for s in src:
                if s not in seen and _output_of(s)[0] not in seen:
                    raise ValueError("layer %r: 'from' %r is not an earlier layer" % (name, s))
        if kind == "cross_entropy" and i != len(m["layers"]) - 1:
            raise ValueError("cross_entropy layer %r must be the last layer" % name)
        seen.add(name)
    return m


def _output_of(ref):
    """'layer:K' (output K of a layer with several outputs, e.g. chunk) -> ('layer', K); 'layer' -> ('layer', None)."""
    base, sep, k = ref.rpartition(":")
    if sep and base and k.isdigit():
        return base, int(k)
    return ref, None


def _size_list(v, sep):
    """memfit's 'x'- or ','-separated integer lists ("2x58x28x28", "0,2,1,3"), or a JSON list."""
    if isinstance(v, (list, tuple)):
        return [int(a) for a in v]
    return [int(a) for a in str(v).split(sep) if a.strip() != ""]


def _broadcast(name, *shapes):
    """Per-sample shape of PyTorch's broadcast of the batched operands. Broadcasting aligns the
    batched shapes from the right, so operands of different rank pair the batch with another dim:
    broadcast [B] + shape with a batch B no dim equals, and the batch must come out as dim 0."""
    b = 1 + max([1] + [d for s in shapes for d in s])
    try:
        out = list(torch.broadcast_shapes(*[(b,) + tuple(s) for s in shapes]))
    except RuntimeError:
        out = None
    if out is None or len(out) != 1 + max(len(s) for s in shapes) or out[0] != b:
        raise ValueError("layer %r: per-sample shapes %s do not broadcast with the batch as dim 0" % (name, shapes))
    return out[1:]


def _chunk_sizes(size, chunks):
    # torch.chunk: pieces of ceil(size / chunks); fewer pieces when that overshoots
    step = -(-size // chunks)
    return [min(step, size - i) for i in range(0, size, step)]


def safe_key(name):
    """ModuleDict keys may not contain '.'; keep them readable and unique."""
    return name.replace(".", "__dot__")


def _pair(v, default=None):
    if v is None:
        v = default
    if isinstance(v, int):
        return (v, v)
    return tuple(int(a) for a in v)


# --------------------------------------------------------------------------
# shape inference (per-sample shapes, batch dimension excluded)

def _pool_out(size, k, s, p, d, ceil_mode):
    num = size + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        out = -(-num // s) + 1
        if (out - 1) * s >= size + p:  # last window must start inside input+left pad
            out -= 1
    else:
        out = num // s + 1
    return out


def _dim_index(dim, rank_with_batch):
    """Map a dim of the batched tensor to an index into the per-sample shape."""
    if dim < 0:
        dim += rank_with_batch
    if dim <= 0 or dim >= rank_with_batch:
        raise ValueError("dim %d cannot address a per-sample axis" % dim)
    return dim - 1


def _mean_dims(layer, rank_with_batch):
    """memfit's `mean` dims ("2,3" or a list): dims of the batched tensor, negatives allowed."""
    v = layer["dims"]
    parts = [int(p) for p in str(v).split(",")] if not isinstance(v, list) else [int(p) for p in v]
    dims = []
    for d in parts:
        if d < 0:
            d += rank_with_batch
        if d <= 0 or d >= rank_with_batch or d in dims:
            raise ValueError("mean %r: bad dims %r" % (layer["name"], v))
        dims.append(d)
    return dims


def infer_shapes(m):
    """Return {layer name: per-sample output shape (list)}; cross_entropy -> []."""
    shapes = {}
    for layer in m["layers"]:
        kind, name = layer["kind"], layer["name"]
        ins = [shapes[s] for s in layer.get("from", [])]
        x = ins[0] if ins else None
        full = [1] + list(x) if x is not None else None  # with a batch dim, for dims that count it
        if kind == "input":
            out = list(layer["shape"])
        elif kind == "conv2d":
            c, h, w = x
            k = _pair(layer["kernel"]); s = _pair(layer.get("stride"), 1)
            p = _pair(layer.get("padding"), 0); d = _pair(layer.get("dilation"), 1)
            out = [layer["out_channels"], _pool_out(h, k[0], s[0], p[0], d[0], False),
                   _pool_out(w, k[1], s[1], p[1], d[1], False)]
        elif kind in ("maxpool2d", "avgpool2d"):
            c, h, w = x
            k = _pair(layer["kernel"]); s = _pair(layer.get("stride"), k)
            p = _pair(layer.get("padding"), 0)
            d = _pair(layer.get("dilation"), 1) if kind == "maxpool2d" else (1, 1)
            cm = bool(layer.get("ceil_mode", False))
            out = [c, _pool_out(h, k[0], s[0], p[0], d[0], cm), _pool_out(w, k[1], s[1], p[1], d[1], cm)]
        elif kind == "adaptive_avgpool2d":
            out = [x[0]] + list(_pair(layer["output_size"]))
        elif kind == "flatten":
            out = [int(math.prod(x))]
        elif kind == "linear":
            out = list(x[:-1]) + [layer["out_features"]]
        elif kind in ("add", "mul"):
            out = _broadcast(name, *ins)
            if kind == "add" and layer.get("inplace") and out != list(x):
                raise ValueError("add %r: in place into input 0 %r needs the broadcast shape %r" % (name, x, out))
        elif kind == "chunk":
            di = _dim_index(int(layer.get("dim", 1)), len(x) + 1)
            sizes = _chunk_sizes(x[di], int(layer["chunks"]))
            for k, n in enumerate(sizes):
                o = list(x)
                o[di] = n
                shapes["%s:%d" % (name, k)] = o
            out = shapes["%s:0" % name]
        elif kind == "reshape":
            dims = _size_list(layer["shape"], "x")
            total = int(math.prod(x))
            if dims.count(-1) == 1:
                known = int(math.prod(d for d in dims if d != -1))
                dims = [total // known if d == -1 else d for d in dims]
            if int(math.prod(dims)) != total:
                raise ValueError("reshape %r: %r has %d elements, not %d" % (name, dims, math.prod(dims), total))
            out = dims
        elif kind == "permute":
            dims = _size_list(layer["dims"], ",")
            if sorted(dims) != list(range(len(full))) or dims[0] != 0:
                raise ValueError("permute %r: dims %r for a rank-%d tensor (the batch stays dim 0)" % (name, dims, len(full)))
            out = [full[d] for d in dims][1:]
        elif kind == "transpose":
            d0, d1 = int(layer["dim0"]) % len(full), int(layer["dim1"]) % len(full)
            o = list(full)
            o[d0], o[d1] = o[d1], o[d0]
            out = o[1:]
        elif kind == "slice":
            di = _dim_index(int(layer["dim"]), len(x) + 1)
            o = list(x)
            o[di] = len(range(*slice(_opt_int(layer.get("start")), _opt_int(layer.get("end")),
                                     _opt_int(layer.get("step")) or 1).indices(x[di])))
            out = o
        elif kind == "matmul":
            a, b = [1] + list(ins[0]), [1] + list(ins[1])
            out = list(torch.matmul(torch.empty(a, device="meta"), torch.empty(b, device="meta")).shape)[1:]
        elif kind == "concat":
            di = _dim_index(layer.get("dim", 1), len(x) + 1)
            out = list(x)
            out[di] = sum(t[di] for t in ins)
        elif kind == "mean":
            dims = _mean_dims(layer, len(x) + 1)
            keep = bool(layer.get("keepdim", False))
            out = [1 if (k + 1) in dims else d for k, d in enumerate(x) if keep or (k + 1) not in dims]
        elif kind == "cross_entropy":
            out = []
        else:  # elementwise / normalisation / softmax
            out = list(x)
        shapes[name] = out
    return shapes


def _opt_int(v):
    return None if v is None or v == "" else int(v)


def num_classes(m):
    """Classes of the training loss: dim 1 of the logits fed to CrossEntropyLoss."""
    shapes = infer_shapes(m)
    last = m["layers"][-1]
    logits = shapes[last["from"][0]] if last["kind"] == "cross_entropy" else shapes[last["name"]]
    return int(logits[0])


# --------------------------------------------------------------------------
# leaf modules

class Add(nn.Module):
    """memfit `add`; with inplace=True it is torchvision's `out += identity` (writes into input 0)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, *xs):
        out = xs[0]
        for t in xs[1:]:
            out = out.add_(t) if self.inplace else out + t
        return out


class Mean(nn.Module):
    """memfit `mean`: x.mean(dims, keepdim) (torchvision MobileNetV3/EfficientNet-style global pool)."""

    def __init__(self, dims, keepdim=False):
        super().__init__()
        self.dims = list(dims)
        self.keepdim = keepdim

    def forward(self, x):
        return x.mean(self.dims, keepdim=self.keepdim)

    def extra_repr(self):
        return "dims=%s, keepdim=%s" % (self.dims, self.keepdim)


class Concat(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self):
        return "dim=%d" % self.dim


class Mul(nn.Module):
    """memfit `mul`: a * b with broadcasting (torchvision's squeeze-excitation `scale * input`)."""

    def forward(self, a, b):
        return a * b


class Chunk(nn.Module):
    """memfit `chunk`: torch.chunk(x, chunks, dim); its outputs are the layer's `name:K`."""

    def __init__(self, chunks, dim):
        super().__init__()
        self.chunks, self.dim = chunks, dim

    def forward(self, x):
        return x.chunk(self.chunks, self.dim)


class Reshape(nn.Module):
    """memfit `reshape`: x.reshape(N, *shape) -- a view when the strides allow, else a copy, as
    torchvision's `x.view(...)` after a `.contiguous()` (view itself refuses a non-viewable input)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = list(shape)

    def forward(self, x):
        return x.reshape([x.shape[0]] + self.shape)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = list(dims)

    def forward(self, x):
        return x.permute(self.dims)


class Transpose(nn.Module):
    def __init__(self, dim0, dim1):
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x):
        return torch.transpose(x, self.dim0, self.dim1)


class Contiguous(nn.Module):
    def forward(self, x):
        return x.contiguous()


class Slice(nn.Module):
    def __init__(self, dim, start, end, step):
        super().__init__()
        self.index = (slice(None),) * dim + (slice(start, end, step),)

    def forward(self, x):
        return x[self.index]


class MatMul(nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b)


class StochasticDepth(nn.Module):
    """memfit `stochastic_depth`: torchvision.ops.StochasticDepth (torchvision/ops/stochastic_depth.py,
    BSD-3-Clause), repeated here so the tools need only torch: in train mode `input * noise`, noise
    [N, 1, ...] ("row") or [1, ...] ("batch") of Bernoulli(1 - p) / (1 - p); MulBackward0 saves the noise."""

    def __init__(self, p, mode):
        super().__init__()
        if mode not in ("row", "batch"):
            raise ValueError("stochastic_depth mode must be 'row' or 'batch', not %r" % mode)
        self.p, self.mode = float(p), mode

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self):
        return "p=%s, mode=%s" % (self.p, self.mode)


def _make_layer(layer, in_shapes):
    kind = layer["kind"]
    x = in_shapes[0] if in_shapes else None
    if kind == "conv2d":
        return nn.Conv2d(x[0], layer["out_channels"], _pair(layer["kernel"]),
                         stride=_pair(layer.get("stride"), 1), padding=_pair(layer.get("padding"), 0),
                         dilation=_pair(layer.get("dilation"), 1), groups=int(layer.get("groups", 1)),
                         bias=bool(layer.get("bias", True)))
    if kind == "maxpool2d":
        k = _pair(layer["kernel"])
        return nn.MaxPool2d(k, stride=_pair(layer.get("stride"), k), padding=_pair(layer.get("padding"), 0),
                            dilation=_pair(layer.get("dilation"), 1), ceil_mode=bool(layer.get("ceil_mode", False)))
    if kind == "avgpool2d":
        k = _pair(layer["kernel"])
        return nn.AvgPool2d(k, stride=_pair(layer.get("stride"), k), padding=_pair(layer.get("padding"), 0),
                            ceil_mode=bool(layer.get("ceil_mode", False)),
                            count_include_pad=bool(layer.get("count_include_pad", True)))
    if kind == "adaptive_avgpool2d":
        return nn.AdaptiveAvgPool2d(_pair(layer["output_size"]))
    if kind == "flatten":
        return nn.Flatten(1)
    if kind == "linear":
        return nn.Linear(x[-1], layer["out_features"], bias=bool(layer.get("bias", True)))
    if kind == "relu":
        return nn.ReLU(inplace=bool(layer.get("inplace", False)))
    if kind == "relu6":
        return nn.ReLU6(inplace=bool(layer.get("inplace", False)))
    if kind == "leaky_relu":
        return nn.LeakyReLU(float(layer.get("negative_slope", 0.01)), inplace=bool(layer.get("inplace", False)))
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "tanh":
        return nn.Tanh()
    if kind == "gelu":
        return nn.GELU(approximate=str(layer.get("approximate", "none")))
    if kind == "silu":
        return nn.SiLU(inplace=bool(layer.get("inplace", False)))
    if kind == "batchnorm2d":
        return nn.BatchNorm2d(x[0], eps=float(layer.get("eps", 1e-5)), momentum=float(layer.get("momentum", 0.1)),
                              affine=bool(layer.get("affine", True)),
                              track_running_stats=bool(layer.get("track_running_stats", True)))
    if kind == "dropout":
        return nn.Dropout(float(layer.get("p", 0.5)), inplace=bool(layer.get("inplace", False)))
    if kind == "softmax":
        return nn.Softmax(dim=int(layer.get("dim", 1)))
    if kind == "log_softmax":
        return nn.LogSoftmax(dim=int(layer.get("dim", 1)))
    if kind == "add":
        return Add(bool(layer.get("inplace", False)))
    if kind == "concat":
        return Concat(int(layer.get("dim", 1)))
    if kind == "mean":
        return Mean(_mean_dims(layer, len(x) + 1), bool(layer.get("keepdim", False)))
    if kind == "chunk":
        return Chunk(int(layer["chunks"]), int(layer.get("dim", 1)))
    if kind == "mul":
        return Mul()
    if kind == "hardswish":
        return nn.Hardswish(inplace=bool(layer.get("inplace", False)))
    if kind == "hardsigmoid":
        return nn.Hardsigmoid(inplace=bool(layer.get("inplace", False)))
    if kind == "reshape":
        return Reshape(_size_list(layer["shape"], "x"))
    if kind == "permute":
        return Permute(_size_list(layer["dims"], ","))
    if kind == "transpose":
        return Transpose(int(layer["dim0"]), int(layer["dim1"]))
    if kind == "contiguous":
        return Contiguous()
    if kind == "identity":
        return nn.Identity()
    if kind == "slice":
        return Slice(int(layer["dim"]), _opt_int(layer.get("start")), _opt_int(layer.get("end")),
                     _opt_int(layer.get("step")) or 1)
    if kind == "matmul":
        return MatMul()
    if kind == "layer_norm":
        ln = nn.LayerNorm(int(layer["normalized_shape"]), eps=float(layer.get("eps", 1e-5)),
                          elementwise_affine=bool(layer.get("elementwise_affine", True)))
        if ln.elementwise_affine and not bool(layer.get("bias", True)):
            ln.register_parameter("bias", None)  # nn.LayerNorm(bias=False) of torch >= 2.1; F.layer_norm takes None
        return ln
    if kind == "stochastic_depth":
        return StochasticDepth(float(layer["p"]), str(layer.get("mode", "row")))
    if kind == "cross_entropy":
        return nn.CrossEntropyLoss()
    raise ValueError("unsupported kind %r" % kind)


class MemfitNet(nn.Module):
    """Executes the memfit layers in order.  forward(x) returns the logits fed
    to the loss (the last non-loss layer's output)."""

    def __init__(self, m):
        super().__init__()
        m = load_model_json(m)
        self.model_name = m.get("name", "model")
        shapes = infer_shapes(m)
        self.layers = nn.ModuleDict()
        self.key_to_name = {}
        self.name_to_key = {}
        self.inputs = []         # memfit names of input layers, in order
        self.plan = []           # (memfit name, key, [from names])
        self.loss_name = LOSS_NAME
        self.loss_from = None
        self.output_name = None
        layers = m["layers"]
        for i, layer in enumerate(layers):
            name, kind = layer["name"], layer["kind"]
            if kind == "input":
                self.inputs.append(name)
                continue
            mod = _make_layer(layer, [shapes[s] for s in layer["from"]])
            if kind == "cross_entropy":
                self.loss = mod
                self.loss_name = name
                self.loss_from = layer["from"][0]
                continue
            key = safe_key(name)
            if key in self.layers:
                raise ValueError("layer names %r collide after key mangling" % name)
            self.layers[key] = mod
            self.key_to_name[key] = name
            self.name_to_key[name] = key
            self.plan.append((name, key, list(layer["from"])))
        if self.loss_from is None:
            self.loss = nn.CrossEntropyLoss()
            self.output_name = self.plan[-1][0] if self.plan else self.inputs[-1]
        else:
            self.output_name = self.loss_from
        self.shapes = shapes
        # tools/memfit_export.py records requires_grad=False parameters as a top-level "freeze" list of
        # exact "layer.param" names (no globs); the module starts with those frozen, as the exported one was
        mods = dict(self.memfit_modules())
        self.frozen_at_export = list(m.get("freeze") or [])
        for entry in self.frozen_at_export:
            layer, _, pname = str(entry).rpartition(".")
            prm = dict(mods[layer].named_parameters()).get(pname) if layer in mods else None
            if prm is None:
                raise ValueError("\"freeze\" entry %r names no parameter of this model (layer.param, e.g. "
                                 "\"fc.weight\"); re-export the model or fix the list" % entry)
            prm.requires_grad_(False)
        self._last_use = {}
        for step, (_, _, src) in enumerate(self.plan):
            for s in src:
                self._last_use[s] = step

    def memfit_modules(self):
        """Yield (memfit layer name, leaf module), including the loss."""
        for name, key, _ in self.plan:
            yield name, self.layers[key]
        yield self.loss_name, self.loss

    def forward(self, *xs):
        if len(xs) == 1 and isinstance(xs[0], (tuple, list)):
            xs = tuple(xs[0])
        if len(xs) != len(self.inputs):
            raise ValueError("expected %d inputs, got %d" % (len(self.inputs), len(xs)))
        # Like nn.Sequential / torchvision forwards, a layer's output is dropped after its last
        # consumer (autograd's saved tensors keep what backward needs); keeping every output in
        # `env` would hold activations the real model frees (memfit's plan.cpp models the former).
        env = dict(zip(self.inputs, xs))
        for step, (name, key, src) in enumerate(self.plan):
            out = self.layers[key](*[env[s] for s in src])
            if isinstance(out, tuple):  # several outputs (chunk): `name:K`, and `name` = output 0
                for k, t in enumerate(out):
                    env["%s:%d" % (name, k)] = t
                if name not in self._last_use and name != self.output_name:
                    continue  # only `name:K` is read: holding `name` too would keep output 0's view alive
                out = out[0]
            env[name] = out
            for s in set(src):
                if self._last_use.get(s) == step and s != self.output_name:
                    del env[s]
        return env[self.output_name]


# --------------------------------------------------------------------------
# frozen layers (memfit's --freeze GLOB[,GLOB...] / --train GLOB[,GLOB...])

def _glob_regex(glob):
    # memfit's globs (core/src/graph/graph.cpp glob_match): `*` any characters, dots included,
    # `?` one character; everything else literal
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob) + r"\Z",
                      re.S)


def _split_globs(text):
    if text is None:
        return []
    globs = [g.strip() for g in text.split(",")]
    if not globs or any(not g for g in globs):
        raise ValueError("empty glob in %r" % text)
    return globs


def glob_matches(glob, layer_name, param=None):
    """memfit's selection (graph.cpp `selects`): a glob selects a parameter if it matches its layer's
    name, one of the layer's dotted prefixes (the regions holding it: `layer4` selects
    `layer4.0.conv1`'s parameters, as `layer4.*` does; `layer` does not, prefixes end at a dot), or
    `layer.param` (`fc.bias`)."""
    rx = _glob_regex(glob)
    if rx.match(layer_name) or (param is not None and rx.match(layer_name + "." + param)):
        return True
    parts = layer_name.split(".")
    return any(rx.match(".".join(parts[:k])) for k in range(1, len(parts)))


def frozen_parameters(layer_params, freeze=None, train=None):
    """layer_params: [(memfit layer name, [parameter names])]. Returns the frozen (layer, param)
    pairs: those a --freeze glob selects, or with --train those no --train glob selects. As memfit:
    giving both is an error, and so is a glob that selects no parameter."""
    if freeze is not None and train is not None:
        raise ValueError("both --freeze and --train are given; give one")
    globs = _split_globs(freeze if freeze is not None else train)
    used = [False] * len(globs)
    out = []
    for layer, params in layer_params:
        for p in params:
            hit = False
            for k, g in enumerate(globs):
                if glob_matches(g, layer, p):
                    hit = used[k] = True
            if (hit if freeze is not None else not hit):
                out.append((layer, p))
    for g, u in zip(globs, used):
        if not u:
            raise ValueError("%s %r matches no parameter of the model" % ("--freeze" if freeze is not None else "--train", g))
    return out


def frozen_layers(layer_names, freeze=None, train=None):
    """Layer-level form of frozen_parameters (every layer taken to have one parameter 'weight')."""
    return [l for l, _ in frozen_parameters([(n, ["weight"]) for n in layer_names], freeze, train)]


def apply_freeze(net, freeze=None, train=None):
    """Sets requires_grad=False on the parameters memfit's --freeze / --train select in a MemfitNet
    (frozen_parameters; buffers are untouched and BatchNorm stays in train mode, so its running
    statistics still update). The optimizer is then built over all net.parameters(), as in
    transfer-learning code; PyTorch skips parameters whose .grad is None. Returns a summary recorded
    in the reference documents."""
    mods = dict(net.memfit_modules())
    layer_params = [(n, [pn for pn, _ in mods[n].named_parameters()]) for n, _ in net.memfit_modules()]
    pairs = frozen_parameters(layer_params, freeze, train) if (freeze is not None or train is not None) else []
    frozen_params = 0
    with_params = []
    for layer, pn in pairs:
        prm = dict(mods[layer].named_parameters())[pn]
        prm.requires_grad_(False)
        frozen_params += prm.numel()
        if layer not in with_params:
            with_params.append(layer)
    trainable = [p for p in net.parameters() if p.requires_grad]
    return {
        "freeze": freeze,
        "train": train,
        "frozen_layers": with_params,  # layers with at least one frozen parameter
        "frozen_params": frozen_params,
        "frozen_param_tensors": len(pairs),
        "trainable_params": sum(p.numel() for p in trainable),
        "trainable_param_tensors": len(trainable),
    }


def build_module(model_json):
    return MemfitNet(model_json)


def loss_fn_for(model):
    """The loss callable training_step uses: the model's own cross_entropy layer
    (or the appended CrossEntropyLoss named "loss"); a leaf module so hooks see it."""
    return model.loss


def make_batch(model_json, batch, device="cpu", dtype=torch.float32, seed=0):
    """Random input batch and int64 class targets [batch].  With several input
    layers x is a tuple in layer order."""
    m = load_model_json(model_json)
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)  # generate in place: no host copy
    xs = []
    for layer in m["layers"]:
        if layer["kind"] == "input":
            xs.append(torch.randn([batch] + list(layer["shape"]), generator=g, device=device, dtype=dtype))
    target = torch.randint(0, num_classes(m), (batch,), generator=g, device=device, dtype=torch.int64)
    x = xs[0] if len(xs) == 1 else tuple(xs)
    return x, target


# --------------------------------------------------------------------------
# optimizers and the training step

OPTIMIZERS = ("sgd", "sgd-momentum", "adam", "adamw", "adagrad", "rmsprop")
IMPLS = ("default", "foreach", "fused", "for-loop")


def make_optimizer(name, params, impl="default", lr=None):
    """name in OPTIMIZERS; impl: 'default' (torch decides), 'foreach'
    (foreach=True), 'fused' (fused=True; raises if this torch/optimizer lacks
    it), 'for-loop' (foreach=False)."""
    params = list(params)
    table = {
        "sgd": (torch.optim.SGD, dict(lr=0.01)),
        "sgd-momentum": (torch.optim.SGD, dict(lr=0.01, momentum=0.9)),
        "adam": (torch.optim.Adam, dict(lr=1e-3)),
        "adamw": (torch.optim.AdamW, dict(lr=1e-3)),
        "adagrad": (torch.optim.Adagrad, dict(lr=0.01)),
        "rmsprop": (torch.optim.RMSprop, dict(lr=0.01)),
    }
    if name not in table:
        raise ValueError("unknown optimizer %r (one of %s)" % (name, ", ".join(OPTIMIZERS)))
    cls, kw = table[name]
    if lr is not None:
        kw["lr"] = lr
    sig = inspect.signature(cls.__init__).parameters
    if impl == "foreach":
        kw["foreach"] = True
    elif impl == "for-loop":
        kw["foreach"] = False
    elif impl == "fused":
        if "fused" not in sig:
            raise ValueError("%s has no fused implementation in torch %s" % (cls.__name__, torch.__version__))
        kw["fused"] = True
    elif impl != "default":
        raise ValueError("unknown impl %r (one of %s)" % (impl, ", ".join(IMPLS)))
    return cls(params, **kw)


def optimizer_settings(opt):
    d = opt.defaults
    return {"class": type(opt).__name__,
            "foreach": d.get("foreach"), "fused": d.get("fused"),
            "lr": d.get("lr"), "momentum": d.get("momentum")}


def training_step(model, x, target, optimizer, loss_fn=None, autocast=None):
    """One training iteration, exactly:
        optimizer.zero_grad(set_to_none=True); out = model(x);
        loss = loss_fn(out, target); loss.backward(); optimizer.step()
    `autocast`, if given, is a context manager wrapping forward+loss only
    (torch.autocast(...)); no GradScaler is used.  Returns the loss (detached)."""
    if loss_fn is None:
        loss_fn = loss_fn_for(model)
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    with ctx:
        out = model(x)
        loss = loss_fn(out, target)
    loss.backward()
    optimizer.step()
    return loss.detach()


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def buffer_bytes(model):
    return sum(b.numel() * b.element_size() for b in model.buffers())


def write_json(result, path=None):
    """Writes a reference document the way every tool here does: sorted keys, one-space indent,
    a final newline (stable diffs); to stdout when no path is given."""
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    if path:
        with open(path, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
