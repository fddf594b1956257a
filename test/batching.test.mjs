// Continuous batching (core/engine.h): concurrent generate / complete calls on one model share
// forward passes, and each gives exactly the tokens it gives run alone: the CPU backend computes
// every sequence of a batch as it would alone (bit for bit), and each samples with its own
// options and RNG. Also: the scheduler really batches (its counters), its bounded queue refuses
// what does not fit, and aborts / dispose reach batched generations.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Model, AbortError } from '../dist/index.mjs';
import { fixture } from './helpers/fixtures.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
// Bit-identical batching is the CPU backend's property. CUDA's batched step sums in another order
// than its one-sequence step: it is checked against the CPU backend per sequence within a bf16
// tolerance in test/cuda (test_batched_decode), and through the engine by test/logprobs.test.mjs.
const device = 'cpu';

/** A deterministic prompt of `n` ids below `vocab`. */
function prompt(n, salt, vocab = 1000) {
  return Array.from({ length: n }, (_, i) => (i * 37 + salt * 101 + 7) % vocab);
}

/** Runs a job to its end; `abortAfter` aborts it once that many tokens have streamed. */
async function run(model, job) {
  const { ids, opts, abortAfter } = job;
  if (abortAfter === undefined) {
    const r = await model.complete(ids, opts);
    return { tokens: r.tokens, finishReason: r.finishReason };
  }
  const ctl = new AbortController();
  const tokens = [];
  try {
    for await (const c of model.generate(ids, { ...opts, signal: ctl.signal })) {
      tokens.push(c.token);
      if (tokens.length === abortAfter) ctl.abort();
    }
  } catch (err) {
    if (!(err instanceof AbortError)) throw err;
    return { tokens, finishReason: 'abort' };
  }
  return { tokens, finishReason: 'not aborted' };
}

/** Six generations that differ in everything a batch must keep apart. */
function jobs(vocab, { longPrompt }) {
  const none = { stop: [] };
  return [
    { name: 'greedy', ids: prompt(10, 1, vocab), opts: { ...none, temperature: 0, maxNewTokens: 40 } },
    { name: 'sampled t=0.7 top-p 0.9', ids: prompt(31, 2, vocab), opts: { ...none, doSample: true, temperature: 0.7, topP: 0.9, seed: 11, maxNewTokens: 40 } },
    // Longer than one prefill chunk (512): fed in chunks, alone and in the batch, with the NTK
    // alpha of the whole prompt (tiny-fp32's seq_length is 64).
    { name: 'long prompt, t=1.3 top-k 50', ids: prompt(longPrompt, 3, vocab), opts: { ...none, doSample: true, temperature: 1.3, topK: 50, seed: 12, maxNewTokens: 30 } },
    { name: 'repetition penalty', ids: prompt(5, 4, vocab), opts: { ...none, doSample: true, temperature: 1.0, repetitionPenalty: 1.3, seed: 13, maxNewTokens: 50 } },
    { name: 'stop sequence', ids: prompt(17, 5, vocab), opts: { ...none, doSample: true, temperature: 0.9, seed: 14, maxNewTokens: 60 } },
    { name: 'aborted', ids: prompt(23, 6, vocab), opts: { ...none, doSample: true, temperature: 1.1, topP: 0.95, seed: 15, maxNewTokens: 200 }, abortAfter: 12 },
  ];
}

const MODELS = [
  // v1: dynamic NTK + logn (seq_length 64), fp32 KV cache
  { name: 'tiny-fp32', dir: fixture('tiny-fp32'), contextLength: 1024, longPrompt: 600 },
  // v1 with the int8 KV cache
  { name: 'tiny-fp32, int8 KV cache', dir: fixture('tiny-fp32'), kvCache: 'int8', contextLength: 1024, longPrompt: 600 },
  // GPTQ int4 linears
  { name: 'tiny-gptq-int4', dir: fixture('tiny-gptq-int4'), contextLength: 1024, longPrompt: 530 },
  // qwen3: GQA, q/k norms
  { name: 'tiny-qwen3-untied', dir: path.join(here, 'fixtures-qwen2', 'tiny-qwen3-untied'), contextLength: 1024, longPrompt: 700 },
];

