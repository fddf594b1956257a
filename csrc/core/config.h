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

struct ModelConfig {
  std::string model_type = "qwen";
  int vocab_size = 0;       // V (rows of wte / lm_head)
  int hidden_size = 0;      // H
  int num_layers = 0;       // L
  int num_heads = 0;        // n
  int head_dim = 0;         // d = kv_channels = H / n
  int ffn_size = 0;         // F = intermediate_size / 2
  float rms_eps = 1e-6f;
  double rope_base = 10000;
  float rotary_pct = 1.0f;
  int seq_length = 8192;    // S: training length for dynamic NTK and logn
  int max_position_embeddings = 8192;
  bool use_dynamic_ntk = true;
  bool use_logn_attn = true;
  bool no_bias = true;      // c_proj without bias
  bool tie_word_embeddings = false;
  bool use_cache_quantization = false;
  GptqConfig gptq;

  // Reads config.json (current and first-release key names) and quantize_config.json when
  // present in `dir`. Throws Error naming the file and the key at fault.
  static ModelConfig load(const std::string& dir);
  static ModelConfig from_json(const json::Value& v, const std::string& source);
};

}  // namespace qwen
