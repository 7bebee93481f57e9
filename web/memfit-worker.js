// Runs the memfit WebAssembly module off the main thread, so typing never waits for an estimate.
// Message in: {id, request} (a request object for memfit::handle_request). Message out:
// {id, text, ms} (the core's JSON text, and the time spent inside the module call) or {id, fatal}.
// With `file` (a dropped .onnx File), the model is read from it through the module's byte source: the
// parser asks for byte ranges, read here with FileReaderSync on Blob.slice, so a 500 MB file is never
// copied whole (only the protobuf structure is; the weights are skipped).
import createMemfit from './memfit.mjs';

const ready = createMemfit();

/** A byte source over a Blob for the module (wasm/bindings.cpp JsByteSource): read() never throws. */
export function blobReader(blob) {
  const fr = new FileReaderSync();
  return {
    size: () => blob.size,
    read: (offset, n) => {
      try {
        return new Uint8Array(fr.readAsArrayBuffer(blob.slice(offset, offset + n)));
      } catch {
        return null;
      }
    },
  };
}
self.onmessage = async (ev) => {
  const { id, request, file } = ev.data;
  try {
    const mod = await ready;
    const t0 = performance.now();
    const req = typeof request === 'string' ? request : JSON.stringify(request);
    const text = file ? mod.request_onnx(req, blobReader(file), file.name || 'model.onnx') : mod.request(req);
    self.postMessage({ id, text, ms: performance.now() - t0 });
  } catch (e) {
    self.postMessage({ id, fatal: String((e && e.message) || e) });
  }
};
