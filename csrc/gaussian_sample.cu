// Reparameterized diagonal-Gaussian sampling fused with the latent log-weight log p(z) - log q(z|x),
// forward and backward (iwae / stl / dreg encoder gradients). Same math as iwae_kernels/ops/gaussian_sample.py.
#include "common.cuh"
#include "philox.cuh"

namespace iwae {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kTileDim = 32;      // backward: D lanes per block
constexpr int kSampleLanes = 8;   // backward: samples walked in parallel per block

// eps from the caller, or Philox noise keyed on (seed, element index): the backward regenerates it.
template <typename T, typename A>
__device__ __forceinline__ A load_noise(const T* eps, int64_t index, const int64_t* seed) {
  if (eps != nullptr) return load_as_acc(eps, index);
  return static_cast<A>(philox_normal(static_cast<uint64_t>(__ldg(seed)), static_cast<uint64_t>(index)));
}

// One warp per (sample, example) row: lanes stride over D, the log-weight is a warp sum.
template <typename T>
__global__ void forward_kernel(GaussianSampleParams p) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= p.k * p.batch) return;
  const int64_t sample = row / p.batch, example = row % p.batch;
  const int64_t param_row = sample * p.param_sample_stride + example * p.dim;
  const int64_t prior_row = sample * p.prior_sample_stride + example * p.dim;
  const T* mu = static_cast<const T*>(p.mu);
  const T* logvar = static_cast<const T*>(p.logvar);
  const T* prior_mu = static_cast<const T*>(p.prior_mu);
  const T* prior_logvar = static_cast<const T*>(p.prior_logvar);
  A total = 0;
  for (int64_t d = lane; d < p.dim; d += 32) {
    const int64_t index = row * p.dim + d;
    const A lv = load_as_acc(logvar, param_row + d);
    const A eps = load_noise<T, A>(static_cast<const T*>(p.eps), index, p.seed);
    const A z = load_as_acc(mu, param_row + d) + exp(A(0.5) * lv) * eps;
    store_from_acc(static_cast<T*>(p.z), index, z);
    A log_p;
    if (prior_mu != nullptr) {
      const A plv = load_as_acc(prior_logvar, prior_row + d);
      const A diff = z - load_as_acc(prior_mu, prior_row + d);
      log_p = A(-0.5) * plv - A(0.5) * diff * diff * exp(-plv);
    } else {
      log_p = A(-0.5) * z * z;
    }
    total += log_p + A(0.5) * lv + A(0.5) * eps * eps;
  }
  total = warp_sum(total);
  if (lane == 0) static_cast<A*>(p.log_weight)[row] = total;
}

