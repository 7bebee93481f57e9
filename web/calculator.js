// The memfit calculator UI: one implementation for the full page (index.html), the embed page
// (embed.html) and the <memfit-calculator> element. It only builds requests and draws the core's JSON;
// every number comes from the WebAssembly module (memfit::handle_request).
import { request, cancelStale, builtinModels, gpuCatalog, opRegistry } from './memfit-client.js';
import { bytes, int, shape, esc, exactBytes } from './format.js';
import { breakdownChart, timelineChart, sweepChart, dataTable, CATEGORIES } from './charts.js';

export const DEFAULTS = { preset: 'question_cnn', batch: 64, dtype: 'fp32', optimizer: 'sgd', impl: 'foreach', gpu: 'RTX 3090',
  // Hugging Face config.json settings (shown for a config only): seq null = the builder's default
  seq: null, attention: 'sdpa', ft: 'full', rank: 16,
  // memory savers for every model: ckpt = the --checkpoint globs ('' = none), gradient accumulation steps
  ckpt: '', ckptImpl: 'reentrant', accum: 1 };
const DTYPES = [['fp32', 'fp32 (float32)'], ['fp16', 'fp16 (autocast mixed precision)'], ['bf16', 'bf16 (autocast mixed precision)'],
  ['bf16-true', 'bf16-true (model.to(bfloat16))'], ['fp16-true', 'fp16-true (model.to(float16))']];
const OPTIMIZERS = [['sgd', 'SGD'], ['sgd-momentum', 'SGD with momentum'], ['adam', 'Adam'], ['adamw', 'AdamW'], ['adagrad', 'Adagrad'], ['rmsprop', 'RMSprop'],
  ['adamw8bit', 'AdamW 8-bit (bitsandbytes)'], ['paged_adamw', 'Paged AdamW (bitsandbytes)'], ['paged_adamw8bit', 'Paged AdamW 8-bit (bitsandbytes)']];
const IMPLS = [['foreach', 'foreach (default on CUDA)'], ['fused', 'fused'], ['for-loop', 'for-loop']];
// labels short enough for a three-column embed; the hint under each control says more
const ATTENTIONS = [['sdpa', 'sdpa (default)'], ['eager', 'eager']];
const FINETUNES = [['full', 'Full (all parameters)'], ['lora', 'LoRA (PEFT)'], ['qlora', 'QLoRA (4-bit + LoRA)']];
const CKPT_IMPLS = [['reentrant', 'reentrant (default)'], ['non-reentrant', 'non-reentrant']];
const RANK_MAX = 65536;   // options.cpp kMaxLoraRank
const ACCUM_MAX = 1024;   // options.cpp: grad_accumulation up to 1024
// Per config family (model_type): the LoRA targets of PEFT's mapping for it
// (peft/utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: llama/mistral/qwen2 q_proj,v_proj;
// gpt2 c_attn; bert/vit query,value) and the region glob of its blocks as core/src/model/hf_config.cpp names them
// (docs/hf-config.md), which is what transformers' gradient_checkpointing_enable wraps.
const FAMILIES = {
  llama: { targets: 'q_proj,v_proj', block: 'model.layers.*' },
  mistral: { targets: 'q_proj,v_proj', block: 'model.layers.*' },
  qwen2: { targets: 'q_proj,v_proj', block: 'model.layers.*' },
  gpt2: { targets: 'c_attn', block: 'transformer.h.*' },
  bert: { targets: 'query,value', block: 'bert.encoder.layer.*' },
  vit: { targets: 'query,value', block: 'vit.encoder.layer.*', fixedSeq: true },
};
const DEFAULT_SEQ = 2048;  // memfit/hf_config.hpp kDefaultSeq

/**
 * What the page needs to know about a Hugging Face config.json in the editor, or null for any other model.
 * The core decides the same way (model_json.cpp: a JSON object with "model_type" and no "layers").
 */
export function hfInfo(text) {
  const t = String(text ?? '').trimStart();
  if (!t.startsWith('{') || !t.includes('model_type')) return null;
  let cfg;
  try { cfg = JSON.parse(t); } catch { return null; }
  if (!cfg || typeof cfg !== 'object' || Array.isArray(cfg) || !('model_type' in cfg) || 'layers' in cfg) return null;
  const type = String(cfg.model_type);
  const fam = FAMILIES[type] || { targets: 'q_proj,v_proj', block: '' };
  const maxPos = Number(cfg.max_position_embeddings ?? cfg.n_positions ?? 0) || null;
  return { type, ...fam, maxPos, defaultSeq: maxPos ? Math.min(DEFAULT_SEQ, maxPos) : DEFAULT_SEQ, layers: cfg.num_hidden_layers ?? cfg.n_layer ?? null };
}
/** The LoRA spec the page sends: rank r, alpha 2r (the common choice), dropout 0.05, the family's targets. */
export function loraSpec(rank, hf) {
  return `r=${rank},alpha=${2 * rank},dropout=0.05,targets=${(hf && hf.targets) || 'q_proj,v_proj'}`;
}
/** Checks a whole-number field; returns a message or null. */
export function checkWhole(raw, what, lo, hi) {
  const s = String(raw ?? '').trim();
  if (s === '') return `Enter ${what}: a whole number from ${int(lo)} to ${int(hi)}.`;
  if (!/^\d+$/.test(s)) return `“${s}” is not a whole number: enter ${what} from ${int(lo)} to ${int(hi)}.`;
  const v = Number(s);
  if (v < lo || v > hi) return `${what[0].toUpperCase()}${what.slice(1)} is from ${int(lo)} to ${int(hi)} (you entered ${int(v)}).`;
  return null;
}
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

/** The layer kinds, as the core's op registry lists them (the same table as docs/model-format.md). */
export function opsTableHtml(ops) {
  const row = (o) => {
    const names = [o.kind, ...o.aliases].map((n) => `<code>${esc(n)}</code>`).join(', ');
    const attrs = o.attrs.map((a) => (a.default == null ? `<code>${esc(a.key)}</code> (required)` : `<code>${esc(a.key)}=${esc(a.default)}</code>`)).join(', ');
    return `<tr><td>${names}</td><td>${attrs || '—'}</td><td><code>${esc(o.pytorch)}</code></td><td>${esc(o.summary)}</td></tr>`;
  };
  return `<p>Layer kinds (from the op registry):</p><div class="table-scroll"><table class="ops"><thead><tr><th>kind (aliases)</th>`
    + `<th>options</th><th>PyTorch</th><th>memory</th></tr></thead><tbody>${ops.map(row).join('')}</tbody></table></div>`;
}

function opt(list, value) {
  return list.map(([v, l]) => `<option value="${esc(v)}"${v === value ? ' selected' : ''}>${esc(l)}</option>`).join('');
}

/** Batch slider: logarithmic, 0..200 -> 1..BATCH_MAX-ish (2^(v/8)). */
const sliderToBatch = (v) => Math.max(1, Math.round(2 ** (v / 8)));
const batchToSlider = (b) => Math.round(Math.log2(Math.max(1, b)) * 8);

/** The dropdown shows the size memfit uses: the memory CUDA reports for the card (cudaMemGetInfo's total). */
function gpuLabel(g) {
  return `${g.name} — ${bytes(g.cuda_total_bytes)}`;
}

/** Checks the batch field as typed; returns a message, or null when it is a whole number 1..BATCH_MAX. */
export function checkBatch(raw) {
  const s = String(raw ?? '').trim();
  const range = `a whole number from 1 to ${int(BATCH_MAX)}`;
  if (s === '') return `Enter a batch size: ${range}.`;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s)) return `“${s}” is not a number: enter ${range}.`;
  const v = Number(s);
  if (!Number.isInteger(v)) return `The batch size counts samples, so it is a whole number; ${s} is not (${Math.max(1, Math.floor(v))} or ${Math.ceil(v)}?).`;
  if (v < 1) return `The batch size must be at least 1 (you entered ${s}).`;
  if (v > BATCH_MAX) return `The calculator takes batch sizes up to ${int(BATCH_MAX)} (you entered ${int(v)}).`;
  return null;
}

/** Checks a custom GPU size; a bare number is refused (8 would mean 8 bytes to the core). */
export function checkGpuSize(raw) {
  const s = String(raw ?? '').trim();
  if (s === '') return { msg: 'Enter the GPU’s memory, such as 24GiB, 12GB or 12000MiB.' };
  if (/^\d+(\.\d+)?$/.test(s)) return { msg: `${s} what? Give the unit: ${s}GiB (${s} × 1024³ bytes) or ${s}GB (${s} × 10⁹ bytes).`, choices: [`${s}GiB`, `${s}GB`] };
  return null;
}

const FIELD = { batch: 'the batch size', dtype: 'the precision', optimizer: 'the optimizer', 'optimizer-impl': 'the optimizer implementation', gpu: 'the GPU', 'zero-grad': 'zero_grad', iterations: 'iterations',
  seq: 'the sequence length', attention: 'the attention implementation', 'checkpoint-impl': 'the checkpoint implementation', checkpoint: 'checkpointing',
  'grad-accum': 'gradient accumulation', qlora: 'QLoRA (fine-tuning)', lora: 'LoRA (fine-tuning)' };
