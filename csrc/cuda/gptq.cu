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
// Decode v2 (int4, fp16 activations; the default, QWEN_GPTQ_GEMV=v1 selects the kernel above):
// the repack also interleaves the nibbles of every word (layout 1: nibble positions 7..0 hold
// rows 7 5 3 1 6 4 2 0), so that (w & 0x000F000F), (w & 0x00F000F0), ((w >> 8) & ...) each give
// a half2 of two CONSECUTIVE rows through one lop3 with 0x64006400; one hadd2 (low nibbles) or
// hfma2 (high nibbles, x 1/16) with -(1024 + z) / -(64 + z) gives q - z exactly (|q - z| <= 16).
// The 8 products of a word are accumulated in half2 (4 hfma2, one rounding each), converted to
// fp32, summed in fp32 per 32-row chunk and scaled by the group's scale in fp32. A block of 128
// threads owns 8 columns (gemv: 8 consecutive columns; swiglu: 4 features of w1 and of w2) and
// splits K over its threads (one 16-byte chunk per column per iteration: 8 loads in flight), so
// x (read as half2, no conversion) is loaded once for 8 columns; a transposing shuffle reduction
// and shared memory give the 8 sums. ~2.3 instructions per weight instead of ~5.5.
// Decode v2 for int8 (layout 2, fp16 activations, N % 8 == 0; the default, QWEN_GPTQ_INT8_V2=0 for v1): the
// bytes of each word hold rows 0 2 1 3, so (w & 0x00FF00FF) and ((w >> 8) & 0x00FF00FF) with
// 0x64006400 are half2 of consecutive rows; the same block structure (16 rows a chunk).
// Batched decode (2..16 rows): int4 v2 has gptq4_batched_v2_kernel and, selected by
// gptq4_batched_stage_kernel (its loads pipelined through shared memory; below), chosen by shape
// (gptq_batched); other layouts run the GEMV per row up to kGptqRowLoopMax rows, and the prefill
// path beyond.
// Prefill (T > 1): the layer is dequantized (fp32 math, rounded once to the activation type) in
// the ORIGINAL row order into a scratch [cols, K] matrix, cols columns at a time (cols bounded by
// the scratch), each slice followed by the tensor-core GEMM into its columns of y.
// The decode kernels and the gather are launched with PDL (common.cuh); v2 issues its first round
// of weight loads before waiting for the predecessor.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int kWarps = 8;

// Layout 1 (int4 interleaved): nibble position of row e (0..7) of a word: rows 0 2 4 6 at
// positions 0 1 2 3, rows 1 3 5 7 at positions 4 5 6 7 (positions 7..0 read "75316420").
__host__ __device__ constexpr int gptq_nibble_pos(int e) { return (e & 1) ? 4 + (e >> 1) : (e >> 1); }
// Layout 2 (int8 interleaved): byte position of row e (0..3) of a word: rows 0 2 1 3 at bytes 0..3.
__host__ __device__ constexpr int gptq_byte_pos(int e) { return ((e & 1) << 1) | (e >> 1); }

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
  pdl_wait();
  pdl_trigger();
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
  pdl_wait();
  pdl_trigger();
  const int lane = threadIdx.x % 32, f = blockIdx.x * kWarps + threadIdx.x / 32;
  const int F = L1.N;
  if (f >= F) return;
  const float a = warp_sum(gptq_col_dot<T, BITS>(L1, x1, f, lane)) + (b12 ? b12[f] : 0.0f);
  const float bb = warp_sum(gptq_col_dot<T, BITS>(L2, x2, f, lane)) + (b12 ? b12[F + f] : 0.0f);
  if (lane == 0) g[f] = from_f<T>(a * (bb / (1.0f + expf(-bb))));
}

// ---- v2: int4, fp16 activations, interleaved nibbles (layout 1) ----
constexpr int kV2Threads = 128, kV2Cols = 8;

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
  return d;
}
__device__ __forceinline__ __half2 u2h2(uint32_t u) { return *reinterpret_cast<const __half2*>(&u); }

// Layout 1's zero z (stored zero + 1, 1..16) in the two forms int4_word subtracts it in.
struct Int4Zero {
  __half2 lo, hi;
};
__device__ __forceinline__ Int4Zero int4_zero(uint32_t z) {
  return {u2h2((0xE400u | z) * 0x00010001u),           // -(1024 + z)
          u2h2((0xD400u + (z << 4)) * 0x00010001u)};  // -(64 + z): ulp 1/16 in [64, 128)
}
// q - z of the 8 rows of one layout-1 word, exact in fp16, as half2 of rows {0,1}, {2,3}, {4,5},
// {6,7}: (a & 0x000F000F) | 0x64006400 = half2(1024 + q); the 0x00F0 nibbles give 1024 + 16 q,
// taken times 1/16 to 64 + q.
__device__ __forceinline__ void int4_word(uint32_t a, const Int4Zero& z, __half2 (&d)[4]) {
  const __half2 r16 = u2h2(0x2C002C00u);  // 1/16
  const uint32_t b = a >> 8;
  d[0] = __hadd2(u2h2(lop3_and_or(a, 0x000F000Fu, 0x64006400u)), z.lo);
  d[1] = __hfma2(u2h2(lop3_and_or(a, 0x00F000F0u, 0x64006400u)), r16, z.hi);
  d[2] = __hadd2(u2h2(lop3_and_or(b, 0x000F000Fu, 0x64006400u)), z.lo);
  d[3] = __hfma2(u2h2(lop3_and_or(b, 0x00F000F0u, 0x64006400u)), r16, z.hi);
}

