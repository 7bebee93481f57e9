// The page's pictures as plain SVG (no libraries): the peak's breakdown, memory through one training
// step, and memory against batch size. Colours come from CSS custom properties (light and dark themes).
import { bytes, axisUnit, ticks, esc, int } from './format.js';

const NS = 'http://www.w3.org/2000/svg';

export const CATEGORIES = [
  ['parameter', 'Parameters'],
  ['buffer', 'Buffers'],
  ['gradient', 'Gradients'],
  ['optimizer_state', 'Optimizer state'],
  ['input', 'Input batch'],
  ['activation', 'Saved activations'],
  ['activation_grad', 'Activation gradients'],
  ['workspace', 'cuBLAS/cuDNN workspace'],
  ['temporary', 'Temporaries'],
];

function svg(w, h, label, body) {
  return `<svg xmlns="${NS}" viewBox="0 0 ${w} ${h}" width="100%" role="img" aria-label="${esc(label)}" preserveAspectRatio="xMinYMin meet">${body}</svg>`;
}

/** Horizontal bars: one per category of the peak, plus the allocator's cache and the CUDA context. */
export function breakdownChart(est) {
  const b = est.peak.breakdown;
  const rows = CATEGORIES.map(([k, label], i) => ({ label, value: b[k] || 0, cls: `c${i}` }));
  rows.push({ label: 'Allocator cache (reserved − allocated)', value: est.peak.reserved_bytes - est.peak.allocated_bytes, cls: 'c9' });
  rows.push({ label: 'CUDA context (outside the allocator)', value: est.peak.context_bytes, cls: 'c10' });
  const max = Math.max(1, ...rows.map((r) => r.value));
  const W = 640, labelW = 250, valueW = 90, rowH = 22, barW = W - labelW - valueW - 10;
  let body = '';
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    const w = r.value > 0 ? Math.max(1.5, (r.value / max) * barW) : 0;
    body += `<g><title>${esc(r.label)}: ${esc(bytes(r.value))} (${int(r.value)} bytes)</title>`
      + `<text x="${labelW - 8}" y="${y + 14}" text-anchor="end" class="lbl">${esc(r.label)}</text>`
      + `<rect x="${labelW}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 8}" class="bar ${r.cls}" rx="2"/>`
      + `<text x="${labelW + w + 6}" y="${y + 14}" class="val">${esc(bytes(r.value))}</text></g>`;
  });
  const total = est.peak.device_bytes;
  body += `<text x="${labelW}" y="${rows.length * rowH + 20}" class="lbl">Total on the GPU at the peak: ${esc(bytes(total))}</text>`;
  return svg(W, rows.length * rowH + 28, `Memory at the peak by category; total ${bytes(total)}`, body);
}

function axes(W, H, m, ymax, unitLabel, xTicks) {
  const [div, unit] = axisUnit(ymax);
  let s = '';
  for (const t of ticks(ymax / div, 5)) {
    const y = H - m.b - ((t * div) / ymax) * (H - m.t - m.b);
    s += `<line x1="${m.l}" x2="${W - m.r}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" class="grid"/>`
      + `<text x="${m.l - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end" class="tick">${+t.toFixed(2)}</text>`;
  }
  s += `<text x="12" y="${m.t - 8}" class="tick">${unit}</text>`;
  s += `<line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}" class="axis"/>`;
  s += xTicks;
  s += `<text x="${(m.l + W - m.r) / 2}" y="${H - 4}" text-anchor="middle" class="tick">${esc(unitLabel)}</text>`;
  return s;
}

function polyline(points, cls) {
  return `<polyline fill="none" class="${cls}" points="${points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}"/>`;
}

function legend(items, x, y) {
  let s = '', dx = 0;
  for (const [cls, label] of items) {
    s += `<line x1="${x + dx}" x2="${x + dx + 18}" y1="${y}" y2="${y}" class="${cls}"/><text x="${x + dx + 22}" y="${y + 4}" class="lbl">${esc(label)}</text>`;
    dx += 30 + label.length * 6.6;
  }
  return s;
}

/** A limit line, or a note when it lies far above the data (it would squash the lines flat). */
function limitFits(limit, dataMax) {
  return limit > 0 && limit <= dataMax * 3;
}

const PHASES = { setup: 'setup', forward: 'forward', loss: 'loss', backward: 'backward', optimizer: 'optimizer', zero_grad: 'zero_grad' };

