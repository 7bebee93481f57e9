// Runs the memfit WebAssembly module off the main thread, so typing never waits for an estimate.
// Message in: {id, request} (a request object for memfit::handle_request). Message out:
// {id, text, ms} (the core's JSON text, and the time spent inside the module call) or {id, fatal}.
import createMemfit from './memfit.mjs';

const ready = createMemfit();
self.onmessage = async (ev) => {
  const { id, request } = ev.data;
  try {
    const mod = await ready;
    const t0 = performance.now();
    const text = mod.request(typeof request === 'string' ? request : JSON.stringify(request));
    self.postMessage({ id, text, ms: performance.now() - t0 });
  } catch (e) {
    self.postMessage({ id, fatal: String((e && e.message) || e) });
  }
};
