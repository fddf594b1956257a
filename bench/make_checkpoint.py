"""Writes a random Qwen v1 bf16 checkpoint folder (SPEC 1-2) of a benchmark shape.

  python3 bench/make_checkpoint.py --shape 7b --out /tmp/bench-ckpt/7b [--skip-if-present]

The cost of a forward pass does not depend on the weights' values, so random N(0, 0.02) matrices
and biases with unit norm weights stand in for a real release. The folder holds config.json (the
keys of Qwen-7B's own, model_type "qwen"), generation_config.json (a base release's) and one
model.safetensors, and last a marker file, bench-checkpoint.json: a folder without it is
incomplete and gets rewritten.

Speed (7B is 15.4 GB): each tensor is drawn on the GPU with torch, copied to the host and written
straight into the file, whose safetensors header we write ourselves (8-byte little-endian header
length, the JSON header, then the raw tensors), so no whole-model copy is ever held in memory; a
writer thread overlaps the disk write of one tensor with drawing the next. Without CUDA it draws
on the CPU (torch, else numpy): fine for the `tiny` shape the harness is tested with.
"""
import argparse, json, os, shutil, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import SHAPES, parse_shape  # noqa: E402

MARKER = "bench-checkpoint.json"
STD = 0.02


def tensor_list(H, L, F, V, bits=None, G=None, **_):
    """(name, shape, kind[, dtype]) in SPEC 2's order; kind 'ones' for norm weights, else random.

    With bits (a GPTQ shape), the five linears of each layer become SPEC 4's qweight / qzeros /
    scales / g_idx / bias and the other tensors are fp16, as Qwen's Int4/Int8 releases store them.
    """
    if bits:
        return gptq_tensor_list(H, L, F, V, bits, G)
    out = [("transformer.wte.weight", [V, H], "rand")]
    for i in range(L):
        p = f"transformer.h.{i}."
        out += [
            (p + "ln_1.weight", [H], "ones"),
            (p + "attn.c_attn.weight", [3 * H, H], "rand"),
            (p + "attn.c_attn.bias", [3 * H], "rand"),
            (p + "attn.c_proj.weight", [H, H], "rand"),
            (p + "ln_2.weight", [H], "ones"),
            (p + "mlp.w1.weight", [F, H], "rand"),
            (p + "mlp.w2.weight", [F, H], "rand"),
            (p + "mlp.c_proj.weight", [H, F], "rand"),
        ]
    out += [("transformer.ln_f.weight", [H], "ones"), ("lm_head.weight", [V, H], "rand")]
    return out


