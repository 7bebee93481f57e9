#!/usr/bin/env python3
"""GPU reference measurements for memfit (one prepared script, PyTorch 2.x + CUDA).

For each memfit JSON model (memfit-model/1) it measures, on one CUDA device:

  * phase "context" (own fresh process): CUDA context cost = NVML device memory
    used before any CUDA call vs. after torch CUDA init (minus what the caching
    allocator reserved), plus the extra memory after the first cuDNN conv and
    cuBLAS matmul (library handles / workspaces / lazily loaded kernels).
  * phase "measure" (one fresh process per model): for each precision
    (fp32, amp-fp16 = torch.autocast fp16 around forward+loss, no GradScaler),
    optimizer (sgd-momentum, adam; impl = torch default) and batch size:
    memory_allocated before the first step (params + inputs), and for every
    iteration 1..--iters max_memory_allocated / max_memory_reserved
    (torch.cuda.reset_peak_memory_stats() before each iteration),
    memory_allocated / reserved after it, and NVML process memory.
  * phase "maxbatch" (one fresh process per model): the largest batch that
    completes one full training step without OOM under
    torch.cuda.set_per_process_memory_fraction(cap / total) for caps of 8 and
    16 GiB (galloping + bisection, empty_cache() between tries, catching
    torch.cuda.OutOfMemoryError).  The cap limits the caching allocator only;
    the CUDA context is not counted against it.

The training loop is exactly memfit_torch.training_step:
    optimizer.zero_grad(set_to_none=True); out = model(x);
    loss = loss_fn(out, target); loss.backward(); optimizer.step()

A global time budget (--budget-s, default 480) is respected: configurations
that would not fit are skipped and listed under "skipped".

--cpu-check runs the same code paths on the CPU with tiny batches (CUDA-only
numbers become null; autocast uses bf16 on CPU; the max-batch search uses a
synthetic OOM at batch > cap-in-GiB) so the script can be checked without a GPU.

Usage:
  python3 tools/gpu_reference.py tests/reference/fixtures/*.json -o gpu_reference.json
  python3 tools/gpu_reference.py --memfit build/memfit --models-dir models -o gpu_reference.json
  python3 tools/gpu_reference.py --cpu-check tests/reference/fixtures/*.json -o /tmp/gpu_cpu_check.json
"""

import argparse
import gc
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GiB = 1 << 30
MiB = 1 << 20


# ===========================================================================
# NVML (pynvml / nvidia-ml-py if importable, else nvidia-smi).  Never creates
# a CUDA context.

