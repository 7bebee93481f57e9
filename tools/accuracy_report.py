#!/usr/bin/env python3
"""Writes docs/accuracy.md: memfit's estimates against every committed PyTorch reference.

    /usr/bin/python3 tools/accuracy_report.py --memfit build/memfit -o docs/accuracy.md

Inputs: tests/reference/cpu_saved_models.json (what autograd saved, torch on the CPU),
tests/reference/cpu_live_bytes.json (live bytes, CPU profiler), the frozen-layer and DenseNet references
(cpu_saved_frozen.json, cpu_live_frozen.json, cpu_saved_densenet.json, cpu_live_densenet.json) and
tests/reference/gpu/*.json (tools/gpu_reference.py on a CUDA GPU; none may exist yet). Where this memfit
cannot estimate a row yet (no --freeze/--train, a one-input concat) its column shows "n/a (...)".
Every number in the output is either read from those files or printed by `memfit ... --json`.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def memfit(binary, model, *args, optional=False):
    out = subprocess.run([binary, "estimate", model, "--json", *args], capture_output=True, text=True)
    if out.returncode not in (0, 1):
        if optional:  # a row this memfit cannot estimate yet: say so in the table
            return None
        raise SystemExit("memfit failed on %s %s: %s" % (model, args, out.stderr))
    return json.loads(out.stdout)


def _measured_saved(b):
    """Unique non-parameter, non-input storages of one cpu_reference.py batch."""
    measured = 0
    seen = set()
    for layer in b["layers"]:
        for s in layer["saved"]:
            if s["is_param"] or s["is_input"] or s["storage_id"] in seen:
                continue
            seen.add(s["storage_id"])
            measured += s["bytes"]
    return measured


def _frozen_args(frozen):
    args = []
    if frozen.get("freeze") is not None:
        args += ["--freeze", frozen["freeze"]]
    if frozen.get("train") is not None:
        args += ["--train", frozen["train"]]
    return args


def frozen_section(binary, lines):
    saved = json.load(open(os.path.join(ROOT, "tests/reference/cpu_saved_frozen.json")))
    live = json.load(open(os.path.join(ROOT, "tests/reference/cpu_live_frozen.json")))
    lines += ["## Frozen layers (transfer learning): PyTorch on the CPU (torch %s)" % saved["torch_version"], "",
              "`requires_grad=False` on every parameter outside the `--train` globs (BatchNorm stays in train mode; "
              "the optimizer is built over all parameters). Saved for backward as above (`tools/cpu_reference.py "
              "--train ...`) against `memfit estimate --pytorch 1.13 --train ...`; the CPU dropout term is in the "
              "last column (a dropout whose input needs no grad saves nothing). `tests/frozen_reference_test.cpp` "
              "checks every row per layer.", "",
              "| model | trained | trainable params | batch | measured (B) | memfit (B) | difference (B) | explained by dropout (B) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in saved["models"]:
        fz = m["frozen"]
        for b in m["batches"]:
            measured = _measured_saved(b)
            est = memfit(binary, m["name"], "--batch", str(b["batch"]), "--pytorch", "1.13", *_frozen_args(fz),
                         optional=True)
            drop = 0
            if est is not None:
                kinds = {l["name"]: l["kind"] for l in est["layers"]}
                drop = sum(3 * _numel(l["saved"][0]["shape"]) for l in b["layers"]
                           if kinds.get(l["layer"]) == "dropout" and len(l["saved"]) == 1)
                mine = est["totals"]["saved_activation_bytes"]
                cols = (format(mine, ","), format(mine - measured, ","), format(-drop, ","))
            else:
                cols = ("n/a (no --train yet)", "", "")
            lines.append("| %s | %s | %s | %d | %s | %s | %s | %s |" % (
                m["name"], fz.get("train") or "all but " + str(fz.get("freeze")), format(fz["trainable_params"], ","),
                b["batch"], format(measured, ","), *cols))
    lines += ["", "Live tensor bytes (`tools/cpu_live_reference.py --train ...`, CPU profiler, as in the section "
              "above; peak of each iteration relative to the start of iteration 1; `.grad` and optimizer state after "
              "iteration 3). memfit's side of these rows is computed by `tests/frozen_reference_test.cpp` (iteration "
              "starts to the byte, peaks within the live-bytes tolerance; `tools/live_bytes_estimate.cpp` has no "
              "`--train` yet).", "",
              "| model | trained | batch | optimizer | .grad (B) | optimizer state (B) | iteration | start (B) | peak (B) | peak at |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for m in live["models"]:
        fz = m["frozen"]
        for r in m["runs"]:
            for it in r["iterations"]:
                top = it["peak_top"].replace("autograd::engine::evaluate_function: ", "")
                lines.append("| %s | %s | %d | %s %s | %s | %s | %d | %s | %s | %s (%s) |" % (
                    m["name"], fz.get("train") or "all but " + str(fz.get("freeze")), m["batch"], r["optimizer"],
                    r["optimizer_impl"], format(r["grad_bytes_after"], ","), format(r["optimizer_state_bytes_after"], ","),
                    it["iteration"], format(it["relative_start_bytes"], ","), format(it["relative_peak_bytes"], ","),
                    top, it["peak_phase"]))
    lines.append("")


def densenet_section(binary, estimator, lines):
    saved = json.load(open(os.path.join(ROOT, "tests/reference/cpu_saved_densenet.json")))
    live = json.load(open(os.path.join(ROOT, "tests/reference/cpu_live_densenet.json")))
    src = "tests/reference/fixtures/densenet_mini.memfit"
    lines += ["## A small DenseNet (`%s`): PyTorch on the CPU (torch %s)" % (src, saved["torch_version"]), "",
              "Dense layers that `torch.cat` every earlier output of their block (the first one a one-input "
              "`torch.cat([x], 1)`), transitions with a 1x1 conv and an average pool; batch 4. Saved for backward "
              "as above, against `memfit estimate --pytorch 1.13`; live bytes from the CPU profiler against memfit's "
              "plan as raw bytes (`tools/live_bytes_estimate.cpp`). `tests/densenet_reference_test.cpp` checks both, "
              "the live bytes around every concat's backward too.", "",
              "| batch | measured saved (B) | memfit (B) | difference (B) |", "|---:|---:|---:|---:|"]
    m = saved["models"][0]
    for b in m["batches"]:
        measured = _measured_saved(b)
        est = memfit(binary, os.path.join(ROOT, src), "--batch", str(b["batch"]), "--pytorch", "1.13", optional=True)
        if est is None:
            lines.append("| %d | %s | n/a (memfit rejects the model) | |" % (b["batch"], format(measured, ",")))
        else:
            mine = est["totals"]["saved_activation_bytes"]
            lines.append("| %d | %s | %s | %s |" % (b["batch"], format(measured, ","), format(mine, ","),
                                                   format(mine - measured, ",")))
    lines += ["", "| batch | optimizer | iteration | measured peak (B) | memfit (B) | measured - memfit (B) | measured peak at |",
              "|---:|---|---:|---:|---:|---:|---|"]
    lm = live["models"][0]
    est = {}
    why = "n/a (%s not built)" % os.path.relpath(estimator, ROOT) if estimator else "n/a"
    if estimator and os.path.exists(estimator):
        specs = ["%s:%d:%s:%s" % (src, lm["batch"], r["optimizer"], r["optimizer_impl"]) for r in lm["runs"]]
        out = subprocess.run([estimator] + specs, capture_output=True, text=True, cwd=ROOT)
        if out.returncode == 0:
            est = {e["spec"]: e for e in json.loads(out.stdout)}
        else:
            why = "n/a (memfit rejects the model)"
    for r in lm["runs"]:
        e = est.get("%s:%d:%s:%s" % (src, lm["batch"], r["optimizer"], r["optimizer_impl"]))
        for it in r["iterations"]:
            top = it["peak_top"].replace("autograd::engine::evaluate_function: ", "")
            meas = it["relative_peak_bytes"]
            if e is not None:
                mine = e["iterations"][it["iteration"] - 1]["peak_bytes"]
                cols = (format(mine, ","), format(meas - mine, ","))
            else:
                cols = (why, "")
            lines.append("| %d | %s %s | %d | %s | %s | %s | %s |" % (
                lm["batch"], r["optimizer"], r["optimizer_impl"], it["iteration"], format(meas, ","), *cols, top))
    r = lm["runs"][0]
    cats = [names for names in (l["name"] for l in json.load(open(os.path.join(
        ROOT, "tests/reference/fixtures/densenet_mini.json")))["layers"] if l["kind"] == "concat")][::-1]
    nodes = r.get("backward_nodes", [])
    rows = [(nodes[i], nodes[i + 1][1]) for i in range(len(nodes) - 1) if nodes[i][0] == "CatBackward0"]
    if rows and len(rows) == len(cats):
        lines += ["", "Measured live bytes around each concat's backward (`%s %s`, iteration %d, relative to the start "
                  "of iteration 1; torch runs them in this order). The rise inside the node is the gradients summed "
                  "into inputs that already hold one (a narrow of a later concat's gradient): new tensors of the "
                  "inputs' own sizes. memfit's side: `tests/densenet_reference_test.cpp`." % (
                      r["optimizer"], r["optimizer_impl"], len(r["iterations"])), "",
                  "| concat (backward order) | inputs | start (B) | max inside (B) | rise (B) | next node starts at (B) |",
                  "|---|---:|---:|---:|---:|---:|"]
        n_in = {l["name"]: len(l.get("from", [])) for l in json.load(open(os.path.join(
            ROOT, "tests/reference/fixtures/densenet_mini.json")))["layers"]}
        for name, (nd, nxt) in zip(cats, rows):
            lines.append("| %s | %d | %s | %s | %s | %s |" % (name, n_in[name], format(nd[1], ","), format(nd[2], ","),
                                                          format(nd[2] - nd[1], ","), format(nxt, ",")))
    lines.append("")


def mib(b):
    return "%.2f" % (b / 2**20)


def pct(est, meas):
    return "%+.1f%%" % (100.0 * (est - meas) / meas) if meas else "n/a"


def cpu_section(binary, lines):
    doc = json.load(open(os.path.join(ROOT, "tests/reference/cpu_saved_models.json")))
    lines += ["## Saved for backward: memfit vs PyTorch autograd (CPU, torch %s)" % doc.get("torch_version", "?"), "",
              "Measured: unique storages packed by `saved_tensors_hooks` during forward + loss, without parameters, "
              "the input batch and the targets (`tools/cpu_reference.py`), against `memfit estimate --pytorch 1.13` (the "
              "reference's version; PyTorch 2's global average pool no longer saves its input). memfit models CUDA; the only expected "
              "difference is dropout (CPU saves a float32 noise tensor, 4 B/element; CUDA's fused kernel a bool mask, "
              "1 B/element), shown in the last column. `tests/reference_test.cpp` checks every row per layer.", "",
              "| model | batch | measured (B) | memfit (B) | difference (B) | explained by dropout (B) |",
              "|---|---:|---:|---:|---:|---:|"]
    n_exact = n_rows = 0
    for m in doc["models"]:
        for b in m["batches"]:
            measured = 0  # unique non-parameter, non-input storages
            seen = set()
            for layer in b["layers"]:
                for s in layer["saved"]:
                    if s["is_param"] or s["is_input"] or s["storage_id"] in seen:
                        continue
                    seen.add(s["storage_id"])
                    measured += s["bytes"]
            # the reference is torch 1.13: memfit follows its rules where 2.x differs (--pytorch 1.13)
            est = memfit(binary, m["name"], "--batch", str(b["batch"]), "--pytorch", "1.13")
            mine = est["totals"]["saved_activation_bytes"]
            dropout = sum(3 * _numel(l["output_shape"]) for l in est["layers"] if l["kind"] == "dropout")
            diff = mine - measured
            n_rows += 1
            n_exact += diff == -dropout
            lines.append("| %s | %d | %s | %s | %s | %s |" % (m["name"], b["batch"], format(measured, ","),
                                                           format(mine, ","), format(diff, ","), format(-dropout, ",")))
    lines += ["", "%d of %d rows: the difference is exactly the dropout term." % (n_exact, n_rows), ""]


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def live_section(lines):
    doc = json.load(open(os.path.join(ROOT, "tests/reference/cpu_live_bytes.json")))
    lines += ["## Peak live tensor bytes through training: memfit vs the CPU profiler (torch %s)" % doc["torch_version"], "",
              "Measured: `torch.profiler` with `profile_memory=True` over three iterations of the training loop on the "
              "CPU (`tools/cpu_live_reference.py`); the peak of each iteration relative to the live bytes when "
              "iteration 1 starts: parameters, buffers and the batch are excluded; gradients and optimizer state left "
              "by earlier iterations are included. memfit: its "
              "plan as raw tensor bytes (no 512 B rounding, no cuBLAS workspaces), `--pytorch 1.13` rules "
              "(`tools/live_bytes_estimate.cpp`). Where the CPU's mkldnn convolution sets the peak, its reorder "
              "buffers (CPU only) make the measurement larger; CPU dropout saves 4 B/element instead of CUDA's 1. "
              "`tests/live_bytes_test.cpp` recomputes memfit's side and checks every row.", "",
              "| model | batch | optimizer | iteration | measured (B) | memfit (B) | measured - memfit (B) | measured peak at |",
              "|---|---:|---|---:|---:|---:|---:|---|"]
    diffs = []
    for m in doc["models"]:
        for r in m["runs"]:
            for it in r["iterations"]:
                meas = it["memfit_relative_peak_bytes"] + it["measured_minus_memfit_bytes"]
                diffs.append(abs(it["measured_minus_memfit_bytes"]) / meas)
                top = it["peak_top"].replace("autograd::engine::evaluate_function: ", "")
                lines.append("| %s | %d | %s %s | %d | %s | %s | %s | %s |" % (
                    m["name"], m["batch"], r["optimizer"], r["optimizer_impl"], it["iteration"], format(meas, ","),
                    format(it["memfit_relative_peak_bytes"], ","), format(it["measured_minus_memfit_bytes"], ","), top))
    lines += ["", "Relative difference: median %.3f%%, worst %.2f%% over %d rows (the worst are mkldnn convolution "
              "peaks, a CPU-only cost)." % (100 * statistics.median(diffs), 100 * max(diffs), len(diffs)), ""]


def rules_section(binary, lines):
    lines += ["## Rules of thumb vs memfit (batch 64, fp32, SGD)", "",
              "No GPU measurement is recorded yet, so this table compares methods, not accuracy: memfit's predicted "
              "`max_memory_allocated` / `max_memory_reserved` (allocator model) beside what the common rules give. "
              "torchinfo's method: 2 x outputs of layers with parameters + parameters + input.", "",
              "| model | memfit allocated (MiB) | memfit reserved (MiB) | activations once | x3 for backward | params x 3 x 4 B | torchinfo |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name in sorted(os.path.basename(p)[:-7] for p in glob.glob(os.path.join(ROOT, "models/*.memfit"))):
        e = memfit(binary, name, "--batch", "64")
        rules = {r["name"]: r["bytes"] for r in e["rules_of_thumb"]}
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            name, mib(e["peak"]["allocated_bytes"]), mib(e["peak"]["reserved_bytes"]),
            mib(rules["activations counted once"]), mib(rules["x3 for backward"]),
            mib(rules["params x 3 x 4 B"]), mib(rules["torchinfo"])))
    lines.append("")


def gpu_section(binary, lines):
    files = sorted(glob.glob(os.path.join(ROOT, "tests/reference/gpu/*.json")))
    lines += ["## Peaks on a GPU: memfit vs torch.cuda.max_memory_allocated / max_memory_reserved", ""]
    recorded = [f for f in files if not json.load(open(f)).get("cpu_check")]
    if not recorded:
        lines += ["**No GPU run is recorded yet.** `tools/gpu_reference.py` (one prepared script, about 8 minutes) "
                  "writes `tests/reference/gpu/*.json` on a machine with a CUDA GPU; `tests/gpu_reference_test.cpp` "
                  "then checks every run within 5%, and this script fills this section. Until then the allocated, "
                  "reserved and device numbers memfit prints are unmeasured predictions.", ""]
        return
    errs = {"allocated": [], "reserved": []}
    lines += ["| file | model | batch | optimizer | precision | iteration | measured alloc (MiB) | memfit | error | measured reserved (MiB) | memfit | error |",
              "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for f in recorded:
        doc = json.load(open(f))
        for m in doc["models"]:
            for run in m["runs"]:
                if run.get("status") != "ok":
                    continue
                prec = {"fp32": "fp32", "amp-fp16": "fp16", "amp-bf16": "bf16"}.get(run["precision"], "fp16")
                impl = run.get("impl", "default")
                args = ["--batch", str(run["batch"]), "--optimizer", run["optimizer"], "--dtype", prec]
                if impl != "default":
                    args += ["--optimizer-impl", impl]
                e = memfit(binary, m["name"], *args)
                by_iter = {it["iteration"]: it for it in e["iterations"]}
                for it in run["iterations"]:
                    if it.get("max_allocated") is None or it["iteration"] not in by_iter:
                        continue
                    ea, er = by_iter[it["iteration"]]["allocated_bytes"], by_iter[it["iteration"]]["reserved_bytes"]
                    ma, mr = it["max_allocated"], it["max_reserved"]
                    errs["allocated"].append(abs(ea - ma) / ma)
                    errs["reserved"].append(abs(er - mr) / mr)
                    lines.append("| %s | %s | %d | %s | %s | %d | %s | %s | %s | %s | %s | %s |" % (
                        os.path.basename(f), m["name"], run["batch"], run["optimizer"], run["precision"],
                        it["iteration"], mib(ma), mib(ea), pct(ea, ma), mib(mr), mib(er), pct(er, mr)))
    for k, v in errs.items():
        if v:
            lines.append("")
            lines.append("%s: median error %.1f%%, worst %.1f%% over %d points" % (
                k, 100 * statistics.median(v), 100 * max(v), len(v)))
    lines.append("")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memfit", default=os.path.join(ROOT, "build/memfit"))
    ap.add_argument("--estimator", default=os.path.join(ROOT, "build/live_bytes_estimate"),
                    help="tools/live_bytes_estimate.cpp built (for the DenseNet live rows; skipped if absent)")
    ap.add_argument("-o", "--output", default=os.path.join(ROOT, "docs/accuracy.md"))
    a = ap.parse_args()
    lines = ["# memfit accuracy", "",
             "Generated by `/usr/bin/python3 tools/accuracy_report.py` from the committed references; do not edit "
             "by hand. What is not modelled yet is listed in README.md.", ""]
    gpu_section(a.memfit, lines)
    cpu_section(a.memfit, lines)
    live_section(lines)
    frozen_section(a.memfit, lines)
    densenet_section(a.memfit, a.estimator, lines)
    rules_section(a.memfit, lines)
    open(a.output, "w").write("\n".join(lines) + "\n")
    print("wrote", a.output, file=sys.stderr)


if __name__ == "__main__":
    main()
