// The same estimate requests timed natively (memfit::handle_request, tests/web/request_bench.cpp) and in the
// WebAssembly module under Node (build-wasm/node/memfit-node.cjs), after warm-up; prints both and the ratio.
// Usage: tools/bench-wasm.sh (builds both), or node tests/web/bench-module.mjs NATIVE_BENCH_BINARY [runs]
// Writes test-artifacts/bench-module.json. Requests: tests/web/bench-requests.json ("@name" = models/name.memfit,
// "@hf/name" = models/hf/name.json). Env BENCH_ONLY: a regular expression on the request names to run.
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { ROOT, ARTIFACTS } from './lib.mjs';

const nativeBin = process.argv[2] || path.join(ROOT, 'build/request_bench');
const runs = Number(process.argv[3] || 200);
const reqs = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests/web/bench-requests.json'), 'utf8')).map((r) => {
  const m = /^@(.+)$/.exec(r.request.model || '');
  // "@name": models/name.memfit; "@hf/name": the Hugging Face config models/hf/name.json
  if (m) r.request.model = fs.readFileSync(path.join(ROOT, 'models', m[1].startsWith('hf/') ? `${m[1]}.json` : `${m[1]}.memfit`), 'utf8');
  return r;
}).filter((r) => !process.env.BENCH_ONLY || new RegExp(process.env.BENCH_ONLY).test(r.name));
fs.mkdirSync(ARTIFACTS, { recursive: true });
const expanded = path.join(ARTIFACTS, 'bench-requests.expanded.json');
fs.writeFileSync(expanded, JSON.stringify(reqs));

const modulePath = path.resolve(process.env.MEMFIT_NODE_MODULE || path.join(ROOT, 'build-wasm/node/memfit-node.cjs'));
const createMemfit = (await import(modulePath)).default;
const mod = await createMemfit();
// warm-up: every request for about 2 s, so V8 has tiered the module up (Liftoff -> TurboFan) before timing
const warmEnd = performance.now() + 2000;
while (performance.now() < warmEnd) for (const { request } of reqs) mod.request(JSON.stringify(request));

// Native and module take turns (ROUNDS rounds of runs/ROUNDS calls each), so both see the same load on a
// shared machine. Reported: the median of all calls and the fastest call, both ways.
const ROUNDS = 8;
const per = Math.max(5, Math.round(runs / ROUNDS));
const times = Object.fromEntries(reqs.map((r) => [r.name, { native: [], wasm: [] }]));
for (let round = 0; round < ROUNDS; round++) {
  const nat = spawnSync(nativeBin, [expanded, String(per)], { encoding: 'utf8' });
  if (nat.status !== 0) { console.error(`native bench failed (${nativeBin}): ${nat.stderr || nat.error}`); process.exit(1); }
  for (const l of nat.stdout.trim().split('\n')) { const j = JSON.parse(l); times[j.name].native.push(...j.ms); }
  for (const { name, request } of reqs) {
    const text = JSON.stringify(request);
    for (let i = 0; i < per; i++) {
      const t0 = performance.now();
      mod.request(text);
      times[name].wasm.push(performance.now() - t0);
    }
  }
}
const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
const out = reqs.map(({ name }) => {
  const t = times[name];
  const n = med(t.native), w = med(t.wasm), nmin = Math.min(...t.native), wmin = Math.min(...t.wasm);
  return { name, native_ms: +n.toFixed(4), wasm_ms: +w.toFixed(4), ratio: +(w / n).toFixed(2), native_min_ms: +nmin.toFixed(4), wasm_min_ms: +wmin.toFixed(4), ratio_min: +(wmin / nmin).toFixed(2) };
});
console.log(`module: ${path.relative(ROOT, modulePath)}; ${ROUNDS * per} calls each way, taking turns, after warm-up`);
console.log('request'.padEnd(32) + 'native ms'.padStart(11) + 'wasm ms'.padStart(10) + 'ratio'.padStart(8) + '  | fastest: native'.padStart(18) + 'wasm'.padStart(9) + 'ratio'.padStart(8));
for (const r of out) {
  console.log(r.name.padEnd(32) + r.native_ms.toFixed(3).padStart(11) + r.wasm_ms.toFixed(3).padStart(10) + `${r.ratio.toFixed(2)}x`.padStart(8)
    + r.native_min_ms.toFixed(3).padStart(18) + r.wasm_min_ms.toFixed(3).padStart(9) + `${r.ratio_min.toFixed(2)}x`.padStart(8));
}
fs.writeFileSync(path.join(ARTIFACTS, 'bench-module.json'), JSON.stringify({ node: process.version, module: modulePath, calls: ROUNDS * per, results: out }, null, 2));
