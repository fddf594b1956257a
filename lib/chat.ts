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
 * One ChatML block as make_context encodes it: im_start, the role, "\n", the content (both with
 * no specials allowed), and im_end unless `close` is false (an assistant turn left open to be
 * continued).
 */
export function chatmlBlockIds(tok: Tokenizer, role: string, content: string, close = true): number[] {
  return [tok.imStartId, ...tok.encode(role), ...tok.encode('\n'), ...tok.encode(content), ...(close ? [tok.imEndId] : [])];
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
    tokens: chatmlBlockIds(tok, role, content),
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
/** Python's str.isspace() set, as a regex character-class body. */
export const PY_WS_CLASS = '\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_WS = `[${PY_WS_CLASS}]+`;
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

// ---- Qwen1.5 / Qwen2 / Qwen2.5 / Qwen3 (model_type "qwen2" / "qwen3"): the tokenizer_config.json template ----

export const QWEN2_DEFAULT_SYSTEM = 'You are a helpful assistant.';
export const QWEN25_DEFAULT_SYSTEM = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.';

/**
 * What we take from a Hugging Face chat template. We do not run Jinja: the Qwen templates are all
 * ChatML (`<|im_start|>{role}\n{content}<|im_end|>\n` per message, `<|im_start|>assistant\n` to
 * prompt), differing only in the system message inserted when the caller gives none (Qwen1.5/2:
 * "You are a helpful assistant[.]", Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...", Qwen3:
 * none) and Qwen3's `enable_thinking` switch.
 */
export interface ChatTemplateInfo {
  /** The system message the template inserts when the conversation has none; null: none. */
  defaultSystem: string | null;
  /** The template knows `enable_thinking` (Qwen3): false opens the reply with an empty think block. */
  thinking: boolean;
}

/**
 * Reads a chat_template (tokenizer_config.json's string, or the first of its named list). Returns
 * null when it is not ChatML, so the caller can say so instead of building a wrong prompt.
 */
export function parseChatTemplate(template: unknown): ChatTemplateInfo | null {
  let t = template;
  if (Array.isArray(t)) t = (t.find((x) => x?.name === 'default') ?? t[0])?.template;
  if (typeof t !== 'string' || !t.includes(IM_START) || !t.includes(IM_END)) return null;
  // The default system literal: '<|im_start|>system\n...<|im_end|>' inside a Jinja string, with the
  // newline as a real newline or as the two characters \n.
  const m = /<\|im_start\|>system(?:\n|\\n)([^'"{}]*?)<\|im_end\|>/.exec(t);
  return { defaultSystem: m ? m[1] : null, thinking: t.includes('enable_thinking') };
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatMLOptions {
  template?: ChatTemplateInfo | null;
  /** Qwen3: false starts the assistant turn with "<think>\n\n</think>\n\n" (no reasoning). */
  enableThinking?: boolean;
}

/**
 * The prompt the Qwen2/2.5/3 chat templates render for `messages` with add_generation_prompt, as
 * ids. Like makeContext, message contents are encoded with specials disallowed (text that spells
 * "<|im_end|>" stays text; Hugging Face's tokenizer would turn it into the control token); the
 * text between two control tokens is encoded as one piece, as the Hugging Face tokenizer does.
 * Qwen3: earlier assistant turns keep only the text after their last "</think>", as its template does.
 */
export function buildChatML(tok: Tokenizer, messages: readonly ChatMessage[], opts: ChatMLOptions = {}): { rawText: string; tokens: number[] } {
  const template = opts.template ?? { defaultSystem: QWEN2_DEFAULT_SYSTEM, thinking: false };
  const msgs = [...messages];
  if (template.defaultSystem !== null && (msgs.length === 0 || msgs[0].role !== 'system'))
    msgs.unshift({ role: 'system', content: template.defaultSystem });
  const tokens: number[] = [];
  let rawText = '';
  const text = (s: string) => {
    rawText += s;
    tokens.push(...tok.encode(s));
  };
  const special = (id: number, s: string) => {
    rawText += s;
    tokens.push(id);
  };
  let lastUser = -1;
  msgs.forEach((m, i) => { if (m.role === 'user') lastUser = i; });
  msgs.forEach((m, i) => {
    let content = m.content;
    if (template.thinking && m.role === 'assistant' && i < lastUser && content.includes('</think>'))
      content = content.slice(content.lastIndexOf('</think>') + '</think>'.length).replace(/^\n+/, '');
    special(tok.imStartId, IM_START);
    text(`${m.role}\n${content}`);
    special(tok.imEndId, IM_END);
    text('\n');
  });
  special(tok.imStartId, IM_START);
  text('assistant\n');
  if (template.thinking && opts.enableThinking === false) {
    // <think> and </think> are added tokens of Qwen3's vocabulary: encode them as such.
    rawText += '<think>\n\n</think>\n\n';
    tokens.push(...tok.encode('<think>\n\n</think>\n\n', { allowSpecial: true }));
  }
  return { rawText, tokens };
}

/** A chat turn (history + query) through buildChatML; `system` replaces the template's default. */
export function makeChatMLContext(
  tok: Tokenizer,
  query: string,
  opts: { history?: readonly HistoryTurn[]; system?: string; template?: ChatTemplateInfo | null; enableThinking?: boolean } = {},
): { rawText: string; tokens: number[] } {
  const messages: ChatMessage[] = [];
  if (opts.system !== undefined) messages.push({ role: 'system', content: opts.system });
  for (const h of opts.history ?? []) {
    const [q, r] = unpack(h);
    messages.push({ role: 'user', content: q }, { role: 'assistant', content: r });
  }
  messages.push({ role: 'user', content: query });
  return buildChatML(tok, messages, { template: opts.template, enableThinking: opts.enableThinking });
}
