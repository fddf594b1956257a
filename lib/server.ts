// An OpenAI-compatible HTTP server over one Model: /v1/chat/completions (ChatML through Qwen's
// make_context, tools through the ReAct prompt of Qwen's openai_api.py), /v1/completions,
// /v1/models, /health, and a small chat page at /. Every request runs its generations on sequences
// of its own (concurrent calls are allowed; the model's engine batches their forward passes), a
// client that goes away aborts them, and more than `maxQueue` requests in flight are refused (503).
import http from 'node:http';
import path from 'node:path';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { parseArgs } from 'node:util';

import {
  AbortError,
  QueueFullError,
  MAX_LOGPROBS,
  Model,
  type CompletionResult,
  type FinishReason,
  type GenerateOptions,
  type LoadOptions,
  type TokenLogprobs,
} from './model';
import { chatmlBlockIds, chatStopIds, pyStrip, PY_WS_CLASS, type ChatFormat } from './chat';
import { TextStreamDecoder, type Tokenizer } from './tokenizer';
import { MessageError, normalizeTools, parseReactResponse, REACT_STOP, toQwenTurns, type QwenTurns, type ToolCall } from './react';
import { WEB_PAGE_HTML } from './web';

export interface ServerOptions {
  /** Require `Authorization: Bearer <apiKey>` on /v1/* (the page and /health stay open). */
  apiKey?: string | null;
  /** Generation requests allowed in flight at once; the next one gets 503. Default 32. */
  maxQueue?: number;
  /** Largest request body; a larger one gets 413. Default 1 MiB. */
  maxBodyBytes?: number;
  /** The model id /v1/models lists and requests must name. Default: the checkpoint folder's name. */
  modelId?: string;
  /** Largest `n` (choices per request). Default 16. */
  maxChoices?: number;
  /** Called with one line per finished request (method, path, status, milliseconds). */
  log?: (line: string) => void;
}

export interface ServeOptions extends ServerOptions {
  /** Default 8000. 0 picks a free port (see server.address()). */
  port?: number;
  /** Default "127.0.0.1" (this machine only); "0.0.0.0" listens on every interface. */
  host?: string;
}

/** An error answered as OpenAI does: `{error: {message, type, param, code}}`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type: string = status >= 500 ? 'server_error' : 'invalid_request_error',
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

const bad = (message: string, param: string | null = null, code: string | null = null) => new HttpError(400, message, param, code);

/** Python's whitespace (str.isspace), as the reply strip uses. */
const LEADING_WS = new RegExp(`^[${PY_WS_CLASS}]+`);
const TRAILING_WS = new RegExp(`[${PY_WS_CLASS}]+$`);

/**
 * Streams a reply stripped as a whole (leading whitespace dropped, trailing whitespace held until
 * more text follows), so the streamed deltas join to exactly the non-streamed message.
 */
class StripStream {
  #started = false;
  #held = '';
  push(text: string): string {
    if (!this.#started) {
      text = text.replace(LEADING_WS, '');
      if (!text) return '';
      this.#started = true;
    }
    const s = this.#held + text;
    const m = TRAILING_WS.exec(s);
    this.#held = m ? m[0] : '';
    return m ? s.slice(0, m.index) : s;
  }
}

// ---- request validation ----

type Body = Record<string, unknown>;

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

function optNumber(body: Body, key: string, min: number, max: number, integer = false): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw bad(`Invalid type for '${key}': expected ${integer ? 'an integer' : 'a number'}, but got ${typeName(v)} instead.`, key, 'invalid_type');
  if (integer && !Number.isInteger(v)) throw bad(`Invalid '${key}': expected an integer, got ${v}.`, key, 'invalid_type');
  if (v < min || v > max) throw bad(`Invalid '${key}': ${v} is not in [${min}, ${max}].`, key, 'invalid_value');
  return v;
}

function optBool(body: Body, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw bad(`Invalid type for '${key}': expected a boolean, but got ${typeName(v)} instead.`, key, 'invalid_type');
  return v;
}

function unsupported(param: string, why: string): HttpError {
  return bad(`'${param}' is not supported by this server: ${why}`, param, 'unsupported_parameter');
}

interface Sampling {
  n: number;
  stream: boolean;
  includeUsage: boolean;
  stop: string[];
  gen: GenerateOptions;
  seed: number | undefined;
}

