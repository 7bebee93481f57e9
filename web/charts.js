// The page's pictures as plain SVG (no libraries): the peak's breakdown, memory through the training
// loop, and memory against batch size. Colours come from CSS custom properties (light and dark themes).
// Every chart is drawn at the pixel width of its container (viewBox width = CSS width), so its text is
// always drawn at the CSS font sizes (11-12 px), on a phone as on a desktop. Labels are placed so that
// they do not overlap each other or the lines (placeLabel). Each chart also has its data as a table
// (dataTable) for the keyboard, touch and screen readers; the SVG <title>s are only a mouse extra.
import { bytes, axisUnit, ticks, esc, int, compactInt } from './format.js';

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

const NARROW = 560;  // below this width (px) the charts use their phone layout
const TICK = 11, LBL = 12;
const CW = 0.6;      // average glyph width / font size of the UI font (an over-estimate: labels get room)

function svg(w, h, label, body, name) {
  return `<svg xmlns="${NS}" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}" role="img" aria-label="${esc(label)}" data-chart="${name}">${body}</svg>`;
}

// ---------- label placement ----------
function textBox(x, y, text, anchor = 'start', size = TICK, bold = false) {
  const w = String(text).length * size * (bold ? CW + 0.05 : CW);
  const x0 = anchor === 'end' ? x - w : anchor === 'middle' ? x - w / 2 : x;
  return { x0: x0 - 2, y0: y - size, x1: x0 + w + 2, y1: y + 4 };
}
const overlaps = (a, b) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
function crossesLine(box, pts) {
  for (let i = 1; i < pts.length; i++) {
    const [ax, ay] = pts[i - 1], [bx, by] = pts[i];
    if (Math.max(ax, bx) < box.x0 || Math.min(ax, bx) > box.x1) continue;
    for (let k = 0; k <= 40; k++) {
      const x = ax + ((bx - ax) * k) / 40, y = ay + ((by - ay) * k) / 40;
      if (x >= box.x0 && x <= box.x1 && y >= box.y0 && y <= box.y1) return true;
    }
  }
  return false;
}
/** The first candidate {x, y, anchor} whose box stays inside `bounds`, clear of `taken` boxes and `lines`. */
function placeLabel(text, cands, { taken, lines, bounds, size = TICK, bold = true }) {
  let best = null;
  for (const c of cands) {
    const box = textBox(c.x, c.y, text, c.anchor, size, bold);
    const inside = box.x0 >= bounds.x0 && box.x1 <= bounds.x1 && box.y0 >= bounds.y0 && box.y1 <= bounds.y1;
    if (!inside) continue;
    if (taken.some((t) => overlaps(t, box))) continue;
    const hit = lines.some((l) => crossesLine(box, l));
    if (!hit) { taken.push(box); return { ...c, box }; }
    best ??= { ...c, box };
  }
  if (best) { taken.push(best.box); return best; }
  return null;
}

function legendRows(items, x0, width) {
  // [[cls, label]] -> rows of {cls, label, x} that fit in width
  const rows = [[]];
  let x = 0;
  for (const [cls, label] of items) {
    const w = 26 + label.length * LBL * CW + 14;
    if (x > 0 && x + w > width) { rows.push([]); x = 0; }
    rows[rows.length - 1].push({ cls, label, x: x0 + x });
    x += w;
  }
  return rows;
}
function legend(rows, y0) {
  let s = '';
  rows.forEach((row, r) => {
    const y = y0 + r * 18;
    for (const it of row) {
      s += `<line x1="${it.x}" x2="${it.x + 18}" y1="${y}" y2="${y}" class="${it.cls}"/><text x="${it.x + 22}" y="${y + 4}" class="lbl">${esc(it.label)}</text>`;
    }
  });
  return s;
}

