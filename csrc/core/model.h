// A loaded model: config, mapped checkpoint, bound weights and the backend running them.
// forward() is the one entry for every caller (eval, generate): it validates the ids and the
// cache room, fixes the NTK alpha at prefill, and serializes calls on the backend.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "config.h"
#include "safetensors.h"
#include "weights.h"

namespace qwen {

class Engine;

struct LoadOptions {
  std::string device = "cpu";  // "cpu" | "cuda"
  std::string kv_cache = "auto";  // "auto" (config.json's use_cache_quantization) | "float" | "int8"
  BackendOptions backend;
  int context_length = 0;      // 0 = config's seq_length
  // The generation scheduler (engine.h): sequences decoded together in one batch at most, and
  // requests that may wait for a place in it before a submit is refused ("queue is full").
  int max_batch = 16;
  int max_queue = 64;
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::string& dir, const LoadOptions& opt, const ProgressFn& progress);
  ~Model();  // stops and joins the engine's thread first (never call it on that thread)

  const ModelConfig& config() const { return cfg_; }
  int context_length() const { return context_length_; }
  Backend& backend() { return *backend_; }
  // A cache that may hold min(limit, contextLength) positions (limit <= 0: contextLength), with
  // pages (Backend: kKvPage positions each) for `initial` positions now (at least one page) and
  // more added as forward / forward_batch need them. A sequence holds memory for what it uses,
  // never for all it may use, and growing copies nothing.
  std::unique_ptr<KvCache> new_cache(int limit = 0, int initial = 0);

  // Throws Error for ids outside [0, vocab) or past the context; the cache is unchanged then.
  void forward(KvCache& cache, const int32_t* ids, int n, float* logits, bool all_logits);
  // Greedy step without the logits copy (Backend::forward_argmax), validated as forward. Returns
  // false, with the cache unchanged, when the backend does not implement it (then call forward).
  bool forward_argmax(KvCache& cache, const int32_t* ids, int n, int32_t* token_out);
  // One step of several sequences (Backend::forward_batch), each item's cache distinct: validated
  // as forward (all of them before any runs: on an error no cache has changed), serialized with
  // forward, and every cache advanced by its item's n.
  void forward_batch(std::vector<BatchItem>& items);
  // Adds pages now if n more positions (up to its limit) do not fit; forward and
  // forward_batch do it themselves, the Engine calls it per sequence first so that a failed
  // allocation (an Error; the cache unchanged) ends one generation, not a whole step.
  void make_room(KvCache& cache, int n);
  // The checks of forward: throws the same Error for n = 0, ids out of range or no room left.
  void validate(const KvCache& cache, const int32_t* ids, int n) const;

  // The scheduler that runs this model's generations (started by the first call).
  Engine& engine();

 private:
  // The one validation + bookkeeping path of forward and forward_argmax: `run` calls the backend
  // and returns whether it did the step (the cache advances only then).
  template <typename Run> bool step(KvCache& cache, const int32_t* ids, int n, Run run);
  // Adds pages (mu_ held) so that `positions` fit; validate has checked the limit.
  void reserve(KvCache& cache, int positions);
  ModelConfig cfg_;
  std::unique_ptr<Checkpoint> checkpoint_;
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  int context_length_ = 0;
  int max_batch_ = 16, max_queue_ = 64;
  std::mutex mu_;         // serializes the backend's forward passes
  std::mutex engine_mu_;  // guards engine_'s creation (never held while waiting on mu_)
  std::unique_ptr<Engine> engine_;
};

}  // namespace qwen
