// Quantized models: GPTQ int4/int8 checkpoints (SPEC 4) reproduce the original's logits, and the
// int8 KV cache (SPEC 5, our round-to-nearest per token and head) is at least as close to the
// fp32 cache as the original's int8 scheme is.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Model } from '../dist/index.mjs';
import { device, errors, fixture, readJson, readSafetensors, REL_TOL } from './helpers/fixtures.mjs';

// The GPTQ fixtures store dequantizable weights; the original dequantizes them to fp32 for its
// reference, and so do we on the CPU, so the fp32 tolerance applies (see fixtures.test.mjs).

async function teacherForce(model, prompt, ids, steps) {
  const seq = model.createSequence();
  const out = [await seq.eval(prompt)];
  for (let s = 1; s < steps; s++) out.push(await seq.eval([ids[s - 1]]));
  seq.dispose();
  return out;
}

for (const name of ['tiny-gptq-int4', 'tiny-gptq-int4-actorder', 'tiny-gptq-int8']) {
  test(`${name}: teacher-forced logits match the original (${device})`, async (t) => {
    const model = await Model.load(fixture(name), { device, contextLength: 256 });
    t.after(() => model.dispose());
    assert.ok(model.config.gptq, 'config.gptq is reported');
    const exp = readJson(fixture(`${name}/expected.json`));
    const st = readSafetensors(fixture(`${name}/expected.safetensors`));
    const V = model.config.vocabSize;
    for (const [ci, c] of exp.cases.entries()) {
      const want = st[`case${ci}.logits`];
      const got = await teacherForce(model, c.prompt, c.greedy, want.shape[0]);
      let worst = 0;
      got.forEach((l, s) => {
        const e = errors(l, want.data.subarray(s * V, (s + 1) * V));
        worst = Math.max(worst, e.rel);
        assert.ok(e.rel < REL_TOL, `${name} case${ci} step ${s}: relative error ${e.rel}`);
      });
      const r = await model.complete(c.prompt, { doSample: false, maxNewTokens: c.greedy.length });
      assert.deepEqual(r.tokens, c.greedy, `${name} case${ci}: greedy ids`);
      t.diagnostic(`${name} case${ci}: max rel ${worst.toExponential(2)}`);
    }
  });
}

test(`int8 KV cache: no farther from the fp32 cache than the original's int8 cache (${device})`, async (t) => {
  const exp = readJson(fixture('tiny-fp32-kvcache-int8/expected.json'));
  const orig8 = readSafetensors(fixture('tiny-fp32-kvcache-int8/expected.safetensors'));
  const orig32 = readSafetensors(fixture('tiny-fp32/expected.safetensors'));
  const greedy32 = readJson(fixture('tiny-fp32/expected.json')).cases;
  const fp = await Model.load(fixture('tiny-fp32'), { device, contextLength: 256, kvCache: 'float' });
  const q8 = await Model.load(fixture('tiny-fp32'), { device, contextLength: 256, kvCache: 'int8' });
  t.after(() => { fp.dispose(); q8.dispose(); });
  const V = fp.config.vocabSize;
  for (const [ci, c] of exp.cases.entries()) {
    // The original's two runs share a context only until their greedy ids part; compare there.
    let steps = 0;
    while (steps < c.greedy.length && c.greedy[steps] === greedy32[ci].greedy[steps]) steps++;
    steps = Math.min(steps + 1, c.greedy.length);
    const a = await teacherForce(fp, c.prompt, c.greedy, steps);
    const b = await teacherForce(q8, c.prompt, c.greedy, steps);
    let ours = 0, theirs = 0;
    for (let s = 0; s < steps; s++) {
      ours += errors(b[s], a[s]).rel ** 2;
      theirs += errors(orig8[`case${ci}.logits`].data.subarray(s * V, (s + 1) * V), orig32[`case${ci}.logits`].data.subarray(s * V, (s + 1) * V)).rel ** 2;
    }
    ours = Math.sqrt(ours / steps);
    theirs = Math.sqrt(theirs / steps);
    t.diagnostic(`case${ci} (${steps} steps): our int8 KV rel error ${ours.toExponential(2)}, original's ${theirs.toExponential(2)}`);
    assert.ok(ours > 0, 'the int8 cache must actually quantize');
    assert.ok(ours <= theirs, `case${ci}: our int8 error ${ours} > the original's ${theirs}`);
  }
  // The 'float' cache is fp32 on the CPU and 16-bit on CUDA; int8 adds 4 floats per (token, head)
  // for scales and zeros (d = 64 here): ~0.28x of fp32, ~0.56x of 16-bit.
  const s8 = q8.createSequence(), s32 = fp.createSequence();
  await s8.eval([1]); // a sequence's cache is allocated by its first job
  await s32.eval([1]);
  const ratio = device === 'cpu' ? 0.3 : 0.6;
  assert.ok(q8.memory().kvCache < ratio * fp.memory().kvCache, `int8 cache bytes ${q8.memory().kvCache} vs float ${fp.memory().kvCache}`);
  s8.dispose(); s32.dispose();
});

test(`use_cache_quantization in config.json turns the int8 KV cache on by default (${device})`, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen-kv8-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const f of ['config.json', 'generation_config.json']) fs.copyFileSync(fixture(`tiny-fp32-kvcache-int8/${f}`), path.join(dir, f));
  fs.copyFileSync(fixture('tiny-fp32/model.safetensors'), path.join(dir, 'model.safetensors'));
  const byConfig = await Model.load(dir, { device, contextLength: 128 });
  const explicit = await Model.load(fixture('tiny-fp32'), { device, contextLength: 128, kvCache: 'int8' });
  const float = await Model.load(dir, { device, contextLength: 128, kvCache: 'float' });
  t.after(() => { byConfig.dispose(); explicit.dispose(); float.dispose(); });
  const prompt = readJson(fixture('tiny-fp32/expected.json')).cases[1].prompt;
  const a = await byConfig.createSequence().eval(prompt);
  const b = await explicit.createSequence().eval(prompt);
  const c = await float.createSequence().eval(prompt);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});