/** Horizontal bars: one per category of the peak, plus the allocator's cache and the CUDA context. */
export function breakdownChart(est, { width = 640 } = {}) {
  const b = est.peak.breakdown;
  const rows = CATEGORIES.map(([k, label], i) => ({ label, value: b[k] || 0, cls: `c${i}` }));
  rows.push({ label: 'Allocator cache (reserved − allocated)', value: est.peak.reserved_bytes - est.peak.allocated_bytes, cls: 'c9' });
  rows.push({ label: 'CUDA context (outside the allocator)', value: est.peak.context_bytes, cls: 'c10' });
  const max = Math.max(1, ...rows.map((r) => r.value));
  const W = Math.max(280, Math.round(width));
  const narrow = W < NARROW;
  const labelW = narrow ? 0 : Math.min(260, Math.round(W * 0.4)), valueW = 80;
  const rowH = narrow ? 36 : 22, barW = W - labelW - valueW - 10;
  let body = '';
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    const w = r.value > 0 ? Math.max(1.5, (r.value / max) * barW) : 0;
    const by = narrow ? y + 17 : y + 3;
    body += `<g><title>${esc(r.label)}: ${esc(bytes(r.value))} (${int(r.value)} bytes)</title>`
      + (narrow ? `<text x="0" y="${y + 12}" class="lbl">${esc(r.label)}</text>`
        : `<text x="${labelW - 8}" y="${y + 14}" text-anchor="end" class="lbl">${esc(r.label)}</text>`)
      + `<rect x="${labelW}" y="${by}" width="${w.toFixed(1)}" height="${narrow ? 13 : rowH - 8}" class="bar ${r.cls}" rx="2"/>`
      + `<text x="${(labelW + w + 6).toFixed(1)}" y="${by + 11}" class="val">${esc(bytes(r.value))}</text></g>`;
  });
  const total = est.peak.device_bytes;
  body += `<text x="${labelW}" y="${rows.length * rowH + 20}" class="lbl">Total on the GPU at the peak: ${esc(bytes(total))}</text>`;
  return svg(W, rows.length * rowH + 28, `Memory at the peak by category; total ${bytes(total)}`, body, 'breakdown');
}

function yAxis(W, m, H, ymax, n) {
  const [div, unit] = axisUnit(ymax);
  let s = '';
  const boxes = [];
  for (const t of ticks(ymax / div, n)) {
    const y = H - m.b - ((t * div) / ymax) * (H - m.t - m.b);
    const label = `${+t.toFixed(2)}`;
    s += `<line x1="${m.l}" x2="${W - m.r}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" class="grid"/>`
      + `<text x="${m.l - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end" class="tick">${label}</text>`;
    boxes.push(textBox(m.l - 6, y + 4, label, 'end'));
  }
  s += `<text x="${m.l - 6}" y="${m.t - 8}" text-anchor="end" class="tick">${unit}</text>`;
  boxes.push(textBox(m.l - 6, m.t - 8, unit, 'end'));
  s += `<line x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}" class="axis"/>`;
  return { s, boxes };
}

function polyline(points, cls) {
  return `<polyline fill="none" class="${cls}" points="${points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}"/>`;
}

const label = (p, text, cls) => (p ? `<text x="${p.x.toFixed(1)}" y="${p.y.toFixed(1)}" text-anchor="${p.anchor}" class="${cls} halo">${esc(text)}</text>` : '');

/** A limit line, or a note when it lies far above the data (it would squash the lines flat). */
function limitFits(limit, dataMax) {
  return limit > 0 && limit <= dataMax * 3;
}

/**
 * Allocated and reserved memory op by op through every simulated iteration (setup, then the first step
 * where the optimizer state appears, then the steady ones): the reserved line's top is the verdict's
 * peak reserved, the allocated line's top is the peak allocated, each marked with its iteration.
 */