def gptq_tensor_list(H, L, F, V, bits, G):
    P = 32 // bits
    zero_word = {4: 0x77777777, 8: 0x7F7F7F7F}[bits]  # sym: every stored zero is 2^(bits-1) - 1

    def linear(prefix, K, N):
        return [
            (prefix + ".qweight", [K // P, N], "rand_i32", "I32"),
            (prefix + ".qzeros", [K // G, N // P], ("const_i32", zero_word), "I32"),
            (prefix + ".scales", [K // G, N], "scale", "F16"),
            (prefix + ".g_idx", [K], ("gidx", G), "I32"),
            (prefix + ".bias", [N], "rand", "F16"),
        ]

    out = [("transformer.wte.weight", [V, H], "rand", "F16")]
    for i in range(L):
        p = f"transformer.h.{i}."
        out += [(p + "ln_1.weight", [H], "ones", "F16")] + linear(p + "attn.c_attn", H, 3 * H)
        out += linear(p + "attn.c_proj", H, H) + [(p + "ln_2.weight", [H], "ones", "F16")]
        out += linear(p + "mlp.w1", H, F) + linear(p + "mlp.w2", H, F) + linear(p + "mlp.c_proj", F, H)
    out += [("transformer.ln_f.weight", [H], "ones", "F16"), ("lm_head.weight", [V, H], "rand", "F16")]
    return out


def dtype_of(t):
    return t[3] if len(t) > 3 else "BF16"


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def safetensors_header(tensors):
    """The header bytes (length prefix included); data_offsets are relative to the data start."""
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        name, shape, dt = t[0], t[1], dtype_of(t)
        nb = (4 if dt == "I32" else 2) * numel(shape)
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)  # as the safetensors library does: the data starts 8-byte aligned
    return len(js).to_bytes(8, "little") + js, off


class Drawer:
    """Draws one tensor's bf16 bytes as a buffer: torch on CUDA when present, else torch/numpy CPU."""

    def __init__(self, seed, device):
        self.torch = None
        try:
            import torch
            self.torch = torch
        except ImportError:
            if device == "cuda":
                raise SystemExit("make_checkpoint: --device cuda needs torch")
        if self.torch is not None:
            t = self.torch
            self.dev = device or ("cuda" if t.cuda.is_available() else "cpu")
            self.gen = t.Generator(device=self.dev).manual_seed(seed)
        else:
            import numpy as np
            self.np, self.dev, self.rng = np, "cpu(numpy)", np.random.default_rng(seed)

    def draw(self, shape, kind, dtype="BF16"):
        if dtype != "BF16":
            return self.draw_gptq(shape, kind, dtype)
        if self.torch is not None:
            t = self.torch
            if kind == "ones":
                x = t.ones(shape, dtype=t.bfloat16, device=self.dev)
            else:
                x = t.randn(shape, dtype=t.bfloat16, device=self.dev, generator=self.gen).mul_(STD)
            host = x.view(t.int16).cpu()  # one device->host copy; the bits are bf16
            try:
                return host.numpy()  # a buffer f.write takes without another copy
            except Exception:  # torch built without numpy
                return bytes(host.untyped_storage())
        np = self.np
        f = np.ones(shape, np.float32) if kind == "ones" else self.rng.standard_normal(shape, np.float32) * STD
        b = f.view(np.uint32)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)  # fp32 -> bf16, round to nearest even


    def draw_gptq(self, shape, kind, dtype):
        """GPTQ-checkpoint tensors (torch only): int32 words, fp16 values."""
        t = self.torch
        if t is None:
            raise SystemExit("make_checkpoint: GPTQ shapes need torch")
        dev = self.dev
        if kind == "rand_i32":
            x = t.randint(-2**31, 2**31 - 1, shape, dtype=t.int32, device=dev, generator=self.gen)
        elif isinstance(kind, tuple) and kind[0] == "const_i32":
            x = t.full(shape, kind[1] - (1 << 32 if kind[1] >= 1 << 31 else 0), dtype=t.int32, device=dev)
        elif isinstance(kind, tuple) and kind[0] == "gidx":
            x = (t.arange(shape[0], dtype=t.int32, device=dev) // kind[1]).to(t.int32)
        elif kind == "scale":  # w = scale * (q - 2^(b-1)): std(q) ~ 4.6 for 4 bits, so ~0.004 gives std ~0.02
            x = (t.rand(shape, device=dev, generator=self.gen) * 0.004 + 0.002).to(t.float16)
        elif kind == "ones":
            x = t.ones(shape, dtype=t.float16, device=dev)
        else:
            x = (t.randn(shape, device=dev, generator=self.gen) * STD).to(t.float16)
        host = (x.view(t.int16) if x.dtype == t.float16 else x).cpu()
        return host.numpy()


def config_json(s):
    """Qwen-7B's config.json keys (SPEC 1), with this shape's dimensions."""
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "attn_dropout_prob": 0.0, "bf16": False, "emb_dropout_prob": 0.0, "fp16": False, "fp32": False,
        "hidden_size": s["H"],
        "intermediate_size": 2 * s["F"],  # Qwen v1 stores TWICE the MLP width
        "initializer_range": 0.02,
        "kv_channels": s["H"] // s["n"],
        "layer_norm_epsilon": 1e-06,
        "max_position_embeddings": 32768,
        "model_type": "qwen",
        "no_bias": True,
        "num_attention_heads": s["n"],
        "num_hidden_layers": s["L"],
        "onnx_safe": None,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": s["S"],
        "tie_word_embeddings": False,
        "tokenizer_class": "QWenTokenizer",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.32.0",
        "use_cache": True,
        "use_cache_quantization": False,
        "use_dynamic_ntk": True,
        "use_flash_attn": "auto",
        "use_logn_attn": True,
        "vocab_size": s["V"],
    }


GENERATION_CONFIG = {  # a base release's (Qwen-7B): raw format, eos 151643
    "chat_format": "raw", "eos_token_id": 151643, "pad_token_id": 151643, "stop_words_ids": [[151643]],
    "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.8, "transformers_version": "4.31.0",
}


def write_checkpoint(shape, out, seed=0, device=None):
    s = parse_shape(shape)
    tensors = tensor_list(**s)
    header, data_bytes = safetensors_header(tensors)
    os.makedirs(out, exist_ok=True)
    marker = os.path.join(out, MARKER)
    if os.path.exists(marker):
        os.remove(marker)  # the folder is incomplete until we write it again
    free = shutil.disk_usage(out).free
    if free < data_bytes + (1 << 30):
        raise SystemExit(f"make_checkpoint: {out}: {free / 1e9:.1f} GB free, {shape} needs {data_bytes / 1e9:.1f} GB")
    drawer = Drawer(seed, device)
    t0 = time.perf_counter()
    tmp = os.path.join(out, "model.safetensors.partial")
    # One writer thread, at most one tensor in flight: f.write releases the GIL, so the disk write
    # of tensor i overlaps drawing and copying tensor i+1 (host memory: two tensors at most).
    with open(tmp, "wb", buffering=0) as f:
        f.write(header)
        pending, err = None, []

        def write(buf):
            try:
                mv = memoryview(buf).cast("B")
                while len(mv):  # raw file writes may be partial
                    mv = mv[f.write(mv):]
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                err.append(e)

        for t in tensors:
            buf = drawer.draw(t[1], t[2], dtype_of(t))
            if pending:
                pending.join()
            if err:
                raise err[0]
            pending = threading.Thread(target=write, args=(buf,))
            pending.start()
        if pending:
            pending.join()
        if err:
            raise err[0]
    if os.path.getsize(tmp) != len(header) + data_bytes:
        raise SystemExit(f"make_checkpoint: {tmp}: wrote {os.path.getsize(tmp)} bytes, expected {len(header) + data_bytes}")
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    cfg = config_json(s)
    if s.get("bits"):
        cfg["torch_dtype"] = "float16"
        with open(os.path.join(out, "quantize_config.json"), "w") as f:
            json.dump({"bits": s["bits"], "group_size": s["G"], "desc_act": False, "sym": True,
                       "damp_percent": 0.01, "static_groups": False, "true_sequential": True}, f, indent=2)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
    secs = time.perf_counter() - t0
    info = {"shape": shape, "seed": seed, "bytes": len(header) + data_bytes, "tensors": len(tensors), "device": drawer.dev}
    with open(marker, "w") as f:  # last: its presence means the folder is complete
        json.dump(info, f)
    return secs, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", required=True, choices=list(SHAPES))
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cuda", "cpu"], help="where to draw the weights (default: cuda if present)")
    ap.add_argument("--skip-if-present", action="store_true", help="keep a complete folder of the same shape")
    a = ap.parse_args()
    marker = os.path.join(a.out, MARKER)
    if a.skip_if_present and os.path.exists(marker):
        try:
            if json.load(open(marker)).get("shape") == a.shape:
                print(f"make_checkpoint: {a.out} holds a complete {a.shape} checkpoint; kept", file=sys.stderr)
                print(json.dumps({"impl": "checkpoint", "shape": a.shape, "metric": "write_s", "value": 0.0, "skipped": True}))
                return
        except (OSError, ValueError):
            pass
    secs, info = write_checkpoint(a.shape, a.out, a.seed, a.device)
    print(f"make_checkpoint: {a.out}: {info['bytes'] / 1e9:.2f} GB in {secs:.1f} s "
          f"({info['bytes'] / 1e9 / secs:.2f} GB/s, drawn on {info['device']})", file=sys.stderr)
    print(json.dumps({"impl": "checkpoint", "shape": a.shape, "metric": "write_s", "value": round(secs, 2), **info}))


if __name__ == "__main__":
    main()
