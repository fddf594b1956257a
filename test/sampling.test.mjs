// Sampling follows Hugging Face's semantics (SPEC 8): the empirical distribution of the first
// generated token matches the distribution computed here, in float64, from the same logits
// (repetition penalty -> temperature -> top-k -> top-p -> softmax), by a chi-square test; ids
// the filters remove never appear; a seed fixes the tokens.
import test from 'node:test';
import assert from 'node:assert/strict';

import { Model } from '../dist/index.mjs';
import { device, fixture } from './helpers/fixtures.mjs';

const PROMPT = [20, 423, 222, 203, 480, 475, 22, 962, 327, 431];

function expectedDistribution(logits, { temperature = 1, topK = 0, topP = 1, repetitionPenalty = 1 }, history) {
  const l = Array.from(logits, Number);
  if (repetitionPenalty !== 1)
    for (const id of new Set(history)) l[id] = l[id] < 0 ? l[id] * repetitionPenalty : l[id] / repetitionPenalty;
  for (let i = 0; i < l.length; i++) l[i] /= temperature;
  let order = l.map((v, i) => i).sort((a, b) => l[b] - l[a]);
  if (topK > 0) {
    const kth = l[order[topK - 1]];
    order = order.filter((i) => l[i] >= kth);
  }
  const mx = l[order[0]];
  let p = order.map((i) => Math.exp(l[i] - mx));
  let sum = p.reduce((a, b) => a + b, 0);
  p = p.map((x) => x / sum);
  if (topP < 1) {
    // Drop the least likely tokens while their cumulative mass stays <= 1 - topP; keep one.
    let cum = 0;
    let n = order.length;
    while (n > 1 && cum + p[n - 1] <= 1 - topP) cum += p[--n];
    order = order.slice(0, n);
    p = p.slice(0, n);
    sum = p.reduce((a, b) => a + b, 0);
    p = p.map((x) => x / sum);
  }
  const dist = new Map();
  order.forEach((id, j) => dist.set(id, p[j]));
  return dist;
}

// Upper critical value of chi-square with k degrees of freedom at significance 1e-4
// (Wilson-Hilferty approximation; z = 3.719).
function chiSquareCritical(k) {
  const z = 3.719;
  return k * Math.pow(1 - 2 / (9 * k) + z * Math.sqrt(2 / (9 * k)), 3);
}

function chiSquare(counts, dist, n) {
  // Bins with an expected count of at least 5; the rest pooled into one bin.
  let stat = 0, bins = 0, poolObs = 0, poolExp = 0;
  for (const [id, p] of dist) {
    const e = p * n, o = counts.get(id) ?? 0;
    if (e >= 5) {
      stat += (o - e) ** 2 / e;
      bins++;
    } else {
      poolObs += o;
      poolExp += e;
    }
  }
  if (poolExp >= 5) {
    stat += (poolObs - poolExp) ** 2 / poolExp;
    bins++;
  }
  return { stat, dof: bins - 1 };
}

// Every option spelled out: the fixture's generation_config.json would otherwise supply top_p 0.8.
const CONFIGS = [
  { label: 'temperature 0.7', opts: { temperature: 0.7, topK: 0, topP: 1, repetitionPenalty: 1 } },
  { label: 'top-k 12', opts: { temperature: 0.5, topK: 12, topP: 1, repetitionPenalty: 1 } },
  { label: 'top-p 0.6', opts: { temperature: 0.4, topK: 0, topP: 0.6, repetitionPenalty: 1 } },
  // Keeps hundreds of ids: exercises the sampler's growing partial sort past its first 64.
  { label: 'top-p 0.95 (wide)', opts: { temperature: 1.5, topK: 0, topP: 0.95, repetitionPenalty: 1 } },
  { label: 'repetition penalty 3 + top-k 40', opts: { temperature: 0.5, topK: 40, topP: 1, repetitionPenalty: 3 } },
];

test(`sampled first tokens follow the HF-semantics distribution (${device})`, async (t) => {
  const model = await Model.load(fixture('tiny-fp32'), { device, contextLength: 64 });
  t.after(() => model.dispose());
  const logits = await model.createSequence().eval(PROMPT);
  const N = 1500;
  for (const { label, opts } of CONFIGS) {
    const dist = expectedDistribution(logits, opts, PROMPT);
    const counts = new Map();
    for (let i = 0; i < N; i++) {
      const r = await model.complete(PROMPT, { ...opts, doSample: true, seed: 1000 + i, maxNewTokens: 1 });
      const id = r.tokens[0];
      assert.ok(dist.has(id), `${label}: sampled id ${id}, which the filters remove`);
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    const { stat, dof } = chiSquare(counts, dist, N);
    assert.ok(dof >= 2, `${label}: too few bins for a meaningful test (${dof})`);
    const crit = chiSquareCritical(dof);
    t.diagnostic(`${label}: ${dist.size} candidate ids, chi2 ${stat.toFixed(1)} on ${dof} dof (critical ${crit.toFixed(1)})`);
    assert.ok(stat < crit, `${label}: chi-square ${stat} >= ${crit} with ${dof} degrees of freedom`);
  }
});

test('the chi-square check rejects a wrong distribution (the test has power)', () => {
  // Counts following top-p 0.8 (what the fixture's generation_config would have added) must
  // fail against the unfiltered distribution: the mistake this test first caught.
  const logits = Float32Array.from({ length: 200 }, (_, i) => Math.sin(i * 12.9898) * 4);
  const a = expectedDistribution(logits, { temperature: 0.7, topP: 0.8 }, []);
  const b = expectedDistribution(logits, { temperature: 0.7 }, []);
  const n = 1500;
  const counts = new Map([...a].map(([id, p]) => [id, Math.round(p * n)]));
  const { stat, dof } = chiSquare(counts, b, n);
  assert.ok(stat > chiSquareCritical(dof));
});

test(`the same seed gives the same tokens; another seed other tokens (${device})`, async (t) => {
  const model = await Model.load(fixture('tiny-bf16'), { device, contextLength: 64 });
  t.after(() => model.dispose());
  const opts = { doSample: true, temperature: 1.0, topP: 0.95, maxNewTokens: 24 };
  const a = await model.complete(PROMPT, { ...opts, seed: 7 });
  const b = await model.complete(PROMPT, { ...opts, seed: 7 });
  const c = await model.complete(PROMPT, { ...opts, seed: 8 });
  assert.deepEqual(a.tokens, b.tokens);
  assert.notDeepEqual(a.tokens, c.tokens);
});

test(`repetition penalty and greedy: argmax of the penalized logits (${device})`, async (t) => {
  const model = await Model.load(fixture('tiny-fp32'), { device, contextLength: 64 });
  t.after(() => model.dispose());
  const seq = model.createSequence();
  const logits = await seq.eval(PROMPT);
  const dist = expectedDistribution(logits, { temperature: 1e-6, repetitionPenalty: 50 }, PROMPT);
  const best = [...dist.entries()].sort((x, y) => y[1] - x[1])[0][0];
  const r = await model.complete(PROMPT, { doSample: false, repetitionPenalty: 50, maxNewTokens: 1 });
  assert.equal(r.tokens[0], best);
  assert.ok(!PROMPT.includes(r.tokens[0]) || logits[r.tokens[0]] < 0);
});
