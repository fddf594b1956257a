// The CPU backend: SPEC 3's forward pass over weights read straight from the mapped checkpoint
// (converted row by row to fp32 inside linear), fp32 activations and a paged fp32 (or int8) KV
// cache.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "../core/backend.h"
#include "../core/error.h"
#include "ops.h"

namespace qwen {

namespace {

// A cache in pages of kKvPage positions, each page one allocation holding every layer's rows of
// those positions: fp32 K, V [L, n, kKvPage, d]; int8: uint8 K, V [L, n, kKvPage, d] and fp32
// scales/zeros [L, n, kKvPage] of K and of V. Position j is row j % kKvPage of page j / kKvPage.
// Pages are left uninitialized and added as the sequence grows; nothing is copied.
struct CpuCache : KvCache {
  int layers, heads, head_dim;  // heads: KV heads (n for QwenV1, n_kv for qwen2/qwen3)
  bool int8;
  size_t plane = 0;     // elements of one layer's K (or V) rows in a page: heads * kKvPage * d
  size_t sz_plane = 0;  // int8: floats of one layer's scales (or zeros) in a page: heads * kKvPage
  size_t page_bytes = 0;
  std::vector<std::unique_ptr<char[]>> pages;
  std::shared_ptr<std::atomic<size_t>> live_bytes;  // the backend's count of KV bytes in use
  CpuCache(int L, int n, int d, bool quantized, std::shared_ptr<std::atomic<size_t>> live)
      : layers(L), heads(n), head_dim(d), int8(quantized), live_bytes(std::move(live)) {
    plane = size_t(n) * kKvPage * d;
    sz_plane = size_t(n) * kKvPage;
    page_bytes = int8 ? 2 * size_t(L) * plane + 4 * size_t(L) * sz_plane * sizeof(float)
                      : 2 * size_t(L) * plane * sizeof(float);
  }
  ~CpuCache() override { *live_bytes -= bytes(); }
  // Adds pages until `positions` fit; on a failed allocation the cache is as it was.
  void grow(int positions) {
    const size_t want = (size_t(positions) + kKvPage - 1) / kKvPage;
    if (want <= pages.size()) return;
    const size_t n = want - pages.size();
    try {  // every allocation first: a failure leaves the cache as it was
      pages.reserve(want);
      std::vector<std::unique_ptr<char[]>> added;
      added.reserve(n);
      while (added.size() < n) {
        std::unique_ptr<char[]> p(new char[page_bytes]);
        added.push_back(std::move(p));
      }
      for (auto& p : added) pages.push_back(std::move(p));  // no allocation: reserved
    } catch (const std::bad_alloc&) {
      throw Error("out of memory allocating KV cache pages: " + std::to_string(n) + " of " +
                  std::to_string(page_bytes >> 10) + " KiB (lower contextLength)");
    }
    *live_bytes += n * page_bytes;
    capacity = int(pages.size()) * kKvPage;
  }
  // Layer l's planes in page p: K/V rows (fp32 or uint8) and, int8, K scale/zero, V scale/zero.
  float* kf(size_t p, int l) const { return reinterpret_cast<float*>(pages[p].get()) + size_t(l) * plane; }
  float* vf(size_t p, int l) const { return kf(p, l) + size_t(layers) * plane; }
  uint8_t* kq(size_t p, int l) const { return reinterpret_cast<uint8_t*>(pages[p].get()) + size_t(l) * plane; }
  uint8_t* vq(size_t p, int l) const { return kq(p, l) + size_t(layers) * plane; }
  float* sz(size_t p, int l, int which) const {  // which: 0 K scale, 1 K zero, 2 V scale, 3 V zero
    float* base = reinterpret_cast<float*>(pages[p].get() + 2 * size_t(layers) * plane);
    return base + (size_t(which) * layers + size_t(l)) * sz_plane;
  }
  // Writes position `pos`'s K and V rows (each [n, d], after rope) into layer l.
  void append(int l, int pos, const float* krow, const float* vrow) {
    const size_t p = size_t(pos / kKvPage);
    for (int h = 0; h < heads; h++) {
      const size_t r = size_t(h) * kKvPage + size_t(pos % kKvPage), at = r * head_dim;
      if (int8) {
        cpu::kv_quantize_int8(krow + h * head_dim, head_dim, kq(p, l) + at, sz(p, l, 0) + r, sz(p, l, 1) + r);
        cpu::kv_quantize_int8(vrow + h * head_dim, head_dim, vq(p, l) + at, sz(p, l, 2) + r, sz(p, l, 3) + r);
      } else {
        std::memcpy(kf(p, l) + at, krow + h * head_dim, size_t(head_dim) * 4);
        std::memcpy(vf(p, l) + at, vrow + h * head_dim, size_t(head_dim) * 4);
      }
    }
  }
  // n_q query heads (a multiple of the cache's `heads` KV heads) at positions pos0 .. pos0+T-1.
  void attention(float* out, const float* q, int64_t q_stride, int n_q, int l, int T, int pos0,
                 cpu::ThreadPool& pool) const {
    const size_t np = (size_t(pos0 + T) + kKvPage - 1) / kKvPage;
    if (int8) {
      std::vector<cpu::KvInt8> K(np), V(np);
      for (size_t p = 0; p < np; p++) {
        K[p] = {kq(p, l), sz(p, l, 0), sz(p, l, 1)};
        V[p] = {vq(p, l), sz(p, l, 2), sz(p, l, 3)};
      }
      cpu::attention_int8_gqa_paged(out, q, q_stride, K.data(), V.data(), kKvPage, T, n_q, heads, head_dim, pos0, pool);
    } else {
      std::vector<const float*> K(np), V(np);
      for (size_t p = 0; p < np; p++) {
        K[p] = kf(p, l);
        V[p] = vf(p, l);
      }
      cpu::attention_gqa_paged(out, q, q_stride, K.data(), V.data(), kKvPage, T, n_q, heads, head_dim, pos0, pool);
    }
  }
  size_t bytes() const override { return pages.size() * page_bytes; }
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