// Block (kTileDim, kSampleLanes) per (example, tile of D): lanes in y walk the k samples, and shared memory
// reduces their partial sums into the shared parameters' gradients.
template <typename T>
__global__ void backward_kernel(GaussianSampleParams p) {
  using A = typename Acc<T>::type;
  __shared__ A partial[4][kSampleLanes][kTileDim];
  __shared__ A weight_sum[kSampleLanes * kTileDim];
  const int tx = threadIdx.x, ty = threadIdx.y, thread = ty * kTileDim + tx;
  const int64_t example = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kTileDim + tx;
  const A* grad_a_ptr = static_cast<const A*>(p.grad_log_weight);

  // DReG needs wt_i = dJ/da_i / sum_j dJ/da_j: first the sum over samples, reduced across the block.
  A weight_total = 0;
  if (p.estimator == kDoublyReparameterized && grad_a_ptr != nullptr) {
    A s = 0;
    for (int64_t i = thread; i < p.k; i += kSampleLanes * kTileDim) s += grad_a_ptr[i * p.batch + example];
    weight_sum[thread] = s;
    __syncthreads();
    for (int stride = kSampleLanes * kTileDim / 2; stride > 0; stride /= 2) {
      if (thread < stride) weight_sum[thread] += weight_sum[thread + stride];
      __syncthreads();
    }
    weight_total = weight_sum[0];
  }

  const T* mu = static_cast<const T*>(p.mu);
  const T* logvar = static_cast<const T*>(p.logvar);
  const T* prior_mu = static_cast<const T*>(p.prior_mu);
  const T* prior_logvar = static_cast<const T*>(p.prior_logvar);
  const T* grad_z_ptr = static_cast<const T*>(p.grad_z);
  const bool has_prior = prior_mu != nullptr;
  const bool param_per_sample = p.param_sample_stride != 0, prior_per_sample = p.prior_sample_stride != 0;
  A sums[4] = {0, 0, 0, 0};  // dmu, dlogvar, dprior_mu, dprior_logvar for shared parameters
  if (d < p.dim) {
    for (int64_t i = ty; i < p.k; i += kSampleLanes) {
      const int64_t row = i * p.batch + example, index = row * p.dim + d;
      const int64_t param_index = i * p.param_sample_stride + example * p.dim + d;
      const int64_t prior_index = i * p.prior_sample_stride + example * p.dim + d;
      const A lv = load_as_acc(logvar, param_index);
      const A eps = load_noise<T, A>(static_cast<const T*>(p.eps), index, p.seed);
      const A sigma = exp(A(0.5) * lv);
      const A z = load_as_acc(mu, param_index) + sigma * eps;
      const A grad_a = grad_a_ptr != nullptr ? grad_a_ptr[row] : A(0);
      const A grad_z = grad_z_ptr != nullptr ? load_as_acc(grad_z_ptr, index) : A(0);
      A dlogp_dz = -z;
      if (has_prior) {
        const A plv = load_as_acc(prior_logvar, prior_index);
        const A precision = exp(-plv);
        const A diff = z - load_as_acc(prior_mu, prior_index);
        dlogp_dz = -diff * precision;
        const A grad_pm = grad_a * diff * precision;
        const A grad_plv = grad_a * (A(0.5) * diff * diff * precision - A(0.5));
        if (prior_per_sample) {
          store_from_acc(static_cast<T*>(p.grad_prior_mu), prior_index, grad_pm);
          store_from_acc(static_cast<T*>(p.grad_prior_logvar), prior_index, grad_plv);
        } else {
          sums[2] += grad_pm;
          sums[3] += grad_plv;
        }
      }
      A per_sample, grad_lv;
      if (p.estimator == kTotalDerivative) {
        // iwae / vae: the total derivative; the score term of -log q adds 0.5 * dJ/da to dlogvar.
        per_sample = grad_z + grad_a * dlogp_dz;
        grad_lv = per_sample * A(0.5) * sigma * eps + A(0.5) * grad_a;
      } else {
        // stl / dreg: path derivative only, d(-log q)/dz = eps / sigma, no score term.
        per_sample = grad_z + grad_a * (dlogp_dz + eps * exp(A(-0.5) * lv));
        if (p.estimator == kDoublyReparameterized) per_sample *= weight_total != A(0) ? grad_a / weight_total : A(0);
        grad_lv = per_sample * A(0.5) * sigma * eps;
      }
      if (param_per_sample) {
        store_from_acc(static_cast<T*>(p.grad_mu), param_index, per_sample);
        store_from_acc(static_cast<T*>(p.grad_logvar), param_index, grad_lv);
      } else {
        sums[0] += per_sample;
        sums[1] += grad_lv;
      }
    }
  }
  for (int j = 0; j < 4; ++j) partial[j][ty][tx] = sums[j];
  __syncthreads();
  if (ty == 0 && d < p.dim) {
    for (int j = 0; j < 4; ++j)
      for (int lane = 1; lane < kSampleLanes; ++lane) sums[j] += partial[j][lane][tx];
    const int64_t shared_index = example * p.dim + d;
    if (!param_per_sample) {
      store_from_acc(static_cast<T*>(p.grad_mu), shared_index, sums[0]);
      store_from_acc(static_cast<T*>(p.grad_logvar), shared_index, sums[1]);
    }
    if (has_prior && !prior_per_sample) {
      store_from_acc(static_cast<T*>(p.grad_prior_mu), shared_index, sums[2]);
      store_from_acc(static_cast<T*>(p.grad_prior_logvar), shared_index, sums[3]);
    }
  }
}

}  // namespace

cudaError_t gaussian_sample_forward(const GaussianSampleParams& params, cudaStream_t stream) {
  const int64_t blocks = ceil_div(params.k * params.batch, kWarpsPerBlock);
  IWAE_DISPATCH_DTYPE(params.dtype, {
    forward_kernel<scalar_t><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(params);
    return cudaGetLastError();
  })
}

cudaError_t gaussian_sample_backward(const GaussianSampleParams& params, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(params.batch), static_cast<unsigned>(ceil_div(params.dim, kTileDim)));
  const dim3 block(kTileDim, kSampleLanes);
  IWAE_DISPATCH_DTYPE(params.dtype, {
    backward_kernel<scalar_t><<<grid, block, 0, stream>>>(params);
    return cudaGetLastError();
  })
}

}  // namespace iwae
