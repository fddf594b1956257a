// The CUDA backend: SPEC 3's forward pass (and SPEC 10's qwen2/qwen3) on one GPU with the kernels
// of this folder.
// - qwen2/qwen3 (SPEC 10): q_proj | k_proj | v_proj are stacked at load into one [Q + 2KV, H]
//   matrix (Q = n*d, KV = n_kv*d) and run as the fused c_attn product (GPTQ: three products into
//   the column slices of the same fp32 output); their biases are stacked likewise and added in the
//   rope/append kernel, which also applies qwen3's per-head q/k RMSNorm before rope. The KV cache
//   holds n_kv heads; both attention kernels serve a KV head's n / n_kv query heads from one read
//   of each K/V row (GQA). o_proj is [H, Q] (Q != H for qwen3). A tied lm_head reads its own
//   device copy of the embedding table (shared with wte when QWEN_WTE_ON_DEVICE=1).
// - Weights are uploaded once at load into one device allocation: matrices (and wte, with
//   QWEN_WTE_ON_DEVICE=1; see below) in the
//   checkpoint's 16-bit type (BF16 or F16, kept as stored; F32 checkpoints are converted to
//   BF16 at load, and a tensor whose type differs from wte's is converted to that type), norm
//   weights and biases as fp32. w1 and w2 are stacked into one [2F, H] matrix (one GEMM at
//   prefill, one fused GEMV + SwiGLU at decode).
// - GPTQ checkpoints (SPEC 4): each quantized linear is repacked at load (gptq.cu: rows sorted
//   by group for act-order, columns of packed rows, fp16 scale + zero per group); decode runs the
//   fused dequant GEMV (w1/w2 + SwiGLU in one kernel; int4 + fp16 uses the v2 kernel unless
//   QWEN_GPTQ_GEMV=v1), prefill dequantizes the layer slice by slice into a bounded workspace
//   matrix (kDeqBytes) and runs the tensor-core GEMM per slice. Biases fp32; wte, lm_head, norms
//   as stored.
// - wte (the [V, H] embedding, 1.24 GB at 7B) is not in device memory by default: it stays in
//   host memory, page-locked and mapped (the checkpoint's own pages registered read-only, or, if
//   the driver refuses that or the type must be converted, a pinned copy), and the embedding
//   kernel reads one row per token over PCIe (also inside the decode graph). memory().weights
//   counts device bytes only; memory().host_weights reports wte. QWEN_WTE_ON_DEVICE=1: on device.
// - Greedy decoding (forward_argmax): the argmax of the last logits runs on the device and only
//   the token id comes back (QWEN_DEVICE_ARGMAX=0: the logits are copied, the host takes it).
// - kvCache "int8" (SPEC 5): uint8 K/V with one (scale, zero) per (token, head), quantized in the
//   rope/append kernel, dequantized inside both attention kernels.
// - Activations: the residual stream and every matmul output are fp32; matmul inputs (normed h,
//   q, attention output, SwiGLU output) and the KV cache are in the weights' 16-bit type.
// - Decode (T == 1) is one CUDA graph per cache, captured at its first decode step: the token id
//   and position are read from device memory (copied in before the replay), so the same graph
//   serves every step; the only host sync is the one after the logits copy.
// - Prefill (T > 1) runs in passes of at most chunk_ tokens (this bounds the workspace; causal
//   attention over the cache makes chunked prefill equal one-shot prefill), with tensor-core GEMMs
//   and flash attention (head_dim 64/128; other head sizes use the split-KV kernel).
// - Continuous batching (forward_batch, called by the Engine): the sequences that feed one token
//   run as one decode step of up to 16 rows (gemv_batched / gptq_batched read each weight once
//   for bf16/fp16 and int4 layers;
//   rope and attention find each row's cache through a KvBatchRow table copied in first, so one
//   graph per batch size serves any set of sequences); prompt chunks of several sequences share
//   prefill passes (one matrix product over their rows, attention per sequence). A batch row
//   is not bit-identical to the sequence run alone (other summation order).
// - No global state: each backend owns its stream, workspace and weights; every entry point sets
//   its device first (calls come from different threads); destruction frees VRAM at once.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <map>
#include <mutex>
#include <unistd.h>
#include <vector>

#include "../core/backend.h"
#include "../core/error.h"
#include "ops.cuh"

namespace qwen {

using cuda::DT;

namespace {

// Prefill tokens per pass of run() (QWEN_PREFILL_CHUNK overrides: 64..8192). 2048 rows give the
// 128 x 256 tiles of the sm90 GEMM enough blocks to fill the GPU on 1.8B's 2048-wide products;
// the workspace grows with it (7B: ~0.3 GB at 2048).
constexpr int kDefaultChunk = 2048;
// Prompt tokens the Engine feeds in one step, over all its sequences (prefill_chunk()): smaller
// than a pass, so that the other sequences' decoding goes on between a long prompt's passes.
constexpr int kEngineChunk = 512;
constexpr int kLmRows = 64;         // lm_head rows per pass when every position's logits are wanted
// Decode attention: split-KV ranges per (KV head, query) at most. The kernel sizes the ranges from
// the live length (at least 32 keys each), so short contexts use few ranges and long ones up to
// 64 (7B at 4096 tokens: 64 x 32 blocks of 64 keys).
constexpr int kMaxSplits = 64;
// GPTQ prefill: dequantized-slice scratch, at most. 96 MiB holds the largest 7B layer (c_attn,
// 12288 x 4096 fp16) whole; wider layers run in slices (each a separate, smaller GEMM).
constexpr size_t kDeqBytes = size_t(96) << 20;

bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, value) == 0;
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", double(bytes) / double(1ull << 30));
  return buf;
}
size_t align256(size_t b) { return (b + 255) & ~size_t(255); }

struct DevLinear {
  const void* w = nullptr;   // [out, in] in the model's 16-bit type (dense)
  const float* b = nullptr;  // [out] fp32, or null
  int in = 0, out = 0;
  bool quant = false;        // GPTQ: q holds the repacked layer, w is null
  cuda::GptqDev q;
};
struct DevLayer {
  const float* ln1 = nullptr;
  // c_attn: v1's fused q|k|v, or qwen2/qwen3's stacked [q_proj; k_proj; v_proj] ([Q + 2KV, H]);
  // c_attn.b is the stacked bias either way (added in the rope kernel). GPTQ qwen2/qwen3: qkv_split,
  // q/k/v in qp/kp/vp (c_attn.w unused).
  DevLinear c_attn, attn_proj;
  bool qkv_split = false;
  DevLinear qp, kp, vp;
  const float* qn = nullptr;  // qwen3 q_norm [d] fp32, else null
  const float* kn = nullptr;  // qwen3 k_norm [d] fp32, else null
  const float* ln2 = nullptr;
  DevLinear w12, mlp_proj;  // dense: w12 = [w1; w2]: [2F, H]; GPTQ: w1, w2 below, w12.b = [b1; b2]
  DevLinear w1, w2;
};

class CudaBackend;

static_assert(cuda::kKvPage == kKvPage, "the kernels and the core page KV caches alike");

// The device memory of one backend's KV caches: pages (every layer's K and V rows of kKvPage
// positions) and each cache's table block (page table + rope table, rounded up to a power of
// two), cudaMalloc'd as needed and kept on a free list per size when a cache lets them go, up
// to keep_bytes in all, so that the next sequences take them without a cudaMalloc or a cudaFree
// (a cudaFree waits for the whole device). trim() hands the kept blocks back to the driver: the
// backend calls it when an allocation fails, and close() when it is destroyed, after which blocks
// given back are freed at once. Shared by the caches, which may outlive the backend.
struct KvPool {
  int device = 0;
  size_t page_bytes = 0;
  size_t keep_bytes = 0;
  std::string gpu;
  std::mutex mu;
  std::map<size_t, std::vector<char*>> free;
  size_t kept = 0;
  bool closed = false;
  ~KvPool() { trim(); }
  // A block of `bytes` (from the free list, or cudaMalloc after trimming the kept ones if need be);
  // throws Error naming `what` when the GPU has no room.
  char* take(size_t bytes, const std::string& what) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = free.find(bytes);
      if (it != free.end() && !it->second.empty()) {
        char* p = it->second.back();
        it->second.pop_back();
        kept -= bytes;
        return p;
      }
    }
    void* p = nullptr;
    for (int attempt = 0; attempt < 2; attempt++) {
      if (cudaMalloc(&p, bytes) == cudaSuccess) return static_cast<char*>(p);
      cudaGetLastError();
      trim();
    }
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    throw Error("cuda: out of memory for " + what + " (" + std::to_string(bytes >> 10) + " KiB), " + gib(free_b) +
                " GiB free on " + gpu + " (fewer concurrent sequences, shorter ones, or kvCache: 'int8')");
  }
  void give(char* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!closed && kept + bytes <= keep_bytes) {
        free[bytes].push_back(p);
        kept += bytes;
        return;
      }
    }
    cudaSetDevice(device);
    cudaFree(p);
  }
  void trim() {
    std::lock_guard<std::mutex> lock(mu);
    cudaSetDevice(device);
    for (auto& [bytes, list] : free)
      for (char* p : list) cudaFree(p);
    free.clear();
    kept = 0;
  }
  void close() {
    {
      std::lock_guard<std::mutex> lock(mu);
      closed = true;
    }
    trim();
  }
  size_t free_bytes() {
    std::lock_guard<std::mutex> lock(mu);
    return kept;
  }
};

