// rmsnorm and embedding lookup: row-wise, memory-bound, single-threaded (T x H is small).
#include <cmath>

#include "ops.h"

namespace qwen::cpu {

void embedding(float* out, const Tensor& wte, const int32_t* ids, int T) {
  const int64_t H = wte.dim(1);
  const size_t row_bytes = size_t(H) * dtype_size(wte.dtype);
  for (int t = 0; t < T; t++)
    to_f32(wte.dtype, static_cast<const uint8_t*>(wte.data) + size_t(ids[t]) * row_bytes, out + int64_t(t) * H, size_t(H));
}

void rmsnorm(float* out, const float* x, const float* w, int T, int H, float eps) {
  for (int t = 0; t < T; t++) {
    const float* xr = x + int64_t(t) * H;
    float* o = out + int64_t(t) * H;
    double ss = 0;
    for (int i = 0; i < H; i++) ss += double(xr[i]) * xr[i];
    float r = float(1.0 / std::sqrt(ss / H + double(eps)));
    for (int i = 0; i < H; i++) o[i] = xr[i] * r * w[i];
  }
}

}  // namespace qwen::cpu
