// The memfit calculator UI: one implementation for the full page (index.html), the embed page
// (embed.html) and the <memfit-calculator> element. It only builds requests and draws the core's JSON;
// every number comes from the WebAssembly module (memfit::handle_request).
import { request, builtinModels, gpuCatalog } from './memfit-client.js';
import { bytes, int, shape, esc, exactBytes } from './format.js';
import { breakdownChart, timelineChart, sweepChart } from './charts.js';

export const DEFAULTS = { preset: 'question_cnn', batch: 64, dtype: 'fp32', optimizer: 'sgd', impl: 'foreach', gpu: 'RTX 3090' };
const DTYPES = [['fp32', 'fp32 (float32)'], ['fp16', 'fp16 (autocast mixed precision)'], ['bf16', 'bf16 (autocast mixed precision)']];
const OPTIMIZERS = [['sgd', 'SGD'], ['sgd-momentum', 'SGD with momentum'], ['adam', 'Adam'], ['adamw', 'AdamW'], ['adagrad', 'Adagrad'], ['rmsprop', 'RMSprop']];
const IMPLS = [['foreach', 'foreach (PyTorch default on CUDA)'], ['fused', 'fused'], ['for-loop', 'for-loop']];
const CUSTOM = '__custom__';
const MODEL_FILE = 'model';  // the file name the core puts in errors for the editor's text
const BATCH_MAX = 10_000_000;

// Performance marks for tests and the benchmark (tests/web/bench.mjs).
const perf = (globalThis.memfitPerf ??= { firstVerdictAt: null, calls: [] });

let uid = 0;

const HELP = `
<p>One layer per line: <code>[name:] kind arguments key=value</code>. <code>#</code> starts a comment.</p>
<ul>
  <li><code>model NAME</code> – the model's name (first line).</li>
  <li><code>input 50x50x3 layout=hwc</code> – one input, first; <code>layout=chw</code> for PyTorch order, or <code>input 784</code>.</li>
  <li><code>conv 32 3x3 pad=same stride=1</code>, <code>maxpool 2x2 stride=2</code>, <code>avgpool</code>, <code>gap</code> (global average pool)</li>
  <li><code>fc 500</code> (linear), <code>flatten</code>, <code>bn</code> (batch norm), <code>dropout</code></li>
  <li><code>relu</code>, <code>relu6</code>, <code>leaky_relu</code>, <code>gelu</code>, <code>silu</code>, <code>sigmoid</code>, <code>tanh</code>, <code>softmax</code>, <code>log_softmax</code></li>
  <li><code>add from=a,b</code> / <code>concat from=a,b</code> – join earlier layers (residuals).</li>
  <li><code>block NAME param=default</code> … <code>end</code> defines a block (<code>$param</code>, <code>in</code> = its input); <code>repeat 3 NAME</code> repeats it.</li>
  <li>The loss (<code>nn.CrossEntropyLoss</code>) is appended unless the last layer is <code>cross_entropy</code>.</li>
</ul>
<pre>model tiny_mlp
input 784
fc1: fc 256
relu
fc2: fc 10</pre>
<p>Tab moves to the next field; indent with spaces. Pick a preset above to see bigger examples.</p>`;

function opt(list, value) {
  return list.map(([v, l]) => `<option value="${esc(v)}"${v === value ? ' selected' : ''}>${esc(l)}</option>`).join('');
}

/** Batch slider: logarithmic, 0..200 -> 1..BATCH_MAX-ish (2^(v/8)). */
const sliderToBatch = (v) => Math.max(1, Math.round(2 ** (v / 8)));
const batchToSlider = (b) => Math.round(Math.log2(Math.max(1, b)) * 8);

function gpuLabel(g) {
  return `${g.name} — ${bytes(g.memory_bytes)}`;
}

function humanChange(change) {
  const m = /^--([a-z-]+)\s+(.+)$/.exec(change);
  if (!m) return { text: change };
  const [, flag, value] = m;
  if (flag === 'batch') return { text: `Batch size ${int(value)}`, apply: { batch: Number(value) } };
  if (flag === 'dtype') return { text: `Precision ${value} (autocast)`, apply: { dtype: value } };
  if (flag === 'optimizer') return { text: `Optimizer ${(OPTIMIZERS.find(([v]) => v === value) || [0, value])[1]}`, apply: { optimizer: value } };
  if (flag === 'optimizer-impl') return { text: `Optimizer implementation ${value}`, apply: { impl: value } };
  return { text: change };
}

