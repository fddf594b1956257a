// cuda_info(): the driver and devices as the CUDA runtime sees them, for `qwen-native doctor`
// and for load errors. Never throws: a missing or too-old driver is an answer, not a failure.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "../core/backend.h"
#include "common.cuh"

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

namespace cuda {

bool pdl_enabled() {
  static const bool off = [] {
    const char* e = std::getenv("QWEN_CUDA_PDL");
    return e && std::strcmp(e, "0") == 0;
  }();
  if (off) return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  // 0 unknown, 1 on, 2 off; racing first calls compute the same answer
  static std::atomic<int> known[64];
  if (dev < 0 || dev >= 64) return false;
  int k = known[dev].load(std::memory_order_relaxed);
  if (k == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      major = 0;
    }
    k = major >= 9 ? 1 : 2;
    known[dev].store(k, std::memory_order_relaxed);
  }
  return k == 1;
}

}  // namespace cuda

}  // namespace qwen
