// The one place that loads the compiled addon, and explains why when it cannot. It also picks
// between prebuilt CUDA flavours by the installed NVIDIA driver, and turns "no usable GPU" into a
// clear error (device 'cuda') or a warning and the CPU (device 'auto').
import fs from 'node:fs';
import path from 'node:path';

export interface NativeConfig {
  /** config.json's model_type: "qwen" (v1), "qwen2" (Qwen1.5/2/2.5) or "qwen3". */
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  /** KV heads: numHeads for model_type "qwen"; num_key_value_heads (GQA) for "qwen2"/"qwen3". */
  numKvHeads: number;
  headDim: number;
  ffnSize: number;
  rmsEps: number;
  ropeBase: number;
  seqLength: number;
  useDynamicNtk: boolean;
  useLognAttn: boolean;
  useCacheQuantization: boolean;
  tieWordEmbeddings: boolean;
  maxPositionEmbeddings: number;
  gptq: { bits: number; groupSize: number; descAct: boolean } | null;
}

/** One generated token's log-probabilities as csrc/napi/sequence.cpp hands them over (TokenLogprobs). */
export interface NativeLogprobs {
  logprob: number;
  /** Most likely first; ties by lower id. */
  topIds: number[];
  topLogprobs: number[];
}

export interface NativeSequence {
  length(): number;
  tokens(): Int32Array | null;
  busy(): boolean;
  eval(ids: Int32Array, allLogits: boolean): Promise<Float32Array>;
  /**
   * 'token' (id, stop, logprobs: NativeLogprobs | undefined) per generated token, then 'done'
   * (Error | null, finish reason). Option logprobs: -1 = off, else the number of top ids (0..20).
   */
  generate(
    prompt: Int32Array,
    options: Record<string, unknown>,
    onEvent: (kind: 'token' | 'done', a: unknown, b: unknown, c?: NativeLogprobs) => void,
  ): void;
  abort(): void;
  dispose(): void;
}

export interface NativeModel {
  config(): NativeConfig;
  backend(): string;
  contextLength(): number;
  memory(): { weights: number; kvCache: number; kvCacheFree: number; workspace: number; hostWeights: number };
  createSequence(): NativeSequence;
  batchStats(): { steps: number; items: number; maxItems: number; tokens: number; requests: number };
  dispose(): void;
}

/** What `cudaDriverInfo()` returns, where the addon has it (feature-detected: older builds lack it). */
export interface NativeDriverInfo {
  /** cuDriverGetVersion: 13000 = CUDA 13.0; 0 when no driver could be loaded. */
  driverVersion: number;
  /** cudaRuntimeGetVersion of the statically linked cudart (the toolkit the binary was built with). */
  runtimeVersion: number;
  /** Set when the driver could not be queried: the CUDA error name and text. */
  error?: string | null;
  compiled?: boolean;
  /** computeCapability: "9.0" (csrc/napi/addon.cpp); `cc` accepted too. */
  devices: { index?: number; name: string; computeCapability?: string; cc?: string; memory: number }[];
}

export interface NativeAddon {
  loadModel(dir: string, options: Record<string, unknown>, onProgress?: (fraction: number) => void): Promise<NativeModel>;
  cudaDeviceCount(): number;
  cudaCompiled(): boolean;
  cudaDriverInfo?(): NativeDriverInfo;
}

/** Written by scripts/prebuild.js beside each prebuilt binary (<name>.json). */
export interface PrebuildMeta {
  backend: 'cpu' | 'cuda';
  cuda: string | null;
  archs: string[] | null;
  minDriver: number | null;
  napi: number;
  glibc?: string | null;
  version?: string;
}

export interface BinaryInfo {
  /** Absolute path of the loaded .node file. */
  path: string;
  /** 'build' = compiled here (build/Release), 'prebuild' = shipped in prebuilds/, 'env' = QWEN_NATIVE_BINARY. */
  origin: 'build' | 'prebuild' | 'env';
  /** prebuilds/<platform>-<arch>/<variant>/: '' for the main prebuild, e.g. 'cuda12' for the older-driver one. */
  variant: string;
  meta: PrebuildMeta | null;
  /** Why this binary rather than the default one, when a choice was made. */
  reason?: string;
}

export interface NvidiaDriver {
  /** e.g. "580.65.06" */
  version: string;
  major: number;
  source: string;
}

/** The Node-API version the addon is built for (CMakeLists.txt, binding.gyp, package.json "binary"). */
export const NAPI_VERSION = 8;
/** Driver floor of a CUDA 13 build; older toolkits (prebuild metadata) have lower floors. */
export const CUDA13_MIN_DRIVER = 580;

