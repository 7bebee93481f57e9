#!/usr/bin/env python3
"""Export a PyTorch module to memfit's JSON model form ("memfit-model/1").

Runs where the model runs; the CPU is enough (the model is run twice under torch.no_grad() on a
tiny random batch to learn every tensor's shape; its parameters, buffers and RNG state are put back
afterwards).

Command line:
  python3 tools/memfit_export.py mymodels.py:Net --input 3x224x224 -o net.json
  python3 tools/memfit_export.py torchvision:resnet18 --input 3x224x224 -o resnet18.json
  python3 tools/memfit_export.py mypackage.models:make_net --kwargs '{"num_classes": 10}' --input 3x32x32
SPEC is FILE.py:NAME, a dotted module path:NAME, or torchvision:NAME (torchvision.models.NAME). NAME
is a class or function (called with --kwargs, none by default) or an nn.Module instance.

From Python (a notebook):
  from memfit_export import export
  doc = export(model, (3, 224, 224))        # -> dict, json.dump it or feed it to memfit

How: torch.fx symbolic tracing (torch >= 1.13) with a tracer that stops at the modules memfit has a
kind for (nn.Conv2d, nn.BatchNorm2d, ...) and traces through the others (nn.Sequential, torchvision's
blocks), so a layer is named after its module (`layer1.0.conv1`, memfit's regions come from the dotted
names) and the functional pieces inside a block are named after the block (`layer1.0.add`). Every
node is mapped to a memfit kind; ALL nodes that have none are reported together (ExportError, exit
status 2). What the tracer cannot see it cannot export: data-dependent Python control flow runs once,
at trace time, in train() mode (memfit estimates training).

Why not torch.export / aot graphs: they record ATen ops after functionalization, which turns
`out += identity` and `nn.ReLU(inplace=True)` into out-of-place ops; memfit's estimate depends on
those in-place writes (an in-place ReLU saves no second tensor), and module calls are what name the
layers. fx's symbolic trace keeps both.

Frozen parameters: what requires_grad says at export time. memfit's JSON form has no per-layer field
for it; the exporter writes a top-level "freeze": ["layer.param", ...] list (only when something is
frozen) and, on the command line, prints the equivalent `memfit estimate --freeze ...` globs.

Standard library + torch (torchvision only for torchvision: specs).
"""

import argparse
import contextlib
import copy
import dis
import importlib
import importlib.util
import inspect
import json
import math
import operator
import os
import sys

try:
    import torch
    import torch.fx
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as _e:
    if __name__ != "__main__":
        raise
    print("memfit_export: torch is not importable with %s (%s): run the exporter with the Python your model "
          "runs with (it needs torch >= 1.13)" % (sys.executable, _e), file=sys.stderr)
    sys.exit(2)

FORMAT = "memfit-model/1"
TRACE_BATCHES = (2, 3)  # two batch sizes: a tensor whose per-sample shape differs between them mixes the batch


class ExportError(Exception):
    """Raised with every problem found (not just the first). `problems` is a list of
    (node name, target, reason); str() is the report the command line prints."""

    def __init__(self, problems, model="model"):
        self.problems = list(problems)
        self.model = model
        lines = ["%s: %d operation(s) memfit cannot describe:" % (model, len(self.problems))]
        for node, target, why in self.problems:
            lines.append("  %s (%s): %s" % (node, target, why))
        lines.append("Replace them with supported layers (docs/export.md lists the mapping), or describe the "
                     "model by hand in memfit's text format (docs/model-format.md).")
        super().__init__("\n".join(lines))


class _Unsupported(Exception):
    pass


# --------------------------------------------------------------------------
# tracing


def _proxy_iter(self):
    # torch 1.13's Proxy.__iter__ finds the UNPACK_SEQUENCE that unpacks the proxy by indexing
    # dis.get_instructions() with f_lasti // 2, which is wrong on Python >= 3.11 (inline CACHE
    # entries): `a, b = x.chunk(2, 1)` and `n, c, h, w = x.size()` (torchvision's ShuffleNetV2)
    # then fail. Look the instruction up by its byte offset instead, which is right on every version.
    frame = inspect.currentframe().f_back
    for inst in dis.get_instructions(frame.f_code):
        if inst.offset == frame.f_lasti:
            if inst.opname == "UNPACK_SEQUENCE":
                return (self[i] for i in range(inst.argval))
            break
    return self.tracer.iter(self)


def _proxy_inplace(op):
    # torch.fx's Proxy has no __iadd__, so Python falls back to __add__ and `out += identity` would be
    # recorded as an out-of-place add; the in-place write is what makes torchvision's ResNet save
    # what it saves, so record operator.iadd (executing it is an in-place add, as in the module).
    def method(self, other):
        return self.tracer.create_proxy("call_function", op, (self, other), {})
    return method


@contextlib.contextmanager
def _patched_proxy():
    P = torch.fx.Proxy
    saved = {k: P.__dict__.get(k) for k in ("__iter__", "__iadd__", "__imul__")}
    P.__iter__ = _proxy_iter
    P.__iadd__ = _proxy_inplace(operator.iadd)
    P.__imul__ = _proxy_inplace(operator.imul)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                delattr(P, k)
            else:
                setattr(P, k, v)


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _module_handler(mod):
    """The handler for a module memfit has a kind for: its exact class, or a subclass that keeps the
    base's forward (a subclass with its own forward does something else and is traced through)."""
    for cls in type(mod).__mro__:
        h = _MODULES.get(cls)
        if h is not None:
            return h if (cls is type(mod) or type(mod).forward is cls.forward) else None
    return None