  std::unique_ptr<KvCache> new_cache(int capacity, int limit) override {
    auto c = std::make_unique<CpuCache>(cfg_.num_layers, cfg_.num_kv_heads, cfg_.head_dim, int8_kv_, live_kv_);
    c->limit = limit > 0 ? limit : capacity;
    c->grow(std::max(capacity, 1));
    return c;
  }

  void grow_cache(KvCache& base, int capacity) override {
    dynamic_cast<CpuCache&>(base).grow(std::min(capacity, base.max_positions()));
  }

  MemoryReport memory() const override {
    MemoryReport r;
    r.weights = weight_bytes_;
    r.kv_cache = *live_kv_;
    return r;
  }

  // The cache of a step, checked: made by a CPU backend, with pages for n more positions.
  static CpuCache& cache_for(KvCache& base, int n) {
    CpuCache* c = dynamic_cast<CpuCache*>(&base);
    if (!c) throw Error("cpu: this KV cache was not made by a CPU model");
    if (n < 1 || c->length + n > c->capacity) throw Error("cpu: forward past the KV cache's capacity");
    return *c;
  }

  void forward(KvCache& base_cache, const int32_t* ids, int T, float* logits, bool all_logits) override {
    CpuCache& cache = cache_for(base_cache, T);
    const int H = cfg_.hidden_size;
    std::vector<Seg> segs = {{&cache, 0, T, cache.length}};
    std::vector<float> x(size_t(T) * H), h(size_t(T) * H);
    layers(segs, ids, T, x);
    // Only the rows whose logits are wanted go through ln_f and lm_head.
    const int first = all_logits ? 0 : T - 1;
    const int rows = T - first;
    cpu::rmsnorm(h.data(), x.data() + int64_t(first) * H, lnf_.data(), rows, H, cfg_.rms_eps);
    cpu::linear(logits, h.data(), w_.lm_head, rows, pool_);
  }

  // Every item's tokens are rows of one [sum n, H] activation matrix through the embedding, the
  // norms, every linear (each weight row read once for all the sequences) and the MLP; rope,
  // logn, the KV append and attention run per item on its own cache and positions. Each row's
  // arithmetic is the same whatever the other rows are (linear dots a weight row with each input
  // row in the same order for any T), so every item's logits equal forward's on it alone.
  void forward_batch(std::vector<BatchItem>& items) override {
    const int H = cfg_.hidden_size, V = cfg_.vocab_size;
    const int B = int(items.size());
    std::vector<Seg> segs;
    std::vector<int32_t> ids;
    int T = 0;
    for (BatchItem& it : items) {
      CpuCache* c = &cache_for(*it.cache, it.n);
      segs.push_back({c, T, it.n, c->length});
      ids.insert(ids.end(), it.ids, it.ids + it.n);
      T += it.n;
      it.argmax = false;
    }
    std::vector<float> x(size_t(T) * H), h(size_t(B) * H), out(size_t(B) * V);
    layers(segs, ids.data(), T, x);
    for (int b = 0; b < B; b++) {
      const Seg& s = segs[size_t(b)];
      cpu::rmsnorm(h.data() + int64_t(b) * H, x.data() + int64_t(s.row0 + s.n - 1) * H, lnf_.data(), 1, H, cfg_.rms_eps);
    }
    cpu::linear(out.data(), h.data(), w_.lm_head, B, pool_);
    for (int b = 0; b < B; b++)
      std::memcpy(items[size_t(b)].logits, out.data() + int64_t(b) * V, size_t(V) * sizeof(float));
  }

  int prefill_chunk() const override { return 512; }

 private:
  // One sequence's rows in a batch: rows row0 .. row0+n-1 at positions pos0.. of `cache`.
  struct Seg {
    CpuCache* cache;
    int row0, n, pos0;
  };

