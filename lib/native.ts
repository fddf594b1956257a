// The one place that loads the compiled addon, and explains why when it cannot.
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

export interface NativeSequence {
  length(): number;
  tokens(): Int32Array | null;
  busy(): boolean;
  eval(ids: Int32Array, allLogits: boolean): Promise<Float32Array>;
  generate(
    prompt: Int32Array,
    options: Record<string, unknown>,
    onEvent: (kind: 'token' | 'done', a: unknown, b: unknown) => void,
  ): void;
  abort(): void;
  dispose(): void;
}

export interface NativeModel {
  config(): NativeConfig;
  backend(): string;
  contextLength(): number;
  memory(): { weights: number; kvCache: number; workspace: number };
  createSequence(): NativeSequence;
  dispose(): void;
}

export interface NativeAddon {
  loadModel(dir: string, options: Record<string, unknown>, onProgress?: (fraction: number) => void): Promise<NativeModel>;
  cudaDeviceCount(): number;
  cudaCompiled(): boolean;
}

let addon: NativeAddon | null = null;

export function native(): NativeAddon {
  if (addon) return addon;
  const root = path.resolve(__dirname, '..');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    addon = require('node-gyp-build')(root) as NativeAddon;
  } catch (err) {
    throw new Error(
      `qwen-native: no compiled addon for ${process.platform}-${process.arch} (Node-API 8) was found in ${root}. ` +
        'Build it with `npm rebuild qwen-native` (needs cmake >= 3.18 and a C++17 compiler; ' +
        'nvcc adds the CUDA backend).',
      { cause: err },
    );
  }
  return addon;
}
