// The weight map: every tensor of a Qwen v1 checkpoint (SPEC 2) bound to its place in the model,
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

struct LayerWeights {
  Tensor ln_1;        // [H]
  Linear c_attn;      // H -> 3H (q | k | v), with bias
  Linear attn_c_proj; // H -> H
  Tensor ln_2;        // [H]
  Linear w1;          // H -> F
  Linear w2;          // H -> F (silu applies to this one)
  Linear mlp_c_proj;  // F -> H
};

struct ModelWeights {
  Tensor wte;    // [V, H]
  std::vector<LayerWeights> layers;
  Tensor ln_f;   // [H]
  Linear lm_head;  // H -> V
};

// Binds and validates every tensor; throws Error naming the file, tensor, expected and found shape.
ModelWeights bind_weights(const Checkpoint& ck, const ModelConfig& cfg);

}  // namespace qwen
