#include "engine.h"

#include <algorithm>
#include <climits>

#include "error.h"

namespace qwen {

struct Engine::Active {
  GenerateRequest req;
  std::unique_ptr<Generation> gen;  // made by start()
  std::vector<float> logits;
  int32_t token = 0;  // the backend's argmax, where it gives one
  bool done = false;
  std::string error;
};

Engine::Engine(Model& model, int max_batch, int max_queue)
    : model_(model), max_batch_(std::max(1, max_batch)), max_queue_(std::max(0, max_queue)) {
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Engine::submit(GenerateRequest req) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) throw Error("generate: the model is being disposed");
    // Room: max_batch sequences running plus max_queue waiting for a place among them.
    if (waiting_.size() + active_count_ >= size_t(max_batch_) + size_t(max_queue_))
      throw Error("generate: the queue is full (" + std::to_string(active_count_) + " generations running, " +
                  std::to_string(waiting_.size()) + " waiting; maxBatch " + std::to_string(max_batch_) +
                  ", maxQueue " + std::to_string(max_queue_) + "); retry later");
    waiting_.push_back(std::move(req));
  }
  cv_.notify_one();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Engine::loop() {
  for (;;) {
    std::vector<GenerateRequest> aborted;  // waiting requests whose abort flag is set
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || !active_.empty(); });
      if (stop_) break;
      for (auto it = waiting_.begin(); it != waiting_.end();)
        if (it->abort->load()) {
          aborted.push_back(std::move(*it));
          it = waiting_.erase(it);
        } else {
          ++it;
        }
      // Admission happens only here, between steps.
      while (!waiting_.empty() && int(active_.size()) < max_batch_) {
        auto a = std::make_unique<Active>();
        a->req = std::move(waiting_.front());
        waiting_.pop_front();
        active_.push_back(std::move(a));
      }
      active_count_ = active_.size();
      stats_.requests += aborted.size();
    }
    for (auto& r : aborted) {
      auto on_done = std::move(r.on_done);
      r = GenerateRequest();
      on_done(FinishReason::Aborted, "");
    }
    if (!active_.empty()) step();
  }
  // Stopping (the model is being destroyed): whatever is left ends as aborted.
  std::deque<GenerateRequest> rest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rest.swap(waiting_);
  }
  for (auto& a : active_) a->req.on_done(FinishReason::Aborted, "");
  active_.clear();
  for (auto& r : rest) r.on_done(FinishReason::Aborted, "");
}

void Engine::finish(Active& a, const std::string& error) {
  a.done = true;
  a.error = error;
}

bool Engine::start(Active& a) {
  try {
    // A fresh cache may grow to what the generation can use (its limit): it starts with pages for
    // the prompt and the first kFirstTokens new tokens, and adds pages if the reply runs longer
    // (Model::new_cache, Model::reserve).
    constexpr int kFirstTokens = 128;
    if (!*a.req.cache)
      *a.req.cache = model_.new_cache(a.req.options.cache_positions,
                                      int(a.req.prompt.size()) + std::min(kFirstTokens, std::max(a.req.options.max_new_tokens, 1)));
    KvCache& cache = **a.req.cache;
    const int n = int(a.req.prompt.size());
    const std::vector<int32_t>& p = a.req.prompt;
    a.gen = std::make_unique<Generation>(cache, p, a.req.options, model_.config().vocab_size);
    if (a.gen->check_abort(*a.req.abort)) {
      finish(a, "");
      return false;
    }
    // The whole prompt's checks up front, as one forward pass of it would make them (chunks
    // would each pass the context check).
    model_.validate(cache, p.data(), n);
    a.logits.resize(size_t(model_.config().vocab_size));
  } catch (const std::exception& e) {
    finish(a, e.what());
    return false;
  }
  return true;
}

void Engine::step() {
  for (auto& a : active_)
    if (!a->gen && !a->done) start(*a);
  const int chunk = model_.backend().prefill_chunk() > 0 ? model_.backend().prefill_chunk() : INT_MAX;
  int budget = chunk;  // prompt ids this step may take, over all the sequences
  std::vector<BatchItem> items;
  std::vector<Active*> who;
  for (auto& ap : active_) {
    Active& a = *ap;
    if (a.done) continue;
    if (a.gen->check_abort(*a.req.abort)) {
      finish(a, "");
      continue;
    }
    BatchItem it;
    it.cache = a.req.cache->get();
    if (a.gen->prefilling()) {
      if (budget == 0) continue;  // its next chunk waits for the next step
      a.gen->input(budget, &it.ids, &it.n);
      if (budget != INT_MAX) budget -= it.n;
      it.ntk_len = a.gen->prompt_length();  // used only while the cache is empty
    } else {
      a.gen->input(1, &it.ids, &it.n);
    }
    try {
      // The cache's growth (if it needs one) here, per sequence: an allocation that fails ends
      // this generation only, not the whole step's.
      model_.make_room(*it.cache, it.n);
    } catch (const std::exception& e) {
      finish(a, e.what());
      continue;
    }
    it.logits = a.logits.data();
    if (a.gen->choice_ok() && a.gen->chooses_after(it.n)) {
      it.token_out = &a.token;
      it.choice = a.gen->choice(it.ids, it.n);
    }
    items.push_back(it);
    who.push_back(&a);
  }
  if (!items.empty()) {
    uint64_t tokens = 0;
    for (const BatchItem& it : items) tokens += uint64_t(it.n);
    try {
      model_.forward_batch(items);
      for (size_t i = 0; i < items.size(); i++) {
        Active& a = *who[i];
        try {
          if (items[i].token_out && !items[i].argmax) a.gen->no_choice();  // the backend gave logits
          a.gen->advance(items[i].n, a.logits.data(), items[i].argmax ? &a.token : nullptr, *a.req.abort,
                         a.req.on_token);
          if (a.gen->finished()) finish(a, "");
        } catch (const std::exception& e) {
          finish(a, e.what());
        }
      }
    } catch (const std::exception& e) {
      for (Active* a : who) finish(*a, e.what());
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.steps++;
    stats_.items += items.size();
    stats_.max_items = std::max<uint64_t>(stats_.max_items, items.size());
    stats_.tokens += tokens;
  }
  // Those that ended leave the batch (making room for waiting requests) before they are told.
  std::vector<std::unique_ptr<Active>> ended;
  for (auto& a : active_)
    if (a->done) ended.push_back(std::move(a));
  if (ended.empty()) return;
  active_.erase(std::remove(active_.begin(), active_.end(), nullptr), active_.end());
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_count_ = active_.size();
    stats_.requests += ended.size();
  }
  for (auto& a : ended) {
    const FinishReason r = a->gen ? a->gen->reason() : FinishReason::Aborted;
    auto on_done = std::move(a->req.on_done);
    std::string error = std::move(a->error);
    a.reset();  // nothing of the request is touched after on_done
    on_done(r, error);
  }
}

}  // namespace qwen
