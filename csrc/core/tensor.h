// A typed view on bytes owned elsewhere (a memory-mapped checkpoint, or a backend's buffer).
// Shapes follow the checkpoint: torch nn.Linear weights are [out, in], row-major.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace qwen {

enum class DType : uint8_t { F32, BF16, F16, I32 };

inline size_t dtype_size(DType t) { return t == DType::BF16 || t == DType::F16 ? 2 : 4; }
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
  }
  return "?";
}

struct Tensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // nullptr: absent (an optional bias, say)

  bool empty() const { return data == nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape.at(size_t(i)); }
};

std::string shape_str(const std::vector<int64_t>& shape);

// Scalar conversions (round to nearest even where narrowing).
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);

// Converts n elements of `src` (F32/BF16/F16) to fp32.
void to_f32(DType t, const void* src, float* dst, size_t n);

}  // namespace qwen
