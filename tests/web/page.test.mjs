// The page's layout, numbers, inputs, remedies, comparisons, exports and embedding in headless Chromium
// (playwright-core + /usr/bin/chromium), one test per point of the web issue. Each test checks what a
// person sees (positions, sizes, texts), so it fails on a page that gets the point wrong:
// MEMFIT_WEB_DIST=/path/to/an/older/dist node --test tests/web/page.test.mjs runs them against another build.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { serve, launch, ARTIFACTS, ROOT } from './lib.mjs';

let srv, br;
const consoleErrors = [];
fs.mkdirSync(ARTIFACTS, { recursive: true });

before(async () => {
  srv = await serve();
  br = await launch({ colorScheme: 'light' });
});
after(async () => {
  await br?.close();
  await srv?.close();
});

async function open(hash = '', viewport = { width: 1440, height: 900 }, name = 'page', file = '') {
  const page = await br.ctx.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`${name}: ${m.text()}`); });
  page.on('pageerror', (e) => consoleErrors.push(`${name}: page error: ${e.message}`));
  await page.setViewportSize(viewport);
  await page.goto(`${srv.url}${file}${hash}`);
  return page;
}
const idle = (page) => page.waitForFunction(() => {
  const c = window.memfitPerf && window.memfitPerf.calls;
  return c && c.length && c[c.length - 1].kind === 'sweep';
}, null, { timeout: 60000 });
const ready = (page) => page.waitForSelector('[data-r="params"]', { timeout: 30000 });
const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
const box = (page, sel) => page.locator(sel).first().boundingBox();
const verdict = (page) => page.locator('[data-r="verdict"]').innerText();
async function waitVerdict(page, re) {
  await page.waitForFunction((src) => new RegExp(src).test(document.querySelector('[data-r="verdict"]').innerText), re.source, { timeout: 30000 });
}

test('1 layout: resnet50 at 1440x900, the editor scrolls at a fixed height and the verdict is on screen beside the settings', async () => {
  const page = await open('#model=resnet50&batch=64&gpu=RTX%203090', { width: 1440, height: 900 }, 'layout');
  await ready(page);
  await page.waitForSelector('[data-r="maxBatch"]', { timeout: 30000 });
  const ed = await box(page, '.editor');
  const ta = await page.locator('[data-r="text"]').evaluate((t) => ({ scroll: t.scrollHeight, client: t.clientHeight }));
  assert.ok(ed.height < 600, `editor ${ed.height} px high`);
  assert.ok(ta.scroll > ta.client, 'the textarea scrolls (resnet50 has more lines than fit)');
  // the whole verdict (fits, peak, headroom, largest batch) is inside the first screen, right of the editor
  const v = await box(page, '[data-r="verdict"]');
  assert.ok(v.y + v.height <= 900, `verdict ends at ${v.y + v.height} px`);
  assert.ok(v.x >= ed.x + ed.width, 'the verdict sits beside the editor');
  for (const r of ['verdictText', 'peakReserved', 'headroom', 'maxBatch']) {
    const b = await box(page, `[data-r="${r}"]`);
    assert.ok(b && b.y >= 0 && b.y + b.height <= 900, `${r} on screen`);
  }
  // while editing at the end of the model, the verdict stays in view
  await page.locator('[data-r="text"]').focus();
  await page.keyboard.press('Control+End');
  await page.keyboard.type('\n# an edit at the end\n');
  await page.waitForTimeout(400);
  const v2 = await box(page, '[data-r="verdict"]');
  const caret = await box(page, '[data-r="text"]');
  assert.ok(v2.y >= 0 && v2.y + v2.height <= 900 && caret.y + caret.height <= 900, 'editor and verdict both in view');
  await page.screenshot({ path: path.join(ARTIFACTS, 'page-resnet50-desktop.png') });
  await page.close();
});

// every text of every chart is drawn at >= 11 CSS px and lies inside its chart
async function chartText(page) {
  return page.evaluate(() => [...document.querySelectorAll('.charts svg')].map((svg) => {
    const vb = svg.viewBox.baseVal;
    const r = svg.getBoundingClientRect();
    const scale = vb && vb.width ? r.width / vb.width : 1;
    return [...svg.querySelectorAll('text')].map((t) => {
      const b = t.getBoundingClientRect();
      return { text: t.textContent, px: parseFloat(getComputedStyle(t).fontSize) * scale, inside: b.left >= r.left - 1 && b.right <= r.right + 1 && b.top >= r.top - 1 && b.bottom <= r.bottom + 1 };
    });
  }));
}

test('2 phone 390x844: chart text is at least 11 px and inside its chart', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', { width: 390, height: 844 }, 'phone');
  await ready(page);
  await idle(page);
  const charts = await chartText(page);
  assert.equal(charts.length, 3);
  for (const texts of charts) {
    assert.ok(texts.length > 3);
    for (const t of texts) {
      assert.ok(t.px >= 11, `“${t.text}” drawn at ${t.px.toFixed(1)} px`);
      assert.ok(t.inside, `“${t.text}” sticks out of its chart`);
    }
  }
  await page.locator('.charts').screenshot({ path: path.join(ARTIFACTS, 'page-phone-charts.png') });
  await page.close();
});

