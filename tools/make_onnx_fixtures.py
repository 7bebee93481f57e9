#!/usr/bin/python3
"""Writes the small ONNX fixtures of tests/fixtures/onnx/ with torch.onnx.export (CPU, torch 1.13).

Each model is tiny (a few channels) so the files stay far below 200 KB; the C++ tests compare the
imported model with a hand-written .memfit twin (tests/fixtures/onnx/*.memfit). Run from the repo root:
    python3 tools/make_onnx_fixtures.py
BatchNorm must not be folded into the convolution (torch.onnx's eval peephole does that in eval mode),
so models are exported in training mode: BatchNormalization and Dropout then appear as nodes.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "onnx")
TRAIN = torch.onnx.TrainingMode.TRAINING


class TinyCnn(nn.Module):
    """conv-bn-relu, maxpool, a residual add, global average pool, flatten, fc: the CNN twin."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU6()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        y = self.relu2(self.conv2(x))
        x = x + y
        x = torch.flatten(self.gap(x), 1)
        return self.fc(x)


class Mlp(nn.Module):
    """MatMul + Add (a Linear on a 3-d input exports as MatMul, Add), Gelu's Erf pattern, LayerNorm, Flatten."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        # flattened so that the appended nn.CrossEntropyLoss gets [N, classes]
        return self.fc2(self.norm(self.act(self.fc1(x)))).flatten(1)


class ViewFlatten(nn.Module):
    """x.view(x.size(0), -1) with a dynamic batch: torch.onnx writes Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2)
        self.fc = nn.Linear(2 * 7 * 7, 3)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))


class ChannelSplit(nn.Module):
    """x.chunk(2, dim=1) as ShuffleNet splits channels: torch.onnx writes two Slices with computed bounds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.branch = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        return torch.flatten(torch.cat((a, self.branch(b)), 1), 1)


class Unsupported(nn.Module):
    """Two kinds memfit cannot map (Sin, Cos): the importer must list both nodes at once."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.sin(x) + torch.cos(x))


class BigFc(nn.Module):
    """A 10M-parameter (40 MB) initializer: the importer must not read its bytes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2500, 4000)

    def forward(self, x):
        return self.fc(x)


def export(model, x, name, opset=14, **kw):
    path = os.path.join(OUT, name)
    model.train()
    torch.manual_seed(0)
    torch.onnx.export(model, x, path, training=TRAIN, do_constant_folding=False, opset_version=opset,
                      input_names=["input"], output_names=["output"], **kw)
    return path


def corpus():
    """Bad .onnx files for tests/corpus/ (each has a .case file next to it naming the expected error)."""
    import onnx
    from onnx import TensorProto, helper
    out = os.path.join(OUT, "..", "..", "corpus", "onnx")
    os.makedirs(out, exist_ok=True)
    good = open(os.path.join(OUT, "tiny_cnn.onnx"), "rb").read()
    open(os.path.join(out, "truncated.onnx"), "wb").write(good[: len(good) // 2])
    open(os.path.join(out, "not_onnx.onnx"), "wb").write(b"input 50x50x3 layout=hwc\nconv 32 3x3\n")

    def save(name, nodes, inputs, outputs, inits=()):
        g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
        open(os.path.join(out, name), "wb").write(m.SerializeToString())  # no checker: these are meant to be bad

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    save("cycle.onnx", [helper.make_node("Relu", ["z"], ["y"], name="a"), helper.make_node("Add", ["y", "x"], ["z"], name="b")], [x], [y])
    neg = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", -7])
    save("negative_dim.onnx", [helper.make_node("Relu", ["x"], ["y"], name="r")], [neg], [y])
    w = TensorProto(name="fc.weight", data_type=TensorProto.FLOAT, dims=[4, 1 << 50])  # no data: a size bomb
    save("huge_dim.onnx", [helper.make_node("MatMul", ["x", "fc.weight"], ["y"], name="/fc/MatMul")], [x], [y], [w])
    sym = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])
    save("symbolic_dim.onnx", [helper.make_node("Relu", ["x"], ["r"], name="/act/Relu"),
                               helper.make_node("Flatten", ["r"], ["y"], name="/Flatten", axis=1)], [sym], [y])
    save("unsupported.onnx", [helper.make_node("Sin", ["x"], ["s"], name="/Sin"), helper.make_node("Cos", ["s"], ["y"], name="/Cos")], [x], [y])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--corpus":
        corpus()
        return
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    export(TinyCnn(), torch.randn(2, 3, 16, 16), "tiny_cnn.onnx",
           dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    # opset 17: LayerNormalization is one node (below 17 torch.onnx decomposes it into ReduceMean, Sub, Pow ...)
    export(Mlp(), torch.randn(2, 6, 8), "mlp_seq.onnx", opset=17,
           dynamic_axes={"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}})
    export(ViewFlatten(), torch.randn(2, 3, 16, 16), "view_flatten.onnx", dynamic_axes={"input": {0: "batch"}})
    export(ChannelSplit(), torch.randn(2, 3, 8, 8), "channel_split.onnx", dynamic_axes={"input": {0: "batch"}})
    export(Unsupported(), torch.randn(2, 4), "unsupported.onnx")
    # nn.LayerNorm below opset 17: Sub, Pow, Sqrt, Div are all listed (ReduceMean and Add are mapped)
    export(Mlp(), torch.randn(2, 6, 8), "layernorm_opset14.onnx")
    # The same CNN with its weights in an external data file (data_location = EXTERNAL), which is not
    # committed: memfit must import the graph without it.
    import onnx
    m = onnx.load(os.path.join(OUT, "tiny_cnn.onnx"))
    onnx.save_model(m, os.path.join(OUT, "tiny_cnn_external.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="tiny_cnn_external.weights", size_threshold=0)
    os.remove(os.path.join(OUT, "tiny_cnn_external.weights"))
    if len(sys.argv) > 1 and sys.argv[1] == "--big":
        # written to a temporary place by the tests that need it, never committed (40 MB)
        export(BigFc(), torch.randn(2, 2500), sys.argv[2])


if __name__ == "__main__":
    main()
