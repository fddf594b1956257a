#!/usr/bin/env node
// Serving throughput: C concurrent greedy generations through the continuous-batching engine
// (model.generate streams, as the server runs them), for each C in --concurrency.
//
//   node bench/concurrent.mjs --model /tmp/bench-ckpt/7b --label 7b [--concurrency 1,4,16,64]
//        [--prompt 128] [--tokens 128] [--device cuda]
//
// Each request gets its own random prompt of --prompt ids and generates --tokens tokens
// (maxNewTokens; a random-weight model may hit its eos earlier: the tokens actually generated
// are counted). All C start together; throughput = all generated tokens / wall time from the
// first request to the last token. Per request: time to first token (the prompt's prefill plus
// waiting for a batch slot) and the mean inter-token latency after it. A warm-up round at each C
// first (4 tokens) captures the CUDA graph of each batch size, so the timed round measures the
// steady state. The model is loaded with maxBatch = the largest C (the engine's default is 16)
// and a context of prompt + tokens + 8. Prints one JSON line per C:
// {impl: "qwen-native", shape, metric: "batch_tok_s", concurrency, value, ttft_ms, itl_ms, tokens, wall_s}.
import { performance } from 'node:perf_hooks';
import { benchArgs, modelClass } from './common.mjs';

const { a, label: shape, emit, log } = benchArgs('concurrent', {
  concurrency: { type: 'string', default: '1,4,16,64' },
  prompt: { type: 'string', default: '128' },
  tokens: { type: 'string', default: '128' },
}, '[--concurrency 1,4,16,64] [--prompt P] [--tokens N]');
const levels = a.concurrency.split(',').map(Number);
const P = Number(a.prompt), N = Number(a.tokens);
for (const v of [...levels, P, N])
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`bad number in the arguments: ${v}`);

const Model = modelClass(a.dist, log);
let seed = 12345;
let vocab = 150000; // the model's, once loaded (random prompt ids stay below it and below the special ids)
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) % vocab);

async function one(model, tokens) {
  const ids = Array.from({ length: P }, rand);
  const t0 = performance.now();
  const times = [];
  const it = model.generate(ids, { doSample: false, maxNewTokens: tokens });
  for await (const ch of it) if (ch.token !== undefined) times.push(performance.now());
  return { t0, times };
}

async function round(model, C, tokens) {
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: C }, () => one(model, tokens)));
  const end = Math.max(...rs.map((r) => r.times.at(-1) ?? r.t0));
  return { rs, wall: (end - t0) / 1000 };
}

const maxC = Math.max(...levels);
const t = performance.now();
const model = await Model.load(a.model, { device: a.device, contextLength: P + N + 8, maxBatch: maxC, maxQueue: maxC });
vocab = Math.min(model.config.vocabSize, 150000);
log(`loaded in ${((performance.now() - t) / 1000).toFixed(1)} s (${model.device ?? a.device})`);
try {
  for (const C of levels) {
    try {
      await round(model, C, 4);
      const { rs, wall } = await round(model, C, N);
      const tokens = rs.reduce((s, r) => s + r.times.length, 0);
      const ttft = rs.map((r) => r.times[0] - r.t0);
      const itl = rs.filter((r) => r.times.length > 1).map((r) => (r.times.at(-1) - r.times[0]) / (r.times.length - 1));
      const mean = (v) => (v.length ? v.reduce((s, x) => s + x, 0) / v.length : null);
      const r3 = (v) => (v === null ? null : Math.round(v * 1000) / 1000);
      emit({ metric: 'batch_tok_s', concurrency: C, value: r3(tokens / wall), ttft_ms: r3(mean(ttft)), itl_ms: r3(mean(itl)), tokens, wall_s: r3(wall), prompt: P });
      log(`C=${C}: ${(tokens / wall).toFixed(1)} tok/s, ITL ${mean(itl)?.toFixed(2)} ms`);
    } catch (e) {
      emit({ metric: 'batch_tok_s', concurrency: C, error: String(e?.message ?? e) });
    }
  }
} finally {
  model.dispose();
}
