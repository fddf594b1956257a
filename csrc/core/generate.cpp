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
  // Greedy without a repetition penalty is the argmax of the raw logits: let the backend pick it
  // where it can (CUDA: 4 bytes back instead of V floats); sample_token otherwise.
  const SamplingOptions& so = opt.sampling;
  bool on_device = (!so.do_sample || so.temperature <= 0.0f) && so.repetition_penalty == 1.0f;
  int32_t tok = 0;
  // Feeds ids; returns whether `tok` already holds the next token (else it is in `logits`).
  auto feed = [&](const int32_t* ids, int n) {
    if (on_device) {
      int32_t next = 0;
      if (model.forward_argmax(cache, ids, n, &next)) {
        tok = next;
        return true;
      }
      on_device = false;  // not implemented by this backend
    }
    model.forward(cache, ids, n, logits.data(), false);
    return false;
  };
  if (abort.load()) return FinishReason::Aborted;
  bool have = feed(prompt.data(), int(prompt.size()));
  for (;;) {
    if (abort.load()) return FinishReason::Aborted;
    if (!have) tok = sample_token(logits.data(), V, opt.sampling, cache.tokens, rng);
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
    const int32_t fed = tok;
    have = feed(&fed, 1);
  }
}

}  // namespace qwen
