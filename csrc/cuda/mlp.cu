// SwiGLU of Qwen's MLP for T > 1 (the decode step fuses it into gemv_swiglu, gemv.cu):
// g [T, F] (bf16/fp16) = a * silu(b), where a = ab[t, 0:F] = h W1^T, b = ab[t, F:2F] = h W2^T
// (fp32, the output of one GEMM over the stacked [W1; W2]). silu applies to w2's output (SPEC 3).
// Elementwise, one thread per output; expf (not the fast intrinsic) to track the CPU twin.
#include "ops.cuh"

namespace qwen::cuda {

namespace {

template <typename T>
__global__ void swiglu_kernel(T* __restrict__ g, const float* __restrict__ ab, int F, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / F, j = i % F;
    const float a = ab[t * 2 * F + j], b = ab[t * 2 * F + F + j];
    g[i] = from_f<T>(a * (b / (1.0f + expf(-b))));
  }
}

}  // namespace

void swiglu(void* g, const float* ab, int T, int F, DT dt, cudaStream_t s) {
  const int64_t count = int64_t(T) * F;
  const int blocks = int(count / 256 + 1 < 65536 ? count / 256 + 1 : 65536);
  QWEN_DISPATCH_DT(dt, E, swiglu_kernel<E><<<blocks, 256, 0, s>>>(static_cast<E*>(g), ab, F, count));
  CK_LAUNCH("swiglu_kernel");
}

}  // namespace qwen::cuda
