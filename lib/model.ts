// The public API: Model (load, sequences, generate, complete, chat) and Sequence (one KV cache).
// Options are validated here, with messages that name the option, before anything reaches C++.
import fs from 'node:fs';
import path from 'node:path';
import { randomInt } from 'node:crypto';

import { native, type NativeConfig, type NativeLogprobs, type NativeModel, type NativeSequence } from './native';
import { TextStreamDecoder, Tokenizer, VOCAB_FILES } from './tokenizer';
import {
  chatStopIds,
  decodeReply,
  makeChatMLContext,
  makeContext,
  parseChatTemplate,
  type ChatFormat,
  type ChatTemplateInfo,
  type HistoryTurn,
} from './chat';

export type Device = 'cpu' | 'cuda' | 'auto';

export interface LoadOptions {
  /** 'auto' (default): CUDA when the addon has it and a GPU is present, else the CPU. */
  device?: Device;
  /** Which GPU (CUDA), default 0. */
  deviceIndex?: number;
  /**
   * Positions one sequence can hold (KV cache size); default config.json's seq_length. A createSequence() sequence's cache
   * holds all of them; the sequence a generate/complete/chat call makes for itself holds only its
   * prompt + maxNewTokens (at most this), so many short requests fit.
   */
  contextLength?: number;
  /** CPU worker threads; default all cores. */
  threads?: number;
  /**
   * KV cache storage: 'float', or 'int8' (one uint8 scale/zero per token and head: about 1/4 of
   * fp32's bytes). Default 'auto': 'int8' when config.json sets use_cache_quantization.
   */
  kvCache?: 'auto' | 'float' | 'int8';
  /**
   * Generations decoded together: concurrent generate/complete/chat calls share each forward pass
   * (continuous batching), up to this many sequences at once; default 16.
   */
  maxBatch?: number;
  /**
   * Generations that may wait for a place in the batch; one more is refused with an Error
   * ("queue is full"). Default 64.
   */
  maxQueue?: number;
  /** A Tokenizer, or the path of a qwen.tiktoken file / folder; default: the checkpoint's own. */
  tokenizer?: Tokenizer | string | null;
  /** Called with the fraction of weight bytes loaded, 0..1. */
  onProgress?: (progress: { fraction: number }) => void;
}

export interface ModelConfig extends NativeConfig {}

/** generation_config.json, as read (snake_case keys, as the file spells them). */
export interface GenerationConfig {
  chat_format?: ChatFormat;
  eos_token_id?: number | number[];
  stop_words_ids?: number[][];
  max_new_tokens?: number;
  max_window_size?: number;
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  [key: string]: unknown;
}

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 = greedy. */
  temperature?: number;
  topP?: number;
  /** 0 = off. */
  topK?: number;
  repetitionPenalty?: number;
  /** false = greedy whatever the temperature. Default: generation_config.json's do_sample. */
  doSample?: boolean;
  /** Integer seed: the same seed, prompt and options give the same tokens. Default: random. */
  seed?: number;
  /** Stop strings (matched on the text) and/or token-id sequences, on top of the checkpoint's eos. */
  stop?: ReadonlyArray<string | readonly number[]>;
  /**
   * Token log-probabilities: every generated token comes with its log-probability and this many
   * most likely alternatives of its step, 0..20 (0: the chosen token's only). Left out: none, at no
   * cost. They are the model's own distribution: log_softmax of the step's raw logits, before the
   * repetition penalty, temperature, top-k and top-p reshape it for sampling.
   */
  logprobs?: number;
  signal?: AbortSignal;
}

/** The most alternatives option logprobs may ask for (csrc/core/sampler.h kMaxTopLogprobs). */
export const MAX_LOGPROBS = 20;

