// The generation loop of one sequence: prefill the prompt, then sample / feed one token at a
// time until a stop sequence, max_new_tokens, the context limit, or an abort.
#pragma once
#include <atomic>
#include <climits>
#include <cstdint>
#include <functional>
#include <vector>

#include "model.h"
#include "sampler.h"

namespace qwen {

struct GenerateOptions {
  int max_new_tokens = 512;
  SamplingOptions sampling;
  std::vector<std::vector<int32_t>> stop_sequences;  // eos and stop words, as id sequences
  // -1: off. 0..kMaxTopLogprobs: every token is reported with its log-probability and this many
  // most likely alternatives (TokenLogprobs). This forgoes the backend's argmax (it needs the logits)
  // and copies each step's logits once; off, it costs nothing.
  int logprobs = -1;
  // The positions a fresh cache for this generation may need (prompt + max_new_tokens): when the
  // sequence has no cache yet, the engine makes one whose limit is min(this, contextLength),
  // allocated for the prompt and the first new tokens and grown as the reply runs on
  // (Model::new_cache). 0: contextLength.
  int cache_positions = 0;
};

enum class FinishReason { Stop, Length, ContextLimit, Aborted };
const char* finish_reason_name(FinishReason r);

// Called for every chosen token; `stop` is true for the token that completed a stop sequence
// (it is the last one reported). `logprobs` is null unless GenerateOptions::logprobs asks for them
// (then it points at this step's, valid during the call).
using TokenFn = std::function<void(int32_t token, bool stop, const TokenLogprobs* logprobs)>;

// One sequence's generation as a state machine, stepped by whoever runs the forward passes
// (generate() below: one sequence alone; Engine: many in one batch). Each step: input() gives
// the ids to feed (a prompt chunk or the last generated token), the caller runs the forward pass
// on them, and advance() takes its output: after the prompt's last chunk and every token, it picks
// the next token (sampled from the logits with the sequence's own options and RNG, or the
// backend's argmax), reports it and decides whether to go on. The last generated token is reported
// but not fed (as in Hugging Face's generate); the repetition penalty sees the cache's tokens.
class Generation {
 public:
  // Throws Error for an empty prompt.
  Generation(KvCache& cache, std::vector<int32_t> prompt, const GenerateOptions& opt, int vocab);

  bool finished() const { return finished_; }
  FinishReason reason() const { return reason_; }
  // The ids of the next forward pass: up to max_chunk ids of the prompt not yet fed, or the token
  // to feed. Call only while !finished().
  void input(int max_chunk, const int32_t** ids, int* n) const;
  bool prefilling() const { return fed_ < prompt_.size(); }
  int prompt_length() const { return int(prompt_.size()); }
  int prompt_left() const { return int(prompt_.size() - fed_); }
  // Greedy, with no repetition penalty and no log-probabilities asked for: the backend may pick the
  // token (forward_argmax).
  bool argmax_ok() const { return argmax_ok_; }
  void no_argmax() { argmax_ok_ = false; }  // the backend does not implement it
  // No log-probabilities asked for: a backend may choose any step's token itself (BatchItem::
  // choice), greedy or sampled; no_choice() when it gave the logits instead.
  bool choice_ok() const { return choice_ok_; }
  void no_choice() { choice_ok_ = false; }
  // Whether the forward pass of input()'s n ids ends with a token to choose (not a prompt chunk
  // with more to come).
  bool chooses_after(int n) const { return !prefilling() || fed_ + size_t(n) >= prompt_.size(); }
  // The choice for the step that feeds ids [n] and chooses a token: this generation's options,
  // the distinct ids seen (the cache's and these) for the repetition penalty, and the uniform
  // draw, taken from the generation's RNG now (advance() samples with the same draw if the
  // backend gives the logits instead). Valid until the next call.
  const TokenChoice* choice(const int32_t* ids, int n);
  // After the forward pass of input()'s n ids: `token` when the backend chose the token (argmax),
  // else `logits` ([vocab], modified in place by the sampler).
  void advance(int n, float* logits, const int32_t* token, const std::atomic<bool>& abort, const TokenFn& on_token);
  // Ends the generation as aborted when `abort` is set (checked before each forward pass).
  bool check_abort(const std::atomic<bool>& abort);

 private:
  void finish(FinishReason r) {
    finished_ = true;
    reason_ = r;
  }
  KvCache& cache_;
  std::vector<int32_t> prompt_;
  const GenerateOptions& opt_;
  int vocab_;
  size_t fed_ = 0;         // prompt ids fed so far
  int32_t next_ = 0;       // the generated token to feed next (once the prompt is in)
  Rng rng_;
  std::vector<int32_t> generated_;
  std::vector<float> raw_;  // logprobs only: the step's logits as the model gave them
  bool argmax_ok_;
  bool choice_ok_;
  TokenChoice choice_;
  std::vector<uint8_t> seen_;        // penalty: ids in penalty_ids_ (vocab entries, once needed)
  std::vector<int32_t> penalty_ids_;  // the distinct ids of the cache's first seen_tokens_ and the step's
  size_t seen_tokens_ = 0;
  double u_ = 0;          // the draw choice() took, for advance()'s sample_token
  bool have_u_ = false;
  bool finished_ = false;
  FinishReason reason_ = FinishReason::Stop;
};

// Feeds `prompt` into `cache` (which may already hold earlier tokens) and generates.
// The last generated token is reported but not fed (as in Hugging Face's generate).
FinishReason generate(Model& model, KvCache& cache, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                      const std::atomic<bool>& abort, const TokenFn& on_token);

}  // namespace qwen