class _Tracer(torch.fx.Tracer):
    """Stops at modules with a memfit kind, and at every other torch.nn leaf module (reported as
    unsupported rather than traced into ATen-level functions); traces through everything else.
    Records the module path each node was created in (node.meta['memfit_scope'])."""

    def __init__(self):
        super().__init__()
        self.scope = [""]

    def is_leaf_module(self, m, qualname):
        if _module_handler(m) is not None:
            return True
        if isinstance(m, _CONTAINERS):
            return False
        return type(m).__module__.startswith("torch.nn")

    def call_module(self, m, forward, args, kwargs):
        qual = self.path_of_module(m)
        if self.is_leaf_module(m, qual):
            return self.create_proxy("call_module", qual, args, kwargs)
        self.scope.append(qual)
        try:
            return forward(*args, **kwargs)
        finally:
            self.scope.pop()

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["memfit_scope"] = self.scope[-1]
        return node


class _TensorInfo:
    __slots__ = ("shape", "dtype", "contiguous")

    def __init__(self, t):
        self.shape = tuple(t.shape)
        self.dtype = t.dtype
        self.contiguous = t.is_contiguous()


class _Recorder(torch.fx.Interpreter):
    """Runs the traced graph once and keeps, per node, a summary of what it produced: _TensorInfo
    for a tensor, a tuple/list of them for several tensors, the value itself otherwise (sizes, ints)."""

    def __init__(self, gm):
        super().__init__(gm)
        self.seen = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.seen[n] = _summary(out)
        return out


def _summary(v):
    if isinstance(v, torch.Tensor):
        return _TensorInfo(v)
    if isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in v):
        return tuple(_summary(t) for t in v)
    return v


@contextlib.contextmanager
def _restored_state(module):
    # The shape runs execute the model in train() mode (the traced graph is the training one): batch
    # norm would update its running statistics and dropout would draw random numbers. Put both back.
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    rng = torch.random.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
        torch.random.set_rng_state(rng)


# --------------------------------------------------------------------------
# conversion


def _is_tensor(info):
    return isinstance(info, _TensorInfo)


class _Converter:
    def __init__(self, root, gm, runs, input_shape, name):
        self.root = root
        self.gm = gm
        self.runs = runs                   # [(batch, {node: summary})]
        self.info = runs[0][1]
        self.batch = runs[0][0]
        self.input_shape = list(input_shape)
        self.name = name
        self.layers = []
        self.names = set()
        self.ref = {}                      # node -> layer name | tuple of names (chunk) | None (a constant)
        self.problems = []
        self.module_layer = {}             # id(module) -> layer name (first call)
        self.param_owner = {}              # id(parameter) -> layer name
        self.freeze = []                   # "layer.param" with requires_grad=False
        self.params = []                   # (layer, param, frozen) in export order
        self.warnings = []

    # -- helpers
    def problem(self, node, why):
        self.problems.append((_node_text(node), _target_text(node, self.root), why))
        # Go on as if the node had produced what it produced when run, so that every other node
        # without a memfit kind is reported too (the user sees them all at once); the document
        # itself is not returned.
        info = self.info.get(node)
        if isinstance(info, tuple):
            self.ref[node] = tuple("?%s:%d" % (node.name, k) for k in range(len(info)))
        elif _is_tensor(info):
            self.ref[node] = "?" + node.name
        else:
            self.ref[node] = None

    def unique(self, base):
        name, k = base, 1
        while name in self.names:
            name = "%s_%d" % (base, k)
            k += 1
        self.names.add(name)
        return name

    def functional_name(self, node, op):
        scope = node.meta.get("memfit_scope", "")
        return self.unique(scope + "." + op if scope else op)

    def tensor_info(self, n):
        return self.info[n]

    def per_sample(self, n):
        return list(self.info[n].shape[1:])

    def emit(self, name, kind, inputs, **attrs):
        layer = {"name": name, "kind": kind}
        if kind != "input":
            layer["from"] = [self.ref_name(i) for i in inputs]
        layer.update(attrs)
        self.layers.append(layer)
        return name

    def ref_name(self, n):
        r = self.ref[n]
        assert isinstance(r, str), (n, r)
        return r

    # -- the walk
    def run(self):
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ExportError([("forward", "placeholder", "the model's forward takes %d tensors; memfit models "
                                "take one input batch" % len(placeholders))], self.name)
        out_node = None
        for node in self.gm.graph.nodes:
            if node.op == "output":
                out_node = node
                continue
            try:
                self.convert(node)
            except _Unsupported as e:
                self.problem(node, str(e))
        self.finish(out_node)
        if self.problems:
            raise ExportError(self.problems, self.name)
        self.check_params()
        doc = {"format": FORMAT, "name": self.name, "layers": self.layers}
        if self.freeze:
            doc["freeze"] = list(self.freeze)
        return doc

    def convert(self, node):
        info = self.info.get(node)
        if node.op == "placeholder":
            if not _is_tensor(info):
                raise _Unsupported("the model's input is not a tensor")
            self.ref[node] = self.emit(self.unique("input"), "input", [], shape=self.input_shape)
            return
        if node.op == "get_attr":
            if isinstance(info, _TensorInfo):
                # a parameter or buffer used as an operand (e.g. ConvNeXt's layer_scale): memfit's
                # layers own their parameters; the exporter does not map a bare parameter operand to memfit's `parameter` kind yet
                raise _Unsupported("a parameter/buffer used directly in forward(); memfit's layers own their "
                                   "parameters (the exporter does not map parameter operands to memfit's `parameter` kind yet)")
            self.ref[node] = None
            return
        if not _has_tensor(info):
            # shape arithmetic (x.size(), n // groups): a constant at this input shape, no layer
            self.ref[node] = None
            return
        self.check_batch(node)
        if node.op == "call_module":
            mod = self.root.get_submodule(node.target)
            handler = _module_handler(mod)
            if handler is None:
                raise _Unsupported("module %s has no memfit kind" % type(mod).__name__)
            handler(self, node, mod)
            return
        if node.op in ("call_function", "call_method"):
            key = node.target if node.op == "call_function" else "." + node.target
            handler = _FUNCTIONS.get(key)
            if handler is None:
                raise _Unsupported("no memfit kind for this %s" % ("function" if node.op == "call_function"
                                                                    else "tensor method"))
            handler(self, node)
            return
        raise _Unsupported("unexpected fx node kind %s" % node.op)

    def check_batch(self, node):
        # a tensor whose per-sample shape depends on the batch size (x.view(-1, C), a mean over dim 0)
        # mixes samples; memfit's layers keep the batch as dim 0
        shapes = []
        for batch, seen in self.runs:
            s = seen.get(node)
            for t in (s if isinstance(s, tuple) else (s,)):
                if _is_tensor(t):
                    if len(t.shape) == 0 or t.shape[0] != batch:
                        raise _Unsupported("its output %s does not keep the batch as dim 0" % (list(t.shape),))
            shapes.append([list(t.shape[1:]) for t in (s if isinstance(s, tuple) else (s,)) if _is_tensor(t)])
        if any(s != shapes[0] for s in shapes[1:]):
            raise _Unsupported("its per-sample output shape changes with the batch size: it mixes samples")

    def finish(self, out_node):
        if out_node is None:
            return
        val = out_node.args[0]
        if not isinstance(val, torch.fx.Node):
            self.problems.append(("output", type(val).__name__,
                                  "the model returns a %s; memfit needs forward() to return one tensor (the "
                                  "logits the loss reads)" % type(val).__name__))
            return
        r = self.ref.get(val)
        if self.problems:
            return  # the layers are incomplete; the output check would only repeat a reported problem
        if not isinstance(r, str):
            self.problems.append(("output", val.name, "the model's output is not one tensor"))
            return
        if not self.layers or self.layers[-1]["name"] != r:
            self.problems.append(("output", val.name, "the returned tensor (%s) is not the last layer computed; "
                                  "memfit takes the last layer as the model's output" % r))

    def check_params(self):
        missing = [(n, p) for n, p in self.root.named_parameters() if id(p) not in self.param_owner]
        if missing:
            self.warnings.append("%d parameter tensor(s) (%d values) are not used by the traced forward and are not in "
                                 "the export (first: %s); memfit counts only the layers it sees"
                                 % (len(missing), sum(p.numel() for _, p in missing), missing[0][0]))

    # -- layers with parameters
    def module_layer_name(self, node, mod):
        """The layer name of a module call: the module's path; a second call of a parameter-free
        module (torchvision's ResNet calls one nn.ReLU twice) gets _1, _2 ...; a second call of a
        module with parameters shares its weights, which memfit cannot express."""
        if id(mod) in self.module_layer:
            if any(True for _ in mod.parameters()):
                raise _Unsupported("module %s with parameters is called a second time (shared weights); memfit gives "
                                   "every layer its own parameters" % node.target)
            return self.unique(node.target)
        name = self.unique(node.target)
        self.module_layer[id(mod)] = name
        for pname, p in mod.named_parameters():
            if id(p) in self.param_owner:
                raise _Unsupported("parameter %s.%s is shared with layer %s; memfit gives every layer its own "
                                   "parameters" % (node.target, pname, self.param_owner[id(p)]))
        for pname, p in mod.named_parameters():
            self.param_owner[id(p)] = name
            self.params.append((name, pname, not p.requires_grad))
            if not p.requires_grad:
                self.freeze.append(name + "." + pname)
        return name


