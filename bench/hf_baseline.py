"""Hugging Face transformers on the benchmark shapes: decode tok/s at batch 1, prefill tok/s, peak memory.

  python3 bench/hf_baseline.py --shape 7b [--ctx 128,4096] [--steps 32] [--warmup 4] [--prefill 2048] [--reps 3]

Qwen2ForCausalLM, random weights, bf16, SDPA attention, built directly on the GPU (no checkpoint
to load). For the qwen2 shapes (Qwen2.5-7B) it is the model itself: grouped KV heads, q/k/v with
bias, o_proj without, SwiGLU MLP of width F, RMSNorm, rope_theta 1e6, untied lm_head.
transformers has no Qwen v1 (its code ships with the checkpoints); for the v1 shapes,
num_key_value_heads = num_attention_heads (MHA) and intermediate_size = F give the same block at
the same cost. GPTQ shapes are not measured (one "not measured: why" line): transformers runs a
GPTQ checkpoint only through optimum and a GPTQ kernel package, which this harness does not use.

Measured as a user runs it in eager mode: decode = the model's forward in a loop, one token a
step, with the DynamicCache it returns (greedy argmax on the GPU, no sampling, no generate()
bookkeeping), timed with CUDA events after `warmup` steps; prefill = one forward of T random ids
building the cache, logits of the last position only (logits_to_keep=1, as generate() does).
Prints JSON lines {impl: "hf-transformers", shape, metric, value, ...}; a measurement that fails
prints {..., error} and the rest still run.
"""
import argparse, importlib.util, json, os, signal, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import SHAPES, parse_shape  # noqa: E402

torch = None  # imported in main(), after the GPTQ shapes (which need no torch) have been answered
IMPL = "hf-transformers"
DEV = "cuda"  # --device cpu exists only to check this script where there is no GPU


def emit(shape, **rec):
    print(json.dumps({"impl": IMPL, "shape": shape, **rec}), flush=True)


def log(shape, msg):
    print(f"hf {shape}: {msg}", file=sys.stderr, flush=True)


class SmiSampler:
    """memory.used of the GPU (MiB) every 50 ms from nvidia-smi's own loop: whole GPU, context included."""

    def __init__(self, index=0, ms=50):
        self.peak, self.first, self.samples = -1, -1, 0
        try:
            self.p = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                       "-i", str(index), "-lms", str(ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.p = None
            return
        self.got_first = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        self.got_first.wait(3)

    def _read(self):
        for line in self.p.stdout:
            try:
                v = float(line.strip())
            except ValueError:
                continue
            if self.first < 0:
                self.first = v
            self.peak, self.samples = max(self.peak, v), self.samples + 1
            self.got_first.set()

    @classmethod
    def off(cls):
        o = cls.__new__(cls)
        o.peak, o.first, o.samples, o.p = -1, -1, 0, None
        return o

    def stop(self):
        if self.p:
            self.p.terminate()
            self.p.wait(5)
        return self


def build(s, max_pos):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(
        vocab_size=s["V"], hidden_size=s["H"], intermediate_size=s["F"], num_hidden_layers=s["L"],
        num_attention_heads=s["n"], num_key_value_heads=s["n_kv"], max_position_embeddings=max_pos,
        rope_theta=s["theta"], rms_norm_eps=1e-6, tie_word_embeddings=False, use_cache=True, attn_implementation="sdpa",
    )
    cfg._attn_implementation = "sdpa"
    # Built in place on the GPU in bf16: its random init runs there, no CPU copy of 15 GB.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEV):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model = model.to(device=DEV, dtype=torch.bfloat16).eval()
    return model


def gptq_not_measured(s):
    """Why a GPTQ shape has no Hugging Face numbers (a line for the table's footnotes)."""
    have = [m for m in ("optimum", "gptqmodel", "auto_gptq") if importlib.util.find_spec(m)]
    return (f"not measured: this harness has no GPTQ path for transformers, which runs a GPTQ int{s['bits']} checkpoint "
            f"only through optimum plus gptqmodel or auto-gptq kernels (installed here: {', '.join(have) or 'none of them'})")


def forward(model, ids, past=None):
    """One forward pass; only the last position's logits (as generate() asks for them)."""
    kw = dict(input_ids=ids, past_key_values=past, use_cache=True)
    for keep in ("logits_to_keep", "num_logits_to_keep", None):  # transformers >= 4.50, 4.45-4.49, older
        try:
            return model(**kw, **({keep: 1} if keep else {}))
        except TypeError as e:
            if keep is None or keep not in str(e):
                raise


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    """(fn(), seconds of GPU time from before its first kernel to after its last), by CUDA events."""
    if DEV != "cuda":
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    out = fn()
    e.record()
    torch.cuda.synchronize()
    return out, s.elapsed_time(e) / 1000


def decode(model, shape, V, ctx, steps, warmup):
    ids = torch.randint(0, min(V, 151643), (1, ctx), device=DEV)
    out, prefill_s = timed(lambda: forward(model, ids))
    emit(shape, metric="prefill_tok_s", tokens=ctx, value=round(ctx / prefill_s, 3), cold=True, note="decode prompt")
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(warmup):
        out = forward(model, tok, past)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    sync()

    def loop():
        nonlocal out, past, tok
        for _ in range(steps):
            out = forward(model, tok, past)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)

    t0 = time.perf_counter()
    _, secs = timed(loop)
    wall = time.perf_counter() - t0
    emit(shape, metric="decode_tok_s", ctx=ctx, value=round(steps / secs, 3), steps=steps, warmup=warmup,
         kv_first=ctx + warmup, kv_mid=ctx + warmup + steps // 2, wall_tok_s=round(steps / wall, 3),
         cache=type(past).__name__)
    del out, past


