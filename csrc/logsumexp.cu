// Stable logsumexp over the k samples: the online (max, sum) fold, L_k, and the normalized weights.
// Same math as iwae_kernels/ops/logsumexp.py.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace iwae {
namespace {

constexpr int kThreads = 256;

// One thread per example walks all k samples; neighbouring threads read neighbouring examples (coalesced).
template <typename T, typename A>
__global__ void max_sum_kernel(LogSumExpParams p, A log_k) {
  const int64_t example = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (example >= p.batch) return;
  const T* log_w = static_cast<const T*>(p.log_w);
  A running_max = p.in_max != nullptr ? static_cast<const A*>(p.in_max)[example] : A(-INFINITY);
  A running_sum = p.in_sum != nullptr ? static_cast<const A*>(p.in_sum)[example] : A(0);
  for (int64_t i = 0; i < p.k; ++i) {
    const A value = load_as_acc(log_w, i * p.batch + example);
    const A new_max = value > running_max ? value : running_max;
    const A shift = shifted_max(new_max);
    running_sum = running_sum * exp(running_max - shift) + exp(value - shift);
    running_max = new_max;
  }
  static_cast<A*>(p.state_max)[example] = running_max;
  static_cast<A*>(p.state_sum)[example] = running_sum;
  if (p.bound != nullptr) static_cast<A*>(p.bound)[example] = shifted_max(running_max) + log(running_sum) - log_k;
}

template <typename T, typename A, typename O>
__global__ void weights_kernel(LogSumExpParams p) {
  const int64_t total = p.k * p.batch;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t example = index % p.batch;
    const A running_sum = static_cast<const A*>(p.state_sum)[example];
    A weight = 0;
    if (running_sum > A(0)) {
      const A shift = shifted_max(static_cast<const A*>(p.state_max)[example]);
      weight = exp(load_as_acc(static_cast<const T*>(p.log_w), index) - shift) / running_sum;
    }
    if (p.scale != nullptr) weight *= static_cast<const A*>(p.scale)[example];
    store_from_acc(static_cast<O*>(p.weights), index, weight);
  }
}

template <typename T, typename A>
cudaError_t launch_weights(const LogSumExpParams& p, cudaStream_t stream) {
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>(ceil_div(p.k * p.batch, kThreads), kMaxGridStrideBlocks));
  if (p.out_dtype == p.acc_dtype) {
    weights_kernel<T, A, A><<<blocks, kThreads, 0, stream>>>(p);
  } else {
    weights_kernel<T, A, T><<<blocks, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t max_sum(const LogSumExpParams& params, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(ceil_div(params.batch, kThreads));
  const double log_k = std::log(static_cast<double>(params.k));
  IWAE_DISPATCH_DTYPE(params.dtype, {
    if (params.acc_dtype == DType::Float64) {
      max_sum_kernel<scalar_t, double><<<blocks, kThreads, 0, stream>>>(params, log_k);
    } else {
      max_sum_kernel<scalar_t, float><<<blocks, kThreads, 0, stream>>>(params, static_cast<float>(log_k));
    }
    return cudaGetLastError();
  })
}

// Reads the (max, sum) state that max_sum wrote.
cudaError_t normalized_weights(const LogSumExpParams& params, cudaStream_t stream) {
  IWAE_DISPATCH_DTYPE(params.dtype, {
    return params.acc_dtype == DType::Float64 ? launch_weights<scalar_t, double>(params, stream)
                                              : launch_weights<scalar_t, float>(params, stream);
  })
}

}  // namespace iwae