/** The core's messages are written for the CLI; say the same for the page. */
export function pageWording(text) {
  return String(text ?? '')
    .replace(/run 'memfit gpus' for the catalog, or give a size such as ([^,;]+?) or ([^\s,;]+)/g, 'pick one from the GPU list, or choose “Custom size…” and enter a size such as $1 or $2')
    .replace(/run 'memfit gpus'( for the catalog)?/g, 'pick one from the GPU list')
    .replace(/give --gpu NAME or --gpu SIZE \(e\.g\. --gpu ([^)]+)\)/g, 'pick a GPU from the list or enter a size such as $1')
    .replace(/give e\.g\. --gpu (\S+)/g, 'choose “Custom size…” and enter a size such as $1')
    .replace(/give --batch N with N >= 1/g, 'enter a batch size of at least 1')
    .replace(/use --optimizer-impl (\S+) or (\S+)/g, 'choose the optimizer implementation $1 or $2')
    .replace(/--([a-z][a-z-]+)(?: ([^\s,;]+))?/g, (m, flag, v) => (FIELD[flag] ? `${FIELD[flag]}${v ? ` ${v}` : ''}` : m));
}

function humanChange(change) {
  const m = /^--([a-z-]+)\s+(.+)$/.exec(change);
  if (!m) return { text: change };
  const [, flag, value] = m;
  const accum = /^(\d+) --grad-accum (\d+)$/.exec(value);
  if (flag === 'batch' && accum) return { text: `Batch size ${int(accum[1])} with ${accum[2]} micro-batches (gradient accumulation)`, apply: { batch: Number(accum[1]), accum: Number(accum[2]) } };
  // estimate.cpp remedies(): --checkpoint 'GLOBS' [--checkpoint-impl non-reentrant]
  const ck = /^'([^']+)'(?: --checkpoint-impl (\S+))?$/.exec(value);
  if (flag === 'checkpoint' && ck) {
    const impl = ck[2] || 'reentrant';
    return { text: `Checkpoint every block (${ck[1]}, ${impl})`, apply: { ckpt: ck[1], ckptImpl: impl } };
  }
  if (flag === 'batch') return { text: `Batch size ${int(value)}`, apply: { batch: Number(value) } };
  if (flag === 'dtype') return { text: `Precision ${value} (autocast)`, apply: { dtype: value } };
  if (flag === 'optimizer') return { text: `Optimizer ${(OPTIMIZERS.find(([v]) => v === value) || [0, value])[1]}`, apply: { optimizer: value } };
  if (flag === 'optimizer-impl') return { text: `Optimizer implementation ${value}`, apply: { impl: value } };
  return { text: pageWording(change) };
}

const DRAFT_KEY = 'memfit.draft';
const DRAFT = '__draft__';
function loadDraft() {
  try { return localStorage.getItem(DRAFT_KEY); } catch { return null; }
}
function saveDraft(text) {
  try { localStorage.setItem(DRAFT_KEY, text); } catch { /* storage off: the entry still works this session */ }
}

/**
 * Mounts a calculator into `host` (an element or a shadow root).
 * opts.mode: 'full' (the page), 'compact' (embedded) or 'verdict' (embedded: model, settings, verdict and
 * breakdown only). opts.state: {preset, text, batch, dtype, optimizer, impl, gpu}. opts.onState(state):
 * called after every change (the page writes the URL). opts.ignored: URL parameters that were not used
 * (shown once). Returns {setState, getState, ready, root, last}.
 */