class Nvml:
    def __init__(self):
        self.kind = None
        self.error = None
        self.index = 0
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        first = cvd.split(",")[0].strip() if cvd else ""
        if first.isdigit():
            self.index = int(first)
        try:
            import pynvml  # nvidia-ml-py provides the same module name
            pynvml.nvmlInit()
            self.nv = pynvml
            if first and not first.isdigit():
                self.h = pynvml.nvmlDeviceGetHandleByUUID(first.encode() if isinstance(first, str) else first)
            else:
                self.h = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.kind = "pynvml"
            return
        except Exception as e:  # noqa: BLE001
            self.error = "pynvml: %r" % (e,)
        if shutil.which("nvidia-smi"):
            self.kind = "nvidia-smi"

    @staticmethod
    def _s(v):
        return v.decode() if isinstance(v, bytes) else v

    def _smi(self, query, what="--query-gpu"):
        r = subprocess.run(["nvidia-smi", "%s=%s" % (what, query), "--format=csv,noheader,nounits"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip())
        return [[c.strip() for c in line.split(",")] for line in r.stdout.strip().splitlines() if line.strip()]

    def info(self):
        try:
            if self.kind == "pynvml":
                return {"source": "pynvml", "name": self._s(self.nv.nvmlDeviceGetName(self.h)),
                        "driver_version": self._s(self.nv.nvmlSystemGetDriverVersion()),
                        "nvml_index": self.index}
            if self.kind == "nvidia-smi":
                rows = self._smi("index,name,driver_version,memory.total")
                row = rows[min(self.index, len(rows) - 1)]
                return {"source": "nvidia-smi", "name": row[1], "driver_version": row[2],
                        "memory_total_mib": int(row[3]), "nvml_index": self.index}
        except Exception as e:  # noqa: BLE001
            return {"source": self.kind, "error": repr(e)}
        return {"source": None, "error": self.error}

    def device_memory(self):
        """{"total","used","free"} bytes for the device, or None."""
        try:
            if self.kind == "pynvml":
                mi = self.nv.nvmlDeviceGetMemoryInfo(self.h)
                return {"total": int(mi.total), "used": int(mi.used), "free": int(mi.free), "unit": "B"}
            if self.kind == "nvidia-smi":
                rows = self._smi("index,memory.total,memory.used,memory.free")
                row = rows[min(self.index, len(rows) - 1)]
                return {"total": int(row[1]) * MiB, "used": int(row[2]) * MiB, "free": int(row[3]) * MiB,
                        "unit": "MiB-granular"}
        except Exception as e:  # noqa: BLE001
            return {"error": repr(e)}
        return None

    def process_used(self, pid=None):
        """Bytes NVML reports for this process (or None).  In a container the
        pids may not match; then a single listed process is taken and flagged."""
        pid = os.getpid() if pid is None else pid
        try:
            procs = []
            if self.kind == "pynvml":
                for p in self.nv.nvmlDeviceGetComputeRunningProcesses(self.h):
                    procs.append((int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory)))
            elif self.kind == "nvidia-smi":
                for row in self._smi("pid,used_memory", "--query-compute-apps"):
                    try:
                        procs.append((int(row[0]), int(row[1]) * MiB))
                    except ValueError:
                        procs.append((int(row[0]), None))
            else:
                return None
            for p, used in procs:
                if p == pid:
                    return {"bytes": used, "pid_match": True, "source": self.kind}
            if len(procs) == 1:
                return {"bytes": procs[0][1], "pid_match": False, "source": self.kind}
            return {"bytes": None, "pid_match": False, "processes": len(procs), "source": self.kind}
        except Exception as e:  # noqa: BLE001
            return {"error": repr(e)}


# ===========================================================================
# worker side (imports torch)

class FakeOOM(RuntimeError):
    """--cpu-check stand-in for torch.cuda.OutOfMemoryError."""


def _is_oom(e):
    import torch
    oom_cls = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(e, oom_cls):
        return True
    if isinstance(e, FakeOOM):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


