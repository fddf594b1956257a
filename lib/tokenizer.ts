import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tiktoken } from 'tiktoken/lite';

/** Qwen's pre-tokenization split regex (SPEC 6). */
export const PAT_STR =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

export const ENDOFTEXT = '<|endoftext|>';
export const IM_START = '<|im_start|>';
export const IM_END = '<|im_end|>';
/** Special ids are fixed, not appended after the ranks, so a shorter vocab file cannot shift them. */
export const SPECIAL_START_ID = 151643;
const NUM_EXTRAS = 205;
export const VOCAB_FILE = 'qwen.tiktoken';

function qwenSpecialTokens(): Map<string, number> {
  const names = [ENDOFTEXT, IM_START, IM_END];
  for (let i = 0; i < NUM_EXTRAS; i++) names.push(`<|extra_${i}|>`);
  return new Map(names.map((n, i) => [n, SPECIAL_START_ID + i]));
}

// ignoreBOM: a leading U+FEFF is content here; Python's "utf-8" codec keeps it, TextDecoder would drop it.
const UTF8_OPTS = { fatal: false, ignoreBOM: true } as const;
const utf8 = new TextDecoder('utf-8', UTF8_OPTS);

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const RANK_RE = /^\d+$/;

interface Vocab {
  /** Canonical "base64 rank" lines: the WASM parser panics (unrecoverably) on anything else. */
  bpeText: string;
  /** token id -> bytes, as offsets into one buffer; offsets[id] === offsets[id+1] means "no such id". */
  bytes: Uint8Array;
  offsets: Uint32Array;
}

// Yields every few thousand lines so the async loader can let the event loop turn: parsing the
// 151643-line vocabulary takes a few hundred milliseconds.
function* parseVocabSteps(text: string, file: string, specials: Map<string, number>): Generator<void, Vocab> {
  const bad = (msg: string) => new Error(`Corrupt tokenizer file ${file}: ${msg}`);
  const lines = text.split('\n');
  yield;
  const ranks: number[] = [];
  const pieces: Buffer[] = [];
  for (let lineNo = 0; lineNo < lines.length; lineNo++) {
    if (lineNo % 2048 === 2047) yield;
    const line = lines[lineNo].trim();
    if (!line) continue;
    const parts = line.split(/\s+/);
    if (parts.length !== 2) {
      // A git checkout without symlink support leaves the link target as the file's whole content.
      const hint = lines.length <= 2 && parts.length === 1 ? ` (looks like an unresolved symlink to "${line}")` : '';
      throw bad(`line ${lineNo + 1} is not "<base64> <rank>"${hint}`);
    }
    const [b64, rankText] = parts;
    if (!B64_RE.test(b64) || b64.length === 0) throw bad(`line ${lineNo + 1}: invalid base64 "${b64}"`);
    if (!RANK_RE.test(rankText)) throw bad(`line ${lineNo + 1}: rank "${rankText}" is not a non-negative integer`);
    const rank = Number(rankText);
    if (rank >= SPECIAL_START_ID) throw bad(`line ${lineNo + 1}: rank ${rank} collides with the special-token ids`);
    ranks.push(rank);
    pieces.push(Buffer.from(b64, 'base64'));
  }
  yield;
  return buildVocab(pieces, ranks, specials, bad);
}

