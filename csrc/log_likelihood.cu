// Bernoulli and diagonal-Gaussian log-likelihoods reduced over P, forward and backward.
// Same math as iwae_kernels/ops/log_likelihood.py; row r of [k * B] reads data row r % B of x.
#include <algorithm>

#include "common.cuh"

namespace iwae {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 256;
constexpr double kHalfLog2Pi = 0.91893853320467274178;

// One warp per (sample, example) row: lanes stride over P, a warp sum gives log p(x|z).
template <typename T>
__global__ void forward_kernel(LogLikelihoodParams p) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= p.k * p.batch) return;
  const T* logits_or_mean = static_cast<const T*>(p.logits_or_mean);
  const T* logvars = static_cast<const T*>(p.logvar);
  const A* x = static_cast<const A*>(p.x) + (row % p.batch) * p.size;
  A total = 0;
  for (int64_t j = lane; j < p.size; j += 32) {
    const int64_t index = row * p.size + j;
    const A y = load_as_acc(logits_or_mean, index);
    if (p.likelihood == kBernoulli) {
      // x y - softplus(y), softplus(y) = max(y, 0) + log1p(exp(-|y|)): never log(sigmoid), it underflows.
      total += x[j] * y - (y > A(0) ? y : A(0)) - log1p(exp(-fabs(y)));
    } else {
      const A logvar = load_as_acc(logvars, index);
      const A diff = x[j] - y;
      total += A(-kHalfLog2Pi) - A(0.5) * logvar - A(0.5) * diff * diff * exp(-logvar);
    }
  }
  total = warp_sum(total);
  if (lane == 0) static_cast<A*>(p.out)[row] = total;
}

// Elementwise over [k, B, P]: the gradient scaled by the row's upstream g * wt_i.
template <typename T>
__global__ void backward_kernel(LogLikelihoodParams p) {
  using A = typename Acc<T>::type;
  const int64_t total = p.k * p.batch * p.size;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index / p.size, j = index % p.size;
    const A scale = static_cast<const A*>(p.grad_out)[row];
    const A x = static_cast<const A*>(p.x)[(row % p.batch) * p.size + j];
    const A y = load_as_acc(static_cast<const T*>(p.logits_or_mean), index);
    if (p.likelihood == kBernoulli) {
      store_from_acc(static_cast<T*>(p.grad_logits_or_mean), index, scale * (x - A(1) / (A(1) + exp(-y))));
    } else {
      const A logvar = load_as_acc(static_cast<const T*>(p.logvar), index);
      const A diff = x - y, precision = exp(-logvar);
      store_from_acc(static_cast<T*>(p.grad_logits_or_mean), index, scale * diff * precision);
      store_from_acc(static_cast<T*>(p.grad_logvar), index, scale * (A(0.5) * diff * diff * precision - A(0.5)));
    }
  }
}

}  // namespace

cudaError_t log_likelihood_forward(const LogLikelihoodParams& params, cudaStream_t stream) {
  const int64_t blocks = ceil_div(params.k * params.batch, kWarpsPerBlock);
  IWAE_DISPATCH_DTYPE(params.dtype, {
    forward_kernel<scalar_t><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(params);
    return cudaGetLastError();
  })
}

cudaError_t log_likelihood_backward(const LogLikelihoodParams& params, cudaStream_t stream) {
  const int64_t blocks =
      std::min<int64_t>(ceil_div(params.k * params.batch * params.size, kThreads), kMaxGridStrideBlocks);
  IWAE_DISPATCH_DTYPE(params.dtype, {
    backward_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(params);
    return cudaGetLastError();
  })
}

}  // namespace iwae
