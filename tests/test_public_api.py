"""The public API is typed and shown by example (issue 34): every function and class of ``iwae_kernels.__all__``, of
the model zoo's ``__all__`` and the Pyro front door carries type annotations (mypy checks them: CI's "types" stage,
[tool.mypy] in pyproject.toml) and an Examples block (``>>>``), which pytest runs as a doctest (--doctest-modules)."""

import inspect

import pytest

import iwae_kernels
import iwae_kernels.models


def public_objects():
    """(qualified name, object) of every public function and class; constants (ESTIMATORS, PAPER_SIZES) aside."""
    found = [(f"iwae_kernels.{name}", getattr(iwae_kernels, name)) for name in iwae_kernels.__all__]
    models = iwae_kernels.models
    found += [(f"iwae_kernels.models.{name}", getattr(models, name)) for name in models.__all__]
    try:
        from iwae_kernels.pyro import ImportanceWeightedELBO
    except ImportError:  # Pyro is optional (the test extra has it)
        pass
    else:
        found.append(("iwae_kernels.pyro.ImportanceWeightedELBO", ImportanceWeightedELBO))
    return [(name, value) for name, value in found if inspect.isfunction(value) or inspect.isclass(value)]


def is_named_tuple(cls):
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def unannotated(function):
    """The parameters (and "return") of ``function`` that have no annotation."""
    signature = inspect.signature(function)
    missing = [name for name, parameter in signature.parameters.items()
               if name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def own_methods(cls):
    """{name: function} of the public methods (and __init__, property getters) that ``cls`` itself defines."""
    methods = {}
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        value = value.fget if isinstance(value, property) else value
        value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if inspect.isfunction(value):
            methods[name] = value
    return methods


PUBLIC = public_objects()


@pytest.mark.parametrize("name, value", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_annotated(name, value):
    if inspect.isfunction(value):
        assert not unannotated(value), f"{name}: no annotation for {unannotated(value)}"
        return
    if is_named_tuple(value):  # a result type: its fields are its annotations
        assert set(value.__annotations__) == set(value._fields), f"{name}: unannotated fields"
        return
    for method_name, method in own_methods(value).items():
        assert not unannotated(method), f"{name}.{method_name}: no annotation for {unannotated(method)}"


EXAMPLED = [(name, value) for name, value in PUBLIC if not (inspect.isclass(value) and is_named_tuple(value))]


@pytest.mark.parametrize("name, value", EXAMPLED, ids=[name for name, _ in EXAMPLED])
def test_has_a_runnable_example(name, value):
    """An Examples block in the docstring of each function and class (a class's shows its constructor); its module
    is collected with --doctest-modules, so the block runs (the doctests of iwae_kernels/, see pyproject.toml)."""
    assert ">>>" in (value.__doc__ or ""), f"{name}: its docstring has no Examples (>>>) block"
