"""The examples run end to end at tiny sizes (real MNIST, CPU) and write their pictures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # subprocesses

EXAMPLES = REPO / "examples"


def run_example(tmp_path, script, *args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TRITON_INTERPRET", None)  # the examples run the torch backend on a CPU
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--out", str(tmp_path), *args], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("flow", ["planar", "radial"])
def test_flow_example(tmp_path, flow):
    out = run_example(tmp_path, "flow_iwae.py", "--flow", flow, "--length", "2", "--density-steps", "20",
                      "--images", "200", "--epochs", "1", "--test-images", "5")
    assert "test -L_1000" in out and (tmp_path / "flow_density.png").stat().st_size > 10000


def test_conv_example_with_kl_annealing(tmp_path):
    out = run_example(tmp_path, "conv_iwae.py", "--images", "200", "--epochs", "1", "--warmup", "3",
                      "--test-images", "3")
    assert "test -L_1000" in out and (tmp_path / "conv_samples.png").stat().st_size > 10000


def test_variational_dropout_example(tmp_path):
    out = run_example(tmp_path, "variational_dropout.py", "--images", "200", "--epochs", "1", "--test-images", "3")
    assert "prunable" in out and (tmp_path / "vd_log_alpha.png").stat().st_size > 5000


@pytest.mark.skipif(not Path("/usr/share/common-licenses").is_dir(), reason="needs Debian's base-files licence texts")
def test_sentence_vae_example(tmp_path):
    out = run_example(tmp_path, "sentence_vae.py", "--epochs", "1", "--warmup", "5")
    assert "interpolation" in out and (tmp_path / "sentence_vae.png").stat().st_size > 5000


def test_pyro_vae_example_with_dreg(tmp_path):
    pytest.importorskip("pyro", reason="pyro-ppl is not installed (the test extra: the Pyro front door)")
    out = run_example(tmp_path, "pyro_vae.py", "--images", "200", "--epochs", "1", "--estimator", "dreg",
                      "--test-images", "3")
    assert "epoch 1: -L_5" in out and "test -L_1000" in out and (tmp_path / "pyro_vae_params.pt").is_file()


def test_sbn_example_with_each_estimator(tmp_path):
    out = run_example(tmp_path, "sbn_mnist.py", "--images", "200", "--epochs", "1", "--test-images", "3",
                      "--estimators", "vimco", "rws", "renyi", "--latent", "20", "10")
    for estimator in ("vimco", "rws", "renyi"):
        assert f"{estimator}: SBN 20-10" in out and "test -L_1000" in out
    assert (tmp_path / "sbn_samples.png").stat().st_size > 5000


def test_draw_example(tmp_path):
    out = run_example(tmp_path, "draw_mnist.py", "--images", "200", "--epochs", "1", "--steps", "3",
                      "--test-images", "3")
    assert "test -L_200" in out and (tmp_path / "draw_canvases.png").stat().st_size > 5000
