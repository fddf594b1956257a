// The CPU backend: SPEC 3's forward pass over weights read straight from the mapped checkpoint
// (converted row by row to fp32 inside linear), fp32 activations and an fp32 KV cache.
#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "../core/backend.h"
#include "../core/error.h"
#include "ops.h"

namespace qwen {

namespace {

struct CpuCache : KvCache {
  int layers, heads, head_dim;  // heads: KV heads (n for QwenV1, n_kv for qwen2/qwen3)
  bool int8;
  // [L, n, capacity, d] (fp32 or uint8), plus [L, n, capacity] scales/zeros for int8. Left
  // uninitialized: the OS commits pages as positions fill, so a long contextLength costs
  // memory only when used.
  std::unique_ptr<float[]> k, v;
  std::unique_ptr<uint8_t[]> kq, vq;
  std::unique_ptr<float[]> ks, kz, vs, vz;
  size_t count;
  std::shared_ptr<std::atomic<size_t>> live_bytes;  // the backend's count of KV bytes in use
  CpuCache(int L, int n, int d, int cap, bool quantized, std::shared_ptr<std::atomic<size_t>> live)
      : layers(L), heads(n), head_dim(d), int8(quantized), live_bytes(std::move(live)) {
    capacity = cap;
    count = size_t(L) * n * size_t(cap) * d;
    const size_t rows = size_t(L) * n * size_t(cap);
    try {
      if (int8) {
        kq.reset(new uint8_t[count]);
        vq.reset(new uint8_t[count]);
        for (auto* p : {&ks, &kz, &vs, &vz}) p->reset(new float[rows]);
      } else {
        k.reset(new float[count]);
        v.reset(new float[count]);
      }
    } catch (const std::bad_alloc&) {
      throw Error("out of memory allocating a KV cache of " + std::to_string(bytes() >> 20) +
                  " MiB (lower contextLength)");
    }
    *live_bytes += bytes();
  }
  ~CpuCache() override { *live_bytes -= bytes(); }
  size_t layer_offset(int l) const { return size_t(l) * heads * size_t(capacity) * head_dim; }
  size_t row_offset(int l) const { return size_t(l) * heads * size_t(capacity); }
  // Writes position `pos`'s K and V rows (each [n, d], after rope) into layer l.
  void append(int l, int pos, const float* krow, const float* vrow) {
    for (int h = 0; h < heads; h++) {
      const size_t r = row_offset(l) + size_t(h) * capacity + size_t(pos);
      const size_t at = r * head_dim;
      if (int8) {
        cpu::kv_quantize_int8(krow + h * head_dim, head_dim, kq.get() + at, &ks[r], &kz[r]);
        cpu::kv_quantize_int8(vrow + h * head_dim, head_dim, vq.get() + at, &vs[r], &vz[r]);
      } else {
        std::memcpy(k.get() + at, krow + h * head_dim, size_t(head_dim) * 4);
        std::memcpy(v.get() + at, vrow + h * head_dim, size_t(head_dim) * 4);
      }
    }
  }
  // n_q query heads (a multiple of the cache's `heads` KV heads) at positions pos0 .. pos0+T-1.
  void attention(float* out, const float* q, int64_t q_stride, int n_q, int l, int T, int pos0,
                 cpu::ThreadPool& pool) const {
    if (int8) {
      const size_t lo = layer_offset(l), ro = row_offset(l);
      cpu::KvInt8 K{kq.get() + lo, ks.get() + ro, kz.get() + ro}, V{vq.get() + lo, vs.get() + ro, vz.get() + ro};
      cpu::attention_int8_gqa(out, q, q_stride, K, V, capacity, T, n_q, heads, head_dim, pos0, pool);
    } else {
      cpu::attention_gqa(out, q, q_stride, k.get() + layer_offset(l), v.get() + layer_offset(l), capacity, T, n_q, heads,
                         head_dim, pos0, pool);
    }
  }
  size_t bytes() const override {
    const size_t rows = size_t(layers) * heads * size_t(capacity);
    return int8 ? 2 * count + 4 * rows * sizeof(float) : 2 * count * sizeof(float);
  }
};

std::vector<float> to_f32_vector(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

class CpuBackend : public Backend {
 public:
  CpuBackend(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt, const ProgressFn& progress)
      : cfg_(cfg), w_(w), pool_(opt.threads), int8_kv_(opt.kv_cache == KvCacheType::Int8) {
    for (const auto& l : w.layers) {
      ln1_.push_back(to_f32_vector(l.ln_1));
      ln2_.push_back(to_f32_vector(l.ln_2));
      qn_.push_back(l.q_norm.empty() ? std::vector<float>() : to_f32_vector(l.q_norm));
      kn_.push_back(l.k_norm.empty() ? std::vector<float>() : to_f32_vector(l.k_norm));
    }
    lnf_ = to_f32_vector(w.ln_f);
    // Touch every page of the mapped weights now so the first token does not pay for disk
    // reads, and so loading can report progress.
    std::vector<const Tensor*> all = {&w.wte, &w.ln_f, &w.lm_head.weight};
    for (const auto& l : w.layers)
      for (const Linear* lin : {&l.c_attn, &l.q_proj, &l.k_proj, &l.v_proj, &l.attn_c_proj, &l.w1, &l.w2, &l.mlp_c_proj})
        for (const Tensor* t : {&lin->weight, &lin->bias, &lin->qweight, &lin->qzeros, &lin->scales}) all.push_back(t);
    size_t total = 0, done = 0;
    for (const Tensor* t : all) total += t->empty() ? 0 : t->nbytes();
    volatile uint8_t sink = 0;
    for (const Tensor* t : all) {
      if (t->empty()) continue;
      const uint8_t* p = static_cast<const uint8_t*>(t->data);
      for (size_t i = 0; i < t->nbytes(); i += 4096) sink ^= p[i];
      done += t->nbytes();
      if (progress) progress(total ? double(done) / double(total) : 1.0);
    }
    weight_bytes_ = total;
  }

  std::string name() const override { return "cpu (" + std::to_string(pool_.size()) + " threads)"; }

  std::unique_ptr<KvCache> new_cache(int capacity) override {
    return std::make_unique<CpuCache>(cfg_.num_layers, cfg_.num_kv_heads, cfg_.head_dim, capacity, int8_kv_, live_kv_);
  }

  MemoryReport memory() const override {
    MemoryReport r;
    r.weights = weight_bytes_;
    r.kv_cache = *live_kv_;
    return r;
  }

  void forward(KvCache& base_cache, const int32_t* ids, int T, float* logits, bool all_logits) override {
    CpuCache& cache = static_cast<CpuCache&>(base_cache);
    if (cfg_.family != ModelFamily::QwenV1) return forward_qwen2(cache, ids, T, logits, all_logits);
    const int H = cfg_.hidden_size, n = cfg_.num_heads, d = cfg_.head_dim, F = cfg_.ffn_size, V = cfg_.vocab_size;
    const int pos0 = cache.length;
    std::vector<float> x(size_t(T) * H), h(size_t(T) * H), qkv(size_t(T) * 3 * H), att(size_t(T) * H), tmp(size_t(T) * H);
    std::vector<float> a(size_t(T) * F), b(size_t(T) * F);
    cpu::embedding(x.data(), w_.wte, ids, T);
    for (int l = 0; l < cfg_.num_layers; l++) {
      const LayerWeights& lw = w_.layers[size_t(l)];
      cpu::rmsnorm(h.data(), x.data(), ln1_[size_t(l)].data(), T, H, cfg_.rms_eps);
      cpu::linear(qkv.data(), h.data(), lw.c_attn, T, pool_);  // [T, 3H] = q | k | v
      float* q = qkv.data();
      float* k = qkv.data() + H;
      float* v = qkv.data() + 2 * H;
      cpu::rope(q, 3 * H, T, n, d, pos0, cfg_.rope_base, cache.ntk_alpha);
      cpu::rope(k, 3 * H, T, n, d, pos0, cfg_.rope_base, cache.ntk_alpha);
      if (cfg_.use_logn_attn)
        for (int t = 0; t < T; t++) {
          float s = logn_scale(pos0 + t, cfg_.seq_length);
          if (s != 1.0f)
            for (int i = 0; i < H; i++) q[int64_t(t) * 3 * H + i] *= s;
        }
      for (int t = 0; t < T; t++) cache.append(l, pos0 + t, k + int64_t(t) * 3 * H, v + int64_t(t) * 3 * H);
      cache.attention(att.data(), q, 3 * H, n, l, T, pos0, pool_);
      cpu::linear(tmp.data(), att.data(), lw.attn_c_proj, T, pool_);
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
      cpu::rmsnorm(h.data(), x.data(), ln2_[size_t(l)].data(), T, H, cfg_.rms_eps);
      cpu::linear(a.data(), h.data(), lw.w1, T, pool_);
      cpu::linear(b.data(), h.data(), lw.w2, T, pool_);
      cpu::swiglu(a.data(), a.data(), b.data(), int64_t(T) * F);
      cpu::linear(tmp.data(), a.data(), lw.mlp_c_proj, T, pool_);
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
    }
    // Only the rows whose logits are wanted go through ln_f and lm_head.
    const int first = all_logits ? 0 : T - 1;
    const int rows = T - first;
    cpu::rmsnorm(h.data(), x.data() + int64_t(first) * H, lnf_.data(), rows, H, cfg_.rms_eps);
    cpu::linear(logits, h.data(), w_.lm_head, rows, pool_);
    (void)V;
  }

  // SPEC 10 (qwen2/qwen3): separate q/k/v linears (bias per the config), qwen3's per-head q/k
  // RMSNorm before rope, rope with rope_theta (no NTK, no logn), GQA over n_kv cached KV heads,
  // o_proj from n*d; the MLP slots hold up (w1), gate (w2, the silu one) and down (mlp_c_proj).
  void forward_qwen2(CpuCache& cache, const int32_t* ids, int T, float* logits, bool all_logits) {
    const int H = cfg_.hidden_size, n = cfg_.num_heads, nkv = cfg_.num_kv_heads, d = cfg_.head_dim, F = cfg_.ffn_size;
    const int Q = cfg_.q_size(), KV = cfg_.kv_size();
    const int pos0 = cache.length;
    std::vector<float> x(size_t(T) * H), h(size_t(T) * H), tmp(size_t(T) * H);
    std::vector<float> q(size_t(T) * Q), k(size_t(T) * KV), v(size_t(T) * KV), att(size_t(T) * Q);
    std::vector<float> a(size_t(T) * F), b(size_t(T) * F);
    cpu::embedding(x.data(), w_.wte, ids, T);
    for (int l = 0; l < cfg_.num_layers; l++) {
      const LayerWeights& lw = w_.layers[size_t(l)];
      cpu::rmsnorm(h.data(), x.data(), ln1_[size_t(l)].data(), T, H, cfg_.rms_eps);
      cpu::linear(q.data(), h.data(), lw.q_proj, T, pool_);
      cpu::linear(k.data(), h.data(), lw.k_proj, T, pool_);
      cpu::linear(v.data(), h.data(), lw.v_proj, T, pool_);
      if (!qn_[size_t(l)].empty()) cpu::rmsnorm(q.data(), q.data(), qn_[size_t(l)].data(), T * n, d, cfg_.rms_eps);
      if (!kn_[size_t(l)].empty()) cpu::rmsnorm(k.data(), k.data(), kn_[size_t(l)].data(), T * nkv, d, cfg_.rms_eps);
      cpu::rope(q.data(), Q, T, n, d, pos0, cfg_.rope_base, 1.0);
      cpu::rope(k.data(), KV, T, nkv, d, pos0, cfg_.rope_base, 1.0);
      for (int t = 0; t < T; t++) cache.append(l, pos0 + t, k.data() + int64_t(t) * KV, v.data() + int64_t(t) * KV);
      cache.attention(att.data(), q.data(), Q, n, l, T, pos0, pool_);
      cpu::linear(tmp.data(), att.data(), lw.attn_c_proj, T, pool_);
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
      cpu::rmsnorm(h.data(), x.data(), ln2_[size_t(l)].data(), T, H, cfg_.rms_eps);
      cpu::linear(a.data(), h.data(), lw.w1, T, pool_);  // up
      cpu::linear(b.data(), h.data(), lw.w2, T, pool_);  // gate
      cpu::swiglu(a.data(), a.data(), b.data(), int64_t(T) * F);
      cpu::linear(tmp.data(), a.data(), lw.mlp_c_proj, T, pool_);  // down
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
    }
    const int first = all_logits ? 0 : T - 1;
    const int rows = T - first;
    cpu::rmsnorm(h.data(), x.data() + int64_t(first) * H, lnf_.data(), rows, H, cfg_.rms_eps);
    cpu::linear(logits, h.data(), w_.lm_head, rows, pool_);
  }

 private:
  const ModelConfig cfg_;
  const ModelWeights w_;
  cpu::ThreadPool pool_;
  std::vector<std::vector<float>> ln1_, ln2_, qn_, kn_;  // qn_/kn_: qwen3's q_norm/k_norm, else empty
  std::vector<float> lnf_;
  bool int8_kv_;
  size_t weight_bytes_ = 0;
  std::shared_ptr<std::atomic<size_t>> live_kv_ = std::make_shared<std::atomic<size_t>>(0);
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt,
                                          const ProgressFn& progress) {
  return std::make_unique<CpuBackend>(cfg, w, opt, progress);
}

}  // namespace qwen