def _has_tensor(info):
    return _is_tensor(info) or (isinstance(info, tuple) and any(_is_tensor(t) for t in info))


def _node_text(node):
    # a module call or a parameter is best named by its dotted path (fx's node name mangles the dots);
    # a functional op by fx's node name (`add_1`), which is also what its memfit layer would be called
    if node.op in ("call_module", "get_attr"):
        return node.target
    return node.name


def _target_text(node, root=None):
    t = node.target
    if node.op == "call_module":
        cls = type(root.get_submodule(t)) if root is not None else None
        if cls is None:
            return t
        mod = cls.__module__
        return ("nn." if mod.startswith("torch.nn.") else mod + ".") + cls.__qualname__
    if node.op == "get_attr":
        try:
            v = root.get_parameter(t) if root is not None else None
            return "nn.Parameter %s" % list(v.shape)
        except AttributeError:
            return "tensor attribute"
    if node.op == "call_method":
        return "Tensor." + t
    if callable(t):
        mod = getattr(t, "__module__", None) or ""
        mod = {"_operator": "operator", "torch._C._nn": "torch.nn.functional", "torch._C._VariableFunctions": "torch",
               "torch.functional": "torch"}.get(mod, mod)
        return (mod + "." if mod else "") + getattr(t, "__name__", repr(t))
    return str(t)


# --------------------------------------------------------------------------
# argument access

def _arg(node, i, key, default=None, cv=None):
    """Argument i (positional) or `key` of a node, with tensors as fx Nodes and constants resolved:
    arguments computed in the graph (an int from x.size()) are looked up in the recorded run."""
    if i is not None and len(node.args) > i:
        v = node.args[i]
    elif key in node.kwargs:
        v = node.kwargs[key]
    else:
        return default
    return _resolve(v, cv)


def _resolve(v, cv):
    if isinstance(v, torch.fx.Node):
        if cv is not None and not _has_tensor(cv.info.get(v)):
            return cv.info.get(v)
        return v
    if isinstance(v, (list, tuple)):
        return type(v)(_resolve(a, cv) for a in v)
    return v


