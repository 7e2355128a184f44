"""Compile every Triton kernel the package launches for NVIDIA GPUs, on a machine without one, and report its resources.

The interpreter (TRITON_INTERPRET=1, what CI runs) accepts kernels a GPU cannot compile or launch: module-level
Python floats, shared-memory tiles over the limit. This report drives the package's own launchers (the ops
functions, forward and backward) with meta tensors while Triton's driver claims an sm_<arch> target, so each
launch compiles (``warmup``: every autotune config) instead of running. Per compiled kernel it records registers
(cuobjdump on the cubin), spill bytes (ptxas -v on the PTX), shared memory (the compiled metadata), whether it
fits the target, and on sm_90 whether a matmul kernel uses wgmma.

Which kernels it must compile is declared, not chosen: every @triton.jit function defined in the package (every
module of iwae_kernels that mentions triton is imported and its JIT functions, autotuned or heuristics-wrapped or
not, are collected; a @triton.jit def nested where an import cannot see it is a problem of its own). Each must be
compiled by a case or reached from a kernel a case compiled: a helper such as ops.utils.dot_acc is inlined into
its callers, so compiling a caller compiles it. "Reached" is read from the source: the names in a compiled
kernel's body (``softplus(y)``, ``utils.dot_acc(...)``, a combine_fn handed to tl.reduce) resolved in its module as
Triton resolves them, followed transitively, plus JIT functions passed as launch arguments. With --only or --cases
only the kernels defined in the named modules are checked.

Writes <out>/aot_report.json (``kernels``: per target, each declared kernel's coverage) and .md; exits 1 on a
compile error, on a declared kernel no case compiled or reached (named module:function), or on a (kernel, case)
none of whose configs fits.

    python benchmarks/aot_report.py --arch 90 80
    python benchmarks/aot_report.py --arch 90 --only decoder_head --out /tmp/aot
    python benchmarks/aot_report.py --arch 90 --cases my_kernels.py   # a file with launchers and CASES
"""

import argparse
import ast
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# Compiling needs the real compiler, never the interpreter; it must be unset before triton is imported.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is what GPUs run

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import JITFunction, KernelInterface  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
RESULTS = Path(__file__).resolve().parent / "results" / "aot"
REGISTER_FILE = 65_536  # 32-bit registers per block, sm_80 and sm_90
# The opt-in maximum of shared memory per block by compute capability (the CUDA C++ Programming Guide's table of
# technical specifications per compute capability): what a compiled kernel must fit in to launch there.
MAX_SHARED_BYTES = {80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376, 90: 232_448}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class AheadOfTimeDriver(DriverBase):
    """A driver for a GPU that is not there: it names the target, so launches compile for it."""

    def __init__(self, arch):
        self.arch = arch

    def is_active(self):
        return True

    # DriverBase requires these two; this driver only compiles, so a call means a launch or a timing slipped
    # through the Recorder, which is a bug in the report: say so rather than return a made-up answer.
    def map_python_to_cpp_type(self, ty):
        raise RuntimeError("ahead-of-time driver: it compiles only, nothing is launched")

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.arch  # Triton keeps one kernel cache per device: one per target here

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("meta")

    def get_benchmarker(self):
        raise RuntimeError("ahead-of-time driver: it compiles only, nothing is timed")


