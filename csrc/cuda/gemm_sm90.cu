// Prefill matrix product on Hopper (sm_90a): y [M, N] fp32 (+)= A [M, K] W^T + b, the same
// contract as gemm_ld (gemm.cu), on the wgmma tensor-core path with TMA loads.
// Design (after the public descriptions of Hopper GEMMs: CUTLASS's warp-specialized kernels and
// the PTX ISA's wgmma / cp.async.bulk.tensor / mbarrier chapters):
// - Block tile 128 (M) x 256 (N) x 64 (K), 3 warpgroups: warpgroup 0 is the producer (one thread
//   issues the TMA loads), warpgroups 1 and 2 each own 64 rows x 256 columns of the tile
//   (m64n256k16 wgmma, 128 fp32 accumulators a thread).
// - A and W are both K-major (W is torch's [N, K]), which is wgmma's native form for both
//   operands: no transposes. TMA writes each 64-wide K slice with the 128-byte swizzle that the
//   wgmma shared-memory descriptor (SWIZZLE_128B, 8-row atoms 1024 bytes apart) reads; a k16 step
//   inside the slice advances the descriptor's start address by 32 bytes.
// - 4-stage ring of (16 + 32) KB stages with two mbarriers a stage: full (TMA transaction bytes)
//   and empty (one arrival per consumer warp once its wgmmas on the stage have completed). The
//   consumers keep one wgmma group in flight: stage kt is released after group kt+1 is issued.
// - Blocks walk M fastest: the 16 M tiles of a 2048-row prompt run side by side on the same W
//   tile, so W streams from DRAM about once and A (a few MB) stays in L2.
// - Tails: TMA zero-fills out-of-range rows and K; the epilogue predicates rows and columns.
// Needs: an sm_90 device, K % 8 == 0 and 16-byte aligned A and W (TMA strides), the driver's
// cuTensorMapEncodeTiled (through cudart's entry-point query: no libcuda link).
#include <cuda.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int BM = 128, BN = 256, BK = 64, STAGES = 4, kThreads = 384;
constexpr int kStageA = BM * BK * 2, kStageB = BN * BK * 2, kStageBytes = kStageA + kStageB;
// + 1024: the ring is aligned to 1024 bytes (the 128-byte swizzle's atom) inside the allocation.
constexpr int kSmemBytes = STAGES * kStageBytes + 1024 + 2 * STAGES * 8;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Waits until the barrier's phase of the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// One 2-D TMA tile load (coordinates: c0 along K, c1 along rows) completing on barrier bar.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

// wgmma shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

// D (+)= A B for one m64n256k16 step: A and B from shared-memory descriptors, D the thread's 128
// fp32 accumulators (the operand list is spelt out once, in the two macros).
#define QWEN_WGMMA_D_REGS \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define QWEN_WGMMA_D_OPERANDS \
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
#define QWEN_WGMMA_M64N256K16(AB)                                                                    \
  asm volatile("{\n"                                                                             \
               "wgmma.mma_async.sync.aligned.m64n256k16.f32." AB "." AB " {" QWEN_WGMMA_D_REGS      \
               "}, %128, %129, 1, 1, 1, 0, 0;\n"                                                 \
               "}\n"                                                                             \
               : QWEN_WGMMA_D_OPERANDS                                                           \
               : "l"(a), "l"(b))

