"""torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch) for every custom op.

The ops' arguments are recorded from real calls of the public functions, forward and backward, so the checks
see exactly what the library passes; the Triton ops run on the CPU under TRITON_INTERPRET=1 (conftest.py).
"""

import re
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import iwae_kernels as ik
from iwae_kernels.contract import IMPLEMENTATIONS
from iwae_kernels.ops.utils import dispatch_through_custom_ops

from helpers import COMPILED_BACKENDS, backend_device

PACKAGE = Path(ik.__file__).parent


def registered_ops(prefix):
    """Names of the ``iwae_kernels::<prefix>_*`` ops registered with ops.utils.library_op anywhere in the package."""
    names = set()
    for source in PACKAGE.rglob("*.py"):
        names.update(re.findall(rf'@library_op\("({prefix}_\w+)"', source.read_text()))
    return names


class RecordCustomOps(TorchDispatchMode):
    """Records (op, arguments) of each iwae_kernels op call; tensors are cloned before the op mutates them."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "iwae_kernels" and func not in self.calls:
            clone = lambda value: value.detach().clone() if isinstance(value, torch.Tensor) else value
            self.calls[func] = (tuple(map(clone, args)), {name: clone(v) for name, v in kwargs.items()})
        return func(*args, **kwargs)


def exercise_every_op(backend, device):
    """Call each public function that reaches a custom op, forward and backward, on small inputs."""
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device).requires_grad_()
    k, batch, dim, obs = 3, 2, 4, 5
    x = torch.rand(batch, obs, generator=gen).round().to(device)
    mu, logvar = rand(batch, dim), rand(batch, dim)
    z, latent = ik.gaussian_sample(mu, logvar, k, backend=backend)
    logits, mean, log_var = rand(k, batch, obs), rand(k, batch, obs), rand(k, batch, obs)
    log_w = (latent + ik.bernoulli_log_likelihood(logits, x, backend=backend)
             + ik.gaussian_log_likelihood(mean, log_var, x, backend=backend) + z.sum(-1))
    hidden, weight, bias = rand(k, batch, 6), rand(obs, 6), rand(obs)
    log_w = log_w + ik.bernoulli_decoder_log_likelihood(hidden, weight, bias, x, backend=backend)
    total = ik.iwae_bound(log_w, backend=backend).sum() + ik.normalized_weights(log_w, backend=backend).sum()
    total = total + ik.bernoulli_iwae_loss(rand(k, batch, obs), x, rand(k, batch), backend=backend)
    total = total + ik.gaussian_iwae_loss(rand(k, batch, obs), rand(k, batch, obs), x, rand(k, batch), backend=backend)
    tokens = torch.randint(0, 7, (batch, 3), generator=gen).to(device)
    total = total + ik.categorical_log_likelihood(rand(k, batch, 3, 7), tokens, backend=backend).sum()
    with torch.no_grad():  # forward only
        weights, biases = [rand(6, dim), rand(5, 6), rand(obs, 5)], [rand(6), rand(5), rand(obs)]
        evaluated = ik.bernoulli_mlp_decoder_log_likelihood(z, weights, biases, x, latent, backend=backend).sum()
    total = total + evaluated
    total = total + ik.local_reparam_linear(rand(batch, 6), rand(obs, 6), rand(obs, 6).detach().abs().requires_grad_(),
                                            backend=backend).sum()
    total.backward()


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_opcheck_every_custom_op(backend):
    device = backend_device(backend)
    recorder = RecordCustomOps()
    with dispatch_through_custom_ops(), recorder:  # eager calls otherwise launch directly
        exercise_every_op(backend, device)
    called = {func.name().split("::")[1] for func in recorder.calls}
    own = registered_ops(backend)
    # The cuda backend runs some ops through their Triton kernels (contract.IMPLEMENTATIONS declares which).
    others = set().union(*(registered_ops(impl) for impl in set(IMPLEMENTATIONS[backend].values()) - {backend}))
    assert own <= called, f"every {backend} op is exercised; not called: {sorted(own - called)}"
    assert called <= own | others, f"only the backend's declared implementations run: {sorted(called - own - others)}"
    for func, (args, kwargs) in recorder.calls.items():
        torch.library.opcheck(func, args, kwargs)
