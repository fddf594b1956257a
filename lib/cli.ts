#!/usr/bin/env node
// The qwen-native command: `generate` streams one completion, `chat` is an interactive ChatML chat
// in the manner of Qwen's cli_demo.py. All option checking beyond "is it a number" is the library's;
// its messages are re-worded here to name the flag the user typed.
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { AbortError, Model, type CompletionResult, type GenerateOptions, type LoadOptions } from './model';
import { ensureDemoModel } from './demo';
import { DEFAULT_SYSTEM, type ChatTurn } from './chat';
import { doctor, formatDoctor } from './doctor';
import { formatBytes, pull, type PullProgress } from './pull';
import { runServeCommand } from './server';

const COMMON_HELP = `  --model, -m DIR           checkpoint folder, or "demo" (tiny model, random weights)
  --max-new-tokens N        tokens to generate at most (default: generation_config.json, else 512)
  --temperature T           0 = greedy (default: generation_config.json, else 1.0)
  --top-p P                 nucleus sampling mass (default: generation_config.json, else 1.0)
  --top-k K                 0 = off (default: generation_config.json, else 0)
  --repetition-penalty R    (default: generation_config.json, else 1.0)
  --seed S                  integer; same seed, prompt and options give the same text
  --device cpu|cuda|auto    (default auto: CUDA when built with it and a GPU is present)
  --context-length N        positions one sequence can hold (default: config.json's seq_length)
  --threads N               CPU threads (default: all cores)
  --help, -h                this text`;

const CHAT_COMMANDS = `  :clear          forget the conversation
  :history        print the conversation
  :system TEXT    set the system prompt (and forget the conversation); alone, print it
  :exit           quit (so does end of input, Ctrl-D)
Ctrl-C while a reply streams stops it (a stopped reply is not kept in the history);
Ctrl-C at the prompt quits.`;

const HELP: Record<string, string> = {
  main: `Usage: qwen-native <command> --model DIR [options]

Commands:
  generate   complete a prompt, streaming the text to stdout
  chat       interactive chat (ChatML), history kept between turns
  serve      OpenAI-compatible HTTP server (/v1) and a chat page (/)
  pull       download a checkpoint from the Hugging Face Hub (qwen-native pull org/name)
  doctor     print the GPU, driver and binary found, and what device 'auto' will use

Run "qwen-native <command> --help" for its options; "qwen-native --version" prints
the version. "--model demo" runs a tiny random-weight checkpoint (built on first
use) to try the commands without a download.`,
  generate: `Usage: qwen-native generate --model DIR [--prompt TEXT] [options]

Streams the completion of the prompt to stdout; then one line on stderr with the
token count, speed and why it stopped. Without --prompt the prompt is read from
stdin (verbatim). Ctrl-C stops the generation.

  --prompt, -p TEXT         the prompt (plain text; control-token spellings stay text)
${COMMON_HELP}`,
  pull: `Usage: qwen-native pull ORG/NAME [--revision R] [--dir D]

Downloads the files a load needs (config.json, generation_config.json, qwen.tiktoken,
tokenizer_config.json, quantize_config.json, and model.safetensors or the index and its
shards) from the Hugging Face Hub. Interrupted downloads resume; files are checked
against the sha256 the hub lists. HF_TOKEN is sent for gated or private repos;
HF_ENDPOINT points at a mirror.

  --revision, -r R          branch, tag or commit (default main)
  --dir, -d D               destination folder (default ./NAME)
  --concurrency N           files at once (default 4)
  --help, -h                this text`,
  doctor: `Usage: qwen-native doctor [--json]

Prints what was found: the binary in use (prebuilt or built here, CUDA or CPU), the
NVIDIA driver, the GPUs and their compute capability, and which device 'auto' will
run on and why.

  --json                    the same as JSON
  --help, -h                this text`,
  chat: `Usage: qwen-native chat --model DIR [--system TEXT] [options]

Reads a message per line from stdin and streams the reply. Commands:
${CHAT_COMMANDS}

  --system TEXT             system prompt (default: the checkpoint's; Qwen v1: "${DEFAULT_SYSTEM}")
${COMMON_HELP}`,
};

// Numeric flags -> the library option they set; `load` ones go to Model.load.
const NUMERIC: Record<string, { key: string; integer?: boolean; load?: boolean }> = {
  'max-new-tokens': { key: 'maxNewTokens', integer: true },
  temperature: { key: 'temperature' },
  'top-p': { key: 'topP' },
  'top-k': { key: 'topK', integer: true },
  'repetition-penalty': { key: 'repetitionPenalty' },
  seed: { key: 'seed', integer: true },
  'context-length': { key: 'contextLength', integer: true, load: true },
  threads: { key: 'threads', integer: true, load: true },
};
const FLAG_OF: Record<string, string> = { device: 'device' };
for (const [flag, { key }] of Object.entries(NUMERIC)) FLAG_OF[key] = flag;

