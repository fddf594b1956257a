// The model reproduces the original Qwen code's outputs on the tiny fixtures (computed by
// modeling_qwen.py in float32): teacher-forced logits of every step, every position of a prompt,
// free-running greedy ids, and the chat fixture's context, replies and logits.
//
// Tolerance. On the CPU we compute in fp32 like the reference, so the only differences are
// summation order and libm: relative error per step |a-b|/|b| lands near 5e-7; we require
// < 1e-5 (20x headroom, and still 10x under the 1e-4). On CUDA (QWEN_DEVICE=cuda)
// activations pass through bf16 between kernels (8 mantissa bits: 2^-9 relative rounding per
// value, compounding over ~10 roundings per layer), so we require < 3e-2.
import test from 'node:test';
import assert from 'node:assert/strict';

import { Model, Tokenizer } from '../dist/index.mjs';
import { argmax, checkAllPositions, checkGreedy, device, errors, fixture, readJson, readSafetensors, REL_TOL } from './helpers/fixtures.mjs';

for (const name of ['tiny-fp32', 'tiny-bf16', 'tiny-fp16']) {
  test(`${name}: teacher-forced logits and greedy ids match the original (${device})`, async (t) => {
    const model = await Model.load(fixture(name), { device, contextLength: 256 });
    t.after(() => model.dispose());
    const exp = readJson(fixture(`${name}/expected.json`));
    const st = readSafetensors(fixture(`${name}/expected.safetensors`));
    const V = model.config.vocabSize;
    for (const [ci, c] of exp.cases.entries()) {
      const want = st[`case${ci}.logits`];
      const steps = want.shape[0];
      const seq = model.createSequence();
      let logits = await seq.eval(c.prompt);
      let worstRel = 0;
      let worstAbs = 0;
      for (let s = 0; s < steps; s++) {
        const e = errors(logits, want.data.subarray(s * V, (s + 1) * V));
        worstRel = Math.max(worstRel, e.rel);
        worstAbs = Math.max(worstAbs, e.maxAbs);
        assert.ok(e.rel < REL_TOL, `${name} case${ci} step ${s}: relative error ${e.rel} >= ${REL_TOL}`);
        if (s + 1 < steps) logits = await seq.eval([c.greedy[s]]);
      }
      assert.equal(seq.length, c.prompt.length + steps - 1);
      seq.dispose();
      const r = await model.complete(c.prompt, { doSample: false, maxNewTokens: c.greedy.length });
      const agreed = checkGreedy(r.tokens, c.greedy, c.top2_margin, worstAbs, `${name} case${ci}`);
      t.diagnostic(`case${ci}: prompt ${c.prompt.length}, alpha ${c.ntk_alpha}, ${steps} steps, max rel ${worstRel.toExponential(2)}, ` +
        `max abs ${worstAbs.toExponential(2)}, greedy agrees on ${agreed}/${c.greedy.length}`);
    }
    await checkAllPositions(model, exp, st, name);
  });
}

test(`tiny-fp32: chunked prefill equals one-shot prefill (${device})`, async (t) => {
  const model = await Model.load(fixture('tiny-fp32'), { device, contextLength: 256 });
  t.after(() => model.dispose());
  const prompt = readJson(fixture('tiny-fp32/expected.json')).cases[1].prompt.slice(0, 40);
  const a = model.createSequence();
  const one = await a.eval(prompt);
  const b = model.createSequence();
  await b.eval(prompt.slice(0, 17));
  await b.eval(prompt.slice(17, 30));
  const chunked = await b.eval(prompt.slice(30));
  // Same prefill alpha: 17 tokens and 40 tokens are both <= seq_length 64, so alpha is 1 for both.
  assert.ok(errors(chunked, one).rel < REL_TOL);
  assert.deepEqual(b.tokens, prompt);
});

test(`chat-tiny-bf16: make_context, greedy replies and logits match the original (${device})`, async (t) => {
  // The fixture's qwen.tiktoken is a link into tokenizer/; load that one directly.
  const tokenizer = await Tokenizer.load(fixture('tokenizer'));
  const model = await Model.load(fixture('chat-tiny-bf16'), { device, contextLength: 512, tokenizer });
  t.after(() => model.dispose());
  const exp = readJson(fixture('chat-tiny-bf16/expected.json'));
  const st = readSafetensors(fixture('chat-tiny-bf16/expected.safetensors'));
  const V = model.config.vocabSize;
  for (const [i, c] of exp.conversations.entries()) {
    for (const [label, penalty] of [['greedy', 1.0], ['greedy_rep1.1', 1.1]]) {
      const want = c[label];
      // Teacher-forced: the top-16 logits of every step.
      const seq = model.createSequence();
      let logits = await seq.eval(c.context_tokens);
      const ids = st[`conv${i}.${label}.top16_ids`];
      const vals = st[`conv${i}.${label}.top16_values`];
      let worstAbs = 0;
      for (let s = 0; s < ids.shape[0]; s++) {
        const ours = Array.from({ length: 16 }, (_, j) => logits[ids.data[s * 16 + j]]);
        const e = errors(ours, vals.data.subarray(s * 16, s * 16 + 16));
        worstAbs = Math.max(worstAbs, e.maxAbs);
        assert.ok(e.rel < REL_TOL, `conv${i} ${label} step ${s}: top-16 relative error ${e.rel}`);
        if (i === 0 && label === 'greedy' && s === 0)
          assert.ok(errors(logits, st['conv0.greedy.step0_logits'].data).rel < REL_TOL, 'conv0 step0 full logits');
        if (s + 1 < ids.shape[0]) logits = await seq.eval([want.tokens[s]]);
      }
      seq.dispose();
      // Free-running through the public chat API.
      const r = await model.chat(c.query, {
        history: c.history,
        system: c.system,
        maxWindowSize: c.max_window_size,
        doSample: false,
        repetitionPenalty: penalty,
        maxNewTokens: want.tokens.length,
      });
      assert.equal(r.usage.promptTokens, c.context_tokens.length, `conv${i}: context length`);
      const agreed = checkGreedy(r.tokens, want.tokens, want.top2_margin, worstAbs, `conv${i} ${label}`);
      if (agreed === want.tokens.length) {
        // The original's decode_tokens drops the last token when no stop token came (a quirk we
        // do not copy: lib/chat.ts decodeReply); compare against the same ids without it.
        const stopped = [151645, 151644].includes(want.tokens.at(-1));
        const ids2 = stopped ? want.tokens : [...want.tokens.slice(0, -1), 151643];
        assert.equal(r.tokens.length, want.tokens.length);
        const { decodeReply } = await import('../dist/index.mjs');
        assert.equal(decodeReply(tokenizer, ids2), want.response, `conv${i} ${label}: reply text`);
        assert.equal(r.text, decodeReply(tokenizer, r.tokens));
      }
      t.diagnostic(`conv${i} ${label}: top-16 max abs err ${worstAbs.toExponential(2)}, greedy agrees on ${agreed}/${want.tokens.length}`);
    }
  }
});

test(`greedy decoding is argmax of the logits the sequence returns (${device})`, async (t) => {
  const model = await Model.load(fixture('tiny-bf16'), { device, contextLength: 128 });
  t.after(() => model.dispose());
  const prompt = [5, 17, 400, 3, 999, 0, 42];
  const r = await model.complete(prompt, { doSample: false, maxNewTokens: 6 });
  const seq = model.createSequence();
  let logits = await seq.eval(prompt);
  for (const tok of r.tokens) {
    assert.equal(tok, argmax(logits));
    logits = await seq.eval([tok]);
  }
});
