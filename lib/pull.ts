// `qwen-native pull`: downloads the files a load needs from a checkpoint repo on the Hugging Face
// Hub (or any server with the hub's file API: HF_ENDPOINT). Resumable (.part files + HTTP Range),
// parallel, checked (size; sha256 of LFS files and the git blob id of small ones, where the hub
// gives them). node:http(s) and node:crypto only.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

export interface PullOptions {
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** Destination folder (default: the repo's name, in the current folder). */
  dir?: string;
  /** Default: HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Default: HF_TOKEN (or HUGGING_FACE_HUB_TOKEN). */
  token?: string;
  /** Files downloaded at once (default 4). */
  concurrency?: number;
  /** Called as bytes arrive (throttled by the caller). */
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

export interface PullProgress {
  /** Bytes on disk so far, over all files (resumed bytes included). */
  done: number;
  /** Bytes of all files, where the listing gives sizes. */
  total: number;
  filesDone: number;
  files: number;
  /** A file that just completed, if any. */
  file?: string;
}

export interface PullResult {
  dir: string;
  /** The commit the revision resolved to (when the hub says). */
  commit: string | null;
  files: { path: string; size: number; skipped: boolean; resumed: boolean; verified: 'sha256' | 'git-sha1' | 'size' | 'none' }[];
  bytes: number;
}

interface Sibling {
  rfilename: string;
  size?: number;
  blobId?: string;
  lfs?: { sha256?: string; oid?: string; size?: number };
}

/** Files a load reads besides the weights (the weights: model.safetensors, or the index + its shards). */
export const CHECKPOINT_FILES = [
  'config.json',
  'generation_config.json',
  'qwen.tiktoken',
  'tokenizer_config.json',
  'quantize_config.json',
];

export class PullError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'PullError';
  }
}

const MAX_REDIRECTS = 10;
const RETRIES = 3;

type Headers = Record<string, string>;

interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: http.IncomingMessage;
  url: URL;
}

/** GET with redirects followed; Authorization is sent to the first host only (CDNs get signed URLs). */
function get(url: URL, headers: Headers, signal?: AbortSignal, redirects = 0, origin = url.origin): Promise<Response> {
  return new Promise((resolve, reject) => {
    const lib = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : null;
    if (!lib) return reject(new PullError(`unsupported URL ${url.href}`));
    const h: Headers = { ...headers, 'user-agent': 'qwen-native-pull' };
    if (url.origin !== origin) delete h.authorization;
    const req = lib.get(url, { headers: h, signal }, (res) => {
      const status = res.statusCode ?? 0;
      if ([301, 302, 303, 307, 308].includes(status) && res.headers.location) {
        res.resume();
        if (redirects >= MAX_REDIRECTS) return reject(new PullError(`too many redirects from ${url.href}`));
        const next = new URL(res.headers.location, url);
        get(next, headers, signal, redirects + 1, origin).then(resolve, reject);
        return;
      }
      resolve({ status, headers: res.headers, body: res, url });
    });
    req.on('error', reject);
  });
}

async function readBody(res: Response): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res.body) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function httpError(res: Response, what: string, tokenSet: boolean): PullError {
  res.body.resume();
  const s = res.status;
  if (s === 401 || s === 403)
    return new PullError(
      `${what}: the hub answered ${s} (${tokenSet ? 'HF_TOKEN was sent but does not give access' : 'the repo is gated or private: set HF_TOKEN'})`,
      s,
    );
  if (s === 404) return new PullError(`${what}: not found (404): check the repo name and --revision`, s);
  return new PullError(`${what}: HTTP ${s} from ${res.url.origin}`, s);
}

function encodePath(p: string): string {
  return p.split('/').map(encodeURIComponent).join('/');
}

function checkRepo(repo: string) {
  if (typeof repo !== 'string' || !/^[A-Za-z0-9][\w.-]*\/[\w.-]+$/.test(repo) || repo.includes('..'))
    throw new PullError(`repo must look like org/name, got ${JSON.stringify(repo)}`);
}