const root = path.resolve(__dirname, '..');
let addon: NativeAddon | null = null;
let raw: NativeAddon | null = null;
let info: BinaryInfo | null = null;

function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

/** The kernel driver's version, read without loading any CUDA library (null: no NVIDIA driver). */
export function nvidiaDriver(): NvidiaDriver | null {
  if (process.platform !== 'linux') return null;
  const fake = process.env.QWEN_NATIVE_FAKE_DRIVER; // tests: "none" or a version such as "535.183.01"
  if (fake !== undefined) {
    if (fake === 'none' || fake === '') return null;
    return { version: fake, major: parseInt(fake, 10), source: 'QWEN_NATIVE_FAKE_DRIVER' };
  }
  for (const [file, re] of [
    ['/proc/driver/nvidia/version', /Kernel Module(?: for \S+)?\s+(\d+)\.(\d+)(?:\.(\d+))?/],
    ['/sys/module/nvidia/version', /^(\d+)\.(\d+)(?:\.(\d+))?/],
  ] as const) {
    try {
      const m = re.exec(fs.readFileSync(file, 'utf8'));
      if (m) return { version: m.slice(1).filter(Boolean).join('.'), major: Number(m[1]), source: file };
    } catch {
      // not there: try the next
    }
  }
  return null;
}

function metaFor(file: string): PrebuildMeta | null {
  return readJson<PrebuildMeta>(file.replace(/\.node$/, '.json'));
}

/** Prebuilt CUDA flavours in sub-folders of the platform folder (invisible to node-gyp-build). */
function variants(platformDir: string): { file: string; variant: string; meta: PrebuildMeta }[] {
  const out = [];
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(platformDir, { withFileTypes: true });
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const dir = path.join(platformDir, e.name);
    for (const f of fs.readdirSync(dir)) {
      if (!f.endsWith('.node') || !f.includes('.napi')) continue;
      const meta = metaFor(path.join(dir, f));
      if (meta) out.push({ file: path.join(dir, f), variant: e.name, meta });
    }
  }
  return out;
}

/** Which .node file to load, without loading it. */
export function resolveBinary(): BinaryInfo {
  const forced = process.env.QWEN_NATIVE_BINARY;
  if (forced) return { path: path.resolve(forced), origin: 'env', variant: '', meta: metaFor(path.resolve(forced)) };
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const found = (require('node-gyp-build') as { path(dir: string): string }).path(root);
  const rel = path.relative(root, found).split(path.sep);
  if (rel[0] === 'build') return { path: found, origin: 'build', variant: '', meta: null };
  const meta = metaFor(found);
  const chosen: BinaryInfo = { path: found, origin: 'prebuild', variant: '', meta };
  // The default prebuild needs a recent driver; when the installed one is older and a flavour
  // built with an older toolkit is shipped, take that one.
  if (meta?.backend === 'cuda' && meta.minDriver) {
    const drv = nvidiaDriver();
    if (drv && drv.major < meta.minDriver) {
      const fits = variants(path.dirname(found))
        .filter((v) => v.meta.backend === 'cuda' && v.meta.minDriver !== null && drv.major >= v.meta.minDriver)
        .sort((a, b) => (b.meta.minDriver ?? 0) - (a.meta.minDriver ?? 0))[0];
      if (fits)
        return {
          path: fits.file,
          origin: 'prebuild',
          variant: fits.variant,
          meta: fits.meta,
          reason: `driver ${drv.version} is older than R${meta.minDriver} (needed by the CUDA ${meta.cuda} build)`,
        };
    }
  }
  return chosen;
}

/** The addon as loaded, without the driver checks (for `qwen-native doctor`). */
export function rawNative(): NativeAddon {
  if (raw) return raw;
  let which: BinaryInfo;
  try {
    which = resolveBinary();
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    raw = require(which.path) as NativeAddon;
  } catch (err) {
    const e = err as Error;
    const missing = /No native build was found/.test(e.message);
    throw new Error(
      missing
        ? `qwen-native: no compiled addon for ${process.platform}-${process.arch} (Node-API ${NAPI_VERSION}) was found in ${root}. ` +
            'Build it with `npm rebuild qwen-native` (needs cmake >= 3.18 and a C++17 compiler; nvcc adds the CUDA backend).'
        : `qwen-native: the native addon could not be loaded: ${e.message.split('\n')[0]}. ` +
            'Rebuild it with `npm rebuild qwen-native`, or see docs/troubleshooting.md.',
      { cause: err },
    );
  }
  info = which;
  return raw;
}