def _tensor_inputs(cv, node, values):
    out = []
    for v in values:
        if not isinstance(v, torch.fx.Node) or not _is_tensor(cv.info.get(v)):
            raise _Unsupported("an operand is not a tensor (%r); memfit's %s takes tensors" % (v, "layer"))
        out.append(v)
    return out


def _dim(d, rank):
    d = int(d)
    return d + rank if d < 0 else d


def _pair(v):
    if isinstance(v, int):
        return [v, v]
    return [int(a) for a in v]


def _single_input(cv, node):
    x = node.args[0] if node.args else node.kwargs.get("input")
    if not isinstance(x, torch.fx.Node) or not _is_tensor(cv.info.get(x)):
        raise _Unsupported("its input is not a tensor")
    return x


# --------------------------------------------------------------------------
# modules

def _m_conv2d(cv, node, m):
    if m.padding_mode != "zeros":
        raise _Unsupported("Conv2d padding_mode=%r (memfit models zero padding)" % m.padding_mode)
    pad = m.padding if isinstance(m.padding, str) else _pair(m.padding)
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "conv2d", [_single_input(cv, node)],
                           out_channels=m.out_channels, kernel=_pair(m.kernel_size), stride=_pair(m.stride),
                           padding=pad, dilation=_pair(m.dilation), groups=m.groups, bias=m.bias is not None)


def _m_bn2d(cv, node, m):
    attrs = dict(eps=float(m.eps), affine=bool(m.affine), track_running_stats=bool(m.track_running_stats))
    if m.momentum is not None:  # None (cumulative average) changes no memory: memfit's default then
        attrs["momentum"] = float(m.momentum)
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "batchnorm2d", [_single_input(cv, node)], **attrs)


def _m_linear(cv, node, m):
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "linear", [_single_input(cv, node)],
                           out_features=m.out_features, bias=m.bias is not None)


def _m_layer_norm(cv, node, m):
    if len(m.normalized_shape) != 1:
        raise _Unsupported("LayerNorm over %d dims (memfit's layer_norm normalizes the last dim)"
                           % len(m.normalized_shape))
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "layer_norm", [_single_input(cv, node)],
                           normalized_shape=int(m.normalized_shape[0]), eps=float(m.eps),
                           elementwise_affine=bool(m.elementwise_affine),
                           bias=getattr(m, "bias", None) is not None or not m.elementwise_affine)


def _m_simple(kind, inplace=False, **fixed):
    def h(cv, node, m):
        attrs = dict(fixed)
        if inplace:
            attrs["inplace"] = bool(getattr(m, "inplace", False))
        cv.ref[node] = cv.emit(cv.module_layer_name(node, m), kind, [_single_input(cv, node)], **attrs)
    return h


def _m_leaky(cv, node, m):
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "leaky_relu", [_single_input(cv, node)],
                           negative_slope=float(m.negative_slope), inplace=bool(m.inplace))


def _m_dropout(cv, node, m):
    if not m.training or m.p == 0:
        cv.ref[node] = cv.ref[_single_input(cv, node)]  # PyTorch returns its input: no memory
        return
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "dropout", [_single_input(cv, node)], p=float(m.p),
                           inplace=bool(m.inplace))


def _m_maxpool(cv, node, m):
    if m.return_indices:
        raise _Unsupported("MaxPool2d(return_indices=True)")
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "maxpool2d", [_single_input(cv, node)],
                           kernel=_pair(m.kernel_size), stride=_pair(m.stride if m.stride is not None else m.kernel_size),
                           padding=_pair(m.padding), dilation=_pair(m.dilation), ceil_mode=bool(m.ceil_mode))


def _m_avgpool(cv, node, m):
    if m.divisor_override is not None:
        raise _Unsupported("AvgPool2d(divisor_override=%r)" % m.divisor_override)
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "avgpool2d", [_single_input(cv, node)],
                           kernel=_pair(m.kernel_size), stride=_pair(m.stride if m.stride is not None else m.kernel_size),
                           padding=_pair(m.padding), ceil_mode=bool(m.ceil_mode),
                           count_include_pad=bool(m.count_include_pad))


def _adaptive(cv, node, name, x, size):
    size = _pair(size) if not isinstance(size, (list, tuple)) else list(size)
    if any(s is None for s in size):
        raise _Unsupported("adaptive pooling with a None output size")
    cv.ref[node] = cv.emit(name, "adaptive_avgpool2d", [x], output_size=[int(s) for s in size])


def _m_adaptive(cv, node, m):
    _adaptive(cv, node, cv.module_layer_name(node, m), _single_input(cv, node), m.output_size)


def _m_flatten(cv, node, m):
    _reshape_like(cv, node, _single_input(cv, node), cv.module_layer_name(node, m))


def _m_softmax(kind):
    def h(cv, node, m):
        if m.dim is None:
            raise _Unsupported("%s without dim= (PyTorch's implicit dim choice)" % type(m).__name__)
        x = _single_input(cv, node)
        cv.ref[node] = cv.emit(cv.module_layer_name(node, m), kind, [x], dim=_dim(m.dim, len(cv.info[x].shape)))
    return h


def _m_identity(cv, node, m):
    cv.ref[node] = cv.ref[_single_input(cv, node)]


def _m_stochastic_depth(cv, node, m):
    x = _single_input(cv, node)
    if not m.training or m.p == 0:
        cv.ref[node] = cv.ref[x]  # torchvision's stochastic_depth returns its input then
        return
    cv.ref[node] = cv.emit(cv.module_layer_name(node, m), "stochastic_depth", [x], p=float(m.p), mode=m.mode)