/** Which files of the listing a load needs (weights: one file, or an index whose shards come later). */
export function selectFiles(siblings: Sibling[], repo: string): { files: Sibling[]; index: Sibling | null } {
  const byName = new Map(siblings.map((s) => [s.rfilename, s]));
  const files = CHECKPOINT_FILES.filter((f) => byName.has(f)).map((f) => byName.get(f)!);
  if (!byName.has('config.json')) throw new PullError(`${repo}: no config.json at the top of the repo: not a Transformers checkpoint`);
  const single = byName.get('model.safetensors');
  const index = byName.get('model.safetensors.index.json') ?? null;
  if (single) return { files: [...files, single], index: null };
  if (index) return { files: [...files, index], index };
  if (siblings.some((s) => /^pytorch_model.*\.bin(\.index\.json)?$/.test(s.rfilename)))
    throw new PullError(
      `${repo} has only PyTorch .bin (pickle) weights; qwen-native reads safetensors only. ` +
        'Pick a repo (or revision) with model.safetensors, or convert the weights to safetensors first',
    );
  throw new PullError(`${repo}: no model.safetensors or model.safetensors.index.json in the repo`);
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do {
    n /= 1024;
    i++;
  } while (n >= 1024 && i < u.length - 1);
  return `${n.toFixed(n < 10 ? 1 : 0)} ${u[i]}`;
}
export { formatBytes };

