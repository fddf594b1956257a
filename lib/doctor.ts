// `qwen-native doctor`: what this machine has (NVIDIA driver, GPUs, compute capability) and which
// binary is in use, and what `device: 'auto'` will therefore run on. Never throws for a missing GPU.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import {
  binaryInfo,
  cudaUnavailableReason,
  NAPI_VERSION,
  nvidiaDriver,
  rawNative,
  type BinaryInfo,
  type NativeAddon,
  type NvidiaDriver,
} from './native';

export interface GpuInfo {
  index: number;
  name: string;
  /** "9.0" */
  cc: string | null;
  memory: number | null;
  /** Whether this binary has code for it: 'native' (SASS), 'ptx' (JIT at first load), 'no'. */
  supported: 'native' | 'ptx' | 'no' | 'unknown';
}

export interface DoctorReport {
  version: string;
  node: string;
  napi: { built: number; runtime: number };
  platform: string;
  glibc: string | null;
  binary: (BinaryInfo & { size: number }) | null;
  loadError: string | null;
  cudaCompiled: boolean | null;
  cudaDevices: number | null;
  driver: NvidiaDriver | null;
  /** CUDA version the driver supports (from the addon's cudaDriverInfo, where it has one). */
  driverCuda: string | null;
  gpus: GpuInfo[];
  /** What the CUDA driver query said when it failed. */
  driverError?: string;
  /** Where the GPU list came from: 'addon' (cudaDriverInfo), 'nvidia-smi', or null. */
  gpuSource: string | null;
  auto: 'cuda' | 'cpu' | null;
  autoReason: string | null;
}

function nvidiaSmi(): { name: string; cc: string | null; memory: number | null; driver: string }[] | null {
  if (process.env.QWEN_NATIVE_FAKE_DRIVER !== undefined) return null; // tests simulate the driver
  const r = spawnSync('nvidia-smi', ['--query-gpu=name,compute_cap,memory.total,driver_version', '--format=csv,noheader,nounits'], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  if (r.status !== 0 || !r.stdout) return null;
  return r.stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [name, cc, mem, driver] = line.split(',').map((s) => s.trim());
      const mib = Number(mem);
      return { name, cc: /^\d+\.\d+$/.test(cc) ? cc : null, memory: Number.isFinite(mib) ? mib * 1048576 : null, driver };
    });
}

function supportFor(cc: string | null, archs: string[] | null | undefined): GpuInfo['supported'] {
  if (!cc || !archs) return 'unknown';
  const n = Math.round(Number(cc) * 10);
  const real = archs.filter((a) => !a.endsWith('-virtual')).map((a) => parseInt(a, 10));
  const virt = archs.filter((a) => !a.endsWith('-real')).map((a) => parseInt(a, 10));
  // SASS runs on the same major with an equal or higher minor; PTX JIT-compiles for anything newer.
  if (real.some((r) => Math.floor(r / 10) === Math.floor(n / 10) && r <= n)) return 'native';
  if (virt.some((v) => v <= n)) return 'ptx';
  return 'no';
}

function glibcVersion(): string | null {
  const r = process.report?.getReport?.() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return r?.header?.glibcVersionRuntime ?? null;
}

