// `qwen-native pull` against a local server that answers the way the Hugging Face Hub's file API
// does: /api/models/{repo}/revision/{rev}?blobs=true lists the files (lfs.sha256 for LFS files,
// blobId for the rest), /{repo}/resolve/{rev}/{path} redirects to a second server (the "CDN"),
// which serves the bytes with Range support. No internet needed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { fixture } from './helpers/fixtures.mjs';

const { pull } = await import('../dist/pull.js');
const { Model } = await import('../dist/index.mjs');
const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen-native-pull-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

const TOKEN = 'hf_test_token';
const COMMIT = 'c0ffee'.padEnd(40, '0');
const LFS = new Set(['model.safetensors', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);

// repo name -> { files: {path: Buffer}, private?, badSha?: path }
const repos = {};
function addRepo(name, files, extra = {}) {
  repos[name] = { files, ...extra };
}
const fx = fixture('tiny-fp32');
const tiny = {};
for (const f of fs.readdirSync(fx)) tiny[f] = fs.readFileSync(path.join(fx, f));
tiny['README.md'] = Buffer.from('# tiny\n');
tiny['pytorch_model.bin'] = Buffer.from('not needed: safetensors is there');
tiny['qwen.tiktoken'] = fs.readFileSync(fixture('tokenizer/qwen.tiktoken'));
addRepo('org/tiny', tiny);
addRepo('org/private', { 'config.json': tiny['config.json'], 'model.safetensors': tiny['model.safetensors'] }, { private: true });
addRepo('org/corrupt', { 'config.json': tiny['config.json'], 'model.safetensors': tiny['model.safetensors'] }, { badSha: 'model.safetensors' });
addRepo('org/binonly', { 'config.json': tiny['config.json'], 'pytorch_model.bin': Buffer.from('pickle') });
const half = Math.floor(tiny['model.safetensors'].length / 2);
addRepo('org/sharded', {
  'config.json': tiny['config.json'],
  'model.safetensors.index.json': Buffer.from(
    JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors', c: 'model-00001-of-00002.safetensors' } }),
  ),
  'model-00001-of-00002.safetensors': tiny['model.safetensors'].subarray(0, half),
  'model-00002-of-00002.safetensors': tiny['model.safetensors'].subarray(half),
  'model-00003-of-00003.safetensors': Buffer.from('not in the index'),
});

const log = []; // every request either server saw: { server, url, range, auth }
let hub, cdn, endpoint;
let dropAfter = null; // { path, bytes }: the CDN cuts the connection after this many bytes, once

function listen(handler) {
  return new Promise((resolve) => {
    const s = http.createServer(handler);
    s.listen(0, '127.0.0.1', () => resolve(s));
  });
}

before(async () => {
  cdn = await listen((req, res) => {
    const url = new URL(req.url, 'http://x');
    log.push({ server: 'cdn', url: url.pathname, range: req.headers.range, auth: req.headers.authorization });
    const [, repo1, repo2, ...rest] = url.pathname.split('/');
    const file = rest.map(decodeURIComponent).join('/');
    const body = repos[`${repo1}/${repo2}`]?.files[file];
    if (!body) return res.writeHead(404).end();
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    let start = 0;
    if (m) {
      start = Number(m[1]);
      if (start >= body.length) return res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
      res.writeHead(206, { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}`, 'content-length': body.length - start });
    } else res.writeHead(200, { 'content-length': body.length });
    if (dropAfter && dropAfter.path === url.pathname && !m) {
      const n = dropAfter.bytes;
      dropAfter = null;
      res.write(body.subarray(0, n), () => res.destroy());
      return;
    }
    res.end(body.subarray(start));
  });
  hub = await listen((req, res) => {
    const url = new URL(req.url, 'http://x');
    log.push({ server: 'hub', url: url.pathname + url.search, range: req.headers.range, auth: req.headers.authorization });
    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    const repoOf = (name) => {
      const r = repos[name];
      if (!r) return res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"Repository not found"}'), null;
      if (r.private && req.headers.authorization !== `Bearer ${TOKEN}`) return res.writeHead(401).end('{"error":"Invalid credentials"}'), null;
      return r;
    };
    if (m) {
      const r = repoOf(m[1]);
      if (!r) return;
      if (decodeURIComponent(m[2]) !== 'main' && decodeURIComponent(m[2]) !== COMMIT) return res.writeHead(404).end('{"error":"Revision not found"}');
      const siblings = Object.entries(r.files).map(([name, buf]) => {
        const s = { rfilename: name, size: buf.length };
        if (LFS.has(name)) {
          let sha = crypto.createHash('sha256').update(buf).digest('hex');
          if (r.badSha === name) sha = sha.replace(/^./, (c) => (c === '0' ? '1' : '0'));
          s.lfs = { sha256: sha, size: buf.length, pointerSize: 134 };
        } else s.blobId = crypto.createHash('sha1').update(`blob ${buf.length}\0`).update(buf).digest('hex');
        return s;
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ id: m[1], sha: COMMIT, siblings }));
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (m) {
      const r = repoOf(m[1]);
      if (!r) return;
      assert.equal(m[2], COMMIT, 'files are fetched at the commit the listing named');
      // Small files through a relative redirect on the hub itself, LFS files to the CDN (absolute).
      const file = decodeURIComponent(m[3]);
      if (LFS.has(file)) return res.writeHead(302, { location: `http://127.0.0.1:${cdn.address().port}/${m[1]}/${m[3]}` }).end();
      return res.writeHead(307, { location: `/cdn-proxy/${m[1]}/${m[3]}` }).end();
    }
    m = /^\/cdn-proxy\/([^/]+\/[^/]+)\/(.+)$/.exec(url.pathname);
    if (m) {
      const body = repos[m[1]]?.files[decodeURIComponent(m[2])];
      return body ? res.writeHead(200).end(body) : res.writeHead(404).end();
    }
    res.writeHead(404).end();
  });
  endpoint = `http://127.0.0.1:${hub.address().port}`;
});

after(() => {
  hub?.close();
  cdn?.close();
});

const opts = (dir, extra = {}) => ({ endpoint, dir: path.join(tmp, dir), token: '', ...extra });
const same = (dir, file) => assert.ok(fs.readFileSync(path.join(dir, file)).equals(repos['org/tiny'].files[file]), file);

test('pull fetches only what a load needs, checks it, and the folder loads', async () => {
  log.length = 0;
  const seen = [];
  const r = await pull('org/tiny', opts('tiny', { onProgress: (p) => seen.push(p) }));
  assert.equal(r.commit, COMMIT);
  assert.deepEqual(fs.readdirSync(r.dir).sort(), ['config.json', 'generation_config.json', 'model.safetensors', 'qwen.tiktoken']);
  for (const f of fs.readdirSync(r.dir)) same(r.dir, f);
  const how = Object.fromEntries(r.files.map((f) => [f.path, f.verified]));
  assert.deepEqual(how, { 'config.json': 'git-sha1', 'generation_config.json': 'git-sha1', 'model.safetensors': 'sha256', 'qwen.tiktoken': 'git-sha1' });
  const last = seen.at(-1);
  assert.equal(last.done, last.total);
  assert.equal(last.filesDone, 4);
  assert.ok(!log.some((e) => e.server === 'cdn' && e.auth), 'no token to the CDN');
  // Loads and runs like the fixture it came from.
  const model = await Model.load(r.dir, { device: 'cpu' });
  try {
    assert.ok(model.tokenizer, 'qwen.tiktoken came along');
    const seq = model.createSequence();
    assert.equal((await seq.eval([1, 2, 3])).length, model.config.vocabSize);
  } finally {
    model.dispose();
  }
  // A second pull finds everything in place and downloads nothing.
  log.length = 0;
  const again = await pull('org/tiny', opts('tiny'));
  assert.ok(again.files.every((f) => f.skipped));
  assert.ok(!log.some((e) => e.url.includes('/resolve/') || e.server === 'cdn'));
});

test('an interrupted download resumes with a Range request', async () => {
  const dir = path.join(tmp, 'resume');
  const body = repos['org/tiny'].files['model.safetensors'];
  // (a) a .part left by an earlier run
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'model.safetensors.part'), body.subarray(0, 1000));
  log.length = 0;
  let r = await pull('org/tiny', opts('resume'));
  assert.ok(r.files.find((f) => f.path === 'model.safetensors').resumed);
  assert.ok(log.some((e) => e.server === 'cdn' && e.range === 'bytes=1000-'));
  same(dir, 'model.safetensors');
  assert.ok(!fs.existsSync(path.join(dir, 'model.safetensors.part')));
  // (b) the connection drops mid-file: the retry continues from the bytes already written
  fs.rmSync(dir, { recursive: true });
  dropAfter = { path: '/org/tiny/model.safetensors', bytes: 4096 };
  log.length = 0;
  r = await pull('org/tiny', opts('resume'));
  same(dir, 'model.safetensors');
  assert.ok(log.some((e) => e.server === 'cdn' && e.range === 'bytes=4096-'), JSON.stringify(log.filter((e) => e.server === 'cdn')));
});

