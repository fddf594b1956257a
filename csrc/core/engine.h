// The generation scheduler of one model (continuous batching): one thread owns every generation
// running on the model. Requests join a queue; each step the thread admits waiting requests (up to
// max_batch sequences at once), gathers every active sequence's input (a prompt chunk, or the one
// token to feed), runs one Model::forward_batch for all of them, then lets each sequence's
// Generation pick, report and check its token, finishing those that stopped. A sequence's tokens
// are those it gives run alone: the backend computes each item as it would alone, and sampling
// uses the sequence's own options and RNG.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "generate.h"

namespace qwen {

struct GenerateRequest {
  std::vector<int32_t> prompt;
  GenerateOptions options;
  const std::atomic<bool>* abort = nullptr;  // polled between steps; must outlive on_done's call
  // The sequence's cache, made by the engine's thread (under the backend's lock) when empty.
  // Owned by the caller, who must not touch it until on_done.
  std::unique_ptr<KvCache>* cache = nullptr;
  TokenFn on_token;  // on the engine's thread
  // Called once, on the engine's thread, when the request ends: the reason, or an error message
  // (then `reason` is meaningless). The engine does not touch the request after it returns.
  std::function<void(FinishReason reason, const std::string& error)> on_done;
};

struct EngineStats {
  uint64_t steps = 0;      // forward_batch calls
  uint64_t items = 0;      // sequence-steps they ran (sum of the batch sizes)
  uint64_t max_items = 0;  // the largest batch
  uint64_t tokens = 0;     // ids fed (prompt and generated)
  uint64_t requests = 0;   // requests finished
};

class Engine {
 public:
  Engine(Model& model, int max_batch, int max_queue);
  ~Engine();  // ends the waiting and active requests as aborted, then joins the thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws Error, having called nothing, when max_queue requests already wait
  // for a place in the batch. Never waits for a forward pass.
  void submit(GenerateRequest req);
  EngineStats stats() const;

 private:
  struct Active;
  void loop();
  void step();
  bool start(Active& a);  // a newly admitted request: cache, checks; false when it ended
  void finish(Active& a, const std::string& error);

  Model& model_;
  const int max_batch_, max_queue_;
  mutable std::mutex mu_;  // guards waiting_, stop_, stats_
  std::condition_variable cv_;
  std::deque<GenerateRequest> waiting_;
  bool stop_ = false;
  size_t active_count_ = 0;  // active_.size(), for submit's check
  EngineStats stats_;
  std::vector<std::unique_ptr<Active>> active_;  // the engine thread's own
  std::thread thread_;
};

}  // namespace qwen