def prefill(model, shape, V, T, reps):
    ids = torch.randint(0, min(V, 151643), (1, T), device=DEV)
    forward(model, ids)  # warm-up: cuBLAS heuristics, allocator
    times = [timed(lambda: forward(model, ids))[1] for _ in range(reps)]
    med = statistics.median(times)
    emit(shape, metric="prefill_tok_s", tokens=T, value=round(T / med, 3), ms_median=round(med * 1000, 3),
         ms_all=[round(t * 1000, 3) for t in times], reps=reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", required=True, choices=list(SHAPES))
    ap.add_argument("--ctx", default="128,4096")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = ap.parse_args()
    s, shape = parse_shape(a.shape), a.shape
    if s.get("bits"):
        emit(shape, metric="run", error=gptq_not_measured(s))
        log(shape, "GPTQ shape: not measured")
        return
    global DEV, torch
    DEV = a.device
    import torch
    ctxs = [int(c) for c in a.ctx.split(",") if c]
    smi = SmiSampler() if DEV == "cuda" else SmiSampler.off()
    try:
        import transformers
        t0 = time.perf_counter()
        model = build(s, max(ctxs + [a.prefill]) + a.warmup + a.steps + 16)
        sync()
        p = next(model.parameters())
        emit(shape, metric="load_s", value=round(time.perf_counter() - t0, 3), transformers=transformers.__version__,
             torch=torch.__version__, gpu=torch.cuda.get_device_name() if DEV == "cuda" else "cpu", dtype=str(p.dtype),
             attn=getattr(model.config, "_attn_implementation", None),
             params=sum(x.numel() for x in model.parameters()))
        log(shape, f"built with transformers {transformers.__version__} ({p.dtype}, {model.config._attn_implementation})")
    except Exception as e:  # noqa: BLE001 - recorded in the table, not fatal to the run
        emit(shape, metric="load_s", error=f"{type(e).__name__}: {e}")
        smi.stop()
        sys.exit(1)
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    jobs = [(dict(metric="decode_tok_s", ctx=c), lambda c=c: decode(model, shape, s["V"], c, a.steps, a.warmup)) for c in ctxs]
    if a.prefill:
        jobs.append((dict(metric="prefill_tok_s", tokens=a.prefill), lambda: prefill(model, shape, s["V"], a.prefill, a.reps)))

    def on_term(*_):  # run.sh's `timeout` sends SIGTERM first: still print the memory peaks below
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        for rec, job in jobs:
            try:
                with torch.inference_mode():
                    job()
                log(shape, f"{rec} done")
            except Exception as e:  # noqa: BLE001
                emit(shape, **rec, error=f"{type(e).__name__}: {e}")
                log(shape, f"{rec} FAILED: {e}")
            if DEV == "cuda":
                torch.cuda.empty_cache()
    finally:
        if DEV == "cuda":
            emit(shape, metric="peak_mem_bytes", kind="torch.cuda.max_memory_allocated", value=torch.cuda.max_memory_allocated(),
                 reserved=torch.cuda.max_memory_reserved())
        smi.stop()
        if smi.samples:
            emit(shape, metric="peak_mem_bytes", kind="nvidia-smi", value=int(smi.peak * 1048576),
                 baseline_bytes=int(smi.first * 1048576), samples=smi.samples, note="memory.used of the whole GPU")


if __name__ == "__main__":
    main()
