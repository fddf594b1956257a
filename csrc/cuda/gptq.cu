// GPTQ (SPEC 4) linear layers on the GPU.
// Load: gptq_prepare (host) sorts the input rows by group when g_idx is not k / G (act-order),
// keeping perm[i] = the original row of sorted position i, and builds per-(column, group)
// metadata (fp16 scale | (zero + 1) << 16) and the group of every "chunk" (the rows one 16-byte
// word holds: 32 for int4, 16 for int8). gptq_repack (device) rewrites qweight [K/P, N] into
// columns [N][K*b/32] in sorted row order, so one column's packed rows are contiguous and a
// warp's 16-byte loads cover 512 contiguous bytes.
// Decode (T == 1): one warp per output column; each lane takes whole chunks (one 16-byte load),
// turns nibbles/bytes into exact fp16 integers with the 0x6400 trick ((w & 0x000F000F) |
// 0x64006400 = half2(1024 + q_a, 1024 + q_b), one hsub2 takes 1024 off), accumulates
// sum x*q and sum x in fp32 and folds the group's scale and zero once per chunk:
// s * (sum x q - z * sum x). x is gathered through perm first (gptq_gather) when act-order.
// Prefill (T > 1): the layer is dequantized (fp32 math, rounded once to the activation type) in
// the ORIGINAL row order into a scratch [N, K] matrix, then the tensor-core GEMM runs.
#include <algorithm>
#include <numeric>

#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int kWarps = 8;

// Dot of column n with x (sorted order) over this lane's chunks; returns the lane's partial.
template <typename T, int BITS>
__device__ __forceinline__ float gptq_col_dot(const GptqDev& L, const T* __restrict__ x, int n, int lane) {
  constexpr int CH = 128 / BITS;  // rows per 16-byte chunk
  const int nch = L.K / CH;
  const uint4* col = reinterpret_cast<const uint4*>(L.qw) + int64_t(n) * nch;
  const uint32_t* meta = L.meta + int64_t(n) * L.ngroups;
  float acc = 0.0f;
  const __half2 k1024 = __floats2half2_rn(1024.0f, 1024.0f);
  for (int c0 = lane; c0 < nch; c0 += 64) {
    uint4 w[2];
    uint32_t m[2];
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int c = c0 + 32 * u;
      w[u] = c < nch ? ld_stream(col + c) : make_uint4(0, 0, 0, 0);
      m[u] = c < nch ? meta[L.cg[c]] : 0u;
    }
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int c = c0 + 32 * u;
      if (c >= nch) break;
      const T* xc = x + int64_t(c) * CH;
      float sxq = 0.0f, sx = 0.0f;
      const uint32_t ww[4] = {w[u].x, w[u].y, w[u].z, w[u].w};
#pragma unroll
      for (int j = 0; j < 4; j++) {
        // Rows of word j: CH/4 consecutive rows starting at j * CH / 4.
        float xf[8];
        if constexpr (BITS == 4) {
          unpack8<T>(*reinterpret_cast<const uint4*>(xc + 8 * j), xf);
#pragma unroll
          for (int i = 0; i < 4; i++) {
            const uint32_t h = ((ww[j] >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
            const float2 q = __half22float2(__hsub2(*reinterpret_cast<const __half2*>(&h), k1024));
            sxq = fmaf(q.x, xf[i], sxq);
            sxq = fmaf(q.y, xf[i + 4], sxq);
          }
#pragma unroll
          for (int i = 0; i < 8; i++) sx += xf[i];
        } else {
          // 4 rows per word; x for words j, j+1 comes in one 16-byte load.
          if (j % 2 == 0) unpack8<T>(*reinterpret_cast<const uint4*>(xc + 4 * j), xf);
          else unpack8<T>(*reinterpret_cast<const uint4*>(xc + 4 * (j - 1)), xf);
          const float* x4 = xf + (j % 2) * 4;
          const uint32_t h0 = (ww[j] & 0x00FF00FFu) | 0x64006400u;         // rows 0, 2
          const uint32_t h1 = ((ww[j] >> 8) & 0x00FF00FFu) | 0x64006400u;  // rows 1, 3
          const float2 q02 = __half22float2(__hsub2(*reinterpret_cast<const __half2*>(&h0), k1024));
          const float2 q13 = __half22float2(__hsub2(*reinterpret_cast<const __half2*>(&h1), k1024));
          sxq = fmaf(q02.x, x4[0], sxq);
          sxq = fmaf(q13.x, x4[1], sxq);
          sxq = fmaf(q02.y, x4[2], sxq);
          sxq = fmaf(q13.y, x4[3], sxq);
          sx += (x4[0] + x4[1]) + (x4[2] + x4[3]);
        }
      }
      const __half_raw hr{static_cast<unsigned short>(m[u] & 0xFFFFu)};
      const float s = __half2float(__half(hr));
      const float z = float(m[u] >> 16);
      acc = fmaf(s, sxq - z * sx, acc);
    }
  }
  return acc;
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kWarps * 32)
    gptq_gemv_kernel(float* __restrict__ y, const T* __restrict__ x, GptqDev L, const float* __restrict__ b,
                     bool accumulate) {
  const int lane = threadIdx.x % 32, n = blockIdx.x * kWarps + threadIdx.x / 32;
  if (n >= L.N) return;
  const float v = warp_sum(gptq_col_dot<T, BITS>(L, x, n, lane));
  if (lane == 0) {
    const float r = v + (b ? b[n] : 0.0f);
    y[n] = accumulate ? y[n] + r : r;
  }
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kWarps * 32)
    gptq_swiglu_kernel(T* __restrict__ g, const T* __restrict__ x1, const T* __restrict__ x2, GptqDev L1, GptqDev L2,
                       const float* __restrict__ b12) {
  const int lane = threadIdx.x % 32, f = blockIdx.x * kWarps + threadIdx.x / 32;
  const int F = L1.N;
  if (f >= F) return;
  const float a = warp_sum(gptq_col_dot<T, BITS>(L1, x1, f, lane)) + (b12 ? b12[f] : 0.0f);
  const float bb = warp_sum(gptq_col_dot<T, BITS>(L2, x2, f, lane)) + (b12 ? b12[F + f] : 0.0f);
  if (lane == 0) g[f] = from_f<T>(a * (bb / (1.0f + expf(-bb))));
}

