"""``once_differentiable(op)``: the guard on every hand-written backward in the package.

Autograd runs a backward with grad mode on exactly when the caller asked for a graph of the gradient
(``create_graph=True``: a Hessian-vector product, a gradient penalty). A written-out backward is not
differentiable, and torch's own ``once_differentiable`` raises only when the incoming gradient itself needs a
gradient, so a second derivative taken through one would silently miss this op's curvature. This guard refuses
the backward whenever grad mode is on, naming the op; with ``create_graph=False`` it costs one flag read (torch's
wrapper enters a no_grad context on every call, about 1.3 us of host time per backward).
"""

import functools

import torch


class DoubleBackwardError(RuntimeError):
    """A second derivative (``create_graph=True``) reached a backward that is not differentiable.

    Examples::

        >>> import torch
        >>> from iwae_kernels import DoubleBackwardError, iwae_bound
        >>> log_w = torch.zeros(3, 2, requires_grad=True)
        >>> try:
        ...     torch.autograd.grad(iwae_bound(log_w).sum(), log_w, create_graph=True)
        ... except DoubleBackwardError as error:
        ...     print(error)  # doctest: +ELLIPSIS
        iwae_kernels.iwae_bound: double backward (create_graph=True) is not supported: ...
        >>> torch.autograd.grad(iwae_bound(log_w).sum(), log_w)[0]  # first derivatives are fine
        tensor([[0.3333, 0.3333],
                [0.3333, 0.3333],
                [0.3333, 0.3333]])
    """


def once_differentiable(op):
    """Decorate a Function's ``backward(ctx, *grads)`` for op ``op``: its public name (e.g. "iwae_bound"), or
    ``op(ctx) -> name`` where one Function serves several ops. The backward runs as written with
    ``create_graph=False`` and raises ``DoubleBackwardError`` naming the op with ``create_graph=True``."""

    def decorate(backward):
        @functools.wraps(backward)
        def run(ctx, *grads):
            if torch.is_grad_enabled():
                name = op if isinstance(op, str) else op(ctx)
                raise DoubleBackwardError(
                    f"iwae_kernels.{name}: double backward (create_graph=True) is not supported: its backward is "
                    "written out, not differentiable. Take first derivatives only through it (create_graph=False), "
                    "or compose the term in plain PyTorch where a second derivative is needed")
            return backward(ctx, *grads)

        return run

    return decorate
