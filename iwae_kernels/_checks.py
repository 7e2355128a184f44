"""Argument checks done once, at the public functions, before any kernel runs; messages name the argument."""

import operator

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name, value, ndims, *, like=None):
    """A floating tensor with one of ``ndims`` dims and no empty dim; same dtype and device as ``like``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating dtype {FLOAT_DTYPES}, got {value.dtype}")
    if value.dim() not in ndims:
        expected = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name}: expected a {expected} tensor, got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(value.shape)}")
    if like is not None:
        like_name, like_value = like
        if value.device != like_value.device:
            raise ValueError(f"{name}: expected device {like_value.device} (as {like_name}), got {value.device}")
        if value.dtype != like_value.dtype:  # e.g. float32 noise beside an autocast encoder's bfloat16 mu: say the fix
            raise TypeError(f"{name}: expected dtype {like_value.dtype} (as {like_name}), got {value.dtype}; pass "
                            f"{name}.to({like_name}.dtype)")


def check_shape(name, value, expected):
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(value.shape)}")


def check_same_device(name, value, *, like):
    """``value`` on the device of ``like``, a (name, tensor) pair (as ``check_tensor``'s)."""
    like_name, like_value = like
    if value.device != like_value.device:
        raise ValueError(f"{name}: expected device {like_value.device} (as {like_name}), got {value.device}")


def check_sample_count(k):
    """k >= 1 as a Python int; numpy and other integer types (anything with __index__ but bool) are accepted."""
    return check_positive_int("k", k)


def check_positive_int(name, value):
    """``value`` >= 1 as a Python int; numpy and other integer types (anything with __index__ but bool) are
    accepted."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__") or isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected an int >= 1, got {type(value).__name__}")
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_finite(name, value):
    """Opt-in value check (it syncs the device): no NaN or inf in ``value``."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: contains NaN or inf")


def check_unit_interval(name, value):
    """Opt-in value check: Bernoulli targets must lie in [0, 1] (a NaN is named as such)."""
    if bool(torch.isnan(value).any()):
        raise ValueError(f"{name}: contains NaN (Bernoulli targets must lie in [0, 1])")
    if not bool(((value >= 0) & (value <= 1)).all()):
        raise ValueError(f"{name}: Bernoulli targets must lie in [0, 1]")
