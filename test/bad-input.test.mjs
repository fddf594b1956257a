// Bad input: broken checkpoints, invalid ids and options, misuse of sequences and models.
// Every case must end in a clear Error that names its subject (the file, the tensor, the option,
// the id...), must leave the process alive, and where it makes sense must leave the model working:
// after a rejected call the same sequence/model gives bit-identical logits to a fresh one.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Model, AbortError, Tokenizer } from '../dist/index.mjs';
import { fixture, device } from './helpers/fixtures.mjs';

const TINY = fixture('tiny-fp32'); // vocab 1000, hidden 128, 2 layers, ffn 256, fp32
const VOCAB = 1000;
const CTX = 128;
const PROMPT = [11, 22, 33, 44, 55, 66, 77]; // a valid prompt
const MORE = [101, 202, 303]; // valid ids fed after PROMPT

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen-bad-input-'));
let caseNo = 0;

const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const names = (s) => new RegExp(esc(s)); // the message contains this literal text

// ---------- a small safetensors reader/writer, independent of the native code ----------

function readRaw(file) {
  const buf = fs.readFileSync(file);
  const headerLength = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLength).toString('utf8'));
  const base = 8 + headerLength;
  const tensors = [];
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, end] = e.data_offsets;
    tensors.push({ name, dtype: e.dtype, shape: [...e.shape], data: Buffer.from(buf.subarray(base + b, base + end)) });
  }
  tensors.sort((a, b) => header[a.name].data_offsets[0] - header[b.name].data_offsets[0]);
  return { buf, headerLength, header, dataSize: buf.length - base, tensors };
}

/**
 * Lays tensors out back to back after an 8-byte-aligned JSON header. `patch(header, dataSize)` may
 * rewrite header entries afterwards (to make the header lie).
 */
function encodeSafetensors(tensors, { patch } = {}) {
  const header = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  patch?.(header, off);
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...tensors.map((t) => t.data)]);
}

const original = readRaw(path.join(TINY, 'model.safetensors'));
const tensorsCopy = () => original.tensors.map((t) => ({ ...t, shape: [...t.shape] }));
const tensorByName = (name) => original.tensors.find((t) => t.name === name);

/** A fresh folder with tiny-fp32's config files (and, unless weights: false, its weights). */
function checkpoint({ weights = true, config } = {}) {
  const dir = path.join(root, `case-${++caseNo}`);
  fs.mkdirSync(dir);
  for (const f of ['config.json', 'generation_config.json', ...(weights ? ['model.safetensors'] : [])]) {
    fs.copyFileSync(path.join(TINY, f), path.join(dir, f));
    fs.chmodSync(path.join(dir, f), 0o644);
  }
  if (config) {
    const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    config(c);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c, null, 2));
  }
  return dir;
}

function withWeights(bytes) {
  const dir = checkpoint({ weights: false });
  fs.writeFileSync(path.join(dir, 'model.safetensors'), bytes);
  return dir;
}

// ---------- the good model, and the checks run after every failure ----------

let good; // tiny-fp32, contextLength 128
let refLogits; // PROMPT's logits on a fresh sequence
let refMoreLogits; // MORE's logits after PROMPT
let refGreedy; // 6 greedy tokens after PROMPT

before(async () => {
  good = await Model.load(TINY, { device, contextLength: CTX });
  const s = good.createSequence();
  refLogits = await s.eval(PROMPT);
  refMoreLogits = await s.eval(MORE);
  s.dispose();
  refGreedy = (await good.complete(PROMPT, { maxNewTokens: 6, temperature: 0 })).tokens;
  assert.equal(refLogits.length, VOCAB);
  assert.equal(refGreedy.length, 6);
});

after(() => {
  good?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});

/** The good model still evaluates a prompt exactly as before, on a fresh sequence. */
async function assertGoodModelWorks() {
  const s = good.createSequence();
  try {
    assert.deepEqual(await s.eval(PROMPT), refLogits);
  } finally {
    s.dispose();
  }
}

/** No memory mapping of anything under `dir` survives (a failed or disposed load unmaps its files). */
function assertNotMapped(dir) {
  if (!fs.existsSync('/proc/self/maps')) return;
  const leaked = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(dir));
  assert.deepEqual(leaked, [], `files of ${dir} are still mapped`);
}

