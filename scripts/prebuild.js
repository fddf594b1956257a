#!/usr/bin/env node
// Release step: builds the prebuilt binary that ships inside the npm tarball, with cmake-js, into
// prebuilds/<platform>-<arch>/ under node-gyp-build's naming, so that `npm install` needs no compiler.
//
//   node scripts/prebuild.js                 CUDA build: cudart static, no cuBLAS, code for
//                                            sm_80/86/89/90 + compute_90 PTX, stripped
//   node scripts/prebuild.js --cpu           CPU-only build (fast; what the package test packs)
//   node scripts/prebuild.js --variant cuda12 --nvcc /usr/local/cuda-12.8/bin/nvcc
//                                            a second CUDA build for older drivers, written to
//                                            prebuilds/linux-x64/cuda12/ (lib/native.ts picks it
//                                            when the driver is too old for the main one)
//   node scripts/prebuild.js --from build/Release/qwen_native.node --out DIR
//                                            no build: package an existing binary (the package
//                                            test does this; backend read by loading it)
//   options: --archs "80-real;..."  --build-dir DIR  --out DIR  --jobs N
//            --incremental (reuse the build folder instead of a clean rebuild)
//
// File name: <package>.napi.glibc.node, as prebuildify --napi --tag-libc names it; node-gyp-build
// reads the napi and glibc tags and ignores the package name. Beside it, <same>.json records what
// was built (backend, CUDA version, archs, driver floor) for lib/native.ts and `qwen-native doctor`.
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const pkg = require(path.join(root, 'package.json'));

const DEFAULT_ARCHS = '80-real;86-real;89-real;90-real;90-virtual';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = process.argv[i + 1];
  if (v === undefined || v.startsWith('--')) throw new Error(`--${name} needs a value`);
  return v;
}
const flag = (name) => process.argv.includes(`--${name}`);
const log = (msg) => process.stderr.write(`prebuild: ${msg}\n`);

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** The minimum NVIDIA driver (major branch) that runs code built by a CUDA toolkit version. */
function driverFloor(cudaMajor) {
  // CUDA 13.x needs R580+; CUDA 12.x runs on R525+ (minor-version compatibility; PTX JIT of code
  // from a newer 12.x toolkit may need that toolkit's own driver); CUDA 11.x on R450+.
  return { 13: 580, 12: 525, 11: 450 }[cudaMajor] ?? null;
}

