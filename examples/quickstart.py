"""Drop iwae_loss into an existing VAE, train it, and estimate log p(x) with L_5000 in bounded memory.

Data: random 8x8 "bars" images (each of the 16 horizontal and vertical bars on with probability 1/8), a
classic toy set with known structure, so this runs in seconds on a CPU with nothing to download.

    python examples/quickstart.py [--steps 1500] [--k 50] [--estimator iwae] [--device cpu]
    python examples/quickstart.py --estimator miwae --groups 5       # MIWAE(5, 10): k = 50 in 5 groups
"""

import argparse
import time

import torch
from torch import nn

import iwae_kernels as ik


def bars(n, side=8, generator=None):
    """[n, side * side] binary images, each a union of random horizontal and vertical bars."""
    rows = torch.rand(n, side, 1, generator=generator) < 1 / side
    cols = torch.rand(n, 1, side, generator=generator) < 1 / side
    return (rows | cols).float().reshape(n, side * side)


class VAE(nn.Module):
    """An ordinary PyTorch VAE: the only IWAE-specific line is the loss."""

    def __init__(self, x_dim=64, hidden=128, z_dim=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def forward(self, x, k, estimator, **options):
        """The loss for x [B, 64]; options: iwae_loss's groups (miwae, piwae), ciwae_beta (ciwae) or renyi_alpha
        (renyi)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return ik.iwae_loss(x, mu, logvar, self.decoder, k=k, estimator=estimator, **options)

    @torch.no_grad()
    def log_likelihood(self, x, k=5000, chunk=500):
        """Per-example L_k, folding chunks of samples so memory does not grow with k."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        accumulator = ik.StreamingIWAEBound(x.shape[0], device=x.device)
        for start in range(0, k, chunk):
            z, latent = ik.gaussian_sample(mu, logvar, min(chunk, k - start))
            accumulator.update(ik.bernoulli_log_likelihood(self.decoder(z), x) + latent)
        return accumulator.bound()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--estimator", default="iwae", choices=ik.ESTIMATORS)
    parser.add_argument("--groups", type=int, help="miwae, piwae: M groups of k / M samples")
    parser.add_argument("--ciwae-beta", type=float, help="ciwae: the ELBO's share b in [0, 1]")
    parser.add_argument("--renyi-alpha", type=float, help="renyi: the Renyi bound's alpha, a finite a != 1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed)
    train, test = bars(20000, generator=data_gen).to(args.device), bars(500, generator=data_gen).to(args.device)
    model = VAE().to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4)
    options = dict(groups=args.groups, ciwae_beta=args.ciwae_beta, renyi_alpha=args.renyi_alpha)
    try:  # an estimator and options that do not fit (miwae without --groups) fail here, before any step
        model(train[:2], args.k, args.estimator, **options)
    except ValueError as error:
        parser.error(str(error))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = train[torch.randint(0, train.shape[0], (100,), device=args.device)]
        loss = model(batch, args.k, args.estimator, **options)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0 or step == args.steps:
            print(f"step {step:5d}  train -L_{args.k} {loss.item():8.3f}  ({time.perf_counter() - start:.1f}s)")
    for k in (1, 50, 5000):
        print(f"test -mean L_{k:<5d} = {-model.log_likelihood(test, k=k).mean().item():.3f} nats")


if __name__ == "__main__":
    main()
