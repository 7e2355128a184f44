// Philox4x32-10 normal noise keyed on (seed, element index), written to draw the same stream as Triton's
// tl.randn(seed, offset): counter (offset lo, offset hi, 0, 0), key (seed lo, seed hi), Box-Muller on the
// first two words. No curand needed, so the kernels compile against a bare nvcc.
#pragma once

#include <cstdint>

namespace iwae {

__device__ __forceinline__ float philox_uniform(uint32_t bits) {
  int32_t value = static_cast<int32_t>(bits);
  value = value < 0 ? ~value : value;
  return static_cast<float>(value) * 4.6566127342e-10f;  // largest scale with INT_MAX * scale < 1
}

__device__ __forceinline__ float philox_normal(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t next0 = __umulhi(0xCD9E8D57u, c2) ^ c1 ^ k0;
    const uint32_t next2 = __umulhi(0xD2511F53u, c0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * c2;
    c3 = 0xD2511F53u * c0;
    c0 = next0;
    c2 = next2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const float u1 = fmaxf(1.0e-7f, philox_uniform(c0));
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * philox_uniform(c1));
}

}  // namespace iwae
