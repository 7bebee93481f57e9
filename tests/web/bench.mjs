// Measures the web calculator (not asserted; the numbers go into docs/web.md):
//   - bytes the page transfers (every file the full page loads), raw and gzipped (gzip -9);
//   - time to first verdict after navigation (performance.now() when the verdict is drawn), fresh loads;
//   - re-estimate time after an edit: the WebAssembly call (performance.now() around module.request in the
//     worker), for question_cnn and resnet50 (when models/resnet50.memfit exists).
// Usage: tools/build-web.sh && node tests/web/bench.mjs   (writes test-artifacts/bench.json)
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { serve, launch, DIST, ARTIFACTS, ROOT } from './lib.mjs';

const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor((s.length - 1) / 2)]; };
const srv = await serve();
const { ctx, close } = await launch();
const out = { chromium: null, files: {}, load: [], reestimate: {} };

// 1. transferred bytes + 2. time to first verdict
const loaded = new Set();
for (let i = 0; i < 7; i++) {
  const page = await ctx.newPage();
  page.on('request', (r) => loaded.add(new URL(r.url()).pathname));
  await page.goto(srv.url);
  await page.waitForFunction(() => window.memfitPerf && window.memfitPerf.firstVerdictAt != null, null, { timeout: 30000 });
  const t = await page.evaluate(() => ({ verdict: window.memfitPerf.firstVerdictAt, first: window.memfitPerf.calls[0].ms }));
  if (i > 0) out.load.push(t);  // the first load warms the browser's own caches (code cache off: no-cache headers)
  out.chromium ??= await page.evaluate(() => navigator.userAgent.match(/Chrom\w+\/[\d.]+/)[0]);
  await page.close();
}
let raw = 0, gz = 0;
for (const p of [...loaded].sort()) {
  const f = path.join(DIST, p === '/' ? 'index.html' : p);
  if (!fs.existsSync(f)) continue;
  const data = fs.readFileSync(f);
  const g = zlib.gzipSync(data, { level: 9 }).length;
  out.files[path.basename(f)] = { bytes: data.length, gzip: g };
  raw += data.length; gz += g;
}
out.total = { bytes: raw, gzip: gz };

// 3. re-estimate after an edit
async function reestimate(model, edit) {
  const page = await ctx.newPage();
  await page.goto(`${srv.url}#model=${model}&batch=32&gpu=RTX%203090`);
  const idle = () => page.waitForFunction(() => { const c = window.memfitPerf.calls; return c.length && c[c.length - 1].kind === 'sweep'; }, null, { timeout: 60000 });
  await idle();
  const base = await page.locator('[data-r="text"]').inputValue();
  const module = [], ui = [];
  for (let i = 0; i < 12; i++) {
    // the edit as a person makes it: the textarea's value changes and it fires 'input'
    const r = await page.evaluate(async ([src, i]) => {
      const ta = document.querySelector('[data-r="text"]');
      const n0 = window.memfitPerf.calls.length;
      const t0 = performance.now();
      ta.value = src;
      ta.dispatchEvent(new Event('input'));
      let c;
      while (!(c = window.memfitPerf.calls.slice(n0).find((x) => x.kind === 'estimate'))) await new Promise((r) => setTimeout(r, 2));
      return { ms: c.ms, ui: c.at - t0 };
    }, [edit(base, i), i]);
    module.push(r.ms);
    ui.push(r.ui);
    await idle();
  }
  await page.close();
  return { module_ms_median: +median(module).toFixed(2), module_ms_min: +Math.min(...module).toFixed(2), module_ms_max: +Math.max(...module).toFixed(2),
    edit_to_result_ms_median: +median(ui).toFixed(1), note: 'edit_to_result: from the input event to the result back on the page, including the 150 ms typing debounce' };
}
out.reestimate.question_cnn = await reestimate('question_cnn', (t, i) => t.replace('fc1: fc 500', `fc1: fc ${500 + i}`));
if (fs.existsSync(path.join(ROOT, 'models/resnet50.memfit'))) {
  out.reestimate.resnet50 = await reestimate('resnet50', (t, i) => `${t}\n# edit ${i}\n`);
}
out.first_verdict_ms_median = +median(out.load.map((l) => l.verdict)).toFixed(0);
out.first_estimate_call_ms_median = +median(out.load.map((l) => l.first)).toFixed(1);
await close();
await srv.close();
fs.mkdirSync(ARTIFACTS, { recursive: true });
fs.writeFileSync(path.join(ARTIFACTS, 'bench.json'), JSON.stringify(out, null, 2));
console.log(JSON.stringify(out, null, 2));
