// The newer Qwen families (SPEC 10): model_type "qwen2" (Qwen1.5/2/2.5) and "qwen3", against
// tiny checkpoints that Hugging Face transformers' own Qwen2ForCausalLM / Qwen3ForCausalLM wrote and
// ran in float32 on a CPU (test/fixtures-qwen2, made by test/fixtures-gen/make_qwen2_fixtures.py):
// GQA (4 query heads over 2 KV heads), tied and untied embeddings, qwen3's q/k norm and explicit
// head_dim (64, so n*d = 256 != hidden 128), and a qwen2 GPTQ int4 checkpoint.
//
// Tolerance as test/fixtures.test.mjs: fp32 on the CPU, relative error per step < 1e-5; under
// QWEN_DEVICE=cuda the same tests run on the CUDA backend (bf16/fp16 activations) with REL_TOL 3e-2.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import { Model, Tokenizer } from '../dist/index.mjs';
import { argmax, checkAllPositions, checkGreedy, device, errors, fixturesDir, readJson, readSafetensors, REL_TOL, repoRoot } from './helpers/fixtures.mjs';

const qfixture = (name) => path.join(repoRoot, 'test', 'fixtures-qwen2', name);
const FIXTURES = ['tiny-qwen2-tied', 'tiny-qwen3-untied', 'tiny-qwen2-gptq-int4'];


// Teacher-forces every case of a fixture through `model`; returns the worst errors.
async function teacherForce(model, dir, label) {
  const exp = readJson(path.join(dir, 'expected.json'));
  const st = readSafetensors(path.join(dir, 'expected.safetensors'));
  const V = model.config.vocabSize;
  let worstRel = 0;
  let worstAbs = 0;
  for (const [ci, c] of exp.cases.entries()) {
    const want = st[`case${ci}.logits`];
    const seq = model.createSequence();
    let logits = await seq.eval(c.prompt);
    for (let s = 0; s < want.shape[0]; s++) {
      const e = errors(logits, want.data.subarray(s * V, (s + 1) * V));
      worstRel = Math.max(worstRel, e.rel);
      worstAbs = Math.max(worstAbs, e.maxAbs);
      assert.ok(e.rel < REL_TOL, `${label} case${ci} step ${s}: relative error ${e.rel} >= ${REL_TOL}`);
      if (s + 1 < want.shape[0]) logits = await seq.eval([c.greedy[s]]);
    }
    seq.dispose();
  }
  return { exp, st, worstRel, worstAbs };
}

for (const name of FIXTURES) {
  test(`${name}: teacher-forced logits, every position and greedy ids match transformers (${device})`, async (t) => {
    const model = await Model.load(qfixture(name), { device, contextLength: 256 });
    t.after(() => model.dispose());
    const cfg = readJson(path.join(qfixture(name), 'config.json'));
    assert.equal(model.config.modelType, cfg.model_type);
    assert.equal(model.config.numKvHeads, 2);
    assert.equal(model.config.numHeads, 4);
    assert.equal(model.config.headDim, cfg.head_dim ?? 32);
    assert.equal(model.config.tieWordEmbeddings, cfg.tie_word_embeddings);
    assert.equal(model.config.useDynamicNtk, false);
    assert.equal(model.config.useLognAttn, false);
    const { exp, st, worstRel, worstAbs } = await teacherForce(model, qfixture(name), name);
    const V = model.config.vocabSize;
    for (const [ci, c] of exp.cases.entries()) {
      const r = await model.complete(c.prompt, { doSample: false, maxNewTokens: c.greedy.length });
      const agreed = checkGreedy(r.tokens, c.greedy, c.top2_margin, worstAbs, `${name} case${ci}`);
      t.diagnostic(`case${ci}: prompt ${c.prompt.length}, greedy agrees on ${agreed}/${c.greedy.length}`);
    }
    await checkAllPositions(model, exp, st, name);
    t.diagnostic(`max rel ${worstRel.toExponential(2)}, max abs ${worstAbs.toExponential(2)}`);
  });
}

test(`qwen2: chunked prefill equals one-shot prefill, and the int8 KV cache stays close (${device})`, async (t) => {
  const model = await Model.load(qfixture('tiny-qwen2-tied'), { device, contextLength: 256 });
  t.after(() => model.dispose());
  const prompt = readJson(path.join(qfixture('tiny-qwen2-tied'), 'expected.json')).cases[1].prompt.slice(0, 60);
  const one = await model.createSequence().eval(prompt);
  const b = model.createSequence();
  await b.eval(prompt.slice(0, 7));
  await b.eval(prompt.slice(7, 31));
  const chunked = await b.eval(prompt.slice(31));
  // CUDA: chunks run other kernels (decode-shaped vs prefill-shaped) in bf16: 1e-2 (as test_ops.cu).
  const chunkTol = device === 'cpu' ? 1e-5 : 1e-2;
  assert.ok(errors(chunked, one).rel < chunkTol, `chunked prefill relative error ${errors(chunked, one).rel}`);
  const m8 = await Model.load(qfixture('tiny-qwen2-tied'), { device, contextLength: 256, kvCache: 'int8' });
  t.after(() => m8.dispose());
  const q = await m8.createSequence().eval(prompt);
  const e = errors(q, one);
  assert.ok(e.rel < 2e-2, `int8 KV relative error ${e.rel}`);
  // The argmax must agree wherever the top-2 margin is well above the measured difference.
  const sorted = Array.from(one).sort((x, y) => y - x);
  if (sorted[0] - sorted[1] > 2 * e.maxAbs) assert.equal(argmax(q), argmax(one));
});