export function mountCalculator(host, opts = {}) {
  const mode = opts.mode || 'full';
  const id = `mf${++uid}`;
  const state = { ...DEFAULTS, text: null, ...(opts.state || {}) };
  const root = document.createElement('div');
  root.className = `mf ${mode === 'full' ? 'full' : `compact${mode === 'verdict' ? ' verdict-only' : ''}`}`;
  root.innerHTML = template(id, mode, state);
  host.appendChild(root);
  const $ = (r) => root.querySelector(`[data-r="${r}"]`);
  const el = {
    preset: $('preset'), text: $('text'), gutter: $('gutter'), hl: $('hl'), err: $('err'), batch: $('batch'), range: $('range'),
    batchErr: $('batchErr'), gpuErr: $('gpuErr'), gpuNote: $('gpuNote'), urlNote: $('urlNote'),
    dtype: $('dtype'), optimizer: $('optimizer'), impl: $('impl'), gpu: $('gpu'), gpuCustom: $('gpuCustom'), gpuCustomWrap: $('gpuCustomWrap'),
    settingsErr: $('settingsErr'), verdict: $('verdict'), remedies: $('remedies'), breakdown: $('breakdown'), breakdownNote: $('breakdownNote'),
    timeline: $('timeline'), timelineNote: $('timelineNote'), sweep: $('sweep'), layers: $('layers'), rules: $('rules'), notes: $('notes'),
    timing: $('timing'), copy: $('copy'), copyStatus: $('copyStatus'), full: $('full'), exports: $('exports'), gpuTable: $('gpuTable'),
    results: $('results'), onnxPick: $('onnxPick'), onnxInfo: $('onnxInfo'), onnxName: $('onnxName'), onnxDims: $('onnxDims'),
    onnxClear: $('onnxClear'), panel: $('text') && $('text').closest('.panel'),
    hfBox: $('hfBox'), seq: $('seq'), seqErr: $('seqErr'), seqHint: $('seqHint'), seqField: $('seqField'), attention: $('attention'),
    ft: $('ft'), rank: $('rank'), rankErr: $('rankErr'), rankField: $('rankField'), loraSpec: $('loraSpec'),
    ckpt: $('ckpt'), ckptImpl: $('ckptImpl'), ckptImplField: $('ckptImplField'), ckptHint: $('ckptHint'), accum: $('accum'), accumErr: $('accumErr'),
  };
  let hf = null;         // hfInfo(the editor's text): a Hugging Face config.json, or null
  let lastMaxSeq = null; // last good max-seq result ({max_seq, capped, cap}) or null
  let models = [];
  let gpus = [];
  let seq = 0;
  let last = null;       // last good estimate
  let lastText = null;   // its JSON text, as the core returned it
  let lastMax = null;    // last good max-batch result (number)
  let lastSweep = null;  // last sweep points
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
    el.err.innerHTML = `<span class="where">${esc(where)}:</span> ${esc(pageWording(e.problem || e.message))}`
      + (e.layer ? ` <span class="muted">(layer ${esc(e.layer)})</span>` : '')
      + (e.fix ? `<br><span>Fix: ${esc(pageWording(e.fix))}</span>` : '')
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

  // ---------- the last good result, marked stale while the input has an error ----------
  function markStale(reason) {
    root.classList.add('has-error');
    el.verdict.classList.add('stale');
    const st = $('stale');
    if (st) {
      st.hidden = !last;
      st.textContent = `Last good result, not for the current input: ${reason}`;
    }
    if (!last) {
      el.verdict.className = 'verdict';
      el.verdict.innerHTML = `<p class="bad big">No result yet: ${esc(reason)}</p>`;
    }
  }
  function markFresh() {
    root.classList.remove('has-error');
    el.verdict.classList.remove('stale');
  }

  // ---------- inline validation of the settings ----------
  function fieldError(input, box, msg, choices) {
    if (!box) return;
    if (msg) {
      box.innerHTML = esc(msg) + (choices ? ` ${choices.map((c) => `<button type="button" data-choice="${esc(c)}">${esc(c)}</button>`).join(' ')}` : '');
      box.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      box.querySelectorAll('[data-choice]').forEach((b) => { b.onclick = () => { input.value = b.dataset.choice; input.dispatchEvent(new Event('input')); input.focus(); }; });
    } else {
      box.hidden = true;
      box.textContent = '';
      input.removeAttribute('aria-invalid');
    }
  }
  /** Validates what is typed; returns the first problem (for the stale label) or null. */
  function validate() {
    const bmsg = checkBatch(el.batch.value);
    fieldError(el.batch, el.batchErr, bmsg);
    let gmsg = null;
    if (el.gpu.value === CUSTOM) {
      const g = checkGpuSize(el.gpuCustom.value);
      gmsg = g && g.msg;
      fieldError(el.gpuCustom, el.gpuErr, gmsg, g && g.choices);
    } else fieldError(el.gpuCustom, el.gpuErr, null);
    const smsg = hf && !hf.fixedSeq && el.seq && el.seq.value.trim() !== '' ? checkWhole(el.seq.value, 'the sequence length', 1, hf.maxPos || 2 ** 24) : null;
    if (el.seq) fieldError(el.seq, el.seqErr, smsg);
    const rmsg = hf && state.ft !== 'full' && el.rank ? checkWhole(el.rank.value, 'the LoRA rank', 1, RANK_MAX) : null;
    if (el.rank) fieldError(el.rank, el.rankErr, rmsg);
    const amsg = el.accum ? checkWhole(el.accum.value, 'the number of micro-batches', 1, ACCUM_MAX) : null;
    if (el.accum) fieldError(el.accum, el.accumErr, amsg);
    return bmsg ? 'the batch size is not valid' : gmsg ? 'the GPU size has no unit' : smsg ? 'the sequence length is not valid'
      : rmsg ? 'the LoRA rank is not valid' : amsg ? 'the gradient accumulation is not valid' : null;
  }
  /** Shows the config.json settings for a config, the LoRA rank for LoRA/QLoRA, the checkpoint choices. */
  function showModelControls() {
    hf = onnxFile ? null : hfInfo(state.text);
    if (el.hfBox) el.hfBox.hidden = !hf;
    root.classList.toggle('is-hf', !!hf);
    const title = root.querySelector('[data-r="extraTitle"]');
    if (title) title.textContent = hf ? 'Fine-tuning and memory savers' : 'Memory savers';  // a config.json: a shorter editor, so its settings are in view
    if (hf && el.seqField) {
      el.seqField.hidden = !!hf.fixedSeq;
      el.seq.placeholder = String(hf.defaultSeq);
      el.seq.max = String(hf.maxPos || 2 ** 24);
      el.seqHint.textContent = `Tokens per sample; empty: ${int(hf.defaultSeq)}${hf.maxPos ? `, at most ${int(hf.maxPos)}` : ''}.`;
    }
    if (el.rankField) el.rankField.hidden = !hf || state.ft === 'full';
    if (el.loraSpec) el.loraSpec.textContent = hf && state.ft !== 'full' ? `options.lora = "${loraSpec(state.rank, hf)}"${state.ft === 'qlora' ? ', options.qlora = "on"' : ''}` : '';
    if (el.ckpt) {
      // none, every block of this family (a config) and whatever glob a remedy or a link set
      const list = [['', 'None']];
      if (hf && hf.block) list.push([hf.block, `Every block (${hf.block})`]);
      if (state.ckpt && !list.some(([v]) => v === state.ckpt)) list.push([state.ckpt, `Regions: ${state.ckpt}`]);
      el.ckpt.innerHTML = opt(list, state.ckpt);
      el.ckpt.value = state.ckpt;
      el.ckpt.disabled = list.length === 1;
      el.ckptImplField.hidden = !state.ckpt;
      el.ckptHint.textContent = list.length === 1 ? 'This model has no block glob the page knows; a checkpointing remedy below can set one.'
        : state.ckpt ? 'One torch.utils.checkpoint call per block: backward reruns its forward (the notes give the extra step time).'
          + (state.ft !== 'full' && hf ? ' With LoRA, reentrant works as PEFT makes it work (enable_input_require_grads).' : '') : '';
    }
  }

  // ---------- state <-> controls ----------
  function readControls() {
    state.text = el.text.value;
    const p = models.find((m) => m.name === el.preset.value);
    state.preset = p && p.text === state.text ? p.name : null;
    if (!state.preset && el.preset.value && el.preset.value !== DRAFT) el.preset.value = '';
    if (!state.preset) { saveDraft(state.text); ensureDraftOption(); if (el.preset.value === '') el.preset.value = DRAFT; }
    if (!checkBatch(el.batch.value)) state.batch = Number(el.batch.value.trim());
    state.dtype = el.dtype.value;
    state.optimizer = el.optimizer.value;
    state.impl = el.impl ? el.impl.value : state.impl;
    if (el.gpu.value !== CUSTOM) state.gpu = el.gpu.value;
    else if (!checkGpuSize(el.gpuCustom.value)) state.gpu = el.gpuCustom.value.trim();
    if (el.seq) state.seq = el.seq.value.trim() === '' ? null : (/^\d+$/.test(el.seq.value.trim()) ? Number(el.seq.value.trim()) : state.seq);
    if (el.attention) state.attention = el.attention.value;
    if (el.ft) state.ft = el.ft.value;
    if (el.rank && /^\d+$/.test(el.rank.value.trim()) && Number(el.rank.value) >= 1 && Number(el.rank.value) <= RANK_MAX) state.rank = Number(el.rank.value.trim());
    if (el.ckpt) state.ckpt = el.ckpt.value;
    if (el.ckptImpl) state.ckptImpl = el.ckptImpl.value;
    if (el.accum && !checkWhole(el.accum.value, 'x', 1, ACCUM_MAX)) state.accum = Number(el.accum.value.trim());
    showModelControls();
  }
  function ensureDraftOption() {
    if (!el.preset.querySelector(`option[value="${DRAFT}"]`) && loadDraft() != null) {
      el.preset.insertAdjacentHTML('afterbegin', `<option value="${DRAFT}">Your model (draft, kept in this browser)</option>`);
    }
  }
  function writeControls() {
    if (el.text.value !== state.text) el.text.value = state.text;
    el.preset.value = state.preset && models.some((m) => m.name === state.preset) ? state.preset : (loadDraft() === state.text ? DRAFT : '');
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
    if (el.seq) el.seq.value = state.seq == null ? '' : String(state.seq);
    if (el.attention) el.attention.value = state.attention;
    if (el.ft) el.ft.value = state.ft;
    if (el.rank) el.rank.value = String(state.rank);
    if (el.ckptImpl) el.ckptImpl.value = state.ckptImpl;
    if (el.accum) el.accum.value = String(state.accum);
    showModelControls();
    renderGutter();
  }
  function changed(delay) {
    readControls();
    const problem = validate();
    if (opts.onState) opts.onState({ ...state });
    clearTimeout(timer);
    if (problem) { seq++; markStale(problem); return; }
    timer = setTimeout(run, delay);
  }

  // ---------- an ONNX file instead of the text (dropped or picked; read in the worker, docs/onnx.md) ----------
  let onnxFile = null;
  let onnxDims = {};
  // A preset's text goes with its file name (models/hf/llama-3.1-8b.json), as the CLI loads it by name: the
  // model is named after it and errors point into it; the user's own text is MODEL_FILE.
  function modelFile() {
    const p = state.preset && models.find((m) => m.name === state.preset && m.text === state.text);
    return p && p.path ? p.path : MODEL_FILE;
  }
  function modelPart() {
    if (!onnxFile) return { model: state.text, file: modelFile() };
    return { onnx: onnxFile, file: onnxFile.name, ...(Object.keys(onnxDims).length ? { dims: onnxDims } : {}) };
  }
  function readDims() {
    onnxDims = {};
    for (const part of (el.onnxDims ? el.onnxDims.value : '').split(/[\s,]+/).filter(Boolean)) {
      const [k, v] = part.split('=');
      onnxDims[k] = v === undefined ? '' : v;  // the core checks the value and names the bad one
    }
  }
  function useOnnx(file) {
    onnxFile = file;
    if (el.onnxInfo) {
      el.onnxInfo.hidden = !file;
      el.onnxName.textContent = file ? `${file.name} (${file.size.toLocaleString('en-US')} bytes)` : '';
    }
    if (el.text) el.text.disabled = !!file;
    changed(0);
  }
  // A picked or dropped file: an .onnx export is read in the worker; a config.json, .memfit or JSON model goes
  // into the editor (the core tells a config.json by its content, as the CLI does).
  function useFile(f) {
    if (/\.onnx$/i.test(f.name)) { useOnnx(f); return; }
    f.text().then((t) => { if (onnxFile) useOnnx(null); el.text.value = t; renderGutter(); changed(0); });
  }
  if (el.onnxPick) el.onnxPick.addEventListener('change', () => { if (el.onnxPick.files[0]) useFile(el.onnxPick.files[0]); });
  if (el.onnxClear) el.onnxClear.addEventListener('click', () => { if (el.onnxPick) el.onnxPick.value = ''; useOnnx(null); });
  if (el.onnxDims) el.onnxDims.addEventListener('input', () => { readDims(); changed(200); });
  if (el.panel) {
    el.panel.addEventListener('dragover', (ev) => { ev.preventDefault(); });
    el.panel.addEventListener('drop', (ev) => {
      const f = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
      if (!f) return;
      ev.preventDefault();
      useFile(f);
    });
  }

  // ---------- the pipeline ----------
  /** The request's options: the CLI flags' strings (core/src/api/options.cpp), only what differs from the defaults. */
  function options(st) {
    const o = { batch: String(st.batch), dtype: st.dtype, optimizer: st.optimizer, gpu: st.gpu };
    if (st.impl && st.impl !== 'foreach') o.optimizer_impl = st.impl;
    if (st.accum > 1) o.grad_accumulation = String(st.accum);
    if (hf) {
      if (st.seq != null && !hf.fixedSeq) o.seq = String(st.seq);
      if (st.attention && st.attention !== 'sdpa') o.attention = st.attention;
      if (st.ft === 'lora' || st.ft === 'qlora') o.lora = loraSpec(st.rank, hf);
      if (st.ft === 'qlora') o.qlora = 'on';
    }
    if (st.ckpt) {
      o.checkpoint = st.ckpt;
      if (st.ckptImpl && st.ckptImpl !== 'reentrant') o.checkpoint_impl = st.ckptImpl;
    }
    return o;
  }
  async function call(req, kind) {
    let r;
    perf.sent = { kind, model: req.model && req.model.length, at: performance.now() };
    try {
      r = await request(req);
    } catch (e) {
      // cancelled because a newer run started: this run stops here, quietly
      if (e && e.superseded) return new Promise(() => {});
      throw e;
    }
    perf.calls.push({ kind, ms: r.ms, model: req.model && req.model.length, at: performance.now() });
    return r;
  }
  /** Sweep ranges so that both the chosen batch and the largest batch are on the chart (merged, log axis). */
  function sweepRanges(batch, maxB) {
    const top = Math.max(batch, maxB || 0);
    const lo = Math.max(1, Math.min(batch, maxB || batch));
    const first = Math.max(16, Math.min(2 ** 30, Math.ceil(top * 1.3)));
    const out = [first];
    for (let u = Math.ceil(first / 8); u >= 16 && u > lo / 2 && out.length < 5; u = Math.ceil(u / 8)) out.push(u);
    return out;
  }
  async function run() {
    const my = ++seq;
    if (cancelStale(300)) perf.cancelled = (perf.cancelled || 0) + 1;
    const st = { ...state };
    const base = { ...modelPart(), options: options(st) };
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
    markFresh();
    if (notice) {
      el.settingsErr.textContent = notice;
      el.settingsErr.hidden = false;
      notice = null;
    } else el.settingsErr.hidden = true;
    last = res;
    lastText = r.text;
    const timings = { estimate: r.ms };
    renderEstimate(res, null);
    renderTiming(timings);
    if (perf.firstVerdictAt == null) perf.firstVerdictAt = performance.now();
    root.dispatchEvent(new CustomEvent('memfit-result', { bubbles: true, composed: true, detail: { estimate: res, ms: r.ms } }));
    if (!res.gpu) { root.dataset.idle = String(my); return; }
    const mb = await call({ ...base, command: 'max-batch' }, 'max-batch');
    if (my !== seq) return;
    lastMax = mb.result.error ? null : mb.result.max_batch;
    timings.maxBatch = mb.ms;
    lastMaxSeq = null;
    if (hf && !hf.fixedSeq) {
      renderEstimate(res, lastMax);
      // the longest sequence at this batch: the 'max-seq' request builds the config at each length tried
      const { seq: _s, ...msOpts } = base.options;
      const ms = await call({ ...base, command: 'max-seq', options: msOpts }, 'max-seq');
      if (my !== seq) return;
      lastMaxSeq = ms.result.error ? { error: ms.result.error } : { max_seq: ms.result.max_seq, capped: ms.result.max_seq_capped, cap: ms.result.max_seq_search_cap };
      timings.maxSeq = ms.ms;
    }
    renderEstimate(res, lastMax);
    renderTiming(timings);
    if (!el.sweep) { root.dataset.idle = String(my); perf.calls.push({ kind: 'sweep', ms: 0, at: performance.now() }); return; }
    const pts = new Map();
    timings.sweep = 0;
    for (const upTo of sweepRanges(st.batch, lastMax)) {
      const sw = await call({ ...base, command: 'sweep', sweep_up_to: upTo, sweep_points: upTo === sweepRanges(st.batch, lastMax)[0] ? 24 : 10 }, 'sweep-part');
      if (my !== seq) return;
      timings.sweep += sw.ms;
      if (sw.result.error) { el.sweep.innerHTML = `<p class="muted">${esc(pageWording(sw.result.error.message))}</p>`; return; }
      for (const p of sw.result.points) pts.set(p.batch, p);
    }
    lastSweep = [...pts.values()].sort((a, b) => a.batch - b.batch);
    renderTiming(timings);
    drawSweep();
    perf.calls.push({ kind: 'sweep', ms: timings.sweep, at: performance.now() });
    root.dataset.idle = String(my);
  }
  const widthOf = (fig) => Math.max(280, Math.floor((fig && fig.clientWidth) || 640));
  function drawSweep() {
    if (!el.sweep || !last || !lastSweep) return;
    const e = last;
    el.sweep.innerHTML = sweepChart(lastSweep, { usable: e.usable_bytes, maxBatch: lastMax || 0, batch: e.settings.batch, batchReserved: e.peak.reserved_bytes, width: widthOf(el.sweep) })
      + dataTable('The numbers in this chart', ['batch', 'reserved', 'allocated', 'on the GPU with the CUDA context'],
        lastSweep.map((p) => [int(p.batch), bytes(p.reserved_bytes), bytes(p.allocated_bytes), bytes(p.device_bytes)]));
  }
  function drawCharts() {
    if (!last) return;
    const e = last;
    el.breakdown.innerHTML = breakdownChart(e, { width: widthOf(el.breakdown) })
      + dataTable('The numbers in this chart', ['category', 'at the peak', 'bytes'],
        CATEGORIES.map(([k, l]) => [l, bytes(e.peak.breakdown[k] || 0), int(e.peak.breakdown[k] || 0)])
          .concat([['Allocator cache (reserved − allocated)', bytes(e.peak.reserved_bytes - e.peak.allocated_bytes), int(e.peak.reserved_bytes - e.peak.allocated_bytes)],
            ['CUDA context', bytes(e.peak.context_bytes), int(e.peak.context_bytes)]]));
    if (el.timeline) {
      el.timeline.innerHTML = timelineChart(e, { width: widthOf(el.timeline) })
        + dataTable('The numbers in this chart', ['iteration · phase · layer', 'allocated', 'reserved'],
          (e.timeline || []).map((p) => [`${p.iteration} · ${p.phase} · ${p.layer}`, bytes(p.allocated_bytes), bytes(p.reserved_bytes)]));
    }
    drawSweep();
  }
  if (typeof ResizeObserver === 'function') {
    let w = 0, t = 0;
    new ResizeObserver(() => {
      const nw = root.clientWidth;
      if (Math.abs(nw - w) < 8) return;
      w = nw;
      clearTimeout(t);
      t = setTimeout(drawCharts, 60);
    }).observe(root);
  }

  function showError(e) {
    let reason;
    if (e.file === MODEL_FILE || (!onnxFile && e.file === modelFile())) { showModelError(e); reason = `the model has an error${e.line > 0 ? ` at line ${e.line}` : ''}`; }
    else if (onnxFile && e.file === onnxFile.name) {
      // the ONNX importer's message may list many nodes, one per line
      clearModelError();
      el.settingsErr.textContent = `${pageWording(e.problem || e.message)}${e.fix ? ` — ${pageWording(e.fix)}` : ''}`;
      el.settingsErr.style.whiteSpace = 'pre-line';
      el.settingsErr.hidden = false;
      reason = 'the ONNX file cannot be estimated';
    } else {
      clearModelError();
      el.settingsErr.textContent = `${pageWording(e.problem || e.message)}${e.fix ? ` — ${pageWording(e.fix)}` : ''}`;
      el.settingsErr.hidden = false;
      reason = 'the settings have an error';
    }
    markStale(reason);
  }

  function renderTiming(t) {
    if (!el.timing) return;
    const parts = [`estimate ${t.estimate.toFixed(1)} ms`];
    if (t.maxBatch != null) parts.push(`largest batch ${t.maxBatch.toFixed(1)} ms`);
    if (t.maxSeq != null) parts.push(`longest sequence ${t.maxSeq.toFixed(1)} ms`);
    if (t.sweep != null) parts.push(`batch sweep ${t.sweep.toFixed(1)} ms`);
    el.timing.textContent = `Computed in your browser (WebAssembly): ${parts.join(', ')}.`;
    root.dataset.estimateMs = t.estimate.toFixed(2);
  }

  // the length the core built the config with: its input_ids layer is [N, T] (the settings do not echo --seq)
  const tokensOf = (e) => {
    const l = e.layers && e.layers[0];
    return l && l.kind === 'input' && l.output_shape.length === 2 ? l.output_shape[1] : null;
  };
  function maxSeqText() {
    if (lastMaxSeq == null) return '<span class="muted">computing…</span>';
    if (lastMaxSeq.error) return `<span class="bad">${esc(pageWording(lastMaxSeq.error.problem || lastMaxSeq.error.message))}</span>`;
    if (lastMaxSeq.max_seq === 0) return '<span class="bad" data-r="maxSeq" data-v="0">none: even one token does not fit</span>';
    const cap = lastMaxSeq.max_seq >= lastMaxSeq.cap;
    return `<b data-r="maxSeq" data-v="${lastMaxSeq.max_seq}">${int(lastMaxSeq.max_seq)}</b> tokens${cap ? ' <span class="muted">(the config’s max_position_embeddings: the model goes no longer)</span>' : ''}`;
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
      const custom = !gpus.some((g) => g.name === e.gpu.name);
      head = `<p class="big" data-r="verdictText">${fits ? '✓ Fits' : '✗ Does not fit'} on ${esc(e.gpu.name)}</p>`
        + `<p>Peak <b data-r="peakReserved" title="${esc(exactBytes(used))}">${esc(bytes(used))}</b> reserved by PyTorch's allocator of `
        + `<b title="${esc(exactBytes(e.usable_bytes))}">${esc(bytes(e.usable_bytes))}</b> usable — `
        + (e.headroom_bytes >= 0 ? `<b data-r="headroom">${esc(bytes(e.headroom_bytes))}</b> headroom` : `<b data-r="headroom">${esc(bytes(-e.headroom_bytes))}</b> missing`)
        + `</p><div class="meter" role="img" aria-label="${pct.toFixed(0)}% of usable memory"><span style="width:${pct.toFixed(1)}%"></span></div>`
        + `<p class="usable" data-r="usableLine">Usable <b>${esc(bytes(e.usable_bytes))}</b> = ${custom ? `${esc(e.gpu.name)} = ${esc(int(e.gpu.cuda_total_bytes))} bytes = ` : `${esc(e.gpu.name)}: `}`
        + `<b title="${esc(exactBytes(e.gpu.cuda_total_bytes))}">${esc(bytes(e.gpu.cuda_total_bytes))}</b> visible to CUDA − <b title="${esc(exactBytes(e.settings.context_bytes))}">${esc(bytes(e.settings.context_bytes))}</b> CUDA context</p>`
        + (e.fits_only_by_freeing_cache ? `<p class="muted">Fits only because the allocator frees its cached blocks and retries when it reaches the limit (its cache would otherwise grow to ${esc(bytes(e.peak.reserved_bytes))}); steps get slower.</p>` : '');
    }
    el.verdict.innerHTML = '<p class="stale-label" data-r="stale" hidden></p>' + head
      + `<div class="facts">`
      + (e.gpu ? `<span class="maxb-fact">Largest batch that fits${hf && !hf.fixedSeq ? ` at ${int(tokensOf(e) ?? state.seq ?? hf.defaultSeq)} tokens` : ''}: ${maxText}</span>` : '')
      + (e.gpu && hf && !hf.fixedSeq ? `<span class="maxs-fact">Longest sequence that fits at batch ${int(s.batch)}: ${maxSeqText()}</span>` : '')
      + `<span>Parameters <b data-r="params">${int(e.totals.params)}</b></span>`
      + `<span>On the GPU at the peak (with CUDA context) <b>${esc(bytes(e.peak.device_bytes))}</b></span>`
      + `<span class="muted">${esc(e.model.name)} · batch ${int(s.batch)} · ${esc(s.dtype)} · ${esc(optName)} · ${where}</span></div>`;

    // remedies: the ones that fit first, with Apply; the others are partial (they help, but not enough)
    const rem = (e.remedies || []).map((r, i) => ({ ...r, i, h: humanChange(r.change) }));
    rem.sort((a, b) => (b.fits === true) - (a.fits === true) || a.i - b.i);
    if (e.fits === false && rem.length) {
      el.remedies.hidden = false;
      const item = (r) => {
        const result = !r.fits ? `<span class="bad">still does not fit</span> (${esc(bytes(r.peak_reserved_bytes))} reserved, ${esc(bytes(r.peak_reserved_bytes - e.usable_bytes))} over)`
          : r.peak_reserved_bytes > e.usable_bytes ? '<span class="ok">fits</span> (the allocator frees its cache at the limit)'
            : `<span class="ok">fits</span> (${esc(bytes(r.peak_reserved_bytes))} reserved, ${esc(bytes(e.usable_bytes - r.peak_reserved_bytes))} headroom)`;
        return `<li class="${r.fits ? 'rem-fits' : 'rem-partial'}"><div class="rem-text">${r.fits ? '' : '<span class="tag">partial</span> '}<b>${esc(r.h.text)}</b> → ${result}<br><span class="muted">${esc(pageWording(r.why))}</span></div>`
          + (r.h.apply ? `<button type="button" data-apply="${r.i}" aria-label="Apply${r.fits ? '' : ' (partial)'}: ${esc(r.h.text)}">Apply</button>` : `<code>${esc(pageWording(r.change))}</code>`) + '</li>';
      };
      const fit = rem.filter((r) => r.fits), partial = rem.filter((r) => !r.fits);
      el.remedies.innerHTML = '<h2>What to change so it fits</h2>'
        + (fit.length ? `<ul>${fit.map(item).join('')}</ul>` : '<p>No single change below makes it fit on its own.</p>')
        + (partial.length ? `<h3>Partial: each helps, but alone it still does not fit (combine them)</h3><ul>${partial.map(item).join('')}</ul>` : '');
      el.remedies.querySelectorAll('[data-apply]').forEach((b) => {
        b.onclick = () => setState(humanChange(e.remedies[Number(b.dataset.apply)].change).apply);
      });
    } else if (e.fits === false) {
      el.remedies.hidden = false;
      el.remedies.innerHTML = '<h2>What to change so it fits</h2><p>memfit found no single change that makes it fit: choose a larger GPU or a smaller model.</p>';
    } else {
      el.remedies.hidden = true;
      el.remedies.innerHTML = '';
    }

    drawCharts();
    if (el.breakdownNote) el.breakdownNote.innerHTML = breakdownNote(e);
    if (el.timelineNote) el.timelineNote.innerHTML = timelineNote(e);
    drawLayers();
    if (el.rules) el.rules.innerHTML = rulesTable(e);
    if (el.notes) el.notes.innerHTML = e.notes.length ? `<ul>${e.notes.map((n) => `<li>${esc(pageWording(n))}</li>`).join('')}</ul>` : '<p class="muted">None.</p>';
    if (el.full) el.full.href = new URL(`index.html${hashFor(state)}`, new URL('.', import.meta.url)).href;
  }

  let unfold = false;  // the per-layer table: repeated blocks folded (false) or every layer
  function drawLayers() {
    if (!el.layers || !last) return;
    el.layers.innerHTML = layersTable(last, unfold);
    const b = el.layers.querySelector('[data-r="unfold"]');
    if (b) b.onclick = () => { unfold = !unfold; drawLayers(); el.layers.querySelector('[data-r="unfold"]').focus(); };
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

  // ---------- exports: Markdown, CSV, JSON ----------
  function markdown() {
    const e = last;
    if (!e) return '';
    const t = e.totals;
    const lines = [`## memfit: ${e.model.name}, batch ${e.settings.batch}, ${e.settings.dtype}, ${e.settings.optimizer}${e.gpu ? ` on ${e.gpu.name}` : ''}`, ''];
    if (e.gpu) {
      lines.push(`**${e.fits ? 'Fits' : 'Does not fit'}**: peak ${bytes(e.usable_bytes - e.headroom_bytes)} reserved of ${bytes(e.usable_bytes)} usable (${e.headroom_bytes >= 0 ? `${bytes(e.headroom_bytes)} headroom` : `${bytes(-e.headroom_bytes)} missing`}).`);
      lines.push(`Usable ${bytes(e.usable_bytes)} = ${bytes(e.gpu.cuda_total_bytes)} visible to CUDA − ${bytes(e.settings.context_bytes)} CUDA context.`);
      if (lastMax != null) lines.push(`Largest batch that fits: ${int(lastMax)}.`);
    } else lines.push(`Peak ${bytes(e.peak.reserved_bytes)} reserved, ${bytes(e.peak.allocated_bytes)} allocated.`);
    lines.push('', '| layer | kind | output | params | saved | gradients | optimizer state |', '|---|---|---|---:|---:|---:|---:|');
    for (const l of e.layers) lines.push(`| ${l.name} | ${l.kind} | ${shape(l.output_shape)} ${l.output_dtype} | ${int(l.params)} | ${bytes(l.saved_bytes)} | ${bytes(l.grad_bytes)} | ${bytes(l.optimizer_bytes)} |`);
    lines.push(`| **total** | | | ${int(t.params)} | ${bytes(t.saved_activation_bytes)} | ${bytes(t.grad_bytes)} | ${bytes(t.optimizer_bytes)} |`, '', `Computed by memfit ${e.memfit} in the browser.`);
    return lines.join('\n');
  }
  function csv() {
    const q = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
    const rows = [['layer', 'kind', 'output_shape', 'output_dtype', 'output_bytes', 'params', 'param_bytes', 'saved_bytes', 'grad_bytes', 'optimizer_bytes']];
    for (const l of last.layers) rows.push([l.name, l.kind, l.output_shape.join('x'), l.output_dtype, l.output_bytes, l.params, l.param_bytes, l.saved_bytes, l.grad_bytes, l.optimizer_bytes]);
    return rows.map((r) => r.map(q).join(',')).join('\n') + '\n';
  }
  function download(name, type, text) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], { type }));
    a.download = name;
    root.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  if (el.exports) {
    const status = el.exports.querySelector('[data-r="exportStatus"]');
    el.exports.addEventListener('click', async (ev) => {
      const b = ev.target.closest('button[data-export]');
      if (!b || !last) return;
      const stem = `memfit-${last.model.name}-b${last.settings.batch}`;
      if (b.dataset.export === 'md') {
        const md = markdown();
        root.dataset.markdown = md;
        const box = el.exports.querySelector('[data-r="mdBox"]');
        try { await navigator.clipboard.writeText(md); status.textContent = 'Markdown copied.'; box.hidden = true; } catch {
          status.textContent = 'The clipboard is blocked here: select the Markdown below and copy it.';
          box.value = md;
          box.hidden = false;
          box.select();
        }
      } else if (b.dataset.export === 'csv') download(`${stem}-layers.csv`, 'text/csv', csv());
      else if (b.dataset.export === 'json') download(`${stem}.json`, 'application/json', lastText);
    });
  }

  // ---------- which GPUs fit this? ----------
  async function gpuTable() {
    const box = el.gpuTable.querySelector('[data-r="gpuRows"]');
    box.innerHTML = '<p class="muted">computing…</p>';
    const my = seq;
    const st = { ...state };
    const rows = [];
    for (const g of gpus) {
      const base = { ...modelPart(), options: { ...options(st), gpu: g.name } };
      const [est, mb] = [await call({ ...base, command: 'estimate' }, 'gpus-estimate'), await call({ ...base, command: 'max-batch' }, 'gpus-max-batch')];
      if (est.result.error) { box.innerHTML = `<p class="bad">${esc(pageWording(est.result.error.message))}</p>`; return; }
      rows.push({ name: g.name, cuda: g.cuda_total_bytes, usable: est.result.usable_bytes, fits: est.result.fits, headroom: est.result.headroom_bytes, max: mb.result.error ? null : mb.result.max_batch });
      if (my !== seq) { box.innerHTML = '<p class="muted">The input changed: run it again.</p>'; return; }
    }
    let key = 'headroom', dir = -1;
    const draw = () => {
      const sorted = [...rows].sort((a, b) => dir * ((a[key] > b[key]) - (a[key] < b[key])));
      const th = (k, label) => `<th scope="col"${k !== 'name' ? ' class="num"' : ''} aria-sort="${key === k ? (dir > 0 ? 'ascending' : 'descending') : 'none'}"><button type="button" data-sort="${k}">${label}${key === k ? (dir > 0 ? ' ▲' : ' ▼') : ''}</button></th>`;
      box.innerHTML = `<div class="table-wrap"><table><thead><tr>${th('name', 'GPU')}${th('usable', 'Usable')}${th('fits', 'Fits')}${th('headroom', 'Headroom')}${th('max', 'Largest batch')}<th scope="col"><span class="visually-hidden">Select</span></th></tr></thead><tbody>`
        + sorted.map((r) => `<tr data-gpu="${esc(r.name)}"><td>${esc(r.name)}</td><td class="num">${esc(bytes(r.usable))}</td><td class="num">${r.fits ? '<span class="ok">✓ fits</span>' : '<span class="bad">✗ no</span>'}</td>`
          + `<td class="num">${r.headroom >= 0 ? esc(bytes(r.headroom)) : `<span class="bad">${esc(bytes(r.headroom))}</span>`}</td><td class="num">${r.max == null ? '–' : int(r.max)}</td>`
          + `<td><button type="button" data-pick="${esc(r.name)}"${r.name === state.gpu ? ' aria-pressed="true"' : ''}>${r.name === state.gpu ? 'Selected' : 'Select'}</button></td></tr>`).join('')
        + '</tbody></table></div>';
      box.querySelectorAll('[data-sort]').forEach((b) => { b.onclick = () => { const k = b.dataset.sort; dir = key === k ? -dir : k === 'name' ? 1 : -1; key = k; draw(); }; });
      box.querySelectorAll('[data-pick]').forEach((b) => { b.onclick = () => { setState({ gpu: b.dataset.pick }); draw(); }; });
    };
    draw();
  }
  if (el.gpuTable) el.gpuTable.querySelector('[data-r="gpuRun"]').addEventListener('click', gpuTable);

  // ---------- events ----------
  el.text.addEventListener('input', () => { renderGutter(); changed(150); });
  el.text.addEventListener('scroll', syncScroll);
  el.preset.addEventListener('change', () => {
    if (el.preset.value === DRAFT) {
      const d = loadDraft();
      if (d != null) { el.text.value = d; renderGutter(); changed(0); }
      return;
    }
    const m = models.find((x) => x.name === el.preset.value);
    if (m) {
      // the user's own text is kept as a draft entry before a preset replaces it
      if (!models.some((x) => x.text === el.text.value)) { saveDraft(el.text.value); ensureDraftOption(); }
      el.text.value = m.text;
      renderGutter();
      changed(0);
    }
  });
  el.batch.addEventListener('input', () => {
    if (!checkBatch(el.batch.value)) el.range.value = String(batchToSlider(Number(el.batch.value)));
    changed(120);
  });
  el.range.addEventListener('input', () => { el.batch.value = String(sliderToBatch(Number(el.range.value))); changed(60); });
  for (const k of ['dtype', 'optimizer', 'impl', 'attention', 'ckptImpl']) if (el[k]) el[k].addEventListener('change', () => changed(0));
  // (reentrant checkpointing under LoRA/QLoRA works as PEFT makes it work: the core calls
  // enable_input_require_grads for it, docs/checkpointing.md; so the implementation stays the user's choice)
  if (el.ft) el.ft.addEventListener('change', () => { state.ft = el.ft.value; changed(0); });
  if (el.ckpt) el.ckpt.addEventListener('change', () => { state.ckpt = el.ckpt.value; changed(0); });
  for (const k of ['seq', 'rank', 'accum']) if (el[k]) el[k].addEventListener('input', () => changed(250));
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
    opRegistry().then((ops) => {
      const box = root.querySelector('[data-r="ops-table"]');
      if (box) box.innerHTML = opsTableHtml(ops);
    }).catch(() => {});
    const group = (label, list) => (list.length ? `<optgroup label="${esc(label)}">${list.map((m) => `<option value="${esc(m.name)}">${esc(m.name)}</option>`).join('')}</optgroup>` : '');
    el.preset.innerHTML = '<option value="">(your own model)</option>'
      + group('Networks (memfit format)', models.filter((m) => !m.hf_config))
      + group('Hugging Face config.json (LLMs, BERT, ViT)', models.filter((m) => m.hf_config));
    ensureDraftOption();
    el.gpu.innerHTML = gpus.map((g) => `<option value="${esc(g.name)}">${esc(gpuLabel(g))}</option>`).join('')
      + `<option value="${CUSTOM}">Custom size…</option>`;
    if (el.gpuNote) el.gpuNote.textContent = 'Sizes: what CUDA reports for the card (cudaMemGetInfo total).';
    if (state.text == null) {
      const m = models.find((x) => x.name === state.preset) || models.find((x) => x.name === DEFAULTS.preset) || models[0];
      if (state.preset && m.name !== state.preset) {
        // unknown preset: say so in the editor's error area once the default is loaded
        notice = `There is no builtin model '${state.preset}'; showing ${m.name}. Builtin models: ${models.map((x) => x.name).join(', ')}.`;
      }
      state.text = m.text;
      state.preset = m.name;
    }
    if (opts.ignored && opts.ignored.length && el.urlNote) {
      el.urlNote.innerHTML = `The link had settings this calculator cannot use, so it ignored them: ${opts.ignored.map((x) => `<code>${esc(x.param)}</code> (${esc(x.why)})`).join('; ')}.`
        + ' <button type="button" data-r="urlNoteClose" aria-label="Dismiss this notice">Dismiss</button>';
      el.urlNote.hidden = false;
      el.urlNote.querySelector('[data-r="urlNoteClose"]').onclick = () => { el.urlNote.hidden = true; };
    }
    writeControls();
    const problem = validate();
    if (problem) { markStale(problem); return; }
    await run();
  })();

  return { setState, getState: () => ({ ...state }), ready, root, last: () => last };
}

