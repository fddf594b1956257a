// Embedding lookup and RMSNorm, row-wise and memory-bound. All launched with PDL (common.cuh).
// embedding: x [T, H] fp32 = wte[ids[t]] (wte [V, H] bf16/fp16; ids in device memory, already
//   range-checked by the core). One block per token. wte may live in mapped pinned host memory
//   (the default: it is read one row per token, over PCIe): with a 16-byte aligned wte and
//   H % 8 == 0 each thread issues up to 4 16-byte loads before converting any, so a row costs
//   about one PCIe round trip; otherwise the scalar kernel.
// argmax: greedy decoding on the device (4 bytes back instead of the logits).
// rmsnorm: out [T, H] (bf16/fp16) = x * rsqrt(mean(x^2) + eps) * w, x and w fp32, the sum of
//   squares in fp32 (tree reduction). One block of 256 threads per row. At decode this kernel
//   is pure latency (16 KB of x and of w at 7B), so the vector path (H % 4 == 0, H <= 8192,
//   16-byte aligned x and w, 8-byte aligned out) issues every load of x and w (up to 8 float4
//   each per thread) before the first arithmetic: one memory round trip, not one per element
//   (the profile of the scalar loop: ~12 us per call at 7B, 64 calls a step). Otherwise the
//   scalar kernel (any H; the row is read twice).
#include "ops.cuh"

