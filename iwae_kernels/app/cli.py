"""Command line: python -m iwae_kernels {fetch-data, train, evaluate} --help

    python -m iwae_kernels train --preset quick        # a small IWAE on real MNIST, then its L_5000 test NLL
    python -m iwae_kernels train --schedule paper --k 50 --out runs/iwae50
    python -m iwae_kernels train ... --resume          # continue from runs/.../checkpoint.pt exactly
    torchrun --nproc_per_node 2 -m iwae_kernels evaluate runs/iwae50/checkpoint.pt
    python -m iwae_kernels selftest [--json PATH]      # every op of each backend that runs here vs float64

A user error (a bad option, an unusable file or folder) prints one line, "error: ...", and exits with status 2
(under torchrun a bad option is reported by rank 0 alone); --debug shows the traceback instead. Ctrl-C or SIGTERM
during training checkpoints at the next step and says how to resume; the exit status is 130 for SIGINT, 143 for
SIGTERM. Any other failure is a bug: one line and status 1.
"""

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
from pathlib import Path

import torch

from . import data as datasets
from .checkpoint import load_checkpoint
from .config import MODEL_LAYERS, TrainConfig, build_model, estimator_options
from .errors import OptionError, UserError
from .evaluate import (check_ais_options, check_evaluation_time, describe_ais, describe_diagnostics, evaluate,
                       rank_and_world)
from ..backend import ENV_VAR as BACKEND_VARIABLE, backend_name
from ..functional import ESTIMATORS
from .device import resolve_device
from .run_folder import RunLock, preflight
from .signals import Terminated, TrainingInterrupted, deferred_stop_signals, exit_status, sigterm_raises
from .train import checkpoint_bytes, describe_schedule, start_policy, train

# About half a minute on a 2-core CPU: one pass of 1-layer IWAE k=5, then L_5000 on 500 test images.
PRESETS = {
    "quick": {"k": 5, "batch_size": 100, "epochs": 1, "test_subset": 500},
    "paper": {"schedule": "paper", "k": 50, "batch_size": 20},
}
EVAL_DEFAULTS = {"eval_k": 5000, "eval_chunk": None, "eval_batch": 100, "test_subset": 0, "max_eval_hours": 24.0,
                 "ais_steps": None, "ais_chains": 16, "ais_images": 100, "bdmc_examples": 0}
# Report, test bounds and pictures.
EVAL_OUTPUT_BYTES = 16 * 2**20
EXIT_BUG, EXIT_USER_ERROR = 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = exit_status("SIGINT"), exit_status("SIGTERM")  # 130, 143


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors, so they print as one line like every other user error."""

    def error(self, message):
        raise OptionError(message)


def _number_type(convert, accept, requirement):
    """An argparse type: ``convert`` the text, then require ``accept(value)``; the message says what is expected."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}")
        return value

    return parse


positive_int = _number_type(int, lambda v: v >= 1, "an integer >= 1")
count_or_all = _number_type(int, lambda v: v >= 0, "an integer >= 0 (0: all)")
non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: 0 < v < float("inf"), "a finite number > 0")


def device_option(text):
    """--device: "auto", or a torch device this machine has."""
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} GPU(s)")
    return text