for (const m of MODELS) {
  describe(`batched generation gives the tokens of each run alone: ${m.name}`, () => {
    let model;
    before(async () => {
      model = await Model.load(m.dir, { device, contextLength: m.contextLength, threads: 2, kvCache: m.kvCache ?? 'auto' });
    });
    after(() => model?.dispose());

    test('6 concurrent generations with different options, prompts, a stop sequence and an abort', async (t) => {
      const vocab = model.config.vocabSize;
      const list = jobs(Math.min(vocab, 1000), { longPrompt: m.longPrompt });
      // The stop-sequence job stops on two ids its free run produces at steps 9-10.
      const stopJob = list.find((j) => j.name === 'stop sequence');
      const free = await run(model, stopJob);
      stopJob.opts = { ...stopJob.opts, stop: [free.tokens.slice(9, 11)] };

      const alone = [];
      for (const j of list) alone.push(await run(model, j));
      const s0 = model.batchStats();
      const together = await Promise.all(list.map((j) => run(model, j)));
      const s1 = model.batchStats();

      list.forEach((j, i) => {
        const a = alone[i], b = together[i];
        if (j.abortAfter !== undefined) {
          // The abort lands between steps: at least abortAfter tokens, all of them the alone run's.
          assert.equal(a.finishReason, 'abort');
          assert.equal(b.finishReason, 'abort', j.name);
          assert.ok(b.tokens.length >= j.abortAfter && b.tokens.length < 200, `${j.name}: ${b.tokens.length} tokens`);
          // (Either run may have gone on longer before its abort landed: compare what both made.)
          const k = Math.min(a.tokens.length, b.tokens.length);
          assert.deepEqual(b.tokens.slice(0, k), a.tokens.slice(0, k), j.name);
          return;
        }
        assert.deepEqual(b.tokens, a.tokens, `${j.name}: batched tokens differ from the run alone`);
        assert.equal(b.finishReason, a.finishReason, j.name);
      });
      const stopIdx = list.indexOf(stopJob);
      assert.equal(alone[stopIdx].finishReason, 'stop');
      assert.ok(alone[stopIdx].tokens.length <= 11);
      // They did run together.
      const steps = s1.steps - s0.steps, items = s1.items - s0.items;
      t.diagnostic(`${steps} steps, ${items} sequence-steps (mean batch ${(items / steps).toFixed(2)}), max ${s1.maxItems}`);
      assert.ok(s1.maxItems >= 5, `largest batch ${s1.maxItems}`);
    });
  });
}

