"""Hugging Face transformers' batched generate on a benchmark shape: the yardstick of bench/concurrent.mjs.

  python3 bench/hf_batched.py --shape 7b [--batch 1,4,16,64] [--prompt 128] [--tokens 32]

The model is hf_baseline.build's (Qwen2ForCausalLM, random bf16 weights, SDPA; MHA for the Qwen v1
shapes). For each batch size B: model.generate on B random prompts of --prompt ids, greedy,
exactly --tokens new tokens (min_new_tokens = max_new_tokens, so no row stops early), after one
warm-up call of 2 tokens; throughput = B * tokens / wall time (CUDA-synchronized). This is
static batching: all B rows start and end together, which is the best case for it.
GPTQ shapes: one "not measured" line, as hf_baseline. Prints JSON lines
{impl: "hf-transformers", shape, metric: "batch_tok_s", batch, value, ...}.
"""
import argparse, json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_baseline  # noqa: E402
from shapes import parse_shape  # noqa: E402


def emit(shape, **rec):
    print(json.dumps({"impl": "hf-transformers", "shape": shape, **rec}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True)
    ap.add_argument("--batch", default="1,4,16,64")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    s = parse_shape(args.shape)
    batches = [int(b) for b in args.batch.split(",")]
    if "bits" in s:
        for b in batches:
            emit(args.shape, metric="batch_tok_s", batch=b, error=hf_baseline.gptq_not_measured(s))
        return
    import torch
    hf_baseline.torch = torch
    model = hf_baseline.build(s, args.prompt + args.tokens + 8)
    V = s["V"]
    for b in batches:
        try:
            ids = torch.randint(0, min(V, 151643), (b, args.prompt), device="cuda")
            mask = torch.ones_like(ids)
            kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)
            with torch.inference_mode():
                model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, **kw)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t
            new = (out.shape[1] - args.prompt) * b
            emit(args.shape, metric="batch_tok_s", batch=b, value=round(new / wall, 3), tokens=new,
                 wall_s=round(wall, 3), prompt=args.prompt, note="generate(), static batch, prefill included")
            print(f"hf batched {args.shape} B={b}: {new / wall:.1f} tok/s", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 -- one failed size must not lose the others
            emit(args.shape, metric="batch_tok_s", batch=b, error=f"{type(e).__name__}: {e}")
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