/** Model.load(dir) rejects with an Error whose message matches every pattern; nothing leaks. */
async function assertLoadFails(dir, ...patterns) {
  let err;
  await assert.rejects(Model.load(dir, { device }), (e) => {
    err = e;
    return true;
  });
  assert.ok(err instanceof Error, `rejected with a non-Error: ${String(err)}`);
  for (const p of patterns) assert.match(err.message, p);
  assertNotMapped(dir);
  await assertGoodModelWorks();
  return err;
}

// ==========================================================================================

describe('broken checkpoints', () => {
  test('control: the test writer re-encodes tiny-fp32 into a checkpoint that loads and matches', async () => {
    const dir = withWeights(encodeSafetensors(tensorsCopy()));
    const m = await Model.load(dir, { device, contextLength: CTX });
    try {
      const s = m.createSequence();
      assert.deepEqual(await s.eval(PROMPT), refLogits);
    } finally {
      m.dispose();
    }
    assertNotMapped(dir);
  });

  test('safetensors truncated inside the data part names the file and a tensor past the cut', async () => {
    const cut = 8 + original.headerLength + Math.floor(original.dataSize / 2);
    const dir = withWeights(original.buf.subarray(0, cut));
    const file = path.join(dir, 'model.safetensors');
    const err = await assertLoadFails(dir, names(file), /truncated/);
    const m = /tensor (\S+?):/.exec(err.message);
    assert.ok(m, `no tensor named in: ${err.message}`);
    const e = original.header[m[1]];
    assert.ok(e, `${m[1]} is not a tensor of the file`);
    assert.ok(8 + original.headerLength + e.data_offsets[1] > cut, `${m[1]} lies before the cut`);
  });

  test('safetensors truncated inside the header names the file', async () => {
    const dir = withWeights(original.buf.subarray(0, 8 + Math.floor(original.headerLength / 2)));
    await assertLoadFails(dir, names(path.join(dir, 'model.safetensors')), /header/, /truncated/);
  });

  test('safetensors shorter than its 8-byte length prefix, and empty, name the file', async () => {
    for (const bytes of [original.buf.subarray(0, 5), Buffer.alloc(0)]) {
      const dir = withWeights(bytes);
      await assertLoadFails(dir, names(path.join(dir, 'model.safetensors')), /truncated/);
    }
  });

  test('garbage bytes in the header JSON name the file and its header', async () => {
    const bytes = Buffer.from(original.buf);
    for (let i = 0; i < original.headerLength; i++) bytes[8 + i] = (i * 131 + 0xf7) & 0xff;
    const dir = withWeights(bytes);
    await assertLoadFails(dir, names(path.join(dir, 'model.safetensors')), /header/, /JSON/);
  });

  test('a header that is JSON but not an object, or an entry without data_offsets, is refused', async () => {
    const json = Buffer.from('[1, 2, 3]     ');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    let dir = withWeights(Buffer.concat([len, json]));
    await assertLoadFails(dir, names(path.join(dir, 'model.safetensors')), /not a JSON object/);

    dir = withWeights(encodeSafetensors(tensorsCopy(), { patch: (h) => delete h['transformer.ln_f.weight'].data_offsets }));
    await assertLoadFails(dir, /transformer\.ln_f\.weight/, /data_offsets/);
  });

  test('data_offsets pointing past the end of the file name the tensor', async () => {
    const dir = withWeights(
      encodeSafetensors(tensorsCopy(), {
        patch: (h, size) => {
          const n = 1000 * 128 * 4;
          h['transformer.wte.weight'].data_offsets = [size, size + n];
        },
      }),
    );
    await assertLoadFails(dir, /transformer\.wte\.weight/, /past the end/);
  });

  test('two tensors whose data_offsets overlap are both named', async () => {
    const dir = withWeights(
      encodeSafetensors(tensorsCopy(), {
        patch: (h) => {
          h['transformer.h.0.ln_2.weight'].data_offsets = [...h['transformer.h.0.ln_1.weight'].data_offsets];
        },
      }),
    );
    await assertLoadFails(dir, /overlap/, /transformer\.h\.0\.ln_1\.weight/, /transformer\.h\.0\.ln_2\.weight/);
  });

  test('two tensors whose data_offsets partly overlap are both named', async () => {
    // ln_2 starts in the middle of c_proj (both of layer 0); ln_2's own bytes stay where they were.
    const dir = withWeights(
      encodeSafetensors(tensorsCopy(), {
        patch: (h) => {
          const [b] = h['transformer.h.0.attn.c_proj.weight'].data_offsets;
          h['transformer.h.0.ln_2.weight'].data_offsets = [b + 64, b + 64 + 512];
        },
      }),
    );
    await assertLoadFails(dir, /overlap/, /transformer\.h\.0\.attn\.c_proj\.weight/, /transformer\.h\.0\.ln_2\.weight/);
  });

  test('data_offsets whose size does not match dtype x shape name the tensor and both sizes', async () => {
    // ln_f keeps its 512 bytes but claims F32 [100] (400 bytes).
    const dir = withWeights(encodeSafetensors(tensorsCopy(), { patch: (h) => (h['transformer.ln_f.weight'].shape = [100]) }));
    await assertLoadFails(dir, /transformer\.ln_f\.weight/, /512/, /400/);
  });

  test('a missing tensor is named', async () => {
    const dir = withWeights(encodeSafetensors(tensorsCopy().filter((t) => t.name !== 'transformer.h.1.mlp.w2.weight')));
    await assertLoadFails(dir, /transformer\.h\.1\.mlp\.w2\.weight/, /missing/);
  });

  test('a tensor whose shape disagrees with config.json is named with both shapes', async () => {
    const t = tensorsCopy().map((x) =>
      x.name === 'transformer.ln_f.weight' ? { ...x, shape: [64], data: x.data.subarray(0, 64 * 4) } : x,
    );
    const dir = withWeights(encodeSafetensors(t));
    await assertLoadFails(dir, /transformer\.ln_f\.weight/, /\[64\]/, /\[128\]/);
  });

  test('config.json with more layers than the file holds names the first missing tensor', async () => {
    const dir = checkpoint({ config: (c) => (c.num_hidden_layers = 3) });
    await assertLoadFails(dir, /transformer\.h\.2\./, /missing/);
  });

  for (const dtype of ['F8_E4M3', 'I8']) {
    test(`an unsupported dtype (${dtype}) names the tensor and the dtype`, async () => {
      const name = 'transformer.h.0.mlp.w1.weight';
      const t = tensorsCopy().map((x) => (x.name === name ? { ...x, dtype, data: Buffer.alloc(256 * 128, 0x11) } : x));
      const dir = withWeights(encodeSafetensors(t));
      await assertLoadFails(dir, names(name), names(dtype));
    });
  }

  test('an integer dtype (I32) for a float weight names the tensor', async () => {
    const name = 'transformer.h.0.ln_1.weight';
    const t = tensorsCopy().map((x) => (x.name === name ? { ...x, dtype: 'I32' } : x));
    const dir = withWeights(encodeSafetensors(t));
    await assertLoadFails(dir, names(name), /I32/);
  });

  test('config.json without hidden_size names the file and the key', async () => {
    const dir = checkpoint({ config: (c) => delete c.hidden_size });
    await assertLoadFails(dir, names(path.join(dir, 'config.json')), /hidden_size/);
  });

  test('config.json with an unsupported model_type names it', async () => {
    const dir = checkpoint({ config: (c) => (c.model_type = 'llama') });
    await assertLoadFails(dir, names(path.join(dir, 'config.json')), /model_type/, /llama/);
  });

  test('config.json that is not JSON, or absent, is named', async () => {
    let dir = checkpoint();
    fs.writeFileSync(path.join(dir, 'config.json'), '{"model_type": "qwen", "hidden_size": 12');
    await assertLoadFails(dir, names(path.join(dir, 'config.json')), /JSON/);
    dir = checkpoint();
    fs.rmSync(path.join(dir, 'config.json'));
    await assertLoadFails(dir, names(path.join(dir, 'config.json')));
  });

  test('a folder with pytorch_model.bin only is refused, naming safetensors', async () => {
    const dir = checkpoint({ weights: false });
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), Buffer.from('PK\x03\x04 not really a pickle'));
    await assertLoadFails(dir, /pytorch_model/, /safetensors/);
  });

  test('a folder with no weights at all says what it looked for', async () => {
    const dir = checkpoint({ weights: false });
    await assertLoadFails(dir, /model\.safetensors/);
  });

  // tiny-fp32 split in two shards with an index, as Qwen publishes its checkpoints.
  function sharded() {
    const dir = checkpoint({ weights: false });
    const t = tensorsCopy();
    const half = Math.ceil(t.length / 2);
    const shards = { 'model-00001-of-00002.safetensors': t.slice(0, half), 'model-00002-of-00002.safetensors': t.slice(half) };
    const weight_map = {};
    for (const [file, list] of Object.entries(shards)) {
      fs.writeFileSync(path.join(dir, file), encodeSafetensors(list));
      for (const x of list) weight_map[x.name] = file;
    }
    const index = { metadata: { total_size: original.dataSize }, weight_map };
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    return { dir, index, second: shards['model-00002-of-00002.safetensors'] };
  }

  test('control: the sharded copy loads and matches', async () => {
    const { dir } = sharded();
    const m = await Model.load(dir, { device, contextLength: CTX });
    try {
      assert.deepEqual(await m.createSequence().eval(PROMPT), refLogits);
    } finally {
      m.dispose();
    }
  });

  test('an index pointing to a missing shard names the shard', async () => {
    const { dir } = sharded();
    fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
    await assertLoadFails(dir, /model-00002-of-00002\.safetensors/, /missing/);
  });

  test('an index listing a tensor its shard does not hold names the tensor and the shard', async () => {
    const { dir, index, second } = sharded();
    const moved = second[0].name;
    index.weight_map[moved] = 'model-00001-of-00002.safetensors';
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    await assertLoadFails(dir, names(moved), /model-00001-of-00002\.safetensors/);
  });

  test('an index without a weight_map object is named', async () => {
    const { dir } = sharded();
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: [] }));
    await assertLoadFails(dir, /model\.safetensors\.index\.json/, /weight_map/);
  });

  test("a checkpoint's own qwen.tiktoken that is an unresolved link placeholder is named", async () => {
    // chat-tiny-bf16/qwen.tiktoken is a symlink; where it did not resolve it holds the target path.
    const dir = checkpoint();
    fs.writeFileSync(path.join(dir, 'qwen.tiktoken'), '../tokenizer/qwen.tiktoken\n');
    await assertLoadFails(dir, names(path.join(dir, 'qwen.tiktoken')));
  });

  test('Model.load of a folder that does not exist, or of a file, names the path', async () => {
    const missing = path.join(root, 'no-such-checkpoint');
    await assert.rejects(Model.load(missing, { device }), (e) => e instanceof Error && names(missing).test(e.message));
    const file = path.join(TINY, 'config.json');
    await assert.rejects(Model.load(file, { device }), (e) => e instanceof Error && names(file).test(e.message));
    await assert.rejects(Model.load('', { device }), TypeError);
    await assertGoodModelWorks();
  });

  test('Tokenizer.load of a missing file, or of a corrupt one, names the file', async () => {
    const missing = path.join(root, 'nowhere', 'qwen.tiktoken');
    await assert.rejects(Tokenizer.load(missing), (e) => e instanceof Error && names(missing).test(e.message) && /not found/.test(e.message));
    const corrupt = path.join(root, `corrupt-${++caseNo}.tiktoken`);
    fs.writeFileSync(corrupt, 'IQ== 0\nthis is not base64 at all\n');
    await assert.rejects(Tokenizer.load(corrupt), (e) => e instanceof Error && names(corrupt).test(e.message) && /line 2/.test(e.message));
  });
});