/** The sampling parameters both endpoints share -> GenerateOptions (plus n, stream, stop). */
function sampling(body: Body, maxChoices: number): Sampling {
  const maxTokens = optNumber(body, 'max_completion_tokens', 1, 1 << 24, true) ?? optNumber(body, 'max_tokens', 1, 1 << 24, true);
  const temperature = optNumber(body, 'temperature', 0, 2);
  const topP = optNumber(body, 'top_p', 0, 1);
  const topK = optNumber(body, 'top_k', -1, 1 << 24, true); // extension (vLLM's): -1 or 0 = off
  const repetitionPenalty = optNumber(body, 'repetition_penalty', 0.01, 100); // extension
  const n = optNumber(body, 'n', 1, maxChoices, true) ?? 1;
  let seed = optNumber(body, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, true);
  if (seed !== undefined && seed < 0) seed += Number.MAX_SAFE_INTEGER + 1; // the API takes a signed int64
  const stream = optBool(body, 'stream') ?? false;
  let includeUsage = false;
  if (body.stream_options !== undefined && body.stream_options !== null) {
    if (!isObject(body.stream_options)) throw bad(`Invalid type for 'stream_options': expected an object, but got ${typeName(body.stream_options)} instead.`, 'stream_options', 'invalid_type');
    includeUsage = optBool(body.stream_options, 'include_usage') ?? false;
  }
  let stop: string[] = [];
  const s = body.stop;
  if (typeof s === 'string') stop = [s];
  else if (Array.isArray(s)) {
    if (s.length > 16) throw bad(`Invalid 'stop': at most 16 sequences, got ${s.length}.`, 'stop', 'invalid_value');
    s.forEach((x, i) => {
      if (typeof x !== 'string') throw bad(`Invalid type for 'stop[${i}]': expected a string, but got ${typeName(x)} instead.`, `stop[${i}]`, 'invalid_type');
    });
    stop = s as string[];
  } else if (s !== undefined && s !== null) throw bad(`Invalid type for 'stop': expected a string or an array of strings, but got ${typeName(s)} instead.`, 'stop', 'invalid_type');
  stop = stop.filter((x) => x !== '');

  // What the engine cannot do is refused, not faked.
  for (const p of ['presence_penalty', 'frequency_penalty']) {
    const v = optNumber(body, p, -2, 2);
    if (v !== undefined && v !== 0) throw unsupported(p, 'use repetition_penalty (Qwen\'s multiplicative penalty) instead.');
  }
  if (isObject(body.logit_bias) && Object.keys(body.logit_bias).length) throw unsupported('logit_bias', 'no per-token logit bias in the sampler.');
  if (body.response_format !== undefined && body.response_format !== null) {
    const rf = body.response_format;
    if (!isObject(rf) || rf.type !== 'text') throw unsupported('response_format', 'only {"type": "text"}; JSON output cannot be enforced.');
  }

  const gen: GenerateOptions = {};
  if (maxTokens !== undefined) gen.maxNewTokens = maxTokens;
  if (temperature !== undefined) {
    gen.temperature = temperature;
    gen.doSample = temperature > 0;
  }
  if (topP !== undefined) gen.topP = topP;
  if (topK !== undefined) gen.topK = Math.max(0, topK);
  if (repetitionPenalty !== undefined) gen.repetitionPenalty = repetitionPenalty;
  return { n, stream, includeUsage, stop, gen, seed };
}

const FINISH: Record<FinishReason, 'stop' | 'length'> = { stop: 'stop', length: 'length', context: 'length', abort: 'stop' };

// ---- log-probabilities ----

/** Chat's `logprobs` (boolean) and `top_logprobs` (0..20, only with `logprobs: true`) -> option logprobs. */
function chatLogprobsOption(body: Body): number | undefined {
  const on = optBool(body, 'logprobs') ?? false;
  const top = optNumber(body, 'top_logprobs', 0, MAX_LOGPROBS, true);
  if (top !== undefined && !on) throw bad(`Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is given.`, 'top_logprobs', 'invalid_value');
  return on ? (top ?? 0) : undefined;
}

/** Completions' `logprobs`: the number of most likely tokens, 0..5 (null or false: none). */
function completionLogprobsOption(body: Body): number | undefined {
  if (body.top_logprobs !== undefined && body.top_logprobs !== null)
    throw bad(`Unrecognized request argument 'top_logprobs': on /v1/completions, 'logprobs' is the number of most likely tokens (0..5).`, 'top_logprobs', 'invalid_value');
  if (body.logprobs === false) return undefined;
  return optNumber(body, 'logprobs', 0, 5, true);
}

/** As OpenAI: a log-probability of -inf (a logit of -inf) is sent as -9999. */
const lpValue = (x: number) => Math.max(x, -9999);
const lpBytes = (b: number[]) => (b.length ? b : null);

/** `choices[i].logprobs` of a chat completion (or chunk) for these tokens of the reply. */
function chatLogprobs(lps: TokenLogprobs[]) {
  return {
    content: lps.map((t) => ({
      token: t.text,
      logprob: lpValue(t.logprob),
      bytes: lpBytes(t.bytes),
      top_logprobs: t.top.map((a) => ({ token: a.text, logprob: lpValue(a.logprob), bytes: lpBytes(a.bytes) })),
    })),
    refusal: null,
  };
}

/**
 * `choices[i].logprobs` of a text completion, built token by token (a stream sends each token's in
 * its chunk). text_offset counts code points (as Python's len) from the start of the choice's text.
 * top_logprobs maps token text to logprob: the most likely tokens plus the chosen one (up to
 * logprobs + 1 keys, as OpenAI); tokens of the same text share the key of the likelier one.
 */
