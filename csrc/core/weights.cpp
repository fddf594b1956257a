#include "weights.h"

#include "error.h"

namespace qwen {

namespace {

struct Binder {
  const Checkpoint& ck;
  const ModelConfig& cfg;

  const Tensor& tensor(const std::string& name, std::vector<int64_t> shape, bool is_float = true) {
    const Tensor& t = ck.get(name);
    if (t.shape != shape)
      throw Error(ck.file_of(name) + ": tensor " + name + " has shape " + shape_str(t.shape) + ", config.json implies " +
                  shape_str(shape));
    if (is_float && t.dtype == DType::I32)
      throw Error(ck.file_of(name) + ": tensor " + name + " has dtype I32, expected F32, BF16 or F16");
    return t;
  }

  Linear linear(const std::string& prefix, int in, int out, bool bias) {
    Linear l;
    l.in = in;
    l.out = out;
    std::string bname = prefix + ".bias";
    if (cfg.gptq.bits && prefix != "lm_head") {
      const GptqConfig& g = cfg.gptq;
      int P = 32 / g.bits;
      int G = g.group_size == -1 ? in : g.group_size;
      if (in % P != 0 || out % P != 0 || in % G != 0)
        throw Error(ck.dir() + ": " + prefix + " [" + std::to_string(out) + " x " + std::to_string(in) +
                    "] cannot be GPTQ-packed with bits " + std::to_string(g.bits) + " and group_size " +
                    std::to_string(g.group_size));
      l.bits = g.bits;
      l.group_size = G;
      auto get_i32 = [&](const std::string& n, std::vector<int64_t> shape) {
        const Tensor& t = ck.get(n);
        if (t.dtype != DType::I32) throw Error(ck.file_of(n) + ": tensor " + n + " must be I32, found " + dtype_name(t.dtype));
        if (t.shape != shape)
          throw Error(ck.file_of(n) + ": tensor " + n + " has shape " + shape_str(t.shape) + ", expected " + shape_str(shape) +
                      " for bits " + std::to_string(g.bits) + ", group_size " + std::to_string(g.group_size));
        return t;
      };
      l.qweight = get_i32(prefix + ".qweight", {in / P, out});
      l.qzeros = get_i32(prefix + ".qzeros", {in / G, out / P});
      l.scales = tensor(prefix + ".scales", {in / G, out});
      l.g_idx = ck.find(prefix + ".g_idx") ? get_i32(prefix + ".g_idx", {in}) : Tensor{};
      if (!l.g_idx.empty()) {
        const int32_t* gi = static_cast<const int32_t*>(l.g_idx.data);
        for (int k = 0; k < in; k++)
          if (gi[k] < 0 || gi[k] >= in / G)
            throw Error(ck.file_of(prefix + ".g_idx") + ": tensor " + prefix + ".g_idx[" + std::to_string(k) + "] = " +
                        std::to_string(gi[k]) + " is out of range [0, " + std::to_string(in / G) + ")");
      }
      if (ck.find(bname)) l.bias = tensor(bname, {out});
      return l;
    }
    l.weight = tensor(prefix + ".weight", {out, in});
    if (bias) l.bias = tensor(bname, {out});
    else if (ck.find(bname)) l.bias = tensor(bname, {out});
    return l;
  }
};

}  // namespace

namespace {

// SPEC 10: model.embed_tokens, model.layers.{i}.*, model.norm, lm_head (absent when tied).
// lm_head.weight, or wte itself when the embeddings are tied and the file has no lm_head.
Linear lm_head(Binder& b, const Checkpoint& ck, const ModelConfig& cfg, const Tensor& wte) {
  if (cfg.tie_word_embeddings && !ck.find("lm_head.weight")) {
    Linear l;
    l.in = cfg.hidden_size;
    l.out = cfg.vocab_size;
    l.weight = wte;
    return l;
  }
  return b.linear("lm_head", cfg.hidden_size, cfg.vocab_size, false);
}

ModelWeights bind_qwen2(Binder& b, const Checkpoint& ck, const ModelConfig& cfg) {
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size, F = cfg.ffn_size, d = cfg.head_dim;
  const int Q = cfg.q_size(), KV = cfg.kv_size();
  const bool q3 = cfg.family == ModelFamily::Qwen3;
  ModelWeights w;
  w.wte = b.tensor("model.embed_tokens.weight", {V, H});
  for (int i = 0; i < cfg.num_layers; i++) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.ln_1 = b.tensor(p + "input_layernorm.weight", {H});
    l.q_proj = b.linear(p + "self_attn.q_proj", int(H), Q, cfg.attention_bias);
    l.k_proj = b.linear(p + "self_attn.k_proj", int(H), KV, cfg.attention_bias);
    l.v_proj = b.linear(p + "self_attn.v_proj", int(H), KV, cfg.attention_bias);
    l.attn_c_proj = b.linear(p + "self_attn.o_proj", Q, int(H), !cfg.no_bias);
    if (q3) {
      l.q_norm = b.tensor(p + "self_attn.q_norm.weight", {d});
      l.k_norm = b.tensor(p + "self_attn.k_norm.weight", {d});
    }
    l.ln_2 = b.tensor(p + "post_attention_layernorm.weight", {H});
    l.w1 = b.linear(p + "mlp.up_proj", int(H), int(F), false);
    l.w2 = b.linear(p + "mlp.gate_proj", int(H), int(F), false);
    l.mlp_c_proj = b.linear(p + "mlp.down_proj", int(F), int(H), false);
    w.layers.push_back(std::move(l));
  }
  w.ln_f = b.tensor("model.norm.weight", {H});
  w.lm_head = lm_head(b, ck, cfg, w.wte);
  return w;
}

}  // namespace

ModelWeights bind_weights(const Checkpoint& ck, const ModelConfig& cfg) {
  Binder b{ck, cfg};
  if (cfg.family != ModelFamily::QwenV1) return bind_qwen2(b, ck, cfg);
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size, F = cfg.ffn_size;
  ModelWeights w;
  w.wte = b.tensor("transformer.wte.weight", {V, H});
  for (int i = 0; i < cfg.num_layers; i++) {
    std::string p = "transformer.h." + std::to_string(i) + ".";
    LayerWeights l;
    l.ln_1 = b.tensor(p + "ln_1.weight", {H});
    l.c_attn = b.linear(p + "attn.c_attn", int(H), int(3 * H), true);
    l.attn_c_proj = b.linear(p + "attn.c_proj", int(H), int(H), !cfg.no_bias);
    l.ln_2 = b.tensor(p + "ln_2.weight", {H});
    l.w1 = b.linear(p + "mlp.w1", int(H), int(F), false);
    l.w2 = b.linear(p + "mlp.w2", int(H), int(F), false);
    l.mlp_c_proj = b.linear(p + "mlp.c_proj", int(F), int(H), false);
    w.layers.push_back(std::move(l));
  }
  w.ln_f = b.tensor("transformer.ln_f.weight", {H});
  w.lm_head = lm_head(b, ck, cfg, w.wte);
  return w;
}

}  // namespace qwen