/** Allocated and reserved memory op by op through the peak's iteration (steps of the training loop). */
export function timelineChart(est) {
  const tl = est.timeline || [];
  const it = est.peak.iteration || 1;
  const pts = tl.filter((p) => p.iteration === it);
  if (!pts.length) return '<p class="muted">No timeline.</p>';
  const W = 640, H = 260, m = { l: 48, r: 12, t: 34, b: 38 };
  const dataMax = Math.max(...pts.map((p) => p.reserved_bytes), 1);
  const limit = est.gpu ? est.usable_bytes : 0;
  const showLimit = limitFits(limit, dataMax);
  const ymax = (showLimit ? Math.max(dataMax, limit) : dataMax) * 1.08;
  const n = pts.length;
  const x = (i) => m.l + (n === 1 ? 0 : (i / (n - 1)) * (W - m.l - m.r));
  const y = (v) => H - m.b - (v / ymax) * (H - m.t - m.b);
  let bands = '';
  let start = 0;
  for (let i = 1; i <= n; i++) {
    if (i === n || pts[i].phase !== pts[start].phase) {
      const x0 = start === 0 ? m.l : (x(start - 1) + x(start)) / 2;
      const x1 = i === n ? W - m.r : (x(i - 1) + x(i)) / 2;
      const ph = PHASES[pts[start].phase] || pts[start].phase;
      bands += `<rect x="${x0.toFixed(1)}" y="${m.t}" width="${(x1 - x0).toFixed(1)}" height="${H - m.t - m.b}" class="band ${ph}"/>`;
      if (x1 - x0 > 34) bands += `<text x="${((x0 + x1) / 2).toFixed(1)}" y="${m.t + 13}" text-anchor="middle" class="phase">${esc(ph.replace('_', ' '))}</text>`;
      start = i;
    }
  }
  let s = bands + axes(W, H, m, ymax, `ops of training iteration ${it} (hover a point for the layer)`, '');
  if (showLimit) {
    s += `<line x1="${m.l}" x2="${W - m.r}" y1="${y(limit).toFixed(1)}" y2="${y(limit).toFixed(1)}" class="limit"/>`
      + `<text x="${W - m.r - 4}" y="${(y(limit) - 5).toFixed(1)}" text-anchor="end" class="limitlbl">GPU usable ${esc(bytes(limit))}</text>`;
  }
  s += polyline(pts.map((p, i) => [x(i), y(p.reserved_bytes)]), 'ln reserved');
  s += polyline(pts.map((p, i) => [x(i), y(p.allocated_bytes)]), 'ln allocated');
  pts.forEach((p, i) => {
    s += `<circle cx="${x(i).toFixed(1)}" cy="${y(p.allocated_bytes).toFixed(1)}" r="3" class="pt allocated"><title>${esc(p.phase)} ${esc(p.layer)}: allocated ${esc(bytes(p.allocated_bytes))}, reserved ${esc(bytes(p.reserved_bytes))}</title></circle>`;
  });
  s += legend([['ln reserved', 'reserved (allocator)'], ['ln allocated', 'allocated (tensors)']].concat(showLimit ? [['limit', 'GPU usable']] : []), m.l, 14);
  if (!showLimit && limit > 0) s += `<text x="${W - m.r}" y="14" text-anchor="end" class="muted-t">GPU usable ${esc(bytes(limit))}: far above this chart</text>`;
  return svg(W, H, `Memory through training iteration ${it}: peak reserved ${bytes(dataMax)}`, s);
}

/** Peak memory against batch size, with the GPU's usable memory and the largest batch that fits. */
export function sweepChart(points, { usable, maxBatch, batch, wide = false }) {
  if (!points || !points.length) return '<p class="muted">No data.</p>';
  const W = wide ? 1000 : 640, H = wide ? 300 : 260, m = { l: 48, r: 16, t: 34, b: 38 };
  const xmax = points[points.length - 1].batch;
  const dataMax = Math.max(...points.map((p) => p.reserved_bytes), 1);
  const showLimit = usable > 0;
  const ymax = Math.max(dataMax, showLimit ? usable : 0) * 1.08;
  const x = (b) => m.l + ((b - 1) / Math.max(1, xmax - 1)) * (W - m.l - m.r);
  const y = (v) => H - m.b - (v / ymax) * (H - m.t - m.b);
  let xt = '';
  for (const t of ticks(xmax, 6)) {
    if (t < 1 && t !== 0) continue;
    const xx = x(Math.max(1, t));
    xt += `<line x1="${xx.toFixed(1)}" x2="${xx.toFixed(1)}" y1="${H - m.b}" y2="${H - m.b + 4}" class="axis"/><text x="${xx.toFixed(1)}" y="${H - m.b + 16}" text-anchor="middle" class="tick">${int(Math.max(1, t))}</text>`;
  }
  let s = axes(W, H, m, ymax, 'batch size', xt);
  if (showLimit) {
    s += `<line x1="${m.l}" x2="${W - m.r}" y1="${y(usable).toFixed(1)}" y2="${y(usable).toFixed(1)}" class="limit"/>`
      + `<text x="${m.l + 6}" y="${(y(usable) - 5).toFixed(1)}" class="limitlbl">GPU usable ${esc(bytes(usable))}</text>`;
  }
  if (maxBatch > 0 && maxBatch <= xmax) {
    const xx = x(maxBatch);
    s += `<line x1="${xx.toFixed(1)}" x2="${xx.toFixed(1)}" y1="${m.t}" y2="${H - m.b}" class="maxb"/>`
      + `<text x="${(xx - 4).toFixed(1)}" y="${m.t + 12}" text-anchor="end" class="maxblbl">largest batch ${int(maxBatch)}</text>`;
  }
  s += polyline(points.map((p) => [x(p.batch), y(p.reserved_bytes)]), 'ln reserved');
  s += polyline(points.map((p) => [x(p.batch), y(p.allocated_bytes)]), 'ln allocated');
  points.forEach((p) => {
    s += `<circle cx="${x(p.batch).toFixed(1)}" cy="${y(p.reserved_bytes).toFixed(1)}" r="2.5" class="pt reserved"><title>batch ${int(p.batch)}: reserved ${esc(bytes(p.reserved_bytes))}, allocated ${esc(bytes(p.allocated_bytes))}</title></circle>`;
  });
  if (batch >= 1 && batch <= xmax) {
    const near = points.reduce((a, p) => (Math.abs(p.batch - batch) < Math.abs(a.batch - batch) ? p : a), points[0]);
    s += `<circle cx="${x(batch).toFixed(1)}" cy="${y(near.reserved_bytes).toFixed(1)}" r="5" class="cur"><title>your batch ${int(batch)}</title></circle>`;
  }
  s += legend([['ln reserved', 'reserved (allocator)'], ['ln allocated', 'allocated (tensors)']].concat(showLimit ? [['limit', 'GPU usable']] : []), m.l, 14);
  return svg(W, H, `Peak memory against batch size up to ${xmax}; largest batch that fits ${maxBatch}`, s);
}
