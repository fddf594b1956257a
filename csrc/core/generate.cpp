#include "generate.h"

#include <algorithm>

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

Generation::Generation(KvCache& cache, std::vector<int32_t> prompt, const GenerateOptions& opt, int vocab)
    : cache_(cache), prompt_(std::move(prompt)), opt_(opt), vocab_(vocab), rng_(opt.sampling.seed) {
  if (prompt_.empty()) throw Error("generate: the prompt is empty");
  // Greedy without a repetition penalty is the argmax of the raw logits: the backend may pick it
  // (CUDA: 4 bytes back instead of V floats); sample_token otherwise. Log-probabilities need the
  // logits themselves.
  const SamplingOptions& so = opt.sampling;
  argmax_ok_ = (!so.do_sample || so.temperature <= 0.0f) && so.repetition_penalty == 1.0f && opt.logprobs < 0;
  choice_ok_ = opt.logprobs < 0;
  choice_.sampling = so;
}

const TokenChoice* Generation::choice(const int32_t* ids, int n) {
  const SamplingOptions& so = opt_.sampling;
  if (so.repetition_penalty != 1.0f) {
    if (seen_.empty()) seen_.assign(size_t(vocab_), 0);
    auto see = [&](int32_t id) {
      if (id >= 0 && id < vocab_ && !seen_[size_t(id)]) {
        seen_[size_t(id)] = 1;
        penalty_ids_.push_back(id);
      }
    };
    for (; seen_tokens_ < cache_.tokens.size(); seen_tokens_++) see(cache_.tokens[seen_tokens_]);
    for (int i = 0; i < n; i++) see(ids[i]);
  }
  choice_.penalty_ids = penalty_ids_.data();
  choice_.n_penalty_ids = int(penalty_ids_.size());
  have_u_ = so.do_sample && so.temperature > 0.0f;  // sample_token draws exactly then
  u_ = have_u_ ? rng_.uniform() : 0.0;
  choice_.u = u_;
  return &choice_;
}

void Generation::input(int max_chunk, const int32_t** ids, int* n) const {
  if (prefilling()) {
    *ids = prompt_.data() + fed_;
    *n = int(std::min<size_t>(prompt_.size() - fed_, size_t(std::max(1, max_chunk))));
  } else {
    *ids = &next_;
    *n = 1;
  }
}

bool Generation::check_abort(const std::atomic<bool>& abort) {
  if (!finished_ && abort.load()) finish(FinishReason::Aborted);
  return finished_;
}

void Generation::advance(int n, float* logits, const int32_t* token, const std::atomic<bool>& abort,
                         const TokenFn& on_token) {
  if (prefilling()) {
    fed_ += size_t(n);
    if (prefilling()) {  // more chunks to come
      check_abort(abort);
      return;
    }
  }
  if (check_abort(abort)) return;
  // Log-probabilities are of the model's distribution: taken from the logits before sample_token
  // penalizes and scales them in place.
  const bool want_lp = opt_.logprobs >= 0 && !token;
  if (want_lp) raw_.assign(logits, logits + vocab_);
  const int32_t tok =
      token ? *token : sample_token(logits, vocab_, opt_.sampling, cache_.tokens, rng_, have_u_ ? &u_ : nullptr);
  have_u_ = false;
  TokenLogprobs lp;
  if (want_lp) token_logprobs(raw_.data(), vocab_, tok, opt_.logprobs, &lp);
  const TokenLogprobs* lpp = want_lp ? &lp : nullptr;
  generated_.push_back(tok);
  for (const auto& s : opt_.stop_sequences)
    if (ends_with(generated_, s)) {
      on_token(tok, true, lpp);
      return finish(FinishReason::Stop);
    }
  on_token(tok, false, lpp);
  if (int(generated_.size()) >= opt_.max_new_tokens) return finish(FinishReason::Length);
  if (cache_.length >= cache_.max_positions()) return finish(FinishReason::ContextLimit);
  if (check_abort(abort)) return;
  next_ = tok;
}

FinishReason generate(Model& model, KvCache& cache, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                      const std::atomic<bool>& abort, const TokenFn& on_token) {
  const int V = model.config().vocab_size;
  Generation g(cache, prompt, opt, V);
  std::vector<float> logits(static_cast<size_t>(V));
  if (g.check_abort(abort)) return g.reason();
  for (;;) {
    const int32_t* ids;
    int n;
    g.input(INT_MAX, &ids, &n);  // the whole prompt in one pass
    int32_t tok = 0;
    bool have = false;
    if (g.argmax_ok()) {
      have = model.forward_argmax(cache, ids, n, &tok);
      if (!have) g.no_argmax();  // not implemented by this backend
    }
    if (!have) model.forward(cache, ids, n, logits.data(), false);
    g.advance(n, logits.data(), have ? &tok : nullptr, abort, on_token);
    if (g.finished()) return g.reason();
  }
}

}  // namespace qwen