// int4: s * sum over the 32 rows of one chunk of (q - z) * x; xh = the chunk's x as 16 half2.
__device__ __forceinline__ float v2_chunk(const uint4& w, uint32_t m, const __half2 (&xh)[16]) {
  const Int4Zero z = int4_zero(m >> 16);
  const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; j++) {
    __half2 d[4];
    int4_word(ww[j], z, d);
    __half2 p = __hmul2(d[0], xh[4 * j]);
    p = __hfma2(d[1], xh[4 * j + 1], p);
    p = __hfma2(d[2], xh[4 * j + 2], p);
    p = __hfma2(d[3], xh[4 * j + 3], p);
    const float2 f = __half22float2(p);
    sum += f.x + f.y;
  }
  const __half_raw hr{static_cast<unsigned short>(m & 0xFFFFu)};
  return __half2float(__half(hr)) * sum;
}

// int8, layout 2 (bytes of a word hold rows 0 2 1 3): (w & 0x00FF00FF) | 0x64006400 is
// half2(1024 + q) of rows 0, 1 and the same of w >> 8 rows 2, 3; adding -(1024 + z) gives q - z
// exactly (|q - z| <= 256), times the scale: the weight, rounded once to fp16. Scaled before the
// products, which stay the size of w x (q - z) x, up to 256 |x|, overflowed fp16's 65504 in a
// pair sum past |x| ~ 128). The sum over the 16 rows of one chunk; xh = its x as 8 half2.
__device__ __forceinline__ float v2_chunk(const uint4& w, uint32_t m, const __half2 (&xh)[8]) {
  const __half2 zl = __float2half2_rn(-(1024.0f + float(m >> 16)));  // stored zero + 1, 1..256
  const __half2 s2 = u2h2((m & 0xFFFFu) * 0x00010001u);              // the group's fp16 scale, twice
  const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const __half2 d01 = __hmul2(__hadd2(u2h2(lop3_and_or(ww[j], 0x00FF00FFu, 0x64006400u)), zl), s2);  // rows 0, 1
    const __half2 d23 = __hmul2(__hadd2(u2h2(lop3_and_or(ww[j] >> 8, 0x00FF00FFu, 0x64006400u)), zl), s2);  // 2, 3
    const float2 f = __half22float2(__hfma2(d23, xh[2 * j + 1], __hmul2(d01, xh[2 * j])));
    sum += f.x + f.y;
  }
  return sum;
}

// The x of chunk c (CH = 2 NH rows) as NH half2.
template <int NH>
__device__ __forceinline__ void v2_load_x(__half2 (&xh)[NH], const __half* __restrict__ x, int c) {
  const uint4* p = reinterpret_cast<const uint4*>(x + int64_t(c) * 2 * NH);
#pragma unroll
  for (int i = 0; i < NH / 4; i++) {
    const uint4 u = __ldg(p + i);
    xh[4 * i] = u2h2(u.x);
    xh[4 * i + 1] = u2h2(u.y);
    xh[4 * i + 2] = u2h2(u.z);
    xh[4 * i + 3] = u2h2(u.w);
  }
}

// The 8 column sums of this block: columns A0..A0+3 of La (x = xa) and B0..B0+3 of Lb (x = xb),
// in red_out[0..7] (shared) after the call. BITS 4 (layout 1) or 8 (layout 2): a chunk is one
// 16-byte load per column, 128 / BITS rows.
template <int BITS>
__device__ __forceinline__ void v2_block_dot(float* red_out, const __half* __restrict__ xa,
                                             const __half* __restrict__ xb, const GptqDev& La, const GptqDev& Lb,
                                             int A0, int B0) {
  __shared__ float red[kV2Threads / 32][kV2Cols];
  constexpr int NH = 64 / BITS;  // half2 of x per chunk
  const int nch = La.K * BITS / 128;
  const uint4* qa = reinterpret_cast<const uint4*>(La.qw) + int64_t(A0) * nch;
  const uint4* qb = reinterpret_cast<const uint4*>(Lb.qw) + int64_t(B0) * nch;
  const uint32_t* ma = La.meta + int64_t(A0) * La.ngroups;
  const uint32_t* mb = Lb.meta + int64_t(B0) * Lb.ngroups;
  float acc[kV2Cols];
#pragma unroll
  for (int j = 0; j < kV2Cols; j++) acc[j] = 0.0f;
  // The packed weights and metadata of each round are loaded one round ahead, the first round
  // before pdl_wait() (they do not depend on earlier kernels; same sums in the same order).
  uint4 w[kV2Cols];
  uint32_t m[kV2Cols];
  auto load_round = [&](int c) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
      w[j] = ld_stream(qa + int64_t(j) * nch + c);
      w[4 + j] = ld_stream(qb + int64_t(j) * nch + c);
    }
    const int ga = __ldg(La.cg + c), gb = __ldg(Lb.cg + c);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      m[j] = __ldg(ma + int64_t(j) * La.ngroups + ga);
      m[4 + j] = __ldg(mb + int64_t(j) * Lb.ngroups + gb);
    }
  };
  if (int(threadIdx.x) < nch) load_round(threadIdx.x);
  pdl_wait();
  pdl_trigger();
  for (int c = threadIdx.x; c < nch; c += kV2Threads) {
    __half2 xh[NH];
    v2_load_x(xh, xa, c);
#pragma unroll
    for (int j = 0; j < 4; j++) acc[j] += v2_chunk(w[j], m[j], xh);
    if (xb != xa) v2_load_x(xh, xb, c);
#pragma unroll
    for (int j = 0; j < 4; j++) acc[4 + j] += v2_chunk(w[4 + j], m[4 + j], xh);
    if (c + kV2Threads < nch) load_round(c + kV2Threads);
  }
  // Transposing warp reduction: 8 -> 4 -> 2 -> 1 values per lane (each step sends half of them
  // to the partner lane), then two plain steps; lane l ends with column
  // 4 * bit4(l) + 2 * bit3(l) + bit2(l), summed over all 32 lanes.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v4[4], v2[2];
  {
    const bool hi = lane & 16;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float send = hi ? acc[i] : acc[i + 4], keep = hi ? acc[i + 4] : acc[i];
      v4[i] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
    }
  }
  {
    const bool hi = lane & 8;
#pragma unroll
    for (int i = 0; i < 2; i++) {
      const float send = hi ? v4[i] : v4[i + 2], keep = hi ? v4[i + 2] : v4[i];
      v2[i] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
    }
  }
  float v1;
  {
    const bool hi = lane & 4;
    const float send = hi ? v2[0] : v2[1], keep = hi ? v2[1] : v2[0];
    v1 = keep + __shfl_xor_sync(0xffffffffu, send, 4);
  }
  v1 += __shfl_xor_sync(0xffffffffu, v1, 2);
  v1 += __shfl_xor_sync(0xffffffffu, v1, 1);
  if ((lane & 3) == 0) red[warp][((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1)] = v1;
  __syncthreads();
  if (threadIdx.x < kV2Cols) {
    float t = 0.0f;
#pragma unroll
    for (int w = 0; w < kV2Threads / 32; w++) t += red[w][threadIdx.x];
    red_out[threadIdx.x] = t;
  }
  __syncthreads();
}

