#!/usr/bin/env python3
"""CPU reference: live tensor bytes through iterations 1..3 of memfit's training loop.

For each model / batch / optimizer this builds the module with
memfit_torch.build_module, creates the optimizer (make_optimizer; foreach=True
explicitly for "foreach", foreach=False for "for-loop"), x and target, then
starts torch.profiler (activities=[CPU], profile_memory=True) right before
iteration 1 and runs memfit_torch.training_step three times:

    optimizer.zero_grad(set_to_none=True); out = model(x);
    loss = loss_fn(out, target); loss.backward(); optimizer.step()

From the profiler's raw '[memory]' records (every CPU allocation and free, in
order, with its byte count) it forms the running sum of live bytes since the
profiler started and reports per iteration:

  start_bytes   live bytes when the iteration's zero_grad begins
  peak_bytes    highest live bytes until the next iteration begins
  peak_increase_bytes = peak_bytes - start_bytes
  peak_op       innermost op running at the peak, peak_top the outermost
                (a forward op, 'autograd::engine::evaluate_function: XBackward0',
                'Optimizer.step#...'), peak_phase (zero_grad/forward/loss/backward/optimizer)
  phase_peak_bytes  highest live bytes in each phase
  phase_peak_top    the outermost op (as peak_top) at each phase's peak

Phases come from the ops torch itself records: 'Optimizer.zero_grad#*',
the top-level 'aten::cross_entropy_loss' (loss), the first top-level op after
it (loss.backward's ones_like, then the engine), and 'Optimizer.step#*'.
No record_function is added by this script (record_function allocates small
tensors itself).

With --estimator BIN (build/live_bytes_estimate, built from
tools/live_bytes_estimate.cpp) memfit's numbers for the same setting (no
512-byte rounding, no cuBLAS/cuDNN workspaces) are put next to the measured
ones.  With --ops DIR a per-op timeline (top-level ops: live bytes at start,
max inside, at end) is written per run for investigating differences.

Usage (repository root; build/memfit and build/live_bytes_estimate built):
  /usr/bin/python3 tools/cpu_live_reference.py --memfit build/memfit \
      --estimator build/live_bytes_estimate -o tests/reference/cpu_live_bytes.json
Options: --runs MODEL:BATCH,...  --configs OPT:IMPL,...  --threads 1  --ops DIR
  --nodes: per run, `backward_nodes`: the last iteration's autograd nodes in execution order,
  [op, start, max, end] (live bytes relative to the start of iteration 1).
  --freeze GLOB[,GLOB...] / --train GLOB[,GLOB...]: freeze layers as memfit's options of the same
  names do (memfit_torch.apply_freeze), for every run; the optimizer is still built over all
  parameters (PyTorch skips those whose .grad is None). Each model entry gets a "frozen" object.

Needs only torch (tested with Debian python3-torch 1.13, CPU).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memfit_torch as mt  # noqa: E402

DEFAULT_RUNS = [
    ("models/question_cnn.memfit", 8),
    ("models/lenet5.memfit", 8),
    ("models/resnet18.memfit", 8),
    ("models/mobilenet_v2.memfit", 4),
    ("tests/reference/fixtures/tiny_residual.json", 8),
    ("tests/reference/fixtures/tiny_mlp.json", 8),
]
DEFAULT_CONFIGS = [("sgd", "foreach"), ("sgd-momentum", "foreach"), ("adam", "foreach"), ("adam", "for-loop")]
N_ITERATIONS = 3

NOTES = [
    "Bytes are raw CPU allocation sizes from the profiler's [memory] records (c10 CPU allocator, which "
    "oneDNN/mkldnn buffers also use); no 512-byte rounding, no caching allocator.",
    "start_bytes / peak_bytes are relative to the profiler's start, placed after the model, the optimizer, "
    "x and target exist and right before iteration 1; relative_peak_bytes = peak_bytes - start_bytes of "
    "iteration 1 (equal to peak_bytes unless something was allocated between profiler start and "
    "iteration 1).",
    "On the CPU some allocations exist that a CUDA run does not make on the GPU: optimizer scalars "
    "(torch 1.13 Adam state['step'] is a CPU float tensor, 4 bytes per parameter tensor; wrapped Python "
    "scalars), and CPU kernels' own buffers (mkldnn reorders / scratch, im2col for thnn_conv2d, etc.).",
    "memfit_torch.training_step returns loss.detach(); `out` and `loss` are locals, freed when the step "
    "returns (memfit likewise releases them at the end of the iteration).",
    "memfit_torch.MemfitNet.forward drops each layer's output after its last consumer, as a plain PyTorch "
    "module rebinding `x = layer(x)` does (it kept them all until forward returned before this was "
    "found; `--release-env` remains as the explicit form of the same forward).",
    "memfit columns: tools/live_bytes_estimate.cpp, i.e. memfit's plan replayed as raw tensor bytes "
    "(AllocatorConfig min_block_bytes = 1, all workspaces 0), relative to the start of iteration 1.",
]


def load_model(src, memfit):
    if src.endswith(".json"):
        return mt.load_model_json(src)
    r = subprocess.run([memfit, "model", src, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if r.returncode != 0:
        sys.exit("%s model %s --json failed (%d): %s" % (memfit, src, r.returncode, r.stderr))
    return mt.load_model_json(json.loads(r.stdout))


def _tensor_bytes(ts):
    return sum(t.numel() * t.element_size() for t in ts)


def classify(name):
    if name.startswith("Optimizer.zero_grad"):
        return "zero_grad"
    if name.startswith("Optimizer.step"):
        return "optimizer"
    return None


def analyse(kr, want_ops):
    """kr: prof.profiler.kineto_results.  Returns (iterations, ops timeline)."""
    evs = list(kr.events())
    main_tid = None
    mem = []   # (t, seq, nbytes)
    ops = []   # (start, end, name, tid)
    for k, e in enumerate(evs):
        if e.device_type() != torch.autograd.DeviceType.CPU:
            continue
        if e.name() == "[memory]":
            mem.append((e.start_us(), k, e.nbytes()))
        else:
            ops.append((e.start_us(), e.start_us() + e.duration_us(), e.name(), e.start_thread_id()))
    mem.sort(key=lambda r: (r[0], r[1]))
    ops.sort(key=lambda r: (r[0], -r[1]))
    zg = [o for o in ops if classify(o[2]) == "zero_grad"]
    if len(zg) != N_ITERATIONS:
        raise RuntimeError("expected %d zero_grad events, found %d" % (N_ITERATIONS, len(zg)))
    main_tid = zg[0][3]
    steps = [o for o in ops if classify(o[2]) == "optimizer"]
    # top-level ops of the main thread (not nested in another op of the main thread)
    top = []
    end_max = -1
    for o in ops:
        if o[3] != main_tid:
            continue
        if o[0] >= end_max:
            top.append(o)
            end_max = o[1]
        else:
            end_max = max(end_max, o[1])
    # phase boundaries per iteration
    bounds = []
    for it in range(N_ITERATIONS):
        z = zg[it]
        nxt = zg[it + 1][0] if it + 1 < N_ITERATIONS else float("inf")
        st = [s for s in steps if z[0] <= s[0] < nxt]
        ce = [o for o in top if z[0] <= o[0] < nxt and o[2] == "aten::cross_entropy_loss"]
        if len(st) != 1 or len(ce) != 1:
            raise RuntimeError("iteration %d: %d step / %d cross_entropy_loss events" % (it + 1, len(st), len(ce)))
        after = [o for o in top if ce[0][1] <= o[0] < st[0][0]]
        bwd_start = after[0][0] if after else st[0][0]
        bounds.append({"zero_grad": z[0], "forward": z[1], "loss": ce[0][0], "backward": bwd_start,
                       "optimizer": st[0][0], "end": nxt})

    def phase_of(it, t):
        b = bounds[it]
        ph = "zero_grad"
        for name in ("forward", "loss", "backward", "optimizer"):
            if t >= b[name]:
                ph = name
        return ph

    def enclosing(t):
        inner = outer = None
        for o in ops:
            if o[0] > t:
                break
            if o[0] <= t <= o[1]:
                if outer is None or o[3] == main_tid and outer[3] != main_tid:
                    outer = o
                inner = o
        # prefer the engine's node for backward
        eng = [o for o in ops if o[0] <= t <= o[1] and o[2].startswith("autograd::engine::evaluate_function")]
        if eng:
            outer = eng[-1]
        return (inner[2] if inner else None), (outer[2] if outer else None)

    # running sum
    live = 0
    its = [None] * N_ITERATIONS
    cur = -1
    t_starts = [b["zero_grad"] for b in bounds]
    series = []
    for (t, _, nb) in mem:
        while cur + 1 < N_ITERATIONS and t >= t_starts[cur + 1]:
            cur += 1
            its[cur] = {"iteration": cur + 1, "start_bytes": live, "peak_bytes": live, "peak_t": t_starts[cur],
                        "phase_peak_bytes": {}}
        live += nb
        series.append((t, live))
        if cur < 0:
            continue
        r = its[cur]
        if live > r["peak_bytes"]:
            r["peak_bytes"] = live
            r["peak_t"] = t
        ph = phase_of(cur, t)
        if live > r["phase_peak_bytes"].get(ph, -1 << 62):
            r["phase_peak_bytes"][ph] = live
            r.setdefault("phase_peak_t", {})[ph] = t
    for k in range(N_ITERATIONS):
        if its[k] is None:
            its[k] = {"iteration": k + 1, "start_bytes": live, "peak_bytes": live, "peak_t": t_starts[k],
                      "phase_peak_bytes": {}}
    for r in its:
        r["peak_increase_bytes"] = r["peak_bytes"] - r["start_bytes"]
        inner, outer = enclosing(r["peak_t"])
        r["peak_op"] = inner
        r["peak_top"] = outer
        r["phase_peak_top"] = {ph: enclosing(t)[1] for ph, t in r.pop("phase_peak_t", {}).items()}
        r["peak_phase"] = phase_of(r["iteration"] - 1, r["peak_t"])
        del r["peak_t"]
    end_bytes = live

    timeline = None
    if want_ops:
        # per top-level op (main thread) and per engine node: live at start, max inside, live at end
        import bisect
        ts = [s[0] for s in series]

        def live_at(t):  # live bytes after all records with time < t
            i = bisect.bisect_left(ts, t)
            return series[i - 1][1] if i else 0

        def span(o):
            i = bisect.bisect_left(ts, o[0])
            j = bisect.bisect_right(ts, o[1])
            a = live_at(o[0])
            mx = max([a] + [series[q][1] for q in range(i, j)])
            return a, mx, (series[j - 1][1] if j else 0)

        timeline = []
        units = [o for o in top if not o[2].startswith("autograd::engine")] + \
                [o for o in ops if o[2].startswith("autograd::engine::evaluate_function")]
        units.sort(key=lambda o: o[0])
        for o in units:
            it = max([k for k in range(N_ITERATIONS) if o[0] >= t_starts[k]] or [0])
            a, mx, e = span(o)
            timeline.append({"iteration": it + 1, "phase": phase_of(it, o[0]), "op": o[2],
                             "start": a, "max": mx, "end": e})
    return its, end_bytes, timeline


def release_env_forward(net):
    """A forward like MemfitNet.forward that drops each layer output after its last consumer."""
    last_use = {}
    for k, (name, key, src) in enumerate(net.plan):
        for s in src:
            last_use[s] = k

    def forward(*xs):
        if len(xs) == 1 and isinstance(xs[0], (tuple, list)):
            xs = tuple(xs[0])
        env = dict(zip(net.inputs, xs))
        del xs
        for k, (name, key, src) in enumerate(net.plan):
            env[name] = net.layers[key](*[env[s] for s in src])
            for s in set(src):
                if last_use.get(s) == k and s != net.output_name:
                    del env[s]
        return env.pop(net.output_name)
    return forward


def measure(m, batch, opt_name, impl, seed, want_ops, release_env=False, freeze=None, train=None,
            want_nodes=False, wrap_forward=None):
    """wrap_forward(net) -> a forward replacing net.forward (tools/cpu_checkpoint_reference.py)."""
    torch.manual_seed(seed)
    net = mt.build_module(m)
    net.train()
    frozen = mt.apply_freeze(net, freeze, train) if (freeze is not None or train is not None) else None
    if release_env:
        net.forward = release_env_forward(net)
    if wrap_forward is not None:
        net.forward = wrap_forward(net)
    loss_fn = mt.loss_fn_for(net)
    opt = mt.make_optimizer(opt_name, net.parameters(), impl)
    x, target = mt.make_batch(m, batch, "cpu", torch.float32, seed=seed)
    xs = x if isinstance(x, tuple) else (x,)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(N_ITERATIONS):
            mt.training_step(net, x, target, opt, loss_fn)
    its, end_bytes, timeline = analyse(prof.profiler.kineto_results, want_ops or want_nodes)
    base = its[0]["start_bytes"]
    nodes = None
    if want_nodes:
        # the last iteration's autograd nodes in execution order: [op, start, max, end], live bytes
        # relative to the start of iteration 1 (like relative_peak_bytes)
        pre = "autograd::engine::evaluate_function: "
        nodes = [[u["op"][len(pre):], u["start"] - base, u["max"] - base, u["end"] - base] for u in timeline
                 if u["iteration"] == N_ITERATIONS and u["op"].startswith(pre)]
        if not want_ops:
            timeline = None
    for r in its:
        r["relative_peak_bytes"] = r["peak_bytes"] - base
        r["relative_start_bytes"] = r["start_bytes"] - base
    state_bytes = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                state_bytes += v.numel() * v.element_size()
    params = list(net.parameters())
    res = {
        "optimizer": opt_name,
        "optimizer_impl": impl,
        "optimizer_settings": mt.optimizer_settings(opt),
        "param_bytes": _tensor_bytes(params),
        "param_tensors": len(params),
        "buffer_bytes": mt.buffer_bytes(net),
        "input_bytes": _tensor_bytes(xs) + _tensor_bytes([target]),
        "grad_bytes_after": _tensor_bytes([p.grad for p in params if p.grad is not None]),
        "optimizer_state_bytes_after": state_bytes,
        "end_bytes": end_bytes,
        "iterations": its,
    }
    if nodes is not None:
        res["backward_nodes"] = nodes
    if frozen is not None:
        trainable = [p for p in params if p.requires_grad]
        res["trainable_param_bytes"] = _tensor_bytes(trainable)
        res["trainable_param_tensors"] = len(trainable)
    return res, timeline, frozen


def memfit_copy(src, tmpdir):
    """The model file memfit's side reads, and the changes made to it for memfit (none are needed
    since memfit models in-place SiLU). Kept so the JSON records `memfit_source_changes`."""
    return src, []


def run_estimator(est, specs):
    if not est or not specs:
        return {}
    r = subprocess.run([est] + specs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if r.returncode != 0:
        sys.exit("%s failed (%d): %s" % (est, r.returncode, r.stderr))
    return {e["spec"]: e for e in json.loads(r.stdout)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memfit", default="build/memfit", help="memfit binary (for `model FILE --json`)")
    ap.add_argument("--estimator", help="build/live_bytes_estimate: add memfit's numbers")
    ap.add_argument("--runs", help="MODEL_FILE:BATCH,... (default: the six models of the reference)")
    ap.add_argument("--configs", help="OPTIMIZER:IMPL,... (default sgd:foreach,sgd-momentum:foreach,"
                                      "adam:foreach,adam:for-loop)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops", help="directory for per-op timelines (one JSON per run)")
    ap.add_argument("--nodes", action="store_true",
                    help="record the last iteration's autograd nodes (op, live at start / max / end) per run")
    ap.add_argument("--release-env", action="store_true",
                    help="experiment: forward drops layer outputs after their last use (not memfit_torch's)")
    ap.add_argument("--freeze", help="GLOB[,GLOB...]: freeze these memfit layers (and the regions they name)")
    ap.add_argument("--train", help="GLOB[,GLOB...]: freeze every layer these globs do not match")
    ap.add_argument("-o", "--output", help="output JSON (default stdout)")
    args = ap.parse_args()
    if args.estimator and (args.freeze is not None or args.train is not None):
        sys.exit("--estimator: tools/live_bytes_estimate.cpp has no --freeze/--train yet; leave it out "
                 "(tests/frozen_reference_test.cpp computes memfit's side)")
    torch.set_num_threads(args.threads)
    runs = DEFAULT_RUNS
    if args.runs:
        runs = [(r.rsplit(":", 1)[0], int(r.rsplit(":", 1)[1])) for r in args.runs.split(",") if r]
    configs = DEFAULT_CONFIGS
    if args.configs:
        configs = [tuple(c.split(":")) for c in args.configs.split(",") if c]
    if args.ops:
        os.makedirs(args.ops, exist_ok=True)

    tmpdir = tempfile.mkdtemp(prefix="memfit_live_")
    est_src = {src: memfit_copy(src, tmpdir) for src, _ in runs}
    specs = ["%s:%d:%s:%s" % (est_src[src][0], b, o, i) for src, b in runs for o, i in configs]
    est = run_estimator(args.estimator, specs)

    result = {
        "generated_by": " ".join(["/usr/bin/python3"] + sys.argv),
        "torch_version": torch.__version__,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "training_loop": mt.TRAINING_LOOP,
        "iterations": N_ITERATIONS,
        "forward": "release-env (experiment)" if args.release_env else "memfit_torch.MemfitNet.forward",
        "notes": NOTES,
        "models": [],
    }
    for src, batch in runs:
        m = load_model(src, args.memfit)
        entry = {"name": m.get("name"), "source": src, "batch": batch, "runs": []}
        if est_src[src][1] and est:
            entry["memfit_source_changes"] = est_src[src][1]
        for opt_name, impl in configs:
            sys.stderr.write("%s batch %d %s %s\n" % (src, batch, opt_name, impl))
            res, timeline, frozen = measure(m, batch, opt_name, impl, args.seed, bool(args.ops), args.release_env,
                                            args.freeze, args.train, args.nodes)
            if frozen is not None:
                entry["frozen"] = frozen
            spec = "%s:%d:%s:%s" % (est_src[src][0], batch, opt_name, impl)
            if spec in est:
                e = est[spec]
                res["memfit"] = {
                    "param_bytes": e["param_bytes"], "input_bytes": e["input_bytes"],
                    "iterations": [{k: r[k] for k in ("iteration", "start_bytes", "peak_bytes", "peak_phase",
                                                      "peak_layer", "phase_peak_bytes") if k in r}
                                   for r in e["iterations"]],
                }
                for r, q in zip(res["iterations"], e["iterations"]):
                    r["memfit_relative_peak_bytes"] = q["peak_bytes"]
                    r["measured_minus_memfit_bytes"] = r["relative_peak_bytes"] - q["peak_bytes"]
            if timeline is not None:
                name = "%s_b%d_%s_%s.json" % (m.get("name"), batch, opt_name, impl)
                with open(os.path.join(args.ops, name), "w") as f:
                    json.dump(timeline, f, indent=0)
            entry["runs"].append(res)
        result["models"].append(entry)

    mt.write_json(result, args.output)


if __name__ == "__main__":
    main()
