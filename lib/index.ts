export { Model, Sequence, AbortError } from './model';
export type {
  Device,
  LoadOptions,
  ModelConfig,
  GenerationConfig,
  GenerateOptions,
  GenerateChunk,
  FinishReason,
  CompletionResult,
  ChatOptions,
  ChatResult,
} from './model';
export { Tokenizer, TextStreamDecoder } from './tokenizer';
export { makeContext, chatStopIds, decodeReply, buildChatML, makeChatMLContext, parseChatTemplate } from './chat';
export type { ChatTurn, HistoryTurn, ChatFormat, ChatMessage, ChatTemplateInfo } from './chat';
