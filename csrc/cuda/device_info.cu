// cuda_info(): the driver and devices as the CUDA runtime sees them, for `qwen-native doctor`
// and for load errors. Never throws: a missing or too-old driver is an answer, not a failure.
#include <cuda_runtime.h>

#include "../core/backend.h"

namespace qwen {

CudaInfo cuda_info() {
  CudaInfo info;
  info.runtime_version = CUDART_VERSION;
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    info.error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    return info;
  }
  for (int i = 0; i < n; i++) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    info.devices.push_back(CudaDeviceInfo{p.name, p.major, p.minor, p.totalGlobalMem});
  }
  return info;
}

}  // namespace qwen