class Recorder:
    """Stands in for ``kernel[grid](...)``: compiles every config of the launch and keeps what came out."""

    def __init__(self):
        self.case, self.compiled, self.errors = None, [], []
        self.arch, self.roots = None, {}  # roots: arch -> {module:function: the JIT functions its cases compiled}

    def launch(self, kernel, grid):
        def warmup(*args, **kwargs):
            try:
                out = kernel.warmup(*args, grid=grid, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compile failure is a finding, reported per launch
                self.errors.append({"kernel": kernel_name(kernel), "case": self.case, "error": _first_line(error)})
                self._cover(kernel, args, kwargs)  # reached by a case: its compile error is the finding
                return
            out = out if isinstance(out, list) else [out]
            for compiled in out:
                self.compiled.append((kernel_name(kernel), self.case, compiled, isinstance(kernel, Autotuner)))
            if out:  # an autotuner whose every config was pruned compiled nothing
                self._cover(kernel, args, kwargs)
        return warmup

    def _cover(self, kernel, args, kwargs):
        roots = self.roots.setdefault(self.arch, {})
        for value in (kernel, *args, *kwargs.values()):  # a JIT function passed as an argument is compiled in too
            if (fn := jit_function(value)) is not None:
                roots[qualified_name(fn)] = fn


def kernel_name(kernel):
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    return f"{fn.fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


def _first_line(error):
    """The error in one line: Triton's compile errors put the source excerpt first and the reason last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    return f"{type(error).__name__}: {text[:300]}"


def launched_kernels(module):
    """The kernels ``module`` launches: its JIT functions (autotuned or not) that appear as ``name[grid]``. Also
    under the interpreter, whose kernels are InterpretedFunctions (tests/ops/test_out_of_bounds.py)."""
    source = Path(module.__file__).read_text()
    return {kernel_name(value) for name, value in vars(module).items()
            if isinstance(value, (JITFunction, Autotuner, InterpretedFunction)) and re.search(rf"\b{name}\[", source)}


# ---- which kernels must be covered: every @triton.jit function in the package ----

def jit_function(value):
    """The @triton.jit function under ``value`` (through @triton.autotune and @triton.heuristics, which wrap it), or
    None. Under the interpreter (TRITON_INTERPRET=1) triton.jit makes an InterpretedFunction, which counts too."""
    while isinstance(value, KernelInterface) and not isinstance(value, (JITFunction, InterpretedFunction)):
        value = getattr(value, "fn", None)
    return value if isinstance(value, (JITFunction, InterpretedFunction)) else None


def launched_functions(module):
    """{module:function: function} for the JIT functions ``module`` launches (``name[grid]`` in its source)."""
    source = Path(module.__file__).read_text()
    return {qualified_name(fn): fn for name, value in vars(module).items()
            if (fn := jit_function(value)) is not None and re.search(rf"\b{name}\[", source)}


def qualified_name(fn):
    """module:function, as Triton names a JITFunction."""
    return f"{fn.fn.__module__}:{fn.fn.__qualname__}"


def package_modules(package="iwae_kernels"):
    """Every module of ``package`` whose source mentions triton (a @triton.jit needs the name), imported."""
    root = Path(importlib.import_module(package).__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] != "__main__" and "triton" in path.read_text():
            names.append(".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:]))))
    return [importlib.import_module(name) for name in names]


def declared_kernels(modules):
    """({module:function: function} for every JIT function the modules define at module level, autotuned,
    heuristics-wrapped or not; the module:function names of @triton.jit defs their source nests inside a function or
    class, which no import reaches, so no case could be checked against them)."""
    found, nested = {}, []
    for module in modules:
        for value in vars(module).values():
            fn = jit_function(value)
            if fn is not None and fn.fn.__module__ == module.__name__:
                found[qualified_name(fn)] = fn
        nested += [name for name in _jit_defs(module) if name not in found]
    return found, nested


def _jit_defs(module):
    """The module:qualname of every def in the module's source with a decorator ending in ``jit``."""
    names = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = prefix + child.name
                if not isinstance(child, ast.ClassDef) and any(_decorator_name(d).endswith("jit")
                                                               for d in child.decorator_list):
                    names.append(f"{module.__name__}:{qualname}")
                visit(child, qualname + (".<locals>." if not isinstance(child, ast.ClassDef) else "."))
            else:
                visit(child, prefix)

    visit(ast.parse(Path(module.__file__).read_text()), "")
    return names


def _decorator_name(node):
    node = node.func if isinstance(node, ast.Call) else node  # @triton.jit(do_not_specialize=...)
    return ast.unparse(node)


def callees(fn):
    """The JIT functions ``fn``'s body names, resolved in its module as Triton resolves them: globals
    (``softplus(y)``), attributes of globals (``utils.dot_acc(...)``) and closure variables. Every name counts, called
    or passed on (a combine_fn for tl.reduce); a local that shadows a global JIT function's name is read as it."""
    (definition,) = ast.parse(textwrap.dedent(inspect.getsource(fn.fn))).body
    namespace = {**fn.fn.__globals__, **inspect.getclosurevars(fn.fn).nonlocals}
    found = {}
    for statement in definition.body:
        for node in ast.walk(statement):
            if (callee := jit_function(_resolve(node, namespace))) is not None:
                found[qualified_name(callee)] = callee
    return found


def _resolve(node, namespace):
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, namespace)
        return None if base is None else getattr(base, node.attr, None)
    return None


