// Python binding of the CUDA backend: checks each tensor (device, dtype, contiguity, with messages naming
// the argument), fills the plain params structs of iwae_kernels.h and launches on the current stream.
// The signatures match the launcher pairs the autograd Functions in iwae_kernels/ops call.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "iwae_kernels.h"

namespace {

using OptionalTensor = c10::optional<at::Tensor>;

iwae::DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return iwae::DType::Float32;
    case at::kDouble: return iwae::DType::Float64;
    case at::kHalf: return iwae::DType::Float16;
    case at::kBFloat16: return iwae::DType::BFloat16;
    default: TORCH_CHECK(false, name, ": expected float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
}

at::ScalarType accumulation_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), name, ": expected device ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
}

void check_typed(const at::Tensor& t, const char* name, const at::Tensor& like, at::ScalarType dtype) {
  check(t, name, like);
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

const void* optional_ptr(const OptionalTensor& t, const char* name, const at::Tensor& like, at::ScalarType dtype) {
  if (!t.has_value()) return nullptr;
  check_typed(*t, name, like, dtype);
  return t->data_ptr();
}

void* optional_mutable_ptr(const OptionalTensor& t, const char* name, const at::Tensor& like, at::ScalarType dtype) {
  return const_cast<void*>(optional_ptr(t, name, like, dtype));
}

void raise_on_error(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

int64_t sample_stride(const OptionalTensor& t) {
  return (!t.has_value() || t->dim() == 2) ? 0 : t->size(-2) * t->size(-1);
}

iwae::GaussianSampleParams sample_params(const at::Tensor& mu, const at::Tensor& logvar, const OptionalTensor& eps,
                                         const OptionalTensor& prior_mu, const OptionalTensor& prior_logvar,
                                         int64_t k, const at::Tensor& seed) {
  check(mu, "mu", mu);
  check_typed(logvar, "logvar", mu, mu.scalar_type());
  TORCH_CHECK(mu.dim() == 2 || mu.dim() == 3, "mu: expected [B, D] or [k, B, D]");
  iwae::GaussianSampleParams p{};
  p.mu = mu.data_ptr();
  p.logvar = logvar.data_ptr();
  p.eps = optional_ptr(eps, "eps", mu, mu.scalar_type());
  p.prior_mu = optional_ptr(prior_mu, "prior_mu", mu, mu.scalar_type());
  p.prior_logvar = optional_ptr(prior_logvar, "prior_logvar", mu, mu.scalar_type());
  TORCH_CHECK((p.prior_mu == nullptr) == (p.prior_logvar == nullptr), "prior_mu, prior_logvar: give both or neither");
  p.k = k;
  p.batch = mu.size(-2);
  p.dim = mu.size(-1);
  p.param_sample_stride = sample_stride(mu);
  p.prior_sample_stride = sample_stride(prior_mu);
  check_typed(seed, "seed", mu, at::kLong);
  TORCH_CHECK(seed.numel() == 1, "seed: expected one int64 element, got ", seed.numel());
  p.seed = seed.data_ptr<int64_t>();
  p.dtype = dtype_of(mu, "mu");
  return p;
}

void gaussian_sample_forward(const at::Tensor& mu, const at::Tensor& logvar, const OptionalTensor& eps,
                             const OptionalTensor& prior_mu, const OptionalTensor& prior_logvar, const at::Tensor& z,
                             const at::Tensor& log_weight, const at::Tensor& seed) {
  const c10::cuda::CUDAGuard guard(mu.device());
  auto p = sample_params(mu, logvar, eps, prior_mu, prior_logvar, z.size(0), seed);
  check_typed(z, "z", mu, mu.scalar_type());
  check_typed(log_weight, "log_weight", mu, accumulation_type(mu));
  p.z = z.data_ptr();
  p.log_weight = log_weight.data_ptr();
  raise_on_error(iwae::gaussian_sample_forward(p, c10::cuda::getCurrentCUDAStream()), "gaussian_sample_forward");
}

void gaussian_sample_backward(const at::Tensor& mu, const at::Tensor& logvar, const OptionalTensor& eps,
                              const OptionalTensor& prior_mu, const OptionalTensor& prior_logvar,
                              const OptionalTensor& grad_z, const OptionalTensor& grad_log_weight,
                              const at::Tensor& grad_mu, const at::Tensor& grad_logvar,
                              const OptionalTensor& grad_prior_mu, const OptionalTensor& grad_prior_logvar, int64_t k,
                              const at::Tensor& seed, int64_t estimator) {
  const c10::cuda::CUDAGuard guard(mu.device());
  auto p = sample_params(mu, logvar, eps, prior_mu, prior_logvar, k, seed);
  p.grad_z = optional_ptr(grad_z, "grad_z", mu, mu.scalar_type());
  p.grad_log_weight = optional_ptr(grad_log_weight, "grad_log_weight", mu, accumulation_type(mu));
  check_typed(grad_mu, "grad_mu", mu, mu.scalar_type());
  check_typed(grad_logvar, "grad_logvar", mu, mu.scalar_type());
  p.grad_mu = grad_mu.data_ptr();
  p.grad_logvar = grad_logvar.data_ptr();
  p.grad_prior_mu = optional_mutable_ptr(grad_prior_mu, "grad_prior_mu", mu, mu.scalar_type());
  p.grad_prior_logvar = optional_mutable_ptr(grad_prior_logvar, "grad_prior_logvar", mu, mu.scalar_type());
  TORCH_CHECK(estimator >= iwae::kTotalDerivative && estimator <= iwae::kLastEstimator,
              "estimator: expected a code from ", int(iwae::kTotalDerivative), " to ", int(iwae::kLastEstimator),
              " (contract.Estimator), got ", estimator);
  p.estimator = static_cast<int>(estimator);
  raise_on_error(iwae::gaussian_sample_backward(p, c10::cuda::getCurrentCUDAStream()), "gaussian_sample_backward");
}

iwae::LogLikelihoodParams likelihood_params(const at::Tensor& logits_or_mean, const OptionalTensor& logvar,
                                            const at::Tensor& x_acc, int64_t likelihood) {
  check(logits_or_mean, "logits_or_mean", logits_or_mean);
  TORCH_CHECK(logits_or_mean.dim() == 3, "logits_or_mean: expected [k, B, P]");
  TORCH_CHECK(likelihood == iwae::kBernoulli || likelihood == iwae::kGaussian, "likelihood: expected 0 (Bernoulli) or 1 (Gaussian)");
  TORCH_CHECK(likelihood == iwae::kBernoulli || logvar.has_value(), "logvar: the Gaussian likelihood needs logvar");
  iwae::LogLikelihoodParams p{};
  p.logits_or_mean = logits_or_mean.data_ptr();
  p.logvar = optional_ptr(logvar, "logvar", logits_or_mean, logits_or_mean.scalar_type());
  p.x = x_acc.data_ptr();
  p.k = logits_or_mean.size(0);
  p.batch = logits_or_mean.size(1);
  p.size = logits_or_mean.size(2);
  p.likelihood = static_cast<int>(likelihood);
  p.dtype = dtype_of(logits_or_mean, "logits_or_mean");
  return p;
}

// x may be any floating dtype: the kernels read it in the accumulation dtype ([B, P], small next to [k, B, P]).
at::Tensor x_in_accumulation_type(const at::Tensor& x, const at::Tensor& logits_or_mean) {
  check(x, "x", logits_or_mean);
  return x.to(accumulation_type(logits_or_mean)).contiguous();
}

void log_likelihood_forward(const at::Tensor& logits_or_mean, const OptionalTensor& logvar, const at::Tensor& x,
                            const at::Tensor& out, int64_t likelihood) {
  const c10::cuda::CUDAGuard guard(logits_or_mean.device());
  const at::Tensor x_acc = x_in_accumulation_type(x, logits_or_mean);
  auto p = likelihood_params(logits_or_mean, logvar, x_acc, likelihood);
  check_typed(out, "out", logits_or_mean, accumulation_type(logits_or_mean));
  p.out = out.data_ptr();
  raise_on_error(iwae::log_likelihood_forward(p, c10::cuda::getCurrentCUDAStream()), "log_likelihood_forward");
}

void log_likelihood_backward(const at::Tensor& logits_or_mean, const OptionalTensor& logvar, const at::Tensor& x,
                             const at::Tensor& grad_out, const at::Tensor& grad_logits_or_mean,
                             const OptionalTensor& grad_logvar, int64_t likelihood) {
  const c10::cuda::CUDAGuard guard(logits_or_mean.device());
  const at::Tensor x_acc = x_in_accumulation_type(x, logits_or_mean);
  auto p = likelihood_params(logits_or_mean, logvar, x_acc, likelihood);
  check_typed(grad_out, "grad_out", logits_or_mean, accumulation_type(logits_or_mean));
  check_typed(grad_logits_or_mean, "grad_logits_or_mean", logits_or_mean, logits_or_mean.scalar_type());
  p.grad_out = grad_out.data_ptr();
  p.grad_logits_or_mean = grad_logits_or_mean.data_ptr();
  p.grad_logvar = optional_mutable_ptr(grad_logvar, "grad_logvar", logits_or_mean, logits_or_mean.scalar_type());
  raise_on_error(iwae::log_likelihood_backward(p, c10::cuda::getCurrentCUDAStream()), "log_likelihood_backward");
}

iwae::LogSumExpParams logsumexp_params(const at::Tensor& log_w, const at::Tensor& state_max,
                                       const at::Tensor& state_sum) {
  check(log_w, "log_w", log_w);
  TORCH_CHECK(log_w.dim() == 2, "log_w: expected [k, B]");
  const auto acc = state_max.scalar_type();
  TORCH_CHECK(acc == at::kFloat || acc == at::kDouble, "running max: expected float32 or float64");
  check_typed(state_max, "running max", log_w, acc);
  check_typed(state_sum, "running sum", log_w, acc);
  iwae::LogSumExpParams p{};
  p.log_w = log_w.data_ptr();
  p.k = log_w.size(0);
  p.batch = log_w.size(1);
  p.dtype = dtype_of(log_w, "log_w");
  p.acc_dtype = dtype_of(state_max, "running max");
  return p;
}

void max_sum(const at::Tensor& log_w, const OptionalTensor& in_max, const OptionalTensor& in_sum,
             const at::Tensor& out_max, const at::Tensor& out_sum, const OptionalTensor& bound) {
  const c10::cuda::CUDAGuard guard(log_w.device());
  auto p = logsumexp_params(log_w, out_max, out_sum);
  TORCH_CHECK(in_max.has_value() == in_sum.has_value(), "in_max, in_sum: give both or neither");
  p.in_max = optional_ptr(in_max, "in_max", log_w, out_max.scalar_type());
  p.in_sum = optional_ptr(in_sum, "in_sum", log_w, out_max.scalar_type());
  p.state_max = out_max.data_ptr();
  p.state_sum = out_sum.data_ptr();
  p.bound = optional_mutable_ptr(bound, "bound", log_w, out_max.scalar_type());
  raise_on_error(iwae::max_sum(p, c10::cuda::getCurrentCUDAStream()), "max_sum");
}

void normalized_weights(const at::Tensor& log_w, const at::Tensor& running_max, const at::Tensor& running_sum,
                        const OptionalTensor& scale, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(log_w.device());
  auto p = logsumexp_params(log_w, running_max, running_sum);
  p.state_max = running_max.data_ptr();
  p.state_sum = running_sum.data_ptr();
  p.scale = optional_ptr(scale, "scale", log_w, running_max.scalar_type());
  check(out, "out", log_w);
  TORCH_CHECK(out.scalar_type() == running_max.scalar_type() || out.scalar_type() == log_w.scalar_type(),
              "out: expected the dtype of log_w or of the running state");
  p.out_dtype = dtype_of(out, "out");
  p.weights = out.data_ptr();
  raise_on_error(iwae::normalized_weights(p, c10::cuda::getCurrentCUDAStream()), "normalized_weights");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "iwae_kernels CUDA backend: fused IWAE kernels (see iwae_kernels/cuda_backend.py)";
  m.def("gaussian_sample_forward", &gaussian_sample_forward, "z and the latent log-weight (fills z, log_weight)");
  m.def("gaussian_sample_backward", &gaussian_sample_backward, "encoder and prior gradients for an estimator");
  m.def("log_likelihood_forward", &log_likelihood_forward, "Bernoulli (0) or Gaussian (1) log p(x|z) [k, B]");
  m.def("log_likelihood_backward", &log_likelihood_backward, "gradient of the log-likelihood");
  m.def("max_sum", &max_sum, "fold log_w [k, B] into the (max, sum) state, optionally writing L_k");
  m.def("normalized_weights", &normalized_weights, "(scaled) normalized weights from the (max, sum) state");
}
