// Module entry: loadModel (on a native thread, progress through a thread-safe function), the
// NativeModel wrapper, device queries.
#include "addon.h"

#include <algorithm>

#include "../core/engine.h"
#include "../core/error.h"

namespace qwen::napi {

std::shared_ptr<Model> ModelHandle::get(const char* what) {
  std::lock_guard<std::mutex> lock(mu);
  if (!model) throw Error(std::string(what) + ": the model has been disposed");
  return model;
}

void ModelHandle::abort_all() {
  std::lock_guard<std::mutex> lock(mu);
  for (auto* a : aborts) a->store(true);
}

std::vector<int32_t> to_ids(const Napi::Value& v, const char* what) {
  std::vector<int32_t> ids;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    Napi::Int32Array a = v.As<Napi::Int32Array>();
    ids.assign(a.Data(), a.Data() + a.ElementLength());
  } else if (v.IsArray()) {
    Napi::Array a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value x = a[i];
      if (!x.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + "[" + std::to_string(i) + "] is not a number");
      double d = x.As<Napi::Number>().DoubleValue();
      if (d != double(int32_t(d))) throw Napi::TypeError::New(v.Env(), std::string(what) + "[" + std::to_string(i) + "] is not an integer");
      ids.push_back(int32_t(d));
    }
  } else {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an Int32Array or an array of token ids");
  }
  return ids;
}

namespace {

int int_opt(const Napi::Object& o, const char* key, int fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("option ") + key + " must be a number");
  return v.As<Napi::Number>().Int32Value();
}

std::string str_opt(const Napi::Object& o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string("option ") + key + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// ---- loadModel(dir, options, onProgress) -> Promise<NativeModel> ----

struct LoadJob;
struct LoadEvent {
  bool done;
  double progress;
};
void load_call_js(Napi::Env env, Napi::Function on_progress, LoadJob* job, LoadEvent* ev);
using LoadTsfn = Napi::TypedThreadSafeFunction<LoadJob, LoadEvent, load_call_js>;

struct LoadJob {
  std::string dir;
  LoadOptions opt;
  Napi::Promise::Deferred deferred;
  LoadTsfn tsfn;
  std::thread thread;
  std::unique_ptr<Model> result;
  std::string error;           // written by the loading thread
  std::string progress_error;  // written on the JS thread
  explicit LoadJob(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

void load_call_js_body(Napi::Env env, Napi::Function on_progress, LoadJob* job, LoadEvent* ev);

// See seq_call_js (sequence.cpp): no JS exception may escape a thread-safe function's callback.
// A throwing onProgress is reported as the load's rejection instead of being lost.
void load_call_js(Napi::Env env, Napi::Function on_progress, LoadJob* job, LoadEvent* ev) {
  std::unique_ptr<LoadEvent> owned(ev);
  if (!env || !ev) return;
  try {
    load_call_js_body(env, on_progress, job, ev);
  } catch (const Napi::Error& e) {
    if (!ev->done && job->progress_error.empty()) job->progress_error = std::string("onProgress threw: ") + e.Message();
  }
}

void load_call_js_body(Napi::Env env, Napi::Function on_progress, LoadJob* job, LoadEvent* ev) {
  if (!ev->done) {
    if (!on_progress.IsEmpty() && on_progress.IsFunction()) on_progress.Call({Napi::Number::New(env, ev->progress)});
    return;
  }
  if (!job->result || !job->progress_error.empty()) {
    job->result.reset();  // a model loaded despite a throwing onProgress is freed, not leaked
    const std::string& msg = job->error.empty() ? job->progress_error : job->error;
    job->deferred.Reject(Napi::Error::New(env, msg).Value());
    return;
  }
  AddonData* data = env.GetInstanceData<AddonData>();
  auto handle = std::make_shared<ModelHandle>();
  handle->model = std::shared_ptr<Model>(std::move(job->result));
  {
    std::lock_guard<std::mutex> lock(data->mu);
    auto& v = data->models;
    v.erase(std::remove_if(v.begin(), v.end(), [](const std::weak_ptr<ModelHandle>& w) { return w.expired(); }), v.end());
    v.push_back(handle);
  }
  Napi::Object obj = data->model_ctor.New({});
  NativeModel::Unwrap(obj)->handle = handle;
  job->deferred.Resolve(obj);
}

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "loadModel: dir must be a string");
  LoadOptions opt;
  if (info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    opt.device = str_opt(o, "device", "cpu");
    opt.backend.threads = int_opt(o, "threads", 0);
    opt.backend.device_index = int_opt(o, "deviceIndex", 0);
    opt.context_length = int_opt(o, "contextLength", 0);
    opt.kv_cache = str_opt(o, "kvCache", "auto");
    opt.max_batch = int_opt(o, "maxBatch", opt.max_batch);
    opt.max_queue = int_opt(o, "maxQueue", opt.max_queue);
  }
  auto* job = new LoadJob(env);
  job->dir = info[0].As<Napi::String>().Utf8Value();
  job->opt = opt;
  Napi::Function cb = info[2].IsFunction() ? info[2].As<Napi::Function>() : Napi::Function();
  Napi::Promise promise = job->deferred.Promise();
  job->tsfn = LoadTsfn::New(env, cb, "qwen-native:load", 0, 1, job, [](Napi::Env, void*, LoadJob* j) {
    j->thread.join();
    delete j;
  });
  job->thread = std::thread([job] {
    double last = -1;
    try {
      job->result = Model::load(job->dir, job->opt, [&](double f) {
        if (f - last >= 0.01 || f >= 1.0) {
          last = f;
          job->tsfn.NonBlockingCall(new LoadEvent{false, f});
        }
      });
    } catch (const std::exception& e) {
      job->error = e.what();
    }
    job->tsfn.BlockingCall(new LoadEvent{true, 1.0});
    job->tsfn.Release();
  });
  return promise;
}

Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), cuda_device_count());
}

