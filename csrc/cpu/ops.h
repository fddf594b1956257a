// The CPU reference backend's ops (fp32 math, fp32 accumulation). Each has a CUDA twin of the
// same name in csrc/cuda; the GPU tests check one against the other.
// Shapes: T tokens, H hidden, n heads, d head_dim, K in-features, N out-features.
#pragma once
#include <cstdint>

#include "../core/tensor.h"
#include "../core/weights.h"
#include "thread_pool.h"

namespace qwen::cpu {

// out [T, H] = wte[ids] (any float dtype -> fp32)
void embedding(float* out, const Tensor& wte, const int32_t* ids, int T);

// out [T, H] = x * rsqrt(mean(x^2) + eps) * w
void rmsnorm(float* out, const float* x, const float* w, int T, int H, float eps);
// qwen3's per-head q/k norm is rmsnorm over T*heads rows of d: rmsnorm(x, x, w, T * heads, d, eps)
// on a packed [T, heads, d] buffer.

// y [T, N] = x [T, K] W^T + b; W dense [N, K] (F32/BF16/F16) or GPTQ (dequantized on the fly).
void linear(float* y, const float* x, const Linear& l, int T, ThreadPool& pool);

// Rotary ("rotate half", SPEC 3.1) in place on x [T, heads, d] whose rows are `row_stride`
// floats apart; row t is at position pos0 + t; frequencies from base * alpha^(d/(d-2)) in fp32.
void rope(float* x, int64_t row_stride, int T, int heads, int d, int pos0, double base, double ntk_alpha);

// Causal attention for T queries at positions pos0.. over a cache holding pos0 + T positions.
// q [T, n, d] (row stride q_stride), k/v cache [n, capacity, d], out [T, n, d].
void attention(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int capacity,
               int T, int n, int d, int pos0, ThreadPool& pool);

// Grouped-query attention (qwen2/qwen3): n query heads over n_kv KV heads (n % n_kv == 0); query
// head h reads KV head h / (n / n_kv), and the query heads of a group share one read of each K/V
// row. k/v cache [n_kv, capacity, d]; q and out as attention(). n_kv == n is attention().
void attention_gqa(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache,
                   int capacity, int T, int n, int n_kv, int d, int pos0, ThreadPool& pool);

// int8 KV cache (SPEC 5, our variant): one asymmetric uint8 scale/zero per (token, head),
// rounding to nearest: scale = (max - min) / 255, zero = -min / scale, x' = scale * (q - zero).
void kv_quantize_int8(const float* x, int d, uint8_t* q, float* scale, float* zero);

// Causal attention over an int8 cache: k/v [n, capacity, d] uint8, their scales and zeros
// [n, capacity]; otherwise as attention().
struct KvInt8 {
  const uint8_t* q;
  const float* scale;
  const float* zero;
};
void attention_int8(float* out, const float* q, int64_t q_stride, const KvInt8& k, const KvInt8& v, int capacity,
                    int T, int n, int d, int pos0, ThreadPool& pool);
// The same over n_kv KV heads (k/v [n_kv, capacity, d], scales/zeros [n_kv, capacity]).
void attention_int8_gqa(float* out, const float* q, int64_t q_stride, const KvInt8& k, const KvInt8& v, int capacity,
                        int T, int n, int n_kv, int d, int pos0, ThreadPool& pool);

// The same two over a paged cache (the CPU backend's): position j of KV head h is row
// h * page + j % page of page j / page, whose rows of this layer k_pages[j / page] (and v_pages)
// point at: [n_kv, page, d] floats; int8: a KvInt8 per page (scales/zeros [n_kv, page]).
void attention_gqa_paged(float* out, const float* q, int64_t q_stride, const float* const* k_pages,
                         const float* const* v_pages, int page, int T, int n, int n_kv, int d, int pos0,
                         ThreadPool& pool);
void attention_int8_gqa_paged(float* out, const float* q, int64_t q_stride, const KvInt8* k_pages,
                              const KvInt8* v_pages, int page, int T, int n, int n_kv, int d, int pos0,
                              ThreadPool& pool);

// out[i] = a[i] * silu(b[i])  (Qwen: w1(h) * silu(w2(h)))
void swiglu(float* out, const float* a, const float* b, int64_t count);

// Dequantizes GPTQ column n (all K input rows) into w [K]: scales[g][n] * (q - (zero + 1)).
void gptq_dequant_column(float* w, const Linear& l, int n);

}  // namespace qwen::cpu