/**
 * Mounts a calculator into `host` (an element or a shadow root).
 * opts.mode: 'full' (the page) or 'compact' (embedded). opts.state: {preset, text, batch, dtype,
 * optimizer, impl, gpu}. opts.onState(state): called after every change (the page writes the URL).
 * Returns {setState, getState, ready}.
 */
export function mountCalculator(host, opts = {}) {
  const mode = opts.mode || 'full';
  const id = `mf${++uid}`;
  const state = { ...DEFAULTS, text: null, ...(opts.state || {}) };
  const root = document.createElement('div');
  root.className = `mf ${mode}`;
  root.innerHTML = template(id, mode, state);
  host.appendChild(root);
  const $ = (r) => root.querySelector(`[data-r="${r}"]`);
  const el = {
    preset: $('preset'), text: $('text'), gutter: $('gutter'), hl: $('hl'), err: $('err'), batch: $('batch'), range: $('range'),
    dtype: $('dtype'), optimizer: $('optimizer'), impl: $('impl'), gpu: $('gpu'), gpuCustom: $('gpuCustom'), gpuCustomWrap: $('gpuCustomWrap'),
    settingsErr: $('settingsErr'), verdict: $('verdict'), remedies: $('remedies'), breakdown: $('breakdown'), timeline: $('timeline'),
    sweep: $('sweep'), layers: $('layers'), rules: $('rules'), notes: $('notes'), timing: $('timing'), copy: $('copy'), copyStatus: $('copyStatus'),
    full: $('full'),
  };
  let models = [];
  let gpus = [];
  let seq = 0;
  let last = null;       // last good estimate
  let lastMax = null;    // last good max-batch result (number)
  let errorLine = 0;
  let timer = 0;
  let notice = null;     // a message for the settings area (e.g. an unknown preset name)

  // ---------- editor ----------
  function renderGutter() {
    const n = Math.max(1, el.text.value.split('\n').length);
    let s = '';
    for (let i = 1; i <= n; i++) s += `<div${i === errorLine ? ' class="err"' : ''}>${i}</div>`;
    el.gutter.innerHTML = s;
    syncScroll();
  }
  function syncScroll() {
    const st = el.text.scrollTop;
    el.gutter.scrollTop = st;
    if (errorLine > 0) {
      el.hl.style.display = 'block';
      el.hl.style.top = `${8 + (errorLine - 1) * 20 - st}px`;
    } else el.hl.style.display = 'none';
  }
  function showModelError(e) {
    errorLine = e.line > 0 ? e.line : 0;
    el.text.setAttribute('aria-invalid', 'true');
    const where = e.line > 0 ? `Line ${e.line}${e.column > 0 ? `, column ${e.column}` : ''}` : 'Model';
    el.err.innerHTML = `<span class="where">${esc(where)}:</span> ${esc(e.problem || e.message)}`
      + (e.layer ? ` <span class="muted">(layer ${esc(e.layer)})</span>` : '')
      + (e.fix ? `<br><span>Fix: ${esc(e.fix)}</span>` : '')
      + (e.line > 0 ? ` <button type="button" data-r="goto">Go to line ${e.line}</button>` : '');
    el.err.hidden = false;
    const go = el.err.querySelector('[data-r="goto"]');
    if (go) go.onclick = () => gotoLine(e.line, e.column);
    el.err.dataset.line = String(e.line);
    renderGutter();
  }
  function clearModelError() {
    errorLine = 0;
    el.text.removeAttribute('aria-invalid');
    el.err.hidden = true;
    el.err.textContent = '';
    delete el.err.dataset.line;
    renderGutter();
  }
  function gotoLine(line, column) {
    const lines = el.text.value.split('\n');
    let pos = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
    pos += Math.max(0, (column || 1) - 1);
    el.text.focus();
    el.text.setSelectionRange(pos, pos);
    el.text.scrollTop = Math.max(0, (line - 3) * 20);
    syncScroll();
  }

  // ---------- state <-> controls ----------
  function readControls() {
    state.text = el.text.value;
    const p = models.find((m) => m.name === el.preset.value);
    state.preset = p && p.text === state.text ? p.name : null;
    if (!state.preset && el.preset.value) el.preset.value = '';
    const b = Math.floor(Number(el.batch.value));
    state.batch = Number.isFinite(b) && b >= 1 ? Math.min(b, BATCH_MAX) : state.batch;
    state.dtype = el.dtype.value;
    state.optimizer = el.optimizer.value;
    state.impl = el.impl ? el.impl.value : state.impl;
    state.gpu = el.gpu.value === CUSTOM ? el.gpuCustom.value.trim() : el.gpu.value;
  }
  function writeControls() {
    if (el.text.value !== state.text) el.text.value = state.text;
    el.preset.value = state.preset && models.some((m) => m.name === state.preset) ? state.preset : '';
    el.batch.value = String(state.batch);
    el.range.value = String(batchToSlider(state.batch));
    el.dtype.value = state.dtype;
    el.optimizer.value = state.optimizer;
    if (el.impl) el.impl.value = state.impl;
    if (gpus.some((g) => g.name === state.gpu)) {
      el.gpu.value = state.gpu;
      el.gpuCustomWrap.hidden = true;
    } else {
      el.gpu.value = CUSTOM;
      el.gpuCustom.value = state.gpu;
      el.gpuCustomWrap.hidden = false;
    }
    renderGutter();
  }
  function changed(delay) {
    readControls();
    if (opts.onState) opts.onState({ ...state });
    clearTimeout(timer);
    timer = setTimeout(run, delay);
  }

  // ---------- the pipeline ----------
  function options(st) {
    const o = { batch: String(st.batch), dtype: st.dtype, optimizer: st.optimizer, gpu: st.gpu };
    if (st.impl && st.impl !== 'foreach') o.optimizer_impl = st.impl;
    return o;
  }
  async function call(req, kind) {
    const r = await request(req);
    perf.calls.push({ kind, ms: r.ms, model: req.model && req.model.length, at: performance.now() });
    return r;
  }
  async function run() {
    const my = ++seq;
    const st = { ...state };
    const base = { model: st.text, file: MODEL_FILE, options: options(st) };
    let r;
    try {
      r = await call({ ...base, command: 'estimate', options: { ...base.options, timeline: true } }, 'estimate');
    } catch (e) {
      el.verdict.innerHTML = `<p class="bad">The memfit module failed: ${esc(e.message)}</p>`;
      return;
    }
    if (my !== seq) return;
    const res = r.result;
    if (res.error) {
      showError(res.error);
      return;
    }
    clearModelError();
    if (notice) {
      el.settingsErr.textContent = notice;
      el.settingsErr.hidden = false;
      notice = null;
    } else el.settingsErr.hidden = true;
    last = res;
    const timings = { estimate: r.ms };
    renderEstimate(res, null);
    renderTiming(timings);
    if (perf.firstVerdictAt == null) perf.firstVerdictAt = performance.now();
    root.dispatchEvent(new CustomEvent('memfit-result', { bubbles: true, composed: true, detail: { estimate: res, ms: r.ms } }));
    if (!res.gpu) return;
    const mb = await call({ ...base, command: 'max-batch' }, 'max-batch');
    if (my !== seq) return;
    lastMax = mb.result.error ? null : mb.result.max_batch;
    timings.maxBatch = mb.ms;
    renderEstimate(res, lastMax);
    renderTiming(timings);
    if (!el.sweep) return;
    const top = Math.max(st.batch, lastMax || 0);
    const upTo = Math.max(16, Math.min(2 ** 30, Math.ceil(top * 1.5)));
    const sw = await call({ ...base, command: 'sweep', sweep_up_to: upTo, sweep_points: 24 }, 'sweep');
    if (my !== seq) return;
    timings.sweep = sw.ms;
    renderTiming(timings);
    if (sw.result.error) el.sweep.innerHTML = `<p class="muted">${esc(sw.result.error.message)}</p>`;
    else el.sweep.innerHTML = sweepChart(sw.result.points, { usable: res.usable_bytes, maxBatch: lastMax || 0, batch: st.batch, wide: mode === 'full' });
  }

  function showError(e) {
    if (e.file === MODEL_FILE) showModelError(e);
    else {
      clearModelError();
      el.settingsErr.textContent = `${e.problem || e.message}${e.fix ? ` — ${e.fix}` : ''}`;
      el.settingsErr.hidden = false;
    }
    const stale = root.querySelector('[data-r="stale"]');
    if (stale) stale.hidden = !last;
    if (!last) el.verdict.innerHTML = '<p class="bad big">No result yet: fix the error above.</p>';
  }

  function renderTiming(t) {
    if (!el.timing) return;
    const parts = [`estimate ${t.estimate.toFixed(1)} ms`];
    if (t.maxBatch != null) parts.push(`largest batch ${t.maxBatch.toFixed(1)} ms`);
    if (t.sweep != null) parts.push(`batch sweep ${t.sweep.toFixed(1)} ms`);
    el.timing.textContent = `Computed in your browser (WebAssembly): ${parts.join(', ')}.`;
    root.dataset.estimateMs = t.estimate.toFixed(2);
  }

  function renderEstimate(e, maxB) {
    const s = e.settings;
    const optName = (OPTIMIZERS.find(([v]) => v === s.optimizer) || [0, s.optimizer])[1];
    const where = `peak in ${e.peak.phase.replace('_', ' ')}${e.peak.layer ? ` at ${esc(e.peak.layer)}` : ''}, iteration ${e.peak.iteration}`;
    const maxText = maxB == null ? '<span class="muted">computing…</span>'
      : maxB === 0 ? '<span class="bad">none: even batch 1 does not fit</span>' : `<b data-r="maxBatch">${int(maxB)}</b>`;
    let head;
    if (!e.gpu) {
      el.verdict.className = 'verdict';
      head = `<p class="big">Peak ${esc(bytes(e.peak.reserved_bytes))} reserved</p>`;
    } else {
      const fits = e.fits;
      el.verdict.className = `verdict ${fits ? 'fits' : 'nofit'}`;
      // what the allocator holds at the peak on this GPU: usable - headroom (with a capacity, a full cache is
      // freed and the allocation retried, so this can be below the uncapped peak reserved)
      const used = e.usable_bytes - e.headroom_bytes;
      const pct = Math.min(100, (100 * used) / Math.max(1, e.usable_bytes));
      head = `<p class="big" data-r="verdictText">${fits ? '✓ Fits' : '✗ Does not fit'} on ${esc(e.gpu.name)}</p>`
        + `<p>Peak <b title="${esc(exactBytes(used))}">${esc(bytes(used))}</b> reserved by PyTorch's allocator of `
        + `<b title="${esc(exactBytes(e.usable_bytes))}">${esc(bytes(e.usable_bytes))}</b> usable — `
        + (e.headroom_bytes >= 0 ? `<b>${esc(bytes(e.headroom_bytes))}</b> headroom` : `<b>${esc(bytes(-e.headroom_bytes))}</b> missing`)
        + `</p><div class="meter" role="img" aria-label="${pct.toFixed(0)}% of usable memory"><span style="width:${pct.toFixed(1)}%"></span></div>`
        + (e.fits_only_by_freeing_cache ? `<p class="muted">Fits only because the allocator frees its cached blocks and retries when it reaches the limit (its cache would otherwise grow to ${esc(bytes(e.peak.reserved_bytes))}); steps get slower.</p>` : '');
    }
    el.verdict.innerHTML = head
      + `<div class="facts"><span>Parameters <b data-r="params">${int(e.totals.params)}</b></span>`
      + (e.gpu ? `<span>Largest batch that fits: ${maxText}</span>` : '')
      + `<span>On the GPU at the peak (with CUDA context) <b>${esc(bytes(e.peak.device_bytes))}</b></span>`
      + `<span class="muted">${esc(e.model.name)} · batch ${int(s.batch)} · ${esc(s.dtype)} · ${esc(optName)} · ${where}</span></div>`
      + (e.gpu ? `<p class="muted" style="font-size:.82rem">Usable = the GPU's CUDA-visible ${esc(bytes(e.gpu.cuda_total_bytes))} − CUDA context ${esc(bytes(e.peak.context_bytes))}.</p>` : '')
      + '<p class="stale" data-r="stale" hidden>Showing the last good result (the current input has an error).</p>';

    // remedies
    const rem = e.remedies || [];
    if (e.fits === false && rem.length) {
      el.remedies.hidden = false;
      el.remedies.innerHTML = '<h2>What to change so it fits</h2><ul>' + rem.map((r, i) => {
        const h = humanChange(r.change);
        const result = !r.fits ? `<span class="bad">still does not fit</span> (${esc(bytes(r.peak_reserved_bytes))} reserved)`
          : r.peak_reserved_bytes > e.usable_bytes ? '<span class="ok">fits</span> (the allocator frees its cache at the limit)'
            : `<span class="ok">fits</span> (${esc(bytes(r.peak_reserved_bytes))} reserved, ${esc(bytes(e.usable_bytes - r.peak_reserved_bytes))} headroom)`;
        return `<li><div class="rem-text"><b>${esc(h.text)}</b> → ${result}<br><span class="muted">${esc(r.why)}</span></div>`
          + (h.apply ? `<button type="button" data-apply="${i}" aria-label="Apply: ${esc(h.text)}">Apply</button>` : `<code>${esc(r.change)}</code>`) + '</li>';
      }).join('') + '</ul>';
      el.remedies.querySelectorAll('[data-apply]').forEach((b) => {
        b.onclick = () => setState(humanChange(rem[Number(b.dataset.apply)].change).apply);
      });
    } else if (e.fits === false) {
      el.remedies.hidden = false;
      el.remedies.innerHTML = '<h2>What to change so it fits</h2><p>memfit found no single change that makes it fit: choose a larger GPU or a smaller model.</p>';
    } else {
      el.remedies.hidden = true;
      el.remedies.innerHTML = '';
    }

    el.breakdown.innerHTML = breakdownChart(e);
    if (el.timeline) el.timeline.innerHTML = timelineChart(e);
    if (el.layers) el.layers.innerHTML = layersTable(e);
    if (el.rules) el.rules.innerHTML = rulesTable(e);
    if (el.notes) el.notes.innerHTML = e.notes.length ? `<ul>${e.notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : '<p class="muted">None.</p>';
    if (el.full) el.full.href = new URL(`index.html${hashFor(state)}`, new URL('.', import.meta.url)).href;
  }

  function setState(patch) {
    Object.assign(state, patch);
    if (patch.preset) {
      const m = models.find((x) => x.name === patch.preset);
      if (m) state.text = m.text;
    }
    writeControls();
    changed(0);
  }

  // ---------- events ----------
  el.text.addEventListener('input', () => { renderGutter(); changed(150); });
  el.text.addEventListener('scroll', syncScroll);
  el.preset.addEventListener('change', () => {
    const m = models.find((x) => x.name === el.preset.value);
    if (m) { el.text.value = m.text; renderGutter(); changed(0); }
  });
  el.batch.addEventListener('input', () => {
    const b = Math.floor(Number(el.batch.value));
    if (b >= 1) el.range.value = String(batchToSlider(b));
    changed(120);
  });
  el.range.addEventListener('input', () => { el.batch.value = String(sliderToBatch(Number(el.range.value))); changed(60); });
  for (const k of ['dtype', 'optimizer', 'impl']) if (el[k]) el[k].addEventListener('change', () => changed(0));
  el.gpu.addEventListener('change', () => {
    el.gpuCustomWrap.hidden = el.gpu.value !== CUSTOM;
    if (el.gpu.value === CUSTOM && !el.gpuCustom.value) el.gpuCustom.value = '24GiB';
    changed(0);
  });
  el.gpuCustom.addEventListener('input', () => changed(200));
  if (el.copy) {
    el.copy.addEventListener('click', async () => {
      const url = opts.shareUrl ? await opts.shareUrl({ ...state }) : location.href;
      try {
        await navigator.clipboard.writeText(url);
        el.copyStatus.textContent = 'Link copied.';
      } catch {
        el.copyStatus.textContent = `Copy this link: ${url}`;
      }
    });
  }

  // ---------- start ----------
  const ready = (async () => {
    [models, gpus] = await Promise.all([builtinModels(), gpuCatalog()]);
    el.preset.innerHTML = '<option value="">(your own model)</option>' + models.map((m) => `<option value="${esc(m.name)}">${esc(m.name)}</option>`).join('');
    el.gpu.innerHTML = gpus.map((g) => `<option value="${esc(g.name)}">${esc(gpuLabel(g))}</option>`).join('')
      + `<option value="${CUSTOM}">Custom size…</option>`;
    if (state.text == null) {
      const m = models.find((x) => x.name === state.preset) || models.find((x) => x.name === DEFAULTS.preset) || models[0];
      if (state.preset && m.name !== state.preset) {
        // unknown preset: say so in the editor's error area once the default is loaded
        notice = `There is no builtin model '${state.preset}'; showing ${m.name}. Builtin models: ${models.map((x) => x.name).join(', ')}.`;
      }
      state.text = m.text;
      state.preset = m.name;
    }
    writeControls();
    await run();
  })();

  return { setState, getState: () => ({ ...state }), ready, root };
}

function template(id, mode, state) {
  const compact = mode === 'compact';
  const editor = `
    <div class="field">
      <label for="${id}-preset">Model preset</label>
      <select id="${id}-preset" data-r="preset"><option>${esc(state.preset || '')}</option></select>
    </div>
    <label for="${id}-text">Model <span class="muted">(memfit text format; results update as you type)</span></label>
    <div class="editor">
      <div class="gutter" data-r="gutter" aria-hidden="true"></div>
      <div class="editor-main">
        <div class="hl" data-r="hl" aria-hidden="true"></div>
        <textarea class="code" id="${id}-text" data-r="text" spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off"
          rows="${compact ? 10 : 16}" aria-describedby="${id}-err ${id}-helpsum"></textarea>
      </div>
    </div>
    <div class="editor-error" id="${id}-err" data-r="err" role="alert" hidden></div>
    <details class="help"><summary id="${id}-helpsum">Syntax help</summary>${HELP}</details>`;
  const settings = `
    <div class="settings">
      <div class="field wide">
        <label for="${id}-batch">Batch size</label>
        <div class="batch-row">
          <input type="number" id="${id}-batch" data-r="batch" min="1" max="${BATCH_MAX}" step="1" inputmode="numeric">
          <input type="range" data-r="range" min="0" max="186" step="1" aria-label="Batch size slider (doubles every 8 steps)">
        </div>
      </div>
      <div class="field">
        <label for="${id}-dtype">Precision</label>
        <select id="${id}-dtype" data-r="dtype">${opt(DTYPES, state.dtype)}</select>
      </div>
      <div class="field">
        <label for="${id}-opt">Optimizer</label>
        <select id="${id}-opt" data-r="optimizer">${opt(OPTIMIZERS, state.optimizer)}</select>
      </div>
      ${compact ? '' : `<div class="field">
        <label for="${id}-impl">Optimizer implementation</label>
        <select id="${id}-impl" data-r="impl">${opt(IMPLS, state.impl)}</select>
      </div>`}
      <div class="field">
        <label for="${id}-gpu">GPU</label>
        <select id="${id}-gpu" data-r="gpu"><option>${esc(state.gpu)}</option></select>
        <div data-r="gpuCustomWrap" hidden>
          <label for="${id}-gpuc" class="visually-hidden">Custom GPU memory size</label>
          <input type="text" id="${id}-gpuc" data-r="gpuCustom" placeholder="24GiB" aria-describedby="${id}-gpuchint" style="margin-top:.3rem;width:100%">
          <div class="hint" id="${id}-gpuchint">A size such as 24GiB, 12GB or 12000MiB.</div>
        </div>
      </div>
    </div>
    <p class="settings-error" data-r="settingsErr" role="alert" hidden></p>
    ${compact ? '' : `<div class="row"><button type="button" class="primary" data-r="copy">Copy link to this calculation</button><span class="copy-status" data-r="copyStatus" role="status" aria-live="polite"></span></div>`}`;
  if (compact) {
    return `
      <div class="panel">${settings}
        <details class="model"><summary>Model: edit the layers</summary>${editor}</details>
      </div>
      <section class="verdict" data-r="verdict" role="status" aria-live="polite"><p class="loading">Loading the memfit module…</p></section>
      <section class="remedies" data-r="remedies" hidden></section>
      <section><h2>Where the memory goes at the peak</h2><figure data-r="breakdown"></figure></section>
      <section><h2>Memory against batch size</h2><figure data-r="sweep"></figure></section>
      <p class="timing"><a data-r="full" href="index.html" target="_blank" rel="noopener">Open in the full calculator</a> · <span data-r="timing"></span></p>`;
  }
  return `
    <div class="inputs">
      <div class="panel">${editor}</div>
      <div class="panel"><h2>Training settings</h2>${settings}</div>
    </div>
    <section class="verdict" data-r="verdict" role="status" aria-live="polite"><p class="loading">Loading the memfit module…</p></section>
    <section class="remedies" data-r="remedies" hidden></section>
    <div class="charts">
      <section><h2>Where the memory goes at the peak</h2><figure data-r="breakdown"></figure>
        <figcaption>Tensors alive at the peak by category, the allocator's cached free blocks, and the CUDA context.</figcaption></section>
      <section><h2>Memory through one training step</h2><figure data-r="timeline"></figure>
        <figcaption>Allocated (live tensors) and reserved (PyTorch's caching allocator) after each op of the iteration with the peak.</figcaption></section>
      <section class="span2"><h2>Memory against batch size</h2><figure data-r="sweep"><p class="muted">computing…</p></figure>
        <figcaption>Peak memory for each batch size without a limit. Past the GPU's usable line the allocator first frees its cache and retries; the largest batch is where even that runs out.</figcaption></section>
    </div>
    <section><h2>Per layer</h2><div class="table-wrap" data-r="layers"></div>
      <p class="hint">Saved tensors are what autograd keeps for the backward pass; grey ones are counted elsewhere (parameters, the input batch, or an earlier layer).</p></section>
    <section><h2>Rules of thumb compared</h2><div data-r="rules"></div></section>
    <section><h2>Notes</h2><div data-r="notes"></div><p class="timing" data-r="timing"></p></section>`;
}

function layersTable(e) {
  const rows = e.layers.map((l) => {
    const saved = l.saved.map((s) => `<div class="saved${s.counted ? '' : ' uncounted'}" title="${esc(s.note || (s.counted ? 'counted here' : ''))}">`
      + `${esc(s.role)}${s.tensor ? ` (${esc(s.tensor)})` : ''}: ${esc(s.dtype)} ${esc(shape(s.shape))} ${esc(bytes(s.bytes))}</div>`).join('');
    return `<tr><td>${esc(l.name)}</td><td>${esc(l.kind)}</td><td class="shape">${esc(shape(l.output_shape))}<br><span class="muted">${esc(l.output_dtype)}, ${esc(bytes(l.output_bytes))}</span></td>`
      + `<td class="num">${int(l.params)}</td><td>${saved || '<span class="muted">—</span>'}</td><td class="num">${esc(bytes(l.saved_bytes))}</td>`
      + `<td class="num">${esc(bytes(l.grad_bytes))}</td><td class="num">${esc(bytes(l.optimizer_bytes))}</td></tr>`;
  }).join('');
  const t = e.totals;
  return `<table><thead><tr><th scope="col">Layer</th><th scope="col">Kind</th><th scope="col">Output shape</th><th scope="col" class="num">Parameters</th>`
    + `<th scope="col">Saved for backward (dtype, shape, size)</th><th scope="col" class="num">Saved</th><th scope="col" class="num">Gradients</th><th scope="col" class="num">Optimizer state</th></tr></thead>`
    + `<tbody>${rows}</tbody><tfoot><tr><td colspan="3">Total (${e.layers.length} layers)</td><td class="num">${int(t.params)}</td><td></td>`
    + `<td class="num">${esc(bytes(t.saved_activation_bytes))}</td><td class="num">${esc(bytes(t.grad_bytes))}</td><td class="num">${esc(bytes(t.optimizer_bytes))}</td></tr></tfoot></table>`;
}

function rulesTable(e) {
  const ref = e.peak.allocated_bytes;
  const row = (name, formula, b, mine) => `<tr${mine ? ' style="font-weight:600"' : ''}><td>${esc(name)}</td><td>${esc(formula)}</td>`
    + `<td class="num" title="${esc(exactBytes(b))}">${esc(bytes(b))}</td><td class="num">${mine ? '' : `${(b / Math.max(1, ref)).toFixed(2)}×`}</td></tr>`;
  return '<div class="table-wrap"><table><thead><tr><th scope="col">Estimate</th><th scope="col">How</th><th scope="col" class="num">Size</th><th scope="col" class="num">vs memfit\'s peak allocated</th></tr></thead><tbody>'
    + row('memfit: peak allocated', 'live tensors at the worst op of the simulated training loop', e.peak.allocated_bytes, true)
    + row('memfit: peak reserved', "plus the caching allocator's rounding and free blocks", e.peak.reserved_bytes, true)
    + e.rules_of_thumb.map((r) => row(r.name, r.formula, r.bytes, false)).join('')
    + '</tbody></table></div>';
}

// ---------- URL state (shared by index.html and embed.html) ----------
function b64url(buf) {
  let s = '';
  const a = new Uint8Array(buf);
  for (let i = 0; i < a.length; i++) s += String.fromCharCode(a[i]);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}
function unb64url(s) {
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
  const a = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i);
  return a;
}
async function pipe(data, stream) {
  const r = new Response(new Blob([data]).stream().pipeThrough(stream));
  return new Uint8Array(await r.arrayBuffer());
}

/** The settings part of the URL (synchronous); the model text is added by encodeState. */
function settingsParams(st) {
  const p = new URLSearchParams();
  p.set('batch', String(st.batch));
  p.set('dtype', st.dtype);
  p.set('optimizer', st.optimizer);
  if (st.impl && st.impl !== 'foreach') p.set('impl', st.impl);
  p.set('gpu', st.gpu);
  return p;
}
function hashFor(st) {
  const p = settingsParams(st);
  if (st.preset) p.set('model', st.preset);
  else if (st.text != null) p.set('text', st.text);
  return `#${p.toString()}`;
}

/** State -> "#model=...&batch=..." (model text deflate-compressed as z=, or plain text= without CompressionStream). */
export async function encodeState(st) {
  const p = settingsParams(st);
  if (st.preset) p.set('model', st.preset);
  else if (typeof CompressionStream === 'function') p.set('z', b64url(await pipe(new TextEncoder().encode(st.text), new CompressionStream('deflate-raw'))));
  else p.set('text', st.text);
  return `#${p.toString()}`;
}

/** Reads the state from the URL's hash or query (query: the embed page, e.g. embed.html?model=resnet18&batch=32). */
export async function decodeState(loc = location) {
  const raw = loc.hash.length > 1 ? loc.hash.slice(1) : loc.search.slice(1);
  const p = new URLSearchParams(raw);
  const st = {};
  if (p.has('model')) st.preset = p.get('model');
  if (p.has('text')) { st.text = p.get('text'); st.preset = null; }
  if (p.has('z')) {
    try {
      st.text = new TextDecoder().decode(await pipe(unb64url(p.get('z')), new DecompressionStream('deflate-raw')));
      st.preset = null;
    } catch { /* a damaged link: keep the default model */ }
  }
  const b = Number(p.get('batch'));
  if (p.has('batch') && Number.isInteger(b) && b >= 1) st.batch = b;
  if (p.has('dtype') && DTYPES.some(([v]) => v === p.get('dtype'))) st.dtype = p.get('dtype');
  if (p.has('optimizer') && OPTIMIZERS.some(([v]) => v === p.get('optimizer'))) st.optimizer = p.get('optimizer');
  if (p.has('impl') && IMPLS.some(([v]) => v === p.get('impl'))) st.impl = p.get('impl');
  if (p.has('gpu') && p.get('gpu')) st.gpu = p.get('gpu');
  return st;
}
