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
  const ranks: number[] = [];
  const pieces: Buffer[] = [];
  const canonical: string[] = [];
  let maxRank = -1;
  for (let lineNo = 0; lineNo < lines.length; lineNo++) {
    if (lineNo % 8192 === 8191) yield;
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
    canonical.push(`${b64} ${rank}`);
    if (rank > maxRank) maxRank = rank;
  }
  if (ranks.length === 0) throw bad('no tokens');
  yield;

  const specialBytes = new Map<number, Buffer>();
  for (const [name, id] of specials) specialBytes.set(id, Buffer.from(name, 'utf8'));
  const size = Math.max(maxRank, ...specialBytes.keys()) + 1;
  const lengths = new Uint32Array(size);
  const byId: (Buffer | undefined)[] = new Array(size);
  ranks.forEach((r, i) => {
    if (byId[r]) throw bad(`rank ${r} appears twice`);
    byId[r] = pieces[i];
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
    this.eodId = specials.get(ENDOFTEXT)!;
    this.imStartId = specials.get(IM_START)!;
    this.imEndId = specials.get(IM_END)!;
    this.vocabSize = this.vocab.offsets.length - 1;
  }

  private static resolve(dirOrFile: string, isDir: boolean): string {
    return isDir ? path.join(dirOrFile, VOCAB_FILE) : dirOrFile;
  }

  private static readError(file: string, err: unknown): Error {
    const code = (err as NodeJS.ErrnoException)?.code;
    const what = code === 'ENOENT' ? 'not found' : `could not be read (${code ?? String(err)})`;
    return new Error(`Tokenizer file ${file} ${what}`, { cause: err });
  }

  /** Load from a checkpoint folder (its qwen.tiktoken) or from the path of a qwen.tiktoken file. */
  static async load(dirOrFile: string): Promise<Tokenizer> {
    let file = dirOrFile;
    let text: string;
    try {
      file = Tokenizer.resolve(dirOrFile, (await fs.promises.stat(dirOrFile)).isDirectory());
      text = await fs.promises.readFile(file, 'utf8');
    } catch (err) {
      throw Tokenizer.readError(file, err);
    }
    const specials = qwenSpecialTokens();
    const steps = parseVocabSteps(text, file, specials);
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
    const specials = qwenSpecialTokens();
    const steps = parseVocabSteps(text, file, specials);
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
