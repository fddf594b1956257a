#include "config.h"

#include <cmath>
#include <sys/stat.h>

#include "error.h"

namespace qwen {

namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The first of `keys` present in `v` (current spelling first, then the first release's).
const json::Value* find_any(const json::Value& v, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (const json::Value* x = v.find(k); x && !x->is_null()) return x;
  return nullptr;
}

int get_int(const json::Value& v, const std::string& src, std::initializer_list<const char*> keys,
            bool required, int fallback) {
  const json::Value* x = find_any(v, keys);
  if (!x) {
    if (required) throw Error(src + ": missing required key \"" + *keys.begin() + "\"");
    return fallback;
  }
  if (!x->is_number() || x->number != std::floor(x->number) || std::fabs(x->number) > 2e9)
    throw Error(src + ": key \"" + *keys.begin() + "\" must be an integer");
  return int(x->number);
}

double get_num(const json::Value& v, const std::string& src, std::initializer_list<const char*> keys,
               double fallback) {
  const json::Value* x = find_any(v, keys);
  if (!x) return fallback;
  if (!x->is_number()) throw Error(src + ": key \"" + *keys.begin() + "\" must be a number");
  return x->number;
}

bool get_bool(const json::Value& v, const std::string& src, const char* key, bool fallback) {
  const json::Value* x = v.find(key);
  if (!x || x->is_null()) return fallback;
  if (!x->is_bool()) throw Error(src + ": key \"" + key + "\" must be true or false");
  return x->boolean;
}

GptqConfig gptq_from_json(const json::Value& q, const std::string& src) {
  GptqConfig g;
  const json::Value* method = q.find("quant_method");
  if (method && method->is_string() && method->string != "gptq")
    throw Error(src + ": quantization method \"" + method->string +
                "\" is not supported (supported: gptq with bits 4 or 8, sym true)");
  g.bits = get_int(q, src, {"bits"}, true, 0);
  g.group_size = get_int(q, src, {"group_size"}, false, 128);
  g.desc_act = get_bool(q, src, "desc_act", false);
  g.sym = get_bool(q, src, "sym", true);
  if (g.bits != 4 && g.bits != 8)
    throw Error(src + ": GPTQ bits " + std::to_string(g.bits) + " is not supported (supported: 4, 8)");
  if (g.group_size == 0 || g.group_size < -1)
    throw Error(src + ": GPTQ group_size " + std::to_string(g.group_size) +
                " is not valid (a positive size, or -1 for one group)");
  if (!g.sym)
    throw Error(src + ": asymmetric GPTQ (sym false) is not supported (supported: sym true)");
  return g;
}

}  // namespace

const char* const kSupportedModelTypes =
    "\"qwen\" (Qwen-1.8B/7B/14B/72B and their Chat/Int4/Int8 releases), "
    "\"qwen2\" (Qwen1.5, Qwen2, Qwen2.5), \"qwen3\" (Qwen3 dense)";

const char* family_name(ModelFamily f) {
  switch (f) {
    case ModelFamily::QwenV1: return "qwen";
    case ModelFamily::Qwen2: return "qwen2";
    case ModelFamily::Qwen3: return "qwen3";
  }
  return "?";
}

namespace {

// SPEC 10: Qwen1.5 / Qwen2 / Qwen2.5 ("qwen2") and Qwen3 ("qwen3"), as Hugging Face transformers
// writes their config.json (rope_theta at the top level, or rope_parameters.rope_theta in
// configs saved by transformers 5).
void qwen2_from_json(ModelConfig& c, const json::Value& v, const std::string& src) {
  const bool q3 = c.family == ModelFamily::Qwen3;
  c.vocab_size = get_int(v, src, {"vocab_size"}, true, 0);
  c.hidden_size = get_int(v, src, {"hidden_size"}, true, 0);
  c.num_layers = get_int(v, src, {"num_hidden_layers"}, true, 0);
  c.num_heads = get_int(v, src, {"num_attention_heads"}, true, 0);
  c.ffn_size = get_int(v, src, {"intermediate_size"}, true, 0);
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.vocab_size <= 0 || c.ffn_size <= 0)
    throw Error(src + ": dimensions must be positive");
  c.num_kv_heads = get_int(v, src, {"num_key_value_heads"}, false, c.num_heads);
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0)
    throw Error(src + ": num_key_value_heads " + std::to_string(c.num_kv_heads) +
                " must be positive and divide num_attention_heads " + std::to_string(c.num_heads));
  // Qwen2 derives head_dim from hidden/heads unless the file says otherwise; Qwen3Config defaults to 128.
  if (!q3 && c.hidden_size % c.num_heads != 0 && !v.find("head_dim"))
    throw Error(src + ": hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
                std::to_string(c.num_heads) + " and no head_dim is given");
  c.head_dim = get_int(v, src, {"head_dim"}, false, q3 ? 128 : c.hidden_size / c.num_heads);
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) throw Error(src + ": head_dim must be positive and even for rotary embedding");
  c.rms_eps = float(get_num(v, src, {"rms_norm_eps"}, 1e-6));
  double theta = get_num(v, src, {"rope_theta"}, 10000);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    const json::Value* rp = v.find(key);
    if (!rp || rp->is_null()) continue;
    if (!rp->is_object()) throw Error(src + ": key \"" + std::string(key) + "\" must be an object or null");
    const json::Value* type = find_any(*rp, {"rope_type", "type"});
    if (type && !(type->is_string() && type->string == "default"))
      throw Error(src + ": " + key + " type " + (type->is_string() ? "\"" + type->string + "\"" : std::string("(not a string)")) +
                  " is not supported (supported: the default rotary embedding with rope_theta)");
    if (const json::Value* t = rp->find("rope_theta"); t && !t->is_null()) theta = get_num(*rp, src, {"rope_theta"}, theta);
  }
  if (!(theta > 0)) throw Error(src + ": rope_theta must be positive");
  c.rope_base = theta;
  if (get_bool(v, src, "use_sliding_window", false))
    throw Error(src + ": use_sliding_window true is not supported (supported: full attention, use_sliding_window false)");
  if (const json::Value* lt = v.find("layer_types"); lt && lt->is_array())
    for (const json::Value& t : lt->array)
      if (!t.is_string() || t.string != "full_attention")
        throw Error(src + ": layer_types entry " + (t.is_string() ? "\"" + t.string + "\"" : std::string("(not a string)")) +
                    " is not supported (supported: full_attention)");
  if (const json::Value* act = v.find("hidden_act"); act && act->is_string() && act->string != "silu")
    throw Error(src + ": hidden_act \"" + act->string + "\" is not supported (supported: silu)");
  c.max_position_embeddings = get_int(v, src, {"max_position_embeddings"}, false, 32768);
  if (c.max_position_embeddings < 1) throw Error(src + ": max_position_embeddings must be positive");
  c.seq_length = c.max_position_embeddings;  // the default context length; no NTK/logn here
  c.use_dynamic_ntk = false;
  c.use_logn_attn = false;
  c.attention_bias = q3 ? get_bool(v, src, "attention_bias", false) : true;
  c.no_bias = !(q3 && c.attention_bias);  // o_proj: biased only in a qwen3 with attention_bias
  c.tie_word_embeddings = get_bool(v, src, "tie_word_embeddings", false);
  c.use_cache_quantization = false;
  if (const json::Value* q = v.find("quantization_config"); q && q->is_object())
    c.gptq = gptq_from_json(*q, src + " (quantization_config)");
}

}  // namespace

