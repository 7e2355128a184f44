"""What the tests share: dtype-aware comparisons against the float64 oracles, the compiled backends' in-kernel noise,
the backend/device choice and small training checks. The oracles themselves (torch.distributions and naive autograd,
written from docs/MATH.md, independent of the library's torch backend) are the naive references of
benchmarks/naive.py, which the tests import as ``naive`` (pytest puts benchmarks/ on sys.path, pyproject.toml)."""

from pathlib import Path

import pytest
import torch

import iwae_kernels

from naive import naive_iwae_bound

# The repository root (tests/ is one level down): for the examples, benchmarks and scripts the tests run.
REPO = Path(__file__).resolve().parent.parent

LOW_PRECISION = (torch.float16, torch.bfloat16)


def kernel_noise(backend, shape, seed, dtype, device):
    """The eps [k, B, D] = ``shape`` that a compiled backend's ("triton" or "cuda") in-kernel sampling draws for
    ``seed`` (Philox keyed on element index): the z its sampling kernel gives at mu = logvar = 0."""
    from iwae_kernels import cuda_backend
    from iwae_kernels.ops.gaussian_sample import TRITON_LAUNCHERS, KernelGaussianSampleFunction

    launchers = TRITON_LAUNCHERS if backend == "triton" else cuda_backend.launchers()["sample"]
    zeros = torch.zeros(shape[-2:], dtype=dtype, device=device)
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    z, _ = KernelGaussianSampleFunction.apply(zeros, zeros, None, None, None, shape[0], seed, "iwae", launchers)
    return z


def tolerance(dtype):
    return {torch.float64: (1e-9, 1e-9), torch.float32: (2e-5, 2e-4)}.get(dtype, (2e-2, 2e-2))


def assert_close(actual, expected, dtype=None):
    """Compare in float64 with the tolerance of ``dtype`` (default: actual's dtype)."""
    rtol, atol = tolerance(dtype or actual.dtype)
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def assert_close_as_torch(actual, torch_low, oracle, slack=2.0):
    """FlashAttention-style check for half precision: the kernel's error against the float64 oracle is at
    most ``slack`` times the torch backend's own error in the same dtype, plus one rounding unit of the
    output's dtype at the tensor's scale (float32 outputs, e.g. log-weights, get float32's unit)."""
    actual_err = (actual.double().cpu() - oracle.double().cpu()).abs().max().item()
    torch_err = (torch_low.double().cpu() - oracle.double().cpu()).abs().max().item()
    unit = torch.finfo(actual.dtype).eps * (oracle.abs().max().item() + 1.0)
    assert actual_err <= slack * torch_err + unit, f"kernel error {actual_err:.3g} vs torch {torch_err:.3g}, unit {unit:.3g}"


def assert_log_weights_match(model, inputs, k, eps, expected, backend, device):
    """``model.log_weights(inputs, k, eps=eps)`` on ``device`` equals the float64 oracle ``expected`` [k, B] (built
    on the CPU from the model's own layers), and so do the parameter gradients of -sum L_k."""
    params = list(model.parameters())
    want = torch.autograd.grad(-naive_iwae_bound(expected).sum(), params)
    model.to(device)
    log_w = model.log_weights(inputs.to(device), k, eps=eps.to(device))
    assert_close(log_w, expected)
    for got, wanted in zip(torch.autograd.grad(-iwae_kernels.iwae_bound(log_w, backend=backend).sum(), params), want):
        assert_close(got, wanted)


def peak_bytes(fn, device):
    """Peak bytes of one fn() call: the GPU allocator's peak, or on a CPU torch.profiler's memory accounting (the
    benchmarks' measurement, benchmarks/common.py)."""
    from common import peak_memory_mib

    return peak_memory_mib(fn, device) * 2**20


def train_and_check_loss_drops(model, inputs, k, steps, drop, beta=None):
    """Adam at lr 1e-2 on ``model.loss(inputs, k)`` for ``steps`` steps (``beta(step)`` anneals if given): the
    loss (in eval mode, no annealing) ends at least ``drop`` nats below where it started."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(inputs, k=k).item()
    for step in range(steps):
        optimizer.zero_grad()
        (model.loss(inputs, k=k) if beta is None else model.loss(inputs, k=k, beta=beta(step))).backward()
        optimizer.step()
    model.eval()
    last = model.loss(inputs, k=k).item()
    assert last < first - drop, f"loss went from {first:.3f} to {last:.3f}, expected a drop of {drop}"


COMPILED_BACKENDS = ["triton", "cuda"]


def backend_device(name):
    """Where backend ``name`` runs in this session, or a skip that says why it cannot.

    torch: the CPU. triton: the GPU, or the CPU under TRITON_INTERPRET=1. cuda: the GPU with the extension.
    """
    from iwae_kernels import backend, cuda_backend

    if name == "torch":
        return torch.device("cpu")
    if name == "triton":
        if not backend.triton_available():
            pytest.skip("triton is not installed")
        if torch.cuda.is_available() and not backend.triton_interpreting():
            return torch.device("cuda")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip("the cuda backend needs a CUDA GPU")
    if not cuda_backend.available():
        pytest.skip(cuda_backend.HOW_TO_BUILD)
    return torch.device("cuda")