/** The vocabulary tables from token bytes and their ranks (= ids), plus the special tokens' ids. */
function buildVocab(pieces: Buffer[], ranks: number[], specials: Map<string, number>, bad: (msg: string) => Error): Vocab {
  if (ranks.length === 0) throw bad('no tokens');
  let maxRank = -1;
  for (const r of ranks) if (r > maxRank) maxRank = r;
  const specialBytes = new Map<number, Buffer>();
  for (const [name, id] of specials) specialBytes.set(id, Buffer.from(name, 'utf8'));
  const size = Math.max(maxRank, ...specialBytes.keys()) + 1;
  const lengths = new Uint32Array(size);
  const byId: (Buffer | undefined)[] = new Array(size);
  const canonical: string[] = [];
  ranks.forEach((r, i) => {
    if (byId[r]) throw bad(`rank ${r} appears twice`);
    byId[r] = pieces[i];
    canonical.push(`${pieces[i].toString('base64')} ${r}`);
  });
  for (const [id, b] of specialBytes) byId[id] = b;
  let total = 0;
  for (let id = 0; id < size; id++) total += lengths[id] = byId[id]?.length ?? 0;
  const bytes = new Uint8Array(total);
  const offsets = new Uint32Array(size + 1);
  for (let id = 0; id < size; id++) {
    const b = byId[id];
    if (b) bytes.set(b, offsets[id]);
    offsets[id + 1] = offsets[id] + lengths[id];
  }
  return { bpeText: canonical.join('\n'), bytes, offsets };
}

/**
 * GPT-2's bytes_to_unicode: the printable character that stands for each byte in a byte-level BPE
 * vocab.json / tokenizer.json (Qwen1.5/2/2.5/3 ship those). Returns char code -> byte.
 */
function unicodeToBytes(): Map<number, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  return new Map(cs.map((c, i) => [c, bs[i]]));
}
let BYTE_DECODER: Map<number, number> | null = null;

/**
 * A byte-level BPE vocabulary (vocab.json's object, or tokenizer.json's model.vocab: token string ->
 * id) as tiktoken ranks: rank = id, token bytes through the GPT-2 byte table. Qwen's merges follow
 * the ranks (the vocabulary was converted from the same tiktoken file), so BPE by rank alone gives
 * the same ids as by merges.txt; merges are not read. Ids that are also special tokens are skipped.
 */
function* parseByteLevelVocabSteps(
  vocab: unknown,
  file: string,
  specials: Map<string, number>,
): Generator<void, Vocab> {
  const bad = (msg: string) => new Error(`Corrupt tokenizer file ${file}: ${msg}`);
  if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab)) throw bad('the vocabulary is not an object of token -> id');
  const dec = (BYTE_DECODER ??= unicodeToBytes());
  const specialIds = new Set(specials.values());
  const ranks: number[] = [];
  const pieces: Buffer[] = [];
  let i = 0;
  for (const [tok, id] of Object.entries(vocab as Record<string, unknown>)) {
    if (++i % 2048 === 0) yield;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 0x7fffffff)
      throw bad(`token ${JSON.stringify(tok)} has id ${JSON.stringify(id)}, not a non-negative integer`);
    if (specialIds.has(id)) continue;
    const b = Buffer.allocUnsafe(tok.length);
    for (let k = 0; k < tok.length; k++) {
      const v = dec.get(tok.charCodeAt(k));
      if (v === undefined) throw bad(`token ${JSON.stringify(tok)} (id ${id}) is not byte-level BPE text`);
      b[k] = v;
    }
    ranks.push(id);
    pieces.push(b);
  }
  yield;
  return buildVocab(pieces, ranks, specials, bad);
}

/** Special tokens from tokenizer.json's added_tokens or tokenizer_config.json's added_tokens_decoder. */
function addedTokens(list: unknown, file: string): Map<string, number> {
  const out = new Map<string, number>();
  const add = (content: unknown, id: unknown) => {
    if (typeof content !== 'string' || content === '' || typeof id !== 'number' || !Number.isInteger(id) || id < 0)
      throw new Error(`Corrupt tokenizer file ${file}: added token ${JSON.stringify(content)} with id ${JSON.stringify(id)}`);
    out.set(content, id);
  };
  if (Array.isArray(list)) for (const t of list) add(t?.content, t?.id);
  else if (list && typeof list === 'object')
    for (const [id, t] of Object.entries(list as Record<string, { content?: unknown }>)) add(t?.content, Number(id));
  return out;
}

