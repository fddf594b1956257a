// CPU speed on the tiny fixtures (random weights): decode and prefill tokens/s.
// Run: node bench/cpu_tiny.mjs   (an informal figure for the CPU backend; the GPU benchmarks are bench/run.sh)
import { fixture } from '../test/helpers/fixtures.mjs';
import { Model, Tokenizer } from '../dist/index.mjs';
const tok = await Tokenizer.load(fixture('tokenizer'));
for (const [name, extra] of [['tiny-fp32', {}], ['tiny-bf16', {}], ['chat-tiny-bf16', { tokenizer: tok }]]) {
  const m = await Model.load(fixture(name), { device: 'cpu', contextLength: 1024, ...extra });
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 37) % 900);
  await m.complete(prompt, { doSample: false, maxNewTokens: 8 });
  const seq = m.createSequence();
  let t0 = performance.now();
  await seq.eval(Array.from({ length: 256 }, (_, i) => (i * 37) % 900));
  const prefill = 256 / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  const r = await m.complete(prompt, { doSample: false, maxNewTokens: 256, stop: [] });
  const dt = (performance.now() - t0) / 1000;
  console.log(`${name}: decode ${(r.tokens.length / dt).toFixed(0)} tok/s (256 tokens incl. 32-token prefill, greedy), prefill 256 tokens ${prefill.toFixed(0)} tok/s, ${m.device}`);
  m.dispose();
}
