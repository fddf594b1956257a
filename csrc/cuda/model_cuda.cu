// The CUDA backend: SPEC 3's forward pass on one GPU with the kernels of this folder.
// - Weights are uploaded once at load into one device allocation: matrices and wte in the
//   checkpoint's 16-bit type (BF16 or F16, kept as stored; F32 checkpoints are converted to
//   BF16 at load, and a tensor whose type differs from wte's is converted to that type), norm
//   weights and biases as fp32. w1 and w2 are stacked into one [2F, H] matrix (one GEMM at
//   prefill, one fused GEMV + SwiGLU at decode).
// - Activations: the residual stream and every matmul output are fp32; matmul inputs (normed h,
//   q, attention output, SwiGLU output) and the KV cache are in the weights' 16-bit type.
// - Decode (T == 1) is one CUDA graph per cache, captured at its first decode step: the token id
//   and position are read from device memory (copied in before the replay), so the same graph
//   serves every step; the only host sync is the one after the logits copy.
// - Prefill (T > 1) runs in passes of at most kChunk tokens (this bounds the workspace; causal
//   attention over the cache makes chunked prefill equal one-shot prefill), with tensor-core GEMMs
//   and flash attention (head_dim 64/128; other head sizes use the split-KV kernel).
// - No global state: each backend owns its stream, workspace and weights; every entry point sets
//   its device first (calls come from different threads); destruction frees VRAM at once.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "../core/backend.h"
#include "../core/error.h"
#include "ops.cuh"

namespace qwen {

using cuda::DT;

namespace {

constexpr int kChunk = 512;         // prefill tokens per pass
constexpr int kLmRows = 64;         // lm_head rows per pass when every position's logits are wanted
constexpr int kKeysPerSplit = 256;  // decode attention: keys per split-KV block

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", double(bytes) / double(1ull << 30));
  return buf;
}
size_t align256(size_t b) { return (b + 255) & ~size_t(255); }

struct DevLinear {
  const void* w = nullptr;   // [out, in] in the model's 16-bit type
  const float* b = nullptr;  // [out] fp32, or null
  int in = 0, out = 0;
};
struct DevLayer {
  const float* ln1 = nullptr;
  DevLinear c_attn, attn_proj;
  const float* ln2 = nullptr;
  DevLinear w12, mlp_proj;  // w12 = [w1; w2]: [2F, H]
};

class CudaBackend;

class CudaCache : public KvCache {
 public:
  const CudaBackend* owner = nullptr;
  int device = 0;
  void* mem = nullptr;  // one allocation: k, v [L, n, cap, d], inv_freq [d/2], partial
  size_t bytes_ = 0, layer_bytes = 0;
  char* k = nullptr;
  char* v = nullptr;
  float* inv_freq = nullptr;
  float* partial = nullptr;  // decode attention partials [n, splits, d + 2]
  int splits = 1;
  double alpha_uploaded = -1.0;
  cudaGraphExec_t graph = nullptr;
  std::shared_ptr<std::atomic<size_t>> live;

