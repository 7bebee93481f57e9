// Screenshots of the page for docs/web.md (docs/img/*.png): desktop 1440x900 and phone 390x844.
// Usage: tools/build-web.sh && node tests/web/screenshots.mjs [outdir]   (default test-artifacts/shots)
import fs from 'node:fs';
import path from 'node:path';
import { serve, launch, ARTIFACTS } from './lib.mjs';

const out = process.argv[2] || path.join(ARTIFACTS, 'shots');
fs.mkdirSync(out, { recursive: true });
const srv = await serve();
const b = await launch();
const idle = (page) => page.waitForFunction(() => { const c = window.memfitPerf && window.memfitPerf.calls; return c && c.length && c[c.length - 1].kind === 'sweep'; }, null, { timeout: 120000 });
const LLM = 'model=llama-3.1-8b&batch=2&dtype=bf16&gpu=RTX%204090&seq=2048&ft=qlora&rank=16&ckpt=model.layers.*&ckpt_impl=non-reentrant';
// [file, viewport, URL hash (or a page and its query), what: 'screen' | 'full' | a CSS selector (that element only)]
const SHOTS = [
  ['desktop', { width: 1440, height: 900 }, '#model=resnet50&batch=64&gpu=RTX%203090', 'screen'],
  ['desktop-nofit', { width: 1440, height: 900 }, '#model=resnet50&batch=256&optimizer=adam&gpu=T4', 'full'],
  ['sweep', { width: 1440, height: 900 }, '#model=question_cnn&batch=100000&gpu=RTX%203060%2012GB', 'section.span2'],
  ['phone', { width: 390, height: 844 }, '#model=question_cnn&batch=64&gpu=RTX%203090', 'screen'],
  ['phone-verdict', { width: 390, height: 844 }, '#model=question_cnn&batch=64&gpu=RTX%203090', '.col-side'],
  ['phone-charts', { width: 390, height: 844 }, '#model=question_cnn&batch=100000&gpu=RTX%203060%2012GB', '.charts'],
  ['phone-full', { width: 390, height: 844 }, '#model=question_cnn&batch=64&gpu=RTX%203090', 'full'],
  // LLM fine-tuning (Hugging Face configs): QLoRA + checkpointing, a LoRA run that does not fit, 70B at 4096 tokens
  ['llm-desktop', { width: 1440, height: 900 }, `#${LLM}`, 'screen'],
  ['llm-settings', { width: 1440, height: 900 }, `#${LLM}`, '.model-settings'],
  ['llm-layers', { width: 1440, height: 900 }, `#${LLM}`, '[data-r="layers"]'],
  ['llm-nofit', { width: 1440, height: 900 }, '#model=llama-3.2-1b&batch=8&dtype=bf16&gpu=RTX%204090&seq=2048&ft=lora&rank=16', 'full'],
  ['llm-phone', { width: 390, height: 844 }, `#${LLM}`, 'full'],
  ['llm-70b', { width: 1440, height: 900 }, '#model=llama-3.1-70b&batch=1&dtype=bf16&gpu=H100%2080GB&seq=4096&ft=qlora&rank=16&ckpt=model.layers.*&ckpt_impl=non-reentrant', 'screen'],
  ['llm-embed', { width: 760, height: 900 }, `embed.html?${LLM}`, 'full'],
];
for (const [name, viewport, hash, what] of SHOTS) {
  const page = await b.ctx.newPage();
  await page.setViewportSize(viewport);
  await page.goto(srv.url + hash);  // '#...' opens index.html
  await idle(page);
  await page.waitForTimeout(200);
  const file = path.join(out, `${name}.png`);
  if (what === 'screen' || what === 'full') await page.screenshot({ path: file, fullPage: what === 'full' });
  else await page.locator(what).first().screenshot({ path: file });
  await page.close();
}
await b.close();
await srv.close();
console.log(`screenshots in ${out}`);
