import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer, TextStreamDecoder } from '../dist/tokenizer.js';

const FIXTURES = process.env.QWEN_FIXTURES ?? fileURLToPath(new URL('../../shared/fixtures/', import.meta.url));
const TOK_DIR = path.join(FIXTURES, 'tokenizer');
const fixture = JSON.parse(fs.readFileSync(path.join(TOK_DIR, 'cases.json'), 'utf8'));
const tok = await Tokenizer.load(TOK_DIR);

test('fixture has the 176 cases and the special tokens of SPEC 6', () => {
  assert.equal(fixture.cases.length, 176);
  assert.equal(fixture.normalize, 'NFC');
  assert.deepEqual(Object.fromEntries(tok.specialTokens), fixture.special_tokens);
  assert.equal(tok.vocabSize, Math.max(...Object.values(fixture.special_tokens)) + 1);
  assert.deepEqual([tok.eodId, tok.imStartId, tok.imEndId],
    ['<|endoftext|>', '<|im_start|>', '<|im_end|>'].map((s) => fixture.special_tokens[s]));
});

test('encode / decode match the original on every fixture case', () => {
  for (const [i, c] of fixture.cases.entries()) {
    const label = `case ${i}: ${JSON.stringify(c.text).slice(0, 60)}`;
    assert.deepEqual(tok.encode(c.text, { allowSpecial: true }), c.ids_all_special, label);
    assert.deepEqual(tok.encode(c.text), c.ids_plain, label);
    assert.deepEqual(tok.encode(c.text, { allowSpecial: false }), c.ids_plain, label);
    assert.equal(tok.decode(c.ids_plain), c.decoded_plain, label);
    assert.equal(tok.decode(Uint32Array.from(c.ids_all_special)), c.decoded_plain, label);
  }
});

test('streaming decode, one id at a time, equals the full decode and never emits broken characters', () => {
  const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
  let sawSplitChar = false;
  for (const [i, c] of fixture.cases.entries()) {
    for (const ids of [c.ids_plain, c.ids_all_special]) {
      const full = tok.decode(ids);
      const sd = new TextStreamDecoder(tok);
      let out = '';
      for (const id of ids) {
        const piece = sd.push(id);
        if (piece === '' && tok.tokenBytes(id).length > 0) sawSplitChar = true;
        assert.ok(!LONE_SURROGATE.test(piece), `case ${i}: lone surrogate in ${JSON.stringify(piece)}`);
        if (!full.includes('\uFFFD')) assert.ok(!piece.includes('\uFFFD'), `case ${i}: U+FFFD mid-stream`);
        out += piece;
      }
      out += sd.flush();
      assert.equal(out, full, `case ${i}`);
    }
  }
  assert.ok(sawSplitChar, 'fixtures should include characters split across tokens');
});

test('decode replaces invalid UTF-8 like Python errors="replace"; streaming flush agrees', () => {
  // A token whose bytes are one lone lead byte of a multi-byte character.
  const partial = fixture.cases.flatMap((c) => c.ids_plain)
    .find((id) => { const b = tok.tokenBytes(id); return b.length === 1 && b[0] >= 0xc2; });
  assert.ok(partial !== undefined);
  const ascii = tok.encode('A');
  assert.equal(tok.decode([partial, ...ascii]), '\uFFFDA');
  const sd = new TextStreamDecoder(tok);
  assert.equal(sd.push(partial), '');
  assert.equal(sd.flush(), '\uFFFD');
  assert.deepEqual(Array.from(tok.decodeBytes([partial, ...ascii])), [...tok.tokenBytes(partial), 0x41]);
});

test('a leading byte-order mark survives decoding (TextDecoder would drop it by default)', () => {
  const text = '\uFEFFhello';
  assert.equal(tok.decode(tok.encode(text)), text);
  const sd = new TextStreamDecoder(tok);
  assert.equal(tok.encode(text).map((id) => sd.push(id)).join('') + sd.flush(), text);
});

test('special-token text in user content stays plain text', () => {
  const specialIds = new Set(tok.specialTokens.values());
  for (const name of tok.specialTokens.keys()) {
    const text = `say ${name} now`;
    const plain = tok.encode(text);
    assert.ok(plain.every((id) => !specialIds.has(id)), name);
    assert.equal(tok.decode(plain), text);
    assert.ok(tok.encode(text, { allowSpecial: true }).includes(tok.specialTokens.get(name)), name);
  }
  assert.equal(tok.decode([tok.imStartId, tok.imEndId, tok.eodId]), '<|im_start|><|im_end|><|endoftext|>');
});

test('input is NFC-normalized before encoding', () => {
  const nfd = 'Cafe\u0301 n\u0303';
  assert.notEqual(nfd, nfd.normalize('NFC'));
  assert.deepEqual(tok.encode(nfd), tok.encode(nfd.normalize('NFC')));
});

test('out-of-range and non-integer ids throw a RangeError naming the id', () => {
  for (const id of [tok.vocabSize, -1, 1e9, 1.5, NaN]) {
    assert.throws(() => tok.decode([1, id]), (e) => e instanceof RangeError && e.message.includes(String(id)));
    assert.throws(() => new TextStreamDecoder(tok).push(id), RangeError);
  }
  assert.equal(typeof tok.decode([tok.vocabSize - 1]), 'string');
});

test('missing or corrupt tokenizer files throw errors naming the path', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen-tok-'));
  try {
    const missing = path.join(dir, 'qwen.tiktoken');
    await assert.rejects(Tokenizer.load(dir), (e) => e.message.includes(missing));
    await assert.rejects(Tokenizer.load(path.join(dir, 'nope')), (e) => e.message.includes(path.join(dir, 'nope')));
    assert.throws(() => Tokenizer.fromFile(dir), (e) => e.message.includes(missing));

    const corrupt = {
      'bad base64': 'IQ== 0\nI*Q= 1\n',
      'bad rank': 'IQ== 0\nIg== x1\n',
      'fractional rank': 'IQ== 0\nIg== 1.5\n',
      'missing rank': 'IQ== 0\nIg==\n',
      'rank in special range': 'IQ== 151645\n',
      'duplicate rank': 'IQ== 0\nIg== 0\n',
      empty: '',
    };
    for (const [what, text] of Object.entries(corrupt)) {
      fs.writeFileSync(missing, text);
      await assert.rejects(Tokenizer.load(missing), (e) => e.message.includes(missing), what);
    }

    // A short but well-formed vocabulary loads; ids absent from it are rejected on decode.
    fs.writeFileSync(missing, 'IQ== 0\r\nIg== 2\r\n');
    const small = Tokenizer.fromFile(dir);
    assert.equal(small.decode([0, 2, small.imEndId]), '!"<|im_end|>');
    assert.throws(() => small.decode([1]), RangeError);
    small.free();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('load accepts the file path as well as the folder; free() stops encode but not decode', async () => {
  const t = await Tokenizer.load(path.join(TOK_DIR, 'qwen.tiktoken'));
  const ids = t.encode('hello world');
  assert.deepEqual(ids, tok.encode('hello world'));
  t.free();
  assert.throws(() => t.encode('x'), /freed/);
  assert.equal(t.decode(ids), 'hello world');
});