// ==========================================================================================

describe('bad load options', () => {
  const cases = [
    [{ device: 'tpu' }, RangeError, /device/],
    [{ kvCache: 'fp8' }, RangeError, /kvCache/],
    [{ contextLength: 0 }, RangeError, /contextLength/],
    [{ contextLength: 2.5 }, RangeError, /contextLength/],
    [{ contextLength: -5 }, RangeError, /contextLength/],
    [{ threads: -1 }, RangeError, /threads/],
    [{ deviceIndex: 1.5 }, RangeError, /deviceIndex/],
  ];
  for (const [opt, type, re] of cases) {
    test(`${JSON.stringify(opt)} is a ${type.name} naming the option`, async () => {
      await assert.rejects(Model.load(TINY, { device, ...opt }), (e) => e instanceof type && re.test(e.message));
    });
  }

  // Not validated today: a non-function onProgress is called from native code, where the TypeError
  // is swallowed by Node-API (DEP0168 warning) or kills the process under the strict policy.
  test('onProgress that is not a function is a TypeError naming the option', async () => {
    await assert.rejects(Model.load(TINY, { device, onProgress: 'yes please' }), (e) => e instanceof TypeError && /onProgress/.test(e.message));
  });

  // Not validated today: a tokenizer that is neither a Tokenizer, a path nor null is silently dropped.
  test('tokenizer that is neither a Tokenizer, a path nor null is a TypeError naming the option', async () => {
    await assert.rejects(Model.load(TINY, { device, tokenizer: 42 }), (e) => e instanceof TypeError && /tokenizer/.test(e.message));
  });
});