async function sweepGeometry(page) {
  return page.evaluate(() => {
    const svg = document.querySelector('[data-r="sweep"] svg');
    const texts = [...svg.querySelectorAll('text')].map((t) => { const q = t.getBBox(); return { text: t.textContent, cls: t.getAttribute('class') || '', b: { x: q.x, y: q.y, width: q.width, height: q.height } }; });
    const lines = [...svg.querySelectorAll('polyline')].map((p) => [...p.points].map((q) => [q.x, q.y]));
    const axis = svg.querySelector('line.axis');
    const cur = svg.querySelector('circle.cur');
    const vb = svg.viewBox.baseVal;
    return { texts, lines, vb: { w: vb.width, h: vb.height }, plot: axis ? [axis.x1.baseVal.value, axis.x2.baseVal.value] : null, cur: cur ? cur.cx.baseVal.value : null };
  });
}
const inter = (a, b) => a.x < b.x + b.width - 1 && b.x < a.x + a.width - 1 && a.y < b.y + b.height - 1 && b.y < a.y + a.height - 1;
function hitsLine(b, pts) {
  for (let i = 1; i < pts.length; i++) {
    for (let k = 0; k <= 50; k++) {
      const x = pts[i - 1][0] + ((pts[i][0] - pts[i - 1][0]) * k) / 50, y = pts[i - 1][1] + ((pts[i][1] - pts[i - 1][1]) * k) / 50;
      if (x > b.x + 1 && x < b.x + b.width - 1 && y > b.y + 1 && y < b.y + b.height - 1) return true;
    }
  }
  return false;
}

test('3 sweep chart: labels never collide or sit on the lines, ticks are whole, the chosen batch is visible', async () => {
  for (const [hash, name] of [['#model=question_cnn&batch=100000&gpu=RTX%203060%2012GB', 'sweep-100000'], ['#model=question_cnn&batch=64&gpu=RTX%203060%2012GB', 'sweep-64']]) {
    const page = await open(hash, { width: 1440, height: 900 }, name);
    await ready(page);
    await idle(page);
    const g = await sweepGeometry(page);
    // no two texts overlap; every text inside the chart
    for (let i = 0; i < g.texts.length; i++) {
      const a = g.texts[i];
      assert.ok(a.b.x >= -1 && a.b.x + a.b.width <= g.vb.w + 1, `${name}: “${a.text}” is cut at the chart's edge (${JSON.stringify(a.b)} in ${JSON.stringify(g.vb)})`);
      for (let j = i + 1; j < g.texts.length; j++) assert.ok(!inter(a.b, g.texts[j].b), `${name}: “${a.text}” overlaps “${g.texts[j].text}”`);
    }
    // the labels of the marks keep off the data lines
    const marks = g.texts.filter((t) => /GPU usable|largest batch/.test(t.text) && /(limit|maxb)lbl/.test(t.cls));
    assert.ok(marks.some((t) => /largest batch/.test(t.text)), `${name}: the largest batch is labelled`);
    for (const t of marks) for (const l of g.lines) assert.ok(!hitsLine(t.b, l), `${name}: a line runs through “${t.text}”`);
    // the chosen batch is a visible point, not a dot at the origin
    assert.ok(g.cur != null, `${name}: the chosen batch is marked`);
    const frac = (g.cur - g.plot[0]) / (g.plot[1] - g.plot[0]);
    assert.ok(frac > 0.15 && frac <= 1, `${name}: the chosen batch sits at ${(100 * frac).toFixed(1)}% of the axis`);
    await page.locator('[data-r="sweep"]').screenshot({ path: path.join(ARTIFACTS, `page-${name}.png`) });
    await page.close();
  }
});

test('4 numbers agree: the timeline peaks at the verdict\'s peak; the breakdown says why it differs from the table', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', undefined, 'numbers');
  await ready(page);
  await idle(page);
  const v = await verdict(page);
  const peak = /Peak ([\d.]+ [KMG]iB) reserved/.exec(v)[1];
  assert.equal(peak, '158.0 MiB');
  const tl = await page.locator('[data-r="timeline"] svg').evaluate((s) => s.getAttribute('aria-label') + ' ' + s.textContent);
  const tops = [...tl.matchAll(/peak reserved ([\d.]+ [KMG]iB)/g)].map((m) => m[1]);
  assert.ok(tops.length && tops.every((t) => t === peak), `timeline says peak reserved ${tops.join(', ')}, the verdict ${peak}`);
  // the breakdown's figures are explained against the per-layer table's (allocator blocks vs exact bytes,
  // live at the peak vs saved over the step)
  const sec = await page.locator('section', { has: page.locator('[data-r="breakdown"]') }).innerText();
  assert.match(sec, /Parameters 18\.1 MiB[\s\S]*512 B[\s\S]*4,632,902 values = 17\.7 MiB/);
  assert.match(sec, /Saved activations 48\.9 MiB[\s\S]*alive at the peak[\s\S]*50\.8 MiB/);
  const tfoot = await page.locator('[data-r="layers"] tfoot').innerText();
  assert.match(tfoot, /50\.8 MiB/);
  // the timeline says which iteration each peak is in
  assert.match(await page.locator('[data-r="timelineNote"]').innerText(), /iteration 1: 116\.1 MiB allocated, 138\.0 MiB reserved; iteration 2: [\d.]+ MiB allocated, 158\.0 MiB reserved/);
  await page.close();
});

