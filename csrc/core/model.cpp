#include "model.h"

#include <algorithm>
#include <cmath>

#include "engine.h"
#include "error.h"

namespace qwen {

double rope_ntk_alpha(int prompt_len, int seq_length) {
  double c = std::log2(double(prompt_len) / double(seq_length)) + 1.0;
  double alpha = std::pow(2.0, std::ceil(c)) - 1.0;
  return alpha < 1.0 ? 1.0 : alpha;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const LoadOptions& opt, const ProgressFn& progress) {
  auto m = std::unique_ptr<Model>(new Model());
  m->cfg_ = ModelConfig::load(dir);
  m->checkpoint_ = Checkpoint::open(dir);
  m->weights_ = bind_weights(*m->checkpoint_, m->cfg_);
  m->context_length_ = opt.context_length > 0 ? opt.context_length : m->cfg_.seq_length;
  if (opt.max_batch < 1) throw Error("maxBatch must be at least 1, got " + std::to_string(opt.max_batch));
  if (opt.max_queue < 0) throw Error("maxQueue must be at least 0, got " + std::to_string(opt.max_queue));
  m->max_batch_ = opt.max_batch;
  m->max_queue_ = opt.max_queue;
  BackendOptions bopt = opt.backend;
  if (opt.kv_cache == "int8" || (opt.kv_cache == "auto" && m->cfg_.use_cache_quantization)) bopt.kv_cache = KvCacheType::Int8;
  else if (opt.kv_cache == "float" || opt.kv_cache == "auto") bopt.kv_cache = KvCacheType::Float;
  else throw Error("kvCache \"" + opt.kv_cache + "\" is not supported (supported: auto, float, int8)");
  if (opt.device == "cpu") {
    m->backend_ = make_cpu_backend(m->cfg_, m->weights_, bopt, progress);
  } else if (opt.device == "cuda") {
    // Every family runs on CUDA (qwen2/qwen3: GQA, stacked q/k/v, q/k norm; model_cuda.cu).
    m->backend_ = make_cuda_backend(m->cfg_, m->weights_, bopt, progress);
  } else {
    throw Error("device \"" + opt.device + "\" is not supported (supported: cpu, cuda)");
  }
  return m;
}

Model::~Model() { engine_.reset(); }

Engine& Model::engine() {
  std::lock_guard<std::mutex> lock(engine_mu_);
  if (!engine_) engine_ = std::make_unique<Engine>(*this, max_batch_, max_queue_);
  return *engine_;
}

std::unique_ptr<KvCache> Model::new_cache(int limit, int initial) {
  limit = limit > 0 ? std::min(limit, context_length_) : context_length_;
  initial = std::clamp(initial, 1, limit);
  std::lock_guard<std::mutex> lock(mu_);
  auto c = backend_->new_cache(initial, limit);
  c->limit = limit;
  return c;
}

void Model::make_room(KvCache& cache, int n) {
  std::lock_guard<std::mutex> lock(mu_);
  reserve(cache, std::min(cache.length + n, cache.max_positions()));
}

void Model::reserve(KvCache& cache, int positions) {
  if (positions <= cache.capacity) return;
  backend_->grow_cache(cache, positions);
}

void Model::validate(const KvCache& cache, const int32_t* ids, int n) const {
  if (n <= 0) throw Error("eval: no token ids given");
  for (int i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
      throw Error("token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                  " is out of range [0, " + std::to_string(cfg_.vocab_size) + ")");
  if (cache.length + n > cache.max_positions())
    throw Error("context length exceeded: " + std::to_string(cache.length) + " tokens in the sequence + " +
                std::to_string(n) + " new > contextLength " + std::to_string(cache.max_positions()));
}

template <typename Run>
bool Model::step(KvCache& cache, const int32_t* ids, int n, Run run) {
  validate(cache, ids, n);
  std::lock_guard<std::mutex> lock(mu_);
  // qwen2/qwen3 configs set use_dynamic_ntk false: alpha stays 1 and rope uses rope_theta as is.
  // (Set even when `run` declines: forward sets the same value from the same n.)
  if (cache.length == 0) cache.ntk_alpha = cfg_.use_dynamic_ntk ? rope_ntk_alpha(n, cfg_.seq_length) : 1.0;
  reserve(cache, cache.length + n);
  if (!run()) return false;
  cache.length += n;
  cache.tokens.insert(cache.tokens.end(), ids, ids + n);
  return true;
}

void Model::forward(KvCache& cache, const int32_t* ids, int n, float* logits, bool all_logits) {
  step(cache, ids, n, [&] {
    backend_->forward(cache, ids, n, logits, all_logits);
    return true;
  });
}

bool Model::forward_argmax(KvCache& cache, const int32_t* ids, int n, int32_t* token_out) {
  return step(cache, ids, n, [&] { return backend_->forward_argmax(cache, ids, n, token_out); });
}

void Model::forward_batch(std::vector<BatchItem>& items) {
  for (const BatchItem& it : items) validate(*it.cache, it.ids, it.n);
  std::lock_guard<std::mutex> lock(mu_);
  for (BatchItem& it : items) reserve(*it.cache, it.cache->length + it.n);  // before any runs
  for (BatchItem& it : items) {
    it.argmax = false;
    if (it.cache->length == 0)
      it.cache->ntk_alpha = cfg_.use_dynamic_ntk ? rope_ntk_alpha(it.ntk_len > 0 ? it.ntk_len : it.n, cfg_.seq_length) : 1.0;
  }
  backend_->forward_batch(items);
  for (BatchItem& it : items) {
    it.cache->length += it.n;
    it.cache->tokens.insert(it.cache->tokens.end(), it.ids, it.ids + it.n);
  }
}

}  // namespace qwen
