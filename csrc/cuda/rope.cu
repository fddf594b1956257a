// The attention front end, fused: c_attn bias + rotary (dynamic NTK) + logn scaling + KV append.
// In:  qkv [T, 3H] fp32 (q | k | v, the c_attn product without bias), bias [3H] fp32 or null,
//      inv_freq [d/2] fp32 (1 / base'^(2j/d), computed on the host exactly as the CPU twin),
//      pos0 in device memory (so one captured decode graph serves every position).
// Out: q [T, n, d] (bf16/fp16), roped and scaled by logn(pos) when pos + 1 > seq_length
//      (seq_length 0 turns logn off); k (roped) and v written at positions pos0.. of the layer's
//      cache [n, cap, d].
// Rotary is "rotate half": out[j] = x[j] cos - x[j+d/2] sin, out[j+d/2] = x[j+d/2] cos + x[j] sin,
// with the angle pos * inv_freq[j] in fp32 and accurate cosf/sinf, as the original.
// One block per token; each thread handles a (j, j + d/2) pair of q or k, or one v element.
#include "ops.cuh"

namespace qwen::cuda {

namespace {

template <typename T>
__global__ void qkv_rope_append_kernel(T* __restrict__ q, T* __restrict__ kc, T* __restrict__ vc, int cap,
                                       const float* __restrict__ qkv, const float* __restrict__ bias,
                                       const float* __restrict__ inv_freq, const int* __restrict__ pos0_dev, int n,
                                       int d, int seq_length) {
  const int t = blockIdx.x, H = n * d, d2 = d / 2, half_h = n * d2;
  const int pos = *pos0_dev + t;
  float logn = 1.0f;
  if (seq_length > 0 && pos + 1 > seq_length) logn = float(log(double(pos + 1)) / log(double(seq_length)));
  const float* row = qkv + int64_t(t) * 3 * H;
  for (int i = threadIdx.x; i < 2 * H; i += blockDim.x) {
    if (i < H) {
      const int which = i / half_h, rem = i % half_h, hh = rem / d2, j = rem % d2;
      const int off = which * H + hh * d + j;
      const float a = row[off] + (bias ? bias[off] : 0.0f);
      const float b = row[off + d2] + (bias ? bias[off + d2] : 0.0f);
      const float ang = float(pos) * inv_freq[j];
      float sn, cs;
      sincosf(ang, &sn, &cs);
      float oa = a * cs - b * sn, ob = b * cs + a * sn;
      if (which == 0) {
        T* dst = q + (int64_t(t) * n + hh) * d;
        dst[j] = from_f<T>(oa * logn);
        dst[j + d2] = from_f<T>(ob * logn);
      } else {
        T* dst = kc + (int64_t(hh) * cap + pos) * d;
        dst[j] = from_f<T>(oa);
        dst[j + d2] = from_f<T>(ob);
      }
    } else {
      const int e = i - H, hh = e / d, c = e % d;
      const float v = row[2 * H + e] + (bias ? bias[2 * H + e] : 0.0f);
      vc[(int64_t(hh) * cap + pos) * d + c] = from_f<T>(v);
    }
  }
}

// int8 cache: one warp per (head, q | k | v) job; rows of d <= 256 values sit in registers
// (up to 4 rotary pairs or 8 values per lane), min/max by warp shuffles, then the quantization
// of cpu::kv_quantize_int8 with the same IEEE operations (division, round half to even).
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

template <typename T>
__global__ void qkv_rope_append_int8_kernel(T* __restrict__ q, KvQ8 kc, KvQ8 vc, int cap, const float* __restrict__ qkv,
                                            const float* __restrict__ bias, const float* __restrict__ inv_freq,
                                            const int* __restrict__ pos0_dev, int n, int d, int seq_length) {
  const int t = blockIdx.x, H = n * d, d2 = d / 2, lane = threadIdx.x % 32;
  const int pos = *pos0_dev + t;
  float logn = 1.0f;
  if (seq_length > 0 && pos + 1 > seq_length) logn = float(log(double(pos + 1)) / log(double(seq_length)));
  const float* row = qkv + int64_t(t) * 3 * H;
  for (int job = threadIdx.x / 32; job < 3 * n; job += blockDim.x / 32) {
    const int which = job / n, hh = job % n;
    float v[8];
    int c[8];
    int cnt = 0;
    if (which < 2) {
      for (int j = lane; j < d2; j += 32) {
        const int off = which * H + hh * d + j;
        const float a = row[off] + (bias ? bias[off] : 0.0f);
        const float b = row[off + d2] + (bias ? bias[off + d2] : 0.0f);
        const float ang = float(pos) * inv_freq[j];
        float sn, cs;
        sincosf(ang, &sn, &cs);
        const float oa = a * cs - b * sn, ob = b * cs + a * sn;
        if (which == 0) {
          T* dst = q + (int64_t(t) * n + hh) * d;
          dst[j] = from_f<T>(oa * logn);
          dst[j + d2] = from_f<T>(ob * logn);
        } else {
          v[cnt] = oa;
          c[cnt++] = j;
          v[cnt] = ob;
          c[cnt++] = j + d2;
        }
      }
      if (which == 1) {
        const int64_t r = int64_t(hh) * cap + pos;
        quantize_row_int8(v, c, cnt, kc.q + r * d, kc.sz + r);
      }
    } else {
      for (int e = lane; e < d; e += 32) {
        v[cnt] = row[2 * H + hh * d + e] + (bias ? bias[2 * H + hh * d + e] : 0.0f);
        c[cnt++] = e;
      }
      const int64_t r = int64_t(hh) * cap + pos;
      quantize_row_int8(v, c, cnt, vc.q + r * d, vc.sz + r);
    }
  }
}

}  // namespace

void qkv_rope_append_int8(void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const float* qkv, const float* bias,
                          const float* inv_freq, const int* pos0_dev, int T, int n, int d, int seq_length, DT dt,
                          cudaStream_t s) {
  if (d > 256) throw Error("cuda: the int8 KV cache supports head_dim up to 256");
  QWEN_DISPATCH_DT(dt, E,
                   qkv_rope_append_int8_kernel<E><<<T, 256, 0, s>>>(static_cast<E*>(q), k_cache, v_cache, cap, qkv,
                                                                    bias, inv_freq, pos0_dev, n, d, seq_length));
  CK_LAUNCH("qkv_rope_append_int8_kernel");
}

void qkv_rope_append(void* q, void* k_cache, void* v_cache, int cap, const float* qkv, const float* bias,
                     const float* inv_freq, const int* pos0_dev, int T, int n, int d, int seq_length, DT dt,
                     cudaStream_t s) {
  QWEN_DISPATCH_DT(dt, E,
                   qkv_rope_append_kernel<E><<<T, 256, 0, s>>>(static_cast<E*>(q), static_cast<E*>(k_cache),
                                                               static_cast<E*>(v_cache), cap, qkv, bias, inv_freq,
                                                               pos0_dev, n, d, seq_length));
  CK_LAUNCH("qkv_rope_append_kernel");
}

}  // namespace qwen::cuda
