// The N-API binding: conversion and threading only. Long work (loading, eval, generation) runs
// on its own native thread and reports back through thread-safe functions, so the event loop
// never waits on the model. Every qwen::Error becomes a JS Error with the same message.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "../core/generate.h"
#include "../core/model.h"

namespace qwen::napi {

// A loaded model shared by its JS wrapper and every job running on it. The wrapper drops its
// reference at dispose(); a running job keeps the model alive until it returns.
struct ModelHandle {
  std::shared_ptr<Model> model;
  std::mutex mu;
  std::set<std::atomic<bool>*> aborts;  // abort flags of the jobs running on this model

  std::shared_ptr<Model> get(const char* what);  // throws "model has been disposed"
  void abort_all();
};

// Per-environment state (the addon is context-aware: worker threads and Electron contexts
// each get their own).
struct AddonData {
  Napi::FunctionReference model_ctor;
  Napi::FunctionReference sequence_ctor;
  std::mutex mu;
  // Weak: a model whose JS object is garbage-collected without dispose() is freed all the same.
  std::vector<std::weak_ptr<ModelHandle>> models;  // for abort at environment teardown
};

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit NativeModel(const Napi::CallbackInfo& info);
  std::shared_ptr<ModelHandle> handle;

 private:
  std::shared_ptr<Model> live(const char* what);  // throws when unloaded or disposed
  Napi::Value Config(const Napi::CallbackInfo& info);
  Napi::Value Backend(const Napi::CallbackInfo& info);
  Napi::Value ContextLength(const Napi::CallbackInfo& info);
  Napi::Value Memory(const Napi::CallbackInfo& info);
  Napi::Value CreateSequence(const Napi::CallbackInfo& info);
  Napi::Value BatchStats(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
};

class NativeSequence : public Napi::ObjectWrap<NativeSequence> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit NativeSequence(const Napi::CallbackInfo& info);
  ~NativeSequence();

  struct State {
    std::shared_ptr<ModelHandle> handle;
    // Made by the first job on its own thread (a cache is allocated under the backend's lock,
    // which a running forward pass holds; the JS thread must never wait for it). Guarded by
    // busy: one job at a time.
    std::unique_ptr<KvCache> cache;
    std::atomic<bool> busy{false};
    std::atomic<bool> abort{false};
    std::atomic<bool> disposed{false};
  };
  std::shared_ptr<State> state;

 private:
  Napi::Value Length(const Napi::CallbackInfo& info);
  Napi::Value Tokens(const Napi::CallbackInfo& info);
  Napi::Value Busy(const Napi::CallbackInfo& info);
  Napi::Value Eval(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
};

// Reads an Int32Array or number[] of token ids; throws a TypeError naming `what`.
std::vector<int32_t> to_ids(const Napi::Value& v, const char* what);

}  // namespace qwen::napi
