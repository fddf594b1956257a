// Dense and GPTQ linear layers. Work is split over output features: each thread converts a
// weight row (or dequantizes a GPTQ column) to fp32 once and dots it with every input row, so
// a weight is read once per call whatever T is.
#include <vector>

#include "ops.h"

namespace qwen::cpu {

namespace {

inline float dot(const float* a, const float* b, int64_t K) {
  // Eight partial sums let the compiler vectorize without -ffast-math.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int j = 0; j < 8; j++) s[j] += a[k + j] * b[k + j];
  float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; k < K; k++) r += a[k] * b[k];
  return r;
}

}  // namespace

void gptq_dequant_column(float* w, const Linear& l, int n) {
  const int K = l.in, N = l.out, P = 32 / l.bits;
  const uint32_t mask = (1u << l.bits) - 1u;
  const int32_t* qw = static_cast<const int32_t*>(l.qweight.data);
  const int32_t* qz = static_cast<const int32_t*>(l.qzeros.data);
  const uint16_t* sc = static_cast<const uint16_t*>(l.scales.data);
  const int32_t* gi = l.g_idx.empty() ? nullptr : static_cast<const int32_t*>(l.g_idx.data);
  const int zcols = N / P;
  for (int k = 0; k < K; k++) {
    int g = gi ? gi[k] : k / l.group_size;
    uint32_t q = (uint32_t(qw[int64_t(k / P) * N + n]) >> (l.bits * (k % P))) & mask;
    uint32_t z = (uint32_t(qz[int64_t(g) * zcols + n / P]) >> (l.bits * (n % P))) & mask;
    float s = l.scales.dtype == DType::F32 ? static_cast<const float*>(l.scales.data)[int64_t(g) * N + n]
            : l.scales.dtype == DType::BF16 ? bf16_to_f32(sc[int64_t(g) * N + n])
                                            : f16_to_f32(sc[int64_t(g) * N + n]);
    w[k] = s * (float(q) - float(z + 1));
  }
}

void linear(float* y, const float* x, const Linear& l, int T, ThreadPool& pool) {
  const int64_t K = l.in, N = l.out;
  pool.parallel_for(N, [&](int64_t n0, int64_t n1) {
    std::vector<float> wrow(static_cast<size_t>(K));
    std::vector<float> bias_tmp;
    for (int64_t n = n0; n < n1; n++) {
      if (l.quantized()) {
        gptq_dequant_column(wrow.data(), l, int(n));
      } else {
        const uint8_t* row = static_cast<const uint8_t*>(l.weight.data) + size_t(n * K) * dtype_size(l.weight.dtype);
        to_f32(l.weight.dtype, row, wrow.data(), size_t(K));
      }
      float b = 0;
      if (!l.bias.empty()) to_f32(l.bias.dtype, static_cast<const uint8_t*>(l.bias.data) + size_t(n) * dtype_size(l.bias.dtype), &b, 1);
      for (int t = 0; t < T; t++) y[t * N + n] = dot(wrow.data(), x + t * K, K) + b;
    }
  });
}

}  // namespace qwen::cpu
