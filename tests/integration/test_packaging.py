"""The library stands apart from the paper app: it imports and runs without the app extra (tqdm, matplotlib),
and the CLI names the extra when it is missing; the README is what a wheel can carry."""

import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # subprocesses

BLOCK_APP_EXTRA = """
import sys
class BlockAppExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tqdm", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, BlockAppExtra())
"""


def run_without_app_extra(code):
    return subprocess.run([sys.executable, "-c", BLOCK_APP_EXTRA + code], capture_output=True, text=True)


def test_library_and_model_zoo_work_without_tqdm_and_matplotlib():
    result = run_without_app_extra("""
import torch, iwae_kernels as ik
from iwae_kernels.models import paper_model
x = torch.rand(3, 6).round()
mu, logvar = torch.zeros(3, 2, requires_grad=True), torch.zeros(3, 2, requires_grad=True)
ik.iwae_loss(x, mu, logvar, torch.nn.Linear(2, 6), k=4, backend="torch").backward()
paper_model(1, x_dim=6, hidden=((4,),), latent=(2,)).loss(x, k=3).backward()
from iwae_kernels.app import load_checkpoint  # opening a trained run needs no app extra either
assert "tqdm" not in sys.modules and "matplotlib" not in sys.modules
print("ok")
""")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_cli_names_the_missing_extra():
    result = run_without_app_extra("import runpy; runpy.run_module('iwae_kernels', run_name='__main__')")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: the command line needs tqdm: pip install 'iwae_kernels[app]'"]


# Each layer imports only from the layers before it (and itself): no import circle, and the kernels never know
# the dispatcher or the app. The backends share only torch_math, beneath them all.
LAYERS = [
    {"_env", "contract", "_checks", "_build", "_autograd", "_memory"},
    {"torch_math"},
    {"torch_backend", "ops"},
    {"cuda_backend"},
    {"backend"},
    {"estimators"},
    {"functional"},
    {"diagnostics", "evaluation", "ais", "__init__"},
    {"models", "pyro"},
    {"app", "selftest", "__main__"},
]


def _top_module(path, package):
    return path.relative_to(package).parts[0].removesuffix(".py")


def _imported_modules(path, package):
    """Top-level iwae_kernels modules that the file at ``path`` imports (relative or absolute)."""
    import ast

    here = path.relative_to(package).parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                parts = list(base) + (node.module.split(".") if node.module else [])
                candidates = [parts] if node.module else [parts + [alias.name] for alias in node.names]
            elif node.module and node.module.startswith("iwae_kernels"):
                candidates = [node.module.split(".")[1:] or [alias.name for alias in node.names]]
            else:
                continue
            names.update(c[0] for c in candidates if c)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("iwae_kernels."))
    return names


def _package_imports():
    """(file path relative to the package, its own top-level module, the top-level modules it imports) per file."""
    from pathlib import Path

    import iwae_kernels

    package = Path(iwae_kernels.__file__).parent
    return [(path.relative_to(package), _top_module(path, package), _imported_modules(path, package) - {
        _top_module(path, package)}) for path in package.rglob("*.py")]


def test_layers_import_only_downwards():
    layer_of = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    for path, own, imported_modules in _package_imports():
        for imported in imported_modules:
            assert layer_of[imported] <= layer_of[own], f"{path} imports {imported}"


# The one import between backends: the cuda backend runs the Triton backend's autograd Functions with its own
# launcher pairs. backend.py names the backends' modules in its table and imports them by name.
BACKEND_MODULES = {"torch_backend", "ops", "cuda_backend"}
ALLOWED_BACKEND_IMPORTS = {("cuda_backend", "ops")}


def test_no_backend_imports_another():
    for path, own, imported_modules in _package_imports():
        assert "torch_backend" not in imported_modules, f"{path} imports torch_backend"
        if own in BACKEND_MODULES:
            for imported in imported_modules & BACKEND_MODULES:
                assert (own, imported) in ALLOWED_BACKEND_IMPORTS, f"{path} (a backend) imports {imported}"


def test_readme_is_short_and_readable_from_a_wheel():
    """At most 2,600 words (`wc -w`), and a reader of the wheel's copy (its long description) is told where the
    scripts, examples and docs it names live; the Quickstart is the two commands CI's test command runs."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.split()) <= 2600, len(readme.split())
    assert "installed wheel: the `scripts/`, `examples/`, `benchmarks/` and `docs/`" in " ".join(readme.split())
    quickstart = readme[readme.index("## Quickstart"):readme.index("## Drop it into your model")]
    assert quickstart.count("bash scripts/setup_env.sh && ") == 2
