// Split-KV ("flash-decoding") attention for the decode step, and the generic fallback for any
// head_dim at prefill.
// q [T, n, d] (bf16/fp16) at positions pos0.. (pos0 in device memory: the decode graph reads it
// at replay); one layer of a K/V cache (a KvLayer: [n_kv, cap, d], or paged) (GQA: query head h
// reads KV head h / (n / n_kv)); query t sees keys 0..pos0+t (causal). out [T, n, d].
// Kernel 1, grid (n / gc, splits, T), 128 threads: the block takes keys [s*kps, (s+1)*kps) of
// one KV head for gc of its query heads, kps = max(kmin, ceil(len / splits)) computed in the
// kernel from the live length len (pos0 + t + 1), so a short context in a long cache still
// spreads over many blocks (a fixed ceil(cap / splits) left 7B at 128 tokens on 32 blocks,
// ~16 us per layer); splits past the length exit at once (gc: the largest divisor of n / n_kv up to 8; 1 for MHA)
// and one query. A "key group" of d/8 lanes holds one key row (16 bytes per lane); a block has
// 1024/d groups, each walking its keys two at a time (4 loads of 16 bytes in flight per lane)
// with an fp32 online softmax per query head (running max m, sum l, acc[d]): each K/V row is
// loaded (and dequantized) once and serves the gc heads. The groups merge in shared memory; the
// block writes (m, l, acc) per head to `partial`, or the normalized output when splits == 1.
// Kernel 2, grid (n, T): merges the ranges that hold keys (ceil(len / kps) of them) in fp32:
// each range's weight exp(m_i - M) once into shared memory, then every output column is one
// independent sum over the ranges.
// Batched decode (attention_decode_batched): query t instead reads its own cache and length from
// a KvBatchRow in device memory (len = pos + 1).
// Limits: d a power of two in [8, 256]; 1 <= splits; any cap and length.
#include <algorithm>
#include <cmath>

#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int kThreads = 128;

// Keys per split-KV range for a query that sees `len` keys: both kernels compute it alike.
__device__ __forceinline__ int keys_per_split(int len, int splits, int kmin) {
  return max(kmin, (len + splits - 1) / splits);
}

// 8 consecutive values of row (h, j) of a cache plane at element offset `col`: raw, then as fp32
// (the 16-bit cache as stored, the int8 cache dequantized exactly as cpu::attention_int8 with the
// row's (scale, zero) from the matching sz plane).
template <typename T, bool Q8> struct KvRead {
  static constexpr int kElem = Q8 ? 1 : int(sizeof(T));
  __device__ __forceinline__ static uint4 raw(const KvLayer& L, char* plane, int h, int j, int d, int col) {
    const char* p = kv_row(L, plane, h, j, d * kElem) + col * kElem;
    if constexpr (Q8) {
      const uint2 u = *reinterpret_cast<const uint2*>(p);
      return make_uint4(u.x, u.y, 0, 0);
    } else {
      return *reinterpret_cast<const uint4*>(p);
    }
  }
  __device__ __forceinline__ static void convert(const uint4& u, const KvLayer& L, char* sz, int h, int j,
                                                 float (&f)[8]) {
    if constexpr (Q8) {
      const float2 p = *reinterpret_cast<const float2*>(kv_row(L, sz, h, j, sizeof(float2)));
#pragma unroll
      for (int i = 0; i < 8; i++) f[i] = p.x * (float(((i < 4 ? u.x : u.y) >> (8 * (i % 4))) & 0xFFu) - p.y);
    } else {
      unpack8<T>(u, f);
    }
  }
};