_MODULES = {
    nn.Conv2d: _m_conv2d,
    nn.BatchNorm2d: _m_bn2d,
    nn.Linear: _m_linear,
    nn.LayerNorm: _m_layer_norm,
    nn.ReLU: _m_simple("relu", inplace=True),
    nn.ReLU6: _m_simple("relu6", inplace=True),
    nn.LeakyReLU: _m_leaky,
    nn.Sigmoid: _m_simple("sigmoid"),
    nn.Tanh: _m_simple("tanh"),
    nn.GELU: lambda cv, node, m: _m_simple("gelu", approximate=getattr(m, "approximate", "none"))(cv, node, m),
    nn.SiLU: _m_simple("silu", inplace=True),
    nn.Hardswish: _m_simple("hardswish", inplace=True),
    nn.Hardsigmoid: _m_simple("hardsigmoid", inplace=True),
    nn.Dropout: _m_dropout,
    nn.MaxPool2d: _m_maxpool,
    nn.AvgPool2d: _m_avgpool,
    nn.AdaptiveAvgPool2d: _m_adaptive,
    nn.Flatten: _m_flatten,
    nn.Softmax: _m_softmax("softmax"),
    nn.LogSoftmax: _m_softmax("log_softmax"),
    nn.Identity: _m_identity,
}

try:  # torchvision >= 0.12
    from torchvision.ops import StochasticDepth as _TVStochasticDepth
    _MODULES[_TVStochasticDepth] = _m_stochastic_depth
except Exception:  # noqa: BLE001 -- torchvision absent or too old: its modules are traced through
    _TVStochasticDepth = None


# --------------------------------------------------------------------------
# functions and tensor methods

def _reshape_like(cv, node, x, name=None):
    """view / reshape / flatten: memfit's flatten when the result is [N, everything] of a contiguous
    tensor (a view, no memory), nothing when the shape does not change, else reshape with the
    per-sample shape (memfit decides view or copy as PyTorch's reshape does)."""
    src = cv.info[x]
    out = cv.per_sample(node)
    ins = list(src.shape[1:])
    if out == ins:
        cv.ref[node] = cv.ref[x]
        return
    name = name or cv.functional_name(node, _op_name(node))
    if len(out) == 1 and len(ins) > 1 and src.contiguous:
        cv.ref[node] = cv.emit(name, "flatten", [x])
    else:
        cv.ref[node] = cv.emit(name, "reshape", [x], shape="x".join(str(d) for d in out))


def _op_name(node):
    t = node.target if node.op == "call_method" else getattr(node.target, "__name__", "op")
    t = t.rstrip("_")
    return {"iadd": "add", "imul": "mul", "cat": "cat", "adaptive_avg_pool2d": "avgpool"}.get(t, t)


def _f_view(cv, node):
    _reshape_like(cv, node, _single_input(cv, node))


def _f_flatten(cv, node):
    x = _single_input(cv, node)
    start = _arg(node, 1, "start_dim", 0, cv)  # end_dim other than -1 gives a reshape (by the result's shape)
    rank = len(cv.info[x].shape)
    if _dim(start, rank) == 0:
        raise _Unsupported("flatten from dim 0 merges the batch")
    _reshape_like(cv, node, x)


def _f_activation(kind, inplace_pos=None, always_inplace=False, with_inplace=True):
    def h(cv, node):
        x = _single_input(cv, node)
        attrs = {}
        if with_inplace:
            ip = always_inplace or (inplace_pos is not None and bool(_arg(node, inplace_pos, "inplace", False, cv)))
            if node.op == "call_method" and node.target.endswith("_"):
                ip = True
            attrs["inplace"] = bool(ip)
        cv.ref[node] = cv.emit(cv.functional_name(node, kind), kind, [x], **attrs)
    return h


def _f_gelu(cv, node):
    x = _single_input(cv, node)
    cv.ref[node] = cv.emit(cv.functional_name(node, "gelu"), "gelu", [x],
                           approximate=str(_arg(node, 1, "approximate", "none", cv)))


def _f_hardtanh(cv, node):
    lo, hi = _arg(node, 1, "min_val", -1.0, cv), _arg(node, 2, "max_val", 1.0, cv)
    if (float(lo), float(hi)) != (0.0, 6.0):
        raise _Unsupported("hardtanh(%s, %s) (memfit has relu6 = hardtanh(0, 6) only)" % (lo, hi))
    _f_activation("relu6", inplace_pos=3)(cv, node)


def _f_leaky(cv, node):
    x = _single_input(cv, node)
    slope = _arg(node, 1, "negative_slope", 0.01, cv)
    ip = bool(_arg(node, 2, "inplace", False, cv)) or node.target is F.leaky_relu_
    cv.ref[node] = cv.emit(cv.functional_name(node, "leaky_relu"), "leaky_relu", [x], negative_slope=float(slope),
                           inplace=ip)


def _f_dropout(cv, node):
    x = _single_input(cv, node)
    p = float(_arg(node, 1, "p", 0.5, cv))
    training = bool(_arg(node, 2, "training", True, cv))
    if not training or p == 0:
        cv.ref[node] = cv.ref[x]
        return
    cv.ref[node] = cv.emit(cv.functional_name(node, "dropout"), "dropout", [x], p=p,
                           inplace=bool(_arg(node, 3, "inplace", False, cv)))


def _f_softmax(kind):
    def h(cv, node):
        x = _single_input(cv, node)
        dim = _arg(node, 1, "dim", None, cv)
        if dim is None:
            raise _Unsupported("%s without dim=" % kind)
        if _arg(node, 3 if node.op == "call_function" else 2, "dtype", None, cv) is not None:
            raise _Unsupported("%s with dtype= (a cast memfit does not model)" % kind)
        cv.ref[node] = cv.emit(cv.functional_name(node, kind), kind, [x], dim=_dim(dim, len(cv.info[x].shape)))
    return h


