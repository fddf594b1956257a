#!/usr/bin/env node
// qwen-native's side of the benchmark: decode tok/s at batch 1, prefill tok/s, peak GPU memory.
//
//   node bench/qwen_native.mjs --model /tmp/bench-ckpt/7b --label 7b [--device cuda]
//        [--ctx 128,4096] [--steps 128] [--warmup 8] [--prefill 2048] [--reps 3]
//
// Prints one JSON line per measurement on stdout (progress on stderr), each
// {impl: "qwen-native", shape, metric, value, ...}; a measurement that fails prints
// {..., error} instead and the others still run. Metrics:
// - decode_tok_s (ctx c): prefill c random ids with seq.eval, `warmup` steps (the first captures
//   the CUDA graph), then `steps` timed steps of seq.eval([argmax(logits)]). Each step hands the
//   logits (V floats) to JS and takes their argmax in JS: that is what a user's loop pays, so it
//   is timed; the argmax's own share is reported as argmax_ms.
// - decode_complete_tok_s (ctx c): model.complete(prompt, {doSample: false}) with maxNewTokens
//   16 and 16 + steps; tok/s = extra tokens / extra time. The difference cancels the prefill and
//   the new sequence's graph capture, leaving the native greedy loop's per-token cost.
// - prefill_tok_s (tokens 2048): seq.eval of 2048 ids on a fresh sequence; one warm-up, then the
//   median of `reps`. The decode prefills are reported too (tokens c, cold: first use).
// - peak_mem_bytes, kind "model.memory()": the largest weights + kvCache + kvCacheFree + workspace
//   seen (a sequence's KV cache holds pages of 64 positions for what it has used).
// - peak_mem_bytes, kind "nvidia-smi": the largest memory.used of the GPU sampled every 50 ms
//   while this process runs: whole GPU, so it adds the CUDA context and anything else resident;
//   baseline_bytes is the value before the model was loaded.
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { benchArgs, modelClass } from './common.mjs';

const { a, label, emit, log } = benchArgs('qwen-native', {
  'device-index': { type: 'string', default: '0' },
  ctx: { type: 'string', default: '128,4096' },
  steps: { type: 'string', default: '128' },
  warmup: { type: 'string', default: '8' },
  prefill: { type: 'string', default: '2048' },
  reps: { type: 'string', default: '3' },
  'context-length': { type: 'string' },
  'no-complete': { type: 'boolean', default: false },
  'smi-ms': { type: 'string', default: '50' },
  seed: { type: 'string', default: '1' },
}, '[--ctx 128,4096] [--steps N]');
const int = (name) => {
  const v = Number(a[name]);
  if (!Number.isInteger(v) || v < 0) throw new RangeError(`--${name} must be a non-negative integer, got ${a[name]}`);
  return v;
};
const ctxs = a.ctx.split(',').filter(Boolean).map(Number);
const steps = int('steps');
const warmup = int('warmup');
const prefillT = int('prefill');
const reps = Math.max(1, int('reps'));
const deviceIndex = int('device-index');
const COMPLETE_BASE = 16; // maxNewTokens of the shorter complete() run

const Model = modelClass(a.dist, log);

// Deterministic random ids (mulberry32), below the special ids and inside the vocab.
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(Number(a.seed));
let vocabLimit = 151643;
const randomIds = (n) => Int32Array.from({ length: n }, () => Math.floor(rand() * vocabLimit));

function argmax(x) {
  let best = 0;
  let bv = x[0];
  for (let i = 1; i < x.length; i++) if (x[i] > bv) { bv = x[i]; best = i; }
  return best;
}

