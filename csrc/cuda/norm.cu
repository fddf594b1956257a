// Embedding lookup and RMSNorm, row-wise and memory-bound.
// embedding: x [T, H] fp32 = wte[ids[t]] (wte [V, H] bf16/fp16; ids in device memory, already
//   range-checked by the core). One block per token.
// rmsnorm: out [T, H] (bf16/fp16) = x * rsqrt(mean(x^2) + eps) * w, x and w fp32, the sum of
//   squares in fp32 (tree reduction). One block of 256 threads per row; the row is read twice
//   (the second read hits L1/L2); any H.
#include "ops.cuh"

namespace qwen::cuda {

namespace {

template <typename T>
__global__ void embedding_kernel(float* __restrict__ x, const T* __restrict__ wte, const int32_t* __restrict__ ids,
                                 int H) {
  const int t = blockIdx.x;
  const T* row = wte + int64_t(ids[t]) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) x[int64_t(t) * H + i] = to_f(row[i]);
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
  QWEN_DISPATCH_DT(dt, E, embedding_kernel<E><<<T, 256, 0, s>>>(x, static_cast<const E*>(wte), ids, H));
  CK_LAUNCH("embedding_kernel");
}

void rmsnorm(void* out, const float* x, const float* w, int T, int H, float eps, DT dt, cudaStream_t s) {
  QWEN_DISPATCH_DT(dt, E, rmsnorm_kernel<E><<<T, 256, 0, s>>>(static_cast<E*>(out), x, w, H, eps));
  CK_LAUNCH("rmsnorm_kernel");
}

}  // namespace qwen::cuda
