"""DRAW (Gregor et al. 2015) as an IWAE: T steps, each with its own Gaussian latent.

Step t reads [x, x - sigmoid(c_{t-1})] and the previous decoder state into an encoder LSTM, samples
z_t ~ q(z_t | h_enc_t) = N(mu_t, diag exp(logvar_t)), runs the decoder LSTM on z_t and adds a write to the canvas
c_t. p(x | c_T) is Bernoulli. The log-weight is log p(x|c_T) + sum_t [log N(z_t; 0, I) - log q(z_t | ...)].
Without attention the read is the whole image pair and the write a whole canvas; with attention
(``GaussianAttention``) both go through N x N grids of Gaussian filters placed by the decoder state.

The k samples are k * B rows through the LSTMs. Step t's posterior depends on z_{<t}, so each step is one call of
``gaussian_sample`` with per-sample [k, B, D] parameters (z_t and its latent term from one kernel pass); the
latent terms are summed over steps.
"""

import math

import torch
from torch import nn

from .. import functional
from .base import LogWeightModel


class GaussianAttention(nn.Module):
    """DRAW's attention on [height, width] images: an N x N grid of isotropic Gaussian filters.

    A linear map of the decoder state gives (g_x, g_y, log sigma^2, log delta, log gamma): the grid's centre in
    [-1, 1] coordinates, the filters' variance, the grid's stride and an intensity. ``read`` [R, P], [R, H] ->
    [R, N * N] patch (times gamma); ``write`` [R, N * N], [R, H] -> [R, P] canvas update (divided by gamma).
    Pixel and filter indices count from 1, as in the paper.
    """

    def __init__(self, hidden, height, width, patch, writer=False):
        super().__init__()
        if patch < 2:
            raise ValueError(f"patch: expected an N x N grid with N >= 2, got {patch}")
        self.height, self.width, self.patch = height, width, patch
        self.params = nn.Linear(hidden, 5)
        # Start with the grid over the whole image and filters half a stride wide, so every pixel is read and
        # written from the first step (narrow filters far apart leave most pixels without a gradient). Each
        # filter's weights sum to 1 over a stride x stride area, so a write starts at 1 / stride^2 of its patch
        # value; a writer starts at gamma = 1 / stride^2 so that canvas updates start at the patch's scale.
        stride = (max(height, width) - 1) / (patch - 1)
        log_gamma = -2 * math.log(stride) if writer else 0.0
        with torch.no_grad():
            self.params.bias.copy_(torch.tensor([0.0, 0.0, 2 * math.log(stride / 2), 0.0, log_gamma]))

    def filterbanks(self, params):
        """params [R, 5] (raw, as the linear map gives them) -> F_y [R, N, height], F_x [R, N, width], gamma [R]."""
        g_x, g_y, log_var, log_delta, log_gamma = params.unbind(-1)
        g_x = (self.width + 1) / 2 * (g_x + 1)
        g_y = (self.height + 1) / 2 * (g_y + 1)
        delta = (max(self.height, self.width) - 1) / (self.patch - 1) * log_delta.exp()
        offsets = torch.arange(1, self.patch + 1, device=params.device, dtype=params.dtype) - self.patch / 2 - 0.5
        return (self._bank(g_y, delta, offsets, log_var=log_var, size=self.height),
                self._bank(g_x, delta, offsets, log_var=log_var, size=self.width), log_gamma.exp())

    @staticmethod
    def _bank(centre, delta, offsets, *, log_var, size):
        means = centre[:, None] + offsets * delta[:, None]                                   # [R, N]
        pixels = torch.arange(1, size + 1, device=means.device, dtype=means.dtype)
        logits = -(pixels - means[..., None]) ** 2 / (2 * log_var.exp()[:, None, None])      # [R, N, size]
        # Normalise in log space: a grid far outside the image has every exp underflow, a plain sum would be 0.
        return torch.softmax(logits, -1)

    def read(self, images, state):
        f_y, f_x, gamma = self.filterbanks(self.params(state))
        patch = f_y @ images.reshape(-1, self.height, self.width) @ f_x.transpose(1, 2)
        return gamma[:, None] * patch.flatten(1)

    def write(self, patch, state):
        f_y, f_x, gamma = self.filterbanks(self.params(state))
        canvas = f_y.transpose(1, 2) @ patch.reshape(-1, self.patch, self.patch) @ f_x
        return canvas.flatten(1) / gamma[:, None]


