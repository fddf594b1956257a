// Shared device helpers of the CUDA backend: error checks that throw qwen::Error (never abort),
// the two weight/activation element types (bf16, fp16) with their 16-byte vector conversions,
// warp reductions, and the PTX wrappers (cp.async, ldmatrix, mma.sync m16n8k16) used by the
// tensor-core kernels. sm_80 or newer.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "../core/error.h"

namespace qwen::cuda {

// Element type of weights, activations fed to matmuls, and the KV cache.
enum class DT { BF16, F16 };
inline size_t dt_size(DT) { return 2; }
inline const char* dt_name(DT t) { return t == DT::BF16 ? "bf16" : "fp16"; }

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what) {
  throw Error(std::string("cuda: ") + what + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Every runtime call goes through CK; every kernel launch is followed by CK_LAUNCH.
#define CK(call)                                                      \
  do {                                                                \
    cudaError_t ck_e_ = (call);                                       \
    if (ck_e_ != cudaSuccess) ::qwen::cuda::throw_cuda(ck_e_, #call); \
  } while (0)
#define CK_LAUNCH(name)                                                        \
  do {                                                                         \
    cudaError_t ck_e_ = cudaGetLastError();                                    \
    if (ck_e_ != cudaSuccess) ::qwen::cuda::throw_cuda(ck_e_, "launch of " name); \
  } while (0)

// Runs the body with T bound to the device element type of `dt`.
#define QWEN_DISPATCH_DT(dt, T, ...)  \
  do {                                \
    if ((dt) == ::qwen::cuda::DT::BF16) { \
      using T = __nv_bfloat16;        \
      __VA_ARGS__;                    \
    } else {                          \
      using T = __half;               \
      __VA_ARGS__;                    \
    }                                 \
  } while (0)

template <typename T> struct Pair;
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };
template <> struct Pair<__half> { using type = __half2; };

__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float2 to_f2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 to_f2(__half2 v) { return __half22float2(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// Two floats packed into one 32-bit register of two T (low half = a), for mma operands.
template <typename T> __device__ __forceinline__ uint32_t pack2(float a, float b);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 8 elements (16 bytes) <-> 8 floats.
template <typename T> __device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  using T2 = typename Pair<T>::type;
  const T2* h = reinterpret_cast<const T2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 v = to_f2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
template <typename T> __device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  uint4 u;
  u.x = pack2<T>(f[0], f[1]);
  u.y = pack2<T>(f[2], f[3]);
  u.z = pack2<T>(f[4], f[5]);
  u.w = pack2<T>(f[6], f[7]);
  return u;
}

// Weights are read once per step: load them around L1 (they do not fit any cache anyway).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- Programmatic dependent launch (PDL, sm_90+) ----
// A decode step is ~300 kernels, most of them short; launched with launch_pdl, a kernel may be
// scheduled while the one before it in the stream still runs, so its launch latency and its
// first weight loads overlap the predecessor's tail. Contract for every kernel launched that way:
// it calls pdl_wait() before it reads anything an earlier kernel wrote and before it writes
// anything (only reads of the immutable weights may come first), and pdl_trigger() once it may
// let its successor be scheduled. griddepcontrol.wait returns when the predecessor grid has
// completed and its memory is visible, so ordering stays transitive down the stream. Both are
// no-ops where PDL is off (sm_80-89, QWEN_CUDA_PDL=0) and in kernels launched plainly.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launch_pdl asks for PDL on the current device: compute capability 9.0 or newer and
// QWEN_CUDA_PDL not "0" (device_info.cu; cached per device).
bool pdl_enabled();

// kernel<<<grid, block, smem, s>>>(args...), with the programmatic-serialization attribute when
// pdl_enabled(). The caller checks the launch with CK_LAUNCH as usual.
template <typename... P, typename... A>
void launch_pdl(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

// ---- PTX wrappers for the tensor-core kernels (sm_80+) ----
// 16-byte async copy global -> shared; when !pred the 16 bytes are zero-filled and nothing is read.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  unsigned s = unsigned(__cvta_generic_to_shared(smem));
  int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  unsigned s = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  unsigned s = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// c[16x8] += a[16x16] * b[16x8], fp32 accumulate. a row-major fragment, b "col" (stored [n][k]).
template <typename T> __device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                             uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The end of the batched-decode tile kernels (gemv_batched, gptq_batched): every warp holds a
// 16 x 8NT tile of mma C fragments (rows: the block's W rows n0.., columns: activation rows); the
// tiles are summed over the warps in a fixed order (deterministic), the bias added, and row m of
// y (stride ldy) written or accumulated into. Needs blockDim.x == WARPS * 32 >= 256.
// A warp's 16 x 8NT tile of mma C fragments into its slot of shared memory.
template <int NT>
__device__ __forceinline__ void c_tile_to_shared(float (&red_w)[16][17], const float (&acc)[NT][4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < NT; j++) {  // C fragment: c0, c1 at (row g, columns 2t, 2t + 1), c2, c3 at row g + 8
    red_w[g][8 * j + 2 * t] = acc[j][0];
    red_w[g][8 * j + 2 * t + 1] = acc[j][1];
    red_w[g + 8][8 * j + 2 * t] = acc[j][2];
    red_w[g + 8][8 * j + 2 * t + 1] = acc[j][3];
  }
}
template <int WARPS, int NT>
__device__ __forceinline__ void batched_tile_store(float (&red)[WARPS][16][17], const float (&acc)[NT][4], float* y,
                                                   int ldy, const float* b, int M, int N, int n0, bool accumulate) {
  c_tile_to_shared<NT>(red[threadIdx.x / 32], acc);
  __syncthreads();
  const int r = threadIdx.x / 16, m = threadIdx.x % 16, n = n0 + r;
  if (threadIdx.x < 256 && m < NT * 8 && m < M && n < N) {
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) v += red[w][r][m];
    v += b ? b[n] : 0.0f;
    float* dst = y + int64_t(m) * ldy + n;
    *dst = accumulate ? *dst + v : v;
  }
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Host fp32 -> fp16, round to nearest even, subnormals included (used for conversions at load).
inline uint16_t f32_to_f16_host(float f) {
  uint32_t u;
  static_assert(sizeof u == sizeof f, "");
  __builtin_memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u, au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (au >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds past 65504: inf
  if (au >= 0x38800000u) {                                 // normal in fp16 (>= 2^-14)
    uint32_t r = au + 0xfffu + ((au >> 13) & 1u);
    r -= 112u << 23;
    return uint16_t(sign | (r >> 13));
  }
  if (au <= 0x33000000u) return uint16_t(sign);  // <= 2^-25: rounds to zero
  // Subnormal: value / 2^-24 = mantissa (with its implicit bit) >> (126 - exponent).
  const uint32_t e = au >> 23, man = (au & 0x7fffffu) | 0x800000u, shift = 126 - e;
  uint32_t r = man >> shift;
  const uint32_t rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (r & 1u))) r++;
  return uint16_t(sign | r);
}

}  // namespace qwen::cuda