  ~CudaCache() override {
    cudaSetDevice(device);
    if (graph) cudaGraphExecDestroy(graph);
    if (mem) cudaFree(mem);
    if (live) *live -= bytes_;
  }
  size_t bytes() const override { return bytes_; }
  void* k_layer(int l) { return k + size_t(l) * layer_bytes; }
  void* v_layer(int l) { return v + size_t(l) * layer_bytes; }
};

class CudaBackend : public Backend {
 public:
  CudaBackend(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt, const ProgressFn& progress)
      : cfg_(cfg) {
    check_supported(cfg, w, opt);
    const int count = cuda_device_count();
    if (count == 0) throw Error("device \"cuda\": no CUDA GPU or driver was found (cudaGetDeviceCount reports none)");
    if (opt.device_index < 0 || opt.device_index >= count)
      throw Error("cuda: deviceIndex " + std::to_string(opt.device_index) + " is out of range: " +
                  std::to_string(count) + " GPU(s) visible");
    dev_ = opt.device_index;
    CK(cudaSetDevice(dev_));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev_));
    gpu_name_ = prop.name;
    if (prop.major < 8)
      throw Error("cuda: " + gpu_name_ + " (compute capability " + std::to_string(prop.major) + "." +
                  std::to_string(prop.minor) + ") is not supported; qwen-native needs sm_80 or newer");
    dt_ = w.wte.dtype == DType::F16 ? DT::F16 : DT::BF16;
    live_kv_ = std::make_shared<std::atomic<size_t>>(0);
    try {
      load(w, progress);
    } catch (...) {
      release();
      throw;
    }
  }

  ~CudaBackend() override { release(); }

  std::string name() const override {
    return "cuda:" + std::to_string(dev_) + " (" + gpu_name_ + ", " + cuda::dt_name(dt_) + ")";
  }

  std::unique_ptr<KvCache> new_cache(int capacity) override {
    std::lock_guard<std::mutex> lock(mu_);
    CK(cudaSetDevice(dev_));
    if (capacity < 1) throw Error("cuda: a KV cache needs a capacity of at least 1 position");
    const int L = cfg_.num_layers, n = cfg_.num_heads, d = cfg_.head_dim;
    auto c = std::make_unique<CudaCache>();
    c->owner = this;
    c->device = dev_;
    c->capacity = capacity;
    c->splits = std::max(1, cuda::ceil_div(capacity, kKeysPerSplit));
    c->layer_bytes = align256(size_t(n) * size_t(capacity) * d * 2);
    const size_t kv = 2 * size_t(L) * c->layer_bytes;
    const size_t extra = align256(size_t(d / 2) * 4) +
                         align256(cuda::attention_decode_partial_floats(1, n, d, c->splits) * 4 + 4);
    const size_t total = kv + extra;
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    if (total > free_b)
      throw Error("cuda: a KV cache of " + std::to_string(capacity) + " positions needs " + gib(total) + " GiB, " +
                  gib(free_b) + " GiB free on " + gpu_name_ + " (lower contextLength)");
    CK(cudaMalloc(&c->mem, total));
    c->bytes_ = total;
    c->live = live_kv_;
    *live_kv_ += total;
    char* p = static_cast<char*>(c->mem);
    c->k = p;
    c->v = p + size_t(L) * c->layer_bytes;
    c->inv_freq = reinterpret_cast<float*>(p + kv);
    c->partial = reinterpret_cast<float*>(p + kv + align256(size_t(d / 2) * 4));
    return c;
  }

  MemoryReport memory() const override {
    MemoryReport r;
    r.weights = weight_bytes_;
    r.kv_cache = live_kv_->load();
    r.workspace = ws_bytes_;
    return r;
  }

  void forward(KvCache& base, const int32_t* ids, int T, float* logits, bool all_logits) override {
    std::lock_guard<std::mutex> lock(mu_);
    CK(cudaSetDevice(dev_));
    CudaCache* c = dynamic_cast<CudaCache*>(&base);
    if (!c || c->owner != this) throw Error("cuda: this KV cache was not made by this model");
    if (T < 1 || c->length + T > c->capacity) throw Error("cuda: forward past the KV cache's capacity");
    upload_rope_table(*c);
    const int pos0 = c->length;
    if (T == 1) {
      decode_step(*c, ids[0], pos0, logits);
      return;
    }
    const int H = cfg_.hidden_size, V = cfg_.vocab_size;
    for (int start = 0; start < T; start += kChunk) {
      const int rows = std::min(kChunk, T - start);
      std::memcpy(pinned_, ids + start, size_t(rows) * 4);
      pinned_[kChunk] = pos0 + start;
      CK(cudaMemcpyAsync(step_, pinned_, (kChunk + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      run_layers(*c, rows, pos0 + start);
      if (all_logits) {
        for (int r0 = 0; r0 < rows; r0 += kLmRows) {
          const int nr = std::min(kLmRows, rows - r0);
          cuda::rmsnorm(h_, x_ + size_t(r0) * H, lnf_, nr, H, cfg_.rms_eps, dt_, stream_);
          cuda::linear(logits_, h_, lm_head_.w, lm_head_.b, nr, V, H, false, dt_, stream_);
          CK(cudaMemcpyAsync(logits + size_t(start + r0) * V, logits_, size_t(nr) * V * 4, cudaMemcpyDeviceToHost,
                             stream_));
        }
      } else if (start + rows == T) {
        cuda::rmsnorm(h_, x_ + size_t(rows - 1) * H, lnf_, 1, H, cfg_.rms_eps, dt_, stream_);
        cuda::gemv(logits_, h_, lm_head_.w, lm_head_.b, V, H, false, dt_, stream_);
        CK(cudaMemcpyAsync(logits, logits_, size_t(V) * 4, cudaMemcpyDeviceToHost, stream_));
      }
      // The pinned ids are rewritten by the next pass; wait for this one.
      CK(cudaStreamSynchronize(stream_));
    }
  }

 private:
  static void check_supported(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt) {
    if (opt.kv_cache != KvCacheType::Float)
      throw Error("cuda: kvCache \"int8\" is not implemented on the CUDA backend yet (use kvCache \"float\")");
    for (const auto& l : w.layers)
      for (const Linear* lin : {&l.c_attn, &l.attn_c_proj, &l.w1, &l.w2, &l.mlp_c_proj})
        if (lin->quantized())
          throw Error("cuda: GPTQ-quantized checkpoints are not supported by the CUDA backend yet (" +
                      lin->qweight.name + "); use device \"cpu\"");
    if (w.lm_head.quantized()) throw Error("cuda: a GPTQ-quantized lm_head is not supported");
    const int d = cfg.head_dim;
    if (d < 8 || d > 256 || (d & (d - 1)) != 0)
      throw Error("cuda: head_dim (kv_channels) " + std::to_string(d) + " is not supported (8..256, a power of two)");
    if (cfg.hidden_size % 8 != 0 || cfg.ffn_size % 8 != 0)
      throw Error("cuda: hidden_size and intermediate_size/2 must be multiples of 8 (got " +
                  std::to_string(cfg.hidden_size) + ", " + std::to_string(cfg.ffn_size) + ")");
    if (cfg.hidden_size != cfg.num_heads * d)
      throw Error("cuda: hidden_size must equal num_attention_heads * kv_channels");
  }

  // One tensor (or zeros) going to one place of the weight allocation.
  struct Upload {
    const Tensor* src;  // null: zero-fill
    size_t offset;      // bytes into the allocation
    int64_t count;      // elements
    bool to_f32;        // fp32 destination (norms, biases), else the model's 16-bit type
  };

  void load(const ModelWeights& w, const ProgressFn& progress) {
    const int H = cfg_.hidden_size, F = cfg_.ffn_size, V = cfg_.vocab_size, L = cfg_.num_layers;
    std::vector<Upload> ups;
    size_t off = 0;
    auto place = [&](const Tensor* t, int64_t count, bool f32) {
      const size_t at = off;
      ups.push_back({t, at, count, f32});
      off = align256(off + size_t(count) * (f32 ? 4 : 2));
      return at;
    };
    // Stacked matrices/biases: consecutive places, no padding between the halves.
    auto place2 = [&](const Tensor* a, const Tensor* b, int64_t count_each, bool f32) {
      const size_t at = off, esz = f32 ? 4 : 2;
      ups.push_back({a, at, count_each, f32});
      ups.push_back({b, at + size_t(count_each) * esz, count_each, f32});
      off = align256(off + 2 * size_t(count_each) * esz);
      return at;
    };
    struct Offsets {
      size_t ln1, ca_w, ca_b, ap_w, ap_b, ln2, w12, b12, mp_w, mp_b;
    };
    const size_t none = ~size_t(0);
    const size_t wte_at = place(&w.wte, int64_t(V) * H, false);
    std::vector<Offsets> lo(static_cast<size_t>(L));
    for (int l = 0; l < L; l++) {
      const LayerWeights& lw = w.layers[size_t(l)];
      Offsets& o = lo[size_t(l)];
      o.ln1 = place(&lw.ln_1, H, true);
      o.ca_w = place(&lw.c_attn.weight, int64_t(3) * H * H, false);
      o.ca_b = lw.c_attn.bias.empty() ? none : place(&lw.c_attn.bias, 3 * H, true);
      o.ap_w = place(&lw.attn_c_proj.weight, int64_t(H) * H, false);
      o.ap_b = lw.attn_c_proj.bias.empty() ? none : place(&lw.attn_c_proj.bias, H, true);
      o.ln2 = place(&lw.ln_2, H, true);
      o.w12 = place2(&lw.w1.weight, &lw.w2.weight, int64_t(F) * H, false);
      o.b12 = lw.w1.bias.empty() && lw.w2.bias.empty()
                  ? none
                  : place2(lw.w1.bias.empty() ? nullptr : &lw.w1.bias, lw.w2.bias.empty() ? nullptr : &lw.w2.bias, F, true);
      o.mp_w = place(&lw.mlp_c_proj.weight, int64_t(H) * F, false);
      o.mp_b = lw.mlp_c_proj.bias.empty() ? none : place(&lw.mlp_c_proj.bias, H, true);
    }
    const size_t lnf_at = place(&w.ln_f, H, true);
    const size_t lm_at = place(&w.lm_head.weight, int64_t(V) * H, false);
    const size_t lmb_at = w.lm_head.bias.empty() ? none : place(&w.lm_head.bias, V, true);
    weight_bytes_ = off;
    for (const Upload& u : ups)
      if (u.src && u.src->numel() != u.count)
        throw Error("cuda: tensor " + u.src->name + " has " + std::to_string(u.src->numel()) + " elements, expected " +
                    std::to_string(u.count));

    // Workspace (see the member comments for shapes).
    size_t ws = 0;
    auto wplace = [&](size_t bytes) {
      const size_t at = ws;
      ws = align256(ws + bytes);
      return at;
    };
    const size_t x_at = wplace(size_t(kChunk) * H * 4), h_at = wplace(size_t(kChunk) * H * 2),
                 qkv_at = wplace(size_t(kChunk) * 3 * H * 4), q_at = wplace(size_t(kChunk) * H * 2),
                 att_at = wplace(size_t(kChunk) * H * 2), ab_at = wplace(size_t(kChunk) * 2 * F * 4),
                 g_at = wplace(size_t(kChunk) * F * 2), lg_at = wplace(size_t(kLmRows) * V * 4),
                 st_at = wplace(size_t(kChunk + 1) * 4);
    ws_bytes_ = ws;

    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    if (weight_bytes_ + ws_bytes_ > free_b)
      throw Error("cuda: loading needs " + gib(weight_bytes_ + ws_bytes_) + " GiB, " + gib(free_b) + " GiB free on " +
                  gpu_name_);
    CK(cudaMalloc(&wmem_, weight_bytes_));
    CK(cudaMalloc(&ws_, ws_bytes_));
    CK(cudaMallocHost(reinterpret_cast<void**>(&pinned_), (kChunk + 1) * sizeof(int32_t)));
    CK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

    // Bind the device pointers.
    char* wb = static_cast<char*>(wmem_);
    auto fp = [&](size_t at) { return at == none ? nullptr : reinterpret_cast<const float*>(wb + at); };
    wte_ = wb + wte_at;
    layers_.resize(static_cast<size_t>(L));
    for (int l = 0; l < L; l++) {
      const Offsets& o = lo[size_t(l)];
      DevLayer& d = layers_[size_t(l)];
      d.ln1 = fp(o.ln1);
      d.c_attn = {wb + o.ca_w, fp(o.ca_b), H, 3 * H};
      d.attn_proj = {wb + o.ap_w, fp(o.ap_b), H, H};
      d.ln2 = fp(o.ln2);
      d.w12 = {wb + o.w12, fp(o.b12), H, 2 * F};
      d.mlp_proj = {wb + o.mp_w, fp(o.mp_b), F, H};
    }
    lnf_ = fp(lnf_at);
    lm_head_ = {wb + lm_at, fp(lmb_at), H, V};
    char* wsb = static_cast<char*>(ws_);
    x_ = reinterpret_cast<float*>(wsb + x_at);
    h_ = wsb + h_at;
    qkv_ = reinterpret_cast<float*>(wsb + qkv_at);
    q_ = wsb + q_at;
    att_ = wsb + att_at;
    ab_ = reinterpret_cast<float*>(wsb + ab_at);
    g_ = wsb + g_at;
    logits_ = reinterpret_cast<float*>(wsb + lg_at);
    step_ = reinterpret_cast<int32_t*>(wsb + st_at);

    // Upload, converting where the stored type differs, reporting progress by source bytes.
    size_t total = 0, done = 0;
    for (const Upload& u : ups) total += u.src ? u.src->nbytes() : 0;
    const int64_t kStage = int64_t(1) << 23;  // elements per conversion/copy chunk
    std::vector<float> f32;
    std::vector<uint16_t> h16;
    for (const Upload& u : ups) {
      char* dst = wb + u.offset;
      const size_t esz = u.to_f32 ? 4 : 2;
      if (!u.src) {
        CK(cudaMemset(dst, 0, size_t(u.count) * esz));
        continue;
      }
      const Tensor& t = *u.src;
      const bool same = u.to_f32 ? t.dtype == DType::F32
                                 : (t.dtype == DType::BF16 && dt_ == DT::BF16) || (t.dtype == DType::F16 && dt_ == DT::F16);
      for (int64_t i0 = 0; i0 < u.count; i0 += kStage) {
        const int64_t nel = std::min(kStage, u.count - i0);
        const char* src = static_cast<const char*>(t.data) + size_t(i0) * dtype_size(t.dtype);
        if (same) {
          CK(cudaMemcpy(dst + size_t(i0) * esz, src, size_t(nel) * esz, cudaMemcpyHostToDevice));
        } else {
          f32.resize(static_cast<size_t>(nel));
          to_f32(t.dtype, src, f32.data(), size_t(nel));
          if (u.to_f32) {
            CK(cudaMemcpy(dst + size_t(i0) * 4, f32.data(), size_t(nel) * 4, cudaMemcpyHostToDevice));
          } else {
            h16.resize(static_cast<size_t>(nel));
            for (int64_t i = 0; i < nel; i++)
              h16[size_t(i)] = dt_ == DT::BF16 ? f32_to_bf16(f32[size_t(i)]) : cuda::f32_to_f16_host(f32[size_t(i)]);
            CK(cudaMemcpy(dst + size_t(i0) * 2, h16.data(), size_t(nel) * 2, cudaMemcpyHostToDevice));
          }
        }
        done += size_t(nel) * dtype_size(t.dtype);
        if (progress) progress(total ? double(done) / double(total) : 1.0);
      }
    }
    CK(cudaDeviceSynchronize());  // the last copies may still be in flight (pageable source)
    if (progress) progress(1.0);
    const char* env = std::getenv("QWEN_CUDA_GRAPH");
    use_graph_ = !(env && std::strcmp(env, "0") == 0);
  }

  void release() noexcept {
    cudaSetDevice(dev_);
    if (stream_) cudaStreamDestroy(stream_);
    if (pinned_) cudaFreeHost(pinned_);
    if (ws_) cudaFree(ws_);
    if (wmem_) cudaFree(wmem_);
    stream_ = nullptr;
    pinned_ = nullptr;
    ws_ = wmem_ = nullptr;
  }

  // inv_freq[j] = 1 / base'^(2j/d), base' = base * alpha^(d/(d-2)), exactly as cpu::rope.
  void upload_rope_table(CudaCache& c) {
    if (c.alpha_uploaded == c.ntk_alpha) return;
    const int d = cfg_.head_dim, d2 = d / 2;
    const float base_ntk = float(cfg_.rope_base * std::pow(c.ntk_alpha, double(d) / double(d - 2)));
    std::vector<float> inv(static_cast<size_t>(d2));
    for (int j = 0; j < d2; j++) inv[size_t(j)] = 1.0f / std::pow(base_ntk, float(2 * j) / float(d));
    CK(cudaMemcpyAsync(c.inv_freq, inv.data(), size_t(d2) * 4, cudaMemcpyHostToDevice, stream_));
    CK(cudaStreamSynchronize(stream_));
    c.alpha_uploaded = c.ntk_alpha;
  }

  // The layers for `rows` tokens whose ids and position are already in step_ (device).
  void run_layers(CudaCache& c, int rows, int pos0) {
    const int H = cfg_.hidden_size, n = cfg_.num_heads, d = cfg_.head_dim, F = cfg_.ffn_size, cap = c.capacity;
    const int* pos_dev = step_ + kChunk;
    const int logn_len = cfg_.use_logn_attn ? cfg_.seq_length : 0;
    cudaStream_t s = stream_;
    cuda::embedding(x_, wte_, step_, rows, H, dt_, s);
    for (int l = 0; l < cfg_.num_layers; l++) {
      const DevLayer& L = layers_[size_t(l)];
      void* kl = c.k_layer(l);
      void* vl = c.v_layer(l);
      cuda::rmsnorm(h_, x_, L.ln1, rows, H, cfg_.rms_eps, dt_, s);
      cuda::linear(qkv_, h_, L.c_attn.w, nullptr, rows, 3 * H, H, false, dt_, s);
      cuda::qkv_rope_append(q_, kl, vl, cap, qkv_, L.c_attn.b, c.inv_freq, pos_dev, rows, n, d, logn_len, dt_, s);
      if (rows == 1)
        cuda::attention_decode(att_, q_, kl, vl, cap, pos_dev, 1, n, d, c.splits, c.partial, dt_, s);
      else if (cuda::attention_prefill_supported(d))
        cuda::attention_prefill(att_, q_, kl, vl, cap, pos0, rows, n, d, dt_, s);
      else
        cuda::attention_decode(att_, q_, kl, vl, cap, pos_dev, rows, n, d, 1, nullptr, dt_, s);
      cuda::linear(x_, att_, L.attn_proj.w, L.attn_proj.b, rows, H, H, true, dt_, s);
      cuda::rmsnorm(h_, x_, L.ln2, rows, H, cfg_.rms_eps, dt_, s);
      if (rows == 1) {
        cuda::gemv_swiglu(g_, h_, L.w12.w, L.w12.b, F, H, dt_, s);
      } else {
        cuda::linear(ab_, h_, L.w12.w, L.w12.b, rows, 2 * F, H, false, dt_, s);
        cuda::swiglu(g_, ab_, rows, F, dt_, s);
      }
      cuda::linear(x_, g_, L.mlp_proj.w, L.mlp_proj.b, rows, H, F, true, dt_, s);
    }
  }

  void decode_kernels(CudaCache& c, int pos0) {
    run_layers(c, 1, pos0);
    cuda::rmsnorm(h_, x_, lnf_, 1, cfg_.hidden_size, cfg_.rms_eps, dt_, stream_);
    cuda::gemv(logits_, h_, lm_head_.w, lm_head_.b, cfg_.vocab_size, cfg_.hidden_size, false, dt_, stream_);
  }

  void decode_step(CudaCache& c, int32_t id, int pos0, float* logits) {
    pinned_[0] = id;
    pinned_[kChunk] = pos0;
    CK(cudaMemcpyAsync(step_, pinned_, (kChunk + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    if (!use_graph_) {
      decode_kernels(c, pos0);
    } else {
      if (!c.graph) {
        cudaGraph_t g = nullptr;
        CK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        try {
          decode_kernels(c, pos0);
        } catch (...) {
          cudaStreamEndCapture(stream_, &g);
          if (g) cudaGraphDestroy(g);
          cudaGetLastError();
          throw;
        }
        CK(cudaStreamEndCapture(stream_, &g));
        cudaError_t e = cudaGraphInstantiate(&c.graph, g, 0);
        cudaGraphDestroy(g);
        if (e != cudaSuccess) {
          c.graph = nullptr;
          cuda::throw_cuda(e, "cudaGraphInstantiate (decode step)");
        }
      }
      CK(cudaGraphLaunch(c.graph, stream_));
    }
    CK(cudaMemcpyAsync(logits, logits_, size_t(cfg_.vocab_size) * 4, cudaMemcpyDeviceToHost, stream_));
    CK(cudaStreamSynchronize(stream_));
  }

  const ModelConfig cfg_;
  int dev_ = 0;
  std::string gpu_name_;
  DT dt_ = DT::BF16;
  bool use_graph_ = true;
  std::mutex mu_;
  cudaStream_t stream_ = nullptr;
  // Weights: one allocation.
  void* wmem_ = nullptr;
  size_t weight_bytes_ = 0;
  const void* wte_ = nullptr;
  std::vector<DevLayer> layers_;
  const float* lnf_ = nullptr;
  DevLinear lm_head_;
  // Workspace: one allocation, sized for kChunk tokens.
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  float* x_ = nullptr;       // [kChunk, H] fp32 residual stream
  void* h_ = nullptr;        // [kChunk, H] normed activations (16-bit)
  float* qkv_ = nullptr;     // [kChunk, 3H] fp32 c_attn output (bias added in qkv_rope_append)
  void* q_ = nullptr;        // [kChunk, n, d] roped, logn-scaled queries (16-bit)
  void* att_ = nullptr;      // [kChunk, H] attention output (16-bit)
  float* ab_ = nullptr;      // [kChunk, 2F] fp32 w1|w2 outputs (prefill)
  void* g_ = nullptr;        // [kChunk, F] SwiGLU output (16-bit)
  float* logits_ = nullptr;  // [kLmRows, V] fp32
  int32_t* step_ = nullptr;  // [kChunk] ids, then pos0 (device)
  int32_t* pinned_ = nullptr;  // host mirror of step_ (pinned)
  std::shared_ptr<std::atomic<size_t>> live_kv_;
};

}  // namespace

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: "no driver" is an answer here, not a failure
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt,
                                           const ProgressFn& progress) {
  return std::make_unique<CudaBackend>(cfg, w, opt, progress);
}

}  // namespace qwen