// ==========================================================================================

describe('bad calls on a good model', () => {
  test('out-of-range and non-integer ids: eval throws naming the id; the sequence is unchanged', async () => {
    const seq = good.createSequence();
    await seq.eval(PROMPT);
    const cases = [
      [Int32Array.from([1000]), /1000/],
      [[5, 6, 1000, 7], /1000/], // valid ids before the bad one must not reach the cache
      [Int32Array.from([-1]), /-1/],
      [[-1], /-1/],
      [[3, 1.5], /1\.5/],
      [[NaN], /NaN/],
      [[Infinity], /Infinity/],
      [[2 ** 31], /2147483648/],
      [[1, '2'], /ids\[1\]/],
    ];
    for (const [ids, re] of cases) {
      await assert.rejects(
        async () => seq.eval(ids),
        (e) => e instanceof Error && re.test(e.message) && /id/.test(e.message),
        `eval(${String(ids)})`,
      );
      await assert.rejects(async () => seq.evalAll(ids), (e) => e instanceof Error && re.test(e.message), `evalAll(${String(ids)})`);
      assert.equal(seq.length, PROMPT.length);
      assert.deepEqual(seq.tokens, PROMPT);
    }
    await assert.rejects(async () => seq.eval('11 22'), TypeError);
    // The sequence continues exactly where it was.
    assert.deepEqual(await seq.eval(MORE), refMoreLogits);
    seq.dispose();
  });

  test('the last id of the vocabulary (999) is accepted and 1000 is not', async () => {
    const seq = good.createSequence();
    const l = await seq.eval([VOCAB - 1]);
    assert.equal(l.length, VOCAB);
    assert.ok(l.every(Number.isFinite));
    await assert.rejects(async () => seq.eval([VOCAB]), /1000/);
    assert.equal(seq.length, 1);
    seq.dispose();
  });

  test('an out-of-range id: complete(ids) and generate(ids) reject naming the id; the model still works', async () => {
    for (const ids of [[1, 2, 1000], [VOCAB]]) {
      await assert.rejects(good.complete(ids, { maxNewTokens: 3, temperature: 0 }), (e) => e instanceof Error && /1000/.test(e.message));
      await assert.rejects(async () => {
        for await (const _ of good.generate(ids, { maxNewTokens: 3, temperature: 0 }));
      }, /1000/);
    }
    assert.deepEqual((await good.complete(PROMPT, { maxNewTokens: 6, temperature: 0 })).tokens, refGreedy);
  });

  test('negative and non-integer ids: complete(ids) returns a rejected promise naming the id (no synchronous throw)', async () => {
    for (const [ids, re] of [
      [[-1], /prompt\[0\].*-1/],
      [[1, 1.5], /prompt\[1\].*1\.5/],
      [[1, NaN], /prompt\[1\].*NaN/],
    ]) {
      // complete() returns a promise: a bad prompt must reject it, as bad options and id 1000 do,
      // not throw out of the call (a caller's .catch() would never see that).
      let p;
      assert.doesNotThrow(() => {
        p = good.complete(ids, { maxNewTokens: 3, temperature: 0 });
      }, `complete([${ids}]) threw synchronously instead of returning a rejected promise`);
      await assert.rejects(p, (e) => e instanceof RangeError && re.test(e.message), String(ids));
      // generate(): the error may come from the call or from the first next(); either way a
      // for-await in an async function sees it.
      await assert.rejects(async () => {
        for await (const _ of good.generate(ids, { maxNewTokens: 3, temperature: 0 }));
      }, re);
    }
    assert.deepEqual((await good.complete(PROMPT, { maxNewTokens: 6, temperature: 0 })).tokens, refGreedy);
  });

  test('a prompt longer than the context: eval throws, the sequence is unchanged and still usable', async () => {
    const ids = (n, from = 0) => Array.from({ length: n }, (_, i) => (from + i * 7) % VOCAB);
    const seq = good.createSequence();
    await assert.rejects(async () => seq.eval(ids(CTX + 1)), (e) => /context/i.test(e.message) && /128/.test(e.message));
    assert.equal(seq.length, 0);
    await seq.eval(ids(100));
    await assert.rejects(async () => seq.eval(ids(29, 5)), (e) => /context/i.test(e.message) && /128/.test(e.message));
    assert.equal(seq.length, 100);
    assert.deepEqual(seq.tokens, ids(100));
    // Filling the context exactly is allowed, and gives what a sequence that never failed gives.
    const filled = await seq.eval(ids(28, 5));
    const fresh = good.createSequence();
    await fresh.eval(ids(100));
    assert.deepEqual(filled, await fresh.eval(ids(28, 5)));
    assert.equal(seq.length, CTX);
    await assert.rejects(async () => seq.eval([1]), /context/i);
    assert.equal(seq.length, CTX);
    seq.dispose();
    fresh.dispose();
  });

  test('a prompt longer than the context: complete rejects; a prompt that fills it ends with "context"', async () => {
    const long = Array.from({ length: CTX + 1 }, (_, i) => (i * 3) % VOCAB);
    await assert.rejects(good.complete(long, { maxNewTokens: 4, temperature: 0 }), (e) => /context/i.test(e.message) && /128/.test(e.message));
    const r = await good.complete(long.slice(0, CTX), { maxNewTokens: 4, temperature: 0 });
    assert.equal(r.finishReason, 'context');
    assert.equal(r.tokens.length, 1);
    assert.deepEqual((await good.complete(PROMPT, { maxNewTokens: 6, temperature: 0 })).tokens, refGreedy);
  });

  test('an empty prompt: eval and complete reject; the sequence is still usable', async () => {
    const seq = good.createSequence();
    await assert.rejects(async () => seq.eval([]), (e) => /no token ids|empty/.test(e.message));
    await assert.rejects(async () => seq.evalAll(new Int32Array(0)), (e) => /no token ids|empty/.test(e.message));
    assert.equal(seq.length, 0);
    await assert.rejects(good.complete([], { maxNewTokens: 2 }), /empty/);
    assert.deepEqual(await seq.eval(PROMPT), refLogits);
    seq.dispose();
  });

  test('a disposed sequence: eval, evalAll and length throw naming "disposed"; dispose twice is fine', async () => {
    const seq = good.createSequence();
    await seq.eval(PROMPT);
    seq.dispose();
    await assert.rejects(async () => seq.eval(MORE), /disposed/);
    await assert.rejects(async () => seq.evalAll(MORE), /disposed/);
    assert.throws(() => seq.length, /disposed/);
    assert.throws(() => seq.tokens, /disposed/);
    seq.dispose();
    await assertGoodModelWorks();
  });

  test('a sequence disposed while its eval runs: the eval settles, nothing crashes', async () => {
    const seq = good.createSequence();
    const p = seq.eval(Array.from({ length: 120 }, (_, i) => i));
    seq.dispose();
    await p.then(
      (l) => assert.equal(l.length, VOCAB),
      (e) => assert.match(e.message, /dispos|abort/i),
    );
    await assert.rejects(async () => seq.eval([1]), /disposed/);
    await assertGoodModelWorks();
  });

  test('a disposed model: createSequence, complete, generate, memory and its sequences throw naming "disposed"; its files are unmapped', async () => {
    const dir = checkpoint();
    const m = await Model.load(dir, { device, contextLength: CTX });
    const seq = m.createSequence();
    await seq.eval(PROMPT);
    if (fs.existsSync('/proc/self/maps')) assert.match(fs.readFileSync('/proc/self/maps', 'utf8'), names(dir)); // the check below can see a mapping
    m.dispose();
    assert.throws(() => m.createSequence(), /disposed/);
    await assert.rejects(m.complete(PROMPT, { maxNewTokens: 2 }), /disposed/);
    await assert.rejects(async () => {
      for await (const _ of m.generate(PROMPT, { maxNewTokens: 2 }));
    }, /disposed/);
    assert.throws(() => m.memory(), /disposed/);
    await assert.rejects(async () => seq.eval(MORE), /disposed/);
    m.dispose();
    assertNotMapped(dir);
    await assertGoodModelWorks();
  });

  test('two evals on one sequence at once: the second throws naming "busy", the first succeeds', async () => {
    const seq = good.createSequence();
    const long = Array.from({ length: 120 }, (_, i) => (i * 13) % VOCAB);
    const first = seq.eval(long);
    assert.equal(seq.length, -1); // documented: -1 while busy
    assert.equal(seq.tokens, null);
    await assert.rejects(async () => seq.eval(MORE), /busy/);
    await assert.rejects(async () => seq.evalAll(MORE), /busy/);
    const got = await first;
    assert.equal(seq.length, long.length);
    assert.deepEqual(seq.tokens, long);
    const fresh = good.createSequence();
    assert.deepEqual(got, await fresh.eval(long));
    seq.dispose();
    fresh.dispose();
  });

  test('evals on two sequences of one model at once do not disturb each other', async () => {
    const a = good.createSequence();
    const b = good.createSequence();
    const other = Array.from({ length: 60 }, (_, i) => (i * 17 + 3) % VOCAB);
    const [la, lb] = await Promise.all([a.eval(PROMPT), b.eval(other)]);
    assert.deepEqual(la, refLogits);
    const c = good.createSequence();
    assert.deepEqual(lb, await c.eval(other));
    assert.deepEqual(await a.eval(MORE), refMoreLogits);
    for (const s of [a, b, c]) s.dispose();
  });

  describe('bad generation options', () => {
    const cases = [
      [{ temperature: -1 }, RangeError, /temperature/],
      [{ temperature: NaN }, RangeError, /temperature/],
      [{ topP: 2 }, RangeError, /topP/],
      [{ topK: -1 }, RangeError, /topK/],
      [{ maxNewTokens: 0 }, RangeError, /maxNewTokens/],
      [{ maxNewTokens: 2.5 }, RangeError, /maxNewTokens/],
      [{ repetitionPenalty: 0 }, RangeError, /repetitionPenalty/],
      [{ seed: -1 }, RangeError, /seed/],
      [{ seed: 0.5 }, RangeError, /seed/],
      [{ doSample: 'yes' }, TypeError, /doSample/],
      [{ temperature: '0.7' }, RangeError, /temperature/],
      [{ stop: [''] }, RangeError, /stop\[0\]/],
      [{ stop: ['ok', []] }, TypeError, /stop\[1\]/],
      [{ stop: [[1, 1000.5]] }, RangeError, /stop\[0\]/],
    ];
    for (const [opt, type, re] of cases) {
      test(`${JSON.stringify(opt)} is a ${type.name} naming the option (complete and generate)`, async () => {
        const check = (e) => e instanceof type && re.test(e.message);
        await assert.rejects(good.complete(PROMPT, { maxNewTokens: 3, ...opt }), check);
        await assert.rejects(async () => {
          for await (const _ of good.generate(PROMPT, { maxNewTokens: 3, ...opt }));
        }, check);
      });
    }
    test('after the rejected options the model generates as before', async () => {
      assert.deepEqual((await good.complete(PROMPT, { maxNewTokens: 6, temperature: 0 })).tokens, refGreedy);
    });
  });
});