Napi::Value CudaCompiled(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), cuda_compiled()); }

// cudaDriverInfo() -> { compiled, driverVersion, runtimeVersion, error, devices: [{ index, name,
// computeCapability: "9.0", memory }] }; versions as CUDA writes them (13000 = 13.0).
Napi::Value CudaDriverInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CudaInfo ci = cuda_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("compiled", cuda_compiled());
  o.Set("driverVersion", ci.driver_version);
  o.Set("runtimeVersion", ci.runtime_version);
  o.Set("error", ci.error.empty() ? env.Null() : Napi::String::New(env, ci.error));
  Napi::Array devs = Napi::Array::New(env, ci.devices.size());
  for (size_t i = 0; i < ci.devices.size(); i++) {
    const CudaDeviceInfo& d = ci.devices[i];
    Napi::Object x = Napi::Object::New(env);
    x.Set("index", double(i));
    x.Set("name", d.name);
    x.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
    x.Set("memory", double(d.memory));
    devs.Set(uint32_t(i), x);
  }
  o.Set("devices", devs);
  return o;
}

}  // namespace

// ---- NativeModel ----

Napi::Function NativeModel::Init(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {InstanceMethod<&NativeModel::Config>("config"),
                      InstanceMethod<&NativeModel::Backend>("backend"),
                      InstanceMethod<&NativeModel::ContextLength>("contextLength"),
                      InstanceMethod<&NativeModel::Memory>("memory"),
                      InstanceMethod<&NativeModel::CreateSequence>("createSequence"),
                      InstanceMethod<&NativeModel::BatchStats>("batchStats"),
                      InstanceMethod<&NativeModel::Dispose>("dispose")});
}

NativeModel::NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}

// Throws Napi::Error (node-addon-api's wrappers turn only those into JS exceptions; anything else
// escaping a method would terminate the process).
std::shared_ptr<Model> NativeModel::live(const char* what) {
  if (!handle) throw Napi::Error::New(Env(), std::string(what) + ": this NativeModel was not made by loadModel");
  try {
    return handle->get(what);
  } catch (const std::exception& e) {
    throw Napi::Error::New(Env(), e.what());
  }
}

