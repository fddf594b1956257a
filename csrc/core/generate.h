// The generation loop of one sequence: prefill the prompt, then sample / feed one token at a
// time until a stop sequence, max_new_tokens, the context limit, or an abort.
#pragma once
#include <atomic>
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
};

enum class FinishReason { Stop, Length, ContextLimit, Aborted };
const char* finish_reason_name(FinishReason r);

// Called for every chosen token; `stop` is true for the token that completed a stop sequence
// (it is the last one reported).
using TokenFn = std::function<void(int32_t token, bool stop)>;

// Feeds `prompt` into `cache` (which may already hold earlier tokens) and generates.
// The last generated token is reported but not fed (as in Hugging Face's generate).
FinishReason generate(Model& model, KvCache& cache, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                      const std::atomic<bool>& abort, const TokenFn& on_token);

}  // namespace qwen
