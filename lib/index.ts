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
export { makeContext, chatStopIds, decodeReply } from './chat';
export type { ChatTurn, HistoryTurn, ChatFormat } from './chat';