/** A token and its log-probability at one step. */
export interface TokenLogprob {
  /** The token id. */
  token: number;
  /**
   * The token's bytes decoded alone: a piece of a multi-byte character (tokens may split one)
   * becomes U+FFFD. '' without a tokenizer, or for an id it has no bytes for (a padded
   * vocabulary's extra rows).
   */
  text: string;
  /** The token's raw bytes (UTF-8, possibly part of a character); [] where `text` is ''. */
  bytes: number[];
  /** Natural log of its probability under the model (log_softmax of the step's raw logits). */
  logprob: number;
}

/** A generated token's log-probability and the step's most likely tokens (option logprobs). */
export interface TokenLogprobs extends TokenLogprob {
  /**
   * The step's `logprobs` most likely tokens, most likely first (equal ones by lower id); the
   * generated token is among them when it ranks that high.
   */
  top: TokenLogprob[];
}

export interface GenerateChunk {
  token: number;
  /** New text: only complete UTF-8 characters (a partial one waits for the next token). */
  text: string;
  /**
   * With option logprobs: those of `token`. Absent from a last chunk that only flushes text held
   * back (a partial character, the tail a stop string may still claim).
   */
  logprobs?: TokenLogprobs;
}

export type FinishReason = 'stop' | 'length' | 'context' | 'abort';

export interface CompletionResult {
  text: string;
  /** Every generated id, including the stop token that ended generation (as Qwen's generate returns). */
  tokens: number[];
  /** With option logprobs: one entry per id of `tokens`, the stop token's included. */
  logprobs?: TokenLogprobs[];
  finishReason: FinishReason;
  usage: { promptTokens: number; completionTokens: number; totalTokens: number };
}

export interface ChatOptions extends GenerateOptions {
  history?: readonly HistoryTurn[];
  /**
   * Default "You are a helpful assistant." (Qwen v1); for qwen2/qwen3 checkpoints, the default of the
   * chat template in tokenizer_config.json (Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...";
   * Qwen3: none).
   */
  system?: string;
  /** Qwen3 only: false disables thinking (the reply opens with an empty <think></think> block). */
  enableThinking?: boolean;
  /** Default: generation_config.json's max_window_size, else 6144. */
  maxWindowSize?: number;
  stream?: boolean;
}

export interface ChatResult extends CompletionResult {
  /** The history with this turn appended, ready for the next call. */
  history: { query: string; response: string }[];
}

/** More concurrent generations than maxBatch + maxQueue: retry later (the server answers 503). */
export class QueueFullError extends Error {
  readonly code = 'QWEN_QUEUE_FULL';
  constructor(message: string) {
    super(message);
    this.name = 'QueueFullError';
  }
}

export class AbortError extends Error {
  readonly partial: CompletionResult;
  constructor(partial: CompletionResult) {
    super('generation aborted');
    this.name = 'AbortError';
    this.partial = partial;
  }
}

function checkNumber(name: string, v: unknown, min: number, max: number, integer = false): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || Number.isNaN(v) || v < min || v > max || (integer && !Number.isInteger(v)))
    throw new RangeError(`option ${name} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}], got ${String(v)}`);
}