export function timelineChart(est, { width = 640 } = {}) {
  const pts = (est.timeline || []);
  if (!pts.length) return '<p class="muted">No timeline.</p>';
  const W = Math.max(280, Math.round(width));
  const narrow = W < NARROW;
  const items = [['ln reserved', 'reserved (allocator)'], ['ln allocated', 'allocated (tensors)']];
  const dataMax = Math.max(...pts.map((p) => p.reserved_bytes), 1);
  const limit = est.gpu ? est.usable_bytes : 0;
  const showLimit = limitFits(limit, dataMax);
  if (showLimit) items.push(['limit', 'GPU usable']);
  const rows = legendRows(items, 8, W - 16);
  const plotH = narrow ? 200 : 230;
  const m = { l: 48, r: 12, t: 30, b: 34 };
  const H = m.t + plotH + m.b + rows.length * 18 + 6;
  const bottom = m.t + plotH;
  const ymax = (showLimit ? Math.max(dataMax, limit) : dataMax) * 1.22;
  const n = pts.length;
  const x = (i) => m.l + (n === 1 ? 0 : (i / (n - 1)) * (W - m.l - m.r));
  const y = (v) => bottom - (v / ymax) * plotH;
  const taken = [];
  let bands = '';
  let start = 0;
  for (let i = 1; i <= n; i++) {
    if (i === n || pts[i].phase !== pts[start].phase || pts[i].iteration !== pts[start].iteration) {
      const x0 = start === 0 ? m.l : (x(start - 1) + x(start)) / 2;
      const x1 = i === n ? W - m.r : (x(i - 1) + x(i)) / 2;
      const ph = pts[start].phase;
      bands += `<rect x="${x0.toFixed(1)}" y="${m.t}" width="${(x1 - x0).toFixed(1)}" height="${plotH}" class="band ${esc(ph)}"/>`;
      start = i;
    }
  }
  // iteration separators and names
  let iters = '';
  const its = [...new Set(pts.map((p) => p.iteration))];
  for (const it of its) {
    const first = pts.findIndex((p) => p.iteration === it);
    const last = pts.length - 1 - [...pts].reverse().findIndex((p) => p.iteration === it);
    const x0 = first === 0 ? m.l : (x(first - 1) + x(first)) / 2, x1 = last === n - 1 ? W - m.r : (x(last) + x(last + 1)) / 2;
    if (first > 0) iters += `<line x1="${x0.toFixed(1)}" x2="${x0.toFixed(1)}" y1="${m.t}" y2="${bottom}" class="sep"/>`;
    const name = it === 0 ? 'setup' : narrow ? `it. ${it}` : `iteration ${it}`;
    const box = textBox((x0 + x1) / 2, m.t + 12, name, 'middle');
    if (box.x1 - box.x0 < x1 - x0 - 4) { iters += `<text x="${((x0 + x1) / 2).toFixed(1)}" y="${m.t + 12}" text-anchor="middle" class="phase">${esc(name)}</text>`; taken.push(box); }
  }
  const ax = yAxis(W, m, bottom + m.b, ymax, narrow ? 3 : 5);
  taken.push(...ax.boxes);
  let s = bands + ax.s + iters;
  s += `<text x="${(m.l + W - m.r) / 2}" y="${bottom + 18}" text-anchor="middle" class="tick">${esc(narrow ? 'ops, in order' : 'ops of the training loop, in order')}</text>`;
  taken.push(textBox((m.l + W - m.r) / 2, bottom + 18, narrow ? 'ops, in order' : 'ops of the training loop, in order', 'middle'));
  const resv = pts.map((p, i) => [x(i), y(p.reserved_bytes)]);
  const alloc = pts.map((p, i) => [x(i), y(p.allocated_bytes)]);
  const lines = [resv, alloc];
  const bounds = { x0: m.l, x1: W - m.r, y0: m.t, y1: bottom };
  if (showLimit) {
    s += `<line x1="${m.l}" x2="${W - m.r}" y1="${y(limit).toFixed(1)}" y2="${y(limit).toFixed(1)}" class="limit"/>`;
    lines.push([[m.l, y(limit)], [W - m.r, y(limit)]]);
  }
  s += polyline(resv, 'ln reserved') + polyline(alloc, 'ln allocated');
  pts.forEach((p, i) => {
    s += `<circle cx="${x(i).toFixed(1)}" cy="${y(p.allocated_bytes).toFixed(1)}" r="2.5" class="pt allocated"><title>iteration ${p.iteration}, ${esc(p.phase)} ${esc(p.layer)}: allocated ${esc(bytes(p.allocated_bytes))}, reserved ${esc(bytes(p.reserved_bytes))}</title></circle>`;
  });
  // the two peaks, marked where they happen
  const argmax = (k) => pts.reduce((a, p, i) => (p[k] > pts[a][k] ? i : a), 0);
  const marks = [];
  for (const [k, cls, what] of [['reserved_bytes', 'resvlbl', 'peak reserved'], ['allocated_bytes', 'alloclbl', 'peak allocated']]) {
    const i = argmax(k);
    const text = `${what} ${bytes(pts[i][k])}${narrow ? '' : ` (iteration ${pts[i].iteration})`}`;
    const px = x(i), py = y(pts[i][k]);
    s += `<circle cx="${px.toFixed(1)}" cy="${py.toFixed(1)}" r="4" class="peak ${cls}"/>`;
    const cands = [];
    for (const dy of [-8, 16, -24, 30, -40, 46]) for (const anchor of ['end', 'start', 'middle']) cands.push({ x: px + (anchor === 'end' ? -6 : anchor === 'start' ? 6 : 0), y: py + dy, anchor });
    for (let yy = m.t + 28; yy < bottom - 4; yy += 14) cands.push({ x: W - m.r - 4, y: yy, anchor: 'end' }, { x: m.l + 4, y: yy, anchor: 'start' });
    marks.push(label(placeLabel(text, cands, { taken, lines, bounds }), text, cls));
  }
  if (showLimit) {
    const text = `GPU usable ${bytes(limit)}`;
    const ly = y(limit);
    const cands = [];
    for (const dy of [-5, 14]) for (const xx of [W - m.r - 4, m.l + 4, (m.l + W - m.r) / 2]) cands.push({ x: xx, y: ly + dy, anchor: xx === m.l + 4 ? 'start' : xx === W - m.r - 4 ? 'end' : 'middle' });
    marks.push(label(placeLabel(text, cands, { taken, lines, bounds }), text, 'limitlbl'));
  }
  s += marks.join('');
  s += legend(rows, bottom + m.b + 8);
  if (!showLimit && limit > 0) s += `<text x="${W - 8}" y="${bottom + m.b + 8 + rows.length * 18}" text-anchor="end" class="muted-t">GPU usable ${esc(bytes(limit))}: far above this chart</text>`;
  return svg(W, H + (!showLimit && limit > 0 ? 16 : 0), `Memory through ${its.length} iterations of the training loop: peak reserved ${bytes(dataMax)}, peak allocated ${bytes(Math.max(...pts.map((p) => p.allocated_bytes)))}`, s, 'timeline');
}