// xp [T, K] = x[:, perm] (16-bit elements).
__global__ void gptq_gather_kernel(uint16_t* __restrict__ xp, const uint16_t* __restrict__ x,
                                   const int32_t* __restrict__ perm, int K) {
  const int t = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < K; i += gridDim.x * blockDim.x)
    xp[int64_t(t) * K + i] = x[int64_t(t) * K + perm[i]];
}

// W [N, K] (original row order) = dequantized weights; one thread per (column, chunk).
template <typename T, int BITS>
__global__ void gptq_dequant_kernel(T* __restrict__ W, GptqDev L) {
  constexpr int CH = 128 / BITS, PW = 32 / BITS;
  const int nch = L.K / CH;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(L.N) * nch) return;
  const int n = int(idx / nch), c = int(idx % nch);
  const uint4 w = reinterpret_cast<const uint4*>(L.qw)[idx];
  const uint32_t m = L.meta[int64_t(n) * L.ngroups + L.cg[c]];
  const __half_raw hr{static_cast<unsigned short>(m & 0xFFFFu)};
  const float s = __half2float(__half(hr)), z = float(m >> 16);
  const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
  float v[CH];
#pragma unroll
  for (int j = 0; j < 4; j++)
#pragma unroll
    for (int e = 0; e < PW; e++) v[j * PW + e] = s * (float((ww[j] >> (BITS * e)) & ((1u << BITS) - 1u)) - z);
  T* row = W + int64_t(n) * L.K;
  if (!L.perm) {
#pragma unroll
    for (int i = 0; i < CH; i += 8) {
      float f[8];
#pragma unroll
      for (int e = 0; e < 8; e++) f[e] = v[i + e];
      *reinterpret_cast<uint4*>(row + c * CH + i) = pack8<T>(f);
    }
  } else {
#pragma unroll
    for (int i = 0; i < CH; i++) row[L.perm[c * CH + i]] = from_f<T>(v[i]);
  }
}