/** A mistake in the command line: the message is the whole story (no stack even with QWEN_NATIVE_DEBUG). */
class UsageError extends Error {}

function parse(command: 'generate' | 'chat', args: string[]) {
  const options: NonNullable<ParseArgsConfig['options']> = {
    model: { type: 'string', short: 'm' },
    device: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
    ...Object.fromEntries(Object.keys(NUMERIC).map((k) => [k, { type: 'string' }])),
    ...(command === 'generate' ? { prompt: { type: 'string', short: 'p' } } : { system: { type: 'string' } }),
  };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args, options, strict: true }).values as typeof values; // no `multiple` options
  } catch (err) {
    const e = err as Error & { code?: string };
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const flag = /'([^']+)'/.exec(e.message)?.[1] ?? e.message;
      throw new UsageError(`unknown flag ${flag} for ${command} (see qwen-native ${command} --help)`);
    }
    if (e.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL')
      throw new UsageError(`unexpected argument ${/'([^']+)'/.exec(e.message)?.[1] ?? ''} (see qwen-native ${command} --help)`);
    if (e.code?.startsWith('ERR_PARSE_ARGS_')) throw new UsageError(e.message);
    throw err;
  }
  const load: LoadOptions = {};
  const gen: GenerateOptions = {};
  for (const [flag, { key, integer, load: isLoad }] of Object.entries(NUMERIC)) {
    const text = values[flag] as string | undefined;
    if (text === undefined) continue;
    const v = Number(text);
    if (text.trim() === '' || !Number.isFinite(v) || (integer && !Number.isInteger(v)))
      throw new UsageError(`--${flag} must be ${integer ? 'an integer' : 'a number'}, got "${text}"`);
    (isLoad ? (load as Record<string, number>) : (gen as Record<string, number>))[key] = v;
  }
  if (values.device !== undefined) load.device = values.device as LoadOptions['device'];
  return { values, load, gen };
}

/** Library messages name camelCase options ("option topP must be ..."); the user typed flags. */
function reword(message: string): string {
  return message.replace(/^option (\w+)/, (m, key: string) => (FLAG_OF[key] ? `--${FLAG_OF[key]}` : m)).replace(/^qwen-native: /, '');
}

