"""A convolutional IWAE for 28x28 images, trained through ``iwae_loss``."""

import torch
from torch import nn

from .. import functional as F
from .base import LogWeightModel


class ConvIWAE(LogWeightModel):
    """A convolutional IWAE for 28x28 images (conv encoder, up-convolution decoder, as in Dosovitskiy et al.'s
    chair generator), trained through ``iwae_loss``: the loss does not care what the networks are.

    x [B, 784] in [0, 1] -> loss / log_likelihood; sample(n) -> Bernoulli means [n, 784].

    Examples::

        >>> import torch
        >>> from iwae_kernels.models import ConvIWAE
        >>> _ = torch.manual_seed(0)
        >>> model = ConvIWAE(latent=2, channels=4)
        >>> x = torch.rand(2, 784).round()  # B = 2 binary 28 x 28 images
        >>> model.loss(x, k=3).backward()  # -L_3 averaged over the batch
        >>> model.loss(x, k=4, estimator="miwae", groups=2).shape
        torch.Size([])
        >>> model.log_likelihood(x, k=20, chunk=10).shape, model.sample(3).shape
        (torch.Size([2]), torch.Size([3, 784]))
    """

    def __init__(self, latent: int = 16, channels: int = 32, backend: str | None = None) -> None:
        super().__init__()
        self.latent, self.backend = latent, backend
        self.encoder = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.ReLU(),             # 14 x 14
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.ReLU(),  # 7 x 7
            nn.Flatten(), nn.Linear(2 * channels * 49, 2 * latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 2 * channels * 49), nn.ReLU(), nn.Unflatten(1, (2 * channels, 7, 7)),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), nn.ReLU(),  # 14 x 14
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1), nn.Flatten())         # 28 x 28 logits

    def loss(self, x: torch.Tensor, k: int = 5, estimator: str = "iwae",  # type: ignore[override]
             generator: torch.Generator | None = None, beta: float | torch.Tensor | None = None,
             groups: int | None = None, ciwae_beta: float | None = None, renyi_alpha: float | None = None,
             eps: torch.Tensor | None = None) -> torch.Tensor:
        """-L_k (or the estimator's objective) averaged over the batch; the decoder sees the k * B samples as one
        [k * B, latent] batch. ``beta`` weights the latent term (KL annealing), ``groups``, ``ciwae_beta`` and
        ``renyi_alpha`` as in ``iwae_loss``, ``eps`` [k, B, latent] fixes the noise."""
        mu, logvar = self.encoder(x).chunk(2, -1)
        return F.iwae_loss(
            x,
            mu,
            logvar,
            decoder=self.decoder,
            k=k,
            estimator=estimator,
            flatten_samples=True,
            generator=generator,
            backend=self.backend,
            beta=beta,
            groups=groups,
            ciwae_beta=ciwae_beta,
            renyi_alpha=renyi_alpha,
            eps=eps,
        )

    def log_weights(self, x: torch.Tensor, k: int, eps: torch.Tensor | None = None) -> torch.Tensor:
        """log w [k, B] for k samples, or for the noise eps [k, B, latent] (what ``log_likelihood`` folds;
        training goes through ``loss``)."""
        mu, logvar = self.encoder(x).chunk(2, -1)
        z, latent = F.gaussian_sample(mu, logvar, k, eps=eps, backend=self.backend)
        logits = self.decoder(z.flatten(0, 1)).unflatten(0, (k, x.shape[0]))
        return F.bernoulli_log_likelihood(logits, x, backend=self.backend) + latent

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n draws from the model: Bernoulli means [n, 784]."""
        weight: torch.Tensor = self.decoder[0].weight  # type: ignore[assignment]  # nn.Module attributes are untyped
        return torch.sigmoid(self.decoder(torch.randn(n, self.latent, device=weight.device, dtype=weight.dtype)))