async function hashFile(file: string, algo: 'sha256' | 'sha1', prefix?: Buffer): Promise<string> {
  const h = crypto.createHash(algo);
  if (prefix) h.update(prefix);
  for await (const c of fs.createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

function expectedOf(s: Sibling) {
  const size = s.lfs?.size ?? s.size;
  const sha256 = s.lfs?.sha256 ?? (s.lfs?.oid && /^[0-9a-f]{64}$/.test(s.lfs.oid) ? s.lfs.oid : undefined);
  const gitSha1 = !s.lfs && s.blobId && /^[0-9a-f]{40}$/.test(s.blobId) ? s.blobId : undefined;
  return { size, sha256, gitSha1 };
}

/** Checks a finished file against what the listing says; returns how, throws naming the file. */
async function verify(file: string, s: Sibling): Promise<PullResult['files'][number]['verified']> {
  const { size, sha256, gitSha1 } = expectedOf(s);
  const actual = fs.statSync(file).size;
  if (size !== undefined && actual !== size)
    throw new PullError(`${s.rfilename}: size mismatch: expected ${size} bytes, got ${actual}`);
  if (sha256) {
    const got = await hashFile(file, 'sha256');
    if (got !== sha256) throw new PullError(`${s.rfilename}: sha256 mismatch: expected ${sha256}, got ${got}`);
    return 'sha256';
  }
  if (gitSha1) {
    const got = await hashFile(file, 'sha1', Buffer.from(`blob ${actual}\0`));
    if (got !== gitSha1) throw new PullError(`${s.rfilename}: git blob sha1 mismatch: expected ${gitSha1}, got ${got}`);
    return 'git-sha1';
  }
  return size !== undefined ? 'size' : 'none';
}

export async function pull(repo: string, options: PullOptions = {}): Promise<PullResult> {
  checkRepo(repo);
  const endpoint = (options.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const token = options.token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN ?? '';
  const revision = options.revision ?? 'main';
  const dir = path.resolve(options.dir ?? repo.split('/')[1]);
  const concurrency = Math.max(1, Math.min(16, options.concurrency ?? 4));
  const headers: Headers = token ? { authorization: `Bearer ${token}` } : {};
  const signal = options.signal;

  const apiUrl = new URL(`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`);
  const res = await get(apiUrl, headers, signal);
  if (res.status !== 200) throw httpError(res, `${repo}@${revision}`, Boolean(token));
  let listing: { sha?: string; siblings?: Sibling[] };
  try {
    listing = JSON.parse(await readBody(res));
  } catch {
    throw new PullError(`${apiUrl.href}: the answer is not JSON (is HF_ENDPOINT right?)`);
  }
  if (!Array.isArray(listing.siblings)) throw new PullError(`${apiUrl.href}: no file list (siblings) in the answer`);
  const commit = typeof listing.sha === 'string' && /^[0-9a-f]{40}$/.test(listing.sha) ? listing.sha : null;
  const rev = commit ?? revision; // every file from one commit, even if the branch moves meanwhile
  const siblings = listing.siblings;
  const { files, index } = selectFiles(siblings, repo);
  fs.mkdirSync(dir, { recursive: true });

  const results: PullResult['files'] = [];
  const progress: PullProgress = { done: 0, total: 0, filesDone: 0, files: 0 };
  const report = (file?: string) => options.onProgress?.({ ...progress, file });

  async function download(s: Sibling): Promise<void> {
    const rel = s.rfilename;
    if (path.isAbsolute(rel) || rel.split('/').includes('..')) throw new PullError(`refusing the file name ${JSON.stringify(rel)}`);
    const dest = path.join(dir, rel);
    const part = `${dest}.part`;
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    const { size } = expectedOf(s);
    // Already complete: keep it if it checks out.
    if (fs.existsSync(dest) && (size === undefined || fs.statSync(dest).size === size)) {
      try {
        const verified = await verify(dest, s);
        progress.done += fs.statSync(dest).size;
        progress.filesDone++;
        results.push({ path: rel, size: fs.statSync(dest).size, skipped: true, resumed: false, verified });
        report(rel);
        return;
      } catch {
        // re-download below
      }
    }
    const url = new URL(`${endpoint}/${repo}/resolve/${encodeURIComponent(rev)}/${encodePath(rel)}`);
    let resumed = false;
    for (let attempt = 1; ; attempt++) {
      let have = fs.existsSync(part) ? fs.statSync(part).size : 0;
      if (size !== undefined && have > size) {
        fs.rmSync(part);
        have = 0;
      }
      const counted = have;
      progress.done += counted;
      let got = 0;
      try {
        if (size === undefined || have < size) {
          const h: Headers = { ...headers };
          if (have > 0) h.range = `bytes=${have}-`;
          const r = await get(url, h, signal);
          if (r.status === 416 && have > 0) {
            r.body.resume(); // the part is already whole
          } else if (r.status === 200 || r.status === 206) {
            const append = r.status === 206 && have > 0;
            if (append) {
              const start = /bytes (\d+)-/.exec(String(r.headers['content-range'] ?? ''))?.[1];
              if (start !== undefined && Number(start) !== have) throw new PullError(`${rel}: the server resumed at byte ${start}, not ${have}`);
              resumed = true;
            } else if (have > 0) {
              progress.done -= counted; // the server sent the whole file: start over
              have = 0;
            }
            await new Promise<void>((resolve, reject) => {
              const out = fs.createWriteStream(part, { flags: append ? 'a' : 'w' });
              r.body.on('data', (c: Buffer) => {
                got += c.length;
                progress.done += c.length;
                report();
              });
              r.body.on('error', reject);
              r.body.on('aborted', () => reject(new PullError(`${rel}: the connection closed early`)));
              out.on('error', reject);
              out.on('finish', resolve);
              r.body.pipe(out);
            });
          } else {
            throw httpError(r, rel, Boolean(token));
          }
        }
        const verified = await verify(part, s).catch((e) => {
          fs.rmSync(part, { force: true }); // a wrong file is not worth resuming
          throw e;
        });
        fs.renameSync(part, dest);
        progress.filesDone++;
        results.push({ path: rel, size: fs.statSync(dest).size, skipped: false, resumed, verified });
        report(rel);
        return;
      } catch (e) {
        progress.done -= counted + got; // recounted from the .part on the next attempt
        const err = e as Error;
        const pe = err instanceof PullError ? err : null;
        const retriable =
          !signal?.aborted && !(pe && (pe.status === undefined ? /mismatch|refusing|resumed at/.test(pe.message) : pe.status < 500));
        if (!retriable || attempt >= RETRIES) throw pe ?? new PullError(`${rel}: ${err.message}`);
        await new Promise((r) => setTimeout(r, 250 * attempt));
      }
    }
  }

  async function runAll(list: Sibling[]) {
    progress.files += list.length;
    for (const s of list) progress.total += expectedOf(s).size ?? 0;
    const queue = [...list].sort((a, b) => (expectedOf(b).size ?? 0) - (expectedOf(a).size ?? 0)); // big ones first
    let failed: unknown = null;
    const worker = async () => {
      while (queue.length && !failed) {
        const s = queue.shift()!;
        try {
          await download(s);
        } catch (e) {
          failed ??= e;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker));
    if (failed) throw failed;
  }

  await runAll(files);
  if (index) {
    // The shards are the ones the index maps tensors to (not every *.safetensors in the repo).
    let map: Record<string, string>;
    try {
      map = (JSON.parse(fs.readFileSync(path.join(dir, index.rfilename), 'utf8')) as { weight_map: Record<string, string> }).weight_map;
    } catch {
      throw new PullError(`${index.rfilename}: not a safetensors index (no weight_map)`);
    }
    const byName = new Map(siblings.map((s) => [s.rfilename, s]));
    const shards: Sibling[] = [];
    for (const f of new Set(Object.values(map ?? {}))) {
      const s = byName.get(f);
      if (!s) throw new PullError(`${index.rfilename} maps tensors to ${f}, which the repo does not have`);
      shards.push(s);
    }
    await runAll(shards);
  }
  return { dir, commit, files: results, bytes: results.reduce((a, f) => a + f.size, 0) };
}