// One sequence's cache: its pages (a page holds, for kKvPage positions, K then V rows of every
// layer [L][n_kv][kKvPage][d], then for int8 the (scale, zero) pairs of K then V [L][n_kv][kKvPage])
// and one block `aux` for the page table the kernels read (room for the limit's pages, so its
// address, and a graph captured with it, never change) and the rope table. The decode attention
// partials are the backend's (partial_): steps run one at a time on its stream.
class CudaCache : public KvCache {
 public:
  const CudaBackend* owner = nullptr;
  int device = 0;
  int layers = 0;
  bool int8 = false;  // uint8 k/v with (scale, zero) per (token, head); else the 16-bit type
  std::shared_ptr<KvPool> pool;
  std::vector<char*> pages;  // host copy of the table
  void* aux = nullptr;
  size_t aux_bytes = 0;
  char** table = nullptr;  // device [max_pages]
  int max_pages = 0;
  size_t plane_bytes = 0, sz_plane_bytes = 0;  // one layer's K (or V) rows / (scale, zero) pairs in a page
  float* inv_freq = nullptr;
  int splits = 1;  // decode attention split-KV ranges
  double alpha_uploaded = -1.0;
  cudaGraphExec_t graph = nullptr;
  std::shared_ptr<std::atomic<size_t>> live;

  ~CudaCache() override {
    cudaSetDevice(device);
    if (graph) cudaGraphExecDestroy(graph);
    if (live) *live -= bytes();
    for (char* p : pages) pool->give(p, pool->page_bytes);
    if (aux) pool->give(static_cast<char*>(aux), aux_bytes);
  }
  size_t bytes() const override { return pages.size() * (pool ? pool->page_bytes : 0) + aux_bytes; }
  // Layer l as the kernels address it: the page table and the byte offsets of its planes.
  cuda::KvLayer layer(int l) const {
    auto off = [](size_t b) { return reinterpret_cast<char*>(uintptr_t(b)); };
    const size_t L = size_t(layers), kv = 2 * L * plane_bytes;
    cuda::KvLayer r;
    r.pages = table;
    r.k = off(size_t(l) * plane_bytes);
    r.v = off((L + size_t(l)) * plane_bytes);
    r.ksz = off(kv + size_t(l) * sz_plane_bytes);
    r.vsz = off(kv + (L + size_t(l)) * sz_plane_bytes);
    return r;
  }
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
    sms_ = prop.multiProcessorCount;
    if (prop.major < 8)
      throw Error("cuda: " + gpu_name_ + " (compute capability " + std::to_string(prop.major) + "." +
                  std::to_string(prop.minor) + ") is not supported; qwen-native needs sm_80 or newer");
    dt_ = w.wte.dtype == DType::F16 ? DT::F16 : DT::BF16;
    if (const char* e = std::getenv("QWEN_PREFILL_CHUNK")) {
      const int v = std::atoi(e);
      if (v < 64 || v > 8192) throw Error("QWEN_PREFILL_CHUNK must be a number of tokens in [64, 8192], got \"" + std::string(e) + "\"");
      chunk_ = v;
    }
    int8_kv_ = opt.kv_cache == KvCacheType::Int8;
    live_kv_ = std::make_shared<std::atomic<size_t>>(0);
    {
      const size_t rows = size_t(cfg.num_kv_heads) * kKvPage;
      page_plane_bytes_ = align256(rows * size_t(cfg.head_dim) * (int8_kv_ ? 1 : 2));
      page_sz_plane_bytes_ = int8_kv_ ? align256(rows * sizeof(float2)) : 0;
      pool_ = std::make_shared<KvPool>();
      pool_->device = dev_;
      pool_->gpu = gpu_name_;
      pool_->page_bytes = 2 * size_t(cfg.num_layers) * (page_plane_bytes_ + page_sz_plane_bytes_);
      pool_->keep_bytes = std::min(size_t(1) << 30, size_t(prop.totalGlobalMem) / 16);
    }
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

  std::unique_ptr<KvCache> new_cache(int capacity, int limit) override {
    std::lock_guard<std::mutex> lock(mu_);
    CK(cudaSetDevice(dev_));
    return make_cache(capacity, limit);
  }

  // More pages until `capacity` positions (at most the limit) fit: taken from the pool, their
  // addresses appended to the device table on the stream (before any later step reads them).
  // Nothing moves, so a captured decode graph stays valid.
  void grow_cache(KvCache& base, int capacity) override {
    std::lock_guard<std::mutex> lock(mu_);
    CK(cudaSetDevice(dev_));
    CudaCache* c = dynamic_cast<CudaCache*>(&base);
    if (!c || c->owner != this) throw Error("cuda: this KV cache was not made by this model");
    add_pages(*c, std::min(capacity, c->max_positions()));
  }

  void add_pages(CudaCache& c, int capacity) {
    const size_t want = size_t(cuda::ceil_div(std::max(capacity, 1), kKvPage)), have = c.pages.size();
    if (want <= have) return;
    if (want > size_t(c.max_pages)) throw Error("cuda: a KV cache grown past its limit");
    // The new pages are the cache's only once the table holds them: until then a failure gives
    // them back and leaves the cache as it was.
    std::vector<char*> added;
    added.reserve(want - have);
    c.pages.reserve(want);
    const std::string what = "the KV cache: a page of " + std::to_string(kKvPage) + " positions";
    try {
      while (added.size() < want - have) added.push_back(pool_->take(pool_->page_bytes, what));
      CK(cudaMemcpyAsync(c.table + have, added.data(), added.size() * sizeof(char*), cudaMemcpyHostToDevice,
                         stream_));
    } catch (...) {
      for (char* p : added) pool_->give(p, pool_->page_bytes);
      throw;
    }
    c.pages.insert(c.pages.end(), added.begin(), added.end());
    *live_kv_ += added.size() * pool_->page_bytes;
    c.capacity = int(want) * kKvPage;
  }

  std::unique_ptr<CudaCache> make_cache(int capacity, int limit) {
    if (capacity < 1) throw Error("cuda: a KV cache needs a capacity of at least 1 position");
    limit = std::max(limit, capacity);
    const int d = cfg_.head_dim;
    auto c = std::make_unique<CudaCache>();
    c->owner = this;
    c->device = dev_;
    c->layers = cfg_.num_layers;
    c->int8 = int8_kv_;
    c->pool = pool_;
    c->plane_bytes = page_plane_bytes_;
    c->sz_plane_bytes = page_sz_plane_bytes_;
    c->limit = limit;
    c->max_pages = cuda::ceil_div(limit, kKvPage);
    // As a batched step's (batched_splits), and no more than 32-key ranges fill the limit.
    // H100, bench at contextLength 4224, 64 -> 33 splits (7B): seq.eval loop 157 -> 166 tok/s at
    // context 128, 143 -> 148 at 4096; via complete() 191 -> 191 and 162 -> 165.
    c->splits = std::min(batched_splits(1), cuda::ceil_div(limit, cuda::kDecodeMinKeysPerSplit));
    const size_t table = align256(size_t(c->max_pages) * sizeof(char*));
    size_t total = 1024;  // a power of two: few sizes, so freed blocks are taken again
    while (total < table + align256(size_t(d / 2) * 4)) total *= 2;
    c->aux = pool_->take(total, "a KV cache's page table");
    c->aux_bytes = total;
    c->live = live_kv_;
    *live_kv_ += total;
    char* p = static_cast<char*>(c->aux);
    c->table = reinterpret_cast<char**>(p);
    c->inv_freq = reinterpret_cast<float*>(p + table);
    add_pages(*c, capacity);
    return c;
  }

