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
  // Greedy step without the logits copy (Backend::forward_argmax), validated as forward. Returns
  // false, with the cache unchanged, when the backend does not implement it (then call forward).
  bool forward_argmax(KvCache& cache, const int32_t* ids, int n, int32_t* token_out);

 private:
  // The one validation + bookkeeping path of forward and forward_argmax: `run` calls the backend
  // and returns whether it did the step (the cache advances only then).
  template <typename Run> bool step(KvCache& cache, const int32_t* ids, int n, Run run);
  ModelConfig cfg_;
  std::unique_ptr<Checkpoint> checkpoint_;
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  int context_length_ = 0;
  std::mutex mu_;
};

}  // namespace qwen
