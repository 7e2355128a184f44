"""Large-k evaluation of a user's own encoder/decoder: iwae_kernels.log_likelihood against a hand-written
logsumexp IWAE, chunk independence, memory flat in k, and evaluate_dataset on 1 and 2 (gloo) processes."""

import ast
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import iwae_kernels as ik
from iwae_kernels import evaluation
from iwae_kernels._memory import peak_live_bytes
from iwae_kernels.models import ConvIWAE, paper_model

from helpers import REPO, backend_device, peak_bytes
from naive import naive_bernoulli, naive_gaussian, naive_iwae_bound, naive_latent

P, D = 12, 3
CPU = torch.device("cpu")


class UserVAE(nn.Module):
    """A model as a user writes it: an MLP encoder to (mu, logvar) and an MLP decoder (logits, or a Gaussian's
    (mean, logvar) pair)."""

    def __init__(self, likelihood="bernoulli", hidden=16, x_dim=P, latent=D, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.likelihood = likelihood
        out = x_dim if likelihood == "bernoulli" else 2 * x_dim
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent)).to(dtype)
        self.decoder_net = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, out)).to(dtype)

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, -1)
        return mu, logvar

    def decoder(self, z):
        out = self.decoder_net(z)
        return out if self.likelihood == "bernoulli" else tuple(out.chunk(2, -1))


def batch(n=4, dtype=torch.float64, seed=1):
    return torch.bernoulli(torch.full((n, P), 0.4, dtype=dtype), generator=torch.Generator().manual_seed(seed))


def hand_written_iwae(model, x, eps):
    """L_k [B] by torch.distributions and one torch.logsumexp over all k samples."""
    mu, logvar = model.encode(x)
    z, latent = naive_latent(mu, logvar, eps)
    out = model.decoder(z)
    log_lik = naive_bernoulli(out, x) if model.likelihood == "bernoulli" else naive_gaussian(*out, x)
    return naive_iwae_bound(log_lik + latent)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("k", [1, 7])