  MemoryReport memory() const override {
    MemoryReport r;
    r.weights = weight_bytes_;
    r.host_weights = wte_host_bytes_;
    r.kv_cache = live_kv_->load();
    r.kv_free = pool_->free_bytes();
    r.workspace = ws_bytes_ + bbytes_;
    return r;
  }

  void forward(KvCache& base, const int32_t* ids, int T, float* logits, bool all_logits) override {
    run(base, ids, T, logits, all_logits, nullptr);
  }

  bool forward_argmax(KvCache& base, const int32_t* ids, int T, int32_t* token_out) override {
    if (!device_argmax_) return false;  // QWEN_DEVICE_ARGMAX=0: the caller copies the logits
    run(base, ids, T, nullptr, false, token_out);
    return true;
  }

  // Continuous batching (Engine): the items that feed one token run as one batched decode step
  // (every weight read once for all of them with bf16/fp16 and int4 weights: gemv_batched /
  // gptq_batched; int8 layers run their GEMV per row up to 4 rows, then dequantize + GEMM: see
  // cuda::gptq_linear_ld), in groups of at most
  // kGemvBatchMax; prompt chunks of several sequences share prefill passes (up to chunk_ rows and
  // kGemvBatchMax sequences: one matrix product for all their rows, attention per sequence). A
  // lone item, or a chunk longer than chunk_, runs through run().
  void forward_batch(std::vector<BatchItem>& items) override {
    std::vector<BatchItem*> dec, pre;
    auto alone = [&](BatchItem& it) {
      it.argmax = it.token_out && device_argmax_;
      run(*it.cache, it.ids, it.n, it.argmax ? nullptr : it.logits, false, it.argmax ? it.token_out : nullptr,
          it.choice);
    };
    for (BatchItem& it : items) {
      if (items.size() > 1 && it.n == 1)
        dec.push_back(&it);
      else if (items.size() > 1 && it.n > 1 && it.n <= chunk_)
        pre.push_back(&it);
      else
        alone(it);
    }
    for (size_t i = 0; i < pre.size();) {
      size_t e = i;
      int rows = 0;
      while (e < pre.size() && e - i < size_t(cuda::kGemvBatchMax) && rows + pre[e]->n <= chunk_) rows += pre[e++]->n;
      if (e - i == 1)
        alone(*pre[i]);
      else
        prefill_batch(pre.data() + i, int(e - i));
      i = e;
    }
    for (size_t i = 0; i < dec.size(); i += cuda::kGemvBatchMax) {
      const size_t e = std::min(dec.size(), i + cuda::kGemvBatchMax);
      if (e - i == 1)
        alone(*dec[i]);
      else
        decode_batch(dec.data() + i, int(e - i));
    }
  }

  // Split-KV ranges per row of a decode step of B rows: enough for ~8 blocks an SM,
  // at least 4. (A fixed kMaxSplits launched mostly empty blocks at the usual lengths, where
  // 32-key ranges need few of them: H200, 16 rows of ~150 positions, 7B int4 step 4.92 ms with
  // 64 splits, 4.05 with 8, 4.05 with 4; 7B bf16 7.04 / 6.29 / 6.25 ms.) Depends on B alone, so
  // the graph captured per B stays valid.
  int batched_splits(int B) const {
    const int blocks = B * (cfg_.num_heads / cuda::attention_decode_heads_per_block(cfg_.num_heads, cfg_.num_kv_heads));
    return std::clamp(cuda::ceil_div(8 * sms_, blocks), 4, kMaxSplits);
  }

  // The engine feeds longer prompts in pieces of kEngineChunk tokens, so that the other
  // sequences' decoding goes on between them. A GPTQ model takes whole passes (chunk_): each
  // pass dequantizes every layer (gptq_matmul), a fixed cost that 512-row pieces paid four times
  // for what one 2048-row pass does once.
  int prefill_chunk() const override { return has_gptq_ ? chunk_ : std::min(kEngineChunk, chunk_); }

  // The cache of a batch item, checked: made by this model, room for n more positions, not the
  // cache of an earlier item of the same pass.
  CudaCache* batch_cache(BatchItem* const* items, int b) {
    BatchItem& it = *items[b];
    CudaCache* c = dynamic_cast<CudaCache*>(it.cache);
    if (!c || c->owner != this) throw Error("cuda: this KV cache was not made by this model");
    if (it.n < 1 || c->length + it.n > c->capacity) throw Error("cuda: forward past the KV cache's capacity");
    for (int o = 0; o < b; o++)
      if (items[o]->cache == it.cache) throw Error("cuda: a batched pass got the same KV cache twice");
    upload_rope_table(*c);
    return c;
  }

  // After a batched pass left row b's logits in logits_ and their argmax in bdev_->argmax: the
  // argmax (greedy items) or the logits go to each item; waits for the stream.
  void finish_rows(BatchItem* const* items, int B) {
    const int V = cfg_.vocab_size;
    bool any_argmax = false;
    for (int b = 0; b < B; b++) {
      BatchItem& it = *items[b];
      it.argmax = it.token_out && device_argmax_;
      any_argmax |= it.argmax;
      if (!it.argmax)
        CK(cudaMemcpyAsync(it.logits, logits_ + size_t(b) * V, size_t(V) * 4, cudaMemcpyDeviceToHost, stream_));
    }
    // Rows whose token is sampled or penalized: every row's token through sample_rows (the others
    // as plain argmaxes, which leave their logits as they are), after the logits copies above.
    const TokenChoice* choices[cuda::kGemvBatchMax] = {};  // B <= kGemvBatchMax (both callers)
    bool any_choice = false;
    for (int b = 0; b < B; b++)
      if (items[b]->argmax && !plain_argmax(items[b]->choice)) {
        choices[b] = items[b]->choice;
        any_choice = true;
      }
    if (any_choice) choose_on_device(choices, B, bdev_->argmax);
    if (any_argmax)
      CK(cudaMemcpyAsync(bstage_->argmax, bdev_->argmax, sizeof(int32_t) * size_t(B), cudaMemcpyDeviceToHost, stream_));
    CK(cudaStreamSynchronize(stream_));
    for (int b = 0; b < B; b++)
      if (items[b]->argmax) *items[b]->token_out = bstage_->argmax[b];
  }

  // One prefill pass over the prompt chunks of S (2..kGemvBatchMax) sequences, chunk_ rows at
  // most: their rows are concatenated for every matrix product (one weight read, a fuller GEMM
  // than S small ones); rope/append and attention run per sequence over its own cache. Eager.
  void prefill_batch(BatchItem* const* items, int S) {
    std::lock_guard<std::mutex> lock(mu_);
    CK(cudaSetDevice(dev_));
    ensure_batch_region();
    std::vector<Seg> segs(static_cast<size_t>(S));
    int rows = 0;
    for (int b = 0; b < S; b++) {
      CudaCache* c = batch_cache(items, b);
      const BatchItem& it = *items[b];
      segs[size_t(b)] = Seg{c, rows, it.n, c->length, &bdev_->rows[b].pos};
      bstage_->rows[b].pos = c->length;
      std::memcpy(pinned_ + rows, it.ids, size_t(it.n) * 4);
      rows += it.n;
    }
    CK(cudaMemcpyAsync(step_, pinned_, size_t(rows) * 4, cudaMemcpyHostToDevice, stream_));
    CK(cudaMemcpyAsync(bdev_, bstage_, sizeof(BatchStage), cudaMemcpyHostToDevice, stream_));
    run_layers(rows, segs.data(), S);
    const int H = cfg_.hidden_size;
    for (int b = 0; b < S; b++) {  // each sequence's last row, normed, as row b of h_
      const Seg& sg = segs[size_t(b)];
      cuda::rmsnorm(static_cast<char*>(h_) + size_t(b) * H * 2, x_ + size_t(sg.r0 + sg.n - 1) * H, lnf_, 1, H,
                    cfg_.rms_eps, dt_, stream_);
    }
    cuda::linear(logits_, h_, lm_head_.w, lm_head_.b, S, cfg_.vocab_size, H, false, dt_, stream_);
    cuda::argmax(bdev_->argmax, logits_, cfg_.vocab_size, stream_, S);
    finish_rows(items, S);
  }