// qw [N][K/PW] words: word (n, i/PW) holds sorted rows i (original row perm[i]) of column n.
__global__ void gptq_repack_kernel(uint32_t* __restrict__ qw, const uint32_t* __restrict__ raw,
                                   const int32_t* __restrict__ perm, int K, int N, int bits) {
  const int PW = 32 / bits, words = K / PW;
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(N) * words) return;
  // n fastest: the raw reads (row-major [K/PW, N]) coalesce; the writes go to N separate columns.
  const int n = int(idx % N), wi = int(idx / N);
  uint32_t out = 0;
  for (int e = 0; e < PW; e++) {
    const int i = wi * PW + e, k = perm ? perm[i] : i;
    const uint32_t q = (raw[int64_t(k / PW) * N + n] >> (bits * (k % PW))) & mask;
    out |= q << (bits * e);
  }
  qw[int64_t(n) * words + wi] = out;
}

}  // namespace

GptqHost gptq_prepare(const Linear& l, const std::string& name) {
  const int K = l.in, N = l.out, b = l.bits, G = l.group_size;
  auto fail = [&](const std::string& why) { throw Error("cuda: GPTQ linear " + name + ": " + why); };
  if (b != 4 && b != 8) fail("bits " + std::to_string(b) + " is not supported (4 or 8)");
  const int CH = 128 / b, P = 32 / b;
  if (K % CH != 0) fail("in_features " + std::to_string(K) + " must be a multiple of " + std::to_string(CH));
  if (N % P != 0 || G <= 0 || K % G != 0) fail("bad shape or group size");
  if (l.qweight.dtype != DType::I32 || l.qweight.numel() != int64_t(K / P) * N) fail("qweight must be I32 [K/P, N]");
  if (l.qzeros.dtype != DType::I32 || l.qzeros.numel() != int64_t(K / G) * (N / P)) fail("qzeros must be I32 [K/G, N/P]");
  if (l.scales.numel() != int64_t(K / G) * N) fail("scales must be [K/G, N]");
  GptqHost h;
  h.ngroups = K / G;
  const int32_t* gi = l.g_idx.empty() ? nullptr : static_cast<const int32_t*>(l.g_idx.data);
  std::vector<int32_t> grp(static_cast<size_t>(K));
  bool identity = true;
  for (int k = 0; k < K; k++) {
    grp[size_t(k)] = gi ? gi[k] : k / G;
    if (grp[size_t(k)] < 0 || grp[size_t(k)] >= h.ngroups)
      fail("g_idx[" + std::to_string(k) + "] = " + std::to_string(grp[size_t(k)]) + " is out of range");
    if (grp[size_t(k)] != k / G) identity = false;
  }
  std::vector<int32_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), 0);
  if (!identity) {
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) { return grp[size_t(a)] < grp[size_t(c)]; });
    h.perm = order;
  }
  h.cg.resize(size_t(K / CH));
  for (int c = 0; c < K / CH; c++) {
    const int g = grp[size_t(order[size_t(c * CH)])];
    for (int e = 1; e < CH; e++)
      if (grp[size_t(order[size_t(c * CH + e)])] != g)
        fail("after sorting the rows by g_idx, group " + std::to_string(g) + " does not fill whole runs of " +
             std::to_string(CH) + " rows (each group must hold a multiple of " + std::to_string(CH) +
             " input rows on the GPU)");
    h.cg[size_t(c)] = g;
  }
  const int32_t* qz = static_cast<const int32_t*>(l.qzeros.data);
  const uint32_t mask = (1u << b) - 1u;
  h.meta.resize(size_t(N) * h.ngroups);
  std::vector<float> sc(static_cast<size_t>(N));
  for (int g = 0; g < h.ngroups; g++) {
    const char* srow = static_cast<const char*>(l.scales.data) + size_t(g) * N * dtype_size(l.scales.dtype);
    const bool f16 = l.scales.dtype == DType::F16;
    if (!f16) to_f32(l.scales.dtype, srow, sc.data(), size_t(N));
    for (int n = 0; n < N; n++) {
      const uint32_t s16 = f16 ? reinterpret_cast<const uint16_t*>(srow)[n] : f32_to_f16_host(sc[size_t(n)]);
      const uint32_t z = ((uint32_t(qz[int64_t(g) * (N / P) + n / P]) >> (b * (n % P))) & mask) + 1u;
      h.meta[size_t(n) * h.ngroups + g] = s16 | (z << 16);
    }
  }
  return h;
}