const median = (xs) => {
  const s = [...xs].sort((p, q) => p - q);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const pct = (xs, p) => [...xs].sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
const r3 = (x) => Math.round(x * 1000) / 1000;

// Samples the GPU's memory.used (MiB) with nvidia-smi's own loop; absent on a CPU-only machine.
function startSmi() {
  const st = { peak: -1, first: -1, samples: 0, ok: false };
  let proc;
  try {
    proc = spawn('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-i', String(deviceIndex), '-lms', a['smi-ms']], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
  } catch {
    return { stop: () => st, firstSample: Promise.resolve() };
  }
  let buf = '';
  let onFirst;
  let timer;
  const firstSample = new Promise((r) => {
    timer = setTimeout(r, 3000);
    onFirst = () => { clearTimeout(timer); r(); };
  });
  proc.on('error', () => onFirst()); // no nvidia-smi here
  proc.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const v = Number(buf.slice(0, nl).trim());
      buf = buf.slice(nl + 1);
      if (!Number.isFinite(v)) continue;
      if (st.first < 0) st.first = v;
      st.peak = Math.max(st.peak, v);
      st.samples++;
      st.ok = true;
      onFirst();
    }
  });
  return { stop: () => { proc.kill(); return st; }, firstSample };
}

let memPeak = null;
function snapshotMemory(model, where) {
  const m = model.memory();
  const total = m.weights + m.kvCache + m.kvCacheFree + m.workspace;
  if (!memPeak || total > memPeak.value) memPeak = { value: total, ...m, where };
}

// Runs one measurement; a failure becomes an error line and the next measurement runs.
async function measure(rec, fn) {
  try {
    await fn();
  } catch (err) {
    const msg = String(err?.message ?? err);
    log(`${rec.metric}${rec.ctx !== undefined ? ` ctx ${rec.ctx}` : ''}${rec.tokens !== undefined ? ` tokens ${rec.tokens}` : ''} FAILED: ${msg}`);
    emit({ ...rec, error: msg });
  }
}

async function decode(model, ctx) {
  const seq = model.createSequence();
  try {
    const prompt = randomIds(ctx);
    let t = performance.now();
    let logits = await seq.eval(prompt);
    const prefillMs = performance.now() - t;
    emit({ metric: 'prefill_tok_s', tokens: ctx, value: r3(ctx / (prefillMs / 1000)), cold: true, note: 'decode prompt, first use of the sequence' });
    snapshotMemory(model, `after prefill ${ctx}`);
    let firstStepMs = 0;
    for (let i = 0; i < warmup; i++) {
      t = performance.now();
      logits = await seq.eval([argmax(logits)]);
      if (i === 0) firstStepMs = performance.now() - t;
    }
    const stepMs = [];
    let argmaxMs = 0;
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) {
      const s0 = performance.now();
      const tok = argmax(logits);
      argmaxMs += performance.now() - s0;
      logits = await seq.eval([tok]);
      stepMs.push(performance.now() - s0);
    }
    const total = performance.now() - t0;
    snapshotMemory(model, `after decode ${ctx}`);
    emit({
      metric: 'decode_tok_s', ctx, value: r3(steps / (total / 1000)), steps, warmup,
      kv_first: ctx + warmup, kv_mid: ctx + warmup + steps / 2,
      step_ms_p50: r3(median(stepMs)), step_ms_p90: r3(pct(stepMs, 0.9)), step_ms_min: r3(Math.min(...stepMs)),
      argmax_ms: r3(argmaxMs / steps), first_step_ms: r3(firstStepMs),
    });
  } finally {
    seq.dispose();
  }
}

async function decodeComplete(model, ctx) {
  const prompt = Array.from(randomIds(ctx));
  const run = async (n) => {
    const t = performance.now();
    const r = await model.complete(prompt, { doSample: false, maxNewTokens: n });
    return { ms: performance.now() - t, n: r.tokens.length };
  };
  // Best of two of each: the prefill inside varies from run to run by a few ms.
  const best = (x, y) => (x.ms <= y.ms ? x : y);
  const short = best(await run(COMPLETE_BASE), await run(COMPLETE_BASE));
  const long = best(await run(COMPLETE_BASE + steps), await run(COMPLETE_BASE + steps));
  const extra = long.n - short.n;
  if (extra <= 0) throw new Error(`complete() stopped early (${long.n} tokens): greedy hit the eos`);
  if (long.ms <= short.ms) throw new Error(`complete() timings too noisy: ${r3(short.ms)} ms for ${short.n} tokens, ${r3(long.ms)} ms for ${long.n}`);
  emit({ metric: 'decode_complete_tok_s', ctx, value: r3(extra / ((long.ms - short.ms) / 1000)), tokens: extra, short_ms: r3(short.ms), long_ms: r3(long.ms) });
}

