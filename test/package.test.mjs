// The package as users get it: `npm pack`, then `npm install <tarball>` in a fresh folder with no
// compiler on PATH (so it must take the prebuilt binary, not build), then load it by `require`, by
// `import` and in worker threads, and run one eval of the tiny fixture on the CPU. Also: the
// load-time driver checks (simulated driver versions) and the choice between CUDA flavours.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { fixture, repoRoot } from './helpers/fixtures.mjs';

/** The tarball must stay well under npm's practical limits; a CUDA prebuild is ~6 MB (~2.5 MB packed). */
const TARBALL_BUDGET = 20 * 1024 * 1024;
const npmCli = [
  path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js'),
  '/usr/lib/node_modules/npm/bin/npm-cli.js',
  '/usr/local/lib/node_modules/npm/bin/npm-cli.js',
].find((p) => fs.existsSync(p));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qwen-native-pack-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

function npm(args, opts = {}) {
  const r = spawnSync(process.execPath, [npmCli, ...args], { encoding: 'utf8', timeout: 300_000, ...opts });
  if (r.status !== 0) throw new Error(`npm ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

test('npm pack, install with no compiler, load by require / import / worker threads (CPU)', { skip: !npmCli && 'npm not found' }, async (t) => {
  // 1. Stage exactly what `npm pack` takes from the repo ("files"), minus any local prebuilds.
  const listed = JSON.parse(npm(['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: repoRoot }).stdout)[0].files.map((f) => f.path);
  const stage = path.join(tmp, 'stage');
  for (const f of listed) {
    if (f.startsWith('prebuilds/')) continue;
    fs.mkdirSync(path.dirname(path.join(stage, f)), { recursive: true });
    fs.copyFileSync(path.join(repoRoot, f), path.join(stage, f));
  }
  assert.ok(fs.existsSync(path.join(stage, 'dist', 'index.js')), 'dist/ is packed (run npm run build first)');
  assert.ok(fs.existsSync(path.join(stage, 'dist', 'index.mjs')), 'the ESM entry is packed');
  assert.ok(fs.existsSync(path.join(stage, 'dist', 'index.d.ts')), 'the types are packed');

  // 2. A prebuild for this platform: the binary built here (npm install ran before the tests), stripped
  //    and named the way node-gyp-build looks for it; or a CPU build when there is none.
  const built = path.join(repoRoot, 'build', 'Release', 'qwen_native.node');
  const pbArgs = fs.existsSync(built) ? ['--from', built] : ['--cpu', '--incremental'];
  const out = path.join(stage, 'prebuilds', `${process.platform}-${process.arch}`);
  execFileSync(process.execPath, [path.join(repoRoot, 'scripts', 'prebuild.js'), ...pbArgs, '--out', out], { stdio: 'pipe' });
  const pbFile = fs.readdirSync(out).find((f) => f.endsWith('.node'));
  assert.match(pbFile, /^qwen-native\.napi\.glibc\.node$/);

  // 3. Pack.
  const packDir = path.join(tmp, 'pack');
  fs.mkdirSync(packDir);
  const packed = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', packDir], { cwd: stage }).stdout)[0];
  const tarball = path.join(packDir, packed.filename);
  const size = fs.statSync(tarball).size;
  t.diagnostic(
    `tarball ${packed.filename}: ${(size / 1048576).toFixed(2)} MiB packed (budget ${TARBALL_BUDGET / 1048576} MiB), ` +
      `${(packed.unpackedSize / 1048576).toFixed(2)} MiB unpacked, ${packed.entryCount} files`,
  );
  assert.ok(size < TARBALL_BUDGET, `tarball ${size} bytes is over the ${TARBALL_BUDGET}-byte budget`);
  assert.ok(packed.files.some((f) => f.path === `prebuilds/${process.platform}-${process.arch}/${pbFile}`), 'the prebuild is in the tarball');
  assert.ok(!packed.files.some((f) => f.path.startsWith('build/') || f.path.startsWith('test/')), 'no build/ or test/ in the tarball');

  // 4. Install into a fresh folder with only node on PATH: no cc, c++, cmake, nvcc, make.
  const app = path.join(tmp, 'app');
  const bin = path.join(tmp, 'bin');
  fs.mkdirSync(app);
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh')); // npm runs install scripts through sh
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const env = { ...process.env, PATH: bin, npm_config_update_notifier: 'false', CUDA_PATH: '', CUDACXX: '' };
  for (const k of Object.keys(env)) if (k.startsWith('npm_') && !k.startsWith('npm_config_cache')) delete env[k];
  env.npm_config_update_notifier = 'false';
  const noCc = spawnSync('/bin/sh', ['-c', 'command -v cc || command -v gcc || command -v c++ || command -v cmake || command -v nvcc'], { env });
  assert.notEqual(noCc.status, 0, 'a compiler is still on PATH');
  const inst = npm(['install', tarball, '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', '--loglevel', 'error'], { cwd: app, env });
  const log = inst.stdout + inst.stderr;
  assert.match(log, /qwen-native: using prebuilt binary prebuilds[\\/]/, log);
  const pkgDir = path.join(app, 'node_modules', 'qwen-native');
  assert.ok(!fs.existsSync(path.join(pkgDir, 'build')), 'the install built from source');

  // 5. Load it three ways, each running one eval on the CPU.
  const fx = fixture('tiny-fp32');
  const body = (mod) => `
    const { Model } = ${mod};
    const model = await Model.load(${JSON.stringify(fx)}, { device: 'cpu' });
    const seq = model.createSequence();
    const logits = await seq.eval([1, 2, 3, 4]);
    let best = 0; for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    const out = { n: logits.length, best, first: logits[0], device: model.device };
    seq.dispose(); model.dispose();`;
  fs.writeFileSync(path.join(app, 'cjs.cjs'), `(async () => { ${body("require('qwen-native')")}
    const auto = await Model.load(${JSON.stringify(fx)}, { device: 'auto' }); out.auto = auto.device; auto.dispose();
    out.binary = require.resolve('qwen-native');
    console.log(JSON.stringify(out)); })().catch((e) => { console.error(e); process.exit(1); });\n`);
  fs.writeFileSync(path.join(app, 'esm.mjs'), `${body("await import('qwen-native')")}\nconsole.log(JSON.stringify(out));\n`);
  fs.writeFileSync(path.join(app, 'esm-static.mjs'), `import { Model as M } from 'qwen-native'; import q from 'qwen-native';\nif (M !== q.Model) throw new Error('ESM and CJS differ');\nconsole.log(JSON.stringify(typeof M.load));\n`);
  fs.writeFileSync(path.join(app, 'worker.cjs'), `const { parentPort } = require('node:worker_threads');
    (async () => { ${body("require('qwen-native')")} parentPort.postMessage(out); })();\n`);
  // Two workers and the main thread at once (several contexts, as Electron has).
  fs.writeFileSync(
    path.join(app, 'threads.mjs'),
    `import { Worker } from 'node:worker_threads';
    const run = () => new Promise((res, rej) => { const w = new Worker('./worker.cjs'); w.once('message', res); w.once('error', rej); });
    const main = (async () => { ${body("await import('qwen-native')")} return out; })();
    const all = await Promise.all([run(), run(), main]);
    console.log(JSON.stringify(all));\n`,
  );
  const runNode = (file) => {
    const r = spawnSync(process.execPath, [file], { cwd: app, env, encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, `${file}: ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop());
  };
  const viaRequire = runNode('cjs.cjs');
  assert.ok(viaRequire.binary.startsWith(pkgDir));
  const viaImport = runNode('esm.mjs');
  const threads = runNode('threads.mjs');
  assert.equal(runNode('esm-static.mjs'), 'function');
  assert.match(viaRequire.device, /^cpu/);
  assert.match(viaRequire.auto, /^cpu/, "device 'auto' falls back to the CPU here");
  assert.equal(viaRequire.n, JSON.parse(fs.readFileSync(path.join(fx, 'config.json'), 'utf8')).vocab_size);
  for (const r of [viaImport, ...threads]) assert.deepEqual(r, { n: viaRequire.n, best: viaRequire.best, first: viaRequire.first, device: viaRequire.device });

  // 6. The installed CLI's doctor names the prebuild.
  const doc = spawnSync(process.execPath, [path.join(pkgDir, 'dist', 'cli.js'), 'doctor', '--json'], { cwd: app, env, encoding: 'utf8' });
  assert.equal(doc.status, 0, doc.stderr);
  const rep = JSON.parse(doc.stdout);
  assert.equal(rep.binary.origin, 'prebuild');
  assert.equal(path.basename(rep.binary.path), pbFile);
  assert.equal(rep.auto, 'cpu');
});

