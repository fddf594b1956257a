#!/usr/bin/env node
// Sampled decoding with the token chosen where the logits are (CUDA: sample_rows) against the
// host sampler (QWEN_DEVICE_ARGMAX=0 copies the logits and samples in C++ on the host):
//
//   node bench/sampling.mjs --model DIR [--device cuda] [--tokens 200]
//
// Runs model.complete() with Qwen's default sampling (temperature 0.7, top_p 0.8, repetition
// penalty 1.1), with top_k 40, and greedy, and prints tok/s and ms per token for each, one JSON
// line per row. Run it twice, with and without QWEN_DEVICE_ARGMAX=0, to compare: the difference
// per token is the cost of the logits copy and the host sampler. On a checkpoint with a tiny
// hidden size (the chat-tiny fixture has the full 151936-id vocabulary) the forward pass is
// negligible and the rows are that cost alone.
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const { Model } = createRequire(import.meta.url)(path.join(here, '..', 'dist', 'index.js'));
const { values: a } = parseArgs({
  options: { model: { type: 'string' }, device: { type: 'string', default: 'cuda' }, tokens: { type: 'string', default: '200' } },
});
if (!a.model) {
  console.error('usage: node bench/sampling.mjs --model DIR [--device cuda] [--tokens N]');
  process.exit(2);
}
const N = Number(a.tokens);
const model = await Model.load(a.model, { device: a.device });
const ids = [1, 2, 3, 4, 5, 6, 7, 8];
const rows = [
  ['qwen defaults (t 0.7, top_p 0.8, penalty 1.1)', { doSample: true, temperature: 0.7, topP: 0.8, topK: 0, repetitionPenalty: 1.1 }],
  ['top_k 40', { doSample: true, temperature: 1, topK: 40, topP: 1, repetitionPenalty: 1 }],
  ['greedy', { doSample: false, repetitionPenalty: 1 }],
];
for (const [name, o] of rows) {
  await model.complete(ids, { ...o, seed: 1, maxNewTokens: 8, stop: [] });
  const t0 = performance.now();
  const r = await model.complete(ids, { ...o, seed: 2, maxNewTokens: N, stop: [] });
  const ms = performance.now() - t0;
  console.log(JSON.stringify({ sampling: name, host_sampler: process.env.QWEN_DEVICE_ARGMAX === '0', device: a.device,
    tokens: r.tokens.length, tok_s: +(r.tokens.length / ms * 1000).toFixed(1), ms_per_token: +(ms / r.tokens.length).toFixed(3) }));
}
model.dispose();
