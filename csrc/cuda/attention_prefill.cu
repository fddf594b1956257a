// Prefill attention: tiled causal flash attention on tensor cores, any pos0 (a non-empty cache:
// chunked prefill equals one-shot prefill).
// q [T, n, d] (bf16/fp16) at positions pos0..pos0+T-1; one layer of a K/V cache (a KvLayer:
// [n_kv, cap, d], or paged: a 64-key tile is one page's rows) already holding
// positions 0..pos0+T-1; query t sees keys 0..pos0+t. out [T, n, d].
// Design (FlashAttention-2 style): grid (n_kv, ceil(T*g/64)), the last row tile first, 4 warps; a block owns 64 query rows
// of one KV head, each warp 16 rows whose Q fragments stay in registers. GQA (g = n / n_kv query
// heads per KV head): row r of a KV head's query matrix is (token r / g, query head hk*g + r % g),
// each row with its own causal limit, so the K/V tiles a block loads into shared memory serve all
// g heads of the group (MHA: g = 1, rows = tokens). Key/value tiles of 64 rows
// stream through a 2-deep cp.async double buffer. S = Q K^T and O += P V are mma.sync.m16n8k16
// with fp32 accumulators; the S accumulators are re-packed in registers as the A operand of
// P V (P rounded to bf16/fp16 there, as FlashAttention does); V's B operand comes from ldmatrix
// .trans. Softmax is online, in fp32 and base 2 (scores pre-multiplied by log2(e)/sqrt(d)); the
// row max is reduced over the 4 lanes of a quad, the row sum is kept per lane and reduced once at
// the end. Rows are padded by 16 bytes in shared memory (conflict-free ldmatrix).
// Limits: d = 64 or 128 (shared memory 46 KB / 87 KB); other head sizes use attention_decode's
// split kernel (see model_cuda.cu).
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int BQ = 64, BKV = 64, kThreads = 128;
template <int D> constexpr int smem_bytes() { return (BQ + 4 * BKV) * (D + 8) * 2; }

