"""``python -m iwae_kernels selftest [--json PATH]``: does every op of every backend that can run here compute
what the float64 reference computes?

It prints the versions and the device, which backends can run here (and why not where not), then runs every op of
``contract.OPS`` at small odd shapes on each backend that can run (a CUDA GPU: triton and cuda; a CPU: torch, and
triton under ``TRITON_INTERPRET=1`` in a subprocess, since the interpreter must be chosen before Triton's kernels
are defined), forward and backward with every estimator of ``ESTIMATORS`` (those that act on the log-weights both
through ``estimator_bound`` and end to end through ``iwae_loss``), in float32 and bfloat16. The reference is the torch
backend in float64 on the CPU (the tests check it against independent float64 oracles), on the same inputs rounded
to the checked dtype, so only the op's own arithmetic differs. Exit status 0 only if every check holds.

With ``IWAE_KERNELS_BACKEND`` set it checks that backend alone (and says so); an unknown backend, or one that cannot
run here (cuda on a CPU), is a one-line error with exit status 2, as for the command line's train and evaluate.

Error of a check: max |got - reference| over its tensors, divided by max(1, max |reference|) (the tensor's scale).
"""

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Optional

import numpy
import torch

from . import functional as F
from ._env import triton_interpreting
from .backend import BACKENDS, ENV_VAR, backend_name
from .contract import OPS, accumulation_dtype
from .estimators import ESTIMATORS, FIXED_SAMPLE_ESTIMATORS, ROUTED_ESTIMATORS

DTYPES = (torch.float32, torch.bfloat16)
# The allowed error (see the module docstring) per dtype the op runs in. float32: a few float32 roundings of
# sums over at most 13 terms; bfloat16: outputs and gradients rounded to bfloat16 (2^-8 relative) a few times.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2}
K, BATCH, DIM, OBS, HIDDEN, STEPS, VOCAB = 3, 5, 7, 11, 13, 4, 9
GAUSSIAN_SAMPLE_ESTIMATORS = ("iwae", "vae", "stl", "dreg", "iwae-resample")
BOUND_ESTIMATORS = ("iwae", "vae", "stl", "dreg")  # iwae-resample: resampled_rows (it picks one sample)
# The estimators that act on the log-weights, with their options, checked through estimator_bound (log-weights in)
# and iwae_loss (end to end) on LOG_WEIGHT_K samples: 2 groups of K for miwae and piwae. piwae and rws-dreg also
# take log_w_fixed, rws and vimco log_q (``estimators``); renyi is checked with log_q too (its fixed-sample form).
LOG_WEIGHT_ESTIMATORS = {"miwae": {"groups": 2}, "ciwae": {"ciwae_beta": 0.3}, "renyi": {"renyi_alpha": 0.5},
                         "piwae": {"groups": 2}, "rws": {}, "rws-dreg": {}, "vimco": {}}
LOG_WEIGHT_K = 2 * K
RESAMPLED_OP = "resampled_iwae_bound[iwae-resample]"  # resampled_rows' op
EXIT_USER_ERROR = 2  # as the command line's: a backend that is unknown or cannot run here
SUBPROCESS_TIMEOUT_S = 300
# Checks that Triton's interpreter cannot make: it multiplies bfloat16 tensors wrongly (x * x of a loaded bfloat16
# tensor comes out as garbage), and this kernel squares its bfloat16 input before the matmul. A GPU runs them.
INTERPRETER_GAPS = {("local_reparam_linear", torch.bfloat16): "the interpreter's bfloat16 multiply is wrong"}


@dataclasses.dataclass
class Record:
    """One row of the table: an op (with its estimator in brackets), a backend and dtype, and one check; ok is
    None for a check skipped (its ``check`` says why)."""

    op: str
    backend: str
    dtype: str
    check: str
    error: float
    tolerance: float
    ok: Optional[bool]


