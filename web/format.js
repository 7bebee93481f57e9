// Number and size formatting. Sizes are binary (KiB, MiB, GiB = 1024^n bytes) and always carry their unit.
const KiB = 1024, MiB = 1024 ** 2, GiB = 1024 ** 3, TiB = 1024 ** 4;

export function bytes(n) {
  if (n == null || Number.isNaN(n)) return '–';
  const a = Math.abs(n), s = n < 0 ? '−' : '';
  if (a >= TiB) return `${s}${(a / TiB).toFixed(2)} TiB`;
  if (a >= GiB) return `${s}${(a / GiB).toFixed(2)} GiB`;
  if (a >= MiB) return `${s}${(a / MiB).toFixed(1)} MiB`;
  if (a >= KiB) return `${s}${(a / KiB).toFixed(1)} KiB`;
  return `${s}${a} B`;
}

/** Exact byte count for tooltips: "1,705,312,260 bytes". */
export function exactBytes(n) {
  return `${int(n)} bytes`;
}

export function int(n) {
  return Number(n).toLocaleString('en-US');
}

/** A "nice" axis unit for a maximum value: [divisor, label]. */
export function axisUnit(max) {
  if (max >= GiB) return [GiB, 'GiB'];
  if (max >= MiB) return [MiB, 'MiB'];
  if (max >= KiB) return [KiB, 'KiB'];
  return [1, 'B'];
}

/** Round tick values 0..max (about n ticks). */
export function ticks(max, n = 5) {
  if (!(max > 0)) return [0];
  const raw = max / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = 0; v <= max * 1.0001; v += step) out.push(v);
  return out;
}

export function shape(s) {
  return s && s.length ? `[${s.join(', ')}]` : '[]';
}

export function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

/** Short axis labels: 950, 1.5k, 10k, 150k, 1.2M. */
export function compactInt(n) {
  const a = Math.abs(n);
  const f = (v, u) => `${+v.toFixed(v < 10 ? 1 : 0)}${u}`;
  if (a >= 1e6) return f(n / 1e6, 'M');
  if (a >= 1e3) return f(n / 1e3, 'k');
  return String(Math.round(n));
}
