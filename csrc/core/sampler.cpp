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

int32_t sample_token(float* logits, int vocab, const SamplingOptions& opt, const std::vector<int32_t>& history, Rng& rng,
                     const double* u_given) {
  // Scratch reused across tokens (a generation samples on one thread): no per-token allocation
  // of vocabulary-sized buffers.
  thread_local std::vector<uint8_t> seen;
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

  // The candidates as (logit, weight, id) records, contiguous so that the selections below run
  // over memory in order rather than through the logits by index. Top-k keeps every id tied with
  // the k-th (as HF's `scores < kth_value` test does).
  struct Cand {
    float l, w;
    int32_t id;
  };
  thread_local std::vector<Cand> c;
  c.resize(size_t(vocab));
  for (int i = 0; i < vocab; i++) c[size_t(i)] = Cand{logits[i], 0.0f, int32_t(i)};
  size_t keep = size_t(vocab);
  if (opt.top_k > 0 && opt.top_k < vocab) {
    std::nth_element(c.begin(), c.begin() + (opt.top_k - 1), c.end(), [](const Cand& a, const Cand& b) { return a.l > b.l; });
    const float kth = c[size_t(opt.top_k - 1)].l;
    keep = size_t(std::partition(c.begin(), c.end(), [kth](const Cand& a) { return a.l >= kth; }) - c.begin());
  }
  float mx = -INFINITY;
  for (size_t i = 0; i < keep; i++) mx = std::max(mx, c[i].l);
  // Unnormalized probabilities: exp in fp32 (torch's softmax precision; a float64 exp per
  // vocabulary entry cost milliseconds a token), sums in float64.
  double total = 0;
  for (size_t i = 0; i < keep; i++) total += c[i].w = std::exp(c[i].l - mx);
  if (opt.top_p < 1.0f) {
    // HF sorts ascending and drops the tokens whose cumulative probability is <= 1 - top_p,
    // keeping at least the most likely one: what is kept is the shortest head of the order
    // (logit descending, then id ascending) whose mass reaches top_p. Found by a weighted
    // quickselect in expected linear time (a flat distribution's nucleus can hold most of the
    // vocabulary; sorting it cost tens of ms a token): c[0, lo) is known to be in the head,
    // with mass `acc`, and the head ends inside c[lo, hi).
    auto before = [](const Cand& a, const Cand& b) { return a.l > b.l || (a.l == b.l && a.id < b.id); };
    const double target = double(opt.top_p) * total;
    size_t lo = 0, hi = keep;
    double acc = 0;
    while (hi - lo > 1) {
      // median of three as the pivot, moved to the end of the range
      const size_t mid = lo + (hi - lo) / 2;
      if (before(c[hi - 1], c[lo])) std::swap(c[lo], c[hi - 1]);
      if (before(c[mid], c[lo])) std::swap(c[mid], c[lo]);
      if (before(c[hi - 1], c[mid])) std::swap(c[mid], c[hi - 1]);
      std::swap(c[mid], c[hi - 1]);
      const Cand pv = c[hi - 1];
      const size_t m = size_t(std::partition(c.begin() + long(lo), c.begin() + long(hi - 1),
                                             [&](const Cand& a) { return before(a, pv); }) -
                              c.begin());
      double mass = 0;
      for (size_t i = lo; i < m; i++) mass += c[i].w;
      if (m > lo && acc + mass >= target) {
        hi = m;  // the head ends among the ids before the pivot
        continue;
      }
      std::swap(c[m], c[hi - 1]);  // the pivot right after them: in the head too
      acc += mass + pv.w;
      if (acc >= target) {
        lo = hi = m + 1;
        break;
      }
      lo = m + 1;
    }
    keep = hi;  // [lo, hi) holds at most one id, the head's last
  }
  double sum = 0;
  for (size_t i = 0; i < keep; i++) sum += c[i].w;
  double u = (u_given ? *u_given : rng.uniform()) * sum;
  for (size_t i = 0; i < keep; i++) {
    u -= c[i].w;
    if (u < 0) return c[i].id;
  }
  return c[keep - 1].id;
}

}  // namespace qwen
