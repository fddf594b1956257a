// The SwiGLU activation of Qwen's MLP: silu applies to w2's output, not w1's (SPEC 3).
#include <cmath>

#include "ops.h"

namespace qwen::cpu {

void swiglu(float* out, const float* a, const float* b, int64_t count) {
  for (int64_t i = 0; i < count; i++) out[i] = a[i] * (b[i] / (1.0f + std::exp(-b[i])));
}

}  // namespace qwen::cpu