test('5 GPU sizes: the dropdown shows the size used, a bare number is refused, usable memory is one visible line', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', undefined, 'gpu');
  await ready(page);
  const label = await page.locator('[data-r="gpu"] option[value="RTX 3090"]').innerText();
  assert.match(label, /23\.59 GiB/, `dropdown: ${label}`);
  const line = await page.locator('[data-r="usableLine"]').innerText();
  assert.match(line, /^Usable 23\.17 GiB = RTX 3090: 23\.59 GiB visible to CUDA − 426\.0 MiB CUDA context$/);
  assert.ok(await page.locator('[data-r="usableLine"]').isVisible());
  // a custom size in decimal GB: its bytes are in the line
  await page.locator('[data-r="gpu"]').selectOption('__custom__');
  await page.locator('[data-r="gpuCustom"]').fill('12GB');
  await waitVerdict(page, /12GB = 12,000,000,000 bytes = 11\.18 GiB visible to CUDA/);
  // a bare number: refused inline, no "-426.0 MiB usable"
  await page.locator('[data-r="gpuCustom"]').fill('8');
  const err = page.locator('[data-r="gpuErr"]');
  await err.waitFor({ state: 'visible', timeout: 10000 });
  assert.match(await err.innerText(), /8GiB[\s\S]*8GB/);
  assert.equal(await page.locator('[data-r="gpuCustom"]').getAttribute('aria-invalid'), 'true');
  await page.waitForTimeout(500);
  assert.doesNotMatch(await verdict(page), /−426\.0 MiB usable|-426\.0 MiB usable/);
  assert.match(await page.locator('[data-r="verdict"]').getAttribute('class'), /stale/);
  await err.locator('button', { hasText: '8GiB' }).click();
  await waitVerdict(page, /Usable 7\.58 GiB = 8GiB = 8,589,934,592 bytes/);
  assert.equal(await err.isVisible(), false);
  await page.close();
});

test('6 batch size: 0, -5, empty, 2.7 and 99999999 get an inline message and the result is marked stale', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', undefined, 'batch');
  await ready(page);
  await idle(page);
  const input = page.locator('[data-r="batch"]');
  const err = page.locator('[data-r="batchErr"]');
  for (const [v, re] of [['0', /at least 1/], ['-5', /at least 1/], ['', /Enter a batch size/], ['2.7', /whole number/], ['99999999', /up to 10,000,000/]]) {
    await input.fill(v);
    await err.waitFor({ state: 'visible', timeout: 10000 });
    assert.match(await err.innerText(), re, `batch “${v}”`);
    assert.equal(await input.inputValue(), v, 'the field keeps what was typed');
    assert.equal(await input.getAttribute('aria-invalid'), 'true');
    assert.match(await page.locator('[data-r="verdict"]').getAttribute('class'), /stale/, `batch “${v}”: the old result is marked`);
    assert.match(await page.locator('[data-r="stale"]').innerText(), /Last good result[\s\S]*batch size/);
  }
  await input.fill('32');
  await waitVerdict(page, /batch 32 ·/);
  assert.equal(await err.isVisible(), false);
  assert.doesNotMatch(await page.locator('[data-r="verdict"]').getAttribute('class'), /stale/);
  await page.close();
});

test('7 bad URL parameters are named in a notice', async () => {
  const page = await open('#model=question_cnn&dtype=fp8&optimizer=lion&batch=abc', undefined, 'url-bad');
  await ready(page);
  const note = page.locator('[data-r="urlNote"]');
  await note.waitFor({ state: 'visible', timeout: 10000 });
  const t = await note.innerText();
  for (const p of ['dtype=fp8', 'optimizer=lion', 'batch=abc']) assert.ok(t.includes(p), `${p} not named: ${t}`);
  assert.match(t, /fp32, fp16, bf16/);
  await page.close();
});

test('8 choosing a preset keeps the user\'s model as a draft entry, also after a reload', async () => {
  const page = await open('#model=question_cnn', undefined, 'draft');
  await ready(page);
  const editor = page.locator('[data-r="text"]');
  const mine = (await editor.inputValue()).replace('fc1: fc 500', 'fc1: fc 123   # mine');
  await editor.fill(mine);
  await page.waitForTimeout(300);
  await page.locator('[data-r="preset"]').selectOption('lenet5');
  await page.waitForFunction(() => /model lenet5/.test(document.querySelector('[data-r="text"]').value));
  const opts = await page.locator('[data-r="preset"] option').allInnerTexts();
  assert.ok(opts.some((o) => /your model/i.test(o)), `no draft entry: ${opts.join(' | ')}`);
  await page.locator('[data-r="preset"]').selectOption('__draft__');
  assert.equal(await editor.inputValue(), mine);
  // another visit in the same browser still offers it
  const again = await open('#model=resnet18', undefined, 'draft-again');
  await ready(again);
  await again.locator('[data-r="preset"]').selectOption('__draft__');
  assert.equal(await again.locator('[data-r="text"]').inputValue(), mine);
  await Promise.all([page.close(), again.close()]);
});

test('9 a syntax error greys the last result out and labels it as the last good one', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', undefined, 'stale');
  await ready(page);
  const v = page.locator('[data-r="verdict"]');
  const green = await v.evaluate((e) => getComputedStyle(e).backgroundColor);
  const editor = page.locator('[data-r="text"]');
  await editor.fill((await editor.inputValue()).replace('conv2: conv 64 3x3 pad=same', 'conv2: conv 64 3x3 pad=sideways'));
  await page.locator('[data-r="err"]').waitFor({ state: 'visible', timeout: 20000 });
  assert.match(await v.getAttribute('class'), /stale/);
  const label = page.locator('[data-r="stale"]');
  assert.ok(await label.isVisible());
  assert.match(await label.innerText(), /^Last good result, not for the current input: the model has an error at line \d+$/);
  const st = await v.evaluate((e) => ({ bg: getComputedStyle(e).backgroundColor, big: getComputedStyle(e.querySelector('.big')).color, filter: getComputedStyle(e.querySelector('.big')).filter }));
  assert.notEqual(st.bg, green, 'no longer green');
  assert.match(st.filter, /grayscale/);
  await shot(page, 'page-stale');
  await page.close();
});