template <typename T>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t a, uint64_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    QWEN_WGMMA_M64N256K16("bf16");
  else
    QWEN_WGMMA_M64N256K16("f16");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmW,
                     float* __restrict__ y, const float* __restrict__ b, int M, int N, int K, int ldy,
                     bool accumulate, bool vec2) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t ring = (raw + 1023) & ~1023u;  // stage s: A at ring + s * kStageBytes, then W
  const uint32_t full0 = ring + STAGES * kStageBytes, empty0 = full0 + STAGES * 8;
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int KT = (K + BK - 1) / BK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, 8);  // the 8 consumer warps
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (tid == 0) {
      for (int kt = 0; kt < KT; kt++) {
        const int s = kt % STAGES;
        // Fresh barriers complete "the phase before the first" at once: round 0 does not wait.
        mbar_wait(empty0 + 8 * s, ((kt / STAGES) & 1) ^ 1);
        const uint32_t full = full0 + 8 * s, a = ring + s * kStageBytes;
        mbar_expect_tx(full, kStageBytes);
        tma_load_2d(a, &tmA, kt * BK, m0, full);
        tma_load_2d(a + kStageA, &tmW, kt * BK, n0, full);
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");

  float d[128];
#pragma unroll
  for (int i = 0; i < 128; i++) d[i] = 0.0f;
  const uint32_t a_off = (wg - 1) * 64 * 128;  // this warpgroup's 64 rows of the A stage
  for (int kt = 0; kt < KT; kt++) {
    const int s = kt % STAGES;
    mbar_wait(full0 + 8 * s, (kt / STAGES) & 1);
    const uint32_t a = ring + s * kStageBytes + a_off, w = ring + s * kStageBytes + kStageA;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK / 16; k++) wgmma_m64n256k16<T>(d, smem_desc(a + 32 * k), smem_desc(w + 32 * k));
    wgmma_commit();
    wgmma_wait<1>();  // the group of stage kt - 1 is done: give that stage back
    if (kt > 0 && tid % 32 == 0) mbar_arrive(empty0 + 8 * ((kt - 1) % STAGES));
  }
  wgmma_wait<0>();

  // d[j * 4 + e]: row 16 * warp + lane / 4 (+ 8 for e >= 2), column 8 * j + 2 * (lane % 4) + e % 2.
  const int warp = tid / 32, lane = tid % 32;
  const int r0 = m0 + (wg - 1) * 64 + warp * 16 + lane / 4;
#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int r = r0 + half * 8;
    if (r >= M) continue;
    float* yr = y + int64_t(r) * ldy;
#pragma unroll
    for (int j = 0; j < 32; j++) {
      const int c = n0 + 8 * j + 2 * (lane % 4);
      float v0 = d[j * 4 + half * 2], v1 = d[j * 4 + half * 2 + 1];
      if (vec2 && c + 1 < N) {
        if (b) {
          const float2 bb = *reinterpret_cast<const float2*>(b + c);
          v0 += bb.x;
          v1 += bb.y;
        }
        float2* p = reinterpret_cast<float2*>(yr + c);
        if (accumulate) {
          const float2 o = *p;
          v0 += o.x;
          v1 += o.y;
        }
        *p = make_float2(v0, v1);
      } else {
        // the same order as the vector path: (product + bias), then + y
        if (c < N) yr[c] = (v0 + (b ? b[c] : 0.0f)) + (accumulate ? yr[c] : 0.0f);
        if (c + 1 < N) yr[c + 1] = (v1 + (b ? b[c + 1] : 0.0f)) + (accumulate ? yr[c + 1] : 0.0f);
      }
    }
  }
#else
  __trap();  // compiled for sm_90a only; gemm_sm90_ld launches it on sm_90 devices only
#endif
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled, or null (driver too old, or QWEN_GEMM=mma asks for the
// mma.sync kernel everywhere).
EncodeTiled encode_fn() {
  static EncodeTiled fn = [] {
    const char* e = std::getenv("QWEN_GEMM");
    if (e && std::strcmp(e, "mma") == 0) return EncodeTiled(nullptr);
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
#if CUDART_VERSION >= 12050
    const cudaError_t r = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
#else  // the by-version query is CUDA 12.5's; 12.0-12.4 have only this one
    const cudaError_t r = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &q);
#endif
    if (r != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return EncodeTiled(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A [rows, K] row-major 16-bit matrix as TMA tiles of box_rows x 64, 128-byte swizzled.
CUtensorMap tensor_map(EncodeTiled enc, const void* p, int rows, int K, int box_rows, DT dt) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(K) * 2};
  const cuuint32_t box[2] = {cuuint32_t(BK), cuuint32_t(box_rows)};
  const cuuint32_t estr[2] = {1, 1};
  const CUresult r = enc(&m, dt == DT::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                         const_cast<void*>(p), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw Error("cuda: cuTensorMapEncodeTiled failed (" + std::to_string(int(r)) + ") for a [" + std::to_string(rows) +
                ", " + std::to_string(K) + "] operand");
  return m;
}

}  // namespace

bool gemm_sm90_available(int device) {
  static std::mutex mu;
  static int known[64];  // 0 unknown, 1 yes, 2 no
  if (device < 0 || device >= 64) return false;
  std::lock_guard<std::mutex> lock(mu);
  if (!known[device]) {
    int major = 0, minor = 0;
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess;
    if (!ok) cudaGetLastError();
    known[device] = ok && major == 9 && minor == 0 && encode_fn() ? 1 : 2;
  }
  return known[device] == 1;
}

void gemm_sm90_ld(float* y, int ldy, const void* x, const void* W, const float* b, int T, int N, int K,
                  bool accumulate, DT dt, cudaStream_t s) {
  check_gemm_args(ldy, x, W, T, N, K);
  EncodeTiled enc = encode_fn();
  if (!enc) throw Error("cuda: gemm_sm90_ld: the driver has no cuTensorMapEncodeTiled");
  const CUtensorMap tmA = tensor_map(enc, x, T, K, BM, dt), tmW = tensor_map(enc, W, N, K, BN, dt);
  const bool vec2 = ldy % 2 == 0 && (reinterpret_cast<uintptr_t>(y) & 7) == 0 && (!b || (reinterpret_cast<uintptr_t>(b) & 7) == 0);
  const dim3 grid(ceil_div(T, BM), ceil_div(N, BN));  // M fastest: neighbours share the W tile
  QWEN_DISPATCH_DT(dt, E, {
    CK(cudaFuncSetAttribute(gemm_sm90_kernel<E>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    gemm_sm90_kernel<E><<<grid, kThreads, kSmemBytes, s>>>(tmA, tmW, y, b, T, N, K, ldy, accumulate, vec2);
  });
  CK_LAUNCH("gemm_sm90_kernel");
}

}  // namespace qwen::cuda