function breakdownNote(e) {
  const t = e.totals, b = e.peak.breakdown;
  const items = [];
  items.push(`<li><b>Parameters ${esc(bytes(b.parameter))}</b> here are the allocator's blocks (each tensor rounded up to a multiple of 512 B); the weights themselves are ${int(t.params)} values${e.settings && e.settings.qlora ? ' (4-bit weights counted unpacked, stored two per byte)' : ''} = <b>${esc(bytes(t.param_bytes))}</b> (${int(t.param_bytes)} B), as in the per-layer table.</li>`);
  items.push(`<li><b>Saved activations ${esc(bytes(b.activation))}</b> are the saved tensors still alive at the peak (${esc(e.peak.phase.replace('_', ' '))}${e.peak.layer ? ` at ${esc(e.peak.layer)}` : ''}, iteration ${e.peak.iteration}), in allocator blocks; the per-layer table's total <b>${esc(bytes(t.saved_activation_bytes))}</b> is everything saved over the forward pass, in exact bytes.</li>`);
  if (t.grad_bytes && b.gradient !== t.grad_bytes) items.push(`<li><b>Gradients ${esc(bytes(b.gradient))}</b>: the .grad blocks alive at the peak; all gradients are ${esc(bytes(t.grad_bytes))}.</li>`);
  return `<p class="hint">Why these differ from the per-layer table:</p><ul class="hint">${items.join('')}</ul>`;
}