function main() {
  const from = arg('from', '');
  let cpu = flag('cpu');
  if (from) {
    // Ask the binary itself (in a child: a bad binary must not take this process down).
    const r = spawnSync(process.execPath, ['-e', `process.stdout.write(String(require(${JSON.stringify(path.resolve(from))}).cudaCompiled()))`], {
      encoding: 'utf8',
    });
    if (r.status !== 0) throw new Error(`${from} does not load: ${r.stderr.trim().split('\n').pop()}`);
    cpu = r.stdout.trim() !== 'true';
  }
  const variant = arg('variant', '');
  if (variant && !/^[a-z0-9]+$/.test(variant)) throw new Error('--variant must be lower-case letters and digits (e.g. cuda12)');
  let archsFrom = null;
  const archsArg = arg('archs', DEFAULT_ARCHS);
  const platformDir = `${os.platform()}-${os.arch()}`;
  const outDir = path.resolve(arg('out', path.join(root, 'prebuilds', platformDir, variant)));
  const buildDir = path.resolve(arg('build-dir', path.join(root, 'build', `prebuild-${variant || (cpu ? 'cpu' : 'cuda')}`)));
  const jobs = arg('jobs', process.env.CMAKE_BUILD_PARALLEL_LEVEL || String(os.availableParallelism?.() || 2));

  let nvcc = null;
  let cudaVersion = null;
  if (!cpu) {
    if (from) {
      const cache = path.join(path.dirname(path.resolve(from)), '..', 'CMakeCache.txt');
      const c = fs.existsSync(cache) ? fs.readFileSync(cache, 'utf8') : '';
      nvcc = /^CMAKE_CUDA_COMPILER:\w+=(.+)$/m.exec(c)?.[1] ?? null;
      const a = /^CMAKE_CUDA_ARCHITECTURES:\w+=(.+)$/m.exec(c)?.[1];
      if (a && !process.argv.includes('--archs')) archsFrom = a;
    }
    nvcc ??= arg('nvcc', which('nvcc') || (fs.existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : null));
    if (!nvcc) throw new Error('no nvcc found: pass --nvcc PATH, or --cpu for a CPU-only prebuild');
    const v = execFileSync(nvcc, ['--version'], { encoding: 'utf8' });
    cudaVersion = /release (\d+\.\d+)/.exec(v)?.[1] ?? null;
    if (!cudaVersion) throw new Error(`could not read the CUDA version from \`${nvcc} --version\``);
  }

  const archs = archsFrom ?? archsArg;
  const built = from ? path.resolve(from) : path.join(buildDir, 'Release', 'qwen_native.node');
  const t0 = Date.now();
  if (!from) {
    log(cpu ? 'CPU-only build' : `CUDA ${cudaVersion} build (${nvcc}), archs ${archs}, ${jobs} jobs`);
    const args = [require.resolve('cmake-js/bin/cmake-js'), flag('incremental') ? 'build' : 'rebuild', '--directory', root, '--out', buildDir];
    args.push(`--CDQWEN_CUDA=${cpu ? 'OFF' : 'ON'}`);
    if (!cpu) args.push(`--CDCMAKE_CUDA_COMPILER=${nvcc}`, `--CDCMAKE_CUDA_ARCHITECTURES=${archs}`);
    execFileSync(process.execPath, args, {
      cwd: root,
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: jobs },
    });
  }
  const seconds = Math.round((Date.now() - t0) / 1000);

  const name = `${pkg.name.replace(/^@/, '').replace(/\//g, '+')}.napi.glibc`;
  fs.mkdirSync(outDir, { recursive: true });
  const dest = path.join(outDir, `${name}.node`);
  fs.copyFileSync(built, dest);
  execFileSync('strip', ['--strip-unneeded', dest]);

  // What the dynamic linker will be asked for: the point of the CUDA build is that the driver
  // (libcuda.so.1, opened by the static cudart at run time) is the only CUDA library needed.
  const needed = (spawnSync('readelf', ['-d', dest], { encoding: 'utf8' }).stdout || '')
    .split('\n')
    .map((l) => /\(NEEDED\).*\[(.+)\]/.exec(l)?.[1])
    .filter(Boolean);
  const bad = needed.filter((l) => /cudart|cublas|libcuda\.so/.test(l));
  if (bad.length) throw new Error(`${dest} links ${bad.join(', ')} dynamically: the prebuild must need only the driver`);
  const glibc = (spawnSync('objdump', ['-T', dest], { encoding: 'utf8' }).stdout || '')
    .match(/GLIBC_(\d+\.\d+)/g)
    ?.map((s) => s.slice(6))
    .sort((a, b) => a.split('.')[1] - b.split('.')[1])
    .pop();

  const meta = {
    name: pkg.name,
    version: pkg.version,
    napi: (pkg.binary && pkg.binary.napi_versions && pkg.binary.napi_versions[0]) || 8,
    backend: cpu ? 'cpu' : 'cuda',
    cuda: cudaVersion,
    archs: cpu ? null : archs.split(';').map((a) => (/^\d+$/.test(a) ? [`${a}-real`, `${a}-virtual`] : [a])).flat(),
    minDriver: cpu ? null : driverFloor(Number(cudaVersion.split('.')[0])),
    glibc: glibc ?? null,
    needed,
    builtOn: `${os.platform()}-${os.arch()} node ${process.version}`,
    builtAt: new Date().toISOString(),
  };
  fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(meta, null, 2) + '\n');
  const size = fs.statSync(dest).size;
  log(`wrote ${path.relative(root, dest)} (${(size / 1048576).toFixed(1)} MiB stripped, built in ${seconds} s)`);
  log(`NEEDED: ${needed.join(' ')}${glibc ? `; needs glibc >= ${glibc}` : ''}`);
}

try {
  main();
} catch (e) {
  log(`failed: ${e.message}`);
  process.exit(1);
}
