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
// row j of KV head h (the cache itself for fp32, `buf` after dequantizing for int8).
// n query heads over n_kv KV heads: query head h reads KV head h / g, g = n / n_kv. One work item
// is (token t, KV head, a chunk of gc query heads of its group): each K/V row is read (and, for
// int8, dequantized) once per item and used by all gc heads. gc is the whole group unless that
// leaves fewer items than threads (a decode step over few KV heads). Per query head the arithmetic
// and its order are those of plain multi-head attention, whatever gc is.
template <typename RowK, typename RowV>
void attention_rows(float* out, const float* q, int64_t q_stride, int T, int n, int n_kv, int d, int pos0,
                    ThreadPool& pool, const RowK& row_k, const RowV& row_v) {
  const float scale = 1.0f / std::sqrt(float(d));
  const int g = n / n_kv;
  int gc = g;
  while (gc > 1 && int64_t(T) * n_kv * (g / gc) < int64_t(pool.size())) {
    int next = gc - 1;
    while (g % next != 0) next--;
    gc = next;
  }
  const int chunks = g / gc;
  pool.parallel_for(int64_t(T) * n_kv * chunks, [&](int64_t i0, int64_t i1) {
    const size_t L = static_cast<size_t>(pos0 + T);
    std::vector<float> s(L * size_t(gc)), buf(static_cast<size_t>(d));
    std::vector<float> mx(static_cast<size_t>(gc)), inv(static_cast<size_t>(gc));
    for (int64_t i = i0; i < i1; i++) {
      const int t = int(i / (int64_t(n_kv) * chunks));
      const int rest = int(i % (int64_t(n_kv) * chunks));
      const int kvh = rest / chunks, h0 = kvh * g + (rest % chunks) * gc;
      const int len = pos0 + t + 1;  // causal: keys 0 .. pos0 + t
      const float* qt = q + t * q_stride;
      for (int a = 0; a < gc; a++) mx[size_t(a)] = -INFINITY;
      for (int j = 0; j < len; j++) {
        const float* kr = row_k(kvh, j, buf.data());
        for (int a = 0; a < gc; a++) {
          const float* qv = qt + int64_t(h0 + a) * d;
          float acc = 0;
          for (int c = 0; c < d; c++) acc += qv[c] * kr[c];
          float& sv = s[size_t(a) * L + size_t(j)];
          sv = acc * scale;
          mx[size_t(a)] = std::max(mx[size_t(a)], sv);
        }
      }
      for (int a = 0; a < gc; a++) {
        float* sa = s.data() + size_t(a) * L;
        double sum = 0;
        for (int j = 0; j < len; j++) sum += sa[j] = std::exp(sa[j] - mx[size_t(a)]);
        inv[size_t(a)] = float(1.0 / sum);
        float* o = out + (int64_t(t) * n + h0 + a) * d;
        for (int c = 0; c < d; c++) o[c] = 0;
      }
      for (int j = 0; j < len; j++) {
        const float* vr = row_v(kvh, j, buf.data());
        for (int a = 0; a < gc; a++) {
          const float w = s[size_t(a) * L + size_t(j)] * inv[size_t(a)];
          float* o = out + (int64_t(t) * n + h0 + a) * d;
          for (int c = 0; c < d; c++) o[c] += w * vr[c];
        }
      }
    }
  });
}

}  // namespace

// The contiguous cache [n_kv, capacity, d] is the paged form with one page of `capacity` rows.
void attention_gqa(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache,
                   int capacity, int T, int n, int n_kv, int d, int pos0, ThreadPool& pool) {
  attention_gqa_paged(out, q, q_stride, &k_cache, &v_cache, capacity, T, n, n_kv, d, pos0, pool);
}

void attention(float* out, const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int capacity,
               int T, int n, int d, int pos0, ThreadPool& pool) {
  attention_gqa(out, q, q_stride, k_cache, v_cache, capacity, T, n, n, d, pos0, pool);
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

void attention_int8_gqa(float* out, const float* q, int64_t q_stride, const KvInt8& k, const KvInt8& v, int capacity,
                        int T, int n, int n_kv, int d, int pos0, ThreadPool& pool) {
  attention_int8_gqa_paged(out, q, q_stride, &k, &v, capacity, T, n, n_kv, d, pos0, pool);
}

void attention_int8(float* out, const float* q, int64_t q_stride, const KvInt8& k, const KvInt8& v, int capacity,
                    int T, int n, int d, int pos0, ThreadPool& pool) {
  attention_int8_gqa(out, q, q_stride, k, v, capacity, T, n, n, d, pos0, pool);
}

void attention_gqa_paged(float* out, const float* q, int64_t q_stride, const float* const* k_pages,
                         const float* const* v_pages, int page, int T, int n, int n_kv, int d, int pos0,
                         ThreadPool& pool) {
  auto rows = [&](const float* const* pages) {
    return [=](int h, int j, float*) { return pages[j / page] + (int64_t(h) * page + j % page) * d; };
  };
  attention_rows(out, q, q_stride, T, n, n_kv, d, pos0, pool, rows(k_pages), rows(v_pages));
}

void attention_int8_gqa_paged(float* out, const float* q, int64_t q_stride, const KvInt8* k_pages,
                              const KvInt8* v_pages, int page, int T, int n, int n_kv, int d, int pos0,
                              ThreadPool& pool) {
  auto rows = [&](const KvInt8* pages) {
    return [=](int h, int j, float* buf) {
      const KvInt8& p = pages[j / page];
      const int64_t r = int64_t(h) * page + j % page;
      const uint8_t* src = p.q + r * d;
      const float s = p.scale[r], z = p.zero[r];
      for (int c = 0; c < d; c++) buf[c] = s * (float(src[c]) - z);
      return static_cast<const float*>(buf);
    };
  };
  attention_rows(out, q, q_stride, T, n, n_kv, d, pos0, pool, rows(k_pages), rows(v_pages));
}

}  // namespace qwen::cpu
