import { ENDOFTEXT, IM_END, IM_START, Tokenizer, type TokenIds } from './tokenizer';

export interface ChatTurn {
  query: string;
  response: string;
}
export type HistoryTurn = ChatTurn | readonly [query: string, response: string];
export type ChatFormat = 'chatml' | 'raw';

export const DEFAULT_SYSTEM = 'You are a helpful assistant.';
export const DEFAULT_MAX_WINDOW_SIZE = 6144;

export interface ContextOptions {
  history?: readonly HistoryTurn[];
  system?: string;
  maxWindowSize?: number;
  chatFormat?: ChatFormat;
}

function unpack(turn: HistoryTurn): [string, string] {
  return Array.isArray(turn) ? [turn[0], turn[1]] : [(turn as ChatTurn).query, (turn as ChatTurn).response];
}

/**
 * The prompt Qwen's make_context builds (SPEC 7), token for token. Every role and content string is
 * encoded with specials disallowed, so user text that spells "<|im_end|>" can never close a turn.
 */
export function makeContext(
  tok: Tokenizer,
  query: string,
  opts: ContextOptions = {},
): { rawText: string; tokens: number[] } {
  const { history = [], system = DEFAULT_SYSTEM, maxWindowSize = DEFAULT_MAX_WINDOW_SIZE } = opts;
  const chatFormat = opts.chatFormat ?? 'chatml';
  if (chatFormat === 'raw') return { rawText: query, tokens: tok.encode(query) };
  if (chatFormat !== 'chatml') throw new Error(`Unknown chat format ${JSON.stringify(chatFormat)}`);

  // The original encodes "\n" by itself rather than hard-coding 198; same here, for other vocabularies.
  const nl = tok.encode('\n');
  const block = (role: string, content: string) => ({
    text: `${IM_START}${role}\n${content}${IM_END}`,
    tokens: [tok.imStartId, ...tok.encode(role), ...nl, ...tok.encode(content), tok.imEndId],
  });

  const sys = block('system', system);
  let rawText = '';
  let tokens: number[] = [];
  // Newest turns first; the first that does not fit ends the walk, so older (smaller) turns cannot
  // slip in after it and leave a gap in the conversation. The query is not counted.
  for (let i = history.length - 1; i >= 0; i--) {
    const [q, r] = unpack(history[i]);
    const user = block('user', q);
    const assistant = block('assistant', r);
    const turn = [...nl, ...user.tokens, ...nl, ...assistant.tokens];
    if (sys.tokens.length + turn.length + tokens.length >= maxWindowSize) break;
    tokens = turn.concat(tokens);
    rawText = `\n${user.text}\n${assistant.text}` + rawText;
  }

  const user = block('user', query);
  return {
    rawText: `${sys.text}${rawText}\n${user.text}\n${IM_START}assistant\n`,
    tokens: [...sys.tokens, ...tokens, ...nl, ...user.tokens, ...nl, tok.imStartId, ...tok.encode('assistant'), ...nl],
  };
}

/** Token sequences that end a reply (the original's get_stop_words_ids). */
export function chatStopIds(tok: Tokenizer, chatFormat: ChatFormat = 'chatml'): number[][] {
  return chatFormat === 'chatml' ? [[tok.imEndId], [tok.imStartId]] : [tok.encode('Human:'), [tok.eodId]];
}

// Python's str.strip() set (str.isspace). JS trim() differs: it also strips U+FEFF and keeps
// U+001C..U+001F and U+0085, which a model can emit.
const PY_WS = '[\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]+';
const PY_STRIP_RE = new RegExp(`^${PY_WS}|${PY_WS}$`, 'g');
export function pyStrip(s: string): string {
  return s.replace(PY_STRIP_RE, '');
}

function cutAt(text: string, markers: readonly string[]): string {
  let end = text.length;
  for (const m of markers) {
    const i = text.indexOf(m);
    if (i >= 0 && i < end) end = i;
  }
  return text.slice(0, end);
}

/**
 * Reply text from the decoded generated text (context excluded): everything before the first stop
 * marker, stripped. <|endoftext|> is the generation eos in both formats; raw also stops at "Human:",
 * the base model's start of the next turn.
 */
export function trimReply(text: string, chatFormat: ChatFormat = 'chatml'): string {
  const markers = chatFormat === 'chatml' ? [IM_END, IM_START, ENDOFTEXT] : [ENDOFTEXT, 'Human:'];
  return pyStrip(cutAt(text, markers));
}

/**
 * Reply text from the generated ids (context excluded). For chatml the cut is by id, as in the
 * original, so plain text that merely spells "<|im_end|>" stays in the reply.
 *
 * Deliberate difference: the original's decode_tokens (chatml) drops the last generated token when
 * no im_start/im_end came (its loop index stops one short). That is how it discards a final eos, so
 * eos is a stop id here; but it also loses a real token when max_new_tokens ends the reply. We keep it.
 */
export function decodeReply(tok: Tokenizer, ids: TokenIds, chatFormat: ChatFormat = 'chatml'): string {
  const stops = chatFormat === 'chatml' ? [tok.imEndId, tok.imStartId, tok.eodId] : [tok.eodId];
  let end = 0;
  while (end < ids.length && !stops.includes(ids[end])) end++;
  const text = tok.decode(Array.prototype.slice.call(ids, 0, end));
  return chatFormat === 'chatml' ? pyStrip(text) : trimReply(text, 'raw');
}