template <int BITS>
__global__ void __launch_bounds__(kV2Threads)
    gptq_gemv_v2_kernel(float* __restrict__ y, const __half* __restrict__ x, GptqDev L, const float* __restrict__ b,
                        bool accumulate) {
  __shared__ float tot[kV2Cols];
  const int n0 = blockIdx.x * kV2Cols;  // N % 8 == 0 (int4: by gptq_prepare; int8: by gptq_layout_for)
  v2_block_dot<BITS>(tot, x, x, L, L, n0, n0 + 4);
  if (threadIdx.x < kV2Cols) {
    const int n = n0 + threadIdx.x;
    const float r = tot[threadIdx.x] + (b ? b[n] : 0.0f);
    y[n] = accumulate ? y[n] + r : r;
  }
}

template <int BITS>
__global__ void __launch_bounds__(kV2Threads)
    gptq_swiglu_v2_kernel(__half* __restrict__ g, const __half* __restrict__ x1, const __half* __restrict__ x2,
                          GptqDev L1, GptqDev L2, const float* __restrict__ b12) {
  __shared__ float tot[kV2Cols];
  const int f0 = blockIdx.x * 4, F = L1.N;  // F % 4 == 0
  v2_block_dot<BITS>(tot, x1, x2, L1, L2, f0, f0);
  if (threadIdx.x < 4) {
    const int f = f0 + threadIdx.x;
    const float a = tot[threadIdx.x] + (b12 ? b12[f] : 0.0f);
    const float bb = tot[4 + threadIdx.x] + (b12 ? b12[F + f] : 0.0f);
    g[f] = __float2half_rn(a * (bb / (1.0f + expf(-bb))));
  }
}

// ---- batched decode (2..16 rows), v2 layout: dequantize in registers, multiply on tensor cores ----
// y rows m (stride ldy) (+)= x [M, K] (fp16, sorted row order) W^T + b, W int4 in layout 1. As
// gemv_batched (gemv.cu): a block of 8 warps owns 16 columns of W (the mma A operand's rows),
// the M activation rows are the B operand, and each thread feeds its 16-byte loads straight into
// fragments under a k relabelling that A and B share. Here a thread (g = lane / 4, t = lane % 4)
// takes, in super-chunk sc (128 rows of K), chunk c = 4 sc + t: one 16-byte word group (32 rows)
// of columns n0 + g and n0 + g + 8, their (scale, zero) for c's group, and 64 bytes of x rows g
// (and g + 8) at those 32 rows. Word i's 8 nibbles become four half2 (the v2 lop3 trick, q - z
// exact in fp16) times the scale (one fp16 rounding, as any fp16 weight), fed as two mma k-steps:
// step (i, h) gives slots {2t, 2t+1, 2t+8, 2t+9} the rows 32c + 8i + 4h + {0, 1, 2, 3}.
// With more than 8 rows a warp covers MT = 2 tiles of 16 columns with the same x fragments: x
// comes from L1/L2 for every block, and with 16 columns a block its traffic is ~4x the weights'
// (16 rows x 2 bytes vs 16 columns x 0.5 bytes per k); two tiles halve that.
constexpr int kBatchedMT = 2;

// (q - z) * s (one fp16 rounding) of one 32-row chunk of the A-tile rows g (word wl, metadata
// ml) and g + 8 (wh, mh): dq[0 or 1][word i][e] = half2 of rows 8 i + 2 e, 8 i + 2 e + 1.
__device__ __forceinline__ void int4_chunk_pair(const uint4& wl, uint32_t ml, const uint4& wh, uint32_t mh,
                                                uint32_t (&dq)[2][4][4]) {
#pragma unroll
  for (int cc = 0; cc < 2; cc++) {
    const uint4 w = cc ? wh : wl;
    const uint32_t m = cc ? mh : ml;
    const Int4Zero z = int4_zero(m >> 16);
    const __half2 s2 = u2h2((m & 0xFFFFu) * 0x00010001u);
    const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      __half2 d[4];
      int4_word(ww[i], z, d);
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const __half2 v = __hmul2(d[e], s2);
        dq[cc][i][e] = *reinterpret_cast<const uint32_t*>(&v);
      }
    }
  }
}