/**
 * Peak memory against batch size, with the GPU's usable memory, the largest batch that fits and the
 * chosen batch. The x axis is logarithmic when the batches shown span more than 8x (so batch 64 is not a
 * dot at the origin next to a largest batch of 10,000), linear otherwise.
 */
export function sweepChart(points, { usable, maxBatch, batch, batchReserved, width = 640 }) {
  if (!points || !points.length) return '<p class="muted">No data.</p>';
  const W = Math.max(280, Math.round(width));
  const narrow = W < NARROW;
  const xmax = points[points.length - 1].batch;
  const lo = Math.max(1, Math.min(batch || xmax, maxBatch || xmax));
  const log = xmax / lo > 8;
  const dataMax = Math.max(...points.map((p) => p.reserved_bytes), 1);
  const showLimit = usable > 0;
  const items = [['ln reserved', 'reserved (allocator)'], ['ln allocated', 'allocated (tensors)']].concat(showLimit ? [['limit', 'GPU usable']] : []);
  const rows = legendRows(items, 8, W - 16);
  const plotH = narrow ? 200 : 240;
  const m = { l: 48, r: 20, t: 30, b: 38 };
  const bottom = m.t + plotH;
  const H = bottom + m.b + rows.length * 18 + 6;
  const ymax = Math.max(dataMax, showLimit ? usable : 0) * 1.2;
  const plotW = W - m.l - m.r;
  const x = log ? (b) => m.l + (Math.log(Math.max(1, b)) / Math.log(xmax)) * plotW
    : (b) => m.l + ((b - 1) / Math.max(1, xmax - 1)) * plotW;
  const y = (v) => bottom - (v / ymax) * plotH;
  const taken = [];
  const ax = yAxis(W, m, bottom + m.b, ymax, narrow ? 3 : 5);
  taken.push(...ax.boxes);
  let xt = '';
  let tv;
  if (log) {
    tv = [];
    const dec = Math.log10(xmax);
    const mult = dec < 2.5 ? [1, 2, 5] : dec < 4 && !narrow ? [1, 3] : [1];
    for (let p = 1; p <= xmax; p *= 10) for (const k of mult) if (p * k <= xmax) tv.push(p * k);
  } else tv = ticks(xmax, Math.max(3, Math.floor(plotW / 80))).map((t) => Math.max(1, t));
  let prev = null;
  for (const t of tv) {
    const xx = x(t);
    const text = compactInt(t);
    const box = textBox(xx, bottom + 16, text, 'middle');
    if (box.x1 > W || box.x0 < 0 || (prev && overlaps(prev, box))) continue;
    prev = box;
    taken.push(box);
    xt += `<line x1="${xx.toFixed(1)}" x2="${xx.toFixed(1)}" y1="${bottom}" y2="${bottom + 4}" class="axis"/><text x="${xx.toFixed(1)}" y="${bottom + 16}" text-anchor="middle" class="tick">${text}</text>`;
  }
  const axisName = `batch size${log ? ' (log scale)' : ''}`;
  xt += `<text x="${(m.l + W - m.r) / 2}" y="${bottom + 32}" text-anchor="middle" class="tick">${axisName}</text>`;
  taken.push(textBox((m.l + W - m.r) / 2, bottom + 32, axisName, 'middle'));
  let s = ax.s + xt;
  const resv = points.map((p) => [x(p.batch), y(p.reserved_bytes)]);
  const alloc = points.map((p) => [x(p.batch), y(p.allocated_bytes)]);
  const lines = [resv, alloc];
  const bounds = { x0: m.l, x1: W - m.r, y0: m.t - 4, y1: bottom };
  if (showLimit) {
    s += `<line x1="${m.l}" x2="${W - m.r}" y1="${y(usable).toFixed(1)}" y2="${y(usable).toFixed(1)}" class="limit"/>`;
    lines.push([[m.l, y(usable)], [W - m.r, y(usable)]]);
  }
  if (maxBatch > 0 && maxBatch <= xmax) {
    const xx = x(maxBatch);
    s += `<line x1="${xx.toFixed(1)}" x2="${xx.toFixed(1)}" y1="${m.t}" y2="${bottom}" class="maxb"/>`;
    lines.push([[xx, m.t], [xx, bottom]]);
  }
  s += polyline(resv, 'ln reserved') + polyline(alloc, 'ln allocated');
  points.forEach((p) => {
    s += `<circle cx="${x(p.batch).toFixed(1)}" cy="${y(p.reserved_bytes).toFixed(1)}" r="2.5" class="pt reserved"><title>batch ${int(p.batch)}: reserved ${esc(bytes(p.reserved_bytes))}, allocated ${esc(bytes(p.allocated_bytes))}</title></circle>`;
  });
  const grid = [];
  for (let yy = m.t + 10; yy < bottom - 2; yy += 13) grid.push(yy);
  let marks = '';
  if (maxBatch > 0 && maxBatch <= xmax) {
    const xx = x(maxBatch);
    const text = `largest batch ${int(maxBatch)}`;
    const cands = [];
    for (const yy of grid) cands.push({ x: xx - 5, y: yy, anchor: 'end' }, { x: xx + 5, y: yy, anchor: 'start' });
    marks += label(placeLabel(text, cands, { taken, lines, bounds }), text, 'maxblbl');
  }
  if (showLimit) {
    const text = `GPU usable ${bytes(usable)}`;
    const ly = y(usable);
    const cands = [];
    for (const dy of [-5, 15, -18, 28]) for (const [xx, anchor] of [[m.l + 4, 'start'], [W - m.r - 4, 'end'], [(m.l + W - m.r) / 2, 'middle']]) cands.push({ x: xx, y: ly + dy, anchor });
    marks += label(placeLabel(text, cands, { taken, lines, bounds }), text, 'limitlbl');
  }
  if (batch >= 1 && batch <= xmax && batchReserved != null) {
    const cx = x(batch), cy = y(batchReserved);
    s += `<circle cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="5" class="cur" data-batch="${batch}"><title>your batch ${int(batch)}: reserved ${esc(bytes(batchReserved))}</title></circle>`;
    taken.push({ x0: cx - 6, y0: cy - 6, x1: cx + 6, y1: cy + 6 });
    const text = `your batch ${int(batch)}`;
    const cands = [];
    for (const dy of [-10, -24, -38, -52, 18]) cands.push({ x: cx + 8, y: cy + dy, anchor: 'start' }, { x: cx - 8, y: cy + dy, anchor: 'end' }, { x: cx, y: cy + dy, anchor: 'middle' });
    marks += label(placeLabel(text, cands, { taken, lines, bounds }), text, 'curlbl');
  }
  s += marks + legend(rows, bottom + m.b + 10);
  return svg(W, H, `Peak memory against batch size up to ${int(xmax)}; largest batch that fits ${int(maxBatch)}`, s, 'sweep');
}

/** A chart's data as a table inside <details> (reachable by keyboard, touch and screen readers). */
export function dataTable(summary, head, rows) {
  return `<details class="data"><summary>${esc(summary)}</summary><div class="table-wrap"><table><thead><tr>${head.map((h, i) => `<th scope="col"${i ? ' class="num"' : ''}>${esc(h)}</th>`).join('')}</tr></thead>`
    + `<tbody>${rows.map((r) => `<tr>${r.map((c, i) => `<td${i ? ' class="num"' : ''}>${esc(c)}</td>`).join('')}</tr>`).join('')}</tbody></table></div></details>`;
}
