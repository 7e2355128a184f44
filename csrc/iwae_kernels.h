// Plain parameter structs and launchers for the iwae_kernels CUDA backend.
// No torch headers: the .cu files compile with nvcc alone; binding.cpp converts tensors to these structs
// (the FlashAttention split). Every pointer is to a contiguous buffer; "acc" buffers hold float for
// float/half/bfloat16 inputs and double for double inputs.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace iwae {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Estimator and likelihood codes, as in iwae_kernels/contract.py (Estimator, Likelihood).
enum Estimator : int {
  kTotalDerivative = 0,
  kStickingTheLanding = 1,
  kDoublyReparameterized = 2,
  kLastEstimator = kDoublyReparameterized,
};
enum Likelihood : int { kBernoulli = 0, kGaussian = 1 };

struct GaussianSampleParams {
  // Inputs, dtype `dtype`. mu/logvar are [B, D] (param_sample_stride 0) or [k, B, D] (stride B*D); the same
  // for the prior. eps is [k, B, D], or null to draw Philox noise from (seed, element index).
  const void* mu;
  const void* logvar;
  const void* eps;
  const void* prior_mu;      // null: standard-normal prior
  const void* prior_logvar;
  // Forward outputs: z [k, B, D] (dtype), log_weight [k, B] (acc).
  void* z;
  void* log_weight;
  // Backward inputs (null when no gradient arrived): grad_z [k, B, D] (dtype), grad_log_weight [k, B] (acc).
  const void* grad_z;
  const void* grad_log_weight;
  // Backward outputs, shaped like their parameter (dtype).
  void* grad_mu;
  void* grad_logvar;
  void* grad_prior_mu;
  void* grad_prior_logvar;
  int64_t k, batch, dim;
  int64_t param_sample_stride, prior_sample_stride;
  const int64_t* seed;  // [1] on the device: read in the kernel, so CUDA-graph replays see a fresh seed
  int estimator;
  DType dtype;
};

struct LogLikelihoodParams {
  // (logits_or_mean, logvar): (logits, null) for Bernoulli, (mean, logvar) for Gaussian, [k, B, P] in `dtype`.
  // x: [B, P] in the acc dtype. out and grad_out: [k, B] acc. grads: like the parameters they are of.
  const void* logits_or_mean;
  const void* logvar;
  const void* x;
  void* out;
  const void* grad_out;
  void* grad_logits_or_mean;
  void* grad_logvar;
  int64_t k, batch, size;
  int likelihood;  // a Likelihood
  DType dtype;
};

struct LogSumExpParams {
  // log_w [k, B] in `dtype`; the (max, sum) state and bound are [B] acc (float or double: `acc_dtype`).
  const void* log_w;
  const void* in_max;   // null: start from (-inf, 0)
  const void* in_sum;
  // The (max, sum) state [B] acc: written by max_sum, read by normalized_weights.
  void* state_max;
  void* state_sum;
  void* bound;          // null: not written
  // Normalized weights: out [k, B] in `out_dtype`, times scale [B] (acc) when not null.
  const void* scale;
  void* weights;
  int64_t k, batch;
  DType dtype, acc_dtype, out_dtype;
};

// Each returns the launch's cudaError_t (cudaSuccess when all went well).
cudaError_t gaussian_sample_forward(const GaussianSampleParams& params, cudaStream_t stream);
cudaError_t gaussian_sample_backward(const GaussianSampleParams& params, cudaStream_t stream);
cudaError_t log_likelihood_forward(const LogLikelihoodParams& params, cudaStream_t stream);
cudaError_t log_likelihood_backward(const LogLikelihoodParams& params, cudaStream_t stream);
cudaError_t max_sum(const LogSumExpParams& params, cudaStream_t stream);
cudaError_t normalized_weights(const LogSumExpParams& params, cudaStream_t stream);

}  // namespace iwae
