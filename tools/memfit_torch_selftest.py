#!/usr/bin/env python3
"""Self-test of memfit_torch.py's op-registry checks and --freeze/--train globs (a few seconds, CPU).

    /usr/bin/python3 tools/memfit_torch_selftest.py
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memfit_torch as mt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raises(fn, text):
    try:
        fn()
    except ValueError as e:
        assert text in str(e), "expected %r in %r" % (text, str(e))
        return
    raise AssertionError("no ValueError (%s)" % text)


def model(*layers):
    return {"format": mt.FORMAT, "layers": [{"name": "input", "kind": "input", "shape": [3, 8, 8]}] + list(layers)}


def main():
    reg = mt.load_ops()
    for k in mt.TORCH_BUILDERS:
        assert reg.canonical(k) == k, "torch builder for %r, a kind memfit's registry does not list" % k

    # registry: aliases resolve, defaults fill in, clear errors
    m = mt.load_model_json(model({"name": "c", "kind": "conv", "from": ["input"], "out_channels": 4, "kernel": 3},
                                 {"name": "p", "kind": "maxpool", "from": ["c"], "kernel": [2, 2]}))
    c, p = m["layers"][1], m["layers"][2]
    assert c["kind"] == "conv2d" and c["stride"] == [1, 1] and c["padding"] == [0, 0] and c["bias"] is True, c
    assert p["stride"] == [2, 2] and p["ceil_mode"] is False, p  # stride defaults to the kernel
    raises(lambda: mt.load_model_json(model({"name": "x", "kind": "groupnorm", "from": ["input"]})), "unknown kind")
    raises(lambda: mt.load_model_json(model({"name": "x", "kind": "linear", "from": ["input"]})),
           "missing required attribute 'out_features'")
    raises(lambda: mt.load_model_json(model({"name": "x", "kind": "relu", "from": ["input"], "slope": 1})),
           "unknown attribute 'slope'")
    raises(lambda: mt.load_model_json(model({"name": "x", "kind": "add", "from": ["input"]})), "1 inputs")
    doc = json.load(open(reg.path))
    doc["ops"].append({"kind": "groupnorm", "aliases": [], "attrs": [], "positional": [], "min_inputs": 1,
                       "max_inputs": 1, "family": "norm", "summary": "", "source": ""})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
    extra = mt.load_ops(f.name)
    raises(lambda: mt.load_model_json(model({"name": "x", "kind": "groupnorm", "from": ["input"]}), extra),
           "no torch builder")
    os.unlink(f.name)
    # a one-input concat (torch.cat([x], 1)) is accepted where the registry allows it
    if reg.ops["concat"].get("min_inputs", 2) <= 1:
        net = mt.build_module(model({"name": "cat", "kind": "concat", "from": ["input"], "dim": 1}))
        x, _ = mt.make_batch(model({"name": "cat", "kind": "concat", "from": ["input"], "dim": 1}), 2)
        y = net(x)
        assert y.shape == x.shape and y.data_ptr() != x.data_ptr()  # a copy, as torch.cat makes

    # mean (x.mean([2, 3])): shape inference and the module agree
    mm = model({"name": "m", "kind": "mean", "from": ["input"], "dims": "2,3"},
               {"name": "fc", "kind": "linear", "from": ["m"], "out_features": 2})
    if reg.canonical("mean") == "mean":
        net = mt.build_module(mm)
        x, _ = mt.make_batch(mm, 2)
        assert list(net(x).shape) == [2, 2] and mt.infer_shapes(mt.load_model_json(mm))["m"] == [3]
        mk = model({"name": "m", "kind": "mean", "from": ["input"], "dims": "-1", "keepdim": True})
        assert mt.infer_shapes(mt.load_model_json(mk))["m"] == [3, 8, 1]

    # the N-d kinds (tools/memfit_export.py emits them): ShuffleNetV2's chunk / channel shuffle,
    # squeeze-excitation's broadcasting mul, a transformer-style layer_norm + matmul; the shapes
    # infer_shapes predicts are the ones the modules produce (written by hand from the layers below)
    nd = model({"name": "ch", "kind": "chunk", "from": ["input"], "chunks": 2, "dim": 1},
               {"name": "c", "kind": "conv2d", "from": ["ch:1"], "out_channels": 2, "kernel": 1},
               {"name": "cat", "kind": "concat", "from": ["ch:0", "c"], "dim": 1},
               {"name": "v", "kind": "reshape", "from": ["cat"], "shape": "2x2x8x8"},
               {"name": "t", "kind": "transpose", "from": ["v"], "dim0": 1, "dim1": 2},
               {"name": "k", "kind": "contiguous", "from": ["t"]},
               {"name": "v2", "kind": "reshape", "from": ["k"], "shape": "4x-1"},
               {"name": "p", "kind": "permute", "from": ["v2"], "dims": "0,2,1"},
               {"name": "ln", "kind": "layer_norm", "from": ["p"], "normalized_shape": 4},
               {"name": "g", "kind": "hardswish", "from": ["ln"], "inplace": True},
               {"name": "mm", "kind": "matmul", "from": ["g", "v2"]},
               {"name": "s", "kind": "slice", "from": ["mm"], "dim": 2, "start": 1, "end": 60, "step": 2},
               {"name": "m", "kind": "mean", "from": ["s"], "dims": "2"},
               {"name": "sq", "kind": "reshape", "from": ["m"], "shape": "64x1"},
               {"name": "sig", "kind": "hardsigmoid", "from": ["sq"]},
               {"name": "mul", "kind": "mul", "from": ["sig", "mm"]},
               {"name": "sd", "kind": "stochastic_depth", "from": ["mul"], "p": 0.5, "mode": "row"},
               {"name": "fc", "kind": "linear", "from": ["sd"], "out_features": 4})
    shapes = mt.infer_shapes(mt.load_model_json(nd))
    # torch.chunk(3 channels, 2) gives 2 + 1
    assert shapes["ch:0"] == [2, 8, 8] and shapes["ch:1"] == [1, 8, 8] and shapes["cat"] == [4, 8, 8], shapes
    assert shapes["t"] == [2, 2, 8, 8] and shapes["v2"] == [4, 64] and shapes["p"] == [64, 4], shapes
    assert shapes["mm"] == [64, 64], shapes
    assert shapes["s"] == [64, 30] and shapes["mul"] == [64, 64] and shapes["fc"] == [64, 4], shapes
    net = mt.build_module(nd)
    outs = {}
    for name, mod in net.memfit_modules():
        mod.register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o))
    x, _ = mt.make_batch(nd, 2)
    net(x)
    for name, o in outs.items():
        if name in shapes and not isinstance(o, tuple):
            assert list(o.shape[1:]) == shapes[name], (name, list(o.shape), shapes[name])
    assert not outs["t"].is_contiguous() and outs["k"].is_contiguous()

    # an exported model's "freeze" list (exact layer.param names) is applied by build_module
    fz = model({"name": "c", "kind": "conv2d", "from": ["input"], "out_channels": 2, "kernel": 1},
               {"name": "fc", "kind": "linear", "from": ["c"], "out_features": 2})
    fz["freeze"] = ["c.bias"]
    net = mt.build_module(fz)
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == ["layers.c.bias"]
    fz["freeze"] = ["c.gamma"]
    raises(lambda: mt.build_module(fz), "names no parameter")

    # globs (memfit's graph.cpp): `*` crosses dots, `?` one character; a glob naming a dotted prefix
    # selects the region under it; `layer.param` selects one parameter; both options or an unused glob: error
    names = ["conv1", "layer4", "layer4.0.conv1", "layer4.1.bn2", "layer40.x", "fc", "fc2"]
    assert mt.frozen_layers(names, freeze="layer4") == ["layer4", "layer4.0.conv1", "layer4.1.bn2"]
    # `layer4.*` also matches `layer4.weight` (layer.param) of a layer named layer4
    assert mt.frozen_layers(names, freeze="layer4.*") == ["layer4", "layer4.0.conv1", "layer4.1.bn2"]
    assert mt.frozen_layers(names, freeze="*bn*") == ["layer4.1.bn2"]
    assert mt.frozen_layers(names, freeze="layer4.0") == ["layer4.0.conv1"]
    assert mt.frozen_layers(names, freeze="fc?") == ["fc2"]
    assert mt.frozen_layers(names, train="layer4,fc") == ["conv1", "layer40.x", "fc2"]
    lp = [("conv1", ["weight"]), ("fc", ["weight", "bias"])]
    assert mt.frozen_parameters(lp, freeze="fc.bias") == [("fc", "bias")]
    assert mt.frozen_parameters(lp, train="fc.weight") == [("conv1", "weight"), ("fc", "bias")]
    raises(lambda: mt.frozen_layers(names, freeze="nope"), "matches no parameter")
    raises(lambda: mt.frozen_layers(names, freeze="fc,,conv1"), "empty glob")
    raises(lambda: mt.frozen_layers(names, freeze="fc", train="conv1"), "both --freeze and --train")

    # apply_freeze on resnet18: only fc trainable; BN buffers untouched, train mode kept
    net = mt.build_module(os.path.join(ROOT, "tests/reference/models-json/resnet18.json"))
    net.train()
    s = mt.apply_freeze(net, train="fc")
    assert s["trainable_params"] == 512 * 1000 + 1000 and s["trainable_param_tensors"] == 2, s
    assert all(not p.requires_grad for n, p in net.named_parameters() if not n.startswith("layers.fc."))
    assert net.training and all(b.requires_grad is False for b in net.buffers())
    print("memfit_torch self-test: ok (registry %s)" % os.path.relpath(reg.path, ROOT))


if __name__ == "__main__":
    main()
