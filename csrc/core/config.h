// The model's dimensions and switches, read from config.json (SPEC 1), plus the GPTQ settings
// (quantize_config.json or config.json's quantization_config, SPEC 4).
#pragma once
#include <string>

#include "json.h"

namespace qwen {

struct GptqConfig {
  int bits = 0;         // 0: not quantized; else 4 or 8
  int group_size = 0;   // -1 = one group over all input rows
  bool desc_act = false;
  bool sym = true;
};

// Which block layout and rotary/attention rules apply (SPEC 3 for QwenV1, SPEC 10 for the others).
enum class ModelFamily {
  QwenV1,  // model_type "qwen": fused c_attn, dynamic NTK, logn, w1/w2/c_proj MLP
  Qwen2,   // model_type "qwen2" (Qwen1.5, Qwen2, Qwen2.5): q/k/v with bias, GQA, gate/up/down, rope_theta
  Qwen3,   // model_type "qwen3": Qwen2 plus per-head q/k RMSNorm, no qkv bias, explicit head_dim
};
const char* family_name(ModelFamily f);
// The model_type values we load, for error messages.
extern const char* const kSupportedModelTypes;

struct ModelConfig {
  std::string model_type = "qwen";
  ModelFamily family = ModelFamily::QwenV1;
  int vocab_size = 0;       // V (rows of wte / lm_head)
  int hidden_size = 0;      // H
  int num_layers = 0;       // L
  int num_heads = 0;        // n (query heads)
  int num_kv_heads = 0;     // n_kv: KV heads (= n for QwenV1; num_key_value_heads for qwen2/qwen3)
  int head_dim = 0;         // d = kv_channels = H / n (v1); qwen3 sets it explicitly (n * d need not be H)
  int ffn_size = 0;         // F = intermediate_size / 2 (v1); intermediate_size (qwen2/qwen3)
  float rms_eps = 1e-6f;
  double rope_base = 10000;  // rotary_emb_base (v1) or rope_theta / rope_parameters.rope_theta
  float rotary_pct = 1.0f;
  int seq_length = 8192;    // S: training length for dynamic NTK and logn
  int max_position_embeddings = 8192;
  bool use_dynamic_ntk = true;
  bool use_logn_attn = true;
  bool no_bias = true;      // c_proj without bias (v1)
  bool attention_bias = true;  // qwen2: q/k/v always biased; qwen3: config's attention_bias (also on o_proj)
  bool tie_word_embeddings = false;
  bool use_cache_quantization = false;
  GptqConfig gptq;

  int q_size() const { return num_heads * head_dim; }      // width of q (and of the attention output)
  int kv_size() const { return num_kv_heads * head_dim; }  // width of k and of v

  // Reads config.json (current and first-release key names) and quantize_config.json when
  // present in `dir`. Throws Error naming the file and the key at fault.
  static ModelConfig load(const std::string& dir);
  static ModelConfig from_json(const json::Value& v, const std::string& source);
};

}  // namespace qwen
