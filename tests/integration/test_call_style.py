"""Call style inside the package (issue 34): no call between the package's own functions passes more than three
arguments by position, and no internal helper takes more than three positional parameters; the rest go by keyword.

A static check of iwae_kernels/ with ``ast`` (nothing is imported or run). A call is checked when its callee
resolves, by name, to a function or class defined in the package:

- a name defined at the top of the calling module or in an enclosing function (``helper(...)``), or imported
  from a package module (``from .estimators import check_estimator_options``);
- an attribute of an imported package module (``_checks.check_tensor(...)``, ``F.iwae_loss(...)``);
- a method of the enclosing class or of its bases in the package (``self._samples(...)``, ``cls.method(...)``),
  or a method named on a package class (``Class.method(...)``);
- a package class itself (its constructor: ``_HMCSettings(...)``, ``Record(...)``);
- an op of the backend contract (``contract.OPS``) called on a backend's namespace, known only at run time
  (``get_backend(...).bernoulli_iwae_loss(...)``, or through the name the package gives the namespace:
  ``ops = get_backend(...)``, ``ops.gaussian_sample(...)``): held to the torch backend's signature, which
  every backend shares by name (``test_every_backend_op_takes_the_torch_backends_parameter_names``), so
  keywords reach whichever backend runs.

Left out, because these calls must or may be positional:

- Triton kernel launches, ``kernel[grid](...)``: a subscripted callee is not a function the check resolves;
- ``@triton.jit`` functions (device helpers called from kernels, e.g. ``_load_tile``): Triton compiles their
  calls and binds their parameters by position; kernels are out of this rule's scope;
- launchers registered by ``ops.utils.library_op`` (torch.library custom ops, e.g. ``_triton_loss_backward``):
  their eager wrapper takes ``*args`` only, in the order of the op's schema, as a ``torch.ops`` call would;
- ``torch.autograd.Function.apply(...)``: apply takes positional arguments only (it is torch's, so it never
  resolves); the Functions' ``forward``/``backward`` are called by autograd, never by the package;
- methods that override a third-party class's (``THIRD_PARTY_OVERRIDES``: Pyro's ``ELBO._get_trace``), whose
  parameters and calls that class fixes;
- a function that takes ``*args`` after at most three named parameters (``_randn(gen, *shape)``, as
  ``torch.randn(*size)``): the extra positionals are its variadic argument;
- what is not the package's: torch (``torch.ops``, ``nn.Sequential``, tensor methods), builtins, third-party
  code, and callees known only at run time other than a backend's ops (``launchers.forward``, a decoder or
  callback passed in, a call through ``super()``): those cannot be resolved by name; a ``*inputs`` call of a
  backend's loss op (``fused_loss(*inputs, latent, reduction)``) passes its tensors by position, as many as the
  likelihood takes;
- ``*args`` in a call: only the arguments written out by position count.

The second test holds the definitions of the package's internal helpers (a name starting with one underscore,
dunders excepted: Python and PyTorch fix ``__init__``'s caller and ``__torch_dispatch__``'s signature) to at
most three positional parameters (``self``/``cls`` not counted), with the same exclusions (``@triton.jit``,
``library_op``, ``THIRD_PARTY_OVERRIDES``). Public functions keep their documented signatures; calls of them
inside the package are held by the first test.
"""

import ast
import textwrap
from pathlib import Path

import pytest

from iwae_kernels.backend import MODULES as BACKEND_MODULES
from iwae_kernels.contract import IMPLEMENTATIONS, OPS

PACKAGE = Path(__file__).resolve().parents[2] / "iwae_kernels"
MAX_POSITIONAL = 3


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def decorator_names(node):
    """The dotted names of a definition's decorators, calls reduced to what they call (``library_op``)."""
    names = []
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        names.append(ast.unparse(target))
    return names


# Methods that override a third-party base class's: that class fixes their parameters and calls them itself.
# pyro.infer.ELBO._get_trace(model, guide, args, kwargs) is called so by Pyro's ELBOs (and by ours, as Pyro does).
THIRD_PARTY_OVERRIDES = {("iwae_kernels.pyro", "_get_trace")}


def excluded_definition(module, node):
    """Definitions whose parameters are not this rule's to choose (see the module docstring)."""
    if (module.name, node.name) in THIRD_PARTY_OVERRIDES:
        return True
    decorators = decorator_names(node)
    return any(name.startswith("triton.") or name.endswith("library_op") for name in decorators)


