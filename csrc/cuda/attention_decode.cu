// Split-KV ("flash-decoding") attention for the decode step, and the generic fallback for any
// head_dim at prefill.
// q [T, n, d] (bf16/fp16) at positions pos0.. (pos0 in device memory: the decode graph reads it
// at replay); K/V cache [n, cap, d]; query t sees keys 0..pos0+t (causal). out [T, n, d].
// Kernel 1, grid (n, splits, T), 128 threads: the block takes keys [s*kps, (s+1)*kps) of its
// (head, query). A "key group" of d/8 lanes holds one key row (16 bytes per lane); a block has
// 1024/d groups, each walking its keys two at a time (4 loads of 16 bytes in flight per lane)
// with an fp32 online softmax (running max m, sum l, acc[d]). The groups merge in shared memory;
// the block writes (m, l, acc) to `partial`, or the normalized output when splits == 1.
// Kernel 2, grid (n, T): merges the ranges that hold keys (ceil(len / kps) of them) in fp32.
// Limits: d a power of two in [8, 256]; 1 <= splits; any cap and length.
#include <cmath>

#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int kThreads = 128;

// 8 consecutive values of one cache row (row = h * cap + j) at element offset `col`, as fp32:
// the 16-bit cache as stored, the int8 cache dequantized exactly as cpu::attention_int8.
template <typename T, bool Q8> struct KvRead {
  const void* base;
  const float2* sz;
  __device__ __forceinline__ uint4 raw(int64_t row, int d, int col) const {
    if constexpr (Q8) {
      const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(base) + row * d + col);
      return make_uint4(u.x, u.y, 0, 0);
    } else {
      return *reinterpret_cast<const uint4*>(static_cast<const T*>(base) + row * d + col);
    }
  }
  __device__ __forceinline__ void convert(const uint4& u, int64_t row, float (&f)[8]) const {
    if constexpr (Q8) {
      const float2 p = sz[row];
#pragma unroll
      for (int i = 0; i < 8; i++) f[i] = p.x * (float(((i < 4 ? u.x : u.y) >> (8 * (i % 4))) & 0xFFu) - p.y);
    } else {
      unpack8<T>(u, f);
    }
  }
};

template <typename T, bool Q8>
__global__ void __launch_bounds__(kThreads)
    attn_split_kernel(T* __restrict__ out, float* __restrict__ partial, const T* __restrict__ q, KvRead<T, Q8> Kr,
                      KvRead<T, Q8> Vr, int cap, const int* __restrict__ pos0_dev, int n, int d, int splits, int kps,
                      float scale) {
  extern __shared__ float sm[];  // [groups][d + 2]: m, l, acc
  const int h = blockIdx.x, sp = blockIdx.y, t = blockIdx.z;
  const int len = *pos0_dev + t + 1;
  const int k_begin = sp * kps, k_end = min(k_begin + kps, len);
  if (k_begin >= k_end) return;  // a range past the length (splits > 1): the combine skips it
  const int lpk = d / 8, gpw = 32 / lpk, G = (kThreads / 32) * gpw;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = warp * gpw + lane / lpk, sub = lane % lpk;

  float qf[8];
  unpack8<T>(*reinterpret_cast<const uint4*>(q + (int64_t(t) * n + h) * d + sub * 8), qf);
  const int64_t hrow = int64_t(h) * cap;

  float m = -INFINITY, l = 0.0f, acc[8];
#pragma unroll
  for (int i = 0; i < 8; i++) acc[i] = 0.0f;
  // Trip count is uniform over the block so the shuffles below see every lane.
  for (int jb = k_begin; jb < k_end; jb += 2 * G) {
    const int j1 = jb + g, j2 = jb + G + g;
    const bool ok1 = j1 < k_end, ok2 = j2 < k_end;
    const int64_t r1 = hrow + (ok1 ? j1 : k_begin), r2 = hrow + (ok2 ? j2 : k_begin);
    const uint4 ka = Kr.raw(r1, d, sub * 8);
    const uint4 kb = Kr.raw(r2, d, sub * 8);
    const uint4 va = Vr.raw(r1, d, sub * 8);
    const uint4 vb = Vr.raw(r2, d, sub * 8);
    float f[8], s1 = 0.0f, s2 = 0.0f;
    Kr.convert(ka, r1, f);
#pragma unroll
    for (int i = 0; i < 8; i++) s1 = fmaf(qf[i], f[i], s1);
    Kr.convert(kb, r2, f);
#pragma unroll
    for (int i = 0; i < 8; i++) s2 = fmaf(qf[i], f[i], s2);
    for (int o = lpk / 2; o > 0; o >>= 1) {
      s1 += __shfl_xor_sync(0xffffffffu, s1, o);
      s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    }
    s1 = ok1 ? s1 * scale : -INFINITY;
    s2 = ok2 ? s2 * scale : -INFINITY;
    const float m_new = fmaxf(m, fmaxf(s1, s2));
    if (m_new == -INFINITY) continue;  // this group had no key in this round
    const float corr = expf(m - m_new), p1 = expf(s1 - m_new), p2 = expf(s2 - m_new);
    l = l * corr + p1 + p2;
    float fa[8], fb[8];
    Vr.convert(va, r1, fa);
    Vr.convert(vb, r2, fb);
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = acc[i] * corr + p1 * fa[i] + p2 * fb[i];
    m = m_new;
  }
  float* mine = sm + g * (d + 2);
  if (sub == 0) {
    mine[0] = m;
    mine[1] = l;
  }
#pragma unroll
  for (int i = 0; i < 8; i++) mine[2 + sub * 8 + i] = acc[i];
  __syncthreads();

  float M = -INFINITY;
  for (int i = 0; i < G; i++) M = fmaxf(M, sm[i * (d + 2)]);
  float L = 0.0f;
  for (int i = 0; i < G; i++) L += sm[i * (d + 2) + 1] * expf(sm[i * (d + 2)] - M);
  for (int c = threadIdx.x; c < d; c += kThreads) {
    float A = 0.0f;
    for (int i = 0; i < G; i++) A += sm[i * (d + 2) + 2 + c] * expf(sm[i * (d + 2)] - M);
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
                        int d, int splits, int kps) {
  const int h = blockIdx.x, t = blockIdx.y;
  const int len = *pos0_dev + t + 1;
  const int active = min(splits, (len + kps - 1) / kps);
  const float* p = partial + (int64_t(t) * n + h) * splits * (d + 2);
  float M = -INFINITY;
  for (int i = 0; i < active; i++) M = fmaxf(M, p[i * (d + 2)]);
  float L = 0.0f;
  for (int i = 0; i < active; i++) L += p[i * (d + 2) + 1] * expf(p[i * (d + 2)] - M);
  const float inv = 1.0f / L;
  for (int c = threadIdx.x; c < d; c += kThreads) {
    float A = 0.0f;
    for (int i = 0; i < active; i++) A += p[i * (d + 2) + 2 + c] * expf(p[i * (d + 2)] - M);
    out[(int64_t(t) * n + h) * d + c] = from_f<T>(A * inv);
  }
}

}  // namespace