function timelineNote(e) {
  const its = (e.iterations || []).map((i) => `iteration ${i.iteration}: ${esc(bytes(i.allocated_bytes))} allocated, ${esc(bytes(i.reserved_bytes))} reserved`);
  const ra = e.iterations && e.iterations.length ? e.iterations.reduce((a, i) => (i.reserved_bytes > a.reserved_bytes ? i : a)) : null;
  const aa = e.iterations && e.iterations.length ? e.iterations.reduce((a, i) => (i.allocated_bytes > a.allocated_bytes ? i : a)) : null;
  let why = '';
  if (ra && aa && ra.iteration !== aa.iteration) {
    why = ` Allocated memory peaks in iteration ${aa.iteration}, reserved memory in iteration ${ra.iteration}: the caching allocator keeps the blocks freed in earlier iterations and splits them differently, so what it holds grows after the first step. The verdict uses the highest of all (${esc(bytes(e.peak.reserved_bytes))} reserved).`;
  }
  return `Peaks per iteration — ${its.join('; ')}.${why}`;
}

function template(id, mode, state) {
  const compact = mode !== 'full';
  const editor = `
    <div class="field">
      <label for="${id}-preset">Model preset</label>
      <select id="${id}-preset" data-r="preset"><option>${esc(state.preset || '')}</option></select>
    </div>
    <label for="${id}-text">Model <span class="muted">(memfit text format, or paste a Hugging Face config.json; results update as you type)</span></label>
    <div class="editor">
      <div class="gutter" data-r="gutter" aria-hidden="true"></div>
      <div class="editor-main">
        <div class="hl" data-r="hl" aria-hidden="true"></div>
        <textarea class="code" id="${id}-text" data-r="text" spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off"
          rows="${compact ? 10 : 16}" aria-describedby="${id}-err ${id}-helpsum"></textarea>
      </div>
    </div>
    <div class="editor-error" id="${id}-err" data-r="err" role="alert" hidden></div>
    <div class="row onnx"><label for="${id}-onnx">Or a file: an ONNX export or a config.json <span class="muted">(drop it on the editor, or pick it; read in your browser, an ONNX file's weights are skipped)</span></label>
      <input type="file" id="${id}-onnx" accept=".onnx,.json,.memfit" data-r="onnxPick"></div>
    <div class="row onnx-info" data-r="onnxInfo" hidden>Model: <strong data-r="onnxName"></strong>
      <label for="${id}-dims">symbolic dims</label><input id="${id}-dims" data-r="onnxDims" placeholder="seq=128" size="14">
      <button type="button" data-r="onnxClear">Use the text model</button></div>
    <details class="help"><summary id="${id}-helpsum">Syntax help</summary>${HELP}<div data-r="ops-table"></div></details>`;
  const settings = `
    <div class="settings">
      <div class="field wide">
        <label for="${id}-batch">Batch size</label>
        <div class="batch-row">
          <input type="number" id="${id}-batch" data-r="batch" min="1" max="${BATCH_MAX}" step="1" inputmode="numeric" aria-describedby="${id}-batcherr">
          <input type="range" data-r="range" min="0" max="186" step="1" aria-label="Batch size slider (doubles every 8 steps)">
        </div>
        <div class="field-error" id="${id}-batcherr" data-r="batchErr" role="alert" hidden></div>
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
      <div class="field gpu-field">
        <label for="${id}-gpu">GPU <span class="muted">(memory CUDA sees)</span></label>
        <select id="${id}-gpu" data-r="gpu" aria-describedby="${id}-gpunote"><option>${esc(state.gpu)}</option></select>
        <div class="hint" id="${id}-gpunote" data-r="gpuNote"></div>
        <div data-r="gpuCustomWrap" hidden>
          <label for="${id}-gpuc" class="visually-hidden">Custom GPU memory size</label>
          <input type="text" id="${id}-gpuc" data-r="gpuCustom" placeholder="24GiB" aria-describedby="${id}-gpuchint ${id}-gpuerr" style="margin-top:.3rem;width:100%">
          <div class="hint" id="${id}-gpuchint">A size with its unit: 24GiB (binary), 12GB (decimal, 10⁹ bytes) or 12000MiB.</div>
          <div class="field-error" id="${id}-gpuerr" data-r="gpuErr" role="alert" hidden></div>
        </div>
      </div>
    </div>
    <p class="settings-error" data-r="settingsErr" role="alert" hidden></p>
    ${compact ? '' : `<div class="row"><button type="button" class="primary" data-r="copy">Copy link to this calculation</button><span class="copy-status" data-r="copyStatus" role="status" aria-live="polite"></span></div>`}`;
  // How the model trains beyond batch/precision/optimizer: a config.json's sequence length, attention and
  // fine-tuning method, and the memory savers for any model (activation checkpointing, gradient accumulation).
  const extra = `    <fieldset class="settings hf-box" data-r="hfBox" hidden><legend>Hugging Face config.json</legend>
      <div class="field" data-r="seqField">
        <label for="${id}-seq">Sequence length</label>
        <input type="number" id="${id}-seq" data-r="seq" min="1" step="1" inputmode="numeric" aria-describedby="${id}-seqhint ${id}-seqerr">
        <div class="hint" id="${id}-seqhint" data-r="seqHint"></div>
        <div class="field-error" id="${id}-seqerr" data-r="seqErr" role="alert" hidden></div>
      </div>
      <div class="field">
        <label for="${id}-attn">Attention</label>
        <select id="${id}-attn" data-r="attention">${opt(ATTENTIONS, state.attention)}</select>
      </div>
      <div class="field">
        <label for="${id}-ft">Fine-tuning</label>
        <select id="${id}-ft" data-r="ft">${opt(FINETUNES, state.ft)}</select>
      </div>
      <div class="field" data-r="rankField" hidden>
        <label for="${id}-rank">LoRA rank r <span class="muted">(alpha = 2r)</span></label>
        <input type="number" id="${id}-rank" data-r="rank" min="1" max="${RANK_MAX}" step="1" inputmode="numeric" aria-describedby="${id}-rankerr ${id}-loraspec">
        <div class="field-error" id="${id}-rankerr" data-r="rankErr" role="alert" hidden></div>
      </div>
      <p class="hint wide lora-spec" id="${id}-loraspec" data-r="loraSpec"></p>
    </fieldset>
    <div class="settings savers">
      <div class="field">
        <label for="${id}-ckpt">Activation checkpointing</label>
        <select id="${id}-ckpt" data-r="ckpt" aria-describedby="${id}-ckpthint"><option value="">None</option></select>
        <div class="hint" id="${id}-ckpthint" data-r="ckptHint"></div>
      </div>
      <div class="field" data-r="ckptImplField" hidden>
        <label for="${id}-ckimpl">Checkpoint implementation <span class="muted">(use_reentrant)</span></label>
        <select id="${id}-ckimpl" data-r="ckptImpl">${opt(CKPT_IMPLS, state.ckptImpl)}</select>
      </div>
      <div class="field">
        <label for="${id}-accum">Gradient accumulation <span class="muted">(micro-batches per step)</span></label>
        <input type="number" id="${id}-accum" data-r="accum" min="1" max="${ACCUM_MAX}" step="1" inputmode="numeric" aria-describedby="${id}-accumerr">
        <div class="field-error" id="${id}-accumerr" data-r="accumErr" role="alert" hidden></div>
      </div>
    </div>
`;
  const verdict = '<section class="verdict" data-r="verdict" role="status" aria-live="polite"><p class="loading">Loading the memfit module…</p></section>';
  const urlNote = '<p class="url-note" data-r="urlNote" role="status" hidden></p>';
  const breakdown = `<section><h2>Where the memory goes at the peak</h2><figure data-r="breakdown"></figure>
        <figcaption>Tensors alive at the peak by category, the allocator's cached free blocks, and the CUDA context.</figcaption><div data-r="breakdownNote"></div></section>`;
  if (compact) {
    return `${urlNote}
      <div class="panel">${settings}${extra}
        <details class="model"><summary>Model: edit the layers</summary>${editor}</details>
      </div>
      ${verdict}
      <section class="remedies" data-r="remedies" hidden></section>
      ${breakdown}
      ${mode === 'verdict' ? '' : '<section><h2>Memory against batch size</h2><figure data-r="sweep"></figure></section>'}
      <p class="timing"><a data-r="full" href="index.html" target="_blank" rel="noopener">Open in the full calculator</a> · <span data-r="timing"></span></p>`;
  }
  return `${urlNote}
    <div class="layout">
      <div class="col-main">
        <div class="panel col-editor">${editor}</div>
        <div class="panel model-settings"><h2 data-r="extraTitle">Memory savers</h2>${extra}</div>
      </div>
      <div class="col-side">
        <div class="panel"><h2>Training settings</h2>${settings}</div>
        ${verdict}
      </div>
    </div>
    <section class="remedies" data-r="remedies" hidden></section>
    <div class="charts">
      ${breakdown}
      <section><h2>Memory through the training loop</h2><figure data-r="timeline"></figure>
        <figcaption>Allocated (live tensors) and reserved (PyTorch's caching allocator) after each op, through every simulated iteration. <span data-r="timelineNote"></span></figcaption></section>
      <section class="span2"><h2>Memory against batch size</h2><figure data-r="sweep"><p class="muted">computing…</p></figure>
        <figcaption>Peak memory for each batch size without a limit. Past the GPU's usable line the allocator first frees its cache and retries; the largest batch is where even that runs out.</figcaption></section>
    </div>
    <section data-r="exports"><h2>Take the results with you</h2>
      <div class="row"><button type="button" data-export="md">Copy as Markdown</button><button type="button" data-export="csv">Download per-layer CSV</button><button type="button" data-export="json">Download the core's JSON</button>
      <span class="copy-status" data-r="exportStatus" role="status" aria-live="polite"></span></div>
      <label class="visually-hidden" for="${id}-md">The results as Markdown</label><textarea class="code md-box" id="${id}-md" data-r="mdBox" rows="8" readonly hidden></textarea></section>
    <section data-r="gpuTable"><h2>Which GPUs fit this?</h2>
      <p class="hint">Runs this model with these settings on every GPU of the catalog (an estimate and a largest-batch search each).</p>
      <div class="row"><button type="button" data-r="gpuRun">Compare all GPUs</button></div><div data-r="gpuRows"></div></section>
    <section><h2>Per layer</h2><div class="table-wrap" data-r="layers"></div>
      <p class="hint">Saved tensors are what autograd keeps for the backward pass; grey ones are counted elsewhere (parameters, the input batch, or an earlier layer).</p></section>
    <section><h2>Rules of thumb compared</h2><div data-r="rules"></div></section>
    <section><h2>Notes</h2><div data-r="notes"></div><p class="timing" data-r="timing"></p></section>`;
}