def variadic(node):
    """A function whose named positional parameters are at most three and that takes ``*args`` (``_randn(gen,
    *shape)``, as ``torch.randn(*size)``): the positionals past its named ones are its variadic argument."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.args.vararg is None:
        return False
    return len(node.args.posonlyargs + node.args.args) <= MAX_POSITIONAL


class Module:
    """One module of the package: its syntax tree, top-level definitions and imports."""

    def __init__(self, path, source=None):
        self.path, self.name = path, module_name(path)
        self.is_package = path.name == "__init__.py"
        self.tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
        # Top-level functions and classes, and what the module's imports bind: name -> (module, attribute or None).
        self.definitions = {node.name: node for node in self.tree.body
                            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.imports = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                source = self.absolute(node.module, node.level)
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = (alias.name, None)
                    else:
                        top = alias.name.split(".")[0]
                        self.imports[top] = (top, None)

    def absolute(self, module, level):
        if not level:
            return module
        base = self.name.split(".")
        base = base if self.is_package else base[:-1]
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))


MODULES = {module.name: module for module in map(Module, sorted(PACKAGE.rglob("*.py")))}


def resolve_symbol(module_name, name, depth=0):
    """The package definition (module, node) that ``name`` in module ``module_name`` names, or a module name, or
    None (not the package's)."""
    module = MODULES.get(module_name)
    if module is None or depth > 10:
        return None
    if name in module.definitions:
        return module, module.definitions[name]
    if name in module.imports:
        source, attribute = module.imports[name]
        if attribute is None:
            return source if source in MODULES else None
        if f"{source}.{attribute}" in MODULES:
            return f"{source}.{attribute}"
        return resolve_symbol(source, attribute, depth + 1)
    return None


def class_method(module, class_node, name, depth=0):
    """The method ``name`` of a package class or of its package bases, as (module, node), else None."""
    for node in class_node.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return module, node
    if depth > 10:
        return None
    for base in class_node.bases:
        resolved = resolve_expression(module, [], base)
        if isinstance(resolved, tuple) and isinstance(resolved[1], ast.ClassDef):
            found = class_method(resolved[0], resolved[1], name, depth + 1)
            if found:
                return found
    return None


def local_names(function):
    """Names a function binds itself (parameters, assignments, loop targets...): a call through one of them is not
    a call of a module-level definition."""
    arguments = function.args
    names = {a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}
    names |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def backend_namespace(expression):
    """``get_backend(...)``, or a name the package gives what it returns: ``ops`` (a local or a parameter)."""
    if isinstance(expression, ast.Call):
        return ast.unparse(expression.func).split(".")[-1] == "get_backend"
    return isinstance(expression, ast.Name) and expression.id == "ops"


def resolve_expression(module, scopes, expression):
    """What ``expression`` (a callee) names in the package: (module, definition node), a module name, or None.

    scopes: the enclosing (function, class or None) pairs, innermost last."""
    if isinstance(expression, ast.Attribute) and expression.attr in OPS and backend_namespace(expression.value):
        return resolve_symbol(BACKEND_MODULES["torch"], expression.attr)  # the op as the torch backend defines it
    if isinstance(expression, ast.Name):
        for function, _ in reversed(scopes):
            definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            nested = {node.name: node for node in ast.walk(function)
                      if isinstance(node, definitions) and node is not function}
            if expression.id in nested:
                return module, nested[expression.id]
            if expression.id in local_names(function):
                return None
        return resolve_symbol(module.name, expression.id)
    if isinstance(expression, ast.Attribute):
        if isinstance(expression.value, ast.Name) and expression.value.id in ("self", "cls") and scopes:
            owner = next((cls for _, cls in reversed(scopes) if cls is not None), None)
            return class_method(module, owner, expression.attr) if owner is not None else None
        if isinstance(expression.value, ast.Call):
            return None
        target = resolve_expression(module, scopes, expression.value)
        if isinstance(target, str):
            return resolve_symbol(target, expression.attr)
        if isinstance(target, tuple) and isinstance(target[1], ast.ClassDef):
            return class_method(target[0], target[1], expression.attr)
    return None


def walk_calls(module):
    """(call node, enclosing scopes) for every call in ``module``."""

    def visit(node, scopes, owner):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, scopes + [(child, owner)], None)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, scopes, child)
            else:
                if isinstance(child, ast.Call):
                    yield child, scopes
                yield from visit(child, scopes, owner)

    yield from visit(module.tree, [], None)


def positional_call_violations():
    found = []
    for module in MODULES.values():
        for call, scopes in walk_calls(module):
            positional = sum(not isinstance(argument, ast.Starred) for argument in call.args)
            if positional <= MAX_POSITIONAL:
                continue
            resolved = resolve_expression(module, scopes, call.func)
            if not isinstance(resolved, tuple) or excluded_definition(*resolved) or variadic(resolved[1]):
                continue
            where = f"{module.path.relative_to(PACKAGE.parent)}:{call.lineno}"
            found.append(f"{where}: {ast.unparse(call.func)}(...) passes {positional} arguments by position")
    return found


def test_no_package_call_passes_more_than_three_arguments_by_position():
    violations = positional_call_violations()
    assert not violations, "pass the arguments past the third by keyword:\n" + "\n".join(violations)


def internal_definitions(module):
    """(function node, is a method) for the module's functions and methods, nested ones included."""

    def visit(node, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield child, in_class
                yield from visit(child, False)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, True)
            else:
                yield from visit(child, in_class)

    yield from visit(module.tree, False)


