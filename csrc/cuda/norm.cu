// Embedding lookup and RMSNorm, row-wise and memory-bound.
// embedding: x [T, H] fp32 = wte[ids[t]] (wte [V, H] bf16/fp16; ids in device memory, already
//   range-checked by the core). One block per token. wte may live in mapped pinned host memory
//   (the default: it is read one row per token, over PCIe): with a 16-byte aligned wte and
//   H % 8 == 0 each thread issues up to 4 16-byte loads before converting any, so a row costs
//   about one PCIe round trip; otherwise the scalar kernel.
// argmax: greedy decoding on the device (4 bytes back instead of the logits).
// rmsnorm: out [T, H] (bf16/fp16) = x * rsqrt(mean(x^2) + eps) * w, x and w fp32, the sum of
//   squares in fp32 (tree reduction). One block of 256 threads per row; the row is read twice
//   (the second read hits L1/L2); any H.
#include "ops.cuh"

namespace qwen::cuda {

namespace {

template <typename T>
__global__ void embedding_kernel(float* __restrict__ x, const T* __restrict__ wte, const int32_t* __restrict__ ids,
                                 int H) {
  // 8 element loads per thread in flight before the first store (wte may be across PCIe).
  constexpr int U = 8;
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
  __shared__ float sv[kArgmaxThreads / 32];
  __shared__ int si[kArgmaxThreads / 32];
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

}  // namespace

void embedding(float* x, const void* wte, const int32_t* ids, int T, int H, DT dt, cudaStream_t s) {
  const bool vec = H % 8 == 0 && (reinterpret_cast<uintptr_t>(wte) & 15) == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
  if (vec)
    QWEN_DISPATCH_DT(dt, E, embedding16_kernel<E><<<T, 256, 0, s>>>(x, static_cast<const E*>(wte), ids, H));
  else
    QWEN_DISPATCH_DT(dt, E, embedding_kernel<E><<<T, 256, 0, s>>>(x, static_cast<const E*>(wte), ids, H));
  CK_LAUNCH("embedding_kernel");
}

void argmax(int32_t* out, const float* v, int n, cudaStream_t s) {
  if (n < 1) throw Error("cuda: argmax of an empty vector");
  argmax_kernel<<<1, kArgmaxThreads, 0, s>>>(out, v, n);
  CK_LAUNCH("argmax_kernel");
}

void rmsnorm(void* out, const float* x, const float* w, int T, int H, float eps, DT dt, cudaStream_t s) {
  QWEN_DISPATCH_DT(dt, E, rmsnorm_kernel<E><<<T, 256, 0, s>>>(static_cast<E*>(out), x, w, H, eps));
  CK_LAUNCH("rmsnorm_kernel");
}

}  // namespace qwen::cuda
