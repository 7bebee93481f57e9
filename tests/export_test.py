#!/usr/bin/env python3
"""Fast tests of tools/memfit_export.py on tiny modules (a few seconds on a CPU).

  python3 tests/export_test.py [--memfit build/memfit]

With --memfit the exported documents are also fed to memfit (`memfit estimate --json`) to check that
memfit reads them and derives the regions and parameter counts PyTorch has. Exit status 77 (CTest's
SKIP_RETURN_CODE) when torch is not importable: the exporter runs where the user's model runs, and a
machine without torch cannot run it.

Expected values here come from PyTorch itself (parameter counts, requires_grad flags, module names) or
are written by hand from the module definitions below; none are taken from the exporter's output.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover -- the skip path
    print("export_test: skipped: torch is not importable with %s (%s); the exporter needs torch" % (sys.executable, e))
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import memfit_export  # noqa: E402
from memfit_export import ExportError, export  # noqa: E402

MEMFIT = None


def layers_by_name(doc):
    return {l["name"]: l for l in doc["layers"]}


def memfit_estimate(doc, *args):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(memfit_export.to_json(doc))
        path = f.name
    try:
        r = subprocess.run([MEMFIT, "estimate", path, "--json"] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        raise AssertionError("memfit estimate failed (%d): %s" % (r.returncode, r.stderr))
    return json.loads(r.stdout)


class Block(nn.Module):
    """A torchvision-style residual block: one ReLU module called twice, `out += identity`."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        x = x.mean([2, 3])
        return self.fc(x)