def _common_arguments(parser):
    parser.add_argument("--device", type=device_option, default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--no-progress", action="store_true")


def _eval_arguments(parser):
    parser.add_argument("--eval-k", type=positive_int, help="samples for the test L_k (default and paper: 5000)")
    parser.add_argument("--eval-chunk", type=positive_int,
                        help="samples per chunk: memory does not grow with k (default: as many as a 512 MiB "
                             "memory budget holds, measured on the model; about 400 for 100 images through the "
                             "layers, all 5000 with --fused-mlp on a GPU)")
    parser.add_argument("--eval-batch", type=positive_int, help="test examples per batch (default 100)")
    parser.add_argument("--test-subset", type=count_or_all, help="evaluate on the first N test images (0: all)")
    parser.add_argument("--max-eval-hours", type=positive_float,
                        help="refuse an evaluation estimated to take longer (default 24)")
    parser.add_argument("--fused-mlp", action="store_true",
                        help="L_k through the fused decoder MLP: no activations or logits in memory, so one kernel "
                             "per batch (Triton backend; off by default, see docs/RESULTS.md)")
    parser.add_argument("--ais-steps", type=positive_int,
                        help="also estimate log p(x) by AIS with this many annealing steps (1-layer models; off by "
                             "default): the report holds it beside L_k")
    parser.add_argument("--ais-chains", type=positive_int, help="AIS chains per image (default 16)")
    parser.add_argument("--ais-images", type=positive_int,
                        help="AIS on the first N evaluated test images (default 100, at most the test subset)")
    parser.add_argument("--bdmc-examples", type=non_negative_int,
                        help="with --ais-steps: BDMC bounds on N images simulated from the model (default 0: none)")


def build_parser():
    parser = _Parser(prog="python -m iwae_kernels", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    fetch_parser = commands.add_parser("fetch-data", help="download and verify MNIST into the data cache")
    fetch_parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    # Defaults of None: an explicit option beats --preset even when it equals the default (see fill_defaults).
    train_parser = commands.add_parser("train", help="train a model, then evaluate it")
    train_parser.add_argument("--preset", choices=sorted(PRESETS), help="a named set of the options below")
    train_parser.add_argument("--dataset", choices=sorted(datasets.DATASETS))
    train_parser.add_argument("--model", choices=sorted(MODEL_LAYERS),
                              help="paper (default): Gaussian latents; sbn: a sigmoid belief network of 200 binary "
                                   "units per layer (estimators vimco, rws, renyi)")
    train_parser.add_argument("--layers", type=int, choices=(1, 2, 3), help="stochastic layers (paper: 1-2, sbn: 1-3)")
    train_parser.add_argument("--estimator", choices=ESTIMATORS)
    train_parser.add_argument("--groups", type=positive_int,
                              help="miwae, piwae: M groups of k / M samples (k is the total M * K)")
    train_parser.add_argument("--ciwae-beta", type=float, help="ciwae: the ELBO's share beta in [0, 1]")
    train_parser.add_argument("--renyi-alpha", type=float,
                              help="renyi: the Renyi bound's alpha, a finite number other than 1 (0: L_k)")
    train_parser.add_argument("--k", type=positive_int, help="importance samples per example (default 50)")
    train_parser.add_argument("--batch-size", type=positive_int, help="default 20")
    train_parser.add_argument("--schedule", choices=("constant", "paper"),
                              help="paper: 3^i passes at lr 1e-3 * 10^(-i/7) for i < --paper-stages")
    train_parser.add_argument("--epochs", type=positive_int, help="passes for --schedule constant (default 1)")
    train_parser.add_argument("--paper-stages", type=positive_int)
    train_parser.add_argument("--lr", type=positive_float)
    train_parser.add_argument("--seed", type=non_negative_int)
    train_parser.add_argument("--backend", choices=("torch", "triton", "cuda"))
    train_parser.add_argument("--train-subset", type=count_or_all, help="train on the first N images (0: all)")
    train_parser.add_argument("--checkpoint-minutes", type=positive_float, help="default 10")
    train_parser.add_argument("--checkpoint-steps", type=non_negative_int, help="also checkpoint every N steps")
    train_parser.add_argument("--out", help="run folder (default runs/<dataset>-l<layers>-<estimator>-k<k>, "
                                            "runs/<dataset>-sbn-l<layers>-... for --model sbn)")
    resume = train_parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run in --out (its checkpoint must exist)")
    resume.add_argument("--resume-if-exists", action="store_true", help="continue the run in --out if there is one")
    resume.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train_parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    _common_arguments(train_parser)
    _eval_arguments(train_parser)

    eval_parser = commands.add_parser("evaluate", help="test NLL, active units, report and pictures of a checkpoint")
    eval_parser.add_argument("checkpoint")
    eval_parser.add_argument("--out", default=None, help="report folder (default: the checkpoint's folder)")
    _common_arguments(eval_parser)
    _eval_arguments(eval_parser)
    return parser


def fill_defaults(args):
    """Options not given: from --preset, else the base defaults (TrainConfig's and EVAL_DEFAULTS)."""
    base = {**dataclasses.asdict(TrainConfig()), **EVAL_DEFAULTS}
    preset = PRESETS[args.preset] if getattr(args, "preset", None) else {}
    for name, default in base.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, preset.get(name, default))


def _check_subsets(args, dataset):
    """Subsets and batch sizes within the data set, before any work."""
    train_size, test_size = datasets.DATASET_SIZES[dataset]
    if args.test_subset > test_size:
        raise OptionError(f"--test-subset: {args.test_subset} is more than the {test_size} test images of {dataset}")
    if args.ais_steps and args.ais_images > (args.test_subset or test_size):
        raise OptionError(f"--ais-images: {args.ais_images} is more than the {args.test_subset or test_size} test "
                          "images evaluated (lower it or raise --test-subset)")
    if args.bdmc_examples and not args.ais_steps:
        raise OptionError("--bdmc-examples: give --ais-steps too (BDMC runs AIS both ways)")
    if getattr(args, "train_subset", 0) > train_size:
        raise OptionError(f"--train-subset: {args.train_subset} is more than the {train_size} training images of "
                          f"{dataset}")
    if hasattr(args, "batch_size") and args.batch_size > (args.train_subset or train_size):
        raise OptionError(f"--batch-size: {args.batch_size} is more than the {args.train_subset or train_size} "
                          "training images")


def _world_size():
    """The number of processes of this run (torchrun's WORLD_SIZE), known before the process group starts."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _check_backend(args):
    """The run's backend on its device when the command starts, before any run folder (a user error, exit 2):
    --backend (train), else IWAE_KERNELS_BACKEND when it is set."""
    backend = getattr(args, "backend", None)
    if backend is None and not os.environ.get(BACKEND_VARIABLE):
        return
    try:
        backend_name(backend, resolve_device(args.device))
    except ValueError as error:
        raise OptionError(str(error) if backend is None else f"--backend {backend}: {error}") from None


def _check_train_options(args):
    """Options the parser cannot check alone, before any work: the batch split over the processes."""
    if args.batch_size % _world_size():
        raise OptionError(f"--batch-size: {args.batch_size} does not split evenly over {_world_size()} processes "
                          "(give a multiple of --nproc-per-node)")


def _test_set(args, dataset):
    _, test_x = datasets.DATASETS[dataset]()
    return test_x[: args.test_subset] if args.test_subset else test_x


def _check_evaluation_options(args, config):
    """--ais-steps and --fused-mlp against the run's model, before any work."""
    check_ais_options(config.model, config.layers, args.ais_steps)
    if args.fused_mlp and config.model != "paper":
        raise OptionError(f"--fused-mlp: the fused decoder MLP is the paper model's, not the {config.model} model's")


def _evaluation_model(model, args):
    """The model as the evaluation runs it: through the fused decoder MLP with --fused-mlp."""
    if args.fused_mlp:
        model.fused_mlp = True
    return model


def _ais_options(args):
    """``evaluate``'s ais keywords from --ais-*, or None without --ais-steps."""
    if not args.ais_steps:
        return None
    return {"steps": args.ais_steps, "chains": args.ais_chains, "images": args.ais_images,
            "bdmc_examples": args.bdmc_examples}


def _run_evaluation(model, args, dataset, *, out_dir, history, step_log, extra):
    report = evaluate(_evaluation_model(model, args), _test_set(args, dataset), out_dir, k=args.eval_k,
                      chunk=args.eval_chunk, batch_size=args.eval_batch, history=history, step_log=step_log,
                      extra={**extra, "fused_mlp": args.fused_mlp},
                      progress=not args.no_progress, max_hours=args.max_eval_hours, ais=_ais_options(args))
    if rank_and_world()[0] == 0:
        print(f"test NLL (-mean L_{report['k']} over {report['test_examples']} images): {report['test_nll']:.3f} "
              f"nats; active units {report['active_units']}; report and pictures in {out_dir}")
        print(describe_diagnostics(report["importance_diagnostics"], report["k"]))
        if "ais" in report:
            print(describe_ais(report["ais"], report["k"]))
    return report


@contextlib.contextmanager
def _owned_run_folder(out_dir, needed_bytes):
    """Preflight and lock ``out_dir`` on the process that writes (rank 0 under torchrun). A folder this made is
    removed again when the command fails before writing anything into it (bad data, a refused evaluation)."""
    if rank_and_world()[0] != 0:
        yield
        return
    folder = Path(out_dir)
    made = not folder.exists()
    preflight(out_dir, needed_bytes)
    try:
        with RunLock(out_dir):
            yield
    except BaseException:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _evaluate_command(args):
    model, config, metadata = load_checkpoint(args.checkpoint, args.device)
    _check_subsets(args, config.dataset)
    _check_evaluation_options(args, config)
    out_dir = args.out or str(Path(args.checkpoint).parent)
    with _owned_run_folder(out_dir, EVAL_OUTPUT_BYTES):
        _run_evaluation(
            model,
            args,
            config.dataset,
            out_dir=out_dir,
            history=metadata.history,
            step_log=metadata.step_log,
            extra={"config": dataclasses.asdict(config)},
        )


def _train_command(args):
    config = TrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)})
    estimator_options(config)  # an estimator option that does not fit is refused before any work
    _check_subsets(args, config.dataset)
    _check_train_options(args)
    if not args.no_eval:
        _check_evaluation_options(args, config)
    model_name = "" if config.model == "paper" else f"{config.model}-"
    out_dir = args.out or f"runs/{config.dataset}-{model_name}l{config.layers}-{config.estimator}-k{config.k}"
    resume = "if-exists" if args.resume_if_exists else args.resume
    with contextlib.ExitStack() as run_folder:
        # Deferred before any work: a SIGINT or SIGTERM while the data loads stops at the first step boundary,
        # through the lock's release; evaluation afterwards takes signals as usual.
        with deferred_stop_signals():
            start_policy(out_dir, resume, args.overwrite)  # refuse before printing anything about a run that won't start
            run_folder.enter_context(_owned_run_folder(out_dir, checkpoint_bytes(config) + EVAL_OUTPUT_BYTES))
            if not args.no_eval:  # an evaluation that would be refused is refused before training, not after
                check_evaluation_time(
                    _evaluation_model(build_model(config, resolve_device(config.device)), args),
                    _test_set(args, config.dataset),
                    args.eval_k,
                    chunk=args.eval_chunk,
                    batch_size=args.eval_batch,
                    max_hours=args.max_eval_hours,
                    progress=False,
                )
            if rank_and_world()[0] == 0:
                print(f"training {config.layers}-layer {model_name}{config.estimator} k={config.k} on {config.dataset}: "
                      f"{describe_schedule(config)}, batch {config.batch_size}; run folder {out_dir}")
            model, history, step_log = train(config, out_dir, resume=resume, overwrite=args.overwrite,
                                             progress=not args.no_progress)
        if not args.no_eval:
            _run_evaluation(
                model,
                args,
                config.dataset,
                out_dir=out_dir,
                history=history,
                step_log=step_log,
                extra={"config": dataclasses.asdict(config)},
            )


