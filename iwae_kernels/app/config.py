"""A training run's configuration: what the model and the optimization depend on, as a checkpoint records it."""

import dataclasses

from .errors import OptionError, UserError
from ..estimators import check_estimator_options
from ..models import SigmoidBeliefNetwork, paper_model
from ..models.sbn import SBN_ESTIMATORS

# The models ``train`` builds: the paper's (Gaussian latents, 1 or 2 stochastic layers) and a sigmoid belief network
# of 200 binary units per layer (Mnih & Rezende 2016's MNIST models, 1 to 3 layers).
MODEL_LAYERS = {"paper": (1, 2), "sbn": (1, 2, 3)}
SBN_UNITS = 200


@dataclasses.dataclass
class TrainConfig:
    dataset: str = "mnist"
    model: str = "paper"          # a key of MODEL_LAYERS
    layers: int = 1
    estimator: str = "iwae"
    groups: int = None            # miwae, piwae: M groups of k / M samples
    ciwae_beta: float = None      # ciwae: the ELBO's share
    renyi_alpha: float = None     # renyi: the Renyi bound's alpha (!= 1)
    k: int = 50
    batch_size: int = 20
    schedule: str = "constant"    # "paper": 3^i passes at lr 1e-3 * 10^(-i/7), i < paper_stages
    epochs: int = 1               # for "constant"
    paper_stages: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    backend: str = None
    train_subset: int = 0         # 0: the whole training set
    checkpoint_minutes: float = 10.0
    checkpoint_steps: int = 0     # also every N steps (0: off)

    def epoch_learning_rates(self):
        """The learning rate of each epoch, in order."""
        if self.schedule == "paper":
            return [self.lr * 10 ** (-i / 7) for i in range(self.paper_stages) for _ in range(3**i)]
        return [self.lr] * self.epochs


def build_model(config, device):
    """The model ``config`` describes (fresh weights), on ``device``."""
    if config.model == "sbn":
        return SigmoidBeliefNetwork(latent=(SBN_UNITS,) * config.layers, backend=config.backend).to(device)
    return paper_model(config.layers, backend=config.backend).to(device)


def config_from_dict(saved, source):
    """TrainConfig from a checkpoint's config dict; UserError naming ``source`` for a missing or unknown key."""
    if not isinstance(saved, dict):
        raise UserError(f"checkpoint {source} holds no training config (was it written by iwae_kernels train?)")
    unknown = sorted(set(saved) - {field.name for field in dataclasses.fields(TrainConfig)})
    if unknown:
        raise UserError(f"checkpoint {source}: unknown config key {unknown[0]!r} (written by another version?)")
    return TrainConfig(**saved)


def estimator_options(config):
    """The estimator's ``groups`` / ``ciwae_beta`` / ``renyi_alpha`` as loss keyword arguments; OptionError (naming
    the option) when they do not fit the estimator, the model or k (every process finds it alike; rank 0 reports
    it)."""
    if config.layers not in MODEL_LAYERS[config.model]:
        raise OptionError(f"--layers: the {config.model} model has {' or '.join(map(str, MODEL_LAYERS[config.model]))} "
                          f"stochastic layers, got {config.layers}")
    if config.model == "sbn" and config.estimator not in SBN_ESTIMATORS:
        raise OptionError(f"--estimator: the sbn model's latents are binary (no reparameterization path): expected "
                          f"one of {', '.join(SBN_ESTIMATORS)}, got {config.estimator}")
    try:
        check_estimator_options(
            config.estimator,
            config.k,
            groups=config.groups,
            ciwae_beta=config.ciwae_beta,
            renyi_alpha=config.renyi_alpha,
        )
    except ValueError as error:
        name, reason = str(error).split(": ", 1)
        raise OptionError(f"--{name.replace('_', '-')}: {reason}") from None
    options = ("groups", config.groups), ("ciwae_beta", config.ciwae_beta), ("renyi_alpha", config.renyi_alpha)
    return {name: value for name, value in options if value is not None}