class DRAW(LogWeightModel):
    """x [B, x_dim] in [0, 1] -> log_weights / loss / log_likelihood; generate(n) -> canvases [T, n, x_dim].

    ``attention=(read_N, write_N)`` with ``image=(height, width)`` reads and writes N x N patches through
    ``GaussianAttention``; ``attention=None`` reads the whole image and writes the whole canvas.
    """

    def __init__(self, x_dim=784, hidden=256, latent=10, steps=8, attention=None, image=(28, 28), backend=None):
        super().__init__()
        self.x_dim, self.hidden, self.latent, self.steps, self.backend = x_dim, hidden, latent, steps, backend
        if attention is None:
            self.reader = self.writer = None
            read_size, write_size = x_dim, x_dim
        else:
            if image[0] * image[1] != x_dim:
                raise ValueError(f"image: expected height * width == x_dim ({x_dim}), got {tuple(image)}")
            read_patch, write_patch = attention
            self.reader = GaussianAttention(hidden, *image, read_patch)
            self.writer = GaussianAttention(hidden, *image, write_patch, writer=True)
            read_size, write_size = read_patch ** 2, write_patch ** 2
        self.encoder = nn.LSTMCell(2 * read_size + hidden, hidden)
        self.posterior = nn.Linear(hidden, 2 * latent)
        self.decoder = nn.LSTMCell(latent, hidden)
        self.write = nn.Linear(hidden, write_size)

    def _read(self, x, error, state):
        if self.reader is None:
            return torch.cat([x, error], -1)
        return torch.cat([self.reader.read(x, state), self.reader.read(error, state)], -1)

    def _write(self, state):
        if self.writer is None:
            return self.write(state)
        return self.writer.write(self.write(state), state)

    def _initial(self, rows, like):
        zeros = like.new_zeros(rows, self.hidden)
        return (zeros, zeros), (zeros, zeros), like.new_zeros(rows, self.x_dim)

    def log_weights(self, x, k, eps=None):
        """log w [k, B]; ``eps`` [k, B, T, latent] fixes the noise (else drawn in the kernel each step)."""
        batch = x.shape[0]
        rows = x.repeat(k, 1)                                           # [k * B, x_dim], sample-major
        enc, dec, canvas = self._initial(k * batch, x)
        latent_total = 0
        for t in range(self.steps):
            read = self._read(rows, rows - torch.sigmoid(canvas), dec[0])
            enc = self.encoder(torch.cat([read, dec[0]], -1), enc)
            mu, logvar = self.posterior(enc[0]).reshape(k, batch, -1).chunk(2, -1)
            z, latent = functional.gaussian_sample(mu, logvar, k, eps=None if eps is None else eps[:, :, t],
                                                   backend=self.backend)
            latent_total = latent_total + latent
            dec = self.decoder(z.reshape(k * batch, -1), dec)
            canvas = canvas + self._write(dec[0])
        log_lik = functional.bernoulli_log_likelihood(canvas.reshape(k, batch, -1), x, backend=self.backend)
        return log_lik + latent_total

    @torch.no_grad()
    def generate(self, n):
        """Draw z_t ~ N(0, I) for every step: the canvas after each step, sigmoid-ed, [T, n, x_dim]."""
        weight = self.write.weight
        _, dec, canvas = self._initial(n, weight)
        canvases = []
        for _ in range(self.steps):
            dec = self.decoder(torch.randn(n, self.latent, device=weight.device, dtype=weight.dtype), dec)
            canvas = canvas + self._write(dec[0])
            canvases.append(torch.sigmoid(canvas))
        return torch.stack(canvases)
