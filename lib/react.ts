// Tool calling for Qwen(1) chat models through the ReAct prompt of Qwen's openai_api.py: the tool
// list becomes an instruction in the user turn, the model writes "Thought: / Action: / Action Input:",
// generation stops at "Observation:", and the reply is parsed back into an OpenAI tool call. A tool
// result comes back as the "Observation:" text of the assistant turn, which the model continues.
//
// This module turns OpenAI chat `messages` (+ `tools`) into what Qwen's make_context takes: a system
// prompt, (query, response) history pairs, and a query -- or, when the conversation ends with an
// assistant or tool message, the text of an unfinished assistant turn to continue.

import { DEFAULT_SYSTEM } from './chat';

/** One tool, as OpenAI's `tools[].function` (or the legacy `functions[]`) describes it. */
export interface ToolSpec {
  name: string;
  description?: string;
  parameters?: unknown;
  /** Qwen's own extensions, honoured when present. */
  name_for_model?: string;
  name_for_human?: string;
  description_for_model?: string;
}

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** A request message, as the OpenAI API shapes it (only the fields used here). */
export interface RequestMessage {
  role: string;
  content?: unknown;
  name?: string;
  tool_calls?: unknown;
  function_call?: unknown;
  tool_call_id?: string;
}

export interface QwenTurns {
  system: string;
  /** Whether the messages gave a system prompt (else `system` is v1's default). */
  systemGiven: boolean;
  history: [query: string, response: string][];
  /** The user query of the new turn; null when the last assistant turn is to be continued. */
  query: string | null;
  /**
   * With query null: the unfinished turn to continue, [user message, assistant text so far]; the
   * prompt ends with that text (no <|im_end|> after it). Not part of `history`.
   */
  continuation: [query: string, partial: string] | null;
}

/** A request that cannot be mapped; `param` names the offending field (OpenAI's error.param). */
export class MessageError extends Error {
  readonly param: string;
  constructor(message: string, param: string) {
    super(message);
    this.name = 'MessageError';
    this.param = param;
  }
}

/** Qwen v1's default system prompt (lib/chat.ts), which Qwen's openai_api.py also uses. */
export const DEFAULT_SYSTEM_PROMPT = DEFAULT_SYSTEM;
/** Generation stops here: the tool's result is the caller's to supply. */
export const REACT_STOP = 'Observation:';

function toolLine(t: ToolSpec): string {
  const nameM = t.name_for_model ?? t.name;
  const nameH = t.name_for_human ?? t.name;
  const desc = t.description_for_model ?? t.description ?? '';
  // Python's json.dumps(..., ensure_ascii=False) separators: ", " and ": ".
  const params = pyJson(t.parameters ?? {});
  return `${nameM}: Call this tool to interact with the ${nameH} API. What is the ${nameH} API useful for? ${desc} Parameters: ${params}`;
}

/** json.dumps(v, ensure_ascii=False) as Python writes it (", " and ": " separators). */
export function pyJson(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return `[${v.map(pyJson).join(', ')}]`;
  if (typeof v === 'object') {
    return `{${Object.entries(v as Record<string, unknown>)
      .map(([k, x]) => `${JSON.stringify(k)}: ${pyJson(x)}`)
      .join(', ')}}`;
  }
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  return JSON.stringify(v);
}

/** The ReAct instruction that precedes the question (empty for no tools). */
export function reactInstruction(tools: readonly ToolSpec[]): string {
  if (!tools.length) return '';
  const toolsText = tools.map(toolLine).join('\n\n');
  const names = tools.map((t) => t.name_for_model ?? t.name).join(', ');
  return [
    'Answer the following questions as best you can. You have access to the following APIs:',
    '',
    toolsText,
    '',
    'Use the following format:',
    '',
    'Question: the input question you must answer',
    'Thought: you should always think about what to do',
    `Action: the action to take, should be one of [${names}]`,
    'Action Input: the input to the action',
    'Observation: the result of the action',
    '... (this Thought/Action/Action Input/Observation can be repeated zero or more times)',
    'Thought: I now know the final answer',
    'Final Answer: the final answer to the original input question',
    '',
    'Begin!',
  ].join('\n').trim();
}

/**
 * OpenAI `tools` (type "function") and/or legacy `functions` -> ToolSpec[]. Throws MessageError on
 * a malformed entry.
 */
