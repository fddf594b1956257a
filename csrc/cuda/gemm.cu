// Prefill (T > 1) matrix product on tensor cores: y [M, N] fp32 (+)= A [M, K] W^T + b, with
// A (activations) and W [N, K] (torch nn.Linear layout) in bf16/fp16, b fp32 or null.
// Design: block tile 128 (M) x 128 (N) x 32 (K), 8 warps as 2 x 4, warp tile 64 x 32 = 4 x 4
// mma.sync.m16n8k16 (fp32 accumulate, 64 accumulators per thread). Tiles go global -> shared by
// 16-byte cp.async in a 3-stage ring (60 KB of shared memory), rows padded by 16 bytes so that
// ldmatrix reads are free of bank conflicts. W is stored [n][k], which is exactly mma's "col"
// B operand, so both operands load with plain (non-transposed) ldmatrix.
// Limits: K % 8 == 0 (16-byte chunks; any K tail under 32 is zero-filled); any M, N (tails are
// zero-filled on load and predicated on store). sm_80+.
// gemm_ld runs gemm_sm90.cu's wgmma kernel instead on an sm_90 device for 64 rows or more (3x
// this one's rate on an H100); this kernel serves sm_80/86/89 and short products.
#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, LDS = BK + 8, kThreads = 256;
constexpr int kSmemBytes = STAGES * (BM + BN) * LDS * 2;

template <typename T>
__global__ void __launch_bounds__(kThreads) gemm_kernel(float* __restrict__ y, const T* __restrict__ A,
                                                        const T* __restrict__ W, const float* __restrict__ b, int M,
                                                        int N, int K, int ldy, bool accumulate) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);  // [STAGES][BM][LDS]
  T* sB = sA + STAGES * BM * LDS;          // [STAGES][BN][LDS]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int wm = warp / 4, wn = warp % 4;
  const int KT = (K + BK - 1) / BK;

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * BK;
    T* a = sA + stage * BM * LDS;
    T* bs = sB + stage * BN * LDS;
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const int c = tid + i * kThreads, row = c / 4, col = (c % 4) * 8;
      const bool kin = k0 + col < K;
      const bool pa = kin && m0 + row < M;
      cp_async16(a + row * LDS + col, pa ? A + int64_t(m0 + row) * K + k0 + col : A, pa);
      const bool pb = kin && n0 + row < N;
      cp_async16(bs + row * LDS + col, pb ? W + int64_t(n0 + row) * K + k0 + col : W, pb);
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kt landed for all threads; stage kt-1 is free to refill
    {
      const int nk = kt + STAGES - 1;
      if (nk < KT) load_stage(nk % STAGES, nk);
      cp_async_commit();
    }
    const T* a = sA + (kt % STAGES) * BM * LDS;
    const T* bs = sB + (kt % STAGES) * BN * LDS;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[4][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; mi++)
        ldmatrix_x4(af[mi], a + (wm * 64 + mi * 16 + (lane % 16)) * LDS + kk + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < 2; np++) {
        uint32_t r[4];
        ldmatrix_x4(r, bs + (wn * 32 + np * 16 + (lane % 8) + (lane / 16) * 8) * LDS + kk + ((lane / 8) % 2) * 8);
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) mma16816<T>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mi = 0; mi < 4; mi++)
#pragma unroll
    for (int ni = 0; ni < 4; ni++) {
      const int row = m0 + wm * 64 + mi * 16 + lane / 4;
      const int col = n0 + wn * 32 + ni * 8 + (lane % 4) * 2;
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const int r = row + half * 8;
        if (r >= M) continue;
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int c = col + e;
          if (c >= N) continue;
          float v = acc[mi][ni][half * 2 + e] + (b ? b[c] : 0.0f);
          float* dst = y + int64_t(r) * ldy + c;
          *dst = accumulate ? *dst + v : v;
        }
      }
    }
}

}  // namespace

void gemm(float* y, const void* x, const void* W, const float* b, int T, int N, int K, bool accumulate, DT dt,
          cudaStream_t s) {
  gemm_ld(y, N, x, W, b, T, N, K, accumulate, dt, s);
}

void gemm_ld(float* y, int ldy, const void* x, const void* W, const float* b, int T, int N, int K, bool accumulate,
             DT dt, cudaStream_t s) {
#if defined(QWEN_HAVE_SM90A)
  if (T >= kGemmSm90MinRows) {
    int dev = 0;
    CK(cudaGetDevice(&dev));
    if (gemm_sm90_available(dev)) {
      gemm_sm90_ld(y, ldy, x, W, b, T, N, K, accumulate, dt, s);
      return;
    }
  }
#endif
  gemm_mma_ld(y, ldy, x, W, b, T, N, K, accumulate, dt, s);
}

#if !defined(QWEN_HAVE_SM90A)
bool gemm_sm90_available(int) { return false; }
void gemm_sm90_ld(float*, int, const void*, const void*, const float*, int, int, int, bool, DT, cudaStream_t) {
  throw Error("cuda: this build has no sm_90a GEMM (nvcc older than 12.0)");
}
#endif

void check_gemm_args(int ldy, const void* x, const void* W, int T, int N, int K) {
  if (T < 1 || N < 1 || K < 1 || ldy < N)
    throw Error("cuda: gemm needs T, N, K >= 1 and ldy >= N (T, N, K, ldy = " + std::to_string(T) + ", " +
                std::to_string(N) + ", " + std::to_string(K) + ", " + std::to_string(ldy) + ")");
  if (K % 8 != 0 || (reinterpret_cast<uintptr_t>(W) & 15) || (reinterpret_cast<uintptr_t>(x) & 15))
    throw Error("cuda: gemm needs K % 8 == 0 and 16-byte aligned operands (K = " + std::to_string(K) + ")");
}

void gemm_mma_ld(float* y, int ldy, const void* x, const void* W, const float* b, int T, int N, int K,
                 bool accumulate, DT dt, cudaStream_t s) {
  check_gemm_args(ldy, x, W, T, N, K);
  dim3 grid(ceil_div(N, BN), ceil_div(T, BM));
  QWEN_DISPATCH_DT(dt, E, {
    CK(cudaFuncSetAttribute(gemm_kernel<E>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    gemm_kernel<E><<<grid, kThreads, kSmemBytes, s>>>(y, static_cast<const E*>(x), static_cast<const E*>(W), b, T, N,
                                                     K, ldy, accumulate);
  });
  CK_LAUNCH("gemm_kernel");
}

}  // namespace qwen::cuda
