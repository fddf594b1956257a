// Rotary embedding and causal attention over the KV cache, fp32 throughout.
#include <algorithm>
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

namespace {

// Causal attention with K/V rows fetched through `row(h, j, buf)`, which returns a pointer to
// row j of head h (the cache itself for fp32, `buf` after dequantizing for int8).
template <typename RowK, typename RowV>
void attention_rows(float* out, const float* q, int64_t q_stride, int T, int n, int d, int pos0, ThreadPool& pool,
                    const RowK& row_k, const RowV& row_v) {
  const float scale = 1.0f / std::sqrt(float(d));
  pool.parallel_for(int64_t(T) * n, [&](int64_t i0, int64_t i1) {
    std::vector<float> s(static_cast<size_t>(pos0 + T)), buf(static_cast<size_t>(d));
    for (int64_t i = i0; i < i1; i++) {
      const int t = int(i / n), h = int(i % n);
      const int len = pos0 + t + 1;  // causal: keys 0 .. pos0 + t
      const float* qv = q + t * q_stride + int64_t(h) * d;
      float mx = -INFINITY;
      for (int j = 0; j < len; j++) {
        const float* kr = row_k(h, j, buf.data());
        float acc = 0;
        for (int c = 0; c < d; c++) acc += qv[c] * kr[c];
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
        const float* vr = row_v(h, j, buf.data());
        for (int c = 0; c < d; c++) o[c] += w * vr[c];
      }
    }
  });
}

}  // namespace

void attention(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int capacity,
               int T, int n, int d, int pos0, ThreadPool& pool) {
  auto rows = [&](const float* cache) {
    return [=](int h, int j, float*) { return cache + (int64_t(h) * capacity + j) * d; };
  };
  attention_rows(out, q, q_stride, T, n, d, pos0, pool, rows(k_cache), rows(v_cache));
}

void kv_quantize_int8(const float* x, int d, uint8_t* q, float* scale, float* zero) {
  float mn = x[0], mx = x[0];
  for (int c = 1; c < d; c++) {
    mn = std::min(mn, x[c]);
    mx = std::max(mx, x[c]);
  }
  float s = (mx - mn) / 255.0f;
  if (!(s > 0)) s = 1.0f;  // a constant row: q = 0 reproduces min exactly
  const float z = -mn / s;
  for (int c = 0; c < d; c++) q[c] = uint8_t(std::min(255.0f, std::max(0.0f, std::nearbyint(x[c] / s + z))));
  *scale = s;
  *zero = z;
}

void attention_int8(float* out, const float* q, int64_t q_stride, const KvInt8& k, const KvInt8& v, int capacity,
                    int T, int n, int d, int pos0, ThreadPool& pool) {
  auto rows = [&](const KvInt8& kv) {
    return [=](int h, int j, float* buf) {
      const int64_t r = int64_t(h) * capacity + j;
      const uint8_t* src = kv.q + r * d;
      const float s = kv.scale[r], z = kv.zero[r];
      for (int c = 0; c < d; c++) buf[c] = s * (float(src[c]) - z);
      return static_cast<const float*>(buf);
    };
  };
  attention_rows(out, q, q_stride, T, n, d, pos0, pool, rows(k), rows(v));
}

}  // namespace qwen::cpu
