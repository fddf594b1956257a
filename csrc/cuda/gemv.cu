// Decode-step (T == 1) matrix-vector products, bandwidth-bound: every weight byte is read once.
// gemv:        y [N] fp32 (+)= W [N, K] x [K] + b    (W, x bf16/fp16; b fp32 or null)
// gemv_swiglu: g [F] = (W1 x + b1) * silu(W2 x + b2) over the stacked W12 = [W1; W2] [2F, K]
// Layout and limits: W row-major [N, K] with K % 8 == 0 and 16-byte aligned rows (checked by the
// launcher). Design: a block of 256 threads owns R = 4 weight rows and splits K across all its
// threads (block-level split-K, reduced in shared memory, deterministic), so a small N still
// spreads over every SM and a large N (the 151936-row lm_head) simply gives many blocks. Each
// thread issues 16-byte non-caching loads, two chunks per row per iteration: 2 R = 8 loads in
// flight before the first FMA. x (at most a few KB) is re-read through L1/L2. Launched with PDL
// (common.cuh): the first round of weight loads is issued before waiting for the predecessor.
#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T, int R>
__device__ __forceinline__ void load_round(const T* const (&w)[R], int k, int stride, int K, uint4 (&wa)[R],
                                           uint4 (&wb)[R]) {
  if (k + stride < K) {
#pragma unroll
    for (int r = 0; r < R; r++) {
      wa[r] = ld_stream(w[r] + k);
      wb[r] = ld_stream(w[r] + k + stride);
    }
  } else if (k < K) {
#pragma unroll
    for (int r = 0; r < R; r++) wa[r] = ld_stream(w[r] + k);
  }
}

