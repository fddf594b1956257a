// A loaded model: config, mapped checkpoint, bound weights and the backend running them.
// forward() is the one entry for every caller (eval, generate): it validates the ids and the
// cache room, fixes the NTK alpha at prefill, and serializes calls on the backend.
#pragma once
#include <memory>
#include <mutex>
#include <string>

#include "backend.h"
#include "config.h"
#include "safetensors.h"
#include "weights.h"

namespace qwen {

struct LoadOptions {
  std::string device = "cpu";  // "cpu" | "cuda"
  std::string kv_cache = "auto";  // "auto" (config.json's use_cache_quantization) | "float" | "int8"
  BackendOptions backend;
  int context_length = 0;      // 0 = config's seq_length
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opt, const ProgressFn& progress);

  const ModelConfig& config() const { return cfg_; }
  int context_length() const { return context_length_; }
  Backend& backend() { return *backend_; }
  std::unique_ptr<KvCache> new_cache();

  // Throws Error for ids outside [0, vocab) or past the context; the cache is unchanged then.
  void forward(KvCache& cache, const int32_t* ids, int n, float* logits, bool all_logits);

 private:
  ModelConfig cfg_;
  std::unique_ptr<Checkpoint> checkpoint_;
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  int context_length_ = 0;
  std::mutex mu_;
};

}  // namespace qwen