Napi::Value NativeModel::Config(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto m = live("config");
  const ModelConfig& c = m->config();
  Napi::Object o = Napi::Object::New(env);
  o.Set("modelType", c.model_type);
  o.Set("vocabSize", c.vocab_size);
  o.Set("hiddenSize", c.hidden_size);
  o.Set("numLayers", c.num_layers);
  o.Set("numHeads", c.num_heads);
  o.Set("numKvHeads", c.num_kv_heads);
  o.Set("headDim", c.head_dim);
  o.Set("ffnSize", c.ffn_size);
  o.Set("rmsEps", c.rms_eps);
  o.Set("ropeBase", c.rope_base);
  o.Set("seqLength", c.seq_length);
  o.Set("useDynamicNtk", c.use_dynamic_ntk);
  o.Set("useLognAttn", c.use_logn_attn);
  o.Set("useCacheQuantization", c.use_cache_quantization);
  o.Set("tieWordEmbeddings", c.tie_word_embeddings);
  o.Set("maxPositionEmbeddings", c.max_position_embeddings);
  if (c.gptq.bits) {
    Napi::Object q = Napi::Object::New(env);
    q.Set("bits", c.gptq.bits);
    q.Set("groupSize", c.gptq.group_size);
    q.Set("descAct", c.gptq.desc_act);
    o.Set("gptq", q);
  } else {
    o.Set("gptq", env.Null());
  }
  return o;
}

Napi::Value NativeModel::Backend(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), live("backend")->backend().name());
}

Napi::Value NativeModel::ContextLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), live("contextLength")->context_length());
}

Napi::Value NativeModel::Memory(const Napi::CallbackInfo& info) {
  MemoryReport r = live("memory")->backend().memory();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("weights", double(r.weights));
  o.Set("kvCache", double(r.kv_cache));
  o.Set("kvCacheFree", double(r.kv_free));
  o.Set("workspace", double(r.workspace));
  o.Set("hostWeights", double(r.host_weights));
  return o;
}

// batchStats() -> { steps, items, maxItems, tokens, requests }: the engine's counters (zeros
// before the first generation). Never waits for a forward pass.
Napi::Value NativeModel::BatchStats(const Napi::CallbackInfo& info) {
  auto m = live("batchStats");
  EngineStats s;
  try {
    s = m->engine().stats();
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("steps", double(s.steps));
  o.Set("items", double(s.items));
  o.Set("maxItems", double(s.max_items));
  o.Set("tokens", double(s.tokens));
  o.Set("requests", double(s.requests));
  return o;
}

Napi::Value NativeModel::CreateSequence(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto m = live("createSequence");
  AddonData* data = env.GetInstanceData<AddonData>();
  Napi::Object obj = data->sequence_ctor.New({});
  NativeSequence* s = NativeSequence::Unwrap(obj);
  s->state->handle = handle;
  (void)m;  // checked live above; the cache itself is made by the sequence's first job
  return obj;
}

Napi::Value NativeModel::Dispose(const Napi::CallbackInfo& info) {
  if (handle) {
    handle->abort_all();
    {
      std::lock_guard<std::mutex> lock(handle->mu);
      handle->model.reset();  // freed now, or when the last running job returns
    }
    AddonData* data = info.Env().GetInstanceData<AddonData>();
    std::lock_guard<std::mutex> lock(data->mu);
    auto& v = data->models;
    v.erase(std::remove_if(v.begin(), v.end(), [&](const std::weak_ptr<ModelHandle>& w) { return w.expired() || w.lock() == handle; }), v.end());
  }
  return info.Env().Undefined();
}

}  // namespace qwen::napi

using namespace qwen::napi;

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->model_ctor = Napi::Persistent(NativeModel::Init(env));
  data->sequence_ctor = Napi::Persistent(NativeSequence::Init(env));
  env.SetInstanceData<AddonData>(data);
  // At environment teardown (process exit, worker exit) running generations stop at their next
  // token so their threads can be joined.
  env.AddCleanupHook([data] {
    std::lock_guard<std::mutex> lock(data->mu);
    for (auto& w : data->models)
      if (auto h = w.lock()) h->abort_all();
  });
  exports.Set("loadModel", Napi::Function::New<LoadModel>(env, "loadModel"));
  exports.Set("cudaDeviceCount", Napi::Function::New<CudaDeviceCount>(env, "cudaDeviceCount"));
  exports.Set("cudaCompiled", Napi::Function::New<CudaCompiled>(env, "cudaCompiled"));
  exports.Set("cudaDriverInfo", Napi::Function::New<CudaDriverInfo>(env, "cudaDriverInfo"));
  return exports;
}

NODE_API_MODULE(qwen_native, Init)