def reached(roots):
    """{module:function: how} for the roots (``"compiled"``) and every JIT function they reach through their bodies,
    transitively (``"called from <caller>"``, the first caller found)."""
    how = {name: "compiled" for name in roots}
    todo = list(roots.items())
    while todo:
        caller, fn = todo.pop()
        for name, callee in sorted(callees(fn).items()):
            if name not in how:
                how[name] = f"called from {caller}"
                todo.append((name, callee))
    return how


def coverage(declared, roots):
    """{module:function: how} for every declared kernel: "compiled", "called from <caller>" or "uncovered"."""
    how = reached(roots)
    return {name: how.get(name, "uncovered") for name in sorted(declared)}


def run_on_meta(module):
    """Let the module's torch.library ops run their launchers on meta tensors (their fake kernels do nothing)."""
    for value in vars(module).values():
        if isinstance(value, torch._library.custom_ops.CustomOpDef):
            value.register_kernel("meta", value._init_fn)


# ---- the cases: the package's launchers at the benchmark shapes, every admitted dtype and constexpr branch ----
# Shapes: the loss and training benchmarks' D = 50/100, P = 784 (MNIST), the eval decoder's hidden H = 200.

def meta(*shape, dtype=torch.float32, grad=False):
    return torch.zeros(shape, dtype=dtype, device="meta", requires_grad=grad)


def backward(*outputs, inputs):
    """Backward of the sum of ``outputs`` (those given; one left out gets no gradient) to ``inputs``."""
    torch.autograd.grad(sum(out.sum() for out in outputs), [i for i in inputs if i is not None and i.requires_grad],
                        allow_unused=True)


def gaussian_sample_cases():
    """Each constexpr branch of both kernels, varied one at a time from the loss's default launch."""
    from iwae_kernels import ops

    batch = 20
    variations = {"default": {}, "eps": {"eps": True}, "stl": {"estimator": "stl"}, "dreg": {"estimator": "dreg"},
                  "prior": {"prior": 2}, "prior-per-sample": {"prior": 3}, "params-per-sample": {"params": 3},
                  "no-prior": {"include_prior": False}, "scaled": {"scale": True},
                  "grad-z-only": {"outputs": "z"}, "grad-log-weight-only": {"outputs": "log_weight"},
                  # k = 5000 over B = 20: the backward's split-k (partials, then torch sums them)
                  "k=5000 split": {"k": 5000}, "k=5000 split dreg prior": {"k": 5000, "estimator": "dreg", "prior": 2}}
    for dtype in DTYPES:
        for dim in (50, 100):
            for label, change in variations.items():
                if dim == 100 and label != "default":
                    continue  # D only changes the tile shape
                options = {"k": 5, "eps": False, "estimator": "iwae", "prior": 0, "params": 2, "include_prior": True,
                           "scale": False, "outputs": "both", **change}

                def case(dim=dim, dtype=dtype, options=options):
                    k = options["k"]
                    shape = (k, batch, dim) if options["params"] == 3 else (batch, dim)
                    mu, logvar = meta(*shape, dtype=dtype, grad=True), meta(*shape, dtype=dtype, grad=True)
                    prior_shape = (k, batch, dim) if options["prior"] == 3 else (batch, dim)
                    prior_mu, prior_logvar = ((meta(*prior_shape, dtype=dtype, grad=True),
                                               meta(*prior_shape, dtype=dtype, grad=True))
                                              if options["prior"] else (None, None))
                    eps = meta(k, batch, dim, dtype=dtype) if options["eps"] else None
                    scale = meta(dtype=dtype) if options["scale"] else None
                    z, log_weight = ops.gaussian_sample(mu, logvar, k, eps, prior_mu, prior_logvar, options["estimator"],
                                                        None, options["include_prior"], scale)
                    used = {"both": (z, log_weight), "z": (z,), "log_weight": (log_weight,)}[options["outputs"]]
                    backward(*used, inputs=(mu, logvar, prior_mu, prior_logvar))

                yield f"{_dtype(dtype)} D={dim} {label}", case


