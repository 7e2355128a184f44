"""The training/evaluation CLI on real MNIST: atomic checkpoints, exact resume after SIGKILL, and 2 gloo
processes agreeing with 1."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from iwae_kernels.train import load_checkpoint, save_checkpoint

TRAIN = [sys.executable, "-m", "iwae_kernels", "train", "--train-subset", "1000", "--batch-size", "20", "--epochs", "3",
         "--k", "3", "--checkpoint-steps", "1", "--no-eval", "--no-progress", "--device", "cpu", "--backend", "torch"]
TOTAL_STEPS = 3 * 1000 // 20


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, check=True, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run(TRAIN + ["--out", str(out)])
    return out


def test_resume_after_kill_matches_uninterrupted(uninterrupted, tmp_path):
    process = subprocess.Popen(TRAIN + ["--out", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists():
            state = load_checkpoint(checkpoint)
            if state["epoch"] * (TOTAL_STEPS // 3) + state["step"] >= 40:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; the test needs a longer run"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(checkpoint)
    assert (killed_at["epoch"], killed_at["step"]) < (3, 0), "killed mid-training"
    run(TRAIN + ["--out", str(tmp_path), "--resume"])
    resumed, reference = load_checkpoint(checkpoint), load_checkpoint(uninterrupted / "checkpoint.pt")
    assert resumed["epoch"] == reference["epoch"] == 3
    for name, value in reference["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert [row["train_loss"] for row in resumed["history"]] == [row["train_loss"] for row in reference["history"]]


def test_resume_refuses_another_configuration(uninterrupted, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes((uninterrupted / "checkpoint.pt").read_bytes())
    with pytest.raises(subprocess.CalledProcessError) as error:
        run(TRAIN[:-1] + ["torch", "--k", "4", "--out", str(tmp_path), "--resume"])
    assert "another configuration" in error.value.stderr


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


EVALUATE = ["evaluate", "--test-subset", "60", "--eval-k", "200", "--eval-chunk", "64", "--eval-batch", "20",
            "--no-progress", "--device", "cpu"]


def test_two_gloo_processes_agree_with_one(uninterrupted, tmp_path):
    checkpoint = str(uninterrupted / "checkpoint.pt")
    # One thread per process in both runs: float32 matmuls then reduce in the same order everywhere.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run([sys.executable, "-m", "iwae_kernels", *EVALUATE[:1], checkpoint, *EVALUATE[1:], "--out", str(tmp_path / "one")],
        env=env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "iwae_kernels",
         *EVALUATE[:1], checkpoint, *EVALUATE[1:], "--out", str(tmp_path / "two")], env=env)
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["test_nll"] == two["test_nll"] and one["active_units"] == two["active_units"]
    assert 80 < one["test_nll"] < 300
    for picture in ("samples.png", "reconstructions.png", "curves.png"):
        assert (tmp_path / "one" / picture).stat().st_size > 1000
