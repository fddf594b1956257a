// NativeSequence: one KV cache and the jobs run on it (eval, generate), one at a time. An eval
// runs on its own native thread; a generation is a request to the model's engine (core/engine.h),
// whose thread steps it together with the model's other generations. Generated tokens stream to
// JS through a thread-safe function.
#include <condition_variable>

#include "../core/engine.h"
#include "../core/error.h"
#include "addon.h"

namespace qwen::napi {

namespace {

struct SeqJob;
struct SeqEvent {
  enum Kind { Token, Done } kind;
  int32_t token = 0;
  bool stop = false;
  std::unique_ptr<TokenLogprobs> logprobs = nullptr;  // when the generation asked for them
};
void seq_call_js(Napi::Env env, Napi::Function cb, SeqJob* job, SeqEvent* ev);
using SeqTsfn = Napi::TypedThreadSafeFunction<SeqJob, SeqEvent, seq_call_js>;

struct SeqJob {
  std::shared_ptr<NativeSequence::State> st;
  std::shared_ptr<ModelHandle> handle;
  std::shared_ptr<Model> model;
  std::thread thread;
  SeqTsfn tsfn;
  std::unique_ptr<Napi::Promise::Deferred> deferred;  // eval only
  std::vector<int32_t> ids;
  bool all_logits = false;
  bool generate = false;
  GenerateOptions gopt;
  std::vector<float> logits;
  std::string error;
  FinishReason reason = FinishReason::Stop;
  // generate: whether the engine has let go of the job (its last touch is setting this).
  std::mutex engine_mu;
  std::condition_variable engine_cv;
  bool engine_done = true;
  // generate: the JS sequence, kept from garbage collection while its generation runs (its
  // destructor would abort it).
  Napi::ObjectReference self;
};

std::mutex& state_mutex() {
  static std::mutex mu;  // guards busy/disposed/cache transitions of every sequence
  return mu;
}

void seq_call_js_body(Napi::Env env, Napi::Function cb, SeqJob* job, SeqEvent* ev);

// A JS exception here (the environment shutting down, as when a worker is terminated mid-
// generation) must not escape into the thread-safe function's C callback: that would terminate
// the process. There is nobody left to report it to, so it is dropped.
void seq_call_js(Napi::Env env, Napi::Function cb, SeqJob* job, SeqEvent* ev) {
  std::unique_ptr<SeqEvent> owned(ev);
  if (!env || !ev) return;
  try {
    seq_call_js_body(env, cb, job, ev);
  } catch (const Napi::Error&) {
  }
}

void seq_call_js_body(Napi::Env env, Napi::Function cb, SeqJob* job, SeqEvent* ev) {
  if (ev->kind == SeqEvent::Token) {
    Napi::Value lp = env.Undefined();
    if (const TokenLogprobs* t = ev->logprobs.get()) {
      // {logprob, topIds: number[], topLogprobs: number[]}
      Napi::Object o = Napi::Object::New(env);
      Napi::Array ids = Napi::Array::New(env, size_t(t->n_top));
      Napi::Array lps = Napi::Array::New(env, size_t(t->n_top));
      for (int k = 0; k < t->n_top; k++) {
        ids.Set(uint32_t(k), Napi::Number::New(env, t->top_ids[k]));
        lps.Set(uint32_t(k), Napi::Number::New(env, t->top_logprobs[k]));
      }
      o.Set("logprob", Napi::Number::New(env, t->logprob));
      o.Set("topIds", ids);
      o.Set("topLogprobs", lps);
      lp = o;
    }
    cb.Call({Napi::String::New(env, "token"), Napi::Number::New(env, ev->token), Napi::Boolean::New(env, ev->stop), lp});
    return;
  }
  if (job->generate) {
    Napi::Value err = job->error.empty() ? env.Null() : Napi::Error::New(env, job->error).Value();
    cb.Call({Napi::String::New(env, "done"), err, Napi::String::New(env, finish_reason_name(job->reason))});
    return;
  }
  if (!job->error.empty()) {
    job->deferred->Reject(Napi::Error::New(env, job->error).Value());
    return;
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, job->logits.size());
  std::copy(job->logits.begin(), job->logits.end(), out.Data());
  job->deferred->Resolve(out);
}

// Marks the sequence busy and takes a reference on the model, or throws why it cannot.
void acquire(Napi::Env env, NativeSequence::State& st, const char* what, std::shared_ptr<Model>* model) {
  std::lock_guard<std::mutex> lock(state_mutex());
  if (st.disposed) throw Napi::Error::New(env, std::string(what) + ": the sequence has been disposed");
  if (st.busy) throw Napi::Error::New(env, std::string(what) + ": the sequence is busy (an eval or generation is already running on it)");
  if (!st.handle) throw Napi::Error::New(env, std::string(what) + ": this sequence was not made by createSequence");
  try {
    *model = st.handle->get(what);
  } catch (const Error& e) {
    throw Napi::Error::New(env, e.what());
  }
  st.busy = true;
  st.abort = false;
}

// The job's final event; freed here when the environment is closing and cannot take it.
void post_done(SeqJob* job) {
  auto* ev = new SeqEvent{SeqEvent::Done};
  if (job->tsfn.BlockingCall(ev) != napi_ok) delete ev;
}

// A generation: the engine runs it; on_done (on the engine's thread) ends it as start's thread
// does an eval. The job, which holds the model, is deleted by the thread-safe function's finalizer
// on the JS thread, so a model's last reference never goes on its engine's own thread (whose
// destructor joins it).
void submit_generate(Napi::Env env, SeqJob* job, Napi::Function cb) {
  NativeSequence::State& st = *job->st;
  {
    std::lock_guard<std::mutex> lock(job->handle->mu);
    job->handle->aborts.insert(&st.abort);
  }
  job->engine_done = false;
  job->tsfn = SeqTsfn::New(env, cb, "qwen-native:sequence", 0, 1, job, [](Napi::Env, void*, SeqJob* j) {
    // At environment teardown this runs while the engine may still hold the request: stop it and
    // wait (one step at most) until the engine lets go. Otherwise the generation is over, and the
    // flag may already belong to the sequence's next job: leave it alone.
    {
      std::unique_lock<std::mutex> lock(j->engine_mu);
      if (!j->engine_done) j->st->abort = true;
      j->engine_cv.wait(lock, [j] { return j->engine_done; });
    }
    j->self.Reset();
    delete j;  // a disposed model's last reference goes here (its engine thread is idle then)
  });
  auto release = [job] {
    NativeSequence::State& s = *job->st;
    {
      std::lock_guard<std::mutex> lock(job->handle->mu);
      job->handle->aborts.erase(&s.abort);
    }
    std::lock_guard<std::mutex> lock(state_mutex());
    if (s.disposed) s.cache.reset();
    s.busy = false;
  };
  GenerateRequest r;
  r.prompt = job->ids;
  r.options = job->gopt;
  r.abort = &st.abort;
  r.cache = &st.cache;
  r.on_token = [job](int32_t tok, bool stop, const TokenLogprobs* lp) {
    auto* ev = new SeqEvent{SeqEvent::Token, tok, stop};
    if (lp) ev->logprobs = std::make_unique<TokenLogprobs>(*lp);
    if (job->tsfn.BlockingCall(ev) != napi_ok) delete ev;  // the environment is closing: not delivered
  };
  r.on_done = [job, release](FinishReason reason, const std::string& error) {
    job->reason = reason;
    job->error = error;
    release();
    post_done(job);
    // Done before Release: the finalizer (which can only run after Release) must see the engine
    // gone, or it would take the generation for a live one and set the sequence's abort flag,
    // which by then may belong to the next generation JS started from this one's done event.
    {
      std::lock_guard<std::mutex> lock(job->engine_mu);
      job->engine_done = true;
      job->engine_cv.notify_all();
    }
    job->tsfn.Release();  // the last touch of the job
  };
  try {
    job->model->engine().submit(std::move(r));
  } catch (const std::exception& e) {
    release();
    {
      std::lock_guard<std::mutex> lock(job->engine_mu);
      job->engine_done = true;
    }
    std::string msg = e.what();
    job->tsfn.Release();  // its finalizer deletes the job
    throw Napi::Error::New(env, msg);
  }
}

void start(Napi::Env env, SeqJob* job, Napi::Function cb) {
  {
    std::lock_guard<std::mutex> lock(job->handle->mu);
    job->handle->aborts.insert(&job->st->abort);
  }
  job->tsfn = SeqTsfn::New(env, cb, "qwen-native:sequence", 0, 1, job, [](Napi::Env, void*, SeqJob* j) {
    j->thread.join();
    delete j;
  });
  job->thread = std::thread([job] {
    NativeSequence::State& st = *job->st;
    try {
      if (!st.cache) st.cache = job->model->new_cache();
      const int V = job->model->config().vocab_size;
      job->logits.resize(size_t(V) * (job->all_logits ? job->ids.size() : 1));
      job->model->forward(*st.cache, job->ids.data(), int(job->ids.size()), job->logits.data(), job->all_logits);
    } catch (const std::exception& e) {
      job->error = e.what();
    }
    {
      std::lock_guard<std::mutex> lock(job->handle->mu);
      job->handle->aborts.erase(&st.abort);
    }
    job->model.reset();  // a disposed model is freed here, off the JS thread
    {
      std::lock_guard<std::mutex> lock(state_mutex());
      if (st.disposed) st.cache.reset();
      st.busy = false;
    }
    post_done(job);
    job->tsfn.Release();
  });
}

double num_opt(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("option ") + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

}  // namespace

Napi::Function NativeSequence::Init(Napi::Env env) {
  return DefineClass(env, "NativeSequence",
                     {InstanceMethod<&NativeSequence::Length>("length"),
                      InstanceMethod<&NativeSequence::Tokens>("tokens"),
                      InstanceMethod<&NativeSequence::Busy>("busy"),
                      InstanceMethod<&NativeSequence::Eval>("eval"),
                      InstanceMethod<&NativeSequence::Generate>("generate"),
                      InstanceMethod<&NativeSequence::Abort>("abort"),
                      InstanceMethod<&NativeSequence::Dispose>("dispose")});
}

NativeSequence::NativeSequence(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<NativeSequence>(info), state(std::make_shared<State>()) {}

NativeSequence::~NativeSequence() {
  std::lock_guard<std::mutex> lock(state_mutex());
  state->disposed = true;
  state->abort = true;
  if (!state->busy) state->cache.reset();
}

Napi::Value NativeSequence::Length(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_mutex());
  if (state->busy) return Napi::Number::New(info.Env(), -1);
  return Napi::Number::New(info.Env(), state->cache ? state->cache->length : 0);
}

Napi::Value NativeSequence::Tokens(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_mutex());
  if (state->busy) return info.Env().Null();
  static const std::vector<int32_t> none;
  const auto& t = state->cache ? state->cache->tokens : none;
  Napi::Int32Array a = Napi::Int32Array::New(info.Env(), t.size());
  std::copy(t.begin(), t.end(), a.Data());
  return a;
}

Napi::Value NativeSequence::Busy(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), state->busy.load()); }

