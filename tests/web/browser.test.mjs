// The page in a real browser (playwright-core driving /usr/bin/chromium, headless) against web/dist served
// on localhost: the question's CNN with its verdict and parameter count, the verdict flipping at the
// largest batch, a syntax error at its line, a URL round trip, the embedding example, keyboard focus,
// the dark theme, and no console errors. Screenshots go to test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { serve, launch, ARTIFACTS } from './lib.mjs';

let srv, light, dark;
const consoleErrors = [];
fs.mkdirSync(ARTIFACTS, { recursive: true });

function watch(page, name) {
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') consoleErrors.push(`${name}: console.${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => consoleErrors.push(`${name}: page error: ${e.message}`));
  page.on('requestfailed', (r) => consoleErrors.push(`${name}: request failed: ${r.url()}`));
  return page;
}
async function open(ctx, url, name) {
  const page = watch(await ctx.newPage(), name);
  await page.goto(url);
  return page;
}
const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
const verdictText = (page) => page.locator('[data-r="verdictText"]').first().innerText();
async function idle(page) {
  // all three requests of the latest change have come back (the sweep is the last one)
  await page.waitForFunction(() => {
    const c = window.memfitPerf && window.memfitPerf.calls;
    return c && c.length && c[c.length - 1].kind === 'sweep';
  }, null, { timeout: 20000 });
}

before(async () => {
  srv = await serve();
  light = await launch({ colorScheme: 'light' });
  dark = await launch({ colorScheme: 'dark' });
});
after(async () => {
  await light?.close();
  await dark?.close();
  await srv?.close();
});

test('loads with the question CNN: verdict and parameter count', async () => {
  const page = await open(light.ctx, srv.url, 'index');
  await page.waitForSelector('[data-r="params"]', { timeout: 20000 });
  assert.equal(await page.locator('[data-r="params"]').innerText(), '4,632,902');
  assert.match(await verdictText(page), /^✓ Fits on RTX 3090$/);
  assert.equal(await page.locator('[data-r="preset"]').inputValue(), 'question_cnn');
  assert.match(await page.locator('[data-r="text"]').inputValue(), /model question_cnn/);
  await idle(page);
  // charts and tables are there
  for (const r of ['breakdown', 'timeline', 'sweep']) assert.equal(await page.locator(`[data-r="${r}"] svg`).count(), 1, r);
  assert.ok(await page.locator('[data-r="layers"] tbody tr').count() >= 9);
  assert.ok(await page.locator('[data-r="rules"] tbody tr').count() >= 4);
  assert.match(await page.locator('[data-r="verdict"]').innerText(), /GiB usable/);
  await shot(page, 'index-light');
  await page.close();
});

test('raising the batch past the largest batch flips the verdict; remedies appear', async () => {
  const page = await open(light.ctx, srv.url, 'batch');
  await page.waitForSelector('[data-r="maxBatch"]', { timeout: 20000 });
  const maxBatch = Number((await page.locator('[data-r="maxBatch"]').innerText()).replace(/,/g, ''));
  assert.ok(maxBatch > 64);
  const setBatch = async (b) => {
    await page.locator('[data-r="batch"]').fill(String(b));
    await page.waitForFunction((b) => document.querySelector('[data-r="verdict"]').innerText.includes(`batch ${b.toLocaleString('en-US')} ·`), b, { timeout: 20000 });
  };
  await setBatch(maxBatch);
  assert.match(await verdictText(page), /^✓ Fits/);
  await setBatch(maxBatch + 1);
  assert.match(await verdictText(page), /^✗ Does not fit on RTX 3090$/);
  assert.match(await page.locator('[data-r="verdict"]').innerText(), /missing/);
  const rem = page.locator('[data-r="remedies"]');
  await rem.waitFor({ state: 'visible' });
  assert.match(await rem.innerText(), new RegExp(`Batch size ${maxBatch.toLocaleString('en-US')}`));
  await idle(page);
  await shot(page, 'index-does-not-fit');
  // applying the batch-size remedy makes it fit again (remedies are ordered by cost: cheaper switches first)
  await rem.locator('li', { hasText: `Batch size ${maxBatch.toLocaleString('en-US')}` }).first().locator('button', { hasText: 'Apply' }).click();
  await page.waitForFunction(() => document.querySelector('[data-r="verdictText"]')?.innerText.startsWith('✓'), null, { timeout: 20000 });
  assert.equal(await page.locator('[data-r="batch"]').inputValue(), String(maxBatch));
  await page.close();
});