class CompletionLogprobs {
  #decoder: TextStreamDecoder | null;
  #offset = 0;
  constructor(private readonly tok: Tokenizer | null) {
    this.#decoder = tok ? new TextStreamDecoder(tok) : null;
  }
  of(lps: TokenLogprobs[]) {
    const out = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Record<string, number>[], text_offset: [] as number[] };
    for (const t of lps) {
      const top: Record<string, number> = {};
      for (const a of [...t.top, t]) if (!Object.hasOwn(top, a.text)) top[a.text] = lpValue(a.logprob);
      out.tokens.push(t.text);
      out.token_logprobs.push(lpValue(t.logprob));
      out.top_logprobs.push(top);
      out.text_offset.push(this.#offset);
      const text = this.#decoder && t.token < this.tok!.vocabSize ? this.#decoder.push(t.token) : '';
      for (const _ of text) this.#offset++;
    }
    return out;
  }
}

// ---- prompts ----

/** The ids of a ChatML prompt that ends inside an unfinished assistant turn (the original's text_complete_last_message). */
function continuationIds(tok: Tokenizer, turns: QwenTurns): number[] {
  const nl = tok.encode('\n');
  const block = (role: string, content: string, close = true) => chatmlBlockIds(tok, role, content, close);
  const ids = block('system', turns.system);
  for (const [q, r] of turns.history) ids.push(...nl, ...block('user', q), ...nl, ...block('assistant', r));
  const [q, partial] = turns.continuation!;
  ids.push(...nl, ...block('user', q), ...nl, ...block('assistant', partial, false));
  return ids;
}

function newId(prefix: string): string {
  return prefix + randomBytes(12).toString('hex');
}

// ---- the server ----

interface Ctx {
  model: Model;
  modelId: string;
  apiKey: Buffer | null;
  maxQueue: number;
  maxBodyBytes: number;
  maxChoices: number;
  active: number;
}

/** An http.Server (not yet listening) serving `model`. */
export function createServer(model: Model, options: ServerOptions = {}): http.Server {
  const maxQueue = options.maxQueue ?? 32;
  const maxBodyBytes = options.maxBodyBytes ?? 1 << 20;
  const maxChoices = options.maxChoices ?? 16;
  if (!Number.isInteger(maxQueue) || maxQueue < 1) throw new RangeError(`option maxQueue must be an integer >= 1, got ${String(maxQueue)}`);
  if (!Number.isInteger(maxBodyBytes) || maxBodyBytes < 1) throw new RangeError(`option maxBodyBytes must be an integer >= 1, got ${String(maxBodyBytes)}`);
  if (!Number.isInteger(maxChoices) || maxChoices < 1) throw new RangeError(`option maxChoices must be an integer >= 1, got ${String(maxChoices)}`);
  if (options.apiKey !== undefined && options.apiKey !== null && (typeof options.apiKey !== 'string' || options.apiKey === ''))
    throw new TypeError('option apiKey must be a non-empty string');
  const ctx: Ctx = {
    model,
    modelId: options.modelId ?? path.basename(model.dir),
    apiKey: options.apiKey ? Buffer.from(options.apiKey) : null,
    maxQueue,
    maxBodyBytes,
    maxChoices,
    active: 0,
  };
  const log = options.log;
  const server = http.createServer((req, res) => {
    const t0 = performance.now();
    if (log) res.on('close', () => log(`${req.method} ${req.url} ${res.headersSent ? res.statusCode : '-'} ${Math.round(performance.now() - t0)} ms${res.writableFinished ? '' : ' (client gone)'}`));
    handle(ctx, req, res).catch((err: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const e =
        err instanceof HttpError
          ? err
          : err instanceof QueueFullError
            ? new HttpError(503, `The server is busy: ${err.message}`, null, 'overloaded')
            : new HttpError(500, `internal error: ${(err as Error)?.message ?? String(err)}`);
      const extra: Record<string, string> = e.status === 503 ? { 'Retry-After': '1' } : e.status === 401 ? { 'WWW-Authenticate': 'Bearer' } : {};
      sendError(res, e, extra);
    });
  });
  return server;
}

/** createServer + listen; resolves once it listens. */
export function serve(model: Model, options: ServeOptions = {}): Promise<http.Server> {
  const server = createServer(model, options);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 8000, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

const CORS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Headers': 'Authorization, Content-Type',
  'Access-Control-Allow-Methods': 'GET, POST, OPTIONS',
};

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...CORS, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res: http.ServerResponse, e: HttpError, headers: Record<string, string> = {}): void {
  sendJson(res, e.status, { error: { message: e.message, type: e.type, param: e.param, code: e.code } }, headers);
}