def log_likelihood_cases():
    from iwae_kernels import ops
    from iwae_kernels.contract import accumulation_dtype

    for dtype in DTYPES:
        for likelihood in ("bernoulli", "gaussian"):
            def case(dtype=dtype, likelihood=likelihood):
                first, second = meta(5, 20, 784, dtype=dtype, grad=True), meta(5, 20, 784, dtype=dtype, grad=True)
                x = meta(20, 784, dtype=dtype)
                out = (ops.bernoulli_log_likelihood(first, x) if likelihood == "bernoulli"
                       else ops.gaussian_log_likelihood(first, second, x))
                backward(out, inputs=(first, second))

            yield f"{_dtype(dtype)} {likelihood} P=784", case

            def loss_case(dtype=dtype, likelihood=likelihood):  # log-weights with the latent term, weights in backward
                x, latent = meta(20, 784, dtype=dtype), meta(5, 20, dtype=accumulation_dtype(dtype), grad=True)
                if likelihood == "bernoulli":
                    out = meta(5, 20, 784, dtype=dtype, grad=True)
                    loss = ops.bernoulli_iwae_loss(out, x, latent, "mean")
                else:  # strided views, as a Gaussian decoder returns them
                    out = meta(5, 20, 2 * 784, dtype=dtype, grad=True)
                    loss = ops.gaussian_iwae_loss(*out.chunk(2, dim=-1), x, latent, "mean")
                backward(loss, inputs=(out, latent))

            yield f"{_dtype(dtype)} {likelihood} P=784 iwae_loss", loss_case


def logsumexp_cases():
    from iwae_kernels import ops
    from iwae_kernels.contract import accumulation_dtype

    for dtype in DTYPES:
        def bound(dtype=dtype):
            log_w = meta(50, 20, dtype=dtype, grad=True)
            backward(ops.iwae_bound(log_w), inputs=(log_w,))

        def weights(dtype=dtype):
            ops.normalized_weights(meta(50, 20, dtype=dtype))

        def fold(dtype=dtype):
            state = meta(20, dtype=accumulation_dtype(dtype))
            ops.fold_max_sum(state, state, meta(50, 20, dtype=dtype))

        def split_bound(dtype=dtype):  # k = 5000 over B = 20: the split-k fold (partials, then their fold)
            ops.iwae_bound(meta(5000, 20, dtype=dtype))

        yield from ((f"{_dtype(dtype)} {name}", fn) for name, fn in
                    (("iwae_bound", bound), ("normalized_weights", weights), ("fold_max_sum", fold),
                     ("iwae_bound k=5000 split", split_bound)))


