#!/usr/bin/env python3
"""Parameter counts (and per-module output shapes) of the torchvision models that models/*.memfit
describe, as JSON. memfit's tests compare against tests/reference/torchvision_params.json.

Usage (from the repository root):
  /usr/bin/python3 tools/torchvision_params.py -o tests/reference/torchvision_params.json

For every model: the torchvision constructor (weights=None: random init, nothing downloaded),
parameter count, buffer count and bytes, the final output shape for a batch of 1 (224x224 RGB),
and `module_output_shapes`: for every leaf module (torchvision's module names), the output shape of
each call in a forward pass at batch 1 (a list, since ResNet calls its `relu` module several times).

lenet5 has no torchvision model. It is measured from `TutorialLeNet` below, the `Net` of the PyTorch
"Neural Networks" tutorial (beginner/blitz/neural_networks_tutorial.py), which models/lenet5.memfit
follows; its entry says so in `source`.

Needs torch + torchvision (tested: Debian python3-torch 1.13, python3-torchvision 0.14, CPU).
"""

import argparse
import json
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import memfit_torch as mt  # noqa: E402

# memfit model file stem -> torchvision constructor name
MODELS = {
    "alexnet": "alexnet",
    "vgg16": "vgg16",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "mobilenet_v2": "mobilenet_v2",
}


class TutorialLeNet(nn.Module):
    """The PyTorch tutorial's LeNet-5 (input 1x32x32, 10 classes)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def torchvision_model(tv_name):
    ctor = getattr(torchvision.models, tv_name)
    try:
        return ctor(weights=None)
    except TypeError:  # torchvision < 0.13
        return ctor(pretrained=False)


def reference_model(stem):
    """(module, source description, input shape per sample [C,H,W])."""
    if stem == "lenet5":
        return TutorialLeNet(), "PyTorch tutorial Net (tools/torchvision_params.py TutorialLeNet)", [1, 32, 32]
    tv = MODELS[stem]
    return torchvision_model(tv), "torchvision.models." + tv, [3, 224, 224]


def describe(stem, shapes=True):
    torch.manual_seed(0)
    net, source, in_shape = reference_model(stem)
    net.train()
    entry = {
        "source": source,
        "torchvision_name": MODELS.get(stem),
        "input_shape": in_shape,
        "params": sum(p.numel() for p in net.parameters()),
        "param_tensors": sum(1 for _ in net.parameters()),
        "buffers": sum(1 for _ in net.buffers()),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in net.buffers()),
    }
    if shapes:
        calls = {}
        handles = []
        for name, mod in net.named_modules():
            if name and not list(mod.children()):
                def hook(m, i, o, name=name):
                    calls.setdefault(name, []).append(list(o.shape))
                handles.append(mod.register_forward_hook(hook))
        with torch.no_grad():
            out = net(torch.randn([1] + in_shape))
        for h in handles:
            h.remove()
        entry["output_shape"] = list(out.shape)
        entry["module_output_shapes"] = calls
    return entry


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", help="output JSON (default stdout)")
    ap.add_argument("--no-shapes", action="store_true", help="skip the forward pass (counts only)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = {
        "generated_by": "python3 tools/torchvision_params.py" + (" --no-shapes" if args.no_shapes else ""),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "notes": [
            "params = sum(p.numel() for p in model.parameters()); buffers = BatchNorm running_mean, "
            "running_var (float32) and num_batches_tracked (int64).",
            "output_shape and module_output_shapes: one forward pass at batch 1 in training mode, "
            "under torch.no_grad(); module_output_shapes lists each call of a leaf module.",
            "lenet5 is not a torchvision model: it is the PyTorch tutorial's Net.",
        ],
        "models": {},
    }
    for stem in ["lenet5"] + list(MODELS):
        result["models"][stem] = describe(stem, shapes=not args.no_shapes)
    mt.write_json(result, args.output)


if __name__ == "__main__":
    main()