describe('the scheduler', () => {
  let model;
  before(async () => {
    model = await Model.load(fixture('tiny-fp32'), { device, contextLength: 1024, threads: 2 });
  });
  after(() => model?.dispose());

  test('a KV cache holds pages of 64 positions, added as the sequence grows', async () => {
    // Bytes of one position of this model's float cache (fp32 on the CPU): 2 (K, V) x layers x heads x head_dim x 4.
    const perPos = 2 * 2 * 2 * 64 * 4;
    const kv = () => model.memory().kvCache;
    const seq = model.createSequence();
    await seq.eval(prompt(4, 9));
    assert.equal(kv(), perPos * 64, 'a sequence starts with one page of 64 positions');
    await seq.eval(prompt(60, 5));
    assert.equal(kv(), perPos * 64, 'still within the page');
    await seq.eval(prompt(6, 2)); // 70 positions: a second page, not the whole contextLength (1024)
    assert.equal(kv(), perPos * 128);
    seq.dispose();
    assert.equal(kv(), 0);
    // A generation's cache: limit prompt + maxNewTokens (310 here), pages for the prompt and 128
    // new tokens (10 + 128: 3 pages), then one more page each time the reply needs it (5 pages).
    const seen = new Set();
    const tokens = [];
    for await (const c of model.generate(prompt(10, 3), { stop: [], temperature: 0, maxNewTokens: 300 })) {
      seen.add(kv());
      tokens.push(c.token);
    }
    const sizes = [...seen].map((b) => b / perPos).sort((a, b) => a - b);
    assert.deepEqual(sizes, [192, 256, 320], `sizes seen: ${sizes}`);
    assert.equal(kv(), 0, 'freed at the end');
    // Its tokens are those of a greedy eval loop, whose cache grew at other points (a page at a time from 64).
    const s2 = model.createSequence();
    let logits = await s2.eval(prompt(10, 3));
    const ref = [];
    for (let k = 0; k < 300; k++) {
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      ref.push(best);
      if (k < 299) logits = await s2.eval([best]);
    }
    s2.dispose();
    assert.deepEqual(tokens, ref);
  });

  test('4 concurrent generations share forward passes (batchStats)', async (t) => {
    const N = 64;
    const opts = { stop: [], temperature: 0, maxNewTokens: N };
    const s0 = model.batchStats();
    const t0 = performance.now();
    await model.complete(prompt(8, 1), opts);
    const one = performance.now() - t0;
    const s1 = model.batchStats();
    assert.equal(s1.steps - s0.steps, N, 'alone: one prefill + N-1 decode steps');
    assert.equal(s1.items - s0.items, N);
    const t1 = performance.now();
    const rs = await Promise.all([1, 2, 3, 4].map((k) => model.complete(prompt(8, k), opts)));
    const four = performance.now() - t1;
    const s2 = model.batchStats();
    for (const r of rs) assert.equal(r.tokens.length, N);
    const steps = s2.steps - s1.steps, items = s2.items - s1.items;
    t.diagnostic(`alone ${one.toFixed(0)} ms; 4 together ${four.toFixed(0)} ms in ${steps} steps (${items} sequence-steps)`);
    assert.equal(items, 4 * N, 'every sequence-step ran once');
    // One at a time would take 4N steps; together they share all but the first few.
    assert.ok(steps <= N + 4, `${steps} steps for 4 x ${N} tokens`);
    assert.equal(s2.maxItems >= 4, true);
    assert.equal(s2.requests - s0.requests, 5);
  });

  test('a prompt longer than a prefill chunk generates as one whole pass would (the NTK alpha of the whole prompt)', async () => {
    // 600 ids > seq_length 64: alpha 31 from the whole prompt (its first 512-id chunk alone would give 15).
    const ids = prompt(600, 8);
    const N = 12;
    const r = await model.complete(ids, { stop: [], temperature: 0, maxNewTokens: N });
    const s = model.createSequence();
    const want = [];
    let logits = await s.eval(ids);
    for (let i = 0; i < N; i++) {
      let best = 0;
      for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
      want.push(best);
      if (i < N - 1) logits = await s.eval([best]);
    }
    s.dispose();
    assert.deepEqual(r.tokens, want);
  });

  test('options maxBatch and maxQueue are checked', async () => {
    await assert.rejects(Model.load(fixture('tiny-fp32'), { device, maxBatch: 0 }), /option maxBatch must be an integer in \[1/);
    await assert.rejects(Model.load(fixture('tiny-fp32'), { device, maxQueue: -1 }), /option maxQueue must be an integer in \[0/);
    await assert.rejects(Model.load(fixture('tiny-fp32'), { device, maxQueue: 1.5 }), /option maxQueue/);
  });

  test('a sequence can start its next generation from the previous one\'s done event', async () => {
    // The native protocol directly (lib/model.ts uses a fresh sequence per run): the cleanup of a
    // finished generation must not abort the next one on the same sequence.
    const m = await Model.load(fixture('tiny-fp32'), { device, contextLength: 256 });
    try {
      const seq = m.createSequence();
      const nseq = seq.native;
      const opts = { maxNewTokens: 8, doSample: false, stopSequences: [] };
      const run = (ids) =>
        new Promise((resolve, reject) => {
          const toks = [];
          nseq.generate(Int32Array.from(ids), opts, (kind, a, b) => {
            if (kind === 'token') toks.push(a);
            else if (a) reject(a);
            else resolve({ toks, reason: b });
          });
        });
      const first = await run(prompt(10, 1));
      assert.equal(first.reason, 'length');
      // Started in the continuation of the done event, before the first job's cleanup has run.
      const second = await run([first.toks.at(-1)]);
      assert.equal(second.reason, 'length', 'the second generation was aborted by the first one\'s cleanup');
      assert.equal(second.toks.length, 8);
      seq.dispose();
    } finally {
      m.dispose();
    }
  });

  test('a full queue refuses a generation with a clear error; the others are unaffected', async () => {
    const m = await Model.load(fixture('tiny-fp32'), { device, contextLength: 512, threads: 2, maxBatch: 1, maxQueue: 1 });
    try {
      const opts = { stop: [], temperature: 0, maxNewTokens: 300 };
      const alone = await m.complete(prompt(9, 1), { ...opts, maxNewTokens: 5 });
      // One runs, one waits: a third does not fit.
      const a = m.complete(prompt(8, 1), opts);
      const b = m.complete(prompt(8, 2), opts);
      await assert.rejects(m.complete(prompt(8, 3), opts), { name: 'QueueFullError', message: /queue is full/ });
      const it = m.generate(prompt(8, 4), opts);
      await assert.rejects(it.next(), /queue is full/);
      const [ra, rb] = await Promise.all([a, b]);
      assert.equal(ra.tokens.length, 300);
      assert.equal(rb.tokens.length, 300);
      // Room again, and the model works as before.
      const again = await m.complete(prompt(9, 1), { ...opts, maxNewTokens: 5 });
      assert.deepEqual(again.tokens, alone.tokens);
      assert.ok(m.batchStats().maxItems === 1);
    } finally {
      m.dispose();
    }
  });

  test('a generation waiting for a place in the batch can be aborted', async () => {
    const m = await Model.load(fixture('tiny-fp32'), { device, contextLength: 512, threads: 2, maxBatch: 1 });
    try {
      const opts = { stop: [], temperature: 0, maxNewTokens: 400 };
      let firstDone = false;
      const a = m.complete(prompt(8, 1), opts).then((r) => ((firstDone = true), r));
      const ctl = new AbortController();
      const b = m.complete(prompt(8, 2), { ...opts, signal: ctl.signal });
      setTimeout(() => ctl.abort(), 5);
      await assert.rejects(b, (err) => err instanceof AbortError && err.partial.tokens.length === 0);
      assert.equal(firstDone, false, 'the waiting one ended before the running one');
      assert.equal((await a).tokens.length, 400);
    } finally {
      m.dispose();
    }
  });

  test('dispose() during batched generations aborts them all', async () => {
    const m = await Model.load(fixture('tiny-fp32'), { device, contextLength: 512, threads: 2 });
    const opts = { stop: [], temperature: 0, maxNewTokens: 400 };
    const runs = [1, 2, 3].map((k) => m.complete(prompt(8, k), opts));
    let seen = 0;
    const it = m.generate(prompt(8, 9), opts);
    const streamed = (async () => {
      for await (const _ of it) if (++seen === 5) m.dispose();
    })();
    const results = await Promise.allSettled([...runs, streamed]);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.reason instanceof AbortError || /disposed/.test(r.reason.message), String(r.reason));
    }
  });

  test('an eval on another sequence runs between batched steps and gives the same logits', async () => {
    const s = model.createSequence();
    const ref = await s.eval(prompt(20, 5));
    s.dispose();
    const gens = [1, 2, 3].map((k) => model.complete(prompt(8, k), { stop: [], temperature: 0, maxNewTokens: 100 }));
    const s2 = model.createSequence();
    const logits = await s2.eval(prompt(20, 5));
    s2.dispose();
    await Promise.all(gens);
    assert.deepEqual(Array.from(logits), Array.from(ref));
  });
});