test('a sha256 mismatch fails naming the file, and leaves no file behind', async () => {
  await assert.rejects(pull('org/corrupt', opts('corrupt')), /model\.safetensors: sha256 mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}/);
  assert.ok(!fs.existsSync(path.join(tmp, 'corrupt', 'model.safetensors')));
  assert.ok(!fs.existsSync(path.join(tmp, 'corrupt', 'model.safetensors.part')));
});

test('a private repo: 401 without HF_TOKEN says to set it; with it, the pull works', async () => {
  await assert.rejects(pull('org/private', opts('private')), (e) => e.status === 401 && /401.*set HF_TOKEN/.test(e.message));
  await assert.rejects(pull('org/private', opts('private', { token: 'wrong' })), /HF_TOKEN was sent but does not give access/);
  log.length = 0;
  const r = await pull('org/private', opts('private', { token: TOKEN }));
  assert.equal(r.files.length, 2);
  assert.ok(log.filter((e) => e.server === 'hub').every((e) => e.auth === `Bearer ${TOKEN}`));
  assert.ok(log.filter((e) => e.server === 'cdn').every((e) => e.auth === undefined), 'the token stays on the hub');
});

test('sharded weights: the index and the shards it names, nothing else', async () => {
  const r = await pull('org/sharded', opts('sharded'));
  assert.deepEqual(fs.readdirSync(r.dir).sort(), [
    'config.json',
    'model-00001-of-00002.safetensors',
    'model-00002-of-00002.safetensors',
    'model.safetensors.index.json',
  ]);
});

