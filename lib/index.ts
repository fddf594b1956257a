export { Model, Sequence, AbortError, QueueFullError, MAX_LOGPROBS } from './model';
export type {
  Device,
  LoadOptions,
  ModelConfig,
  GenerationConfig,
  GenerateOptions,
  GenerateChunk,
  TokenLogprob,
  TokenLogprobs,
  FinishReason,
  CompletionResult,
  ChatOptions,
  ChatResult,
} from './model';
export { Tokenizer, TextStreamDecoder } from './tokenizer';
export { makeContext, chatStopIds, decodeReply, buildChatML, makeChatMLContext, parseChatTemplate } from './chat';
export type { ChatTurn, HistoryTurn, ChatFormat, ChatMessage, ChatTemplateInfo } from './chat';
export { createServer, serve, runServeCommand, HttpError } from './server';
export type { ServerOptions, ServeOptions } from './server';
export { toQwenTurns, parseReactResponse, reactInstruction, normalizeTools, MessageError, REACT_STOP } from './react';
export type { ToolSpec, ToolCall, QwenTurns, ParsedReply } from './react';
export { WEB_PAGE_HTML } from './web';
export { doctor, formatDoctor } from './doctor';
export { pull } from './pull';