template <int NT, int MT>
__global__ void __launch_bounds__(256)
    gptq4_batched_v2_kernel(float* __restrict__ y, int ldy, const __half* __restrict__ x, GptqDev L,
                            const float* __restrict__ b, int M, bool accumulate) {
  constexpr int kWarpsB = 8, U = 2;
  __shared__ float red[kWarpsB][16][17];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * 16 * MT, N = L.N, K = L.K, nch = K / 32, nsc = (nch + 3) / 4;
  const uint4* ql[MT];
  const uint4* qh[MT];
  const uint32_t* ml[MT];
  const uint32_t* mh[MT];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    const int nl = min(n0 + 16 * mt + g, N - 1), nh = min(n0 + 16 * mt + g + 8, N - 1);
    ql[mt] = reinterpret_cast<const uint4*>(L.qw) + int64_t(nl) * nch;
    qh[mt] = reinterpret_cast<const uint4*>(L.qw) + int64_t(nh) * nch;
    ml[mt] = L.meta + int64_t(nl) * L.ngroups;
    mh[mt] = L.meta + int64_t(nh) * L.ngroups;
  }
  const uint4 zero4 = make_uint4(0, 0, 0, 0);
  uint4 wl[U][MT], wh[U][MT];
  uint32_t sl[U][MT], sh[U][MT];
  auto load_w = [&](int sc0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = 4 * (sc0 + u * kWarpsB) + t;
      const bool ok = sc0 + u * kWarpsB < nsc && c < nch;
      const int grp = ok ? __ldg(L.cg + c) : 0;
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        wl[u][mt] = ok ? ld_stream(ql[mt] + c) : zero4;
        wh[u][mt] = ok ? ld_stream(qh[mt] + c) : zero4;
        sl[u][mt] = ok ? __ldg(ml[mt] + grp) : 0u;
        sh[u][mt] = ok ? __ldg(mh[mt] + grp) : 0u;
      }
    }
  };
  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int j = 0; j < NT; j++) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;
  load_w(warp);
  pdl_wait();
  pdl_trigger();
  for (int sc0 = warp; sc0 < nsc; sc0 += U * kWarpsB) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = 4 * (sc0 + u * kWarpsB) + t;
      const bool ok = sc0 + u * kWarpsB < nsc && c < nch;
      uint4 xv[NT][4];  // shared by the MT tiles of W rows
#pragma unroll
      for (int j = 0; j < NT; j++) {
        const int row = g + 8 * j;
        const uint4* xp = reinterpret_cast<const uint4*>(x + int64_t(row) * K + int64_t(c) * 32);
#pragma unroll
        for (int i = 0; i < 4; i++) xv[j][i] = ok && row < M ? xp[i] : zero4;
      }
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        uint32_t dq[2][4][4];
        int4_chunk_pair(wl[u][mt], sl[u][mt], wh[u][mt], sh[u][mt], dq);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int h = 0; h < 2; h++) {
            const uint32_t a[4] = {dq[0][i][2 * h], dq[1][i][2 * h], dq[0][i][2 * h + 1], dq[1][i][2 * h + 1]};
#pragma unroll
            for (int j = 0; j < NT; j++) {
              const uint32_t b0 = h ? xv[j][i].z : xv[j][i].x, b1 = h ? xv[j][i].w : xv[j][i].y;
              mma16816<__half>(acc[mt][j], a, b0, b1);
            }
          }
      }
    }
    load_w(sc0 + U * kWarpsB);
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    if (mt) __syncthreads();  // red is reused
    batched_tile_store<kWarpsB, NT>(red, acc[mt], y, ldy, b, M, N, n0 + 16 * mt, accumulate);
  }
}

// ---- batched decode, staged: W, metadata and x through a cp.async pipeline in shared memory ----
// The same products as gptq4_batched_v2_kernel (the same fp16 weights from int4_chunk_pair, the
// same k relabelling inside a super-chunk), only the summation order of the fp32 partials differs.
// Why: in v2 a warp loads its x fragments from L2 right before the mma and its next weights only
// after the mma, so it has no load in flight while it computes and waits a whole memory round
// trip every iteration, and at MT = 2 its 192 registers leave one block an SM; a 7B step of 16 rows ran its weights at
// ~1.0 TB/s where the one-row GEMV reaches ~2.9. Here a block (8 warps, MT tiles of 16 columns)
// splits its warps as MT column tiles x KW = 8 / MT super-chunk lanes; a stage is KW consecutive
// super-chunks (CPS = 4 KW chunks of 32 rows): x [8 NT rows][CPS chunks] (one slab for the MT
// tiles of the block), the packed words [16 MT columns][CPS] and their (scale, zero) words, all
// copied with cp.async kBatchedStages - 1 stages ahead of the mma, so the weights and x of three
// stages are in flight while a warp dequantizes and multiplies. Warp (kw, mt) takes chunk
// 4 kw + t of each stage for lane (g, t), as v2 does within its super-chunk.
// Shared layouts, in 16-byte units (each quarter warp's 16-byte reads hit 8 distinct bank groups):
//   x:    row r (0 .. 8 NT - 1), unit u = 4 chunk + piece at r * 4 CPS + (u ^ (bit 3 of u) << 1 ^ (r & 1))
//         (lanes g = 0, 1 x t = 0..3 read units 4 t + i of rows g: bits t0, i1 ^ t1, i0 ^ g0 differ);
//   W:    column n (0 .. 16 MT - 1), chunk j at n * CPS + (j ^ (n & 1) << 2) (CPS >= 8);
//   meta: column n, chunk j at n * (CPS + 4) + j, in 32-bit words ((CPS + 4) / 4 = KW + 1 is odd:
//         the 8 columns g of a warp start on distinct 4-bank groups).
// Shared memory (kBatchedStages = 4), a stage / all: NT = 2, MT = 2: 26.5 / 106 KB (two blocks
// an SM); NT = 2, MT = 4: 19 / 76 KB; NT = 1, MT = 1: 26.25 / 105 KB; NT = 2, MT = 1: 42.25 /
// 169 KB (one block). Registers (ptxas, sm_90, no spills): 96, 76, 84, 116. Rows >= M and
// chunks >= K / 32 are zero-filled (x = 0, weight words 0, scale 0), which adds nothing; columns
// >= N repeat column N - 1 and are not stored.
constexpr int kBatchedStages = 4;
template <int NT, int MT>
struct BatchedStage {
  static constexpr int KW = 8 / MT, CPS = 4 * KW, COLS = 16 * MT;
  static constexpr int XU = 8 * NT * CPS * 4, WU = COLS * CPS, MS = CPS + 4;  // x, W units; meta stride
  static constexpr int bytes = (XU + WU) * 16 + COLS * MS * 4;                   // one stage
  static constexpr int smem = kBatchedStages * bytes;
  static_assert(KW >= 2 && XU % 256 == 0 && WU % 256 == 0, "stage geometry");
  static_assert(smem >= 8 * 16 * 17 * 4, "the reduction reuses the stages");
};