// The weights of each round are loaded one round ahead, the first round before pdl_wait(): they
// do not depend on earlier kernels, so under PDL they stream in while the predecessor finishes.
// Same products in the same order as a plain loop (results are bit-identical either way).
template <typename T, int R>
__device__ __forceinline__ void block_dot_rows(const T* const (&w)[R], const T* __restrict__ x, int K,
                                               float (&acc)[R]) {
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.0f;
  const int stride = kThreads * 8;
  int k = threadIdx.x * 8;
  uint4 wa[R], wb[R];
  load_round<T, R>(w, k, stride, K, wa, wb);
  pdl_wait();
  pdl_trigger();
  for (; k + stride < K; k += 2 * stride) {
    const uint4 xa = *reinterpret_cast<const uint4*>(x + k);
    const uint4 xb = *reinterpret_cast<const uint4*>(x + k + stride);
    float xf[8], wf[8];
    unpack8<T>(xa, xf);
#pragma unroll
    for (int r = 0; r < R; r++) {
      unpack8<T>(wa[r], wf);
#pragma unroll
      for (int i = 0; i < 8; i++) acc[r] = fmaf(wf[i], xf[i], acc[r]);
    }
    unpack8<T>(xb, xf);
#pragma unroll
    for (int r = 0; r < R; r++) {
      unpack8<T>(wb[r], wf);
#pragma unroll
      for (int i = 0; i < 8; i++) acc[r] = fmaf(wf[i], xf[i], acc[r]);
    }
    load_round<T, R>(w, k + 2 * stride, stride, K, wa, wb);
  }
  if (k < K) {
    float xf[8], wf[8];
    unpack8<T>(*reinterpret_cast<const uint4*>(x + k), xf);
#pragma unroll
    for (int r = 0; r < R; r++) {
      unpack8<T>(wa[r], wf);
#pragma unroll
      for (int i = 0; i < 8; i++) acc[r] = fmaf(wf[i], xf[i], acc[r]);
    }
  }
  // Block reduction: warps, then warp 0; the totals end in thread 0.
  __shared__ float red[R][kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < R; r++) {
    float v = warp_sum(acc[r]);
    if (lane == 0) red[r][warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int r = 0; r < R; r++) {
      float v = lane < kThreads / 32 ? red[r][lane] : 0.0f;
      acc[r] = warp_sum(v);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gemv_kernel(float* __restrict__ y, const T* __restrict__ x,
                                                        const T* __restrict__ W, const float* __restrict__ b, int N,
                                                        int K, bool accumulate) {
  constexpr int R = 4;
  const int n0 = blockIdx.x * R;
  const T* w[R];
#pragma unroll
  for (int r = 0; r < R; r++) w[r] = W + int64_t(min(n0 + r, N - 1)) * K;
  float acc[R];
  block_dot_rows<T, R>(w, x, K, acc);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int r = 0; r < R; r++) {
      const int n = n0 + r;
      if (n < N) {
        float v = acc[r] + (b ? b[n] : 0.0f);
        y[n] = accumulate ? y[n] + v : v;
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gemv_swiglu_kernel(T* __restrict__ g, const T* __restrict__ x,
                                                               const T* __restrict__ W12,
                                                               const float* __restrict__ b12, int F, int K) {
  // Two features per block: rows f, f+1 of W1 and the same rows of W2.
  const int f0 = blockIdx.x * 2;
  const int fa = f0, fb = min(f0 + 1, F - 1);
  const T* w[4] = {W12 + int64_t(fa) * K, W12 + int64_t(fb) * K, W12 + int64_t(F + fa) * K, W12 + int64_t(F + fb) * K};
  float acc[4];
  block_dot_rows<T, 4>(w, x, K, acc);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int f = f0 + r;
      if (f < F) {
        const float a = acc[r] + (b12 ? b12[f] : 0.0f);
        const float bb = acc[2 + r] + (b12 ? b12[F + f] : 0.0f);
        g[f] = from_f<T>(a * (bb / (1.0f + expf(-bb))));
      }
    }
  }
}

// ---- gemv_batched: 2..16 rows (a batched decode step) on tensor cores ----
// y [M, N] (+)= x [M, K] W^T + b with M <= 16: W is read once for all M rows. A block of 8 warps
// owns 16 rows of W; warp w takes the 32-wide K chunks w, w + 8, ... For mma.m16n8k16 the W rows
// are the A operand (16 x 16) and the M activation rows the B operand (16 x 8, one or two n
// tiles). Thread (g = lane / 4, t = lane % 4) loads 16 bytes of W rows g and g + 8 and of x rows
// g (and g + 8) at k = 32c + 8t .. + 7 and uses them directly as fragments: the four k slots a
// thread holds in each of the chunk's two mma steps ({2t, 2t+1, 2t+8, 2t+9}) are mapped to
// actual k's 8t..8t+3 and 8t+4..8t+7 alike in A and B, and a dot product does not care how
// its k's are ordered. So every load is a 16-byte one with no shuffles or shared memory; 4
// chunks (8 loads of W) are in flight per thread. The warps' 16 x 16 partial tiles are summed
// in shared memory in a fixed order (deterministic). Launched with PDL like the GEMV.
constexpr int kBatWarps = 8, kBatU = 4;

template <typename T, int NT>
__global__ void __launch_bounds__(kBatWarps * 32)
    gemv_batched_kernel(float* __restrict__ y, int ldy, const T* __restrict__ x, const T* __restrict__ W,
                        const float* __restrict__ b, int M, int N, int K, bool accumulate) {
  __shared__ float red[kBatWarps][16][17];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * 16, nch = (K + 31) / 32;
  const T* wl = W + int64_t(min(n0 + g, N - 1)) * K + 8 * t;
  const T* wh = W + int64_t(min(n0 + g + 8, N - 1)) * K + 8 * t;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 al[kBatU], ah[kBatU];
  auto load_w = [&](int c0) {
#pragma unroll
    for (int u = 0; u < kBatU; u++) {
      const int c = c0 + u * kBatWarps;
      const bool ok = c < nch && c * 32 + 8 * t < K;  // K % 8 == 0: an 8-wide piece is all in or all out
      al[u] = ok ? ld_stream(wl + c * 32) : zero;
      ah[u] = ok ? ld_stream(wh + c * 32) : zero;
    }
  };
  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  load_w(warp);
  pdl_wait();
  pdl_trigger();
  for (int c0 = warp; c0 < nch; c0 += kBatU * kBatWarps) {
    uint4 xv[kBatU][NT];
#pragma unroll
    for (int u = 0; u < kBatU; u++) {
      const int c = c0 + u * kBatWarps;
#pragma unroll
      for (int j = 0; j < NT; j++) {
        const int row = g + 8 * j;
        const bool ok = c < nch && c * 32 + 8 * t < K && row < M;
        xv[u][j] = ok ? *reinterpret_cast<const uint4*>(x + int64_t(row) * K + c * 32 + 8 * t) : zero;
      }
    }
#pragma unroll
    for (int u = 0; u < kBatU; u++) {
      const uint32_t a0[4] = {al[u].x, ah[u].x, al[u].y, ah[u].y};
      const uint32_t a1[4] = {al[u].z, ah[u].z, al[u].w, ah[u].w};
#pragma unroll
      for (int j = 0; j < NT; j++) {
        mma16816<T>(acc[j], a0, xv[u][j].x, xv[u][j].y);
        mma16816<T>(acc[j], a1, xv[u][j].z, xv[u][j].w);
      }
    }
    load_w(c0 + kBatU * kBatWarps);
  }
  batched_tile_store<kBatWarps, NT>(red, acc, y, ldy, b, M, N, n0, accumulate);
}

void check_gemv_shape(const void* x, const void* W, int K, const char* what) {
  if (K % 8 != 0 || (reinterpret_cast<uintptr_t>(W) & 15) || (reinterpret_cast<uintptr_t>(x) & 15))
    throw Error(std::string("cuda: ") + what + " needs K % 8 == 0 and 16-byte aligned operands (K = " +
                std::to_string(K) + ")");
}

}  // namespace

void gemv(float* y, const void* x, const void* W, const float* b, int N, int K, bool accumulate, DT dt,
          cudaStream_t s) {
  check_gemv_shape(x, W, K, "gemv");
  const int blocks = ceil_div(N, 4);
  QWEN_DISPATCH_DT(dt, E,
                   launch_pdl(gemv_kernel<E>, blocks, kThreads, 0, s, y, static_cast<const E*>(x),
                              static_cast<const E*>(W), b, N, K, accumulate));
  CK_LAUNCH("gemv_kernel");
}

void gemv_swiglu(void* g, const void* x, const void* W12, const float* b12, int F, int K, DT dt, cudaStream_t s) {
  check_gemv_shape(x, W12, K, "gemv_swiglu");
  const int blocks = ceil_div(F, 2);
  QWEN_DISPATCH_DT(dt, E,
                   launch_pdl(gemv_swiglu_kernel<E>, blocks, kThreads, 0, s, static_cast<E*>(g),
                              static_cast<const E*>(x), static_cast<const E*>(W12), b12, F, K));
  CK_LAUNCH("gemv_swiglu_kernel");
}

void gemv_batched(float* y, int ldy, const void* x, const void* W, const float* b, int M, int N, int K,
                  bool accumulate, DT dt, cudaStream_t s) {
  check_gemv_shape(x, W, K, "gemv_batched");
  if (M < 1 || M > kGemvBatchMax || ldy < N) throw Error("cuda: gemv_batched takes 1..16 rows and ldy >= N");
  const int blocks = ceil_div(N, 16);
  QWEN_DISPATCH_DT(dt, E, {
    if (M <= 8)
      launch_pdl(gemv_batched_kernel<E, 1>, blocks, kBatWarps * 32, 0, s, y, ldy, static_cast<const E*>(x),
                 static_cast<const E*>(W), b, M, N, K, accumulate);
    else
      launch_pdl(gemv_batched_kernel<E, 2>, blocks, kBatWarps * 32, 0, s, y, ldy, static_cast<const E*>(x),
                 static_cast<const E*>(W), b, M, N, K, accumulate);
  });
  CK_LAUNCH("gemv_batched_kernel");
}

void linear(float* y, const void* x, const void* W, const float* b, int T, int N, int K, bool accumulate, DT dt,
            cudaStream_t s) {
  if (T == 1)
    gemv(y, x, W, b, N, K, accumulate, dt, s);
  else if (T <= kGemvBatchMax)
    gemv_batched(y, N, x, W, b, T, N, K, accumulate, dt, s);
  else
    gemm(y, x, W, b, T, N, K, accumulate, dt, s);
}

}  // namespace qwen::cuda