function readJsonIfExists(file: string): Record<string, unknown> | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: invalid JSON (${(err as Error).message})`);
  }
}

/**
 * One sequence: a KV cache that `eval` appends to. The cache is allocated by the sequence's first
 * eval or generation, on the native thread, so an out-of-memory error surfaces there: a page of
 * 64 positions, then another page each time the sequence needs one (up to contextLength).
 */
export class Sequence {
  #native: NativeSequence | null;
  readonly #model: Model;
  /** @internal */
  readonly ref: WeakRef<Sequence> = new WeakRef(this);

  /** @internal */
  constructor(model: Model, seq: NativeSequence) {
    this.#model = model;
    this.#native = seq;
  }

  #live(what: string): NativeSequence {
    if (!this.#native) throw new Error(`${what}: the sequence has been disposed`);
    return this.#native;
  }

  /** Tokens in the cache (-1 while an eval or generation runs on it). */
  get length(): number {
    return this.#live('length').length();
  }

  /** The ids in the cache, or null while busy. */
  get tokens(): number[] | null {
    const t = this.#live('tokens').tokens();
    return t ? Array.from(t) : null;
  }

  /** Feeds ids after what the cache holds; resolves to the logits of the last position fed. */
  eval(ids: readonly number[] | Int32Array): Promise<Float32Array> {
    return this.#live('eval').eval(toIds(ids, 'ids'), false);
  }

  /** Like eval, but returns the logits of every position fed ([ids.length * vocab]). */
  evalAll(ids: readonly number[] | Int32Array): Promise<Float32Array> {
    return this.#live('evalAll').eval(toIds(ids, 'ids'), true);
  }

  /** @internal */
  get native(): NativeSequence {
    return this.#live('generate');
  }

  /** Frees the cache now (or, if a generation runs on it, aborts it and frees when it stops). */
  dispose(): void {
    this.#native?.dispose();
    this.#native = null;
    this.#model._forget(this);
  }
}

function toIds(ids: readonly number[] | Int32Array, what: string): Int32Array {
  if (ids instanceof Int32Array) return ids;
  if (!Array.isArray(ids)) throw new TypeError(`${what} must be an array of token ids`);
  const out = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const v = ids[i];
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw new RangeError(`${what}[${i}] = ${String(v)} is not a valid token id`);
    out[i] = v;
  }
  return out;
}

export class Model {
  readonly dir: string;
  readonly config: ModelConfig;
  readonly generationConfig: GenerationConfig;
  readonly tokenizer: Tokenizer | null;
  /** Where it runs: "cpu (N threads)" or the GPU's name. */
  readonly device: string;
  readonly contextLength: number;
  #native: NativeModel | null;
  // Weak: a sequence the caller drops is garbage-collected (and its native cache freed) even
  // before the model is disposed; dispose() frees the ones still alive.
  readonly #sequences = new Set<WeakRef<Sequence>>();
  readonly #forgetDead = new FinalizationRegistry<WeakRef<Sequence>>((ref) => this.#sequences.delete(ref));
  // qwen2/qwen3: tokenizer_config.json's chat template (null: not ChatML; undefined: none given).
  #chatTemplate: ChatTemplateInfo | null | undefined = undefined;

  private constructor(dir: string, nm: NativeModel, gen: GenerationConfig, tok: Tokenizer | null) {
    this.dir = dir;
    this.#native = nm;
    this.config = nm.config();
    this.generationConfig = gen;
    this.tokenizer = tok;
    this.device = nm.backend();
    this.contextLength = nm.contextLength();
  }

  static async load(dir: string, options: LoadOptions = {}): Promise<Model> {
    if (typeof dir !== 'string' || dir === '') throw new TypeError('Model.load: dir must be a checkpoint folder path');
    const o = options;
    const device = o.device ?? 'auto';
    if (!['cpu', 'cuda', 'auto'].includes(device)) throw new RangeError(`option device must be 'cpu', 'cuda' or 'auto', got ${String(device)}`);
    checkNumber('deviceIndex', o.deviceIndex, 0, 1024, true);
    checkNumber('contextLength', o.contextLength, 1, 1 << 24, true);
    checkNumber('threads', o.threads, 0, 4096, true);
    checkNumber('maxBatch', o.maxBatch, 1, 1 << 16, true);
    checkNumber('maxQueue', o.maxQueue, 0, 1 << 20, true);
    if (o.kvCache !== undefined && !['auto', 'float', 'int8'].includes(o.kvCache))
      throw new RangeError(`option kvCache must be 'auto', 'float' or 'int8', got ${String(o.kvCache)}`);
    if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw new TypeError('option onProgress must be a function');
    if (o.tokenizer !== undefined && o.tokenizer !== null && typeof o.tokenizer !== 'string' && !(o.tokenizer instanceof Tokenizer))
      throw new TypeError('option tokenizer must be a Tokenizer, a path, or null');
    const abs = path.resolve(dir);
    if (!fs.existsSync(abs) || !fs.statSync(abs).isDirectory()) throw new Error(`Model.load: ${abs} is not a folder`);
    const addon = native();
    const modelType = readModelType(abs);
    // The CUDA backend runs every family we load (qwen, qwen2, qwen3): 'auto' takes the GPU when
    // there is one.
    const cudaFamily = modelType === 'qwen' || modelType === 'qwen2' || modelType === 'qwen3';
    const useCuda = device === 'cuda' || (device === 'auto' && cudaFamily && addon.cudaCompiled() && addon.cudaDeviceCount() > 0);
    const gen = (readJsonIfExists(path.join(abs, 'generation_config.json')) ?? {}) as GenerationConfig;
    // qwen2/qwen3: the chat template (read now, so a bad file fails before the weights load).
    const tc = modelType === 'qwen' ? null : readJsonIfExists(path.join(abs, 'tokenizer_config.json'));
    const chatTemplate = tc && 'chat_template' in tc ? parseChatTemplate(tc.chat_template) : undefined;
    // The tokenizer parses while the native side loads the weights.
    let tokLoad: Promise<Tokenizer | null> = Promise.resolve(null);
    if (o.tokenizer instanceof Tokenizer) tokLoad = Promise.resolve(o.tokenizer);
    else if (typeof o.tokenizer === 'string') tokLoad = Tokenizer.load(o.tokenizer);
    else if (o.tokenizer === undefined && VOCAB_FILES.some((f) => fs.existsSync(path.join(abs, f)))) tokLoad = Tokenizer.load(abs);
    tokLoad.catch(() => {}); // awaited below, after the weights
    const onProgress = o.onProgress;
    const nm = await addon.loadModel(
      abs,
      {
        device: useCuda ? 'cuda' : 'cpu',
        deviceIndex: o.deviceIndex ?? 0,
        contextLength: o.contextLength ?? 0,
        threads: o.threads ?? 0,
        kvCache: o.kvCache ?? 'auto',
        maxBatch: o.maxBatch ?? 16,
        maxQueue: o.maxQueue ?? 64,
      },
      onProgress ? (fraction) => onProgress({ fraction }) : undefined,
    );
    let tok: Tokenizer | null;
    try {
      tok = await tokLoad;
    } catch (err) {
      nm.dispose();
      throw err;
    }
    const model = new Model(abs, nm, gen, tok);
    model.#chatTemplate = chatTemplate;
    return model;
  }

  #live(what: string): NativeModel {
    if (!this.#native) throw new Error(`${what}: the model has been disposed`);
    return this.#native;
  }

  /**
   * Bytes held by the backend: weights (device memory on CUDA), live KV caches (their pages of
   * 64 positions), kvCacheFree: KV pages kept for reuse after their sequences ended (CUDA, up to
   * 1 GiB or 1/16 of the GPU; 0 on the CPU), scratch buffers, and hostWeights: weights the GPU
   * reads from page-locked host memory (CUDA keeps the embedding table there).
   */
  memory(): { weights: number; kvCache: number; kvCacheFree: number; workspace: number; hostWeights: number } {
    return this.#live('memory').memory();
  }

  /**
   * Counters of the generation scheduler, for diagnostics: forward passes it ran (`steps`), the
   * sequence-steps in them (`items`; items / steps is the mean batch size), the largest batch,
   * ids fed, and generations finished.
   */
  batchStats(): { steps: number; items: number; maxItems: number; tokens: number; requests: number } {
    return this.#live('batchStats').batchStats();
  }

  createSequence(): Sequence {
    const s = new Sequence(this, this.#live('createSequence').createSequence());
    this.#sequences.add(s.ref);
    this.#forgetDead.register(s, s.ref, s);
    return s;
  }

  /** @internal */
  _forget(s: Sequence): void {
    this.#sequences.delete(s.ref);
    this.#forgetDead.unregister(s);
  }

  #tokenizer(what: string): Tokenizer {
    if (!this.tokenizer)
      throw new Error(`${what}: the model has no tokenizer (no ${VOCAB_FILES.join(', ')} in ${this.dir}); pass token ids or the tokenizer option`);
    return this.tokenizer;
  }

  /** Prompt text (encoded as plain text: special-token spellings stay text) or ids. */
  #promptIds(prompt: string | readonly number[], what: string): number[] {
    if (typeof prompt === 'string') return this.#tokenizer(what).encode(prompt);
    if (Array.isArray(prompt)) return Array.from(toIds(prompt, 'prompt'));
    throw new TypeError(`${what}: prompt must be a string or an array of token ids`);
  }

  /** Resolved native options: the call's, else generation_config.json's, else Hugging Face's defaults. */
  #nativeOptions(o: GenerateOptions, extraStops: number[][]): { opts: Record<string, unknown>; stopStrings: string[] } {
    const g = this.generationConfig;
    checkNumber('maxNewTokens', o.maxNewTokens, 1, 1 << 24, true);
    checkNumber('temperature', o.temperature, 0, 100);
    checkNumber('topP', o.topP, 0, 1);
    checkNumber('topK', o.topK, 0, 1 << 24, true);
    checkNumber('repetitionPenalty', o.repetitionPenalty, 0.01, 100);
    checkNumber('seed', o.seed, 0, Number.MAX_SAFE_INTEGER, true);
    checkNumber('logprobs', o.logprobs, 0, MAX_LOGPROBS, true);
    if (o.doSample !== undefined && typeof o.doSample !== 'boolean') throw new TypeError('option doSample must be a boolean');
    const stopStrings: string[] = [];
    const stopSequences: number[][] = [...extraStops];
    const eos = g.eos_token_id;
    for (const e of Array.isArray(eos) ? eos : eos !== undefined ? [eos] : []) stopSequences.push([e]);
    for (const s of g.stop_words_ids ?? []) stopSequences.push(s);
    for (const [i, s] of (o.stop ?? []).entries()) {
      if (typeof s === 'string') {
        if (s === '') throw new RangeError(`option stop[${i}] is an empty string`);
        stopStrings.push(s);
      } else if (Array.isArray(s) && s.length > 0) {
        stopSequences.push(Array.from(toIds(s as number[], `stop[${i}]`)));
      } else {
        throw new TypeError(`option stop[${i}] must be a string or a non-empty array of token ids`);
      }
    }
    // A value from generation_config.json is checked like the caller's, named by its key there.
    const fromFile = <T>(opt: T | undefined, key: keyof GenerationConfig, fallback: T, name: string, min: number, max: number, int = false): T => {
      if (opt !== undefined) return opt;
      const v = g[key] as T | undefined;
      if (v === undefined || v === null) return fallback;
      checkNumber(`${name} (generation_config.json ${String(key)})`, v, min, max, int);
      return v;
    };
    const temperature = fromFile(o.temperature, 'temperature', 1.0, 'temperature', 0, 100);
    if (g.do_sample !== undefined && typeof g.do_sample !== 'boolean') throw new TypeError(`generation_config.json do_sample must be true or false`);
    const doSample = o.doSample ?? (temperature === 0 ? false : g.do_sample ?? false);
    return {
      opts: {
        maxNewTokens: fromFile(o.maxNewTokens, 'max_new_tokens', 512, 'maxNewTokens', 1, 1 << 24, true),
        doSample,
        temperature,
        topK: fromFile(o.topK, 'top_k', 0, 'topK', 0, 1 << 24, true),
        topP: fromFile(o.topP, 'top_p', 1.0, 'topP', 0, 1),
        repetitionPenalty: fromFile(o.repetitionPenalty, 'repetition_penalty', 1.0, 'repetitionPenalty', 0.01, 100),
        seed: o.seed ?? randomInt(0, 2 ** 47),
        logprobs: o.logprobs ?? -1,
        stopSequences,
      },
      stopStrings,
    };
  }

  /** Hands a generation to the native engine; a full queue becomes a QueueFullError. */
  #submit(nseq: NativeSequence, ids: number[], opts: Record<string, unknown>, onEvent: Parameters<NativeSequence['generate']>[2]): void {
    try {
      nseq.generate(Int32Array.from(ids), opts, onEvent);
    } catch (err) {
      if (err instanceof Error && /queue is full/.test(err.message)) throw new QueueFullError(err.message);
      throw err;
    }
  }

  /**
   * Runs one generation on a fresh sequence; calls onChunk for each piece of streamed text.
   * Resolves when it ends; rejects with AbortError when `signal` aborts it.
   */
  async #run(
    promptIds: number[],
    o: GenerateOptions,
    extraStops: number[][],
    onChunk: ((c: GenerateChunk) => void) | null,
  ): Promise<CompletionResult> {
    const { opts, stopStrings } = this.#nativeOptions(o, extraStops);
    // The sequence is this call's own: its cache needs the prompt and the new tokens, no more.
    opts.cachePositions = promptIds.length + (opts.maxNewTokens as number);
    const logprobs: TokenLogprobs[] | null = o.logprobs !== undefined ? [] : null;
    if (o.signal?.aborted) throw new AbortError(emptyResult(promptIds.length, logprobs));
    const seq = this.createSequence();
    const tok = this.tokenizer;
    const decoder = tok ? new TextStreamDecoder(tok) : null;
    const tokens: number[] = [];
    let text = '';
    let emitted = 0; // text.length already handed to onChunk
    let stoppedByString = false;
    const holdBack = Math.max(0, ...stopStrings.map((s) => s.length - 1));
    const nseq = seq.native;
    const onAbort = () => nseq.abort();
    o.signal?.addEventListener('abort', onAbort);
    try {
      let failure: unknown = null; // thrown while handling a token (say, by onChunk): ends the run
      const reason = await new Promise<FinishReason>((resolve, reject) => {
        // A synchronous throw (a full queue) rejects this promise.
        this.#submit(nseq, promptIds, opts, (kind, a, b, c) => {
          if (kind === 'done') {
            if (a || failure) reject(a || failure);
            else resolve(stoppedByString ? 'stop' : (b as FinishReason));
            return;
          }
          if (stoppedByString || failure) return;
          try {
            onToken(a as number, b as boolean, c);
          } catch (err) {
            failure = err;
            nseq.abort();
          }
        });
        const onToken = (id: number, stop: boolean, native?: NativeLogprobs) => {
          tokens.push(id);
          const lp = native && tokenLogprobs(tok, id, native);
          if (lp) logprobs?.push(lp);
          const withLp = lp ? { logprobs: lp } : {};
          if (stop || !decoder) {
            if (onChunk && !decoder && !stop) onChunk({ token: id, text: '', ...withLp });
            return;
          }
          // Ids past the tokenizer's (the padding rows of a 151936/152064-row vocabulary) have no text.
          text += id < tok!.vocabSize ? decoder.push(id) : '';
          for (const s of stopStrings) {
            const at = text.indexOf(s, Math.max(0, emitted - s.length + 1));
            if (at >= 0) {
              text = text.slice(0, at);
              stoppedByString = true;
              nseq.abort();
            }
          }
          const safe = stoppedByString ? text.length : Math.max(emitted, text.length - holdBack);
          if (onChunk) onChunk({ token: id, text: text.slice(emitted, safe), ...withLp });
          emitted = safe;
        };
      });
      if (decoder && !stoppedByString) text += decoder.flush();
      if (onChunk && text.length > emitted) onChunk({ token: tokens[tokens.length - 1] ?? -1, text: text.slice(emitted) });
      const result: CompletionResult = {
        text,
        tokens,
        ...(logprobs ? { logprobs } : {}),
        finishReason: reason,
        usage: { promptTokens: promptIds.length, completionTokens: tokens.length, totalTokens: promptIds.length + tokens.length },
      };
      if (reason === 'abort') throw new AbortError(result);
      return result;
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      seq.dispose();
    }
  }

  /** Streams generated text. `prompt` text is encoded as plain text (no control tokens). */
  generate(prompt: string | readonly number[], options: GenerateOptions = {}): AsyncGenerator<GenerateChunk, CompletionResult> {
    const ids = this.#promptIds(prompt, 'generate');
    return this.#stream(options, (o, onChunk) => this.#run(ids, o, [], onChunk));
  }

  /** Generates to the end and returns the whole completion. */
  async complete(prompt: string | readonly number[], options: GenerateOptions = {}): Promise<CompletionResult> {
    return this.#run(this.#promptIds(prompt, 'complete'), options, [], null);
  }

  /**
   * One chat turn through Qwen's ChatML prompt (make_context): the reply, trimmed as the original
   * does, and the updated history. With `stream: true`, an async iterator of text chunks whose
   * return value is the ChatResult.
   */
  chat(query: string, options: ChatOptions & { stream: true }): AsyncGenerator<GenerateChunk, ChatResult>;
  chat(query: string, options?: ChatOptions & { stream?: false }): Promise<ChatResult>;
  chat(query: string, options: ChatOptions = {}): Promise<ChatResult> | AsyncGenerator<GenerateChunk, ChatResult> {
    // Bad input throws at once for the streaming form (like generate) and rejects otherwise.
    let turn: ReturnType<Model['chatTurn']>;
    try {
      turn = this.chatTurn(query, options);
    } catch (err) {
      if (options.stream) throw err;
      return Promise.reject(err);
    }
    const { tokens, stops, finish } = turn;
    if (options.stream) return this.#stream(options, (o, onChunk) => this.#run(tokens, o, stops, onChunk).then(finish));
    return this.#run(tokens, options, stops, null).then(finish);
  }

  /**
   * The prompt chat() would feed for this turn, and the token sequences that end the reply: Qwen
   * v1's make_context, or the checkpoint's ChatML template for qwen2/qwen3 (its default system
   * prompt, Qwen3's thinking switch). For servers and tools that run generate() themselves.
   */
  chatPrompt(
    query: string,
    options: Pick<ChatOptions, 'history' | 'system' | 'maxWindowSize' | 'enableThinking'> = {},
  ): { tokens: number[]; stopIds: number[][]; chatFormat: ChatFormat } {
    if (typeof query !== 'string') throw new TypeError('chat: query must be a string');
    checkChatInput(options);
    const tok = this.#tokenizer('chat');
    const v1 = this.config.modelType === 'qwen';
    const format: ChatFormat = v1 && this.generationConfig.chat_format === 'raw' ? 'raw' : 'chatml';
    checkNumber('maxWindowSize', options.maxWindowSize, 1, 1 << 24, true);
    if (options.enableThinking !== undefined && typeof options.enableThinking !== 'boolean')
      throw new TypeError('option enableThinking must be a boolean');
    if (!v1 && this.#chatTemplate === null)
      throw new Error(`chat: the chat_template in ${path.join(this.dir, 'tokenizer_config.json')} is not ChatML; build the prompt yourself and use generate`);
    // qwen2/qwen3: the template's ChatML; without a tokenizer_config.json, Qwen2's default system.
    const { tokens } = v1
      ? makeContext(tok, query, {
          history: options.history,
          system: options.system,
          maxWindowSize: options.maxWindowSize ?? this.generationConfig.max_window_size ?? 6144,
          chatFormat: format,
        })
      : makeChatMLContext(tok, query, {
          history: options.history,
          system: options.system,
          template: this.#chatTemplate,
          enableThinking: options.enableThinking,
        });
    return { tokens, stopIds: chatStopIds(tok, format), chatFormat: format };
  }

  private chatTurn(query: string, options: ChatOptions) {
    const { tokens, stopIds: stops, chatFormat: format } = this.chatPrompt(query, options);
    const tok = this.tokenizer!;
    const finish = (r: CompletionResult): ChatResult => {
      const response = decodeReply(tok, r.tokens.filter((id) => id < tok.vocabSize), format);
      const history = (options.history ?? []).map((t) => (Array.isArray(t) ? { query: t[0], response: t[1] } : { ...(t as { query: string; response: string }) }));
      history.push({ query, response });
      return { ...r, text: response, history };
    };
    return { tokens, stops, finish };
  }

  /**
   * Turns a callback-driven run into an async generator. Leaving the loop early (break, throw)
   * aborts the generation and frees its sequence.
   */
  async *#stream<R>(
    options: GenerateOptions,
    run: (o: GenerateOptions, onChunk: (c: GenerateChunk) => void) => Promise<R>,
  ): AsyncGenerator<GenerateChunk, R> {
    const queue: GenerateChunk[] = [];
    let wake: (() => void) | null = null;
    let finished = false;
    const ctl = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, ctl.signal]) : ctl.signal;
    const p = run({ ...options, signal }, (c) => {
      queue.push(c);
      wake?.();
    }).finally(() => {
      finished = true;
      wake?.();
    });
    p.catch(() => {}); // observed below, or dropped after an early exit
    try {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (finished) break;
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
      return await p;
    } finally {
      if (!finished) {
        ctl.abort();
        await p.catch(() => {});
      }
    }
  }

  /** Frees the weights and every sequence's cache now; running generations are aborted. */
  dispose(): void {
    for (const ref of [...this.#sequences]) ref.deref()?.dispose();
    this.#native?.dispose();
    this.#native = null;
  }
}

/** config.json's model_type ("qwen" when absent or unreadable: the native loader reports those). */
function readModelType(dir: string): string {
  try {
    const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    return typeof c?.model_type === 'string' ? c.model_type : 'qwen';
  } catch {
    return 'qwen';
  }
}

function checkChatInput(o: { history?: unknown; system?: unknown }): void {
  if (o.system !== undefined && typeof o.system !== 'string') throw new TypeError('option system must be a string');
  if (o.history === undefined) return;
  if (!Array.isArray(o.history)) throw new TypeError('option history must be an array of {query, response} turns or [query, response] pairs');
  o.history.forEach((t, i) => {
    const ok = Array.isArray(t)
      ? t.length === 2 && typeof t[0] === 'string' && typeof t[1] === 'string'
      : t !== null && typeof t === 'object' && typeof (t as { query?: unknown }).query === 'string' && typeof (t as { response?: unknown }).response === 'string';
    if (!ok) throw new TypeError(`option history[${i}] must be {query: string, response: string} or [query, response]`);
  });
}

function emptyResult(promptTokens: number, logprobs: TokenLogprobs[] | null): CompletionResult {
  return {
    text: '',
    tokens: [],
    ...(logprobs ? { logprobs } : {}),
    finishReason: 'abort',
    usage: { promptTokens, completionTokens: 0, totalTokens: promptTokens },
  };
}

/** A token's id, text and bytes (through the tokenizer) with its log-probability. */
function tokenLogprob(tok: Tokenizer | null, id: number, logprob: number): TokenLogprob {
  let bytes: Uint8Array | null = null;
  if (tok && id < tok.vocabSize) {
    try {
      bytes = tok.tokenBytes(id);
    } catch {
      // an id the vocabulary skips: no bytes
    }
  }
  return bytes ? { token: id, text: tok!.decode([id]), bytes: Array.from(bytes), logprob } : { token: id, text: '', bytes: [], logprob };
}

function tokenLogprobs(tok: Tokenizer | null, id: number, n: NativeLogprobs): TokenLogprobs {
  return { ...tokenLogprob(tok, id, n.logprob), top: n.topIds.map((t, k) => tokenLogprob(tok, t, n.topLogprobs[k])) };
}