class Env:
    def __init__(self, cpu_check):
        import torch
        self.torch = torch
        self.cuda = not cpu_check
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.nv = Nvml() if self.cuda else None

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def cleanup(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    def mem(self):
        t = self.torch
        if not self.cuda:
            return {"allocated": None, "reserved": None}
        return {"allocated": t.cuda.memory_allocated(), "reserved": t.cuda.memory_reserved()}

    def peaks(self):
        t = self.torch
        if not self.cuda:
            return {"max_allocated": None, "max_reserved": None}
        return {"max_allocated": t.cuda.max_memory_allocated(), "max_reserved": t.cuda.max_memory_reserved()}

    def reset_peaks(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def proc(self):
        return self.nv.process_used() if self.nv else None

    def autocast(self, precision):
        t = self.torch
        if precision == "fp32":
            return None
        if precision == "amp-fp16":
            if self.cuda:
                return t.autocast(device_type="cuda", dtype=t.float16)
            return t.autocast(device_type="cpu", dtype=t.bfloat16)  # CPU autocast has no fp16
        raise ValueError("unknown precision %r" % precision)


def _tensor_bytes(obj):
    import torch
    n = 0
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        for v in obj.values():
            n += _tensor_bytes(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            n += _tensor_bytes(v)
    return n


def run_config(env, mt, m, precision, opt_name, impl, batch, iters):
    torch = env.torch
    rec = {"precision": precision, "optimizer": opt_name, "impl": impl, "batch": batch, "iters": iters}
    env.cleanup()
    env.reset_peaks()
    rec["base"] = env.mem()
    t0 = time.time()
    state = {}
    try:
        torch.manual_seed(0)
        model = mt.build_module(m).to(env.device)
        model.train()
        state["model"] = model
        opt = mt.make_optimizer(opt_name, model.parameters(), impl)
        state["opt"] = opt
        rec["optimizer_settings"] = mt.optimizer_settings(opt)
        x, target = mt.make_batch(m, batch, env.device, torch.float32)
        state["x"], state["target"] = x, target
        loss_fn = mt.loss_fn_for(model)
        env.sync()
        rec["before_step"] = env.mem()   # params + inputs (+ base)
        rec["before_step"]["nvml_process"] = env.proc()
        its = []
        for i in range(1, iters + 1):
            env.reset_peaks()
            start = env.mem()
            ts = time.perf_counter()
            loss = mt.training_step(model, x, target, opt, loss_fn, autocast=env.autocast(precision))
            env.sync()
            it = {"iteration": i, "start": start, "seconds": round(time.perf_counter() - ts, 6),
                  "loss": float(loss)}
            it.update(env.peaks())
            it["end"] = env.mem()
            it["nvml_process"] = env.proc()
            its.append(it)
        rec["iterations"] = its
        rec["optimizer_state_bytes"] = _tensor_bytes(list(opt.state.values()))
        rec["grad_bytes"] = sum(p.grad.numel() * p.grad.element_size()
                                for p in model.parameters() if p.grad is not None)
        rec["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        rec["input_bytes"] = _tensor_bytes([x, target])
        rec["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        rec["status"] = "oom" if _is_oom(e) else "error"
        rec["error"] = "%s: %s" % (type(e).__name__, str(e)[:400])
        if rec["status"] == "error":
            rec["traceback"] = traceback.format_exc()[-2000:]
        e = None
    # drop every reference to the model, optimizer, batch and graph before measuring/cleaning
    model = opt = x = target = loss = loss_fn = None  # noqa: F841
    state.clear()
    env.cleanup()
    rec["seconds"] = round(time.time() - t0, 3)
    if env.cuda:
        st = torch.cuda.memory_stats()
        rec["num_alloc_retries"] = st.get("num_alloc_retries")
        rec["num_ooms"] = st.get("num_ooms")
    return rec


def try_batch(env, mt, m, precision, opt_name, impl, batch, synthetic_limit):
    """One full training step at `batch`; returns a dict with status ok|oom|error."""
    torch = env.torch
    env.cleanup()
    env.reset_peaks()
    state = {}
    out = {"batch": batch}
    t0 = time.time()
    try:
        if synthetic_limit is not None and batch > synthetic_limit:
            raise FakeOOM("synthetic out of memory (cpu-check): batch %d > %d" % (batch, synthetic_limit))
        torch.manual_seed(0)
        model = mt.build_module(m).to(env.device)
        state["model"] = model
        opt = mt.make_optimizer(opt_name, model.parameters(), impl)
        state["opt"] = opt
        x, target = mt.make_batch(m, batch, env.device, torch.float32)
        state["x"], state["target"] = x, target
        mt.training_step(model, x, target, opt, mt.loss_fn_for(model), autocast=env.autocast(precision))
        env.sync()
        out.update(env.peaks())
        out["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        out["status"] = "oom" if _is_oom(e) else "error"
        out["error"] = "%s: %s" % (type(e).__name__, str(e)[:300])
        e = None
    model = opt = x = target = None  # noqa: F841
    state.clear()
    env.cleanup()
    out["seconds"] = round(time.time() - t0, 3)
    return out


def search_max_batch(try_fn, guess, limit, rel_tol, deadline):
    """Largest b in [1, limit] with try_fn(b) ok.  Gallops from `guess`, then bisects
    until hi - lo <= max(1, rel_tol * lo)."""
    tries = []
    lo, hi = 0, None          # lo: largest ok, hi: smallest failing
    errors = []

    def attempt(b):
        r = try_fn(b)
        tries.append({k: r.get(k) for k in ("batch", "status", "max_allocated", "max_reserved", "seconds")})
        if r["status"] == "error":
            errors.append(r.get("error"))
        return r

    best = None
    b = max(1, min(int(guess or 1), limit))
    step = 2.0 if not guess else 1.25
    incomplete = False
    while True:
        if time.time() > deadline:
            incomplete = True
            break
        r = attempt(b)
        if r["status"] == "ok":
            lo, best = b, r
            if b >= limit or hi is not None:
                break
            b = min(limit, max(b + 1, int(b * step)))
        else:
            hi = b
            if b == 1 or lo > 0:
                break
            b = max(1, int(b / step))
        step = min(step * step, 1e6)
    while not incomplete and hi is not None and hi - lo > max(1, int(rel_tol * lo)):
        if time.time() > deadline:
            incomplete = True
            break
        mid = (lo + hi) // 2
        r = attempt(mid)
        if r["status"] == "ok":
            lo, best = mid, r
        else:
            hi = mid
    return {
        "max_batch": lo,
        "first_failing_batch": hi,
        "hit_limit": hi is None and lo >= limit,
        "incomplete": incomplete,
        "peak_at_max_batch": None if best is None else {"max_allocated": best.get("max_allocated"),
                                                         "max_reserved": best.get("max_reserved")},
        "non_oom_errors": errors,
        "tries": tries,
    }


def worker_context(cfg):
    """Fresh process: CUDA context cost and device/software facts."""
    nv = Nvml()
    res = {"nvml": nv.info()}
    before = nv.device_memory()
    res["device_memory_before_init"] = before
    t0 = time.time()
    import torch
    res["torch_version"] = torch.__version__
    if cfg.get("cpu_check"):
        res["cpu_check"] = True
        return res
    torch.cuda.init()
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    res["init_seconds"] = round(time.time() - t0, 3)
    free, total = torch.cuda.mem_get_info()
    after = nv.device_memory()
    res["after_init"] = {"mem_get_info_free": free, "mem_get_info_total": total,
                         "allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved(),
                         "device_memory": after, "nvml_process": nv.process_used()}
    try:
        res["context_bytes_nvml"] = after["used"] - before["used"] - torch.cuda.memory_reserved()
    except Exception:  # noqa: BLE001
        res["context_bytes_nvml"] = None
    try:
        res["context_bytes_free_delta"] = before["free"] - free - torch.cuda.memory_reserved()
    except Exception:  # noqa: BLE001
        res["context_bytes_free_delta"] = None
    # first cuDNN conv and cuBLAS matmul: handles, workspaces, lazily loaded modules
    a = torch.randn(8, 16, 32, 32, device="cuda")
    w = torch.randn(16, 16, 3, 3, device="cuda")
    torch.nn.functional.conv2d(a, w, padding=1)
    b = torch.randn(256, 256, device="cuda")
    (b @ b).sum().item()
    torch.cuda.synchronize()
    del a, w, b
    free2, _ = torch.cuda.mem_get_info()
    res["after_conv_matmul"] = {"mem_get_info_free": free2, "allocated": torch.cuda.memory_allocated(),
                                "reserved": torch.cuda.memory_reserved(),
                                "device_memory": nv.device_memory(), "nvml_process": nv.process_used()}
    res["library_overhead_bytes_free_delta"] = free - free2 - (torch.cuda.memory_reserved()
                                                             - res["after_init"]["reserved"])
    p = torch.cuda.get_device_properties(0)
    res["gpu"] = {"name": p.name, "total_memory": p.total_memory, "capability": "%d.%d" % (p.major, p.minor),
                  "multi_processor_count": p.multi_processor_count}
    res["cuda_version"] = torch.version.cuda
    res["cudnn_version"] = torch.backends.cudnn.version()
    return res


def settings_snapshot():
    import torch
    s = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "env": {k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "CUDA_MODULE_LOADING",
                                               "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES")},
    }
    return s


def worker_models(cfg):
    import torch
    import memfit_torch as mt
    env = Env(cfg["cpu_check"])
    m = mt.load_model_json(cfg["model_path"])
    deadline = cfg["deadline"]
    out_path = cfg["out"]
    res = {"phase": cfg["phase"], "settings": settings_snapshot(), "runs": [], "max_batch": [], "skipped": []}
    if not cfg["cpu_check"]:
        res["process_first_config_base"] = env.mem()

    def flush():
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f)
        os.replace(tmp, out_path)

    last = 1.0
    if cfg["phase"] == "measure":
        for precision in cfg["precisions"]:
            for opt_name in cfg["optimizers"]:
                for batch in cfg["batches"]:
                    desc = {"precision": precision, "optimizer": opt_name, "impl": cfg["impl"], "batch": batch}
                    if time.time() + 1.5 * last + 2 > deadline:
                        res["skipped"].append(dict(desc, reason="time budget"))
                        continue
                    t = time.time()
                    res["runs"].append(run_config(env, mt, m, precision, opt_name, cfg["impl"], batch, cfg["iters"]))
                    last = time.time() - t
                    flush()
    else:
        total = torch.cuda.get_device_properties(0).total_memory if env.cuda else None
        for cap_gib in cfg["caps_gib"]:
            for combo in cfg["maxbatch_configs"]:
                precision, opt_name = combo.split(":")
                desc = {"cap_gib": cap_gib, "precision": precision, "optimizer": opt_name, "impl": cfg["impl"]}
                if time.time() + 5 > deadline:
                    res["skipped"].append(dict(desc, reason="time budget"))
                    continue
                rec = dict(desc)
                if env.cuda:
                    cap = cap_gib * GiB
                    if cap >= total:
                        res["skipped"].append(dict(desc, reason="cap >= device memory"))
                        continue
                    frac = cap / total
                    torch.cuda.set_per_process_memory_fraction(frac)
                    rec["memory_fraction"] = frac
                    synthetic = None
                else:
                    synthetic = int(cap_gib)  # cpu-check: pretend batch > cap_gib runs out of memory
                    rec["synthetic_limit"] = synthetic
                guess = (cfg.get("guesses") or {}).get("%s:%s:%s" % (cap_gib, precision, opt_name))
                rec["guess"] = guess
                t = time.time()
                r = search_max_batch(
                    lambda b: try_batch(env, mt, m, precision, opt_name, cfg["impl"], b, synthetic),
                    guess, cfg["maxbatch_limit"], cfg["rel_tol"], deadline - 3)
                rec.update(r)
                rec["seconds"] = round(time.time() - t, 3)
                if env.cuda:
                    torch.cuda.set_per_process_memory_fraction(1.0)
                res["max_batch"].append(rec)
                flush()
    flush()


# ===========================================================================
# parent side: never initialises CUDA

def load_models(args, tmpdir):
    import memfit_torch as mt
    out = []
    for p in args.models:
        m = mt.load_model_json(p)
        out.append((p, p, m))
    if args.memfit:
        files = sorted(glob.glob(os.path.join(args.models_dir, "*.memfit")))
        for f in files:
            r = subprocess.run([args.memfit, "model", f, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
            if r.returncode != 0:
                sys.exit("%s model %s --json failed (%d): %s" % (args.memfit, f, r.returncode, r.stderr))
            m = mt.load_model_json(json.loads(r.stdout))
            path = os.path.join(tmpdir, os.path.basename(f) + ".json")
            with open(path, "w") as fh:
                json.dump(m, fh)
            out.append((f, path, m))
    if not out:
        sys.exit("no models given (JSON paths or --memfit BIN --models-dir DIR)")
    return out


def spawn(cfg, tmpdir, deadline, tag):
    cfg_path = os.path.join(tmpdir, tag + ".cfg.json")
    out_path = os.path.join(tmpdir, tag + ".out.json")
    cfg = dict(cfg, out=out_path, deadline=deadline)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    t0 = time.time()
    rec = {"returncode": None}
    try:
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", cfg_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                           timeout=max(5.0, deadline - time.time() + 20))
        rec["returncode"] = r.returncode
        if r.returncode != 0:
            rec["log_tail"] = r.stdout[-3000:]
    except subprocess.TimeoutExpired as e:
        rec["returncode"] = "timeout"
        rec["log_tail"] = (e.stdout or "")[-3000:] if isinstance(e.stdout, str) else None
    rec["seconds"] = round(time.time() - t0, 3)
    result = None
    if os.path.exists(out_path):
        with open(out_path) as f:
            result = json.load(f)
    return result, rec


def guesses_from_runs(runs, caps_gib):
    """Linear fit of steady-state peak reserved vs batch -> starting guess per cap."""
    g = {}
    by = {}
    for r in runs:
        if r.get("status") != "ok" or not r.get("iterations"):
            continue
        peak = r["iterations"][-1].get("max_reserved")
        if peak is None:
            continue
        by.setdefault((r["precision"], r["optimizer"]), []).append((r["batch"], peak))
    for (prec, opt), pts in by.items():
        pts.sort()
        if len(pts) < 2 or pts[-1][0] == pts[0][0]:
            continue
        (b1, p1), (b2, p2) = pts[0], pts[-1]
        slope = (p2 - p1) / float(b2 - b1)
        if slope <= 0:
            continue
        icpt = p1 - slope * b1
        for cap in caps_gib:
            est = (cap * GiB - icpt) / slope
            if est >= 1:
                g["%s:%s:%s" % (cap, prec, opt)] = int(est * 0.9)
    return g


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="memfit-model/1 JSON files")
    ap.add_argument("--memfit", help="memfit binary; runs `BIN model FILE --json` for each models-dir/*.memfit")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("-o", "--output", default="gpu_reference.json")
    ap.add_argument("--batches", help="measured batch sizes (default 1,8,64,256; cpu-check 1,2)")
    ap.add_argument("--precisions", default="fp32,amp-fp16")
    ap.add_argument("--optimizers", default="sgd-momentum,adam")
    ap.add_argument("--impl", default="default", help="optimizer impl: default|foreach|fused|for-loop")
    ap.add_argument("--iters", type=int, default=3, help="iterations per config; the last is steady state")
    ap.add_argument("--caps-gib", default="8,16")
    ap.add_argument("--maxbatch-configs", default="fp32:adam,fp32:sgd-momentum,amp-fp16:adam",
                    help="precision:optimizer pairs searched under each cap, in priority order")
    ap.add_argument("--maxbatch-limit", type=int, default=1 << 24)
    ap.add_argument("--rel-tol", type=float, default=0.01, help="max-batch search stops at hi-lo <= max(1, tol*lo)")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--measure-share", type=float, default=0.5,
                    help="fraction of the budget the measure phase may use before max-batch starts")
    ap.add_argument("--cpu-check", action="store_true")
    ap.add_argument("--no-maxbatch", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        with open(args.worker) as f:
            cfg = json.load(f)
        if cfg["phase"] == "context":
            res = worker_context(cfg)
            with open(cfg["out"], "w") as f:
                json.dump(res, f)
        else:
            worker_models(cfg)
        return

    start = time.time()
    end = start + args.budget_s - 5
    batches = [int(b) for b in (args.batches or ("1,2" if args.cpu_check else "1,8,64,256")).split(",") if b]
    caps = [float(c) if "." in c else int(c) for c in args.caps_gib.split(",") if c]
    tmpdir = tempfile.mkdtemp(prefix="memfit_gpuref_")
    models = load_models(args, tmpdir)
    base_cfg = {"cpu_check": args.cpu_check, "batches": batches, "precisions": args.precisions.split(","),
                "optimizers": args.optimizers.split(","), "impl": args.impl, "iters": args.iters,
                "caps_gib": caps, "maxbatch_configs": args.maxbatch_configs.split(","),
                "maxbatch_limit": args.maxbatch_limit, "rel_tol": args.rel_tol}

    nv = Nvml() if not args.cpu_check else None
    out = {
        "format": "memfit-gpu-reference/1",
        "generated_by": " ".join(["python3"] + sys.argv),
        "cpu_check": args.cpu_check,
        "device_kind": "cpu (--cpu-check: CUDA-only numbers are null)" if args.cpu_check else "cuda",
        "training_loop": None,
        "settings": dict(base_cfg, budget_s=args.budget_s, measure_share=args.measure_share,
                         grad_scaler=False, autocast_scope="forward+loss",
                         isolation="one fresh process per model per phase; context in its own process",
                         notes=[
                             "amp-fp16 = torch.autocast(cuda, float16) around forward and loss, no GradScaler; "
                             "on --cpu-check it is autocast(cpu, bfloat16).",
                             "Iteration peaks: reset_peak_memory_stats() right before each iteration; "
                             "'start' is memory_allocated at that moment: from iteration 2 on it still includes the previous "
                             "iteration's gradients (zero_grad(set_to_none=True) frees them inside the step) "
                             "and the optimizer state.",
                             "On --cpu-check, CPU bf16 autocast in torch 1.13 lacks some backward kernels "
                             "(e.g. hardtanh/relu6); such runs are recorded with status 'error'.",
                             "base = memory at the start of a config inside a worker process; later configs in "
                             "the same process may see cuBLAS workspaces left allocated by earlier ones.",
                             "Max-batch caps use set_per_process_memory_fraction(cap/total): limits the "
                             "caching allocator (reserved memory) only, not the CUDA context.",
                         ]),
        "nvml": nv.info() if nv else None,
        "models": [],
        "skipped": [],
        "workers": [],
    }
    import memfit_torch as mt
    out["training_loop"] = mt.TRAINING_LOOP

    # context (fresh process, before anything else touches the GPU)
    ctx, rec = spawn(dict(base_cfg, phase="context"), tmpdir, min(end, time.time() + 60), "context")
    out["context"] = ctx
    out["workers"].append(dict(rec, phase="context"))
    if ctx:
        out["torch_version"] = ctx.get("torch_version")
        out["gpu"] = ctx.get("gpu")
        out["cuda_version"] = ctx.get("cuda_version")
        out["cudnn_version"] = ctx.get("cudnn_version")

    measure_end = min(end, start + args.budget_s * args.measure_share) if not args.no_maxbatch else end
    entries = []
    for i, (src, path, m) in enumerate(models):
        net = mt.build_module(m)
        entry = {"name": m.get("name"), "source": src, "params": mt.param_count(net),
                 "buffer_bytes": mt.buffer_bytes(net), "runs": [], "max_batch": [], "skipped": []}
        entries.append(entry)
        out["models"].append(entry)
        # share the remaining measure time evenly over the remaining models
        now = time.time()
        dl = now + (measure_end - now) / (len(models) - i)
        if dl - now < 3:
            entry["skipped"].append({"phase": "measure", "reason": "time budget"})
            continue
        res, rec = spawn(dict(base_cfg, phase="measure", model_path=path), tmpdir, dl, "measure_%d" % i)
        out["workers"].append(dict(rec, phase="measure", model=entry["name"]))
        if res:
            entry["runs"] = res["runs"]
            entry["skipped"] += [dict(s, phase="measure") for s in res["skipped"]]
            entry["settings"] = res["settings"]
        write(out, args.output, start)

    if not args.no_maxbatch:
        for i, (src, path, m) in enumerate(models):
            entry = entries[i]
            now = time.time()
            dl = now + (end - now) / (len(models) - i)
            if dl - now < 8:
                entry["skipped"].append({"phase": "maxbatch", "reason": "time budget"})
                continue
            g = guesses_from_runs(entry["runs"], caps) if not args.cpu_check else {}
            res, rec = spawn(dict(base_cfg, phase="maxbatch", model_path=path, guesses=g), tmpdir, dl,
                             "maxbatch_%d" % i)
            out["workers"].append(dict(rec, phase="maxbatch", model=entry["name"]))
            if res:
                entry["max_batch"] = res["max_batch"]
                entry["skipped"] += [dict(s, phase="maxbatch") for s in res["skipped"]]
            write(out, args.output, start)
    for e in entries:
        out["skipped"] += [dict(s, model=e["name"]) for s in e["skipped"]]
    write(out, args.output, start)
    shutil.rmtree(tmpdir, ignore_errors=True)
    print("wrote %s (%.1f s)" % (args.output, time.time() - start))


def write(out, path, start):
    out["elapsed_s"] = round(time.time() - start, 3)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
