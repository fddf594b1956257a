#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace qwen {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  uint64_t r = rotl(s_[1] * 5, 7) * 9;
  uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return r;
}

double Rng::uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }

void token_logprobs(const float* logits, int vocab, int32_t chosen, int top, TokenLogprobs* out) {
  // log p_i = l_i - lse, lse = m + log(sum_j exp(l_j - m)) with m the largest logit: every term of
  // the float64 sum is <= 1 and one is exactly 1, so it neither overflows nor underflows.
  float m = -INFINITY;
  for (int i = 0; i < vocab; i++) m = std::max(m, logits[i]);
  double sum = 0;
  for (int i = 0; i < vocab; i++) sum += std::exp(double(logits[i]) - double(m));
  const double lse = double(m) + std::log(sum);
  out->logprob = double(logits[chosen]) - lse;
  // The top ids in one pass, an insertion into a short sorted list. Ids come in ascending order
  // and only a strictly larger logit moves ahead, so ties stay ordered by id.
  top = std::clamp(top, 0, kMaxTopLogprobs);
  int32_t* ids = out->top_ids;
  int n = 0;
  for (int i = 0; i < vocab && top > 0; i++) {
    const float l = logits[i];
    if (n == top && !(l > logits[ids[n - 1]])) continue;
    int j = n < top ? n++ : n - 1;
    for (; j > 0 && l > logits[ids[j - 1]]; j--) ids[j] = ids[j - 1];
    ids[j] = int32_t(i);
  }
  out->n_top = n;
  for (int k = 0; k < n; k++) out->top_logprobs[k] = double(logits[ids[k]]) - lse;
}

int32_t sample_token(float* logits, int vocab, const SamplingOptions& opt, const std::vector<int32_t>& history, Rng& rng) {
  // Scratch reused across tokens (a generation samples on one thread): no per-token allocation
  // of vocabulary-sized buffers.
  thread_local std::vector<uint8_t> seen;
  thread_local std::vector<int32_t> idx;
  if (opt.repetition_penalty != 1.0f) {
    // Each distinct id is penalised once, as torch's gather/scatter does.
    if (seen.size() < size_t(vocab)) seen.assign(size_t(vocab), 0);
    for (int32_t id : history) {
      if (id < 0 || id >= vocab || seen[size_t(id)]) continue;
      seen[size_t(id)] = 1;
      float& l = logits[id];
      l = l < 0 ? l * opt.repetition_penalty : l / opt.repetition_penalty;
    }
    for (int32_t id : history)
      if (id >= 0 && id < vocab) seen[size_t(id)] = 0;
  }
  if (!opt.do_sample || opt.temperature <= 0.0f)
    return int32_t(std::max_element(logits, logits + vocab) - logits);

  if (opt.temperature != 1.0f)
    for (int i = 0; i < vocab; i++) logits[i] /= opt.temperature;

  // Candidates: top-k keeps every id tied with the k-th (as HF's `scores < kth_value` test does).
  idx.resize(size_t(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  size_t keep = size_t(vocab);
  if (opt.top_k > 0 && opt.top_k < vocab) {
    std::nth_element(idx.begin(), idx.begin() + (opt.top_k - 1), idx.end(),
                     [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    float kth = logits[idx[size_t(opt.top_k - 1)]];
    auto mid = std::partition(idx.begin(), idx.end(), [&](int32_t a) { return logits[a] >= kth; });
    keep = size_t(mid - idx.begin());
  }
  float mx = -INFINITY;
  for (size_t i = 0; i < keep; i++) mx = std::max(mx, logits[idx[i]]);
  double total = 0;
  for (size_t i = 0; i < keep; i++) total += std::exp(double(logits[idx[i]] - mx));
  std::vector<double> p;
  double sum = total;
  if (opt.top_p < 1.0f) {
    // HF sorts ascending and drops the tokens whose cumulative probability is <= 1 - top_p,
    // keeping at least the most likely one. Only the head that holds more than top_p of the
    // mass can survive, so sort a growing prefix instead of the whole vocabulary.
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    size_t m = std::min(keep, size_t(64));
    double head = 0;
    for (;;) {
      std::partial_sort(idx.begin(), idx.begin() + long(m), idx.begin() + long(keep), by_logit);
      p.resize(m);
      head = 0;
      for (size_t i = 0; i < m; i++) head += p[i] = std::exp(double(logits[idx[i]] - mx));
      if (m == keep || head / total > double(opt.top_p)) break;
      m = std::min(keep, m * 4);
    }
    double cum = (total - head) / total, cut = 1.0 - double(opt.top_p);  // the unsorted tail is all dropped
    size_t n = m;
    while (n > 1) {
      cum += p[n - 1] / total;
      if (cum > cut) break;
      n--;
    }
    keep = n;
    sum = 0;
    for (size_t i = 0; i < keep; i++) sum += p[i];
  } else {
    p.resize(keep);
    for (size_t i = 0; i < keep; i++) p[i] = std::exp(double(logits[idx[i]] - mx));
  }
  double u = rng.uniform() * sum;
  for (size_t i = 0; i < keep; i++) {
    u -= p[i];
    if (u < 0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace qwen