/** The special tokens of Qwen1.5/2/2.5 when a vocab.json comes without tokenizer_config.json. */
function qwen2DefaultSpecials(): Map<string, number> {
  return new Map([
    [ENDOFTEXT, SPECIAL_START_ID],
    [IM_START, SPECIAL_START_ID + 1],
    [IM_END, SPECIAL_START_ID + 2],
  ]);
}

function parseJson(text: string, file: string): Record<string, unknown> {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`Corrupt tokenizer file ${file}: invalid JSON (${(err as Error).message})`);
  }
}

/** Which vocabulary files a checkpoint folder holds, in order of preference. */
export const VOCAB_FILES = [VOCAB_FILE, 'tokenizer.json', 'vocab.json'] as const;

interface Parsed {
  steps: Generator<void, Vocab>;
  specials: Map<string, number>;
}

/**
 * The parser for `file` (already read as `text`): qwen.tiktoken (Qwen v1), tokenizer.json
 * (model.vocab + added_tokens), or vocab.json (+ tokenizer_config.json's added_tokens_decoder
 * beside it for the special tokens; merges.txt is not needed, see parseByteLevelVocabSteps).
 */
function parserFor(file: string, text: string, readSibling: (name: string) => string | null): Parsed {
  const base = path.basename(file);
  if (!base.endsWith('.json')) {
    const specials = qwenSpecialTokens();
    return { steps: parseVocabSteps(text, file, specials), specials };
  }
  const j = parseJson(text, file);
  const model = j.model as Record<string, unknown> | undefined;
  if (model && typeof model === 'object' && 'vocab' in model) {
    if (model.type !== undefined && model.type !== 'BPE')
      throw new Error(`Tokenizer file ${file}: model type ${JSON.stringify(model.type)} is not supported (supported: byte-level BPE)`);
    const specials = addedTokens(j.added_tokens, file);
    return { steps: parseByteLevelVocabSteps(model.vocab, file, specials), specials };
  }
  let specials = qwen2DefaultSpecials();
  const cfgText = readSibling('tokenizer_config.json');
  if (cfgText !== null) {
    const cfgFile = path.join(path.dirname(file), 'tokenizer_config.json');
    const found = addedTokens(parseJson(cfgText, cfgFile).added_tokens_decoder, cfgFile);
    if (found.size) specials = found;
  }
  return { steps: parseByteLevelVocabSteps(j, file, specials), specials };
}

export type TokenIds = ArrayLike<number>;

export class Tokenizer {
  readonly eodId: number;
  readonly imStartId: number;
  readonly imEndId: number;
  /** One past the largest id (151851 for Qwen): the tokenizer's id space, not the model's padded vocab. */
  readonly vocabSize: number;
  readonly specialTokens: ReadonlyMap<string, number>;
  readonly path: string;
  // Built on first encode: npm tiktoken's WASM constructor takes ~100 ms on one thread, which
  // would otherwise stall the event loop inside every Model.load.
  private enc: Tiktoken | null | undefined = undefined;
  private freed = false;
  private readonly vocab: Vocab;

  private constructor(file: string, vocab: Vocab, specials: Map<string, number>) {
    this.vocab = vocab;
    this.path = file;
    this.specialTokens = specials;
    const eod = specials.get(ENDOFTEXT);
    if (eod === undefined) throw new Error(`Tokenizer file ${file}: no ${ENDOFTEXT} special token`);
    this.eodId = eod;
    // Every Qwen vocabulary has them; -1 ("never produced") for a foreign one that does not.
    this.imStartId = specials.get(IM_START) ?? -1;
    this.imEndId = specials.get(IM_END) ?? -1;
    this.vocabSize = this.vocab.offsets.length - 1;
  }

  private static resolve(dirOrFile: string, isDir: boolean): string {
    if (!isDir) return dirOrFile;
    for (const f of VOCAB_FILES) if (fs.existsSync(path.join(dirOrFile, f))) return path.join(dirOrFile, f);
    return path.join(dirOrFile, VOCAB_FILE);
  }