// ==========================================================================================

describe('abort and early exit', () => {
  // A long context so that a generation runs for a while (2000 tokens: over a second here).
  const N = 2000;
  let long;
  before(async () => {
    long = await Model.load(TINY, { device, contextLength: N + 48 });
  });
  after(() => long?.dispose());

  async function greedy(k) {
    return (await long.complete(PROMPT, { maxNewTokens: k, temperature: 0 })).tokens;
  }

  test('abort through signal while iterating generate: AbortError after some tokens, with .partial', async () => {
    const ac = new AbortController();
    const seen = [];
    let err;
    try {
      for await (const c of long.generate(PROMPT, { maxNewTokens: N, temperature: 0, signal: ac.signal })) {
        seen.push(c.token);
        if (seen.length === 5) ac.abort();
      }
    } catch (e) {
      err = e;
    }
    assert.ok(err, 'the iterator did not throw');
    assert.equal(err.name, 'AbortError');
    assert.ok(err instanceof AbortError);
    const p = err.partial;
    assert.equal(p.finishReason, 'abort');
    assert.ok(p.tokens.length >= 5 && p.tokens.length < N, `partial has ${p.tokens.length} tokens`);
    assert.deepEqual(p.tokens.slice(0, seen.length), seen);
    assert.equal(p.usage.promptTokens, PROMPT.length);
    assert.equal(p.usage.completionTokens, p.tokens.length);
    // The tokens so far are the greedy ones, and the model completes a fresh request fine.
    assert.deepEqual(await greedy(p.tokens.length), p.tokens);
  });

  test('abort through signal during complete: rejects with AbortError holding the partial result', async () => {
    const ac = new AbortController();
    const t0 = performance.now();
    const p = long.complete(PROMPT, { maxNewTokens: N, temperature: 0, signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    let err;
    await assert.rejects(p, (e) => {
      err = e;
      return e.name === 'AbortError';
    });
    const elapsed = performance.now() - t0;
    const partial = err.partial;
    assert.equal(partial.finishReason, 'abort');
    assert.ok(partial.tokens.length > 0, 'no token before the abort (100 ms)');
    assert.ok(partial.tokens.length < N, 'the generation ran to its end');
    assert.ok(elapsed < 1000, `took ${elapsed.toFixed(0)} ms to stop`);
    assert.deepEqual(await greedy(partial.tokens.length), partial.tokens);
  });

  test('an already aborted signal rejects at once with an empty partial result', async () => {
    const signal = AbortSignal.abort();
    await assert.rejects(long.complete(PROMPT, { signal }), (e) => e.name === 'AbortError' && e.partial.tokens.length === 0);
    await assert.rejects(async () => {
      for await (const _ of long.generate(PROMPT, { signal }));
    }, (e) => e.name === 'AbortError');
    assert.deepEqual(await greedy(4), refGreedy.slice(0, 4));
  });

  test('breaking out of for-await stops the generation; the model then works', async () => {
    const seen = [];
    let broke = 0;
    for await (const c of long.generate(PROMPT, { maxNewTokens: N, temperature: 0 })) {
      seen.push(c.token);
      if (seen.length === 3) {
        broke = performance.now();
        break;
      }
    }
    const exit = performance.now() - broke;
    assert.equal(seen.length, 3);
    // Leaving the loop waits for the native run to stop: it must stop now, not run its 2000 tokens.
    assert.ok(exit < 400, `leaving the loop took ${exit.toFixed(0)} ms`);
    assert.deepEqual(seen, refGreedy.slice(0, 3));
    assert.deepEqual(await greedy(6), refGreedy);
  });

  test('throwing inside for-await stops the generation and surfaces the thrown error', async () => {
    const boom = new Error('consumer failed');
    await assert.rejects(async () => {
      for await (const _ of long.generate(PROMPT, { maxNewTokens: N, temperature: 0 })) throw boom;
    }, (e) => e === boom);
    assert.deepEqual(await greedy(6), refGreedy);
  });

  test('disposing the model during a generation ends it with an error; the process goes on', async () => {
    const m = await Model.load(TINY, { device, contextLength: N + 48 });
    const seen = [];
    const run = (async () => {
      for await (const c of m.generate(PROMPT, { maxNewTokens: N, temperature: 0 })) {
        seen.push(c.token);
        if (seen.length === 3) m.dispose();
      }
    })();
    await assert.rejects(run, (e) => e instanceof Error && (e.name === 'AbortError' || /disposed/.test(e.message)));
    assert.throws(() => m.createSequence(), /disposed/);
    assert.deepEqual(await greedy(6), refGreedy);
  });
});
