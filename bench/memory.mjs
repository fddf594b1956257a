#!/usr/bin/env node
// Peak GPU memory of one generation, for the quantization issue's targets.
//
//   node bench/memory.mjs --model DIR --label 7b-int4 --kv float|int8 --prompt P --new N
//
// Loads DIR with contextLength P + N and kvCache as given, feeds a P-token random prompt and
// generates N tokens greedily (model.complete), and prints one JSON line:
//   {impl: "qwen-native", shape, metric: "mem_generate", kv, prompt, new, alloc_bytes, smi_bytes}
// alloc_bytes: the largest weights + kvCache + kvCacheFree + workspace that model.memory()
// reported (the bytes our allocations hold; the generation's KV cache holds pages of 64 positions
// for what it has used, at most P + N rounded up to a page);
// smi_bytes: the largest nvidia-smi memory.used during the run minus its value before loading
// (adds the CUDA context and driver overhead).
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const { Model } = createRequire(import.meta.url)(path.join(here, '..', 'dist', 'index.js'));
const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    label: { type: 'string' },
    kv: { type: 'string', default: 'float' },
    prompt: { type: 'string', default: '1' },
    new: { type: 'string', default: '2047' },
  },
});
const P = Number(a.prompt), N = Number(a.new);
const out = { impl: 'qwen-native', shape: a.label, metric: 'mem_generate', kv: a.kv, prompt: P, new: N };

function smiSampler() {
  let peak = 0;
  const p = spawn('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-lms', '50'], { stdio: ['ignore', 'pipe', 'ignore'] });
  p.stdout.on('data', (b) => {
    for (const l of String(b).split('\n')) if (l.trim()) peak = Math.max(peak, Number(l) * 1024 * 1024);
  });
  p.on('error', () => {});
  return { peak: () => peak, stop: () => p.kill() };
}

const smi0 = smiSampler();
await new Promise((r) => setTimeout(r, 300));
const baseline = smi0.peak();
smi0.stop();
const smi = smiSampler();
try {
  const model = await Model.load(a.model, { device: 'cuda', contextLength: P + N, kvCache: a.kv });
  let alloc = 0;
  const sample = () => {
    const m = model.memory();
    alloc = Math.max(alloc, m.weights + m.kvCache + m.kvCacheFree + m.workspace);
  };
  const timer = setInterval(sample, 20);
  const prompt = Array.from({ length: P }, (_, i) => (i * 7919 + 13) % 150000);
  const t0 = performance.now();
  const r = await model.complete(prompt, { doSample: false, maxNewTokens: N, stop: [] });
  const secs = (performance.now() - t0) / 1000;
  clearInterval(timer);
  sample();
  await new Promise((res) => setTimeout(res, 200));
  Object.assign(out, { alloc_bytes: alloc, smi_bytes: smi.peak() - baseline, generated: r.tokens.length, seconds: +secs.toFixed(1), memory: model.memory() });
  model.dispose();
} catch (err) {
  out.error = String(err.message || err);
}
smi.stop();
console.log(JSON.stringify(out));