class Shuffle(nn.Module):
    """ShuffleNetV2's pieces: chunk, concat, channel shuffle (view / transpose / contiguous / view),
    squeeze-excitation's broadcasting multiply, a plain (out-of-place) add, torch.flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = self.conv(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, self.branch(b)), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        x = x.view(n, -1, h, w)
        x = torch.sigmoid(self.pool(x)) * x
        x = x + F.relu(x)
        return self.fc(torch.flatten(x, 1))


class TestNamesAndRegions(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.net = Net()
        self.doc = export(self.net, (3, 8, 8), name="net")
        self.L = layers_by_name(self.doc)

    def test_module_paths_are_layer_names(self):
        # every leaf module with parameters appears under its named_modules() path
        leaf_with_params = [n for n, m in self.net.named_modules()
                            if not list(m.children()) and list(m.parameters(recurse=False))]
        for n in leaf_with_params:
            self.assertIn(n, self.L)
        self.assertEqual(self.L["layer1.0.conv1"]["kind"], "conv2d")
        self.assertEqual(self.L["stem.1"]["kind"], "batchnorm2d")
        self.assertEqual(self.doc["layers"][0], {"name": "input", "kind": "input", "shape": [3, 8, 8]})

    def test_functional_ops_are_named_after_their_block(self):
        self.assertEqual(self.L["layer1.0.add"]["kind"], "add")
        self.assertEqual(self.L["layer1.0.add"]["from"], ["layer1.0.bn2", "stem.2"])  # the block's input
        self.assertEqual(self.L["mean"]["kind"], "mean")
        self.assertEqual(self.L["mean"]["dims"], "2,3")

    def test_a_module_called_twice_gets_a_second_name(self):
        self.assertEqual(self.L["layer1.0.relu"]["from"], ["layer1.0.bn1"])
        self.assertEqual(self.L["layer1.0.relu_1"]["from"], ["layer1.0.add"])

    def test_order_and_from_are_consistent(self):
        seen = set()
        for l in self.doc["layers"]:
            for s in l.get("from", []):
                self.assertIn(s.split(":")[0], seen, l["name"])
            seen.add(l["name"])
        self.assertEqual(self.doc["layers"][-1]["name"], "fc")

    def test_memfit_reads_it(self):
        if not MEMFIT:
            self.skipTest("no --memfit")
        est = memfit_estimate(self.doc, "--batch", "2")
        self.assertEqual(est["totals"]["params"], sum(p.numel() for p in self.net.parameters()))
        self.assertEqual(est["totals"]["buffer_bytes"],
                         sum(b.numel() * b.element_size() for b in self.net.buffers()))
        region = {l["name"]: l["region"] for l in est["layers"]}
        self.assertEqual(region["layer1.0.conv1"], "layer1.0")  # regions from the dotted names
        self.assertEqual(region["layer1.1.add"], "layer1.1")


class TestInplace(unittest.TestCase):
    def test_inplace_flags(self):
        L = layers_by_name(export(Net(), (3, 8, 8)))
        self.assertIs(L["stem.2"]["inplace"], True)             # nn.ReLU(inplace=True)
        self.assertIs(L["layer1.0.add"]["inplace"], True)       # out += identity (operator.iadd)

    def test_out_of_place_and_functional(self):
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 1)
                self.act = nn.ReLU()

            def forward(self, x):
                x = self.conv(x)
                y = F.relu(x, inplace=True)
                z = self.act(y) + y
                z = torch.add(z, y)
                return torch.flatten(F.adaptive_avg_pool2d(z, 1), 1)

        L = layers_by_name(export(M(), (3, 4, 4)))
        self.assertIs(L["relu"]["inplace"], True)
        self.assertIs(L["act"]["inplace"], False)
        self.assertIs(L["add"]["inplace"], False)
        self.assertIs(L["add_1"]["inplace"], False)
        self.assertEqual(L["flatten"]["kind"], "flatten")


class TestShapes(unittest.TestCase):
    def test_shuffle_pieces(self):
        torch.manual_seed(0)
        net = Shuffle()
        doc = export(net, (3, 4, 4))
        kinds = [l["kind"] for l in doc["layers"]]
        self.assertEqual(kinds, ["input", "conv2d", "chunk", "conv2d", "relu", "concat", "reshape", "transpose",
                                 "contiguous", "reshape", "adaptive_avgpool2d", "sigmoid", "mul", "relu", "add",
                                 "flatten", "linear"])
        L = layers_by_name(doc)
        self.assertEqual(L["chunk"]["chunks"], 2)
        self.assertEqual(L["branch.0"]["from"], ["chunk:1"])
        self.assertEqual(L["cat"]["from"], ["chunk:0", "branch.1"])
        self.assertEqual(L["view"]["shape"], "2x4x4x4")          # n, 2, c // 2, h, w without n
        self.assertEqual((L["transpose"]["dim0"], L["transpose"]["dim1"]), (1, 2))
        self.assertEqual(L["view_1"]["shape"], "8x4x4")
        self.assertEqual(L["mul"]["from"], ["sigmoid", "view_1"])
        if MEMFIT:
            est = memfit_estimate(doc, "--batch", "2")
            self.assertEqual(est["totals"]["params"], sum(p.numel() for p in net.parameters()))
            shapes = {l["name"]: l["output_shape"] for l in est["layers"]}
            self.assertEqual(shapes["view"], [2, 2, 4, 4, 4])  # what torch's view produced at batch 2
            self.assertEqual(shapes["mul"], [2, 8, 4, 4])

    def test_view_to_features_is_flatten(self):
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.fc = nn.Linear(16, 2)

            def forward(self, x):
                x = self.conv(x)
                return self.fc(x.view(x.size(0), -1))

        L = layers_by_name(export(M(), (3, 4, 4)))
        self.assertEqual(L["view"]["kind"], "flatten")

    def test_eval_branches_are_not_taken(self):
        # the export traces train mode (memfit estimates training): dropout is a layer even when the
        # module was in eval() mode, which the export leaves as it was
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Dropout(0.3), nn.Linear(6, 2)).eval()
        L = layers_by_name(export(net, (3, 2, 2)))
        self.assertEqual(L["2"]["kind"], "dropout")
        self.assertAlmostEqual(L["2"]["p"], 0.3)
        self.assertFalse(any(m.training for m in net.modules()))

    def test_state_is_restored(self):
        torch.manual_seed(0)
        net = Net()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        rng = torch.random.get_rng_state()
        export(net, (3, 8, 8))
        for k, v in net.state_dict().items():
            self.assertTrue(torch.equal(v, before[k]), k)  # running stats, num_batches_tracked
        self.assertTrue(torch.equal(torch.random.get_rng_state(), rng))


class TestFrozen(unittest.TestCase):
    def test_requires_grad_is_recorded(self):
        net = Net()
        for p in net.stem.parameters():
            p.requires_grad_(False)
        net.layer1[1].conv2.weight.requires_grad_(False)
        doc, info = export(net, (3, 8, 8), return_info=True)
        # every parameter with requires_grad=False, as memfit layer.param names, in module order
        self.assertEqual(doc["freeze"], ["stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias",
                                         "layer1.1.conv2.weight"])
        self.assertEqual(info["freeze_globs"], ["stem", "layer1.1.conv2"])
        if MEMFIT:
            est = memfit_estimate(doc, "--batch", "2", "--freeze", ",".join(info["freeze_globs"]))
            frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
            self.assertEqual(est["totals"]["frozen_params"], frozen)

    def test_no_freeze_key_when_everything_trains(self):
        self.assertNotIn("freeze", export(Net(), (3, 8, 8)))

    def test_partly_frozen_layer(self):
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Linear(4, 2))
        net[1].bias.requires_grad_(False)
        doc, info = export(net, (3, 2, 2), return_info=True)
        self.assertEqual(doc["freeze"], ["1.bias"])
        self.assertEqual(info["freeze_globs"], ["1.bias"])


class TestFrozenTorchvision(unittest.TestCase):
    def test_resnet18_fine_tuning_matches_the_recorded_reference(self):
        # torchvision's resnet18 with only layer4 and fc trainable, as a fine-tuning script sets it up:
        # the export's freeze list, passed to memfit as globs, gives the saved bytes torch 1.13 measured
        # for that setting (tests/reference/cpu_saved_frozen.json, batch 8)
        if not MEMFIT:
            self.skipTest("no --memfit")
        try:
            import torchvision
        except ImportError:
            self.skipTest("no torchvision")
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
        for n, p in net.named_parameters():
            p.requires_grad_(n.startswith(("layer4.", "fc.")))
        doc, info = export(net, (3, 224, 224), name="resnet18", return_info=True)
        self.assertEqual(info["freeze_globs"], ["conv1", "bn1", "layer1", "layer2", "layer3"])
        with open(os.path.join(ROOT, "tests", "reference", "cpu_saved_frozen.json")) as f:
            ref = [m for m in json.load(f)["models"] if m["name"] == "resnet18" and m["frozen"]["train"] == "layer4,fc"][0]
        b8 = [b for b in ref["batches"] if b["batch"] == 8][0]
        est = memfit_estimate(doc, "--batch", "8", "--pytorch", "1.13", "--freeze", ",".join(info["freeze_globs"]))
        self.assertEqual(est["totals"]["saved_activation_bytes"], b8["saved_total_bytes"] - b8["saved_input_bytes"])
        self.assertEqual(est["totals"]["frozen_params"], sum(p.numel() for p in net.parameters() if not p.requires_grad))


class TestUnsupported(unittest.TestCase):
    def test_all_problems_are_reported_together(self):
        class Bad(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.up = nn.Upsample(scale_factor=2)
                self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))

            def forward(self, x):
                x = torch.sin(self.conv(x))
                x = self.up(x) * 0.5
                x = x * self.scale
                return x.mean([2, 3])

        with self.assertRaises(ExportError) as cm:
            export(Bad(), (3, 4, 4), name="bad")
        got = {(n, t) for n, t, _ in cm.exception.problems}
        self.assertEqual(got, {("sin", "torch.sin"), ("up", "nn.Upsample"), ("mul", "operator.mul"),
                               ("scale", "nn.Parameter [1, 4, 1, 1]")})
        text = str(cm.exception)
        self.assertIn("bad: 4 operation(s)", text)
        self.assertIn("docs/export.md", text)  # says what to do

    def test_supported_ops_after_a_problem_are_not_reported(self):
        class M(nn.Module):
            def forward(self, x):
                return torch.relu(torch.sin(x)).mean([2, 3])

        with self.assertRaises(ExportError) as cm:
            export(M(), (3, 2, 2))
        self.assertEqual([p[0] for p in cm.exception.problems], ["sin"])

    def test_shared_weights(self):
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 3, 1)

            def forward(self, x):
                return self.conv(self.conv(x)).mean([2, 3])

        with self.assertRaises(ExportError) as cm:
            export(M(), (3, 2, 2))
        self.assertIn("called a second time", cm.exception.problems[0][2])

    def test_batch_mixing_and_tuple_outputs(self):
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(3, 3)

            def forward(self, x):
                y = self.fc(x.view(-1, 3))   # folds the batch into the rows
                return y, x

        with self.assertRaises(ExportError) as cm:
            export(M(), (3, 2, 2))
        reasons = " | ".join(p[2] for p in cm.exception.problems)
        self.assertIn("batch", reasons)
        self.assertIn("returns a tuple", reasons)

    def test_command_line(self):
        code = ("import torch, torch.nn as nn\n"
                "class Net(nn.Module):\n"
                "    def __init__(self):\n"
                "        super().__init__()\n"
                "        self.conv = nn.Conv2d(3, 4, 3)\n"
                "        self.conv.weight.requires_grad_(False)\n"
                "    def forward(self, x):\n"
                "        return self.conv(x).mean([2, 3])\n"
                "class Bad(nn.Module):\n"
                "    def forward(self, x):\n"
                "        return torch.cos(torch.sin(x)).abs().mean([2, 3])\n")
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "mymodels.py")
            with open(src, "w") as f:
                f.write(code)
            out = os.path.join(d, "net.json")
            tool = os.path.join(ROOT, "tools", "memfit_export.py")
            r = subprocess.run([sys.executable, tool, src + ":Net", "--input", "3x5x5", "-o", out],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out) as f:
                doc = json.load(f)
            self.assertEqual(doc["freeze"], ["conv.weight"])
            self.assertIn("--freeze 'conv.weight'", r.stderr)
            r = subprocess.run([sys.executable, tool, src + ":Bad", "--input", "3x5x5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(r.returncode, 2)
            self.assertEqual(r.stdout, "")
            # every op without a memfit kind, by node and target, in one report
            self.assertIn("Bad: 3 operation(s)", r.stderr)
            for line in ("sin (torch.sin)", "cos (torch.cos)", "(Tensor.abs)"):
                self.assertIn(line, r.stderr)
            r = subprocess.run([sys.executable, tool, src + ":Nope", "--input", "3x5x5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(r.returncode, 2)
            self.assertIn("defines no 'Nope'", r.stderr)
            r = subprocess.run([sys.executable, tool, src + ":Net", "--input", "3x224"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(r.returncode, 2)  # the conv needs 3 dims: the run fails, said with the shape
            self.assertIn("2x3x224", r.stderr)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--memfit" in args:
        i = args.index("--memfit")
        MEMFIT = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    unittest.main(argv=[sys.argv[0]] + args, verbosity=1)