export function normalizeTools(tools: unknown, functions: unknown): ToolSpec[] {
  const out: ToolSpec[] = [];
  const take = (f: unknown, param: string) => {
    if (!f || typeof f !== 'object' || Array.isArray(f)) throw new MessageError(`${param} must be an object`, param);
    const o = f as Record<string, unknown>;
    if (typeof o.name !== 'string' || o.name === '') throw new MessageError(`${param}.name must be a non-empty string`, `${param}.name`);
    if (o.description !== undefined && typeof o.description !== 'string')
      throw new MessageError(`${param}.description must be a string`, `${param}.description`);
    if (o.parameters !== undefined && (typeof o.parameters !== 'object' || o.parameters === null || Array.isArray(o.parameters)))
      throw new MessageError(`${param}.parameters must be a JSON Schema object`, `${param}.parameters`);
    for (const k of ['name_for_model', 'name_for_human', 'description_for_model'])
      if (o[k] !== undefined && typeof o[k] !== 'string') throw new MessageError(`${param}.${k} must be a string`, `${param}.${k}`);
    out.push(o as unknown as ToolSpec);
  };
  if (tools !== undefined && tools !== null) {
    if (!Array.isArray(tools)) throw new MessageError('tools must be an array', 'tools');
    tools.forEach((t, i) => {
      if (!t || typeof t !== 'object') throw new MessageError(`tools[${i}] must be an object`, `tools[${i}]`);
      const o = t as Record<string, unknown>;
      if (o.type !== 'function') throw new MessageError(`tools[${i}].type must be "function"`, `tools[${i}].type`);
      take(o.function, `tools[${i}].function`);
    });
  }
  if (functions !== undefined && functions !== null) {
    if (!Array.isArray(functions)) throw new MessageError('functions must be an array', 'functions');
    functions.forEach((f, i) => take(f, `functions[${i}]`));
  }
  return out;
}

/** Message content: a string, null, or an array of {type: "text", text} parts. */
export function contentText(content: unknown, param: string): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((p, i) => {
        if (p && typeof p === 'object' && (p as { type?: unknown }).type === 'text' && typeof (p as { text?: unknown }).text === 'string')
          return (p as { text: string }).text;
        const type = p && typeof p === 'object' ? String((p as { type?: unknown }).type) : typeof p;
        throw new MessageError(`${param}[${i}]: content part of type ${type} is not supported (text only)`, `${param}[${i}]`);
      })
      .join('\n');
  }
  throw new MessageError(`${param} must be a string or an array of text parts`, param);
}

