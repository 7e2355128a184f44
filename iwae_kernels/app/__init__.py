"""The paper's application: MNIST data, training, evaluation, pictures and the CLI (``python -m iwae_kernels``).

Needs the ``app`` extra (tqdm, matplotlib): ``pip install iwae_kernels[app]``; ``load_checkpoint`` needs neither.

    cli.py         the command line: train / evaluate / fetch-data
    train.py       schedule, exact resume, torchrun: prepare, resume, the loop, the stop
    checkpoint.py  the checkpoint file (torch.save + a SHA-256 file, atomic, verified) and load_checkpoint
    config.py      TrainConfig: what a run's model and optimization depend on
    signals.py     SIGINT/SIGTERM: deferred to a step boundary while training; exit statuses
    evaluate.py    -mean L_5000 in bounded memory, active units, report.json
    data.py        MNIST (verified download and cache), Fashion-MNIST, the sentence corpus
    run_folder.py  preflight checks and the run-folder lock
    plots.py       samples, reconstructions, curves
    device.py      device choice and names
    errors.py      UserError: what the CLI reports on one line

Open a trained run's checkpoint:

    from iwae_kernels.app import load_checkpoint
    model, config, metadata = load_checkpoint("runs/mnist-l1-iwae-k50/checkpoint.pt", map_location="cpu")
    log_px = model.log_likelihood(x, k=5000)   # x: binarized images [B, 784]
"""

from .checkpoint import Checkpoint, CheckpointMetadata, load_checkpoint
from .errors import UserError

__all__ = ["Checkpoint", "CheckpointMetadata", "UserError", "load_checkpoint"]
