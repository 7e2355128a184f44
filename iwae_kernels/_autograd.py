"""``once_differentiable`` without its cost in the usual backward: torch's wrapper enters a no_grad context on
every call (about 1.3 us of host time here, twice per loss backward), which changes nothing when autograd already
runs the backward with grad mode off (``create_graph=False``). With grad mode on it is torch's wrapper, so a
double backward still raises torch's error."""

import functools

import torch
from torch.autograd import function


def once_differentiable(backward):
    """A Function's ``backward(ctx, *grads)`` that is differentiated at most once (torch.autograd.function's)."""
    guarded = function.once_differentiable(backward)

    @functools.wraps(backward)
    def run(ctx, *grads):
        return guarded(ctx, *grads) if torch.is_grad_enabled() else backward(ctx, *grads)

    return run
