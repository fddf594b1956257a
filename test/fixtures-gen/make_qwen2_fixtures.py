"""Tiny qwen2 / qwen3 fixtures for qwen-native, computed by Hugging Face transformers' own
Qwen2ForCausalLM / Qwen3ForCausalLM (SPEC 10), in the style of ../shared/fixtures (see its README).

Weights are random (numpy, fixed seeds, scaled like reference/make_fixtures.py so that logits have
real margins), loaded into the transformers model and written with save_pretrained, so config.json,
generation_config.json and model.safetensors are exactly what transformers writes for such a model.
expected.json / expected.safetensors hold what that model computes in float32 on the CPU (eager
attention): prompt ids, greedy ids, teacher-forced logits per step, top-2 margins, and the logits of
every position of one prompt. Runs in a few seconds on a CPU (torch CPU build is enough).

usage:  python3 make_qwen2_fixtures.py OUTDIR        (the repo keeps its output in test/fixtures-qwen2)
needs:  torch, transformers (>= 4.51 for Qwen3), safetensors, numpy
"""
import copy, json, math, os, sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

OUT = sys.argv[1]
torch.set_num_threads(min(8, os.cpu_count() or 1))

# vocab, hidden, heads, kv heads, head_dim, layers, intermediate
COMMON = dict(vocab_size=1000, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
              intermediate_size=256, max_position_embeddings=4096, rms_norm_eps=1e-6, hidden_act="silu",
              use_cache=True,
              bos_token_id=151643, eos_token_id=151643)  # ids past this tiny vocab, as in the v1 fixtures
