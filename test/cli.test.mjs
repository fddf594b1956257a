// The qwen-native command, run as a user runs it (node dist/cli.js), on the random-weight demo model.
// Expected text comes from the library API on the same checkpoint, so these tests check the CLI's
// wiring (flags -> options, streaming, history), not any particular output.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const CACHE = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen-native-cli-'));
process.env.QWEN_NATIVE_CACHE = CACHE; // before ensureDemoModel, and inherited by every child
process.on('exit', () => fs.rmSync(CACHE, { recursive: true, force: true }));

const { Model } = await import('../dist/index.mjs');
const { ensureDemoModel } = await import('../dist/demo.js');

function cli(args, input) {
  const r = spawnSync(process.execPath, [CLI, ...args], { input: input ?? '', encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const GEN = ['generate', '--model', 'demo', '--prompt', 'Hello', '--max-new-tokens', '8', '--seed', '1'];

test('generate --model demo streams the same text as Model.complete with the same options', async () => {
  const a = cli(GEN);
  assert.equal(a.code, 0, a.stderr);
  assert.notEqual(a.stdout, '');
  assert.match(a.stderr, /demo model: random weights, output is gibberish/);
  assert.match(a.stderr, /\[8 tokens, [\d.]+ tok\/s, .*finish: length\]/);
  assert.equal(cli(GEN).stdout, a.stdout, 'same seed, same text');

  const dir = await ensureDemoModel();
  assert.equal(dir, path.join(CACHE, 'demo-v1'));
  const model = await Model.load(dir);
  try {
    const r = await model.complete('Hello', { maxNewTokens: 8, seed: 1 });
    assert.equal(a.stdout, r.text);
  } finally {
    model.dispose();
  }
});

test('generate reads the prompt from stdin when --prompt is absent', () => {
  const args = GEN.filter((x, i) => x !== '--prompt' && GEN[i - 1] !== '--prompt');
  assert.equal(cli(args, 'Hello').stdout, cli(GEN).stdout);
});

test('a missing model folder exits 1 with a message naming it, without a stack trace', () => {
  const r = cli(['generate', '--model', '/nonexistent', '--prompt', 'x']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^qwen-native: .*\/nonexistent/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  assert.equal(r.stdout, '');
});

test('an unknown flag exits 1 naming the flag', () => {
  for (const cmd of ['generate', 'chat']) {
    const r = cli([cmd, '--model', 'demo', '--frobnicate', '3']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /qwen-native: unknown flag --frobnicate/);
  }
  const bad = cli(['generate', '--model', 'demo', '--top-k', '1.5', '--prompt', 'x']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--top-k must be an integer, got "1\.5"/);
});

test('--help prints each command\'s usage and exits 0', () => {
  for (const cmd of ['generate', 'chat']) {
    const r = cli([cmd, '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, new RegExp(`^Usage: qwen-native ${cmd} --model DIR`));
  }
});

test('chat over pipes: history keeps both turns, :clear empties it, EOF exits 0', () => {
  const input = ['first question alpha', 'second question beta', ':history', ':clear', ':history', ''].join('\n');
  const r = cli(['chat', '--model', 'demo', '--max-new-tokens', '8', '--seed', '2'], input);
  assert.equal(r.code, 0, r.stderr);
  const [before, after] = r.stdout.split('[history cleared]');
  assert.equal(before.match(/^Qwen: /gm)?.length, 2, 'two replies');
  assert.match(before, /^\[1\] User: first question alpha$/m);
  assert.match(before, /^\[2\] User: second question beta$/m);
  assert.match(after, /\[history is empty\]/);
  assert.doesNotMatch(after, /question/);
});

test('chat: SIGINT while a reply streams stops that reply and keeps it out of the history', async () => {
  // A reply that would run for minutes: only the interrupt can end it in time.
  const child = spawn(process.execPath, [CLI, 'chat', '--model', 'demo', '--max-new-tokens', '100000', '--context-length', '100000']);
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const code = new Promise((resolve) => child.on('close', resolve));
  child.stdin.write('tell me a long story\n');
  await new Promise((resolve) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      if (/Qwen: .+/.test(stdout)) resolve(); // streaming has begun
    });
  });
  child.kill('SIGINT');
  child.stdin.end(':history\n');
  assert.equal(await code, 0, stderr);
  assert.match(stdout, /\[stopped; not kept in the history\]/);
  assert.match(stdout, /\[history is empty\]/);
});
