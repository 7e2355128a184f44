"""The model layer: architectures, the 2-layer log-weight against torch.distributions, streaming L_k in
bounded memory, active units."""

import os
import subprocess
import sys

import pytest
import torch

import iwae_kernels as ik
from iwae_kernels.models import ConvIWAE, active_units, paper_model

from helpers import REPO, assert_close, backend_device, peak_bytes
from naive import naive_iwae_bound, naive_log_weights, naive_paper_log_weights


def test_paper_architectures():
    one, two = paper_model(1), paper_model(2)
    linear_shapes = lambda net: [tuple(m.weight.shape) for m in net if isinstance(m, torch.nn.Linear)]
    assert linear_shapes(one.encoders[0]) == [(200, 784), (200, 200), (100, 200)]  # 2 x 50 (mean, logvar)
    assert linear_shapes(one.decoder) == [(200, 50), (200, 200), (784, 200)]
    assert linear_shapes(two.encoders[1]) == [(100, 100), (100, 100), (100, 100)]  # h1 (100) -> h2 (2 x 50)
    assert linear_shapes(two.priors[0]) == [(100, 50), (100, 100), (200, 100)]     # h2 -> p(h1|h2) (2 x 100)
    assert linear_shapes(two.decoder) == [(200, 100), (200, 200), (784, 200)]
    with pytest.raises(ValueError, match="stochastic_layers: expected 1 or 2"):
        paper_model(3)


def small_model(layers, seed=0):
    torch.manual_seed(seed)
    sizes = {1: dict(hidden=((7,),), latent=(3,)), 2: dict(hidden=((7,), (5,)), latent=(4, 2))}[layers]
    return paper_model(layers, x_dim=6, backend="torch", **sizes).double()