/**
 * Repeated blocks folded as the core's text report does (report_text.cpp fold_repeats): a region identical to
 * the sibling just before it (same layer kinds, output shapes and parameter counts, a name differing only in its
 * last number: model.layers.1 after model.layers.0) joins that sibling's run; the run's first region is shown in
 * full and the rest as one row. Returns [{layer} | {fold: {first, last, count, like, params, saved, grads, optim}}].
 */
export function foldLayers(e) {
  const layers = e.layers, regions = e.regions || [];
  const at = new Map(layers.map((l, i) => [l.name, i]));
  const span = regions.map((r) => [at.get(r.first_layer), at.get(r.last_layer)]);
  const sig = span.map(([a, b]) => (a == null || b == null ? null
    : layers.slice(a, b + 1).map((l) => `${l.kind}|${l.output_shape.join('x')}|${l.params}|${l.frozen_params}`).join(';')));
  const numbered = (a, b) => {
    const pa = a.slice(0, a.lastIndexOf('.') + 1), pb = b.slice(0, b.lastIndexOf('.') + 1);
    return pa === pb && /^\d+$/.test(a.slice(pa.length)) && /^\d+$/.test(b.slice(pb.length));
  };
  const start = new Map(regions.map((r, k) => [`${r.parent}|${span[k][0]}`, k]));
  const like = regions.map(() => -1);
  regions.forEach((r, j) => {   // parents come before children and earlier siblings before later ones
    if (span[j][1] == null) return;
    const k = start.get(`${r.parent}|${span[j][1] + 1}`);
    if (k == null || sig[k] == null || sig[k] !== sig[j] || !numbered(r.name, regions[k].name)) return;
    like[k] = like[j] >= 0 ? like[j] : j;
  });
  const out = [];
  const byStart = new Map();  // layer index -> the outermost folded region starting there
  regions.forEach((r, k) => { if (like[k] >= 0 && span[k][0] != null && !byStart.has(span[k][0])) byStart.set(span[k][0], k); });
  for (let i = 0; i < layers.length;) {
    const k = byStart.get(i);
    if (k == null) { out.push({ layer: layers[i] }); i++; continue; }
    // the run: this region and every following sibling folded into the same first region
    let last = k, count = 1;
    for (;;) {
      const n = start.get(`${regions[last].parent}|${span[last][1] + 1}`);
      if (n == null || like[n] !== like[k]) break;
      last = n; count++;
    }
    const f = { first: regions[k].name, last: regions[last].name, count, like: regions[like[k]].name, params: 0, saved: 0, grads: 0, optim: 0, layers: 0 };
    for (let j = span[k][0]; j <= span[last][1]; j++) {
      const l = layers[j];
      f.params += l.params; f.saved += l.saved_bytes; f.grads += l.grad_bytes; f.optim += l.optimizer_bytes; f.layers++;
    }
    out.push({ fold: f });
    i = span[last][1] + 1;
  }
  return out;
}

