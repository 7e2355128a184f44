"""Importance diagnostics beside L_k: ESS by its formula, PSIS k-hat against Pyro's psis_diagnostic on the same
log-weights and on known generalized Pareto shapes, streamed (chunks, merges) equal to all at once, and the
evaluation paths that return them."""

import math

import pytest
import torch

import iwae_kernels as ik
from iwae_kernels.diagnostics import StreamingImportanceDiagnostics, tail_size
from iwae_kernels.models import paper_model

from naive import naive_iwae_bound, naive_log_weights

pyro = pytest.importorskip("pyro", reason="pyro-ppl is not installed (the test extra: the PSIS peer)")
import pyro.infer.importance as pyro_importance  # noqa: E402  (after the skip)

SCALES = torch.tensor([0.1, 1.0, 2.0, 3.0, 5.0, 10.0], dtype=torch.float64)


def spread_log_weights(k, seed=0):
    """[k, 6] log-weights from well-behaved (k-hat < 0.5) to heavy-tailed (k-hat > 1) columns, shifted far from 0."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(k, SCALES.numel(), generator=generator, dtype=torch.float64) * SCALES - 300.0


def pyro_pareto_k(log_w, monkeypatch):
    """Pyro's psis_diagnostic on given log-weights [k] (its importance sampler replaced by them)."""
    monkeypatch.setattr(pyro_importance, "vectorized_importance_weights", lambda *args, **kwargs: (log_w, None))
    with pytest.warns(UserWarning) if log_w.shape[0] < 50 else _no_warning():
        return pyro_importance.psis_diagnostic(None, None, num_particles=log_w.shape[0])


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("k", [11, 50, 333, 5000])
def test_pareto_k_and_ess_match_pyro_and_the_formula(k, monkeypatch):
    log_w = spread_log_weights(k, seed=k)
    got = ik.importance_diagnostics(log_w)
    want = torch.tensor([pyro_pareto_k(log_w[:, b], monkeypatch) for b in range(log_w.shape[1])],
                        dtype=torch.float64)
    assert torch.isinf(want).any() == (k < 50)  # Pyro's own "not enough tail samples" case, inf both sides
    torch.testing.assert_close(got.pareto_k, want, rtol=1e-6, atol=1e-6)
    weights = torch.softmax(log_w, 0)
    torch.testing.assert_close(got.ess, 1.0 / (weights**2).sum(0), rtol=1e-10, atol=0.0)
    if k >= 333:  # the columns order from light to heavy tails
        assert got.pareto_k[0] < 0.5 < 0.7 < got.pareto_k[-1]


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9])
def test_pareto_k_recovers_a_known_generalized_pareto_shape(shape):
    """Weights drawn from a generalized Pareto of shape xi (scale 1): k-hat estimates xi (its M = 424 largest of
    20,000 are the tail; the spread over 8 columns was 0.05-0.1 when measured)."""
    u = torch.rand(20_000, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weights = ((1 - u) ** (-shape) - 1) / shape
    got = ik.importance_diagnostics(torch.log(weights)).pareto_k
    assert abs(got.mean().item() - shape) < 0.08, got


def test_equal_weights_give_ess_k_and_edge_columns_give_no_nan():
    assert torch.equal(ik.importance_diagnostics(torch.zeros(100, 3)).ess, torch.full((3,), 100.0, dtype=torch.float64))
    log_w = torch.zeros(100, 4)
    log_w[:, 0] = -math.inf            # no weight at all
    log_w[:60, 1] = -math.inf          # 40 equal weights
    log_w[0, 2] = math.inf             # one weight dominates
    log_w[:, 3] = torch.linspace(-5, 5, 100)
    got = ik.importance_diagnostics(log_w)
    assert not torch.isnan(got.ess).any() and not torch.isnan(got.pareto_k).any()
    torch.testing.assert_close(got.ess[:3], torch.tensor([0.0, 40.0, 1.0], dtype=torch.float64))
    assert torch.isinf(got.pareto_k[:3]).all()  # no tail of 10 distinct weights to fit
    assert torch.isfinite(got.pareto_k[3])
    one = ik.importance_diagnostics(torch.zeros(1, 2))
    assert torch.equal(one.ess, torch.ones(2, dtype=torch.float64)) and torch.isinf(one.pareto_k).all()


@pytest.mark.parametrize("chunk", [1, 37, 500])
def test_streaming_equals_all_at_once_with_the_tail_in_the_last_chunk(chunk):
    """Chunks of any size, and two half-states merged, give what one pass gives; the largest weights sit in the
    last rows so a fold that dropped or mis-ordered them (kept the smallest, kept M not M + 1, skipped the
    other state's) would change k-hat."""
    k = 1000
    log_w = spread_log_weights(k, seed=7).sort(0).values  # ascending: the tail comes last
    whole = ik.importance_diagnostics(log_w)
    streamed = StreamingImportanceDiagnostics(k, log_w.shape[1])
    for part in log_w.split(chunk):
        streamed.update(part)
    merged, other = StreamingImportanceDiagnostics(k, log_w.shape[1]), StreamingImportanceDiagnostics(k, log_w.shape[1])
    merged.update(log_w[: k // 3])
    other.update(log_w[k // 3 :])
    merged.merge(other)
    for got in (streamed.result(), merged.result()):
        torch.testing.assert_close(got.ess, whole.ess, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(got.pareto_k, whole.pareto_k, rtol=1e-9, atol=1e-12)
    assert streamed.largest.shape[0] == tail_size(k) + 1


def test_float32_chunks_merge_into_an_empty_state_and_across_far_apart_maxima():
    """The diagnostics' own folds in float32 input: an empty state merged with weights near -120 (exp underflows
    float32), and states whose maxima lie 200 apart (exp overflows float32)."""
    k = 400
    log_w = spread_log_weights(k, seed=2)[:, :3] + 180.0  # near -120
    log_w[k // 2 :, 0] += 200.0
    log_w[: k // 2, 1] += 200.0
    whole = ik.importance_diagnostics(log_w.float())
    empty, first, second = (StreamingImportanceDiagnostics(k, 3) for _ in range(3))
    first.update(log_w[: k // 2].float())
    second.update(log_w[k // 2 :].float())
    empty.merge(first)
    empty.merge(second)
    got = empty.result()
    assert torch.isfinite(got.ess).all() and (got.ess >= 1).all()
    torch.testing.assert_close(got.ess, whole.ess, rtol=1e-9, atol=0.0)
    torch.testing.assert_close(got.pareto_k, whole.pareto_k, rtol=1e-9, atol=1e-12)


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match="log_w: expected a 2-D"):
        ik.importance_diagnostics(torch.zeros(5))
    with pytest.raises(TypeError, match="log_w: expected a floating dtype"):
        ik.importance_diagnostics(torch.zeros(5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1"):
        StreamingImportanceDiagnostics(0, 3)
    streamed = StreamingImportanceDiagnostics(10, 3)
    streamed.update(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="4 of num_samples=10"):
        streamed.result()
    with pytest.raises(ValueError, match="log_w: expected shape"):
        streamed.update(torch.zeros(4, 2))


class TinyVAE(torch.nn.Module):
    def __init__(self, x_dim=12, latent=3):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(x_dim, 2 * latent).double()
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent, 16), torch.nn.Tanh(), torch.nn.Linear(16, x_dim)).double()

    def encode(self, x):
        return self.encoder(x).chunk(2, -1)


def test_log_likelihood_returns_the_diagnostics_of_its_own_samples():
    """On shared noise, log_likelihood(diagnostics=True) in chunks gives importance_diagnostics of the log-weights
    written out by hand (torch.distributions) over all k at once."""
    model = TinyVAE()
    x = torch.bernoulli(torch.full((5, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    mu, logvar = model.encode(x)
    eps = torch.randn(300, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    bound, got = ik.log_likelihood(x, mu, logvar, model.decoder, 300, eps=eps, chunk=64, diagnostics=True)
    log_w = naive_log_weights(x, mu, logvar, model.decoder, eps)
    want = ik.importance_diagnostics(log_w)
    torch.testing.assert_close(bound, naive_iwae_bound(log_w), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.ess, want.ess, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(got.pareto_k, want.pareto_k, rtol=1e-8, atol=1e-10)
    assert torch.equal(ik.log_likelihood(x, mu, logvar, model.decoder, 300, eps=eps, chunk=64), bound)


def test_evaluate_dataset_and_the_model_zoo_return_diagnostics_per_example():
    model = TinyVAE()
    data = torch.bernoulli(torch.full((7, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(3))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=3)
    bounds, checks = ik.evaluate_dataset(loader, model.encode, model.decoder, 60, seed=1, diagnostics=True)
    assert bounds.shape == checks.ess.shape == checks.pareto_k.shape == (7,)
    assert torch.equal(bounds, ik.evaluate_dataset(loader, model.encode, model.decoder, 60, seed=1))
    assert ((checks.ess >= 1) & (checks.ess <= 60)).all()
    zoo = paper_model(1, x_dim=12, hidden=((8, 8),), latent=(3,)).double()
    noise = [torch.randn(80, 7, 3, dtype=torch.float64)]
    bound, got = zoo.log_likelihood(data, 80, chunk=30, eps=noise, diagnostics=True)
    with torch.no_grad():
        want = ik.importance_diagnostics(zoo.log_weights(data, 80, noise=noise))
    torch.testing.assert_close(got.ess, want.ess, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(got.pareto_k, want.pareto_k, rtol=1e-8, atol=1e-10)