// Q8: the cache is the int8 one (k/v rows uint8, a (scale, zero) row each in ksz/vsz): K/V tiles
// are read with plain loads, dequantized in fp32 and stored to shared memory in T (no cp.async
// for them).
template <typename T, int D, bool Q8>
__global__ void __launch_bounds__(kThreads)
    flash_prefill_kernel(T* __restrict__ out, const T* __restrict__ q, KvLayer kv, int pos0, int T_, int n, int g,
                         float scale_log2, bool heavy_first) {
  constexpr int LD = D + 8, CPR = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [BQ][LD]
  T* sK = sQ + BQ * LD;                    // [2][BKV][LD]
  T* sV = sK + 2 * BKV * LD;               // [2][BKV][LD]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Rows of the query tile: row r = token * g + i is query head hk * g + i of token r / g.
  // Grid (n_kv, row tiles), the last row tile first: causal tiles grow with the row, and the
  // longest ones, started first, leave short ones to fill the last wave. (QWEN_PREFILL_ORDER=0:
  // the old order, grid (row tiles, n_kv) from the first tile.)
  const int hk = heavy_first ? blockIdx.x : blockIdx.y;
  const int r0 = (heavy_first ? gridDim.y - 1 - blockIdx.y : blockIdx.x) * BQ, R = T_ * g;
  const int q_rows = min(BQ, R - r0);
  const int kv_len = pos0 + (r0 + q_rows - 1) / g + 1;  // this block needs keys 0..kv_len-1
  const int ntiles = (kv_len + BKV - 1) / BKV;
  const int h = hk;  // the KV head
  constexpr int kRowBytes = Q8 ? D : D * int(sizeof(T));
  auto qrow_off = [&](int r) { return (int64_t(r / g) * n + int64_t(hk) * g + r % g) * D; };

  for (int c = tid; c < BQ * CPR; c += kThreads) {
    const int r = c / CPR, col = (c % CPR) * 8;
    const bool p = r < q_rows;
    cp_async16(sQ + r * LD + col, p ? q + qrow_off(r0 + r) + col : q, p);
  }
  auto load_kv = [&](int buf, int tile) {
    const int k0 = tile * BKV;
    for (int c = tid; c < BKV * CPR; c += kThreads) {
      const int r = c / CPR, col = (c % CPR) * 8;
      const bool p = k0 + r < kv_len;
      if constexpr (Q8) {
        uint4 ko = make_uint4(0, 0, 0, 0), vo = ko;
        if (p) {
          const int j = k0 + r;
          const uint2 ku = *reinterpret_cast<const uint2*>(kv_row(kv, kv.k, h, j, kRowBytes) + col);
          const uint2 vu = *reinterpret_cast<const uint2*>(kv_row(kv, kv.v, h, j, kRowBytes) + col);
          const float2 ks = *reinterpret_cast<const float2*>(kv_row(kv, kv.ksz, h, j, sizeof(float2)));
          const float2 vs = *reinterpret_cast<const float2*>(kv_row(kv, kv.vsz, h, j, sizeof(float2)));
          float fk[8], fv[8];
#pragma unroll
          for (int i = 0; i < 8; i++) {
            fk[i] = ks.x * (float(((i < 4 ? ku.x : ku.y) >> (8 * (i % 4))) & 0xFFu) - ks.y);
            fv[i] = vs.x * (float(((i < 4 ? vu.x : vu.y) >> (8 * (i % 4))) & 0xFFu) - vs.y);
          }
          ko = pack8<T>(fk);
          vo = pack8<T>(fv);
        }
        *reinterpret_cast<uint4*>(sK + (buf * BKV + r) * LD + col) = ko;
        *reinterpret_cast<uint4*>(sV + (buf * BKV + r) * LD + col) = vo;
      } else {
        // (an empty row copies nothing: its source only has to be a valid address, q's)
        const T* ks = p ? reinterpret_cast<const T*>(kv_row(kv, kv.k, h, k0 + r, kRowBytes)) + col : q;
        const T* vs = p ? reinterpret_cast<const T*>(kv_row(kv, kv.v, h, k0 + r, kRowBytes)) + col : q;
        cp_async16(sK + (buf * BKV + r) * LD + col, ks, p);
        cp_async16(sV + (buf * BKV + r) * LD + col, vs, p);
      }
    }
  };
  load_kv(0, 0);
  cp_async_commit();

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) o[i][e] = 0.0f;
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.0f, 0.0f};
  const int qrow = warp * 16 + lane / 4;                    // this lane's rows: qrow, qrow + 8
  const int qpos[2] = {pos0 + (r0 + qrow) / g, pos0 + (r0 + qrow + 8) / g};

  for (int j = 0; j < ntiles; j++) {
    if (j + 1 < ntiles) {
      load_kv((j + 1) & 1, j + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) ldmatrix_x4(qf[kk], sQ + (warp * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
    }
    const T* Kt = sK + (j & 1) * BKV * LD;
    const T* Vt = sV + (j & 1) * BKV * LD;

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[i][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
      for (int np = 0; np < 4; np++) {
        uint32_t r[4];
        ldmatrix_x4(r, Kt + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
        mma16816<T>(s[2 * np], qf[kk], r[0], r[1]);
        mma16816<T>(s[2 * np + 1], qf[kk], r[2], r[3]);
      }

    // Scale, causal mask, online softmax (fp32, base 2).
    const int k0 = j * BKV;
    float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
    for (int ni = 0; ni < 8; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int key = k0 + ni * 8 + (lane % 4) * 2 + (e & 1), hf = e / 2;
        const float v = key > qpos[hf] ? -INFINITY : s[ni][e] * scale_log2;
        s[ni][e] = v;
        mx[hf] = fmaxf(mx[hf], v);
      }
    float corr[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      mx[hf] = fmaxf(mx[hf], __shfl_xor_sync(0xffffffffu, mx[hf], 1));
      mx[hf] = fmaxf(mx[hf], __shfl_xor_sync(0xffffffffu, mx[hf], 2));
      corr[hf] = exp2f(m_r[hf] - mx[hf]);  // m_r = -inf on the first tile: 0
      m_r[hf] = mx[hf];
    }
#pragma unroll
    for (int ni = 0; ni < 8; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const float p = exp2f(s[ni][e] - m_r[e / 2]);
        s[ni][e] = p;
        rs[e / 2] += p;
      }
#pragma unroll
    for (int hf = 0; hf < 2; hf++) l_r[hf] = l_r[hf] * corr[hf] + rs[hf];
#pragma unroll
    for (int di = 0; di < D / 8; di++) {
      o[di][0] *= corr[0];
      o[di][1] *= corr[0];
      o[di][2] *= corr[1];
      o[di][3] *= corr[1];
    }

    // O += P V: the S accumulators of key tiles 2c, 2c+1 are the A fragment of key chunk c.
#pragma unroll
    for (int c = 0; c < 4; c++) {
      uint32_t a[4];
      a[0] = pack2<T>(s[2 * c][0], s[2 * c][1]);
      a[1] = pack2<T>(s[2 * c][2], s[2 * c][3]);
      a[2] = pack2<T>(s[2 * c + 1][0], s[2 * c + 1][1]);
      a[3] = pack2<T>(s[2 * c + 1][2], s[2 * c + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, Vt + (c * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + dp * 16 + (lane / 16) * 8);
        mma16816<T>(o[2 * dp], a, r[0], r[1]);
        mma16816<T>(o[2 * dp + 1], a, r[2], r[3]);
      }
    }
    __syncthreads();  // everyone is done with buffer j&1 before it is refilled
  }

#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    l_r[hf] += __shfl_xor_sync(0xffffffffu, l_r[hf], 1);
    l_r[hf] += __shfl_xor_sync(0xffffffffu, l_r[hf], 2);
  }
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int r = r0 + qrow + hf * 8;
    if (r >= R) continue;
    const float inv = 1.0f / l_r[hf];
    T* dst = out + qrow_off(r) + (lane % 4) * 2;
#pragma unroll
    for (int di = 0; di < D / 8; di++)
      *reinterpret_cast<uint32_t*>(dst + di * 8) = pack2<T>(o[di][2 * hf] * inv, o[di][2 * hf + 1] * inv);
  }
}

template <typename T, int D, bool Q8>
void launch_flash(void* out, const void* q, const KvLayer& kv, int pos0, int rows, int n, int n_kv, cudaStream_t s) {
  constexpr int smem = smem_bytes<D>();
  CK(cudaFuncSetAttribute(flash_prefill_kernel<T, D, Q8>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  const float scale_log2 = float(1.0 / std::sqrt(double(D)) * 1.4426950408889634);
  const int g = n / n_kv;
  static const bool heavy_first = [] {
    const char* e = std::getenv("QWEN_PREFILL_ORDER");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  const int tiles = ceil_div(rows * g, BQ);
  const dim3 grid = heavy_first ? dim3(n_kv, tiles) : dim3(tiles, n_kv);
  flash_prefill_kernel<T, D, Q8><<<grid, kThreads, smem, s>>>(static_cast<T*>(out), static_cast<const T*>(q), kv, pos0,
                                                              rows, n, g, scale_log2, heavy_first);
  CK_LAUNCH("flash_prefill_kernel");
}

template <bool Q8>
void prefill_dispatch(void* out, const void* q, const KvLayer& kv, int pos0, int T, int n, int n_kv, int d, DT dt,
                      cudaStream_t s) {
  if (n_kv < 1 || n % n_kv != 0)
    throw Error("cuda: attention over " + std::to_string(n) + " query heads and " + std::to_string(n_kv) +
                " KV heads (n_kv must divide n)");
  if (d == 64) {
    QWEN_DISPATCH_DT(dt, E, launch_flash<E, 64, Q8>(out, q, kv, pos0, T, n, n_kv, s));
  } else if (d == 128) {
    QWEN_DISPATCH_DT(dt, E, launch_flash<E, 128, Q8>(out, q, kv, pos0, T, n, n_kv, s));
  } else {
    throw Error("cuda: attention_prefill supports head_dim 64 and 128 (got " + std::to_string(d) + ")");
  }
}

}  // namespace

void attention_prefill_kv(void* out, const void* q, const KvLayer& kv, bool int8, int pos0, int T, int n, int n_kv,
                          int d, DT dt, cudaStream_t s) {
  if (int8)
    prefill_dispatch<true>(out, q, kv, pos0, T, n, n_kv, d, dt, s);
  else
    prefill_dispatch<false>(out, q, kv, pos0, T, n, n_kv, d, dt, s);
}

void attention_prefill(void* out, const void* q, const void* k_cache, const void* v_cache, int cap, int pos0, int T,
                       int n, int n_kv, int d, DT dt, cudaStream_t s) {
  attention_prefill_kv(out, q, kv_contiguous(const_cast<void*>(k_cache), const_cast<void*>(v_cache), cap), false, pos0,
                       T, n, n_kv, d, dt, s);
}

void attention_prefill_int8(void* out, const void* q, KvQ8 k_cache, KvQ8 v_cache, int cap, int pos0, int T, int n,
                            int n_kv, int d, DT dt, cudaStream_t s) {
  attention_prefill_kv(out, q, kv_contiguous(k_cache, v_cache, cap), true, pos0, T, n, n_kv, d, dt, s);
}

}  // namespace qwen::cuda