function layerRow(l) {
  const saved = l.saved.map((s) => `<div class="saved${s.counted ? '' : ' uncounted'}" title="${esc(s.note || (s.counted ? 'counted here' : ''))}">`
    + `${esc(s.role)}${s.tensor ? ` (${esc(s.tensor)})` : ''}: ${esc(s.dtype)} ${esc(shape(s.shape))} ${esc(bytes(s.bytes))}</div>`).join('');
  return `<tr><td class="lname">${dotted(l.name)}</td><td>${esc(l.kind)}</td><td class="shape">${esc(shape(l.output_shape))}<br><span class="muted">${esc(l.output_dtype)}, ${esc(bytes(l.output_bytes))}</span></td>`
    + `<td class="num">${int(l.params)}</td><td class="savedcol">${saved || '<span class="muted">—</span>'}</td><td class="num">${esc(bytes(l.saved_bytes))}</td>`
    + `<td class="num">${esc(bytes(l.grad_bytes))}</td><td class="num">${esc(bytes(l.optimizer_bytes))}</td></tr>`;
}
/** A dotted module path that may break after its dots (model.layers.0.self_attn.q_proj), never inside a name. */
const dotted = (name) => esc(name).replace(/\./g, '.<wbr>');

function layersTable(e, unfold) {
  const items = unfold ? e.layers.map((layer) => ({ layer })) : foldLayers(e);
  const folded = items.some((x) => x.fold);
  const rows = items.map((x) => (x.layer ? layerRow(x.layer) : `<tr class="fold" data-fold="${esc(x.fold.first)}"><td class="lname"><b>${dotted(x.fold.first)} … ${dotted(x.fold.last)}</b></td>`
    + `<td colspan="2">${int(x.fold.count)} more blocks like <b>${esc(x.fold.like)}</b> (${int(x.fold.layers)} layers, the same per block)</td>`
    + `<td class="num">${int(x.fold.params)}</td><td class="muted">together</td><td class="num">${esc(bytes(x.fold.saved))}</td><td class="num">${esc(bytes(x.fold.grads))}</td><td class="num">${esc(bytes(x.fold.optim))}</td></tr>`)).join('');
  const toggle = folded || unfold ? `<p class="row fold-toggle"><button type="button" data-r="unfold" aria-pressed="${unfold ? 'true' : 'false'}">${unfold ? 'Fold repeated blocks' : `Show all ${int(e.layers.length)} layers`}</button>`
    + `<span class="hint">${unfold ? '' : 'Repeated blocks are folded into one row each run (as memfit estimate prints them).'}</span></p>` : '';
  return toggle + rowsTable(e, rows);
}