def _f_binary(kind, inplace):
    def h(cv, node):
        a = _arg(node, 0, "input", None, cv)
        b = _arg(node, 1, "other", None, cv)
        if node.op == "call_function" and node.target in (torch.add,) and _arg(node, 2, "alpha", 1, cv) != 1:
            raise _Unsupported("add with alpha != 1")
        ins = []
        for v in (a, b):
            if not isinstance(v, torch.fx.Node) or not _is_tensor(cv.info.get(v)):
                raise _Unsupported("%s with a constant operand (%r); memfit's %s takes two tensors" % (kind, v, kind))
            ins.append(v)
        attrs = {}
        if inplace or (node.op == "call_method" and node.target.endswith("_")):
            if kind != "add":
                raise _Unsupported("in-place %s (memfit's %s is out of place)" % (kind, kind))
            attrs["inplace"] = True
        elif kind == "add":
            attrs["inplace"] = False
        cv.ref[node] = cv.emit(cv.functional_name(node, kind), kind, ins, **attrs)
    return h


def _f_cat(cv, node):
    ts = _arg(node, 0, "tensors", None, cv)
    dim = _arg(node, 1, "dim", 0, cv)
    if not isinstance(ts, (list, tuple)):
        raise _Unsupported("cat of a non-list")
    ins = _tensor_inputs(cv, node, ts)
    rank = len(cv.info[ins[0]].shape)
    cv.ref[node] = cv.emit(cv.functional_name(node, "cat"), "concat", ins, dim=_dim(dim, rank))


def _f_chunk(cv, node):
    x = _single_input(cv, node)
    chunks = int(_arg(node, 1, "chunks", None, cv))
    dim = _dim(_arg(node, 2, "dim", 0, cv), len(cv.info[x].shape))
    name = cv.functional_name(node, "chunk")
    cv.emit(name, "chunk", [x], chunks=chunks, dim=dim)
    n_out = len(cv.info[node])
    cv.ref[node] = tuple("%s:%d" % (name, k) for k in range(n_out))


def _f_getitem(cv, node):
    src = node.args[0]
    r = cv.ref.get(src)
    idx = _resolve(node.args[1], cv)
    if isinstance(r, tuple) and isinstance(idx, int):
        cv.ref[node] = r[idx]
        return
    raise _Unsupported("indexing a tensor (x[...]); memfit has no kind for it")


def _f_mean(cv, node):
    x = _single_input(cv, node)
    dims = _arg(node, 1, "dim", None, cv)
    if dims is None:
        raise _Unsupported("a mean over all dims (it mixes the batch)")
    if isinstance(dims, int):
        dims = [dims]
    rank = len(cv.info[x].shape)
    keep = bool(_arg(node, 2, "keepdim", False, cv))
    if _arg(node, 3, "dtype", None, cv) is not None:
        raise _Unsupported("mean with dtype=")
    cv.ref[node] = cv.emit(cv.functional_name(node, "mean"), "mean", [x],
                           dims=",".join(str(_dim(d, rank)) for d in dims), keepdim=keep)


def _f_adaptive(cv, node):
    x = _single_input(cv, node)
    _adaptive(cv, node, cv.functional_name(node, "avgpool"), x, _arg(node, 1, "output_size", None, cv))


def _f_maxpool(cv, node):
    x = _single_input(cv, node)
    k = _pair(_arg(node, 1, "kernel_size", None, cv))
    s = _arg(node, 2, "stride", None, cv)
    s = k if s is None or s == [] or s == () else _pair(s)
    if _arg(node, 6, "return_indices", False, cv):
        raise _Unsupported("max_pool2d(return_indices=True)")
    cv.ref[node] = cv.emit(cv.functional_name(node, "maxpool"), "maxpool2d", [x], kernel=k, stride=s,
                           padding=_pair(_arg(node, 3, "padding", 0, cv)), dilation=_pair(_arg(node, 4, "dilation", 1, cv)),
                           ceil_mode=bool(_arg(node, 5, "ceil_mode", False, cv)))


def _f_avgpool(cv, node):
    x = _single_input(cv, node)
    k = _pair(_arg(node, 1, "kernel_size", None, cv))
    s = _arg(node, 2, "stride", None, cv)
    s = k if s is None or s == [] or s == () else _pair(s)
    if _arg(node, 6, "divisor_override", None, cv) is not None:
        raise _Unsupported("avg_pool2d(divisor_override=...)")
    cv.ref[node] = cv.emit(cv.functional_name(node, "avgpool"), "avgpool2d", [x], kernel=k, stride=s,
                           padding=_pair(_arg(node, 3, "padding", 0, cv)), ceil_mode=bool(_arg(node, 4, "ceil_mode", False, cv)),
                           count_include_pad=bool(_arg(node, 5, "count_include_pad", True, cv)))


def _f_transpose(cv, node):
    x = _single_input(cv, node)
    rank = len(cv.info[x].shape)
    d0, d1 = _dim(_arg(node, 1, "dim0", None, cv), rank), _dim(_arg(node, 2, "dim1", None, cv), rank)
    cv.ref[node] = cv.emit(cv.functional_name(node, "transpose"), "transpose", [x], dim0=d0, dim1=d1)


def _f_permute(cv, node):
    x = _single_input(cv, node)
    rank = len(cv.info[x].shape)
    if node.op == "call_method":
        dims = [_resolve(a, cv) for a in node.args[1:]]
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = list(dims[0])
        if not dims:
            dims = _arg(node, None, "dims", None, cv)
    else:
        dims = _arg(node, 1, "dims", None, cv)
    dims = [_dim(d, rank) for d in dims]
    cv.ref[node] = cv.emit(cv.functional_name(node, "permute"), "permute", [x], dims=",".join(map(str, dims)))