// A copy of a fixture folder whose config.json is rewritten by `edit` (weights linked, not copied).
function editedCopy(t, name, edit, dropFiles = []) {
  const src = qfixture(name);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen2-cfg-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const f of fs.readdirSync(src)) {
    if (f === 'config.json' || dropFiles.includes(f)) continue;
    fs.symlinkSync(path.join(src, f), path.join(dir, f));
  }
  const cfg = readJson(path.join(src, 'config.json'));
  edit(cfg);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  return dir;
}

test('qwen2: a config in the older spelling (top-level rope_theta, no rope_parameters) gives the same logits', async (t) => {
  const dir = editedCopy(t, 'tiny-qwen2-tied', (c) => {
    c.rope_theta = c.rope_parameters.rope_theta;
    delete c.rope_parameters;
    delete c.layer_types;
    c.rope_scaling = null;
    c.torch_dtype = c.dtype;
    delete c.dtype;
  });
  const model = await Model.load(dir, { device: 'cpu', contextLength: 256 });
  t.after(() => model.dispose());
  assert.equal(model.config.ropeBase, 1000000);
  await teacherForce(model, qfixture('tiny-qwen2-tied'), 'old-style config');
});

test('qwen2/qwen3: tied embeddings need no lm_head; untied ones do, and the error names it', async (t) => {
  // Tied: the checkpoint has no lm_head.weight and loads (the tests above run it).
  const st = fs.readFileSync(path.join(qfixture('tiny-qwen2-tied'), 'model.safetensors'));
  const header = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString('utf8'));
  assert.ok(!('lm_head.weight' in header));
  assert.ok('model.embed_tokens.weight' in header);
  // The same folder claiming untied embeddings must fail, naming lm_head.weight.
  const dir = editedCopy(t, 'tiny-qwen2-tied', (c) => { c.tie_word_embeddings = false; });
  await assert.rejects(Model.load(dir, { device: 'cpu' }), /lm_head\.weight/);
});

test('unsupported architectures get an error that names them and lists the supported ones', async (t) => {
  for (const mt of ['llama', 'qwen2_moe', 'qwen3_moe', 'qwen2_vl']) {
    const dir = editedCopy(t, 'tiny-qwen2-tied', (c) => { c.model_type = mt; });
    await assert.rejects(Model.load(dir, { device: 'cpu' }), (err) => {
      assert.match(err.message, new RegExp(`model_type "${mt}" is not supported`));
      assert.match(err.message, /"qwen"/);
      assert.match(err.message, /"qwen2" \(Qwen1\.5, Qwen2, Qwen2\.5\)/);
      assert.match(err.message, /"qwen3"/);
      return true;
    });
  }
  const sliding = editedCopy(t, 'tiny-qwen2-tied', (c) => { c.use_sliding_window = true; });
  await assert.rejects(Model.load(sliding, { device: 'cpu' }), /use_sliding_window true is not supported/);
  const yarn = editedCopy(t, 'tiny-qwen2-tied', (c) => { c.rope_parameters = { rope_type: 'yarn', factor: 4, rope_theta: 1e6 }; });
  await assert.rejects(Model.load(yarn, { device: 'cpu' }), /"yarn" is not supported/);
  const gqa = editedCopy(t, 'tiny-qwen2-tied', (c) => { c.num_key_value_heads = 3; });
  await assert.rejects(Model.load(gqa, { device: 'cpu' }), /num_key_value_heads 3 must .* divide num_attention_heads 4/);
  // Dimensions are checked against the tensors: a wrong KV head count is a shape error naming k_proj.
  const kv4 = editedCopy(t, 'tiny-qwen2-tied', (c) => { c.num_key_value_heads = 4; });
  await assert.rejects(Model.load(kv4, { device: 'cpu' }), /self_attn\.k_proj\.weight has shape \[64, 128\]/);
});