namespace {

template <bool Q8>
void launch_decode(void* out, const void* q, const void* k, const float2* ksz, const void* v, const float2* vsz, int cap,
                   const int* pos0_dev, int T, int n, int d, int splits, float* partial, DT dt, cudaStream_t s) {
  if (d < 8 || d > 256 || (d & (d - 1)) != 0)
    throw Error("cuda: attention supports head_dim 8, 16, 32, 64, 128 or 256 (got " + std::to_string(d) + ")");
  if (splits < 1) splits = 1;
  const int kps = ceil_div(cap, splits);
  const int groups = (kThreads / 32) * (32 / (d / 8));
  const size_t smem = size_t(groups) * (d + 2) * sizeof(float);
  const float scale = 1.0f / std::sqrt(float(d));
  dim3 grid(n, splits, T);
  QWEN_DISPATCH_DT(dt, E, {
    KvRead<E, Q8> Kr{k, ksz}, Vr{v, vsz};
    attn_split_kernel<E, Q8><<<grid, kThreads, smem, s>>>(static_cast<E*>(out), partial, static_cast<const E*>(q), Kr,
                                                          Vr, cap, pos0_dev, n, d, splits, kps, scale);
    CK_LAUNCH("attn_split_kernel");
    if (splits > 1) {
      attn_combine_kernel<E><<<dim3(n, T), kThreads, 0, s>>>(static_cast<E*>(out), partial, pos0_dev, n, d, splits,
                                                             kps);
      CK_LAUNCH("attn_combine_kernel");
    }
  });
}

}  // namespace

void attention_decode(void* out, const void* q, const void* k_cache, const void* v_cache, int cap, const int* pos0_dev,
                      int T, int n, int d, int splits, float* partial, DT dt, cudaStream_t s) {
  launch_decode<false>(out, q, k_cache, nullptr, v_cache, nullptr, cap, pos0_dev, T, n, d, splits, partial, dt, s);
}

void attention_decode_int8(void* out, const void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, const int* pos0_dev, int T,
                           int n, int d, int splits, float* partial, DT dt, cudaStream_t s) {
  launch_decode<true>(out, q, k_cache.q, k_cache.sz, v_cache.q, v_cache.sz, cap, pos0_dev, T, n, d, splits, partial, dt,
                      s);
}

}  // namespace qwen::cuda
