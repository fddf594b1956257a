// time_gptq_batched: the batched int4 GPTQ decode kernels (gptq_batched, 1..16 rows) of
// csrc/cuda/gptq.cu, variant by variant (v2, stage, stage16, stage64: see the comment above
// gptq_batched_set_kernel there), checked against the layer dequantized to fp16 (gptq_dequant)
// and multiplied by a plain fp32 kernel, then timed at the 7B shapes with group size 128.
// The kernels multiply exactly those fp16 weights ((q - z) exact, times the fp16 scale, rounded
// once), so only the fp32 summation order differs: tol 1e-4 of max|y|.
// Included by test_ops.cu at file scope (outside its anonymous namespace, so that the declaration
// below names the function gptq.cu defines), after its helpers: Half, rand16, Dev, upload,
// RandGptq, make_gptq, DevGptq, upload_gptq, gpu_ms, sh, S, CHECK, g_cases, g_failures.
#pragma once

namespace qwen::cuda {
// 0 v2, 1 stage, 2 stage16, 3 stage64; -1: back to QWEN_GPTQ_BATCHED_KERNEL's choice (gptq.cu).
void gptq_batched_set_kernel(int v);
}  // namespace qwen::cuda

// y [M, N] = x [M, K] W [N, K]^T + b in fp32, one warp per column (W fp16: the dequantized layer).
__global__ void gptq_batched_ref_kernel(float* __restrict__ y, const __half* __restrict__ x,
                                        const __half* __restrict__ W, const float* __restrict__ b, int M, int N,
                                        int K) {
  const int n = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= N) return;
  float acc[16];
#pragma unroll
  for (int m = 0; m < 16; m++) acc[m] = 0.0f;
  for (int k = lane; k < K; k += 32) {
    const float w = __half2float(W[int64_t(n) * K + k]);
#pragma unroll
    for (int m = 0; m < 16; m++)
      if (m < M) acc[m] = fmaf(w, __half2float(x[int64_t(m) * K + k]), acc[m]);
  }
#pragma unroll
  for (int m = 0; m < 16; m++) {
    float v = acc[m];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && m < M) y[int64_t(m) * N + n] = v + (b ? b[n] : 0.0f);
  }
}

namespace {

constexpr const char* kBatchedVariants[] = {"v2", "stage", "stage16", "stage64"};
constexpr int kBatchedNumVariants = 4;

// max |a - b| over rows 0..M-1, columns 0..N-1 (a with row stride lda, b dense [M, N]), and max |b|.
std::pair<double, double> batched_diff(const std::vector<float>& a, int lda, const std::vector<float>& b, int M,
                                       int N) {
  double d = 0, mb = 0;
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      const double u = a[size_t(m) * lda + n], v = b[size_t(m) * N + n];
      d = std::isfinite(u) ? std::max(d, std::fabs(u - v)) : INFINITY;
      mb = std::max(mb, std::fabs(v));
    }
  return {d, mb};
}

// The reference [M, N] of layer d (dequantized into deq [N, K]) for x [M, K] in the original row order.
std::vector<float> batched_ref(const DevGptq& d, const Dev& x, Dev& deq, int M) {
  const int N = d.L.N, K = d.L.K;
  cuda::gptq_dequant(deq.p, d.L, 0, N, DT::F16, S);
  Dev y(size_t(M) * N * 4);
  gptq_batched_ref_kernel<<<(N + 7) / 8, 256, 0, S>>>(y.as<float>(), x.as<__half>(), deq.as<__half>(),
                                                       d.bias->as<float>(), M, N, K);
  CHECK(cudaGetLastError());
  return y.get<float>(size_t(M) * N);
}

