// The WebAssembly module against the native CLI: for every models/*.memfit and several settings the
// module's JSON must be byte-identical to `memfit estimate MODEL --json ...`; errors come back as values
// (message, line, column) and the module keeps working after them.
// Needs: build-wasm/node/memfit-node.cjs (tools/build-web.sh) and the native CLI (MEMFIT_CLI, default build/memfit).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from './lib.mjs';

const createMemfit = (await import(path.join(ROOT, 'build-wasm/node/memfit-node.cjs'))).default;
const CLI = process.env.MEMFIT_CLI || path.join(ROOT, 'build/memfit');
const mod = await createMemfit();
const call = (req) => mod.request(JSON.stringify(req));

const MODELS = fs.readdirSync(path.join(ROOT, 'models')).filter((f) => f.endsWith('.memfit')).sort();
const HF_CONFIGS = fs.readdirSync(path.join(ROOT, 'models/hf')).filter((f) => f.endsWith('.json')).sort();

// [module options, CLI flags]
const SETTINGS = [
  [{}, []],
  [{ batch: '256', gpu: 'RTX 3060 12GB' }, ['--batch', '256', '--gpu', 'RTX 3060 12GB']],
  [{ batch: '32', dtype: 'bf16', optimizer: 'adam', gpu: '24GiB' }, ['--batch', '32', '--dtype', 'bf16', '--optimizer', 'adam', '--gpu', '24GiB']],
  [{ batch: '2048', dtype: 'fp16', optimizer: 'adamw', gpu: 'T4' }, ['--batch', '2048', '--dtype', 'fp16', '--optimizer', 'adamw', '--gpu', 'T4']],
  [{ batch: '8', optimizer: 'rmsprop', optimizer_impl: 'for-loop', gpu: '4GiB' }, ['--batch', '8', '--optimizer', 'rmsprop', '--optimizer-impl', 'for-loop', '--gpu', '4GiB']],
];