@pytest.mark.parametrize("fused_head", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
def test_log_weights_and_gradient_match_naive(layers, fused_head):
    model = small_model(layers)
    model.fused_head = fused_head
    k, batch = 5, 4
    x = torch.bernoulli(torch.full((batch, 6), 0.5, dtype=torch.float64))
    noise = [torch.randn(k, batch, size, dtype=torch.float64) for size in model.latent]
    log_w = model.log_weights(x, k, "iwae", noise)
    expected = naive_paper_log_weights(model, x, noise)
    assert_close(log_w, expected)
    params = list(model.parameters())
    got = torch.autograd.grad(-ik.iwae_bound(log_w).mean(), params)
    want = torch.autograd.grad(-naive_iwae_bound(expected).mean(), params)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("estimator", ik.ESTIMATORS)
def test_every_estimator_trains(layers, estimator):
    model = small_model(layers)
    x = torch.bernoulli(torch.full((8, 6), 0.5, dtype=torch.float64))
    options = {"miwae": {"groups": 2}, "piwae": {"groups": 2}, "ciwae": {"ciwae_beta": 0.5},
               "renyi": {"renyi_alpha": 0.5}}.get(estimator, {})
    loss = model.loss(x, k=4, estimator=estimator, **options)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert loss.shape == () and torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("estimator", ["iwae", "stl", "dreg"])
@pytest.mark.parametrize("layers", [1, 2])
def test_loss_is_minus_the_mean_bound(layers, estimator, backend):
    """``loss`` runs the fused bernoulli_iwae_loss; it equals -bound().mean(), in value and every gradient."""
    device = backend_device(backend)
    model = small_model(layers).to(device)
    model.backend = backend
    k, batch = 5, 4
    x = torch.bernoulli(torch.full((batch, 6), 0.5, dtype=torch.float64)).to(device)
    noise = [torch.randn(k, batch, size, dtype=torch.float64).to(device) for size in model.latent]
    params = list(model.parameters())
    loss = model.loss(x, k, estimator, noise)
    expected = -model.bound(x, k, estimator, noise).mean()
    assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        assert_close(got, want)


def test_one_layer_loss_is_iwae_loss():
    model = small_model(1)
    x = torch.bernoulli(torch.full((8, 6), 0.5, dtype=torch.float64))
    torch.manual_seed(5)
    from_model = model.loss(x, k=6)
    torch.manual_seed(5)
    mu, logvar = model.encode(x)
    assert_close(from_model, ik.iwae_loss(x, mu, logvar, model.decoder, k=6))


@pytest.mark.parametrize("layers", [1, 2])
def test_streaming_log_likelihood_folds_every_chunk(layers, monkeypatch):
    """log_likelihood(k, chunk) = L_k of all the log-weights its chunks produced; no chunk exceeds ``chunk``."""
    model = small_model(layers)
    x = torch.bernoulli(torch.full((3, 6), 0.5, dtype=torch.float64))
    chunks = []
    original = model.log_weights

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        chunks.append(out)
        return out

    monkeypatch.setattr(model, "log_weights", recording)
    result = model.log_likelihood(x, k=107, chunk=20)
    assert [c.shape[0] for c in chunks] == [20] * 5 + [7]
    torch.testing.assert_close(result, ik.iwae_bound(torch.cat(chunks)), rtol=1e-12, atol=1e-12)


def eval_peak_bytes(model, x, k, budget):
    """Peak bytes of log_likelihood(x, k) with the budget's default chunk (``helpers.peak_bytes``)."""
    return peak_bytes(lambda: model.log_likelihood(x, k=k, memory_budget=budget), x.device)


@pytest.mark.parametrize("layers, backend, fused_mlp",
                         [(1, "torch", False), (2, "torch", False), (1, "triton", True), (2, "triton", True)])
def test_default_chunk_fills_the_memory_budget_and_no_more(layers, backend, fused_mlp):
    """log_likelihood's default chunk (eval_chunk, from the bytes it measures) peaks within memory_budget at any
    k, measured by another instrument (torch.profiler on a CPU, the allocator on a GPU); and uses a fair share of
    it (COUNTED_SHARE leaves the rest for workspaces inside ops)."""
    device = backend_device(backend)
    budget = 2**17 if fused_mlp else 2**18  # small for the fused MLP: the interpreter runs its 4 chunks
    torch.manual_seed(0)
    # The paper's latents, narrower hidden layers: the fused MLP under the interpreter took 14 minutes at width 200.
    hidden = ((32, 32),) * layers
    model = paper_model(layers, x_dim=784, hidden=hidden, backend=backend, fused_mlp=fused_mlp).to(device)
    x = torch.bernoulli(torch.full((2, 784), 0.3)).to(device)
    chunk = model.eval_chunk(x, 100_000, memory_budget=budget)
    assert 4 <= chunk < 100_000
    model.log_likelihood(x, k=chunk, chunk=chunk)  # warm-up: a GPU's first call autotunes, with buffers of its own
    peaks = [eval_peak_bytes(model, x, k, budget) for k in (chunk, 3 * chunk)]
    assert max(peaks) <= budget, f"chunk {chunk}: peaks {peaks} B over the {budget} B budget"
    assert min(peaks) >= budget / 8, f"chunk {chunk}: peaks {peaks} B, a small part of the {budget} B budget"


@pytest.mark.parametrize("backend, one_launch", [("torch", False), ("triton", True)])
def test_paper_sizes_evaluate_in_one_launch_per_batch_through_the_fused_mlp(backend, one_launch):
    """L_5000 of 100 images within the default 512 MiB: all 5000 samples in one chunk when a compiled backend runs
    the fused decoder MLP (activations on chip: its bytes per sample do not depend on the hidden widths, so
    narrow ones stand in for the interpreter's sake); through the layers, a few hundred."""
    device = backend_device(backend)
    x = torch.bernoulli(torch.full((100, 784), 0.3)).to(device)
    model = paper_model(1, hidden=((16, 16),), backend=backend, fused_mlp=True).to(device)
    layers = paper_model(1, backend=backend).to(device)
    assert (model.eval_chunk(x, 5000) == 5000) == one_launch
    assert 300 <= layers.eval_chunk(x, 5000) <= 800
    assert model.eval_chunk(x[:1], 5000) == 5000 and model.eval_chunk(x, 3) == 3
    assert model.eval_chunk(x, 5000, 64) == 64 and model.eval_chunk(x, 30, 64) == 30  # a given chunk, at most k


PEAK_MEMORY_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[3])
from eval_memory import peak_above_start_mib
from iwae_kernels.models import paper_model
torch.manual_seed(0)
model = paper_model(1)
x = torch.bernoulli(torch.full((20, 784), 0.3))
model.log_likelihood(x, k=50, chunk=50)  # warm-up: the allocations every run makes
_, growth = peak_above_start_mib(lambda: model.log_likelihood(x, k=int(sys.argv[1]), chunk=int(sys.argv[2])),
                                 torch.device("cpu"))
