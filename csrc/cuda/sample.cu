// Token choice on the GPU (SPEC 8, Hugging Face's order): repetition penalty -> (greedy: argmax)
// -> temperature -> top-k -> top-p -> a draw, so that a sampled step copies 4 bytes to the host
// instead of the vocabulary's logits. The CPU twin is core/sampler.cpp's sample_token: the same
// kept set (top-k keeps the ties of the k-th; top-p keeps the shortest head, in the order logit
// descending then id ascending, whose mass reaches top_p of the kept mass; at least one id) and
// the same distribution over it. The draw walks the kept ids in id order (the host walks them in
// its selection's order), so one u may pick different ids on the two, each with the right
// probability.
// One block of 1024 threads per row, no sort:
// - top-k: the k-th largest logit by a radix select on order-preserving 32-bit keys, 8 bits a
//   pass, over counts in shared memory;
// - top-p: the same radix descent over masses (exp(l - max), summed in float64), which ends on
//   the key tau of the head's last logit and the mass above it; ties at tau enter in id order
//   until the mass reaches the target;
// - the draw: each thread owns a contiguous id range; a block scan of the ranges' kept masses
//   (float64) finds the range holding u * total, whose thread walks it.
#include <cmath>

#include "ops.cuh"

namespace qwen::cuda {

namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32;

// Larger float -> larger key (for every non-NaN value); -0 and +0 share one key, as they compare
// equal on the host.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// hist[d] += v for every lane with d >= 0, with one shared-memory atomic per distinct d in the
// warp: a language model's logits share their high key bits, and 32 lanes adding float64 masses
// to one bin one by one serialize (a flat 152k-id distribution spent ~1.5 ms a token there; the
// integer counts of top-k are faster with plain atomics). All 32 lanes must call it.
__device__ __forceinline__ void warp_hist_add(double* hist, int d, double v) {
  const unsigned peers = __match_any_sync(0xffffffffu, d);
  double sum = 0;
#pragma unroll
  for (int src = 0; src < 32; src++) {
    const double o = __shfl_sync(0xffffffffu, v, src);
    if ((peers >> src) & 1u) sum += o;
  }
  if (d >= 0 && __ffs(peers) - 1 == int(threadIdx.x % 32)) atomicAdd(&hist[d], sum);
}

// Every thread gets op over the block's values (scratch: kWarps entries).
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // the scratch of an earlier call has been read
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[0];
  for (int i = 1; i < kWarps; i++) v = op(v, scratch[i]);
  return v;
}

// starts[t] = the sum of v over threads < t; starts[kThreads] = the total (wsum: kWarps entries).
template <typename T>
__device__ void block_starts(T v, T* starts, T* wsum) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  T ex = __shfl_up_sync(0xffffffffu, x, 1);
  if (lane == 0) ex = T(0);
  __syncthreads();
  if (lane == 31) wsum[warp] = x;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int i = 1; i < kWarps; i++) wsum[i] += wsum[i - 1];
  __syncthreads();
  starts[threadIdx.x] = (warp ? wsum[warp - 1] : T(0)) + ex;
  if (threadIdx.x == 0) starts[kThreads] = wsum[kWarps - 1];
  __syncthreads();
}

struct Shared {
  double dscratch[kWarps];
  float fscratch[kWarps];
  int iscratch[kWarps];
  unsigned int count[256];
  double mass[256];
  double starts[kThreads + 1];
  int tie_starts[kThreads + 1];
  uint32_t digit;
  unsigned int rest;
  double above;
  long long ties;
};

