// Screenshots of the page for docs/web.md (docs/img/*.png): desktop 1440x900 and phone 390x844.
// Usage: tools/build-web.sh && node tests/web/screenshots.mjs [outdir]   (default test-artifacts/shots)
import fs from 'node:fs';
import path from 'node:path';
import { serve, launch, ARTIFACTS } from './lib.mjs';

const out = process.argv[2] || path.join(ARTIFACTS, 'shots');
fs.mkdirSync(out, { recursive: true });
const srv = await serve();
const b = await launch();
const idle = (page) => page.waitForFunction(() => { const c = window.memfitPerf && window.memfitPerf.calls; return c && c.length && c[c.length - 1].kind === 'sweep'; }, null, { timeout: 60000 });
// [file, viewport, URL hash, what: 'screen' | 'full' | a CSS selector (that element only)]
const SHOTS = [
  ['desktop', { width: 1440, height: 900 }, '#model=resnet50&batch=64&gpu=RTX%203090', 'screen'],
  ['desktop-nofit', { width: 1440, height: 900 }, '#model=resnet50&batch=256&optimizer=adam&gpu=T4', 'full'],
  ['sweep', { width: 1440, height: 900 }, '#model=question_cnn&batch=100000&gpu=RTX%203060%2012GB', 'section.span2'],
  ['phone', { width: 390, height: 844 }, '#model=question_cnn&batch=64&gpu=RTX%203090', 'screen'],
  ['phone-verdict', { width: 390, height: 844 }, '#model=question_cnn&batch=64&gpu=RTX%203090', '.col-side'],
  ['phone-charts', { width: 390, height: 844 }, '#model=question_cnn&batch=100000&gpu=RTX%203060%2012GB', '.charts'],
  ['phone-full', { width: 390, height: 844 }, '#model=question_cnn&batch=64&gpu=RTX%203090', 'full'],
];
for (const [name, viewport, hash, what] of SHOTS) {
  const page = await b.ctx.newPage();
  await page.setViewportSize(viewport);
  await page.goto(srv.url + hash);
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
