"""The library stands apart from the paper app: it imports and runs without the app extra (tqdm, matplotlib),
and the CLI names the extra when it is missing."""

import subprocess
import sys

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
assert "tqdm" not in sys.modules and "matplotlib" not in sys.modules
print("ok")
""")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_cli_names_the_missing_extra():
    result = run_without_app_extra("import runpy; runpy.run_module('iwae_kernels', run_name='__main__')")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: the command line needs tqdm: pip install 'iwae_kernels[app]'"]
