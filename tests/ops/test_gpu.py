"""Compiled Triton on a real GPU at realistic sizes (the interpreter tests use tiny shapes).

Every other test file also runs its triton cases on the GPU when one is present (see conftest.backend_device);
this file adds the shapes that are too slow for the interpreter. Skipped without CUDA.
"""

import pytest
import torch

import iwae_kernels as ik

from helpers import COMPILED_BACKENDS, backend_device
from helpers import kernel_noise
from naive import naive_iwae_bound

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("estimator", ["iwae", "vae", "stl", "dreg"])
@pytest.mark.parametrize("k, batch", [pytest.param(k, batch, id=f"k{k}-B{batch}")
                                      for k, batch in [(50, 128), (1, 1024), (5000, 20)]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_loss_matches_reference_at_paper_sizes(backend, k, batch, estimator, dtype):
    backend_device(backend)
    dim, obs = 50, 784
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((batch, obs), 0.3), generator=gen)
    mu, logvar = torch.randn(batch, dim, generator=gen), 0.3 * torch.randn(batch, dim, generator=gen)
    weight = torch.randn(dim, obs, generator=gen) / dim**0.5
    eps = torch.randn(k, batch, dim, generator=gen)

    def run(backend, device, run_dtype):
        leaves = [t.to(device=device, dtype=run_dtype).requires_grad_() for t in (mu, logvar, weight)]
        z, latent = ik.gaussian_sample(leaves[0], leaves[1], k, eps=eps.to(device, run_dtype), estimator=estimator,
                                       backend=backend)
        log_w = ik.bernoulli_log_likelihood(z @ leaves[2], x.to(device, run_dtype), backend=backend) + latent
        bound = log_w.mean(0) if estimator == "vae" else ik.iwae_bound(log_w, backend=backend)
        return [bound, *torch.autograd.grad(-bound.mean(), leaves)]

    oracle = run("torch", "cpu", torch.float64)
    torch_low = run("torch", "cuda", dtype)
    actual = run(backend, "cuda", dtype)
    for got, ref, want in zip(actual, torch_low, oracle):
        got_err = (got.double().cpu() - want).abs().max().item()
        ref_err = (ref.double().cpu() - want).abs().max().item()
        assert got_err <= 2 * ref_err + 1e-5 * (want.abs().max().item() + 1), (got_err, ref_err)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_streaming_bound_at_k5000_matches_full(backend):
    backend_device(backend)
    log_w = 50 * torch.randn(5000, 128, device="cuda", dtype=torch.float64) - 100
    acc = ik.StreamingIWAEBound(128, device="cuda", dtype=torch.float64, backend=backend)
    for start in range(0, 5000, 512):
        acc.update(log_w[start : start + 512].float())
    torch.testing.assert_close(acc.bound(), naive_iwae_bound(log_w.float().double()))


def test_cuda_and_triton_draw_the_same_noise():
    """csrc/philox.cuh reproduces Triton's tl.randn stream, so switching backends keeps the samples."""
    backend_device("cuda")
    shape = (7, 33, 50)
    triton_noise = kernel_noise("triton", shape, 1234, torch.float32, torch.device("cuda"))
    cuda_noise = kernel_noise("cuda", shape, 1234, torch.float32, torch.device("cuda"))
    torch.testing.assert_close(cuda_noise, triton_noise, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_cuda_graph_replays_draw_fresh_noise(backend):
    """The kernels read their seed from the device, so a captured graph draws new noise on every replay."""
    backend_device(backend)
    mu, logvar = torch.zeros(20, 50, device="cuda"), torch.zeros(20, 50, device="cuda")
    ik.gaussian_sample(mu, logvar, 8, backend=backend)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z, _ = ik.gaussian_sample(mu, logvar, 8, backend=backend)
    draws = []
    for _ in range(2):
        graph.replay()
        draws.append(z.clone())
    assert not torch.equal(draws[0], draws[1])
    for draw in draws:  # standard normal: 8000 draws each
        assert abs(draw.mean().item()) < 0.1 and abs(draw.std().item() - 1) < 0.1