@contextlib.contextmanager
def matmul_precision(mode):
    """torch's float32 matmul precision, which the fused matmul kernels follow (ops.utils.dot_precision)."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(mode)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def decoder_head_cases():
    """The head at the benchmarks' widths and a wide H (float32 at torch's default "highest" precision; "high" and
    "medium" at H=200); float64 runs the torch backend."""
    from iwae_kernels import ops

    def head(dtype, width):
        hidden, x = meta(5, 20, width, dtype=dtype, grad=True), meta(20, 784, dtype=dtype)
        weight, bias = meta(784, width, dtype=dtype, grad=True), meta(784, dtype=dtype, grad=True)
        backward(ops.bernoulli_decoder_log_likelihood(hidden, weight, bias, x), inputs=(hidden, weight, bias))

    for mode in ("high", "medium"):
        def case(mode=mode):
            with matmul_precision(mode):
                head(torch.float32, 200)

        yield f"float32 H=200 P=784 precision={mode}", case

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for width in (50, 200, 1000):  # 1000: the backward's several passes over P
            def case(dtype=dtype, width=width):
                head(dtype, width)

            yield f"{_dtype(dtype)} H={width} P=784", case


def decoder_mlp_cases():
    """The paper's decoder (D=50, hidden 200, P=784) in every dtype the kernel takes and float32 precision mode, a
    narrow one (hidden 16, one block) and a wide one (256); float64 runs the torch backend."""
    from iwae_kernels import contract, ops

    def mlp(dtype, dim, width, latent=True):
        sizes = (dim, width, width, 784)
        weights = [meta(out, size, dtype=dtype) for size, out in zip(sizes, sizes[1:])]
        biases = [meta(out, dtype=dtype) for out in sizes[1:]]
        log_weight = meta(5, 20, dtype=contract.accumulation_dtype(dtype)) if latent else None
        ops.bernoulli_mlp_decoder_log_likelihood(meta(5, 20, dim, dtype=dtype), weights, biases,
                                                 meta(20, 784, dtype=dtype), log_weight)

    for mode in ("high", "medium"):
        def case(mode=mode):
            with matmul_precision(mode):
                mlp(torch.float32, 50, 200)

        yield f"float32 D=50 H=200 P=784 precision={mode}", case
    yield "float32 D=50 H=200 P=784 no latent", lambda: mlp(torch.float32, 50, 200, latent=False)
    widest = 256
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for dim, width in ((50, 16), (50, 200), (widest, widest)):
            yield f"{_dtype(dtype)} D={dim} H={width} P=784", lambda dtype=dtype, dim=dim, width=width: mlp(dtype, dim,
                                                                                                            width)


def categorical_cases():
    from iwae_kernels import ops
    from iwae_kernels.contract import accumulation_dtype

    for dtype in DTYPES:
        def case(dtype=dtype):
            logits = meta(5, 4, 12, 1000, dtype=dtype, grad=True)
            mask = meta(4, 12, dtype=accumulation_dtype(dtype))
            tokens = torch.zeros((4, 12), dtype=torch.int64, device="meta")
            backward(ops.categorical_log_likelihood(logits, tokens, mask), inputs=(logits,))

        yield f"{_dtype(dtype)} V=1000", case


def local_reparam_cases():
    """float64 runs the torch backend; the backward is torch matmuls."""
    from iwae_kernels import ops

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for has_bias in (True, False):
            for has_noise in (True, False):
                def case(dtype=dtype, has_bias=has_bias, has_noise=has_noise):
                    a, mu, var = meta(100, 200, dtype=dtype), meta(784, 200, dtype=dtype), meta(784, 200, dtype=dtype)
                    ops.local_reparam_linear(a, mu, var, meta(784, dtype=dtype) if has_bias else None,
                                             meta(100, 784, dtype=dtype) if has_noise else None, None)

                yield f"{_dtype(dtype)} bias={has_bias} noise={has_noise}", case
    for mode in ("high", "medium"):
        def case(mode=mode):
            with matmul_precision(mode):
                a, mu, var = (meta(100, 200), meta(784, 200), meta(784, 200))
                ops.local_reparam_linear(a, mu, var, None, None, None)

        yield f"float32 precision={mode}", case


CASES = {"gaussian_sample": gaussian_sample_cases, "log_likelihood": log_likelihood_cases,
         "logsumexp": logsumexp_cases, "decoder_head": decoder_head_cases, "decoder_mlp": decoder_mlp_cases,
         "categorical": categorical_cases,
         "local_reparam": local_reparam_cases}


def _dtype(dtype):
    return str(dtype).removeprefix("torch.")


# ---- compiling and measuring ----

def specialization(compiled):
    """The kernel's constexpr values and launch options, as one readable string."""
    names = compiled.src.fn.arg_names
    constants = {names[key[0]]: value for key, value in compiled.src.constants.items() if len(key) == 1}
    text = " ".join(f"{name}={_short(value)}" for name, value in constants.items())
    return f"{text} warps={compiled.metadata.num_warps} stages={compiled.metadata.num_stages}"


def _short(value):
    return str(value).removeprefix("triton.language.").removeprefix("constexpr[").removesuffix("]")