  // One decode step of B (2..kGemvBatchMax) sequences: row b is items[b]'s token at its cache's
  // length. The per-row caches are described to the kernels by a KvBatchRow table copied in
  // before the step, so the captured graph depends only on B (one graph per B, made at first use).
  void decode_batch(BatchItem* const* items, int B) {
    std::lock_guard<std::mutex> lock(mu_);
    CK(cudaSetDevice(dev_));
    ensure_batch_region();
    for (int b = 0; b < B; b++) {
      CudaCache* c = batch_cache(items, b);
      BatchStage& st = *bstage_;
      st.ids[b] = items[b]->ids[0];
      cuda::KvBatchRow& r = st.rows[b];
      r.kv = c->layer(0);
      r.layer_bytes = (long long)c->plane_bytes;
      r.sz_layer_bytes = (long long)c->sz_plane_bytes;
      r.inv_freq = c->inv_freq;
      r.pos = c->length;
    }
    CK(cudaMemcpyAsync(bdev_, bstage_, sizeof(BatchStage), cudaMemcpyHostToDevice, stream_));
    if (!use_graph_) {
      decode_batch_kernels(B);
    } else {
      cudaGraphExec_t& ge = bgraphs_[size_t(B)];
      if (!ge) ge = capture([&] { decode_batch_kernels(B); }, "cudaGraphInstantiate (batched decode step)");
      CK(cudaGraphLaunch(ge, stream_));
    }
    finish_rows(items, B);
  }

  void decode_batch_kernels(int B) {
    run_layers(B, nullptr, 0, bdev_->rows, bdev_->ids);
    cuda::rmsnorm(h_, x_, lnf_, B, cfg_.hidden_size, cfg_.rms_eps, dt_, stream_);
    cuda::linear(logits_, h_, lm_head_.w, lm_head_.b, B, cfg_.vocab_size, cfg_.hidden_size, false, dt_, stream_);
    cuda::argmax(bdev_->argmax, logits_, cfg_.vocab_size, stream_, B);
  }

  // cudaMalloc that, when the GPU is full, hands the KV pool's kept blocks back and tries again;
  // throws Error naming `what`.
  void* dev_alloc(size_t bytes, const char* what) {
    void* p = nullptr;
    for (int attempt = 0; attempt < 2; attempt++) {
      if (cudaMalloc(&p, bytes) == cudaSuccess) return p;
      cudaGetLastError();
      pool_->trim();
    }
    throw Error(std::string("cuda: out of memory for ") + what + " (" + std::to_string(bytes >> 10) + " KiB) on " +
                gpu_name_);
  }

  // The batched step's table (pinned host staging and its device copy) and attention partials,
  // allocated at the first batched step: a model that never batches does not pay for them.
  void ensure_batch_region() {
    if (bdev_) return;
    const size_t partial = cuda::attention_decode_partial_floats(cuda::kGemvBatchMax, cfg_.num_heads, cfg_.head_dim,
                                                                 kMaxSplits) * 4;
    const size_t bytes = align256(sizeof(BatchStage)) + align256(partial);
    void* dev = dev_alloc(bytes, "the batched decoding workspace");
    void* host = nullptr;
    if (cudaMallocHost(&host, sizeof(BatchStage)) != cudaSuccess) {
      cudaGetLastError();
      cudaFree(dev);
      throw Error("cuda: out of pinned host memory for the batched decoding table");
    }
    bstage_ = new (host) BatchStage();
    bdev_ = static_cast<BatchStage*>(dev);
    bpartial_ = reinterpret_cast<float*>(static_cast<char*>(dev) + align256(sizeof(BatchStage)));
    bbytes_ = bytes;
  }