CASES = [(10, 40), (100, 12), (1, 6)]  # (prompt length, decode steps); a one-token prompt is the edge case
FIXTURES = [
    # name, family, storage dtype, seed, extra config
    # qwen2: head_dim = hidden / heads = 32, q/k/v biased, tied embeddings (as Qwen2.5-0.5B/1.5B/3B).
    ("tiny-qwen2-tied", "qwen2", torch.float32, 11, dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    # qwen3: explicit head_dim 64 (n * d = 256 != hidden 128, as in the real Qwen3 models), q/k norm,
    # no qkv bias, untied lm_head; stored BF16 (the reference runs the same bf16-rounded weights in fp32).
    ("tiny-qwen3-untied", "qwen3", torch.bfloat16, 12,
     dict(tie_word_embeddings=False, head_dim=64, rope_theta=1000000.0, attention_bias=False)),
    # qwen2 GPTQ int4 (AutoGPTQ "gptq" format as Qwen2/2.5 -GPTQ-Int4 releases: bits 4, group 128 here
    # 64 so both groups of a 128-wide input are exercised, sym, desc_act false), untied lm_head, fp16
    # embeddings/norms/lm_head; the reference runs the dequantized weights in fp32.
    ("tiny-qwen2-gptq-int4", "qwen2", "gptq", 13,
     dict(tie_word_embeddings=False, rope_theta=10000.0, _gptq=dict(bits=4, group_size=64, desc_act=False))),
]
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def gptq_quantize(W, bits, group):
    """W [N, K] float32 (torch Linear layout), sym, desc_act false: the packed tensors and the
    dequantized W (as reference/make_fixtures.py; stored zero = zero - 1)."""
    N, K = W.shape
    maxq = 2 ** bits - 1
    Wt = W.T.copy()
    g_idx = (np.arange(K) // group).astype(np.int32)
    G = K // group
    scales = np.zeros((G, N), np.float32); zeros = np.zeros((G, N), np.int64); q = np.zeros((K, N), np.int64)
    for g in range(G):
        rows = np.where(g_idx == g)[0]
        amax = np.abs(Wt[rows]).max(axis=0) + 1e-8
        sc = (2 * amax / maxq).astype(np.float16).astype(np.float32)
        z = np.full(N, (maxq + 1) // 2, np.int64)
        q[rows] = np.clip(np.round(Wt[rows] / sc) + z, 0, maxq)
        scales[g] = sc; zeros[g] = z
    per = 32 // bits
    qweight = np.zeros((K // per, N), np.uint32)
    for j in range(per): qweight |= (q[j::per].astype(np.uint32) << np.uint32(bits * j))
    qzeros = np.zeros((G, N // per), np.uint32); zs = (zeros - 1).astype(np.uint32)
    for j in range(per): qzeros |= (zs[:, j::per] << np.uint32(bits * j))
    deq = scales[g_idx] * (q - zeros[g_idx])
    packed = {"qweight": torch.from_numpy(qweight.view(np.int32)), "qzeros": torch.from_numpy(qzeros.view(np.int32)),
              "scales": torch.from_numpy(scales).half(), "g_idx": torch.from_numpy(g_idx)}
    return packed, torch.from_numpy(deq.T.astype(np.float32).copy())


def save_gptq(m, d, q):
    """Writes m as an AutoGPTQ checkpoint and puts the weights it stores (dequantized) back into m."""
    files = {}
    sd = m.state_dict()
    with torch.no_grad():
        for i in range(m.config.num_hidden_layers):
            for lin in LINEARS:
                base = f"model.layers.{i}.{lin}"
                packed, deq = gptq_quantize(sd[base + ".weight"].numpy(), q["bits"], q["group_size"])
                for k, v in packed.items(): files[f"{base}.{k}"] = v
                mod = m.get_submodule(base)
                mod.weight.copy_(deq)
                # AutoGPTQ's QuantLinear always has a bias: the float one rounded, else zeros.
                b = mod.bias.detach().half() if mod.bias is not None else torch.zeros(mod.out_features, dtype=torch.float16)
                files[base + ".bias"] = b
                if mod.bias is not None: mod.bias.copy_(b.float())
        for k, v in m.state_dict().items():
            if any(f".{lin}." in k for lin in LINEARS): continue
            files[k] = v.half().contiguous()
            v.copy_(files[k].float())
    save_file(files, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    m.config.save_pretrained(d)
    m.generation_config.save_pretrained(d)
    conf = json.load(open(os.path.join(d, "config.json")))
    qc = {"bits": q["bits"], "group_size": q["group_size"], "damp_percent": 0.01, "desc_act": q["desc_act"],
          "static_groups": False, "sym": True, "true_sequential": True, "model_name_or_path": None,
          "model_file_base_name": "model"}
    conf["quantization_config"] = dict(qc, quant_method="gptq")
    conf["dtype"] = "float16"
    conf["architectures"] = [type(m).__name__]
    json.dump(conf, open(os.path.join(d, "config.json"), "w"), indent=2, sort_keys=True)
    json.dump(qc, open(os.path.join(d, "quantize_config.json"), "w"), indent=2)


def random_state(model, seed):
    """numpy-drawn weights for every parameter, scaled like reference/make_fixtures.py."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, p in model.state_dict().items():
        shape = tuple(p.shape)
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            a = 1 + rng.standard_normal(shape) * 0.1
        elif name.endswith(".bias"):
            a = rng.standard_normal(shape) * 0.1
        elif name == "model.embed_tokens.weight":
            # tied: this is also the output matrix, so keep it modest; untied: unit variance as v1
            a = rng.standard_normal(shape) * (1 / math.sqrt(shape[1]) * 4 if model.config.tie_word_embeddings else 1.0)
        else:  # [out, in] linears and lm_head
            a = rng.standard_normal(shape) / math.sqrt(shape[1])
        sd[name] = torch.from_numpy(a.astype(np.float32))
    return sd


def build(family, seed, extra):
    cls_cfg, cls_model = (Qwen2Config, Qwen2ForCausalLM) if family == "qwen2" else (Qwen3Config, Qwen3ForCausalLM)
    cfg = cls_cfg(**COMMON, **{k: v for k, v in extra.items() if not k.startswith("_")})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    m = cls_model(cfg).float().eval()
    sd = random_state(m, seed)
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(k == "lm_head.weight" for k in missing), missing
    if cfg.tie_word_embeddings:
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    return m


@torch.no_grad()
def run_case(m, prompt, steps):
    out = m(torch.tensor([prompt]), use_cache=True)
    past = out.past_key_values
    logits = [out.logits[0, -1].clone()]
    toks = []
    for s in range(steps):
        t = int(torch.argmax(logits[-1]))
        toks.append(t)
        if s == steps - 1:
            break
        out = m(torch.tensor([[t]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits.append(out.logits[0, -1].clone())
    return toks, torch.stack(logits)


def margins(L):
    t = torch.topk(L, 2, dim=-1).values
    return (t[:, 0] - t[:, 1]).tolist()


for name, family, dtype, seed, extra in FIXTURES:
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    m = build(family, seed, extra)
    # Save in the storage dtype, then run the reference on exactly the stored values, in fp32.
    if dtype == "gptq":
        save_gptq(m, d, extra["_gptq"])
    else:
        copy.deepcopy(m).to(dtype).save_pretrained(d, safe_serialization=True)
        # Round the parameters only: m.to(bf16) would also round the rotary inv_freq buffer.
        with torch.no_grad():
            for p in m.parameters(): p.copy_(p.to(dtype).float())
    rng = np.random.default_rng(seed + 2000)
    meta = {"generator": "test/fixtures-gen/make_qwen2_fixtures.py", "transformers_version": transformers.__version__,
            "torch_version": torch.__version__, "model_class": type(m).__name__, "stored_dtype": str(dtype).split(".")[-1],
            "config": {k: v for k, v in extra.items() if not k.startswith("_")},
            "cases": []}
    tens = {}
    for ci, (plen, steps) in enumerate(CASES):
        prompt = [int(x) for x in rng.integers(0, COMMON["vocab_size"], plen)]
        toks, L = run_case(m, prompt, steps)
        meta["cases"].append({"name": f"case{ci}", "prompt": prompt, "greedy": toks, "top2_margin": margins(L)})
        tens[f"case{ci}.logits"] = L
    pa = [int(x) for x in rng.integers(0, COMMON["vocab_size"], 24)]
    with torch.no_grad():
        tens["all_positions.logits"] = m(torch.tensor([pa]), use_cache=False).logits[0].clone()
    meta["all_positions_prompt"] = pa
    save_file({k: v.contiguous().float() for k, v in tens.items()}, os.path.join(d, "expected.safetensors"))
    json.dump(meta, open(os.path.join(d, "expected.json"), "w"), indent=1)
    print("wrote", d, "min margin", min(min(c["top2_margin"]) for c in meta["cases"]), flush=True)
