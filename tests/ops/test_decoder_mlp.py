"""The fused decoder MLP (the paper's decoder and the Bernoulli log-likelihood in one forward kernel) against the
reference, and the model layer's evaluation through it."""

import pytest
import torch

import iwae_kernels as ik

from helpers import LOW_PRECISION, assert_close, assert_close_as_torch
from naive import naive_bernoulli
from conftest import shape_ids

# (k, B, D, H1, H2, P): all ones; odd sizes with H1 != H2; hidden widths under one block (16 under the interpreter)
# and P over many tiles; several row tiles per persistent program (3 programs of 16 rows under the interpreter), so
# the scratch rows are reused; the paper's decoder (D=50, H=200, P=784); widths over 256 (any width compiles).
SHAPES = [(1, 1, 1, 1, 1, 1), (3, 5, 7, 33, 17, 70), (4, 3, 20, 9, 40, 130), (7, 11, 5, 21, 19, 37),
          (2, 3, 50, 200, 200, 784), (2, 2, 300, 260, 270, 40)]


def make_inputs(k, batch, dim, hidden1, hidden2, size, seed=0):
    """z [k, B, D], Glorot-scaled weights and biases, binary x [B, P] and a latent term [k, B], in float64."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    sizes = (dim, hidden1, hidden2, size)
    weights = [rand(out, width) / width**0.5 for width, out in zip(sizes, sizes[1:])]
    biases = [rand(out) for out in sizes[1:]]
    x = torch.rand(batch, size, generator=gen, dtype=torch.float64).round()
    return rand(k, batch, dim), weights, biases, x, 10 * rand(k, batch)


@torch.no_grad()
def run(inputs, backend, device, dtype, latent=True):
    z, weights, biases, x, latent_log_weight = inputs
    to = lambda t: t.to(device=device, dtype=dtype)
    return ik.bernoulli_mlp_decoder_log_likelihood(to(z), [to(w) for w in weights], [to(b) for b in biases], to(x),
                                                   to(latent_log_weight) if latent else None, backend=backend)


def test_reference_matches_the_layers():
    z, weights, biases, x, latent = inputs = make_inputs(*SHAPES[1])
    hidden = z
    for weight, bias in zip(weights[:2], biases[:2]):
        hidden = torch.tanh(hidden @ weight.T + bias)
    expected = naive_bernoulli(hidden @ weights[2].T + biases[2], x)
    assert_close(run(inputs, "torch", "cpu", torch.float64, latent=False), expected)
    assert_close(run(inputs, "torch", "cpu", torch.float64), expected + latent)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_ids("k", "B", "D", "H", "H", "P"))  # k3-B5-D7-H33-H17-P70
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64 runs the reference (tl.dot has none)
@pytest.mark.parametrize("latent", [True, False])
def test_kernel_matches_reference(kernel, dtype, shape, latent):
    inputs = make_inputs(*shape)
    expected = run(inputs, "torch", "cpu", torch.float64, latent)
    got = run(inputs, *kernel, dtype, latent)
    assert got.shape == expected.shape and got.dtype == dtype
    assert_close(got, expected, dtype)


def test_weights_that_are_misaligned_views(kernel):
    """A weight that is a view at an odd offset (not 16-byte aligned, what TMA would need) and rows of 9 floats."""
    backend, device = kernel
    z, weights, biases, x, latent = make_inputs(2, 3, 20, 9, 40, 70)
    expected = run((z, weights, biases, x, latent), "torch", "cpu", torch.float64)
    offset = torch.zeros(1 + weights[1].numel(), dtype=torch.float32, device=device)
    offset[1:] = weights[1].flatten().to(offset)
    shifted = offset[1:].view(weights[1].shape)  # contiguous, base 4 bytes past an aligned allocation
    assert shifted.data_ptr() % 16 and shifted.is_contiguous()
    to = lambda t: t.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        got = ik.bernoulli_mlp_decoder_log_likelihood(to(z), [to(weights[0]), shifted, to(weights[2])],
                                                      [to(b) for b in biases], to(x), to(latent), backend=backend)
    assert_close(got, expected, torch.float32)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_kernel_low_precision(kernel, dtype):
    inputs = make_inputs(3, 6, 24, 40, 30, 50)
    rounded = [t.to(dtype).double() if isinstance(t, torch.Tensor) else [w.to(dtype).double() for w in t]
               for t in inputs]
    oracle = run(rounded, "torch", "cpu", torch.float64)
    torch_low = run(inputs, "torch", "cpu", dtype)
    got = run(inputs, *kernel, dtype)
    assert got.dtype == torch.float32  # log-weights accumulate in float32
    assert_close_as_torch(got, torch_low, oracle)


def test_impossible_samples_stay_minus_infinity(kernel):
    z, weights, biases, x, latent = make_inputs(*SHAPES[1])
    latent[0, 1] = float("-inf")
    got = run((z, weights, biases, x, latent), *kernel, torch.float32)
    assert got[0, 1] == float("-inf") and torch.isfinite(got.flatten()[2:]).all() and not got.isnan().any()


def test_forward_only_and_bad_input_name_the_argument():
    z, weights, biases, x, latent = make_inputs(2, 3, 4, 5, 6, 7)
    op = ik.bernoulli_mlp_decoder_log_likelihood
    with pytest.raises(ValueError, match="forward only"):
        op(z, [weights[0].requires_grad_(), *weights[1:]], biases, x)
    weights[0].requires_grad_(False)
    with pytest.raises(ValueError, match=r"weights: expected a list or tuple of 3 tensors"):
        op(z, weights[:2], biases, x)
    with pytest.raises(ValueError, match=r"weights\[1\]: expected shape \[out, 5\]"):
        op(z, [weights[0], weights[1].T, weights[2]], biases, x)
    with pytest.raises(ValueError, match=r"biases\[2\]: expected shape \(7,\)"):
        op(z, weights, [*biases[:2], biases[2][:3]], x)
    with pytest.raises(ValueError, match=r"x: expected shape \(3, 7\)"):
        op(z, weights, biases, x[:, :3])
    with pytest.raises(ValueError, match=r"latent_log_weight: expected shape \(2, 3\)"):
        op(z, weights, biases, x, latent[:1])
    with pytest.raises(TypeError, match=r"biases\[0\]: expected dtype torch.float64 \(as z\)"):
        op(z, weights, [biases[0].float(), *biases[1:]], x)


@pytest.mark.parametrize("layers", [1, 2])
def test_model_evaluation_through_the_fused_mlp_matches_the_layers(kernel, layers):
    """PaperModel(fused_mlp=True).log_likelihood draws the same samples and gives the same L_k as the layers."""
    from iwae_kernels.models import paper_model

    backend, device = kernel
    torch.manual_seed(0)
    sizes = {1: dict(hidden=((12, 10),), latent=(4,)), 2: dict(hidden=((12, 10), (8, 6)), latent=(5, 3))}[layers]
    model = paper_model(layers, x_dim=20, backend=backend, **sizes).to(device)
    fused = paper_model(layers, x_dim=20, backend=backend, fused_mlp=True, **sizes).to(device)
    fused.load_state_dict(model.state_dict())
    x = torch.rand(6, 20).round().to(device)
    calls = []
    original = ik.functional.bernoulli_mlp_decoder_log_likelihood
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ik.functional, "bernoulli_mlp_decoder_log_likelihood",
                      lambda *a, **kw: calls.append(a[0].shape) or original(*a, **kw))
        torch.manual_seed(1)
        got = fused.log_likelihood(x, k=30, chunk=20)
    torch.manual_seed(1)
    expected = model.log_likelihood(x, k=30, chunk=20)
    assert calls == [(20, 6, sizes["latent"][0]), (10, 6, sizes["latent"][0])]
    assert_close(got, expected, torch.float32)
    # Training is unchanged: with autograd on, the loss runs the layers and has gradients.
    fused.loss(x, k=3).backward()
    assert all(p.grad is not None for p in fused.decoder.parameters())


def test_model_refuses_fused_mlp_without_two_hidden_layers():
    from iwae_kernels.models import PaperModel

    with pytest.raises(ValueError, match=r"fused_mlp: the fused decoder MLP has two tanh hidden layers"):
        PaperModel(x_dim=20, hidden=((12,),), latent=(4,), fused_mlp=True)


def test_autocast_casts_the_inputs_as_linear_layers_would(kernel):
    backend, device = kernel
    z, weights, biases, x, latent = inputs = make_inputs(*SHAPES[1])
    to = lambda t: t.to(device=device, dtype=torch.float32)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        got = ik.bernoulli_mlp_decoder_log_likelihood(to(z), list(map(to, weights)), list(map(to, biases)), to(x),
                                                      to(latent), backend=backend)
    rounded = run(inputs, backend, device, torch.bfloat16, latent=False) + to(latent)
    assert_close(got, rounded, torch.float32)  # the same bf16 computation
    assert (got - run(inputs, backend, device, torch.float32)).abs().max() > 1e-3  # not the float32 one
