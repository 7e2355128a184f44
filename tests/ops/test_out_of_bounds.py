"""Every Triton kernel the package launches, forward and backward, at small odd shapes (k = 1, D not a power of two,
strided views) under the interpreter's out-of-bounds checker (tests/sanitizer.py), and a planted out-of-bounds
kernel that proves the checker fails.

The inputs are fresh tensors, or views of fresh tensors (chunk() halves of a decoder output, transposes), so every
element a kernel may read is an element of one argument; the checker tests addresses against a view's elements,
not its storage, so a chunk half's neighbour does not make a one-past-the-end read pass (see tests/sanitizer.py).
"""

import importlib
import os
import sys

import pytest
import torch
import triton
import triton.language as tl

from helpers import REPO
from iwae_kernels import ops
from iwae_kernels.ops import utils
from sanitizer import OutOfBoundsError, SanitizerUnavailable, check_accesses

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the out-of-bounds checker hooks Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)


def _aot_report():
    """benchmarks/aot_report.py, whose CASES name the kernel families and launched_kernels their kernels. Its import
    unsets TRITON_INTERPRET (it compiles); kernels defined later in this process must still be interpreted."""
    saved = {name: os.environ.get(name) for name in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import aot_report
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return aot_report


def rand(*shape, dtype=torch.float32, grad=True):
    return torch.randn(shape, dtype=dtype).requires_grad_(grad)


def halves(*shape, dtype=torch.float32):
    """Two strided [..., n] views, the chunk() halves of a fresh [..., 2n] tensor (a Gaussian layer's output)."""
    both = torch.randn((*shape[:-1], 2 * shape[-1]), dtype=dtype, requires_grad=True)
    return both.chunk(2, dim=-1)


def transposed(*shape, dtype=torch.float32):
    """A [m, n] view with strides (1, m), the transpose of a fresh [n, m] tensor."""
    return torch.randn(tuple(reversed(shape)), dtype=dtype, requires_grad=True).t()


def grad_of(outputs, inputs):
    """Run the backward of every output (all reach the backward kernels) to the inputs that take gradients."""
    inputs = [i for i in inputs if i is not None and i.requires_grad]
    torch.autograd.grad(sum(out.float().sum() for out in outputs), inputs, allow_unused=True)


# ---- the kernel families at small odd shapes; each case runs forward and backward where the op has one ----
# Sizes: every kernel loop runs at least twice with a partial last tile (rows, columns, samples; the interpreter's
# tiles of the head and MLP are 16-32 wide), k = 1, D and P not powers of two.

def gaussian_sample_cases():
    batch, dim = 11, 5  # k = 7: 77 rows, two forward tiles of 64; D = 5: a partial column block
    for k in (1, 7):
        for estimator in ("iwae", "stl", "dreg"):
            yield f"k={k} {estimator} chunk halves", dict(k=k, estimator=estimator, params=halves(batch, dim))
        yield f"k={k} given prior halves, eps", dict(k=k, params=halves(batch, dim), prior=halves(batch, dim),
                                                      eps=torch.randn(k, batch, dim))
        yield f"k={k} per-sample params and prior", dict(k=k, params=(rand(k, batch, dim), rand(k, batch, dim)),
                                                          prior=(rand(k, batch, dim), rand(k, batch, dim)))
        yield f"k={k} transposed params, no prior, scaled", dict(k=k, params=(transposed(batch, dim),
                                                                              transposed(batch, dim)),
                                                                 include_prior=False, scale=torch.tensor(0.5))
        for output in ("z", "log_weight"):
            yield f"k={k} gradient of {output} only", dict(k=k, params=halves(batch, dim), outputs=output)
    yield "k=20", dict(k=20, params=halves(batch, dim))  # the backward's two sample blocks of 16
    yield "k=1 D=1030", dict(k=1, params=halves(2, 1030))  # the forward's two column tiles of 1024
    # k = 9 in 3 splits (MIN_SAMPLES_PER_SPLIT lowered): partial sums, and dreg's weight total
    for estimator in ("iwae", "dreg"):
        yield f"k=9 split {estimator} prior", dict(k=9, estimator=estimator, params=halves(batch, dim),
                                                   prior=halves(batch, dim), split=True)


def run_gaussian_sample(k, params, estimator="iwae", prior=(None, None), eps=None, include_prior=True, scale=None,
                        outputs="both"):
    z, log_weight = ops.gaussian_sample(*params, k, eps, *prior, estimator, None, include_prior, scale)
    grad_of({"both": (z, log_weight), "z": (z,), "log_weight": (log_weight,)}[outputs], (*params, *prior))


def log_likelihood_cases():
    k, batch, pixels = 3, 90, 13  # 270 rows: two tiles of 256 rows
    for k_ in (1, k):
        yield f"k={k_} bernoulli", dict(kind="bernoulli", first=rand(k_, batch, pixels), x=torch.rand(batch, pixels))
        yield f"k={k_} gaussian halves", dict(kind="gaussian", first=halves(k_, batch, pixels),
                                              x=torch.randn(batch, pixels))
    yield "P=1030 gaussian halves", dict(kind="gaussian", first=halves(2, 3, 1030), x=torch.randn(3, 1030))
    for reduction in ("mean", "sum", "none"):
        yield f"bernoulli iwae_loss {reduction}", dict(kind="bernoulli_loss", first=rand(k, batch, pixels),
                                                       x=torch.rand(batch, pixels), reduction=reduction)
        yield f"gaussian iwae_loss halves {reduction}", dict(kind="gaussian_loss", first=halves(k, batch, pixels),
                                                             x=torch.randn(batch, pixels), reduction=reduction)
    yield "bernoulli iwae_loss k=9 split", dict(kind="bernoulli_loss", first=rand(9, batch, pixels),
                                                x=torch.rand(batch, pixels), reduction="mean", split=True)


def run_log_likelihood(kind, first, x, reduction=None):
    if kind == "bernoulli":
        grad_of((ops.bernoulli_log_likelihood(first, x),), (first,))
    elif kind == "gaussian":
        grad_of((ops.gaussian_log_likelihood(*first, x),), first)
    else:
        params = first if kind == "gaussian_loss" else (first,)
        latent = rand(params[0].shape[0], x.shape[0])
        loss_fn = ops.gaussian_iwae_loss if kind == "gaussian_loss" else ops.bernoulli_iwae_loss
        grad_of((loss_fn(*params, x, latent, reduction),), (*params, latent))


def logsumexp_cases():
    batch = 67  # two example blocks of 64, the second of 3 columns
    for k in (1, 9, 70):  # 70: two sample blocks of 64; 9 in three splits
        yield f"k={k} bound and weights", dict(log_w=rand(k, batch), split=k == 9)
    yield "fold", dict(log_w=rand(7, batch, grad=False), fold=True)
    yield "bound of a transposed log_w", dict(log_w=transposed(5, batch))


def run_logsumexp(log_w, fold=False):
    if fold:
        state = torch.full((log_w.shape[1],), float("-inf")), torch.zeros(log_w.shape[1])
        ops.fold_max_sum(*state, log_w)
        return
    grad_of((ops.iwae_bound(log_w),), (log_w,))
    ops.normalized_weights(log_w.detach())


def decoder_head_cases():
    batch, width, pixels = 7, 37, 45  # H = 37: three slices of 16, two dh passes of 32; P = 45: two tiles of 32
    for k in (1, 3):
        yield f"k={k} H={width} P={pixels}", dict(hidden=rand(k, batch, width), weight=rand(pixels, width),
                                                  bias=rand(pixels), x=torch.rand(batch, pixels))
    yield "transposed weight, sliced x", dict(hidden=rand(3, batch, width), weight=transposed(pixels, width),
                                              bias=rand(pixels), x=torch.rand(batch, pixels + 4)[:, 2:-2])


def run_decoder_head(hidden, weight, bias, x):
    grad_of((ops.bernoulli_decoder_log_likelihood(hidden, weight, bias, x),), (hidden, weight, bias))


def decoder_mlp_cases():
    batch, sizes = 7, (19, 21, 17, 45)  # D, H1, H2, P: two slices or blocks of 16 or 32 each, the last partial
    for k in (1, 3):  # k = 3: 21 rows, two row tiles of 16
        for latent in (False, True):
            weights = [rand(out, size, grad=False) for size, out in zip(sizes, sizes[1:])]
            biases = [rand(out, grad=False) for out in sizes[1:]]
            yield f"k={k} D, H1, H2, P={sizes} latent={latent}", dict(
                z=rand(k, batch, sizes[0], grad=False), weights=weights, biases=biases,
                x=torch.rand(batch, sizes[-1]), latent=rand(k, batch, grad=False) if latent else None)


def run_decoder_mlp(z, weights, biases, x, latent):
    ops.bernoulli_mlp_decoder_log_likelihood(z, weights, biases, x, latent)


def categorical_cases():
    batch, steps, vocab = 2, 3, 300  # V = 300: two vocabulary chunks of 256; k = 3: 18 rows, two blocks of 16
    for k in (1, 3):
        yield f"k={k} V={vocab}", dict(logits=rand(k, batch, steps, vocab), tokens=torch.randint(vocab, (batch, steps)),
                                       mask=(torch.rand(batch, steps) > 0.3).float())


def run_categorical(logits, tokens, mask):
    grad_of((ops.categorical_log_likelihood(logits, tokens, mask),), (logits,))


def local_reparam_cases():
    rows, inner, outputs = 35, 37, 33  # two blocks of 32 in each of M, K, N
    for bias in (True, False):
        for noise in (True, False):
            yield f"bias={bias} noise={noise}", dict(
                a=rand(rows, inner), mu=rand(outputs, inner), var=torch.rand(outputs, inner),
                bias=rand(outputs) if bias else None, noise=torch.randn(rows, outputs) if noise else None)
    yield "transposed a", dict(a=transposed(rows, inner), mu=rand(outputs, inner), var=torch.rand(outputs, inner),
                               bias=None, noise=None)


def run_local_reparam(a, mu, var, bias, noise):
    grad_of((ops.local_reparam_linear(a, mu, var, bias, noise, None),), (a, mu, var, bias))


# family (aot_report's names) -> (its cases: (label, keyword arguments of its runner; split=True lowers the split-k
# threshold), its runner)
FAMILIES = {"gaussian_sample": (gaussian_sample_cases, run_gaussian_sample),
            "log_likelihood": (log_likelihood_cases, run_log_likelihood),
            "logsumexp": (logsumexp_cases, run_logsumexp), "decoder_head": (decoder_head_cases, run_decoder_head),
            "decoder_mlp": (decoder_mlp_cases, run_decoder_mlp), "categorical": (categorical_cases, run_categorical),
            "local_reparam": (local_reparam_cases, run_local_reparam)}


def family_cases():
    torch.manual_seed(0)
    return [(family, label, case) for family, (cases, _) in FAMILIES.items() for label, case in cases()]


CHECKED = {}  # family -> the kernels its cases ran under the checker in this process, with their accesses


def run_case(family, case, monkeypatch):
    case = dict(case)
    if case.pop("split", False):
        monkeypatch.setattr(utils, "MIN_SAMPLES_PER_SPLIT", 3)  # k = 9: three splits, in every split-k kernel
    with check_accesses() as checked:
        FAMILIES[family][1](**case)
    monkeypatch.undo()
    for kernel, accesses in checked.items():
        CHECKED.setdefault(family, {}).setdefault(kernel, 0)
        CHECKED[family][kernel] += accesses


@pytest.mark.parametrize("family, case", [pytest.param(family, case, id=f"{family}: {label}")
                                          for family, label, case in family_cases()])
def test_kernels_stay_in_bounds(family, case, monkeypatch):
    run_case(family, case, monkeypatch)


def test_every_family_and_kernel_is_checked(monkeypatch):
    """The families are aot_report's, and every kernel each launches had its accesses checked by its cases: those
    run above, or here the cases of a family none of them ran (this test run alone)."""
    aot_report = _aot_report()
    assert set(FAMILIES) == set(aot_report.CASES)
    for family in FAMILIES:
        if family not in CHECKED:
            for _, case in FAMILIES[family][0]():
                run_case(family, case, monkeypatch)
        launched = aot_report.launched_kernels(importlib.import_module(f"iwae_kernels.ops.{family}"))
        unchecked = {kernel for kernel in launched if not CHECKED[family].get(kernel)}
        assert not unchecked, f"{family}: launched, but no case ran it under the out-of-bounds checker: {unchecked}"


# ---- the checker can fail ----

@triton.jit
def _copy_kernel(src_ptr, dst_ptr, N, EXTRA: tl.constexpr, BLOCK: tl.constexpr):
    """dst[i] = src[i] for i < N + EXTRA: EXTRA = 1 reads one element past src's end (a mask off by one)."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    values = tl.load(src_ptr + offsets, mask=offsets < N + EXTRA, other=0.0)
    tl.store(dst_ptr + offsets, values, mask=offsets < N)


@triton.jit
def _store_kernel(dst_ptr, N, EXTRA: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offsets, tl.zeros([BLOCK], tl.float32), mask=offsets < N + EXTRA)


def _copy(src, dst, extra):
    _copy_kernel[(triton.cdiv(dst.numel(), 8),)](src, dst, dst.numel(), EXTRA=extra, BLOCK=8)


def test_masked_in_bounds_kernel_passes():
    src, dst = torch.randn(13), torch.empty(13)
    with check_accesses():
        _copy(src, dst, extra=0)
    torch.testing.assert_close(dst, src)


def test_read_one_past_the_end_raises():
    src, dst = torch.randn(13), torch.empty(13)
    with check_accesses(), pytest.raises(OutOfBoundsError, match=r"_copy_kernel: load at program \(1, 0, 0\).*src_ptr"
                                                                  r".*first at 52 bytes \(element offset 13\)"):
        _copy(src, dst, extra=1)


def test_write_one_past_the_end_raises():
    with check_accesses(), pytest.raises(OutOfBoundsError, match=r"_store_kernel: store .*dst_ptr.*offset 13\)"):
        _store_kernel[(2,)](torch.empty(13), 13, EXTRA=1, BLOCK=8)


def test_read_past_a_chunk_half_into_its_neighbour_raises():
    """mean, logvar = out.chunk(2, -1): one past mean's row end is logvar's first element, an element of the
    launch's other argument, and still an error; mean's row itself passes."""
    mean, logvar = torch.randn(3, 26).chunk(2, dim=-1)
    with check_accesses():
        _copy_kernel[(1,)](mean, logvar, 13, EXTRA=0, BLOCK=16)
    with check_accesses(), pytest.raises(OutOfBoundsError, match="1 of 14 masked-in lanes outside src_ptr"):
        _copy_kernel[(1,)](mean, logvar, 13, EXTRA=1, BLOCK=16)


def test_read_past_a_tensor_end_into_a_larger_storage_raises():
    """A view of a bigger storage: the element past the view is in the storage, not in the view."""
    storage = torch.randn(20)
    src, dst = storage[:13], torch.empty(13)
    with check_accesses(), pytest.raises(OutOfBoundsError, match=r"element offset 13\)"):
        _copy(src, dst, extra=1)


def test_a_missing_interpreter_hook_fails_loudly(monkeypatch):
    """A Triton whose interpreter lacks a hook gets an error, never a checker that checks nothing."""
    from triton.runtime import interpreter

    monkeypatch.delattr(interpreter.InterpreterBuilder, "create_masked_store")
    with pytest.raises(SanitizerUnavailable, match="create_masked_store"), check_accesses():
        pass
