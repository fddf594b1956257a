"""The benchmark shapes (SPEC 1, SPEC 10) and the bytes one decode step must read (the roofline's numerator).

Shared by make_checkpoint.py, hf_baseline.py, roofline.py and report.py so that every number in the
report is computed from one table. Pure Python: importable where torch is not installed.

  python3 bench/shapes.py NAME...    # exits 2 naming the known shapes if a NAME is not one of them
"""
import sys

# arch "qwen" (v1, SPEC 1) or "qwen2" (SPEC 10). H hidden, L layers, n query heads, n_kv KV heads
# (v1: n), d = H/n = 128, F the MLP width (Qwen v1's config.json stores intermediate_size = 2F,
# qwen2's stores F), V vocab, S the context the config declares (v1 seq_length: NTK/logn training
# length, decides nothing below 8192; qwen2 max_position_embeddings), theta the rope base.
# cpu_check: not a Qwen release, a few-MB shape for checking the harness itself on a CPU.
SHAPES = {
    "1.8b": dict(arch="qwen", H=2048, L=24, n=16, F=5504, V=151936, S=8192, theta=10000.0),
    "7b": dict(arch="qwen", H=4096, L=32, n=32, F=11008, V=151936, S=8192, theta=10000.0),
    "tiny": dict(arch="qwen", H=128, L=2, n=2, F=256, V=1000, S=8192, theta=10000.0, cpu_check=True),
    # Qwen2.5-7B(-Instruct): 28 query heads over 4 KV heads, q/k/v biased, untied lm_head.
    "qwen2.5-7b": dict(arch="qwen2", H=3584, L=28, n=28, n_kv=4, F=18944, V=152064, S=32768, theta=1e6, label="Qwen2.5-7B"),
    "qwen2-tiny": dict(arch="qwen2", H=128, L=2, n=4, n_kv=2, F=256, V=1000, S=32768, theta=1e6, cpu_check=True),
}
for _s in SHAPES.values():
    _s.setdefault("n_kv", _s["n"])
# GPTQ releases of the same shapes (Qwen's Int4/Int8 format: group 128, sym, desc_act false; the
# tiny ones group 64, so that a 128-wide input has two groups).
for _base, _bits in [("1.8b", 4), ("1.8b", 8), ("7b", 4), ("7b", 8), ("tiny", 4), ("tiny", 8),
                     ("qwen2.5-7b", 4), ("qwen2-tiny", 4)]:
    _s = SHAPES[_base]
    SHAPES[f"{_base}-int{_bits}"] = dict(_s, bits=_bits, G=64 if _s.get("cpu_check") else 128,
                                         label=f"{_s.get('label', _base.upper())}-INT{_bits}")

BF16_BYTES = 2


def label(shape):
    """The shape's name in the report: "7B", "1.8B-INT4", "Qwen2.5-7B", "QWEN2-TINY"."""
    return SHAPES[shape].get("label", shape.upper())


def layer_linears(arch, H, n, n_kv, F, bits=None, **_):
    """One layer's linears as the checkpoint stores them: (name, K in, N out, has bias), attention
    first, then the MLP. v1 biases c_attn only, except that its GPTQ releases (AutoGPTQ) store a bias,
    zero where the float model had none, on every linear; qwen2 biases q/k/v only, in GPTQ too
    (Qwen2.5's -GPTQ-Int4 releases, quantized with optimum, keep the float model's biases)."""
    d = H // n
    if arch == "qwen":
        gb = bool(bits)
        return ([("attn.c_attn", H, 3 * H, True), ("attn.c_proj", H, H, gb)],
                [("mlp.w1", H, F, gb), ("mlp.w2", H, F, gb), ("mlp.c_proj", F, H, gb)])
    return ([("self_attn.q_proj", H, n * d, True), ("self_attn.k_proj", H, n_kv * d, True),
             ("self_attn.v_proj", H, n_kv * d, True), ("self_attn.o_proj", n * d, H, False)],
            [("mlp.gate_proj", H, F, False), ("mlp.up_proj", H, F, False), ("mlp.down_proj", F, H, False)])


def weight_params(H, L, n, n_kv, F, V, **_):
    """bf16 parameters a decode step reads: every weight once, except the embedding (one row, negligible).

    lm_head V*H (read whole even when tied to the embedding)
    + L * ( q,k,v (n + 2 n_kv)*d*H + their bias (n + 2 n_kv)*d + o_proj n*d*H + MLP 3*H*F + 2 norms 2H )
    + final norm H
    Qwen v1 is the case n_kv = n, n*d = H: c_attn 3H*H + 3H, c_proj H*H.
    """
    d = H // n
    qkv = (n + 2 * n_kv) * d
    return V * H + L * (qkv * H + qkv + n * d * H + 3 * H * F + 2 * H) + H


def gptq_linear_bytes(K, N, bits, G, bias=True):
    """A GPTQ linear as a decode step reads it: packed weights, fp16 scales, packed zeros, fp16 bias
    where stored (g_idx, K int32 words, is not read when desc_act is false)."""
    return K * N * bits // 8 + (K // G) * N * 2 + (K // G) * N * bits // 8 + (N * 2 if bias else 0)


def weight_bytes(shape):
    s = SHAPES[shape]
    if "bits" not in s:
        # All bf16 (our CUDA backend keeps norms and biases in fp32: +<0.01% bytes, ignored).
        return BF16_BYTES * weight_params(**s)
    H, L, V, b, G = s["H"], s["L"], s["V"], s["bits"], s["G"]
    attn, mlp = layer_linears(**s)
    per_layer = sum(gptq_linear_bytes(K, N, b, G, bias) for _, K, N, bias in attn + mlp) + 2 * H * 2
    return V * H * 2 + L * per_layer + H * 2  # lm_head and norms stay fp16


def kv_bytes(shape, ctx):
    """KV cache read by a step attending over ctx positions: k and v, L layers, n_kv heads of d values, bf16."""
    s = SHAPES[shape]
    return 2 * s["L"] * ctx * s["n_kv"] * (s["H"] // s["n"]) * BF16_BYTES


def step_bytes(shape, ctx):
    return weight_bytes(shape) + kv_bytes(shape, ctx)


def roofline_tok_s(shape, ctx, bandwidth_Bps):
    """Decode tok/s if a step were nothing but reading its bytes at the measured copy bandwidth."""
    return bandwidth_Bps / step_bytes(shape, ctx)


def parse_shape(name):
    if name not in SHAPES:
        raise SystemExit(f"unknown shape {name!r} (known: {', '.join(SHAPES)})")
    return SHAPES[name]


if __name__ == "__main__":
    bad = [a for a in sys.argv[1:] if a not in SHAPES]
    if bad:
        print(f"shapes: unknown shape {', '.join(map(repr, bad))} (known: {', '.join(SHAPES)})", file=sys.stderr)
        sys.exit(2)