// 4-byte async copy global -> shared (through L1: .cg takes 16 bytes only); zero-fill when !pred.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool pred) {
  const unsigned s = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(s), "l"(gmem), "r"(pred ? 4 : 0));
}
__device__ __forceinline__ int stage_x_unit(int u, int r) { return u ^ (((u >> 3) & 1) << 1) ^ (r & 1); }

template <int NT, int MT>
__global__ void __launch_bounds__(256, 2)
    gptq4_batched_stage_kernel(float* __restrict__ y, int ldy, const __half* __restrict__ x, GptqDev L,
                               const float* __restrict__ b, int M, bool accumulate) {
  using G = BatchedStage<NT, MT>;
  constexpr int KW = G::KW, CPS = G::CPS, RU = 4 * CPS;  // RU: x units a row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kw = warp % KW, mt = warp / KW;
  const int n0 = blockIdx.x * G::COLS, N = L.N, K = L.K, nch = K / 32, nst = (nch + CPS - 1) / CPS;
  auto xs = [&](int st) { return reinterpret_cast<uint4*>(smem_raw + st * G::bytes); };
  auto ws = [&](int st) { return xs(st) + G::XU; };
  auto ms = [&](int st) { return reinterpret_cast<uint32_t*>(ws(st) + G::WU); };
  const uint4* qw = reinterpret_cast<const uint4*>(L.qw);
  auto load_w = [&](int s) {  // the packed words and metadata of stage s
    uint4* w = ws(s % kBatchedStages);
    uint32_t* m = ms(s % kBatchedStages);
#pragma unroll
    for (int k = 0; k < G::WU / 256; k++) {
      const int e = tid + 256 * k, col = e / CPS, j = e % CPS, c = s * CPS + j, n = min(n0 + col, N - 1);
      const bool ok = c < nch;
      cp_async16(w + col * CPS + (j ^ ((col & 1) << 2)), qw + int64_t(n) * nch + (ok ? c : 0), ok);
      cp_async4(m + col * G::MS + j, L.meta + int64_t(n) * L.ngroups + (ok ? __ldg(L.cg + c) : 0), ok);
    }
  };
  auto load_x = [&](int s) {  // rows 0 .. 8 NT - 1 of x at the chunks of stage s
    uint4* xb = xs(s % kBatchedStages);
#pragma unroll
    for (int k = 0; k < G::XU / 256; k++) {
      const int e = tid + 256 * k, r = e / RU, u = e % RU, c = s * CPS + u / 4;
      const bool ok = r < M && c < nch;
      cp_async16(xb + r * RU + stage_x_unit(u, r), ok ? x + int64_t(r) * K + c * 32 + (u % 4) * 8 : x, ok);
    }
  };
  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  // The weights of the first stages go out before pdl_wait (they do not depend on earlier
  // kernels); cp.async group s then holds x of stage s (group 0 also all those weights).
  for (int s = 0; s < kBatchedStages - 1; s++)
    if (s < nst) load_w(s);
  pdl_wait();
  pdl_trigger();
  for (int s = 0; s < kBatchedStages - 1; s++) {
    if (s < nst) load_x(s);
    cp_async_commit();
  }
  const int j = 4 * kw + t, ca = 16 * mt + g;  // this lane's chunk of a stage; its A-tile rows ca, ca + 8
  for (int it = 0; it < nst; it++) {
    cp_async_wait<kBatchedStages - 2>();
    __syncthreads();  // stage it landed for all threads; the buffer of stage it - 1 may be refilled
    const int nx = it + kBatchedStages - 1;
    if (nx < nst) {
      load_w(nx);
      load_x(nx);
    }
    cp_async_commit();
    const int st = it % kBatchedStages;
    const uint4* xb = xs(st);
    const uint4* wb = ws(st);
    const uint32_t* mb = ms(st);
    const int jw = j ^ ((g & 1) << 2);  // (ca + 8) & 1 == ca & 1 == g & 1
    uint32_t dq[2][4][4];
    int4_chunk_pair(wb[ca * CPS + jw], mb[ca * G::MS + j], wb[(ca + 8) * CPS + jw], mb[(ca + 8) * G::MS + j], dq);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      uint4 xv[NT];  // rows g + 8 r, k rows 32 c + 8 i .. + 7 (c: this lane's chunk)
#pragma unroll
      for (int r = 0; r < NT; r++) xv[r] = xb[(g + 8 * r) * RU + stage_x_unit(4 * j + i, g)];
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const uint32_t a[4] = {dq[0][i][2 * h], dq[1][i][2 * h], dq[0][i][2 * h + 1], dq[1][i][2 * h + 1]};
#pragma unroll
        for (int r = 0; r < NT; r++) mma16816<__half>(acc[r], a, h ? xv[r].z : xv[r].x, h ? xv[r].w : xv[r].y);
      }
    }
  }
  // The KW partial tiles of each column tile, summed in a fixed order (deterministic).
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the stages: the reduction reuses them
  float(*red)[16][17] = reinterpret_cast<float(*)[16][17]>(smem_raw);
  c_tile_to_shared<NT>(red[warp], acc);
  __syncthreads();
  const int rr = tid / 16, m = tid % 16;
