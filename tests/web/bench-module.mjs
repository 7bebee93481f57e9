// The same estimate requests timed natively (memfit::handle_request, tests/web/request_bench.cpp) and in the
// WebAssembly module under Node (build-wasm/node/memfit-node.cjs), after warm-up; prints both and the ratio.
// Usage: tools/bench-wasm.sh (builds both), or node tests/web/bench-module.mjs NATIVE_BENCH_BINARY [runs]
// Writes test-artifacts/bench-module.json. Requests: tests/web/bench-requests.json ("@name" = models/name.memfit).
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { ROOT, ARTIFACTS } from './lib.mjs';

const nativeBin = process.argv[2] || path.join(ROOT, 'build/request_bench');
const runs = Number(process.argv[3] || 200);
const reqs = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests/web/bench-requests.json'), 'utf8')).map((r) => {
  const m = /^@(.+)$/.exec(r.request.model || '');
  if (m) r.request.model = fs.readFileSync(path.join(ROOT, 'models', `${m[1]}.memfit`), 'utf8');
  return r;
});
fs.mkdirSync(ARTIFACTS, { recursive: true });
const expanded = path.join(ARTIFACTS, 'bench-requests.expanded.json');
fs.writeFileSync(expanded, JSON.stringify(reqs));

const nat = spawnSync(nativeBin, [expanded, String(runs)], { encoding: 'utf8' });
if (nat.status !== 0) { console.error(`native bench failed (${nativeBin}): ${nat.stderr || nat.error}`); process.exit(1); }
const native = Object.fromEntries(nat.stdout.trim().split('\n').map((l) => { const j = JSON.parse(l); return [j.name, j]; }));

const modulePath = process.env.MEMFIT_NODE_MODULE || path.join(ROOT, 'build-wasm/node/memfit-node.cjs');
const createMemfit = (await import(modulePath)).default;
const mod = await createMemfit();
const out = [];
for (const { name, request } of reqs) {
  const text = JSON.stringify(request);
  for (let i = 0; i < 20; i++) mod.request(text);
  const ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    mod.request(text);
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  const w = ms[ms.length >> 1], n = native[name].median_ms;
  out.push({ name, native_ms: +n.toFixed(4), wasm_ms: +w.toFixed(4), ratio: +(w / n).toFixed(2), wasm_min_ms: +ms[0].toFixed(4), native_min_ms: native[name].min_ms });
}
console.log(`request (median of ${runs} after 20 warm-up)`.padEnd(44) + 'native ms'.padStart(11) + 'wasm ms'.padStart(11) + 'ratio'.padStart(8));
for (const r of out) console.log(r.name.padEnd(44) + r.native_ms.toFixed(3).padStart(11) + r.wasm_ms.toFixed(3).padStart(11) + `${r.ratio.toFixed(2)}x`.padStart(8));
fs.writeFileSync(path.join(ARTIFACTS, 'bench-module.json'), JSON.stringify({ node: process.version, runs, results: out }, null, 2));