def _parent_command_line():
    """The parent process's arguments (Linux /proc), or None where they cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


def launcher_command(argv):
    """The command that started this process, before its ``argv``: this interpreter's ``-m iwae_kernels`` (a venv's
    python need not be on PATH), or under torchrun the torchrun command (the launcher is the parent process;
    rebuilt from torchrun's environment where its command line cannot be read)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return [sys.executable, "-m", "iwae_kernels"]
    parent = _parent_command_line()
    if parent and len(parent) > len(argv) and parent[len(parent) - len(argv):] == list(argv):
        prefix = parent[: len(parent) - len(argv)]
        if Path(prefix[0]).name.startswith("python"):
            interpreter_arguments = prefix[1:]
            if interpreter_arguments and Path(interpreter_arguments[0]).name == "torchrun":  # the console script
                return ["torchrun", *interpreter_arguments[1:]]
            return ["python", *interpreter_arguments]
        return [Path(prefix[0]).name, *prefix[1:]]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", _world_size()))
    nodes = ["--nnodes", str(_world_size() // local)] if _world_size() != local else []
    return ["torchrun", *nodes, "--nproc-per-node", str(local), "-m", "iwae_kernels"]


def resume_command(argv):
    """The command line that continues an interrupted ``train`` run given by ``argv`` (under torchrun: with it)."""
    kept = [a for a in argv if a not in ("--resume", "--resume-if-exists", "--overwrite")]
    return shlex.join([*launcher_command(argv), *kept, "--resume"])


def _report(message):
    """Print ``message`` to stderr on rank 0 only: every process of a torchrun run meets the same stop or option."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # known even when parsing fails
    try:
        with sigterm_raises():  # outside training SIGTERM unwinds like Ctrl-C, so a run lock is released
            args = build_parser().parse_args(argv)
            fill_defaults(args)
            datasets.data_dir()  # a bad IWAE_KERNELS_DATA is refused before any run folder is made
            if args.command != "fetch-data":
                _check_backend(args)
            if args.command == "fetch-data":
                print(f"MNIST ready at {datasets.fetch_mnist()}")
            elif args.command == "evaluate":
                _evaluate_command(args)
            else:
                _train_command(args)
        return 0
    except TrainingInterrupted as stop:
        if debug:
            raise
        if stop.checkpoint_path is not None:
            _report(f"{stop}; continue with: {resume_command(argv)}")
        else:
            _report(f"{stop}; start it again with: {shlex.join([*launcher_command(argv), *argv])}")
        return exit_status(stop.signal_name)
    except (KeyboardInterrupt, Terminated) as stop:
        if debug:
            raise
        _report(f"error: interrupted ({'SIGINT' if isinstance(stop, KeyboardInterrupt) else 'SIGTERM'})")
        return EXIT_INTERRUPTED if isinstance(stop, KeyboardInterrupt) else EXIT_TERMINATED
    except (UserError, OSError) as error:  # OSError: a file or folder the user named, a full disk
        if debug:
            raise
        if isinstance(error, OptionError):
            _report(f"error: {error}")
        else:  # a file or folder: possibly one process's alone
            print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # a bug: still one line, with the way to get the traceback
        if debug:
            raise
        first_line = (str(error).splitlines() or [""])[0]
        print(f"error: {type(error).__name__}: {first_line} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_BUG