async function handle(ctx: Ctx, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const route = url.pathname.replace(/\/+$/, '') || '/';
  const method = req.method ?? 'GET';
  if (method === 'OPTIONS') {
    res.writeHead(204, { ...CORS, 'Access-Control-Max-Age': '86400' });
    res.end();
    return;
  }
  const allow = (...methods: string[]) => {
    if (!methods.includes(method)) throw new HttpError(405, `${method} is not allowed on ${route} (use ${methods.join(' or ')})`, null, 'method_not_allowed');
  };
  if (route === '/' || route === '/index.html') {
    allow('GET', 'HEAD');
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': Buffer.byteLength(WEB_PAGE_HTML), 'Cache-Control': 'no-cache' });
    res.end(method === 'HEAD' ? undefined : WEB_PAGE_HTML);
    return;
  }
  if (route === '/health') {
    allow('GET', 'HEAD');
    sendJson(res, 200, { status: 'ok', model: ctx.modelId, device: ctx.model.device, active: ctx.active, max_queue: ctx.maxQueue });
    return;
  }
  if (!route.startsWith('/v1/')) throw new HttpError(404, `no route ${method} ${route}`, null, 'not_found');
  checkAuth(ctx, req);
  const card = { id: ctx.modelId, object: 'model', created: 0, owned_by: 'qwen-native' };
  if (route === '/v1/models') {
    allow('GET');
    sendJson(res, 200, { object: 'list', data: [card] });
    return;
  }
  if (route.startsWith('/v1/models/')) {
    allow('GET');
    const id = decodeURIComponent(route.slice('/v1/models/'.length));
    if (id !== ctx.modelId) throw modelNotFound(id);
    sendJson(res, 200, card);
    return;
  }
  if (route === '/v1/chat/completions' || route === '/v1/completions') {
    allow('POST');
    const body = await readJson(ctx, req, res);
    if (body.model !== undefined && body.model !== null) {
      if (typeof body.model !== 'string') throw bad(`Invalid type for 'model': expected a string, but got ${typeName(body.model)} instead.`, 'model', 'invalid_type');
      if (body.model !== ctx.modelId) throw modelNotFound(body.model);
    }
    if (route === '/v1/chat/completions') await chatCompletions(ctx, body, req, res);
    else await completions(ctx, body, req, res);
    return;
  }
  throw new HttpError(404, `no route ${method} ${route}`, null, 'not_found');
}

function modelNotFound(id: string): HttpError {
  return new HttpError(404, `The model '${id}' does not exist (this server has one model, see GET /v1/models).`, 'model', 'model_not_found');
}

function checkAuth(ctx: Ctx, req: http.IncomingMessage): void {
  if (!ctx.apiKey) return;
  const h = req.headers.authorization;
  const m = typeof h === 'string' ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
  if (!m) throw new HttpError(401, 'Missing API key: pass it as "Authorization: Bearer KEY".', null, 'invalid_api_key');
  const got = Buffer.from(m[1]);
  if (got.length !== ctx.apiKey.length || !timingSafeEqual(got, ctx.apiKey)) throw new HttpError(401, 'Incorrect API key provided.', null, 'invalid_api_key');
}

async function readJson(ctx: Ctx, req: http.IncomingMessage, res: http.ServerResponse): Promise<Body> {
  const tooLarge = () => {
    // Answer now, then drop the rest of the upload (bounded) and close the connection.
    res.setHeader('Connection', 'close');
    let drained = 0;
    req.removeAllListeners('data');
    req.on('data', (c: Buffer) => {
      drained += c.length;
      if (drained > 16 * ctx.maxBodyBytes) req.socket.destroy();
    });
    req.resume();
    return new HttpError(413, `The request body exceeds ${ctx.maxBodyBytes} bytes.`, null, 'request_too_large');
  };
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > ctx.maxBodyBytes) throw tooLarge();
  const buf = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > ctx.maxBodyBytes) reject(tooLarge());
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
  let body: unknown;
  try {
    body = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw bad(`We could not parse the JSON body of your request (${(e as Error).message}).`, null, 'invalid_json');
  }
  if (!isObject(body)) throw bad(`The request body must be a JSON object, got ${typeName(body)}.`, null, 'invalid_json');
  return body;
}

/**
 * One request's generations: counted against maxQueue, aborted when the client goes away (or when
 * one of them fails), every sequence freed before this returns.
 */
async function admit<T>(ctx: Ctx, res: http.ServerResponse, run: (signal: AbortSignal) => Promise<T>): Promise<T | null> {
  if (ctx.active >= ctx.maxQueue)
    throw new HttpError(503, `The server is busy (${ctx.active} requests in flight, max ${ctx.maxQueue}); retry later.`, null, 'overloaded', 'server_error');
  ctx.active++;
  const ctl = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) ctl.abort();
  };
  res.on('close', onClose);
  try {
    return await run(ctl.signal);
  } catch (err) {
    if (err instanceof AbortError && ctl.signal.aborted) return null; // the client is gone
    throw err;
  } finally {
    ctl.abort(); // stops the siblings of a failed generation (a no-op once all ended)
    res.off('close', onClose);
    ctx.active--;
  }
}