@dataclasses.dataclass
class Case:
    """An op's call on float inputs (cast to the checked dtype; those in ``grads`` need a gradient) and ``extra``
    ones (integer tokens) that only move to the device. ``call(backend, **tensors)`` returns the outputs."""

    op: str
    inputs: dict
    grads: tuple
    call: object
    extra: dict = dataclasses.field(default_factory=dict)


def versions():
    """Python, torch, triton, numpy and CUDA versions, and the device: a dict of strings."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
            "numpy": numpy.__version__, "cuda": torch.version.cuda or "none (a CPU build of torch)",
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "")}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        info |= {"device": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    else:
        info |= {"device": f"cpu ({platform.machine()})", "compute_capability": "none"}
    return info


def check_device():
    """Where the compiled backends are checked: the GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backend_availability(device):
    """{backend: None where it can run on ``device``, else the reason it cannot (``backend_name``'s message)}."""
    status = {}
    for name in BACKENDS:
        try:
            backend_name(name, device)
            status[name] = None
        except ValueError as why:
            status[name] = str(why)
    return status


def _randn(gen, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


def _binary(gen, *shape):
    return torch.rand(*shape, generator=gen, dtype=torch.float64).round()


def op_cases(seed=0):
    """One Case per op of ``contract.OPS`` (gaussian_sample once per estimator), float64 inputs on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    sample = {"mu": _randn(gen, BATCH, DIM), "logvar": _randn(gen, BATCH, DIM, scale=0.5),
              "eps": _randn(gen, K, BATCH, DIM), "prior_mu": _randn(gen, BATCH, DIM, scale=0.5),
              "prior_logvar": _randn(gen, BATCH, DIM, scale=0.5)}
    logits, x = _randn(gen, K, BATCH, OBS, scale=2.0), _binary(gen, BATCH, OBS)
    mean, logvar, latent = _randn(gen, K, BATCH, OBS), _randn(gen, K, BATCH, OBS, scale=0.5), _randn(gen, K, BATCH)
    log_w = _randn(gen, K, BATCH, scale=3.0)
    sizes = (DIM, HIDDEN, HIDDEN + 4, OBS)
    mlp = {"z": _randn(gen, K, BATCH, DIM), "x": x, "latent": latent}
    for index, (width, out) in enumerate(zip(sizes, sizes[1:])):
        mlp[f"w{index}"], mlp[f"b{index}"] = _randn(gen, out, width) / width**0.5, _randn(gen, out)
    tokens = torch.randint(0, VOCAB, (BATCH, STEPS), generator=gen)
    mask = (torch.rand(BATCH, STEPS, generator=gen) < 0.8).double()

    def sampler(estimator):
        return lambda backend, mu, logvar, eps, prior_mu, prior_logvar: F.gaussian_sample(
            mu, logvar, K, eps=eps, prior_mu=prior_mu, prior_logvar=prior_logvar, estimator=estimator,
            backend=backend)

    def streaming_fold(backend, log_w):
        acc = F.StreamingIWAEBound(BATCH, device=log_w.device, dtype=accumulation_dtype(log_w.dtype), backend=backend)
        for chunk in log_w.split(2):  # two folds: the state carried from one chunk into the next
            acc.update(chunk)
        return acc.running_max, acc.running_sum

    def mlp_decoder(backend, z, x, latent, **layers):
        with torch.no_grad():
            return F.bernoulli_mlp_decoder_log_likelihood(
                z,
                [layers[f"w{i}"] for i in range(3)],
                [layers[f"b{i}"] for i in range(3)],
                x=x,
                latent_log_weight=latent,
                backend=backend,
            )

    cases = [
        Case(
            f"gaussian_sample[{est}]",
            sample,
            ("mu", "logvar", "prior_mu", "prior_logvar"),
            call=sampler(est),
        )
        for est in GAUSSIAN_SAMPLE_ESTIMATORS
    ]
    cases += [
        Case(
            "bernoulli_log_likelihood",
            {"logits": logits, "x": x},
            ("logits",),
            call=lambda backend, logits, x: F.bernoulli_log_likelihood(logits, x, backend=backend),
        ),
        Case(
            "gaussian_log_likelihood",
            {"mean": mean, "logvar": logvar, "x": _randn(gen, BATCH, OBS)},
            ("mean", "logvar"),
            call=lambda backend, mean, logvar, x: F.gaussian_log_likelihood(mean, logvar, x, backend=backend),
        ),
        Case(
            "bernoulli_iwae_loss",
            {"logits": logits, "x": x, "latent": latent},
            ("logits", "latent"),
            call=lambda backend, logits, x, latent: F.bernoulli_iwae_loss(
                logits,
                x,
                latent,
                reduction="none",
                backend=backend,
            ),
        ),
        Case(
            "gaussian_iwae_loss",
            {"mean": mean, "logvar": logvar, "x": _randn(gen, BATCH, OBS), "latent": latent},
            ("mean", "logvar", "latent"),
            call=lambda backend, mean, logvar, x, latent: F.gaussian_iwae_loss(
                mean,
                logvar,
                x,
                latent_log_weight=latent,
                reduction="none",
                backend=backend,
            ),
        ),
        Case(
            "bernoulli_decoder_log_likelihood",
            {"hidden": _randn(gen, K, BATCH, HIDDEN), "weight": _randn(gen, OBS, HIDDEN) / HIDDEN**0.5,
             "bias": _randn(gen, OBS), "x": x},
            ("hidden", "weight", "bias"),
            call=lambda backend, hidden, weight, bias, x: F.bernoulli_decoder_log_likelihood(
                hidden,
                weight,
                bias,
                x=x,
                backend=backend,
            ),
        ),
        Case("bernoulli_mlp_decoder_log_likelihood", mlp, (), call=mlp_decoder),  # forward only (evaluation)
        Case(
            "categorical_log_likelihood",
            {"logits": _randn(gen, K, BATCH, STEPS, VOCAB, scale=2.0), "mask": mask},
            ("logits",),
            call=lambda backend, logits, mask, tokens: F.categorical_log_likelihood(
                logits,
                tokens,
                mask,
                backend=backend,
            ),
            extra={"tokens": tokens},
        ),
        Case(
            "iwae_bound",
            {"log_w": log_w},
            ("log_w",),
            call=lambda backend, log_w: F.iwae_bound(log_w, backend=backend),
        ),
        Case(
            "normalized_weights",
            {"log_w": log_w},
            ("log_w",),
            call=lambda backend, log_w: F.normalized_weights(log_w, backend=backend),
        ),
        Case("fold_max_sum", {"log_w": log_w}, (), call=streaming_fold),
        Case(
            "local_reparam_linear",
            {"a": _randn(gen, BATCH, DIM), "mu": _randn(gen, OBS, DIM) / DIM**0.5,
             "var": 0.1 * torch.rand(OBS, DIM, generator=gen, dtype=torch.float64), "bias": _randn(gen, OBS),
             "noise": _randn(gen, BATCH, OBS)},
            ("a", "mu", "var", "bias"),
            call=lambda backend, a, mu, var, bias, noise: F.local_reparam_linear(
                a,
                mu,
                var,
                bias=bias,
                noise=noise,
                backend=backend,
            ),
        ),
    ]
    assert {case.op.split("[")[0] for case in cases} == set(OPS), "a contract op without a selftest case"
    return cases


def _bound_inputs(seed, k=K):
    """mu, logvar [B, D], eps [k, B, D], a linear decoder's weight [D, P] and binary x [B, P], float64."""
    gen = torch.Generator().manual_seed(seed)
    return {"mu": _randn(gen, BATCH, DIM), "logvar": _randn(gen, BATCH, DIM, scale=0.5),
            "eps": _randn(gen, k, BATCH, DIM), "weight": _randn(gen, DIM, OBS) / DIM**0.5, "x": _binary(gen, BATCH, OBS)}


def bound_cases(seed=1):
    """The estimators end to end: gaussian_sample, a linear decoder and the bound (bernoulli_iwae_loss, or the
    k-sample ELBO for vae); the gradients reach mu, logvar and the decoder's weight."""
    inputs = _bound_inputs(seed)

    def loss(estimator):
        def call(backend, mu, logvar, eps, weight, x):
            z, latent = F.gaussian_sample(mu, logvar, K, eps=eps, estimator=estimator, backend=backend)
            if estimator == "vae":
                return -(F.bernoulli_log_likelihood(z @ weight, x, backend=backend) + latent).mean()
            return F.bernoulli_iwae_loss(z @ weight, x, latent, backend=backend)
        return call

    return [Case(f"sample+bernoulli_iwae_loss[{est}]", inputs, ("mu", "logvar", "weight"), call=loss(est))
            for est in BOUND_ESTIMATORS]


def estimator_cases(seed=2):
    """The estimators of ``LOG_WEIGHT_ESTIMATORS``: ``estimator_bound`` on log-weights [LOG_WEIGHT_K, B] (and
    log_w_fixed, equal to them, or log_q where the estimator takes it; renyi once more with log_q), the gradients
    reaching each; and ``iwae_loss`` end to end with a linear decoder, the gradients reaching mu, logvar and the
    decoder's weight."""
    gen = torch.Generator().manual_seed(seed)
    log_w, log_q = _randn(gen, LOG_WEIGHT_K, BATCH, scale=3.0), _randn(gen, LOG_WEIGHT_K, BATCH)
    inputs = _bound_inputs(seed, LOG_WEIGHT_K)

    def on_log_weights(estimator, options):
        return lambda backend, **tensors: F.estimator_bound(estimator=estimator, backend=backend, **tensors, **options)

    def end_to_end(estimator, options):
        # The linear decoder as a broadcast product, not z @ weight: a CPU's BLAS threads a [2K * B, D] matmul, and
        # waking its threads costs milliseconds a call on a busy machine, more than the rest of the check.
        return lambda backend, mu, logvar, eps, weight, x: F.iwae_loss(
            x,
            mu,
            logvar,
            decoder=lambda z: (z.unsqueeze(-1) * weight).sum(-2),
            k=LOG_WEIGHT_K,
            estimator=estimator,
            reduction="none",
            eps=eps,
            backend=backend,
            **options,
        )

    cases = []
    for est, options in LOG_WEIGHT_ESTIMATORS.items():
        tensors = {"log_w": log_w} | ({"log_w_fixed": log_w.clone()} if est in ROUTED_ESTIMATORS else {}) | (
            {"log_q": log_q} if est in FIXED_SAMPLE_ESTIMATORS else {})
        cases.append(Case(f"estimator_bound[{est}]", tensors, tuple(tensors), call=on_log_weights(est, options)))
        if est == "renyi":
            cases.append(Case(f"estimator_bound+log_q[{est}]", {"log_w": log_w, "log_q": log_q}, ("log_w", "log_q"),
                              call=on_log_weights(est, options)))
        cases.append(Case(f"iwae_loss[{est}]", inputs, ("mu", "logvar", "weight"), call=end_to_end(est, options)))
    return cases


def _estimator(op):
    """The estimator a record's op names in brackets, or None."""
    return op.split("[", 1)[1].rstrip("]") if "[" in op else None


def covered_estimators():
    """The estimators the checks cover: their ops name them in brackets. ``run_checks`` holds it to ESTIMATORS."""
    ops = [case.op for case in op_cases() + bound_cases() + estimator_cases()] + [RESAMPLED_OP]
    return {_estimator(op) for op in ops} - {None}


def _error(got, want):
    """max |got - want| over the tensors, at the scale max(1, max |want|); NaN anywhere is an infinite error."""
    worst = 0.0
    for a, b in zip(got, want):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        diff = (a - b).abs()
        diff = torch.where(torch.isnan(diff) & ~torch.isnan(b), torch.inf, torch.nan_to_num(diff, nan=0.0))
        worst = max(worst, diff.max().item() / max(1.0, b.abs().max().item()))
    return worst


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _run(case, backend, device, *, dtype, inputs):
    """(outputs, gradients of a fixed random upstream) of ``case`` on ``backend``, ``device``, ``dtype``."""
    leaves = {name: value.to(device, dtype).requires_grad_(name in case.grads) for name, value in inputs.items()}
    outputs = _as_tuple(case.call(backend, **leaves, **{n: v.to(device) for n, v in case.extra.items()}))
    if not case.grads:
        return outputs, ()
    gen = torch.Generator().manual_seed(7)
    # Positive upstream gradients: dreg reads its weights off the one that reaches the log-weight.
    upstream = [(torch.rand(out.shape, generator=gen, dtype=torch.float64) + 0.5).to(device, out.dtype)
                for out in outputs]
    return outputs, torch.autograd.grad(outputs, [leaves[name] for name in case.grads], upstream)


def _rounded(inputs, dtype):
    return {name: value.to(dtype).double() for name, value in inputs.items()}


def check_case(case, backend, device, *, dtype):
    """Records for ``case`` on ``backend``: "forward" and (where the op has one) "backward", each against the
    torch backend in float64 on the CPU run on the same inputs rounded to ``dtype``."""
    gap = INTERPRETER_GAPS.get((case.op, dtype)) if backend != "torch" and triton_interpreting() else None
    if gap:
        return [Record(
            op=case.op,
            backend=backend,
            dtype=_dtype_name(dtype),
            check=f"skipped: {gap}",
            error=float("nan"),
            tolerance=TOLERANCE[dtype],
            ok=None,
        )]
    inputs = _rounded(case.inputs, dtype)
    want = _run(case, "torch", torch.device("cpu"), dtype=torch.float64, inputs=inputs)
    try:
        got = _run(case, backend, device, dtype=dtype, inputs=inputs)
    except Exception as failure:  # a crash is a failed check, reported with its message
        return [_crash_record(case.op, backend, dtype, failure=failure)]
    checks = [("forward", got[0], want[0])] + ([("backward", got[1], want[1])] if case.grads else [])
    return [_record(case.op, backend, dtype, check=check, error=_error(g, w)) for check, g, w in checks]


def _record(op, backend, dtype, *, check, error):
    return Record(
        op=op,
        backend=backend,
        dtype=_dtype_name(dtype),
        check=check,
        error=error,
        tolerance=TOLERANCE[dtype],
        ok=error <= TOLERANCE[dtype],
    )


def _crash_record(op, backend, dtype, *, failure):
    message = f"{type(failure).__name__}: {failure}".splitlines()[0][:200]
    return Record(
        op=op,
        backend=backend,
        dtype=_dtype_name(dtype),
        check=f"raised {message}",
        error=float("inf"),
        tolerance=TOLERANCE[dtype],
        ok=False,
    )


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def resampled_rows(backend, device, dtype, *, seed=1):
    """iwae-resample end to end (``resampled_iwae_bound``): its value is L_k, and each example's gradient is that
    of one of its k samples' log-weights (the resampled one), so the check takes the nearest of the k."""
    inputs = _rounded(_bound_inputs(seed), dtype)

    def leaves_and_log_weights(name, where, kind):
        t = {n: v.to(where, kind).requires_grad_(n in ("mu", "logvar")) for n, v in inputs.items()}

        def log_weights(noise):
            z, latent = F.gaussian_sample(t["mu"], t["logvar"], noise[0].shape[0], eps=noise[0], backend=name)
            return F.bernoulli_log_likelihood(z @ t["weight"], t["x"], backend=name) + latent
        return t, log_weights

    ref, ref_log_weights = leaves_and_log_weights("torch", "cpu", torch.float64)
    ref_log_w = ref_log_weights([ref["eps"]])
    per_sample = [torch.autograd.grad(ref_log_w[j].sum(), [ref["mu"], ref["logvar"]], retain_graph=True)
                  for j in range(K)]
    op = RESAMPLED_OP
    try:
        got, log_weights = leaves_and_log_weights(backend, device, dtype)
        bound = F.resampled_iwae_bound(log_weights, [got["eps"]], generator=torch.Generator(device).manual_seed(0),
                                       backend=backend)
        grads = torch.autograd.grad(bound.sum(), [got["mu"], got["logvar"]])
    except Exception as failure:
        return [_crash_record(op, backend, dtype, failure=failure)]
    forward = _error([bound], [F.iwae_bound(ref_log_w.detach(), backend="torch")])
    backward = max(min(_error([g[b] for g in grads], [w[b] for w in per_sample[j]]) for j in range(K))
                   for b in range(BATCH))
    return [
        _record(op, backend, dtype, check="forward", error=forward),
        _record(op, backend, dtype, check="backward", error=backward),
    ]


def run_checks(backend, device, dtypes=None):
    """Every check of ``backend`` on ``device`` in each of ``dtypes`` (default ``DTYPES``): a list of Records."""
    assert covered_estimators() == set(ESTIMATORS), "an estimator of ESTIMATORS without a selftest check"
    records = []
    for dtype in DTYPES if dtypes is None else dtypes:
        for case in op_cases() + bound_cases() + estimator_cases():
            records += check_case(case, backend, device, dtype=dtype)
        records += resampled_rows(backend, device, dtype)
    return records


def _subprocess_failure(backend, check):
    """The one failing row of a backend whose checks ran in a subprocess that did not report."""
    return Record(op="(all)", backend=backend, dtype="-", check=check, error=float("inf"), tolerance=0.0, ok=False)


def checks_in_interpreter(backend):
    """``run_checks(backend, cpu)`` in a subprocess with TRITON_INTERPRET=1 (set before Triton defines a kernel)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "records.json")
        env = dict(os.environ, TRITON_INTERPRET="1")
        command = [sys.executable, "-m", "iwae_kernels", "selftest", "--backend", backend, "--json", path, "--quiet"]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return [_subprocess_failure(backend, f"subprocess ran over {SUBPROCESS_TIMEOUT_S} s")]
        if not os.path.exists(path):
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            return [_subprocess_failure(backend, f"subprocess failed (exit {done.returncode}): {tail}")]
        with open(path) as file:
            return [Record(**row) for row in json.load(file)["records"]]


def plan(device):
    """[(backend, how)] for the backends checked on ``device``: how is "here", "interpreter" (a subprocess) or
    the reason it is not checked."""
    status = backend_availability(device)
    if device.type == "cuda":
        return [(name, status[name] or "here") for name in ("triton", "cuda")]
    torch_status = [("torch", status["torch"] or "here")]
    if status["triton"] is None:  # TRITON_INTERPRET=1 is already set in this process
        return torch_status + [("triton", "here")]
    if "TRITON_INTERPRET" in status["triton"]:
        return torch_status + [("triton", "interpreter")]
    return torch_status + [("triton", status["triton"])]


class BackendChoiceError(ValueError):
    """A backend the selftest was told to check (``--backend`` or IWAE_KERNELS_BACKEND) that is unknown or cannot
    run here: a one-line error, exit status ``EXIT_USER_ERROR``."""


def backends_to_check(device, only_backend=None):
    """[(backend, how)] as ``plan`` gives them: ``only_backend`` alone, here; else IWAE_KERNELS_BACKEND's backend
    alone where it is set (in a subprocess where triton needs the interpreter); else ``plan(device)``. A
    BackendChoiceError where the backend chosen is unknown or cannot run on ``device``."""
    if only_backend is not None:
        try:
            return [(backend_name(only_backend, device), "here")]
        except ValueError as why:
            raise BackendChoiceError(f"--backend {only_backend}: {why}") from None
    chosen = os.environ.get(ENV_VAR)
    if not chosen:
        return plan(device)
    how = dict(plan(device)).get(chosen)
    if how in ("here", "interpreter"):
        return [(chosen, how)]
    try:  # not in the plan (torch on a GPU) or not able to run here: backend_name's message names the variable
        return [(backend_name(None, device), "here")]
    except ValueError as why:
        raise BackendChoiceError(str(why)) from None


def format_table(records):
    """The records as an aligned text table: op, backend, dtype, check, max error, tolerance, ok."""
    rows = [("op", "backend", "dtype", "check", "max error", "tolerance", "ok")]
    verdict = {True: "ok", False: "FAIL", None: "skip"}
    rows += [(r.op, r.backend, r.dtype, r.check, f"{r.error:.2e}", f"{r.tolerance:.0e}", verdict[r.ok])
             for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def selftest(only_backend=None, quiet=False, out=sys.stdout):
    """Run the selftest; returns (exit status, versions dict, backend notes dict, records). A backend chosen
    (``only_backend``, else IWAE_KERNELS_BACKEND) that is unknown or cannot run here raises BackendChoiceError."""
    device = check_device()
    todo = backends_to_check(device, only_backend)
    info = versions()
    notes = {name: how for name, how in todo}
    restricted = only_backend is None and os.environ.get(ENV_VAR)
    if restricted:  # the others the plan would check are left out by the variable
        notes |= {name: f"{ENV_VAR}={restricted} (only {restricted} is checked)" for name, how in plan(device)
                  if name not in notes and how in ("here", "interpreter")}
    notes |= {name: why for name, why in backend_availability(device).items() if name not in notes and why}
    if not quiet:
        print("\n".join(f"{name:19s} {value}" for name, value in info.items()), file=out)
        print(f"\nbackends on {device.type}" + (f" ({ENV_VAR}={restricted}: {restricted} only)" if restricted else "")
              + ":", file=out)
        for name in BACKENDS:
            how = notes.get(name, "not checked on this device")
            state = {"here": "checked here", "interpreter": "checked in a subprocess under TRITON_INTERPRET=1"}
            print(f"  {name:7s} {state.get(how, 'not checked: ' + how)}", file=out)
    records = []
    for name, how in todo:
        if how == "here":
            records += run_checks(name, device)
        elif how == "interpreter":
            records += checks_in_interpreter(name)
    if not quiet:
        print("\n" + format_table(records), file=out)
    held, failed = sum(r.ok is True for r in records), sum(r.ok is False for r in records)
    status = 0 if held and not failed else 1
    if not quiet:
        skipped = len(records) - held - failed
        print(f"\nselftest: {held} of {len(records)} checks hold" + (f", {failed} FAIL" if failed else "") +
              (f", {skipped} skipped (a GPU runs them)" if skipped else ""), file=out)
    return status, info, notes, records


def main(argv=None):
    """The ``selftest`` subcommand; returns the exit status (0: every check holds; 1: one does not; 2: the backend
    chosen, by --backend or IWAE_KERNELS_BACKEND, is unknown or cannot run here, said on one line)."""
    parser = argparse.ArgumentParser(prog="python -m iwae_kernels selftest", description=__doc__.split("\n\n")[0],
                                     epilog=f"{ENV_VAR}, where set, chooses the one backend checked.")
    parser.add_argument("--json", metavar="PATH", help="also write the versions, backends and records as JSON")
    parser.add_argument("--backend", choices=BACKENDS, help="check only this backend, in this process")
    parser.add_argument("--quiet", action="store_true", help="print nothing (with --json)")
    args = parser.parse_args(argv)
    try:
        status, info, notes, records = selftest(args.backend, args.quiet)
    except BackendChoiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"status": status, "versions": info, "backends": notes,
                       "records": [dataclasses.asdict(r) for r in records]}, file, indent=1)
    return status
