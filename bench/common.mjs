// What the bench/*.mjs scripts that load a model share: their common options (--model, --label,
// --device, --dist), the usage check, the JSON-line emitter (stdout) and the logger (stderr), and
// the Model class of the built package, with tiktoken stubbed where it was not carried.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * Parses the arguments (the common options plus `options`); exits with the usage line when
 * --model is missing. `name` prefixes the log lines. Returns {a, label, emit, log}.
 */
export function benchArgs(name, options, usage) {
  const { values: a } = parseArgs({
    options: {
      model: { type: 'string' },
      label: { type: 'string' },
      device: { type: 'string', default: 'cuda' },
      dist: { type: 'string', default: path.join(here, '..', 'dist', 'index.js') },
      ...options,
    },
  });
  if (!a.model) {
    process.stderr.write(`usage: node bench/${name}.mjs --model DIR [--label NAME] [--device cuda|cpu] ${usage}\n`);
    process.exit(2);
  }
  const label = a.label ?? path.basename(path.resolve(a.model));
  return {
    a,
    label,
    emit: (rec) => process.stdout.write(JSON.stringify({ impl: 'qwen-native', shape: label, ...rec }) + '\n'),
    log: (msg) => process.stderr.write(`${name} ${label}: ${msg}\n`),
  };
}

/**
 * The Model class from `dist`. dist/tokenizer.js loads tiktoken at import; the benchmarks feed ids
 * and their checkpoints have no qwen.tiktoken, so when tiktoken was not carried to the GPU
 * machine (23 MB), a stub stands in.
 */
export function modelClass(dist, log) {
  const require = createRequire(import.meta.url);
  try {
    createRequire(dist).resolve('tiktoken/lite');
  } catch {
    const Module = require('node:module');
    const load = Module._load;
    Module._load = function (request, ...rest) {
      if (request === 'tiktoken/lite') {
        return { Tiktoken: class { constructor() { throw new Error('tiktoken is not installed (benchmark stub)'); } } };
      }
      return load.call(this, request, ...rest);
    };
    log('tiktoken not found: stubbed (no tokenizer needed)');
  }
  return require(dist).Model;
}