// GM: the most query heads one block serves (a power of two >= gc, the runtime count): every key
// and value row is read (and, for int8, dequantized) once per block and used by its gc heads.
template <typename T, bool Q8, int GM>
__global__ void __launch_bounds__(kThreads)
    attn_split_kernel(T* __restrict__ out, float* __restrict__ partial, const T* __restrict__ q, KvLayer kv,
                      const int* __restrict__ pos0_dev, int n, int n_kv, int gc, int d,
                      int splits, int kmin, float scale, const KvBatchRow* __restrict__ brows, int layer) {
  extern __shared__ float sm[];  // [groups][gc][d + 2]: m, l, acc
  pdl_wait();
  pdl_trigger();
  const int h0 = blockIdx.x * gc, sp = blockIdx.y, t = blockIdx.z;
  const int kvh = h0 / (n / n_kv);
  int len;
  if (brows) {  // batched decode: this row's own cache
    const KvBatchRow& e = brows[t];
    kv = kv_layer_of(e, layer);
    len = e.pos + 1;
  } else {
    len = *pos0_dev + t + 1;
  }
  const int kps = keys_per_split(len, splits, kmin);
  const int k_begin = sp * kps, k_end = min(k_begin + kps, len);
  if (k_begin >= k_end) return;  // a range past the length (splits > 1): the combine skips it
  const int lpk = d / 8, gpw = 32 / lpk, G = (kThreads / 32) * gpw;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = warp * gpw + lane / lpk, sub = lane % lpk;

  float qf[GM][8];
#pragma unroll
  for (int a = 0; a < GM; a++) {
    if (a < gc) {
      unpack8<T>(*reinterpret_cast<const uint4*>(q + (int64_t(t) * n + h0 + a) * d + sub * 8), qf[a]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) qf[a][i] = 0.0f;
    }
  }
  using R = KvRead<T, Q8>;

  float m[GM], l[GM], acc[GM][8];
#pragma unroll
  for (int a = 0; a < GM; a++) {
    m[a] = -INFINITY;
    l[a] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) acc[a][i] = 0.0f;
  }
  // Trip count is uniform over the block so the shuffles below see every lane.
  for (int jb = k_begin; jb < k_end; jb += 2 * G) {
    const int j1 = jb + g, j2 = jb + G + g;
    const bool ok1 = j1 < k_end, ok2 = j2 < k_end;
    const int r1 = ok1 ? j1 : k_begin, r2 = ok2 ? j2 : k_begin;
    const uint4 ka = R::raw(kv, kv.k, kvh, r1, d, sub * 8);
    const uint4 kb = R::raw(kv, kv.k, kvh, r2, d, sub * 8);
    const uint4 va = R::raw(kv, kv.v, kvh, r1, d, sub * 8);
    const uint4 vb = R::raw(kv, kv.v, kvh, r2, d, sub * 8);
    float f[8], s1[GM], s2[GM];
    R::convert(ka, kv, kv.ksz, kvh, r1, f);
#pragma unroll
    for (int a = 0; a < GM; a++) {
      s1[a] = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; i++) s1[a] = fmaf(qf[a][i], f[i], s1[a]);
    }
    R::convert(kb, kv, kv.ksz, kvh, r2, f);
#pragma unroll
    for (int a = 0; a < GM; a++) {
      s2[a] = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; i++) s2[a] = fmaf(qf[a][i], f[i], s2[a]);
    }
    for (int o = lpk / 2; o > 0; o >>= 1) {
#pragma unroll
      for (int a = 0; a < GM; a++) {
        s1[a] += __shfl_xor_sync(0xffffffffu, s1[a], o);
        s2[a] += __shfl_xor_sync(0xffffffffu, s2[a], o);
      }
    }
    float fa[8], fb[8];
    R::convert(va, kv, kv.vsz, kvh, r1, fa);
    R::convert(vb, kv, kv.vsz, kvh, r2, fb);
#pragma unroll
    for (int a = 0; a < GM; a++) {
      const float x1 = ok1 ? s1[a] * scale : -INFINITY;
      const float x2 = ok2 ? s2[a] * scale : -INFINITY;
      const float m_new = fmaxf(m[a], fmaxf(x1, x2));
      if (m_new == -INFINITY) continue;  // this group had no key in this round
      const float corr = expf(m[a] - m_new), p1 = expf(x1 - m_new), p2 = expf(x2 - m_new);
      l[a] = l[a] * corr + p1 + p2;
#pragma unroll
      for (int i = 0; i < 8; i++) acc[a][i] = acc[a][i] * corr + p1 * fa[i] + p2 * fb[i];
      m[a] = m_new;
    }
  }
