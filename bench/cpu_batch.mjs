// Continuous batching on the CPU backend (informal; random-weight fixtures): N greedy generations
// one after another vs the same N started together, generated tokens per second.
// Run: node bench/cpu_batch.mjs
import { Model, Tokenizer } from '../dist/index.mjs';
import { fixture } from '../test/helpers/fixtures.mjs';

const NEW = 64;
const cases = [
  ['tiny-fp32', {}],
  ['chat-tiny-bf16', { tokenizer: await Tokenizer.load(fixture('tokenizer')) }],
];
for (const [name, extra] of cases) {
  const model = await Model.load(fixture(name), { device: 'cpu', contextLength: 256, ...extra });
  const prompt = (i) => Array.from({ length: 16 }, (_, j) => (i * 131 + j * 37) % 900);
  const opts = { doSample: false, maxNewTokens: NEW, stop: [], repetitionPenalty: 1 };
  await model.complete(prompt(0), opts); // warm-up
  // Best of 3 of each: single runs of a few tens of milliseconds are noisy on a shared machine.
  const best = async (run) => {
    let top = 0;
    for (let rep = 0; rep < 3; rep++) {
      const t0 = performance.now();
      const tokens = await run();
      top = Math.max(top, tokens / ((performance.now() - t0) / 1000));
    }
    return top;
  };
  for (const n of [1, 4, 8]) {
    const serial = await best(async () => {
      let tokens = 0;
      for (let i = 0; i < n; i++) tokens += (await model.complete(prompt(i), opts)).tokens.length;
      return tokens;
    });
    const together = await best(async () => {
      const rs = await Promise.all(Array.from({ length: n }, (_, i) => model.complete(prompt(i), opts)));
      return rs.reduce((a, r) => a + r.tokens.length, 0);
    });
    console.log(`${name}: ${n} requests x ${NEW} tokens: one at a time ${serial.toFixed(0)} tok/s, together ${together.toFixed(0)} tok/s (${(together / serial).toFixed(2)}x)`);
  }
  model.dispose();
}
