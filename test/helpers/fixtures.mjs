// Shared test helpers: where the fixtures are, a small safetensors reader (the format is simple
// enough to read independently of the native code under test), and error metrics.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
export const fixturesDir = process.env.QWEN_FIXTURES || path.resolve(repoRoot, '..', 'shared', 'fixtures');
export const fixture = (name) => path.join(fixturesDir, name);
// Which backend the model tests run on: CPU in CI, `QWEN_DEVICE=cuda` on the GPU machine.
export const device = process.env.QWEN_DEVICE || 'cpu';

export function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (e.dtype !== 'F32' && e.dtype !== 'I32') throw new Error(`test reader: ${name} is ${e.dtype}`);
    const [b, end] = e.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + end);
    const copy = new Uint8Array(bytes); // aligned copy
    const data = e.dtype === 'F32' ? new Float32Array(copy.buffer) : new Int32Array(copy.buffer);
    out[name] = { shape: e.shape, data };
  }
  return out;
}

export function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

// |a - b|_2 / |b|_2 and max |a - b|, in float64.
export function errors(a, b) {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0, den = 0, max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
    max = Math.max(max, Math.abs(d));
  }
  return { rel: Math.sqrt(num / den), maxAbs: max };
}

export function argmax(a) {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

// Relative error per step that the backend under test must stay under: fp32 math on the CPU
// (measured ~5e-7); bf16 activations between CUDA kernels (measured up to ~7e-3).
export const REL_TOL = device === 'cpu' ? 1e-5 : 3e-2;

// Free-running greedy ids must match the reference's wherever its top-2 margin is far above our
// measured logit error; after the first step that may legitimately differ the two runs no longer
// share a context, so comparison stops there. Returns the number of steps that agreed.
export function checkGreedy(got, want, margins, maxAbsErr, label) {
  const needed = Math.max(20 * maxAbsErr, 1e-4);
  for (let s = 0; s < want.length; s++) {
    if (got[s] === want[s]) continue;
    assert.ok(margins[s] < needed, `${label}: step ${s} chose ${got[s]}, reference ${want[s]}, margin ${margins[s]} >= ${needed}`);
    return s;
  }
  return want.length;
}

// Every position of the fixture's all_positions prompt, fed at once, against the reference rows.
export async function checkAllPositions(model, exp, st, label) {
  const V = model.config.vocabSize;
  const seq = model.createSequence();
  const all = await seq.evalAll(exp.all_positions_prompt);
  seq.dispose();
  const want = st['all_positions.logits'];
  for (let p = 0; p < want.shape[0]; p++) {
    const e = errors(all.subarray(p * V, (p + 1) * V), want.data.subarray(p * V, (p + 1) * V));
    assert.ok(e.rel < REL_TOL, `${label} all_positions row ${p}: relative error ${e.rel}`);
  }
}
