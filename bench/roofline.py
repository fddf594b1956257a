"""The decode roofline: the measured copy bandwidth over the bytes a step must read.

  python3 bench/roofline.py --probe               # measure the GPU's copy bandwidth (torch), JSON line
  python3 bench/roofline.py --bandwidth 3.0e12 [--shapes "7b qwen2.5-7b"]   # the roofline table for a given bandwidth

A batch-1 decode step reads every weight once plus the KV cache it attends over (shapes.py:
step_bytes), so no implementation can beat bandwidth / step_bytes tok/s. The bandwidth is measured
in the same run: a 4 GiB device-to-device copy timed with CUDA events, counted as read + write
(2 x bytes / time), the traffic pattern of a copy, and the best a streaming kernel reaches.
"""
import argparse, json, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import SHAPES, parse_shape, roofline_tok_s, step_bytes, weight_bytes  # noqa: E402


def driver_version():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def probe(gib=4, iters=10):
    import torch
    n = gib << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()  # random bytes: nothing to compress
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for s, e in ev:
        s.record(); b.copy_(a); e.record()
    torch.cuda.synchronize()
    bws = sorted(2 * n / (s.elapsed_time(e) / 1000) for s, e in ev)
    return {
        "impl": "probe", "metric": "copy_bandwidth_Bps", "value": bws[len(bws) // 2], "max": bws[-1], "min": bws[0],
        "bytes": n, "iters": iters, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "driver": driver_version(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", action="store_true", help="measure the copy bandwidth on the GPU (needs torch)")
    ap.add_argument("--bandwidth", type=float, help="bytes/s for the table (default: the probe's)")
    ap.add_argument("--ctx", default="128,4096")
    ap.add_argument("--shapes", default=" ".join(s for s in SHAPES if not SHAPES[s].get("cpu_check")),
                    help="space-separated shape names (default: every shape but the CPU-check ones)")
    a = ap.parse_args()
    bw = a.bandwidth
    if a.probe:
        r = probe()
        print(json.dumps(r), flush=True)
        print(f"roofline: {r['gpu']}: copy {r['value'] / 1e12:.3f} TB/s (median of {r['iters']}, max {r['max'] / 1e12:.3f})", file=sys.stderr)
        bw = bw or r["value"]
    if not bw:
        ap.error("give --probe or --bandwidth")
    for shape in a.shapes.split():
        parse_shape(shape)
        for c in map(int, a.ctx.split(",")):
            print(f"roofline: {shape} ctx {c}: weights {weight_bytes(shape) / 1e9:.3f} GB + KV = {step_bytes(shape, c) / 1e9:.3f} GB/step "
                  f"-> {roofline_tok_s(shape, c, bw):.0f} tok/s at {bw / 1e12:.2f} TB/s", file=sys.stderr)


if __name__ == "__main__":
    main()
