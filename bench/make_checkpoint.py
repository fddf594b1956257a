"""Writes a random checkpoint folder of a benchmark shape: Qwen v1 (SPEC 1-2) or qwen2 (SPEC 10),
bf16 or GPTQ (SPEC 4).

  python3 bench/make_checkpoint.py --shape 7b --out /tmp/bench-ckpt/7b [--skip-if-present]

The cost of a forward pass does not depend on the weights' values, so random N(0, 0.02) matrices
and biases with unit norm weights stand in for a real release. The folder holds config.json (the
keys of Qwen-7B's own, model_type "qwen"; or Qwen2.5-7B-Instruct's, model_type "qwen2", which
transformers' Qwen2ForCausalLM loads), generation_config.json (a base release's), for v1 GPTQ
quantize_config.json, and one model.safetensors, and last a marker file, bench-checkpoint.json: a
folder without it is incomplete and gets rewritten. No tokenizer files: the benchmark feeds ids,
and neither Model.load nor from_pretrained needs them.

Speed (7B is 15.4 GB, Qwen2.5-7B 15.2 GB): each tensor is drawn on the GPU with torch, copied to
the host and written straight into the file, whose safetensors header we write ourselves (8-byte
little-endian header length, the JSON header, then the raw tensors), so no whole-model copy is ever
held in memory; a writer thread overlaps the disk write of one tensor with drawing the next.
Without CUDA it draws on the CPU (torch, else numpy): fine for the `tiny` / `qwen2-tiny` shapes the
harness is tested with.
"""
import argparse, json, os, shutil, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import SHAPES, layer_linears, parse_shape  # noqa: E402

MARKER = "bench-checkpoint.json"
STD = 0.02


# Tensor names per arch: (embedding, layer prefix, norm before attention, norm before the MLP,
# final norm). lm_head.weight is the same in both.
NAMES = {
    "qwen": ("transformer.wte.weight", "transformer.h.{}.", "ln_1.weight", "ln_2.weight", "transformer.ln_f.weight"),
    "qwen2": ("model.embed_tokens.weight", "model.layers.{}.", "input_layernorm.weight", "post_attention_layernorm.weight",
              "model.norm.weight"),
}


