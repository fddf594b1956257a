#!/usr/bin/env node
// `npm install` hook: use a prebuilt binary when one matches this platform, else build from
// source with cmake-js (the CUDA backend too when nvcc is found). Says which it did.
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const path = require('node:path');
const fs = require('node:fs');

const root = path.resolve(__dirname, '..');
const force = process.argv.includes('--force');

function log(msg) {
  process.stderr.write(`qwen-native: ${msg}\n`);
}

if (!force) {
  try {
    const found = require('node-gyp-build').path(root);
    if (!found.includes(`${path.sep}build${path.sep}`)) {
      log(`using prebuilt binary ${path.relative(root, found)}`);
      process.exit(0);
    }
  } catch {
    // no prebuild for this platform: build below
  }
}

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

let nvcc = which('nvcc');
if (!nvcc && fs.existsSync('/usr/local/cuda/bin/nvcc')) nvcc = '/usr/local/cuda/bin/nvcc';
const cudaMode = process.env.QWEN_CUDA || (nvcc ? 'ON' : 'OFF');
log(`building from source with cmake-js (${cudaMode === 'OFF' ? 'CPU backend only: no nvcc found' : `CPU + CUDA backends, nvcc ${nvcc}`})`);

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
// 'compile' reuses an existing configuration (and ignores new -D values); --force starts clean.
const args = [cmakeJs, force ? 'rebuild' : 'compile', '--directory', root, `--CDQWEN_CUDA=${cudaMode}`];
if (nvcc && cudaMode !== 'OFF') args.push(`--CDCMAKE_CUDA_COMPILER=${nvcc}`);
if (process.env.QWEN_CUDA_ARCHS) args.push(`--CDCMAKE_CUDA_ARCHITECTURES=${process.env.QWEN_CUDA_ARCHS}`);
const jobs = process.env.CMAKE_BUILD_PARALLEL_LEVEL || String(require('node:os').availableParallelism?.() || 2);
try {
  execFileSync(process.execPath, args, {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: jobs },
  });
} catch (e) {
  log('the native build failed (see the output above). It needs cmake >= 3.18 and a C++17 compiler; ' +
      'set QWEN_CUDA=OFF to skip the CUDA backend.');
  process.exit(1);
}
log(`built ${path.join('build', 'Release', 'qwen_native.node')}`);