/** Python's s.lstrip('\n').rstrip(), which the original applies to every message. */
const TRAILING_WS = /[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/;
function tidy(s: string): string {
  return s.replace(/^\n+/, '').replace(TRAILING_WS, '');
}

interface CallText {
  name: string;
  args: string;
}

function toolCallsOf(m: RequestMessage, i: number): CallText[] {
  const calls: CallText[] = [];
  if (m.tool_calls !== undefined && m.tool_calls !== null) {
    if (!Array.isArray(m.tool_calls)) throw new MessageError(`messages[${i}].tool_calls must be an array`, `messages[${i}].tool_calls`);
    m.tool_calls.forEach((c, j) => {
      const p = `messages[${i}].tool_calls[${j}]`;
      const f = c && typeof c === 'object' ? (c as { function?: unknown }).function : undefined;
      if (!f || typeof f !== 'object') throw new MessageError(`${p}.function must be an object`, `${p}.function`);
      const { name, arguments: args } = f as { name?: unknown; arguments?: unknown };
      if (typeof name !== 'string' || !name) throw new MessageError(`${p}.function.name must be a non-empty string`, `${p}.function.name`);
      if (args !== undefined && typeof args !== 'string') throw new MessageError(`${p}.function.arguments must be a string`, `${p}.function.arguments`);
      calls.push({ name, args: args ?? '' });
    });
  }
  if (m.function_call !== undefined && m.function_call !== null) {
    const p = `messages[${i}].function_call`;
    const { name, arguments: args } = m.function_call as { name?: unknown; arguments?: unknown };
    if (typeof name !== 'string' || !name) throw new MessageError(`${p}.name must be a non-empty string`, `${p}.name`);
    if (args !== undefined && typeof args !== 'string') throw new MessageError(`${p}.arguments must be a string`, `${p}.arguments`);
    calls.push({ name, args: args ?? '' });
  }
  return calls;
}

const actionText = (c: CallText) => `\nAction: ${c.name}\nAction Input: ${c.args}`;

/**
 * OpenAI messages -> Qwen's (system, history, query), following parse_messages of Qwen's
 * openai_api.py:
 * - system (and "developer") messages form the system prompt (joined by newlines), default
 *   "You are a helpful assistant.";
 * - with tools, each earlier plain assistant reply is written "Thought: I now know the final
 *   answer.\nFinal Answer: ..." and an assistant tool call "Thought: ...\nAction: NAME\nAction Input:
 *   ARGS"; a tool (or "function") message appends "\nObservation: RESULT" to the assistant turn
 *   before it, and when it is the last message, "\nThought:" too, for the model to continue;
 * - the ReAct instruction goes before the newest user message that opens a turn ("Question: ...");
 * - consecutive user messages are joined by a newline (the original rejects them), consecutive
 *   assistant ones too (as the original does);
 * - the last user message is the query; if the conversation ends with an assistant or tool
 *   message, query is null and that assistant turn is continued.
 */
export function toQwenTurns(messages: unknown, tools: readonly ToolSpec[]): QwenTurns {
  if (!Array.isArray(messages)) throw new MessageError('messages must be an array', 'messages');
  if (messages.length === 0) throw new MessageError('messages must not be empty', 'messages');
  const withTools = tools.length > 0;
  const systems: string[] = [];
  const turns: { role: 'user' | 'assistant'; content: string }[] = [];
  let pending: CallText[] = []; // tool calls of the last assistant message not yet answered
  messages.forEach((raw, i) => {
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new MessageError(`messages[${i}] must be an object`, `messages[${i}]`);
    const m = raw as RequestMessage;
    const role = m.role;
    if (typeof role !== 'string') throw new MessageError(`messages[${i}].role must be a string`, `messages[${i}].role`);
    const content = tidy(contentText(m.content, `messages[${i}].content`));
    const last = turns[turns.length - 1];
    if (role === 'system' || role === 'developer') {
      systems.push(content);
    } else if (role === 'user') {
      if (last?.role === 'user') last.content += '\n' + content;
      else turns.push({ role: 'user', content });
      pending = [];
    } else if (role === 'assistant') {
      if (!last) throw new MessageError(`messages[${i}]: an assistant message needs a user message before it`, `messages[${i}].role`);
      const calls = toolCallsOf(m, i);
      let text: string;
      if (calls.length) {
        text = (content.startsWith('Thought:') ? content : `Thought: ${content}`) + actionText(calls[0]);
        pending = calls.slice(1);
      } else {
        text = withTools ? `Thought: I now know the final answer.\nFinal Answer: ${content}` : content;
        pending = [];
      }
      if (last.role === 'user') turns.push({ role: 'assistant', content: tidy(text) });
      else last.content += '\n' + text;
    } else if (role === 'tool' || role === 'function') {
      if (last?.role !== 'assistant')
        throw new MessageError(`messages[${i}]: a ${role} message must follow an assistant message`, `messages[${i}].role`);
      last.content += `\nObservation: ${content}`;
      // Several calls in one assistant message: the next one follows this result.
      const next = pending.shift();
      if (next) last.content += `\nThought:${actionText(next)}`;
      else if (i === messages.length - 1) last.content += '\nThought:';
    } else {
      throw new MessageError(`messages[${i}].role ${JSON.stringify(role)} is not one of system, developer, user, assistant, tool`, `messages[${i}].role`);
    }
  });
  if (!turns.some((t) => t.role === 'user')) throw new MessageError('messages must contain at least one user message', 'messages');

  // turns alternates user, assistant (consecutive same roles were merged) and starts with a user.
  const last = turns[turns.length - 1];
  const query = last.role === 'user' ? last.content : null;
  const paired = query === null ? turns : turns.slice(0, -1);
  const history: [string, string][] = [];
  for (let p = 0; p < paired.length; p += 2) history.push([paired[p].content, paired[p + 1].content]);
  // As in the original: the instruction goes to the newest turn of the history when there is one
  // (so it stays next to the tool calls of a continued turn), else to the query.
  const instruction = reactInstruction(tools);
  let q = query;
  if (instruction) {
    if (history.length) history[history.length - 1][0] = `${instruction}\n\nQuestion: ${history[history.length - 1][0]}`;
    else q = `${instruction}\n\nQuestion: ${q}`;
  }
  const system = systems.length ? tidy(systems.join('\n')) : DEFAULT_SYSTEM_PROMPT;
  const systemGiven = systems.length > 0;
  if (query !== null) return { system, systemGiven, history, query: q, continuation: null };
  const open = history.pop()!;
  return { system, systemGiven, history, query: null, continuation: open };
}

export interface ParsedReply {
  /** The text for message.content (the Thought before a call, else the final answer). */
  content: string;
  /** The tool call the model asked for, if any. */
  call: { name: string; arguments: string } | null;
}

/**
 * The model's ReAct output -> a tool call or a final answer, as parse_response in Qwen's
 * openai_api.py: "\nAction:" followed by "\nAction Input:" is a call (its input runs to
 * "\nObservation:" or the end); otherwise the text after the last "\nFinal Answer: " is the answer,
 * or the whole text when there is none.
 */
export function parseReactResponse(text: string): ParsedReply {
  // A continued turn starts right after "Thought:" (no newline before "Action:" then is impossible,
  // as the original assumes) -- and a reply may begin with "Action:" itself; a leading newline lets
  // the same search find it.
  const t = text.startsWith('Action:') ? '\n' + text : text;
  const i = t.indexOf('\nAction:');
  const j = t.indexOf('\nAction Input:');
  if (i >= 0 && i < j) {
    let k = t.indexOf('\nObservation:', j);
    if (k < 0) k = t.length;
    const name = t.slice(i + '\nAction:'.length, j).trim();
    const args = t.slice(j + '\nAction Input:'.length, k).trim();
    if (name) {
      let thought = t.slice(0, i);
      const th = thought.indexOf('Thought: ');
      if (th >= 0) thought = thought.slice(th + 'Thought: '.length);
      return { content: thought.trim(), call: { name, arguments: args } };
    }
  }
  const z = text.lastIndexOf('\nFinal Answer: ');
  if (z >= 0) return { content: text.slice(z + '\nFinal Answer: '.length), call: null };
  if (text.startsWith('Final Answer: ')) return { content: text.slice('Final Answer: '.length), call: null };
  return { content: text, call: null };
}