test('10 remedies: the ones that fit first, the others labelled partial with an Apply button', async () => {
  const page = await open('#model=resnet50&batch=256&optimizer=adam&gpu=T4', undefined, 'remedies');
  await ready(page);
  const rem = page.locator('[data-r="remedies"]');
  await rem.waitFor({ state: 'visible', timeout: 30000 });
  const items = await rem.locator('li').evaluateAll((ls) => ls.map((l) => ({ text: l.innerText, button: !!l.querySelector('button') })));
  assert.ok(items.length >= 3);
  const fits = items.map((i) => !/still does not fit/.test(i.text));
  assert.ok(fits.indexOf(false) > 0 && fits.lastIndexOf(true) < fits.indexOf(false), `fitting remedies first: ${items.map((i) => i.text.split('\n')[0]).join(' / ')}`);
  // every remedy gets Apply: the page has a control for each (checkpointing and gradient accumulation too)
  for (const i of items) assert.ok(i.button, `no Apply button: ${i.text}`);
  for (const i of items.filter((x) => /still does not fit/.test(x.text))) assert.match(i.text, /partial/i);
  await rem.locator('li', { hasText: 'still does not fit' }).first().locator('button').click();
  await page.waitForFunction(() => document.querySelector('[data-r="optimizer"]').value !== 'adam' || document.querySelector('[data-r="impl"]').value !== 'foreach', null, { timeout: 20000 });
  await page.close();
});