/** Which binary was loaded (null before the first load). */
export function binaryInfo(): BinaryInfo | null {
  return info;
}

function cudaVersionText(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/**
 * Why CUDA cannot be used, in one sentence naming what was found and what is needed; null when a
 * device is visible. Never throws.
 */
export function cudaUnavailableReason(a: NativeAddon): string | null {
  try {
    if (!a.cudaCompiled()) return `this binary (${info?.path ?? 'unknown'}) was built without the CUDA backend`;
    if (a.cudaDeviceCount() > 0) return null;
  } catch (e) {
    return `the CUDA query failed: ${(e as Error).message}`;
  }
  const meta = info?.meta;
  let nd: NativeDriverInfo | null = null;
  try {
    nd = typeof a.cudaDriverInfo === 'function' ? a.cudaDriverInfo() : null;
  } catch {
    nd = null;
  }
  const runtime = nd?.runtimeVersion ? cudaVersionText(nd.runtimeVersion) : meta?.cuda ?? null;
  const floor = meta?.minDriver ?? (runtime ? ({ 13: 580, 12: 525, 11: 450 } as Record<number, number>)[parseInt(runtime, 10)] : undefined);
  const need = floor ? `R${floor} or newer` : 'a driver that supports its CUDA version';
  const built = runtime ? `built with CUDA ${runtime}` : 'a CUDA build';
  const drv = nvidiaDriver();
  if (!drv && !(nd && nd.driverVersion > 0))
    return `no NVIDIA driver was found (this binary is ${built} and needs ${need})`;
  if (drv && nd && nd.driverVersion === 0 && !(floor && drv.major < floor))
    return (
      `the NVIDIA kernel driver ${drv.version} is loaded but its library libcuda.so.1 could not be used ` +
      `(${nd.error ?? 'not found'}; in a container, expose the GPU with the NVIDIA container toolkit, e.g. docker run --gpus all)`
    );
  if (drv && floor && drv.major < floor)
    return `the NVIDIA driver ${drv.version} is too old (this binary is ${built} and needs ${need})`;
  if (nd && nd.driverVersion > 0 && nd.runtimeVersion > nd.driverVersion)
    return `the NVIDIA driver supports CUDA ${cudaVersionText(nd.driverVersion)} but this binary is ${built} (needs ${need})`;
  const visible = process.env.CUDA_VISIBLE_DEVICES;
  return (
    `no CUDA device is visible (driver ${drv?.version ?? (nd ? cudaVersionText(nd.driverVersion) : 'unknown')}` +
    `${visible !== undefined ? `, CUDA_VISIBLE_DEVICES=${JSON.stringify(visible)}` : ''}${nd?.error ? `, ${nd.error}` : ''})`
  );
}

let warned = false;

/**
 * The addon, with two behaviours added at the edge: `device: 'auto'` that finds no usable GPU in a
 * CUDA build emits one process warning (code QWEN_NATIVE_CPU_FALLBACK) naming why, and
 * `device: 'cuda'` without a usable GPU rejects with that reason instead of a CUDA error code.
 */
export function native(): NativeAddon {
  if (addon) return addon;
  const a = rawNative();
  addon = {
    cudaCompiled: () => a.cudaCompiled(),
    cudaDeviceCount: () => {
      // Model.load asks this only for device 'auto' on a CUDA build: 0 means it takes the CPU.
      const n = a.cudaDeviceCount();
      if (n === 0 && !warned && a.cudaCompiled()) {
        warned = true;
        const why = cudaUnavailableReason(a) ?? 'no CUDA device';
        process.emitWarning(`qwen-native: running on the CPU: ${why}`, { type: 'QwenNativeWarning', code: 'QWEN_NATIVE_CPU_FALLBACK' });
      }
      return n;
    },
    loadModel: (dir, options, onProgress) => {
      if (options && options.device === 'cuda') {
        const why = cudaUnavailableReason(a);
        if (why) {
          const err = new Error(`qwen-native: device 'cuda' cannot be used: ${why}. Use device 'cpu' or 'auto', or see docs/troubleshooting.md`);
          (err as Error & { code: string }).code = 'QWEN_NATIVE_NO_CUDA';
          return Promise.reject(err);
        }
      }
      return a.loadModel(dir, options, onProgress);
    },
  };
  if (typeof a.cudaDriverInfo === 'function') addon.cudaDriverInfo = () => a.cudaDriverInfo!();
  return addon;
}