def resources(compiled, arch, workdir):
    """(registers, spill store bytes, spill load bytes) from the bundled cuobjdump and ptxas."""
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    cubin, ptx = Path(workdir, "k.cubin"), Path(workdir, "k.ptx")
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(cubin)], capture_output=True,
                           text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    if re.search(r"STACK:0 .*LOCAL:0 ", usage):
        return registers, 0, 0  # no stack frame, nothing spilled: spare the second ptxas run
    ptx.write_text(compiled.asm["ptx"])
    log = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", str(ptx), "-o",
                          str(Path(workdir, "k.o"))], capture_output=True, text=True, check=True).stderr
    stores, loads = (sum(int(n) for n in re.findall(rf"(\d+) bytes spill {kind}", log)) for kind in ("stores", "loads"))
    return registers, stores, loads


def compile_all(arch, families, recorder):
    triton.runtime.driver.set_active(AheadOfTimeDriver(arch))
    recorder.arch = arch
    rows, seen = [], set()
    start, started = len(recorder.compiled), time.time()
    for family, cases in families.items():
        for label, case in cases():
            recorder.case = f"{family}: {label}"
            try:
                case()
            except Exception as error:  # noqa: BLE001 - a launcher that fails on the way to its kernels is a finding
                recorder.errors.append({"kernel": family, "case": recorder.case, "error": _first_line(error)})
    compiling = time.time() - started
    with tempfile.TemporaryDirectory() as workdir:
        for kernel, case, compiled, autotuned in recorder.compiled[start:]:
            if compiled.hash in seen:
                continue  # another case reached the same specialization
            seen.add(compiled.hash)
            registers, stores, loads = resources(compiled, arch, workdir)
            threads = 32 * compiled.metadata.num_warps
            shared = compiled.metadata.shared
            ptx = compiled.asm["ptx"]
            rows.append({
                "arch": f"sm_{arch}", "kernel": kernel, "case": case, "specialization": specialization(compiled),
                "registers": registers, "spill_store_bytes": stores, "spill_load_bytes": loads,
                "shared_bytes": shared, "max_shared_bytes": MAX_SHARED_BYTES[arch], "autotuned": autotuned,
                "fits": shared <= MAX_SHARED_BYTES[arch] and registers * threads <= REGISTER_FILE,
                "matmul": "mma" in ptx, "wgmma": ("wgmma" in ptx) if arch >= 90 and "mma" in ptx else None,
            })
    print(f"sm_{arch}: {compiling:.0f} s compiling, {time.time() - started - compiling:.0f} s reading resources")
    return rows


def problems(rows, errors, kernels, launched=(), nested=()):
    """What makes the report fail: compile errors, declared kernels no case compiled or reached (``kernels``: per
    target, ``coverage``'s answer), @triton.jit defs the enumeration cannot see, (kernel, case)s with no config that
    fits, and autotune configs compiled although they do not fit (their early prune should have dropped them)."""
    found = [f"{e['arch']} {e['kernel']} ({e['case']}): {e['error']}" for e in errors]
    found += [f"{name}: a @triton.jit function inside a function or class; define kernels at module level, where "
              "this report finds them" for name in nested]
    for arch, how in kernels.items():
        found += [f"{arch} {name}: " + ("launched by its module, but compiled by no case" if name in launched else
                                        "no case compiles it and no compiled kernel calls it")
                  + " (give it a CASES entry in benchmarks/aot_report.py, or call it from a kernel that has one)"
                  for name, state in how.items() if state == "uncovered"]
    groups = {}
    for row in rows:
        groups.setdefault((row["arch"], row["kernel"], row["case"]), []).append(row["fits"])
    found += [f"{arch} {kernel} ({case}): no config fits" for (arch, kernel, case), fits in groups.items()
              if not any(fits)]
    found += [f"{r['arch']} {r['kernel']} ({r['case']}): autotune config {r['specialization']} compiled but does not "
              f"fit ({r['shared_bytes']} B shared)" for r in rows if r["autotuned"] and not r["fits"]]
    return found


