// The attention front end, fused: q/k/v bias + (qwen3) per-head q/k RMSNorm + rotary (dynamic
// NTK) + logn scaling + KV append, for MHA (QwenV1) and GQA (qwen2/qwen3).
// In:  qkv [T, (n + 2 n_kv) d] fp32 (q | k | v, the fused c_attn product, or the stacked
//      q_proj | k_proj | v_proj product, without bias), bias [(n + 2 n_kv) d] fp32 or null,
//      optional q/k norm weights [d] fp32, inv_freq [d/2] fp32 (1 / base'^(2j/d), computed on the
//      host exactly as the CPU twin), pos0 in device memory (so one captured decode graph serves
//      every position).
// Out: q [T, n, d] (bf16/fp16), roped and scaled by logn(pos) when pos + 1 > seq_length
//      (seq_length 0 turns logn off); k (roped) and v written at positions pos0.. of the layer's
//      cache (a KvLayer, contiguous or paged: 16-bit, or int8 with (scale, zero) per row).
// The norm (qwen3) is cpu::rmsnorm over each head's d values: x * (1 / sqrt(mean(x^2) + eps)) * w,
// applied after the bias and before rope.
// Rotary is "rotate half": out[j] = x[j] cos - x[j+d/2] sin, out[j+d/2] = x[j+d/2] cos + x[j] sin,
// with the angle pos * inv_freq[j] in fp32 and accurate cosf/sinf, as the original.
// Grid (T, ceil(jobs / 8)), 8 warps a block, one warp per (head, q | k | v) job (jobs = n + 2 n_kv):
// rows of d <= 256 values sit in registers (up to 4 rotary pairs or 8 values per lane), sums of
// squares and int8 min/max by warp shuffles. (One block per token, as at first, left a decode
// step's 96 jobs of 7B on 8 warps: 12 dependent rounds of loads, ~12 us per layer.)
#include "ops.cuh"