  // The decoder layers over ids [T] (the segments' rows, back to back): x [T, H] ends as the
  // hidden states before ln_f.
  void layers(const std::vector<Seg>& segs, const int32_t* ids, int T, std::vector<float>& x) {
    if (cfg_.family != ModelFamily::QwenV1) return layers_qwen2(segs, ids, T, x);
    const int H = cfg_.hidden_size, n = cfg_.num_heads, d = cfg_.head_dim, F = cfg_.ffn_size;
    std::vector<float> h(size_t(T) * H), qkv(size_t(T) * 3 * H), att(size_t(T) * H), tmp(size_t(T) * H);
    std::vector<float> a(size_t(T) * F), b(size_t(T) * F);
    cpu::embedding(x.data(), w_.wte, ids, T);
    for (int l = 0; l < cfg_.num_layers; l++) {
      const LayerWeights& lw = w_.layers[size_t(l)];
      cpu::rmsnorm(h.data(), x.data(), ln1_[size_t(l)].data(), T, H, cfg_.rms_eps);
      cpu::linear(qkv.data(), h.data(), lw.c_attn, T, pool_);  // [T, 3H] = q | k | v
      for (const Seg& sg : segs) {
        CpuCache& cache = *sg.cache;
        const int pos0 = sg.pos0, Ts = sg.n;
        float* q = qkv.data() + int64_t(sg.row0) * 3 * H;
        float* k = q + H;
        float* v = q + 2 * H;
        cpu::rope(q, 3 * H, Ts, n, d, pos0, cfg_.rope_base, cache.ntk_alpha);
        cpu::rope(k, 3 * H, Ts, n, d, pos0, cfg_.rope_base, cache.ntk_alpha);
        if (cfg_.use_logn_attn)
          for (int t = 0; t < Ts; t++) {
            float s = logn_scale(pos0 + t, cfg_.seq_length);
            if (s != 1.0f)
              for (int i = 0; i < H; i++) q[int64_t(t) * 3 * H + i] *= s;
          }
        for (int t = 0; t < Ts; t++) cache.append(l, pos0 + t, k + int64_t(t) * 3 * H, v + int64_t(t) * 3 * H);
        cache.attention(att.data() + int64_t(sg.row0) * H, q, 3 * H, n, l, Ts, pos0, pool_);
      }
      cpu::linear(tmp.data(), att.data(), lw.attn_c_proj, T, pool_);
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
      cpu::rmsnorm(h.data(), x.data(), ln2_[size_t(l)].data(), T, H, cfg_.rms_eps);
      cpu::linear(a.data(), h.data(), lw.w1, T, pool_);
      cpu::linear(b.data(), h.data(), lw.w2, T, pool_);
      cpu::swiglu(a.data(), a.data(), b.data(), int64_t(T) * F);
      cpu::linear(tmp.data(), a.data(), lw.mlp_c_proj, T, pool_);
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
    }
  }

  // SPEC 10 (qwen2/qwen3): separate q/k/v linears (bias per the config), qwen3's per-head q/k
  // RMSNorm before rope, rope with rope_theta (no NTK, no logn), GQA over n_kv cached KV heads,
  // o_proj from n*d; the MLP slots hold up (w1), gate (w2, the silu one) and down (mlp_c_proj).
  void layers_qwen2(const std::vector<Seg>& segs, const int32_t* ids, int T, std::vector<float>& x) {
    const int H = cfg_.hidden_size, n = cfg_.num_heads, nkv = cfg_.num_kv_heads, d = cfg_.head_dim, F = cfg_.ffn_size;
    const int Q = cfg_.q_size(), KV = cfg_.kv_size();
    std::vector<float> h(size_t(T) * H), tmp(size_t(T) * H);
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
      for (const Seg& sg : segs) {
        CpuCache& cache = *sg.cache;
        const int pos0 = sg.pos0, Ts = sg.n;
        float* qs = q.data() + int64_t(sg.row0) * Q;
        float* ks = k.data() + int64_t(sg.row0) * KV;
        float* vs = v.data() + int64_t(sg.row0) * KV;
        cpu::rope(qs, Q, Ts, n, d, pos0, cfg_.rope_base, 1.0);
        cpu::rope(ks, KV, Ts, nkv, d, pos0, cfg_.rope_base, 1.0);
        for (int t = 0; t < Ts; t++) cache.append(l, pos0 + t, ks + int64_t(t) * KV, vs + int64_t(t) * KV);
        cache.attention(att.data() + int64_t(sg.row0) * Q, qs, Q, n, l, Ts, pos0, pool_);
      }
      cpu::linear(tmp.data(), att.data(), lw.attn_c_proj, T, pool_);
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
      cpu::rmsnorm(h.data(), x.data(), ln2_[size_t(l)].data(), T, H, cfg_.rms_eps);
      cpu::linear(a.data(), h.data(), lw.w1, T, pool_);  // up
      cpu::linear(b.data(), h.data(), lw.w2, T, pool_);  // gate
      cpu::swiglu(a.data(), a.data(), b.data(), int64_t(T) * F);
      cpu::linear(tmp.data(), a.data(), lw.mlp_c_proj, T, pool_);  // down
      for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
    }
  }

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