test('refusals: .bin-only repos, unknown repos and revisions, bad names', async () => {
  await assert.rejects(pull('org/binonly', opts('binonly')), /only PyTorch \.bin \(pickle\) weights; qwen-native reads safetensors only/);
  await assert.rejects(pull('org/nope', opts('nope')), /org\/nope@main: not found \(404\)/);
  await assert.rejects(pull('org/tiny', opts('rev', { revision: 'v9' })), /org\/tiny@v9: not found/);
  await assert.rejects(pull('../etc', opts('x')), /repo must look like org\/name/);
});

test('the CLI: qwen-native pull with HF_ENDPOINT and HF_TOKEN from the environment', async () => {
  const dir = path.join(tmp, 'cli');
  const run = (args, env) =>
    new Promise((resolve) => {
      // Async spawn: the servers live in this process and must keep answering.
      const p = spawn(process.execPath, [CLI, 'pull', ...args], { env: { ...process.env, HF_ENDPOINT: endpoint, ...env } });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      p.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  let r = await run(['org/private', '--dir', dir], { HF_TOKEN: '' });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^qwen-native: org\/private@main: the hub answered 401 \(the repo is gated or private: set HF_TOKEN\)\n$/);
  r = await run(['org/private', '--dir', dir, '--revision', COMMIT], { HF_TOKEN: TOKEN });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, dir + '\n');
  assert.match(r.stderr, /2 files, .* \(2 downloaded, 0 already there; 1 sha256-checked\)/);
  r = await run([], {});
  assert.equal(r.code, 1);
  assert.match(r.stderr, /pull takes one repo, as org\/name/);
});