namespace qwen::cuda {

namespace {

// int8: the quantization of cpu::kv_quantize_int8 with the same IEEE operations (division,
// round half to even).
__device__ __forceinline__ void quantize_row_int8(const float (&v)[8], const int (&c)[8], int cnt, uint8_t* dst,
                                                  float2* sz) {
  float mn = INFINITY, mx = -INFINITY;
  for (int i = 0; i < cnt; i++) {
    mn = fminf(mn, v[i]);
    mx = fmaxf(mx, v[i]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  }
  float sc = __fdiv_rn(__fsub_rn(mx, mn), 255.0f);
  if (!(sc > 0.0f)) sc = 1.0f;
  const float z = __fdiv_rn(-mn, sc);
  for (int i = 0; i < cnt; i++)
    dst[c[i]] = uint8_t(fminf(255.0f, fmaxf(0.0f, rintf(__fadd_rn(__fdiv_rn(v[i], sc), z)))));
  if ((threadIdx.x & 31) == 0) *sz = make_float2(sc, z);
}

// Q8: the cache's k/v rows are uint8 with (scale, zero) rows in ksz/vsz; else k/v rows are T.
template <typename T, bool Q8>
__global__ void qkv_rope_append_kernel(T* __restrict__ q, KvLayer kv, const float* __restrict__ qkv,
                                       const float* __restrict__ bias, const float* __restrict__ qn,
                                       const float* __restrict__ kn, float eps,
                                       const float* __restrict__ inv_freq, const int* __restrict__ pos0_dev, int n,
                                       int n_kv, int d, int seq_length, const KvBatchRow* __restrict__ brows,
                                       int layer) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x, d2 = d / 2, lane = threadIdx.x % 32;
  const int Q = n * d, KV = n_kv * d, W = Q + 2 * KV;
  int pos;
  if (brows) {  // batched decode: this row's own cache, position and rope table
    const KvBatchRow& e = brows[t];
    kv = kv_layer_of(e, layer);
    inv_freq = e.inv_freq;
    pos = e.pos;
  } else {
    pos = *pos0_dev + t;
  }
  const int rb = Q8 ? d : d * int(sizeof(T));  // bytes of a k/v row
  float logn = 1.0f;
  if (seq_length > 0 && pos + 1 > seq_length) logn = float(log(double(pos + 1)) / log(double(seq_length)));
  const float* row = qkv + int64_t(t) * W;
  const int wpb = blockDim.x / 32;
  for (int job = blockIdx.y * wpb + threadIdx.x / 32; job < n + 2 * n_kv; job += gridDim.y * wpb) {
    const int which = job < n ? 0 : job < n + n_kv ? 1 : 2;
    const int hh = which == 0 ? job : which == 1 ? job - n : job - n - n_kv;
    const int base = which == 0 ? hh * d : which == 1 ? Q + hh * d : Q + KV + hh * d;
    float v[8];
    int c[8];
    int cnt = 0;
    if (which < 2) {
      float a[4], b[4];
      float ss = 0.0f;
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int j = lane + 32 * i;
        a[i] = b[i] = 0.0f;
        if (j < d2) {
          a[i] = row[base + j] + (bias ? bias[base + j] : 0.0f);
          b[i] = row[base + j + d2] + (bias ? bias[base + j + d2] : 0.0f);
          ss += a[i] * a[i] + b[i] * b[i];
        }
      }
      const float* nw = which == 0 ? qn : kn;
      float r = 1.0f;
      if (nw) r = 1.0f / sqrtf(warp_sum(ss) / float(d) + eps);
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int j = lane + 32 * i;
        if (j >= d2) break;
        float x = a[i], y = b[i];
        if (nw) {
          x = x * r * nw[j];
          y = y * r * nw[j + d2];
        }
        const float ang = float(pos) * inv_freq[j];
        float sn, cs;
        sincosf(ang, &sn, &cs);
        const float oa = x * cs - y * sn, ob = y * cs + x * sn;
        if (which == 0) {
          T* dst = q + (int64_t(t) * n + hh) * d;
          dst[j] = from_f<T>(oa * logn);
          dst[j + d2] = from_f<T>(ob * logn);
        } else if constexpr (Q8) {
          v[cnt] = oa;
          c[cnt++] = j;
          v[cnt] = ob;
          c[cnt++] = j + d2;
        } else {
          T* dst = reinterpret_cast<T*>(kv_row(kv, kv.k, hh, pos, rb));
          dst[j] = from_f<T>(oa);
          dst[j + d2] = from_f<T>(ob);
        }
      }
      if constexpr (Q8) {
        if (which == 1) {
          quantize_row_int8(v, c, cnt, reinterpret_cast<uint8_t*>(kv_row(kv, kv.k, hh, pos, rb)),
                            reinterpret_cast<float2*>(kv_row(kv, kv.ksz, hh, pos, sizeof(float2))));
        }
      }
    } else {
      char* vrow = kv_row(kv, kv.v, hh, pos, rb);
      for (int e = lane; e < d; e += 32) {
        const float x = row[base + e] + (bias ? bias[base + e] : 0.0f);
        if constexpr (Q8) {
          v[cnt] = x;
          c[cnt++] = e;
        } else {
          reinterpret_cast<T*>(vrow)[e] = from_f<T>(x);
        }
      }
      if constexpr (Q8)
        quantize_row_int8(v, c, cnt, reinterpret_cast<uint8_t*>(vrow),
                          reinterpret_cast<float2*>(kv_row(kv, kv.vsz, hh, pos, sizeof(float2))));
    }
  }
}