test('11 which GPUs fit this: the catalog as a sortable table; one click selects a GPU', async () => {
  const page = await open('#model=question_cnn&batch=12000&gpu=RTX%203090', undefined, 'gpus');
  await ready(page);
  const n = await page.locator('[data-r="gpu"] option').count() - 1;
  await page.locator('[data-r="gpuRun"]').click();
  const rows = page.locator('[data-r="gpuRows"] tbody tr');
  await page.waitForFunction((n) => document.querySelectorAll('[data-r="gpuRows"] tbody tr').length === n, n, { timeout: 60000 });
  assert.equal(await rows.count(), n);
  const txt = await page.locator('[data-r="gpuRows"]').innerText();
  assert.match(txt, /✓ fits/);
  assert.match(txt, /✗ no/);
  await page.locator('[data-r="gpuRows"] button[data-sort="max"]').click();
  const maxes = await rows.evaluateAll((rs) => rs.map((r) => Number(r.children[4].innerText.replace(/,/g, ''))));
  const sorted = [...maxes].sort((a, b) => b - a);
  assert.deepEqual(maxes, sorted, 'sorted by largest batch');
  const pick = await rows.nth(1).getAttribute('data-gpu');
  await rows.nth(1).locator('button[data-pick]').click();
  await waitVerdict(page, new RegExp(`on ${pick.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  assert.equal(await page.locator('[data-r="gpu"]').inputValue(), pick);
  await page.close();
});

test('12 results out of the page: Markdown, per-layer CSV, the core\'s JSON', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', undefined, 'exports');
  await ready(page);
  await idle(page);
  await page.locator('button[data-export="md"]').click();
  await page.waitForFunction(() => document.querySelector('.mf').dataset.markdown);
  const md = await page.evaluate(() => document.querySelector('.mf').dataset.markdown);
  assert.match(md, /\*\*Fits\*\*: peak 158\.0 MiB reserved of 23\.17 GiB usable/);
  assert.match(md, /\| conv1 \| conv2d \|/);
  const [csvDl] = await Promise.all([page.waitForEvent('download'), page.locator('button[data-export="csv"]').click()]);
  const csv = fs.readFileSync(await csvDl.path(), 'utf8').trim().split('\n');
  assert.equal(csv[0], 'layer,kind,output_shape,output_dtype,output_bytes,params,param_bytes,saved_bytes,grad_bytes,optimizer_bytes');
  assert.equal(csv.length, 1 + 10);
  assert.match(csv.find((l) => l.startsWith('fc1,')), /,4608500,18434000,/);
  const [jsonDl] = await Promise.all([page.waitForEvent('download'), page.locator('button[data-export="json"]').click()]);
  const j = JSON.parse(fs.readFileSync(await jsonDl.path(), 'utf8'));
  assert.equal(j.totals.params, 4632902);
  assert.equal(j.peak.reserved_bytes, 165675008);
  await page.close();
});

test('13 errors are worded for the page, not the CLI', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=H900', undefined, 'wording');
  const err = page.locator('[data-r="settingsErr"]');
  await err.waitFor({ state: 'visible', timeout: 30000 });
  const t = await err.innerText();
  assert.match(t, /unknown GPU 'H900'/);
  assert.doesNotMatch(t, /memfit gpus|--gpu|--batch/);
  assert.match(t, /GPU list/);
  await page.close();
});

test('14 embedding: the iframe takes its content\'s height, view=verdict is compact, the GPU label is not cut', async () => {
  const page = await open('', { width: 1280, height: 900 }, 'embed', 'example-docs.html');
  const frame = page.frameLocator('#embed-frame');
  await frame.locator('[data-r="params"]').waitFor({ timeout: 30000 });
  await page.waitForTimeout(800);
  const sizes = await page.evaluate(() => {
    const f = document.getElementById('embed-frame');
    const d = f.contentDocument.documentElement;
    return { frame: f.getBoundingClientRect().height, content: d.scrollHeight, client: d.clientHeight };
  });
  assert.ok(Math.abs(sizes.frame - sizes.content) <= 4, `iframe ${sizes.frame} px for ${sizes.content} px of content`);
  assert.ok(sizes.content <= sizes.client + 2, 'no inner scroll bar');
  // view=verdict: settings, verdict, breakdown; no sweep
  const v = page.locator('#calc-verdict');
  await v.locator('[data-r="params"]').waitFor({ timeout: 30000 });
  assert.equal(await v.locator('[data-r="sweep"]').count(), 0);
  assert.equal(await v.locator('[data-r="breakdown"] svg').count(), 1);
  // the GPU dropdown shows its whole label
  const cut = await page.locator('#calc-cnn').locator('[data-r="gpu"]').evaluate((s) => {
    const c = document.createElement('canvas').getContext('2d');
    const cs = getComputedStyle(s);
    c.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    return { text: c.measureText(s.options[s.selectedIndex].text).width, room: s.clientWidth - parseFloat(cs.paddingLeft) - 24 };
  });
  assert.ok(cut.text <= cut.room, `label ${cut.text.toFixed(0)} px in ${cut.room.toFixed(0)} px`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'page-example-docs.png'), fullPage: true });
  // the iframe page takes view=verdict too
  const emb = await open('?model=lenet5&batch=512&gpu=T4&view=verdict', { width: 800, height: 900 }, 'embed-verdict', 'embed.html');
  await ready(emb);
  assert.equal(await emb.locator('[data-r="sweep"]').count(), 0);
  assert.equal(await emb.locator('[data-r="breakdown"] svg').count(), 1);
  assert.match(await verdict(emb), /lenet5 · batch 512/);
  await Promise.all([page.close(), emb.close()]);
});

test('15 chart details are reachable by keyboard and touch (a table per chart)', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', { width: 390, height: 844 }, 'a11y');
  await ready(page);
  await idle(page);
  for (const r of ['breakdown', 'timeline', 'sweep']) {
    const sum = page.locator(`[data-r="${r}"] details > summary`);
    assert.equal(await sum.count(), 1, `${r}: no data table`);
    await sum.focus();
    await page.keyboard.press('Enter');
    const rows = page.locator(`[data-r="${r}"] details tbody tr`);
    assert.ok(await rows.first().isVisible(), `${r}: the table opens from the keyboard`);
    assert.ok(await rows.count() >= 5);
  }
  const tl = await page.locator('[data-r="timeline"] details tbody tr').count();
  assert.equal(tl, await page.locator('[data-r="timeline"] svg circle.pt').count(), 'one row per point of the timeline');
  await page.close();
});

test('the syntax help lists every layer kind of the core\'s op registry (docs/ops.json)', async () => {
  const ops = JSON.parse(fs.readFileSync(new URL('../../docs/ops.json', import.meta.url), 'utf8')).ops;
  const page = await open('#model=question_cnn', undefined, 'ops-help');
  await ready(page);
  await page.locator('details.help summary').first().click();
  const table = page.locator('table.ops').first();
  await table.waitFor({ timeout: 30000 });
  const text = await table.innerText();
  for (const o of ops) assert.ok(text.includes(o.kind), `the help lacks ${o.kind}`);
  assert.ok(text.includes('mean'), 'a kind added to the registry shows up without editing the page');
  await page.close();
});

test('stale work is cancelled: a long request in the worker does not hold up the next one', async () => {
  // A 20,000-layer model's largest-batch search takes seconds in the module. The page calls
  // cancelStale() before each run: the worker running stale work is replaced, the stale request
  // rejects as superseded, and the next request is answered at once.
  const page = await open('#model=question_cnn', undefined, 'cancel');
  await ready(page);
  const r = await page.evaluate(async () => {
    const client = await import('./memfit-client.js');
    const big = 'model big\ninput 64\n' + Array.from({ length: 20000 }, (_, i) => (i % 2 ? 'relu' : 'fc 64')).join('\n') + '\n';
    const t0 = performance.now();
    const slow = client.request({ command: 'max-batch', model: big, options: { gpu: 'RTX 3090' } })
      .then(() => 'answered', (e) => (e.superseded ? 'superseded' : 'error: ' + e.message));
    await new Promise((res) => setTimeout(res, 500));
    const cancelled = client.cancelStale(300);
    const quick = await client.request({ command: 'estimate', model: 'input 8\nfc 2\n' });
    return { cancelled, slow: await slow, quickMs: performance.now() - t0, quickOk: !quick.result.error };
  });
  assert.equal(r.cancelled, true);
  assert.equal(r.slow, 'superseded');
  assert.equal(r.quickOk, true);
  assert.ok(r.quickMs < 5000, `the next request took ${Math.round(r.quickMs)} ms after the start`);
  await page.close();
});

// ONNX (docs/onnx.md): a picked or dropped .onnx file is read in the worker; the page's estimate JSON (its
// JSON export, the core's text as the module returned it) equals `memfit estimate FILE --json` byte for byte.
test('16 an ONNX file, picked or dropped, gives the native CLI\'s bytes', async () => {
  const dir = path.join(ROOT, 'tests/fixtures/onnx');
  const cliBin = process.env.MEMFIT_CLI || path.join(ROOT, 'build/memfit');
  const r = spawnSync(cliBin, ['estimate', 'tiny_cnn.onnx', '--json', '--timeline', '--batch', '64', '--gpu', 'RTX 3090'], { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', undefined, 'onnx');
  await ready(page);
  await idle(page);
  const exported = async () => {
    const [dl] = await Promise.all([page.waitForEvent('download'), page.locator('button[data-export="json"]').click()]);
    return fs.readFileSync(await dl.path(), 'utf8');
  };
  const onnxIdle = () => page.waitForFunction(() => {
    const c = window.memfitPerf && window.memfitPerf.calls;
    return document.querySelector('[data-r="layers"]').innerText.includes('relu2') && c[c.length - 1].kind === 'sweep';
  }, null, { timeout: 60000 });
  await page.locator('[data-r="onnxPick"]').setInputFiles(path.join(dir, 'tiny_cnn.onnx'));
  await onnxIdle();
  assert.match(await page.locator('[data-r="onnxName"]').innerText(), /tiny_cnn\.onnx \(3,006 bytes\)/);
  assert.ok((await exported()) === r.stdout, 'the page\'s estimate JSON differs from the CLI\'s');
  await shot(page, 'onnx-picked');
  // back to the text model, then the same file dropped on the editor
  await page.locator('[data-r="onnxClear"]').click();
  await page.waitForFunction(() => !document.querySelector('[data-r="layers"]').innerText.includes('relu2'), null, { timeout: 30000 });
  const bytes = [...fs.readFileSync(path.join(dir, 'tiny_cnn.onnx'))];
  const dt = await page.evaluateHandle((b) => {
    const d = new DataTransfer();
    d.items.add(new File([new Uint8Array(b)], 'tiny_cnn.onnx'));
    return d;
  }, bytes);
  await page.locator('[data-r="text"]').dispatchEvent('drop', { dataTransfer: dt });
  await onnxIdle();
  assert.ok((await exported()) === r.stdout, 'the dropped file\'s estimate JSON differs from the CLI\'s');
  // a file with unsupported operators: every one is named on the page
  await page.locator('[data-r="onnxPick"]').setInputFiles(path.join(dir, 'unsupported.onnx'));
  await page.waitForFunction(() => /\(Cos\)/.test(document.querySelector('[data-r="settingsErr"]').innerText), null, { timeout: 30000 });
  const err = await page.locator('[data-r="settingsErr"]').innerText();
  assert.match(err, /'\/Sin' \(Sin\)/);
  assert.match(err, /'\/Cos' \(Cos\)/);
  await page.close();
});

// ---------- LLM fine-tuning (issue 11): Hugging Face config presets, sequence length, LoRA/QLoRA, checkpointing ----------
const CLI_BIN = process.env.MEMFIT_CLI || path.join(ROOT, 'build/memfit');
function cliJson(args) {
  const r = spawnSync(CLI_BIN, [...args, '--json'], { cwd: ROOT, encoding: 'utf8', maxBuffer: 1 << 28 });
  assert.ok(r.status === 0 || r.status === 1, `memfit ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}
// every request of the latest change has come back: the last call is a sweep, sent after the last change
async function settle(page) {
  await page.waitForTimeout(400);
  await page.waitForFunction(() => {
    const p = window.memfitPerf, c = p && p.calls;
    return c && c.length && c[c.length - 1].kind === 'sweep' && (!p.sent || p.sent.at <= c[c.length - 1].at);
  }, null, { timeout: 120000 });
}
const lastEstimate = (page) => page.evaluate(() => window.memfitCalculator.last());
const num = (t) => Number(String(t).replace(/[^0-9]/g, ''));
const LORA16 = (t) => `r=16,alpha=32,dropout=0.05,targets=${t}`;

test('17 Llama-3.1-8B preset, QLoRA + checkpointing, RTX 4090, seq 2048: the CLI\'s verdict, largest batch and longest sequence', async () => {
  const page = await open('#model=question_cnn&batch=64&gpu=RTX%203090', { width: 1440, height: 900 }, 'llm');
  await ready(page);
  await idle(page);
  // the configs are presets of their own group, apart from the networks
  const groups = await page.locator('[data-r="preset"] optgroup').evaluateAll((gs) => gs.map((g) => ({ label: g.label, names: [...g.querySelectorAll('option')].map((o) => o.value) })));
  const hfGroup = groups.find((g) => /Hugging Face/.test(g.label)), cnn = groups.find((g) => !/Hugging Face/.test(g.label));
  const shipped = fs.readdirSync(path.join(ROOT, 'models/hf')).filter((f) => f.endsWith('.json')).map((f) => f.replace(/\.json$/, '')).sort();
  assert.deepEqual([...hfGroup.names].sort(), shipped);
  assert.ok(cnn.names.includes('question_cnn') && !cnn.names.includes('llama-3.1-8b'));
  // a CNN has no config.json settings
  assert.equal(await page.locator('[data-r="hfBox"]').isVisible(), false);

  await page.selectOption('[data-r="preset"]', 'llama-3.1-8b');
  await page.locator('[data-r="hfBox"]').waitFor({ state: 'visible' });
  assert.equal(await page.locator('[data-r="seq"]').getAttribute('placeholder'), '2048');
  await page.selectOption('[data-r="ft"]', 'qlora');
  await page.locator('[data-r="rankField"]').waitFor({ state: 'visible' });
  await page.selectOption('[data-r="ckpt"]', 'model.layers.*');
  // the implementation is shown once checkpointing is on, reentrant by default (transformers' default, which
  // PEFT makes work under LoRA with enable_input_require_grads)
  await page.locator('[data-r="ckptImplField"]').waitFor({ state: 'visible' });
  assert.equal(await page.locator('[data-r="ckptImpl"]').inputValue(), 'reentrant');
  await page.selectOption('[data-r="gpu"]', 'RTX 4090');
  await page.selectOption('[data-r="dtype"]', 'bf16');
  await page.locator('[data-r="batch"]').fill('2');
  await page.locator('[data-r="seq"]').fill('2048');
  await settle(page);

  const flags = ['--batch', '2', '--dtype', 'bf16', '--gpu', 'RTX 4090', '--lora', LORA16('q_proj,v_proj'), '--qlora', '--checkpoint', 'model.layers.*'];
  const est = cliJson(['estimate', 'llama-3.1-8b', '--seq', '2048', ...flags]);
  const mb = cliJson(['max-batch', 'llama-3.1-8b', '--seq', '2048', ...flags]);
  const ms = cliJson(['max-seq', 'llama-3.1-8b', ...flags]);
  assert.equal(await page.locator('[data-r="verdictText"]').innerText(), `${est.fits ? '✓ Fits' : '✗ Does not fit'} on RTX 4090`);
  const got = await lastEstimate(page);
  assert.equal(got.peak.reserved_bytes, est.peak.reserved_bytes);
  assert.equal(got.headroom_bytes, est.headroom_bytes);
  assert.equal(got.totals.params, est.totals.params);
  assert.equal(num(await page.locator('[data-r="maxBatch"]').innerText()), mb.max_batch);
  assert.equal(Number(await page.locator('[data-r="maxSeq"]').getAttribute('data-v')), ms.max_seq);
  assert.equal(num(await page.locator('[data-r="maxSeq"]').innerText()), ms.max_seq);
  assert.ok(mb.max_batch >= 1 && ms.max_seq > 2048, `the case is meaningful: largest batch ${mb.max_batch}, longest sequence ${ms.max_seq}`);
  const v = await page.locator('[data-r="verdict"]').innerText();
  assert.match(v, new RegExp(`Largest batch that fits at 2,048 tokens: ${mb.max_batch.toLocaleString('en-US')}`));
  assert.match(v, new RegExp(`Longest sequence that fits at batch 2: ${ms.max_seq.toLocaleString('en-US')} tokens`));
  // the whole verdict is on the first screen, beside the editor
  const vb = await box(page, '[data-r="verdict"]');
  assert.ok(vb.y + vb.height <= 900, `verdict ends at ${vb.y + vb.height} px`);
  await shot(page, 'llm-qlora-desktop');

  // the URL holds every setting: a fresh page from it shows the same controls and the same numbers
  await page.waitForTimeout(400);
  const url = page.url();
  for (const kv of ['model=llama-3.1-8b', 'seq=2048', 'ft=qlora', 'rank=16', 'ckpt=model.layers.*', 'dtype=bf16', 'batch=2']) assert.ok(decodeURIComponent(url).includes(kv), `${kv} in ${url}`);
  const again = await open(`#${url.split('#')[1]}`, { width: 1440, height: 900 }, 'llm-url');
  await ready(again);
  await settle(again);
  for (const [r, want] of [['ft', 'qlora'], ['ckpt', 'model.layers.*'], ['ckptImpl', 'reentrant'], ['seq', '2048'], ['rank', '16'], ['gpu', 'RTX 4090']]) assert.equal(await again.locator(`[data-r="${r}"]`).inputValue(), want, r);
  // the other implementation from the page gives the CLI's numbers too
  await again.selectOption('[data-r="ckptImpl"]', 'non-reentrant');
  await settle(again);
  assert.ok(decodeURIComponent(again.url()).includes('ckpt_impl=non-reentrant'));
  assert.equal((await lastEstimate(again)).peak.reserved_bytes, cliJson(['estimate', 'llama-3.1-8b', '--seq', '2048', ...flags, '--checkpoint-impl', 'non-reentrant']).peak.reserved_bytes);
  assert.equal((await lastEstimate(again)).peak.reserved_bytes, est.peak.reserved_bytes);
  assert.equal(Number(await again.locator('[data-r="maxSeq"]').getAttribute('data-v')), ms.max_seq);
  await again.close();
  await page.close();
});

test('18 LLM remedies: checkpointing and gradient accumulation get Apply, and applying gives the remedy\'s own numbers', async () => {
  const hash = '#model=llama-3.2-1b&batch=8&dtype=bf16&gpu=RTX%204090&seq=2048&ft=lora&rank=16';
  const want = cliJson(['estimate', 'llama-3.2-1b', '--batch', '8', '--dtype', 'bf16', '--gpu', 'RTX 4090', '--seq', '2048', '--lora', LORA16('q_proj,v_proj')]);
  assert.equal(want.fits, false);
  const ck = want.remedies.find((r) => r.change.startsWith('--checkpoint'));
  const acc = want.remedies.find((r) => / --grad-accum /.test(r.change));
  assert.ok(ck && acc, `the CLI offers both: ${want.remedies.map((r) => r.change).join(' / ')}`);
  for (const [remedy, pick, check] of [
    [ck, /Checkpoint every block/, async (page) => {
      assert.equal(await page.locator('[data-r="ckpt"]').inputValue(), 'model.layers.*');
      assert.equal(await page.locator('[data-r="ckptImpl"]').inputValue(), / non-reentrant/.test(ck.change) ? 'non-reentrant' : 'reentrant');
    }],
    [acc, /micro-batches/, async (page) => {
      const [, b, k] = /^--batch (\d+) --grad-accum (\d+)$/.exec(acc.change);
      assert.equal(await page.locator('[data-r="batch"]').inputValue(), b);
      assert.equal(await page.locator('[data-r="accum"]').inputValue(), k);
    }],
  ]) {
    const page = await open(hash, { width: 1440, height: 900 }, 'llm-remedies');
    await ready(page);
    await settle(page);
    // the largest batch is said at the length the model was built with
    assert.match(await page.locator('[data-r="verdict"]').innerText(), /Largest batch that fits at 2,048 tokens/);
    const li = page.locator('[data-r="remedies"] li', { hasText: pick });
    await li.locator('button', { hasText: 'Apply' }).click();
    await settle(page);
    await check(page);
    const after = await lastEstimate(page);
    assert.equal(after.peak.reserved_bytes, remedy.peak_reserved_bytes, `${remedy.change}: the page's peak after Apply is the remedy's`);
    assert.equal(after.fits, remedy.fits);
    await page.close();
  }
});

test('19 a 16-block decoder: the per-layer table folds repeated blocks as `memfit estimate` does; every layer on request', async () => {
  const page = await open('#model=llama-3.2-1b&batch=1&gpu=RTX%204090&seq=512', { width: 1440, height: 900 }, 'fold');
  await ready(page);
  await settle(page);
  assert.match(await page.locator('[data-r="verdict"]').innerText(), /Largest batch that fits at 512 tokens/);
  const text = spawnSync(CLI_BIN, ['estimate', 'llama-3.2-1b', '--batch', '1', '--gpu', 'RTX 4090', '--seq', '512'], { cwd: ROOT, encoding: 'utf8' }).stdout;
  const line = text.split('\n').find((l) => /^model\.layers\.1 \.\. model\.layers\.15/.test(l));
  assert.ok(line, 'the CLI folds model.layers.1 .. 15');
  const cliParams = num(/(\d[\d,]*)\s+\S+ MiB/.exec(line.replace(/^.*more like model\.layers\.0/, ''))[1]);
  const fold = page.locator('[data-r="layers"] tr.fold');
  assert.equal(await fold.count(), 1);
  const cells = await fold.locator('td').allInnerTexts();
  assert.match(cells[0], /model\.layers\.1 … model\.layers\.15/);
  assert.match(cells[1], /15 more blocks like model\.layers\.0/);
  assert.equal(num(cells[2]), cliParams, 'the folded row\'s parameters are the CLI\'s');
  const est = await lastEstimate(page);
  const rows = await page.locator('[data-r="layers"] tbody tr').count();
  assert.ok(rows < 80 && est.layers.length > 400, `${rows} rows for ${est.layers.length} layers`);
  // the table fits its box: no layer name widens it past the page
  const tw = await page.locator('[data-r="layers"]').evaluate((d) => ({ scroll: d.scrollWidth, client: d.clientWidth }));
  assert.ok(tw.scroll <= tw.client + 1, `the layer table is ${tw.scroll} px wide in ${tw.client} px`);
  await page.locator('[data-r="unfold"]').click();
  assert.equal(await page.locator('[data-r="layers"] tbody tr').count(), est.layers.length);
  await page.close();
});

test('20 a pasted config.json and a picked config.json file are estimated as the CLI estimates the file', async () => {
  const cfg = JSON.parse(fs.readFileSync(path.join(ROOT, 'models/hf/gpt2.json'), 'utf8'));
  cfg.n_layer = 2;
  const file = path.join(ARTIFACTS, 'tiny-gpt2-config.json');
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
  const want = cliJson(['estimate', file, '--batch', '4', '--gpu', 'T4', '--seq', '256', '--lora', LORA16('c_attn')]);
  const page = await open('#model=question_cnn&batch=4&gpu=T4', { width: 1440, height: 900 }, 'paste');
  await ready(page);
  await idle(page);
  await page.locator('[data-r="text"]').fill(fs.readFileSync(file, 'utf8'));
  await page.locator('[data-r="hfBox"]').waitFor({ state: 'visible' });
  assert.equal(await page.locator('[data-r="seq"]').getAttribute('placeholder'), '1024');  // n_positions
  await page.locator('[data-r="seq"]').fill('256');
  await page.selectOption('[data-r="ft"]', 'lora');
  assert.match(await page.locator('[data-r="loraSpec"]').innerText(), /targets=c_attn/);
  await settle(page);
  const got = await lastEstimate(page);
  assert.equal(got.peak.reserved_bytes, want.peak.reserved_bytes);
  assert.equal(got.totals.params - got.totals.frozen_params, want.totals.params - want.totals.frozen_params);
  assert.equal(Number(await page.locator('[data-r="maxSeq"]').getAttribute('data-v')),
    cliJson(['max-seq', file, '--batch', '4', '--gpu', 'T4', '--lora', LORA16('c_attn')]).max_seq);
  // the same file picked with the file input goes into the editor
  await page.selectOption('[data-r="preset"]', 'question_cnn');
  await page.locator('[data-r="hfBox"]').waitFor({ state: 'hidden' });
  await page.locator('[data-r="onnxPick"]').setInputFiles(file);
  await page.locator('[data-r="hfBox"]').waitFor({ state: 'visible' });
  assert.equal(await page.locator('[data-r="text"]').inputValue(), fs.readFileSync(file, 'utf8'));
  await page.close();
});

test('21 a config the core cannot estimate (ViT) shows the core\'s own error at its line, and the page keeps working', async () => {
  const r = spawnSync(CLI_BIN, ['estimate', 'vit-base-patch16-224', '--json', '--gpu', 'RTX 4090'], { cwd: ROOT, encoding: 'utf8' });
  const page = await open('#model=vit-base-patch16-224&gpu=RTX%204090', { width: 1440, height: 900 }, 'vit');
  if (r.status === 2) {
    const m = /^memfit: [^:]+:(\d+):(\d+): (?:layer '[^']+': )?(.*?)\. Fix: (.*)$/.exec(r.stderr.trim());
    assert.ok(m, r.stderr);
    const err = page.locator('[data-r="err"]');
    await err.waitFor({ state: 'visible', timeout: 30000 });
    const t = await err.innerText();
    assert.ok(t.startsWith(`Line ${m[1]}, column ${m[2]}:`), t);
    assert.ok(t.includes(m[3]), `the core's problem is shown: ${t}`);
    assert.ok(t.includes('Fix:'), t);
    // the seq field is not offered for ViT (its sequence is fixed by the image size)
    assert.equal(await page.locator('[data-r="seqField"]').isVisible(), false);
  } else {
    const want = JSON.parse(r.stdout);
    await ready(page);
    assert.equal(num(await page.locator('[data-r="params"]').innerText()), want.totals.params);
  }
  await page.selectOption('[data-r="preset"]', 'gpt2');
  await waitVerdict(page, /Fits|Does not fit/);
  await page.close();
});

test('no console errors in these pages', () => {
  assert.deepEqual(consoleErrors, []);
});