function rowsTable(e, rows) {
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
  // config.json and memory-saving settings: only what differs from the defaults, so old links stay short
  if (st.seq != null) p.set('seq', String(st.seq));
  if (st.attention && st.attention !== 'sdpa') p.set('attention', st.attention);
  if (st.ft && st.ft !== 'full') { p.set('ft', st.ft); p.set('rank', String(st.rank)); }
  if (st.ckpt) { p.set('ckpt', st.ckpt); if (st.ckptImpl && st.ckptImpl !== 'reentrant') p.set('ckpt_impl', st.ckptImpl); }
  if (st.accum > 1) p.set('accum', String(st.accum));
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
  const ignored = [];  // [{param, why}]: shown on the page, never dropped silently
  const list = (l) => l.map(([v]) => v).join(', ');
  if (p.has('model')) st.preset = p.get('model');
  if (p.has('text')) { st.text = p.get('text'); st.preset = null; }
  if (p.has('z')) {
    try {
      st.text = new TextDecoder().decode(await pipe(unb64url(p.get('z')), new DecompressionStream('deflate-raw')));
      st.preset = null;
    } catch { ignored.push({ param: 'z=…', why: 'the model in the link is damaged; showing the default model' }); }
  }
  if (p.has('batch')) {
    const msg = checkBatch(p.get('batch'));
    if (msg) ignored.push({ param: `batch=${p.get('batch')}`, why: `${msg} Using ${DEFAULTS.batch}` });
    else st.batch = Number(p.get('batch'));
  }
  const pick = (key, values, what, field) => {
    if (!p.has(key)) return;
    if (values.some(([v]) => v === p.get(key))) st[field] = p.get(key);
    else ignored.push({ param: `${key}=${p.get(key)}`, why: `not ${what}: ${list(values)}; using ${DEFAULTS[field]}` });
  };
  pick('dtype', DTYPES, 'a precision', 'dtype');
  pick('optimizer', OPTIMIZERS, 'an optimizer', 'optimizer');
  pick('impl', IMPLS, 'an optimizer implementation', 'impl');
  if (p.has('gpu') && p.get('gpu')) st.gpu = p.get('gpu');
  pick('attention', ATTENTIONS, 'an attention implementation', 'attention');
  pick('ft', FINETUNES, 'a fine-tuning method', 'ft');
  pick('ckpt_impl', CKPT_IMPLS, 'a checkpoint implementation', 'ckptImpl');
  const whole = (key, field, lo, hi, what) => {
    if (!p.has(key)) return;
    const msg = checkWhole(p.get(key), what, lo, hi);
    if (msg) ignored.push({ param: `${key}=${p.get(key)}`, why: `${msg} Using ${DEFAULTS[field] ?? 'the default'}` });
    else st[field] = Number(p.get(key));
  };
  whole('seq', 'seq', 1, 2 ** 24, 'the sequence length');
  whole('rank', 'rank', 1, RANK_MAX, 'the LoRA rank');
  whole('accum', 'accum', 1, ACCUM_MAX, 'the number of micro-batches');
  if (p.has('ckpt')) st.ckpt = p.get('ckpt');  // globs: the core checks them against the model's regions
  const known = new Set(['model', 'text', 'z', 'batch', 'dtype', 'optimizer', 'impl', 'gpu', 'seq', 'attention', 'ft', 'rank', 'ckpt', 'ckpt_impl', 'accum', 'view']);
  for (const k of new Set(p.keys())) if (!known.has(k)) ignored.push({ param: `${k}=${p.get(k)}`, why: `unknown key; the keys are ${[...known].join(', ')}` });
  Object.defineProperty(st, 'ignored', { value: ignored, enumerable: false });
  if (p.has('view')) Object.defineProperty(st, 'view', { value: p.get('view'), enumerable: false });
  return st;
}