#pragma unroll
  for (int tile = 0; tile < MT; tile++) {
    const int n = n0 + 16 * tile + rr;
    if (m < 8 * NT && m < M && n < N) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < KW; w++) v += red[tile * KW + w][rr][m];
      v += b ? b[n] : 0.0f;
      float* dst = y + int64_t(m) * ldy + n;
      *dst = accumulate ? *dst + v : v;
    }
  }
}

// The gptq_batched kernel choice (see gptq_batched_set_kernel below).
enum BatchedKernel { kBatchedV2 = 0, kBatchedStage = 1, kBatchedStage16 = 2, kBatchedStage64 = 3, kBatchedAuto = 4 };
int batched_kernel_override = -1;  // gptq_batched_set_kernel

int batched_kernel() {
  static const int from_env = [] {
    const char* e = std::getenv("QWEN_GPTQ_BATCHED_KERNEL");
    if (!e || !*e || std::strcmp(e, "auto") == 0) return int(kBatchedAuto);
    if (std::strcmp(e, "v2") == 0) return int(kBatchedV2);
    if (std::strcmp(e, "stage") == 0) return int(kBatchedStage);
    if (std::strcmp(e, "stage16") == 0) return int(kBatchedStage16);
    if (std::strcmp(e, "stage64") == 0) return int(kBatchedStage64);
    throw Error(std::string("cuda: QWEN_GPTQ_BATCHED_KERNEL=") + e + " is not auto, v2, stage, stage16 or stage64");
  }();
  return batched_kernel_override >= 0 ? batched_kernel_override : from_env;
}

template <int NT, int MT>
void launch_batched_stage(float* y, int ldy, const __half* x, const GptqDev& L, const float* b, int M, bool accumulate,
                          cudaStream_t s) {
  constexpr int smem = BatchedStage<NT, MT>::smem;
  CK(cudaFuncSetAttribute(gptq4_batched_stage_kernel<NT, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  launch_pdl(gptq4_batched_stage_kernel<NT, MT>, ceil_div(L.N, 16 * MT), 256, smem, s, y, ldy, x, L, b, M,
             accumulate);
  CK_LAUNCH("gptq4_batched_stage_kernel");
}

// xp [T, K] = x[:, perm] (16-bit elements).
__global__ void gptq_gather_kernel(uint16_t* __restrict__ xp, const uint16_t* __restrict__ x,
                                   const int32_t* __restrict__ perm, int K) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < K; i += gridDim.x * blockDim.x)
    xp[int64_t(t) * K + i] = x[int64_t(t) * K + perm[i]];
}

// W [cols, K] (original row order) = dequantized columns n0..n0+cols-1; one thread per (column, chunk).
template <typename T, int BITS>
__global__ void gptq_dequant_kernel(T* __restrict__ W, GptqDev L, int n0, int cols) {
  constexpr int CH = 128 / BITS, PW = 32 / BITS;
  const int nch = L.K / CH;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(cols) * nch) return;
  const int nl = int(idx / nch), c = int(idx % nch), n = n0 + nl;
  const uint4 w = reinterpret_cast<const uint4*>(L.qw)[int64_t(n) * nch + c];
  const uint32_t m = L.meta[int64_t(n) * L.ngroups + L.cg[c]];
  const __half_raw hr{static_cast<unsigned short>(m & 0xFFFFu)};
  const float s = __half2float(__half(hr)), z = float(m >> 16);
  const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
  const bool inter = (BITS == 4 && L.layout == 1) || (BITS == 8 && L.layout == 2);
  float v[CH];
#pragma unroll
  for (int j = 0; j < 4; j++)
