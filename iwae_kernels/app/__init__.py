"""The paper's application: MNIST data, training, evaluation, pictures and the CLI (``python -m iwae_kernels``).

Needs the ``app`` extra (tqdm, matplotlib): ``pip install iwae_kernels[app]``.

    cli.py         the command line: train / evaluate / fetch-data
    train.py       schedule, checkpoints (atomic, verified), exact resume, torchrun
    evaluate.py    -mean L_5000 in bounded memory, active units, report.json
    data.py        MNIST (verified download and cache), Fashion-MNIST, the sentence corpus
    run_folder.py  preflight checks and the run-folder lock
    plots.py       samples, reconstructions, curves
    device.py      device choice and names
    errors.py      UserError: what the CLI reports on one line
"""

from .errors import UserError

__all__ = ["UserError"]