def tensor_list(s):
    """(name, shape, kind, dtype) of shape dict s in the model's order; kind 'ones' for norm
    weights, else random. v1: SPEC 2's names; qwen2: SPEC 10's, as transformers' Qwen2ForCausalLM
    names its state dict.

    With bits (a GPTQ shape), each linear of a layer becomes SPEC 4's qweight / qzeros / scales /
    g_idx (and a bias where shapes.layer_linears says the release stores one) and the other tensors
    are fp16, as Qwen's Int4/Int8 releases store them.
    """
    H, L, V, bits, G = s["H"], s["L"], s["V"], s.get("bits"), s.get("G")
    wte, layer, ln_1, ln_2, ln_f = NAMES[s["arch"]]
    fdt = "F16" if bits else "BF16"
    P = 32 // bits if bits else 0
    zero_word = {4: 0x77777777, 8: 0x7F7F7F7F}.get(bits)  # sym: every stored zero is 2^(bits-1) - 1

    def linear(prefix, K, N, bias):
        if bits:
            out = [
                (prefix + ".qweight", [K // P, N], "rand_i32", "I32"),
                (prefix + ".qzeros", [K // G, N // P], ("const_i32", zero_word), "I32"),
                (prefix + ".scales", [K // G, N], "scale", "F16"),
                (prefix + ".g_idx", [K], ("gidx", G), "I32"),
            ]
        else:
            out = [(prefix + ".weight", [N, K], "rand", fdt)]
        return out + ([(prefix + ".bias", [N], "rand", fdt)] if bias else [])

    attn, mlp = layer_linears(**s)
    out = [(wte, [V, H], "rand", fdt)]
    for i in range(L):
        p = layer.format(i)
        out.append((p + ln_1, [H], "ones", fdt))
        for name, K, N, bias in attn:
            out += linear(p + name, K, N, bias)
        out.append((p + ln_2, [H], "ones", fdt))
        for name, K, N, bias in mlp:
            out += linear(p + name, K, N, bias)
    out += [(ln_f, [H], "ones", fdt), ("lm_head.weight", [V, H], "rand", fdt)]
    return out


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def safetensors_header(tensors):
    """The header bytes (length prefix included); data_offsets are relative to the data start."""
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        name, shape, _, dt = t
        nb = (4 if dt == "I32" else 2) * numel(shape)
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)  # as the safetensors library does: the data starts 8-byte aligned
    return len(js).to_bytes(8, "little") + js, off


class Drawer:
    """Draws one tensor's bytes (bf16; GPTQ's int32 and fp16) as a buffer: torch on CUDA when
    present, else torch/numpy on the CPU."""

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
        """GPTQ-checkpoint tensors: int32 words, fp16 values."""
        if self.torch is None:
            return self.draw_gptq_numpy(shape, kind)
        t = self.torch
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

    def draw_gptq_numpy(self, shape, kind):
        """draw_gptq's numpy twin (other random values: a different generator)."""
        np = self.np
        if kind == "rand_i32":
            x = self.rng.integers(-2**31, 2**31, shape, dtype=np.int32)
        elif isinstance(kind, tuple) and kind[0] == "const_i32":
            x = np.full(shape, kind[1], np.uint32).view(np.int32)
        elif isinstance(kind, tuple) and kind[0] == "gidx":
            x = (np.arange(shape[0]) // kind[1]).astype(np.int32)
        elif kind == "scale":
            x = (self.rng.random(shape, np.float32) * 0.004 + 0.002).astype(np.float16)
        elif kind == "ones":
            x = np.ones(shape, np.float16)
        else:
            x = (self.rng.standard_normal(shape, np.float32) * STD).astype(np.float16)
        return x.view(np.int16) if x.dtype == np.float16 else x


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


def qwen2_config_json(s):
    """Qwen2.5-7B-Instruct's config.json keys (SPEC 10), with this shape's dimensions and the base
    release's eos (151643, as in generation_config.json); a GPTQ shape adds the quantization_config
    of Qwen's -GPTQ-Int4 releases (as optimum writes it) and float16."""
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": s["H"],
        "initializer_range": 0.02,
        "intermediate_size": s["F"],  # the MLP width itself, unlike v1
        "max_position_embeddings": s["S"],
        "max_window_layers": s["L"],
        "model_type": "qwen2",
        "num_attention_heads": s["n"],
        "num_hidden_layers": s["L"],
        "num_key_value_heads": s["n_kv"],
        "rms_norm_eps": 1e-06,
        "rope_theta": s["theta"],
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": s["V"],
    }
    if s.get("bits"):
        cfg["torch_dtype"] = "float16"
        cfg["quantization_config"] = {
            "batch_size": 1, "bits": s["bits"], "block_name_to_quantize": None, "cache_block_outputs": True,
            "damp_percent": 0.01, "dataset": None, "desc_act": False, "exllama_config": {"version": 1},
            "group_size": s["G"], "max_input_length": None, "model_seqlen": None,
            "module_name_preceding_first_block": None, "modules_in_block_to_quantize": None, "pad_token_id": None,
            "quant_method": "gptq", "sym": True, "tokenizer": None, "true_sequential": True,
            "use_cuda_fp16": False, "use_exllama": True,
        }
    return cfg


GENERATION_CONFIG = {  # a base release's (Qwen-7B): raw format, eos 151643
    "chat_format": "raw", "eos_token_id": 151643, "pad_token_id": 151643, "stop_words_ids": [[151643]],
    "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.8, "transformers_version": "4.31.0",
}
# A base release's (Qwen2.5-7B), for every qwen2 shape: greedy, eos 151643, no repetition penalty
# (the Instruct releases' 1.05 would make complete() do work the v1 rows do not).
QWEN2_GENERATION_CONFIG = {
    "bos_token_id": 151643, "do_sample": False, "eos_token_id": 151643, "max_new_tokens": 2048,
    "transformers_version": "4.37.0",
}


def write_checkpoint(shape, out, seed=0, device=None):
    s = parse_shape(shape)
    tensors = tensor_list(s)
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
            buf = drawer.draw(t[1], t[2], t[3])
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
    if s["arch"] == "qwen2":
        cfg, gen = qwen2_config_json(s), QWEN2_GENERATION_CONFIG
    else:
        cfg, gen = config_json(s), GENERATION_CONFIG
        if s.get("bits"):  # v1's Int4/Int8 releases: AutoGPTQ's quantize_config.json
            cfg["torch_dtype"] = "float16"
            with open(os.path.join(out, "quantize_config.json"), "w") as f:
                json.dump({"bits": s["bits"], "group_size": s["G"], "desc_act": False, "sym": True,
                           "damp_percent": 0.01, "static_groups": False, "true_sequential": True}, f, indent=2)
    sort = s["arch"] == "qwen2"  # as transformers' save_pretrained writes them
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=sort)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2, sort_keys=sort)
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