#pragma unroll
  for (int a = 0; a < GM; a++) {
    if (a >= gc) break;
    float* mine = sm + (g * gc + a) * (d + 2);
    if (sub == 0) {
      mine[0] = m[a];
      mine[1] = l[a];
    }
#pragma unroll
    for (int i = 0; i < 8; i++) mine[2 + sub * 8 + i] = acc[a][i];
  }
  __syncthreads();

  for (int e = threadIdx.x; e < gc * d; e += kThreads) {
    const int a = e / d, c = e % d, h = h0 + a;
    float M = -INFINITY;
    for (int i = 0; i < G; i++) M = fmaxf(M, sm[(i * gc + a) * (d + 2)]);
    float L = 0.0f, A = 0.0f;
    for (int i = 0; i < G; i++) {
      const float* p = sm + (i * gc + a) * (d + 2);
      const float w = expf(p[0] - M);
      L += p[1] * w;
      A += p[2 + c] * w;
    }
    if (splits == 1) {
      out[(int64_t(t) * n + h) * d + c] = from_f<T>(A / L);
    } else {
      float* p = partial + ((int64_t(t) * n + h) * splits + sp) * (d + 2);
      if (c == 0) {
        p[0] = M;
        p[1] = L;
      }
      p[2 + c] = A;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    attn_combine_kernel(T* __restrict__ out, const float* __restrict__ partial, const int* __restrict__ pos0_dev, int n,
                        int d, int splits, int kmin, const KvBatchRow* __restrict__ brows) {
  extern __shared__ float wgt[];  // [splits]: exp(m_i - M)
  __shared__ float red[kThreads / 32];
  pdl_wait();
  pdl_trigger();
  const int h = blockIdx.x, t = blockIdx.y, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int len = brows ? brows[t].pos + 1 : *pos0_dev + t + 1;
  const int kps = keys_per_split(len, splits, kmin);
  const int active = min(splits, (len + kps - 1) / kps);
  const int stride = d + 2;
  const float* p = partial + (int64_t(t) * n + h) * splits * stride;
  // M = max over the ranges of m_i (block reduction; every warp reads the partials itself)
  float M = -INFINITY;
  for (int i = threadIdx.x; i < active; i += kThreads) M = fmaxf(M, p[i * stride]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  if (lane == 0) red[warp] = M;
  __syncthreads();
  M = red[0];
#pragma unroll
  for (int i = 1; i < kThreads / 32; i++) M = fmaxf(M, red[i]);
  __syncthreads();  // red is reused below
  float L = 0.0f;
  for (int i = threadIdx.x; i < active; i += kThreads) {
    const float w = expf(p[i * stride] - M);
    wgt[i] = w;
    L += p[i * stride + 1] * w;
  }
  L = warp_sum(L);
  if (lane == 0) red[warp] = L;
  __syncthreads();
  L = 0.0f;
#pragma unroll
  for (int i = 0; i < kThreads / 32; i++) L += red[i];
  const float inv = 1.0f / L;
  for (int c = threadIdx.x; c < d; c += kThreads) {
    float A = 0.0f;
#pragma unroll 4
    for (int i = 0; i < active; i++) A += p[i * stride + 2 + c] * wgt[i];
    out[(int64_t(t) * n + h) * d + c] = from_f<T>(A * inv);
  }
}

}  // namespace

namespace {

template <typename E, bool Q8, int GM>
void launch_split(E* out, float* partial, const E* q, const KvLayer& kv, const int* pos0_dev,
                  int T, int n, int n_kv, int gc, int d, int splits, int kmin, float scale, cudaStream_t s,
                  const KvBatchRow* brows, int layer) {
  const int groups = (kThreads / 32) * (32 / (d / 8));
  const size_t smem = size_t(groups) * gc * (d + 2) * sizeof(float);
  launch_pdl(attn_split_kernel<E, Q8, GM>, dim3(n / gc, splits, T), kThreads, smem, s, out, partial, q, kv, pos0_dev,
             n, n_kv, gc, d, splits, kmin, scale, brows, layer);
  CK_LAUNCH("attn_split_kernel");
}

template <bool Q8>
void launch_decode(void* out, const void* q, const KvLayer& kv, const int* pos0_dev, int T, int n, int n_kv, int d,
                   int splits, float* partial, DT dt, cudaStream_t s, const KvBatchRow* brows = nullptr,
                   int layer = 0) {
  if (d < 8 || d > 256 || (d & (d - 1)) != 0)
    throw Error("cuda: attention supports head_dim 8, 16, 32, 64, 128 or 256 (got " + std::to_string(d) + ")");
  if (n_kv < 1 || n % n_kv != 0)
    throw Error("cuda: attention over " + std::to_string(n) + " query heads and " + std::to_string(n_kv) +
                " KV heads (n_kv must divide n)");
  if (splits < 1) splits = 1;
  const int kmin = splits > 1 ? kDecodeMinKeysPerSplit : 1;
  const int gc = attention_decode_heads_per_block(n, n_kv);
  const float scale = 1.0f / std::sqrt(float(d));
  QWEN_DISPATCH_DT(dt, E, {
    E* o = static_cast<E*>(out);
    const E* qq = static_cast<const E*>(q);
    if (gc == 1)
      launch_split<E, Q8, 1>(o, partial, qq, kv, pos0_dev, T, n, n_kv, gc, d, splits, kmin, scale, s, brows, layer);
    else if (gc == 2)
      launch_split<E, Q8, 2>(o, partial, qq, kv, pos0_dev, T, n, n_kv, gc, d, splits, kmin, scale, s, brows, layer);
    else if (gc <= 4)
      launch_split<E, Q8, 4>(o, partial, qq, kv, pos0_dev, T, n, n_kv, gc, d, splits, kmin, scale, s, brows, layer);
    else
      launch_split<E, Q8, 8>(o, partial, qq, kv, pos0_dev, T, n, n_kv, gc, d, splits, kmin, scale, s, brows, layer);
    if (splits > 1) {
      // wgt[splits], padded: the unrolled weighted sum may load up to 3 entries past `active`
      // (compute-sanitizer saw a 12-byte read past an 8-byte allocation with splits = 2).
      const size_t wbytes = size_t(splits + 4) * sizeof(float);
      launch_pdl(attn_combine_kernel<E>, dim3(n, T), kThreads, wbytes, s, o, partial, pos0_dev, n, d, splits, kmin,
                 brows);
      CK_LAUNCH("attn_combine_kernel");
    }
  });
}

}  // namespace

void attention_decode_kv(void* out, const void* q, const KvLayer& kv, bool int8, const int* pos0_dev, int T, int n,
                         int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s) {
  if (int8)
    launch_decode<true>(out, q, kv, pos0_dev, T, n, n_kv, d, splits, partial, dt, s);
  else
    launch_decode<false>(out, q, kv, pos0_dev, T, n, n_kv, d, splits, partial, dt, s);
}

void attention_decode(void* out, const void* q, const void* k_cache, const void* v_cache, int cap, const int* pos0_dev,
                      int T, int n, int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s) {
  attention_decode_kv(out, q, kv_contiguous(const_cast<void*>(k_cache), const_cast<void*>(v_cache), cap), false,
                      pos0_dev, T, n, n_kv, d, splits, partial, dt, s);
}

void attention_decode_batched(void* out, const void* q, const KvBatchRow* rows, int layer, bool int8, int T, int n,
                              int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s) {
  if (int8)
    launch_decode<true>(out, q, KvLayer{}, nullptr, T, n, n_kv, d, splits, partial, dt, s, rows, layer);
  else
    launch_decode<false>(out, q, KvLayer{}, nullptr, T, n, n_kv, d, splits, partial, dt, s, rows, layer);
}

void attention_decode_int8(void* out, const void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const int* pos0_dev, int T,
                           int n, int n_kv, int d, int splits, float* partial, DT dt, cudaStream_t s) {
  attention_decode_kv(out, q, kv_contiguous(k_cache, v_cache, cap), true, pos0_dev, T, n, n_kv, d, splits, partial, dt,
                      s);
}

}  // namespace qwen::cuda