template <bool Q8>
void launch_rope(void* q, const KvLayer& kv, const float* qkv, const float* bias, QkNorm norm, const float* inv_freq,
                 const int* pos0_dev, int T, int n, int n_kv, int d, int seq_length, DT dt, cudaStream_t s,
                 const KvBatchRow* brows = nullptr, int layer = 0) {
  if (d < 2 || d > 256 || d % 2 != 0) throw Error("cuda: rope supports an even head_dim up to 256 (got " + std::to_string(d) + ")");
  if (n_kv < 1 || n % n_kv != 0)
    throw Error("cuda: " + std::to_string(n) + " query heads over " + std::to_string(n_kv) + " KV heads");
  QWEN_DISPATCH_DT(dt, E,
                   launch_pdl(qkv_rope_append_kernel<E, Q8>, dim3(T, ceil_div(n + 2 * n_kv, 8)), 256, 0, s,
                              static_cast<E*>(q), kv, qkv, bias, norm.q, norm.k, norm.eps, inv_freq, pos0_dev, n,
                              n_kv, d, seq_length, brows, layer));
  CK_LAUNCH("qkv_rope_append_kernel");
}

}  // namespace

void qkv_rope_append_kv(void* q, const KvLayer& kv, bool int8, const float* qkv, const float* bias, QkNorm norm,
                        const float* inv_freq, const int* pos0_dev, int T, int n, int n_kv, int d, int seq_length,
                        DT dt, cudaStream_t s) {
  if (int8)
    launch_rope<true>(q, kv, qkv, bias, norm, inv_freq, pos0_dev, T, n, n_kv, d, seq_length, dt, s);
  else
    launch_rope<false>(q, kv, qkv, bias, norm, inv_freq, pos0_dev, T, n, n_kv, d, seq_length, dt, s);
}

void qkv_rope_append_gqa(void* q, void* k_cache, void* v_cache, int cap, const float* qkv, const float* bias,
                         QkNorm norm, const float* inv_freq, const int* pos0_dev, int T, int n, int n_kv, int d,
                         int seq_length, DT dt, cudaStream_t s) {
  qkv_rope_append_kv(q, kv_contiguous(k_cache, v_cache, cap), false, qkv, bias, norm, inv_freq, pos0_dev, T, n, n_kv,
                     d, seq_length, dt, s);
}

void qkv_rope_append_int8_gqa(void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const float* qkv, const float* bias,
                              QkNorm norm, const float* inv_freq, const int* pos0_dev, int T, int n, int n_kv, int d,
                              int seq_length, DT dt, cudaStream_t s) {
  qkv_rope_append_kv(q, kv_contiguous(k_cache, v_cache, cap), true, qkv, bias, norm, inv_freq, pos0_dev, T, n, n_kv,
                     d, seq_length, dt, s);
}

void qkv_rope_append_batched(void* q, const KvBatchRow* rows, int layer, bool int8, const float* qkv,
                             const float* bias, QkNorm norm, int T, int n, int n_kv, int d, int seq_length, DT dt,
                             cudaStream_t s) {
  if (int8)
    launch_rope<true>(q, KvLayer{}, qkv, bias, norm, nullptr, nullptr, T, n, n_kv, d, seq_length, dt, s, rows, layer);
  else
    launch_rope<false>(q, KvLayer{}, qkv, bias, norm, nullptr, nullptr, T, n, n_kv, d, seq_length, dt, s, rows, layer);
}
void qkv_rope_append_int8(void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const float* qkv, const float* bias,
                          const float* inv_freq, const int* pos0_dev, int T, int n, int d, int seq_length, DT dt,
                          cudaStream_t s) {
  qkv_rope_append_int8_gqa(q, k_cache, v_cache, cap, qkv, bias, QkNorm{}, inv_freq, pos0_dev, T, n, n, d, seq_length,
                           dt, s);
}

void qkv_rope_append(void* q, void* k_cache, void* v_cache, int cap, const float* qkv, const float* bias,
                     const float* inv_freq, const int* pos0_dev, int T, int n, int d, int seq_length, DT dt,
                     cudaStream_t s) {
  qkv_rope_append_gqa(q, k_cache, v_cache, cap, qkv, bias, QkNorm{}, inv_freq, pos0_dev, T, n, n, d, seq_length, dt, s);
}

}  // namespace qwen::cuda
