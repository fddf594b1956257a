// The CUDA backend's ops: twins of csrc/cpu/ops.h (same names), launched asynchronously on a
// stream; every launch is checked and failures throw qwen::Error.
// Shapes: T tokens, H hidden, n heads, d head_dim, K in-features, N out-features, F ffn width.
// Element type `dt` (bf16 or fp16) for weights, matmul inputs (h, q, attention output, SwiGLU
// output) and the KV cache; the residual stream, matmul outputs (qkv, w1|w2, logits), norm
// weights and biases are fp32. Accumulation, softmax and norm statistics are fp32 everywhere.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../core/weights.h"
#include "common.cuh"

namespace qwen::cuda {

// norm.cu ------------------------------------------------------------------------------------
// x [T, H] fp32 = wte[ids] (wte [V, H] in dt); ids in device memory. wte may be mapped pinned
// host memory (read over PCIe): rows are then read with 16-byte loads, all issued before use,
// when wte is 16-byte aligned and H % 8 == 0.
void embedding(float* x, const void* wte, const int32_t* ids, int T, int H, DT dt, cudaStream_t s);
// *out = the index of the largest of v [n] (fp32, device), the lowest index among ties (as
// std::max_element; NaN never wins, unlike max_element's NaN at index 0). One block of 1024
// per row: rows > 1 takes v [rows, n] and writes out[0..rows).
void argmax(int32_t* out, const float* v, int n, cudaStream_t s, int rows = 1);
// out [T, H] (dt) = x * rsqrt(mean(x^2) + eps) * w ; x fp32, w fp32.
void rmsnorm(void* out, const float* x, const float* w, int T, int H, float eps, DT dt, cudaStream_t s);

// sample.cu ------------------------------------------------------------------------------------
// One row's token choice for sample_rows: the host's SamplingOptions and its uniform draw.
struct SampleRow {
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float penalty = 1.0f;
  int do_sample = 0;
  int ids_off = 0;  // the row's distinct repetition-penalty ids: ids[ids_off, ids_off + n_ids)
  int n_ids = 0;
  double u = 0;     // in [0, 1)
};
// For each row b of logits [nrows, V] (fp32, changed in place): out[b] = a token chosen as
// core/sampler.cpp's sample_token chooses (greedy: the argmax after the penalty; sampled: the same
// kept set and distribution, the draw walking the kept ids in id order).
void sample_rows(int32_t* out, float* logits, int V, const SampleRow* rows, const int32_t* ids, int nrows,
                 cudaStream_t s);

// gemv.cu / gemm.cu ----------------------------------------------------------------------------
// y [T, N] fp32 (+)= x [T, K] W^T + b ; x, W [N, K] in dt; b fp32 [N] or null; K % 8 == 0.
// accumulate: y += (residual add). T == 1 runs the GEMV, 2..16 rows gemv_batched (W read once,
// tensor cores, many blocks), more the tiled tensor-core GEMM.
void linear(float* y, const void* x, const void* W, const float* b, int T, int N, int K, bool accumulate, DT dt,
            cudaStream_t s);
void gemv(float* y, const void* x, const void* W, const float* b, int N, int K, bool accumulate, DT dt, cudaStream_t s);
constexpr int kGemvBatchMax = 16;
// y rows m (stride ldy floats) (+)= x [M, K] W^T + b for 1 <= M <= kGemvBatchMax.
void gemv_batched(float* y, int ldy, const void* x, const void* W, const float* b, int M, int N, int K,
                  bool accumulate, DT dt, cudaStream_t s);
void gemm(float* y, const void* x, const void* W, const float* b, int T, int N, int K, bool accumulate, DT dt,
          cudaStream_t s);
// As gemm, writing y rows with a stride of ldy >= N floats (a column slice of a wider output).
// On an sm_90 device with at least kGemmSm90MinRows rows it runs gemm_sm90_ld, else gemm_mma_ld.
void gemm_ld(float* y, int ldy, const void* x, const void* W, const float* b, int T, int N, int K, bool accumulate,
             DT dt, cudaStream_t s);
// The two kernels behind gemm_ld (the kernel tests call each): mma.sync tiles for sm_80 and
// newer (gemm.cu), and wgmma + TMA for sm_90 (gemm_sm90.cu; built when nvcc targets sm_90a:
// QWEN_HAVE_SM90A). gemm_sm90_available(device): the device is cc 9.0, the kernel was built and
// the driver encodes TMA descriptors; QWEN_GEMM=mma turns it off.
void gemm_mma_ld(float* y, int ldy, const void* x, const void* W, const float* b, int T, int N, int K,
                 bool accumulate, DT dt, cudaStream_t s);
constexpr int kGemmSm90MinRows = 64;
// Throws qwen::Error unless T, N, K >= 1, ldy >= N, K % 8 == 0 and x, W are 16-byte aligned.
void check_gemm_args(int ldy, const void* x, const void* W, int T, int N, int K);
bool gemm_sm90_available(int device);
void gemm_sm90_ld(float* y, int ldy, const void* x, const void* W, const float* b, int T, int N, int K,
                  bool accumulate, DT dt, cudaStream_t s);
// Decode MLP front half in one pass: g [F] (dt) = (W1 x + b1) * silu(W2 x + b2) with
// W12 = [W1; W2] ([2F, K]) and b12 = [b1; b2] fp32 or null.
void gemv_swiglu(void* g, const void* x, const void* W12, const float* b12, int F, int K, DT dt, cudaStream_t s);

// mlp.cu ------------------------------------------------------------------------------------------
// g [T, F] (dt) = a * silu(b), a = ab[t, 0:F], b = ab[t, F:2F] (ab fp32 [T, 2F]).
void swiglu(void* g, const float* ab, int T, int F, DT dt, cudaStream_t s);

// rope.cu -----------------------------------------------------------------------------------------
// The attention front end for T tokens at positions pos0.. (pos0 read from device memory):
// from qkv fp32 [T, 3H] (+ bias fp32 [3H] or null) it ropes q and k ("rotate half", fp32 angle
// pos * inv_freq[j], inv_freq [d/2] fp32 prepared on the host), scales q by logn(pos) when
// seq_length > 0 (0 = use_logn_attn off), writes q [T, n, d] (dt) and appends k, v at positions
// pos0.. of the layer's cache k/v [n, cap, d] (dt).
void qkv_rope_append(void* q, void* k_cache, void* v_cache, int cap, const float* qkv, const float* bias,
                     const float* inv_freq, const int* pos0_dev, int T, int n, int d, int seq_length, DT dt,
                     cudaStream_t s);
// qwen3's per-head q/k RMSNorm (cpu::rmsnorm over each head's d values, weights fp32 [d]),
// applied after the bias and before rope; null weights: no norm.
struct QkNorm {
  const float* q = nullptr;
  const float* k = nullptr;
  float eps = 1e-6f;
};
// The general form (qwen2/qwen3, GQA): qkv fp32 [T, (n + 2 n_kv) d] = q | k | v, bias likewise or
// null; q [T, n, d] out; k, v appended to the layer's cache [n_kv, cap, d]. n % n_kv == 0, d even
// and <= 256. qkv_rope_append is this with n_kv = n and no norm.
void qkv_rope_append_gqa(void* q, void* k_cache, void* v_cache, int cap, const float* qkv, const float* bias,
                         QkNorm norm, const float* inv_freq, const int* pos0_dev, int T, int n, int n_kv, int d,
                         int seq_length, DT dt, cudaStream_t s);

// attention_decode.cu ----------------------------------------------------------------------------
// Split-KV ("flash-decoding") attention: T queries q [T, n, d] (dt) at positions pos0.. (device
// memory) over the cache [n_kv, cap, d] (GQA: query head h reads KV head h / (n / n_kv); n_kv = n
// for MHA); query t sees keys 0..pos0+t. Its len = pos0 + t + 1 keys are cut into ranges of
// max(32, ceil(len / splits)) keys (at most `splits` of them, decided on the device from the live
// length, so one captured graph fits every step); each (KV head, up to 8 of its query heads,
// range, query) block reads
// each key/value row once for all its query heads and writes a partial (max, sum, acc[d]) per
// query head into `partial` [T, n, splits, d + 2] fp32; a second kernel combines the ranges that
// hold keys into out [T, n, d] (dt). splits == 1 writes out directly (no partial).
// d in {8, 16, 32, 64, 128, 256}; n % n_kv == 0.
void attention_decode(void* out, const void* q, const void* k_cache, const void* v_cache, int cap, const int* pos0_dev,
                      int T, int n, int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s);
// The fewest keys a split-KV range covers (the model sizes `splits` with it too).
constexpr int kDecodeMinKeysPerSplit = 32;
// Query heads a block of attention_decode serves: the largest divisor of the group size
// g = n / n_kv up to 8 (shared memory [groups][gc][d + 2] floats stays under 41 KB for every d).
// A launch has n / gc x splits x T blocks.
inline int attention_decode_heads_per_block(int n, int n_kv) {
  const int g = n / n_kv;
  int gc = g < 8 ? g : 8;
  while (g % gc != 0) gc--;
  return gc;
}
// Floats of `partial` that attention_decode needs.
inline size_t attention_decode_partial_floats(int T, int n, int d, int splits) {
  return splits > 1 ? size_t(T) * n * splits * (d + 2) : 0;
}

// attention_prefill.cu ----------------------------------------------------------------------------
// Tiled causal flash attention on tensor cores (mma.sync m16n8k16, fp32 online softmax): T
// queries q [T, n, d] at positions pos0.. (host value) over the cache [n_kv, cap, d] that already
// holds positions 0..pos0+T-1; out [T, n, d] (dt). GQA: the g = n / n_kv query heads of a KV head
// are rows of one query tile (row = token * g + head in group), so every K/V tile a block loads
// into shared memory serves all of them. d in {64, 128}; see attention_prefill_supported.
void attention_prefill(void* out, const void* q, const void* k_cache, const void* v_cache, int cap, int pos0, int T,
                       int n, int n_kv, int d, DT dt, cudaStream_t s);
inline bool attention_prefill_supported(int d) { return d == 64 || d == 128; }

// gptq.cu ---------------------------------------------------------------------------------------
// A GPTQ linear (SPEC 4) as the GPU holds it, K = in, N = out, CH = 128 / bits rows per 16-byte
// chunk. Input rows are in "sorted" order: sorted position i is original row perm[i] (perm null:
// identity, g_idx = k / G).
struct GptqDev {
  const uint32_t* qw = nullptr;    // [N][K * bits / 32] column n's packed rows (sorted order)
  const uint32_t* meta = nullptr;  // [N][ngroups]: fp16 scale bits | (stored zero + 1) << 16
  const int32_t* cg = nullptr;     // [K / CH] group of each chunk of sorted rows
  const int32_t* perm = nullptr;   // [K] or null
  int K = 0, N = 0, bits = 0, ngroups = 0;
  // Packing inside each 32-bit word of qw: 0 = rows in order (nibble/byte e = row e; the v1
  // GEMV); 1 = int4 interleaved for the v2 GEMV (nibble positions 7..0 hold rows 7 5 3 1 6 4 2 0);
  // 2 = int8 interleaved for the v2 GEMV (bytes 0..3 hold rows 0 2 1 3).
  int layout = 0;
};
// The layout the backend repacks an int4/int8 layer of N columns into for activations of type dt:
// with fp16, 1 (int4) for the v2 GEMV unless the environment sets QWEN_GPTQ_GEMV=v1, and 2 (int8,
// N % 8 == 0) unless QWEN_GPTQ_INT8_V2=0; 0 otherwise (bf16, or the v1 GEMV asked for).
int gptq_layout_for(int bits, DT dt, int N);
// Host side of the repack: permutation (empty = identity), chunk groups, metadata. Throws
// qwen::Error naming the linear on what the GPU layout cannot hold (bits other than 4/8, K not a
// multiple of CH, act-order groups that do not fill whole chunks after sorting, bad tensors).
struct GptqHost {
  std::vector<int32_t> perm, cg;
  std::vector<uint32_t> meta;
  int ngroups = 0;
};
GptqHost gptq_prepare(const Linear& l, const std::string& name);
// qw (see GptqDev) from the checkpoint's qweight [K/P, N] int32 already in device memory.
void gptq_repack(uint32_t* qw, const void* raw_qweight, const int32_t* perm, int K, int N, int bits, int layout,
                 cudaStream_t s);
// xp [T, K] = x[:, perm] (16-bit).
void gptq_gather(void* xp, const void* x, const int32_t* perm, int T, int K, cudaStream_t s);
// y [N] fp32 (+)= W x + b for x [K] in SORTED order (dt); b fp32 or null. The kernel follows
// L.layout: 0 = v1 (any dt, int4/int8), 1 = v2 (int4, fp16 only; half2 products, see gptq.cu).
void gptq_gemv(float* y, const void* x, const GptqDev& L, const float* b, bool accumulate, DT dt, cudaStream_t s);
// g [F] (dt) = (W1 x1 + b1) * silu(W2 x2 + b2), x1/x2 = x in the sorted order of W1/W2.
void gptq_gemv_swiglu(void* g, const void* x1, const void* x2, const GptqDev& L1, const GptqDev& L2, const float* b12,
                      DT dt, cudaStream_t s);
// W [cols, K] (dt) = columns n0..n0+cols-1 of the dequantized layer, rows in the ORIGINAL order.
void gptq_dequant(void* W, const GptqDev& L, int n0, int cols, DT dt, cudaStream_t s);
// Columns per dequantize + GEMM slice for a scratch of deq_elems 16-bit elements (whole 128-column
// GEMM tiles when the layer needs several slices); throws when the scratch is under one column.
int gptq_slice_cols(int N, int K, size_t deq_elems);
// Prefill product: y [T, ldy] columns 0..N-1 (+)= x [T, K] W^T + b (x in the original order),
// dequantizing gptq_slice_cols columns at a time into deq and running the GEMM on each slice.
void gptq_matmul(float* y, int ldy, const void* x, const GptqDev& L, const float* b, int T, bool accumulate, void* deq,
                 size_t deq_elems, DT dt, cudaStream_t s);
// y [T, N] (+)= x [T, K] W^T + b, x in the original order (act-order: gathered through perm into
// the xperm scratch, [T, K] 16-bit). T == 1: the GEMV; T <= 16 with int4's v2 layout (1):
// gptq_batched; T <= kGptqRowLoopMax with another layout: the GEMV once per row; else
// gptq_matmul with the deq scratch (deq_elems elements), which dequantizes the whole layer on
// every call. gptq_linear_ld writes rows of y with a stride of ldy >= N.
constexpr int kGptqRowLoopMax = 4;
void gptq_linear(float* y, const void* x, const GptqDev& L, const float* b, int T, bool accumulate, void* xperm,
                 void* deq, size_t deq_elems, DT dt, cudaStream_t s);
void gptq_linear_ld(float* y, int ldy, const void* x, const GptqDev& L, const float* b, int T, bool accumulate,
                    void* xperm, void* deq, size_t deq_elems, DT dt, cudaStream_t s);
// Batched decode on the v2 layout (int4, fp16): y rows m (stride ldy) (+)= x [M, K] W^T + b,
// x already in sorted row order, 1 <= M <= kGemvBatchMax; W read once for all rows.
void gptq_batched(float* y, int ldy, const void* x, const GptqDev& L, const float* b, int M, bool accumulate, DT dt,
                  cudaStream_t s);

// int8 KV cache (SPEC 5, ours): uint8 q [n, cap, d] and (scale, zero) [n, cap] per layer;
// x' = scale * (q - zero), quantized exactly as cpu::kv_quantize_int8.
struct KvQ8 {
  uint8_t* q = nullptr;
  float2* sz = nullptr;
};
// As qkv_rope_append, quantizing k (after rope) and v per (token, head) into the int8 cache.
void qkv_rope_append_int8(void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const float* qkv, const float* bias,
                          const float* inv_freq, const int* pos0_dev, int T, int n, int d, int seq_length, DT dt,
                          cudaStream_t s);
void qkv_rope_append_int8_gqa(void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const float* qkv, const float* bias,
                              QkNorm norm, const float* inv_freq, const int* pos0_dev, int T, int n, int n_kv, int d,
                              int seq_length, DT dt, cudaStream_t s);
// As attention_decode / attention_prefill over the int8 cache (dequantized in the kernels).
void attention_decode_int8(void* out, const void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const int* pos0_dev, int T,
                           int n, int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s);
void attention_prefill_int8(void* out, const void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, int pos0, int T, int n,
                            int n_kv, int d, DT dt, cudaStream_t s);

// ---- paged caches (the model's) ----
// One layer of a KV cache as the kernels address it, in either of two forms:
// - contiguous (pages null): k, v [n_kv, cap, d] and, int8 only, ksz, vsz [n_kv, cap] (scale, zero);
// - paged: positions in pages of kKvPage; position j of KV head h is row h * kKvPage + j % kKvPage
//   of page pages[j / kKvPage] (device memory), and k, v, ksz, vsz are byte offsets of the
//   layer's planes from the start of a page rather than addresses (cap is unused).
// A row is d elements (16-bit, or uint8 for int8) in k/v and one float2 in ksz/vsz.
constexpr int kKvPage = 64;
struct KvLayer {
  char* k = nullptr;
  char* v = nullptr;
  char* ksz = nullptr;
  char* vsz = nullptr;
  int cap = 0;
  char* const* pages = nullptr;
};
// The address of row (h, j) of a plane (one of L.k, L.v, L.ksz, L.vsz) with rows of row_bytes.
__device__ __forceinline__ char* kv_row(const KvLayer& L, char* plane, int h, int j, int row_bytes) {
  if (L.pages)
    return L.pages[j / kKvPage] + reinterpret_cast<uintptr_t>(plane) +
           (int64_t(h) * kKvPage + j % kKvPage) * row_bytes;
  return plane + (int64_t(h) * L.cap + j) * row_bytes;
}
inline KvLayer kv_contiguous(void* k, void* v, int cap) {
  KvLayer L;
  L.k = static_cast<char*>(k);
  L.v = static_cast<char*>(v);
  L.cap = cap;
  return L;
}
inline KvLayer kv_contiguous(KvQ8 k, KvQ8 v, int cap) {
  KvLayer L = kv_contiguous(k.q, v.q, cap);
  L.ksz = reinterpret_cast<char*>(k.sz);
  L.vsz = reinterpret_cast<char*>(v.sz);
  return L;
}
// The entry points of qkv_rope_append(_int8)_gqa, attention_decode(_int8) and
// attention_prefill(_int8) for either form of cache (int8: the cache has (scale, zero) planes).
void qkv_rope_append_kv(void* q, const KvLayer& kv, bool int8, const float* qkv, const float* bias, QkNorm norm,
                        const float* inv_freq, const int* pos0_dev, int T, int n, int n_kv, int d, int seq_length,
                        DT dt, cudaStream_t s);
void attention_decode_kv(void* out, const void* q, const KvLayer& kv, bool int8, const int* pos0_dev, int T, int n,
                         int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s);
void attention_prefill_kv(void* out, const void* q, const KvLayer& kv, bool int8, int pos0, int T, int n, int n_kv,
                          int d, DT dt, cudaStream_t s);

// ---- batched decode (several sequences, one token each, one pass) ----
// Row t of a batched decode step belongs to its own sequence with its own cache: this is that
// cache as the kernels need it (device memory, one per row). Layer l is `kv` with layer_bytes
// added to k and v and sz_layer_bytes to ksz and vsz (addresses or page offsets alike).
struct KvBatchRow {
  KvLayer kv;  // layer 0
  long long layer_bytes = 0;
  long long sz_layer_bytes = 0;
  const float* inv_freq = nullptr;  // the sequence's rope table (its own NTK alpha)
  int pos = 0;                      // where this row's token goes (it sees keys 0..pos)
};
__device__ __forceinline__ KvLayer kv_layer_of(const KvBatchRow& r, int layer) {
  KvLayer L = r.kv;
  L.k += layer * r.layer_bytes;
  L.v += layer * r.layer_bytes;
  L.ksz += layer * r.sz_layer_bytes;
  L.vsz += layer * r.sz_layer_bytes;
  return L;
}
// qkv_rope_append(_int8)_gqa for T rows, row t at rows[t].pos of its own cache (layer `layer`).
void qkv_rope_append_batched(void* q, const KvBatchRow* rows, int layer, bool int8, const float* qkv,
                             const float* bias, QkNorm norm, int T, int n, int n_kv, int d, int seq_length, DT dt,
                             cudaStream_t s);
// attention_decode(_int8) for T rows, row t's query over keys 0..rows[t].pos of its own cache;
// partial [T, n, splits, d + 2] as attention_decode_partial_floats(T, n, d, splits).
void attention_decode_batched(void* out, const void* q, const KvBatchRow* rows, int layer, bool int8, int T, int n,
                              int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s);

}  // namespace qwen::cuda