// Correctness first, where the tiles and stages are ragged: N not a multiple of 64, K / 32 chunks
// not a multiple of a stage, act-order (x gathered), rows 1..16, y with a row stride above N,
// accumulating on odd M.
void check_gptq_batched_ragged() {
  struct Shape {
    int N, K, G;
    bool act;
  };
  for (const Shape& shape : {Shape{40, 160, 32, true}, Shape{24, 96, 32, false}, Shape{200, 1056, 32, true},
                           Shape{136, 4128, 32, false}, Shape{520, 11008, 128, false}}) {
    const int N = shape.N, K = shape.K, ldy = N + 8;
    auto r = make_gptq("ragged", N, K, 4, shape.G, shape.act);
    DevGptq d = upload_gptq(*r, 1);
    Dev deq(size_t(N) * K * 2), xp(size_t(16) * K * 2);
    double worst[kBatchedNumVariants] = {};
    for (int M = 1; M <= 16; M++) {
      Half x = rand16(int64_t(M) * K, -1, 1, DT::F16, false);
      auto dx = upload(x.h);
      std::vector<float> ref = batched_ref(d, *dx, deq, M);
      const void* xs = dx->p;
      if (d.L.perm) {
        cuda::gptq_gather(xp.p, dx->p, d.L.perm, M, K, S);
        xs = xp.p;
      }
      const bool acc = M % 2 == 1;
      auto y0 = rand32(int64_t(M) * ldy, -1, 1);
      if (acc)
        for (int m = 0; m < M; m++)
          for (int n = 0; n < N; n++) ref[size_t(m) * N + n] += y0[size_t(m) * ldy + n];
      for (int v = 0; v < kBatchedNumVariants; v++) {
        auto dy = upload(y0);
        cuda::gptq_batched_set_kernel(v);
        cuda::gptq_batched(dy->as<float>(), ldy, xs, d.L, d.bias->as<float>(), M, acc, DT::F16, S);
        const auto dm = batched_diff(dy->get<float>(y0.size()), ldy, ref, M, N);
        worst[v] = std::max(worst[v], dm.second > 0 ? dm.first / dm.second : dm.first);
      }
    }
    for (int v = 0; v < kBatchedNumVariants; v++) {
      const bool ok = worst[v] <= 1e-4;
      g_cases++;
      if (!ok) g_failures++;
      std::printf("%-4s gptq_batched %-7s int4 g%d%s N,K=%s M=1..16 (ldy N+8, += on odd M): worst max_rel %.3e  "
                  "tol 1e-04\n",
                  ok ? "ok" : "FAIL", kBatchedVariants[v], shape.G, shape.act ? " act-order" : "", sh({N, K}).c_str(),
                  worst[v]);
    }
  }
  cuda::gptq_batched_set_kernel(-1);
}

}  // namespace

// Informal: the 16-request decode step's int4 layers of a 7B model. Every variant against the
// fp32 reference (and against v2), then 200 launches timed with events after a warm-up. The
// layer is held in enough copies (>= 160 MB, rotated launch by launch) that its weights come
// from DRAM, as in a decode step, not from the 50 MB L2. GB/s: packed weights + metadata.
void time_gptq_batched() {
  check_gptq_batched_ragged();
  const DT dt = DT::F16;
  for (auto nk : std::vector<std::pair<int, int>>{{12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008}}) {
    const int N = nk.first, K = nk.second;
    const double bytes = double(N) * K / 2 + double(N) * (K / 128) * 4;
    auto r = make_gptq("tb", N, K, 4, 128, false);
    const int copies = std::max(1, int(std::ceil(160e6 / bytes)));
    std::vector<DevGptq> layers;
    for (int c = 0; c < copies; c++) layers.push_back(upload_gptq(*r, 1));
    Dev deq(size_t(N) * K * 2);
    for (int M : {1, 4, 8, 16}) {
      Half x = rand16(int64_t(M) * K, -1, 1, dt, false);
      auto dx = upload(x.h);
      const std::vector<float> ref = batched_ref(layers[0], *dx, deq, M);
      Dev y(size_t(M) * N * 4);
      std::vector<float> out[kBatchedNumVariants];
      double us[kBatchedNumVariants];
      for (int v = 0; v < kBatchedNumVariants; v++) {
        cuda::gptq_batched_set_kernel(v);
        cuda::gptq_batched(y.as<float>(), N, dx->p, layers[0].L, layers[0].bias->as<float>(), M, false, dt, S);
        out[v] = y.get<float>(size_t(M) * N);
        int next = 0;
        auto launch = [&] {
          const DevGptq& d = layers[size_t(next)];
          next = (next + 1) % copies;
          cuda::gptq_batched(y.as<float>(), N, dx->p, d.L, d.bias->as<float>(), M, false, dt, S);
        };
        for (int i = 0; i < 2 * copies; i++) launch();
        us[v] = gpu_ms(launch, 200) * 1e3;
      }
      for (int v = 0; v < kBatchedNumVariants; v++) {
        const auto dr = batched_diff(out[v], N, ref, M, N), d2 = batched_diff(out[v], N, out[0], M, N);
        const double rel = dr.first / dr.second, rel2 = d2.first / d2.second;
        const bool ok = rel <= 1e-4;
        g_cases++;
        if (!ok) g_failures++;
        std::printf("time gptq_batched %-7s int4 g128 N,K=%s M=%2d: %8.1f us, %5.0f GB/s, max_rel vs ref %.2e, "
                    "vs v2 %.2e%s\n",
                    kBatchedVariants[v], sh({N, K}).c_str(), M, us[v], bytes / us[v] / 1e3, rel, rel2,
                    ok ? "" : "  ** FAIL **");
      }
    }
  }
  cuda::gptq_batched_set_kernel(-1);
}
