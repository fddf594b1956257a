// What a backend (cpu/, cuda/) provides to the core: weights resident in its memory, KV caches,
// and the forward pass of SPEC 3. The core validates inputs before calling in (ids in range,
// room in the cache) and decides the dynamic-NTK alpha at prefill (rope_ntk_alpha).
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "sampler.h"
#include "weights.h"

namespace qwen {

// Positions per page of a KV cache: both backends hold a sequence's K/V in pages of this many
// positions, allocated as it grows (never copied), and find position j in page j / kKvPage.
constexpr int kKvPage = 64;

// One sequence's attention cache. Backends derive from it to hold the K/V storage.
class KvCache {
 public:
  virtual ~KvCache() = default;
  int capacity = 0;              // positions allocated now (whole pages)
  int limit = 0;                 // positions it may grow to (Model grows it on demand); 0 = capacity
  int length = 0;                // positions filled
  double ntk_alpha = 1.0;        // set by the prefill that filled an empty cache (SPEC 3.1)
  std::vector<int32_t> tokens;   // the ids at positions 0..length-1 (repetition penalty sees them)
  virtual size_t bytes() const = 0;
  int max_positions() const { return limit > 0 ? limit : capacity; }
};

enum class KvCacheType { Float, Int8 };

struct MemoryReport {
  // Bytes of weights held by the backend in its memory (0 for mapped files on the CPU). On CUDA
  // this is device memory only: the embedding table wte, read one row per token, stays in host
  // memory by default (see host_weights; QWEN_WTE_ON_DEVICE=1 puts it back on the device).
  size_t weights = 0;
  size_t host_weights = 0;  // CUDA: bytes of weights the GPU reads from (pinned) host memory
  size_t kv_cache = 0;   // bytes of live KV caches (their pages and per-cache tables)
  size_t kv_free = 0;    // bytes of freed KV pages the backend keeps for the next caches (CUDA)
  size_t workspace = 0;  // scratch buffers
};

using ProgressFn = std::function<void(double fraction)>;

// How a step's token is chosen (SPEC 8), for a backend that can choose it where the logits are:
// the options, the distinct ids the repetition penalty applies to (the sequence's ids and this
// step's), and the uniform draw in [0, 1) that the host's sample_token would use.
struct TokenChoice {
  SamplingOptions sampling;
  const int32_t* penalty_ids = nullptr;
  int n_penalty_ids = 0;
  double u = 0;
};

// Whether a choice is the plain argmax of the raw logits (null, or greedy without a penalty).
inline bool plain_argmax(const TokenChoice* c) {
  return !c || ((!c->sampling.do_sample || c->sampling.temperature <= 0.0f) && c->sampling.repetition_penalty == 1.0f);
}

// One sequence's part of a batched forward pass (Backend::forward_batch).
struct BatchItem {
  KvCache* cache = nullptr;
  const int32_t* ids = nullptr;  // [n], fed at positions cache->length..
  int n = 0;
  float* logits = nullptr;        // [V]: the logits of the item's last position
  // Where non-null, the backend may write the step's token here instead of the logits (the
  // argmax of the last position's logits, as Backend::forward_argmax, or as `choice` says), and
  // sets `argmax` then.
  int32_t* token_out = nullptr;
  bool argmax = false;
  // With token_out: choose the token this way instead of the plain argmax (null: the argmax). A
  // backend that cannot leaves `argmax` false and gives the logits.
  const TokenChoice* choice = nullptr;
  // Model::forward_batch only: the prefill length that fixes the NTK alpha of an empty cache
  // (a prompt fed in chunks takes the alpha of the whole prompt); 0 = n.
  int ntk_len = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // A cache with pages for `capacity` positions (rounded up to whole pages) that may grow to
  // `limit` positions (0 = capacity).
  virtual std::unique_ptr<KvCache> new_cache(int capacity, int limit = 0) = 0;
  // Adds pages until `capacity` positions (at most the limit) fit; what the cache holds stays in
  // place. Throws Error when the memory is not there, leaving the cache as it was.
  virtual void grow_cache(KvCache& cache, int capacity) = 0;
  // Feeds ids [n] at positions cache.length.. and writes their K/V there (the caller then
  // advances cache.length by n); writes logits of the last
  // position ([V] floats) or of every position ([n, V]) into host memory `logits`.
  virtual void forward(KvCache& cache, const int32_t* ids, int n, float* logits, bool all_logits) = 0;
  // Greedy decoding without the logits copy: as forward, but writes only the argmax of the last
  // position's logits (the lowest index among ties, as std::max_element) into *token_out.
  // Returns false, having done nothing, when the backend does not implement it.
  virtual bool forward_argmax(KvCache& cache, const int32_t* ids, int n, int32_t* token_out) {
    (void)cache, (void)ids, (void)n, (void)token_out;
    return false;
  }
  // Several sequences' steps, each with its own cache: every item's output is that of forward
  // (or forward_argmax) on it alone. This default runs them one after the other; a backend that
  // can share one pass over the weights among the items overrides it.
  virtual void forward_batch(std::vector<BatchItem>& items) {
    for (BatchItem& it : items) {
      it.argmax = it.token_out && plain_argmax(it.choice) && forward_argmax(*it.cache, it.ids, it.n, it.token_out);
      if (!it.argmax) forward(*it.cache, it.ids, it.n, it.logits, false);
    }
  }
  // The longest prompt chunk one forward pass of a batch should take (the scheduler feeds longer
  // prompts in several steps so the other sequences' decoding keeps going); 0 = whole prompts.
  virtual int prefill_chunk() const { return 0; }
  virtual MemoryReport memory() const = 0;
};

struct BackendOptions {
  int threads = 0;         // CPU: 0 = all cores
  int device_index = 0;    // CUDA
  KvCacheType kv_cache = KvCacheType::Float;
};

// cpu/model_cpu.cpp
std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt,
                                          const ProgressFn& progress);
// cuda/model_cuda.cu, or cuda/unavailable.cpp when the addon was built without nvcc
bool cuda_compiled();
int cuda_device_count();  // 0 when no driver or no GPU; never throws
// What the CUDA runtime sees (cuda/device_info.cu): for `doctor` and for load errors that name
// the driver version found and the one needed. Never throws.
struct CudaDeviceInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability
  size_t memory = 0;         // bytes
};
struct CudaInfo {
  int driver_version = 0;   // e.g. 13000 for CUDA 13.0; 0 when no driver is installed
  int runtime_version = 0;  // the CUDA runtime this addon was built with (0 without CUDA)
  std::string error;        // why no device is usable, or empty
  std::vector<CudaDeviceInfo> devices;
};
CudaInfo cuda_info();
std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt,
                                           const ProgressFn& progress);

// SPEC 3.1: c = log2(T0/S) + 1; alpha = max(2^ceil(c) - 1, 1).
double rope_ntk_alpha(int prompt_len, int seq_length);
// SPEC 3: logn(p) = ln(p+1)/ln(S) when p+1 > S, else 1.
inline float logn_scale(int pos, int seq_length) {
  return pos + 1 > seq_length ? float(std::log(double(pos + 1)) / std::log(double(seq_length))) : 1.0f;
}

}  // namespace qwen