export function doctor(): DoctorReport {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
  const report: DoctorReport = {
    version: pkg.version,
    node: process.version,
    napi: { built: NAPI_VERSION, runtime: Number(process.versions.napi) },
    platform: `${process.platform}-${process.arch}`,
    glibc: glibcVersion(),
    binary: null,
    loadError: null,
    cudaCompiled: null,
    cudaDevices: null,
    driver: nvidiaDriver(),
    driverCuda: null,
    gpus: [],
    gpuSource: null,
    auto: null,
    autoReason: null,
  };
  let a: NativeAddon | null = null;
  try {
    a = rawNative();
  } catch (e) {
    report.loadError = (e as Error).message;
  }
  const bin = binaryInfo();
  if (bin) report.binary = { ...bin, size: fs.statSync(bin.path).size };
  if (a) {
    report.cudaCompiled = a.cudaCompiled();
    report.cudaDevices = report.cudaCompiled ? a.cudaDeviceCount() : 0;
    if (typeof a.cudaDriverInfo === 'function') {
      try {
        const d = a.cudaDriverInfo();
        if (d.driverVersion > 0) report.driverCuda = `${Math.floor(d.driverVersion / 1000)}.${Math.floor((d.driverVersion % 1000) / 10)}`;
        report.gpus = d.devices.map((g, i) => ({ index: g.index ?? i, name: g.name, cc: g.computeCapability ?? g.cc ?? null, memory: g.memory, supported: 'unknown' }));
        if (d.error && !report.gpus.length) report.driverError = d.error;
        report.gpuSource = 'addon';
      } catch {
        // fall back to nvidia-smi below
      }
    }
    const reason = cudaUnavailableReason(a);
    report.auto = reason ? 'cpu' : 'cuda';
    report.autoReason = reason;
  }
  if (!report.gpuSource && (report.driver || process.env.QWEN_NATIVE_FAKE_DRIVER === undefined)) {
    const smi = nvidiaSmi();
    if (smi) {
      report.gpus = smi.map((g, index) => ({ index, name: g.name, cc: g.cc, memory: g.memory, supported: 'unknown' }));
      report.gpuSource = 'nvidia-smi';
    }
  }
  const archs = report.binary?.meta?.archs ?? null;
  for (const g of report.gpus) g.supported = supportFor(g.cc, archs);
  return report;
}

export function formatDoctor(r: DoctorReport): string {
  const gib = (n: number | null) => (n === null ? '?' : `${(n / 1073741824).toFixed(1)} GiB`);
  const lines: string[] = [];
  const row = (k: string, v: string) => lines.push(`${(k ? k + ':' : '').padEnd(10)}${v}`);
  row('package', `qwen-native ${r.version}`);
  row('node', `${r.node} (Node-API ${r.napi.runtime}; the addon uses Node-API ${r.napi.built}), ${r.platform}${r.glibc ? `, glibc ${r.glibc}` : ''}`);
  if (r.binary) {
    const m = r.binary.meta;
    const what =
      r.binary.origin === 'build'
        ? 'built here from source'
        : r.binary.origin === 'env'
          ? 'from QWEN_NATIVE_BINARY'
          : `prebuilt${r.binary.variant ? ` (${r.binary.variant} flavour)` : ''}`;
    row('binary', `${r.binary.path} (${what}, ${(r.binary.size / 1048576).toFixed(1)} MiB)`);
    if (r.binary.reason) row('', `chosen because ${r.binary.reason}`);
    if (m) {
      row(
        '',
        m.backend === 'cuda'
          ? `CUDA ${m.cuda} build for ${(m.archs ?? []).join(', ')}; needs NVIDIA driver R${m.minDriver}+${m.glibc ? `, glibc ${m.glibc}+` : ''}`
          : `CPU-only build${m.glibc ? `; needs glibc ${m.glibc}+` : ''}`,
      );
    }
  } else row('binary', 'none loaded');
  if (r.loadError) row('error', r.loadError);
  if (r.cudaCompiled !== null) row('backends', r.cudaCompiled ? 'CPU, CUDA' : 'CPU only (no CUDA backend in this binary)');
  row('driver', r.driver ? `NVIDIA ${r.driver.version}${r.driverCuda ? ` (CUDA ${r.driverCuda})` : ''} [${r.driver.source}]` : 'no NVIDIA driver found');
  if (r.driverError) row('', `CUDA driver query: ${r.driverError}`);
  if (r.gpus.length) {
    for (const g of r.gpus) {
      const sup = { native: 'supported', ptx: 'supported through PTX (kernels JIT-compiled at first use)', no: 'NOT supported by this binary (needs compute capability 8.0+)', unknown: '' }[g.supported];
      row(g.index === 0 ? 'gpus' : '', `${g.index}: ${g.name}, compute capability ${g.cc ?? '?'}, ${gib(g.memory)}${sup ? ` - ${sup}` : ''}`);
    }
    if (r.gpuSource === 'nvidia-smi') row('', '(from nvidia-smi)');
  } else row('gpus', r.driver ? 'none listed (nvidia-smi not found or failed)' : 'none');
  if (r.cudaDevices !== null && r.cudaCompiled) row('cuda', `${r.cudaDevices} device(s) visible to the addon`);
  if (r.auto) row('auto', r.auto === 'cuda' ? "device 'auto' runs on CUDA" : `device 'auto' runs on the CPU: ${r.autoReason}`);
  return lines.join('\n') + '\n';
}