/** Runs `tasks` concurrently; the first failure aborts the others, waits for them, then rethrows. */
async function all<T>(tasks: ((signal: AbortSignal) => Promise<T>)[], signal: AbortSignal): Promise<T[]> {
  const ctl = new AbortController();
  const sig = AbortSignal.any([signal, ctl.signal]);
  const ps = tasks.map((t) => t(sig));
  const settled = await Promise.allSettled(
    ps.map((p) =>
      p.catch((e) => {
        ctl.abort();
        throw e;
      }),
    ),
  );
  // An abort caused by a sibling's failure is not the error to report.
  const failed = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed.length) throw (failed.find((f) => !(f.reason instanceof AbortError)) ?? failed[0]).reason;
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}

/**
 * A finished generation, and with option logprobs those of the tokens its text is made of: every
 * streamed token (the stop token that ended it is not in the text, nor here).
 */
type Generated = CompletionResult & { textLogprobs: TokenLogprobs[] | null };

/** One generation; `onText` gets each piece of new text, and each token's logprobs with its piece ('' if held back). */
async function generateOne(
  model: Model,
  ids: number[],
  gen: GenerateOptions,
  onText: ((t: string, logprobs: TokenLogprobs | undefined) => void) | null,
): Promise<Generated> {
  const it = model.generate(ids, gen);
  const textLogprobs: TokenLogprobs[] | null = gen.logprobs !== undefined ? [] : null;
  for (;;) {
    const r = await it.next();
    if (r.done) return { ...r.value, textLogprobs };
    const lp = r.value.logprobs;
    if (lp) textLogprobs?.push(lp);
    if (onText && (r.value.text || lp)) onText(r.value.text, lp);
  }
}