// eval(ids, allLogits) -> Promise<Float32Array>
Napi::Value NativeSequence::Eval(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* job = new SeqJob();
  std::unique_ptr<SeqJob> guard(job);
  job->ids = to_ids(info[0], "ids");
  job->all_logits = info[1].ToBoolean();
  acquire(env, *state, "eval", &job->model);
  job->st = state;
  job->handle = state->handle;
  job->deferred = std::make_unique<Napi::Promise::Deferred>(env);
  Napi::Promise p = job->deferred->Promise();
  start(env, guard.release(), Napi::Function());
  return p;
}

// generate(promptIds, options, onEvent(kind, a, b, c)): 'token' (id, stop, logprobs|undefined) ... then
// 'done' (error|null, reason)
Napi::Value NativeSequence::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[1].IsObject() || !info[2].IsFunction())
    throw Napi::TypeError::New(env, "generate(prompt, options, onEvent): options object and callback required");
  auto* job = new SeqJob();
  std::unique_ptr<SeqJob> guard(job);
  job->generate = true;
  job->ids = to_ids(info[0], "prompt");
  Napi::Object o = info[1].As<Napi::Object>();
  GenerateOptions& g = job->gopt;
  g.max_new_tokens = int(num_opt(o, "maxNewTokens", 512));
  g.sampling.do_sample = o.Get("doSample").ToBoolean();
  g.sampling.temperature = float(num_opt(o, "temperature", 1.0));
  g.sampling.top_k = int(num_opt(o, "topK", 0));
  g.sampling.top_p = float(num_opt(o, "topP", 1.0));
  g.sampling.repetition_penalty = float(num_opt(o, "repetitionPenalty", 1.0));
  g.sampling.seed = uint64_t(num_opt(o, "seed", 0));
  const double logprobs = num_opt(o, "logprobs", -1);
  if (!(logprobs >= -1 && logprobs <= kMaxTopLogprobs))
    throw Napi::RangeError::New(env, "option logprobs must be -1 (off) or in [0, " + std::to_string(kMaxTopLogprobs) + "]");
  g.logprobs = int(logprobs);
  // Internal sequences of Model.generate/complete/chat: size a fresh cache by what they can use.
  const double positions = num_opt(o, "cachePositions", 0);
  if (!(positions >= 0 && positions <= double(1 << 30)))
    throw Napi::RangeError::New(env, "option cachePositions must be in [0, 2^30]");
  g.cache_positions = int(positions);
  Napi::Value stops = o.Get("stopSequences");
  if (stops.IsArray()) {
    Napi::Array a = stops.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) g.stop_sequences.push_back(to_ids(a.Get(i), "stopSequences[i]"));
  }
  acquire(env, *state, "generate", &job->model);
  job->st = state;
  job->handle = state->handle;
  job->self = Napi::Persistent(info.This().As<Napi::Object>());
  submit_generate(env, guard.release(), info[2].As<Napi::Function>());
  return env.Undefined();
}

Napi::Value NativeSequence::Abort(const Napi::CallbackInfo& info) {
  state->abort = true;
  return info.Env().Undefined();
}

Napi::Value NativeSequence::Dispose(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(state_mutex());
  state->disposed = true;
  if (state->busy) state->abort = true;  // the running job frees the cache when it stops
  else state->cache.reset();
  return info.Env().Undefined();
}

}  // namespace qwen::napi