def _f_contiguous(cv, node):
    x = _single_input(cv, node)
    if cv.info[x].contiguous:
        cv.ref[node] = cv.ref[x]  # .contiguous() of a contiguous tensor returns it
        return
    cv.ref[node] = cv.emit(cv.functional_name(node, "contiguous"), "contiguous", [x])


def _f_matmul(cv, node):
    a, b = _arg(node, 0, "input", None, cv), _arg(node, 1, "other", None, cv)
    ins = _tensor_inputs(cv, node, [a, b])
    cv.ref[node] = cv.emit(cv.functional_name(node, "matmul"), "matmul", ins)


def _f_stochastic_depth(cv, node):
    x = _single_input(cv, node)
    p = float(_arg(node, 1, "p", None, cv))
    mode = _arg(node, 2, "mode", None, cv)
    if not bool(_arg(node, 3, "training", True, cv)) or p == 0:
        cv.ref[node] = cv.ref[x]
        return
    cv.ref[node] = cv.emit(cv.functional_name(node, "stochastic_depth"), "stochastic_depth", [x], p=p, mode=mode)


def _f_identity(cv, node):
    cv.ref[node] = cv.ref[_single_input(cv, node)]


_FUNCTIONS = {
    # element-wise activations; in-place where the call says so
    F.relu: _f_activation("relu", inplace_pos=1), torch.relu: _f_activation("relu"),
    ".relu": _f_activation("relu"), torch.relu_: _f_activation("relu", always_inplace=True),
    F.relu_: _f_activation("relu", always_inplace=True), ".relu_": _f_activation("relu"),
    F.relu6: _f_activation("relu6", inplace_pos=1), F.hardtanh: _f_hardtanh,
    F.leaky_relu: _f_leaky,
    F.silu: _f_activation("silu", inplace_pos=1),
    F.hardswish: _f_activation("hardswish", inplace_pos=1),
    F.hardsigmoid: _f_activation("hardsigmoid", inplace_pos=1),
    torch.sigmoid: _f_activation("sigmoid", with_inplace=False), ".sigmoid": _f_activation("sigmoid", with_inplace=False),
    torch.tanh: _f_activation("tanh", with_inplace=False), ".tanh": _f_activation("tanh", with_inplace=False),
    F.gelu: lambda cv, node: _f_gelu(cv, node),
    F.dropout: _f_dropout,
    F.softmax: _f_softmax("softmax"), torch.softmax: _f_softmax("softmax"), ".softmax": _f_softmax("softmax"),
    F.log_softmax: _f_softmax("log_softmax"), torch.log_softmax: _f_softmax("log_softmax"),
    ".log_softmax": _f_softmax("log_softmax"),
    # arithmetic
    operator.add: _f_binary("add", False), torch.add: _f_binary("add", False), ".add": _f_binary("add", False),
    operator.iadd: _f_binary("add", True), ".add_": _f_binary("add", True),
    operator.mul: _f_binary("mul", False), torch.mul: _f_binary("mul", False), ".mul": _f_binary("mul", False),
    operator.imul: _f_binary("mul", True), ".mul_": _f_binary("mul", True),
    operator.matmul: _f_matmul, torch.matmul: _f_matmul, ".matmul": _f_matmul, torch.bmm: _f_matmul, ".bmm": _f_matmul,
    # shapes
    torch.flatten: _f_flatten, ".flatten": _f_flatten,
    ".view": _f_view, ".reshape": _f_view, torch.reshape: _f_view,
    torch.transpose: _f_transpose, ".transpose": _f_transpose,
    torch.permute: _f_permute, ".permute": _f_permute,
    ".contiguous": _f_contiguous,
    torch.cat: _f_cat, torch.concat: _f_cat,
    torch.chunk: _f_chunk, ".chunk": _f_chunk,
    operator.getitem: _f_getitem,
    torch.mean: _f_mean, ".mean": _f_mean,
    # pooling
    F.adaptive_avg_pool2d: _f_adaptive,
    F.max_pool2d: _f_maxpool, torch.max_pool2d: _f_maxpool,
    F.avg_pool2d: _f_avgpool,
}
if hasattr(torch, "concat"):
    _FUNCTIONS[torch.concat] = _f_cat
try:
    from torchvision.ops import stochastic_depth as _tv_sd
    _FUNCTIONS[_tv_sd] = _f_stochastic_depth
except Exception:  # noqa: BLE001 -- no torchvision: nothing to map
    pass


# --------------------------------------------------------------------------
# the entry points

def to_json(doc):
    """The document as text: one layer per line (diffable, and readable next to the model's code)."""
    head = {k: v for k, v in doc.items() if k != "layers"}
    lines = ["{"] + ["  %s: %s," % (json.dumps(k), json.dumps(v)) for k, v in head.items()]
    lines.append('  "layers": [')
    lines += ["    %s%s" % (json.dumps(l), "," if i + 1 < len(doc["layers"]) else "") for i, l in enumerate(doc["layers"])]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def parse_shape(text):
    """'3x224x224' -> (3, 224, 224); the per-sample shape, no batch."""
    try:
        dims = tuple(int(p) for p in str(text).lower().split("x"))
    except ValueError:
        raise ValueError("bad input shape %r: write the per-sample shape as CxHxW, e.g. 3x224x224 (no batch)" % text)
    if not dims or any(d <= 0 for d in dims):
        raise ValueError("bad input shape %r: every dimension must be a positive integer" % text)
    return dims