def test_log_likelihood_matches_a_hand_written_iwae_in_float64(k, likelihood):
    model = UserVAE(likelihood)
    x = batch() if likelihood == "bernoulli" else torch.randn(4, P, dtype=torch.float64)
    eps = torch.randn(k, 4, D, dtype=torch.float64)
    mu, logvar = model.encode(x)
    got = ik.log_likelihood(x, mu, logvar, model.decoder, k, likelihood=likelihood, eps=eps, chunk=3)
    assert got.dtype == torch.float64 and got.shape == (4,) and got.grad_fn is None
    torch.testing.assert_close(got, hand_written_iwae(model, x, eps), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chunked_equals_unchunked_for_the_same_eps_and_a_generator_repeats(backend):
    device = backend_device(backend)
    model = UserVAE(dtype=torch.float32).to(device)
    x = batch(dtype=torch.float32).to(device)
    mu, logvar = model.encode(x)
    eps = torch.randn(23, 4, D).to(device)
    call = lambda **kw: ik.log_likelihood(x, mu, logvar, model.decoder, 23, backend=backend, **kw)
    whole = call(eps=eps, chunk=23)
    for chunk in (1, 5, 22):
        torch.testing.assert_close(call(eps=eps, chunk=chunk), whole, rtol=1e-6, atol=1e-6)
    seeded = lambda chunk: call(chunk=chunk, generator=torch.Generator(device).manual_seed(4))
    assert torch.equal(seeded(5), seeded(5))
    assert not torch.equal(seeded(5), call(chunk=5, generator=torch.Generator(device).manual_seed(5)))


def test_peak_live_bytes_counts_allocations_once_and_frees_them():
    """The probe's counter: a view or an in-place op adds nothing, a freed tensor leaves the running total, what
    existed before the call is not counted; the peak is the most that was live at once."""
    before = torch.zeros(2**20, dtype=torch.uint8)

    def work():
        first = torch.empty(3 * 2**20, dtype=torch.uint8)   # 3 MiB
        first.view(-1)[:10].add_(1)                           # a view, in place: no new storage
        del first
        second = torch.empty(2 * 2**20, dtype=torch.uint8)  # 2 MiB, after the 3 were freed
        before.add_(1)
        return second[: 2**20]

    result, peak = peak_live_bytes(work)
    assert peak == 3 * 2**20 and result.numel() == 2**20


def test_chunk_for_budget_follows_the_measured_bytes():
    """A chunk function that allocates 3 MiB plus 1 MiB per sample: the chunk is the most samples whose counted
    peak fits COUNTED_SHARE of the budget; a given chunk or a k of at most PROBE_SAMPLES[-1] is taken as it is."""
    calls = []

    def chunk_log_weights(size):
        calls.append(size)
        fixed, per_sample = torch.empty(3 * 2**20, dtype=torch.uint8), torch.empty(size * 2**20, dtype=torch.uint8)
        return torch.zeros(size, 2) + fixed[0] + per_sample[0]

    budget = 64 * 2**20
    chunk = evaluation.chunk_for_budget(chunk_log_weights, 5000, device=CPU, memory_budget=budget)
    assert calls == list(evaluation.PROBE_SAMPLES)
    assert chunk == int((evaluation.COUNTED_SHARE * budget - 3 * 2**20) // (2**20 + 8)), chunk
    assert evaluation.chunk_for_budget(chunk_log_weights, 10, device=CPU, memory_budget=budget) == 10
    assert evaluation.chunk_for_budget(chunk_log_weights, 5000, device=CPU, memory_budget=2**20) == 1  # at least one sample
    calls.clear()
    assert evaluation.chunk_for_budget(chunk_log_weights, 5000, device=CPU, chunk=7) == 7
    assert evaluation.chunk_for_budget(chunk_log_weights, 3, device=CPU) == 3 and calls == []


def test_the_default_chunk_is_measured_for_any_decoder_and_draws_no_noise(monkeypatch):
    """A conv decoder (layers no width rule reads) gets a chunk from its measured bytes: a larger budget, a larger
    chunk; the probe draws nothing from the generator, so the default chunk's L_k equals that chunk given."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Linear(D, 16 * 16), nn.Unflatten(-1, (4, 64)), nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv1d(8, 1, 3, padding=1), nn.Flatten(), nn.Linear(64, P)).double()
    x = batch()
    mu, logvar = torch.zeros(4, D, dtype=torch.float64), torch.zeros(4, D, dtype=torch.float64)
    used = []
    measured = evaluation.chunk_for_budget
    monkeypatch.setattr(evaluation, "chunk_for_budget", lambda *a, **kw: used.append(measured(*a, **kw)) or used[-1])
    call = lambda **kw: ik.log_likelihood(x, mu, logvar, conv, 5000, flatten_samples=True,
                                          generator=torch.Generator().manual_seed(4), **kw)
    small = call(memory_budget=2**20)
    large = call(memory_budget=2**22)
    assert 1 < used[0] < used[1] < 5000 and used[1] >= 3 * used[0]
    torch.testing.assert_close(call(chunk=used[0]), small, rtol=0, atol=0)
    torch.testing.assert_close(call(chunk=used[1]), large, rtol=0, atol=0)


@pytest.mark.parametrize("decoder, size", [("conv", "32"), ("attention", "16")])
def test_conv_and_attention_decoders_at_k_5000_stay_within_their_memory_budget(decoder, size):
    """The issue's case, scaled to a test: a Linear + transposed-convolution decoder to 3 x 32 x 32 Gaussian
    images, or a Transformer-layer decoder to 3 x 16 x 16 (its fused attention allocates inside one op), B = 4,
    k = 5000 (unchunked, over 1 GB of activations) under memory_budget = 64 MiB: the process's peak RSS (VmHWM) grows
    by at most 1.25x the budget plus the model (benchmarks/eval_memory.py, the GPU plan's stage)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "eval_memory.py"), "--device", "cpu", "--no-write",
                          "--decoder", decoder, "--size", size, "--batch", "4", "--k", "5000", "--budget-mib", "64"],
                         capture_output=True, text=True, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    row = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert row["chunk"] < 5000
    assert row["peak_mib"] <= 1.25 * row["budget_mib"] + row["model_mib"], row


def test_the_probe_sees_allocations_inside_an_op_and_prints_nothing(capfd):
    """peak_allocated_bytes counts what an op allocates and frees inside itself (the profiler's allocation
    events), which the op-output count cannot see; the profiler's start and stop lines never reach the user."""
    from iwae_kernels._memory import peak_allocated_bytes

    layer = nn.TransformerEncoderLayer(64, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True).eval()
    tokens = torch.randn(64, 32, 64)
    with torch.no_grad():
        _, outputs_only = peak_live_bytes(lambda: layer(tokens))
        _, allocated = peak_allocated_bytes(lambda: layer(tokens), CPU)
    assert outputs_only == tokens.numel() * 4 and allocated >= 3 * outputs_only  # q, k, v at least
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    # Under the user's own profiler the probe counts op outputs alone and leaves that profiler's session running.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as users, torch.no_grad():
        _, counted = peak_allocated_bytes(lambda: layer(tokens), CPU)
        layer(tokens)
    assert counted == outputs_only
    assert any(event.name == "aten::_transformer_encoder_layer_fwd" for event in users.events())
    assert "no active profiling session" not in capfd.readouterr().err


def test_log_likelihood_refuses_bad_arguments_naming_them():
    model = UserVAE()
    x = batch()
    mu, logvar = model.encode(x)
    with pytest.raises(ValueError, match="chunk: expected an int >= 1"):
        ik.log_likelihood(x, mu, logvar, model.decoder, 10, chunk=0)
    with pytest.raises(ValueError, match="memory_budget: expected an int >= 1"):
        ik.log_likelihood(x, mu, logvar, model.decoder, 10, memory_budget=0.5)
    with pytest.raises(ValueError, match="memory_budget: expected an int >= 1"):
        ik.evaluate_dataset([x], model.encode, model.decoder, 10, memory_budget=-1)
    with pytest.raises(ValueError, match=r"eps: expected shape \(10, 4, 3\)"):
        ik.log_likelihood(x, mu, logvar, model.decoder, 10, eps=torch.zeros(9, 4, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="likelihood: expected one of"):
        ik.log_likelihood(x, mu, logvar, model.decoder, 10, likelihood="poisson")


def test_user_model_memory_at_k_5000_stays_at_k_50s():
    """The issue's bound: L_5000 of a user-defined model peaks within 1.25x (+64 MiB) of L_50 at the same chunk
    (torch.profiler's memory accounting). Unchunked, the [5000, 4, 784] logits alone would be 60 MiB, which the
    second, tighter check sees."""
    model = UserVAE(hidden=32, x_dim=784, dtype=torch.float32)
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    mu, logvar = model.encode(x)
    peak = lambda k: peak_bytes(lambda: ik.log_likelihood(x, mu, logvar, model.decoder, k, chunk=50),
                                torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 100 small chunks: on a busy CPU, handing each op to a second thread costs most
    try:
        small, large = peak(50), peak(5000)
    finally:
        torch.set_num_threads(threads)
    assert large <= 1.25 * small + 64 * 2**20, f"k=5000 peaked at {large / 2**20:.1f} MiB, k=50 at {small / 2**20:.1f}"
    assert large <= 1.25 * small, f"k=5000 peaked at {large / 2**20:.2f} MiB, k=50 at {small / 2**20:.2f}"


def test_paper_model_log_likelihood_takes_its_noise_and_conv_loss_takes_eps():
    model = paper_model(2, x_dim=P, hidden=((8,), (6,)), latent=(4, 2))
    x = batch(dtype=torch.float32)
    noise = [torch.randn(9, 4, 4), torch.randn(9, 4, 2)]
    with torch.no_grad():
        whole = ik.iwae_bound(model.log_weights(x, 9, noise=noise)).double()
    torch.testing.assert_close(model.log_likelihood(x, 9, chunk=4, eps=noise), whole, rtol=1e-6, atol=1e-6)
    conv = ConvIWAE(latent=3, channels=2)
    images = torch.bernoulli(torch.full((2, 784), 0.3))
    eps = torch.randn(5, 2, 3)
    mu, logvar = conv.encoder(images).chunk(2, -1)
    want = ik.iwae_loss(images, mu, logvar, conv.decoder, 5, eps=eps, flatten_samples=True)
    torch.testing.assert_close(conv.loss(images, 5, eps=eps), want)
    # the same samples in chunks of 2: L_5's mean is minus the loss
    torch.testing.assert_close(conv.log_likelihood(images, 5, chunk=2, eps=eps).mean().float(), -want.detach())


def _loader(n=7, batch_size=2):
    data = batch(n, seed=3)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=batch_size)


def _evaluate(progress=False):
    """(L_k [7], ESS [7], k-hat [7]) of evaluate_dataset with diagnostics (a plain tuple: torch.load reads it)."""
    model = UserVAE()
    bounds, checks = ik.evaluate_dataset(_loader(), model.encode, model.decoder, 60, chunk=6, seed=5,
                                         progress=progress, diagnostics=True)
    return bounds, *checks


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = _evaluate()
        if rank == 0:
            torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


def test_evaluate_dataset_is_per_example_and_the_same_on_two_gloo_processes(tmp_path, capsys):
    one = _evaluate(progress=True)
    assert all(part.shape == (7,) and part.dtype == torch.float64 for part in one)
    assert "L_60" in capsys.readouterr().err  # the progress bar (tqdm)
    model = UserVAE()
    first = next(iter(_loader()))[0]
    mu, logvar = model.encode(first)
    generator = torch.Generator().manual_seed(5 * 1_000_003)  # batch 0's noise
    bound, checks = ik.log_likelihood(first, mu, logvar, model.decoder, 60, chunk=6, generator=generator,
                                      diagnostics=True)
    for got, want in zip(one, (bound, *checks)):
        torch.testing.assert_close(got[:2], want)
    # spawn, not fork: a forked child of a process whose OpenMP pool has run can hang in its first parallel op
    workers = mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two.pt")), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not workers.join(timeout=max(deadline - time.monotonic(), 0)):  # False each time one process ends
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail("the 2 gloo processes did not finish in 120 s")
    two = torch.load(tmp_path / "two.pt")
    assert all(torch.equal(got, want) for got, want in zip(two, one))
