// Shared helpers for the web tests and the benchmark: a static server for web/dist and a Chromium
// launched through playwright-core (the system's /usr/bin/chromium; `npx playwright install` is not used).
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
// MEMFIT_WEB_DIST: serve another build of the page (e.g. an older one, to see that a test fails there).
export const DIST = process.env.MEMFIT_WEB_DIST ? path.resolve(process.env.MEMFIT_WEB_DIST) : path.join(ROOT, 'web', 'dist');
export const ARTIFACTS = path.join(ROOT, 'test-artifacts');

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.svg': 'image/svg+xml', '.png': 'image/png' };

/** Serves DIST on 127.0.0.1 (a free port); resolves to {url, close, bytesSent}. */
export function serve(dir = DIST) {
  let bytesSent = 0;
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    let p = path.normalize(path.join(dir, decodeURIComponent(u.pathname)));
    if (!p.startsWith(dir)) { res.writeHead(403).end(); return; }
    if (u.pathname.endsWith('/')) p = path.join(p, 'index.html');
    fs.readFile(p, (err, data) => {
      if (err) { res.writeHead(404).end('not found'); return; }
      bytesSent += data.length;
      res.writeHead(200, { 'Content-Type': TYPES[path.extname(p)] || 'application/octet-stream', 'Cache-Control': 'no-cache' });
      res.end(data);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    resolve({ url: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise((r) => server.close(r)), bytesSent: () => bytesSent });
  }));
}

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** Chromium with a fresh profile; returns {browser, close}. */
export async function launch({ colorScheme = 'light' } = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'memfit-chromium-'));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    colorScheme,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
  });
  return {
    ctx,
    close: async () => { await ctx.close(); fs.rmSync(userDataDir, { recursive: true, force: true }); },
  };
}