  // Queues the token choice of rows 0..B-1 of logits_ (choices[b] null: the plain argmax) into
  // dev_out[B]: their options and penalty ids staged in pinned memory and copied in, then
  // sample_rows. The caller syncs the stream before the staging is written again.
  void choose_on_device(const TokenChoice* const* choices, int B, int32_t* dev_out) {
    size_t n_ids = 0;
    for (int b = 0; b < B; b++)
      if (choices[b] && choices[b]->sampling.repetition_penalty != 1.0f) n_ids += size_t(choices[b]->n_penalty_ids);
    if (!srow_dev_ || n_ids > sid_cap_) {
      const size_t cap = std::max<size_t>({n_ids, 2 * sid_cap_, 4096});
      release_sample_region();
      CK(cudaMallocHost(reinterpret_cast<void**>(&srow_host_), sizeof(cuda::SampleRow) * cuda::kGemvBatchMax));
      CK(cudaMallocHost(reinterpret_cast<void**>(&sid_host_), cap * sizeof(int32_t)));
      srow_dev_ = static_cast<cuda::SampleRow*>(dev_alloc(sizeof(cuda::SampleRow) * cuda::kGemvBatchMax, "sampling"));
      sid_dev_ = static_cast<int32_t*>(dev_alloc(cap * sizeof(int32_t), "sampling"));
      sid_cap_ = cap;
    }
    int off = 0;
    for (int b = 0; b < B; b++) {
      cuda::SampleRow r;  // null: greedy, no penalty
      if (const TokenChoice* c = choices[b]) {
        const SamplingOptions& so = c->sampling;
        r.temperature = so.temperature;
        r.top_k = so.top_k;
        r.top_p = so.top_p;
        r.penalty = so.repetition_penalty;
        r.do_sample = so.do_sample ? 1 : 0;
        r.u = c->u;
        if (so.repetition_penalty != 1.0f) {
          r.ids_off = off;
          r.n_ids = c->n_penalty_ids;
          std::memcpy(sid_host_ + off, c->penalty_ids, size_t(c->n_penalty_ids) * sizeof(int32_t));
          off += c->n_penalty_ids;
        }
      }
      srow_host_[b] = r;
    }
    CK(cudaMemcpyAsync(srow_dev_, srow_host_, sizeof(cuda::SampleRow) * size_t(B), cudaMemcpyHostToDevice, stream_));
    if (off > 0)
      CK(cudaMemcpyAsync(sid_dev_, sid_host_, size_t(off) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    cuda::sample_rows(dev_out, logits_, cfg_.vocab_size, srow_dev_, sid_dev_, B, stream_);
  }

  void release_sample_region() {
    if (srow_host_) cudaFreeHost(srow_host_);
    if (sid_host_) cudaFreeHost(sid_host_);
    if (srow_dev_) cudaFree(srow_dev_);
    if (sid_dev_) cudaFree(sid_dev_);
    srow_host_ = nullptr;
    sid_host_ = nullptr;
    srow_dev_ = nullptr;
    sid_dev_ = nullptr;
    sid_cap_ = 0;
  }

  // Captures fn's launches on stream_ into an instantiated graph.
  template <typename Fn>
  cudaGraphExec_t capture(Fn&& fn, const char* what) {
    cudaGraph_t g = nullptr;
    CK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      fn();
    } catch (...) {
      cudaStreamEndCapture(stream_, &g);
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    CK(cudaStreamEndCapture(stream_, &g));
    cudaGraphExec_t ge = nullptr;
    cudaError_t e = cudaGraphInstantiate(&ge, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) cuda::throw_cuda(e, what);
    return ge;
  }

  // forward / forward_argmax: logits of the last (all_logits: every) position to host `logits`,
  // or (token != null) only the argmax of the last position's logits to *token.
  void run(KvCache& base, const int32_t* ids, int T, float* logits, bool all_logits, int32_t* token,
           const TokenChoice* choice = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    CK(cudaSetDevice(dev_));
    CudaCache* c = dynamic_cast<CudaCache*>(&base);
    if (!c || c->owner != this) throw Error("cuda: this KV cache was not made by this model");
    if (T < 1 || c->length + T > c->capacity) throw Error("cuda: forward past the KV cache's capacity");
    upload_rope_table(*c);
    const int pos0 = c->length;
    if (T == 1) {
      decode_step(*c, ids[0], pos0, logits, token, choice);
      return;
    }
    const int H = cfg_.hidden_size, V = cfg_.vocab_size;
    for (int start = 0; start < T; start += chunk_) {
      const int rows = std::min(chunk_, T - start);
      std::memcpy(pinned_, ids + start, size_t(rows) * 4);
      pinned_[chunk_] = pos0 + start;
      CK(cudaMemcpyAsync(step_, pinned_, (chunk_ + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      const Seg sg{c, 0, rows, pos0 + start, step_ + chunk_};
      run_layers(rows, &sg, 1);
      if (all_logits && !token) {
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
        fetch_result(logits, token, choice);
      }
      // The pinned ids are rewritten by the next pass; wait for this one.
      CK(cudaStreamSynchronize(stream_));
    }
    if (token) *token = pinned_[chunk_ + 1];
  }

  // After the last logits are in logits_: queue their copy to host `logits`, or the token (the
  // argmax, or as `choice` says: sample_rows) and its 4-byte copy to pinned_[chunk_ + 1] (read
  // after the stream syncs).
  void fetch_result(float* logits, int32_t* token, const TokenChoice* choice) {
    if (token) {
      if (plain_argmax(choice))
        cuda::argmax(step_ + chunk_ + 1, logits_, cfg_.vocab_size, stream_);
      else
        choose_on_device(&choice, 1, step_ + chunk_ + 1);
      CK(cudaMemcpyAsync(pinned_ + chunk_ + 1, step_ + chunk_ + 1, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    } else {
      CK(cudaMemcpyAsync(logits, logits_, size_t(cfg_.vocab_size) * 4, cudaMemcpyDeviceToHost, stream_));
    }
  }

 private:
  static void check_supported(const ModelConfig& cfg, const ModelWeights& w, const BackendOptions& opt) {
    for (const auto& l : w.layers)
      if (l.w1.quantized() != l.w2.quantized())
        throw Error("cuda: w1 and w2 must both be GPTQ-quantized or both dense");
    if (w.lm_head.quantized()) throw Error("cuda: a GPTQ-quantized lm_head is not supported");
    if (opt.kv_cache == KvCacheType::Int8 && cfg.head_dim > 256)
      throw Error("cuda: the int8 KV cache supports head_dim up to 256");
    const int d = cfg.head_dim;
    if (d < 8 || d > 256 || (d & (d - 1)) != 0)
      throw Error("cuda: head_dim (kv_channels) " + std::to_string(d) + " is not supported (8..256, a power of two)");
    if (cfg.hidden_size % 8 != 0 || cfg.ffn_size % 8 != 0)
      throw Error("cuda: hidden_size and intermediate_size/2 must be multiples of 8 (got " +
                  std::to_string(cfg.hidden_size) + ", " + std::to_string(cfg.ffn_size) + ")");
    if (cfg.family == ModelFamily::QwenV1 && cfg.hidden_size != cfg.num_heads * d)
      throw Error("cuda: hidden_size must equal num_attention_heads * kv_channels");
    if (cfg.num_kv_heads < 1 || cfg.num_heads % cfg.num_kv_heads != 0)
      throw Error("cuda: num_key_value_heads " + std::to_string(cfg.num_kv_heads) + " must divide num_attention_heads " +
                  std::to_string(cfg.num_heads));
    if (cfg.family != ModelFamily::QwenV1)
      for (const auto& l : w.layers)
        if (l.q_proj.quantized() != l.k_proj.quantized() || l.q_proj.quantized() != l.v_proj.quantized())
          throw Error("cuda: q_proj, k_proj and v_proj must all be GPTQ-quantized or all dense");
  }

  // One tensor (or zeros) going to one place of the weight allocation.
  struct Upload {
    const Tensor* src;  // null: zero-fill
    size_t offset;      // bytes into the allocation
    int64_t count;      // elements
    bool to_f32;        // fp32 destination (norms, biases), else the model's 16-bit type
    const void* raw = nullptr;  // raw host bytes copied as they are (GPTQ metadata), count = bytes
  };
  // A GPTQ layer's places; qweight is copied to a staging buffer and repacked on the device.
  struct QOff {
    size_t qw, meta, cg, perm;
    int K, N, bits, ngroups, layout;
    const Tensor* qweight;
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
    // Stacked tensors of different lengths (qwen2's q|k|v weights or biases); a null tensor is zeros.
    auto place3 = [&](const Tensor* a, int64_t na, const Tensor* b, int64_t nb, const Tensor* c, int64_t nc, bool f32) {
      const size_t at = off, esz = f32 ? 4 : 2;
      ups.push_back({a, at, na, f32});
      ups.push_back({b, at + size_t(na) * esz, nb, f32});
      ups.push_back({c, at + size_t(na + nb) * esz, nc, f32});
      off = align256(off + size_t(na + nb + nc) * esz);
      return at;
    };
    const size_t none = ~size_t(0);
    std::vector<std::unique_ptr<cuda::GptqHost>> hosts;
    std::vector<QOff> qoffs;
    auto place_raw = [&](const void* p, size_t bytes) {
      const size_t at = off;
      ups.push_back({nullptr, at, int64_t(bytes), false, p});
      off = align256(off + bytes);
      return at;
    };
    // A GPTQ linear: index into qoffs.
    auto place_q = [&](const Linear& lin, const std::string& name) {
      hosts.push_back(std::make_unique<cuda::GptqHost>(cuda::gptq_prepare(lin, name)));
      const cuda::GptqHost& h = *hosts.back();
      QOff q;
      q.K = lin.in;
      q.N = lin.out;
      q.bits = lin.bits;
      q.ngroups = h.ngroups;
      q.layout = cuda::gptq_layout_for(lin.bits, dt_, lin.out);
      q.qweight = &lin.qweight;
      q.qw = off;
      off = align256(off + size_t(lin.in) * lin.out * lin.bits / 8);
      q.meta = place_raw(h.meta.data(), h.meta.size() * 4);
      q.cg = place_raw(h.cg.data(), h.cg.size() * 4);
      q.perm = h.perm.empty() ? none : place_raw(h.perm.data(), h.perm.size() * 4);
      qoffs.push_back(q);
      return int(qoffs.size() - 1);
    };
    struct LinOff {
      size_t w = ~size_t(0), b = ~size_t(0);
      int q = -1;
    };
    auto place_lin = [&](const Linear& lin, int64_t count, bool with_bias, const std::string& name) {
      LinOff o;
      if (lin.quantized()) o.q = place_q(lin, name);
      else o.w = place(&lin.weight, count, false);
      if (with_bias && !lin.bias.empty()) o.b = place(&lin.bias, lin.out, true);
      return o;
    };
    struct Offsets {
      size_t ln1, ln2, b12, qn = ~size_t(0), kn = ~size_t(0);
      LinOff ca, ap, w12, w1, w2, mp, qp, kp, vp;
    };
    const bool v1 = cfg_.family == ModelFamily::QwenV1;
    const int Q = cfg_.q_size(), KV = cfg_.kv_size(), hd = cfg_.head_dim;
    // wte: in the device allocation only with QWEN_WTE_ON_DEVICE=1 (else host memory, mapped).
    wte_on_device_ = env_is("QWEN_WTE_ON_DEVICE", "1");
    const size_t wte_at = wte_on_device_ ? place(&w.wte, int64_t(V) * H, false) : none;
    std::vector<Offsets> lo(static_cast<size_t>(L));
    for (int l = 0; l < L; l++) {
      const LayerWeights& lw = w.layers[size_t(l)];
      Offsets& o = lo[size_t(l)];
      const std::string pre = "layer " + std::to_string(l) + " ";
      o.ln1 = place(&lw.ln_1, H, true);
      if (v1) {
        o.ca = place_lin(lw.c_attn, int64_t(3) * H * H, true, pre + "c_attn");
      } else {
        if (lw.q_proj.quantized()) {
          o.qp = place_lin(lw.q_proj, 0, false, pre + "q_proj");
          o.kp = place_lin(lw.k_proj, 0, false, pre + "k_proj");
          o.vp = place_lin(lw.v_proj, 0, false, pre + "v_proj");
        } else {
          o.ca.w = place3(&lw.q_proj.weight, int64_t(Q) * H, &lw.k_proj.weight, int64_t(KV) * H, &lw.v_proj.weight,
                          int64_t(KV) * H, false);
        }
        auto bias_of = [](const Linear& x) { return x.bias.empty() ? nullptr : &x.bias; };
        if (bias_of(lw.q_proj) || bias_of(lw.k_proj) || bias_of(lw.v_proj))
          o.ca.b = place3(bias_of(lw.q_proj), Q, bias_of(lw.k_proj), KV, bias_of(lw.v_proj), KV, true);
        if (!lw.q_norm.empty()) o.qn = place(&lw.q_norm, hd, true);
        if (!lw.k_norm.empty()) o.kn = place(&lw.k_norm, hd, true);
      }
      o.ap = place_lin(lw.attn_c_proj, int64_t(H) * Q, true, pre + "attn.c_proj");
      o.ln2 = place(&lw.ln_2, H, true);
      if (lw.w1.quantized()) {
        o.w1 = place_lin(lw.w1, 0, false, pre + "w1");
        o.w2 = place_lin(lw.w2, 0, false, pre + "w2");
      } else {
        o.w12.w = place2(&lw.w1.weight, &lw.w2.weight, int64_t(F) * H, false);
      }
      o.b12 = lw.w1.bias.empty() && lw.w2.bias.empty()
                  ? none
                  : place2(lw.w1.bias.empty() ? nullptr : &lw.w1.bias, lw.w2.bias.empty() ? nullptr : &lw.w2.bias, F, true);
      o.mp = place_lin(lw.mlp_c_proj, int64_t(H) * F, true, pre + "mlp.c_proj");
    }
    const size_t lnf_at = place(&w.ln_f, H, true);
    // A tied lm_head (qwen2/qwen3: the checkpoint has no lm_head.weight; weights.cpp binds wte's
    // tensor) gets its own device copy, since wte itself stays in host memory by default; with wte
    // on the device the two share one copy.
    const bool tied = w.lm_head.weight.data == w.wte.data && w.lm_head.weight.dtype == w.wte.dtype;
    const size_t lm_at = tied && wte_on_device_ ? wte_at : place(&w.lm_head.weight, int64_t(V) * H, false);
    const size_t lmb_at = w.lm_head.bias.empty() ? none : place(&w.lm_head.bias, V, true);
    weight_bytes_ = off;
    if (w.wte.numel() != int64_t(V) * H)
      throw Error("cuda: tensor " + w.wte.name + " has " + std::to_string(w.wte.numel()) + " elements, expected " +
                  std::to_string(int64_t(V) * H));
    for (const Upload& u : ups)
      if (u.src && !u.raw && u.src->numel() != u.count)
        throw Error("cuda: tensor " + u.src->name + " has " + std::to_string(u.src->numel()) + " elements, expected " +
                    std::to_string(u.count));

    // Workspace (see the member comments for shapes).
    size_t ws = 0;
    auto wplace = [&](size_t bytes) {
      const size_t at = ws;
      ws = align256(ws + bytes);
      return at;
    };
    // qkv_ (c_attn output, dead once roped into q_ and the cache), ab_ (prefill w1|w2 output) and
    // logits_ (written after the last layer) are never live at the same time: one region.
    // QWEN_CUDA_WS_SHARE=0 gives each its own region (the old layout).
    const bool share = !env_is("QWEN_CUDA_WS_SHARE", "0");
    const size_t qkv_b = size_t(chunk_) * (Q + 2 * KV) * 4, ab_b = size_t(chunk_) * 2 * F * 4,
                 lg_b = size_t(kLmRows) * V * 4;
    const size_t x_at = wplace(size_t(chunk_) * H * 4), h_at = wplace(size_t(chunk_) * H * 2),
                 sh_at = wplace(share ? std::max({qkv_b, ab_b, lg_b}) : qkv_b),
                 ab_at = share ? sh_at : wplace(ab_b), lg_at = share ? sh_at : wplace(lg_b),
                 q_at = wplace(size_t(chunk_) * Q * 2),
                 att_at = wplace(size_t(chunk_) * Q * 2), g_at = wplace(size_t(chunk_) * F * 2),
                 st_at = wplace(size_t(chunk_ + 2) * 4),
                 pt_at = wplace(cuda::attention_decode_partial_floats(1, cfg_.num_heads, cfg_.head_dim, kMaxSplits) * 4 +
                                4);
    // GPTQ scratch: gathered activations (act-order: decode w1/w2 or a batched step's rows) and one
    // dequantized slice of a layer for the prefill GEMM: the whole largest layer when it fits in
    // kDeqBytes, else slices of whole 128-column tiles (cuda::gptq_matmul).
    size_t max_k = 0, max_nk = 0;
    for (const QOff& q : qoffs) {
      max_k = std::max(max_k, size_t(q.K));
      max_nk = std::max(max_nk, size_t(q.N) * q.K);
    }
    deq_elems_ = std::min(max_nk, std::max(kDeqBytes / 2, max_k));
    // xperm: two vectors of K (decode w1/w2 gathers) or the rows of a batched step [16, K]
    const size_t xp_at = qoffs.empty() ? 0 : wplace(std::max<size_t>(2, cuda::kGemvBatchMax) * max_k * 2),
                 dq_at = qoffs.empty() ? 0 : wplace(deq_elems_ * 2);
    ws_bytes_ = ws;

    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    if (weight_bytes_ + ws_bytes_ > free_b)
      throw Error("cuda: loading needs " + gib(weight_bytes_ + ws_bytes_) + " GiB, " + gib(free_b) + " GiB free on " +
                  gpu_name_);
    CK(cudaMalloc(&wmem_, weight_bytes_));
    CK(cudaMalloc(&ws_, ws_bytes_));
    CK(cudaMallocHost(reinterpret_cast<void**>(&pinned_), (chunk_ + 2) * sizeof(int32_t)));
    CK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

    // Bind the device pointers.
    char* wb = static_cast<char*>(wmem_);
    auto fp = [&](size_t at) { return at == none ? nullptr : reinterpret_cast<const float*>(wb + at); };
    auto dl = [&](const LinOff& o, int in, int out) {
      DevLinear d;
      d.in = in;
      d.out = out;
      d.b = fp(o.b);
      if (o.q >= 0) {
        const QOff& q = qoffs[size_t(o.q)];
        d.quant = true;
        has_gptq_ = true;
        d.q.qw = reinterpret_cast<const uint32_t*>(wb + q.qw);
        d.q.meta = reinterpret_cast<const uint32_t*>(wb + q.meta);
        d.q.cg = reinterpret_cast<const int32_t*>(wb + q.cg);
        d.q.perm = q.perm == none ? nullptr : reinterpret_cast<const int32_t*>(wb + q.perm);
        d.q.K = q.K;
        d.q.N = q.N;
        d.q.bits = q.bits;
        d.q.ngroups = q.ngroups;
        d.q.layout = q.layout;
      } else if (o.w != none) {
        d.w = wb + o.w;
      }
      return d;
    };
    if (wte_on_device_) wte_ = wb + wte_at;
    layers_.resize(static_cast<size_t>(L));
    for (int l = 0; l < L; l++) {
      const Offsets& o = lo[size_t(l)];
      DevLayer& d = layers_[size_t(l)];
      d.ln1 = fp(o.ln1);
      d.c_attn = dl(o.ca, H, Q + 2 * KV);
      if (o.qp.q >= 0) {
        d.qkv_split = true;
        d.qp = dl(o.qp, H, Q);
        d.kp = dl(o.kp, H, KV);
        d.vp = dl(o.vp, H, KV);
      }
      d.qn = fp(o.qn);
      d.kn = fp(o.kn);
      d.attn_proj = dl(o.ap, Q, H);
      d.ln2 = fp(o.ln2);
      if (o.w1.q >= 0) {
        d.w1 = dl(o.w1, H, F);
        d.w2 = dl(o.w2, H, F);
        d.w12.quant = true;
      } else {
        d.w12 = dl(o.w12, H, 2 * F);
      }
      d.w12.in = H;
      d.w12.out = 2 * F;
      d.w12.b = fp(o.b12);
      d.mlp_proj = dl(o.mp, F, H);
    }
    lnf_ = fp(lnf_at);
    lm_head_.w = wb + lm_at;
    lm_head_.b = fp(lmb_at);
    lm_head_.in = H;
    lm_head_.out = V;
    if (!qoffs.empty()) {
      xperm_ = wsb_base(xp_at);
      deq_ = wsb_base(dq_at);
    }
    char* wsb = static_cast<char*>(ws_);
    x_ = reinterpret_cast<float*>(wsb + x_at);
    h_ = wsb + h_at;
    qkv_ = reinterpret_cast<float*>(wsb + sh_at);
    q_ = wsb + q_at;
    att_ = wsb + att_at;
    ab_ = reinterpret_cast<float*>(wsb + ab_at);
    g_ = wsb + g_at;
    logits_ = reinterpret_cast<float*>(wsb + lg_at);
    step_ = reinterpret_cast<int32_t*>(wsb + st_at);
    partial_ = reinterpret_cast<float*>(wsb + pt_at);

    // Upload, converting where the stored type differs, reporting progress by source bytes.
    size_t total = 0, done = 0;
    for (const Upload& u : ups) total += u.raw ? size_t(u.count) : u.src ? u.src->nbytes() : 0;
    for (const QOff& q : qoffs) total += q.qweight->nbytes();
    if (!wte_on_device_) total += w.wte.nbytes();
    const int64_t kStage = int64_t(1) << 23;  // elements per conversion/copy chunk
    std::vector<float> f32;
    std::vector<uint16_t> h16;
    for (const Upload& u : ups) {
      char* dst = wb + u.offset;
      const size_t esz = u.to_f32 ? 4 : 2;
      if (u.raw) {
        CK(cudaMemcpy(dst, u.raw, size_t(u.count), cudaMemcpyHostToDevice));
        done += size_t(u.count);
        continue;
      }
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
    // GPTQ qweights: staged raw, repacked into their columns-major sorted layout.
    if (!qoffs.empty()) {
      size_t stage_bytes = 0;
      for (const QOff& q : qoffs) stage_bytes = std::max(stage_bytes, q.qweight->nbytes());
      void* stage = nullptr;
      CK(cudaMalloc(&stage, stage_bytes));
      try {
        for (const QOff& q : qoffs) {
          CK(cudaMemcpy(stage, q.qweight->data, q.qweight->nbytes(), cudaMemcpyHostToDevice));
          const int32_t* perm = q.perm == none ? nullptr : reinterpret_cast<const int32_t*>(wb + q.perm);
          cuda::gptq_repack(reinterpret_cast<uint32_t*>(wb + q.qw), stage, perm, q.K, q.N, q.bits, q.layout, nullptr);
          CK(cudaDeviceSynchronize());
          done += q.qweight->nbytes();
          if (progress) progress(total ? double(done) / double(total) : 1.0);
        }
      } catch (...) {
        cudaFree(stage);
        throw;
      }
      cudaFree(stage);
    }
    if (!wte_on_device_) {
      map_wte(w.wte);
      done += w.wte.nbytes();
      if (progress) progress(total ? double(done) / double(total) : 1.0);
    }
    CK(cudaDeviceSynchronize());  // the last copies may still be in flight (pageable source)
    if (progress) progress(1.0);
    const char* env = std::getenv("QWEN_CUDA_GRAPH");
    use_graph_ = !(env && std::strcmp(env, "0") == 0);
    // Greedy steps take the argmax on the device (4 bytes back instead of the 600 KB of logits);
    // QWEN_DEVICE_ARGMAX=0 copies the logits and leaves the argmax to the host.
    device_argmax_ = !env_is("QWEN_DEVICE_ARGMAX", "0");
  }

  // wte [V, H] in host memory, mapped into the device's address space: a pinned mapped copy
  // (converted to the model's 16-bit type). Registering the checkpoint's own pages instead
  // (QWEN_WTE_REGISTER=1) saves the copy but pins whole pages around the tensor: when those pages
  // hold other allocations (weights built in heap memory, as the kernel tests do), a later host
  // buffer can straddle the registered range and its cudaMemcpyAsync fails with "invalid
  // argument" (seen on the H100, at random points of the model tests).
  void map_wte(const Tensor& t) {
    const size_t n = size_t(cfg_.vocab_size) * size_t(cfg_.hidden_size), bytes = n * 2;
    const bool same = (t.dtype == DType::BF16 && dt_ == DT::BF16) || (t.dtype == DType::F16 && dt_ == DT::F16);
    if (same && env_is("QWEN_WTE_REGISTER", "1")) {
      int ro = 0;
      if (cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, dev_) != cudaSuccess) ro = 0;
      const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096);
      const uintptr_t a = reinterpret_cast<uintptr_t>(t.data), base = a & ~(page - 1),
                      end = (a + bytes + page - 1) & ~(page - 1);
      void* bp = reinterpret_cast<void*>(base);
      const unsigned flags = cudaHostRegisterMapped | (ro ? cudaHostRegisterReadOnly : 0u);
      if (cudaHostRegister(bp, size_t(end - base), flags) == cudaSuccess) {
        void* dp = nullptr;
        if (cudaHostGetDevicePointer(&dp, bp, 0) == cudaSuccess) {
          wte_registered_ = bp;
          wte_ = static_cast<const char*>(dp) + (a - base);
          wte_host_bytes_ = bytes;
          return;
        }
        cudaHostUnregister(bp);
      }
      cudaGetLastError();  // a refusal is an answer here: fall back to the pinned copy
    }
    CK(cudaHostAlloc(&wte_pinned_, bytes, cudaHostAllocMapped));
    uint16_t* dst = static_cast<uint16_t*>(wte_pinned_);
    if (same) {
      std::memcpy(dst, t.data, bytes);
    } else {
      const size_t kStage = size_t(1) << 22;
      std::vector<float> f32;
      for (size_t i0 = 0; i0 < n; i0 += kStage) {
        const size_t nel = std::min(kStage, n - i0);
        f32.resize(nel);
        to_f32(t.dtype, static_cast<const char*>(t.data) + i0 * dtype_size(t.dtype), f32.data(), nel);
        for (size_t i = 0; i < nel; i++)
          dst[i0 + i] = dt_ == DT::BF16 ? f32_to_bf16(f32[i]) : cuda::f32_to_f16_host(f32[i]);
      }
    }
    void* dp = nullptr;
    CK(cudaHostGetDevicePointer(&dp, wte_pinned_, 0));
    wte_ = dp;
    wte_host_bytes_ = bytes;
  }

  void release() noexcept {
    cudaSetDevice(dev_);
    if (pool_) pool_->close();  // caches that outlive the backend free their blocks at once
    for (cudaGraphExec_t& g : bgraphs_)
      if (g) cudaGraphExecDestroy(g), g = nullptr;
    if (bstage_) cudaFreeHost(bstage_);
    if (bdev_) cudaFree(bdev_);
    bstage_ = nullptr;
    bdev_ = nullptr;
    bpartial_ = nullptr;
    release_sample_region();
    bbytes_ = 0;
    if (stream_) cudaStreamDestroy(stream_);
    if (pinned_) cudaFreeHost(pinned_);
    if (ws_) cudaFree(ws_);
    if (wmem_) cudaFree(wmem_);
    if (wte_registered_) cudaHostUnregister(wte_registered_);
    if (wte_pinned_) cudaFreeHost(wte_pinned_);
    wte_registered_ = wte_pinned_ = nullptr;
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

  // A run of rows of one sequence in a pass: rows r0..r0+n-1 go to positions pos0.. of cache c
  // (pos_dev: pos0 in device memory, read by the kernels a graph replays).
  struct Seg {
    CudaCache* c;
    int r0, n, pos0;
    const int* pos_dev;
  };

  // The layers for `rows` tokens whose ids are in step_ (device): segs[0..nseg) say which rows
  // belong to which sequence (one segment for a plain forward; several for a batched prefill, whose
  // matrix products take all rows at once). Batched decode: brows != null (nseg 0), one token
  // per row, each of its own cache, with the ids at bids (device).
  void run_layers(int rows, const Seg* segs, int nseg, const cuda::KvBatchRow* brows = nullptr,
                  const int32_t* bids = nullptr) {
    const int H = cfg_.hidden_size, n = cfg_.num_heads, nkv = cfg_.num_kv_heads, d = cfg_.head_dim, F = cfg_.ffn_size,
              Q = cfg_.q_size(), QKV = Q + 2 * cfg_.kv_size();
    const int logn_len = cfg_.use_logn_attn ? cfg_.seq_length : 0;
    cudaStream_t s = stream_;
    auto lin = [&](float* y, const void* x, const DevLinear& W, const float* b, bool acc) {
      if (W.quant)
        cuda::gptq_linear(y, x, W.q, b, rows, acc, xperm_, deq_, deq_elems_, dt_, s);
      else
        cuda::linear(y, x, W.w, b, rows, W.out, W.in, acc, dt_, s);
    };
    cuda::embedding(x_, wte_, brows ? bids : step_, rows, H, dt_, s);
    for (int l = 0; l < cfg_.num_layers; l++) {
      const DevLayer& L = layers_[size_t(l)];
      cuda::rmsnorm(h_, x_, L.ln1, rows, H, cfg_.rms_eps, dt_, s);
      if (L.qkv_split) {
        // GPTQ q/k/v: each product into its column slice of qkv_ [rows, Q + 2KV].
        int col = 0;
        for (const DevLinear* W : {&L.qp, &L.kp, &L.vp}) {
          cuda::gptq_linear_ld(qkv_ + col, QKV, h_, W->q, nullptr, rows, false, xperm_, deq_, deq_elems_, dt_, s);
          col += W->out;
        }
      } else {
        lin(qkv_, h_, L.c_attn, nullptr, false);
      }
      const cuda::QkNorm nm{L.qn, L.kn, cfg_.rms_eps};
      if (brows) {
        cuda::qkv_rope_append_batched(q_, brows, l, int8_kv_, qkv_, L.c_attn.b, nm, rows, n, nkv, d, logn_len, dt_, s);
        cuda::attention_decode_batched(att_, q_, brows, l, int8_kv_, rows, n, nkv, d, batched_splits(rows), bpartial_,
                                       dt_, s);
      }
      for (int si = 0; si < nseg; si++) {  // each sequence's rows over its own cache
        const Seg& sg = segs[si];
        CudaCache& c = *sg.c;
        const int T = sg.n;
        void* q = static_cast<char*>(q_) + size_t(sg.r0) * Q * 2;  // 16-bit rows
        void* att = static_cast<char*>(att_) + size_t(sg.r0) * Q * 2;
        const float* qkv = qkv_ + size_t(sg.r0) * QKV;
        const cuda::KvLayer kv = c.layer(l);
        cuda::qkv_rope_append_kv(q, kv, c.int8, qkv, L.c_attn.b, nm, c.inv_freq, sg.pos_dev, T, n, nkv, d, logn_len,
                                 dt_, s);
        if (T == 1)
          cuda::attention_decode_kv(att, q, kv, c.int8, sg.pos_dev, 1, n, nkv, d, c.splits, partial_, dt_, s);
        else if (cuda::attention_prefill_supported(d))
          cuda::attention_prefill_kv(att, q, kv, c.int8, sg.pos0, T, n, nkv, d, dt_, s);
        else
          cuda::attention_decode_kv(att, q, kv, c.int8, sg.pos_dev, T, n, nkv, d, 1, nullptr, dt_, s);
      }
      lin(x_, att_, L.attn_proj, L.attn_proj.b, true);
      cuda::rmsnorm(h_, x_, L.ln2, rows, H, cfg_.rms_eps, dt_, s);
      if (L.w12.quant) {
        if (rows == 1) {
          const void* x1 = h_;
          const void* x2 = h_;
          if (L.w1.q.perm) {
            cuda::gptq_gather(xperm_, h_, L.w1.q.perm, 1, H, s);
            x1 = xperm_;
          }
          if (L.w2.q.perm) {
            void* xp2 = static_cast<char*>(xperm_) + size_t(H) * 2;
            cuda::gptq_gather(xp2, h_, L.w2.q.perm, 1, H, s);
            x2 = xp2;
          }
          cuda::gptq_gemv_swiglu(g_, x1, x2, L.w1.q, L.w2.q, L.w12.b, dt_, s);
        } else {
          const float* b12 = L.w12.b;
          cuda::gptq_linear_ld(ab_, 2 * F, h_, L.w1.q, b12, rows, false, xperm_, deq_, deq_elems_, dt_, s);
          cuda::gptq_linear_ld(ab_ + F, 2 * F, h_, L.w2.q, b12 ? b12 + F : nullptr, rows, false, xperm_, deq_,
                               deq_elems_, dt_, s);
          cuda::swiglu(g_, ab_, rows, F, dt_, s);
        }
      } else if (rows == 1) {
        cuda::gemv_swiglu(g_, h_, L.w12.w, L.w12.b, F, H, dt_, s);
      } else {
        cuda::linear(ab_, h_, L.w12.w, L.w12.b, rows, 2 * F, H, false, dt_, s);
        cuda::swiglu(g_, ab_, rows, F, dt_, s);
      }
      lin(x_, g_, L.mlp_proj, L.mlp_proj.b, true);
    }
  }

  void decode_kernels(CudaCache& c, int pos0) {
    const Seg sg{&c, 0, 1, pos0, step_ + chunk_};
    run_layers(1, &sg, 1);
    cuda::rmsnorm(h_, x_, lnf_, 1, cfg_.hidden_size, cfg_.rms_eps, dt_, stream_);
    cuda::gemv(logits_, h_, lm_head_.w, lm_head_.b, cfg_.vocab_size, cfg_.hidden_size, false, dt_, stream_);
  }

  void decode_step(CudaCache& c, int32_t id, int pos0, float* logits, int32_t* token, const TokenChoice* choice) {
    pinned_[0] = id;
    pinned_[chunk_] = pos0;
    CK(cudaMemcpyAsync(step_, pinned_, (chunk_ + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    if (!use_graph_) {
      decode_kernels(c, pos0);
    } else {
      if (!c.graph) c.graph = capture([&] { decode_kernels(c, pos0); }, "cudaGraphInstantiate (decode step)");
      CK(cudaGraphLaunch(c.graph, stream_));
    }
    fetch_result(logits, token, choice);
    CK(cudaStreamSynchronize(stream_));
    if (token) *token = pinned_[chunk_ + 1];
  }

  const ModelConfig cfg_;
  int dev_ = 0;
  std::string gpu_name_;
  DT dt_ = DT::BF16;
  bool use_graph_ = true;
  int chunk_ = kDefaultChunk;  // prefill rows per pass (the workspace is sized for it)
  int sms_ = 1;               // the device's multiprocessors
  float* partial_ = nullptr;  // one sequence's decode attention partials [n, kMaxSplits, d + 2] (workspace)
  bool has_gptq_ = false;     // some linear is GPTQ (prefill passes dequantize)
  bool device_argmax_ = true;  // forward_argmax on the device unless QWEN_DEVICE_ARGMAX=0
  std::mutex mu_;
  cudaStream_t stream_ = nullptr;
  // Weights: one allocation.
  void* wmem_ = nullptr;
  size_t weight_bytes_ = 0;
  const void* wte_ = nullptr;
  std::vector<DevLayer> layers_;
  const float* lnf_ = nullptr;
  DevLinear lm_head_;
  // Workspace: one allocation, sized for chunk_ tokens.
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  float* x_ = nullptr;       // [chunk_, H] fp32 residual stream
  void* h_ = nullptr;        // [chunk_, H] normed activations (16-bit)
  // qkv_, ab_ and logits_ share one region (never live at the same time).
  float* qkv_ = nullptr;     // [chunk_, Q + 2KV] fp32 c_attn / q|k|v output (bias added in qkv_rope_append)
  void* q_ = nullptr;        // [chunk_, n, d] roped, logn-scaled queries (16-bit)
  void* att_ = nullptr;      // [chunk_, n * d] attention output (16-bit)
  float* ab_ = nullptr;      // [chunk_, 2F] fp32 w1|w2 outputs (prefill)
  void* g_ = nullptr;        // [chunk_, F] SwiGLU output (16-bit)
  float* logits_ = nullptr;  // [kLmRows, V] fp32
  int32_t* step_ = nullptr;  // [chunk_] ids, then pos0, then the argmax result (device)
  int32_t* pinned_ = nullptr;  // host mirror of step_ (pinned)
  void* xperm_ = nullptr;      // GPTQ: [16, max K] activations gathered through an act-order perm
  void* deq_ = nullptr;        // GPTQ: [deq_elems_] a slice of a layer dequantized for the prefill GEMM
  size_t deq_elems_ = 0;
  // wte in host memory (default): registered checkpoint pages, or a pinned copy.
  bool wte_on_device_ = false;
  void* wte_registered_ = nullptr;  // page-aligned base passed to cudaHostRegister
  void* wte_pinned_ = nullptr;      // cudaHostAlloc'ed copy
  size_t wte_host_bytes_ = 0;
  bool int8_kv_ = false;
  // Batched passes (decode_batch, prefill_batch): ids, the per-row cache table (prefill: only the
  // positions) and the argmax results, staged in pinned host memory and copied to bdev_ before
  // each pass; attention partials for B decode rows.
  struct BatchStage {
    int32_t ids[cuda::kGemvBatchMax];
    int32_t argmax[cuda::kGemvBatchMax];
    cuda::KvBatchRow rows[cuda::kGemvBatchMax];
  };
  // Token choice on the device (choose_on_device): per-row options and the penalty ids, staged.
  cuda::SampleRow* srow_host_ = nullptr;
  cuda::SampleRow* srow_dev_ = nullptr;
  int32_t* sid_host_ = nullptr;
  int32_t* sid_dev_ = nullptr;
  size_t sid_cap_ = 0;
  BatchStage* bstage_ = nullptr;  // pinned host
  BatchStage* bdev_ = nullptr;    // device, with bpartial_ after it (one allocation, bbytes_)
  float* bpartial_ = nullptr;
  std::atomic<size_t> bbytes_{0};  // read by memory() without the lock
  cudaGraphExec_t bgraphs_[cuda::kGemvBatchMax + 1] = {};  // per batch size
  void* wsb_base(size_t at) { return static_cast<char*>(ws_) + at; }
  std::shared_ptr<std::atomic<size_t>> live_kv_;
  // The KV caches' memory (made in the constructor); a page's planes: one layer's K (or V) rows
  // and int8 (scale, zero) pairs.
  std::shared_ptr<KvPool> pool_;
  size_t page_plane_bytes_ = 0, page_sz_plane_bytes_ = 0;
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
