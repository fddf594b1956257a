// Linked instead of the CUDA backend when the addon was built without nvcc.
#include "../core/backend.h"
#include "../core/error.h"

namespace qwen {

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
CudaInfo cuda_info() {
  CudaInfo info;
  info.error = "this build of qwen-native has no CUDA backend (compiled without nvcc)";
  return info;
}

std::unique_ptr<Backend> make_cuda_backend(const ModelConfig&, const ModelWeights&, const BackendOptions&,
                                           const ProgressFn&) {
  throw Error("device \"cuda\": this build of qwen-native has no CUDA backend (it was compiled without nvcc); "
              "rebuild with the CUDA toolkit installed (npm rebuild qwen-native) or use device: \"cpu\"");
}

}  // namespace qwen
