"""Helpers shared by the Triton kernel families: accumulation dtype, tile sizes, numerics."""

import contextlib
import functools
import math
from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from .._env import triton_interpreting
from ..contract import accumulation_dtype

# A constexpr so compiled kernels may read it; kernels make it an ACC constant with tl.full (a bare Python float
# would be rounded to float32 first, which float64 results would show).
HALF_LOG_2PI = tl.constexpr(0.5 * math.log(2.0 * math.pi))

# Elements one program holds per tile; a [rows, cols] tile is shaped from the row length.
TILE_ELEMENTS = 4096
MAX_BLOCK_COLS = 1024


@functools.lru_cache(maxsize=None)
def _multiprocessors(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_multiprocessors(device):
    """The SM count of the CUDA ``device`` (its index, or the current device's)."""
    return _multiprocessors(torch.cuda.current_device() if device.index is None else device.index)


# Split-k for kernels whose programs each walk all k samples: cut k once a split would still hold this many
# samples, until SPLIT_PROGRAMS_PER_SM programs run per SM. Off a GPU (the interpreter, the ahead-of-time report's
# meta tensors) there is no SM count to ask, and an H100's 132 SMs stand in, so those runs split as an H100 would.
MIN_SAMPLES_PER_SPLIT = 256
SPLIT_PROGRAMS_PER_SM = 2
H100_MULTIPROCESSORS = 132


def sample_splits(num_samples, programs, device):
    """How many splits of the k samples a kernel launching ``programs`` programs per split uses on ``device``: 1
    unless those programs alone leave the GPU's SMs empty. Reads the constants at each call (tests lower them)."""
    multiprocessors = _device_multiprocessors(device) if device.type == "cuda" else H100_MULTIPROCESSORS
    return max(1, min(num_samples // MIN_SAMPLES_PER_SPLIT, SPLIT_PROGRAMS_PER_SM * multiprocessors // programs))


# A persistent kernel launches this many programs per SM, each taking tiles in turn (two, so one program's loads
# overlap the other's math); off a GPU (the interpreter, the ahead-of-time report) a few, so the tile loop runs.
PERSISTENT_PROGRAMS_PER_SM = 2
PROGRAMS_OFF_GPU = 3


def persistent_programs(device):
    """Programs for a persistent kernel on ``device``: PERSISTENT_PROGRAMS_PER_SM per SM of a GPU."""
    if device.type != "cuda":
        return PROGRAMS_OFF_GPU
    return PERSISTENT_PROGRAMS_PER_SM * _device_multiprocessors(device)


class Launchers(NamedTuple):
    """A compiled backend's kernels for one op family; they fill preallocated, contiguous outputs.

    The family's autograd Function allocates, saves and calls these, so the Triton and CUDA backends share
    one Function per family.
    """

    forward: Callable
    backward: Callable


_DISPATCH_THROUGH_OPS = [False]


def library_op(name, mutates):
    """Register a launcher as the torch.library custom op ``iwae_kernels::<name>`` (writing into ``mutates``):
    torch.compile then treats it as one opaque op (no graph break). In eager mode the launcher runs directly:
    the custom op's dispatch cost about as much host time as the rest of a loss call (benchmarks/bench_host.py).
    The launcher needs type annotations; the registered op is ``.custom_op``."""

    def register(launcher):
        op = torch.library.custom_op(f"iwae_kernels::{name}", mutates_args=mutates)(launcher)

        @functools.wraps(launcher)
        def launch(*args):
            if _DISPATCH_THROUGH_OPS[0] or torch.compiler.is_compiling():
                return op(*args)
            return launcher(*args)

        launch.custom_op = op
        return launch

    return register


@contextlib.contextmanager
def dispatch_through_custom_ops():
    """Inside the block, eager calls go through the custom ops too (as they always do under torch.compile), so
    that torch.library.opcheck and dispatch modes see them."""
    _DISPATCH_THROUGH_OPS[0] = True
    try:
        yield
    finally:
        _DISPATCH_THROUGH_OPS[0] = False


def contiguous_or_none(tensor):
    return None if tensor is None else tensor.contiguous()


def unit_column_stride(tensor):
    """tensor (None stays None) as the strided kernels read it: any strides but the last, which must be 1 (a view
    such as out.chunk(2, -1) is kept; a transposed last dim is copied)."""
    if tensor is None or tensor.stride(-1) == 1 or tensor.shape[-1] == 1:
        return tensor
    return tensor.contiguous()


def dense_empty(tensor):
    """An empty contiguous tensor of tensor's shape and dtype (None for None): the kernels write gradients densely,
    whatever the strides of the input they belong to (empty_like would copy a permuted layout)."""
    return None if tensor is None else torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)


def configs_by_operands(table, key):
    """For an autotuner whose tiles depend on the launch: (every config of ``table`` {key: [triton.Config]}, once,
    and the early prune that keeps those listed under ``key(named_args, kwargs)``)."""
    every = list({id(config): config for configs in table.values() for config in configs}.values())

    def prune(configs, named_args, **kwargs):
        chosen = {id(config) for config in table[key(named_args, kwargs)]}
        return [config for config in configs if id(config) in chosen]

    return every, prune


def cdiv(a, b):
    """ceil(a / b) for launch grids: plain Python, since triton.cdiv is a constexpr function whose call costs
    microseconds of host time at every launch."""
    return -(-a // b)


def next_power_of_2(n):
    """The smallest power of two >= n (n >= 1), in plain Python like ``cdiv``."""
    return 1 << (n - 1).bit_length()


def triton_accumulation_dtype(dtype):
    """The Triton dtype kernels accumulate in for inputs of torch ``dtype``."""
    return tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32


@functools.lru_cache(maxsize=None)  # a few (n_cols, dtype) pairs; called at every launch
def row_tile(n_cols, dtype, elements=TILE_ELEMENTS):
    """(BLOCK_ROWS, BLOCK_COLS) for kernels that reduce rows of length ``n_cols`` in column chunks, holding about
    ``elements`` values of a float32 accumulator per program: half as many for float64 (twice the registers
    each), which would otherwise spill (benchmarks/aot_report.py shows it)."""
    block_cols = min(next_power_of_2(n_cols), MAX_BLOCK_COLS)
    elements //= 2 if accumulation_dtype(dtype) == torch.float64 else 1
    return max(1, elements // block_cols), block_cols


# torch.get_float32_matmul_precision() -> dot's precision for float32 operands, as cuBLAS follows it. "highest":
# tf32x3, three TF32 tensor-core products (float32-level accuracy; "ieee" runs on the FMA units, about 100x slower
# at the decoder head's tiles on an H100); "high": one TF32 product; "medium": bf16 operands. The accumulation is
# float32 in every mode.
FLOAT32_DOT_PRECISION = {"highest": "tf32x3", "high": "tf32", "medium": "bf16"}

# The Triton interpreter multiplies float32 operands exactly whatever tl.dot's input_precision says, and bf16
# operands wrongly (Triton 3.9): under it, dot rounds the operands as a GPU's tensor cores would and multiplies them
# in float32, so CPU tests see each mode's real rounding.
_INTERPRETED_PRECISION = {"tf32": "tf32-emulated", "tf32x3": "tf32x3-emulated", "bf16": "bf16-upcast"}


def dot_precision(dtype):
    """The PRECISION ``dot`` takes for operands of torch ``dtype`` (read at each launch, so a change of
    torch.set_float32_matmul_precision applies to the next call)."""
    if dtype == torch.float32:
        precision = FLOAT32_DOT_PRECISION[torch.get_float32_matmul_precision()]
        return _INTERPRETED_PRECISION[precision] if triton_interpreting() else precision
    if dtype == torch.bfloat16 and triton_interpreting():
        return "upcast"
    return None


@triton.jit
def tf32_truncate(a):
    """float32 a with its mantissa cut to TF32's 10 bits (the 13 low bits zeroed): what a tensor core reads of a
    float32 operand."""
    return (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _tf32_dot(a, b, acc, EMULATED: tl.constexpr):
    """acc + a @ b from one TF32 tensor-core product (EMULATED: float32 products of the truncated operands)."""
    if EMULATED:
        out = tl.dot(tf32_truncate(a), tf32_truncate(b), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision="tf32")
    return out


@triton.jit
def dot_acc(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b, accumulated in acc (float32, or float64 for float64 operands). PRECISION (dot_precision):
    "tf32x3": a = a_hi + a_lo with a_hi = tf32_truncate(a) (exact), likewise b, and acc + a_lo b_hi + a_hi b_lo +
    a_hi b_hi from three TF32 products into acc itself (relative error about 2^-20 a product; tl.dot's own tf32x3
    adds the small products in a second accumulator, as many registers again as the result tile); "tf32": one
    TF32 product; "bf16": operands rounded to bf16; "-emulated" / "upcast": the interpreter's stand-ins (above);
    otherwise tl.dot's input_precision (None: its default)."""
    # One branch per mode, with an else: the compiler still compiles statements after a constexpr-if's return.
    if PRECISION == "tf32x3" or PRECISION == "tf32x3-emulated":
        a_hi, b_hi = tf32_truncate(a), tf32_truncate(b)
        acc = _tf32_dot(a - a_hi, b_hi, acc, PRECISION == "tf32x3-emulated")
        acc = _tf32_dot(a_hi, b - b_hi, acc, PRECISION == "tf32x3-emulated")
        out = _tf32_dot(a_hi, b_hi, acc, PRECISION == "tf32x3-emulated")
    elif PRECISION == "tf32-emulated":
        out = _tf32_dot(a, b, acc, True)
    elif PRECISION == "upcast":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif PRECISION == "bf16-upcast":
        out = tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), acc, input_precision="ieee")
    elif PRECISION == "bf16":
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        out = tl.dot(a, b, acc, input_precision=PRECISION)
    return out


@triton.jit
def dot(a, b, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b [M, N] accumulated in ACC: dot_acc into zeros."""
    return dot_acc(a, b, tl.zeros([a.shape[0], b.shape[1]], ACC), PRECISION)


@triton.jit
def log1p_small(u):
    """log(1 + u) for u in [0, 1], accurate where 1 + u rounds to 1 (no libdevice in the interpreter)."""
    w = 1.0 + u
    return tl.where(w == 1.0, u, tl.log(w) * u / tl.where(w == 1.0, 1.0, w - 1.0))


@triton.jit
def shifted_max(m):
    """The exp shift for a running max: -inf (all log-weights -inf) becomes 0 so exp() gives 0, not NaN."""
    return tl.where(m == float("-inf"), 0.0, m)


LOG2_E = tl.constexpr(1.0 / math.log(2.0))
LN_2 = tl.constexpr(math.log(2.0))


@triton.jit
def softplus(y):
    """log(1 + exp(y)) = max(y, 0) + log1p(exp(-|y|)), never log(sigmoid) (it underflows). float32: from exp2 and
    log2 (one special-function instruction each, no division; the log1p's rounding costs at most float32's unit
    per term); float64: the accurate log1p."""
    u = tl.exp2(-tl.abs(y) * LOG2_E)
    if y.dtype == tl.float64:
        tail = log1p_small(u)
    else:
        tail = tl.log2(1.0 + u) * LN_2
    return tl.maximum(y, 0.0) + tail


@triton.jit
def tanh(a):
    """tanh from one exp2 and a division: sign(a) (1 - e) / (1 + e) with e = exp(-2 |a|), which never overflows
    (no libdevice in the interpreter)."""
    e = tl.exp2(tl.abs(a) * LOG2_E * -2.0)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(a < 0, -t, t)


@triton.jit
def normalized_weight(log_w, running_max, running_sum):
    """exp(log w - max) / sum from a logsumexp fold's (max, sum) of the log-weight's example; 0 when every
    log-weight of the example was -inf (sum 0)."""
    safe_sum = tl.where(running_sum > 0, running_sum, 1.0)
    return tl.where(running_sum > 0, tl.exp(log_w - shifted_max(running_max)) / safe_sum, 0.0)


@triton.jit
def bernoulli_log_prob(x, y):
    """x y - softplus(y): the Bernoulli log-probability of x in [0, 1] under logits y."""
    return x * y - softplus(y)


@triton.jit
def softplus_tile_sum(y, row_mask, col_mask):
    """Per row of a logits tile y [rows, cols], the sum of softplus(y) over its unmasked columns: the Bernoulli
    log-likelihood's x-free part (its x-term comes from data_term_factors)."""
    return tl.sum(tl.where(row_mask[:, None] & col_mask[None, :], softplus(y), 0.0), axis=1)


def data_term_factors(x, weight, bias, *, acc):
    """For logits y = h W^T + b of a Linear with weight [P, H] and bias [P], the Bernoulli data term per row is
    sum_j x_j y_j = h . (W^T x_b) + x_b . b: its per-example factors x W [B, H] and x b [B] for x [B, P], in the
    accumulation dtype ``acc`` and outside autocast (which would round them to half precision). A kernel then
    needs only h and these, never x."""
    device = x.device.type
    autocast = device in ("cpu", "cuda") and torch.is_autocast_enabled(device)
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        x = x.to(acc)
        return x @ weight.to(acc), x @ bias.to(acc)


@triton.jit
def row_block(m_ptr, rows, row_mask, cols, n_cols):
    """m[rows, cols] of a row-major m [*, n_cols] (hidden activations, or a Linear's weight): zero outside it."""
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    return tl.load(m_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)


@triton.jit
def linear_tile(a_ptr, w_ptr, b_ptr, rows, row_mask, cols, n_in, n_out, ACC: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr):
    """y [BLOCK_R, BLOCK_OUT] = a[rows] W[cols]^T + b[cols] of a Linear (a row-major [*, n_in], W [n_out, n_in],
    b [n_out]), the matmul in BLOCK_IN slices of n_in: only [BLOCK_R, BLOCK_IN] and [BLOCK_IN, BLOCK_OUT] operand
    blocks at a time, so any n_in takes the same registers."""
    y = tl.zeros([BLOCK_R, BLOCK_OUT], ACC)
    for k0 in range(0, n_in, BLOCK_IN):
        ks = k0 + tl.arange(0, BLOCK_IN)
        y = dot_acc(row_block(a_ptr, rows, row_mask, ks, n_in), weight_block_t(w_ptr, cols, n_out, ks, n_in), y,
                    PRECISION)
    return y + tl.load(b_ptr + cols, mask=cols < n_out, other=0.0).to(ACC)[None, :]


@triton.jit
def data_term(h_ptr, h_rows, xw_ptr, xb_ptr, x_rows, row_mask, H, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    """sum_j x_j y_j per row = h . (W^T x_b) + x_b . b for h[h_rows] of a row-major h [*, H], from the factors xw =
    x W [B, H] and xb = x b [B] of data_term_factors, x_rows the rows' examples b."""
    total = tl.load(xb_ptr + x_rows, mask=row_mask, other=0.0)
    for h0 in range(0, H, BLOCK_H):
        hidden = h0 + tl.arange(0, BLOCK_H)
        h = row_block(h_ptr, h_rows, row_mask, hidden, H).to(ACC)
        xw = row_block(xw_ptr, x_rows, row_mask, hidden, H)
        total += tl.sum(h * xw, axis=1)
    return total


@triton.jit
def weight_block_t(w_ptr, out_idx, n_out, in_idx, n_in):
    """W[out_idx, in_idx]^T as [len(in_idx), len(out_idx)] for a row-major W [n_out, n_in] (a Linear's weight): a
    matmul's right operand, zero outside W, so padded rows and columns add nothing."""
    mask = (in_idx < n_in)[:, None] & (out_idx < n_out)[None, :]
    return tl.load(w_ptr + out_idx[None, :] * n_in + in_idx[:, None], mask=mask, other=0.0)


@triton.jit
def bernoulli_grad(x, y):
    """d/dy of the Bernoulli log-probability: x - sigmoid(y) (exp overflows to inf harmlessly for y << 0)."""
    return x - 1.0 / (1.0 + tl.exp(-y))
