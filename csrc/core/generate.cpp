#include "generate.h"

#include "error.h"

namespace qwen {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::ContextLimit: return "context";
    case FinishReason::Aborted: return "abort";
  }
  return "?";
}

namespace {
bool ends_with(const std::vector<int32_t>& seq, const std::vector<int32_t>& tail) {
  if (tail.empty() || tail.size() > seq.size()) return false;
  return std::equal(tail.begin(), tail.end(), seq.end() - long(tail.size()));
}
}  // namespace

FinishReason generate(Model& model, KvCache& cache, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                      const std::atomic<bool>& abort, const TokenFn& on_token) {
  const int V = model.config().vocab_size;
  if (prompt.empty()) throw Error("generate: the prompt is empty");
  std::vector<float> logits(static_cast<size_t>(V));
  Rng rng(opt.sampling.seed);
  std::vector<int32_t> generated;
  if (abort.load()) return FinishReason::Aborted;
  model.forward(cache, prompt.data(), int(prompt.size()), logits.data(), false);
  for (;;) {
    if (abort.load()) return FinishReason::Aborted;
    int32_t tok = sample_token(logits.data(), V, opt.sampling, cache.tokens, rng);
    generated.push_back(tok);
    for (const auto& s : opt.stop_sequences)
      if (ends_with(generated, s)) {
        on_token(tok, true);
        return FinishReason::Stop;
      }
    on_token(tok, false);
    if (int(generated.size()) >= opt.max_new_tokens) return FinishReason::Length;
    if (cache.length >= cache.capacity) return FinishReason::ContextLimit;
    if (abort.load()) return FinishReason::Aborted;
    model.forward(cache, &tok, 1, logits.data(), false);
  }
}

}  // namespace qwen