test('a syntax error shows at its line; the rest keeps the last good result', async () => {
  const page = await open(light.ctx, srv.url, 'syntax');
  await page.waitForSelector('[data-r="params"]', { timeout: 20000 });
  const editor = page.locator('[data-r="text"]');
  const text = await editor.inputValue();
  const lines = text.split('\n');
  const n = lines.findIndex((l) => l.startsWith('conv2:')) + 1;
  lines[n - 1] = 'conv2: conv 64 3x3 pad=sideways';
  await editor.fill(lines.join('\n'));
  const err = page.locator('[data-r="err"]');
  await err.waitFor({ state: 'visible', timeout: 20000 });
  assert.match(await err.innerText(), new RegExp(`^Line ${n}, column \\d+:`));
  assert.equal(await page.locator('[data-r="gutter"] .err').innerText(), String(n));
  assert.equal(await page.locator('[data-r="hl"]').isVisible(), true);
  assert.equal(await editor.getAttribute('aria-invalid'), 'true');
  // the last good result stays, marked as such
  assert.equal(await page.locator('[data-r="params"]').innerText(), '4,632,902');
  assert.equal(await page.locator('[data-r="stale"]').isVisible(), true);
  await shot(page, 'index-syntax-error');
  // "Go to line" puts the caret on that line
  await err.locator('button').click();
  const caretLine = await editor.evaluate((t) => t.value.slice(0, t.selectionStart).split('\n').length);
  assert.equal(caretLine, n);
  // fixing it clears the error; a change of the model shows up
  lines[n - 1] = 'conv2: conv 16 3x3 pad=same';
  await editor.fill(lines.join('\n'));
  await err.waitFor({ state: 'hidden', timeout: 20000 });
  await page.waitForFunction(() => document.querySelector('[data-r="params"]').innerText !== '4,632,902', null, { timeout: 20000 });
  assert.equal(await page.locator('[data-r="stale"]').isVisible(), false);
  // the edited model is no preset: the dropdown shows the draft entry (the text is kept in localStorage)
  assert.equal(await page.locator('[data-r="preset"]').inputValue(), '__draft__');
  await page.close();
});

test('the URL holds the whole state: open the link elsewhere, same page', async () => {
  const page = await open(light.ctx, srv.url, 'url');
  await page.waitForSelector('[data-r="params"]', { timeout: 20000 });
  const editor = page.locator('[data-r="text"]');
  const text = (await editor.inputValue()).replace('fc1: fc 500', 'fc1: fc 300   # smaller');
  await editor.fill(text);
  await page.locator('[data-r="batch"]').fill('512');
  await page.locator('[data-r="dtype"]').selectOption('bf16');
  await page.locator('[data-r="optimizer"]').selectOption('adam');
  await page.locator('[data-r="gpu"]').selectOption('__custom__');
  await page.locator('[data-r="gpuCustom"]').fill('6GiB');
  await page.waitForFunction(() => /gpu=6GiB/.test(location.hash) && /z=/.test(location.hash) && /batch=512/.test(location.hash), null, { timeout: 20000 });
  await idle(page);
  const url = page.url();
  const params = await page.locator('[data-r="params"]').innerText();
  const verdict = await verdictText(page);
  assert.match(verdict, /6GiB/);
  // a different browser profile (the dark one): same state, same result
  const other = await open(dark.ctx, url, 'url-reopened');
  await other.waitForSelector('[data-r="params"]', { timeout: 20000 });
  assert.equal(await other.locator('[data-r="text"]').inputValue(), text);
  assert.equal(await other.locator('[data-r="batch"]').inputValue(), '512');
  assert.equal(await other.locator('[data-r="dtype"]').inputValue(), 'bf16');
  assert.equal(await other.locator('[data-r="optimizer"]').inputValue(), 'adam');
  assert.equal(await other.locator('[data-r="gpu"]').inputValue(), '__custom__');
  assert.equal(await other.locator('[data-r="gpuCustom"]').inputValue(), '6GiB');
  assert.equal(await other.locator('[data-r="params"]').innerText(), params);
  assert.equal(await verdictText(other), verdict);
  await idle(other);
  await shot(other, 'index-url-reopened-dark');
  // a preset with settings is a short, readable link
  const short = await open(light.ctx, `${srv.url}#model=question_cnn&batch=100&dtype=fp16&optimizer=sgd-momentum&gpu=T4`, 'url-short');
  await short.waitForSelector('[data-r="params"]', { timeout: 20000 });
  assert.equal(await short.locator('[data-r="preset"]').inputValue(), 'question_cnn');
  assert.equal(await short.locator('[data-r="gpu"]').inputValue(), 'T4');
  assert.match(await short.locator('[data-r="verdict"]').innerText(), /batch 100 · fp16 · SGD with momentum/);
  await Promise.all([page.close(), other.close(), short.close()]);
});