def export(module, input_shape, name=None, return_info=False):
    """Traces `module` (an nn.Module) with a random input of per-sample shape `input_shape`
    ((C, H, W), a list, or '3x224x224') and returns memfit's JSON model form as a dict. Raises
    ExportError listing every operation memfit cannot describe."""
    if not isinstance(module, nn.Module):
        raise TypeError("export() needs an nn.Module, got %s" % type(module).__name__)
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(int(d) for d in input_shape)
    name = name or type(module).__name__.lower()
    was_training = {m: m.training for m in module.modules()}
    module.train()  # memfit estimates training: trace the train-mode forward (dropout, batch statistics)
    try:
        tracer = _Tracer()
        with _patched_proxy():
            try:
                graph = tracer.trace(module)
            except Exception as e:  # noqa: BLE001 -- fx raises many types; say which model and why
                raise ExportError([("forward", type(module).__name__, "torch.fx cannot trace it: %s: %s"
                                    % (type(e).__name__, e))], name) from e
        gm = torch.fx.GraphModule(tracer.root, graph)
        for n_new, n_old in zip(gm.graph.nodes, graph.nodes):
            n_new.meta.update(n_old.meta)
        runs = []
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        with _restored_state(module), torch.no_grad():
            for batch in TRACE_BATCHES:
                rec = _Recorder(gm)
                x = torch.randn((batch,) + shape, dtype=dtype, device=device)
                try:
                    rec.run(x)
                except Exception as e:  # noqa: BLE001
                    raise ExportError([("forward", type(module).__name__, "running the traced model on a %s input "
                                        "failed: %s: %s" % ("x".join(map(str, (batch,) + shape)), type(e).__name__, e))],
                                      name) from e
                runs.append((batch, rec.seen))
        cv = _Converter(module, gm, runs, shape, name)
        doc = cv.run()
    finally:
        for m, t in was_training.items():
            m.training = t
    if not return_info:
        return doc
    return doc, {"warnings": cv.warnings, "freeze_globs": freeze_globs(cv.params), "params": cv.params}


def freeze_globs(params):
    """The shortest --freeze glob list that selects exactly the frozen parameters: params is
    [(layer, param, frozen)]. A region or layer all of whose parameters are frozen is written once
    (`layer1`: memfit's globs select a layer's parameters through any dotted prefix of its name),
    the rest as layer.param."""
    def under(pre, layer):
        return layer == pre or layer.startswith(pre + ".")
    prefixes = []
    for layer, _, _ in params:
        parts = layer.split(".")
        for k in range(1, len(parts) + 1):
            pre = ".".join(parts[:k])
            if pre not in prefixes:
                prefixes.append(pre)
    out, covered = [], set()
    for pre in prefixes:  # a parent comes before its children, so the widest region wins
        if any(under(c, pre) for c in out):
            continue
        sel = [(l, p, fz) for l, p, fz in params if under(pre, l)]
        # a prefix that is not a whole dotted component of other names (`layer` vs `layer1`) is not a
        # region in memfit's sense; under() already compares whole components
        if sel and all(fz for _, _, fz in sel):
            out.append(pre)
            covered.update((l, p) for l, p, _ in sel)
    out += ["%s.%s" % (l, p) for l, p, fz in params if fz and (l, p) not in covered]
    return out


def _load_spec(spec, kwargs):
    if ":" not in spec:
        raise ValueError("bad model %r: write FILE.py:NAME, package.module:NAME or torchvision:NAME" % spec)
    where, _, attr = spec.rpartition(":")
    if where == "torchvision":
        import torchvision.models as tvm
        if not hasattr(tvm, attr):
            raise ValueError("torchvision.models has no %r (torchvision %s)" % (attr, getattr(
                __import__("torchvision"), "__version__", "?")))
        obj = getattr(tvm, attr)
    elif where.endswith(".py"):
        if not os.path.exists(where):
            raise ValueError("model file %s does not exist" % where)
        sys.path.insert(0, os.path.dirname(os.path.abspath(where)))
        spec_ = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(where))[0], where)
        mod = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(mod)
        if not hasattr(mod, attr):
            raise ValueError("%s defines no %r" % (where, attr))
        obj = getattr(mod, attr)
    else:
        mod = importlib.import_module(where)
        if not hasattr(mod, attr):
            raise ValueError("module %s has no %r" % (where, attr))
        obj = getattr(mod, attr)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ValueError("%s is a module instance; --kwargs needs a class or function" % spec)
        return obj
    if not callable(obj):
        raise ValueError("%s is neither an nn.Module, a class nor a function" % spec)
    m = obj(**kwargs)
    if not isinstance(m, nn.Module):
        raise ValueError("%s(...) returned a %s, not an nn.Module" % (spec, type(m).__name__))
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="FILE.py:NAME, package.module:NAME or torchvision:NAME")
    ap.add_argument("--input", required=True, help="per-sample input shape without the batch, e.g. 3x224x224")
    ap.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for the class/function")
    ap.add_argument("--name", help="the model's name in the JSON (default: NAME)")
    ap.add_argument("-o", "--output", help="write the JSON here (default: standard output)")
    args = ap.parse_args(argv)
    try:
        kwargs = json.loads(args.kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("--kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
        shape = parse_shape(args.input)
        model = _load_spec(args.model, kwargs)
        name = args.name or args.model.rpartition(":")[2]
        doc, info = export(model, shape, name=name, return_info=True)
    except ExportError as e:
        print("memfit_export: " + str(e), file=sys.stderr)
        return 2
    except (ValueError, ImportError, OSError, json.JSONDecodeError) as e:
        print("memfit_export: %s: %s" % (args.model, e), file=sys.stderr)
        return 2
    for w in info["warnings"]:
        print("memfit_export: warning: %s" % w, file=sys.stderr)
    text = to_json(doc)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if doc.get("freeze"):
        print("memfit_export: %d parameter tensor(s) have requires_grad=False; the JSON lists them in \"freeze\". "
              "memfit options that freeze the same ones: --freeze '%s'"
              % (len(doc["freeze"]), ",".join(info["freeze_globs"])), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
