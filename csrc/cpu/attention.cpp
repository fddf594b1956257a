// Rotary embedding and causal attention over the KV cache, fp32 throughout.
#include <cmath>
#include <vector>

#include "ops.h"

namespace qwen::cpu {

void rope(float* x, int64_t row_stride, int T, int heads, int d, int pos0, double base, double ntk_alpha) {
  const int d2 = d / 2;
  // As the original: base' in double, then inv_freq = 1 / base'^(2j/d) and p * inv_freq in fp32.
  const float base_ntk = float(base * std::pow(ntk_alpha, double(d) / double(d - 2)));
  std::vector<float> inv_freq(static_cast<size_t>(d2));
  for (int j = 0; j < d2; j++) inv_freq[size_t(j)] = 1.0f / std::pow(base_ntk, float(2 * j) / float(d));
  std::vector<float> cs(static_cast<size_t>(d2)), sn(static_cast<size_t>(d2));
  for (int t = 0; t < T; t++) {
    const float p = float(pos0 + t);
    for (int j = 0; j < d2; j++) {
      float a = p * inv_freq[size_t(j)];
      cs[size_t(j)] = std::cos(a);
      sn[size_t(j)] = std::sin(a);
    }
    for (int h = 0; h < heads; h++) {
      float* v = x + t * row_stride + int64_t(h) * d;
      for (int j = 0; j < d2; j++) {
        float a = v[j], b = v[j + d2];
        v[j] = a * cs[size_t(j)] - b * sn[size_t(j)];
        v[j + d2] = b * cs[size_t(j)] + a * sn[size_t(j)];
      }
    }
  }
}

void attention(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int capacity,
               int T, int n, int d, int pos0, ThreadPool& pool) {
  const float scale = 1.0f / std::sqrt(float(d));
  pool.parallel_for(int64_t(T) * n, [&](int64_t i0, int64_t i1) {
    std::vector<float> s(size_t(pos0 + T));
    for (int64_t i = i0; i < i1; i++) {
      const int t = int(i / n), h = int(i % n);
      const int len = pos0 + t + 1;  // causal: keys 0 .. pos0 + t
      const float* qv = q + t * q_stride + int64_t(h) * d;
      const float* K = k_cache + int64_t(h) * capacity * d;
      const float* V = v_cache + int64_t(h) * capacity * d;
      float mx = -INFINITY;
      for (int j = 0; j < len; j++) {
        float acc = 0;
        for (int c = 0; c < d; c++) acc += qv[c] * K[int64_t(j) * d + c];
        s[size_t(j)] = acc * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      double sum = 0;
      for (int j = 0; j < len; j++) sum += s[size_t(j)] = std::exp(s[size_t(j)] - mx);
      float* o = out + (int64_t(t) * n + h) * d;
      for (int c = 0; c < d; c++) o[c] = 0;
      const float inv = float(1.0 / sum);
      for (int j = 0; j < len; j++) {
        const float w = s[size_t(j)] * inv;
        const float* vr = V + int64_t(j) * d;
        for (int c = 0; c < d; c++) o[c] += w * vr[c];
      }
    }
  });
}

}  // namespace qwen::cpu
