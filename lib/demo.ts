// The `--model demo` checkpoint: a tiny Qwen v1 model (2 layers, hidden 64) with RANDOM weights and
// the real Qwen vocabulary, so the CLI and the API can be tried without downloading gigabytes. Its
// output is gibberish by construction. Built once into the cache folder, then reused.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// Bump the suffix whenever the files below change, so an old cache is never mistaken for the new one.
const DEMO_FOLDER = 'demo-v1';
const SEED = 0x5eed_0001;

const H = 64;
const V = 151936;
const LAYERS = 2;
const F = 128; // MLP width = intermediate_size / 2 (SPEC 1)

export const DEMO_CONFIG = {
  architectures: ['QWenLMHeadModel'],
  model_type: 'qwen',
  vocab_size: V,
  hidden_size: H,
  num_attention_heads: 4,
  kv_channels: 16,
  num_hidden_layers: LAYERS,
  intermediate_size: 2 * F,
  seq_length: 2048,
  layer_norm_epsilon: 1e-6,
  rotary_emb_base: 10000,
  rotary_pct: 1.0,
  use_dynamic_ntk: true,
  use_logn_attn: true,
  no_bias: true,
  tie_word_embeddings: false,
  max_position_embeddings: 8192,
};

/** The chat releases' generation_config.json (SPEC 8). */
export const DEMO_GENERATION_CONFIG = {
  chat_format: 'chatml',
  eos_token_id: 151643,
  pad_token_id: 151643,
  max_window_size: 6144,
  max_new_tokens: 512,
  do_sample: true,
  top_k: 0,
  top_p: 0.8,
  repetition_penalty: 1.1,
};

const FILES = ['config.json', 'generation_config.json', 'qwen.tiktoken', 'model.safetensors'];

/** $QWEN_NATIVE_CACHE, else $XDG_CACHE_HOME/qwen-native, else ~/.cache/qwen-native. */
export function cacheDir(): string {
  const env = process.env;
  if (env.QWEN_NATIVE_CACHE) return path.resolve(env.QWEN_NATIVE_CACHE);
  return path.join(env.XDG_CACHE_HOME ? path.resolve(env.XDG_CACHE_HOME) : path.join(os.homedir(), '.cache'), 'qwen-native');
}

/** The demo checkpoint's folder, written on the first call (about 40 MB, a second or two). */
export async function ensureDemoModel(): Promise<string> {
  const dir = path.join(cacheDir(), DEMO_FOLDER);
  if (FILES.every((f) => fs.existsSync(path.join(dir, f)))) return dir;
  const vocab = path.resolve(__dirname, '..', 'demo', 'qwen.tiktoken');
  if (!fs.existsSync(vocab)) throw new Error(`the demo model needs ${vocab}, which is missing from this install of qwen-native`);
  fs.mkdirSync(dir, { recursive: true });
  // Every file lands by rename, so an interrupted run leaves either nothing or a whole file, and two
  // processes building at once both write identical bytes. The weights go last: they mark "done".
  writeAtomic(path.join(dir, 'config.json'), [Buffer.from(JSON.stringify(DEMO_CONFIG, null, 2) + '\n')]);
  writeAtomic(path.join(dir, 'generation_config.json'), [Buffer.from(JSON.stringify(DEMO_GENERATION_CONFIG, null, 2) + '\n')]);
  writeAtomic(path.join(dir, 'qwen.tiktoken'), [fs.readFileSync(vocab)]);
  writeAtomic(path.join(dir, 'model.safetensors'), demoSafetensors());
  return dir;
}

function writeAtomic(file: string, parts: Buffer[]): void {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      for (const p of parts) fs.writeSync(fd, p);
      fs.fsyncSync(fd); // the rename must not reach the disk before the data does
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/** mulberry32: a small seeded PRNG, so every machine builds the same demo weights. */
function uniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** SPEC 2's tensors, BF16: one safetensors file as [8-byte LE header length][JSON header][data]. */
function demoSafetensors(): Buffer[] {
  type Init = { std: number } | { fill: number };
  const tensors: [string, number[], Init][] = [['transformer.wte.weight', [V, H], { std: 0.02 }]];
  for (let i = 0; i < LAYERS; i++) {
    const p = `transformer.h.${i}.`;
    tensors.push(
      [p + 'ln_1.weight', [H], { fill: 1 }],
      [p + 'attn.c_attn.weight', [3 * H, H], { std: 0.02 }],
      [p + 'attn.c_attn.bias', [3 * H], { std: 0.002 }],
      [p + 'attn.c_proj.weight', [H, H], { std: 0.02 }],
      [p + 'ln_2.weight', [H], { fill: 1 }],
      [p + 'mlp.w1.weight', [F, H], { std: 0.02 }],
      [p + 'mlp.w2.weight', [F, H], { std: 0.02 }],
      [p + 'mlp.c_proj.weight', [H, F], { std: 0.02 }],
    );
  }
  tensors.push(['transformer.ln_f.weight', [H], { fill: 1 }], ['lm_head.weight', [V, H], { std: 0.02 }]);

  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let offset = 0;
  for (const [name, shape] of tensors) {
    const bytes = 2 * shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype: 'BF16', shape, data_offsets: [offset, offset + bytes] };
    offset += bytes; // every size here is a multiple of 8 bytes, so each tensor starts aligned
  }
  // Spaces pad the header so the data starts 8-byte aligned, as the safetensors writer does.
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + json.length) % 8)) % 8);
  const head = Buffer.alloc(8 + json.length);
  head.writeBigUInt64LE(BigInt(json.length), 0);
  head.write(json, 8, 'latin1');

  const data = new ArrayBuffer(offset);
  const rand = uniform(SEED);
  for (const [name, shape, init] of tensors) {
    const { data_offsets } = header[name] as { data_offsets: [number, number] };
    const n = (data_offsets[1] - data_offsets[0]) / 2;
    const f32 = new Float32Array(n);
    if ('fill' in init) f32.fill(init.fill);
    else
      for (let i = 0; i < n; i += 2) {
        // Box-Muller: two normals from two uniforms.
        const r = init.std * Math.sqrt(-2 * Math.log(1 - rand()));
        const t = 2 * Math.PI * rand();
        f32[i] = r * Math.cos(t);
        if (i + 1 < n) f32[i + 1] = r * Math.sin(t);
      }
    const bits = new Uint32Array(f32.buffer);
    const bf16 = new Uint16Array(data, data_offsets[0], n);
    for (let i = 0; i < n; i++) bf16[i] = (bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16; // round to nearest even
  }
  return [head, Buffer.from(data)];
}