async function prefill(model, T) {
  const ids = randomIds(T);
  const times = [];
  for (let i = 0; i <= reps; i++) { // i = 0 is the warm-up
    const seq = model.createSequence(); // allocation stays outside the timing
    try {
      const t = performance.now();
      await seq.eval(ids);
      if (i > 0) times.push(performance.now() - t);
      snapshotMemory(model, `after prefill ${T}`);
    } finally {
      seq.dispose();
    }
  }
  const med = median(times);
  emit({ metric: 'prefill_tok_s', tokens: T, value: r3(T / (med / 1000)), ms_median: r3(med), ms_all: times.map(r3), reps });
}

// What the GPU held at most, from nvidia-smi; printed once, at the end or when killed.
let smi = null;
function emitSmiPeak() {
  const s = smi?.stop();
  smi = null;
  if (s?.ok) {
    emit({ metric: 'peak_mem_bytes', kind: 'nvidia-smi', value: s.peak * 1048576, baseline_bytes: s.first * 1048576, samples: s.samples, note: 'memory.used of the whole GPU' });
  }
}
// run.sh's `timeout` sends SIGTERM first: keep the memory peak seen so far.
process.on('SIGTERM', () => {
  log('SIGTERM: stopping');
  emitSmiPeak();
  process.exit(143);
});

async function main() {
  smi = startSmi();
  await smi.firstSample;
  const maxCtx = Math.max(0, ...ctxs);
  const need = Math.max(maxCtx + Math.max(warmup + steps, COMPLETE_BASE + steps) + 1, prefillT);
  const contextLength = a['context-length'] ? int('context-length') : Math.ceil(need / 64) * 64;
  let model;
  try {
    const t = performance.now();
    try {
      model = await Model.load(a.model, { device: a.device, deviceIndex, contextLength });
    } catch (err) {
      emit({ metric: 'load_s', error: String(err?.message ?? err) });
      log(`load FAILED: ${err?.message ?? err}`);
      process.exitCode = 1;
      return;
    }
    const c = model.config;
    vocabLimit = Math.min(vocabLimit, c.vocabSize);
    emit({
      metric: 'load_s', value: r3((performance.now() - t) / 1000), device: model.device, contextLength,
      config: { type: c.modelType, H: c.hiddenSize, L: c.numLayers, n: c.numHeads, n_kv: c.numKvHeads, d: c.headDim, F: c.ffnSize, V: c.vocabSize, gptq: c.gptq },
    });
    log(`loaded on ${model.device}, contextLength ${contextLength}`);
    snapshotMemory(model, 'after load');
    // The headline numbers first, complete() (the longest part) last: a run cut short by the
    // time limit still has them.
    for (const ctx of ctxs) {
      await measure({ metric: 'decode_tok_s', ctx }, () => decode(model, ctx));
      log(`decode ctx ${ctx} done`);
    }
    if (prefillT > 0) {
      await measure({ metric: 'prefill_tok_s', tokens: prefillT }, () => prefill(model, prefillT));
      log('prefill done');
    }
    await measure({ metric: 'peak_mem_bytes', kind: 'model.memory()' }, async () => {
      snapshotMemory(model, 'end');
      emit({ metric: 'peak_mem_bytes', kind: 'model.memory()', contextLength, ...memPeak });
    });
    if (!a['no-complete']) {
      for (const ctx of ctxs) await measure({ metric: 'decode_complete_tok_s', ctx }, () => decodeComplete(model, ctx));
      log('complete() decode done');
    }
  } finally {
    try {
      model?.dispose();
    } catch (err) {
      log(`dispose FAILED: ${err?.message ?? err}`);
    }
    emitSmiPeak();
  }
}

main().catch((err) => {
  log(`FAILED: ${err?.stack ?? err}`);
  emit({ metric: 'run', error: String(err?.message ?? err) });
  process.exitCode = 1;
});