test('the embedding example renders its calculators; embed.html takes query parameters', async () => {
  const page = await open(light.ctx, `${srv.url}example-docs.html`, 'example-docs');
  const calcs = page.locator('memfit-calculator');
  assert.equal(await calcs.count(), 3);  // two full elements and one view="verdict"
  for (let i = 0; i < 2; i++) await calcs.nth(i).locator('[data-r="params"]').waitFor({ timeout: 20000 });
  assert.equal(await calcs.nth(0).locator('[data-r="params"]').innerText(), '4,632,902');
  assert.match(await calcs.nth(0).locator('[data-r="verdict"]').innerText(), /RTX 3060 12GB[\s\S]*batch 256/);
  assert.match(await calcs.nth(1).locator('[data-r="verdict"]').innerText(), /resnet18 · batch 128 · bf16 · Adam/);
  for (let i = 0; i < 2; i++) await calcs.nth(i).locator('[data-r="sweep"] svg').waitFor({ timeout: 20000 });
  // each fills its container's width
  const widths = await calcs.evaluateAll((els) => els.map((e) => [e.getBoundingClientRect().width, e.parentElement.clientWidth]));
  for (const [w, pw] of widths) assert.ok(Math.abs(w - (pw - 2 * 19.2)) < 40 || w > 0.9 * pw - 40, `width ${w} of ${pw}`);
  // the two are independent
  await calcs.nth(1).locator('[data-r="batch"]').fill('4096');
  await page.waitForFunction(() => document.querySelectorAll('memfit-calculator')[1].shadowRoot.querySelector('[data-r="verdictText"]').innerText.startsWith('✗'), null, { timeout: 30000 });
  assert.match(await calcs.nth(0).locator('[data-r="verdictText"]').innerText(), /^✓/);
  await page.waitForTimeout(300);
  await shot(page, 'example-docs');
  const dpage = await open(dark.ctx, `${srv.url}example-docs.html`, 'example-docs-dark');
  await dpage.locator('memfit-calculator').nth(1).locator('[data-r="sweep"] svg').waitFor({ timeout: 30000 });
  await shot(dpage, 'example-docs-dark');

  // your own model inside the element
  await page.evaluate(() => {
    const el = document.createElement('memfit-calculator');
    el.id = 'calc-inline';
    el.setAttribute('gpu', 'T4');
    el.innerHTML = '<script type="text/memfit">\n  model tiny_mlp\n  input 784\n  fc1: fc 256\n  relu\n  fc2: fc 10\n</' + 'script>';
    document.querySelector('article').appendChild(el);
  });
  const inline = page.locator('#calc-inline');
  await inline.locator('[data-r="params"]').waitFor({ timeout: 20000 });
  assert.equal(await inline.locator('[data-r="params"]').innerText(), (784 * 256 + 256 + 256 * 10 + 10).toLocaleString('en-US'));
  assert.match(await inline.locator('[data-r="verdict"]').innerText(), /tiny_mlp · batch 64/);

  const embed = await open(light.ctx, `${srv.url}embed.html?model=resnet18&batch=32&gpu=RTX%203090`, 'embed');
  await embed.waitForSelector('[data-r="params"]', { timeout: 20000 });
  assert.match(await embed.locator('[data-r="verdict"]').innerText(), /resnet18 · batch 32/);
  const bad = await open(light.ctx, `${srv.url}embed.html?model=no_such_model`, 'embed-unknown');
  await bad.waitForSelector('[data-r="params"]', { timeout: 20000 });
  assert.match(await bad.locator('[data-r="settingsErr"]').innerText(), /no builtin model 'no_such_model'/);
  await Promise.all([page.close(), dpage.close(), embed.close(), bad.close()]);
});

test('keyboard: labelled controls in a sensible focus order, visible focus', async () => {
  const page = await open(light.ctx, srv.url, 'keyboard');
  await page.waitForSelector('[data-r="params"]', { timeout: 20000 });
  // every form control has an accessible name
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter((e) => e.offsetParent !== null)
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, []);
  const order = [];
  await page.locator('body').focus();
  for (let i = 0; i < 16; i++) {
    await page.keyboard.press('Tab');
    order.push(await page.evaluate(() => document.activeElement.dataset.r || document.activeElement.tagName.toLowerCase() + (document.activeElement.className ? `.${document.activeElement.className}` : '')));
  }
  // the left column (editor, then the fine-tuning and memory-saver settings under it: for a CNN the
  // checkpointing select is disabled, gradient accumulation is there), then the training settings on the right
  const want = ['preset', 'text', 'accum', 'batch', 'range', 'dtype', 'optimizer', 'impl', 'gpu', 'copy'];
  assert.deepEqual(order.filter((r) => want.includes(r)), want, `focus order: ${order.join(', ')}`);
  // the focused control shows an outline
  await page.locator('[data-r="batch"]').focus();
  await page.keyboard.press('Tab');
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none');
  // keyboard only: change the optimizer with the arrow keys
  await page.locator('[data-r="optimizer"]').focus();
  await page.keyboard.press('ArrowDown');
  await page.waitForFunction(() => /SGD with momentum/.test(document.querySelector('[data-r="verdict"]').innerText), null, { timeout: 20000 });
  await page.screenshot({ path: path.join(ARTIFACTS, 'index-keyboard-focus.png') });
  await page.close();
});

test('dark theme follows the system', async () => {
  const page = await open(dark.ctx, srv.url, 'dark');
  await page.waitForSelector('[data-r="params"]', { timeout: 20000 });
  await idle(page);
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const [r, g, b] = bg.match(/\d+/g).map(Number);
  assert.ok(r + g + b < 150, `dark background expected, got ${bg}`);
  await shot(page, 'index-dark');
  await page.close();
});

test('no console errors on any page', () => {
  assert.deepEqual(consoleErrors, []);
});