__global__ void __launch_bounds__(kThreads)
    sample_kernel(int32_t* __restrict__ out, float* __restrict__ logits, int V, const SampleRow* __restrict__ rows,
                  const int32_t* __restrict__ ids) {
  __shared__ Shared sh;
  const SampleRow p = rows[blockIdx.x];
  float* l = logits + size_t(blockIdx.x) * V;
  const int tid = threadIdx.x;
  // Each distinct id once (the host deduplicates), as torch's gather/scatter does.
  if (p.penalty != 1.0f)
    for (int i = tid; i < p.n_ids; i += kThreads) {
      const int id = ids[p.ids_off + i];
      if (id < 0 || id >= V) continue;
      const float x = l[id];
      l[id] = x < 0 ? x * p.penalty : x / p.penalty;
    }
  __syncthreads();

  if (!p.do_sample || p.temperature <= 0.0f) {  // argmax, the lowest id among ties
    float best = -INFINITY;
    int at = V;
    for (int i = tid; i < V; i += kThreads)
      if (l[i] > best) best = l[i], at = i;
    const float mx = block_reduce(best, [](float a, float b) { return fmaxf(a, b); }, sh.fscratch);
    const int id = block_reduce(best == mx ? at : V, [](int a, int b) { return min(a, b); }, sh.iscratch);
    if (tid == 0) out[blockIdx.x] = id < V ? id : 0;
    return;
  }

  // Temperature in place (the host divides the same way), and the largest logit.
  float mx = -INFINITY;
  for (int i = tid; i < V; i += kThreads) {
    float x = l[i];
    if (p.temperature != 1.0f) l[i] = x = x / p.temperature;
    mx = fmaxf(mx, x);
  }
  mx = block_reduce(mx, [](float a, float b) { return fmaxf(a, b); }, sh.fscratch);

  // Top-k: the key of the k-th largest logit (ids with a key >= kkey are kept).
  uint32_t kkey = 0;
  if (p.top_k > 0 && p.top_k < V) {
    uint32_t prefix = 0, mask = 0;
    unsigned int rest = unsigned(p.top_k);
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int d = tid; d < 256; d += kThreads) sh.count[d] = 0;
      __syncthreads();
      for (int i = tid; i < V; i += kThreads) {
        const uint32_t k = order_key(l[i]);
        if ((k & mask) == prefix) atomicAdd(&sh.count[(k >> shift) & 0xFF], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned int cum = 0;
        int d = 255;
        for (; d > 0 && cum + sh.count[d] < rest; d--) cum += sh.count[d];
        sh.digit = uint32_t(d);
        sh.rest = rest - cum;
      }
      __syncthreads();
      prefix |= sh.digit << shift;
      mask |= 0xFFu << shift;
      rest = sh.rest;
    }
    kkey = prefix;
  }

  double total = 0;
  for (int i = tid; i < V; i += kThreads)
    if (order_key(l[i]) >= kkey) total += double(expf(l[i] - mx));
  total = block_reduce(total, [](double a, double b) { return a + b; }, sh.dscratch);

  // Top-p: tau, the key of the head's last logit; `above`, the kept mass of larger keys; `ties`,
  // how many ids with key tau (in id order) the head takes (-1: all of them).
  uint32_t tau = kkey;
  long long ties = -1;
  if (p.top_p < 1.0f) {
    const double target = double(p.top_p) * total;
    uint32_t prefix = 0, mask = 0;
    double above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int d = tid; d < 256; d += kThreads) sh.mass[d] = 0;
      __syncthreads();
      for (int base = 0; base < V; base += kThreads) {  // uniform trip count: whole warps
        const int i = base + tid;
        const uint32_t k = i < V ? order_key(l[i]) : 0u;
        const bool in = i < V && k >= kkey && (k & mask) == prefix;
        warp_hist_add(sh.mass, in ? int((k >> shift) & 0xFF) : -1, in ? double(expf(l[i] - mx)) : 0.0);
      }
      __syncthreads();
      if (tid == 0) {
        double a = above;
        int d = 255, lowest = -1;
        for (; d >= 0; d--) {
          if (sh.mass[d] == 0) continue;
          if (a + sh.mass[d] >= target) break;
          a += sh.mass[d];
          lowest = d;
        }
        if (d < 0) {  // rounding left the target above the sum: the lowest digit ends the head
          d = lowest;
          a -= sh.mass[d];
        }
        sh.digit = uint32_t(d);
        sh.above = a;
      }
      __syncthreads();
      prefix |= sh.digit << shift;
      mask |= 0xFFu << shift;
      above = sh.above;
    }
    tau = prefix;
    if (tid == 0) {
      const double w = double(expf(key_value(tau) - mx));
      long long r = (long long)ceil((target - above) / w);
      if (r < 1) r = 1;
      while (r > 1 && above + double(r - 1) * w >= target) r--;  // the shortest head
      sh.ties = r;
    }
    __syncthreads();
    ties = sh.ties;
  }

  // The draw over the kept ids in id order.
  const int chunk = (V + kThreads - 1) / kThreads, b0 = min(V, tid * chunk), b1 = min(V, b0 + chunk);
  int nt = 0;
  for (int i = b0; i < b1; i++) nt += order_key(l[i]) == tau;
  block_starts(nt, sh.tie_starts, sh.iscratch);
  auto kept = [&](uint32_t k, int& rank) { return k > tau || (k == tau && (ties < 0 || rank++ < ties)); };
  double m = 0;
  int last = -1;
  {
    int rank = sh.tie_starts[tid];
    for (int i = b0; i < b1; i++)
      if (kept(order_key(l[i]), rank)) {
        m += double(expf(l[i] - mx));
        last = i;
      }
  }
  block_starts(m, sh.starts, sh.dscratch);
  const double x = p.u * sh.starts[kThreads];
  // The owner, exactly one: the last range with mass that starts at or below x (the scan's
  // rounding cannot leave x in no range, nor in two). The first range with mass starts at 0 <= x
  // (the ranges before it add exact zeros), so there is one.
  const int owner = block_reduce(m > 0 && sh.starts[tid] <= x ? tid : -1, [](int a, int b) { return max(a, b); },
                                 sh.iscratch);
  if (tid == owner) {
    double acc = sh.starts[tid];
    int rank = sh.tie_starts[tid], pick = last;
    for (int i = b0; i < b1; i++)
      if (kept(order_key(l[i]), rank)) {
        acc += double(expf(l[i] - mx));
        if (x < acc) {
          pick = i;
          break;
        }
      }
    out[blockIdx.x] = pick;
  }
}

}  // namespace

void sample_rows(int32_t* out, float* logits, int V, const SampleRow* rows, const int32_t* ids, int nrows,
                 cudaStream_t s) {
  if (nrows < 1 || V < 1) throw Error("cuda: sample_rows needs rows and a vocabulary");
  sample_kernel<<<nrows, kThreads, 0, s>>>(out, logits, V, rows, ids);
  CK_LAUNCH("sample_kernel");
}

}  // namespace qwen::cuda