function cli(args) {
  const r = spawnSync(CLI, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 1 << 28 });
  assert.ok(r.status === 0 || r.status === 1, `${CLI} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

test('the native CLI exists', () => {
  assert.ok(fs.existsSync(CLI), `${CLI} is missing: build it (cmake -S . -B build && make -C build memfit) or set MEMFIT_CLI`);
});

test('there are models to compare', () => {
  assert.ok(MODELS.includes('question_cnn.memfit'));
});

for (const file of MODELS) {
  const rel = `models/${file}`;
  const text = fs.readFileSync(path.join(ROOT, rel), 'utf8');
  test(`estimate ${rel}: module == CLI (${SETTINGS.length} settings)`, () => {
    for (const [options, flags] of SETTINGS) {
      const want = cli(['estimate', rel, '--json', ...flags]);
      const got = call({ command: 'estimate', model: text, file: rel, options });
      assert.ok(got === want, `${rel} ${flags.join(' ')}: the module's JSON differs from the CLI's\n${firstDiff(got, want)}`);
    }
  });
}

test('estimate with the timeline, max-batch and gpus: module == CLI', () => {
  const rel = 'models/question_cnn.memfit';
  const text = fs.readFileSync(path.join(ROOT, rel), 'utf8');
  assert.equal(call({ command: 'estimate', model: text, file: rel, options: { gpu: 'RTX 3090', timeline: true } }),
    cli(['estimate', rel, '--json', '--timeline', '--gpu', 'RTX 3090']));
  assert.equal(call({ command: 'max-batch', model: text, file: rel, options: { gpu: '8GiB', dtype: 'bf16' } }),
    cli(['max-batch', rel, '--json', '--gpu', '8GiB', '--dtype', 'bf16']));
  assert.equal(call({ command: 'model', model: text, file: rel }), cli(['model', rel, '--json']));
  assert.equal(call({ command: 'gpus' }), cli(['gpus', '--json']));
});

// ONNX files through the module's byte source (wasm/bindings.cpp request_onnx), as the page's worker
// reads a dropped File: the same bytes as `memfit estimate FILE.onnx --json`, and only byte ranges read.
function onnxReader(buf, log) {
  return {
    size: () => buf.length,
    read: (o, n) => { log.push(n); return new Uint8Array(buf.buffer, buf.byteOffset + o, n); },
  };
}
const ONNX = [
  ['tests/fixtures/onnx/tiny_cnn.onnx', {}, []],
  ['tests/fixtures/onnx/tiny_cnn_external.onnx', {}, []],
  ['tests/corpus/onnx/symbolic_dim.onnx', { seq: 3 }, ['--dim', 'seq=3']],
];
for (const [rel, dims, dimFlags] of ONNX) {
  test(`ONNX ${rel}: module == CLI (${SETTINGS.length} settings, and the model JSON)`, () => {
    const buf = fs.readFileSync(path.join(ROOT, rel));
    for (const [options, flags] of SETTINGS) {
      const want = cli(['estimate', rel, '--json', ...dimFlags, ...flags]);
      const got = mod.request_onnx(JSON.stringify({ command: 'estimate', file: rel, options, dims }), onnxReader(buf, []), rel);
      assert.ok(got === want, `${rel} ${flags.join(' ')}: the module's JSON differs from the CLI's\n${firstDiff(got, want)}`);
    }
    assert.equal(mod.request_onnx(JSON.stringify({ command: 'model', file: rel, dims }), onnxReader(buf, []), rel),
      cli(['model', rel, '--json', ...dimFlags]));
  });
}

test('ONNX: a reader that fails gives an error value, and the module keeps working', () => {
  const buf = fs.readFileSync(path.join(ROOT, 'tests/fixtures/onnx/tiny_cnn.onnx'));
  const broken = { size: () => buf.length, read: () => null };
  const e = JSON.parse(mod.request_onnx(JSON.stringify({ command: 'estimate', file: 'x.onnx' }), broken, 'x.onnx')).error;
  assert.ok(e && e.message.includes('reading the file failed'), JSON.stringify(e));
  const log = [];
  const ok = JSON.parse(mod.request_onnx(JSON.stringify({ command: 'estimate', file: 'x.onnx' }), onnxReader(buf, log), 'x.onnx'));
  assert.ok(!ok.error);
  assert.ok(log.every((n) => n <= 4096), `reads of at most 4 KiB: ${log}`);
});

test('builtin models: every models/*.memfit and every models/hf/*.json config, with its text, path and kind', () => {
  const got = JSON.parse(call({ command: 'models' })).models;
  const mine = got.filter((m) => !m.hf_config), configs = got.filter((m) => m.hf_config === true);
  assert.equal(mine.length + configs.length, got.length, 'every entry says whether it is a Hugging Face config');
  assert.deepEqual(mine.map((m) => `${m.name}.memfit`).sort(), MODELS);
  assert.deepEqual(configs.map((m) => `${m.name}.json`).sort(), HF_CONFIGS);
  for (const m of mine) {
    assert.equal(m.path, `models/${m.name}.memfit`);
    assert.equal(m.text, fs.readFileSync(path.join(ROOT, m.path), 'utf8'));
  }
  for (const m of configs) {
    assert.equal(m.path, `models/hf/${m.name}.json`);
    assert.equal(m.text, fs.readFileSync(path.join(ROOT, m.path), 'utf8'));
  }
});

// Hugging Face config.json requests (docs/hf-config.md, docs/fine-tuning.md, docs/checkpointing.md), as the page
// sends them: the module's JSON must be the CLI's byte for byte with the same flags. A config the core cannot
// build yet (ViT's kinds, docs/hf-config.md Limits) must come back as the CLI's own error, as a value.
function sameAsCli(command, rel, options, flags, extra = {}) {
  const r = spawnSync(CLI, [command, rel, '--json', ...flags], { cwd: ROOT, encoding: 'utf8', maxBuffer: 1 << 28 });
  const got = call({ command, model: fs.readFileSync(path.join(ROOT, rel), 'utf8'), file: rel, options, ...extra });
  if (r.status === 0 || r.status === 1) {
    assert.ok(got === r.stdout, `${command} ${rel} ${flags.join(' ')}: the module's JSON differs from the CLI's\n${firstDiff(got, r.stdout)}`);
    return JSON.parse(got);
  }
  const e = JSON.parse(got).error;
  assert.ok(e, `${command} ${rel} ${flags.join(' ')}: the CLI failed (${r.stderr.trim()}) but the module answered ${got.slice(0, 200)}`);
  assert.equal(`memfit: ${e.message}`, r.stderr.trim(), `${command} ${rel} ${flags.join(' ')}: the module's error differs from the CLI's`);
  return { error: e };
}
const LORA = (targets) => `r=16,alpha=32,dropout=0.05,targets=${targets}`;
test('Hugging Face configs: every shipped config estimates (or fails) exactly as the CLI, default and --seq 256', () => {
  for (const f of HF_CONFIGS) {
    const rel = `models/hf/${f}`;
    sameAsCli('estimate', rel, { gpu: 'RTX 4090' }, ['--gpu', 'RTX 4090']);
    if (!f.startsWith('vit')) sameAsCli('estimate', rel, { batch: '2', seq: '256', dtype: 'bf16', optimizer: 'adamw', gpu: 'RTX 4090' }, ['--batch', '2', '--seq', '256', '--dtype', 'bf16', '--optimizer', 'adamw', '--gpu', 'RTX 4090']);
  }
  // ViT has no --seq: the request is refused as the CLI refuses it
  sameAsCli('estimate', 'models/hf/vit-base-patch16-224.json', { seq: '256' }, ['--seq', '256']);
});

test('Hugging Face configs: eager attention, LoRA per family (q_proj,v_proj / c_attn / query,value), QLoRA: module == CLI', () => {
  const e1 = sameAsCli('estimate', 'models/hf/llama-3.2-1b.json', { batch: '1', seq: '512', attention: 'eager', gpu: 'RTX 4090' },
    ['--batch', '1', '--seq', '512', '--attention', 'eager', '--gpu', 'RTX 4090']);
  assert.ok(e1.layers.some((l) => l.kind === 'softmax'), 'eager attention has the explicit softmax');
  const l1 = sameAsCli('estimate', 'models/hf/llama-3.2-1b.json', { batch: '4', seq: '1024', dtype: 'bf16', lora: LORA('q_proj,v_proj'), gpu: 'RTX 4090' },
    ['--batch', '4', '--seq', '1024', '--dtype', 'bf16', '--lora', LORA('q_proj,v_proj'), '--gpu', 'RTX 4090']);
  // 16 decoder layers x (q_proj: A 16x2048 + B 2048x16, v_proj: A 16x2048 + B 512x16) trainable parameters
  assert.equal(l1.totals.params - l1.totals.frozen_params, 16 * (16 * 2048 + 2048 * 16 + 16 * 2048 + 512 * 16));
  sameAsCli('estimate', 'models/hf/gpt2.json', { batch: '8', seq: '512', lora: LORA('c_attn'), gpu: 'T4' }, ['--batch', '8', '--seq', '512', '--lora', LORA('c_attn'), '--gpu', 'T4']);
  sameAsCli('estimate', 'models/hf/bert-base-uncased.json', { batch: '16', seq: '128', lora: LORA('query,value'), gpu: 'T4' }, ['--batch', '16', '--seq', '128', '--lora', LORA('query,value'), '--gpu', 'T4']);
  const q = sameAsCli('estimate', 'models/hf/llama-3.1-8b.json', { batch: '1', seq: '2048', dtype: 'bf16', lora: LORA('q_proj,v_proj'), qlora: 'on', gpu: 'RTX 4090' },
    ['--batch', '1', '--seq', '2048', '--dtype', 'bf16', '--lora', LORA('q_proj,v_proj'), '--qlora', '--gpu', 'RTX 4090']);
  assert.ok(q.layers.some((l) => l.kind === 'linear4bit'), 'QLoRA stores the base linears as linear4bit');
  // QLoRA with a half model is refused by both, with the same words
  const bad = sameAsCli('estimate', 'models/hf/llama-3.2-1b.json', { dtype: 'bf16-true', qlora: 'on' }, ['--dtype', 'bf16-true', '--qlora']);
  assert.match(bad.error.message, /--qlora with --dtype bf16-true/);
});

test('Hugging Face configs: checkpointing every block (reentrant, under LoRA, refused when nothing before needs grad; non-reentrant), accumulation: module == CLI', () => {
  const ck = sameAsCli('estimate', 'models/hf/llama-3.2-1b.json', { batch: '2', seq: '2048', dtype: 'bf16', checkpoint: 'model.layers.*', gpu: 'RTX 4090' },
    ['--batch', '2', '--seq', '2048', '--dtype', 'bf16', '--checkpoint', 'model.layers.*', '--gpu', 'RTX 4090']);
  assert.equal(ck.checkpoint.calls.length, 16);
  sameAsCli('estimate', 'models/hf/gpt2.json', { batch: '4', checkpoint: 'transformer.h.*', checkpoint_impl: 'non-reentrant', grad_accumulation: '4', gpu: 'T4' },
    ['--batch', '4', '--checkpoint', 'transformer.h.*', '--checkpoint-impl', 'non-reentrant', '--grad-accum', '4', '--gpu', 'T4']);
  // reentrant under LoRA (the core makes the embedding's output require grad, as PEFT does), and the same
  // blocks trained without LoRA behind a frozen embedding, where reentrant is refused (no block input requires grad)
  const re = sameAsCli('estimate', 'models/hf/llama-3.2-1b.json', { lora: LORA('q_proj,v_proj'), checkpoint: 'model.layers.*', gpu: 'RTX 4090' }, ['--lora', LORA('q_proj,v_proj'), '--checkpoint', 'model.layers.*', '--gpu', 'RTX 4090']);
  assert.equal(re.checkpoint.impl, 'reentrant');
  const frozen = sameAsCli('estimate', 'models/hf/llama-3.2-1b.json', { train: 'model.layers.*', checkpoint: 'model.layers.*' }, ['--train', 'model.layers.*', '--checkpoint', 'model.layers.*']);
  assert.match(frozen.error.message, /none of its inputs requires grad/);
  sameAsCli('estimate', 'models/hf/llama-3.1-8b.json', { batch: '1', seq: '2048', dtype: 'bf16', lora: LORA('q_proj,v_proj'), qlora: 'on', checkpoint: 'model.layers.*', checkpoint_impl: 'non-reentrant', gpu: 'RTX 4090' },
    ['--batch', '1', '--seq', '2048', '--dtype', 'bf16', '--lora', LORA('q_proj,v_proj'), '--qlora', '--checkpoint', 'model.layers.*', '--checkpoint-impl', 'non-reentrant', '--gpu', 'RTX 4090']);
});

test('Hugging Face configs: max-batch and max-seq (the longest sequence at a batch): module == CLI', () => {
  const flags = ['--dtype', 'bf16', '--lora', LORA('q_proj,v_proj'), '--qlora', '--checkpoint', 'model.layers.*', '--checkpoint-impl', 'non-reentrant', '--gpu', 'RTX 4090'];
  const options = { dtype: 'bf16', lora: LORA('q_proj,v_proj'), qlora: 'on', checkpoint: 'model.layers.*', checkpoint_impl: 'non-reentrant', gpu: 'RTX 4090' };
  const mb = sameAsCli('max-batch', 'models/hf/llama-3.2-1b.json', { ...options, seq: '2048' }, [...flags, '--seq', '2048']);
  assert.ok(mb.max_batch >= 1);
  const ms = sameAsCli('max-seq', 'models/hf/llama-3.2-1b.json', { ...options, batch: '4' }, [...flags, '--batch', '4']);
  assert.ok(ms.max_seq > 0 && ms.max_seq <= ms.max_seq_search_cap);
  // the seq_limit field is --seq-limit
  const lim = sameAsCli('max-seq', 'models/hf/gpt2.json', { batch: '8', gpu: 'T4' }, ['--batch', '8', '--gpu', 'T4', '--seq-limit', '300'], { seq_limit: 300 });
  assert.ok(lim.max_seq <= 300);
});

test('errors come back as values with line and column; the module stays usable', () => {
  const good = fs.readFileSync(path.join(ROOT, 'models/question_cnn.memfit'), 'utf8');
  const want = call({ command: 'estimate', model: good, file: 'm', options: { gpu: 'RTX 3090' } });
  assert.ok(JSON.parse(want).fits);

  const bad = good.replace('conv2: conv 64 3x3 pad=same', 'conv2: conv 64 3x3 pad=sideways');
  const e1 = JSON.parse(call({ command: 'estimate', model: bad, file: 'm', options: { gpu: 'RTX 3090' } })).error;
  assert.ok(e1, 'a bad model gives {"error": ...}');
  const line = bad.split('\n').findIndex((l) => l.includes('sideways')) + 1;
  assert.equal(e1.line, line);
  assert.ok(e1.column > 0);
  assert.equal(e1.file, 'm');
  assert.equal(e1.layer, 'conv2');
  assert.match(e1.message, /sideways|padding/);
  // a good request right after the error: same bytes as before
  assert.equal(call({ command: 'estimate', model: good, file: 'm', options: { gpu: 'RTX 3090' } }), want);

  const e2 = JSON.parse(call({ command: 'estimate', model: 'model x\ninput 10\nfc 10\nwhat 3\n', file: 'm' })).error;
  assert.deepEqual([e2.line, e2.column], [4, 1]);
  assert.match(e2.problem, /unknown layer kind 'what'/);

  // settings errors, a request that is not JSON, an unknown command, a batch whose bytes overflow
  const errs = [
    mod.request('{not json'),
    call({ command: 'estimate', model: good, options: { gpu: '24XB' } }),
    call({ command: 'estimate', model: good, options: { batch: '0' } }),
    call({ command: 'estimate', model: good, options: { bogus: '1' } }),
    call({ command: 'fly', model: good }),
    call({ command: 'estimate', model: good, options: { batch: String(2 ** 50) } }),
    call({ command: 'max-batch', model: good }),
    call({ command: 'sweep', model: good, sweep_points: 100000 }),
    call({ command: 'estimate', model: '' }),
    call({ command: 'estimate', model: 'model x\n'.repeat(3) + 'input 1x1x1x1x1x1x1x1x1\n' }),
  ];
  for (const text of errs) {
    const e = JSON.parse(text).error;
    assert.ok(e && typeof e.message === 'string' && e.message.length > 0, `expected an error, got ${text.slice(0, 200)}`);
    assert.equal(typeof e.line, 'number');
    assert.equal(typeof e.column, 'number');
  }
  assert.equal(call({ command: 'estimate', model: good, file: 'm', options: { gpu: 'RTX 3090' } }), want);
});

function firstDiff(a, b) {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return `first difference at byte ${i}:\n module: ${JSON.stringify(a.slice(Math.max(0, i - 80), i + 80))}\n cli:    ${JSON.stringify(b.slice(Math.max(0, i - 80), i + 80))}`;
}