// ---- load-time checks, in child processes (each with its own environment) ----

function nodeEval(code, env) {
  const r = spawnSync(process.execPath, ['-e', code], { cwd: repoRoot, env: { ...process.env, ...env }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

test("device 'cuda' without a usable driver: a clear error naming the version found and needed", () => {
  const code = (drv) => `const n = require('./dist/native.js');
    const fake = { cudaCompiled: () => true, cudaDeviceCount: () => 0,
      cudaDriverInfo: () => ({ driverVersion: ${drv}, runtimeVersion: 13000, devices: [] }) };
    console.log(n.cudaUnavailableReason(fake));`;
  assert.equal(
    nodeEval(code(12020), { QWEN_NATIVE_FAKE_DRIVER: '535.183.01' }),
    'the NVIDIA driver 535.183.01 is too old (this binary is built with CUDA 13.0 and needs R580 or newer)',
  );
  assert.equal(
    nodeEval(code(0), { QWEN_NATIVE_FAKE_DRIVER: 'none' }),
    'no NVIDIA driver was found (this binary is built with CUDA 13.0 and needs R580 or newer)',
  );
  // The real addon: Model.load with device 'cuda' rejects with that reason (CPU-only or no driver here).
  const msg = nodeEval(
    `require('./dist/index.js').Model.load(${JSON.stringify(fixture('tiny-fp32'))}, { device: 'cuda' })
      .then(() => console.log('loaded'), (e) => console.log(e.code + ' ' + e.message))`,
    { QWEN_NATIVE_FAKE_DRIVER: 'none' },
  );
  if (msg !== 'loaded') assert.match(msg, /^QWEN_NATIVE_NO_CUDA qwen-native: device 'cuda' cannot be used: (no NVIDIA driver was found|this binary .* was built without the CUDA backend)/);
});

test("device 'auto' on a CUDA build with no GPU: CPU, and one warning event saying why", () => {
  const out = nodeEval(
    `const n = require('./dist/native.js');
     const warnings = []; process.on('warning', (w) => warnings.push(w.code + ': ' + w.message));
     const a = n.native();
     const fake = { ...a, cudaCompiled: () => true };
     // What Model.load asks for 'auto': cudaCompiled() && cudaDeviceCount() > 0.
     const n0 = a.cudaCompiled() ? a.cudaDeviceCount() : 0;
     setImmediate(() => console.log(JSON.stringify({ n0, compiled: a.cudaCompiled(), warnings })));`,
    { QWEN_NATIVE_FAKE_DRIVER: 'none' },
  );
  const r = JSON.parse(out);
  assert.equal(r.n0, 0);
  if (r.compiled) {
    assert.equal(r.warnings.length, 1);
    assert.match(r.warnings[0], /^QWEN_NATIVE_CPU_FALLBACK: qwen-native: running on the CPU: no NVIDIA driver was found/);
  } else assert.equal(r.warnings.length, 0, 'a CPU-only build does not warn');
});

test('prebuild choice: an older driver takes the flavour built for it, a new one the default', () => {
  const dir = path.join(tmp, 'flavours');
  const plat = path.join(dir, 'prebuilds', `${process.platform}-${process.arch}`);
  fs.mkdirSync(path.join(plat, 'cuda12'), { recursive: true });
  const meta = (cuda, minDriver) => JSON.stringify({ backend: 'cuda', cuda, archs: ['80-real'], minDriver, napi: 8 });
  fs.writeFileSync(path.join(plat, 'qwen-native.napi.glibc.node'), '');
  fs.writeFileSync(path.join(plat, 'qwen-native.napi.glibc.json'), meta('13.0', 580));
  fs.writeFileSync(path.join(plat, 'cuda12', 'qwen-native.napi.glibc.node'), '');
  fs.writeFileSync(path.join(plat, 'cuda12', 'qwen-native.napi.glibc.json'), meta('12.8', 525));
  const pick = (drv) =>
    JSON.parse(nodeEval(`console.log(JSON.stringify(require('./dist/native.js').resolveBinary()))`, { QWEN_NATIVE_PREBUILD: dir, QWEN_NATIVE_FAKE_DRIVER: drv }));
  const r535 = pick('535.183.01');
  assert.equal(r535.variant, 'cuda12');
  assert.equal(r535.path, path.join(plat, 'cuda12', 'qwen-native.napi.glibc.node'));
  assert.match(r535.reason, /driver 535\.183\.01 is older than R580/);
  assert.equal(pick('580.65.06').variant, '');
  assert.equal(pick('none').variant, '', 'no driver: the default (it will run on the CPU)');
  assert.equal(pick('470.1').variant, '', 'too old for every flavour: the default, whose error names R580');
});

// A worker terminated in the middle of a generation: the addon's environment cleanup must stop the
// generation thread and let the worker go, without taking the process down (before the fix, the
// token callback ran into the dying environment and a C++ Napi::Error escaped: "terminate called").
test('a worker terminated mid-generation goes away cleanly (environment teardown)', () => {
  const script = path.join(tmp, 'teardown.cjs');
  fs.writeFileSync(
    script,
    `const { Worker } = require('node:worker_threads');
    (async () => {
      for (let i = 0; i < 5; i++) {
        const busy = new Worker(\`const { Model } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'index.js'))});
          const { parentPort } = require('node:worker_threads');
          Model.load(${JSON.stringify(fixture('tiny-fp32'))}, { device: 'cpu' }).then(async (m) => {
            const it = m.generate([1, 2, 3], { maxNewTokens: 100000, temperature: 0 }); await it.next();
            parentPort.postMessage('streaming'); for await (const _ of it); });\`, { eval: true });
        await new Promise((res, rej) => { busy.once('message', res); busy.once('error', rej); });
        await busy.terminate();
      }
      console.log('ok');
    })();\n`,
  );
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}: ${r.stderr.trim()}`);
  assert.equal(r.stdout.trim(), 'ok');
});