namespace qwen::cuda {

namespace {

template <typename T>
__global__ void embedding_kernel(float* __restrict__ x, const T* __restrict__ wte, const int32_t* __restrict__ ids,
                                 int H) {
  // 8 element loads per thread in flight before the first store (wte may be across PCIe).
  constexpr int U = 8;
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const T* row = wte + int64_t(ids[t]) * H;
  for (int i0 = threadIdx.x; i0 < H; i0 += U * blockDim.x) {
    T u[U];
#pragma unroll
    for (int k = 0; k < U; k++) {
      const int i = i0 + k * blockDim.x;
      if (i < H) u[k] = row[i];
    }
#pragma unroll
    for (int k = 0; k < U; k++) {
      const int i = i0 + k * blockDim.x;
      if (i < H) x[int64_t(t) * H + i] = to_f(u[k]);
    }
  }
}

template <typename T>
__global__ void embedding16_kernel(float* __restrict__ x, const T* __restrict__ wte, const int32_t* __restrict__ ids,
                                   int H) {
  constexpr int U = 4;
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x, nv = H / 8;
  const uint4* row = reinterpret_cast<const uint4*>(wte + int64_t(ids[t]) * H);
  float4* out = reinterpret_cast<float4*>(x + int64_t(t) * H);
  for (int i0 = threadIdx.x; i0 < nv; i0 += U * blockDim.x) {
    uint4 u[U];
#pragma unroll
    for (int k = 0; k < U; k++) {
      const int i = i0 + k * blockDim.x;
      if (i < nv) u[k] = row[i];
    }
#pragma unroll
    for (int k = 0; k < U; k++) {
      const int i = i0 + k * blockDim.x;
      if (i < nv) {
        float f[8];
        unpack8<T>(u[k], f);
        out[2 * i] = make_float4(f[0], f[1], f[2], f[3]);
        out[2 * i + 1] = make_float4(f[4], f[5], f[6], f[7]);
      }
    }
  }
}

constexpr int kArgmaxThreads = 1024;

// (v, i) beats (bv, bi): larger value, or equal value and lower index; NaN never beats.
__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(int32_t* __restrict__ out, const float* __restrict__ v,
                                                                int n) {
  out += blockIdx.x;  // one block per row of v [rows, n]
  v += int64_t(blockIdx.x) * n;
  __shared__ float sv[kArgmaxThreads / 32];
  __shared__ int si[kArgmaxThreads / 32];
  pdl_wait();
  pdl_trigger();
  float bv = -INFINITY;
  int bi = n;  // "none yet": any real index beats it on equal values
  for (int i = threadIdx.x; i < n; i += kArgmaxThreads) {
    const float x = v[i];
    if (argmax_better(x, i, bv, bi)) bv = x, bi = i;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    bv = sv[lane];  // kArgmaxThreads / 32 == 32 warps
    bi = si[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (lane == 0) *out = bi < n ? bi : 0;  // all NaN: 0
  }
}

template <typename T>
__global__ void rmsnorm_kernel(T* __restrict__ out, const float* __restrict__ x, const float* __restrict__ w, int H,
                               float eps) {
  __shared__ float red[32];
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const float* xr = x + int64_t(t) * H;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) ss += xr[i] * xr[i];
  ss = warp_sum(ss);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    float v = lane < nwarps ? red[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const float r = rsqrtf(red[0] / float(H) + eps);
  T* o = out + int64_t(t) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = from_f<T>(xr[i] * r * w[i]);
}

constexpr int kNormThreads = 256, kNormVec = 8;  // the vector path: H <= 4 * 256 * 8 = 8192

template <typename T>
__global__ void __launch_bounds__(kNormThreads) rmsnorm4_kernel(T* __restrict__ out, const float* __restrict__ x,
                                                                const float* __restrict__ w, int H, float eps) {
  __shared__ float red[kNormThreads / 32];
  const int t = blockIdx.x, nv = H / 4;
  const float4* xr = reinterpret_cast<const float4*>(x + int64_t(t) * H);
  const float4* wr = reinterpret_cast<const float4*>(w);
  float4 xv[kNormVec], wv[kNormVec];
#pragma unroll
  for (int k = 0; k < kNormVec; k++)  // the norm weights first: they do not wait for the predecessor
    if (threadIdx.x + k * kNormThreads < nv) wv[k] = __ldg(wr + threadIdx.x + k * kNormThreads);
  pdl_wait();
  pdl_trigger();
#pragma unroll
  for (int k = 0; k < kNormVec; k++)
    if (threadIdx.x + k * kNormThreads < nv) xv[k] = xr[threadIdx.x + k * kNormThreads];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < kNormVec; k++) {
    if (threadIdx.x + k * kNormThreads < nv) {
      const float4 v = xv[k];
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  }
  ss = warp_sum(ss);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  float tot = lane < kNormThreads / 32 ? red[lane] : 0.0f;
  tot = warp_sum(tot);  // every warp reduces the partials itself: no second barrier
  const float r = rsqrtf(tot / float(H) + eps);
  uint2* o = reinterpret_cast<uint2*>(out + int64_t(t) * H);
#pragma unroll
  for (int k = 0; k < kNormVec; k++) {
    const int i = threadIdx.x + k * kNormThreads;
    if (i < nv) {
      const float4 v = xv[k], g = wv[k];
      o[i] = make_uint2(pack2<T>(v.x * r * g.x, v.y * r * g.y), pack2<T>(v.z * r * g.z, v.w * r * g.w));
    }
  }
}

}  // namespace

void embedding(float* x, const void* wte, const int32_t* ids, int T, int H, DT dt, cudaStream_t s) {
  const bool vec = H % 8 == 0 && (reinterpret_cast<uintptr_t>(wte) & 15) == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
  if (vec)
    QWEN_DISPATCH_DT(dt, E, launch_pdl(embedding16_kernel<E>, T, 256, 0, s, x, static_cast<const E*>(wte), ids, H));
  else
    QWEN_DISPATCH_DT(dt, E, launch_pdl(embedding_kernel<E>, T, 256, 0, s, x, static_cast<const E*>(wte), ids, H));
  CK_LAUNCH("embedding_kernel");
}

void argmax(int32_t* out, const float* v, int n, cudaStream_t s, int rows) {
  if (n < 1 || rows < 1) throw Error("cuda: argmax of an empty vector");
  launch_pdl(argmax_kernel, rows, kArgmaxThreads, 0, s, out, v, n);
  CK_LAUNCH("argmax_kernel");
}

void rmsnorm(void* out, const float* x, const float* w, int T, int H, float eps, DT dt, cudaStream_t s) {
  auto aligned = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; };
  const bool vec = H % 4 == 0 && H <= 4 * kNormThreads * kNormVec && aligned(x, 16) && aligned(w, 16) && aligned(out, 8);
  if (vec)
    QWEN_DISPATCH_DT(dt, E, launch_pdl(rmsnorm4_kernel<E>, T, kNormThreads, 0, s, static_cast<E*>(out), x, w, H, eps));
  else
    QWEN_DISPATCH_DT(dt, E, launch_pdl(rmsnorm_kernel<E>, T, 256, 0, s, static_cast<E*>(out), x, w, H, eps));
  CK_LAUNCH("rmsnorm_kernel");
}

}  // namespace qwen::cuda