print(growth)  # MiB: the peak resident set above what was resident before the call
"""


def peak_growth_mib(k, chunk):
    """The peak resident set's growth during L_k with this chunk above what was resident before it (VmHWM reset
    through /proc/self/clear_refs, as benchmarks/eval_memory.py measures), MiB, in a fresh CPU-only process."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(k), str(chunk), str(REPO / "benchmarks")],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_log_likelihood_memory_does_not_grow_with_k():
    """Peak memory for L_5000 with chunk 50 stays near L_50's; one chunk of 5000 needs the [5000, 20, 784] logits
    (300 MiB), which this measurement sees. The peak is reset just before the call, so a warm-up's higher peak
    cannot hide the growth (with ru_maxrss, inside the full suite it once did)."""
    growth = peak_growth_mib(5000, 50)
    assert growth < 20, f"chunk 50: the peak resident set grew {growth:.1f} MiB"
    growth = peak_growth_mib(5000, 5000)
    assert growth > 100, f"chunk 5000: the peak resident set grew {growth:.1f} MiB"


def test_active_units_counts_units_that_vary():
    model = small_model(1)
    x = torch.rand(300, 6, dtype=torch.float64)
    with torch.no_grad():
        model.encoders[0][-1].weight[0].zero_()  # the mean of unit 0 no longer depends on x
    counts, activity = active_units(model, x)
    assert activity[0][0] == 0 and counts == [int((activity[0] > 1e-2).sum())] and counts[0] < 3
    two = small_model(2)
    counts, activity = active_units(two, x)
    assert len(counts) == 2 and activity[1].shape == (2,)


def test_sample_and_reconstruct():
    model = small_model(2)
    samples, recon = model.sample(5), model.reconstruct(torch.rand(3, 6, dtype=torch.float64))
    assert samples.shape == (5, 6) and recon.shape == (3, 6)
    assert (samples >= 0).all() and (samples <= 1).all() and (recon >= 0).all() and (recon <= 1).all()


def test_conv_iwae_loss_is_the_iwae_bound_of_its_networks():
    """ConvIWAE goes through iwae_loss; its loss equals -L_k written out with the same noise, and it trains."""
    torch.manual_seed(0)
    model = ConvIWAE(latent=3, channels=4, backend="torch")
    x = torch.rand(2, 784).round()
    got = model.loss(x, k=4, generator=torch.Generator().manual_seed(5))
    mu, logvar = model.encoder(x).chunk(2, -1)
    eps = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(5))
    log_w = naive_log_weights(x, mu, logvar, lambda z: model.decoder(z.flatten(0, 1)).unflatten(0, (4, 2)), eps)
    torch.testing.assert_close(got, -naive_iwae_bound(log_w).mean(), rtol=1e-5, atol=1e-4)
    bound = model.log_likelihood(x, k=30, chunk=8)
    assert bound.shape == (2,) and (bound < 0).all() and model.sample(3).shape == (3, 784)
