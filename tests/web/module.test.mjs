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

test('builtin models: every models/*.memfit, with its text', () => {
  const got = JSON.parse(call({ command: 'models' })).models;
  assert.deepEqual(got.map((m) => `${m.name}.memfit`).sort(), MODELS);
  for (const m of got) assert.equal(m.text, fs.readFileSync(path.join(ROOT, 'models', `${m.name}.memfit`), 'utf8'));
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
