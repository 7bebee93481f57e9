// The page's link to the WebAssembly module: one shared worker per page, promise-based requests.
// Every number on the page comes from the core's JSON (memfit::handle_request); nothing is recomputed here.
const base = new URL('.', import.meta.url);
let worker = null;
let nextId = 1;
const pending = new Map();

function getWorker() {
  if (worker) return worker;
  worker = new Worker(new URL('memfit-worker.js', base), { type: 'module' });
  worker.onmessage = (ev) => {
    const { id, text, ms, fatal } = ev.data;
    const p = pending.get(id);
    if (!p) return;
    pending.delete(id);
    if (fatal) p.reject(new Error(fatal));
    else {
      let result;
      try { result = JSON.parse(text); } catch (e) { p.reject(e); return; }
      p.resolve({ result, text, ms });
    }
  };
  worker.onerror = (ev) => {
    for (const p of pending.values()) p.reject(new Error(ev.message || 'the memfit module failed to load'));
    pending.clear();
  };
  return worker;
}

// Start the worker (and with it the module's download and compilation) as soon as the page imports us.
if (typeof window !== 'undefined') getWorker();

/**
 * Sends a request ({command, model, options, ...}); resolves to {result, text, ms}. A request with
 * `onnx` (a File or Blob of an .onnx model) instead of `model` is read by the worker from that file.
 */
export function request(req) {
  const w = getWorker();
  const id = nextId++;
  const { onnx, ...rest } = req;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, sentAt: performance.now() });
    w.postMessage(onnx ? { id, request: rest, file: onnx } : { id, request: req });  // a File is passed by reference
  });
}

/**
 * Drops work nobody waits for: when the oldest unanswered request (the one the worker is running:
 * it answers in order) has run for at least minMs, the worker is terminated and a fresh one started;
 * every unanswered request is rejected with an error whose `superseded` is true. Returns whether it
 * did. A big model's sweep can take seconds; the page calls this before each new run.
 */
export function cancelStale(minMs = 300) {
  if (!worker || pending.size === 0) return false;
  let oldest = Infinity;
  for (const p of pending.values()) oldest = Math.min(oldest, p.sentAt);
  if (performance.now() - oldest < minMs) return false;
  worker.terminate();
  worker = null;
  const err = Object.assign(new Error('superseded by a newer request'), { superseded: true });
  for (const p of pending.values()) p.reject(err);
  pending.clear();
  getWorker();
  return true;
}

let modelsPromise = null;
let opsPromise = null;
/** The op registry (memfit ops --json): [{kind, aliases, family, pytorch, summary, attrs, ...}]. */
export function opRegistry() {
  opsPromise ??= request({ command: 'ops' }).then((r) => r.result.ops, (e) => { opsPromise = null; throw e; });
  return opsPromise;
}
let gpusPromise = null;
/** Builtin models (models/*.memfit): [{name, text}]. */
export function builtinModels() {
  modelsPromise ??= request({ command: 'models' }).then((r) => r.result.models);
  return modelsPromise;
}
/** The GPU catalog: [{name, memory_bytes, cuda_total_bytes, ...}]. */
export function gpuCatalog() {
  gpusPromise ??= request({ command: 'gpus' }).then((r) => r.result.gpus);
  return gpusPromise;
}