def test_internal_helpers_take_at_most_three_positional_parameters():
    violations = []
    for module in MODULES.values():
        for function, is_method in internal_definitions(module):
            internal = function.name.startswith("_") and not function.name.startswith("__")
            if not internal or excluded_definition(module, function):
                continue
            parameters = [a.arg for a in function.args.posonlyargs + function.args.args]
            is_static = "staticmethod" in decorator_names(function)
            if is_method and not is_static and parameters[:1] in (["self"], ["cls"]):
                parameters = parameters[1:]
            if len(parameters) > MAX_POSITIONAL:
                violations.append(f"{module.path.relative_to(PACKAGE.parent)}:{function.lineno}: {function.name}"
                                  f"({', '.join(parameters)}): make the parameters past the third keyword-only")
    assert not violations, "\n".join(violations)


def backend_op_parameters():
    """{(implementation, op): [parameter names]} for each op of each backend's module (``contract.IMPLEMENTATIONS``
    says which module runs an op; the cuda backend borrows some of Triton's)."""
    found = {}
    for backend, ops in IMPLEMENTATIONS.items():
        for op, implementation in ops.items():
            module, node = resolve_symbol(BACKEND_MODULES[implementation], op)
            found[implementation, op] = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    return found


def test_every_backend_op_takes_the_torch_backends_parameter_names():
    """A call of a backend's op by keyword (``ops.gaussian_sample(mu, logvar, k, eps=eps, ...)``, checked against
    the torch backend's signature above) is valid on every backend: each op takes the torch backend's parameters by
    the same names in the same order, a compiled backend adding trailing ones at most (``launchers=``)."""
    parameters = backend_op_parameters()
    for (implementation, op), names in parameters.items():
        torch_names = parameters["torch", op]
        assert names[: len(torch_names)] == torch_names, f"{implementation}'s {op}{tuple(names)}: expected the " \
                                                         f"torch backend's parameters {tuple(torch_names)} first"


def probe(source):
    return textwrap.dedent(source).lstrip()


# Sources the check reads as a package module, and the violations it must report in them.
PROBES = {
    "a module-local function": (probe("""
        def _f(a, b, c, d):
            pass

        def g():
            _f(1, 2, 3, 4)
        """), ["_f(...) passes 4"]),
    "a method": (probe("""
        class C:
            def _m(self, a, b, c, d):
                pass

            def n(self):
                self._m(1, 2, 3, 4)
        """), ["self._m(...) passes 4"]),
    "a package class": (probe("""
        import dataclasses

        @dataclasses.dataclass
        class R:
            a: int
            b: int
            c: int
            d: int

        def g():
            return R(1, 2, 3, 4)
        """), ["R(...) passes 4"]),
    "a package module's function": (probe("""
        from . import _checks

        def g(x):
            _checks.check_tensor("x", x, (2,), None)
        """), ["_checks.check_tensor(...) passes 4"]),
    "a backend's op": (probe("""
        from .backend import get_backend

        def g(x):
            ops = get_backend(None, x.device)
            ops.gaussian_sample(x, x, 1, None)
            return get_backend(None, x.device).bernoulli_iwae_loss(x, x, x, "mean")
        """), ["ops.gaussian_sample(...) passes 4", "bernoulli_iwae_loss(...) passes 4"]),
    "an extension's function of an op's name": (probe("""
        def _register(module):
            module.normalized_weights(1, 2, 3, 4, 5)
        """), []),
    "keywords past the third": (probe("""
        def _f(a, b, c, *, d):
            pass

        def g():
            _f(1, 2, 3, d=4)
        """), []),
    "a Triton device function": (probe("""
        import triton

        @triton.jit
        def _f(a, b, c, d):
            pass

        @triton.jit
        def kernel(p):
            _f(p, p, p, p)
        """), []),
    "a library_op launcher": (probe("""
        from .ops.utils import library_op

        @library_op("probe", ())
        def _f(a, b, c, d) -> None:
            pass

        def g():
            _f(1, 2, 3, 4)
        """), []),
    "a variadic shape": (probe("""
        def _r(gen, *shape):
            pass

        def g():
            _r(1, 2, 3, 4)
        """), []),
    "a callable passed in": (probe("""
        def _f(a, b, c, d):
            pass

        def g(_f):
            _f(1, 2, 3, 4)
        """), []),
}


@pytest.mark.parametrize("source, expected", PROBES.values(), ids=PROBES)
def test_the_check_finds_long_positional_calls_and_only_those(monkeypatch, source, expected):
    """The check is neither vacuous nor too broad: it finds four positionals in a call of a package function,
    method or class, and lets the exclusions of the module docstring pass."""
    module = Module(PACKAGE / "_call_style_probe.py", source)
    monkeypatch.setitem(MODULES, module.name, module)
    found = [line for line in positional_call_violations() if "_call_style_probe" in line]
    assert len(found) == len(expected) and all(text in line for text, line in zip(expected, found)), found
