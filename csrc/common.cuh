// Device helpers shared by the kernel files: dtype dispatch, conversions, warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include "iwae_kernels.h"

namespace iwae {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type load_as_acc(const T* p, int64_t i) {
  return static_cast<typename Acc<T>::type>(p[i]);
}
template <> __device__ __forceinline__ float load_as_acc<__half>(const __half* p, int64_t i) { return __half2float(p[i]); }
template <> __device__ __forceinline__ float load_as_acc<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

// Half types convert through float explicitly: torch builds with __CUDA_NO_HALF_CONVERSIONS__ (and the bf16 one).
template <typename T, typename A> __device__ __forceinline__ void store_from_acc(T* p, int64_t i, A v) { p[i] = static_cast<T>(v); }
template <typename A> __device__ __forceinline__ void store_from_acc(__half* p, int64_t i, A v) {
  p[i] = __float2half_rn(static_cast<float>(v));
}
template <typename A> __device__ __forceinline__ void store_from_acc(__nv_bfloat16* p, int64_t i, A v) {
  p[i] = __float2bfloat16_rn(static_cast<float>(v));
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// The exp shift for a running max: -inf (every log-weight -inf) becomes 0 so exp() gives 0, not NaN.
template <typename A> __device__ __forceinline__ A shifted_max(A m) { return isinf(m) && m < 0 ? A(0) : m; }

// Runs the statement block with scalar_t bound to the C++ type of `dtype` (as AT_DISPATCH does, no torch).
#define IWAE_DISPATCH_DTYPE(dtype, ...)                                      \
  switch (dtype) {                                                         \
    case ::iwae::DType::Float32: { using scalar_t = float; __VA_ARGS__ }          \
    case ::iwae::DType::Float64: { using scalar_t = double; __VA_ARGS__ }         \
    case ::iwae::DType::Float16: { using scalar_t = __half; __VA_ARGS__ }         \
    case ::iwae::DType::BFloat16: { using scalar_t = __nv_bfloat16; __VA_ARGS__ } \
  }                                                                        \
  return cudaErrorInvalidValue;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks a grid-stride kernel launches at most; its blocks loop over the rest. 8 x 65535 (65535: the portable
// grid-dimension limit) is far more blocks than a GPU holds resident, so the cap bounds the launch, not the
// parallelism, and keeps the count within an unsigned grid dimension.
constexpr int64_t kMaxGridStrideBlocks = 65535 * 8;

}  // namespace iwae