#pragma unroll
    for (int e = 0; e < PW; e++) {
      const int pos = inter ? (BITS == 4 ? gptq_nibble_pos(e) : gptq_byte_pos(e)) : e;
      v[j * PW + e] = s * (float((ww[j] >> (BITS * pos)) & ((1u << BITS) - 1u)) - z);
    }
  T* row = W + int64_t(nl) * L.K;
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
                                   const int32_t* __restrict__ perm, int K, int N, int bits, int layout) {
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
    out |= q << (bits * (layout == 1 ? gptq_nibble_pos(e) : layout == 2 ? gptq_byte_pos(e) : e));
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

int gptq_layout_for(int bits, DT dt, int N) {
  const char* env = std::getenv("QWEN_GPTQ_GEMV");
  if (env && std::strcmp(env, "v1") == 0) return 0;
  if (dt != DT::F16) return 0;
  if (bits == 4) return 1;
  // int8 v2 (the scale-first form, which holds activation outliers of 1000 in the kernel tests)
  // unless QWEN_GPTQ_INT8_V2=0 asks for v1.
  const char* v2 = std::getenv("QWEN_GPTQ_INT8_V2");
  return bits == 8 && N % kV2Cols == 0 && !(v2 && std::strcmp(v2, "0") == 0) ? 2 : 0;
}

void gptq_repack(uint32_t* qw, const void* raw_qweight, const int32_t* perm, int K, int N, int bits, int layout,
                 cudaStream_t s) {
  if (layout != 0 && !(layout == 1 && bits == 4) && !(layout == 2 && bits == 8))
    throw Error("cuda: gptq_repack: layout 1 is for int4 only, layout 2 for int8 only");
  const int64_t total = int64_t(N) * (K / (32 / bits));
  gptq_repack_kernel<<<unsigned((total + 255) / 256), 256, 0, s>>>(
      qw, static_cast<const uint32_t*>(raw_qweight), perm, K, N, bits, layout);
  CK_LAUNCH("gptq_repack_kernel");
}

void gptq_gather(void* xp, const void* x, const int32_t* perm, int T, int K, cudaStream_t s) {
  launch_pdl(gptq_gather_kernel, dim3(std::min(ceil_div(K, 256), 64), T), 256, 0, s, static_cast<uint16_t*>(xp),
             static_cast<const uint16_t*>(x), perm, K);
  CK_LAUNCH("gptq_gather_kernel");
}

void gptq_gemv(float* y, const void* x, const GptqDev& L, const float* b, bool accumulate, DT dt, cudaStream_t s) {
  if (L.layout == 1 || L.layout == 2) {
    const int bits = L.layout == 1 ? 4 : 8;
    if (dt != DT::F16 || L.bits != bits || L.N % kV2Cols != 0 || L.K % (128 / bits) != 0 ||
        (reinterpret_cast<uintptr_t>(x) & 15))
      throw Error("cuda: gptq_gemv v2 needs int4 (layout 1) or int8 (layout 2), fp16, N % 8 == 0, whole 16-byte "
                  "chunks of K and a 16-byte aligned x");
    if (bits == 4)
      launch_pdl(gptq_gemv_v2_kernel<4>, L.N / kV2Cols, kV2Threads, 0, s, y, static_cast<const __half*>(x), L, b,
                 accumulate);
    else
      launch_pdl(gptq_gemv_v2_kernel<8>, L.N / kV2Cols, kV2Threads, 0, s, y, static_cast<const __half*>(x), L, b,
                 accumulate);
    CK_LAUNCH("gptq_gemv_v2_kernel");
    return;
  }
  const int blocks = ceil_div(L.N, kWarps);
  QWEN_DISPATCH_DT(dt, E, {
    if (L.bits == 4)
      launch_pdl(gptq_gemv_kernel<E, 4>, blocks, kWarps * 32, 0, s, y, static_cast<const E*>(x), L, b, accumulate);
    else
      launch_pdl(gptq_gemv_kernel<E, 8>, blocks, kWarps * 32, 0, s, y, static_cast<const E*>(x), L, b, accumulate);
  });
  CK_LAUNCH("gptq_gemv_kernel");
}

void gptq_gemv_swiglu(void* g, const void* x1, const void* x2, const GptqDev& L1, const GptqDev& L2, const float* b12,
                      DT dt, cudaStream_t s) {
  if (L1.bits != L2.bits || L1.N != L2.N || L1.K != L2.K || L1.layout != L2.layout)
    throw Error("cuda: gptq_gemv_swiglu: w1 and w2 differ in shape or layout");
  if (L1.layout == 1 || L1.layout == 2) {
    const int bits = L1.layout == 1 ? 4 : 8;
    if (dt != DT::F16 || L1.bits != bits || L1.N % 4 != 0 || L1.K % (128 / bits) != 0 ||
        ((reinterpret_cast<uintptr_t>(x1) | reinterpret_cast<uintptr_t>(x2)) & 15))
      throw Error("cuda: gptq_gemv_swiglu v2 needs int4 (layout 1) or int8 (layout 2), fp16, F % 4 == 0, whole "
                  "16-byte chunks of K and 16-byte aligned x");
    if (bits == 4)
      launch_pdl(gptq_swiglu_v2_kernel<4>, L1.N / 4, kV2Threads, 0, s, static_cast<__half*>(g),
                 static_cast<const __half*>(x1), static_cast<const __half*>(x2), L1, L2, b12);
    else
      launch_pdl(gptq_swiglu_v2_kernel<8>, L1.N / 4, kV2Threads, 0, s, static_cast<__half*>(g),
                 static_cast<const __half*>(x1), static_cast<const __half*>(x2), L1, L2, b12);
    CK_LAUNCH("gptq_swiglu_v2_kernel");
    return;
  }
  const int blocks = ceil_div(L1.N, kWarps);
  QWEN_DISPATCH_DT(dt, E, {
    if (L1.bits == 4)
      launch_pdl(gptq_swiglu_kernel<E, 4>, blocks, kWarps * 32, 0, s, static_cast<E*>(g), static_cast<const E*>(x1),
                 static_cast<const E*>(x2), L1, L2, b12);
    else
      launch_pdl(gptq_swiglu_kernel<E, 8>, blocks, kWarps * 32, 0, s, static_cast<E*>(g), static_cast<const E*>(x1),
                 static_cast<const E*>(x2), L1, L2, b12);
  });
  CK_LAUNCH("gptq_swiglu_kernel");
}

void gptq_dequant(void* W, const GptqDev& L, int n0, int cols, DT dt, cudaStream_t s) {
  if (n0 < 0 || cols < 1 || n0 + cols > L.N) throw Error("cuda: gptq_dequant: column range out of bounds");
  const int64_t total = int64_t(cols) * (L.K / (128 / L.bits));
  const unsigned blocks = unsigned((total + 255) / 256);
  QWEN_DISPATCH_DT(dt, E, {
    if (L.bits == 4)
      gptq_dequant_kernel<E, 4><<<blocks, 256, 0, s>>>(static_cast<E*>(W), L, n0, cols);
    else
      gptq_dequant_kernel<E, 8><<<blocks, 256, 0, s>>>(static_cast<E*>(W), L, n0, cols);
  });
  CK_LAUNCH("gptq_dequant_kernel");
}

int gptq_slice_cols(int N, int K, size_t deq_elems) {
  if (K <= 0 || deq_elems < size_t(K)) throw Error("cuda: GPTQ dequantization scratch is smaller than one column");
  size_t cols = std::min(size_t(N), deq_elems / size_t(K));
  if (cols < size_t(N) && cols >= 128) cols -= cols % 128;  // whole GEMM tiles per slice
  return int(cols);
}

void gptq_matmul(float* y, int ldy, const void* x, const GptqDev& L, const float* b, int T, bool accumulate, void* deq,
                 size_t deq_elems, DT dt, cudaStream_t s) {
  const int cols = gptq_slice_cols(L.N, L.K, deq_elems);
  for (int n0 = 0; n0 < L.N; n0 += cols) {
    const int nc = std::min(cols, L.N - n0);
    gptq_dequant(deq, L, n0, nc, dt, s);
    gemm_ld(y + n0, ldy, x, deq, b ? b + n0 : nullptr, T, nc, L.K, accumulate, dt, s);
  }
}

// Which batched kernel gptq_batched runs: QWEN_GPTQ_BATCHED_KERNEL, read once: "auto" (the
// default: the faster of the two below for the shape, as time_gptq_batched measured them on an
// H200 at the 7B shapes: "stage" above 8 rows when K <= 4096 (12288x4096 18.4 vs 20.5 us,
// 22016x4096 30.8 vs 36.6; 4096x11008 19.5 vs 16.6 is v2's), and at most 8 rows when N <= 4096
// (4096x4096 5.9 vs 8.0 us at 8 rows, 4096x11008 11.6 vs 16.9; the wide layers are v2's), "v2"
// (gptq4_batched_v2_kernel), "stage" (gptq4_batched_stage_kernel: 32 columns a block
// above 8 rows, 16 at most 8), "stage16" (16 columns a block), "stage64" (64 columns a block
// above 8 rows, 32 at most 8). gptq_batched_set_kernel (for the timing harness,
// test/cuda/time_gptq_batched.cuh) overrides it: 0 v2, 1 stage, 2 stage16, 3 stage64, -1 back to
// the environment's choice.
void gptq_batched_set_kernel(int v) {
  if (v < -1 || v > kBatchedStage64)
    throw Error("cuda: gptq_batched_set_kernel: kernel " + std::to_string(v) + " is not -1 .. 3");
  batched_kernel_override = v;
}

void gptq_batched(float* y, int ldy, const void* x, const GptqDev& L, const float* b, int M, bool accumulate, DT dt,
                  cudaStream_t s) {
  if (L.layout != 1 || dt != DT::F16 || L.bits != 4 || L.K % 32 != 0 || (reinterpret_cast<uintptr_t>(x) & 15) ||
      M < 1 || M > kGemvBatchMax || ldy < L.N)
    throw Error("cuda: gptq_batched needs the v2 layout (int4, fp16), K % 32 == 0, a 16-byte aligned x, 1..16 rows");
  const __half* xh = static_cast<const __half*>(x);
  int kernel = batched_kernel();
  if (kernel == kBatchedAuto) kernel = (M > 8 ? L.K <= 4096 : L.N <= 4096) ? kBatchedStage : kBatchedV2;
  switch (kernel) {
    case kBatchedStage:
      if (M <= 8) launch_batched_stage<1, 1>(y, ldy, xh, L, b, M, accumulate, s);
      else launch_batched_stage<2, 2>(y, ldy, xh, L, b, M, accumulate, s);
      return;
    case kBatchedStage16:
      if (M <= 8) launch_batched_stage<1, 1>(y, ldy, xh, L, b, M, accumulate, s);
      else launch_batched_stage<2, 1>(y, ldy, xh, L, b, M, accumulate, s);
      return;
    case kBatchedStage64:
      if (M <= 8) launch_batched_stage<1, 2>(y, ldy, xh, L, b, M, accumulate, s);
      else launch_batched_stage<2, 4>(y, ldy, xh, L, b, M, accumulate, s);
      return;
    default:
      break;
  }
  // Two column tiles a warp where the rows are many (H100, 7B int4, 16 rows: 5.24 vs 5.43 ms a
  // step); one where they are few (4 rows: 3.23 vs 3.49 ms: the grid is then too small).
  // QWEN_GPTQ_BATCHED_MT=1 forces one tile.
  static const bool one_tile = [] {
    const char* e = std::getenv("QWEN_GPTQ_BATCHED_MT");
    return e && std::strcmp(e, "1") == 0;
  }();
  if (M <= 8)
    launch_pdl(gptq4_batched_v2_kernel<1, 1>, ceil_div(L.N, 16), 256, 0, s, y, ldy, xh, L, b, M, accumulate);
  else if (one_tile)
    launch_pdl(gptq4_batched_v2_kernel<2, 1>, ceil_div(L.N, 16), 256, 0, s, y, ldy, xh, L, b, M, accumulate);
  else
    launch_pdl(gptq4_batched_v2_kernel<2, kBatchedMT>, ceil_div(L.N, 16 * kBatchedMT), 256, 0, s, y, ldy, xh, L, b, M,
               accumulate);
  CK_LAUNCH("gptq4_batched_v2_kernel");
}

void gptq_linear_ld(float* y, int ldy, const void* x, const GptqDev& L, const float* b, int T, bool accumulate,
                    void* xperm, void* deq, size_t deq_elems, DT dt, cudaStream_t s) {
  const bool batched_v2 = L.layout == 1 && dt == DT::F16 && L.bits == 4;
  if (T == 1 || (T <= kGemvBatchMax && batched_v2) || (T <= kGptqRowLoopMax && !batched_v2)) {
    const void* xs = x;
    if (L.perm) {
      gptq_gather(xperm, x, L.perm, T, L.K, s);
      xs = xperm;
    }
    if (T > 1 && batched_v2) {
      gptq_batched(y, ldy, xs, L, b, T, accumulate, dt, s);
    } else {
      // T == 1, or a few rows of a layout without the batched kernel: the GEMV once per row
      for (int r = 0; r < T; r++)
        gptq_gemv(y + int64_t(r) * ldy, static_cast<const char*>(xs) + int64_t(r) * L.K * 2, L, b, accumulate, dt, s);
    }
  } else {
    gptq_matmul(y, ldy, x, L, b, T, accumulate, deq, deq_elems, dt, s);
  }
}

void gptq_linear(float* y, const void* x, const GptqDev& L, const float* b, int T, bool accumulate, void* xperm,
                 void* deq, size_t deq_elems, DT dt, cudaStream_t s) {
  gptq_linear_ld(y, L.N, x, L, b, T, accumulate, xperm, deq, deq_elems, dt, s);
}

}  // namespace qwen::cuda
