// Token choice from one step's logits, with Hugging Face semantics (SPEC 8):
// repetition penalty -> temperature -> top-k -> top-p -> sample; greedy = argmax after the penalty.
// And the log-probabilities a generation may report with each token.
#pragma once
#include <cstdint>
#include <vector>

namespace qwen {

struct SamplingOptions {
  bool do_sample = false;         // false, or temperature 0: argmax
  float temperature = 1.0f;
  int top_k = 0;                  // 0: off
  float top_p = 1.0f;             // 1: off
  float repetition_penalty = 1.0f;  // 1: off
  uint64_t seed = 0;
};

// xoshiro256**, seeded through splitmix64: the same seed gives the same stream on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1), 53 random bits
 private:
  uint64_t s_[4];
};

// The most alternatives a token's log-probabilities list (OpenAI's top_logprobs limit).
constexpr int kMaxTopLogprobs = 20;

// One step's log-probabilities under the model's own distribution: log_softmax of the raw logits
// (before the repetition penalty, temperature, top-k and top-p), in float64.
struct TokenLogprobs {
  double logprob = 0;  // of the chosen token
  int n_top = 0;
  int32_t top_ids[kMaxTopLogprobs];    // the n_top most likely ids: most likely first, ties by lower id
  double top_logprobs[kMaxTopLogprobs];
};

// Fills `out` for the chosen id from the step's raw logits ([vocab], unmodified) with the `top`
// (clamped to 0..kMaxTopLogprobs) most likely ids.
void token_logprobs(const float* logits, int vocab, int32_t chosen, int top, TokenLogprobs* out);

// Modifies `logits` in place ([vocab] floats). `history` is every id in the sequence so far
// (the prompt and the generated ids): the ids the repetition penalty sees.
// u: the uniform draw to use instead of rng.uniform() (one taken earlier, for a backend that may
// have chosen the token itself).
int32_t sample_token(float* logits, int vocab, const SamplingOptions& opt, const std::vector<int32_t>& history, Rng& rng,
                     const double* u = nullptr);

}  // namespace qwen