  private static sibling(file: string): (name: string) => string | null {
    return (name) => {
      try {
        return fs.readFileSync(path.join(path.dirname(file), name), 'utf8');
      } catch {
        return null;
      }
    };
  }

  private static readError(file: string, err: unknown): Error {
    const code = (err as NodeJS.ErrnoException)?.code;
    const what = code === 'ENOENT' ? 'not found' : `could not be read (${code ?? String(err)})`;
    return new Error(`Tokenizer file ${file} ${what}`, { cause: err });
  }

  /**
   * Load from a checkpoint folder (its qwen.tiktoken, else tokenizer.json, else vocab.json) or from
   * the path of one of those files.
   */
  static async load(dirOrFile: string): Promise<Tokenizer> {
    let file = dirOrFile;
    let text: string;
    try {
      file = Tokenizer.resolve(dirOrFile, (await fs.promises.stat(dirOrFile)).isDirectory());
      text = await fs.promises.readFile(file, 'utf8');
    } catch (err) {
      throw Tokenizer.readError(file, err);
    }
    const { steps, specials } = parserFor(file, text, Tokenizer.sibling(file));
    let r = steps.next();
    while (!r.done) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      r = steps.next();
    }
    return new Tokenizer(file, r.value, specials);
  }

  static fromFile(dirOrFile: string): Tokenizer {
    let file = dirOrFile;
    let text: string;
    try {
      file = Tokenizer.resolve(dirOrFile, fs.statSync(dirOrFile).isDirectory());
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw Tokenizer.readError(file, err);
    }
    const { steps, specials } = parserFor(file, text, Tokenizer.sibling(file));
    let r = steps.next();
    while (!r.done) r = steps.next();
    return new Tokenizer(file, r.value, specials);
  }

  /**
   * allowSpecial false (default, and always for user content): special-token text stays plain text.
   * Never throws on special-token text, unlike tiktoken's own default.
   */
  encode(text: string, opts: { allowSpecial?: boolean } = {}): number[] {
    if (this.freed) throw new Error('Tokenizer has been freed');
    this.enc ??= new Tiktoken(this.vocab.bpeText, Object.fromEntries(this.specialTokens), PAT_STR);
    const nfc = text.normalize('NFC');
    const ids = opts.allowSpecial ? this.enc.encode(nfc, 'all', []) : this.enc.encode_ordinary(nfc);
    return Array.from(ids);
  }

  /** Bytes of one token (a view; do not modify). Special ids give their text. */
  tokenBytes(id: number): Uint8Array {
    const { offsets, bytes } = this.vocab;
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || offsets[id] === offsets[id + 1]) {
      throw new RangeError(`Token id ${id} is not in the vocabulary [0, ${this.vocabSize})`);
    }
    return bytes.subarray(offsets[id], offsets[id + 1]);
  }

  decodeBytes(ids: TokenIds): Uint8Array {
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const b = this.tokenBytes(ids[i]);
      parts.push(b);
      total += b.length;
    }
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** Bytes are joined before UTF-8 decoding, so characters split across tokens come out whole. */
  decode(ids: TokenIds): string {
    return utf8.decode(this.decodeBytes(ids));
  }

  /** Releases the WASM encoder; decode keeps working, encode throws. */
  free(): void {
    this.enc?.free();
    this.enc = null;
    this.freed = true;
  }
}

/** Incremental decode for streaming output: emits only complete characters. */
export class TextStreamDecoder {
  private decoder = new TextDecoder('utf-8', UTF8_OPTS);

  constructor(private readonly tok: Tokenizer) {}

  push(id: number): string {
    return this.decoder.decode(this.tok.tokenBytes(id), { stream: true });
  }

  /** Ends the stream: a dangling partial character becomes U+FFFD. The decoder can then be reused. */
  flush(): string {
    return this.decoder.decode();
  }
}