class Sse {
  constructor(private res: http.ServerResponse) {
    res.writeHead(200, { ...CORS, 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', 'X-Accel-Buffering': 'no' });
    res.socket?.setNoDelay(true);
    res.flushHeaders();
  }
  send(obj: unknown): void {
    if (!this.res.writableEnded && !this.res.destroyed) this.res.write(`data: ${JSON.stringify(obj)}\n\n`);
  }
  end(): void {
    if (!this.res.writableEnded && !this.res.destroyed) this.res.end('data: [DONE]\n\n');
  }
  fail(err: unknown): void {
    const e = err instanceof HttpError ? err : new HttpError(500, `internal error: ${(err as Error)?.message ?? String(err)}`);
    this.send({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });
    this.end();
  }
}

function usageOf(promptTokens: number, results: CompletionResult[]) {
  const completion = results.reduce((a, r) => a + r.usage.completionTokens, 0);
  return { prompt_tokens: promptTokens, completion_tokens: completion, total_tokens: promptTokens + completion };
}

function checkContext(ctx: Ctx, n: number, param: string): void {
  const limit = ctx.model.contextLength;
  if (n >= limit)
    throw bad(
      `This model's maximum context length is ${limit} tokens. However, your ${param} resulted in ${n} tokens, which leaves no room for a completion. Please reduce the length of the ${param}.`,
      param,
      'context_length_exceeded',
    );
}

function withSeed(s: Sampling, i: number, signal: AbortSignal, stop: (string | number[])[]): GenerateOptions {
  return { ...s.gen, stop, signal, ...(s.seed !== undefined ? { seed: (s.seed + i) % (Number.MAX_SAFE_INTEGER + 1) } : {}) };
}

async function chatCompletions(ctx: Ctx, body: Body, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const s = sampling(body, ctx.maxChoices);
  const logprobs = chatLogprobsOption(body);
  if (logprobs !== undefined) s.gen.logprobs = logprobs;
  const model = ctx.model;
  const tok = model.tokenizer;
  if (!tok) throw new HttpError(500, `the model has no tokenizer (no qwen.tiktoken in ${model.dir})`);
  const choice = body.tool_choice;
  if (choice !== undefined && choice !== null && !['none', 'auto', 'required'].includes(choice as string) && !isObject(choice))
    throw bad(`Invalid 'tool_choice': expected "none", "auto", "required" or an object.`, 'tool_choice', 'invalid_value');
  if (body.function_call !== undefined && body.function_call !== null && body.function_call !== 'none' && body.function_call !== 'auto' && !isObject(body.function_call))
    throw bad(`Invalid 'function_call': expected "none", "auto" or an object.`, 'function_call', 'invalid_value');
  let tools;
  try {
    tools = choice === 'none' || body.function_call === 'none' ? [] : normalizeTools(body.tools, body.functions);
  } catch (e) {
    if (e instanceof MessageError) throw bad(e.message, e.param, 'invalid_value');
    throw e;
  }
  const legacy = tools.length > 0 && (body.tools === undefined || body.tools === null); // `functions` -> function_call
  let turns: QwenTurns;
  try {
    turns = toQwenTurns(body.messages, tools);
  } catch (e) {
    if (e instanceof MessageError) throw bad(e.message, e.param, 'invalid_value');
    throw e;
  }
  let ids: number[];
  let format: ChatFormat = model.config.modelType === 'qwen' && model.generationConfig.chat_format === 'raw' ? 'raw' : 'chatml';
  if (turns.query !== null) {
    // The model's own chat prompt (v1 make_context, or the qwen2/qwen3 template and its default system).
    const maxWindowSize = Math.min(model.generationConfig.max_window_size ?? 6144, model.contextLength);
    const p = model.chatPrompt(turns.query, { history: turns.history, system: turns.systemGiven ? turns.system : undefined, maxWindowSize });
    ids = p.tokens;
    format = p.chatFormat;
  } else {
    if (format !== 'chatml') throw bad('Continuing an assistant message needs a ChatML (chat) model.', 'messages', 'invalid_value');
    ids = continuationIds(tok, turns);
  }
  checkContext(ctx, ids.length, 'messages');
  const stop: (string | number[])[] = [...chatStopIds(tok, format), ...s.stop];
  if (tools.length && !s.stop.includes(REACT_STOP)) stop.push(REACT_STOP);

  const id = newId('chatcmpl-');
  const created = Math.floor(Date.now() / 1000);
  const head = { id, object: 'chat.completion.chunk', created, model: ctx.modelId };
  const toolCallOf = (name: string, args: string): ToolCall => ({ id: newId('call_'), type: 'function', function: { name, arguments: args } });
  /** The message and finish_reason of a finished generation. */
  const message = (r: CompletionResult) => {
    const text = pyStrip(r.text);
    const finish = FINISH[r.finishReason];
    if (!tools.length) return { message: { role: 'assistant', content: text, refusal: null }, finish_reason: finish as string };
    const p = parseReactResponse(text);
    if (!p.call) return { message: { role: 'assistant', content: p.content, refusal: null }, finish_reason: finish as string };
    if (legacy) return { message: { role: 'assistant', content: p.content || null, function_call: p.call, refusal: null }, finish_reason: 'function_call' };
    return { message: { role: 'assistant', content: p.content || null, tool_calls: [toolCallOf(p.call.name, p.call.arguments)], refusal: null }, finish_reason: 'tool_calls' };
  };

  if (!s.stream) {
    const results = await admit(ctx, res, (signal) =>
      all(
        Array.from({ length: s.n }, (_, i) => (sig: AbortSignal) => generateOne(model, ids, withSeed(s, i, sig, stop), null)),
        signal,
      ),
    );
    if (!results) return;
    sendJson(res, 200, {
      id,
      object: 'chat.completion',
      created,
      model: ctx.modelId,
      choices: results.map((r, index) => ({ index, ...message(r), logprobs: r.textLogprobs ? chatLogprobs(r.textLogprobs) : null })),
      usage: usageOf(ids.length, results),
    });
    return;
  }

  let sse: Sse | null = null;
  const usageField = s.includeUsage ? { usage: null } : {};
  const chunk = (index: number, delta: Record<string, unknown>, finish: string | null, lps: TokenLogprobs[] | null = null) =>
    sse!.send({ ...head, choices: [{ index, delta, logprobs: lps ? chatLogprobs(lps) : null, finish_reason: finish }], ...usageField });
  try {
    const results = await admit(ctx, res, (signal) => {
      sse = new Sse(res);
      for (let i = 0; i < s.n; i++) chunk(i, { role: 'assistant', content: '' }, null);
      return all(
        Array.from({ length: s.n }, (_, i) => async (sig: AbortSignal) => {
          // With tools the reply is parsed whole (a call or an answer), so it is sent at the end.
          const strip = tools.length ? null : new StripStream();
          const r = await generateOne(model, ids, withSeed(s, i, sig, stop), strip ? (t, lp) => {
            const d = strip.push(t);
            if (d || lp) chunk(i, { content: d }, null, lp ? [lp] : null);
          } : null);
          const m = message(r);
          // With tools, the reply's logprobs go with the first of the chunks that send it whole.
          let pending = tools.length ? r.textLogprobs : null;
          const take = () => {
            const l = pending;
            pending = null;
            return l;
          };
          if (tools.length) {
            const msg = m.message as { content: string | null; tool_calls?: ToolCall[]; function_call?: unknown };
            if (msg.content) chunk(i, { content: msg.content }, null, take());
            if (msg.tool_calls) chunk(i, { tool_calls: msg.tool_calls.map((c, index) => ({ index, ...c })) }, null, take());
            if (msg.function_call) chunk(i, { function_call: msg.function_call }, null, take());
          }
          chunk(i, {}, m.finish_reason, take());
          return r;
        }),
        signal,
      );
    });
    if (!results) return;
    if (s.includeUsage) sse!.send({ ...head, choices: [], usage: usageOf(ids.length, results) });
    sse!.end();
  } catch (err) {
    if (!sse) throw err;
    (sse as Sse).fail(err);
  }
}

/** `prompt`: a string, an array of strings, an array of token ids, or an array of those. */
function prompts(v: unknown, tok: Tokenizer | null): { ids: number[]; text: string }[] {
  const one = (p: unknown, param: string): { ids: number[]; text: string } => {
    if (typeof p === 'string') {
      if (!tok) throw new HttpError(500, 'the model has no tokenizer; send prompts as token ids');
      return { ids: tok.encode(p), text: p };
    }
    if (Array.isArray(p) && p.every((x) => typeof x === 'number')) {
      p.forEach((x, i) => {
        if (!Number.isInteger(x) || x < 0 || x >= 0x7fffffff) throw bad(`Invalid '${param}[${i}]': ${x} is not a token id.`, param, 'invalid_value');
      });
      return { ids: p as number[], text: tok ? tok.decode(p as number[]) : '' };
    }
    throw bad(`Invalid type for '${param}': expected a string or an array of token ids, but got ${typeName(p)} instead.`, param, 'invalid_type');
  };
  if (v === undefined || v === null) throw bad("Missing required parameter: 'prompt'.", 'prompt', 'missing_required_parameter');
  let list: { ids: number[]; text: string }[];
  if (typeof v === 'string' || (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'number'))) list = [one(v, 'prompt')];
  else if (Array.isArray(v) && v.length > 0) list = v.map((p, i) => one(p, `prompt[${i}]`));
  else throw bad(`Invalid 'prompt': expected a string or a non-empty array.`, 'prompt', 'invalid_value');
  list.forEach((p, i) => {
    if (p.ids.length === 0) throw bad(`Invalid '${list.length > 1 ? `prompt[${i}]` : 'prompt'}': the prompt is empty.`, 'prompt', 'invalid_value');
  });
  return list;
}

async function completions(ctx: Ctx, body: Body, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const s = sampling(body, ctx.maxChoices);
  const logprobs = completionLogprobsOption(body);
  if (logprobs !== undefined) s.gen.logprobs = logprobs;
  const model = ctx.model;
  const list = prompts(body.prompt, model.tokenizer);
  if (list.length * s.n > ctx.maxChoices) throw bad(`Too many choices: ${list.length} prompts x n=${s.n} > ${ctx.maxChoices}.`, 'n', 'invalid_value');
  const echo = optBool(body, 'echo') ?? false;
  if (echo && logprobs !== undefined) throw unsupported('echo', "with 'logprobs' it would need the prompt tokens' log-probabilities, which are not computed.");
  if (body.suffix !== undefined && body.suffix !== null && body.suffix !== '') throw unsupported('suffix', 'no fill-in-the-middle.');
  const bestOf = optNumber(body, 'best_of', 1, ctx.maxChoices, true);
  if (bestOf !== undefined && bestOf !== s.n && bestOf !== 1) throw unsupported('best_of', 'choices are not ranked; use n.');
  list.forEach((p, i) => checkContext(ctx, p.ids.length, list.length > 1 ? `prompt[${i}]` : 'prompt'));
  const promptTokens = list.reduce((a, p) => a + p.ids.length, 0);
  const id = newId('cmpl-');
  const created = Math.floor(Date.now() / 1000);
  const jobs = list.flatMap((p) => Array.from({ length: s.n }, (_, i) => ({ p, i })));

  if (!s.stream) {
    const results = await admit(ctx, res, (signal) =>
      all(jobs.map(({ p, i }) => (sig: AbortSignal) => generateOne(model, p.ids, withSeed(s, i, sig, s.stop), null)), signal),
    );
    if (!results) return;
    sendJson(res, 200, {
      id,
      object: 'text_completion',
      created,
      model: ctx.modelId,
      choices: results.map((r, index) => ({
        index,
        text: (echo ? jobs[index].p.text : '') + r.text,
        logprobs: r.textLogprobs ? new CompletionLogprobs(model.tokenizer).of(r.textLogprobs) : null,
        finish_reason: FINISH[r.finishReason],
      })),
      usage: usageOf(promptTokens, results),
    });
    return;
  }

  let sse: Sse | null = null;
  const head = { id, object: 'text_completion', created, model: ctx.modelId };
  const usageField = s.includeUsage ? { usage: null } : {};
  const chunk = (index: number, text: string, finish: string | null, logprobs: ReturnType<CompletionLogprobs['of']> | null = null) =>
    sse!.send({ ...head, choices: [{ index, text, logprobs, finish_reason: finish }], ...usageField });
  try {
    const results = await admit(ctx, res, (signal) => {
      sse = new Sse(res);
      return all(
        jobs.map(({ p, i }, index) => async (sig: AbortSignal) => {
          if (echo) chunk(index, p.text, null);
          const lps = new CompletionLogprobs(model.tokenizer);
          const r = await generateOne(model, p.ids, withSeed(s, i, sig, s.stop), (t, lp) => chunk(index, t, null, lp ? lps.of([lp]) : null));
          chunk(index, '', FINISH[r.finishReason]);
          return r;
        }),
        signal,
      );
    });
    if (!results) return;
    if (s.includeUsage) sse!.send({ ...head, choices: [], usage: usageOf(promptTokens, results) });
    sse!.end();
  } catch (err) {
    if (!sse) throw err;
    (sse as Sse).fail(err);
  }
}

// ---- the `serve` command ----

const SERVE_HELP = `Usage: qwen-native serve --model DIR [--port N] [--host H] [options]

Serves the model over HTTP: an OpenAI-compatible API (POST /v1/chat/completions,
POST /v1/completions, GET /v1/models), GET /health, and a chat page at /.

  --model, -m DIR           checkpoint folder, or "demo" (tiny model, random weights)
  --port N                  default 8000
  --host H                  default 127.0.0.1 (this machine only); 0.0.0.0 for every interface
  --api-key K               require "Authorization: Bearer K" on /v1/* (default: $QWEN_NATIVE_API_KEY, else none)
  --max-queue N             requests in flight at once before 503 (default 32)
  --max-body-bytes N        largest request body (default 1048576)
  --device cpu|cuda|auto    (default auto)
  --context-length N        positions one sequence can hold (default: config.json's seq_length)
  --threads N               CPU threads (default: all cores)
  --help, -h                this text`;

/**
 * `qwen-native serve ...`: loads the model, serves until SIGINT/SIGTERM, resolves to the exit code.
 * `argv` is what follows "serve". Errors (bad flags, load failures) reject with a one-line message.
 */
export async function runServeCommand(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: argv,
      strict: true,
      options: {
        model: { type: 'string', short: 'm' },
        port: { type: 'string' },
        host: { type: 'string' },
        'api-key': { type: 'string' },
        'max-queue': { type: 'string' },
        'max-body-bytes': { type: 'string' },
        device: { type: 'string' },
        'context-length': { type: 'string' },
        threads: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values as typeof values;
  } catch (err) {
    const e = err as Error & { code?: string };
    if (e.code?.startsWith('ERR_PARSE_ARGS_')) throw new Error(`${e.message.split('\n')[0]} (see qwen-native serve --help)`);
    throw err;
  }
  if (values.help) {
    process.stdout.write(SERVE_HELP + '\n');
    return 0;
  }
  const int = (flag: string, min: number, max: number): number | undefined => {
    const t = values[flag] as string | undefined;
    if (t === undefined) return undefined;
    const v = Number(t);
    if (t.trim() === '' || !Number.isInteger(v) || v < min || v > max) throw new Error(`--${flag} must be an integer in [${min}, ${max}], got "${t}"`);
    return v;
  };
  const port = int('port', 0, 65535) ?? 8000;
  const host = (values.host as string | undefined) ?? '127.0.0.1';
  const maxQueue = int('max-queue', 1, 1 << 20);
  const maxBodyBytes = int('max-body-bytes', 1, 1 << 30);
  const apiKey = (values['api-key'] as string | undefined) ?? process.env.QWEN_NATIVE_API_KEY ?? null;
  if (apiKey === '') throw new Error('--api-key must not be empty');
  const load: LoadOptions = {};
  if (values.device !== undefined) load.device = values.device as LoadOptions['device'];
  const contextLength = int('context-length', 1, 1 << 24);
  if (contextLength !== undefined) load.contextLength = contextLength;
  const threads = int('threads', 0, 4096);
  if (threads !== undefined) load.threads = threads;

  let dir = values.model as string | undefined;
  if (!dir) throw new Error('--model DIR is required (or --model demo to try a tiny random-weight model)');
  if (dir === 'demo') {
    process.stderr.write('qwen-native: demo model: random weights, output is gibberish\n');
    const { ensureDemoModel } = await import('./demo');
    dir = await ensureDemoModel();
  }
  const model = await Model.load(dir, load);
  const log = (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  const server = await serve(model, { port, host, apiKey, maxQueue, maxBodyBytes, log, modelId: values.model === 'demo' ? 'demo' : undefined });
  const addr = server.address();
  const shown = addr && typeof addr === 'object' ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : String(addr);
  process.stderr.write(
    `qwen-native: serving ${path.basename(model.dir)} on ${model.device} at ${shown} (chat page at /, OpenAI API at /v1${apiKey ? ', API key required' : ''})\n`,
  );
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) process.exit(130); // a second Ctrl-C: now
      stopping = true;
      process.stderr.write('qwen-native: stopping\n');
      server.close(() => {
        model.dispose();
        resolve(0);
      });
      server.closeIdleConnections();
      // Requests still streaming are cut after a moment; disposing the model aborts their generations.
      setTimeout(() => {
        server.closeAllConnections();
      }, 2000).unref();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}