ModelConfig ModelConfig::from_json(const json::Value& v, const std::string& src) {
  if (!v.is_object()) throw Error(src + ": expected a JSON object");
  ModelConfig c;
  if (const json::Value* mt = v.find("model_type"); mt && mt->is_string()) c.model_type = mt->string;
  if (c.model_type == "qwen2" || c.model_type == "qwen3") {
    c.family = c.model_type == "qwen2" ? ModelFamily::Qwen2 : ModelFamily::Qwen3;
    qwen2_from_json(c, v, src);
    return c;
  }
  if (c.model_type != "qwen")
    throw Error(src + ": model_type \"" + c.model_type + "\" is not supported (supported: " + kSupportedModelTypes + ")");
  c.family = ModelFamily::QwenV1;
  c.vocab_size = get_int(v, src, {"vocab_size", "padded_vocab_size"}, true, 0);
  c.hidden_size = get_int(v, src, {"hidden_size", "n_embd"}, true, 0);
  c.num_layers = get_int(v, src, {"num_hidden_layers", "n_layer"}, true, 0);
  c.num_heads = get_int(v, src, {"num_attention_heads", "n_head"}, true, 0);
  int inter = get_int(v, src, {"intermediate_size", "ffn_hidden_size"}, true, 0);
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.vocab_size <= 0 || inter <= 0)
    throw Error(src + ": dimensions must be positive");
  if (c.hidden_size % c.num_heads != 0)
    throw Error(src + ": hidden_size " + std::to_string(c.hidden_size) +
                " is not a multiple of num_attention_heads " + std::to_string(c.num_heads));
  c.head_dim = get_int(v, src, {"kv_channels"}, false, c.hidden_size / c.num_heads);
  if (c.head_dim * c.num_heads != c.hidden_size)
    throw Error(src + ": kv_channels " + std::to_string(c.head_dim) + " x num_attention_heads " +
                std::to_string(c.num_heads) + " != hidden_size " + std::to_string(c.hidden_size));
  if (c.head_dim % 2 != 0) throw Error(src + ": kv_channels must be even for rotary embedding");
  if (inter % 2 != 0) throw Error(src + ": intermediate_size must be even (it is twice the MLP width)");
  c.ffn_size = inter / 2;
  c.num_kv_heads = c.num_heads;
  c.rms_eps = float(get_num(v, src, {"layer_norm_epsilon"}, 1e-6));
  c.rope_base = get_num(v, src, {"rotary_emb_base"}, 10000);
  c.rotary_pct = float(get_num(v, src, {"rotary_pct"}, 1.0));
  if (c.rotary_pct != 1.0f)
    throw Error(src + ": rotary_pct " + std::to_string(c.rotary_pct) + " is not supported (supported: 1.0)");
  c.seq_length = get_int(v, src, {"seq_length"}, false, 8192);
  if (c.seq_length < 2) throw Error(src + ": seq_length must be at least 2");
  c.max_position_embeddings = get_int(v, src, {"max_position_embeddings"}, false, c.seq_length);
  c.use_dynamic_ntk = get_bool(v, src, "use_dynamic_ntk", true);
  c.use_logn_attn = get_bool(v, src, "use_logn_attn", true);
  c.no_bias = get_bool(v, src, "no_bias", true);
  c.tie_word_embeddings = get_bool(v, src, "tie_word_embeddings", false);
  c.use_cache_quantization = get_bool(v, src, "use_cache_quantization", false);
  if (const json::Value* q = v.find("quantization_config"); q && q->is_object())
    c.gptq = gptq_from_json(*q, src + " (quantization_config)");
  return c;
}

ModelConfig ModelConfig::load(const std::string& dir) {
  std::string path = dir + "/config.json";
  if (!file_exists(path)) throw Error(path + ": not found (a Qwen checkpoint folder holds config.json)");
  ModelConfig c = from_json(json::parse_file(path), path);
  std::string qpath = dir + "/quantize_config.json";
  if (file_exists(qpath)) c.gptq = gptq_from_json(json::parse_file(qpath), qpath);
  return c;
}

}  // namespace qwen
