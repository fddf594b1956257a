"""The benchmark shapes (SPEC 1) and the bytes one decode step must read (the roofline's numerator).

Shared by make_checkpoint.py, hf_baseline.py, roofline.py and report.py so that every number in the
report is computed from one table. Pure Python: importable where torch is not installed.
"""

# H hidden, L layers, n heads (d = H/n = 128), F the MLP width (Qwen's config.json stores
# intermediate_size = 2F), V vocab, S seq_length (NTK/logn training length; decides nothing below 8192).
SHAPES = {
    "1.8b": dict(H=2048, L=24, n=16, F=5504, V=151936, S=8192),
    "7b": dict(H=4096, L=32, n=32, F=11008, V=151936, S=8192),
    # Not a Qwen release: a few-MB shape for checking the harness itself on a CPU.
    "tiny": dict(H=128, L=2, n=2, F=256, V=1000, S=8192),
}
# GPTQ releases of the same shapes (Qwen's Int4/Int8 format: group 128, sym, desc_act false).
for _base in ("1.8b", "7b", "tiny"):
    for _bits in (4, 8):
        SHAPES[f"{_base}-int{_bits}"] = dict(SHAPES[_base], bits=_bits, G=128 if _base != "tiny" else 64)

BF16_BYTES = 2


def weight_params(H, L, F, V, **_):
    """Parameters a decode step reads: every weight once, except wte (one row, negligible).

    lm_head V*H
    + L * ( c_attn 3H*H + c_attn bias 3H + attn c_proj H*H + mlp w1,w2,c_proj 3*H*F + ln_1,ln_2 2H )
    + ln_f H
    """
    return V * H + L * (3 * H * H + 3 * H + H * H + 3 * H * F + 2 * H) + H


def gptq_linear_bytes(K, N, bits, G):
    """A GPTQ linear as a decode step reads it: packed weights, fp16 scales, packed zeros, fp16 bias."""
    return K * N * bits // 8 + (K // G) * N * 2 + (K // G) * N * bits // 8 + N * 2


def weight_bytes(shape):
    s = SHAPES[shape]
    if "bits" not in s:
        # All bf16 (our CUDA backend keeps norms and biases in fp32: +<0.01% bytes, ignored).
        return BF16_BYTES * weight_params(**s)
    H, L, F, V, b, G = s["H"], s["L"], s["F"], s["V"], s["bits"], s["G"]
    per_layer = (gptq_linear_bytes(H, 3 * H, b, G) + gptq_linear_bytes(H, H, b, G)
                 + 2 * gptq_linear_bytes(H, F, b, G) + gptq_linear_bytes(F, H, b, G) + 2 * H * 2)
    return V * H * 2 + L * per_layer + H * 2  # lm_head and norms stay fp16


def kv_bytes(shape, ctx):
    """KV cache read by a step attending over ctx positions: k and v, L layers, H values each, bf16."""
    s = SHAPES[shape]
    return 2 * s["L"] * ctx * s["H"] * BF16_BYTES


def step_bytes(shape, ctx):
    return weight_bytes(shape) + kv_bytes(shape, ctx)


def roofline_tok_s(shape, ctx, bandwidth_Bps):
    """Decode tok/s if a step were nothing but reading its bytes at the measured copy bandwidth."""
    return bandwidth_Bps / step_bytes(shape, ctx)


def parse_shape(name):
    if name not in SHAPES:
        raise SystemExit(f"unknown shape {name!r} (known: {', '.join(SHAPES)})")
    return SHAPES[name]
