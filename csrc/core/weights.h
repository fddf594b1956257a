// The weight map: every tensor of a Qwen v1 checkpoint (SPEC 2), or of a qwen2/qwen3 one (SPEC 10), bound to its place in the model,
// its shape and dtype checked against config.json. Tensors are views into the mapped files;
// backends copy or convert them at load.
#pragma once
#include <string>
#include <vector>

#include "config.h"
#include "safetensors.h"
#include "tensor.h"

namespace qwen {

// One linear layer y = x W^T + b, x [T, in] -> y [T, out].
struct Linear {
  int in = 0, out = 0;
  Tensor weight;  // dense [out, in] F32/BF16/F16; empty when GPTQ-quantized
  Tensor bias;    // [out], or empty
  // GPTQ (SPEC 4), K = in, N = out, P = 32 / bits:
  int bits = 0;         // 0 = dense
  int group_size = 0;   // rows per group (in when the config says -1)
  Tensor qweight;       // I32 [K/P, N]
  Tensor qzeros;        // I32 [K/G, N/P]
  Tensor scales;        // F16 [K/G, N]
  Tensor g_idx;         // I32 [K]
  bool quantized() const { return bits != 0; }
};

// The same slots serve every family. qwen2/qwen3 (SPEC 10) map onto them so that the v1 MLP code
// computes down(silu(gate(h)) * up(h)): up_proj -> w1, gate_proj -> w2, down_proj -> mlp_c_proj;
// input_layernorm -> ln_1, post_attention_layernorm -> ln_2, o_proj -> attn_c_proj (n*d -> H).
struct LayerWeights {
  Tensor ln_1;        // [H]
  Linear c_attn;      // H -> 3H (q | k | v), with bias (QwenV1 only; empty for qwen2/qwen3)
  Linear attn_c_proj; // H -> H (qwen2/qwen3: o_proj, n*d -> H)
  Tensor ln_2;        // [H]
  Linear w1;          // H -> F
  Linear w2;          // H -> F (silu applies to this one)
  Linear mlp_c_proj;  // F -> H
  // qwen2/qwen3 only (empty for QwenV1):
  Linear q_proj;      // H -> n*d
  Linear k_proj;      // H -> n_kv*d
  Linear v_proj;      // H -> n_kv*d
  Tensor q_norm;      // [d], qwen3: RMSNorm of each query head before rope
  Tensor k_norm;      // [d], qwen3: RMSNorm of each key head before rope
};

struct ModelWeights {
  Tensor wte;    // [V, H]  (qwen2/qwen3: model.embed_tokens)
  std::vector<LayerWeights> layers;
  Tensor ln_f;   // [H]     (qwen2/qwen3: model.norm)
  Linear lm_head;  // H -> V (wte when tied and the checkpoint has no lm_head.weight)
};

// Binds and validates every tensor; throws Error naming the file, tensor, expected and found shape.
ModelWeights bind_weights(const Checkpoint& ck, const ModelConfig& cfg);

}  // namespace qwen