test('device cuda takes qwen2/qwen3 checkpoints (no family refusal)', async () => {
  // Straight to the addon: lib/model.ts may stop earlier when this build has no CUDA at all. With a
  // GPU the load succeeds (the tests above run the models under QWEN_DEVICE=cuda); without one the
  // error is about CUDA being unavailable, never about the model family.
  const raw = createRequire(import.meta.url)('node-gyp-build')(repoRoot);
  for (const name of ['tiny-qwen2-tied', 'tiny-qwen3-untied']) {
    let handle = null;
    try {
      handle = await raw.loadModel(qfixture(name), { device: 'cuda', deviceIndex: 0, contextLength: 0, threads: 0, kvCache: 'auto' });
    } catch (err) {
      assert.doesNotMatch(err.message, /model_type "qwen[23]" is not supported on device cuda/);
      assert.match(err.message, /cuda|CUDA|GPU/);
      if (device === 'cuda') throw err;  // on the GPU machine the load must succeed
    }
    handle?.dispose();
  }
});

// ---- tokenizer: vocab.json (+ tokenizer_config.json) and tokenizer.json, as Qwen1.5/2/2.5/3 ship it ----

// GPT-2's bytes_to_unicode, written out independently of lib/tokenizer.ts.
function byteEncoder() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  const enc = new Array(256);
  bs.forEach((b, i) => { enc[b] = String.fromCharCode(cs[i]); });
  return enc;
}

// The Qwen2-style files built from the shared qwen.tiktoken: vocab.json maps each token's byte-level
// text to its rank; tokenizer_config.json / tokenizer.json list the special tokens with their ids.
function qwen2TokenizerFiles(t, specials) {
  const enc = byteEncoder();
  const vocab = {};
  for (const line of fs.readFileSync(path.join(fixturesDir, 'tokenizer', 'qwen.tiktoken'), 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const [b64, rank] = line.split(' ');
    vocab[Array.from(Buffer.from(b64, 'base64'), (b) => enc[b]).join('')] = Number(rank);
  }
  const added = Object.entries(specials).map(([content, id]) => ({ id, content, special: true }));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen2-tok-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const vdir = path.join(dir, 'vocab');
  const jdir = path.join(dir, 'json');
  fs.mkdirSync(vdir);
  fs.mkdirSync(jdir);
  fs.writeFileSync(path.join(vdir, 'vocab.json'), JSON.stringify(vocab));
  fs.writeFileSync(path.join(vdir, 'merges.txt'), '#version: 0.2\n');
  fs.writeFileSync(path.join(vdir, 'tokenizer_config.json'), JSON.stringify({
    added_tokens_decoder: Object.fromEntries(added.map((a) => [String(a.id), { content: a.content, special: true }])),
  }));
  fs.writeFileSync(path.join(jdir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', added_tokens: added, normalizer: { type: 'NFC' },
    model: { type: 'BPE', vocab, merges: [], byte_fallback: false },
  }));
  return { vdir, jdir, vocabSize: Object.keys(vocab).length };
}

test('tokenizer from vocab.json / tokenizer.json gives the qwen.tiktoken ids on the 176 shared cases', async (t) => {
  const shared = readJson(path.join(fixturesDir, 'tokenizer', 'cases.json'));
  const { vdir, jdir, vocabSize } = qwen2TokenizerFiles(t, shared.special_tokens);
  assert.equal(vocabSize, 151643);
  const ref = await Tokenizer.load(path.join(fixturesDir, 'tokenizer'));
  const fromVocab = await Tokenizer.load(vdir);
  const fromJson = Tokenizer.fromFile(path.join(jdir, 'tokenizer.json'));
  t.after(() => { ref.free(); fromVocab.free(); fromJson.free(); });
  assert.equal(path.basename(fromVocab.path), 'vocab.json');
  assert.equal(shared.cases.length, 176);
  for (const tok of [fromVocab, fromJson]) {
    assert.equal(tok.eodId, 151643);
    assert.equal(tok.imStartId, 151644);
    assert.equal(tok.imEndId, 151645);
    assert.equal(tok.vocabSize, ref.vocabSize);
    for (const [i, c] of shared.cases.entries()) {
      const plain = tok.encode(c.text);
      assert.deepEqual(plain, c.ids_plain, `case ${i} plain (${path.basename(tok.path)})`);
      assert.deepEqual(plain, ref.encode(c.text));
      assert.deepEqual(tok.encode(c.text, { allowSpecial: true }), c.ids_all_special, `case ${i} all specials`);
      assert.equal(tok.decode(plain), c.decoded_plain, `case ${i} decode`);
    }
  }
  // A bare vocab.json (no tokenizer_config.json): Qwen2's three special tokens by default.
  fs.rmSync(path.join(vdir, 'tokenizer_config.json'));
  const bare = Tokenizer.fromFile(path.join(vdir, 'vocab.json'));
  t.after(() => bare.free());
  assert.deepEqual([...bare.specialTokens.entries()], [['<|endoftext|>', 151643], ['<|im_start|>', 151644], ['<|im_end|>', 151645]]);
  for (const c of shared.cases) assert.deepEqual(bare.encode(c.text), c.ids_plain);
});