async function loadModel(spec: string | undefined, options: LoadOptions): Promise<Model> {
  if (!spec) throw new UsageError('--model DIR is required (or --model demo to try a tiny random-weight model)');
  let dir = spec;
  if (spec === 'demo') {
    process.stderr.write('qwen-native: demo model: random weights, output is gibberish\n');
    dir = await ensureDemoModel();
  }
  const err = process.stderr;
  const t0 = performance.now();
  let onProgress: LoadOptions['onProgress'];
  if (err.isTTY) {
    // One line, redrawn in place: "loading NAME [#####.....]  45%".
    const label = `loading ${path.basename(path.resolve(dir))} `;
    onProgress = ({ fraction }) => {
      const width = Math.max(10, Math.min(40, (err.columns ?? 80) - label.length - 8));
      const done = Math.round(fraction * width);
      err.write(`\r${label}[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${String(Math.floor(fraction * 100)).padStart(3)}%`);
    };
  }
  try {
    const model = await Model.load(dir, { ...options, onProgress });
    if (err.isTTY) err.write(`\r\x1b[2Kloaded ${dir} in ${((performance.now() - t0) / 1000).toFixed(1)} s on ${model.device}\n`);
    return model;
  } catch (e) {
    if (err.isTTY) err.write('\r\x1b[2K');
    throw e;
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function generate(args: string[]): Promise<number> {
  const { values, load, gen } = parse('generate', args);
  if (values.help) return help('generate');
  let prompt = values.prompt as string | undefined;
  if (prompt === undefined) {
    if (process.stdin.isTTY) throw new UsageError('no prompt: pass --prompt TEXT or pipe the prompt on stdin');
    prompt = await readStdin();
  }
  if (prompt === '') throw new UsageError('the prompt is empty');
  const model = await loadModel(values.model as string | undefined, load);

  const ctl = new AbortController();
  // First Ctrl-C stops the generation (the summary still prints); a second one quits at once.
  process.on('SIGINT', () => (ctl.signal.aborted ? process.exit(130) : ctl.abort()));
  const t0 = performance.now();
  let tFirst = 0;
  let result: CompletionResult;
  let last = '';
  try {
    const it = model.generate(prompt, { ...gen, signal: ctl.signal });
    for (let r = await it.next(); ; r = await it.next()) {
      if (r.done) {
        result = r.value;
        break;
      }
      tFirst ||= performance.now();
      if (r.value.text) process.stdout.write((last = r.value.text));
    }
  } catch (e) {
    if (!(e instanceof AbortError)) throw e;
    result = e.partial;
  }
  const tEnd = performance.now();
  if (process.stdout.isTTY && !last.endsWith('\n')) process.stdout.write('\n'); // only for the eye: pipes get the text as is
  const n = result.usage.completionTokens;
  // Decode speed counts the tokens after the first, so a long prompt's prefill does not hide it.
  const rate = n > 1 && tEnd > tFirst ? `${((n - 1) / ((tEnd - tFirst) / 1000)).toFixed(1)} tok/s` : 'n/a tok/s';
  const ttft = tFirst ? `${Math.round(tFirst - t0)} ms` : 'n/a';
  process.stderr.write(
    `[${n} tokens, ${rate}, first token after ${ttft} (${result.usage.promptTokens}-token prompt), finish: ${result.finishReason}]\n`,
  );
  model.dispose();
  return result.finishReason === 'abort' ? 130 : 0;
}

async function chat(args: string[]): Promise<number> {
  const { values, load, gen } = parse('chat', args);
  if (values.help) return help('chat');
  const model = await loadModel(values.model as string | undefined, load);
  // Unset: the model's own default (v1: "You are a helpful assistant."; qwen2/qwen3: the template's).
  let system = values.system as string | undefined;
  let history: ChatTurn[] = [];

  const out = process.stdout;
  const interactive = Boolean(process.stdin.isTTY && out.isTTY);
  // Created after the load: stdin buffers meanwhile. The async iterator queues lines that arrive
  // while a reply streams, so piped input is never dropped.
  const rl = readline.createInterface({ input: process.stdin, output: out, terminal: interactive, prompt: 'User> ' });
  const lines = rl[Symbol.asyncIterator]();
  let replying: AbortController | null = null;
  const onInterrupt = () => {
    if (replying) return replying.abort();
    out.write('\n');
    rl.close();
    model.dispose();
    process.exit(130);
  };
  rl.on('SIGINT', onInterrupt); // terminal mode: readline sees Ctrl-C as a key
  process.on('SIGINT', onInterrupt); // piped stdin: a real signal

  if (interactive) out.write('Type a message; :help lists the commands, Ctrl-D quits.\n');
  for (;;) {
    if (interactive) rl.prompt();
    const next = await lines.next();
    if (next.done) break;
    const line = (next.value as string).trim();
    if (!line) continue;
    // As in cli_demo.py, ":word" is a command only when the word is one; else it is a message.
    const [, cmd, rest = ''] = /^:(\S+)\s*([\s\S]*)$/.exec(line) ?? [];
    if (cmd === 'exit' || cmd === 'quit' || cmd === 'q') break;
    if (cmd === 'help') {
      out.write(CHAT_COMMANDS + '\n');
      continue;
    }
    if (cmd === 'clear') {
      history = [];
      out.write('[history cleared]\n');
      continue;
    }
    if (cmd === 'history') {
      if (!history.length) out.write('[history is empty]\n');
      for (const [i, t] of history.entries()) out.write(`[${i + 1}] User: ${t.query}\n[${i + 1}] Qwen: ${t.response}\n`);
      continue;
    }
    if (cmd === 'system') {
      if (!rest) {
        out.write(`[system: ${system ?? "(the model's default)"}]\n`);
        continue;
      }
      system = rest;
      history = [];
      out.write('[system prompt set; history cleared]\n');
      continue;
    }

    replying = new AbortController();
    out.write('Qwen: ');
    let started = false; // the reply is stripped (SPEC 7); drop the leading whitespace as it streams
    try {
      const it = model.chat(line, { ...gen, history, system, stream: true, signal: replying.signal });
      for (let r = await it.next(); ; r = await it.next()) {
        if (r.done) {
          history = r.value.history;
          break;
        }
        let text = r.value.text;
        if (!started) text = text.replace(/^\s+/, '');
        started ||= text !== '';
        out.write(text);
      }
      out.write('\n');
    } catch (e) {
      if (!(e instanceof AbortError)) {
        out.write('\n');
        process.stderr.write(`qwen-native: ${reword((e as Error).message)}\n`);
      } else out.write(' [stopped; not kept in the history]\n');
    } finally {
      replying = null;
    }
  }
  rl.close();
  model.dispose();
  return 0;
}

function simpleParse(command: string, args: string[], options: NonNullable<ParseArgsConfig['options']>) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (err) {
    const e = err as Error & { code?: string };
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION')
      throw new UsageError(`unknown flag ${/'([^']+)'/.exec(e.message)?.[1] ?? e.message} for ${command} (see qwen-native ${command} --help)`);
    if (e.code?.startsWith('ERR_PARSE_ARGS_')) throw new UsageError(e.message);
    throw err;
  }
}

async function pullCommand(args: string[]): Promise<number> {
  const { values, positionals } = simpleParse('pull', args, {
    revision: { type: 'string', short: 'r' },
    dir: { type: 'string', short: 'd' },
    concurrency: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return help('pull');
  if (positionals.length !== 1) throw new UsageError('pull takes one repo, as org/name (see qwen-native pull --help)');
  let concurrency: number | undefined;
  if (values.concurrency !== undefined) {
    concurrency = Number(values.concurrency);
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new UsageError(`--concurrency must be a positive integer, got "${values.concurrency}"`);
  }
  const err = process.stderr;
  const ctl = new AbortController();
  process.on('SIGINT', () => (ctl.signal.aborted ? process.exit(130) : ctl.abort()));
  let lastDraw = 0;
  const onProgress = (p: PullProgress) => {
    if (err.isTTY) {
      const now = Date.now();
      if (!p.file && now - lastDraw < 100) return;
      lastDraw = now;
      const frac = p.total ? Math.min(1, p.done / p.total) : 0;
      const label = `${formatBytes(p.done)} / ${formatBytes(p.total)}, ${p.filesDone}/${p.files} files `;
      const width = Math.max(10, Math.min(40, (err.columns ?? 80) - label.length - 8));
      const done = Math.round(frac * width);
      err.write(`\r\x1b[2K${label}[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${String(Math.floor(frac * 100)).padStart(3)}%`);
    } else if (p.file) err.write(`qwen-native: ${p.file} done (${p.filesDone}/${p.files} files)\n`);
  };
  const t0 = performance.now();
  const r = await pull(positionals[0], {
    revision: values.revision as string | undefined,
    dir: values.dir as string | undefined,
    concurrency,
    onProgress,
    signal: ctl.signal,
  });
  if (err.isTTY) err.write('\r\x1b[2K');
  const fetched = r.files.filter((f) => !f.skipped).length;
  const checked = r.files.filter((f) => f.verified === 'sha256').length;
  err.write(
    `qwen-native: ${r.dir}: ${r.files.length} files, ${formatBytes(r.bytes)} (${fetched} downloaded, ${r.files.length - fetched} already there; ` +
      `${checked} sha256-checked) in ${((performance.now() - t0) / 1000).toFixed(1)} s${r.commit ? `, commit ${r.commit.slice(0, 12)}` : ''}\n`,
  );
  process.stdout.write(r.dir + '\n');
  return 0;
}

function doctorCommand(args: string[]): number {
  const { values } = simpleParse('doctor', args, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } });
  if (values.help) return help('doctor');
  const r = doctor();
  process.stdout.write(values.json ? JSON.stringify(r, null, 2) + '\n' : formatDoctor(r));
  return r.loadError ? 1 : 0;
}

function help(which: string): number {
  process.stdout.write(HELP[which] + '\n');
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  // A closed pipe (`| head`) is the reader's choice, not an error.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' ? process.exit(0) : undefined));
  if (command === 'generate') return generate(args);
  if (command === 'chat') return chat(args);
  if (command === 'serve') return runServeCommand(args);
  if (command === 'pull') return pullCommand(args);
  if (command === 'doctor') return doctorCommand(args);
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') return help('main');
  if (command === '--version') {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
    process.stdout.write(pkg.version + '\n');
    return 0;
  }
  throw new UsageError(`unknown command ${command} (commands: generate, chat, serve, pull, doctor; see qwen-native --help)`);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    // Library and native errors name their subject (file, tensor, option); that is the message the
    // user needs. A stack is only for QWEN_NATIVE_DEBUG, or for what is not an Error at all.
    const debug = Boolean(process.env.QWEN_NATIVE_DEBUG);
    process.stderr.write(`qwen-native: ${err instanceof Error ? reword(err.message) : String(err)}\n`);
    if (debug && err instanceof Error && !(err instanceof UsageError)) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  },
);