void gptq_repack(uint32_t* qw, const void* raw_qweight, const int32_t* perm, int K, int N, int bits, cudaStream_t s) {
  const int64_t total = int64_t(N) * (K / (32 / bits));
  gptq_repack_kernel<<<unsigned((total + 255) / 256), 256, 0, s>>>(
      qw, static_cast<const uint32_t*>(raw_qweight), perm, K, N, bits);
  CK_LAUNCH("gptq_repack_kernel");
}

void gptq_gather(void* xp, const void* x, const int32_t* perm, int T, int K, cudaStream_t s) {
  gptq_gather_kernel<<<dim3(std::min(ceil_div(K, 256), 64), T), 256, 0, s>>>(
      static_cast<uint16_t*>(xp), static_cast<const uint16_t*>(x), perm, K);
  CK_LAUNCH("gptq_gather_kernel");
}

void gptq_gemv(float* y, const void* x, const GptqDev& L, const float* b, bool accumulate, DT dt, cudaStream_t s) {
  const int blocks = ceil_div(L.N, kWarps);
  QWEN_DISPATCH_DT(dt, E, {
    if (L.bits == 4)
      gptq_gemv_kernel<E, 4><<<blocks, kWarps * 32, 0, s>>>(y, static_cast<const E*>(x), L, b, accumulate);
    else
      gptq_gemv_kernel<E, 8><<<blocks, kWarps * 32, 0, s>>>(y, static_cast<const E*>(x), L, b, accumulate);
  });
  CK_LAUNCH("gptq_gemv_kernel");
}

void gptq_gemv_swiglu(void* g, const void* x1, const void* x2, const GptqDev& L1, const GptqDev& L2, const float* b12,
                      DT dt, cudaStream_t s) {
  if (L1.bits != L2.bits || L1.N != L2.N || L1.K != L2.K) throw Error("cuda: gptq_gemv_swiglu: w1 and w2 differ in shape");
  const int blocks = ceil_div(L1.N, kWarps);
  QWEN_DISPATCH_DT(dt, E, {
    if (L1.bits == 4)
      gptq_swiglu_kernel<E, 4><<<blocks, kWarps * 32, 0, s>>>(static_cast<E*>(g), static_cast<const E*>(x1),
                                                             static_cast<const E*>(x2), L1, L2, b12);
    else
      gptq_swiglu_kernel<E, 8><<<blocks, kWarps * 32, 0, s>>>(static_cast<E*>(g), static_cast<const E*>(x1),
                                                             static_cast<const E*>(x2), L1, L2, b12);
  });
  CK_LAUNCH("gptq_swiglu_kernel");
}

void gptq_dequant(void* W, const GptqDev& L, DT dt, cudaStream_t s) {
  const int64_t total = int64_t(L.N) * (L.K / (128 / L.bits));
  const unsigned blocks = unsigned((total + 255) / 256);
  QWEN_DISPATCH_DT(dt, E, {
    if (L.bits == 4)
      gptq_dequant_kernel<E, 4><<<blocks, 256, 0, s>>>(static_cast<E*>(W), L);
    else
      gptq_dequant_kernel<E, 8><<<blocks, 256, 0, s>>>(static_cast<E*>(W), L);
  });
  CK_LAUNCH("gptq_dequant_kernel");
}

void gptq_linear(float* y, const void* x, const GptqDev& L, const float* b, int T, bool accumulate, void* xperm,
                 void* deq, DT dt, cudaStream_t s) {
  if (T == 1) {
    const void* xs = x;
    if (L.perm) {
      gptq_gather(xperm, x, L.perm, 1, L.K, s);
      xs = xperm;
    }
    gptq_gemv(y, xs, L, b, accumulate, dt, s);
  } else {
    gptq_dequant(deq, L, dt, s);
    gemm(y, x, deq, b, T, L.N, L.K, accumulate, dt, s);
  }
}

}  // namespace qwen::cuda