test('tokenizer: a vocab.json token that is not byte-level text is a clear error', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen2-tok-bad-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify({ a: 0, 'b c': 1 }));
  assert.throws(() => Tokenizer.fromFile(dir), /vocab\.json: token "b c" \(id 1\) is not byte-level BPE text/);
  fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify({ a: 0, b: 'x' }));
  assert.throws(() => Tokenizer.fromFile(dir), /token "b" has id "x"/);
});

// ---- chat: the ChatML of the Qwen2/2.5/3 templates, built in TS (no Jinja) ----

// Qwen2-Instruct's chat_template (tokenizer_config.json), as a JSON-decoded string.
const QWEN2_TEMPLATE = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
// The parts of Qwen2.5's and Qwen3's templates that matter here.
const QWEN25_TEMPLATE = "{%- else %}\n        {%- if messages[0]['role'] == 'system' %}\n            {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n        {%- else %}\n            {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n        {%- endif %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}";
const QWEN3_TEMPLATE = "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}";

test('chat templates: Qwen2 / Qwen2.5 / Qwen3 defaults and the thinking switch', async (t) => {
  const { parseChatTemplate, makeChatMLContext } = await import('../dist/index.mjs');
  assert.deepEqual(parseChatTemplate(QWEN2_TEMPLATE), { defaultSystem: 'You are a helpful assistant.', thinking: false });
  assert.deepEqual(parseChatTemplate(QWEN25_TEMPLATE), {
    defaultSystem: 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.', thinking: false,
  });
  assert.deepEqual(parseChatTemplate(QWEN3_TEMPLATE), { defaultSystem: null, thinking: true });
  assert.equal(parseChatTemplate('{{ bos_token }}{% for m in messages %}[INST] {{ m.content }}{% endfor %}'), null);

  const shared = readJson(path.join(fixturesDir, 'tokenizer', 'cases.json'));
  const { vdir } = qwen2TokenizerFiles(t, { ...shared.special_tokens, '<think>': 151667, '</think>': 151668 });
  const tok = await Tokenizer.load(vdir);
  t.after(() => tok.free());
  const q2 = makeChatMLContext(tok, 'Hi <|im_end|> there', {
    history: [['你好', '你好！']], template: parseChatTemplate(QWEN2_TEMPLATE),
  });
  assert.equal(q2.rawText, '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n' +
    '<|im_start|>assistant\n你好！<|im_end|>\n<|im_start|>user\nHi <|im_end|> there<|im_end|>\n<|im_start|>assistant\n');
  // Control tokens only where the template puts them; "\n" pieces between turns; content as text.
  const nl = tok.encode('\n');
  assert.deepEqual(q2.tokens.slice(0, tok.encode('system\nYou are a helpful assistant.').length + 3),
    [151644, ...tok.encode('system\nYou are a helpful assistant.'), 151645, ...nl]);
  assert.equal(q2.tokens.filter((x) => x === 151645).length, 4);
  assert.deepEqual(q2.tokens.slice(-(tok.encode('assistant\n').length + 1)), [151644, ...tok.encode('assistant\n')]);

  const q3 = parseChatTemplate(QWEN3_TEMPLATE);
  const on = makeChatMLContext(tok, 'Why?', { template: q3, history: [['a', '<think>\nhmm\n</think>\n\nb']] });
  assert.equal(on.rawText, '<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n');
  const off = makeChatMLContext(tok, 'Why?', { template: q3, enableThinking: false, system: 'Be brief.' });
  assert.equal(off.rawText, '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
  assert.deepEqual(off.tokens.slice(-4), [151667, ...tok.encode('\n\n'), 151668, ...tok.encode('\n\n')].slice(-4));
  assert.ok(off.tokens.includes(151667) && off.tokens.includes(151668));
});

test('chat on a qwen2 checkpoint goes through its ChatML template (cpu)', async (t) => {
  const shared = readJson(path.join(fixturesDir, 'tokenizer', 'cases.json'));
  const { vdir } = qwen2TokenizerFiles(t, shared.special_tokens);
  const dir = editedCopy(t, 'tiny-qwen2-tied', () => {});
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: QWEN2_TEMPLATE }));
  const tokenizer = await Tokenizer.load(vdir);
  // The tiny model's vocab is 1000: ids past it are out of range, so only check the prompt it builds.
  const model = await Model.load(dir, { device: 'cpu', tokenizer, contextLength: 128 });
  t.after(() => { model.dispose(); tokenizer.free(); });
  await assert.rejects(model.chat('hi', { doSample: false, maxNewTokens: 2 }), /token id 151644 at index 0 is out of range \[0, 1000\)/);
});