def summary(rows):
    """Per target: specializations, how many do not fit, spill, and matmul kernels without wgmma on sm_90."""
    lines = []
    for arch in sorted({r["arch"] for r in rows}):
        mine = [r for r in rows if r["arch"] == arch]
        spilling = [r for r in mine if r["spill_store_bytes"]]
        lines.append(f"{arch}: {len(mine)} specializations of {len({r['kernel'] for r in mine})} kernels; "
                     f"{sum(not r['fits'] for r in mine)} do not fit; {len(spilling)} spill "
                     f"(max {max((r['spill_store_bytes'] for r in spilling), default=0)} B stored per thread); "
                     f"max {max(r['registers'] for r in mine)} registers"
                     + (f"; {sum(r['wgmma'] is False for r in mine)} matmul specializations without wgmma"
                        if arch >= "sm_90" else ""))
    return lines


def write(out, rows, errors, failures, env, kernels):
    out.mkdir(parents=True, exist_ok=True)
    (out / "aot_report.json").write_text(json.dumps({**env, "summary": summary(rows), "problems": failures,
                                                     "errors": errors, "kernels": kernels, "rows": rows}, indent=1))
    columns = ["arch", "kernel", "case", "specialization", "registers", "spill_store_bytes", "shared_bytes", "fits",
               "wgmma"]
    lines = ["# Triton kernels compiled ahead of time (no GPU)", "",
             f"- {env['date']}, triton {env['triton']}, torch {env['torch']}, commit {env['git_commit']}, "
             f"{env['seconds']:.0f} s", f"- command: `{env['command']}`",
             "- registers: cuobjdump of the cubin; spills: ptxas -v; shared: compiled metadata, fits: shared memory "
             "and registers x threads within the target's limits; wgmma: sm_90 matmul kernels only",
             "- the specialization column is the kernel's constexprs and launch options; case says which launch reached "
             "it first", "", "## Summary", "", *[f"- {line}" for line in summary(rows)],
             *(["", "## Problems", "", *[f"- {p}" for p in failures]] if failures else []), "",
             "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    fmt = lambda v: "-" if v is None else str(v)
    lines += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in rows]
    (out / "aot_report.md").write_text("\n".join(lines) + "\n")


def load_cases(path):
    """A file of extra kernels: its module (whose launched kernels coverage checks) and its CASES dict."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return [module], module.CASES


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="these kernel families (default: all)")
    parser.add_argument("--cases", help="compile this file's CASES instead of the package's")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.time()
    recorder = Recorder()
    KernelInterface.__getitem__ = lambda kernel, grid: recorder.launch(kernel, grid)
    # Triton's default driver needs a GPU even to import the kernels' modules (autotuners ask for a benchmarker).
    triton.runtime.driver.set_active(AheadOfTimeDriver(args.arch[0]))
    if not set(args.arch) <= set(MAX_SHARED_BYTES):
        parser.error(f"--arch: one of {sorted(MAX_SHARED_BYTES)}")
    if args.cases:
        modules, families = load_cases(args.cases)
    else:
        families = {name: CASES[name] for name in args.only or CASES}
        modules = [importlib.import_module(f"iwae_kernels.ops.{name}") for name in families]
    for module in modules:
        run_on_meta(module)
    # What must be covered: the whole package's kernels, or with --only / --cases those the named modules define.
    declared, nested = declared_kernels(modules if args.cases or args.only else package_modules())
    launched = set().union(*(launched_functions(module) for module in modules))
    print(f"{len(declared)} @triton.jit functions to cover, {len(launched)} of them launched by their modules")
    rows, errors = [], []
    for arch in args.arch:
        first_error = len(recorder.errors)
        rows += compile_all(arch, families, recorder)
        errors += [{**e, "arch": f"sm_{arch}"} for e in recorder.errors[first_error:]]
    kernels = {f"sm_{arch}": coverage(declared, recorder.roots.get(arch, {})) for arch in args.arch}
    failures = problems(rows, errors, kernels, launched, nested)
    from common import environment

    env = {**environment(torch.device("cpu")), "seconds": time.time() - start}
    write(args.out, rows, errors, failures, env, kernels)
    print("\n".join(summary(rows)))
    if failures:
        print("FAILED:\n" + "\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
